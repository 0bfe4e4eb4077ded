/*
 * fcircuit: sparse feature circuits (Marks et al. 2024, "Sparse Feature
 * Circuits"; github.com/saprmarks/feature-circuits): node effects of SAE
 * features and error nodes, and edge effects between the nodes of
 * successive dictionaries, on clean/corrupt prompt pairs.
 *
 * Dictionaries: SAEs (lib/dict) at Marks et al.'s points: resid_pre of
 * layer 0 (their "embed"), and per layer l attn_out (attn<l>), mlp_out
 * (mlp<l>) and resid_post (resid<l>); any subset, one dictionary a point.
 * Without an SAE at resid_pre0 the embedding is one node, `input` (the
 * activation resid_pre0 whole, as an error node with no features).
 * A dictionary's activation x is its features' decoding plus its error:
 * x = decode(f(x)) + e with e = x - decode(f(x)), so the model's output is
 * unchanged, and, as in Marks et al.'s all-folded attribution, the
 * gradient reaches x straight through (d x / d f_i = W_dec[i] / scale,
 * d x / d e = I).
 *
 * Scores are effects on the loss (circ's sign: -metric for task metrics, kl
 * itself), summed over the token positions of an example (Marks et al.'s
 * aggregation "sum"; the positions of clean and corrupt prompts pair up by
 * index, as circ's token streams pair them), and summed over examples
 * (means = sums / count, shard-mergeable). With g_t the loss gradient at
 * the dictionary's activation at position t and the deltas
 * df = f(x_corrupt) - f(x_clean), de = e_corrupt - e_clean:
 *   atp  node effect of feature i: sum_t df[t,i] (W_dec[i] . g_t) / scale;
 *        of the error node: sum_t de[t] . g_t; g at the clean run.
 *   ig   Marks et al.'s _pe_ig: per dictionary, its features and error
 *        interpolated between clean (alpha 0) and corrupt while the other
 *        dictionaries stay clean; g the mean of the gradients at
 *        alpha = k / steps, k = 0 .. steps-1 (the interpolation of features
 *        and error is that of the activation itself, decode being affine).
 *
 * Edges (their jvp, with the intermediate dictionaries held): for an
 * upstream node u of dictionary U and a downstream node d of dictionary D,
 *   edge(u -> d) = sum over t, t' of left_d[t] (d a_d[t] / d u[t']) du[t']
 * where a_d is d's value read from the clean run through D's encoder (a
 * feature's activation f_d(y), or the error y - decode(f(y))), left_d its
 * node gradient (atp: the clean gradient; ig: the mean gradient) and du the
 * upstream delta; the derivative is taken through the model with the
 * activations of the dictionaries between U and D held fixed (no gradient
 * passes into the attention or MLP that produced them; the residual
 * stream's skip connections pass it). Edge set: U -> D when U comes before
 * D and no resid dictionary (or the bottom resid_pre0 / input) lies
 * strictly between them: with every dictionary, resid<l-1> -> attn<l>,
 * resid<l-1> -> mlp<l>, attn<l> -> mlp<l>, resid<l-1> -> resid<l>,
 * attn<l> -> resid<l>, mlp<l> -> resid<l>; missing dictionaries are
 * skipped in the same pattern (the gradient then flows through the
 * attention or MLP that has none). The sink `logits` reads the last resid
 * dictionary (or the bottom) and every dictionary after it: from the last
 * dictionary its edge is its node effect (as Marks et al. take
 * effects[resid_last]); from the others the clean loss gradient with the
 * later dictionaries held, times the delta.
 * Positions kept (keep_positions; Marks et al.'s aggregation "none", for
 * templatic data: every example of one length P): node (t, i) is the term
 * of position t alone, and the edge u@s -> d@t the term of d at t
 * differentiated with respect to u at s; s = t unless the route from U to
 * D passes through an attention layer no dictionary between them holds
 * (circ_fc_route_crosses), then every s <= t. Summed over positions they
 * are the summed graph's nodes and edges. A downstream node on a crossing
 * route costs one backward per position (seeded there alone); on a local
 * route one backward serves every position.
 * Cost: one backward pass per batch for every downstream node whose |mean
 * effect over the batch| is at least the node threshold (a feature never
 * active in the batch's clean run has zero edges into it and is skipped),
 * plus one for the sink, each stopped below the lowest upstream
 * dictionary's stage; for ig node effects a clean forward and backward
 * (atp's, and every dictionary's step 0), then per dictionary (last first)
 * and step 1 .. steps-1 a forward resumed at its stage from the clean state
 * below it, with every later receiver patched (circ's per-receiver path),
 * and a backward stopped at its stage.
 *
 * Families: every family circ reads (GPT-2, llama, mistral, qwen2/3,
 * gemma 1/2/3, olmo2, gpt_neox): a dictionary's gradient is the residual
 * gradient at its stage, seeds and holds are node output gradients (a head's
 * output is its share of a normed attention output where the family has
 * such a norm: model.h); parallel blocks (gpt_neox) have no hook_attn_out
 * (lib/dict refuses it) and their MLP reads the residual before the
 * attention of its block.
 * Layering: fcircuit uses util, kernels, topology, model, metric, batch,
 * dict.
 */
#ifndef CIRC_FCIRCUIT_H
#define CIRC_FCIRCUIT_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "batch.h"
#include "dict.h"
#include "model.h"

typedef enum circ_fc_method {
	CIRC_FC_ATP, /* "feature-atp": attribution patching */
	CIRC_FC_IG   /* "feature-ig": integrated gradients (Marks et al.'s default) */
} circ_fc_method;

/* "feature-atp" / "feature-ig" into *m; -1 if neither. */
int circ_fc_method_parse(const char *s, circ_fc_method *m);
const char *circ_fc_method_name(circ_fc_method m);

typedef struct circ_fc_opts {
	circ_fc_method method;
	int steps;	       /* ig steps (default 10) */
	int edges;	       /* 1 (default): edge effects too; 0: nodes only */
	double node_threshold; /* edges into nodes whose |batch mean effect| >= this (0) */
	int threads;	       /* of the run (default 1) */
	circ_metric_kind metric;
	int keep_positions; /* 1: nodes per token position (Marks et al.'s aggregation
			     * "none"); 0 (default): summed over positions */
} circ_fc_opts;
void circ_fc_opts_default(circ_fc_opts *o);

/* One node set: a dictionary (or the input embedding when d is NULL). */
typedef struct circ_fc_slot {
	char name[32];	    /* circ_dict_name: "resid3", "attn0"; "input" */
	const circ_dict *d; /* NULL for input */
	circ_hook hook;	    /* the activation's hook point */
	int stage;	    /* circ_hook_stage: where the activation is formed */
	int S;		    /* features (0 for input); node S is the error (or input) */
	int O;		    /* width of the activation */
	int resid;	    /* 1: resid_pre0, resid_post or input (cuts the edge pattern) */
} circ_fc_slot;

typedef struct circ_fc circ_fc;

/* A scorer of model m (any family) with the dictionaries of set (not
 * owned; each checked against m and with a supported hook point: resid_pre
 * of layer 0, attn_out, mlp_out or resid_post; SAEs only; at most one a
 * point), for batches of up to max_b x max_t tokens. NULL with a message
 * naming the dictionary's file and the problem. */
circ_fc *circ_fc_new(const circ_model *m, const circ_dict_set *set, const circ_fc_opts *o,
		     int max_b, int max_t, circ_error *e);
void circ_fc_free(circ_fc *fc); /* NULL is a no-op */

/* Adds the node (and edge) effects of one batch. -1 with a message. */
int circ_fc_batch(circ_fc *fc, const circ_batch *b, circ_error *e);
int64_t circ_fc_count(const circ_fc *fc); /* examples added */

/* The node sets in forward order (input or the resid_pre0 dictionary
 * first); the sink logits is not one of them. */
int circ_fc_n_slots(const circ_fc *fc);
const circ_fc_slot *circ_fc_slot_get(const circ_fc *fc, int k);
/* Positions kept: P, the examples' length (set by the first batch); 0 when
 * positions are summed (or no batch yet). */
int circ_fc_positions(const circ_fc *fc);
/* Nodes of slot k: S + 1 summed, P (S + 1) kept (node t (S + 1) + i is
 * feature i, or the error when i == S, at position t); 1 for the sink. */
int64_t circ_fc_slot_nodes(const circ_fc *fc, int k);
/* Sums over examples of the node effects of slot k: circ_fc_slot_nodes
 * entries, per position the error (or input) node last. */
const double *circ_fc_node_sums(const circ_fc *fc, int k);
/* Name of node i of slot k ("resid3.f17", "resid3.err", "input", with
 * "@<t>" when positions are kept); slot n_slots is the sink "logits". */
void circ_fc_node_name(const circ_fc *fc, int k, int i, char *out, size_t n);
/* Calls fn for every edge with a non-zero sum, downstream slot by slot
 * (logits last), then downstream node, upstream slot and node: the slots
 * and node indices as above. Stops at fn's first non-zero return and
 * returns it. */
typedef int (*circ_fc_edge_fn)(void *ctx, int up_slot, int up, int down_slot, int down, double sum);
int circ_fc_edges(const circ_fc *fc, circ_fc_edge_fn fn, void *ctx);

/* ---- ablation: faithfulness and completeness (circ-patch) ----
 * Marks et al.'s run_with_ablations: in one clean forward every dictionary
 * in turn (forward order) splits its activation, as the ablations before it
 * left it, into features and error, puts the mean in place of each node
 * not kept, and passes decode(f') + e' on; the mean at position t is over
 * the examples given to circ_fc_means_add that reach t (their clean
 * prompts), as Marks et al.'s mean ablation averages over the batch per
 * position. */

/* Positions kept: keep[k] has circ_fc_slot_nodes entries and a node is
 * ablated at its own position only; every batch's examples must have the
 * length of the first (means included). */

/* Adds the clean activations' features and errors of batch b to the means. */
int circ_fc_means_add(circ_fc *fc, const circ_batch *b, circ_error *e);
/* Sum over b's examples of the metric (not the loss) with the nodes whose
 * keep[k][i] is 0 mean-ablated (keep NULL: the model itself, nothing
 * ablated). -1 with a message (no means added, a run error). */
int circ_fc_ablate(circ_fc *fc, const circ_batch *b, uint8_t *const *keep, double *metric_sum,
		   circ_error *e);

/* ---- feature graphs read back (circ-prune, circ-patch) ----
 * The graph of a feature scores or circuit stream, from its header's
 * "graph" ({"type": "feature", "dictionaries": [{"name", "d_sae", ...}],
 * "input": "dictionary" | "node"}): its node sets in forward order, the
 * same edge pattern as circ_fc. */
typedef struct circ_fgraph {
	int n;		    /* node sets (input first when "input" is "node") */
	int P;		    /* "positions": "kept": "n_positions"; 0 when "summed" */
	int parallel;	    /* "blocks": "parallel" */
	circ_fc_slot *slot; /* (n): name, S, resid, hook (layer, kind); d is NULL */
	int64_t n_nodes;    /* every node but logits */
	int64_t n_edges;    /* every edge of the pattern, logits' included */
} circ_fgraph;
/* 1 if hdr's "graph" says "type": "feature". */
int circ_fgraph_is_feature(const msgpack_object *hdr);
/* NULL with "header: field 'graph': ..." naming the problem. */
circ_fgraph *circ_fgraph_from_header(const msgpack_object *hdr, circ_error *e);
void circ_fgraph_free(circ_fgraph *g); /* NULL is a no-op */
/* Nodes of node set k (as circ_fc_slot_nodes). */
int64_t circ_fgraph_slot_nodes(const circ_fgraph *g, int k);
/* Name of node i of node set k (k == n: "logits"), as circ_fc_node_name. */
void circ_fgraph_node_name(const circ_fgraph *g, int k, int i, char *out, size_t n);
/* Node name (n bytes; "@<t>" exactly when positions are kept, but never on
 * logits) into *k (n for logits) and *i (t (S + 1) + feature when kept); -1
 * with "node '<name>': ..." if it does not parse or is not in g. */
int circ_fgraph_node(const circ_fgraph *g, const char *name, size_t n, int *k, int *i,
		     circ_error *e);
/* Edge name "<up>-><down>" into its nodes; -1 with "edge '<name>': ..."
 * if a node is bad or the pair is not an edge of the pattern (positions
 * kept: up@s -> down@t needs s <= t, and s == t unless an attention layer
 * the edge's route passes through is not held: circ_fc_route_crosses). */
int circ_fgraph_edge(const circ_fgraph *g, const char *name, size_t n, int *uk, int *ui, int *dk,
		     int *di, circ_error *e);

/* 1 if the route from node set up to node set dn < n of sl (forward order;
 * parallel: the model's blocks are parallel) passes through an
 * attention layer that no node set strictly between them holds: then up@s feeds dn@t for every s <=
 * t; else (only MLPs, norms and the residual stream) s == t. */
int circ_fc_route_crosses(const circ_fc_slot *sl, int parallel, int up, int dn);
/* 1 if the scorer's model has parallel blocks (GPT-NeoX's
 * use_parallel_residual: the MLP reads the residual before the attention;
 * the header's graph then says "blocks": "parallel"). */
int circ_fc_parallel(const circ_fc *fc);

/* "sha256:<hex>" of a dictionary as loaded: its architecture name, hook,
 * sizes and f32 parameters (the same files give the same digest). */
void circ_fc_dict_digest(const circ_dict *d, char out[72]);

#endif
