/*
 * render: a circuit as Graphviz DOT, EAP-IG graph JSON, a plain-text
 * summary, a self-contained HTML page, and a faithfulness curve as an SVG
 * plot. Each writer prints to a FILE and returns -1 with a message when a
 * write fails; none of them runs programs (cmd/render.c pipes DOT through
 * `dot -Tsvg`).
 *
 * Output is deterministic: the same inputs give byte-identical output, so
 * the golden tests can compare files.
 *
 * Layering: render uses graph, circuit and eval.
 */
#ifndef CIRC_RENDER_H
#define CIRC_RENDER_H

#include <stdio.h>

#include "circuit.h"
#include "eval.h"

typedef struct circ_render_in {
	const circ_graph *g;
	const uint8_t *keep;	 /* (E) the circuit */
	const double *score;	 /* (E) NaN where unknown */
	const char *title;	 /* may be NULL */
	const char *method;	 /* how it was made, for captions; may be NULL */
	const char *mode;	 /* may be NULL */
	int64_t n;		 /* requested size, or -1 */
	double threshold;	 /* NaN if none */
	int signed_;		 /* -1 unknown */
	const circ_curve *curve; /* may be NULL */
	int top;		 /* text: how many top edges to list */
	int64_t d_model;	 /* json: cfg.d_model, or -1 to omit */
	int legacy;		 /* json: EAP-IG's older layout */
} circ_render_in;

/* Graphviz DOT: nodes of the circuit ranked by layer (a layer's heads share
 * a rank, its MLP sits one rank above, input at the bottom, logits at the
 * top), edges with penwidth from |score|, blue for positive, red for
 * negative, grey when unknown, and the receiving q/k/v as the head label. */
int circ_render_dot(FILE *f, const circ_render_in *in, circ_error *e);
/* EAP-IG's Graph.to_json shape: {"cfg": {"n_layers","n_heads",
 * "parallel_attn_mlp": false, "d_model"?}, "nodes": {name: {"in_graph":
 * bool}}, "edges": {name: {"score": f, "in_graph": bool}}} with every node
 * and edge of the graph in EAP-IG's construction order; unknown scores are
 * 0. The legacy layout (EAP-IG before its src/ package) has nodes as bare
 * booleans and unknown scores as null. -1 for a node-level graph, which
 * EAP-IG cannot represent. */
int circ_render_json(FILE *f, const circ_render_in *in, circ_error *e);
/* Plain text: sizes, per-layer counts, receivers, top edges, faithfulness. */
int circ_render_text(FILE *f, const circ_render_in *in, circ_error *e);
/* One self-contained HTML file (inline SVG drawn by inline JavaScript, a
 * content security policy that forbids any network access): hover an edge
 * for its name, score and receiver; a slider filters by |score|; the element
 * with id "edge-count" shows how many edges are visible. The page reads an
 * initial filter from the URL fragment "#min=<value>". */
int circ_render_html(FILE *f, const circ_render_in *in, circ_error *e);
/* The faithfulness curve as an SVG plot (log-scale fractions). */
int circ_render_curve_svg(FILE *f, const circ_curve *c, const char *title, circ_error *e);

/* Shortest decimal text that reads back as the same double ("%.17g" at most). */
void circ_fmt_f64(char *buf, size_t n, double v);

#endif
