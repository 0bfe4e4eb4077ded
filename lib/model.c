/*
 * model: numbering and runs (see model.h for the conventions and the API
 * contract; the forward is in model_forward.c, the backward in
 * model_backward.c, config and weights in model_config.c and
 * model_weights.c).
 *
 * The run. One anonymous mapping holds every activation of a run, carved
 * into buffers by run_layout() from the config and the largest batch
 * actually seen (made at the first forward, remade larger only when a
 * larger batch comes, its length rounded up to 16 tokens), not the largest
 * the run was made for (a tool passes the model's context, 1024 tokens, for
 * prompts of 16); pages a forward never touches (full logits, say, when
 * only the last position is read) cost nothing. Per stage s (2l attention, 2l+1 MLP, 2L final):
 *   resid[s]     (B, T, C) the residual entering the stage
 *   mean/rstd[s] (B, T)    LayerNorm statistics of the stage's shared input
 *   qkv[l] (B, T, 3C), att[l] (B, H, T, T), z[l] (B, T, C): attention
 *   fc[l] (B, T, F): the MLP's pre-activation
 *   node[u] (B, T, C): each upstream node's output
 * Buffers are sized for max_b * max_t rows (the layout's) and used as
 * (B*T) contiguous rows for the current B and T.
 *
 * Receiver deltas. A q/k/v receiver with a delta gets its own LayerNorm of
 * (residual + delta) and its own D-column slice of the QKV projection,
 * overwriting the shared result in qkv[l]; its LayerNorm statistics live
 * after its delta buffer. The m and logits receivers have one LayerNorm
 * each, so a delta there just changes that LayerNorm's input.
 *
 * Threads: everything parallel runs on the run's circ_pool: GEMMs are cut
 * into one part per thread (OpenBLAS single-threaded in each), row and
 * batch kernels split their rows. The wrappers that do so are here, shared
 * by the forward and the backward (declared in model_impl.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kernels.h"
#include "model_impl.h"

/* ================================================================ numbering */

int model_topology_make(circ_model *m, circ_error *e)
{
	circ_topo_desc d;
	circ_topo_desc_init(&d, m->cfg.n_layer, m->cfg.n_head);
	if (model_is_family(m)) {
		d.block = m->cfg.parallel_residual ? CIRC_BLOCK_PARALLEL : CIRC_BLOCK_SEQUENTIAL;
		d.n_kv_head = m->gqa_grouped ? circ_config_kv_heads(&m->cfg) : m->cfg.n_head;
		d.raw_heads = m->raw_heads;
		m->topo = circ_topology_new(&d, e);
		return m->topo ? 0 : -1;
	}
	m->topo = circ_topology_new(&d, e);
	if (!m->topo)
		return -1;
	/* the GPT-2 forward's own layout: stage 2l, 2l+1, 2L; a layer's q/k/v
	 * receivers from its first, head by head */
	CIRC_ASSERT(m->topo->n_stage == 2 * m->cfg.n_layer + 1);
	CIRC_ASSERT(circ_topo_recv_head(m->topo, 0, 0, CIRC_RECV_Q) == 0 &&
		    circ_topo_recv_mlp(m->topo, 0) == 3 * m->cfg.n_head);
	return 0;
}

const circ_topology *circ_model_topology(const circ_model *m)
{
	return m->topo;
}

int circ_model_n_up(const circ_model *m)
{
	return m->topo->n_up;
}

int circ_model_n_recv(const circ_model *m)
{
	return m->topo->n_recv;
}

int circ_node_input(const circ_model *m)
{
	return circ_topo_node_input(m->topo);
}

int circ_node_head(const circ_model *m, int layer, int head)
{
	return circ_topo_node_head(m->topo, layer, head);
}

int circ_node_mlp(const circ_model *m, int layer)
{
	return circ_topo_node_mlp(m->topo, layer);
}

int circ_recv_qkv(const circ_model *m, int layer, int head, circ_recv_kind k)
{
	CIRC_ASSERT(k == CIRC_RECV_Q || k == CIRC_RECV_K || k == CIRC_RECV_V);
	return circ_topo_recv_head(m->topo, layer, head, k);
}

int circ_recv_mlp(const circ_model *m, int layer)
{
	return circ_topo_recv_mlp(m->topo, layer);
}

int circ_recv_logits(const circ_model *m)
{
	return circ_topo_recv_logits(m->topo);
}

int circ_recv_stage(const circ_model *m, int recv)
{
	CIRC_ASSERT(recv >= 0 && recv < m->topo->n_recv);
	return m->topo->recv[recv].stage;
}

int circ_node_stage(const circ_model *m, int node)
{
	CIRC_ASSERT(node >= 0 && node < m->topo->n_up);
	return m->topo->node[node].stage;
}

/* ================================================================ runs */

void circ_run_opts_default(circ_run_opts *o)
{
	memset(o, 0, sizeof *o);
	o->threads = 1;
	o->keep_nodes = 1;
	o->keep_recv_grads = 1;
}

void circ_fwd_init(circ_fwd *f)
{
	memset(f, 0, sizeof *f);
	f->read = CIRC_READ_LAST;
}

/* Size table: each buffer rounded up to 64 bytes. With base == NULL only
 * counts; else points the fields into base. */
static size_t run_layout(circ_run *r, char *base)
{
	size_t off = 0, rows = r->rows, C = (size_t)r->C, L = (size_t)r->L, S = 2 * L + 1;
	size_t Q = (size_t)r->H * (size_t)r->D, stage_recv = 0;
	/* per-layer activations: every layer's, or one layer's (one_layer) */
	size_t LL = r->o.one_layer ? 1 : L;
	int fam = model_is_family(r->m);
	for (int s = 0; s < r->m->topo->n_stage; s++)
		if (r->m->topo->stage[s].kind != CIRC_STAGE_FINAL &&
		    (size_t)r->m->topo->stage[s].n_recv > stage_recv)
			stage_recv = (size_t)r->m->topo->stage[s].n_recv;
#define CARVE(field, type, count)                                                                  \
	do {                                                                                       \
		size_t bytes_ = ((size_t)(count) * sizeof(type) + 63) & ~(size_t)63;               \
		if (base)                                                                          \
			r->field = (type *)(void *)(base + off);                                   \
		off += bytes_;                                                                     \
	} while (0)
	CARVE(tokens, int32_t, rows);
	CARVE(resid, float, S *rows *C);
	CARVE(mean, float, S *rows);
	CARVE(rstd, float, S *rows);
	if (!fam) {
		CARVE(qkv, float, LL *rows * 3 * C);
		CARVE(z, float, LL *rows *C);
		CARVE(fc, float, LL *rows * r->F);
	} else {
		CARVE(fq, float, LL *rows *Q);
		CARVE(fk, float, LL *rows *Q);
		CARVE(fv, float, LL *rows *Q);
		CARVE(fqr, float, LL *rows *Q);
		CARVE(fkr, float, LL *rows *Q);
		CARVE(fz, float, LL *rows *Q);
		if (r->m->cfg.norm_place != CIRC_NORM_PRE) {
			CARVE(fA, float, LL *rows *C);
			CARVE(fM, float, LL *rows *C);
		}
		CARVE(fa, float, LL *rows * r->F);
		CARVE(fb, float, LL *rows * r->F);
		CARVE(f_s1, float, rows *C);
		CARVE(f_s2, float, rows *Q);
		if (r->m->fw.narrow_max)
			CARVE(f_w, float, r->m->fw.narrow_max);
	}
	CARVE(att, float, LL *(size_t)r->max_b * r->H * r->max_t * r->max_t);
	CARVE(s_ln, float, rows *C);
	CARVE(s_ln2, float, rows *C);
	CARVE(s_gelu, float, rows * r->F);
	CARVE(lnf, float, rows *C);
	CARVE(lnf_mean, float, rows);
	CARVE(lnf_rstd, float, rows);
	CARVE(logits, float, rows * r->V);
	CARVE(reads, circ_read, rows);
	for (int u = 0; u < r->U; u++) {
		int is_head = r->m->topo->node[u].kind == CIRC_NODE_HEAD;
		if (is_head && !r->o.keep_nodes) {
			if (base)
				r->node[u] = NULL;
			continue;
		}
		CARVE(node[u], float, rows *C);
	}
	if (r->o.backward) {
		CARVE(dresid, float, S *rows *C);
		CARVE(drecv, float, (r->o.keep_recv_grads ? (size_t)r->R : stage_recv) * rows * C);
		CARVE(d_ln, float, rows *C);
		if (!fam) {
			CARVE(d_qkv, float, rows * 3 * C);
			CARVE(d_z, float, rows *C);
			CARVE(d_fc, float, rows * r->F);
		} else {
			CARVE(f_dq, float, rows *Q);
			CARVE(f_dk, float, rows *Q);
			CARVE(f_dv, float, rows *Q);
			CARVE(f_dz, float, rows *Q);
			CARVE(f_dz2, float, rows *Q);
			CARVE(f_dfull, float, rows *Q);
			CARVE(f_dA, float, rows *C);
			CARVE(f_da, float, rows * r->F);
			CARVE(f_db, float, rows * r->F);
			CARVE(f_dlog, float, rows * r->V);
		}
	}
#undef CARVE
	return off;
}

/* The model's shape and the options, what run_layout reads besides the
 * batch. */
static void run_shape(circ_run *r, const circ_model *m, const circ_run_opts *o)
{
	const circ_config *c = &m->cfg;
	r->m = m;
	r->o = *o;
	r->L = c->n_layer;
	r->H = c->n_head;
	r->C = c->n_embd;
	r->D = circ_config_head_dim(c);
	r->F = c->n_inner;
	r->V = c->vocab_size;
	r->U = circ_model_n_up(m);
	r->R = circ_model_n_recv(m);
}

size_t circ_run_bytes_for(const circ_model *m, int B, int T, int n_read, const circ_run_opts *o)
{
	const circ_config *c = &m->cfg;
	circ_run r;
	circ_run_opts defo;
	if (!o) {
		circ_run_opts_default(&defo);
		o = &defo;
	}
	memset(&r, 0, sizeof r);
	run_shape(&r, m, o);
	r.max_b = B < 1 ? 1 : B;
	r.max_t = (T + 15) & ~15;
	if (r.max_t > c->n_ctx)
		r.max_t = c->n_ctx;
	r.rows = (size_t)r.max_b * (size_t)r.max_t;
	{
		size_t bytes = run_layout(&r, NULL); /* counts only: writes no field of r */
		size_t nr = n_read < 0 ? 0 : (size_t)n_read < r.rows ? (size_t)n_read : r.rows;
		/* the logits, and the family backward's dlogits, are written
		 * at the read rows only */
		size_t per =
		    (model_is_family(m) && o->backward ? 2 : 1) * (size_t)r.V * sizeof(float);
		return bytes - (r.rows - nr) * per;
	}
}

circ_run *circ_run_new(const circ_model *m, int max_b, int max_t, const circ_run_opts *o,
		       circ_error *e)
{
	circ_run *r;
	circ_run_opts defo;
	const circ_config *c = &m->cfg;
	if (!o) {
		circ_run_opts_default(&defo);
		o = &defo;
	}
	if (max_b < 1 || max_t < 1) {
		circ_errorf(e, "batch size %d and length %d must be positive", max_b, max_t);
		return NULL;
	}
	if (max_t > c->n_ctx) {
		circ_errorf(e, "length %d is longer than the model's context (%d)", max_t,
			    c->n_ctx);
		return NULL;
	}
	if (max_t > CIRC_ATTN_MAX_T) {
		circ_errorf(e, "length %d is over circ's limit (%d)", max_t, CIRC_ATTN_MAX_T);
		return NULL;
	}
	if ((size_t)max_b * (size_t)max_t > (size_t)1 << 26) {
		circ_errorf(e, "batch %d x %d is too large", max_b, max_t);
		return NULL;
	}
	if (o->one_layer && o->backward) {
		circ_errorf(e, "a run that keeps one layer's activations has no backward");
		return NULL;
	}
	r = circ_xcalloc(1, sizeof *r);
	run_shape(r, m, o);
	r->lim_b = max_b;
	r->lim_t = max_t;
	r->threads = o->threads < 1 ? 1 : o->threads;
	r->node = circ_xcalloc((size_t)r->U, sizeof *r->node);
	r->delta = circ_xcalloc((size_t)r->R, sizeof *r->delta);
	r->delta_on = circ_xcalloc((size_t)r->R, 1);
	r->qkv_keep = circ_xcalloc((size_t)r->R, 1);
	r->dstat = circ_xcalloc((size_t)r->R, sizeof *r->dstat);
	r->dsum_base = circ_xcalloc((size_t)r->R, sizeof *r->dsum_base);
	r->dsum_terms = circ_xcalloc((size_t)r->R * (size_t)r->U, sizeof *r->dsum_terms);
	r->dsum_k = circ_xcalloc((size_t)r->R, sizeof *r->dsum_k);
	r->dsum_sign = circ_xcalloc((size_t)r->R, sizeof *r->dsum_sign);
	r->dsum_abs = circ_xcalloc((size_t)r->R, sizeof *r->dsum_abs);
	r->pool = circ_pool_new(r->threads);
	r->valid = -1;
	r->att_layer = -1;
	r->in_fwd = -1;
	return r;
}

/* Frees the receivers' delta buffers (sized by the layout). */
static void free_deltas(circ_run *r)
{
	for (int i = 0; i < r->R; i++) {
		free(r->delta[i]);
		free(r->dstat[i]);
		r->delta[i] = NULL;
		r->dstat[i] = NULL;
		r->delta_on[i] = CIRC_DELTA_NONE;
	}
}

int model_run_fit(circ_run *r, int B, int T, circ_error *e)
{
	circ_run old = *r;
	int nb, nt;
	if (B < 1 || B > r->lim_b)
		return circ_errorf(e, "batch of %d sequences (this run takes 1-%d)", B, r->lim_b);
	if (T < 1 || T > r->lim_t)
		return circ_errorf(e, "sequences of %d tokens (this run takes 1-%d)", T, r->lim_t);
	if (B <= r->max_b && T <= r->max_t)
		return 0;
	nb = B > r->max_b ? B : r->max_b;
	nt = (T + 15) & ~15;
	nt = nt > r->lim_t ? r->lim_t : nt;
	nt = nt > r->max_t ? nt : r->max_t;
	r->max_b = nb;
	r->max_t = nt;
	r->rows = (size_t)nb * (size_t)nt;
	r->arena_bytes = run_layout(r, NULL);
	r->arena =
	    /* NORESERVE: untouched pages cost nothing, and the kernel's
	     * overcommit heuristic must not refuse the mapping for its size */
	    mmap(NULL, r->arena_bytes, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r->arena == MAP_FAILED) {
		size_t want = r->arena_bytes;
		*r = old;
		return circ_errorf(e, "cannot allocate %zu bytes of activations: %s", want,
				   strerror(errno));
	}
	if (old.arena)
		munmap(old.arena, old.arena_bytes);
	circ_advise_huge(r->arena, r->arena_bytes);
	run_layout(r, r->arena);
	free_deltas(r);
	r->valid = -1;
	r->att_layer = -1;
	r->have_bwd = 0;
	return 0;
}

void circ_run_free(circ_run *r)
{
	if (!r)
		return;
	if (r->arena)
		munmap(r->arena, r->arena_bytes);
	free_deltas(r);
	free(r->delta);
	free(r->dstat);
	free(r->delta_on);
	free(r->bwd_ng);
	free(r->qkv_keep);
	free(r->dsum_base);
	free(r->dsum_terms);
	free(r->dsum_k);
	free(r->dsum_sign);
	free(r->dsum_abs);
	free(r->s_blk);
	free(r->node);
	circ_pool_free(r->pool);
	free(r);
}

size_t circ_run_arena_bytes(const circ_run *r)
{
	return r->arena_bytes;
}

const circ_model *circ_run_model(const circ_run *r)
{
	return r->m;
}

struct circ_pool *circ_run_pool(circ_run *r)
{
	return r->pool;
}

int circ_run_b(const circ_run *r)
{
	return r->valid >= 0 ? r->B : 0;
}

int circ_run_t(const circ_run *r)
{
	return r->valid >= 0 ? r->T : 0;
}

void circ_run_set_threads(circ_run *r, int threads)
{
	threads = threads < 1 ? 1 : threads;
	if (threads != r->threads) {
		circ_pool_free(r->pool);
		r->pool = circ_pool_new(threads);
		r->threads = threads;
	}
}

/* ---- accessors ---- */

const float *circ_run_node_out(const circ_run *r, int node)
{
	if (node < 0 || node >= r->U)
		return NULL;
	return r->node[node];
}

const float *circ_run_resid(const circ_run *r, int stage)
{
	if (stage < 0 || stage > 2 * r->L)
		return NULL;
	return resid_at(r, stage);
}

const float *circ_run_attn(const circ_run *r, int layer)
{
	if (layer < 0 || layer >= r->L || (r->o.one_layer && layer != r->att_layer))
		return NULL;
	return model_att(r, layer);
}

const float *circ_run_logits(const circ_run *r, int *n_rows)
{
	if (n_rows)
		*n_rows = r->read_none ? 0 : r->n_read;
	return r->logits;
}

const circ_read *circ_run_reads(const circ_run *r, int *n_rows)
{
	if (n_rows)
		*n_rows = r->n_read;
	return r->reads;
}

/* Receiver recv's buffers: its LayerNorm statistics, and with store its
 * delta (a delta given as a sum of rows needs none). */
void model_delta_buffers(circ_run *r, int recv, int store)
{
	if (!r->dstat[recv])
		r->dstat[recv] = circ_xcalloc(2 * r->rows, sizeof(float));
	if (store && !r->delta[recv])
		r->delta[recv] = circ_xmalloc_aligned(r->rows * (size_t)r->C * sizeof(float));
}

static void store_sum(circ_run *r, int recv);

static float *run_delta(circ_run *r, int recv, int zero)
{
	if (recv < 0 || recv >= r->R || r->in_fwd < 0 || circ_recv_stage(r->m, recv) < r->in_fwd)
		return NULL;
	model_delta_buffers(r, recv, 1);
	if (r->delta_on[recv] == CIRC_DELTA_SUM)
		store_sum(r, recv);
	if (!r->delta_on[recv]) {
		if (zero)
			memset(r->delta[recv], 0, bt(r) * r->C * sizeof(float));
		r->delta_on[recv] = CIRC_DELTA_STORED;
	}
	return r->delta[recv];
}

float *circ_run_delta(circ_run *r, int recv)
{
	return run_delta(r, recv, 1);
}

float *circ_run_delta_raw(circ_run *r, int recv)
{
	return run_delta(r, recv, 0);
}

const float *circ_run_get_delta(const circ_run *r, int recv)
{
	if (recv < 0 || recv >= r->R || r->delta_on[recv] != CIRC_DELTA_STORED)
		return NULL;
	return r->delta[recv];
}

/* Rows [row0, row0 + nrows) of receiver recv's input (x = the residual:
 * x + the delta sum, or the input sum itself) into dst, whose row 0 is row
 * row0; x = NULL: the delta alone (an input sum less the residual). The
 * additions run in one fixed order: x, base, then the terms one by one
 * (an input sum: base, the terms, then minus the residual). */
void model_form_sum(const circ_run *r, int recv, const float *x, float *dst, size_t row0,
		    size_t nrows)
{
	size_t o = row0 * (size_t)r->C, len = nrows * (size_t)r->C;
	const float *const *terms = r->dsum_terms + (size_t)recv * (size_t)r->U;
	const float *base = r->dsum_base[recv] ? r->dsum_base[recv] + o : NULL, *a, *res = NULL;
	const float *src[8];
	int k = r->dsum_k[recv], j = 0;
	if (r->dsum_abs[recv]) {
		a = base;
		if (!x)
			res = resid_at(r, circ_recv_stage(r->m, recv)) + o;
		base = NULL;
	} else if (x) {
		a = x + o;
	} else {
		a = base;
		base = NULL;
	}
	if (!a) {
		memset(dst, 0, len * sizeof *dst);
		a = dst;
	}
	do {
		int g = k - j < 8 ? k - j : 8;
		for (int i = 0; i < g; i++)
			src[i] = terms[j + i] + o;
		(r->dsum_sign[recv] < 0 ? circ_vsum_neg : circ_vsum)(dst, a, base, src, g, len);
		a = dst;
		base = NULL;
		j += g;
	} while (j < k);
	if (res)
		circ_vsum_neg(dst, dst, NULL, &res, 1, len);
}

#define SUM_ROWS 64 /* rows per task of store_sum */

typedef struct rowsum_task {
	const circ_run *r;
	int recv;
	const float *x;
	float *dst;
	size_t n; /* rows */
} rowsum_task;

static void rowsum_part(void *v, size_t b, size_t e)
{
	const rowsum_task *t = v;
	size_t C = (size_t)t->r->C;
	for (size_t k = b; k < e; k++) {
		size_t i0 = k * SUM_ROWS, m = t->n - i0 < SUM_ROWS ? t->n - i0 : SUM_ROWS;
		model_form_sum(t->r, t->recv, t->x, t->dst + i0 * C, i0, m);
	}
}

/* dst (n rows) = x + receiver recv's delta sum, over the pool. */
void model_p_form_sum(const circ_run *r, int recv, const float *x, float *dst)
{
	rowsum_task t = {r, recv, x, dst, bt(r)};
	circ_pool_for(r->pool, (t.n + SUM_ROWS - 1) / SUM_ROWS, rowsum_part, &t);
}

/* A delta sum becomes a stored delta. */
static void store_sum(circ_run *r, int recv)
{
	model_delta_buffers(r, recv, 1);
	model_p_form_sum(r, recv, NULL, r->delta[recv]);
	r->delta_on[recv] = CIRC_DELTA_STORED;
}

static int set_sum(circ_run *r, int recv, const float *base, circ_sign sign, int k,
		   const float *const *terms, int abs)
{
	CIRC_ASSERT(k <= 0 || terms != NULL);
	if (recv < 0 || recv >= r->R || r->in_fwd < 0 || circ_recv_stage(r->m, recv) < r->in_fwd ||
	    k < 0 || k > r->U || (sign != CIRC_SIGN_PLUS && sign != CIRC_SIGN_MINUS) ||
	    (abs && !base))
		return -1;
	model_delta_buffers(r, recv, 0);
	if (abs)
		r->delta_on[recv] = CIRC_DELTA_NONE; /* the input is given whole */
	if (r->delta_on[recv] == CIRC_DELTA_SUM)
		store_sum(r, recv);
	r->dsum_base[recv] = base;
	r->dsum_k[recv] = k;
	r->dsum_sign[recv] = (signed char)sign;
	r->dsum_abs[recv] = (uint8_t)abs;
	memcpy(r->dsum_terms + (size_t)recv * (size_t)r->U, terms, (size_t)k * sizeof *terms);
	if (r->delta_on[recv] == CIRC_DELTA_STORED) {
		/* onto a delta already there: add the sum into it */
		model_p_form_sum(r, recv, r->delta[recv], r->delta[recv]);
		return 0;
	}
	r->delta_on[recv] = CIRC_DELTA_SUM;
	/* a run that may go backward, or that checks the fast kernels, keeps
	 * every delta */
	if (r->o.backward || r->o.reference)
		store_sum(r, recv);
	return 0;
}

int circ_run_delta_sum(circ_run *r, int recv, const float *base, circ_sign sign, int k,
		       const float *const *terms)
{
	return set_sum(r, recv, base, sign, k, terms, 0);
}

int circ_run_input_sum(circ_run *r, int recv, const float *base, circ_sign sign, int k,
		       const float *const *terms)
{
	return set_sum(r, recv, base, sign, k, terms, 1);
}

int circ_run_keep_qkv(circ_run *r, int recv)
{
	circ_recv_kind k;
	if (recv < 0 || recv >= r->R || model_is_family(r->m) || r->o.reference || r->o.backward ||
	    r->o.one_layer || !r->o.keep_nodes || !circ_gemm_acc_fast(r->D) || r->in_fwd < 0 ||
	    r->in_fwd != r->s0 || r->s0_prev != r->s0 || circ_recv_stage(r->m, recv) != r->in_fwd)
		return -1;
	k = r->m->topo->recv[recv].kind;
	if (k != CIRC_RECV_Q && k != CIRC_RECV_K && k != CIRC_RECV_V)
		return -1;
	r->qkv_keep[recv] = 1;
	r->delta_on[recv] = CIRC_DELTA_NONE;
	return 0;
}

unsigned long circ_run_serial(const circ_run *r)
{
	return r->serial;
}

/* Input of a receiver into dst (residual + delta), or the residual itself. */
void model_final_inputs(const circ_run *r, const float *x, float *dst)
{
	model_read_inputs(r, circ_recv_logits(r->m), x, dst);
}

void model_read_inputs(const circ_run *r, int recv, const float *x, float *dst)
{
	size_t C = (size_t)r->C;
	for (int i = 0; i < r->n_read; i++) {
		size_t row = (size_t)r->reads[i].b * r->T + (size_t)r->reads[i].t;
		float *d = dst + (size_t)i * C;
		if (r->delta_on[recv] == CIRC_DELTA_SUM) {
			model_form_sum(r, recv, x, d, row, 1);
			continue;
		}
		memcpy(d, x + row * C, C * sizeof(float));
		if (r->delta_on[recv] == CIRC_DELTA_STORED)
			for (size_t c = 0; c < C; c++)
				d[c] += r->delta[recv][row * C + c];
	}
}

const float *model_recv_input(const circ_run *r, int recv, const float *x, float *dst)
{
	size_t n = bt(r) * r->C;
	const float *d = r->delta[recv];
	if (!r->delta_on[recv])
		return x;
	if (r->delta_on[recv] == CIRC_DELTA_SUM) {
		model_p_form_sum(r, recv, x, dst);
		return dst;
	}
	for (size_t i = 0; i < n; i++)
		dst[i] = x[i] + d[i];
	return dst;
}

/* ---- parallel kernel wrappers ---- */

typedef struct ln_task {
	const circ_run *r;
	float *out, *mean, *rstd;
	const float *inp, *w, *b;
	int C;
	float eps;
} ln_task;

static void ln_fwd_part(void *v, size_t b, size_t e)
{
	ln_task *t = v;
	size_t C = (size_t)t->C;
	(t->r->o.reference ? circ_layernorm_fwd_ref : circ_layernorm_fwd)(
	    t->out + b * C, t->C, t->mean + b, t->rstd + b, t->inp + b * C, t->C, t->w, t->b,
	    (int)(e - b), t->C, t->eps);
}

void model_p_layernorm(const circ_run *r, float *out, float *mean, float *rstd, const float *inp,
		       const float *w, const float *b, size_t n)
{
	ln_task t = {r, out, mean, rstd, inp, w, b, r->C, (float)r->m->cfg.layer_norm_epsilon};
	circ_pool_for(r->pool, n, ln_fwd_part, &t);
}

typedef struct lnb_task {
	const circ_run *r;
	float *dinp, *dacc;
	const float *dout, *inp, *add, *mean, *rstd, *w;
	int C, set;
} lnb_task;

static void ln_bwd_part(void *v, size_t b, size_t e)
{
	lnb_task *t = v;
	size_t C = (size_t)t->C;
	(t->r->o.reference ? circ_layernorm_bwd_add_ref : circ_layernorm_bwd_add)(
	    t->dinp + b * C, t->dacc ? t->dacc + b * C : NULL, t->dout + b * C, t->inp + b * C,
	    t->add ? t->add + b * C : NULL, t->mean + b, t->rstd + b, t->w, (int)(e - b), t->C,
	    t->set);
}

/* LayerNorm input gradient over the pool; the forward's input was inp + add
 * (add NULL: inp alone), summed on the fly. */
void model_p_layernorm_bwd(const circ_run *r, float *dinp, float *dacc, const float *dout,
			   const float *inp, const float *add, const float *mean, const float *rstd,
			   const float *w, size_t n, int set)
{
	lnb_task t = {r, dinp, dacc, dout, inp, add, mean, rstd, w, r->C, set};
	circ_pool_for(r->pool, n, ln_bwd_part, &t);
}

#define EW_CHUNK 4096

void model_gelu_part(void *v, size_t b, size_t e)
{
	ew_task *t = v;
	size_t lo = b * EW_CHUNK, n = (e - b) * EW_CHUNK;
	(t->r->o.reference ? circ_gelu_fwd_ref : circ_gelu_fwd)(t->out + lo, t->a + lo, n,
								t->exact);
}

void model_dgelu_part(void *v, size_t b, size_t e)
{
	ew_task *t = v;
	size_t lo = b * EW_CHUNK, n = (e - b) * EW_CHUNK;
	if (t->r->o.reference) {
		float *tmp = circ_xcalloc(n, sizeof *tmp);
		circ_gelu_bwd_ref(tmp, t->a + lo, t->out + lo, n, t->exact);
		memcpy(t->out + lo, tmp, n * sizeof *tmp);
		free(tmp);
	} else {
		circ_gelu_bwd_inplace(t->out + lo, t->a + lo, n, t->exact);
	}
}

/* n must be a multiple of EW_CHUNK for the pool split; the remainder runs here. */
void model_p_elementwise(const circ_run *r, void (*part)(void *, size_t, size_t), ew_task *t,
			 size_t n)
{
	size_t chunks = n / EW_CHUNK, rem = n % EW_CHUNK;
	circ_pool_for(r->pool, chunks, part, t);
	if (rem) {
		ew_task t2 = *t;
		t2.out += chunks * EW_CHUNK;
		t2.a += chunks * EW_CHUNK;
		/* one partial chunk: call the kernels directly */
		if (part == model_gelu_part)
			(r->o.reference ? circ_gelu_fwd_ref : circ_gelu_fwd)(t2.out, t2.a, rem,
									     t->exact);
		else if (r->o.reference) {
			float *tmp = circ_xcalloc(rem, sizeof *tmp);
			circ_gelu_bwd_ref(tmp, t2.a, t2.out, rem, t->exact);
			memcpy(t2.out, tmp, rem * sizeof *tmp);
			free(tmp);
		} else {
			circ_gelu_bwd_inplace(t2.out, t2.a, rem, t->exact);
		}
	}
}

void model_attn_fwd_part(void *v, size_t b, size_t e)
{
	attn_task *t = v;
	const circ_run *r = t->r;
	size_t T = (size_t)r->T, C = (size_t)r->C;
	if (r->o.reference)
		circ_attn_fwd_ref(t->z + b * T * C, t->att + b * r->H * T * T,
				  t->qkv + b * T * 3 * C, (int)(e - b), r->T, r->C, r->H);
	else
		circ_attn_fwd_heads(t->z + b * T * C, t->att + b * r->H * T * T,
				    t->qkv + b * T * 3 * C, (int)(e - b), r->T, r->C, r->H,
				    t->skip);
}

void model_attn_bwd_part(void *v, size_t b, size_t e)
{
	attn_task *t = v;
	const circ_run *r = t->r;
	size_t T = (size_t)r->T, C = (size_t)r->C;
	(r->o.reference ? circ_attn_bwd_ref : circ_attn_bwd)(
	    t->dqkv + b * T * 3 * C, t->dz + b * T * C, t->qkv + b * T * 3 * C,
	    t->catt + b * r->H * T * T, (int)(e - b), r->T, r->C, r->H);
}

/* out (n, C) = a + sum of the k sources + bias, rows split over the pool. */
typedef struct sum_task {
	float *out;
	const float *a;
	const float *const *src;
	int k;
	const float *bias;
	int C;
} sum_task;

static void sum_part(void *v, size_t b, size_t e)
{
	sum_task *t = v;
	size_t C = (size_t)t->C;
	const float *src[MAX_HEAD];
	for (size_t i = b; i < e; i++) {
		for (int j = 0; j < t->k; j++)
			src[j] = t->src[j] + i * C;
		circ_vsum(t->out + i * C, t->a + i * C, t->bias, src, t->k, C);
	}
}

void model_p_sum(const circ_run *r, float *out, const float *a, const float *const *src, int k,
		 const float *bias, size_t n)
{
	sum_task t = {out, a, src, k, bias, r->C};
	circ_pool_for(r->pool, n, sum_part, &t);
}

/* GEMMs are split over the run's pool, OpenBLAS running one thread in
 * each part: one set of threads for the whole forward, which sleep when
 * idle (OpenBLAS's own threads spin between calls, taking the core from
 * the pool's work on a machine with few cores). C is cut along its longer
 * side into one part per thread, in multiples of 16 columns or rows; for
 * OpenBLAS (circ_gemm without AVX-512, or with a transposed a) into
 * GEMM_PARTS parts whatever the thread count, shared out among the
 * threads: OpenBLAS's kernels for some cores (Haswell's) sum an element in
 * an order that depends on where its block starts, so cutting by the
 * thread count made the bits depend on it. circ's own kernels sum every
 * element in one order wherever the cut falls. */
typedef struct gemm_task {
	int ta, tb, m, n, k, lda, ldb, ldc, P, by_cols;
	const float *a, *b;
	float beta;
	float *c;
	model_epi ep;	     /* what each part does with its block besides the GEMM */
	const uint16_t *bw;  /* b's bf16 twin (bf16 compute, ta 0), or NULL */
	const uint16_t *w16; /* b as 16-bit weights (model_gemm_w16), or NULL */
	int w16_bf16;
	int panel;	 /* 1: circ's panel kernels (b is a packed-weights matrix) */
	const float *pk; /* its panels (packed), or NULL: read as it lies */
	size_t pks;
} gemm_task;

#define GEMM_SPLIT_MIN (1 << 20) /* m * n * k below which one thread does it */
#define GEMM_PARTS     6	 /* OpenBLAS's parts: 1, 2, 3 or 6 threads share them evenly */

/* Rows i0 .. i1-1, columns j0 .. j1-1 of the product: the bias, the GEMM,
 * the activation, the residual sum, so each block is still in this core's
 * caches when the next step reads it. */
static void gemm_block(const gemm_task *t, int i0, int i1, int j0, int j1)
{
	const model_epi *ep = &t->ep;
	size_t ldc = (size_t)t->ldc, w = (size_t)(j1 - j0);
	float *c = t->c + (size_t)i0 * ldc + j0;
	if (ep->bias)
		for (int i = i0; i < i1; i++)
			memcpy(c + (size_t)(i - i0) * ldc, ep->bias + j0, w * sizeof(float));
	if (t->w16)
		circ_gemm_w16(t->tb, i1 - i0, j1 - j0, t->k, t->a + (size_t)i0 * t->lda, t->lda,
			      t->tb ? t->w16 + (size_t)j0 * t->ldb : t->w16 + j0, t->ldb,
			      t->w16_bf16, ep->bias ? 1.0f : t->beta, c, t->ldc);
	else if (t->panel && t->pk)
		circ_gemm_pk(!ep->bias && t->beta == 0.0f, i1 - i0, j1 - j0, t->k,
			     t->a + (size_t)i0 * t->lda, t->lda, t->pk + (size_t)(j0 / 64) * t->pks,
			     t->pks, c, t->ldc);
	else if (t->panel)
		circ_gemm_pn(!ep->bias && t->beta == 0.0f, t->tb, i1 - i0, j1 - j0, t->k,
			     t->a + (size_t)i0 * t->lda, t->lda,
			     t->tb ? t->b + (size_t)j0 * t->ldb : t->b + j0, t->ldb, c, t->ldc);
	else if (t->bw)
		circ_gemm_bf16(t->tb, i1 - i0, j1 - j0, t->k, t->a + (size_t)i0 * t->lda, t->lda,
			       t->tb ? t->bw + (size_t)j0 * t->ldb : t->bw + j0, t->ldb,
			       ep->bias ? 1.0f : t->beta, c, t->ldc);
	else
		circ_gemm(t->ta, t->tb, i1 - i0, j1 - j0, t->k, 1.0f,
			  t->ta ? t->a + i0 : t->a + (size_t)i0 * t->lda, t->lda,
			  t->tb ? t->b + (size_t)j0 * t->ldb : t->b + j0, t->ldb,
			  ep->bias ? 1.0f : t->beta, c, t->ldc);
	for (int i = i0; i < i1; i++) {
		const float *ci = c + (size_t)(i - i0) * ldc;
		size_t o = (size_t)i * ldc + j0;
		if (ep->act)
			circ_gelu_fwd(ep->act + o, ci, w, ep->exact);
		if (ep->res)
			circ_vsum(ep->res + o, ep->res_x + o, NULL, &ci, 1, w);
	}
}

static void gemm_part(void *v, size_t p0, size_t p1)
{
	const gemm_task *t = v;
	int len = t->by_cols ? t->n : t->m;
	size_t g = t->pk && t->by_cols ? 63 : 15; /* packed: whole panels */
	for (size_t q = p0; q < p1; q++) {
		int i0 = (int)(((size_t)len * q / (size_t)t->P) & ~g);
		int i1 = q + 1 == (size_t)t->P ? len
					       : (int)(((size_t)len * (q + 1) / (size_t)t->P) & ~g);
		if (i1 <= i0)
			continue;
		if (t->by_cols)
			gemm_block(t, 0, t->m, i0, i1);
		else
			gemm_block(t, i0, i1, 0, t->n);
	}
}

static void gemm_run(const circ_run *r, gemm_task *t)
{
	int P = circ_pool_threads(r->pool);
	int blas = !t->w16 && !t->panel && !t->bw && (t->ta || !circ_gemm_pk_fast());
	if ((P == 1 && !blas) || circ_pool_inside() ||
	    (double)t->m * t->n * t->k < GEMM_SPLIT_MIN || (t->m < 32 && t->n < 32)) {
		gemm_block(t, 0, t->m, 0, t->n);
		return;
	}
	t->P = blas ? GEMM_PARTS : P;
	t->by_cols = t->n >= t->m;
	circ_pool_for(r->pool, (size_t)t->P, gemm_part, t);
}

void model_unembed_bwd(const circ_run *r, const float *dl, size_t n, size_t V, size_t C,
		       model_rows_fn rows, void *ctx, size_t chunk, float *d)
{
	size_t nnz = 0;
	for (size_t q = 0; q < n * V; q++)
		nnz += dl[q] != 0;
	memset(d, 0, n * C * sizeof(float));
	if (nnz * 16 > n * V) {
		for (size_t j0 = 0; j0 < V; j0 += chunk) {
			size_t nj = V - j0 < chunk ? V - j0 : chunk;
			model_gemm(r, 0, 0, (int)n, (int)C, (int)nj, dl + j0, (int)V,
				   rows(ctx, j0, nj), (int)C, 1.0f, d, (int)C);
		}
		return;
	}
	/* the columns with a non-zero entry, ascending */
	unsigned char *on = circ_xcalloc(V, 1);
	for (size_t q = 0; q < n * V; q++)
		if (dl[q] != 0)
			on[q % V] = 1;
	for (size_t j = 0; j < V; j++) {
		if (!on[j])
			continue;
		const float *w = rows(ctx, j, 1);
		for (size_t i = 0; i < n; i++) {
			float a = dl[i * V + j];
			if (a != 0)
				for (size_t c = 0; c < C; c++)
					d[i * C + c] += a * w[c];
		}
	}
	free(on);
}

/* With bf16 compute: t's b as its bf16 twin where it has one (b read with
 * the source's row stride: every weight block the forward passes is). */
static void bf16_b(const circ_run *r, gemm_task *t)
{
	int ld, trans;
	const uint16_t *bw = model_bf16_find(r->m, t->b, &ld, &trans);
	if (!bw)
		return;
	t->bw = bw;
	if (trans) {
		t->tb = !t->tb;
		t->ldb = ld;
	}
}

/* With f32 compute: a product with a packed-weights matrix goes to the
 * panel kernels (model_pk.c), from its panels once it is packed. */
static void panel_b(const circ_run *r, gemm_task *t)
{
	size_t col0;
	model_pk_slot *s = model_pk_find(r->m, t->b, t->tb, t->ldb, t->k, t->n, &col0);
	if (!s)
		return;
	t->panel = 1;
	if (model_pk_use(r, s))
		t->pk = model_pk_panels(s, col0, t->n, &t->pks);
}

void model_gemm(const circ_run *r, int ta, int tb, int m, int n, int k, const float *a, int lda,
		const float *b, int ldb, float beta, float *c, int ldc)
{
	if (r->o.reference) {
		circ_gemm_ref(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
		return;
	}
	gemm_task t = {ta, tb, m, n, k, lda, ldb, ldc, 1, 0, a, b, beta, c, {0}, NULL};
	if (model_bf16_on(r) && !ta)
		bf16_b(r, &t);
	else if (!ta && (beta == 0.0f || beta == 1.0f))
		panel_b(r, &t);
	gemm_run(r, &t);
}

void model_gemm_w(const circ_run *r, int m, int n, int k, const float *a, int lda, const void *w,
		  int ldb, float beta, float *c, int ldc)
{
	gemm_task t = {0, 1, m, n, k, lda, ldb, ldc, 1, 0, a, w, beta, c, {0}, NULL};
	CIRC_ASSERT(model_bf16_on(r));
	bf16_b(r, &t);
	CIRC_ASSERT(t.bw != NULL); /* every weight matrix has a twin */
	gemm_run(r, &t);
}

void model_gemm_w16(const circ_run *r, int tb, int m, int n, int k, const float *a, int lda,
		    const uint16_t *w, int ldw, int bf16, float beta, float *c, int ldc)
{
	gemm_task t = {0, tb, m, n, k, lda, ldw, ldc, 1, 0, a, NULL, beta, c, {0}, NULL, w, bf16};
	CIRC_ASSERT(!r->o.reference && circ_gemm_w16_fast());
	gemm_run(r, &t);
}

/* c (m, n) = bias + a b (every row of c starts as bias), then, where
 * given, act = GELU(c) (exact: erf, else tanh) and res = res_x + c (all
 * with ldc), over the pool as model_gemm cuts it: each part sets,
 * multiplies and finishes its own block, with no serial pass and no
 * second job. */
void model_gemm_epi(const circ_run *r, int m, int n, int k, const float *a, int lda, const float *b,
		    int ldb, float *c, int ldc, const model_epi *ep)
{
	if (r->o.reference) {
		for (int i = 0; i < m; i++) {
			float *ci = c + (size_t)i * ldc;
			memcpy(ci, ep->bias, (size_t)n * sizeof(float));
			circ_gemm_ref(0, 0, 1, n, k, 1.0f, a + (size_t)i * lda, lda, b, ldb, 1.0f,
				      ci, ldc);
			if (ep->act)
				circ_gelu_fwd_ref(ep->act + (size_t)i * ldc, ci, (size_t)n,
						  ep->exact);
			if (ep->res)
				for (int j = 0; j < n; j++)
					ep->res[(size_t)i * ldc + j] =
					    ep->res_x[(size_t)i * ldc + j] + ci[j];
		}
		return;
	}
	gemm_task t = {0, 0, m, n, k, lda, ldb, ldc, 1, 0, a, b, 1.0f, c, *ep, NULL};
	if (model_bf16_on(r))
		bf16_b(r, &t);
	else
		panel_b(r, &t);
	gemm_run(r, &t);
}

/* c (m, n) += a (m, k) b (k, n) on the calling thread (inside a pool
 * task): circ's own kernel where it has one for n columns. */
void model_gemm_acc(const circ_run *r, int m, int n, int k, const float *a, int lda, const float *b,
		    int ldb, float *c, int ldc)
{
	gemm_task t = {0, 0, m, n, k, lda, ldb, ldc, 1, 0, a, b, 1.0f, c, {0}, NULL};
	if (model_bf16_on(r))
		bf16_b(r, &t);
	if (r->o.reference)
		circ_gemm_ref(0, 0, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c, ldc);
	else if (t.bw)
		circ_gemm_bf16(t.tb, m, n, k, a, lda, t.bw, t.ldb, 1.0f, c, ldc);
	else if (!model_pk_gemm(r->m, 0, m, n, k, a, lda, b, ldb, c, ldc))
		circ_gemm_acc(m, n, k, a, lda, b, ldb, c, ldc);
}
