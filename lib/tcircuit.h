/*
 * tcircuit: transcoder circuits as Dunefsky, Chlenski and Nanda (2024)
 * define them, on the replacement model of lib/trace (a model of any family
 * whose MLPs are transcoders; for one prompt, the attention patterns and
 * every norm's scale frozen at their values on it).
 *
 * Notation. enc_i = scale * W_enc[:, i] (C) is feature i's encoder column
 * (what its pre-activation reads), dec_j = W_dec[j] / scale (C) its decoder
 * row (what one unit of its activation writes). A norm without its scale
 * is P diag(w) (LayerNorm; P the centering projection I - 11^T / C) or
 * diag(off + w) (RMSNorm). W_OV^h = W_V^k(h) W_O^h is head h's OV circuit
 * (k(h) its key/value head), followed where the family has one (Gemma 2,
 * 3, OLMo 2) by the RMSNorm after the attention (weight in W_OV, scale
 * frozen at the destination). A transcoder reading the raw residual has
 * R = I; one reading the norm before the MLP has R = that norm without
 * its weight (fold_ln) or with it; a head reads through N, the norm before
 * the attention (I without one: OLMo 2). Parallel blocks (GPT-NeoX): a
 * layer's transcoder reads the layer's input, so no head of its layer
 * feeds it.
 *
 * Input-invariant connections (no prompt): from feature j of layer l' to
 * feature i of layer l > l' through the residual stream dec_j . R enc_i,
 * through head h of layer a (l' < a <= l) dec_j . N W_OV^h R enc_i; from
 * token v the same with its embedding (times the family's scale) for
 * dec_j (any a <= l). The prompt's norm scales are left out; its
 * attributions multiply them back in.
 *
 * Input-dependent attributions (one prompt): a source s (feature j at
 * position p: act_j dec_j; error node: its vector; token: its embedding) to a
 * target feature i at position t through a route (a chain of heads
 * (a_1, h_1, p -> q_1), (a_2, h_2, q_1 -> q_2), ..., (a_k, h_k, q_{k-1}
 * -> t), layers increasing, above the source's and up to the last feeding
 * the target, or none: the residual
 * stream, only when p == t) is the source's vector dotted with the target's
 * gradient pulled back along the route: g = s2[l][t] R enc_i, and through
 * each head, from its destination q to its source r, g <- A[a][h][q][r]
 * s1[a][r] N W_OV^h g. Summed over every route this is the direct effect
 * circ_trace_build puts on the edge source -> target.
 *
 * Paths (their greedy_get_top_paths): each path ends at the target; its
 * upstream end is a node (feature, error, token) or a head hop. A path's
 * attribution is its upstream element's contribution to the target along
 * the path: a feature's act_j dec_j . g, an error's e . g, a token's
 * embedding . g, a head hop's A[q][r] value_r^h W_O^h . g (value_r^h: the
 * head's value vector at its source on the prompt, biases included), with
 * g the gradient pulled back along the rest of the path; the target's own
 * is its activation. Search: from the target, every path whose upstream end
 * is a feature or a head hop is extended by its k best contributors
 * (active features of earlier layers at the same position, error nodes of
 * earlier layers there, heads of earlier layers (the same layer for a
 * feature, but with parallel blocks) from any source position up to it, the token there); of all
 * extensions the k best paths are kept; repeat to the depth.
 *
 * Dimension letters: L layers, H heads, C width, D head width, T positions,
 * S features of a transcoder, V vocabulary.
 *
 * Layering: tcircuit uses util, safetensors, kernels, model, dict, trace.
 */
#ifndef CIRC_TCIRCUIT_H
#define CIRC_TCIRCUIT_H

#include <stddef.h>
#include <stdint.h>

#include "dict.h"
#include "model.h"
#include "trace.h"
#include "util.h"

typedef enum circ_tce_kind {
	CIRC_TCE_FEATURE,
	CIRC_TCE_ERROR,
	CIRC_TCE_INPUT,
	CIRC_TCE_HEAD
} circ_tce_kind;

/* One element of a path or route. */
typedef struct circ_tc_elem {
	circ_tce_kind kind;
	int layer; /* feature, error: the transcoder's layer; head: its layer; input: -1 */
	int index; /* feature: the feature; head: the head; input: the token id; error: -1 */
	int pos;   /* feature, error, input: the position (-1: none); head: its source */
	int dst;   /* head: its destination position; otherwise pos */
	double attribution; /* in a path: this element's contribution to the target
			     * along the rest of the path */
} circ_tc_elem;

/* Parses a node name: "tc3.f17@5", "tc3.err@5", "input@5" (want_pos 1) or
 * "tc3.f17" (want_pos 0: features only). -1 with a message. */
int circ_tc_parse_node(const char *s, int want_pos, circ_tc_elem *x, circ_error *e);
/* "tc3.f17@5", "tc3.err@5", "input@5", "tc3.f17" (pos -1), "input.<id>"
 * (token, pos -1), "L1H3:2>5" (head 3 of layer 1, source 2, destination 5). */
void circ_tc_elem_name(const circ_tc_elem *x, char *out, size_t n);

/* ---- input-invariant connections ---- */
typedef struct circ_tc_conn {
	int upstream;	    /* 1: other -> the feature; 0: the feature -> other */
	circ_tc_elem other; /* a feature (pos -1) or a token (input, index = id, pos -1) */
	int head_layer;	    /* -1: through the residual stream */
	int head;
	double weight;
} circ_tc_conn;
/* The top strongest (by |weight|) upstream and the top strongest downstream
 * connections of feature x (pos ignored) among transcoders tc (L, from
 * circ_trace_layers); tokens upstream when with_tokens. *out (at most 2 *
 * top, upstream first, each part by descending |weight|) is the caller's
 * to free. -1 with a message when x's layer has no transcoder or x is
 * beyond its features. */
int circ_tc_connections(const circ_model *m, const circ_dict *const *tc, const circ_tc_elem *x,
			int top, int with_tokens, int threads, circ_tc_conn **out, int *n,
			circ_error *e);

/* ---- one prompt ---- */
typedef struct circ_tc_prompt circ_tc_prompt;
/* The frozen replacement model of tokens (T) (circ_trace_freeze) and the
 * residuals and value vectors on it. NULL with a message on bad input. */
circ_tc_prompt *circ_tc_prompt_new(const circ_model *m, const circ_dict *const *tc,
				   const int32_t *tokens, int T, int threads, circ_error *e);
void circ_tc_prompt_free(circ_tc_prompt *p); /* NULL is a no-op */
/* Feature x's activation on the prompt; -1 with a message when it is not a
 * feature of a transcoder of the set, or its position is beyond the prompt
 * (a feature that is not active gives 0). */
int circ_tc_activation(const circ_tc_prompt *p, const circ_tc_elem *x, double *act, circ_error *e);

/* Every route from src (a feature, error or input node) to the active
 * feature tgt, and its attribution (see the top). Route r holds hops
 * hops[r * L .. r * L + n_hops[r] - 1] (head elements, upstream first; no
 * hop: the residual stream). *hops, *n_hops, *attr (n of them) are the
 * caller's. -1 with a message on a bad node, src not upstream of tgt, a
 * source or target feature that is not active, or more than max_routes
 * routes. */
int circ_tc_routes(const circ_tc_prompt *p, const circ_tc_elem *src, const circ_tc_elem *tgt,
		   long max_routes, circ_tc_elem **hops, int **n_hops, double **attr, int *n,
		   circ_error *e);

typedef struct circ_tc_path {
	int depth;	  /* the search step that made it (1..depth) */
	int n;		  /* elements, upstream first; the last is the target */
	circ_tc_elem *el; /* (n); el[0].attribution is the path's attribution */
} circ_tc_path;
/* The beam search of the top: paths of every depth 1..depth, each depth's
 * (at most beam) by descending attribution (|attribution| when by_abs).
 * *out (n paths) is freed by circ_tc_paths_free. -1 with a message when tgt
 * is not an active feature of the prompt, or beam or depth is below 1. */
int circ_tc_beam(const circ_tc_prompt *p, const circ_tc_elem *tgt, int beam, int depth, int by_abs,
		 circ_tc_path **out, int *n, circ_error *e);
void circ_tc_paths_free(circ_tc_path *paths, int n);

#endif
