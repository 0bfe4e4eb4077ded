/*
 * trace: attribution graphs (see trace.h for the replacement model, the
 * node order and the sweep). The prompt's forward is circ's own
 * (circ_forward on one sequence): it gives the residuals, the attention
 * patterns and the MLP outputs from which the frozen scales, the feature
 * activations and the error nodes are taken; everything after that is the
 * linear replacement model, here. Every family is held in one form (tlayer:
 * a norm before the attention, values, output projection, a norm after it,
 * a norm before the MLP), GPT-2's Conv1D matrices and the families'
 * nn.Linear ones alike (tmat); the families' narrow matrices are converted
 * once.
 */
#include "trace.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model_impl.h"
#include "topology.h"

/* How a transcoder reads the residual r at its MLP's input: x = r
 * (resid_mid, hook_mlp_in; ln2.hook_normalized of a family without a norm
 * before the MLP), the norm without its weight (ln2.hook_normalized with
 * fold_ln), or with its weight (and LayerNorm's bias; fold_ln 0). */
enum { IN_RESID, IN_NORM, IN_NORM_WB };

void circ_trace_opts_default(circ_trace_opts *o)
{
	o->max_n_logits = 10;
	o->desired_logit_prob = 0.95;
	o->batch = 256;
	o->max_feature_nodes = 0;
	o->logit_ids = NULL;
	o->n_logit_ids = 0;
	o->logit_diffs = NULL;
	o->n_logit_diffs = 0;
	o->progress = NULL;
	o->threads = 1;
}

void circ_trace_graph_free(circ_trace_graph *g)
{
	if (!g)
		return;
	free(g->tokens);
	free(g->nodes);
	free(g->adj);
	free(g);
}

void circ_trace_node_name(const circ_tnode *nd, char *out, size_t n)
{
	switch (nd->kind) {
	case CIRC_TNODE_FEATURE:
		snprintf(out, n, "tc%d.f%d@%d", nd->layer, nd->feature, nd->pos);
		break;
	case CIRC_TNODE_ERROR: snprintf(out, n, "tc%d.err@%d", nd->layer, nd->pos); break;
	case CIRC_TNODE_INPUT: snprintf(out, n, "input@%d", nd->pos); break;
	case CIRC_TNODE_LOGIT:
		if (nd->minus >= 0)
			snprintf(out, n, "logit.%d-%d", nd->feature, nd->minus);
		else
			snprintf(out, n, "logit.%d", nd->feature);
		break;
	}
}

static int in_kind(const circ_config *c, const circ_dict *d)
{
	circ_hook h;
	circ_error e;
	if (circ_hook_parse(d->cfg.hook_name, &h, &e) < 0)
		return -1;
	if (h.kind == CIRC_HOOK_RESID_MID || h.kind == CIRC_HOOK_MLP_IN)
		return IN_RESID;
	if (h.kind == CIRC_HOOK_LN2_NORMALIZED) { /* c NULL: GPT-2 */
		if (c && c->model_type != CIRC_MODEL_GPT2 && c->norm_place == CIRC_NORM_POST)
			return IN_RESID;
		return d->cfg.fold_ln ? IN_NORM : IN_NORM_WB;
	}
	return -1;
}

int circ_trace_layers(const circ_model *m, const circ_dict_set *set, const circ_dict **tc,
		      circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	for (int l = 0; l < c->n_layer; l++)
		tc[l] = NULL;
	for (int i = 0; i < set->n; i++) {
		const circ_dict *d = set->dict[i];
		const char *p = d->path ? d->path : "(dictionary)";
		if (circ_dict_check_model(d, m, e) < 0)
			return -1;
		circ_hook ho;
		if (!d->cfg.transcoder || circ_hook_parse(d->cfg.hook_out, &ho, e) < 0 ||
		    ho.kind != CIRC_HOOK_MLP_OUT || in_kind(c, d) < 0)
			return circ_errorf(
			    e,
			    "'%s': not a transcoder from an MLP's input to its output "
			    "(hook '%s'): attribution graphs replace MLPs by transcoders",
			    p, d->cfg.hook_name);
		if (d->cfg.skip || d->W_skip)
			return circ_errorf(e,
					   "'%s': skip transcoders (W_skip) are not implemented in "
					   "attribution graphs",
					   p);
		if (d->cfg.arch == CIRC_DICT_GATED)
			return circ_errorf(e,
					   "'%s': gated dictionaries are not implemented in "
					   "attribution graphs",
					   p);
		if (tc[ho.layer])
			return circ_errorf(e, "'%s': a second transcoder for layer %d (also '%s')",
					   p, ho.layer,
					   tc[ho.layer]->path ? tc[ho.layer]->path : "");
		tc[ho.layer] = d;
	}
	return 0;
}

/* u -= mean(u) over C. */
static void center(float *u, int C)
{
	double s = 0;
	for (int i = 0; i < C; i++)
		s += u[i];
	float mu = (float)(s / C);
	for (int i = 0; i < C; i++)
		u[i] -= mu;
}

static double dot(const float *a, const float *b, int n)
{
	double s = 0;
	for (int i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}

typedef circ_tmat tmat; /* see trace.h */

/* y (m, out; ldy) = x (m, in; ldx) W, or with bwd dx (m, in) = dy (m, out) W^T:
 * then x is dy (ldx) and y is dx (ldy). beta as circ_gemm's. */
static void tlin(const tmat *W, int bwd, int m, int nin, int nout, const float *x, int ldx,
		 float *y, int ldy, float beta)
{
	if (m <= 0)
		return;
	if (!bwd)
		circ_gemm(0, W->nn, m, nout, nin, 1.0f, x, ldx, W->p, W->ld, beta, y, ldy);
	else
		circ_gemm(0, !W->nn, m, nin, nout, 1.0f, x, ldx, W->p, W->ld, beta, y, ldy);
}

typedef circ_trace_layer tlayer; /* one layer's linear pieces (trace.h) */

/* Everything the sweep needs, from the model and the prompt's forward. */
typedef struct state {
	const circ_config *c;
	const circ_dict *const *tc;
	int L, H, K, C, D, Q, T, V;
	int rms, parallel; /* RMSNorm; GPT-NeoX's parallel blocks */
	float off;	   /* RMSNorm's scale offset (Gemma: 1) */
	double eps, cap;   /* norms' epsilon; final logit soft cap (0: none) */
	tlayer *lay;	   /* (L) */
	float **own;	   /* (2 L) f32 copies of narrow matrices (or NULL) */
	const void *emb;   /* (V, C) token embeddings, times escale */
	circ_dtype emb_dt;
	float escale;
	const float *wpe;  /* (n_ctx, C) GPT-2's positions, or NULL */
	const void *unemb; /* (V, C) */
	circ_dtype unemb_dt;
	const float *fin_w, *fin_b;
	float *s1, *ra, *s2, *sf; /* (L, T) x3, (T): frozen scales (1/sigma or 1/rms) of
				   * the norm before the attention, after it, before
				   * the MLP, the final norm */
	float *att;		  /* (L, H, T, T) frozen patterns */
	float *src;		  /* (n_feat + n_err + T, C): each source's output vector */
	float *seed;		  /* (n_feat + n_logit, C): each target's gradient seed */
	float *rows;		  /* the targets' edge rows (row i: rows + i * n) */
	int *row_of;		  /* (n) each target node's row in rows */
	int *feat_off;		  /* (L * T + 1): first feature node of (layer, position) */
	float **acts, **errs;	  /* (L) (T, S) activations, (T, C) error nodes */
	float **xin;		  /* (L) (T, C) transcoders' inputs (NULL without one) */
	int *kinds;		  /* (L) IN_* of each layer's transcoder */
	float *lnf;		  /* (C) the final norm's output at the last position */
	circ_trace_graph *g;
} state;

static void state_free(state *st)
{
	for (int l = 0; st->acts && l < st->L; l++) {
		free(st->acts[l]);
		free(st->errs[l]);
		free(st->xin[l]);
	}
	for (int i = 0; st->own && i < 2 * st->L; i++)
		free(st->own[i]);
	free(st->own);
	free(st->lay);
	free(st->acts);
	free(st->errs);
	free(st->xin);
	free(st->kinds);
	free(st->lnf);
	free(st->s1);
	free(st->ra);
	free(st->s2);
	free(st->sf);
	free(st->att);
	free(st->src);
	free(st->seed);
	free(st->feat_off);
}

/* A family's matrix (rows, cols) as f32: in place, or a copy in *own. */
static const float *f32_of(const fam_mat *a, size_t rows, size_t cols, float **own)
{
	if (a->dt == CIRC_F32)
		return a->p;
	*own = circ_xmalloc(rows * cols * sizeof **own);
	circ_st_to_f32(*own, a->p, a->dt, rows * cols);
	return *own;
}

/* Rows [row0, row0 + n) of a (V, C) matrix of dtype dt as f32 into out. */
static void vrows(const void *p, circ_dtype dt, size_t row0, size_t n, int C, float *out)
{
	if (dt == CIRC_F32)
		memcpy(out, (const float *)p + row0 * C, n * C * sizeof *out);
	else
		circ_st_to_f32(out, (const char *)p + row0 * C * 2, dt, n * C);
}

/* The logits of the final norm's output x (C): raw (V) before the soft cap
 * and, when mean is given, mean (C) += the unembedding's rows' mean. The
 * unembedding is read by chunks of rows (converted where narrow). */
static void unembed(const void *p, circ_dtype dt, int V, int C, const float *x, double *raw,
		    double *mean)
{
	size_t chunk = 4096;
	float *rows = circ_xmalloc(chunk * C * sizeof *rows);
	for (size_t v0 = 0; v0 < (size_t)V; v0 += chunk) {
		size_t nv = (size_t)V - v0 < chunk ? (size_t)V - v0 : chunk;
		vrows(p, dt, v0, nv, C, rows);
		for (size_t j = 0; j < nv; j++) {
			const float *u = rows + j * C;
			raw[v0 + j] = dot(x, u, C);
			for (int i = 0; mean && i < C; i++)
				mean[i] += (double)u[i] / V;
		}
	}
	free(rows);
}

/* cap tanh(z / cap), or z without a cap. */
static double capped(double z, double cap)
{
	return cap > 0 ? cap * tanh(z / cap) : z;
}

/* The model's pieces into st (whose c, tc, T are set). */
static void bind_model(state *st, const circ_model *m)
{
	const circ_config *c = st->c;
	int L = st->L = c->n_layer, C = st->C = c->n_embd;
	st->H = c->n_head;
	st->K = circ_config_kv_heads(c);
	st->D = circ_config_head_dim(c);
	st->Q = st->H * st->D;
	st->V = c->vocab_size;
	st->eps = c->layer_norm_epsilon;
	st->lay = circ_xcalloc((size_t)L, sizeof *st->lay);
	st->own = circ_xcalloc((size_t)2 * L, sizeof *st->own);
	if (c->model_type == CIRC_MODEL_GPT2) {
		const circ_weights *w = circ_model_weights(m);
		for (int l = 0; l < L; l++) {
			const circ_layer_weights *lw = &w->layers[l];
			tlayer *y = &st->lay[l];
			y->n1_w = lw->ln1_w;
			y->n1_b = lw->ln1_b;
			y->v = (tmat){lw->attn_w + 2 * C, 3 * C, 0};
			y->v_b = lw->attn_b + 2 * C;
			y->o = (tmat){lw->proj_w, C, 0};
			y->o_b = lw->proj_b;
			y->n2_w = lw->ln2_w;
			y->n2_b = lw->ln2_b;
		}
		st->emb = w->wte;
		st->emb_dt = CIRC_F32;
		st->escale = 1.0f;
		st->wpe = w->wpe;
		st->unemb = w->lm_head;
		st->unemb_dt = CIRC_F32;
		st->fin_w = w->lnf_w;
		st->fin_b = w->lnf_b;
		return;
	}
	const fam_weights *fw = &m->fw;
	int KD = st->K * st->D, pre = c->norm_place != CIRC_NORM_POST;
	st->rms = c->norm == CIRC_NORM_RMSNORM;
	st->parallel = c->parallel_residual;
	st->off = (float)c->norm_offset;
	st->cap = c->final_softcap;
	for (int l = 0; l < L; l++) {
		const fam_layer *f = &fw->layers[l];
		tlayer *y = &st->lay[l];
		y->n1_w = pre ? f->n1_w : NULL;
		y->n1_b = pre ? f->n1_b : NULL;
		y->v = (tmat){f32_of(&f->v_w, (size_t)KD, (size_t)C, &st->own[2 * l]), C, 1};
		y->v_b = f->v_b;
		y->o = (tmat){f32_of(&f->o_w, (size_t)C, (size_t)st->Q, &st->own[2 * l + 1]), st->Q,
			      1};
		y->o_b = f->o_b;
		y->pa_w = c->norm_place != CIRC_NORM_PRE ? f->pa_w : NULL;
		y->n2_w = pre ? f->n2_w : NULL;
		y->n2_b = pre ? f->n2_b : NULL;
	}
	st->emb = fw->embed.p;
	st->emb_dt = fw->embed.dt;
	st->escale = c->embed_scale > 0 ? (float)c->embed_scale : 1.0f;
	st->unemb = fw->lm_head.p;
	st->unemb_dt = fw->lm_head.dt;
	st->fin_w = fw->final_w;
	st->fin_b = fw->final_b;
}

/* The frozen scale of each row of x (T, C): 1/sigma (LayerNorm) or 1/rms. */
static void inv_scale(float *s, const float *x, int T, int C, int rms, double eps)
{
	for (int t = 0; t < T; t++) {
		const float *r = x + (size_t)t * C;
		double mu = 0, v = 0;
		if (!rms) {
			for (int i = 0; i < C; i++)
				mu += r[i];
			mu /= C;
		}
		for (int i = 0; i < C; i++)
			v += (r[i] - mu) * (r[i] - mu);
		s[t] = (float)(1.0 / sqrt(v / C + eps));
	}
}

/* The weight a norm multiplies by: w (LayerNorm), off + w (RMSNorm); 1
 * without w. */
static float nw(const state *st, const float *w, int i)
{
	return w ? (st->rms ? st->off + w[i] : w[i]) : 1.0f;
}

/* y (C) = the frozen norm of x with scale s: LayerNorm (x - mean) s w + b,
 * RMSNorm x s (off + w); y may be x. */
static void norm_fwd(const state *st, float *y, const float *x, float s, const float *w,
		     const float *b)
{
	int C = st->C;
	if (y != x)
		memcpy(y, x, C * sizeof *y);
	if (!st->rms)
		center(y, C);
	for (int i = 0; i < C; i++)
		y[i] = y[i] * s * nw(st, w, i) + (b ? b[i] : 0.0f);
}

/* y (C) = its transpose applied to g: s center(w g) (LayerNorm), s (off +
 * w) g (RMSNorm); y may be g. */
static void norm_bwd(const state *st, float *y, const float *g, float s, const float *w)
{
	int C = st->C;
	for (int i = 0; i < C; i++)
		y[i] = g[i] * nw(st, w, i);
	if (!st->rms)
		center(y, C);
	for (int i = 0; i < C; i++)
		y[i] *= s;
}

/* Checks the prompt and runs it: the frozen patterns and scales, the
 * transcoders' inputs, activations and error nodes, the final norm's output
 * at the last position, into st (whose c, tc, T are set). */
static int freeze(state *st, const circ_model *m, const int32_t *tokens, int threads, circ_error *e)
{
	const circ_config *c = st->c;
	int T = st->T;
	bind_model(st, m);
	int L = st->L, H = st->H, C = st->C;
	if (T < 1)
		return circ_errorf(e,
				   "empty prompt: an attribution graph needs at least one token");
	if (T > c->n_ctx)
		return circ_errorf(e, "prompt of %d tokens is longer than the model's context (%d)",
				   T, c->n_ctx);
	for (int t = 0; t < T; t++)
		if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
			return circ_errorf(e,
					   "token %d at position %d is outside the vocabulary (%d)",
					   tokens[t], t, c->vocab_size);
	circ_run_opts ro;
	circ_run_opts_default(&ro);
	ro.threads = threads;
	circ_run *r = circ_run_new(m, 1, T, &ro, e);
	if (!r)
		return -1;
	circ_fwd f = {.tokens = tokens, .B = 1, .T = T, .read = CIRC_READ_NONE};
	if (circ_forward(r, &f, e) < 0) {
		circ_run_free(r);
		return -1;
	}
	circ_blas_threads(threads);
	const circ_topology *top = circ_model_topology(m);
	size_t TC = (size_t)T * C;
	st->s1 = circ_xcalloc((size_t)L * T, sizeof *st->s1);
	st->ra = circ_xcalloc((size_t)L * T, sizeof *st->ra);
	st->s2 = circ_xcalloc((size_t)L * T, sizeof *st->s2);
	st->sf = circ_xmalloc((size_t)T * sizeof *st->sf);
	st->att = circ_xmalloc((size_t)L * H * T * T * sizeof *st->att);
	st->kinds = circ_xmalloc((size_t)L * sizeof *st->kinds);
	st->acts = circ_xcalloc((size_t)L, sizeof *st->acts);
	st->errs = circ_xcalloc((size_t)L, sizeof *st->errs);
	st->xin = circ_xcalloc((size_t)L, sizeof *st->xin);
	for (int l = 0; l < L; l++) {
		const circ_dict *d = st->tc[l];
		const tlayer *y = &st->lay[l];
		if (y->n1_w)
			inv_scale(st->s1 + l * T, circ_run_resid(r, circ_topo_stage_attn(top, l)),
				  T, C, st->rms, st->eps);
		if (y->n2_w)
			inv_scale(st->s2 + l * T, circ_run_resid(r, circ_topo_stage_mlp(top, l)), T,
				  C, st->rms, st->eps);
		if (y->pa_w) { /* the attention's output before its norm, from z */
			float *a = circ_xmalloc(TC * sizeof *a);
			tlin(&y->o, 0, T, st->Q, C, circ_run_attn_z(r, l), st->Q, a, C, 0.0f);
			inv_scale(st->ra + l * T, a, T, C, 1, st->eps);
			free(a);
		}
		memcpy(st->att + (size_t)l * H * T * T, circ_run_attn(r, l),
		       (size_t)H * T * T * sizeof *st->att);
		st->kinds[l] = d ? in_kind(c, d) : IN_RESID;
		const float *mo = circ_run_node_out(r, circ_topo_node_mlp(top, l));
		float *err = st->errs[l] = circ_xmalloc(TC * sizeof *err);
		if (!d) {
			memcpy(err, mo, TC * sizeof *err);
			continue;
		}
		st->xin[l] = circ_xmalloc(TC * sizeof *st->xin[l]);
		if (circ_dict_hook_read(d, 1, r, st->xin[l], e) < 0) {
			circ_run_free(r);
			return -1;
		}
		st->acts[l] = circ_xmalloc((size_t)T * d->cfg.d_sae * sizeof *st->acts[l]);
		circ_dict_encode(d, st->xin[l], T, st->acts[l]);
		circ_dict_decode(d, st->acts[l], st->xin[l], T, err);
		for (size_t i = 0; i < TC; i++)
			err[i] = mo[i] - err[i];
	}
	const float *x = circ_run_resid(r, circ_topo_stage_final(top));
	inv_scale(st->sf, x, T, C, st->rms, st->eps);
	st->lnf = circ_xmalloc((size_t)C * sizeof *st->lnf);
	norm_fwd(st, st->lnf, x + (size_t)(T - 1) * C, st->sf[T - 1], st->fin_w, st->fin_b);
	circ_run_free(r);
	return 0;
}

/* The seed of a target: d pre / d residual at its injection point, for the
 * frozen norm in front of it (u for a raw read). */
static void seed_of(const state *st, float *v, const float *u, const float *w, float s, int kind)
{
	if (kind == IN_RESID)
		memcpy(v, u, st->C * sizeof *v);
	else
		norm_bwd(st, v, u, s, kind == IN_NORM_WB ? w : NULL);
}

/* x (C) <- what layer l's transcoder reads of the residual r (C). */
static void tc_input(const state *st, int l, int t, const float *r, float *x)
{
	const tlayer *y = &st->lay[l];
	int k = st->kinds[l];
	if (k == IN_RESID)
		memcpy(x, r, st->C * sizeof *x);
	else
		norm_fwd(st, x, r, st->s2[l * st->T + t], k == IN_NORM_WB ? y->n2_w : NULL,
			 k == IN_NORM_WB ? y->n2_b : NULL);
}

/* The replacement model's forward (frozen norms and patterns) from x (T, C),
 * the embedding, to x the final residual: mlp(ctx, l, in, out) writes layer
 * l's MLP output (T, C) for its input residual (the layer's input with
 * parallel blocks, else the residual after the attention). */
typedef void (*mlp_fn)(void *ctx, int l, const float *in, float *out);

static void replacement(const state *st, float *x, mlp_fn mlp, void *ctx)
{
	int T = st->T, C = st->C, H = st->H, D = st->D, KD = st->K * st->D, Q = st->Q;
	int per = st->H / st->K;
	size_t TC = (size_t)T * C;
	float *ln = circ_xmalloc(TC * sizeof *ln), *v = circ_xmalloc((size_t)T * KD * sizeof *v),
	      *z = circ_xmalloc((size_t)T * Q * sizeof *z), *o = circ_xmalloc(TC * sizeof *o),
	      *mo = circ_xmalloc(TC * sizeof *mo);
	for (int l = 0; l < st->L; l++) {
		const tlayer *y = &st->lay[l];
		if (st->parallel)
			mlp(ctx, l, x, mo);
		for (int t = 0; t < T; t++) {
			float *r = ln + (size_t)t * C;
			if (y->n1_w)
				norm_fwd(st, r, x + (size_t)t * C, st->s1[l * T + t], y->n1_w,
					 y->n1_b);
			else
				memcpy(r, x + (size_t)t * C, C * sizeof *r);
		}
		tlin(&y->v, 0, T, C, KD, ln, C, v, KD, 0.0f);
		if (y->v_b)
			for (int t = 0; t < T; t++)
				for (int i = 0; i < KD; i++)
					v[(size_t)t * KD + i] += y->v_b[i];
		memset(z, 0, (size_t)T * Q * sizeof *z);
		for (int h = 0; h < H; h++)
			for (int t = 0; t < T; t++) {
				const float *a = st->att + (((size_t)l * H + h) * T + t) * T;
				float *zo = z + (size_t)t * Q + (size_t)h * D;
				for (int u = 0; u <= t; u++) {
					const float *vu =
					    v + (size_t)u * KD + (size_t)(h / per) * D;
					for (int i = 0; i < D; i++)
						zo[i] += a[u] * vu[i];
				}
			}
		tlin(&y->o, 0, T, Q, C, z, Q, o, C, 0.0f);
		for (int t = 0; t < T; t++)
			for (int i = 0; i < C; i++) {
				float a = o[(size_t)t * C + i];
				if (y->pa_w)
					a *= st->ra[l * T + t] * (st->off + y->pa_w[i]);
				x[(size_t)t * C + i] += a + (y->o_b ? y->o_b[i] : 0.0f);
			}
		if (!st->parallel)
			mlp(ctx, l, x, mo);
		for (size_t i = 0; i < TC; i++)
			x[i] += mo[i];
	}
	free(ln);
	free(v);
	free(z);
	free(o);
	free(mo);
}

/* The constants' MLP step: each active feature's bias from its
 * transcoder's input, and b_dec as the output. */
static void bias_mlp(void *ctx, int l, const float *in, float *out)
{
	state *st = ctx;
	int C = st->C, T = st->T;
	const circ_dict *d = st->tc[l];
	memset(out, 0, (size_t)T * C * sizeof *out);
	if (!d)
		return;
	float scale = (float)d->cfg.scale;
	float *x = circ_xmalloc((size_t)C * sizeof *x);
	for (int t = 0; t < T; t++) {
		tc_input(st, l, t, in + (size_t)t * C, x);
		for (int j = st->feat_off[l * T + t]; j < st->feat_off[l * T + t + 1]; j++) {
			int f = st->g->nodes[j].feature, S = d->cfg.d_sae;
			double s = 0;
			for (int i = 0; i < C; i++)
				s += (double)x[i] * d->W_enc[(size_t)i * S + f];
			st->g->nodes[j].bias = scale * s + d->b_enc[f];
		}
		for (int i = 0; i < C; i++)
			out[(size_t)t * C + i] = d->b_dec[i] / scale;
	}
	free(x);
}

/* The forward of the constants alone (positional embeddings, biases)
 * through the frozen model: each target's bias. ufin (n_logit, C): the
 * logits' demeaned unembedding rows. */
static void constant_bias(state *st, const float *ufin)
{
	int C = st->C, T = st->T;
	circ_trace_graph *g = st->g;
	float *c = circ_xcalloc((size_t)T * C, sizeof *c);
	if (st->wpe)
		memcpy(c, st->wpe, (size_t)T * C * sizeof *c);
	replacement(st, c, bias_mlp, st);
	float *x = c + (size_t)(T - 1) * C;
	norm_fwd(st, x, x, st->sf[T - 1], st->fin_w, st->fin_b);
	int first = g->n - g->n_logit;
	for (int k = 0; k < g->n_logit; k++)
		g->nodes[first + k].bias = dot(x, ufin + (size_t)k * C, C);
	free(c);
}

/* Reads the edges from sources (rows of src, node indices idx0 + j for
 * j < ns) into the batch's target rows: adj[tgt[k], idx0 + j] =
 * g_t[k] . src[j] (g_t: (K, C)). tmp: (K, ns) scratch. */
static void read_edges(const state *st, const int *tgt, int K, const float *gt, int C,
		       const float *src, int idx0, int ns, float *tmp)
{
	if (ns <= 0 || K <= 0)
		return;
	circ_gemm(0, 1, K, ns, C, 1.0f, gt, C, src, C, 0.0f, tmp, ns);
	for (int k = 0; k < K; k++)
		memcpy(st->rows + (size_t)st->row_of[tgt[k]] * st->g->n + idx0,
		       tmp + (size_t)k * ns, (size_t)ns * sizeof *tmp);
}

/* Adds the seeds of the batch's feature targets of layer l to their rows
 * of gb (the gradient at layer l's MLP input). */
static void add_seeds(const state *st, const int *tgt, int K, int l, float *gb)
{
	size_t KC = (size_t)K * st->C;
	for (int k = 0; k < K; k++) {
		const circ_tnode *nd = &st->g->nodes[tgt[k]];
		if (nd->kind == CIRC_TNODE_FEATURE && nd->layer == l) {
			float *gr = gb + (size_t)nd->pos * KC + (size_t)k * st->C;
			const float *sd = st->seed + (size_t)tgt[k] * st->C;
			for (int i = 0; i < st->C; i++)
				gr[i] += sd[i];
		}
	}
}

/* gb (rows of positions t < tb, nt[t] of them live) += the frozen
 * attention of layer l transposed: norm_1^T W_V^T A^T W_O^T post^T gb.
 * dz = (post^T gb) W_O^T is regrouped by head (hz[h] (tb, K * D)) so that
 * the pattern's transpose mixes positions in one product per head, summed
 * over each key/value group (dv[g] = sum A_h^T hz[h]), regrouped back, then
 * times W_V^T. a, b: scratch (tb * K * max(C, H*D)). */
static void attn_bwd(const state *st, int l, int K, int tb, const int *nt, float *gb, float *a,
		     float *b)
{
	const tlayer *y = &st->lay[l];
	int C = st->C, D = st->D, H = st->H, Q = st->Q, KD = st->K * st->D, T = st->T;
	int per = H / st->K;
	size_t KC = (size_t)K * C, rows = (size_t)tb * K, hs = rows * D;
	const float *g = gb;
	if (y->pa_w) { /* b = post^T gb */
		for (int t = 0; t < tb; t++)
			for (int k = 0; k < nt[t]; k++) {
				const float *gr = gb + t * KC + (size_t)k * C;
				float *br = b + t * KC + (size_t)k * C;
				float s = st->ra[l * T + t];
				for (int i = 0; i < C; i++)
					br[i] = gr[i] * s * (st->off + y->pa_w[i]);
			}
		g = b;
	}
	for (int t = 0; t < tb; t++) { /* a = dz (rows, Q) */
		float *at = a + (size_t)t * K * Q;
		tlin(&y->o, 1, nt[t], Q, C, g + t * KC, C, at, Q, 0.0f);
		memset(at + (size_t)nt[t] * Q, 0, (size_t)(K - nt[t]) * Q * sizeof *a);
	}
	for (size_t q = 0; q < rows; q++) /* b = hz */
		for (int h = 0; h < H; h++)
			memcpy(b + h * hs + q * D, a + q * Q + (size_t)h * D, D * sizeof *b);
	for (int h = 0; h < H; h++) /* a = dv by group */
		circ_gemm(1, 0, tb, K * D, tb, 1.0f, st->att + ((size_t)l * H + h) * T * T, T,
			  b + h * hs, K * D, h % per ? 1.0f : 0.0f, a + (size_t)(h / per) * hs,
			  K * D);
	for (size_t q = 0; q < rows; q++) /* b = dv (rows, KD) */
		for (int kv = 0; kv < st->K; kv++)
			memcpy(b + q * KD + (size_t)kv * D, a + kv * hs + q * D, D * sizeof *b);
	for (int t = 0; t < tb; t++) /* a = dv W_V^T (rows, C) */
		tlin(&y->v, 1, nt[t], C, KD, b + (size_t)t * K * KD, KD, a + t * KC, C, 0.0f);
	for (int t = 0; t < tb; t++)
		for (int k = 0; k < nt[t]; k++) {
			float *ar = a + t * KC + (size_t)k * C;
			float *gr = gb + t * KC + (size_t)k * C;
			if (y->n1_w)
				norm_bwd(st, ar, ar, st->s1[l * T + t], y->n1_w);
			for (int i = 0; i < C; i++)
				gr[i] += ar[i];
		}
}

/* One batch of targets tgt (K node indices, features ascending then logits):
 * the sweep of trace.h. Buffers gb (T * K * C), a, b (T * K * max(C, H*D))
 * and tmp. */
static void sweep(state *st, int *tgt, int K, float *gb, float *a, float *b, float *tmp)
{
	circ_trace_graph *g = st->g;
	int L = st->L, C = st->C, T = st->T;
	int first_logit = g->n - g->n_logit, first_err = g->n_feat;
	int top = -1, tb = 0;
	for (int k = 0; k < K; k++) {
		const circ_tnode *nd = &g->nodes[tgt[k]];
		int lay = nd->kind == CIRC_TNODE_LOGIT ? L : nd->layer;
		top = lay > top ? lay : top;
		tb = nd->pos + 1 > tb ? nd->pos + 1 : tb;
	}
	/* causality: targets by descending position, so that the rows still
	 * live at position t (targets at t or later) are the first nt[t] */
	int *nt = circ_xcalloc((size_t)T + 1, sizeof *nt),
	    *ord = circ_xmalloc((size_t)K * sizeof *ord);
	for (int k = 0; k < K; k++)
		nt[g->nodes[tgt[k]].pos]++;
	for (int t = T - 1; t > 0; t--)
		nt[t - 1] += nt[t];
	for (int k = K - 1; k >= 0; k--) /* stable: nt[p + 1] .. nt[p] - 1 hold position p */
		ord[--nt[g->nodes[tgt[k]].pos]] = tgt[k];
	memcpy(tgt, ord, (size_t)K * sizeof *tgt);
	for (int t = 0; t < T; t++)
		nt[t] = 0;
	for (int k = 0; k < K; k++)
		for (int t = 0; t <= g->nodes[tgt[k]].pos; t++)
			nt[t]++;
	free(ord);
	size_t KC = (size_t)K * C;
	memset(gb, 0, (size_t)tb * KC * sizeof *gb);
	for (int k = 0; k < K; k++)
		if (tgt[k] >= first_logit)
			memcpy(gb + (size_t)(T - 1) * KC + (size_t)k * C,
			       st->seed + (size_t)(tgt[k] - first_logit + g->n_feat) * C,
			       C * sizeof *gb);
	for (int l = (top < L ? top : L - 1); l >= 0; l--) {
		/* gb: the gradient at layer l's output; its sources' edges */
		if (top > l)
			for (int t = 0; t < tb; t++) {
				const float *gt = gb + (size_t)t * KC;
				int fa = st->feat_off[l * T + t], fb = st->feat_off[l * T + t + 1];
				read_edges(st, tgt, nt[t], gt, C, st->src + (size_t)fa * C, fa,
					   fb - fa, tmp);
				int ei = first_err + l * T + t;
				read_edges(st, tgt, nt[t], gt, C, st->src + (size_t)ei * C, ei, 1,
					   tmp);
			}
		/* the MLP's input: this layer's feature targets start there,
		 * after the attention, or at the layer's input (parallel) */
		if (!st->parallel)
			add_seeds(st, tgt, K, l, gb);
		attn_bwd(st, l, K, tb, nt, gb, a, b);
		if (st->parallel)
			add_seeds(st, tgt, K, l, gb);
	}
	/* the token embeddings */
	int first_in = g->n_feat + g->n_err;
	for (int t = 0; t < tb; t++)
		read_edges(st, tgt, nt[t], gb + (size_t)t * KC, C,
			   st->src + (size_t)(first_in + t) * C, first_in + t, 1, tmp);
	free(nt);
}

/* Influence of every node on the logits from the rows computed so far
 * (rows 0..nr-1 of st->rows, row r that of node node_of[r], its |row| sum
 * rs[r]), as circuit-tracer's compute_partial_influences: |rows|
 * normalised to sum 1 (at least 1e-8), then from the logits'
 * probabilities, infl += p A' until p vanishes (the graph is acyclic:
 * within nr + 1 steps). */
static void partial_influence(const state *st, int nr, const int *node_of, const double *rs,
			      double *infl)
{
	const circ_trace_graph *g = st->g;
	int n = g->n;
	double *p = circ_xcalloc((size_t)n, sizeof *p), *q = circ_xmalloc((size_t)n * sizeof *q);
	memset(infl, 0, (size_t)n * sizeof *infl);
	for (int k = 0; k < g->n_logit; k++)
		p[n - g->n_logit + k] = g->nodes[n - g->n_logit + k].act;
	for (int it = 0; it <= nr; it++) {
		memset(q, 0, (size_t)n * sizeof *q);
		int any = 0;
		for (int r = 0; r < nr; r++) {
			double w = p[node_of[r]] / rs[r];
			if (w == 0)
				continue;
			const float *row = st->rows + (size_t)r * n;
			for (int j = 0; j < n; j++)
				q[j] += w * fabs(row[j]);
		}
		for (int j = 0; j < n; j++) {
			any |= q[j] != 0;
			infl[j] += q[j];
		}
		memcpy(p, q, (size_t)n * sizeof *p);
		if (!any)
			break;
	}
	free(p);
	free(q);
}

typedef struct ranked {
	double infl;
	int node;
} ranked;

static int ranked_cmp(const void *a_, const void *b_)
{
	const ranked *a = a_, *b = b_;
	if (a->infl != b->infl)
		return a->infl > b->infl ? -1 : 1;
	return (a->node > b->node) - (a->node < b->node);
}

/* The sweeps for the M most influential features (M < n_feat), as
 * circuit-tracer's attribute with max_feature_nodes: the logits' rows, then
 * repeatedly the features ranked by their influence on the rows so far
 * (descending, ties by node order), up to 4 batches of the unvisited best
 * at a time. Then the graph keeps only the visited features: their rows
 * and columns, in node order; what the features left out gave each target
 * goes to its node's dropped. */
static void select_features(state *st, int M, int B, int *tgt, float *gb, float *ba, float *bb,
			    float *tmp, circ_progress *pr)
{
	circ_trace_graph *g = st->g;
	int n = g->n, nf = g->n_feat, nl = g->n_logit;
	int R = M + nl;
	st->rows = circ_xcalloc((size_t)R * n, sizeof *st->rows);
	int *node_of = circ_xmalloc((size_t)R * sizeof *node_of);
	double *rs = circ_xmalloc((size_t)R * sizeof *rs); /* each row's |row| sum */
	unsigned char *seen = circ_xcalloc((size_t)nf, 1);
	double *infl = circ_xmalloc((size_t)n * sizeof *infl);
	ranked *rk = circ_xmalloc((size_t)nf * sizeof *rk);
	int nr = 0;
	for (int k0 = 0; k0 < nl; k0 += B) {
		int K = nl - k0 < B ? nl - k0 : B;
		for (int k = 0; k < K; k++) {
			tgt[k] = n - nl + k0 + k;
			st->row_of[tgt[k]] = nr;
			node_of[nr++] = tgt[k];
		}
		sweep(st, tgt, K, gb, ba, bb, tmp);
		circ_progress_step(pr, K);
	}
	int nv = 0, nsum = 0;
	while (nv < M) {
		for (; nsum < nr; nsum++) { /* the rows new since the last ranking */
			const float *row = st->rows + (size_t)nsum * n;
			double a = 0;
			for (int j = 0; j < n; j++)
				a += fabs(row[j]);
			rs[nsum] = a > 1e-8 ? a : 1e-8;
		}
		partial_influence(st, nr, node_of, rs, infl);
		for (int i = 0; i < nf; i++)
			rk[i] = (ranked){infl[i], i};
		qsort(rk, (size_t)nf, sizeof *rk, ranked_cmp);
		int want = 4 * B < M - nv ? 4 * B : M - nv, got = 0;
		int *queue = circ_xmalloc((size_t)want * sizeof *queue);
		for (int i = 0; i < nf && got < want; i++)
			if (!seen[rk[i].node])
				queue[got++] = rk[i].node;
		for (int q0 = 0; q0 < got; q0 += B) {
			int K = got - q0 < B ? got - q0 : B;
			for (int k = 0; k < K; k++) {
				tgt[k] = queue[q0 + k];
				seen[tgt[k]] = 1;
				st->row_of[tgt[k]] = nr;
				node_of[nr++] = tgt[k];
			}
			sweep(st, tgt, K, gb, ba, bb, tmp);
			circ_progress_step(pr, K);
		}
		nv += got;
		free(queue);
	}
	/* the graph of the visited features */
	int *col = circ_xmalloc((size_t)n * sizeof *col), n2 = 0;
	for (int i = 0; i < n; i++)
		col[i] = i >= nf || seen[i] ? n2++ : -1;
	circ_tnode *nodes = circ_xmalloc((size_t)n2 * sizeof *nodes);
	float *adj = circ_xcalloc((size_t)n2 * n2, sizeof *adj);
	for (int i = 0; i < n; i++) {
		if (col[i] < 0)
			continue;
		circ_tnode *nd = &nodes[col[i]];
		*nd = g->nodes[i];
		if (i >= nf && i < n - nl)
			continue;
		const float *row = st->rows + (size_t)st->row_of[i] * n;
		float *out = adj + (size_t)col[i] * n2;
		for (int j = 0; j < n; j++) {
			if (col[j] >= 0)
				out[col[j]] = row[j];
			else
				nd->dropped += row[j];
		}
	}
	free(g->nodes);
	g->nodes = nodes;
	g->adj = adj;
	g->n_active = nf;
	g->n_feat = M;
	g->n = n2;
	free(st->rows);
	st->rows = NULL;
	free(col);
	free(node_of);
	free(rs);
	free(seen);
	free(infl);
	free(rk);
}

circ_trace_graph *circ_trace_build(const circ_model *m, const circ_dict *const *tc,
				   const int32_t *tokens, int T, const circ_trace_opts *o,
				   circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	for (int k = 0; k < o->n_logit_ids; k++) { /* before the prompt's run */
		int32_t v = o->logit_ids[k];
		if (v < 0 || v >= c->vocab_size) {
			circ_errorf(e, "logit target %d is outside the vocabulary (%d)", (int)v,
				    c->vocab_size);
			return NULL;
		}
		for (int q = 0; q < k; q++)
			if (o->logit_ids[q] == v) {
				circ_errorf(e, "logit target %d is given twice", (int)v);
				return NULL;
			}
	}
	for (int k = 0; k < o->n_logit_diffs; k++) {
		int32_t a = o->logit_diffs[2 * k], b = o->logit_diffs[2 * k + 1];
		if (a < 0 || a >= c->vocab_size || b < 0 || b >= c->vocab_size) {
			circ_errorf(
			    e, "logit difference %d:%d: token %d is outside the vocabulary (%d)",
			    (int)a, (int)b, (int)(a < 0 || a >= c->vocab_size ? a : b),
			    c->vocab_size);
			return NULL;
		}
		if (a == b) {
			circ_errorf(e, "logit difference %d:%d is zero", (int)a, (int)b);
			return NULL;
		}
		for (int q = 0; q < k; q++)
			if (o->logit_diffs[2 * q] == a && o->logit_diffs[2 * q + 1] == b) {
				circ_errorf(e, "logit difference %d:%d is given twice", (int)a,
					    (int)b);
				return NULL;
			}
	}
	if (o->n_logit_diffs > 0 && o->n_logit_ids > 0) {
		circ_errorf(e, "logit targets: tokens or differences, not both");
		return NULL;
	}
	state st = {.c = c, .tc = tc, .T = T};
	if (freeze(&st, m, tokens, o->threads > 0 ? o->threads : 1, e) < 0) {
		state_free(&st);
		return NULL;
	}
	int L = st.L, C = st.C, V = st.V;
	int *kinds = st.kinds;
	float **acts = st.acts, **xin = st.xin, *lnf = st.lnf;

	/* the features' node ranges per (layer, position) */
	st.feat_off = circ_xmalloc(((size_t)L * T + 1) * sizeof *st.feat_off);
	int nf = 0;
	for (int l = 0; l < L; l++)
		for (int t = 0; t < T; t++) {
			st.feat_off[l * T + t] = nf;
			int S = tc[l] ? tc[l]->cfg.d_sae : 0;
			for (int j = 0; j < S; j++)
				nf += acts[l][(size_t)t * S + j] != 0.0f;
		}
	st.feat_off[L * T] = nf;

	/* logits at the last position: the targets are the logits before the
	 * soft cap, demeaned; probabilities from the model's (capped) logits */
	double *logit = circ_xmalloc((size_t)V * sizeof *logit),
	       *raw = circ_xmalloc((size_t)V * sizeof *raw);
	double *mean = circ_xcalloc((size_t)C, sizeof *mean);
	double lmax = -INFINITY, lsum = 0, zsum = 0;
	unembed(st.unemb, st.unemb_dt, V, C, lnf, raw, mean);
	for (int v = 0; v < V; v++) {
		lsum += raw[v];
		logit[v] = capped(raw[v], st.cap);
		lmax = logit[v] > lmax ? logit[v] : lmax;
	}
	for (int v = 0; v < V; v++)
		zsum += exp(logit[v] - lmax);
	int ndiff = o->n_logit_diffs > 0 ? o->n_logit_diffs : 0;
	int nmax = ndiff		 ? ndiff
		   : o->n_logit_ids > 0	 ? o->n_logit_ids
		   : o->max_n_logits < V ? o->max_n_logits
					 : V;
	if (nmax < 1)
		nmax = 1;
	int *top_id = circ_xmalloc((size_t)nmax * sizeof *top_id);
	double *top_p = circ_xmalloc((size_t)nmax * sizeof *top_p);
	int nl = nmax; /* the given tokens or differences: all of them */
	for (int k = 0; k < nmax && ndiff; k++) {
		top_id[k] = o->logit_diffs[2 * k];
		top_p[k] = 1.0;
	}
	for (int k = 0; k < nmax && !ndiff; k++) {
		int best = o->n_logit_ids > 0 ? o->logit_ids[k] : -1;
		for (int v = 0; v < V && o->n_logit_ids == 0; v++) {
			int taken = 0;
			for (int j = 0; j < k; j++)
				taken |= top_id[j] == v;
			if (!taken && (best < 0 || logit[v] > logit[best]))
				best = v;
		}
		top_id[k] = best;
		top_p[k] = exp(logit[best] - lmax) / zsum;
	}
	/* circuit-tracer: searchsorted(cumsum(top_p), p) + 1 logits */
	if (o->n_logit_ids == 0 && !ndiff) {
		double cum = 0;
		for (nl = 0; nl < nmax; nl++) {
			cum += top_p[nl];
			if (cum >= o->desired_logit_prob) {
				nl++;
				break;
			}
		}
		if (nl > nmax)
			nl = nmax;
	}

	/* the node list */
	circ_trace_graph *g = circ_xcalloc(1, sizeof *g);
	st.g = g;
	g->T = T;
	g->L = L;
	g->tokens = circ_xmalloc((size_t)T * sizeof *g->tokens);
	memcpy(g->tokens, tokens, (size_t)T * sizeof *tokens);
	g->n_feat = nf;
	g->n_err = L * T;
	g->n_input = T;
	g->n_logit = nl;
	g->n_active = nf;
	g->n = nf + L * T + T + nl;
	g->nodes = circ_xcalloc((size_t)g->n, sizeof *g->nodes);
	for (int i = 0; i < g->n; i++)
		g->nodes[i].minus = -1;
	size_t nsrc = (size_t)nf + (size_t)L * T + T, ntgt = (size_t)nf + nl;
	st.src = circ_xmalloc(nsrc * C * sizeof *st.src);
	st.seed = circ_xmalloc(ntgt * C * sizeof *st.seed);
	int j = 0;
	float *u = circ_xmalloc((size_t)C * sizeof *u);
	for (int l = 0; l < L; l++) {
		const circ_dict *d = tc[l];
		if (!d)
			continue;
		int S = d->cfg.d_sae;
		float scale = (float)d->cfg.scale;
		for (int t = 0; t < T; t++)
			for (int q = 0; q < S; q++) {
				float a = acts[l][(size_t)t * S + q];
				if (a == 0.0f)
					continue;
				circ_tnode *nd = &g->nodes[j];
				nd->kind = CIRC_TNODE_FEATURE;
				nd->layer = l;
				nd->feature = q;
				nd->pos = t;
				nd->act = a;
				double pre = d->b_enc[q];
				for (int i = 0; i < C; i++)
					u[i] = d->W_enc[(size_t)i * S + q] * scale;
				pre += dot(xin[l] + (size_t)t * C, u, C);
				nd->pre = pre;
				for (int i = 0; i < C; i++)
					st.src[(size_t)j * C + i] =
					    a * d->W_dec[(size_t)q * C + i] / scale;
				seed_of(&st, st.seed + (size_t)j * C, u, st.lay[l].n2_w,
					st.s2[l * T + t], kinds[l]);
				j++;
			}
	}
	for (int l = 0; l < L; l++)
		for (int t = 0; t < T; t++, j++) {
			circ_tnode *nd = &g->nodes[j];
			nd->kind = CIRC_TNODE_ERROR;
			nd->layer = l;
			nd->feature = -1;
			nd->pos = t;
			memcpy(st.src + (size_t)j * C, st.errs[l] + (size_t)t * C,
			       C * sizeof *st.src);
		}
	for (int t = 0; t < T; t++, j++) {
		circ_tnode *nd = &g->nodes[j];
		nd->kind = CIRC_TNODE_INPUT;
		nd->layer = -1;
		nd->feature = tokens[t];
		nd->pos = t;
		float *s = st.src + (size_t)j * C;
		vrows(st.emb, st.emb_dt, (size_t)tokens[t], 1, C, s);
		for (int i = 0; i < C; i++)
			s[i] *= st.escale;
	}
	float *ufin = circ_xmalloc((size_t)(nl ? nl : 1) * C * sizeof *ufin);
	for (int k = 0; k < nl; k++, j++) {
		circ_tnode *nd = &g->nodes[j];
		nd->kind = CIRC_TNODE_LOGIT;
		nd->layer = -1;
		nd->feature = top_id[k];
		nd->pos = T - 1;
		nd->act = top_p[k];
		float *uk = ufin + (size_t)k * C;
		vrows(st.unemb, st.unemb_dt, (size_t)top_id[k], 1, C, uk);
		if (ndiff) { /* u_a - u_b: the mean cancels */
			int b = o->logit_diffs[2 * k + 1];
			vrows(st.unemb, st.unemb_dt, (size_t)b, 1, C, u);
			for (int i = 0; i < C; i++)
				uk[i] -= u[i];
			nd->minus = b;
			nd->pre = raw[top_id[k]] - raw[b];
		} else {
			for (int i = 0; i < C; i++)
				uk[i] = (float)(uk[i] - mean[i]);
			nd->pre = raw[top_id[k]] - lsum / V;
		}
		seed_of(&st, st.seed + (size_t)(nf + k) * C, uk, st.fin_w, st.sf[T - 1],
			IN_NORM_WB);
	}
	free(u);
	free(mean);
	constant_bias(&st, ufin);

	/* the sweeps: every feature, or the most influential (circuit-tracer's
	 * max_feature_nodes) */
	int B = o->batch > 0 ? o->batch : 256;
	int M = o->max_feature_nodes > 0 && o->max_feature_nodes < nf ? o->max_feature_nodes : nf;
	int *tgt = circ_xmalloc((size_t)B * sizeof *tgt);
	size_t wd = (size_t)(C > st.Q ? C : st.Q), buf = (size_t)T * B * wd;
	float *gb = circ_xmalloc((size_t)T * B * C * sizeof *gb),
	      *ba = circ_xmalloc(buf * sizeof *ba), *bb = circ_xmalloc(buf * sizeof *bb);
	int maxsrc = 1;
	for (int q = 0; q < L * T; q++)
		if (st.feat_off[q + 1] - st.feat_off[q] > maxsrc)
			maxsrc = st.feat_off[q + 1] - st.feat_off[q];
	float *tmp = circ_xmalloc((size_t)B * maxsrc * sizeof *tmp);
	st.row_of = circ_xmalloc((size_t)g->n * sizeof *st.row_of);
	if (o->progress)
		o->progress->total = M + nl;
	if (M == nf) {
		g->adj = st.rows = circ_xcalloc((size_t)g->n * g->n, sizeof *g->adj);
		for (int i = 0; i < g->n; i++)
			st.row_of[i] = i;
		int ntg = nf + nl;
		for (int s = 0; s < ntg; s += B) {
			int K = ntg - s < B ? ntg - s : B;
			for (int k = 0; k < K; k++)
				tgt[k] = s + k < nf ? s + k : g->n - nl + (s + k - nf);
			sweep(&st, tgt, K, gb, ba, bb, tmp);
			circ_progress_step(o->progress, K);
		}
	} else {
		select_features(&st, M, B, tgt, gb, ba, bb, tmp, o->progress);
	}
	free(tgt);
	free(gb);
	free(ba);
	free(bb);
	free(tmp);
	free(st.row_of);
	free(ufin);
	free(top_id);
	free(top_p);
	free(logit);
	free(raw);
	state_free(&st);
	return g;
}

double circ_trace_check(const circ_trace_graph *g, double *rel)
{
	double worst = 0, wrel = 0;
	for (int i = 0; i < g->n; i++) {
		const circ_tnode *nd = &g->nodes[i];
		if (nd->kind != CIRC_TNODE_FEATURE && nd->kind != CIRC_TNODE_LOGIT)
			continue;
		double s = nd->bias + nd->dropped;
		const float *row = g->adj + (size_t)i * g->n;
		for (int j = 0; j < g->n; j++)
			s += row[j];
		double d = fabs(s - nd->pre);
		worst = d > worst ? d : worst;
		double rr = d / (fabs(nd->pre) > 1 ? fabs(nd->pre) : 1);
		wrel = rr > wrel ? rr : wrel;
	}
	if (rel)
		*rel = wrel;
	return worst;
}

/* ---- interventions ---- */

int circ_trace_iv_parse(const char *s, circ_trace_iv *iv, circ_error *e)
{
	int l, f, t, n = 0;
	char op;
	if (sscanf(s, "tc%d.f%d@%d%c%n", &l, &f, &t, &op, &n) != 4 || (op != '=' && op != '*') ||
	    l < 0 || f < 0 || t < 0)
		return circ_errorf(e,
				   "intervention '%s': expected tc<layer>.f<feature>@<pos>=VALUE "
				   "or ...*FACTOR",
				   s);
	char *end;
	const char *num = s + n;
	double v = strtod(num, &end);
	if (end == num || *end || !isfinite(v))
		return circ_errorf(e, "intervention '%s': '%s' is not a finite number", s, num);
	iv->layer = l;
	iv->feature = f;
	iv->pos = t;
	iv->scale = op == '*';
	iv->value = v;
	return 0;
}

/* The interventions' MLP step: the transcoder's features recomputed from
 * its input, the interventions of the layer applied, decoded, plus the
 * frozen error. */
typedef struct iv_ctx {
	const state *st;
	const circ_trace_iv *iv;
	int n_iv;
} iv_ctx;

static void iv_mlp(void *ctx, int l, const float *in, float *out)
{
	const iv_ctx *q = ctx;
	const state *st = q->st;
	int T = st->T, C = st->C;
	size_t TC = (size_t)T * C;
	const circ_dict *d = st->tc[l];
	memset(out, 0, TC * sizeof *out);
	if (d) {
		int S = d->cfg.d_sae;
		float *x = circ_xmalloc(TC * sizeof *x),
		      *f = circ_xmalloc((size_t)T * S * sizeof *f);
		for (int t = 0; t < T; t++)
			tc_input(st, l, t, in + (size_t)t * C, x + (size_t)t * C);
		circ_dict_encode(d, x, T, f);
		for (int k = 0; k < q->n_iv; k++)
			if (q->iv[k].layer == l) {
				float *a = f + (size_t)q->iv[k].pos * S + q->iv[k].feature;
				*a = (float)(q->iv[k].scale ? *a * q->iv[k].value : q->iv[k].value);
			}
		circ_dict_decode(d, f, x, T, out);
		free(f);
		free(x);
	}
	for (size_t i = 0; i < TC; i++)
		out[i] += st->errs[l][i];
}

int circ_trace_intervene(const circ_model *m, const circ_dict *const *tc, const int32_t *tokens,
			 int T, const circ_trace_iv *iv, int n_iv, int threads, float *logits,
			 circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	int L = c->n_layer, C = c->n_embd, V = c->vocab_size;
	for (int k = 0; k < n_iv; k++) {
		const circ_trace_iv *q = &iv[k];
		if (q->layer >= L || !tc[q->layer])
			return circ_errorf(
			    e, "unknown feature 'tc%d.f%d@%d': layer %d has no transcoder",
			    q->layer, q->feature, q->pos, q->layer);
		if (q->feature >= tc[q->layer]->cfg.d_sae)
			return circ_errorf(e,
					   "unknown feature 'tc%d.f%d@%d': the transcoder has %d "
					   "features",
					   q->layer, q->feature, q->pos, tc[q->layer]->cfg.d_sae);
		if (q->pos >= T)
			return circ_errorf(
			    e,
			    "feature 'tc%d.f%d@%d': position %d is beyond the prompt "
			    "(%d tokens)",
			    q->layer, q->feature, q->pos, q->pos, T);
	}
	state st = {.c = c, .tc = tc, .T = T};
	if (freeze(&st, m, tokens, threads > 0 ? threads : 1, e) < 0) {
		state_free(&st);
		return -1;
	}
	float *x = circ_xmalloc((size_t)T * C * sizeof *x);
	for (int t = 0; t < T; t++) {
		float *r = x + (size_t)t * C;
		vrows(st.emb, st.emb_dt, (size_t)tokens[t], 1, C, r);
		for (int i = 0; i < C; i++)
			r[i] = r[i] * st.escale + (st.wpe ? st.wpe[(size_t)t * C + i] : 0.0f);
	}
	iv_ctx ctx = {&st, iv, n_iv};
	replacement(&st, x, iv_mlp, &ctx);
	float *r = x + (size_t)(T - 1) * C;
	norm_fwd(&st, r, r, st.sf[T - 1], st.fin_w, st.fin_b);
	double *raw = circ_xmalloc((size_t)V * sizeof *raw);
	unembed(st.unemb, st.unemb_dt, V, C, r, raw, NULL);
	for (int v = 0; v < V; v++)
		logits[v] = (float)capped(raw[v], st.cap);
	free(raw);
	free(x);
	state_free(&st);
	return 0;
}

/* ---- the frozen prompt, for lib/tcircuit ---- */

/* st's model form (and, with a prompt, what it froze) moved into a new
 * frozen struct; st keeps what it still owns. */
static circ_trace_frozen *frozen_of(state *st)
{
	circ_trace_frozen *f = circ_xcalloc(1, sizeof *f);
	*f = (circ_trace_frozen){.L = st->L,
				 .H = st->H,
				 .K = st->K,
				 .C = st->C,
				 .D = st->D,
				 .T = st->T,
				 .rms = st->rms,
				 .parallel = st->parallel,
				 .off = st->off,
				 .lay = st->lay,
				 .emb = st->emb,
				 .emb_dt = st->emb_dt,
				 .escale = st->escale,
				 .wpe = st->wpe,
				 .s1 = st->s1,
				 .ra = st->ra,
				 .s2 = st->s2,
				 .sf = st->sf,
				 .att = st->att,
				 .acts = st->acts,
				 .errs = st->errs,
				 .in_kind = st->kinds,
				 .own = st->own};
	for (int l = 0; st->xin && l < st->L; l++)
		free(st->xin[l]);
	st->lay = NULL;
	st->own = NULL;
	st->s1 = st->ra = st->s2 = st->sf = st->att = NULL;
	st->acts = st->errs = NULL;
	st->kinds = NULL;
	state_free(st);
	return f;
}

circ_trace_frozen *circ_trace_freeze(const circ_model *m, const circ_dict *const *tc,
				     const int32_t *tokens, int T, int threads, circ_error *e)
{
	state st = {.c = circ_model_config(m), .tc = tc, .T = T};
	if (freeze(&st, m, tokens, threads > 0 ? threads : 1, e) < 0) {
		state_free(&st);
		return NULL;
	}
	return frozen_of(&st);
}

circ_trace_frozen *circ_trace_form(const circ_model *m, const circ_dict *const *tc)
{
	state st = {.c = circ_model_config(m), .tc = tc};
	bind_model(&st, m);
	st.kinds = circ_xmalloc((size_t)st.L * sizeof *st.kinds);
	for (int l = 0; l < st.L; l++)
		st.kinds[l] = tc[l] ? in_kind(st.c, tc[l]) : IN_RESID;
	return frozen_of(&st);
}

void circ_trace_frozen_free(circ_trace_frozen *f)
{
	if (!f)
		return;
	for (int l = 0; l < f->L; l++) {
		if (f->acts)
			free(f->acts[l]);
		if (f->errs)
			free(f->errs[l]);
	}
	for (int i = 0; f->own && i < 2 * f->L; i++)
		free(f->own[i]);
	free(f->own);
	free(f->lay);
	free(f->acts);
	free(f->errs);
	free(f->in_kind);
	free(f->s1);
	free(f->ra);
	free(f->s2);
	free(f->sf);
	free(f->att);
	free(f);
}
