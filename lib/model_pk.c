/*
 * Packed weights: GPT-2's f32 forward products through circ's panel
 * kernels (circ_gemm_pk, circ_gemm_pn), the weights laid out once in the
 * kernels' panels instead of copied block by block on every call.
 *
 * Every product of the forward with a weight matrix (W_QKV, W_O, W_in,
 * W_out and the unembedding) goes to the panel kernels where they run
 * (AVX-512), packed or not: the two give the same bits, so when a matrix
 * is packed is a question of time and memory only, never of results. A
 * matrix is packed when a forward multiplies by it for the PACK_AT-th
 * time (CIRC_PACK_AT, default 16; 0: never): packing costs a few forwards'
 * worth of the gain (the copy, the first touch of its memory, and a
 * backward's touching the mapped pages again), so commands of a few
 * forwards (one batch of EAP: 4 uses, EAP-IG over 16 prompts: 7, the
 * curve: 11) never pay it, and long ones (ACDC's top layers after 16
 * tests, many batches) read the panels from then on (single-threaded at
 * GPT-2-small shapes on a Zen 4: 105-112 GFLOP/s from the panels, 97-106
 * copying blocks, OpenBLAS 92-104). Packing runs over the pool.
 *
 * Memory: the panels are a second copy of the matrices (340 MB for
 * GPT-2 small's layers, 154 MB for its unembedding). Where the matrix
 * lies in the mapped file, its pages are given back to the page cache
 * once packed (madvise MADV_DONTNEED: the mapping stays, a later read,
 * such as the backward's or an embedding lookup's, maps them again), so
 * the process holds one copy. Only models whose weights cannot change
 * under circ are packed: a mapped file (or tensors converted from one),
 * never an in-memory model that training writes.
 */
#include <pthread.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"
#include "model_impl.h"
#include "util.h"

#define PACK_AT 16

struct model_pk_slot {
	const float *src; /* the matrix as it lies */
	int tb, k, n, ld; /* op(src) is (k, n): src (k, n) rows ld apart, or (n, k) if tb */
	int uses;	  /* forwards that multiplied by it */
	float *pk;	  /* the panels, or NULL until packed */
};

struct model_pk {
	pthread_mutex_t mu;
	model_pk_slot *s; /* (n) */
	int n;
	int can_pack;
	int pack_at;		  /* uses at which a matrix is packed */
	const unsigned char *map; /* the mapped file (pages given back), or NULL */
	size_t map_len;
};

/* CIRC_PACK_AT, else PACK_AT (also for a value that is not a count: the
 * tools refuse those before they open a model, cmd/cli/opt.c). */
static int pack_at(void)
{
	const char *v = getenv("CIRC_PACK_AT");
	int64_t n;
	if (v && *v && circ_parse_i64(v, &n) == 0 && n >= 0 && n <= 1000000000)
		return (int)n;
	return PACK_AT;
}

void model_pk_init(circ_model *m, int can_pack)
{
	const circ_config *c = &m->cfg;
	int C = c->n_embd, F = c->n_inner;
	model_pk *p;
	if (model_is_family(m) || !circ_gemm_pk_fast())
		return;
	p = circ_xcalloc(1, sizeof *p);
	p->pack_at = pack_at();
	p->can_pack = can_pack && p->pack_at > 0;
	pthread_mutex_init(&p->mu, NULL);
	p->s = circ_xcalloc((size_t)4 * c->n_layer + 1, sizeof *p->s);
	for (int l = 0; l < c->n_layer; l++) {
		const circ_layer_weights *lw = &m->w.layers[l];
		p->s[p->n++] = (model_pk_slot){lw->attn_w, 0, C, 3 * C, 3 * C, 0, NULL};
		p->s[p->n++] = (model_pk_slot){lw->proj_w, 0, C, C, C, 0, NULL};
		p->s[p->n++] = (model_pk_slot){lw->fc_w, 0, C, F, F, 0, NULL};
		p->s[p->n++] = (model_pk_slot){lw->fcproj_w, 0, F, C, C, 0, NULL};
	}
	p->s[p->n++] = (model_pk_slot){m->w.lm_head, 1, C, c->vocab_size, C, 0, NULL};
	if (m->st)
		p->map = circ_st_bytes(m->st, &p->map_len);
	m->pk = p;
}

void model_pk_free(model_pk *p)
{
	if (!p)
		return;
	for (int i = 0; i < p->n; i++)
		free(p->s[i].pk);
	free(p->s);
	pthread_mutex_destroy(&p->mu);
	free(p);
}

model_pk_slot *model_pk_find(const circ_model *m, const float *b, int tb, int ldb, int k, int n,
			     size_t *col0)
{
	model_pk *p = m->pk;
	if (!p || !b)
		return NULL;
	for (int i = 0; i < p->n; i++) {
		model_pk_slot *s = &p->s[i];
		if (s->tb != tb || s->ld != ldb || s->k != k || b < s->src)
			continue;
		/* tb 0: a run of columns of the matrix; tb 1: all of it */
		size_t off = (size_t)(b - s->src);
		if (tb ? off != 0 || n != s->n : off + (size_t)n > (size_t)s->n)
			continue;
		*col0 = off;
		return s;
	}
	return NULL;
}

const float *model_pk_panels(const model_pk_slot *s, size_t col0, int n, size_t *pks)
{
	if (!s->pk || col0 % 64 != 0 || (n % 64 != 0 && col0 + (size_t)n != (size_t)s->n))
		return NULL;
	*pks = (size_t)s->k * 64;
	return s->pk + col0 / 64 * *pks;
}

typedef struct pack_task {
	model_pk_slot *s;
	size_t panels;
} pack_task;

static void pack_part(void *v, size_t q0, size_t q1)
{
	pack_task *t = v;
	model_pk_slot *s = t->s;
	size_t pks = (size_t)s->k * 64;
	for (size_t q = q0; q < q1; q++) {
		int j0 = (int)(q * 64), w = s->n - j0 < 64 ? s->n - j0 : 64;
		circ_gemm_pack(s->pk + q * pks, s->tb, s->k, w,
			       s->tb ? s->src + (size_t)j0 * s->ld : s->src + j0, s->ld);
	}
}

/* The whole pages of [b, b + len) inside the mapped file go back to the
 * page cache (the file is unchanged: they are read again if touched). */
static void give_back(const model_pk *p, const void *b, size_t len)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t lo = (uintptr_t)b, hi = lo + len;
	if (!p->map || lo < (uintptr_t)p->map || hi > (uintptr_t)p->map + p->map_len)
		return;
	lo = (lo + pg - 1) & ~(pg - 1);
	hi &= ~(pg - 1);
	if (hi > lo)
		(void)madvise((void *)lo, hi - lo,
			      MADV_DONTNEED); /* only memory: failure is fine */
}

const float *model_pk_use(const circ_run *r, model_pk_slot *s)
{
	model_pk *p = r->m->pk;
	const float *pk;
	if (!p->can_pack)
		return NULL;
	pthread_mutex_lock(&p->mu);
	s->uses++;
	if (!s->pk && s->uses >= p->pack_at) {
		pack_task t = {s, (size_t)(s->n + 63) / 64};
		size_t bytes = circ_gemm_pack_floats(s->k, s->n) * sizeof(float);
		s->pk = circ_xmalloc_aligned(bytes);
		circ_advise_huge(s->pk, bytes);
		if (circ_pool_inside())
			pack_part(&t, 0, t.panels);
		else
			circ_pool_for(r->pool, t.panels, pack_part, &t);
		give_back(p, s->src, (size_t)(s->tb ? s->n : s->k) * (size_t)s->ld * sizeof(float));
	}
	pk = s->pk;
	pthread_mutex_unlock(&p->mu);
	return pk;
}

int model_pk_gemm(const circ_model *m, int zero, int rows, int n, int k, const float *a, int lda,
		  const float *b, int ldb, float *c, int ldc)
{
	size_t col0, pks;
	const float *pk;
	model_pk_slot *s = model_pk_find(m, b, 0, ldb, k, n, &col0);
	if (!s)
		return 0;
	if ((pk = model_pk_panels(s, col0, n, &pks)))
		circ_gemm_pk(zero, rows, n, k, a, lda, pk, pks, c, ldc);
	else
		circ_gemm_pn(zero, 0, rows, n, k, a, lda, b, ldb, c, ldc);
	return 1;
}

size_t circ_model_packed_bytes(const circ_model *m)
{
	size_t n = 0;
	if (!m->pk)
		return 0;
	pthread_mutex_lock(&m->pk->mu);
	for (int i = 0; i < m->pk->n; i++)
		if (m->pk->s[i].pk)
			n += circ_gemm_pack_floats(m->pk->s[i].k, m->pk->s[i].n) * sizeof(float);
	pthread_mutex_unlock(&m->pk->mu);
	return n;
}
