/*
 * gemm_bt_bench: the stage score products of EAP on the Llama-3.2-1B shape,
 * circ_gemm_bt_long against circ_gemm_bt_bcast side by side on one thread:
 * S (m, n) = D (m, k) G (n, k)^T with k = T*C = 32 * 2048, D's rows and G's
 * rows 2 k floats apart (two examples; the run's are B*T*C apart), for m =
 * 33, 265, 529 upstream nodes and n = 96 (a layer's q, k, v receivers) or 1
 * (an MLP). Each product runs on both examples in turn. Then n = 96 with the
 * n = 1 product of the stage above in one pass (circ_gemm_bt_bcast_dot)
 * against the two passes.
 *
 * Usage: gemm_bt_bench [REPS]   (default 3; the best of REPS)
 * Output: "m M n N old_gflops X new_gflops Y ratio R max_rel_diff E" lines,
 * and "m M n N+1 two_passes_s S one_pass_s S ratio R" ones.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels.h"
#include "rng.h"

typedef void (*bt_fn)(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		      float *c, int ldc);

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best seconds of reps runs of f over both examples. */
static double best_time(bt_fn f, int reps, int m, int n, int k, const float *d, const float *g,
			float *s)
{
	double best = 1e30;
	for (int r = 0; r < reps; r++) {
		double t0 = now(), t;
		for (int b = 0; b < 2; b++)
			f(m, n, k, d + (size_t)b * k, 2 * k, g + (size_t)b * k, 2 * k,
			  s + (size_t)b * m * n, n);
		t = now() - t0;
		if (t < best)
			best = t;
	}
	return best;
}

static void bcast_dot(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		      float *c, int ldc)
{
	/* the single receiver's row: b's row n (the test's data has NMAX rows) */
	static float c1[1024];
	circ_gemm_bt_bcast_dot(m, n, k, a, lda, b, ldb, c, ldc, b + (size_t)n * ldb, c1);
}

int main(int argc, char **argv)
{
	enum { K = 32 * 2048, MMAX = 529, NMAX = 97 };
	int reps = argc > 1 ? atoi(argv[1]) : 3, ms[] = {33, 265, 529}, ns[] = {96, 1};
	size_t ld = 2 * (size_t)K;
	float *d = circ_xmalloc_aligned((size_t)MMAX * ld * sizeof *d),
	      *g = circ_xmalloc_aligned((size_t)NMAX * ld * sizeof *g),
	      *s1 = circ_xmalloc(2 * (size_t)MMAX * NMAX * sizeof *s1),
	      *s2 = circ_xmalloc(2 * (size_t)MMAX * NMAX * sizeof *s2);
	circ_rng rng;
	circ_rng_seed(&rng, 7);
	for (size_t i = 0; i < (size_t)MMAX * ld; i++)
		d[i] = (float)circ_rng_uniform(&rng) - 0.5f;
	for (size_t i = 0; i < (size_t)NMAX * ld; i++)
		g[i] = (float)circ_rng_uniform(&rng) - 0.5f;
	for (size_t mi = 0; mi < sizeof ms / sizeof *ms; mi++)
		for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
			int m = ms[mi], n = ns[ni];
			double flop = 2.0 * 2 * m * n * K, t_old, t_new, err = 0;
			t_old = best_time(circ_gemm_bt_long, reps, m, n, K, d, g, s1);
			t_new = best_time(circ_gemm_bt_bcast, reps, m, n, K, d, g, s2);
			for (size_t i = 0; i < 2 * (size_t)m * n; i++) {
				double e = fabs((double)s1[i] - s2[i]) / (1 + fabs((double)s1[i]));
				err = e > err ? e : err;
			}
			printf("m %d n %d old_gflops %.1f new_gflops %.1f ratio %.2f max_rel_diff "
			       "%.2g\n",
			       m, n, flop / t_old * 1e-9, flop / t_new * 1e-9, t_old / t_new, err);
			if (n > 1) {
				/* with the matrix-vector product of the stage above, in one pass */
				double t1 = best_time(circ_gemm_bt_bcast, reps, m, 1, K, d, g, s1),
				       t2 = best_time(bcast_dot, reps, m, n, K, d, g, s2);
				printf("m %d n %d+1 two_passes_s %.4f one_pass_s %.4f ratio %.2f\n", m,
				       n, t_new + t1, t2, (t_new + t1) / t2);
			}
			fflush(stdout);
		}
	free(d), free(g), free(s1), free(s2);
	return 0;
}
