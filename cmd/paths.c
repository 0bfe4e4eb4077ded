/*
 * circ-paths: transcoder circuits as Dunefsky et al. (2024) find them
 * (lib/tcircuit) on a model of any family whose MLPs are replaced by
 * transcoders: the
 * greedy (beam) search for the computational paths into one feature of one
 * prompt (--paths), every route between two nodes of a prompt with its
 * attribution (--routes), and a feature's input-invariant connections
 * (--connections, no prompt). Writes a circ stream of kind
 * "transcoder-paths".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "model.h"
#include "tcircuit.h"
#include "trace.h"
#include "cli/opt.h"
#include "cli/session.h"

enum {
	OPT_MODEL = 'm',
	OPT_DICT = CIRC_OPT_FIRST_TOOL,
	OPT_TOKENS,
	OPT_PATHS,
	OPT_ROUTES,
	OPT_CONNECTIONS,
	OPT_BEAM,
	OPT_DEPTH,
	OPT_ABS,
	OPT_TOP,
	OPT_MAX_ROUTES,
	OPT_THREADS,
	OPT_ALLOW_NONFINITE,
};

static const circ_opt opts[] = {
    {"model", OPT_MODEL, "DIR", "Hugging Face model directory, any family (required)"},
    {"dict", OPT_DICT, "DIR",
     "transcoder set replacing the MLPs (SAELens directories or circuit-tracer files; required)"},
    {"tokens", OPT_TOKENS, "IDS", "the prompt as comma-separated token ids (--paths, --routes)"},
    {"paths", OPT_PATHS, "NODE",
     "the beam search for the top paths into feature NODE (tc3.f17@5) on the prompt"},
    {"routes", OPT_ROUTES, "UP->DOWN",
     "every route from node UP (tc0.f5@2, tc0.err@2, input@2) to feature DOWN on the prompt, "
     "with its attribution and their sum"},
    {"connections", OPT_CONNECTIONS, "FEATURE",
     "the input-invariant connections of FEATURE (tc3.f17), upstream and downstream"},
    {"beam", OPT_BEAM, "K",
     "--paths: contributors kept per path and paths kept per step (1..1000, default 5)"},
    {"depth", OPT_DEPTH, "N", "--paths: search steps (1..32, default 3)"},
    {"abs", OPT_ABS, NULL, "--paths: rank by |attribution| (default: by signed attribution)"},
    {"top", OPT_TOP, "N", "--connections: strongest connections each way (1..100000, default 10)"},
    {"max-routes", OPT_MAX_ROUTES, "N", "--routes: refuse more routes than N (default 100000)"},
    {"threads", OPT_THREADS, "N", "threads for the model and the GEMMs"},
    {"allow-nonfinite", OPT_ALLOW_NONFINITE, NULL, "accept NaN or infinite weights"},
    {0},
};

static struct {
	const char *model, *dict, *tokens, *paths, *routes, *conn;
	int beam, depth, by_abs, top, threads, allow_nonfinite;
	long max_routes;
} o = {.beam = 5, .depth = 3, .top = 10, .max_routes = 100000};

static int handle(int key, const char *arg, void *ctx)
{
	(void)ctx;
	switch (key) {
	case OPT_MODEL: o.model = arg; return 0;
	case OPT_DICT: o.dict = arg; return 0;
	case OPT_TOKENS: o.tokens = arg; return 0;
	case OPT_PATHS: o.paths = arg; return 0;
	case OPT_ROUTES: o.routes = arg; return 0;
	case OPT_CONNECTIONS: o.conn = arg; return 0;
	case OPT_BEAM: o.beam = (int)circ_opt_i64("beam", arg, 1, 1000); return 0;
	case OPT_DEPTH: o.depth = (int)circ_opt_i64("depth", arg, 1, 32); return 0;
	case OPT_ABS: o.by_abs = 1; return 0;
	case OPT_TOP: o.top = (int)circ_opt_i64("top", arg, 1, 100000); return 0;
	case OPT_MAX_ROUTES:
		o.max_routes = (long)circ_opt_i64("max-routes", arg, 1, 1L << 30);
		return 0;
	case OPT_THREADS:
		o.threads = (int)circ_opt_i64("threads", arg, 1, CIRC_THREADS_MAX);
		return 0;
	case OPT_ALLOW_NONFINITE: o.allow_nonfinite = 1; return 0;
	}
	return -1;
}

/* --tokens "1,2,3", each id checked by circ_opt_i64. */
static int32_t *parse_ids(const char *s, int *T)
{
	size_t len = strlen(s);
	char *buf = circ_xmalloc(len + 1);
	memcpy(buf, s, len + 1);
	int32_t *t = circ_xmalloc((len / 2 + 1) * sizeof *t);
	int n = 0;
	for (char *p = buf, *q;; p = q + 1) {
		q = strchr(p, ',');
		if (q)
			*q = 0;
		t[n++] = (int32_t)circ_opt_i64("tokens", p, 0, INT32_MAX);
		if (!q)
			break;
	}
	free(buf);
	*T = n;
	return t;
}

typedef struct prompt_ids {
	const int32_t *ids;
	int T;
} prompt_ids;

static void pack_tokens(msgpack_packer *pk, const void *ctx)
{
	const prompt_ids *t = ctx;
	msgpack_pack_array(pk, (size_t)t->T);
	for (int i = 0; i < t->T; i++)
		msgpack_pack_int64(pk, t->ids[i]);
}

static const char *elem_kind(circ_tce_kind k)
{
	switch (k) {
	case CIRC_TCE_FEATURE: return "feature";
	case CIRC_TCE_ERROR: return "error";
	case CIRC_TCE_INPUT: return "input";
	case CIRC_TCE_HEAD: return "head";
	}
	return "?";
}

/* Appends src to the growing string *s. */
static void cat(char **s, size_t *len, const char *src)
{
	size_t n = strlen(src);
	*s = circ_xrealloc(*s, *len + n + 1);
	memcpy(*s + *len, src, n + 1);
	*len += n;
}

/* "input@2 -[resid]-> tc0.f5@2 -[L1H3:2>5]-> tc1.f9@5": nodes joined by
 * their routes (the head hops between them, "resid" when none); a path
 * whose upstream end is a head hop starts with its route. */
static char *path_string(const circ_tc_elem *el, int n)
{
	char *s = circ_xcalloc(1, 1), nm[96];
	size_t len = 0;
	int pending = 0, first = 1;
	for (int k = 0; k < n; k++) {
		circ_tc_elem_name(&el[k], nm, sizeof nm);
		if (el[k].kind == CIRC_TCE_HEAD) {
			cat(&s, &len, pending ? "," : (first ? "-[" : " -["));
			cat(&s, &len, nm);
			pending = 1;
			continue;
		}
		if (!first)
			cat(&s, &len, pending ? "]-> " : " -[resid]-> ");
		else if (pending)
			cat(&s, &len, "]-> ");
		cat(&s, &len, nm);
		pending = 0;
		first = 0;
	}
	return s;
}

static void end_rec(circ_session *s)
{
	circ_error e;
	if (circ_writer_end_record(s->w, &e) < 0) {
		circ_writer_abort(s->w);
		circ_die(&e);
	}
}

static void header(circ_session *s, const char *mode, const char *target, const prompt_ids *tok,
		   double act, int argc, char **argv, const circ_cli *cli)
{
	circ_error e;
	int paths = !strcmp(mode, "paths");
	circ_session_output(s, cli);
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "model_digest", s->model_digest),
	    CIRC_HDR(STR, "model_type", circ_model_type_name(s->c->model_type)),
	    CIRC_HDR(STR, "dict_dir", o.dict),
	    CIRC_HDR(STR, "mode", mode),
	    CIRC_HDR(STR, "target", target),
	    CIRC_HDR_FN_IF(tok != NULL, "tokens", pack_tokens, tok),
	    CIRC_HDR_IF(paths, I64, "beam", o.beam),
	    CIRC_HDR_IF(paths, I64, "depth", o.depth),
	    CIRC_HDR_IF(paths, BOOL, "by_abs", o.by_abs),
	    CIRC_HDR_IF(paths, F64, "activation", act),
	    CIRC_HDR_IF(!strcmp(mode, "connections"), I64, "top", o.top),
	};
	if (circ_writer_header_fields(s->w, "transcoder-paths", argc, argv, NULL, 0, f,
				      CIRC_HDR_N(f), &e) < 0) {
		circ_writer_abort(s->w);
		circ_die(&e);
	}
}

static void run_paths(circ_session *s, circ_tc_prompt *p, const prompt_ids *tok, int argc,
		      char **argv, const circ_cli *cli)
{
	circ_error e;
	circ_tc_elem tgt;
	double act;
	if (circ_tc_parse_node(o.paths, 1, &tgt, &e) < 0)
		circ_usage_error("--paths: %s", e.msg);
	if (tgt.kind != CIRC_TCE_FEATURE)
		circ_usage_error("--paths '%s': the target must be a feature", o.paths);
	if (circ_tc_activation(p, &tgt, &act, &e) < 0)
		circ_die(&e);
	circ_tc_path *ps;
	int n;
	if (circ_tc_beam(p, &tgt, o.beam, o.depth, o.by_abs, &ps, &n, &e) < 0)
		circ_die(&e);
	header(s, "paths", o.paths, tok, act, argc, argv, cli);
	char nm[96];
	for (int i = 0, rank = 0; i < n; i++) {
		const circ_tc_path *pp = &ps[i];
		rank = i > 0 && ps[i - 1].depth == pp->depth ? rank + 1 : 0;
		msgpack_packer *pk = circ_writer_packer(s->w);
		char *str = path_string(pp->el, pp->n);
		msgpack_pack_map(pk, 5);
		circ_pack_kv_str(pk, "path", str);
		free(str);
		circ_pack_kv_i64(pk, "depth", pp->depth);
		circ_pack_kv_i64(pk, "rank", rank);
		circ_pack_kv_f64(pk, "attribution", pp->el[0].attribution);
		circ_pack_str(pk, "elements");
		msgpack_pack_array(pk, (size_t)pp->n);
		for (int k = 0; k < pp->n; k++) {
			const circ_tc_elem *x = &pp->el[k];
			int head = x->kind == CIRC_TCE_HEAD;
			circ_tc_elem_name(x, nm, sizeof nm);
			msgpack_pack_map(pk, 6 + head);
			circ_pack_kv_str(pk, "name", nm);
			circ_pack_kv_str(pk, "kind",
					 k == pp->n - 1 ? "target" : elem_kind(x->kind));
			circ_pack_kv_i64(pk, "layer", x->layer);
			circ_pack_kv_i64(pk,
					 head			     ? "head"
					 : x->kind == CIRC_TCE_INPUT ? "token"
								     : "feature",
					 x->index);
			circ_pack_kv_i64(pk, head ? "src" : "pos", x->pos);
			if (head)
				circ_pack_kv_i64(pk, "dst", x->dst);
			circ_pack_kv_f64(pk, "attribution", x->attribution);
		}
		end_rec(s);
	}
	circ_tc_paths_free(ps, n);
}

static void run_routes(circ_session *s, circ_tc_prompt *p, const prompt_ids *tok, int argc,
		       char **argv, const circ_cli *cli)
{
	circ_error e;
	const char *arrow = strstr(o.routes, "->");
	if (!arrow)
		circ_usage_error("--routes '%s': expected UP->DOWN, e.g. tc0.f5@2->tc1.f9@5",
				 o.routes);
	char *up = circ_xmalloc((size_t)(arrow - o.routes) + 1);
	memcpy(up, o.routes, (size_t)(arrow - o.routes));
	up[arrow - o.routes] = 0;
	circ_tc_elem src, tgt;
	if (circ_tc_parse_node(up, 1, &src, &e) < 0 ||
	    circ_tc_parse_node(arrow + 2, 1, &tgt, &e) < 0)
		circ_usage_error("--routes: %s", e.msg);
	if (tgt.kind != CIRC_TCE_FEATURE)
		circ_usage_error("--routes '%s': the downstream node must be a feature", o.routes);
	circ_tc_elem *hops;
	int *nh, n;
	double *attr;
	if (circ_tc_routes(p, &src, &tgt, o.max_routes, &hops, &nh, &attr, &n, &e) < 0)
		circ_die(&e);
	header(s, "routes", o.routes, tok, 0, argc, argv, cli);
	char a[96], b[96], nm[96];
	circ_tc_elem_name(&src, a, sizeof a);
	circ_tc_elem_name(&tgt, b, sizeof b);
	double total = 0;
	int L = circ_model_config(s->m)->n_layer;
	for (int r = 0; r < n; r++) {
		char *str = circ_xcalloc(1, 1);
		size_t len = 0;
		if (!nh[r])
			cat(&str, &len, "resid");
		for (int k = 0; k < nh[r]; k++) {
			circ_tc_elem_name(&hops[(size_t)r * L + k], nm, sizeof nm);
			if (k)
				cat(&str, &len, ",");
			cat(&str, &len, nm);
		}
		msgpack_packer *pk = circ_writer_packer(s->w);
		msgpack_pack_map(pk, 5);
		circ_pack_kv_str(pk, "route", str);
		circ_pack_kv_str(pk, "source", a);
		circ_pack_kv_str(pk, "target", b);
		circ_pack_kv_i64(pk, "heads", nh[r]);
		circ_pack_kv_f64(pk, "attribution", attr[r]);
		end_rec(s);
		free(str);
		total += attr[r];
	}
	msgpack_packer *pk = circ_writer_packer(s->w);
	msgpack_pack_map(pk, 5);
	circ_pack_str(pk, "summary");
	msgpack_pack_true(pk);
	circ_pack_kv_str(pk, "source", a);
	circ_pack_kv_str(pk, "target", b);
	circ_pack_kv_i64(pk, "n_routes", n);
	circ_pack_kv_f64(pk, "total", total);
	end_rec(s);
	free(up);
	free(hops);
	free(nh);
	free(attr);
}

static void run_connections(circ_session *s, const circ_dict **tc, int argc, char **argv,
			    const circ_cli *cli)
{
	circ_error e;
	circ_tc_elem x;
	if (circ_tc_parse_node(o.conn, 0, &x, &e) < 0)
		circ_usage_error("--connections: %s", e.msg);
	circ_tc_conn *cs;
	int n;
	if (circ_tc_connections(s->m, tc, &x, o.top, 1, o.threads, &cs, &n, &e) < 0)
		circ_die(&e);
	header(s, "connections", o.conn, NULL, 0, argc, argv, cli);
	char self[96], other[96], route[48], conn[256];
	circ_tc_elem_name(&x, self, sizeof self);
	for (int i = 0; i < n; i++) {
		const circ_tc_conn *c = &cs[i];
		circ_tc_elem_name(&c->other, other, sizeof other);
		if (c->head_layer < 0)
			snprintf(route, sizeof route, "resid");
		else
			snprintf(route, sizeof route, "L%dH%d", c->head_layer, c->head);
		const char *src = c->upstream ? other : self, *dst = c->upstream ? self : other;
		snprintf(conn, sizeof conn, "%s->%s", src, dst);
		msgpack_packer *pk = circ_writer_packer(s->w);
		msgpack_pack_map(pk, 6);
		circ_pack_kv_str(pk, "connection", conn);
		circ_pack_kv_str(pk, "direction", c->upstream ? "upstream" : "downstream");
		circ_pack_kv_str(pk, "route", route);
		circ_pack_kv_str(pk, "source", src);
		circ_pack_kv_str(pk, "target", dst);
		circ_pack_kv_f64(pk, "weight", c->weight);
		end_rec(s);
	}
	free(cs);
}

int main(int argc, char **argv)
{
	circ_cli cli = {"--model DIR --dict DIR (--paths NODE --tokens IDS | --routes UP->DOWN "
			"--tokens IDS | --connections FEATURE) [options]",
			"Transcoder circuits (Dunefsky et al. 2024): top paths into a feature, "
			"routes and their attributions, input-invariant connections.",
			opts, 1};
	circ_session s = {0};
	circ_error e;

	circ_init("circ-paths");
	int i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (i < argc)
		circ_usage_error("unexpected argument '%s'", argv[i]);
	if (!o.model)
		circ_usage_error("--model DIR is required");
	if (!o.dict)
		circ_usage_error("--dict DIR is required");
	if (!!o.paths + !!o.routes + !!o.conn != 1)
		circ_usage_error("give one of --paths, --routes and --connections");
	if (!o.conn && !o.tokens)
		circ_usage_error("--%s needs the prompt: --tokens IDS",
				 o.paths ? "paths" : "routes");
	if (!o.threads)
		o.threads = circ_threads_default();
	circ_session_open_model(&s, o.model, o.allow_nonfinite);
	circ_dict_set *set = circ_dict_set_load(o.dict, &e);
	if (!set)
		circ_die(&e);
	int L = s.c->n_layer;
	const circ_dict **tc = circ_xcalloc((size_t)L, sizeof *tc);
	if (circ_trace_layers(s.m, set, tc, &e) < 0)
		circ_die(&e);
	if (o.conn) {
		run_connections(&s, tc, argc, argv, &cli);
	} else {
		prompt_ids tok;
		int32_t *ids = parse_ids(o.tokens, &tok.T);
		tok.ids = ids;
		circ_tc_prompt *p = circ_tc_prompt_new(s.m, tc, ids, tok.T, o.threads, &e);
		if (!p)
			circ_die(&e);
		if (o.paths)
			run_paths(&s, p, &tok, argc, argv, &cli);
		else
			run_routes(&s, p, &tok, argc, argv, &cli);
		circ_tc_prompt_free(p);
		free(ids);
	}
	circ_session_finish(&s);
	free(tc);
	circ_dict_set_free(set);
	circ_session_free(&s);
	return 0;
}
