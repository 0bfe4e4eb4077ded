/*
 * circ-patch: run the model with edges or nodes of its graph patched and
 * report how much of the behaviour a circuit keeps:
 *   f = (m(C) - m(empty)) / (m(M) - m(empty)),
 * with m(M) the clean model, m(empty) every edge patched, m(C) every edge
 * outside the circuit patched (means over examples). With --curve it scores
 * circuits of the top-ranked edges at MIB's sizes and writes a curve stream
 * with its areas (CPR: area under f; CMD: area between f and 1).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "circuit.h"
#include "eval.h"
#include "fcircuit.h"
#include "cli/patchopt.h"
#include "cli/session.h"

enum {
	OPT_CIRCUIT = 'c',
	OPT_EDGES = CIRC_OPT_FIRST_TOOL,
	OPT_NODES,
	OPT_CURVE,
	OPT_ABSOLUTE,
	OPT_FRACTIONS,
	OPT_DICT, /* feature circuits */
};

static const circ_opt opts[] = {
    CIRC_PATCH_OPT_MODEL,
    {"circuit", OPT_CIRCUIT, "FILE",
     "circuit stream: its edges are kept, every other edge patched"},
    {"edges", OPT_EDGES, "FILE", "stream of {\"edge\": name} records: these edges are patched"},
    {"nodes", OPT_NODES, "LIST", "comma-separated nodes whose outputs are patched everywhere"},
    {"curve", OPT_CURVE, "SCORES",
     "faithfulness curve of top-ranked circuits from a scores stream"},
    {"absolute", OPT_ABSOLUTE, NULL, "with --curve: rank edges by |score| (as for CMD)"},
    {"fractions", OPT_FRACTIONS, "LIST", "with --curve: circuit sizes as fractions of all edges"},
    {"dict", OPT_DICT, "DIR",
     "feature circuits: the SAEs of the feature scores (--curve) or circuit (--circuit); "
     "nodes outside are mean-ablated"},
    CIRC_PATCH_OPT_COMMON,
    {0},
};

static struct {
	circ_patch_cli pc;
	const char *circuit, *edges, *nodes, *curve, *fractions;
	int absolute;
	const char *dict; /* feature circuits */
} o;

static int handle(int key, const char *arg, void *ctx)
{
	switch (key) {
	case OPT_CIRCUIT: o.circuit = arg; return 0;
	case OPT_EDGES: o.edges = arg; return 0;
	case OPT_NODES: o.nodes = arg; return 0;
	case OPT_CURVE: o.curve = arg; return 0;
	case OPT_ABSOLUTE: o.absolute = 1; return 0;
	case OPT_FRACTIONS: o.fractions = arg; return 0;
	case OPT_DICT: o.dict = arg; return 0;
	}
	return circ_patch_cli_handle(&o.pc, key, arg) ? -1 : 0;
}

/* Circuits to evaluate: one (--circuit, --edges, --nodes) or a curve. */
typedef struct job {
	int n;
	uint8_t **keep;	  /* (n) each (E) */
	double *fraction; /* (n) curve only */
	int64_t *n_edges; /* (n) */
	int *stage;	  /* (n) lowest stage with a patched edge */
} job;

static int lowest_patched_stage(circ_patcher *p, const circ_graph *g, const uint8_t *keep)
{
	int lo = 2 * g->n_layer + 1;
	for (int64_t ed = 0; ed < g->n_edges; ed++)
		if (!keep[ed]) {
			int s = circ_patcher_recv_stage(p, g->edge_recv[ed]);
			if (s < lo)
				lo = s;
		}
	return lo;
}

static void read_edges_to_patch(const char *path, const circ_graph *g, uint8_t *keep)
{
	circ_error e;
	circ_reader *r = circ_reader_open(path, NULL, &e);
	const msgpack_object *rec;
	int k;
	if (!r)
		circ_die(&e);
	memset(keep, 1, (size_t)g->n_edges);
	while ((k = circ_reader_next(r, &rec, &e)) > 0) {
		const char *s;
		size_t n;
		int64_t ed;
		if (circ_rec_str(rec, "edge", &s, &n, &e) < 0 ||
		    circ_graph_parse_edge(g, s, n, &ed, &e) < 0) {
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		keep[ed] = 0;
	}
	if (k < 0)
		circ_die(&e);
	circ_reader_free(r);
}

static void patch_nodes(const char *list, const circ_graph *g, uint8_t *keep)
{
	circ_error e;
	const char *s = list;
	memset(keep, 1, (size_t)g->n_edges);
	while (*s) {
		size_t n = strcspn(s, ",");
		int node;
		if (circ_graph_parse_node(g, s, n, &node, &e) < 0)
			circ_usage_error("--nodes: %s", e.msg);
		if (node >= g->n_up)
			circ_usage_error("--nodes: logits has no output to patch");
		for (int64_t ed = 0; ed < g->n_edges; ed++)
			if (g->edge_up[ed] == node)
				keep[ed] = 0;
		s += n;
		if (*s == ',')
			s++;
	}
}

static const double default_fractions[] = {0.001, 0.002, 0.005, 0.01, 0.02,
					   0.05,  0.1,	 0.2,	0.5,  1.0};

/* A NaN (only with --allow-nonfinite) printed as "nan", never "-nan". */
static double pos_nan(double x)
{
	return isnan(x) ? fabs(x) : x;
}

/* The most points a curve takes from --fractions. */
#define MAX_FRACTIONS CIRC_FRACTIONS_MAX

/* --fractions into fr (circ_parse_fractions); returns how many. A bad list
 * is a usage error. */
static int parse_fractions(const char *list, double fr[MAX_FRACTIONS])
{
	circ_error e;
	int nf = circ_parse_fractions(list, fr, &e);
	if (nf < 0)
		circ_usage_error("option '--fractions': %s", e.msg);
	return nf;
}

/* --nodes: a comma-separated list of names, none empty (the names are
 * checked against the graph once the model is open). */
static void check_node_list(const char *list)
{
	const char *s = list;
	if (!*list)
		circ_usage_error("option '--nodes': empty list");
	for (;;) {
		size_t n = strcspn(s, ",");
		if (n == 0)
			circ_usage_error("option '--nodes': empty node name in '%s'", list);
		s += n;
		if (!*s)
			return;
		s++;
	}
}

/* An explicit --level or --convention must agree with the graph the
 * circuit or the scores were made on (which is the one used). */
static void check_graph_options(const circ_graph *g, const char *path)
{
	if (o.pc.conv_set && o.pc.conv != g->input)
		circ_usage_error("option '--convention %s' disagrees with the graph of '%s' (%s)",
				 circ_graph_input_name(o.pc.conv), path,
				 circ_graph_input_name(g->input));
	if (o.pc.level_set && o.pc.level != g->level)
		circ_usage_error("option '--level %s' disagrees with the graph of '%s' (%s)",
				 circ_graph_level_name(o.pc.level), path,
				 circ_graph_level_name(g->level));
}

/* The graph to patch: the circuit's or the scores' when they name one (their
 * reader goes into inputs, for the header's provenance; *cc or *sc is set),
 * else the model's at --level and --convention. It must match the model. */
static circ_graph *patch_graph(circ_session *s, circ_reader **inputs, int *ninputs,
			       circ_circuit **cc, circ_scores **sc)
{
	const circ_config *c = s->c;
	const char *md = s->model_digest;
	circ_graph *g;
	circ_error e;
	/* the graph comes from the circuit or scores when they name one; a
	 * headerless edge list takes the model's */
	if (o.circuit) {
		circ_reader *cr = circ_reader_open(o.circuit, "circuit", &e);
		circ_graph *mg = NULL;
		if (!cr)
			circ_die(&e);
		if (!strcmp(circ_reader_kind(cr), "records")) {
			mg = circ_cli_model_graph(s->m, o.pc.level, o.pc.conv);
		}
		if (!(*cc = circ_circuit_read(cr, mg, &e)))
			circ_die(&e);
		circ_graph_free(mg);
		check_graph_options((*cc)->g, o.circuit);
		if ((*cc)->model_digest && *(*cc)->model_digest && strcmp((*cc)->model_digest, md))
			circ_dief(
			    "'%s': the circuit was found on another model (model_digest differs)",
			    o.circuit);
		g = (*cc)->g;
		inputs[(*ninputs)++] = cr;
	} else if (o.curve) {
		circ_reader *sr = circ_reader_open(o.curve, "scores", &e);
		if (!sr || !(*sc = circ_scores_read(sr, &e)))
			circ_die(&e);
		if ((*sc)->model_digest && *(*sc)->model_digest && strcmp((*sc)->model_digest, md))
			circ_dief("'%s': scores of another model (model_digest differs)", o.curve);
		check_graph_options((*sc)->g, o.curve);
		g = (*sc)->g;
		inputs[(*ninputs)++] = sr;
	} else {
		g = circ_cli_model_graph(s->m, o.pc.level, o.pc.conv);
	}
	if (g->n_layer != c->n_layer || g->n_head != c->n_head)
		circ_dief("the graph (%d layers, %d heads) does not match the model in '%s'",
			  g->n_layer, g->n_head, o.pc.model);
	return g;
}

/* The circuits to evaluate: one (--circuit, --edges, --nodes), or the
 * curve's, the top-scored edges at each fraction; each with the lowest
 * stage it patches, where its recomputation starts. */
static void make_jobs(job *jb, const circ_graph *g, circ_patcher *p, const circ_circuit *cc,
		      const circ_scores *sc)
{
	if (o.curve) {
		int64_t *order = circ_xmalloc((size_t)g->n_edges * sizeof *order);
		double fr[MAX_FRACTIONS];
		int nf = 0;
		if (o.fractions) {
			nf = parse_fractions(o.fractions, fr);
		} else {
			nf = (int)(sizeof default_fractions / sizeof *default_fractions);
			memcpy(fr, default_fractions, sizeof default_fractions);
		}
		circ_rank_edges(g, sc->score, !o.absolute, order);
		jb->n = nf;
		jb->keep = circ_xcalloc((size_t)nf, sizeof *jb->keep);
		jb->fraction = circ_xcalloc((size_t)nf, sizeof(double));
		jb->n_edges = circ_xcalloc((size_t)nf, sizeof(int64_t));
		for (int j = 0; j < nf; j++) {
			int64_t n = circ_eval_curve_n_edges(fr[j], g->n_edges);
			jb->keep[j] = circ_xcalloc((size_t)g->n_edges, 1);
			for (int64_t q = 0; q < n && q < sc->n_scored; q++)
				jb->keep[j][order[q]] = 1;
			jb->fraction[j] = fr[j];
			jb->n_edges[j] = circ_count_kept(g, jb->keep[j]);
		}
		free(order);
	} else {
		jb->n = 1;
		jb->keep = circ_xcalloc(1, sizeof *jb->keep);
		jb->keep[0] = circ_xcalloc((size_t)g->n_edges, 1);
		jb->n_edges = circ_xcalloc(1, sizeof(int64_t));
		if (o.circuit)
			memcpy(jb->keep[0], cc->keep, (size_t)g->n_edges);
		else if (o.edges)
			read_edges_to_patch(o.edges, g, jb->keep[0]);
		else
			patch_nodes(o.nodes, g, jb->keep[0]);
		jb->n_edges[0] = circ_count_kept(g, jb->keep[0]);
	}
	jb->stage = circ_xcalloc((size_t)jb->n, sizeof(int));
	for (int j = 0; j < jb->n; j++)
		jb->stage[j] = lowest_patched_stage(p, g, jb->keep[j]);
}

static void job_free(job *jb)
{
	for (int j = 0; j < jb->n; j++)
		free(jb->keep[j]);
	free(jb->keep);
	free(jb->fraction);
	free(jb->n_edges);
	free(jb->stage);
}

/* The options, checked before anything is read; returns the token stream's
 * path ("-": standard input). */
static const char *check_options(int argc, char **argv, int i)
{
	int nsel = !!o.circuit + !!o.edges + !!o.nodes + !!o.curve;
	if (nsel != 1)
		circ_usage_error("give exactly one of --circuit, --edges, --nodes and --curve");
	if (argc - i > 1)
		circ_usage_error("one token stream at most");
	if ((o.absolute || o.fractions) && !o.curve)
		circ_usage_error("--absolute and --fractions go with --curve");
	if (o.fractions) {
		double fr[MAX_FRACTIONS];
		parse_fractions(o.fractions, fr);
	}
	if (o.nodes)
		check_node_list(o.nodes);
	circ_patch_cli_check(&o.pc);
	return argc - i == 1 ? argv[i] : "-";
}

/* The output's header: a curve stream's, or a patch stream's. */
static void write_header(circ_session *s, int argc, char **argv, circ_reader **inputs, int ninputs,
			 const circ_graph *g, const job *jb)
{
	circ_error e;
	if (o.curve) {
		circ_hdr_field f[] = {
		    CIRC_HDR(STR, "ablation", circ_ablation_name(o.pc.ablation)),
		};
		if (circ_eval_curve_write_header(s->w, argc, argv, inputs, ninputs, g,
						 circ_metric_name(o.pc.metric), o.absolute,
						 s->model_digest, f, CIRC_HDR_N(f), &e) < 0)
			circ_die(&e);
	} else {
		circ_hdr_field f[] = {
		    CIRC_HDR(STR, "metric", circ_metric_name(o.pc.metric)),
		    CIRC_HDR(STR, "ablation", circ_ablation_name(o.pc.ablation)),
		    CIRC_HDR_GRAPH(g),
		    CIRC_HDR(STR, "model_digest", s->model_digest),
		    CIRC_HDR(I64, "n_edges", jb->n_edges[0]),
		};
		if (circ_writer_header_fields(s->w, "patch", argc, argv, inputs, ninputs, f,
					      CIRC_HDR_N(f), &e) < 0)
			circ_die(&e);
	}
}

/* Sums over the examples read so far. */
typedef struct totals {
	double *sum_c;	     /* (n) each circuit's metric */
	double sum_m, sum_0; /* the model's and the empty circuit's metric */
	int64_t count;	     /* examples */
} totals;

/* Runs every circuit of jb on batch b (out: B metrics); without --curve,
 * one record per example. */
static void run_batch(circ_session *s, const circ_batch *b, const job *jb, double *out, totals *t)
{
	circ_patcher *p = s->p;
	const double *mc = circ_patcher_clean_metric(p), *m0 = circ_patcher_ref_metric(p);
	circ_error e;
	/* circuits from the largest patched stage down reuse the clean run most */
	for (int j = jb->n - 1; j >= 0; j--) {
		if (circ_patcher_eval(p, jb->keep[j], jb->stage[j], out, &e) < 0)
			circ_session_die(s, &e);
		for (int bb = 0; bb < b->B; bb++)
			t->sum_c[j] += out[bb];
		if (!o.curve)
			for (int bb = 0; bb < b->B; bb++) {
				msgpack_packer *pk = circ_writer_packer(s->w);
				msgpack_pack_map(pk, 5);
				circ_pack_kv_i64(pk, "id", b->ex[bb].id);
				circ_pack_kv_f64(pk, "metric_model", mc[bb]);
				circ_pack_kv_f64(pk, "metric_empty", m0[bb]);
				circ_pack_kv_f64(pk, "metric_circuit", out[bb]);
				circ_pack_kv_f64(pk, "faithfulness",
						 circ_eval_faithfulness(out[bb], m0[bb], mc[bb]));
				if (circ_writer_end_record(s->w, &e) < 0)
					circ_die(&e);
			}
	}
	for (int bb = 0; bb < b->B; bb++) {
		t->sum_m += mc[bb];
		t->sum_0 += m0[bb];
	}
	t->count += b->B;
}

/* --curve's points, its areas (written and printed). */
static void write_curve(circ_writer *w, const job *jb, const totals *t, double mm, double m0)
{
	circ_error e;
	double *f = circ_xmalloc((size_t)jb->n * sizeof *f);
	circ_curve_area area;
	int64_t count = t->count;
	for (int j = 0; j < jb->n; j++) {
		f[j] = circ_eval_faithfulness(t->sum_c[j] / count, m0, mm);
		if (circ_eval_curve_write_point(w, jb->fraction[j], jb->n_edges[j], f[j],
						t->sum_c[j] / count, &e) < 0)
			circ_die(&e);
	}
	if (circ_eval_curve_areas(jb->fraction, f, jb->n, 0, &area, &e) < 0 ||
	    circ_eval_curve_write_summary(w, area.area_under, area.area_from_1, &e) < 0)
		circ_die(&e);
	fprintf(stderr,
		"%s: %lld examples, %s ranking: area under f %.4f, area "
		"between f and 1 %.4f\n",
		circ_progname, (long long)count, o.absolute ? "|score|" : "signed",
		pos_nan(area.area_under), pos_nan(area.area_from_1));
	free(f);
}

/* The one circuit's summary record and line. */
static void write_summary(circ_writer *w, const job *jb, const totals *t, double mm, double m0)
{
	circ_error e;
	msgpack_packer *pk = circ_writer_packer(w);
	int64_t count = t->count;
	double mcirc = t->sum_c[0] / count, f = circ_eval_faithfulness(mcirc, m0, mm);
	msgpack_pack_map(pk, 7);
	circ_pack_str(pk, "summary");
	msgpack_pack_true(pk);
	circ_pack_kv_i64(pk, "n", count);
	circ_pack_kv_i64(pk, "n_edges", jb->n_edges[0]);
	circ_pack_kv_f64(pk, "metric_model", mm);
	circ_pack_kv_f64(pk, "metric_empty", m0);
	circ_pack_kv_f64(pk, "metric_circuit", mcirc);
	circ_pack_kv_f64(pk, "faithfulness", f);
	if (circ_writer_end_record(w, &e) < 0)
		circ_die(&e);
	fprintf(stderr,
		"%s: %lld examples, %lld edges kept: m(model) %.4f, m(empty) %.4f, "
		"m(circuit) %.4f, faithfulness %.4f\n",
		circ_progname, (long long)count, (long long)jb->n_edges[0], pos_nan(mm),
		pos_nan(m0), pos_nan(mcirc), pos_nan(f));
}

/* After the loop: the means over the examples, then the curve or the
 * summary. */
static void finish(circ_session *s, const job *jb, const totals *t)
{
	double mm, m0;
	if (t->count == 0)
		circ_dief("%s: no examples", circ_reader_name(s->r));
	mm = t->sum_m / t->count, m0 = t->sum_0 / t->count;
	/* f = (m(circuit) - m(empty)) / (m(model) - m(empty)): undefined when the
	 * empty circuit does what the model does */
	if (mm == m0 && !o.pc.allow_nonfinite) {
		circ_writer_abort(s->w);
		circ_dief("%s: faithfulness is undefined: the model and the empty circuit "
			  "have the same mean metric (%.6g) (--allow-nonfinite writes nan)",
			  circ_reader_name(s->r), mm);
	}
	if (o.curve)
		write_curve(s->w, jb, t, mm, m0);
	else
		write_summary(s->w, jb, t, mm, m0);
}

/* ---- feature circuits (--dict): Marks et al.'s faithfulness and
 * completeness. The nodes outside the circuit (features, error nodes,
 * input) are mean-ablated, means over every position of the token stream's
 * clean prompts (lib/fcircuit: circ_fc_ablate); f(C) = (m(C) - m(empty)) /
 * (m(model) - m(empty)), completeness f of the complement (the circuit's
 * nodes ablated, the rest kept). --curve: circuits of the top-ranked nodes
 * of a feature scores stream, at fractions of every node; --circuit: the
 * node records of a feature circuit (circ-prune). */

static uint8_t **fkeep_new(const circ_fgraph *g, int val)
{
	uint8_t **k = circ_xcalloc((size_t)g->n, sizeof *k);
	for (int j = 0; j < g->n; j++) {
		k[j] = circ_xmalloc((size_t)circ_fgraph_slot_nodes(g, j));
		memset(k[j], val, (size_t)circ_fgraph_slot_nodes(g, j));
	}
	return k;
}

static void fkeep_free(const circ_fgraph *g, uint8_t **k)
{
	for (int j = 0; k && j < g->n; j++)
		free(k[j]);
	free(k);
}

typedef struct fnode {
	int k, i;
	double score;
} fnode;

static int cmp_fnode(const void *a, const void *b)
{
	double x = ((const fnode *)a)->score, y = ((const fnode *)b)->score;
	if (o.absolute)
		x = fabs(x), y = fabs(y);
	return (x < y) - (x > y);
}

/* The scorer's dictionaries must be the stream's: names, sizes and digests. */
static void fcheck_dicts(const circ_fc *fc, const circ_fgraph *g, const msgpack_object *hdr,
			 const char *name)
{
	const msgpack_object *ds = circ_rec_get(circ_rec_get(hdr, "graph"), "dictionaries");
	if (circ_fc_n_slots(fc) != g->n)
		circ_dief("%s: made with %d node sets, --dict gives %d", name, g->n,
			  circ_fc_n_slots(fc));
	for (int k = 0; k < g->n; k++) {
		const circ_fc_slot *s = circ_fc_slot_get(fc, k);
		char dg[72];
		if (strcmp(s->name, g->slot[k].name) || s->S != g->slot[k].S)
			circ_dief("%s: node set %d is %s (%d features), --dict gives %s (%d)", name,
				  k, g->slot[k].name, g->slot[k].S, s->name, s->S);
		if (!s->d)
			continue;
		circ_fc_dict_digest(s->d, dg);
		for (uint32_t j = 0; j < ds->via.array.size; j++) {
			const msgpack_object *d = &ds->via.array.ptr[j];
			if (circ_obj_str_eq(circ_rec_get(d, "name"), s->name) &&
			    !circ_obj_str_eq(circ_rec_get(d, "digest"), dg))
				circ_dief("%s: dictionary '%s' is not the one of --dict (digest "
					  "differs)",
					  name, s->name);
		}
	}
}

static int patch_features(circ_cli *cli, int argc, char **argv, const char *in)
{
	circ_session s = {0};
	circ_error e;
	const char *src = o.curve ? o.curve : o.circuit;
	circ_reader *r = circ_reader_open(src, o.curve ? "scores" : "circuit", &e), *inputs[2];
	const msgpack_object *hdr, *rec;
	circ_fgraph *g;
	circ_dict_set *set;
	circ_fc_opts fo;
	circ_fc *fc;
	circ_batch *b, **all = NULL;
	int nb = 0, k, npts;
	fnode *nodes;
	int64_t nn = 0;
	double fr[MAX_FRACTIONS], m_model = 0, m_empty = 0, *m_c, *m_cc;
	uint8_t **keep_c = NULL;
	if (!r)
		circ_die(&e);
	hdr = circ_reader_header(r);
	if (!(g = circ_fgraph_from_header(hdr, &e))) {
		circ_reader_fail(r, &e);
		circ_die(&e);
	}
	nodes = circ_xcalloc((size_t)g->n_nodes, sizeof *nodes);
	if (o.circuit)
		keep_c = fkeep_new(g, 0);
	while ((k = circ_reader_next(r, &rec, &e)) > 0) {
		const char *name;
		size_t nl;
		int sk = -1, si;
		if (!circ_rec_get(rec, "node"))
			continue;
		if (circ_rec_str(rec, "node", &name, &nl, &e) < 0 ||
		    circ_fgraph_node(g, name, nl, &sk, &si, &e) < 0 || sk == g->n) {
			if (sk == g->n)
				circ_errorf(&e, "node 'logits' has no activation to ablate");
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		if (o.circuit) {
			keep_c[sk][si] = 1;
			continue;
		}
		if (nn == g->n_nodes)
			circ_dief("%s: more node records than nodes", circ_reader_name(r));
		nodes[nn].k = sk;
		nodes[nn].i = si;
		if (circ_rec_f64(rec, "score", &nodes[nn].score, &e) < 0) {
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		nn++;
	}
	if (k < 0)
		circ_die(&e);
	if (o.curve && nn == 0)
		circ_dief("%s: no node records (scores made with --nodes-only or without?)",
			  circ_reader_name(r));
	qsort(nodes, (size_t)nn, sizeof *nodes, cmp_fnode);
	npts = o.circuit ? 1 : o.fractions ? parse_fractions(o.fractions, fr) : 10;
	if (o.curve && !o.fractions)
		memcpy(fr, default_fractions, sizeof default_fractions);

	circ_session_model(&s, &o.pc, 0);
	if (!(set = circ_dict_set_load(o.dict, &e)))
		circ_dief("--dict: %s", e.msg);
	circ_session_tokens(&s, in);
	circ_patch_cli_metric(&o.pc, s.r);
	circ_fc_opts_default(&fo);
	fo.threads = o.pc.threads;
	fo.metric = o.pc.metric;
	fo.edges = 0;
	fo.keep_positions = g->P > 0;
	if (!(fc = circ_fc_new(s.m, set, &fo, o.pc.batch, s.c->n_ctx, &e)))
		circ_dief("--dict: %s", e.msg);
	fcheck_dicts(fc, g, hdr, circ_reader_name(r));
	/* every batch twice: the means first */
	while (circ_session_next(&s, &b)) {
		all = circ_xrealloc(all, (size_t)(nb + 1) * sizeof *all);
		all[nb++] = circ_batch_clone(b);
		if (circ_fc_means_add(fc, b, &e) < 0)
			circ_session_die(&s, &e);
	}
	if (!nb)
		circ_dief("%s: no examples", circ_reader_name(s.r));
	if (circ_fc_positions(fc) != g->P)
		circ_dief("%s: a graph of %d positions, the examples have %d tokens",
			  circ_reader_name(r), g->P, circ_fc_positions(fc));
	m_c = circ_xcalloc((size_t)npts, sizeof *m_c);
	m_cc = circ_xcalloc((size_t)npts, sizeof *m_cc);
	{
		uint8_t **none = fkeep_new(g, 0), **kc = fkeep_new(g, 0), **kcc = fkeep_new(g, 1);
		int64_t nex = 0;
		for (int bi = 0; bi < nb; bi++) {
			double v;
			nex += all[bi]->B;
			if (circ_fc_ablate(fc, all[bi], NULL, &v, &e) < 0)
				circ_session_die(&s, &e);
			m_model += v;
			if (circ_fc_ablate(fc, all[bi], none, &v, &e) < 0)
				circ_session_die(&s, &e);
			m_empty += v;
			for (int p = 0; p < npts; p++) {
				int64_t take =
				    o.circuit ? 0 : (int64_t)floor(fr[p] * (double)g->n_nodes);
				for (int j = 0; j < g->n; j++) {
					memset(kc[j], 0, (size_t)circ_fgraph_slot_nodes(g, j));
					memset(kcc[j], 1, (size_t)circ_fgraph_slot_nodes(g, j));
					if (o.circuit)
						for (int i = 0; i < circ_fgraph_slot_nodes(g, j);
						     i++)
							kc[j][i] = keep_c[j][i],
							kcc[j][i] = !keep_c[j][i];
				}
				for (int64_t q = 0; q < take && q < nn; q++)
					kc[nodes[q].k][nodes[q].i] = 1,
					kcc[nodes[q].k][nodes[q].i] = 0;
				if (circ_fc_ablate(fc, all[bi], kc, &v, &e) < 0)
					circ_session_die(&s, &e);
				m_c[p] += v;
				if (circ_fc_ablate(fc, all[bi], kcc, &v, &e) < 0)
					circ_session_die(&s, &e);
				m_cc[p] += v;
			}
		}
		m_model /= (double)nex;
		m_empty /= (double)nex;
		for (int p = 0; p < npts; p++)
			m_c[p] /= (double)nex, m_cc[p] /= (double)nex;
		fkeep_free(g, none);
		fkeep_free(g, kc);
		fkeep_free(g, kcc);
	}
	circ_session_output(&s, cli);
	inputs[0] = r;
	inputs[1] = s.r;
	{
		circ_hdr_field f[] = {
		    CIRC_HDR(OBJ, "graph", circ_rec_get(hdr, "graph")),
		    CIRC_HDR(STR, "metric", circ_metric_name(o.pc.metric)),
		    CIRC_HDR(BOOL, "absolute", o.absolute),
		    CIRC_HDR(STR, "model_digest", s.model_digest),
		    CIRC_HDR(STR, "ablation", "mean"),
		    CIRC_HDR(F64, "metric_model", m_model),
		    CIRC_HDR(F64, "metric_empty", m_empty),
		};
		if (circ_writer_header_fields(s.w, "curve", argc, argv, inputs, 2, f, CIRC_HDR_N(f),
					      &e) < 0)
			circ_die(&e);
	}
	for (int p = 0; p < npts; p++) {
		msgpack_packer *pk = circ_writer_packer(s.w);
		double den = m_model - m_empty;
		int64_t n_in = 0;
		if (o.circuit)
			for (int j = 0; j < g->n; j++)
				for (int i = 0; i < circ_fgraph_slot_nodes(g, j); i++)
					n_in += keep_c[j][i];
		else
			n_in = (int64_t)floor(fr[p] * (double)g->n_nodes) < nn
				   ? (int64_t)floor(fr[p] * (double)g->n_nodes)
				   : nn;
		msgpack_pack_map(pk, 5);
		circ_pack_kv_f64(pk, "fraction",
				 o.circuit ? (double)n_in / (double)g->n_nodes : fr[p]);
		circ_pack_kv_i64(pk, "n_nodes", n_in);
		circ_pack_kv_f64(pk, "faithfulness", pos_nan((m_c[p] - m_empty) / den + 0.0));
		circ_pack_kv_f64(pk, "completeness", pos_nan((m_cc[p] - m_empty) / den + 0.0));
		circ_pack_kv_f64(pk, "metric", m_c[p]);
		if (circ_writer_end_record(s.w, &e) < 0) {
			circ_writer_abort(s.w);
			circ_die(&e);
		}
	}
	circ_session_finish(&s);
	for (int bi = 0; bi < nb; bi++)
		circ_batch_free(all[bi]);
	free(all);
	free(m_c);
	free(m_cc);
	free(nodes);
	fkeep_free(g, keep_c);
	circ_fc_free(fc);
	circ_dict_set_free(set);
	circ_fgraph_free(g);
	circ_reader_free(r);
	circ_session_free(&s);
	return 0;
}

int main(int argc, char **argv)
{
	circ_cli cli = {
	    "--model DIR (--circuit FILE | --edges FILE | --nodes LIST | --curve SCORES) "
	    "[options] [tokens]",
	    "Run the model with edges (or, with --dict, features) patched; report "
	    "faithfulness (f) per example and overall, or a faithfulness curve.",
	    opts, 1};
	circ_session s = {0};
	circ_graph *g;
	circ_reader *inputs[2];
	int ninputs = 0;
	circ_batch *b;
	const char *in;
	job jb = {0};
	totals t = {0};
	double *out;
	circ_scores *sc = NULL;
	circ_circuit *cc = NULL;

	circ_init("circ-patch");
	circ_patch_cli_init(&o.pc);
	in = check_options(argc, argv, circ_cli_parse(&cli, argc, argv, handle, NULL));
	if (o.dict) {
		const char *bad = circ_patch_cli_given(
		    &o.pc,
		    (const int[]){CIRC_PO_MODEL, CIRC_PO_METRIC, CIRC_PO_BATCH, CIRC_PO_THREADS,
				  CIRC_PO_ALLOW_NONFINITE, CIRC_PO_COMPUTE, 0});
		if (bad || o.edges || o.nodes)
			circ_usage_error(
			    "option '--%s' does not apply to feature circuits (--dict)",
			    bad	      ? bad
			    : o.edges ? "edges"
				      : "nodes");
		return patch_features(&cli, argc, argv, in);
	}
	circ_session_model(&s, &o.pc, 0);
	g = patch_graph(&s, inputs, &ninputs, &cc, &sc);
	circ_session_tokens(&s, in);
	inputs[ninputs++] = s.r;
	circ_patch_cli_metric(&o.pc, s.r);
	circ_session_patcher(&s, g, 0);
	make_jobs(&jb, g, s.p, cc, sc);
	circ_session_means(&s);
	circ_session_output(&s, &cli);
	write_header(&s, argc, argv, inputs, ninputs, g, &jb);

	t.sum_c = circ_xcalloc((size_t)jb.n, sizeof(double));
	out = circ_xmalloc((size_t)o.pc.batch * sizeof *out);
	while (circ_session_next(&s, &b)) {
		circ_session_load(&s, b, 0);
		run_batch(&s, b, &jb, out, &t);
	}
	finish(&s, &jb, &t);
	circ_session_finish(&s);
	job_free(&jb);
	free(t.sum_c);
	free(out);
	for (int j = 0; j < ninputs - 1; j++) /* the last is the session's */
		circ_reader_free(inputs[j]);
	circ_session_free(&s);
	if (cc)
		circ_circuit_free(cc);
	else if (sc)
		circ_scores_free(sc);
	else
		circ_graph_free(g);
	return 0;
}
