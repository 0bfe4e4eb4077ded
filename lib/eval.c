/*
 * eval: ROC/AUC, confusion counts and faithfulness-curve areas (see
 * eval.h for the definitions, which follow the MIB benchmark).
 *
 * Design: the AUC sorts once and sums average ranks, O(n log n); a pairwise
 * count stays beside it as the reference twin. NaN scores become -inf so
 * that unscored edges rank last together instead of poisoning the sort.
 */
#include "eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const double circ_mib_fractions[CIRC_MIB_NFRAC] = {0.001, 0.002, 0.005, 0.01, 0.02,
						   0.05,  0.1,	 0.2,	0.5,  1.0};

typedef struct item {
	double s;
	uint8_t y;
} item;

static double clean(double s)
{
	return isnan(s) ? -INFINITY : s;
}

static int cmp_item_desc(const void *pa, const void *pb)
{
	const item *a = pa, *b = pb;
	return (a->s < b->s) - (a->s > b->s);
}

static int count_labels(const uint8_t *label, int64_t n, int64_t *pos, int64_t *neg, circ_error *e)
{
	*pos = 0;
	for (int64_t i = 0; i < n; i++)
		*pos += label[i] != 0;
	*neg = n - *pos;
	if (*pos == 0 || *neg == 0)
		return circ_errorf(e,
				   "roc: needs both true and false items (%lld true, %lld false)",
				   (long long)*pos, (long long)*neg);
	return 0;
}

static item *sorted_items(const double *score, const uint8_t *label, int64_t n)
{
	item *it = circ_xmalloc((size_t)(n ? n : 1) * sizeof *it);
	for (int64_t i = 0; i < n; i++) {
		it[i].s = clean(score[i]);
		it[i].y = label[i] != 0;
	}
	qsort(it, (size_t)n, sizeof *it, cmp_item_desc);
	return it;
}

int circ_eval_roc_auc(const double *score, const uint8_t *label, int64_t n, double *auc,
		      circ_error *e)
{
	int64_t P, N;
	if (count_labels(label, n, &P, &N, e) < 0)
		return -1;
	item *it = sorted_items(score, label, n);
	/* Walking from the highest score: for each tie group, every positive in
	 * it beats the negatives below the group and half-beats those in it. */
	double wins = 0;
	int64_t neg_below = N;
	for (int64_t i = 0; i < n;) {
		int64_t j = i, p = 0, q = 0;
		while (j < n && it[j].s == it[i].s) {
			p += it[j].y;
			q += !it[j].y;
			j++;
		}
		neg_below -= q;
		wins += (double)p * ((double)neg_below + 0.5 * (double)q);
		i = j;
	}
	free(it);
	*auc = wins / ((double)P * (double)N);
	return 0;
}

double circ_eval_roc_auc_ref(const double *score, const uint8_t *label, int64_t n)
{
	double wins = 0, pairs = 0;
	for (int64_t i = 0; i < n; i++) {
		if (!label[i])
			continue;
		for (int64_t j = 0; j < n; j++) {
			if (label[j])
				continue;
			double a = clean(score[i]), b = clean(score[j]);
			wins += a > b ? 1.0 : a == b ? 0.5 : 0.0;
			pairs += 1;
		}
	}
	return pairs > 0 ? wins / pairs : NAN;
}

int64_t circ_eval_roc_curve(const double *score, const uint8_t *label, int64_t n,
			    circ_roc_point *pts, circ_error *e)
{
	int64_t P, N;
	if (count_labels(label, n, &P, &N, e) < 0)
		return -1;
	item *it = sorted_items(score, label, n);
	int64_t m = 0, tp = 0, fp = 0;
	pts[m++] = (circ_roc_point){INFINITY, 0.0, 0.0};
	for (int64_t i = 0; i < n;) {
		int64_t j = i;
		while (j < n && it[j].s == it[i].s) {
			tp += it[j].y;
			fp += !it[j].y;
			j++;
		}
		pts[m++] =
		    (circ_roc_point){it[i].s, (double)fp / (double)N, (double)tp / (double)P};
		i = j;
	}
	free(it);
	return m;
}

double circ_eval_trapezoid(const double *x, const double *y, int64_t n)
{
	double a = 0;
	for (int64_t i = 0; i + 1 < n; i++)
		a += (x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2;
	return a;
}

void circ_eval_confusion(const uint8_t *pred, const uint8_t *label, int64_t n, circ_confusion *c)
{
	memset(c, 0, sizeof *c);
	for (int64_t i = 0; i < n; i++) {
		int p = pred[i] != 0, y = label[i] != 0;
		c->tp += p && y;
		c->fp += p && !y;
		c->tn += !p && !y;
		c->fn += !p && y;
	}
	c->tpr = c->tp + c->fn ? (double)c->tp / (double)(c->tp + c->fn) : NAN;
	c->fpr = c->fp + c->tn ? (double)c->fp / (double)(c->fp + c->tn) : NAN;
	c->precision = c->tp + c->fp ? (double)c->tp / (double)(c->tp + c->fp) : 0.0;
	c->recall = c->tpr;
}

int circ_eval_curve_areas(const double *x, const double *f, int64_t n, int log_x,
			  circ_curve_area *out, circ_error *e)
{
	if (n < 2)
		return circ_errorf(e, "curve: needs at least 2 points, got %lld", (long long)n);
	for (int64_t i = 0; i < n; i++) {
		if (!isfinite(x[i]) || !isfinite(f[i]))
			return circ_errorf(e, "curve: point %lld is not finite", (long long)i);
		if (i > 0 && !(x[i] > x[i - 1]))
			return circ_errorf(
			    e, "curve: fractions must increase (point %lld: %g after %g)",
			    (long long)i, x[i], x[i - 1]);
		if (log_x && x[i] <= 0)
			return circ_errorf(e,
					   "curve: log scale needs fractions > 0 (point %lld: %g)",
					   (long long)i, x[i]);
	}
	double under = 0, from1 = 0, sum = 0;
	for (int64_t i = 0; i < n; i++) {
		sum += f[i];
		if (i + 1 == n)
			break;
		double x1 = log_x ? log(x[i]) : x[i], x2 = log_x ? log(x[i + 1]) : x[i + 1];
		under += (x2 - x1) * (f[i] + f[i + 1]) / 2;
		from1 += (x2 - x1) * (fabs(1.0 - f[i]) + fabs(1.0 - f[i + 1])) / 2;
	}
	out->area_under = under;
	out->area_from_1 = from1;
	out->average = sum / (double)n;
	return 0;
}

double circ_eval_faithfulness(double m_circuit, double m_empty, double m_model)
{
	double den = m_model - m_empty;
	return den != 0 ? (m_circuit - m_empty) / den : NAN;
}

int64_t circ_eval_curve_n_edges(double fraction, int64_t n_edges)
{
	return (int64_t)floor(fraction * (double)n_edges);
}

int circ_eval_mib_auroc(const circ_graph *g, const double *score, int signed_, const uint8_t *truth,
			double *auroc, double *fpr, double *tpr, circ_error *e)
{
	int64_t P, N, scored = 0;
	if (count_labels(truth, g->n_edges, &P, &N, e) < 0)
		return -1;
	for (int64_t i = 0; i < g->n_edges; i++)
		scored += !isnan(score[i]);
	uint8_t *keep = circ_xmalloc((size_t)g->n_edges);
	double x[CIRC_MIB_NFRAC], y[CIRC_MIB_NFRAC];
	for (int k = 0; k < CIRC_MIB_NFRAC; k++) {
		int64_t n = (int64_t)ceil(circ_mib_fractions[k] * (double)g->n_edges);
		if (n > scored)
			n = scored;
		if (circ_select_greedy(g, score, n, signed_, keep, e) < 0) {
			free(keep);
			return -1;
		}
		circ_prune_dangling(g, keep);
		circ_confusion c;
		circ_eval_confusion(keep, truth, g->n_edges, &c);
		x[k] = c.fpr;
		y[k] = c.tpr;
	}
	free(keep);
	double xmax = x[CIRC_MIB_NFRAC - 1], a = 0;
	for (int k = 0; k + 1 < CIRC_MIB_NFRAC; k++)
		a += (x[k + 1] / xmax - x[k] / xmax) * (y[k] + y[k + 1]) / 2;
	if (fpr)
		memcpy(fpr, x, sizeof x);
	if (tpr)
		memcpy(tpr, y, sizeof y);
	*auroc = xmax > 0 ? a : NAN;
	return 0;
}

/* ---- curve stream ---- */

circ_curve *circ_eval_curve_read(circ_reader *r, circ_error *e)
{
	const msgpack_object *h = circ_reader_header(r), *rec;
	circ_curve *c = circ_xcalloc(1, sizeof *c);
	int64_t cap = 0;
	c->absolute = -1;
	c->cpr = c->cmd = NAN;
	if (strcmp(circ_reader_kind(r), "curve")) {
		circ_errorf(e, "%s: expected a curve stream, got kind '%s'", circ_reader_name(r),
			    circ_reader_kind(r));
		goto fail;
	}
	if (circ_rec_get(h, "graph") && !(c->g = circ_graph_from_header(h, e)))
		goto fail_hdr;
	if (circ_rec_get(h, "metric") && circ_rec_strdup(h, "metric", &c->metric_name, e) < 0)
		goto fail_hdr;
	if (circ_rec_get(h, "absolute") && circ_rec_bool(h, "absolute", &c->absolute, e) < 0)
		goto fail_hdr;
	int k, summary_seen = 0;
	while ((k = circ_reader_next(r, &rec, e)) > 0) {
		const msgpack_object *sm = circ_rec_get(rec, "summary");
		if (summary_seen) {
			circ_errorf(e, "record after the summary record");
			goto fail_rec;
		}
		if (sm) {
			int is;
			if (circ_rec_bool(rec, "summary", &is, e) < 0)
				goto fail_rec;
			if (is) {
				summary_seen = 1;
				if ((circ_rec_get(rec, "cpr") &&
				     circ_rec_f64(rec, "cpr", &c->cpr, e) < 0) ||
				    (circ_rec_get(rec, "cmd") &&
				     circ_rec_f64(rec, "cmd", &c->cmd, e) < 0))
					goto fail_rec;
				continue;
			}
		}
		if (c->n == cap) {
			cap = cap ? 2 * cap : 16;
			c->fraction = circ_xrealloc(c->fraction, (size_t)cap * sizeof *c->fraction);
			c->n_edges = circ_xrealloc(c->n_edges, (size_t)cap * sizeof *c->n_edges);
			c->faithfulness =
			    circ_xrealloc(c->faithfulness, (size_t)cap * sizeof *c->faithfulness);
			c->metric = circ_xrealloc(c->metric, (size_t)cap * sizeof *c->metric);
		}
		int64_t i = c->n;
		c->metric[i] = NAN;
		c->n_edges[i] = -1;
		if (circ_rec_f64(rec, "fraction", &c->fraction[i], e) < 0 ||
		    circ_rec_f64(rec, "faithfulness", &c->faithfulness[i], e) < 0 ||
		    (circ_rec_get(rec, "n_edges") &&
		     circ_rec_i64(rec, "n_edges", &c->n_edges[i], e) < 0) ||
		    (circ_rec_get(rec, "metric") &&
		     circ_rec_f64(rec, "metric", &c->metric[i], e) < 0))
			goto fail_rec;
		if (!isfinite(c->fraction[i]) || c->fraction[i] < 0 || c->fraction[i] > 1) {
			circ_errorf(e, "field 'fraction': %g is not in 0..1", c->fraction[i]);
			goto fail_rec;
		}
		if (i > 0 && !(c->fraction[i] > c->fraction[i - 1])) {
			circ_errorf(
			    e, "field 'fraction': %g does not follow %g (fractions must increase)",
			    c->fraction[i], c->fraction[i - 1]);
			goto fail_rec;
		}
		c->n++;
	}
	if (k < 0)
		goto fail;
	return c;
fail_rec:
	circ_reader_fail(r, e);
	goto fail;
fail_hdr:
	circ_error_prefix(e, "%s: record 0", circ_reader_name(r));
fail:
	circ_eval_curve_free(c);
	return NULL;
}

void circ_eval_curve_free(circ_curve *c)
{
	if (!c)
		return;
	circ_graph_free(c->g);
	free(c->metric_name);
	free(c->fraction);
	free(c->n_edges);
	free(c->faithfulness);
	free(c->metric);
	free(c);
}

int circ_eval_curve_write_header(circ_writer *w, int argc, char **argv, circ_reader *const *inputs,
				 int ninputs, const circ_graph *g, const char *metric, int absolute,
				 const char *model_digest, const circ_hdr_field *extra, int nextra,
				 circ_error *e)
{
	circ_hdr_field own[] = {
	    CIRC_HDR_GRAPH(g),
	    CIRC_HDR(STR, "metric", metric ? metric : ""),
	    CIRC_HDR_IF(absolute >= 0, BOOL, "absolute", absolute > 0),
	    CIRC_HDR_IF(model_digest, STR, "model_digest", model_digest),
	};
	return circ_writer_header_ext(w, "curve", argc, argv, inputs, ninputs, own, CIRC_HDR_N(own),
				      extra, nextra, e);
}

int circ_eval_curve_write_point(circ_writer *w, double fraction, int64_t n_edges,
				double faithfulness, double metric, circ_error *e)
{
	msgpack_packer *pk = circ_writer_packer(w);
	msgpack_pack_map(pk, 4);
	circ_pack_kv_f64(pk, "fraction", fraction);
	circ_pack_kv_i64(pk, "n_edges", n_edges);
	circ_pack_kv_f64(pk, "faithfulness", faithfulness);
	circ_pack_kv_f64(pk, "metric", metric);
	return circ_writer_end_record(w, e);
}

int circ_eval_curve_write_summary(circ_writer *w, double cpr, double cmd, circ_error *e)
{
	msgpack_packer *pk = circ_writer_packer(w);
	msgpack_pack_map(pk, 3);
	circ_pack_str(pk, "summary");
	msgpack_pack_true(pk);
	circ_pack_kv_f64(pk, "cpr", cpr);
	circ_pack_kv_f64(pk, "cmd", cmd);
	return circ_writer_end_record(w, e);
}
