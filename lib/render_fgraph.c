/*
 * render_fgraph: the feature-graph page (see render_fgraph.h). The C side
 * writes the graph and the dashboards as JSON blocks; the inline script
 * lays the nodes out and draws them as SVG.
 */
#include "render_fgraph.h"
#include "render.h"
#include "render_impl.h"

#include <math.h>

static const char *const kind_names[] = {"feature", "error", "token", "logit"};

static const char *const page_style[] = {
    "#layout { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }",
    "#graph-box { overflow: auto; max-width: 100%; border: 1px solid #ccc; }",
    "#side { flex: 1 1 420px; min-width: 320px; }",
    "#info { font: 12px monospace; white-space: pre-wrap; border: 1px solid #ccc; "
    "padding: 6px; min-height: 3em; }",
    "svg#graph text { font: 10px Helvetica, Arial, sans-serif; fill: #444; }",
    "svg#graph .edge { fill: none; stroke-opacity: 0.55; }",
    "svg#graph .edge.hl { stroke-opacity: 1; }",
    "svg#graph .node { cursor: pointer; stroke: #222; stroke-width: 0.5; }",
    "svg#graph .node.sel { stroke: #000; stroke-width: 2.5; }",
    "svg#graph .node.feature { fill: #e66100; }",
    "svg#graph .node.error { fill: #77767b; }",
    "svg#graph .node.token { fill: #2ec27e; }",
    "svg#graph .node.logit { fill: #9141ac; }",
    ".legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px; }",
    NULL,
};

static const char *const page_script[] = {
    "(function () {",
    "'use strict';",
    "var G = JSON.parse(document.getElementById('fgraph-data').textContent);",
    "var D = JSON.parse(document.getElementById('dashboard-data').textContent);",
    "var NS = 'http://www.w3.org/2000/svg';",
    "var svg = document.getElementById('graph');",
    "var nodes = G.nodes, edges = G.edges, R = G.rows.length;",
    "function el(tag, attrs) {",
    "  var x = document.createElementNS(NS, tag);",
    "  Object.keys(attrs).forEach(function (k) { x.setAttribute(k, attrs[k]); });",
    "  return x;",
    "}",
    "function num(v) { return v === null ? '-' : Number(v).toPrecision(4); }",
    "/* layout: rows bottom-up; one column per position when nodes have one */",
    "var T = G.tokens ? G.tokens.length : 0;",
    "nodes.forEach(function (n) { if (n.pos >= T) T = n.pos + 1; });",
    "var positional = nodes.some(function (n) { return n.pos >= 0; });",
    "var cells = {}, widest = 1;",
    "nodes.forEach(function (n, i) {",
    "  var key = n.row + ':' + (positional ? n.pos : 0);",
    "  (cells[key] = cells[key] || []).push(i);",
    "  widest = Math.max(widest, cells[key].length);",
    "});",
    "var rowH = 80, left = 70, top = 20, bottom = positional ? 40 : 20;",
    "var colW = positional ? Math.max(60, widest * 16 + 12) : 0;",
    "var W = positional ? left + colW * Math.max(T, 1) + 20",
    "                   : left + Math.max(520, widest * 22 + 40);",
    "var H = top + rowH * R + bottom;",
    "svg.setAttribute('width', W); svg.setAttribute('height', H);",
    "var X = [], Y = [];",
    "Object.keys(cells).forEach(function (key) {",
    "  var ids = cells[key], row = nodes[ids[0]].row, p = nodes[ids[0]].pos;",
    "  var x0 = left, w = W - left - 20;",
    "  if (positional && p >= 0) { x0 = left + colW * p; w = colW; }",
    "  ids.forEach(function (i, j) {",
    "    X[i] = x0 + w * (j + 0.5) / ids.length;",
    "    Y[i] = top + rowH * (R - 1 - row) + rowH / 2;",
    "  });",
    "});",
    "G.rows.forEach(function (label, r) {",
    "  var t = el('text', {x: 4, y: top + rowH * (R - 1 - r) + rowH / 2 + 3});",
    "  t.textContent = label; svg.appendChild(t);",
    "});",
    "if (positional) for (var p = 0; p < T; p++) {",
    "  var t = el('text', {x: left + colW * (p + 0.5), y: H - 14, 'text-anchor': 'middle'});",
    "  t.textContent = (G.tokens && G.tokens[p] !== undefined ? JSON.stringify(G.tokens[p])",
    "                   : '') + ' @' + p;",
    "  svg.appendChild(t);",
    "}",
    "/* edges: strongest drawn last */",
    "var maxW = 0;",
    "edges.forEach(function (e) { maxW = Math.max(maxW, Math.abs(e[2] || 0)); });",
    "var order = edges.map(function (e, k) { return k; });",
    "order.sort(function (a, b) {",
    "  var d = Math.abs(edges[a][2] || 0) - Math.abs(edges[b][2] || 0);",
    "  return d || a - b;",
    "});",
    "var inE = nodes.map(function () { return []; }), outE = nodes.map(function () { return []; "
    "});",
    "var paths = [];",
    "order.forEach(function (k) {",
    "  var e = edges[k], s = e[0], d = e[1], w = e[2] || 0;",
    "  var my = (Y[s] + Y[d]) / 2;",
    "  var path = el('path', {",
    "    'class': 'edge', d: 'M' + X[s] + ',' + Y[s] + ' C' + X[s] + ',' + my + ' ' + X[d] +",
    "      ',' + my + ' ' + X[d] + ',' + Y[d],",
    "    stroke: w >= 0 ? '#1a5fb4' : '#c01c28',",
    "    'stroke-width': (0.5 + 5 * (maxW > 0 ? Math.abs(w) / maxW : 0)).toFixed(2)",
    "  });",
    "  var ti = el('title', {});",
    "  ti.textContent = nodes[s].name + ' -> ' + nodes[d].name + ': ' + num(e[2]);",
    "  path.appendChild(ti); svg.appendChild(path);",
    "  paths[k] = path; outE[s].push(k); inE[d].push(k);",
    "});",
    "/* nodes */",
    "var info = document.getElementById('info'), dash = document.getElementById('dashboard');",
    "var shapes = [], selected = -1;",
    "function strongest(list, end) {",
    "  return list.slice().sort(function (a, b) {",
    "    var d = Math.abs(edges[b][2] || 0) - Math.abs(edges[a][2] || 0);",
    "    return d || a - b;",
    "  }).slice(0, 8).map(function (k) {",
    "    return '  ' + nodes[edges[k][end]].name + ': ' + num(edges[k][2]);",
    "  }).join('\\n');",
    "}",
    "function describe(i) {",
    "  var n = nodes[i], s = n.name + ' (' + n.kind + ')\\n';",
    "  if (n.pos >= 0) s += 'position ' + n.pos + '\\n';",
    "  if (n.text !== null) s += 'token ' + JSON.stringify(n.text) + '\\n';",
    "  if (n.value !== null) s += G.value_name + ' ' + num(n.value) + '\\n';",
    "  if (n.influence !== null) s += 'influence ' + num(n.influence) + '\\n';",
    "  if (inE[i].length) s += 'in (' + inE[i].length + '):\\n' + strongest(inE[i], 0) + '\\n';",
    "  if (outE[i].length) s += 'out (' + outE[i].length + '):\\n' + strongest(outE[i], 1) + "
    "'\\n';",
    "  return s;",
    "}",
    "function highlight(i, on) {",
    "  inE[i].concat(outE[i]).forEach(function (k) { paths[k].classList.toggle('hl', on); });",
    "}",
    "function show(i) {",
    "  info.textContent = describe(i);",
    "}",
    "function click(i) {",
    "  if (selected >= 0) { shapes[selected].classList.remove('sel'); highlight(selected, false); "
    "}",
    "  selected = i; shapes[i].classList.add('sel'); highlight(i, true); show(i);",
    "  var n = nodes[i];",
    "  while (dash.firstChild) dash.removeChild(dash.firstChild);",
    "  if (n.dash >= 0) dash.appendChild(circDash(D[n.dash]));",
    "  else {",
    "    var p = document.createElement('p');",
    "    p.textContent = n.kind === 'feature' ? 'No dashboard for ' + n.name +",
    "      ' in this page (circ-render --dashboards-from adds them).' :",
    "      n.name + ' is not a feature: no dashboard.';",
    "    dash.appendChild(p);",
    "  }",
    "  document.body.setAttribute('data-clicked', n.name);",
    "}",
    "nodes.forEach(function (n, i) {",
    "  var g, x = X[i], y = Y[i];",
    "  if (n.kind === 'feature') g = el('circle', {cx: x, cy: y, r: 6});",
    "  else if (n.kind === 'error')",
    "    g = el('rect', {x: x - 5, y: y - 5, width: 10, height: 10,",
    "                    transform: 'rotate(45 ' + x + ' ' + y + ')'});",
    "  else g = el('rect', {x: x - 6, y: y - 6, width: 12, height: 12});",
    "  g.setAttribute('class', 'node ' + n.kind);",
    "  g.setAttribute('data-node', n.name);",
    "  var ti = el('title', {});",
    "  ti.textContent = n.name + (n.value !== null ? ' ' + G.value_name + ' ' + num(n.value) : "
    "'');",
    "  g.appendChild(ti);",
    "  g.addEventListener('mouseenter', function () { highlight(i, true); show(i); });",
    "  g.addEventListener('mouseleave', function () {",
    "    if (i !== selected) highlight(i, false);",
    "    if (selected >= 0) show(selected);",
    "  });",
    "  g.addEventListener('click', function () { click(i); });",
    "  svg.appendChild(g); shapes[i] = g;",
    "  if (nodes.length <= 400) { /* a short label: the part after the dictionary */",
    "    var lb = el('text', {x: x, y: y + 16, 'text-anchor': 'middle', 'class': 'label'});",
    "    var dot = n.name.indexOf('.');",
    "    lb.textContent = n.kind === 'token' || n.kind === 'logit' ? (n.text !== null ?",
    "      JSON.stringify(n.text) : n.name) : n.name.slice(dot + 1).replace(/@.*/, '');",
    "    svg.appendChild(lb);",
    "  }",
    "});",
    "document.getElementById('node-count').textContent = String(nodes.length);",
    "document.getElementById('edge-count').textContent = String(edges.length);",
    "document.getElementById('dash-count').textContent = String(D.length);",
    "var h = decodeURIComponent(location.hash || '');",
    "if (h.indexOf('#click=') === 0) {",
    "  var want = h.slice(7);",
    "  shapes.forEach(function (s) {",
    "    if (s.getAttribute('data-node') === want)",
    "      s.dispatchEvent(new MouseEvent('click', {bubbles: true}));",
    "  });",
    "}",
    "document.body.setAttribute('data-ready', '1');",
    "})();",
    "</script>",
    NULL,
};

static void put_num(FILE *f, double v)
{
	char buf[32];
	if (!isfinite(v)) {
		fputs("null", f);
		return;
	}
	circ_fmt_f64(buf, sizeof buf, v);
	fputs(buf, f);
}

/* The graph's JSON block. */
static void put_graph(FILE *f, const circ_fg *g)
{
	fputs("{\"value_name\":", f);
	circ_render_put_json_str(f, g->value_name ? g->value_name : "value");
	fputs(",\"rows\":[", f);
	for (int r = 0; r < g->n_rows; r++) {
		if (r)
			putc(',', f);
		circ_render_put_json_str(f, g->rows[r]);
	}
	fputs("],\"tokens\":", f);
	if (g->tokens) {
		putc('[', f);
		for (int t = 0; t < g->T; t++) {
			if (t)
				putc(',', f);
			circ_render_put_json_str(f, g->tokens[t]);
		}
		putc(']', f);
	} else
		fputs("null", f);
	fputs(",\"nodes\":[\n", f);
	for (int i = 0; i < g->n_nodes; i++) {
		const circ_fg_node *n = &g->nodes[i];
		fputs("{\"name\":", f);
		circ_render_put_json_str(f, n->name);
		fprintf(f, ",\"kind\":\"%s\",\"row\":%d,\"pos\":%d,\"value\":", kind_names[n->kind],
			n->row, n->pos);
		put_num(f, n->value);
		fputs(",\"influence\":", f);
		put_num(f, n->influence);
		fputs(",\"text\":", f);
		if (n->text)
			circ_render_put_json_str(f, n->text);
		else
			fputs("null", f);
		fprintf(f, ",\"dash\":%d}%s\n", n->dash, i + 1 < g->n_nodes ? "," : "");
	}
	fputs("],\"edges\":[\n", f);
	for (int64_t k = 0; k < g->n_edges; k++) {
		fprintf(f, "[%d,%d,", g->edges[k].src, g->edges[k].dst);
		put_num(f, g->edges[k].weight);
		fputs(k + 1 < g->n_edges ? "],\n" : "]\n", f);
	}
	fputs("]}", f);
}

static int check_graph(const circ_fg *g, circ_error *e)
{
	for (int i = 0; i < g->n_nodes; i++) {
		const circ_fg_node *n = &g->nodes[i];
		if (n->row < 0 || n->row >= g->n_rows)
			return circ_errorf(e, "node '%s': row %d is not in [0, %d)", n->name,
					   n->row, g->n_rows);
		if (n->kind < CIRC_FG_FEATURE || n->kind > CIRC_FG_LOGIT)
			return circ_errorf(e, "node '%s': unknown kind", n->name);
		if (n->dash < -1 || n->dash >= (g->d ? g->n_dash : 0))
			return circ_errorf(e, "node '%s': dashboard %d is not in the page", n->name,
					   n->dash);
	}
	for (int64_t k = 0; k < g->n_edges; k++)
		if (g->edges[k].src < 0 || g->edges[k].src >= g->n_nodes || g->edges[k].dst < 0 ||
		    g->edges[k].dst >= g->n_nodes)
			return circ_errorf(e, "edge %lld: a node index is not in [0, %d)",
					   (long long)k, g->n_nodes);
	return 0;
}

int circ_render_fgraph_html(FILE *f, const circ_fg *g, circ_error *e)
{
	if (check_graph(g, e) < 0)
		return -1;
	circ_dash_page_start(f, g->title ? g->title : "feature graph", page_style);
	if (g->caption) {
		fputs("<p>", f);
		circ_render_put_xml(f, g->caption);
		fputs("</p>\n", f);
	}
	fputs("<p><span id=\"node-count\">0</span> nodes, <span id=\"edge-count\">0</span> "
	      "edges, <span id=\"dash-count\">0</span> feature dashboards. Rows bottom-up in "
	      "forward order; edge width from |weight|, blue positive, red negative. Hover a "
	      "node to see it, click a feature for its dashboard.</p>\n"
	      "<p class=\"legend\"><span style=\"background:#e66100\"></span>feature"
	      "<span style=\"background:#77767b\"></span>error"
	      "<span style=\"background:#2ec27e\"></span>token"
	      "<span style=\"background:#9141ac\"></span>logit</p>\n"
	      "<div id=\"layout\">\n<div id=\"graph-box\"><svg id=\"graph\" "
	      "xmlns=\"http://www.w3.org/2000/svg\"></svg></div>\n<div id=\"side\">\n"
	      "<div id=\"info\">Hover or click a node.</div>\n<div id=\"dashboard\"></div>\n"
	      "</div>\n</div>\n",
	      f);
	fputs("<script type=\"application/json\" id=\"fgraph-data\">", f);
	put_graph(f, g);
	fputs("</script>\n<script type=\"application/json\" id=\"dashboard-data\">[\n", f);
	if (g->d)
		for (int i = 0; i < g->n_dash; i++) {
			circ_dash_put_feature(f, g->d, g->show, g->dash_feats[i]);
			fputs(i + 1 < g->n_dash ? ",\n" : "\n", f);
		}
	fputs("]</script>\n<script>\n", f);
	circ_render_put_lines(f, circ_dash_script);
	circ_render_put_lines(f, page_script);
	fputs("</body>\n</html>\n", f);
	return circ_render_check(f, e);
}
