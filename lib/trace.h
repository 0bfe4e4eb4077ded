/*
 * trace: attribution graphs of one prompt (Ameisen et al. 2025, the
 * circuit-tracer library) on a model of any family circ reads whose MLPs are
 * replaced by transcoders.
 *
 * The replacement model: each layer's MLP output (hook_mlp_out: after the
 * post-MLP norm of Gemma 2, 3 and OLMo 2, as TransformerLens and
 * circuit-tracer's Gemma 2 transcoders have it) is its transcoder's output
 * (sum of active features times their decoder rows, plus b_dec) plus an
 * error node (the true MLP output minus the transcoder's output, a constant
 * vector per position), added to the residual as it is; a layer with no
 * transcoder has no features and its error node is its MLP's whole output.
 * The attention patterns and every norm's scale (LayerNorm's 1/sigma,
 * RMSNorm's 1/rms, per row; the norms before the blocks, after the
 * attention, before the unembedding) are frozen at their values on the
 * prompt. Then every active feature's pre-activation and every target
 * logit (the logit before a final soft cap, minus the mean such logit over
 * the vocabulary, as circuit-tracer demeans its logit targets) is a linear
 * function of the nodes' outputs plus a constant (the bias: positional
 * embeddings, attention and norm biases, b_dec, b_enc propagated through
 * the frozen model). Grouped-query attention: a query head moves its
 * key/value group's values. Parallel blocks (GPT-NeoX): the MLP, so the
 * transcoder, reads the layer's input.
 *
 * Nodes, in circuit-tracer's order: active features (activation != 0)
 * sorted by (layer, position, feature; with max_feature_nodes only the
 * most influential, see circ_trace_opts), error nodes (layer-major,
 * L * T of them), token embeddings (T; the input node outputs the token's
 * embedding times the family's embedding scale; GPT-2's positional
 * embedding is a constant), logits (descending
 * probability: the most probable up to max_n_logits, until their summed
 * probability reaches desired_logit_prob; or the tokens given, in their
 * order; or the logit differences given, in their order: circuit-tracer's
 * custom targets with the vector u_a - u_b, in which the mean cancels).
 * The adjacency matrix A (n, n)
 * holds in A[target * n + source] the direct effect act_s * (d pre_t /
 * d out_s) through the residual stream and the attention heads' OV paths
 * (frozen patterns: nothing through q or k; nothing through another
 * feature or MLP). Rows of sources that are not targets (errors, tokens)
 * are zero, as are logits' columns.
 *
 * Computation: targets are taken in batches; each batch's gradient rows
 * (B_k, T, C) are seeded at their residual point (a feature of layer l at
 * the input of layer l's MLP, a logit at the final residual) and swept
 * down the layers with GEMMs (the frozen norm after the attention, W_O^T,
 * the frozen patterns, W_V^T, the frozen norm before it), reading the edges
 * of each layer's sources on the way (parallel blocks: a layer's feature
 * targets are seeded after its attention's step, at the layer's input;
 * sequential ones before it, at the MLP's input). Causal: a
 * batch only covers positions up to its last target's.
 *
 * Dimension letters: L layers, H heads, C width, D head width, T prompt
 * positions, S features of a transcoder, n nodes.
 *
 * Layering: trace uses util, kernels, topology, model (and model_impl.h's
 * family weights, as cdt does), dict.
 */
#ifndef CIRC_TRACE_H
#define CIRC_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "dict.h"
#include "model.h"
#include "record.h"
#include "util.h"

typedef enum circ_tnode_kind {
	CIRC_TNODE_FEATURE,
	CIRC_TNODE_ERROR,
	CIRC_TNODE_INPUT,
	CIRC_TNODE_LOGIT
} circ_tnode_kind;

typedef struct circ_tnode {
	circ_tnode_kind kind;
	int layer;	/* feature, error: the transcoder's (MLP's) layer; else -1 */
	int feature;	/* feature: its index; logit and input: the token id; error: -1 */
	int minus;	/* a logit difference: the token whose logit is subtracted;
			 * else -1 */
	int pos;	/* position (logits: T-1) */
	double act;	/* feature: activation; logit: probability (a logit
			 * difference: its weight); else 0 */
	double pre;	/* targets: the value its incoming edges sum to with bias:
			 * the pre-activation (feature), the demeaned logit (a
			 * logit difference: logit[feature] - logit[minus]) */
	double bias;	/* targets: the constant term (see the top of this file) */
	double dropped; /* targets: the sum of the edges from the active features
			 * left out by max_feature_nodes (0 with every feature) */
} circ_tnode;

typedef struct circ_trace_opts {
	int max_n_logits;	   /* most logit nodes (default 10) */
	double desired_logit_prob; /* logits until this cumulative probability (0.95) */
	int batch;		   /* targets per backward sweep (default 256) */
	const int32_t *logit_ids;  /* n_logit_ids > 0: the logit targets, these tokens (in
				    * this order) instead of the most probable */
	int n_logit_ids;
	const int32_t *logit_diffs; /* n_logit_diffs > 0: the logit targets are these
				     * differences, pairs (a, b): logit[a] - logit[b]
				     * (before a soft cap), each weighted 1 */
	int n_logit_diffs;
	int max_feature_nodes;	 /* the most feature nodes (<= 0: every active feature);
				  * chosen by influence as circuit-tracer's attribute */
	int threads;		 /* threads for the model and the GEMMs (<= 0: 1) */
	circ_progress *progress; /* counts the targets computed, its total set when
				  * known (NULL: none) */
} circ_trace_opts;
void circ_trace_opts_default(circ_trace_opts *o);

typedef struct circ_trace_graph {
	int T;		 /* prompt length */
	int L;		 /* layers */
	int32_t *tokens; /* (T) */
	int n, n_feat, n_err, n_input, n_logit;
	int n_active;	   /* active features on the prompt (n_feat unless some were
			    * left out by max_feature_nodes) */
	circ_tnode *nodes; /* (n) in the order above */
	float *adj;	   /* (n, n): adj[target * n + source] */
} circ_trace_graph;
void circ_trace_graph_free(circ_trace_graph *g); /* NULL is a no-op */

/* The transcoder writing each layer's MLP output: tc (L) out, NULL where
 * none. Every dictionary of set must be a transcoder reading its layer's
 * MLP input (hook_resid_mid, hook_mlp_in or ln2.hook_normalized) and
 * writing hook_mlp_out, with no W_skip, a ReLU, JumpReLU or TopK
 * activation, one per layer, checked against m. -1 with a message naming
 * the dictionary otherwise. */
int circ_trace_layers(const circ_model *m, const circ_dict_set *set, const circ_dict **tc,
		      circ_error *e);

/* The attribution graph of tokens (T, 1 <= T <= n_ctx) on m (any family)
 * with transcoders tc (L, from circ_trace_layers). NULL with a message on
 * bad input (empty prompt, too long, token out of range). */
circ_trace_graph *circ_trace_build(const circ_model *m, const circ_dict *const *tc,
				   const int32_t *tokens, int T, const circ_trace_opts *o,
				   circ_error *e);

/* The largest |sum_s adj[t, s] + bias_t - pre_t| over target rows t, and
 * (rel) the same divided by max(1, |pre_t|). */
double circ_trace_check(const circ_trace_graph *g, double *rel);

/* Node name as circ(1) FEATURE GRAPHS writes it: "tc3.f17@5",
 * "tc3.err@5", "input@5", "logit.<id>", "logit.<a>-<b>" (a logit
 * difference). */
void circ_trace_node_name(const circ_tnode *nd, char *out, size_t n);

/* ---- pruning, as circuit-tracer's prune_graph ----
 * A' = |A| with rows normalised to sum 1 (rows summing to less than 1e-10
 * divided by 1e-10); logit weights w = the logits' probabilities; node
 * influence = w (A' + A'^2 + ...) (the power series, run until it
 * vanishes: the graph is acyclic); nodes are kept down to the influence at
 * which the sorted cumulative share reaches node_threshold (tokens and
 * logits always); then the matrix restricted to kept nodes, normalised
 * again, gives edge scores A'' * (w + w (A'' + A''^2 + ...))[target]; edges
 * kept down to edge_threshold's share; features and errors without a kept
 * outgoing edge, and features without a kept incoming one, dropped, until
 * nothing changes. */
typedef struct circ_trace_prune {
	unsigned char *node_keep; /* (n) */
	unsigned char *edge_keep; /* (n, n) like adj */
	double *influence;	  /* (n) node influence */
	double *cumulative;	  /* (n) cumulative share of influence in descending
				   * order (circuit-tracer's "influence" field) */
} circ_trace_prune;
/* -1 with a message if a threshold is outside [0, 1] or the influence
 * series does not vanish within n + 1 steps. */
int circ_trace_prune_run(const circ_trace_graph *g, double node_threshold, double edge_threshold,
			 circ_trace_prune *p, circ_error *e);
void circ_trace_prune_free(circ_trace_prune *p);

/* ---- interventions ----
 * The local replacement model of the prompt (error nodes, attention
 * patterns and norm scales frozen at their values on the prompt, as in
 * the graph) run again with some features set or scaled at a position:
 * every later feature is recomputed through its transcoder's activation
 * function (an intervened feature keeps its given value), the MLPs'
 * outputs are the transcoders' outputs plus the frozen errors. With no
 * intervention the logits are the model's (soft-capped where the model
 * caps them). */
typedef struct circ_trace_iv {
	int layer, feature, pos;
	int scale; /* 1: multiply the activation by value; 0: set it to value */
	double value;
} circ_trace_iv;
/* Parses "tc3.f17@5=0" (set) or "tc3.f17@5*2" (scale). -1 with a message. */
int circ_trace_iv_parse(const char *s, circ_trace_iv *iv, circ_error *e);
/* logits (V): the last position's logits with the n_iv interventions iv.
 * -1 with "unknown feature 'tc3.f17@5': ..." when a layer has no
 * transcoder, a feature is beyond d_sae or a position beyond the prompt,
 * or on the prompt's errors (as circ_trace_build). */
int circ_trace_intervene(const circ_model *m, const circ_dict *const *tc, const int32_t *tokens,
			 int T, const circ_trace_iv *iv, int n_iv, int threads, float *logits,
			 circ_error *e);

/* ---- the frozen prompt, for lib/tcircuit ----
 * What circ_trace_build freezes, for other analyses of the same replacement
 * model: every family's layers in one linear form, the norm scales, the
 * attention patterns, each transcoder's activations and each layer's
 * error node. */

/* A matrix as the linear map x (in) -> x W (out): GPT-2's Conv1D (in, out)
 * rows (nn 0) or nn.Linear's (out, in) (nn 1); ld its row stride. Element
 * (in i, out j): nn ? p[j * ld + i] : p[i * ld + j]. */
typedef struct circ_tmat {
	const float *p;
	int ld, nn;
} circ_tmat;

/* One layer's linear pieces. The norms are the family's (LayerNorm
 * (x - mean) s w + b, RMSNorm x s (off + w)) with s frozen; pa_w is always
 * an RMSNorm's. */
typedef struct circ_trace_layer {
	const float *n1_w, *n1_b; /* the norm before the attention (w NULL: none, OLMo 2) */
	circ_tmat v;		  /* values: C -> K*D (key/value head k at k*D) */
	const float *v_b;	  /* (K*D) or NULL */
	circ_tmat o;		  /* the heads' output: H*D -> C */
	const float *o_b;	  /* (C) or NULL */
	const float *pa_w;	  /* the RMSNorm after the attention (Gemma 2, 3, OLMo 2) */
	const float *n2_w, *n2_b; /* the norm before the MLP (w NULL: none) */
} circ_trace_layer;

typedef struct circ_trace_frozen {
	int L, H, K, C, D, T;	  /* K key/value heads; query head h reads group h / (H / K) */
	int rms;		  /* RMSNorm (else LayerNorm) */
	int parallel;		  /* GPT-NeoX's parallel blocks: the MLP reads the layer's input */
	float off;		  /* RMSNorm's weight offset (Gemma: 1) */
	circ_trace_layer *lay;	  /* (L) */
	const void *emb;	  /* (V, C) token embeddings, of dtype emb_dt */
	circ_dtype emb_dt;	  /* (times escale; GPT-2's positions are wpe) */
	float escale;		  /* the family's embedding scale (1 but Gemma) */
	const float *wpe;	  /* (n_ctx, C) GPT-2's positional embedding, or NULL */
	float *s1, *ra, *s2, *sf; /* (L, T) x3, (T): frozen scales (1/sigma or 1/rms)
				   * of the norm before the attention, after it, before
				   * the MLP, the final norm (NULL with T 0) */
	float *att;		  /* (L, H, T, T) frozen patterns [l][h][dst][src] */
	float **acts;		  /* (L) (T, S) activations, NULL for a layer without transcoder */
	float **errs;		  /* (L) (T, C) error nodes (a layer without transcoder: its MLP) */
	int *in_kind;		  /* (L) how the transcoder reads the residual r: 0 r itself,
				   * 1 the norm before the MLP without its weight (and bias),
				   * 2 with them */
	float **own;		  /* (2 L) f32 copies of narrow matrices (or NULL) */
} circ_trace_frozen;
/* The prompt tokens (T) run on m (any family) with transcoders tc
 * (circ_trace_layers). NULL with a message on bad input, as
 * circ_trace_build. */
circ_trace_frozen *circ_trace_freeze(const circ_model *m, const circ_dict *const *tc,
				     const int32_t *tokens, int T, int threads, circ_error *e);
/* The model's form alone (T 0: no prompt, nothing frozen; in_kind set), for
 * input-invariant analyses. */
circ_trace_frozen *circ_trace_form(const circ_model *m, const circ_dict *const *tc);
void circ_trace_frozen_free(circ_trace_frozen *f); /* NULL is a no-op */

#endif
