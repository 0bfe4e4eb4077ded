/*
 * handbuilt: the constructions (see handbuilt.h for the ideas they share).
 *
 * Design: a small "builder" (struct hb) owns the weights being written and
 * knows the residual layout: named blocks of dimensions, the constant pair
 * and the sink. Construction code sets reader entries (W_Q, W_K, W_V rows:
 * which residual dimension feeds which head dimension) and writer entries
 * (W_O, MLP c_proj, embeddings) by block and index, and records each wire
 * of the mechanism as an edge, marked as seen or not by the task's
 * corruption. Noise, distractors and MLPs come from helpers that draw from
 * the model's seeded generator in a fixed order. A final pass balances every
 * written vector into the sink so that it sums to zero (LayerNorm's mean is
 * then exactly 0 up to rounding).
 *
 * Dimension letters: C = n_embd, D = head width, H heads, V vocabulary,
 * P positions, F MLP width.
 */
#include "handbuilt.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "dict.h"
#include "graph.h"
#include "rng.h"

/* ================================================================ builder */

typedef struct hb_block {
	const char *name; /* "TOK" */
	int off, n;	  /* dimensions off .. off+n-1 */
	const char *what; /* who writes it, who reads it */
} hb_block;

typedef struct hb {
	circ_weights *w;
	int C, D, H, V, P, F, L;
	int ca, cb, sink;     /* constant pair (+K, -K) and the sink */
	const hb_block *junk; /* scratch block */
	double K;	      /* the constant */
	double sigma;	      /* LayerNorm's nominal std: sqrt(2 K^2 / C) */
	circ_rng rng;
	circ_hb_info *info;
	hb_block blocks[CIRC_HB_MAX_BLOCKS];
	int nblocks;
	int ok; /* 0 after a construction error (a bug: caught by tests) */
} hb;

/* A standard normal draw from uniforms only (Irwin-Hall of 4, rescaled to
 * unit variance): sums of multiples of 2^-53 and one correctly rounded
 * multiply, so the same bits on every machine. Tails are bounded (|x| <
 * 3.47), which suits weight noise. */
static double gauss(circ_rng *r)
{
	double s = 0;
	for (int i = 0; i < 4; i++)
		s += circ_rng_uniform(r);
	return (s - 2.0) * 1.7320508075688772; /* sqrt(3) */
}

static const hb_block *add_block(hb *b, const char *name, int n, const char *what)
{
	hb_block *k;
	if (b->nblocks == CIRC_HB_MAX_BLOCKS) {
		b->ok = 0;
		return &b->blocks[b->nblocks - 1];
	}
	k = &b->blocks[b->nblocks++];
	int off = b->nblocks > 1 ? k[-1].off + k[-1].n : 0;
	k->name = name;
	k->off = off;
	k->n = n;
	k->what = what;
	return k;
}

/* A dimension nobody reads on purpose: the constant pair and the sink. */
static int is_reserved(const hb *b, int c)
{
	return c == b->ca || c == b->cb || c == b->sink;
}

static float *attn_at(hb *b, int l, int part, int in, int h, int d)
{
	return &b->w->layers[l].attn_w[(size_t)in * 3 * (size_t)b->C + (size_t)part * (size_t)b->C +
				       (size_t)h * (size_t)b->D + (size_t)d];
}

enum { PQ, PK, PV }; /* parts of attn_w */

static void rd(hb *b, int l, int h, int part, int in, int d, double v)
{
	if (in < 0 || in >= b->C || d < 0 || d >= b->D) {
		b->ok = 0;
		return;
	}
	*attn_at(b, l, part, in, h, d) += (float)v;
}

static void wr(hb *b, int l, int h, int d, int out, double v)
{
	if (out < 0 || out >= b->C || d < 0 || d >= b->D) {
		b->ok = 0;
		return;
	}
	b->w->layers[l]
	    .proj_w[((size_t)h * (size_t)b->D + (size_t)d) * (size_t)b->C + (size_t)out] +=
	    (float)v;
}

/* Noise on a circuit head's reader `part`: every readable residual
 * dimension into every head dimension, scale * N(0, 1). */
static void reader_noise(hb *b, int l, int h, int part, double scale)
{
	for (int in = 0; in < b->C; in++)
		if (!is_reserved(b, in))
			for (int d = 0; d < b->D; d++)
				rd(b, l, h, part, in, d, scale * gauss(&b->rng));
}

/* A distractor's random reader: block k into every head dimension. */
static void reader_random(hb *b, int l, int h, int part, const hb_block *k, double scale)
{
	for (int i = 0; i < k->n; i++)
		for (int d = 0; d < b->D; d++)
			rd(b, l, h, part, k->off + i, d, scale * gauss(&b->rng));
}

/* A distractor's random writer: per residual dimension, an output of RMS
 * about `junk` in the scratch block and `leak` elsewhere, for head outputs
 * z of RMS 1 per dimension. */
static void writer_random(hb *b, int l, int h, double junk, double leak)
{
	double s = 1.0 / sqrt((double)b->D);
	for (int d = 0; d < b->D; d++)
		for (int c = 0; c < b->C; c++) {
			int in_junk = c >= b->junk->off && c < b->junk->off + b->junk->n;
			if (!is_reserved(b, c))
				wr(b, l, h, d, c, (in_junk ? junk : leak) * s * gauss(&b->rng));
		}
}

/* A small random MLP: reads every readable dimension with weights
 * in * N(0, 1) / sqrt(readable dimensions) (so a residual of norm ~5 gives
 * pre-activations of RMS ~in/2), biases N(0, 1/4); writes like
 * writer_random, per hidden unit. */
static void mlp_random(hb *b, int l, double in, double junk, double leak)
{
	circ_layer_weights *lw = &b->w->layers[l];
	double s = 1.0 / sqrt((double)b->F), r = in / sqrt((double)(b->C - 3));
	for (int c = 0; c < b->C; c++)
		if (!is_reserved(b, c))
			for (int f = 0; f < b->F; f++)
				lw->fc_w[(size_t)c * (size_t)b->F + (size_t)f] =
				    (float)(r * gauss(&b->rng));
	for (int f = 0; f < b->F; f++)
		lw->fc_b[f] = (float)(0.25 * gauss(&b->rng));
	for (int f = 0; f < b->F; f++)
		for (int c = 0; c < b->C; c++) {
			int in_junk = c >= b->junk->off && c < b->junk->off + b->junk->n;
			if (!is_reserved(b, c))
				lw->fcproj_w[(size_t)f * (size_t)b->C + (size_t)c] =
				    (float)((in_junk ? junk : leak) * s * gauss(&b->rng));
		}
	for (int i = 0; i < b->junk->n; i++)
		lw->fcproj_b[b->junk->off + i] = (float)(0.2 * junk * gauss(&b->rng));
}

/* Makes each of n rows of width C sum to zero: the JUNK part is centred on
 * its own (so random scratch writes do not pile up in the sink), then the
 * sink entry takes minus the sum of the rest. */
static void balance_rows(hb *b, float *m, size_t n)
{
	int j0 = b->junk->off, nj = b->junk->n;
	for (size_t r = 0; r < n; r++) {
		float *row = m + r * (size_t)b->C;
		double s = 0;
		for (int c = j0; c < j0 + nj; c++)
			s += row[c];
		for (int c = j0; c < j0 + nj; c++)
			row[c] = (float)(row[c] - s / nj);
		s = 0;
		row[b->sink] = 0;
		for (int c = 0; c < b->C; c++)
			s += row[c];
		row[b->sink] = (float)-s;
	}
}

/* Every parameter that writes into the residual stream. */
static void balance_all(hb *b)
{
	balance_rows(b, b->w->wte, (size_t)b->V);
	balance_rows(b, b->w->wpe, (size_t)b->P);
	for (int l = 0; l < b->L; l++) {
		circ_layer_weights *lw = &b->w->layers[l];
		balance_rows(b, lw->proj_w, (size_t)b->C);
		balance_rows(b, lw->proj_b, 1);
		balance_rows(b, lw->fcproj_w, (size_t)b->F);
		balance_rows(b, lw->fcproj_b, 1);
	}
}

/* A specification that does not fit its configuration (a bug, caught by
 * the unit test): frees the weights. */
static int hb_fail(hb *b, const char *name, circ_error *e)
{
	circ_weights_free(b->w);
	return circ_errorf(e, "%s: the construction does not fit the configuration", name);
}

/* Balances, copies the layout into info, and reports a construction that
 * did not fit (a bug in a spec, caught by the unit test). */
static int hb_finish(hb *b, const char *name, circ_error *e)
{
	circ_hb_info *in = b->info;
	if (!b->ok)
		return hb_fail(b, name, e);
	balance_all(b);
	in->name = name;
	in->n_blocks = b->nblocks;
	for (int i = 0; i < b->nblocks; i++) {
		in->blocks[i].name = b->blocks[i].name;
		in->blocks[i].off = b->blocks[i].off;
		in->blocks[i].n = b->blocks[i].n;
		in->blocks[i].what = b->blocks[i].what;
	}
	in->K = b->K;
	in->sigma = b->sigma;
	return 0;
}

static void node_name(char *buf, size_t n, int layer, int head)
{
	if (layer < 0)
		snprintf(buf, n, "input");
	else if (head < 0)
		snprintf(buf, n, "m%d", layer);
	else
		snprintf(buf, n, "a%d.h%d", layer, head);
}

/* Records a head of the circuit and its role. */
static void role(hb *b, const char *what, int layer, int head)
{
	circ_hb_info *in = b->info;
	if (in->n_heads == (int)(sizeof in->heads / sizeof in->heads[0])) {
		b->ok = 0;
		return;
	}
	in->heads[in->n_heads].role = what;
	in->heads[in->n_heads].layer = layer;
	in->heads[in->n_heads].head = head;
	in->n_heads++;
}

/* Records a wire of the mechanism: upstream node (layer -1 = input; head -1
 * = MLP) into receiver `recv` ("a1.h2<k>", "logits"). seen: the task's
 * corruption changes the values carried (the edge is in the truth). */
static void wire(hb *b, int layer, int head, const char *recv, int seen)
{
	char up[32], full[128];
	circ_hb_info *in = b->info;
	int *n = seen ? &in->n_truth : &in->n_silent;
	char(*list)[64] = seen ? in->truth : in->silent;
	node_name(up, sizeof up, layer, head);
	if (*n >= CIRC_HB_MAX_EDGES || snprintf(full, sizeof full, "%s->%s", up, recv) >= 64) {
		b->ok = 0;
		return;
	}
	memcpy(list[(*n)++], full, strlen(full) + 1);
}

/* Sets up the builder for config c: allocates the weights (zeroed), sets
 * every LayerNorm to the nominal scaling, and seeds the generator. The
 * caller adds its blocks, then calls hb_reserve for the constant pair and
 * sink, which go after them, followed by the scratch block. */
static void hb_init(hb *b, const circ_config *c, circ_weights *w, circ_hb_info *info, uint64_t seed,
		    double K)
{
	memset(b, 0, sizeof *b);
	b->w = w;
	b->C = c->n_embd;
	b->H = c->n_head;
	b->D = c->n_embd / c->n_head;
	b->V = c->vocab_size;
	b->P = c->n_ctx;
	b->F = c->n_inner;
	b->L = c->n_layer;
	b->K = K;
	b->sigma = sqrt(2.0 * K * K / b->C);
	b->info = info;
	b->ok = 1;
	circ_rng_seed(&b->rng, seed);
	circ_weights_alloc(w, c);
	for (int l = 0; l < b->L; l++)
		for (int i = 0; i < b->C; i++) {
			w->layers[l].ln1_w[i] = (float)b->sigma;
			w->layers[l].ln2_w[i] = (float)b->sigma;
		}
}

/* The constant pair and the sink after the caller's blocks, then the
 * scratch block to the end of the residual; the constant goes into every
 * position's embedding. -1 (and ok = 0) if the blocks leave no room for
 * them, before anything is written out of bounds. */
static int hb_reserve(hb *b)
{
	const hb_block *k = add_block(
	    b, "CONST", 2, "+K, -K in every position (wpe): keeps LayerNorm a fixed scaling");
	b->ca = k->off;
	b->cb = k->off + 1;
	k = add_block(b, "SINK", 1,
		      "minus the sum of every written vector: keeps LayerNorm's mean at 0");
	b->sink = k->off;
	b->junk =
	    add_block(b, "JUNK", b->C - (k->off + 1),
		      "scratch: distractors and MLPs write here; only they (and the circuit's "
		      "noise) read it");
	if (b->junk->n < 1)
		b->ok = 0;
	if (!b->ok)
		return -1;
	for (int t = 0; t < b->P; t++) {
		b->w->wpe[(size_t)t * (size_t)b->C + (size_t)b->ca] = (float)b->K;
		b->w->wpe[(size_t)t * (size_t)b->C + (size_t)b->cb] = (float)-b->K;
	}
	return 0;
}

/* ================================================================ vocabulary */

/* A small byte-level BPE vocabulary: tokens in GPT-2's byte-to-unicode form
 * (printable ASCII maps to itself, space to U+0120 "Ġ"), ids in order, and
 * merges whose parts and results are tokens. */
typedef struct hb_vocab {
	int n;
	const char *const *tok;
	int nmerge;
	const char *const *merge;
} hb_vocab;

/* 26 letters, space, full stop, three merges, <|endoftext|>: 32 ids. */
static const char *const vocab32_tok[] = {
    "a", "b", "c",	  "d", "e",	    "f",  "g",		"h",
    "i", "j", "k",	  "l", "m",	    "n",  "o",		"p",
    "q", "r", "s",	  "t", "u",	    "v",  "w",		"x",
    "y", "z", "\xc4\xa0", ".", "\xc4\xa0t", "th", "\xc4\xa0th", "<|endoftext|>",
};
static const char *const vocab32_merge[] = {"\xc4\xa0 t", "t h", "\xc4\xa0t h"};
static const hb_vocab vocab32 = {32, vocab32_tok, 3, vocab32_merge};

/* ================================================================ induction */

/* The induction model's specification. Scores are in attention-logit units
 * (after the 1/sqrt(D) scaling). */
typedef struct ind_spec {
	int L, H, C, V, P, F;
	double K;      /* constant in the CONST pair */
	double beta;   /* each token's embedding in OUT (its unembedding direction) */
	double s_prev; /* previous-token head: score of key t-1 */
	double s_ind;  /* induction head: score of a key whose previous token matches */
	double gate;   /* induction head: penalty on key 0 (its PREV is its own token) */
	double gamma;  /* induction head: OUT write per unit of attention */
	double lambda; /* logit of a token that the induction head fully attends to */
	double s_bos, s_self, s_dup; /* distractor patterns */
	double junk, leak;	     /* distractor outputs (RMS per dimension) */
	double noise;		     /* circuit readers: noise relative to their entries */
	double mlp_in, mlp_junk, mlp_leak;
	uint64_t seed;
	/* roles */
	int prev_head, ind_head; /* a0.h<prev_head>, a1.h<ind_head> */
} ind_spec;

static const ind_spec induction_spec = {
    .L = 2,
    .H = 4,
    .C = 160,
    .V = 32,
    .P = 32,
    .F = 16,
    .K = 40.0,
    .beta = 0.1,
    .s_prev = 16.0,
    .s_ind = 4.5,
    .gate = 30.0,
    .gamma = 2.0,
    .lambda = 6.0,
    .s_bos = 6.0,
    .s_self = 8.0,
    .s_dup = 4.0,
    .junk = 0.3,
    .leak = 0.01,
    .noise = 0.005,
    .mlp_in = 2.0,
    .mlp_junk = 0.3,
    .mlp_leak = 0.01,
    .seed = 7,
    .prev_head = 1,
    .ind_head = 2,
};

typedef struct ind_layout {
	const hb_block *tok, *out, *prev, *pos;
} ind_layout;

static int build_induction(circ_config *c, circ_weights *w, circ_hb_info *info, circ_error *e)
{
	const ind_spec *s = &induction_spec;
	hb b;
	ind_layout y;
	double sq;
	char r[32];
	int ph = s->prev_head, ih = s->ind_head, V, P, D;

	memset(c, 0, sizeof *c);
	c->n_layer = s->L;
	c->n_head = s->H;
	c->n_embd = s->C;
	c->n_ctx = s->P;
	c->vocab_size = s->V;
	c->n_inner = s->F;
	c->layer_norm_epsilon = 1e-5;
	c->act = CIRC_ACT_GELU_NEW;
	if (circ_config_check(c, e) < 0)
		return -1;
	hb_init(&b, c, w, info, s->seed, s->K);
	V = b.V, P = b.P, D = b.D;
	sq = sqrt((double)D);
	y.tok = add_block(&b, "TOK", V, "one-hot of the token (wte); read by every head");
	y.out = add_block(
	    &b, "OUT", V,
	    "unembedding directions: beta in wte, written by the induction head, read by ln_f");
	y.prev = add_block(&b, "PREV", V,
			   "one-hot of the previous token, written by the previous-token head");
	y.pos = add_block(&b, "POS", P, "one-hot of the position (wpe)");
	if (hb_reserve(&b) < 0 || D < V + 1 || D < P)
		return hb_fail(&b, "induction-hand", e);

	/* embeddings */
	for (int v = 0; v < V; v++) {
		w->wte[(size_t)v * (size_t)b.C + (size_t)(y.tok->off + v)] = 1.0f;
		w->wte[(size_t)v * (size_t)b.C + (size_t)(y.out->off + v)] = (float)s->beta;
	}
	for (int t = 0; t < P; t++)
		w->wpe[(size_t)t * (size_t)b.C + (size_t)(y.pos->off + t)] = 1.0f;

	/* layer 0: previous-token head (circuit) */
	role(&b, "previous-token", 0, ph);
	for (int t = 1; t < P; t++)
		rd(&b, 0, ph, PQ, y.pos->off + t, t - 1, s->s_prev * sq);
	for (int j = 0; j < P; j++)
		rd(&b, 0, ph, PK, y.pos->off + j, j, 1.0);
	for (int v = 0; v < V; v++) {
		rd(&b, 0, ph, PV, y.tok->off + v, v, 1.0);
		wr(&b, 0, ph, v, y.prev->off + v, 1.0);
	}
	reader_noise(&b, 0, ph, PQ, s->noise * s->s_prev * sq);
	reader_noise(&b, 0, ph, PK, s->noise);
	reader_noise(&b, 0, ph, PV, s->noise);
	snprintf(r, sizeof r, "a0.h%d<v>", ph);
	wire(&b, -1, -1, r, 1); /* its query and key read positions: no node */

	/* layer 0 distractors */
	for (int h = 0; h < b.H; h++) {
		if (h == ph)
			continue;
		switch (h % 3) {
		case 0: /* attends to position 0 */
			rd(&b, 0, h, PQ, b.ca, 0, s->s_bos * sq / s->K);
			rd(&b, 0, h, PK, y.pos->off, 0, 1.0);
			break;
		case 1: /* attends to itself */
			for (int t = 0; t < P; t++) {
				rd(&b, 0, h, PQ, y.pos->off + t, t, s->s_self * sq);
				rd(&b, 0, h, PK, y.pos->off + t, t, 1.0);
			}
			break;
		default: /* uniform */ break;
		}
		reader_random(&b, 0, h, PV, y.tok, 1.0);
		writer_random(&b, 0, h, s->junk, s->leak);
	}
	mlp_random(&b, 0, s->mlp_in, s->mlp_junk, s->mlp_leak);

	/* layer 1: induction head (circuit), K-composition with the
	 * previous-token head */
	role(&b, "induction", 1, ih);
	for (int v = 0; v < V; v++) {
		rd(&b, 1, ih, PQ, y.tok->off + v, v, s->s_ind * sq);
		rd(&b, 1, ih, PK, y.prev->off + v, v, 1.0);
		rd(&b, 1, ih, PV, y.tok->off + v, v, 1.0);
		wr(&b, 1, ih, v, y.out->off + v, s->gamma);
	}
	rd(&b, 1, ih, PQ, b.ca, V, sq / s->K);	    /* q[V] = 1 everywhere */
	rd(&b, 1, ih, PK, y.pos->off, V, -s->gate); /* k[V] = -gate at position 0 */
	reader_noise(&b, 1, ih, PQ, s->noise * s->s_ind * sq);
	reader_noise(&b, 1, ih, PK, s->noise);
	reader_noise(&b, 1, ih, PV, s->noise);
	snprintf(r, sizeof r, "a1.h%d<q>", ih);
	wire(&b, -1, -1, r, 0); /* the current token: not corrupted */
	snprintf(r, sizeof r, "a1.h%d<k>", ih);
	wire(&b, 0, ph, r, 1);
	snprintf(r, sizeof r, "a1.h%d<v>", ih);
	wire(&b, -1, -1, r, 1);
	wire(&b, 1, ih, "logits", 1);

	/* layer 1 distractors */
	for (int h = 0; h < b.H; h++) {
		if (h == ih)
			continue;
		switch (h % 3) {
		case 0: /* uniform, reads the previous-token block */
			reader_random(&b, 1, h, PV, y.prev, 1.0);
			break;
		case 1: /* attends to position 0 */
			rd(&b, 1, h, PQ, b.ca, 0, s->s_bos * sq / s->K);
			rd(&b, 1, h, PK, y.pos->off, 0, 1.0);
			reader_random(&b, 1, h, PV, y.tok, 1.0);
			break;
		default: /* duplicate-token head: attends to earlier copies of its token */
			for (int v = 0; v < V; v++) {
				rd(&b, 1, h, PQ, y.tok->off + v, v, s->s_dup * sq);
				rd(&b, 1, h, PK, y.tok->off + v, v, 1.0);
			}
			reader_random(&b, 1, h, PV, b.junk, 1.0);
			break;
		}
		writer_random(&b, 1, h, s->junk, s->leak);
	}
	mlp_random(&b, 1, s->mlp_in, s->mlp_junk, s->mlp_leak);

	/* unembedding: ln_f keeps OUT only; logit_v = lambda per unit of
	 * attention on a token v */
	for (int v = 0; v < V; v++)
		w->lnf_w[y.out->off + v] = (float)(b.sigma * s->lambda / (s->beta * s->gamma));

	if (hb_finish(&b, "induction-hand", e) < 0)
		return -1;
	info->summary = "previous-token head + induction head (K-composition), 2 layers x 4 heads";
	return 0;
}

/* ================================================================ ioi-hand */

/* Token ids of the ioi-hand vocabulary: 16 names, 14 fillers, END, BOS. */
enum { IOI_NAMES = 16, IOI_FILL0 = 16, IOI_NFILL = 14, IOI_END = 30, IOI_BOS = 31 };

static const char *const vocab_ioi_tok[] = {
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P",
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", ".", "<|endoftext|>",
};
static const hb_vocab vocab_ioi = {32, vocab_ioi_tok, 0, NULL};

typedef struct ioi_spec {
	int L, H, C, V, P, F, T;
	double K, beta;
	double s_dt, s_dt_bos, s_dt_self; /* duplicate-token head */
	double s_si, s_si_bos;		  /* S-inhibition head */
	double s_nm, s_inh;		  /* name mover */
	double gamma, lambda;
	double s_bos, s_self, s_dup;
	double junk, leak, noise;
	double mlp_in, mlp_junk, mlp_leak;
	uint64_t seed;
	int dt_head, si_head, nm_head; /* a0.h<dt>, a1.h<si>, a2.h<nm> */
} ioi_spec;

static const ioi_spec ioi_hand_spec = {
    .L = 3,
    .H = 4,
    .C = 160,
    .V = 32,
    .P = 16,
    .F = 16,
    .T = 16,
    .K = 40.0,
    .beta = 0.1,
    .s_dt = 5.0,
    .s_dt_bos = 3.0,
    .s_dt_self = 16.0,
    .s_si = 6.0,
    .s_si_bos = 3.0,
    .s_nm = 5.0,
    .s_inh = 7.0,
    .gamma = 2.0,
    .lambda = 8.0,
    .s_bos = 6.0,
    .s_self = 8.0,
    .s_dup = 4.0,
    .junk = 0.3,
    .leak = 0.01,
    .noise = 0.005,
    .mlp_in = 2.0,
    .mlp_junk = 0.3,
    .mlp_leak = 0.01,
    .seed = 11,
    .dt_head = 3,
    .si_head = 0,
    .nm_head = 1,
};

typedef struct ioi_layout {
	const hb_block *tok, *out, *pos, *dup, *inh;
} ioi_layout;

/* Distractors of layer l (every head but `skip`): patterns by h % 3. */
static void ioi_distractors(hb *b, const ioi_spec *s, const ioi_layout *y, int l, int skip)
{
	double sq = sqrt((double)b->D);
	for (int h = 0; h < b->H; h++) {
		if (h == skip)
			continue;
		switch ((h + l) % 3) {
		case 0: /* attends to BOS */
			rd(b, l, h, PQ, b->ca, 0, s->s_bos * sq / s->K);
			rd(b, l, h, PK, y->tok->off + IOI_BOS, 0, 1.0);
			reader_random(b, l, h, PV, y->tok, 1.0);
			break;
		case 1: /* attends to itself */
			for (int t = 0; t < b->P; t++) {
				rd(b, l, h, PQ, y->pos->off + t, t, s->s_self * sq);
				rd(b, l, h, PK, y->pos->off + t, t, 1.0);
			}
			reader_random(b, l, h, PV, y->tok, 1.0);
			break;
		default: /* uniform; reads the circuit's blocks and the scratch */
			reader_random(b, l, h, PV, l ? y->dup : y->pos, 1.0);
			if (l)
				reader_random(b, l, h, PV, y->inh, 1.0);
			reader_random(b, l, h, PV, b->junk, 0.3);
			break;
		}
		writer_random(b, l, h, s->junk, s->leak);
	}
	mlp_random(b, l, s->mlp_in, s->mlp_junk, s->mlp_leak);
}

static int build_ioi(circ_config *c, circ_weights *w, circ_hb_info *info, circ_error *e)
{
	const ioi_spec *s = &ioi_hand_spec;
	hb b;
	ioi_layout y;
	double sq;
	char r[32];
	int dt = s->dt_head, si = s->si_head, nm = s->nm_head, P;

	memset(c, 0, sizeof *c);
	c->n_layer = s->L;
	c->n_head = s->H;
	c->n_embd = s->C;
	c->n_ctx = s->P;
	c->vocab_size = s->V;
	c->n_inner = s->F;
	c->layer_norm_epsilon = 1e-5;
	c->act = CIRC_ACT_GELU_NEW;
	if (circ_config_check(c, e) < 0)
		return -1;
	hb_init(&b, c, w, info, s->seed, s->K);
	P = b.P;
	sq = sqrt((double)b.D);
	y.tok = add_block(&b, "TOK", b.V, "one-hot of the token (wte); read by every head");
	y.out = add_block(
	    &b, "OUT", b.V,
	    "unembedding directions: beta in wte, written by the name mover, read by ln_f");
	y.pos = add_block(&b, "POS", P, "one-hot of the position (wpe)");
	y.dup = add_block(&b, "DUP", 1,
			  "1 at a name that occurred before, written by the duplicate-token head");
	y.inh =
	    add_block(&b, "INH", IOI_NAMES,
		      "one-hot of the duplicated name at END, written by the S-inhibition head");
	if (hb_reserve(&b) < 0 || b.D < IOI_NAMES + 1 + P || b.V != 32)
		return hb_fail(&b, "ioi-hand", e);

	for (int v = 0; v < b.V; v++) {
		w->wte[(size_t)v * (size_t)b.C + (size_t)(y.tok->off + v)] = 1.0f;
		w->wte[(size_t)v * (size_t)b.C + (size_t)(y.out->off + v)] = (float)s->beta;
	}
	for (int t = 0; t < P; t++)
		w->wpe[(size_t)t * (size_t)b.C + (size_t)(y.pos->off + t)] = 1.0f;

	/* a0.dt, duplicate-token head. Head dims: 0..15 name match, 16 the
	 * BOS default, 17.. self exclusion. Value: 1 - [key is BOS]. */
	role(&b, "duplicate-token", 0, dt);
	for (int v = 0; v < IOI_NAMES; v++) {
		rd(&b, 0, dt, PQ, y.tok->off + v, v, s->s_dt * sq);
		rd(&b, 0, dt, PK, y.tok->off + v, v, 1.0);
	}
	rd(&b, 0, dt, PQ, b.ca, IOI_NAMES, s->s_dt_bos * sq / s->K);
	rd(&b, 0, dt, PK, y.tok->off + IOI_BOS, IOI_NAMES, 1.0);
	for (int t = 0; t < P; t++) {
		rd(&b, 0, dt, PQ, y.pos->off + t, IOI_NAMES + 1 + t, s->s_dt_self * sq);
		rd(&b, 0, dt, PK, y.pos->off + t, IOI_NAMES + 1 + t, -1.0);
	}
	rd(&b, 0, dt, PV, b.ca, 0, 1.0 / s->K);
	rd(&b, 0, dt, PV, y.tok->off + IOI_BOS, 0, -1.0);
	wr(&b, 0, dt, 0, y.dup->off, 1.0);
	reader_noise(&b, 0, dt, PQ, s->noise * s->s_dt * sq);
	reader_noise(&b, 0, dt, PK, s->noise);
	reader_noise(&b, 0, dt, PV, s->noise);
	snprintf(r, sizeof r, "a0.h%d<q>", dt);
	wire(&b, -1, -1, r, 1); /* the second S becomes C */
	snprintf(r, sizeof r, "a0.h%d<k>", dt);
	wire(&b, -1, -1, r, 0); /* the first S is not corrupted */
	snprintf(r, sizeof r, "a0.h%d<v>", dt);
	wire(&b, -1, -1, r, 0); /* BOS flag and constant */
	ioi_distractors(&b, s, &y, 0, dt);

	/* a1.si, S-inhibition head: at END, attends to DUP; copies the name
	 * there into INH. Head dims: 0 DUP match, 1 BOS default; value 0..15. */
	role(&b, "s-inhibition", 1, si);
	rd(&b, 1, si, PQ, y.tok->off + IOI_END, 0, s->s_si * sq);
	rd(&b, 1, si, PK, y.dup->off, 0, 1.0);
	rd(&b, 1, si, PQ, b.ca, 1, s->s_si_bos * sq / s->K);
	rd(&b, 1, si, PK, y.tok->off + IOI_BOS, 1, 1.0);
	for (int v = 0; v < IOI_NAMES; v++) {
		rd(&b, 1, si, PV, y.tok->off + v, v, 1.0);
		wr(&b, 1, si, v, y.inh->off + v, 1.0);
	}
	reader_noise(&b, 1, si, PQ, s->noise * s->s_si * sq);
	reader_noise(&b, 1, si, PK, s->noise);
	reader_noise(&b, 1, si, PV, s->noise);
	snprintf(r, sizeof r, "a1.h%d<q>", si);
	wire(&b, -1, -1, r, 0); /* END is not corrupted */
	snprintf(r, sizeof r, "a1.h%d<k>", si);
	wire(&b, 0, dt, r, 1);
	snprintf(r, sizeof r, "a1.h%d<v>", si);
	wire(&b, -1, -1, r, 1);
	ioi_distractors(&b, s, &y, 1, si);

	/* a2.nm, name mover: at END, attends to names, minus the inhibited one;
	 * copies the name into OUT. Head dims: 0 "is a name", 1..16 inhibition;
	 * value 0..15. */
	role(&b, "name-mover", 2, nm);
	rd(&b, 2, nm, PQ, y.tok->off + IOI_END, 0, s->s_nm * sq);
	for (int v = 0; v < IOI_NAMES; v++) {
		rd(&b, 2, nm, PK, y.tok->off + v, 0, 1.0);
		rd(&b, 2, nm, PQ, y.inh->off + v, 1 + v, -s->s_inh * sq);
		rd(&b, 2, nm, PK, y.tok->off + v, 1 + v, 1.0);
		rd(&b, 2, nm, PV, y.tok->off + v, v, 1.0);
		wr(&b, 2, nm, v, y.out->off + v, s->gamma);
	}
	reader_noise(&b, 2, nm, PQ, s->noise * s->s_nm * sq);
	reader_noise(&b, 2, nm, PK, s->noise);
	reader_noise(&b, 2, nm, PV, s->noise);
	snprintf(r, sizeof r, "a2.h%d<q>", nm);
	wire(&b, 1, si, r, 1);
	wire(&b, -1, -1, r, 0); /* the END flag */
	snprintf(r, sizeof r, "a2.h%d<k>", nm);
	wire(&b, -1, -1, r, 1); /* the second S's name */
	snprintf(r, sizeof r, "a2.h%d<v>", nm);
	wire(&b, -1, -1, r, 0); /* it copies IO, which is not corrupted */
	wire(&b, 2, nm, "logits", 1);
	ioi_distractors(&b, s, &y, 2, nm);

	for (int v = 0; v < b.V; v++)
		w->lnf_w[y.out->off + v] = (float)(b.sigma * s->lambda / (s->beta * s->gamma));
	if (hb_finish(&b, "ioi-hand", e) < 0)
		return -1;
	info->summary =
	    "duplicate-token -> S-inhibition -> name mover (IOI-like), 3 layers x 4 heads";
	return 0;
}

/* Emits one token-level example (dataset JSON lines with ids): clean and
 * corrupt (T ids each), the read position, answer and wrong ids, metric
 * logit_diff; meta is taken over. */
static int emit_ids_example(const char *task, const int32_t *clean, const int32_t *corrupt, int T,
			    int32_t answer, int32_t wrong, json_t *meta, circ_task_emit emit,
			    void *ctx, circ_error *e)
{
	json_t *ex = json_object(), *jc = json_array(), *jx = json_array();
	for (int t = 0; t < T; t++) {
		json_array_append_new(jc, json_integer(clean[t]));
		json_array_append_new(jx, json_integer(corrupt[t]));
	}
	json_object_set_new(ex, "task", json_string(task));
	json_object_set_new(ex, "clean_ids", jc);
	json_object_set_new(ex, "corrupt_ids", jx);
	json_object_set_new(ex, "pos", json_integer(T - 1));
	json_object_set_new(ex, "answer_ids", json_integer(answer));
	json_object_set_new(ex, "wrong_ids", json_integer(wrong));
	json_object_set_new(ex, "metric", json_string("logit_diff"));
	json_object_set_new(ex, "meta", meta);
	char *line = json_dumps(ex, JSON_COMPACT);
	int rc = emit(line, strlen(line), ctx, e);
	free(line);
	json_decref(ex);
	return rc;
}

/* ioi-hand's examples: BOS, 14 tokens with three names at random
 * positions p1 < p2 < p3 (IO and S at p1, p2 in random order, S again at
 * p3) among random fillers, END. Corrupt: the name at p3 becomes a third
 * name C. Answer IO, wrong S, metric logit_diff at END. */
static int examples_ioi(int64_t n, uint64_t seed, circ_task_emit emit, void *ctx, circ_error *e)
{
	const ioi_spec *s = &ioi_hand_spec;
	circ_rng r;
	int T = s->T;
	circ_rng_seed(&r, seed);
	for (int64_t i = 0; i < n; i++) {
		int32_t clean[64], corrupt[64];
		size_t p[3], nm[3];
		int io_first = (int)circ_rng_below(&r, 2);
		circ_rng_sample(&r, (size_t)(T - 2), 3, p);
		for (int a = 0; a < 3; a++) /* sort the positions */
			for (int b2 = a + 1; b2 < 3; b2++)
				if (p[b2] < p[a]) {
					size_t t = p[a];
					p[a] = p[b2];
					p[b2] = t;
				}
		circ_rng_sample(&r, IOI_NAMES, 3, nm); /* IO, S, C */
		clean[0] = IOI_BOS;
		for (int t = 1; t < T - 1; t++)
			clean[t] = IOI_FILL0 + (int32_t)circ_rng_below(&r, IOI_NFILL);
		clean[T - 1] = IOI_END;
		clean[1 + p[0]] = (int32_t)nm[io_first ? 0 : 1];
		clean[1 + p[1]] = (int32_t)nm[io_first ? 1 : 0];
		clean[1 + p[2]] = (int32_t)nm[1];
		memcpy(corrupt, clean, (size_t)T * sizeof *clean);
		corrupt[1 + p[2]] = (int32_t)nm[2];
		if (emit_ids_example("ioi-hand", clean, corrupt, T, (int32_t)nm[0], (int32_t)nm[1],
				     json_pack("{s:s}", "order", io_first ? "ABB" : "BAB"), emit,
				     ctx, e) < 0)
			return -1;
	}
	return 0;
}

/* induction-hand's examples: circ-dataset's induction recipe with a
 * repeated sequence of 12 ids from [0, 31) (all but <|endoftext|>). */
static int examples_induction(int64_t n, uint64_t seed, circ_task_emit emit, void *ctx,
			      circ_error *e)
{
	circ_task_opts o;
	circ_task_opts_default(&o);
	o.task = "induction";
	o.n = n;
	o.seed = seed;
	o.ind_len = 12;
	o.ind_vocab_lo = 0;
	o.ind_vocab_hi = 31;
	return circ_task_generate(&o, emit, ctx, e);
}

/* ================================================================ planted-features */

/* A feature-level fixture: subject-verb agreement computed from features
 * in superposition, with SAE dictionaries whose decoder rows are the planted
 * directions (handbuilt.h, circ-fixture(1)).
 *
 * Every feature is a unit direction of the residual stream that sums to zero
 * (so no sink entry is ever needed): the 20 token-identity features (8 noun
 * lemmas, 12 fillers) share the 10 dimensions of LEX with |cos| <= 0.45
 * (they are never active at the same position); every other feature has a
 * pair of dimensions of its own ((e_a - e_b) / sqrt 2), so features that are
 * active together are orthogonal. */

enum {
	PF_LEMMAS = 8,
	PF_FILLERS = 12,
	/* feature ids (global: a dictionary's features are a range of them) */
	PF_LEMMA0 = 0,
	PF_FILL0 = PF_LEMMA0 + PF_LEMMAS,
	PF_SG = PF_FILL0 + PF_FILLERS,
	PF_PL,
	PF_END,
	PF_BOS,
	PF_POS1,
	PF_POS4,
	PF_SUBJ_SG,
	PF_SUBJ_PL,
	PF_ATTR_SG,
	PF_ATTR_PL,
	PF_ANIM,
	PF_SUBJ_ANIM,
	PF_VERB_SG,
	PF_VERB_PL,
	PF_NF,
	/* token ids: 0..7 singular nouns, 8..15 plural, 16..27 fillers */
	PF_TOK_PL0 = PF_LEMMAS,
	PF_TOK_FILL0 = 2 * PF_LEMMAS,
	PF_TOK_END = PF_TOK_FILL0 + PF_FILLERS,
	PF_TOK_IS,
	PF_TOK_ARE,
	PF_TOK_BOS,
	PF_V,
	/* sequence: BOS, subject, 2 fillers, attractor, 2 fillers, END */
	PF_T = 8,
	PF_SUBJ_POS = 1,
	PF_ATTR_POS = 4,
	PF_C = 48,
	PF_LEX = 10,   /* dimensions 0..9 */
	PF_ANIMATE = 5 /* lemmas 0..4 are animate */
};

static const char *const pf_feature_names[PF_NF] = {
    "lemma0",  "lemma1",  "lemma2",  "lemma3",	     "lemma4",	 "lemma5",   "lemma6",
    "lemma7",  "filler0", "filler1", "filler2",	     "filler3",	 "filler4",  "filler5",
    "filler6", "filler7", "filler8", "filler9",	     "filler10", "filler11", "sg",
    "pl",      "end",	  "bos",     "pos1",	     "pos4",	 "subj_sg",  "subj_pl",
    "attr_sg", "attr_pl", "animate", "subj_animate", "verb_sg",	 "verb_pl",
};

/* The dictionaries: name (circ_dict_name), hook, first feature, count. */
static const struct pf_dict {
	const char *name, *hook;
	int first, n;
} pf_dicts[] = {
    {"resid_pre0", "blocks.0.hook_resid_pre", 0, PF_SUBJ_SG},
    {"attn0", "blocks.0.hook_attn_out", PF_SUBJ_SG, 4},
    {"mlp0", "blocks.0.hook_mlp_out", PF_ANIM, 1},
    {"resid0", "blocks.0.hook_resid_post", 0, PF_ANIM + 1},
    {"attn1", "blocks.1.hook_attn_out", PF_SUBJ_ANIM, 1},
    {"mlp1", "blocks.1.hook_mlp_out", PF_VERB_SG, 2},
    {"resid1", "blocks.1.hook_resid_post", 0, PF_NF},
};
#define PF_NDICTS ((int)(sizeof pf_dicts / sizeof pf_dicts[0]))

static const char *const vocab_pf_tok[PF_V] = {
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P",
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", ".", "s", "r", "<|endoftext|>",
};
static const hb_vocab vocab_pf = {PF_V, vocab_pf_tok, 0, NULL};

/* The scales: attention scores (logits after 1/sqrt(D)), MLP input gains. */
typedef struct pf_spec {
	int L, H, F;
	double K;      /* constant pair */
	double s_pos;  /* END's score for the key it looks for (pos1, pos4) */
	double s_bos;  /* every query's score for BOS (the default) */
	double a_gain; /* mlp0: lemma detector gain and threshold */
	double a_thr;
	double g_gain; /* mlp1: AND gate gain and bias */
	double g_bias;
	double lambda; /* logit per unit of verb_sg / verb_pl */
	double cos_max;
	double theta; /* SAE JumpReLU threshold */
	uint64_t seed;
} pf_spec;

static const pf_spec planted_spec = {
    .L = 2,
    .H = 2,
    .F = 8,
    .K = 40.0,
    .s_pos = 20.0,
    .s_bos = 10.0,
    .a_gain = 24.0,
    .a_thr = 0.75,
    .g_gain = 12.0,
    .g_bias = 1.5,
    .lambda = 4.0,
    .cos_max = 0.45,
    .theta = 0.5,
    .seed = 18,
};

/* The directions (PF_NF, C), unit and zero-sum; deterministic. The LEX
 * ones are drawn (Irwin-Hall normals, centred, normalised) and redrawn
 * until every |cos| with the earlier ones is at most cos_max. -1 if that
 * takes too long (a spec that cannot be met). */
static int pf_directions(double (*dir)[PF_C])
{
	const pf_spec *s = &planted_spec;
	circ_rng r;
	int block = PF_LEX; /* next free pair of dimensions */
	memset(dir, 0, sizeof(double) * PF_NF * PF_C);
	circ_rng_seed(&r, s->seed);
	for (int f = 0; f < PF_LEMMAS + PF_FILLERS; f++) {
		int tries = 0, ok = 0;
		while (!ok) {
			double m = 0, n = 0;
			if (++tries > 100000)
				return -1;
			for (int i = 0; i < PF_LEX; i++)
				m += dir[f][i] = gauss(&r);
			for (int i = 0; i < PF_LEX; i++) {
				dir[f][i] -= m / PF_LEX;
				n += dir[f][i] * dir[f][i];
			}
			n = sqrt(n);
			for (int i = 0; i < PF_LEX; i++)
				dir[f][i] /= n;
			ok = 1;
			for (int g = 0; g < f && ok; g++) {
				double c = 0;
				for (int i = 0; i < PF_LEX; i++)
					c += dir[f][i] * dir[g][i];
				ok = fabs(c) <= s->cos_max;
			}
		}
	}
	for (int f = PF_SG; f < PF_NF; f++) {
		dir[f][block] = 1 / sqrt(2.0);
		dir[f][block + 1] = -1 / sqrt(2.0);
		block += 2;
	}
	return 0;
}

/* The dimension blocks (for the layout table): LEX, then one per group. */
static void pf_blocks(hb *b)
{
	add_block(b, "LEX", PF_LEX,
		  "8 noun lemmas and 12 fillers in superposition (|cos| <= 0.45; wte)");
	add_block(b, "NUM", 4, "sg, pl (wte of nouns); read by the value of a0.h0 and a0.h1");
	add_block(b, "TOKS", 4, "end, bos (wte); read by queries and keys, and by m1");
	add_block(b, "POS", 4, "pos1, pos4 (wpe at positions 1 and 4); read by keys");
	add_block(b, "SUBJ", 4, "subj_sg, subj_pl: written by a0.h0 at END, read by m1");
	add_block(b, "ATTR", 4, "attr_sg, attr_pl: written by a0.h1 at END, read by nobody");
	add_block(b, "ANIM", 4, "animate (m0, at animate nouns), subj_animate (a1.h0, at END)");
	add_block(b, "OUT", 4,
		  "verb_sg, verb_pl: written by m1 at END, read by ln_f (wte of s, r)");
}

/* Reads direction u into head dimension d of part (q, k or v): x . u. */
static void rd_dir(hb *b, int l, int h, int part, const double *u, int d, double gain)
{
	for (int i = 0; i < b->C; i++)
		if (u[i] != 0)
			rd(b, l, h, part, i, d, gain * u[i]);
}

static void wr_dir(hb *b, int l, int h, int d, const double *u, double gain)
{
	for (int i = 0; i < b->C; i++)
		if (u[i] != 0)
			wr(b, l, h, d, i, gain * u[i]);
}

/* A head that, at END, attends to the key carrying feature `key` (BOS
 * otherwise) and copies features in[0..n) into out[0..n). */
static void pf_mover(hb *b, double (*dir)[PF_C], int l, int h, int key, const int *in,
		     const int *out, int n)
{
	const pf_spec *s = &planted_spec;
	double sq = sqrt((double)b->D);
	rd_dir(b, l, h, PQ, dir[PF_END], 0, s->s_pos * sq);
	rd_dir(b, l, h, PK, dir[key], 0, 1.0);
	rd(b, l, h, PQ, b->ca, 1, s->s_bos * sq / s->K);
	rd_dir(b, l, h, PK, dir[PF_BOS], 1, 1.0);
	for (int i = 0; i < n; i++) {
		rd_dir(b, l, h, PV, dir[in[i]], 2 + i, 1.0);
		wr_dir(b, l, h, 2 + i, dir[out[i]], 1.0);
	}
}

/* A feature edge of the truth: "<dict>.f<i>-><dict>.f<j>" or "->logits". */
static void pf_edge(hb *b, int du, int fu, int dd, int fd)
{
	circ_hb_info *in = b->info;
	char *e;
	if (in->n_feature_truth >= CIRC_HB_MAX_EDGES) {
		b->ok = 0;
		return;
	}
	e = in->feature_truth[in->n_feature_truth++];
	if (dd < 0)
		snprintf(e, 64, "%s.f%d->logits", pf_dicts[du].name, fu - pf_dicts[du].first);
	else
		snprintf(e, 64, "%s.f%d->%s.f%d", pf_dicts[du].name, fu - pf_dicts[du].first,
			 pf_dicts[dd].name, fd - pf_dicts[dd].first);
}

static int build_planted(circ_config *c, circ_weights *w, circ_hb_info *info, circ_error *e)
{
	const pf_spec *s = &planted_spec;
	double dir[PF_NF][PF_C];
	hb b;
	enum { D_PRE, D_ATTN0, D_MLP0, D_RESID0, D_ATTN1, D_MLP1, D_RESID1 };

	memset(c, 0, sizeof *c);
	c->n_layer = s->L;
	c->n_head = s->H;
	c->n_embd = PF_C;
	c->n_ctx = PF_T;
	c->vocab_size = PF_V;
	c->n_inner = s->F;
	c->layer_norm_epsilon = 1e-5;
	c->act = CIRC_ACT_GELU_NEW;
	if (circ_config_check(c, e) < 0)
		return -1;
	if (pf_directions(dir) < 0)
		return circ_errorf(e, "planted-features: no directions within the cosine bound");
	hb_init(&b, c, w, info, s->seed, s->K);
	pf_blocks(&b);
	if (hb_reserve(&b) < 0 || b.D < 4 || b.F < PF_ANIMATE)
		return hb_fail(&b, "planted-features", e);

	/* embeddings: a token is the sum of its features; IS and ARE (never
	 * inputs) are the verb directions, which the tied unembedding reads */
	for (int v = 0; v < PF_V; v++) {
		float *row = w->wte + (size_t)v * (size_t)b.C;
		int f1 = -1, f2 = -1;
		if (v < PF_TOK_FILL0)
			f1 = PF_LEMMA0 + v % PF_LEMMAS, f2 = v < PF_TOK_PL0 ? PF_SG : PF_PL;
		else if (v < PF_TOK_END)
			f1 = PF_FILL0 + v - PF_TOK_FILL0;
		else
			f1 = v == PF_TOK_END   ? PF_END
			     : v == PF_TOK_IS  ? PF_VERB_SG
			     : v == PF_TOK_ARE ? PF_VERB_PL
					       : PF_BOS;
		for (int i = 0; i < b.C; i++)
			row[i] = (float)(dir[f1][i] + (f2 >= 0 ? dir[f2][i] : 0));
	}
	for (int i = 0; i < b.C; i++) {
		w->wpe[(size_t)PF_SUBJ_POS * (size_t)b.C + (size_t)i] += (float)dir[PF_POS1][i];
		w->wpe[(size_t)PF_ATTR_POS * (size_t)b.C + (size_t)i] += (float)dir[PF_POS4][i];
	}

	/* layer 0: the subject-number mover and the attractor-number mover */
	{
		const int in[2] = {PF_SG, PF_PL}, subj[2] = {PF_SUBJ_SG, PF_SUBJ_PL},
			  attr[2] = {PF_ATTR_SG, PF_ATTR_PL};
		pf_mover(&b, dir, 0, 0, PF_POS1, in, subj, 2);
		pf_mover(&b, dir, 0, 1, PF_POS4, in, attr, 2);
		role(&b, "subject-number mover", 0, 0);
		role(&b, "attractor-number mover (distractor)", 0, 1);
	}
	/* m0: one unit per animate lemma, writing `animate` (a distractor) */
	for (int k = 0; k < PF_ANIMATE; k++) {
		circ_layer_weights *lw = &w->layers[0];
		for (int i = 0; i < b.C; i++) {
			lw->fc_w[(size_t)i * (size_t)b.F + (size_t)k] =
			    (float)(s->a_gain * dir[PF_LEMMA0 + k][i]);
			lw->fcproj_w[(size_t)k * (size_t)b.C + (size_t)i] =
			    (float)(dir[PF_ANIM][i] / (s->a_gain * (1 - s->a_thr)));
		}
		lw->fc_b[k] = (float)(-s->a_gain * s->a_thr);
	}
	/* layer 1: the animacy mover (a distractor); a1.h1 is idle */
	{
		const int in[1] = {PF_ANIM}, out[1] = {PF_SUBJ_ANIM};
		pf_mover(&b, dir, 1, 0, PF_POS1, in, out, 1);
		role(&b, "animacy mover (distractor)", 1, 0);
	}
	/* m1: verb_sg = AND(subj_sg, end), verb_pl = AND(subj_pl, end) */
	for (int k = 0; k < 2; k++) {
		circ_layer_weights *lw = &w->layers[1];
		int subj = k ? PF_SUBJ_PL : PF_SUBJ_SG, verb = k ? PF_VERB_PL : PF_VERB_SG;
		for (int i = 0; i < b.C; i++) {
			lw->fc_w[(size_t)i * (size_t)b.F + (size_t)k] =
			    (float)(s->g_gain * (dir[subj][i] + dir[PF_END][i]));
			lw->fcproj_w[(size_t)k * (size_t)b.C + (size_t)i] =
			    (float)(dir[verb][i] / (s->g_gain * (2 - s->g_bias)));
		}
		lw->fc_b[k] = (float)(-s->g_gain * s->g_bias);
	}
	/* unembedding: ln_f keeps OUT, gain lambda */
	for (int i = 0; i < b.C; i++)
		if (dir[PF_VERB_SG][i] != 0 || dir[PF_VERB_PL][i] != 0)
			w->lnf_w[i] = (float)(b.sigma * s->lambda);

	/* component-level truth (graph names) */
	wire(&b, -1, -1, "a0.h0<v>", 1);
	wire(&b, 0, 0, "m1", 1);
	wire(&b, 1, -1, "logits", 1);
	wire(&b, -1, -1, "a0.h0<q>", 0);
	wire(&b, -1, -1, "a0.h0<k>", 0);
	wire(&b, -1, -1, "m1", 0);
	/* feature-level truth: the number's path, singular and plural */
	for (int k = 0; k < 2; k++) {
		int num = PF_SG + k, subj = PF_SUBJ_SG + k, verb = PF_VERB_SG + k;
		pf_edge(&b, D_PRE, num, D_ATTN0, subj);
		pf_edge(&b, D_ATTN0, subj, D_RESID0, subj);
		pf_edge(&b, D_RESID0, subj, D_MLP1, verb);
		pf_edge(&b, D_MLP1, verb, D_RESID1, verb);
		pf_edge(&b, D_RESID1, verb, -1, 0);
	}
	{
		static const int nodes[][2] = {
		    {D_PRE, PF_SG},	    {D_PRE, PF_PL},	    {D_ATTN0, PF_SUBJ_SG},
		    {D_ATTN0, PF_SUBJ_PL},  {D_RESID0, PF_SUBJ_SG}, {D_RESID0, PF_SUBJ_PL},
		    {D_MLP1, PF_VERB_SG},   {D_MLP1, PF_VERB_PL},   {D_RESID1, PF_VERB_SG},
		    {D_RESID1, PF_VERB_PL},
		};
		for (size_t k = 0; k < sizeof nodes / sizeof nodes[0]; k++)
			snprintf(info->feature_nodes[info->n_feature_nodes++], 48, "%s.f%d",
				 pf_dicts[nodes[k][0]].name,
				 nodes[k][1] - pf_dicts[nodes[k][0]].first);
	}
	if (hb_finish(&b, "planted-features", e) < 0)
		return -1;
	info->summary = "subject-verb agreement from features in superposition, with SAEs "
			"(feature-level truth), 2 layers x 2 heads";
	return 0;
}

/* planted-features' examples: BOS, subject noun, 2 fillers, attractor noun
 * (another lemma), 2 fillers, END. The clean subject is singular for even
 * i, plural for odd i; the corruption flips its number. Per example: the
 * subject's lemma below(8), the attractor's lemma below(8) until it
 * differs, its number below(2), then the 4 fillers below(12). Answer `s`
 * (IS) for a singular subject, `r` (ARE) for a plural one; metric
 * logit_diff at END. */
static int examples_planted(int64_t n, uint64_t seed, circ_task_emit emit, void *ctx, circ_error *e)
{
	circ_rng r;
	circ_rng_seed(&r, seed);
	for (int64_t i = 0; i < n; i++) {
		int32_t clean[PF_T], corrupt[PF_T];
		int pl = (int)(i % 2);
		size_t lem[2];
		lem[0] = (size_t)circ_rng_below(&r, PF_LEMMAS);
		do
			lem[1] = (size_t)circ_rng_below(&r, PF_LEMMAS);
		while (lem[1] == lem[0]);
		int attr_pl = (int)circ_rng_below(&r, 2);
		clean[0] = PF_TOK_BOS;
		clean[PF_SUBJ_POS] = (int32_t)lem[0] + (pl ? PF_TOK_PL0 : 0);
		clean[PF_ATTR_POS] = (int32_t)lem[1] + (attr_pl ? PF_TOK_PL0 : 0);
		for (int t = 2; t < PF_T - 1; t++)
			if (t != PF_ATTR_POS)
				clean[t] = PF_TOK_FILL0 + (int32_t)circ_rng_below(&r, PF_FILLERS);
		clean[PF_T - 1] = PF_TOK_END;
		memcpy(corrupt, clean, sizeof clean);
		corrupt[PF_SUBJ_POS] = (int32_t)lem[0] + (pl ? 0 : PF_TOK_PL0);
		if (emit_ids_example("planted-features", clean, corrupt, PF_T,
				     pl ? PF_TOK_ARE : PF_TOK_IS, pl ? PF_TOK_IS : PF_TOK_ARE,
				     json_pack("{s:s,s:s}", "number", pl ? "plural" : "singular",
					       "attractor", attr_pl ? "plural" : "singular"),
				     emit, ctx, e) < 0)
			return -1;
	}
	return 0;
}

/* Writes planted-features' dictionaries under dir/dicts/<name>: JumpReLU
 * SAEs whose decoder rows and encoder columns are the planted directions,
 * thresholds theta, b_enc 0, b_dec the constant pair at resid hooks. */
static int write_planted_dicts(const char *dir, circ_error *e)
{
	const pf_spec *s = &planted_spec;
	double d[PF_NF][PF_C];
	char path[4096];
	if (pf_directions(d) < 0)
		return circ_errorf(e, "planted-features: no directions within the cosine bound");
	snprintf(path, sizeof path, "%s/dicts", dir);
	if (mkdir(path, 0777) < 0 && errno != EEXIST)
		return circ_errorf(e, "'%s': cannot create: %s", path, strerror(errno));
	for (int k = 0; k < PF_NDICTS; k++) {
		const struct pf_dict *pd = &pf_dicts[k];
		circ_dict_cfg cfg;
		circ_dict *sae;
		int rc;
		circ_dict_cfg_init(&cfg);
		cfg.arch = CIRC_DICT_JUMPRELU;
		cfg.d_in = cfg.d_out = PF_C;
		cfg.d_sae = pd->n;
		cfg.apply_b_dec_to_input = 1;
		snprintf(cfg.hook_name, sizeof cfg.hook_name, "%s", pd->hook);
		snprintf(cfg.model_name, sizeof cfg.model_name, "planted-features");
		if (!(sae = circ_dict_new(&cfg, e)))
			return -1;
		memset(sae->mem, 0, sae->n_params * sizeof(float));
		for (int j = 0; j < pd->n; j++) {
			for (int i = 0; i < PF_C; i++) {
				float v = (float)d[pd->first + j][i];
				sae->W_dec[(size_t)j * PF_C + (size_t)i] = v;
				sae->W_enc[(size_t)i * (size_t)pd->n + (size_t)j] = v;
			}
			sae->threshold[j] = (float)s->theta;
		}
		if (strstr(pd->hook, "resid")) { /* the constant pair (hb_reserve's dims) */
			sae->b_dec[PF_LEX + 2 * (PF_NF - PF_SG)] = (float)s->K;
			sae->b_dec[PF_LEX + 2 * (PF_NF - PF_SG) + 1] = (float)-s->K;
		}
		snprintf(path, sizeof path, "%s/dicts/%s", dir, pd->name);
		rc = circ_dict_save(sae, path, "F32", e);
		circ_dict_free(sae);
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* ================================================================ registry */

typedef struct hb_model {
	const char *name;
	int (*build)(circ_config *c, circ_weights *w, circ_hb_info *info, circ_error *e);
	int (*examples)(int64_t n, uint64_t seed, circ_task_emit emit, void *ctx, circ_error *e);
	const hb_vocab *vocab;
	int (*spec)(FILE *f, const circ_hb_info *info, const char *digest);
	int (*dicts)(const char *dir, circ_error *e); /* feature fixtures: the SAEs */
} hb_model;

static int spec_induction(FILE *f, const circ_hb_info *info, const char *digest);
static int spec_ioi(FILE *f, const circ_hb_info *info, const char *digest);
static int spec_planted(FILE *f, const circ_hb_info *info, const char *digest);

static const hb_model models[] = {
    {"induction-hand", build_induction, examples_induction, &vocab32, spec_induction, NULL},
    {"ioi-hand", build_ioi, examples_ioi, &vocab_ioi, spec_ioi, NULL},
    {"planted-features", build_planted, examples_planted, &vocab_pf, spec_planted,
     write_planted_dicts},
};
static const char *const model_names[] = {"induction-hand", "ioi-hand"};
static const char *const feature_names[] = {"planted-features"};
#define N_MODELS ((int)(sizeof models / sizeof models[0]))

const char *const *circ_hb_names(int *n)
{
	*n = (int)(sizeof model_names / sizeof *model_names);
	return model_names;
}

const char *const *circ_hb_feature_names(int *n)
{
	*n = (int)(sizeof feature_names / sizeof *feature_names);
	return feature_names;
}

static const hb_model *find_model(const char *name, circ_error *e)
{
	for (int i = 0; i < N_MODELS; i++)
		if (!strcmp(models[i].name, name))
			return &models[i];
	circ_errorf(e, "unknown model '%s'", name);
	return NULL;
}

int circ_hb_build(const char *name, circ_config *c, circ_weights *w, circ_hb_info *info,
		  circ_error *e)
{
	circ_hb_info tmp;
	const hb_model *m = find_model(name, e);
	if (!m)
		return -1;
	if (!info)
		info = &tmp;
	memset(info, 0, sizeof *info);
	return m->build(c, w, info, e);
}

int circ_hb_examples(const char *name, int64_t n, uint64_t seed, circ_task_emit emit, void *ctx,
		     circ_error *e)
{
	const hb_model *m = find_model(name, e);
	if (!m)
		return -1;
	if (n < 0)
		return circ_errorf(e, "number of examples must be >= 0 (got %lld)", (long long)n);
	return m->examples(n, seed, emit, ctx, e);
}

/* ================================================================ files */

typedef int (*write_fn)(FILE *f, void *ctx, circ_error *e);

/* Writes dir/name through a temporary in dir, renamed into place. */
static int write_file(const char *dir, const char *name, write_fn fn, void *ctx, circ_error *e)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *path = circ_xmalloc(n);
	circ_atomic a;
	FILE *f;
	int rc = -1;
	snprintf(path, n, "%s/%s", dir, name);
	if (circ_atomic_open(&a, path, e) < 0)
		goto out;
	if (!(f = circ_atomic_file(&a, e))) {
		circ_atomic_abort(&a);
		goto out;
	}
	if (fn(f, ctx, e) < 0) {
		circ_error_prefix(e, "'%s'", path);
		circ_atomic_abort(&a);
		goto out;
	}
	rc = circ_atomic_commit(&a, e);
out:
	free(path);
	return rc;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

static int write_vocab(FILE *f, void *ctx, circ_error *e)
{
	const hb_vocab *v = ctx;
	fputc('{', f);
	for (int i = 0; i < v->n; i++) {
		fputs(i ? ", " : "", f);
		json_str(f, v->tok[i]);
		fprintf(f, ": %d", i);
	}
	fputs("}\n", f);
	return 0;
}

static int write_merges(FILE *f, void *ctx, circ_error *e)
{
	const hb_vocab *v = ctx;
	fputs("#version: 0.2\n", f);
	for (int i = 0; i < v->nmerge; i++)
		fprintf(f, "%s\n", v->merge[i]);
	return 0;
}

typedef struct truth_ctx {
	const char *name;
	const circ_config *c;
	const circ_hb_info *info;
	const char *digest;
} truth_ctx;

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* truth.jsonl: a circuit stream header, then the truth edges in canonical
 * order, then the end record. Each name is checked against the graph. */
static int write_truth(FILE *f, void *ctx, circ_error *e)
{
	truth_ctx *t = ctx;
	circ_graph *g = circ_graph_new(t->c->n_layer, t->c->n_head, CIRC_LEVEL_EDGE, e);
	int64_t idx[CIRC_HB_MAX_EDGES];
	int n = t->info->n_truth;
	if (!g)
		return -1;
	for (int i = 0; i < n; i++)
		if (circ_graph_parse_edge(g, t->info->truth[i], strlen(t->info->truth[i]), &idx[i],
					  e) < 0) {
			circ_graph_free(g);
			return -1;
		}
	qsort(idx, (size_t)n, sizeof *idx, cmp_i64);
	fprintf(
	    f,
	    "{\"format\":\"circ\",\"version\":1,\"kind\":\"circuit\",\"tool\":\"circ-fixture\","
	    "\"args\":[\"%s\"],\"graph\":{\"n_layer\":%d,\"n_head\":%d,\"level\":\"edge\"},"
	    "\"source\":{\"method\":\"construction\",\"mode\":\"truth\"},\"model_digest\":\"%s\","
	    "\"n_edges_total\":%lld}\n",
	    t->name, g->n_layer, g->n_head, t->digest, (long long)g->n_edges);
	for (int i = 0; i < n; i++) {
		char name[CIRC_NAME_MAX];
		if (i && idx[i] == idx[i - 1]) {
			circ_graph_free(g);
			return circ_errorf(e, "edge '%s' wired twice", t->info->truth[i]);
		}
		circ_graph_edge_name(g, idx[i], name, sizeof name);
		fprintf(f, "{\"edge\":\"%s\"}\n", name);
	}
	fprintf(f, "{\"$end\":{\"records\":%d}}\n", n); /* as stream writers end (stream.h) */
	circ_graph_free(g);
	return 0;
}

/* truth-features.jsonl and truth-nodes.jsonl: headerless JSON lines, one
 * {"edge": ...} or {"node": ...} each (the lists of a feature fixture). */
static int write_ftruth(FILE *f, void *ctx, circ_error *e)
{
	const circ_hb_info *in = ((truth_ctx *)ctx)->info;
	for (int i = 0; i < in->n_feature_truth; i++)
		fprintf(f, "{\"edge\":\"%s\"}\n", in->feature_truth[i]);
	return 0;
}

static int write_fnodes(FILE *f, void *ctx, circ_error *e)
{
	const circ_hb_info *in = ((truth_ctx *)ctx)->info;
	for (int i = 0; i < in->n_feature_nodes; i++)
		fprintf(f, "{\"node\":\"%s\"}\n", in->feature_nodes[i]);
	return 0;
}

static int emit_file(const char *line, size_t len, void *ctx, circ_error *e)
{
	FILE *f = ctx;
	if (fwrite(line, 1, len, f) != len || fputc('\n', f) == EOF)
		return circ_errorf(e, "write error");
	return 0;
}

/* dataset.jsonl: 64 examples of the task, seed 1 (circ-fixture NAME
 * --examples 64 --seed 1). */
static int write_dataset(FILE *f, void *ctx, circ_error *e)
{
	return circ_hb_examples(((truth_ctx *)ctx)->name, 64, 1, emit_file, f, e);
}

static int write_spec_cb(FILE *f, void *ctx, circ_error *e)
{
	truth_ctx *t = ctx;
	const hb_model *m = find_model(t->name, e);
	if (m && m->spec(f, t->info, t->digest) < 0)
		return circ_errorf(e, "write error");
	return m ? 0 : -1;
}

int circ_hb_write_spec(const char *name, FILE *f, circ_error *e)
{
	const hb_model *hm = find_model(name, e);
	circ_config c;
	circ_weights w;
	circ_hb_info info;
	circ_model *m;
	const char *digest;
	int rc;
	if (!hm || circ_hb_build(name, &c, &w, &info, e) < 0)
		return -1;
	if (!(m = circ_model_new(&c, &w, e))) {
		circ_weights_free(&w);
		return -1;
	}
	digest = circ_model_digest(m, e);
	rc = digest ? hm->spec(f, &info, digest) : -1;
	if (digest && rc < 0)
		circ_errorf(e, "write error");
	circ_model_free(m);
	return rc;
}

int circ_hb_write_dir(const char *name, const char *dir, circ_error *e)
{
	const hb_model *hm = find_model(name, e);
	circ_config c;
	circ_weights w;
	circ_hb_info info;
	circ_model *m;
	truth_ctx t;
	int rc = -1;
	if (!hm || circ_hb_build(name, &c, &w, &info, e) < 0)
		return -1;
	if (c.vocab_size != hm->vocab->n) {
		circ_weights_free(&w);
		return circ_errorf(e, "%s: vocabulary has %d ids, the model %d", name, hm->vocab->n,
				   c.vocab_size);
	}
	if (!(m = circ_model_new(&c, &w, e))) {
		circ_weights_free(&w);
		return -1;
	}
	t.name = name;
	t.c = &c;
	t.info = &info;
	if (circ_model_save(m, dir, e) < 0 || !(t.digest = circ_model_digest(m, e)))
		goto out;
	if (write_file(dir, "vocab.json", write_vocab, (void *)hm->vocab, e) < 0 ||
	    write_file(dir, "merges.txt", write_merges, (void *)hm->vocab, e) < 0 ||
	    write_file(dir, "truth.jsonl", write_truth, &t, e) < 0 ||
	    write_file(dir, "SPEC.md", write_spec_cb, &t, e) < 0)
		goto out;
	if (hm->dicts && (hm->dicts(dir, e) < 0 ||
			  write_file(dir, "truth-features.jsonl", write_ftruth, &t, e) < 0 ||
			  write_file(dir, "truth-nodes.jsonl", write_fnodes, &t, e) < 0 ||
			  write_file(dir, "dataset.jsonl", write_dataset, &t, e) < 0))
		goto out;
	rc = 0;
out:
	circ_model_free(m);
	return rc;
}

/* ================================================================ SPEC.md */

/* Sections every SPEC.md shares: the files, the configuration, the
 * residual layout and the LayerNorm argument. */
static void spec_common(FILE *f, const circ_hb_info *in, const circ_config *c, const char *digest)
{
	fprintf(
	    f,
	    "## Files\n\n"
	    "- `config.json`, `model.safetensors`: a Hugging Face GPT-2 model (F32, tied "
	    "unembedding).\n"
	    "- `vocab.json`, `merges.txt`: a byte-level BPE vocabulary of exactly %d ids.\n"
	    "- `truth.jsonl`: the ground-truth circuit (a circ circuit stream in JSON lines).\n"
	    "- `SPEC.md`: this file.\n\n"
	    "Everything here is written by `circ-fixture %s --out DIR` from the specification in\n"
	    "`lib/handbuilt.c`; nothing is trained or discovered. Model digest: `%s`.\n\n",
	    c->vocab_size, in->name, digest);
	fprintf(f,
		"## Architecture\n\n"
		"GPT-2 exactly (pre-LayerNorm blocks, GELU (tanh) MLPs, learned positional "
		"embeddings,\n"
		"tied unembedding): %d layers, %d heads of width %d, n_embd %d, n_ctx %d, "
		"vocabulary %d,\n"
		"MLP width %d, LayerNorm epsilon %g.\n\n",
		c->n_layer, c->n_head, c->n_embd / c->n_head, c->n_embd, c->n_ctx, c->vocab_size,
		c->n_inner, c->layer_norm_epsilon);
	fprintf(f,
		"## Residual stream layout\n\n| block | dimensions | purpose |\n|---|---|---|\n");
	for (int i = 0; i < in->n_blocks; i++)
		fprintf(f, "| %s | %d..%d | %s |\n", in->blocks[i].name, in->blocks[i].off,
			in->blocks[i].off + in->blocks[i].n - 1, in->blocks[i].what);
	fprintf(
	    f,
	    "\nOne-hot codes are exact (entries 1). A head reads a block through its W_Q, W_K or "
	    "W_V\n"
	    "rows for those dimensions and writes a block through its W_O columns.\n\n"
	    "## Why LayerNorm does not break it\n\n"
	    "LayerNorm computes (x - mean(x)) / std(x) * weight + bias. Two rules make it a fixed\n"
	    "scaling:\n\n"
	    "1. *Zero mean.* Every vector written into the residual stream (each row of wte, wpe,\n"
	    "   every head's W_O rows, the MLPs' c_proj rows and every output bias) sums to zero:\n"
	    "   its JUNK part is centred on its own, and the SINK dimension holds minus the sum "
	    "of\n"
	    "   the other entries. The residual is a sum of such vectors, so its mean is 0 (to "
	    "float\n"
	    "   rounding) and the subtraction does nothing. No reader reads SINK.\n"
	    "2. *Constant norm.* wpe puts +K and -K (K = %g) into the two CONST dimensions of "
	    "every\n"
	    "   position. The residual's squared norm is then 2K^2 = %g plus the signal's, which "
	    "is\n"
	    "   a few units to a few tens, so std(x) = sqrt(|x|^2 / C) stays within 2%% of\n"
	    "   sigma = sqrt(2K^2 / C) = %.6g. Every ln_1 and ln_2 weight is sigma and every bias\n"
	    "   0, so LayerNorm returns the signal blocks at their own scale (times sigma / "
	    "std(x),\n"
	    "   between about 0.98 and 1). ln_f's weight is sigma times the unembedding gain on "
	    "the\n"
	    "   OUT block and 0 elsewhere.\n\n"
	    "The unit test (tests/unit/test_handbuilt.c) measures, on the clean and corrupted "
	    "inputs,\n"
	    "the mean and the std of every residual at every stage against these claims.\n\n"
	    "Under patching the same holds: a patched receiver's input is still a sum of\n"
	    "zero-mean vectors plus the constant.\n\n",
	    in->K, 2 * in->K * in->K, in->sigma);
}

static void spec_truth(FILE *f, const circ_hb_info *in)
{
	fprintf(
	    f,
	    "## Ground truth\n\n`truth.jsonl` lists the edges (graph conventions of circ: "
	    "EAP-IG's, the\n"
	    "input node is the token embedding) through which the task's corruption reaches the\n"
	    "output:\n\n");
	for (int i = 0; i < in->n_truth; i++)
		fprintf(f, "- `%s`\n", in->truth[i]);
	fprintf(
	    f,
	    "\nThe builder records each wire of the mechanism while it writes the weights, and "
	    "marks it\n"
	    "as seen or not by the corruption; the truth is the seen wires. These wires are part "
	    "of\n"
	    "the mechanism too, but carry the same values in the clean and the corrupted run, so\n"
	    "no resample-ablation method can see them, and they are not in the truth:\n\n");
	for (int i = 0; i < in->n_silent; i++)
		fprintf(f, "- `%s`\n", in->silent[i]);
	fprintf(
	    f,
	    "\nEverything else (the distractor heads and the MLPs) is unimportant by\n"
	    "construction: they write into JUNK, which no circuit head reads except through small\n"
	    "noise, plus a small leak everywhere.\n\n"
	    "The truth is for resample ablation with this task's corruption. Under mean or zero\n"
	    "ablation the silent wires carry changed values and may join the circuit. Under\n"
	    "ACDC's convention (`--convention acdc`: the input node adds the positional\n"
	    "embedding, which is the same in both runs) the same edge names are the truth;\n"
	    "truth.jsonl's header names the default convention, so compare them by name.\n\n");
}

static int spec_induction(FILE *f, const circ_hb_info *info, const char *digest)
{
	const ind_spec *s = &induction_spec;
	circ_config c = {s->L, s->H, s->C, s->P, s->V, s->F, 1e-5, CIRC_ACT_GELU_NEW};
	double wf = s->lambda / (s->beta * s->gamma);
	fprintf(
	    f,
	    "# induction-hand: an induction circuit built by hand\n\n"
	    "A GPT-2 whose weights are written from a specification so that it does induction\n"
	    "(after `... A B ... A`, predict `B`) with a known circuit: a previous-token head in\n"
	    "layer 0 (a0.h%d) and an induction head in layer 1 (a1.h%d) wired by K-composition.\n"
	    "The other heads are distractors and the MLPs are small and random.\n\n",
	    s->prev_head, s->ind_head);
	spec_common(f, info, &c, digest);
	fprintf(
	    f,
	    "## The circuit\n\n"
	    "Scores below are attention logits after the 1/sqrt(D) scaling; a query weight of\n"
	    "s sqrt(D) against a key weight of 1 gives score s.\n\n"
	    "**a0.h%d, previous-token head.** Query: POS_t -> head dimension t-1 (score %g);\n"
	    "key: POS_j -> head dimension j. The score is %g for key t-1 and 0 for every other, "
	    "so\n"
	    "position t attends to t-1 (position 0 to itself). Value: TOK_v -> head dimension v;\n"
	    "output: head dimension v -> PREV_v. So PREV at t is the one-hot of the token at t-1.\n"
	    "Its query and key read only the positional embedding, which belongs to no node: the\n"
	    "only edge into it is `input->a0.h%d<v>`.\n\n"
	    "**a1.h%d, induction head.** Query: TOK_v -> head dimension v (score %g). Key:\n"
	    "PREV_u -> head dimension u. So a key whose previous token equals the query's current\n"
	    "token scores %g, every other key 0 (K-composition: the key reads what a0.h%d wrote).\n"
	    "Key 0 would also match (PREV at position 0 is its own token), so a gate removes it: "
	    "the\n"
	    "query reads CONST (1 in head dimension %d) and the key reads POS_0 (score -%g).\n"
	    "Value: TOK_v -> head dimension v; output: head dimension v -> OUT_v (times %g). So "
	    "the\n"
	    "head writes the unembedding direction of the token that followed the earlier\n"
	    "occurrence of the current token.\n\n"
	    "**Unembedding.** wte[v] = TOK_v + %g OUT_v (+ SINK); it is also the unembedding. "
	    "ln_f\n"
	    "keeps OUT only (gain %g), so logit_v = %g x OUT_v: %g per unit of induction attention "
	    "on\n"
	    "a token v, and %g for the current token's own embedding (negligible).\n\n"
	    "Noise: every entry of each circuit reader (W_Q, W_K, W_V) gets a draw of standard\n"
	    "deviation %g e (nearly normal), e being that reader's own entry scale, so the "
	    "circuit\n"
	    "reads JUNK and every other block a little.\n\n",
	    s->prev_head, s->s_prev, s->s_prev, s->prev_head, s->ind_head, s->s_ind, s->s_ind,
	    s->prev_head, s->V, s->gate, s->gamma, s->beta, wf, wf * s->beta, s->lambda,
	    wf * s->beta * s->beta, s->noise);
	fprintf(
	    f,
	    "## Distractors and MLPs\n\n"
	    "- a0.h0 attends to position 0 (score %g); a0.h2 attends uniformly; a0.h3 attends to\n"
	    "  itself (score %g). Each reads TOK with random N(0, 1) value weights.\n"
	    "- a1.h0 attends uniformly and reads PREV; a1.h1 attends to position 0 and reads TOK;\n"
	    "  a1.h3 is a duplicate-token head (query TOK, key TOK, score %g for an earlier copy "
	    "of\n"
	    "  the current token), reading JUNK. Its attention pattern looks relevant; its output\n"
	    "  is not.\n"
	    "- Every distractor writes RMS %g per dimension into JUNK and %g elsewhere (the "
	    "leak).\n"
	    "- m0 and m1: %d hidden units, random reads, outputs RMS %g into JUNK and %g "
	    "elsewhere.\n\n",
	    s->s_bos, s->s_self, s->s_dup, s->junk, s->leak, s->F, s->mlp_junk, s->mlp_leak);
	fprintf(
	    f, "## Task\n\n"
	       "Random sequences of 12 distinct ids from [0, 31) (every id but `<|endoftext|>`),\n"
	       "repeated once (length 24). Corruption resamples the first half. Metric: mean log\n"
	       "probability of the next token over positions 12..22 of the repeated half (chance:\n"
	       "about -log 32 = -3.47). The dataset:\n\n"
	       "    circ-fixture induction-hand --examples 32 --seed 1 | circ-tokenize --vocab-dir "
	       "DIR\n\n"
	       "which is circ-dataset's induction recipe (`circ-dataset induction --len 12 "
	       "--vocab-lo 0\n"
	       "--vocab-hi 31`).\n\n");
	spec_truth(f, info);
	fprintf(
	    f,
	    "Why these edges:\n\n"
	    "- `input->a0.h%d<v>`: the previous-token head copies the first half's tokens into "
	    "PREV;\n"
	    "  corrupted, it copies the wrong tokens.\n"
	    "- `a0.h%d->a1.h%d<k>`: the induction head's keys find the earlier occurrence through\n"
	    "  PREV (K-composition).\n"
	    "- `input->a1.h%d<v>`: the induction head copies the token at the matched position,\n"
	    "  which is in the corrupted first half.\n"
	    "- `a1.h%d->logits`: its output is the prediction.\n"
	    "- Silent: `input->a1.h%d<q>`, the current token, lies in the repeated half, which "
	    "the\n"
	    "  corruption does not touch.\n",
	    s->prev_head, s->prev_head, s->ind_head, s->ind_head, s->ind_head, s->ind_head);
	return ferror(f) ? -1 : 0;
}

static int spec_ioi(FILE *f, const circ_hb_info *info, const char *digest)
{
	const ioi_spec *s = &ioi_hand_spec;
	circ_config c = {s->L, s->H, s->C, s->P, s->V, s->F, 1e-5, CIRC_ACT_GELU_NEW};
	double wf = s->lambda / (s->beta * s->gamma);
	int dt = s->dt_head, si = s->si_head, nm = s->nm_head;
	fprintf(
	    f,
	    "# ioi-hand: an IOI-like circuit built by hand\n\n"
	    "A GPT-2 whose weights are written from a specification so that it does a token-level\n"
	    "version of indirect object identification: in `BOS ... A ... B ... B ... END` (names "
	    "A\n"
	    "and B, B repeated), predict A at END. The circuit has the shape of the IOI circuit "
	    "in\n"
	    "GPT-2 small, one head per class: a duplicate-token head (a0.h%d), an S-inhibition "
	    "head\n"
	    "(a1.h%d) and a name mover (a2.h%d), joined by K-composition and Q-composition.\n\n",
	    dt, si, nm);
	spec_common(f, info, &c, digest);
	fprintf(
	    f,
	    "Vocabulary: ids 0..15 are names (`A`..`P`), 16..29 fillers (`a`..`n`), 30 END (`.`),\n"
	    "31 BOS (`<|endoftext|>`).\n\n"
	    "## The circuit\n\n"
	    "Scores are attention logits after the 1/sqrt(D) scaling; a query weight of s sqrt(D)\n"
	    "against a key weight of 1 gives score s.\n\n"
	    "**a0.h%d, duplicate-token head.** Query TOK_v -> head dimension v for the 16 names\n"
	    "(score %g); key TOK_v -> v. A name attends to an earlier copy of itself (score %g).\n"
	    "Default: the query reads CONST and the key reads BOS's TOK dimension (score %g), so\n"
	    "without a copy a position attends to BOS. Self: query POS_t and key POS_t meet in\n"
	    "their own head dimensions with score -%g, so a name never matches itself. Value: 1\n"
	    "(CONST) minus 1 at BOS; output: DUP. So DUP is about 1 at a repeated name (the "
	    "second\n"
	    "B) and small elsewhere.\n\n"
	    "**a1.h%d, S-inhibition head.** Query: END's TOK dimension (score %g); key: DUP. At "
	    "END\n"
	    "it attends to the repeated name (K-composition with a0.h%d); elsewhere, and when "
	    "there\n"
	    "is no repeat, to BOS (default score %g through CONST and BOS). Value: the name's TOK\n"
	    "one-hot; output: INH. So INH at END is the one-hot of the repeated name, B.\n\n"
	    "**a2.h%d, name mover.** Query: END's TOK dimension -> head dimension 0 (score %g); "
	    "key:\n"
	    "every name's TOK dimension -> head dimension 0, so at END names score %g. Inhibition\n"
	    "(Q-composition with a1.h%d): the query reads INH_v -> head dimension 1+v (score -%g) "
	    "and\n"
	    "the key TOK_v -> 1+v, so the repeated name scores %g less. Value: the name's TOK\n"
	    "one-hot; output: OUT_v (times %g). So the head writes A's unembedding direction.\n\n"
	    "**Unembedding.** wte[v] = TOK_v + %g OUT_v (+ SINK); ln_f keeps OUT only (gain %g):\n"
	    "logit_v = %g x OUT_v, %g per unit of name-mover attention on v.\n\n"
	    "Noise: every entry of each circuit reader gets a draw of standard deviation %g e\n"
	    "(nearly normal), e being that reader's own entry scale.\n\n",
	    dt, s->s_dt, s->s_dt, s->s_dt_bos, s->s_dt_self, si, s->s_si, dt, s->s_si_bos, nm,
	    s->s_nm, s->s_nm, si, s->s_inh, s->s_inh, s->gamma, s->beta, wf, wf * s->beta,
	    s->lambda, s->noise);
	fprintf(
	    f,
	    "## Distractors and MLPs\n\n"
	    "In layer l, head h (other than the circuit's) follows pattern (h + l) mod 3: 0 "
	    "attends\n"
	    "to BOS (score %g) and reads TOK; 1 attends to itself (score %g) and reads TOK; 2 "
	    "attends\n"
	    "uniformly and reads POS (layer 0) or DUP and INH (later layers) and a little JUNK.\n"
	    "Every distractor writes RMS %g per dimension into JUNK and %g elsewhere; each MLP "
	    "(%d\n"
	    "hidden units, random reads) writes RMS %g into JUNK and %g elsewhere.\n\n",
	    s->s_bos, s->s_self, s->junk, s->leak, s->F, s->mlp_junk, s->mlp_leak);
	fprintf(
	    f,
	    "## Task\n\n"
	    "Sequences of %d tokens: BOS, then 14 positions holding three names at random "
	    "positions\n"
	    "p1 < p2 < p3 (A and B at p1 and p2 in random order, B again at p3) among random\n"
	    "fillers, then END. Corruption (IOI's \"ABC\"): the name at p3 becomes a third name "
	    "C,\n"
	    "so nothing repeats. Metric: logit difference logit(A) - logit(B) at END (0 at "
	    "chance).\n"
	    "The dataset:\n\n"
	    "    circ-fixture ioi-hand --examples 32 --seed 1 | circ-tokenize --vocab-dir DIR\n\n",
	    s->T);
	spec_truth(f, info);
	fprintf(
	    f,
	    "Why these edges:\n\n"
	    "- `input->a0.h%d<q>`: the duplicate-token head's query at p3 is B (corrupted: C).\n"
	    "- `a0.h%d->a1.h%d<k>`: DUP marks p3 for the S-inhibition head's keys.\n"
	    "- `input->a1.h%d<v>`: the S-inhibition head copies the name at p3 (corrupted: C).\n"
	    "- `a1.h%d->a2.h%d<q>`: INH lowers the name mover's query for B (Q-composition).\n"
	    "- `input->a2.h%d<k>`: the name mover's key at p3 is B, which INH suppresses; "
	    "corrupted,\n"
	    "  it is C, which INH does not, and C takes attention from A.\n"
	    "- `a2.h%d->logits`: the name mover's output is the prediction.\n"
	    "- Silent: the duplicate-token head's key (the first B is not corrupted) and value "
	    "(BOS\n"
	    "  and the constant), the S-inhibition and name-mover queries' END flag, and the name\n"
	    "  mover's value (it copies A, which is not corrupted; its exact effect is small and\n"
	    "  negative, because the little attention left on p3 copies B in the clean run).\n",
	    dt, dt, si, si, si, nm, nm, nm);
	return ferror(f) ? -1 : 0;
}

static int spec_planted(FILE *f, const circ_hb_info *info, const char *digest)
{
	const pf_spec *s = &planted_spec;
	circ_config c = {s->L, s->H, PF_C, PF_T, PF_V, s->F, 1e-5, CIRC_ACT_GELU_NEW};
	fprintf(
	    f,
	    "# planted-features: subject-verb agreement from planted features\n\n"
	    "A GPT-2 whose weights are written from a specification so that it does a token-level\n"
	    "subject-verb agreement task through known *features*: unit directions of the "
	    "residual\n"
	    "stream, some in superposition, which its heads and MLPs read and write. The SAE\n"
	    "dictionaries in `dicts/` have exactly these directions as their features, so the\n"
	    "true features are the dictionaries' features and the ground truth is a set of\n"
	    "feature edges (`truth-features.jsonl`), as sparse feature circuits (Marks et al.\n"
	    "2024) define them.\n\n");
	spec_common(f, info, &c, digest);
	fprintf(
	    f,
	    "Also here: `dicts/<name>/` (SAELens directories: cfg.json, sae_weights.safetensors),\n"
	    "`truth-features.jsonl` and `truth-nodes.jsonl` (headerless JSON lines, one "
	    "`{\"edge\"}` or\n"
	    "`{\"node\"}` each), `dataset.jsonl` (64 examples of the task, seed 1, for "
	    "circ-tokenize).\n"
	    "No vector here needs the SINK: every feature direction sums to zero by itself.\n\n"
	    "## Task\n\n"
	    "Vocabulary: ids 0..7 singular nouns (`A`..`H`, lemmas 0..7), 8..15 the plurals of "
	    "the\n"
	    "same lemmas (`I`..`P`), 16..27 fillers (`a`..`l`), 28 END (`.`), 29 IS (`s`), 30 ARE\n"
	    "(`r`), 31 BOS. A prompt is BOS, the subject (position 1), two fillers, an attractor\n"
	    "noun of another lemma and either number (position 4), two fillers, END (position 7).\n"
	    "At END the model predicts IS after a singular subject and ARE after a plural one,\n"
	    "whatever the attractor. Corruption: the subject in the other number. Metric\n"
	    "logit_diff (answer minus the other verb), which for one token each is the difference\n"
	    "of their log-probabilities. Clean subjects alternate singular, plural.\n\n"
	    "## Features\n\n"
	    "| id | feature | direction | active |\n|---|---|---|---|\n"
	    "| 0..7 | lemma0..lemma7 | LEX, drawn | at the nouns of that lemma |\n"
	    "| 8..19 | filler0..filler11 | LEX, drawn | at the fillers |\n");
	for (int k = PF_SG; k < PF_NF; k++) {
		static const char *const when[] = {
		    "at singular nouns",
		    "at plural nouns",
		    "at END",
		    "at BOS",
		    "at position 1 (wpe)",
		    "at position 4 (wpe)",
		    "at END, after a singular subject (a0.h0)",
		    "at END, after a plural subject (a0.h0)",
		    "at END, after a singular attractor (a0.h1)",
		    "at END, after a plural attractor (a0.h1)",
		    "at animate nouns, lemmas 0..4 (m0)",
		    "at END, after an animate subject (a1.h0)",
		    "at END, after a singular subject (m1)",
		    "at END, after a plural subject (m1)",
		};
		int d0 = PF_LEX + 2 * (k - PF_SG);
		fprintf(f, "| %d | %s | (e%d - e%d) / sqrt 2 | %s |\n", k, pf_feature_names[k], d0,
			d0 + 1, when[k - PF_SG]);
	}
	fprintf(
	    f,
	    "\nThe 20 LEX directions are drawn in LEX's %d dimensions (Irwin-Hall normals, "
	    "centred,\n"
	    "normalised; redrawn until every |cos| with an earlier one is at most %g): 20 "
	    "features in\n"
	    "9 effective dimensions, in superposition. They are never active at the same "
	    "position.\n"
	    "Every other feature has two dimensions of its own, so the features that are active\n"
	    "together at a position are orthogonal. A token's embedding is the sum of its "
	    "features\n"
	    "(a noun: its lemma plus sg or pl); wpe adds pos1 and pos4 and the constant pair.\n\n"
	    "## Mechanism\n\n"
	    "Scores are attention logits after the 1/sqrt(D) scaling.\n\n"
	    "- **a0.h0, subject-number mover.** Query reads `end` (score %g against a key reading\n"
	    "  `pos1`), and every query reads CONST against a key reading `bos` (score %g): at "
	    "END\n"
	    "  it attends to the subject, elsewhere to BOS (whose value is 0). Value reads `sg`\n"
	    "  and `pl` into two head dimensions; output writes them as `subj_sg`, `subj_pl`.\n"
	    "- **a0.h1, attractor-number mover (distractor).** The same with `pos4`: writes\n"
	    "  `attr_sg`, `attr_pl` at END. Nothing reads them.\n"
	    "- **m0 (distractor).** One unit per animate lemma k = 0..4: GELU(%g (x . lemma_k - "
	    "%g)),\n"
	    "  which interference (|cos| <= %g) cannot open; writes `animate`.\n"
	    "- **a1.h0, animacy mover (distractor).** As a0.h0, copying `animate` at the subject\n"
	    "  into `subj_animate` at END. Nothing reads it. a1.h1 is idle (all weights 0).\n"
	    "- **m1, agreement.** Two units, AND gates: GELU(%g (x . subj_sg + x . end - %g)) "
	    "writes\n"
	    "  `verb_sg` (1 when both are 1, 0 when either is 0), and the same for the plural.\n"
	    "- **Unembedding.** ln_f keeps the OUT block with gain %g; IS's and ARE's embeddings\n"
	    "  are the `verb_sg` and `verb_pl` directions (tied), so the logit difference is\n"
	    "  about +-%g.\n\n",
	    PF_LEX, s->cos_max, s->s_pos, s->s_bos, s->a_gain, s->a_thr, s->cos_max, s->g_gain,
	    s->g_bias, s->lambda, s->lambda);
	fprintf(
	    f,
	    "## Dictionaries\n\n"
	    "JumpReLU SAEs (SAELens format), threshold %g, b_enc 0, encoder = decoder = the\n"
	    "features' directions, b_dec the constant pair (+K, -K) at residual hooks and 0\n"
	    "elsewhere (apply_b_dec_to_input). A feature's activation is x . direction when that\n"
	    "exceeds %g: exact for the active features (the others at a position are orthogonal\n"
	    "to them), 0 for the inactive ones (interference at most %g), so the reconstruction\n"
	    "is the activation up to the attention's leak onto non-BOS keys (about e^-%g) and\n"
	    "float rounding: the error nodes are near 0.\n\n"
	    "| dictionary | hook | features (ids above) |\n|---|---|---|\n",
	    s->theta, s->theta, s->cos_max, s->s_bos);
	for (int k = 0; k < PF_NDICTS; k++)
		fprintf(f, "| %s | %s | %d..%d (%s.f0 is id %d) |\n", pf_dicts[k].name,
			pf_dicts[k].hook, pf_dicts[k].first, pf_dicts[k].first + pf_dicts[k].n - 1,
			pf_dicts[k].name, pf_dicts[k].first);
	fprintf(
	    f,
	    "\n## Ground truth\n\n"
	    "Feature edges, in the edge set of sparse feature circuits (resid<l-1> -> attn<l>,\n"
	    "mlp<l>, resid<l>; attn<l> -> mlp<l>, resid<l>; mlp<l> -> resid<l>; the last resid\n"
	    "-> logits; resid_pre0 plays resid<-1>), positions summed: the path of the subject's\n"
	    "number, along which the corruption changes the values carried "
	    "(`truth-features.jsonl`):\n\n");
	for (int i = 0; i < info->n_feature_truth; i++)
		fprintf(f, "- `%s`\n", info->feature_truth[i]);
	fprintf(f, "\nIts nodes (`truth-nodes.jsonl`):");
	for (int i = 0; i < info->n_feature_nodes; i++)
		fprintf(f, " `%s`", info->feature_nodes[i]);
	fprintf(
	    f,
	    ".\n\n"
	    "Part of the mechanism but silent (the same in clean and corrupted runs, so no\n"
	    "patching or attribution method sees them): `end` and `pos1` into a0.h0's query and\n"
	    "key (resid_pre0.f%d, resid_pre0.f%d -> attn0.f0, attn0.f1) and `end` into m1's gates\n"
	    "(resid0.f%d -> mlp1.f0, mlp1.f1). The sg and pl features of resid0 and resid1 do\n"
	    "change (they carry the subject's own number at position 1) but nothing reads them\n"
	    "there: they are the changed features off the circuit. The distractors (attr_*,\n"
	    "animate, subj_animate) never change.\n\n"
	    "`truth.jsonl` is the same mechanism at the level of heads and MLPs (circ's graph\n"
	    "names), for the component-level tools:\n\n",
	    PF_END, PF_POS1, PF_END);
	for (int i = 0; i < info->n_truth; i++)
		fprintf(f, "- `%s`\n", info->truth[i]);
	fprintf(f, "\nSilent there:");
	for (int i = 0; i < info->n_silent; i++)
		fprintf(f, " `%s`", info->silent[i]);
	fprintf(f, ".\n\n"
		   "Faithfulness: mean ablation must take each feature's mean at each position, "
		   "as Marks\n"
		   "et al. do; `end`, `bos`, `pos1` and `pos4` are then unchanged, and the truth "
		   "alone keeps\n"
		   "the behaviour. A mean over positions as well would move `pos1` and with it "
		   "a0.h0's\n"
		   "attention.\n\n"
		   "Linearised edges (Marks et al.'s, atp or ig: the Jacobian at the clean "
		   "run): where the\n"
		   "corruption turns a feature on, the feature it feeds is below its threshold "
		   "in the\n"
		   "clean run, so the linearisation sends that change into the downstream "
		   "error node\n"
		   "instead. Half the examples turn each number on, so `mlp1.f0->resid1.err` "
		   "scores as\n"
		   "`mlp1.f0->resid1.f32` does (and the plural's the same; with ig's mean "
		   "gradients the\n"
		   "edges into attn0.err and resid0.err from the number features score too): "
		   "an artefact\n"
		   "of the method that this fixture shows, not a path (the error nodes are "
		   "near 0).\n\n"
		   "tests/ref/planted_features_ref.py checks all of this in float64 PyTorch, "
		   "from the files alone.\n");
	return ferror(f) ? -1 : 0;
}
