/*
 * test_kernels: every fast kernel against its reference twin, on random
 * inputs of awkward sizes (tails that are not a multiple of the vector
 * width, strided rows), and the reference backward kernels against central
 * finite differences of the reference forwards (computed in double through
 * a scalar loss sum(out * g)). Both the AVX2 path and the portable path are
 * tested: the test re-runs itself with CIRC_NO_SIMD=1.
 *
 * Tolerances (relative to the scale of the values):
 *   gemm 2e-6 * sqrt(k); LayerNorm fwd 2e-6, bwd (input and parameter
 *   gradients) 1e-5; bias gradient 1e-5; GELU fwd 1e-6
 *   (tanh) / 4e-7 abs (erf); GELU bwd 2e-6; exp 3e-7 relative; attention
 *   2e-6 fwd, 1e-5 bwd; finite differences 1e-4 relative.
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"
#include "rng.h"
#include "safetensors.h"
#include "util.h"
#include "check.h"

static circ_rng rng;

static float *randv(size_t n, double scale)
{
	float *v = circ_xalloc_aligned(n * sizeof *v);
	for (size_t i = 0; i < n; i++)
		v[i] = (float)(circ_rng_normal(&rng) * scale);
	return v;
}

static float *copyv(const float *a, size_t n)
{
	float *v = circ_xalloc_aligned(n * sizeof *v);
	memcpy(v, a, n * sizeof *v);
	return v;
}

/* max |a - b| / (max |b| + floor) over n; prints when above tol. */
static int close_to(const char *what, const float *a, const float *b, size_t n, double tol,
		    double floor)
{
	double mx = 0, err = 0;
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);
		if (fabs(b[i]) > mx)
			mx = fabs(b[i]);
		if (d > err || isnan(d)) {
			err = isnan(d) ? INFINITY : d;
			at = i;
		}
	}
	err /= mx + floor;
	if (!(err <= tol)) {
		fprintf(stderr, "%s: relative error %.3g > %.3g at %zu (%.9g vs %.9g)\n", what, err,
			tol, at, a[at], b[at]);
		return 0;
	}
	return 1;
}

static void test_gemm(void)
{
	int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 9, 33}, {64, 48, 64}, {5, 130, 3}};
	for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
		for (int ta = 0; ta < 2; ta++)
			for (int tb = 0; tb < 2; tb++) {
				int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
				int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
				float *a = randv((size_t)(ta ? k : m) * lda, 1);
				float *b = randv((size_t)(tb ? n : k) * ldb, 1);
				float *c1 = randv((size_t)m * ldc, 1),
				      *c2 = copyv(c1, (size_t)m * ldc);
				circ_gemm(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c1, ldc);
				circ_gemm_ref(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c2,
					      ldc);
				CHECK(close_to("gemm", c1, c2, (size_t)m * ldc, 2e-6 * sqrt(k), 1));
				circ_gemm(ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c1, ldc);
				circ_gemm_ref(ta, tb, m, n, k, 1, a, lda, b, ldb, 0, c2, ldc);
				CHECK(close_to("gemm beta 0", c1, c2, (size_t)m * ldc,
					       2e-6 * sqrt(k), 1));
				free(a), free(b), free(c1), free(c2);
			}
}

/* Runs fn over every (m, n, k) of the three lists. */
#define FOR_SHAPES(fn, ms, ns, ks)                                                                 \
	for (size_t im = 0; im < sizeof ms / sizeof *ms; im++)                                     \
		for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)                             \
			for (size_t ik = 0; ik < sizeof ks / sizeof *ks; ik++)                     \
	fn(ms[im], ns[in], ks[ik])

static void gemm_acc_case(int m, int n, int k)
{
	int lda = k + 3, ldb = n + 5, ldc = n + 2;
	float *a, *b, *c1, *c2, *c3, *c4, *c5;
	if ((size_t)m * n * k > (size_t)20 << 20)
		return;
	a = randv((size_t)m * lda, 1);
	b = randv((size_t)k * ldb, 1);
	c1 = randv((size_t)m * ldc, 1);
	c2 = copyv(c1, (size_t)m * ldc);
	c3 = copyv(c1, (size_t)m * ldc);
	circ_gemm_acc(m, n, k, a, lda, b, ldb, c1, ldc);
	circ_gemm_ref(0, 0, m, n, k, 1, a, lda, b, ldb, 1, c2, ldc);
	CHECK(close_to("gemm_acc", c1, c2, (size_t)m * ldc, 2e-6 * sqrt(k), 1));
	/* the last row alone: the same bits when circ's kernel runs */
	circ_gemm_acc(1, n, k, a + (size_t)(m - 1) * lda, lda, b, ldb, c3 + (size_t)(m - 1) * ldc,
		      ldc);
	if (circ_gemm_acc_fast(n))
		CHECK(!memcmp(c3 + (size_t)(m - 1) * ldc, c1 + (size_t)(m - 1) * ldc,
			      (size_t)n * sizeof *c1));
	c4 = randv((size_t)m * ldc, 1);
	c5 = circ_xcalloc((size_t)m * ldc, sizeof *c5);
	circ_gemm_set(m, n, k, a, lda, b, ldb, c4, ldc);
	circ_gemm_acc(m, n, k, a, lda, b, ldb, c5, ldc);
	memset(c2, 0, (size_t)m * ldc * sizeof *c2);
	circ_gemm_ref(0, 0, m, n, k, 1, a, lda, b, ldb, 0, c2, ldc);
	for (int i = 0; i < m; i++) /* columns past n: untouched */
		for (int j = n; j < ldc; j++)
			c4[(size_t)i * ldc + j] = 0;
	CHECK(close_to("gemm_set", c4, c2, (size_t)m * ldc, 2e-6 * sqrt(k), 1));
	if (circ_gemm_acc_fast(n))
		CHECK(!memcmp(c4, c5, (size_t)m * ldc * sizeof *c4));
	/* circ_gemm_set_add: the same c, and res + c in res */
	{
		float *r1 = randv((size_t)m * ldc, 1), *r2 = copyv(r1, (size_t)m * ldc);
		memset(c5, 0, (size_t)m * ldc * sizeof *c5);
		circ_gemm_set_add(m, n, k, a, lda, b, ldb, c5, ldc, r1, ldc);
		circ_gemm_set(m, n, k, a, lda, b, ldb, c2, ldc);
		for (int i = 0; i < m; i++)
			for (int j = 0; j < n; j++) {
				size_t o = (size_t)i * ldc + j;
				CHECK(c5[o] == c2[o]);
				CHECK(r1[o] == r2[o] + c2[o]);
			}
		free(r1), free(r2);
	}
	free(a), free(b), free(c1), free(c2), free(c3), free(c4), free(c5);
}

/* circ_gemm_bt_bcast (c = a b^T by broadcasts) against the reference,
 * over row counts around its tiles (4, 6 and 8 rows, and single rows),
 * column counts around its 16-wide vectors and 96-wide panels (and n = 1,
 * the matrix-vector product), depths around its chunks of 64. An
 * element's bits must not depend on the rows or (for n > 1) the columns
 * computed with it, nor on the widest panel (1-6 vectors); n = 1 gives circ_gemm_bt_set's bits.
 * circ_gemm_bt_bcast_dot gives the bits of its two products made apart. */
static void gemm_bt_bcast_case(int m, int n, int k)
{
	int lda = k + 3, ldb = k + 5, ldc = n + 2, n2 = n > 2 ? 2 : n;
	float *a = randv((size_t)m * lda, 1), *b = randv((size_t)n * ldb, 1);
	float *c1 = circ_xcalloc((size_t)m * ldc, sizeof *c1),
	      *c2 = circ_xcalloc((size_t)m * ldc, sizeof *c2),
	      *c3 = circ_xcalloc((size_t)m * ldc, sizeof *c3);
	circ_gemm_bt_bcast(m, n, k, a, lda, b, ldb, c1, ldc);
	circ_gemm_ref(0, 1, m, n, k, 1, a, lda, b, ldb, 0, c2, ldc);
	CHECK(close_to("gemm_bt_bcast", c1, c2, (size_t)m * ldc, 2e-6 * sqrt(k), 1));
	/* the last row alone, the last rows from the second, and the last n2
	 * columns alone: the same bits */
	circ_gemm_bt_bcast(1, n, k, a + (size_t)(m - 1) * lda, lda, b, ldb,
			   c3 + (size_t)(m - 1) * ldc, ldc);
	if (m > 1)
		circ_gemm_bt_bcast(m - 1, n, k, a + lda, lda, b, ldb, c3 + ldc, ldc);
	circ_gemm_bt_bcast(1, n2, k, a, lda, b + (size_t)(n - n2) * ldb, ldb, c3 + n - n2, ldc);
	if (circ_gemm_bt_fast(k)) {
		CHECK(!memcmp(c3 + ldc, c1 + ldc, ((size_t)(m - 1) * ldc) * sizeof *c1));
		CHECK(!memcmp(c3 + n - n2, c1 + n - n2, (size_t)n2 * sizeof *c1));
		/* every panel width (the default depends on the L1 cache) */
		for (int v = 1; v <= 6; v++) {
			memset(c3, 0, (size_t)m * ldc * sizeof *c3);
			circ_gemm_bt_bcast_set_vmax(v);
			circ_gemm_bt_bcast(m, n, k, a, lda, b, ldb, c3, ldc);
			circ_gemm_bt_bcast_set_vmax(0);
			CHECK(!memcmp(c3, c1, (size_t)m * ldc * sizeof *c1));
		}
		if (n == 1) {
			circ_gemm_bt_set(m, n, k, a, lda, b, ldb, c3, ldc);
			CHECK(!memcmp(c3, c1, (size_t)m * ldc * sizeof *c1));
		}
	}
	/* with a single row b1 in the same pass: each product's bits alone */
	{
		float *b1 = randv((size_t)k, 3), *d1 = circ_xmalloc((size_t)m * sizeof *d1),
		      *d2 = circ_xmalloc((size_t)m * sizeof *d2);
		memset(c3, 0, (size_t)m * ldc * sizeof *c3);
		circ_gemm_bt_bcast_dot(m, n, k, a, lda, b, ldb, c3, ldc, b1, d1);
		circ_gemm_bt_bcast(m, 1, k, a, lda, b1, k, d2, 1);
		CHECK(!memcmp(c3, c1, (size_t)m * ldc * sizeof *c1));
		CHECK(!memcmp(d1, d2, (size_t)m * sizeof *d1));
		free(b1), free(d1), free(d2);
	}
	free(a), free(b), free(c1), free(c2), free(c3);
}

static void test_gemm_bt_bcast(void)
{
	int ms[] = {1, 3, 4, 5, 7, 8, 9, 13, 33},
	    ns[] = {1, 2, 15, 16, 17, 48, 64, 80, 95, 96, 97, 200}, ks[] = {16, 64, 80, 4112, 10};
	FOR_SHAPES(gemm_bt_bcast_case, ms, ns, ks);
}

/* circ_gemm_acc (c += a b) against the reference, over row counts around
 * the kernel's 6-row blocks (and its 4-, 2- and 1-row tails, and the row
 * count from which it packs b), depths around its 128-deep blocks, and
 * column counts around its 64- and 16-wide blocks (and widths it leaves
 * to OpenBLAS); each row's result must not depend on the rows computed
 * with it. circ_gemm_set (c = a b) likewise, and bit for bit the same as
 * circ_gemm_acc on a zeroed c. */
static void test_gemm_acc(void)
{
	int ms[] = {1, 5, 6, 7, 8, 9, 13, 128}, ns[] = {16, 48, 64, 80, 144, 10, 2304},
	    ks[] = {1, 7, 128, 129, 768};
	FOR_SHAPES(gemm_acc_case, ms, ns, ks);
	CHECK(!circ_gemm_acc_fast(10) && !circ_gemm_acc_fast(0));
}

/* The panel kernels: circ_gemm_pn (op(b) as it lies, tb 0 and 1) and
 * circ_gemm_pk (from circ_gemm_pack's panels) against the reference, with
 * c set (zero) and accumulated; the two bit for bit alike, alike again
 * when the columns are cut at a panel into two calls or the rows into two,
 * and (n a multiple of 16) the bits of circ_gemm_set and circ_gemm_acc,
 * over row counts around the 6-row tiles and 48-row tail tiles, widths
 * around the 64-wide panels (a zero-padded last panel) and depths around
 * the 128-deep blocks. */
static void gemm_panel_case(int m, int n, int k)
{
	for (int tb = 0; tb < 2; tb++)
		for (int zero = 0; zero < 2; zero++) {
			int lda = k + 3, ldb = tb ? k + 5 : n + 5, ldc = n + 2, nb = tb ? n : k;
			float *a = randv((size_t)m * lda, 1), *b = randv((size_t)nb * ldb, 1);
			float *c0 = randv((size_t)m * ldc, 1), *c1 = copyv(c0, (size_t)m * ldc),
			      *c2 = copyv(c0, (size_t)m * ldc), *c3 = copyv(c0, (size_t)m * ldc);
			float *pk = circ_xmalloc_aligned(circ_gemm_pack_floats(k, n) * sizeof *pk);
			size_t pks = (size_t)k * 64;
			int j = n > 64 ? 64 * ((n / 2 + 63) / 64) : 0, i = m / 2;
			circ_gemm_pn(zero, tb, m, n, k, a, lda, b, ldb, c1, ldc);
			circ_gemm_ref(0, tb, m, n, k, 1, a, lda, b, ldb, zero ? 0.0f : 1.0f, c2,
				      ldc);
			CHECK(close_to("gemm_pn", c1, c2, (size_t)m * ldc, 2e-6 * sqrt(k), 1));
			if (circ_gemm_pk_fast()) {
				circ_gemm_pack(pk, tb, k, n, b, ldb);
				memcpy(c2, c0, (size_t)m * ldc * sizeof *c2);
				circ_gemm_pk(zero, m, n, k, a, lda, pk, pks, c2, ldc);
				CHECK(!memcmp(c1, c2, (size_t)m * ldc * sizeof *c1));
				/* cut at a panel and between rows: the same bits */
				if (j > 0 && j < n) {
					circ_gemm_pk(zero, m, j, k, a, lda, pk, pks, c3, ldc);
					circ_gemm_pk(zero, m, n - j, k, a, lda,
						     pk + (size_t)(j / 64) * pks, pks, c3 + j, ldc);
				} else {
					circ_gemm_pk(zero, i, n, k, a, lda, pk, pks, c3, ldc);
					circ_gemm_pk(zero, m - i, n, k, a + (size_t)i * lda, lda,
						     pk, pks, c3 + (size_t)i * ldc, ldc);
				}
				CHECK(!memcmp(c1, c3, (size_t)m * ldc * sizeof *c1));
				memcpy(c3, c0, (size_t)m * ldc * sizeof *c3);
				circ_gemm_pn(zero, tb, i, n, k, a, lda, b, ldb, c3, ldc);
				circ_gemm_pn(zero, tb, m - i, n, k, a + (size_t)i * lda, lda, b,
					     ldb, c3 + (size_t)i * ldc, ldc);
				CHECK(!memcmp(c1, c3, (size_t)m * ldc * sizeof *c1));
				if (!tb && circ_gemm_acc_fast(n)) {
					memcpy(c3, c0, (size_t)m * ldc * sizeof *c3);
					if (zero)
						circ_gemm_set(m, n, k, a, lda, b, ldb, c3, ldc);
					else
						circ_gemm_acc(m, n, k, a, lda, b, ldb, c3, ldc);
					CHECK(!memcmp(c1, c3, (size_t)m * ldc * sizeof *c1));
				}
			}
			free(a), free(b), free(c0), free(c1), free(c2), free(c3), free(pk);
		}
}

static void test_gemm_panel(void)
{
	int ms[] = {1, 5, 6, 7, 13, 48, 49, 100}, ns[] = {1, 16, 17, 63, 64, 65, 130, 200},
	    ks[] = {1, 7, 128, 129, 300};
	FOR_SHAPES(gemm_panel_case, ms, ns, ks);
}

typedef void (*bt_fn)(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		      float *c, int ldc);

static void gemm_bt_check(bt_fn f, int m, int n, int k);

static void gemm_bt_case(int m, int n, int k)
{
	gemm_bt_check(circ_gemm_bt_set, m, n, k);
}

static void gemm_bt_long_case(int m, int n, int k)
{
	gemm_bt_check(circ_gemm_bt_long, m, n, k);
}

static void gemm_bt_check(bt_fn f, int m, int n, int k)
{
	int lda = k + 3, ldb = k + 5, ldc = n + 2;
	float *a = randv((size_t)m * lda, 1), *b = randv((size_t)n * ldb, 1);
	float *c1 = circ_xcalloc((size_t)m * ldc, sizeof *c1),
	      *c2 = circ_xcalloc((size_t)m * ldc, sizeof *c2),
	      *c3 = circ_xcalloc((size_t)m * ldc, sizeof *c3);
	f(m, n, k, a, lda, b, ldb, c1, ldc);
	circ_gemm_ref(0, 1, m, n, k, 1, a, lda, b, ldb, 0, c2, ldc);
	CHECK(close_to("gemm_bt", c1, c2, (size_t)m * ldc, 2e-6 * sqrt(k), 1));
	/* the last row and the last column alone: the same bits */
	f(1, n, k, a + (size_t)(m - 1) * lda, lda, b, ldb, c3 + (size_t)(m - 1) * ldc, ldc);
	f(m, 1, k, a, lda, b + (size_t)(n - 1) * ldb, ldb, c3 + n - 1, ldc);
	if (circ_gemm_bt_fast(k)) {
		CHECK(!memcmp(c3 + (size_t)(m - 1) * ldc, c1 + (size_t)(m - 1) * ldc,
			      (size_t)n * sizeof *c1));
		for (int i = 0; i < m; i++)
			CHECK(c3[(size_t)i * ldc + n - 1] == c1[(size_t)i * ldc + n - 1]);
	}
	free(a), free(b), free(c1), free(c2), free(c3);
}

/* circ_gemm_bt_set (c = a b^T) against the reference over row and column
 * counts around its 2 x 8 tiles; each element's bits must not depend on
 * the rows and columns computed with it. */
static void test_gemm_bt(void)
{
	int ms[] = {1, 2, 3, 32, 33}, ns[] = {1, 7, 8, 9, 100}, ks[] = {16, 160, 768, 10};
	FOR_SHAPES(gemm_bt_case, ms, ns, ks);
	CHECK(!circ_gemm_bt_fast(10) && !circ_gemm_bt_fast(0));
}

/* circ_gemm_bt_long likewise, around its 4 x 6 tiles and its chunks of
 * 2048 (rows of one chunk, of several and of a partial last one). */
static void test_gemm_bt_long(void)
{
	int ms[] = {1, 3, 4, 5, 9}, ns[] = {1, 5, 6, 7, 13}, ks[] = {16, 2048, 4112, 10};
	FOR_SHAPES(gemm_bt_long_case, ms, ns, ks);
}

/* circ_gemm_w16 (c = a op(w) + beta c, w bf16 or half) against the
 * reference on the weights converted to f32, with and without w's
 * transpose, around its 6-row tiles, 64-column blocks (and narrower last
 * blocks) and 128-deep panels (and depths not a multiple of 16); every
 * element's bits must not depend on the rows and columns computed with it,
 * and beta 1 adds onto c. */
static void gemm_w16_case(int tb, int bf16, int m, int n, int k)
{
	int lda = k + 3, ldw = (tb ? k : n) + 5, ldc = n + 2, rows = tb ? n : k;
	size_t nc = (size_t)m * ldc;
	float *a = randv((size_t)m * lda, 1), *wf = randv((size_t)rows * ldw, 1);
	uint16_t *w = circ_xmalloc((size_t)rows * ldw * sizeof *w);
	float *c0 = randv(nc, 1), *c1 = copyv(c0, nc), *c2 = copyv(c0, nc), *c3 = copyv(c0, nc);
	for (size_t i = 0; i < (size_t)rows * ldw; i++) {
		w[i] = bf16 ? circ_f32_to_bf16(wf[i]) : circ_f32_to_f16(wf[i]);
		wf[i] = bf16 ? circ_bf16_to_f32(w[i]) : circ_f16_to_f32(w[i]);
	}
	circ_gemm_w16(tb, m, n, k, a, lda, w, ldw, bf16, 0.0f, c1, ldc);
	circ_gemm_ref(0, tb, m, n, k, 1, a, lda, wf, ldw, 0, c2, ldc);
	CHECK(close_to("gemm_w16", c1, c2, nc, 2e-6 * sqrt(k), 1));
	/* the last row alone, and the last column alone (a block of one) */
	circ_gemm_w16(tb, 1, n, k, a + (size_t)(m - 1) * lda, lda, w, ldw, bf16, 0.0f,
		      c3 + (size_t)(m - 1) * ldc, ldc);
	circ_gemm_w16(tb, m, 1, k, a, lda, tb ? w + (size_t)(n - 1) * ldw : w + n - 1, ldw, bf16,
		      0.0f, c3 + n - 1, ldc);
	CHECK(!memcmp(c3 + (size_t)(m - 1) * ldc, c1 + (size_t)(m - 1) * ldc,
		      (size_t)n * sizeof *c1));
	for (int i = 0; i < m; i++)
		CHECK(c3[(size_t)i * ldc + n - 1] == c1[(size_t)i * ldc + n - 1]);
	/* beta 1 adds onto c's old values (c2, c3 start again from c0) */
	memcpy(c2, c0, nc * sizeof *c2);
	memcpy(c3, c0, nc * sizeof *c3);
	circ_gemm_w16(tb, m, n, k, a, lda, w, ldw, bf16, 1.0f, c3, ldc);
	circ_gemm_ref(0, tb, m, n, k, 1, a, lda, wf, ldw, 1, c2, ldc);
	CHECK(close_to("gemm_w16 beta 1", c3, c2, nc, 2e-6 * sqrt(k), 1));
	free(a), free(wf), free(w), free(c0), free(c1), free(c2), free(c3);
}

static void gemm_w16_t_bf16(int m, int n, int k)
{
	gemm_w16_case(1, 1, m, n, k);
}
static void gemm_w16_t_f16(int m, int n, int k)
{
	gemm_w16_case(1, 0, m, n, k);
}
static void gemm_w16_n_bf16(int m, int n, int k)
{
	gemm_w16_case(0, 1, m, n, k);
}
static void gemm_w16_n_f16(int m, int n, int k)
{
	gemm_w16_case(0, 0, m, n, k);
}

static void test_gemm_w16(void)
{
	int ms[] = {1, 5, 6, 7, 33}, ns[] = {1, 15, 16, 64, 70, 130}, ks[] = {1, 16, 17, 128, 300};
	if (!circ_gemm_w16_fast())
		return;
	FOR_SHAPES(gemm_w16_t_bf16, ms, ns, ks);
	FOR_SHAPES(gemm_w16_t_f16, ms, ns, ks);
	FOR_SHAPES(gemm_w16_n_bf16, ms, ns, ks);
	FOR_SHAPES(gemm_w16_n_f16, ms, ns, ks);
}

static void test_layernorm(void)
{
	int widths[] = {1, 2, 7, 8, 13, 16, 64, 100, 768};
	for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
		int C = widths[wi], N = 5, ld = C + 3;
		float *x = randv((size_t)N * ld, 2), *w = randv((size_t)C, 1),
		      *b = randv((size_t)C, 1);
		float *o1 = circ_xalloc_aligned((size_t)N * ld * 4),
		      *o2 = circ_xalloc_aligned((size_t)N * ld * 4);
		float m1[5], r1[5], m2[5], r2[5];
		for (int i = 0; i < N * ld; i++)
			x[i] += 3.0f; /* a mean far from 0 */
		circ_layernorm_fwd(o1, ld, m1, r1, x, ld, w, b, N, C, 1e-5f);
		circ_layernorm_fwd_ref(o2, ld, m2, r2, x, ld, w, b, N, C, 1e-5f);
		/* with one or two elements x - mean is a difference of nearly equal
		 * floats: any float kernel is off by about |mean| * rstd ulp there */
		CHECK(
		    close_to("layernorm out", o1, o2, (size_t)N * ld, C <= 2 ? 2e-5 : 2e-6, 1e-3));
		CHECK(close_to("layernorm mean", m1, m2, (size_t)N, 2e-6, 1e-3));
		CHECK(close_to("layernorm rstd", r1, r2, (size_t)N, C == 1 ? 1e-3 : 2e-6, 1e-3));

		/* backward on contiguous rows */
		float *xc = randv((size_t)N * C, 2), *dy = randv((size_t)N * C, 1);
		float *d1 = randv((size_t)N * C, 1), *d2 = copyv(d1, (size_t)N * C);
		float *a1 = randv((size_t)N * C, 1), *a2 = copyv(a1, (size_t)N * C);
		float *oc = circ_xalloc_aligned((size_t)N * C * 4);
		circ_layernorm_fwd_ref(oc, C, m2, r2, xc, C, w, b, N, C, 1e-5f);
		circ_layernorm_bwd(d1, a1, dy, xc, m2, r2, w, N, C, 0);
		circ_layernorm_bwd_ref(d2, a2, dy, xc, m2, r2, w, N, C, 0);
		CHECK(close_to("layernorm bwd", d1, d2, (size_t)N * C, 1e-5, 1));
		CHECK(close_to("layernorm bwd acc", a1, a2, (size_t)N * C, 1e-5, 1));
		/* set mode: dinp is overwritten, dacc still accumulates */
		circ_layernorm_bwd(d1, a1, dy, xc, m2, r2, w, N, C, 1);
		circ_layernorm_bwd_ref(d2, a2, dy, xc, m2, r2, w, N, C, 1);
		CHECK(close_to("layernorm bwd set", d1, d2, (size_t)N * C, 1e-5, 1));
		CHECK(close_to("layernorm bwd set acc", a1, a2, (size_t)N * C, 1e-5, 1));

		/* the "add" twins (input = inp + add, as a receiver's residual +
		 * delta): fast vs reference, and the reference against the plain
		 * kernels on a materialised sum */
		{
			float *ad = randv((size_t)N * ld, 1), *sum = copyv(x, (size_t)N * ld);
			float *o3 = circ_xalloc_aligned((size_t)N * ld * 4);
			float m3[5], r3[5], m4[5], r4[5];
			for (int i = 0; i < N * ld; i++)
				sum[i] += ad[i];
			circ_layernorm_fwd_add(o1, ld, m1, r1, x, ad, ld, w, b, N, C, 1e-5f);
			circ_layernorm_fwd_add_ref(o2, ld, m4, r4, x, ad, ld, w, b, N, C, 1e-5f);
			circ_layernorm_fwd_ref(o3, ld, m3, r3, sum, ld, w, b, N, C, 1e-5f);
			CHECK(close_to("layernorm add out", o1, o2, (size_t)N * ld, 2e-6, 1e-3));
			CHECK(close_to("layernorm add mean", m1, m4, (size_t)N, 2e-6, 1e-3));
			CHECK(close_to("layernorm add rstd", r1, r4, (size_t)N,
				       C == 1 ? 1e-3 : 2e-6, 1e-3));
			CHECK(close_to("layernorm add ref", o2, o3, (size_t)N * ld, 0, 1));
			free(ad), free(sum), free(o3);
		}
		{
			float *ad = randv((size_t)N * C, 1), *sum = copyv(xc, (size_t)N * C);
			float *d3 = randv((size_t)N * C, 1), *a3 = copyv(a1, (size_t)N * C);
			float *o4 = circ_xalloc_aligned((size_t)N * C * 4), m4[5], r4[5];
			for (int i = 0; i < N * C; i++)
				sum[i] += ad[i];
			circ_layernorm_fwd_ref(o4, C, m4, r4, sum, C, w, b, N, C, 1e-5f);
			memcpy(a2, a1, (size_t)N * C * 4);
			circ_layernorm_bwd_add(d1, a1, dy, xc, ad, m4, r4, w, N, C, 1);
			circ_layernorm_bwd_add_ref(d2, a2, dy, xc, ad, m4, r4, w, N, C, 1);
			circ_layernorm_bwd_ref(d3, a3, dy, sum, m4, r4, w, N, C, 1);
			CHECK(close_to("layernorm bwd add", d1, d2, (size_t)N * C, 1e-5, 1));
			CHECK(close_to("layernorm bwd add acc", a1, a2, (size_t)N * C, 1e-5, 1));
			CHECK(close_to("layernorm bwd add ref", d2, d3, (size_t)N * C, 0, 1));
			CHECK(close_to("layernorm bwd add ref acc", a2, a3, (size_t)N * C, 0, 1));
			free(ad), free(sum), free(d3), free(a3), free(o4);
		}

		/* parameter gradients: fast vs reference, then finite differences of
		 * the reference forward for w and b on all rows */
		{
			float *gw1 = randv((size_t)C, 1), *gw2 = copyv(gw1, (size_t)C);
			float *gb1 = randv((size_t)C, 1), *gb2 = copyv(gb1, (size_t)C);
			circ_layernorm_bwd_params(gw1, gb1, dy, xc, m2, r2, N, C);
			circ_layernorm_bwd_params_ref(gw2, gb2, dy, xc, m2, r2, N, C);
			CHECK(close_to("layernorm dw", gw1, gw2, (size_t)C, 1e-5, 1));
			CHECK(close_to("layernorm db", gb1, gb2, (size_t)C, 1e-5, 1));
			memset(gw2, 0, (size_t)C * 4);
			memset(gb2, 0, (size_t)C * 4);
			circ_layernorm_bwd_params_ref(gw2, gb2, dy, xc, m2, r2, N, C);
			for (int i = 0; i < C; i += (C > 16 ? 5 : 1)) {
				double lw[2], lb[2], h = 1e-3;
				float *o = circ_xalloc_aligned((size_t)N * C * 4);
				for (int sgn = 0; sgn < 2; sgn++) {
					float sw = w[i], sb = b[i];
					w[i] = (float)(sw + (sgn ? -h : h));
					circ_layernorm_fwd_ref(o, C, NULL, NULL, xc, C, w, b, N, C,
							       1e-5f);
					lw[sgn] = 0;
					for (int j = 0; j < N * C; j++)
						lw[sgn] += (double)o[j] * dy[j];
					w[i] = sw;
					b[i] = (float)(sb + (sgn ? -h : h));
					circ_layernorm_fwd_ref(o, C, NULL, NULL, xc, C, w, b, N, C,
							       1e-5f);
					lb[sgn] = 0;
					for (int j = 0; j < N * C; j++)
						lb[sgn] += (double)o[j] * dy[j];
					b[i] = sb;
				}
				double fw = (lw[0] - lw[1]) / (2 * h),
				       fb = (lb[0] - lb[1]) / (2 * h);
				if (fabs(fw - gw2[i]) > 2e-3 * (fabs(fw) + 1) ||
				    fabs(fb - gb2[i]) > 2e-3 * (fabs(fb) + 1)) {
					fprintf(stderr,
						"layernorm param fd C=%d i=%d: %g/%g vs %g/%g\n", C,
						i, fw, fb, gw2[i], gb2[i]);
					failures++;
				}
				free(o);
			}
			free(gw1), free(gw2), free(gb1), free(gb2);
		}

		/* finite differences of the reference on row 0: loss = sum(out * dy) */
		if (C >= 2 && C <= 100) {
			float *g = circ_xcalloc((size_t)C, sizeof *g);
			circ_layernorm_bwd_ref(g, NULL, dy, xc, m2, r2, w, 1, C, 0);
			for (int i = 0; i < C; i += (C > 16 ? 7 : 1)) {
				double h = 1e-3, lp = 0, lm = 0, save = xc[i];
				double xs[128];
				for (int sgn = 0; sgn < 2; sgn++) {
					double mu = 0, var = 0, l = 0;
					for (int j = 0; j < C; j++)
						xs[j] = xc[j] + (j == i ? (sgn ? -h : h) : 0);
					for (int j = 0; j < C; j++)
						mu += xs[j];
					mu /= C;
					for (int j = 0; j < C; j++)
						var += (xs[j] - mu) * (xs[j] - mu);
					var /= C;
					for (int j = 0; j < C; j++)
						l += ((xs[j] - mu) / sqrt(var + 1e-5) * w[j] +
						      b[j]) *
						     dy[j];
					*(sgn ? &lm : &lp) = l;
				}
				(void)save;
				double fd = (lp - lm) / (2 * h);
				if (fabs(fd - g[i]) > 1e-3 * (fabs(fd) + 1)) {
					fprintf(stderr, "layernorm fd C=%d i=%d: %g vs %g\n", C, i,
						fd, g[i]);
					failures++;
				}
			}
			free(g);
		}
		free(x), free(w), free(b), free(o1), free(o2), free(xc), free(dy), free(d1),
		    free(d2), free(a1), free(a2), free(oc);
	}
}

static void test_gelu(void)
{
	size_t n = 1003;
	float *x = randv(n, 3), *y1 = circ_xalloc_aligned(n * 4), *y2 = circ_xalloc_aligned(n * 4);
	x[0] = 0, x[1] = -20, x[2] = 20, x[3] = 1e-8f, x[4] = -1e-8f, x[5] = 100, x[6] = -100;
	for (int exact = 0; exact < 2; exact++) {
		circ_gelu_fwd(y1, x, n, exact);
		/* the AVX-512 build gives the AVX2 build's bits, any length */
		circ_simd_limit(1);
		for (size_t m = n - 20; m <= n; m++) {
			circ_gelu_fwd(y2, x, m, exact);
			CHECK(!memcmp(y1, y2, m * sizeof *y1));
		}
		circ_simd_limit(2);
		circ_gelu_fwd_ref(y2, x, n, exact);
		CHECK(
		    close_to(exact ? "gelu erf" : "gelu tanh", y1, y2, n, exact ? 4e-7 : 1e-6, 1));
		float *dy = randv(n, 1), *d1 = randv(n, 1), *d2 = copyv(d1, n), *d3 = copyv(dy, n);
		circ_gelu_bwd(d1, x, dy, n, exact);
		circ_gelu_bwd_ref(d2, x, dy, n, exact);
		CHECK(close_to("gelu bwd", d1, d2, n, 2e-6, 1));
		circ_gelu_bwd_inplace(d3, x, n, exact);
		memset(d2, 0, n * 4);
		circ_gelu_bwd_ref(d2, x, dy, n, exact);
		CHECK(close_to("gelu bwd inplace", d3, d2, n, 2e-6, 1));
		/* finite differences of the reference forward in double */
		for (size_t i = 7; i < 40; i++) {
			float xp = x[i] + 1e-2f, xm = x[i] - 1e-2f, yp, ym, g = 0, one = 1;
			circ_gelu_fwd_ref(&yp, &xp, 1, exact);
			circ_gelu_fwd_ref(&ym, &xm, 1, exact);
			circ_gelu_bwd_ref(&g, &x[i], &one, 1, exact);
			double fd = ((double)yp - ym) / ((double)xp - xm);
			if (fabs(fd - g) > 1e-3) {
				fprintf(stderr, "gelu fd x=%g: %g vs %g\n", x[i], fd, g);
				failures++;
			}
		}
		free(dy), free(d1), free(d2), free(d3);
	}
	free(x), free(y1), free(y2);
}

static void test_exp(void)
{
	size_t n = 2000;
	float *x = randv(n, 30), *y = circ_xalloc_aligned(n * 4);
	x[0] = -87.0f, x[1] = 88.5f, x[2] = -1000, x[3] = 1000, x[4] = 0, x[5] = -INFINITY;
	x[6] = INFINITY, x[7] = NAN, x[8] = -87.4f, x[9] = 88.72f;
	circ_vexp(y, x, n);
	CHECK(y[2] == 0 && isinf(y[3]) && y[4] == 1 && y[5] == 0 && isinf(y[6]) && isnan(y[7]));
	for (size_t i = 0; i < n; i++) {
		double r = exp((double)x[i]);
		if (i == 2 || i == 3 || (i >= 5 && i <= 8))
			continue;
		if (r > 3.4028234e38) { /* overflows float */
			if (!isinf(y[i])) {
				fprintf(stderr, "exp(%.9g) = %.9g, want inf\n", x[i], y[i]);
				failures++;
			}
			continue;
		}
		if (fabs(y[i] - r) > 3e-7 * r + 1e-37) {
			fprintf(stderr, "exp(%.9g) = %.9g, want %.9g\n", x[i], y[i], r);
			failures++;
			break;
		}
	}
	free(x), free(y);
}

static void test_attention(void)
{
	int cfg[][4] = {{1, 1, 4, 1}, {2, 5, 12, 3}, {3, 16, 64, 4}, {2, 33, 40, 2}};
	for (size_t s = 0; s < sizeof cfg / sizeof *cfg; s++) {
		int B = cfg[s][0], T = cfg[s][1], C = cfg[s][2], H = cfg[s][3];
		size_t nq = (size_t)B * T * 3 * C, nz = (size_t)B * T * C,
		       na = (size_t)B * H * T * T;
		float *qkv = randv(nq, 1.5), *z1 = circ_xalloc_aligned(nz * 4),
		      *z2 = circ_xalloc_aligned(nz * 4);
		float *a1 = circ_xalloc_aligned(na * 4), *a2 = circ_xalloc_aligned(na * 4);
		circ_attn_fwd(z1, a1, qkv, B, T, C, H);
		circ_attn_fwd_ref(z2, a2, qkv, B, T, C, H);
		CHECK(close_to("attn z", z1, z2, nz, 2e-6, 1));
		CHECK(close_to("attn att", a1, a2, na, 2e-6, 1));
		float *dz = randv(nz, 1), *d1 = randv(nq, 1), *d2 = copyv(d1, nq);
		circ_attn_bwd(d1, dz, qkv, a2, B, T, C, H);
		circ_attn_bwd_ref(d2, dz, qkv, a2, B, T, C, H);
		CHECK(close_to("attn bwd", d1, d2, nq, 1e-5, 1));
		/* finite differences: loss = sum(z * dz) through the reference */
		memset(d2, 0, nq * 4);
		circ_attn_bwd_ref(d2, dz, qkv, a2, B, T, C, H);
		for (size_t i = 0; i < nq; i += nq / 23 + 1) {
			double l[2], h = 1e-2;
			float save = qkv[i];
			for (int sgn = 0; sgn < 2; sgn++) {
				qkv[i] = (float)(save + (sgn ? -h : h));
				circ_attn_fwd_ref(z2, a2, qkv, B, T, C, H);
				l[sgn] = 0;
				for (size_t j = 0; j < nz; j++)
					l[sgn] += (double)z2[j] * dz[j];
			}
			qkv[i] = save;
			double fd = (l[0] - l[1]) /
				    (((double)(float)(save + h)) - (double)(float)(save - h));
			if (fabs(fd - d2[i]) > 1e-3 * (fabs(fd) + 1)) {
				fprintf(stderr, "attn fd cfg %zu i=%zu: %g vs %g\n", s, i, fd,
					d2[i]);
				failures++;
			}
		}
		free(qkv), free(z1), free(z2), free(a1), free(a2), free(dz), free(d1), free(d2);
	}
}

typedef struct sum_ctx {
	long long *parts;
	int *hits;
} sum_ctx;

static void sum_task(void *v, size_t b, size_t e)
{
	sum_ctx *c = v;
	for (size_t i = b; i < e; i++)
		c->hits[i]++;
}

static void test_vsum(void)
{
	size_t n = 1037;
	float *a = randv(n, 1), *b = randv(n, 1), *s1 = randv(n, 1), *s2 = randv(n, 1);
	float *y = circ_xalloc_aligned(n * 4), *want = circ_xalloc_aligned(n * 4);
	const float *src[2] = {s1, s2};
	for (size_t i = 0; i < n; i++)
		want[i] = ((a[i] + b[i]) + s1[i]) + s2[i];
	circ_vsum(y, a, b, src, 2, n);
	CHECK(!memcmp(y, want, n * 4)); /* same additions, same order: bit-identical */
	memcpy(y, a, n * 4);
	circ_vadd(y, b, n);
	for (size_t i = 0; i < n; i++)
		want[i] = a[i] + b[i];
	CHECK(!memcmp(y, want, n * 4));
	for (size_t i = 0; i < n; i++)
		want[i] = ((a[i] + b[i]) - s1[i]) - s2[i];
	circ_vsum_neg(y, a, b, src, 2, n);
	CHECK(!memcmp(y, want, n * 4));
	for (size_t i = 0; i < n; i++)
		want[i] = a[i] - s2[i];
	circ_vsum_neg(y, a, NULL, src + 1, 1, n);
	CHECK(!memcmp(y, want, n * 4));
	free(a), free(b), free(s1), free(s2), free(y), free(want);
}

/* LN(x + base +- terms) in one pass: the same bytes as circ_vsum then
 * circ_layernorm_fwd (as its contract says), close to the reference, at
 * widths around the vector and unroll sizes, strided rows read from row0
 * on, with and without base, adding and subtracting, and in place. */
static void test_layernorm_sum(void)
{
	int widths[] = {1, 7, 8, 13, 31, 33, 64, 100, 767, 768, 785};
	int ks[] = {0, 1, 3, 9};
	enum { N = 4, ROW0 = 2, NT = 9 };
	for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
		int C = widths[wi], ld = C + 3;
		size_t all = (size_t)(N + ROW0) * ld;
		float *x = randv(all, 2), *base = randv(all, 1), *w = randv((size_t)C, 1),
		      *b = randv((size_t)C, 1), *t[NT];
		float *o1 = circ_xalloc_aligned(all * 4), *o2 = circ_xalloc_aligned(all * 4),
		      *o3 = circ_xalloc_aligned(all * 4), *sum = circ_xalloc_aligned(all * 4);
		float m1[N], r1[N], m2[N], r2[N], m3[N], r3[N];
		for (int j = 0; j < NT; j++)
			t[j] = randv(all, 1);
		for (size_t i = 0; i < all; i++)
			x[i] += 3.0f;
		for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
			for (int v = 0; v < 4; v++) {
				int k = ks[ki], neg = v & 1;
				const float *bs = v & 2 ? base : NULL;
				char what[80];
				for (int n = 0; n < N; n++) {
					size_t at = (size_t)(ROW0 + n) * ld;
					const float *src[NT];
					for (int j = 0; j < k; j++)
						src[j] = t[j] + at;
					(neg ? circ_vsum_neg
					     : circ_vsum)(sum + (size_t)n * ld, x + at,
							  bs ? bs + at : NULL, src, k, (size_t)C);
				}
				circ_layernorm_fwd_sum(o1, ld, m1, r1, x, bs,
						       (const float *const *)t, k, neg, ROW0, ld, w,
						       b, N, C, 1e-5f);
				circ_layernorm_fwd(o2, ld, m2, r2, sum, ld, w, b, N, C, 1e-5f);
				circ_layernorm_fwd_ref(o3, ld, m3, r3, sum, ld, w, b, N, C, 1e-5f);
				snprintf(what, sizeof what,
					 "layernorm sum C=%d k=%d neg=%d base=%d", C, k, neg,
					 bs != NULL);
				for (int n = 0; n < N; n++)
					CHECK(!memcmp(o1 + (size_t)n * ld, o2 + (size_t)n * ld,
						      (size_t)C * 4));
				CHECK(!memcmp(m1, m2, sizeof m1) && !memcmp(r1, r2, sizeof r1));
				/* the AVX-512 rows give the AVX2 rows' bytes */
				circ_simd_limit(1);
				circ_layernorm_fwd_sum(o2, ld, m2, r2, x, bs,
						       (const float *const *)t, k, neg, ROW0, ld, w,
						       b, N, C, 1e-5f);
				circ_simd_limit(2);
				for (int n = 0; n < N; n++)
					CHECK(!memcmp(o1 + (size_t)n * ld, o2 + (size_t)n * ld,
						      (size_t)C * 4));
				CHECK(!memcmp(m1, m2, sizeof m1) && !memcmp(r1, r2, sizeof r1));
				for (int n = 0; n < N; n++)
					CHECK(close_to(what, o1 + (size_t)n * ld,
						       o3 + (size_t)n * ld, (size_t)C,
						       C <= 2 ? 2e-5 : 2e-6, 1e-3));
				/* in place: out is x's rows */
				{
					float *xi = copyv(x, all);
					circ_layernorm_fwd_sum(xi + (size_t)ROW0 * ld, ld, m2, r2,
							       xi, bs, (const float *const *)t, k,
							       neg, ROW0, ld, w, b, N, C, 1e-5f);
					for (int n = 0; n < N; n++)
						CHECK(!memcmp(xi + (size_t)(ROW0 + n) * ld,
							      o1 + (size_t)n * ld, (size_t)C * 4));
					free(xi);
				}
			}
		for (int j = 0; j < NT; j++)
			free(t[j]);
		free(x), free(base), free(w), free(b), free(o1), free(o2), free(o3), free(sum);
	}
}

static void test_bias_bwd(void)
{
	int m = 37, n = 29, ld = 33;
	float *d = randv((size_t)m * ld, 1), *b1 = randv((size_t)n, 1), *b2 = copyv(b1, (size_t)n);
	circ_bias_bwd(b1, d, m, n, ld);
	circ_bias_bwd_ref(b2, d, m, n, ld);
	CHECK(close_to("bias bwd", b1, b2, (size_t)n, 1e-5, 1));
	free(d), free(b1), free(b2);
}

/* A job that runs a nested loop on the same pool: it must run serially on
 * the calling thread (circ_pool_inside), not deadlock. */
typedef struct nest_ctx {
	circ_pool *p;
	int hits[64][8];
	int inside[64];
} nest_ctx;

static void nest_inner(void *v, size_t b, size_t e)
{
	int *row = v;
	for (size_t i = b; i < e; i++)
		row[i]++;
}

static void nest_outer(void *v, size_t b, size_t e)
{
	nest_ctx *c = v;
	for (size_t i = b; i < e; i++) {
		c->inside[i] = circ_pool_inside();
		circ_pool_for(c->p, 8, nest_inner, c->hits[i]);
	}
}

/* Hand-offs as a forward makes them: thousands of tiny jobs back to back
 * (the threads catch them while spinning), jobs after pauses longer than
 * the spin (they catch them asleep), nested loops, and a pool freed right
 * after its last job. */
static void test_pool_handoff(void)
{
	for (int th = 2; th <= 3; th++) {
		circ_pool *p = circ_pool_new(th);
		int hits[7] = {0}, ok = 1;
		sum_ctx c = {NULL, hits};
		for (int rep = 0; rep < 20000; rep++)
			circ_pool_for(p, 7, sum_task, &c);
		for (int rep = 0; rep < 5; rep++) {
			struct timespec ts = {0, 3000000}; /* 3 ms: past the spin */
			nanosleep(&ts, NULL);
			circ_pool_for(p, 7, sum_task, &c);
		}
		for (int i = 0; i < 7; i++)
			ok &= hits[i] == 20005;
		CHECK(ok);
		nest_ctx n = {p, {{0}}, {0}};
		circ_pool_for(p, 64, nest_outer, &n);
		for (int i = 0; i < 64; i++) {
			ok &= n.inside[i] == 1;
			for (int j = 0; j < 8; j++)
				ok &= n.hits[i][j] == 1;
		}
		CHECK(ok);
		CHECK(!circ_pool_inside());
		circ_pool_free(p);
	}
}

static void test_pool(void)
{
	for (int th = 1; th <= 3; th++) {
		circ_pool *p = circ_pool_new(th);
		int hits[1000] = {0};
		sum_ctx c = {NULL, hits};
		for (int rep = 0; rep < 50; rep++)
			circ_pool_for(p, 1 + (size_t)rep * 19, sum_task, &c);
		int ok = 1;
		for (int i = 0; i < 1000; i++) {
			int want = 0;
			for (int rep = 0; rep < 50; rep++)
				want += i < 1 + rep * 19;
			ok &= hits[i] == want;
		}
		CHECK(ok);
		CHECK(circ_pool_threads(p) == th);
		circ_pool_free(p);
	}
	circ_pool_free(NULL);
	test_pool_handoff();
}

/* Pool workers keep the termination signals blocked, so a SIGTERM reaches
 * the thread that blocks it around making and registering a temporary
 * output (a worker taking it in that window left the file behind). */
typedef struct sig_check {
	pthread_t main;
	int on_workers, unblocked;
} sig_check;

static void sig_task(void *v, size_t b, size_t e)
{
	sig_check *c = v;
	sigset_t cur;
	static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
	(void)b, (void)e;
	if (pthread_equal(pthread_self(), c->main))
		return;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	__atomic_add_fetch(&c->on_workers, 1, __ATOMIC_RELAXED);
	for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
		if (!sigismember(&cur, sigs[i]))
			__atomic_add_fetch(&c->unblocked, 1, __ATOMIC_RELAXED);
}

static void test_pool_signals(void)
{
	circ_pool *p = circ_pool_new(3);
	sig_check c = {pthread_self(), 0, 0};
	sigset_t cur;
	for (int rep = 0; rep < 50 && c.on_workers == 0; rep++)
		circ_pool_for(p, 64, sig_task, &c);
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	CHECK(c.on_workers > 0 && c.unblocked == 0);
	CHECK(!sigismember(&cur, SIGTERM)); /* the caller's mask is as it was */
	circ_pool_free(p);
}

int main(int argc, char **argv)
{
	circ_rng_seed(&rng, 42);
	test_gemm();
	test_gemm_bt_bcast();
	test_gemm_acc();
	test_gemm_panel();
	test_gemm_bt();
	test_gemm_bt_long();
	test_gemm_w16();
	test_layernorm();
	test_gelu();
	test_exp();
	test_attention();
	test_vsum();
	test_layernorm_sum();
	test_bias_bwd();
	test_pool();
	test_pool_signals();
	if (failures) {
		fprintf(stderr, "test_kernels%s: %d failures\n",
			getenv("CIRC_NO_SIMD") ? " (scalar)" : "", failures);
		return 1;
	}
	/* Run the portable path too. */
	if (getenv("CIRC_NO_SIMD"))
		printf("test_kernels: ok (SIMD and portable paths)\n");
	if (!getenv("CIRC_NO_SIMD") && argc > 0) {
		setenv("CIRC_NO_SIMD", "1", 1);
		execv("/proc/self/exe", argv);
		perror("execv");
		return 1;
	}
	return 0;
}
