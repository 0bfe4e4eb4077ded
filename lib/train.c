/*
 * train: initialisation, AdamW, the trainer, task data and attention
 * diagnostics (see train.h for the contracts). The loss and the evaluation
 * metrics are lib/metric's.
 *
 * The trainer owns one circ_run (backward arena, no per-head node outputs,
 * no kept receiver gradients: the fused backward path) and one gradient
 * buffer in the circ_weights_alloc layout, so that parameters, gradients
 * and both AdamW moments are four parallel flat arrays and the optimiser is
 * one loop. The model's weights are updated in place through its owned
 * buffer.
 *
 * Vocabularies. A task's vocabulary is byte-level BPE as GPT-2 defines it
 * (lib/bpe reads it like GPT-2's own files): ids 0-255 are the byte tokens
 * in GPT-2's order (the printable bytes first, then the rest), merges
 * follow, <|endoftext|> is last. The merges for words are learned by BPE's
 * training rule (repeatedly merge the most frequent adjacent pair among the
 * words not yet one token, ties to the smallest pair of ids), which makes
 * encoding a training word replay exactly the merges that built it; the
 * digit merges of greater-than are laid out by hand so that " 1732" splits
 * as " 17" "32", as GPT-2's vocabulary splits years. Every property the
 * task generators rely on is checked by loading the written files back.
 *
 * Task data. Text tasks call lib/tasks (the generator behind circ-dataset)
 * with the new vocabulary and tokenize its JSON lines with lib/bpe, so the
 * training distribution is the pipelines' distribution. The evaluation set
 * is the generator's seed 0: what `circ-dataset TASK --seed 0` writes.
 * Induction draws its own training sequences: several short runs of
 * distinct random ids, each twice, at random places among random ids, so
 * that the distance between copies differs within a sequence and no fixed
 * positional offset predicts the second copies (a single run repeated once,
 * the evaluation's shape, gets solved by small models with positional
 * shortcuts); its evaluation set is circ-dataset's (seed 0).
 */
#include "train.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels.h"
#include "rng.h"
#include "tasks.h"

/* ================================================================ parameters */

/* Visits each parameter tensor of w: fn(ctx, p, count, kind) with kind 0
 * embedding, 1 matrix, 2 c_proj matrix, 3 LayerNorm weight, 4 bias. */
static void each_tensor(const circ_weights *w, const circ_config *c,
			void (*fn)(void *ctx, float *p, size_t n, int kind), void *ctx)
{
	size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner;
	fn(ctx, w->wte, (size_t)c->vocab_size * C, 0);
	fn(ctx, w->wpe, (size_t)c->n_ctx * C, 0);
	for (int l = 0; l < c->n_layer; l++) {
		const circ_layer_weights *lw = &w->layers[l];
		fn(ctx, lw->ln1_w, C, 3);
		fn(ctx, lw->ln1_b, C, 4);
		fn(ctx, lw->attn_w, C * 3 * C, 1);
		fn(ctx, lw->attn_b, 3 * C, 4);
		fn(ctx, lw->proj_w, C * C, 2);
		fn(ctx, lw->proj_b, C, 4);
		fn(ctx, lw->ln2_w, C, 3);
		fn(ctx, lw->ln2_b, C, 4);
		fn(ctx, lw->fc_w, C * F, 1);
		fn(ctx, lw->fc_b, F, 4);
		fn(ctx, lw->fcproj_w, F * C, 2);
		fn(ctx, lw->fcproj_b, C, 4);
	}
	fn(ctx, w->lnf_w, C, 3);
	fn(ctx, w->lnf_b, C, 4);
}

typedef struct init_ctx {
	circ_rng rng;
	double proj_sd;
} init_ctx;

static void init_tensor(void *v, float *p, size_t n, int kind)
{
	init_ctx *c = v;
	for (size_t i = 0; i < n; i++)
		switch (kind) {
		case 0:
		case 1: p[i] = (float)(0.02 * circ_rng_normal(&c->rng)); break;
		case 2: p[i] = (float)(c->proj_sd * circ_rng_normal(&c->rng)); break;
		case 3: p[i] = 1.0f; break;
		default: p[i] = 0.0f; break;
		}
}

void circ_train_init_weights(circ_weights *w, const circ_config *c, uint64_t seed)
{
	init_ctx ic;
	circ_rng_seed_stream(&ic.rng, seed, 0x696e6974); /* "init" */
	ic.proj_sd = 0.02 / sqrt(2.0 * c->n_layer);
	each_tensor(w, c, init_tensor, &ic);
}

void circ_train_init_family(circ_model *m, uint64_t seed, double qk_bias_sd)
{
	const circ_config *c = circ_model_config(m);
	float *p = circ_model_params(m);
	circ_rng rng;
	double proj_sd = 0.02 / sqrt(2.0 * c->n_layer);
	CIRC_ASSERT(p != NULL);
	circ_rng_seed_stream(&rng, seed, 0x696e6974); /* "init" */
	for (int k = 0; k < circ_model_n_param_tensors(m); k++) {
		circ_param_info pi;
		size_t nl;
		circ_model_param_info(m, k, &pi);
		nl = strlen(pi.name);
		for (size_t i = 0; i < pi.count; i++) {
			float v = 0.0f;
			if (pi.matrix)
				v = (float)((pi.out_proj ? proj_sd : 0.02) * circ_rng_normal(&rng));
			else if (nl > 7 && !strcmp(pi.name + nl - 7, ".weight"))
				v = (float)(1.0 - c->norm_offset); /* a norm's scale of 1 */
			else if (strstr(pi.name, "q_proj.bias") || strstr(pi.name, "k_proj.bias"))
				v = (float)(qk_bias_sd * circ_rng_normal(&rng));
			p[pi.offset + i] = v;
		}
	}
}

typedef struct mask_ctx {
	const float *base;
	unsigned char *mask;
} mask_ctx;

static void mask_tensor(void *v, float *p, size_t n, int kind)
{
	mask_ctx *c = v;
	memset(c->mask + (p - c->base), kind <= 2, n);
}

unsigned char *circ_train_decay_mask(const circ_config *c)
{
	circ_weights w;
	mask_ctx mc;
	circ_weights_alloc(&w, c);
	mc.base = w.mem;
	mc.mask = circ_xcalloc(w.n_params ? w.n_params : 1, 1);
	each_tensor(&w, c, mask_tensor, &mc);
	circ_weights_free(&w);
	return mc.mask;
}

/* ================================================================ optimiser */

struct circ_adamw {
	size_t n;
	float *m, *v; /* (n) moments */
	unsigned char *decay;
	circ_adamw_opts o;
	int64_t t;
};

void circ_adamw_opts_default(circ_adamw_opts *o)
{
	o->beta1 = 0.9;
	o->beta2 = 0.999;
	o->eps = 1e-8;
	o->weight_decay = 0.01;
}

circ_adamw *circ_adamw_new(size_t n, const unsigned char *decay_mask, const circ_adamw_opts *o)
{
	circ_adamw *a = circ_xcalloc(1, sizeof *a);
	a->n = n;
	a->m = circ_xcalloc(n ? n : 1, sizeof *a->m);
	a->v = circ_xcalloc(n ? n : 1, sizeof *a->v);
	a->decay = circ_xmalloc(n ? n : 1);
	if (decay_mask)
		memcpy(a->decay, decay_mask, n);
	else
		memset(a->decay, 1, n);
	if (o)
		a->o = *o;
	else
		circ_adamw_opts_default(&a->o);
	return a;
}

void circ_adamw_free(circ_adamw *a)
{
	if (!a)
		return;
	free(a->m);
	free(a->v);
	free(a->decay);
	free(a);
}

int64_t circ_adamw_steps(const circ_adamw *a)
{
	return a->t;
}

void circ_adamw_step(circ_adamw *a, float *p, const float *g, double lr)
{
	const circ_adamw_opts *o = &a->o;
	a->t++;
	double bc1 = 1 - pow(o->beta1, (double)a->t), bc2 = 1 - pow(o->beta2, (double)a->t);
	float step = (float)(lr / bc1), bc2s = (float)sqrt(bc2), eps = (float)o->eps;
	float b1 = (float)o->beta1, b2 = (float)o->beta2;
	float c1 = (float)(1 - o->beta1), c2 = (float)(1 - o->beta2);
	float shrink = (float)(1 - lr * o->weight_decay);
	for (size_t i = 0; i < a->n; i++) {
		float gi = g[i];
		if (a->decay[i])
			p[i] *= shrink;
		a->m[i] = b1 * a->m[i] + c1 * gi;
		a->v[i] = b2 * a->v[i] + c2 * gi * gi;
		p[i] -= step * a->m[i] / (sqrtf(a->v[i]) / bc2s + eps);
	}
}

double circ_clip_grad_norm(float *g, size_t n, double max_norm)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (double)g[i] * g[i];
	double norm = sqrt(s);
	if (max_norm > 0 && norm > max_norm) {
		float k = (float)(max_norm / (norm + 1e-6));
		for (size_t i = 0; i < n; i++)
			g[i] *= k;
	}
	return norm;
}

double circ_lr_schedule(double lr, double min_frac, int warmup, int steps, int step)
{
	if (step < warmup)
		return lr * (step + 1) / warmup;
	int span = steps - warmup - 1;
	double prog = span > 0 ? (double)(step - warmup) / span : 1.0;
	if (prog > 1)
		prog = 1;
	return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + cos(M_PI * prog)));
}

/* ================================================================ batches */

void circ_tbatch_reserve(circ_tbatch *b, int B, int T, int N)
{
	size_t nt = (size_t)B * T;
	if (nt > b->cap_tok) {
		b->tokens = circ_xrealloc(b->tokens, nt * sizeof *b->tokens);
		b->cap_tok = nt;
	}
	if ((size_t)N > b->cap_rows) {
		b->rows = circ_xrealloc(b->rows, (size_t)N * sizeof *b->rows);
		b->targets = circ_xrealloc(b->targets, (size_t)N * sizeof *b->targets);
		b->cap_rows = (size_t)N;
	}
}

void circ_tbatch_free(circ_tbatch *b)
{
	free(b->tokens);
	free(b->rows);
	free(b->targets);
	memset(b, 0, sizeof *b);
}

/* ================================================================ trainer */

struct circ_trainer {
	circ_model *m;
	circ_run *run;
	circ_weights g; /* gradients, circ_weights_alloc layout (GPT-2) */
	float *gflat;	/* (n) gradients in the flat order (other families), or NULL */
	float *gmem;	/* g.mem or gflat */
	float *params;	/* the model's buffer (n) */
	size_t n;
	circ_adamw *opt;
	circ_train_opts o;
	int V, max_b, max_t;
	float *dlogits;	 /* (max_b * max_t, V) */
	float *row_loss; /* (max_b * max_t) */
};

void circ_train_opts_default(circ_train_opts *o)
{
	o->threads = 1;
	o->clip = 1.0;
	circ_adamw_opts_default(&o->adam);
}

/* The model's weights must sit in one buffer laid out as circ_weights_alloc
 * lays out g (same config), with lm_head tied. */
static int same_layout(const circ_weights *w, const circ_weights *g)
{
	if (!w->mem || w->n_params != g->n_params || w->lm_head != w->wte)
		return 0;
	return w->wte - w->mem == g->wte - g->mem && w->wpe - w->mem == g->wpe - g->mem &&
	       w->layers[0].ln1_w - w->mem == g->layers[0].ln1_w - g->mem &&
	       w->lnf_w - w->mem == g->lnf_w - g->mem && w->lnf_b - w->mem == g->lnf_b - g->mem;
}

circ_trainer *circ_trainer_new(circ_model *m, int max_b, int max_t, const circ_train_opts *o,
			       circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	const circ_weights *w = circ_model_weights(m);
	circ_run_opts ro;
	circ_trainer *t = circ_xcalloc(1, sizeof *t);
	unsigned char *mask;
	if (o)
		t->o = *o;
	else
		circ_train_opts_default(&t->o);
	t->m = m;
	if (c->model_type != CIRC_MODEL_GPT2) {
		if (!circ_model_params(m)) {
			circ_errorf(e,
				    "the %s model's weights are not one writable f32 buffer "
				    "(open it with copy, or make it with circ_model_new_family)",
				    circ_model_type_name(c->model_type));
			circ_trainer_free(t);
			return NULL;
		}
	} else {
		circ_weights_alloc(&t->g, c);
	}
	if (c->model_type == CIRC_MODEL_GPT2 && !same_layout(w, &t->g)) {
		circ_errorf(e, "the model's weights are not one writable buffer in the "
			       "circ_weights_alloc layout with a tied lm_head (build it with "
			       "circ_model_new)");
		circ_trainer_free(t);
		return NULL;
	}
	circ_run_opts_default(&ro);
	ro.threads = t->o.threads;
	ro.backward = 1;
	ro.keep_nodes = 0;
	ro.keep_recv_grads = 0;
	if (!(t->run = circ_run_new(m, max_b, max_t, &ro, e))) {
		circ_trainer_free(t);
		return NULL;
	}
	t->params = c->model_type == CIRC_MODEL_GPT2 ? w->mem : circ_model_params(m);
	t->n = w->n_params;
	t->V = c->vocab_size;
	t->max_b = max_b;
	t->max_t = max_t;
	if (c->model_type == CIRC_MODEL_GPT2) {
		mask = circ_train_decay_mask(c);
		t->gmem = t->g.mem;
	} else {
		mask = circ_xcalloc(t->n ? t->n : 1, 1);
		for (int k = 0; k < circ_model_n_param_tensors(m); k++) {
			circ_param_info pi;
			circ_model_param_info(m, k, &pi);
			memset(mask + pi.offset, pi.matrix, pi.count);
		}
		t->gflat = circ_xcalloc(t->n ? t->n : 1, sizeof *t->gflat);
		t->gmem = t->gflat;
	}
	t->opt = circ_adamw_new(t->n, mask, &t->o.adam);
	free(mask);
	t->dlogits = circ_xmalloc((size_t)max_b * max_t * t->V * sizeof *t->dlogits);
	t->row_loss = circ_xmalloc((size_t)max_b * max_t * sizeof *t->row_loss);
	return t;
}

void circ_trainer_free(circ_trainer *t)
{
	if (!t)
		return;
	circ_run_free(t->run);
	circ_weights_free(&t->g);
	free(t->gflat);
	circ_adamw_free(t->opt);
	free(t->dlogits);
	free(t->row_loss);
	free(t);
}

const circ_weights *circ_trainer_grads(const circ_trainer *t)
{
	return &t->g;
}

const float *circ_trainer_grad_flat(const circ_trainer *t)
{
	return t->gmem;
}

static int check_batch(const circ_trainer *t, const circ_tbatch *b, circ_error *e)
{
	if (b->B < 1 || b->B > t->max_b || b->T < 1 || b->T > t->max_t)
		return circ_errorf(e, "batch of %d x %d tokens (the trainer takes up to %d x %d)",
				   b->B, b->T, t->max_b, t->max_t);
	if (b->N < 1 || (size_t)b->N > (size_t)b->B * b->T)
		return circ_errorf(e, "batch has %d loss rows (1 to %d)", b->N, b->B * b->T);
	for (int i = 0; i < b->N; i++)
		if (b->targets[i] < 0 || b->targets[i] >= t->V)
			return circ_errorf(e,
					   "loss row %d: target %d is outside the vocabulary (%d "
					   "tokens)",
					   i, (int)b->targets[i], t->V);
	return 0;
}

static int forward_rows(circ_trainer *t, const circ_tbatch *b, circ_error *e)
{
	circ_fwd f;
	if (check_batch(t, b, e) < 0)
		return -1;
	circ_fwd_init(&f);
	f.tokens = b->tokens;
	f.B = b->B;
	f.T = b->T;
	f.read = CIRC_READ_LIST;
	f.n_read = b->N;
	f.reads = b->rows;
	return circ_forward(t->run, &f, e);
}

int circ_trainer_grad(circ_trainer *t, const circ_tbatch *b, double *loss, circ_error *e)
{
	circ_bwd bw = {0};
	double l;
	if (forward_rows(t, b, e) < 0)
		return -1;
	l = circ_metric_xent(circ_run_logits(t->run, NULL), b->N, t->V, b->targets, t->dlogits,
			     NULL);
	memset(t->gmem, 0, t->n * sizeof *t->gmem);
	bw.dlogits = t->dlogits;
	if (t->gflat)
		bw.dparams = t->gflat;
	else
		bw.dweights = &t->g;
	if (circ_backward(t->run, &bw, e) < 0)
		return -1;
	if (loss)
		*loss = l;
	return 0;
}

int circ_trainer_step(circ_trainer *t, const circ_tbatch *b, double lr, double *loss,
		      double *grad_norm, circ_error *e)
{
	double norm;
	if (circ_trainer_grad(t, b, loss, e) < 0)
		return -1;
	norm = circ_clip_grad_norm(t->gmem, t->n, t->o.clip);
	if (!isfinite(norm))
		return circ_errorf(e,
				   "step %lld: the gradient is not finite (lower the learning "
				   "rate)",
				   (long long)circ_adamw_steps(t->opt) + 1);
	circ_adamw_step(t->opt, t->params, t->gmem, lr);
	if (grad_norm)
		*grad_norm = norm;
	return 0;
}

int circ_trainer_eval(circ_trainer *t, const circ_tbatch *b, float *row_loss,
		      const float **logits_out, circ_error *e)
{
	const float *lg;
	if (forward_rows(t, b, e) < 0)
		return -1;
	lg = circ_run_logits(t->run, NULL);
	circ_metric_xent(lg, b->N, t->V, b->targets, NULL, row_loss);
	if (logits_out)
		*logits_out = lg;
	return 0;
}

/* ================================================================ vocabularies */

/* GPT-2's byte order for ids 0-255 (printable bytes first) and each byte's
 * code point in the vocabulary's text form. */
static void byte_tables(int id_byte[256], int32_t cp_of[256])
{
	int k = 0, extra = 0;
	for (int b = 0; b < 256; b++)
		if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
		    (b >= 0xAE && b <= 0xFF)) {
			id_byte[k++] = b;
			cp_of[b] = b;
		}
	for (int b = 0; b < 256; b++)
		if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
		      (b >= 0xAE && b <= 0xFF))) {
			id_byte[k++] = b;
			cp_of[b] = 256 + extra++;
		}
}

/* A vocabulary under construction: token bytes by id, merges in rank order. */
typedef struct vbuild {
	int n;
	char **tok; /* (n) raw bytes, NUL-terminated (no token here holds a NUL) */
	size_t *len;
	int nm;
	int *ml, *mr; /* (nm) merge parts */
	int cap, capm;
	int byte_id[256];
} vbuild;

static int vb_add(vbuild *v, const char *s, size_t n)
{
	if (v->n == v->cap) {
		v->cap = v->cap ? 2 * v->cap : 512;
		v->tok = circ_xrealloc(v->tok, (size_t)v->cap * sizeof *v->tok);
		v->len = circ_xrealloc(v->len, (size_t)v->cap * sizeof *v->len);
	}
	v->tok[v->n] = circ_xmalloc(n + 1);
	memcpy(v->tok[v->n], s, n);
	v->tok[v->n][n] = 0;
	v->len[v->n] = n;
	return v->n++;
}

static int vb_find(const vbuild *v, const char *s, size_t n)
{
	for (int i = 0; i < v->n; i++)
		if (v->len[i] == n && !memcmp(v->tok[i], s, n))
			return i;
	return -1;
}

/* Adds the merge l + r (a new token unless it exists); returns its id. */
static int vb_merge(vbuild *v, int l, int r)
{
	char buf[512];
	size_t n = v->len[l] + v->len[r];
	int id;
	memcpy(buf, v->tok[l], v->len[l]);
	memcpy(buf + v->len[l], v->tok[r], v->len[r]);
	id = vb_find(v, buf, n);
	if (id < 0)
		id = vb_add(v, buf, n);
	if (v->nm == v->capm) {
		v->capm = v->capm ? 2 * v->capm : 512;
		v->ml = circ_xrealloc(v->ml, (size_t)v->capm * sizeof *v->ml);
		v->mr = circ_xrealloc(v->mr, (size_t)v->capm * sizeof *v->mr);
	}
	v->ml[v->nm] = l;
	v->mr[v->nm] = r;
	v->nm++;
	return id;
}

static void vb_init(vbuild *v)
{
	int id_byte[256];
	int32_t cp[256];
	memset(v, 0, sizeof *v);
	byte_tables(id_byte, cp);
	for (int i = 0; i < 256; i++) {
		char c = (char)id_byte[i];
		v->byte_id[id_byte[i]] = vb_add(v, &c, 1);
	}
}

static void vb_free(vbuild *v)
{
	for (int i = 0; i < v->n; i++)
		free(v->tok[i]);
	free(v->tok);
	free(v->len);
	free(v->ml);
	free(v->mr);
}

/* The vocabulary text form of raw bytes (GPT-2's byte-to-unicode). */
static char *vb_text(const char *s, size_t n)
{
	int id_byte[256];
	int32_t cp[256];
	char *out = circ_xmalloc(2 * n + 1), *o = out;
	byte_tables(id_byte, cp);
	for (size_t i = 0; i < n; i++) {
		int32_t c = cp[(unsigned char)s[i]];
		if (c < 0x80) {
			*o++ = (char)c;
		} else { /* all code points here are below 0x800 */
			*o++ = (char)(0xC0 | (c >> 6));
			*o++ = (char)(0x80 | (c & 0x3F));
		}
	}
	*o = 0;
	return out;
}

/* A word list (distinct byte strings). */
typedef struct wordset {
	char **w;
	int n, cap;
} wordset;

static void ws_add(wordset *s, const char *w, size_t n)
{
	for (int i = 0; i < s->n; i++)
		if (strlen(s->w[i]) == n && !memcmp(s->w[i], w, n))
			return;
	if (s->n == s->cap) {
		s->cap = s->cap ? 2 * s->cap : 256;
		s->w = circ_xrealloc(s->w, (size_t)s->cap * sizeof *s->w);
	}
	s->w[s->n] = circ_xmalloc(n + 1);
	memcpy(s->w[s->n], w, n);
	s->w[s->n][n] = 0;
	s->n++;
}

/* Adds the pre-tokenised pieces of text (GPT-2's pattern) of more than one
 * byte and without digits. */
static void ws_add_pieces(wordset *s, const char *text)
{
	size_t n = strlen(text), pos = 0, end;
	while (pos < n && circ_bpe_pretok_next((const unsigned char *)text, n, pos, 1, &end)) {
		int digit = 0;
		for (size_t i = pos; i < end; i++)
			digit |= text[i] >= '0' && text[i] <= '9';
		if (end - pos > 1 && !digit)
			ws_add(s, text + pos, end - pos);
		pos = end;
	}
}

static void ws_free(wordset *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->w[i]);
	free(s->w);
}

/* BPE training over the words until each is one token. */
static void vb_learn(vbuild *v, const wordset *ws)
{
	int **sym = circ_xmalloc((size_t)(ws->n ? ws->n : 1) * sizeof *sym);
	int *ns = circ_xmalloc((size_t)(ws->n ? ws->n : 1) * sizeof *ns);
	size_t cap = 1 << 14;
	uint64_t *key = circ_xmalloc(cap * sizeof *key);
	int *cnt = circ_xmalloc(cap * sizeof *cnt);
	for (int i = 0; i < ws->n; i++) {
		size_t len = strlen(ws->w[i]);
		sym[i] = circ_xmalloc(len * sizeof **sym);
		ns[i] = (int)len;
		for (size_t k = 0; k < len; k++)
			sym[i][k] = v->byte_id[(unsigned char)ws->w[i][k]];
	}
	for (;;) {
		uint64_t best = UINT64_MAX;
		int bestc = 0;
		for (size_t k = 0; k < cap; k++)
			key[k] = UINT64_MAX;
		for (int i = 0; i < ws->n; i++)
			for (int k = 0; k + 1 < ns[i]; k++) {
				uint64_t kk = (uint64_t)sym[i][k] << 32 | (uint32_t)sym[i][k + 1];
				size_t h = (size_t)((kk * 0x9E3779B97F4A7C15ull) >> 50) & (cap - 1);
				while (key[h] != UINT64_MAX && key[h] != kk)
					h = (h + 1) & (cap - 1);
				if (key[h] == UINT64_MAX) {
					key[h] = kk;
					cnt[h] = 0;
				}
				cnt[h]++;
			}
		for (size_t k = 0; k < cap; k++)
			if (key[k] != UINT64_MAX &&
			    (cnt[k] > bestc || (cnt[k] == bestc && key[k] < best))) {
				best = key[k];
				bestc = cnt[k];
			}
		if (!bestc)
			break;
		int l = (int)(best >> 32), r = (int)(best & 0xFFFFFFFFu);
		int id = vb_merge(v, l, r);
		for (int i = 0; i < ws->n; i++) {
			int o = 0;
			for (int k = 0; k < ns[i]; k++) {
				if (k + 1 < ns[i] && sym[i][k] == l && sym[i][k + 1] == r) {
					sym[i][o++] = id;
					k++;
				} else {
					sym[i][o++] = sym[i][k];
				}
			}
			ns[i] = o;
		}
	}
	for (int i = 0; i < ws->n; i++)
		free(sym[i]);
	free(sym);
	free(ns);
	free(key);
	free(cnt);
}

/* Writes vocab.json (ids in order, then <|endoftext|>) and merges.txt. */
static int vb_write(const vbuild *v, const char *dir, circ_error *e)
{
	json_t *obj = json_object();
	char *js, *t1, *t2;
	size_t cap = 64, len = 0;
	char *mt = circ_xmalloc(cap);
	int rc;
	for (int i = 0; i < v->n; i++) {
		char *t = vb_text(v->tok[i], v->len[i]);
		json_object_set_new(obj, t, json_integer(i));
		free(t);
	}
	json_object_set_new(obj, "<|endoftext|>", json_integer(v->n));
	js = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	len = (size_t)snprintf(mt, cap, "#version: 0.2\n");
	for (int i = 0; i < v->nm; i++) {
		t1 = vb_text(v->tok[v->ml[i]], v->len[v->ml[i]]);
		t2 = vb_text(v->tok[v->mr[i]], v->len[v->mr[i]]);
		size_t need = strlen(t1) + strlen(t2) + 3;
		if (len + need >= cap) {
			cap = 2 * (len + need);
			mt = circ_xrealloc(mt, cap);
		}
		len += (size_t)snprintf(mt + len, cap - len, "%s %s\n", t1, t2);
		free(t1);
		free(t2);
	}
	rc = circ_write_text_file(dir, "vocab.json", js, e);
	if (rc == 0)
		rc = circ_write_text_file(dir, "merges.txt", mt, e);
	free(js);
	free(mt);
	return rc;
}

/* The IOI names a vocabulary makes single tokens (" Name"), counted. */
static int ioi_single_names(circ_bpe *b)
{
	size_t n;
	const char *const *names = circ_task_list("ioi.names", &n);
	int k = 0;
	for (size_t i = 0; i < n; i++) {
		char buf[128];
		int len = snprintf(buf, sizeof buf, " %s", names[i]);
		if (circ_bpe_single(b, buf, (size_t)len) >= 0)
			k++;
	}
	return k;
}

static int discard_line(const char *line, size_t len, void *ctx, circ_error *e)
{
	(void)line, (void)len, (void)ctx, (void)e;
	return 0;
}

void circ_ttask_opts_default(circ_ttask_opts *o)
{
	memset(o, 0, sizeof *o);
	o->vocab_lo = 0;
	o->vocab_hi = 256;
	o->seq_len = 24;
	o->chunks = 4;
	o->min_rep = 2;
	o->max_rep = 3;
	o->copies = 2;
	o->eval_len = 12;
	o->n_names = 16;
	o->n_train = 100000;
	o->n_eval = 500;
}

static int fill_template(char *out, size_t cap, const char *tmpl, const char *a, const char *b,
			 const char *place, const char *object)
{
	size_t o = 0;
	for (const char *p = tmpl; *p;) {
		const char *rep = NULL;
		size_t skip = 1;
		if (!strncmp(p, "[A]", 3))
			rep = a, skip = 3;
		else if (!strncmp(p, "[B]", 3))
			rep = b, skip = 3;
		else if (!strncmp(p, "[PLACE]", 7))
			rep = place, skip = 7;
		else if (!strncmp(p, "[OBJECT]", 8))
			rep = object, skip = 8;
		size_t n = rep ? strlen(rep) : 1;
		if (o + n + 1 > cap)
			return -1;
		memcpy(out + o, rep ? rep : p, n);
		o += n;
		p += skip;
	}
	out[o] = 0;
	return 0;
}

int circ_ttask_write_vocab(const circ_ttask_opts *o, const char *dir, circ_error *e)
{
	vbuild v;
	wordset ws = {0};
	circ_bpe *b = NULL;
	int rc = -1;
	char buf[1024];
	vb_init(&v);
	if (!strcmp(o->task, "induction")) {
		/* bytes only */
	} else if (!strcmp(o->task, "ioi")) {
		size_t nn, np, no, nb, na;
		const char *const *names = circ_task_list("ioi.names", &nn);
		const char *const *places = circ_task_list("ioi.places", &np);
		const char *const *objects = circ_task_list("ioi.objects", &no);
		const char *const *baba = circ_task_list("ioi.baba_templates", &nb);
		const char *const *abba = circ_task_list("ioi.abba_templates", &na);
		if (o->n_names < 5 || (size_t)o->n_names > nn) {
			circ_errorf(e, "ioi: the number of names must be 5..%zu (got %d)", nn,
				    o->n_names);
			goto done;
		}
		for (size_t i = 0; i < nb + na; i++) {
			const char *t = i < nb ? baba[i] : abba[i - nb];
			if (fill_template(buf, sizeof buf, t, names[0], names[1], places[0],
					  objects[0]) < 0) {
				circ_errorf(e, "ioi: template %zu is too long", i);
				goto done;
			}
			ws_add_pieces(&ws, buf);
		}
		for (size_t i = 0; i < np; i++) {
			snprintf(buf, sizeof buf, " %s", places[i]);
			ws_add_pieces(&ws, buf);
		}
		for (size_t i = 0; i < no; i++) {
			snprintf(buf, sizeof buf, " %s", objects[i]);
			ws_add_pieces(&ws, buf);
		}
		for (int i = 0; i < o->n_names; i++) {
			snprintf(buf, sizeof buf, " %s", names[i]);
			ws_add_pieces(&ws, buf);
		}
		vb_learn(&v, &ws);
	} else if (!strcmp(o->task, "greater-than")) {
		size_t nn;
		const char *const *nouns = circ_task_list("greater-than.nouns", &nn);
		int sp = v.byte_id[' '], dig[10], g1[10], cc[100];
		for (int d = 0; d < 10; d++)
			dig[d] = v.byte_id['0' + d];
		/* " d" for the first digits, " dd" for the centuries, then "dd" */
		for (int c = 11; c <= 17; c++)
			cc[c] = -1;
		for (int d = 0; d < 10; d++)
			g1[d] = -1;
		for (int c = 11; c <= 17; c++)
			if (g1[c / 10] < 0)
				g1[c / 10] = vb_merge(&v, sp, dig[c / 10]);
		for (int c = 11; c <= 17; c++)
			cc[c] = vb_merge(&v, g1[c / 10], dig[c % 10]);
		(void)cc;
		for (int y = 0; y < 100; y++)
			vb_merge(&v, dig[y / 10], dig[y % 10]);
		ws_add_pieces(&ws, "The X lasted from the year 1700 to the year 17");
		for (size_t i = 0; i < nn; i++) {
			snprintf(buf, sizeof buf, " %s", nouns[i]);
			ws_add_pieces(&ws, buf);
		}
		vb_learn(&v, &ws);
	} else {
		circ_errorf(e, "unknown task '%s' (expected induction, ioi or greater-than)",
			    o->task);
		goto done;
	}
	if (vb_write(&v, dir, e) < 0)
		goto done;
	/* check what the generators rely on, with the files as written */
	if (!(b = circ_bpe_load_dir(dir, e)))
		goto done;
	for (int i = 0; i < ws.n; i++)
		if (circ_bpe_single(b, ws.w[i], strlen(ws.w[i])) < 0) {
			circ_errorf(e, "vocabulary: '%s' is not a single token", ws.w[i]);
			goto done;
		}
	if (!strcmp(o->task, "ioi")) {
		int k = ioi_single_names(b);
		if (k != o->n_names) {
			circ_errorf(e, "vocabulary: %d IOI names are single tokens, expected %d", k,
				    o->n_names);
			goto done;
		}
	}
	if (strcmp(o->task, "induction")) {
		circ_task_opts to;
		circ_task_opts_default(&to);
		to.task = o->task;
		to.n = 4;
		to.bpe = b;
		if (circ_task_generate(&to, discard_line, NULL, e) < 0) {
			circ_error_prefix(e, "vocabulary: the %s generator refuses it", o->task);
			goto done;
		}
	}
	rc = 0;
done:
	circ_bpe_free(b);
	ws_free(&ws);
	vb_free(&v);
	return rc;
}

/* ================================================================ task data */

/* Text-task examples: tokens concatenated, answers and wrong answers. */
typedef struct exset {
	int64_t n;
	size_t cap; /* of the offset arrays */
	circ_ids tok, ans, wrong;
	size_t *tok_off;   /* (n + 1) */
	size_t *ans_off;   /* (n + 1) */
	size_t *wrong_off; /* (n + 1) */
	int max_len;
} exset;

struct circ_ttask {
	circ_ttask_opts o;
	circ_bpe *bpe;
	int V;
	int32_t eot;
	circ_rng rng;
	int induction, gt;
	exset train, eval;
	int64_t next;	 /* next training example */
	int64_t batches; /* induction: training batches drawn */
	int max_len;
	circ_tbatch eb; /* evaluation batch */
};

/* Appends the current ends of the three arrays as offsets of example n. */
static void ex_push_offs(exset *s)
{
	size_t n = (size_t)s->n;
	if (n + 1 > s->cap) {
		s->cap = s->cap ? 2 * s->cap : 1024;
		s->tok_off = circ_xrealloc(s->tok_off, s->cap * sizeof *s->tok_off);
		s->ans_off = circ_xrealloc(s->ans_off, s->cap * sizeof *s->ans_off);
		s->wrong_off = circ_xrealloc(s->wrong_off, s->cap * sizeof *s->wrong_off);
	}
	s->tok_off[n] = s->tok.n;
	s->ans_off[n] = s->ans.n;
	s->wrong_off[n] = s->wrong.n;
}

typedef struct gen_ctx {
	circ_ttask *t;
	exset *s;
} gen_ctx;

static int add_answers(circ_bpe *b, json_t *v, circ_ids *out, const char *field, circ_error *e)
{
	size_t i;
	json_t *x;
	if (json_is_string(v)) {
		int32_t id = circ_bpe_single(b, json_string_value(v), json_string_length(v));
		if (id < 0)
			return circ_errorf(e, "%s '%s' is not a single token", field,
					   json_string_value(v));
		circ_ids_push(out, id);
		return 0;
	}
	if (!json_is_array(v))
		return circ_errorf(e, "%s: expected a string or an array", field);
	json_array_foreach(v, i, x)
	{
		if (add_answers(b, x, out, field, e) < 0)
			return -1;
	}
	return 0;
}

static int gen_line(const char *line, size_t len, void *ctx, circ_error *e)
{
	gen_ctx *g = ctx;
	exset *s = g->s;
	json_error_t je;
	json_t *j = json_loadb(line, len, 0, &je), *clean;
	size_t before = s->tok.n;
	int rc = -1;
	if (!j)
		return circ_errorf(e, "generator line: %s", je.text);
	clean = json_object_get(j, "clean");
	if (!json_is_string(clean)) {
		circ_errorf(e, "generator line without 'clean'");
		goto done;
	}
	if (s->n == 0)
		ex_push_offs(s);
	if (circ_bpe_encode(g->t->bpe, json_string_value(clean), json_string_length(clean), 0,
			    &s->tok, e) < 0 ||
	    add_answers(g->t->bpe, json_object_get(j, "answer"), &s->ans, "answer", e) < 0 ||
	    add_answers(g->t->bpe, json_object_get(j, "wrong"), &s->wrong, "wrong", e) < 0)
		goto done;
	if ((int)(s->tok.n - before) > s->max_len)
		s->max_len = (int)(s->tok.n - before);
	s->n++;
	ex_push_offs(s);
	rc = 0;
done:
	json_decref(j);
	return rc;
}

static int gen_set(circ_ttask *t, exset *s, int64_t n, uint64_t seed, circ_error *e)
{
	circ_task_opts to;
	gen_ctx g = {t, s};
	circ_task_opts_default(&to);
	to.task = t->o.task;
	to.n = n;
	to.seed = seed;
	to.bpe = t->bpe;
	return circ_task_generate(&to, gen_line, &g, e);
}

static void exset_free(exset *s)
{
	circ_ids_free(&s->tok);
	circ_ids_free(&s->ans);
	circ_ids_free(&s->wrong);
	free(s->tok_off);
	free(s->ans_off);
	free(s->wrong_off);
}

circ_ttask *circ_ttask_new(const circ_ttask_opts *o, circ_bpe *bpe, uint64_t seed, circ_error *e)
{
	circ_ttask *t = circ_xcalloc(1, sizeof *t);
	t->o = *o;
	t->bpe = bpe;
	t->V = circ_bpe_vocab_size(bpe);
	t->eot = circ_bpe_eot(bpe);
	circ_rng_seed_stream(&t->rng, seed, 0x64617461); /* "data" */
	t->induction = !strcmp(o->task, "induction");
	t->gt = !strcmp(o->task, "greater-than");
	if (t->induction) {
		if (o->vocab_lo < 0 || o->vocab_hi > t->V ||
		    o->vocab_hi - o->vocab_lo - (t->eot >= o->vocab_lo && t->eot < o->vocab_hi) <
			o->seq_len) {
			circ_errorf(e,
				    "induction: ids [%d, %d) do not fit the vocabulary (%d) or are "
				    "fewer than the sequence length (%d)",
				    (int)o->vocab_lo, (int)o->vocab_hi, t->V, o->seq_len);
			goto fail;
		}
		if (o->chunks < 1 || o->min_rep < 1 || o->max_rep < o->min_rep || o->copies < 2 ||
		    (int64_t)o->copies * o->chunks * o->max_rep > o->seq_len) {
			circ_errorf(
			    e,
			    "induction: %d chunks of up to %d ids, each %d times, do not fit "
			    "sequences of %d",
			    o->chunks, o->max_rep, o->copies, o->seq_len);
			goto fail;
		}
		if (o->focus < 0 || (o->focus > 0 && o->max_rep < 2)) {
			circ_errorf(e, "induction: chunks of one id leave no repeated position to "
				       "focus the loss on");
			goto fail;
		}
		if (o->eval_len < 2 || 2 * o->eval_len > o->seq_len) {
			circ_errorf(e,
				    "induction: evaluation sequences of 2 x %d ids must fit the "
				    "training length %d (positions beyond it are never trained)",
				    o->eval_len, o->seq_len);
			goto fail;
		}
		t->max_len = o->seq_len;
		return t;
	}
	if (!t->gt && strcmp(o->task, "ioi")) {
		circ_errorf(e, "unknown task '%s' (expected induction, ioi or greater-than)",
			    o->task);
		goto fail;
	}
	{
		uint64_t x = seed ^ 0x747261696e; /* "train": never generator seed 0's stream */
		uint64_t gseed = circ_splitmix64(&x) >> 1;
		if (gseed == 0)
			gseed = 1;
		if (gen_set(t, &t->train, o->n_train, gseed, e) < 0 ||
		    gen_set(t, &t->eval, o->n_eval, 0, e) < 0)
			goto fail;
	}
	if (t->train.n < 1) {
		circ_errorf(e, "%s: no training examples", o->task);
		goto fail;
	}
	t->max_len = t->train.max_len > t->eval.max_len ? t->train.max_len : t->eval.max_len;
	return t;
fail:
	circ_ttask_free(t);
	return NULL;
}

void circ_ttask_free(circ_ttask *t)
{
	if (!t)
		return;
	exset_free(&t->train);
	exset_free(&t->eval);
	circ_tbatch_free(&t->eb);
	free(t);
}

int circ_ttask_max_len(const circ_ttask *t)
{
	return t->max_len;
}

static int32_t draw_id(circ_rng *r, int32_t lo, int32_t hi, int32_t eot)
{
	int32_t v;
	do
		v = lo + (int32_t)circ_rng_below(r, (uint64_t)(hi - lo));
	while (v == eot);
	return v;
}

/* L distinct ids (not eot) into out. */
static void draw_distinct(circ_rng *r, int32_t lo, int32_t hi, int32_t eot, int32_t *out, int L)
{
	for (int i = 0; i < L; i++) {
		int dup;
		do {
			out[i] = draw_id(r, lo, hi, eot);
			dup = 0;
			for (int k = 0; k < i && !dup; k++)
				dup = out[k] == out[i];
		} while (dup);
	}
}

/* One training sequence of T ids: K chunks, each of m distinct ids (m
 * uniform in min_rep .. max_rep), each placed `copies` times, and single
 * random ids filling the rest, all in a random order (a uniform shuffle of
 * the chunk copies and the single ids). Every id is distinct but the later
 * copies', so only a chunk's later copies are predictable, and only from an
 * earlier one; the distances between copies differ from chunk to chunk, so
 * no fixed positional offset predicts them and matching the current token
 * against earlier ones (induction) is the model's way to lower the loss.
 * The loss is taken at every position, except in the first `focus` batches:
 * there only where the next id is predictable (a later copy's ids but its
 * last). */
static void induction_batch(circ_ttask *t, int B, circ_tbatch *b)
{
	const circ_ttask_opts *o = &t->o;
	int T = o->seq_len, K = o->chunks, C = o->copies, focus = t->batches++ < o->focus;
	int32_t *d = circ_xmalloc((size_t)T * sizeof *d);
	int *m = circ_xmalloc((size_t)K * sizeof *m), *off = circ_xmalloc((size_t)K * sizeof *off);
	int *item = circ_xmalloc((size_t)T * sizeof *item); /* chunk c, or K + single id */
	int *seen = circ_xmalloc((size_t)K * sizeof *seen);
	unsigned char *pred = circ_xmalloc((size_t)T);
	circ_tbatch_reserve(b, B, T, B * (T - 1));
	b->B = B;
	b->T = T;
	b->N = 0;
	for (int s = 0; s < B; s++) {
		int32_t *x = b->tokens + (size_t)s * T;
		int used = 0, n = 0, i = 0;
		for (int c = 0; c < K; c++) {
			m[c] = o->min_rep + (int)circ_rng_below(
						&t->rng, (uint64_t)(o->max_rep - o->min_rep + 1));
			off[c] = used;
			used += m[c];
			seen[c] = 0;
			for (int r = 0; r < C; r++)
				item[n++] = c;
		}
		for (int k = 0; k < T - C * used; k++)
			item[n++] = K + k;
		circ_rng_shuffle(&t->rng, item, (size_t)n, sizeof *item);
		draw_distinct(&t->rng, o->vocab_lo, o->vocab_hi, t->eot, d, T - (C - 1) * used);
		for (int j = 0; j < n; j++) {
			if (item[j] < K) {
				int c = item[j];
				for (int q = 0; q < m[c]; q++) {
					pred[i] = seen[c] && q + 1 < m[c];
					x[i++] = d[off[c] + q];
				}
				seen[c] = 1;
			} else {
				pred[i] = 0;
				x[i++] = d[used + item[j] - K];
			}
		}
		for (int j = 0; j + 1 < T; j++) {
			if (focus && !pred[j])
				continue;
			b->rows[b->N] = (circ_read){s, j};
			b->targets[b->N++] = x[j + 1];
		}
	}
	free(d);
	free(m);
	free(off);
	free(item);
	free(seen);
	free(pred);
}

/* Examples first .. first+B-1 of s (cyclic) into b: right-padded with
 * token 0 (a causal model never looks right), one loss row at each prompt's
 * last token. pick: draw the target among several answers (training). */
static void text_batch(circ_ttask *t, const exset *s, int64_t first, int B, int pick,
		       circ_tbatch *b)
{
	int T = 1;
	for (int k = 0; k < B; k++) {
		int64_t i = (first + k) % s->n;
		int len = (int)(s->tok_off[i + 1] - s->tok_off[i]);
		T = len > T ? len : T;
	}
	circ_tbatch_reserve(b, B, T, B);
	b->B = B;
	b->T = T;
	b->N = B;
	memset(b->tokens, 0, (size_t)B * T * sizeof *b->tokens);
	for (int k = 0; k < B; k++) {
		int64_t i = (first + k) % s->n;
		int len = (int)(s->tok_off[i + 1] - s->tok_off[i]);
		size_t a0 = s->ans_off[i], na = s->ans_off[i + 1] - a0;
		memcpy(b->tokens + (size_t)k * T, s->tok.v + s->tok_off[i],
		       (size_t)len * sizeof(int32_t));
		b->rows[k] = (circ_read){k, len - 1};
		b->targets[k] = s->ans.v[a0 + (pick && na > 1 ? circ_rng_below(&t->rng, na) : 0)];
	}
}

void circ_ttask_batch(circ_ttask *t, int B, circ_tbatch *b)
{
	if (t->induction) {
		induction_batch(t, B, b);
		return;
	}
	text_batch(t, &t->train, t->next, B, 1, b);
	t->next = (t->next + B) % t->train.n;
}

/* Induction evaluation: circ-dataset's sequences (generator seed 0), loss
 * at every position. */
typedef struct ind_gen {
	circ_ttask *t;
	int32_t *seqs; /* (n, 2L) */
	int64_t n;
	int L;
} ind_gen;

static int ind_line(const char *line, size_t len, void *ctx, circ_error *e)
{
	ind_gen *g = ctx;
	json_error_t je;
	json_t *j = json_loadb(line, len, 0, &je), *ids, *x;
	size_t i;
	if (!j)
		return circ_errorf(e, "generator line: %s", je.text);
	ids = json_object_get(j, "clean_ids");
	if (!json_is_array(ids) || json_array_size(ids) != (size_t)(2 * g->L)) {
		json_decref(j);
		return circ_errorf(e, "generator line: 'clean_ids' is not %d ids", 2 * g->L);
	}
	json_array_foreach(ids, i, x) g->seqs[g->n * 2 * g->L + (int64_t)i] =
	    (int32_t)json_integer_value(x);
	g->n++;
	json_decref(j);
	return 0;
}

static int eval_induction(circ_ttask *t, circ_trainer *tr, int batch, circ_ttask_eval *out,
			  circ_error *e)
{
	const circ_ttask_opts *o = &t->o;
	int L = o->eval_len, T = 2 * L, V = t->V;
	ind_gen g = {t, NULL, 0, L};
	circ_task_opts to;
	double lf = 0, lr = 0, acc = 0;
	int64_t nf = 0, nr = 0;
	float *rl = circ_xmalloc((size_t)batch * T * sizeof *rl);
	int rc = -1;
	g.seqs = circ_xmalloc((size_t)o->n_eval * T * sizeof *g.seqs);
	circ_task_opts_default(&to);
	to.task = "induction";
	to.n = o->n_eval;
	to.seed = 0;
	to.bpe = t->bpe;
	to.ind_len = L;
	to.ind_vocab_lo = o->vocab_lo;
	to.ind_vocab_hi = o->vocab_hi;
	if (circ_task_generate(&to, ind_line, &g, e) < 0)
		goto done;
	for (int64_t first = 0; first < g.n; first += batch) {
		int B = (int)(g.n - first < batch ? g.n - first : batch);
		const float *lg;
		circ_tbatch *b = &t->eb;
		circ_tbatch_reserve(b, B, T, B * (T - 1));
		b->B = B;
		b->T = T;
		b->N = 0;
		memcpy(b->tokens, g.seqs + first * T, (size_t)B * T * sizeof *b->tokens);
		for (int s = 0; s < B; s++)
			for (int i = 0; i + 1 < T; i++) {
				b->rows[b->N] = (circ_read){s, i};
				b->targets[b->N++] = b->tokens[(size_t)s * T + i + 1];
			}
		if (circ_trainer_eval(tr, b, rl, &lg, e) < 0)
			goto done;
		for (int r = 0; r < b->N; r++) {
			int i = b->rows[r].t;
			if (i < L - 1) {
				lf += rl[r];
				nf++;
			} else if (i >= L) {
				lr += rl[r];
				acc += circ_metric_argmax(lg + (size_t)r * V, V) == b->targets[r];
				nr++;
			}
		}
	}
	out->n = g.n;
	out->loss_first = nf ? lf / nf : 0;
	out->loss_repeat = nr ? lr / nr : 0;
	out->acc_repeat = nr ? acc / nr : 0;
	out->loss = (lf + lr) / (double)(nf + nr ? nf + nr : 1);
	rc = 0;
done:
	free(rl);
	free(g.seqs);
	return rc;
}

int circ_ttask_evaluate(circ_ttask *t, circ_trainer *tr, int batch, circ_ttask_eval *out,
			circ_error *e)
{
	const exset *s = &t->eval;
	int V = t->V;
	double metric = 0, pair = 0, top = 0, loss = 0, *p;
	memset(out, 0, sizeof *out);
	if (batch < 1)
		batch = 1;
	if (t->induction)
		return eval_induction(t, tr, batch, out, e);
	p = circ_xmalloc((size_t)V * sizeof *p);
	for (int64_t first = 0; first < s->n; first += batch) {
		int B = (int)(s->n - first < batch ? s->n - first : batch);
		const float *lg;
		text_batch(t, s, first, B, 0, &t->eb);
		if (circ_trainer_eval(tr, &t->eb, NULL, &lg, e) < 0) {
			free(p);
			return -1;
		}
		for (int k = 0; k < B; k++) {
			int64_t i = first + k;
			const float *x = lg + (size_t)k * V;
			const int32_t *ans = s->ans.v + s->ans_off[i],
				      *wr = s->wrong.v + s->wrong_off[i];
			size_t na = s->ans_off[i + 1] - s->ans_off[i];
			size_t nw = s->wrong_off[i + 1] - s->wrong_off[i];
			/* the loss of the training target: the first answer (ioi), one
			 * drawn uniformly from the answers (greater-than) */
			int best = circ_metric_argmax(x, V), best_ok = 0, nt = t->gt ? (int)na : 1;
			double lse = circ_metric_lse(x, V), nll = 0, m;
			for (size_t a = 0; a < na; a++)
				best_ok |= ans[a] == best;
			for (int a = 0; a < nt; a++)
				nll += lse - x[ans[a]];
			loss += nt ? nll / nt : 0;
			if (t->gt)
				m = circ_metric_prob_diff(x, V, ans, (int)na, wr, (int)nw, 1, p,
							  NULL);
			else
				m = circ_metric_logit_diff(x, V, ans, 1, wr, 1, 1, NULL);
			metric += m;
			pair += m > 0;
			top += best_ok;
		}
	}
	out->n = s->n;
	if (s->n) {
		out->metric = metric / (double)s->n;
		out->acc_pair = pair / (double)s->n;
		out->acc_top1 = top / (double)s->n;
		out->loss = loss / (double)s->n;
	}
	free(p);
	return 0;
}

/* ================================================================ diagnostics */

int circ_diag_heads(const circ_model *m, int B, int len, int32_t lo, int32_t hi, int32_t skip,
		    uint64_t seed, int threads, double *prev, double *ind, double *dup,
		    circ_error *e)
{
	const circ_config *c = circ_model_config(m);
	int L = c->n_layer, H = c->n_head, T = 2 * len;
	circ_run_opts ro;
	circ_run *r;
	circ_fwd f;
	circ_rng rng;
	int32_t *tok;
	if (len < 2 || T > c->n_ctx)
		return circ_errorf(e,
				   "sequences of 2 x %d tokens do not fit the model's context (%d)",
				   len, c->n_ctx);
	if (lo < 0 || hi > c->vocab_size || hi - lo - (skip >= lo && skip < hi) < len)
		return circ_errorf(e,
				   "ids [%d, %d) do not fit the vocabulary (%d) or hold fewer "
				   "than %d distinct ids",
				   (int)lo, (int)hi, c->vocab_size, len);
	if (B < 1)
		return circ_errorf(e, "no sequences");
	circ_run_opts_default(&ro);
	ro.threads = threads;
	ro.keep_nodes = 0;
	if (!(r = circ_run_new(m, B, T, &ro, e)))
		return -1;
	tok = circ_xmalloc((size_t)B * T * sizeof *tok);
	circ_rng_seed(&rng, seed);
	for (int b = 0; b < B; b++) {
		draw_distinct(&rng, lo, hi, skip, tok + (size_t)b * T, len);
		memcpy(tok + (size_t)b * T + len, tok + (size_t)b * T, (size_t)len * sizeof *tok);
	}
	circ_fwd_init(&f);
	f.tokens = tok;
	f.B = B;
	f.T = T;
	f.read = CIRC_READ_NONE;
	if (circ_forward(r, &f, e) < 0) {
		free(tok);
		circ_run_free(r);
		return -1;
	}
	for (int l = 0; l < L; l++) {
		const float *att = circ_run_attn(r, l);
		for (int h = 0; h < H; h++) {
			double sp = 0, si = 0, sd = 0;
			for (int b = 0; b < B; b++) {
				const float *a = att + ((size_t)b * H + h) * T * T;
				for (int t = 1; t < T; t++)
					sp += a[(size_t)t * T + t - 1];
				for (int t = len; t < T; t++) {
					si += a[(size_t)t * T + t - len + 1];
					sd += a[(size_t)t * T + t - len];
				}
			}
			prev[l * H + h] = sp / ((double)B * (T - 1));
			ind[l * H + h] = si / ((double)B * len);
			dup[l * H + h] = sd / ((double)B * len);
		}
	}
	free(tok);
	circ_run_free(r);
	return 0;
}
