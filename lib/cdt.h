/*
 * cdt: contextual decomposition for transformers (CD-T; Hsu et al. 2024,
 * "Efficient Automated Circuit Discovery in Transformers using Contextual
 * Decomposition"). Every activation of a forward is split into a relevant
 * part (what flows from a chosen set of source nodes) and an irrelevant part
 * (everything else), rel + irrel = the activation, and the split is carried
 * through the model with the paper's rules:
 *   embedding    the input node's output is relevant when the input node is
 *                a source; the positional embedding (default convention)
 *                and the attention output biases belong to no node and are
 *                irrelevant (relevant only for a "whole model" source);
 *   LayerNorm    mean and variance of the whole activation; each part is
 *                centred by its own mean and scaled by the whole's 1/std
 *                times the weight; the bias is shared in proportion to
 *                |rel| and |irrel| of the input, element by element;
 *   linear maps  each part multiplied by the weights; the bias shared in
 *                proportion to |rel W| and |irrel W|;
 *   attention    the attention weights are those of the whole activation
 *                (the clean run's), constants: the values are decomposed
 *                and mixed by them, so relevance flows through v only;
 *   GELU         irrel' = act(irrel), rel' = act(rel + irrel) - act(irrel);
 *   unembedding  linear (no bias).
 * Every family circ runs (model_family.c) is decomposed by the same rules,
 * extended where the families differ:
 *   RMSNorm      each part times the whole row's rsqrt(mean(x^2) + eps) and
 *                (offset + w) (Gemma's 1 + w); no centring, no bias: the
 *                split passes through exactly. GPT-NeoX's LayerNorm as above;
 *   embedding    the input node's output is the scaled token embedding
 *                (Gemma: times sqrt(C)); rotary models add no constant;
 *   q, k         q/k norms (Qwen 3, Gemma 3, OLMo 2), RoPE, the attention
 *                scale, soft-capping of the scores (Gemma 2) and sliding
 *                windows only make the attention weights, which are the
 *                clean run's constants: nothing of them is decomposed;
 *   values       grouped-query attention: query head h mixes the values of
 *                its key/value group (h / (H/K)), decomposed once per group;
 *   norms after  Gemma 2 and 3 (post_attention_layernorm,
 *   a block      post_feedforward_layernorm), OLMo 2: a node's output is
 *                its share of the normed sum (model_family.c), so each part
 *                of a head's (or the MLP's) output is scaled by the norm's
 *                scale of the whole block output, rsqrt(mean(A^2) + eps)
 *                (offset + w), a constant like LayerNorm's std; OLMo 2 has
 *                no norm before the blocks: they read the residual's parts;
 *   gated MLP    SwiGLU / GeGLU, h = act(gate) * up, both projections
 *                decomposed (biases shared, the sign rule on each); the
 *                product by the rule the activation follows, with the
 *                cross terms relevant (as CD for LSTMs splits gate products,
 *                Murdoch et al. 2018): irrel' = act(irrel_gate) * irrel_up,
 *                rel' = act(gate) * up - irrel', that is act's relevant part
 *                times up plus act(irrel_gate) times up's relevant part;
 *   logit cap    (Gemma 2) cap * tanh(z / cap) by the activation's rule:
 *                irrel' = cap tanh(irrel / cap), rel' = the capped whole -
 *                irrel';
 *   parallel     GPT-NeoX: the attention and the MLP of a layer read the
 *   blocks       same residual's parts (one stage), the sign rule after the
 *                block; the attention output bias is a constant.
 * With every node a source, every rule gives rel = the activation (act(0) =
 * 0, tanh(0) = 0), and with none rel = 0 exactly.
 * A source node's own output becomes wholly relevant where it is made
 * (rel := rel + irrel, irrel := 0). With `normalize`, the reference code's
 * sign rule is applied after the MLP's first linear map, after the MLP and
 * after each layer's residual: where rel and irrel have opposite signs the
 * one of larger magnitude takes the sum and the other becomes 0.
 * Where a bias has nothing to be shared by (|rel| + |irrel| = 0) it goes to
 * the irrelevant part, so rel + irrel stays the activation exactly.
 *
 * Batched: S source sets are decomposed together, as rows of the same
 * matrix products (one pass over the layers for all of them), starting at
 * the lowest stage any of them touches. Only rel is multiplied: the whole
 * activation rides along as one more set and irrel is it minus rel, so a
 * pass costs S + 1 row sets of products. Scoring every node of GPT-2 small
 * is L + 1 such passes per batch (bench/cdt.sh: about 50-80 forwards).
 *
 * Scores (circ-score --method cd-t): for edge u->r, with the sources {u}:
 *   r = logits   loss(irrel logits) - loss(clean logits): how much the loss
 *                rises without u's relevant part; this is u's node
 *                relevance (for logit_diff, rel logit diff as the paper);
 *   other r      -rel_u(input of r) . d loss / d input of r: u's relevant
 *                part at the receiver's input (through every path, as the
 *                paper's source-to-target relevance), contracted with the
 *                loss gradient there, to first order the rise of the loss
 *                when it is taken away. The gradient includes the q/k paths
 *                that the decomposition itself treats as constants.
 * The loss is -metric for the task metrics and kl itself (the sign of the
 * other scores streams: positive hurts the behaviour). kl's gradient is 0 at
 * the clean run, so only the logits edges score under kl.
 *
 * Circuit construction (circ-prune --cd-t): from the logits backwards, each
 * round adds the n sources most relevant to the current targets (summed
 * scores of a source's edges into a target), which become the next targets.
 *
 * Layering: uses patch (and so model, graph, batch) and circuit; reads the
 * families' weights (fam_weights) from model_impl.h.
 */
#ifndef CIRC_CDT_H
#define CIRC_CDT_H

#include "patch.h"

typedef struct circ_cdt_opts {
	int normalize; /* 1 (default): the reference code's sign rule */
} circ_cdt_opts;
void circ_cdt_opts_default(circ_cdt_opts *o);

/* What a hook is shown. */
typedef enum circ_cdt_point {
	CIRC_CDT_RESID, /* residual `index` (a stage's input, every receiver of it) */
	CIRC_CDT_NODE,	/* the output of upstream node `index` */
	CIRC_CDT_LOGITS /* the logits at the read rows (index 0) */
} circ_cdt_point;

/* Called with rel and irrel of S source sets: (S, B, T, C) for residuals and
 * nodes, (S, N, V) for logits. Valid during the call only. Return 0, or -1
 * with a message to stop. */
typedef int (*circ_cdt_hook)(void *ctx, circ_cdt_point what, int index, const float *rel,
			     const float *irrel, circ_error *e);

/* Decomposes the last forward of r (keep_nodes, logits read) for S source
 * sets: src (S, U) 1 where node u is a source of set g; whole (S) or NULL,
 * 1 where set g also takes the constants (positional embedding, attention
 * output biases) as relevant: with every node it is the whole model, whose
 * relevant part is the model's activations. Stages below the lowest one a
 * set touches are not shown (their rel is 0). The model must be GPT-2
 * shaped (LayerNorm before each block, learned positions, a plain MLP, no
 * parallel residual, no logit softcap) or of another family (every one
 * circ runs, by the rules above): -1 with a message otherwise, or on a run
 * without a forward, logits or node outputs. */
int circ_cdt_run(circ_run *r, int S, const uint8_t *src, const uint8_t *whole,
		 const circ_cdt_opts *o, circ_cdt_hook hook, void *ctx, circ_error *e);

/* ---- edge scores over a patcher's batches ---- */

typedef struct circ_cdt_scorer circ_cdt_scorer;
/* A scorer for patcher p (made with backward, every receiver's gradient
 * kept). o may be NULL (defaults). */
circ_cdt_scorer *circ_cdt_scorer_new(circ_patcher *p, const circ_cdt_opts *o);
void circ_cdt_scorer_free(circ_cdt_scorer *sc); /* NULL is a no-op */
/* Adds the scores of the batch loaded in the patcher, whose loss backward
 * has run (circ_loss_backward): one decomposition per layer (its heads and
 * MLP together) and one for the input. progress may be NULL. */
int circ_cdt_scorer_batch(circ_cdt_scorer *sc, circ_progress *progress, circ_error *e);
const double *circ_cdt_scorer_sums(const circ_cdt_scorer *sc); /* (E) */
int64_t circ_cdt_scorer_count(const circ_cdt_scorer *sc);

/* ---- circuit construction ---- */

/* The paper's iterative construction over edge scores of graph g: targets
 * start as {logits}; each round ranks the upstream nodes not yet chosen
 * that feed a current target by their relevance to the targets (the largest
 * over targets of the summed scores of the node's edges into that target;
 * |.| unless signed_), adds the n best (fewer if fewer feed them, none of
 * relevance 0 or NaN), and makes them the next targets, until a round adds
 * none. keep (E) := the edges between chosen nodes (the input node and
 * logits always chosen). Returns the number of nodes chosen (logits and
 * input included); -1 with a message if n < 1. */
int circ_cdt_select(const circ_graph *g, const double *score, int n, int signed_, uint8_t *keep,
		    circ_error *e);

#endif
