/*
 * test_metric: lib/metric without a model. The per-example aggregation
 * against the row primitives it is made of (bit for bit: the pinned streams
 * depend on the order of its operations), each metric's gradient against
 * central differences, the documented order of the sums, the guards (ids
 * outside the vocabulary, too few answers for the read rows), log-softmax
 * of a row with one huge logit, and the order of top-k ties. The values
 * and gradients against PyTorch's autograd are in test_model.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metric.h"
#include "util.h"
#include "check.h"

enum { V = 9, NPOS = 3 };

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static float uniform(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) / 9007199254740992.0);
}

/* Metric k of one row, gradient into grad (V), through the primitive. */
static double row_metric(circ_metric_kind k, const float *z, const int32_t *ans, int nans,
			 const int32_t *wrong, int nwrong, const float *clp, int nrows, float *grad)
{
	switch (k) {
	case CIRC_METRIC_LOGIT_DIFF:
		return circ_metric_logit_diff(z, V, ans, nans, wrong, nwrong, nrows, grad);
	case CIRC_METRIC_PROB_DIFF:
		return circ_metric_prob_diff(z, V, ans, nans, wrong, nwrong, nrows, NULL, grad);
	case CIRC_METRIC_LOGPROB: return circ_metric_logprob(z, V, ans, nans, nrows, NULL, grad);
	default: return circ_metric_kl(z, V, clp, nrows, NULL, grad);
	}
}

/* One row: the example's metric is the row's, to the bit; several rows: the
 * mean of the rows' values, each row's gradient the primitive's with nrows. */
static void test_aggregation(void)
{
	float z[NPOS * V], clp[NPOS * V], g[NPOS * V], gr[V];
	int32_t ans[NPOS] = {2, 5, 7}, wrong[NPOS] = {3, 0, 8};
	for (int i = 0; i < NPOS * V; i++)
		z[i] = 6 * uniform() - 3, clp[i] = 4 * uniform() - 2;
	circ_metric_log_softmax(clp, clp, NPOS, V);
	for (int k = 0; k < CIRC_METRIC_COUNT; k++) {
		circ_metric_kind mk = (circ_metric_kind)k;
		/* one row, answer sets */
		double m = circ_metric_example(mk, 1, ans, 2, wrong, 3, z, clp, V, g);
		double r = row_metric(mk, z, ans, 2, wrong, 3, clp, 1, gr);
		CHECK(m == r && isfinite(m) && !memcmp(g, gr, sizeof gr));
		CHECK(circ_metric_example(mk, 1, ans, 2, wrong, 3, z, clp, V, NULL) == m);
		if (mk == CIRC_METRIC_PROB_DIFF)
			continue; /* one read row only */
		/* several rows: row i reads answer i and wrong answer i */
		m = circ_metric_example(mk, NPOS, ans, NPOS, wrong, NPOS, z, clp, V, g);
		r = 0;
		for (int i = 0; i < NPOS; i++) {
			float g1[V];
			r += row_metric(mk, z + i * V, ans + i, 1, wrong + i, 1, clp + i * V, NPOS,
					gr) /
			     NPOS;
			CHECK(!memcmp(g + i * V, gr, sizeof gr));
			row_metric(mk, z + i * V, ans + i, 1, wrong + i, 1, clp + i * V, 1, g1);
			for (int v = 0; v < V; v++)
				CHECK(fabsf(gr[v] - g1[v] / NPOS) <= 1e-7f);
		}
		CHECK(m == r && isfinite(m));
		/* too few answers for the rows */
		if (mk != CIRC_METRIC_KL)
			CHECK(isnan(circ_metric_example(mk, NPOS, ans, NPOS - 1, wrong, NPOS, z,
							clp, V, NULL)));
	}
	/* kl reads no answers */
	CHECK(isfinite(circ_metric_example(CIRC_METRIC_KL, NPOS, NULL, 0, NULL, 0, z, clp, V, g)));
	/* kl of the clean distribution itself is 0, its gradient too */
	circ_metric_log_softmax(clp, z, 1, V);
	CHECK(fabs(circ_metric_kl(z, V, clp, 1, NULL, gr)) < 1e-6);
	for (int v = 0; v < V; v++)
		CHECK(fabsf(gr[v]) < 1e-6f);
}

/* Gradients against central differences in z (float, so a wide step). */
static void test_gradients(void)
{
	float z[V], clp[V], g[V];
	int32_t ans[2] = {1, 4}, wrong[2] = {6, 0};
	for (int i = 0; i < V; i++)
		z[i] = 4 * uniform() - 2, clp[i] = 4 * uniform() - 2;
	circ_metric_log_softmax(clp, clp, 1, V);
	for (int k = 0; k < CIRC_METRIC_COUNT; k++) {
		circ_metric_kind mk = (circ_metric_kind)k;
		row_metric(mk, z, ans, 2, wrong, 2, clp, 1, g);
		for (int v = 0; v < V; v++) {
			const float h = 1e-2f;
			float zp[V], zm[V];
			memcpy(zp, z, sizeof z);
			memcpy(zm, z, sizeof z);
			zp[v] += h;
			zm[v] -= h;
			double fd = (row_metric(mk, zp, ans, 2, wrong, 2, clp, 1, NULL) -
				     row_metric(mk, zm, ans, 2, wrong, 2, clp, 1, NULL)) /
				    (zp[v] - zm[v]);
			if (fabs(fd - g[v]) > 1e-4 + 1e-3 * fabs(fd)) {
				fprintf(stderr, "%s: d/dz[%d] %.7g, differences %.7g\n",
					circ_metric_name(mk), v, g[v], fd);
				failures++;
			}
		}
	}
}

/* The order of the sums is the contract (the pinned streams depend on it). */
static void test_order(void)
{
	float z[V];
	double p[V];
	int32_t ans[2] = {2, 7}, wrong[2] = {3, 5};
	for (int i = 0; i < V; i++)
		z[i] = 10 * uniform() - 5;
	CHECK(circ_metric_logit_diff(z, V, ans, 2, wrong, 1, 1, NULL) ==
	      (z[2] / 2.0 + z[7] / 2.0) - z[3] / 1.0);
	double m = circ_metric_prob_diff(z, V, ans, 1, wrong, 2, 1, p, NULL);
	CHECK(m == (p[2] - p[3]) - p[5]); /* p: the row's softmax on return */
	CHECK(circ_metric_logprob(z, V, ans, 2, 1, NULL, NULL) == log(p[2] + p[7]));
	double s = 0;
	for (int v = 0; v < V; v++)
		s += p[v];
	CHECK(fabs(s - 1) < 1e-15);
}

static void test_guards(void)
{
	float z[V] = {0};
	int32_t bad = V, neg = -1, ok = 1;
	CHECK(isnan(circ_metric_logit_diff(z, V, &bad, 1, &ok, 1, 1, NULL)));
	CHECK(isnan(circ_metric_logit_diff(z, V, &ok, 1, &ok, 0, 1, NULL)));
	CHECK(isnan(circ_metric_prob_diff(z, V, &ok, 1, &neg, 1, 1, NULL, NULL)));
	CHECK(isnan(circ_metric_logprob(z, V, &bad, 1, 1, NULL, NULL)));
	CHECK(isnan(circ_metric_logprob(z, V, &ok, 0, 1, NULL, NULL)));
	CHECK(isnan(circ_metric_top1(z, V, bad, NULL)));
	CHECK(isnan(circ_metric_example(CIRC_METRIC_COUNT, 1, &ok, 1, &ok, 1, z, NULL, V, NULL)));
	circ_metric_kind k;
	for (int i = 0; i < CIRC_METRIC_COUNT; i++) {
		const char *n = circ_metric_name((circ_metric_kind)i);
		CHECK(circ_metric_parse(n, strlen(n), &k) == 0 && k == (circ_metric_kind)i);
	}
	CHECK(circ_metric_parse("kl", 1, &k) < 0 && circ_metric_parse("kld", 3, &k) < 0);
	CHECK(!strcmp(circ_metric_name(CIRC_METRIC_COUNT), "?"));
	CHECK(circ_metric_higher_better(CIRC_METRIC_LOGIT_DIFF) &&
	      !circ_metric_higher_better(CIRC_METRIC_KL));
}

static void test_rows(void)
{
	float row[5] = {1, 2, 3, 4, 1000}, out[5];
	double lse = circ_metric_log_softmax_row(out, row, 5);
	CHECK(fabs(lse - 1000) < 1e-9 && fabs(out[4]) < 1e-6 && out[0] < -998);
	CHECK(circ_metric_lse(row, 5) == lse);
	/* ties: the lowest id first */
	float t[6] = {1, 3, 3, 0, 3, 2};
	int32_t ids[6];
	double probs[6];
	CHECK(circ_metric_argmax(t, 6) == 1 && circ_metric_argmax(t, 0) == -1);
	CHECK(circ_metric_topk(t, 6, 4, ids, probs) == 4);
	CHECK(ids[0] == 1 && ids[1] == 2 && ids[2] == 4 && ids[3] == 5);
	CHECK(probs[0] == probs[2] && probs[3] < probs[0]);
	CHECK(circ_metric_topk(t, 6, 9, ids, probs) == 6 && ids[5] == 3); /* k > V: V */
	CHECK(circ_metric_top1(t, 6, 1, NULL) == 1 && circ_metric_top1(t, 6, 2, NULL) == 0);
}

int main(void)
{
	test_aggregation();
	test_gradients();
	test_order();
	test_guards();
	test_rows();
	if (failures) {
		fprintf(stderr, "test_metric: %d failures\n", failures);
		return 1;
	}
	printf("test_metric: ok\n");
	return 0;
}
