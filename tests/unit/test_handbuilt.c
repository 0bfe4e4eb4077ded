/*
 * test_handbuilt: the hand-built models do what their specifications say.
 *
 * For each model of lib/handbuilt, on 32 examples of its task:
 *   - the build is deterministic, every vector written into the residual
 *     stream sums to zero, the truth and silent edge lists name real,
 *     distinct edges;
 *   - the directory it writes loads back (model, vocabulary, truth stream)
 *     with the same weights and digest;
 *   - LayerNorm is a fixed scaling: at every stage, on the clean and the
 *     corrupted inputs, each residual row has mean ~0 and a std within a
 *     few per cent of the nominal sigma;
 *   - the model does the task far above chance, and not on the corrupted
 *     inputs; the circuit's heads attend where the construction says;
 *   - under resample ablation the ground-truth circuit alone keeps >= 90% of
 *     the behaviour, and every truth edge's exact effect is at least ten
 *     times the largest effect of any other edge.
 * The discovery methods' ROC AUC is tested through the tools, in
 * tests/fixture.bats.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe.h"
#include "circuit.h"
#include "graph.h"
#include "handbuilt.h"
#include "patch.h"
#include "check.h"

#define CHECKF(cond, ...)                                                                          \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);   \
			fprintf(stderr, __VA_ARGS__);                                              \
			fprintf(stderr, "\n");                                                     \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#define N_EX 32

/* ---- examples: the model's dataset lines parsed into a circ_batch ---- */

typedef struct lines {
	json_t *arr;
} lines;

static int collect(const char *line, size_t len, void *ctx, circ_error *e)
{
	lines *l = ctx;
	json_error_t je;
	json_t *j = json_loadb(line, len, 0, &je);
	if (!j)
		return circ_errorf(e, "bad JSON line: %s", je.text);
	json_array_append_new(l->arr, j);
	return 0;
}

/* An int or an array of ints into a new array; *n set. */
static int32_t *ints(json_t *v, int *n)
{
	int32_t *out;
	if (json_is_integer(v)) {
		out = malloc(sizeof *out);
		out[0] = (int32_t)json_integer_value(v);
		*n = 1;
		return out;
	}
	*n = (int)json_array_size(v);
	out = malloc(sizeof *out * (size_t)(*n ? *n : 1));
	for (int i = 0; i < *n; i++)
		out[i] = (int32_t)json_integer_value(json_array_get(v, (size_t)i));
	return out;
}

static circ_batch *make_batch(const char *name, circ_metric_kind *metric)
{
	circ_error e;
	lines l = {json_array()};
	circ_batch *b = calloc(1, sizeof *b);
	int B, T, r = 0;
	if (circ_hb_examples(name, N_EX, 1, collect, &l, &e) < 0) {
		fprintf(stderr, "%s: %s\n", name, e.msg);
		exit(1);
	}
	B = (int)json_array_size(l.arr);
	T = (int)json_array_size(json_object_get(json_array_get(l.arr, 0), "clean_ids"));
	b->B = B;
	b->T = T;
	b->ex = calloc((size_t)B, sizeof *b->ex);
	b->clean = malloc(sizeof(int32_t) * (size_t)(B * T));
	b->corrupt = malloc(sizeof(int32_t) * (size_t)(B * T));
	b->row0 = malloc(sizeof(int) * (size_t)B);
	for (int i = 0; i < B; i++) {
		json_t *x = json_array_get(l.arr, (size_t)i);
		circ_example *ex = &b->ex[i];
		int n;
		ex->id = i;
		ex->T = T;
		ex->clean = ints(json_object_get(x, "clean_ids"), &n);
		CHECK(n == T);
		ex->corrupt = ints(json_object_get(x, "corrupt_ids"), &n);
		CHECK(n == T);
		ex->pos = ints(json_object_get(x, "pos"), &ex->npos);
		ex->ans = ints(json_object_get(x, "answer_ids"), &ex->nans);
		ex->wrong = ints(json_object_get(x, "wrong_ids"), &ex->nwrong);
		memcpy(b->clean + i * T, ex->clean, sizeof(int32_t) * (size_t)T);
		memcpy(b->corrupt + i * T, ex->corrupt, sizeof(int32_t) * (size_t)T);
		b->row0[i] = b->n_read;
		b->n_read += ex->npos;
		if (i == 0 &&
		    circ_metric_parse(json_string_value(json_object_get(x, "metric")),
				      strlen(json_string_value(json_object_get(x, "metric"))),
				      metric) < 0)
			CHECK(!"metric");
	}
	b->read_b = malloc(sizeof(int32_t) * (size_t)b->n_read);
	b->read_t = malloc(sizeof(int32_t) * (size_t)b->n_read);
	for (int i = 0; i < B; i++)
		for (int k = 0; k < b->ex[i].npos; k++, r++) {
			b->read_b[r] = i;
			b->read_t[r] = b->ex[i].pos[k];
		}
	json_decref(l.arr);
	return b;
}

static void free_batch(circ_batch *b)
{
	for (int i = 0; i < b->B; i++)
		circ_batch_example_free(&b->ex[i]);
	free(b->ex);
	free(b->clean);
	free(b->corrupt);
	free(b->row0);
	free(b->read_b);
	free(b->read_t);
	free(b);
}

/* ---- construction properties ---- */

static void check_rows_zero(const char *what, const float *m, size_t rows, int C)
{
	double worst = 0;
	for (size_t r = 0; r < rows; r++) {
		double s = 0, a = 0;
		for (int c = 0; c < C; c++) {
			s += m[r * (size_t)C + (size_t)c];
			a += fabs(m[r * (size_t)C + (size_t)c]);
		}
		if (fabs(s) / (a + 1) > worst)
			worst = fabs(s) / (a + 1);
	}
	CHECKF(worst < 1e-6, "%s: a row sums to %g of its size", what, worst);
}

static void check_build(const char *name, const circ_config *c, const circ_weights *w,
			const circ_hb_info *info)
{
	circ_config c2;
	circ_weights w2;
	circ_hb_info i2;
	circ_error e;
	circ_graph *g;
	int64_t idx[2 * CIRC_HB_MAX_EDGES];
	int n = 0, C = c->n_embd;

	CHECK(circ_hb_build(name, &c2, &w2, &i2, &e) == 0);
	CHECK(!memcmp(c, &c2, sizeof c2));
	CHECK(w->n_params == w2.n_params);
	CHECK(!memcmp(w->mem, w2.mem, w->n_params * sizeof(float)));
	circ_weights_free(&w2);

	check_rows_zero("wte", w->wte, (size_t)c->vocab_size, C);
	check_rows_zero("wpe", w->wpe, (size_t)c->n_ctx, C);
	for (int l = 0; l < c->n_layer; l++) {
		check_rows_zero("c_proj", w->layers[l].proj_w, (size_t)C, C);
		check_rows_zero("c_proj bias", w->layers[l].proj_b, 1, C);
		check_rows_zero("mlp c_proj", w->layers[l].fcproj_w, (size_t)c->n_inner, C);
		check_rows_zero("mlp c_proj bias", w->layers[l].fcproj_b, 1, C);
	}

	CHECK(!strcmp(info->name, name));
	CHECK(info->n_truth >= 3);
	CHECK(info->n_heads >= 2);
	g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	for (int i = 0; i < info->n_truth + info->n_silent; i++) {
		const char *s =
		    i < info->n_truth ? info->truth[i] : info->silent[i - info->n_truth];
		CHECKF(circ_graph_parse_edge(g, s, strlen(s), &idx[n], &e) == 0, "%s", e.msg);
		for (int k = 0; k < n; k++)
			CHECKF(idx[k] != idx[n], "%s listed twice", s);
		n++;
	}
	circ_graph_free(g);
	/* the blocks tile the residual */
	for (int i = 0, off = 0; i < info->n_blocks; i++) {
		CHECK(info->blocks[i].off == off);
		off += info->blocks[i].n;
		if (i == info->n_blocks - 1)
			CHECK(off == C);
	}
}

/* The directory loads back: same weights, vocabulary of vocab_size ids,
 * truth stream with the truth edges and the model's digest. */
static void check_dir(const char *name, const circ_config *c, const circ_weights *w,
		      const circ_hb_info *info)
{
	char dir[] = "/tmp/circ-test-hb-XXXXXX", path[256];
	circ_error e;
	circ_model *m;
	circ_bpe *bpe;
	circ_reader *r;
	circ_graph *g;
	const char *files[] = {"config.json", "model.safetensors", "vocab.json",
			       "merges.txt",  "truth.jsonl",	   "SPEC.md"};

	CHECK(mkdtemp(dir) != NULL);
	CHECKF(circ_hb_write_dir(name, dir, &e) == 0, "%s", e.msg);
	m = circ_model_open(dir, NULL, &e);
	CHECKF(m != NULL, "%s", e.msg);
	if (m) {
		const circ_weights *lw = circ_model_weights(m);
		const circ_config *lc = circ_model_config(m);
		CHECK(lc->n_layer == c->n_layer && lc->n_embd == c->n_embd &&
		      lc->vocab_size == c->vocab_size && lc->n_inner == c->n_inner);
		CHECK(
		    !memcmp(lw->wte, w->wte, sizeof(float) * (size_t)(c->vocab_size * c->n_embd)));
		for (int l = 0; l < c->n_layer; l++)
			CHECK(!memcmp(lw->layers[l].attn_w, w->layers[l].attn_w,
				      sizeof(float) * (size_t)(3 * c->n_embd * c->n_embd)));
		CHECK(!memcmp(lw->lnf_w, w->lnf_w, sizeof(float) * (size_t)c->n_embd));
	}
	bpe = circ_bpe_load_dir(dir, &e);
	CHECKF(bpe != NULL, "%s", e.msg);
	if (bpe) {
		CHECK(circ_bpe_vocab_size(bpe) == c->vocab_size);
		CHECK(circ_bpe_eot(bpe) == c->vocab_size - 1);
		circ_bpe_free(bpe);
	}
	snprintf(path, sizeof path, "%s/truth.jsonl", dir);
	g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	r = circ_reader_open(path, "circuit", &e);
	CHECKF(r != NULL, "%s", e.msg);
	if (r && m) {
		circ_circuit *cc = circ_circuit_read(r, g, &e);
		CHECKF(cc != NULL, "%s", e.msg);
		if (cc) {
			const char *md = circ_model_digest(m, &e);
			CHECK(cc->n_kept == info->n_truth);
			for (int i = 0; i < info->n_truth; i++) {
				int64_t k;
				CHECK(circ_graph_parse_edge(g, info->truth[i],
							    strlen(info->truth[i]), &k, &e) == 0 &&
				      cc->keep[k]);
			}
			CHECK(md && cc->model_digest && !strcmp(md, cc->model_digest));
			circ_circuit_free(cc);
		}
	}
	circ_reader_free(r);
	circ_graph_free(g);
	circ_model_free(m);
	for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, files[i]);
		CHECKF(unlink(path) == 0, "missing %s", files[i]);
	}
	rmdir(dir);
}

/* ---- behaviour ---- */

/* LayerNorm is a fixed scaling at every stage of the run just made. */
static void check_layernorm(const char *name, const char *which, circ_run *run,
			    const circ_config *c, double sigma)
{
	int B = circ_run_b(run), T = circ_run_t(run), C = c->n_embd;
	double worst_mean = 0, lo = 1e9, hi = 0;
	for (int s = 0; s <= 2 * c->n_layer; s++) {
		const float *x = circ_run_resid(run, s);
		for (int r = 0; r < B * T; r++) {
			double m = 0, v = 0;
			for (int k = 0; k < C; k++)
				m += x[(size_t)r * (size_t)C + (size_t)k];
			m /= C;
			for (int k = 0; k < C; k++) {
				double d = x[(size_t)r * (size_t)C + (size_t)k] - m;
				v += d * d;
			}
			v = sqrt(v / C) / sigma;
			if (fabs(m) > worst_mean)
				worst_mean = fabs(m);
			lo = v < lo ? v : lo;
			hi = v > hi ? v : hi;
		}
	}
	printf("  %s %s: residual |mean| <= %.2g, std / sigma in [%.4f, %.4f]\n", name, which,
	       worst_mean, lo, hi);
	CHECKF(worst_mean < 1e-3 * sigma, "%s %s: mean %g", name, which, worst_mean);
	CHECKF(lo > 0.999 && hi < 1.03, "%s %s: std/sigma in [%g, %g]", name, which, lo, hi);
}

/* Metric and accuracy of the run's logits (CIRC_READ_LIST at the batch's
 * reads). */
static void task_score(const circ_batch *b, circ_metric_kind k, circ_run *run, int V, double *mean,
		       double *acc)
{
	const float *lg = circ_run_logits(run, NULL);
	int right = 0;
	*mean = 0;
	for (int i = 0; i < b->B; i++) {
		*mean += circ_batch_metric(k, b, i, lg, NULL, V, NULL);
		for (int p = 0; p < b->ex[i].npos; p++)
			right += circ_metric_argmax(lg + (size_t)(b->row0[i] + p) * (size_t)V, V) ==
				 b->ex[i].ans[p];
	}
	*mean /= b->B;
	*acc = (double)right / b->n_read;
}

static int find_role(const circ_hb_info *info, const char *role, int *layer)
{
	for (int i = 0; i < info->n_heads; i++)
		if (!strcmp(info->heads[i].role, role)) {
			*layer = info->heads[i].layer;
			return info->heads[i].head;
		}
	CHECKF(0, "no head with role %s", role);
	*layer = 0;
	return 0;
}

/* Mean attention of (layer, head) from query q(i) to key k(i) over the
 * examples of the clean run (skipping i where k < 0). */
static double attn_mean(circ_run *run, const circ_config *c, int layer, int head, int n,
			const int *q, const int *k)
{
	const float *a = circ_run_attn(run, layer);
	int T = circ_run_t(run), m = 0;
	double s = 0;
	for (int i = 0; i < n; i++) {
		if (k[i] < 0)
			continue;
		s += a[(((size_t)i * (size_t)c->n_head + (size_t)head) * (size_t)T + (size_t)q[i]) *
			   (size_t)T +
		       (size_t)k[i]];
		m++;
	}
	return m ? s / m : 0;
}

static void check_attention(const char *name, const circ_hb_info *info, const circ_batch *b,
			    circ_run *run, const circ_config *c)
{
	int B = b->B, T = b->T, l, h;
	int *q = malloc(sizeof(int) * (size_t)(B * T)), *k = malloc(sizeof(int) * (size_t)(B * T));
	if (!strcmp(name, "induction-hand")) {
		/* previous-token head: every t >= 1 to t - 1 */
		const float *a;
		double worst = 1;
		h = find_role(info, "previous-token", &l);
		a = circ_run_attn(run, l);
		for (int i = 0; i < B; i++)
			for (int t = 1; t < T; t++) {
				double p =
				    a[(((size_t)i * (size_t)c->n_head + (size_t)h) * (size_t)T +
				       (size_t)t) *
					  (size_t)T +
				      (size_t)(t - 1)];
				worst = p < worst ? p : worst;
			}
		printf("  %s: previous-token head a%d.h%d, min attention to t-1 %.4f\n", name, l, h,
		       worst);
		CHECK(worst > 0.99);
		/* induction head: from each read position to the token after the
		 * earlier occurrence of the current token */
		h = find_role(info, "induction", &l);
		{
			const float *ai = circ_run_attn(run, l);
			double s = 0;
			int m = 0;
			for (int i = 0; i < B; i++)
				for (int p = 0; p < b->ex[i].npos; p++) {
					int t = b->ex[i].pos[p], tgt = -1;
					for (int j = 1; j < t; j++)
						if (b->ex[i].clean[j - 1] == b->ex[i].clean[t])
							tgt = j;
					if (tgt < 0)
						continue;
					s += ai[(((size_t)i * (size_t)c->n_head + (size_t)h) *
						     (size_t)T +
						 (size_t)t) *
						    (size_t)T +
						(size_t)tgt];
					m++;
				}
			printf("  %s: induction head a%d.h%d, mean attention to the match %.4f\n",
			       name, l, h, s / m);
			CHECK(m > 0 && s / m > 0.5);
		}
	} else if (!strcmp(name, "ioi-hand")) {
		int *s1 = malloc(sizeof(int) * (size_t)B), *s2 = malloc(sizeof(int) * (size_t)B),
		    *io = malloc(sizeof(int) * (size_t)B), *end = malloc(sizeof(int) * (size_t)B);
		double p;
		for (int i = 0; i < B; i++) {
			s1[i] = s2[i] = io[i] = -1;
			end[i] = T - 1;
			for (int t = 0; t < T; t++) {
				if (b->ex[i].clean[t] == b->ex[i].ans[0])
					io[i] = t;
				if (b->ex[i].clean[t] == b->ex[i].wrong[0]) {
					if (s1[i] < 0)
						s1[i] = t;
					else
						s2[i] = t;
				}
			}
			CHECK(io[i] > 0 && s1[i] > 0 && s2[i] > s1[i] && s2[i] > io[i]);
		}
		h = find_role(info, "duplicate-token", &l);
		p = attn_mean(run, c, l, h, B, s2, s1);
		printf("  %s: duplicate-token head a%d.h%d, second S to first S %.4f\n", name, l, h,
		       p);
		CHECK(p > 0.7);
		h = find_role(info, "s-inhibition", &l);
		p = attn_mean(run, c, l, h, B, end, s2);
		printf("  %s: s-inhibition head a%d.h%d, END to second S %.4f\n", name, l, h, p);
		CHECK(p > 0.5);
		h = find_role(info, "name-mover", &l);
		p = attn_mean(run, c, l, h, B, end, io);
		printf("  %s: name mover a%d.h%d, END to IO %.4f\n", name, l, h, p);
		CHECK(p > 0.7);
		free(s1);
		free(s2);
		free(io);
		free(end);
	} else {
		CHECKF(0, "no attention check for %s", name);
	}
	free(q);
	free(k);
}

/* Faithfulness of the truth and exact effects of every edge, through the
 * patcher (resample ablation, the task's metric). */
static void check_patching(const char *name, const circ_hb_info *info, circ_model *m,
			   const circ_batch *b, circ_metric_kind metric)
{
	const circ_config *c = circ_model_config(m);
	circ_error e;
	circ_graph *g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	circ_patch_opts po = {0};
	circ_patcher *p;
	uint8_t *keep = calloc((size_t)g->n_edges, 1), *truth = calloc((size_t)g->n_edges, 1);
	double *out = malloc(sizeof(double) * (size_t)b->B), mm = 0, me = 0, mc = 0;
	double min_truth = INFINITY, max_other = 0;
	char worst[CIRC_NAME_MAX] = "";

	po.ablation = CIRC_ABL_RESAMPLE;
	po.metric = metric;
	po.threads = 1;
	po.max_b = b->B;
	po.max_t = b->T;
	p = circ_patcher_new(m, g, &po, &e);
	CHECKF(p != NULL, "%s", e.msg);
	if (!p)
		goto out;
	CHECKF(circ_patcher_load(p, b, &e) == 0, "%s", e.msg);
	for (int i = 0; i < info->n_truth; i++) {
		int64_t k;
		circ_graph_parse_edge(g, info->truth[i], strlen(info->truth[i]), &k, &e);
		keep[k] = truth[k] = 1;
	}
	CHECKF(circ_patcher_eval(p, keep, 0, out, &e) == 0, "%s", e.msg);
	for (int i = 0; i < b->B; i++) {
		mm += circ_patcher_clean_metric(p)[i];
		me += circ_patcher_ref_metric(p)[i];
		mc += out[i];
	}
	{
		double f = (mc - me) / (mm - me);
		printf("  %s: m(model) %.4f, m(empty) %.4f, m(truth) %.4f, faithfulness %.4f\n",
		       name, mm / b->B, me / b->B, mc / b->B, f);
		CHECK(f >= 0.9 && f <= 1.1);
	}
	for (int64_t k = 0; k < g->n_edges; k++) {
		double d = 0;
		CHECKF(circ_patcher_eval_edge(p, k, out, &e) == 0, "%s", e.msg);
		for (int i = 0; i < b->B; i++)
			d += circ_patcher_clean_metric(p)[i] - out[i];
		d /= b->B; /* the loss effect: positive when patching hurts */
		if (truth[k] && d < min_truth)
			min_truth = d;
		if (!truth[k] && fabs(d) > max_other) {
			max_other = fabs(d);
			circ_graph_edge_name(g, k, worst, sizeof worst);
		}
	}
	printf("  %s: exact effects: smallest truth edge %.4f, largest other |%.4f| (%s)\n", name,
	       min_truth, max_other, worst);
	CHECK(min_truth > 10 * max_other);
out:
	circ_patcher_free(p);
	circ_graph_free(g);
	free(keep);
	free(truth);
	free(out);
}

static void check_model(const char *name)
{
	circ_config c;
	circ_weights w;
	circ_hb_info info;
	circ_error e;
	circ_model *m;
	circ_run *run;
	circ_run_opts ro;
	circ_fwd f;
	circ_batch *b;
	circ_metric_kind metric;
	circ_read *reads;
	double clean_m, clean_acc, corr_m, corr_acc;

	printf("%s\n", name);
	if (circ_hb_build(name, &c, &w, &info, &e) < 0) {
		fprintf(stderr, "%s: %s\n", name, e.msg);
		failures++;
		return;
	}
	check_build(name, &c, &w, &info);
	check_dir(name, &c, &w, &info);
	m = circ_model_new(&c, &w, &e);
	b = make_batch(name, &metric);
	circ_run_opts_default(&ro);
	run = circ_run_new(m, b->B, b->T, &ro, &e);
	reads = malloc(sizeof *reads * (size_t)b->n_read);
	for (int r = 0; r < b->n_read; r++) {
		reads[r].b = b->read_b[r];
		reads[r].t = b->read_t[r];
	}
	circ_fwd_init(&f);
	f.B = b->B;
	f.T = b->T;
	f.read = CIRC_READ_LIST;
	f.n_read = b->n_read;
	f.reads = reads;

	f.tokens = b->corrupt;
	CHECKF(circ_forward(run, &f, &e) == 0, "%s", e.msg);
	check_layernorm(name, "corrupt", run, &c, info.sigma);
	task_score(b, metric, run, c.vocab_size, &corr_m, &corr_acc);

	f.tokens = b->clean;
	CHECKF(circ_forward(run, &f, &e) == 0, "%s", e.msg);
	check_layernorm(name, "clean", run, &c, info.sigma);
	task_score(b, metric, run, c.vocab_size, &clean_m, &clean_acc);
	printf("  %s: %s clean %.4f (top-1 %.3f), corrupt %.4f (top-1 %.3f)\n", name,
	       circ_metric_name(metric), clean_m, clean_acc, corr_m, corr_acc);
	if (metric == CIRC_METRIC_LOGPROB) {
		double chance = -log((double)c.vocab_size);
		CHECK(clean_m > chance + 2.0);
		CHECK(corr_m < chance + 0.5);
	} else {
		CHECK(metric == CIRC_METRIC_LOGIT_DIFF);
		CHECK(clean_m > 4.0);
		CHECK(fabs(corr_m) < 1.5);
	}
	CHECK(clean_acc > 0.95);
	CHECK(corr_acc < 0.6);
	check_attention(name, &info, b, run, &c);
	check_patching(name, &info, m, b, metric);

	free(reads);
	circ_run_free(run);
	free_batch(b);
	circ_model_free(m);
}

int main(void)
{
	int n;
	const char *const *names = circ_hb_names(&n);
	circ_config c;
	circ_weights w;
	circ_error e;

	CHECK(n >= 2);
	CHECK(circ_hb_build("no-such-model", &c, &w, NULL, &e) < 0);
	CHECK(strstr(e.msg, "unknown model 'no-such-model'") != NULL);
	for (int i = 0; i < n; i++)
		check_model(names[i]);
	if (failures)
		fprintf(stderr, "test_handbuilt: %d failures\n", failures);
	return failures != 0;
}
