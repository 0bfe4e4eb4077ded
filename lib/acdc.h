/*
 * acdc: Automatic Circuit DisCovery (Conmy et al. 2023) over circ's graph.
 *
 * Start from the full graph. Visit receivers in reverse topological order
 * (logits, then the last layer's MLP, then its heads' q/k/v, ... down to
 * layer 0); skip a receiver whose node no longer reaches the logits; for
 * each of its incoming edges, patch it, and keep it patched if the loss
 * grows by less than tau (loss = kl from the clean model by default, or
 * -metric for a task metric; with abs_change, if |change| < tau);
 * otherwise restore it. Dangling edges are dropped at the end.
 *
 * Every test is one patched forward of the whole dataset from the
 * receiver's stage up: the stages below are the clean run, reused (see
 * patch.h). The dataset is held as one patcher per batch.
 *
 * Layering: uses patch, circuit.
 */
#ifndef CIRC_ACDC_H
#define CIRC_ACDC_H

#include "patch.h"

typedef struct circ_acdc_opts {
	double tau;
	int abs_change;
	/* Edges per group test; 0 or 1: exact ACDC (one patched forward per
	 * edge). G > 1 is an approximation (off by default): a receiver's
	 * edges are taken in groups of G, from the latest upstream node
	 * down; a group is patched at once, and dropped whole when its joint
	 * change is below tau; otherwise it is split in two halves, the later
	 * one first, down to single edges, which are tested as ACDC tests
	 * them. It makes the same decisions as exact ACDC when the edges'
	 * effects on the loss add up and none is negative (then each edge of
	 * a group below tau is below tau too); when they interact or cancel,
	 * decisions may differ. It pays when most edges are dropped, as in
	 * real circuits: about one test per group plus log2(G) per kept edge. */
	int group;
} circ_acdc_opts;

/* One decision, reported to the callback as it is made. */
typedef struct circ_acdc_step {
	int64_t edge;
	double before, after; /* loss of the current circuit, and with the edge patched */
	int kept;
	int group; /* edges patched together in the test that decided it (1: alone) */
} circ_acdc_step;

typedef int (*circ_acdc_cb)(void *ctx, const circ_acdc_step *s, circ_error *e);

/* Runs ACDC on the batches loaded into the n patchers (same graph and
 * metric). keep (E) receives the circuit. The callback (may be NULL) sees
 * every decision, in the order of the edges decided (with groups, every
 * edge of a group dropped at once, from the latest upstream node down).
 * *tests counts patched forwards of the dataset (with groups, fewer than
 * the edges decided). -1 with a message on error. */
int circ_acdc_run(circ_patcher **ps, int n, const circ_acdc_opts *o, uint8_t *keep, circ_acdc_cb cb,
		  void *ctx, int64_t *tests, circ_progress *pr, circ_error *e);

#endif
