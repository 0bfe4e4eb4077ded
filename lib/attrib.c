/*
 * attrib: EAP, EAP-IG (inputs and activations) and exact edge scores.
 *
 * The gradient methods reduce to one product per stage: for the receivers
 * of a stage (a layer's 3H q/k/v inputs, its MLP input, or logits) and each
 * example b, S = D_b G_b^T, where D_b (n_in, T*C) holds (ref - clean) of
 * the upstream nodes feeding the stage and G_b (n_recv, T*C) the receivers'
 * gradients. One sgemm per stage and example replaces E dot products, and
 * the triangular structure (a stage reads only earlier nodes) halves the
 * work of a dense U x R product.
 *
 * Memory follows the data: the per-batch buffers are sized by the batch
 * being scored (and grown if a larger one comes), never by the patcher's
 * max_b x max_t, which for a GPT-2 context of 1024 tokens would be tens of
 * gigabytes.
 */
#include "attrib.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const attr_names[CIRC_ATTR_COUNT] = {"eap", "eap-ig", "eap-ig-activations",
							"exact"};

const char *circ_attr_name(circ_attr_method m)
{
	return (unsigned)m < CIRC_ATTR_COUNT ? attr_names[m] : "?";
}

int circ_attr_parse(const char *s, circ_attr_method *m)
{
	for (int i = 0; i < CIRC_ATTR_COUNT; i++)
		if (!strcmp(s, attr_names[i])) {
			*m = (circ_attr_method)i;
			return 0;
		}
	return -1;
}

int circ_attr_needs_backward(circ_attr_method m)
{
	return m != CIRC_ATTR_EXACT;
}

struct circ_attrib {
	circ_patcher *p;
	circ_attr_method method;
	int steps;
	double *sum; /* (E) */
	int64_t count;
	const circ_topology *mt; /* the model's (edge level) */
	int U, R, C, V;
	int max_recv;			  /* most model receivers of one stage (Rs) */
	float *diff;			  /* (B, U, T*C) ref - clean */
	float *gacc;			  /* (R, B, T, C) summed gradients (IG) */
	float *S;			  /* (U, Rs) */
	float *gcopy;			  /* (Rs, T*C) gradients gathered when not evenly strided */
	float *dlogits;			  /* (N, V) */
	float *x;			  /* (B, T, C) interpolated input / activation delta */
	size_t cap_btc, cap_tc, cap_rows; /* B*T*C, T*C and N the buffers hold */
	/* eap-ig-activations hook state */
	int unit_stage;
	const float *unit_delta; /* (B, T, C) */
};

/* Most receivers of one stage of t. */
static int stage_max_recv(const circ_topology *t)
{
	int n = 0;
	for (int s = 0; s < t->n_stage; s++)
		if (t->stage[s].n_recv > n)
			n = t->stage[s].n_recv;
	return n;
}

circ_attrib *circ_attrib_new(circ_patcher *p, circ_attr_method method, int steps)
{
	circ_attrib *a = circ_xcalloc(1, sizeof *a);
	const circ_model *m = circ_patcher_model(p);
	const circ_config *c = circ_model_config(m);
	a->p = p;
	a->method = method;
	a->steps = steps < 1 ? 1 : steps;
	a->mt = circ_model_topology(m);
	a->max_recv = stage_max_recv(a->mt);
	a->C = c->n_embd;
	a->V = c->vocab_size;
	a->U = circ_model_n_up(m);
	a->R = circ_model_n_recv(m);
	a->sum = circ_xcalloc((size_t)circ_patcher_graph(p)->n_edges, sizeof(double));
	if (method != CIRC_ATTR_EXACT)
		a->S = circ_xmalloc((size_t)a->U * (size_t)a->max_recv * sizeof(float));
	return a;
}

/* Sizes the per-batch buffers for the batch loaded in the patcher: only
 * dlogits when `all` is 0 (a backward pass alone). */
static void fit_batch(circ_attrib *a, int all)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t tc = (size_t)b->T * (size_t)a->C, btc = (size_t)b->B * tc;
	if (a->method == CIRC_ATTR_EXACT)
		return;
	if ((size_t)b->n_read > a->cap_rows) {
		free(a->dlogits);
		a->dlogits = circ_xmalloc((size_t)b->n_read * (size_t)a->V * sizeof(float));
		a->cap_rows = (size_t)b->n_read;
	}
	if (!all)
		return;
	if (btc > a->cap_btc) {
		free(a->diff);
		free(a->x);
		free(a->gacc);
		a->diff = circ_xalloc_aligned((size_t)a->U * btc * sizeof(float));
		a->x = circ_xalloc_aligned(btc * sizeof(float));
		a->gacc = a->method == CIRC_ATTR_EAP
			      ? NULL
			      : circ_xalloc_aligned((size_t)a->R * btc * sizeof(float));
		a->cap_btc = btc;
	}
	if (tc > a->cap_tc) {
		free(a->gcopy);
		a->gcopy = circ_xalloc_aligned((size_t)a->max_recv * tc * sizeof(float));
		a->cap_tc = tc;
	}
}

void circ_attrib_free(circ_attrib *a)
{
	if (!a)
		return;
	free(a->sum);
	free(a->diff);
	free(a->gacc);
	free(a->S);
	free(a->gcopy);
	free(a->dlogits);
	free(a->x);
	free(a);
}

const double *circ_attrib_sums(const circ_attrib *a)
{
	return a->sum;
}

int64_t circ_attrib_count(const circ_attrib *a)
{
	return a->count;
}

void circ_attrib_reset(circ_attrib *a)
{
	memset(a->sum, 0, (size_t)circ_patcher_graph(a->p)->n_edges * sizeof *a->sum);
	a->count = 0;
}

/* Gradient of model receiver mr for the current batch: from the run, or the
 * IG accumulator. */
static const float *grad_of(const circ_attrib *a, int mr, size_t btc)
{
	if (a->gacc)
		return a->gacc + (size_t)mr * btc;
	return circ_run_recv_grad(circ_patcher_run(a->p), mr);
}

/* The shared core: sum[edge(u->r)] += scale * diff_u . grad_r for u in
 * [u_lo, u_hi), over B examples of T tokens. diff is (B, U, T*C); grads[mr]
 * is model receiver mr's gradient (B, T, C), mt the model's topology.
 * gcopy and S are scratch: (Rs, T*C) and (U, Rs), Rs the most receivers of
 * a stage. Each graph receiver gets the sum of its model receivers' scores
 * (a node-level head sums its q, k and v), added up in double in the
 * model's order. */
static void accumulate_core(double *sum, const circ_graph *g, const circ_topology *mt, int U, int C,
			    int B, int T, const float *diff, const float *const *grads,
			    double scale, int u_lo, int u_hi, float *gcopy, float *S)
{
	size_t tc = (size_t)T * (size_t)C, btc = (size_t)B * tc;
	int *gr;
	CIRC_ASSERT(g->topo->dense); /* edge(u -> r) = recv_first[r] + u */
	gr = circ_xmalloc((size_t)mt->n_recv * sizeof *gr);
	for (int mr = 0; mr < mt->n_recv; mr++) {
		gr[mr] = circ_topo_map_recv(mt, mr, g->topo);
		CIRC_ASSERT(gr[mr] >= 0);
	}
	for (int s = 0; s < mt->n_stage; s++) {
		const circ_topo_stage *st = &mt->stage[s];
		int mr0 = st->first_recv, nr = st->n_recv, n_in = st->n_in, lo, hi;
		const float *g0;
		size_t ldb;
		int strided = 1;
		lo = u_lo;
		hi = u_hi < n_in ? u_hi : n_in;
		if (lo >= hi || nr == 0)
			continue;
		g0 = grads[mr0];
		for (int j = 1; j < nr; j++)
			if (grads[mr0 + j] != g0 + (size_t)j * btc)
				strided = 0;
		ldb = strided ? btc : tc;
		for (int bb = 0; bb < B; bb++) {
			const float *A = diff + ((size_t)bb * U + (size_t)lo) * tc;
			const float *Bm;
			if (strided) {
				Bm = g0 + (size_t)bb * tc;
			} else {
				for (int j = 0; j < nr; j++)
					memcpy(gcopy + (size_t)j * tc,
					       grads[mr0 + j] + (size_t)bb * tc,
					       tc * sizeof(float));
				Bm = gcopy;
			}
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, hi - lo, nr, (int)tc,
				    1.0f, A, (int)tc, Bm, (int)ldb, 0.0f, S, nr);
			for (int u = lo; u < hi; u++) {
				const float *Su = S + (size_t)(u - lo) * nr;
				for (int j = 0; j < nr;) {
					int r = gr[mr0 + j];
					double acc = Su[j++];
					while (j < nr && gr[mr0 + j] == r)
						acc += Su[j++];
					sum[g->recv_first[r] + u] += scale * acc;
				}
			}
		}
	}
	free(gr);
}

static void accumulate(circ_attrib *a, double scale, int u_lo, int u_hi)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	const float **grads = circ_xmalloc((size_t)a->R * sizeof *grads);
	for (int r = 0; r < a->R; r++)
		grads[r] = grad_of(a, r, btc);
	accumulate_core(a->sum, circ_patcher_graph(a->p), a->mt, a->U, a->C, b->B, b->T, a->diff,
			grads, scale, u_lo, u_hi, a->gcopy, a->S);
	free(grads);
}

void circ_eap_add(double *sum, const circ_graph *g, int d_model, int T, const float *diff,
		  const float *grad)
{
	circ_topology *own = NULL;
	const circ_topology *mt = g->topo;
	int U = g->n_up, R, Rs;
	size_t tc = (size_t)T * (size_t)d_model;
	const float **grads;
	float *gcopy, *S;
	if (g->level != CIRC_LEVEL_EDGE) {
		/* the model's receivers: the edge-level topology of the shape */
		circ_topo_desc d = g->topo->d;
		circ_error e;
		d.level = CIRC_LEVEL_EDGE;
		d.recv_kinds = 0;
		own = circ_topology_new(&d, &e);
		CIRC_ASSERT(own != NULL); /* the graph's shape was accepted */
		mt = own;
	}
	R = mt->n_recv;
	Rs = stage_max_recv(mt);
	grads = circ_xmalloc((size_t)R * sizeof *grads);
	gcopy = circ_xmalloc((size_t)Rs * tc * sizeof(float));
	S = circ_xmalloc((size_t)U * (size_t)Rs * sizeof(float));
	for (int r = 0; r < R; r++)
		grads[r] = grad + (size_t)r * tc;
	accumulate_core(sum, g, mt, U, d_model, 1, T, diff, grads, 1.0, 0, U, gcopy, S);
	free(grads);
	free(gcopy);
	free(S);
	circ_topology_free(own);
}

static void make_diff(circ_attrib *a)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t tc = (size_t)b->T * (size_t)a->C;
	for (int u = 0; u < a->U; u++) {
		const float *r = circ_patcher_ref_out(a->p, u),
			    *c = circ_patcher_clean_out(a->p, u);
		for (int bb = 0; bb < b->B; bb++) {
			float *d = a->diff + ((size_t)bb * a->U + (size_t)u) * tc;
			const float *rb = r + (size_t)bb * tc, *cb = c + (size_t)bb * tc;
			for (size_t i = 0; i < tc; i++)
				d[i] = rb[i] - cb[i];
		}
	}
}

/* Metric gradient at the read rows of the main run's last forward, then
 * one backward pass. */
static int backward_from_metric(circ_attrib *a, circ_error *e)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	circ_run *run = circ_patcher_run(a->p);
	const float *logits = circ_run_logits(run, NULL);
	circ_bwd bw = {0};
	for (int bb = 0; bb < b->B; bb++)
		circ_batch_metric(circ_patcher_opts(a->p)->metric, b, bb, logits,
				  circ_patcher_clean_logp(a->p), a->V, a->dlogits);
	/* scores are effects on the loss: -metric for task metrics, kl itself */
	if (circ_metric_higher_better(circ_patcher_opts(a->p)->metric))
		for (size_t i = 0; i < (size_t)b->n_read * (size_t)a->V; i++)
			a->dlogits[i] = -a->dlogits[i];
	bw.dlogits = a->dlogits;
	return circ_backward(run, &bw, e);
}

static void add_grads(circ_attrib *a, size_t btc)
{
	circ_run *run = circ_patcher_run(a->p);
	for (int r = 0; r < a->R; r++) {
		const float *gr = circ_run_recv_grad(run, r);
		float *acc = a->gacc + (size_t)r * btc;
		for (size_t i = 0; i < btc; i++)
			acc[i] += gr[i];
	}
}

static void fwd_clean_setup(circ_attrib *a, circ_fwd *f, circ_read *reads)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	circ_fwd_init(f);
	f->tokens = b->clean;
	f->B = b->B;
	f->T = b->T;
	f->read = CIRC_READ_LIST;
	f->n_read = b->n_read;
	for (int i = 0; i < b->n_read; i++) {
		reads[i].b = b->read_b[i];
		reads[i].t = b->read_t[i];
	}
	f->reads = reads;
}

static int act_hook(void *ctx, circ_run *run, int s, circ_error *e)
{
	circ_attrib *a = ctx;
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	const circ_topo_stage *st = &a->mt->stage[s];
	(void)e;
	if (s <= a->unit_stage)
		return 0;
	for (int r = st->first_recv; r < st->first_recv + st->n_recv; r++) {
		float *d = circ_run_delta(run, r);
		for (size_t i = 0; i < btc; i++)
			d[i] += a->unit_delta[i];
	}
	return 0;
}

static int batch_ig_activations(circ_attrib *a, circ_progress *pr, circ_error *e)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	circ_read *reads = circ_xmalloc((size_t)b->n_read * sizeof *reads);
	int rc = 0;
	/* units: the input, then the nodes of each stage (per layer its heads,
	 * then its MLP); unit k > 0 is made by stage k - 1 */
	for (int unit = 0; unit < a->mt->n_stage && rc == 0; unit++) {
		int u0, nu;
		if (unit == 0) {
			u0 = circ_topo_node_input(a->mt), nu = 1, a->unit_stage = -1;
		} else {
			const circ_topo_stage *st = &a->mt->stage[unit - 1];
			u0 = st->first_node, nu = st->n_node, a->unit_stage = unit - 1;
		}
		memset(a->gacc, 0, (size_t)a->R * btc * sizeof(float));
		for (int k = 1; k <= a->steps && rc == 0; k++) {
			double alpha = (double)k / a->steps;
			circ_fwd f;
			/* outputs of the unit become alpha*clean + (1-alpha)*ref: every later
			 * receiver sees (1-alpha) * sum over the unit of (ref - clean) more */
			memset(a->x, 0, btc * sizeof(float));
			for (int u = u0; u < u0 + nu; u++) {
				const float *r = circ_patcher_ref_out(a->p, u),
					    *c = circ_patcher_clean_out(a->p, u);
				for (size_t i = 0; i < btc; i++)
					a->x[i] += (float)((1.0 - alpha) * (r[i] - c[i]));
			}
			a->unit_delta = a->x;
			fwd_clean_setup(a, &f, reads);
			f.hook = act_hook;
			f.hook_ctx = a;
			rc = circ_forward(circ_patcher_run(a->p), &f, e);
			if (rc == 0)
				rc = backward_from_metric(a, e);
			if (rc == 0)
				add_grads(a, btc);
		}
		if (rc == 0)
			accumulate(a, 1.0 / a->steps, u0, u0 + nu);
		if (pr)
			circ_progress_step(pr, 0);
	}
	circ_patcher_dirty(a->p);
	free(reads);
	return rc;
}

static int batch_ig_inputs(circ_attrib *a, circ_error *e)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	const float *xc = circ_patcher_clean_out(a->p, 0), *xr = circ_patcher_ref_out(a->p, 0);
	circ_read *reads = circ_xmalloc((size_t)b->n_read * sizeof *reads);
	int rc = 0;
	memset(a->gacc, 0, (size_t)a->R * btc * sizeof(float));
	for (int k = 0; k < a->steps && rc == 0; k++) {
		float alpha = (float)k / (float)a->steps;
		circ_fwd f;
		for (size_t i = 0; i < btc; i++)
			a->x[i] = xr[i] + alpha * (xc[i] - xr[i]);
		fwd_clean_setup(a, &f, reads);
		f.input_embed = a->x;
		rc = circ_forward(circ_patcher_run(a->p), &f, e);
		if (rc == 0)
			rc = backward_from_metric(a, e);
		if (rc == 0)
			add_grads(a, btc);
	}
	circ_patcher_dirty(a->p);
	free(reads);
	if (rc == 0)
		accumulate(a, 1.0 / a->steps, 0, a->U);
	return rc;
}

static int batch_exact(circ_attrib *a, circ_progress *pr, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(a->p);
	const circ_batch *b = circ_patcher_batch(a->p);
	const double *m0 = circ_patcher_clean_metric(a->p);
	double *out = circ_xmalloc((size_t)b->B * sizeof *out);
	double sign = circ_metric_higher_better(circ_patcher_opts(a->p)->metric) ? -1.0 : 1.0;
	/* receivers from the top down, so that each forward reuses the clean
	 * run below its receiver */
	for (int r = g->n_recv - 1; r >= 0; r--)
		for (int64_t ed = g->recv_first[r]; ed < g->recv_first[r + 1]; ed++) {
			if (circ_patcher_eval_edge(a->p, ed, out, e) < 0) {
				free(out);
				return -1;
			}
			for (int bb = 0; bb < b->B; bb++)
				a->sum[ed] += sign * (out[bb] - m0[bb]);
			if (pr)
				circ_progress_step(pr, 1);
		}
	free(out);
	return 0;
}

int circ_loss_backward(circ_patcher *p, circ_error *e)
{
	circ_attrib *a = circ_attrib_new(p, CIRC_ATTR_EAP, 1);
	const circ_batch *b = circ_patcher_batch(p);
	int rc = 0;
	fit_batch(a, 0);
	if (!circ_patcher_is_clean(p)) {
		circ_fwd f;
		circ_read *reads = circ_xmalloc((size_t)b->n_read * sizeof *reads);
		fwd_clean_setup(a, &f, reads);
		rc = circ_forward(circ_patcher_run(p), &f, e);
		free(reads);
	}
	if (rc == 0)
		rc = backward_from_metric(a, e);
	circ_attrib_free(a);
	return rc;
}

int circ_attrib_batch(circ_attrib *a, circ_progress *pr, circ_error *e)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	int rc;
	fit_batch(a, 1);
	switch (a->method) {
	case CIRC_ATTR_EXACT: rc = batch_exact(a, pr, e); break;
	case CIRC_ATTR_EAP:
		make_diff(a);
		if (!circ_patcher_is_clean(a->p)) {
			circ_fwd f;
			circ_read *reads = circ_xmalloc((size_t)b->n_read * sizeof *reads);
			fwd_clean_setup(a, &f, reads);
			rc = circ_forward(circ_patcher_run(a->p), &f, e);
			free(reads);
			if (rc < 0)
				return -1;
		}
		rc = backward_from_metric(a, e);
		if (rc == 0)
			accumulate(a, 1.0, 0, a->U);
		break;
	case CIRC_ATTR_EAP_IG:
		make_diff(a);
		rc = batch_ig_inputs(a, e);
		break;
	default:
		make_diff(a);
		rc = batch_ig_activations(a, pr, e);
		break;
	}
	if (rc == 0)
		a->count += b->B;
	return rc;
}
