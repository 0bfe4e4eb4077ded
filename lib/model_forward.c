/*
 * model_forward: the decomposed forward (see model.h, "runs", and model.c
 * for the run's buffers and receiver deltas): stages in order, the hook
 * before each, per-head node outputs, the q/k/v receivers with deltas in
 * row blocks, and resuming at a stage (circ_run_copy_prefix). For the
 * patcher: projections kept from the previous forward (circ_run_keep_qkv:
 * their columns, and a head whose q, k and v are all kept, left as they
 * are) and the last MLP at the read rows alone (circ_fwd.reads_only).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_impl.h"

/* ---- forward ---- */

static int call_hook(circ_run *r, const circ_fwd *f, int s, circ_error *e)
{
	if (!f->hook)
		return 0;
	r->in_fwd = s;
	if (f->hook(f->hook_ctx, r, s, e) < 0) {
		r->in_fwd = -1;
		return -1;
	}
	r->in_fwd = -1;
	return 0;
}

static void embed(circ_run *r, const circ_fwd *f)
{
	const circ_weights *w = &r->m->w;
	size_t C = (size_t)r->C;
	float *in = r->node[0], *x = resid_at(r, 0);
	for (int b = 0; b < r->B; b++)
		for (int t = 0; t < r->T; t++) {
			size_t row = (size_t)b * r->T + t;
			const float *pe = w->wpe + (size_t)t * C;
			if (f->input_embed)
				memcpy(in + row * C, f->input_embed + row * C, C * sizeof(float));
			else
				memcpy(in + row * C, w->wte + (size_t)r->tokens[row] * C,
				       C * sizeof(float));
			if (r->o.acdc_convention && !f->input_embed)
				for (size_t c = 0; c < C; c++)
					in[row * C + c] += pe[c];
			for (size_t c = 0; c < C; c++)
				x[row * C + c] =
				    in[row * C + c] + (r->o.acdc_convention ? 0.0f : pe[c]);
		}
}

/* ---- q/k/v receivers with deltas, in row blocks over the pool ----
 * When some of a layer's q/k/v receivers carry a delta, each receiver has
 * its own ln_1 input and so its own (n, C) x (C, D) GEMM. Those GEMMs are
 * too narrow to split well by columns (and OpenBLAS runs them a third
 * slower than one wide GEMM: circ_gemm_acc has its own kernel for them,
 * which the unpatched layer uses too, so patched and unpatched forwards
 * compute their columns alike). The rows are cut into blocks of
 * at most QKV_BLOCK and each pool thread takes a contiguous share of the
 * blocks, its GEMMs on that thread alone: per block, the shared
 * ln_1 and the GEMMs over the runs of unpatched columns, then each patched
 * receiver's LayerNorm of its input (residual + delta, or an input sum),
 * formed row by row, and its D columns. Every column is computed once,
 * each output row by one thread, in an order that does not depend on the
 * thread count. */

#define QKV_BLOCK 64
/* Unpatched, circ's kernel computes every row alike whatever the block, so
 * the blocks may be larger (b is packed once per block). With receivers
 * patched, columns of a width circ_gemm_acc leaves to OpenBLAS come out of
 * kernels that depend on the block's rows: those blocks stay QKV_BLOCK. */
#define QKV_BLOCK_CLEAN 256

typedef struct qkv_task {
	circ_run *r;
	int l, npatched, nkept; /* receivers with a delta, and kept ones (none has both) */
	size_t n, nblk, rb;	/* n rows in blocks of rb (the last may be shorter) */
	const float *x;		/* (n, C) the layer's residual */
	float *qkv;		/* (n, 3C) output */
} qkv_task;

/* Scratch of thread slot k: (QKV_BLOCK_CLEAN, C). */
static float *blk_scratch(circ_run *r, int k)
{
	return r->s_blk + (size_t)k * QKV_BLOCK_CLEAN * r->C;
}

/* Splits n rows into blocks of at most mb rows (at least one per thread
 * when there are rows enough) and makes sure every thread has its scratch. */
static void qkv_task_init(circ_run *r, qkv_task *t, int l, size_t n, size_t mb)
{
	int P = circ_pool_threads(r->pool);
	/* the same number of blocks for every thread, each at most mb */
	size_t per = (n + (size_t)P * mb - 1) / ((size_t)P * mb);
	size_t rb = (n + (size_t)P * per - 1) / ((size_t)P * per);
	if (r->blk_slots < P) {
		free(r->s_blk);
		r->s_blk = circ_xalloc_aligned((size_t)P * QKV_BLOCK_CLEAN * r->C * sizeof(float));
		r->blk_slots = P;
	}
	t->r = r;
	t->l = l;
	t->n = n;
	t->rb = rb < 1 ? 1 : rb > mb ? mb : rb;
	t->nblk = (n + t->rb - 1) / t->rb;
}

/* Column block k (of 3H, D wide) is receiver (h = k % H, c = k / H). */
static int qkv_recv_of_col(const circ_run *r, int l, int k)
{
	return circ_recv_qkv(r->m, l, k % r->H, (circ_recv_kind)(CIRC_RECV_Q + k / r->H));
}

static void qkv_fwd_block(qkv_task *t, float *buf, size_t i0, size_t m)
{
	circ_run *r = t->r;
	const circ_layer_weights *lw = &r->m->w.layers[t->l];
	size_t C = (size_t)r->C, C3 = 3 * C, D = (size_t)r->D;
	int K = 3 * r->H;
	float eps = (float)r->m->cfg.layer_norm_epsilon;
	const float *x = t->x + i0 * C;
	float *q = t->qkv + i0 * C3;
	if (!t->nkept)
		bias_rows(q, lw->attn_b, m, C3, C3);
	else /* the kept columns stay as they are */
		for (int k = 0; k < K; k++)
			if (!r->qkv_keep[qkv_recv_of_col(r, t->l, k)])
				bias_rows(q + (size_t)k * D, lw->attn_b + (size_t)k * D, m, D, C3);
	if (t->npatched + t->nkept < K) {
		size_t so = (size_t)2 * t->l * r->rows + i0;
		(r->o.reference ? circ_layernorm_fwd_ref : circ_layernorm_fwd)(
		    buf, r->C, r->mean + so, r->rstd + so, x, r->C, lw->ln1_w, lw->ln1_b, (int)m,
		    r->C, eps);
		for (int k = 0; k < K;) {
			int k1 = k;
			while (k1 < K && !r->delta_on[qkv_recv_of_col(r, t->l, k1)] &&
			       !r->qkv_keep[qkv_recv_of_col(r, t->l, k1)])
				k1++;
			if (k1 > k)
				model_gemm_acc(r, (int)m, (k1 - k) * r->D, r->C, buf, r->C,
					       lw->attn_w + (size_t)k * D, (int)C3,
					       q + (size_t)k * D, (int)C3);
			k = k1 + 1;
		}
	}
	for (int k = 0; k < K; k++) {
		int recv = qkv_recv_of_col(r, t->l, k);
		if (!r->delta_on[recv] || r->qkv_keep[recv])
			continue;
		if (r->delta_on[recv] == CIRC_DELTA_SUM) {
			/* the input formed row by row (in L1), normalised in place */
			int abs = r->dsum_abs[recv];
			circ_layernorm_fwd_sum(
			    buf, r->C, delta_mean(r, recv) + i0, delta_rstd(r, recv) + i0,
			    abs ? r->dsum_base[recv] : t->x, abs ? NULL : r->dsum_base[recv],
			    r->dsum_terms + (size_t)recv * (size_t)r->U, r->dsum_k[recv],
			    r->dsum_sign[recv] < 0, i0, r->C, lw->ln1_w, lw->ln1_b, (int)m, r->C,
			    eps);
		} else {
			(r->o.reference ? circ_layernorm_fwd_add_ref : circ_layernorm_fwd_add)(
			    buf, r->C, delta_mean(r, recv) + i0, delta_rstd(r, recv) + i0, x,
			    r->delta[recv] + i0 * C, r->C, lw->ln1_w, lw->ln1_b, (int)m, r->C, eps);
		}
		model_gemm_acc(r, (int)m, r->D, r->C, buf, r->C, lw->attn_w + (size_t)k * D,
			       (int)C3, q + (size_t)k * D, (int)C3);
	}
}

/* Thread slot k of the pool runs qkv_fwd_block over its contiguous share
 * of the blocks. */
static void qkv_slot(void *v, size_t b, size_t e)
{
	qkv_task *t = v;
	int P = circ_pool_threads(t->r->pool);
	for (size_t k = b; k < e; k++) {
		size_t b0 = t->nblk * k / (size_t)P, b1 = t->nblk * (k + 1) / (size_t)P;
		for (size_t j = b0; j < b1; j++) {
			size_t i0 = j * t->rb, m = t->n - i0 < t->rb ? t->n - i0 : t->rb;
			qkv_fwd_block(t, blk_scratch(t->r, (int)k), i0, m);
		}
	}
}

/* ---- per-head outputs and the residual after attention, in one job ----
 * Each head's output z_h W_h (a K = D deep product) is its own GEMM; as
 * twelve OpenBLAS calls over the pool they pay twelve packings and twelve
 * hand-offs, and the sum of the outputs is one more pass over them all.
 * Here each pool thread takes a contiguous share of the rows (a multiple
 * of 6, the kernel's tile) and, one block of 64 output columns at a time,
 * sets the residual to x + b and computes every head's output for them
 * with circ_gemm_set_add (the sums OpenBLAS forms for a block of k,
 * started from 0), which adds each head's output to the residual while it
 * is in registers: the additions model_p_sum makes, in its order, with no
 * pass over the heads' outputs. */
typedef struct proj_task {
	circ_run *r;
	int l;
	const float *z, *x;	   /* (n, C) the heads' outputs side by side; the residual */
	const unsigned char *skip; /* (H) heads whose output is kept, or NULL */
} proj_task;

static void proj_slot(void *v, size_t b, size_t e)
{
	proj_task *t = v;
	circ_run *r = t->r;
	const circ_layer_weights *lw = &r->m->w.layers[t->l];
	size_t n = bt(r), C = (size_t)r->C, D = (size_t)r->D,
	       P = (size_t)circ_pool_threads(r->pool);
	size_t jb = C % 64 ? C : 64;
	float *res = resid_at(r, 2 * t->l + 1), *out[MAX_HEAD];
	for (int h = 0; h < r->H; h++)
		out[h] = r->node[circ_node_head(r->m, t->l, h)];
	for (size_t q = b; q < e; q++) {
		size_t i0 = n * q / P / 6 * 6, i1 = q + 1 == P ? n : n * (q + 1) / P / 6 * 6;
		if (i1 <= i0)
			continue;
		for (size_t j = 0; j < C; j += jb) {
			for (size_t i = i0; i < i1; i++) /* res = x + b */
				circ_vsum(res + i * C + j, t->x + i * C + j, lw->proj_b + j, NULL,
					  0, jb);
			for (int h = 0; h < r->H; h++) /* res += out_h, head by head */
				if (t->skip && t->skip[h])
					for (size_t i = i0; i < i1; i++) {
						const float *o = out[h] + i * C + j;
						circ_vsum(res + i * C + j, res + i * C + j, NULL,
							  &o, 1, jb);
					}
				else
					circ_gemm_set_add((int)(i1 - i0), (int)jb, r->D,
							  t->z + i0 * C + (size_t)h * D, r->C,
							  lw->proj_w + (size_t)h * D * C + j, r->C,
							  out[h] + i0 * C + j, r->C,
							  res + i0 * C + j, r->C);
		}
	}
}

static void attn_stage(circ_run *r, int l)
{
	const circ_layer_weights *lw = &r->m->w.layers[l];
	const float *x = resid_at(r, 2 * l);
	size_t n = bt(r), C = (size_t)r->C, C3 = 3 * C, D = (size_t)r->D;
	float *qkv = r->qkv + model_lslot(r, l) * r->rows * C3;
	float *att = model_att(r, l);
	float *z = r->z + model_lslot(r, l) * r->rows * C;
	int npatched = 0, nkept = 0;
	r->att_layer = l;
	unsigned char skip[MAX_HEAD];
	for (int h = 0; h < r->H; h++) {
		int kept = 0;
		for (int c = 0; c < 3; c++) {
			int recv = circ_recv_qkv(r->m, l, h, (circ_recv_kind)(CIRC_RECV_Q + c));
			kept += r->qkv_keep[recv];
			npatched += r->delta_on[recv] != 0 && !r->qkv_keep[recv];
		}
		nkept += kept;
		skip[h] = kept == 3;
	}
	if (npatched == 0 && nkept == 0 &&
	    (r->o.reference || model_bf16_on(r) || !circ_gemm_acc_fast((int)C3))) {
		model_p_layernorm(r, r->s_ln, r->mean + (size_t)2 * l * r->rows,
				  r->rstd + (size_t)2 * l * r->rows, x, lw->ln1_w, lw->ln1_b, n);
		bias_rows(qkv, lw->attn_b, n, C3, C3);
		model_gemm(r, 0, 0, (int)n, (int)C3, r->C, r->s_ln, r->C, lw->attn_w, (int)C3, 1.0f,
			   qkv, (int)C3);
	} else {
		qkv_task t;
		size_t col0;
		model_pk_slot *s =
		    r->o.reference || model_bf16_on(r)
			? NULL
			: model_pk_find(r->m, lw->attn_w, 0, (int)C3, r->C, (int)C3, &col0);
		if (s) /* the column blocks below read its panels */
			model_pk_use(r, s);
		qkv_task_init(r, &t, l, n, npatched || nkept ? QKV_BLOCK : QKV_BLOCK_CLEAN);
		t.npatched = npatched;
		t.nkept = nkept;
		t.x = x;
		t.qkv = qkv;
		circ_pool_for(r->pool, (size_t)circ_pool_threads(r->pool), qkv_slot, &t);
	}
	{
		attn_task t = {r, z, att, NULL, qkv, NULL, NULL, nkept ? skip : NULL};
		circ_pool_for(r->pool, (size_t)r->B, model_attn_fwd_part, &t);
	}
	if (r->o.keep_nodes && !r->o.reference && !model_bf16_on(r)) {
		proj_task t = {r, l, z, x, nkept ? skip : NULL};
		circ_pool_for(r->pool, (size_t)circ_pool_threads(r->pool), proj_slot, &t);
	} else if (r->o.keep_nodes) {
		const float *src[MAX_HEAD];
		for (int h = 0; h < r->H; h++) {
			float *out = r->node[circ_node_head(r->m, l, h)];
			model_gemm(r, 0, 0, (int)n, r->C, r->D, z + (size_t)h * D, r->C,
				   lw->proj_w + (size_t)h * D * C, r->C, 0.0f, out, r->C);
			src[h] = out;
		}
		model_p_sum(r, resid_at(r, 2 * l + 1), x, src, r->H, lw->proj_b, n);
	} else {
		const float *src[1] = {r->s_ln2};
		model_gemm(r, 0, 0, (int)n, r->C, r->C, z, r->C, lw->proj_w, r->C, 0.0f, r->s_ln2,
			   r->C);
		model_p_sum(r, resid_at(r, 2 * l + 1), x, src, 1, lw->proj_b, n);
	}
}

static void mlp_stage(circ_run *r, int l)
{
	const circ_layer_weights *lw = &r->m->w.layers[l];
	const float *x = resid_at(r, 2 * l + 1), *xin;
	size_t n = bt(r), F = (size_t)r->F;
	float *fc = r->fc + model_lslot(r, l) * r->rows * F;
	float *out = r->node[circ_node_mlp(r->m, l)];
	int recv = circ_recv_mlp(r->m, l);
	xin = model_recv_input(r, recv, x, r->s_ln);
	model_p_layernorm(r, r->s_ln, r->mean + (size_t)(2 * l + 1) * r->rows,
			  r->rstd + (size_t)(2 * l + 1) * r->rows, xin, lw->ln2_w, lw->ln2_b, n);
	model_epi fc_ep = {lw->fc_b, r->s_gelu, r->m->cfg.act == CIRC_ACT_GELU, NULL, NULL};
	model_epi proj_ep = {lw->fcproj_b, NULL, 0, resid_at(r, 2 * l + 2), x};
	model_gemm_epi(r, (int)n, r->F, r->C, r->s_ln, r->C, lw->fc_w, r->F, fc, r->F, &fc_ep);
	model_gemm_epi(r, (int)n, r->C, r->F, r->s_gelu, r->F, lw->fcproj_w, r->C, out, r->C,
		       &proj_ep);
}

/* The last layer's MLP at the read rows alone (circ_fwd.reads_only): only
 * the logits read what it writes, and only there. The rows are gathered
 * (the receiver's input, the residual), run through the stage as
 * mlp_stage runs them (row by row the same operations: a row's GEMM
 * results do not depend on the other rows), and the node's output and the
 * final residual scattered back; the other rows keep what they held. */
static size_t read_row(const circ_run *r, size_t i)
{
	return (size_t)r->reads[i].b * (size_t)r->T + (size_t)r->reads[i].t;
}

static void mlp_stage_reads(circ_run *r, int l)
{
	const circ_layer_weights *lw = &r->m->w.layers[l];
	const float *x = resid_at(r, 2 * l + 1);
	size_t N = (size_t)r->n_read, C = (size_t)r->C, so = (size_t)(2 * l + 1) * r->rows;
	float *fc = r->fc + model_lslot(r, l) * r->rows * r->F,
	      *out = r->node[circ_node_mlp(r->m, l)];
	float *xr = r->s_ln2, *o = r->s_ln, *res = r->lnf, *res2 = resid_at(r, 2 * l + 2);
	model_read_inputs(r, circ_recv_mlp(r->m, l), x, r->s_ln);
	model_p_layernorm(r, r->s_ln, r->mean + so, r->rstd + so, r->s_ln, lw->ln2_w, lw->ln2_b, N);
	model_epi fc_ep = {lw->fc_b, r->s_gelu, r->m->cfg.act == CIRC_ACT_GELU, NULL, NULL};
	model_epi proj_ep = {lw->fcproj_b, NULL, 0, res, xr};
	model_gemm_epi(r, (int)N, r->F, r->C, r->s_ln, r->C, lw->fc_w, r->F, fc, r->F, &fc_ep);
	for (size_t i = 0; i < N; i++)
		memcpy(xr + i * C, x + read_row(r, i) * C, C * sizeof(float));
	model_gemm_epi(r, (int)N, r->C, r->F, r->s_gelu, r->F, lw->fcproj_w, r->C, o, r->C,
		       &proj_ep);
	for (size_t i = 0; i < N; i++) {
		size_t row = read_row(r, i);
		memcpy(out + row * C, o + i * C, C * sizeof(float));
		memcpy(res2 + row * C, res + i * C, C * sizeof(float));
	}
}

/* ---- logits of a few positions ----
 * With few read rows (the last position of each sequence) the unembedding
 * is a pass over the whole (V, C) matrix for little arithmetic: OpenBLAS
 * packs all of it for those rows; circ_gemm_bt_set reads each row of it
 * once, straight into dot products, each thread a share of the
 * vocabulary. Only for matrices that stream from memory (the fixtures'
 * small vocabularies keep OpenBLAS and its bits). */
#define HEAD_FEW_ROWS	  64
#define HEAD_STREAM_BYTES ((size_t)4 << 20)

typedef struct head_task {
	circ_run *r;
	int n; /* read rows */
} head_task;

static void head_part(void *v, size_t b, size_t e)
{
	head_task *t = v;
	circ_run *r = t->r;
	size_t V = (size_t)r->V, C = (size_t)r->C, P = (size_t)circ_pool_threads(r->pool);
	for (size_t q = b; q < e; q++) {
		size_t j0 = V * q / P, j1 = V * (q + 1) / P;
		circ_gemm_bt_set(t->n, (int)(j1 - j0), r->C, r->lnf, r->C, r->m->w.lm_head + j0 * C,
				 r->C, r->logits + j0, r->V);
	}
}

static void final_stage(circ_run *r)
{
	const circ_weights *w = &r->m->w;
	size_t C = (size_t)r->C, N = (size_t)r->n_read;
	if (r->read_none)
		return;
	model_final_inputs(r, resid_at(r, 2 * r->L), r->s_ln);
	model_p_layernorm(r, r->lnf, r->lnf_mean, r->lnf_rstd, r->s_ln, w->lnf_w, w->lnf_b, N);
	if (!r->o.reference && !model_bf16_on(r) && N <= HEAD_FEW_ROWS && circ_gemm_bt_fast(r->C) &&
	    (size_t)r->V * C * sizeof(float) >= HEAD_STREAM_BYTES) {
		head_task t = {r, (int)N};
		circ_pool_for(r->pool, (size_t)circ_pool_threads(r->pool), head_part, &t);
		return;
	}
	model_gemm(r, 0, 1, (int)N, r->V, r->C, r->lnf, r->C, w->lm_head, r->C, 0.0f, r->logits,
		   r->V);
}

static int set_reads(circ_run *r, const circ_fwd *f, circ_error *e)
{
	r->read_none = 0;
	switch (f->read) {
	case CIRC_READ_LAST:
		r->n_read = f->B;
		for (int b = 0; b < f->B; b++)
			r->reads[b] = (circ_read){b, f->T - 1};
		break;
	case CIRC_READ_ALL:
		r->n_read = f->B * f->T;
		for (int b = 0; b < f->B; b++)
			for (int t = 0; t < f->T; t++)
				r->reads[b * f->T + t] = (circ_read){b, t};
		break;
	case CIRC_READ_LIST:
		if (f->n_read < 0 || (size_t)f->n_read > r->rows || (f->n_read && !f->reads))
			return circ_errorf(e, "%d read positions (at most %zu)", f->n_read,
					   r->rows);
		for (int i = 0; i < f->n_read; i++) {
			if (f->reads[i].b < 0 || f->reads[i].b >= f->B || f->reads[i].t < 0 ||
			    f->reads[i].t >= f->T)
				return circ_errorf(e,
						   "read position %d (sequence %d, position %d) is "
						   "outside the batch (%d x %d)",
						   i, f->reads[i].b, f->reads[i].t, f->B, f->T);
			r->reads[i] = f->reads[i];
		}
		r->n_read = f->n_read;
		break;
	case CIRC_READ_NONE:
		r->n_read = 0;
		r->read_none = 1;
		break;
	default: return circ_errorf(e, "unknown read mode %d", (int)f->read);
	}
	return 0;
}

int circ_forward(circ_run *r, const circ_fwd *f, circ_error *e)
{
	int s0, S, reads_only;
	CIRC_ASSERT(r != NULL && f != NULL);
	s0 = f->start_stage;
	S = circ_topo_stage_final(r->m->topo);
	if (model_run_fit(r, f->B, f->T, e) < 0)
		return -1;
	if (s0 < 0 || s0 > S)
		return circ_errorf(e, "start stage %d is out of range (0-%d)", s0, S);
	if (!f->tokens && !f->input_embed && s0 == 0)
		return circ_errorf(e, "no tokens and no input embedding");
	if (s0 > 0) {
		if (r->valid < s0 || r->B != f->B || r->T != f->T)
			return circ_errorf(e,
					   "cannot resume at stage %d: the run holds no matching "
					   "prefix (%d x %d, %d stages)",
					   s0, r->B, r->T, r->valid < 0 ? 0 : r->valid);
		if (f->tokens &&
		    memcmp(f->tokens, r->tokens, (size_t)f->B * f->T * sizeof(int32_t)))
			return circ_errorf(e,
					   "cannot resume at stage %d: the tokens differ from the "
					   "run's",
					   s0);
	} else if (f->tokens) {
		for (int b = 0; b < f->B; b++)
			for (int t = 0; t < f->T; t++) {
				int32_t tok = f->tokens[(size_t)b * f->T + t];
				if (tok < 0 || tok >= r->V)
					return circ_errorf(
					    e,
					    "token %d at sequence %d, position %d is "
					    "outside the vocabulary (%d tokens)",
					    (int)tok, b, t, r->V);
			}
	}
	if (set_reads(r, f, e) < 0)
		return -1;
	circ_blas_threads(1);
	r->have_bwd = 0;
	r->serial++;
	r->s0_prev = r->s0;
	r->s0 = s0;
	memset(r->qkv_keep, 0, (size_t)r->R);
	if (r->att_layer >= 0 && circ_topo_stage_attn(r->m->topo, r->att_layer) >= s0)
		r->att_layer = -1; /* its layer is run again (one_layer's slot) */
	/* the last MLP at the read rows: worth it where they are fewer */
	reads_only = f->reads_only && !model_is_family(r->m) && !r->o.backward && !r->read_none &&
		     (size_t)r->n_read < (size_t)f->B * (size_t)f->T;
	for (int recv = 0; recv < r->R; recv++)
		if (circ_recv_stage(r->m, recv) >= s0)
			r->delta_on[recv] = CIRC_DELTA_NONE;
	r->B = f->B;
	r->T = f->T;
	if (s0 == 0) {
		r->valid = -1;
		if (f->tokens)
			memcpy(r->tokens, f->tokens, (size_t)f->B * f->T * sizeof(int32_t));
		else
			memset(r->tokens, 0, (size_t)f->B * f->T * sizeof(int32_t));
		r->used_embed = f->input_embed != NULL;
		if (model_is_family(r->m))
			model_family_embed(r, f);
		else
			embed(r, f);
	}
	r->valid = s0;
	for (int s = s0; s <= S; s++) {
		if (call_hook(r, f, s, e) < 0)
			return -1;
		if (model_is_family(r->m))
			model_family_stage(r, s);
		else if (s == S)
			final_stage(r);
		else if (s & 1 && reads_only && s == S - 1)
			mlp_stage_reads(r, s / 2);
		else if (s & 1)
			mlp_stage(r, s / 2);
		else
			attn_stage(r, s / 2);
		r->valid = s + 1;
	}
	if (reads_only && s0 < S)
		r->valid = S - 1; /* the last MLP's other rows are stale */
	return 0;
}

int circ_run_copy_prefix(circ_run *dst, const circ_run *src, int stage, circ_error *e)
{
	size_t n, C;
	CIRC_ASSERT(dst != NULL && src != NULL);
	if (dst->m != src->m && (dst->L != src->L || dst->H != src->H || dst->C != src->C))
		return circ_errorf(e, "runs of different models");
	if (model_is_family(src->m))
		return circ_errorf(e, "copying a run's prefix is implemented for gpt2 only");
	if (dst->o.keep_nodes != src->o.keep_nodes ||
	    dst->o.acdc_convention != src->o.acdc_convention ||
	    dst->o.one_layer != src->o.one_layer)
		return circ_errorf(e, "runs with different options");
	if (stage < 0 || stage > 2 * src->L)
		return circ_errorf(e, "stage %d is out of range (0-%d)", stage, 2 * src->L);
	if (src->valid < stage)
		return circ_errorf(e, "the source run holds only %d stages",
				   src->valid < 0 ? 0 : src->valid);
	if (model_run_fit(dst, src->B, src->T, e) < 0)
		return -1;
	dst->B = src->B;
	dst->T = src->T;
	dst->have_bwd = 0;
	dst->used_embed = src->used_embed;
	n = bt(src);
	C = (size_t)src->C;
	memcpy(dst->tokens, src->tokens, n * sizeof(int32_t));
	for (int u = 0; u < src->U; u++)
		if (src->node[u] && circ_node_stage(src->m, u) < stage)
			memcpy(dst->node[u], src->node[u], n * C * sizeof(float));
	for (int s = 0; s <= stage; s++)
		memcpy(resid_at(dst, s), resid_at(src, s), n * C * sizeof(float));
	for (int s = 0; s < stage; s++) {
		size_t so = (size_t)s * src->rows, dso = (size_t)s * dst->rows;
		int l = s / 2;
		memcpy(dst->mean + dso, src->mean + so, n * sizeof(float));
		memcpy(dst->rstd + dso, src->rstd + so, n * sizeof(float));
		if (src->o.one_layer) { /* no layer's activations are kept */
		} else if (s & 1) {
			memcpy(dst->fc + (size_t)l * dst->rows * dst->F,
			       src->fc + (size_t)l * src->rows * src->F,
			       n * src->F * sizeof(float));
		} else {
			size_t aa = (size_t)src->B * src->H * src->T * src->T;
			/* att is (B, H, T, T) packed for the current T at the layer's base */
			memcpy(dst->qkv + (size_t)l * dst->rows * 3 * C,
			       src->qkv + (size_t)l * src->rows * 3 * C, n * 3 * C * sizeof(float));
			memcpy(dst->att + (size_t)l * dst->max_b * dst->H * dst->max_t * dst->max_t,
			       src->att + (size_t)l * src->max_b * src->H * src->max_t * src->max_t,
			       aa * sizeof(float));
			memcpy(dst->z + (size_t)l * dst->rows * C,
			       src->z + (size_t)l * src->rows * C, n * C * sizeof(float));
		}
	}
	for (int recv = 0; recv < src->R; recv++) {
		int s = circ_recv_stage(src->m, recv);
		if (s >= stage)
			continue;
		if (src->delta_on[recv] == CIRC_DELTA_SUM)
			return circ_errorf(
			    e,
			    "receiver %d's delta was a sum of rows not kept after its "
			    "stage: the prefix cannot be copied",
			    recv);
		dst->delta_on[recv] = src->delta_on[recv];
		if (src->delta_on[recv]) {
			model_delta_buffers(dst, recv, 1);
			memcpy(dst->delta[recv], src->delta[recv], n * C * sizeof(float));
			memcpy(delta_mean(dst, recv), delta_mean(src, recv), n * sizeof(float));
			memcpy(delta_rstd(dst, recv), delta_rstd(src, recv), n * sizeof(float));
		}
	}
	dst->valid = stage;
	dst->att_layer = -1; /* one_layer: nothing copied */
	return 0;
}
