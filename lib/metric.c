/*
 * metric: values and logit-gradients of the behaviour metrics, per row and
 * per example (see metric.h). Every metric that needs probabilities takes
 * the softmax in double once per row; the gradient formulas are the
 * textbook ones:
 *   d logit_diff / dz   = 1/|good| on good ids, -1/|bad| on bad ids
 *   d prob_diff / dz_v  = p_v (g_v - m), g_v = +1 good, -1 bad, 0 else
 *   d log pa / dz_v     = p_v [v in ans] / pa - p_v
 *   d KL(c || p) / dz_v = p_v - c_v
 *   d xent / dz_v       = p_v - [v = target]
 * The order of the floating-point operations is part of the contract: the
 * streams of `make run` are pinned byte for byte (tests/golden.bats), so a
 * sum keeps its order and a division by the row count stays a division.
 */
#include "metric.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "util.h"

static const char *const metric_names[CIRC_METRIC_COUNT] = {"logit_diff", "prob_diff", "logprob",
							    "kl"};

const char *circ_metric_name(circ_metric_kind k)
{
	return (unsigned)k < CIRC_METRIC_COUNT ? metric_names[k] : "?";
}

int circ_metric_parse(const char *s, size_t n, circ_metric_kind *k)
{
	for (int i = 0; i < CIRC_METRIC_COUNT; i++)
		if (strlen(metric_names[i]) == n && !memcmp(metric_names[i], s, n)) {
			*k = (circ_metric_kind)i;
			return 0;
		}
	return -1;
}

int circ_metric_higher_better(circ_metric_kind k)
{
	return k != CIRC_METRIC_KL;
}

/* ================================================================ rows */

static int ids_ok(const int32_t *ids, int n, int V)
{
	for (int i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= V)
			return 0;
	return 1;
}

/* The largest of z (V) in double; -inf if V < 1 (NaNs are passed over). */
static double row_max(const float *z, int V)
{
	double mx = -INFINITY;
	for (int i = 0; i < V; i++)
		if (z[i] > mx)
			mx = z[i];
	return mx;
}

double circ_metric_lse(const float *z, int V)
{
	double mx = row_max(z, V), s = 0;
	for (int i = 0; i < V; i++)
		s += exp((double)z[i] - mx);
	return mx + log(s);
}

double circ_metric_softmax(double *p, const float *z, int V)
{
	double mx = row_max(z, V), s = 0;
	for (int i = 0; i < V; i++)
		s += (p[i] = exp(z[i] - mx));
	for (int i = 0; i < V; i++)
		p[i] /= s;
	return mx + log(s);
}

double circ_metric_log_softmax_row(float *out, const float *inp, int n)
{
	double lse = circ_metric_lse(inp, n);
	for (int i = 0; i < n; i++)
		out[i] = (float)((double)inp[i] - lse);
	return lse;
}

void circ_metric_log_softmax(float *out, const float *logits, int n, int V)
{
	for (int i = 0; i < n; i++)
		circ_metric_log_softmax_row(out + (size_t)i * V, logits + (size_t)i * V, V);
}

double circ_metric_logit_diff(const float *z, int V, const int32_t *good, int ngood,
			      const int32_t *bad, int nbad, int nrows, float *grad)
{
	double m = 0;
	if (ngood < 1 || nbad < 1 || !ids_ok(good, ngood, V) || !ids_ok(bad, nbad, V))
		return NAN;
	for (int i = 0; i < ngood; i++)
		m += z[good[i]] / (double)ngood;
	for (int i = 0; i < nbad; i++)
		m -= z[bad[i]] / (double)nbad;
	if (grad) {
		memset(grad, 0, (size_t)V * sizeof *grad);
		for (int i = 0; i < ngood; i++)
			grad[good[i]] += 1.0f / (float)(ngood * nrows);
		for (int i = 0; i < nbad; i++)
			grad[bad[i]] -= 1.0f / (float)(nbad * nrows);
	}
	return m;
}

/* p, or a buffer of V doubles for the call (*own, freed by the caller). */
static double *scratch(double *p, int V, double **own)
{
	*own = p ? NULL : circ_xmalloc((size_t)(V > 0 ? V : 1) * sizeof *p);
	return p ? p : *own;
}

double circ_metric_prob_diff(const float *z, int V, const int32_t *good, int ngood,
			     const int32_t *bad, int nbad, int nrows, double *p, float *grad)
{
	double m = 0, *own;
	if (V < 1 || !ids_ok(good, ngood, V) || !ids_ok(bad, nbad, V))
		return NAN;
	p = scratch(p, V, &own);
	circ_metric_softmax(p, z, V);
	for (int i = 0; i < ngood; i++)
		m += p[good[i]];
	for (int i = 0; i < nbad; i++)
		m -= p[bad[i]];
	if (grad) {
		for (int v = 0; v < V; v++)
			grad[v] = (float)(-p[v] * m / nrows);
		for (int i = 0; i < ngood; i++)
			grad[good[i]] += (float)(p[good[i]] / nrows);
		for (int i = 0; i < nbad; i++)
			grad[bad[i]] -= (float)(p[bad[i]] / nrows);
	}
	free(own);
	return m;
}

double circ_metric_logprob(const float *z, int V, const int32_t *ans, int nans, int nrows,
			   double *p, float *grad)
{
	double pa = 0, *own;
	if (nans < 1 || !ids_ok(ans, nans, V))
		return NAN;
	p = scratch(p, V, &own);
	circ_metric_softmax(p, z, V);
	for (int i = 0; i < nans; i++)
		pa += p[ans[i]];
	if (grad) {
		for (int v = 0; v < V; v++)
			grad[v] = (float)(-p[v] / nrows);
		for (int i = 0; i < nans; i++)
			grad[ans[i]] += (float)(p[ans[i]] / pa / nrows);
	}
	free(own);
	return log(pa);
}

double circ_metric_kl(const float *z, int V, const float *clean_logp, int nrows, double *p,
		      float *grad)
{
	double lse, kl = 0, *own;
	if (V < 1)
		return NAN;
	p = scratch(p, V, &own);
	lse = circ_metric_softmax(p, z, V);
	for (int v = 0; v < V; v++) {
		double c = exp(clean_logp[v]);
		/* 0 log 0 = 0; a NaN clean row stays NaN */
		if (c > 0 || isnan(c))
			kl += c * (clean_logp[v] - (z[v] - lse));
		if (grad)
			grad[v] = (float)((p[v] - c) / nrows);
	}
	free(own);
	return kl;
}

int circ_metric_argmax(const float *z, int V)
{
	int best = V > 0 ? 0 : -1;
	for (int v = 1; v < V; v++)
		if (z[v] > z[best])
			best = v;
	return best;
}

double circ_metric_top1(const float *z, int V, int32_t answer, float *grad)
{
	if (answer < 0 || answer >= V)
		return NAN;
	if (grad)
		memset(grad, 0, (size_t)V * sizeof *grad);
	return circ_metric_argmax(z, V) == answer ? 1.0 : 0.0;
}

/* Before: larger logit, or equal logit and lower id. */
static int before(const float *z, int a, int b)
{
	return z[a] > z[b] || (z[a] == z[b] && a < b);
}

int circ_metric_topk(const float *z, int V, int k, int32_t *ids, double *probs)
{
	int n = 0;
	double l;
	if (k > V)
		k = V;
	if (k < 1)
		return 0;
	/* a sorted list of the best k so far: insertion is O(k), fine for small k */
	for (int v = 0; v < V; v++) {
		int pos;
		if (n == k && !before(z, v, ids[n - 1]))
			continue;
		pos = n < k ? n : k - 1;
		while (pos > 0 && before(z, v, ids[pos - 1])) {
			ids[pos] = ids[pos - 1];
			pos--;
		}
		ids[pos] = v;
		if (n < k)
			n++;
	}
	l = circ_metric_lse(z, V);
	for (int i = 0; i < n; i++)
		probs[i] = exp(z[ids[i]] - l);
	return n;
}

double circ_metric_xent(const float *logits, int N, int V, const int32_t *targets, float *dlogits,
			float *row_loss)
{
	double total = 0;
	float *ex = dlogits ? NULL : circ_xmalloc((size_t)V * sizeof *ex);
	for (int i = 0; i < N; i++) {
		const float *x = logits + (size_t)i * V;
		float *d = dlogits ? dlogits + (size_t)i * V : ex, mx = x[0];
		double s = 0, li;
		for (int j = 1; j < V; j++)
			mx = x[j] > mx ? x[j] : mx;
		for (int j = 0; j < V; j++)
			d[j] = x[j] - mx;
		circ_vexp(d, d, (size_t)V); /* relative error < 2e-7 */
		for (int j = 0; j < V; j++)
			s += d[j];
		li = log(s) - ((double)x[targets[i]] - mx);
		total += li;
		if (row_loss)
			row_loss[i] = (float)li;
		if (dlogits) {
			float k = (float)(1.0 / (s * N));
			for (int j = 0; j < V; j++)
				d[j] *= k;
			d[targets[i]] -= (float)(1.0 / N);
		}
	}
	free(ex);
	return N ? total / N : 0;
}

/* ================================================================ examples */

double circ_metric_example(circ_metric_kind k, int npos, const int32_t *ans, int nans,
			   const int32_t *wrong, int nwrong, const float *logits,
			   const float *clean_logp, int V, float *dlogits)
{
	/* several rows: row i reads answer i and wrong answer i */
	int multi = npos > 1, need_ans = k != CIRC_METRIC_KL,
	    need_wrong = k == CIRC_METRIC_LOGIT_DIFF || k == CIRC_METRIC_PROB_DIFF;
	double m = 0, *p = NULL;
	if ((unsigned)k >= CIRC_METRIC_COUNT ||
	    (multi && ((need_ans && nans < npos) || (need_wrong && nwrong < npos))))
		return NAN;
	if (k != CIRC_METRIC_LOGIT_DIFF)
		p = circ_xmalloc((size_t)(V > 0 ? V : 1) * sizeof *p);
	for (int i = 0; i < npos; i++) {
		const float *z = logits + (size_t)i * V;
		float *dz = dlogits ? dlogits + (size_t)i * V : NULL;
		const int32_t *a = multi && ans ? ans + i : ans,
			      *w = multi && wrong ? wrong + i : wrong;
		int na = multi ? 1 : nans, nw = multi ? 1 : nwrong;
		switch (k) {
		case CIRC_METRIC_LOGIT_DIFF:
			m += circ_metric_logit_diff(z, V, a, na, w, nw, npos, dz) / npos;
			break;
		case CIRC_METRIC_PROB_DIFF:
			m += circ_metric_prob_diff(z, V, a, na, w, nw, npos, p, dz) / npos;
			break;
		case CIRC_METRIC_LOGPROB:
			m += circ_metric_logprob(z, V, a, na, npos, p, dz) / npos;
			break;
		default:
			m += circ_metric_kl(z, V, clean_logp + (size_t)i * V, npos, p, dz) / npos;
			break;
		}
	}
	free(p);
	return m;
}
