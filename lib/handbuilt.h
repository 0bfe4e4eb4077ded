/*
 * handbuilt: GPT-2-architecture models whose weights are written from a
 * specification, in the spirit of tracr, so that the circuit behind their
 * behaviour is known exactly: the ground truth that discovery methods are
 * tested against.
 *
 * Each model keeps the whole GPT-2 architecture, LayerNorm included. The
 * constructions survive LayerNorm the same way: every vector written into the
 * residual stream sums to zero (a "sink" dimension takes minus the sum of the
 * others), so LayerNorm's mean is always 0; and the positional embedding
 * carries a large constant pair (+K, -K) in two dimensions of their own, so
 * the residual's norm is dominated by a constant and LayerNorm is, to a part
 * in a thousand, a fixed scaling that the LayerNorm weights undo. Signals live
 * in dedicated blocks of dimensions (token, previous token, output, position,
 * scratch); the circuit's heads read and write only their blocks, plus a
 * little deterministic noise; distractor heads and small random MLPs write
 * mostly into scratch dimensions nobody reads, plus a small leak everywhere,
 * so that they are present and measurable but unimportant.
 *
 * The ground truth is derived from the construction: the builder records each
 * edge it wires (an upstream node written into a block that a receiver
 * reads), and keeps those along which the task's clean and corrupted inputs
 * differ. Edges that are part of the mechanism but carry the same values in
 * both runs (the induction head's query: the current token is not corrupted)
 * are listed separately: no ablation-based method can see them.
 *
 * Randomness comes from lib/rng, through draws that use only integer
 * arithmetic and correctly rounded IEEE operations (no libm
 * transcendentals), so a build is byte-identical on every machine.
 *
 * Layering: uses util, rng, graph (edge names), model (weights, saving),
 * tasks (the induction recipe) and dict (the feature fixture's SAEs).
 */
#ifndef CIRC_HANDBUILT_H
#define CIRC_HANDBUILT_H

#include <stdio.h>

#include "model.h"
#include "tasks.h"

/* Most edges a hand-built model's truth or mechanism list may have, and
 * most blocks in its residual layout. */
#define CIRC_HB_MAX_EDGES  64
#define CIRC_HB_MAX_BLOCKS 12

/* What the builder knows about a model besides its weights. Edge names use
 * lib/graph's syntax ("a0.h1->a1.h2<k>"). */
typedef struct circ_hb_info {
	const char *name;    /* "induction-hand" */
	const char *summary; /* one line */
	/* the ground truth: edges that carry the behaviour under the task's
	 * corruption (what truth.jsonl lists) */
	int n_truth;
	char truth[CIRC_HB_MAX_EDGES][64];
	/* edges of the mechanism that the corruption leaves unchanged (not in
	 * the truth; documented in SPEC.md) */
	int n_silent;
	char silent[CIRC_HB_MAX_EDGES][64];
	/* the circuit's heads and their roles ("previous-token", "induction",
	 * "duplicate-token", "s-inhibition", "name-mover") */
	int n_heads;
	struct {
		const char *role;
		int layer, head;
	} heads[8];
	/* the residual layout: blocks of dimensions by purpose */
	int n_blocks;
	struct {
		const char *name; /* "TOK", "PREV", ..., "CONST", "SINK", "JUNK" */
		int off, n;	  /* dimensions off .. off+n-1 */
		const char *what; /* who writes it and who reads it */
	} blocks[CIRC_HB_MAX_BLOCKS];
	/* feature fixtures (circ_hb_feature_names): the feature edges of the
	 * truth ("resid_pre0.f20->attn0.f0", "resid1.f32->logits", names as in
	 * circ(1) FEATURE GRAPHS) and the features on them */
	int n_feature_truth;
	char feature_truth[CIRC_HB_MAX_EDGES][64];
	int n_feature_nodes;
	char feature_nodes[CIRC_HB_MAX_EDGES][48];
	double K;     /* the constant: +K and -K in the CONST block at every position */
	double sigma; /* LayerNorm's nominal std sqrt(2 K^2 / C); every LayerNorm
		       * weight is sigma (ln_f: sigma times the unembedding gain
		       * on the output block, 0 elsewhere), so LayerNorm gives back
		       * the residual's signal blocks at their own scale */
} circ_hb_info;

/* Names of the hand-built models with component-level circuits, in a fixed
 * order; *n set to the count. */
const char *const *circ_hb_names(int *n);
/* Names of the hand-built feature fixtures ("planted-features"): models
 * whose residual stream carries planted features, written with SAE
 * dictionaries and a feature-level truth. The functions below take these
 * names too. */
const char *const *circ_hb_feature_names(int *n);

/* Builds model `name`: fills *c, allocates *w (circ_weights_alloc) and
 * writes every weight, and fills *info (may be NULL). Deterministic: the same
 * name gives the same bytes. -1 with "unknown model '<name>'" otherwise (w
 * is then not allocated). */
int circ_hb_build(const char *name, circ_config *c, circ_weights *w, circ_hb_info *info,
		  circ_error *e);

/* The task the truth is for: writes n examples of model name's dataset as
 * dataset JSON lines (the input of circ-tokenize, with clean_ids,
 * corrupt_ids, pos, answer_ids, wrong_ids and metric), one emit call per
 * line, deterministically from seed. -1 on an unknown name, n < 0, or when
 * emit fails. */
int circ_hb_examples(const char *name, int64_t n, uint64_t seed, circ_task_emit emit, void *ctx,
		     circ_error *e);

/* Writes the Hugging Face directory of model `name` into dir (created if
 * missing): config.json and model.safetensors (circ_model_save), vocab.json
 * and merges.txt (a small byte-level BPE vocabulary of exactly vocab_size
 * ids), truth.jsonl (a circuit stream in JSON lines: the ground truth, with
 * the model's digest) and SPEC.md (the construction); a feature fixture also
 * dicts/<name>/ (SAELens directories, circ_dict_save), truth-features.jsonl
 * and truth-nodes.jsonl (headerless {"edge"} / {"node"} lines) and
 * dataset.jsonl (64 examples, seed 1). Every file is written through a
 * temporary and renamed. -1 with a message naming the file. */
int circ_hb_write_dir(const char *name, const char *dir, circ_error *e);

/* Writes SPEC.md of model name to f (what circ_hb_write_dir writes). -1
 * with a message on an unknown name, or "write error" when f reports one
 * (the caller names f). */
int circ_hb_write_spec(const char *name, FILE *f, circ_error *e);

#endif
