/*
 * tcircuit: transcoder circuits (see tcircuit.h for the definitions). The
 * prompt's frozen quantities and every family's layers in one linear form
 * come from circ_trace_freeze (circ_trace_form without a prompt); the residual
 * stream is rebuilt from them in double (embeddings, frozen attention,
 * transcoder outputs plus error nodes), for the heads' value vectors. Path
 * and route vectors are double; the connections' products over whole
 * dictionaries are float GEMMs.
 */
#include "tcircuit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "safetensors.h"

struct circ_tc_prompt {
	const circ_dict **tc; /* (L) */
	circ_trace_frozen *f;
	int L, H, C, D, T;
	int32_t *tokens; /* (T) */
	double *val;	 /* (L, T, K*D) value vectors (the bias included), kv head k at k*D */
};

int circ_tc_parse_node(const char *s, int want_pos, circ_tc_elem *x, circ_error *e)
{
	int l, f, t, n = -1;
	*x = (circ_tc_elem){.kind = CIRC_TCE_FEATURE, .layer = -1, .index = -1, .pos = -1};
	if (want_pos) {
		if (sscanf(s, "tc%d.f%d@%d%n", &l, &f, &t, &n) == 3 && n > 0 && !s[n] && l >= 0 &&
		    f >= 0 && t >= 0)
			*x = (circ_tc_elem){CIRC_TCE_FEATURE, l, f, t, t, 0};
		else if (n = -1, sscanf(s, "tc%d.err@%d%n", &l, &t, &n) == 2 && n > 0 && !s[n] &&
				     l >= 0 && t >= 0)
			*x = (circ_tc_elem){CIRC_TCE_ERROR, l, -1, t, t, 0};
		else if (n = -1, sscanf(s, "input@%d%n", &t, &n) == 1 && n > 0 && !s[n] && t >= 0)
			*x = (circ_tc_elem){CIRC_TCE_INPUT, -1, -1, t, t, 0};
		else
			return circ_errorf(e,
					   "node '%s': expected tc<layer>.f<feature>@<pos>, "
					   "tc<layer>.err@<pos> or input@<pos>",
					   s);
		return 0;
	}
	if (sscanf(s, "tc%d.f%d%n", &l, &f, &n) == 2 && n > 0 && !s[n] && l >= 0 && f >= 0) {
		*x = (circ_tc_elem){CIRC_TCE_FEATURE, l, f, -1, -1, 0};
		return 0;
	}
	return circ_errorf(e, "feature '%s': expected tc<layer>.f<feature>", s);
}

void circ_tc_elem_name(const circ_tc_elem *x, char *out, size_t n)
{
	switch (x->kind) {
	case CIRC_TCE_FEATURE:
		if (x->pos < 0)
			snprintf(out, n, "tc%d.f%d", x->layer, x->index);
		else
			snprintf(out, n, "tc%d.f%d@%d", x->layer, x->index, x->pos);
		break;
	case CIRC_TCE_ERROR: snprintf(out, n, "tc%d.err@%d", x->layer, x->pos); break;
	case CIRC_TCE_INPUT:
		if (x->pos < 0)
			snprintf(out, n, "input.%d", x->index);
		else
			snprintf(out, n, "input@%d", x->pos);
		break;
	case CIRC_TCE_HEAD:
		snprintf(out, n, "L%dH%d:%d>%d", x->layer, x->index, x->pos, x->dst);
		break;
	}
}

/* ---- shared vector pieces ---- */

static void center_d(double *u, int C)
{
	double s = 0;
	for (int i = 0; i < C; i++)
		s += u[i];
	s /= C;
	for (int i = 0; i < C; i++)
		u[i] -= s;
}

static double dot_df(const double *a, const float *b, int n)
{
	double s = 0;
	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static double dot_dd(const double *a, const double *b, int n)
{
	double s = 0;
	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

/* The weight a norm multiplies by: w (LayerNorm), off + w (RMSNorm); 1
 * without w. */
static double nwt(const circ_trace_frozen *f, const float *w, int i)
{
	return w ? (f->rms ? f->off + w[i] : w[i]) : 1.0;
}

/* g <- the frozen norm (weight w, scale s, no bias) applied to g:
 * s w (.) P g (LayerNorm), s (off + w) (.) g (RMSNorm). */
static void norm_fwd(const circ_trace_frozen *f, double *g, const float *w, double s)
{
	if (!f->rms)
		center_d(g, f->C);
	for (int i = 0; i < f->C; i++)
		g[i] *= s * nwt(f, w, i);
}

/* g <- its transpose applied to g: s P (w (.) g), s (off + w) (.) g. */
static void norm_back(const circ_trace_frozen *f, double *g, const float *w, double s)
{
	for (int i = 0; i < f->C; i++)
		g[i] *= nwt(f, w, i);
	if (!f->rms)
		center_d(g, f->C);
	for (int i = 0; i < f->C; i++)
		g[i] *= s;
}

/* y (n) += x (m) W over W's inputs [i0, i0 + m) and outputs [j0, j0 + n). */
static void tm_fwd(const circ_tmat *W, int i0, int m, int j0, int n, const double *x, double *y)
{
	if (W->nn) {
		for (int j = 0; j < n; j++)
			y[j] += dot_df(x, W->p + (size_t)(j0 + j) * W->ld + i0, m);
		return;
	}
	for (int i = 0; i < m; i++) {
		const float *r = W->p + (size_t)(i0 + i) * W->ld + j0;
		for (int j = 0; j < n; j++)
			y[j] += x[i] * r[j];
	}
}

/* x (m) = W y (n): the transpose, over the same ranges. */
static void tm_back(const circ_tmat *W, int i0, int m, int j0, int n, const double *y, double *x)
{
	if (!W->nn) {
		for (int i = 0; i < m; i++)
			x[i] = dot_df(y, W->p + (size_t)(i0 + i) * W->ld + j0, n);
		return;
	}
	for (int i = 0; i < m; i++)
		x[i] = 0;
	for (int j = 0; j < n; j++) {
		const float *r = W->p + (size_t)(j0 + j) * W->ld + i0;
		for (int i = 0; i < m; i++)
			x[i] += y[j] * r[i];
	}
}

/* The key/value head that query head h reads. */
static int kv_of(const circ_trace_frozen *f, int h)
{
	return h / (f->H / f->K);
}

/* The last layer whose heads feed a point of layer c: its MLP's input (mid;
 * with parallel blocks that is the layer's input) or its attention's. */
static int head_max(const circ_trace_frozen *f, int c, int mid)
{
	return mid && !f->parallel ? c : c - 1;
}

/* v (C) = token tok's embedding (times the family's scale). tmp: (C). */
static void emb_row(const circ_trace_frozen *f, int tok, double *v, float *tmp)
{
	int C = f->C;
	if (f->emb_dt == CIRC_F32)
		memcpy(tmp, (const float *)f->emb + (size_t)tok * C, (size_t)C * sizeof *tmp);
	else
		circ_st_to_f32(tmp, (const char *)f->emb + (size_t)tok * C * 2, f->emb_dt,
			       (size_t)C);
	for (int i = 0; i < C; i++)
		v[i] = (double)tmp[i] * f->escale;
}

/* g (C) = s R^T enc_i: what feature i of transcoder d (layer l) reads of
 * the residual, pulled back through its input's norm, frozen at scale s
 * (1 for the input-invariant connections). */
static void enc_read(double *g, const circ_trace_frozen *f, const circ_dict *d, int l, int i,
		     double s)
{
	int S = d->cfg.d_sae, C = f->C, kind = f->in_kind[l];
	for (int c = 0; c < C; c++)
		g[c] = (double)d->W_enc[(size_t)c * S + i] * d->cfg.scale;
	if (kind != 0)
		norm_back(f, g, kind == 2 ? f->lay[l].n2_w : NULL, s);
}

/* o (D) = W_O^h^T (the norm after the attention)^T g: head (a, h)'s output
 * direction read by g (C) at its destination, where that norm's frozen
 * scale is sa (1 without a prompt). tmp: (C) scratch. */
static void wo_read(const circ_trace_frozen *f, int a, int h, const double *g, double sa, double *o,
		    double *tmp)
{
	const circ_trace_layer *y = &f->lay[a];
	int C = f->C, D = f->D;
	if (y->pa_w) {
		for (int i = 0; i < C; i++)
			tmp[i] = g[i] * sa * nwt(f, y->pa_w, i);
		g = tmp;
	}
	tm_back(&y->o, h * D, D, 0, C, g, o);
}

/* r (C) = N^T W_V^h o: the residual direction at head (a, h)'s source that
 * its value reads for output direction o (D), through the norm before the
 * attention frozen at scale s1 (1 without a prompt). */
static void wv_back(const circ_trace_frozen *f, int a, int h, const double *o, double s1, double *r)
{
	const circ_trace_layer *y = &f->lay[a];
	tm_back(&y->v, 0, f->C, kv_of(f, h) * f->D, f->D, o, r);
	if (y->n1_w)
		norm_back(f, r, y->n1_w, s1);
}

/* g (C) <- head (a, h)'s OV circuit applied to g forward, every frozen
 * scale left out: N, W_V^h, W_O^h, the norm after the attention's weight.
 * o: (D), tmp: (C) scratch. */
static void ov_fwd(const circ_trace_frozen *f, int a, int h, double *g, double *o, double *tmp)
{
	const circ_trace_layer *y = &f->lay[a];
	int C = f->C, D = f->D;
	if (y->n1_w)
		norm_fwd(f, g, y->n1_w, 1.0);
	memset(o, 0, (size_t)D * sizeof *o);
	tm_fwd(&y->v, 0, C, kv_of(f, h) * D, D, g, o);
	memset(tmp, 0, (size_t)C * sizeof *tmp);
	tm_fwd(&y->o, h * D, D, 0, C, o, tmp);
	for (int i = 0; i < C; i++)
		g[i] = tmp[i] * (y->pa_w ? nwt(f, y->pa_w, i) : 1.0);
}

/* ---- input-invariant connections ---- */

typedef struct keeper {
	circ_tc_conn *c;
	long *seq;
	int n, cap;
	double min; /* the smallest |weight| kept once full */
	long next;
} keeper;

static void keep_offer(keeper *k, const circ_tc_conn *x)
{
	double a = fabs(x->weight);
	long s = k->next++;
	if (k->n < k->cap) {
		k->c[k->n] = *x;
		k->seq[k->n++] = s;
	} else if (a > k->min) {
		int m = 0;
		for (int i = 1; i < k->n; i++)
			if (fabs(k->c[i].weight) < fabs(k->c[m].weight) ||
			    (fabs(k->c[i].weight) == fabs(k->c[m].weight) && k->seq[i] > k->seq[m]))
				m = i;
		k->c[m] = *x;
		k->seq[m] = s;
	} else
		return;
	if (k->n == k->cap) {
		k->min = INFINITY;
		for (int i = 0; i < k->n; i++)
			if (fabs(k->c[i].weight) < k->min)
				k->min = fabs(k->c[i].weight);
	}
}

/* Sorts the kept connections by descending |weight|, ties by offer order. */
static void keep_sort(keeper *k)
{
	for (int i = 1; i < k->n; i++) /* insertion sort: top is small */
		for (int j = i; j > 0; j--) {
			double a = fabs(k->c[j].weight), b = fabs(k->c[j - 1].weight);
			if (a < b || (a == b && k->seq[j] > k->seq[j - 1]))
				break;
			circ_tc_conn t = k->c[j];
			k->c[j] = k->c[j - 1];
			k->c[j - 1] = t;
			long q = k->seq[j];
			k->seq[j] = k->seq[j - 1];
			k->seq[j - 1] = q;
		}
}

/* Route directions as float rows (n, C) with their head (layer, head). */
typedef struct routeset {
	float *v;
	int *al, *ah;
	int n;
} routeset;

static void routes_add(routeset *r, const double *v, int C, int a, int h)
{
	for (int i = 0; i < C; i++)
		r->v[(size_t)r->n * C + i] = (float)v[i];
	r->al[r->n] = a;
	r->ah[r->n++] = h;
}

/* Offers every (row of W (N, C), of dtype dt, times scl; route) product
 * among routes whose layer is above min_a (-1: every route): other =
 * proto with index the row. rows: (chunk, C) scratch for narrow W. */
static void offer_products(keeper *k, const void *W, circ_dtype dt, int N, int C, double scl,
			   const routeset *r, int min_a, int upstream, circ_tc_elem proto,
			   float *tmp, float *rows, int chunk)
{
	for (int r0 = 0; r0 < N; r0 += chunk) {
		int nr = N - r0 < chunk ? N - r0 : chunk;
		const float *wr = (const float *)W + (size_t)r0 * C;
		if (dt != CIRC_F32) {
			circ_st_to_f32(rows, (const char *)W + (size_t)r0 * C * 2, dt,
				       (size_t)nr * C);
			wr = rows;
		}
		circ_gemm(0, 1, nr, r->n, C, 1.0f, wr, C, r->v, C, 0.0f, tmp, r->n);
		for (int j = 0; j < nr; j++)
			for (int q = 0; q < r->n; q++) {
				if (r->al[q] >= 0 && r->al[q] <= min_a)
					continue;
				circ_tc_conn x = {.upstream = upstream,
						  .other = proto,
						  .head_layer = r->al[q],
						  .head = r->ah[q],
						  .weight = tmp[(size_t)j * r->n + q] * scl};
				x.other.index = r0 + j;
				keep_offer(k, &x);
			}
	}
}

int circ_tc_connections(const circ_model *m, const circ_dict *const *tc, const circ_tc_elem *x,
			int top, int with_tokens, int threads, circ_tc_conn **out, int *n,
			circ_error *e)
{
	const circ_config *cf = circ_model_config(m);
	int L = cf->n_layer, H = cf->n_head, C = cf->n_embd, D = circ_config_head_dim(cf);
	if (x->kind != CIRC_TCE_FEATURE || x->layer >= L || !tc[x->layer])
		return circ_errorf(e, "unknown feature 'tc%d.f%d': layer %d has no transcoder",
				   x->layer, x->index, x->layer);
	const circ_dict *dx = tc[x->layer];
	if (x->index >= dx->cfg.d_sae)
		return circ_errorf(e, "unknown feature 'tc%d.f%d': the transcoder has %d features",
				   x->layer, x->index, dx->cfg.d_sae);
	if (top < 1)
		return circ_errorf(e, "connections: top must be at least 1, not %d", top);
	circ_blas_threads(threads > 0 ? threads : 1);
	circ_trace_frozen *f = circ_trace_form(m, tc);
	int l = x->layer, Dm = D > C ? D : C;
	keeper up = {.c = circ_xmalloc((size_t)top * sizeof *up.c),
		     .seq = circ_xmalloc((size_t)top * sizeof *up.seq),
		     .cap = top};
	keeper dn = {.c = circ_xmalloc((size_t)top * sizeof *dn.c),
		     .seq = circ_xmalloc((size_t)top * sizeof *dn.seq),
		     .cap = top};
	routeset rs = {.v = circ_xmalloc((size_t)(1 + L * H) * C * sizeof *rs.v),
		       .al = circ_xmalloc((size_t)(1 + L * H) * sizeof *rs.al),
		       .ah = circ_xmalloc((size_t)(1 + L * H) * sizeof *rs.ah)};
	double *g = circ_xmalloc((size_t)C * sizeof *g), *r = circ_xmalloc((size_t)C * sizeof *r),
	       *o = circ_xmalloc((size_t)Dm * sizeof *o), *q = circ_xmalloc((size_t)C * sizeof *q),
	       *tmpc = circ_xmalloc((size_t)C * sizeof *tmpc);
	int chunk = 4096;
	float *tmp = circ_xmalloc((size_t)chunk * (1 + L * H) * sizeof *tmp);
	float *rows = f->emb_dt != CIRC_F32 ? circ_xmalloc((size_t)chunk * C * sizeof *rows) : NULL;

	/* upstream: g = R^T enc_x, through head (a, h), a up to the last layer
	 * whose heads feed x: N^T W_V^h W_O^h^T g */
	enc_read(g, f, dx, l, x->index, 1.0);
	routes_add(&rs, g, C, -1, -1);
	for (int a = 0; a <= head_max(f, l, 1); a++)
		for (int h = 0; h < H; h++) {
			wo_read(f, a, h, g, 1.0, o, tmpc);
			wv_back(f, a, h, o, 1.0, r);
			routes_add(&rs, r, C, a, h);
		}
	for (int lp = 0; lp < l; lp++)
		if (tc[lp])
			offer_products(&up, tc[lp]->W_dec, CIRC_F32, tc[lp]->cfg.d_sae, C,
				       1.0 / tc[lp]->cfg.scale, &rs, lp, 1,
				       (circ_tc_elem){CIRC_TCE_FEATURE, lp, 0, -1, -1, 0}, tmp,
				       NULL, chunk);
	if (with_tokens)
		offer_products(&up, f->emb, f->emb_dt, cf->vocab_size, C, f->escale, &rs, -1, 1,
			       (circ_tc_elem){CIRC_TCE_INPUT, -1, 0, -1, -1, 0}, tmp, rows, chunk);

	/* downstream: dec_x, and through head (a, h) of the layers after x's up
	 * to the last feeding l2: the OV circuit forward; read by layer l2's
	 * transcoder through its input's norm */
	for (int l2 = l + 1; l2 < L; l2++) {
		if (!tc[l2])
			continue;
		int kind = f->in_kind[l2];
		rs.n = 0;
		for (int a = l; a <= head_max(f, l2, 1); a++)
			for (int h = (a == l ? -1 : 0); h < (a == l ? 0 : H); h++) {
				for (int i = 0; i < C; i++)
					g[i] = (double)dx->W_dec[(size_t)x->index * C + i] /
					       dx->cfg.scale;
				if (h >= 0)
					ov_fwd(f, a, h, g, o, tmpc);
				memcpy(q, g, (size_t)C * sizeof *q);
				if (kind != 0)
					norm_fwd(f, q, kind == 2 ? f->lay[l2].n2_w : NULL, 1.0);
				routes_add(&rs, q, C, h >= 0 ? a : -1, h);
			}
		/* products with W_enc (C, S): columns, so transpose through tmp rows */
		const circ_dict *d2 = tc[l2];
		int S = d2->cfg.d_sae;
		for (int c0 = 0; c0 < S; c0 += chunk) {
			int nc = S - c0 < chunk ? S - c0 : chunk;
			circ_gemm(1, 1, nc, rs.n, C, 1.0f, d2->W_enc + c0, S, rs.v, C, 0.0f, tmp,
				  rs.n);
			for (int j = 0; j < nc; j++)
				for (int k = 0; k < rs.n; k++) {
					circ_tc_conn cx = {
					    .upstream = 0,
					    .other = {CIRC_TCE_FEATURE, l2, c0 + j, -1, -1, 0},
					    .head_layer = rs.al[k],
					    .head = rs.ah[k],
					    .weight = tmp[(size_t)j * rs.n + k] * d2->cfg.scale};
					keep_offer(&dn, &cx);
				}
		}
	}
	keep_sort(&up);
	keep_sort(&dn);
	*n = up.n + dn.n;
	*out = circ_xmalloc((size_t)(*n > 0 ? *n : 1) * sizeof **out);
	memcpy(*out, up.c, (size_t)up.n * sizeof **out);
	memcpy(*out + up.n, dn.c, (size_t)dn.n * sizeof **out);
	free(up.c);
	free(up.seq);
	free(dn.c);
	free(dn.seq);
	free(rs.v);
	free(rs.al);
	free(rs.ah);
	free(g);
	free(r);
	free(o);
	free(q);
	free(tmpc);
	free(tmp);
	free(rows);
	circ_trace_frozen_free(f);
	return 0;
}

/* ---- one prompt ---- */

circ_tc_prompt *circ_tc_prompt_new(const circ_model *m, const circ_dict *const *tc,
				   const int32_t *tokens, int T, int threads, circ_error *e)
{
	circ_trace_frozen *f = circ_trace_freeze(m, tc, tokens, T, threads, e);
	if (!f)
		return NULL;
	int L = f->L, H = f->H, C = f->C, D = f->D, KD = f->K * f->D, Q = H * D;
	circ_tc_prompt *p = circ_xcalloc(1, sizeof *p);
	*p = (circ_tc_prompt){.f = f, .L = L, .H = H, .C = C, .D = D, .T = T};
	p->tc = circ_xmalloc((size_t)L * sizeof *p->tc);
	memcpy(p->tc, tc, (size_t)L * sizeof *p->tc);
	p->tokens = circ_xmalloc((size_t)T * sizeof *p->tokens);
	memcpy(p->tokens, tokens, (size_t)T * sizeof *tokens);
	/* the residual rebuilt in double from what the prompt froze: each
	 * layer's attention (frozen norms and patterns) and MLP output (the
	 * transcoder's output plus the error node), for the value vectors */
	p->val = circ_xmalloc((size_t)L * T * KD * sizeof *p->val);
	size_t TC = (size_t)T * C;
	double *x = circ_xmalloc(TC * sizeof *x), *h1 = circ_xmalloc((size_t)C * sizeof *h1),
	       *z = circ_xmalloc((size_t)T * Q * sizeof *z), *ao = circ_xmalloc(TC * sizeof *ao);
	float *tmp = circ_xmalloc((size_t)C * sizeof *tmp);
	for (int t = 0; t < T; t++) {
		emb_row(f, tokens[t], x + (size_t)t * C, tmp);
		for (int i = 0; f->wpe && i < C; i++)
			x[(size_t)t * C + i] += f->wpe[(size_t)t * C + i];
	}
	for (int l = 0; l < L; l++) {
		const circ_trace_layer *y = &f->lay[l];
		double *val = p->val + (size_t)l * T * KD;
		for (int t = 0; t < T; t++) {
			memcpy(h1, x + (size_t)t * C, (size_t)C * sizeof *h1);
			if (y->n1_w) {
				norm_fwd(f, h1, y->n1_w, f->s1[l * T + t]);
				for (int i = 0; y->n1_b && i < C; i++)
					h1[i] += y->n1_b[i];
			}
			double *v = val + (size_t)t * KD;
			for (int j = 0; j < KD; j++)
				v[j] = y->v_b ? y->v_b[j] : 0.0;
			tm_fwd(&y->v, 0, C, 0, KD, h1, v);
		}
		memset(z, 0, (size_t)T * Q * sizeof *z);
		for (int h = 0; h < H; h++) {
			int k = kv_of(f, h);
			for (int t = 0; t < T; t++) {
				const float *a = f->att + (((size_t)l * H + h) * T + t) * T;
				for (int u = 0; u <= t; u++)
					for (int d = 0; d < D; d++)
						z[(size_t)t * Q + h * D + d] +=
						    a[u] * val[(size_t)u * KD + k * D + d];
			}
		}
		const circ_dict *d = tc[l];
		for (int t = 0; t < T; t++) {
			double *xr = x + (size_t)t * C, *ar = ao + (size_t)t * C;
			for (int i = 0; i < C; i++)
				ar[i] = y->o_b ? y->o_b[i] : 0.0;
			tm_fwd(&y->o, 0, Q, 0, C, z + (size_t)t * Q, ar);
			for (int i = 0; y->pa_w && i < C; i++)
				ar[i] *= f->ra[l * T + t] * nwt(f, y->pa_w, i);
			for (int i = 0; i < C; i++)
				xr[i] += ar[i] + f->errs[l][(size_t)t * C + i];
			if (!d)
				continue;
			int S = d->cfg.d_sae;
			for (int i = 0; i < C; i++)
				xr[i] += d->b_dec[i] / d->cfg.scale;
			for (int j = 0; j < S; j++) {
				float a = f->acts[l][(size_t)t * S + j];
				if (a != 0.0f)
					for (int i = 0; i < C; i++)
						xr[i] += (double)a * d->W_dec[(size_t)j * C + i] /
							 d->cfg.scale;
			}
		}
	}
	free(x);
	free(h1);
	free(z);
	free(ao);
	free(tmp);
	return p;
}

void circ_tc_prompt_free(circ_tc_prompt *p)
{
	if (!p)
		return;
	circ_trace_frozen_free(p->f);
	free(p->tc);
	free(p->tokens);
	free(p->val);
	free(p);
}

/* -1 with a message unless x is a node of the prompt (a feature of a
 * transcoder of the set, an error node of a layer, a token) whose position
 * is within it. */
static int check_node(const circ_tc_prompt *p, const circ_tc_elem *x, circ_error *e)
{
	char nm[96];
	circ_tc_elem_name(x, nm, sizeof nm);
	if (x->kind == CIRC_TCE_HEAD)
		return circ_errorf(e, "'%s': a head is not a node", nm);
	if (x->kind != CIRC_TCE_INPUT && x->layer >= p->L)
		return circ_errorf(e, "unknown node '%s': the model has %d layers", nm, p->L);
	if (x->kind == CIRC_TCE_FEATURE && !p->tc[x->layer])
		return circ_errorf(e, "unknown feature '%s': layer %d has no transcoder", nm,
				   x->layer);
	if (x->kind == CIRC_TCE_FEATURE && x->index >= p->tc[x->layer]->cfg.d_sae)
		return circ_errorf(e, "unknown feature '%s': the transcoder has %d features", nm,
				   p->tc[x->layer]->cfg.d_sae);
	if (x->pos < 0 || x->pos >= p->T)
		return circ_errorf(e, "node '%s': position %d is beyond the prompt (%d tokens)", nm,
				   x->pos, p->T);
	return 0;
}

static double act_of(const circ_tc_prompt *p, int l, int j, int t)
{
	int S = p->tc[l]->cfg.d_sae;
	return p->f->acts[l][(size_t)t * S + j];
}

int circ_tc_activation(const circ_tc_prompt *p, const circ_tc_elem *x, double *act, circ_error *e)
{
	if (x->kind != CIRC_TCE_FEATURE)
		return circ_errorf(e, "not a feature");
	if (check_node(p, x, e) < 0)
		return -1;
	*act = act_of(p, x->layer, x->index, x->pos);
	return 0;
}

/* -1 with "feature '...' is not active ..." unless x's activation is not 0. */
static int check_active(const circ_tc_prompt *p, const circ_tc_elem *x, const char *role,
			circ_error *e)
{
	if (check_node(p, x, e) < 0)
		return -1;
	if (x->kind == CIRC_TCE_FEATURE && act_of(p, x->layer, x->index, x->pos) == 0.0) {
		char nm[96];
		circ_tc_elem_name(x, nm, sizeof nm);
		return circ_errorf(e, "%s feature '%s' is not active on the prompt (activation 0)",
				   role, nm);
	}
	return 0;
}

/* The target gradient of active feature x: s2 R^T enc_x at its position. */
static void target_grad(const circ_tc_prompt *p, const circ_tc_elem *x, double *g)
{
	enc_read(g, p->f, p->tc[x->layer], x->layer, x->index, p->f->s2[x->layer * p->T + x->pos]);
}

/* g2 = A[a][h][q][r] N^T W_V^h W_O^h^T Pa^T g: g (at layer a's output,
 * position q) pulled back to head (a, h)'s input at source r, through the
 * frozen norms (Pa the one after the attention, at q; N before it, at r).
 * o: (D), tmp: (C) scratch. */
static void head_back(const circ_tc_prompt *p, int a, int h, int q, int r, const double *g,
		      double *g2, double *o, double *tmp)
{
	const circ_trace_frozen *f = p->f;
	int T = p->T, C = p->C;
	wo_read(f, a, h, g, f->ra[a * T + q], o, tmp);
	wv_back(f, a, h, o, f->s1[a * T + r], g2);
	double s = f->att[(((size_t)a * p->H + h) * T + q) * T + r];
	for (int i = 0; i < C; i++)
		g2[i] *= s;
}

/* The source vector of node x: act dec (feature), the error, the token's
 * embedding. */
static void source_vec(const circ_tc_prompt *p, const circ_tc_elem *x, double *v)
{
	int C = p->C;
	if (x->kind == CIRC_TCE_FEATURE) {
		const circ_dict *d = p->tc[x->layer];
		double a = act_of(p, x->layer, x->index, x->pos);
		for (int i = 0; i < C; i++)
			v[i] = a * d->W_dec[(size_t)x->index * C + i] / d->cfg.scale;
	} else if (x->kind == CIRC_TCE_ERROR) {
		for (int i = 0; i < C; i++)
			v[i] = p->f->errs[x->layer][(size_t)x->pos * C + i];
	} else {
		float *tmp = circ_xmalloc((size_t)C * sizeof *tmp);
		emb_row(p->f, p->tokens[x->pos], v, tmp);
		free(tmp);
	}
}

/* ---- routes ---- */

typedef struct rctx {
	const circ_tc_prompt *p;
	const circ_tc_elem *src;
	const double *sv;	/* (C) the source's vector */
	circ_tc_elem stack[64]; /* hops, downstream first */
	long n, cap, max;
	circ_tc_elem *hops; /* (cap, L) */
	int *nh;
	double *attr;
	int over;
} rctx;

/* Routes into the gradient g at layer c's MLP input (mid) or attention
 * input (!mid), position u, after depth hops. */
static void routes_rec(rctx *rc, const double *g, int c, int mid, int u, int depth)
{
	const circ_tc_prompt *p = rc->p;
	int L = p->L, C = p->C, sl = rc->src->layer;
	if (rc->over)
		return;
	if (u == rc->src->pos && sl < c) {
		if (rc->n == rc->max) {
			rc->over = 1;
			return;
		}
		if (rc->n == rc->cap) {
			rc->cap = rc->cap ? 2 * rc->cap : 64;
			rc->hops = circ_xrealloc(rc->hops, (size_t)rc->cap * L * sizeof *rc->hops);
			rc->nh = circ_xrealloc(rc->nh, (size_t)rc->cap * sizeof *rc->nh);
			rc->attr = circ_xrealloc(rc->attr, (size_t)rc->cap * sizeof *rc->attr);
		}
		for (int k = 0; k < depth; k++)
			rc->hops[(size_t)rc->n * L + k] = rc->stack[depth - 1 - k];
		rc->nh[rc->n] = depth;
		rc->attr[rc->n++] = dot_dd(rc->sv, g, C);
	}
	int amax = head_max(p->f, c, mid), Dm = p->D > C ? p->D : C;
	double *g2 = circ_xmalloc((size_t)C * sizeof *g2),
	       *o = circ_xmalloc((size_t)Dm * sizeof *o),
	       *tmp = circ_xmalloc((size_t)C * sizeof *tmp);
	for (int a = sl + 1; a <= amax; a++)
		for (int h = 0; h < p->H; h++)
			for (int r = rc->src->pos; r <= u; r++) {
				head_back(p, a, h, u, r, g, g2, o, tmp);
				rc->stack[depth] = (circ_tc_elem){CIRC_TCE_HEAD, a, h, r, u, 0};
				routes_rec(rc, g2, a, 0, r, depth + 1);
			}
	free(g2);
	free(o);
	free(tmp);
}

int circ_tc_routes(const circ_tc_prompt *p, const circ_tc_elem *src, const circ_tc_elem *tgt,
		   long max_routes, circ_tc_elem **hops, int **n_hops, double **attr, int *n,
		   circ_error *e)
{
	if (tgt->kind != CIRC_TCE_FEATURE)
		return circ_errorf(e, "the target of routes must be a feature");
	if (check_active(p, tgt, "target", e) < 0 || check_active(p, src, "source", e) < 0)
		return -1;
	if (src->layer >= tgt->layer || src->pos > tgt->pos) {
		char a[96], b[96];
		circ_tc_elem_name(src, a, sizeof a);
		circ_tc_elem_name(tgt, b, sizeof b);
		return circ_errorf(e,
				   "'%s' is not upstream of '%s' (an earlier layer at the same "
				   "or an earlier position)",
				   a, b);
	}
	int C = p->C;
	double *g = circ_xmalloc((size_t)C * sizeof *g), *sv = circ_xmalloc((size_t)C * sizeof *sv);
	target_grad(p, tgt, g);
	source_vec(p, src, sv);
	rctx rc = {.p = p, .src = src, .sv = sv, .max = max_routes};
	routes_rec(&rc, g, tgt->layer, 1, tgt->pos, 0);
	free(g);
	free(sv);
	if (rc.over) {
		free(rc.hops);
		free(rc.nh);
		free(rc.attr);
		return circ_errorf(e, "more than %ld routes (raise the limit)", max_routes);
	}
	*hops = rc.hops;
	*n_hops = rc.nh;
	*attr = rc.attr;
	*n = (int)rc.n;
	return 0;
}

/* ---- the beam search ---- */

typedef struct bpath {
	int n;		  /* elements, target first */
	circ_tc_elem *el; /* (depth + 1) */
	double *g;	  /* (C) gradient at the upstream end, NULL if it ends there */
	int c, mid, pos;  /* where g lives: layer c's MLP (mid) or attention input */
} bpath;

typedef struct cand {
	int parent;
	long seq;
	double key;
	circ_tc_elem el;
} cand;

static int cand_cmp(const void *a_, const void *b_)
{
	const cand *a = a_, *b = b_;
	if (a->key != b->key)
		return a->key > b->key ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Appends path pi's contributors (every one) to *cs. */
static void contributors(const circ_tc_prompt *p, const bpath *bp, int pi, int by_abs, cand **cs,
			 long *n, long *cap, long *seq)
{
	int C = p->C, T = p->T, t = bp->pos, Dm = p->D > C ? p->D : C;
	double *o = circ_xmalloc((size_t)Dm * sizeof *o),
	       *tmp = circ_xmalloc((size_t)C * sizeof *tmp);
#define PUSH(E, A)                                                                                 \
	do {                                                                                       \
		if (*n == *cap) {                                                                  \
			*cap = *cap ? 2 * *cap : 256;                                              \
			*cs = circ_xrealloc(*cs, (size_t)*cap * sizeof **cs);                      \
		}                                                                                  \
		cand *c_ = &(*cs)[(*n)++];                                                         \
		c_->parent = pi;                                                                   \
		c_->seq = (*seq)++;                                                                \
		c_->el = (E);                                                                      \
		c_->el.attribution = (A);                                                          \
		c_->key = by_abs ? fabs(A) : (A);                                                  \
	} while (0)
	for (int l = 0; l < bp->c; l++) {
		const circ_dict *d = p->tc[l];
		if (!d)
			continue;
		int S = d->cfg.d_sae;
		for (int j = 0; j < S; j++) {
			double a = p->f->acts[l][(size_t)t * S + j];
			if (a == 0.0)
				continue;
			double s = a * dot_df(bp->g, d->W_dec + (size_t)j * C, C) / d->cfg.scale;
			PUSH(((circ_tc_elem){CIRC_TCE_FEATURE, l, j, t, t, 0}), s);
		}
	}
	for (int l = 0; l < bp->c; l++) {
		double s = 0;
		for (int i = 0; i < C; i++)
			s += bp->g[i] * p->f->errs[l][(size_t)t * C + i];
		PUSH(((circ_tc_elem){CIRC_TCE_ERROR, l, -1, t, t, 0}), s);
	}
	int amax = head_max(p->f, bp->c, bp->mid), KD = p->f->K * p->D;
	for (int a = 0; a <= amax; a++)
		for (int h = 0; h < p->H; h++) {
			wo_read(p->f, a, h, bp->g, p->f->ra[a * T + t], o, tmp);
			for (int r = 0; r <= t; r++) {
				const double *v =
				    p->val + ((size_t)a * T + r) * KD + kv_of(p->f, h) * p->D;
				double s = dot_dd(v, o, p->D) *
					   p->f->att[(((size_t)a * p->H + h) * T + t) * T + r];
				PUSH(((circ_tc_elem){CIRC_TCE_HEAD, a, h, r, t, 0}), s);
			}
		}
	source_vec(p, &(circ_tc_elem){CIRC_TCE_INPUT, -1, -1, t, t, 0}, tmp);
	double s = dot_dd(bp->g, tmp, C);
	PUSH(((circ_tc_elem){CIRC_TCE_INPUT, -1, p->tokens[t], t, t, 0}), s);
#undef PUSH
	free(o);
	free(tmp);
}

/* The new path: parent's elements and x; its gradient when x is a feature
 * or a head. */
static void extend(const circ_tc_prompt *p, const bpath *par, const circ_tc_elem *x, int cap,
		   bpath *np)
{
	int C = p->C;
	np->el = circ_xmalloc((size_t)cap * sizeof *np->el);
	memcpy(np->el, par->el, (size_t)par->n * sizeof *np->el);
	np->el[par->n] = *x;
	np->n = par->n + 1;
	np->g = NULL;
	if (x->kind == CIRC_TCE_FEATURE) {
		const circ_dict *d = p->tc[x->layer];
		double conn = dot_df(par->g, d->W_dec + (size_t)x->index * C, C) / d->cfg.scale;
		np->g = circ_xmalloc((size_t)C * sizeof *np->g);
		target_grad(p, x, np->g);
		for (int i = 0; i < C; i++)
			np->g[i] *= conn;
		np->c = x->layer;
		np->mid = 1;
		np->pos = x->pos;
	} else if (x->kind == CIRC_TCE_HEAD) {
		int Dm = p->D > C ? p->D : C;
		double *o = circ_xmalloc((size_t)Dm * sizeof *o),
		       *tmp = circ_xmalloc((size_t)C * sizeof *tmp);
		np->g = circ_xmalloc((size_t)C * sizeof *np->g);
		head_back(p, x->layer, x->index, x->dst, x->pos, par->g, np->g, o, tmp);
		free(o);
		free(tmp);
		np->c = x->layer;
		np->mid = 0;
		np->pos = x->pos;
	}
}

static void bpaths_free(bpath *b, int n)
{
	for (int i = 0; i < n; i++) {
		free(b[i].el);
		free(b[i].g);
	}
	free(b);
}

int circ_tc_beam(const circ_tc_prompt *p, const circ_tc_elem *tgt, int beam, int depth, int by_abs,
		 circ_tc_path **out, int *n, circ_error *e)
{
	if (beam < 1 || depth < 1)
		return circ_errorf(e, "beam and depth must be at least 1 (beam %d, depth %d)", beam,
				   depth);
	if (tgt->kind != CIRC_TCE_FEATURE)
		return circ_errorf(e, "the target of paths must be a feature");
	if (check_active(p, tgt, "target", e) < 0)
		return -1;
	int C = p->C, cap = depth + 1;
	bpath *cur = circ_xcalloc(1, sizeof *cur);
	int ncur = 1;
	cur[0].el = circ_xmalloc((size_t)cap * sizeof *cur[0].el);
	cur[0].el[0] = *tgt;
	cur[0].el[0].attribution = act_of(p, tgt->layer, tgt->index, tgt->pos);
	cur[0].n = 1;
	cur[0].g = circ_xmalloc((size_t)C * sizeof *cur[0].g);
	target_grad(p, tgt, cur[0].g);
	cur[0].c = tgt->layer;
	cur[0].mid = 1;
	cur[0].pos = tgt->pos;
	circ_tc_path *res = NULL;
	int nres = 0;
	cand *cs = NULL, *all = NULL;
	long ccap = 0, acap = 0;
	for (int it = 1; it <= depth && ncur > 0; it++) {
		long nall = 0, seq = 0;
		for (int pi = 0; pi < ncur; pi++) {
			if (!cur[pi].g)
				continue;
			long nc = 0;
			contributors(p, &cur[pi], pi, by_abs, &cs, &nc, &ccap, &seq);
			qsort(cs, (size_t)nc, sizeof *cs, cand_cmp);
			long k = nc < beam ? nc : beam;
			if (nall + k > acap) {
				acap = 2 * (nall + k);
				all = circ_xrealloc(all, (size_t)acap * sizeof *all);
			}
			memcpy(all + nall, cs, (size_t)k * sizeof *all);
			nall += k;
		}
		qsort(all, (size_t)nall, sizeof *all, cand_cmp);
		int nn = (int)(nall < beam ? nall : beam);
		bpath *nx = circ_xcalloc((size_t)(nn ? nn : 1), sizeof *nx);
		res = circ_xrealloc(res, (size_t)(nres + nn) * sizeof *res);
		for (int k = 0; k < nn; k++) {
			extend(p, &cur[all[k].parent], &all[k].el, cap, &nx[k]);
			circ_tc_path *rp = &res[nres++];
			rp->depth = it;
			rp->n = nx[k].n;
			rp->el = circ_xmalloc((size_t)rp->n * sizeof *rp->el);
			for (int q = 0; q < rp->n; q++) /* upstream first */
				rp->el[q] = nx[k].el[rp->n - 1 - q];
		}
		bpaths_free(cur, ncur);
		cur = nx;
		ncur = nn;
	}
	bpaths_free(cur, ncur);
	free(cs);
	free(all);
	*out = res;
	*n = nres;
	return 0;
}

void circ_tc_paths_free(circ_tc_path *paths, int n)
{
	for (int i = 0; paths && i < n; i++)
		free(paths[i].el);
	free(paths);
}
