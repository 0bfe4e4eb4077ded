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
 * The reference order (circ_acdc_opts.order CIRC_ACDC_ORDER_REFERENCE)
 * tests the same way in the order of the reference implementation
 * (ArthurConmy/Automatic-Circuit-Discovery: TLACDCExperiment over
 * TLACDCCorrespondence, as of its current code). Its graph makes each
 * head's q, k and v input a node: the edge from that input node to the
 * head's q (k, v) is a "direct computation" edge, and removing it patches
 * the head's whole q input at once (in circ: every edge into receiver
 * a{l}.h{h}<q> patched together). It visits, from the logits down:
 *   logits; then per layer l, from the last down:
 *     m{l}'s incoming edges (when m{l} still reaches the logits),
 *     for v, k, q in that order, for each head from the last down: the
 *       head's whole-input test of that letter (when the head reaches the
 *       logits; otherwise its receivers are dropped untested),
 *     for v, k, q, for each head from the last down: the incoming edges of
 *       a{l}.h{h}<letter> (when its whole-input test kept it).
 * A receiver's incoming edges come by upstream "name" (the input, a
 * layer's MLP, a layer's heads as one name), from the latest name down
 * (names_reverse: from the input up); within the heads of a layer from the
 * last head down (indices_reverse: from head 0 up). These are its
 * --names-mode and --indices-mode "normal" and "reverse" (its "random" is
 * Python's shuffle and is not reproduced). The MLP's input is no direct-
 * computation edge there (a placeholder), so MLPs have no whole-input test.
 * Every family runs in that order. Parallel blocks (GPT-NeoX): the
 * reference's graph also gives a layer's heads edges into that layer's MLP
 * input (blocks.l.hook_mlp_in), which a parallel block's MLP does not read
 * (testing one there adds the head's corrupted minus clean output to an
 * input that never held it); circ's graph has no such edges, and its order
 * is the reference's with those tests left out (tests/ref/acdc_ref.py
 * --parallel).
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

typedef enum circ_acdc_order { CIRC_ACDC_ORDER_CIRC, CIRC_ACDC_ORDER_REFERENCE } circ_acdc_order;

/* "circ" or "reference" (NULL for a bad value), and back (-1 if unknown). */
const char *circ_acdc_order_name(circ_acdc_order o);
int circ_acdc_order_parse(const char *s, circ_acdc_order *o);

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
	/* The attribution screen, an approximation (off by default): with
	 * screen_attr (E, each edge's attribution to the loss, e.g. EAP-IG's
	 * mean score) and screen > 0, every edge whose |screen_attr| is below
	 * screen * tau is dropped without a test of its own before ACDC
	 * starts (one forward measures the circuit without them, reported as
	 * one decision per edge, screened); ACDC then tests the other edges
	 * as without the screen (one by one, or in groups of `group` taken in
	 * ACDC's order among a receiver's remaining edges). Circ's order
	 * only. */
	const double *screen_attr;
	double screen;
	circ_acdc_order order; /* default CIRC_ACDC_ORDER_CIRC (0) */
	/* reference order only: its --indices-mode and --names-mode reverse
	 * (0: its "normal"); see above */
	int indices_reverse, names_reverse;
} circ_acdc_opts;

/* One decision, reported to the callback as it is made. An edge test has
 * edge >= 0 and recv -1; a whole-input test (reference order) has edge -1
 * and recv the receiver, whose edges it drops together when not kept
 * (group: their number). */
typedef struct circ_acdc_step {
	int64_t edge;
	int recv;
	double before, after; /* loss of the current circuit, and with the edge patched */
	int kept;
	int group;    /* edges patched together in the test that decided it (1: alone) */
	int screened; /* 1: below the screen's bound, decided in its tests */
} circ_acdc_step;

typedef int (*circ_acdc_cb)(void *ctx, const circ_acdc_step *s, circ_error *e);

/* Runs ACDC on the batches loaded into the n patchers (same graph and
 * metric). keep (E) receives the circuit. The callback (may be NULL) sees
 * every decision, in the order of the edges decided (with groups, every
 * edge of a group dropped at once, from the latest upstream node down).
 * The reference order works on an edge-level graph only, without groups
 * (group 0 or 1) and without a screen: -1 with a message otherwise. *tests counts patched forwards
 * of the dataset (with groups, fewer than the edges decided). -1 with a message on error. */
int circ_acdc_run(circ_patcher **ps, int n, const circ_acdc_opts *o, uint8_t *keep, circ_acdc_cb cb,
		  void *ctx, int64_t *tests, circ_progress *pr, circ_error *e);

#endif
