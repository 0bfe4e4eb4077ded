/*
 * model_bench: times circ's GPT-2 forward and backward on a GPT-2-small
 * shaped model (bench/model.sh runs it beside bench/torch_model.py and
 * prints the ratios).
 *
 * Usage: model_bench MODEL_DIR THREADS REPS [B T]
 *        model_bench --make DIR   (writes the random GPT-2-small model)
 * Prints one line per measurement, "name seconds(min) seconds(median)
 * gflop", then "sgemm <seconds> <gflop>" for plain sgemm calls of exactly
 * the forward's matrix shapes, and "rss_kb <peak RSS>".
 *
 * Measurements (B prompts of T tokens, default 32 x 16):
 *   fwd_full        forward, logits at every position (keep_nodes 1: every
 *                   head's output kept, as patching needs)
 *   fwd_full_fused  the same without per-head outputs (keep_nodes 0)
 *   fwd_last        forward, logits at the last position only
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

static void report(const char *name, double *t, int n, double gflop)
{
	qsort(t, (size_t)n, sizeof *t, cmpd);
	printf("%s %.6f %.6f %.3f\n", name, t[0], t[n / 2], gflop);
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
		circ_bwd b = {0};
		for (int i = 0; i < n; i++)
			circ_mt_logprob(lg + (size_t)i * c->vocab_size, c->vocab_size, 11,
					j->dl + (size_t)i * c->vocab_size);
		b.dlogits = j->dl;
		if (circ_backward(j->r, &b, &e) < 0) {
			fprintf(stderr, "model_bench: %s\n", e.msg);
			exit(1);
		}
	}
}

static void time_job(const char *name, job *j, int reps, double gflop)
{
	double *t = circ_xcalloc((size_t)reps, sizeof *t);
	run_job(j); /* warm-up: page faults, OpenBLAS buffers */
	for (int i = 0; i < reps; i++) {
		double t0 = circ_now();
		run_job(j);
		t[i] = circ_now() - t0;
	}
	report(name, t, reps, gflop);
	free(t);
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
	if (argc >= 6) {
		B = atoi(argv[4]);
		T = atoi(argv[5]);
	}
	m = circ_model_open(argv[1], NULL, &e);
	if (!m) {
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
	/* plain sgemm of the full forward's shapes (same thread count) */
	if (!only || strstr(only, "sgemm,")) {
		size_t mx = (size_t)(F > 3 * C ? F : 3 * C);
		float *A = circ_xalloc_aligned((size_t)n * mx * 4),
		      *Bm = circ_xalloc_aligned(mx * C * 4);
		float *Cm = circ_xalloc_aligned((size_t)n * (size_t)V * 4);
		const float *wte = circ_model_weights(m)->wte;
		double *t = circ_xcalloc((size_t)reps, sizeof *t);
		for (size_t i = 0; i < (size_t)n * mx; i++)
			A[i] = 0.01f * (float)(i % 13);
		for (size_t i = 0; i < mx * C; i++)
			Bm[i] = 0.01f * (float)(i % 7);
		circ_blas_threads(threads);
		for (int rep = -1; rep < reps; rep++) {
			double t0 = circ_now();
			for (int l = 0; l < L; l++) {
				circ_gemm(0, 0, (int)n, 3 * C, C, 1, A, C, Bm, 3 * C, 0, Cm, 3 * C);
				circ_gemm(0, 0, (int)n, C, C, 1, A, C, Bm, C, 0, Cm, C);
				circ_gemm(0, 0, (int)n, F, C, 1, A, C, Bm, F, 0, Cm, F);
				circ_gemm(0, 0, (int)n, C, F, 1, A, F, Bm, C, 0, Cm, C);
			}
			circ_gemm(0, 1, (int)n, V, C, 1, A, C, wte, C, 0, Cm, V);
			if (rep >= 0)
				t[rep] = circ_now() - t0;
		}
		report("sgemm", t, reps, (L * layer + head_full) / 1e9);
		free(A), free(Bm), free(Cm), free(t);
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
