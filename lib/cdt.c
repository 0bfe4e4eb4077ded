/*
 * cdt: the CD-T decomposition (see cdt.h for the rules) over the clean run
 * of a batch, edge scores from it, and the paper's circuit construction.
 *
 * Dimension letters: S source sets, B sequences, T tokens, C = n_embd, H
 * heads, D the head width (C/H for GPT-2), K key/value heads, Q = H*D,
 * F = n_inner, V vocabulary, N read rows, U upstream nodes.
 *
 * GPT-2 goes through attn_stage / mlp_stage / final_stage (Conv1D weights);
 * every other family through fam_stage (model_family.c's weights, read
 * from model_impl.h), stage by stage of the model's topology.
 * Every decomposed activation is a pair of (S*B*T, width) matrices, rel and
 * irrel, set-major, so that one matrix product serves every set at once.
 *
 * The attention weights come from the run (the clean forward): they are the
 * weights of rel + irrel, which CD-T holds constant. Everything else is
 * recomputed from rel and irrel.
 */
#include "cdt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "circuit.h"
#include "kernels.h"
#include "model_impl.h"
#include "safetensors.h"

void circ_cdt_opts_default(circ_cdt_opts *o)
{
	o->normalize = 1;
}

/* ---- the split rules ----
 * Every rule keeps rel + irrel equal to the whole activation, so only rel is
 * carried: the whole activation rides along as one more set (index S, the
 * model's own forward), and irrel is that minus rel wherever a rule needs it.
 * A matrix product then costs S + 1 row sets, not 2 S. Arrays are (S + 1)
 * row sets of `rows` rows of n; the last set is the total. */

/* Adds bias b (n) to the pre-bias products x: to each set's rel in
 * proportion to |rel| and |irrel| (= |total - rel|; where both are 0 it goes
 * to irrel, that is nowhere), wholly to the total. b NULL: nothing. */
static void share_bias(float *x, int S, size_t rows, int n, const float *b)
{
	size_t nn = rows * (size_t)n;
	float *t = x + (size_t)S * nn;
	if (!b)
		return;
	for (int g = 0; g < S; g++) {
		float *r = x + (size_t)g * nn;
		for (size_t k = 0; k < nn; k++) {
			float ar = fabsf(r[k]), ai = fabsf(t[k] - r[k]), tot = ar + ai;
			if (tot > 0)
				r[k] += b[k % (size_t)n] * (ar / tot);
		}
	}
	for (size_t k = 0; k < nn; k++)
		t[k] += b[k % (size_t)n];
}

/* The reference code's sign rule: where rel and irrel differ in sign, the
 * larger in magnitude takes the sum (rel := total, or rel := 0). */
static void normalize(float *x, int S, size_t nn)
{
	const float *t = x + (size_t)S * nn;
	for (int g = 0; g < S; g++) {
		float *r = x + (size_t)g * nn;
		for (size_t k = 0; k < nn; k++) {
			float i = t[k] - r[k];
			if (r[k] * i < 0)
				r[k] = fabsf(r[k]) >= fabsf(i) ? t[k] : 0;
		}
	}
}

/* LayerNorm split: each part centred by its own mean, scaled by the whole
 * row's rstd and w; the bias shared by |rel|, |irrel| of the input (to
 * irrel where both are 0). y, x: (S + 1) sets of `rows` rows of C. */
static void ln_split(float *y, const float *x, int S, size_t rows, int C, const float *w,
		     const float *b, double eps)
{
	size_t nn = rows * (size_t)C;
	const float *xt = x + (size_t)S * nn;
	float *yt = y + (size_t)S * nn;
	for (size_t row = 0; row < rows; row++) {
		const float *t = xt + row * (size_t)C;
		double mt = 0, var = 0;
		for (int c = 0; c < C; c++)
			mt += t[c];
		mt /= C;
		for (int c = 0; c < C; c++)
			var += (t[c] - mt) * (t[c] - mt);
		float rstd = (float)(1.0 / sqrt(var / C + eps));
		for (int g = 0; g < S; g++) {
			const float *r = x + (size_t)g * nn + row * (size_t)C;
			float *o = y + (size_t)g * nn + row * (size_t)C;
			double mr = 0;
			for (int c = 0; c < C; c++)
				mr += r[c];
			mr /= C;
			for (int c = 0; c < C; c++) {
				float ar = fabsf(r[c]), ai = fabsf(t[c] - r[c]), tot = ar + ai;
				o[c] = (float)(r[c] - mr) * rstd * w[c];
				if (b && tot > 0)
					o[c] += b[c] * (ar / tot);
			}
		}
		for (int c = 0; c < C; c++)
			yt[row * (size_t)C + (size_t)c] =
			    (float)(t[c] - mt) * rstd * w[c] + (b ? b[c] : 0);
	}
}

static float act_scalar(float x, circ_act a)
{
	switch (a) {
	case CIRC_ACT_GELU: return (float)(0.5 * x * (1 + erf(x / sqrt(2.0))));
	case CIRC_ACT_SILU: return (float)(x / (1 + exp(-(double)x)));
	default: break;
	}
	double u = 0.7978845608028654 * (x + 0.044715 * (double)x * x * x);
	return (float)(0.5 * x * (1 + tanh(u)));
}

/* act over n floats (out may be inp): circ's GELU kernels, SiLU here. */
static void act_fwd(float *out, const float *inp, size_t n, circ_act a)
{
	if (a == CIRC_ACT_SILU)
		for (size_t k = 0; k < n; k++)
			out[k] = act_scalar(inp[k], a);
	else
		circ_gelu_fwd(out, inp, n, a == CIRC_ACT_GELU);
}

/* The paper's rule for the non-linearity, in place: irrel' = act(irrel),
 * rel' = act(total) - act(irrel); the total becomes act(total). tmp: nn
 * floats. */
static void act_split(float *x, int S, size_t nn, circ_act a, float *tmp)
{
	float *t = x + (size_t)S * nn;
	for (int g = 0; g < S; g++) {
		float *r = x + (size_t)g * nn;
		for (size_t k = 0; k < nn; k++)
			tmp[k] = t[k] - r[k];
		act_fwd(tmp, tmp, nn, a);
		for (size_t k = 0; k < nn; k++)
			r[k] = tmp[k];
	}
	act_fwd(t, t, nn, a);
	for (int g = 0; g < S; g++) {
		float *r = x + (size_t)g * nn;
		for (size_t k = 0; k < nn; k++)
			r[k] = t[k] - r[k];
	}
}

/* ---- matrix products over the run's pool ---- */

typedef struct gemm_job {
	const float *a, *b;
	float *c;
	int tb, n, k, lda, ldb, ldc;
} gemm_job;

static void gemm_rows(void *ctx, size_t begin, size_t end)
{
	const gemm_job *j = ctx;
	if (end > begin)
		circ_gemm(0, j->tb, (int)(end - begin), j->n, j->k, 1.0f,
			  j->a + begin * (size_t)j->lda, j->lda, j->b, j->ldb, 0.0f,
			  j->c + begin * (size_t)j->ldc, j->ldc);
}

/* c (m, n) = a (m, k) op(b), op(b) b (k, n) or, tb, b (n, k) transposed;
 * rows split over the pool. */
static void gemm_t(circ_pool *pool, int tb, size_t m, int n, int k, const float *a, int lda,
		   const float *b, int ldb, float *c, int ldc)
{
	gemm_job j = {a, b, c, tb, n, k, lda, ldb, ldc};
	circ_pool_for(pool, m, gemm_rows, &j);
}

static void gemm(circ_pool *pool, size_t m, int n, int k, const float *a, int lda, const float *b,
		 int ldb, float *c, int ldc)
{
	gemm_t(pool, 0, m, n, k, a, lda, b, ldb, c, ldc);
}

/* ---- the decomposition ---- */

static int check_model(const circ_config *c, circ_error *e)
{
	if (c->norm != CIRC_NORM_LAYERNORM || c->norm_place != CIRC_NORM_PRE ||
	    c->pos != CIRC_POS_LEARNED || c->mlp != CIRC_MLP_PLAIN || c->parallel_residual ||
	    c->final_softcap != 0 || c->qk_norm != CIRC_QK_NORM_NONE ||
	    (c->n_kv_head && c->n_kv_head != c->n_head) ||
	    (c->head_dim && c->head_dim * c->n_head != c->n_embd) ||
	    (c->embed_scale != 0 && c->embed_scale != 1))
		return circ_errorf(e,
				   "cd-t: model_type '%s' with another architecture: a gpt2 model "
				   "must be GPT-2-shaped (LayerNorm before each block, learned "
				   "positions, a plain MLP)",
				   circ_model_type_name(c->model_type));
	return 0;
}

typedef struct cdt_state {
	circ_run *r;
	const circ_config *c;
	const circ_weights *w;
	const circ_topology *t;
	circ_pool *pool;
	int S, B, T, C, H, D, F, U;
	size_t BT, SBT; /* SBT: (S + 1) * B * T rows, the total included */
	const uint8_t *src, *whole;
	int normalize;
	float *x;	    /* (S+1, BT, C) the residual's rel, then the total */
	float *l;	    /* (S+1, BT, C) LayerNorm outputs, then z */
	float *v;	    /* (S+1, BT, C) values */
	float *h;	    /* (S+1, BT, F) MLP hidden */
	float *o;	    /* (S+1, BT, C) one node's output */
	float *irrel;	    /* (S, BT, C) irrel shown to the hook */
	float *tmp;	    /* (BT, F) scratch */
	circ_cdt_hook hook; /* may be NULL */
	void *ctx;
	/* families other than GPT-2 (fam_*): their weights, D = head_dim,
	 * K key/value heads, Q = H*D */
	const fam_weights *fw;
	int K, Q;
	float *z;    /* (S+1, BT, Q) the heads' z */
	float *u;    /* (S+1, BT, F) a gated MLP's up projection */
	float *x0;   /* (S+1, BT, C) a parallel block's input */
	float *rs;   /* (BT) a post norm's scale */
	float *wbuf; /* a narrow matrix in f32 */
	size_t wcap; /* floats of wbuf */
} cdt_state;

/* Shows rel of sets 0..S-1 of x (nn floats per set) and irrel = total -
 * rel, made into buf. */
static int show(cdt_state *st, circ_cdt_point what, int index, const float *x, size_t nn,
		float *buf, circ_error *e)
{
	const float *t = x + (size_t)st->S * nn;
	if (!st->hook)
		return 0;
	for (int g = 0; g < st->S; g++)
		for (size_t k = 0; k < nn; k++)
			buf[(size_t)g * nn + k] = t[k] - x[(size_t)g * nn + k];
	return st->hook(st->ctx, what, index, x, buf, e);
}

/* Node u's output (o) made wholly relevant in the sets it is a source of;
 * shown; added to the residual. */
static int emit_node(cdt_state *st, int u, circ_error *e)
{
	size_t btc = st->BT * (size_t)st->C;
	const float *t = st->o + (size_t)st->S * btc;
	for (int g = 0; g < st->S; g++)
		if (st->src[(size_t)g * (size_t)st->U + (size_t)u])
			memcpy(st->o + (size_t)g * btc, t, btc * sizeof(float));
	if (show(st, CIRC_CDT_NODE, u, st->o, btc, st->irrel, e) < 0)
		return -1;
	circ_vadd(st->x, st->o, st->SBT * (size_t)st->C);
	return 0;
}

/* A constant added to the residual: to rel in the whole-model sets and the
 * total (in the others it is irrel: total - rel grows by it). cst is
 * (B*T, C) when per_row, else (C). */
static void add_constant(cdt_state *st, const float *cst, int per_row)
{
	size_t btc = st->BT * (size_t)st->C;
	for (int g = 0; g <= st->S; g++) {
		float *x = st->x + (size_t)g * btc;
		if (g < st->S && !(st->whole && st->whole[g]))
			continue;
		for (size_t row = 0; row < st->BT; row++)
			for (int c = 0; c < st->C; c++)
				x[row * (size_t)st->C + (size_t)c] +=
				    cst[(per_row ? row * (size_t)st->C : 0) + (size_t)c];
	}
}

static int attn_stage(cdt_state *st, int l, circ_error *e)
{
	const circ_layer_weights *lw = &st->w->layers[l];
	const float *att = circ_run_attn(st->r, l); /* (B, H, T, T) */
	int C = st->C, D = st->D, T = st->T;
	size_t SBT = st->SBT;
	ln_split(st->l, st->x, st->S, st->BT, C, lw->ln1_w, lw->ln1_b, st->c->layer_norm_epsilon);
	/* values: columns 2C..3C of attn_w */
	gemm(st->pool, SBT, C, C, st->l, C, lw->attn_w + 2 * C, 3 * C, st->v, C);
	share_bias(st->v, st->S, st->BT, C, lw->attn_b ? lw->attn_b + 2 * C : NULL);
	/* z = A v per head, into l (the LayerNorm outputs are done with) */
	memset(st->l, 0, SBT * (size_t)C * sizeof(float));
	for (int g = 0; g <= st->S; g++)
		for (int b = 0; b < st->B; b++) {
			size_t base = ((size_t)g * st->B + (size_t)b) * (size_t)T;
			for (int h = 0; h < st->H; h++)
				for (int t = 0; t < T; t++) {
					const float *a =
					    att +
					    (((size_t)b * st->H + (size_t)h) * T + t) * (size_t)T;
					float *zo = st->l + (base + (size_t)t) * (size_t)C +
						    (size_t)h * (size_t)D;
					for (int j = 0; j <= t; j++) {
						const float *vv = st->v +
								  (base + (size_t)j) * (size_t)C +
								  (size_t)h * (size_t)D;
						for (int d = 0; d < D; d++)
							zo[d] += a[j] * vv[d];
					}
				}
		}
	for (int h = 0; h < st->H; h++) {
		const float *wo = lw->proj_w + (size_t)h * (size_t)D * (size_t)C;
		gemm(st->pool, SBT, C, D, st->l + (size_t)h * (size_t)D, C, wo, C, st->o, C);
		if (emit_node(st, circ_topo_node_head(st->t, l, h), e) < 0)
			return -1;
	}
	if (lw->proj_b)
		add_constant(st, lw->proj_b, 0);
	return 0;
}

static int mlp_stage(cdt_state *st, int l, circ_error *e)
{
	const circ_layer_weights *lw = &st->w->layers[l];
	int C = st->C, F = st->F;
	size_t SBT = st->SBT;
	ln_split(st->l, st->x, st->S, st->BT, C, lw->ln2_w, lw->ln2_b, st->c->layer_norm_epsilon);
	gemm(st->pool, SBT, F, C, st->l, C, lw->fc_w, F, st->h, F);
	share_bias(st->h, st->S, st->BT, F, lw->fc_b);
	if (st->normalize)
		normalize(st->h, st->S, st->BT * (size_t)F);
	act_split(st->h, st->S, st->BT * (size_t)F, st->c->act, st->tmp);
	gemm(st->pool, SBT, C, F, st->h, F, lw->fcproj_w, C, st->o, C);
	share_bias(st->o, st->S, st->BT, C, lw->fcproj_b);
	if (st->normalize)
		normalize(st->o, st->S, st->BT * (size_t)C);
	if (emit_node(st, circ_topo_node_mlp(st->t, l), e) < 0)
		return -1;
	if (st->normalize)
		normalize(st->x, st->S, st->BT * (size_t)C);
	return 0;
}

/* gx ((S+1) sets of N rows of C) = the residual's rows at the read rows. */
static void gather_reads(const cdt_state *st, float *gx, const circ_read *reads, int N)
{
	size_t C = (size_t)st->C;
	for (int g = 0; g <= st->S; g++)
		for (int n = 0; n < N; n++) {
			size_t row = ((size_t)g * st->B + (size_t)reads[n].b) * (size_t)st->T +
				     (size_t)reads[n].t;
			memcpy(gx + ((size_t)g * (size_t)N + (size_t)n) * C, st->x + row * C,
			       C * sizeof *gx);
		}
}

/* ln_f and the unembedding at the read rows. */
static int final_stage(cdt_state *st, circ_error *e)
{
	int N, C = st->C, V = st->c->vocab_size;
	const circ_read *reads = circ_run_reads(st->r, &N);
	size_t SN = (size_t)(st->S + 1) * (size_t)N;
	float *gx = circ_xmalloc(SN * (size_t)C * sizeof *gx);
	float *gy = circ_xmalloc(SN * (size_t)C * sizeof *gy);
	float *z = circ_xmalloc(SN * (size_t)V * sizeof *z);
	float *zi = st->hook ? circ_xmalloc((SN - (size_t)N) * (size_t)V * sizeof *zi) : NULL;
	int rc;
	gather_reads(st, gx, reads, N);
	ln_split(gy, gx, st->S, (size_t)N, C, st->w->lnf_w, st->w->lnf_b,
		 st->c->layer_norm_epsilon);
	gemm_t(st->pool, 1, SN, V, C, gy, C, st->w->lm_head, C, z, V);
	rc = show(st, CIRC_CDT_LOGITS, 0, z, (size_t)N * (size_t)V, zi, e);
	free(gx);
	free(gy);
	free(z);
	free(zi);
	return rc;
}

/* ---- families other than GPT-2 (lib/model_family.c's forward) ----
 * The same rules on the families' pieces (cdt.h): weights in nn.Linear
 * layout (out, in), matrices perhaps narrow (F16, BF16: converted here). */

/* Rows [row0, row0 + n) of matrix a (cols wide) in f32: in place, or
 * converted into st->wbuf (valid until the next call). */
static const float *fam_f32(cdt_state *st, const fam_mat *a, size_t row0, size_t n, size_t cols)
{
	if (a->dt == CIRC_F32)
		return (const float *)a->p + row0 * cols;
	if (n * cols > st->wcap) {
		free(st->wbuf);
		st->wcap = n * cols;
		st->wbuf = circ_xmalloc(st->wcap * sizeof(float));
	}
	circ_st_to_f32(st->wbuf, (const char *)a->p + row0 * cols * 2, a->dt, n * cols);
	return st->wbuf;
}

/* y (S+1 sets of BT rows of n) = x (ld ldx) W^T, W (n, k); bias shared. */
static void fam_linear(cdt_state *st, float *y, const float *x, int ldx, int n, int k,
		       const fam_mat *W, const float *bias)
{
	const float *w = fam_f32(st, W, 0, (size_t)n, (size_t)k);
	gemm_t(st->pool, 1, st->SBT, n, k, x, ldx, w, k, y, n);
	share_bias(y, st->S, st->BT, n, bias);
}

/* RMSNorm split: each part times the whole row's rsqrt(mean(x^2) + eps)
 * and (offset + w); no bias. y, x: (S + 1) sets of `rows` rows of C. */
static void rms_split(float *y, const float *x, int S, size_t rows, int C, const float *w,
		      double off, double eps)
{
	size_t nn = rows * (size_t)C;
	for (size_t row = 0; row < rows; row++) {
		const float *t = x + (size_t)S * nn + row * (size_t)C;
		double s = 0;
		for (int c = 0; c < C; c++)
			s += (double)t[c] * t[c];
		float rs = (float)(1.0 / sqrt(s / C + eps));
		for (int g = 0; g <= S; g++) {
			const float *r = x + (size_t)g * nn + row * (size_t)C;
			float *o = y + (size_t)g * nn + row * (size_t)C;
			for (int c = 0; c < C; c++)
				o[c] = r[c] * rs * ((float)off + w[c]);
		}
	}
}

/* The family's block or final norm (LayerNorm or RMSNorm) split. */
static void fam_norm(const cdt_state *st, float *y, const float *x, size_t rows, const float *w,
		     const float *b)
{
	if (st->c->norm == CIRC_NORM_LAYERNORM)
		ln_split(y, x, st->S, rows, st->C, w, b, st->c->layer_norm_epsilon);
	else
		rms_split(y, x, st->S, rows, st->C, w, st->c->norm_offset,
			  st->c->layer_norm_epsilon);
}

/* A norm after a block (Gemma 2 and 3, OLMo 2), whose output the block's
 * nodes share: every set of x (S+1, BT, C) times st->rs[row] (the
 * scale of the whole block output, made by post_scale_of) and (off + w). */
static void post_scale(const cdt_state *st, float *x, const float *w)
{
	size_t nn = st->BT * (size_t)st->C;
	float off = (float)st->c->norm_offset;
	for (int g = 0; g <= st->S; g++)
		for (size_t row = 0; row < st->BT; row++) {
			float *o = x + (size_t)g * nn + row * (size_t)st->C;
			for (int c = 0; c < st->C; c++)
				o[c] *= st->rs[row] * (off + w[c]);
		}
}

/* st->rs (BT) = rsqrt(mean(a^2) + eps) of each row of a (BT, C). */
static void post_scale_of(cdt_state *st, const float *a)
{
	for (size_t row = 0; row < st->BT; row++) {
		double s = 0;
		for (int c = 0; c < st->C; c++)
			s += (double)a[row * (size_t)st->C + (size_t)c] *
			     a[row * (size_t)st->C + (size_t)c];
		st->rs[row] = (float)(1.0 / sqrt(s / st->C + st->c->layer_norm_epsilon));
	}
}

/* The gated MLP's product rule, in place in a (the gate's pre-activation):
 * irrel' = act(irrel_a) * irrel_u, rel' = act(a) u - irrel', so that rel'
 * holds act's relevant part times u, and both cross terms. tmp: nn. */
static void gate_split(float *a, const float *u, int S, size_t nn, circ_act act, float *tmp)
{
	float *at = a + (size_t)S * nn;
	const float *ut = u + (size_t)S * nn;
	for (int g = 0; g < S; g++) {
		float *r = a + (size_t)g * nn;
		const float *ur = u + (size_t)g * nn;
		for (size_t k = 0; k < nn; k++)
			tmp[k] = at[k] - r[k];
		act_fwd(tmp, tmp, nn, act);
		for (size_t k = 0; k < nn; k++)
			r[k] = tmp[k] * (ut[k] - ur[k]);
	}
	act_fwd(at, at, nn, act);
	for (size_t k = 0; k < nn; k++)
		at[k] *= ut[k];
	for (int g = 0; g < S; g++) {
		float *r = a + (size_t)g * nn;
		for (size_t k = 0; k < nn; k++)
			r[k] = at[k] - r[k];
	}
}

/* Layer l's attention reading xin ((S+1, BT, C), the stage's residual);
 * its heads emitted into st->x. */
static int fam_attn_stage(cdt_state *st, int l, const float *xin, circ_error *e)
{
	const fam_layer *y = &st->fw->layers[l];
	const float *att = circ_run_attn(st->r, l), *xn = xin, *wo;
	int C = st->C, D = st->D, T = st->T, H = st->H, Q = st->Q, KD = st->K * st->D;
	int per = st->H / st->K;
	size_t btc = st->BT * (size_t)C;
	if (st->c->norm_place != CIRC_NORM_POST) {
		fam_norm(st, st->l, xin, st->BT, y->n1_w, y->n1_b);
		xn = st->l;
	}
	fam_linear(st, st->v, xn, C, KD, C, &y->v_w, y->v_b);
	memset(st->z, 0, st->SBT * (size_t)Q * sizeof(float));
	for (int g = 0; g <= st->S; g++)
		for (int b = 0; b < st->B; b++) {
			size_t base = ((size_t)g * st->B + (size_t)b) * (size_t)T;
			for (int h = 0; h < H; h++)
				for (int t = 0; t < T; t++) {
					const float *a =
					    att + (((size_t)b * H + (size_t)h) * T + t) * (size_t)T;
					float *zo = st->z + (base + (size_t)t) * (size_t)Q +
						    (size_t)h * (size_t)D;
					for (int j = 0; j <= t; j++) {
						const float *vv = st->v +
								  (base + (size_t)j) * (size_t)KD +
								  (size_t)(h / per) * (size_t)D;
						if (a[j] == 0.0f)
							continue;
						for (int d = 0; d < D; d++)
							zo[d] += a[j] * vv[d];
					}
				}
		}
	wo = fam_f32(st, &y->o_w, 0, (size_t)C, (size_t)Q); /* (C, Q) */
	if (st->c->norm_place != CIRC_NORM_PRE) {
		/* the scale of the whole attention output, from the total */
		float *a = st->o + (size_t)st->S * btc;
		gemm_t(st->pool, 1, st->BT, C, Q, st->z + (size_t)st->S * st->BT * (size_t)Q, Q, wo,
		       Q, a, C);
		post_scale_of(st, a);
	}
	for (int h = 0; h < H; h++) {
		gemm_t(st->pool, 1, st->SBT, C, D, st->z + (size_t)h * (size_t)D, Q,
		       wo + (size_t)h * (size_t)D, Q, st->o, C);
		if (st->c->norm_place != CIRC_NORM_PRE)
			post_scale(st, st->o, y->pa_w);
		if (emit_node(st, circ_topo_node_head(st->t, l, h), e) < 0)
			return -1;
	}
	if (y->o_b)
		add_constant(st, y->o_b, 0);
	return 0;
}

/* Layer l's MLP reading xin; its node emitted into st->x. */
static int fam_mlp_stage(cdt_state *st, int l, const float *xin, circ_error *e)
{
	const fam_layer *y = &st->fw->layers[l];
	const float *xn = xin;
	int C = st->C, F = st->F, gated = st->c->mlp == CIRC_MLP_GATED;
	size_t nf = st->BT * (size_t)F, btc = st->BT * (size_t)C;
	if (st->c->norm_place != CIRC_NORM_POST) {
		fam_norm(st, st->l, xin, st->BT, y->n2_w, y->n2_b);
		xn = st->l;
	}
	fam_linear(st, st->h, xn, C, F, C, &y->fc_w, y->fc_b);
	if (gated)
		fam_linear(st, st->u, xn, C, F, C, &y->up_w, y->up_b);
	if (st->normalize) {
		normalize(st->h, st->S, nf);
		if (gated)
			normalize(st->u, st->S, nf);
	}
	if (gated)
		gate_split(st->h, st->u, st->S, nf, st->c->act, st->tmp);
	else
		act_split(st->h, st->S, nf, st->c->act, st->tmp);
	fam_linear(st, st->o, st->h, F, C, F, &y->dn_w, y->dn_b);
	if (st->c->norm_place != CIRC_NORM_PRE) {
		post_scale_of(st, st->o + (size_t)st->S * btc);
		post_scale(st, st->o, y->pm_w);
	}
	if (st->normalize)
		normalize(st->o, st->S, btc);
	return emit_node(st, circ_topo_node_mlp(st->t, l), e);
}

/* The final norm at the read rows, the unembedding (by chunks of the
 * vocabulary) and the logits' soft cap, by the activation's rule. */
static int fam_final_stage(cdt_state *st, circ_error *e)
{
	int N, C = st->C, V = st->c->vocab_size;
	const circ_read *reads = circ_run_reads(st->r, &N);
	size_t SN = (size_t)(st->S + 1) * (size_t)N, NV = (size_t)N * (size_t)V;
	const fam_mat *lm = &st->fw->lm_head;
	size_t chunk = lm->dt == CIRC_F32 ? (size_t)V : 4096;
	float *gx = circ_xmalloc(SN * (size_t)C * sizeof *gx);
	float *gy = circ_xmalloc(SN * (size_t)C * sizeof *gy);
	float *z = circ_xmalloc(SN * (size_t)V * sizeof *z);
	float *zi = st->hook ? circ_xmalloc((SN - (size_t)N) * (size_t)V * sizeof *zi) : NULL;
	double cap = st->c->final_softcap;
	int rc;
	gather_reads(st, gx, reads, N);
	fam_norm(st, gy, gx, (size_t)N, st->fw->final_w, st->fw->final_b);
	for (size_t j0 = 0; j0 < (size_t)V; j0 += chunk) {
		size_t nj = (size_t)V - j0 < chunk ? (size_t)V - j0 : chunk;
		gemm_t(st->pool, 1, SN, (int)nj, C, gy, C, fam_f32(st, lm, j0, nj, (size_t)C), C,
		       z + j0, V);
	}
	if (cap > 0) {
		/* irrel' = cap tanh(irrel / cap), rel' = the capped total - irrel' */
		float *zt = z + (size_t)st->S * NV, fc = (float)cap;
		for (size_t k = 0; k < NV; k++) {
			float ct = fc * tanhf(zt[k] / fc);
			for (int g = 0; g < st->S; g++) {
				float *zr = z + (size_t)g * NV + k;
				*zr = ct - fc * tanhf((zt[k] - *zr) / fc);
			}
			zt[k] = ct;
		}
	}
	rc = show(st, CIRC_CDT_LOGITS, 0, z, NV, zi, e);
	free(gx);
	free(gy);
	free(z);
	free(zi);
	return rc;
}

/* Stage s of a family: attention, MLP, both from the same input (parallel
 * blocks), or the final one; the sign rule after each layer. */
static int fam_stage(cdt_state *st, int s, circ_error *e)
{
	const circ_topo_stage *ts = &st->t->stage[s];
	size_t n = st->SBT * (size_t)st->C;
	int rc;
	switch (ts->kind) {
	case CIRC_STAGE_FINAL: return fam_final_stage(st, e);
	case CIRC_STAGE_ATTN: return fam_attn_stage(st, ts->layer, st->x, e);
	case CIRC_STAGE_MLP: rc = fam_mlp_stage(st, ts->layer, st->x, e); break;
	case CIRC_STAGE_BLOCK:
		memcpy(st->x0, st->x, n * sizeof(float));
		rc = fam_attn_stage(st, ts->layer, st->x0, e);
		if (rc == 0)
			rc = fam_mlp_stage(st, ts->layer, st->x0, e);
		break;
	default: return circ_errorf(e, "cd-t: stage %d: unknown kind", s);
	}
	if (rc == 0 && st->normalize)
		normalize(st->x, st->S, st->BT * (size_t)st->C);
	return rc;
}

/* Lowest stage whose input a set changes: -1 (the embedding) for the input
 * node or the constants, else the stage of its lowest node. */
static int start_stage(const cdt_state *st)
{
	int s0 = st->t->n_stage;
	for (int g = 0; g < st->S; g++) {
		if (st->whole && st->whole[g])
			return -1;
		for (int u = 0; u < st->U; u++)
			if (st->src[(size_t)g * (size_t)st->U + (size_t)u] &&
			    st->t->node[u].stage < s0)
				s0 = st->t->node[u].stage;
	}
	return s0;
}

int circ_cdt_run(circ_run *r, int S, const uint8_t *src, const uint8_t *whole,
		 const circ_cdt_opts *o, circ_cdt_hook hook, void *ctx, circ_error *e)
{
	const circ_model *m = circ_run_model(r);
	cdt_state st = {0};
	circ_cdt_opts def;
	int s0, fam, rc = 0;
	size_t big, btc, vw;
	if (!o) {
		circ_cdt_opts_default(&def);
		o = &def;
	}
	st.c = circ_model_config(m);
	fam = st.c->model_type != CIRC_MODEL_GPT2;
	if (!fam && check_model(st.c, e) < 0)
		return -1;
	if (circ_run_b(r) == 0)
		return circ_errorf(e, "cd-t: the run has no forward");
	if (!circ_run_logits(r, NULL) || !circ_run_node_out(r, circ_node_head(m, 0, 0)))
		return circ_errorf(e, "cd-t: the run kept no logits or no node outputs");
	if (S < 1)
		return circ_errorf(e, "cd-t: no source sets");
	st.r = r;
	st.w = circ_model_weights(m);
	st.fw = fam ? &m->fw : NULL;
	st.t = circ_model_topology(m);
	st.pool = circ_run_pool(r);
	st.S = S;
	st.B = circ_run_b(r);
	st.T = circ_run_t(r);
	st.C = st.c->n_embd;
	st.H = st.c->n_head;
	st.D = circ_config_head_dim(st.c);
	st.K = circ_config_kv_heads(st.c);
	st.Q = st.H * st.D;
	st.F = st.c->n_inner;
	st.U = circ_model_n_up(m);
	st.BT = (size_t)st.B * (size_t)st.T;
	st.SBT = (size_t)(S + 1) * st.BT;
	st.src = src;
	st.whole = whole;
	st.normalize = o->normalize;
	st.hook = hook;
	st.ctx = ctx;
	btc = st.BT * (size_t)st.C;
	big = st.SBT * (size_t)st.C;
	vw = (size_t)(st.K * st.D > st.C ? st.K * st.D : st.C);
	st.x = circ_xcalloc(big, sizeof(float));
	st.l = circ_xmalloc(big * sizeof(float));
	st.v = circ_xmalloc(st.SBT * vw * sizeof(float));
	st.o = circ_xmalloc(big * sizeof(float));
	st.h = circ_xmalloc(st.SBT * (size_t)st.F * sizeof(float));
	st.irrel = circ_xmalloc((size_t)S * btc * sizeof(float));
	st.tmp = circ_xmalloc(st.BT * (size_t)st.F * sizeof(float));
	if (fam) {
		st.z = circ_xmalloc(st.SBT * (size_t)st.Q * sizeof(float));
		st.rs = circ_xmalloc(st.BT * sizeof(float));
		if (st.c->mlp == CIRC_MLP_GATED)
			st.u = circ_xmalloc(st.SBT * (size_t)st.F * sizeof(float));
		if (st.c->parallel_residual)
			st.x0 = circ_xmalloc(big * sizeof(float));
	}
	circ_blas_threads(1);

	s0 = start_stage(&st);
	if (s0 < 0) {
		/* the embedding: the input node's output, and the constants
		 * (the positional embedding, convention permitting) */
		const float *x0 = circ_run_node_out(r, 0), *res0 = circ_run_resid(r, 0);
		float *cst = circ_xmalloc(btc * sizeof *cst);
		for (size_t k = 0; k < btc; k++)
			cst[k] = res0[k] - x0[k];
		memset(st.o, 0, (size_t)S * btc * sizeof(float));
		memcpy(st.o + (size_t)S * btc, x0, btc * sizeof(float));
		rc = emit_node(&st, 0, e);
		add_constant(&st, cst, 1);
		free(cst);
		s0 = 0;
	} else
		memcpy(st.x + (size_t)S * btc, circ_run_resid(r, s0), btc * sizeof(float));
	for (int s = s0; rc == 0 && s < st.t->n_stage; s++) {
		circ_stage_kind k = st.t->stage[s].kind;
		rc = show(&st, CIRC_CDT_RESID, s, st.x, btc, st.irrel, e);
		if (rc < 0)
			break;
		if (fam)
			rc = fam_stage(&st, s, e);
		else if (k == CIRC_STAGE_FINAL)
			rc = final_stage(&st, e);
		else if (k == CIRC_STAGE_ATTN)
			rc = attn_stage(&st, st.t->stage[s].layer, e);
		else
			rc = mlp_stage(&st, st.t->stage[s].layer, e);
	}
	free(st.x);
	free(st.l);
	free(st.v);
	free(st.o);
	free(st.h);
	free(st.irrel);
	free(st.tmp);
	free(st.z);
	free(st.u);
	free(st.x0);
	free(st.rs);
	free(st.wbuf);
	return rc;
}

/* ---- edge scores ---- */

struct circ_cdt_scorer {
	circ_patcher *p;
	const circ_graph *g;
	circ_cdt_opts o;
	double *sum; /* (E) */
	int64_t count;
	float *grad;	 /* (B, T, C) a node-level head's q + k + v gradients */
	size_t grad_bt;	 /* B*T of the batch */
	int *group_node; /* (S) the node of each set of the current pass */
	int S;
};

circ_cdt_scorer *circ_cdt_scorer_new(circ_patcher *p, const circ_cdt_opts *o)
{
	circ_cdt_scorer *sc = circ_xcalloc(1, sizeof *sc);
	sc->p = p;
	sc->g = circ_patcher_graph(p);
	if (o)
		sc->o = *o;
	else
		circ_cdt_opts_default(&sc->o);
	sc->sum = circ_xcalloc((size_t)sc->g->n_edges, sizeof *sc->sum);
	sc->group_node = circ_xmalloc((size_t)sc->g->n_up * sizeof *sc->group_node);
	return sc;
}

void circ_cdt_scorer_free(circ_cdt_scorer *sc)
{
	if (!sc)
		return;
	free(sc->sum);
	free(sc->grad);
	free(sc->group_node);
	free(sc);
}

const double *circ_cdt_scorer_sums(const circ_cdt_scorer *sc)
{
	return sc->sum;
}

int64_t circ_cdt_scorer_count(const circ_cdt_scorer *sc)
{
	return sc->count;
}

/* The loss gradient at graph receiver rg's input (B*T*C): the model
 * receiver's, or for a node-level head its q, k and v gradients summed into
 * sc->grad. NULL with a message when the run kept no receiver gradients. */
static const float *graph_recv_grad(circ_cdt_scorer *sc, int rg, circ_error *e)
{
	const circ_topo_recv *rv = &sc->g->topo->recv[rg];
	circ_run *run = circ_patcher_run(sc->p);
	const circ_model *m = circ_patcher_model(sc->p);
	size_t n = sc->grad_bt * (size_t)circ_model_config(m)->n_embd;
	int ids[3], k = 0;
	if (rv->kind == CIRC_RECV_HEAD)
		for (int q = 0; q < 3; q++)
			ids[k++] = circ_recv_qkv(m, rv->layer, rv->head, (circ_recv_kind)q);
	else if (rv->kind == CIRC_RECV_MLP)
		ids[k++] = circ_recv_mlp(m, rv->layer);
	else
		ids[k++] = circ_recv_qkv(m, rv->layer, rv->head, rv->kind);
	for (int q = 0; q < k; q++)
		if (!circ_run_recv_grad(run, ids[q])) {
			circ_errorf(e, "cd-t: no receiver gradients (the patcher must keep every "
				       "receiver's gradient)");
			return NULL;
		}
	if (k == 1)
		return circ_run_recv_grad(run, ids[0]);
	memset(sc->grad, 0, n * sizeof *sc->grad);
	for (int q = 0; q < k; q++)
		circ_vadd(sc->grad, circ_run_recv_grad(run, ids[q]), n);
	return sc->grad;
}

static int score_hook(void *ctx, circ_cdt_point what, int index, const float *rel,
		      const float *irrel, circ_error *e)
{
	circ_cdt_scorer *sc = ctx;
	const circ_graph *g = sc->g;
	const circ_topology *t = g->topo;
	const circ_batch *b = circ_patcher_batch(sc->p);
	const circ_patch_opts *po = circ_patcher_opts(sc->p);
	size_t btc = sc->grad_bt * (size_t)circ_model_config(circ_patcher_model(sc->p))->n_embd;
	int U = g->n_up;
	if (what == CIRC_CDT_RESID) {
		for (int rg = 0; rg < g->n_recv; rg++) {
			if (t->recv[rg].stage != index || t->recv[rg].kind == CIRC_RECV_LOGITS)
				continue;
			const float *gr = graph_recv_grad(sc, rg, e);
			if (!gr)
				return -1;
			for (int s = 0; s < sc->S; s++) {
				int u = sc->group_node[s];
				if (!g->mask[(size_t)rg * (size_t)U + (size_t)u])
					continue;
				const float *x = rel + (size_t)s * btc;
				double dot = 0;
				for (size_t k = 0; k < btc; k++)
					dot += (double)x[k] * gr[k];
				sc->sum[g->recv_first[rg] + u] -= dot;
			}
		}
	} else if (what == CIRC_CDT_LOGITS) {
		int V = circ_model_config(circ_patcher_model(sc->p))->vocab_size;
		int rl = circ_topo_recv_logits(t);
		const double *clean = circ_patcher_clean_metric(sc->p);
		int hb = circ_metric_higher_better(po->metric);
		(void)rel;
		for (int s = 0; s < sc->S; s++) {
			int u = sc->group_node[s];
			const float *z = irrel + (size_t)s * (size_t)b->n_read * (size_t)V;
			for (int bb = 0; bb < b->B; bb++) {
				double mi = circ_batch_metric(
				    po->metric, b, bb, z, circ_patcher_clean_logp(sc->p), V, NULL);
				sc->sum[g->recv_first[rl] + u] +=
				    hb ? clean[bb] - mi : mi - clean[bb];
			}
		}
	}
	return 0;
}

int circ_cdt_scorer_batch(circ_cdt_scorer *sc, circ_progress *pr, circ_error *e)
{
	const circ_graph *g = sc->g;
	const circ_batch *b = circ_patcher_batch(sc->p);
	circ_run *run = circ_patcher_run(sc->p);
	int C = circ_model_config(circ_patcher_model(sc->p))->n_embd;
	int U = g->n_up, L = g->n_layer, H = g->n_head;
	size_t bt = (size_t)b->B * (size_t)b->T, btc = bt * (size_t)C;
	uint8_t *src = circ_xcalloc((size_t)(H + 1) * (size_t)U, 1);
	int rc = 0;
	if (circ_run_b(run) != b->B || circ_run_t(run) != b->T || !circ_patcher_is_clean(sc->p)) {
		free(src);
		return circ_errorf(e, "cd-t: the patcher's run is not the clean run of its batch");
	}
	free(sc->grad);
	sc->grad = circ_xmalloc(btc * sizeof *sc->grad);
	sc->grad_bt = bt;
	/* pass 0: the input node; pass l+1: layer l's heads and MLP */
	for (int pass = 0; pass <= L && rc == 0; pass++) {
		memset(src, 0, (size_t)(H + 1) * (size_t)U);
		if (pass == 0) {
			sc->S = 1;
			sc->group_node[0] = circ_topo_node_input(g->topo);
		} else {
			sc->S = H + 1;
			for (int h = 0; h < H; h++)
				sc->group_node[h] = circ_topo_node_head(g->topo, pass - 1, h);
			sc->group_node[H] = circ_topo_node_mlp(g->topo, pass - 1);
		}
		for (int s = 0; s < sc->S; s++)
			src[(size_t)s * (size_t)U + (size_t)sc->group_node[s]] = 1;
		rc = circ_cdt_run(run, sc->S, src, NULL, &sc->o, score_hook, sc, e);
		if (pr)
			circ_progress_step(pr, 0);
	}
	free(src);
	if (rc == 0)
		sc->count += b->B;
	return rc;
}

/* ---- circuit construction ---- */

int circ_cdt_select(const circ_graph *g, const double *score, int n, int signed_, uint8_t *keep,
		    circ_error *e)
{
	const circ_topology *t = g->topo;
	int U = g->n_up, NN = g->n_nodes, chosen_n = 2;
	uint8_t *chosen = circ_xcalloc((size_t)NN, 1), *target = circ_xcalloc((size_t)NN, 1);
	double *rel = circ_xmalloc((size_t)U * sizeof *rel);
	double *agg = circ_xmalloc((size_t)U * sizeof *agg);
	if (n < 1) {
		free(chosen);
		free(target);
		free(rel);
		free(agg);
		return circ_errorf(e, "cd-t: %d sources per round: at least 1", n);
	}
	chosen[U] = target[U] = 1; /* logits */
	chosen[circ_topo_node_input(t)] = 1;
	for (;;) {
		int added = 0;
		for (int u = 0; u < U; u++)
			rel[u] = NAN;
		/* relevance of u to each target: its edges into the target summed */
		for (int tn = 0; tn < NN; tn++) {
			if (!target[tn])
				continue;
			for (int u = 0; u < U; u++)
				agg[u] = NAN;
			for (int rg = t->node[tn].first_recv;
			     rg < t->node[tn].first_recv + t->node[tn].n_recv; rg++)
				for (int u = 0; u < U; u++) {
					double s;
					if (!g->mask[(size_t)rg * (size_t)U + (size_t)u])
						continue;
					s = score[g->recv_first[rg] + u];
					if (isnan(s))
						continue;
					agg[u] = isnan(agg[u]) ? s : agg[u] + s;
				}
			for (int u = 0; u < U; u++) {
				double k = circ_rank_key(agg[u], signed_);
				if (!chosen[u] && !isnan(k) && (isnan(rel[u]) || k > rel[u]))
					rel[u] = k;
			}
		}
		memset(target, 0, (size_t)NN);
		for (int k = 0; k < n; k++) {
			int best = -1;
			for (int u = 0; u < U; u++)
				if (!chosen[u] && !isnan(rel[u]) && rel[u] > 0 &&
				    (best < 0 || rel[u] > rel[best]))
					best = u;
			if (best < 0)
				break;
			chosen[best] = target[best] = 1;
			added++;
			chosen_n++;
		}
		if (!added)
			break;
	}
	for (int64_t ed = 0; ed < g->n_edges; ed++)
		keep[ed] = chosen[g->edge_up[ed]] && chosen[t->recv[g->edge_recv[ed]].node];
	free(chosen);
	free(target);
	free(rel);
	free(agg);
	return chosen_n;
}
