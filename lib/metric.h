/*
 * metric: behaviour metrics on one row of logits (the model's output at one
 * read position), each as a value and its gradient with respect to that
 * row, so that a backward pass (circ_backward) can start from it.
 *
 *   logit difference   mean over good ids of logit - mean over bad ids
 *   probability diff.  sum over good ids of p - sum over bad ids of p
 *   KL divergence      KL(clean || p) = sum_v clean_v (log clean_v - log p_v),
 *                      from a clean distribution given as log-probabilities
 *   log-probability    log p[answer]
 *   top-1 accuracy     1 if the arg-max is the answer (lowest id wins ties);
 *                      its gradient is zero
 * p = softmax(logits), computed with a double-precision normaliser. The
 * gradients are exact derivatives of these formulas (tested against
 * PyTorch's autograd in test_model). Values are doubles; gradients floats,
 * written over grad (V) when grad is not NULL.
 *
 * Token ids outside [0, V) make a metric return NAN (callers validate ids
 * first and report them; this is a guard, not a message).
 *
 * How an example with several read positions averages its rows, and how a
 * batch combines examples, is the caller's (lib/example's) business.
 *
 * Layering: uses libm only.
 */
#ifndef CIRC_METRIC_H
#define CIRC_METRIC_H

#include <stdint.h>

double circ_mt_logit_diff(const float *logits, int V, const int32_t *good, int ngood,
			  const int32_t *bad, int nbad, float *grad);
double circ_mt_prob_diff(const float *logits, int V, const int32_t *good, int ngood,
			 const int32_t *bad, int nbad, float *grad);
double circ_mt_kl(const float *logits, int V, const float *clean_logp, float *grad);
double circ_mt_logprob(const float *logits, int V, int32_t answer, float *grad);
double circ_mt_top1(const float *logits, int V, int32_t answer, float *grad);

/* Index of the largest logit (the lowest index among equals); -1 if V < 1. */
int circ_mt_argmax(const float *logits, int V);
/* The k most probable ids in decreasing probability (ties: lower id first)
 * into ids (k) and their probabilities into probs (k); returns how many were
 * written (min(k, V)). One pass over V with a sorted list of k: for small k. */
int circ_mt_topk(const float *logits, int V, int k, int32_t *ids, double *probs);

#endif
