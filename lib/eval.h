/*
 * eval: evaluation maths for circuits. ROC curves and AUC over edges
 * against a ground-truth edge set, the confusion counts of one circuit, and
 * the areas under a faithfulness curve (CPR and CMD as the MIB benchmark
 * defines them).
 *
 * Definitions (MIB circuit track, MIB_circuit_track/evaluation.py):
 *   faithfulness f(C) = (m(C) - m(empty)) / (m(model) - m(empty)), measured
 *   at circuit sizes of {0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100}% of the
 *   edges (n = floor(fraction * E)).
 *   area_under   = trapezoid sum over the points of f (x = fraction)
 *   area_from_1  = trapezoid sum over the points of |1 - f|
 *   CPR = area_under of the curve whose circuits were ranked by signed score;
 *   CMD = area_from_1 of the curve ranked by |score|. Higher CPR is better,
 *   lower CMD is better. The x axis runs from 0.001 to 1, not from 0.
 *   MIB's ROC "AUROC" takes the greedy circuit at each of those fractions
 *   (n = ceil(fraction * E)), its TPR and FPR against the true circuit, and
 *   the trapezoid area under TPR(FPR) with FPR divided by its last value.
 *
 * circ_eval_roc_auc is the threshold-free AUC: the probability that a random true
 * edge outranks a random false one, ties counting one half (Mann-Whitney with
 * average ranks); it equals the trapezoid area under the full ROC staircase.
 */
#ifndef CIRC_EVAL_H
#define CIRC_EVAL_H

#include <stdint.h>

#include "circuit.h"

/* The MIB circuit sizes, as fractions of the edges. */
#define CIRC_MIB_NFRAC 10
extern const double circ_mib_fractions[CIRC_MIB_NFRAC];

/* Rank-based ROC AUC of score (n) against label (n, 0/1). NaN scores rank
 * below every number (and tie with each other). -1 with a message if there
 * are no positives or no negatives. */
int circ_eval_roc_auc(const double *score, const uint8_t *label, int64_t n, double *auc,
		      circ_error *e);
/* Reference twin: O(n^2) count over all (positive, negative) pairs. */
double circ_eval_roc_auc_ref(const double *score, const uint8_t *label, int64_t n);

typedef struct circ_roc_point {
	double threshold; /* score >= threshold is predicted positive */
	double fpr, tpr;
} circ_roc_point;
/* The ROC curve: one point per distinct score, from (0,0) (threshold +inf)
 * to (1,1). pts must hold n + 1 points; returns how many were written, or -1
 * with a message if there are no positives or no negatives. */
int64_t circ_eval_roc_curve(const double *score, const uint8_t *label, int64_t n,
			    circ_roc_point *pts, circ_error *e);

/* Trapezoid sum of y over x (n points, x in the order given). */
double circ_eval_trapezoid(const double *x, const double *y, int64_t n);

typedef struct circ_confusion {
	int64_t tp, fp, tn, fn;
	double tpr, fpr;  /* NaN when undefined (no positives / negatives) */
	double precision; /* 0 when nothing is predicted, as MIB does */
	double recall;	  /* = tpr */
} circ_confusion;
void circ_eval_confusion(const uint8_t *pred, const uint8_t *label, int64_t n, circ_confusion *c);

typedef struct circ_curve_area {
	double area_under;  /* trapezoid of f */
	double area_from_1; /* trapezoid of |1 - f| */
	double average;	    /* mean of f over the points */
} circ_curve_area;
/* Areas of a faithfulness curve f(x) at n >= 2 points with x strictly
 * increasing (and > 0 when log_x, which integrates over log x as MIB's
 * log_scale option does). -1 with a message otherwise. */
int circ_eval_curve_areas(const double *x, const double *f, int64_t n, int log_x,
			  circ_curve_area *out, circ_error *e);
/* Faithfulness f = (m_circuit - m_empty) / (m_model - m_empty) of a circuit
 * from the metric with the circuit's edges kept (every other edge patched),
 * with no edge kept, and of the unpatched model (per example or means over
 * examples). Undefined when the empty circuit does what the model does
 * (m_model - m_empty == 0): NaN then, which callers report or write. */
double circ_eval_faithfulness(double m_circuit, double m_empty, double m_model);

/* Circuit size for a curve point: floor(fraction * n_edges), as MIB. */
int64_t circ_eval_curve_n_edges(double fraction, int64_t n_edges);

/* MIB-style AUROC against truth (E, 0/1): greedy circuits of
 * ceil(fraction * E) edges (fewer if fewer edges are scored), pruned, at each
 * circ_mib_fractions; fills fpr and tpr (CIRC_MIB_NFRAC each, may be NULL).
 * -1 with a message if truth has no positives or no negatives, or the
 * greedy selection fails. */
int circ_eval_mib_auroc(const circ_graph *g, const double *score, int signed_, const uint8_t *truth,
			double *auroc, double *fpr, double *tpr, circ_error *e);

/* ---- the "curve" stream (faithfulness curve; written by circ-patch) ----
 * Header: "graph", "metric" (str), optional "absolute" (bool: circuits
 * ranked by |score|), "model_digest". Records, by increasing fraction:
 * {"fraction": f64, "n_edges": int, "faithfulness": f64, "metric": f64};
 * last, optionally, {"summary": true, "cpr": f64, "cmd": f64}: the
 * area_under and area_from_1 of this curve (circ_eval_curve_areas). */
typedef struct circ_curve {
	circ_graph *g;	      /* NULL if the header has no graph */
	char *metric_name;    /* NULL if absent */
	int absolute;	      /* -1 unknown, 0 signed, 1 |score| */
	int64_t n;	      /* points */
	double *fraction;     /* (n) */
	int64_t *n_edges;     /* (n) */
	double *faithfulness; /* (n) */
	double *metric;	      /* (n) NaN where absent */
	double cpr, cmd;      /* from the summary record; NaN if none */
} circ_curve;
/* Reads a whole curve stream. Fractions must increase. NULL on error (the
 * message names the file and record). */
circ_curve *circ_eval_curve_read(circ_reader *r, circ_error *e);
void circ_eval_curve_free(circ_curve *c);
/* Writing: the header record (common fields, then "graph", "metric",
 * "absolute" when >= 0, "model_digest" when not NULL, then the caller's
 * nextra fields), one record per point, and the summary record. */
int circ_eval_curve_write_header(circ_writer *w, int argc, char **argv, circ_reader *const *inputs,
				 int ninputs, const circ_graph *g, const char *metric, int absolute,
				 const char *model_digest, const circ_hdr_field *extra, int nextra,
				 circ_error *e);
int circ_eval_curve_write_point(circ_writer *w, double fraction, int64_t n_edges,
				double faithfulness, double metric, circ_error *e);
int circ_eval_curve_write_summary(circ_writer *w, double cpr, double cmd, circ_error *e);

#endif
