/*
 * model_bf16: the model's optional bf16 compute (circ_model_set_compute).
 * Every weight matrix a forward multiplies by gets a bf16 twin once, when
 * the compute is set: F32 and F16 matrices are rounded into one owned
 * buffer, BF16 matrices of a family's checkpoint are used as they are in
 * the mapping. model_gemm (model.c) finds the twin of any pointer into a
 * registered matrix (the GPT-2 forward passes sub-blocks: a head's rows of
 * W_O, a run of q/k/v columns), so the forward's code paths stay the f32
 * ones and only the products change. Vectors (biases, norms) and the
 * embeddings' row lookups stay f32.
 */
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

/* One registered matrix: src .. src + bytes in the model's own dtype
 * (esz bytes an element), bf its bf16 twin element for element. */
struct model_bf16_span {
	const char *src;
	size_t bytes;
	int esz;
	const uint16_t *bf;
};

typedef struct span_list {
	model_bf16_span *s;
	int n, cap;
	size_t own; /* uint16 values to allocate for the conversions */
} span_list;

static void add(span_list *l, const void *p, circ_dtype dt, size_t count)
{
	if (!p || !count)
		return;
	for (int i = 0; i < l->n; i++) /* a tied lm_head is registered once */
		if (l->s[i].src == p)
			return;
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->s = circ_xrealloc(l->s, (size_t)l->cap * sizeof *l->s);
	}
	l->s[l->n++] =
	    (model_bf16_span){(const char *)p, count * (dt == CIRC_F32 ? 4 : 2),
			      dt == CIRC_F32 ? 4 : 2, dt == CIRC_BF16 ? (const uint16_t *)p : NULL};
	if (dt != CIRC_BF16)
		l->own += count;
}

static void add_mat(span_list *l, const fam_mat *a, size_t rows, size_t cols)
{
	add(l, a->p, a->dt, rows * cols);
}

static int by_src(const void *x, const void *y)
{
	const model_bf16_span *a = x, *b = y;
	return a->src < b->src ? -1 : a->src > b->src;
}

static void collect(const circ_model *m, span_list *l)
{
	const circ_config *c = &m->cfg;
	size_t C = (size_t)c->n_embd, V = (size_t)c->vocab_size, F = (size_t)c->n_inner;
	if (!model_is_family(m)) {
		for (int i = 0; i < c->n_layer; i++) {
			const circ_layer_weights *y = &m->w.layers[i];
			add(l, y->attn_w, CIRC_F32, C * 3 * C);
			add(l, y->proj_w, CIRC_F32, C * C);
			add(l, y->fc_w, CIRC_F32, C * F);
			add(l, y->fcproj_w, CIRC_F32, F * C);
		}
		add(l, m->w.lm_head, CIRC_F32, V * C);
		return;
	}
	{
		size_t Q = (size_t)c->n_head * (size_t)circ_config_head_dim(c);
		size_t KD = (size_t)circ_config_kv_heads(c) * (size_t)circ_config_head_dim(c);
		for (int i = 0; i < c->n_layer; i++) {
			const fam_layer *y = &m->fw.layers[i];
			add_mat(l, &y->q_w, Q, C);
			add_mat(l, &y->k_w, KD, C);
			add_mat(l, &y->v_w, KD, C);
			add_mat(l, &y->o_w, C, Q);
			add_mat(l, &y->fc_w, F, C);
			add_mat(l, &y->up_w, F, C);
			add_mat(l, &y->dn_w, C, F);
		}
		add_mat(l, &m->fw.lm_head, V, C);
	}
}

/* The twins of the spans that need one, in order, into own. */
static void convert(model_bf16 *b)
{
	uint16_t *o = b->own;
	for (int i = 0; i < b->n; i++) {
		model_bf16_span *s = &b->span[i];
		size_t n = s->bytes / (size_t)s->esz;
		if (s->bf)
			continue;
		if (s->esz == 4)
			circ_round_bf16(o, (const float *)(const void *)s->src, n);
		else /* F16: exactly to f32, then rounded */
			for (size_t j = 0; j < n; j += 4096) {
				float buf[4096];
				size_t k = n - j < 4096 ? n - j : 4096;
				circ_st_to_f32(buf, s->src + 2 * j, CIRC_F16, k);
				circ_round_bf16(o + j, buf, k);
			}
		s->bf = o;
		o += n;
	}
}

void model_bf16_free(model_bf16 *b)
{
	if (!b)
		return;
	free(b->span);
	free(b->own);
	free(b);
}

int circ_model_set_compute(circ_model *m, circ_compute c, circ_error *e)
{
	span_list l = {0};
	CIRC_ASSERT(m != NULL);
	if (c == CIRC_COMPUTE_F32) {
		model_bf16_free(m->bf16);
		m->bf16 = NULL;
		return 0;
	}
	if (c != CIRC_COMPUTE_BF16)
		return circ_errorf(e, "unknown compute %d", (int)c);
	if (m->bf16)
		return 0;
	if (circ_bf16_check(e) < 0)
		return -1;
	collect(m, &l);
	m->bf16 = circ_xcalloc(1, sizeof *m->bf16);
	m->bf16->span = l.s;
	m->bf16->n = l.n;
	m->bf16->own = l.own ? circ_xalloc_aligned(l.own * sizeof(uint16_t)) : NULL;
	convert(m->bf16);
	qsort(l.s, (size_t)l.n, sizeof *l.s, by_src);
	return 0;
}

circ_compute circ_model_compute(const circ_model *m)
{
	return m->bf16 ? CIRC_COMPUTE_BF16 : CIRC_COMPUTE_F32;
}

const uint16_t *model_bf16_find(const circ_model *m, const void *p)
{
	const model_bf16 *b = m->bf16;
	const char *q = p;
	int lo = 0, hi = b ? b->n : 0;
	while (lo < hi) { /* the last span starting at or before q */
		int mid = (lo + hi) / 2;
		if (b->span[mid].src <= q)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	{
		const model_bf16_span *s = &b->span[lo - 1];
		size_t off = (size_t)(q - s->src);
		if (off >= s->bytes || off % (size_t)s->esz)
			return NULL;
		return s->bf + off / (size_t)s->esz;
	}
}
