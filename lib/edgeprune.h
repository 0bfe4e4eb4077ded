/*
 * edgeprune: Edge Pruning (Bhaskar et al. 2024, "Finding Transformer
 * Circuits with Edge Pruning"): a mask z_e in [0, 1] on every edge u->r of
 * the graph, trained by gradient descent, then the circuit read off the
 * trained masks.
 *
 * The masked run. Receiver r's input is the residual with each of its
 * sources u weighted by its edge's mask and the rest taken from the
 * corrupted (reference) run:
 *     input_r = residual + sum_u (1 - z_e) (ref_u - cur_u),
 * cur_u being u's output in the masked run itself (so a mask changes every
 * node above it). z = 1 everywhere is the clean run, z = 0 patches every
 * edge (as lib/patch does for a circuit, with fractional weights). The
 * deltas go through the model's forward hook; the backward gives each
 * receiver's input gradient g_r, from which
 *     d loss / d z_e = g_r . (cur_u - ref_u),
 * and each node's output gradient is sum_r z_e g_r over its edges, handed
 * to the model's backward per node (circ_bwd.out_hook), since the masks
 * make the nodes of one stage receive different gradients.
 *
 * The relaxation: hard-concrete (Louizos et al. 2018) with parameters
 * log_alpha per edge, temperature beta = 2/3 and stretch (l, r) =
 * (-0.1, 1.1): with u ~ U(0, 1),
 *     s = sigmoid((log u - log(1 - u) + log_alpha) / beta),
 *     z = min(1, max(0, s (r - l) + l)),
 * and P(z != 0) = sigmoid(log_alpha - beta log(-l / r)), whose mean over the
 * edges is the expected density (1 - the expected sparsity).
 *
 * The loss: the data loss (KL from the clean model's output, or -metric for
 * a task metric) averaged over a batch, plus the Lagrangian
 *     lambda1 (s - t) + lambda2 (s - t)^2
 * of the expected sparsity s and the target t, ramped linearly from 0 to
 * the final target over the warm-up steps. log_alpha descends and the two
 * multipliers ascend, each with Adam (AdamW: decoupled weight decay on
 * log_alpha, 0 by default). One mask is sampled per step for the whole
 * batch; steps cycle over the batches.
 *
 * Node masks (optional, as the paper's): a mask z_u per upstream node but
 * the input, with its own target, multipliers (lambda3, lambda4) and the
 * same schedule; the run then sees z_e z_u on the edge u->r, so a closed
 * node closes all its outgoing edges.
 *
 * Determinism: the noise comes from circ_rng seeded by the seed; every sum
 * runs in a fixed order over fixed blocks (as the model's own), so the
 * result depends only on the inputs and the seed, not on the threads.
 *
 * Layering: uses patch (the patchers: clean and reference runs, the
 * metric), model, graph and rng.
 */
#ifndef CIRC_EDGEPRUNE_H
#define CIRC_EDGEPRUNE_H

#include <stdint.h>

#include "patch.h"

/* The hard-concrete distribution's constants (the paper's). */
#define CIRC_EP_BETA  (2.0 / 3.0)
#define CIRC_EP_LEFT  (-0.1)
#define CIRC_EP_RIGHT 1.1

/* A sample z of the hard-concrete with parameter log_alpha at noise u in
 * (0, 1); *dz (if not NULL) gets dz / dlog_alpha (0 where z is clamped). */
double circ_ep_hc_sample(double log_alpha, double u, double *dz);
/* P(z != 0) = sigmoid(log_alpha - beta log(-l / r)); *dp (if not NULL)
 * gets its derivative. */
double circ_ep_hc_l0(double log_alpha, double *dp);
/* The deterministic mask of the trained model: min(1, max(0,
 * sigmoid(log_alpha) (r - l) + l)). */
double circ_ep_hc_det(double log_alpha);

typedef struct circ_ep_opts {
	double sparsity;     /* final target sparsity in [0, 1) */
	int steps;	     /* training steps (>= 0) */
	int warmup;	     /* steps over which the target rises from 0 (<= steps) */
	double lr;	     /* Adam step of log_alpha */
	double lr_lambda;    /* Adam step of the multipliers (ascent) */
	double init;	     /* log_alpha starts at init + 0.01 N(0, 1) */
	double weight_decay; /* AdamW decay of log_alpha */
	uint64_t seed;
	int node_masks;	      /* 1: a mask per upstream node too (not the input) */
	double node_sparsity; /* with node_masks: their final target sparsity */
} circ_ep_opts;
/* Defaults: sparsity 0.9, 1000 steps, warm-up 500, lr 0.1, lr_lambda 0.1,
 * init 3, weight decay 0, seed 1. */
void circ_ep_opts_default(circ_ep_opts *o);

/* One step's numbers, for the training curve. */
typedef struct circ_ep_step {
	int step;	 /* 1 .. steps */
	double loss;	 /* data loss of the step's batch and mask */
	double reg;	 /* the Lagrangian term */
	double sparsity; /* expected sparsity after the step's update */
	double target;	 /* the target at this step */
	double lambda1, lambda2;
	int64_t edges; /* edges with log_alpha > 0 (deterministic mask > 0.5) */
	/* with node masks (else 0): the same for the nodes */
	double node_sparsity, node_target, lambda3, lambda4;
	int64_t nodes;
} circ_ep_step;
typedef int (*circ_ep_step_fn)(void *ctx, const circ_ep_step *st, circ_error *e);

typedef struct circ_edgeprune circ_edgeprune;

/* A trainer over n loaded patchers (the batches; made with backward = 1,
 * diff_only = 0, the same model and graph), borrowed until freed. log_alpha
 * starts from o (a copy is kept). NULL with a message if a patcher cannot
 * do a backward or they disagree. */
circ_edgeprune *circ_ep_new(circ_patcher *const *ps, int n, const circ_ep_opts *o, circ_error *e);
void circ_ep_free(circ_edgeprune *ep); /* NULL is a no-op */

/* The data loss of patcher k's batch with masks z (E), and d loss / dz
 * into dz (E; NULL: the loss only). The loss is the mean over the batch of
 * kl, or of -metric for a task metric. -1 with a message if a forward or
 * backward fails or the loss is not finite. */
int circ_ep_loss_grad(circ_edgeprune *ep, int k, const float *z, double *loss, double *dz,
		      circ_error *e);

/* Runs o->steps training steps, calling fn (may be NULL) after each; -1
 * with a message on error (fn's too). */
int circ_ep_train(circ_edgeprune *ep, circ_ep_step_fn fn, void *ctx, circ_error *e);
/* The trained log_alpha (E), valid while ep lives. */
const double *circ_ep_log_alpha(const circ_edgeprune *ep);
/* With node masks, the nodes' log_alpha (U; the input's unused), else NULL. */
const double *circ_ep_node_log_alpha(const circ_edgeprune *ep);
/* The key that ranks the edges for the circuit (E, valid until the next
 * call or free): log_alpha, or with node masks min(log_alpha_e,
 * log_alpha_u) for an edge from node u (other than the input). */
const double *circ_ep_scores(circ_edgeprune *ep);

#endif
