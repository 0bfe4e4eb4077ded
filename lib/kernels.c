/*
 * kernels: fast and reference numeric kernels for the GPT-2 forward and
 * backward (see kernels.h for the contracts).
 *
 * The fast element-wise and row kernels come in two builds of the same
 * formulas: an AVX2+FMA one (compiled with a target attribute, chosen once
 * at run time with __builtin_cpu_supports) and a portable scalar one. The
 * vector versions never switch to scalar code for a tail: they pad the last
 * partial vector through a small buffer, so every element goes through the
 * same instructions and results do not depend on n or on alignment. Each
 * SIMD loop carries its scalar meaning in a comment.
 *
 * Transcendentals: exp is a Cody-Waite range reduction and a degree-6
 * polynomial (relative error < 2e-7); tanh(u) = 1 - 2/(exp(2u) + 1); erf is
 * Abramowitz-Stegun 7.1.26 (absolute error < 1.5e-7). The
 * reference twins use libm in double.
 *
 * Where the CPU has AVX-512 the hottest element-wise kernels (the tanh
 * GELU, vsum) have a third build, lane for lane the AVX2 one, so the bits
 * do not depend on which runs.
 *
 * Matrix kernels of circ's own, in AVX-512: circ_gemm_acc (c += a b,
 * and circ_gemm_set, c = a b) for column blocks a multiple of 16 wide (6
 * rows x 64 columns of accumulators, b packed in L1-sized panels), where
 * OpenBLAS's blocking loses a third on narrow blocks such as one head's 64
 * columns of W_QKV or a head's K = 64 output projection; and
 * circ_gemm_bt_set (c = a b^T) for a few rows against a large matrix (the
 * last positions' logits), which reads the matrix once instead of packing
 * it; and circ_gemm_w16, circ_gemm_acc's sums against 16-bit weights (bf16
 * or half) converted as its panels are packed, so a narrow checkpoint is
 * never copied to f32 whole (and its conversion and OpenBLAS's packing are
 * one pass). Everything else goes to OpenBLAS.
 */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define CIRC_X86 1
#include <immintrin.h>
#else
#define CIRC_X86 0
#endif

/* OpenBLAS exports this; cblas.h declares it in most builds, not all. */
void openblas_set_num_threads(int num_threads);

static int simd_limit = 2; /* circ_simd_limit */

void circ_simd_limit(int level)
{
	simd_limit = level;
}

static int use_avx2(void)
{
#if CIRC_X86
	static int have = -1;
	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
		if (getenv("CIRC_NO_SIMD"))
			have = 0;
	}
	return have && simd_limit >= 1;
#else
	return 0;
#endif
}

/* ================================================================ pool */

struct circ_pool {
	int n; /* threads including the caller */
	pthread_t *th;
	pthread_mutex_t mu;
	pthread_cond_t go, done;
	unsigned gen; /* bumped for each job (atomic: workers spin on it) */
	int pending;  /* workers still running the current job (atomic) */
	int quit;
	size_t total;
	void (*fn)(void *ctx, size_t begin, size_t end);
	void *ctx;
};

typedef struct pool_arg {
	circ_pool *p;
	int idx;
} pool_arg;

static void pool_chunk(const circ_pool *p, int idx, size_t *b, size_t *e)
{
	size_t per = p->total / (size_t)p->n, rem = p->total % (size_t)p->n;
	size_t i = (size_t)idx;
	*b = i * per + (i < rem ? i : rem);
	*e = *b + per + (i < rem ? 1 : 0);
}

/* Set on a thread while it runs a pool's loop body. */
static __thread int in_pool;

int circ_pool_inside(void)
{
	return in_pool;
}

/* Jobs come in quick succession during a forward (a LayerNorm, a GEMM, an
 * elementwise pass, ...): waking a sleeping thread costs more than most of
 * them. So a thread waiting for a job, or for the others to finish one,
 * first spins on the counter for about POOL_SPIN pauses (some tens of
 * microseconds), then sleeps on the condition variable. */
#define POOL_SPIN 4000

static void cpu_relax(void)
{
#if CIRC_X86
	_mm_pause();
#endif
}

/* Spins until *v != x (1) or the spin runs out (0). */
static int spin_while(const unsigned *v, unsigned x)
{
	for (int i = 0; i < POOL_SPIN; i++) {
		if (__atomic_load_n(v, __ATOMIC_ACQUIRE) != x)
			return 1;
		cpu_relax();
	}
	return 0;
}

static void *pool_main(void *v)
{
	pool_arg *a = v;
	circ_pool *p = a->p;
	unsigned seen = 0;
	for (;;) {
		size_t b, e;
		if (!spin_while(&p->gen, seen)) {
			pthread_mutex_lock(&p->mu);
			while (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) == seen && !p->quit)
				pthread_cond_wait(&p->go, &p->mu);
			pthread_mutex_unlock(&p->mu);
		}
		if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE))
			break;
		seen = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE);
		pool_chunk(p, a->idx, &b, &e);
		in_pool = 1;
		if (b < e)
			p->fn(p->ctx, b, e);
		in_pool = 0;
		if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
	free(a);
	return NULL;
}

circ_pool *circ_pool_new(int nthreads)
{
	circ_pool *p = circ_xcalloc(1, sizeof *p);
	sigset_t block, old;
	int i;
	p->n = nthreads < 1 ? 1 : nthreads;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go, NULL);
	pthread_cond_init(&p->done, NULL);
	if (p->n > 1)
		p->th = circ_xcalloc((size_t)p->n - 1, sizeof *p->th);
	/* The workers inherit a mask without the termination signals, so those
	 * reach the thread that made the pool: it blocks them around the making
	 * and registering of a temporary output (util's atomic files), and a
	 * signal taken by a worker in that window would leave the file behind.
	 * Faults (SIGBUS on a truncated model) stay deliverable everywhere. */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	for (i = 1; i < p->n; i++) {
		pool_arg *a = circ_xmalloc(sizeof *a);
		a->p = p;
		a->idx = i;
		if (pthread_create(&p->th[i - 1], NULL, pool_main, a) != 0) {
			free(a);
			p->n = i; /* run with the threads we have */
			break;
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return p;
}

void circ_pool_free(circ_pool *p)
{
	int i;
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	__atomic_store_n(&p->quit, 1, __ATOMIC_RELEASE);
	__atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&p->go);
	pthread_mutex_unlock(&p->mu);
	for (i = 1; i < p->n; i++)
		pthread_join(p->th[i - 1], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go);
	pthread_cond_destroy(&p->done);
	free(p->th);
	free(p);
}

int circ_pool_threads(const circ_pool *p)
{
	return p ? p->n : 1;
}

void circ_pool_for(circ_pool *p, size_t n, void (*fn)(void *ctx, size_t begin, size_t end),
		   void *ctx)
{
	size_t b, e;
	if (n == 0)
		return;
	if (!p || p->n == 1 || n == 1 || in_pool) {
		int was = in_pool;
		in_pool = 1;
		fn(ctx, 0, n);
		in_pool = was;
		return;
	}
	/* the job is published by the release store of gen: workers read
	 * fn, ctx and total after their acquire load of it */
	p->fn = fn;
	p->ctx = ctx;
	p->total = n;
	__atomic_store_n(&p->pending, p->n - 1, __ATOMIC_RELAXED);
	pthread_mutex_lock(&p->mu);
	__atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
	pthread_cond_broadcast(&p->go); /* no system call when nobody sleeps */
	pthread_mutex_unlock(&p->mu);
	pool_chunk(p, 0, &b, &e);
	in_pool = 1;
	if (b < e)
		fn(ctx, b, e);
	in_pool = 0;
	for (int i = 0; i < POOL_SPIN && __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0; i++)
		cpu_relax();
	if (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0) {
		pthread_mutex_lock(&p->mu);
		while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0)
			pthread_cond_wait(&p->done, &p->mu);
		pthread_mutex_unlock(&p->mu);
	}
}

void circ_blas_threads(int n)
{
	static int current = -1;
	if (n < 1)
		n = 1;
	if (n != current) {
		openblas_set_num_threads(n);
		current = n;
	}
}

/* ================================================================ gemm */

/* OpenBLAS's sgemm (circ_gemm's products that circ's kernels do not take). */
static void blas_gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
		      const float *b, int ldb, float beta, float *c, int ldc)
{
	if (m <= 0 || n <= 0)
		return;
	if (k <= 0) {
		int i, j;
		for (i = 0; i < m; i++)
			for (j = 0; j < n; j++)
				c[(size_t)i * ldc + j] =
				    beta == 0 ? 0 : beta * c[(size_t)i * ldc + j];
		return;
	}
	cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
		    m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void circ_gemm_ref(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
		   const float *b, int ldb, float beta, float *c, int ldc)
{
	int i, j, p;
	for (i = 0; i < m; i++)
		for (j = 0; j < n; j++) {
			double s = 0;
			float *cij = &c[(size_t)i * ldc + j];
			for (p = 0; p < k; p++) {
				double av = ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
				double bv = tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
				s += av * bv;
			}
			*cij = (float)(alpha * s + (beta == 0 ? 0.0 : (double)beta * *cij));
		}
}

/* c (m, n) += a (m, k) b (k, n), one thread. Every element of c is its
 * old value plus a[i][0] b[0][j], a[i][1] b[1][j], ... added in order of p
 * with fused multiply-adds, so a row's result does not depend on m or on
 * which rows share a block. */
/* op(b)'s rows p0 .. p0+kc-1 of columns j0 .. j0+w-1 into panel (kc, 64). */
static void panel_fill(float *panel, int tb, int p0, int kc, int j0, int w, const float *b, int ldb)
{
	if (w < 64)
		memset(panel, 0, (size_t)kc * 64 * sizeof(float));
	if (!tb)
		for (int p = 0; p < kc; p++)
			memcpy(panel + (size_t)p * 64, b + (size_t)(p0 + p) * ldb + j0,
			       (size_t)w * sizeof(float));
	else
		for (int j = 0; j < w; j++) {
			const float *row = b + (size_t)(j0 + j) * ldb + p0;
			for (int p = 0; p < kc; p++)
				panel[(size_t)p * 64 + j] = row[p];
		}
}

#if CIRC_X86
#define AVX512 __attribute__((target("avx512f")))

/* Rows 0 .. R-1 of c, columns 0 .. 63, over kc values of p: 4R
 * accumulators, the 4 vectors of b's row p loaded once for the R
 * broadcasts of a[., p]. b is a packed panel (row p at b + 64 p) or b
 * itself (ldb apart): the sums are the same either way. R is a constant
 * at every call, so the arrays below live in registers. zero: start the
 * sums from 0 instead of c. res (ldr apart), if not NULL: res += the
 * finished sums, while they are in registers. */
AVX512 static inline __attribute__((always_inline)) void acc_rx64(int R, int zero, int kc,
								  const float *a, int lda,
								  const float *b, int ldb, float *c,
								  int ldc, float *res, int ldr)
{
	__m512 acc[6][4];
	_Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
	    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++) acc[r][v] =
		zero ? _mm512_setzero_ps() : _mm512_loadu_ps(c + (size_t)r * ldc + 16 * v);
	for (int p = 0; p < kc; p++) {
		const float *bp = b + (size_t)p * ldb;
		__m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16),
		       b2 = _mm512_loadu_ps(bp + 32), b3 = _mm512_loadu_ps(bp + 48);
		_Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
		{
			/* c[r][j] += a[r][p] * b[p][j] */
			__m512 x = _mm512_set1_ps(a[(size_t)r * lda + p]);
			acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
			acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
			acc[r][2] = _mm512_fmadd_ps(x, b2, acc[r][2]);
			acc[r][3] = _mm512_fmadd_ps(x, b3, acc[r][3]);
		}
	}
	_Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
	    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++)
		_mm512_storeu_ps(c + (size_t)r * ldc + 16 * v, acc[r][v]);
	if (res)
		_Pragma("GCC unroll 6") for (int r = 0; r < R; r++)
		    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++) _mm512_storeu_ps(
			res + (size_t)r * ldr + 16 * v,
			_mm512_add_ps(_mm512_loadu_ps(res + (size_t)r * ldr + 16 * v), acc[r][v]));
}

/* All m rows of one 64-column block, kc values of p, in tiles of 6 rows
 * (the tail in tiles of 4, 2 and 1). */
AVX512 static void acc_rows_x64(int m, int zero, int kc, const float *a, int lda, const float *b,
				int ldb, float *c, int ldc, float *res, int ldr)
{
	int i = 0;
#define ACC_TILE(R)                                                                                \
	acc_rx64(R, zero, kc, a + (size_t)i * lda, lda, b, ldb, c + (size_t)i * ldc, ldc,          \
		 res ? res + (size_t)i * ldr : NULL, ldr)
	for (; i + 6 <= m; i += 6)
		ACC_TILE(6);
	if (i + 4 <= m) {
		ACC_TILE(4);
		i += 4;
	}
	if (i + 2 <= m) {
		ACC_TILE(2);
		i += 2;
	}
	if (i < m)
		ACC_TILE(1);
#undef ACC_TILE
}

/* One row, 16 columns: the same sums for the last n % 64 columns. */
AVX512 static void acc_1x16(int k, const float *a, const float *b, int ldb, float *c)
{
	__m512 acc = _mm512_loadu_ps(c);
	for (int p = 0; p < k; p++)
		acc = _mm512_fmadd_ps(_mm512_set1_ps(a[p]), _mm512_loadu_ps(b + (size_t)p * ldb),
				      acc);
	_mm512_storeu_ps(c, acc);
}

/* p is cut into blocks of GEMM_KC and each block's 64 columns of b are
 * copied into a contiguous panel (32 KiB, which stays in L1 while all m
 * rows use it): read in place, rows of b ldb apart fall into a few cache
 * sets and miss again for every tile of rows. Cutting p changes no sum:
 * each accumulator goes to c and comes back between blocks, exactly, and
 * the order of p is kept. Few rows do not repay the copy. */
#define GEMM_KC		128
#define GEMM_PACK_MIN_M 8

AVX512 static void gemm_acc_avx512(int zero, int m, int n, int k, const float *a, int lda,
				   const float *b, int ldb, float *c, int ldc, float *res, int ldr)
{
	_Alignas(64) float panel[GEMM_KC * 64];
	int j = 0;
	for (; j + 64 <= n; j += 64) {
		float *rj = res ? res + j : NULL;
		if (m < GEMM_PACK_MIN_M) {
			acc_rows_x64(m, zero, k, a, lda, b + j, ldb, c + j, ldc, rj, ldr);
			continue;
		}
		for (int p0 = 0; p0 < k; p0 += GEMM_KC) {
			int kc = k - p0 < GEMM_KC ? k - p0 : GEMM_KC;
			for (int p = 0; p < kc; p++)
				memcpy(panel + (size_t)p * 64, b + (size_t)(p0 + p) * ldb + j,
				       64 * sizeof(float));
			acc_rows_x64(m, zero && p0 == 0, kc, a + p0, lda, panel, 64, c + j, ldc,
				     p0 + kc == k ? rj : NULL, ldr);
		}
	}
	for (; j < n; j += 16)
		for (int i = 0; i < m; i++) {
			float *ci = c + (size_t)i * ldc + j;
			if (zero)
				memset(ci, 0, 16 * sizeof(float));
			acc_1x16(k, a + (size_t)i * lda, b + j, ldb, ci);
			if (res) {
				float *ri = res + (size_t)i * ldr + j;
				_mm512_storeu_ps(
				    ri, _mm512_add_ps(_mm512_loadu_ps(ri), _mm512_loadu_ps(ci)));
			}
		}
}

/* Panel kernels: c (m, n) = a op(b) (+ c unless zero) with op(b) in
 * panels of 64 columns, kc rows at a time; each element the sum in order
 * of k started from c's value (or 0), so the bits are gemm_acc_avx512's and
 * do not depend on m, n, KC or how a product is cut into calls. A panel
 * of w < 64 columns (zero-padded) goes through a tile of rows. */
#define GEMM_PK_KC   128
#define GEMM_PK_TILE 48

AVX512 static void panel_rows(int zero, int m, int w, int kc, const float *a, int lda,
			      const float *panel, float *c, int ldc)
{
	_Alignas(64) float tile[GEMM_PK_TILE * 64];
	if (w == 64) {
		acc_rows_x64(m, zero, kc, a, lda, panel, 64, c, ldc, NULL, 0);
		return;
	}
	for (int i0 = 0; i0 < m; i0 += GEMM_PK_TILE) {
		int mi = m - i0 < GEMM_PK_TILE ? m - i0 : GEMM_PK_TILE;
		if (!zero)
			for (int i = 0; i < mi; i++)
				memcpy(tile + (size_t)i * 64, c + (size_t)(i0 + i) * ldc,
				       (size_t)w * sizeof(float));
		acc_rows_x64(mi, zero, kc, a + (size_t)i0 * lda, lda, panel, 64, tile, 64, NULL, 0);
		for (int i = 0; i < mi; i++)
			memcpy(c + (size_t)(i0 + i) * ldc, tile + (size_t)i * 64,
			       (size_t)w * sizeof(float));
	}
}

/* From b pre-packed (circ_gemm_pack): the panels are read where they lie. */
AVX512 static void gemm_pk_avx512(int zero, int m, int n, int k, const float *a, int lda,
				  const float *pk, size_t pks, float *c, int ldc)
{
	for (int j = 0; j < n; j += 64) {
		const float *panel = pk + (size_t)(j / 64) * pks;
		int w = n - j < 64 ? n - j : 64;
		for (int p0 = 0; p0 < k; p0 += GEMM_PK_KC) {
			int kc = k - p0 < GEMM_PK_KC ? k - p0 : GEMM_PK_KC;
			panel_rows(zero && p0 == 0, m, w, kc, a + p0, lda, panel + (size_t)p0 * 64,
				   c + j, ldc);
		}
	}
}

/* From b as it lies: each panel block copied (tb 1: transposed) first. */
AVX512 static void gemm_pn_avx512(int zero, int tb, int m, int n, int k, const float *a, int lda,
				  const float *b, int ldb, float *c, int ldc)
{
	_Alignas(64) float panel[GEMM_PK_KC * 64];
	for (int j = 0; j < n; j += 64) {
		int w = n - j < 64 ? n - j : 64;
		for (int p0 = 0; p0 < k; p0 += GEMM_PK_KC) {
			int kc = k - p0 < GEMM_PK_KC ? k - p0 : GEMM_PK_KC;
			panel_fill(panel, tb, p0, kc, j, w, b, ldb);
			panel_rows(zero && p0 == 0, m, w, kc, a + p0, lda, panel, c + j, ldc);
		}
	}
}

/* 16-bit weights (bf16 or IEEE half) multiplied in f32 without a whole
 * converted copy: each panel of gemm_acc_avx512 (GEMM_W16_KC values of p,
 * 64 columns) is converted from the weights as it is packed, so the
 * weights are read once per column block in their own width, and the
 * conversion is exact (a bf16 is the top half of its f32; vcvtph2ps is
 * exact for every half, subnormals included). */
#define GEMM_W16_KC 128

AVX512 static inline __m512 w16_load(const uint16_t *p, int bf16)
{
	__m256i h = _mm256_loadu_si256((const __m256i *)p);
	if (bf16)
		return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
	return _mm512_cvtph_ps(h);
}

/* 16 values of p (from p0) of a row, the missing ones (past kc) as 0. */
AVX512 static inline __m512 w16_load_part(const uint16_t *p, int len, int bf16)
{
	uint16_t tmp[16] = {0};
	if (len >= 16)
		return w16_load(p, bf16);
	if (len > 0)
		memcpy(tmp, p, (size_t)len * sizeof *p);
	return w16_load(tmp, bf16);
}

/* r[c] becomes column c of the 16 x 16 block whose rows were r[0..15]. */
AVX512 static inline void transpose16(__m512 r[16])
{
	__m512 t[16];
	for (int i = 0; i < 8; i++) {
		t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
		t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
	}
	/* r[4i + q], 128-bit lane L: rows 4i .. 4i+3 of column 4L + q */
	for (int i = 0; i < 4; i++) {
		__m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]),
			c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
		r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
		r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
		r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
		r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
	}
	/* t[8i + q]: lanes (rows 8i.., column q), (8i.., 8+q), (8i+4.., q),
	 * (8i+4.., 8+q); t[8i + 4 + q] the same for columns 4+q and 12+q */
	for (int i = 0; i < 2; i++)
		for (int q = 0; q < 4; q++) {
			t[8 * i + q] = _mm512_shuffle_f32x4(r[8 * i + q], r[8 * i + 4 + q], 0x88);
			t[8 * i + 4 + q] =
			    _mm512_shuffle_f32x4(r[8 * i + q], r[8 * i + 4 + q], 0xdd);
		}
	for (int j = 0; j < 4; j++) {
		r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
		r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
		r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
		r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xdd);
	}
}

/* panel (kc rounded up to 16 rows of 64) = columns j .. j+nw-1 of op(w)
 * for p0 .. p0+kc-1, in f32, 0 past nw and kc. tb: w is (n, k) (row j
 * holds p contiguous: 16 x 16 blocks transposed), else (k, n). */
AVX512 static void w16_pack(float *panel, int tb, const uint16_t *w, int ldw, int j, int nw, int p0,
			    int kc, int k, int bf16)
{
	int kr = (kc + 15) & ~15, pn = p0 + GEMM_W16_KC;
	if (tb) {
		for (int jb = 0; jb < 64; jb += 16)
			for (int pb = 0; pb < kr; pb += 16) {
				__m512 v[16];
				for (int i = 0; i < 16; i++) {
					const uint16_t *row = w + (size_t)(j + jb + i) * ldw;
					if (jb + i >= nw) {
						v[i] = _mm512_setzero_ps();
						continue;
					}
					/* the next chunk's line, into L2 while this one is used */
					if (pn + pb < k && pb % 32 == 0)
						_mm_prefetch((const char *)(row + pn + pb),
							     _MM_HINT_T1);
					v[i] = w16_load_part(row + p0 + pb, kc - pb, bf16);
				}
				transpose16(v);
				for (int q = 0; q < 16; q++)
					_mm512_store_ps(panel + (size_t)(pb + q) * 64 + jb, v[q]);
			}
		return;
	}
	for (int p = 0; p < kr; p++) {
		const uint16_t *row = w + (size_t)(p0 + p) * ldw + j;
		if (p < kc && pn + p < k)
			for (int jb = 0; jb < nw; jb += 32)
				_mm_prefetch((const char *)(row + (size_t)GEMM_W16_KC * ldw + jb),
					     _MM_HINT_T1);
		for (int jb = 0; jb < 64; jb += 16)
			_mm512_store_ps(panel + (size_t)p * 64 + jb,
					p < kc ? w16_load_part(row + jb, nw - jb, bf16)
					       : _mm512_setzero_ps());
	}
}

/* Columns 0 .. nw-1 (nw <= 64) of c += a (m rows, kc values, lda apart)
 * panel, from 0 where zero. A block narrower than 64 columns goes through
 * a tile (its extra columns multiply the panel's zeros and are dropped). */
AVX512 static void w16_block(int zero, int m, int kc, const float *a, int lda, const float *panel,
			     float *c, int ldc, int nw)
{
	_Alignas(64) float tile[6 * 64];
	if (nw == 64) {
		acc_rows_x64(m, zero, kc, a, lda, panel, 64, c, ldc, NULL, 0);
		return;
	}
	for (int i0 = 0; i0 < m; i0 += 6) {
		int mi = m - i0 < 6 ? m - i0 : 6;
		float *ci = c + (size_t)i0 * ldc;
		if (!zero)
			for (int i = 0; i < mi; i++)
				memcpy(tile + i * 64, ci + (size_t)i * ldc,
				       (size_t)nw * sizeof(float));
		acc_rows_x64(mi, zero, kc, a + (size_t)i0 * lda, lda, panel, 64, tile, 64, NULL, 0);
		for (int i = 0; i < mi; i++)
			memcpy(ci + (size_t)i * ldc, tile + i * 64, (size_t)nw * sizeof(float));
	}
}

/* c (m, n) = a op(w) (+ c unless zero), the sums as gemm_acc_avx512's.
 * Columns in groups of up to GEMM_W16_GROUP panels (in L2), rows in
 * chunks of GEMM_W16_MC: for each chunk of p the group's panels are
 * packed, then each row chunk of a is copied together (kc wide, in L2)
 * and passes every panel, so a streams from memory once per group, not
 * once per 64 columns. */
#define GEMM_W16_GROUP 8
#define GEMM_W16_MC    144
AVX512 static void gemm_w16_avx512(int tb, int zero, int m, int n, int k, const float *a, int lda,
				   const uint16_t *w, int ldw, int bf16, float *c, int ldc)
{
	_Alignas(64) float panel[GEMM_W16_GROUP][GEMM_W16_KC * 64];
	_Alignas(64) float ap[GEMM_W16_MC * GEMM_W16_KC];
	for (int j0 = 0; j0 < n; j0 += 64 * GEMM_W16_GROUP)
		for (int p0 = 0; p0 < k; p0 += GEMM_W16_KC) {
			int kc = k - p0 < GEMM_W16_KC ? k - p0 : GEMM_W16_KC, z = zero && p0 == 0;
			int ng = (n - j0 + 63) / 64;
			if (ng > GEMM_W16_GROUP)
				ng = GEMM_W16_GROUP;
			for (int g = 0; g < ng; g++) {
				int j = j0 + 64 * g;
				w16_pack(panel[g], tb, w, ldw, j, n - j < 64 ? n - j : 64, p0, kc,
					 k, bf16);
			}
			for (int i0 = 0; i0 < m; i0 += GEMM_W16_MC) {
				int mi = m - i0 < GEMM_W16_MC ? m - i0 : GEMM_W16_MC;
				for (int i = 0; i < mi; i++)
					memcpy(ap + (size_t)i * kc, a + (size_t)(i0 + i) * lda + p0,
					       (size_t)kc * sizeof(float));
				for (int g = 0; g < ng; g++) {
					int j = j0 + 64 * g;
					w16_block(z, mi, kc, ap, kc, panel[g],
						  c + (size_t)i0 * ldc + j, ldc,
						  n - j < 64 ? n - j : 64);
				}
			}
		}
}
#endif

#if CIRC_X86
/* c (m, n) = a (m, k) b (n, k)^T for few rows of a and many of b (the
 * logits of a few positions): each element a dot product of two rows, in
 * 16 lanes over p (lane l sums p = l, l + 16, ... in order with fused
 * multiply-adds), the lanes then added in a fixed order; so an element's
 * bits depend on neither the tile it falls in nor m or n. Tiles of 2 rows
 * of a and 8 of b: the 8 rows of b stay in L1 while every pair of a's
 * rows passes them, so b streams from memory once. k a multiple of 16.
 * The tiles: R rows of a against S of b over k (circ_gemm_bt_long: one
 * chunk of p), the lanes' sums set into c (first) or added to it. */
#define DOTC_TILE(R, S)                                                                            \
	AVX512 static void dotc_tile_##R##x##S(int k, const float *a, int lda, const float *b,     \
					       int ldb, float *c, int ldc, int first)              \
	{                                                                                          \
		__m512 acc[R][S];                                                                  \
		_Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
		    _Pragma("GCC unroll 8") for (int s = 0; s < S; s++) acc[r][s] =                \
			_mm512_setzero_ps();                                                       \
		for (int p = 0; p < k; p += 16) {                                                  \
			__m512 av[R];                                                              \
			_Pragma("GCC unroll 8") for (int r = 0; r < R; r++) av[r] =                \
			    _mm512_loadu_ps(a + (size_t)r * lda + p);                              \
			_Pragma("GCC unroll 8") for (int s = 0; s < S; s++)                        \
			{                                                                          \
				__m512 bv = _mm512_loadu_ps(b + (size_t)s * ldb + p);              \
				_Pragma("GCC unroll 8") for (int r = 0; r < R; r++) acc[r][s] =    \
				    _mm512_fmadd_ps(av[r], bv, acc[r][s]);                         \
			}                                                                          \
		}                                                                                  \
		_Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
		    _Pragma("GCC unroll 8") for (int s = 0; s < S; s++)                            \
		{                                                                                  \
			float v = _mm512_reduce_add_ps(acc[r][s]);                                 \
			float *cp = c + (size_t)r * ldc + s;                                       \
			*cp = first ? v : *cp + v;                                                 \
		}                                                                                  \
	}
DOTC_TILE(4, 6)
DOTC_TILE(1, 6)
DOTC_TILE(4, 1)
DOTC_TILE(2, 8)
DOTC_TILE(1, 8)
DOTC_TILE(2, 1)
DOTC_TILE(1, 1)
#undef DOTC_TILE

/* Chunks of p of BT_LONG_KC: b's rows of a chunk stay in L2 while a's rows
 * pass them four at a time (from L1), so a streams from memory once. */
#define BT_LONG_KC 2048
AVX512 static void gemm_bt_long_avx512(int m, int n, int k, const float *a, int lda, const float *b,
				       int ldb, float *c, int ldc)
{
	for (int p0 = 0; p0 < k; p0 += BT_LONG_KC) {
		int kc = k - p0 < BT_LONG_KC ? k - p0 : BT_LONG_KC, first = p0 == 0, i = 0;
		const float *ap = a + p0, *bp = b + p0;
		for (; i + 4 <= m; i += 4) {
			int j = 0;
			for (; j + 6 <= n; j += 6)
				dotc_tile_4x6(kc, ap + (size_t)i * lda, lda, bp + (size_t)j * ldb,
					      ldb, c + (size_t)i * ldc + j, ldc, first);
			for (; j < n; j++)
				dotc_tile_4x1(kc, ap + (size_t)i * lda, lda, bp + (size_t)j * ldb,
					      ldb, c + (size_t)i * ldc + j, ldc, first);
		}
		for (; i < m; i++) {
			int j = 0;
			for (; j + 6 <= n; j += 6)
				dotc_tile_1x6(kc, ap + (size_t)i * lda, lda, bp + (size_t)j * ldb,
					      ldb, c + (size_t)i * ldc + j, ldc, first);
			for (; j < n; j++)
				dotc_tile_1x1(kc, ap + (size_t)i * lda, lda, bp + (size_t)j * ldb,
					      ldb, c + (size_t)i * ldc + j, ldc, first);
		}
	}
}

AVX512 static void gemm_bt_avx512(int m, int n, int k, const float *a, int lda, const float *b,
				  int ldb, float *c, int ldc)
{
	int j = 0;
	for (; j + 8 <= n; j += 8) {
		int i = 0;
		for (; i + 2 <= m; i += 2)
			dotc_tile_2x8(k, a + (size_t)i * lda, lda, b + (size_t)j * ldb, ldb,
				      c + (size_t)i * ldc + j, ldc, 1);
		if (i < m)
			dotc_tile_1x8(k, a + (size_t)i * lda, lda, b + (size_t)j * ldb, ldb,
				      c + (size_t)i * ldc + j, ldc, 1);
	}
	for (; j < n; j++) {
		int i = 0;
		for (; i + 2 <= m; i += 2)
			dotc_tile_2x1(k, a + (size_t)i * lda, lda, b + (size_t)j * ldb, ldb,
				      c + (size_t)i * ldc + j, ldc, 1);
		if (i < m)
			dotc_tile_1x1(k, a + (size_t)i * lda, lda, b + (size_t)j * ldb, ldb,
				      c + (size_t)i * ldc + j, ldc, 1);
	}
}
#endif

static int use_avx512(void)
{
#if CIRC_X86
	return use_avx2() && simd_limit >= 2 && __builtin_cpu_supports("avx512f");
#else
	return 0;
#endif
}

int circ_gemm_acc_fast(int n)
{
	return n > 0 && n % 16 == 0 && use_avx512();
}

void circ_gemm_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
		   int ldc)
{
	if (m <= 0 || n <= 0 || k <= 0)
		return;
#if CIRC_X86
	if (circ_gemm_acc_fast(n)) {
		gemm_acc_avx512(0, m, n, k, a, lda, b, ldb, c, ldc, NULL, 0);
		return;
	}
#endif
	circ_gemm(0, 0, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c, ldc);
}

size_t circ_gemm_pack_floats(int k, int n)
{
	return (size_t)((n + 63) / 64) * 64 * (size_t)k;
}

void circ_gemm_pack(float *pk, int tb, int k, int n, const float *b, int ldb)
{
	size_t pks = (size_t)k * 64;
	for (int j0 = 0; j0 < n; j0 += 64)
		panel_fill(pk + (size_t)(j0 / 64) * pks, tb, 0, k, j0, n - j0 < 64 ? n - j0 : 64, b,
			   ldb);
}

int circ_gemm_pk_fast(void)
{
	return use_avx512();
}

/* 1 if c = a op(b) (+ c unless zero) has nothing to multiply (and c is
 * done: zeroed for k 0 where zero). */
static int gemm_empty(int zero, int m, int n, int k, float *c, int ldc)
{
	if (m <= 0 || n <= 0)
		return 1;
	if (k > 0)
		return 0;
	if (zero)
		for (int i = 0; i < m; i++)
			memset(c + (size_t)i * ldc, 0, (size_t)n * sizeof(float));
	return 1;
}

void circ_gemm_pk(int zero, int m, int n, int k, const float *a, int lda, const float *pk,
		  size_t pks, float *c, int ldc)
{
	if (gemm_empty(zero, m, n, k, c, ldc))
		return;
#if CIRC_X86
	if (use_avx512()) {
		gemm_pk_avx512(zero, m, n, k, a, lda, pk, pks, c, ldc);
		return;
	}
#endif
	(void)a, (void)lda, (void)pk, (void)pks;
	CIRC_ASSERT(!"circ_gemm_pk without AVX-512");
}

/* c = a op(b) + beta c: with AVX-512, alpha 1, beta 0 or 1 and a as it lies,
 * circ's panel kernel (each element summed in order of k, wherever it sits
 * in the product); else OpenBLAS, whose kernels for some cores sum an
 * element in an order that depends on its place in the call (Haswell's,
 * which OPENBLAS_CORETYPE=Haswell picks on a Zen 5: a row's bits then
 * depended on the batch it came in and on the thread count). */
void circ_gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
	       const float *b, int ldb, float beta, float *c, int ldc)
{
#if CIRC_X86
	if (!ta && alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && use_avx512()) {
		if (!gemm_empty(beta == 0.0f, m, n, k, c, ldc))
			gemm_pn_avx512(beta == 0.0f, tb, m, n, k, a, lda, b, ldb, c, ldc);
		return;
	}
#endif
	blas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void circ_gemm_pn(int zero, int tb, int m, int n, int k, const float *a, int lda, const float *b,
		  int ldb, float *c, int ldc)
{
	if (gemm_empty(zero, m, n, k, c, ldc))
		return;
#if CIRC_X86
	if (use_avx512()) {
		gemm_pn_avx512(zero, tb, m, n, k, a, lda, b, ldb, c, ldc);
		return;
	}
#endif
	circ_gemm(0, tb, m, n, k, 1.0f, a, lda, b, ldb, zero ? 0.0f : 1.0f, c, ldc);
}

int circ_gemm_bt_fast(int k)
{
	return k > 0 && k % 16 == 0 && use_avx512();
}

void circ_gemm_bt_set(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		      float *c, int ldc)
{
	if (m <= 0 || n <= 0)
		return;
#if CIRC_X86
	if (circ_gemm_bt_fast(k)) {
		gemm_bt_avx512(m, n, k, a, lda, b, ldb, c, ldc);
		return;
	}
#endif
	circ_gemm(0, 1, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void circ_gemm_bt_long(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		       float *c, int ldc)
{
	if (m <= 0 || n <= 0)
		return;
#if CIRC_X86
	if (circ_gemm_bt_fast(k)) {
		gemm_bt_long_avx512(m, n, k, a, lda, b, ldb, c, ldc);
		return;
	}
#endif
	circ_gemm(0, 1, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void circ_gemm_set(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
		   int ldc)
{
	if (m <= 0 || n <= 0)
		return;
#if CIRC_X86
	if (k > 0 && circ_gemm_acc_fast(n)) {
		gemm_acc_avx512(1, m, n, k, a, lda, b, ldb, c, ldc, NULL, 0);
		return;
	}
#endif
	circ_gemm(0, 0, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void circ_gemm_set_add(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		       float *c, int ldc, float *res, int ldr)
{
	if (m <= 0 || n <= 0)
		return;
#if CIRC_X86
	if (k > 0 && circ_gemm_acc_fast(n)) {
		gemm_acc_avx512(1, m, n, k, a, lda, b, ldb, c, ldc, res, ldr);
		return;
	}
#endif
	circ_gemm(0, 0, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
	for (int i = 0; i < m; i++) /* res += c */
		circ_vsum(res + (size_t)i * ldr, res + (size_t)i * ldr, c + (size_t)i * ldc, NULL,
			  0, (size_t)n);
}

int circ_gemm_w16_fast(void)
{
	return use_avx512();
}

void circ_gemm_w16(int tb, int m, int n, int k, const float *a, int lda, const uint16_t *w, int ldw,
		   int bf16, float beta, float *c, int ldc)
{
	CIRC_ASSERT(beta == 0.0f || beta == 1.0f);
	if (m <= 0 || n <= 0)
		return;
	if (k <= 0) {
		if (beta == 0.0f)
			for (int i = 0; i < m; i++)
				memset(c + (size_t)i * ldc, 0, (size_t)n * sizeof(float));
		return;
	}
#if CIRC_X86
	if (circ_gemm_w16_fast()) {
		gemm_w16_avx512(tb, beta == 0.0f, m, n, k, a, lda, w, ldw, bf16, c, ldc);
		return;
	}
#endif
	CIRC_ASSERT(!"circ_gemm_w16 without AVX-512");
}

/* ================================================================ SIMD helpers */

#if CIRC_X86
#define AVX2 __attribute__((target("avx2,fma")))

/* Horizontal sum of 8 lanes in a fixed order. */
AVX2 static inline float hsum8(__m256 v)
{
	__m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
	lo = _mm_add_ps(lo, hi);
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
	return _mm_cvtss_f32(lo);
}

/* Loads n < 8 floats, the rest zero. */
AVX2 static inline __m256 load_partial(const float *p, size_t n)
{
	float buf[8] = {0};
	memcpy(buf, p, n * sizeof *p);
	return _mm256_loadu_ps(buf);
}

AVX2 static inline void store_partial(float *p, __m256 v, size_t n)
{
	float buf[8];
	_mm256_storeu_ps(buf, v);
	memcpy(p, buf, n * sizeof *p);
}

/* exp(x): n = round(x log2 e), r = x - n ln2 (two-part), p(r) ~ e^r,
 * result = p * 2^n; below -87.33 the result is 0, above 88.72 +inf. */
AVX2 static inline __m256 exp8(__m256 x)
{
	const __m256 hi = _mm256_set1_ps(88.7228394f), lo = _mm256_set1_ps(-87.3365479f);
	__m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
	__m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
	__m256 xc = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
	__m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
	__m256 p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	/* 2^n in two halves so that n = 128 (x near 88.7) does not overflow the exponent */
	__m256i ni = _mm256_cvtps_epi32(n);
	__m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
	__m256 s1 = _mm256_castsi256_ps(
	    _mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
	__m256 s2 = _mm256_castsi256_ps(
	    _mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
	__m256 res = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
	res = _mm256_andnot_ps(under, res);
	res = _mm256_blendv_ps(res, _mm256_set1_ps(INFINITY), over);
	return _mm256_blendv_ps(res, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q)); /* NaN stays NaN */
}

AVX2 static void vexp_avx2(float *out, const float *inp, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) /* out[i] = expf(inp[i]) */
		_mm256_storeu_ps(out + i, exp8(_mm256_loadu_ps(inp + i)));
	if (i < n)
		store_partial(out + i, exp8(load_partial(inp + i, n - i)), n - i);
}

/* tanh(u) = 1 - 2 / (exp(2u) + 1): exact limits at +-inf, absolute error
 * ~1e-7 near 0 (relative error there is larger; GELU only needs absolute). */
AVX2 static inline __m256 tanh8(__m256 u)
{
	__m256 e = exp8(_mm256_add_ps(u, u));
	__m256 one = _mm256_set1_ps(1.0f);
	return _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, one)));
}

/* erf(x) = sign(x) (1 - poly(t) exp(-x^2)), t = 1/(1 + p|x|) (A&S 7.1.26). */
AVX2 static inline __m256 erf8(__m256 x)
{
	const __m256 sgn = _mm256_set1_ps(-0.0f);
	__m256 s = _mm256_and_ps(x, sgn), ax = _mm256_andnot_ps(sgn, x);
	__m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f),
								       ax, _mm256_set1_ps(1.0f)));
	__m256 p = _mm256_set1_ps(1.061405429f);
	p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
	p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
	p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
	p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
	p = _mm256_mul_ps(p, t);
	__m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(ax, ax)));
	__m256 y = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));
	return _mm256_or_ps(y, s);
}
#endif

/* Scalar twins of the SIMD formulas for machines without AVX2 (same
 * formulas, libm where the SIMD path uses its own approximations). */
static float tanh_s(float u)
{
	return tanhf(u);
}

/* ================================================================ element-wise */

void circ_vexp(float *out, const float *inp, size_t n)
{
	size_t i;
#if CIRC_X86
	if (use_avx2()) {
		vexp_avx2(out, inp, n);
		return;
	}
#endif
	for (i = 0; i < n; i++)
		out[i] = expf(inp[i]);
}

/* y = a + b + s src[0] + s src[1] + ... with s = -1 when neg (a - x is
 * a + (-x) exactly, so the sign flip changes nothing else). */
#if CIRC_X86
AVX2 static void vsum_avx2(float *y, const float *a, const float *b, const float *const *src, int k,
			   size_t n, int neg)
{
	__m256 sg = _mm256_set1_ps(neg ? -0.0f : 0.0f);
	size_t i = 0;
	for (; i + 8 <= n; i += 8) { /* y[i] = a[i] + b[i] +- src[0][i] +- ... */
		__m256 v = _mm256_loadu_ps(a + i);
		if (b)
			v = _mm256_add_ps(v, _mm256_loadu_ps(b + i));
		for (int j = 0; j < k; j++)
			v = _mm256_add_ps(v, _mm256_xor_ps(_mm256_loadu_ps(src[j] + i), sg));
		_mm256_storeu_ps(y + i, v);
	}
	for (; i < n; i++) { /* the same additions in the same order */
		float v = a[i];
		if (b)
			v += b[i];
		for (int j = 0; j < k; j++)
			v += neg ? -src[j][i] : src[j][i];
		y[i] = v;
	}
}
#endif

#if CIRC_X86
/* The same sums sixteen lanes at a time (additions are exact per lane, so
 * the bits do not change), the tail under a mask. */
AVX512 static void vsum_avx512(float *y, const float *a, const float *b, const float *const *src,
			       int k, size_t n, int neg)
{
	__m512 sg = _mm512_set1_ps(neg ? -0.0f : 0.0f);
	for (size_t i = 0; i < n; i += 16) { /* y[i] = a[i] + b[i] +- src[0][i] +- ... */
		__mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
		__m512 v = _mm512_maskz_loadu_ps(m, a + i);
		if (b)
			v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b + i));
		for (int j = 0; j < k; j++)
			v = _mm512_add_ps(
			    v, _mm512_castsi512_ps(_mm512_xor_si512(
				   _mm512_castps_si512(_mm512_maskz_loadu_ps(m, src[j] + i)),
				   _mm512_castps_si512(sg))));
		_mm512_mask_storeu_ps(y + i, m, v);
	}
}
#endif

static void vsum(float *y, const float *a, const float *b, const float *const *src, int k, size_t n,
		 int neg)
{
#if CIRC_X86
	if (use_avx512()) {
		vsum_avx512(y, a, b, src, k, n, neg);
		return;
	}
	if (use_avx2()) {
		vsum_avx2(y, a, b, src, k, n, neg);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++) {
		float v = a[i];
		if (b)
			v += b[i];
		for (int j = 0; j < k; j++)
			v += neg ? -src[j][i] : src[j][i];
		y[i] = v;
	}
}

void circ_vsum(float *y, const float *a, const float *b, const float *const *src, int k, size_t n)
{
	vsum(y, a, b, src, k, n, 0);
}

void circ_vsum_neg(float *y, const float *a, const float *b, const float *const *src, int k,
		   size_t n)
{
	vsum(y, a, b, src, k, n, 1);
}

void circ_vadd(float *y, const float *x, size_t n)
{
	circ_vsum(y, y, x, NULL, 0, n);
}

/* ================================================================ GELU */

#define GELU_K	0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A	0.044715f
#define SQRT1_2 0.7071067811865476f

#if CIRC_X86
AVX2 static inline __m256 gelu8(__m256 x, int exact)
{
	__m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
	if (exact) /* 0.5 x (1 + erf(x / sqrt 2)) */
		return _mm256_mul_ps(
		    _mm256_mul_ps(half, x),
		    _mm256_add_ps(one, erf8(_mm256_mul_ps(x, _mm256_set1_ps(SQRT1_2)))));
	/* 0.5 x (1 + tanh(k (x + a x^3))) */
	__m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
	__m256 u =
	    _mm256_mul_ps(_mm256_set1_ps(GELU_K), _mm256_fmadd_ps(_mm256_set1_ps(GELU_A), x3, x));
	return _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, tanh8(u)));
}

/* gelu'(x) */
AVX2 static inline __m256 dgelu8(__m256 x, int exact)
{
	__m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
	if (exact) { /* Phi(x) + x phi(x) */
		__m256 cdf = _mm256_mul_ps(
		    half, _mm256_add_ps(one, erf8(_mm256_mul_ps(x, _mm256_set1_ps(SQRT1_2)))));
		__m256 pdf =
		    _mm256_mul_ps(_mm256_set1_ps(0.3989422804014327f),
				  exp8(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(x, x))));
		return _mm256_fmadd_ps(x, pdf, cdf);
	}
	/* 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 a x^2) */
	__m256 x2 = _mm256_mul_ps(x, x);
	__m256 u = _mm256_mul_ps(_mm256_set1_ps(GELU_K),
				 _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_A), x2), x, x));
	__m256 t = tanh8(u);
	__m256 du = _mm256_mul_ps(_mm256_set1_ps(GELU_K),
				  _mm256_fmadd_ps(_mm256_set1_ps(3.0f * GELU_A), x2, one));
	__m256 sech2 = _mm256_fnmadd_ps(t, t, one);
	__m256 a = _mm256_mul_ps(half, _mm256_add_ps(one, t));
	return _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(half, x), sech2), du, a);
}

AVX2 static void gelu_fwd_avx2(float *out, const float *inp, size_t n, int exact)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(out + i, gelu8(_mm256_loadu_ps(inp + i), exact));
	if (i < n)
		store_partial(out + i, gelu8(load_partial(inp + i, n - i), exact), n - i);
}

AVX2 static void gelu_bwd_avx2(float *dinp, const float *inp, const float *dout, size_t n,
			       int exact, int inplace)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8) { /* dinp += gelu'(inp) dout (or d = gelu'(inp) d) */
		__m256 g = _mm256_mul_ps(dgelu8(_mm256_loadu_ps(inp + i), exact),
					 _mm256_loadu_ps(dout + i));
		if (!inplace)
			g = _mm256_add_ps(g, _mm256_loadu_ps(dinp + i));
		_mm256_storeu_ps(dinp + i, g);
	}
	if (i < n) {
		size_t r = n - i;
		__m256 g = _mm256_mul_ps(dgelu8(load_partial(inp + i, r), exact),
					 load_partial(dout + i, r));
		if (!inplace)
			g = _mm256_add_ps(g, load_partial(dinp + i, r));
		store_partial(dinp + i, g, r);
	}
}
#endif

#if CIRC_X86
/* The tanh GELU in AVX-512: exp8, tanh8 and gelu8 lane for lane (the same
 * operations in the same order, masks for blends), so it gives the AVX2
 * build's bits, twice as many lanes at a time. */
AVX512 static inline __m512 exp16(__m512 x)
{
	const __m512 hi = _mm512_set1_ps(88.7228394f), lo = _mm512_set1_ps(-87.3365479f);
	__mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
	__mmask16 over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ);
	__m512 xc = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	__m512i ni = _mm512_cvtps_epi32(n);
	__m512i n1 = _mm512_srai_epi32(ni, 1), n2 = _mm512_sub_epi32(ni, n1);
	__m512 s1 = _mm512_castsi512_ps(
	    _mm512_slli_epi32(_mm512_add_epi32(n1, _mm512_set1_epi32(127)), 23));
	__m512 s2 = _mm512_castsi512_ps(
	    _mm512_slli_epi32(_mm512_add_epi32(n2, _mm512_set1_epi32(127)), 23));
	__m512 res = _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
	res = _mm512_maskz_mov_ps((__mmask16)~under, res);
	res = _mm512_mask_blend_ps(over, res, _mm512_set1_ps(INFINITY));
	return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), res, x);
}

AVX512 static inline __m512 gelu16_tanh(__m512 x)
{
	__m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
	__m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
	__m512 u =
	    _mm512_mul_ps(_mm512_set1_ps(GELU_K), _mm512_fmadd_ps(_mm512_set1_ps(GELU_A), x3, x));
	__m512 e = exp16(_mm512_add_ps(u, u));
	__m512 t = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, one)));
	return _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, t));
}

AVX512 static void gelu_fwd_avx512(float *out, const float *inp, size_t n)
{
	size_t i = 0;
	for (; i + 16 <= n; i += 16) /* out[i] = gelu(inp[i]) */
		_mm512_storeu_ps(out + i, gelu16_tanh(_mm512_loadu_ps(inp + i)));
	if (i < n) {
		__mmask16 k = (__mmask16)((1u << (n - i)) - 1);
		_mm512_mask_storeu_ps(out + i, k, gelu16_tanh(_mm512_maskz_loadu_ps(k, inp + i)));
	}
}
#endif

static float gelu_s(float x, int exact)
{
	if (exact)
		return 0.5f * x * (1.0f + erff(x * SQRT1_2));
	return 0.5f * x * (1.0f + tanh_s(GELU_K * (x + GELU_A * x * x * x)));
}

static float dgelu_s(float x, int exact)
{
	if (exact)
		return 0.5f * (1.0f + erff(x * SQRT1_2)) +
		       x * 0.3989422804014327f * expf(-0.5f * x * x);
	float t = tanh_s(GELU_K * (x + GELU_A * x * x * x));
	return 0.5f * (1.0f + t) +
	       0.5f * x * (1.0f - t * t) * GELU_K * (1.0f + 3.0f * GELU_A * x * x);
}

void circ_gelu_fwd(float *out, const float *inp, size_t n, int exact)
{
	size_t i;
#if CIRC_X86
	if (!exact && use_avx512()) {
		gelu_fwd_avx512(out, inp, n);
		return;
	}
	if (use_avx2()) {
		gelu_fwd_avx2(out, inp, n, exact);
		return;
	}
#endif
	for (i = 0; i < n; i++)
		out[i] = gelu_s(inp[i], exact);
}

void circ_gelu_bwd(float *dinp, const float *inp, const float *dout, size_t n, int exact)
{
	size_t i;
#if CIRC_X86
	if (use_avx2()) {
		gelu_bwd_avx2(dinp, inp, dout, n, exact, 0);
		return;
	}
#endif
	for (i = 0; i < n; i++)
		dinp[i] += dgelu_s(inp[i], exact) * dout[i];
}

void circ_gelu_bwd_inplace(float *d, const float *inp, size_t n, int exact)
{
	size_t i;
#if CIRC_X86
	if (use_avx2()) {
		gelu_bwd_avx2(d, inp, d, n, exact, 1);
		return;
	}
#endif
	for (i = 0; i < n; i++)
		d[i] *= dgelu_s(inp[i], exact);
}

static double gelu_d(double x, int exact)
{
	if (exact)
		return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
	return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

void circ_gelu_fwd_ref(float *out, const float *inp, size_t n, int exact)
{
	size_t i;
	for (i = 0; i < n; i++)
		out[i] = (float)gelu_d(inp[i], exact);
}

void circ_gelu_bwd_ref(float *dinp, const float *inp, const float *dout, size_t n, int exact)
{
	size_t i;
	for (i = 0; i < n; i++) {
		double x = inp[i], g;
		if (exact) {
			g = 0.5 * (1.0 + erf(x / sqrt(2.0))) +
			    x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
		} else {
			double k = sqrt(2.0 / M_PI), t = tanh(k * (x + 0.044715 * x * x * x));
			g = 0.5 * (1.0 + t) +
			    0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
		}
		dinp[i] = (float)(dinp[i] + g * dout[i]);
	}
}

/* ================================================================ LayerNorm */

#if CIRC_X86
AVX2 static float dot_avx2(const float *a, const float *b, int n)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
	int i = 0;
	for (; i + 16 <= n; i += 16) { /* s += a[i] * b[i] */
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
	if (i < n)
		s1 = _mm256_fmadd_ps(load_partial(a + i, (size_t)(n - i)),
				     load_partial(b + i, (size_t)(n - i)), s1);
	return hsum8(_mm256_add_ps(s0, s1));
}

/* s0..s3 summed in a fixed order, then across lanes. */
AVX2 static inline float hsum8x4(__m256 s0, __m256 s1, __m256 s2, __m256 s3)
{
	return hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

/* The variance sums of a LayerNorm row o of mean m from element i on
 * (fewer than 32 left) into s0 and s1, then 1 / sqrt(variance + eps). */
AVX2 static float var_rstd_avx2(const float *o, float m, int i, int C, __m256 s0, __m256 s1,
				__m256 s2, __m256 s3, float eps)
{
	__m256 m8 = _mm256_set1_ps(m);
	for (; i + 8 <= C; i += 8) {
		__m256 d = _mm256_sub_ps(_mm256_loadu_ps(o + i), m8);
		s0 = _mm256_fmadd_ps(d, d, s0);
	}
	if (i < C) { /* padded lanes stay 0 so they add nothing */
		float buf[8] = {0};
		for (int j = 0; j < C - i; j++)
			buf[j] = o[i + j] - m;
		__m256 d = _mm256_loadu_ps(buf);
		s1 = _mm256_fmadd_ps(d, d, s1);
	}
	return 1.0f / sqrtf(hsum8x4(s0, s1, s2, s3) / (float)C + eps);
}

/* The rest of a LayerNorm row o whose mean m is known: the variance, then
 * o = (o - m) r w + b in place. Four accumulators, so the sums do not wait
 * on one add chain. */
AVX2 static void layernorm_finish_avx2(float *o, float *mean, float *rstd, float m, const float *w,
				       const float *b, int C, float eps)
{
	__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, m8 = _mm256_set1_ps(m), r8;
	float r;
	int i = 0;
	for (; i + 32 <= C; i += 32) { /* v += (o[i] - m)^2 */
		__m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(o + i), m8);
		__m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(o + i + 8), m8);
		__m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(o + i + 16), m8);
		__m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(o + i + 24), m8);
		s0 = _mm256_fmadd_ps(d0, d0, s0);
		s1 = _mm256_fmadd_ps(d1, d1, s1);
		s2 = _mm256_fmadd_ps(d2, d2, s2);
		s3 = _mm256_fmadd_ps(d3, d3, s3);
	}
	r = var_rstd_avx2(o, m, i, C, s0, s1, s2, s3, eps);
	r8 = _mm256_set1_ps(r);
	for (i = 0; i + 8 <= C; i += 8) { /* o = (o - m) r w + b */
		__m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(o + i), m8), r8);
		_mm256_storeu_ps(
		    o + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
	}
	if (i < C) {
		size_t k = (size_t)(C - i);
		__m256 d = _mm256_mul_ps(_mm256_sub_ps(load_partial(o + i, k), m8), r8);
		store_partial(
		    o + i, _mm256_fmadd_ps(d, load_partial(w + i, k), load_partial(b + i, k)), k);
	}
	if (mean)
		*mean = m;
	if (rstd)
		*rstd = r;
}

/* x[i..i+8) + b[i..i+8) +- src[0][off+i..) +- ... (b may be NULL; sg is
 * -0.0 to subtract the src rows): the order of circ_vsum. */
AVX2 static inline __m256 sum8(const float *x, const float *b, const float *const *src, int k,
			       size_t off, __m256 sg, int i)
{
	__m256 v = _mm256_loadu_ps(x + i);
	if (b)
		v = _mm256_add_ps(v, _mm256_loadu_ps(b + i));
	for (int j = 0; j < k; j++)
		v = _mm256_add_ps(v, _mm256_xor_ps(_mm256_loadu_ps(src[j] + off + i), sg));
	return v;
}

/* The sums of a LayerNorm row from element i on (fewer than 32 left): 8
 * at a time into accumulator (i / 8) mod 4, then the tail through a
 * padded buffer whose lanes past C stay 0. */
AVX2 static void sum_row_tail_avx2(float *o, __m256 *s, const float *x, const float *b,
				   const float *const *src, int k, size_t off, int neg, int i,
				   int C, int store)
{
	__m256 sg = _mm256_set1_ps(neg ? -0.0f : 0.0f);
	for (; i + 8 <= C; i += 8) {
		__m256 v = sum8(x, b, src, k, off, sg, i);
		if (store)
			_mm256_storeu_ps(o + i, v);
		s[(i / 8) & 3] = _mm256_add_ps(s[(i / 8) & 3], v);
	}
	if (i < C) { /* the tail through a padded buffer: lanes past C stay 0 */
		float t[8] = {0};
		for (int c = i; c < C; c++) {
			float v = x[c];
			if (b)
				v += b[c];
			for (int j = 0; j < k; j++)
				v += neg ? -src[j][off + (size_t)c] : src[j][off + (size_t)c];
			t[c - i] = v;
		}
		if (store)
			memcpy(o + i, t, (size_t)(C - i) * sizeof *t);
		s[(i / 8) & 3] = _mm256_add_ps(s[(i / 8) & 3], _mm256_loadu_ps(t));
	}
}

/* One LayerNorm row of x + b +- the src rows (k of them, each read from
 * element off on; b may be NULL): the sum is stored in o as its mean is
 * taken, then normalised in place. With k = 0, b = NULL and o = x, the
 * plain LayerNorm; the sums go the same way in every case (vector i into
 * accumulator i mod 4), so a sum formed here and one formed first and
 * normalised after give the same bytes. */
AVX2 static void layernorm_sum_row_avx2(float *o, float *mean, float *rstd, const float *x,
					const float *b, const float *const *src, int k, size_t off,
					int neg, const float *w, const float *bias, int C,
					float eps)
{
	__m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
		       _mm256_setzero_ps()};
	__m256 sg = _mm256_set1_ps(neg ? -0.0f : 0.0f);
	int i = 0, store = k || b || o != x;
	for (; i + 32 <= C; i += 32) { /* o[i] = the sum; s += o[i] */
		__m256 v0 = sum8(x, b, src, k, off, sg, i), v1 = sum8(x, b, src, k, off, sg, i + 8);
		__m256 v2 = sum8(x, b, src, k, off, sg, i + 16),
		       v3 = sum8(x, b, src, k, off, sg, i + 24);
		if (store) {
			_mm256_storeu_ps(o + i, v0);
			_mm256_storeu_ps(o + i + 8, v1);
			_mm256_storeu_ps(o + i + 16, v2);
			_mm256_storeu_ps(o + i + 24, v3);
		}
		s[0] = _mm256_add_ps(s[0], v0);
		s[1] = _mm256_add_ps(s[1], v1);
		s[2] = _mm256_add_ps(s[2], v2);
		s[3] = _mm256_add_ps(s[3], v3);
	}
	sum_row_tail_avx2(o, s, x, b, src, k, off, neg, i, C, store);
	layernorm_finish_avx2(o, mean, rstd, hsum8x4(s[0], s[1], s[2], s[3]) / (float)C, w, bias, C,
			      eps);
}

/* The same LayerNorm row with 16-lane vectors where the CPU has AVX-512:
 * accumulator pair (0, 1) lies in the low and high halves of one 16-lane
 * register and (2, 3) in another, so every element goes into the same
 * accumulator lane, in the same order, as in layernorm_sum_row_avx2, and
 * the bytes are the same (the tails, shorter than 32, go as there). */
#define AVX512LN __attribute__((target("avx512f,avx2,fma")))

AVX512LN static inline __m512 sum16(const float *x, const float *b, const float *const *src, int k,
				    size_t off, __m512 sg, int i)
{
	__m512 v = _mm512_loadu_ps(x + i);
	if (b)
		v = _mm512_add_ps(v, _mm512_loadu_ps(b + i));
	for (int j = 0; j < k; j++)
		v = _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_xor_si512(
					 _mm512_castps_si512(_mm512_loadu_ps(src[j] + off + i)),
					 _mm512_castps_si512(sg))));
	return v;
}

AVX512LN static void layernorm_finish_avx512(float *o, float *mean, float *rstd, float m,
					     const float *w, const float *b, int C, float eps)
{
	__m512 s01 = _mm512_setzero_ps(), s23 = s01, m16 = _mm512_set1_ps(m), r16;
	__m256 s0, s1, s2, s3;
	float r;
	int i = 0;
	for (; i + 32 <= C; i += 32) { /* v += (o[i] - m)^2 */
		__m512 d01 = _mm512_sub_ps(_mm512_loadu_ps(o + i), m16);
		__m512 d23 = _mm512_sub_ps(_mm512_loadu_ps(o + i + 16), m16);
		s01 = _mm512_fmadd_ps(d01, d01, s01);
		s23 = _mm512_fmadd_ps(d23, d23, s23);
	}
	s0 = _mm512_castps512_ps256(s01);
	s1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s01), 1));
	s2 = _mm512_castps512_ps256(s23);
	s3 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s23), 1));
	r = var_rstd_avx2(o, m, i, C, s0, s1, s2, s3, eps);
	r16 = _mm512_set1_ps(r);
	for (i = 0; i + 16 <= C; i += 16) { /* o = (o - m) r w + b */
		__m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(o + i), m16), r16);
		_mm512_storeu_ps(
		    o + i, _mm512_fmadd_ps(d, _mm512_loadu_ps(w + i), _mm512_loadu_ps(b + i)));
	}
	if (i < C) {
		__mmask16 km = (__mmask16)((1u << (C - i)) - 1);
		__m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(km, o + i), m16), r16);
		_mm512_mask_storeu_ps(o + i, km,
				      _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(km, w + i),
						      _mm512_maskz_loadu_ps(km, b + i)));
	}
	if (mean)
		*mean = m;
	if (rstd)
		*rstd = r;
}

AVX512LN static void layernorm_sum_row_avx512(float *o, float *mean, float *rstd, const float *x,
					      const float *b, const float *const *src, int k,
					      size_t off, int neg, const float *w,
					      const float *bias, int C, float eps)
{
	__m512 s01 = _mm512_setzero_ps(), s23 = s01, sg16 = _mm512_set1_ps(neg ? -0.0f : 0.0f);
	__m256 s[4];
	int i = 0, store = k || b || o != x;
	for (; i + 32 <= C; i += 32) { /* o[i] = the sum; s += o[i] */
		__m512 v01 = sum16(x, b, src, k, off, sg16, i),
		       v23 = sum16(x, b, src, k, off, sg16, i + 16);
		if (store) {
			_mm512_storeu_ps(o + i, v01);
			_mm512_storeu_ps(o + i + 16, v23);
		}
		s01 = _mm512_add_ps(s01, v01);
		s23 = _mm512_add_ps(s23, v23);
	}
	s[0] = _mm512_castps512_ps256(s01);
	s[1] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s01), 1));
	s[2] = _mm512_castps512_ps256(s23);
	s[3] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s23), 1));
	sum_row_tail_avx2(o, s, x, b, src, k, off, neg, i, C, store);
	layernorm_finish_avx512(o, mean, rstd, hsum8x4(s[0], s[1], s[2], s[3]) / (float)C, w, bias,
				C, eps);
}

/* x[i..i+8) (+ add[i..i+8) when add is not NULL): a receiver's input read
 * as residual + delta without materialising it. */
AVX2 static inline __m256 xload(const float *x, const float *add, int i)
{
	__m256 v = _mm256_loadu_ps(x + i);
	return add ? _mm256_add_ps(v, _mm256_loadu_ps(add + i)) : v;
}

AVX2 static inline __m256 xload_partial(const float *x, const float *add, int i, size_t k)
{
	__m256 v = load_partial(x + i, k);
	return add ? _mm256_add_ps(v, load_partial(add + i, k)) : v;
}

/* One row of the LayerNorm input gradient:
 *   u = w dy, xh = (x - m) r, a = mean(u), c = mean(u xh),
 *   dx += r (u - a - xh c)   (and dacc += the same). */
AVX2 static void layernorm_bwd_row_avx2(float *dx, float *dacc, const float *dy, const float *x,
					const float *add, float m, float r, const float *w, int C,
					int set)
{
	__m256 sa = _mm256_setzero_ps(), sc = _mm256_setzero_ps();
	__m256 m8 = _mm256_set1_ps(m), r8 = _mm256_set1_ps(r);
	float a, c;
	int i = 0;
	for (; i + 8 <= C; i += 8) {
		__m256 u = _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(dy + i));
		__m256 xh = _mm256_mul_ps(_mm256_sub_ps(xload(x, add, i), m8), r8);
		sa = _mm256_add_ps(sa, u);
		sc = _mm256_fmadd_ps(u, xh, sc);
	}
	if (i < C) { /* padded lanes have u = 0, so they add nothing */
		size_t k = (size_t)(C - i);
		__m256 u = _mm256_mul_ps(load_partial(w + i, k), load_partial(dy + i, k));
		__m256 xh = _mm256_mul_ps(_mm256_sub_ps(xload_partial(x, add, i, k), m8), r8);
		sa = _mm256_add_ps(sa, u);
		sc = _mm256_fmadd_ps(u, xh, sc);
	}
	a = hsum8(sa) / (float)C;
	c = hsum8(sc) / (float)C;
	__m256 a8 = _mm256_set1_ps(a), c8 = _mm256_set1_ps(c);
	for (i = 0; i + 8 <= C; i += 8) {
		__m256 u = _mm256_mul_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(dy + i));
		__m256 xh = _mm256_mul_ps(_mm256_sub_ps(xload(x, add, i), m8), r8);
		__m256 g = _mm256_mul_ps(r8, _mm256_fnmadd_ps(xh, c8, _mm256_sub_ps(u, a8)));
		_mm256_storeu_ps(dx + i, set ? g : _mm256_add_ps(_mm256_loadu_ps(dx + i), g));
		if (dacc)
			_mm256_storeu_ps(dacc + i, _mm256_add_ps(_mm256_loadu_ps(dacc + i), g));
	}
	if (i < C) {
		size_t k = (size_t)(C - i);
		__m256 u = _mm256_mul_ps(load_partial(w + i, k), load_partial(dy + i, k));
		__m256 xh = _mm256_mul_ps(_mm256_sub_ps(xload_partial(x, add, i, k), m8), r8);
		__m256 g = _mm256_mul_ps(r8, _mm256_fnmadd_ps(xh, c8, _mm256_sub_ps(u, a8)));
		store_partial(dx + i, set ? g : _mm256_add_ps(load_partial(dx + i, k), g), k);
		if (dacc)
			store_partial(dacc + i, _mm256_add_ps(load_partial(dacc + i, k), g), k);
	}
}
#endif

static void layernorm_row_s(float *o, float *mean, float *rstd, const float *x, const float *w,
			    const float *b, int C, float eps)
{
	float s = 0, v = 0, m, r;
	int i;
	for (i = 0; i < C; i++)
		s += x[i];
	m = s / (float)C;
	for (i = 0; i < C; i++)
		v += (x[i] - m) * (x[i] - m);
	r = 1.0f / sqrtf(v / (float)C + eps);
	for (i = 0; i < C; i++)
		o[i] = (x[i] - m) * r * w[i] + b[i];
	if (mean)
		*mean = m;
	if (rstd)
		*rstd = r;
}

void circ_layernorm_fwd(float *out, int ldo, float *mean, float *rstd, const float *inp, int ldi,
			const float *w, const float *b, int N, int C, float eps)
{
	circ_layernorm_fwd_add(out, ldo, mean, rstd, inp, NULL, ldi, w, b, N, C, eps);
}

void circ_layernorm_fwd_add(float *out, int ldo, float *mean, float *rstd, const float *inp,
			    const float *add, int ldi, const float *w, const float *b, int N, int C,
			    float eps)
{
	circ_layernorm_fwd_sum(out, ldo, mean, rstd, inp, add, NULL, 0, 0, 0, ldi, w, b, N, C, eps);
}

/* Each row is summed into its output row (in L1) as its mean is taken,
 * then normalised in place: one pass over memory. */
void circ_layernorm_fwd_sum(float *out, int ldo, float *mean, float *rstd, const float *x,
			    const float *base, const float *const *terms, int k, int neg,
			    size_t row0, int ldi, const float *w, const float *b, int N, int C,
			    float eps)
{
	for (int n = 0; n < N; n++) {
		size_t at = (row0 + (size_t)n) * (size_t)ldi;
		float *o = out + (size_t)n * ldo, *mn = mean ? mean + n : NULL,
		      *rs = rstd ? rstd + n : NULL;
		const float *xr = x + at, *br = base ? base + at : NULL;
#if CIRC_X86
		if (use_avx512()) {
			layernorm_sum_row_avx512(o, mn, rs, xr, br, terms, k, at, neg, w, b, C,
						 eps);
			continue;
		}
		if (use_avx2()) {
			layernorm_sum_row_avx2(o, mn, rs, xr, br, terms, k, at, neg, w, b, C, eps);
			continue;
		}
#endif
		for (int c = 0; c < C; c++) { /* the order of circ_vsum */
			float v = xr[c];
			if (br)
				v += br[c];
			for (int j = 0; j < k; j++)
				v += neg ? -terms[j][at + (size_t)c] : terms[j][at + (size_t)c];
			o[c] = v;
		}
		layernorm_row_s(o, mn, rs, o, w, b, C, eps);
	}
}

void circ_layernorm_fwd_ref(float *out, int ldo, float *mean, float *rstd, const float *inp,
			    int ldi, const float *w, const float *b, int N, int C, float eps)
{
	circ_layernorm_fwd_add_ref(out, ldo, mean, rstd, inp, NULL, ldi, w, b, N, C, eps);
}

void circ_layernorm_fwd_add_ref(float *out, int ldo, float *mean, float *rstd, const float *inp,
				const float *add, int ldi, const float *w, const float *b, int N,
				int C, float eps)
{
	int n, i;
	for (n = 0; n < N; n++) {
		const float *x = inp + (size_t)n * ldi, *a = add ? add + (size_t)n * ldi : NULL;
		double s = 0, v = 0, m, r;
#define X_(i) ((double)(a ? x[i] + a[i] : x[i])) /* the float sum, as the input is */
		for (i = 0; i < C; i++)
			s += X_(i);
		m = s / C;
		for (i = 0; i < C; i++)
			v += (X_(i) - m) * (X_(i) - m);
		r = 1.0 / sqrt(v / C + eps);
		for (i = 0; i < C; i++)
			out[(size_t)n * ldo + i] = (float)((X_(i) - m) * r * w[i] + b[i]);
#undef X_
		if (mean)
			mean[n] = (float)m;
		if (rstd)
			rstd[n] = (float)r;
	}
}

void circ_layernorm_bwd(float *dinp, float *dacc, const float *dout, const float *inp,
			const float *mean, const float *rstd, const float *w, int N, int C, int set)
{
	circ_layernorm_bwd_add(dinp, dacc, dout, inp, NULL, mean, rstd, w, N, C, set);
}

void circ_layernorm_bwd_add(float *dinp, float *dacc, const float *dout, const float *inp,
			    const float *add, const float *mean, const float *rstd, const float *w,
			    int N, int C, int set)
{
	int n, i;
	for (n = 0; n < N; n++) {
		size_t o = (size_t)n * C;
		const float *ad = add ? add + o : NULL;
#if CIRC_X86
		if (use_avx2()) {
			layernorm_bwd_row_avx2(dinp + o, dacc ? dacc + o : NULL, dout + o, inp + o,
					       ad, mean[n], rstd[n], w, C, set);
			continue;
		}
#endif
		float a = 0, c = 0, m = mean[n], r = rstd[n];
		for (i = 0; i < C; i++) {
			float x = ad ? inp[o + i] + ad[i] : inp[o + i];
			float u = w[i] * dout[o + i], xh = (x - m) * r;
			a += u;
			c += u * xh;
		}
		a /= (float)C;
		c /= (float)C;
		for (i = 0; i < C; i++) {
			float x = ad ? inp[o + i] + ad[i] : inp[o + i];
			float u = w[i] * dout[o + i], xh = (x - m) * r;
			float g = r * (u - a - xh * c);
			dinp[o + i] = set ? g : dinp[o + i] + g;
			if (dacc)
				dacc[o + i] += g;
		}
	}
}

void circ_layernorm_bwd_ref(float *dinp, float *dacc, const float *dout, const float *inp,
			    const float *mean, const float *rstd, const float *w, int N, int C,
			    int set)
{
	circ_layernorm_bwd_add_ref(dinp, dacc, dout, inp, NULL, mean, rstd, w, N, C, set);
}

void circ_layernorm_bwd_add_ref(float *dinp, float *dacc, const float *dout, const float *inp,
				const float *add, const float *mean, const float *rstd,
				const float *w, int N, int C, int set)
{
	int n, i;
	for (n = 0; n < N; n++) {
		size_t o = (size_t)n * C;
		double a = 0, c = 0, m = mean[n], r = rstd[n];
#define X_(i) ((double)(add ? inp[o + (i)] + add[o + (i)] : inp[o + (i)]))
		for (i = 0; i < C; i++) {
			double u = (double)w[i] * dout[o + i], xh = (X_(i) - m) * r;
			a += u;
			c += u * xh;
		}
		a /= C;
		c /= C;
		for (i = 0; i < C; i++) {
			double u = (double)w[i] * dout[o + i], xh = (X_(i) - m) * r;
			double g = r * (u - a - xh * c);
			dinp[o + i] = (float)((set ? 0.0 : dinp[o + i]) + g);
			if (dacc)
				dacc[o + i] = (float)(dacc[o + i] + g);
		}
#undef X_
	}
}

/* Parameter gradients: a row at a time, so that the sums over rows run in
 * row order (the same bytes for any thread count of the caller). */
void circ_layernorm_bwd_params(float *dw, float *db, const float *dout, const float *inp,
			       const float *mean, const float *rstd, int N, int C)
{
	for (int n = 0; n < N; n++) {
		const float *dy = dout + (size_t)n * C, *x = inp + (size_t)n * C;
		float m = mean[n], r = rstd[n];
		for (int i = 0; i < C; i++) {
			dw[i] += dy[i] * ((x[i] - m) * r);
			db[i] += dy[i];
		}
	}
}

void circ_layernorm_bwd_params_ref(float *dw, float *db, const float *dout, const float *inp,
				   const float *mean, const float *rstd, int N, int C)
{
	for (int i = 0; i < C; i++) {
		double sw = 0, sb = 0;
		for (int n = 0; n < N; n++) {
			double dy = dout[(size_t)n * C + i];
			sw += dy * (((double)inp[(size_t)n * C + i] - mean[n]) * rstd[n]);
			sb += dy;
		}
		dw[i] = (float)(dw[i] + sw);
		db[i] = (float)(db[i] + sb);
	}
}

void circ_bias_bwd(float *db, const float *d, int m, int n, int ld)
{
	for (int i = 0; i < m; i++) {
		const float *row = d + (size_t)i * ld;
		for (int j = 0; j < n; j++)
			db[j] += row[j];
	}
}

void circ_bias_bwd_ref(float *db, const float *d, int m, int n, int ld)
{
	for (int j = 0; j < n; j++) {
		double s = 0;
		for (int i = 0; i < m; i++)
			s += d[(size_t)i * ld + j];
		db[j] = (float)(db[j] + s);
	}
}

/* ================================================================ attention */

/* Fast: per (b, h): scores with a vector dot, softmax with the fast exp,
 * z_t = sum_s att[t][s] v_s with a vector axpy. */
#if CIRC_X86
AVX2 static void axpy_avx2(float *y, float a, const float *x, int n)
{
	__m256 a8 = _mm256_set1_ps(a);
	int i = 0;
	for (; i + 8 <= n; i += 8) /* y += a x */
		_mm256_storeu_ps(
		    y + i, _mm256_fmadd_ps(a8, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] = fmaf(a, x[i], y[i]);
}
#endif

static float dot_s(const float *a, const float *b, int n)
{
#if CIRC_X86
	if (use_avx2())
		return dot_avx2(a, b, n);
#endif
	float s = 0;
	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static void axpy_s(float *y, float a, const float *x, int n)
{
#if CIRC_X86
	if (use_avx2()) {
		axpy_avx2(y, a, x, n);
		return;
	}
#endif
	for (int i = 0; i < n; i++)
		y[i] += a * x[i];
}

void circ_attn_fwd(float *z, float *att, const float *qkv, int B, int T, int C, int H)
{
	circ_attn_fwd_heads(z, att, qkv, B, T, C, H, NULL);
}

void circ_attn_fwd_heads(float *z, float *att, const float *qkv, int B, int T, int C, int H,
			 const unsigned char *skip)
{
	int D = C / H, b, h, t, s;
	float scale = 1.0f / sqrtf((float)D);
	size_t C3 = (size_t)3 * C;
	for (b = 0; b < B; b++)
		for (h = 0; h < H; h++) {
			if (skip && skip[h])
				continue;
			const float *base = qkv + (size_t)b * T * C3;
			float *A = att + ((size_t)b * H + h) * T * T;
			for (t = 0; t < T; t++) {
				const float *q = base + t * C3 + h * D;
				float *row = A + (size_t)t * T, mx = -INFINITY, sum = 0;
				float *zt = z + ((size_t)b * T + t) * C + h * D;
				for (s = 0; s <= t; s++) {
					row[s] = dot_s(q, base + s * C3 + C + h * D, D) * scale;
					if (row[s] > mx)
						mx = row[s];
				}
				for (s = 0; s <= t; s++)
					row[s] -= mx;
				circ_vexp(row, row, (size_t)t + 1);
				for (s = 0; s <= t; s++)
					sum += row[s];
				for (s = 0; s <= t; s++)
					row[s] /= sum;
				for (s = t + 1; s < T; s++)
					row[s] = 0;
				memset(zt, 0, (size_t)D * sizeof *zt);
				for (s = 0; s <= t; s++)
					axpy_s(zt, row[s], base + s * C3 + 2 * C + h * D, D);
			}
		}
}

void circ_attn_fwd_ref(float *z, float *att, const float *qkv, int B, int T, int C, int H)
{
	int D = C / H, b, h, t, s, d;
	double scale = 1.0 / sqrt((double)D);
	size_t C3 = (size_t)3 * C;
	double *row = circ_xmalloc((size_t)T * sizeof *row);
	for (b = 0; b < B; b++)
		for (h = 0; h < H; h++) {
			const float *base = qkv + (size_t)b * T * C3;
			for (t = 0; t < T; t++) {
				double mx = -INFINITY, sum = 0;
				for (s = 0; s <= t; s++) {
					double dot = 0;
					for (d = 0; d < D; d++)
						dot += (double)base[t * C3 + h * D + d] *
						       base[s * C3 + C + h * D + d];
					row[s] = dot * scale;
					if (row[s] > mx)
						mx = row[s];
				}
				for (s = 0; s <= t; s++) {
					row[s] = exp(row[s] - mx);
					sum += row[s];
				}
				for (s = 0; s < T; s++)
					att[(((size_t)b * H + h) * T + t) * T + s] =
					    s <= t ? (float)(row[s] / sum) : 0.0f;
				for (d = 0; d < D; d++) {
					double acc = 0;
					for (s = 0; s <= t; s++)
						acc +=
						    row[s] / sum * base[s * C3 + 2 * C + h * D + d];
					z[((size_t)b * T + t) * C + h * D + d] = (float)acc;
				}
			}
		}
	free(row);
}

void circ_attn_bwd(float *dqkv, const float *dz, const float *qkv, const float *att, int B, int T,
		   int C, int H)
{
	int D = C / H, b, h, t, s;
	float scale = 1.0f / sqrtf((float)D);
	size_t C3 = (size_t)3 * C;
	float datt[CIRC_ATTN_MAX_T];
	for (b = 0; b < B; b++)
		for (h = 0; h < H; h++) {
			const float *base = qkv + (size_t)b * T * C3;
			float *dbase = dqkv + (size_t)b * T * C3;
			const float *A = att + ((size_t)b * H + h) * T * T;
			for (t = 0; t < T; t++) {
				const float *row = A + (size_t)t * T;
				const float *dzt = dz + ((size_t)b * T + t) * C + h * D;
				float dot = 0;
				for (s = 0; s <= t; s++) {
					/* datt = dz_t . v_s; dv_s += att dz_t */
					datt[s] = dot_s(dzt, base + s * C3 + 2 * C + h * D, D);
					axpy_s(dbase + s * C3 + 2 * C + h * D, row[s], dzt, D);
					dot += row[s] * datt[s];
				}
				for (s = 0; s <= t; s++) {
					/* softmax backward, then the scaled q.k product */
					float ds = row[s] * (datt[s] - dot) * scale;
					axpy_s(dbase + t * C3 + h * D, ds,
					       base + s * C3 + C + h * D, D);
					axpy_s(dbase + s * C3 + C + h * D, ds,
					       base + t * C3 + h * D, D);
				}
			}
		}
}

void circ_attn_bwd_ref(float *dqkv, const float *dz, const float *qkv, const float *att, int B,
		       int T, int C, int H)
{
	int D = C / H, b, h, t, s, d;
	double scale = 1.0 / sqrt((double)D);
	size_t C3 = (size_t)3 * C;
	double *datt = circ_xmalloc((size_t)T * sizeof *datt);
	for (b = 0; b < B; b++)
		for (h = 0; h < H; h++) {
			const float *base = qkv + (size_t)b * T * C3;
			float *dbase = dqkv + (size_t)b * T * C3;
			const float *A = att + ((size_t)b * H + h) * T * T;
			for (t = 0; t < T; t++) {
				const float *dzt = dz + ((size_t)b * T + t) * C + h * D;
				double dot = 0;
				for (s = 0; s <= t; s++) {
					double acc = 0;
					for (d = 0; d < D; d++)
						acc += (double)dzt[d] *
						       base[s * C3 + 2 * C + h * D + d];
					datt[s] = acc;
					dot += A[t * T + s] * acc;
					for (d = 0; d < D; d++)
						dbase[s * C3 + 2 * C + h * D + d] =
						    (float)(dbase[s * C3 + 2 * C + h * D + d] +
							    (double)A[t * T + s] * dzt[d]);
				}
				for (s = 0; s <= t; s++) {
					double ds = A[t * T + s] * (datt[s] - dot) * scale;
					for (d = 0; d < D; d++) {
						dbase[t * C3 + h * D + d] =
						    (float)(dbase[t * C3 + h * D + d] +
							    ds * base[s * C3 + C + h * D + d]);
						dbase[s * C3 + C + h * D + d] =
						    (float)(dbase[s * C3 + C + h * D + d] +
							    ds * base[t * C3 + h * D + d]);
					}
				}
			}
		}
	free(datt);
}

/* ---- circ_gemm_bt_bcast: c = a b^T for long rows, by broadcasts ----
 *
 * circ_gemm_bt_long's tiles reduce 16 lanes per element and chunk, and
 * their rows leave L1. Here b's rows are packed per chunk of BC_KC values of
 * p into a panel (BC_KC, W) of columns (W = 16 V vectors, transposed with
 * 16 x 16 shuffles), and R rows of a pass it:
 * acc[r][v] += a[r][p] broadcast * panel[p][16 v ..], no lane ever reduced.
 * The panel stays in L1 beside the rows of a streaming through: V is at
 * most what keeps it within half of the L1 data cache (bc_vmax: 16 KiB, V
 * 4, on Zen 4's 32 KiB; 24 KiB, V 6, on Sapphire Rapids' 48 KiB). On Zen 4
 * 96 columns as 64 + 32 ran at 91-94 GFLOP/s a core where one 24 KiB panel
 * of 96 ran at 80 (the rows of a read twice, from memory at 65,536-long
 * rows, cost less than the panel's misses). Each element is the sum, chunk
 * after chunk in order, of its chunk's sum (fused multiply-adds in order of
 * p, from 0): the same bits for every tile, V, m and column panel. The next
 * tile's rows of a are prefetched. */
#define BC_KC	64
#define BC_VMAX 6

#if CIRC_X86
/* panel (16 rows p, 16 columns j) = rows (16 rows j of b, 16 values of p)
 * transposed; rows j >= nr are taken as zero. */
AVX512 static void bc_transpose16(float *panel, int ldp, const float *b, int ldb, int nr)
{
	__m512 r[16], t[16];
	for (int i = 0; i < 16; i++)
		r[i] = i < nr ? _mm512_loadu_ps(b + (size_t)i * ldb) : _mm512_setzero_ps();
	for (int i = 0; i < 16; i += 2) {
		t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
		t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
	}
	/* r[4 i + e], lane L: rows 4 i .. 4 i + 3 of column 4 L + e */
	for (int i = 0; i < 16; i += 4) {
		r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
		r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
		r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
		r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
	}
	for (int e = 0; e < 4; e++) {
		__m512 v0 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x88),
		       w0 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x88),
		       v1 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xDD),
		       w1 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xDD);
		_mm512_store_ps(panel + (size_t)e * ldp, _mm512_shuffle_f32x4(v0, w0, 0x88));
		_mm512_store_ps(panel + (size_t)(8 + e) * ldp, _mm512_shuffle_f32x4(v0, w0, 0xDD));
		_mm512_store_ps(panel + (size_t)(4 + e) * ldp, _mm512_shuffle_f32x4(v1, w1, 0x88));
		_mm512_store_ps(panel + (size_t)(12 + e) * ldp, _mm512_shuffle_f32x4(v1, w1, 0xDD));
	}
}

/* c (R, 16 V; the last vector's columns masked by last) = (first ? 0 : c)
 * + a (R, kc) panel (kc, 16 V), each element's chunk sum from 0 in order
 * of p; pf: the next tile's rows (R, lda apart), prefetched. With b1, also
 * lanes (R, 16) += a's rows against b1 (kc) in 16 lanes (dotc_tile's sums,
 * carried over the chunks), from the rows while they are in L1. */
#define BC_TILE(R, V)                                                                              \
	AVX512 static void bc_tile_##R##x##V(int kc, const float *a, int lda, const float *panel,  \
					     float *c, int ldc, __mmask16 last, int first,         \
					     const float *pf, const float *b1, float *lanes)       \
	{                                                                                          \
		__m512 acc[R][V];                                                                  \
		_Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
		    _Pragma("GCC unroll 8") for (int v = 0; v < V; v++) acc[r][v] =                \
			_mm512_setzero_ps();                                                       \
		for (int p0 = 0; p0 < kc; p0 += 16) {                                              \
			_Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                        \
			    _mm_prefetch((const char *)(pf + (size_t)r * lda + p0), _MM_HINT_T0);  \
			if (b1) {                                                                  \
				__m512 bv = _mm512_loadu_ps(b1 + p0);                              \
				_Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                \
				    _mm512_storeu_ps(                                              \
					lanes + 16 * r,                                            \
					_mm512_fmadd_ps(_mm512_loadu_ps(a + (size_t)r * lda + p0), \
							bv, _mm512_loadu_ps(lanes + 16 * r)));     \
			}                                                                          \
			for (int p = p0; p < p0 + 16; p++) {                                       \
				const float *pp = panel + (size_t)p * (16 * V);                    \
				__m512 bv[V];                                                      \
				_Pragma("GCC unroll 8") for (int v = 0; v < V; v++) bv[v] =        \
				    _mm512_load_ps(pp + 16 * v);                                   \
				_Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                \
				{                                                                  \
					__m512 x = _mm512_set1_ps(a[(size_t)r * lda + p]);         \
					_Pragma("GCC unroll 8") for (int v = 0; v < V; v++)        \
					    acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);      \
				}                                                                  \
			}                                                                          \
		}                                                                                  \
		_Pragma("GCC unroll 8") for (int r = 0; r < R; r++)                                \
		    _Pragma("GCC unroll 8") for (int v = 0; v < V; v++)                            \
		{                                                                                  \
			float *cp = c + (size_t)r * ldc + 16 * v;                                  \
			__mmask16 mk = v == V - 1 ? last : 0xFFFF;                                 \
			__m512 s = first                                                           \
				       ? acc[r][v]                                                 \
				       : _mm512_add_ps(_mm512_maskz_loadu_ps(mk, cp), acc[r][v]);  \
			_mm512_mask_storeu_ps(cp, mk, s);                                          \
		}                                                                                  \
	}
BC_TILE(8, 1)
BC_TILE(1, 1)
BC_TILE(8, 2)
BC_TILE(1, 2)
BC_TILE(8, 3)
BC_TILE(1, 3)
BC_TILE(6, 4)
BC_TILE(1, 4)
BC_TILE(4, 5)
BC_TILE(1, 5)
BC_TILE(4, 6)
BC_TILE(1, 6)
#undef BC_TILE

AVX512 static float lanes_sum(const float *lanes)
{
	return _mm512_reduce_add_ps(_mm512_loadu_ps(lanes));
}

typedef void (*bc_tile_fn)(int kc, const float *a, int lda, const float *panel, float *c, int ldc,
			   __mmask16 last, int first, const float *pf, const float *b1,
			   float *lanes);
/* By V - 1: the tile of bc_rows[V - 1] rows, and the one of a single row. */
static const bc_tile_fn bc_tiles[BC_VMAX][2] = {
    {bc_tile_8x1, bc_tile_1x1}, {bc_tile_8x2, bc_tile_1x2}, {bc_tile_8x3, bc_tile_1x3},
    {bc_tile_6x4, bc_tile_1x4}, {bc_tile_4x5, bc_tile_1x5}, {bc_tile_4x6, bc_tile_1x6}};
static const int bc_rows[BC_VMAX] = {8, 8, 8, 6, 4, 4};

static int bc_vmax_set; /* a test's choice (circ_gemm_bt_bcast_set_vmax), or 0 */

void circ_gemm_bt_bcast_set_vmax(int v)
{
	bc_vmax_set = v < 0 ? 0 : v > BC_VMAX ? BC_VMAX : v;
}

/* The most vectors of a panel: BC_KC x 16 V floats within half of the L1
 * data cache (4 when the size is unknown), at most BC_VMAX. */
static int bc_vmax(void)
{
	static int vmax;
	if (bc_vmax_set)
		return bc_vmax_set;
	if (!vmax) {
		long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
		int v = l1 > 0 ? (int)(l1 / 2 / (BC_KC * 16 * (long)sizeof(float))) : 4;
		vmax = v < 1 ? 1 : v > BC_VMAX ? BC_VMAX : v;
	}
	return vmax;
}

/* lanes (m, 16) of the dots against b1 (NULL: none) with the first panel. */
AVX512 static void gemm_bt_bcast_avx512(int m, int n, int k, const float *a, int lda,
					const float *b, int ldb, float *c, int ldc, const float *b1,
					float *lanes)
{
	_Alignas(64) float panel[BC_KC * 16 * BC_VMAX];
	int vmax = bc_vmax();
	for (int j0 = 0; j0 < n; j0 += 16 * vmax) {
		int nw = n - j0 < 16 * vmax ? n - j0 : 16 * vmax, V = (nw + 15) / 16,
		    R = bc_rows[V - 1];
		__mmask16 last = (__mmask16)(0xFFFFu >> (16 * V - nw));
		for (int p0 = 0; p0 < k; p0 += BC_KC) {
			int kc = k - p0 < BC_KC ? k - p0 : BC_KC;
			for (int v = 0; v < V; v++)
				for (int p = 0; p < kc; p += 16)
					bc_transpose16(panel + (size_t)p * (16 * V) + 16 * v,
						       16 * V,
						       b + (size_t)(j0 + 16 * v) * ldb + p0 + p,
						       ldb, nw - 16 * v);
			/* the next chunk's lines of b (nw rows of kc / 16), to L2 a share
			 * after each tile, so that its packing does not wait on memory */
			int nl = p0 + kc < k ? nw * (BC_KC / 16) : 0, ntile = m / R + m % R,
			    per = (nl + ntile - 1) / ntile, l = 0;
			for (int i = 0; i < m;) {
				int big = i + R <= m, rows = big ? R : 1;
				/* the next tile's rows: further down, or the next chunk's first */
				const float *pf = i + rows < m ? a + (size_t)(i + rows) * lda + p0
							       : a + p0 + (p0 + kc < k ? kc : 0);
				bc_tiles[V - 1][!big](kc, a + (size_t)i * lda + p0, lda, panel,
						      c + (size_t)i * ldc + j0, ldc, last, p0 == 0,
						      pf, b1 && j0 == 0 ? b1 + p0 : NULL,
						      lanes + (size_t)i * 16);
				for (int e = l + per < nl ? l + per : nl; l < e; l++)
					_mm_prefetch(
					    (const char *)(b +
							   (size_t)(j0 + l / (BC_KC / 16)) * ldb +
							   p0 + BC_KC + 16 * (l % (BC_KC / 16))),
					    _MM_HINT_T1);
				i += rows;
			}
		}
	}
}
#endif

void circ_gemm_bt_bcast(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
			float *c, int ldc)
{
	if (n == 1) { /* a matrix-vector product: circ_gemm_bt_set's dots */
		circ_gemm_bt_set(m, n, k, a, lda, b, ldb, c, ldc);
		return;
	}
	if (m <= 0 || n <= 0)
		return;
#if CIRC_X86
	if (circ_gemm_bt_fast(k)) {
		gemm_bt_bcast_avx512(m, n, k, a, lda, b, ldb, c, ldc, NULL, NULL);
		return;
	}
#endif
	circ_gemm(0, 1, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void circ_gemm_bt_bcast_dot(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
			    float *c, int ldc, const float *b1, float *c1)
{
	if (m <= 0)
		return;
#if CIRC_X86
	if (n > 1 && circ_gemm_bt_fast(k)) {
		float *lanes = circ_xcalloc((size_t)m * 16, sizeof *lanes);
		gemm_bt_bcast_avx512(m, n, k, a, lda, b, ldb, c, ldc, b1, lanes);
		for (int i = 0; i < m; i++) /* as dotc_tile reduces its lanes */
			c1[i] = lanes_sum(lanes + (size_t)i * 16);
		free(lanes);
		return;
	}
#endif
	circ_gemm_bt_bcast(m, n, k, a, lda, b, ldb, c, ldc);
	circ_gemm_bt_bcast(m, 1, k, a, lda, b1, k, c1, 1);
}
