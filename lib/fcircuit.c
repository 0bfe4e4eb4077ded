/*
 * fcircuit: sparse feature circuits (see fcircuit.h for the definitions).
 *
 * One run of the model serves everything. Per batch: a corrupt forward
 * (the dictionaries' activations), a clean forward and backward (node
 * gradients at every dictionary's activation: the residual gradient at the
 * stage where the activation is formed, since every later receiver reads
 * it), for ig a forward and backward per dictionary and step with the
 * interpolated activation set as receiver deltas (as lib/dict_splice sets a
 * reconstruction), then for edges one backward per downstream node. That
 * backward starts from no loss at all (dlogits zero) and a seed at the
 * downstream activation: through the out_hook, as the gradient of the
 * attention heads (attn), of the MLP (mlp), or added to the residual
 * gradient after the MLP (resid: model.h calls the out_hook before the
 * stage's backward reads that gradient); the dictionaries in between are
 * held by giving their heads or MLP a zero output gradient. The gradients
 * at the upstream activations are then the residual gradients at their
 * stages.
 *
 * Dimension letters: N = B*T rows, S features, O activation width (C).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fcircuit.h"
#include "kernels.h"
#include "metric.h"
#include "topology.h"

int circ_fc_method_parse(const char *s, circ_fc_method *m)
{
	if (!strcmp(s, "feature-atp"))
		*m = CIRC_FC_ATP;
	else if (!strcmp(s, "feature-ig"))
		*m = CIRC_FC_IG;
	else
		return -1;
	return 0;
}

const char *circ_fc_method_name(circ_fc_method m)
{
	return m == CIRC_FC_IG ? "feature-ig" : "feature-atp";
}

void circ_fc_opts_default(circ_fc_opts *o)
{
	memset(o, 0, sizeof *o);
	o->method = CIRC_FC_ATP;
	o->steps = 10;
	o->edges = 1;
	o->threads = 1;
	o->metric = CIRC_METRIC_LOGIT_DIFF;
}

/* Edge sums into one downstream slot from one upstream slot: per
 * downstream node a row over the upstream nodes, made when first used. */
typedef struct fc_pair {
	int up, down;
	double **row; /* (S_down + 1) rows of (S_up + 1), or NULL */
} fc_pair;

/* Per slot, what one batch holds. */
typedef struct fc_state {
	float *xc, *xp; /* (N, O) clean and corrupt activations */
	float *fc;	/* (N, S) clean features */
	float *df;	/* (N, S) corrupt - clean features */
	float *de;	/* (N, O) corrupt - clean error */
	float *g;	/* (N, O) node gradient at the activation */
	float *gf;	/* (N, S) node gradient of the features */
	double *batch;	/* (S + 1) this batch's effect sums */
} fc_state;

struct circ_fc {
	const circ_model *m;
	const circ_topology *t;
	circ_fc_opts o;
	int n, C, V, L;
	circ_fc_slot *slot; /* (n) */
	fc_state *st;	    /* (n) */
	double **nsum;	    /* (n) of (S + 1) */
	int npair;
	fc_pair *pair;
	int64_t count;
	int P;	      /* positions kept: the examples' length (0: summed, or not yet known) */
	int parallel; /* parallel blocks (attention and MLP read one residual) */
	circ_run *run;
	int max_rows;
	float *dlogits, *clean_logp, *seed, *zero, *tmp; /* scratch */
	size_t n_dlogits;
	/* the current backward's plan */
	int seed_slot;	 /* -1: none (the sink's backward) */
	uint8_t *hold;	 /* (stages) 1: that stage's node output is held */
	uint8_t *tmask;	 /* (T) positions seeded in the edge backward */
	float *ig_delta; /* (N, C) the interpolation's delta */
	int ig_stage;	 /* stage at which ig_delta is set */
	int stop_stage;	 /* the backward stops below this stage (its residual
			  * gradient final; nothing lower is read) */
	int stopped;	 /* the backward was stopped there */
	/* ablation */
	double **mean_f, **mean_e; /* (n) of (P, S), (P, O): sums per position */
	int64_t *mean_count;	   /* (P) examples summed at each position */
	int mean_p;		   /* P: the longest example so far */
	int64_t mean_rows;
	uint8_t *const *abl_keep; /* the forward's keep masks */
	float *acc;		  /* (N, C) deltas set so far in the forward */
};

static void alloc_sums(circ_fc *fc);

static int hook_order(const circ_fc_slot *s)
{
	/* within a stage (parallel blocks form attn_out and mlp_out at one) */
	int k = s->hook.kind == CIRC_HOOK_RESID_POST  ? 3
		: s->hook.kind == CIRC_HOOK_MLP_OUT   ? 2
		: s->hook.kind == CIRC_HOOK_RESID_PRE ? 0
						      : 1;
	return s->stage * 4 + k;
}

static int cmp_slot(const void *a, const void *b)
{
	return hook_order(a) - hook_order(b);
}

static int pair_index(const circ_fc *fc, int up, int down)
{
	for (int p = 0; p < fc->npair; p++)
		if (fc->pair[p].up == up && fc->pair[p].down == down)
			return p;
	return -1;
}

/* The nearest resid slot strictly before slot k of sl (there is always
 * one: the bottom); k == n means the sink. U -> D is an edge iff
 * slot_below(D) <= U < D. */
static int slot_below(const circ_fc_slot *sl, int k)
{
	for (int j = k - 1; j >= 0; j--)
		if (sl[j].resid)
			return j;
	return 0;
}

static int resid_below(const circ_fc *fc, int k)
{
	return slot_below(fc->slot, k);
}

int circ_fc_route_crosses(const circ_fc_slot *sl, int parallel, int up, int dn)
{
	int a = sl[up].hook.kind == CIRC_HOOK_RESID_PRE ? 0 : sl[up].hook.layer + 1;
	int z = sl[dn].hook.layer;
	/* a parallel block's MLP reads the residual before its attention */
	if (parallel && sl[dn].hook.kind == CIRC_HOOK_MLP_OUT)
		z--;
	for (int l = a; l <= z; l++) {
		int held = 0;
		for (int j = up + 1; j < dn && !held; j++)
			held = sl[j].hook.kind == CIRC_HOOK_ATTN_OUT && sl[j].hook.layer == l;
		if (!held)
			return 1;
	}
	return 0;
}

/* blocks.L.hook_resid_pre for L > 0 is the residual blocks.(L-1).hook_resid_post
 * is: the same tensor, so the same place in the graph (SAELens's residual
 * SAEs are at hook_resid_pre of every layer); the dictionary keeps its own
 * hook and name (resid_pre<L>). Layer 0's is the embedding. */
static void resid_pre_as_post(circ_hook *h)
{
	if (h->kind == CIRC_HOOK_RESID_PRE && h->layer > 0) {
		h->kind = CIRC_HOOK_RESID_POST;
		h->layer--;
	}
}

/* Nodes of a node set of S features with P positions kept (0: summed). */
static int64_t set_nodes(int S, int P)
{
	return (int64_t)(S + 1) * (P ? P : 1);
}

/* Name of node i of a node set (NULL: the sink). */
static void node_name(const circ_fc_slot *s, int P, int i, char *out, size_t n)
{
	int t, j, w;
	if (!s) {
		snprintf(out, n, "logits");
		return;
	}
	t = P ? i / (s->S + 1) : 0;
	j = P ? i % (s->S + 1) : i;
	if (!strcmp(s->name, "input"))
		w = snprintf(out, n, "input");
	else if (j == s->S)
		w = snprintf(out, n, "%s.err", s->name);
	else
		w = snprintf(out, n, "%s.f%d", s->name, j);
	if (P && w >= 0 && (size_t)w < n)
		snprintf(out + w, n - (size_t)w, "@%d", t);
}

circ_fc *circ_fc_new(const circ_model *m, const circ_dict_set *set, const circ_fc_opts *o,
		     int max_b, int max_t, circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	const circ_topology *t = circ_model_topology(m);
	circ_run_opts ro;
	int have_embed = 0;
	if (!set || set->n < 1)
		return circ_errorf(e, "no dictionary given"), NULL;
	for (int i = 0; i < set->n; i++) {
		const circ_dict *d = set->dict[i];
		circ_hook h;
		const char *path = d->path ? d->path : "<dictionary>";
		if (circ_dict_check_model(d, m, e) < 0)
			return NULL;
		if (d->cfg.transcoder)
			return circ_errorf(e,
					   "'%s': a transcoder (%s): feature circuits take SAEs "
					   "(transcoder graphs are circ-trace's)",
					   path, circ_dict_arch_name(d)),
			       NULL;
		if (circ_hook_parse(d->cfg.hook_name, &h, e) < 0)
			return NULL;
		if (!(h.kind == CIRC_HOOK_ATTN_OUT || h.kind == CIRC_HOOK_MLP_OUT ||
		      h.kind == CIRC_HOOK_RESID_POST || h.kind == CIRC_HOOK_RESID_PRE))
			return circ_errorf(e,
					   "'%s': key 'hook_name': %s is not a feature-circuit "
					   "point (hook_resid_pre, hook_attn_out, hook_mlp_out, "
					   "hook_resid_post)",
					   path, d->cfg.hook_name),
			       NULL;
		have_embed |= h.kind == CIRC_HOOK_RESID_PRE && h.layer == 0;
	}
	circ_fc *fc = circ_xcalloc(1, sizeof *fc);
	fc->m = m;
	fc->t = t;
	fc->o = *o;
	if (fc->o.steps < 1)
		fc->o.steps = 1;
	fc->C = c->n_embd;
	fc->V = c->vocab_size;
	fc->L = c->n_layer;
	fc->parallel = t->d.block == CIRC_BLOCK_PARALLEL;
	fc->n = set->n + !have_embed;
	fc->slot = circ_xcalloc((size_t)fc->n, sizeof *fc->slot);
	for (int i = 0, k = 0; i < set->n; i++, k++) {
		circ_fc_slot *s = &fc->slot[k];
		s->d = set->dict[i];
		circ_hook_parse(s->d->cfg.hook_name, &s->hook, e);
		resid_pre_as_post(&s->hook);
		circ_dict_name(s->d, s->name, sizeof s->name);
		s->S = s->d->cfg.d_sae;
		s->O = s->d->cfg.d_in;
	}
	if (!have_embed) {
		circ_fc_slot *s = &fc->slot[fc->n - 1];
		snprintf(s->name, sizeof s->name, "input");
		s->hook.kind = CIRC_HOOK_RESID_PRE;
		s->hook.layer = 0;
		s->O = fc->C;
	}
	for (int k = 0; k < fc->n; k++) {
		circ_fc_slot *s = &fc->slot[k];
		s->stage = circ_hook_stage(t, &s->hook);
		s->resid =
		    s->hook.kind == CIRC_HOOK_RESID_PRE || s->hook.kind == CIRC_HOOK_RESID_POST;
	}
	qsort(fc->slot, (size_t)fc->n, sizeof *fc->slot, cmp_slot);
	for (int k = 1; k < fc->n; k++)
		if (hook_order(&fc->slot[k]) == hook_order(&fc->slot[k - 1])) {
			circ_errorf(e, "'%s': a second dictionary at %s (one a hook point)",
				    fc->slot[k].d->path ? fc->slot[k].d->path : "<dictionary>",
				    fc->slot[k].d->cfg.hook_name);
			circ_fc_free(fc);
			return NULL;
		}
	fc->nsum = circ_xcalloc((size_t)fc->n, sizeof *fc->nsum);
	fc->st = circ_xcalloc((size_t)fc->n, sizeof *fc->st);
	/* the pairs: U -> D with no resid slot strictly between; the sink n */
	fc->pair = circ_xcalloc((size_t)(fc->n + 1) * (size_t)fc->n, sizeof *fc->pair);
	for (int dn = 1; dn <= fc->n; dn++)
		for (int up = resid_below(fc, dn); up < dn; up++) {
			fc_pair *p = &fc->pair[fc->npair++];
			p->up = up;
			p->down = dn;
		}
	if (!o->keep_positions)
		alloc_sums(fc);
	circ_run_opts_default(&ro);
	ro.threads = o->threads;
	ro.backward = 1;
	ro.keep_recv_grads = 0;
	fc->run = circ_run_new(m, max_b, max_t, &ro, e);
	if (!fc->run) {
		circ_fc_free(fc);
		return NULL;
	}
	fc->max_rows = max_b * max_t;
	fc->hold = circ_xcalloc((size_t)t->n_stage, 1);
	fc->ig_stage = -1;
	return fc;
}

int64_t circ_fc_slot_nodes(const circ_fc *fc, int k)
{
	return k == fc->n ? 1 : set_nodes(fc->slot[k].S, fc->P);
}

/* The node and edge sums, once the positions are known. */
static void alloc_sums(circ_fc *fc)
{
	for (int k = 0; k < fc->n; k++)
		fc->nsum[k] = circ_xcalloc((size_t)circ_fc_slot_nodes(fc, k), sizeof(double));
	for (int p = 0; p < fc->npair; p++)
		fc->pair[p].row = circ_xcalloc((size_t)circ_fc_slot_nodes(fc, fc->pair[p].down),
					       sizeof *fc->pair[p].row);
}

/* Positions kept: the first batch (or means) sets P, the others must match. */
static int positions_check(circ_fc *fc, const circ_batch *b, circ_error *e)
{
	if (!fc->o.keep_positions)
		return 0;
	if (!fc->P) {
		fc->P = b->T;
		alloc_sums(fc);
		return 0;
	}
	if (b->T != fc->P)
		return circ_errorf(e,
				   "example %lld: %d tokens, the first example %d (positions "
				   "kept: every example must have the same length)",
				   (long long)b->ex[0].id, b->T, fc->P);
	return 0;
}

static void state_free(fc_state *s)
{
	free(s->xc);
	free(s->xp);
	free(s->fc);
	free(s->df);
	free(s->de);
	free(s->g);
	free(s->gf);
	free(s->batch);
	memset(s, 0, sizeof *s);
}

void circ_fc_free(circ_fc *fc)
{
	if (!fc)
		return;
	for (int k = 0; k < fc->n; k++) {
		if (fc->st)
			state_free(&fc->st[k]);
		if (fc->nsum)
			free(fc->nsum[k]);
	}
	for (int p = 0; p < fc->npair; p++) {
		fc_pair *q = &fc->pair[p];
		for (int64_t d = 0; q->row && d < circ_fc_slot_nodes(fc, q->down); d++)
			free(q->row[d]);
		free(q->row);
	}
	free(fc->pair);
	free(fc->st);
	free(fc->nsum);
	free(fc->slot);
	free(fc->dlogits);
	free(fc->clean_logp);
	free(fc->seed);
	free(fc->zero);
	free(fc->tmp);
	free(fc->ig_delta);
	free(fc->hold);
	free(fc->tmask);
	free(fc->acc);
	for (int k = 0; fc->mean_f && k < fc->n; k++) {
		free(fc->mean_f[k]);
		free(fc->mean_e[k]);
	}
	free(fc->mean_f);
	free(fc->mean_e);
	free(fc->mean_count);
	circ_run_free(fc->run);
	free(fc);
}

int64_t circ_fc_count(const circ_fc *fc)
{
	return fc->count;
}
int circ_fc_n_slots(const circ_fc *fc)
{
	return fc->n;
}
const circ_fc_slot *circ_fc_slot_get(const circ_fc *fc, int k)
{
	return &fc->slot[k];
}
const double *circ_fc_node_sums(const circ_fc *fc, int k)
{
	return fc->nsum[k];
}

int circ_fc_parallel(const circ_fc *fc)
{
	return fc->parallel;
}

int circ_fc_positions(const circ_fc *fc)
{
	return fc->P;
}

void circ_fc_node_name(const circ_fc *fc, int k, int i, char *out, size_t n)
{
	node_name(k == fc->n ? NULL : &fc->slot[k], fc->P, i, out, n);
}

int circ_fc_edges(const circ_fc *fc, circ_fc_edge_fn fn, void *ctx)
{
	if (!fc->pair || (fc->npair && !fc->pair[0].row))
		return 0;
	for (int dn = 1; dn <= fc->n; dn++) {
		int nd = (int)circ_fc_slot_nodes(fc, dn);
		for (int d = 0; d < nd; d++)
			for (int up = 0; up < dn; up++) {
				int p = pair_index(fc, up, dn), rc;
				const double *row = p < 0 ? NULL : fc->pair[p].row[d];
				if (!row)
					continue;
				for (int u = 0; u < circ_fc_slot_nodes(fc, up); u++)
					if (row[u] != 0.0 && (rc = fn(ctx, up, u, dn, d, row[u])))
						return rc;
			}
	}
	return 0;
}

/* ---- one batch ---- */

static float *grow(float *p, size_t n)
{
	free(p);
	return circ_xmalloc_aligned(n * sizeof(float) + 64);
}

static double dict_scale(const circ_dict *d)
{
	return d && d->cfg.norm == CIRC_DICT_NORM_EXPECTED_AVERAGE ? d->cfg.scale : 1.0;
}

/* The activation of slot s in the run's last forward: (N, O). */
static int read_act(const circ_fc_slot *s, const circ_run *r, float *out, circ_error *e)
{
	if (s->d)
		return circ_dict_hook_read(s->d, 1, r, out, e);
	memcpy(out, circ_run_resid(r, 0),
	       (size_t)circ_run_b(r) * (size_t)circ_run_t(r) * (size_t)s->O * sizeof(float));
	return 0;
}

static double dict_scale(const circ_dict *d);

/* circ_dict_decode of an SAE (no W_skip here): its sparse loop when few
 * features are active, else one GEMM (random dictionaries, half of whose
 * features fire, would take the sparse loop many times longer). */
static void decode(const circ_dict *d, const float *f, const float *x, int N, float *out)
{
	size_t nf = (size_t)N * (size_t)d->cfg.d_sae, on = 0;
	int O = d->cfg.d_out;
	float inv = (float)(1.0 / dict_scale(d));
	for (size_t i = 0; i < nf; i++)
		on += f[i] != 0;
	if (on * 20 < nf || d->cfg.skip) {
		circ_dict_decode(d, f, x, N, out);
		return;
	}
	circ_gemm(0, 0, N, O, d->cfg.d_sae, inv, f, d->cfg.d_sae, d->W_dec, O, 0.0f, out, O);
	for (int t = 0; t < N; t++)
		for (int q = 0; q < O; q++)
			out[(size_t)t * O + q] += d->b_dec[q] * inv;
}

/* Features f (N, S) and error err (N, O) of x (N, O). */
static void split(const circ_fc_slot *s, const float *x, int N, float *f, float *err)
{
	size_t n = (size_t)N * (size_t)s->O;
	if (!s->d) {
		memcpy(err, x, n * sizeof(float));
		return;
	}
	circ_dict_encode(s->d, x, N, f);
	decode(s->d, f, x, N, err);
	for (size_t i = 0; i < n; i++)
		err[i] = x[i] - err[i];
}

static int forward_from(circ_fc *fc, const circ_batch *b, const int32_t *tok, circ_fwd_hook hook,
			int start, circ_error *e)
{
	circ_fwd f;
	circ_read *reads = circ_xmalloc((size_t)b->n_read * sizeof *reads);
	for (int i = 0; i < b->n_read; i++) {
		reads[i].b = b->read_b[i];
		reads[i].t = b->read_t[i];
	}
	circ_fwd_init(&f);
	f.tokens = tok;
	f.B = b->B;
	f.T = b->T;
	f.read = CIRC_READ_LIST;
	f.n_read = b->n_read;
	f.reads = reads;
	f.hook = hook;
	f.hook_ctx = fc;
	f.start_stage = start;
	int rc = circ_forward(fc->run, &f, e);
	free(reads);
	return rc;
}

static int forward(circ_fc *fc, const circ_batch *b, const int32_t *tok, circ_fwd_hook hook,
		   circ_error *e)
{
	return forward_from(fc, b, tok, hook, 0, e);
}

/* dlogits of the loss (-metric for task metrics) at the last forward. */
static void loss_grad(circ_fc *fc, const circ_batch *b)
{
	const float *logits = circ_run_logits(fc->run, NULL);
	size_t n = (size_t)b->n_read * (size_t)fc->V;
	memset(fc->dlogits, 0, n * sizeof(float));
	for (int bb = 0; bb < b->B; bb++)
		circ_batch_metric(fc->o.metric, b, bb, logits, fc->clean_logp, fc->V, fc->dlogits);
	if (circ_metric_higher_better(fc->o.metric))
		for (size_t i = 0; i < n; i++)
			fc->dlogits[i] = -fc->dlogits[i];
}

static int ig_hook(void *ctx, circ_run *r, int stage, circ_error *e)
{
	circ_fc *fc = ctx;
	if (stage != fc->ig_stage)
		return 0;
	const float *terms[1] = {fc->ig_delta};
	for (int rc = fc->t->stage[stage].first_recv; rc < fc->t->n_recv; rc++)
		if (circ_run_delta_sum(r, rc, NULL, CIRC_SIGN_PLUS, 1, terms) < 0)
			return circ_errorf(e, "feature circuits: receiver %d refused a delta", rc);
	return 0;
}

/* The out_hook of the edge backward: the seed at the downstream slot's
 * activation, zero output gradients at held stages. */
static int out_hook(void *ctx, circ_run *r, int stage, int n, const float **ng, circ_error *e)
{
	circ_fc *fc = ctx;
	if (stage < fc->stop_stage) { /* every gradient wanted is final */
		fc->stopped = 1;
		return circ_errorf(e, "stopped");
	}
	/* hold: bit 1 the stage's heads, bit 2 its MLP (a parallel block has
	 * both: its H heads, then the MLP) */
	for (int j = 0; j < n; j++) {
		int mlp = fc->t->stage[stage].kind == CIRC_STAGE_MLP ||
			  (fc->t->stage[stage].kind == CIRC_STAGE_BLOCK && j == n - 1);
		if (fc->hold[stage] & (mlp ? 2 : 1))
			ng[j] = fc->zero;
	}
	if (fc->seed_slot < 0)
		return 0;
	const circ_fc_slot *s = &fc->slot[fc->seed_slot];
	const circ_topo_stage *ts = &fc->t->stage[stage];
	size_t N = (size_t)circ_run_b(r) * (size_t)circ_run_t(r) * (size_t)fc->C;
	int block = ts->kind == CIRC_STAGE_BLOCK;
	if (ts->layer != s->hook.layer)
		return 0;
	if (s->hook.kind == CIRC_HOOK_ATTN_OUT && (ts->kind == CIRC_STAGE_ATTN || block)) {
		/* attn_out is the sum of the heads' outputs (and a bias); with a
		 * norm of its own, of their shares of the normed sum (model.h) */
		for (int j = 0; j < n - block; j++)
			ng[j] = fc->seed;
	} else if (s->hook.kind == CIRC_HOOK_MLP_OUT && (ts->kind == CIRC_STAGE_MLP || block)) {
		ng[n - 1] = fc->seed;
	} else if (s->hook.kind == CIRC_HOOK_RESID_POST && (ts->kind == CIRC_STAGE_MLP || block)) {
		/* the residual gradient after this MLP: not read yet (model.h) */
		float *g = (float *)circ_run_resid_grad(r, stage + 1);
		for (size_t i = 0; i < N; i++)
			g[i] += fc->seed[i];
	}
	return 0;
}

/* A backward seeded at seed_slot (-1: from dlogits), down to the stage of
 * slot low (-1: every stage): the stages below it are not run. */
static int backward(circ_fc *fc, int seed_slot, int low, circ_error *e)
{
	circ_bwd bw = {0};
	int rc;
	fc->seed_slot = seed_slot;
	fc->stop_stage = low < 0 ? 0 : fc->slot[low].stage;
	fc->stopped = 0;
	bw.dlogits = fc->dlogits;
	bw.out_hook = out_hook;
	bw.hook_ctx = fc;
	rc = circ_backward(fc->run, &bw, e);
	return rc < 0 && fc->stopped ? 0 : rc;
}

/* Adds sum_rows a[row, i] * b[row, i] per column i (n cols) into out,
 * for the rows of one example. */
static void col_dots(double *out, const float *a, const float *b, int rows, int n)
{
	for (int t = 0; t < rows; t++)
		for (int i = 0; i < n; i++)
			out[i] += (double)a[(size_t)t * n + i] * b[(size_t)t * n + i];
}

static double dot_rows(const float *a, const float *b, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (double)a[i] * b[i];
	return s;
}

/* gf (N, S) = g (N, O) W_dec^T / scale. */
static void feature_grad(const circ_fc_slot *s, const float *g, int N, float *gf)
{
	if (!s->d)
		return;
	circ_gemm(0, 1, N, s->S, s->O, (float)(1.0 / dict_scale(s->d)), g, s->O, s->d->W_dec, s->O,
		  0.0f, gf, s->S);
}

/* The edge sums into downstream node d of pair p, made when first used. */
static double *edge_row(circ_fc *fc, int p, int64_t d)
{
	fc_pair *q = &fc->pair[p];
	if (!q->row[d])
		q->row[d] = circ_xcalloc((size_t)circ_fc_slot_nodes(fc, q->up), sizeof(double));
	return q->row[d];
}

/* Edge sums from slot up's deltas with its gradient in the run now, into
 * downstream feature d (the sink: 0) of slot dn. Positions kept: the
 * downstream position is tdown when the backward was seeded there alone,
 * else (tdown < 0) each row's own; rows whose downstream position is not
 * in fc->tmask were not seeded. */
static void add_edges(circ_fc *fc, int up, int dn, int d, int tdown, int N, int T)
{
	const circ_fc_slot *s = &fc->slot[up];
	fc_state *st = &fc->st[up];
	int p = pair_index(fc, up, dn), S = s->S, O = s->O;
	int Sd1 = dn == fc->n ? 0 : fc->slot[dn].S + 1;
	const float *g = circ_run_resid_grad(fc->run, s->stage);
	if (S)
		feature_grad(s, g, N, fc->tmp);
	if (!fc->P) {
		double *row = edge_row(fc, p, d);
		if (S)
			col_dots(row, st->df, fc->tmp, N, S);
		row[S] += dot_rows(st->de, g, (size_t)N * O);
		return;
	}
	for (int r = 0; r < N; r++) {
		int t = r % T, td = tdown >= 0 ? tdown : t;
		double *row;
		if (!fc->tmask[td] || t > td)
			continue;
		row = edge_row(fc, p, (int64_t)td * Sd1 + d) + (size_t)t * (S + 1);
		if (S)
			col_dots(row, st->df + (size_t)r * S, fc->tmp + (size_t)r * S, 1, S);
		row[S] += dot_rows(st->de + (size_t)r * O, g + (size_t)r * O, (size_t)O);
	}
}

/* The seed of downstream node d of slot k: d a_d / d y weighted by its
 * left vector, at every row. */
static void make_seed(circ_fc *fc, int k, int d, int N)
{
	const circ_fc_slot *s = &fc->slot[k];
	const circ_dict *D = s->d;
	fc_state *st = &fc->st[k];
	int S = s->S, I = s->O;
	double sc = dict_scale(D);
	if (d < S) {
		double mult = (D->r_mag ? exp(D->r_mag[d]) : 1.0) * sc;
		for (int t = 0; t < N; t++) {
			float *v = fc->seed + (size_t)t * I;
			double w =
			    st->fc[(size_t)t * S + d] > 0 ? st->gf[(size_t)t * S + d] * mult : 0;
			for (int i = 0; i < I; i++)
				v[i] = (float)(w * D->W_enc[(size_t)i * S + d]);
		}
		return;
	}
	/* error: left - W_enc (mask * mult * (W_dec left)); W_dec left = gf * scale */
	for (int t = 0; t < N; t++)
		for (int j = 0; j < S; j++) {
			size_t q = (size_t)t * S + j;
			double mult = D->r_mag ? exp(D->r_mag[j]) : 1.0;
			fc->tmp[q] = st->fc[q] > 0 ? (float)(st->gf[q] * sc * mult) : 0.0f;
		}
	memcpy(fc->seed, st->g, (size_t)N * I * sizeof(float));
	circ_gemm(0, 1, N, I, S, -1.0f, fc->tmp, S, D->W_enc, S, 1.0f, fc->seed, I);
}

static void set_holds(circ_fc *fc, int lo, int dn)
{
	memset(fc->hold, 0, (size_t)fc->t->n_stage);
	for (int j = lo + 1; j < dn; j++) {
		const circ_fc_slot *s = &fc->slot[j];
		if (s->hook.kind == CIRC_HOOK_ATTN_OUT)
			fc->hold[circ_topo_stage_attn(fc->t, s->hook.layer)] |= 1;
		else if (s->hook.kind == CIRC_HOOK_MLP_OUT)
			fc->hold[circ_topo_stage_mlp(fc->t, s->hook.layer)] |= 2;
	}
}

static int batch_edges(circ_fc *fc, const circ_batch *b, circ_error *e)
{
	int N = b->B * b->T;
	size_t nd = (size_t)b->n_read * (size_t)fc->V, C = (size_t)fc->C;
	if (fc->o.method == CIRC_FC_IG && forward(fc, b, b->clean, NULL, e) < 0)
		return -1;
	for (int dn = 1; dn < fc->n; dn++) {
		const circ_fc_slot *s = &fc->slot[dn];
		int lo = resid_below(fc, dn), cross = 0, T = b->T;
		set_holds(fc, lo, dn);
		/* positions kept and an attention layer on the route: one backward
		 * per downstream position (its upstream positions s <= t);
		 * otherwise every position in one (row t feeds row t only) */
		for (int up = lo; up < dn && fc->P; up++)
			cross |= circ_fc_route_crosses(fc->slot, fc->parallel, up, dn);
		for (int d = 0; d <= s->S; d++)
			for (int tt = 0; tt < (cross ? T : 1); tt++) {
				int any = 0;
				for (int t = 0; t < (fc->P ? T : 1); t++) {
					int on = !cross || t == tt;
					double eff =
					    fc->st[dn].batch[(size_t)t * (s->S + 1) + d] / b->B;
					if (fabs(eff) < fc->o.node_threshold)
						on = 0;
					if (on &&
					    d < s->S) { /* never active: d a_d / d y is zero */
						int act = 0;
						for (int r = 0; r < N && !act; r++)
							act =
							    (!fc->P || r % T == t) &&
							    fc->st[dn].fc[(size_t)r * s->S + d] > 0;
						on = act;
					}
					fc->tmask[t] = (uint8_t)on;
					any |= on;
				}
				if (!any)
					continue;
				make_seed(fc, dn, d, N);
				for (int r = 0; r < N && fc->P; r++)
					if (!fc->tmask[r % T])
						memset(fc->seed + (size_t)r * C, 0,
						       C * sizeof(float));
				memset(fc->dlogits, 0, nd * sizeof(float));
				if (backward(fc, dn, lo, e) < 0)
					return -1;
				for (int up = lo; up < dn; up++)
					add_edges(fc, up, dn, d, cross ? tt : -1, N, T);
			}
	}
	/* the sink: the last slot's node effects; the others by the clean
	 * gradient with the later slots held */
	{
		int dn = fc->n, lo = resid_below(fc, dn), last = fc->n - 1;
		double *row = edge_row(fc, pair_index(fc, last, dn), 0);
		for (int64_t i = 0; i < circ_fc_slot_nodes(fc, last); i++)
			row[i] += fc->st[last].batch[i];
		if (lo < last) {
			set_holds(fc, lo, dn);
			loss_grad(fc, b);
			if (backward(fc, -1, lo, e) < 0)
				return -1;
			memset(fc->tmask, 1, (size_t)b->T);
			for (int up = lo; up < last; up++)
				add_edges(fc, up, dn, 0, -1, N, b->T);
		}
	}
	memset(fc->hold, 0, (size_t)fc->t->n_stage);
	return 0;
}

int circ_fc_batch(circ_fc *fc, const circ_batch *b, circ_error *e)
{
	int N = b->B * b->T, T = b->T;
	size_t C = (size_t)fc->C;
	if (N > fc->max_rows)
		return circ_errorf(e, "feature circuits: a batch of %d rows, made for %d", N,
				   fc->max_rows);
	if (positions_check(fc, b, e) < 0)
		return -1;
	/* scratch, sized for this batch */
	{
		size_t maxs = 1;
		for (int k = 0; k < fc->n; k++)
			if ((size_t)fc->slot[k].S > maxs)
				maxs = (size_t)fc->slot[k].S;
		fc->dlogits = grow(fc->dlogits, (size_t)b->n_read * fc->V);
		fc->clean_logp = grow(fc->clean_logp, (size_t)b->n_read * fc->V);
		fc->seed = grow(fc->seed, (size_t)N * C);
		fc->tmp = grow(fc->tmp, (size_t)N * (maxs > C ? maxs : C));
		free(fc->zero);
		fc->zero = circ_xcalloc((size_t)N * C, sizeof(float));
		fc->ig_delta = grow(fc->ig_delta, (size_t)N * C);
		free(fc->tmask);
		fc->tmask = circ_xcalloc((size_t)T, 1);
	}
	for (int k = 0; k < fc->n; k++) {
		const circ_fc_slot *s = &fc->slot[k];
		fc_state *st = &fc->st[k];
		size_t nf = (size_t)N * (s->S ? s->S : 1), no = (size_t)N * s->O;
		state_free(st);
		st->xc = circ_xmalloc_aligned(no * sizeof(float));
		st->xp = circ_xmalloc_aligned(no * sizeof(float));
		st->fc = circ_xcalloc(nf, sizeof(float));
		st->df = circ_xcalloc(nf, sizeof(float));
		st->de = circ_xmalloc_aligned(no * sizeof(float));
		st->g = circ_xcalloc(no, sizeof(float));
		st->gf = circ_xcalloc(nf, sizeof(float));
		st->batch = circ_xcalloc((size_t)circ_fc_slot_nodes(fc, k), sizeof(double));
	}
	/* corrupt, then clean */
	if (forward(fc, b, b->corrupt, NULL, e) < 0)
		return -1;
	for (int k = 0; k < fc->n; k++)
		if (read_act(&fc->slot[k], fc->run, fc->st[k].xp, e) < 0)
			return -1;
	if (forward(fc, b, b->clean, NULL, e) < 0)
		return -1;
	for (int k = 0; k < fc->n; k++) {
		const circ_fc_slot *s = &fc->slot[k];
		fc_state *st = &fc->st[k];
		size_t nf = (size_t)N * s->S, no = (size_t)N * s->O;
		if (read_act(s, fc->run, st->xc, e) < 0)
			return -1;
		split(s, st->xp, N, st->df, st->de);
		split(s, st->xc, N, st->fc, fc->tmp);
		for (size_t i = 0; i < nf; i++)
			st->df[i] -= st->fc[i];
		for (size_t i = 0; i < no; i++)
			st->de[i] -= fc->tmp[i];
	}
	circ_metric_log_softmax(fc->clean_logp, circ_run_logits(fc->run, NULL), b->n_read, fc->V);
	memset(fc->hold, 0, (size_t)fc->t->n_stage);
	/* the clean gradients: atp's, and ig's step 0 (alpha 0 is the clean run) */
	loss_grad(fc, b);
	if (backward(fc, -1, -1, e) < 0)
		return -1;
	for (int k = 0; k < fc->n; k++)
		memcpy(fc->st[k].g, circ_run_resid_grad(fc->run, fc->slot[k].stage),
		       (size_t)N * C * sizeof(float));
	if (fc->o.method == CIRC_FC_IG) {
		int steps = fc->o.steps;
		/* last slot first: each forward resumes at its slot's stage from
		 * the clean state below it, which no later slot's forward changed;
		 * its backward stops there */
		for (int k = fc->n - 1; k >= 0; k--) {
			fc_state *st = &fc->st[k];
			fc->ig_stage = fc->slot[k].stage;
			for (int step = 1; step < steps; step++) {
				float a = (float)step / (float)steps;
				const float *g;
				for (size_t i = 0; i < (size_t)N * C; i++)
					fc->ig_delta[i] = a * (st->xp[i] - st->xc[i]);
				if (forward_from(fc, b, b->clean, ig_hook, fc->slot[k].stage, e) <
				    0)
					return -1;
				loss_grad(fc, b);
				if (backward(fc, -1, k, e) < 0)
					return -1;
				g = circ_run_resid_grad(fc->run, fc->slot[k].stage);
				for (size_t i = 0; i < (size_t)N * C; i++)
					st->g[i] += g[i];
			}
			for (size_t i = 0; i < (size_t)N * C; i++)
				st->g[i] /= (float)steps;
		}
		fc->ig_stage = -1;
	}
	/* node effects, per example summed over its positions */
	for (int k = 0; k < fc->n; k++) {
		const circ_fc_slot *s = &fc->slot[k];
		fc_state *st = &fc->st[k];
		feature_grad(s, st->g, N, st->gf);
		for (int bb = 0; bb < b->B; bb++) {
			size_t r0 = (size_t)bb * T;
			if (!fc->P) {
				if (s->S)
					col_dots(st->batch, st->df + r0 * s->S, st->gf + r0 * s->S,
						 T, s->S);
				st->batch[s->S] += dot_rows(st->de + r0 * s->O, st->g + r0 * s->O,
							    (size_t)T * s->O);
				continue;
			}
			for (size_t r = r0; r < r0 + (size_t)T; r++) {
				double *nb = st->batch + (r - r0) * (size_t)(s->S + 1);
				if (s->S)
					col_dots(nb, st->df + r * s->S, st->gf + r * s->S, 1, s->S);
				nb[s->S] +=
				    dot_rows(st->de + r * s->O, st->g + r * s->O, (size_t)s->O);
			}
		}
		for (int64_t i = 0; i < circ_fc_slot_nodes(fc, k); i++)
			fc->nsum[k][i] += st->batch[i];
	}
	if (fc->o.edges && batch_edges(fc, b, e) < 0)
		return -1;
	fc->count += b->B;
	return 0;
}

void circ_fc_dict_digest(const circ_dict *d, char out[72])
{
	circ_sha256 h;
	char buf[512];
	int n = snprintf(buf, sizeof buf, "%s\n%s\n%d %d %d %d\n", circ_dict_arch_name(d),
			 d->cfg.hook_name, d->cfg.d_in, d->cfg.d_sae, d->cfg.d_out, d->cfg.k);
	circ_sha256_init(&h);
	circ_sha256_update(&h, buf, (size_t)n);
	circ_sha256_update(&h, d->mem, d->n_params * sizeof(float));
	circ_sha256_final_hex(&h, out);
}

/* ---- ablation ---- */

static int batch_rows_check(const circ_fc *fc, const circ_batch *b, circ_error *e)
{
	if (b->B * b->T > fc->max_rows)
		return circ_errorf(e, "feature circuits: a batch of %d rows, made for %d",
				   b->B * b->T, fc->max_rows);
	return 0;
}

int circ_fc_means_add(circ_fc *fc, const circ_batch *b, circ_error *e)
{
	int N = b->B * b->T;
	if (batch_rows_check(fc, b, e) < 0 || positions_check(fc, b, e) < 0 ||
	    forward(fc, b, b->clean, NULL, e) < 0)
		return -1;
	if (!fc->mean_f) {
		fc->mean_f = circ_xcalloc((size_t)fc->n, sizeof *fc->mean_f);
		fc->mean_e = circ_xcalloc((size_t)fc->n, sizeof *fc->mean_e);
	}
	if (b->T > fc->mean_p) { /* grown, the new positions zero */
		size_t P0 = (size_t)fc->mean_p, P = (size_t)b->T;
		fc->mean_count = circ_xrealloc(fc->mean_count, P * sizeof *fc->mean_count);
		memset(fc->mean_count + P0, 0, (P - P0) * sizeof *fc->mean_count);
		for (int k = 0; k < fc->n; k++) {
			size_t S = (size_t)fc->slot[k].S, O = (size_t)fc->slot[k].O;
			fc->mean_f[k] = circ_xrealloc(fc->mean_f[k], (P * S + 1) * sizeof(double));
			fc->mean_e[k] = circ_xrealloc(fc->mean_e[k], P * O * sizeof(double));
			memset(fc->mean_f[k] + P0 * S, 0, ((P - P0) * S + 1) * sizeof(double));
			memset(fc->mean_e[k] + P0 * O, 0, (P - P0) * O * sizeof(double));
		}
		fc->mean_p = b->T;
	}
	for (int k = 0; k < fc->n; k++) {
		const circ_fc_slot *s = &fc->slot[k];
		float *x = circ_xmalloc_aligned((size_t)N * s->O * sizeof(float));
		float *f = circ_xmalloc_aligned((size_t)N * (s->S ? s->S : 1) * sizeof(float));
		float *er = circ_xmalloc_aligned((size_t)N * s->O * sizeof(float));
		if (read_act(s, fc->run, x, e) < 0) {
			free(x);
			free(f);
			free(er);
			return -1;
		}
		split(s, x, N, f, er);
		for (int row = 0; row < N; row++) {
			size_t t = (size_t)(row % b->T);
			for (int i = 0; i < s->S; i++)
				fc->mean_f[k][t * s->S + i] += f[(size_t)row * s->S + i];
			for (int i = 0; i < s->O; i++)
				fc->mean_e[k][t * s->O + i] += er[(size_t)row * s->O + i];
		}
		free(x);
		free(f);
		free(er);
	}
	for (int t = 0; t < b->T; t++)
		fc->mean_count[t] += b->B;
	fc->mean_rows += N;
	return 0;
}

/* The forward hook of an ablated run: at each slot's stage (several slots
 * may share one: mlp before resid), the activation as the earlier
 * ablations left it, split, the nodes not kept set to their means, and
 * the difference passed to every later receiver. */
static int ablate_hook(void *ctx, circ_run *r, int stage, circ_error *e)
{
	circ_fc *fc = ctx;
	int N = circ_run_b(r) * circ_run_t(r), C = fc->C;
	for (int k = 0; k < fc->n; k++) {
		const circ_fc_slot *s = &fc->slot[k];
		const uint8_t *keep = fc->abl_keep[k];
		float *x, *f, *er, *d;
		if (s->stage != stage)
			continue;
		x = circ_xmalloc_aligned((size_t)N * C * sizeof(float));
		f = circ_xmalloc_aligned((size_t)N * (s->S ? s->S : 1) * sizeof(float));
		er = circ_xmalloc_aligned((size_t)N * C * sizeof(float));
		d = circ_xmalloc_aligned((size_t)N * C * sizeof(float));
		if (read_act(s, r, x, e) < 0) {
			free(x);
			free(f);
			free(er);
			free(d);
			return -1;
		}
		/* the residual holds no deltas: add those set before (attn_out is a
		 * difference of residuals and mlp_out a node output: both as they are) */
		if (s->resid)
			for (size_t i = 0; i < (size_t)N * C; i++)
				x[i] += fc->acc[i];
		split(s, x, N, f, er);
		for (int row = 0; row < N; row++) {
			int t = row % circ_run_t(r);
			double inv = 1.0 / (double)fc->mean_count[t];
			const uint8_t *kt = keep + (fc->P ? (size_t)t * (s->S + 1) : 0);
			for (int i = 0; i < s->S; i++)
				if (!kt[i])
					f[(size_t)row * s->S + i] =
					    (float)(fc->mean_f[k][(size_t)t * s->S + i] * inv);
			if (!kt[s->S])
				for (int i = 0; i < C; i++)
					er[(size_t)row * C + i] =
					    (float)(fc->mean_e[k][(size_t)t * C + i] * inv);
		}
		/* x' = decode(f') + e'; the delta x' - x */
		if (s->d)
			decode(s->d, f, x, N, d);
		else
			memset(d, 0, (size_t)N * C * sizeof(float));
		for (size_t i = 0; i < (size_t)N * C; i++) {
			d[i] += er[i] - x[i];
			fc->acc[i] += d[i];
		}
		for (int rc = fc->t->stage[stage].first_recv; rc < fc->t->n_recv; rc++) {
			float *dl = circ_run_delta(r, rc);
			for (size_t i = 0; i < (size_t)N * C; i++)
				dl[i] += d[i];
		}
		free(x);
		free(f);
		free(er);
		free(d);
	}
	return 0;
}

int circ_fc_ablate(circ_fc *fc, const circ_batch *b, uint8_t *const *keep, double *metric_sum,
		   circ_error *e)
{
	const float *logits;
	double sum = 0;
	if (batch_rows_check(fc, b, e) < 0 || positions_check(fc, b, e) < 0)
		return -1;
	if (keep && !fc->mean_rows)
		return circ_errorf(e, "feature circuits: ablation without means");
	if (keep && b->T > fc->mean_p)
		return circ_errorf(e, "feature circuits: no means at positions past %d",
				   fc->mean_p);
	fc->abl_keep = keep;
	free(fc->acc);
	fc->acc = circ_xcalloc((size_t)b->B * b->T * fc->C, sizeof(float));
	if (forward(fc, b, b->clean, keep ? ablate_hook : NULL, e) < 0)
		return -1;
	logits = circ_run_logits(fc->run, NULL);
	if (fc->o.metric == CIRC_METRIC_KL && !keep) {
		fc->clean_logp = grow(fc->clean_logp, (size_t)b->n_read * fc->V);
		circ_metric_log_softmax(fc->clean_logp, logits, b->n_read, fc->V);
	}
	for (int bb = 0; bb < b->B; bb++)
		sum += circ_batch_metric(fc->o.metric, b, bb, logits, fc->clean_logp, fc->V, NULL);
	*metric_sum = sum;
	return 0;
}

/* ---- feature graphs read back ---- */

int circ_fgraph_is_feature(const msgpack_object *hdr)
{
	const msgpack_object *g = hdr ? circ_rec_get(hdr, "graph") : NULL;
	const msgpack_object *t =
	    g && g->type == MSGPACK_OBJECT_MAP ? circ_rec_get(g, "type") : NULL;
	return t && circ_obj_str_eq(t, "feature");
}

void circ_fgraph_free(circ_fgraph *g)
{
	if (!g)
		return;
	free(g->slot);
	free(g);
}

/* "resid3" / "attn0" / "mlp2" / "resid_pre0" into a slot's hook; -1 if not one. */
static int parse_dict_name(const char *s, size_t n, circ_fc_slot *sl)
{
	static const struct {
		const char *p;
		circ_hook_kind k;
	} kinds[] = {{"resid_pre", CIRC_HOOK_RESID_PRE},
		     {"attn", CIRC_HOOK_ATTN_OUT},
		     {"mlp", CIRC_HOOK_MLP_OUT},
		     {"resid", CIRC_HOOK_RESID_POST}};
	for (size_t j = 0; j < sizeof kinds / sizeof kinds[0]; j++) {
		size_t lp = strlen(kinds[j].p);
		long layer = 0;
		size_t i = lp;
		if (n <= lp || strncmp(s, kinds[j].p, lp) || (s[i] == '0' && n > i + 1))
			continue;
		for (; i < n && s[i] >= '0' && s[i] <= '9' && layer < 100000; i++)
			layer = layer * 10 + (s[i] - '0');
		if (i != n)
			continue;
		sl->hook.kind = kinds[j].k;
		sl->hook.layer = (int)layer;
		resid_pre_as_post(&sl->hook);
		sl->resid = kinds[j].k == CIRC_HOOK_RESID_PRE || kinds[j].k == CIRC_HOOK_RESID_POST;
		/* forward order: resid_pre0 first, then per layer attn, mlp, resid
		 * (resid_pre<l> is resid<l-1>) */
		sl->stage = sl->hook.kind == CIRC_HOOK_RESID_PRE    ? -1
			    : sl->hook.kind == CIRC_HOOK_RESID_POST ? sl->hook.layer * 4 + 3
								    : (int)layer * 4 + (int)j;
		snprintf(sl->name, sizeof sl->name, "%.*s", (int)n, s);
		return 0;
	}
	return -1;
}

static int cmp_fslot(const void *a, const void *b)
{
	return ((const circ_fc_slot *)a)->stage - ((const circ_fc_slot *)b)->stage;
}

circ_fgraph *circ_fgraph_from_header(const msgpack_object *hdr, circ_error *e)
{
	const msgpack_object *g = circ_rec_get(hdr, "graph"), *ds, *in, *pos;
	circ_fgraph *fg;
	int input, P = 0;
	if (!circ_fgraph_is_feature(hdr))
		return circ_errorf(e, "header: field 'graph': not a feature graph"), NULL;
	ds = circ_rec_get(g, "dictionaries");
	in = circ_rec_get(g, "input");
	if (!ds || ds->type != MSGPACK_OBJECT_ARRAY || ds->via.array.size < 1 ||
	    ds->via.array.size > 4096)
		return circ_errorf(e, "header: field 'graph': 'dictionaries' must be a non-empty "
				      "array"),
		       NULL;
	input = !in || circ_obj_str_eq(in, "node");
	pos = circ_rec_get(g, "positions");
	if (pos && circ_obj_str_eq(pos, "kept")) {
		int64_t v;
		if (circ_rec_i64(g, "n_positions", &v, e) < 0 || v < 1 || v > (1 << 20))
			return circ_errorf(e, "header: field 'graph': positions kept needs "
					      "'n_positions' (1 or more)"),
			       NULL;
		P = (int)v;
	} else if (pos && !circ_obj_str_eq(pos, "summed"))
		return circ_errorf(e, "header: field 'graph': 'positions' must be \"summed\" or "
				      "\"kept\""),
		       NULL;
	fg = circ_xcalloc(1, sizeof *fg);
	fg->P = P;
	fg->parallel =
	    circ_rec_get(g, "blocks") && circ_obj_str_eq(circ_rec_get(g, "blocks"), "parallel");
	fg->n = (int)ds->via.array.size + input;
	fg->slot = circ_xcalloc((size_t)fg->n, sizeof *fg->slot);
	for (int i = 0; i < (int)ds->via.array.size; i++) {
		const msgpack_object *d = &ds->via.array.ptr[i];
		const char *name;
		size_t nl;
		int64_t S;
		circ_fc_slot *sl = &fg->slot[i];
		if (d->type != MSGPACK_OBJECT_MAP || circ_rec_str(d, "name", &name, &nl, e) < 0 ||
		    circ_rec_i64(d, "d_sae", &S, e) < 0 || S < 1 || S > (1 << 26) ||
		    parse_dict_name(name, nl, sl) < 0) {
			circ_errorf(e,
				    "header: field 'graph': dictionary %d: needs a name "
				    "(resid_pre<l>, attn<l>, mlp<l>, resid<l>) and d_sae",
				    i);
			circ_fgraph_free(fg);
			return NULL;
		}
		sl->S = (int)S;
	}
	if (input) {
		circ_fc_slot *sl = &fg->slot[fg->n - 1];
		snprintf(sl->name, sizeof sl->name, "input");
		sl->hook.kind = CIRC_HOOK_RESID_PRE;
		sl->resid = 1;
		sl->stage = -2;
	}
	qsort(fg->slot, (size_t)fg->n, sizeof *fg->slot, cmp_fslot);
	for (int k = 0; k < fg->n; k++) {
		if (k && fg->slot[k].stage == fg->slot[k - 1].stage) {
			circ_errorf(e, "header: field 'graph': dictionary '%s' twice",
				    fg->slot[k].name);
			circ_fgraph_free(fg);
			return NULL;
		}
		fg->n_nodes += circ_fgraph_slot_nodes(fg, k);
	}
	/* positions kept: P pairs of positions on a local route, P (P + 1) / 2
	 * through attention, P into the sink */
	for (int dn = 1; dn <= fg->n; dn++) {
		int64_t nd = dn == fg->n ? 1 : fg->slot[dn].S + 1;
		for (int up = slot_below(fg->slot, dn); up < dn; up++) {
			int64_t np =
			    !P ? 1
			    : dn == fg->n || !circ_fc_route_crosses(fg->slot, fg->parallel, up, dn)
				? P
				: (int64_t)P * (P + 1) / 2;
			fg->n_edges += np * nd * (fg->slot[up].S + 1);
		}
	}
	return fg;
}

int64_t circ_fgraph_slot_nodes(const circ_fgraph *g, int k)
{
	return k == g->n ? 1 : set_nodes(g->slot[k].S, g->P);
}

void circ_fgraph_node_name(const circ_fgraph *g, int k, int i, char *out, size_t n)
{
	node_name(k == g->n ? NULL : &g->slot[k], g->P, i, out, n);
}

static int fgraph_node_at(const circ_fgraph *g, const char *name, size_t n, int *k, int *i,
			  circ_error *e);

int circ_fgraph_node(const circ_fgraph *g, const char *name, size_t n, int *k, int *i,
		     circ_error *e)
{
	size_t at = n;
	long t = 0;
	while (at > 0 && name[at - 1] != '@')
		at--;
	if (!at) { /* no "@" */
		if (g->P && !(n == 6 && !strncmp(name, "logits", 6)))
			return circ_errorf(e,
					   "node '%.*s': positions are kept in this graph: "
					   "'<node>@<t>'",
					   (int)n, name);
		return fgraph_node_at(g, name, n, k, i, e);
	}
	if (!g->P)
		return circ_errorf(e, "node '%.*s': positions are summed in this graph (no '@<t>')",
				   (int)n, name);
	if (at == n || (name[at] == '0' && at + 1 < n))
		return circ_errorf(e, "node '%.*s': '@' takes a position", (int)n, name);
	for (size_t p = at; p < n; p++) {
		if (name[p] < '0' || name[p] > '9' || t > g->P)
			return circ_errorf(e, "node '%.*s': '@' takes a position", (int)n, name);
		t = t * 10 + (name[p] - '0');
	}
	if (t >= g->P)
		return circ_errorf(e, "node '%.*s': position %ld of %d", (int)n, name, t, g->P);
	if (fgraph_node_at(g, name, at - 1, k, i, e) < 0)
		return -1;
	if (*k == g->n)
		return circ_errorf(e, "node '%.*s': logits has no position", (int)n, name);
	*i += (int)t * (g->slot[*k].S + 1);
	return 0;
}

/* A node name without "@<t>". */
static int fgraph_node_at(const circ_fgraph *g, const char *name, size_t n, int *k, int *i,
			  circ_error *e)
{
	size_t dot = 0;
	if (n == 6 && !strncmp(name, "logits", 6)) {
		*k = g->n;
		*i = 0;
		return 0;
	}
	while (dot < n && name[dot] != '.')
		dot++;
	for (int j = 0; j < g->n; j++) {
		const circ_fc_slot *s = &g->slot[j];
		if (strlen(s->name) != dot || strncmp(s->name, name, dot))
			continue;
		if (!strcmp(s->name, "input")) {
			if (dot != n)
				break;
			*k = j;
			*i = 0;
			return 0;
		}
		if (n - dot == 4 && !strncmp(name + dot, ".err", 4)) {
			*k = j;
			*i = s->S;
			return 0;
		}
		if (n - dot >= 3 && !strncmp(name + dot, ".f", 2)) {
			long v = 0;
			size_t p = dot + 2;
			if (name[p] == '0' && p + 1 < n)
				break;
			for (; p < n && name[p] >= '0' && name[p] <= '9' && v <= s->S; p++)
				v = v * 10 + (name[p] - '0');
			if (p != n)
				break;
			if (v >= s->S)
				return circ_errorf(e, "node '%.*s': feature %ld of %d", (int)n,
						   name, v, s->S);
			*k = j;
			*i = (int)v;
			return 0;
		}
		break;
	}
	return circ_errorf(e,
			   "node '%.*s': not a node of this feature graph (<dict>.f<i>, "
			   "<dict>.err, input, logits, with the graph's dictionaries)",
			   (int)n, name);
}

int circ_fgraph_edge(const circ_fgraph *g, const char *name, size_t n, int *uk, int *ui, int *dk,
		     int *di, circ_error *e)
{
	size_t a = 0;
	while (a + 1 < n && !(name[a] == '-' && name[a + 1] == '>'))
		a++;
	if (a + 1 >= n)
		return circ_errorf(e, "edge '%.*s': no '->'", (int)n, name);
	if (circ_fgraph_node(g, name, a, uk, ui, e) < 0 ||
	    circ_fgraph_node(g, name + a + 2, n - a - 2, dk, di, e) < 0) {
		circ_error_prefix(e, "edge '%.*s'", (int)n, name);
		return -1;
	}
	if (!(*uk < *dk && *uk >= slot_below(g->slot, *dk)))
		return circ_errorf(e,
				   "edge '%.*s': not an edge of the feature graph (an upstream "
				   "dictionary feeds the next ones up to the next resid "
				   "dictionary)",
				   (int)n, name);
	if (g->P && *dk < g->n) {
		int s = *ui / (g->slot[*uk].S + 1), t = *di / (g->slot[*dk].S + 1);
		if (s > t)
			return circ_errorf(e,
					   "edge '%.*s': not an edge of the feature graph (a "
					   "position feeds itself and, through attention, later "
					   "ones)",
					   (int)n, name);
		if (s < t && !circ_fc_route_crosses(g->slot, g->parallel, *uk, *dk))
			return circ_errorf(e,
					   "edge '%.*s': not an edge of the feature graph (no "
					   "attention layer on this route: one position to "
					   "itself)",
					   (int)n, name);
	}
	return 0;
}
