/*
 * render_fgraph: a feature graph (a sparse feature circuit of circ-prune,
 * an attribution graph of circ-trace) as one self-contained HTML page:
 * nodes drawn in rows bottom-up (tokens, then the dictionaries in forward
 * order, logits on top) and, when the nodes carry token positions, in one
 * column per position; coloured by kind (feature, error, token, logit);
 * edges drawn with width from |weight|, blue for positive and red for
 * negative. Hovering a node shows its name, value and strongest edges;
 * clicking it keeps that view and, for a feature whose dashboard the page
 * holds, shows the dashboard (lib/render_dashboard.c's section: top
 * contexts, activation histogram, promoted and suppressed logits). Data
 * and script are inline, a content security policy forbids any network
 * access, and the output is byte-identical for the same input.
 *
 * Test hook: the URL fragment "#click=<node name>" clicks that node once
 * the page is drawn (a real click event on its SVG element); the body then
 * carries data-ready="1" and data-clicked="<name>".
 *
 * Layering: part of render (plain arrays in; no dict or trace code).
 */
#ifndef CIRC_RENDER_FGRAPH_H
#define CIRC_RENDER_FGRAPH_H

#include <stdio.h>

#include "render_dashboard.h"
#include "util.h"

typedef enum circ_fg_kind {
	CIRC_FG_FEATURE,
	CIRC_FG_ERROR,
	CIRC_FG_TOKEN, /* the embedding: `input`, `input@<t>` */
	CIRC_FG_LOGIT  /* `logits`, `logit.<id>` */
} circ_fg_kind;

typedef struct circ_fg_node {
	const char *name; /* circ's node name (circ(1), FEATURE GRAPHS) */
	circ_fg_kind kind;
	int row;	  /* index into circ_fg.rows: 0 at the bottom */
	int pos;	  /* token position, -1 when the node has none */
	double value;	  /* the graph's value_name (NaN: none) */
	double influence; /* attribution graphs: cumulative influence (NaN: none) */
	const char *text; /* more to show (a token's text); may be NULL */
	int dash;	  /* index of its dashboard in circ_fg.dash_feats, or -1 */
} circ_fg_node;

typedef struct circ_fg_edge {
	int src, dst; /* node indices */
	double weight;
} circ_fg_edge;

typedef struct circ_fg {
	const char *title;	 /* may be NULL */
	const char *caption;	 /* one line under the title; may be NULL */
	const char *value_name;	 /* what node values are: "score", "activation" */
	const char *const *rows; /* (n_rows) row labels, bottom-up */
	int n_rows;
	const char *const *tokens; /* (T) position labels (token text), or NULL */
	int T;
	const circ_fg_node *nodes; /* (n_nodes) */
	int n_nodes;
	const circ_fg_edge *edges; /* (n_edges) */
	int64_t n_edges;
	/* dashboards: NULL d for none; otherwise the features d accumulated,
	 * described by show (its feats and n_feats are ignored) */
	const circ_dash *d;
	const circ_dash_show *show;
	const circ_dash_feat *dash_feats; /* (n_dash) */
	int n_dash;
} circ_fg;

/* The page. -1 with a message on a write error or when a node's row, an
 * edge's end or a node's dashboard index is out of range. */
int circ_render_fgraph_html(FILE *f, const circ_fg *g, circ_error *e);

#endif
