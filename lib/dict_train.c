/*
 * dict_train: training SAEs and transcoders (see dict_train.h for the
 * architectures, losses and layout).
 *
 * A step runs in passes, each split over the thread pool into one part per
 * thread (so the partition, and hence every bit, depends on the thread count
 * only):
 *   1. rows: x_c = x - b_dec; pre = x_c W_enc + b_enc (a GEMM per row block);
 *      the activation (dense f for relu and jumprelu; for topk a per-row
 *      selection into sparse rows; batchtopk selects over the whole batch
 *      between passes); the decode y_hat (a GEMM, or k rows summed); the
 *      residual and d loss / d y_hat; for sparse rows d loss / d f at each
 *      active latent; AuxK's selection and its residual fit.
 *   2. latents: every gradient of a latent's parameters (its encoder row,
 *      bias, decoder row, threshold) from the rows that use it, summed in
 *      row order; dense architectures use two GEMMs (dpre^T x_c, f^T dy)
 *      over latent blocks instead.
 *   3. b_dec's gradient (column sums in row order), clipping, AdamW, the
 *      decoder rows' renormalisation, the dead-latent counters.
 */
#include "dict_train.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"

/* ---- options ---- */

static const char *const arch_names[CIRC_DTRAIN_ARCH_COUNT] = {"relu", "topk", "batchtopk",
							       "jumprelu"};

const char *circ_dtrain_arch_name(circ_dtrain_arch a)
{
	return (unsigned)a < CIRC_DTRAIN_ARCH_COUNT ? arch_names[a] : "?";
}

int circ_dtrain_arch_parse(const char *s, circ_dtrain_arch *a)
{
	for (int i = 0; i < CIRC_DTRAIN_ARCH_COUNT; i++)
		if (!strcmp(s, arch_names[i])) {
			*a = (circ_dtrain_arch)i;
			return 0;
		}
	return -1;
}

void circ_dtrain_opts_default(circ_dtrain_opts *o, circ_dtrain_arch a)
{
	memset(o, 0, sizeof *o);
	o->arch = a;
	o->apply_b_dec_to_input = 1;
	o->k = 32;
	o->k_aux = -1; /* d_in / 2 */
	o->aux_coeff = 1.0 / 32;
	o->dead_tokens = 10000000;
	o->l1 = 5;
	o->l1_warmup = -1; /* 5% of the steps */
	o->l0 = 1e-3;
	o->bandwidth = 1e-3;
	o->threshold_init = 1e-3;
	o->dec_init_norm = a == CIRC_DTRAIN_RELU ? 0.1 : 1.0;
	o->sparse_below = 0.05;
	o->lr = a == CIRC_DTRAIN_RELU ? 5e-5 : 4e-4;
	o->steps = 1000;
	o->decay = a == CIRC_DTRAIN_RELU ? -1 : 0; /* -1: 20% of the steps */
	o->beta1 = 0.9;
	o->beta2 = 0.999;
	o->eps = 1e-8;
	o->clip = a == CIRC_DTRAIN_RELU ? 1.0 : 0.0;
	o->batch = 4096;
	o->threads = 1;
}

static int sparse_arch(circ_dtrain_arch a)
{
	return a == CIRC_DTRAIN_TOPK || a == CIRC_DTRAIN_BATCHTOPK;
}
static int unit_decoder(circ_dtrain_arch a)
{
	return a != CIRC_DTRAIN_RELU;
}

/* ---- the trainer ---- */

struct circ_dtrain {
	circ_dtrain_opts o;
	int D, O, S, kaux;
	int64_t l1_warmup, decay;
	size_t n;	/* parameters */
	size_t off[6];	/* offsets of W_enc_t, b_enc, W_dec, b_dec, W_skip, log_theta */
	float *p, *g;	/* (n) parameters, gradient */
	float *m, *v;	/* (n) AdamW moments */
	int64_t step;	/* steps taken */
	int64_t *since; /* (S) tokens since each latent fired */
	double bt_thr;	/* batchtopk's running threshold */
	circ_pool *pool;
	int parts;
	/* per-step buffers, sized for o.batch */
	float *xc;		   /* (B, D) x - b_dec */
	float *pre;		   /* (B, S) pre-activations */
	float *f;		   /* (B, S) dense activations (relu: in place of pre) */
	float *df;		   /* (B, S) d loss / d f, then d loss / d pre (dense) */
	float *yhat;		   /* (B, O) */
	float *dy;		   /* (B, O) d loss / d y_hat */
	float *dya;		   /* (B, O) d loss / d (AuxK's fit) */
	double *row_mse, *row_aux; /* (B) */
	/* sparse rows: entries [rp[b], rp[b+1]) of row b, then AuxK's entries
	 * [ap[b], ap[b+1]) after all main ones */
	int64_t *rp, *ap; /* (B + 1) */
	int32_t *lat;	  /* (cap) latent of each entry */
	int32_t *erow;	  /* (cap) row of each entry */
	float *val;	  /* (cap) activation */
	float *dp;	  /* (cap) d loss / d pre */
	int64_t cap, nmain, naux;
	int sparse_step; /* this step decodes from sparse rows */
	int64_t *lp;	 /* (S + 1) latent-major index: entries of latent i */
	int64_t *order;	 /* (cap) entry ids by latent, rows ascending */
	int32_t *dead;	 /* (S) dead latents at the step's start */
	int ndead;
	double *lat_sum;      /* (S) per-latent sparsity terms */
	double *acc;	      /* (4, S) dense per-latent sums: db_enc, d theta, sum f, count */
	double *nrm;	      /* (S) decoder row norms */
	float *theta;	      /* (2, S) jumprelu thresholds; the L1 term's d / d f */
	unsigned char *fired; /* (S) */
	float *scratch;	      /* per part: selection buffers */
};

const circ_dtrain_opts *circ_dtrain_options(const circ_dtrain *t)
{
	return &t->o;
}
size_t circ_dtrain_n_params(const circ_dtrain *t)
{
	return t->n;
}
float *circ_dtrain_params(circ_dtrain *t)
{
	return t->p;
}
const float *circ_dtrain_grads(const circ_dtrain *t)
{
	return t->g;
}
int64_t circ_dtrain_step_count(const circ_dtrain *t)
{
	return t->step;
}
double circ_dtrain_batch_threshold(const circ_dtrain *t)
{
	return t->bt_thr;
}

void circ_dtrain_views(circ_dtrain *t, float *buf, circ_dtrain_view *v)
{
	v->W_enc_t = buf + t->off[0];
	v->b_enc = buf + t->off[1];
	v->W_dec = buf + t->off[2];
	v->b_dec = buf + t->off[3];
	v->W_skip = t->o.skip ? buf + t->off[4] : NULL;
	v->log_theta = t->o.arch == CIRC_DTRAIN_JUMPRELU ? buf + t->off[5] : NULL;
}

void circ_dtrain_dead(const circ_dtrain *t, unsigned char *dead)
{
	for (int i = 0; i < t->S; i++)
		dead[i] = t->since[i] >= t->o.dead_tokens;
}

void circ_dtrain_set_dead(circ_dtrain *t, const unsigned char *dead)
{
	for (int i = 0; i < t->S; i++)
		t->since[i] = dead[i] ? t->o.dead_tokens : 0;
}

static int check_opts(const circ_dtrain_opts *o, circ_error *e)
{
	if (o->d_in < 1 || o->d_sae < 1 || o->d_out < 1)
		return circ_errorf(e, "dimensions must be positive (d_in %d, d_out %d, d_sae %d)",
				   o->d_in, o->d_out, o->d_sae);
	if (!o->transcoder && o->d_out != o->d_in)
		return circ_errorf(e, "an SAE's d_out (%d) must equal its d_in (%d)", o->d_out,
				   o->d_in);
	if (o->skip && !o->transcoder)
		return circ_errorf(e, "a skip connection needs a transcoder");
	if ((unsigned)o->arch >= CIRC_DTRAIN_ARCH_COUNT)
		return circ_errorf(e, "unknown architecture %d", (int)o->arch);
	if (sparse_arch(o->arch) && (o->k < 1 || o->k > o->d_sae))
		return circ_errorf(e, "k (%d) must be in [1, d_sae %d]", o->k, o->d_sae);
	if (o->batch < 1 || o->steps < 1 || o->threads < 1)
		return circ_errorf(e, "batch, steps and threads must be positive");
	if (!(o->lr > 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
	    !(o->eps > 0))
		return circ_errorf(e, "bad optimiser settings (lr %g, betas %g %g, eps %g)", o->lr,
				   o->beta1, o->beta2, o->eps);
	if (o->arch == CIRC_DTRAIN_JUMPRELU && (!(o->bandwidth > 0) || !(o->threshold_init > 0)))
		return circ_errorf(e, "jumprelu needs a positive bandwidth and threshold");
	if (o->warmup < 0 || o->warmup > o->steps)
		return circ_errorf(e, "warm-up (%" PRId64 ") must be in [0, steps]", o->warmup);
	return 0;
}

/* n random directions (normal draws, normalised) of norm `norm` in R^d:
 * w (n, d). */
static void random_dirs(circ_rng *r, float *w, int n, int d, double norm)
{
	for (int i = 0; i < n; i++) {
		float *row = w + (size_t)i * d;
		double nn = 0;
		for (int j = 0; j < d; j++) {
			row[j] = (float)circ_rng_normal(r);
			nn += (double)row[j] * row[j];
		}
		double s = norm / sqrt(nn > 0 ? nn : 1);
		for (int j = 0; j < d; j++)
			row[j] = (float)(row[j] * s);
	}
}

circ_dtrain *circ_dtrain_new(const circ_dtrain_opts *o, circ_error *e)
{
	if (check_opts(o, e) < 0)
		return NULL;
	circ_dtrain *t = circ_xcalloc(1, sizeof *t);
	t->o = *o;
	int D = t->D = o->d_in, O = t->O = o->d_out, S = t->S = o->d_sae;
	size_t B = (size_t)o->batch;
	t->kaux = o->k_aux < 0 ? D / 2 : o->k_aux;
	if (t->kaux > S)
		t->kaux = S;
	if (!sparse_arch(o->arch))
		t->kaux = 0;
	t->l1_warmup = o->l1_warmup < 0 ? o->steps / 20 : o->l1_warmup;
	t->decay = o->decay < 0 ? o->steps / 5 : o->decay;
	if (t->decay > o->steps)
		t->decay = o->steps;
	t->off[0] = 0;
	t->off[1] = t->off[0] + (size_t)S * D;
	t->off[2] = t->off[1] + (size_t)S;
	t->off[3] = t->off[2] + (size_t)S * O;
	t->off[4] = t->off[3] + (size_t)O;
	t->off[5] = t->off[4] + (o->skip ? (size_t)O * D : 0);
	t->n = t->off[5] + (o->arch == CIRC_DTRAIN_JUMPRELU ? (size_t)S : 0);
	t->p = circ_xalloc_aligned(t->n * sizeof(float));
	t->g = circ_xalloc_aligned(t->n * sizeof(float));
	t->m = circ_xalloc_aligned(t->n * sizeof(float));
	t->v = circ_xalloc_aligned(t->n * sizeof(float));
	t->since = circ_xcalloc((size_t)S, sizeof *t->since);
	t->pool = circ_pool_new(o->threads);
	t->parts = circ_pool_threads(t->pool);
	t->xc = circ_xmalloc_aligned(B * D * sizeof(float));
	t->pre = circ_xmalloc_aligned(B * S * sizeof(float));
	if (!sparse_arch(o->arch)) {
		t->f = o->arch == CIRC_DTRAIN_RELU ? t->pre
						   : circ_xmalloc_aligned(B * S * sizeof(float));
		t->df = circ_xmalloc_aligned(B * S * sizeof(float));
	}
	t->yhat = circ_xmalloc_aligned(B * O * sizeof(float));
	t->dy = circ_xmalloc_aligned(B * O * sizeof(float));
	t->dya = circ_xalloc_aligned(B * O * sizeof(float));
	t->row_mse = circ_xcalloc(B, sizeof(double));
	t->row_aux = circ_xcalloc(B, sizeof(double));
	t->rp = circ_xcalloc(B + 1, sizeof(int64_t));
	t->ap = circ_xcalloc(B + 1, sizeof(int64_t));
	if (sparse_arch(o->arch)) {
		t->cap = (int64_t)B * (o->k + t->kaux);
		t->lat = circ_xmalloc((size_t)t->cap * sizeof(int32_t));
		t->erow = circ_xmalloc((size_t)t->cap * sizeof(int32_t));
		t->val = circ_xmalloc((size_t)t->cap * sizeof(float));
		t->dp = circ_xmalloc((size_t)t->cap * sizeof(float));
		t->order = circ_xmalloc((size_t)t->cap * sizeof(int64_t));
	}
	t->lp = circ_xcalloc((size_t)S + 1, sizeof(int64_t));
	t->dead = circ_xmalloc((size_t)S * sizeof(int32_t));
	t->lat_sum = circ_xcalloc((size_t)S, sizeof(double));
	t->acc = circ_xcalloc(4 * (size_t)S, sizeof(double));
	t->nrm = circ_xcalloc((size_t)S, sizeof(double));
	t->theta = circ_xcalloc(2 * (size_t)S, sizeof(float));
	t->fired = circ_xcalloc((size_t)S, 1);
	t->scratch = circ_xmalloc((size_t)t->parts * ((size_t)S + 1) * 2 * sizeof(float));

	/* initialisation: decoder rows random directions of norm dec_init_norm;
	 * the encoder their transpose (an SAE) or its own directions */
	circ_rng r;
	circ_dtrain_view v;
	circ_rng_seed_stream(&r, o->seed, 0);
	circ_dtrain_views(t, t->p, &v);
	random_dirs(&r, v.W_dec, S, O, o->dec_init_norm);
	if (!o->transcoder)
		memcpy(v.W_enc_t, v.W_dec, (size_t)S * D * sizeof(float));
	else
		random_dirs(&r, v.W_enc_t, S, D, o->dec_init_norm);
	if (v.log_theta)
		for (int i = 0; i < S; i++)
			v.log_theta[i] = (float)log(o->threshold_init);
	return t;
}

void circ_dtrain_free(circ_dtrain *t)
{
	if (!t)
		return;
	free(t->p);
	free(t->g);
	free(t->m);
	free(t->v);
	free(t->since);
	circ_pool_free(t->pool);
	free(t->xc);
	if (t->f != t->pre)
		free(t->f);
	free(t->pre);
	free(t->df);
	free(t->yhat);
	free(t->dy);
	free(t->dya);
	free(t->row_mse);
	free(t->row_aux);
	free(t->rp);
	free(t->ap);
	free(t->lat);
	free(t->erow);
	free(t->val);
	free(t->dp);
	free(t->order);
	free(t->lp);
	free(t->dead);
	free(t->lat_sum);
	free(t->acc);
	free(t->nrm);
	free(t->theta);
	free(t->fired);
	free(t->scratch);
	free(t);
}

void circ_dtrain_init_b_dec(circ_dtrain *t, const float *y, size_t n)
{
	circ_dtrain_view v;
	circ_dtrain_views(t, t->p, &v);
	for (int j = 0; j < t->O; j++) {
		double s = 0;
		for (size_t b = 0; b < n; b++)
			s += y[b * (size_t)t->O + j];
		v.b_dec[j] = n ? (float)(s / (double)n) : 0.0f;
	}
}

double circ_dtrain_lr(const circ_dtrain_opts *o, int64_t s)
{
	int64_t decay = o->decay < 0 ? o->steps / 5 : o->decay;
	double lr = o->lr;
	if (s < o->warmup)
		lr *= (double)(s + 1) / (double)o->warmup;
	if (decay > 0 && s >= o->steps - decay) {
		double frac = (double)(o->steps - s) / (double)decay; /* 1 .. 1/decay */
		lr *= o->min_lr + (1 - o->min_lr) * frac;
	}
	return lr;
}

/* ---- vector helpers ----
 * Dot products and axpys over rows, in a fixed order of summation (two
 * 8-wide partial sums, then the lanes in order, then the tail), so that the
 * bits do not depend on the thread count; cloned for AVX2 where the
 * compiler can (GCC's target_clones picks at load time). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif
typedef float v8 __attribute__((vector_size(32)));

#define LD8(v, p) memcpy(&(v), (p), sizeof(v))

CLONES static float dot(const float *a, const float *b, int n)
{
	v8 s0 = {0}, s1 = {0};
	int j = 0;
	for (; j + 16 <= n; j += 16) {
		v8 a0, b0, a1, b1;
		LD8(a0, a + j);
		LD8(b0, b + j);
		LD8(a1, a + j + 8);
		LD8(b1, b + j + 8);
		s0 += a0 * b0;
		s1 += a1 * b1;
	}
	s0 += s1;
	float r = ((s0[0] + s0[1]) + (s0[2] + s0[3])) + ((s0[4] + s0[5]) + (s0[6] + s0[7]));
	for (; j < n; j++)
		r += a[j] * b[j];
	return r;
}

/* y (n) += a x (n) */
CLONES static void axpy(float *y, float a, const float *x, int n)
{
	int j = 0;
	for (; j + 8 <= n; j += 8) {
		v8 yv, xv;
		LD8(yv, y + j);
		LD8(xv, x + j);
		yv += a * xv;
		memcpy(y + j, &yv, sizeof yv);
	}
	for (; j < n; j++)
		y[j] += a * x[j];
}

/* Room for n sparse entries (relu's sparse steps grow it). */
static void reserve_entries(circ_dtrain *t, int64_t n)
{
	if (n <= t->cap)
		return;
	t->cap = n + n / 4;
	t->lat = circ_xrealloc(t->lat, (size_t)t->cap * sizeof(int32_t));
	t->erow = circ_xrealloc(t->erow, (size_t)t->cap * sizeof(int32_t));
	t->val = circ_xrealloc(t->val, (size_t)t->cap * sizeof(float));
	t->dp = circ_xrealloc(t->dp, (size_t)t->cap * sizeof(float));
	t->order = circ_xrealloc(t->order, (size_t)t->cap * sizeof(int64_t));
}

/* ---- pass 1: rows ---- */

typedef struct step_ctx {
	circ_dtrain *t;
	const float *x, *y; /* (B, D), (B, O) */
	int B;
	circ_dtrain_view v, gv;
	double l1, l0; /* this step's sparsity coefficients */
	double aux_scale;
	int kaux; /* AuxK latents per row this step */
} step_ctx;

/* Rows [b0, b1) of the part: x_c and pre. */
static void rows_pre(step_ctx *c, int b0, int b1)
{
	circ_dtrain *t = c->t;
	int D = t->D, S = t->S, n = b1 - b0;
	const float *xc = c->x + (size_t)b0 * D;
	if (!t->o.transcoder && t->o.apply_b_dec_to_input) {
		float *o = t->xc + (size_t)b0 * D;
		for (int b = 0; b < n; b++)
			for (int j = 0; j < D; j++)
				o[(size_t)b * D + j] = xc[(size_t)b * D + j] - c->v.b_dec[j];
		xc = o;
	}
	/* dense architectures add b_enc in p_act_dense, in the same sweep as
	 * the activation (one pass over the (B, S) block fewer) */
	float *pre = t->pre + (size_t)b0 * S;
	int dense = !sparse_arch(t->o.arch);
	for (int b = 0; b < n && !dense; b++)
		memcpy(pre + (size_t)b * S, c->v.b_enc, (size_t)S * sizeof(float));
	if (n > 0)
		circ_gemm(0, 1, n, S, D, 1.0f, xc, D, c->v.W_enc_t, D, dense ? 0.0f : 1.0f, pre, S);
}

/* x_c row b (x itself where nothing is subtracted). */
static const float *xc_row(const step_ctx *c, int b)
{
	circ_dtrain *t = c->t;
	if (!t->o.transcoder && t->o.apply_b_dec_to_input)
		return t->xc + (size_t)b * t->D;
	return c->x + (size_t)b * t->D;
}

/* Selection of the k largest (value, then lower index first) among the
 * candidates vals[idx[0..n)] with value > 0: a bounded min-heap. Writes the
 * chosen indices to out sorted by index; returns how many (<= k). */
typedef struct cand {
	float v;
	int32_t i;
} cand;
static int worse(cand a, cand b) /* a ranks below b */
{
	return a.v < b.v || (a.v == b.v && a.i > b.i);
}
static void sift_down(cand *h, int n, int i)
{
	for (;;) {
		int l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && worse(h[l], h[m]))
			m = l;
		if (r < n && worse(h[r], h[m]))
			m = r;
		if (m == i)
			return;
		cand tmp = h[i];
		h[i] = h[m];
		h[m] = tmp;
		i = m;
	}
}
static int cmp_i32(const void *a, const void *b)
{
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	return (x > y) - (x < y);
}
/* Top k of row (S) over all latents (idx NULL) or the n listed in idx. */
static int topk_row(const float *row, const int32_t *idx, int n, int k, cand *heap, int32_t *out)
{
	int h = 0;
	float thr = 0; /* a candidate must beat it: 0, then the heap's worst
			* (a later index with an equal value ranks below) */
	for (int q = 0; q < n; q++) {
		int32_t i = idx ? idx[q] : q;
		if (!(row[i] > thr))
			continue;
		cand c = {row[i], i};
		if (h < k) {
			/* sift up */
			int j = h++;
			heap[j] = c;
			while (j > 0 && worse(heap[j], heap[(j - 1) / 2])) {
				cand tmp = heap[j];
				heap[j] = heap[(j - 1) / 2];
				heap[(j - 1) / 2] = tmp;
				j = (j - 1) / 2;
			}
			if (h == k)
				thr = heap[0].v;
		} else {
			heap[0] = c;
			sift_down(heap, h, 0);
			thr = heap[0].v;
		}
	}
	for (int j = 0; j < h; j++)
		out[j] = heap[j].i;
	qsort(out, (size_t)h, sizeof *out, cmp_i32);
	return h;
}

/* y_hat rows, residuals and d loss / d y_hat for rows [b0, b1); sparse
 * rows decode from their entries. */
static void rows_decode(step_ctx *c, int b0, int b1)
{
	circ_dtrain *t = c->t;
	int O = t->O, S = t->S;
	float sc = 2.0f / (float)c->B;
	for (int b = b0; b < b1; b++)
		memcpy(t->yhat + (size_t)b * O, c->v.b_dec, (size_t)O * sizeof(float));
	if (c->v.W_skip && b1 > b0)
		circ_gemm(0, 1, b1 - b0, O, t->D, 1.0f, c->x + (size_t)b0 * t->D, t->D, c->v.W_skip,
			  t->D, 1.0f, t->yhat + (size_t)b0 * O, O);
	if (!t->sparse_step) {
		if (b1 > b0)
			circ_gemm(0, 0, b1 - b0, O, S, 1.0f, t->f + (size_t)b0 * S, S, c->v.W_dec,
				  O, 1.0f, t->yhat + (size_t)b0 * O, O);
	} else
		for (int b = b0; b < b1; b++) {
			float *yh = t->yhat + (size_t)b * O;
			for (int64_t q = t->rp[b]; q < t->rp[b + 1]; q++)
				axpy(yh, t->val[q], c->v.W_dec + (size_t)t->lat[q] * O, O);
		}
	for (int b = b0; b < b1; b++) {
		const float *y = c->y ? c->y + (size_t)b * O : c->x + (size_t)b * t->D;
		float *yh = t->yhat + (size_t)b * O, *dy = t->dy + (size_t)b * O;
		double s = 0;
		for (int j = 0; j < O; j++) {
			float r = yh[j] - y[j];
			s += (double)r * r;
			dy[j] = sc * r;
		}
		t->row_mse[b] = s;
	}
}

/* Sparse rows: d loss / d pre at each main entry (= d loss / d f there,
 * the activation being positive), and AuxK: the fit of the residual
 * y - y_hat by the row's aux entries, its loss and gradients. */
static void rows_sparse_grad(step_ctx *c, int b0, int b1)
{
	circ_dtrain *t = c->t;
	int O = t->O;
	for (int b = b0; b < b1; b++) {
		const float *dy = t->dy + (size_t)b * O;
		for (int64_t q = t->rp[b]; q < t->rp[b + 1]; q++)
			t->dp[q] = dot(dy, c->v.W_dec + (size_t)t->lat[q] * O, O);
		if (t->o.arch == CIRC_DTRAIN_RELU) /* the L1 term: l1 ||W_dec,i|| / B */
			for (int64_t q = t->rp[b]; q < t->rp[b + 1]; q++)
				t->dp[q] += t->theta[(size_t)t->S + t->lat[q]];
		t->row_aux[b] = 0;
		if (t->ap[b + 1] == t->ap[b])
			continue;
		/* e = y - y_hat = -(B/2) dy; fit e_hat = sum a_i W_dec,i */
		float *fit = t->dya + (size_t)b * O;
		memset(fit, 0, (size_t)O * sizeof(float));
		for (int64_t q = t->ap[b]; q < t->ap[b + 1]; q++)
			axpy(fit, t->val[q], c->v.W_dec + (size_t)t->lat[q] * O, O);
		double s = 0, cf = t->o.aux_coeff * c->aux_scale;
		float half_b = 0.5f * (float)c->B, sc = (float)(2.0 * cf / c->B);
		for (int j = 0; j < O; j++) {
			float d = fit[j] + half_b * dy[j]; /* e_hat - e */
			s += (double)d * d;
			fit[j] = sc * d; /* now d loss / d e_hat */
		}
		t->row_aux[b] = cf * s;
		for (int64_t q = t->ap[b]; q < t->ap[b + 1]; q++)
			t->dp[q] = dot(fit, c->v.W_dec + (size_t)t->lat[q] * O, O);
	}
}

/* Pool plumbing: a pass is a function of (ctx, part); parts split [0, n)
 * into equal contiguous ranges. */
typedef struct pass {
	step_ctx *c;
	int n; /* items split into parts */
	void (*fn)(step_ctx *c, int part, int lo, int hi);
} pass;
static void pass_body(void *ctx, size_t begin, size_t end)
{
	pass *p = ctx;
	int parts = p->c->t->parts;
	for (size_t k = begin; k < end; k++) {
		int lo = (int)((int64_t)p->n * (int64_t)k / parts),
		    hi = (int)((int64_t)p->n * (int64_t)(k + 1) / parts);
		p->fn(p->c, (int)k, lo, hi);
	}
}
static void run_pass(step_ctx *c, int n, void (*fn)(step_ctx *c, int part, int lo, int hi))
{
	pass p = {c, n, fn};
	circ_pool_for(c->t->pool, (size_t)c->t->parts, pass_body, &p);
}

static void p_pre(step_ctx *c, int part, int lo, int hi)
{
	(void)part;
	rows_pre(c, lo, hi);
}

/* f = relu(f + b) in place over a row of n, returning how many are
 * positive. */
CLONES static int64_t relu_row(float *f, const float *b, size_t n)
{
	int64_t k = 0;
	for (size_t i = 0; i < n; i++) {
		float u = f[i] + b[i];
		f[i] = u > 0 ? u : 0.0f;
		k += u > 0;
	}
	return k;
}

/* Dense activations of rows [lo, hi). */
static void p_act_dense(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	size_t S = (size_t)t->S;
	(void)part;
	for (int b = lo; b < hi; b++) {
		float *pre = t->pre + b * S, *f = t->f + b * S;
		int64_t n = 0;
		if (t->o.arch == CIRC_DTRAIN_RELU) /* f is pre */
			n = relu_row(f, c->v.b_enc, S);
		else
			for (size_t i = 0; i < S; i++) {
				pre[i] += c->v.b_enc[i];
				f[i] = pre[i] > t->theta[i] ? pre[i] : 0.0f;
			}
		t->rp[b + 1] = n;
	}
}

/* Sparse rows of relu's activations: row b's entries at rp[b] (offsets
 * already summed). */
static void p_gather(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	size_t S = (size_t)t->S;
	(void)part;
	for (int b = lo; b < hi; b++) {
		const float *f = t->f + b * S;
		int64_t w = t->rp[b];
		for (size_t i = 0; i < S; i++)
			if (f[i] > 0) {
				t->lat[w] = (int32_t)i;
				t->val[w] = f[i];
				t->erow[w] = b;
				w++;
			}
	}
}

/* Decoder row norms and relu's L1 term per latent: nrm (S), theta + S (S). */
static void p_norms(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	(void)part;
	for (int i = lo; i < hi; i++) {
		const float *w = c->v.W_dec + (size_t)i * t->O;
		t->nrm[i] = sqrt((double)dot(w, w, t->O));
		t->theta[(size_t)t->S + i] = (float)(c->l1 * t->nrm[i] / c->B);
	}
}

/* TopK rows: the k largest positive pre-activations of each row, written
 * at entries [b*k, b*k + n) (rp is compacted afterwards). */
static void p_topk(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	int S = t->S, k = t->o.k;
	cand *heap = (cand *)(t->scratch + (size_t)part * (S + 1) * 2);
	for (int b = lo; b < hi; b++) {
		int32_t *idx = t->lat + (int64_t)b * k;
		const float *pre = t->pre + (size_t)b * S;
		int n = topk_row(pre, NULL, S, k, heap, idx);
		for (int q = 0; q < n; q++)
			t->val[(int64_t)b * k + q] = pre[idx[q]];
		t->rp[b + 1] = n; /* count for now */
	}
}

/* AuxK rows: the top kaux positive pre-activations among the dead latents,
 * written at the aux slots of row b: nmain + b*kaux. */
static void p_auxk(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	int S = t->S, k = c->kaux;
	cand *heap = (cand *)(t->scratch + (size_t)part * (S + 1) * 2);
	for (int b = lo; b < hi; b++) {
		int64_t at = t->nmain + (int64_t)b * k;
		const float *pre = t->pre + (size_t)b * S;
		int n = topk_row(pre, t->dead, t->ndead, k, heap, t->lat + at);
		for (int q = 0; q < n; q++)
			t->val[at + q] = pre[t->lat[at + q]];
		t->ap[b + 1] = n;
	}
}

static void p_decode(step_ctx *c, int part, int lo, int hi)
{
	(void)part;
	rows_decode(c, lo, hi);
}
static void p_sparse_grad(step_ctx *c, int part, int lo, int hi)
{
	(void)part;
	rows_sparse_grad(c, lo, hi);
}
static void p_df(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	(void)part;
	if (hi > lo)
		circ_gemm(0, 1, hi - lo, t->S, t->O, 1.0f, t->dy + (size_t)lo * t->O, t->O,
			  c->v.W_dec, t->O, 0.0f, t->df + (size_t)lo * t->S, t->S);
}

/* Rows [lo, hi) of W_skip's gradient: dy[:, lo:hi]^T x. */
static void p_skip_grad(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	(void)part;
	if (hi > lo)
		circ_gemm(1, 0, hi - lo, t->D, c->B, 1.0f, t->dy + lo, t->O, c->x, t->D, 0.0f,
			  c->gv.W_skip + (size_t)lo * t->D, t->D);
}

/* ---- pass 2: latents ---- */

/* One row's relu latents: d loss / d f -> d loss / d pre in place, and
 * the per-latent sums (the same operations, in the same order, as the
 * general loop of p_lat_dense, so the bits are the same). */
CLONES static void relu_lat_row(const float *f, float *df, const float *add, double *dbe,
				double *fsum, double *cnt, int n)
{
	for (int i = 0; i < n; i++) {
		int on = f[i] > 0;
		df[i] = on ? df[i] + add[i] : 0.0f;
		fsum[i] += on ? f[i] : 0.0f;
		cnt[i] += on;
		dbe[i] += df[i];
	}
}

/* Dense latents [lo, hi): d loss / d f -> d loss / d pre in place, the
 * sparsity term's value, theta's and b_enc's gradients, firing; rows in
 * order (row-major sweeps, one accumulator per latent). */
static void p_lat_dense(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	size_t S = (size_t)t->S;
	int O = t->O, jump = t->o.arch == CIRC_DTRAIN_JUMPRELU;
	double invB = 1.0 / c->B, eps = t->o.bandwidth;
	double *dbe = t->acc, *dth = t->acc + S, *fsum = t->acc + 2 * S, *cnt = t->acc + 3 * S;
	float *add = t->theta + S; /* the L1 term's d / d f of each latent */
	(void)part;
	for (int i = lo; i < hi; i++) {
		const float *w = c->v.W_dec + (size_t)i * O;
		t->nrm[i] = sqrt((double)dot(w, w, O));
		add[i] = jump ? 0.0f : (float)(c->l1 * t->nrm[i] * invB);
		dbe[i] = dth[i] = fsum[i] = cnt[i] = 0;
	}
	for (int b = 0; b < c->B && !jump; b++)
		relu_lat_row(t->f + (size_t)b * S + lo, t->df + (size_t)b * S + lo, add + lo,
			     dbe + lo, fsum + lo, cnt + lo, hi - lo);
	for (int b = 0; b < c->B && jump; b++) {
		const float *pre = t->pre + (size_t)b * S, *f = t->f + (size_t)b * S;
		float *df = t->df + (size_t)b * S;
		for (int i = lo; i < hi; i++) {
			if (jump) {
				double u = ((double)pre[i] - t->theta[i]) / eps;
				if (u > -0.5 && u < 0.5) /* the rectangle kernel */
					dth[i] += -(t->theta[i] / eps) * df[i] - c->l0 * invB / eps;
			}
			if (f[i] > 0) {
				df[i] += add[i];
				fsum[i] += f[i];
				cnt[i]++;
			} else
				df[i] = 0;
			dbe[i] += df[i];
		}
	}
	for (int i = lo; i < hi; i++) {
		c->gv.b_enc[i] = (float)dbe[i];
		if (jump)
			c->gv.log_theta[i] = (float)(dth[i] * t->theta[i]);
		t->fired[i] = cnt[i] > 0;
		t->lat_sum[i] = jump ? c->l0 * cnt[i] * invB : c->l1 * t->nrm[i] * fsum[i] * invB;
	}
}

/* Dense parameter gradients of latents [lo, hi): dW_enc_t = dpre^T x_c,
 * dW_dec = f^T dy (+ the L1 term). */
static void p_lat_gemm(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	int S = t->S, D = t->D, O = t->O, n = hi - lo;
	const float *xc = t->o.transcoder || !t->o.apply_b_dec_to_input ? c->x : t->xc;
	(void)part;
	if (n <= 0)
		return;
	circ_gemm(1, 0, n, D, c->B, 1.0f, t->df + lo, S, xc, D, 0.0f,
		  c->gv.W_enc_t + (size_t)lo * D, D);
	circ_gemm(1, 0, n, O, c->B, 1.0f, t->f + lo, S, t->dy, O, 0.0f,
		  c->gv.W_dec + (size_t)lo * O, O);
	if (t->o.arch == CIRC_DTRAIN_RELU && c->l1 > 0)
		for (int i = lo; i < hi; i++) {
			/* d/dW (l1/B sum_b f_bi ||W_i||) = l1/B (sum_b f_bi) W_i / ||W_i|| */
			const float *w = c->v.W_dec + (size_t)i * O;
			float *g = c->gv.W_dec + (size_t)i * O;
			double nrm = t->nrm[i], fs = t->acc[2 * (size_t)S + i];
			if (nrm == 0)
				continue;
			axpy(g, (float)(c->l1 * fs / c->B / nrm), w, O);
		}
}

/* Sparse latents [lo, hi): every gradient from the latent's entries (main
 * then aux, rows ascending). */
static void p_lat_sparse(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	int D = t->D, O = t->O;
	(void)part;
	for (int i = lo; i < hi; i++) {
		float *gw = c->gv.W_enc_t + (size_t)i * D, *gd = c->gv.W_dec + (size_t)i * O;
		double dbe = 0;
		memset(gw, 0, (size_t)D * sizeof(float));
		memset(gd, 0, (size_t)O * sizeof(float));
		int64_t nmain = 0;
		for (int64_t q = t->lp[i]; q < t->lp[i + 1]; q++) {
			int64_t en = t->order[q];
			int b = t->erow[en];
			float dp = t->dp[en], a = t->val[en];
			const float *xr = xc_row(c, b);
			const float *dyr =
			    en < t->nmain ? t->dy + (size_t)b * O : t->dya + (size_t)b * O;
			for (int j = 0; j < D; j++)
				gw[j] += dp * xr[j];
			for (int j = 0; j < O; j++)
				gd[j] += a * dyr[j];
			dbe += dp;
			nmain += en < t->nmain;
		}
		c->gv.b_enc[i] = (float)dbe;
		t->fired[i] = nmain > 0;
		if (t->o.arch == CIRC_DTRAIN_RELU && nmain > 0) {
			/* the L1 term: l1/B ||W_i|| sum_b f_bi, and its W_dec gradient */
			double fs = 0;
			for (int64_t q = t->lp[i]; q < t->lp[i + 1]; q++)
				fs += t->val[t->order[q]];
			t->lat_sum[i] = c->l1 * t->nrm[i] * fs / c->B;
			if (t->nrm[i] > 0)
				axpy(gd, (float)(c->l1 * fs / c->B / t->nrm[i]),
				     c->v.W_dec + (size_t)i * O, O);
		} else
			t->lat_sum[i] = 0;
	}
}

/* Removes from each decoder row's gradient its component along the row
 * (unit-norm decoders): latents [lo, hi). */
static void p_project(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	int O = t->O;
	(void)part;
	for (int i = lo; i < hi; i++) {
		const float *w = c->v.W_dec + (size_t)i * O;
		float *g = c->gv.W_dec + (size_t)i * O;
		float nn = dot(w, w, O);
		if (nn == 0)
			continue;
		axpy(g, -dot(g, w, O) / nn, w, O);
	}
}

static void p_renorm(step_ctx *c, int part, int lo, int hi)
{
	circ_dtrain *t = c->t;
	int O = t->O;
	(void)part;
	for (int i = lo; i < hi; i++) {
		float *w = c->v.W_dec + (size_t)i * O;
		float nn = dot(w, w, O);
		if (nn == 0)
			continue;
		float s = (float)(1.0 / sqrt((double)nn));
		for (int j = 0; j < O; j++)
			w[j] *= s;
	}
}

/* ---- pass 3: AdamW ---- */

typedef struct adam_ctx {
	circ_dtrain *t;
	double lr, bc1, bc2;
	float gs; /* the gradient's scale (clipping) */
} adam_ctx;

/* The gradient's squared norm in fixed chunks of NORM_CHUNK, each summed in
 * order into part[chunk] (so the total does not depend on the thread
 * count); the caller sums the parts in order. */
#define NORM_CHUNK ((size_t)1 << 16)
typedef struct norm_ctx {
	const float *g;
	size_t n;
	double *part;
} norm_ctx;

CLONES static double sumsq(const float *g, size_t n)
{
	double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	size_t q = 0;
	for (; q + 4 <= n; q += 4) {
		s0 += (double)g[q] * g[q];
		s1 += (double)g[q + 1] * g[q + 1];
		s2 += (double)g[q + 2] * g[q + 2];
		s3 += (double)g[q + 3] * g[q + 3];
	}
	for (; q < n; q++)
		s0 += (double)g[q] * g[q];
	return (s0 + s1) + (s2 + s3);
}

static void norm_body(void *ctx, size_t begin, size_t end)
{
	norm_ctx *a = ctx;
	for (size_t ch = begin; ch < end; ch++) {
		size_t lo = ch * NORM_CHUNK, hi = lo + NORM_CHUNK < a->n ? lo + NORM_CHUNK : a->n;
		a->part[ch] = sumsq(a->g + lo, hi - lo);
	}
}

/* AdamW on [0, n) of p, g, m, v: decay is 1 - lr * weight_decay (1: none). */
CLONES static void adam_range(float *p, const float *g, float *m, float *v, size_t n, float b1,
			      float b2, float eps, float step, float sb2, float decay, float gs)
{
	for (size_t q = 0; q < n; q++) {
		float gq = g[q] * gs;
		float mq = m[q] = b1 * m[q] + (1 - b1) * gq;
		float vq = v[q] = b2 * v[q] + (1 - b2) * gq * gq;
		p[q] = p[q] * decay - step * mq / (sqrtf(vq) * sb2 + eps);
	}
}

static void adam_body(void *ctx, size_t begin, size_t end)
{
	adam_ctx *a = ctx;
	circ_dtrain *t = a->t;
	const circ_dtrain_opts *o = &t->o;
	float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
	float step = (float)(a->lr / a->bc1), sb2 = (float)(1.0 / sqrt(a->bc2));
	float decay = (float)(1.0 - a->lr * o->weight_decay);
	/* regions: W_enc_t (decays), b_enc, W_dec (decays), b_dec and log_theta */
	size_t cut[5] = {0, t->off[1], t->off[2], t->off[3], t->n};
	for (int r = 0; r < 4; r++) {
		size_t lo = cut[r] > begin ? cut[r] : begin,
		       hi = cut[r + 1] < end ? cut[r + 1] : end;
		if (lo < hi)
			adam_range(t->p + lo, t->g + lo, t->m + lo, t->v + lo, hi - lo, b1, b2, eps,
				   step, sb2, r % 2 == 0 ? decay : 1.0f, a->gs);
	}
}

/* ---- the step ---- */

/* Counting sort of the entries by latent: lp (S + 1), order (cap); rows
 * ascending within a latent, main entries first. */
static void index_latents(circ_dtrain *t)
{
	int S = t->S;
	int64_t n = t->nmain + t->naux;
	memset(t->lp, 0, ((size_t)S + 1) * sizeof(int64_t));
	for (int64_t q = 0; q < n; q++)
		t->lp[t->lat[q] + 1]++;
	for (int i = 0; i < S; i++)
		t->lp[i + 1] += t->lp[i];
	int64_t *at = (int64_t *)t->scratch; /* S + 1 int64 fit in the first part's space */
	memcpy(at, t->lp, (size_t)S * sizeof(int64_t));
	for (int64_t q = 0; q < n; q++)
		t->order[at[t->lat[q]]++] = q;
}

/* Compacts per-row counts written at fixed slots (row b at base + b*k,
 * counts in ptr[b+1]) into consecutive entries; ptr becomes offsets from
 * base. Returns the total. */
static int64_t compact(circ_dtrain *t, int64_t base, int k, int64_t *ptr, int B)
{
	int64_t w = base;
	for (int b = 0; b < B; b++) {
		int64_t n = ptr[b + 1], from = base + (int64_t)b * k;
		ptr[b] = w;
		if (from != w) {
			memmove(t->lat + w, t->lat + from, (size_t)n * sizeof(int32_t));
			memmove(t->val + w, t->val + from, (size_t)n * sizeof(float));
		}
		for (int64_t q = 0; q < n; q++)
			t->erow[w + q] = b;
		w += n;
	}
	ptr[B] = w;
	return w - base;
}

static int cmp_desc(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x < y) - (x > y);
}

/* BatchTopK: the B*k largest positive pre-activations of the batch (ties
 * at the cut taken in row-major order) as sparse rows; the running
 * threshold moves towards the smallest kept value. */
static void batch_topk(step_ctx *c, int update_thr)
{
	circ_dtrain *t = c->t;
	size_t S = (size_t)t->S, n = (size_t)c->B * S, want = (size_t)c->B * (size_t)t->o.k;
	/* the cut: sort the positive values (a copy in df's place: the pre of a
	 * batch is B*S floats; sparse architectures keep no df, so use a
	 * temporary) */
	float *vals = circ_xmalloc(n * sizeof(float));
	size_t np = 0;
	for (size_t q = 0; q < n; q++)
		if (t->pre[q] > 0)
			vals[np++] = t->pre[q];
	float cut = 0;
	size_t above = 0;
	if (np > want) {
		qsort(vals, np, sizeof(float), cmp_desc);
		cut = vals[want - 1];
		for (size_t q = 0; q < want; q++)
			above += vals[q] > cut;
	} else
		above = np;
	free(vals);
	size_t at_cut = want - above; /* entries equal to cut still to take */
	int64_t w = 0;
	float minkept = INFINITY;
	for (int b = 0; b < c->B; b++) {
		const float *pre = t->pre + (size_t)b * S;
		t->rp[b] = w;
		for (size_t i = 0; i < S; i++) {
			float v = pre[i];
			int keep = v > 0 && (np <= want ? 1 : v > cut || (v == cut && at_cut > 0));
			if (!keep)
				continue;
			if (np > want && v == cut)
				at_cut--;
			t->lat[w] = (int32_t)i;
			t->val[w] = v;
			t->erow[w] = b;
			if (v < minkept)
				minkept = v;
			w++;
		}
	}
	t->rp[c->B] = w;
	t->nmain = w;
	if (update_thr && w > 0) {
		if (t->bt_thr == 0)
			t->bt_thr = minkept;
		else
			t->bt_thr = 0.99 * t->bt_thr + 0.01 * minkept;
	}
}

/* Forward and backward of one batch into t->g; the stats. */
static int forward_backward(circ_dtrain *t, const float *x, const float *y, int B, int training,
			    circ_dtrain_stats *st, circ_error *e)
{
	const circ_dtrain_opts *o = &t->o;
	if (B < 1 || B > o->batch)
		return circ_errorf(e, "batch of %d tokens (1 to %d)", B, o->batch);
	if (o->transcoder && !y)
		return circ_errorf(e, "a transcoder needs targets");
	circ_blas_threads(1);
	step_ctx c = {.t = t, .x = x, .y = o->transcoder ? y : NULL, .B = B};
	circ_dtrain_views(t, t->p, &c.v);
	circ_dtrain_views(t, t->g, &c.gv);
	c.l1 = o->l1;
	if (t->l1_warmup > 0 && t->step < t->l1_warmup)
		c.l1 *= (double)(t->step + 1) / (double)t->l1_warmup;
	c.l0 = o->l0;
	int S = t->S;

	if (c.v.log_theta)
		for (int i = 0; i < S; i++)
			t->theta[i] = expf(c.v.log_theta[i]);
	run_pass(&c, B, p_pre);
	double spars = 0, aux = 0;
	int64_t active = 0;
	t->sparse_step = sparse_arch(o->arch);
	if (!sparse_arch(o->arch)) {
		run_pass(&c, B, p_act_dense);
		int64_t nnz = 0;
		for (int b = 0; b < B; b++)
			nnz += t->rp[b + 1];
		t->sparse_step = o->arch == CIRC_DTRAIN_RELU &&
				 (double)nnz < o->sparse_below * (double)B * (double)S;
	}
	if (t->sparse_step && o->arch == CIRC_DTRAIN_RELU) {
		/* relu on sparse activations: the topk machinery, no AuxK */
		int64_t nnz = 0;
		for (int b = 0; b < B; b++) {
			int64_t n = t->rp[b + 1];
			t->rp[b] = nnz;
			nnz += n;
		}
		t->rp[B] = nnz;
		reserve_entries(t, nnz > 0 ? nnz : 1);
		run_pass(&c, B, p_gather);
		t->nmain = nnz;
		t->naux = 0;
		for (int b = 0; b <= B; b++)
			t->ap[b] = nnz;
		run_pass(&c, S, p_norms);
		run_pass(&c, B, p_decode);
		run_pass(&c, B, p_sparse_grad);
		index_latents(t);
		run_pass(&c, S, p_lat_sparse);
		for (int i = 0; i < S; i++)
			spars += t->lat_sum[i];
		active = nnz;
	} else if (!sparse_arch(o->arch)) {
		run_pass(&c, B, p_decode);
		run_pass(&c, B, p_df);
		run_pass(&c, S, p_lat_dense);
		run_pass(&c, S, p_lat_gemm);
		for (int i = 0; i < S; i++) {
			spars += t->lat_sum[i];
			active += (int64_t)t->acc[3 * (size_t)S + i];
		}
	} else {
		if (o->arch == CIRC_DTRAIN_TOPK) {
			run_pass(&c, B, p_topk);
			t->nmain = compact(t, 0, o->k, t->rp, B);
		} else
			batch_topk(&c, training);
		active = t->nmain;
		/* AuxK over the latents dead at the step's start */
		t->ndead = 0;
		for (int i = 0; i < S; i++)
			if (t->since[i] >= o->dead_tokens)
				t->dead[t->ndead++] = i;
		c.kaux = t->kaux < t->ndead ? t->kaux : t->ndead;
		c.aux_scale = t->kaux ? (double)t->ndead / t->kaux : 0;
		if (c.aux_scale > 1)
			c.aux_scale = 1;
		memset(t->ap, 0, ((size_t)B + 1) * sizeof(int64_t));
		if (c.kaux > 0 && o->aux_coeff > 0) {
			run_pass(&c, B, p_auxk);
			t->naux = compact(t, t->nmain, c.kaux, t->ap, B);
		} else {
			t->naux = 0;
			for (int b = 0; b <= B; b++)
				t->ap[b] = t->nmain;
		}
		run_pass(&c, B, p_decode);
		run_pass(&c, B, p_sparse_grad);
		index_latents(t);
		run_pass(&c, S, p_lat_sparse);
		for (int b = 0; b < B; b++)
			aux += t->row_aux[b];
		aux /= B;
	}
	/* W_skip: dy^T x, rows split over the pool */
	if (c.gv.W_skip)
		run_pass(&c, t->O, p_skip_grad);
	/* b_dec: output side sum_b dy; input side -W_enc_t^T db_enc */
	for (int j = 0; j < t->O; j++)
		c.gv.b_dec[j] = 0;
	for (int b = 0; b < B; b++)
		for (int j = 0; j < t->O; j++)
			c.gv.b_dec[j] += t->dy[(size_t)b * t->O + j];
	if (!o->transcoder && o->apply_b_dec_to_input)
		for (int i = 0; i < S; i++) {
			float g = c.gv.b_enc[i];
			const float *w = c.v.W_enc_t + (size_t)i * t->D;
			if (g != 0)
				for (int j = 0; j < t->D; j++)
					c.gv.b_dec[j] -= g * w[j];
		}
	double mse = 0;
	for (int b = 0; b < B; b++)
		mse += t->row_mse[b];
	mse /= B;
	if (st) {
		/* the variance of y over the batch, per token */
		double var = 0;
		int Od = t->O;
		for (int j = 0; j < Od; j++) {
			double s = 0, s2 = 0;
			for (int b = 0; b < B; b++) {
				double yv = y && o->transcoder ? y[(size_t)b * Od + j]
							       : x[(size_t)b * t->D + j];
				s += yv;
				s2 += yv * yv;
			}
			var += s2 / B - (s / B) * (s / B);
		}
		st->mse = mse;
		st->fvu = var > 0 ? mse / var : 0;
		st->sparsity = spars;
		st->aux = aux;
		st->loss = mse + spars + aux;
		st->l0 = (double)active / B;
		st->lr = circ_dtrain_lr(o, t->step);
	}
	return 0;
}

int circ_dtrain_grad(circ_dtrain *t, const float *x, const float *y, int B, circ_dtrain_stats *st,
		     circ_error *e)
{
	return forward_backward(t, x, y, B, 0, st, e);
}

int circ_dtrain_step(circ_dtrain *t, const float *x, const float *y, int B, circ_dtrain_stats *st,
		     circ_error *e)
{
	const circ_dtrain_opts *o = &t->o;
	circ_dtrain_stats local;
	if (!st)
		st = &local;
	if (forward_backward(t, x, y, B, 1, st, e) < 0)
		return -1;
	step_ctx c = {.t = t, .x = x, .y = y, .B = B};
	circ_dtrain_views(t, t->p, &c.v);
	circ_dtrain_views(t, t->g, &c.gv);
	if (unit_decoder(o->arch))
		run_pass(&c, t->S, p_project);
	float gs = 1.0f;
	if (o->clip > 0) {
		size_t nch = (t->n + NORM_CHUNK - 1) / NORM_CHUNK;
		norm_ctx nc = {t->g, t->n, circ_xmalloc(nch * sizeof(double))};
		circ_pool_for(t->pool, nch, norm_body, &nc);
		double nn = 0;
		for (size_t ch = 0; ch < nch; ch++)
			nn += nc.part[ch];
		free(nc.part);
		nn = sqrt(nn);
		if (nn > o->clip)
			gs = (float)(o->clip / (nn + 1e-6));
	}
	t->step++;
	adam_ctx a = {t, circ_dtrain_lr(o, t->step - 1), 1 - pow(o->beta1, (double)t->step),
		      1 - pow(o->beta2, (double)t->step), gs};
	circ_pool_for(t->pool, t->n, adam_body, &a);
	if (unit_decoder(o->arch))
		run_pass(&c, t->S, p_renorm);
	int64_t ndead = 0;
	for (int i = 0; i < t->S; i++) {
		t->since[i] = t->fired[i] ? 0 : t->since[i] + B;
		ndead += t->since[i] >= o->dead_tokens;
	}
	st->dead_frac = (double)ndead / t->S;
	return 0;
}

void circ_dtrain_export(const circ_dtrain *t, float *W_enc, float *b_enc, float *W_dec,
			float *b_dec, float *threshold)
{
	circ_dtrain_view v;
	circ_dtrain_views((circ_dtrain *)t, t->p, &v);
	int D = t->D, S = t->S;
	for (int i = 0; i < S; i++)
		for (int j = 0; j < D; j++)
			W_enc[(size_t)j * S + i] = v.W_enc_t[(size_t)i * D + j];
	memcpy(b_enc, v.b_enc, (size_t)S * sizeof(float));
	memcpy(W_dec, v.W_dec, (size_t)S * t->O * sizeof(float));
	memcpy(b_dec, v.b_dec, (size_t)t->O * sizeof(float));
	if (threshold)
		for (int i = 0; i < S; i++)
			threshold[i] = v.log_theta ? expf(v.log_theta[i]) : (float)t->bt_thr;
}

/* ---- checkpoints ---- */

/* The options that must match for a resume, as one string. */
static void fingerprint(const circ_dtrain_opts *o, char *s, size_t n)
{
	snprintf(s, n,
		 "arch=%s d_in=%d d_out=%d d_sae=%d transcoder=%d skip=%d apply_b_dec=%d k=%d "
		 "k_aux=%d "
		 "aux=%a dead=%" PRId64 " l1=%a l1_warmup=%" PRId64 " l0=%a bw=%a theta=%a "
		 "dec_norm=%a sparse_below=%a lr=%a min_lr=%a steps=%" PRId64 " warmup=%" PRId64
		 " decay=%" PRId64 " b1=%a b2=%a eps=%a wd=%a clip=%a batch=%d threads=%d "
		 "seed=%" PRIu64,
		 circ_dtrain_arch_name(o->arch), o->d_in, o->d_out, o->d_sae, o->transcoder,
		 o->skip, o->apply_b_dec_to_input, o->k, o->k_aux, o->aux_coeff, o->dead_tokens,
		 o->l1, o->l1_warmup, o->l0, o->bandwidth, o->threshold_init, o->dec_init_norm,
		 o->sparse_below, o->lr, o->min_lr, o->steps, o->warmup, o->decay, o->beta1,
		 o->beta2, o->eps, o->weight_decay, o->clip, o->batch, o->threads, o->seed);
}

int circ_dtrain_save(const circ_dtrain *t, const char *path, int n, const circ_st_tensor *extra,
		     int n_meta, const char *const *meta, circ_error *e)
{
	circ_st_tensor ts[16];
	const char *mt[32];
	char fp[2048], step[32], thr[64];
	int k = 0, km = 0;
	if (n > 12 || n_meta > 12)
		return circ_errorf(e, "'%s': too many extra checkpoint entries", path);
	ts[k++] = (circ_st_tensor){"dtrain.params", CIRC_F32, 1,
				   {(int64_t)t->n}, t->p,     t->n * sizeof(float)};
	ts[k++] = (circ_st_tensor){"dtrain.adam_m", CIRC_F32, 1,
				   {(int64_t)t->n}, t->m,     t->n * sizeof(float)};
	ts[k++] = (circ_st_tensor){"dtrain.adam_v", CIRC_F32, 1,
				   {(int64_t)t->n}, t->v,     t->n * sizeof(float)};
	ts[k++] = (circ_st_tensor){"dtrain.since", CIRC_I64, 1,
				   {t->S},	   t->since, (size_t)t->S * sizeof(int64_t)};
	for (int i = 0; i < n; i++)
		ts[k++] = extra[i];
	fingerprint(&t->o, fp, sizeof fp);
	snprintf(step, sizeof step, "%" PRId64, t->step);
	snprintf(thr, sizeof thr, "%a", t->bt_thr);
	mt[km++] = "dtrain.options";
	mt[km++] = fp;
	mt[km++] = "dtrain.step";
	mt[km++] = step;
	mt[km++] = "dtrain.batch_threshold";
	mt[km++] = thr;
	for (int i = 0; i < 2 * n_meta; i++)
		mt[km++] = meta[i];
	return circ_st_write(path, k, ts, km / 2, mt, e);
}

/* Tensor name of f as float or int64 data of nbytes; -1 naming it. */
static const void *ck_tensor(const circ_st *f, const char *name, circ_dtype dt, size_t nbytes,
			     circ_error *e)
{
	const circ_st_tensor *x = circ_st_find(f, name);
	if (!x)
		return circ_errorf(e, "'%s': checkpoint has no tensor '%s'", circ_st_path(f), name),
		       NULL;
	if (x->dtype != dt || x->nbytes != nbytes)
		return circ_errorf(e, "'%s': tensor '%s' has the wrong dtype or size",
				   circ_st_path(f), name),
		       NULL;
	return x->data;
}

int circ_dtrain_restore(circ_dtrain *t, const circ_st *f, circ_error *e)
{
	char fp[2048];
	const char *s = circ_st_metadata(f, "dtrain.options"),
		   *st = circ_st_metadata(f, "dtrain.step"),
		   *th = circ_st_metadata(f, "dtrain.batch_threshold");
	fingerprint(&t->o, fp, sizeof fp);
	if (!s || !st || !th)
		return circ_errorf(e, "'%s': not a circ-train dictionary checkpoint",
				   circ_st_path(f));
	if (strcmp(s, fp))
		return circ_errorf(
		    e,
		    "'%s': checkpoint made with other options (it has '%s', this run "
		    "'%s')",
		    circ_st_path(f), s, fp);
	const void *p = ck_tensor(f, "dtrain.params", CIRC_F32, t->n * sizeof(float), e),
		   *m = p ? ck_tensor(f, "dtrain.adam_m", CIRC_F32, t->n * sizeof(float), e) : NULL,
		   *v = m ? ck_tensor(f, "dtrain.adam_v", CIRC_F32, t->n * sizeof(float), e) : NULL,
		   *since =
		       v ? ck_tensor(f, "dtrain.since", CIRC_I64, (size_t)t->S * sizeof(int64_t), e)
			 : NULL;
	if (!since)
		return -1;
	memcpy(t->p, p, t->n * sizeof(float));
	memcpy(t->m, m, t->n * sizeof(float));
	memcpy(t->v, v, t->n * sizeof(float));
	memcpy(t->since, since, (size_t)t->S * sizeof(int64_t));
	t->step = strtoll(st, NULL, 10);
	t->bt_thr = strtod(th, NULL);
	return 0;
}

/* ---- the shuffled buffer ----
 * The rows stay where they were written; a permutation of the slots is
 * what is shuffled, and batches gather the rows of its next slots. A
 * refill writes new rows into the slots served since the last one (in
 * chunks of DBUF_CHUNK rows through a small staging area), so a buffer on
 * disk is never moved about, only read at random and written back in the
 * served slots. */

#define DBUF_CHUNK 1024

struct circ_dbuf {
	size_t cap, pos; /* rows; next slot served (index into perm) */
	int w;
	float *rows;	/* (cap, w), in memory or a mapping of an unlinked file */
	size_t map_len; /* bytes mapped (file buffer), else 0 */
	int64_t *perm;	/* (cap) slot of each place in the served order */
	float *stage;	/* (DBUF_CHUNK, w) */
	circ_rng r;
	circ_dbuf_fill fill;
	void *ctx;
	int full;
	int64_t rows_in;
	char meta[2][96];
};

static circ_dbuf *dbuf_make(size_t cap, int width, uint64_t seed, circ_dbuf_fill fill, void *ctx)
{
	CIRC_ASSERT(cap >= 2 && width > 0);
	circ_dbuf *b = circ_xcalloc(1, sizeof *b);
	b->cap = cap;
	b->w = width;
	b->perm = circ_xmalloc(cap * sizeof(int64_t));
	for (size_t i = 0; i < cap; i++)
		b->perm[i] = (int64_t)i;
	b->stage = circ_xmalloc((size_t)DBUF_CHUNK * (size_t)width * sizeof(float));
	circ_rng_seed_stream(&b->r, seed, 1);
	b->fill = fill;
	b->ctx = ctx;
	return b;
}

circ_dbuf *circ_dbuf_new(size_t cap, int width, uint64_t seed, circ_dbuf_fill fill, void *ctx)
{
	circ_dbuf *b = dbuf_make(cap, width, seed, fill, ctx);
	b->rows = circ_xmalloc_aligned(cap * (size_t)width * sizeof(float));
	return b;
}

circ_dbuf *circ_dbuf_new_file(size_t cap, int width, uint64_t seed, circ_dbuf_fill fill, void *ctx,
			      const char *dir, circ_error *e)
{
	if (cap > SIZE_MAX / sizeof(float) / (size_t)width ||
	    cap * (size_t)width * sizeof(float) > (size_t)INT64_MAX) {
		circ_errorf(e, "'%s': a buffer of %zu rows of %d floats is too large", dir, cap,
			    width);
		return NULL;
	}
	size_t len = cap * (size_t)width * sizeof(float);
	size_t n = strlen(dir) + 32;
	char *path = circ_xmalloc(n);
	snprintf(path, n, "%s/circ-buffer.XXXXXX", dir);
	int fd = mkstemp(path);
	if (fd < 0) {
		circ_errorf(e, "'%s': cannot make the buffer's file there: %s", dir,
			    strerror(errno));
		free(path);
		return NULL;
	}
	/* unlinked at once: nothing is left behind, whatever ends the process */
	unlink(path);
	free(path);
	int err = posix_fallocate(fd, 0, (off_t)len);
	if (err) {
		close(fd);
		circ_errorf(e, "'%s': cannot reserve %zu bytes for the buffer: %s", dir, len,
			    strerror(err));
		return NULL;
	}
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		circ_errorf(e, "'%s': cannot map the buffer's file: %s", dir, strerror(errno));
		return NULL;
	}
	circ_dbuf *b = dbuf_make(cap, width, seed, fill, ctx);
	b->rows = p;
	b->map_len = len;
	return b;
}

void circ_dbuf_free(circ_dbuf *b)
{
	if (!b)
		return;
	if (b->map_len)
		munmap(b->rows, b->map_len);
	else
		free(b->rows);
	free(b->perm);
	free(b->stage);
	free(b);
}

int64_t circ_dbuf_rows_in(const circ_dbuf *b)
{
	return b->rows_in;
}

static void dbuf_shuffle(circ_dbuf *b)
{
	for (size_t i = b->cap - 1; i > 0; i--) {
		size_t j = (size_t)circ_rng_below(&b->r, i + 1);
		int64_t t = b->perm[i];
		b->perm[i] = b->perm[j];
		b->perm[j] = t;
	}
}

static int dbuf_first(circ_dbuf *b, circ_error *e)
{
	if (b->full)
		return 0;
	if (b->fill(b->ctx, b->rows, b->cap, e) < 0)
		return -1;
	b->rows_in += (int64_t)b->cap;
	b->full = 1;
	b->pos = 0;
	dbuf_shuffle(b);
	return 0;
}

const float *circ_dbuf_peek(circ_dbuf *b, size_t *n, circ_error *e)
{
	if (dbuf_first(b, e) < 0)
		return NULL;
	*n = b->cap;
	return b->rows;
}

/* New rows into the slots perm[0 .. pos), in served order. */
static int dbuf_refill(circ_dbuf *b, circ_error *e)
{
	size_t rb = (size_t)b->w * sizeof(float);
	for (size_t i = 0; i < b->pos; i += DBUF_CHUNK) {
		size_t n = b->pos - i < DBUF_CHUNK ? b->pos - i : DBUF_CHUNK;
		if (b->fill(b->ctx, b->stage, n, e) < 0)
			return -1;
		for (size_t q = 0; q < n; q++)
			memcpy(b->rows + (size_t)b->perm[i + q] * b->w, b->stage + q * b->w, rb);
	}
	b->rows_in += (int64_t)b->pos;
	b->pos = 0;
	return 0;
}

int circ_dbuf_next(circ_dbuf *b, float *out, size_t n, circ_error *e)
{
	size_t half = b->cap / 2;
	CIRC_ASSERT(n <= half);
	if (dbuf_first(b, e) < 0)
		return -1;
	if (b->pos + n > half) {
		/* refill the served slots, then mix everything */
		if (dbuf_refill(b, e) < 0)
			return -1;
		dbuf_shuffle(b);
	}
	size_t rb = (size_t)b->w * sizeof(float);
	for (size_t q = 0; q < n; q++)
		memcpy(out + q * b->w, b->rows + (size_t)b->perm[b->pos + q] * b->w, rb);
	b->pos += n;
	return 0;
}

void circ_dbuf_state(circ_dbuf *b, circ_st_tensor *t, const char **meta)
{
	t[0] = (circ_st_tensor){"dbuf.rows", CIRC_F32,
				2,	     {(int64_t)b->cap, b->w},
				b->rows,     b->cap * (size_t)b->w * sizeof(float)};
	t[1] = (circ_st_tensor){"dbuf.perm",	   CIRC_I64, 1,
				{(int64_t)b->cap}, b->perm,  b->cap * sizeof(int64_t)};
	snprintf(b->meta[0], sizeof b->meta[0], "%zu %d %" PRId64, b->pos, b->full, b->rows_in);
	snprintf(b->meta[1], sizeof b->meta[1],
		 "%016" PRIx64 " %016" PRIx64 " %016" PRIx64 " %016" PRIx64, b->r.s[0], b->r.s[1],
		 b->r.s[2], b->r.s[3]);
	meta[0] = "dbuf.pos";
	meta[1] = b->meta[0];
	meta[2] = "dbuf.rng";
	meta[3] = b->meta[1];
}

int circ_dbuf_restore(circ_dbuf *b, const circ_st *f, circ_error *e)
{
	const char *pos = circ_st_metadata(f, "dbuf.pos"), *rng = circ_st_metadata(f, "dbuf.rng");
	const void *rows =
	    ck_tensor(f, "dbuf.rows", CIRC_F32, b->cap * (size_t)b->w * sizeof(float), e);
	const int64_t *perm =
	    rows ? ck_tensor(f, "dbuf.perm", CIRC_I64, b->cap * sizeof(int64_t), e) : NULL;
	if (!perm)
		return -1;
	size_t p;
	int full;
	int64_t in;
	uint64_t s[4];
	if (!pos || !rng || sscanf(pos, "%zu %d %" SCNd64, &p, &full, &in) != 3 ||
	    sscanf(rng, "%" SCNx64 " %" SCNx64 " %" SCNx64 " %" SCNx64, &s[0], &s[1], &s[2],
		   &s[3]) != 4 ||
	    p > b->cap)
		return circ_errorf(e, "'%s': bad buffer state in the checkpoint", circ_st_path(f));
	/* the permutation must be one: every slot once */
	unsigned char *seen = circ_xcalloc(b->cap, 1);
	int ok = 1;
	for (size_t i = 0; i < b->cap && ok; i++) {
		int64_t q = perm[i];
		ok = q >= 0 && (size_t)q < b->cap && !seen[q];
		if (ok)
			seen[q] = 1;
	}
	free(seen);
	if (!ok)
		return circ_errorf(e, "'%s': tensor 'dbuf.perm': not a permutation of %zu slots",
				   circ_st_path(f), b->cap);
	memcpy(b->rows, rows, b->cap * (size_t)b->w * sizeof(float));
	memcpy(b->perm, perm, b->cap * sizeof(int64_t));
	b->pos = p;
	b->full = full;
	b->rows_in = in;
	memcpy(b->r.s, s, sizeof s);
	return 0;
}

/* ---- the superposition fixture ---- */

struct circ_dfix {
	int d, d_out, n, n_corr, n_anti;
	double p;
	float *dirs, *out_dirs; /* (n, d), (n, d_out) */
	float *a;		/* (n) */
	circ_rng r;
};

circ_dfix *circ_dfix_new(int d, int d_out, int n_feat, int n_corr, int n_anti, double p,
			 uint64_t seed)
{
	CIRC_ASSERT(d > 0 && n_feat > 0 && 2 * (n_corr + n_anti) <= n_feat);
	circ_dfix *f = circ_xcalloc(1, sizeof *f);
	f->d = d;
	f->d_out = d_out;
	f->n = n_feat;
	f->n_corr = n_corr;
	f->n_anti = n_anti;
	f->p = p;
	circ_rng_seed_stream(&f->r, seed, 2);
	f->dirs = circ_xmalloc((size_t)n_feat * d * sizeof(float));
	random_dirs(&f->r, f->dirs, n_feat, d, 1.0);
	if (d_out > 0) {
		f->out_dirs = circ_xmalloc((size_t)n_feat * d_out * sizeof(float));
		random_dirs(&f->r, f->out_dirs, n_feat, d_out, 1.0);
	}
	f->a = circ_xmalloc((size_t)n_feat * sizeof(float));
	return f;
}

void circ_dfix_free(circ_dfix *f)
{
	if (!f)
		return;
	free(f->dirs);
	free(f->out_dirs);
	free(f->a);
	free(f);
}

const float *circ_dfix_dirs(const circ_dfix *f)
{
	return f->dirs;
}
const float *circ_dfix_out_dirs(const circ_dfix *f)
{
	return f->out_dirs;
}

static float magnitude(circ_rng *r)
{
	return (float)(0.5 + circ_rng_uniform(r));
}

int circ_dfix_fill(void *ctx, float *rows, size_t n, circ_error *e)
{
	circ_dfix *f = ctx;
	int w = f->d + f->d_out;
	(void)e;
	for (size_t q = 0; q < n; q++) {
		float *row = rows + q * (size_t)w;
		memset(f->a, 0, (size_t)f->n * sizeof(float));
		int i = 0;
		for (int k = 0; k < f->n_corr; k++, i += 2) {
			double u = circ_rng_uniform(&f->r);
			if (u < f->p) /* together */
				f->a[i] = magnitude(&f->r), f->a[i + 1] = magnitude(&f->r);
			else if (u < 1.25 * f->p)
				f->a[i] = magnitude(&f->r);
			else if (u < 1.5 * f->p)
				f->a[i + 1] = magnitude(&f->r);
		}
		for (int k = 0; k < f->n_anti; k++, i += 2) {
			double u = circ_rng_uniform(&f->r);
			if (u < f->p)
				f->a[i + (u < 0.5 * f->p)] = magnitude(&f->r);
		}
		for (; i < f->n; i++)
			if (circ_rng_uniform(&f->r) < f->p)
				f->a[i] = magnitude(&f->r);
		memset(row, 0, (size_t)w * sizeof(float));
		for (i = 0; i < f->n; i++) {
			if (f->a[i] == 0)
				continue;
			for (int j = 0; j < f->d; j++)
				row[j] += f->a[i] * f->dirs[(size_t)i * f->d + j];
			for (int j = 0; j < f->d_out; j++)
				row[f->d + j] += f->a[i] * f->out_dirs[(size_t)i * f->d_out + j];
		}
	}
	return 0;
}

double circ_dtrain_recovery(const float *truth, int n, const float *learned, int m, int d)
{
	double sum = 0;
	for (int i = 0; i < n; i++) {
		const float *a = truth + (size_t)i * d;
		double na = 0, best = -1;
		for (int j = 0; j < d; j++)
			na += (double)a[j] * a[j];
		for (int k = 0; k < m; k++) {
			const float *b = learned + (size_t)k * d;
			double dot = 0, nb = 0;
			for (int j = 0; j < d; j++) {
				dot += (double)a[j] * b[j];
				nb += (double)b[j] * b[j];
			}
			if (na > 0 && nb > 0 && dot / sqrt(na * nb) > best)
				best = dot / sqrt(na * nb);
		}
		sum += best;
	}
	return n ? sum / n : 0;
}

/* ---- the dictionary trained ---- */

void circ_dtrain_dict_cfg(const circ_dtrain *t, circ_dict_cfg *c)
{
	const circ_dtrain_opts *o = &t->o;
	c->arch = o->arch == CIRC_DTRAIN_RELU	? CIRC_DICT_STANDARD
		  : o->arch == CIRC_DTRAIN_TOPK ? CIRC_DICT_TOPK
						: CIRC_DICT_JUMPRELU;
	c->k = o->arch == CIRC_DTRAIN_TOPK ? o->k : 0;
	c->d_in = o->d_in;
	c->d_sae = o->d_sae;
	c->d_out = o->d_out;
	c->transcoder = o->transcoder;
	c->skip = o->skip;
	c->apply_b_dec_to_input = !o->transcoder && o->apply_b_dec_to_input;
}

void circ_dtrain_to_dict(const circ_dtrain *t, circ_dict *d)
{
	circ_dtrain_export(t, d->W_enc, d->b_enc, d->W_dec, d->b_dec, d->threshold);
	circ_dtrain_view v;
	circ_dtrain_views((circ_dtrain *)t, t->p, &v);
	if (v.W_skip && d->W_skip) /* both (O, I) */
		memcpy(d->W_skip, v.W_skip, (size_t)t->O * t->D * sizeof(float));
}

/* ---- activations from a model ---- */

struct circ_dharvest {
	const circ_model *m;
	const circ_dict *d;
	circ_run *run;
	int seqs, T, I, O, w, stop;
	int32_t *tokens;  /* (seqs, T) */
	float *in, *out;  /* (seqs*T, I), (seqs*T, O): one forward's hooks */
	float *pending;	  /* (seqs*T, w) rows not yet handed out */
	size_t npend, at; /* rows pending; next one */
	int64_t nseqs;	  /* sequences read */
	int captured;
	circ_dtokens_fn next;
	void *next_ctx;
	char meta[96];
};

circ_dharvest *circ_dharvest_new(const circ_model *m, const circ_dict *d, int seqs, int ctx_len,
				 int threads, circ_dtokens_fn tokens, void *tokens_ctx,
				 circ_error *e)
{
	const circ_topology *topo = circ_model_topology(m);
	circ_hook hi, ho;
	if (seqs < 1 || ctx_len < 1 || ctx_len > circ_model_config(m)->n_ctx)
		return circ_errorf(e, "bad harvest sizes (%d sequences of %d tokens; context %d)",
				   seqs, ctx_len, circ_model_config(m)->n_ctx),
		       NULL;
	if (circ_hook_parse(d->cfg.hook_name, &hi, e) < 0 ||
	    (d->cfg.transcoder && circ_hook_parse(d->cfg.hook_out, &ho, e) < 0))
		return NULL;
	circ_run_opts ro;
	circ_run_opts_default(&ro);
	ro.threads = threads;
	ro.keep_nodes = hi.kind == CIRC_HOOK_ATTN_Z; /* heads' outputs only for z */
	/* the hooks are read from the hook of their stage, where the layer's
	 * attention is the last run: one layer's activations, not every
	 * layer's up to the hook */
	ro.one_layer = 1;
	circ_run *run = circ_run_new(m, seqs, ctx_len, &ro, e);
	if (!run)
		return NULL;
	circ_dharvest *h = circ_xcalloc(1, sizeof *h);
	h->m = m;
	h->d = d;
	h->run = run;
	h->seqs = seqs;
	h->T = ctx_len;
	h->I = d->cfg.d_in;
	h->O = d->cfg.transcoder ? d->cfg.d_out : 0;
	h->w = h->I + h->O;
	h->stop = circ_hook_stage(topo, &hi);
	if (d->cfg.transcoder && circ_hook_stage(topo, &ho) > h->stop)
		h->stop = circ_hook_stage(topo, &ho);
	size_t N = (size_t)seqs * ctx_len;
	h->tokens = circ_xmalloc(N * sizeof(int32_t));
	h->in = circ_xmalloc_aligned(N * h->I * sizeof(float));
	h->out = h->O ? circ_xmalloc_aligned(N * h->O * sizeof(float)) : NULL;
	h->pending = circ_xmalloc_aligned(N * h->w * sizeof(float));
	h->next = tokens;
	h->next_ctx = tokens_ctx;
	return h;
}

void circ_dharvest_free(circ_dharvest *h)
{
	if (!h)
		return;
	circ_run_free(h->run);
	free(h->tokens);
	free(h->in);
	free(h->out);
	free(h->pending);
	free(h);
}

int circ_dharvest_width(const circ_dharvest *h)
{
	return h->w;
}
int64_t circ_dharvest_seqs(const circ_dharvest *h)
{
	return h->nseqs;
}

/* The forward hook: at the last stage the hooks need, reads them and stops
 * the forward (the rest of the model is not needed). */
static int harvest_hook(void *ctx, circ_run *r, int stage, circ_error *e)
{
	circ_dharvest *h = ctx;
	if (stage < h->stop)
		return 0;
	if (circ_dict_hook_read(h->d, 1, r, h->in, e) < 0 ||
	    (h->O && circ_dict_hook_read(h->d, 0, r, h->out, e) < 0))
		return -1;
	h->captured = 1;
	return circ_errorf(e, "harvested"); /* stops the forward */
}

/* One forward over the next sequences into pending. */
static int harvest_more(circ_dharvest *h, circ_error *e)
{
	int g = h->next(h->next_ctx, h->tokens, h->seqs, h->T, e);
	if (g < 0)
		return -1;
	if (g == 0)
		return circ_errorf(e, "corpus exhausted after %" PRId64 " sequences of %d tokens",
				   h->nseqs, h->T);
	h->nseqs += g;
	circ_fwd f;
	circ_fwd_init(&f);
	f.tokens = h->tokens;
	f.B = g;
	f.T = h->T;
	f.read = CIRC_READ_NONE;
	f.hook = harvest_hook;
	f.hook_ctx = h;
	h->captured = 0;
	if (circ_forward(h->run, &f, e) < 0 && !h->captured)
		return -1;
	if (!h->captured)
		return circ_errorf(e, "the forward never reached stage %d", h->stop);
	size_t N = (size_t)g * h->T;
	for (size_t q = 0; q < N; q++) {
		memcpy(h->pending + q * h->w, h->in + q * h->I, (size_t)h->I * sizeof(float));
		if (h->O)
			memcpy(h->pending + q * h->w + h->I, h->out + q * h->O,
			       (size_t)h->O * sizeof(float));
	}
	h->npend = N;
	h->at = 0;
	return 0;
}

int circ_dharvest_fill(void *ctx, float *rows, size_t n, circ_error *e)
{
	circ_dharvest *h = ctx;
	while (n > 0) {
		if (h->at == h->npend && harvest_more(h, e) < 0)
			return -1;
		size_t take = h->npend - h->at < n ? h->npend - h->at : n;
		memcpy(rows, h->pending + h->at * h->w, take * h->w * sizeof(float));
		rows += take * h->w;
		h->at += take;
		n -= take;
	}
	return 0;
}

void circ_dharvest_state(circ_dharvest *h, circ_st_tensor *t, const char **meta)
{
	size_t left = h->npend - h->at;
	*t = (circ_st_tensor){"dharvest.pending",
			      CIRC_F32,
			      2,
			      {(int64_t)left, h->w},
			      h->pending + h->at * h->w,
			      left * h->w * sizeof(float)};
	snprintf(h->meta, sizeof h->meta, "%" PRId64, h->nseqs);
	meta[0] = "dharvest.seqs";
	meta[1] = h->meta;
}

int circ_dharvest_restore(circ_dharvest *h, const circ_st *f, circ_error *e)
{
	const circ_st_tensor *t = circ_st_find(f, "dharvest.pending");
	const char *s = circ_st_metadata(f, "dharvest.seqs");
	size_t cap = (size_t)h->seqs * h->T;
	if (!t || !s || t->dtype != CIRC_F32 || t->ndim != 2 || t->shape[1] != h->w ||
	    (size_t)t->shape[0] > cap)
		return circ_errorf(e, "'%s': bad harvest state in the checkpoint", circ_st_path(f));
	memcpy(h->pending, t->data, t->nbytes);
	h->npend = (size_t)t->shape[0];
	h->at = 0;
	h->nseqs = strtoll(s, NULL, 10);
	return 0;
}
