/*
 * circ-forward: runs the model on a token stream and writes, per example,
 * the task's metric, whether the top prediction is the answer, the top-k
 * next tokens with their probabilities and optionally the full logits at the
 * read positions; a summary (mean metric, accuracy) goes to stderr. This is
 * how a user checks that a model does the task before looking for its
 * circuit.
 *
 * Examples are read in equal-length batches (lib/example); each batch is one
 * forward with logits only at the read positions. The metric is the one
 * lib/example defines for every tool, so the numbers equal circ-harvest's
 * and circ-patch's clean metrics. With --corrupt the corrupted prompts are
 * run instead; for the kl metric that is the only useful choice, and the
 * clean run provides the reference distribution.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "dict.h"
#include "metric.h"
#include "model.h"
#include "cli/opt.h"
#include "cli/session.h"
#include "cli/dictrun.h"

enum {
	OPT_MODEL = 'm',
	OPT_BATCH = CIRC_OPT_FIRST_TOOL,
	OPT_THREADS,
	OPT_TOP_K,
	OPT_LOGITS,
	OPT_CORRUPT,
	OPT_METRIC,
	OPT_ALLOW_NONFINITE,
	OPT_DESCRIBE,
	OPT_DICT,
	OPT_INTERVENE,
	OPT_COMPUTE,
};

static const circ_opt opts[] = {
    {"model", OPT_MODEL, "DIR", "Hugging Face model directory (required)"},
    {"batch", OPT_BATCH, "N", "examples per forward pass (default 16)"},
    {"threads", OPT_THREADS, "N", "threads for the model"},
    {"top-k", OPT_TOP_K, "K", "most probable next tokens per example (default 5; 0: none)"},
    {"logits", OPT_LOGITS, NULL, "also write the full logits at the read positions"},
    {"corrupt", OPT_CORRUPT, NULL, "run the corrupted prompts instead of the clean ones"},
    {"metric", OPT_METRIC, "M",
     "override the stream's metric (logit_diff, prob_diff, logprob, kl)"},
    {"allow-nonfinite", OPT_ALLOW_NONFINITE, NULL, "accept NaN or infinite weights"},
    {"describe", OPT_DESCRIBE, NULL,
     "print the model's architecture as read (JSON) after checking its weights, and exit"},
    {"dict", OPT_DICT, "DIR",
     "splice each dictionary (SAE, transcoder) of DIR in and report its measures (dict-eval)"},
    {"intervene", OPT_INTERVENE, "SPEC",
     "with --dict: set (resid3.f17@5=0) or scale (resid3.f17@5*2) a feature at a position of "
     "every prompt, the dictionary's error kept, and write the results; repeatable"},
    {"compute", OPT_COMPUTE, "T", CIRC_OPT_COMPUTE_HELP},
    {0},
};

static struct {
	const char *model, *dict;
	const char *iv[64]; /* --intervene specs */
	int n_iv;
	int batch, threads, top_k, logits, corrupt, has_metric, allow_nonfinite, describe;
	circ_metric_kind metric;
	circ_compute compute;
} o = {.batch = 16, .threads = 0, .top_k = 5};

static int handle(int key, const char *arg, void *ctx)
{
	(void)ctx;
	switch (key) {
	case OPT_MODEL: o.model = arg; return 0;
	case OPT_BATCH: o.batch = (int)circ_opt_i64("batch", arg, 1, 65536); return 0;
	case OPT_THREADS:
		o.threads = (int)circ_opt_i64("threads", arg, 1, CIRC_THREADS_MAX);
		return 0;
	case OPT_TOP_K: o.top_k = (int)circ_opt_i64("top-k", arg, 0, 1000); return 0;
	case OPT_LOGITS: o.logits = 1; return 0;
	case OPT_CORRUPT: o.corrupt = 1; return 0;
	case OPT_METRIC:
		if (circ_metric_parse(arg, strlen(arg), &o.metric) < 0)
			circ_usage_error("--metric: unknown metric '%s' (logit_diff, prob_diff, "
					 "logprob, kl)",
					 arg);
		o.has_metric = 1;
		return 0;
	case OPT_ALLOW_NONFINITE: o.allow_nonfinite = 1; return 0;
	case OPT_DESCRIBE: o.describe = 1; return 0;
	case OPT_DICT: o.dict = arg; return 0;
	case OPT_COMPUTE: o.compute = circ_cli_compute_parse(arg); return 0;
	case OPT_INTERVENE:
		if (o.n_iv == (int)(sizeof o.iv / sizeof *o.iv))
			circ_usage_error("--intervene: at most %d",
					 (int)(sizeof o.iv / sizeof *o.iv));
		o.iv[o.n_iv++] = arg;
		return 0;
	}
	return -1;
}

static void pack_results(circ_writer *w, const circ_batch *bt, int b, double metric, int correct,
			 const float *logits, int V, circ_error *e)
{
	msgpack_packer *pk = circ_writer_packer(w);
	const circ_example *ex = &bt->ex[b];
	const float *row = logits + (size_t)bt->row0[b] * V;
	int32_t ids[1000];
	double probs[1000];
	int k = o.top_k ? circ_metric_topk(row, V, o.top_k, ids, probs) : 0;
	msgpack_pack_map(pk, 4 + o.logits);
	circ_pack_kv_i64(pk, "id", ex->id);
	circ_pack_kv_f64(pk, "metric", metric);
	circ_pack_str(pk, "correct");
	if (correct)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	circ_pack_str(pk, "top");
	msgpack_pack_array(pk, (size_t)k);
	for (int i = 0; i < k; i++) {
		msgpack_pack_map(pk, 2);
		circ_pack_kv_i64(pk, "token", ids[i]);
		circ_pack_kv_f64(pk, "p", probs[i]);
	}
	if (o.logits) {
		int64_t shape[2] = {ex->npos, V};
		circ_pack_kv_tensor(pk, "logits", CIRC_F32, 2, shape, row);
	}
	if (circ_writer_end_record(w, e) < 0)
		circ_die(e);
}

/* The model's run, sized for the longest batch so far (activations grow
 * with T^2 for attention: sizing for the whole context would reserve far
 * more than short prompts use), and the buffers reused across batches. */
typedef struct runner {
	circ_run *run;
	circ_run_opts ro;
	int run_t;	   /* the run's T */
	circ_read *reads;  /* (n_read) */
	float *clean_logp; /* (rows, V) the kl metric's clean log-probabilities */
	/* --intervene: the dictionary edited, its splicer (for the run's size) */
	circ_dict_set *set;
	const circ_dict *dict;
	circ_dict_splice *splice;
	circ_dict_edit edits[64];
	int n_edits;
} runner;

/* --intervene's specs into rn's edits on one dictionary of rn->set:
 * NAME=VALUE or NAME*FACTOR, NAME = <dict>.f<i>@<t> (circ(1), FEATURE
 * GRAPHS). */
static void parse_interventions(runner *rn)
{
	for (int q = 0; q < o.n_iv; q++) {
		const char *sp = o.iv[q], *dot = strstr(sp, ".f"), *at = strchr(sp, '@');
		const char *op = at ? at + strcspn(at, "=*") : NULL;
		char name[64], *end;
		const circ_dict *hit = NULL;
		circ_dict_edit *x = &rn->edits[rn->n_edits];
		if (!dot || !at || at < dot || !op || !*op || (size_t)(dot - sp) >= sizeof name)
			circ_usage_error("--intervene '%s': expected <dict>.f<feature>@<pos>=VALUE "
					 "or *FACTOR",
					 sp);
		for (int k = 0; k < rn->set->n; k++) {
			circ_dict_name(rn->set->dict[k], name, sizeof name);
			if (strlen(name) == (size_t)(dot - sp) &&
			    !memcmp(name, sp, (size_t)(dot - sp)))
				hit = rn->set->dict[k];
		}
		if (!hit)
			circ_dief("--intervene '%s': no dictionary named '%.*s' in '%s'", sp,
				  (int)(dot - sp), sp, o.dict);
		if (rn->dict && hit != rn->dict)
			circ_dief("--intervene '%s': the edits of one run go to one dictionary",
				  sp);
		rn->dict = hit;
		errno = 0;
		long fi = strtol(dot + 2, &end, 10), pos;
		if (end != at || fi < 0 || errno)
			circ_usage_error("--intervene '%s': bad feature number", sp);
		if (fi >= hit->cfg.d_sae)
			circ_dief("--intervene '%s': feature %ld of %d", sp, fi,
				  (int)hit->cfg.d_sae);
		pos = strtol(at + 1, &end, 10);
		if (end != op || pos < 0 || pos > 1 << 20 || errno)
			circ_usage_error("--intervene '%s': bad position", sp);
		double v = strtod(op + 1, &end);
		if (end == op + 1 || *end || !isfinite(v))
			circ_usage_error("--intervene '%s': bad value", sp);
		*x = (circ_dict_edit){(int)pos, (int)fi, *op == '*', (float)v};
		rn->n_edits++;
	}
}

/* Sums over the examples written. */
typedef struct totals {
	double sum;
	int64_t n, n_correct;
} totals;

/* Runs the batch (the clean prompts first for kl; then the clean or
 * corrupted prompts) and returns the logits at its read positions. */
static const float *forward_batch(circ_session *s, runner *rn, const circ_batch *b)
{
	circ_error e;
	circ_fwd f;
	int rows, V = s->c->vocab_size;
	const float *logits;
	if (b->T > rn->run_t) {
		circ_run_free(rn->run);
		rn->run_t = b->T;
		rn->run = circ_run_new(s->m, o.batch, rn->run_t, &rn->ro, &e);
		if (!rn->run)
			circ_die(&e);
		if (rn->dict) {
			circ_dict_splice_free(rn->splice);
			rn->splice = circ_dict_splice_new(rn->dict, s->m, o.batch * rn->run_t, &e);
			if (!rn->splice)
				circ_die(&e);
			circ_dict_splice_set_edits(rn->splice, rn->edits, rn->n_edits);
		}
	}
	rn->reads = circ_xrealloc(rn->reads, (size_t)b->n_read * sizeof *rn->reads);
	for (int q = 0; q < b->n_read; q++)
		rn->reads[q] = (circ_read){b->read_b[q], b->read_t[q]};
	circ_fwd_init(&f);
	f.B = b->B;
	f.T = b->T;
	f.read = CIRC_READ_LIST;
	f.n_read = b->n_read;
	f.reads = rn->reads;
	if (o.metric == CIRC_METRIC_KL) { /* the clean distribution first */
		f.tokens = b->clean;
		if (circ_forward(rn->run, &f, &e) < 0) {
			circ_error_prefix(&e, "%s", circ_reader_name(s->r));
			circ_die(&e);
		}
		logits = circ_run_logits(rn->run, &rows);
		rn->clean_logp =
		    circ_xrealloc(rn->clean_logp, (size_t)rows * V * sizeof *rn->clean_logp);
		circ_metric_log_softmax(rn->clean_logp, logits, rows, V);
	}
	f.tokens = o.corrupt ? b->corrupt : b->clean;
	if (rn->splice) { /* the interventions (after kl's clean distribution) */
		f.hook = circ_dict_splice_hook;
		f.hook_ctx = rn->splice;
	}
	if ((o.metric != CIRC_METRIC_KL || o.corrupt || rn->splice) &&
	    circ_forward(rn->run, &f, &e) < 0) {
		circ_error_prefix(&e, "%s", circ_reader_name(s->r));
		circ_die(&e);
	}
	return circ_run_logits(rn->run, &rows);
}

/* Each example's metric and record (a non-finite metric exits 1 unless
 * --allow-nonfinite). */
static void write_batch(circ_session *s, const runner *rn, const circ_batch *b, const float *logits,
			totals *t)
{
	circ_error e;
	int V = s->c->vocab_size;
	for (int q = 0; q < b->B; q++) {
		double v = circ_batch_metric(o.metric, b, q, logits, rn->clean_logp, V, NULL);
		int ok = circ_batch_correct(b, q, logits, V);
		if (!isfinite(v) && !o.allow_nonfinite) {
			circ_writer_abort(s->w);
			circ_dief("%s: example %lld: %s metric is %s (the model's numbers "
				  "overflow; --allow-nonfinite lets it through)",
				  circ_reader_name(s->r), (long long)b->ex[q].id,
				  circ_metric_name(o.metric), isnan(v) ? "nan" : "infinite");
		}
		t->sum += v;
		t->n_correct += ok;
		t->n++;
		pack_results(s->w, b, q, v, ok, logits, V, &e);
	}
}

/* The output's header. */
static void write_header(circ_session *s, int argc, char **argv)
{
	circ_error e;
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "metric", circ_metric_name(o.metric)),
	    CIRC_HDR(STR, "prompts", o.corrupt ? "corrupt" : "clean"),
	    CIRC_HDR(I64, "top_k", o.top_k),
	    CIRC_HDR(STR, "model_digest", s->model_digest),
	    circ_hdr_dataset_digest(s->r),
	};
	if (circ_writer_header_fields(s->w, "results", argc, argv, &s->r, 1, f, CIRC_HDR_N(f), &e) <
	    0)
		circ_die(&e);
}

int main(int argc, char **argv)
{
	circ_cli cli = {"--model DIR [options] [tokens]",
			"Run the model on a token stream: metric, top-k and logits per example.",
			opts, 1};
	circ_session s = {0};
	circ_error e;
	circ_batch *b;
	const char *in = "-";
	runner rn = {0};
	totals t = {0};
	int i;

	circ_init("circ-forward");
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i > 1)
		circ_usage_error("one token stream at most");
	if (argc - i == 1)
		in = argv[i];
	if (!o.model)
		circ_usage_error("--model DIR is required");
	if (o.n_iv && !o.dict)
		circ_usage_error("--intervene needs --dict DIR");
	if (o.describe) {
		char *d = circ_model_describe(o.model, &e);
		if (!d)
			circ_die(&e);
		if (printf("%s\n", d) < 0 || fflush(stdout) != 0 || ferror(stdout) ||
		    fclose(stdout) != 0) {
			circ_errorf(&e, "'<stdout>': write error");
			circ_die(&e);
		}
		free(d);
		return 0;
	}
	if (!o.threads)
		o.threads = circ_threads_default();

	s.compute = o.compute;
	circ_session_open_model(&s, o.model, o.allow_nonfinite);
	circ_session_reader(&s, in);
	if (!o.has_metric &&
	    circ_batch_metric_from_header(circ_reader_header(s.r), &o.metric, &e) < 0) {
		circ_error_prefix(&e, "%s", circ_reader_name(s.r));
		circ_die(&e);
	}
	circ_session_check_vocab(&s);
	if (o.dict && o.n_iv) { /* interventions: results of the edited model */
		rn.set = circ_dict_set_load(o.dict, &e);
		if (!rn.set)
			circ_die(&e);
		parse_interventions(&rn);
		if (circ_dict_check_model(rn.dict, s.m, &e) < 0)
			circ_die(&e);
	} else if (o.dict) { /* dictionaries spliced in: their measures instead of results */
		if (o.logits || o.corrupt)
			circ_usage_error("--dict: --logits and --corrupt do not apply");
		circ_dictrun_forward(&s, &cli, o.dict, o.metric, o.batch, o.threads, 0.1, argc,
				     argv);
		circ_session_free(&s);
		return 0;
	}
	circ_run_opts_default(&rn.ro);
	rn.ro.threads = o.threads;
	rn.ro.keep_nodes = rn.dict != NULL; /* the splicer reads node outputs */
	/* without a splicer nothing reads a layer's activations after the
	 * layer: one layer's buffers, not every layer's (memory, first touch) */
	rn.ro.one_layer = rn.dict == NULL;
	circ_session_output(&s, &cli);
	write_header(&s, argc, argv);

	circ_session_batches(&s, o.metric, o.batch, 1);
	while (circ_session_next(&s, &b))
		write_batch(&s, &rn, b, forward_batch(&s, &rn, b), &t);
	circ_session_finish(&s);
	if (t.n)
		fprintf(stderr, "%s: %lld examples, mean %s %.6g, accuracy %.4f (%lld/%lld)\n",
			circ_progname, (long long)t.n, circ_metric_name(o.metric),
			isnan(t.sum) ? fabs(t.sum) : t.sum / (double)t.n, /* "nan", never "-nan" */
			(double)t.n_correct / (double)t.n, (long long)t.n_correct, (long long)t.n);
	else
		fprintf(stderr, "%s: 0 examples\n", circ_progname);
	free(rn.reads);
	free(rn.clean_logp);
	circ_dict_splice_free(rn.splice);
	circ_dict_set_free(rn.set);
	circ_run_free(rn.run);
	circ_session_free(&s);
	return 0;
}
