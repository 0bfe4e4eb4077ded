/*
 * cdt: the CD-T decomposition (see cdt.h for the rules) over the clean run
 * of a batch, edge scores from it, and the paper's circuit construction.
 *
 * Dimension letters: S source sets, B sequences, T tokens, C = n_embd, H
 * heads, D = C/H, F = n_inner, V vocabulary, N read rows, U upstream nodes.
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

void circ_cdt_opts_default(circ_cdt_opts *o)
{
	o->normalize = 1;
}

/* ---- the split rules (element-wise parts) ---- */

/* Adds bias b (n) to rows of (r, i) (m, n) in proportion to |r| and |i|;
 * where both are 0, to i. b NULL: no bias. */
static void share_bias(float *r, float *i, size_t m, int n, const float *b)
{
	if (!b)
		return;
	for (size_t row = 0; row < m; row++) {
		float *pr = r + row * (size_t)n, *pi = i + row * (size_t)n;
		for (int c = 0; c < n; c++) {
			float ar = fabsf(pr[c]), ai = fabsf(pi[c]), tot = ar + ai;
			if (tot > 0) {
				pr[c] += b[c] * (ar / tot);
				pi[c] += b[c] * (ai / tot);
			} else
				pi[c] += b[c];
		}
	}
}

/* The reference code's sign rule: where r and i differ in sign, the larger
 * in magnitude takes the sum. */
static void normalize(float *r, float *i, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (r[k] * i[k] < 0) {
			if (fabsf(r[k]) >= fabsf(i[k])) {
				r[k] += i[k];
				i[k] = 0;
			} else {
				i[k] += r[k];
				r[k] = 0;
			}
		}
}

/* LayerNorm of rows (xr + xi) (m, C) split: each part centred by its own
 * mean, scaled by the whole row's rstd and w; the bias shared by |xr|, |xi|. */
static void ln_split(float *yr, float *yi, const float *xr, const float *xi, size_t m, int C,
		     const float *w, const float *b, double eps)
{
	for (size_t row = 0; row < m; row++) {
		const float *r = xr + row * (size_t)C, *i = xi + row * (size_t)C;
		float *or_ = yr + row * (size_t)C, *oi = yi + row * (size_t)C;
		double mr = 0, mi = 0, var = 0;
		for (int c = 0; c < C; c++) {
			mr += r[c];
			mi += i[c];
		}
		mr /= C;
		mi /= C;
		for (int c = 0; c < C; c++) {
			double d = (double)r[c] + i[c] - mr - mi;
			var += d * d;
		}
		float rstd = (float)(1.0 / sqrt(var / C + eps));
		for (int c = 0; c < C; c++) {
			float ar = fabsf(r[c]), ai = fabsf(i[c]), tot = ar + ai;
			or_[c] = (float)(r[c] - mr) * rstd * w[c];
			oi[c] = (float)(i[c] - mi) * rstd * w[c];
			if (!b)
				continue;
			if (tot > 0) {
				or_[c] += b[c] * (ar / tot);
				oi[c] += b[c] * (ai / tot);
			} else
				oi[c] += b[c];
		}
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

/* The paper's rule for the non-linearity, in place: i := act(i),
 * r := act(r + i) - act(i). */
static void act_split(float *r, float *i, size_t n, circ_act a)
{
	for (size_t k = 0; k < n; k++) {
		float ai = act_scalar(i[k], a);
		r[k] = act_scalar(r[k] + i[k], a) - ai;
		i[k] = ai;
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
				   "cd-t: model_type '%s': only GPT-2-shaped models are decomposed "
				   "(LayerNorm before each block, learned positions, a plain MLP)",
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
	size_t BT, SBT;
	const uint8_t *src, *whole;
	int normalize;
	float *xr, *xi;	    /* (S*BT, C) the residual */
	float *lr, *li;	    /* (S*BT, C) LayerNorm outputs, then head outputs */
	float *vr, *vi;	    /* (S*BT, C) values, then z */
	float *hr, *hi;	    /* (S*BT, F) MLP hidden */
	float *or_, *oi;    /* (S*BT, C) one node's output */
	circ_cdt_hook hook; /* may be NULL */
	void *ctx;
} cdt_state;

static int show(cdt_state *st, circ_cdt_point what, int index, const float *r, const float *i,
		circ_error *e)
{
	return st->hook ? st->hook(st->ctx, what, index, r, i, e) : 0;
}

/* Node u's output (or_, oi) made wholly relevant in the sets it is a source
 * of; shown; added to the residual. */
static int emit_node(cdt_state *st, int u, circ_error *e)
{
	size_t btc = st->BT * (size_t)st->C;
	for (int g = 0; g < st->S; g++)
		if (st->src[(size_t)g * (size_t)st->U + (size_t)u]) {
			float *r = st->or_ + (size_t)g * btc, *i = st->oi + (size_t)g * btc;
			for (size_t k = 0; k < btc; k++) {
				r[k] += i[k];
				i[k] = 0;
			}
		}
	if (show(st, CIRC_CDT_NODE, u, st->or_, st->oi, e) < 0)
		return -1;
	circ_vadd(st->xr, st->or_, st->SBT * (size_t)st->C);
	circ_vadd(st->xi, st->oi, st->SBT * (size_t)st->C);
	return 0;
}

/* A constant (n wide, per position or NULL) added to the residual: to rel in
 * the whole-model sets, else to irrel. cst is (B*T, C) when per_row, else (C). */
static void add_constant(cdt_state *st, const float *cst, int per_row)
{
	size_t btc = st->BT * (size_t)st->C;
	for (int g = 0; g < st->S; g++) {
		float *x = (st->whole && st->whole[g] ? st->xr : st->xi) + (size_t)g * btc;
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
	ln_split(st->lr, st->li, st->xr, st->xi, SBT, C, lw->ln1_w, lw->ln1_b,
		 st->c->layer_norm_epsilon);
	/* values: columns 2C..3C of attn_w */
	gemm(st->pool, SBT, C, C, st->lr, C, lw->attn_w + 2 * C, 3 * C, st->vr, C);
	gemm(st->pool, SBT, C, C, st->li, C, lw->attn_w + 2 * C, 3 * C, st->vi, C);
	share_bias(st->vr, st->vi, SBT, C, lw->attn_b ? lw->attn_b + 2 * C : NULL);
	/* z = A v per head, into lr/li (the LayerNorm outputs are done with) */
	for (int part = 0; part < 2; part++) {
		const float *v = part ? st->vi : st->vr;
		float *z = part ? st->li : st->lr;
		memset(z, 0, SBT * (size_t)C * sizeof *z);
		for (int g = 0; g < st->S; g++)
			for (int b = 0; b < st->B; b++) {
				size_t base = ((size_t)g * st->B + (size_t)b) * (size_t)T;
				for (int h = 0; h < st->H; h++)
					for (int t = 0; t < T; t++) {
						const float *a =
						    att +
						    (((size_t)b * st->H + (size_t)h) * T + t) *
							(size_t)T;
						float *zo = z + (base + (size_t)t) * (size_t)C +
							    (size_t)h * (size_t)D;
						for (int j = 0; j <= t; j++) {
							const float *vv =
							    v + (base + (size_t)j) * (size_t)C +
							    (size_t)h * (size_t)D;
							for (int d = 0; d < D; d++)
								zo[d] += a[j] * vv[d];
						}
					}
			}
	}
	for (int h = 0; h < st->H; h++) {
		const float *wo = lw->proj_w + (size_t)h * (size_t)D * (size_t)C;
		gemm(st->pool, SBT, C, D, st->lr + (size_t)h * (size_t)D, C, wo, C, st->or_, C);
		gemm(st->pool, SBT, C, D, st->li + (size_t)h * (size_t)D, C, wo, C, st->oi, C);
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
	ln_split(st->lr, st->li, st->xr, st->xi, SBT, C, lw->ln2_w, lw->ln2_b,
		 st->c->layer_norm_epsilon);
	gemm(st->pool, SBT, F, C, st->lr, C, lw->fc_w, F, st->hr, F);
	gemm(st->pool, SBT, F, C, st->li, C, lw->fc_w, F, st->hi, F);
	share_bias(st->hr, st->hi, SBT, F, lw->fc_b);
	if (st->normalize)
		normalize(st->hr, st->hi, SBT * (size_t)F);
	act_split(st->hr, st->hi, SBT * (size_t)F, st->c->act);
	gemm(st->pool, SBT, C, F, st->hr, F, lw->fcproj_w, C, st->or_, C);
	gemm(st->pool, SBT, C, F, st->hi, F, lw->fcproj_w, C, st->oi, C);
	share_bias(st->or_, st->oi, SBT, C, lw->fcproj_b);
	if (st->normalize)
		normalize(st->or_, st->oi, SBT * (size_t)C);
	if (emit_node(st, circ_topo_node_mlp(st->t, l), e) < 0)
		return -1;
	if (st->normalize)
		normalize(st->xr, st->xi, SBT * (size_t)C);
	return 0;
}

/* ln_f and the unembedding at the read rows. */
static int final_stage(cdt_state *st, circ_error *e)
{
	int N, C = st->C, V = st->c->vocab_size;
	const circ_read *reads = circ_run_reads(st->r, &N);
	size_t SN = (size_t)st->S * (size_t)N;
	float *gr = circ_xmalloc(SN * (size_t)C * sizeof *gr);
	float *gi = circ_xmalloc(SN * (size_t)C * sizeof *gi);
	float *yr = circ_xmalloc(SN * (size_t)C * sizeof *yr);
	float *yi = circ_xmalloc(SN * (size_t)C * sizeof *yi);
	float *zr = circ_xmalloc(SN * (size_t)V * sizeof *zr);
	float *zi = circ_xmalloc(SN * (size_t)V * sizeof *zi);
	int rc;
	for (int g = 0; g < st->S; g++)
		for (int n = 0; n < N; n++) {
			size_t row = ((size_t)g * st->B + (size_t)reads[n].b) * (size_t)st->T +
				     (size_t)reads[n].t;
			size_t dst = ((size_t)g * (size_t)N + (size_t)n) * (size_t)C;
			memcpy(gr + dst, st->xr + row * (size_t)C, (size_t)C * sizeof *gr);
			memcpy(gi + dst, st->xi + row * (size_t)C, (size_t)C * sizeof *gi);
		}
	ln_split(yr, yi, gr, gi, SN, C, st->w->lnf_w, st->w->lnf_b, st->c->layer_norm_epsilon);
	gemm_t(st->pool, 1, SN, V, C, yr, C, st->w->lm_head, C, zr, V);
	gemm_t(st->pool, 1, SN, V, C, yi, C, st->w->lm_head, C, zi, V);
	rc = show(st, CIRC_CDT_LOGITS, 0, zr, zi, e);
	free(gr);
	free(gi);
	free(yr);
	free(yi);
	free(zr);
	free(zi);
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
	int s0, L, rc = 0;
	size_t big;
	if (!o) {
		circ_cdt_opts_default(&def);
		o = &def;
	}
	st.c = circ_model_config(m);
	if (check_model(st.c, e) < 0)
		return -1;
	if (circ_run_b(r) == 0)
		return circ_errorf(e, "cd-t: the run has no forward");
	if (!circ_run_logits(r, NULL) || !circ_run_node_out(r, circ_node_head(m, 0, 0)))
		return circ_errorf(e, "cd-t: the run kept no logits or no node outputs");
	if (S < 1)
		return circ_errorf(e, "cd-t: no source sets");
	st.r = r;
	st.w = circ_model_weights(m);
	st.t = circ_model_topology(m);
	st.pool = circ_run_pool(r);
	st.S = S;
	st.B = circ_run_b(r);
	st.T = circ_run_t(r);
	st.C = st.c->n_embd;
	st.H = st.c->n_head;
	st.D = st.C / st.H;
	st.F = st.c->n_inner;
	st.U = circ_model_n_up(m);
	st.BT = (size_t)st.B * (size_t)st.T;
	st.SBT = (size_t)S * st.BT;
	st.src = src;
	st.whole = whole;
	st.normalize = o->normalize;
	st.hook = hook;
	st.ctx = ctx;
	L = st.c->n_layer;
	big = st.SBT * (size_t)st.C;
	st.xr = circ_xcalloc(big, sizeof(float));
	st.xi = circ_xcalloc(big, sizeof(float));
	st.lr = circ_xmalloc(big * sizeof(float));
	st.li = circ_xmalloc(big * sizeof(float));
	st.vr = circ_xmalloc(big * sizeof(float));
	st.vi = circ_xmalloc(big * sizeof(float));
	st.or_ = circ_xmalloc(big * sizeof(float));
	st.oi = circ_xmalloc(big * sizeof(float));
	st.hr = circ_xmalloc(st.SBT * (size_t)st.F * sizeof(float));
	st.hi = circ_xmalloc(st.SBT * (size_t)st.F * sizeof(float));
	circ_blas_threads(1);

	s0 = start_stage(&st);
	if (s0 < 0) {
		/* the embedding: the input node's output, and the constants
		 * (the positional embedding, convention permitting) */
		const float *x0 = circ_run_node_out(r, 0), *res0 = circ_run_resid(r, 0);
		size_t btc = st.BT * (size_t)st.C;
		float *cst = circ_xmalloc(btc * sizeof *cst);
		for (size_t k = 0; k < btc; k++)
			cst[k] = res0[k] - x0[k];
		for (int g = 0; g < S; g++) {
			memset(st.or_ + (size_t)g * btc, 0, btc * sizeof(float));
			memcpy(st.oi + (size_t)g * btc, x0, btc * sizeof(float));
		}
		rc = emit_node(&st, 0, e);
		add_constant(&st, cst, 1);
		free(cst);
		s0 = 0;
	} else {
		const float *res = circ_run_resid(r, s0);
		size_t btc = st.BT * (size_t)st.C;
		for (int g = 0; g < S; g++)
			memcpy(st.xi + (size_t)g * btc, res, btc * sizeof(float));
	}
	for (int s = s0; rc == 0 && s <= 2 * L; s++) {
		rc = show(&st, CIRC_CDT_RESID, s, st.xr, st.xi, e);
		if (rc < 0)
			break;
		if (s == 2 * L)
			rc = final_stage(&st, e);
		else if (s % 2 == 0)
			rc = attn_stage(&st, s / 2, e);
		else
			rc = mlp_stage(&st, s / 2, e);
	}
	free(st.xr);
	free(st.xi);
	free(st.lr);
	free(st.li);
	free(st.vr);
	free(st.vi);
	free(st.or_);
	free(st.oi);
	free(st.hr);
	free(st.hi);
	return rc;
}

/* ---- edge scores ---- */

struct circ_cdt_scorer {
	circ_patcher *p;
	const circ_graph *g;
	circ_cdt_opts o;
	double *sum; /* (E) */
	int64_t count;
	float *grad;	 /* (R_graph, B, T, C) loss gradient per graph receiver */
	size_t grad_bt;	 /* B*T the gradients were made for */
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

/* The model receivers a graph receiver stands for (q, k, v for a node-level
 * head): their gradients summed into out (B*T*C). */
static int graph_recv_grad(circ_cdt_scorer *sc, int rg, float *out, size_t n, circ_error *e)
{
	const circ_topo_recv *rv = &sc->g->topo->recv[rg];
	circ_run *run = circ_patcher_run(sc->p);
	const circ_model *m = circ_patcher_model(sc->p);
	int ids[3], k = 0;
	switch (rv->kind) {
	case CIRC_RECV_HEAD:
		for (int q = 0; q < 3; q++)
			ids[k++] = circ_recv_qkv(m, rv->layer, rv->head, (circ_recv_kind)q);
		break;
	case CIRC_RECV_Q:
	case CIRC_RECV_K:
	case CIRC_RECV_V: ids[k++] = circ_recv_qkv(m, rv->layer, rv->head, rv->kind); break;
	case CIRC_RECV_MLP: ids[k++] = circ_recv_mlp(m, rv->layer); break;
	default: return 0;
	}
	memset(out, 0, n * sizeof *out);
	for (int q = 0; q < k; q++) {
		const float *gq = circ_run_recv_grad(run, ids[q]);
		if (!gq)
			return circ_errorf(e, "cd-t: no receiver gradients (the patcher must keep "
					      "every receiver's gradient)");
		circ_vadd(out, gq, n);
	}
	return 0;
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
			const float *gr = sc->grad + (size_t)rg * btc;
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
	(void)e;
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
	sc->grad = circ_xmalloc((size_t)g->n_recv * btc * sizeof *sc->grad);
	sc->grad_bt = bt;
	for (int rg = 0; rg < g->n_recv && rc == 0; rg++)
		rc = graph_recv_grad(sc, rg, sc->grad + (size_t)rg * btc, btc, e);
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
