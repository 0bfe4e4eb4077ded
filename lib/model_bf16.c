/*
 * model_bf16: the model's optional bf16 compute (circ_model_set_compute).
 * Every weight matrix a forward multiplies by gets a bf16 twin once, when
 * the compute is set, rounded into one owned buffer: GPT-2's Conv1D
 * matrices as they are, nn.Linear ones (the families', GPT-2's lm_head)
 * transposed (see add_mat). A BF16 matrix that needs no transposing would
 * be used in place; every family matrix is transposed, so a BF16
 * checkpoint's matrices are copied too (their bits unchanged). model_gemm (model.c) finds the twin
 * of any pointer into a registered matrix (the GPT-2 forward passes sub-blocks: a head's rows of
 * W_O, a run of q/k/v columns), so the forward's code paths stay the f32
 * ones and only the products change. Vectors (biases, norms) and the
 * embeddings' row lookups stay f32.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

/* One registered matrix: src .. src + bytes, rows x cols in the model's own
 * dtype (esz bytes an element), and its bf16 twin bf: element for element,
 * or with trans its transpose (cols x rows). */
struct model_bf16_span {
	const char *src;
	size_t bytes, rows, cols;
	int esz, trans;
	const uint16_t *bf;
};

typedef struct span_list {
	model_bf16_span *s;
	int n, cap;
	size_t own; /* uint16 values to allocate for the twins */
} span_list;

static void add(span_list *l, const void *p, circ_dtype dt, size_t rows, size_t cols, int trans)
{
	int esz = dt == CIRC_F32 ? 4 : 2;
	if (!p || !rows || !cols)
		return;
	for (int i = 0; i < l->n; i++) /* a tied lm_head is registered once */
		if (l->s[i].src == p)
			return;
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->s = circ_xrealloc(l->s, (size_t)l->cap * sizeof *l->s);
	}
	/* a BF16 matrix used as it is needs no twin of its own */
	l->s[l->n++] = (model_bf16_span){(const char *)p,
					 rows * cols * (size_t)esz,
					 rows,
					 cols,
					 esz,
					 trans,
					 dt == CIRC_BF16 && !trans ? (const uint16_t *)p : NULL};
	if (dt == CIRC_F16)
		l->s[l->n - 1].esz = -2; /* marks F16 for convert() */
	if (!l->s[l->n - 1].bf)
		l->own += rows * cols;
}

/* nn.Linear's (out, in) matrices are multiplied transposed (model_gemm's
 * tb): their twins are stored transposed, (in, out), so every product
 * reads its weights as oneDNN's AMX kernels want them (a transposed b
 * taken in slices of k sends oneDNN 2.6 to a kernel a third as fast). */
static void add_mat(span_list *l, const fam_mat *a, size_t rows, size_t cols)
{
	add(l, a->p, a->dt, rows, cols, 1);
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
			add(l, y->attn_w, CIRC_F32, C, 3 * C, 0); /* Conv1D: (in, out) */
			add(l, y->proj_w, CIRC_F32, C, C, 0);
			add(l, y->fc_w, CIRC_F32, C, F, 0);
			add(l, y->fcproj_w, CIRC_F32, F, C, 0);
		}
		add(l, m->w.lm_head, CIRC_F32, V, C, 1);
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

/* Rows r0 .. r0 + nr of span s in f32 into buf (nr x cols). */
static void rows_f32(const model_bf16_span *s, size_t r0, size_t nr, float *buf)
{
	const char *p = s->src + r0 * s->cols * (size_t)(s->esz < 0 ? 2 : s->esz);
	circ_dtype dt = s->esz == 4 ? CIRC_F32 : s->esz < 0 ? CIRC_F16 : CIRC_BF16;
	circ_st_to_f32(buf, p, dt, nr * s->cols);
}

#define TB 64 /* rows converted (and transposed) at a time */

/* The twins of the spans that need one, in order, into own. */
static void convert(model_bf16 *b)
{
	uint16_t *o = b->own;
	size_t maxc = 0;
	float *buf;
	uint16_t *rb;
	for (int i = 0; i < b->n; i++)
		maxc = b->span[i].cols > maxc ? b->span[i].cols : maxc;
	buf = circ_xmalloc(TB * maxc * sizeof *buf);
	rb = circ_xmalloc(TB * maxc * sizeof *rb);
	for (int i = 0; i < b->n; i++) {
		model_bf16_span *s = &b->span[i];
		if (s->bf)
			continue;
		for (size_t r0 = 0; r0 < s->rows; r0 += TB) {
			size_t nr = s->rows - r0 < TB ? s->rows - r0 : TB;
			if (s->esz == 4 && !s->trans) {
				circ_round_bf16(o + r0 * s->cols,
						(const float *)(const void *)s->src + r0 * s->cols,
						nr * s->cols);
				continue;
			}
			const uint16_t *src = rb;
			if (s->esz == 2) /* BF16: its bits as they are */
				src = (const uint16_t *)(const void *)s->src + r0 * s->cols;
			else {
				rows_f32(s, r0, nr, buf);
				circ_round_bf16(s->trans ? rb : o + r0 * s->cols, buf,
						nr * s->cols);
			}
			if (s->trans) /* src (nr, cols) into column r0.. of o (cols, rows) */
				for (size_t c = 0; c < s->cols; c++)
					for (size_t r = 0; r < nr; r++)
						o[c * s->rows + r0 + r] = src[r * s->cols + c];
			else if (s->esz == 2)
				memcpy(o + r0 * s->cols, src, nr * s->cols * sizeof *o);
		}
		s->bf = o;
		o += s->rows * s->cols;
		if (s->esz < 0)
			s->esz = 2;
	}
	free(buf);
	free(rb);
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

const uint16_t *model_bf16_find(const circ_model *m, const void *p, int *ld, int *trans)
{
	const model_bf16 *b = m->bf16;
	uintptr_t q = (uintptr_t)p;
	int lo = 0, hi = b ? b->n : 0;
	while (lo < hi) { /* the last span starting at or before q */
		int mid = (lo + hi) / 2;
		if ((uintptr_t)b->span[mid].src <= q)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	{
		const model_bf16_span *s = &b->span[lo - 1];
		size_t off = (size_t)(q - (uintptr_t)s->src), r, c;
		if (off >= s->bytes || off % (size_t)s->esz)
			return NULL;
		off /= (size_t)s->esz;
		r = off / s->cols;
		c = off % s->cols;
		*trans = s->trans;
		*ld = (int)(s->trans ? s->rows : s->cols);
		return s->trans ? s->bf + c * s->rows + r : s->bf + off;
	}
}
