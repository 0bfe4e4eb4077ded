/*
 * model_family: the forward and backward of every family but GPT-2 (whose
 * tuned path is model_forward.c / model_backward.c), on the same runs,
 * stages, receivers, deltas and hooks: Llama, Mistral, Qwen 2 and 3, Gemma
 * 1-3, OLMo 2 and GPT-NeoX, their differences read from circ_config.
 *
 * Loading: the family's tensor table (model_names.c) bound to the
 * checkpoint (one file or shards) and pointed into fam_weights: F32 tensors
 * in place, F16 and BF16 converted to f32 (once, at open); GPT-NeoX's fused
 * query_key_value split into q, k and v (its rows are head-major: head h's
 * q, k, v are adjacent D-row chunks).
 *
 * What a node outputs (as for GPT-2, model.h): the embedding node the token
 * embedding times embed_scale (Gemma: sqrt(C)); a head z_h W_O[:, hD:(h+1)D]^T
 * (no bias: o_proj's bias is a constant of the residual); an MLP its output,
 * its biases included. Where a block's output goes through a norm of its own
 * before the residual (Gemma 2 and 3: post_attention_layernorm and
 * post_feedforward_layernorm; OLMo 2), a node's output is its share of the
 * normed sum: for the attention, head h's output times the norm's scale of
 * the layer's summed output in this run, rsqrt(mean(A^2) + eps) (offset + w),
 * so that the heads' outputs sum to the normed attention output exactly and
 * the residual stays the plain sum of node outputs that patching needs.
 * With raw head nodes (circ_model_opts.raw_heads: EAP-IG's and MIB's) a
 * head outputs o_h itself and lib/patch applies the norm on the receiver's
 * side (circ_model_post_attn_norm).
 *
 * Receivers: q, k and v of every query head (grouped-query attention
 * ungrouped, as EAP-IG builds it on TransformerLens): the k (v) receiver of
 * query head h reads its own input, normalises it and projects it with the
 * k (v) weights of h's group. With a grouped topology (one k and v receiver
 * per key/value head) the heads of a group share the receiver and its
 * gradient is their sum. Receivers of a layer without deltas share one
 * normed input and one projection. With q/k norms over the whole projection
 * (OLMo 2) a receiver's head slice is taken after the norm of its own
 * input's whole projection.
 *
 * Stages: sequential blocks as GPT-2 (2l attention, 2l+1 MLP, 2L final);
 * parallel blocks (GPT-NeoX) one stage per layer whose q/k/v and MLP
 * receivers read the same residual, then the final one.
 *
 * Per-node output gradients (circ_bwd.out_hook, model.h): the MLP's
 * backward starts from its own gradient (through its post norm, if any);
 * head h's dz from its own gradient G_h: dz_h = dO_h Wo_h (per-head GEMMs),
 * dO_h = G_h without a post norm. With one, node_h = o_h rs(A) w' (o_h =
 * z_h Wo_h^T, A = sum_k o_k, rs = rsqrt(mean(A^2) + eps), w' = off + w),
 * so the loss reaches o_k through every head's output:
 *   dO_k = rs w' . G_k - A (rs^3 / C) sum_h <G_h . w', o_h>
 * row by row (attn_dz_own), which with every G_h equal to the residual
 * gradient is the norm's backward that the plain path takes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_impl.h"
#include "model_names.h"

/* ================================================================ loading */

/* Where a role's tensor goes: *mat (a matrix, kept narrow or f32) or *vec
 * (a vector, f32); both NULL for neither. l < 0: model-wide roles only. */
static void role_slot(fam_weights *fw, model_role role, int l, fam_mat **mat, const float ***vec)
{
	fam_layer *y = l >= 0 ? &fw->layers[l] : NULL;
	*mat = NULL;
	*vec = NULL;
	switch (role) {
	case MODEL_W_EMBED: *mat = &fw->embed; return;
	case MODEL_W_LM_HEAD: *mat = &fw->lm_head; return;
	case MODEL_W_FINAL_W: *vec = &fw->final_w; return;
	case MODEL_W_FINAL_B: *vec = &fw->final_b; return;
	default: break;
	}
	if (!y)
		return;
	switch (role) {
	case MODEL_W_Q_W: *mat = &y->q_w; return;
	case MODEL_W_K_W: *mat = &y->k_w; return;
	case MODEL_W_V_W: *mat = &y->v_w; return;
	case MODEL_W_O_W: *mat = &y->o_w; return;
	case MODEL_W_FC_W:
	case MODEL_W_GATE_W: *mat = &y->fc_w; return;
	case MODEL_W_UP_W: *mat = &y->up_w; return;
	case MODEL_W_FCPROJ_W:
	case MODEL_W_DOWN_W: *mat = &y->dn_w; return;
	case MODEL_W_NORM1_W: *vec = &y->n1_w; return;
	case MODEL_W_NORM1_B: *vec = &y->n1_b; return;
	case MODEL_W_Q_B: *vec = &y->q_b; return;
	case MODEL_W_K_B: *vec = &y->k_b; return;
	case MODEL_W_V_B: *vec = &y->v_b; return;
	case MODEL_W_Q_NORM: *vec = &y->qn_w; return;
	case MODEL_W_K_NORM: *vec = &y->kn_w; return;
	case MODEL_W_O_B: *vec = &y->o_b; return;
	case MODEL_W_POST_ATTN_W: *vec = &y->pa_w; return;
	case MODEL_W_NORM2_W: *vec = &y->n2_w; return;
	case MODEL_W_NORM2_B: *vec = &y->n2_b; return;
	case MODEL_W_FC_B:
	case MODEL_W_GATE_B: *vec = &y->fc_b; return;
	case MODEL_W_UP_B: *vec = &y->up_b; return;
	case MODEL_W_FCPROJ_B:
	case MODEL_W_DOWN_B: *vec = &y->dn_b; return;
	case MODEL_W_POST_MLP_W: *vec = &y->pm_w; return;
	default: return;
	}
}

static fam_mat *mat_slot(fam_weights *fw, model_role role, int l)
{
	fam_mat *m;
	const float **v;
	role_slot(fw, role, l, &m, &v);
	return m;
}

/* Rows the unembedding converts at a time (narrow vocabularies). */
#define FAM_VOCAB_CHUNK 4096

static size_t numel(const model_tensor *t)
{
	size_t n = 1;
	for (int i = 0; i < t->ndim; i++)
		n *= (size_t)t->shape[i];
	return n;
}

static int finite_or_error(const char *file, const char *name, const float *p, size_t n,
			   circ_error *e)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(p[i]))
			return circ_errorf(e, "'%s': tensor '%s': element %zu is %s", file, name, i,
					   isnan(p[i]) ? "NaN" : "infinite");
	return 0;
}

typedef uint16_t v16u __attribute__((vector_size(32)));

/* The index of the first element of p[0 .. n) whose exponent bits (mask)
 * are all ones, or n: blocks of 1024 tested 16 lanes at a time, the first
 * block with one searched element by element. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static size_t
first_nonfinite16(const unsigned char *p, size_t n, uint16_t mask)
{
	size_t i = 0;
	for (; i + 1024 <= n; i += 1024) {
		v16u bad = {0};
		for (size_t j = 0; j < 1024; j += 16) {
			v16u v;
			memcpy(&v, p + 2 * (i + j), 32);
			bad |= (v16u)((v & mask) == mask);
		}
		int any = 0;
		for (int l = 0; l < 16; l++)
			any |= bad[l] != 0;
		if (any)
			break;
	}
	for (; i < n; i++) {
		uint16_t b;
		memcpy(&b, p + 2 * i, 2);
		if ((b & mask) == mask)
			return i;
	}
	return n;
}

/* The same for F16 or BF16 bits in place (exponent all ones). */
static int finite_narrow_or_error(const char *file, const char *name, const void *p, circ_dtype dt,
				  size_t n, circ_error *e)
{
	uint16_t mask = dt == CIRC_BF16 ? 0x7f80u : 0x7c00u;
	size_t i = first_nonfinite16(p, n, mask);
	uint16_t b;
	if (i == n)
		return 0;
	memcpy(&b, (const char *)p + 2 * i, 2);
	return circ_errorf(e, "'%s': tensor '%s': element %zu is %s", file, name, i,
			   (b & (uint16_t) ~(mask | 0x8000u)) ? "NaN" : "infinite");
}

/* GPT-NeoX's fused (3*H*D, ...) rows, head-major q|k|v chunks of D rows, into
 * q, k, v of (H*D, cols) each. */
static void split_neox(float *q, float *k, float *v, const float *f, int H, int D, size_t cols)
{
	for (int h = 0; h < H; h++)
		for (int j = 0; j < 3; j++) {
			float *dst = (j == 0 ? q : j == 1 ? k : v) + (size_t)h * D * cols;
			memcpy(dst, f + ((size_t)h * 3 + (size_t)j) * D * cols,
			       (size_t)D * cols * sizeof(float));
		}
}

/* A matrix of the checkpoint in F16 or BF16 stays narrow (read where it
 * is used) unless the caller wants owned copies. */
static int keep_narrow(const model_tensor *tab, const circ_st_tensor *t, const circ_model_opts *o)
{
	fam_weights probe;
	fam_layer pl;
	memset(&probe, 0, sizeof probe);
	probe.layers = &pl;
	return t && !o->copy && (t->dtype == CIRC_F16 || t->dtype == CIRC_BF16) &&
	       mat_slot(&probe, tab->role, tab->layer >= 0 ? 0 : -1) != NULL;
}

/* q: table entry t at offset off of the flat order. */
static void fam_param_set(fam_param *q, const model_tensor *t, size_t off)
{
	snprintf(q->name, sizeof q->name, "%s", t->name);
	q->role = (int)t->role;
	q->layer = t->layer;
	q->ndim = t->ndim;
	q->shape[0] = t->shape[0];
	q->shape[1] = t->shape[1];
	q->off = off;
	q->count = numel(t);
}

int model_family_open(circ_model *m, const char *dir, const char *cfg_path,
		      const circ_model_opts *o, circ_error *e)
{
	const circ_config *c = &m->cfg;
	model_tensor *tab = NULL;
	const circ_st_tensor **found = NULL;
	size_t own_n = 0;
	float *p;
	int n, H = c->n_head, D = circ_config_head_dim(c);
	if (c->norm_place != CIRC_NORM_PRE && (!c->no_bias_o || c->parallel_residual))
		return circ_errorf(e,
				   "'%s': an attention output bias (or parallel blocks) with norms "
				   "after the blocks is not supported",
				   cfg_path);
	m->set = circ_st_set_open(dir, e);
	if (!m->set)
		return -1;
	n = model_names_bind(c, m->set, cfg_path, &tab, &found, e);
	if (n < 0)
		return -1;
	for (int k = 0; k < n; k++) {
		int fused = tab[k].role == MODEL_W_QKV_W || tab[k].role == MODEL_W_QKV_B;
		if (found[k] && !keep_narrow(&tab[k], found[k], o) &&
		    (o->copy || found[k]->dtype != CIRC_F32 || !circ_st_aligned(found[k]) || fused))
			own_n += numel(&tab[k]);
	}
	m->fw.layers = circ_xcalloc((size_t)c->n_layer, sizeof *m->fw.layers);
	if (own_n)
		m->own = circ_xmalloc_aligned(own_n * sizeof(float));
	p = m->own;
	for (int k = 0; k < n; k++) {
		const circ_st_tensor *t = found[k];
		const char *file = NULL;
		size_t cnt = numel(&tab[k]);
		int fused = tab[k].role == MODEL_W_QKV_W || tab[k].role == MODEL_W_QKV_B;
		const float *data;
		if (!t)
			continue;
		circ_st_set_find(m->set, t->name, &file);
		if (keep_narrow(&tab[k], t, o)) {
			fam_mat *ms = mat_slot(&m->fw, tab[k].role, tab[k].layer);
			size_t use = cnt;
			if (!o->allow_nonfinite &&
			    finite_narrow_or_error(file ? file : dir, t->name, t->data, t->dtype,
						   cnt, e) < 0)
				goto fail;
			ms->p = t->data;
			ms->dt = t->dtype;
			if (tab[k].role == MODEL_W_EMBED || tab[k].role == MODEL_W_LM_HEAD)
				use = (size_t)FAM_VOCAB_CHUNK * (size_t)c->n_embd;
			if (use > m->fw.narrow_max)
				m->fw.narrow_max = use;
			continue;
		}
		if (o->copy || t->dtype != CIRC_F32 || !circ_st_aligned(t) || fused) {
			circ_st_to_f32(p, t->data, t->dtype, cnt);
			data = p;
			p += cnt;
		} else {
			data = (const float *)t->data;
		}
		if (!o->allow_nonfinite &&
		    finite_or_error(file ? file : dir, t->name, data, cnt, e) < 0)
			goto fail;
		if (fused) {
			/* split in place: a copy of the fused rows, then q | k | v */
			size_t cols = tab[k].role == MODEL_W_QKV_W ? (size_t)c->n_embd : 1;
			size_t part = (size_t)H * D * cols;
			float *tmp = circ_xmalloc(cnt * sizeof(float));
			float *dst = (float *)(uintptr_t)data;
			fam_layer *y = &m->fw.layers[tab[k].layer];
			memcpy(tmp, data, cnt * sizeof(float));
			split_neox(dst, dst + part, dst + 2 * part, tmp, H, D, cols);
			free(tmp);
			if (cols > 1) {
				y->q_w = (fam_mat){dst, CIRC_F32};
				y->k_w = (fam_mat){dst + part, CIRC_F32};
				y->v_w = (fam_mat){dst + 2 * part, CIRC_F32};
			} else {
				y->q_b = dst;
				y->k_b = dst + part;
				y->v_b = dst + 2 * part;
			}
			continue;
		}
		{
			fam_mat *ms;
			const float **vs;
			role_slot(&m->fw, tab[k].role, tab[k].layer, &ms, &vs);
			CIRC_ASSERT(ms != NULL || vs != NULL);
			if (ms)
				*ms = (fam_mat){data, CIRC_F32};
			else
				*vs = data;
		}
	}
	if (!m->fw.lm_head.p)
		m->fw.lm_head = m->fw.embed;
	/* what other modules read of the weights: the embeddings, when f32 */
	if (m->fw.embed.dt == CIRC_F32)
		m->w.wte = (float *)(uintptr_t)m->fw.embed.p;
	if (m->fw.lm_head.dt == CIRC_F32)
		m->w.lm_head = (float *)(uintptr_t)m->fw.lm_head.p;
	m->fp = circ_xcalloc((size_t)n, sizeof *m->fp);
	m->fp_own = o->copy;
	for (int k = 0; k < n; k++) {
		fam_param *q = &m->fp[m->n_fp];
		if (!found[k])
			continue;
		fam_param_set(q, &tab[k], m->w.n_params);
		m->fp_own &= tab[k].role != MODEL_W_QKV_W && tab[k].role != MODEL_W_QKV_B;
		m->w.n_params += q->count;
		m->n_fp++;
	}
	free(tab);
	free(found);
	return 0;
fail:
	free(tab);
	free(found);
	return -1;
}

/* ================================================================ pieces */

static int fam_pre_norm(const circ_config *c)
{
	return c->norm_place != CIRC_NORM_POST;
}

static int fam_post_norm(const circ_config *c)
{
	return c->norm_place != CIRC_NORM_PRE;
}

/* One row's norm: out = norm(x) (kind from c; RMSNorm scale off + w; LayerNorm
 * with bias b). out may be x. Statistics in double. */
static void norm_row(const circ_config *c, int rms, float *out, const float *x, int n,
		     const float *w, const float *b)
{
	double s = 0, mu = 0, eps = c->layer_norm_epsilon;
	if (rms) {
		float off = (float)c->norm_offset;
		for (int i = 0; i < n; i++)
			s += (double)x[i] * x[i];
		float rs = (float)(1.0 / sqrt(s / n + eps));
		for (int i = 0; i < n; i++)
			out[i] = x[i] * rs * (off + w[i]);
		return;
	}
	for (int i = 0; i < n; i++)
		mu += x[i];
	mu /= n;
	for (int i = 0; i < n; i++)
		s += ((double)x[i] - mu) * ((double)x[i] - mu);
	float rs = (float)(1.0 / sqrt(s / n + eps)), m = (float)mu;
	for (int i = 0; i < n; i++)
		out[i] = (x[i] - m) * rs * w[i] + (b ? b[i] : 0.0f);
}

/* 1 / sqrt(var + eps) of a row (var: mean of squares for RMSNorm, about
 * the mean *mu otherwise; *mu 0 for RMSNorm), in double. */
static double row_rstd(const float *x, int n, int rms, double eps, double *mu)
{
	double s = 0, m = 0;
	if (!rms) {
		for (int i = 0; i < n; i++)
			m += x[i];
		m /= n;
	}
	for (int i = 0; i < n; i++)
		s += ((double)x[i] - m) * ((double)x[i] - m);
	*mu = m;
	return 1.0 / sqrt(s / n + eps);
}

/* dx += d norm(x) / dx . dy for one row. */
static void norm_row_bwd(const circ_config *c, int rms, float *dx, const float *dy, const float *x,
			 int n, const float *w)
{
	double mu, a = 0, bsum = 0, rs = row_rstd(x, n, rms, c->layer_norm_epsilon, &mu);
	if (rms) {
		double off = c->norm_offset;
		for (int i = 0; i < n; i++)
			a += (double)dy[i] * (off + w[i]) * x[i];
		a /= n;
		for (int i = 0; i < n; i++)
			dx[i] += (float)(rs * ((double)dy[i] * (off + w[i]) - x[i] * rs * rs * a));
		return;
	}
	for (int i = 0; i < n; i++) {
		double g = (double)dy[i] * w[i], xh = (x[i] - mu) * rs;
		a += g;
		bsum += g * xh;
	}
	a /= n;
	bsum /= n;
	for (int i = 0; i < n; i++) {
		double g = (double)dy[i] * w[i], xh = (x[i] - mu) * rs;
		dx[i] += (float)(rs * (g - a - xh * bsum));
	}
}

/* The block norms: LayerNorm or RMSNorm as the config says. */
typedef struct norm_task {
	const circ_config *c;
	int rms, n; /* row width */
	float *out;
	const float *x, *dy, *w, *b;
	size_t ldo, ldx;
} norm_task;

static void norm_part(void *v, size_t b, size_t e)
{
	norm_task *t = v;
	for (size_t i = b; i < e; i++)
		norm_row(t->c, t->rms, t->out + i * t->ldo, t->x + i * t->ldx, t->n, t->w, t->b);
}

static void norm_bwd_part(void *v, size_t b, size_t e)
{
	norm_task *t = v;
	for (size_t i = b; i < e; i++)
		norm_row_bwd(t->c, t->rms, t->out + i * t->ldo, t->dy + i * t->ldo,
			     t->x + i * t->ldx, t->n, t->w);
}

static void p_norm(const circ_run *r, int rms, float *out, size_t ldo, const float *x, size_t ldx,
		   size_t rows, int n, const float *w, const float *b)
{
	norm_task t = {&r->m->cfg, rms, n, out, x, NULL, w, b, ldo, ldx};
	circ_pool_for(r->pool, rows, norm_part, &t);
}

/* dx (rows, n; ld ldo, as dy) += the norm's backward. */
static void p_norm_bwd(const circ_run *r, int rms, float *dx, const float *dy, size_t ldo,
		       const float *x, size_t ldx, size_t rows, int n, const float *w)
{
	norm_task t = {&r->m->cfg, rms, n, dx, x, dy, w, NULL, ldo, ldx};
	circ_pool_for(r->pool, rows, norm_bwd_part, &t);
}

static int block_rms(const circ_run *r)
{
	return r->m->cfg.norm == CIRC_NORM_RMSNORM;
}

/* ---- the receivers' norm backward with statistics made once ----
 * Every receiver of a stage reads the same input (when none has a delta),
 * so its norm's statistics are made once per stage (p_stats) and each
 * receiver's gradient is one pass over its rows (p_normb): in place over
 * the projection's gradient, and added into the residual's gradient in the
 * same pass. Sums in two 8-wide partial sums, then the lanes in order, so
 * the bits do not depend on the thread count. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif
typedef float v8f __attribute__((vector_size(32)));

static float lanes8(v8f s)
{
	return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* dx = g (set) or dx += g, and acc += g (acc may be NULL), 8 lanes. */
static inline __attribute__((always_inline)) void normb_put(float *dx, float *acc, v8f g, int set)
{
	v8f o;
	if (set) {
		memcpy(dx, &g, 32);
	} else {
		memcpy(&o, dx, 32);
		o += g;
		memcpy(dx, &o, 32);
	}
	if (acc) {
		memcpy(&o, acc, 32);
		o += g;
		memcpy(acc, &o, 32);
	}
}

/* dx = g (set) or dx += g, and acc += g (acc may be NULL), g = d norm(x)/dx
 * . dy for one row with its mean mu (0 for RMSNorm) and 1/sqrt(var + eps)
 * rs; RMSNorm scales by off + w. dx may be dy. */
CLONES static void normb_row(float *dx, float *acc, const float *dy, const float *x, const float *w,
			     float off, float mu, float rs, int rms, int n, int set)
{
	v8f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
	float a, b;
	int j = 0;
	if (rms) {
		for (; j + 16 <= n; j += 16) {
			v8f d0, d1, w0, w1, x0, x1;
			memcpy(&d0, dy + j, 32);
			memcpy(&d1, dy + j + 8, 32);
			memcpy(&w0, w + j, 32);
			memcpy(&w1, w + j + 8, 32);
			memcpy(&x0, x + j, 32);
			memcpy(&x1, x + j + 8, 32);
			a0 += d0 * (off + w0) * x0;
			a1 += d1 * (off + w1) * x1;
		}
		a = lanes8(a0 + a1);
		for (; j < n; j++)
			a += dy[j] * (off + w[j]) * x[j];
		/* g = rs (dy w' - x rs^2 a / n) */
		float k = rs * rs * a / (float)n;
		for (j = 0; j + 8 <= n; j += 8) {
			v8f d, w0, x0, g;
			memcpy(&d, dy + j, 32);
			memcpy(&w0, w + j, 32);
			memcpy(&x0, x + j, 32);
			g = rs * (d * (off + w0) - x0 * k);
			normb_put(dx + j, acc ? acc + j : NULL, g, set);
		}
		for (; j < n; j++) {
			float g = rs * (dy[j] * (off + w[j]) - x[j] * k);
			dx[j] = set ? g : dx[j] + g;
			if (acc)
				acc[j] += g;
		}
		return;
	}
	for (; j + 16 <= n; j += 16) {
		v8f d0, d1, w0, w1, x0, x1;
		memcpy(&d0, dy + j, 32);
		memcpy(&d1, dy + j + 8, 32);
		memcpy(&w0, w + j, 32);
		memcpy(&w1, w + j + 8, 32);
		memcpy(&x0, x + j, 32);
		memcpy(&x1, x + j + 8, 32);
		d0 *= w0;
		d1 *= w1;
		a0 += d0;
		a1 += d1;
		b0 += d0 * ((x0 - mu) * rs);
		b1 += d1 * ((x1 - mu) * rs);
	}
	a = lanes8(a0 + a1);
	b = lanes8(b0 + b1);
	for (; j < n; j++) {
		float g = dy[j] * w[j];
		a += g;
		b += g * ((x[j] - mu) * rs);
	}
	a /= (float)n;
	b /= (float)n;
	for (j = 0; j + 8 <= n; j += 8) {
		v8f d, w0, x0, g;
		memcpy(&d, dy + j, 32);
		memcpy(&w0, w + j, 32);
		memcpy(&x0, x + j, 32);
		g = rs * (d * w0 - a - (x0 - mu) * rs * b);
		normb_put(dx + j, acc ? acc + j : NULL, g, set);
	}
	for (; j < n; j++) {
		float g = rs * (dy[j] * w[j] - a - (x[j] - mu) * rs * b);
		dx[j] = set ? g : dx[j] + g;
		if (acc)
			acc[j] += g;
	}
}

typedef struct normb_task {
	const circ_config *c;
	int rms, n, set;
	float *dx, *acc, *mu, *rs;
	const float *dy, *x, *w;
} normb_task;

static void stats_part(void *v, size_t b, size_t e)
{
	normb_task *t = v;
	for (size_t i = b; i < e; i++) {
		double mu, rs = row_rstd(t->x + i * (size_t)t->n, t->n, t->rms,
					 t->c->layer_norm_epsilon, &mu);
		t->mu[i] = (float)mu;
		t->rs[i] = (float)rs;
	}
}

static void normb_part(void *v, size_t b, size_t e)
{
	normb_task *t = v;
	size_t n = (size_t)t->n;
	for (size_t i = b; i < e; i++)
		normb_row(t->dx + i * n, t->acc ? t->acc + i * n : NULL, t->dy + i * n,
			  t->x + i * n, t->w, (float)t->c->norm_offset, t->mu[i], t->rs[i], t->rms,
			  t->n, t->set);
}

/* The block norm's statistics of x (rows, C) into the run's mean and rstd
 * (the families use them as scratch). */
static void p_stats(const circ_run *r, const float *x, size_t rows)
{
	normb_task t = {&r->m->cfg, block_rms(r), r->C, 0, NULL, NULL,
			r->mean,    r->rstd,	  NULL, x, NULL};
	circ_pool_for(r->pool, rows, stats_part, &t);
}

/* dx (rows, C) = or += the block norm's backward of dy at x with p_stats's
 * statistics; acc += the same (NULL: not). */
static void p_normb(const circ_run *r, float *dx, float *acc, const float *dy, const float *x,
		    size_t rows, const float *w, int set)
{
	normb_task t = {&r->m->cfg, block_rms(r), r->C, set, dx, acc, r->mean, r->rstd, dy, x, w};
	circ_pool_for(r->pool, rows, normb_part, &t);
}

static float act_f(circ_act a, float x)
{
	if (a == CIRC_ACT_SILU)
		return x / (1.0f + expf(-x));
	if (a == CIRC_ACT_GELU)
		return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
	{
		float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
		return 0.5f * x * (1.0f + tanhf(u));
	}
}

static float act_df(circ_act a, float x)
{
	if (a == CIRC_ACT_SILU) {
		float s = 1.0f / (1.0f + expf(-x));
		return s * (1.0f + x * (1.0f - s));
	}
	if (a == CIRC_ACT_GELU)
		return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
		       x * 0.3989422804014327f * expf(-0.5f * x * x);
	{
		float u = 0.7978845608028654f * (x + 0.044715f * x * x * x), th = tanhf(u);
		return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * 0.7978845608028654f *
						(1.0f + 3.0f * 0.044715f * x * x);
	}
}

/* Narrow weights to f32, split over the pool. */
typedef struct conv_task {
	float *out;
	const char *src;
	circ_dtype dt;
} conv_task;

static void conv_part(void *ctx, size_t b, size_t e)
{
	const conv_task *t = ctx;
	circ_st_to_f32(t->out + b, t->src + 2 * b, t->dt, e - b);
}

/* Rows [row0, row0 + nrows) of matrix a (cols wide) in f32: in place, or
 * converted into the run's f_w (valid until the next call). */
static const float *fam_rows(const circ_run *r, const fam_mat *a, size_t row0, size_t nrows,
			     size_t cols)
{
	if (a->dt == CIRC_F32)
		return (const float *)a->p + row0 * cols;
	CIRC_ASSERT(nrows * cols <= r->m->fw.narrow_max);
	{
		conv_task t = {r->f_w, (const char *)a->p + row0 * cols * 2, a->dt};
		circ_pool_for(r->pool, nrows * cols, conv_part, &t);
	}
	return r->f_w;
}

/* c (m, n) = a op(W') + beta c, W' the block of W (ldw columns) from row
 * row0, column col0: (k, n), or with tb (n, k). Narrow weights are
 * multiplied as they are (circ_gemm_w16: converted panel by panel as they
 * are packed) where the CPU allows, else converted into f_w first. */
static void fam_gemm(const circ_run *r, int tb, int m, int n, int k, const float *a, int lda,
		     const fam_mat *W, size_t row0, size_t col0, int ldw, float beta, float *c,
		     int ldc)
{
	size_t off = row0 * (size_t)ldw + col0;
	if (W->dt == CIRC_F32) {
		model_gemm(r, 0, tb, m, n, k, a, lda, (const float *)W->p + off, ldw, beta, c, ldc);
		return;
	}
	if (!r->o.reference && !model_bf16_on(r) && circ_gemm_w16_fast()) {
		model_gemm_w16(r, tb, m, n, k, a, lda, (const uint16_t *)W->p + off, ldw,
			       W->dt == CIRC_BF16, beta, c, ldc);
		return;
	}
	model_gemm(r, 0, tb, m, n, k, a, lda,
		   fam_rows(r, W, row0, (size_t)(tb ? n : k), (size_t)ldw) + col0, ldw, beta, c,
		   ldc);
}

/* y (rows, n) = x (rows, k) W[row0 .. row0 + n)^T + beta y, W (., k) as
 * nn.Linear keeps it; ldx and ldy the row strides. With bf16 compute, W's
 * rows are read from its bf16 twin, found from their own address (a narrow
 * checkpoint's never converted to f32 here). */
static void gemm_rows(const circ_run *r, int rows, int n, int k, const float *x, int ldx,
		      const fam_mat *W, size_t row0, float beta, float *y, int ldy)
{
	if (model_bf16_on(r)) {
		size_t esz = W->dt == CIRC_F32 ? sizeof(float) : 2;
		model_gemm_w(r, rows, n, k, x, ldx, (const char *)W->p + row0 * (size_t)k * esz, k,
			     beta, y, ldy);
		return;
	}
	fam_gemm(r, 1, rows, n, k, x, ldx, W, row0, 0, k, beta, y, ldy);
}

/* y (rows, n) = x (rows, k) W[row0 .. row0 + n)^T (+ bias), W (., k) as
 * nn.Linear keeps it; ldx and ldy the row strides. */
static void linear(const circ_run *r, float *y, int ldy, const float *x, int ldx, size_t rows,
		   int n, int k, const fam_mat *W, size_t row0, const float *bias)
{
	if (bias)
		for (size_t i = 0; i < rows; i++)
			memcpy(y + i * (size_t)ldy, bias, (size_t)n * sizeof(float));
	gemm_rows(r, (int)rows, n, k, x, ldx, W, row0, bias ? 1.0f : 0.0f, y, ldy);
}

/* ---- RoPE ---- */

/* inv_freq of the layer (rd/2 values), as transformers computes them. */
static void rope_freqs(const circ_config *c, int local, double *f)
{
	int rd = circ_config_rotary_dim(c);
	double theta = c->rope_theta;
	circ_rope_scaling sc = c->rope_scaling;
	if (local && c->rope_local_theta > 0) {
		theta = c->rope_local_theta;
		sc = CIRC_ROPE_DEFAULT;
	}
	for (int i = 0; i < rd / 2; i++) {
		double v = 1.0 / pow(theta, (2.0 * i) / rd);
		if (sc == CIRC_ROPE_LINEAR) {
			v /= c->rope_factor;
		} else if (sc == CIRC_ROPE_LLAMA3) {
			double fac = c->rope_factor, lo = c->rope_low_freq_factor,
			       hi = c->rope_high_freq_factor, old = c->rope_original_ctx;
			double wl = 2 * M_PI / v, out = wl > old / lo ? v / fac : v;
			if (wl >= old / hi && wl <= old / lo) {
				double sm = (old / wl - lo) / (hi - lo);
				out = (1 - sm) * out / fac + sm * out;
			}
			v = out;
		}
		f[i] = v;
	}
}

/* x (D) at position t rotated in place (inverse: the transpose, for the
 * backward). */
static void rope_row(float *x, int rd, const double *cs, const double *sn, int inverse)
{
	int hd = rd / 2;
	for (int i = 0; i < hd; i++) {
		float x1 = x[i], x2 = x[i + hd];
		if (inverse) {
			x[i] = (float)(x1 * cs[i] + x2 * sn[i]);
			x[i + hd] = (float)(x2 * cs[i] - x1 * sn[i]);
		} else {
			x[i] = (float)(x1 * cs[i] - x2 * sn[i]);
			x[i + hd] = (float)(x2 * cs[i] + x1 * sn[i]);
		}
	}
}

/* q and k rows (n of them, heads D apart in rows Q wide) rotated, or
 * rotated back (inverse), for layer l: cos and sin of t * inv_freq made
 * once per position (T x rd/2), not per row and head. */
static void rope_rows(const circ_run *r, int l, float *q, float *k, size_t n, size_t Q, int inverse)
{
	const circ_config *c = &r->m->cfg;
	int rd = circ_config_rotary_dim(c), hd = rd / 2, T = r->T;
	double *f = circ_xmalloc(((size_t)hd + 1) * sizeof *f);
	double *cs = circ_xmalloc((size_t)T * (size_t)(hd + 1) * 2 * sizeof *cs), *sn;
	sn = cs + (size_t)T * (size_t)(hd + 1);
	rope_freqs(c, c->local_layer[l], f);
	for (int t = 0; t < T; t++)
		for (int i = 0; i < hd; i++) {
			double a = t * f[i];
			cs[(size_t)t * (size_t)hd + (size_t)i] = cos(a);
			sn[(size_t)t * (size_t)hd + (size_t)i] = sin(a);
		}
	for (size_t i = 0; i < n; i++) {
		size_t t = i % (size_t)T;
		for (int h = 0; h < r->H; h++) {
			rope_row(q + i * Q + (size_t)h * r->D, rd, cs + t * (size_t)hd,
				 sn + t * (size_t)hd, inverse);
			rope_row(k + i * Q + (size_t)h * r->D, rd, cs + t * (size_t)hd,
				 sn + t * (size_t)hd, inverse);
		}
	}
	free(f);
	free(cs);
}

/* ---- buffers of layer l ---- */

static float *lay(const circ_run *r, float *base, int l, size_t width)
{
	return base + model_lslot(r, l) * r->rows * width;
}

static size_t fam_Q(const circ_run *r)
{
	return (size_t)r->H * (size_t)r->D;
}

/* ================================================================ attention */

/* The projection of one receiver kind (0 q, 1 k, 2 v) for head h, from the
 * normed input xn (rows, C), into dst (rows, D; ld Q). With a whole-
 * projection q/k norm the full projection is made (into full) and normed. */
static void proj_head(const circ_run *r, int l, int kind, int h, const float *xn, float *dst,
		      float *full)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), D = (size_t)r->D, Q = fam_Q(r);
	int per = r->H / circ_config_kv_heads(c), g = kind == 0 ? h : h / per;
	int width = kind == 0 ? r->H * r->D : circ_config_kv_heads(c) * r->D;
	const fam_mat *W = kind == 0 ? &y->q_w : kind == 1 ? &y->k_w : &y->v_w;
	const float *bias = kind == 0 ? y->q_b : kind == 1 ? y->k_b : y->v_b;
	if (kind < 2 && c->qk_norm == CIRC_QK_NORM_WHOLE) {
		linear(r, full, width, xn, r->C, n, width, r->C, W, 0, bias);
		p_norm(r, 1, full, (size_t)width, full, (size_t)width, n, width,
		       kind == 0 ? y->qn_w : y->kn_w, NULL);
		for (size_t i = 0; i < n; i++)
			memcpy(dst + i * Q, full + i * (size_t)width + (size_t)g * D,
			       D * sizeof(float));
		return;
	}
	linear(r, dst, (int)Q, xn, r->C, n, r->D, r->C, W, (size_t)g * D,
	       bias ? bias + (size_t)g * D : NULL);
}

/* Receiver of kind (0 q, 1 k, 2 v) of head h of layer l. */
static int head_recv(const circ_run *r, int l, int h, int kind)
{
	return circ_recv_qkv(r->m, l, h, (circ_recv_kind)(CIRC_RECV_Q + kind));
}

typedef struct fattn_task {
	const circ_run *r;
	int l;
	float *att, *z;
	const float *q, *k, *v;
	/* backward */
	const float *dz;
	float *dq, *dk, *dv;
} fattn_task;

static float attn_scale(const circ_config *c, int D)
{
	if (c->query_pre_attn_scalar > 0)
		return (float)(1.0 / sqrt(c->query_pre_attn_scalar));
	return (float)(1.0 / sqrt((double)D));
}

/* Can query i see key j in layer l? */
static int sees(const circ_config *c, int l, int i, int j)
{
	if (j > i)
		return 0;
	if (c->sliding_window > 0 && c->local_layer[l] && i - j >= c->sliding_window)
		return 0;
	return 1;
}

/* Item bh = b * H + h: scores, softcap, mask, softmax, z = att v. */
static void fattn_fwd_part(void *v, size_t b0, size_t e0)
{
	fattn_task *t = v;
	const circ_run *r = t->r;
	const circ_config *c = &r->m->cfg;
	int T = r->T, H = r->H, D = r->D;
	size_t Q = fam_Q(r);
	float sc = attn_scale(c, D), cap = (float)c->attn_softcap;
	for (size_t it = b0; it < e0; it++) {
		int b = (int)(it / (size_t)H), h = (int)(it % (size_t)H);
		float *A = t->att + it * (size_t)T * T;
		for (int i = 0; i < T; i++) {
			const float *qi = t->q + ((size_t)b * T + i) * Q + (size_t)h * D;
			float mx = -INFINITY, sum = 0;
			for (int j = 0; j < T; j++) {
				float s = 0;
				if (!sees(c, t->l, i, j)) {
					A[(size_t)i * T + j] = -INFINITY;
					continue;
				}
				const float *kj = t->k + ((size_t)b * T + j) * Q + (size_t)h * D;
				for (int d = 0; d < D; d++)
					s += qi[d] * kj[d];
				s *= sc;
				if (cap > 0)
					s = cap * tanhf(s / cap);
				A[(size_t)i * T + j] = s;
				mx = s > mx ? s : mx;
			}
			for (int j = 0; j < T; j++) {
				float p =
				    sees(c, t->l, i, j) ? expf(A[(size_t)i * T + j] - mx) : 0.0f;
				A[(size_t)i * T + j] = p;
				sum += p;
			}
			for (int j = 0; j < T; j++)
				A[(size_t)i * T + j] /= sum;
			float *zi = t->z + ((size_t)b * T + i) * Q + (size_t)h * D;
			memset(zi, 0, (size_t)D * sizeof(float));
			for (int j = 0; j <= i; j++) {
				float p = A[(size_t)i * T + j];
				const float *vj = t->v + ((size_t)b * T + j) * Q + (size_t)h * D;
				if (p == 0.0f)
					continue;
				for (int d = 0; d < D; d++)
					zi[d] += p * vj[d];
			}
		}
	}
}

static void fattn_bwd_part(void *v, size_t b0, size_t e0)
{
	fattn_task *t = v;
	const circ_run *r = t->r;
	const circ_config *c = &r->m->cfg;
	int T = r->T, H = r->H, D = r->D;
	size_t Q = fam_Q(r);
	float sc = attn_scale(c, D), cap = (float)c->attn_softcap;
	float *dp = circ_xmalloc((size_t)T * sizeof(float));
	for (size_t it = b0; it < e0; it++) {
		int b = (int)(it / (size_t)H), h = (int)(it % (size_t)H);
		const float *A = t->att + it * (size_t)T * T;
#define ROW(buf, j) ((buf) + ((size_t)b * T + (size_t)(j)) * Q + (size_t)h * D)
		for (int i = 0; i < T; i++) {
			const float *dzi = ROW(t->dz, i), *qi = ROW(t->q, i);
			double dot = 0;
			for (int j = 0; j <= i; j++) {
				float p = A[(size_t)i * T + j], s = 0;
				const float *vj = ROW(t->v, j);
				float *dvj = ROW(t->dv, j);
				for (int d = 0; d < D; d++) {
					s += dzi[d] * vj[d];
					dvj[d] += p * dzi[d];
				}
				dp[j] = s;
				dot += (double)p * s;
			}
			for (int j = 0; j <= i; j++) {
				float p = A[(size_t)i * T + j];
				if (p == 0.0f)
					continue;
				float ds = p * (dp[j] - (float)dot);
				if (cap > 0) {
					/* the capped score, recomputed */
					const float *kj = ROW(t->k, j);
					float s = 0;
					for (int d = 0; d < D; d++)
						s += qi[d] * kj[d];
					float th = tanhf(s * sc / cap);
					ds *= 1.0f - th * th;
				}
				ds *= sc;
				const float *kj = ROW(t->k, j);
				float *dqi = ROW(t->dq, i), *dkj = ROW(t->dk, j);
				for (int d = 0; d < D; d++) {
					dqi[d] += ds * kj[d];
					dkj[d] += ds * qi[d];
				}
			}
		}
#undef ROW
	}
	free(dp);
}

/* q/k norm per head and RoPE: from the projections (q, k of layer l) into
 * the rotated qr, kr. */
static void qk_finish(const circ_run *r, int l, const float *q, const float *k, float *qr,
		      float *kr)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), Q = fam_Q(r);
	int rd = circ_config_rotary_dim(c);
	memcpy(qr, q, n * Q * sizeof(float));
	memcpy(kr, k, n * Q * sizeof(float));
	if (c->qk_norm == CIRC_QK_NORM_HEAD) {
		p_norm(r, 1, qr, (size_t)r->D, qr, (size_t)r->D, n * (size_t)r->H, r->D, y->qn_w,
		       NULL);
		p_norm(r, 1, kr, (size_t)r->D, kr, (size_t)r->D, n * (size_t)r->H, r->D, y->kn_w,
		       NULL);
	}
	if (c->pos != CIRC_POS_ROTARY || rd == 0)
		return;
	rope_rows(r, l, qr, kr, n, Q, 0);
}

/* Layer l's attention, reading residual x; writes the heads' node outputs
 * and adds their sum (and o_proj's bias) to out (which starts as x). */
static void fam_attn(circ_run *r, int l, const float *x, float *out)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), C = (size_t)r->C, D = (size_t)r->D, Q = fam_Q(r);
	float *q = lay(r, r->fq, l, Q), *k = lay(r, r->fk, l, Q), *v = lay(r, r->fv, l, Q);
	float *qr = lay(r, r->fqr, l, Q), *kr = lay(r, r->fkr, l, Q), *z = lay(r, r->fz, l, Q);
	float *att = model_att(r, l);
	int per = r->H / circ_config_kv_heads(c), shared[3] = {0, 0, 0};
	r->att_layer = l;
	for (int h = 0; h < r->H; h++)
		for (int kind = 0; kind < 3; kind++)
			shared[kind] |= !r->delta_on[head_recv(r, l, h, kind)];
	/* receivers without a delta share one normed input and one projection
	 * of each kind (q in place; k and v through f_s2, then each query
	 * head's copy of its group's) */
	if (shared[0] || shared[1] || shared[2]) {
		if (fam_pre_norm(c))
			p_norm(r, block_rms(r), r->s_ln, C, x, C, n, r->C, y->n1_w, y->n1_b);
		else
			memcpy(r->s_ln, x, n * C * sizeof(float));
		for (int kind = 0; kind < 3; kind++) {
			int width = kind == 0 ? (int)Q : circ_config_kv_heads(c) * r->D;
			float *dst = kind == 0 ? q : r->f_s2, *buf = kind == 1 ? k : v;
			if (!shared[kind])
				continue;
			linear(r, dst, width, r->s_ln, r->C, n, width, r->C,
			       kind == 0   ? &y->q_w
			       : kind == 1 ? &y->k_w
					   : &y->v_w,
			       0,
			       kind == 0   ? y->q_b
			       : kind == 1 ? y->k_b
					   : y->v_b);
			if (kind < 2 && c->qk_norm == CIRC_QK_NORM_WHOLE)
				p_norm(r, 1, dst, (size_t)width, dst, (size_t)width, n, width,
				       kind == 0 ? y->qn_w : y->kn_w, NULL);
			if (kind == 0)
				continue;
			for (int h = 0; h < r->H; h++) {
				if (r->delta_on[head_recv(r, l, h, kind)])
					continue;
				for (size_t i = 0; i < n; i++)
					memcpy(buf + i * Q + (size_t)h * D,
					       dst + i * (size_t)width + (size_t)(h / per) * D,
					       D * sizeof(float));
			}
		}
	}
	for (int h = 0; h < r->H; h++)
		for (int kind = 0; kind < 3; kind++) {
			int recv = head_recv(r, l, h, kind);
			const float *xin;
			if (!r->delta_on[recv])
				continue;
			xin = model_recv_input(r, recv, x, r->s_ln2);
			if (fam_pre_norm(c))
				p_norm(r, block_rms(r), r->f_s1, C, xin, C, n, r->C, y->n1_w,
				       y->n1_b);
			else
				memcpy(r->f_s1, xin, n * C * sizeof(float));
			proj_head(r, l, kind, h, r->f_s1,
				  (kind == 0   ? q
				   : kind == 1 ? k
					       : v) +
				      h * D,
				  r->f_s2);
		}
	qk_finish(r, l, q, k, qr, kr);
	{
		fattn_task t = {r, l, att, z, qr, kr, v, NULL, NULL, NULL, NULL};
		circ_pool_for(r->pool, (size_t)r->B * (size_t)r->H, fattn_fwd_part, &t);
	}
	/* the heads' outputs; with a post norm, each scaled by the norm of
	 * their sum */
	{
		float *A = fam_post_norm(c) ? lay(r, r->fA, l, C) : NULL;
		if (A)
			memset(A, 0, n * C * sizeof(float));
		if (!A && !r->node[circ_node_head(r->m, l, 0)]) {
			/* no head's output kept: their sum in one product */
			fam_gemm(r, 1, (int)n, r->C, (int)Q, z, (int)Q, &y->o_w, 0, 0, (int)Q, 1.0f,
				 out, r->C);
		} else {
			for (int h = 0; h < r->H; h++) {
				float *o = r->node[circ_node_head(r->m, l, h)];
				if (!o)
					o = r->s_ln2;
				fam_gemm(r, 1, (int)n, r->C, r->D, z + h * D, (int)Q, &y->o_w, 0,
					 h * D, (int)Q, 0.0f, o, r->C);
				if (A)
					circ_vadd(A, o, n * C);
				else
					circ_vadd(out, o, n * C);
			}
		}
		if (y->o_b)
			for (size_t i = 0; i < n; i++)
				circ_vadd(out + i * C, y->o_b, C);
		if (A) {
			/* scale_i = rsqrt(mean(A_i^2) + eps) (off + w): node_h *= scale */
			double eps = c->layer_norm_epsilon;
			for (size_t i = 0; i < n; i++) {
				double s = 0;
				for (size_t j = 0; j < C; j++)
					s += (double)A[i * C + j] * A[i * C + j];
				float rs = (float)(1.0 / sqrt(s / (double)C + eps));
				for (int h = 0; h < r->H && !r->m->raw_heads; h++) {
					float *o = r->node[circ_node_head(r->m, l, h)];
					if (!o)
						continue;
					for (size_t j = 0; j < C; j++)
						o[i * C + j] *=
						    rs * ((float)c->norm_offset + y->pa_w[j]);
				}
				for (size_t j = 0; j < C; j++)
					out[i * C + j] += A[i * C + j] * rs *
							  ((float)c->norm_offset + y->pa_w[j]);
			}
		}
	}
}

/* Raw head nodes (circ_model_opts.raw_heads): the norm after layer l's
 * attention, N(x) = x rsqrt(mean(x^2) + eps) (off + w), row by row, as the
 * forward computes it; and its Jacobian at a applied to v, J v = (off + w)
 * (rs v - a rs^3 mean(a v)). Statistics in double. */
void circ_model_post_attn_norm(const circ_model *m, int l, float *out, const float *x, size_t rows)
{
	const circ_config *c = &m->cfg;
	const float *w = m->fw.layers[l].pa_w;
	size_t C = (size_t)c->n_embd;
	CIRC_ASSERT(model_is_family(m) && c->norm_place != CIRC_NORM_PRE);
	for (size_t i = 0; i < rows; i++) {
		double s = 0;
		for (size_t j = 0; j < C; j++)
			s += (double)x[i * C + j] * x[i * C + j];
		float rs = (float)(1.0 / sqrt(s / (double)C + c->layer_norm_epsilon));
		for (size_t j = 0; j < C; j++)
			out[i * C + j] = x[i * C + j] * rs * ((float)c->norm_offset + w[j]);
	}
}

void circ_model_post_attn_jvp(const circ_model *m, int l, float *out, const float *a,
			      const float *v, size_t rows)
{
	const circ_config *c = &m->cfg;
	const float *w = m->fw.layers[l].pa_w;
	size_t C = (size_t)c->n_embd;
	CIRC_ASSERT(model_is_family(m) && c->norm_place != CIRC_NORM_PRE);
	for (size_t i = 0; i < rows; i++) {
		double s = 0, av = 0;
		for (size_t j = 0; j < C; j++) {
			s += (double)a[i * C + j] * a[i * C + j];
			av += (double)a[i * C + j] * v[i * C + j];
		}
		double rs = 1.0 / sqrt(s / (double)C + c->layer_norm_epsilon),
		       k = rs * rs * rs * av / (double)C;
		for (size_t j = 0; j < C; j++)
			out[i * C + j] = (float)((rs * v[i * C + j] - k * a[i * C + j]) *
						 (c->norm_offset + w[j]));
	}
}

/* The MLP's activation over the pool, element by element (the same bits
 * for any split): forward out = act(fa) (* fb where gated); backward, from
 * out = d (the gradient of the product): db = d act(fa) where gated, and
 * out = d (fb) act'(fa). */
typedef struct act_task {
	circ_act act;
	int gated;
	float *out, *db;
	const float *fa, *fb;
} act_task;

/* f = act(fa), and df = act'(fa) where df is given, for fa[0 .. len),
 * len <= ACT_CHUNK. SiLU's e^-x by circ_vexp (relative error below 2e-7;
 * libm's expf one element at a time was 3% of a 1B EAP). */
#define ACT_CHUNK 256
static void act_chunk(circ_act act, const float *fa, size_t len, float *f, float *df)
{
	if (act != CIRC_ACT_SILU) {
		for (size_t j = 0; j < len; j++) {
			f[j] = act_f(act, fa[j]);
			if (df)
				df[j] = act_df(act, fa[j]);
		}
		return;
	}
	for (size_t j = 0; j < len; j++)
		f[j] = -fa[j];
	circ_vexp(f, f, len);
	for (size_t j = 0; j < len; j++) {
		float e = f[j], s = 1.0f / (1.0f + e);
		f[j] = fa[j] / (1.0f + e);
		if (df)
			df[j] = s * (1.0f + fa[j] * (1.0f - s));
	}
}

static void act_fwd_part(void *v, size_t b, size_t e)
{
	const act_task *t = v;
	float f[ACT_CHUNK];
	for (size_t i0 = b; i0 < e; i0 += ACT_CHUNK) {
		size_t len = e - i0 < ACT_CHUNK ? e - i0 : ACT_CHUNK;
		act_chunk(t->act, t->fa + i0, len, f, NULL);
		for (size_t j = 0; j < len; j++)
			t->out[i0 + j] = f[j] * (t->gated ? t->fb[i0 + j] : 1.0f);
	}
}

static void act_bwd_part(void *v, size_t b, size_t e)
{
	const act_task *t = v;
	float f[ACT_CHUNK], df[ACT_CHUNK];
	for (size_t i0 = b; i0 < e; i0 += ACT_CHUNK) {
		size_t len = e - i0 < ACT_CHUNK ? e - i0 : ACT_CHUNK;
		act_chunk(t->act, t->fa + i0, len, f, df);
		for (size_t j = 0; j < len; j++) {
			size_t i = i0 + j;
			float d = t->out[i];
			if (t->gated) {
				t->db[i] = d * f[j];
				t->out[i] = d * t->fb[i] * df[j];
			} else {
				t->out[i] = d * df[j];
			}
		}
	}
}

/* Layer l's MLP reading residual x; its node output; adds it to out. */
static void fam_mlp(circ_run *r, int l, const float *x, float *out)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), C = (size_t)r->C, F = (size_t)r->F;
	int recv = circ_recv_mlp(r->m, l);
	const float *xin = model_recv_input(r, recv, x, r->s_ln2);
	float *fa = lay(r, r->fa, l, F), *fb = lay(r, r->fb, l, F);
	float *o = r->node[circ_node_mlp(r->m, l)];
	if (fam_pre_norm(c))
		p_norm(r, block_rms(r), r->s_ln, C, xin, C, n, r->C, y->n2_w, y->n2_b);
	else
		memcpy(r->s_ln, xin, n * C * sizeof(float));
	linear(r, fa, r->F, r->s_ln, r->C, n, r->F, r->C, &y->fc_w, 0, y->fc_b);
	if (c->mlp == CIRC_MLP_GATED)
		linear(r, fb, r->F, r->s_ln, r->C, n, r->F, r->C, &y->up_w, 0, y->up_b);
	{
		act_task t = {c->act, c->mlp == CIRC_MLP_GATED, r->s_gelu, NULL, fa, fb};
		circ_pool_for(r->pool, n * F, act_fwd_part, &t);
	}
	if (fam_post_norm(c)) {
		float *M = lay(r, r->fM, l, C);
		linear(r, M, r->C, r->s_gelu, r->F, n, r->C, r->F, &y->dn_w, 0, y->dn_b);
		p_norm(r, 1, o, C, M, C, n, r->C, y->pm_w, NULL);
	} else {
		linear(r, o, r->C, r->s_gelu, r->F, n, r->C, r->F, &y->dn_w, 0, y->dn_b);
	}
	circ_vadd(out, o, n * C);
}

static void fam_embed(circ_run *r, const circ_fwd *f)
{
	const circ_config *c = &r->m->cfg;
	size_t C = (size_t)r->C;
	float *in = r->node[0], *x = resid_at(r, 0);
	float sc = c->embed_scale > 0 ? (float)c->embed_scale : 1.0f;
	for (size_t row = 0; row < bt(r); row++) {
		if (f->input_embed) {
			memcpy(in + row * C, f->input_embed + row * C, C * sizeof(float));
		} else {
			const float *e = fam_rows(r, &r->m->fw.embed, (size_t)r->tokens[row], 1, C);
			for (size_t j = 0; j < C; j++)
				in[row * C + j] = e[j] * sc;
		}
	}
	memcpy(x, in, bt(r) * C * sizeof(float));
}

/* The final norm at the read rows and the unembedding (soft-capped). */
static void fam_final(circ_run *r, const float *x)
{
	const circ_config *c = &r->m->cfg;
	size_t C = (size_t)r->C, N = (size_t)r->n_read, V = (size_t)r->V;
	if (r->read_none)
		return;
	model_final_inputs(r, x, r->s_ln);
	p_norm(r, block_rms(r), r->lnf, C, r->s_ln, C, N, r->C, r->m->fw.final_w, r->m->fw.final_b);
	{
		const fam_mat *lm = &r->m->fw.lm_head;
		size_t chunk = lm->dt == CIRC_F32 || model_bf16_on(r) ? V : FAM_VOCAB_CHUNK;
		for (size_t j0 = 0; j0 < V; j0 += chunk) {
			size_t nj = V - j0 < chunk ? V - j0 : chunk;
			gemm_rows(r, (int)N, (int)nj, r->C, r->lnf, r->C, lm, j0, 0.0f,
				  r->logits + j0, r->V);
		}
	}
	if (c->final_softcap > 0) {
		float cap = (float)c->final_softcap;
		for (size_t i = 0; i < N * V; i++)
			r->logits[i] = cap * tanhf(r->logits[i] / cap);
	}
}

void model_family_embed(circ_run *r, const circ_fwd *f)
{
	fam_embed(r, f);
}

void model_family_stage(circ_run *r, int s)
{
	const circ_topology *t = r->m->topo;
	const circ_topo_stage *st = &t->stage[s];
	const float *x = resid_at(r, s);
	float *out = resid_at(r, s + 1);
	size_t nC = bt(r) * (size_t)r->C;
	switch (st->kind) {
	case CIRC_STAGE_FINAL: fam_final(r, x); return;
	case CIRC_STAGE_ATTN:
		memcpy(out, x, nC * sizeof(float));
		fam_attn(r, st->layer, x, out);
		return;
	case CIRC_STAGE_MLP:
		memcpy(out, x, nC * sizeof(float));
		fam_mlp(r, st->layer, x, out);
		return;
	case CIRC_STAGE_BLOCK:
		memcpy(out, x, nC * sizeof(float));
		fam_attn(r, st->layer, x, out);
		fam_mlp(r, st->layer, x, out);
		return;
	}
}

/* ================================================================ backward */

/* ---- parameter gradients (circ_bwd.dparams) ----
 * Bound like the weights (role_slot over the flat order), written through
 * wr(). Each is a sum over rows in a fixed order (the GEMMs split only
 * over output blocks), so the same threads give the same bytes. */

static float *wr(const void *p)
{
	return (float *)(uintptr_t)p;
}

/* dW (out, in) += dy^T x: dy (rows, out; ld ldy), x (rows, in; ld ldx). */
static void grad_w(const circ_run *r, const void *dW, int out, int in, const float *dy, int ldy,
		   const float *x, int ldx, size_t rows)
{
	if (dW)
		model_gemm(r, 1, 0, out, in, (int)rows, dy, ldy, x, ldx, 1.0f, wr(dW), in);
}

/* db (n) += the column sums of dy (rows, n; ld ldy), in double. */
static void grad_b(const float *db, const float *dy, size_t ldy, size_t rows, int n)
{
	if (!db)
		return;
	for (int j = 0; j < n; j++) {
		double s = 0;
		for (size_t i = 0; i < rows; i++)
			s += dy[i * ldy + (size_t)j];
		wr(db)[j] += (float)s;
	}
}

/* A norm's parameters: dw += sum_rows dy . xhat (xhat: the input
 * normalised, before scale and bias), db += sum_rows dy (LayerNorm); dy the
 * gradient at the norm's output. The scale's offset (Gemma) does not
 * change d out / d w. */
static void grad_norm(const circ_run *r, int rms, const float *dw, const float *db, const float *dy,
		      size_t ldy, const float *x, size_t ldx, size_t rows, int n)
{
	double *acc = circ_xcalloc((size_t)n, sizeof *acc), eps = r->m->cfg.layer_norm_epsilon;
	for (size_t i = 0; i < rows; i++) {
		const float *xi = x + i * ldx, *gi = dy + i * ldy;
		double mu, rs = row_rstd(xi, n, rms, eps, &mu);
		for (int j = 0; j < n; j++)
			acc[j] += (double)gi[j] * (((double)xi[j] - mu) * rs);
	}
	for (int j = 0; j < n; j++)
		wr(dw)[j] += (float)acc[j];
	free(acc);
	if (!rms)
		grad_b(db, dy, ldy, rows, n);
}

/* What dparams needs: a family whose parameter gradients are implemented,
 * f32 weights, no out_hook, and a buffer of the model's size (the caller's
 * promise: it is (n_params) floats). */
static int grads_check(const circ_run *r, const circ_bwd *b, circ_error *e)
{
	const circ_config *c = &r->m->cfg;
	const char *why = NULL;
	if (c->norm_place != CIRC_NORM_PRE)
		why = "norms after the blocks";
	else if (c->qk_norm != CIRC_QK_NORM_NONE)
		why = "q/k norms";
	else if (c->model_type == CIRC_MODEL_GPT_NEOX)
		why = "a fused query_key_value";
	else if (r->m->fw.narrow_max)
		why = "F16/BF16 weights (open the model with copy, or use F32)";
	else if (b->out_hook)
		why = "per-node output gradients (out_hook)";
	if (why)
		return circ_errorf(e,
				   "parameter gradients of model_type '%s' are not implemented "
				   "with %s (circ trains gpt2 and pre-norm families without q/k "
				   "norms: llama, mistral, qwen2, gemma)",
				   circ_model_type_name(c->model_type), why);
	return 0;
}

/* gw: dparams bound to the model's roles (lm_head == embed when tied). */
static void grads_bind(const circ_model *m, float *dp, fam_weights *gw)
{
	memset(gw, 0, sizeof *gw);
	gw->layers = circ_xcalloc((size_t)m->cfg.n_layer, sizeof *gw->layers);
	for (int i = 0; i < m->n_fp; i++) {
		const fam_param *q = &m->fp[i];
		fam_mat *ms;
		const float **vs;
		role_slot(gw, (model_role)q->role, q->layer, &ms, &vs);
		if (ms)
			*ms = (fam_mat){dp + q->off, CIRC_F32};
		else if (vs)
			*vs = dp + q->off;
	}
	if (!gw->lm_head.p)
		gw->lm_head = gw->embed;
}

/* The embedding's gradient from the residual gradient at stage 0. */
static void grads_embed(const circ_run *r)
{
	size_t C = (size_t)r->C, n = bt(r);
	float sc = r->m->cfg.embed_scale > 0 ? (float)r->m->cfg.embed_scale : 1.0f;
	const float *g = r->dresid;
	if (r->used_embed)
		return;
	for (size_t i = 0; i < n; i++) {
		float *d = wr(r->gw->embed.p) + (size_t)r->tokens[i] * C;
		for (size_t j = 0; j < C; j++)
			d[j] += sc * g[i * C + j];
	}
}

static float *dres(const circ_run *r, int s)
{
	return r->dresid + (size_t)s * r->rows * r->C;
}

/* The unembedding as model_unembed_bwd's row source (narrow rows
 * converted). */
typedef struct lm_src {
	const circ_run *r;
	const fam_mat *lm;
	size_t C;
} lm_src;
static const float *lm_rows(void *ctx, size_t j0, size_t nj)
{
	const lm_src *s = ctx;
	return fam_rows(s->r, s->lm, j0, nj, s->C);
}

/* Backward of the final stage: dresid[s] from dlogits at the read rows. */
static void fam_final_bwd(circ_run *r, int s, const float *dlogits)
{
	const circ_config *c = &r->m->cfg;
	size_t C = (size_t)r->C, N = (size_t)r->n_read, V = (size_t)r->V, n = bt(r);
	float *g = dres(r, s), *dl = r->f_dlog;
	const float *x = resid_at(r, s);
	memset(g, 0, n * C * sizeof(float));
	memcpy(dl, dlogits, N * V * sizeof(float));
	if (c->final_softcap > 0) {
		float cap = (float)c->final_softcap;
		for (size_t i = 0; i < N * V; i++) {
			float th = r->logits[i] / cap;
			dl[i] *= 1.0f - th * th;
		}
	}
	{
		const fam_mat *lm = &r->m->fw.lm_head;
		lm_src src = {r, lm, C};
		model_unembed_bwd(r, dl, N, V, C, lm_rows, &src,
				  lm->dt == CIRC_F32 ? V : FAM_VOCAB_CHUNK, r->d_ln);
	}
	/* the final norm's inputs at the read rows, rebuilt */
	model_final_inputs(r, x, r->s_ln);
	if (r->gw) {
		const fam_weights *w = &r->m->fw;
		p_norm(r, block_rms(r), r->f_s1, C, r->s_ln, C, N, r->C, w->final_w, w->final_b);
		grad_w(r, r->gw->lm_head.p, r->V, r->C, dl, r->V, r->f_s1, r->C, N);
		grad_norm(r, block_rms(r), r->gw->final_w, r->gw->final_b, r->d_ln, C, r->s_ln, C,
			  N, r->C);
	}
	memset(r->s_ln2, 0, N * C * sizeof(float));
	p_norm_bwd(r, block_rms(r), r->s_ln2, r->d_ln, C, r->s_ln, C, N, r->C, r->m->fw.final_w);
	for (size_t i = 0; i < N; i++) {
		size_t row = (size_t)r->reads[i].b * r->T + (size_t)r->reads[i].t;
		circ_vadd(g + row * C, r->s_ln2 + i * C, C);
	}
}

/* The MLP's backward: from g (the gradient of its output, as added to the
 * residual) to its receiver's gradient (set, in rg) and added into gx. */
static void fam_mlp_bwd(circ_run *r, int l, const float *x, const float *g, float *gx, float *rg)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), C = (size_t)r->C, F = (size_t)r->F;
	int recv = circ_recv_mlp(r->m, l), gated = c->mlp == CIRC_MLP_GATED;
	const float *fa = lay(r, r->fa, l, F), *fb = lay(r, r->fb, l, F), *dout = g;
	const float *xin = model_recv_input(r, recv, x, r->s_ln2);
	if (fam_post_norm(c)) {
		memset(r->f_dA, 0, n * C * sizeof(float));
		p_norm_bwd(r, 1, r->f_dA, g, C, lay(r, r->fM, l, C), C, n, r->C, y->pm_w);
		dout = r->f_dA;
	}
	if (r->gw) { /* down: the activations (rebuilt in f_db, as the forward made them) */
		act_task t = {c->act, gated, r->f_db, NULL, fa, fb};
		circ_pool_for(r->pool, n * F, act_fwd_part, &t);
		grad_w(r, r->gw->layers[l].dn_w.p, r->C, r->F, dout, r->C, r->f_db, r->F, n);
		grad_b(r->gw->layers[l].dn_b, dout, C, n, r->C);
	}
	/* d(act product) = dout Wdn (Wdn: (C, F)) */
	fam_gemm(r, 0, (int)n, r->F, r->C, dout, r->C, &y->dn_w, 0, 0, r->F, 0.0f, r->f_da, r->F);
	{
		act_task t = {c->act, gated, r->f_da, r->f_db, fa, fb};
		circ_pool_for(r->pool, n * F, act_bwd_part, &t);
	}
	fam_gemm(r, 0, (int)n, r->C, r->F, r->f_da, r->F, &y->fc_w, 0, 0, r->C, 0.0f, r->d_ln,
		 r->C);
	if (gated)
		fam_gemm(r, 0, (int)n, r->C, r->F, r->f_db, r->F, &y->up_w, 0, 0, r->C, 1.0f,
			 r->d_ln, r->C);
	if (r->gw) { /* gate (fc) and up against the normed input */
		fam_layer *gl = &r->gw->layers[l];
		p_norm(r, block_rms(r), r->f_s1, C, xin, C, n, r->C, y->n2_w, y->n2_b);
		grad_w(r, gl->fc_w.p, r->F, r->C, r->f_da, r->F, r->f_s1, r->C, n);
		grad_b(gl->fc_b, r->f_da, F, n, r->F);
		if (gated) {
			grad_w(r, gl->up_w.p, r->F, r->C, r->f_db, r->F, r->f_s1, r->C, n);
			grad_b(gl->up_b, r->f_db, F, n, r->F);
		}
		grad_norm(r, block_rms(r), gl->n2_w, gl->n2_b, r->d_ln, C, xin, C, n, r->C);
	}
	if (fam_pre_norm(c)) {
		p_stats(r, xin, n);
		p_normb(r, rg, gx, r->d_ln, xin, n, y->n2_w, 1);
	} else {
		memcpy(rg, r->d_ln, n * C * sizeof(float));
		circ_vadd(gx, rg, n * C);
	}
}

/* One receiver's gradient from the gradient dproj (rows, D; ld Q) of its
 * head's slice of kind's projection: added into rg. */
static void recv_bwd(circ_run *r, int l, int kind, int h, const float *xin, const float *dproj,
		     float *rg)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), C = (size_t)r->C, D = (size_t)r->D, Q = fam_Q(r);
	int K = circ_config_kv_heads(c), per = r->H / K, g = kind == 0 ? h : h / per;
	int width = kind == 0 ? r->H * r->D : K * r->D;
	const fam_mat *W = kind == 0 ? &y->q_w : kind == 1 ? &y->k_w : &y->v_w;
	const float *bias = kind == 0 ? y->q_b : kind == 1 ? y->k_b : y->v_b;
	float *xn = r->f_s1;
	if (fam_pre_norm(c))
		p_norm(r, block_rms(r), xn, C, xin, C, n, r->C, y->n1_w, y->n1_b);
	else
		memcpy(xn, xin, n * C * sizeof(float));
	if (kind < 2 && c->qk_norm == CIRC_QK_NORM_WHOLE) {
		/* the whole projection of this input, its norm's backward with the
		 * gradient in the head's slice only */
		float *full = r->f_s2, *dfull = r->f_dfull;
		linear(r, full, width, xn, r->C, n, width, r->C, W, 0, bias);
		memset(r->f_dz2, 0, n * (size_t)width * sizeof(float));
		for (size_t i = 0; i < n; i++)
			memcpy(r->f_dz2 + i * (size_t)width + (size_t)g * D, dproj + i * Q,
			       D * sizeof(float));
		memset(dfull, 0, n * (size_t)width * sizeof(float));
		p_norm_bwd(r, 1, dfull, r->f_dz2, (size_t)width, full, (size_t)width, n, width,
			   kind == 0 ? y->qn_w : y->kn_w);
		fam_gemm(r, 0, (int)n, r->C, width, dfull, width, W, 0, 0, r->C, 0.0f, r->d_ln,
			 r->C);
	} else {
		fam_gemm(r, 0, (int)n, r->C, r->D, dproj, (int)Q, W, (size_t)g * D, 0, r->C, 0.0f,
			 r->d_ln, r->C);
	}
	if (r->gw) { /* the rows of h's group against this receiver's normed input */
		fam_layer *gl = &r->gw->layers[l];
		const fam_mat *gW = kind == 0 ? &gl->q_w : kind == 1 ? &gl->k_w : &gl->v_w;
		const float *gb = kind == 0 ? gl->q_b : kind == 1 ? gl->k_b : gl->v_b;
		grad_w(r, (const float *)gW->p + (size_t)g * D * C, r->D, r->C, dproj, (int)Q, xn,
		       r->C, n);
		grad_b(gb ? gb + (size_t)g * D : NULL, dproj, Q, n, r->D);
		grad_norm(r, block_rms(r), gl->n1_w, gl->n1_b, r->d_ln, C, xin, C, n, r->C);
	}
	if (fam_pre_norm(c))
		p_norm_bwd(r, block_rms(r), rg, r->d_ln, C, xin, C, n, r->C, y->n1_w);
	else
		circ_vadd(rg, r->d_ln, n * C);
}

/* dz (n, Q) of layer l's heads when some have their own output gradient
 * (ng[h]; NULL: g, the residual gradient after the stage): head h's columns
 * dO_h Wo_h, dO_h the gradient of the loss at its raw output o_h = z_h
 * Wo_h^T. Without a post norm dO_h is its output gradient. With one (Gemma
 * 2 and 3, OLMo 2), head h's node output is o_h * rs(A) w' (A = sum_k o_k,
 * rs(A) = rsqrt(mean(A^2) + eps), w' = off + w, row by row), every head's
 * output depending on every o_k through rs(A), so that
 *   dO_k = rs w' . G_k - A (rs^3 / C) sum_h <G_h . w', o_h>
 * (G_h head h's output gradient): its own path through the scale plus the
 * scale's share. With every G_h = g this is the norm's backward of g. */
static void attn_dz_own(circ_run *r, int l, const float *g, const float *const *ng)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), C = (size_t)r->C, D = (size_t)r->D, Q = fam_Q(r);
	const float *wo = fam_rows(r, &y->o_w, 0, C, Q), *z = lay(r, r->fz, l, Q);
	const float *A = lay(r, r->fA, l, C);
	double *rs, *coef;
	if (!fam_post_norm(c)) {
		for (int h = 0; h < r->H; h++)
			model_gemm(r, 0, 0, (int)n, r->D, r->C, ng[h] ? ng[h] : g, r->C,
				   wo + (size_t)h * D, (int)Q, 0.0f, r->f_dz + (size_t)h * D,
				   (int)Q);
		return;
	}
	rs = circ_xcalloc(n, sizeof *rs);
	coef = circ_xcalloc(n, sizeof *coef);
	for (size_t i = 0; i < n; i++) {
		double s = 0;
		for (size_t j = 0; j < C; j++)
			s += (double)A[i * C + j] * A[i * C + j];
		rs[i] = 1.0 / sqrt(s / (double)C + c->layer_norm_epsilon);
	}
	/* coef_i = rs^3 / C sum_h <G_h . w', o_h>, o_h rebuilt in s_ln */
	for (int h = 0; h < r->H; h++) {
		const float *G = ng[h] ? ng[h] : g;
		model_gemm(r, 0, 1, (int)n, r->C, r->D, z + (size_t)h * D, (int)Q,
			   wo + (size_t)h * D, (int)Q, 0.0f, r->s_ln, r->C);
		for (size_t i = 0; i < n; i++) {
			double d = 0;
			for (size_t j = 0; j < C; j++)
				d += (double)G[i * C + j] * (c->norm_offset + y->pa_w[j]) *
				     r->s_ln[i * C + j];
			coef[i] += d;
		}
	}
	for (size_t i = 0; i < n; i++)
		coef[i] *= rs[i] * rs[i] * rs[i] / (double)C;
	for (int h = 0; h < r->H; h++) {
		const float *G = ng[h] ? ng[h] : g;
		for (size_t i = 0; i < n; i++)
			for (size_t j = 0; j < C; j++)
				r->f_dA[i * C + j] =
				    (float)(rs[i] * (c->norm_offset + y->pa_w[j]) * G[i * C + j] -
					    A[i * C + j] * coef[i]);
		model_gemm(r, 0, 0, (int)n, r->D, r->C, r->f_dA, r->C, wo + (size_t)h * D, (int)Q,
			   0.0f, r->f_dz + (size_t)h * D, (int)Q);
	}
	free(rs);
	free(coef);
}

/* The attention's backward: from g (gradient of the residual after it) or
 * the heads' own output gradients (ng, NULL or (H) with NULL for g) to its
 * receivers' gradients and gx. */
/* Layer l's q, k and v receivers' gradients from f_dq, f_dk, f_dv when all
 * read the residual x itself (no delta), without parameter gradients or a
 * whole-projection q/k norm: each kind's weights made f32 once, each head's
 * slice of the projection's gradient multiplied into its receiver's buffer
 * (heads sharing a receiver add), then the norm's backward in place, added
 * to gx in the same pass. Returns 0 (nothing done) otherwise. */
static int attn_recv_shared(circ_run *r, int l, const float *x, float *gx)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), C = (size_t)r->C, D = (size_t)r->D, Q = fam_Q(r);
	int K = circ_config_kv_heads(c), per = r->H / K, pre = fam_pre_norm(c);
	if (r->gw || c->qk_norm == CIRC_QK_NORM_WHOLE)
		return 0;
	for (int h = 0; h < r->H; h++)
		for (int kind = 0; kind < 3; kind++)
			if (r->delta_on[head_recv(r, l, h, kind)])
				return 0;
	if (pre)
		p_stats(r, x, n);
	for (int kind = 0; kind < 3; kind++) {
		const fam_mat *W = kind == 0 ? &y->q_w : kind == 1 ? &y->k_w : &y->v_w;
		const float *dp = kind == 0 ? r->f_dq : kind == 1 ? r->f_dk : r->f_dv;
		for (int h = 0; h < r->H; h++) {
			int recv = head_recv(r, l, h, kind), g = kind == 0 ? h : h / per, first = 1;
			for (int h2 = 0; h2 < h && first; h2++)
				first = head_recv(r, l, h2, kind) != recv;
			fam_gemm(r, 0, (int)n, r->C, r->D, dp + (size_t)h * D, (int)Q, W,
				 (size_t)g * D, 0, r->C, first ? 0.0f : 1.0f,
				 model_recv_grad_buf(r, recv), r->C);
		}
		for (int h = 0; h < r->H; h++) {
			int recv = head_recv(r, l, h, kind), first = 1;
			float *rg = model_recv_grad_buf(r, recv);
			for (int h2 = 0; h2 < h && first; h2++)
				first = head_recv(r, l, h2, kind) != recv;
			if (!first)
				continue;
			if (pre)
				p_normb(r, rg, gx, rg, x, n, y->n1_w, 1);
			else
				circ_vadd(gx, rg, n * C);
		}
	}
	return 1;
}

static void fam_attn_bwd(circ_run *r, int l, const float *x, const float *g, const float *const *ng,
			 float *gx)
{
	const circ_config *c = &r->m->cfg;
	const fam_layer *y = &r->m->fw.layers[l];
	size_t n = bt(r), C = (size_t)r->C, D = (size_t)r->D, Q = fam_Q(r);
	const float *dA = g;
	float *q = lay(r, r->fq, l, Q), *k = lay(r, r->fk, l, Q);
	float *dq = r->f_dq, *dk = r->f_dk, *dv = r->f_dv;
	int rd = circ_config_rotary_dim(c), own = 0;
	for (int h = 0; ng && h < r->H; h++)
		own |= ng[h] != NULL;
	if (own) {
		attn_dz_own(r, l, g, ng);
	} else {
		if (fam_post_norm(c)) {
			memset(r->f_dA, 0, n * C * sizeof(float));
			p_norm_bwd(r, 1, r->f_dA, g, C, lay(r, r->fA, l, C), C, n, r->C, y->pa_w);
			dA = r->f_dA;
		}
		/* dz (n, Q) = dA (n, C) Wo (C, Q) */
		fam_gemm(r, 0, (int)n, (int)Q, r->C, dA, r->C, &y->o_w, 0, 0, (int)Q, 0.0f, r->f_dz,
			 (int)Q);
	}
	if (r->gw) { /* o_proj: dA against the heads' z */
		grad_w(r, r->gw->layers[l].o_w.p, r->C, (int)Q, dA, r->C, lay(r, r->fz, l, Q),
		       (int)Q, n);
		grad_b(r->gw->layers[l].o_b, dA, C, n, r->C);
	}
	memset(dq, 0, n * Q * sizeof(float));
	memset(dk, 0, n * Q * sizeof(float));
	memset(dv, 0, n * Q * sizeof(float));
	{
		fattn_task t = {r,
				l,
				model_att(r, l),
				NULL,
				lay(r, r->fqr, l, Q),
				lay(r, r->fkr, l, Q),
				lay(r, r->fv, l, Q),
				r->f_dz,
				dq,
				dk,
				dv};
		circ_pool_for(r->pool, (size_t)r->B * (size_t)r->H, fattn_bwd_part, &t);
	}
	/* back through RoPE and the per-head q/k norms */
	if (c->pos == CIRC_POS_ROTARY && rd > 0)
		rope_rows(r, l, dq, dk, n, Q, 1);
	if (c->qk_norm == CIRC_QK_NORM_HEAD) {
		/* dq, dk are of the normed values; q, k hold the projections */
		memcpy(r->f_dz2, dq, n * Q * sizeof(float));
		memset(dq, 0, n * Q * sizeof(float));
		p_norm_bwd(r, 1, dq, r->f_dz2, D, q, D, n * (size_t)r->H, r->D, y->qn_w);
		memcpy(r->f_dz2, dk, n * Q * sizeof(float));
		memset(dk, 0, n * Q * sizeof(float));
		p_norm_bwd(r, 1, dk, r->f_dz2, D, k, D, n * (size_t)r->H, r->D, y->kn_w);
	}
	if (attn_recv_shared(r, l, x, gx))
		return;
	/* each receiver: zeroed once, then every head that reads it adds */
	for (int h = 0; h < r->H; h++)
		for (int kind = 0; kind < 3; kind++)
			memset(model_recv_grad_buf(r, head_recv(r, l, h, kind)), 0,
			       n * C * sizeof(float));
	for (int h = 0; h < r->H; h++)
		for (int kind = 0; kind < 3; kind++) {
			int recv = head_recv(r, l, h, kind);
			const float *xin = model_recv_input(r, recv, x, r->s_ln2);
			const float *dp = (kind == 0 ? dq : kind == 1 ? dk : dv) + (size_t)h * D;
			recv_bwd(r, l, kind, h, xin, dp, model_recv_grad_buf(r, recv));
		}
	/* gx += every distinct receiver's gradient */
	for (int h = 0; h < r->H; h++)
		for (int kind = 0; kind < 3; kind++) {
			int recv = head_recv(r, l, h, kind), first = 1;
			for (int h2 = 0; h2 < h && first; h2++)
				first = head_recv(r, l, h2, kind) != recv;
			if (first)
				circ_vadd(gx, model_recv_grad_buf(r, recv), n * C);
		}
}

static int fam_backward_stages(circ_run *r, const circ_bwd *b, int S, circ_error *e);

int model_family_backward(circ_run *r, const circ_bwd *b, circ_error *e)
{
	int S = circ_topo_stage_final(r->m->topo);
	fam_weights gw;
	int rc = -1;
	if (b->dweights)
		return circ_errorf(e,
				   "parameter gradients of model_type '%s' go to dparams (the "
				   "flat order), not dweights (GPT-2's layout)",
				   circ_model_type_name(r->m->cfg.model_type));
	if (b->dparams) {
		if (grads_check(r, b, e) < 0)
			return -1;
		grads_bind(r->m, b->dparams, &gw);
		r->gw = &gw;
	}
	rc = fam_backward_stages(r, b, S, e);
	if (rc == 0 && r->gw)
		grads_embed(r);
	if (r->gw)
		free(gw.layers);
	r->gw = NULL;
	if (rc == 0)
		r->have_bwd = 1;
	return rc;
}

/* The stages of the backward, final to first. */
static int fam_backward_stages(circ_run *r, const circ_bwd *b, int S, circ_error *e)
{
	const circ_topology *t = r->m->topo;
	size_t n = bt(r), C = (size_t)r->C;
	fam_final_bwd(r, S, b->dlogits);
	if (model_call_bhook(r, b, S, e) < 0)
		return -1;
	for (int s = S - 1; s >= 0; s--) {
		const circ_topo_stage *st = &t->stage[s];
		const float *x = resid_at(r, s), *g = dres(r, s + 1);
		const float **ng = r->bwd_ng; /* heads first, then the MLP */
		float *gx = dres(r, s);
		if (model_call_out_hook(r, b, s, st->n_node, ng, e) < 0)
			return -1;
		memcpy(gx, g, n * C * sizeof(float));
		if (st->kind == CIRC_STAGE_MLP || st->kind == CIRC_STAGE_BLOCK) {
			const float *gm = ng[st->n_node - 1];
			fam_mlp_bwd(r, st->layer, x, gm ? gm : g, gx,
				    model_recv_grad_buf(r, circ_recv_mlp(r->m, st->layer)));
		}
		if (st->kind == CIRC_STAGE_ATTN || st->kind == CIRC_STAGE_BLOCK)
			fam_attn_bwd(r, st->layer, x, g, ng, gx);
		if (model_call_bhook(r, b, s, e) < 0)
			return -1;
	}
	return 0;
}

/* ================================================================ hook points */

int circ_run_mlp_input(const circ_run *r, int layer, int weighted, float *out, circ_error *e)
{
	const circ_model *m = r->m;
	const circ_config *c = &m->cfg;
	size_t C = (size_t)r->C, n = bt(r);
	if (layer < 0 || layer >= r->L)
		return circ_errorf(e, "MLP input of layer %d: the model has %d layers", layer,
				   r->L);
	/* the MLP's stage: after the attention, or the parallel block's input */
	const float *x = circ_run_resid(r, circ_topo_stage_mlp(m->topo, layer));
	const float *w, *b;
	if (c->model_type == CIRC_MODEL_GPT2) {
		w = m->w.layers[layer].ln2_w;
		b = m->w.layers[layer].ln2_b;
	} else if (!fam_pre_norm(c)) {
		memcpy(out, x, n * C * sizeof(float));
		return 0;
	} else {
		w = m->fw.layers[layer].n2_w;
		b = m->fw.layers[layer].n2_b;
	}
	float *ones = NULL;
	if (!weighted) {
		/* scale 1 (the RMSNorm's offset taken off), no bias */
		ones = circ_xmalloc(C * sizeof *ones);
		for (size_t i = 0; i < C; i++)
			ones[i] = block_rms(r) ? (float)(1.0 - c->norm_offset) : 1.0f;
		w = ones;
		b = NULL;
	}
	float *zero = NULL;
	if (!block_rms(r) && !b) /* LayerNorm wants a bias */
		b = zero = circ_xcalloc(C, sizeof *zero);
	p_norm(r, block_rms(r), out, C, x, C, n, r->C, w, b);
	free(ones);
	free(zero);
	return 0;
}

const float *circ_run_attn_z(const circ_run *r, int layer)
{
	if (r->m->cfg.model_type == CIRC_MODEL_GPT2 || layer < 0 || layer >= r->L ||
	    (r->o.one_layer && layer != r->att_layer))
		return NULL;
	return lay(r, r->fz, layer, fam_Q(r));
}

int circ_model_heads_from_z(const circ_model *m)
{
	if (m->cfg.model_type == CIRC_MODEL_GPT2)
		return 0;
	for (int l = 0; l < m->cfg.n_layer; l++)
		if (m->fw.layers[l].pa_w)
			return 0;
	return 1;
}

void circ_run_head_outputs(const circ_run *r, int layer, const float *z, float *const *dst)
{
	size_t D = (size_t)r->D, Q = fam_Q(r);
	CIRC_ASSERT(circ_model_heads_from_z(r->m) && layer >= 0 && layer < r->L);
	for (int h = 0; h < r->H; h++)
		fam_gemm(r, 1, (int)bt(r), r->C, r->D, z + (size_t)h * D, (int)Q,
			 &r->m->fw.layers[layer].o_w, 0, (size_t)h * D, (int)Q, 0.0f, dst[h], r->C);
}

int circ_model_attn_proj(const circ_model *m, int layer, const float *z, int n, float *out,
			 circ_error *e)
{
	const circ_config *c = &m->cfg;
	int C = c->n_embd;
	if (layer < 0 || layer >= c->n_layer)
		return circ_errorf(e, "attention output of layer %d: the model has %d layers",
				   layer, c->n_layer);
	if (c->model_type == CIRC_MODEL_GPT2) { /* Conv1D: (H*D, C) */
		/* the forward's kernel, so its bits */
		if (!model_pk_gemm(m, 1, n, C, C, z, C, m->w.layers[layer].proj_w, C, out, C))
			circ_gemm(0, 0, n, C, C, 1.0f, z, C, m->w.layers[layer].proj_w, C, 0.0f,
				  out, C);
		return 0;
	}
	const fam_layer *y = &m->fw.layers[layer];
	if (y->pa_w)
		return circ_errorf(
		    e,
		    "attention output of layer %d: it has a norm of its own (%s), so "
		    "a change of z is no sum of node outputs",
		    layer, circ_model_type_name(c->model_type));
	int Q = c->n_head * circ_config_head_dim(c);
	const float *w = y->o_w.p;
	float *conv = NULL;
	if (y->o_w.dt != CIRC_F32) {
		conv = circ_xmalloc((size_t)C * Q * sizeof *conv);
		circ_st_to_f32(conv, y->o_w.p, y->o_w.dt, (size_t)C * Q);
		w = conv;
	}
	circ_gemm(0, 1, n, C, Q, 1.0f, z, Q, w, Q, 0.0f, out, C);
	free(conv);
	return 0;
}

/* ================================================================ flat parameters */

int model_family_new(circ_model *m, circ_error *e)
{
	const circ_config *c = &m->cfg;
	model_tensor *tab = NULL;
	int n = model_names_list(c, &tab);
	size_t total = 0;
	if (n < 0)
		return circ_errorf(e, "no tensor table for model_type '%s'",
				   circ_model_type_name(c->model_type));
	m->fw.layers = circ_xcalloc((size_t)c->n_layer, sizeof *m->fw.layers);
	m->fp = circ_xcalloc((size_t)n, sizeof *m->fp);
	for (int k = 0; k < n; k++) {
		fam_param *q = &m->fp[m->n_fp];
		if (tab[k].optional || tab[k].role == MODEL_W_QKV_W || tab[k].role == MODEL_W_QKV_B)
			continue; /* a tied model's copy; GPT-NeoX's fused rows: not made here */
		fam_param_set(q, &tab[k], total);
		total += q->count;
		m->n_fp++;
	}
	free(tab);
	m->own = circ_xmalloc_aligned((total ? total : 1) * sizeof(float));
	memset(m->own, 0, (total ? total : 1) * sizeof(float));
	for (int i = 0; i < m->n_fp; i++) {
		fam_mat *ms;
		const float **vs;
		role_slot(&m->fw, (model_role)m->fp[i].role, m->fp[i].layer, &ms, &vs);
		if (ms)
			*ms = (fam_mat){m->own + m->fp[i].off, CIRC_F32};
		else if (vs)
			*vs = m->own + m->fp[i].off;
	}
	if (!m->fw.lm_head.p)
		m->fw.lm_head = m->fw.embed;
	m->w.wte = (float *)(uintptr_t)m->fw.embed.p;
	m->w.lm_head = (float *)(uintptr_t)m->fw.lm_head.p;
	m->w.n_params = total;
	m->fp_own = 1;
	return 0;
}

int circ_model_n_param_tensors(const circ_model *m)
{
	return m->n_fp;
}

void circ_model_param_info(const circ_model *m, int i, circ_param_info *out)
{
	const fam_param *q;
	CIRC_ASSERT(i >= 0 && i < m->n_fp);
	q = &m->fp[i];
	out->name = q->name;
	out->offset = q->off;
	out->count = q->count;
	out->ndim = q->ndim;
	out->shape[0] = q->shape[0];
	out->shape[1] = q->shape[1];
	out->layer = q->layer;
	out->matrix = q->ndim == 2;
	out->out_proj =
	    q->role == MODEL_W_O_W || q->role == MODEL_W_DOWN_W || q->role == MODEL_W_FCPROJ_W;
}

float *circ_model_params(circ_model *m)
{
	return m->fp_own && m->n_fp ? m->own : NULL;
}
