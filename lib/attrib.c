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
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

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

void circ_attrib_patch_opts(circ_attr_method m, circ_patch_opts *o)
{
	o->backward = circ_attr_needs_backward(m);
	o->stage_grads = o->backward;
	o->diff_only = o->backward;
}

struct circ_attrib {
	circ_patcher *p;
	circ_attr_method method;
	int steps;
	double *sum; /* (E) */
	int64_t count;
	const circ_topology *mt; /* the model's (edge level) */
	int U, R, C, V;
	int own_dot;	     /* stage products by circ_gemm_bt_bcast (not GPT-2's) */
	int max_recv;	     /* most model receivers of one stage (Rs) */
	int *gr;	     /* (R) graph receiver of each model receiver */
	const float **grads; /* (R) the gradients scored (a stage's, or gacc) */
	float *gacc;	     /* (R, B, T, C) gradients summed over the steps (IG) */
	float *own_diff;     /* (U, B, T, C) ref - clean, unless the patcher has it */
	float *S;	     /* (B, U, Rs) the products of a stage */
	float *gcopy;	     /* (Rs, T*C) gradients gathered when not evenly strided */
	float *dlogits;	     /* (N, V) */
	float *x;	     /* (B, T, C) interpolated input / activation delta (IG) */
	/* EAP with own_dot: a single receiver's stage held back by the hook
	 * until the stage below, whose rows it reads, so that one pass over
	 * them scores both (see eap_hook) */
	int held;				 /* the stage held, or -1 */
	float *gheld;				 /* (B, T, C) its receiver's gradient */
	float *S1;				 /* (B, U) its products */
	size_t cap_btc, cap_tc, cap_rows, cap_b; /* B*T*C, T*C, N and B the buffers hold */
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

/* gr (mt->n_recv): the receiver of g's topology each model receiver maps to. */
static void map_recvs(int *gr, const circ_graph *g, const circ_topology *mt)
{
	CIRC_ASSERT(g->topo->dense); /* edge(u -> r) = recv_first[r] + u */
	for (int mr = 0; mr < mt->n_recv; mr++) {
		gr[mr] = circ_topo_map_recv(mt, mr, g->topo);
		CIRC_ASSERT(gr[mr] >= 0);
	}
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
	/* GPT-2's scores keep OpenBLAS's bits (its pinned results) */
	a->own_dot = c->model_type != CIRC_MODEL_GPT2;
	a->held = -1;
	a->sum = circ_xcalloc((size_t)circ_patcher_graph(p)->n_edges, sizeof(double));
	if (method != CIRC_ATTR_EXACT) {
		a->gr = circ_xmalloc((size_t)a->R * sizeof *a->gr);
		a->grads = circ_xcalloc((size_t)a->R, sizeof *a->grads);
		map_recvs(a->gr, circ_patcher_graph(p), a->mt);
	}
	return a;
}

/* 1 where eap_hook holds single-receiver stages back (gheld, S1). */
static int hold_stages(circ_attr_method m, int own_dot)
{
	return m == CIRC_ATTR_EAP && own_dot;
}

/* Sizes the per-batch buffers for the batch loaded in the patcher: only
 * dlogits when `all` is 0 (a backward pass alone). Grown only, never
 * zeroed here: each is written before it is read. */
static void fit_batch(circ_attrib *a, int all)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t tc = (size_t)b->T * (size_t)a->C, btc = (size_t)b->B * tc;
	int ig = a->method == CIRC_ATTR_EAP_IG || a->method == CIRC_ATTR_EAP_IG_ACT;
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
		free(a->own_diff);
		free(a->x);
		free(a->gacc);
		free(a->gheld);
		a->gheld = hold_stages(a->method, a->own_dot)
			       ? circ_xmalloc_aligned(btc * sizeof(float))
			       : NULL;
		a->own_diff = circ_patcher_diff(a->p, 0)
				  ? NULL
				  : circ_xmalloc_aligned((size_t)a->U * btc * sizeof(float));
		a->x = ig ? circ_xmalloc_aligned(btc * sizeof(float)) : NULL;
		a->gacc = ig ? circ_xmalloc_aligned((size_t)a->R * btc * sizeof(float)) : NULL;
		a->cap_btc = btc;
	}
	if ((size_t)b->B > a->cap_b) {
		free(a->S);
		free(a->S1);
		a->S =
		    circ_xmalloc((size_t)b->B * (size_t)a->U * (size_t)a->max_recv * sizeof(float));
		a->S1 = hold_stages(a->method, a->own_dot)
			    ? circ_xmalloc((size_t)b->B * (size_t)a->U * sizeof(float))
			    : NULL;
		a->cap_b = (size_t)b->B;
	}
	if (tc > a->cap_tc) {
		free(a->gcopy);
		a->gcopy = circ_xmalloc_aligned((size_t)a->max_recv * tc * sizeof(float));
		a->cap_tc = tc;
	}
}

size_t circ_attrib_bytes_for(circ_attr_method m, const circ_patcher *p, int B, int T, int n_read)
{
	const circ_model *mod = circ_patcher_model(p);
	const circ_config *c = circ_model_config(mod);
	size_t tc = (size_t)T * (size_t)c->n_embd, btc = (size_t)B * tc;
	size_t U = (size_t)circ_model_n_up(mod), R = (size_t)circ_model_n_recv(mod);
	size_t Rs = (size_t)stage_max_recv(circ_model_topology(mod)), f = 0;
	if (m == CIRC_ATTR_EXACT)
		return 0;
	f += (size_t)n_read * (size_t)c->vocab_size; /* dlogits (read rows) */
	f += (size_t)B * U * Rs + Rs * tc;	     /* a stage's products, gathered gradients */
	if (m == CIRC_ATTR_EAP_IG || m == CIRC_ATTR_EAP_IG_ACT)
		f += btc + R * btc; /* the interpolated input, the summed gradients */
	if (hold_stages(m, c->model_type != CIRC_MODEL_GPT2))
		f += btc + (size_t)B * U; /* a held stage's gradient and products */
	return f * sizeof(float);
}

void circ_attrib_free(circ_attrib *a)
{
	if (!a)
		return;
	free(a->sum);
	free(a->own_diff);
	free(a->gacc);
	free(a->S);
	free(a->S1);
	free(a->gheld);
	free(a->gr);
	free(a->grads);
	free(a->gcopy);
	free(a->dlogits);
	free(a->x);
	free(a);
}

size_t circ_attrib_bytes(const circ_attrib *a)
{
	size_t n = (size_t)circ_patcher_graph(a->p)->n_edges * sizeof(double), f = 0;
	f += a->cap_b * (size_t)a->U * (size_t)a->max_recv;
	f += a->own_diff ? (size_t)a->U * a->cap_btc : 0;
	f += a->x ? a->cap_btc : 0;
	f += a->gacc ? (size_t)a->R * a->cap_btc : 0;
	f += a->gheld ? a->cap_btc : 0;
	f += a->S1 ? a->cap_b * (size_t)a->U : 0;
	f += a->gcopy ? (size_t)a->max_recv * a->cap_tc : 0;
	f += a->cap_rows * (size_t)a->V;
	return n + f * sizeof(float);
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

/* What the score product of one stage reads: B examples of T tokens;
 * diff (U, B, T*C) the (ref - clean) rows of the upstream nodes; grads[mr]
 * model receiver mr's gradient (B, T, C); gr the graph receiver of each
 * model receiver; gcopy (Rs, T*C) and S (B, U, Rs) scratch, Rs the most
 * receivers of a stage; pool (or NULL) splits the examples' products. */
typedef struct score_in {
	double *sum;
	const circ_graph *g;
	const circ_topology *mt;
	const int *gr;
	int C, B, T;
	const float *diff;
	const float *const *grads;
	float *gcopy, *S;
	circ_pool *pool;
	int own_dot;
} score_in;

/* One stage's products, example by example: S_b (m, n) = A_b B_b^T, with
 * A_b = a + b*tc (m rows lda apart) and B_b = g + b*tc (n rows ldb apart).
 * With g1 (own_dot only), those of a held single-receiver stage too:
 * S1_b (m1) = A_b's first m1 rows times g1 + b*tc, the first m in the
 * same pass (m1 >= m). */
typedef struct prod_task {
	const float *a, *g;
	float *S;
	int m, n, k, lda, ldb, own_dot;
	const float *g1;
	float *S1;
	int m1;
} prod_task;

static void prod_one(const prod_task *t, size_t bb, const float *gb, int ldb)
{
	const float *ab = t->a + bb * (size_t)t->k;
	if (t->g1) {
		const float *g1b = t->g1 + bb * (size_t)t->k;
		float *S1b = t->S1 + bb * (size_t)t->m1;
		circ_gemm_bt_bcast_dot(t->m, t->n, t->k, ab, t->lda, gb, ldb,
				       t->S + bb * (size_t)t->m * (size_t)t->n, t->n, g1b, S1b);
		circ_gemm_bt_bcast(t->m1 - t->m, 1, t->k, ab + (size_t)t->m * (size_t)t->lda,
				   t->lda, g1b, t->k, S1b + t->m, 1);
		return;
	}
	if (t->own_dot) {
		circ_gemm_bt_bcast(t->m, t->n, t->k, ab, t->lda, gb, ldb,
				   t->S + bb * (size_t)t->m * (size_t)t->n, t->n);
		return;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->m, t->n, t->k, 1.0f,
		    t->a + bb * (size_t)t->k, t->lda, gb, ldb, 0.0f,
		    t->S + bb * (size_t)t->m * (size_t)t->n, t->n);
}

static void prod_part(void *ctx, size_t b0, size_t b1)
{
	const prod_task *t = ctx;
	for (size_t bb = b0; bb < b1; bb++)
		prod_one(t, bb, t->g + bb * (size_t)t->k, t->ldb);
}

/* The shared core, for stage s of the model: sum[edge(u->r)] += scale *
 * diff_u . grad_r for u in [u_lo, u_hi). Each graph receiver gets the sum
 * of its model receivers' scores (a node-level head sums its q, k and v),
 * added up in double in the model's order, example after example. An
 * edge's receiver belongs to one stage, so scoring stage by stage, in any
 * order of the stages, adds the same numbers to each sum in the same
 * order; the products are the same however the examples are split over
 * threads. */
/* sum[edge(u -> r)] += scale * S_b[u - lo][j] for stage s's receivers
 * (model receiver first_recv + j), example after example; S (B, hi - lo,
 * n_recv). */
static void stage_sums(const score_in *in, int s, double scale, int lo, int hi, const float *S)
{
	const circ_topo_stage *st = &in->mt->stage[s];
	int mr0 = st->first_recv, nr = st->n_recv;
	for (int bb = 0; bb < in->B; bb++) {
		const float *Sb = S + (size_t)bb * (size_t)(hi - lo) * (size_t)nr;
		for (int u = lo; u < hi; u++) {
			const float *Su = Sb + (size_t)(u - lo) * nr;
			for (int j = 0; j < nr;) {
				int r = in->gr[mr0 + j];
				double acc = Su[j++];
				while (j < nr && in->gr[mr0 + j] == r)
					acc += Su[j++];
				in->sum[in->g->recv_first[r] + u] += scale * acc;
			}
		}
	}
}

/* Stage s's products over nodes [lo, hi) into in->S (and, with g1, those
 * of the held stage s1 over [lo, hi1) into S1: see prod_task); 0, or -1
 * when the receivers' gradients are not evenly strided and g1 was given
 * (nothing done). */
static int stage_products(const score_in *in, int s, int lo, int hi, const float *g1, float *S1,
			  int hi1)
{
	const circ_topo_stage *st = &in->mt->stage[s];
	size_t tc = (size_t)in->T * (size_t)in->C, btc = (size_t)in->B * tc;
	int mr0 = st->first_recv, nr = st->n_recv;
	const float *g0 = in->grads[mr0];
	uintptr_t step = (uintptr_t)tc;
	int strided = 1;
	prod_task t;
	/* the A rows (one per node) lie btc apart */
	CIRC_ASSERT(btc <= INT_MAX);
	/* the receivers' gradients evenly spaced: one strided matrix */
	if (nr > 1)
		step = ((uintptr_t)in->grads[mr0 + 1] - (uintptr_t)g0) / sizeof(float);
	if (step < tc || step > INT_MAX)
		strided = 0;
	for (int j = 1; j < nr && strided; j++)
		if (in->grads[mr0 + j] != g0 + (size_t)j * step)
			strided = 0;
	if (g1 && !strided)
		return -1;
	t = (prod_task){in->diff + (size_t)lo * btc,
			g0,
			in->S,
			hi - lo,
			nr,
			(int)tc,
			(int)btc,
			(int)step,
			in->own_dot,
			g1,
			S1,
			hi1 - lo};
	if (strided && in->pool) {
		circ_pool_for(in->pool, (size_t)in->B, prod_part, &t);
	} else if (strided) {
		prod_part(&t, 0, (size_t)in->B);
	} else {
		/* gathered example by example into gcopy (Rs, T*C) */
		for (int bb = 0; bb < in->B; bb++) {
			for (int j = 0; j < nr; j++)
				memcpy(in->gcopy + (size_t)j * tc,
				       in->grads[mr0 + j] + (size_t)bb * tc, tc * sizeof(float));
			prod_one(&t, (size_t)bb, in->gcopy, (int)tc);
		}
	}
	return 0;
}

static void stage_scores(const score_in *in, int s, double scale, int u_lo, int u_hi)
{
	const circ_topo_stage *st = &in->mt->stage[s];
	int lo = u_lo, hi = u_hi < st->n_in ? u_hi : st->n_in;
	if (lo >= hi || st->n_recv == 0)
		return;
	stage_products(in, s, lo, hi, NULL, NULL, 0);
	stage_sums(in, s, scale, lo, hi, in->S);
}

/* The difference rows of the loaded batch (U, B, T, C). */
static const float *diff_rows(const circ_attrib *a)
{
	return a->own_diff ? a->own_diff : circ_patcher_diff(a->p, 0);
}

static score_in score_input(circ_attrib *a)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	score_in in = {a->sum,	  circ_patcher_graph(a->p),
		       a->mt,	  a->gr,
		       a->C,	  b->B,
		       b->T,	  diff_rows(a),
		       a->grads,  a->gcopy,
		       a->S,	  circ_run_pool(circ_patcher_run(a->p)),
		       a->own_dot};
	return in;
}

/* Scores from the gradients summed over IG's steps, every stage. */
static void accumulate(circ_attrib *a, double scale, int u_lo, int u_hi)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	score_in in;
	for (int r = 0; r < a->R; r++)
		a->grads[r] = a->gacc + (size_t)r * btc;
	in = score_input(a);
	for (int s = 0; s < a->mt->n_stage; s++)
		stage_scores(&in, s, scale, u_lo, u_hi);
}

void circ_eap_add(double *sum, const circ_graph *g, int d_model, int T, const float *diff,
		  const float *grad)
{
	circ_topology *own = NULL;
	const circ_topology *mt = g->topo;
	int U = g->n_up, R, Rs;
	size_t tc = (size_t)T * (size_t)d_model;
	const float **grads;
	int *gr;
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
	gr = circ_xmalloc((size_t)R * sizeof *gr);
	gcopy = circ_xmalloc((size_t)Rs * tc * sizeof(float));
	S = circ_xmalloc((size_t)U * (size_t)Rs * sizeof(float));
	for (int r = 0; r < R; r++)
		grads[r] = grad + (size_t)r * tc;
	map_recvs(gr, g, mt);
	{
		score_in in = {sum, g, mt, gr, d_model, 1, T, diff, grads, gcopy, S, NULL, 0};
		for (int s = 0; s < mt->n_stage; s++)
			stage_scores(&in, s, 1.0, 0, U);
	}
	free(grads);
	free(gr);
	free(gcopy);
	free(S);
	circ_topology_free(own);
}

/* (U, B, T, C) ref - clean, when the patcher keeps both outputs. With raw
 * head nodes (circ_topo_desc.raw_heads) a head's edge moves its receiver's
 * input by N_l(A_l + ref_h - clean_h) - N_l(A_l) (lib/patch.c), whose
 * first-order term is the norm's Jacobian at the clean sum A_l times ref_h
 * - clean_h: that is a head's row, so that EAP is the first-order term of
 * exact patching as with shares (EAP-IG's attribute.py leaves the Jacobian
 * out). EAP-IG takes the same rows, the Jacobian at the clean run. */
static void make_diff(circ_attrib *a)
{
	const circ_batch *b = circ_patcher_batch(a->p);
	const circ_model *m = circ_patcher_model(a->p);
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	float *A, *y;
	if (!a->own_diff)
		return;
	for (int u = 0; u < a->U; u++) {
		const float *r = circ_patcher_ref_out(a->p, u),
			    *c = circ_patcher_clean_out(a->p, u);
		float *d = a->own_diff + (size_t)u * btc;
		for (size_t i = 0; i < btc; i++)
			d[i] = r[i] - c[i];
	}
	if (!circ_patcher_graph(a->p)->raw_heads)
		return;
	A = circ_xmalloc(2 * btc * sizeof *A);
	y = A + btc;
	for (int l = 0; l < a->mt->d.n_layer; l++) {
		int h0 = circ_topo_node_head(a->mt, l, 0);
		memset(A, 0, btc * sizeof *A);
		for (int h = 0; h < a->mt->d.n_head; h++)
			circ_vadd(A, circ_patcher_clean_out(a->p, h0 + h), btc);
		for (int h = 0; h < a->mt->d.n_head; h++) {
			float *d = a->own_diff + (size_t)(h0 + h) * btc;
			circ_model_post_attn_jvp(m, l, y, A, d, btc / (size_t)a->C);
			memcpy(d, y, btc * sizeof *d);
		}
	}
	free(A);
}

/* The held stage's scores alone (its gradient in gheld). */
static void score_held(circ_attrib *a)
{
	score_in in;
	if (a->held < 0)
		return;
	a->grads[a->mt->stage[a->held].first_recv] = a->gheld;
	in = score_input(a);
	stage_scores(&in, a->held, 1.0, 0, a->U);
	a->held = -1;
}

/* Backward hook of EAP: the scores of the stage whose receivers'
 * gradients the run holds now (so that the run need keep one stage's).
 * With own_dot, a stage of one receiver (an MLP) whose rows are those of
 * the stage below (its attention) and more is held back: its gradient is
 * copied and both are scored in one pass over the rows they share, the
 * rows streaming from memory once, not twice (the held stage's products
 * a matrix-vector product, memory bound). The scores are the same bits
 * as stage by stage: each product's bits do not depend on the other
 * (circ_gemm_bt_bcast_dot), and each edge's sum gets the same additions. */
static int eap_hook(void *ctx, circ_run *run, int s, circ_error *e)
{
	circ_attrib *a = ctx;
	const circ_topo_stage *st = &a->mt->stage[s];
	const circ_batch *b = circ_patcher_batch(a->p);
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	score_in in;
	(void)e;
	for (int mr = st->first_recv; mr < st->first_recv + st->n_recv; mr++)
		a->grads[mr] = circ_run_recv_grad(run, mr);
	in = score_input(a);
	if (a->held >= 0 && a->held == s + 1 && st->n_in > 0 &&
	    stage_products(&in, s, 0, st->n_in, a->gheld, a->S1, a->mt->stage[s + 1].n_in) == 0) {
		stage_sums(&in, s, 1.0, 0, st->n_in, a->S);
		a->grads[a->mt->stage[s + 1].first_recv] = a->gheld;
		stage_sums(&in, s + 1, 1.0, 0, a->mt->stage[s + 1].n_in, a->S1);
		a->held = -1;
		return 0;
	}
	score_held(a);
	if (a->gheld && s > 0 && st->n_recv == 1 && a->mt->stage[s - 1].n_recv > 1 &&
	    a->mt->stage[s - 1].n_in <= st->n_in) {
		memcpy(a->gheld, a->grads[st->first_recv], btc * sizeof(float));
		a->held = s;
		return 0;
	}
	stage_scores(&in, s, 1.0, 0, a->U);
	return 0;
}

/* Backward hook of IG: the stage's receiver gradients summed into gacc
 * (so that the run need keep one stage's). */
static int ig_hook(void *ctx, circ_run *run, int s, circ_error *e)
{
	circ_attrib *a = ctx;
	const circ_batch *b = circ_patcher_batch(a->p);
	const circ_topo_stage *st = &a->mt->stage[s];
	size_t btc = (size_t)b->B * (size_t)b->T * (size_t)a->C;
	(void)e;
	for (int r = st->first_recv; r < st->first_recv + st->n_recv; r++) {
		const float *gr = circ_run_recv_grad(run, r);
		float *acc = a->gacc + (size_t)r * btc;
		for (size_t i = 0; i < btc; i++)
			acc[i] += gr[i];
	}
	return 0;
}

/* Metric gradient at the read rows of the main run's last forward, then
 * one backward pass. */
static int backward_from_metric(circ_attrib *a, circ_bwd_hook hook, circ_error *e)
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
	bw.hook = hook;
	bw.hook_ctx = a;
	return circ_backward(run, &bw, e);
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
				const float *d = diff_rows(a) + (size_t)u * btc;
				for (size_t i = 0; i < btc; i++)
					a->x[i] += (float)((1.0 - alpha) * d[i]);
			}
			a->unit_delta = a->x;
			fwd_clean_setup(a, &f, reads);
			f.hook = act_hook;
			f.hook_ctx = a;
			rc = circ_forward(circ_patcher_run(a->p), &f, e);
			if (rc == 0)
				rc = backward_from_metric(a, ig_hook, e);
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
			rc = backward_from_metric(a, ig_hook, e);
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
			if (pr) /* one edge patched in B examples */
				circ_progress_step(pr, b->B);
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
		rc = backward_from_metric(a, NULL, e);
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
		/* scored stage by stage as the backward makes the gradients */
		rc = backward_from_metric(a, eap_hook, e);
		if (rc == 0)
			score_held(a); /* a stage left held, had the hooks stopped */
		a->held = -1;
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
