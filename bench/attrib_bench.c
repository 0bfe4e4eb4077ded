/*
 * attrib_bench: times circ's attribution patching (EAP), exact single-edge
 * patching and ACDC edge tests on a GPT-2-small-shaped model with random
 * weights. bench/attrib.sh and bench/acdc.sh run it (one process per
 * measurement, so that each peak RSS is its own) beside bench/torch_eap.py
 * and print the table with the goals.
 *
 * Usage (THREADS for OpenBLAS and circ; REPS timed repetitions after one
 * warm-up; N prompts of 16 tokens):
 *   attrib_bench make DIR                  GPT-2 small (12 x 12 x 768, vocab
 *                                          50257, seed 1234) in DIR, and
 *                                          DIR/tokens.jsonl: 100 prompts
 *   attrib_bench base MODEL THREADS REPS N two forwards (clean, corrupt) and
 *                                          one backward to every receiver per
 *                                          batch of 16, on the model API
 *   attrib_bench eap MODEL THREADS REPS N [SCORES]
 *                                          the patcher + attrib path of
 *                                          circ-score --method eap (batch
 *                                          16); SCORES: write the per-edge
 *                                          sums of the last run (f64, E) for
 *                                          torch_eap.py --check
 *   attrib_bench exact MODEL THREADS REPS N  single-edge tests at every stage
 *                                          (incremental) and at sampled
 *                                          stages as full forwards
 *   attrib_bench acdc MODEL THREADS REPS N   ACDC edge tests at every stage
 *                                          with circuits as ACDC holds them
 *   attrib_bench acdc-tau MODEL THREADS REPS N
 *                                          the KL loss of each edge into
 *                                          logits patched alone (resample,
 *                                          the whole graph kept): ACDC keeps
 *                                          every one of a head or MLP, so
 *                                          each of them stays connected and
 *                                          all edges are tested, when tau is
 *                                          below the least of those
 *                                          ("acdc_tau_min X"); the same for
 *                                          m{L-1}
 * Output: one "key value ..." line per measurement (seconds are the best of
 * REPS, then the median; base and eap warm up on one batch first, with
 * their runs, patcher and buffers made before the clock starts: eap prints
 * that one-time cost as "eap_setup SECONDS"), "rss_kb N" last; the scripts
 * format the table.
 *
 * The prompts: prompt i is drawn from circ_rng stream i of seed 42: T random
 * token ids; the corrupted prompt replaces 3 of them (at T/4, T/2, 3T/4);
 * logit_diff between a random answer and a random wrong id at the last
 * position. `make` writes the same prompts as a token stream (JSON lines),
 * which bench/torch_eap.py and circ-score read.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "acdc.h"
#include "attrib.h"
#include "rng.h"

enum { T_TOK = 16, SCORE_BATCH = 16 };

static void die(const char *what, const circ_error *e)
{
	fprintf(stderr, "attrib_bench: %s: %s\n", what, e->msg);
	exit(1);
}

static long peak_rss_kib(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

static int cmpd(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* Best (min) and median of n timings; sorts t. */
static void best_median(double *t, int n, double *best, double *median)
{
	qsort(t, (size_t)n, sizeof *t, cmpd);
	*best = t[0];
	*median = t[n / 2];
}

/* Prompt i: clean and corrupt (T), answer and wrong id. */
static void prompt(int i, int T, int V, int32_t *clean, int32_t *corrupt, int32_t *ans,
		   int32_t *wrong)
{
	circ_rng r;
	circ_rng_seed_stream(&r, 42, (uint64_t)i);
	for (int t = 0; t < T; t++)
		clean[t] = corrupt[t] = (int32_t)circ_rng_below(&r, (uint64_t)V);
	for (int k = 1; k <= 3; k++)
		corrupt[k * T / 4] = (int32_t)circ_rng_below(&r, (uint64_t)V);
	*ans = (int32_t)circ_rng_below(&r, (uint64_t)V);
	*wrong = (int32_t)circ_rng_below(&r, (uint64_t)V);
}

/* A batch of prompts i0 .. i0+B-1, as circ_batch_reader would give it. */
static circ_batch *make_batch(int i0, int B, int T, int V)
{
	circ_batch *b = circ_xcalloc(1, sizeof *b);
	b->B = B;
	b->T = T;
	b->ex = circ_xcalloc((size_t)B, sizeof *b->ex);
	b->clean = circ_xmalloc((size_t)B * T * sizeof(int32_t));
	b->corrupt = circ_xmalloc((size_t)B * T * sizeof(int32_t));
	b->row0 = circ_xmalloc((size_t)B * sizeof(int));
	b->read_b = circ_xmalloc((size_t)B * sizeof(int32_t));
	b->read_t = circ_xmalloc((size_t)B * sizeof(int32_t));
	for (int i = 0; i < B; i++) {
		circ_example *x = &b->ex[i];
		x->id = i0 + i;
		x->T = T;
		x->clean = circ_xmalloc((size_t)T * sizeof(int32_t));
		x->corrupt = circ_xmalloc((size_t)T * sizeof(int32_t));
		x->npos = x->nans = x->nwrong = 1;
		x->pos = circ_xmalloc(sizeof(int32_t));
		x->ans = circ_xmalloc(sizeof(int32_t));
		x->wrong = circ_xmalloc(sizeof(int32_t));
		prompt(i0 + i, T, V, x->clean, x->corrupt, x->ans, x->wrong);
		x->pos[0] = T - 1;
		memcpy(b->clean + (size_t)i * T, x->clean, (size_t)T * sizeof(int32_t));
		memcpy(b->corrupt + (size_t)i * T, x->corrupt, (size_t)T * sizeof(int32_t));
		b->row0[i] = i;
		b->read_b[i] = i;
		b->read_t[i] = T - 1;
	}
	b->n_read = B;
	return b;
}

/* The N prompts in batches of up to bs. */
static circ_batch **make_batches(int N, int bs, int V, int *nb)
{
	circ_batch **bs_ = circ_xcalloc((size_t)(N + bs - 1) / (size_t)bs + 1, sizeof *bs_);
	int n = 0;
	for (int i0 = 0; i0 < N; i0 += bs)
		bs_[n++] = make_batch(i0, N - i0 < bs ? N - i0 : bs, T_TOK, V);
	*nb = n;
	return bs_;
}

static void free_batches(circ_batch **b, int n)
{
	for (int i = 0; i < n; i++)
		circ_batch_free(b[i]);
	free(b);
}

static int do_make(const char *dir)
{
	circ_config c = {12, 12, 768, 1024, 50257, 3072, 1e-5, CIRC_ACT_GELU_NEW};
	circ_error e;
	char path[4096];
	FILE *f;
	int32_t clean[T_TOK], corrupt[T_TOK], ans, wrong;
	if (circ_model_write_random(dir, &c, 1234, "F32", &e) < 0)
		die("make", &e);
	snprintf(path, sizeof path, "%s/tokens.jsonl", dir);
	if (!(f = fopen(path, "w"))) {
		perror(path);
		return 1;
	}
	fprintf(f, "{\"format\": \"circ\", \"version\": 1, \"kind\": \"tokens\", \"metric\": "
		   "\"logit_diff\"}\n");
	for (int i = 0; i < 100; i++) {
		prompt(i, T_TOK, c.vocab_size, clean, corrupt, &ans, &wrong);
		fprintf(f,
			"{\"id\": %d, \"clean\": {\"dtype\": \"i32\", \"shape\": [%d], \"data\": [",
			i, T_TOK);
		for (int t = 0; t < T_TOK; t++)
			fprintf(f, "%s%d", t ? ", " : "", (int)clean[t]);
		fprintf(f, "]}, \"corrupt\": {\"dtype\": \"i32\", \"shape\": [%d], \"data\": [",
			T_TOK);
		for (int t = 0; t < T_TOK; t++)
			fprintf(f, "%s%d", t ? ", " : "", (int)corrupt[t]);
		fprintf(f, "]}, \"pos\": %d, \"answer\": [%d], \"wrong\": [%d]}\n", T_TOK - 1,
			(int)ans, (int)wrong);
	}
	if (fclose(f) != 0) {
		perror(path);
		return 1;
	}
	return 0;
}

/* Useful floating-point work, as bench/model_bench.c counts it: a forward
 * over B x T tokens reading B logit rows, and the backward to every
 * receiver's input. */
static double fwd_flop(const circ_config *c, int B, int T)
{
	double n = (double)B * T, C = c->n_embd, F = c->n_inner;
	double layer = 2.0 * n * (3 * C * C + C * C + 2 * C * F);
	double attn = 2.0 * 2.0 * B * c->n_head * ((double)T * (T + 1) / 2) * (C / c->n_head);
	return c->n_layer * (layer + attn) + 2.0 * B * C * c->vocab_size;
}

static double bwd_flop(const circ_config *c, int B, int T)
{
	double n = (double)B * T, C = c->n_embd, F = c->n_inner;
	double layer = 2.0 * n * (3 * C * C + C * C + 2 * C * F);
	double attn = 2.0 * 2.0 * B * c->n_head * ((double)T * (T + 1) / 2) * (C / c->n_head);
	return c->n_layer * (layer + 2.0 * n * C * 3 * C + 2 * attn) + 2.0 * B * C * c->vocab_size;
}

/* (a) the baseline: per batch, a forward of the corrupted prompts, a forward
 * of the clean ones and a backward to every receiver, through the model API
 * with the runs the patcher makes (per-head outputs kept, receiver
 * gradients kept). */
static void do_base(circ_model *m, int threads, int reps, int N)
{
	const circ_config *c = circ_model_config(m);
	int nb, V = c->vocab_size;
	circ_batch **bs = make_batches(N, SCORE_BATCH, V, &nb);
	circ_run_opts ro;
	circ_run *rc, *rr;
	circ_error e;
	circ_read reads[SCORE_BATCH];
	float *dl = circ_xmalloc((size_t)SCORE_BATCH * V * sizeof *dl);
	double *t = circ_xcalloc((size_t)reps, sizeof *t), best, med, flop = 0;
	circ_run_opts_default(&ro);
	ro.threads = threads;
	rr = circ_run_new(m, SCORE_BATCH, T_TOK, &ro, &e);
	ro.backward = 1;
	rc = rr ? circ_run_new(m, SCORE_BATCH, T_TOK, &ro, &e) : NULL;
	if (!rc)
		die("base", &e);
	for (int i = 0; i < nb; i++)
		flop += 2 * fwd_flop(c, bs[i]->B, T_TOK) + bwd_flop(c, bs[i]->B, T_TOK);
	for (int rep = -1; rep < reps; rep++) {
		double t0 = circ_now();
		for (int i = 0; i < (rep < 0 ? 1 : nb); i++) { /* warm-up: one batch */
			const circ_batch *b = bs[i];
			circ_fwd f;
			circ_bwd bw = {0};
			const float *lg;
			for (int j = 0; j < b->n_read; j++)
				reads[j] = (circ_read){b->read_b[j], b->read_t[j]};
			circ_fwd_init(&f);
			f.tokens = b->corrupt;
			f.B = b->B;
			f.T = b->T;
			f.read = CIRC_READ_LIST;
			f.n_read = b->n_read;
			f.reads = reads;
			if (circ_forward(rr, &f, &e) < 0)
				die("base", &e);
			f.tokens = b->clean;
			if (circ_forward(rc, &f, &e) < 0)
				die("base", &e);
			lg = circ_run_logits(rc, NULL);
			for (int j = 0; j < b->B; j++)
				circ_batch_metric(CIRC_METRIC_LOGIT_DIFF, b, j, lg, NULL, V, dl);
			bw.dlogits = dl;
			if (circ_backward(rc, &bw, &e) < 0)
				die("base", &e);
		}
		if (rep >= 0)
			t[rep] = circ_now() - t0;
	}
	best_median(t, reps, &best, &med);
	printf("base %.6f %.6f %.3f\n", best, med, flop / 1e9);
	circ_run_free(rc);
	circ_run_free(rr);
	free(dl);
	free(t);
	free_batches(bs, nb);
}

/* (b) EAP as circ-score runs it: a patcher (resample ablation, batch 16,
 * backward) and an attrib accumulator, each batch loaded then scored. */
static void do_eap(circ_model *m, int threads, int reps, int N, const char *scores)
{
	const circ_config *c = circ_model_config(m);
	int nb, V = c->vocab_size;
	circ_batch **bs = make_batches(N, SCORE_BATCH, V, &nb);
	circ_error e;
	circ_graph *g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	circ_patch_opts po = {0};
	double *t = circ_xcalloc((size_t)reps, sizeof *t), best, med, flop = 0, t0, setup;
	circ_patcher *p;
	circ_attrib *a;
	if (!g)
		die("eap", &e);
	po.ablation = CIRC_ABL_RESAMPLE;
	po.metric = CIRC_METRIC_LOGIT_DIFF;
	po.threads = threads;
	po.max_b = SCORE_BATCH;
	/* circ-score passes n_ctx; the model's arena is sized by max_t (its
	 * attention buffers by max_t^2), which for GPT-2 small does not fit in
	 * memory: the benchmark gives the prompts' length */
	po.max_t = T_TOK;
	circ_attrib_patch_opts(CIRC_ATTR_EAP, &po); /* as circ-score makes it */
	for (int i = 0; i < nb; i++)
		flop += 2 * fwd_flop(c, bs[i]->B, T_TOK) + bwd_flop(c, bs[i]->B, T_TOK) +
			2.0 * (double)g->n_edges * T_TOK * c->n_embd * bs[i]->B;
	/* as (a) makes its runs before its clock starts, the patcher and the
	 * accumulator are made, and their memory first touched by a warm-up
	 * batch, before; that one-time cost is printed on its own */
	t0 = circ_now();
	p = circ_patcher_new(m, g, &po, &e);
	if (!p)
		die("eap", &e);
	a = circ_attrib_new(p, CIRC_ATTR_EAP, 1);
	if (circ_patcher_load(p, bs[0], &e) < 0 || circ_attrib_batch(a, NULL, &e) < 0)
		die("eap", &e);
	setup = circ_now() - t0;
	for (int rep = 0; rep < reps; rep++) {
		circ_attrib_reset(a);
		t0 = circ_now();
		for (int i = 0; i < nb; i++)
			if (circ_patcher_load(p, bs[i], &e) < 0 ||
			    circ_attrib_batch(a, NULL, &e) < 0)
				die("eap", &e);
		t[rep] = circ_now() - t0;
		if (scores && rep == reps - 1) {
			FILE *f = fopen(scores, "wb");
			if (!f ||
			    fwrite(circ_attrib_sums(a), sizeof(double), (size_t)g->n_edges, f) !=
				(size_t)g->n_edges ||
			    fclose(f) != 0) {
				perror(scores);
				exit(1);
			}
		}
	}
	circ_attrib_free(a);
	circ_patcher_free(p);
	best_median(t, reps, &best, &med);
	printf("eap %.6f %.6f %.3f\n", best, med, flop / 1e9);
	printf("eap_setup %.6f\n", setup);
	free(t);
	circ_graph_free(g);
	free_batches(bs, nb);
}

/* A model receiver (graph numbering = model numbering at edge level) whose
 * inputs are read at stage s: a{l}.h0<q>, m{l} or logits. */
static int recv_at_stage(const circ_graph *g, int s)
{
	if (s == 2 * g->n_layer)
		return circ_graph_recv_logits(g);
	return s % 2 ? circ_graph_recv_mlp(g, s / 2) : circ_graph_recv_head(g, s / 2, 0, 0);
}

static double time_eval(circ_patcher *p, const uint8_t *keep, int stage, int64_t edge, int reps,
			double *out)
{
	circ_error e;
	double best = 1e30;
	for (int i = 0; i < reps; i++) {
		double t0 = circ_now(), dt;
		int rc = edge >= 0 ? circ_patcher_eval_edge(p, edge, out, &e)
				   : circ_patcher_eval(p, keep, stage, out, &e);
		if (rc < 0)
			die("eval", &e);
		dt = circ_now() - t0;
		if (dt < best)
			best = dt;
	}
	return best;
}

static circ_patcher *metric_patcher(circ_model *m, const circ_graph *g, int threads, int N,
				    circ_metric_kind metric, circ_batch **bp)
{
	const circ_config *c = circ_model_config(m);
	circ_patch_opts po = {0};
	circ_error e;
	circ_patcher *p;
	*bp = make_batch(0, N, T_TOK, c->vocab_size);
	po.ablation = CIRC_ABL_RESAMPLE;
	po.metric = metric;
	po.threads = threads;
	po.max_b = N;
	po.max_t = T_TOK;
	p = circ_patcher_new(m, g, &po, &e);
	if (!p || circ_patcher_load(p, *bp, &e) < 0)
		die("patcher", &e);
	return p;
}

static circ_patcher *one_batch_patcher(circ_model *m, const circ_graph *g, int threads, int N,
				       circ_batch **bp)
{
	return metric_patcher(m, g, threads, N, CIRC_METRIC_LOGIT_DIFF, bp);
}

/* Sampled stages for the tables: receivers of layers 0, 3, 6, 9, 11 (q and
 * m) and logits. */
static int sampled(int s, int L)
{
	int l = s / 2;
	return s == 2 * L || l == 0 || l == L / 4 || l == L / 2 || l == 3 * L / 4 || l == L - 1;
}

static void recv_label(const circ_graph *g, int s, char *buf, size_t n)
{
	circ_graph_recv_name(g, recv_at_stage(g, s), buf, n);
}

/* (e) exact: one edge test per stage, resumed at the receiver's stage
 * (top down, as circ-score --method exact visits receivers), and as a full
 * forward for the sampled stages. */
static void do_exact(circ_model *m, int threads, int reps, int N)
{
	const circ_config *c = circ_model_config(m);
	circ_error e;
	circ_graph *g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	int L = c->n_layer, S = 2 * L + 1;
	circ_batch *b;
	circ_patcher *p;
	double *inc = circ_xcalloc((size_t)S, sizeof *inc),
	       *full = circ_xcalloc((size_t)S, sizeof *full);
	double *out = circ_xmalloc((size_t)N * sizeof *out);
	double *inc_out = circ_xcalloc((size_t)S * (size_t)N, sizeof *inc_out);
	double t_all_inc = 0, t_all_full = 0, t_fwd, maxdiff = 0;
	uint8_t *keep;
	char name[CIRC_NAME_MAX];
	if (!g)
		die("exact", &e);
	p = one_batch_patcher(m, g, threads, N, &b);
	keep = circ_xmalloc((size_t)g->n_edges);
	memset(keep, 1, (size_t)g->n_edges);
	time_eval(p, NULL, 0, g->recv_first[recv_at_stage(g, 2 * L)], 1, out); /* warm-up */
	for (int s = 2 * L; s >= 0; s--) {
		int64_t ed = g->recv_first[recv_at_stage(g, s)]; /* input -> receiver */
		inc[s] = time_eval(p, NULL, 0, ed, reps, inc_out + (size_t)s * N);
	}
	/* full forwards: the same single-edge evaluation started at stage 0 */
	for (int s = 2 * L; s >= 0; s--) {
		int64_t ed = g->recv_first[recv_at_stage(g, s)];
		if (!sampled(s, L))
			continue;
		keep[ed] = 0;
		circ_patcher_dirty(p);
		full[s] = time_eval(p, keep, 0, -1, reps, out);
		keep[ed] = 1;
		/* the incremental test must give the same numbers */
		for (int i = 0; i < N; i++)
			if (fabs(out[i] - inc_out[(size_t)s * N + i]) > maxdiff)
				maxdiff = fabs(out[i] - inc_out[(size_t)s * N + i]);
	}
	t_fwd = full[0];
	for (int s = 0; s < S; s++)
		if (full[s] > 0 && full[s] < t_fwd)
			t_fwd = full[s];
	/* the whole graph: every edge costs its receiver stage's test */
	for (int r = 0; r < g->n_recv; r++) {
		int s = circ_patcher_recv_stage(p, r);
		int64_t n = g->recv_first[r + 1] - g->recv_first[r];
		t_all_inc += (double)n * inc[s];
		t_all_full += (double)n * t_fwd;
	}
	printf("exact_examples %d\n", N);
	for (int s = 2 * L; s >= 0; s--) {
		if (!sampled(s, L))
			continue;
		recv_label(g, s, name, sizeof name);
		printf("exact_stage %d %s %.6f %.6f\n", s, name, inc[s], full[s]);
	}
	printf("exact_all %lld %.3f %.3f\n", (long long)g->n_edges, t_all_inc, t_all_full);
	printf("exact_check %.3g\n", maxdiff);
	free(keep);
	free(inc);
	free(full);
	free(out);
	free(inc_out);
	circ_patcher_free(p);
	circ_batch_free(b);
	circ_graph_free(g);
}

/* Keep mask of an ACDC run about to test the first edge of the stage-s
 * receiver: receivers above s are decided, the tested edge is patched,
 * everything below is still kept. The decided part, by kind:
 *   0 "spread":  5% of the decided edges kept, at random (the size of the
 *                circuits ACDC ends with, but spread over every receiver:
 *                the worst case for the patcher);
 *   1 "circuit": a circuit of 20% of the nodes (input and logits always
 *                in), half of the edges between its nodes kept (about 2%
 *                of the graph), every other receiver fully patched, as
 *                ACDC leaves the nodes it drops;
 *   2 "early":   every decided edge kept (only the tested edge patched). */
enum { NK = 3 };
static const char *const kname[NK] = {"spread", "circuit", "early"};

static void acdc_mask(const circ_graph *g, const circ_patcher *p, int s, int kind, uint8_t *keep,
		      int64_t tested)
{
	circ_rng r;
	uint8_t *in = circ_xmalloc((size_t)g->n_nodes);
	circ_rng_seed(&r, 7);
	for (int u = 0; u < g->n_nodes; u++)
		in[u] = u == 0 || u == g->n_up || circ_rng_uniform(&r) < 0.2;
	for (int rv = 0; rv < g->n_recv; rv++) {
		int node;
		circ_graph_recv_info(g, rv, NULL, &node);
		for (int64_t ed = g->recv_first[rv]; ed < g->recv_first[rv + 1]; ed++) {
			int u = g->edge_up[ed];
			if (circ_patcher_recv_stage(p, rv) <= s || kind == 2)
				keep[ed] = 1;
			else if (kind == 0)
				keep[ed] = circ_rng_uniform(&r) < 0.05;
			else
				keep[ed] = in[u] && in[node] && circ_rng_uniform(&r) < 0.5;
		}
	}
	keep[tested] = 0;
	free(in);
}

/* (2) ACDC edge tests: at every stage, a test with each kind of circuit
 * above against the unpatched forward from the same stage. */
static void do_acdc(circ_model *m, int threads, int reps, int N)
{
	const circ_config *c = circ_model_config(m);
	circ_error e;
	circ_graph *g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	int L = c->n_layer, S = 2 * L + 1;
	circ_batch *b;
	circ_patcher *p;
	double *tt[NK], *bk[NK], *base = circ_xcalloc((size_t)S, sizeof *base), full;
	double *out = circ_xmalloc((size_t)N * sizeof *out), tot[NK] = {0}, totbk[NK] = {0},
	       totb = 0;
	uint8_t *keep, *all;
	char name[CIRC_NAME_MAX];
	if (!g)
		die("acdc", &e);
	for (int k = 0; k < NK; k++) {
		tt[k] = circ_xcalloc((size_t)S, sizeof *tt[k]);
		bk[k] = circ_xcalloc((size_t)S, sizeof *bk[k]);
	}
	p = one_batch_patcher(m, g, threads, N, &b);
	keep = circ_xmalloc((size_t)g->n_edges);
	all = circ_xmalloc((size_t)g->n_edges);
	memset(all, 1, (size_t)g->n_edges);
	time_eval(p, all, 2 * L, -1, 1, out); /* warm-up */
	/* Test and unpatched forward timed in turn (the best of reps each, the
	 * ratio of each kind to its own forwards), so that the machine's drift
	 * over seconds falls on both sides alike. One untimed test first: ACDC
	 * tests many edges in one state of the circuit above, which the patcher
	 * caches. */
	for (int s = 2 * L; s >= 0; s--) {
		int64_t ed = g->recv_first[recv_at_stage(g, s)];
		base[s] = 1e30;
		for (int k = 0; k < NK; k++) {
			acdc_mask(g, p, s, k, keep, ed);
			time_eval(p, keep, s, -1, 1, out);
			tt[k][s] = bk[k][s] = 1e30;
			for (int i = 0; i < reps; i++) {
				double tb = time_eval(p, all, s, -1, 1, out),
				       tk = time_eval(p, keep, s, -1, 1, out);
				bk[k][s] = tb < bk[k][s] ? tb : bk[k][s];
				tt[k][s] = tk < tt[k][s] ? tk : tt[k][s];
			}
			base[s] = bk[k][s] < base[s] ? bk[k][s] : base[s];
		}
	}
	circ_patcher_dirty(p);
	full = time_eval(p, all, 0, -1, reps, out);
	/* a whole ACDC run visits every receiver: each of its edges is a test at
	 * the receiver's stage */
	for (int r = 0; r < g->n_recv; r++) {
		int s = circ_patcher_recv_stage(p, r);
		double n = (double)(g->recv_first[r + 1] - g->recv_first[r]);
		for (int k = 0; k < NK; k++) {
			tot[k] += n * tt[k][s];
			totbk[k] += n * bk[k][s];
		}
		totb += n * base[s];
	}
	printf("acdc_examples %d\n", N);
	printf("acdc_full_fwd %.6f\n", full);
	for (int s = 2 * L; s >= 0; s--) {
		if (!sampled(s, L))
			continue;
		recv_label(g, s, name, sizeof name);
		printf("acdc_stage %d %s %.6f", s, name, base[s]);
		for (int k = 0; k < NK; k++)
			printf(" %.6f %.4f", tt[k][s], tt[k][s] / bk[k][s]);
		printf("\n");
	}
	printf("acdc_all %lld %.3f", (long long)g->n_edges, totb);
	for (int k = 0; k < NK; k++)
		printf(" %.3f %.4f", tot[k], tot[k] / totbk[k]);
	printf("\n");
	printf("acdc_worst");
	for (int k = 0; k < NK; k++) {
		double w = 0;
		int ws = 0;
		for (int s = 0; s < S; s++)
			if (tt[k][s] / bk[k][s] > w)
				w = tt[k][s] / bk[k][s], ws = s;
		printf(" %s %.3f %d", kname[k], w, ws);
	}
	printf("\n");
	for (int k = 0; k < NK; k++) {
		free(tt[k]);
		free(bk[k]);
	}
	free(base);
	free(out);
	free(keep);
	free(all);
	circ_patcher_free(p);
	circ_batch_free(b);
	circ_graph_free(g);
}

/* (2b) acdc-loop: REPS tests of one kind (or, kind -1, unpatched forwards)
 * at stage s, for a profiler (perf record -- attrib_bench acdc-loop ...). */
static void do_acdc_loop(circ_model *m, int threads, int reps, int N, int s, int kind)
{
	const circ_config *c = circ_model_config(m);
	circ_error e;
	circ_graph *g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	circ_batch *b;
	circ_patcher *p;
	double *out = circ_xmalloc((size_t)N * sizeof *out), t;
	uint8_t *keep;
	if (!g)
		die("acdc-loop", &e);
	if (s < 0 || s > 2 * c->n_layer || kind < -1 || kind >= NK) {
		fprintf(stderr, "attrib_bench: acdc-loop STAGE in 0..%d, KIND in -1..%d\n",
			2 * c->n_layer, NK - 1);
		exit(2);
	}
	p = one_batch_patcher(m, g, threads, N, &b);
	keep = circ_xmalloc((size_t)g->n_edges);
	memset(keep, 1, (size_t)g->n_edges);
	if (kind >= 0)
		acdc_mask(g, p, s, kind, keep, g->recv_first[recv_at_stage(g, s)]);
	time_eval(p, keep, s, -1, 1, out);
	t = time_eval(p, keep, s, -1, reps, out);
	printf("acdc_loop %d %s %.6f\n", s, kind < 0 ? "forward" : kname[kind], t);
	free(out);
	free(keep);
	circ_patcher_free(p);
	circ_batch_free(b);
	circ_graph_free(g);
}

/* (3) acdc-tau: single-edge KL changes of the top receivers (ACDC's first
 * tests, made from the whole graph, where the loss is 0). ACDC tests the
 * edges into logits from the whole graph but for the input's, which comes
 * last: with tau below the least change of a head or MLP into logits it
 * keeps all of those, and every receiver is then tested. The input node
 * has no receivers, so its own edge does not count (with resampling at
 * other positions than the read one it changes nothing: the least of all
 * is rounding). */
static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void do_acdc_tau(circ_model *m, int threads, int N)
{
	const circ_config *c = circ_model_config(m);
	circ_error e;
	circ_graph *g = circ_graph_new(c->n_layer, c->n_head, CIRC_LEVEL_EDGE, &e);
	circ_patcher *p;
	circ_batch *b;
	int L = c->n_layer;
	double *out = circ_xmalloc((size_t)N * sizeof *out), *ch;
	char name[CIRC_NAME_MAX];
	if (!g)
		die("acdc-tau", &e);
	p = metric_patcher(m, g, threads, N, CIRC_METRIC_KL, &b);
	ch = circ_xmalloc((size_t)g->n_up * sizeof *ch);
	for (int k = 0; k < 2; k++) {
		int r = recv_at_stage(g, 2 * L - k), n = circ_graph_recv_n_in(g, r);
		for (int u = 0; u < n; u++) {
			double sum = 0;
			if (circ_patcher_eval_edge(p, g->recv_first[r] + u, out, &e) < 0)
				die("acdc-tau", &e);
			for (int i = 0; i < N; i++)
				sum += out[i];
			ch[u] = sum / N;
		}
		circ_graph_recv_name(g, r, name, sizeof name);
		printf("acdc_tau_input %s %.6g\n", name, ch[0]);
		/* the heads and MLPs (u >= 1) */
		qsort(ch + 1, (size_t)n - 1, sizeof *ch, cmp_double);
		printf("acdc_tau_recv %s %d %.6g %.6g %.6g %.6g\n", name, n - 1, ch[1],
		       ch[1 + (n - 1) / 20], ch[1 + (n - 1) / 2], ch[n - 1]);
		if (k == 0)
			printf("acdc_tau_min %.6g\n", ch[1]);
	}
	free(ch);
	free(out);
	circ_patcher_free(p);
	circ_batch_free(b);
	circ_graph_free(g);
}

int main(int argc, char **argv)
{
	circ_error e;
	circ_model *m;
	int threads, reps, N;
	if (argc == 3 && !strcmp(argv[1], "make"))
		return do_make(argv[2]);
	if (argc < 6) {
		fprintf(stderr, "usage: attrib_bench make DIR\n"
				"       attrib_bench base|eap|exact|acdc|acdc-tau MODEL THREADS REPS N "
				"[SCORES]\n"
				"       attrib_bench acdc-loop MODEL THREADS REPS N STAGE KIND\n");
		return 2;
	}
	threads = atoi(argv[3]);
	reps = atoi(argv[4]);
	N = atoi(argv[5]);
	if (threads < 1 || reps < 1 || N < 1) {
		fprintf(stderr, "attrib_bench: THREADS, REPS and N must be positive\n");
		return 2;
	}
	m = circ_model_open(argv[2], NULL, &e);
	if (!m)
		die(argv[2], &e);
	if (!strcmp(argv[1], "base"))
		do_base(m, threads, reps, N);
	else if (!strcmp(argv[1], "eap"))
		do_eap(m, threads, reps, N, argc > 6 ? argv[6] : NULL);
	else if (!strcmp(argv[1], "exact"))
		do_exact(m, threads, reps, N);
	else if (!strcmp(argv[1], "acdc"))
		do_acdc(m, threads, reps, N);
	else if (!strcmp(argv[1], "acdc-loop") && argc == 8)
		do_acdc_loop(m, threads, reps, N, atoi(argv[6]), atoi(argv[7]));
	else if (!strcmp(argv[1], "acdc-tau"))
		do_acdc_tau(m, threads, N);
	else {
		fprintf(stderr, "attrib_bench: unknown mode '%s'\n", argv[1]);
		return 2;
	}
	printf("rss_kb %ld\n", peak_rss_kib());
	circ_model_free(m);
	return 0;
}
