/*
 * test_eval: ROC AUC against its pairwise reference twin and against the
 * area under its own ROC staircase; confusion counts; faithfulness-curve
 * areas against hand-computed values; faithfulness and its undefined case;
 * MIB-style AUROC properties.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "check.h"

#define NEAR(a, b, tol) (fabs((a) - (b)) <= (tol))

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void test_auc_known(void)
{
	circ_error e;
	double s[] = {0.9, 0.8, 0.7, 0.1};
	uint8_t y[] = {1, 1, 0, 0};
	double auc;
	CHECK(circ_eval_roc_auc(s, y, 4, &auc, &e) == 0 && auc == 1.0);
	uint8_t yr[] = {0, 0, 1, 1};
	CHECK(circ_eval_roc_auc(s, yr, 4, &auc, &e) == 0 && auc == 0.0);
	double tied[] = {1, 1, 1, 1};
	CHECK(circ_eval_roc_auc(tied, y, 4, &auc, &e) == 0 && auc == 0.5);
	/* one swap of four pairs: 3/4 */
	double s2[] = {0.9, 0.6, 0.7, 0.1};
	CHECK(circ_eval_roc_auc(s2, y, 4, &auc, &e) == 0 && auc == 0.75);
	/* NaN ranks last */
	double s3[] = {0.9, NAN, 0.7, NAN};
	CHECK(circ_eval_roc_auc(s3, y, 4, &auc, &e) == 0 && auc == 0.625);
	uint8_t all[] = {1, 1, 1, 1};
	CHECK(circ_eval_roc_auc(s, all, 4, &auc, &e) == -1 && strstr(e.msg, "0 false"));
}

static void test_auc_random(void)
{
	circ_error e;
	for (int trial = 0; trial < 50; trial++) {
		int64_t n = 2 + (int64_t)(next_rand() % 300);
		double *s = malloc(sizeof *s * (size_t)n);
		uint8_t *y = malloc((size_t)n);
		circ_roc_point *pts = malloc(sizeof *pts * (size_t)(n + 1));
		for (int64_t i = 0; i < n; i++) {
			uint64_t r = next_rand();
			s[i] = trial % 3 == 0 ? (double)(r % 5) : (double)(r % 100000) / 7.0;
			if (r % 31 == 0)
				s[i] = NAN;
			y[i] = (next_rand() % 4) == 0;
		}
		y[0] = 1;
		y[1] = 0;
		double auc, ref = circ_eval_roc_auc_ref(s, y, n);
		CHECK(circ_eval_roc_auc(s, y, n, &auc, &e) == 0 && NEAR(auc, ref, 1e-12));
		int64_t m = circ_eval_roc_curve(s, y, n, pts, &e);
		CHECK(m >= 2 && pts[0].fpr == 0 && pts[0].tpr == 0);
		CHECK(pts[m - 1].fpr == 1.0 && pts[m - 1].tpr == 1.0);
		double *fx = malloc(sizeof *fx * (size_t)m), *ty = malloc(sizeof *ty * (size_t)m);
		for (int64_t i = 0; i < m; i++) {
			fx[i] = pts[i].fpr;
			ty[i] = pts[i].tpr;
			if (i > 0)
				CHECK(pts[i].threshold < pts[i - 1].threshold);
		}
		CHECK(NEAR(circ_eval_trapezoid(fx, ty, m), ref, 1e-12));
		free(fx);
		free(ty);
		free(s);
		free(y);
		free(pts);
	}
}

static void test_confusion(void)
{
	uint8_t pred[] = {1, 1, 0, 0, 1, 0};
	uint8_t y[] = {1, 0, 1, 0, 1, 0};
	circ_confusion c;
	circ_eval_confusion(pred, y, 6, &c);
	CHECK(c.tp == 2 && c.fp == 1 && c.fn == 1 && c.tn == 2);
	CHECK(NEAR(c.tpr, 2.0 / 3, 1e-15) && NEAR(c.fpr, 1.0 / 3, 1e-15));
	CHECK(NEAR(c.precision, 2.0 / 3, 1e-15) && c.recall == c.tpr);
	uint8_t none[] = {0, 0, 0, 0, 0, 0};
	circ_eval_confusion(none, y, 6, &c);
	CHECK(c.precision == 0.0 && c.tpr == 0.0 && c.fpr == 0.0);
}

static void test_curve(void)
{
	circ_error e;
	circ_curve_area a;
	double ones[CIRC_MIB_NFRAC];
	for (int i = 0; i < CIRC_MIB_NFRAC; i++)
		ones[i] = 1.0;
	CHECK(circ_eval_curve_areas(circ_mib_fractions, ones, CIRC_MIB_NFRAC, 0, &a, &e) == 0);
	CHECK(NEAR(a.area_under, 0.999, 1e-12) && a.area_from_1 == 0 && a.average == 1.0);
	/* by hand: x = 0, 0.5, 1; f = 0, 2, 1 */
	double x[] = {0, 0.5, 1}, f[] = {0, 2, 1};
	CHECK(circ_eval_curve_areas(x, f, 3, 0, &a, &e) == 0);
	CHECK(NEAR(a.area_under, 0.5 * 1 + 0.5 * 1.5, 1e-15));
	CHECK(NEAR(a.area_from_1, 0.5 * (1 + 1) / 2 + 0.5 * (1 + 0) / 2, 1e-15));
	CHECK(NEAR(a.average, 1.0, 1e-15));
	/* log scale: constant 1 over [0.001, 1] has area ln(1000) */
	CHECK(circ_eval_curve_areas(circ_mib_fractions, ones, CIRC_MIB_NFRAC, 1, &a, &e) == 0);
	CHECK(NEAR(a.area_under, log(1000.0), 1e-12));
	CHECK(circ_eval_curve_areas(x, f, 3, 1, &a, &e) == -1 && strstr(e.msg, "log scale"));
	double xb[] = {0.1, 0.1};
	CHECK(circ_eval_curve_areas(xb, f, 2, 0, &a, &e) == -1 && strstr(e.msg, "must increase"));
	CHECK(circ_eval_curve_areas(x, f, 1, 0, &a, &e) == -1);
	CHECK(circ_eval_curve_n_edges(0.001, 32491) == 32);
	CHECK(circ_eval_curve_n_edges(0.1, 32491) == 3249);
	CHECK(circ_eval_curve_n_edges(1.0, 32491) == 32491);
}

static void test_faithfulness(void)
{
	CHECK(circ_eval_faithfulness(2, 1, 3) == 0.5);
	CHECK(circ_eval_faithfulness(3, 1, 3) == 1 && circ_eval_faithfulness(1, 1, 3) == 0);
	CHECK(circ_eval_faithfulness(-1, 1, 3) == -1); /* worse than the empty circuit */
	/* undefined when the model and the empty circuit agree, whatever m(C) */
	CHECK(isnan(circ_eval_faithfulness(2, 1, 1)) && isnan(circ_eval_faithfulness(1, 1, 1)));
	CHECK(isnan(circ_eval_faithfulness(2, INFINITY, INFINITY)));
	CHECK(isnan(circ_eval_faithfulness(NAN, 1, 3)) && isnan(circ_eval_faithfulness(2, 1, NAN)));
}

static void test_mib_auroc(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(4, 4, CIRC_LEVEL_EDGE, &e);
	int64_t E = g->n_edges;
	double *s = malloc(sizeof *s * (size_t)E);
	uint8_t *truth = calloc((size_t)E, 1);
	const char *names[] = {"input->a0.h1<q>", "input->a0.h1<k>", "a0.h1->a2.h3<v>",
			       "a2.h3->m3",	  "m3->logits",	     "a2.h3->logits"};
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		int64_t k;
		CHECK(circ_graph_parse_edge(g, names[i], strlen(names[i]), &k, &e) == 0);
		truth[k] = 1;
	}
	/* perfect scores: the truth ranks first */
	for (int64_t i = 0; i < E; i++)
		s[i] = truth[i] ? 10.0 + (double)(next_rand() % 100)
				: (double)(next_rand() % 100) / 100;
	double auroc, fpr[CIRC_MIB_NFRAC], tpr[CIRC_MIB_NFRAC];
	CHECK(circ_eval_mib_auroc(g, s, 0, truth, &auroc, fpr, tpr, &e) == 0);
	CHECK(tpr[CIRC_MIB_NFRAC - 1] == 1.0 && fpr[CIRC_MIB_NFRAC - 1] == 1.0);
	CHECK(auroc > 0.99 && auroc <= 1.0);
	/* the rank AUC agrees that it is perfect */
	double auc;
	CHECK(circ_eval_roc_auc(s, truth, E, &auc, &e) == 0 && auc == 1.0);
	/* inverted scores do badly */
	for (int64_t i = 0; i < E; i++)
		s[i] = -s[i];
	CHECK(circ_eval_mib_auroc(g, s, 1, truth, &auroc, NULL, NULL, &e) == 0 && auroc < 0.6);
	free(s);
	free(truth);
	circ_graph_free(g);
}

int main(void)
{
	test_auc_known();
	test_auc_random();
	test_confusion();
	test_curve();
	test_faithfulness();
	test_mib_auroc();
	if (failures) {
		fprintf(stderr, "test_eval: %d failures\n", failures);
		return 1;
	}
	printf("test_eval: ok\n");
	return 0;
}
