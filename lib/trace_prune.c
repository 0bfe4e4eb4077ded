/*
 * trace_prune: circuit-tracer's pruning of an attribution graph by indirect
 * influence on the logits (trace.h). The normalised matrix is never
 * formed: a product x A' is (x / rowsum) |A|, row by row.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

/* Row sums of |A| restricted to kept rows and columns (keep NULL: all),
 * clamped at 1e-10 as circuit-tracer's normalize_matrix clamps them. */
static void row_sums(const circ_trace_graph *g, const unsigned char *keep, double *rs)
{
	int n = g->n;
	for (int i = 0; i < n; i++) {
		double s = 0;
		if (!keep || keep[i]) {
			const float *row = g->adj + (size_t)i * n;
			for (int j = 0; j < n; j++)
				if (!keep || keep[j])
					s += fabs(row[j]);
		}
		rs[i] = s < 1e-10 ? 1e-10 : s;
	}
}

/* influence = w A' + w A'^2 + ... over the kept part; -1 if it does not
 * vanish within n + 1 products. */
static int influence(const circ_trace_graph *g, const unsigned char *keep, const double *rs,
		     const double *wgt, double *out, circ_error *e)
{
	int n = g->n;
	double *cur = circ_xmalloc((size_t)n * sizeof *cur),
	       *nxt = circ_xmalloc((size_t)n * sizeof *nxt);
	memcpy(cur, wgt, (size_t)n * sizeof *cur);
	memset(out, 0, (size_t)n * sizeof *out);
	int it = 0, rc = 0;
	for (;;) {
		memset(nxt, 0, (size_t)n * sizeof *nxt);
		int any = 0;
		for (int i = 0; i < n; i++) {
			if (cur[i] == 0 || (keep && !keep[i]))
				continue;
			double x = cur[i] / rs[i];
			const float *row = g->adj + (size_t)i * n;
			for (int j = 0; j < n; j++)
				if (!keep || keep[j])
					nxt[j] += x * fabs(row[j]);
		}
		for (int j = 0; j < n; j++) {
			out[j] += nxt[j];
			any |= nxt[j] != 0;
		}
		double *t = cur;
		cur = nxt;
		nxt = t;
		if (!any)
			break;
		if (++it > n + 1) {
			rc = circ_errorf(e,
					 "influence did not vanish after %d steps: the graph has "
					 "a cycle",
					 it);
			break;
		}
	}
	free(cur);
	free(nxt);
	return rc;
}

static int cmp_desc(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/* circuit-tracer's find_threshold over n scores of which only the np
 * positive ones are given (reordered): the score at the first index, in
 * descending order, whose cumulative share reaches th (0 when that index
 * falls among the zeros). Linear time: the scores are bucketed by binary
 * exponent, and only the bucket where the share is reached is sorted. */
static double find_threshold(double *pos, size_t np, size_t n, double th)
{
	enum { NB = 2200, OFF = 1100 };
	double *bsum = circ_xcalloc(NB, sizeof *bsum), tot = 0;
	for (size_t i = 0; i < np; i++) {
		int ex;
		frexp(pos[i], &ex);
		int k = ex + OFF < 0 ? 0 : ex + OFF >= NB ? NB - 1 : ex + OFF;
		bsum[k] += pos[i];
		tot += pos[i];
	}
	double cum = 0, res = np < n || !np ? 0 : -1;
	int kb = -1;
	for (int k = NB - 1; k >= 0; k--) {
		if (bsum[k] > 0 && (cum + bsum[k]) / tot >= th) {
			kb = k;
			break;
		}
		cum += bsum[k];
	}
	size_t m = 0;
	if (kb >= 0) {
		for (size_t i = 0; i < np; i++) {
			int ex;
			frexp(pos[i], &ex);
			int k = ex + OFF < 0 ? 0 : ex + OFF >= NB ? NB - 1 : ex + OFF;
			if (k == kb)
				pos[m++] = pos[i];
		}
		qsort(pos, m, sizeof *pos, cmp_desc);
		for (size_t i = 0; i < m; i++) {
			cum += pos[i];
			if (cum / tot >= th) {
				res = pos[i];
				break;
			}
		}
		/* rounding at th = 1: the smallest positive score */
		if (res < 0)
			res = pos[m - 1];
	}
	if (res < 0) { /* not reached and no zeros: the smallest score */
		res = INFINITY;
		for (size_t i = 0; i < np; i++)
			res = fmin(res, pos[i]);
	}
	free(bsum);
	return res;
}

void circ_trace_prune_free(circ_trace_prune *p)
{
	if (!p)
		return;
	free(p->node_keep);
	free(p->edge_keep);
	free(p->influence);
	free(p->cumulative);
	memset(p, 0, sizeof *p);
}

static int cmp_idx_desc(const void *a, const void *b, void *ctx)
{
	const double *v = ctx;
	double x = v[*(const int *)a], y = v[*(const int *)b];
	if (x != y)
		return x < y ? 1 : -1;
	return *(const int *)a - *(const int *)b;
}

int circ_trace_prune_run(const circ_trace_graph *g, double node_threshold, double edge_threshold,
			 circ_trace_prune *p, circ_error *e)
{
	memset(p, 0, sizeof *p);
	if (!(node_threshold >= 0 && node_threshold <= 1))
		return circ_errorf(e, "node threshold %g is outside [0, 1]", node_threshold);
	if (!(edge_threshold >= 0 && edge_threshold <= 1))
		return circ_errorf(e, "edge threshold %g is outside [0, 1]", edge_threshold);
	int n = g->n, nl = g->n_logit, nt = g->n_input, nf = g->n_feat;
	double *wgt = circ_xcalloc((size_t)n, sizeof *wgt),
	       *rs = circ_xmalloc((size_t)n * sizeof *rs);
	for (int k = 0; k < nl; k++)
		wgt[n - nl + k] = g->nodes[n - nl + k].act;
	p->influence = circ_xmalloc((size_t)n * sizeof *p->influence);
	p->cumulative = circ_xcalloc((size_t)n, sizeof *p->cumulative);
	p->node_keep = circ_xcalloc((size_t)n, 1);
	p->edge_keep = circ_xcalloc((size_t)n * n, 1);
	row_sums(g, NULL, rs);
	if (influence(g, NULL, rs, wgt, p->influence, e) < 0)
		goto fail;
	double *sc = circ_xmalloc((size_t)n * sizeof *sc);
	size_t np = 0;
	for (int i = 0; i < n; i++)
		if (p->influence[i] > 0)
			sc[np++] = p->influence[i];
	double th = find_threshold(sc, np, (size_t)n, node_threshold);
	free(sc);
	for (int i = 0; i < n; i++)
		p->node_keep[i] = p->influence[i] >= th || i >= n - nl - nt;

	/* edge scores on the matrix restricted to the kept nodes */
	double *inf2 = circ_xmalloc((size_t)n * sizeof *inf2);
	row_sums(g, p->node_keep, rs);
	if (influence(g, p->node_keep, rs, wgt, inf2, e) < 0) {
		free(inf2);
		goto fail;
	}
	for (int i = 0; i < n; i++)
		inf2[i] += wgt[i];
	size_t cap = 1 << 20;
	double *es = circ_xmalloc(cap * sizeof *es);
	np = 0;
	for (int i = 0; i < n; i++) {
		if (!p->node_keep[i] || inf2[i] == 0)
			continue;
		const float *row = g->adj + (size_t)i * n;
		for (int j = 0; j < n; j++) {
			if (!p->node_keep[j] || row[j] == 0)
				continue;
			double s = fabs(row[j]) / rs[i] * inf2[i];
			if (s <= 0)
				continue;
			if (np == cap) {
				cap *= 2;
				es = circ_xrealloc(es, cap * sizeof *es);
			}
			es[np++] = s;
		}
	}
	double eth = find_threshold(es, np, (size_t)n * n, edge_threshold);
	free(es);
	for (int i = 0; i < n; i++) {
		const float *row = g->adj + (size_t)i * n;
		for (int j = 0; j < n; j++) {
			double s = 0;
			if (p->node_keep[i] && p->node_keep[j])
				s = fabs(row[j]) / rs[i] * inf2[i];
			p->edge_keep[(size_t)i * n + j] = s >= eth;
		}
	}
	free(inf2);

	/* drop features and errors without outgoing edges, features without
	 * incoming ones, until nothing changes */
	int nsrc = n - nl - nt;
	unsigned char *old = circ_xmalloc((size_t)n), *out = circ_xmalloc((size_t)n);
	for (int round = 0;; round++) {
		memcpy(old, p->node_keep, (size_t)n);
		memset(out, 0, (size_t)n);
		for (int i = 0; i < n; i++) {
			unsigned char *row = p->edge_keep + (size_t)i * n;
			if (round > 0 && !p->node_keep[i]) {
				memset(row, 0, (size_t)n);
				continue;
			}
			int in = 0;
			for (int j = 0; j < n; j++) {
				if (round > 0)
					row[j] &= p->node_keep[j];
				out[j] |= row[j];
				in |= row[j];
			}
			if (i < nf)
				p->node_keep[i] &= in;
		}
		for (int j = 0; j < nsrc; j++)
			p->node_keep[j] &= out[j];
		if (!memcmp(old, p->node_keep, (size_t)n))
			break;
	}
	free(old);
	free(out);

	/* cumulative share of influence, descending */
	int *ord = circ_xmalloc((size_t)n * sizeof *ord);
	double tot = 0, cum = 0;
	for (int i = 0; i < n; i++) {
		ord[i] = i;
		tot += p->influence[i];
	}
	qsort_r(ord, (size_t)n, sizeof *ord, cmp_idx_desc, p->influence);
	for (int i = 0; i < n; i++) {
		cum += p->influence[ord[i]];
		p->cumulative[ord[i]] = tot > 0 ? fmin(cum / tot, 1.0) : 0;
	}
	free(ord);
	free(wgt);
	free(rs);
	return 0;
fail:
	free(wgt);
	free(rs);
	circ_trace_prune_free(p);
	return -1;
}
