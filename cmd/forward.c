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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "metric.h"
#include "model.h"
#include "cli/opt.h"
#include "cli/progress.h"

enum {
	OPT_MODEL = 'm',
	OPT_BATCH = CIRC_OPT_FIRST_TOOL,
	OPT_THREADS,
	OPT_TOP_K,
	OPT_LOGITS,
	OPT_CORRUPT,
	OPT_METRIC,
	OPT_ALLOW_NONFINITE,
};

static const circ_opt opts[] = {
    {"model", OPT_MODEL, "DIR", "Hugging Face GPT-2 directory (required)"},
    {"batch", OPT_BATCH, "N", "examples per forward pass (default 16)"},
    {"threads", OPT_THREADS, "N", "threads for the model"},
    {"top-k", OPT_TOP_K, "K", "most probable next tokens per example (default 5; 0: none)"},
    {"logits", OPT_LOGITS, NULL, "also write the full logits at the read positions"},
    {"corrupt", OPT_CORRUPT, NULL, "run the corrupted prompts instead of the clean ones"},
    {"metric", OPT_METRIC, "M",
     "override the stream's metric (logit_diff, prob_diff, logprob, kl)"},
    {"allow-nonfinite", OPT_ALLOW_NONFINITE, NULL, "accept NaN or infinite weights"},
    {0},
};

static struct {
	const char *model;
	int batch, threads, top_k, logits, corrupt, has_metric, allow_nonfinite;
	circ_metric_kind metric;
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

int main(int argc, char **argv)
{
	circ_cli cli = {"--model DIR [options] [tokens]",
			"Run the model on a token stream: metric, top-k and logits per example.",
			opts, 1};
	circ_error e;
	circ_model *m;
	circ_model_opts mo;
	circ_run *run;
	circ_run_opts ro;
	circ_reader *r;
	circ_batch_reader *bt;
	circ_batch *b;
	circ_writer *w;
	const circ_config *c;
	const char *in = "-", *md;
	circ_read *reads = NULL;
	float *clean_logp = NULL;
	double sum = 0;
	int64_t n = 0, n_correct = 0;
	int i, k, V, run_t;
	circ_progress pr;

	circ_init("circ-forward");
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i > 1)
		circ_usage_error("one token stream at most");
	if (argc - i == 1)
		in = argv[i];
	if (!o.model)
		circ_usage_error("--model DIR is required");
	if (!o.threads)
		o.threads = circ_threads_default();

	circ_model_opts_default(&mo);
	mo.allow_nonfinite = o.allow_nonfinite;
	m = circ_model_open(o.model, &mo, &e);
	if (!m || !(md = circ_model_digest(m, &e)))
		circ_die(&e);
	c = circ_model_config(m);
	V = c->vocab_size;
	r = circ_reader_open(in, "tokens", &e);
	if (!r)
		circ_die(&e);
	if (!o.has_metric &&
	    circ_batch_metric_from_header(circ_reader_header(r), &o.metric, &e) < 0) {
		circ_error_prefix(&e, "%s", circ_reader_name(r));
		circ_die(&e);
	}
	if (circ_batch_check_vocab(r, o.model, &e) < 0)
		circ_die(&e);
	/* The run is sized for the longest batch so far (activations grow with
	 * T^2 for attention: sizing for the whole context would reserve far
	 * more than short prompts use). */
	circ_run_opts_default(&ro);
	ro.threads = o.threads;
	ro.keep_nodes = 0; /* only the output is needed */
	run = NULL;
	run_t = 0;

	w = circ_writer_open(cli.output, &cli.wopts, &e);
	if (!w)
		circ_die(&e);
	{
		circ_hdr_field f[] = {
		    CIRC_HDR(STR, "metric", circ_metric_name(o.metric)),
		    CIRC_HDR(STR, "prompts", o.corrupt ? "corrupt" : "clean"),
		    CIRC_HDR(I64, "top_k", o.top_k),
		    CIRC_HDR(STR, "model_digest", md),
		    circ_hdr_dataset_digest(r),
		};
		if (circ_writer_header_fields(w, "results", argc, argv, &r, 1, f, CIRC_HDR_N(f),
					      &e) < 0)
			circ_die(&e);
	}

	bt = circ_batch_reader_new(r, o.metric, V, c->n_ctx, o.batch);
	circ_cli_progress(&pr, "examples", 0);
	while ((k = circ_batch_reader_next(bt, &b, &e)) > 0) {
		circ_fwd f;
		int rows;
		const float *logits;
		if (b->T > run_t) {
			circ_run_free(run);
			run_t = b->T;
			run = circ_run_new(m, o.batch, run_t, &ro, &e);
			if (!run)
				circ_die(&e);
		}
		reads = circ_xrealloc(reads, (size_t)b->n_read * sizeof *reads);
		for (int q = 0; q < b->n_read; q++)
			reads[q] = (circ_read){b->read_b[q], b->read_t[q]};
		circ_fwd_init(&f);
		f.B = b->B;
		f.T = b->T;
		f.read = CIRC_READ_LIST;
		f.n_read = b->n_read;
		f.reads = reads;
		if (o.metric == CIRC_METRIC_KL) { /* the clean distribution first */
			f.tokens = b->clean;
			if (circ_forward(run, &f, &e) < 0) {
				circ_error_prefix(&e, "%s", circ_reader_name(r));
				circ_die(&e);
			}
			logits = circ_run_logits(run, &rows);
			clean_logp =
			    circ_xrealloc(clean_logp, (size_t)rows * V * sizeof *clean_logp);
			circ_metric_log_softmax(clean_logp, logits, rows, V);
		}
		f.tokens = o.corrupt ? b->corrupt : b->clean;
		if ((o.metric != CIRC_METRIC_KL || o.corrupt) && circ_forward(run, &f, &e) < 0) {
			circ_error_prefix(&e, "%s", circ_reader_name(r));
			circ_die(&e);
		}
		logits = circ_run_logits(run, &rows);
		for (int q = 0; q < b->B; q++) {
			double v = circ_batch_metric(o.metric, b, q, logits, clean_logp, V, NULL);
			int ok = circ_batch_correct(b, q, logits, V);
			if (!isfinite(v) && !o.allow_nonfinite) {
				circ_writer_abort(w);
				circ_dief("%s: example %lld: %s metric is %s (the model's numbers "
					  "overflow; --allow-nonfinite lets it through)",
					  circ_reader_name(r), (long long)b->ex[q].id,
					  circ_metric_name(o.metric),
					  isnan(v) ? "nan" : "infinite");
			}
			sum += v;
			n_correct += ok;
			n++;
			pack_results(w, b, q, v, ok, logits, V, &e);
		}
		circ_progress_step(&pr, b->B);
	}
	if (k < 0)
		circ_die(&e);
	circ_progress_end(&pr);
	if (circ_model_check_unchanged(m, &e) < 0) /* weights used in place: not rewritten? */
		circ_die(&e);
	if (circ_writer_close(w, &e) < 0)
		circ_die(&e);
	if (n)
		fprintf(stderr, "%s: %lld examples, mean %s %.6g, accuracy %.4f (%lld/%lld)\n",
			circ_progname, (long long)n, circ_metric_name(o.metric),
			isnan(sum) ? fabs(sum) : sum / (double)n, /* "nan", never "-nan" */
			(double)n_correct / (double)n, (long long)n_correct, (long long)n);
	else
		fprintf(stderr, "%s: 0 examples\n", circ_progname);
	free(reads);
	free(clean_logp);
	circ_batch_reader_free(bt);
	circ_run_free(run);
	circ_reader_free(r);
	circ_model_free(m);
	return 0;
}
