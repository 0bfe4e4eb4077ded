/*
 * model_impl: what the parts of the model share and nobody else sees: the
 * model and run structures and the helpers that more than one of
 * model_config.c, model_weights.c, model.c (runs: arena, accessors,
 * receiver deltas, the pool-parallel kernel wrappers), model_forward.c and
 * model_backward.c call. Not a public header: only lib/model*.c include it,
 * and lib/cdt.c, which decomposes the families' forward, and lib/trace.c,
 * which freezes it (fam_weights).
 * Dimension letters as in model.h.
 */
#ifndef CIRC_MODEL_IMPL_H
#define CIRC_MODEL_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "model.h"
#include "record.h"
#include "safetensors.h"
#include "util.h"

#define MAX_LAYER 1024
#define MAX_HEAD  1024
#define MAX_EMBD  65536
#define MAX_VOCAB (1 << 24)
#define MAX_CTX	  65536

/* What a receiver's input is in the current forward (circ_run.delta_on). */
typedef enum circ_delta_state {
	CIRC_DELTA_NONE,   /* the residual */
	CIRC_DELTA_STORED, /* the residual + its stored delta buffer */
	CIRC_DELTA_SUM	   /* a sum of rows (dsum_*), formed where it is read */
} circ_delta_state;

/* One layer's parameters of a family other than GPT-2 (model_family.c):
 * nn.Linear layout (out, in); NULL where the family has none. A plain MLP
 * keeps fc in fc_*, its output projection in dn_*; a gated one gate, up,
 * down. Vectors are f32 (converted at open); matrices may stay narrow. */
/* A matrix of a family's checkpoint: f32, or kept narrow (F16, BF16) in the
 * mapped file and converted where it is used (model_family.c, fam_rows). */
typedef struct fam_mat {
	const void *p; /* NULL: absent */
	circ_dtype dt;
} fam_mat;

typedef struct fam_layer {
	const float *n1_w, *n1_b; /* (C) the norm before the attention */
	fam_mat q_w;		  /* (H*D, C) */
	const float *q_b;	  /* (H*D) */
	fam_mat k_w, v_w;	  /* (K*D, C) */
	const float *k_b, *v_b;	  /* (K*D) */
	const float *qn_w, *kn_w; /* q/k norms: (D), or (H*D) and (K*D) whole */
	fam_mat o_w;		  /* (C, H*D) */
	const float *o_b;	  /* (C) */
	const float *pa_w;	  /* (C) the norm of the attention's output */
	const float *n2_w, *n2_b; /* (C) the norm before the MLP */
	fam_mat fc_w, up_w;	  /* (F, C) fc or gate; up (gated only) */
	const float *fc_b, *up_b; /* (F) */
	fam_mat dn_w;		  /* (C, F) */
	const float *dn_b;	  /* (C) */
	const float *pm_w;	  /* (C) the norm of the MLP's output */
} fam_layer;

typedef struct fam_weights {
	fam_mat embed;			/* (V, C) */
	const float *final_w, *final_b; /* (C) */
	fam_mat lm_head;		/* (V, C); == embed when tied */
	fam_layer *layers;		/* (L) */
	size_t narrow_max;		/* floats of the largest narrow use (0: all f32) */
} fam_weights;

/* One tensor of a family's flat parameter order (circ_model_param_info):
 * what model_family_open bound, in the table's order. */
typedef struct fam_param {
	char name[128];
	int role;  /* a model_role (model_names.h) */
	int layer; /* -1: model-wide */
	int ndim;
	int64_t shape[2];
	size_t off, count; /* floats */
} fam_param;

/* bf16 twins of the weight matrices (model_bf16.c): spans sorted by their
 * source address. */
typedef struct model_bf16_span model_bf16_span;
typedef struct model_bf16 {
	model_bf16_span *span; /* (n) */
	int n;
	uint16_t *own; /* the converted twins (F32, F16 sources) */
} model_bf16;

/* Packed weights of GPT-2's f32 forward products (model_pk.c). */
typedef struct model_pk model_pk;
typedef struct model_pk_slot model_pk_slot;

struct circ_model {
	circ_config cfg;
	circ_weights w; /* GPT-2's; for other families only wte, lm_head, n_params */
	fam_weights fw; /* the other families' */
	fam_param *fp;	/* (n_fp) their tensors in the flat parameter order */
	int n_fp;
	int fp_own;	  /* 1: m->own holds every tensor in that order, f32 */
	circ_st_set *set; /* their checkpoint (one file or shards) */
	int gqa_grouped;  /* k and v receivers per key/value head (circ_model_opts) */
	int raw_heads;	  /* heads output before the norm after attention */
	char *dir;
	circ_st *st;	    /* the mapped file, or NULL (in-memory model) */
	char *config_bytes; /* config.json as read (for the digest) */
	size_t config_len;
	float *own; /* converted tensors of a loaded model */
	char digest[72];
	int have_digest;
	circ_topology *topo; /* edge level, made from cfg (model_topology_make) */
	model_bf16 *bf16;    /* NULL: f32 compute (circ_model_set_compute) */
	model_pk *pk;	     /* packed weights (model_pk.c), or NULL */
};

struct circ_run {
	const circ_model *m;
	circ_run_opts o;
	int L, H, C, D, F, V, U, R;
	int lim_b, lim_t; /* the largest batch the run was made for */
	int max_b, max_t; /* the batch the arena is laid out for now (grown to
			   * the largest seen, lim_b x lim_t at most) */
	size_t rows;	  /* max_b * max_t */
	circ_pool *pool;
	int threads;

	/* state of the last forward */
	int B, T;
	int valid;     /* stages 0..valid-1 hold this batch's activations; -1: nothing */
	int att_layer; /* one_layer: the layer whose attention activations the
			* per-layer buffers hold (-1: none) */
	int in_fwd;    /* the stage the hook is running for, or -1 */
	int n_read;
	int read_none;
	int have_bwd;
	int used_embed;	      /* the last full forward took input_embed, not a token lookup */
	int bwd_stage;	      /* stage reported to the backward hook (keep_recv_grads 0) */
	const float **bwd_ng; /* (H + 1) a stage's node gradients from circ_bwd.out_hook */

	/* the arena */
	void *arena;
	size_t arena_bytes;
	int32_t *tokens;	    /* (B, T) */
	float **node;		    /* (U) each (B, T, C), NULL for heads without keep_nodes */
	float *resid;		    /* (2L+1, B, T, C) */
	float *mean, *rstd;	    /* (2L+1, B*T) */
	float *qkv;		    /* (L, B, T, 3C) */
	float *att;		    /* (L, B, H, T, T) */
	float *z;		    /* (L, B, T, C) */
	float *fc;		    /* (L, B, T, F) */
	float *s_ln;		    /* scratch (B*T, C) */
	float *s_ln2;		    /* scratch (B*T, C) */
	float *s_gelu;		    /* scratch (B*T, F) */
	float *lnf;		    /* (N, C) ln_f output at the read rows */
	float *lnf_mean, *lnf_rstd; /* (N) */
	float *logits;		    /* (N, V) */
	circ_read *reads;	    /* (N) */
	/* backward */
	float *dresid; /* (2L+1, B, T, C) */
	float *drecv;  /* (R, B, T, C) or (3H, B, T, C) */
	float *d_qkv;  /* (B, T, 3C) */
	float *d_z;    /* (B, T, C) */
	float *d_fc;   /* (B, T, F) */
	float *d_ln;   /* (B*T, C) */

	/* receiver deltas */
	float **delta;		 /* (R) each (rows, C), allocated when stored */
	unsigned char *delta_on; /* (R) a circ_delta_state */
	unsigned char *qkv_keep; /* (R) q/k/v receivers whose projection the
				  * forward keeps (circ_run_keep_qkv) */
	int s0, s0_prev;	 /* the start stages of the last two forwards */
	unsigned long serial;	 /* forwards run so far (circ_run_serial) */
	/* deltas given as sums (circ_run_delta_sum): base + sign * sum of the
	 * terms, formed where the receiver's input is read */
	float **dstat;		  /* (R) LayerNorm mean and rstd (2, rows) of each input */
	const float **dsum_base;  /* (R) */
	const float **dsum_terms; /* (R, U) */
	int *dsum_k;		  /* (R) */
	signed char *dsum_sign;	  /* (R) */
	uint8_t *dsum_abs;	  /* (R) 1: the sum is the input itself, not a delta */

	/* families other than GPT-2 (model_family.c); Q = H*D */
	float *fq, *fk, *fv;   /* (L, rows, Q) q, k (per query head, after q/k norms)
				* and v, before RoPE */
	float *fqr, *fkr, *fz; /* (L, rows, Q) q, k after RoPE; the heads' z */
	float *fA, *fM;	       /* (L, rows, C) attention and MLP outputs before
				* their post norms */
	float *fa, *fb;	       /* (L, rows, F) fc / gate and up pre-activations */
	float *f_s1, *f_s2;    /* scratch (rows, C), (rows, Q) */
	float *f_dq, *f_dk, *f_dv, *f_dz, *f_dz2, *f_dfull; /* (rows, Q) */
	float *f_dA, *f_da, *f_db, *f_dlog;		    /* (rows, C), (rows, F) x2, (rows, V) */
	float *f_w;	 /* (fw.narrow_max) a narrow matrix (or its rows) in f32 */
	fam_weights *gw; /* the backward's parameter gradients (circ_bwd.dparams)
			  * bound as the weights are, or NULL */

	/* per-thread scratch of the row-blocked q/k/v kernels (outside the
	 * arena: sized by the thread count, which can change) */
	float *s_blk; /* (blk_slots, QKV_BLOCK, C) */
	int blk_slots;
};

/* Where layer l's activations are in the per-layer buffers: l's own, or
 * the one layer's (circ_run_opts.one_layer). */
static inline size_t model_lslot(const circ_run *r, int l)
{
	return r->o.one_layer ? 0 : (size_t)l;
}
/* Layer l's attention probabilities (B, H, T, T) packed for the current T. */
static inline float *model_att(const circ_run *r, int l)
{
	return r->att + model_lslot(r, l) * (size_t)r->max_b * (size_t)r->H * (size_t)r->max_t *
			    (size_t)r->max_t;
}

/* 1 when r's products with weights go to bf16 (the model's compute, and not
 * the reference kernels). */
static inline int model_bf16_on(const circ_run *r)
{
	return r->m->bf16 && !r->o.reference;
}

/* ---- config (model_config.c), for the weights ---- */

char *model_read_file(const char *path, size_t *len, circ_error *e);
int model_config_parse(const char *path, const char *text, size_t len, circ_config *c,
		       circ_error *e);
char *model_join_path(const char *dir, const char *name);
int model_is_dir(const char *p);
char *model_config_text(const circ_config *c);

/* ---- families other than GPT-2 (model_family.c) ---- */

static inline int model_is_family(const circ_model *m)
{
	return m->cfg.model_type != CIRC_MODEL_GPT2;
}
/* Binds dir's checkpoint to m->fw (m->cfg read); -1 with a message. */
int model_family_open(circ_model *m, const char *dir, const char *cfg_path,
		      const circ_model_opts *o, circ_error *e);
/* An in-memory model of m->cfg's family: zeroed f32 parameters in the flat
 * order in m->own, bound to m->fw; -1 with a message. */
int model_family_new(circ_model *m, circ_error *e);
void model_family_embed(circ_run *r, const circ_fwd *f);
void model_family_stage(circ_run *r, int s); /* the stage after its hook */
int model_family_backward(circ_run *r, const circ_bwd *b, circ_error *e);
/* model_backward.c's, for model_family.c */
int model_call_bhook(circ_run *r, const circ_bwd *b, int s, circ_error *e);
/* Stage s's n node output gradients from b's out_hook into ng (all NULL
 * without one; NULL: the residual gradient after the stage). */
int model_call_out_hook(circ_run *r, const circ_bwd *b, int s, int n, const float **ng,
			circ_error *e);
float *model_recv_grad_buf(const circ_run *r, int recv);

/* ---- bf16 compute (model_bf16.c) ---- */

void model_bf16_free(model_bf16 *b); /* NULL is a no-op */

/* ---- packed weights (model_pk.c) ---- */
/* Sets m->pk up for a GPT-2 model where circ_gemm_pk_fast() (else leaves
 * it NULL): its forward's products go to the panel kernels, and the
 * matrices are packed when can_pack (weights that never change: mapped or
 * converted from the file). */
void model_pk_init(circ_model *m, int can_pack);
void model_pk_free(model_pk *p); /* NULL is a no-op */
/* The slot of the weight matrix op(b) (k, n) is a block of columns of
 * (tb 0: b is a column of the matrix's first row, *col0 set to it; tb 1:
 * the whole matrix), or NULL: products with it go to the panel kernels. */
model_pk_slot *model_pk_find(const circ_model *m, const float *b, int tb, int ldb, int k, int n,
			     size_t *col0);
/* Counts one forward's use of the matrix (on the forward's own thread) and
 * packs it when due; returns its panels or NULL (not packed yet). */
const float *model_pk_use(const circ_run *r, model_pk_slot *s);
/* The panels of columns col0 .. col0+n-1 (pks: floats between panels), or
 * NULL where not packed or not cut at a panel. */
const float *model_pk_panels(const model_pk_slot *s, size_t col0, int n, size_t *pks);
/* c (rows, n) = a b (+ c unless zero) on the calling thread with the
 * forward's kernel when b (k, n; rows ldb apart) is columns of a
 * packed-weights matrix, from its panels once packed: 1 if done, 0 if not
 * such a matrix (the caller multiplies). */
int model_pk_gemm(const circ_model *m, int zero, int rows, int n, int k, const float *a, int lda,
		  const float *b, int ldb, float *c, int ldc);
/* The bf16 twin of the weight element at p, or NULL when p is not inside a
 * registered matrix (or the model computes in f32). The twin's row stride
 * into *ld; *trans 1 when the twin is the source's transpose (the source's
 * rows are its columns: a product then flips its tb). A block of the
 * source read with the source's own row stride is a block of the twin. */
const uint16_t *model_bf16_find(const circ_model *m, const void *p, int *ld, int *trans);
/* ---- numbering (model.c) ---- */

/* Makes m->topo from m->cfg: -1 with a message if it cannot be made. */
int model_topology_make(circ_model *m, circ_error *e);

/* ---- runs (model.c), for the forward and the backward ---- */

static inline size_t bt(const circ_run *r)
{
	return (size_t)r->B * r->T;
}

static inline float *resid_at(const circ_run *r, int s)
{
	return r->resid + (size_t)s * r->rows * r->C;
}

/* LayerNorm statistics of a receiver's own input (after its delta). */
static inline float *delta_mean(const circ_run *r, int recv)
{
	return r->dstat[recv];
}

static inline float *delta_rstd(const circ_run *r, int recv)
{
	return r->dstat[recv] + r->rows;
}

/* Each row of c (m, n) = bias. */
static inline void bias_rows(float *c, const float *bias, size_t m, size_t n, size_t ldc)
{
	for (size_t i = 0; i < m; i++)
		memcpy(c + i * ldc, bias, n * sizeof *c);
}

typedef struct ew_task {
	const circ_run *r;
	float *out;
	const float *a, *b;
	int exact;
} ew_task;

typedef struct attn_task {
	const circ_run *r;
	float *z, *att, *dqkv;
	const float *qkv, *dz, *catt;
	const unsigned char *skip; /* forward: (H) heads left as they are, or NULL */
} attn_task;

/* Lays the arena out for batches of B x T if it is smaller (what it held
 * is lost); -1 with a message if B x T is over the run's limits. */
int model_run_fit(circ_run *r, int B, int T, circ_error *e);
void model_delta_buffers(circ_run *r, int recv, int store);
void model_form_sum(const circ_run *r, int recv, const float *x, float *dst, size_t row0,
		    size_t nrows);
void model_p_form_sum(const circ_run *r, int recv, const float *x, float *dst);
const float *model_recv_input(const circ_run *r, int recv, const float *x, float *dst);
/* dst (n_read, C) = the logits receiver's input at the read rows (the final
 * residual x plus its delta, or its sum). */
void model_final_inputs(const circ_run *r, const float *x, float *dst);
/* dst (n_read, C) = receiver recv's input (x its residual) at the read rows,
 * formed as model_recv_input forms every row. */
void model_read_inputs(const circ_run *r, int recv, const float *x, float *dst);
void model_p_layernorm(const circ_run *r, float *out, float *mean, float *rstd, const float *inp,
		       const float *w, const float *b, size_t n);
void model_p_layernorm_bwd(const circ_run *r, float *dinp, float *dacc, const float *dout,
			   const float *inp, const float *add, const float *mean, const float *rstd,
			   const float *w, size_t n, int set);
void model_gelu_part(void *v, size_t b, size_t e);
void model_dgelu_part(void *v, size_t b, size_t e);
void model_p_elementwise(const circ_run *r, void (*part)(void *, size_t, size_t), ew_task *t,
			 size_t n);
void model_attn_fwd_part(void *v, size_t b, size_t e);
void model_attn_bwd_part(void *v, size_t b, size_t e);
void model_p_sum(const circ_run *r, float *out, const float *a, const float *const *src, int k,
		 const float *bias, size_t n);
/* c (m, n) = op(a) op(b) + beta c over the run's pool (reference kernels
 * with o.reference). With bf16 compute (model_bf16_on) a product whose b
 * lies in a weight matrix (model_bf16_find) and whose a is not transposed
 * runs in bf16 (circ_gemm_bf16), as do model_gemm_epi's and model_gemm_acc's. */
void model_gemm(const circ_run *r, int ta, int tb, int m, int n, int k, const float *a, int lda,
		const float *b, int ldb, float beta, float *c, int ldc);
/* With bf16 compute: c (m, n) = a w^T + beta c, w (n, k; ldb apart) a block
 * of a weight matrix of any dtype (a BF16 checkpoint's included) given by
 * its address, multiplied through its bf16 twin. */
void model_gemm_w(const circ_run *r, int m, int n, int k, const float *a, int lda, const void *w,
		  int ldb, float beta, float *c, int ldc);
/* c (m, n) = a op(w) + beta c (beta 0 or 1) over the run's pool, w a block
 * of a 16-bit weight matrix (bf16, else IEEE half; (k, n), or with tb (n,
 * k); ldw apart) converted as circ_gemm_w16 packs it, with no f32 copy.
 * Only where circ_gemm_w16_fast() and not o.reference. */
void model_gemm_w16(const circ_run *r, int tb, int m, int n, int k, const float *a, int lda,
		    const uint16_t *w, int ldw, int bf16, float beta, float *c, int ldc);
/* d (n, C) = dl (n, V) W (V, C) for the unembedding's backward, W's rows
 * j0.. j0+nj-1 given as float32 by rows(ctx, j0, nj) (valid until the next
 * call). Where dl is sparse (a logit difference touches two columns per
 * row) each row of d sums its non-zero terms in ascending column order, one
 * W row at a time, and W is read only at those rows; otherwise products
 * over chunks of `chunk` rows. Either way a row of d does not depend on
 * the other rows. */
typedef const float *(*model_rows_fn)(void *ctx, size_t j0, size_t nj);
void model_unembed_bwd(const circ_run *r, const float *dl, size_t n, size_t V, size_t C,
		       model_rows_fn rows, void *ctx, size_t chunk, float *d);
/* What model_gemm_epi does to each block of its product (see model.c). */
typedef struct model_epi {
	const float *bias; /* (n) c starts as the bias (required) */
	float *act;	   /* act = GELU(c), or NULL */
	int exact;	   /* act: erf GELU, else tanh */
	float *res;	   /* res = res_x + c, or NULL */
	const float *res_x;
} model_epi;
void model_gemm_epi(const circ_run *r, int m, int n, int k, const float *a, int lda, const float *b,
		    int ldb, float *c, int ldc, const model_epi *ep);
void model_gemm_acc(const circ_run *r, int m, int n, int k, const float *a, int lda, const float *b,
		    int ldb, float *c, int ldc);

#endif
