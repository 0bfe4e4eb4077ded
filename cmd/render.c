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
#include "cli/session.h"
#include "cli/dictrun.h"
#include "dict.h"
#include "fcircuit.h"
#include "render.h"
#include "render_dashboard.h"
#include "render_fgraph.h"

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
	OPT_DASHBOARD, /* feature dashboards (dashboard block below) */
	OPT_MODEL,
	OPT_DICT,
	OPT_TOKENS,
	OPT_FEATURES,
	OPT_N_FEATURES,
	OPT_CONTEXTS,
	OPT_WINDOW,
	OPT_LOGITS,
	OPT_BINS,
	OPT_DASHBOARDS_FROM, /* feature graphs (fgraph block below) */
};

static const circ_opt opts[] = {
    {"format", OPT_FORMAT, "FMT",
     "text (default), dot, svg, json, html or curve-svg; --dashboard: html (default) or jsonl"},
    {"output", OPT_OUT, "FILE", "write to FILE (atomically, via a temporary) instead of stdout"},
    {"scores", OPT_SCORES, "FILE", "scores stream giving every edge's score"},
    {"curve", OPT_CURVE, "FILE", "faithfulness curve stream (text summary, curve-svg)"},
    {"title", OPT_TITLE, "TEXT", "title for the picture or page"},
    {"top", OPT_TOP, "K", "text: list the K edges with the largest |score| (default 10)"},
    {"d-model", OPT_D_MODEL, "N", "json: record d_model in cfg (EAP-IG's from_json needs it)"},
    {"eap-ig-legacy", OPT_LEGACY, NULL, "json: EAP-IG's older layout (nodes as booleans)"},
    {"list-edges", OPT_LIST_EDGES, NULL, "print the graph's edge names, one a line, and exit"},
    {"graph", OPT_GRAPH, "L,H[,node]", "with --list-edges: the graph's shape instead of an input"},
    {"dashboard", OPT_DASHBOARD, NULL,
     "feature dashboards from a dict-acts stream (circ-harvest --dict) as the input"},
    {"model", OPT_MODEL, "DIR", "--dashboard: the model (W_U; its tokenizer, if any, for text)"},
    {"dict", OPT_DICT, "DIR", "--dashboard: the dictionaries the stream was harvested with"},
    {"tokens", OPT_TOKENS, "FILE", "--dashboard: the token stream the stream was harvested from"},
    {"features", OPT_FEATURES, "LIST",
     "--dashboard: features to show, F or D:F (dictionary D) separated by commas"},
    {"n-features", OPT_N_FEATURES, "N",
     "--dashboard: without --features, the N most often active (default 20)"},
    {"contexts", OPT_CONTEXTS, "K",
     "--dashboard: top-activating examples per feature (default 10)"},
    {"window", OPT_WINDOW, "W", "--dashboard: tokens shown each side of a maximum (default 8)"},
    {"logits", OPT_LOGITS, "K", "--dashboard: promoted and suppressed tokens listed (default 10)"},
    {"bins", OPT_BINS, "N", "--dashboard: activation histogram bins (default 20)"},
    {"dashboards-from", OPT_DASHBOARDS_FROM, "TOKENS",
     "feature graph page: embed the dashboards of its features over the token stream TOKENS "
     "(with --model, --dict; --contexts, --window, --logits, --bins apply)"},
    {0},
};

typedef enum { F_TEXT, F_DOT, F_SVG, F_JSON, F_HTML, F_CURVE_SVG, F_JSONL } format_t;
static const char *const format_names[] = {"text", "dot",	"svg",	 "json",
					   "html", "curve-svg", "jsonl", NULL};

static struct {
	format_t format;
	const char *scores, *curve, *title;
	int top, legacy, list_edges;
	int64_t d_model;
	const char *graph;
	int format_set, top_set;
} o = {F_TEXT, NULL, NULL, NULL, 10, 0, 0, -1, NULL, 0, 0};

/* ---- --dashboard: feature dashboards of sparse dictionaries ----
 * Reads a dict-acts stream (circ-harvest --dict) with the model, the
 * dictionary set and the token stream it was harvested with (each checked
 * against the stream's header), and writes lib/render_dashboard.c's page
 * or JSON lines. */

static struct {
	int on;
	const char *model, *dict, *tokens, *features;
	int n_features;
	circ_dash_opts d;
	int set; /* a dashboard option was given */
} dash = {.n_features = 20, .d = {10, 8, 20, 10}};

static FILE *out_open(const char *path);
static void out_fail(FILE *f, circ_error *e);
static void out_close(FILE *f);

static const char *dashboards_from; /* --dashboards-from */

static int dash_handle(int key, const char *arg)
{
	dash.set |= key != OPT_DASHBOARD && key != OPT_DASHBOARDS_FROM;
	switch (key) {
	case OPT_DASHBOARDS_FROM: dashboards_from = arg; return 0;
	case OPT_DASHBOARD: dash.on = 1; return 0;
	case OPT_MODEL: dash.model = arg; return 0;
	case OPT_DICT: dash.dict = arg; return 0;
	case OPT_TOKENS: dash.tokens = arg; return 0;
	case OPT_FEATURES: dash.features = arg; return 0;
	case OPT_N_FEATURES:
		dash.n_features = (int)circ_opt_i64("n-features", arg, 1, 1000000);
		return 0;
	case OPT_CONTEXTS: dash.d.contexts = (int)circ_opt_i64("contexts", arg, 1, 10000); return 0;
	case OPT_WINDOW: dash.d.window = (int)circ_opt_i64("window", arg, 0, 10000); return 0;
	case OPT_LOGITS: dash.d.logits = (int)circ_opt_i64("logits", arg, 0, 10000); return 0;
	case OPT_BINS: dash.d.bins = (int)circ_opt_i64("bins", arg, 1, 10000); return 0;
	}
	return -1;
}

/* --features: "F" (dictionary 0) or "D:F", comma-separated. */
static int dash_parse_features(const circ_dict_set *set, circ_dash_feat **out)
{
	int n = 0;
	const char *s = dash.features;
	*out = NULL;
	while (*s) {
		char buf[64];
		size_t len = strcspn(s, ",");
		int64_t dk = 0, fj;
		char *colon;
		if (len == 0 || len >= sizeof buf)
			circ_usage_error(
			    "option '--features': '%s' is not F or D:F, comma-separated",
			    dash.features);
		memcpy(buf, s, len);
		buf[len] = 0;
		colon = strchr(buf, ':');
		if (colon)
			*colon = 0;
		if ((colon && circ_parse_i64(buf, &dk) < 0) ||
		    circ_parse_i64(colon ? colon + 1 : buf, &fj) < 0)
			circ_usage_error("option '--features': '%.*s' is not F or D:F", (int)len,
					 s);
		if (dk < 0 || dk >= set->n)
			circ_dief("option '--features': '%.*s': dictionary %lld is not in [0, %d)",
				  (int)len, s, (long long)dk, set->n);
		if (fj < 0 || fj >= set->dict[dk]->cfg.d_sae)
			circ_dief("option '--features': '%.*s': feature %lld is not in [0, d_sae = "
				  "%d)",
				  (int)len, s, (long long)fj, set->dict[dk]->cfg.d_sae);
		*out = circ_xrealloc(*out, (size_t)(n + 1) * sizeof **out);
		(*out)[n].dict = (int)dk;
		(*out)[n++].feat = (int)fj;
		s += len + (s[len] == ',');
	}
	return n;
}

/* The example tokens of the token stream, by id. */
typedef struct dash_example {
	int64_t id;
	int T;
	int32_t *tok; /* (T) */
} dash_example;

static int dash_cmp_example(const void *a, const void *b)
{
	int64_t x = ((const dash_example *)a)->id, y = ((const dash_example *)b)->id;
	return (x > y) - (x < y);
}

static dash_example *dash_read_tokens(circ_reader *r, int *n_out)
{
	circ_error e;
	const msgpack_object *rec;
	dash_example *ex = NULL;
	int n = 0, rc;
	while ((rc = circ_reader_next(r, &rec, &e)) > 0) {
		circ_tensor t;
		ex = circ_xrealloc(ex, (size_t)(n + 1) * sizeof *ex);
		if (circ_rec_i64(rec, "id", &ex[n].id, &e) < 0 ||
		    circ_rec_tensor(rec, "clean", &t, &e) < 0) {
			circ_error_prefix(&e, "%s: record %lld", circ_reader_name(r),
					  (long long)circ_reader_recno(r));
			circ_die(&e);
		}
		ex[n].T = (int)circ_tensor_numel(&t);
		ex[n].tok = circ_xmalloc(((size_t)ex[n].T + 1) * sizeof *ex[n].tok);
		if (circ_tensor_copy_i32(&t, ex[n].tok, &e) < 0) {
			circ_error_prefix(&e, "%s: record %lld: field 'clean'", circ_reader_name(r),
					  (long long)circ_reader_recno(r));
			circ_die(&e);
		}
		n++;
	}
	if (rc < 0)
		circ_die(&e);
	qsort(ex, (size_t)n, sizeof *ex, dash_cmp_example);
	for (int i = 1; i < n; i++)
		if (ex[i].id == ex[i - 1].id)
			circ_dief("%s: example id %lld appears twice", circ_reader_name(r),
				  (long long)ex[i].id);
	*n_out = n;
	return ex;
}

/* The decoder directions of dictionary d in the residual stream (S, C):
 * W_dec's rows, through the heads' W_O for attn.hook_z; NULL when the
 * output is not in the residual stream. */
static float *dash_direction(const circ_dict *d, const circ_model *m)
{
	const circ_config *c = circ_model_config(m);
	const circ_weights *w = circ_model_weights(m);
	int S = d->cfg.d_sae, O = d->cfg.d_out, C = c->n_embd;
	const char *hook = d->cfg.transcoder ? d->cfg.hook_out : d->cfg.hook_name;
	circ_hook h;
	circ_error e;
	if (circ_hook_parse(hook, &h, &e) < 0)
		return NULL;
	float *dir = circ_xmalloc((size_t)S * C * sizeof *dir);
	if (h.kind == CIRC_HOOK_ATTN_Z) { /* z (H*D) @ W_O (H*D, C) */
		const float *wo = w->layers[h.layer].proj_w;
		for (int j = 0; j < S; j++)
			for (int q = 0; q < C; q++) {
				double x = 0;
				for (int i = 0; i < O; i++)
					x += (double)d->W_dec[(size_t)j * O + i] *
					     wo[(size_t)i * C + q];
				dir[(size_t)j * C + q] = (float)x;
			}
		return dir;
	}
	if (O != C) {
		free(dir);
		return NULL;
	}
	memcpy(dir, d->W_dec, (size_t)S * C * sizeof *dir);
	return dir;
}

/* A header string field of r, or dies naming it. */
static char *dash_hdr_str(circ_reader *r, const char *key)
{
	circ_hdr_field f[] = {CIRC_HDR_NEED(STR, key)};
	circ_error e;
	if (circ_hdr_read(circ_reader_header(r), f, 1, &e) < 0) {
		circ_error_prefix(&e, "%s", circ_reader_name(r));
		circ_die(&e);
	}
	return circ_hdr_strdup(&f[0]);
}

/* What a dashboard shows of a dictionary set besides the activations. */
typedef struct dash_parts {
	const char **names, **hooks, **outs;
	float **dirs;
	circ_bpe *bpe;
} dash_parts;

/* The model's tokenizer, when its directory has one; else NULL. */
static circ_bpe *dash_bpe(const char *model)
{
	circ_error e;
	circ_bpe *bpe = NULL;
	char *tj = circ_xmalloc(strlen(model) + 32), *vj = circ_xmalloc(strlen(model) + 32);
	sprintf(tj, "%s/tokenizer.json", model);
	sprintf(vj, "%s/vocab.json", model);
	if ((!access(tj, F_OK) || !access(vj, F_OK)) && !(bpe = circ_bpe_load_dir(model, &e)))
		circ_die(&e);
	free(tj);
	free(vj);
	return bpe;
}

/* show (but its feats) for set over model m in directory model_dir. */
static void dash_show_init(circ_dash_show *show, dash_parts *p, const circ_dict_set *set,
			   const circ_model *m, const char *model_dir)
{
	p->names = circ_xmalloc((size_t)set->n * sizeof *p->names);
	p->hooks = circ_xmalloc((size_t)set->n * sizeof *p->hooks);
	p->outs = circ_xmalloc((size_t)set->n * sizeof *p->outs);
	p->dirs = circ_xmalloc((size_t)set->n * sizeof *p->dirs);
	for (int k = 0; k < set->n; k++) {
		p->names[k] = set->dict[k]->path;
		p->hooks[k] = set->dict[k]->cfg.hook_name;
		p->outs[k] = set->dict[k]->cfg.transcoder ? set->dict[k]->cfg.hook_out : NULL;
		p->dirs[k] = dash_direction(set->dict[k], m);
	}
	p->bpe = dash_bpe(model_dir);
	const circ_config *c = circ_model_config(m);
	*show = (circ_dash_show){.title = o.title,
				 .dict_name = p->names,
				 .dict_hook = p->hooks,
				 .dict_out = p->outs,
				 .direction = (const float *const *)p->dirs,
				 .W_U = circ_model_weights(m)->lm_head,
				 .V = c->vocab_size,
				 .C = c->n_embd,
				 .bpe = p->bpe};
}

static void dash_parts_free(dash_parts *p, int n)
{
	for (int k = 0; k < n; k++)
		free(p->dirs[k]);
	free(p->dirs);
	free(p->names);
	free(p->hooks);
	free(p->outs);
	circ_bpe_free(p->bpe);
}

static int dashboard(const circ_cli *cli, const char *input)
{
	circ_error e;
	circ_session s = {0};
	const msgpack_object *rec;
	int rc, n_ex;
	if (o.format_set && o.format != F_HTML && o.format != F_JSONL)
		circ_usage_error("--dashboard writes --format html or jsonl");
	if (o.scores || o.curve || o.top_set || o.d_model >= 0 || o.legacy || o.list_edges ||
	    o.graph)
		circ_usage_error("--dashboard takes --model, --dict, --tokens and the dashboard "
				 "options (see --help)");
	if (!dash.model || !dash.dict || !dash.tokens)
		circ_usage_error("--dashboard needs --model DIR, --dict DIR and --tokens FILE");
	if (dash.features && dash.n_features != 20)
		circ_usage_error("--features and --n-features: give one");

	circ_reader *r = circ_reader_open(input, "dict-acts", &e);
	if (!r)
		circ_die(&e);
	circ_session_open_model(&s, dash.model, 0);
	circ_session_tokens(&s, dash.tokens);
	circ_dict_set *set = circ_dict_set_load(dash.dict, &e);
	if (!set)
		circ_die(&e);
	for (int k = 0; k < set->n; k++)
		if (circ_dict_check_model(set->dict[k], s.m, &e) < 0)
			circ_die(&e);
	{ /* the stream must come from this model, dictionary set and token stream */
		circ_hdr_field f[] = {CIRC_HDR_NEED(I64, "n_dict")};
		char *md = dash_hdr_str(r, "model_digest"), *dd = dash_hdr_str(r, "dataset_digest");
		circ_hdr_field td = circ_hdr_dataset_digest(s.r);
		if (circ_hdr_read(circ_reader_header(r), f, 1, &e) < 0) {
			circ_error_prefix(&e, "%s", circ_reader_name(r));
			circ_die(&e);
		}
		if (f[0].i != set->n)
			circ_dief(
			    "%s: the stream has %lld dictionaries, '%s' has %d (harvested with "
			    "another --dict?)",
			    circ_reader_name(r), (long long)f[0].i, dash.dict, set->n);
		if (strcmp(md, s.model_digest))
			circ_dief(
			    "%s: harvested from another model than '%s' (model_digest differs)",
			    circ_reader_name(r), dash.model);
		/* the token stream's own dataset_digest (a msgpack string), else its
		 * header digest */
		int same = td.type == CIRC_HDR_OBJ
			       ? strlen(dd) == td.o->via.str.size &&
				     !memcmp(dd, td.o->via.str.ptr, td.o->via.str.size)
			       : td.s && !strcmp(dd, td.s);
		if (!same)
			circ_dief("%s: harvested from another token stream than '%s' "
				  "(dataset_digest differs)",
				  circ_reader_name(r), dash.tokens);
		free(md);
		free(dd);
	}
	dash_example *ex = dash_read_tokens(s.r, &n_ex);

	int *d_sae = circ_xmalloc((size_t)set->n * sizeof *d_sae);
	for (int k = 0; k < set->n; k++)
		d_sae[k] = set->dict[k]->cfg.d_sae;
	circ_dash *d = circ_dash_new(set->n, d_sae, &dash.d);
	int64_t *rp = NULL;
	int32_t *feat = NULL;
	float *act = NULL;
	while ((rc = circ_reader_next(r, &rec, &e)) > 0) {
		int64_t id, k, T;
		circ_tensor tr, tf, ta;
		if (circ_rec_i64(rec, "id", &id, &e) < 0 || circ_rec_i64(rec, "dict", &k, &e) < 0 ||
		    circ_rec_i64(rec, "T", &T, &e) < 0 ||
		    circ_rec_tensor(rec, "row_ptr", &tr, &e) < 0 ||
		    circ_rec_tensor(rec, "feat", &tf, &e) < 0 ||
		    circ_rec_tensor(rec, "act", &ta, &e) < 0)
			goto bad;
		dash_example key = {.id = id};
		dash_example *x = bsearch(&key, ex, (size_t)n_ex, sizeof *ex, dash_cmp_example);
		if (!x) {
			circ_errorf(&e, "example %lld is not in '%s'", (long long)id, dash.tokens);
			goto bad;
		}
		if (T != x->T || circ_tensor_numel(&tr) != T + 1) {
			circ_errorf(&e,
				    "example %lld: T = %lld, row_ptr has %lld entries, but '%s' "
				    "gives it %d tokens",
				    (long long)id, (long long)T, (long long)circ_tensor_numel(&tr),
				    dash.tokens, x->T);
			goto bad;
		}
		int64_t nnz = circ_tensor_numel(&tf);
		if (circ_tensor_numel(&ta) != nnz) {
			circ_errorf(&e, "fields 'feat' and 'act' differ in length");
			goto bad;
		}
		rp = circ_xrealloc(rp, ((size_t)T + 1) * sizeof *rp);
		feat = circ_xrealloc(feat, ((size_t)nnz + 1) * sizeof *feat);
		act = circ_xrealloc(act, ((size_t)nnz + 1) * sizeof *act);
		if (tr.dtype != CIRC_I64 || !tr.data) {
			circ_errorf(&e, "field 'row_ptr': expected an i64 tensor");
			goto bad;
		}
		memcpy(rp, tr.data, ((size_t)T + 1) * sizeof *rp);
		if (circ_tensor_copy_i32(&tf, feat, &e) < 0 ||
		    circ_tensor_copy_f32(&ta, act, &e) < 0 ||
		    circ_dash_add(d, (int)(k < 0 || k > INT32_MAX ? -1 : k), id, x->tok, (int)T, rp,
				  nnz, feat, act, &e) < 0)
			goto bad;
		continue;
	bad:
		circ_error_prefix(&e, "%s: record %lld", circ_reader_name(r),
				  (long long)circ_reader_recno(r));
		circ_die(&e);
	}
	if (rc < 0)
		circ_die(&e);

	circ_dash_feat *feats;
	int nf;
	if (dash.features)
		nf = dash_parse_features(set, &feats);
	else {
		feats = circ_xmalloc((size_t)dash.n_features * sizeof *feats);
		nf = circ_dash_top(d, dash.n_features, feats);
	}
	dash_parts parts;
	circ_dash_show show;
	dash_show_init(&show, &parts, set, s.m, dash.model);
	show.feats = feats;
	show.n_feats = nf;
	FILE *f = out_open(cli->output);
	if ((o.format == F_JSONL ? circ_dash_write_jsonl(f, d, &show, &e)
				 : circ_dash_write_html(f, d, &show, &e)) < 0)
		out_fail(f, &e);
	out_close(f);
	dash_parts_free(&parts, set->n);
	for (int i = 0; i < n_ex; i++)
		free(ex[i].tok);
	free(ex);
	free(feats);
	free(rp);
	free(feat);
	free(act);
	free(d_sae);
	circ_dash_free(d);
	circ_dict_set_free(set);
	circ_reader_free(r);
	circ_session_free(&s);
	return 0;
}

/* ---- feature graphs: one HTML page (lib/render_fgraph.c) ----
 * The input is a feature circuit or scores stream (circ-prune, circ-score
 * --method feature-*: its header's graph has "type": "feature"; node
 * records give node scores, edge records edge scores) or circ-trace's
 * attribution-graph stream (its kept nodes and edges; values are
 * activations). With --dashboards-from TOKENS, --model and --dict, the
 * graph's features get their dashboards, harvested here over TOKENS. */

typedef struct fg_meta {
	char *name;
	char dict[32]; /* a feature's dictionary name */
	int feat;      /* a feature's index; errors S (sorted after features) */
	int layer;     /* attribution graphs: the node's layer (-1 inputs, logits) */
	char *text;
} fg_meta;

typedef struct fg_build {
	circ_fg_node *nodes;
	fg_meta *meta;
	int n, cap;
	int *hash; /* open addressing over names: node index + 1, 0 empty */
	int hcap;
	circ_fg_edge *edges;
	int64_t ne, cap_e;
	char **rows;
	int n_rows;
	char **tokens;
	int T;
} fg_build;

static uint64_t fg_hash_str(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return h;
}

/* The node named s[0..n), or -1; *slot: where it would go in the hash. */
static int fg_find(const fg_build *b, const char *s, size_t n, int *slot)
{
	*slot = 0;
	if (!b->hcap)
		return -1;
	int h = (int)(fg_hash_str(s, n) & (uint64_t)(b->hcap - 1));
	while (b->hash[h]) {
		const char *x = b->meta[b->hash[h] - 1].name;
		if (strlen(x) == n && !memcmp(x, s, n))
			return b->hash[h] - 1;
		h = (h + 1) & (b->hcap - 1);
	}
	*slot = h;
	return -1;
}

/* A new node named s[0..n) (not yet in b). */
static int fg_add(fg_build *b, const char *s, size_t n, circ_fg_kind kind, int pos)
{
	int slot;
	if (2 * (b->n + 1) > b->hcap) { /* rehash */
		b->hcap = b->hcap ? 2 * b->hcap : 256;
		free(b->hash);
		b->hash = circ_xcalloc((size_t)b->hcap, sizeof *b->hash);
		for (int i = 0; i < b->n; i++) {
			fg_find(b, b->meta[i].name, strlen(b->meta[i].name), &slot);
			b->hash[slot] = i + 1;
		}
	}
	if (b->n == b->cap) {
		b->cap = b->cap ? 2 * b->cap : 64;
		b->nodes = circ_xrealloc(b->nodes, (size_t)b->cap * sizeof *b->nodes);
		b->meta = circ_xrealloc(b->meta, (size_t)b->cap * sizeof *b->meta);
	}
	fg_find(b, s, n, &slot);
	b->hash[slot] = b->n + 1;
	fg_meta *m = &b->meta[b->n];
	memset(m, 0, sizeof *m);
	m->name = circ_xmalloc(n + 1);
	memcpy(m->name, s, n);
	m->name[n] = 0;
	m->feat = -1;
	m->layer = -1;
	b->nodes[b->n] =
	    (circ_fg_node){.kind = kind, .pos = pos, .value = NAN, .influence = NAN, .dash = -1};
	return b->n++;
}

static void fg_add_edge(fg_build *b, int src, int dst, double w)
{
	if (b->ne == b->cap_e) {
		b->cap_e = b->cap_e ? 2 * b->cap_e : 256;
		b->edges = circ_xrealloc(b->edges, (size_t)b->cap_e * sizeof *b->edges);
	}
	b->edges[b->ne++] = (circ_fg_edge){src, dst, w};
}

static void fg_free(fg_build *b)
{
	for (int i = 0; i < b->n; i++) {
		free(b->meta[i].name);
		free(b->meta[i].text);
	}
	for (int r = 0; r < b->n_rows; r++)
		free(b->rows[r]);
	for (int t = 0; t < b->T; t++)
		free(b->tokens[t]);
	free(b->tokens);
	free(b->rows);
	free(b->nodes);
	free(b->meta);
	free(b->hash);
	free(b->edges);
}

static void fg_die(circ_reader *r, circ_error *e)
{
	circ_error_prefix(e, "%s: record %lld", circ_reader_name(r),
			  (long long)circ_reader_recno(r));
	circ_die(e);
}

/* A feature-graph node by name ("<node>[@<t>]"), added on first sight. */
static int fg_fnode(fg_build *b, const circ_fgraph *g, const char *s, size_t n, circ_error *e)
{
	int slot, k, i;
	int at = fg_find(b, s, n, &slot);
	if (at >= 0)
		return at;
	size_t base = 0;
	while (base < n && s[base] != '@')
		base++;
	int64_t pos = -1;
	if (base < n) {
		char buf[24];
		if (n - base - 1 == 0 || n - base - 1 >= sizeof buf)
			return circ_errorf(e, "node '%.*s': a position is @<t>", (int)n, s);
		memcpy(buf, s + base + 1, n - base - 1);
		buf[n - base - 1] = 0;
		if (circ_parse_i64(buf, &pos) < 0 || pos < 0 || pos > INT32_MAX)
			return circ_errorf(e, "node '%.*s': a position is @<t>", (int)n, s);
	}
	if (circ_fgraph_node(g, s, base, &k, &i, e) < 0)
		return -1;
	circ_fg_kind kind = k == g->n				? CIRC_FG_LOGIT
			    : !strcmp(g->slot[k].name, "input") ? CIRC_FG_TOKEN
			    : i == g->slot[k].S			? CIRC_FG_ERROR
								: CIRC_FG_FEATURE;
	int x = fg_add(b, s, n, kind, (int)pos);
	b->nodes[x].row = k;
	b->meta[x].feat = i;
	if (k < g->n)
		snprintf(b->meta[x].dict, sizeof b->meta[x].dict, "%s", g->slot[k].name);
	return x;
}

static void fg_read_fcircuit(circ_reader *r, fg_build *b)
{
	circ_error e;
	const msgpack_object *rec;
	int rc;
	circ_fgraph *g = circ_fgraph_from_header(circ_reader_header(r), &e);
	if (!g) {
		circ_error_prefix(&e, "%s: record 0", circ_reader_name(r));
		circ_die(&e);
	}
	b->n_rows = g->n + 1;
	b->rows = circ_xmalloc((size_t)b->n_rows * sizeof *b->rows);
	for (int k = 0; k < g->n; k++)
		b->rows[k] = circ_xstrdup(g->slot[k].name);
	b->rows[g->n] = circ_xstrdup("logits");
	while ((rc = circ_reader_next(r, &rec, &e)) > 0) {
		const char *s;
		size_t n;
		double w = NAN;
		if (circ_rec_get(rec, "score") && circ_rec_f64(rec, "score", &w, &e) < 0)
			fg_die(r, &e);
		if (circ_rec_get(rec, "node")) {
			int x;
			if (circ_rec_str(rec, "node", &s, &n, &e) < 0 ||
			    (x = fg_fnode(b, g, s, n, &e)) < 0)
				fg_die(r, &e);
			b->nodes[x].value = w;
		} else if (circ_rec_get(rec, "edge")) {
			int u, d;
			size_t a = 0;
			if (circ_rec_str(rec, "edge", &s, &n, &e) < 0)
				fg_die(r, &e);
			while (a + 1 < n && !(s[a] == '-' && s[a + 1] == '>'))
				a++;
			if (a + 1 >= n) {
				circ_errorf(&e, "edge '%.*s' is not <up>-><down>", (int)n, s);
				fg_die(r, &e);
			}
			if ((u = fg_fnode(b, g, s, a, &e)) < 0 ||
			    (d = fg_fnode(b, g, s + a + 2, n - a - 2, &e)) < 0)
				fg_die(r, &e);
			fg_add_edge(b, u, d, w);
		} else {
			circ_errorf(&e, "neither a node nor an edge record");
			fg_die(r, &e);
		}
	}
	if (rc < 0)
		circ_die(&e);
	circ_fgraph_free(g);
}

static void fg_read_trace(circ_reader *r, fg_build *b, const circ_bpe *bpe)
{
	circ_error e;
	const msgpack_object *rec;
	const msgpack_object_array *tok;
	int64_t n_nodes;
	int rc, L = 0;
	const msgpack_object *h = circ_reader_header(r);
	if (circ_rec_i64(h, "n_nodes", &n_nodes, &e) < 0 ||
	    circ_rec_array(h, "tokens", &tok, &e) < 0 || n_nodes < 1 || n_nodes > INT32_MAX) {
		circ_errorf(&e, "an attribution graph's header needs n_nodes and tokens");
		circ_error_prefix(&e, "%s: record 0", circ_reader_name(r));
		circ_die(&e);
	}
	b->T = (int)tok->size;
	b->tokens = circ_xcalloc((size_t)b->T + 1, sizeof *b->tokens);
	for (int t = 0; t < b->T; t++)
		b->tokens[t] =
		    circ_bpe_token_text(bpe, tok->ptr[t].type == MSGPACK_OBJECT_POSITIVE_INTEGER
						 ? (int32_t)tok->ptr[t].via.u64
						 : -1);
	int *map = circ_xmalloc((size_t)n_nodes * sizeof *map);
	for (int64_t i = 0; i < n_nodes; i++)
		map[i] = -1;
	while ((rc = circ_reader_next(r, &rec, &e)) > 0) {
		int keep;
		if (circ_rec_bool(rec, "keep", &keep, &e) < 0)
			fg_die(r, &e);
		if (circ_rec_get(rec, "node")) {
			const char *s, *ks;
			size_t n, kn;
			int64_t index, layer, pos, feat = -1, token = -1;
			double inf, v = NAN;
			if (circ_rec_str(rec, "node", &s, &n, &e) < 0 ||
			    circ_rec_i64(rec, "index", &index, &e) < 0 ||
			    circ_rec_str(rec, "kind", &ks, &kn, &e) < 0 ||
			    circ_rec_i64(rec, "layer", &layer, &e) < 0 ||
			    circ_rec_i64(rec, "pos", &pos, &e) < 0 ||
			    circ_rec_f64(rec, "influence", &inf, &e) < 0 ||
			    (circ_rec_get(rec, "feature") &&
			     circ_rec_i64(rec, "feature", &feat, &e) < 0) ||
			    (circ_rec_get(rec, "token") &&
			     circ_rec_i64(rec, "token", &token, &e) < 0) ||
			    (circ_rec_get(rec, "activation") &&
			     circ_rec_f64(rec, "activation", &v, &e) < 0) ||
			    (circ_rec_get(rec, "prob") && circ_rec_f64(rec, "prob", &v, &e) < 0))
				fg_die(r, &e);
			static const char *const kinds[] = {"feature", "error", "input", "logit"};
			int k = 0;
			while (k < 4 && (strlen(kinds[k]) != kn || memcmp(kinds[k], ks, kn)))
				k++;
			if (k == 4 || index < 0 || index >= n_nodes || layer < -1 ||
			    layer > 100000 || pos < 0 || pos > INT32_MAX) {
				circ_errorf(&e, "node '%.*s': bad kind, index, layer or pos",
					    (int)n, s);
				fg_die(r, &e);
			}
			if (layer + 1 > L)
				L = (int)layer + 1;
			if (!keep)
				continue;
			int slot, x;
			if (fg_find(b, s, n, &slot) >= 0) {
				circ_errorf(&e, "node '%.*s' appears twice", (int)n, s);
				fg_die(r, &e);
			}
			x = fg_add(b, s, n, (circ_fg_kind)k, (int)pos);
			map[index] = x;
			b->nodes[x].value = v;
			b->nodes[x].influence = inf;
			b->meta[x].layer = (int)layer;
			b->meta[x].feat = k == CIRC_FG_FEATURE ? (int)feat : INT32_MAX;
			if (k == CIRC_FG_FEATURE)
				snprintf(b->meta[x].dict, sizeof b->meta[x].dict, "tc%d",
					 (int)layer);
			if (token >= 0)
				b->meta[x].text = circ_bpe_token_text(bpe, (int32_t)token);
		} else if (circ_rec_get(rec, "edge")) {
			int64_t src, dst;
			double w;
			if (circ_rec_i64(rec, "source", &src, &e) < 0 ||
			    circ_rec_i64(rec, "target", &dst, &e) < 0 ||
			    circ_rec_f64(rec, "weight", &w, &e) < 0)
				fg_die(r, &e);
			if (src < 0 || src >= n_nodes || dst < 0 || dst >= n_nodes) {
				circ_errorf(&e, "source or target not in [0, n_nodes = %lld)",
					    (long long)n_nodes);
				fg_die(r, &e);
			}
			if (keep && map[src] >= 0 && map[dst] >= 0)
				fg_add_edge(b, map[src], map[dst], w);
		} else {
			circ_errorf(&e, "neither a node nor an edge record");
			fg_die(r, &e);
		}
	}
	if (rc < 0)
		circ_die(&e);
	free(map);
	/* rows: input, tc0 .. tc<L-1>, logits */
	b->n_rows = L + 2;
	b->rows = circ_xmalloc((size_t)b->n_rows * sizeof *b->rows);
	b->rows[0] = circ_xstrdup("input");
	for (int l = 0; l < L; l++) {
		char buf[32];
		snprintf(buf, sizeof buf, "tc%d", l);
		b->rows[l + 1] = circ_xstrdup(buf);
	}
	b->rows[L + 1] = circ_xstrdup("logits");
	for (int i = 0; i < b->n; i++)
		b->nodes[i].row = b->nodes[i].kind == CIRC_FG_TOKEN   ? 0
				  : b->nodes[i].kind == CIRC_FG_LOGIT ? L + 1
								      : b->meta[i].layer + 1;
}

/* Node order on the page: row, position, feature index (errors last), name. */
static const fg_build *fg_sort_b;
static int fg_cmp(const void *pa, const void *pb)
{
	int a = *(const int *)pa, c = *(const int *)pb;
	const circ_fg_node *x = &fg_sort_b->nodes[a], *y = &fg_sort_b->nodes[c];
	const fg_meta *mx = &fg_sort_b->meta[a], *my = &fg_sort_b->meta[c];
	if (x->row != y->row)
		return x->row < y->row ? -1 : 1;
	if (x->pos != y->pos)
		return x->pos < y->pos ? -1 : 1;
	if (mx->feat != my->feat)
		return mx->feat < my->feat ? -1 : 1;
	return strcmp(mx->name, my->name);
}

static void fg_sort(fg_build *b)
{
	int *ord = circ_xmalloc(((size_t)b->n + 1) * sizeof *ord),
	    *inv = circ_xmalloc(((size_t)b->n + 1) * sizeof *inv);
	for (int i = 0; i < b->n; i++)
		ord[i] = i;
	fg_sort_b = b;
	qsort(ord, (size_t)b->n, sizeof *ord, fg_cmp);
	circ_fg_node *nn = circ_xmalloc(((size_t)b->n + 1) * sizeof *nn);
	fg_meta *nm = circ_xmalloc(((size_t)b->n + 1) * sizeof *nm);
	for (int i = 0; i < b->n; i++) {
		nn[i] = b->nodes[ord[i]];
		nm[i] = b->meta[ord[i]];
		inv[ord[i]] = i;
	}
	for (int64_t k = 0; k < b->ne; k++) {
		b->edges[k].src = inv[b->edges[k].src];
		b->edges[k].dst = inv[b->edges[k].dst];
	}
	free(b->nodes);
	free(b->meta);
	b->nodes = nn;
	b->meta = nm;
	for (int i = 0; i < b->n; i++) {
		b->nodes[i].name = b->meta[i].name;
		b->nodes[i].text = b->meta[i].text;
	}
	free(ord);
	free(inv);
}

static int fg_cmp_feat(const void *pa, const void *pb)
{
	const circ_dash_feat *a = pa, *b = pb;
	if (a->dict != b->dict)
		return a->dict < b->dict ? -1 : 1;
	return (a->feat > b->feat) - (a->feat < b->feat);
}

/* circ_dictrun_each's callback: the wanted features' activations into the
 * accumulator. */
typedef struct fg_harvest {
	circ_dash *d;
	uint8_t **want; /* (n_dict) (d_sae) */
	int32_t *feat;
	float *act;
	int64_t *rp, cap;
} fg_harvest;

static void fg_harvest_fn(void *ctx, const circ_batch *b, int bb, int k, const int64_t *rp,
			  const int32_t *feat, const float *act)
{
	fg_harvest *h = ctx;
	circ_error e;
	int T = b->T;
	int64_t nnz = rp[T], q = 0;
	if (nnz + 1 > h->cap) {
		h->cap = nnz + 1;
		h->feat = circ_xrealloc(h->feat, (size_t)h->cap * sizeof *h->feat);
		h->act = circ_xrealloc(h->act, (size_t)h->cap * sizeof *h->act);
	}
	h->rp = circ_xrealloc(h->rp, ((size_t)T + 1) * sizeof *h->rp);
	for (int t = 0; t < T; t++) {
		h->rp[t] = q;
		for (int64_t j = rp[t]; j < rp[t + 1]; j++)
			if (h->want[k][feat[j]]) {
				h->feat[q] = feat[j];
				h->act[q++] = act[j];
			}
	}
	h->rp[T] = q;
	if (circ_dash_add(h->d, k, b->ex[bb].id, b->clean + (size_t)bb * T, T, h->rp, q, h->feat,
			  h->act, &e) < 0)
		circ_die(&e);
}

static int fgraph_page(const circ_cli *cli, circ_reader *r, int trace)
{
	circ_error e;
	fg_build b = {0};
	circ_session s = {0};
	circ_dict_set *set = NULL;
	circ_dash *d = NULL;
	circ_dash_feat *feats = NULL;
	circ_dash_show show;
	dash_parts parts;
	fg_harvest hv = {0};
	int nf = 0;
	if (o.format != F_HTML)
		circ_usage_error("a feature graph renders as --format html");
	if (o.scores || o.curve || o.top_set || o.d_model >= 0 || o.legacy)
		circ_usage_error("a feature graph's page takes --title and --dashboards-from (with "
				 "--model, --dict and the dashboard options)");
	if (dashboards_from) {
		circ_session_open_model(&s, dash.model, 0);
		circ_session_tokens(&s, dashboards_from);
		const msgpack_object *h = circ_reader_header(r);
		const char *ms;
		size_t ml;
		if (circ_rec_get(h, "model_digest") &&
		    circ_rec_str(h, "model_digest", &ms, &ml, &e) == 0 &&
		    (strlen(s.model_digest) != ml || memcmp(ms, s.model_digest, ml)))
			circ_dief("%s: made from another model than '%s' (model_digest differs)",
				  circ_reader_name(r), dash.model);
		if (!(set = circ_dict_set_load(dash.dict, &e)))
			circ_die(&e);
		for (int k = 0; k < set->n; k++)
			if (circ_dict_check_model(set->dict[k], s.m, &e) < 0)
				circ_die(&e);
	}
	circ_bpe *bpe = trace && dash.model ? dash_bpe(dash.model) : NULL;
	if (trace)
		fg_read_trace(r, &b, bpe);
	else
		fg_read_fcircuit(r, &b);
	circ_bpe_free(bpe);
	fg_sort(&b);
	if (set) { /* the graph's features, each once, by dictionary and index */
		char(*names)[32] = circ_xmalloc((size_t)set->n * sizeof *names);
		for (int k = 0; k < set->n; k++)
			circ_dict_name(set->dict[k], names[k], sizeof names[k]);
		int *dk = circ_xmalloc(((size_t)b.n + 1) * sizeof *dk);
		for (int i = 0; i < b.n; i++) {
			dk[i] = -1;
			if (b.nodes[i].kind != CIRC_FG_FEATURE)
				continue;
			for (int k = 0; k < set->n && dk[i] < 0; k++)
				if (!strcmp(names[k], b.meta[i].dict))
					dk[i] = k;
			if (dk[i] < 0)
				circ_dief("%s: node '%s': no dictionary named '%s' in '%s'",
					  circ_reader_name(r), b.meta[i].name, b.meta[i].dict,
					  dash.dict);
			if (b.meta[i].feat < 0 || b.meta[i].feat >= set->dict[dk[i]]->cfg.d_sae)
				circ_dief("%s: node '%s': feature %d is not in [0, d_sae = %d) of "
					  "'%s'",
					  circ_reader_name(r), b.meta[i].name, b.meta[i].feat,
					  set->dict[dk[i]]->cfg.d_sae, set->dict[dk[i]]->path);
			feats = circ_xrealloc(feats, (size_t)(nf + 1) * sizeof *feats);
			feats[nf++] = (circ_dash_feat){dk[i], b.meta[i].feat};
		}
		qsort(feats, (size_t)nf, sizeof *feats, fg_cmp_feat);
		int u = 0;
		for (int i = 0; i < nf; i++)
			if (!u || fg_cmp_feat(&feats[u - 1], &feats[i]))
				feats[u++] = feats[i];
		nf = u;
		for (int i = 0; i < b.n; i++)
			if (dk[i] >= 0) {
				circ_dash_feat key = {dk[i], b.meta[i].feat};
				circ_dash_feat *at =
				    bsearch(&key, feats, (size_t)nf, sizeof *feats, fg_cmp_feat);
				b.nodes[i].dash = (int)(at - feats);
			}
		int *d_sae = circ_xmalloc((size_t)set->n * sizeof *d_sae);
		hv.want = circ_xmalloc((size_t)set->n * sizeof *hv.want);
		for (int k = 0; k < set->n; k++) {
			d_sae[k] = set->dict[k]->cfg.d_sae;
			hv.want[k] = circ_xcalloc((size_t)d_sae[k], 1);
		}
		for (int i = 0; i < nf; i++)
			hv.want[feats[i].dict][feats[i].feat] = 1;
		d = hv.d = circ_dash_new(set->n, d_sae, &dash.d);
		circ_dictrun_each(&s, set, CIRC_METRIC_KL, 16, 1, fg_harvest_fn, &hv);
		dash_show_init(&show, &parts, set, s.m, dash.model);
		for (int k = 0; k < set->n; k++)
			free(hv.want[k]);
		free(hv.want);
		free(hv.feat);
		free(hv.act);
		free(hv.rp);
		free(d_sae);
		free(dk);
		free(names);
	}
	const char *caption =
	    trace ? "Attribution graph (circ-trace): its kept nodes and edges; node values are "
		    "activations (logits: probabilities)."
		  : "Feature circuit: node values are node scores, edge weights edge scores.";
	circ_fg g = {.title = o.title ? o.title
			      : trace ? "attribution graph"
				      : "feature circuit",
		     .caption = caption,
		     .value_name = trace ? "activation" : "score",
		     .rows = (const char *const *)b.rows,
		     .n_rows = b.n_rows,
		     .tokens = (const char *const *)b.tokens,
		     .T = b.T,
		     .nodes = b.nodes,
		     .n_nodes = b.n,
		     .edges = b.edges,
		     .n_edges = b.ne,
		     .d = d,
		     .show = d ? &show : NULL,
		     .dash_feats = feats,
		     .n_dash = nf};
	FILE *f = out_open(cli->output);
	if (circ_render_fgraph_html(f, &g, &e) < 0)
		out_fail(f, &e);
	out_close(f);
	if (d) {
		dash_parts_free(&parts, set->n);
		circ_dash_free(d);
	}
	free(feats);
	circ_dict_set_free(set);
	fg_free(&b);
	circ_reader_free(r);
	if (dashboards_from)
		circ_session_free(&s);
	return 0;
}

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
		    "curve-svg, jsonl)",
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
	return dash_handle(key, arg);
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
			"Draw or summarise a circuit (DOT, SVG, EAP-IG JSON, text, HTML), a "
			"feature circuit or attribution graph, or plot a faithfulness curve.",
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
	if (dash.on) {
		if (dashboards_from)
			circ_usage_error("--dashboards-from goes with a feature graph, not "
					 "--dashboard");
		return dashboard(&cli, input);
	}
	if (dashboards_from) {
		if (!dash.model || !dash.dict)
			circ_usage_error("--dashboards-from needs --model DIR and --dict DIR");
		if (dash.tokens || dash.features || dash.n_features != 20)
			circ_usage_error("--dashboards-from takes its tokens as its argument and "
					 "shows the graph's features (no --tokens, --features, "
					 "--n-features)");
	} else if (dash.set)
		circ_usage_error("the dashboard options go with --dashboard (or a feature graph's "
				 "--dashboards-from)");
	if (o.format == F_JSONL)
		circ_usage_error("--format jsonl goes with --dashboard");
	check_options();
	if (o.list_edges)
		return list_edges(&cli, input);
	if (o.format == F_CURVE_SVG)
		return plot_curve(&cli, input, i < argc);

	circ_reader *r = circ_reader_open(input, NULL, &e);
	if (!r)
		circ_die(&e);
	{ /* feature graphs: their own page */
		const msgpack_object *kind = circ_rec_get(circ_reader_header(r), "kind");
		int trace = kind && circ_obj_str_eq(kind, "attribution-graph");
		if (trace || circ_fgraph_is_feature(circ_reader_header(r)))
			return fgraph_page(&cli, r, trace);
	}
	if (dashboards_from)
		circ_usage_error(
		    "--dashboards-from goes with a feature graph (a feature circuit or "
		    "circ-trace's stream)");
	circ_scores *s = read_scores();
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
