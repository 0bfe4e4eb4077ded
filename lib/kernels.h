/*
 * kernels: the numeric building blocks of the GPT-2 forward and backward —
 * matrix multiply, LayerNorm, GELU, causal attention, softmax — each as a
 * fast version and a plain reference twin (suffix _ref) that the unit tests
 * compare against. The reference twins accumulate in double and use libm;
 * they are slow and obviously correct.
 *
 * Conventions (after llm.c): outputs first, then inputs, then dimensions.
 * Backward kernels ACCUMULATE (+=) into their gradient outputs, so that
 * gradients from several paths (and, later, parameter gradients over a
 * batch) add up without extra buffers; callers zero what they start.
 * All matrices are row-major with explicit leading dimensions.
 *
 * Dimension letters: N rows, C width, B batch, T sequence, H heads,
 * D = C/H head width, n element count.
 *
 * Speed: matrix multiplies go to OpenBLAS (cblas_sgemm); the element-wise
 * and row kernels have AVX2+FMA versions chosen at run time (the build
 * targets x86-64-v2; the CPU may do better), with a portable scalar path
 * that computes the same formulas. Row kernels can be split over a thread
 * pool (circ_pool).
 *
 * Layering: kernels use util only.
 */
#ifndef CIRC_KERNELS_H
#define CIRC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* ---- thread pool ---- */

/* A fixed set of worker threads for data-parallel loops. A pool of 1 (or a
 * NULL pool) runs everything on the calling thread. */
typedef struct circ_pool circ_pool;
/* Starts nthreads-1 workers (the caller is the nth). Never fails: if threads
 * cannot be created the pool runs serially. */
circ_pool *circ_pool_new(int nthreads);
void circ_pool_free(circ_pool *p); /* NULL is a no-op */
int circ_pool_threads(const circ_pool *p);
/* 1 on a thread running a loop body of some pool (where a nested
 * circ_pool_for runs serially on that thread). */
int circ_pool_inside(void);
/* Calls fn(ctx, begin, end) over a partition of [0, n) into contiguous
 * chunks, one per thread, and returns when all are done. Not reentrant. */
void circ_pool_for(circ_pool *p, size_t n, void (*fn)(void *ctx, size_t begin, size_t end),
		   void *ctx);

/* Sets OpenBLAS's (process-wide) thread count. */
void circ_blas_threads(int n);

/* For tests: the widest vector code the kernels may choose, 0 portable, 1
 * AVX2, 2 AVX-512 (the default; each only where the CPU has it). */
void circ_simd_limit(int level);

/* ---- matrix multiply ---- */

/* c (m, n) = alpha * op(a) op(b) + beta * c; op(a) is (m, k): a itself
 * (ta = 0, lda >= k) or a's transpose (ta = 1, a is (k, m), lda >= m);
 * likewise b. Row-major, like cblas_sgemm with CblasRowMajor. */
void circ_gemm(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
	       const float *b, int ldb, float beta, float *c, int ldc);
void circ_gemm_ref(int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
		   const float *b, int ldb, float beta, float *c, int ldc);

/* c (m, n) += a (m, k) b (k, n), row-major, on the calling thread only:
 * circ's own kernel where circ_gemm_acc_fast(n) says so (AVX-512 and n a
 * multiple of 16; each element summed in order of k, independent of m),
 * else circ_gemm. It beats OpenBLAS's blocks on narrow column blocks such
 * as one head's 64 columns of W_QKV. */
void circ_gemm_acc(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
		   int ldc);
int circ_gemm_acc_fast(int n);

/* c (m, n) = a (m, k) b (k, n): circ_gemm_acc's sums started from 0 (c's
 * old values are not read), else circ_gemm with beta 0. Each element is
 * the sum in order of k with fused multiply-adds, as OpenBLAS's kernels
 * compute it for k within one of their blocks. */
void circ_gemm_set(int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c,
		   int ldc);
/* circ_gemm_set, then res (m, n; rows ldr apart) += c, each element one
 * float addition, done while the sums are still in registers. */
void circ_gemm_set_add(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		       float *c, int ldc, float *res, int ldr);

/* b packed for circ_gemm_pk: op(b) (k, n; b itself for tb 0, else b is
 * (n, k)) in panels of 64 columns, panel j0/64 holding op(b)'s rows of its
 * columns j0 .. j0+63 one after another (k * 64 floats), the last panel
 * padded with zeros. circ_gemm_pack_floats is the size in floats. */
size_t circ_gemm_pack_floats(int k, int n);
void circ_gemm_pack(float *pk, int tb, int k, int n, const float *b, int ldb);
/* c (m, n) = a (m, k) op(b) (+ c unless zero) on the calling thread, op(b)
 * from its panels (pk: the panel of c's first column, which must be a
 * panel's first; pks: floats from one panel to the next, at least k * 64),
 * each element the sum in order of k with fused multiply-adds started from
 * c's value (or 0): circ_gemm_acc's and circ_gemm_set's bits, for any m,
 * n and cut into calls. Only where circ_gemm_pk_fast() (AVX-512). */
int circ_gemm_pk_fast(void);
void circ_gemm_pk(int zero, int m, int n, int k, const float *a, int lda, const float *pk,
		  size_t pks, float *c, int ldc);
/* circ_gemm_pk's sums with op(b) read as it lies (each block of it copied
 * into a panel first, as circ_gemm_pack would lay it out): the same bits
 * as circ_gemm_pk over circ_gemm_pack(b). Without AVX-512, circ_gemm. */
void circ_gemm_pn(int zero, int tb, int m, int n, int k, const float *a, int lda, const float *b,
		  int ldb, float *c, int ldc);

/* c (m, n) = a (m, k) b (n, k)^T, on the calling thread, for few rows of
 * a and many of b (a few positions' logits against the vocabulary): circ's
 * own kernel where circ_gemm_bt_fast(k) says so (AVX-512 and k a multiple
 * of 16), which reads b once; each element a dot product whose bits do
 * not depend on m, n or its place (not OpenBLAS's bits); else circ_gemm. */
void circ_gemm_bt_set(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		      float *c, int ldc);
int circ_gemm_bt_fast(int k);
/* circ_gemm_bt_set for long rows (k in the tens of thousands: one prompt's
 * activations) and few rows of b: p in chunks of 2048, each element the
 * sum over the chunks in order of the chunk's dot product (16 lanes, then
 * the lanes in a fixed order), so its bits depend on neither m, n nor the
 * tile it falls in; a streams from memory once while the chunk of b stays
 * in cache, with no packing. Where circ_gemm_bt_fast(k) says so, else
 * circ_gemm. */
void circ_gemm_bt_long(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
		       float *c, int ldc);
/* circ_gemm_bt_long's product by another kernel, for long rows and many
 * rows of a (one prompt's node outputs against a stage's receiver
 * gradients): b packed per chunk of 64 values of p, its columns against
 * broadcasts of a. Each element is the sum over the chunks in order of
 * the chunk's sum in order of p (fused multiply-adds from 0), so its bits
 * depend on neither m nor n nor the tile it falls in; n = 1, a matrix-vector
 * product, takes circ_gemm_bt_set's dot products. Where circ_gemm_bt_fast(k)
 * says so, else circ_gemm. */
void circ_gemm_bt_bcast(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
			float *c, int ldc);
/* circ_gemm_bt_bcast, and c1 (m) = a b1 (b1: k values) in the same pass
 * over a, with the bits of circ_gemm_bt_bcast(m, 1, ...) (a stage's
 * products and the single receiver of the stage above, which reads the
 * same rows). */
void circ_gemm_bt_bcast_dot(int m, int n, int k, const float *a, int lda, const float *b, int ldb,
			    float *c, int ldc, const float *b1, float *c1);
/* The widest column panel of circ_gemm_bt_bcast, in vectors of 16 (1-6;
 * 0 restores the default, from the L1 data cache's size): for tests, which
 * check that the bits do not depend on it. */
void circ_gemm_bt_bcast_set_vmax(int v);

/* c (m, n) = a (m, k) op(w) + beta c (beta 0 or 1), w 16-bit: bf16
 * (bf16 != 0) or IEEE half, converted to f32 exactly as it is packed (no
 * converted copy of w); op(w) = w (k, n), or with tb w^T, w (n, k); ldw
 * w's row stride. Each element is c's old value (or 0) plus the products
 * in order of k with fused multiply-adds, as circ_gemm_acc sums, so it does
 * not depend on m, n or the block it falls in. On the calling thread; only
 * where circ_gemm_w16_fast() (AVX-512). */
void circ_gemm_w16(int tb, int m, int n, int k, const float *a, int lda, const uint16_t *w, int ldw,
		   int bf16, float beta, float *c, int ldc);
int circ_gemm_w16_fast(void);

/* ---- bf16 matrix multiply (kernels_bf16.c, through oneDNN) ---- */

/* 0 when circ_gemm_bf16 can run here: circ built with oneDNN, and a CPU
 * with AVX512-BF16 or AMX-BF16 as oneDNN sees it (ONEDNN_MAX_CPU_ISA can
 * lower that); -1 with a message naming what is missing (e may be NULL). */
int circ_bf16_check(circ_error *e);
/* What oneDNN's bf16 products run on here ("AMX-BF16", "AVX512-BF16", ...). */
const char *circ_bf16_isa(void);
/* dst = src rounded to bf16 as circ_f32_to_bf16 rounds (safetensors.h: to
 * nearest even, NaN stays NaN), vectorised where the CPU has AVX-512. */
void circ_round_bf16(uint16_t *dst, const float *src, size_t n);
/* c (m, n) = bf16(a) (m, k) op(b) + beta c on the calling thread: a f32
 * (lda >= k) rounded to bf16, b bf16 ((k, n), or with tb (n, k)), products
 * summed in f32. A row of c has the same bits whichever rows and columns
 * it is computed with (see kernels_bf16.c). Needs circ_bf16_check() == 0
 * (asserts). */
void circ_gemm_bf16(int tb, int m, int n, int k, const float *a, int lda, const uint16_t *b,
		    int ldb, float beta, float *c, int ldc);
/* The twin: the same roundings, sums in double. */
void circ_gemm_bf16_ref(int tb, int m, int n, int k, const float *a, int lda, const uint16_t *b,
			int ldb, float beta, float *c, int ldc);

/* ---- LayerNorm over the last dimension ---- */

/* out (N, C) = (inp - mean) * rstd * w + b, per row; mean, rstd (N) are
 * stored for the backward (either may be NULL). rstd = 1/sqrt(var + eps),
 * var the biased variance. Rows of inp are ldi apart, rows of out ldo. */
void circ_layernorm_fwd(float *out, int ldo, float *mean, float *rstd, const float *inp, int ldi,
			const float *w, const float *b, int N, int C, float eps);
void circ_layernorm_fwd_ref(float *out, int ldo, float *mean, float *rstd, const float *inp,
			    int ldi, const float *w, const float *b, int N, int C, float eps);
/* The same for LN(inp + add): add (N, C) has inp's row stride; add = NULL
 * is circ_layernorm_fwd. The sum is formed row by row in out (which may be
 * inp, not add), so a receiver's input (residual + delta) needs no buffer
 * of its own. */
void circ_layernorm_fwd_add(float *out, int ldo, float *mean, float *rstd, const float *inp,
			    const float *add, int ldi, const float *w, const float *b, int N, int C,
			    float eps);
/* LN(x + base +- the k term rows) over rows row0 .. row0 + N - 1 of its
 * inputs (x, base and every term have row stride ldi; base may be NULL;
 * neg: the terms are subtracted), into out rows 0 .. N - 1 (ldo apart),
 * mean and rstd from index 0. Each row is summed in out, in the order x,
 * base, terms, as circ_vsum sums, so the result is the same bytes as
 * circ_vsum followed by circ_layernorm_fwd, in one pass over memory. out
 * may be x; it must not overlap base or the terms. */
void circ_layernorm_fwd_sum(float *out, int ldo, float *mean, float *rstd, const float *x,
			    const float *base, const float *const *terms, int k, int neg,
			    size_t row0, int ldi, const float *w, const float *b, int N, int C,
			    float eps);
void circ_layernorm_fwd_add_ref(float *out, int ldo, float *mean, float *rstd, const float *inp,
				const float *add, int ldi, const float *w, const float *b, int N,
				int C, float eps);
/* Input gradient: dinp (N, C) += d LN(inp)/d inp applied to dout, with the
 * mean and rstd of the forward (set = 1: dinp = instead of +=, so a fresh
 * buffer needs no zeroing). If dacc is not NULL the same values are also
 * added to dacc (N, C) (one pass for a receiver's gradient and the residual
 * sum). All (N, C) arrays contiguous. */
void circ_layernorm_bwd(float *dinp, float *dacc, const float *dout, const float *inp,
			const float *mean, const float *rstd, const float *w, int N, int C,
			int set);
void circ_layernorm_bwd_ref(float *dinp, float *dacc, const float *dout, const float *inp,
			    const float *mean, const float *rstd, const float *w, int N, int C,
			    int set);

/* The same with the forward's input given as inp + add (add (N, C) or
 * NULL), summed on the fly. */
void circ_layernorm_bwd_add(float *dinp, float *dacc, const float *dout, const float *inp,
			    const float *add, const float *mean, const float *rstd, const float *w,
			    int N, int C, int set);
void circ_layernorm_bwd_add_ref(float *dinp, float *dacc, const float *dout, const float *inp,
				const float *add, const float *mean, const float *rstd,
				const float *w, int N, int C, int set);

/* Parameter gradients of a LayerNorm: dw (C) += sum over rows of dout * xhat
 * and db (C) += sum over rows of dout, with xhat = (inp - mean) * rstd from
 * the forward's statistics. dout and inp are (N, C) contiguous. Rows are
 * summed in order (deterministic); the fast version accumulates in float. */
void circ_layernorm_bwd_params(float *dw, float *db, const float *dout, const float *inp,
			       const float *mean, const float *rstd, int N, int C);
void circ_layernorm_bwd_params_ref(float *dw, float *db, const float *dout, const float *inp,
				   const float *mean, const float *rstd, int N, int C);

/* Bias gradient: db (n) += sum over the m rows of d (m, n), rows ld apart
 * (ld >= n), summed in row order. */
void circ_bias_bwd(float *db, const float *d, int m, int n, int ld);
void circ_bias_bwd_ref(float *db, const float *d, int m, int n, int ld);

/* ---- GELU ---- */

/* exact = 0: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) ("gelu_new");
 * exact = 1: x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) ("gelu"). out may be inp. */
void circ_gelu_fwd(float *out, const float *inp, size_t n, int exact);
void circ_gelu_fwd_ref(float *out, const float *inp, size_t n, int exact);
/* dinp (n) += gelu'(inp) * dout. */
void circ_gelu_bwd(float *dinp, const float *inp, const float *dout, size_t n, int exact);
void circ_gelu_bwd_ref(float *dinp, const float *inp, const float *dout, size_t n, int exact);
/* In place: d (n) = gelu'(inp) * d (the usual fused use). */
void circ_gelu_bwd_inplace(float *d, const float *inp, size_t n, int exact);

/* ---- causal multi-head attention (the part between the projections) ---- */

#define CIRC_ATTN_MAX_T 8192

/* qkv (B, T, 3C): per row Q | K | V, head h at columns h*D of each.
 * att (B, H, T, T): softmax(q k^T / sqrt(D)) over keys 0..t, zero above the
 * diagonal. z (B, T, C): att @ v, head h at columns h*D. */
void circ_attn_fwd(float *z, float *att, const float *qkv, int B, int T, int C, int H);
/* The same for the heads h with !skip[h] (skip NULL: every head); the
 * others' z columns and att rows are left as they are. */
void circ_attn_fwd_heads(float *z, float *att, const float *qkv, int B, int T, int C, int H,
			 const unsigned char *skip);
void circ_attn_fwd_ref(float *z, float *att, const float *qkv, int B, int T, int C, int H);
/* dqkv (B, T, 3C) += gradient through the attention given dz (B, T, C),
 * with att from the forward. T <= CIRC_ATTN_MAX_T. */
void circ_attn_bwd(float *dqkv, const float *dz, const float *qkv, const float *att, int B, int T,
		   int C, int H);
void circ_attn_bwd_ref(float *dqkv, const float *dz, const float *qkv, const float *att, int B,
		       int T, int C, int H);

/* ---- element-wise helpers ---- */

/* exp with relative error below 2e-7 over the float range (0 below -87.3,
 * +inf above 88.7); vectorised with AVX2 when available. out may be inp. */
void circ_vexp(float *out, const float *inp, size_t n);
/* y (n) += x (n). */
void circ_vadd(float *y, const float *x, size_t n);
/* y (n) = a (n) + b (n) (b may be NULL: a copy), then y += each of the k
 * sources (n), in that order. y may be a. */
void circ_vsum(float *y, const float *a, const float *b, const float *const *src, int k, size_t n);
/* The same with the sources subtracted: y = a + b - src[0] - ... */
void circ_vsum_neg(float *y, const float *a, const float *b, const float *const *src, int k,
		   size_t n);

#endif
