/*
 * test_bf16: the bf16 compute path (kernels_bf16.c, model_bf16.c).
 *   - circ_round_bf16 (vectorised) against circ_f32_to_bf16 bit for bit,
 *     specials (NaN, infinities, ties, subnormals) and tails included;
 *   - circ_gemm_bf16 (oneDNN) against circ_gemm_bf16_ref (the same
 *     roundings, sums in double) on awkward shapes, both layouts of b,
 *     beta 0 and 1, strided a and c, k over the slice length: within
 *     1e-6 * k of the scale of the row (measured about 1e-7 * k);
 *   - the bits of a product do not depend on the block of rows or columns
 *     it is computed in (what model.c's splitting over threads relies on);
 *   - a model's bf16 forward: the same bits for 1 and 3 threads and with
 *     a zero delta on some q/k/v receivers (their columns computed on
 *     their own, as a patched forward does), within 3% of the f32 logits;
 *     circ_model_set_compute back to f32 gives the f32 bits again.
 * Where this CPU cannot run bf16 (circ_bf16_check fails) only the rounding
 * and the refusal's message are tested.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "util.h"
#include "check.h"

static circ_rng rng;

static float frand(double scale)
{
	return (float)(circ_rng_normal(&rng) * scale);
}

static void test_round(void)
{
	float v[1000];
	uint16_t got[1000];
	uint32_t specials[] = {0x7fc00000u, 0x7f800001u, 0xff800000u, 0x7f800000u,
			       0x00000001u, 0x80000010u, 0x3f808000u, 0x3f818000u,
			       0x3f80ffffu, 0x7f7fffffu, 0x00800000u, 0xffffffffu};
	for (size_t i = 0; i < 1000; i++)
		v[i] = frand(i % 3 ? 1.0 : 1e-30);
	for (size_t i = 0; i < sizeof specials / sizeof *specials; i++)
		memcpy(&v[100 + 17 * i], &specials[i], 4);
	for (size_t n = 0; n <= 1000; n += n < 40 ? 1 : 137) {
		int bad = 0;
		circ_round_bf16(got, v, n);
		for (size_t i = 0; i < n; i++)
			bad |= got[i] != circ_f32_to_bf16(v[i]);
		CHECK(!bad);
	}
}

static void test_refusal_message(void)
{
	circ_error e;
	if (circ_bf16_check(&e) == 0)
		return;
	CHECK(strstr(e.msg, "bf16 compute") != NULL);
	printf("test_bf16: bf16 compute unavailable here (%s): products not tested\n", e.msg);
}

/* max over rows of max |c - ref| / max |ref| of the row */
static double row_err(const float *c, const float *ref, int m, int n, int ldc)
{
	double worst = 0;
	for (int i = 0; i < m; i++) {
		double mx = 1e-30, err = 0;
		for (int j = 0; j < n; j++) {
			double r = ref[(size_t)i * ldc + j], d = fabs(c[(size_t)i * ldc + j] - r);
			mx = fabs(r) > mx ? fabs(r) : mx;
			err = d > err || isnan(d) ? (isnan(d) ? INFINITY : d) : err;
		}
		worst = err / mx > worst ? err / mx : worst;
	}
	return worst;
}

static void test_gemm(void)
{
	static const int shapes[][3] = {{1, 1, 1},     {5, 7, 3},	{37, 53, 100},
					{64, 96, 768}, {33, 130, 1000}, {17, 40, 3072}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
		for (int tb = 0; tb < 2; tb++)
			for (int bz = 0; bz < 2; bz++) {
				int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
				int lda = k + 3, ldc = n + 5, ldb = tb ? k + 2 : n + 1;
				float *a = circ_xalloc_aligned((size_t)m * lda * 4);
				uint16_t *b = circ_xalloc_aligned((size_t)(tb ? n : k) * ldb * 2);
				float *c = circ_xalloc_aligned((size_t)m * ldc * 4);
				float *r = circ_xalloc_aligned((size_t)m * ldc * 4);
				double err;
				for (size_t i = 0; i < (size_t)m * lda; i++)
					a[i] = frand(1.0);
				for (size_t i = 0; i < (size_t)(tb ? n : k) * ldb; i++)
					b[i] = circ_f32_to_bf16(frand(0.05));
				for (size_t i = 0; i < (size_t)m * ldc; i++)
					c[i] = r[i] = frand(1.0);
				circ_gemm_bf16(tb, m, n, k, a, lda, b, ldb, bz ? 1.0f : 0.0f, c,
					       ldc);
				circ_gemm_bf16_ref(tb, m, n, k, a, lda, b, ldb, bz ? 1.0f : 0.0f, r,
						   ldc);
				err = row_err(c, r, m, n, ldc);
				if (err > 1e-6 * k + 1e-7)
					fprintf(stderr, "gemm_bf16 %dx%dx%d tb %d beta %d: %.3g\n",
						m, n, k, tb, bz, err);
				CHECK(err <= 1e-6 * k + 1e-7);
				free(a);
				free(b);
				free(c);
				free(r);
			}
}

/* the product of a block of rows or columns has the bits of the whole */
static void test_blocks(void)
{
	static const int shapes[][4] = {
	    {96, 2304, 768, 0}, {64, 768, 3072, 0}, {80, 1000, 2048, 1}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
		int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], tb = shapes[s][3];
		int ldb = tb ? k : n;
		float *a = circ_xalloc_aligned((size_t)m * k * 4);
		uint16_t *b = circ_xalloc_aligned((size_t)k * n * 2);
		float *c = circ_xalloc_aligned((size_t)m * n * 4);
		float *d = circ_xalloc_aligned((size_t)m * n * 4);
		for (size_t i = 0; i < (size_t)m * k; i++)
			a[i] = frand(1.0);
		for (size_t i = 0; i < (size_t)k * n; i++)
			b[i] = circ_f32_to_bf16(frand(0.05));
		circ_gemm_bf16(tb, m, n, k, a, k, b, ldb, 0.0f, c, n);
		for (int w = 16; w <= n; w *= 4) { /* column blocks of w */
			memset(d, 0, (size_t)m * n * 4);
			for (int j = 0; j < n; j += w)
				circ_gemm_bf16(tb, m, n - j < w ? n - j : w, k, a, k,
					       tb ? b + (size_t)j * k : b + j, ldb, 0.0f, d + j, n);
			if (memcmp(c, d, (size_t)m * n * 4))
				fprintf(stderr, "blocks of %dx%dx%d differ\n", m, n, k);
			CHECK(!memcmp(c, d, (size_t)m * n * 4));
		}
		for (int h = 7; h <= m; h *= 3) { /* row blocks of h */
			memset(d, 0, (size_t)m * n * 4);
			for (int i = 0; i < m; i += h)
				circ_gemm_bf16(tb, m - i < h ? m - i : h, n, k, a + (size_t)i * k,
					       k, b, ldb, 0.0f, d + (size_t)i * n, n);
			if (memcmp(c, d, (size_t)m * n * 4))
				fprintf(stderr, "blocks of %dx%dx%d differ\n", m, n, k);
			CHECK(!memcmp(c, d, (size_t)m * n * 4));
		}
		free(a);
		free(b);
		free(c);
		free(d);
	}
}

/* At layer 1's attention: a zero delta on the q, k and v receivers of
 * head 1, so those receivers' columns are computed on their own. */
static int zero_delta(void *ctx, circ_run *r, int stage, circ_error *e)
{
	const circ_model *m = circ_run_model(r);
	(void)ctx;
	(void)e;
	if (stage == 2)
		for (int k = 0; k < 3; k++)
			circ_run_delta(r,
				       circ_recv_qkv(m, 1, 1, (circ_recv_kind)(CIRC_RECV_Q + k)));
	return 0;
}

static float *forward_hook(circ_model *m, int threads, const int32_t *tok, int B, int T,
			   int patched)
{
	circ_error e;
	circ_run_opts ro;
	circ_fwd f;
	circ_run *r;
	float *out = circ_xmalloc((size_t)B * T * circ_model_config(m)->vocab_size * 4);
	circ_run_opts_default(&ro);
	ro.threads = threads;
	r = circ_run_new(m, B, T, &ro, &e);
	CHECK_MSG(r != NULL, e);
	circ_fwd_init(&f);
	f.tokens = tok;
	f.B = B;
	f.T = T;
	f.read = CIRC_READ_ALL;
	if (patched)
		f.hook = zero_delta;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	memcpy(out, circ_run_logits(r, NULL), (size_t)B * T * circ_model_config(m)->vocab_size * 4);
	circ_run_free(r);
	return out;
}

static float *forward(circ_model *m, int threads, const int32_t *tok, int B, int T)
{
	return forward_hook(m, threads, tok, B, T, 0);
}

static void test_model(void)
{
	circ_error e;
	circ_config c = {4, 4, 256, 64, 1000, 1024, 1e-5, CIRC_ACT_GELU_NEW};
	char dir[64], cmd[128];
	circ_model *m;
	int B = 3, T = 40;
	size_t nl = (size_t)B * T * 1000;
	int32_t tok[120];
	float *f32, *b1, *b3, *bp, *again;
	double err = 0, mx = 0;
	snprintf(dir, sizeof dir, "/tmp/circ-test-bf16-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		failures++;
		return;
	}
	CHECK_MSG(circ_model_write_random(dir, &c, 7, "F32", &e) == 0, e);
	m = circ_model_open(dir, NULL, &e);
	CHECK_MSG(m != NULL, e);
	for (int i = 0; i < B * T; i++)
		tok[i] = (int32_t)circ_rng_below(&rng, 1000);
	f32 = forward(m, 2, tok, B, T);
	CHECK_MSG(circ_model_set_compute(m, CIRC_COMPUTE_BF16, &e) == 0, e);
	CHECK(circ_model_compute(m) == CIRC_COMPUTE_BF16);
	b1 = forward(m, 1, tok, B, T);
	b3 = forward(m, 3, tok, B, T);
	CHECK(!memcmp(b1, b3, nl * 4));
	bp = forward_hook(m, 2, tok, B, T, 1);
	CHECK(!memcmp(b1, bp, nl * 4));
	for (size_t i = 0; i < nl; i++) {
		err = fabs(b1[i] - f32[i]) > err ? fabs(b1[i] - f32[i]) : err;
		mx = fabs(f32[i]) > mx ? fabs(f32[i]) : mx;
	}
	printf("test_bf16: model forward, bf16 against f32: max |diff| %.3g of max |logit| %.3g\n",
	       err, mx);
	CHECK(err > 0 && err < 0.03 * mx);
	CHECK_MSG(circ_model_set_compute(m, CIRC_COMPUTE_F32, &e) == 0, e);
	again = forward(m, 2, tok, B, T);
	CHECK(!memcmp(again, f32, nl * 4));
	circ_model_free(m);
	free(f32);
	free(b1);
	free(b3);
	free(bp);
	free(again);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	CHECK(system(cmd) == 0);
}

int main(void)
{
	circ_rng_seed(&rng, 11);
	test_round();
	test_refusal_message();
	if (circ_bf16_check(NULL) == 0) {
		test_gemm();
		test_blocks();
		test_model();
	}
	if (failures) {
		fprintf(stderr, "test_bf16: %d failures\n", failures);
		return 1;
	}
	return 0;
}
