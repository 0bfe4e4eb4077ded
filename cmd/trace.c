/*
 * circ-trace: the attribution graph of one prompt (lib/trace) on a model of
 * any family circ reads whose MLPs are replaced by transcoders: every
 * active feature, error node, token and top logit, the direct effects
 * between them, pruned by indirect influence as circuit-tracer prunes. Writes a circ stream (kind
 * "attribution-graph") and, with --graph-json, the graph JSON that
 * circuit-tracer's frontend and Neuronpedia's graph viewer read.
 */
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "batch.h"
#include "bpe.h"
#include "dict.h"
#include "metric.h"
#include "model.h"
#include "safetensors.h"
#include "trace.h"
#include "cli/opt.h"
#include "cli/progress.h"
#include "cli/session.h"

enum {
	OPT_MODEL = 'm',
	OPT_DICT = CIRC_OPT_FIRST_TOOL,
	OPT_TOKENS,
	OPT_EXAMPLE,
	OPT_MAX_LOGITS,
	OPT_LOGIT_PROB,
	OPT_NODE_THRESHOLD,
	OPT_EDGE_THRESHOLD,
	OPT_ALL_EDGES,
	OPT_GRAPH_JSON,
	OPT_SLUG,
	OPT_SCAN,
	OPT_BATCH,
	OPT_MAX_FEATURE_NODES,
	OPT_LOGIT_TOKENS,
	OPT_LOGIT_DIFF,
	OPT_THREADS,
	OPT_ALLOW_NONFINITE,
	OPT_INTERVENE,
	OPT_ANSWER,
	OPT_WRONG,
	OPT_TOP_K,
	OPT_ADJACENCY,
};

static const circ_opt opts[] = {
    {"model", OPT_MODEL, "DIR", "Hugging Face model directory, any family circ reads (required)"},
    {"dict", OPT_DICT, "DIR",
     "transcoder set replacing the MLPs (SAELens directories or circuit-tracer files; required)"},
    {"tokens", OPT_TOKENS, "IDS", "the prompt as comma-separated token ids (else a token stream)"},
    {"example", OPT_EXAMPLE, "N",
     "the token stream's example N (0-based; default 0), clean prompt"},
    {"max-logits", OPT_MAX_LOGITS, "N", "most logit nodes (default 10)"},
    {"logit-prob", OPT_LOGIT_PROB, "P",
     "logit nodes until their cumulative probability reaches P (default 0.95)"},
    {"node-threshold", OPT_NODE_THRESHOLD, "X",
     "keep the nodes holding this share of influence (default 0.8)"},
    {"edge-threshold", OPT_EDGE_THRESHOLD, "X",
     "keep the edges holding this share of influence (default 0.98)"},
    {"all-edges", OPT_ALL_EDGES, NULL, "write every non-zero edge, not only the kept ones"},
    {"graph-json", OPT_GRAPH_JSON, "FILE",
     "also write the circuit-tracer / Neuronpedia graph JSON of the pruned graph"},
    {"adjacency", OPT_ADJACENCY, "FILE",
     "also write the dense adjacency matrix and the node table as safetensors"},
    {"slug", OPT_SLUG, "NAME", "the graph JSON's metadata.slug (default circ-trace)"},
    {"scan", OPT_SCAN, "NAME",
     "the graph JSON's metadata.scan (default: the model's directory name)"},
    {"batch", OPT_BATCH, "N", "targets per backward sweep (default 256)"},
    {"logit-tokens", OPT_LOGIT_TOKENS, "IDS",
     "the logit targets: these tokens (comma-separated ids), not the most probable"},
    {"logit-diff", OPT_LOGIT_DIFF, "A:B,...",
     "the logit targets: these logit differences (logit[A] - logit[B], token ids), each "
     "weighted 1"},
    {"max-feature-nodes", OPT_MAX_FEATURE_NODES, "N",
     "keep the N most influential active features (circuit-tracer's max_feature_nodes; "
     "default: every one)"},
    {"threads", OPT_THREADS, "N", "threads for the model and the GEMMs"},
    {"allow-nonfinite", OPT_ALLOW_NONFINITE, NULL, "accept NaN or infinite weights"},
    {"intervene", OPT_INTERVENE, "SPEC",
     "instead of the graph: set (tc3.f17@5=0) or scale (tc3.f17@5*2) a feature, repeatable; "
     "writes the new top logits"},
    {"answer", OPT_ANSWER, "ID",
     "with --intervene: the answer token (metric: its logit minus --wrong's)"},
    {"wrong", OPT_WRONG, "ID", "with --intervene: the wrong token"},
    {"top-k", OPT_TOP_K, "K", "with --intervene: top tokens written (default 10)"},
    {0},
};

static struct {
	const char *model, *dict, *tokens, *graph_json, *slug, *scan, *adjacency, *logit_tokens,
	    *logit_diff;
	int example, max_logits, all_edges, batch, max_feat, threads, allow_nonfinite;
	int by_prob; /* --max-logits or --logit-prob given */
	int n_iv, answer, wrong, top_k;
	int vocab; /* the model's vocabulary: graph JSON's virtual ids of differences */
	const char *iv[256];
	double logit_prob, node_th, edge_th;
} o = {.max_logits = 10,
       .logit_prob = 0.95,
       .node_th = 0.8,
       .edge_th = 0.98,
       .batch = 256,
       .answer = -1,
       .wrong = -1,
       .top_k = 10,
       .slug = "circ-trace"};

static int handle(int key, const char *arg, void *ctx)
{
	(void)ctx;
	switch (key) {
	case OPT_MODEL: o.model = arg; return 0;
	case OPT_DICT: o.dict = arg; return 0;
	case OPT_TOKENS: o.tokens = arg; return 0;
	case OPT_EXAMPLE: o.example = (int)circ_opt_i64("example", arg, 0, 1 << 30); return 0;
	case OPT_MAX_LOGITS:
		o.max_logits = (int)circ_opt_i64("max-logits", arg, 1, 1 << 20);
		o.by_prob = 1;
		return 0;
	case OPT_LOGIT_PROB:
		o.logit_prob = circ_opt_f64_in("logit-prob", arg, 0, 0, 1, 0);
		o.by_prob = 1;
		return 0;
	case OPT_NODE_THRESHOLD:
		o.node_th = circ_opt_f64_in("node-threshold", arg, 0, 0, 1, 0);
		return 0;
	case OPT_EDGE_THRESHOLD:
		o.edge_th = circ_opt_f64_in("edge-threshold", arg, 0, 0, 1, 0);
		return 0;
	case OPT_ALL_EDGES: o.all_edges = 1; return 0;
	case OPT_GRAPH_JSON: o.graph_json = arg; return 0;
	case OPT_SLUG: o.slug = arg; return 0;
	case OPT_ADJACENCY: o.adjacency = arg; return 0;
	case OPT_SCAN: o.scan = arg; return 0;
	case OPT_BATCH: o.batch = (int)circ_opt_i64("batch", arg, 1, 1 << 20); return 0;
	case OPT_LOGIT_TOKENS: o.logit_tokens = arg; return 0;
	case OPT_LOGIT_DIFF: o.logit_diff = arg; return 0;
	case OPT_MAX_FEATURE_NODES:
		o.max_feat = (int)circ_opt_i64("max-feature-nodes", arg, 1, 1 << 30);
		return 0;
	case OPT_THREADS:
		o.threads = (int)circ_opt_i64("threads", arg, 1, CIRC_THREADS_MAX);
		return 0;
	case OPT_ALLOW_NONFINITE: o.allow_nonfinite = 1; return 0;
	case OPT_INTERVENE:
		if (o.n_iv == 256)
			circ_usage_error("--intervene: at most 256");
		o.iv[o.n_iv++] = arg;
		return 0;
	case OPT_ANSWER: o.answer = (int)circ_opt_i64("answer", arg, 0, INT32_MAX); return 0;
	case OPT_WRONG: o.wrong = (int)circ_opt_i64("wrong", arg, 0, INT32_MAX); return 0;
	case OPT_TOP_K: o.top_k = (int)circ_opt_i64("top-k", arg, 1, 1000); return 0;
	}
	return -1;
}

/* --tokens "1,2,3" (and --logit-tokens: opt names the option) */
static int32_t *parse_tokens(const char *s, const char *opt, int *T)
{
	int cap = 16, n = 0;
	int32_t *t = circ_xmalloc((size_t)cap * sizeof *t);
	const char *p = s;
	while (*p) {
		char *end;
		errno = 0;
		long v = strtol(p, &end, 10);
		if (end == p || errno || v < 0 || v > INT32_MAX)
			circ_usage_error("--%s: '%s': expected comma-separated token ids", opt, s);
		if (n == cap)
			t = circ_xrealloc(t, (size_t)(cap *= 2) * sizeof *t);
		t[n++] = (int32_t)v;
		p = end;
		if (*p == ',')
			p++;
		else if (*p)
			circ_usage_error("--%s: '%s': expected comma-separated token ids", opt, s);
	}
	*T = n;
	return t;
}

/* --logit-diff "5:7,9:2": pairs (a, b), 2 * n ids */
static int32_t *parse_diffs(const char *s, int *n)
{
	int cap = 8, k = 0;
	int32_t *t = circ_xmalloc((size_t)cap * 2 * sizeof *t);
	const char *p = s;
	do {
		for (int h = 0; h < 2; h++) {
			char *end;
			errno = 0;
			long v = strtol(p, &end, 10);
			if (end == p || !isdigit((unsigned char)*p) || errno || v > INT32_MAX ||
			    (h == 0 && *end != ':') || (h == 1 && *end && *end != ',') ||
			    (h == 1 && *end == ',' && !end[1]))
				circ_usage_error("--logit-diff: '%s': expected A:B pairs of token "
						 "ids, comma-separated",
						 s);
			if (k == cap)
				t = circ_xrealloc(t, (size_t)(cap *= 2) * 2 * sizeof *t);
			t[2 * k + h] = (int32_t)v;
			p = end + (*end != 0);
		}
		k++;
	} while (*p);
	*n = k;
	return t;
}

/* The clean prompt of the stream's example o.example. */
static int32_t *stream_tokens(circ_session *s, const char *in, int *T)
{
	circ_error e;
	circ_session_reader(s, in);
	circ_session_check_vocab(s);
	const msgpack_object *rec;
	int idx = 0, rc;
	while ((rc = circ_reader_next(s->r, &rec, &e)) > 0) {
		if (idx++ < o.example)
			continue;
		const msgpack_object *c = circ_rec_get(rec, "clean");
		circ_tensor t;
		if (!c || circ_obj_tensor(c, &t, &e) < 0) {
			if (!c)
				circ_errorf(&e, "field 'clean' missing");
			circ_error_prefix(&e, "'%s': record %lld", circ_reader_name(s->r),
					  (long long)circ_reader_recno(s->r));
			circ_die(&e);
		}
		int64_t n = circ_tensor_numel(&t);
		int32_t *ids = circ_xmalloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
		if (circ_tensor_copy_i32(&t, ids, &e) < 0) {
			circ_error_prefix(&e, "'%s': record %lld: field 'clean'",
					  circ_reader_name(s->r),
					  (long long)circ_reader_recno(s->r));
			circ_die(&e);
		}
		*T = (int)n;
		return ids;
	}
	if (rc < 0)
		circ_die(&e);
	circ_dief("'%s': no example %d (the stream has %d)", circ_reader_name(s->r), o.example,
		  idx);
}

static const char *kind_name(circ_tnode_kind k)
{
	switch (k) {
	case CIRC_TNODE_FEATURE: return "feature";
	case CIRC_TNODE_ERROR: return "error";
	case CIRC_TNODE_INPUT: return "input";
	case CIRC_TNODE_LOGIT: return "logit";
	}
	return "?";
}

typedef struct hdr_ctx {
	const circ_dict **tc;
	const char **digest;
	int L;
	const circ_trace_graph *g;
} hdr_ctx;

static void pack_dicts(msgpack_packer *pk, const void *ctx)
{
	const hdr_ctx *h = ctx;
	int n = 0;
	for (int l = 0; l < h->L; l++)
		n += h->tc[l] != NULL;
	msgpack_pack_array(pk, (size_t)n);
	for (int l = 0; l < h->L; l++) {
		const circ_dict *d = h->tc[l];
		if (!d)
			continue;
		char name[64];
		circ_dict_name(d, name, sizeof name);
		msgpack_pack_map(pk, 7);
		circ_pack_kv_str(pk, "name", name);
		circ_pack_kv_str(pk, "hook", d->cfg.hook_name);
		circ_pack_kv_str(pk, "hook_out", d->cfg.hook_out);
		circ_pack_kv_i64(pk, "d_sae", d->cfg.d_sae);
		circ_pack_kv_str(pk, "architecture", circ_dict_arch_name(d));
		circ_pack_kv_str(pk, "path", d->path ? d->path : "");
		circ_pack_kv_str(pk, "digest", h->digest[l]);
	}
}

static void pack_tokens(msgpack_packer *pk, const void *ctx)
{
	const circ_trace_graph *g = ctx;
	msgpack_pack_array(pk, (size_t)g->T);
	for (int t = 0; t < g->T; t++)
		msgpack_pack_int64(pk, g->tokens[t]);
}

/* sha256 of the dictionary's parameters (f32, as used) and its hooks. */
static void dict_digest(const circ_dict *d, char out[72])
{
	circ_sha256 s;
	circ_sha256_init(&s);
	circ_sha256_update(&s, d->cfg.hook_name, strlen(d->cfg.hook_name));
	circ_sha256_update(&s, d->cfg.hook_out, strlen(d->cfg.hook_out));
	circ_sha256_update(&s, d->mem, d->n_params * sizeof *d->mem);
	circ_sha256_final_hex(&s, out);
}

static void die_w(circ_writer *w, circ_error *e)
{
	circ_writer_abort(w);
	circ_die(e);
}

/* The token strings: the model directory's tokenizer when it has one, else
 * the ids. */
static char **token_strings(const circ_trace_graph *g, const char *dir)
{
	circ_error e;
	circ_bpe *b = circ_bpe_load_dir(dir, &e);
	int n = g->T + g->n_logit;
	char **s = circ_xcalloc((size_t)n, sizeof *s);
	for (int i = 0; i < n; i++) {
		const circ_tnode *nd = i < g->T ? NULL : &g->nodes[g->n - g->n_logit + (i - g->T)];
		char *d = circ_bpe_token_text(b, nd ? nd->feature : g->tokens[i]);
		if (nd && nd->minus >= 0) { /* a difference: A" - "B inside the clerp's quotes */
			char *m = circ_bpe_token_text(b, nd->minus);
			size_t n2 = strlen(d) + strlen(m) + 8;
			char *dm = circ_xmalloc(n2);
			snprintf(dm, n2, "%s\" - \"%s", d, m);
			free(d);
			free(m);
			d = dm;
		}
		s[i] = d;
	}
	circ_bpe_free(b);
	return s;
}

/* Text as circuit-tracer writes it (JSON needs valid UTF-8: jansson drops
 * other strings): invalid UTF-8 as U+FFFD (as tokenizer.decode does a
 * lone byte); for a token, newline, tab and carriage return as its
 * frontend/utils.py process_token shows them. */
static char *ct_text(const char *s, int token)
{
	size_t n = strlen(s), o_ = 0;
	char *out = circ_xmalloc(3 * n + 1);
	while (*s) {
		utf8proc_int32_t c;
		utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s, -1, &c);
		const char *r = k < 1		     ? "\xef\xbf\xbd"
				: token && c == '\n' ? "\xe2\x8f\x8e"
				: token && c == '\t' ? "\xe2\x86\x92"
				: token && c == '\r' ? "\xe2\x86\xb5"
						     : NULL;
		if (k < 1)
			k = 1;
		if (r) {
			memcpy(out + o_, r, 3);
			o_ += 3;
		} else {
			memcpy(out + o_, s, (size_t)k);
			o_ += (size_t)k;
		}
		s += k;
	}
	out[o_] = 0;
	return out;
}

/* circuit-tracer's node_id and friends (frontend/graph_models.py). */
static json_t *ct_node(const circ_trace_graph *g, int i, const circ_trace_prune *p, char **tok)
{
	const circ_tnode *nd = &g->nodes[i];
	char id[96], js[96], layer[32], clerp[256] = "";
	long long feature = 0;
	const char *type = "";
	int target = 0;
	double prob = 0;
	switch (nd->kind) {
	case CIRC_TNODE_FEATURE:
		snprintf(id, sizeof id, "%d_%d_%d", nd->layer, nd->feature, nd->pos);
		snprintf(js, sizeof js, "%d_%d-0", nd->layer, nd->feature);
		snprintf(layer, sizeof layer, "%d", nd->layer);
		feature = (long long)(nd->layer + nd->feature) * (nd->layer + nd->feature + 1) / 2 +
			  nd->feature;
		type = "cross layer transcoder";
		break;
	case CIRC_TNODE_ERROR:
		snprintf(id, sizeof id, "%d_-1_%d", nd->layer, nd->pos);
		snprintf(js, sizeof js, "%d_-1-%d", nd->layer, nd->pos);
		snprintf(layer, sizeof layer, "%d", nd->layer);
		feature = -1;
		type = "mlp reconstruction error";
		break;
	case CIRC_TNODE_INPUT:
		snprintf(id, sizeof id, "E_%d_%d", nd->feature, nd->pos);
		snprintf(js, sizeof js, "E_%d-%d", nd->feature, nd->pos);
		snprintf(layer, sizeof layer, "E");
		feature = nd->pos;
		type = "embedding";
		break;
	case CIRC_TNODE_LOGIT: {
		/* a difference: circuit-tracer's virtual index of a custom target */
		int v = nd->minus >= 0 ? o.vocab + i - (g->n - g->n_logit) : nd->feature;
		snprintf(id, sizeof id, "%d_%d_%d", g->L + 1, v, nd->pos);
		snprintf(js, sizeof js, "L_%d-%d", v, nd->pos);
		snprintf(layer, sizeof layer, "%d", g->L + 1);
		feature = v;
		type = "logit";
		target = i == g->n - g->n_logit;
		prob = nd->act;
		snprintf(clerp, sizeof clerp, "Output \"%s\" (p=%.3f)",
			 tok[g->T + i - (g->n - g->n_logit)], prob);
		break;
	}
	}
	json_t *o_ = json_object();
	json_object_set_new(o_, "node_id", json_string(id));
	json_object_set_new(o_, "feature", json_integer(feature));
	json_object_set_new(o_, "layer", json_string(layer));
	json_object_set_new(o_, "ctx_idx", json_integer(nd->pos));
	json_object_set_new(o_, "feature_type", json_string(type));
	json_object_set_new(o_, "token_prob", json_real(prob));
	json_object_set_new(o_, "is_target_logit", json_boolean(target));
	json_object_set_new(o_, "run_idx", json_integer(0));
	json_object_set_new(o_, "reverse_ctx_idx", json_integer(0));
	json_object_set_new(o_, "jsNodeId", json_string(js));
	json_object_set_new(o_, "clerp", json_string(clerp));
	if (nd->kind == CIRC_TNODE_LOGIT) {
		json_object_set_new(o_, "influence", json_null());
		json_object_set_new(o_, "activation", json_null());
	} else {
		json_object_set_new(o_, "influence", json_real(p->cumulative[i]));
		json_object_set_new(o_, "activation",
				    nd->kind == CIRC_TNODE_FEATURE ? json_real(nd->act)
								   : json_null());
	}
	return o_;
}

static void write_graph_json(const circ_trace_graph *g, const circ_trace_prune *p, char **tok,
			     const char *scan)
{
	circ_error e;
	int n = g->n;
	json_t *root = json_object(), *meta = json_object(), *q = json_object();
	json_t *pt = json_array();
	size_t plen = 0;
	for (int t = 0; t < g->T; t++)
		plen += strlen(tok[t]);
	char *prompt = circ_xcalloc(plen + 1, 1);
	char **ptok = circ_xcalloc((size_t)(g->T + g->n_logit), sizeof *ptok);
	for (int t = 0; t < g->T + g->n_logit; t++)
		ptok[t] = ct_text(tok[t], 1);
	for (int t = 0; t < g->T; t++) {
		json_array_append_new(pt, json_string(ptok[t]));
		strcat(prompt, tok[t]);
	}
	char *raw = prompt;
	prompt = ct_text(raw, 0);
	free(raw);
	tok = ptok;
	json_object_set_new(meta, "slug", json_string(o.slug));
	json_object_set_new(meta, "scan", json_string(scan));
	json_object_set_new(meta, "transcoder_list", json_array());
	json_object_set_new(meta, "prompt_tokens", pt);
	json_object_set_new(meta, "prompt", json_string(prompt));
	json_object_set_new(meta, "node_threshold", json_real(o.node_th));
	json_object_set_new(meta, "schema_version", json_integer(1));
	free(prompt);
	json_object_set_new(q, "pinnedIds", json_array());
	json_object_set_new(q, "supernodes", json_array());
	json_object_set_new(q, "linkType", json_string("both"));
	json_object_set_new(q, "clickedId", json_string(""));
	json_object_set_new(q, "sg_pos", json_string(""));
	/* nodes kept with a kept edge, tokens and logits always (create_graph_files) */
	unsigned char *used = circ_xcalloc((size_t)n, 1);
	json_t *links = json_array();
	for (int i = 0; i < n; i++)
		for (int j = 0; j < n; j++)
			if (p->edge_keep[(size_t)i * n + j] && p->node_keep[i] && p->node_keep[j]) {
				used[i] = used[j] = 1;
				json_t *l = json_object();
				char s[96], t[96];
				json_t *ns = ct_node(g, j, p, tok), *nt = ct_node(g, i, p, tok);
				snprintf(s, sizeof s, "%s",
					 json_string_value(json_object_get(ns, "node_id")));
				snprintf(t, sizeof t, "%s",
					 json_string_value(json_object_get(nt, "node_id")));
				json_decref(ns);
				json_decref(nt);
				json_object_set_new(l, "source", json_string(s));
				json_object_set_new(l, "target", json_string(t));
				json_object_set_new(l, "weight",
						    json_real(g->adj[(size_t)i * n + j]));
				json_array_append_new(links, l);
			}
	json_t *nodes = json_array();
	for (int i = 0; i < n; i++) {
		const circ_tnode *nd = &g->nodes[i];
		if (!p->node_keep[i])
			continue;
		if (used[i] || nd->kind == CIRC_TNODE_INPUT || nd->kind == CIRC_TNODE_LOGIT)
			json_array_append_new(nodes, ct_node(g, i, p, tok));
	}
	free(used);
	for (int t = 0; t < g->T + g->n_logit; t++)
		free(ptok[t]);
	free(ptok);
	json_object_set_new(root, "metadata", meta);
	json_object_set_new(root, "qParams", q);
	json_object_set_new(root, "nodes", nodes);
	json_object_set_new(root, "links", links);
	char *txt = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (!txt)
		circ_dief("'%s': cannot format the graph JSON", o.graph_json);
	circ_atomic a;
	FILE *f = NULL;
	if (circ_atomic_open(&a, o.graph_json, &e) < 0 || !(f = circ_atomic_file(&a, &e)) ||
	    ((fputs(txt, f) < 0 || fputc('\n', f) < 0) &&
	     circ_errorf(&e, "'%s': write error", o.graph_json) < 0) ||
	    circ_atomic_commit(&a, &e) < 0) {
		free(txt);
		circ_atomic_abort(&a);
		circ_die(&e);
	}
	free(txt);
}

static void pack_top(msgpack_packer *pk, const char *key, const float *lg, int V)
{
	int k = o.top_k < V ? o.top_k : V;
	int32_t *ids = circ_xmalloc((size_t)k * sizeof *ids);
	double *pr = circ_xmalloc((size_t)k * sizeof *pr);
	k = circ_metric_topk(lg, V, k, ids, pr);
	circ_pack_str(pk, key);
	msgpack_pack_array(pk, (size_t)k);
	for (int i = 0; i < k; i++) {
		msgpack_pack_map(pk, 3);
		circ_pack_kv_i64(pk, "token", ids[i]);
		circ_pack_kv_f64(pk, "logit", lg[ids[i]]);
		circ_pack_kv_f64(pk, "p", pr[i]);
	}
	free(ids);
	free(pr);
}

static void pack_specs(msgpack_packer *pk, const void *ctx)
{
	(void)ctx;
	msgpack_pack_array(pk, (size_t)o.n_iv);
	for (int k = 0; k < o.n_iv; k++)
		circ_pack_str(pk, o.iv[k]);
}

/* --intervene: the logits without and with the interventions. */
static void intervene(circ_session *s, const circ_dict **tc, const int32_t *tokens, int T, int argc,
		      char **argv, const circ_cli *cli)
{
	circ_error e;
	int V = s->c->vocab_size, metric = o.answer >= 0 && o.wrong >= 0;
	if ((o.answer >= 0) != (o.wrong >= 0))
		circ_usage_error("--answer and --wrong go together");
	if (metric && (o.answer >= V || o.wrong >= V))
		circ_dief("--answer/--wrong: token outside the vocabulary (%d)", V);
	circ_trace_iv *iv = circ_xmalloc((size_t)o.n_iv * sizeof *iv);
	for (int k = 0; k < o.n_iv; k++)
		if (circ_trace_iv_parse(o.iv[k], &iv[k], &e) < 0)
			circ_die(&e);
	float *clean = circ_xmalloc((size_t)V * sizeof *clean),
	      *lg = circ_xmalloc((size_t)V * sizeof *lg);
	if (circ_trace_intervene(s->m, tc, tokens, T, NULL, 0, o.threads, clean, &e) < 0 ||
	    circ_trace_intervene(s->m, tc, tokens, T, iv, o.n_iv, o.threads, lg, &e) < 0)
		circ_die(&e);
	circ_session_output(s, cli);
	circ_trace_graph tg = {.T = T, .tokens = (int32_t *)tokens};
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "model_digest", s->model_digest),
	    CIRC_HDR(STR, "dict_dir", o.dict),
	    CIRC_HDR_FN("tokens", pack_tokens, &tg),
	    CIRC_HDR_FN("interventions", pack_specs, NULL),
	    CIRC_HDR_IF(metric, I64, "answer", o.answer),
	    CIRC_HDR_IF(metric, I64, "wrong", o.wrong),
	};
	if (circ_writer_header_fields(s->w, "trace-intervention", argc, argv, NULL, 0, f,
				      CIRC_HDR_N(f), &e) < 0)
		die_w(s->w, &e);
	msgpack_packer *pk = circ_writer_packer(s->w);
	msgpack_pack_map(pk, 2 + 2 * metric);
	pack_top(pk, "clean_top", clean, V);
	pack_top(pk, "top", lg, V);
	if (metric) {
		circ_pack_kv_f64(pk, "clean_metric", (double)clean[o.answer] - clean[o.wrong]);
		circ_pack_kv_f64(pk, "metric", (double)lg[o.answer] - lg[o.wrong]);
	}
	if (circ_writer_end_record(s->w, &e) < 0)
		die_w(s->w, &e);
	circ_session_finish(s);
	free(iv);
	free(clean);
	free(lg);
}

/* --adjacency: adjacency (n, n) F32 as circuit-tracer's adjacency_matrix
 * (rows targets, columns sources), and per node its kind (0 feature, 1
 * error, 2 input, 3 logit), layer, feature or token id, position and
 * activation (probability for logits). */
static void write_adjacency(const circ_trace_graph *g)
{
	circ_error e;
	int n = g->n;
	int32_t *iv = circ_xmalloc((size_t)n * 5 * sizeof *iv);
	float *act = circ_xmalloc((size_t)n * sizeof *act);
	for (int i = 0; i < n; i++) {
		iv[i] = (int32_t)g->nodes[i].kind;
		iv[n + i] = g->nodes[i].layer;
		iv[2 * n + i] = g->nodes[i].feature;
		iv[3 * n + i] = g->nodes[i].pos;
		iv[4 * n + i] = g->nodes[i].minus;
		act[i] = (float)g->nodes[i].act;
	}
	circ_st_tensor t[7] = {
	    {"adjacency", CIRC_F32, 2, {n, n}, g->adj, (size_t)n * n * sizeof(float)},
	    {"node_kind", CIRC_I32, 1, {n}, iv, (size_t)n * sizeof *iv},
	    {"node_layer", CIRC_I32, 1, {n}, iv + n, (size_t)n * sizeof *iv},
	    {"node_feature", CIRC_I32, 1, {n}, iv + 2 * n, (size_t)n * sizeof *iv},
	    {"node_pos", CIRC_I32, 1, {n}, iv + 3 * n, (size_t)n * sizeof *iv},
	    {"node_minus", CIRC_I32, 1, {n}, iv + 4 * n, (size_t)n * sizeof *iv},
	    {"activation", CIRC_F32, 1, {n}, act, (size_t)n * sizeof *act},
	};
	if (circ_st_write(o.adjacency, 7, t, 0, NULL, &e) < 0)
		circ_die(&e);
	free(iv);
	free(act);
}

int main(int argc, char **argv)
{
	circ_cli cli = {"--model DIR --dict DIR [--tokens IDS | tokens] [options]",
			"The attribution graph of one prompt with transcoders replacing the MLPs.",
			opts, 1};
	circ_session s = {0};
	circ_error e;
	int i;

	circ_init("circ-trace");
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i > 1)
		circ_usage_error("one token stream at most");
	if (!o.model)
		circ_usage_error("--model DIR is required");
	if (!o.dict)
		circ_usage_error("--dict DIR is required");
	if (o.tokens && argc - i == 1)
		circ_usage_error("--tokens and a token stream: give one");
	if (o.n_iv) {
		const char *g = o.graph_json	 ? "graph-json"
				: o.adjacency	 ? "adjacency"
				: o.all_edges	 ? "all-edges"
				: o.max_feat	 ? "max-feature-nodes"
				: o.logit_tokens ? "logit-tokens"
				: o.logit_diff	 ? "logit-diff"
						 : NULL;
		if (g)
			circ_usage_error("--intervene writes new logits, not a graph: --%s "
					 "applies to the graph",
					 g);
	} else if (o.answer >= 0 || o.wrong >= 0) {
		circ_usage_error("--answer and --wrong go with --intervene");
	}
	if (!o.threads)
		o.threads = circ_threads_default();
	circ_session_open_model(&s, o.model, o.allow_nonfinite);
	int T = 0;
	int32_t *tokens = o.tokens ? parse_tokens(o.tokens, "tokens", &T)
				   : stream_tokens(&s, argc - i == 1 ? argv[i] : "-", &T);
	circ_dict_set *set = circ_dict_set_load(o.dict, &e);
	if (!set)
		circ_die(&e);
	int L = s.c->n_layer;
	const circ_dict **tc = circ_xcalloc((size_t)L, sizeof *tc);
	if (circ_trace_layers(s.m, set, tc, &e) < 0)
		circ_die(&e);
	if (o.n_iv) {
		intervene(&s, tc, tokens, T, argc, argv, &cli);
		free(tc);
		circ_dict_set_free(set);
		free(tokens);
		circ_session_free(&s);
		return 0;
	}
	circ_trace_opts to;
	circ_trace_opts_default(&to);
	to.max_n_logits = o.max_logits;
	to.desired_logit_prob = o.logit_prob;
	to.batch = o.batch;
	to.max_feature_nodes = o.max_feat;
	int32_t *lids = NULL;
	if (o.logit_tokens) {
		if (o.by_prob)
			circ_usage_error("--logit-tokens names the logit targets: --max-logits and "
					 "--logit-prob choose them by probability");
		lids = parse_tokens(o.logit_tokens, "logit-tokens", &to.n_logit_ids);
		if (!to.n_logit_ids)
			circ_usage_error("--logit-tokens: '': expected comma-separated token ids");
	}
	to.logit_ids = lids;
	int32_t *ldiff = NULL;
	if (o.logit_diff) {
		if (o.logit_tokens)
			circ_usage_error("--logit-diff and --logit-tokens both name the logit "
					 "targets: give one");
		if (o.by_prob)
			circ_usage_error("--logit-diff names the logit targets: --max-logits and "
					 "--logit-prob choose them by probability");
		ldiff = parse_diffs(o.logit_diff, &to.n_logit_diffs);
	}
	to.logit_diffs = ldiff;
	o.vocab = s.c->vocab_size;
	to.threads = o.threads;
	circ_cli_progress(&s.pr, "targets", 0);
	to.progress = &s.pr;
	circ_trace_graph *g = circ_trace_build(s.m, tc, tokens, T, &to, &e);
	if (!g)
		circ_die(&e);
	circ_progress_end(&s.pr);
	free(lids);
	free(ldiff);
	double rel, chk = circ_trace_check(g, &rel);
	if (o.adjacency)
		write_adjacency(g);
	circ_trace_prune p;
	if (circ_trace_prune_run(g, o.node_th, o.edge_th, &p, &e) < 0)
		circ_die(&e);

	const char **dg = circ_xcalloc((size_t)L, sizeof *dg);
	for (int l = 0; l < L; l++)
		if (tc[l]) {
			char *d = circ_xmalloc(72);
			dict_digest(tc[l], d);
			dg[l] = d;
		}
	hdr_ctx hc = {tc, dg, L, g};
	circ_session_output(&s, &cli);
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "model_digest", s.model_digest),
	    CIRC_HDR(STR, "model_type", circ_model_type_name(s.c->model_type)),
	    CIRC_HDR(STR, "dict_dir", o.dict),
	    CIRC_HDR_FN("dicts", pack_dicts, &hc),
	    CIRC_HDR_FN("tokens", pack_tokens, g),
	    CIRC_HDR(I64, "n_nodes", g->n),
	    CIRC_HDR(I64, "n_features", g->n_feat),
	    CIRC_HDR(I64, "n_active_features", g->n_active),
	    CIRC_HDR(I64, "max_feature_nodes", o.max_feat),
	    CIRC_HDR(I64, "n_errors", g->n_err),
	    CIRC_HDR(I64, "n_inputs", g->n_input),
	    CIRC_HDR(I64, "n_logits", g->n_logit),
	    CIRC_HDR(I64, "max_n_logits", o.max_logits),
	    CIRC_HDR_IF(o.logit_tokens != NULL, STR, "logit_tokens", o.logit_tokens),
	    CIRC_HDR_IF(o.logit_diff != NULL, STR, "logit_diffs", o.logit_diff),
	    CIRC_HDR(F64, "desired_logit_prob", o.logit_prob),
	    CIRC_HDR(F64, "node_threshold", o.node_th),
	    CIRC_HDR(F64, "edge_threshold", o.edge_th),
	    CIRC_HDR(BOOL, "all_edges", o.all_edges),
	    CIRC_HDR(F64, "check_abs", chk),
	    CIRC_HDR(F64, "check_rel", rel),
	};
	if (circ_writer_header_fields(s.w, "attribution-graph", argc, argv, NULL, 0, f,
				      CIRC_HDR_N(f), &e) < 0)
		die_w(s.w, &e);
	msgpack_packer *pk;
	char name[96], name2[96], edge[200];
	for (int k = 0; k < g->n; k++) {
		const circ_tnode *nd = &g->nodes[k];
		int tgt = nd->kind == CIRC_TNODE_FEATURE || nd->kind == CIRC_TNODE_LOGIT;
		pk = circ_writer_packer(s.w);
		circ_trace_node_name(nd, name, sizeof name);
		int drop = tgt && g->n_active > g->n_feat, diff = nd->minus >= 0;
		msgpack_pack_map(pk, 9 + 2 * tgt + drop + diff);
		circ_pack_kv_str(pk, "node", name);
		circ_pack_kv_i64(pk, "index", k);
		circ_pack_kv_str(pk, "kind", kind_name(nd->kind));
		circ_pack_kv_i64(pk, "layer", nd->layer);
		circ_pack_kv_i64(pk, nd->kind == CIRC_TNODE_FEATURE ? "feature" : "token",
				 nd->kind == CIRC_TNODE_ERROR ? -1 : nd->feature);
		if (diff)
			circ_pack_kv_i64(pk, "minus", nd->minus);
		circ_pack_kv_i64(pk, "pos", nd->pos);
		circ_pack_kv_f64(pk,
				 diff				? "target_weight"
				 : nd->kind == CIRC_TNODE_LOGIT ? "prob"
								: "activation",
				 nd->act);
		circ_pack_kv_f64(pk, "influence", p.cumulative[k]);
		circ_pack_str(pk, "keep");
		if (p.node_keep[k])
			msgpack_pack_true(pk);
		else
			msgpack_pack_false(pk);
		if (tgt) {
			circ_pack_kv_f64(pk, "pre", nd->pre);
			circ_pack_kv_f64(pk, "bias", nd->bias);
		}
		if (drop)
			circ_pack_kv_f64(pk, "dropped", nd->dropped);
		if (circ_writer_end_record(s.w, &e) < 0)
			die_w(s.w, &e);
	}
	int n = g->n;
	for (int t = 0; t < n; t++)
		for (int j = 0; j < n; j++) {
			float wv = g->adj[(size_t)t * n + j];
			int keep =
			    p.edge_keep[(size_t)t * n + j] && p.node_keep[t] && p.node_keep[j];
			if (wv == 0.0f || (!keep && !o.all_edges))
				continue;
			circ_trace_node_name(&g->nodes[j], name, sizeof name);
			circ_trace_node_name(&g->nodes[t], name2, sizeof name2);
			snprintf(edge, sizeof edge, "%s->%s", name, name2);
			pk = circ_writer_packer(s.w);
			msgpack_pack_map(pk, 5);
			circ_pack_kv_str(pk, "edge", edge);
			circ_pack_kv_i64(pk, "source", j);
			circ_pack_kv_i64(pk, "target", t);
			circ_pack_kv_f64(pk, "weight", wv);
			circ_pack_str(pk, "keep");
			if (keep)
				msgpack_pack_true(pk);
			else
				msgpack_pack_false(pk);
			if (circ_writer_end_record(s.w, &e) < 0)
				die_w(s.w, &e);
		}
	if (o.graph_json) {
		char **tok = token_strings(g, o.model);
		const char *scan = o.scan;
		if (!scan) {
			scan = strrchr(o.model, '/');
			scan = scan && scan[1] ? scan + 1 : o.model;
		}
		write_graph_json(g, &p, tok, scan);
		for (int k = 0; k < g->T + g->n_logit; k++)
			free(tok[k]);
		free(tok);
	}
	circ_session_finish(&s);
	for (int l = 0; l < L; l++)
		free((void *)dg[l]);
	free(dg);
	circ_trace_prune_free(&p);
	circ_trace_graph_free(g);
	free(tc);
	circ_dict_set_free(set);
	free(tokens);
	circ_session_free(&s);
	return 0;
}
