/*
 * metric: values and logit-gradients of the behaviour metrics (see
 * metric.h). Every metric that needs probabilities computes the
 * log-sum-exp in double once; the gradient formulas are the textbook ones:
 *   d logit_diff / dz   = 1/|good| on good ids, -1/|bad| on bad ids
 *   d prob_diff / dz_v  = p_v (g_v - sum_good p + sum_bad p), g_v = +1 good,
 *                         -1 bad, 0 else
 *   d KL(c || p) / dz_v = p_v - c_v
 *   d log p_a / dz_v    = [v = a] - p_v
 */
#include "metric.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int ids_ok(const int32_t *ids, int n, int V)
{
	for (int i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= V)
			return 0;
	return 1;
}

static double lse(const float *z, int V)
{
	double mx = -INFINITY, s = 0;
	for (int i = 0; i < V; i++)
		if (z[i] > mx)
			mx = z[i];
	for (int i = 0; i < V; i++)
		s += exp((double)z[i] - mx);
	return mx + log(s);
}

double circ_mt_logit_diff(const float *logits, int V, const int32_t *good, int ngood,
			  const int32_t *bad, int nbad, float *grad)
{
	double g = 0, b = 0;
	if (ngood < 1 || nbad < 1 || !ids_ok(good, ngood, V) || !ids_ok(bad, nbad, V))
		return NAN;
	for (int i = 0; i < ngood; i++)
		g += logits[good[i]];
	for (int i = 0; i < nbad; i++)
		b += logits[bad[i]];
	if (grad) {
		memset(grad, 0, (size_t)V * sizeof *grad);
		for (int i = 0; i < ngood; i++)
			grad[good[i]] += (float)(1.0 / ngood);
		for (int i = 0; i < nbad; i++)
			grad[bad[i]] -= (float)(1.0 / nbad);
	}
	return g / ngood - b / nbad;
}

double circ_mt_prob_diff(const float *logits, int V, const int32_t *good, int ngood,
			 const int32_t *bad, int nbad, float *grad)
{
	double l, pg = 0, pb = 0;
	if (!ids_ok(good, ngood, V) || !ids_ok(bad, nbad, V) || V < 1)
		return NAN;
	l = lse(logits, V);
	for (int i = 0; i < ngood; i++)
		pg += exp(logits[good[i]] - l);
	for (int i = 0; i < nbad; i++)
		pb += exp(logits[bad[i]] - l);
	if (grad) {
		double m = pg - pb;
		for (int v = 0; v < V; v++)
			grad[v] = (float)(exp(logits[v] - l) * -m);
		for (int i = 0; i < ngood; i++)
			grad[good[i]] += (float)exp(logits[good[i]] - l);
		for (int i = 0; i < nbad; i++)
			grad[bad[i]] -= (float)exp(logits[bad[i]] - l);
	}
	return pg - pb;
}

double circ_mt_kl(const float *logits, int V, const float *clean_logp, float *grad)
{
	double l, kl = 0;
	if (V < 1)
		return NAN;
	l = lse(logits, V);
	for (int v = 0; v < V; v++) {
		double c = exp((double)clean_logp[v]);
		if (c > 0)
			kl += c * ((double)clean_logp[v] - ((double)logits[v] - l));
		if (grad)
			grad[v] = (float)(exp(logits[v] - l) - c);
	}
	return kl;
}

double circ_mt_logprob(const float *logits, int V, int32_t answer, float *grad)
{
	double l;
	if (answer < 0 || answer >= V)
		return NAN;
	l = lse(logits, V);
	if (grad) {
		for (int v = 0; v < V; v++)
			grad[v] = (float)-exp(logits[v] - l);
		grad[answer] += 1.0f;
	}
	return logits[answer] - l;
}

int circ_mt_argmax(const float *logits, int V)
{
	int best = V > 0 ? 0 : -1;
	for (int v = 1; v < V; v++)
		if (logits[v] > logits[best])
			best = v;
	return best;
}

double circ_mt_top1(const float *logits, int V, int32_t answer, float *grad)
{
	if (answer < 0 || answer >= V)
		return NAN;
	if (grad)
		memset(grad, 0, (size_t)V * sizeof *grad);
	return circ_mt_argmax(logits, V) == answer ? 1.0 : 0.0;
}

/* Before: larger logit, or equal logit and lower id. */
static int before(const float *z, int a, int b)
{
	return z[a] > z[b] || (z[a] == z[b] && a < b);
}

int circ_mt_topk(const float *logits, int V, int k, int32_t *ids, double *probs)
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
		if (n == k && !before(logits, v, ids[n - 1]))
			continue;
		pos = n < k ? n : k - 1;
		while (pos > 0 && before(logits, v, ids[pos - 1])) {
			ids[pos] = ids[pos - 1];
			pos--;
		}
		ids[pos] = v;
		if (n < k)
			n++;
	}
	l = lse(logits, V);
	for (int i = 0; i < n; i++)
		probs[i] = exp(logits[ids[i]] - l);
	return n;
}
