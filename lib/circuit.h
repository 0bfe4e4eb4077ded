/*
 * circuit: from per-edge scores to a circuit (a set of kept edges), and the
 * "scores" and "circuit" streams that carry them.
 *
 * Selection (as EAP-IG's Graph.apply_topn / apply_threshold / apply_greedy):
 * edges are ranked by |score| (or by the signed score when `signed_` is set),
 * highest first; equal keys are broken by canonical edge order (lower index
 * first), so every selection is deterministic. Unscored edges (NaN) are never
 * selected. After any selection, circ_prune_dangling drops every edge that
 * does not lie on a path input -> ... -> logits (as EAP-IG's Graph.prune).
 *
 * Arrays indexed by edge have E = g->n_edges entries; by node, g->n_nodes.
 * A "keep" array holds 0 or 1 per edge.
 *
 * Layering: circuit uses graph and stream; prune, render and patch use it.
 */
#ifndef CIRC_CIRCUIT_H
#define CIRC_CIRCUIT_H

#include <stdint.h>

#include "graph.h"
#include "stream.h"

/* ---- selection ---- */

/* Ranking key of a score: fabs(s), or s when signed_; NaN stays NaN. */
double circ_rank_key(double s, int signed_);
/* Fills order with the indexes of the scored edges (score not NaN), best
 * first, ties by index; returns how many. order: (E). */
int64_t circ_rank_edges(const circ_graph *g, const double *score, int signed_, int64_t *order);

/* keep := the n best-ranked edges (then nothing else). -1 with a message if
 * n is negative or more than the number of scored edges. keep: (E). */
int circ_select_topn(const circ_graph *g, const double *score, int64_t n, int signed_,
		     uint8_t *keep, circ_error *e);
/* keep := edges whose key is >= t. Never fails; returns the count kept. */
int64_t circ_select_threshold(const circ_graph *g, const double *score, double t, int signed_,
			      uint8_t *keep);
/* keep := n edges grown greedily from logits: start with the edges into
 * logits as candidates; repeatedly keep the best candidate and, when its
 * upstream node is new, add the edges into all of that node's receivers (a
 * head's q, k and v) to the candidates. -1 with a message if n is negative,
 * or if the candidates run out before n (only scored edges are candidates). */
int circ_select_greedy(const circ_graph *g, const double *score, int64_t n, int signed_,
		       uint8_t *keep, circ_error *e);

/* Drops from keep every edge that is not on a path input -> ... -> logits
 * along kept edges. A head is reached when any of its receivers is; its
 * outgoing edges then count. Returns the number of edges dropped. */
int64_t circ_prune_dangling(const circ_graph *g, uint8_t *keep);
/* Reference twin of circ_prune_dangling: EAP-IG's fixpoint (repeatedly drop
 * nodes without kept in- or out-edges, then edges without both ends). Slow;
 * for tests. */
int64_t circ_prune_dangling_ref(const circ_graph *g, uint8_t *keep);
/* node_in := 1 for every node touching a kept edge. node_in: (n_nodes). */
void circ_circuit_nodes(const circ_graph *g, const uint8_t *keep, uint8_t *node_in);
int64_t circ_count_kept(const circ_graph *g, const uint8_t *keep);

/* ---- the "scores" stream ---- */

/* Header: "method", "metric", "graph", "model_digest", "dataset_digest",
 * "n_examples"; records {"edge","score","sum","count"}. */
typedef struct circ_scores {
	circ_graph *g;
	double *score;	       /* (E) NaN where no record names the edge */
	double *sum;	       /* (E) 0 where unknown */
	int64_t *count;	       /* (E) 0 where unknown */
	int64_t n_scored;      /* edges with a score */
	char *method, *metric; /* NULL if absent from the header */
	char *model_digest, *dataset_digest;
	char *ablation;	    /* NULL if absent */
	int64_t n_examples; /* -1 if absent */
	int64_t steps;	    /* -1 if absent */
} circ_scores;

/* The scores header's "sign": what a positive score means. */
#define CIRC_SCORES_SIGN "positive: patching the edge hurts the behaviour (raises -metric or kl)"

/* Reads a whole scores stream from r (header already read by the reader).
 * Every edge name must exist in the header's graph. An edge named twice is
 * merged exactly when both records carry sum and count (shards concatenated:
 * score = total sum / total count); otherwise it is an error; n_examples is
 * the sum over the parts' headers (-1 if one lacks it). Messages start
 * with the reader's name and record number. NULL on error. */
circ_scores *circ_scores_read(circ_reader *r, circ_error *e);
/* A record with "score", "sum" and "count" (count > 0) must have score =
 * sum / count (as circ writes it; within 1e-9 relative, for other
 * writers): 1 with "field 'score': X is not sum / count (...)" if not. The
 * scores readers use one where a merge of shards uses the other. */
int circ_score_mismatch(double score, double sum, int64_t count, circ_error *e);
/* *acc += v for counts (both >= 0); -1 with "count %lld + %lld overflows"
 * instead of a wrapped, negative count (merged shards). */
int circ_count_add(int64_t *acc, int64_t v, circ_error *e);
void circ_scores_free(circ_scores *s);

/* ---- the "circuit" stream ---- */

/* The header's "source" map: how the circuit was made. */
typedef struct circ_circuit_source {
	const char *method; /* scoring method ("eap-ig", ...) or "acdc"; NULL omits */
	const char *mode;   /* "top-n", "threshold", "greedy", "acdc" */
	int64_t n;	    /* requested size; < 0 omits */
	double threshold;   /* NaN omits */
	int signed_;	    /* ranked by signed score; < 0 omits */
	double tau;	    /* ACDC threshold; NaN omits */
	const char *metric; /* NULL omits */
} circ_circuit_source;
void circ_circuit_source_init(circ_circuit_source *s);

typedef struct circ_circuit {
	circ_graph *g;
	uint8_t *keep; /* (E) */
	double *score; /* (E) NaN where unknown */
	int64_t n_kept;
	char *model_digest;	 /* NULL if absent */
	char *method, *mode;	 /* from "source"; NULL if absent */
	int64_t source_n;	 /* source "n", -1 if absent */
	double source_threshold; /* source "threshold", NaN if absent */
	int source_signed;	 /* source "signed", -1 if absent */
} circ_circuit;

/* Reads a circuit stream, or a headerless JSON-lines edge list (kind
 * "records": one {"edge": ...} a line), which takes the graph `expect`.
 * When the stream has a graph and expect is not NULL, they must agree. Every
 * edge must exist in the graph; an edge listed twice is an error. NULL on
 * error. */
circ_circuit *circ_circuit_read(circ_reader *r, const circ_graph *expect, circ_error *e);
void circ_circuit_free(circ_circuit *c);

/* A circ_hdr_pack_fn packing the graph g (a circ_graph) as headers carry
 * it; CIRC_HDR_GRAPH(g) is the header field "graph". */
void circ_circuit_pack_graph(msgpack_packer *pk, const void *g);
#define CIRC_HDR_GRAPH(g) CIRC_HDR_FN("graph", circ_circuit_pack_graph, (g))

/* Writes a circuit header record: the common fields, then "graph",
 * "source", "model_digest" (if not NULL), "n_edges_total", then the
 * caller's nextra fields (extra may be NULL when nextra is 0). */
int circ_circuit_write_header(circ_writer *w, int argc, char **argv, circ_reader *const *inputs,
			      int ninputs, const circ_graph *g, const circ_circuit_source *src,
			      const char *model_digest, const circ_hdr_field *extra, int nextra,
			      circ_error *e);
/* Writes one record {"edge", "score"} per kept edge in canonical order
 * ("score" omitted where NaN or score is NULL). */
int circ_circuit_write_edges(circ_writer *w, const circ_graph *g, const uint8_t *keep,
			     const double *score, circ_error *e);

#endif
