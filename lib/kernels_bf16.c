/*
 * kernels_bf16: matrix products with bfloat16 inputs and float32 sums,
 * through oneDNN's matmul (Debian's libdnnl), for the model's optional
 * bf16 compute (circ_model_set_compute). oneDNN picks its kernel from the
 * CPU it sees: AMX-BF16 tiles where there are (Sapphire Rapids and later;
 * oneDNN 2.6 uses them by default), AVX512-BF16 dot products elsewhere
 * (AMD Zen 4/5, Cooper Lake). A CPU with neither would get oneDNN's slow
 * emulation or nothing: circ_bf16_check refuses it instead, naming what is
 * missing. ONEDNN_MAX_CPU_ISA lowers what oneDNN sees (the tests use it to
 * reach the refusal).
 *
 * Threads: each product runs on the calling thread (oneDNN's OpenMP team
 * held to one thread), so model.c splits a product over the run's own pool
 * as it splits OpenBLAS's, and nothing spins beside the pool's workers.
 * Primitives (jitted kernels) are made once per shape and kept for the
 * process; per-thread state (stream, oneDNN's scratchpad, the bf16 copy of
 * a) lives in slots taken and given back around each call, so any thread,
 * the pool's or a caller's, may call.
 *
 * Rounding: a is rounded to bf16 to nearest even (NaN stays NaN), as
 * PyTorch's .to(torch.bfloat16) rounds; the products of two bf16 values are
 * exact in f32 and oneDNN sums them in f32. circ_gemm_bf16_ref is the
 * plain twin: the same rounding, sums in double.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "safetensors.h"
#include "util.h"

#if defined(__x86_64__)
#include <immintrin.h>
/* 16 at a time with AVX-512F integer operations: the same rounding as
 * circ_f32_to_bf16 (to nearest even, NaN kept quiet), so the scalar tail
 * and the reference agree bit for bit. */
__attribute__((target("avx512f"))) static void round_avx512(uint16_t *dst, const float *src,
							    size_t n)
{
	const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
	const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
	const __m512i quiet = _mm512_set1_epi32(0x40);
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m512i x = _mm512_loadu_si512((const void *)(src + i));
		__m512i r = _mm512_add_epi32(
		    x, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(x, 16), one)));
		__mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, abs), inf);
		r = _mm512_mask_or_epi32(_mm512_srli_epi32(r, 16), nan, _mm512_srli_epi32(x, 16),
					 quiet);
		_mm256_storeu_si256((__m256i *)(void *)(dst + i), _mm512_cvtepi32_epi16(r));
	}
	for (; i < n; i++)
		dst[i] = circ_f32_to_bf16(src[i]);
}
#endif

void circ_round_bf16(uint16_t *dst, const float *src, size_t n)
{
#if defined(__x86_64__)
	if (__builtin_cpu_supports("avx512f")) {
		round_avx512(dst, src, n);
		return;
	}
#endif
	for (size_t i = 0; i < n; i++)
		dst[i] = circ_f32_to_bf16(src[i]);
}

void circ_gemm_bf16_ref(int tb, int m, int n, int k, const float *a, int lda, const uint16_t *b,
			int ldb, float beta, float *c, int ldc)
{
	for (int i = 0; i < m; i++)
		for (int j = 0; j < n; j++) {
			double s = 0;
			float *cij = &c[(size_t)i * ldc + j];
			for (int p = 0; p < k; p++) {
				double av =
				    circ_bf16_to_f32(circ_f32_to_bf16(a[(size_t)i * lda + p]));
				double bv = circ_bf16_to_f32(tb ? b[(size_t)j * ldb + p]
								: b[(size_t)p * ldb + j]);
				s += av * bv;
			}
			*cij = (float)(s + (beta == 0 ? 0.0 : (double)beta * *cij));
		}
}

#ifdef CIRC_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>

/* libgomp's (oneDNN's threading runtime); declared here so that the file
 * needs no OpenMP flags. */
void omp_set_num_threads(int n);

static pthread_once_t once = PTHREAD_ONCE_INIT;
static dnnl_engine_t engine;
static dnnl_cpu_isa_t isa;
static int engine_ok;

static void init_engine(void)
{
	isa = dnnl_get_effective_cpu_isa();
	engine_ok = dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success;
}

static const char *isa_name(dnnl_cpu_isa_t i)
{
	if ((i & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx)
		return "AMX-BF16";
	if ((i & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16)
		return "AVX512-BF16";
	if ((i & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core)
		return "AVX-512 without BF16";
	if ((i & dnnl_cpu_isa_avx2) == dnnl_cpu_isa_avx2)
		return "AVX2";
	return "no AVX2";
}

int circ_bf16_check(circ_error *e)
{
	pthread_once(&once, init_engine);
	if (!engine_ok)
		return circ_errorf(e, "bf16 compute: oneDNN could not make its CPU engine");
	if ((isa & dnnl_cpu_isa_avx512_core_bf16) != dnnl_cpu_isa_avx512_core_bf16)
		return circ_errorf(e,
				   "bf16 compute needs a CPU with AVX512-BF16 or AMX-BF16; oneDNN "
				   "sees %s here%s",
				   isa_name(isa),
				   getenv("ONEDNN_MAX_CPU_ISA") || getenv("DNNL_MAX_CPU_ISA")
				       ? " (limited by ONEDNN_MAX_CPU_ISA)"
				       : "");
	return 0;
}

const char *circ_bf16_isa(void)
{
	pthread_once(&once, init_engine);
	return isa_name(isa);
}

/* ---- primitives, one per shape, kept for the process ---- */

typedef struct prim {
	int tb, m, n, k, lda, ldb, ldc;
	float beta;
	dnnl_primitive_t p;
	size_t scratch;		/* bytes of oneDNN's scratchpad */
	dnnl_memory_desc_t smd; /* its descriptor */
	struct prim *next;
} prim;

static pthread_mutex_t prim_mu = PTHREAD_MUTEX_INITIALIZER;
static prim *prims;

static prim *prim_make(int tb, int m, int n, int k, int lda, int ldb, int ldc, float beta)
{
	dnnl_memory_desc_t amd, bmd, cmd;
	dnnl_dims_t ad = {m, k}, bd = {k, n}, cd = {m, n};
	dnnl_dims_t as = {lda, 1}, bs = {tb ? 1 : ldb, tb ? ldb : 1}, cs = {ldc, 1};
	dnnl_matmul_desc_t md;
	dnnl_primitive_attr_t attr = NULL;
	dnnl_post_ops_t po = NULL;
	dnnl_primitive_desc_t pd = NULL;
	const dnnl_memory_desc_t *sp;
	prim *q = NULL;
	int ok = dnnl_memory_desc_init_by_strides(&amd, 2, ad, dnnl_bf16, as) == dnnl_success &&
		 dnnl_memory_desc_init_by_strides(&bmd, 2, bd, dnnl_bf16, bs) == dnnl_success &&
		 dnnl_memory_desc_init_by_strides(&cmd, 2, cd, dnnl_f32, cs) == dnnl_success &&
		 dnnl_matmul_desc_init(&md, &amd, &bmd, NULL, &cmd) == dnnl_success &&
		 dnnl_primitive_attr_create(&attr) == dnnl_success &&
		 dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) ==
		     dnnl_success;
	if (ok && beta != 0)
		ok = dnnl_post_ops_create(&po) == dnnl_success &&
		     dnnl_post_ops_append_sum(po, beta) == dnnl_success &&
		     dnnl_primitive_attr_set_post_ops(attr, po) == dnnl_success;
	if (ok)
		ok = dnnl_primitive_desc_create(&pd, &md, attr, engine, NULL) == dnnl_success;
	if (ok) {
		q = circ_xcalloc(1, sizeof *q);
		*q = (prim){.tb = tb,
			    .m = m,
			    .n = n,
			    .k = k,
			    .lda = lda,
			    .ldb = ldb,
			    .ldc = ldc,
			    .beta = beta};
		sp = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
		if (sp)
			q->smd = *sp;
		q->scratch = sp ? dnnl_memory_desc_get_size(sp) : 0;
		if (dnnl_primitive_create(&q->p, pd) != dnnl_success) {
			free(q);
			q = NULL;
		}
	}
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	if (po)
		dnnl_post_ops_destroy(po);
	if (attr)
		dnnl_primitive_attr_destroy(attr);
	return q;
}

static const prim *prim_get(int tb, int m, int n, int k, int lda, int ldb, int ldc, float beta)
{
	prim *q;
	pthread_mutex_lock(&prim_mu);
	for (q = prims; q; q = q->next)
		if (q->tb == tb && q->m == m && q->n == n && q->k == k && q->lda == lda &&
		    q->ldb == ldb && q->ldc == ldc && q->beta == beta)
			break;
	if (!q) {
		q = prim_make(tb, m, n, k, lda, ldb, ldc, beta);
		if (q) {
			q->next = prims;
			prims = q;
		}
	}
	pthread_mutex_unlock(&prim_mu);
	return q;
}

/* ---- per-thread slots: a stream, the scratchpad, a in bf16 ---- */

/* more than the threads that can call at once (CIRC_THREADS_MAX is 256) */
#define SLOTS 512
typedef struct slot {
	int busy; /* atomic */
	dnnl_stream_t st;
	void *scratch, *a, *b, *c; /* oneDNN's scratchpad; a, b (bf16), c (f32) */
	size_t scratch_bytes, a_len, b_len, c_len;
} slot;
static slot slots[SLOTS];

static slot *slot_take(void)
{
	for (;;)
		for (int i = 0; i < SLOTS; i++) {
			int z = 0;
			if (__atomic_compare_exchange_n(&slots[i].busy, &z, 1, 0, __ATOMIC_ACQUIRE,
							__ATOMIC_RELAXED))
				return &slots[i];
		}
}

static void slot_give(slot *s)
{
	__atomic_store_n(&s->busy, 0, __ATOMIC_RELEASE);
}

static void grow(void **p, size_t *have, size_t need)
{
	if (*have >= need)
		return;
	free(*p);
	*p = circ_xalloc_aligned(need);
	*have = need;
}

static int mem(dnnl_memory_t *x, int r, int c, dnnl_data_type_t dt, int64_t s0, int64_t s1,
	       const void *p)
{
	dnnl_memory_desc_t d;
	dnnl_dims_t dims = {r, c}, st = {s0, s1};
	return dnnl_memory_desc_init_by_strides(&d, 2, dims, dt, st) == dnnl_success &&
	       dnnl_memory_create(x, &d, engine, (void *)p) == dnnl_success;
}

/* oneDNN 2.6 picks its kernel, and with it the order of each element's
 * sums, from the shape: its AMX kernel (brg) for a contiguous a and b, a
 * jitted GEMM (gemm:jit, a third as fast) for a strided or transposed b,
 * another kernel for fewer than 16 rows, and within brg a blocking of k
 * that follows m and n when k is large (measured: at k 3072 the bits of a
 * row change with the rows and columns it is computed with; at k <= 768
 * they do not). So every call here is the same kind of call: k in slices
 * of at most KC, summed into c one after the other (beta first); a's slice
 * and b's slice contiguous (b packed, transposed where tb, when it is not
 * already a plain (kc, n) block); at least MIN_M rows (zero rows added);
 * c contiguous. A row of c then has the same bits whichever rows and
 * columns share its product (tests/unit/test_bf16.c checks this), so the
 * result does not depend on how model.c splits a product over threads,
 * nor on whether a patched forward computes a receiver's columns alone. */
#define KC    768
#define MIN_M 16

/* One oneDNN product c (m, n) = a (m, kc) b (kc, n) + beta c, all
 * contiguous; 0 on success. */
static int run_prim(slot *s, int m, int n, int kc, const uint16_t *a, const uint16_t *b, float beta,
		    float *c)
{
	dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, ms = NULL;
	const prim *q = prim_get(0, m, n, kc, kc, n, n, beta);
	int ok;
	CIRC_ASSERT(q != NULL); /* oneDNN has a bf16 matmul for every plain shape */
	grow(&s->scratch, &s->scratch_bytes, q->scratch + 64);
	ok = mem(&ma, m, kc, dnnl_bf16, kc, 1, a) && mem(&mb, kc, n, dnnl_bf16, n, 1, b) &&
	     mem(&mc, m, n, dnnl_f32, n, 1, c);
	if (ok && q->scratch)
		ok = dnnl_memory_create(&ms, &q->smd, engine, s->scratch) == dnnl_success;
	if (ok) {
		dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ma},
					   {DNNL_ARG_WEIGHTS, mb},
					   {DNNL_ARG_DST, mc},
					   {DNNL_ARG_SCRATCHPAD, ms}};
		ok = dnnl_primitive_execute(q->p, s->st, ms ? 4 : 3, args) == dnnl_success &&
		     dnnl_stream_wait(s->st) == dnnl_success;
	}
	dnnl_memory_destroy(ma);
	dnnl_memory_destroy(mb);
	dnnl_memory_destroy(mc);
	dnnl_memory_destroy(ms);
	return ok ? 0 : -1;
}

void circ_gemm_bf16(int tb, int m, int n, int k, const float *a, int lda, const uint16_t *b,
		    int ldb, float beta, float *c, int ldc)
{
	slot *s;
	int mp = m < MIN_M ? MIN_M : m, ok = 1, packed = tb || ldb != n, own_c;
	float *cc;
	if (m <= 0 || n <= 0)
		return;
	if (k <= 0) {
		for (int i = 0; i < m; i++)
			for (int j = 0; j < n; j++)
				c[(size_t)i * ldc + j] =
				    beta == 0 ? 0 : beta * c[(size_t)i * ldc + j];
		return;
	}
	CIRC_ASSERT(circ_bf16_check(NULL) == 0);
	s = slot_take();
	omp_set_num_threads(1);
	if (!s->st)
		CIRC_ASSERT(dnnl_stream_create(&s->st, engine, dnnl_stream_default_flags) ==
			    dnnl_success);
	grow(&s->a, &s->a_len, (size_t)mp * KC * sizeof(uint16_t) + 64);
	if (packed)
		grow(&s->b, &s->b_len, (size_t)KC * n * sizeof(uint16_t) + 64);
	own_c = mp != m || ldc != n;
	if (own_c) {
		grow(&s->c, &s->c_len, (size_t)mp * n * sizeof(float) + 64);
		cc = s->c;
		for (int i = 0; i < mp; i++) /* the rows beta reads; padding rows zero */
			if (i < m && beta != 0)
				memcpy(cc + (size_t)i * n, c + (size_t)i * ldc,
				       (size_t)n * sizeof *cc);
			else
				memset(cc + (size_t)i * n, 0, (size_t)n * sizeof *cc);
	} else {
		cc = c;
	}
	for (int p0 = 0; ok && p0 < k; p0 += KC) {
		int kc = k - p0 < KC ? k - p0 : KC;
		uint16_t *sa = s->a, *sb = s->b;
		const uint16_t *bp = b + (size_t)p0 * ldb;
		for (int i = 0; i < m; i++)
			circ_round_bf16(sa + (size_t)i * kc, a + (size_t)i * lda + p0, (size_t)kc);
		if (p0 == 0 && mp > m)
			memset(sa + (size_t)m * kc, 0, (size_t)(mp - m) * kc * sizeof *sa);
		if (tb) /* b (n, k): its columns p0.. transposed into (kc, n) */
			for (int j = 0; j < n; j++)
				for (int p = 0; p < kc; p++)
					sb[(size_t)p * n + j] = b[(size_t)j * ldb + p0 + p];
		else if (packed)
			for (int p = 0; p < kc; p++)
				memcpy(sb + (size_t)p * n, bp + (size_t)p * ldb,
				       (size_t)n * sizeof *sb);
		ok = run_prim(s, mp, n, kc, sa, packed ? sb : bp, p0 ? 1.0f : beta, cc) == 0;
	}
	if (own_c)
		for (int i = 0; i < m; i++)
			memcpy(c + (size_t)i * ldc, cc + (size_t)i * n, (size_t)n * sizeof *cc);
	slot_give(s);
	CIRC_ASSERT(ok);
}

#else /* built without oneDNN */

int circ_bf16_check(circ_error *e)
{
	return circ_errorf(e, "bf16 compute: circ was built without oneDNN (install libdnnl-dev "
			      "and rebuild)");
}

const char *circ_bf16_isa(void)
{
	return "none (built without oneDNN)";
}

void circ_gemm_bf16(int tb, int m, int n, int k, const float *a, int lda, const uint16_t *b,
		    int ldb, float beta, float *c, int ldc)
{
	CIRC_ASSERT(!"circ_gemm_bf16 without oneDNN");
}

#endif
