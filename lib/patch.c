/*
 * patch: patched runs over a batch (see patch.h).
 *
 * The patcher owns two runs of the model: `main`, which holds the clean run
 * of the loaded batch and is reused for every patched forward, and `ref`,
 * which runs the corrupted prompts. Patched forwards go through the model's
 * forward hook: before each stage, the hook adds into each receiver of that
 * stage the sum over its patched upstream nodes of (reference - current
 * output), reading the current outputs from the run itself, so that a
 * patched node's effect propagates to every later receiver.
 *
 * clean_below tracks how much of `main` still holds the clean run: stages
 * below it are clean. A patched forward starts at min(its lowest patched
 * stage, clean_below), so the exact method and ACDC, which visit receivers
 * from the top down, recompute only what lies above the receiver.
 */
#include "patch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MODE_CIRCUIT, MODE_EDGE };

struct circ_patcher {
	const circ_model *m;
	const circ_graph *g;
	circ_patch_opts o;
	int L, H, C, U, V;
	circ_run *main, *ref;
	float *clean_out; /* (U, B, T, C) */
	float *ref_out;	  /* (U, B, T, C) */
	double *mean_sum; /* (U, Tm, C) or (U, C) */
	int64_t mean_n;
	int mean_T, mean_done;
	float *mean; /* (U, Tm, C) or (U, C) */
	const circ_batch *b;
	circ_read *reads; /* (max_b * max_t) */
	double *m_clean, *m_ref; /* (max_b) */
	float *clean_logp;	 /* (N, V) kl only */
	int clean_below;
	/* hook state */
	int mode;
	const uint8_t *keep;
	int64_t edge;
};

static const char *const abl_names[] = {"resample", "mean", "zero"};

const char *circ_ablation_name(circ_ablation a)
{
	return (unsigned)a < 3 ? abl_names[a] : "?";
}

int circ_ablation_parse(const char *s, circ_ablation *a)
{
	for (int i = 0; i < 3; i++)
		if (!strcmp(s, abl_names[i])) {
			*a = (circ_ablation)i;
			return 0;
		}
	return -1;
}

circ_patcher *circ_patcher_new(const circ_model *m, const circ_graph *g, const circ_patch_opts *o,
			       circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	circ_patcher *p;
	circ_run_opts ro;
	size_t act;
	if (g->n_layer != c->n_layer || g->n_head != c->n_head)
		return circ_errorf(e,
				   "the graph (%d layers, %d heads) does not match the model (%d "
				   "layers, %d heads)",
				   g->n_layer, g->n_head, c->n_layer, c->n_head),
		       NULL;
	p = circ_xcalloc(1, sizeof *p);
	p->m = m;
	p->g = g;
	p->o = *o;
	if (p->o.max_b < 1)
		p->o.max_b = 1;
	if (p->o.max_t < 1 || p->o.max_t > c->n_ctx)
		p->o.max_t = c->n_ctx;
	p->L = c->n_layer;
	p->H = c->n_head;
	p->C = c->n_embd;
	p->V = c->vocab_size;
	p->U = circ_model_n_up(m);
	circ_run_opts_default(&ro);
	ro.threads = o->threads;
	ro.acdc_convention = g->input == CIRC_INPUT_ACDC;
	ro.keep_nodes = 1;
	ro.backward = o->backward;
	p->main = circ_run_new(m, p->o.max_b, p->o.max_t, &ro, e);
	if (!p->main)
		goto fail;
	ro.backward = 0;
	if (o->ablation == CIRC_ABL_RESAMPLE) {
		p->ref = circ_run_new(m, p->o.max_b, p->o.max_t, &ro, e);
		if (!p->ref)
			goto fail;
	}
	act = (size_t)p->U * (size_t)p->o.max_b * (size_t)p->o.max_t * (size_t)p->C;
	p->clean_out = circ_xalloc_aligned(act * sizeof(float));
	p->ref_out = circ_xalloc_aligned(act * sizeof(float));
	p->reads = circ_xcalloc((size_t)p->o.max_b * (size_t)p->o.max_t, sizeof *p->reads);
	p->m_clean = circ_xcalloc((size_t)p->o.max_b, sizeof(double));
	p->m_ref = circ_xcalloc((size_t)p->o.max_b, sizeof(double));
	return p;
fail:
	circ_patcher_free(p);
	return NULL;
}

void circ_patcher_free(circ_patcher *p)
{
	if (!p)
		return;
	circ_run_free(p->main);
	circ_run_free(p->ref);
	free(p->clean_out);
	free(p->ref_out);
	free(p->mean_sum);
	free(p->mean);
	free(p->reads);
	free(p->m_clean);
	free(p->m_ref);
	free(p->clean_logp);
	free(p);
}

static void fwd_setup(circ_patcher *p, circ_fwd *f, const circ_batch *b, const int32_t *tokens)
{
	circ_fwd_init(f);
	f->tokens = tokens;
	f->B = b->B;
	f->T = b->T;
	f->read = CIRC_READ_LIST;
	f->n_read = b->n_read;
	f->reads = p->reads;
}

static void copy_nodes(const circ_patcher *p, circ_run *r, float *dst, const circ_batch *b)
{
	size_t n = (size_t)b->B * (size_t)b->T * (size_t)p->C;
	for (int u = 0; u < p->U; u++)
		memcpy(dst + (size_t)u * n, circ_run_node_out(r, u), n * sizeof(float));
}

int circ_patcher_mean_add(circ_patcher *p, const circ_batch *b, circ_error *e)
{
	circ_fwd f;
	size_t C = (size_t)p->C, Tm;
	if (p->o.mean_per_position) {
		if (p->mean_T && p->mean_T != b->T)
			return circ_errorf(e,
					   "per-position mean: reference examples differ in length "
					   "(%d and %d tokens)",
					   p->mean_T, b->T);
		p->mean_T = b->T;
	}
	Tm = p->o.mean_per_position ? (size_t)b->T : 1;
	if (!p->mean_sum)
		p->mean_sum = circ_xcalloc((size_t)p->U * Tm * C, sizeof(double));
	for (int i = 0; i < b->n_read; i++) {
		p->reads[i].b = b->read_b[i];
		p->reads[i].t = b->read_t[i];
	}
	fwd_setup(p, &f, b, b->clean);
	f.read = CIRC_READ_NONE;
	if (circ_forward(p->main, &f, e) < 0)
		return -1;
	p->clean_below = 0;
	for (int u = 0; u < p->U; u++) {
		const float *x = circ_run_node_out(p->main, u);
		double *s = p->mean_sum + (size_t)u * Tm * C;
		for (int bb = 0; bb < b->B; bb++)
			for (int t = 0; t < b->T; t++) {
				const float *xr = x + ((size_t)bb * b->T + t) * C;
				double *sr = s + (p->o.mean_per_position ? (size_t)t * C : 0);
				for (size_t c = 0; c < C; c++)
					sr[c] += xr[c];
			}
	}
	p->mean_n += p->o.mean_per_position ? b->B : (int64_t)b->B * b->T;
	return 0;
}

int circ_patcher_mean_finish(circ_patcher *p, circ_error *e)
{
	size_t Tm = p->o.mean_per_position ? (size_t)p->mean_T : 1,
	       n = (size_t)p->U * Tm * (size_t)p->C;
	if (p->mean_n == 0)
		return circ_errorf(e, "mean ablation: the reference dataset is empty");
	p->mean = circ_xmalloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		p->mean[i] = (float)(p->mean_sum[i] / (double)p->mean_n);
	p->mean_done = 1;
	return 0;
}

static int hook(void *ctx, circ_run *r, int layer, circ_stage_kind sk, circ_error *e);

static int read_metric(circ_patcher *p, circ_run *r, double *out)
{
	int n;
	const float *logits = circ_run_logits(r, &n);
	for (int b = 0; b < p->b->B; b++)
		out[b] = circ_metric_eval(p->o.metric, p->b, b, logits, p->clean_logp, p->V, NULL);
	return 0;
}

int circ_patcher_load(circ_patcher *p, const circ_batch *b, circ_error *e)
{
	circ_fwd f;
	size_t n = (size_t)b->B * (size_t)b->T * (size_t)p->C;
	if (b->B > p->o.max_b || b->T > p->o.max_t)
		return circ_errorf(e, "batch of %d x %d tokens exceeds the patcher's %d x %d", b->B,
				   b->T, p->o.max_b, p->o.max_t);
	p->b = b;
	for (int i = 0; i < b->n_read; i++) {
		p->reads[i].b = b->read_b[i];
		p->reads[i].t = b->read_t[i];
	}
	/* clean run */
	fwd_setup(p, &f, b, b->clean);
	if (circ_forward(p->main, &f, e) < 0)
		return -1;
	p->clean_below = 2 * p->L + 1;
	copy_nodes(p, p->main, p->clean_out, b);
	free(p->clean_logp);
	p->clean_logp = NULL;
	if (p->o.metric == CIRC_METRIC_KL) {
		int rows;
		const float *logits = circ_run_logits(p->main, &rows);
		p->clean_logp = circ_xmalloc((size_t)rows * (size_t)p->V * sizeof(float));
		circ_log_softmax(p->clean_logp, logits, rows, p->V);
	}
	read_metric(p, p->main, p->m_clean);
	/* references */
	switch (p->o.ablation) {
	case CIRC_ABL_RESAMPLE:
		fwd_setup(p, &f, b, b->corrupt);
		if (circ_forward(p->ref, &f, e) < 0)
			return -1;
		copy_nodes(p, p->ref, p->ref_out, b);
		read_metric(p, p->ref, p->m_ref);
		return 0;
	case CIRC_ABL_MEAN:
		if (!p->mean_done)
			return circ_errorf(e, "mean ablation: no means (internal error)");
		if (p->o.mean_per_position && b->T != p->mean_T)
			return circ_errorf(e,
					   "per-position mean ablation: the example has %d tokens, "
					   "the reference dataset %d",
					   b->T, p->mean_T);
		for (int u = 0; u < p->U; u++)
			for (int bb = 0; bb < b->B; bb++)
				for (int t = 0; t < b->T; t++)
					memcpy(p->ref_out + (size_t)u * n +
						       ((size_t)bb * b->T + t) * p->C,
					       p->mean + ((size_t)u * (p->o.mean_per_position
									  ? (size_t)p->mean_T
									  : 1) +
							  (p->o.mean_per_position ? (size_t)t : 0)) *
								 p->C,
					       (size_t)p->C * sizeof(float));
		break;
	case CIRC_ABL_ZERO: memset(p->ref_out, 0, (size_t)p->U * n * sizeof(float)); break;
	}
	/* m(empty circuit) for mean and zero: every edge patched */
	{
		uint8_t *none = circ_xcalloc((size_t)p->g->n_edges, 1);
		int rc = circ_patcher_eval(p, none, 0, p->m_ref, e);
		free(none);
		return rc;
	}
}

void circ_patcher_scale_ref(circ_patcher *p, double eps)
{
	size_t n = (size_t)p->U * (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
	for (size_t i = 0; i < n; i++)
		p->ref_out[i] = p->clean_out[i] + (float)eps * (p->ref_out[i] - p->clean_out[i]);
}

const circ_batch *circ_patcher_batch(const circ_patcher *p)
{
	return p->b;
}

const double *circ_patcher_clean_metric(const circ_patcher *p)
{
	return p->m_clean;
}

const double *circ_patcher_ref_metric(const circ_patcher *p)
{
	return p->m_ref;
}

int circ_patcher_recv_stage(const circ_patcher *p, int r)
{
	circ_recv_kind k;
	int node, layer;
	circ_graph_recv_info(p->g, r, &k, &node);
	layer = circ_graph_node_layer(p->g, node);
	switch (k) {
	case CIRC_RECV_MLP: return 2 * layer + 1;
	case CIRC_RECV_LOGITS: return 2 * p->L;
	default: return 2 * layer;
	}
}

/* Model receivers of graph receiver r: 1, or 3 for a node-level head. */
static int model_recvs(const circ_patcher *p, int r, int *mr)
{
	circ_recv_kind k;
	int node, layer, head;
	circ_graph_recv_info(p->g, r, &k, &node);
	circ_graph_node_info(p->g, node, NULL, &layer, &head);
	switch (k) {
	case CIRC_RECV_Q:
	case CIRC_RECV_K:
	case CIRC_RECV_V: mr[0] = circ_recv_qkv(p->m, layer, head, (int)(k - CIRC_RECV_Q)); return 1;
	case CIRC_RECV_HEAD:
		for (int c = 0; c < 3; c++)
			mr[c] = circ_recv_qkv(p->m, layer, head, c);
		return 3;
	case CIRC_RECV_MLP: mr[0] = circ_recv_mlp(p->m, layer); return 1;
	default: mr[0] = circ_recv_logits(p->m); return 1;
	}
}

/* Adds (ref_u - current_u) into d for every patched u of graph receiver r. */
static void add_patched(circ_patcher *p, circ_run *run, int r, float **d, int nmr, const int *mr)
{
	const circ_graph *g = p->g;
	size_t n = (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
	int64_t first = g->recv_first[r];
	int n_in = circ_graph_recv_n_in(g, r);
	float *dst = NULL;
	for (int u = 0; u < n_in; u++) {
		const float *ref, *cur;
		if (p->mode == MODE_CIRCUIT ? p->keep[first + u] != 0 : p->edge != first + u)
			continue;
		if (!dst)
			dst = *d = circ_run_delta(run, mr[0]);
		ref = p->ref_out + (size_t)u * n;
		cur = circ_run_node_out(run, u);
		for (size_t i = 0; i < n; i++)
			dst[i] += ref[i] - cur[i];
	}
	if (dst)
		for (int j = 1; j < nmr; j++)
			memcpy(circ_run_delta(run, mr[j]), dst, n * sizeof(float));
}

static int hook(void *ctx, circ_run *run, int layer, circ_stage_kind sk, circ_error *e)
{
	circ_patcher *p = ctx;
	const circ_graph *g = p->g;
	int mr[3], nmr;
	float *d;
	if (p->mode == MODE_EDGE) {
		int r = g->edge_recv[p->edge];
		int s = circ_patcher_recv_stage(p, r);
		int here = sk == CIRC_STAGE_ATTN ? 2 * layer : sk == CIRC_STAGE_MLP ? 2 * layer + 1
										: 2 * p->L;
		if (s == here) {
			nmr = model_recvs(p, r, mr);
			add_patched(p, run, r, &d, nmr, mr);
		}
		return 0;
	}
	switch (sk) {
	case CIRC_STAGE_ATTN:
		for (int h = 0; h < p->H; h++)
			for (int c = 0; c < (g->level == CIRC_LEVEL_EDGE ? 3 : 1); c++) {
				int r = circ_graph_recv_head(g, layer, h, c);
				nmr = model_recvs(p, r, mr);
				add_patched(p, run, r, &d, nmr, mr);
			}
		break;
	case CIRC_STAGE_MLP: {
		int r = circ_graph_recv_mlp(g, layer);
		nmr = model_recvs(p, r, mr);
		add_patched(p, run, r, &d, nmr, mr);
		break;
	}
	case CIRC_STAGE_FINAL: {
		int r = circ_graph_recv_logits(g);
		nmr = model_recvs(p, r, mr);
		add_patched(p, run, r, &d, nmr, mr);
		break;
	}
	}
	(void)e;
	return 0;
}

static int patched_forward(circ_patcher *p, int stage, double *out, circ_error *e)
{
	circ_fwd f;
	const circ_batch *b = p->b;
	fwd_setup(p, &f, b, b->clean);
	f.hook = hook;
	f.hook_ctx = p;
	if (stage > p->clean_below)
		stage = p->clean_below;
	if (stage < 0)
		stage = 0;
	if (stage > 2 * p->L) {
		/* nothing patched and the run is the clean one */
		memcpy(out, p->m_clean, (size_t)b->B * sizeof *out);
		return 0;
	}
	f.start_stage = stage;
	if (circ_forward(p->main, &f, e) < 0)
		return -1;
	p->clean_below = stage;
	return read_metric(p, p->main, out);
}

int circ_patcher_eval(circ_patcher *p, const uint8_t *keep, int stage, double *out, circ_error *e)
{
	p->mode = MODE_CIRCUIT;
	p->keep = keep;
	return patched_forward(p, stage, out, e);
}

int circ_patcher_eval_edge(circ_patcher *p, int64_t edge, double *out, circ_error *e)
{
	p->mode = MODE_EDGE;
	p->edge = edge;
	return patched_forward(p, circ_patcher_recv_stage(p, p->g->edge_recv[edge]), out, e);
}

circ_run *circ_patcher_run(circ_patcher *p)
{
	return p->main;
}

const float *circ_patcher_clean_out(const circ_patcher *p, int node)
{
	return p->clean_out + (size_t)node * (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
}

const float *circ_patcher_ref_out(const circ_patcher *p, int node)
{
	return p->ref_out + (size_t)node * (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
}

const float *circ_patcher_clean_logp(const circ_patcher *p)
{
	return p->clean_logp;
}

void circ_patcher_dirty(circ_patcher *p)
{
	p->clean_below = 0;
}

int circ_patcher_is_clean(const circ_patcher *p)
{
	return p->clean_below > 2 * p->L;
}

const circ_graph *circ_patcher_graph(const circ_patcher *p)
{
	return p->g;
}

const circ_model *circ_patcher_model(const circ_patcher *p)
{
	return p->m;
}

const circ_patch_opts *circ_patcher_opts(const circ_patcher *p)
{
	return p->o.max_b ? &p->o : NULL;
}
