/*
 * patch: runs of a model with edges of its graph patched — the engine behind
 * circ-patch (faithfulness), circ-score (exact, EAP, EAP-IG) and ACDC.
 *
 * Patching an edge u->r replaces, in receiver r's input, node u's output in
 * the current run by its reference output: the input becomes the residual
 * plus the sum over the patched upstream nodes u of (ref_u - current_u).
 * References come from the ablation: resample (the corrupted prompt's run,
 * the default), mean (over a reference dataset, optionally per position) or
 * zero. Patching every edge reproduces the reference run; patching none, the
 * clean run.
 *
 * Incremental recomputation: a patched run that differs from the clean run
 * only at receivers of stage s and above recomputes only stages s..2L,
 * reusing the clean activations below s, which the patcher keeps in its
 * main run as long as no patched forward started lower. This is what makes
 * the exact method and ACDC cost "the layers above the patched receiver"
 * per edge.
 *
 * A node-level graph's head receiver stands for the head's q, k and v
 * receivers of the model together.
 *
 * Layering: uses model, graph, batch.
 */
#ifndef CIRC_PATCH_H
#define CIRC_PATCH_H

#include "batch.h"
#include "graph.h"
#include "model.h"

typedef enum circ_ablation { CIRC_ABL_RESAMPLE, CIRC_ABL_MEAN, CIRC_ABL_ZERO } circ_ablation;

const char *circ_ablation_name(circ_ablation a);
int circ_ablation_parse(const char *s, circ_ablation *a);

typedef struct circ_patch_opts {
	circ_ablation ablation;
	int mean_per_position;	 /* mean ablation: one mean per position (needs equal lengths) */
	circ_metric_kind metric; /* the metric evaluated (the task's, or kl) */
	int threads;
	int max_b, max_t;    /* largest batch the patcher is made for */
	int backward;	     /* 1: the main run can do a backward (attribution) */
	int allow_nonfinite; /* 1: a NaN or infinite metric is no error */
	int stage_grads;     /* with backward: the main run keeps the receiver
			      * gradients of one stage at a time, for a backward
			      * hook (circ_run_opts.keep_recv_grads 0) */
	int diff_only;	     /* resample ablation: keep only ref - clean of every
			      * node (circ_patcher_diff), not both outputs, for
			      * gradient attribution: no patched forwards
			      * (circ_patcher_eval*, circ_patcher_scale_ref), and
			      * circ_patcher_clean_out/ref_out give the input node
			      * only. Ignored for the other ablations */
	int plain;	     /* 1: patched forwards compute all they once did:
			      * the last layer's MLP at every row, not only
			      * where the metric reads (circ_fwd.reads_only),
			      * and every projection of the start stage, none
			      * kept from the previous forward
			      * (circ_run_keep_qkv). The same numbers: for
			      * tests that compare the two */
} circ_patch_opts;

typedef struct circ_patcher circ_patcher;

/* A patcher for model m and graph g (same shape and convention). NULL with
 * a message if they disagree or sizes are bad. */
circ_patcher *circ_patcher_new(const circ_model *m, const circ_graph *g, const circ_patch_opts *o,
			       circ_error *e);
void circ_patcher_free(circ_patcher *p);

/* Mean ablation: add the clean prompts of a batch to the running means, then
 * finish once all reference batches are in. -1 with a message if a
 * per-position mean meets a different length. */
int circ_patcher_mean_add(circ_patcher *p, const circ_batch *b, circ_error *e);
int circ_patcher_mean_finish(circ_patcher *p, circ_error *e);
/* Mean ablation: takes the finished means of src (a patcher of the same
 * model and options, e.g. one sized for the whole reference dataset), so
 * that patchers of several batches share one pass over the references.
 * -1 with a message if src has no means or another shape. */
int circ_patcher_mean_copy(circ_patcher *p, const circ_patcher *src, circ_error *e);

/* Loads a batch: reference outputs of every node, the clean run, its logits
 * and metric per example (circ_patcher_clean_metric), and for kl the clean
 * log-probabilities. */
int circ_patcher_load(circ_patcher *p, const circ_batch *b, circ_error *e);
const circ_batch *circ_patcher_batch(const circ_patcher *p);

/* Moves every reference output toward the clean one: ref = clean +
 * eps * (ref - clean). eps = 1 leaves them; eps -> 0 makes patching a
 * small perturbation (where attribution patching becomes exact). */
void circ_patcher_scale_ref(circ_patcher *p, double eps);

/* Metric per example of the clean run and of the reference run (B). */
const double *circ_patcher_clean_metric(const circ_patcher *p);
const double *circ_patcher_ref_metric(const circ_patcher *p);

/* Metric per example (out, B) with the edges where keep[e] != 0 kept and
 * every other edge patched. `stage` is the lowest stage whose receivers have
 * a patched edge (0 if unknown): stages below it are reused from the clean
 * run. */
int circ_patcher_eval(circ_patcher *p, const uint8_t *keep, int stage, double *out, circ_error *e);
/* Metric per example with only edge `edge` patched (the exact method). */
int circ_patcher_eval_edge(circ_patcher *p, int64_t edge, double *out, circ_error *e);
/* Stage of graph receiver r (2l for a head's receivers of layer l, 2l+1 for
 * m{l}, 2L for logits). */
int circ_patcher_recv_stage(const circ_patcher *p, int r);

/* For attribution. The main run (its node outputs are those of the last
 * forward), and copies of the clean and reference outputs of node u
 * (B, T, C) for the loaded batch. */
circ_run *circ_patcher_run(circ_patcher *p);
const float *circ_patcher_clean_out(const circ_patcher *p, int node);
const float *circ_patcher_ref_out(const circ_patcher *p, int node);
/* ref - clean of node u (B, T, C) for the loaded batch, made as the float
 * difference of the two outputs; NULL unless the patcher was made with
 * diff_only (and resample). */
const float *circ_patcher_diff(const circ_patcher *p, int node);
/* Bytes of the buffers the patcher holds now (its run's arena included):
 * for tests that bound memory by the shape. */
size_t circ_patcher_bytes(const circ_patcher *p);
/* The bytes it would hold and touch (its run's arena included) for a batch
 * of B sequences of T tokens reading n_read positions: an estimate, from
 * the same sizes, for choosing batch sizes before anything is allocated. */
size_t circ_patcher_bytes_for(const circ_patcher *p, int B, int T, int n_read);
/* Clean log-probabilities at the read rows (N, V), kl only (else NULL). */
const float *circ_patcher_clean_logp(const circ_patcher *p);
/* Marks the main run as no longer holding the clean prefix (call after
 * running other forwards on it). */
void circ_patcher_dirty(circ_patcher *p);
/* 1 if the main run still holds the whole clean run of the batch. */
int circ_patcher_is_clean(const circ_patcher *p);
const circ_graph *circ_patcher_graph(const circ_patcher *p);
const circ_model *circ_patcher_model(const circ_patcher *p);
const circ_patch_opts *circ_patcher_opts(const circ_patcher *p);

#endif
