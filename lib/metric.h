/*
 * metric: the one place where behaviour metrics are computed. Per-row
 * primitives on one row of logits z (V) (the model's output at one read
 * position), and the per-example aggregation over an example's read rows
 * that forward, patch, attrib, acdc and train call.
 *
 * Rows. p = softmax(z) is computed in double: p_v = exp(z_v - max) / s with
 * s = sum_v exp(z_v - max), and the log-sum-exp is max + log s.
 *   log-softmax        z - logsumexp(z), in float (the normaliser in double)
 *   logit difference   mean over good ids of z - mean over bad ids of z
 *   probability diff.  sum over good ids of p - sum over bad ids of p
 *   log-probability    log of the sum over the answer ids of p
 *   KL divergence      KL(clean || p) = sum_v c_v (log c_v - log p_v), from
 *                      a clean distribution given as log-probabilities
 *                      (terms with c_v = 0 count 0; a NaN clean row stays NaN)
 *   top-1              the arg-max (lowest id among equals), the top k
 *   cross-entropy      the training loss (circ_metric_xent): float exp, for speed
 * Each metric's gradient with respect to z is exact for its formula (tested
 * against PyTorch's autograd in test_model): values are doubles, gradients
 * floats written over grad (V), every entry, when grad is not NULL.
 *
 * Averaging. An example may read several rows p_1..p_n; its metric is the
 * mean over them. A row primitive takes nrows = n so that its gradient comes
 * out already divided by n (rounded once to float); its value is the row's
 * own (the caller divides it by n). nrows = 1 for a row on its own.
 *
 * Scratch. Primitives that need probabilities take p (V doubles): the
 * caller's buffer, so that a loop over rows allocates once; on return it
 * holds softmax(z). NULL allocates one for the call.
 *
 * Token ids outside [0, V) make a metric return NaN (callers validate ids
 * first and report them; this is a guard, not a message).
 *
 * Layering: uses util (allocation) and kernels (circ_vexp), and libm.
 */
#ifndef CIRC_METRIC_H
#define CIRC_METRIC_H

#include <stddef.h>
#include <stdint.h>

/* ---- the task metrics ---- */

typedef enum circ_metric_kind {
	CIRC_METRIC_LOGIT_DIFF,
	CIRC_METRIC_PROB_DIFF,
	CIRC_METRIC_LOGPROB,
	CIRC_METRIC_KL,
	CIRC_METRIC_COUNT
} circ_metric_kind;

/* "logit_diff", "prob_diff", "logprob", "kl"; "?" for anything else. */
const char *circ_metric_name(circ_metric_kind k);
/* The kind named by s (n bytes, no terminator needed): 0, or -1 if unknown. */
int circ_metric_parse(const char *s, size_t n, circ_metric_kind *k);
/* 1 for metrics where higher means the behaviour is stronger (logit_diff,
 * prob_diff, logprob); 0 for kl. Scores are effects on the loss: -metric, or
 * kl itself. */
int circ_metric_higher_better(circ_metric_kind k);

/* ---- per-row primitives ---- */

/* log-sum-exp of z (V) in double: max + log(sum exp(z - max)). */
double circ_metric_lse(const float *z, int V);
/* p (V) = softmax(z) in double (see above); returns the log-sum-exp. */
double circ_metric_softmax(double *p, const float *z, int V);
/* log-softmax of one row: out (n) = inp - circ_metric_lse(inp), rounded to
 * float. Returns the log-sum-exp. out may be inp. */
double circ_metric_log_softmax_row(float *out, const float *inp, int n);
/* The same for each of n rows of V logits into out (n, V). */
void circ_metric_log_softmax(float *out, const float *logits, int n, int V);

/* Logit difference: (0 + z[good_0]/ngood + ...) - z[bad_0]/nbad - ..., in
 * double; its gradient 1/(ngood nrows) on good ids, -1/(nbad nrows) on bad
 * ones. NaN if either set is empty. */
double circ_metric_logit_diff(const float *z, int V, const int32_t *good, int ngood,
			      const int32_t *bad, int nbad, int nrows, float *grad);
/* Probability difference: (0 + p[good_0] + ...) - p[bad_0] - ... (bad may be
 * empty); gradient p_v (g_v - m) / nrows with g_v = +1 on good ids, -1 on bad
 * ones, m the value. */
double circ_metric_prob_diff(const float *z, int V, const int32_t *good, int ngood,
			     const int32_t *bad, int nbad, int nrows, double *p, float *grad);
/* Log-probability of a set of answers: log(pa), pa = 0 + p[ans_0] + ...;
 * gradient (-p_v + p_v [v in ans] / pa) / nrows. NaN if ans is empty. */
double circ_metric_logprob(const float *z, int V, const int32_t *ans, int nans, int nrows,
			   double *p, float *grad);
/* KL(clean || softmax(z)), clean_logp (V) the clean log-probabilities;
 * gradient (p_v - c_v) / nrows. */
double circ_metric_kl(const float *z, int V, const float *clean_logp, int nrows, double *p,
		      float *grad);
/* 1 if the arg-max is answer, else 0; its gradient is zero. */
double circ_metric_top1(const float *z, int V, int32_t answer, float *grad);

/* Index of the largest logit (the lowest index among equals); -1 if V < 1. */
int circ_metric_argmax(const float *z, int V);
/* The k most probable ids in decreasing probability (ties: lower id first)
 * into ids (k) and their probabilities exp(z - circ_metric_lse(z)) into probs
 * (k); returns how many were written (min(k, V)). One pass over V with a
 * sorted list of k: for small k. */
int circ_metric_topk(const float *z, int V, int k, int32_t *ids, double *probs);

/* Mean cross-entropy of N rows of logits (N, V) against targets (N), each
 * in [0, V): the training loss. When dlogits (N, V) is not NULL it receives
 * d loss / d logits (softmax minus one-hot, over N); row_loss (N), when not
 * NULL, each row's loss. Exponentials in float (circ_vexp, relative error
 * below 2e-7), their sum and the log in double: faster than the metrics
 * above, which training calls every step. Returns the mean (0 for N = 0). */
double circ_metric_xent(const float *logits, int N, int V, const int32_t *targets, float *dlogits,
			float *row_loss);

/* ---- per-example aggregation ---- */

/* Metric k of one example from the logits of its npos read rows (npos, V):
 * the mean over its rows of each row's metric. With one row the answers and
 * wrong answers are sets (logit_diff: means over each; prob_diff: sums;
 * logprob: log of the summed probability); with several, row i reads answer
 * i and wrong answer i (there must be npos of each that the metric uses,
 * else NaN; circ_batch_parse_example checks it, and lets prob_diff read one row
 * only). kl reads no answers: clean_logp (npos, V) is the clean log-softmax
 * at the same rows (kl only; else may be NULL). When dlogits (npos, V) is
 * not NULL it receives d metric / d logits. */
double circ_metric_example(circ_metric_kind k, int npos, const int32_t *ans, int nans,
			   const int32_t *wrong, int nwrong, const float *logits,
			   const float *clean_logp, int V, float *dlogits);

#endif
