/*
 * patch: patched runs over a batch (see patch.h).
 *
 * The patcher owns one run of the model, `main`. A load runs the corrupted
 * prompts on it first (keeping their node outputs and their logits at the
 * read rows), then the clean ones, so that it holds the clean run of the
 * loaded batch, reused for every patched forward. Patched forwards go
 * through the model's forward hook: before each stage, the hook adds into
 * each receiver of that stage the sum over its patched upstream nodes of
 * (reference - current output), reading the current outputs from the run
 * itself, so that a patched node's effect propagates to every later
 * receiver. A patcher made for gradient attribution alone (diff_only)
 * keeps ref - clean per node instead of both outputs.
 *
 * clean_below tracks how much of `main` still holds the clean run: stages
 * below it are clean. A patched forward starts at min(its lowest patched
 * stage, clean_below), so the exact method and ACDC, which visit receivers
 * from the top down, recompute only what lies above the receiver.
 *
 * The cost of a circuit's deltas. Written directly, receiver r's delta
 * costs one pass over (B, T, C) per patched edge: for a circuit that patches
 * most of the graph (ACDC late in its run, small circuits in faithfulness
 * curves) that is many times the forward itself. These keep it below
 * the forward's cost:
 *  - the complement: the residual at stage s is the sum of the outputs of
 *    all n_in(s) nodes before s plus constants that every run shares, so
 *    a receiver that sees every input patched reads R(s) = the clean
 *    residual + sum over u < n_in(s) of (ref_u - clean_u), the residual of
 *    the reference (for resampling, the corrupted run's own), and one with
 *    more patched than kept inputs reads R(s) - sum over its kept u of
 *    (ref_u - current_u), given to the run as its input
 *    (circ_run_input_sum): the residual is not read at all. Each receiver
 *    costs min(patched, kept) + 1 rows. R is made once per batch and
 *    references, for every stage, from the clean residuals kept at load;
 *  - cached bases: the kept rows of clean nodes (below the start stage)
 *    do not change while the start and those keep bits stay, as for every
 *    receiver above the one ACDC is testing: R(s) minus them is kept per
 *    receiver (for at most U receivers) and reused, made the same way the
 *    run sums, so results are the same bytes with or without it;
 *  - dead nodes: a node none of whose outgoing edges is kept, or whose kept
 *    edges all feed dead nodes, cannot change the metric: every receiver
 *    that sees it has its edge patched, (ref_u - current_u) cancelling its
 *    current output. Its own receivers are left unpatched (the model then
 *    runs them on its fused path): the same metric, up to rounding, for
 *    much less work when a circuit keeps few nodes (ACDC, faithfulness of
 *    small circuits);
 *  - stored differences: the rows ref_u - current_u are kept in diff
 *    (U, B, T, C), each made once: ref_u - clean_u for the nodes below the
 *    start stage, which stay valid from one forward to the next until the
 *    batch or the references change (ACDC and the exact method move the
 *    start down, so each is made once per batch), and ref_u - current_u for
 *    a node recomputed in this forward, made when a stage first needs it;
 *    a stage then only sums rows (an ACDC test late in its run needs the
 *    row of nearly every node at every stage above it);
 *  - blocking: (B, T, C) is cut into blocks of CHUNK floats; per block the
 *    rows a stage still lacks are made; the blocks are split over the main
 *    run's thread pool;
 *  - sums where they are read: a receiver's input is handed to the run as
 *    rows (R(s) minus the kept rows, or the residual plus the patched
 *    ones), which forms it next to the receiver's LayerNorm, row by row in
 *    blocks for q/k/v, so no delta is written out and read back;
 *  - kept projections: a q/k/v receiver of the start stage whose keep bits
 *    and liveness are those of the run's previous forward, when that was
 *    this patcher's circuit forward from the same stage (and R and the
 *    clean rows have not changed since), reads the same bytes as then: its
 *    projection is kept (circ_run_keep_qkv), so ACDC's tests of one
 *    receiver's edges compute that receiver's columns and its head alone
 *    at their stage, and form no other receiver's input there;
 *  - rows read: the metric reads the logits at the read rows alone, so
 *    the last layer's MLP is computed there alone (circ_fwd.reads_only).
 * Both shortcuts give the same bytes as computing everything (the
 * patcher option plain turns them off; test_patch compares whole ACDC
 * runs).
 * The sums are made in one fixed order of u, so results do not depend on
 * the number of threads.
 *
 * Buffers sized by the batch (node outputs, deltas' sums) are allocated at
 * load for the batch loaded, never for max_b x max_t, so that memory
 * follows the data; they are kept and reused by later batches (grown only
 * for a larger one) and not zeroed, as every one is written before it is
 * read.
 */
#include "patch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* What a patched forward patches: a circuit (keep mask) or single edges. */
typedef enum patch_mode { MODE_CIRCUIT, MODE_EDGE } patch_mode;
enum { DIFF_NONE, DIFF_CLEAN, DIFF_CUR };

/* Floats per block of the circuit delta kernel: a block of the difference
 * rows a stage reads stays in cache while its receivers sum theirs. */
#define CHUNK 512

/* One graph receiver of the stage being patched. */
typedef struct recv_plan {
	int mr[3]; /* its model receivers */
	int ndst;
	int complement; /* 1: input = R(s) - sum of the term rows; 0: delta = the sum */
	int nterm;
	const int *term; /* (nterm) upstream nodes, increasing */
	int r;		 /* the graph receiver */
	float *base;	 /* complement: its cached base, or NULL: R(s) */
	int nb;		 /* the first nb terms are in base */
	int fill;	 /* base is to be made in this stage */
} recv_plan;

struct circ_patcher {
	const circ_model *m;
	const circ_graph *g;
	circ_patch_opts o;
	const circ_topology *t;	 /* the graph's */
	const circ_topology *mt; /* the model's (edge level) */
	int C, U, V;
	int S;		   /* stages */
	int max_recv;	   /* most graph receivers of one stage */
	circ_run *main;	   /* every forward: the clean, reference and patched runs */
	float *clean_out;  /* (U, B, T, C); diff_only: the input node's (B, T, C) */
	float *clean_res;  /* (2L + 1, B, T, C) the clean run's residuals */
	float *rref;	   /* (2L + 1, B, T, C) R(s), NULL until used */
	int rref_ok;	   /* rref holds R for the batch and references loaded */
	float *ref_out;	   /* (U, B, T, C); diff_only: ref - clean */
	float *ref_in;	   /* diff_only: the input node's reference output (B, T, C) */
	int zdiff;	   /* diff_only where heads' outputs come from z: the run keeps
			      none; ref_z holds the reference run's z */
	float *ref_z;	   /* zdiff: (L, B*T, H*D) */
	float *ref_logits; /* the reference run's logits at the read rows (N, V) */
	size_t ref_logits_cap;
	double *mean_sum; /* (U, Tm, C) or (U, C) */
	int64_t mean_n;
	int mean_T, mean_done;
	float *mean; /* (U, Tm, C) or (U, C) */
	const circ_batch *b;
	circ_read *reads;	 /* (max_b * max_t) */
	double *m_clean, *m_ref; /* (max_b) */
	float *clean_logp;	 /* (N, V) kl only */
	size_t out_cap;		 /* floats allocated in clean_out and ref_out */
	int clean_below;
	/* hook state */
	patch_mode mode;
	const uint8_t *keep;
	int64_t edge;
	int start; /* start stage of the current forward */
	/* circuit delta kernel (see the top of this file) */
	int nslot;	    /* threads of the main run's pool */
	int slot_cap;	    /* threads srcs is allocated for */
	const float **srcs; /* (nslot, U) row pointers handed to circ_vsum */
	recv_plan *plan;    /* (3H) */
	int *terms;	    /* (3H, U) */
	uint8_t *need;	    /* (U) the stage needs node u's difference row */
	int *rows;	    /* (U) the nodes whose rows the stage makes */
	const float **cur;  /* (U) their outputs to subtract (clean or current) */
	float *diff;	    /* (U, B, T, C) the difference rows, NULL until used */
	size_t diff_cap;    /* floats allocated in diff */
	uint8_t *dkind;	    /* (U) what diff row u holds: DIFF_NONE, _CLEAN, _CUR */
	unsigned *dfwd;	    /* (U) for DIFF_CUR: the forward it belongs to */
	unsigned fwd_id;    /* patched forwards so far */
	uint8_t *alive;	    /* (U + 1) nodes that can reach the logits in the circuit */
	/* cached bases (see the top of this file), per graph receiver */
	float **cbase;	 /* (n_recv) R(s) - its kept clean rows, or NULL */
	int n_cbase;	 /* rows allocated in cbase, at most U */
	unsigned *c_gen; /* (n_recv) the generation its base was made in (0: none) */
	int *c_start;	 /* (n_recv) the start stage it was made for */
	uint8_t *c_keep; /* (n_edges) the keep bits below c_start it was made for */
	unsigned gen;	 /* bumped whenever R or the clean rows change (>= 1 once loaded) */
	float *raw_buf;	 /* raw head nodes: (4, B, T, C) scratch of raw_recv */
	size_t raw_cap;	 /* floats allocated in raw_buf */
	/* kept projections (see the top of this file): the last circuit
	 * forward, if it was the run's last forward */
	unsigned long k_serial; /* the run's serial after it (0: none) */
	int k_start;		/* its start stage */
	unsigned k_gen;		/* gen then */
	uint8_t *k_keep;	/* (n_edges) its circuit */
	uint8_t *k_alive;	/* (U + 1) its live nodes */
	int k_ok;		/* the forward in progress may keep projections */
};

/* The references or the clean run changed: R and the stored difference
 * rows are stale. */
static void diffs_stale(circ_patcher *p)
{
	p->rref_ok = 0;
	p->gen++;
	memset(p->dkind, DIFF_NONE, (size_t)p->U);
}

/* Number of upstream nodes produced before stage s (those feeding it). */
static int stage_n_in(const circ_patcher *p, int s)
{
	return s >= p->S ? p->U : p->t->stage[s].n_in;
}

/* Drops the cached bases (the batch grew: their rows are too short). */
static void free_cbase(circ_patcher *p)
{
	for (int r = 0; p->cbase && r < p->g->n_recv; r++) {
		free(p->cbase[r]);
		p->cbase[r] = NULL;
	}
	p->n_cbase = 0;
}

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
	if (g->n_layer != c->n_layer || g->n_head != c->n_head)
		return circ_errorf(e,
				   "the graph (%d layers, %d heads) does not match the model (%d "
				   "layers, %d heads)",
				   g->n_layer, g->n_head, c->n_layer, c->n_head),
		       NULL;
	{
		const circ_topo_desc *md = &circ_model_topology(m)->d;
		if (g->n_kv_head != md->n_kv_head || g->block != md->block)
			return circ_errorf(
				   e,
				   "the graph (%d key/value heads with receivers, %s blocks) "
				   "does not match the model as opened (%d, %s): a graph made "
				   "with --gqa grouped needs the model opened with it too",
				   g->n_kv_head,
				   g->block == CIRC_BLOCK_PARALLEL ? "parallel" : "sequential",
				   md->n_kv_head,
				   md->block == CIRC_BLOCK_PARALLEL ? "parallel" : "sequential"),
			       NULL;
		if (g->raw_heads != md->raw_heads)
			return circ_errorf(e,
					   "the graph's heads output %s the norm after attention, "
					   "the model's as opened %s it: a graph made with "
					   "--head-nodes raw needs the model opened with it too",
					   g->raw_heads ? "before" : "their share of",
					   md->raw_heads ? "before" : "their share of"),
			       NULL;
		if (g->level == CIRC_LEVEL_NODE && md->n_kv_head < md->n_head)
			return circ_errorf(e,
					   "node-level graphs of a model opened with grouped "
					   "key/value receivers (--gqa grouped) are not supported: "
					   "a head's k and v are shared with its group"),
			       NULL;
	}
	p = circ_xcalloc(1, sizeof *p);
	p->m = m;
	p->g = g;
	p->o = *o;
	if (p->o.max_b < 1)
		p->o.max_b = 1;
	if (p->o.max_t < 1 || p->o.max_t > c->n_ctx)
		p->o.max_t = c->n_ctx;
	/* a run's length limit (models of long contexts: Llama 3's 131072) */
	if (p->o.max_t > CIRC_ATTN_MAX_T)
		p->o.max_t = CIRC_ATTN_MAX_T;
	p->t = g->topo;
	p->mt = circ_model_topology(m);
	/* the delta kernels read a receiver's keep bits as a prefix */
	CIRC_ASSERT(p->t->dense && p->t->n_nodes == p->mt->n_nodes &&
		    p->t->n_stage == p->mt->n_stage);
	p->S = p->t->n_stage;
	for (int s = 0; s < p->S; s++)
		if (p->t->stage[s].n_recv > p->max_recv)
			p->max_recv = p->t->stage[s].n_recv;
	p->C = c->n_embd;
	p->V = c->vocab_size;
	p->U = circ_model_n_up(m);
	/* raw head nodes: patching reads both outputs (raw_stage) */
	if (p->o.ablation != CIRC_ABL_RESAMPLE || g->raw_heads)
		p->o.diff_only = 0;
	if (!p->o.backward)
		p->o.stage_grads = 0;
	circ_run_opts_default(&ro);
	ro.threads = o->threads;
	ro.acdc_convention = g->input == CIRC_INPUT_ACDC;
	/* attribution alone on a model whose heads' outputs are z times their
	 * slice of the output projection: the run keeps no head's output, the
	 * differences are made from the two runs' z (make_diffs) */
	p->zdiff = p->o.diff_only && circ_model_heads_from_z(m);
	ro.keep_nodes = !p->zdiff;
	ro.backward = o->backward;
	ro.keep_recv_grads = !p->o.stage_grads;
	/* one run: the reference forward of a load runs on it before the
	 * clean one (a second run would double the activations held) */
	p->main = circ_run_new(m, p->o.max_b, p->o.max_t, &ro, e);
	if (!p->main)
		goto fail;
	p->plan = circ_xcalloc((size_t)p->max_recv, sizeof *p->plan);
	p->terms = circ_xcalloc((size_t)p->max_recv * (size_t)p->U, sizeof *p->terms);
	p->need = circ_xcalloc((size_t)p->U, 1);
	p->rows = circ_xcalloc((size_t)p->U, sizeof *p->rows);
	p->cur = circ_xcalloc((size_t)p->U, sizeof *p->cur);
	p->alive = circ_xcalloc((size_t)p->U + 1, 1);
	p->dkind = circ_xcalloc((size_t)p->U, 1);
	p->dfwd = circ_xcalloc((size_t)p->U, sizeof *p->dfwd);
	p->cbase = circ_xcalloc((size_t)g->n_recv, sizeof *p->cbase);
	p->c_gen = circ_xcalloc((size_t)g->n_recv, sizeof *p->c_gen);
	p->c_start = circ_xcalloc((size_t)g->n_recv, sizeof *p->c_start);
	p->c_keep = circ_xcalloc((size_t)g->n_edges, 1);
	p->k_keep = circ_xcalloc((size_t)g->n_edges, 1);
	p->k_alive = circ_xcalloc((size_t)p->U + 1, 1);
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
	free(p->clean_out);
	free(p->ref_out);
	free(p->ref_in);
	free(p->ref_z);
	free(p->ref_logits);
	free(p->mean_sum);
	free(p->mean);
	free(p->reads);
	free(p->m_clean);
	free(p->m_ref);
	free(p->clean_logp);
	free(p->srcs);
	free(p->plan);
	free(p->terms);
	free(p->need);
	free(p->rows);
	free(p->cur);
	free(p->alive);
	free(p->clean_res);
	free(p->rref);
	free(p->diff);
	free(p->raw_buf);
	free(p->dkind);
	free(p->dfwd);
	free_cbase(p);
	free(p->cbase);
	free(p->c_gen);
	free(p->c_start);
	free(p->c_keep);
	free(p->k_keep);
	free(p->k_alive);
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
	for (int u = 0; u < p->U; u++) {
		const float *o = circ_run_node_out(r, u);
		if (o) /* zdiff: heads' outputs are not kept */
			memcpy(dst + (size_t)u * n, o, n * sizeof(float));
	}
}

/* A batch fits the buffers the patcher was made for: at most max_b x max_t
 * tokens and, as circ_batch_parse_example guarantees (distinct positions inside
 * each prompt), at most B x T read rows. Checked before any buffer is
 * written. */
static int check_batch(const circ_patcher *p, const circ_batch *b, circ_error *e)
{
	if (b->B < 1 || b->T < 1 || b->B > p->o.max_b || b->T > p->o.max_t)
		return circ_errorf(e, "batch of %d x %d tokens exceeds the patcher's %d x %d", b->B,
				   b->T, p->o.max_b, p->o.max_t);
	if (b->n_read < 1 || (int64_t)b->n_read > (int64_t)b->B * b->T)
		return circ_errorf(e, "batch of %d x %d tokens reads %d rows (at most %d)", b->B,
				   b->T, b->n_read, b->B * b->T);
	return 0;
}

int circ_patcher_mean_add(circ_patcher *p, const circ_batch *b, circ_error *e)
{
	circ_fwd f;
	size_t C = (size_t)p->C, Tm;
	if (check_batch(p, b, e) < 0)
		return -1;
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

int circ_patcher_mean_copy(circ_patcher *p, const circ_patcher *src, circ_error *e)
{
	size_t n;
	if (!src->mean_done)
		return circ_errorf(e, "mean ablation: no means to copy (internal error)");
	if (src->U != p->U || src->C != p->C || src->o.mean_per_position != p->o.mean_per_position)
		return circ_errorf(e, "mean ablation: means of another shape (internal error)");
	n = (size_t)p->U * (p->o.mean_per_position ? (size_t)src->mean_T : 1) * (size_t)p->C;
	free(p->mean);
	p->mean = circ_xmalloc(n * sizeof(float));
	memcpy(p->mean, src->mean, n * sizeof(float));
	p->mean_T = src->mean_T;
	p->mean_n = src->mean_n;
	p->mean_done = 1;
	return 0;
}

static int hook(void *ctx, circ_run *r, int s, circ_error *e);

/* The metric of each example from run r's logits; a NaN or infinite one is
 * an error naming the example and the run (`what`) unless allowed: numbers
 * that overflowed inside the model would otherwise become scores. */
static int read_metric(circ_patcher *p, const float *logits, const char *what, double *out,
		       circ_error *e)
{
	for (int b = 0; b < p->b->B; b++) {
		out[b] = circ_batch_metric(p->o.metric, p->b, b, logits, p->clean_logp, p->V, NULL);
		if (!isfinite(out[b]) && !p->o.allow_nonfinite)
			return circ_errorf(
			    e,
			    "example %lld: %s metric of the %s run is %s (the model's "
			    "numbers overflow; --allow-nonfinite lets it through)",
			    (long long)p->b->ex[b].id, circ_metric_name(p->o.metric), what,
			    isnan(out[b]) ? "nan" : "infinite");
	}
	return 0;
}

/* The reference forward of a resampled load, on the main run before the
 * clean one: its node outputs into ref_out, its logits at the read rows
 * kept for the metric (which for kl needs the clean run's). */
static int ref_forward(circ_patcher *p, const circ_batch *b, size_t n, circ_error *e)
{
	circ_fwd f;
	int rows;
	const float *logits;
	size_t nl;
	fwd_setup(p, &f, b, b->corrupt);
	if (circ_forward(p->main, &f, e) < 0)
		return -1;
	copy_nodes(p, p->main, p->ref_out, b);
	if (p->zdiff) {
		size_t nq = n / (size_t)p->C * (size_t)circ_model_config(p->m)->n_head *
			    (size_t)circ_config_head_dim(circ_model_config(p->m));
		for (int l = 0; l < circ_model_config(p->m)->n_layer; l++)
			memcpy(p->ref_z + (size_t)l * nq, circ_run_attn_z(p->main, l),
			       nq * sizeof(float));
	}
	if (p->o.diff_only)
		memcpy(p->ref_in, p->ref_out, n * sizeof(float));
	logits = circ_run_logits(p->main, &rows);
	nl = (size_t)rows * (size_t)p->V;
	if (nl > p->ref_logits_cap) {
		free(p->ref_logits);
		p->ref_logits = circ_xmalloc(nl * sizeof(float));
		p->ref_logits_cap = nl;
	}
	memcpy(p->ref_logits, logits, nl * sizeof(float));
	return 0;
}

/* zdiff: the floats of ref_z for a batch of n = B*T*C floats per node. */
static size_t zdiff_floats(const circ_patcher *p, size_t n)
{
	const circ_config *c = circ_model_config(p->m);
	return n / (size_t)p->C * (size_t)c->n_layer * (size_t)c->n_head *
	       (size_t)circ_config_head_dim(c);
}

/* Buffers for a batch of n = B*T*C floats per node, grown only. */
static void fit_outputs(circ_patcher *p, size_t n)
{
	if (p->out_cap >= (size_t)p->U * n)
		return;
	free(p->clean_out);
	free(p->ref_out);
	free(p->ref_in);
	free(p->ref_z);
	p->ref_z = NULL;
	free(p->clean_res);
	free(p->rref);
	p->rref = NULL;
	p->ref_in = p->clean_res = NULL;
	free_cbase(p);
	p->out_cap = (size_t)p->U * n;
	p->ref_out = circ_xmalloc_aligned(p->out_cap * sizeof(float));
	if (p->zdiff)
		p->ref_z = circ_xmalloc_aligned(zdiff_floats(p, n) * sizeof(float));
	if (p->o.diff_only) {
		p->clean_out = circ_xmalloc_aligned(n * sizeof(float));
		p->ref_in = circ_xmalloc_aligned(n * sizeof(float));
	} else {
		p->clean_out = circ_xmalloc_aligned(p->out_cap * sizeof(float));
		p->clean_res = circ_xmalloc_aligned((size_t)p->S * n * sizeof(float));
	}
}

/* diff_only: ref_out = ref - clean in place, node by node (the float
 * difference attribution used to make from the two copies). */
static void make_diffs(circ_patcher *p, size_t n)
{
	for (int u = 0; u < p->U; u++) {
		float *d = p->ref_out + (size_t)u * n;
		const float *c = circ_run_node_out(p->main, u);
		if (!c) /* zdiff: a head, below */
			continue;
		for (size_t i = 0; i < n; i++)
			d[i] = d[i] - c[i];
	}
	if (p->zdiff) {
		/* a head's difference is (z_ref - z_clean)_h times its slice of
		 * the output projection: ref_z becomes the difference of z, then
		 * each head's row block is made from it */
		const circ_config *c = circ_model_config(p->m);
		int H = c->n_head;
		size_t nq = zdiff_floats(p, n) / (size_t)c->n_layer;
		float **dst = circ_xmalloc((size_t)H * sizeof *dst);
		for (int l = 0; l < c->n_layer; l++) {
			float *zd = p->ref_z + (size_t)l * nq;
			const float *zc = circ_run_attn_z(p->main, l);
			for (size_t i = 0; i < nq; i++)
				zd[i] -= zc[i];
			for (int h = 0; h < H; h++)
				dst[h] = p->ref_out + (size_t)circ_node_head(p->m, l, h) * n;
			circ_run_head_outputs(p->main, l, zd, dst);
		}
		free(dst);
	}
	memcpy(p->clean_out, circ_run_node_out(p->main, 0), n * sizeof(float));
}

int circ_patcher_load(circ_patcher *p, const circ_batch *b, circ_error *e)
{
	circ_fwd f;
	size_t n = (size_t)b->B * (size_t)b->T * (size_t)p->C;
	if (check_batch(p, b, e) < 0)
		return -1;
	p->b = b;
	diffs_stale(p);
	fit_outputs(p, n);
	for (int i = 0; i < b->n_read; i++) {
		p->reads[i].b = b->read_b[i];
		p->reads[i].t = b->read_t[i];
	}
	if (p->o.ablation == CIRC_ABL_RESAMPLE && ref_forward(p, b, n, e) < 0)
		return -1;
	/* clean run */
	fwd_setup(p, &f, b, b->clean);
	if (circ_forward(p->main, &f, e) < 0)
		return -1;
	p->clean_below = p->S;
	if (p->o.diff_only) {
		make_diffs(p, n);
	} else {
		copy_nodes(p, p->main, p->clean_out, b);
		for (int s = 0; s < p->S; s++)
			memcpy(p->clean_res + (size_t)s * n, circ_run_resid(p->main, s),
			       n * sizeof(float));
	}
	free(p->clean_logp);
	p->clean_logp = NULL;
	if (p->o.metric == CIRC_METRIC_KL) {
		int rows;
		const float *logits = circ_run_logits(p->main, &rows);
		p->clean_logp = circ_xmalloc((size_t)rows * (size_t)p->V * sizeof(float));
		circ_metric_log_softmax(p->clean_logp, logits, rows, p->V);
	}
	if (read_metric(p, circ_run_logits(p->main, NULL), "clean", p->m_clean, e) < 0)
		return -1;
	/* references */
	switch (p->o.ablation) {
	case CIRC_ABL_RESAMPLE: return read_metric(p, p->ref_logits, "corrupted", p->m_ref, e);
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
					       p->mean +
						   ((size_t)u * (p->o.mean_per_position
								     ? (size_t)p->mean_T
								     : 1) +
						    (p->o.mean_per_position ? (size_t)t : 0)) *
						       p->C,
					       (size_t)p->C * sizeof(float));
		break;
	case CIRC_ABL_ZERO: memset(p->ref_out, 0, (size_t)p->U * n * sizeof(float)); break;
	}
	/* m(empty circuit) for mean and zero: every edge patched, which only
	 * the logits see (circ_patcher_eval starts it at their stage); then
	 * the clean logits stage again, so that main holds the whole clean
	 * run as after a resampled load: the forwards that follow resume
	 * above their receivers and attribution runs no clean forward again. */
	{
		uint8_t *none = circ_xcalloc((size_t)p->g->n_edges, 1);
		int rc = circ_patcher_eval(p, none, circ_topo_stage_final(p->t), p->m_ref, e);
		free(none);
		if (rc < 0)
			return -1;
		fwd_setup(p, &f, b, b->clean);
		f.start_stage = circ_topo_stage_final(p->t);
		if (circ_forward(p->main, &f, e) < 0)
			return -1;
		p->clean_below = p->S;
		return 0;
	}
}

void circ_patcher_scale_ref(circ_patcher *p, double eps)
{
	CIRC_ASSERT(!p->o.diff_only);
	size_t n = (size_t)p->U * (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
	for (size_t i = 0; i < n; i++)
		p->ref_out[i] = p->clean_out[i] + (float)eps * (p->ref_out[i] - p->clean_out[i]);
	diffs_stale(p);
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
	CIRC_ASSERT(r >= 0 && r < p->t->n_recv);
	return p->t->recv[r].stage;
}

/* Model receivers of graph receiver r: 1, or all of a node-level head's. */
static int model_recvs(const circ_patcher *p, int r, int *mr)
{
	const circ_topo_node *n = &p->mt->node[p->t->recv[r].node];
	if (p->t->recv[r].kind == CIRC_RECV_HEAD) {
		CIRC_ASSERT(n->n_recv <= 3);
		for (int j = 0; j < n->n_recv; j++)
			mr[j] = n->first_recv + j;
		return n->n_recv;
	}
	mr[0] = circ_topo_map_recv(p->t, r, p->mt);
	CIRC_ASSERT(mr[0] >= 0);
	return 1;
}

/* Edge mode: adds (ref_u - current_u) into d for the patched edge u->r. */
static void add_patched(circ_patcher *p, circ_run *run, int r, float **d, int nmr, const int *mr)
{
	const circ_graph *g = p->g;
	size_t n = (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
	int64_t first = g->recv_first[r];
	int n_in = circ_graph_recv_n_in(g, r);
	float *dst = NULL;
	for (int u = 0; u < n_in; u++) {
		const float *ref, *cur;
		if (p->edge != first + u)
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
			memcpy(circ_run_delta_raw(run, mr[j]), dst, n * sizeof(float));
}

/* ---- circuit mode: the delta kernel ---- */

typedef struct block_task {
	circ_patcher *p;
	size_t n; /* B*T*C */
	int nrows;
} block_task;

/* d (n) = a - b; the arrays do not overlap. Written in groups of 8 so
 * that -O2 vectorises it (the cheap cost model leaves the plain loop
 * scalar). */
static void vsub(float *restrict d, const float *restrict a, const float *restrict b, size_t n)
{
	size_t i = 0;
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			d[i + j] = a[i + j] - b[i + j];
	for (; i < n; i++)
		d[i] = a[i] - b[i];
}

/* Makes the difference rows t->rows lacks over [i0, i0 + len). */
static void make_rows(const block_task *t, size_t i0, size_t len)
{
	circ_patcher *p = t->p;
	for (int j = 0; j < t->nrows; j++) {
		size_t o = (size_t)p->rows[j] * t->n + i0;
		vsub(p->diff + o, p->ref_out + o, p->cur[p->rows[j]] + i0, len);
	}
}

/* Slot k of the pool: the blocks k*nb/nslot .. (k+1)*nb/nslot-1. */
static void block_part(void *ctx, size_t k0, size_t k1)
{
	const block_task *t = ctx;
	size_t n = t->n, nb = (n + CHUNK - 1) / CHUNK, nslot = (size_t)t->p->nslot;
	for (size_t k = k0; k < k1; k++)
		for (size_t blk = k * nb / nslot; blk < (k + 1) * nb / nslot; blk++)
			make_rows(t, blk * CHUNK,
				  n - blk * CHUNK < CHUNK ? n - blk * CHUNK : CHUNK);
}

/* R(s) for every stage over [i0, i0 + len): the clean residual plus the
 * sum of (ref_u - clean_u) over u < n_in(s), carried up the stages. */
static void rref_part(void *ctx, size_t k0, size_t k1)
{
	const block_task *t = ctx;
	circ_patcher *p = t->p;
	size_t n = t->n, nb = (n + CHUNK - 1) / CHUNK, nslot = (size_t)p->nslot;
	float acc[CHUNK];
	for (size_t k = k0; k < k1; k++)
		for (size_t blk = k * nb / nslot; blk < (k + 1) * nb / nslot; blk++) {
			size_t i0 = blk * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
			int u = 0;
			memset(acc, 0, sizeof acc);
			for (int s = 0; s < p->S; s++) {
				for (; u < stage_n_in(p, s); u++) {
					const float *rf = p->ref_out + (size_t)u * n + i0,
						    *cl = p->clean_out + (size_t)u * n + i0;
					for (size_t i = 0; i < len; i++)
						acc[i] += rf[i] - cl[i];
				}
				circ_vsum(p->rref + (size_t)s * n + i0,
					  p->clean_res + (size_t)s * n + i0, acc, NULL, 0, len);
			}
		}
}

typedef struct fill_task {
	circ_patcher *p;
	size_t n;
	int nplan;
	const float *rs; /* R(s) */
} fill_task;

/* The bases to be made: R(s) minus their first nb rows, as the run would
 * sum them (so a base made here gives the same bytes as R and the rows). */
static void fill_part(void *ctx, size_t k0, size_t k1)
{
	const fill_task *t = ctx;
	circ_patcher *p = t->p;
	size_t n = t->n, nb = (n + CHUNK - 1) / CHUNK, nslot = (size_t)p->nslot;
	for (size_t k = k0; k < k1; k++) {
		const float **src = p->srcs + k * (size_t)p->U;
		for (size_t blk = k * nb / nslot; blk < (k + 1) * nb / nslot; blk++) {
			size_t i0 = blk * CHUNK, len = n - i0 < CHUNK ? n - i0 : CHUNK;
			for (int i = 0; i < t->nplan; i++) {
				const recv_plan *pl = &p->plan[i];
				if (!pl->fill)
					continue;
				for (int j = 0; j < pl->nb; j++)
					src[j] = p->diff + (size_t)pl->term[j] * n + i0;
				circ_vsum_neg(pl->base + i0, t->rs + i0, NULL, src, pl->nb, len);
			}
		}
	}
}

/* A complement receiver's base: R(s) minus its kept rows of the clean
 * nodes (below the start stage), cached from one forward to the next while
 * the batch, the start and those keep bits stay (ACDC tests thousands of
 * edges below a receiver whose circuit is decided). At most U receivers
 * get one (memory as ref_out's); the others read R(s) and every row. */
static void plan_base(circ_patcher *p, recv_plan *pl, const uint8_t *keep)
{
	int nin0 = stage_n_in(p, p->start), nb = 0, r = pl->r;
	while (nb < pl->nterm && pl->term[nb] < nin0)
		nb++;
	if (nb < 2) /* one row for R and one: no fewer with a base of its own */
		return;
	if (!p->cbase[r]) {
		if (p->n_cbase >= p->U)
			return;
		p->cbase[r] = circ_xmalloc_aligned(p->out_cap / (size_t)p->U * sizeof(float));
		p->n_cbase++;
	}
	pl->base = p->cbase[r];
	pl->nb = nb;
	pl->fill = p->c_gen[r] != p->gen || p->c_start[r] != p->start ||
		   memcmp(p->c_keep + p->g->recv_first[r], keep, (size_t)nin0) != 0;
	if (pl->fill) {
		p->c_gen[r] = p->gen;
		p->c_start[r] = p->start;
		memcpy(p->c_keep + p->g->recv_first[r], keep, (size_t)nin0);
	}
}

/* Queues node u's difference row for making, unless diff holds it: ref_u -
 * clean_u below the start stage, ref_u - current_u above it. */
static void want_row(circ_patcher *p, const circ_run *run, int u, size_t n, int *nrows)
{
	int clean = u < stage_n_in(p, p->start);
	if (clean ? p->dkind[u] == DIFF_CLEAN : p->dkind[u] == DIFF_CUR && p->dfwd[u] == p->fwd_id)
		return;
	p->rows[(*nrows)++] = u;
	p->cur[u] = clean ? p->clean_out + (size_t)u * n : circ_run_node_out(run, u);
}

/* The rows queued are made: record what they hold. */
static void rows_made(circ_patcher *p, int nrows)
{
	for (int j = 0; j < nrows; j++) {
		int u = p->rows[j];
		p->dkind[u] = u < stage_n_in(p, p->start) ? DIFF_CLEAN : DIFF_CUR;
		p->dfwd[u] = p->fwd_id;
	}
}

/* Graph receiver r of the start stage, whose input is the same bytes as in
 * the run's previous forward (the same keep bits, the same liveness, the
 * same clean rows below): its projections are kept (circ_run_keep_qkv).
 * 1 if they are, 0 if it must be computed. */
static int keep_recv(circ_patcher *p, circ_run *run, int s, int r, int node)
{
	const circ_graph *g = p->g;
	int mr[3], n = 0;
	if (!p->k_ok || s != p->start || p->alive[node] != p->k_alive[node] ||
	    memcmp(p->keep + g->recv_first[r], p->k_keep + g->recv_first[r],
		   (size_t)circ_graph_recv_n_in(g, r)) != 0)
		return 0;
	n = model_recvs(p, r, mr);
	for (int j = 0; j < n; j++)
		if (circ_run_keep_qkv(run, mr[j]) < 0)
			return 0;
	return 1;
}

/* Sets the deltas of the receivers of stage s for the circuit p->keep. */
static void circuit_stage(circ_patcher *p, circ_run *run, int s)
{
	const circ_graph *g = p->g;
	size_t n = (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
	int r0 = p->t->stage[s].first_recv, nr = p->t->stage[s].n_recv;
	int nplan = 0, use_r = 0, nrows = 0, nfill = 0;
	const float **rows;
	int n_stage = stage_n_in(p, s);
	block_task t = {p, n, 0};
	memset(p->need, 0, (size_t)p->U);
	if (p->diff_cap < (size_t)p->U * n) {
		free(p->diff);
		p->diff_cap = (size_t)p->U * n;
		p->diff = circ_xmalloc_aligned(p->diff_cap * sizeof(float));
		diffs_stale(p);
	}
	for (int i = 0; i < nr; i++) {
		int r = r0 + i, n_in = circ_graph_recv_n_in(g, r), npatched = 0, node;
		const uint8_t *keep = p->keep + g->recv_first[r];
		recv_plan *pl = &p->plan[nplan];
		int *term = p->terms + (size_t)nplan * (size_t)p->U;
		circ_graph_recv_info(g, r, NULL, &node);
		if (keep_recv(p, run, s, r, node) || !p->alive[node])
			continue;
		for (int u = 0; u < n_in; u++)
			npatched += !keep[u];
		if (npatched == 0)
			continue;
		/* the complement costs the kept rows plus R, the sum the
		 * patched rows plus the residual */
		pl->complement = npatched > n_in - npatched;
		pl->nterm = 0;
		for (int u = 0; u < n_in; u++)
			if ((keep[u] != 0) == pl->complement)
				term[pl->nterm++] = u;
		pl->term = term;
		pl->r = r;
		pl->ndst = model_recvs(p, r, pl->mr);
		pl->base = NULL;
		pl->nb = pl->fill = 0;
		if (pl->complement)
			plan_base(p, pl, keep);
		/* a base in cache needs none of its rows */
		for (int j = pl->base && !pl->fill ? pl->nb : 0; j < pl->nterm; j++)
			p->need[term[j]] = 1;
		use_r |= pl->complement;
		nfill += pl->fill;
		nplan++;
	}
	if (nplan == 0)
		return;
	/* the run's own threads do the sums between its stages */
	circ_pool *pool = circ_run_pool(run);
	p->nslot = circ_pool_threads(pool);
	if (p->slot_cap < p->nslot) {
		free(p->srcs);
		p->slot_cap = p->nslot;
		p->srcs = circ_xcalloc((size_t)p->nslot * (size_t)p->U, sizeof *p->srcs);
	}
	if (use_r && !p->rref_ok) {
		if (!p->rref)
			p->rref = circ_xmalloc_aligned(p->out_cap / (size_t)p->U * (size_t)p->S *
						       sizeof(float));
		circ_pool_for(pool, (size_t)p->nslot, rref_part, &t);
		p->rref_ok = 1;
	}
	for (int u = 0; u < n_stage; u++)
		if (p->need[u])
			want_row(p, run, u, n, &nrows);
	t.nrows = nrows;
	if (nrows)
		circ_pool_for(pool, (size_t)p->nslot, block_part, &t);
	rows_made(p, nrows);
	if (nfill) {
		fill_task ft = {p, n, nplan, p->rref + (size_t)s * n};
		circ_pool_for(pool, (size_t)p->nslot, fill_part, &ft);
	}
	/* every receiver's input or delta as rows, summed where the model
	 * reads them */
	rows = p->srcs;
	for (int i = 0; i < nplan; i++) {
		const recv_plan *pl = &p->plan[i];
		for (int j = pl->nb; j < pl->nterm; j++)
			rows[j - pl->nb] = p->diff + (size_t)pl->term[j] * n;
		for (int j = 0; j < pl->ndst; j++)
			if (pl->complement)
				circ_run_input_sum(run, pl->mr[j],
						   pl->base ? pl->base : p->rref + (size_t)s * n,
						   CIRC_SIGN_MINUS, pl->nterm - pl->nb, rows);
			else
				circ_run_delta_sum(run, pl->mr[j], NULL, CIRC_SIGN_PLUS, pl->nterm,
						   rows);
	}
}

/* ---- raw head nodes ----
 *
 * With the heads' own outputs as nodes (circ_topo_desc.raw_heads: EAP-IG's
 * and MIB's definition), the residual is no sum of node outputs: layer l's
 * heads reach it through the norm after attention, N_l(A_l), A_l the sum of
 * their outputs. A receiver with patched edges reads, as EAP-IG's
 * evaluate_graph rebuilds it, the residual plus ref_u - cur_u for each
 * patched edge out of the input or an MLP, plus N_l(A_l + S_l) - N_l(A_l)
 * for each layer l with patched heads, S_l the sum of their ref_h - cur_h
 * (cur: the current run's outputs; the clean ones below the start stage).
 * Edges out of one layer's heads into one receiver act together, so the
 * linear kernel of circuit_stage (complements, cached bases) does not
 * apply: each receiver's delta is summed here from its patched edges. */

static const float *raw_cur(const circ_patcher *p, const circ_run *run, int u, size_t n)
{
	return u < stage_n_in(p, p->start) ? p->clean_out + (size_t)u * n
					   : circ_run_node_out(run, u);
}

/* Adds receiver r's patched edges (pat: 1 for a patched upstream node,
 * n_in of them) to the deltas of its model receivers. */
static void raw_recv(circ_patcher *p, circ_run *run, int r, const uint8_t *pat, int n_in)
{
	size_t n = (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C, rows = n / (size_t)p->C;
	int mr[3], nmr = model_recvs(p, r, mr), any = 0;
	float *dst, *S, *A, *y0, *y1;
	for (int u = 0; u < n_in; u++)
		any |= pat[u];
	if (!any)
		return;
	if (p->raw_cap < 4 * n) {
		free(p->raw_buf);
		p->raw_cap = 4 * n;
		p->raw_buf = circ_xmalloc(p->raw_cap * sizeof(float));
	}
	S = p->raw_buf;
	A = S + n;
	y0 = A + n;
	y1 = y0 + n;
	dst = circ_run_delta(run, mr[0]);
	for (int u = 0; u < n_in; u++) {
		const float *ref = p->ref_out + (size_t)u * n, *cur;
		if (!pat[u] || p->t->node[u].kind == CIRC_NODE_HEAD)
			continue; /* heads: with their layer, below */
		cur = raw_cur(p, run, u, n);
		for (size_t i = 0; i < n; i++)
			dst[i] += ref[i] - cur[i];
	}
	for (int l = 0; l < p->g->n_layer; l++) {
		int h0 = -1, np = 0;
		for (int u = 0; u < n_in; u++)
			if (p->t->node[u].kind == CIRC_NODE_HEAD && p->t->node[u].layer == l) {
				h0 = h0 < 0 ? u : h0;
				np += pat[u];
			}
		if (!np)
			continue;
		memset(S, 0, n * sizeof *S);
		memset(A, 0, n * sizeof *A);
		for (int h = 0; h < p->g->n_head; h++) {
			const float *cur = raw_cur(p, run, h0 + h, n),
				    *ref = p->ref_out + (size_t)(h0 + h) * n;
			circ_vadd(A, cur, n);
			if (pat[h0 + h])
				for (size_t i = 0; i < n; i++)
					S[i] += ref[i] - cur[i];
		}
		circ_model_post_attn_norm(p->m, l, y0, A, rows);
		circ_vadd(S, A, n);
		circ_model_post_attn_norm(p->m, l, y1, S, rows);
		for (size_t i = 0; i < n; i++)
			dst[i] += y1[i] - y0[i];
	}
	for (int j = 1; j < nmr; j++)
		memcpy(circ_run_delta_raw(run, mr[j]), dst, n * sizeof(float));
}

/* Sets the deltas of stage s's receivers (edge or circuit mode). */
static void raw_stage(circ_patcher *p, circ_run *run, int s)
{
	const circ_graph *g = p->g;
	int r0 = p->t->stage[s].first_recv, nr = p->t->stage[s].n_recv;
	uint8_t *pat = p->need; /* (U) free between stages */
	for (int r = r0; r < r0 + nr; r++) {
		int n_in = circ_graph_recv_n_in(g, r), node;
		memset(pat, 0, (size_t)p->U);
		if (p->mode == MODE_EDGE) {
			if (g->edge_recv[p->edge] != r)
				continue;
			pat[p->edge - g->recv_first[r]] = 1;
		} else {
			const uint8_t *keep = p->keep + g->recv_first[r];
			circ_graph_recv_info(g, r, NULL, &node);
			if (!p->alive[node])
				continue;
			for (int u = 0; u < n_in; u++)
				pat[u] = !keep[u];
		}
		raw_recv(p, run, r, pat, n_in);
	}
}

static int hook(void *ctx, circ_run *run, int s, circ_error *e)
{
	circ_patcher *p = ctx;
	const circ_graph *g = p->g;
	int mr[3], nmr;
	float *d;
	(void)e;
	if (g->raw_heads) {
		raw_stage(p, run, s);
		return 0;
	}
	if (p->mode == MODE_EDGE) {
		int r = g->edge_recv[p->edge];
		if (circ_patcher_recv_stage(p, r) == s) {
			nmr = model_recvs(p, r, mr);
			add_patched(p, run, r, &d, nmr, mr);
		}
		return 0;
	}
	circuit_stage(p, run, s);
	return 0;
}

static int patched_forward(circ_patcher *p, int stage, double *out, circ_error *e)
{
	circ_fwd f;
	const circ_batch *b = p->b;
	fwd_setup(p, &f, b, b->clean);
	f.hook = hook;
	f.hook_ctx = p;
	/* the metric reads the logits alone: the last MLP only at their rows */
	f.reads_only = !p->o.plain;
	if (stage > p->clean_below)
		stage = p->clean_below;
	if (stage < 0)
		stage = 0;
	if (stage > circ_topo_stage_final(p->t)) {
		/* nothing patched and the run is the clean one */
		memcpy(out, p->m_clean, (size_t)b->B * sizeof *out);
		return 0;
	}
	f.start_stage = stage;
	p->start = stage;
	p->fwd_id++;
	/* the run's last forward was this patcher's circuit forward from the
	 * same stage, over the same rows: what did not change can be kept */
	p->k_ok = p->mode == MODE_CIRCUIT && !p->o.plain && p->k_serial != 0 &&
		  p->k_serial == circ_run_serial(p->main) && p->k_start == stage &&
		  p->k_gen == p->gen;
	p->k_serial = 0;
	if (circ_forward(p->main, &f, e) < 0)
		return -1;
	if (p->mode == MODE_CIRCUIT) {
		p->k_serial = circ_run_serial(p->main);
		p->k_start = stage;
		p->k_gen = p->gen;
		memcpy(p->k_keep, p->keep, (size_t)p->g->n_edges);
		memcpy(p->k_alive, p->alive, (size_t)p->U + 1);
	}
	p->clean_below = stage;
	return read_metric(p, circ_run_logits(p->main, NULL), "patched", out, e);
}

/* p->alive for the circuit p->keep: from the logits down, a node lives if
 * one of its kept edges feeds a receiver of a live node. Receivers are
 * numbered in topological order, so one pass from the last one suffices.
 * With a norm after attention and heads outputting their shares of it,
 * every head's share scales with the norm of their sum: a layer's heads
 * live together (its receivers, the last first, come after every
 * receiver that reads the layer's heads). */
static void mark_alive(circ_patcher *p)
{
	const circ_graph *g = p->g;
	int shares = circ_model_config(p->m)->norm_place != CIRC_NORM_PRE && !g->raw_heads,
	    joined = g->n_layer;
	memset(p->alive, 0, (size_t)p->U);
	p->alive[p->U] = 1;
	for (int r = g->n_recv - 1; r >= 0; r--) {
		int node, n_in = circ_graph_recv_n_in(g, r);
		const uint8_t *keep = p->keep + g->recv_first[r];
		circ_graph_recv_info(g, r, NULL, &node);
		if (shares && p->t->node[node].kind == CIRC_NODE_HEAD &&
		    p->t->node[node].layer < joined) {
			int l = joined = p->t->node[node].layer,
			    h0 = circ_topo_node_head(p->t, l, 0), any = 0;
			for (int h = 0; h < g->n_head; h++)
				any |= p->alive[h0 + h];
			for (int h = 0; h < g->n_head; h++)
				p->alive[h0 + h] = (uint8_t)any;
		}
		if (p->alive[node])
			for (int u = 0; u < n_in; u++)
				p->alive[u] |= keep[u] != 0;
	}
}

int circ_patcher_eval(circ_patcher *p, const uint8_t *keep, int stage, double *out, circ_error *e)
{
	int live = 0;
	/* a batch loaded, and both outputs of every node kept */
	CIRC_ASSERT(p->b != NULL && keep != NULL && out != NULL && !p->o.diff_only);
	p->mode = MODE_CIRCUIT;
	p->keep = keep;
	mark_alive(p);
	for (int u = 0; u < p->U && !live; u++)
		live = p->alive[u];
	if (!live && p->o.ablation == CIRC_ABL_RESAMPLE) {
		/* logits reads every node's reference output: the reference run */
		memcpy(out, p->m_ref, (size_t)p->b->B * sizeof *out);
		return 0;
	}
	if (!live)
		/* Only the logits read patched inputs (every other receiver
		 * belongs to a dead node, left unpatched): their input is
		 * R(2L) whatever the stages below hold, so the forward resumes
		 * at the logits, keeping the clean run below. Starting lower
		 * gives the same bytes for the whole cost of a forward, and
		 * leaves main without its clean prefix, so that every later
		 * forward of the batch started at stage 0 (zero and mean
		 * ablation ran at half the speed of resampling). */
		stage = circ_topo_stage_final(p->t);
	return patched_forward(p, stage, out, e);
}

int circ_patcher_eval_edge(circ_patcher *p, int64_t edge, double *out, circ_error *e)
{
	CIRC_ASSERT(p->b != NULL && edge >= 0 && edge < p->g->n_edges && !p->o.diff_only);
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
	CIRC_ASSERT(!p->o.diff_only || node == 0);
	return p->clean_out + (size_t)node * (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
}

const float *circ_patcher_ref_out(const circ_patcher *p, int node)
{
	if (p->o.diff_only) {
		CIRC_ASSERT(node == 0);
		return p->ref_in;
	}
	return p->ref_out + (size_t)node * (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
}

const float *circ_patcher_diff(const circ_patcher *p, int node)
{
	if (!p->o.diff_only || !p->b)
		return NULL;
	return p->ref_out + (size_t)node * (size_t)p->b->B * (size_t)p->b->T * (size_t)p->C;
}

size_t circ_patcher_bytes(const circ_patcher *p)
{
	size_t n = p->out_cap / (size_t)p->U, f = 0; /* floats per node */
	f += p->ref_out ? p->out_cap : 0;
	f += p->clean_out ? (p->o.diff_only ? n : p->out_cap) : 0;
	f += p->ref_in ? n : 0;
	f += p->ref_z ? zdiff_floats(p, n) : 0;
	f += p->clean_res ? (size_t)p->S * n : 0;
	f += p->rref ? (size_t)p->S * n : 0;
	f += p->diff ? p->diff_cap : 0;
	f += (size_t)p->n_cbase * n + p->ref_logits_cap;
	return circ_run_arena_bytes(p->main) + f * sizeof(float);
}

size_t circ_patcher_bytes_for(const circ_patcher *p, int B, int T, int n_read)
{
	circ_run_opts ro;
	circ_run_opts_default(&ro);
	ro.keep_nodes = !p->zdiff;
	ro.backward = p->o.backward;
	ro.keep_recv_grads = !p->o.stage_grads;
	size_t n = (size_t)B * (size_t)T * (size_t)p->C, U = (size_t)p->U, S = (size_t)p->S;
	size_t f = U * n;			     /* ref_out */
	f += p->o.diff_only ? 2 * n : U * n + S * n; /* clean_out, ref_in / clean_res */
	f += p->zdiff ? zdiff_floats(p, n) : 0;	     /* ref_z */
	f += (size_t)n_read * (size_t)p->V;	     /* the reference logits (read rows) */
	f += p->g->raw_heads ? 4 * n : 0;	     /* raw_buf */
	return circ_run_bytes_for(p->m, B, T, n_read, &ro) + f * sizeof(float);
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
	return p->clean_below > circ_topo_stage_final(p->t);
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
