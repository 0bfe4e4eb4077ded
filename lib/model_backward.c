/*
 * model_backward: the backward to receivers and, on request, to parameters
 * (see model.h, "backward").
 *
 * Gradients flow from dlogits through ln_f into dresid[2L], then layer by
 * layer: the MLP (its receiver gradient is the LayerNorm backward of its
 * path; dresid[2l+1] = dresid[2l+2] + that), then the attention: dz, the
 * attention backward into dqkv, and for each q/k/v receiver the gradient
 * through its D-column slice of W_QKV and ln_1 alone. A head's node
 * gradient is the residual gradient after its layer's attention, because
 * every receiver downstream of it reads that residual. When no receiver
 * gradient is wanted (no hook, not kept) and the layer has no deltas, the
 * fused projection (one GEMM) replaces the 3H small ones. With dweights,
 * each stage also adds its parameter gradients (weight gradients as GEMMs
 * over rows, biases and LayerNorm parameters as row sums); the embeddings
 * get theirs from the residual gradient at stage 0.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_impl.h"

/* ---- backward ---- */

const float *circ_run_resid_grad(const circ_run *r, int stage)
{
	if (!r->o.backward || stage < 0 || stage > 2 * r->L)
		return NULL;
	return r->dresid + (size_t)stage * r->rows * r->C;
}

static float *dresid_at(const circ_run *r, int s)
{
	return r->dresid + (size_t)s * r->rows * r->C;
}

/* Buffer of receiver recv's gradient (keep: its own; else its place among
 * its stage's receivers). */
float *model_recv_grad_buf(const circ_run *r, int recv)
{
	int s = circ_recv_stage(r->m, recv);
	if (s == circ_topo_stage_final(r->m->topo))
		return dresid_at(r, s);
	if (r->o.keep_recv_grads)
		return r->drecv + (size_t)recv * r->rows * r->C;
	return r->drecv + (size_t)(recv - r->m->topo->stage[s].first_recv) * r->rows * r->C;
}

const float *circ_run_recv_grad(const circ_run *r, int recv)
{
	if (!r->o.backward || recv < 0 || recv >= r->R)
		return NULL;
	if (!r->o.keep_recv_grads && circ_recv_stage(r->m, recv) != r->bwd_stage)
		return NULL;
	return model_recv_grad_buf(r, recv);
}

const float *circ_run_node_grad(const circ_run *r, int node)
{
	if (!r->o.backward || node < 0 || node >= r->U)
		return NULL;
	return dresid_at(r, circ_node_stage(r->m, node) + 1);
}

/* ---- parameter gradients ----
 * The forward keeps LayerNorm statistics, not outputs: the outputs that the
 * weight gradients need are rebuilt from the statistics, and the MLP's GELU
 * output from its stored pre-activation. Every sum over rows runs in row
 * order on the calling thread (OpenBLAS does the large ones), so gradients
 * are the same bytes for the same thread count. */

/* out (n, C) = (x - mean) * rstd * w + b, row by row. out may be x. */
static void ln_apply(float *out, const float *x, const float *mean, const float *rstd,
		     const float *w, const float *b, size_t n, int C)
{
	for (size_t i = 0; i < n; i++) {
		float m = mean[i], rs = rstd[i];
		for (int c = 0; c < C; c++) {
			size_t k = i * (size_t)C + (size_t)c;
			out[k] = (x[k] - m) * rs * w[c] + b[c];
		}
	}
}

static void bias_grad(const circ_run *r, float *db, const float *d, size_t m, int n, int ld)
{
	(r->o.reference ? circ_bias_bwd_ref : circ_bias_bwd)(db, d, (int)m, n, ld);
}

static void ln_param_grad(const circ_run *r, float *dw, float *db, const float *dout,
			  const float *inp, const float *mean, const float *rstd, size_t n)
{
	(r->o.reference ? circ_layernorm_bwd_params_ref
			: circ_layernorm_bwd_params)(dw, db, dout, inp, mean, rstd, (int)n, r->C);
}

/* dweights must be a circ_weights_alloc layout of the run's config; an
 * untied model needs its own lm_head buffer. */
static int check_dweights(const circ_run *r, const circ_weights *dw, circ_error *e)
{
	const circ_weights *w = &r->m->w;
	if (!dw->wte || !dw->wpe || !dw->layers || !dw->lnf_w || !dw->lnf_b || !dw->lm_head)
		return circ_errorf(e, "parameter gradients: dweights is not a circ_weights_alloc "
				      "layout");
	if (dw->n_params != circ_config_n_params(&r->m->cfg))
		return circ_errorf(e,
				   "parameter gradients: dweights holds %zu floats, the model "
				   "%zu",
				   dw->n_params, circ_config_n_params(&r->m->cfg));
	if (w->lm_head != w->wte && dw->lm_head == dw->wte)
		return circ_errorf(e,
				   "parameter gradients: the model's lm_head is not tied to wte, "
				   "so dweights needs its own lm_head buffer");
	return 0;
}

/* Embedding gradients from the residual gradient at stage 0: the token
 * rows (unless the forward took input_embed) and the positional rows
 * (unless the ACDC convention folded them into a given input_embed). */
static void embed_grad(const circ_run *r, circ_weights *dw)
{
	const float *g = dresid_at(r, 0);
	size_t C = (size_t)r->C;
	int tok = !r->used_embed, pos = !(r->o.acdc_convention && r->used_embed);
	for (int b = 0; b < r->B; b++)
		for (int t = 0; t < r->T; t++) {
			size_t row = (size_t)b * r->T + (size_t)t;
			if (tok)
				circ_vadd(dw->wte + (size_t)r->tokens[row] * C, g + row * C, C);
			if (pos)
				circ_vadd(dw->wpe + (size_t)t * C, g + row * C, C);
		}
}

int model_call_bhook(circ_run *r, const circ_bwd *b, int s, circ_error *e)
{
	r->bwd_stage = s;
	if (b->hook && b->hook(b->hook_ctx, r, s, e) < 0)
		return -1;
	return 0;
}

/* The output gradients of stage s's n nodes from b's out_hook into ng
 * (NULL: the residual gradient). */
int model_call_out_hook(circ_run *r, const circ_bwd *b, int s, int n, const float **ng,
			circ_error *e)
{
	for (int j = 0; j < n; j++)
		ng[j] = NULL;
	if (b->out_hook && b->out_hook(b->hook_ctx, r, s, n, ng, e) < 0)
		return -1;
	return 0;
}

/* The float32 unembedding as model_unembed_bwd's row source. */
typedef struct lm_src {
	const float *w; /* (V, C) */
	size_t C;
} lm_src;
static const float *lm_rows(void *ctx, size_t j0, size_t nj)
{
	const lm_src *s = ctx;
	(void)nj;
	return s->w + j0 * s->C;
}

int circ_backward(circ_run *r, const circ_bwd *b, circ_error *e)
{
	const circ_weights *w = &r->m->w;
	circ_weights *dw = b->dweights;
	size_t n, C = (size_t)r->C, C3 = 3 * C, D = (size_t)r->D, F = (size_t)r->F;
	size_t N = (size_t)r->n_read;
	int L = r->L, want_recv = r->o.keep_recv_grads || b->hook;
	if (!r->o.backward)
		return circ_errorf(e, "the run was made without a backward arena");
	if (!model_is_family(r->m) && r->valid != 2 * L + 1)
		return circ_errorf(e, "no complete forward to differentiate");
	if (r->read_none || !b->dlogits)
		return circ_errorf(e, "the forward read no logits (or no dlogits given)");
	circ_blas_threads(1);
	r->bwd_stage = -1;
	if (!r->bwd_ng) /* a stage's nodes: H heads, and a parallel block's MLP */
		r->bwd_ng = circ_xcalloc((size_t)r->H + 1, sizeof *r->bwd_ng);
	if (model_is_family(r->m)) {
		if (r->valid != circ_topo_stage_final(r->m->topo) + 1)
			return circ_errorf(e, "no complete forward to differentiate");
		return model_family_backward(r, b, e);
	}
	if (b->dparams)
		return circ_errorf(e, "parameter gradients of gpt2 go to dweights, not dparams");
	if (dw && check_dweights(r, dw, e) < 0)
		return -1;
	if (dw && b->out_hook)
		return circ_errorf(e, "parameter gradients with per-node output gradients");
	n = bt(r);

	/* ln_f and the unembedding, at the read rows only */
	{
		float *g = dresid_at(r, 2 * L), *tmp = r->d_z, *xr = r->s_ln;
		const float *d = circ_run_get_delta(r, circ_recv_logits(r->m));
		const float *x = resid_at(r, 2 * L);
		memset(g, 0, n * C * sizeof(float));
		lm_src src = {w->lm_head, C};
		model_unembed_bwd(r, b->dlogits, N, (size_t)r->V, C, lm_rows, &src, (size_t)r->V,
				  r->d_ln);
		for (size_t i = 0; i < N; i++) {
			size_t row = (size_t)r->reads[i].b * r->T + (size_t)r->reads[i].t;
			for (size_t c = 0; c < C; c++)
				xr[i * C + c] = x[row * C + c] + (d ? d[row * C + c] : 0.0f);
		}
		model_p_layernorm_bwd(r, tmp, NULL, r->d_ln, xr, NULL, r->lnf_mean, r->lnf_rstd,
				      w->lnf_w, N, 1);
		if (dw && N) { /* lm_head (V, C) += dlogits^T lnf; ln_f */
			model_gemm(r, 1, 0, r->V, r->C, (int)N, b->dlogits, r->V, r->lnf, r->C,
				   1.0f, dw->lm_head, r->C);
			ln_param_grad(r, dw->lnf_w, dw->lnf_b, r->d_ln, xr, r->lnf_mean,
				      r->lnf_rstd, N);
		}
		for (size_t i = 0; i < N; i++) {
			size_t row = (size_t)r->reads[i].b * r->T + (size_t)r->reads[i].t;
			for (size_t c = 0; c < C; c++)
				g[row * C + c] += tmp[i * C + c];
		}
		if (model_call_bhook(r, b, 2 * L, e) < 0)
			return -1;
	}
	for (int l = L - 1; l >= 0; l--) {
		const circ_layer_weights *lw = &w->layers[l];
		/* MLP */
		{
			int recv = circ_recv_mlp(r->m, l), s = 2 * l + 1;
			const float *g = dresid_at(r, s + 1), *gn;
			float *gm = dresid_at(r, s), *rg = model_recv_grad_buf(r, recv);
			const float *fc = r->fc + model_lslot(r, l) * r->rows * F;
			/* the receiver's input (residual + delta) is needed whole only
			 * for the parameter gradients; otherwise it is summed on the fly */
			const float *xs = resid_at(r, s),
				    *add = r->delta_on[recv] ? r->delta[recv] : NULL;
			const float *xin = dw ? model_recv_input(r, recv, xs, r->s_ln) : xs;
			ew_task dg = {r, r->d_fc, fc, NULL, r->m->cfg.act == CIRC_ACT_GELU};
			if (model_call_out_hook(r, b, s, 1, &gn, e) < 0)
				return -1;
			model_gemm(r, 0, 1, (int)n, r->F, r->C, gn ? gn : g, r->C, lw->fcproj_w,
				   r->C, 0.0f, r->d_fc, r->F);
			model_p_elementwise(r, model_dgelu_part, &dg, n * F);
			model_gemm(r, 0, 1, (int)n, r->C, r->F, r->d_fc, r->F, lw->fc_w, r->F, 0.0f,
				   r->d_ln, r->C);
			memcpy(gm, g, n * C * sizeof(float));
			model_p_layernorm_bwd(r, rg, gm, r->d_ln, xin, dw ? NULL : add,
					      r->mean + (size_t)s * r->rows,
					      r->rstd + (size_t)s * r->rows, lw->ln2_w, n, 1);
			if (dw) { /* c_proj (its input rebuilt: GELU of the stored fc), c_fc, ln_2
				   */
				circ_layer_weights *dl = &dw->layers[l];
				const float *mu = r->mean + (size_t)s * r->rows;
				const float *rs = r->rstd + (size_t)s * r->rows;
				ew_task gf = {r, r->s_gelu, fc, NULL,
					      r->m->cfg.act == CIRC_ACT_GELU};
				bias_grad(r, dl->fcproj_b, g, n, r->C, r->C);
				model_p_elementwise(r, model_gelu_part, &gf, n * F);
				model_gemm(r, 1, 0, r->F, r->C, (int)n, r->s_gelu, r->F, g, r->C,
					   1.0f, dl->fcproj_w, r->C);
				bias_grad(r, dl->fc_b, r->d_fc, n, r->F, r->F);
				ln_apply(r->s_ln2, xin, mu, rs, lw->ln2_w, lw->ln2_b, n, r->C);
				model_gemm(r, 1, 0, r->C, r->F, (int)n, r->s_ln2, r->C, r->d_fc,
					   r->F, 1.0f, dl->fc_w, r->F);
				ln_param_grad(r, dl->ln2_w, dl->ln2_b, r->d_ln, xin, mu, rs, n);
			}
			if (model_call_bhook(r, b, s, e) < 0)
				return -1;
		}
		/* attention */
		{
			int s = 2 * l, r0 = circ_recv_qkv(r->m, l, 0, CIRC_RECV_Q), npatched = 0;
			const float *g = dresid_at(r, s + 1), *x = resid_at(r, s);
			float *gx = dresid_at(r, s);
			const float *qkv = r->qkv + model_lslot(r, l) * r->rows * C3;
			const float *att = model_att(r, l);
			int own = 0;
			for (int j = 0; j < 3 * r->H; j++)
				npatched += r->delta_on[r0 + j];
			if (model_call_out_hook(r, b, s, r->H, r->bwd_ng, e) < 0)
				return -1;
			for (int h = 0; h < r->H; h++)
				own |= r->bwd_ng[h] != NULL;
			if (!own)
				model_gemm(r, 0, 1, (int)n, r->C, r->C, g, r->C, lw->proj_w, r->C,
					   0.0f, r->d_z, r->C);
			else /* each head's dz from its own output gradient */
				for (int h = 0; h < r->H; h++)
					model_gemm(r, 0, 1, (int)n, r->D, r->C,
						   r->bwd_ng[h] ? r->bwd_ng[h] : g, r->C,
						   lw->proj_w + (size_t)h * D * C, r->C, 0.0f,
						   r->d_z + (size_t)h * D, r->C);
			memset(r->d_qkv, 0, n * C3 * sizeof(float));
			{
				attn_task t = {r, NULL, NULL, r->d_qkv, qkv, r->d_z, att};
				circ_pool_for(r->pool, (size_t)r->B, model_attn_bwd_part, &t);
			}
			memcpy(gx, g, n * C * sizeof(float));
			if (dw) { /* c_proj; the QKV bias; W_QKV for the receivers without a
				   * delta (their shared ln_1 output is rebuilt into d_z, free now)
				   */
				circ_layer_weights *dl = &dw->layers[l];
				const float *z = r->z + model_lslot(r, l) * r->rows * C;
				bias_grad(r, dl->proj_b, g, n, r->C, r->C);
				model_gemm(r, 1, 0, r->C, r->C, (int)n, z, r->C, g, r->C, 1.0f,
					   dl->proj_w, r->C);
				bias_grad(r, dl->attn_b, r->d_qkv, n, (int)C3, (int)C3);
				if (npatched < 3 * r->H)
					ln_apply(r->d_z, x, r->mean + (size_t)s * r->rows,
						 r->rstd + (size_t)s * r->rows, lw->ln1_w,
						 lw->ln1_b, n, r->C);
				if (npatched == 0)
					model_gemm(r, 1, 0, r->C, (int)C3, (int)n, r->d_z, r->C,
						   r->d_qkv, (int)C3, 1.0f, dl->attn_w, (int)C3);
				else
					for (int j = 0; j < 3 * r->H; j++) {
						size_t col =
						    (size_t)(j % 3) * C + (size_t)(j / 3) * D;
						if (r->delta_on[r0 + j])
							continue;
						model_gemm(r, 1, 0, r->C, r->D, (int)n, r->d_z,
							   r->C, r->d_qkv + col, (int)C3, 1.0f,
							   dl->attn_w + col, (int)C3);
					}
			}
			if (!want_recv && npatched == 0) {
				model_gemm(r, 0, 1, (int)n, r->C, (int)C3, r->d_qkv, (int)C3,
					   lw->attn_w, (int)C3, 0.0f, r->d_ln, r->C);
				model_p_layernorm_bwd(
				    r, gx, NULL, r->d_ln, x, NULL, r->mean + (size_t)s * r->rows,
				    r->rstd + (size_t)s * r->rows, lw->ln1_w, n, 0);
				if (dw)
					ln_param_grad(r, dw->layers[l].ln1_w, dw->layers[l].ln1_b,
						      r->d_ln, x, r->mean + (size_t)s * r->rows,
						      r->rstd + (size_t)s * r->rows, n);
			} else {
				for (int h = 0; h < r->H; h++)
					for (int c = 0; c < 3; c++) {
						int recv = circ_recv_qkv(r->m, l, h, c);
						size_t col = (size_t)c * C + (size_t)h * D;
						float *rg = want_recv ? model_recv_grad_buf(r, recv)
								      : r->s_ln2;
						const float *add =
						    r->delta_on[recv] ? r->delta[recv] : NULL;
						const float *xin =
						    dw ? model_recv_input(r, recv, x, r->s_ln) : x;
						const float *mu =
						    r->delta_on[recv]
							? delta_mean(r, recv)
							: r->mean + (size_t)s * r->rows;
						const float *rs =
						    r->delta_on[recv]
							? delta_rstd(r, recv)
							: r->rstd + (size_t)s * r->rows;
						model_gemm(r, 0, 1, (int)n, r->C, r->D,
							   r->d_qkv + col, (int)C3,
							   lw->attn_w + col, (int)C3, 0.0f, r->d_ln,
							   r->C);
						model_p_layernorm_bwd(r, rg, gx, r->d_ln, xin,
								      dw ? NULL : add, mu, rs,
								      lw->ln1_w, n, 1);
						if (!dw)
							continue;
						ln_param_grad(r, dw->layers[l].ln1_w,
							      dw->layers[l].ln1_b, r->d_ln, xin, mu,
							      rs, n);
						if (!r->delta_on[recv])
							continue;
						/* this receiver's own ln_1 output, in place of its
						 * input (s_ln), for its W_QKV columns */
						ln_apply(r->s_ln, xin, mu, rs, lw->ln1_w, lw->ln1_b,
							 n, r->C);
						model_gemm(r, 1, 0, r->C, r->D, (int)n, r->s_ln,
							   r->C, r->d_qkv + col, (int)C3, 1.0f,
							   dw->layers[l].attn_w + col, (int)C3);
					}
			}
			if (model_call_bhook(r, b, s, e) < 0)
				return -1;
		}
	}
	if (dw)
		embed_grad(r, dw);
	r->have_bwd = 1;
	return 0;
}
