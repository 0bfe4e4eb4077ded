/*
 * model_bench: times circ's GPT-2 forward and backward on a GPT-2-small
 * shaped model (bench/model.sh runs it beside bench/torch_model.py and
 * prints the ratios).
 *
 * Usage: model_bench MODEL_DIR THREADS REPS [B T]
 *        model_bench --make DIR   (writes the random GPT-2-small model)
 * Prints one line per measurement, "name wall(min) wall(median) gflop
 * cpu(min)" (seconds; cpu is the process's CPU time, which a shared machine
 * disturbs less than wall time when THREADS is 1), then the same for
 * "sgemm": plain sgemm calls of exactly the forward's matrix shapes, timed
 * after every measured run and reported as the best over all of them (so it
 * saw the same machine), and "rss_kb <peak RSS>".
 *
 * GPT-2's f32 weights are packed for circ's panel kernels from the first
 * forward (CIRC_PACK_AT=1 unless set; a command packs after 16 forwards),
 * so the forwards below are those of a long command; the results are the
 * same bits either way.
 *
 * Measurements (B prompts of T tokens, default 32 x 16):
 *   fwd_full        forward, logits at every position (keep_nodes 1: every
 *                   head's output kept, as patching needs)
 *   fwd_last        forward, logits at the last position only (keep_nodes 1)
 *   fwd_full_fused  forward, full logits, without per-head outputs
 *                   (keep_nodes 0: the forward circ-forward runs)
 *   fwd_last_fused  the same with logits at the last position only
 *   fwd_bwd         forward (last position) + backward to every receiver
 *                   (q, k, v of each head, each MLP, logits) and node,
 *                   starting from a logprob metric's gradient
 *   fwd_bwd_nodes   the same keeping only node (residual) gradients
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "kernels.h"
#include "metric.h"
#include "model.h"
#include "rng.h"
#include "util.h"

static int cmpd(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void report(const char *name, double *t, double *cpu, int n, double gflop)
{
	qsort(t, (size_t)n, sizeof *t, cmpd);
	qsort(cpu, (size_t)n, sizeof *cpu, cmpd);
	printf("%s %.6f %.6f %.3f %.6f\n", name, t[0], t[n / 2], gflop, cpu[0]);
	fflush(stdout);
}

typedef struct job {
	circ_run *r;
	circ_fwd f;
	int backward;
	float *dl;
} job;

static void run_job(job *j)
{
	circ_error e;
	if (circ_forward(j->r, &j->f, &e) < 0) {
		fprintf(stderr, "model_bench: %s\n", e.msg);
		exit(1);
	}
	if (j->backward) {
		const circ_config *c = circ_model_config(circ_run_model(j->r));
		int n;
		const float *lg = circ_run_logits(j->r, &n);
		const int32_t ans = 11;
		circ_bwd b = {0};
		for (int i = 0; i < n; i++)
			circ_metric_logprob(lg + (size_t)i * c->vocab_size, c->vocab_size, &ans, 1, 1,
					NULL, j->dl + (size_t)i * c->vocab_size);
		b.dlogits = j->dl;
		if (circ_backward(j->r, &b, &e) < 0) {
			fprintf(stderr, "model_bench: %s\n", e.msg);
			exit(1);
		}
	}
}

/* The plain-sgemm baseline: the forward's matrix shapes, run after every
 * timed job so that it sees the same machine conditions (the machine is
 * shared); its best time over the whole run is reported. */
static struct {
	int on, L, n, C, F, V;
	float *A, *Bm, *Cm;
	const float *wte;
	double best, best_cpu;
	int threads; /* OpenBLAS's own threads (circ's runs set it to 1) */
} sg;

static void sgemm_set(void)
{
	double t0, c0, t, ct;
	circ_blas_threads(sg.threads);
	t0 = circ_now();
	c0 = 0;
	{
		struct timespec ts;
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
		c0 = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
	}
	for (int l = 0; l < sg.L; l++) {
		circ_gemm(0, 0, sg.n, 3 * sg.C, sg.C, 1, sg.A, sg.C, sg.Bm, 3 * sg.C, 0, sg.Cm,
			  3 * sg.C);
		circ_gemm(0, 0, sg.n, sg.C, sg.C, 1, sg.A, sg.C, sg.Bm, sg.C, 0, sg.Cm, sg.C);
		circ_gemm(0, 0, sg.n, sg.F, sg.C, 1, sg.A, sg.C, sg.Bm, sg.F, 0, sg.Cm, sg.F);
		circ_gemm(0, 0, sg.n, sg.C, sg.F, 1, sg.A, sg.F, sg.Bm, sg.C, 0, sg.Cm, sg.C);
	}
	circ_gemm(0, 1, sg.n, sg.V, sg.C, 1, sg.A, sg.C, sg.wte, sg.C, 0, sg.Cm, sg.V);
	t = circ_now() - t0;
	{
		struct timespec ts;
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
		ct = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec - c0;
	}
	if (sg.best == 0 || t < sg.best)
		sg.best = t;
	if (sg.best_cpu == 0 || ct < sg.best_cpu)
		sg.best_cpu = ct;
}

static void time_job(const char *name, job *j, int reps, double gflop)
{
	double *t = circ_xcalloc((size_t)reps, sizeof *t),
	       *cpu = circ_xcalloc((size_t)reps, sizeof *cpu);
	run_job(j); /* warm-up: page faults, OpenBLAS buffers */
	for (int i = 0; i < reps; i++) {
		double t0 = circ_now(), c0 = cpu_now();
		run_job(j);
		t[i] = circ_now() - t0;
		cpu[i] = cpu_now() - c0;
		if (sg.on)
			sgemm_set();
	}
	report(name, t, cpu, reps, gflop);
	free(t);
	free(cpu);
}

int main(int argc, char **argv)
{
	circ_error e;
	circ_model *m;
	const circ_config *c;
	int threads, reps, B = 32, T = 16;
	if (argc == 3 && !strcmp(argv[1], "--make")) {
		circ_config gc = {12, 12, 768, 1024, 50257, 3072, 1e-5, CIRC_ACT_GELU_NEW};
		if (circ_model_write_random(argv[2], &gc, 1234, "F32", &e) < 0) {
			fprintf(stderr, "model_bench: %s\n", e.msg);
			return 1;
		}
		return 0;
	}
	if (argc < 4) {
		fprintf(stderr, "usage: model_bench MODEL_DIR THREADS REPS [B T]\n");
		return 2;
	}
	threads = atoi(argv[2]);
	reps = atoi(argv[3]);
	/* the forward of a long command (ACDC, many batches): the weights
	 * packed from the first forward on, not after 16 (circ(1)) */
	setenv("CIRC_PACK_AT", getenv("CIRC_PACK_AT") ? getenv("CIRC_PACK_AT") : "1", 1);
	if (argc >= 6) {
		B = atoi(argv[4]);
		T = atoi(argv[5]);
	}
	m = circ_model_open(argv[1], NULL, &e);
	if (!m) {
		fprintf(stderr, "model_bench: %s\n", e.msg);
		return 1;
	}
	/* BENCH_COMPUTE=bf16: the weights' products in bf16 (--compute bf16) */
	if (getenv("BENCH_COMPUTE") && !strcmp(getenv("BENCH_COMPUTE"), "bf16") &&
	    circ_model_set_compute(m, CIRC_COMPUTE_BF16, &e) < 0) {
		fprintf(stderr, "model_bench: %s\n", e.msg);
		return 1;
	}
	c = circ_model_config(m);
	int L = c->n_layer, C = c->n_embd, F = c->n_inner, V = c->vocab_size;
	double n = (double)B * T;
	double layer = 2.0 * n * ((double)C * 3 * C + (double)C * C + 2.0 * C * F);
	double attn = 2.0 * 2.0 * B * c->n_head * ((double)T * (T + 1) / 2) * (C / c->n_head);
	double fwd_body = L * (layer + attn), head_full = 2.0 * n * C * V,
	       head_last = 2.0 * B * C * V;
	/* backward to inputs only: one matmul per forward matmul, plus the
	 * per-receiver q/k/v projections (as many flops as the fused one) */
	double bwd = L * (layer + 2.0 * n * C * 3 * C + 2 * attn) + head_last;

	int32_t *tok = circ_xcalloc((size_t)B * T, sizeof *tok);
	circ_rng rng;
	circ_rng_seed(&rng, 1);
	for (int i = 0; i < B * T; i++)
		tok[i] = (int32_t)circ_rng_below(&rng, (uint64_t)V);
	float *dl = circ_xcalloc((size_t)B * V, sizeof *dl);

	circ_run_opts ro;
	circ_run_opts_default(&ro);
	ro.threads = threads;
	const char *only = getenv("BENCH_ONLY");
	if (!only || strstr(only, "sgemm,")) {
		size_t mx = (size_t)(F > 3 * C ? F : 3 * C);
		sg.on = 1;
		sg.L = L, sg.n = (int)n, sg.C = C, sg.F = F, sg.V = V;
		sg.A = circ_xalloc_aligned((size_t)n * mx * 4);
		sg.Bm = circ_xalloc_aligned(mx * C * 4);
		sg.Cm = circ_xalloc_aligned((size_t)n * (size_t)V * 4);
		sg.wte = circ_model_weights(m)->wte;
		for (size_t i = 0; i < (size_t)n * mx; i++)
			sg.A[i] = 0.01f * (float)(i % 13);
		for (size_t i = 0; i < mx * C; i++)
			sg.Bm[i] = 0.01f * (float)(i % 7);
		sg.threads = threads;
		sgemm_set(); /* warm-up */
		sg.best = sg.best_cpu = 0;
	}

	/* forward variants */
	{
		circ_run *r = circ_run_new(m, B, T, &ro, &e);
		job j = {r, {0}, 0, dl};
		circ_fwd_init(&j.f);
		j.f.tokens = tok;
		j.f.B = B;
		j.f.T = T;
		j.f.read = CIRC_READ_ALL;
		if (!only || strstr(only, "fwd_full,"))
			time_job("fwd_full", &j, reps, (fwd_body + head_full) / 1e9);
		j.f.read = CIRC_READ_LAST;
		if (!only || strstr(only, "fwd_last,"))
			time_job("fwd_last", &j, reps, (fwd_body + head_last) / 1e9);
		circ_run_free(r);
		ro.keep_nodes = 0;
		r = circ_run_new(m, B, T, &ro, &e);
		j.r = r;
		j.f.read = CIRC_READ_ALL;
		if (!only || strstr(only, "fwd_full_fused,"))
			time_job("fwd_full_fused", &j, reps, (fwd_body + head_full) / 1e9);
		j.f.read = CIRC_READ_LAST;
		if (!only || strstr(only, "fwd_last_fused,"))
			time_job("fwd_last_fused", &j, reps, (fwd_body + head_last) / 1e9);
		circ_run_free(r);
		ro.keep_nodes = 1;
	}
	/* forward + backward */
	{
		circ_run *r;
		job j = {NULL, {0}, 1, dl};
		ro.backward = 1;
		r = circ_run_new(m, B, T, &ro, &e);
		j.r = r;
		circ_fwd_init(&j.f);
		j.f.tokens = tok;
		j.f.B = B;
		j.f.T = T;
		if (!only || strstr(only, "fwd_bwd,"))
			time_job("fwd_bwd", &j, reps, (fwd_body + head_last + bwd) / 1e9);
		circ_run_free(r);
		ro.keep_recv_grads = 0;
		r = circ_run_new(m, B, T, &ro, &e);
		j.r = r;
		if (!only || strstr(only, "fwd_bwd_nodes,"))
			time_job("fwd_bwd_nodes", &j, reps,
				 (fwd_body + head_last + bwd - L * 2.0 * n * C * 3 * C) / 1e9);
		circ_run_free(r);
	}
	if (sg.on) {
		printf("sgemm %.6f %.6f %.3f %.6f\n", sg.best, sg.best,
		       (L * layer + head_full) / 1e9, sg.best_cpu);
		free(sg.A), free(sg.Bm), free(sg.Cm);
	}
	{
		struct rusage ru;
		getrusage(RUSAGE_SELF, &ru);
		printf("rss_kb %ld\n", ru.ru_maxrss);
	}
	free(tok);
	free(dl);
	circ_model_free(m);
	return 0;
}
