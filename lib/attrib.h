/*
 * attrib: edge scores, summed over examples so that shards merge exactly.
 *
 * For an edge u->r and one example, with the metric m read on the clean run:
 *   eap                 (ref_u - clean_u) . dm/d input_r   (summed over
 *                       positions and width; the gradient on the clean run)
 *   eap-ig              the same with the gradient averaged over `steps`
 *                       runs whose input embedding is interpolated from the
 *                       reference to the clean one (alpha = k/steps,
 *                       k = 0..steps-1, as EAP-IG's inputs variant does)
 *   eap-ig-activations  the gradient averaged over runs in which u's unit
 *                       (the input, one layer's heads, or one MLP) has its
 *                       output interpolated, alpha = k/steps, k = 1..steps
 *   exact               m(only u->r patched) - m(clean)
 * A positive score means patching the edge raises the metric. The first
 * order terms of eap are exact patching effects to first order: as the
 * reference approaches the clean run, eap -> exact.
 *
 * Layering: uses patch (and so model, graph, batch).
 */
#ifndef CIRC_ATTRIB_H
#define CIRC_ATTRIB_H

#include "patch.h"

typedef enum circ_attr_method {
	CIRC_ATTR_EAP,
	CIRC_ATTR_EAP_IG,
	CIRC_ATTR_EAP_IG_ACT,
	CIRC_ATTR_EXACT,
	CIRC_ATTR_COUNT
} circ_attr_method;

const char *circ_attr_name(circ_attr_method m);
int circ_attr_parse(const char *s, circ_attr_method *m);
/* 1 if the method needs the model's backward pass. */
int circ_attr_needs_backward(circ_attr_method m);

typedef struct circ_attrib circ_attrib;

/* An accumulator of per-edge score sums for patcher p (which must have been
 * made with backward for the gradient methods). steps: IG steps (>= 1). */
circ_attrib *circ_attrib_new(circ_patcher *p, circ_attr_method method, int steps);
void circ_attrib_free(circ_attrib *a);
/* Adds the scores of the batch loaded in the patcher. progress (may be NULL)
 * steps by the batch's examples for each edge of the exact method. */
int circ_attrib_batch(circ_attrib *a, circ_progress *progress, circ_error *e);
/* Per-edge sums over examples (E) and the number of examples. */
const double *circ_attrib_sums(const circ_attrib *a);
int64_t circ_attrib_count(const circ_attrib *a);
/* Bytes of the buffers the accumulator holds now (for tests that bound
 * memory by the shape). */
size_t circ_attrib_bytes(const circ_attrib *a);
/* The bytes an accumulator of method m over patcher p would hold for a
 * batch of B sequences of T tokens reading n_read positions (its own
 * buffers, the patcher's not included): an estimate for choosing batch
 * sizes. */
size_t circ_attrib_bytes_for(circ_attr_method m, const circ_patcher *p, int B, int T, int n_read);
/* Options for a patcher that only feeds an accumulator of method m (backward
 * for the gradient methods, receiver gradients one stage at a time, and
 * only ref - clean kept per node), on top of o's. */
void circ_attrib_patch_opts(circ_attr_method m, circ_patch_opts *o);
/* Zeroes the sums and the count; buffers are kept (a new pass over a
 * dataset with the memory of the last one). */
void circ_attrib_reset(circ_attrib *a);

/* Backward pass of the loss (see above) on the clean run of the batch
 * loaded in p (re-running it if patched forwards overwrote it); afterwards
 * circ_run_recv_grad(circ_patcher_run(p), r) holds d loss / d input_r. */
int circ_loss_backward(circ_patcher *p, circ_error *e);

/* EAP from harvested activations of one example: adds into sum (E) the
 * score diff_u . grad_r of every edge, with diff (U, T, C) the reference
 * minus clean node outputs and grad (R, T, C) the loss gradient at every
 * receiver of the model (model numbering: R = L*(3H+1)+1). */
void circ_eap_add(double *sum, const circ_graph *g, int d_model, int T, const float *diff,
		  const float *grad);

#endif
