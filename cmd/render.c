/*
 * circ-render: a circuit (and optionally the scores of every edge and a
 * faithfulness curve) as Graphviz DOT, SVG (DOT piped through `dot -Tsvg`),
 * EAP-IG graph JSON, a text summary or a self-contained HTML page; or a
 * faithfulness curve as an SVG plot; or the graph's edge names
 * (--list-edges). The formats live in lib/render.c; this file reads the
 * inputs, runs Graphviz and writes the output atomically (a temporary,
 * renamed into place), so a failed run never leaves a file that looks done.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/opt.h"
#include "render.h"

enum {
	OPT_FORMAT = 'f',
	OPT_OUT = 'o',
	OPT_SCORES = CIRC_OPT_FIRST_TOOL,
	OPT_CURVE,
	OPT_TITLE,
	OPT_TOP,
	OPT_D_MODEL,
	OPT_LEGACY,
	OPT_LIST_EDGES,
	OPT_GRAPH,
};

static const circ_opt opts[] = {
    {"format", OPT_FORMAT, "FMT", "text (default), dot, svg, json, html or curve-svg"},
    {"output", OPT_OUT, "FILE", "write to FILE (atomically, via a temporary) instead of stdout"},
    {"scores", OPT_SCORES, "FILE", "scores stream giving every edge's score"},
    {"curve", OPT_CURVE, "FILE", "faithfulness curve stream (text summary, curve-svg)"},
    {"title", OPT_TITLE, "TEXT", "title for the picture or page"},
    {"top", OPT_TOP, "K", "text: list the K edges with the largest |score| (default 10)"},
    {"d-model", OPT_D_MODEL, "N", "json: record d_model in cfg (EAP-IG's from_json needs it)"},
    {"eap-ig-legacy", OPT_LEGACY, NULL, "json: EAP-IG's older layout (nodes as booleans)"},
    {"list-edges", OPT_LIST_EDGES, NULL, "print the graph's edge names, one a line, and exit"},
    {"graph", OPT_GRAPH, "L,H[,node]", "with --list-edges: the graph's shape instead of an input"},
    {0},
};

typedef enum { F_TEXT, F_DOT, F_SVG, F_JSON, F_HTML, F_CURVE_SVG } format_t;
static const char *const format_names[] = {"text", "dot", "svg", "json", "html", "curve-svg", NULL};

static struct {
	format_t format;
	const char *scores, *curve, *title;
	int top, legacy, list_edges;
	int64_t d_model;
	const char *graph;
	int format_set, top_set;
} o = {F_TEXT, NULL, NULL, NULL, 10, 0, 0, -1, NULL, 0, 0};

static int handle(int key, const char *arg, void *ctx)
{
	(void)ctx;
	switch (key) {
	case OPT_FORMAT:
		for (int i = 0; format_names[i]; i++)
			if (!strcmp(arg, format_names[i])) {
				o.format = (format_t)i;
				o.format_set = 1;
				return 0;
			}
		circ_usage_error(
		    "option '--format': unknown format '%s' (text, dot, svg, json, html, "
		    "curve-svg)",
		    arg);
	case OPT_SCORES: o.scores = arg; return 0;
	case OPT_CURVE: o.curve = arg; return 0;
	case OPT_TITLE: o.title = arg; return 0;
	case OPT_TOP:
		o.top = (int)circ_opt_i64("top", arg, 0, 1000000);
		o.top_set = 1;
		return 0;
	case OPT_D_MODEL: o.d_model = circ_opt_i64("d-model", arg, 1, INT32_MAX); return 0;
	case OPT_LEGACY: o.legacy = 1; return 0;
	case OPT_LIST_EDGES: o.list_edges = 1; return 0;
	case OPT_GRAPH: o.graph = arg; return 0;
	}
	return -1;
}

/* ---- output: stdout, or a temporary renamed into place ---- */

static circ_atomic out_file_w;
static int out_file; /* writing to out rather than stdout */

static FILE *out_open(const char *path)
{
	circ_error e;
	FILE *f;
	if (!strcmp(path, "-"))
		return stdout;
	if (circ_atomic_open(&out_file_w, path, &e) < 0)
		circ_die(&e);
	if (!(f = circ_atomic_file(&out_file_w, &e)))
		circ_die(&e);
	out_file = 1;
	return f;
}

static void out_fail(FILE *f, circ_error *e)
{
	(void)f;
	circ_error_prefix(e, "'%s'", out_file ? out_file_w.path : "<stdout>");
	if (out_file)
		circ_atomic_abort(&out_file_w);
	circ_die(e);
}

static void out_close(FILE *f)
{
	circ_error e;
	if (out_file) {
		if (circ_atomic_commit(&out_file_w, &e) < 0)
			circ_die(&e);
		return;
	}
	int bad = ferror(f);
	if (fclose(f) != 0 || bad)
		circ_dief("'<stdout>': write error: %s", strerror(errno ? errno : EIO));
}

/* Pipes text through `dot -Tsvg` (or $CIRC_DOT) into out's file descriptor
 * and checks Graphviz's exit status. */
static int run_dot(const char *text, size_t len, FILE *out, circ_error *e)
{
	const char *prog = getenv("CIRC_DOT");
	if (!prog || !*prog)
		prog = "dot";
	if (fflush(out) != 0)
		return circ_errorf(e, "write error: %s", strerror(errno));
	int p[2];
	if (pipe(p) < 0)
		return circ_errorf(e, "pipe: %s", strerror(errno));
	pid_t pid = fork();
	if (pid < 0)
		return circ_errorf(e, "fork: %s", strerror(errno));
	if (pid == 0) {
		close(p[1]);
		if (dup2(p[0], 0) < 0 || dup2(fileno(out), 1) < 0)
			_exit(127);
		close(p[0]);
		execlp(prog, prog, "-Tsvg", (char *)NULL);
		_exit(127);
	}
	close(p[0]);
	void (*old)(int) = signal(SIGPIPE, SIG_IGN);
	size_t off = 0;
	int werr = 0;
	while (off < len) {
		ssize_t k = write(p[1], text + off, len - off);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			werr = errno;
			break;
		}
		off += (size_t)k;
	}
	close(p[1]);
	signal(SIGPIPE, old);
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return circ_errorf(e, "waitpid: %s", strerror(errno));
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
		return circ_errorf(e, "cannot run '%s' (is Graphviz installed?)", prog);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		if (WIFSIGNALED(st))
			return circ_errorf(e, "'%s -Tsvg' was killed by signal %d", prog,
					   WTERMSIG(st));
		return circ_errorf(e, "'%s -Tsvg' failed (exit status %d)", prog, WEXITSTATUS(st));
	}
	if (werr)
		return circ_errorf(e, "writing to '%s': %s", prog, strerror(werr));
	return 0;
}

/* "L,H" or "L,H,node" or "L,H,edge". */
static circ_graph *parse_graph_spec(const char *spec)
{
	char buf[64];
	int64_t L, H;
	circ_graph_level level = CIRC_LEVEL_EDGE;
	if (strlen(spec) >= sizeof buf)
		circ_usage_error("option '--graph': '%s' is not L,H[,node]", spec);
	strcpy(buf, spec);
	char *a = strtok(buf, ","), *b = strtok(NULL, ","), *c = strtok(NULL, ",");
	if (!a || !b || strtok(NULL, ",") || circ_parse_i64(a, &L) < 0 ||
	    circ_parse_i64(b, &H) < 0 || (c && circ_graph_level_parse(c, &level) < 0))
		circ_usage_error("option '--graph': '%s' is not L,H[,node]", spec);
	circ_error e;
	if (L < 1 || L > CIRC_GRAPH_MAX_LAYER || H < 1 || H > CIRC_GRAPH_MAX_HEAD)
		circ_usage_error("option '--graph': '%s': layers 1..%d, heads 1..%d", spec,
				 CIRC_GRAPH_MAX_LAYER, CIRC_GRAPH_MAX_HEAD);
	circ_graph *g = circ_graph_new((int)L, (int)H, level, &e);
	if (!g)
		circ_die(&e);
	return g;
}

static int list_edges(circ_cli *cli, const char *input)
{
	circ_error e;
	circ_graph *g;
	if (o.graph) {
		g = parse_graph_spec(o.graph);
	} else {
		circ_reader *r = circ_reader_open(input, NULL, &e);
		if (!r)
			circ_die(&e);
		g = circ_graph_from_header(circ_reader_header(r), &e);
		if (!g) {
			circ_error_prefix(&e, "%s: record 0", circ_reader_name(r));
			circ_die(&e);
		}
		circ_reader_free(r);
	}
	FILE *f = out_open(cli->output);
	if (circ_graph_write_edges(g, f, &e) < 0)
		out_fail(f, &e);
	out_close(f);
	circ_graph_free(g);
	return 0;
}

static circ_curve *read_curve(const char *path)
{
	circ_error e;
	circ_reader *r = circ_reader_open(path, "curve", &e);
	if (!r)
		circ_die(&e);
	circ_curve *c = circ_eval_curve_read(r, &e);
	if (!c)
		circ_die(&e);
	circ_reader_free(r);
	return c;
}

/* Options the chosen format or mode would ignore are usage errors. */
static void check_options(void)
{
	const char *f = format_names[o.format];
	if (o.list_edges) {
		const char *bad = o.format_set	   ? "format"
				  : o.scores	   ? "scores"
				  : o.curve	   ? "curve"
				  : o.title	   ? "title"
				  : o.top_set	   ? "top"
				  : o.d_model >= 0 ? "d-model"
				  : o.legacy	   ? "eap-ig-legacy"
						   : NULL;
		if (bad)
			circ_usage_error("option '--%s' does not apply to --list-edges", bad);
		return;
	}
	if (o.top_set && o.format != F_TEXT)
		circ_usage_error("option '--top' goes with --format text");
	if (o.d_model >= 0 && o.format != F_JSON)
		circ_usage_error("option '--d-model' goes with --format json");
	if (o.legacy && o.format != F_JSON)
		circ_usage_error("option '--eap-ig-legacy' goes with --format json");
	if (o.legacy && o.d_model >= 0)
		circ_usage_error("option '--d-model' does not apply to --eap-ig-legacy (its layout "
				 "has no d_model)");
	if (o.title && o.format == F_JSON)
		circ_usage_error("option '--title' does not apply to --format %s", f);
	if (o.curve && o.format != F_TEXT && o.format != F_CURVE_SVG)
		circ_usage_error("option '--curve' goes with --format text or curve-svg");
}

/* --format curve-svg: plots the curve from --curve or input (given: an
 * input was named). */
static int plot_curve(const circ_cli *cli, const char *input, int given)
{
	circ_error e;
	if (o.scores)
		circ_usage_error("--scores does not go with --format curve-svg");
	if (o.curve && given)
		circ_usage_error("--format curve-svg reads one curve: --curve or an input, "
				 "not both");
	circ_curve *c = read_curve(o.curve ? o.curve : input);
	FILE *f = out_open(cli->output);
	if (circ_render_curve_svg(f, c, o.title, &e) < 0)
		out_fail(f, &e);
	out_close(f);
	circ_eval_curve_free(c);
	return 0;
}

/* The --scores stream, or NULL without it. */
static circ_scores *read_scores(void)
{
	circ_error e;
	circ_scores *s = NULL;
	if (o.scores) {
		circ_reader *sr = circ_reader_open(o.scores, "scores", &e);
		if (!sr || !(s = circ_scores_read(sr, &e)))
			circ_die(&e);
		circ_reader_free(sr);
	}
	return s;
}

/* The circuit in r, over the scores' graph when there are scores (which must
 * come from the same model). */
static circ_circuit *read_circuit(circ_reader *r, const circ_scores *s)
{
	circ_error e;
	circ_circuit *c = circ_circuit_read(r, s ? s->g : NULL, &e);
	if (!c)
		circ_die(&e);
	if (s && s->model_digest && c->model_digest && strcmp(s->model_digest, c->model_digest))
		circ_dief("'%s': scores come from another model than the circuit %s "
			  "(model_digest differs)",
			  o.scores, circ_reader_name(r));
	return c;
}

/* Draws in to f in the --format (svg: DOT through dot). */
static int render(FILE *f, const circ_render_in *in, circ_error *e)
{
	switch (o.format) {
	case F_TEXT: return circ_render_text(f, in, e);
	case F_DOT: return circ_render_dot(f, in, e);
	case F_JSON: return circ_render_json(f, in, e);
	case F_HTML: return circ_render_html(f, in, e);
	case F_SVG: {
		char *buf = NULL;
		size_t len = 0;
		int rc;
		FILE *m = open_memstream(&buf, &len);
		if (!m)
			circ_dief("open_memstream: %s", strerror(errno));
		rc = circ_render_dot(m, in, e);
		if (fclose(m) != 0 && rc == 0)
			rc = circ_errorf(e, "memory stream: %s", strerror(errno));
		if (rc == 0)
			rc = run_dot(buf, len, f, e);
		free(buf);
		return rc;
	}
	default: abort();
	}
}

int main(int argc, char **argv)
{
	circ_cli cli = {"[options] [circuit]",
			"Draw or summarise a circuit (DOT, SVG, EAP-IG JSON, text, HTML), or plot "
			"a faithfulness curve.",
			opts, 0};
	circ_error e;
	circ_init("circ-render");
	int i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i > 1)
		circ_usage_error("one input at most (got %d)", argc - i);
	const char *input = i < argc ? argv[i] : "-";
	if (o.graph && !o.list_edges)
		circ_usage_error("--graph goes with --list-edges");
	if (o.graph && i < argc)
		circ_usage_error("--list-edges takes the graph from --graph or an input, not both");
	check_options();
	if (o.list_edges)
		return list_edges(&cli, input);
	if (o.format == F_CURVE_SVG)
		return plot_curve(&cli, input, i < argc);

	circ_scores *s = read_scores();
	circ_reader *r = circ_reader_open(input, NULL, &e);
	if (!r)
		circ_die(&e);
	circ_circuit *c = read_circuit(r, s);
	circ_curve *cv = NULL;
	if (o.curve) {
		cv = read_curve(o.curve);
		if (cv->g && !circ_graph_same(cv->g, c->g))
			circ_dief("'%s': the curve's graph differs from the circuit's", o.curve);
	}
	double *score = circ_xmalloc((size_t)c->g->n_edges * sizeof *score);
	for (int64_t k = 0; k < c->g->n_edges; k++)
		score[k] = s && !isnan(s->score[k]) ? s->score[k] : c->score[k];

	circ_render_in in = {.g = c->g,
			     .keep = c->keep,
			     .score = score,
			     .title = o.title,
			     .method = c->method,
			     .mode = c->mode,
			     .n = c->source_n,
			     .threshold = c->source_threshold,
			     .signed_ = c->source_signed,
			     .curve = cv,
			     .top = o.top,
			     .d_model = o.d_model,
			     .legacy = o.legacy};
	FILE *f = out_open(cli.output);
	if (render(f, &in, &e) < 0)
		out_fail(f, &e);
	out_close(f);
	free(score);
	circ_eval_curve_free(cv);
	circ_circuit_free(c);
	circ_reader_free(r);
	circ_scores_free(s);
	return 0;
}
