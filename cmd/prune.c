/*
 * circ-prune: turns a scores stream into a circuit stream. One selection
 * mode (--top-n, --threshold, --greedy) picks edges by score, as EAP-IG's
 * apply_topn / apply_threshold / apply_greedy do; then every edge that does
 * not lie on a path input -> ... -> logits is dropped, always. With --truth
 * the circuit and the scores are also evaluated against a ground-truth edge
 * list (ROC AUC of the scores, MIB-style AUROC, TPR/FPR of the circuit); the
 * numbers go into the circuit header ("eval") and, with --report, into a
 * JSON file.
 *
 * ACDC (--acdc) is a mode of its own that drives patching instead of reading
 * scores, in circ's order or the reference implementation's (--acdc-order);
 * run_acdc below is the hook where it plugs in. --cd-t N is CD-T's
 * iterative construction over (cd-t) scores (lib/cdt's circ_cdt_select).
 * Edge Pruning (--edge-pruning, run_edge_pruning) trains edge masks.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acdc.h"
#include "cdt.h"
#include "circuit.h"
#include "edgeprune.h"
#include "eval.h"
#include "fcircuit.h"
#include "cli/patchopt.h"
#include "cli/progress.h"
#include "cli/session.h"

enum {
	OPT_TOP_N = CIRC_OPT_FIRST_TOOL,
	OPT_THRESHOLD,
	OPT_GREEDY,
	OPT_ACDC,
	OPT_SIGNED,
	OPT_TRUTH,
	OPT_REPORT,
	OPT_TAU,
	OPT_ABS_CHANGE,
	OPT_LOG,
	OPT_GROUP,
	OPT_SCREEN,
	OPT_SCREEN_METHOD,
	OPT_PARTIAL,
	OPT_ACDC_ORDER,
	OPT_ACDC_INDICES,
	OPT_ACDC_NAMES,
	OPT_CDT,
	/* edge pruning */
	OPT_EDGE_PRUNING,
	OPT_SPARSITY,
	OPT_TARGET_EDGES,
	OPT_STEPS,
	OPT_WARMUP,
	OPT_LR,
	OPT_LR_LAMBDA,
	OPT_INIT,
	OPT_NODE_SPARSITY,
	OPT_SEED,
	OPT_NODE_THRESHOLD, /* feature graphs */
};

static const circ_opt opts[] = {
    {"top-n", OPT_TOP_N, "N", "keep the N best edges (N may be a percentage: 5%)"},
    {"threshold", OPT_THRESHOLD, "T", "keep the edges whose |score| is at least T"},
    {"greedy", OPT_GREEDY, "N", "grow N edges greedily from logits (N may be a percentage)"},
    {"acdc", OPT_ACDC, NULL, "ACDC: patch edges one by one (input: a token stream; needs --model)"},
    {"cd-t", OPT_CDT, "N",
     "CD-T's construction: from logits backwards, add the N sources most relevant to the "
     "current targets each round"},
    {"signed", OPT_SIGNED, NULL, "rank by the signed score instead of |score|"},
    {"node-threshold", OPT_NODE_THRESHOLD, "X",
     "feature graphs: keep the nodes whose |score| is at least X, and edges between them "
     "(--threshold is then the edge threshold)"},
    {"partial", OPT_PARTIAL, NULL, "accept scores that leave edges out (those are never selected)"},
    {"truth", OPT_TRUTH, "FILE", "evaluate against a ground-truth circuit or edge list"},
    {"report", OPT_REPORT, "FILE", "with --truth: also write the evaluation as JSON to FILE"},
    {"tau", OPT_TAU, "T",
     "acdc: keep an edge when patching it raises the loss by tau or more (default 0.01)"},
    {"abs-change", OPT_ABS_CHANGE, NULL, "acdc: compare |change| with tau"},
    {"log", OPT_LOG, "FILE",
     "acdc: write every decision to FILE (a decisions stream); edge-pruning: the training curve"},
    {"group", OPT_GROUP, "G",
     "acdc, an approximation: test G edges at once, split groups at or above tau (default 1: "
     "exact)"},
    {"screen", OPT_SCREEN, "F",
     "acdc, an approximation: drop the edges whose |attribution| is below F*tau untested, "
     "then test the others (default: off, exact)"},
    {"screen-method", OPT_SCREEN_METHOD, "M",
     "acdc --screen: the attribution, eap-ig (default, 5 steps) or eap"},
    {"acdc-order", OPT_ACDC_ORDER, "O",
     "acdc: the order of the tests: circ (default) or reference (ArthurConmy/"
     "Automatic-Circuit-Discovery's)"},
    {"acdc-indices", OPT_ACDC_INDICES, "M",
     "acdc reference order: its --indices-mode, normal (default) or reverse"},
    {"acdc-names", OPT_ACDC_NAMES, "M",
     "acdc reference order: its --names-mode, normal (default) or reverse"},
    {"edge-pruning", OPT_EDGE_PRUNING, NULL,
     "Edge Pruning: train hard-concrete edge masks (input: a token stream; needs --model)"},
    {"sparsity", OPT_SPARSITY, "S", "edge-pruning: target sparsity in [0, 1)"},
    {"target-edges", OPT_TARGET_EDGES, "N", "edge-pruning: target edge count (sparsity 1 - N/E)"},
    {"steps", OPT_STEPS, "N", "edge-pruning: training steps (default 1000)"},
    {"warmup", OPT_WARMUP, "N",
     "edge-pruning: steps over which the target rises from 0 (default steps/2)"},
    {"lr", OPT_LR, "X", "edge-pruning: Adam step of the masks' log_alpha (default 0.1)"},
    {"lr-lambda", OPT_LR_LAMBDA, "X",
     "edge-pruning: Adam step of the Lagrange multipliers (default 0.1)"},
    {"init", OPT_INIT, "X", "edge-pruning: initial log_alpha (default 3)"},
    {"node-sparsity", OPT_NODE_SPARSITY, "S",
     "edge-pruning: also a mask per node, trained to sparsity S in [0, 1)"},
    {"seed", OPT_SEED, "N", "edge-pruning: seed of the masks' noise (default 1)"},
    CIRC_PATCH_OPT_MODEL,
    CIRC_PATCH_OPT_COMMON,
    {0},
};

typedef enum {
	MODE_NONE,
	MODE_TOP_N,
	MODE_THRESHOLD,
	MODE_GREEDY,
	MODE_ACDC,
	MODE_CDT,
	MODE_EDGE_PRUNING
} mode_t_;

static const char *const mode_names[] = {"",	 "top-n", "threshold",	 "greedy",
					 "acdc", "cd-t",  "edge-pruning"};

static struct {
	mode_t_ mode;
	const char *size; /* --top-n / --greedy argument, parsed once E is known */
	double threshold;
	int signed_, partial;
	const char *truth, *report;
	double node_threshold; /* feature graphs; < 0: not given */
	/* acdc */
	circ_patch_cli pc;
	const char *log;
	double tau;
	int tau_set, abs_change;
	int group;		   /* --group, 0 when not given */
	double screen;		   /* --screen F, 0 when not given */
	circ_attr_method screen_m; /* --screen-method */
	int screen_m_set;
	int acdc_opt; /* a patching option was given */
	/* acdc order: --acdc-order, --acdc-indices, --acdc-names */
	circ_acdc_order order;
	int indices_reverse, names_reverse;
	const char *order_opt; /* the last of the three given, for usage errors */
	const char *mode_opt;  /* the last of --acdc-indices and --acdc-names given */
	/* edge pruning */
	circ_ep_opts ep;
	const char *ep_opt; /* the first edge-pruning option given, or NULL */
	int sparsity_set, warmup_set;
	int64_t target_edges; /* -1: not given */
} o = {.tau = 0.01, .target_edges = -1, .node_threshold = -1, .screen_m = CIRC_ATTR_EAP_IG};

/* "normal" or "reverse" for --acdc-indices and --acdc-names. */
static int normal_reverse(const char *opt, const char *arg)
{
	if (!strcmp(arg, "normal") || !strcmp(arg, "reverse"))
		return !strcmp(arg, "reverse");
	circ_usage_error("option '--%s': '%s' is neither normal nor reverse", opt, arg);
	return 0;
}

static void set_mode(mode_t_ m)
{
	if (o.mode != MODE_NONE && o.mode != m)
		circ_usage_error("--%s and --%s exclude each other", mode_names[o.mode],
				 mode_names[m]);
	o.mode = m;
}

/* Edge pruning's own options: 0 if key is one of them. */
static int handle_ep(int key, const char *arg)
{
	static const char *const names[] = {"sparsity", "target-edges", "steps", "warmup",
					    "lr",	"lr-lambda",	"init",	 "node-sparsity",
					    "seed"};
	if (key < OPT_SPARSITY || key > OPT_SEED)
		return -1;
	if (!o.ep_opt)
		o.ep_opt = names[key - OPT_SPARSITY];
	switch (key) {
	case OPT_SPARSITY:
		o.ep.sparsity = circ_opt_f64_in("sparsity", arg, 0, 0, 1, 1);
		o.sparsity_set = 1;
		break;
	case OPT_TARGET_EDGES:
		o.target_edges = circ_opt_i64("target-edges", arg, 0, INT32_MAX);
		break;
	case OPT_STEPS: o.ep.steps = (int)circ_opt_i64("steps", arg, 0, 1 << 24); break;
	case OPT_WARMUP:
		o.ep.warmup = (int)circ_opt_i64("warmup", arg, 0, 1 << 24);
		o.warmup_set = 1;
		break;
	case OPT_LR: o.ep.lr = circ_opt_f64_in("lr", arg, 0, 1, 1e6, 0); break;
	case OPT_LR_LAMBDA: o.ep.lr_lambda = circ_opt_f64_in("lr-lambda", arg, 0, 0, 1e6, 0); break;
	case OPT_INIT: o.ep.init = circ_opt_f64_in("init", arg, -100, 0, 100, 0); break;
	case OPT_NODE_SPARSITY:
		o.ep.node_sparsity = circ_opt_f64_in("node-sparsity", arg, 0, 0, 1, 1);
		o.ep.node_masks = 1;
		break;
	case OPT_SEED: o.ep.seed = (uint64_t)circ_opt_i64("seed", arg, 0, INT64_MAX); break;
	}
	return 0;
}

static int handle(int key, const char *arg, void *ctx)
{
	(void)ctx;
	switch (key) {
	case OPT_TOP_N:
		set_mode(MODE_TOP_N);
		o.size = arg;
		return 0;
	case OPT_GREEDY:
		set_mode(MODE_GREEDY);
		o.size = arg;
		return 0;
	case OPT_THRESHOLD:
		set_mode(MODE_THRESHOLD);
		o.threshold = circ_opt_f64("threshold", arg);
		if (!isfinite(o.threshold))
			circ_usage_error("option '--threshold': '%s' is not finite", arg);
		return 0;
	case OPT_ACDC: set_mode(MODE_ACDC); return 0;
	case OPT_CDT:
		set_mode(MODE_CDT);
		o.size = arg;
		circ_opt_i64("cd-t", arg, 1, 1 << 20);
		return 0;
	case OPT_SIGNED: o.signed_ = 1; return 0;
	case OPT_PARTIAL: o.partial = 1; return 0;
	case OPT_TRUTH: o.truth = arg; return 0;
	case OPT_NODE_THRESHOLD:
		o.node_threshold = circ_opt_f64_in("node-threshold", arg, 0, 0, 1e300, 0);
		return 0;
	case OPT_REPORT: o.report = arg; return 0;
	case OPT_TAU:
		o.tau = circ_opt_f64("tau", arg);
		if (!isfinite(o.tau))
			circ_usage_error("option '--tau': '%s' is not finite", arg);
		if (o.tau < 0)
			circ_usage_error("option '--tau': '%s' is negative (an edge is kept when "
					 "patching it raises the loss by tau or more)",
					 arg);
		o.tau_set = 1;
		return 0;
	case OPT_ABS_CHANGE: o.abs_change = 1; return 0;
	case OPT_LOG: o.log = arg; return 0;
	case OPT_GROUP: o.group = (int)circ_opt_i64("group", arg, 1, 1 << 20); return 0;
	case OPT_SCREEN:
		o.screen = circ_opt_f64("screen", arg);
		if (!(o.screen > 0) || !isfinite(o.screen))
			circ_usage_error("option '--screen': '%s' is not a positive number (edges "
					 "whose |attribution| is below F*tau are screened)",
					 arg);
		return 0;
	case OPT_SCREEN_METHOD:
		if (circ_attr_parse(arg, &o.screen_m) < 0 ||
		    (o.screen_m != CIRC_ATTR_EAP && o.screen_m != CIRC_ATTR_EAP_IG))
			circ_usage_error("option '--screen-method': '%s' is neither eap-ig nor eap",
					 arg);
		o.screen_m_set = 1;
		return 0;
	case OPT_ACDC_ORDER:
		if (circ_acdc_order_parse(arg, &o.order) < 0)
			circ_usage_error(
			    "option '--acdc-order': '%s' is neither circ nor reference", arg);
		o.order_opt = "acdc-order";
		return 0;
	case OPT_ACDC_INDICES:
		o.indices_reverse = normal_reverse("acdc-indices", arg);
		o.order_opt = o.mode_opt = "acdc-indices";
		return 0;
	case OPT_ACDC_NAMES:
		o.names_reverse = normal_reverse("acdc-names", arg);
		o.order_opt = o.mode_opt = "acdc-names";
		return 0;
	case OPT_EDGE_PRUNING: set_mode(MODE_EDGE_PRUNING); return 0;
	}
	if (handle_ep(key, arg) == 0)
		return 0;
	if (circ_patch_cli_handle(&o.pc, key, arg) == 0) {
		o.acdc_opt = 1;
		return 0;
	}
	return -1;
}

/* "N" or "P%" (P in 0..100, n = floor(P/100 * E) as MIB sizes its circuits).
 * n_edges < 0: only checks the argument (before the scores are read). */
static int64_t parse_size(const char *opt, const char *arg, int64_t n_edges)
{
	size_t len = strlen(arg);
	if (len > 1 && arg[len - 1] == '%') {
		char buf[64];
		double p;
		if (len >= sizeof buf)
			circ_usage_error("option '--%s': '%s' is not a size", opt, arg);
		memcpy(buf, arg, len - 1);
		buf[len - 1] = 0;
		if (circ_parse_f64(buf, &p) < 0 || !(p >= 0 && p <= 100))
			circ_usage_error("option '--%s': '%s' is not a percentage in 0..100%%", opt,
					 arg);
		return n_edges < 0 ? 0 : circ_eval_curve_n_edges(p / 100, n_edges);
	}
	return circ_opt_i64(opt, arg, 0, INT64_MAX);
}

typedef struct evaluation {
	circ_confusion conf;
	double auc, mib_auroc, mib_fpr[CIRC_MIB_NFRAC], mib_tpr[CIRC_MIB_NFRAC];
	int64_t n_truth;
} evaluation;

static void evaluate(const circ_scores *s, const char *name, const uint8_t *keep,
		     const uint8_t *truth, evaluation *ev)
{
	circ_error e;
	int64_t E = s->g->n_edges;
	double *key = circ_xmalloc((size_t)E * sizeof *key);
	for (int64_t i = 0; i < E; i++)
		key[i] = circ_rank_key(s->score[i], o.signed_);
	ev->n_truth = circ_count_kept(s->g, truth);
	if (circ_eval_roc_auc(key, truth, E, &ev->auc, &e) < 0 ||
	    circ_eval_mib_auroc(s->g, s->score, o.signed_, truth, &ev->mib_auroc, ev->mib_fpr,
				ev->mib_tpr, &e) < 0) {
		circ_error_prefix(&e, "%s: evaluating against '%s'", name, o.truth);
		circ_die(&e);
	}
	circ_eval_confusion(keep, truth, E, &ev->conf);
	free(key);
}

static void pack_f64_or_nil(msgpack_packer *pk, const char *k, double v)
{
	circ_pack_str(pk, k);
	if (isnan(v))
		msgpack_pack_nil(pk);
	else
		msgpack_pack_double(pk, v);
}

typedef struct eval_field {
	const evaluation *ev;
	const char *truth_digest;
} eval_field;

/* The header field "eval" (a circ_hdr_pack_fn over an eval_field). */
static void pack_eval(msgpack_packer *pk, const void *ctx)
{
	const evaluation *ev = ((const eval_field *)ctx)->ev;
	const char *truth_digest = ((const eval_field *)ctx)->truth_digest;
	msgpack_pack_map(pk, 13);
	circ_pack_kv_str(pk, "truth", truth_digest);
	circ_pack_kv_i64(pk, "n_truth", ev->n_truth);
	pack_f64_or_nil(pk, "auc", ev->auc);
	pack_f64_or_nil(pk, "mib_auroc", ev->mib_auroc);
	pack_f64_or_nil(pk, "tpr", ev->conf.tpr);
	pack_f64_or_nil(pk, "fpr", ev->conf.fpr);
	pack_f64_or_nil(pk, "precision", ev->conf.precision);
	circ_pack_kv_i64(pk, "tp", ev->conf.tp);
	circ_pack_kv_i64(pk, "fp", ev->conf.fp);
	circ_pack_kv_i64(pk, "fn", ev->conf.fn);
	circ_pack_kv_i64(pk, "tn", ev->conf.tn);
	circ_pack_str(pk, "mib_fpr");
	msgpack_pack_array(pk, CIRC_MIB_NFRAC);
	for (int k = 0; k < CIRC_MIB_NFRAC; k++)
		msgpack_pack_double(pk, ev->mib_fpr[k]);
	circ_pack_str(pk, "mib_tpr");
	msgpack_pack_array(pk, CIRC_MIB_NFRAC);
	for (int k = 0; k < CIRC_MIB_NFRAC; k++)
		msgpack_pack_double(pk, ev->mib_tpr[k]);
}

static void json_num(FILE *f, double v)
{
	if (isnan(v))
		fputs("null", f);
	else
		fprintf(f, "%.17g", v);
}

/* The report: one JSON object, written to a temporary and renamed. */
static void write_report(const evaluation *ev, int64_t n_kept)
{
	circ_atomic out;
	circ_error e;
	FILE *f;
	if (circ_atomic_open(&out, o.report, &e) < 0 || !(f = circ_atomic_file(&out, &e)))
		circ_die(&e);
	fprintf(f, "{\"n_edges\":%lld,\"n_truth\":%lld,\"auc\":", (long long)n_kept,
		(long long)ev->n_truth);
	json_num(f, ev->auc);
	fputs(",\"mib_auroc\":", f);
	json_num(f, ev->mib_auroc);
	fputs(",\"tpr\":", f);
	json_num(f, ev->conf.tpr);
	fputs(",\"fpr\":", f);
	json_num(f, ev->conf.fpr);
	fputs(",\"precision\":", f);
	json_num(f, ev->conf.precision);
	fprintf(f, ",\"tp\":%lld,\"fp\":%lld,\"fn\":%lld,\"tn\":%lld", (long long)ev->conf.tp,
		(long long)ev->conf.fp, (long long)ev->conf.fn, (long long)ev->conf.tn);
	fputs(",\"mib_fraction\":[", f);
	for (int k = 0; k < CIRC_MIB_NFRAC; k++) {
		fputs(k ? "," : "", f);
		json_num(f, circ_mib_fractions[k]);
	}
	fputs("],\"mib_fpr\":[", f);
	for (int k = 0; k < CIRC_MIB_NFRAC; k++) {
		fputs(k ? "," : "", f);
		json_num(f, ev->mib_fpr[k]);
	}
	fputs("],\"mib_tpr\":[", f);
	for (int k = 0; k < CIRC_MIB_NFRAC; k++) {
		fputs(k ? "," : "", f);
		json_num(f, ev->mib_tpr[k]);
	}
	fputs("]}\n", f);
	if (circ_atomic_commit(&out, &e) < 0)
		circ_die(&e);
}

/* The digest of --truth (read by tr): a headerless edge list has only a
 * generic header, so it is named by its bytes, which only a regular file
 * can give twice (a pipe or FIFO, read once, is named by its header's
 * digest, as stdin is). */
static void truth_file_digest(const circ_reader *tr, char out[72])
{
	circ_error e;
	struct stat tst;
	int again = strcmp(o.truth, "-") && stat(o.truth, &tst) == 0 && S_ISREG(tst.st_mode);
	if (again && circ_sha256_file(o.truth, out, &e) < 0)
		circ_die(&e);
	if (!again)
		snprintf(out, 72, "%s", circ_reader_header_digest(tr));
}

/* Evaluates keep against --truth (if given) and writes the circuit stream
 * (and --report). s supplies the graph, the scores ranking the edges for the
 * AUC, and the model digest; r is the input recorded in the header. */
static void write_circuit(circ_cli *cli, int argc, char **argv, circ_reader *r,
			  const circ_scores *s, const uint8_t *keep,
			  const circ_circuit_source *srcp)
{
	circ_error e;
	const circ_graph *g = s->g;
	circ_circuit_source src = *srcp;
	circ_reader *tr = NULL;
	evaluation ev;
	char truth_digest[72] = "";
	if (o.truth) {
		tr = circ_reader_open(o.truth, NULL, &e);
		if (!tr)
			circ_die(&e);
		circ_circuit *t = circ_circuit_read(tr, g, &e);
		if (!t)
			circ_die(&e);
		if (t->model_digest && s->model_digest && strcmp(t->model_digest, s->model_digest))
			circ_dief("'%s': the truth comes from another model than %s "
				  "(model_digest differs)",
				  o.truth, circ_reader_name(r));
		evaluate(s, circ_reader_name(r), keep, t->keep, &ev);
		truth_file_digest(tr, truth_digest);
		circ_circuit_free(t);
	}

	circ_writer *w = circ_writer_open(cli->output, &cli->wopts, &e);
	if (!w)
		circ_die(&e);
	circ_reader *inputs[2] = {r, tr};
	eval_field ef = {&ev, truth_digest};
	circ_hdr_field extra[] = {CIRC_HDR_FN("eval", pack_eval, &ef)};
	if (circ_circuit_write_header(w, argc, argv, inputs, tr ? 2 : 1, g, &src, s->model_digest,
				      extra, tr ? 1 : 0, &e) < 0 ||
	    circ_circuit_write_edges(w, g, keep, s->score, &e) < 0) {
		circ_writer_abort(w);
		circ_die(&e);
	}
	if (circ_writer_close(w, &e) < 0) /* frees w either way */
		circ_die(&e);
	if (o.report)
		write_report(&ev, circ_count_kept(g, keep));
	circ_reader_free(tr);
}

/* ACDC: reads a token stream, drives patching with incremental
 * recomputation, and writes the circuit (scores: each tested edge's change
 * of the loss, which ranks the edges for --truth) and, with --log, every
 * decision as a "decisions" stream. */
typedef struct acdc_log {
	circ_writer *w;
	const circ_graph *g;
	double *change;	    /* (E) NaN for edges never tested */
	int64_t decided;    /* edges decided by a test */
	int groups;	    /* 1: --group was given, each record names its group's size */
	const double *attr; /* --screen: each edge's attribution (E), or NULL */
	int64_t screened;   /* edges below the screen's bound */
} acdc_log;

/* One record per test: {"edge", before, after, change, kept} (plus "group"
 * with --group or --screen, and with --screen "screened" and "attribution"), or for a whole-input
 * test of the reference order
 * {"receiver", ..., "edges"}, whose receiver's edges, when dropped, score
 * the test's change. */
static int log_step(void *ctx, const circ_acdc_step *st, circ_error *e)
{
	acdc_log *lg = ctx;
	const circ_graph *g = lg->g;
	char name[CIRC_NAME_MAX];
	int whole = st->recv >= 0, extra = whole || lg->groups;
	if (!whole) {
		lg->change[st->edge] = st->after - st->before;
		lg->decided++;
		lg->screened += st->screened;
	} else if (!st->kept) {
		for (int64_t ed = g->recv_first[st->recv]; ed < g->recv_first[st->recv + 1]; ed++)
			lg->change[ed] = st->after - st->before;
	}
	if (!lg->w)
		return 0;
	msgpack_packer *pk = circ_writer_packer(lg->w);
	if (whole)
		circ_graph_recv_name(g, st->recv, name, sizeof name);
	else
		circ_graph_edge_name(g, st->edge, name, sizeof name);
	msgpack_pack_map(pk, 5 + extra + (lg->attr ? 2 : 0));
	circ_pack_kv_str(pk, whole ? "receiver" : "edge", name);
	circ_pack_kv_f64(pk, "before", st->before);
	circ_pack_kv_f64(pk, "after", st->after);
	circ_pack_kv_f64(pk, "change", st->after - st->before);
	circ_pack_str(pk, "kept");
	if (st->kept)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	if (extra)
		circ_pack_kv_i64(pk, whole ? "edges" : "group", st->group);
	if (lg->attr) {
		circ_pack_str(pk, "screened");
		if (st->screened)
			msgpack_pack_true(pk);
		else
			msgpack_pack_false(pk);
		circ_pack_kv_f64(pk, "attribution", lg->attr[st->edge]);
	}
	return circ_writer_end_record(lg->w, e);
}

/* One patcher per batch of s's token stream (every edge test runs the whole
 * dataset), each over its own copy of the batch and with the means of s's
 * patcher (mean ablation), which is then freed; *n gets the count. */
static circ_patcher **acdc_patchers(circ_session *s, circ_patch_opts *po, int *n)
{
	circ_error e;
	circ_patcher **ps = NULL;
	circ_batch *b;
	circ_session_batches(s, o.pc.metric, o.pc.batch, 0);
	while (circ_session_next(s, &b)) {
		/* the batcher reuses its batch: each patcher keeps a copy */
		circ_batch *copy = circ_batch_clone(b);
		circ_patcher *p;
		po->max_b = copy->B;
		po->max_t = copy->T;
		p = circ_patcher_new(s->m, s->g, po, &e);
		if (!p)
			circ_die(&e);
		if (s->p && circ_patcher_mean_copy(p, s->p, &e) < 0)
			circ_die(&e);
		if (circ_patcher_load(p, copy, &e) < 0)
			circ_session_die(s, &e);
		ps = circ_xrealloc(ps, (size_t)(*n + 1) * sizeof *ps);
		ps[(*n)++] = p;
	}
	if (*n == 0)
		circ_dief("%s: no examples", circ_reader_name(s->r));
	circ_patcher_free(s->p); /* the means are copied: free its activations now */
	s->p = NULL;
	return ps;
}

/* --screen: each edge's attribution to ACDC's loss (kl, or -metric), the
 * mean over the examples of the n patchers' batches, by --screen-method on
 * a patcher of its own (freed before the tests). */
static double *screen_attr(circ_session *s, circ_patcher **ps, int n)
{
	circ_error e;
	circ_patch_opts po;
	circ_patcher *p;
	circ_attrib *a;
	const double *sums;
	double *attr, sign = circ_metric_higher_better(o.pc.metric) ? -1 : 1, t0 = circ_now();
	circ_patch_cli_opts(&o.pc, s->m, 1, &po);
	circ_attrib_patch_opts(o.screen_m, &po);
	po.max_b = po.max_t = 1;
	for (int i = 0; i < n; i++) {
		const circ_batch *b = circ_patcher_batch(ps[i]);
		po.max_b = b->B > po.max_b ? b->B : po.max_b;
		po.max_t = b->T > po.max_t ? b->T : po.max_t;
	}
	p = circ_patcher_new(s->m, s->g, &po, &e);
	if (!p || (o.pc.ablation == CIRC_ABL_MEAN && circ_patcher_mean_copy(p, ps[0], &e) < 0))
		circ_die(&e);
	a = circ_attrib_new(p, o.screen_m, 5);
	for (int i = 0; i < n; i++)
		if (circ_patcher_load(p, circ_patcher_batch(ps[i]), &e) < 0 ||
		    circ_attrib_batch(a, NULL, &e) < 0)
			circ_session_die(s, &e);
	sums = circ_attrib_sums(a);
	attr = circ_xmalloc((size_t)s->g->n_edges * sizeof *attr);
	for (int64_t ed = 0; ed < s->g->n_edges; ed++)
		attr[ed] = sign * sums[ed] / (double)circ_attrib_count(a);
	fprintf(stderr, "%s: acdc: screen: %s attribution of %lld edges in %.2fs\n", circ_progname,
		circ_attr_name(o.screen_m), (long long)s->g->n_edges, circ_now() - t0);
	circ_attrib_free(a);
	circ_patcher_free(p);
	return attr;
}

/* --log: the decisions stream, opened with its header (lg->w). */
static void open_log(const circ_cli *cli, int argc, char **argv, circ_session *s, acdc_log *lg)
{
	circ_error e;
	circ_writer_opts lo = cli->wopts;
	circ_hdr_field f[] = {
	    CIRC_HDR_GRAPH(s->g),
	    CIRC_HDR(STR, "metric", circ_metric_name(o.pc.metric)),
	    CIRC_HDR(F64, "tau", o.tau),
	    CIRC_HDR(STR, "ablation", circ_ablation_name(o.pc.ablation)),
	    CIRC_HDR(STR, "model_digest", s->model_digest),
	    CIRC_HDR_IF(o.group > 0, I64, "group", o.group),
	    CIRC_HDR_IF(o.screen > 0, F64, "screen", o.screen),
	    CIRC_HDR_IF(o.screen > 0, STR, "screen_method", circ_attr_name(o.screen_m)),
	    CIRC_HDR_IF(o.order == CIRC_ACDC_ORDER_REFERENCE, STR, "order",
			circ_acdc_order_name(o.order)),
	    CIRC_HDR_IF(o.order == CIRC_ACDC_ORDER_REFERENCE, STR, "indices_mode",
			o.indices_reverse ? "reverse" : "normal"),
	    CIRC_HDR_IF(o.order == CIRC_ACDC_ORDER_REFERENCE, STR, "names_mode",
			o.names_reverse ? "reverse" : "normal"),
	};
	lg->w = circ_writer_open(o.log, &lo, &e);
	if (!lg->w)
		circ_die(&e);
	if (circ_writer_header_fields(lg->w, "decisions", argc, argv, &s->r, 1, f, CIRC_HDR_N(f),
				      &e) < 0)
		circ_die(&e);
}

/* ACDC over the n patchers ps into keep, with the edge tests' progress and
 * a line on stderr at the end. */
static void acdc(circ_session *s, circ_patcher **ps, int n, acdc_log *lg, uint8_t *keep)
{
	circ_error e;
	circ_acdc_opts ao = {.tau = o.tau,
			     .abs_change = o.abs_change,
			     .group = o.group,
			     .screen_attr = lg->attr,
			     .screen = o.screen,
			     .order = o.order,
			     .indices_reverse = o.indices_reverse,
			     .names_reverse = o.names_reverse};
	circ_progress pr;
	int64_t tests;
	double t0, dt;
	char unreach[96] = "";
	circ_cli_progress(&pr, "edge tests", s->g->n_edges);
	t0 = circ_now();
	if (circ_acdc_run(ps, n, &ao, keep, log_step, lg, &tests, &pr, &e) < 0) {
		circ_writer_abort(lg->w);
		circ_error_prefix(&e, "%s", circ_reader_name(s->r));
		circ_die(&e);
	}
	circ_progress_end(&pr);
	dt = circ_now() - t0;
	/* circ's order logs every edge it decides; the rest went with a
	 * receiver whose node no longer reaches the logits (ACDC's rule: its
	 * inputs cannot matter), untested */
	if (ao.order != CIRC_ACDC_ORDER_REFERENCE)
		snprintf(unreach, sizeof unreach,
			 ", %lld edges dropped untested with a receiver left unreachable",
			 (long long)(s->g->n_edges - lg->decided));
	if (o.screen)
		fprintf(stderr,
			"%s: acdc: %lld edges decided by %lld tests in %.2fs (%.1f edges/s), "
			"%lld edges below the screen (%g*tau), %lld edges kept%s\n",
			circ_progname, (long long)lg->decided, (long long)tests, dt,
			dt > 0 ? (double)lg->decided / dt : 0.0, (long long)lg->screened, o.screen,
			(long long)circ_count_kept(s->g, keep), unreach);
	else if (o.group)
		fprintf(stderr,
			"%s: acdc: %lld edges decided by %lld group tests of up to %d in %.2fs "
			"(%.1f edges/s), %lld edges kept%s\n",
			circ_progname, (long long)lg->decided, (long long)tests, o.group, dt,
			dt > 0 ? (double)lg->decided / dt : 0.0,
			(long long)circ_count_kept(s->g, keep), unreach);
	else
		fprintf(stderr,
			"%s: acdc: %lld edge tests in %.2fs (%.1f edges/s), %lld edges kept%s\n",
			circ_progname, (long long)tests, dt, dt > 0 ? (double)tests / dt : 0.0,
			(long long)circ_count_kept(s->g, keep), unreach);
}

/* The circuit stream of ACDC's selection, its scores the logged changes. */
static void write_acdc_circuit(circ_cli *cli, int argc, char **argv, circ_session *s,
			       const acdc_log *lg, const uint8_t *keep)
{
	circ_scores sc = {0};
	circ_circuit_source src;
	sc.g = s->g;
	sc.score = lg->change;
	sc.model_digest = (char *)s->model_digest;
	sc.method = "acdc";
	sc.metric = (char *)circ_metric_name(o.pc.metric);
	circ_circuit_source_init(&src);
	src.method = "acdc";
	src.mode = "acdc";
	src.tau = o.tau;
	src.metric = circ_metric_name(o.pc.metric);
	write_circuit(cli, argc, argv, s->r, &sc, keep, &src);
}

static int run_acdc(circ_cli *cli, int argc, char **argv, const char *input)
{
	circ_session s = {0};
	circ_error e;
	circ_patcher **ps;
	circ_patch_opts po;
	acdc_log lg = {0};
	uint8_t *keep;
	int n = 0;

	if (!o.pc.model)
		circ_usage_error("--acdc needs --model DIR");
	if (o.signed_ || o.size)
		circ_usage_error("--signed and sizes do not apply to --acdc");
	if (o.mode_opt && o.order != CIRC_ACDC_ORDER_REFERENCE)
		circ_usage_error("option '--%s' goes with --acdc-order reference", o.mode_opt);
	if (o.order == CIRC_ACDC_ORDER_REFERENCE && o.group > 1)
		circ_usage_error("--acdc-order reference tests edges one by one: no --group");
	if (o.order == CIRC_ACDC_ORDER_REFERENCE && o.screen)
		circ_usage_error("--acdc-order reference tests every edge: no --screen");
	if (o.screen_m_set && !o.screen)
		circ_usage_error("option '--screen-method' goes with --screen F");
	if (o.order == CIRC_ACDC_ORDER_REFERENCE && o.pc.level == CIRC_LEVEL_NODE)
		circ_usage_error("--acdc-order reference needs --level edge (its heads have q, k "
				 "and v inputs)");
	circ_patch_cli_check(&o.pc);
	circ_session_model(&s, &o.pc, 1);
	circ_session_tokens(&s, input);
	/* ACDC's loss is kl unless --metric names the task's metric */
	if (!o.pc.metric_set)
		o.pc.metric = CIRC_METRIC_KL;
	circ_patch_cli_opts(&o.pc, s.m, 0, &po);
	/* mean ablation: the means once, by a patcher sized for any batch of
	 * the references, shared by every batch's patcher */
	if (o.pc.ablation == CIRC_ABL_MEAN) {
		circ_session_patcher(&s, NULL, 0);
		circ_session_means(&s);
	}
	ps = acdc_patchers(&s, &po, &n);
	lg.g = s.g;
	lg.groups = o.group > 0 || o.screen > 0;
	if (o.screen)
		lg.attr = screen_attr(&s, ps, n);
	lg.change = circ_xmalloc((size_t)s.g->n_edges * sizeof(double));
	for (int64_t ed = 0; ed < s.g->n_edges; ed++)
		lg.change[ed] = NAN;
	if (o.log)
		open_log(cli, argc, argv, &s, &lg);
	keep = circ_xmalloc((size_t)s.g->n_edges);
	acdc(&s, ps, n, &lg, keep);
	circ_session_finish(&s);
	if (lg.w && circ_writer_close(lg.w, &e) < 0)
		circ_die(&e);
	write_acdc_circuit(cli, argc, argv, &s, &lg, keep);
	for (int i = 0; i < n; i++) {
		circ_batch_free((circ_batch *)circ_patcher_batch(ps[i]));
		circ_patcher_free(ps[i]);
	}
	free(ps);
	free(keep);
	free(lg.change);
	free((double *)lg.attr);
	circ_session_free(&s);
	return 0;
}

/* ---- Edge Pruning ---- */

typedef struct ep_log {
	circ_writer *w; /* --log: the training curve, or NULL */
	int every;	/* a line on stderr every this many steps (0: none) */
	int steps;
	circ_ep_step last;
} ep_log;

static int ep_step(void *ctx, const circ_ep_step *st, circ_error *e)
{
	ep_log *lg = ctx;
	lg->last = *st;
	if (lg->every && (st->step % lg->every == 0 || st->step == lg->steps)) {
		fprintf(stderr,
			"%s: edge-pruning: step %d/%d: loss %.6g, sparsity %.4f (target %.4f), "
			"lambda %.4g %.4g, %lld edges",
			circ_progname, st->step, lg->steps, st->loss, st->sparsity, st->target,
			st->lambda1, st->lambda2, (long long)st->edges);
		if (o.ep.node_masks)
			fprintf(stderr,
				"; nodes: sparsity %.4f (target %.4f), lambda %.4g %.4g, %lld",
				st->node_sparsity, st->node_target, st->lambda3, st->lambda4,
				(long long)st->nodes);
		fputc('\n', stderr);
	}
	if (!lg->w)
		return 0;
	msgpack_packer *pk = circ_writer_packer(lg->w);
	msgpack_pack_map(pk, o.ep.node_masks ? 13 : 8);
	circ_pack_kv_i64(pk, "step", st->step);
	circ_pack_kv_f64(pk, "loss", st->loss);
	circ_pack_kv_f64(pk, "reg", st->reg);
	circ_pack_kv_f64(pk, "sparsity", st->sparsity);
	circ_pack_kv_f64(pk, "target", st->target);
	circ_pack_kv_f64(pk, "lambda1", st->lambda1);
	circ_pack_kv_f64(pk, "lambda2", st->lambda2);
	circ_pack_kv_i64(pk, "edges", st->edges);
	if (o.ep.node_masks) {
		circ_pack_kv_f64(pk, "node_sparsity", st->node_sparsity);
		circ_pack_kv_f64(pk, "node_target", st->node_target);
		circ_pack_kv_f64(pk, "lambda3", st->lambda3);
		circ_pack_kv_f64(pk, "lambda4", st->lambda4);
		circ_pack_kv_i64(pk, "nodes", st->nodes);
	}
	return circ_writer_end_record(lg->w, e);
}

/* --log: the training curve's stream, opened with its header. */
static circ_writer *ep_open_log(const circ_cli *cli, int argc, char **argv, circ_session *s)
{
	circ_error e;
	circ_writer_opts lo = cli->wopts;
	circ_writer *w;
	circ_hdr_field f[] = {
	    CIRC_HDR_GRAPH(s->g),
	    CIRC_HDR(STR, "metric", circ_metric_name(o.pc.metric)),
	    CIRC_HDR(STR, "ablation", circ_ablation_name(o.pc.ablation)),
	    CIRC_HDR(STR, "model_digest", s->model_digest),
	    CIRC_HDR(F64, "sparsity", o.ep.sparsity),
	    CIRC_HDR_IF(o.target_edges >= 0, I64, "target_edges", o.target_edges),
	    CIRC_HDR(I64, "steps", o.ep.steps),
	    CIRC_HDR(I64, "warmup", o.ep.warmup),
	    CIRC_HDR(F64, "lr", o.ep.lr),
	    CIRC_HDR(F64, "lr_lambda", o.ep.lr_lambda),
	    CIRC_HDR(F64, "init", o.ep.init),
	    CIRC_HDR(I64, "seed", (int64_t)o.ep.seed),
	    CIRC_HDR_IF(o.ep.node_masks, F64, "node_sparsity", o.ep.node_sparsity),
	};
	w = circ_writer_open(o.log, &lo, &e);
	if (!w)
		circ_die(&e);
	if (circ_writer_header_fields(w, "edge-pruning", argc, argv, &s->r, 1, f, CIRC_HDR_N(f),
				      &e) < 0)
		circ_die(&e);
	return w;
}

/* Trains the masks over every batch of the token stream, then keeps the
 * edges with the largest log_alpha: N = --target-edges, or (1 - S) E
 * rounded; the circuit's scores are the log_alpha. */
static int run_edge_pruning(circ_cli *cli, int argc, char **argv, const char *input)
{
	circ_session s = {0};
	circ_error e;
	circ_patcher **ps;
	circ_patch_opts po;
	circ_edgeprune *ep;
	circ_scores sc = {0};
	circ_circuit_source src;
	ep_log lg = {0};
	uint8_t *keep;
	int64_t E, n_keep;
	int n = 0;
	double t0;

	if (!o.pc.model)
		circ_usage_error("--edge-pruning needs --model DIR");
	if (o.signed_ || o.size || o.tau_set || o.abs_change || o.group || o.screen ||
	    o.screen_m_set)
		circ_usage_error(
		    "--signed, sizes, --tau, --abs-change, --group and --screen do not "
		    "apply to --edge-pruning");
	if (o.sparsity_set == (o.target_edges >= 0))
		circ_usage_error("--edge-pruning needs one of --sparsity S and --target-edges N");
	if (!o.warmup_set)
		o.ep.warmup = o.ep.steps / 2;
	if (o.ep.warmup > o.ep.steps)
		circ_usage_error("option '--warmup': %d is more than --steps %d", o.ep.warmup,
				 o.ep.steps);
	circ_patch_cli_no_raw(&o.pc, "--edge-pruning");
	circ_patch_cli_check(&o.pc);
	circ_session_model(&s, &o.pc, 1);
	circ_session_tokens(&s, input);
	E = s.g->n_edges;
	if (o.target_edges > E)
		circ_usage_error(
		    "option '--target-edges': %lld is more than the graph's %lld edges",
		    (long long)o.target_edges, (long long)E);
	if (o.target_edges >= 0)
		o.ep.sparsity = 1 - (double)o.target_edges / (double)E;
	n_keep = o.target_edges >= 0 ? o.target_edges : llround((1 - o.ep.sparsity) * (double)E);
	/* the loss is kl unless --metric names the task's metric (as ACDC) */
	if (!o.pc.metric_set)
		o.pc.metric = CIRC_METRIC_KL;
	circ_patch_cli_opts(&o.pc, s.m, 1, &po);
	po.stage_grads = 1; /* the hooks read one stage's receiver gradients at a time */
	if (o.pc.ablation == CIRC_ABL_MEAN) {
		circ_session_patcher(&s, NULL, 0);
		circ_session_means(&s);
	}
	ps = acdc_patchers(&s, &po, &n);
	if (o.log)
		lg.w = ep_open_log(cli, argc, argv, &s);
	lg.steps = o.ep.steps;
	lg.every = isatty(2) ? (o.ep.steps >= 20 ? o.ep.steps / 20 : 1) : 0;
	ep = circ_ep_new(ps, n, &o.ep, &e);
	t0 = circ_now();
	if (!ep || circ_ep_train(ep, ep_step, &lg, &e) < 0) {
		circ_writer_abort(lg.w);
		circ_error_prefix(&e, "%s", circ_reader_name(s.r));
		circ_die(&e);
	}
	circ_session_finish(&s);
	if (lg.w && circ_writer_close(lg.w, &e) < 0)
		circ_die(&e);
	keep = circ_xmalloc((size_t)E);
	sc.score = (double *)circ_ep_scores(ep);
	if (circ_select_topn(s.g, sc.score, n_keep, 1, keep, &e) < 0)
		circ_die(&e);
	circ_prune_dangling(s.g, keep);
	fprintf(stderr, "%s: edge-pruning: %d steps in %.2fs", circ_progname, o.ep.steps,
		circ_now() - t0);
	if (o.ep.steps > 0)
		fprintf(stderr, ", loss %.6g, expected sparsity %.4f (target %.4f)", lg.last.loss,
			lg.last.sparsity, o.ep.sparsity);
	fprintf(stderr, ", %lld edges kept\n", (long long)circ_count_kept(s.g, keep));
	sc.g = s.g;
	sc.model_digest = (char *)s.model_digest;
	sc.method = "edge-pruning";
	sc.metric = (char *)circ_metric_name(o.pc.metric);
	circ_circuit_source_init(&src);
	src.method = "edge-pruning";
	src.mode = "edge-pruning";
	src.n = n_keep;
	src.signed_ = 1;
	src.metric = circ_metric_name(o.pc.metric);
	o.signed_ = 1; /* the evaluation ranks by log_alpha itself */
	write_circuit(cli, argc, argv, s.r, &sc, keep, &src);
	circ_ep_free(ep);
	for (int i = 0; i < n; i++) {
		circ_batch_free((circ_batch *)circ_patcher_batch(ps[i]));
		circ_patcher_free(ps[i]);
	}
	free(ps);
	free(keep);
	circ_session_free(&s);
	return 0;
}

/* The options every mode shares: a mode, and no two outputs on one file. */
static void check_common_options(const circ_cli *cli)
{
	if (o.mode == MODE_NONE)
		circ_usage_error("choose a mode: --top-n, --threshold, --greedy, --acdc, --cd-t or "
				 "--edge-pruning");
	if (o.ep_opt && o.mode != MODE_EDGE_PRUNING)
		circ_usage_error("option '--%s' goes with --edge-pruning", o.ep_opt);
	if (o.report && !o.truth)
		circ_usage_error("--report needs --truth");
	if (o.log && circ_same_output(o.log, cli->output))
		circ_usage_error("--log and --output name the same file '%s'", o.log);
	if (o.report && circ_same_output(o.report, cli->output))
		circ_usage_error("--report and --output name the same file '%s'", o.report);
	if (o.log && o.report && circ_same_output(o.log, o.report))
		circ_usage_error("--log and --report name the same file '%s'", o.log);
}

/* Selecting from scores: ACDC's options do not apply; the size is checked
 * before the scores are read. */
static void check_selection_options(void)
{
	if (o.acdc_opt || o.log)
		circ_usage_error("--model, --log and the patching options go with --acdc");
	if (o.tau_set)
		circ_usage_error("option '--tau' goes with --acdc");
	if (o.abs_change)
		circ_usage_error("option '--abs-change' goes with --acdc");
	if (o.group)
		circ_usage_error("option '--group' goes with --acdc");
	if (o.screen || o.screen_m_set)
		circ_usage_error("option '--%s' goes with --acdc",
				 o.screen ? "screen" : "screen-method");
	if (o.order_opt)
		circ_usage_error("option '--%s' goes with --acdc", o.order_opt);
	if (o.mode == MODE_THRESHOLD && o.threshold < 0 && !o.signed_)
		circ_usage_error("option '--threshold': '%g' is negative (|score| is compared; "
				 "--signed for signed scores)",
				 o.threshold);
	if (o.size && o.mode != MODE_CDT)
		parse_size(mode_names[o.mode], o.size, -1);
}

/* The scores in r. Scores that leave edges out (a filtered or hand-made
 * stream) would select among what is left and say nothing: refused unless
 * --partial. */
static circ_scores *read_scores(circ_reader *r)
{
	circ_error e;
	circ_scores *s = circ_scores_read(r, &e);
	if (!s)
		circ_die(&e);
	const circ_graph *g = s->g;
	if (s->n_scored < g->n_edges) {
		if (!o.partial) {
			char name[CIRC_NAME_MAX];
			int64_t miss = 0;
			while (!isnan(s->score[miss]))
				miss++;
			circ_graph_edge_name(g, miss, name, sizeof name);
			circ_dief("%s: %lld of %lld edges scored (the first missing is '%s'): a "
				  "filtered or incomplete scores stream? --partial selects among "
				  "the scored edges only",
				  circ_reader_name(r), (long long)s->n_scored,
				  (long long)g->n_edges, name);
		}
		fprintf(
		    stderr, "%s: %lld of %lld edges have no score: never selected (--partial)\n",
		    circ_progname, (long long)(g->n_edges - s->n_scored), (long long)g->n_edges);
	}
	return s;
}

/* The mode's selection from the scores (read from r) into keep, then the
 * dangling edges dropped (a warning when nothing selected is left); src
 * gets the settings. */
static void select_circuit(const circ_reader *r, const circ_scores *s, uint8_t *keep,
			   circ_circuit_source *src)
{
	circ_error e;
	const circ_graph *g = s->g;
	int rc = 0;
	circ_circuit_source_init(src);
	src->method = s->method;
	src->mode = mode_names[o.mode];
	src->signed_ = o.signed_;
	src->metric = s->metric;
	switch (o.mode) {
	case MODE_TOP_N:
		src->n = parse_size("top-n", o.size, g->n_edges);
		rc = circ_select_topn(g, s->score, src->n, o.signed_, keep, &e);
		break;
	case MODE_GREEDY:
		src->n = parse_size("greedy", o.size, g->n_edges);
		rc = circ_select_greedy(g, s->score, src->n, o.signed_, keep, &e);
		break;
	case MODE_THRESHOLD:
		src->threshold = o.threshold;
		circ_select_threshold(g, s->score, o.threshold, o.signed_, keep);
		break;
	case MODE_CDT: /* CD-T's rounds over node relevance (lib/cdt.h) */
		src->n = circ_opt_i64("cd-t", o.size, 1, 1 << 20);
		rc = circ_cdt_select(g, s->score, (int)src->n, o.signed_, keep, &e) < 0 ? -1 : 0;
		break;
	default: abort();
	}
	if (rc < 0) {
		circ_error_prefix(&e, "%s", circ_reader_name(r));
		circ_die(&e);
	}
	int64_t selected = circ_count_kept(g, keep);
	circ_prune_dangling(g, keep);
	if (selected > 0 && circ_count_kept(g, keep) == 0)
		fprintf(stderr,
			"%s: warning: none of the %lld selected edges lies on a path from input to "
			"logits: the circuit is empty\n",
			circ_progname, (long long)selected);
}

/* ---- feature graphs (scores of circ-score --method feature-atp|feature-ig) ----
 * Marks et al.'s selection: the nodes whose |score| is at least
 * --node-threshold, the edges between kept nodes whose |score| is at least
 * --threshold (or the --top-n best of them). Without --node-threshold the
 * circuit's nodes are the endpoints of its edges. No dangling-edge removal
 * (Marks et al. keep every node above the threshold). --truth: ROC AUC of
 * the ranking key over every edge of the graph (edges without a record
 * score 0), and the confusion counts of the kept edges. */

typedef struct fedge {
	char *name;
	int uk, ui, dk, di;
	double score;
	uint8_t truth, keep;
} fedge;

static int cmp_fedge_name(const void *a, const void *b)
{
	return strcmp(((const fedge *)a)->name, ((const fedge *)b)->name);
}

static double fkey(double score)
{
	return o.signed_ ? score : fabs(score);
}

static int cmp_fedge_key(const void *a, const void *b)
{
	double x = fkey((*(const fedge *const *)a)->score),
	       y = fkey((*(const fedge *const *)b)->score);
	return (x < y) - (x > y);
}

/* A record's score: sum / count when it has them, else "score". */
static int rec_score(const msgpack_object *rec, double *v, circ_error *e)
{
	const msgpack_object *sum = circ_rec_get(rec, "sum"), *cnt = circ_rec_get(rec, "count");
	const msgpack_object *sc = circ_rec_get(rec, "score");
	const msgpack_object *x = sum && cnt ? sum : sc;
	if (!x || (x->type != MSGPACK_OBJECT_FLOAT64 && x->type != MSGPACK_OBJECT_FLOAT32 &&
		   x->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
		   x->type != MSGPACK_OBJECT_NEGATIVE_INTEGER))
		return circ_errorf(e, "field 'score': missing or not a number");
	*v = x->type == MSGPACK_OBJECT_POSITIVE_INTEGER	  ? (double)x->via.u64
	     : x->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? (double)x->via.i64
							  : x->via.f64;
	if (x == sum) {
		double s = *v, t;
		if (cnt->type != MSGPACK_OBJECT_POSITIVE_INTEGER || cnt->via.u64 == 0 ||
		    cnt->via.u64 > INT64_MAX)
			return circ_errorf(e, "field 'count': not a positive integer");
		*v /= (double)cnt->via.u64;
		if (sc && (circ_rec_f64(rec, "score", &t, e) < 0 ||
			   circ_score_mismatch(t, s, (int64_t)cnt->via.u64, e)))
			return -1;
	}
	return 0;
}

/* AUC (Mann-Whitney, ties one half) of by_key (n, in decreasing key) with
 * n0 more negatives at key 0: the edges without a record. */
static double feature_auc(fedge **by_key, int64_t n, int64_t n0, int64_t *npos_out)
{
	int64_t npos = 0, nneg = n0, neg_below = 0;
	double wins = 0;
	int zeros_done = 0;
	for (int64_t i = 0; i < n; i++)
		npos += by_key[i]->truth, nneg += !by_key[i]->truth;
	*npos_out = npos;
	if (!npos || !nneg)
		return NAN;
	/* from the lowest key up: each positive beats the negatives below it */
	for (int64_t j = n; j > 0 || !zeros_done;) {
		double k = j > 0 ? fkey(by_key[j - 1]->score) : INFINITY;
		int64_t p = 0, q = 0, i = j;
		if (!zeros_done && k >= 0.0) { /* the implicit zeros' group comes first */
			while (i > 0 && fkey(by_key[i - 1]->score) == 0.0)
				p += by_key[i - 1]->truth, q += !by_key[i - 1]->truth, i--;
			q += n0;
			zeros_done = 1;
		} else {
			while (i > 0 && fkey(by_key[i - 1]->score) == k)
				p += by_key[i - 1]->truth, q += !by_key[i - 1]->truth, i--;
		}
		wins += (double)p * ((double)neg_below + 0.5 * (double)q);
		neg_below += q;
		j = i;
	}
	return wins / ((double)npos * (double)nneg);
}

static void pack_fsource(msgpack_packer *pk, const void *ctx)
{
	const char *const *kv = ctx; /* method, metric */
	int nfield = 3 + (kv[0] != NULL) + (kv[1] != NULL) + (o.node_threshold >= 0);
	msgpack_pack_map(pk, (size_t)nfield);
	if (kv[0])
		circ_pack_kv_str(pk, "method", kv[0]);
	if (kv[1])
		circ_pack_kv_str(pk, "metric", kv[1]);
	circ_pack_kv_str(pk, "mode", mode_names[o.mode]);
	if (o.mode == MODE_TOP_N)
		circ_pack_kv_i64(pk, "n", parse_size("top-n", o.size, 1 << 30));
	else
		circ_pack_kv_f64(pk, "threshold", o.threshold);
	if (o.node_threshold >= 0)
		circ_pack_kv_f64(pk, "node_threshold", o.node_threshold);
	circ_pack_str(pk, "signed");
	if (o.signed_)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

typedef struct fevalp {
	const char *digest;
	int64_t n_truth, tp, fp, fn, tn;
	double auc;
} fevalp;

static void pack_feval(msgpack_packer *pk, const void *ctx)
{
	const fevalp *v = ctx;
	msgpack_pack_map(pk, 9);
	circ_pack_kv_str(pk, "truth", v->digest);
	circ_pack_kv_i64(pk, "n_truth", v->n_truth);
	pack_f64_or_nil(pk, "auc", v->auc);
	pack_f64_or_nil(pk, "tpr", v->tp + v->fn ? (double)v->tp / (double)(v->tp + v->fn) : NAN);
	pack_f64_or_nil(pk, "fpr", v->fp + v->tn ? (double)v->fp / (double)(v->fp + v->tn) : NAN);
	circ_pack_kv_i64(pk, "tp", v->tp);
	circ_pack_kv_i64(pk, "fp", v->fp);
	circ_pack_kv_i64(pk, "fn", v->fn);
	circ_pack_kv_i64(pk, "tn", v->tn);
}

/* Edge order for the greedy frontier: by downstream node. */
static int cmp_fedge_down(const void *a, const void *b)
{
	const fedge *x = *(const fedge *const *)a, *y = *(const fedge *const *)b;
	if (x->dk != y->dk)
		return (x->dk > y->dk) - (x->dk < y->dk);
	if (x->di != y->di)
		return (x->di > y->di) - (x->di < y->di);
	return (x > y) - (x < y);
}

/* Heap order: the larger key first, then the lower edge (name order). */
static int fheap_before(const fedge *x, const fedge *y)
{
	double a = fkey(x->score), b = fkey(y->score);
	return a > b || (a == b && x < y);
}

static void fheap_push(fedge **h, int64_t *n, fedge *x)
{
	int64_t i = (*n)++;
	while (i > 0 && fheap_before(x, h[(i - 1) / 2])) {
		h[i] = h[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h[i] = x;
}

static fedge *fheap_pop(fedge **h, int64_t *n)
{
	fedge *top = h[0], *x = h[--*n];
	int64_t i = 0;
	for (;;) {
		int64_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && fheap_before(h[c + 1], h[c]))
			c++;
		if (!fheap_before(h[c], x))
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n > 0)
		h[i] = x;
	return top;
}

/* Pushes the edges of cand (m, sorted by downstream node) into (k, i). */
static void fheap_push_into(fedge **cand, int64_t m, int k, int i, fedge **h, int64_t *nh)
{
	int64_t lo = 0, hi = m;
	while (lo < hi) { /* the first edge into (k, i) */
		int64_t mid = lo + (hi - lo) / 2;
		if (cand[mid]->dk < k || (cand[mid]->dk == k && cand[mid]->di < i))
			lo = mid + 1;
		else
			hi = mid;
	}
	for (; lo < m && cand[lo]->dk == k && cand[lo]->di == i; lo++)
		fheap_push(h, nh, cand[lo]);
}

/* --greedy on a feature graph: grow `want` edges from logits, as for
 * component graphs: the candidates are the edges (among cand, each with
 * both ends allowed) into a node already reached, logits first; the best
 * candidate is kept and its upstream node, when new, adds its own incoming
 * edges. reach (zeroed) marks the nodes reached. Dies if the candidates
 * run out before `want`. */
static void feature_greedy(circ_fgraph *g, fedge **cand, int64_t m, int64_t want, uint8_t **reach)
{
	fedge **h = circ_xmalloc((size_t)(m + 1) * sizeof *h);
	int64_t nh = 0, got = 0;
	qsort(cand, (size_t)m, sizeof *cand, cmp_fedge_down);
	reach[g->n][0] = 1;
	fheap_push_into(cand, m, g->n, 0, h, &nh);
	while (got < want && nh > 0) {
		fedge *x = fheap_pop(h, &nh);
		x->keep = 1;
		got++;
		if (!reach[x->uk][x->ui]) {
			reach[x->uk][x->ui] = 1;
			fheap_push_into(cand, m, x->uk, x->ui, h, &nh);
		}
	}
	free(h);
	if (got < want)
		circ_dief("--greedy %lld: only %lld edges reach the logits through scored edges",
			  (long long)want, (long long)got);
}

static int prune_features(circ_cli *cli, int argc, char **argv, circ_reader *r)
{
	circ_error e;
	const msgpack_object *hdr = circ_reader_header(r), *rec;
	circ_fgraph *g = circ_fgraph_from_header(hdr, &e);
	double **node;
	uint8_t **nkeep;
	fedge *ed = NULL, **by_key;
	int64_t n = 0, cap = 0, nrec = 0, n_truth_extra = 0;
	int k;
	char *method = NULL, *metric = NULL, *md = NULL;
	circ_reader *tr = NULL;
	fevalp ev = {"", 0, 0, 0, 0, 0, NAN};
	char truth_digest[72] = "";
	if (!g) {
		circ_reader_fail(r, &e);
		circ_die(&e);
	}
	{
		circ_hdr_field hf[] = {CIRC_HDR_MAY(STR, "method"), CIRC_HDR_MAY(STR, "metric"),
				       CIRC_HDR_MAY(STR, "model_digest")};
		if (circ_hdr_read(hdr, hf, CIRC_HDR_N(hf), &e) < 0) {
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		method = circ_hdr_strdup(&hf[0]);
		metric = circ_hdr_strdup(&hf[1]);
		md = circ_hdr_strdup(&hf[2]);
	}
	node = circ_xcalloc((size_t)g->n + 1, sizeof *node);
	nkeep = circ_xcalloc((size_t)g->n + 1, sizeof *nkeep);
	for (int j = 0; j <= g->n; j++) {
		size_t nn = (size_t)circ_fgraph_slot_nodes(g, j);
		node[j] = circ_xcalloc(nn, sizeof **node);
		nkeep[j] = circ_xcalloc(nn, 1);
	}
	while ((k = circ_reader_next(r, &rec, &e)) > 0) {
		const char *name;
		size_t nl;
		double v;
		int uk, ui, dk, di;
		nrec++;
		if (circ_rec_get(rec, "node")) {
			if (circ_rec_str(rec, "node", &name, &nl, &e) < 0 ||
			    circ_fgraph_node(g, name, nl, &uk, &ui, &e) < 0 ||
			    rec_score(rec, &v, &e) < 0) {
				circ_reader_fail(r, &e);
				circ_die(&e);
			}
			node[uk][ui] = v;
			continue;
		}
		if (circ_rec_str(rec, "edge", &name, &nl, &e) < 0 ||
		    circ_fgraph_edge(g, name, nl, &uk, &ui, &dk, &di, &e) < 0 ||
		    rec_score(rec, &v, &e) < 0) {
			circ_reader_fail(r, &e);
			circ_die(&e);
		}
		if (n == cap) {
			cap = cap ? 2 * cap : 1024;
			ed = circ_xrealloc(ed, (size_t)cap * sizeof *ed);
		}
		ed[n] = (fedge){circ_xmalloc(nl + 1), uk, ui, dk, di, v, 0, 0};
		memcpy(ed[n].name, name, nl);
		ed[n].name[nl] = 0;
		n++;
	}
	if (k < 0)
		circ_die(&e);
	qsort(ed, (size_t)n, sizeof *ed, cmp_fedge_name);
	for (int64_t i = 1; i < n; i++)
		if (!strcmp(ed[i].name, ed[i - 1].name))
			circ_dief("%s: edge '%s' twice (merge shards with circ-score --merge)",
				  circ_reader_name(r), ed[i].name);
	if (o.truth) {
		const msgpack_object *tre;
		tr = circ_reader_open(o.truth, NULL, &e);
		if (!tr)
			circ_die(&e);
		while ((k = circ_reader_next(tr, &tre, &e)) > 0) {
			const char *name;
			size_t nl;
			int uk, ui, dk, di;
			fedge key, *hit;
			if (circ_rec_str(tre, "edge", &name, &nl, &e) < 0 ||
			    circ_fgraph_edge(g, name, nl, &uk, &ui, &dk, &di, &e) < 0) {
				circ_reader_fail(tr, &e);
				circ_die(&e);
			}
			key.name = circ_xmalloc(nl + 1);
			memcpy(key.name, name, nl);
			key.name[nl] = 0;
			hit = bsearch(&key, ed, (size_t)n, sizeof *ed, cmp_fedge_name);
			if (hit)
				ev.n_truth += !hit->truth, hit->truth = 1;
			else {
				/* a true edge without a record: score 0; kept apart */
				if (n + n_truth_extra == cap) {
					cap = cap ? 2 * cap : 1024;
					ed = circ_xrealloc(ed, (size_t)cap * sizeof *ed);
				}
				ed[n + n_truth_extra++] =
				    (fedge){key.name, uk, ui, dk, di, 0.0, 1, 0};
				ev.n_truth++;
				continue;
			}
			free(key.name);
		}
		if (k < 0)
			circ_die(&e);
		/* a true edge listed twice without a record counts once */
		qsort(ed + n, (size_t)n_truth_extra, sizeof *ed, cmp_fedge_name);
		for (int64_t i = n + 1; i < n + n_truth_extra; i++)
			if (!strcmp(ed[i].name, ed[i - 1].name))
				ed[i].truth = 2; /* a duplicate: ignored */
		truth_file_digest(tr, truth_digest);
		ev.digest = truth_digest;
	}
	/* nodes, then edges between kept nodes */
	for (int j = 0; j <= g->n; j++) {
		for (int64_t i = 0; i < circ_fgraph_slot_nodes(g, j); i++)
			nkeep[j][i] = j == g->n || o.node_threshold < 0 ||
				      fkey(node[j][i]) >= o.node_threshold;
	}
	by_key = circ_xmalloc((size_t)(n + n_truth_extra + 1) * sizeof *by_key);
	{
		int64_t m = 0, want = o.mode == MODE_TOP_N    ? parse_size("top-n", o.size, n)
				      : o.mode == MODE_GREEDY ? parse_size("greedy", o.size, n)
							      : -1;
		for (int64_t i = 0; i < n; i++)
			if (nkeep[ed[i].uk][ed[i].ui] && nkeep[ed[i].dk][ed[i].di])
				by_key[m++] = &ed[i];
		if (o.mode == MODE_GREEDY) {
			uint8_t **reach = circ_xcalloc((size_t)g->n + 1, sizeof *reach);
			for (int j = 0; j <= g->n; j++)
				reach[j] = circ_xcalloc((size_t)circ_fgraph_slot_nodes(g, j), 1);
			feature_greedy(g, by_key, m, want, reach);
			for (int j = 0; j <= g->n; j++)
				free(reach[j]);
			free(reach);
		} else {
			qsort(by_key, (size_t)m, sizeof *by_key, cmp_fedge_key);
			for (int64_t i = 0; i < m; i++)
				by_key[i]->keep =
				    want >= 0 ? i < want : fkey(by_key[i]->score) >= o.threshold;
		}
	}
	if (o.node_threshold < 0) { /* nodes: the kept edges' ends */
		for (int j = 0; j < g->n; j++)
			memset(nkeep[j], 0, (size_t)circ_fgraph_slot_nodes(g, j));
		for (int64_t i = 0; i < n; i++)
			if (ed[i].keep)
				nkeep[ed[i].uk][ed[i].ui] = nkeep[ed[i].dk][ed[i].di] = 1;
	}
	if (o.truth) {
		int64_t m = 0, npos;
		for (int64_t i = 0; i < n + n_truth_extra; i++)
			if (ed[i].truth != 2)
				by_key[m++] = &ed[i];
		qsort(by_key, (size_t)m, sizeof *by_key, cmp_fedge_key);
		ev.auc = feature_auc(by_key, m, g->n_edges - m, &npos);
		for (int64_t i = 0; i < n; i++) {
			ev.tp += ed[i].keep && ed[i].truth;
			ev.fp += ed[i].keep && !ed[i].truth;
		}
		ev.fn = npos - ev.tp;
		ev.tn = g->n_edges - ev.tp - ev.fp - ev.fn;
	}
	{
		circ_writer *w = circ_writer_open(cli->output, &cli->wopts, &e);
		circ_reader *inputs[2] = {r, tr};
		const char *kv[2] = {method, metric};
		if (!w)
			circ_die(&e);
		circ_hdr_field f[] = {
		    CIRC_HDR(OBJ, "graph", circ_rec_get(hdr, "graph")),
		    CIRC_HDR_FN("source", pack_fsource, kv),
		    CIRC_HDR_IF(md != NULL, STR, "model_digest", md),
		    CIRC_HDR(I64, "n_edges_total", g->n_edges),
		    CIRC_HDR_FN_IF(o.truth != NULL, "eval", pack_feval, &ev),
		};
		if (circ_writer_header_fields(w, "circuit", argc, argv, inputs, tr ? 2 : 1, f,
					      CIRC_HDR_N(f), &e) < 0)
			circ_die(&e);
		for (int j = 0; j < g->n; j++)
			for (int i = 0; i < circ_fgraph_slot_nodes(g, j); i++) {
				char name[80];
				msgpack_packer *pk = circ_writer_packer(w);
				if (!nkeep[j][i])
					continue;
				circ_fgraph_node_name(g, j, i, name, sizeof name);
				msgpack_pack_map(pk, 2);
				circ_pack_kv_str(pk, "node", name);
				circ_pack_kv_f64(pk, "score", node[j][i]);
				if (circ_writer_end_record(w, &e) < 0) {
					circ_writer_abort(w);
					circ_die(&e);
				}
			}
		for (int64_t i = 0; i < n; i++) {
			msgpack_packer *pk = circ_writer_packer(w);
			if (!ed[i].keep)
				continue;
			msgpack_pack_map(pk, 2);
			circ_pack_kv_str(pk, "edge", ed[i].name);
			circ_pack_kv_f64(pk, "score", ed[i].score);
			if (circ_writer_end_record(w, &e) < 0) {
				circ_writer_abort(w);
				circ_die(&e);
			}
		}
		if (circ_writer_close(w, &e) < 0)
			circ_die(&e);
	}
	if (o.report) {
		FILE *f = fopen(o.report, "w");
		if (!f)
			circ_dief("'%s': %s", o.report, strerror(errno));
		fprintf(f, "{\"n_truth\":%lld,\"auc\":", (long long)ev.n_truth);
		json_num(f, ev.auc);
		fprintf(f, ",\"tpr\":");
		json_num(f, ev.tp + ev.fn ? (double)ev.tp / (double)(ev.tp + ev.fn) : NAN);
		fprintf(f, ",\"fpr\":");
		json_num(f, ev.fp + ev.tn ? (double)ev.fp / (double)(ev.fp + ev.tn) : NAN);
		fprintf(f, ",\"tp\":%lld,\"fp\":%lld,\"fn\":%lld,\"tn\":%lld}\n", (long long)ev.tp,
			(long long)ev.fp, (long long)ev.fn, (long long)ev.tn);
		if (fclose(f) != 0)
			circ_dief("'%s': write error", o.report);
	}
	(void)nrec;
	for (int64_t i = 0; i < n + n_truth_extra; i++)
		free(ed[i].name);
	for (int j = 0; j <= g->n; j++) {
		free(node[j]);
		free(nkeep[j]);
	}
	free(node);
	free(nkeep);
	free(ed);
	free(by_key);
	free(method);
	free(metric);
	free(md);
	circ_reader_free(tr);
	circ_reader_free(r);
	circ_fgraph_free(g);
	return 0;
}

int main(int argc, char **argv)
{
	circ_cli cli = {"[options] (--top-n N | --threshold T | --greedy N | --acdc | --cd-t N | "
			"--edge-pruning) "
			"[scores]",
			"Select a circuit from scored edges, or find one with the model (ACDC, "
			"CD-T, Edge Pruning); dangling edges are dropped.",
			opts, 1};
	circ_error e;
	circ_circuit_source src;
	circ_init("circ-prune");
	circ_patch_cli_init(&o.pc);
	circ_ep_opts_default(&o.ep);
	int i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i > 1)
		circ_usage_error("one input at most (got %d)", argc - i);
	const char *input = i < argc ? argv[i] : "-";
	check_common_options(&cli);
	if (o.mode == MODE_ACDC) {
		if (o.partial)
			circ_usage_error("option '--partial' goes with scores, not --acdc");
		return run_acdc(&cli, argc, argv, input);
	}
	if (o.mode == MODE_EDGE_PRUNING) {
		if (o.partial)
			circ_usage_error("option '--partial' goes with scores, not --edge-pruning");
		return run_edge_pruning(&cli, argc, argv, input);
	}
	check_selection_options();

	circ_reader *r = circ_reader_open(input, "scores", &e);
	if (!r)
		circ_die(&e);
	if (circ_fgraph_is_feature(circ_reader_header(r))) {
		if (o.mode != MODE_TOP_N && o.mode != MODE_THRESHOLD && o.mode != MODE_GREEDY)
			circ_usage_error("feature graphs take --top-n, --threshold (the edge "
					 "threshold) or --greedy, with --node-threshold");
		return prune_features(&cli, argc, argv, r);
	}
	if (o.node_threshold >= 0)
		circ_usage_error("option '--node-threshold' goes with feature graphs");
	circ_scores *s = read_scores(r);
	uint8_t *keep = circ_xmalloc((size_t)s->g->n_edges);
	select_circuit(r, s, keep, &src);
	write_circuit(&cli, argc, argv, r, s, keep, &src);
	free(keep);
	circ_reader_free(r);
	circ_scores_free(s);
	return 0;
}
