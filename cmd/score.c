/*
 * circ-score: one score per edge of the model's graph, for a task given as a
 * token stream: eap, eap-ig, eap-ig-activations, exact patching or CD-T
 * (contextual decomposition, lib/cdt: its own block, score_cdt). Scores
 * are means over examples written with their sums and counts, so that
 * shards scored in parallel merge exactly (--merge).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attrib.h"
#include "cdt.h"
#include "circuit.h"
#include "fcircuit.h"
#include "json.h"
#include "cli/patchopt.h"
#include "cli/progress.h"
#include "cli/session.h"

enum {
	OPT_METHOD = CIRC_OPT_FIRST_TOOL,
	OPT_STEPS,
	OPT_LIST_EDGES,
	OPT_MERGE,
	OPT_ACTS,
	OPT_DICT,
	OPT_NODE_THRESHOLD,
	OPT_NODES_ONLY,
	OPT_POSITIONS,
};

static const circ_opt opts[] = {
    CIRC_PATCH_OPT_MODEL,
    {"method", OPT_METHOD, "M",
     "eap (default), eap-ig, eap-ig-activations, exact or cd-t (with --dict: feature-atp or "
     "feature-ig)"},
    {"steps", OPT_STEPS, "N", "integrated-gradient steps (default 5; feature-ig 10)"},
    {"dict", OPT_DICT, "DIR", "feature circuits: the SAEs (a set, circ_dict_set_load) to score"},
    {"node-threshold", OPT_NODE_THRESHOLD, "X",
     "feature circuits: edges into nodes whose |mean effect| in a batch is >= X (default 0)"},
    {"nodes-only", OPT_NODES_ONLY, NULL, "feature circuits: node effects only, no edges"},
    {"positions", OPT_POSITIONS, "sum|keep",
     "feature circuits: nodes summed over token positions (default) or one per position "
     "(<node>@<t>; examples of one length)"},
    CIRC_PATCH_OPT_COMMON,
    {"list-edges", OPT_LIST_EDGES, NULL, "print the graph's edge names, one a line, and exit"},
    {"merge", OPT_MERGE, NULL, "merge score streams (shards) given as files or concatenated"},
    {"acts", OPT_ACTS, NULL, "eap from an acts stream (circ-harvest) instead of running the model"},
    {0},
};

static struct {
	circ_patch_cli pc;
	circ_attr_method method;
	int steps, steps_set, method_set, list_edges, merge, acts;
	int cdt; /* --method cd-t: contextual decomposition (lib/cdt), not an attrib method */
	/* feature circuits (lib/fcircuit): --method feature-atp|feature-ig */
	int feature;
	circ_fc_method fmethod;
	const char *dict;
	double node_threshold;
	int nodes_only, keep_positions, positions_set;
} o = {.method = CIRC_ATTR_EAP, .steps = 5};

static int handle(int key, const char *arg, void *ctx)
{
	switch (key) {
	case OPT_METHOD:
		o.cdt = !strcmp(arg, "cd-t");
		o.feature = circ_fc_method_parse(arg, &o.fmethod) == 0;
		if (!o.cdt && !o.feature && circ_attr_parse(arg, &o.method) < 0)
			circ_usage_error("unknown method '%s' (eap, eap-ig, eap-ig-activations, "
					 "exact, cd-t, feature-atp, feature-ig)",
					 arg);
		o.method_set = 1;
		return 0;
	case OPT_STEPS:
		o.steps = (int)circ_opt_i64("steps", arg, 1, 1000);
		o.steps_set = 1;
		return 0;
	case OPT_LIST_EDGES: o.list_edges = 1; return 0;
	case OPT_MERGE: o.merge = 1; return 0;
	case OPT_ACTS: o.acts = 1; return 0;
	case OPT_DICT: o.dict = arg; return 0;
	case OPT_NODE_THRESHOLD:
		o.node_threshold = circ_opt_f64_in("node-threshold", arg, 0, 0, 1e300, 0);
		return 0;
	case OPT_NODES_ONLY: o.nodes_only = 1; return 0;
	case OPT_POSITIONS:
		if (strcmp(arg, "sum") && strcmp(arg, "keep"))
			circ_usage_error("--positions: '%s' is not sum or keep", arg);
		o.keep_positions = !strcmp(arg, "keep");
		o.positions_set = 1;
		return 0;
	}
	return circ_patch_cli_handle(&o.pc, key, arg) ? -1 : 0;
}

static void write_scores(circ_writer *w, const circ_graph *g, const double *sum,
			 const int64_t *count, circ_error *e)
{
	char name[CIRC_NAME_MAX];
	for (int64_t ed = 0; ed < g->n_edges; ed++) {
		msgpack_packer *pk = circ_writer_packer(w);
		if (count[ed] == 0)
			continue;
		circ_graph_edge_name(g, ed, name, sizeof name);
		if (!isfinite(sum[ed]) && !o.pc.allow_nonfinite) {
			circ_writer_abort(w);
			circ_dief("edge '%s': score is %s (non-finite numbers in the run; "
				  "--allow-nonfinite writes it)",
				  name, isnan(sum[ed]) ? "nan" : "infinite");
		}
		msgpack_pack_map(pk, 4);
		circ_pack_kv_str(pk, "edge", name);
		circ_pack_kv_f64(pk, "score", sum[ed] / (double)count[ed]);
		circ_pack_kv_f64(pk, "sum", sum[ed]);
		circ_pack_kv_i64(pk, "count", count[ed]);
		if (circ_writer_end_record(w, e) < 0) {
			circ_writer_abort(w);
			circ_die(e);
		}
	}
}

/* What a scores header says besides the common fields (NULL strings and
 * negative steps are left out). */
typedef struct scores_header {
	const char *method, *metric;
	const circ_graph *g;
	const char *model_digest, *dataset_digest;
	int64_t n_examples;
	const char *ablation;
	int64_t steps;
} scores_header;

/* The one scores header of every mode (runs, --acts, --merge), so that
 * none loses a field: "ablation" and "sign" travel with every scores
 * stream. */
static void write_header(circ_writer *w, int argc, char **argv, circ_reader *const *inputs,
			 int ninputs, const scores_header *h)
{
	circ_error e;
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "method", h->method),
	    CIRC_HDR(STR, "metric", h->metric),
	    CIRC_HDR_GRAPH(h->g),
	    CIRC_HDR(STR, "model_digest", h->model_digest),
	    CIRC_HDR(STR, "dataset_digest", h->dataset_digest),
	    CIRC_HDR(I64, "n_examples", h->n_examples),
	    CIRC_HDR_IF(h->ablation, STR, "ablation", h->ablation),
	    CIRC_HDR_IF(h->steps >= 0, I64, "steps", h->steps),
	    CIRC_HDR(STR, "sign", CIRC_SCORES_SIGN),
	};
	if (circ_writer_header_fields(w, "scores", argc, argv, inputs, ninputs, f, CIRC_HDR_N(f),
				      &e) < 0)
		circ_die(&e);
}

static int same_str(const char *a, const char *b)
{
	return (!a && !b) || (a && b && !strcmp(a, b));
}

static int merge_features(circ_cli *cli, int argc, char **argv, int nfiles, char **files,
			  circ_reader *first);

/* Shard f's header is not one of shards 0..f-1's: the same shard twice
 * would count its examples twice. */
static void check_shard_twice(circ_reader *const *rs, int f)
{
	for (int g = 0; g < f; g++)
		if (!strcmp(circ_reader_header_digest(rs[f]), circ_reader_header_digest(rs[g])))
			circ_dief("%s: record 0: the same header as %s: the same shard twice would "
				  "count its examples twice",
				  circ_reader_name(rs[f]), circ_reader_name(rs[g]));
}

static int merge(circ_cli *cli, int argc, char **argv, int nfiles, char **files)
{
	circ_error e;
	circ_scores *acc = NULL;
	circ_reader **rs = circ_xcalloc((size_t)nfiles, sizeof *rs);
	circ_writer *w;
	for (int f = 0; f < nfiles; f++) {
		circ_scores *s;
		rs[f] = circ_reader_open(files[f], "scores", &e);
		if (!rs[f])
			circ_die(&e);
		if (f == 0 && circ_fgraph_is_feature(circ_reader_header(rs[0]))) {
			circ_reader *r0 = rs[0];
			free(rs);
			return merge_features(cli, argc, argv, nfiles, files, r0);
		}
		/* identical headers: the same shard twice, its counts would double */
		check_shard_twice(rs, f);
		if (!(s = circ_scores_read(rs[f], &e)))
			circ_die(&e);
		if (!acc) {
			acc = s;
			continue;
		}
		if (!circ_graph_same(acc->g, s->g) || !same_str(acc->method, s->method) ||
		    !same_str(acc->metric, s->metric) ||
		    !same_str(acc->model_digest, s->model_digest))
			circ_dief("%s: scores of another graph, method, metric or model than %s",
				  circ_reader_name(rs[f]), circ_reader_name(rs[0]));
		if (!same_str(acc->ablation, s->ablation) || acc->steps != s->steps)
			circ_dief("%s: scores made with another ablation or number of steps "
				  "than %s",
				  circ_reader_name(rs[f]), circ_reader_name(rs[0]));
		for (int64_t ed = 0; ed < acc->g->n_edges; ed++) {
			if (circ_count_add(&acc->count[ed], s->count[ed], &e) < 0) {
				char name[CIRC_NAME_MAX];
				circ_graph_edge_name(acc->g, ed, name, sizeof name);
				circ_dief("%s: edge '%s': field 'count': %s",
					  circ_reader_name(rs[f]), name, e.msg);
			}
			acc->sum[ed] += s->sum[ed];
		}
		if (acc->n_examples >= 0 && s->n_examples >= 0 &&
		    circ_count_add(&acc->n_examples, s->n_examples, &e) < 0)
			circ_dief("%s: header: field 'n_examples': %s", circ_reader_name(rs[f]),
				  e.msg);
		circ_scores_free(s);
	}
	for (int64_t ed = 0; ed < acc->g->n_edges; ed++)
		if (!isnan(acc->score[ed]) && acc->count[ed] == 0)
			circ_dief("%s: edge scores without sum and count cannot be merged",
				  circ_reader_name(rs[0]));
	w = circ_writer_open(cli->output, &cli->wopts, &e);
	if (!w)
		circ_die(&e);
	{
		scores_header h = {
		    acc->method ? acc->method : "unknown",
		    acc->metric ? acc->metric : "unknown",
		    acc->g,
		    acc->model_digest ? acc->model_digest : "",
		    acc->dataset_digest ? acc->dataset_digest : "",
		    acc->n_examples,
		    acc->ablation,
		    acc->steps,
		};
		write_header(w, argc, argv, rs, nfiles, &h);
	}
	write_scores(w, acc->g, acc->sum, acc->count, &e);
	if (circ_writer_close(w, &e) < 0)
		circ_die(&e);
	for (int f = 0; f < nfiles; f++)
		circ_reader_free(rs[f]);
	free(rs);
	circ_scores_free(acc);
	return 0;
}

static char *or_empty(char *s)
{
	return s ? s : circ_xstrdup("");
}

/* -1 with "field 'diff': element 12 is nan ..." at the first NaN or
 * infinity of x (n). */
static int finite_field(const char *key, const float *x, int64_t n, circ_error *e)
{
	for (int64_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return circ_errorf(
			    e,
			    "field '%s': element %lld is %s (--allow-nonfinite lets it "
			    "through)",
			    key, (long long)i, isnan(x[i]) ? "nan" : "infinite");
	return 0;
}

/* eap from harvested activations: no model run at all. */
static int score_acts(circ_cli *cli, int argc, char **argv, const char *in)
{
	circ_error e;
	circ_reader *r = circ_reader_open(in, "acts", &e);
	const msgpack_object *hdr, *rec;
	circ_graph *g;
	double *sum;
	int64_t *count, n = 0, d_model;
	char *md, *dd, *metric, *ablation;
	circ_writer *w;
	int k;
	if (!r)
		circ_die(&e);
	hdr = circ_reader_header(r);
	circ_hdr_field hf[] = {
	    CIRC_HDR_NEED(I64, "d_model"),	 CIRC_HDR_MAY(STR, "model_digest"),
	    CIRC_HDR_MAY(STR, "dataset_digest"), CIRC_HDR_MAY(STR, "metric"),
	    CIRC_HDR_MAY(STR, "ablation"),
	};
	if (!(g = circ_graph_from_header(hdr, &e)) ||
	    circ_hdr_read(hdr, hf, CIRC_HDR_N(hf), &e) < 0) {
		circ_reader_fail(r, &e);
		circ_die(&e);
	}
	d_model = hf[0].i;
	md = or_empty(circ_hdr_strdup(&hf[1]));
	dd = or_empty(circ_hdr_strdup(&hf[2]));
	metric = or_empty(circ_hdr_strdup(&hf[3]));
	ablation = circ_hdr_strdup(&hf[4]);
	if (o.pc.model) {
		circ_model *m = circ_model_open(o.pc.model, NULL, &e);
		const char *d = m ? circ_model_digest(m, &e) : NULL;
		if (!d)
			circ_die(&e);
		if (strcmp(d, md))
			circ_dief(
			    "%s: harvested from another model than '%s' (model_digest differs)",
			    circ_reader_name(r), o.pc.model);
		circ_model_free(m);
	}
	sum = circ_xcalloc((size_t)g->n_edges, sizeof *sum);
	while ((k = circ_reader_next(r, &rec, &e)) > 0) {
		circ_tensor td, tg;
		int64_t T;
		float *diff, *grad;
		int R = g->n_layer * (3 * g->n_head + 1) + 1;
		if (circ_rec_i64(rec, "T", &T, &e) < 0 ||
		    circ_rec_tensor(rec, "diff", &td, &e) < 0 ||
		    circ_rec_tensor(rec, "grad", &tg, &e) < 0) {
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		if (td.ndim != 3 || td.shape[0] != g->n_up || td.shape[1] != T ||
		    td.shape[2] != d_model || tg.ndim != 3 || tg.shape[0] != R ||
		    tg.shape[1] != T || tg.shape[2] != d_model) {
			circ_errorf(&e,
				    "tensors 'diff' and 'grad' must be [%d, T, %lld] and [%d, T, "
				    "%lld]",
				    g->n_up, (long long)d_model, R, (long long)d_model);
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		/* f32 copies: the stored dtype may be narrower (f16, bf16) */
		diff = circ_xmalloc((size_t)circ_tensor_numel(&td) * sizeof *diff);
		grad = circ_xmalloc((size_t)circ_tensor_numel(&tg) * sizeof *grad);
		if (circ_tensor_copy_f32(&td, diff, &e) < 0 ||
		    circ_tensor_copy_f32(&tg, grad, &e) < 0 ||
		    (!o.pc.allow_nonfinite &&
		     (finite_field("diff", diff, circ_tensor_numel(&td), &e) < 0 ||
		      finite_field("grad", grad, circ_tensor_numel(&tg), &e) < 0))) {
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		circ_eap_add(sum, g, (int)d_model, (int)T, diff, grad);
		free(diff);
		free(grad);
		n++;
	}
	if (k < 0)
		circ_die(&e);
	if (n == 0)
		circ_dief("%s: no examples", circ_reader_name(r));
	w = circ_writer_open(cli->output, &cli->wopts, &e);
	if (!w)
		circ_die(&e);
	{
		scores_header h = {"eap", metric, g, md, dd, n, ablation, 0};
		write_header(w, argc, argv, &r, 1, &h);
	}
	count = circ_xmalloc((size_t)g->n_edges * sizeof *count);
	for (int64_t ed = 0; ed < g->n_edges; ed++)
		count[ed] = n;
	write_scores(w, g, sum, count, &e);
	if (circ_writer_close(w, &e) < 0)
		circ_die(&e);
	free(sum);
	free(count);
	free(md);
	free(dd);
	free(metric);
	free(ablation);
	circ_graph_free(g);
	circ_reader_free(r);
	return 0;
}

/* --merge takes none of the scoring options. */
static void check_merge_options(void)
{
	const char *bad = circ_patch_cli_given(&o.pc, NULL);
	if (bad)
		circ_usage_error("option '--%s' does not apply to --merge", bad);
	if (o.method_set || o.steps_set || o.acts || o.list_edges)
		circ_usage_error("option '--%s' does not apply to --merge", o.method_set  ? "method"
									    : o.steps_set ? "steps"
									    : o.acts
										? "acts"
										: "list-edges");
}

/* --acts: eap scores only; --model only checks the acts' model digest. */
static void check_acts_options(void)
{
	const char *bad = circ_patch_cli_given(&o.pc, (const int[]){CIRC_PO_MODEL, 0});
	if (o.method != CIRC_ATTR_EAP || o.cdt)
		circ_usage_error("--acts gives eap scores only");
	if (bad)
		circ_usage_error("option '--%s' does not apply to --acts", bad);
	if (o.list_edges)
		circ_usage_error("option '--list-edges' does not apply to --acts");
}

/* --list-edges: the model's graph only (nargs: the arguments given). */
static void check_list_edges_options(int nargs)
{
	const char *bad = circ_patch_cli_given(
	    &o.pc, (const int[]){CIRC_PO_MODEL, CIRC_PO_LEVEL, CIRC_PO_CONVENTION, 0});
	if (nargs)
		circ_usage_error("--list-edges takes no input (the graph is the model's)");
	if (bad || o.method_set)
		circ_usage_error("option '--%s' does not apply to --list-edges",
				 bad ? bad : "method");
}

/* The token stream's dataset digest: its header's "dataset_digest" (copied
 * into *copy, for the caller to free), else the header's own digest. */
static const char *dataset_digest(circ_reader *r, char **copy)
{
	const msgpack_object *dd = circ_rec_get(circ_reader_header(r), "dataset_digest");
	if (dd && dd->type == MSGPACK_OBJECT_STR) {
		*copy = circ_xmalloc(dd->via.str.size + 1);
		memcpy(*copy, dd->via.str.ptr, dd->via.str.size);
		(*copy)[dd->via.str.size] = 0;
		return *copy;
	}
	return circ_reader_header_digest(r);
}

/* The scores stream: its header, then every edge's sum over the examples
 * a attributed. */
static void write_output(circ_session *s, int argc, char **argv, const circ_attrib *a,
			 const char *dd)
{
	circ_error e;
	const circ_graph *g = s->g;
	int64_t *count;
	const char *md = circ_model_digest(s->m, &e);
	if (!md)
		circ_die(&e);
	scores_header h = {
	    circ_attr_name(o.method),
	    circ_metric_name(o.pc.metric),
	    g,
	    md,
	    dd,
	    circ_attrib_count(a),
	    circ_ablation_name(o.pc.ablation),
	    o.method == CIRC_ATTR_EAP_IG || o.method == CIRC_ATTR_EAP_IG_ACT ? o.steps : 0,
	};
	write_header(s->w, argc, argv, &s->r, 1, &h);
	count = circ_xmalloc((size_t)g->n_edges * sizeof *count);
	for (int64_t ed = 0; ed < g->n_edges; ed++)
		count[ed] = circ_attrib_count(a);
	write_scores(s->w, g, circ_attrib_sums(a), count, &e);
	free(count);
}

/* ---- feature circuits (--method feature-atp|feature-ig --dict DIR) ----
 * lib/fcircuit's node and edge effects, written as a scores stream whose
 * header graph is a feature graph (schemas/graph.schema.json,
 * $defs.feature_graph): node records ({"node", ...}) then edge records. */

/* The header's graph of a feature scorer. */
static void pack_feature_graph(msgpack_packer *pk, const void *ctx)
{
	const circ_fc *fc = ctx;
	const circ_fc_slot *s0 = circ_fc_slot_get(fc, 0);
	int n = circ_fc_n_slots(fc), nd = n - !s0->d;
	int P = circ_fc_positions(fc), par = circ_fc_parallel(fc);
	msgpack_pack_map(pk, 4 + (P > 0) + par);
	circ_pack_kv_str(pk, "type", "feature");
	if (par)
		circ_pack_kv_str(pk, "blocks", "parallel");
	circ_pack_kv_str(pk, "positions", P ? "kept" : "summed");
	if (P)
		circ_pack_kv_i64(pk, "n_positions", P);
	circ_pack_kv_str(pk, "input", s0->d ? "dictionary" : "node");
	circ_pack_str(pk, "dictionaries");
	msgpack_pack_array(pk, (size_t)nd);
	for (int k = 0; k < n; k++) {
		const circ_fc_slot *s = circ_fc_slot_get(fc, k);
		char dg[72];
		if (!s->d)
			continue;
		circ_fc_dict_digest(s->d, dg);
		msgpack_pack_map(pk, 5);
		circ_pack_kv_str(pk, "name", s->name);
		circ_pack_kv_str(pk, "hook", s->d->cfg.hook_name);
		circ_pack_kv_i64(pk, "d_sae", s->S);
		circ_pack_kv_str(pk, "architecture", circ_dict_arch_name(s->d));
		circ_pack_kv_str(pk, "digest", dg);
	}
}

typedef struct fc_out {
	circ_writer *w;
	const circ_fc *fc;
	int64_t count;
	circ_error e;
} fc_out;

static int fc_record(fc_out *out, const char *key, const char *name, double sum)
{
	msgpack_packer *pk = circ_writer_packer(out->w);
	if (!isfinite(sum) && !o.pc.allow_nonfinite) {
		circ_writer_abort(out->w);
		circ_dief("%s '%s': score is %s (non-finite numbers in the run; --allow-nonfinite "
			  "writes it)",
			  key, name, isnan(sum) ? "nan" : "infinite");
	}
	msgpack_pack_map(pk, 4);
	circ_pack_kv_str(pk, key, name);
	circ_pack_kv_f64(pk, "score", sum / (double)out->count);
	circ_pack_kv_f64(pk, "sum", sum);
	circ_pack_kv_i64(pk, "count", out->count);
	return circ_writer_end_record(out->w, &out->e) < 0 ? -1 : 0;
}

static int fc_edge(void *ctx, int up_slot, int up, int down_slot, int down, double sum)
{
	fc_out *out = ctx;
	char a[64], b[64], name[160];
	circ_fc_node_name(out->fc, up_slot, up, a, sizeof a);
	circ_fc_node_name(out->fc, down_slot, down, b, sizeof b);
	snprintf(name, sizeof name, "%s->%s", a, b);
	return fc_record(out, "edge", name, sum);
}

static int score_features(circ_cli *cli, int argc, char **argv, const char *in)
{
	circ_session s = {0};
	circ_error e;
	circ_dict_set *set;
	circ_fc_opts fo;
	circ_fc *fc;
	circ_batch *b;
	const char *dd;
	char *dd_copy = NULL;
	fc_out out = {0};
	circ_patch_cli_check(&o.pc);
	circ_session_model(&s, &o.pc, 0);
	if (!(set = circ_dict_set_load(o.dict, &e)))
		circ_dief("--dict: %s", e.msg);
	circ_session_tokens(&s, in);
	circ_patch_cli_metric(&o.pc, s.r);
	dd = dataset_digest(s.r, &dd_copy);
	circ_fc_opts_default(&fo);
	fo.method = o.fmethod;
	if (o.steps_set)
		fo.steps = o.steps;
	fo.edges = !o.nodes_only;
	fo.node_threshold = o.node_threshold;
	fo.threads = o.pc.threads;
	fo.metric = o.pc.metric;
	fo.keep_positions = o.keep_positions;
	if (!(fc = circ_fc_new(s.m, set, &fo, o.pc.batch, s.c->n_ctx, &e)))
		circ_dief("--dict: %s", e.msg);
	while (circ_session_next(&s, &b))
		if (circ_fc_batch(fc, b, &e) < 0)
			circ_session_die(&s, &e);
	if (circ_fc_count(fc) == 0)
		circ_dief("%s: no examples", circ_reader_name(s.r));
	circ_session_output(&s, cli);
	{
		circ_hdr_field f[] = {
		    CIRC_HDR(STR, "method", circ_fc_method_name(fo.method)),
		    CIRC_HDR(STR, "metric", circ_metric_name(o.pc.metric)),
		    CIRC_HDR_FN("graph", pack_feature_graph, fc),
		    CIRC_HDR(STR, "model_digest", s.model_digest),
		    CIRC_HDR(STR, "dataset_digest", dd),
		    CIRC_HDR(I64, "n_examples", circ_fc_count(fc)),
		    CIRC_HDR(I64, "steps", fo.method == CIRC_FC_IG ? fo.steps : 0),
		    CIRC_HDR(STR, "sign", CIRC_SCORES_SIGN),
		};
		if (circ_writer_header_fields(s.w, "scores", argc, argv, &s.r, 1, f, CIRC_HDR_N(f),
					      &e) < 0)
			circ_die(&e);
	}
	out.w = s.w;
	out.fc = fc;
	out.count = circ_fc_count(fc);
	for (int k = 0; k < circ_fc_n_slots(fc); k++) {
		const double *ns = circ_fc_node_sums(fc, k);
		for (int i = 0; i < circ_fc_slot_nodes(fc, k); i++) {
			char name[64];
			circ_fc_node_name(fc, k, i, name, sizeof name);
			if (fc_record(&out, "node", name, ns[i]) < 0) {
				circ_writer_abort(s.w);
				circ_die(&out.e);
			}
		}
	}
	if (circ_fc_edges(fc, fc_edge, &out) < 0) {
		circ_writer_abort(s.w);
		circ_die(&out.e);
	}
	circ_session_finish(&s);
	circ_fc_free(fc);
	circ_dict_set_free(set);
	free(dd_copy);
	circ_session_free(&s);
	return 0;
}

/* --merge of feature scores: every shard's graph (dictionaries and their
 * digests), method, metric, model and steps the same; each node's and
 * edge's sums added, its count the examples of every shard (a shard writes
 * no record for an edge whose sum is 0, and every record's count is its
 * n_examples). */
typedef struct fmrec {
	int64_t key[4]; /* canonical order: nodes (slot, i), then edges (down, up) */
	char *name;
	int edge;
	double sum;
} fmrec;

static int cmp_fmrec(const void *a, const void *b)
{
	const fmrec *x = a, *y = b;
	for (int i = 0; i < 4; i++)
		if (x->key[i] != y->key[i])
			return x->key[i] < y->key[i] ? -1 : 1;
	return 0;
}

static int merge_features(circ_cli *cli, int argc, char **argv, int nfiles, char **files,
			  circ_reader *first)
{
	circ_error e;
	circ_reader **rs = circ_xcalloc((size_t)nfiles, sizeof *rs);
	circ_fgraph *g = NULL;
	fmrec *rec = NULL;
	int64_t n = 0, cap = 0, nex = 0, steps = 0;
	char *method = NULL, *metric = NULL, *md = NULL, *dd = NULL, *graph0 = NULL;
	circ_writer *w;
	fc_out out = {0};
	rs[0] = first;
	for (int f = 0; f < nfiles; f++) {
		const msgpack_object *hdr, *r;
		char *gj;
		int k;
		if (!rs[f] && !(rs[f] = circ_reader_open(files[f], "scores", &e)))
			circ_die(&e);
		hdr = circ_reader_header(rs[f]);
		check_shard_twice(rs, f);
		circ_hdr_field hf[] = {
		    CIRC_HDR_NEED(STR, "method"),	CIRC_HDR_NEED(STR, "metric"),
		    CIRC_HDR_NEED(STR, "model_digest"), CIRC_HDR_MAY(STR, "dataset_digest"),
		    CIRC_HDR_NEED(I64, "n_examples"),	CIRC_HDR_MAY(I64, "steps"),
		};
		if (!circ_fgraph_is_feature(hdr))
			circ_dief("%s: not feature scores (the first shard's are)",
				  circ_reader_name(rs[f]));
		if (circ_hdr_read(hdr, hf, CIRC_HDR_N(hf), &e) < 0) {
			circ_reader_fail(rs[f], &e);
			circ_die(&e);
		}
		{
			size_t len = 0, cap2 = 0;
			gj = NULL;
			if (circ_json_from_msgpack(circ_rec_get(hdr, "graph"), &gj, &len, &cap2,
						   &e) < 0)
				circ_dief("%s: header: field 'graph': %s", circ_reader_name(rs[f]),
					  e.msg);
		}
		if (f == 0) {
			if (!(g = circ_fgraph_from_header(hdr, &e))) {
				circ_reader_fail(rs[f], &e);
				circ_die(&e);
			}
			method = circ_hdr_strdup(&hf[0]);
			metric = circ_hdr_strdup(&hf[1]);
			md = circ_hdr_strdup(&hf[2]);
			dd = circ_hdr_strdup(&hf[3]);
			steps = hf[5].skip ? 0 : hf[5].i;
			graph0 = gj;
		} else {
			char *m1 = circ_hdr_strdup(&hf[0]), *m2 = circ_hdr_strdup(&hf[1]),
			     *m3 = circ_hdr_strdup(&hf[2]);
			int same = !strcmp(gj, graph0) && !strcmp(m1, method) &&
				   !strcmp(m2, metric) && !strcmp(m3, md) &&
				   (hf[5].skip ? 0 : hf[5].i) == steps;
			free(m1);
			free(m2);
			free(m3);
			free(gj);
			if (!same)
				circ_dief(
				    "%s: scores of another feature graph, method, metric, model "
				    "or number of steps than %s",
				    circ_reader_name(rs[f]), circ_reader_name(rs[0]));
		}
		if (circ_count_add(&nex, hf[4].i, &e) < 0)
			circ_dief("%s: header: field 'n_examples': %s", circ_reader_name(rs[f]),
				  e.msg);
		while ((k = circ_reader_next(rs[f], &r, &e)) > 0) {
			const char *name;
			size_t nl;
			int uk, ui, dk, di, edge = circ_rec_get(r, "edge") != NULL;
			double sum;
			if (circ_rec_str(r, edge ? "edge" : "node", &name, &nl, &e) < 0 ||
			    (edge ? circ_fgraph_edge(g, name, nl, &uk, &ui, &dk, &di, &e)
				  : circ_fgraph_node(g, name, nl, &dk, &di, &e)) < 0 ||
			    circ_rec_f64(r, "sum", &sum, &e) < 0) {
				circ_reader_fail(rs[f], &e);
				circ_die(&e);
			}
			if (n == cap) {
				cap = cap ? 2 * cap : 1024;
				rec = circ_xrealloc(rec, (size_t)cap * sizeof *rec);
			}
			rec[n] =
			    (fmrec){{edge, dk, di, edge ? uk : 0}, circ_xmalloc(nl + 1), edge, sum};
			rec[n].key[3] = edge ? (int64_t)uk << 32 | (uint32_t)ui : 0;
			memcpy(rec[n].name, name, nl);
			rec[n].name[nl] = 0;
			n++;
		}
		if (k < 0)
			circ_die(&e);
	}
	qsort(rec, (size_t)n, sizeof *rec, cmp_fmrec);
	w = circ_writer_open(cli->output, &cli->wopts, &e);
	if (!w)
		circ_die(&e);
	{
		circ_hdr_field f[] = {
		    CIRC_HDR(STR, "method", method),
		    CIRC_HDR(STR, "metric", metric),
		    CIRC_HDR(OBJ, "graph", circ_rec_get(circ_reader_header(rs[0]), "graph")),
		    CIRC_HDR(STR, "model_digest", md),
		    CIRC_HDR(STR, "dataset_digest", dd ? dd : ""),
		    CIRC_HDR(I64, "n_examples", nex),
		    CIRC_HDR(I64, "steps", steps),
		    CIRC_HDR(STR, "sign", CIRC_SCORES_SIGN),
		};
		if (circ_writer_header_fields(w, "scores", argc, argv, rs, nfiles, f, CIRC_HDR_N(f),
					      &e) < 0)
			circ_die(&e);
	}
	out.w = w;
	out.count = nex;
	for (int64_t i = 0; i < n;) {
		int64_t j = i + 1;
		double sum = rec[i].sum;
		while (j < n && !cmp_fmrec(&rec[i], &rec[j]))
			sum += rec[j++].sum;
		if (fc_record(&out, rec[i].edge ? "edge" : "node", rec[i].name, sum) < 0) {
			circ_writer_abort(w);
			circ_die(&out.e);
		}
		i = j;
	}
	if (circ_writer_close(w, &e) < 0)
		circ_die(&e);
	for (int64_t i = 0; i < n; i++)
		free(rec[i].name);
	for (int f = 0; f < nfiles; f++)
		circ_reader_free(rs[f]);
	free(rs);
	free(rec);
	free(method);
	free(metric);
	free(md);
	free(dd);
	free(graph0);
	circ_fgraph_free(g);
	return 0;
}

/* --method cd-t: every edge's CD-T score (lib/cdt.h), one decomposition
 * per layer of each batch over the clean run and its loss gradients. */
static int score_cdt(circ_cli *cli, circ_session *s, int argc, char **argv, const char *dd)
{
	circ_error e;
	circ_batch *b;
	circ_cdt_scorer *sc;
	int64_t *count;
	const char *md;
	circ_session_patcher(s, NULL, 1);
	circ_session_means(s);
	sc = circ_cdt_scorer_new(s->p, NULL);
	while (circ_session_next(s, &b)) {
		circ_session_load(s, b, 1);
		if (circ_cdt_scorer_batch(sc, NULL, &e) < 0)
			circ_session_die(s, &e);
	}
	if (circ_cdt_scorer_count(sc) == 0)
		circ_dief("%s: no examples", circ_reader_name(s->r));
	if (!(md = circ_model_digest(s->m, &e)))
		circ_die(&e);
	circ_session_output(s, cli);
	{
		scores_header h = {"cd-t", circ_metric_name(o.pc.metric), s->g, md,
				   dd,	   circ_cdt_scorer_count(sc),	  NULL, 0};
		write_header(s->w, argc, argv, &s->r, 1, &h);
	}
	count = circ_xmalloc((size_t)s->g->n_edges * sizeof *count);
	for (int64_t ed = 0; ed < s->g->n_edges; ed++)
		count[ed] = circ_cdt_scorer_count(sc);
	write_scores(s->w, s->g, circ_cdt_scorer_sums(sc), count, &e);
	free(count);
	circ_cdt_scorer_free(sc);
	circ_session_finish(s);
	circ_session_free(s);
	return 0;
}

int main(int argc, char **argv)
{
	circ_cli cli = {"--model DIR [options] [tokens]",
			"Score every edge of the model's graph (or, with --dict, of its feature "
			"graph) for the task in a token stream.",
			opts, 1};
	circ_session s = {0};
	circ_error e;
	circ_attrib *a;
	circ_batch *b;
	const char *dd, *in = "-";
	char *dd_copy = NULL;
	int i;

	circ_init("circ-score");
	circ_patch_cli_init(&o.pc);
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	/* every option is checked before anything is read */
	if (o.merge) {
		check_merge_options();
		return merge(&cli, argc, argv, argc - i ? argc - i : 1,
			     argc - i ? argv + i : (char *[]){"-"});
	}
	if (argc - i > 1)
		circ_usage_error("one token stream at most");
	if (argc - i == 1)
		in = argv[i];
	if (o.steps_set && !(o.feature && o.fmethod == CIRC_FC_IG) &&
	    o.method != CIRC_ATTR_EAP_IG && o.method != CIRC_ATTR_EAP_IG_ACT)
		circ_usage_error(
		    "option '--steps' goes with --method eap-ig or eap-ig-activations");
	if (o.acts) {
		check_acts_options();
		return score_acts(&cli, argc, argv, in);
	}
	if (o.feature != !!o.dict)
		circ_usage_error(o.dict ? "--dict goes with --method feature-atp or feature-ig"
					: "--method feature-atp and feature-ig need --dict DIR");
	if (!o.feature && (o.node_threshold > 0 || o.nodes_only || o.positions_set))
		circ_usage_error("options '--node-threshold', '--nodes-only' and '--positions' go "
				 "with --method feature-atp or feature-ig");
	if (o.feature) {
		const char *bad = circ_patch_cli_given(
		    &o.pc,
		    (const int[]){CIRC_PO_MODEL, CIRC_PO_METRIC, CIRC_PO_BATCH, CIRC_PO_THREADS,
				  CIRC_PO_ALLOW_NONFINITE, CIRC_PO_COMPUTE, 0});
		if (bad || o.list_edges)
			circ_usage_error("option '--%s' does not apply to feature circuits",
					 bad ? bad : "list-edges");
		return score_features(&cli, argc, argv, in);
	}
	if (o.list_edges)
		check_list_edges_options(argc - i);
	if (o.cdt || o.method == CIRC_ATTR_EAP_IG_ACT)
		circ_patch_cli_no_raw(&o.pc,
				      o.cdt ? "--method cd-t" : "--method eap-ig-activations");
	circ_patch_cli_check(&o.pc);
	circ_session_model(&s, &o.pc, 1);
	if (o.list_edges) {
		if (circ_graph_write_edges(s.g, stdout, &e) < 0 || fclose(stdout) != 0)
			circ_dief("'<stdout>': write error");
		return 0;
	}
	circ_session_tokens(&s, in);
	circ_patch_cli_metric(&o.pc, s.r);
	dd = dataset_digest(s.r, &dd_copy);
	if (o.cdt) {
		score_cdt(&cli, &s, argc, argv, dd);
		free(dd_copy);
		return 0;
	}
	circ_session_attrib_patcher(&s, o.method);
	circ_session_means(&s);
	a = circ_attrib_new(s.p, o.method, o.steps);
	if (o.method == CIRC_ATTR_EXACT) { /* counted by the edge, inside the batch */
		int64_t n = circ_session_n_examples(&s), ne = circ_patcher_graph(s.p)->n_edges;
		/* a header's count past any real one is checked at the end */
		circ_cli_progress(&s.pr, "edges x examples", n <= INT64_MAX / ne ? n * ne : 0);
	}
	while (circ_session_next(&s, &b)) {
		circ_session_load(&s, b, 0);
		if (circ_attrib_batch(a, &s.pr, &e) < 0)
			circ_session_die(&s, &e);
	}
	if (circ_attrib_count(a) == 0)
		circ_dief("%s: no examples", circ_reader_name(s.r));
	circ_session_output(&s, &cli);
	write_output(&s, argc, argv, a, dd);
	circ_session_finish(&s);
	free(dd_copy);
	circ_attrib_free(a);
	circ_session_free(&s);
	return 0;
}
