/*
 * render: circuit pictures and summaries (see render.h).
 *
 * Design: every writer walks the circuit in canonical order and prints with
 * fixed formats, so output is byte-stable. Layout is by rows: input, then for
 * each layer a row of heads and a row for the MLP, then logits; DOT keeps
 * that order with rank=same groups chained by invisible edges, and the HTML
 * page computes the same rows in its script. The HTML page carries its data
 * as a JSON block and draws itself, so it needs no layout program and no
 * network; its content security policy forbids fetching anything.
 *
 * Errors: writers check the stream once at the end (ferror), which catches
 * any failed write on the way.
 */
#include "render.h"
#include "render_impl.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void circ_fmt_f64(char *buf, size_t n, double v)
{
	for (int p = 1; p <= 17; p++) {
		snprintf(buf, n, "%.*g", p, v);
		if (strtod(buf, NULL) == v)
			return;
	}
}

static int check(FILE *f, circ_error *e)
{
	if (fflush(f) != 0 || ferror(f))
		return circ_errorf(e, "write error: %s", strerror(errno ? errno : EIO));
	return 0;
}

/* Row of a node, bottom-up: input 0, a{l}.* 1+2l, m{l} 2+2l, logits 2L+1. */
static int node_row(const circ_graph *g, int node)
{
	circ_node_kind k;
	int l;
	circ_graph_node_info(g, node, &k, &l, NULL);
	switch (k) {
	case CIRC_NODE_INPUT: return 0;
	case CIRC_NODE_HEAD: return 1 + 2 * l;
	case CIRC_NODE_MLP: return 2 + 2 * l;
	default: return 2 * g->n_layer + 1;
	}
}

static double max_abs_kept(const circ_render_in *in)
{
	double m = 0;
	for (int64_t i = 0; i < in->g->n_edges; i++)
		if (in->keep[i] && !isnan(in->score[i]) && fabs(in->score[i]) > m)
			m = fabs(in->score[i]);
	return m;
}

/* Characters that need escaping in a DOT or JSON double-quoted string. */
static void put_escaped(FILE *f, const char *s, int json)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (json && (c < 0x20 || c == '<' || c == '>' || c == '&'))
			fprintf(f, "\\u%04x", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c < 0x20)
			putc(' ', f);
		else
			putc(c, f);
	}
}

/* HTML / XML text. */
static void put_xml(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		default: putc(*s, f);
		}
	}
}

static const char *node_fill(circ_node_kind k)
{
	switch (k) {
	case CIRC_NODE_HEAD: return "#c6dbef";
	case CIRC_NODE_MLP: return "#fdd0a2";
	default: return "#e0e0e0";
	}
}

static const char *edge_color(double s)
{
	return isnan(s) ? "#888888" : s >= 0 ? "#2166ac" : "#b2182b";
}

/* ---- DOT ---- */

int circ_render_dot(FILE *f, const circ_render_in *in, circ_error *e)
{
	const circ_graph *g = in->g;
	uint8_t *node_in = circ_xmalloc((size_t)g->n_nodes);
	circ_circuit_nodes(g, in->keep, node_in);
	double maxs = max_abs_kept(in);
	char name[CIRC_NAME_MAX], up[CIRC_NAME_MAX], buf[40];

	fputs("digraph circuit {\n", f);
	fputs("\tgraph [rankdir=BT, newrank=true, ranksep=0.45, nodesep=0.12, "
	      "fontname=\"Helvetica\", bgcolor=\"white\"",
	      f);
	if (in->title) {
		fputs(", labelloc=t, label=\"", f);
		put_escaped(f, in->title, 0);
		putc('"', f);
	}
	fputs("];\n", f);
	fputs("\tnode [shape=box, style=\"filled,rounded\", fontname=\"Helvetica\", fontsize=10, "
	      "height=0.3, color=\"#444444\"];\n",
	      f);
	fputs("\tedge [arrowsize=0.5, fontname=\"Helvetica\", fontsize=8];\n", f);
	/* rows bottom-up; the first node of each row is chained to the next */
	int nrows = 2 * g->n_layer + 2, prev_first = -1;
	for (int row = 0; row < nrows; row++) {
		int first = -1;
		for (int n = 0; n < g->n_nodes; n++) {
			if (!node_in[n] || node_row(g, n) != row)
				continue;
			circ_node_kind k;
			circ_graph_node_info(g, n, &k, NULL, NULL);
			circ_graph_node_name(g, n, name, sizeof name);
			if (first < 0)
				fputs("\t{ rank=same;", f);
			fprintf(f, " \"%s\" [fillcolor=\"%s\"];", name, node_fill(k));
			if (first < 0)
				first = n;
		}
		if (first < 0)
			continue;
		fputs(" }\n", f);
		if (prev_first >= 0) {
			circ_graph_node_name(g, prev_first, up, sizeof up);
			circ_graph_node_name(g, first, name, sizeof name);
			fprintf(f, "\t\"%s\" -> \"%s\" [style=invis];\n", up, name);
		}
		prev_first = first;
	}
	for (int64_t i = 0; i < g->n_edges; i++) {
		if (!in->keep[i])
			continue;
		int down;
		double s = in->score[i];
		circ_graph_recv_info(g, g->edge_recv[i], NULL, &down);
		circ_graph_node_name(g, g->edge_up[i], up, sizeof up);
		circ_graph_node_name(g, down, name, sizeof name);
		double pw = isnan(s) || maxs == 0 ? 1.0 : 0.5 + 4.5 * fabs(s) / maxs;
		fprintf(f, "\t\"%s\" -> \"%s\" [penwidth=%.2f, color=\"%s\"", up, name, pw,
			edge_color(s));
		const char *c = circ_graph_recv_letter(g, g->edge_recv[i]);
		if (*c)
			fprintf(f, ", headlabel=\"%s\"", c);
		circ_graph_edge_name(g, i, name, sizeof name);
		if (isnan(s))
			snprintf(buf, sizeof buf, "unknown");
		else
			circ_fmt_f64(buf, sizeof buf, s);
		fprintf(f, ", tooltip=\"%s score %s\"];\n", name, buf);
	}
	fputs("}\n", f);
	free(node_in);
	return check(f, e);
}

/* ---- EAP-IG JSON ---- */

static void json_edge(FILE *f, const circ_render_in *in, int64_t i, int *first)
{
	char name[CIRC_NAME_MAX], num[40];
	double s = in->score[i];
	circ_graph_edge_name(in->g, i, name, sizeof name);
	if (isnan(s))
		snprintf(num, sizeof num, in->legacy ? "null" : "0.0");
	else
		circ_fmt_f64(num, sizeof num, s);
	fprintf(f, "%s\"%s\": {\"score\": %s, \"in_graph\": %s}", *first ? "" : ", ", name, num,
		in->keep[i] ? "true" : "false");
	*first = 0;
}

int circ_render_json(FILE *f, const circ_render_in *in, circ_error *e)
{
	const circ_graph *g = in->g;
	if (g->level != CIRC_LEVEL_EDGE)
		return circ_errorf(e, "EAP-IG's graph JSON has no node-level form (the circuit's "
				      "graph is node-level)");
	if (g->n_kv_head != g->n_head)
		return circ_errorf(e,
				   "EAP-IG's graph JSON has every head's own k and v inputs (the "
				   "circuit's graph is grouped: --gqa grouped)");
	uint8_t *node_in = circ_xmalloc((size_t)g->n_nodes);
	circ_circuit_nodes(g, in->keep, node_in);
	char name[CIRC_NAME_MAX];
	fprintf(f, "{\"cfg\": {\"n_layers\": %d, \"n_heads\": %d, \"parallel_attn_mlp\": %s",
		g->n_layer, g->n_head, g->block == CIRC_BLOCK_PARALLEL ? "true" : "false");
	if (in->d_model >= 0 && !in->legacy)
		fprintf(f, ", \"d_model\": %lld", (long long)in->d_model);
	fputs("}, \"nodes\": {", f);
	for (int n = 0; n < g->n_nodes; n++) {
		/* EAP-IG's logits node is always in the graph */
		int on = node_in[n] || n == circ_graph_node_logits(g);
		circ_graph_node_name(g, n, name, sizeof name);
		if (in->legacy)
			fprintf(f, "%s\"%s\": %s", n ? ", " : "", name, on ? "true" : "false");
		else
			fprintf(f, "%s\"%s\": {\"in_graph\": %s}", n ? ", " : "", name,
				on ? "true" : "false");
	}
	fputs("}, \"edges\": {", f);
	/* EAP-IG's construction order: per layer, each residual-stream node to
	 * every head's q, k, v; then each (now including the layer's heads,
	 * unless blocks are parallel) to the MLP; finally each to logits. */
	int first = 1, H = g->n_head;
	for (int l = 0; l < g->n_layer; l++) {
		int below = circ_graph_recv_n_in(g, circ_graph_recv_head(g, l, 0, 0));
		for (int u = 0; u < below; u++)
			for (int h = 0; h < H; h++)
				for (int c = 0; c < 3; c++)
					json_edge(
					    f, in,
					    circ_graph_edge(g, circ_graph_recv_head(g, l, h, c), u),
					    &first);
		int nm = circ_graph_recv_n_in(g, circ_graph_recv_mlp(g, l));
		for (int u = 0; u < nm; u++)
			json_edge(f, in, circ_graph_edge(g, circ_graph_recv_mlp(g, l), u), &first);
	}
	for (int u = 0; u < g->n_up; u++)
		json_edge(f, in, circ_graph_edge(g, circ_graph_recv_logits(g), u), &first);
	fputs("}}\n", f);
	free(node_in);
	return check(f, e);
}

/* ---- text ---- */

int circ_render_text(FILE *f, const circ_render_in *in, circ_error *e)
{
	const circ_graph *g = in->g;
	uint8_t *node_in = circ_xmalloc((size_t)g->n_nodes);
	circ_circuit_nodes(g, in->keep, node_in);
	int64_t n_kept = circ_count_kept(g, in->keep);
	int n_nodes = 0;
	for (int n = 0; n < g->n_nodes; n++)
		n_nodes += node_in[n];
	if (in->title)
		fprintf(f, "%s\n", in->title);
	fprintf(f, "graph: %d layers, %d heads, %s level, %s convention\n", g->n_layer, g->n_head,
		circ_graph_level_name(g->level), circ_graph_input_name(g->input));
	if (in->method || in->mode) {
		fprintf(f, "source: %s%s%s", in->method ? in->method : "",
			in->method && in->mode ? ", " : "", in->mode ? in->mode : "");
		if (in->n >= 0)
			fprintf(f, " %lld", (long long)in->n);
		if (!isnan(in->threshold))
			fprintf(f, " %g", in->threshold);
		if (in->signed_ >= 0)
			fprintf(f, " (%s)", in->signed_ ? "signed score" : "|score|");
		putc('\n', f);
	}
	fprintf(f, "nodes: %d of %d\n", n_nodes, g->n_nodes);
	fprintf(f, "edges: %lld of %lld (%.2f%%)\n", (long long)n_kept, (long long)g->n_edges,
		100.0 * (double)n_kept / (double)g->n_edges);

	/* edges by receiver kind */
	int64_t by_kind[CIRC_RECV_LOGITS + 1] = {0};
	for (int64_t i = 0; i < g->n_edges; i++)
		if (in->keep[i]) {
			circ_recv_kind k;
			circ_graph_recv_info(g, g->edge_recv[i], &k, NULL);
			by_kind[k]++;
		}
	if (g->level == CIRC_LEVEL_EDGE)
		fprintf(f, "receivers: q %lld, k %lld, v %lld, mlp %lld, logits %lld\n",
			(long long)by_kind[CIRC_RECV_Q], (long long)by_kind[CIRC_RECV_K],
			(long long)by_kind[CIRC_RECV_V], (long long)by_kind[CIRC_RECV_MLP],
			(long long)by_kind[CIRC_RECV_LOGITS]);
	else
		fprintf(f, "receivers: head %lld, mlp %lld, logits %lld\n",
			(long long)by_kind[CIRC_RECV_HEAD], (long long)by_kind[CIRC_RECV_MLP],
			(long long)by_kind[CIRC_RECV_LOGITS]);

	/* per layer: heads kept, MLP kept, edges into the layer, edges out of it */
	fprintf(f, "\n%-8s %6s %4s %9s %9s\n", "layer", "heads", "mlp", "edges-in", "edges-out");
	int64_t *ein = circ_xcalloc((size_t)g->n_layer + 2, sizeof *ein);
	int64_t *eout = circ_xcalloc((size_t)g->n_layer + 2, sizeof *eout);
	for (int64_t i = 0; i < g->n_edges; i++)
		if (in->keep[i]) {
			int down;
			circ_graph_recv_info(g, g->edge_recv[i], NULL, &down);
			ein[circ_graph_node_layer(g, down) + 1]++;
			eout[circ_graph_node_layer(g, g->edge_up[i]) + 1]++;
		}
	fprintf(f, "%-8s %6s %4s %9s %9lld\n", "input", node_in[0] ? "in" : "-", "-", "-",
		(long long)eout[0]);
	for (int l = 0; l < g->n_layer; l++) {
		int heads = 0;
		for (int h = 0; h < g->n_head; h++)
			heads += node_in[circ_graph_up_head(g, l, h)];
		char lab[16];
		snprintf(lab, sizeof lab, "%d", l);
		fprintf(f, "%-8s %6d %4d %9lld %9lld\n", lab, heads,
			node_in[circ_graph_up_mlp(g, l)], (long long)ein[l + 1],
			(long long)eout[l + 1]);
	}
	fprintf(f, "%-8s %6s %4s %9lld %9s\n", "logits", "-", "-", (long long)ein[g->n_layer + 1],
		"-");
	free(ein);
	free(eout);

	/* top edges by |score| */
	if (in->top > 0) {
		double *s = circ_xmalloc((size_t)g->n_edges * sizeof *s);
		int64_t *order = circ_xmalloc((size_t)g->n_edges * sizeof *order);
		for (int64_t i = 0; i < g->n_edges; i++)
			s[i] = in->keep[i] ? in->score[i] : NAN;
		int64_t m = circ_rank_edges(g, s, 0, order);
		if (m > 0) {
			fprintf(f, "\ntop edges by |score|:\n");
			for (int64_t k = 0; k < m && k < in->top; k++) {
				char name[CIRC_NAME_MAX], num[40];
				circ_graph_edge_name(g, order[k], name, sizeof name);
				circ_fmt_f64(num, sizeof num, s[order[k]]);
				fprintf(f, "%4lld  %-24s %s\n", (long long)k + 1, name, num);
			}
		}
		free(s);
		free(order);
	}

	/* faithfulness */
	const circ_curve *c = in->curve;
	if (c && c->n > 0) {
		fprintf(f, "\nfaithfulness%s%s%s:\n", c->metric_name ? " (metric " : "",
			c->metric_name ? c->metric_name : "", c->metric_name ? ")" : "");
		fprintf(f, "%10s %8s %13s\n", "fraction", "edges", "faithfulness");
		for (int64_t i = 0; i < c->n; i++) {
			char num[40];
			circ_fmt_f64(num, sizeof num, c->faithfulness[i]);
			fprintf(f, "%9.3g%% %8lld %13s\n", 100 * c->fraction[i],
				(long long)c->n_edges[i], num);
		}
		circ_curve_area a;
		circ_error sub;
		if (!isnan(c->cpr) || !isnan(c->cmd))
			fprintf(f, "CPR %.4f  CMD %.4f\n", c->cpr, c->cmd);
		else if (circ_eval_curve_areas(c->fraction, c->faithfulness, c->n, 0, &a, &sub) ==
			 0)
			fprintf(f, "area under f %.4f  area |1-f| %.4f\n", a.area_under,
				a.area_from_1);
	}
	free(node_in);
	return check(f, e);
}

/* ---- HTML ---- */

static const char *const html_head[] = {
    "<!DOCTYPE html>",
    "<html lang=\"en\">",
    "<head>",
    "<meta charset=\"utf-8\">",
    "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
    NULL,
};

static const char *const html_style[] = {
    "<style>",
    "body { font: 14px Helvetica, Arial, sans-serif; margin: 16px; color: #222; "
    "background: #fff; }",
    "h1 { font-size: 18px; margin: 0 0 8px; }",
    "#controls { margin: 8px 0; }",
    "#controls input[type=number] { width: 7em; }",
    "#graph { border: 1px solid #ddd; background: #fff; }",
    "#graph .node rect { stroke: #444; stroke-width: 1; }",
    "#graph .node text { font-size: 10px; text-anchor: middle; dominant-baseline: central; }",
    "#graph .edge .hit { pointer-events: stroke; }",
    "#graph .edge.hover .line { stroke-opacity: 1; filter: drop-shadow(0 0 2px #000); }",
    "#graph .edge .line { stroke-opacity: 0.8; }",
    "#tip { position: fixed; display: none; pointer-events: none; background: #fffbe6; "
    "border: 1px solid #999; padding: 4px 6px; font-size: 12px; white-space: pre; }",
    ".legend span { display: inline-block; width: 18px; height: 4px; margin: 0 4px 3px 12px; }",
    "</style>",
    "</head>",
    "<body>",
    NULL,
};

static const char *const html_script[] = {
    "<script>",
    "(function () {",
    "'use strict';",
    "var data = JSON.parse(document.getElementById('circuit-data').textContent);",
    "var NS = 'http://www.w3.org/2000/svg';",
    "var svg = document.getElementById('graph'), tip = document.getElementById('tip');",
    "var slider = document.getElementById('min-score');",
    "var num = document.getElementById('min-score-value');",
    "var countEl = document.getElementById('edge-count');",
    "var L = data.n_layer, H = data.n_head;",
    "function el(tag, attrs) {",
    "  var x = document.createElementNS(NS, tag);",
    "  for (var k in attrs) x.setAttribute(k, attrs[k]);",
    "  return x;",
    "}",
    "function rowOf(n) {",
    "  if (n.kind === 'input') return 0;",
    "  if (n.kind === 'logits') return 2 * L + 1;",
    "  return 1 + 2 * n.layer + (n.kind === 'mlp' ? 1 : 0);",
    "}",
    "var present = {};",
    "data.nodes.forEach(function (n) { present[rowOf(n)] = true; });",
    "var rows = Object.keys(present).map(Number).sort(function (a, b) { return a - b; });",
    "var rowIndex = {};",
    "rows.forEach(function (r, i) { rowIndex[r] = i; });",
    "var rowH = 72, margin = 36, boxW = 54, boxH = 22;",
    "var width = Math.max(480, 2 * margin + 64 * H), colW = (width - 2 * margin) / H;",
    "var height = 2 * margin + boxH + rowH * Math.max(0, rows.length - 1);",
    "svg.setAttribute('width', width);",
    "svg.setAttribute('height', height);",
    "svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);",
    "var pos = data.nodes.map(function (n) {",
    "  var x = n.kind === 'head' ? margin + colW * (n.head + 0.5) : width / 2;",
    "  return { x: x, y: height - margin - boxH / 2 - rowH * rowIndex[rowOf(n)] };",
    "});",
    "var maxAbs = 0;",
    "data.edges.forEach(function (e) {",
    "  if (e.score !== null) maxAbs = Math.max(maxAbs, Math.abs(e.score));",
    "});",
    "var defs = el('defs', {}), colors = ['#2166ac', '#b2182b', '#888888'];",
    "colors.forEach(function (c, i) {",
    "  var mk = el('marker', { id: 'arrow' + i, viewBox: '0 0 10 10', refX: 9, refY: 5,",
    "    markerWidth: 7, markerHeight: 7, markerUnits: 'userSpaceOnUse', orient: 'auto' });",
    "  mk.appendChild(el('path', { d: 'M0,0 L10,5 L0,10 z', fill: c }));",
    "  defs.appendChild(mk);",
    "});",
    "svg.appendChild(defs);",
    "var gE = el('g', { id: 'edges' }), gN = el('g', { id: 'nodes' });",
    "svg.appendChild(gE);",
    "svg.appendChild(gN);",
    "var off = { q: -15, k: 0, v: 15, '': 0 };",
    "function describe(e) {",
    "  var to = data.nodes[e.down].name;",
    "  return e.name + '\\nscore: ' + (e.score === null ? 'unknown' : e.score) +",
    "    '\\nreceiver: ' + to + (e.recv ? ' (' + e.recv + ')' : '');",
    "}",
    "function place(ev) {",
    "  tip.style.left = (ev.clientX + 12) + 'px';",
    "  tip.style.top = (ev.clientY + 12) + 'px';",
    "}",
    "var edgeEls = data.edges.map(function (e) {",
    "  var a = pos[e.up], b = pos[e.down];",
    "  var x1 = a.x, y1 = a.y - boxH / 2, x2 = b.x + off[e.recv], y2 = b.y + boxH / 2;",
    "  var dy = Math.max(20, (y1 - y2) / 2);",
    "  var d = 'M' + x1 + ',' + y1 + ' C' + x1 + ',' + (y1 - dy) + ' ' + x2 + ',' +",
    "    (y2 + dy) + ' ' + x2 + ',' + y2;",
    "  var ci = e.score === null ? 2 : e.score >= 0 ? 0 : 1, color = colors[ci];",
    "  var w = e.score === null || maxAbs === 0 ? 1 : 0.75 + 5 * Math.abs(e.score) / maxAbs;",
    "  var g = el('g', { 'class': 'edge', 'data-edge': e.name });",
    "  g.appendChild(el('path', { d: d, stroke: color, 'stroke-width': w, fill: 'none',",
    "    'class': 'line', 'marker-end': 'url(#arrow' + ci + ')' }));",
    "  g.appendChild(el('path', { d: d, stroke: 'transparent', 'stroke-width': 10,",
    "    fill: 'none', 'class': 'hit' }));",
    "  var t = el('title', {});",
    "  t.textContent = describe(e);",
    "  g.appendChild(t);",
    "  g.addEventListener('mouseenter', function (ev) {",
    "    tip.textContent = describe(e);",
    "    tip.style.display = 'block';",
    "    place(ev);",
    "    g.classList.add('hover');",
    "  });",
    "  g.addEventListener('mousemove', place);",
    "  g.addEventListener('mouseleave', function () {",
    "    tip.style.display = 'none';",
    "    g.classList.remove('hover');",
    "  });",
    "  gE.appendChild(g);",
    "  return g;",
    "});",
    "var fills = { input: '#e0e0e0', logits: '#e0e0e0', head: '#c6dbef', mlp: '#fdd0a2' };",
    "var nodeEls = data.nodes.map(function (n, i) {",
    "  var g = el('g', { 'class': 'node', 'data-node': n.name });",
    "  g.appendChild(el('rect', { x: pos[i].x - boxW / 2, y: pos[i].y - boxH / 2,",
    "    width: boxW, height: boxH, rx: 5, fill: fills[n.kind] }));",
    "  var t = el('text', { x: pos[i].x, y: pos[i].y });",
    "  t.textContent = n.name;",
    "  g.appendChild(t);",
    "  gN.appendChild(g);",
    "  return g;",
    "});",
    "function apply(min) {",
    "  var visible = 0, used = data.nodes.map(function () { return false; });",
    "  data.edges.forEach(function (e, i) {",
    "    var s = e.score === null ? 0 : Math.abs(e.score);",
    "    var on = !(min > 0) || s >= min;",
    "    edgeEls[i].style.display = on ? '' : 'none';",
    "    if (on) { visible++; used[e.up] = true; used[e.down] = true; }",
    "  });",
    "  nodeEls.forEach(function (g, i) { g.style.opacity = used[i] ? '1' : '0.25'; });",
    "  countEl.textContent = String(visible);",
    "}",
    "var m = /(?:^#|&)min=([^&]*)/.exec(location.hash);",
    "var min0 = m ? parseFloat(decodeURIComponent(m[1])) : 0;",
    "if (!isFinite(min0)) min0 = 0;",
    "slider.max = maxAbs > 0 ? maxAbs : 1;",
    "slider.step = 'any';",
    "slider.value = min0;",
    "num.value = min0;",
    "slider.addEventListener('input', function () {",
    "  num.value = slider.value;",
    "  apply(parseFloat(slider.value));",
    "});",
    "num.addEventListener('input', function () {",
    "  var v = parseFloat(num.value);",
    "  if (isFinite(v)) { slider.value = v; apply(v); }",
    "});",
    "apply(min0);",
    "document.body.setAttribute('data-ready', '1');",
    "})();",
    "</script>",
    "</body>",
    "</html>",
    NULL,
};

static void put_lines(FILE *f, const char *const *lines)
{
	for (; *lines; lines++) {
		fputs(*lines, f);
		putc('\n', f);
	}
}

int circ_render_html(FILE *f, const circ_render_in *in, circ_error *e)
{
	const circ_graph *g = in->g;
	const char *title = in->title ? in->title : "circuit";
	uint8_t *node_in = circ_xmalloc((size_t)g->n_nodes);
	int *slot = circ_xmalloc((size_t)g->n_nodes * sizeof *slot);
	circ_circuit_nodes(g, in->keep, node_in);
	int64_t n_kept = circ_count_kept(g, in->keep);
	char name[CIRC_NAME_MAX], num[40];

	put_lines(f, html_head);
	fputs("<title>", f);
	put_xml(f, title);
	fputs("</title>\n", f);
	put_lines(f, html_style);
	fputs("<h1>", f);
	put_xml(f, title);
	fputs("</h1>\n<div id=\"controls\">\n", f);
	fputs("<label>minimum |score| <input type=\"range\" id=\"min-score\" min=\"0\" max=\"1\" "
	      "value=\"0\"></label>\n",
	      f);
	fputs("<input type=\"number\" id=\"min-score-value\" min=\"0\" step=\"any\" value=\"0\">\n",
	      f);
	fprintf(f,
		"<span><span id=\"edge-count\">%lld</span> of <span id=\"edge-total\">%lld"
		"</span> edges shown</span>\n",
		(long long)n_kept, (long long)n_kept);
	fputs("<span class=\"legend\"><span style=\"background:#2166ac\"></span>positive"
	      "<span style=\"background:#b2182b\"></span>negative"
	      "<span style=\"background:#888888\"></span>unknown</span>\n",
	      f);
	fputs("</div>\n<svg id=\"graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"480\" "
	      "height=\"200\"></svg>\n<div id=\"tip\" role=\"tooltip\"></div>\n",
	      f);

	/* the data block */
	fputs("<script id=\"circuit-data\" type=\"application/json\">\n", f);
	fprintf(f, "{\"n_layer\": %d, \"n_head\": %d, \"title\": \"", g->n_layer, g->n_head);
	put_escaped(f, title, 1);
	fputs("\",\n\"nodes\": [", f);
	int k = 0;
	for (int n = 0; n < g->n_nodes; n++) {
		if (!node_in[n])
			continue;
		circ_node_kind kind;
		int l, h;
		static const char *const kinds[] = {"input", "head", "mlp", "logits"};
		circ_graph_node_info(g, n, &kind, &l, &h);
		circ_graph_node_name(g, n, name, sizeof name);
		fprintf(f, "%s\n {\"name\": \"%s\", \"kind\": \"%s\", \"layer\": %d, \"head\": %d}",
			k ? "," : "", name, kinds[kind], l, h);
		slot[n] = k++;
	}
	fputs("],\n\"edges\": [", f);
	k = 0;
	for (int64_t i = 0; i < g->n_edges; i++) {
		if (!in->keep[i])
			continue;
		int down;
		circ_graph_recv_info(g, g->edge_recv[i], NULL, &down);
		circ_graph_edge_name(g, i, name, sizeof name);
		if (isnan(in->score[i]))
			snprintf(num, sizeof num, "null");
		else
			circ_fmt_f64(num, sizeof num, in->score[i]);
		fputs(k++ ? ",\n {\"name\": \"" : "\n {\"name\": \"", f);
		put_escaped(f, name, 1);
		fprintf(f, "\", \"up\": %d, \"down\": %d, \"recv\": \"%s\", \"score\": %s}",
			slot[g->edge_up[i]], slot[down], circ_graph_recv_letter(g, g->edge_recv[i]),
			num);
	}
	fputs("]}\n</script>\n", f);
	put_lines(f, html_script);
	free(node_in);
	free(slot);
	return check(f, e);
}

/* ---- faithfulness curve SVG ---- */

static double nice_step(double range)
{
	double raw = range / 5, p = pow(10, floor(log10(raw))), m = raw / p;
	return (m < 1.5 ? 1 : m < 3 ? 2 : m < 7 ? 5 : 10) * p;
}

int circ_render_curve_svg(FILE *f, const circ_curve *c, const char *title, circ_error *e)
{
	if (c->n < 1)
		return circ_errorf(e, "the curve has no points");
	const double W = 640, Hh = 400, ml = 70, mr = 24, mt = 56, mb = 56;
	int logx = 1;
	for (int64_t i = 0; i < c->n; i++)
		if (!(c->fraction[i] > 0))
			logx = 0;
	double x0, x1;
	if (logx) {
		x0 = floor(log10(c->fraction[0]));
		x1 = ceil(log10(c->fraction[c->n - 1]));
		if (x1 <= x0)
			x1 = x0 + 1;
	} else {
		x0 = 0;
		x1 = 1;
	}
	double y0 = 0, y1 = 1;
	for (int64_t i = 0; i < c->n; i++) {
		double v = c->faithfulness[i];
		if (isfinite(v)) {
			y0 = fmin(y0, v);
			y1 = fmax(y1, v);
		}
	}
	double pad = 0.05 * (y1 - y0);
	y0 -= pad;
	y1 += pad;
#define PX(fr) (ml + ((logx ? log10(fr) : (fr)) - x0) / (x1 - x0) * (W - ml - mr))
#define PY(v)  (Hh - mb - ((v)-y0) / (y1 - y0) * (Hh - mt - mb))
	fprintf(f,
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
		"viewBox=\"0 0 %.0f %.0f\" font-family=\"Helvetica, Arial, sans-serif\" "
		"font-size=\"12\">\n",
		W, Hh, W, Hh);
	fprintf(f, "<rect width=\"%.0f\" height=\"%.0f\" fill=\"white\"/>\n", W, Hh);
	fputs("<text x=\"320\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">", f);
	if (title)
		put_xml(f, title);
	else {
		fputs("faithfulness", f);
		if (c->metric_name) {
			fputs(" (", f);
			put_xml(f, c->metric_name);
			fputs(")", f);
		}
	}
	fputs("</text>\n", f);
	circ_curve_area a;
	circ_error sub;
	if (!isnan(c->cpr) || !isnan(c->cmd))
		fprintf(
		    f,
		    "<text x=\"320\" y=\"40\" text-anchor=\"middle\">CPR %.4f, CMD %.4f</text>\n",
		    c->cpr, c->cmd);
	else if (circ_eval_curve_areas(c->fraction, c->faithfulness, c->n, 0, &a, &sub) == 0)
		fprintf(f,
			"<text x=\"320\" y=\"40\" text-anchor=\"middle\">area under f %.4f, "
			"area |1 - f| %.4f</text>\n",
			a.area_under, a.area_from_1);
	/* grid and y ticks */
	double step = nice_step(y1 - y0);
	for (double v = ceil(y0 / step) * step; v <= y1 + 1e-12; v += step) {
		double y = PY(v);
		fprintf(
		    f,
		    "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#eeeeee\"/>\n",
		    ml, y, W - mr, y);
		fprintf(f,
			"<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\" "
			"dominant-baseline=\"central\">%.3g</text>\n",
			ml - 6, y, fabs(v) < 1e-12 ? 0.0 : v);
	}
	/* x ticks */
	if (logx) {
		for (double k = x0; k <= x1 + 1e-9; k += 1) {
			double x = ml + (k - x0) / (x1 - x0) * (W - ml - mr);
			fprintf(f,
				"<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" "
				"stroke=\"#eeeeee\"/>\n",
				x, (double)mt, x, Hh - mb);
			fprintf(
			    f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">%.4g%%</text>\n",
			    x, Hh - mb + 18, 100 * pow(10, k));
		}
	} else {
		for (int k = 0; k <= 5; k++) {
			double x = ml + k / 5.0 * (W - ml - mr);
			fprintf(f,
				"<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">%d%%</text>\n",
				x, Hh - mb + 18, 20 * k);
		}
	}
	fprintf(f,
		"<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">edges kept "
		"(fraction of the graph%s)</text>\n",
		(ml + W - mr) / 2, Hh - 14, logx ? ", log scale" : "");
	fprintf(f,
		"<text transform=\"translate(18 %.2f) rotate(-90)\" text-anchor=\"middle\">"
		"faithfulness</text>\n",
		(mt + Hh - mb) / 2);
	/* reference lines: the full model (f = 1) and the empty circuit (f = 0) */
	fprintf(f,
		"<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#666666\" "
		"stroke-dasharray=\"5 4\"/>\n",
		ml, PY(1.0), W - mr, PY(1.0));
	fprintf(f,
		"<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#999999\" "
		"stroke-dasharray=\"2 4\"/>\n",
		ml, PY(0.0), W - mr, PY(0.0));
	/* axes */
	fprintf(f, "<path d=\"M%.2f,%.2f V%.2f H%.2f\" fill=\"none\" stroke=\"#333333\"/>\n", ml,
		(double)mt, Hh - mb, W - mr);
	/* the curve */
	fputs("<polyline fill=\"none\" stroke=\"#2166ac\" stroke-width=\"2\" points=\"", f);
	for (int64_t i = 0; i < c->n; i++)
		fprintf(f, "%s%.2f,%.2f", i ? " " : "", PX(c->fraction[i]), PY(c->faithfulness[i]));
	fputs("\"/>\n", f);
	for (int64_t i = 0; i < c->n; i++) {
		char num[40];
		circ_fmt_f64(num, sizeof num, c->faithfulness[i]);
		fprintf(f,
			"<circle cx=\"%.2f\" cy=\"%.2f\" r=\"3.5\" fill=\"#2166ac\"><title>%.4g%% "
			"(%lld edges): f = %s</title></circle>\n",
			PX(c->fraction[i]), PY(c->faithfulness[i]), 100 * c->fraction[i],
			(long long)c->n_edges[i], num);
	}
	fputs("</svg>\n", f);
#undef PX
#undef PY
	return check(f, e);
}

/* ---- shared with the rest of the module (render_impl.h) ---- */

const char *const *const circ_render_html_head = html_head;

void circ_render_put_lines(FILE *f, const char *const *lines)
{
	put_lines(f, lines);
}

void circ_render_put_xml(FILE *f, const char *s)
{
	put_xml(f, s);
}

int circ_render_check(FILE *f, circ_error *e)
{
	return check(f, e);
}
