/*
 * edgeprune: Edge Pruning's masked runs, their gradients and the training
 * loop (see edgeprune.h).
 *
 * One masked forward runs on a patcher's main run (which then no longer
 * holds the clean run: circ_patcher_dirty). Its forward hook sets, before
 * each stage, each receiver's delta sum_u (1 - z_e) (ref_u - cur_u) from
 * the current outputs of the run. Its backward hooks, from the logits
 * down: after a stage, each of its receivers' gradients g_r gives
 * d loss / d z_e = g_r . (cur_u - ref_u) for its edges and adds z_e g_r
 * into the output gradient of each source u (acc, (U, B, T, C)); before a
 * stage, the nodes it produces get their acc as output gradients. Every
 * family: a parallel block's stage (GPT-NeoX) holds its heads' and its
 * MLP's receivers, which read the same nodes, and produces both (out_hook
 * hands them in the stage's node order).
 *
 * Each stage's sums are GEMMs over the difference rows diff_u = ref_u -
 * cur_u (U, B, T, C), made once per forward as the stages reach them: the
 * deltas (receivers, BTC) = (1 - Z) diff, the masks' gradients -G diff^T
 * and acc += Z^T G, G the receivers' gradients. They run over fixed blocks
 * of EP_BLOCK columns split over the run's pool, the gradient's per-block
 * shares summed in block order: the same bytes for every thread count.
 */
#include "edgeprune.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "rng.h"

/* A set of hard-concrete masks with its own sparsity target and
 * multipliers: the edges', and optionally the nodes'. */
typedef struct mask_group {
	int64_t n;
	double *la;	       /* (n) log_alpha */
	double *m1, *m2;       /* (n) Adam moments of log_alpha */
	double lam[2];	       /* lambda1, lambda2 */
	double lm1[2], lm2[2]; /* their Adam moments */
	float *z;	       /* (n) the step's sampled masks */
	double *dzdla;	       /* (n) */
	double *g;	       /* (n) d loss / dz */
} mask_group;

static void group_init(mask_group *m, int64_t n, double init, circ_rng *rng)
{
	memset(m, 0, sizeof *m);
	m->n = n;
	m->la = circ_xmalloc((size_t)n * sizeof *m->la);
	m->m1 = circ_xcalloc((size_t)n, sizeof *m->m1);
	m->m2 = circ_xcalloc((size_t)n, sizeof *m->m2);
	m->z = circ_xmalloc((size_t)n * sizeof *m->z);
	m->dzdla = circ_xmalloc((size_t)n * sizeof *m->dzdla);
	m->g = circ_xmalloc((size_t)n * sizeof *m->g);
	for (int64_t i = 0; i < n; i++)
		m->la[i] = init + 0.01 * circ_rng_normal(rng);
}

static void group_free(mask_group *m)
{
	free(m->la);
	free(m->m1);
	free(m->m2);
	free(m->z);
	free(m->dzdla);
	free(m->g);
}

struct circ_edgeprune {
	circ_patcher *const *ps; /* (n) borrowed */
	int n;
	circ_ep_opts o;
	const circ_model *m;
	const circ_graph *g;
	const circ_topology *t;	 /* the graph's */
	const circ_topology *mt; /* the model's */
	int U, C, V;
	int64_t E;
	circ_metric_kind metric;
	/* the current masked pass */
	circ_patcher *p;
	const float *z; /* (E) */
	double *dz;	/* (E) or NULL */
	size_t btc;	/* B*T*C of the batch */
	float *acc;	/* (U, B, T, C) node output gradients */
	float *diff;	/* (U, B, T, C) ref_u - cur_u of the masked run */
	float *rows;	/* (max_nr, B, T, C) a stage's deltas, then its gradients */
	float *part;	/* (blocks, max_nr, U) per-block shares of the masks' gradients */
	float *wm;	/* (max_nr, U) a stage's 1 - z (forward) or z (backward) */
	uint8_t *open;	/* (max_nr) the receiver has a mask below 1 */
	size_t acc_cap, part_cap;
	int max_nr;	/* most graph receivers of a stage */
	int made;	/* diff holds the rows of nodes 0 .. made-1 of this forward */
	float *dlogits; /* (N, V) */
	size_t dl_cap;
	/* training state */
	mask_group edges; /* one mask per edge */
	mask_group nodes; /* with node masks: one per upstream node (input's stays 1) */
	float *zeff;	  /* (E) with node masks: z_e z_u, the masks the run sees */
	double *geff;	  /* (E) d loss / d zeff */
	double *score;	  /* (E) what ranks the edges (circ_ep_scores) */
};

static double sigmoid(double x)
{
	return x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x));
}

double circ_ep_hc_sample(double log_alpha, double u, double *dz)
{
	const double l = CIRC_EP_LEFT, r = CIRC_EP_RIGHT, beta = CIRC_EP_BETA;
	double s = sigmoid((log(u) - log1p(-u) + log_alpha) / beta), sb = s * (r - l) + l;
	if (dz)
		*dz = sb > 0 && sb < 1 ? (r - l) * s * (1 - s) / beta : 0;
	return sb <= 0 ? 0 : sb >= 1 ? 1 : sb;
}

double circ_ep_hc_l0(double log_alpha, double *dp)
{
	double p = sigmoid(log_alpha - CIRC_EP_BETA * log(-CIRC_EP_LEFT / CIRC_EP_RIGHT));
	if (dp)
		*dp = p * (1 - p);
	return p;
}

double circ_ep_hc_det(double log_alpha)
{
	double sb = sigmoid(log_alpha) * (CIRC_EP_RIGHT - CIRC_EP_LEFT) + CIRC_EP_LEFT;
	return sb <= 0 ? 0 : sb >= 1 ? 1 : sb;
}

void circ_ep_opts_default(circ_ep_opts *o)
{
	memset(o, 0, sizeof *o);
	o->sparsity = 0.9;
	o->steps = 1000;
	o->warmup = 500;
	o->lr = 0.1;
	o->lr_lambda = 0.1;
	o->init = 3;
	o->seed = 1;
}

circ_edgeprune *circ_ep_new(circ_patcher *const *ps, int n, const circ_ep_opts *o, circ_error *e)
{
	circ_edgeprune *ep;
	circ_rng rng;
	if (n < 1)
		return circ_errorf(e, "edge pruning needs at least one batch"), NULL;
	for (int k = 0; k < n; k++) {
		const circ_patch_opts *po = circ_patcher_opts(ps[k]);
		if (!po || !po->backward || po->diff_only || !circ_patcher_batch(ps[k]))
			return circ_errorf(e,
					   "edge pruning: batch %d: the patcher has no backward "
					   "or no batch loaded",
					   k),
			       NULL;
		if (circ_patcher_graph(ps[k]) != circ_patcher_graph(ps[0]) ||
		    circ_patcher_model(ps[k]) != circ_patcher_model(ps[0]) ||
		    po->metric != circ_patcher_opts(ps[0])->metric)
			return circ_errorf(e,
					   "edge pruning: batch %d: another model, graph or "
					   "metric",
					   k),
			       NULL;
	}
	ep = circ_xcalloc(1, sizeof *ep);
	ep->ps = ps;
	ep->n = n;
	ep->o = *o;
	ep->m = circ_patcher_model(ps[0]);
	ep->g = circ_patcher_graph(ps[0]);
	ep->t = ep->g->topo;
	ep->mt = circ_model_topology(ep->m);
	ep->U = circ_model_n_up(ep->m);
	ep->C = circ_model_config(ep->m)->n_embd;
	ep->V = circ_model_config(ep->m)->vocab_size;
	ep->E = ep->g->n_edges;
	ep->metric = circ_patcher_opts(ps[0])->metric;
	for (int st = 0; st < ep->t->n_stage; st++)
		if (ep->t->stage[st].n_recv > ep->max_nr)
			ep->max_nr = ep->t->stage[st].n_recv;
	ep->wm = circ_xcalloc((size_t)ep->max_nr * (size_t)ep->U, sizeof *ep->wm);
	ep->open = circ_xcalloc((size_t)ep->max_nr, 1);
	circ_rng_seed_stream(&rng, o->seed, 0);
	group_init(&ep->edges, ep->E, o->init, &rng);
	if (o->node_masks) {
		group_init(&ep->nodes, ep->U, o->init, &rng);
		ep->zeff = circ_xmalloc((size_t)ep->E * sizeof *ep->zeff);
		ep->geff = circ_xmalloc((size_t)ep->E * sizeof *ep->geff);
	}
	ep->score = circ_xmalloc((size_t)ep->E * sizeof *ep->score);
	return ep;
}

void circ_ep_free(circ_edgeprune *ep)
{
	if (!ep)
		return;
	free(ep->acc);
	free(ep->diff);
	free(ep->rows);
	free(ep->part);
	free(ep->wm);
	free(ep->open);
	free(ep->dlogits);
	group_free(&ep->edges);
	group_free(&ep->nodes);
	free(ep->zeff);
	free(ep->geff);
	free(ep->score);
	free(ep);
}

const double *circ_ep_log_alpha(const circ_edgeprune *ep)
{
	return ep->edges.la;
}

const double *circ_ep_node_log_alpha(const circ_edgeprune *ep)
{
	return ep->o.node_masks ? ep->nodes.la : NULL;
}

const double *circ_ep_scores(circ_edgeprune *ep)
{
	for (int64_t i = 0; i < ep->E; i++) {
		double la = ep->edges.la[i];
		int u = ep->g->edge_up[i];
		ep->score[i] =
		    ep->o.node_masks && u > 0 && ep->nodes.la[u] < la ? ep->nodes.la[u] : la;
	}
	return ep->score;
}

/* Columns of (B, T, C) per block of the mask GEMMs: fixed, so that the
 * sums (the gradient's over blocks too) do not depend on the threads. */
#define EP_BLOCK 4096

static size_t n_blocks(const circ_edgeprune *ep)
{
	return (ep->btc + EP_BLOCK - 1) / EP_BLOCK;
}

/* Graph receiver r's model receivers (1, or a node-level head's 3) into
 * mr; returns how many. */
static int model_recvs(const circ_edgeprune *ep, int r, int *mr)
{
	const circ_topo_recv *rv = &ep->t->recv[r];
	if (rv->kind == CIRC_RECV_HEAD) {
		const circ_topo_node *nd = &ep->mt->node[rv->node];
		CIRC_ASSERT(nd->n_recv <= 3);
		for (int j = 0; j < nd->n_recv; j++)
			mr[j] = nd->first_recv + j;
		return nd->n_recv;
	}
	mr[0] = circ_topo_map_recv(ep->t, r, ep->mt);
	return 1;
}

/* What a block task of stage s works on. */
typedef struct ep_task {
	circ_edgeprune *ep;
	circ_run *run;
	int s, nr, n_in;
	int u0; /* forward: diff rows u0 .. n_in-1 are to be made */
} ep_task;

/* The block's columns [c0, c0 + w). */
static void block_cols(const circ_edgeprune *ep, size_t blk, size_t *c0, int *w)
{
	*c0 = blk * EP_BLOCK;
	*w = (int)(ep->btc - *c0 < EP_BLOCK ? ep->btc - *c0 : EP_BLOCK);
}

/* Forward, per block: the new difference rows ref_u - cur_u, then
 * delta (nr, cols) = W (nr, n_in) diff (n_in, cols). */
static void fwd_part(void *ctx, size_t b0, size_t b1)
{
	const ep_task *t = ctx;
	circ_edgeprune *ep = t->ep;
	size_t n = ep->btc;
	for (size_t blk = b0; blk < b1; blk++) {
		size_t c0;
		int w;
		block_cols(ep, blk, &c0, &w);
		for (int u = t->u0; u < t->n_in; u++) {
			const float *ref = circ_patcher_ref_out(ep->p, u) + c0,
				    *cur = circ_run_node_out(t->run, u) + c0;
			float *d = ep->diff + (size_t)u * n + c0;
			for (int i = 0; i < w; i++)
				d[i] = ref[i] - cur[i];
		}
		if (t->nr)
			circ_gemm(0, 0, t->nr, w, t->n_in, 1.0f, ep->wm, ep->U, ep->diff + c0,
				  (int)n, 0.0f, ep->rows + c0, (int)n);
	}
}

/* Forward hook: the deltas of stage s's receivers, sum_u (1 - z_e) diff_u. */
static int fwd_hook(void *ctx, circ_run *run, int s, circ_error *e)
{
	circ_edgeprune *ep = ctx;
	const circ_topo_stage *st = &ep->t->stage[s];
	ep_task t = {ep, run, s, st->n_recv, s < ep->t->n_stage ? st->n_in : ep->U, ep->made};
	int any = 0;
	(void)e;
	if (s == 0)
		t.u0 = 0;
	for (int i = 0; i < t.nr; i++) {
		const float *z = ep->z + ep->g->recv_first[st->first_recv + i];
		ep->open[i] = 0;
		for (int u = 0; u < t.n_in; u++) {
			ep->wm[(size_t)i * ep->U + u] = 1.0f - z[u];
			ep->open[i] |= z[u] != 1.0f;
		}
		any |= ep->open[i];
	}
	if (!any)
		return 0;
	circ_pool_for(circ_run_pool(run), n_blocks(ep), fwd_part, &t);
	ep->made = t.n_in;
	for (int i = 0; i < t.nr; i++) {
		int mr[3], nmr;
		if (!ep->open[i])
			continue;
		nmr = model_recvs(ep, st->first_recv + i, mr);
		for (int j = 0; j < nmr; j++)
			memcpy(circ_run_delta_raw(run, mr[j]), ep->rows + (size_t)i * ep->btc,
			       ep->btc * sizeof(float));
	}
	return 0;
}

/* Backward, per block: G (nr, cols) the graph receivers' input gradients
 * (a node-level head's three summed), the block's share of G diff^T
 * (nr, n_in) into its own slot, and acc (n_in, cols) += Z^T G. */
static void bwd_part(void *ctx, size_t b0, size_t b1)
{
	const ep_task *t = ctx;
	circ_edgeprune *ep = t->ep;
	const circ_topo_stage *mst = &ep->mt->stage[t->s];
	int r0 = ep->t->stage[t->s].first_recv;
	size_t n = ep->btc;
	for (size_t blk = b0; blk < b1; blk++) {
		size_t c0;
		int w;
		block_cols(ep, blk, &c0, &w);
		for (int i = 0; i < t->nr; i++)
			memset(ep->rows + (size_t)i * n + c0, 0, (size_t)w * sizeof(float));
		for (int mr = mst->first_recv; mr < mst->first_recv + mst->n_recv; mr++) {
			const float *gr = circ_run_recv_grad(t->run, mr) + c0;
			float *gd = ep->rows +
				    (size_t)(circ_topo_map_recv(ep->mt, mr, ep->t) - r0) * n + c0;
			for (int i = 0; i < w; i++)
				gd[i] += gr[i];
		}
		if (ep->dz)
			circ_gemm(0, 1, t->nr, t->n_in, w, 1.0f, ep->rows + c0, (int)n,
				  ep->diff + c0, (int)n, 0.0f,
				  ep->part + blk * (size_t)t->nr * (size_t)ep->U, ep->U);
		circ_gemm(1, 0, t->n_in, w, t->nr, 1.0f, ep->wm, ep->U, ep->rows + c0, (int)n, 1.0f,
			  ep->acc + c0, (int)n);
	}
}

/* Backward hook, after stage s: the masks' gradients, d loss / d z_e =
 * g_r . (cur_u - ref_u) = -(G diff^T)[r, u], and the sources' output
 * gradients acc_u += z_e g_r. */
static int bwd_hook(void *ctx, circ_run *run, int s, circ_error *e)
{
	circ_edgeprune *ep = ctx;
	const circ_topo_stage *st = &ep->t->stage[s];
	ep_task t = {ep, run, s, st->n_recv, s < ep->t->n_stage ? st->n_in : ep->U, 0};
	size_t nb = n_blocks(ep);
	(void)e;
	for (int i = 0; i < t.nr; i++) {
		const float *z = ep->z + ep->g->recv_first[st->first_recv + i];
		for (int u = 0; u < t.n_in; u++)
			ep->wm[(size_t)i * ep->U + u] = z[u];
	}
	circ_pool_for(circ_run_pool(run), nb, bwd_part, &t);
	if (!ep->dz)
		return 0;
	for (int i = 0; i < t.nr; i++) {
		double *dz = ep->dz + ep->g->recv_first[st->first_recv + i];
		for (int u = 0; u < t.n_in; u++) {
			double sum = 0;
			for (size_t blk = 0; blk < nb; blk++)
				sum +=
				    ep->part[(blk * (size_t)t.nr + (size_t)i) * (size_t)ep->U + u];
			dz[u] = -sum;
		}
	}
	return 0;
}

/* Output-gradient hook, before stage s: each node it produces gets its own. */
static int out_hook(void *ctx, circ_run *run, int s, int nn, const float **ng, circ_error *e)
{
	circ_edgeprune *ep = ctx;
	const circ_topo_stage *st = &ep->mt->stage[s];
	(void)run;
	(void)e;
	CIRC_ASSERT(nn == st->n_node);
	for (int j = 0; j < nn; j++)
		ng[j] = ep->acc + (size_t)(st->first_node + j) * ep->btc;
	return 0;
}

/* Grows the buffers sized by the batch. */
static void ep_buffers(circ_edgeprune *ep)
{
	size_t n = ep->btc, nb = n_blocks(ep);
	if (ep->acc_cap < (size_t)ep->U * n) {
		free(ep->acc);
		free(ep->diff);
		free(ep->rows);
		ep->acc_cap = (size_t)ep->U * n;
		ep->acc = circ_xmalloc_aligned(ep->acc_cap * sizeof(float));
		ep->diff = circ_xmalloc_aligned(ep->acc_cap * sizeof(float));
		ep->rows = circ_xmalloc_aligned((size_t)ep->max_nr * n * sizeof(float));
	}
	if (ep->part_cap < nb) {
		free(ep->part);
		ep->part_cap = nb;
		ep->part = circ_xmalloc(nb * (size_t)ep->max_nr * (size_t)ep->U * sizeof(float));
	}
}

int circ_ep_loss_grad(circ_edgeprune *ep, int k, const float *z, double *loss, double *dz,
		      circ_error *e)
{
	circ_patcher *p = ep->ps[k];
	const circ_batch *b = circ_patcher_batch(p);
	circ_run *run = circ_patcher_run(p);
	circ_read *reads = circ_xmalloc((size_t)b->n_read * sizeof *reads);
	size_t nl = (size_t)b->n_read * (size_t)ep->V;
	double sign = circ_metric_higher_better(ep->metric) ? -1.0 : 1.0, sum = 0;
	const float *logits;
	circ_fwd f;
	circ_bwd bw = {0};
	int rc = -1;
	ep->p = p;
	ep->z = z;
	ep->dz = dz;
	ep->btc = (size_t)b->B * (size_t)b->T * (size_t)ep->C;
	for (int i = 0; i < b->n_read; i++) {
		reads[i].b = b->read_b[i];
		reads[i].t = b->read_t[i];
	}
	circ_fwd_init(&f);
	f.tokens = b->clean;
	f.B = b->B;
	f.T = b->T;
	f.read = CIRC_READ_LIST;
	f.n_read = b->n_read;
	f.reads = reads;
	f.hook = fwd_hook;
	f.hook_ctx = ep;
	ep_buffers(ep);
	ep->made = 0;
	circ_patcher_dirty(p);
	if (circ_forward(run, &f, e) < 0)
		goto out;
	if (ep->dl_cap < nl) {
		free(ep->dlogits);
		ep->dl_cap = nl;
		ep->dlogits = circ_xmalloc(nl * sizeof(float));
	}
	logits = circ_run_logits(run, NULL);
	for (int bb = 0; bb < b->B; bb++)
		sum +=
		    sign * circ_batch_metric(ep->metric, b, bb, logits, circ_patcher_clean_logp(p),
					     ep->V, dz ? ep->dlogits : NULL);
	*loss = sum / b->B;
	if (!isfinite(*loss)) {
		circ_errorf(e, "edge pruning: the loss is not finite");
		goto out;
	}
	if (!dz) {
		rc = 0;
		goto out;
	}
	if (ep->made < ep->U) { /* the backward reads every difference row */
		ep_task t = {ep, run, 0, 0, ep->U, ep->made};
		circ_pool_for(circ_run_pool(run), n_blocks(ep), fwd_part, &t);
		ep->made = ep->U;
	}
	for (size_t i = 0; i < nl; i++)
		ep->dlogits[i] = (float)(sign / b->B * ep->dlogits[i]);
	memset(ep->acc, 0, (size_t)ep->U * ep->btc * sizeof(float));
	memset(dz, 0, (size_t)ep->E * sizeof *dz);
	bw.dlogits = ep->dlogits;
	bw.hook = bwd_hook;
	bw.out_hook = out_hook;
	bw.hook_ctx = ep;
	rc = circ_backward(run, &bw, e);
out:
	free(reads);
	return rc;
}

/* One Adam update of x by gradient g (AdamW: decay wd), moments m1, m2, at
 * step t (from 1). */
static double adam(double x, double g, double *m1, double *m2, int t, double lr, double wd)
{
	const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
	*m1 = b1 * *m1 + (1 - b1) * g;
	*m2 = b2 * *m2 + (1 - b2) * g * g;
	x -= lr * wd * x;
	return x - lr * (*m1 / (1 - pow(b1, t))) / (sqrt(*m2 / (1 - pow(b2, t))) + eps);
}

/* The expected sparsity of the masks from `first` on: 1 - mean P(z != 0). */
static double expected_sparsity(const mask_group *m, int64_t first)
{
	double d = 0;
	for (int64_t i = first; i < m->n; i++)
		d += circ_ep_hc_l0(m->la[i], NULL);
	return 1 - d / (double)(m->n - first);
}

/* The step's masks of m from `first` on (those before stay 1). */
static void group_sample(mask_group *m, int64_t first, circ_rng *rng)
{
	for (int64_t i = 0; i < first; i++) {
		m->z[i] = 1;
		m->dzdla[i] = 0;
	}
	for (int64_t i = first; i < m->n; i++) {
		double u = circ_rng_uniform(rng);
		u = u < 1e-6 ? 1e-6 : u > 1 - 1e-6 ? 1 - 1e-6 : u;
		m->z[i] = (float)circ_ep_hc_sample(m->la[i], u, &m->dzdla[i]);
	}
}

/* One step of m from `first` on, m->g holding d loss / dz: Adam on
 * log_alpha against loss + lambda1 (s - t) + lambda2 (s - t)^2 (s the
 * expected sparsity before the step), ascent of the multipliers. Returns
 * the Lagrangian term. */
static double group_step(mask_group *m, int64_t first, double tgt, int step, const circ_ep_opts *o)
{
	double gap = expected_sparsity(m, first) - tgt,
	       reg = m->lam[0] * gap + m->lam[1] * gap * gap;
	/* d reg / d la_i = (lambda1 + 2 lambda2 gap) d s / d la_i, and
	 * d s / d la_i = -P'(la_i) / n */
	double coef = -(m->lam[0] + 2 * m->lam[1] * gap) / (double)(m->n - first);
	for (int64_t i = first; i < m->n; i++) {
		double dp, g;
		circ_ep_hc_l0(m->la[i], &dp);
		g = m->g[i] * m->dzdla[i] + coef * dp;
		m->la[i] = adam(m->la[i], g, &m->m1[i], &m->m2[i], step, o->lr, o->weight_decay);
	}
	/* the multipliers ascend: descend on -d reg / d lambda */
	m->lam[0] = adam(m->lam[0], -gap, &m->lm1[0], &m->lm2[0], step, o->lr_lambda, 0);
	m->lam[1] = adam(m->lam[1], -gap * gap, &m->lm1[1], &m->lm2[1], step, o->lr_lambda, 0);
	return reg;
}

/* The target t at `step`: final * step / warmup during the warm-up. */
static double target_at(const circ_ep_opts *o, double final, int step)
{
	return final * (o->warmup > 0 && step < o->warmup ? (double)step / o->warmup : 1.0);
}

int circ_ep_train(circ_edgeprune *ep, circ_ep_step_fn fn, void *ctx, circ_error *e)
{
	const circ_ep_opts *o = &ep->o;
	mask_group *me = &ep->edges, *mn = &ep->nodes;
	circ_rng rng;
	circ_rng_seed_stream(&rng, o->seed, 1);
	for (int step = 1; step <= o->steps; step++) {
		circ_ep_step st = {0};
		const float *z = me->z;
		double *g = me->g;
		group_sample(me, 0, &rng);
		if (o->node_masks) {
			/* the run sees z_e z_u; the input node has no mask */
			group_sample(mn, 1, &rng);
			for (int64_t i = 0; i < ep->E; i++)
				ep->zeff[i] = me->z[i] * mn->z[ep->g->edge_up[i]];
			z = ep->zeff;
			g = ep->geff;
		}
		if (circ_ep_loss_grad(ep, (step - 1) % ep->n, z, &st.loss, g, e) < 0) {
			circ_error_prefix(e, "edge pruning: step %d", step);
			return -1;
		}
		if (o->node_masks) {
			memset(mn->g, 0, (size_t)mn->n * sizeof *mn->g);
			for (int64_t i = 0; i < ep->E; i++) {
				int u = ep->g->edge_up[i];
				me->g[i] = ep->geff[i] * mn->z[u];
				mn->g[u] += ep->geff[i] * me->z[i];
			}
			st.node_target = target_at(o, o->node_sparsity, step);
			st.reg += group_step(mn, 1, st.node_target, step, o);
			st.node_sparsity = expected_sparsity(mn, 1);
			st.lambda3 = mn->lam[0];
			st.lambda4 = mn->lam[1];
			for (int u = 1; u < ep->U; u++)
				st.nodes += mn->la[u] > 0;
		}
		st.target = target_at(o, o->sparsity, step);
		st.reg += group_step(me, 0, st.target, step, o);
		st.step = step;
		st.sparsity = expected_sparsity(me, 0);
		st.lambda1 = me->lam[0];
		st.lambda2 = me->lam[1];
		for (int64_t i = 0; i < ep->E; i++)
			st.edges += me->la[i] > 0;
		if (fn && fn(ctx, &st, e) < 0)
			return -1;
	}
	return 0;
}
