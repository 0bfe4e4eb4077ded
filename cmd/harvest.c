/*
 * circ-harvest: run the model once on the clean and reference inputs and
 * keep, per example, what later stages need so that the runs are not
 * repeated: the reference outputs of every upstream node, their difference
 * from the clean outputs, and the loss gradient at every receiver (the
 * ingredients of EAP: circ-score --acts). Records stream out batch by batch:
 * memory does not grow with the number of examples, and runs split over
 * examples concatenate (`cat a.acts b.acts`).
 */
#include <stdlib.h>
#include <string.h>

#include "attrib.h"
#include "opt.h"

enum {
	OPT_MODEL = 'm',
	OPT_WHAT = CIRC_OPT_FIRST_TOOL,
	OPT_ABLATION,
	OPT_MEAN_REF,
	OPT_PER_POSITION,
	OPT_METRIC,
	OPT_CONVENTION,
	OPT_BATCH,
	OPT_THREADS,
};

static const circ_opt opts[] = {
	{"model", OPT_MODEL, "DIR", "Hugging Face GPT-2 directory"},
	{"what", OPT_WHAT, "LIST", "tensors per example: ref,diff,grad (default all three)"},
	{"ablation", OPT_ABLATION, "A", "resample (default), mean or zero"},
	{"mean-ref", OPT_MEAN_REF, "FILE", "token stream whose clean prompts give the means"},
	{"per-position", OPT_PER_POSITION, NULL, "mean ablation with one mean per position"},
	{"metric", OPT_METRIC, "M", "override the task's metric (logit_diff, prob_diff, logprob, kl)"},
	{"convention", OPT_CONVENTION, "C", "eap-ig (default) or acdc"},
	{"batch", OPT_BATCH, "N", "examples per batch (default 16)"},
	{"threads", OPT_THREADS, "N", "threads (default 1)"},
	{0},
};

static struct {
	const char *model, *mean_ref;
	int want_ref, want_diff, want_grad, per_position, batch, threads, has_metric;
	circ_ablation ablation;
	circ_metric_kind metric;
	circ_input_conv conv;
} o = {.want_ref = 1, .want_diff = 1, .want_grad = 1, .batch = 16, .threads = 1};

static int handle(int key, const char *arg, void *ctx)
{
	switch (key) {
	case OPT_MODEL: o.model = arg; return 0;
	case OPT_WHAT: {
		const char *s = arg;
		o.want_ref = o.want_diff = o.want_grad = 0;
		while (*s) {
			size_t n = strcspn(s, ",");
			if (n == 3 && !strncmp(s, "ref", 3))
				o.want_ref = 1;
			else if (n == 4 && !strncmp(s, "diff", 4))
				o.want_diff = 1;
			else if (n == 4 && !strncmp(s, "grad", 4))
				o.want_grad = 1;
			else
				circ_usage_error("--what: unknown tensor '%.*s' (ref, diff, grad)",
						 (int)n, s);
			s += n + (s[n] == ',');
		}
		return 0;
	}
	case OPT_ABLATION:
		if (circ_ablation_parse(arg, &o.ablation) < 0)
			circ_usage_error("unknown ablation '%s' (resample, mean, zero)", arg);
		return 0;
	case OPT_MEAN_REF: o.mean_ref = arg; return 0;
	case OPT_PER_POSITION: o.per_position = 1; return 0;
	case OPT_METRIC:
		if (circ_metric_parse(arg, strlen(arg), &o.metric) < 0)
			circ_usage_error("unknown metric '%s'", arg);
		o.has_metric = 1;
		return 0;
	case OPT_CONVENTION:
		if (circ_graph_input_parse(arg, &o.conv) < 0)
			circ_usage_error("unknown convention '%s' (eap-ig, acdc)", arg);
		return 0;
	case OPT_BATCH: o.batch = (int)circ_opt_i64("batch", arg, 1, 4096); return 0;
	case OPT_THREADS: o.threads = (int)circ_opt_i64("threads", arg, 1, 256); return 0;
	}
	return -1;
}

int main(int argc, char **argv)
{
	circ_cli cli = {"--model DIR [options] [tokens]",
			"Reference outputs, output differences and receiver gradients per example.",
			opts, 1};
	circ_error e;
	circ_model *m;
	circ_graph *g;
	circ_reader *r;
	circ_patcher *p;
	circ_batcher *bt;
	circ_batch *b;
	circ_writer *w;
	circ_patch_opts po = {0};
	circ_progress pr;
	const char *in = "-", *md;
	const circ_config *c;
	float *diff = NULL;
	int i, k, U, R;

	circ_init("circ-harvest");
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i > 1)
		circ_usage_error("one token stream at most");
	if (argc - i == 1)
		in = argv[i];
	if (!o.model)
		circ_usage_error("--model DIR is required");
	if (!o.want_ref && !o.want_diff && !o.want_grad)
		circ_usage_error("--what: nothing to harvest");
	m = circ_model_open(o.model, NULL, &e);
	if (!m || !(md = circ_model_digest(m, &e)))
		circ_die(&e);
	c = circ_model_config(m);
	U = circ_model_n_up(m);
	R = circ_model_n_recv(m);
	g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	if (!g)
		circ_die(&e);
	g->input = o.conv;
	r = circ_reader_open(in, "tokens", &e);
	if (!r)
		circ_die(&e);
	if (!o.has_metric && circ_metric_from_header(circ_reader_header(r), &o.metric, &e) < 0)
		circ_die(&e);
	po.ablation = o.ablation;
	po.mean_per_position = o.per_position;
	po.metric = o.metric;
	po.threads = o.threads;
	po.max_b = o.batch;
	po.max_t = c->n_ctx;
	po.backward = o.want_grad;
	p = circ_patcher_new(m, g, &po, &e);
	if (!p)
		circ_die(&e);
	if (o.ablation == CIRC_ABL_MEAN) {
		circ_reader *mr;
		circ_batcher *mb;
		if (!o.mean_ref && !strcmp(in, "-"))
			circ_usage_error("mean ablation on standard input needs --mean-ref FILE");
		mr = circ_reader_open(o.mean_ref ? o.mean_ref : in, "tokens", &e);
		if (!mr)
			circ_die(&e);
		mb = circ_batcher_new(mr, o.metric, c->vocab_size, c->n_ctx, o.batch);
		while ((k = circ_batcher_next(mb, &b, &e)) > 0)
			if (circ_patcher_mean_add(p, b, &e) < 0)
				circ_die(&e);
		if (k < 0 || circ_patcher_mean_finish(p, &e) < 0)
			circ_die(&e);
		circ_batcher_free(mb);
		circ_reader_free(mr);
	}
	w = circ_writer_open(cli.output, &cli.wopts, &e);
	if (!w)
		circ_die(&e);
	{
		msgpack_packer *pk;
		const msgpack_object *dd = circ_rec_get(circ_reader_header(r), "dataset_digest");
		circ_writer_header(w, "acts", argc, argv, &r, 1, 8);
		pk = circ_writer_packer(w);
		circ_pack_kv_str(pk, "metric", circ_metric_name(o.metric));
		circ_pack_kv_str(pk, "ablation", circ_ablation_name(o.ablation));
		circ_pack_str(pk, "graph");
		circ_graph_pack(pk, g);
		circ_pack_kv_str(pk, "model_digest", md);
		circ_pack_str(pk, "dataset_digest");
		if (dd && dd->type == MSGPACK_OBJECT_STR)
			msgpack_pack_object(pk, *dd);
		else
			circ_pack_str(pk, circ_reader_header_digest(r));
		circ_pack_kv_i64(pk, "d_model", c->n_embd);
		circ_pack_kv_i64(pk, "n_up", U);
		circ_pack_kv_i64(pk, "n_recv", R);
		if (circ_writer_end_record(w, &e) < 0)
			circ_die(&e);
	}
	bt = circ_batcher_new(r, o.metric, c->vocab_size, c->n_ctx, o.batch);
	circ_progress_start(&pr, "examples", 0);
	while ((k = circ_batcher_next(bt, &b, &e)) > 0) {
		size_t tc = (size_t)b->T * (size_t)c->n_embd, btc = (size_t)b->B * tc;
		circ_run *run = circ_patcher_run(p);
		if (circ_patcher_load(p, b, &e) < 0 || (o.want_grad && circ_loss_backward(p, &e) < 0))
			circ_die(&e);
		diff = circ_xrealloc(diff, (size_t)U * tc * sizeof *diff);
		for (int bb = 0; bb < b->B; bb++) {
			msgpack_packer *pk = circ_writer_packer(w);
			int64_t shape[3] = {U, b->T, c->n_embd};
			msgpack_pack_map(pk, 4 + o.want_ref + o.want_diff + o.want_grad);
			circ_pack_kv_i64(pk, "id", b->ex[bb].id);
			circ_pack_kv_i64(pk, "T", b->T);
			circ_pack_kv_f64(pk, "metric_clean", circ_patcher_clean_metric(p)[bb]);
			circ_pack_kv_f64(pk, "metric_ref", circ_patcher_ref_metric(p)[bb]);
			if (o.want_ref) {
				/* one example's rows are strided by B*T*C: gather them */
				for (int u = 0; u < U; u++)
					memcpy(diff + (size_t)u * tc,
					       circ_patcher_ref_out(p, u) + (size_t)bb * tc,
					       tc * sizeof(float));
				circ_pack_kv_tensor(pk, "ref", CIRC_F32, 3, shape, diff);
			}
			if (o.want_diff) {
				for (int u = 0; u < U; u++) {
					const float *rf = circ_patcher_ref_out(p, u) + (size_t)bb * tc,
						    *cl = circ_patcher_clean_out(p, u) + (size_t)bb * tc;
					float *d = diff + (size_t)u * tc;
					for (size_t q = 0; q < tc; q++)
						d[q] = rf[q] - cl[q];
				}
				circ_pack_kv_tensor(pk, "diff", CIRC_F32, 3, shape, diff);
			}
			if (o.want_grad) {
				float *gr = circ_xmalloc((size_t)R * tc * sizeof *gr);
				shape[0] = R;
				for (int q = 0; q < R; q++)
					memcpy(gr + (size_t)q * tc,
					       circ_run_recv_grad(run, q) + (size_t)bb * tc,
					       tc * sizeof(float));
				circ_pack_kv_tensor(pk, "grad", CIRC_F32, 3, shape, gr);
				free(gr);
			}
			(void)btc;
			if (circ_writer_end_record(w, &e) < 0)
				circ_die(&e);
		}
		circ_progress_step(&pr, b->B);
	}
	if (k < 0)
		circ_die(&e);
	circ_progress_end(&pr);
	if (circ_writer_close(w, &e) < 0)
		circ_die(&e);
	free(diff);
	circ_batcher_free(bt);
	circ_patcher_free(p);
	circ_reader_free(r);
	circ_graph_free(g);
	circ_model_free(m);
	return 0;
}
