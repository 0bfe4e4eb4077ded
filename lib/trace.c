/*
 * trace: attribution graphs (see trace.h for the replacement model, the
 * node order and the sweep). The prompt's forward is circ's own
 * (circ_forward on one sequence): it gives the residuals, the attention
 * patterns and the MLP outputs from which the frozen scales, the feature
 * activations and the error nodes are taken; everything after that is the
 * linear replacement model, here.
 */
#include "trace.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "topology.h"

/* How a transcoder reads the residual r at its MLP's input: x = r
 * (resid_mid, hook_mlp_in), x = (r - mean) / sigma (ln2.hook_normalized
 * with fold_ln), or that times ln_2's weight plus its bias (fold_ln 0). */
enum { IN_RESID, IN_NORM, IN_NORM_WB };

void circ_trace_opts_default(circ_trace_opts *o)
{
	o->max_n_logits = 10;
	o->desired_logit_prob = 0.95;
	o->batch = 256;
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
	case CIRC_TNODE_LOGIT: snprintf(out, n, "logit.%d", nd->feature); break;
	}
}

static int in_kind(const circ_dict *d)
{
	circ_hook h;
	circ_error e;
	if (circ_hook_parse(d->cfg.hook_name, &h, &e) < 0)
		return -1;
	if (h.kind == CIRC_HOOK_RESID_MID || h.kind == CIRC_HOOK_MLP_IN)
		return IN_RESID;
	if (h.kind == CIRC_HOOK_LN2_NORMALIZED)
		return d->cfg.fold_ln ? IN_NORM : IN_NORM_WB;
	return -1;
}

int circ_trace_layers(const circ_model *m, const circ_dict_set *set, const circ_dict **tc,
		      circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	if (c->model_type != CIRC_MODEL_GPT2)
		return circ_errorf(e,
				   "attribution graphs are implemented for GPT-2 models only, "
				   "not model_type '%s'",
				   circ_model_type_name(c->model_type));
	for (int l = 0; l < c->n_layer; l++)
		tc[l] = NULL;
	for (int i = 0; i < set->n; i++) {
		const circ_dict *d = set->dict[i];
		const char *p = d->path ? d->path : "(dictionary)";
		if (circ_dict_check_model(d, m, e) < 0)
			return -1;
		circ_hook ho;
		if (!d->cfg.transcoder || circ_hook_parse(d->cfg.hook_out, &ho, e) < 0 ||
		    ho.kind != CIRC_HOOK_MLP_OUT || in_kind(d) < 0)
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

/* 1/sigma of each row of x (T, C). */
static void inv_sigma(float *s, const float *x, int T, int C, double eps)
{
	for (int t = 0; t < T; t++) {
		const float *r = x + (size_t)t * C;
		double mu = 0, v = 0;
		for (int i = 0; i < C; i++)
			mu += r[i];
		mu /= C;
		for (int i = 0; i < C; i++)
			v += (r[i] - mu) * (r[i] - mu);
		s[t] = (float)(1.0 / sqrt(v / C + eps));
	}
}

/* Everything the sweep needs, from the prompt's forward. */
typedef struct state {
	const circ_config *c;
	const circ_weights *w;
	const circ_dict *const *tc;
	int L, H, C, D, T;
	float *s1, *s2, *sf;  /* (L, T), (L, T), (T): frozen 1/sigma of ln_1, ln_2, ln_f */
	float *att;	      /* (L, H, T, T) frozen patterns */
	float *src;	      /* (n_feat + n_err + T, C): each source's output vector */
	float *seed;	      /* (n_feat + n_logit, C): each target's gradient seed */
	int *feat_off;	      /* (L * T + 1): first feature node of (layer, position) */
	float **acts, **errs; /* (L) (T, S) activations, (T, C) error nodes */
	float **xin;	      /* (L) (T, C) transcoders' inputs (NULL without one) */
	int *kinds;	      /* (L) IN_* of each layer's transcoder */
	float *lnf;	      /* (C) ln_f's output at the last position */
	circ_trace_graph *g;
} state;

static void state_free(state *st)
{
	for (int l = 0; st->acts && l < st->L; l++) {
		free(st->acts[l]);
		free(st->errs[l]);
		free(st->xin[l]);
	}
	free(st->acts);
	free(st->errs);
	free(st->xin);
	free(st->kinds);
	free(st->lnf);
	free(st->s1);
	free(st->s2);
	free(st->sf);
	free(st->att);
	free(st->src);
	free(st->seed);
	free(st->feat_off);
}

/* Checks the prompt and runs it: the frozen patterns and scales, the
 * transcoders' inputs, activations and error nodes, ln_f's output at the
 * last position, into st (whose c, w, tc, L, H, C, D, T are set). */
static int freeze(state *st, const circ_model *m, const int32_t *tokens, int threads, circ_error *e)
{
	const circ_config *c = st->c;
	int L = st->L, H = st->H, C = st->C, T = st->T;
	if (c->model_type != CIRC_MODEL_GPT2)
		return circ_errorf(e, "attribution graphs are implemented for GPT-2 models only");
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
	const circ_weights *w = st->w;
	double eps = c->layer_norm_epsilon;
	st->s1 = circ_xmalloc((size_t)L * T * sizeof *st->s1);
	st->s2 = circ_xmalloc((size_t)L * T * sizeof *st->s2);
	st->sf = circ_xmalloc((size_t)T * sizeof *st->sf);
	st->att = circ_xmalloc((size_t)L * H * T * T * sizeof *st->att);
	st->kinds = circ_xmalloc((size_t)L * sizeof *st->kinds);
	st->acts = circ_xcalloc((size_t)L, sizeof *st->acts);
	st->errs = circ_xcalloc((size_t)L, sizeof *st->errs);
	st->xin = circ_xcalloc((size_t)L, sizeof *st->xin);
	for (int l = 0; l < L; l++) {
		const circ_dict *d = st->tc[l];
		inv_sigma(st->s1 + l * T, circ_run_resid(r, circ_topo_stage_attn(top, l)), T, C,
			  eps);
		inv_sigma(st->s2 + l * T, circ_run_resid(r, circ_topo_stage_mlp(top, l)), T, C,
			  eps);
		memcpy(st->att + (size_t)l * H * T * T, circ_run_attn(r, l),
		       (size_t)H * T * T * sizeof *st->att);
		st->kinds[l] = d ? in_kind(d) : IN_RESID;
		const float *mo = circ_run_node_out(r, circ_topo_node_mlp(top, l));
		float *err = st->errs[l] = circ_xmalloc((size_t)T * C * sizeof *err);
		if (!d) {
			memcpy(err, mo, (size_t)T * C * sizeof *err);
			continue;
		}
		st->xin[l] = circ_xmalloc((size_t)T * C * sizeof *st->xin[l]);
		if (circ_dict_hook_read(d, 1, r, st->xin[l], e) < 0) {
			circ_run_free(r);
			return -1;
		}
		st->acts[l] = circ_xmalloc((size_t)T * d->cfg.d_sae * sizeof *st->acts[l]);
		circ_dict_encode(d, st->xin[l], T, st->acts[l]);
		circ_dict_decode(d, st->acts[l], st->xin[l], T, err);
		for (size_t i = 0; i < (size_t)T * C; i++)
			err[i] = mo[i] - err[i];
	}
	const float *x = circ_run_resid(r, circ_topo_stage_final(top));
	inv_sigma(st->sf, x, T, C, eps);
	x += (size_t)(T - 1) * C;
	st->lnf = circ_xmalloc((size_t)C * sizeof *st->lnf);
	double mu = 0;
	for (int i = 0; i < C; i++)
		mu += x[i];
	mu /= C;
	for (int i = 0; i < C; i++)
		st->lnf[i] = (float)((x[i] - mu) * st->sf[T - 1]) * w->lnf_w[i] + w->lnf_b[i];
	circ_run_free(r);
	return 0;
}

/* The seed of target i: d pre / d residual at its injection point, for the
 * frozen norm in front of it: s * center(w (.) u) (or u for a raw read). */
static void norm_seed(float *v, const float *u, const float *wln, float s, int C, int kind)
{
	for (int i = 0; i < C; i++)
		v[i] = u[i] * (wln ? wln[i] : 1.0f);
	if (kind == IN_RESID)
		return;
	center(v, C);
	for (int i = 0; i < C; i++)
		v[i] *= s;
}

/* The forward of the constants alone (positional embeddings, biases) through
 * the frozen model: each target's bias. */
/* c (T, C) += the frozen attention of layer l applied to c: ln_1 with the
 * frozen 1/sigma, values, the frozen patterns, W_O and its bias. ln, v, z:
 * (T, C) scratch. */
static void frozen_attn(const state *st, int l, float *c, float *ln, float *v, float *z)
{
	int H = st->H, C = st->C, D = st->D, T = st->T;
	const circ_layer_weights *lw = &st->w->layers[l];
	for (int t = 0; t < T; t++) {
		float *x = ln + (size_t)t * C;
		memcpy(x, c + (size_t)t * C, C * sizeof *x);
		center(x, C);
		for (int i = 0; i < C; i++)
			x[i] = x[i] * st->s1[l * T + t] * lw->ln1_w[i] + lw->ln1_b[i];
	}
	circ_gemm(0, 0, T, C, C, 1.0f, ln, C, lw->attn_w + 2 * C, 3 * C, 0.0f, v, C);
	for (int t = 0; t < T; t++)
		for (int i = 0; i < C; i++)
			v[(size_t)t * C + i] += lw->attn_b[2 * C + i];
	memset(z, 0, (size_t)T * C * sizeof *z);
	for (int h = 0; h < H; h++)
		for (int t = 0; t < T; t++) {
			const float *a = st->att + (((size_t)l * H + h) * T + t) * T;
			for (int u = 0; u <= t; u++)
				for (int i = 0; i < D; i++)
					z[(size_t)t * C + h * D + i] +=
					    a[u] * v[(size_t)u * C + h * D + i];
		}
	circ_gemm(0, 0, T, C, C, 1.0f, z, C, lw->proj_w, C, 1.0f, c, C);
	for (int t = 0; t < T; t++)
		for (int i = 0; i < C; i++)
			c[(size_t)t * C + i] += lw->proj_b[i];
}

/* x (C) <- what layer l's transcoder reads of the residual r (C). */
static void tc_input(const state *st, int l, int t, const float *r, float *x)
{
	const circ_layer_weights *lw = &st->w->layers[l];
	int C = st->C;
	memcpy(x, r, C * sizeof *x);
	if (st->kinds[l] == IN_RESID)
		return;
	center(x, C);
	for (int i = 0; i < C; i++)
		x[i] *= st->s2[l * st->T + t];
	if (st->kinds[l] == IN_NORM_WB)
		for (int i = 0; i < C; i++)
			x[i] = x[i] * lw->ln2_w[i] + lw->ln2_b[i];
}

static void constant_bias(state *st, const float *ufin)
{
	int L = st->L, C = st->C, T = st->T;
	const circ_weights *w = st->w;
	circ_trace_graph *g = st->g;
	float *c = circ_xmalloc((size_t)T * C * sizeof *c);
	float *ln = circ_xmalloc((size_t)T * C * sizeof *ln);
	float *v = circ_xmalloc((size_t)T * C * sizeof *v);
	float *z = circ_xmalloc((size_t)T * C * sizeof *z);
	memcpy(c, w->wpe, (size_t)T * C * sizeof *c);
	for (int l = 0; l < L; l++) {
		frozen_attn(st, l, c, ln, v, z);
		const circ_dict *d = st->tc[l];
		if (!d)
			continue;
		float scale = (float)d->cfg.scale;
		for (int t = 0; t < T; t++) {
			float *x = ln + (size_t)t * C;
			tc_input(st, l, t, c + (size_t)t * C, x);
			for (int j = st->feat_off[l * T + t]; j < st->feat_off[l * T + t + 1];
			     j++) {
				int f = g->nodes[j].feature, S = d->cfg.d_sae;
				double s = 0;
				for (int i = 0; i < C; i++)
					s += (double)x[i] * d->W_enc[(size_t)i * S + f];
				g->nodes[j].bias = scale * s + d->b_enc[f];
			}
			for (int i = 0; i < C; i++)
				c[(size_t)t * C + i] += d->b_dec[i] / scale;
		}
	}
	float *x = ln + (size_t)(T - 1) * C;
	memcpy(x, c + (size_t)(T - 1) * C, C * sizeof *x);
	center(x, C);
	for (int i = 0; i < C; i++)
		x[i] = x[i] * st->sf[T - 1] * w->lnf_w[i] + w->lnf_b[i];
	int first = g->n - g->n_logit;
	for (int k = 0; k < g->n_logit; k++)
		g->nodes[first + k].bias = dot(x, ufin + (size_t)k * C, C);
	free(c);
	free(ln);
	free(v);
	free(z);
}

/* Reads the edges from sources (rows of src, node indices idx0 + j for
 * j < ns) into the batch's target rows: adj[tgt[k], idx0 + j] =
 * g_t[k] . src[j] (g_t: (K, C)). tmp: (K, ns) scratch. */
static void read_edges(circ_trace_graph *g, const int *tgt, int K, const float *gt, int C,
		       const float *src, int idx0, int ns, float *tmp)
{
	if (ns <= 0)
		return;
	circ_gemm(0, 1, K, ns, C, 1.0f, gt, C, src, C, 0.0f, tmp, ns);
	for (int k = 0; k < K; k++)
		memcpy(g->adj + (size_t)tgt[k] * g->n + idx0, tmp + (size_t)k * ns,
		       (size_t)ns * sizeof *tmp);
}

/* One batch of targets tgt (K node indices, features ascending then logits):
 * the sweep of trace.h. Buffers gb, y, dv, z (T * K * C) and tmp. */
static void sweep(state *st, int *tgt, int K, float *gb, float *y, float *dv, float *z, float *tmp)
{
	circ_trace_graph *g = st->g;
	int L = st->L, H = st->H, C = st->C, D = st->D, T = st->T;
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
		const circ_layer_weights *lw = &st->w->layers[l];
		/* gb: the gradient at layer l's output; its sources' edges */
		if (top > l)
			for (int t = 0; t < tb; t++) {
				const float *gt = gb + (size_t)t * KC;
				int a = st->feat_off[l * T + t], b = st->feat_off[l * T + t + 1];
				read_edges(g, tgt, nt[t], gt, C, st->src + (size_t)a * C, a, b - a,
					   tmp);
				int ei = first_err + l * T + t;
				read_edges(g, tgt, nt[t], gt, C, st->src + (size_t)ei * C, ei, 1,
					   tmp);
			}
		/* the MLP input: this layer's feature targets start here */
		for (int k = 0; k < K; k++) {
			const circ_tnode *nd = &g->nodes[tgt[k]];
			if (nd->kind == CIRC_TNODE_FEATURE && nd->layer == l) {
				float *gr = gb + (size_t)nd->pos * KC + (size_t)k * C;
				const float *sd = st->seed + (size_t)tgt[k] * C;
				for (int i = 0; i < C; i++)
					gr[i] += sd[i];
			}
		}
		/* attention, frozen: g += LN1^T W_V^T A^T W_O^T g. y = g W_O^T,
		 * regrouped by head (z[h] (tb, K * D)) so that the pattern's
		 * transpose mixes positions in one product per head
		 * (dv[h] = A_h^T z[h]), regrouped back, then y = dv W_V^T */
		int rows = tb * K;
		size_t hs = (size_t)rows * D;
		for (int t = 0; t < tb; t++) {
			circ_gemm(0, 1, nt[t], C, C, 1.0f, gb + t * KC, C, lw->proj_w, C, 0.0f,
				  y + t * KC, C);
			memset(y + t * KC + (size_t)nt[t] * C, 0,
			       (size_t)(K - nt[t]) * C * sizeof *y);
		}
		for (size_t q = 0; q < (size_t)rows; q++)
			for (int h = 0; h < H; h++)
				memcpy(z + h * hs + q * D, y + q * C + h * D, D * sizeof *z);
		for (int h = 0; h < H; h++)
			circ_gemm(1, 0, tb, K * D, tb, 1.0f, st->att + ((size_t)l * H + h) * T * T,
				  T, z + h * hs, K * D, 0.0f, dv + h * hs, K * D);
		for (size_t q = 0; q < (size_t)rows; q++)
			for (int h = 0; h < H; h++)
				memcpy(z + q * C + h * D, dv + h * hs + q * D, D * sizeof *z);
		for (int t = 0; t < tb; t++)
			circ_gemm(0, 1, nt[t], C, C, 1.0f, z + t * KC, C, lw->attn_w + 2 * C, 3 * C,
				  0.0f, y + t * KC, C);
		for (int t = 0; t < tb; t++)
			for (int k = 0; k < nt[t]; k++) {
				float *yr = y + (size_t)t * KC + (size_t)k * C;
				float *gr = gb + (size_t)t * KC + (size_t)k * C;
				for (int i = 0; i < C; i++)
					yr[i] *= lw->ln1_w[i];
				center(yr, C);
				float s = st->s1[l * T + t];
				for (int i = 0; i < C; i++)
					gr[i] += s * yr[i];
			}
	}
	/* the token embeddings */
	int first_in = g->n_feat + g->n_err;
	for (int t = 0; t < tb; t++) {
		int ii = first_in + t;
		read_edges(g, tgt, nt[t], gb + (size_t)t * KC, C,
			   st->src + (size_t)(g->n_feat + g->n_err + t) * C, ii, 1, tmp);
	}
	free(nt);
}

circ_trace_graph *circ_trace_build(const circ_model *m, const circ_dict *const *tc,
				   const int32_t *tokens, int T, const circ_trace_opts *o,
				   circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	int L = c->n_layer, H = c->n_head, C = c->n_embd, D = circ_config_head_dim(c),
	    V = c->vocab_size;
	const circ_weights *w = circ_model_weights(m);
	state st = {.c = c, .w = w, .tc = tc, .L = L, .H = H, .C = C, .D = D, .T = T};
	if (freeze(&st, m, tokens, o->threads > 0 ? o->threads : 1, e) < 0) {
		state_free(&st);
		return NULL;
	}
	int *kinds = st.kinds;
	float **acts = st.acts, **errs = st.errs, **xin = st.xin, *lnf = st.lnf;

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

	/* logits at the last position, demeaned */
	double *logit = circ_xmalloc((size_t)V * sizeof *logit);
	double lmax = -INFINITY, lsum = 0, zsum = 0;
	for (int v = 0; v < V; v++) {
		logit[v] = dot(lnf, w->lm_head + (size_t)v * C, C);
		lmax = logit[v] > lmax ? logit[v] : lmax;
		lsum += logit[v];
	}
	for (int v = 0; v < V; v++)
		zsum += exp(logit[v] - lmax);
	int nmax = o->max_n_logits < V ? o->max_n_logits : V;
	if (nmax < 1)
		nmax = 1;
	int *top_id = circ_xmalloc((size_t)nmax * sizeof *top_id);
	double *top_p = circ_xmalloc((size_t)nmax * sizeof *top_p);
	int nl = 0;
	double cum = 0;
	for (int k = 0; k < nmax; k++) {
		int best = -1;
		for (int v = 0; v < V; v++) {
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
	for (nl = 0; nl < nmax; nl++) {
		cum += top_p[nl];
		if (cum >= o->desired_logit_prob) {
			nl++;
			break;
		}
	}
	if (nl > nmax)
		nl = nmax;

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
	g->n = nf + L * T + T + nl;
	g->nodes = circ_xcalloc((size_t)g->n, sizeof *g->nodes);
	size_t nsrc = (size_t)nf + (size_t)L * T + T, ntgt = (size_t)nf + nl;
	st.src = circ_xmalloc(nsrc * C * sizeof *st.src);
	st.seed = circ_xmalloc(ntgt * C * sizeof *st.seed);
	int j = 0;
	for (int l = 0; l < L; l++) {
		const circ_dict *d = tc[l];
		if (!d)
			continue;
		int S = d->cfg.d_sae;
		float scale = (float)d->cfg.scale;
		float *u = circ_xmalloc((size_t)C * sizeof *u);
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
				norm_seed(st.seed + (size_t)j * C, u,
					  kinds[l] == IN_NORM_WB ? w->layers[l].ln2_w : NULL,
					  st.s2[l * T + t], C, kinds[l]);
				j++;
			}
		free(u);
	}
	for (int l = 0; l < L; l++)
		for (int t = 0; t < T; t++, j++) {
			circ_tnode *nd = &g->nodes[j];
			nd->kind = CIRC_TNODE_ERROR;
			nd->layer = l;
			nd->feature = -1;
			nd->pos = t;
			memcpy(st.src + (size_t)j * C, errs[l] + (size_t)t * C, C * sizeof *st.src);
		}
	for (int t = 0; t < T; t++, j++) {
		circ_tnode *nd = &g->nodes[j];
		nd->kind = CIRC_TNODE_INPUT;
		nd->layer = -1;
		nd->feature = tokens[t];
		nd->pos = t;
		memcpy(st.src + (size_t)j * C, w->wte + (size_t)tokens[t] * C, C * sizeof *st.src);
	}
	float *ufin = circ_xmalloc((size_t)(nl ? nl : 1) * C * sizeof *ufin);
	{
		double *mean = circ_xcalloc((size_t)C, sizeof *mean);
		for (int v = 0; v < V; v++)
			for (int i = 0; i < C; i++)
				mean[i] += w->lm_head[(size_t)v * C + i];
		for (int k = 0; k < nl; k++, j++) {
			circ_tnode *nd = &g->nodes[j];
			nd->kind = CIRC_TNODE_LOGIT;
			nd->layer = -1;
			nd->feature = top_id[k];
			nd->pos = T - 1;
			nd->act = top_p[k];
			nd->pre = logit[top_id[k]] - lsum / V;
			float *u = ufin + (size_t)k * C;
			for (int i = 0; i < C; i++)
				u[i] = (float)(w->lm_head[(size_t)top_id[k] * C + i] - mean[i] / V);
			norm_seed(st.seed + (size_t)(nf + k) * C, u, w->lnf_w, st.sf[T - 1], C,
				  IN_NORM);
		}
		free(mean);
	}
	constant_bias(&st, ufin);

	/* the sweeps */
	g->adj = circ_xcalloc((size_t)g->n * g->n, sizeof *g->adj);
	int B = o->batch > 0 ? o->batch : 256;
	int *tgt = circ_xmalloc((size_t)B * sizeof *tgt);
	size_t buf = (size_t)T * B * C;
	float *gb = circ_xmalloc(buf * sizeof *gb), *y = circ_xmalloc(buf * sizeof *y),
	      *dv = circ_xmalloc(buf * sizeof *dv), *z = circ_xmalloc(buf * sizeof *z);
	int maxsrc = 1;
	for (int q = 0; q < L * T; q++)
		if (st.feat_off[q + 1] - st.feat_off[q] > maxsrc)
			maxsrc = st.feat_off[q + 1] - st.feat_off[q];
	float *tmp = circ_xmalloc((size_t)B * maxsrc * sizeof *tmp);
	int ntg = nf + nl;
	for (int s = 0; s < ntg; s += B) {
		int K = ntg - s < B ? ntg - s : B;
		for (int k = 0; k < K; k++)
			tgt[k] = s + k < nf ? s + k : g->n - nl + (s + k - nf);
		sweep(&st, tgt, K, gb, y, dv, z, tmp);
	}
	free(tgt);
	free(gb);
	free(y);
	free(dv);
	free(z);
	free(tmp);
	free(ufin);
	free(top_id);
	free(top_p);
	free(logit);
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
		double s = nd->bias;
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
	const circ_weights *w = circ_model_weights(m);
	state st = {.c = c,
		    .w = w,
		    .tc = tc,
		    .L = L,
		    .H = c->n_head,
		    .C = C,
		    .D = circ_config_head_dim(c),
		    .T = T};
	if (freeze(&st, m, tokens, threads > 0 ? threads : 1, e) < 0) {
		state_free(&st);
		return -1;
	}
	size_t TC = (size_t)T * C;
	float *x = circ_xmalloc(TC * sizeof *x), *ln = circ_xmalloc(TC * sizeof *ln),
	      *v = circ_xmalloc(TC * sizeof *v), *z = circ_xmalloc(TC * sizeof *z);
	for (int t = 0; t < T; t++)
		for (int i = 0; i < C; i++)
			x[(size_t)t * C + i] =
			    w->wte[(size_t)tokens[t] * C + i] + w->wpe[(size_t)t * C + i];
	for (int l = 0; l < L; l++) {
		frozen_attn(&st, l, x, ln, v, z);
		const circ_dict *d = tc[l];
		if (d) {
			int S = d->cfg.d_sae;
			float *f = circ_xmalloc((size_t)T * S * sizeof *f);
			for (int t = 0; t < T; t++)
				tc_input(&st, l, t, x + (size_t)t * C, ln + (size_t)t * C);
			circ_dict_encode(d, ln, T, f);
			for (int k = 0; k < n_iv; k++)
				if (iv[k].layer == l) {
					float *a = f + (size_t)iv[k].pos * S + iv[k].feature;
					*a = (float)(iv[k].scale ? *a * iv[k].value : iv[k].value);
				}
			circ_dict_decode(d, f, ln, T, v);
			free(f);
			for (size_t i = 0; i < TC; i++)
				x[i] += v[i];
		}
		for (size_t i = 0; i < TC; i++)
			x[i] += st.errs[l][i];
	}
	float *r = x + (size_t)(T - 1) * C;
	center(r, C);
	for (int i = 0; i < C; i++)
		r[i] = r[i] * st.sf[T - 1] * w->lnf_w[i] + w->lnf_b[i];
	for (int k = 0; k < V; k++)
		logits[k] = (float)dot(r, w->lm_head + (size_t)k * C, C);
	free(x);
	free(ln);
	free(v);
	free(z);
	state_free(&st);
	return 0;
}

/* ---- the frozen prompt, for lib/tcircuit ---- */

circ_trace_frozen *circ_trace_freeze(const circ_model *m, const circ_dict *const *tc,
				     const int32_t *tokens, int T, int threads, circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	state st = {.c = c,
		    .w = circ_model_weights(m),
		    .tc = tc,
		    .L = c->n_layer,
		    .H = c->n_head,
		    .C = c->n_embd,
		    .D = circ_config_head_dim(c),
		    .T = T};
	if (freeze(&st, m, tokens, threads > 0 ? threads : 1, e) < 0) {
		state_free(&st);
		return NULL;
	}
	circ_trace_frozen *f = circ_xcalloc(1, sizeof *f);
	*f = (circ_trace_frozen){.L = st.L,
				 .H = st.H,
				 .C = st.C,
				 .D = st.D,
				 .T = T,
				 .s1 = st.s1,
				 .s2 = st.s2,
				 .sf = st.sf,
				 .att = st.att,
				 .acts = st.acts,
				 .errs = st.errs,
				 .in_kind = st.kinds};
	for (int l = 0; l < st.L; l++)
		free(st.xin[l]);
	free(st.xin);
	free(st.lnf);
	return f;
}

void circ_trace_frozen_free(circ_trace_frozen *f)
{
	if (!f)
		return;
	for (int l = 0; l < f->L; l++) {
		free(f->acts[l]);
		free(f->errs[l]);
	}
	free(f->acts);
	free(f->errs);
	free(f->in_kind);
	free(f->s1);
	free(f->s2);
	free(f->sf);
	free(f->att);
	free(f);
}

int circ_trace_in_kind(const circ_dict *d)
{
	return in_kind(d);
}
