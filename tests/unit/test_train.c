/*
 * test_train: parameter gradients, the optimiser and the trainer.
 *
 * 0. Pieces: the parameter-gradient kernels (LayerNorm weight and bias, bias
 *    row sums) against their reference twins (1e-4 and 1e-5 absolute on
 *    O(1) inputs); cross-entropy, clipping, the learning-rate schedule, one
 *    AdamW step, the decay mask and the initialisation against closed forms.
 * 1. Finite differences: small random models (rescaled so that every path
 *    carries signal) run with the reference kernels; for loss = sum(logits *
 *    dlogits) with a fixed random dlogits, every parameter tensor's gradient
 *    from circ_backward (dweights) is compared at sampled elements with a
 *    fourth-order central difference (step 2^-5; smaller steps drown in the
 *    float forward's rounding). Pass when |fd - grad| <= 1e-2 * (|fd| +
 *    0.02 max|grad of the tensor| + 1e-4 max|grad of the model|); measured
 *    worst 1.8e-3. Cases: every row read; listed rows with receiver deltas
 *    and the ACDC convention; exact GELU with receiver gradients kept (the
 *    per-receiver backward path); a given input embedding.
 * 2. Paths that must agree: fast kernels (1 and 2 threads) against the
 *    reference kernels on one batch, within 1e-4 of each tensor's largest
 *    gradient (measured 8e-7); the fast run repeated gives the same bytes.
 * 3. Against PyTorch (tests/ref/train_ref.py, float64, from the formulas):
 *    the gradient of the mean cross-entropy at chosen rows for every
 *    parameter (1e-5 of each tensor's largest element; measured 4e-7 and
 *    1.1e-6), the loss of each step (relative 1e-5), and the weights after
 *    4-5 steps of clipping + AdamW with a warm-up/cosine schedule (1e-3 of
 *    lr * steps; measured 6e-6 and 6e-5).
 * 4. Induction data: with copies 3, every id of a sequence appears at most
 *    3 times; in the --focus batches every loss row is a position whose id
 *    appeared before and whose target follows that earlier occurrence, and
 *    each sequence has at least one row per repeated chunk id; after them
 *    every position is a row; the same seed gives the same batches; chunks
 *    of one id cannot be focused on.
 * 5. The other families' parameter gradients (circ_bwd.dparams, the flat
 *    order of circ_model_param_info) for the mean cross-entropy at random
 *    rows of the family test models (tests/data/families, opened with copy):
 *    finite differences as in part 1 (same tolerance; llama-tied with
 *    biases, llama with grouped-query attention and llama3 RoPE; measured
 *    worst 2.3e-3), and every tensor against tests/ref/fam_train_ref.py
 *    (float64 autograd through tests/ref/families.py) for llama,
 *    llama-tied, mistral, qwen2 and gemma within 1e-5 of each tensor's
 *    largest element (measured 5e-7 to 1.5e-6), the loss relative 1e-5;
 *    gemma2 (norms after the blocks) is refused by name.
 * 6. A Llama (GQA) made in memory (circ_model_new_family), trained 20
 *    steps on one batch (its loss falls by more than 0.5), saved and opened
 *    again: the same parameters, bit-identical logits and the same digest.
 *
 * Set CIRC_SKIP_TORCH=1 to skip parts 3 and 5's PyTorch comparisons on a
 * machine without python3-torch.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe.h"
#include "kernels.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "train.h"
#include "util.h"
#include "check.h"

static char tmp[256];

static circ_config small_config(int L, int H, int C, int V, int P)
{
	circ_config c;
	memset(&c, 0, sizeof c);
	c.n_layer = L;
	c.n_head = H;
	c.n_embd = C;
	c.vocab_size = V;
	c.n_ctx = P;
	c.n_inner = 3 * C / 2;
	c.layer_norm_epsilon = 1e-5;
	c.act = CIRC_ACT_GELU_NEW;
	return c;
}

/* The parameter tensors of a circ_weights, by name, for iteration. */
typedef struct ptensor {
	char name[48];
	float *p;
	size_t n;
} ptensor;

static int param_tensors(const circ_config *c, const circ_weights *w, ptensor *out)
{
	size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner;
	int k = 0;
#define ADD(nm, ptr, cnt)                                                                          \
	do {                                                                                       \
		snprintf(out[k].name, sizeof out[k].name, "%s", nm);                               \
		out[k].p = (ptr);                                                                  \
		out[k].n = (cnt);                                                                  \
		k++;                                                                               \
	} while (0)
	ADD("wte", w->wte, (size_t)c->vocab_size * C);
	ADD("wpe", w->wpe, (size_t)c->n_ctx * C);
	for (int l = 0; l < c->n_layer; l++) {
		const circ_layer_weights *lw = &w->layers[l];
		char nm[48];
#define ADDL(field, cnt)                                                                           \
	do {                                                                                       \
		snprintf(nm, sizeof nm, "h%d.%s", l, #field);                                      \
		ADD(nm, lw->field, cnt);                                                           \
	} while (0)
		ADDL(ln1_w, C);
		ADDL(ln1_b, C);
		ADDL(attn_w, C * 3 * C);
		ADDL(attn_b, 3 * C);
		ADDL(proj_w, C * C);
		ADDL(proj_b, C);
		ADDL(ln2_w, C);
		ADDL(ln2_b, C);
		ADDL(fc_w, C * F);
		ADDL(fc_b, F);
		ADDL(fcproj_w, F * C);
		ADDL(fcproj_b, C);
#undef ADDL
	}
	ADD("lnf_w", w->lnf_w, C);
	ADD("lnf_b", w->lnf_b, C);
#undef ADD
	return k;
}

/* ============================================================ finite differences */

typedef struct fd_case {
	const char *name;
	circ_config c;
	int B, T;
	circ_read_mode read;
	int n_deltas; /* receivers given a random delta */
	int acdc, keep_recv, input_embed;
	uint64_t seed;
} fd_case;

typedef struct delta_ctx {
	int n;
	int recv[16];
	float *val[16]; /* (B, T, C) each */
} delta_ctx;

typedef struct fd_setup {
	circ_model *m;
	circ_run *r;
	circ_fwd f;
	int32_t *tokens;
	circ_read *reads;
	float *embed;
	float *dlogits; /* (N, V) */
	int N;
	delta_ctx d;
	size_t btc; /* B*T*C */
} fd_setup;

static int full_hook(void *v, circ_run *r, int stage, circ_error *e)
{
	fd_setup *s = v;
	const circ_model *m = circ_run_model(r);
	(void)e;
	for (int k = 0; k < s->d.n; k++)
		if (circ_recv_stage(m, s->d.recv[k]) == stage)
			memcpy(circ_run_delta(r, s->d.recv[k]), s->d.val[k],
			       s->btc * sizeof(float));
	return 0;
}

static double loss_of(fd_setup *s)
{
	circ_error e = {{0}};
	int n, V = circ_model_config(s->m)->vocab_size;
	const float *lg;
	double v = 0;
	if (circ_forward(s->r, &s->f, &e) < 0) {
		fprintf(stderr, "forward: %s\n", e.msg);
		failures++;
		return 0;
	}
	lg = circ_run_logits(s->r, &n);
	for (size_t i = 0; i < (size_t)n * V; i++)
		v += (double)lg[i] * s->dlogits[i];
	return v;
}

/* circ_model_write_random's GPT-2 scales (0.02) make most gradients tiny
 * next to the rounding noise of a float forward; for finite differences
 * every parameter gets a scale at which all paths carry signal: matrices
 * normal(0, 1/sqrt(fan-in)), LayerNorm weights 1 + normal(0, 0.2), biases
 * and embeddings normal(0, 0.3). */
static void rescale(circ_model *m, uint64_t seed)
{
	const circ_config *c = circ_model_config(m);
	ptensor pt[64];
	circ_rng rng;
	int np = param_tensors(c, circ_model_weights(m), pt);
	circ_rng_seed(&rng, seed + 555);
	for (int k = 0; k < np; k++) {
		const char *nm = strchr(pt[k].name, '.') ? strchr(pt[k].name, '.') + 1 : pt[k].name;
		double sd = 0.3, mean = 0;
		if (!strcmp(nm, "attn_w") || !strcmp(nm, "proj_w") || !strcmp(nm, "fc_w"))
			sd = 1 / sqrt(c->n_embd);
		else if (!strcmp(nm, "fcproj_w"))
			sd = 1 / sqrt(c->n_inner);
		else if (strstr(nm, "_w") && strstr(nm, "ln"))
			sd = 0.2, mean = 1;
		for (size_t i = 0; i < pt[k].n; i++)
			pt[k].p[i] = (float)(mean + sd * circ_rng_normal(&rng));
	}
}

static void setup_case(fd_setup *s, const fd_case *fc, int reference, int threads)
{
	circ_error e = {{0}};
	circ_model_opts mo;
	circ_run_opts ro;
	circ_rng rng;
	char dir[300];
	const circ_config *c = &fc->c;
	size_t C = (size_t)c->n_embd;
	memset(s, 0, sizeof *s);
	snprintf(dir, sizeof dir, "%s/fd-%s", tmp, fc->name);
	if (circ_model_write_random(dir, c, fc->seed, "F32", &e) < 0) {
		fprintf(stderr, "write_random: %s\n", e.msg);
		exit(1);
	}
	circ_model_opts_default(&mo);
	mo.copy = 1;
	s->m = circ_model_open(dir, &mo, &e);
	if (!s->m) {
		fprintf(stderr, "open: %s\n", e.msg);
		exit(1);
	}
	rescale(s->m, fc->seed);
	circ_run_opts_default(&ro);
	ro.backward = 1;
	ro.reference = reference;
	ro.threads = threads;
	ro.acdc_convention = fc->acdc;
	ro.keep_recv_grads = fc->keep_recv;
	ro.keep_nodes = fc->keep_recv;
	s->r = circ_run_new(s->m, fc->B, fc->T, &ro, &e);
	if (!s->r) {
		fprintf(stderr, "run: %s\n", e.msg);
		exit(1);
	}
	circ_rng_seed(&rng, fc->seed + 1000);
	s->btc = (size_t)fc->B * fc->T * C;
	s->tokens = circ_xmalloc((size_t)fc->B * fc->T * sizeof *s->tokens);
	for (int i = 0; i < fc->B * fc->T; i++)
		s->tokens[i] = (int32_t)circ_rng_below(&rng, (uint64_t)c->vocab_size);
	circ_fwd_init(&s->f);
	s->f.tokens = s->tokens;
	s->f.B = fc->B;
	s->f.T = fc->T;
	s->f.read = fc->read;
	if (fc->read == CIRC_READ_ALL)
		s->N = fc->B * fc->T;
	else if (fc->read == CIRC_READ_LAST)
		s->N = fc->B;
	else {
		s->N = fc->B * fc->T / 2 + 1;
		s->reads = circ_xmalloc((size_t)s->N * sizeof *s->reads);
		for (int i = 0; i < s->N; i++)
			s->reads[i] = (circ_read){(int32_t)circ_rng_below(&rng, (uint64_t)fc->B),
						  (int32_t)circ_rng_below(&rng, (uint64_t)fc->T)};
		s->f.n_read = s->N;
		s->f.reads = s->reads;
	}
	if (fc->input_embed) {
		s->embed = circ_xmalloc(s->btc * sizeof *s->embed);
		for (size_t i = 0; i < s->btc; i++)
			s->embed[i] = (float)circ_rng_normal(&rng);
		s->f.input_embed = s->embed;
		s->f.tokens = NULL;
	}
	s->d.n = fc->n_deltas;
	for (int k = 0; k < fc->n_deltas; k++) {
		s->d.recv[k] = (int)circ_rng_below(&rng, (uint64_t)circ_model_n_recv(s->m));
		s->d.val[k] = circ_xmalloc(s->btc * sizeof(float));
		for (size_t i = 0; i < s->btc; i++)
			s->d.val[k][i] = 0.5f * (float)circ_rng_normal(&rng);
	}
	if (fc->n_deltas) {
		s->f.hook = full_hook;
		s->f.hook_ctx = s;
	}
	s->dlogits = circ_xmalloc((size_t)s->N * c->vocab_size * sizeof *s->dlogits);
	for (size_t i = 0; i < (size_t)s->N * c->vocab_size; i++)
		s->dlogits[i] = (float)circ_rng_normal(&rng);
}

static void free_setup(fd_setup *s)
{
	circ_run_free(s->r);
	circ_model_free(s->m);
	free(s->tokens);
	free(s->reads);
	free(s->embed);
	free(s->dlogits);
	for (int k = 0; k < s->d.n; k++)
		free(s->d.val[k]);
}

/* Runs forward + backward and returns the parameter gradients (owned). */
static void grads_of(fd_setup *s, circ_weights *g)
{
	circ_error e = {{0}};
	circ_bwd b = {0};
	circ_weights_alloc(g, circ_model_config(s->m));
	loss_of(s);
	b.dlogits = s->dlogits;
	b.dweights = g;
	if (circ_backward(s->r, &b, &e) < 0) {
		fprintf(stderr, "backward: %s\n", e.msg);
		failures++;
	}
}

#define FD_EPS 0.03125 /* 2^-5: smaller steps drown in float rounding noise */

/* d loss / d *p by a fourth-order central difference of step FD_EPS (the
 * steps as taken in float; *p restored). */
static double fd4(float *p, double (*loss)(void *), void *ctx)
{
	float keep = *p;
	double f[4], x[4] = {2, 1, -1, -2};
	for (int q = 0; q < 4; q++) {
		*p = (float)(keep + x[q] * FD_EPS);
		x[q] = (double)*p - keep; /* the step taken, in float */
		f[q] = loss(ctx);
	}
	*p = keep;
	/* steps are exact multiples up to float rounding of keep + step, which
	 * the average below absorbs */
	double h = (x[0] - x[3] + 2 * (x[1] - x[2])) / 8;
	return (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * h);
}

static double loss_of_v(void *s)
{
	return loss_of(s);
}

static void fd_check(const fd_case *fc)
{
	fd_setup s;
	circ_weights g;
	ptensor pt[64], gt[64];
	int np, bad = 0, checked = 0;
	double worst = 0;
	circ_rng rng;
	setup_case(&s, fc, 1, 1);
	grads_of(&s, &g);
	const circ_weights *w = circ_model_weights(s.m);
	np = param_tensors(&fc->c, w, pt);
	param_tensors(&fc->c, &g, gt);
	circ_rng_seed(&rng, fc->seed + 7);
	double gall = 0;
	for (int k = 0; k < np; k++)
		for (size_t i = 0; i < gt[k].n; i++)
			gall = fmax(gall, fabs(gt[k].p[i]));
	for (int k = 0; k < np; k++) {
		double gmax = 0;
		for (size_t i = 0; i < gt[k].n; i++)
			gmax = fmax(gmax, fabs(gt[k].p[i]));
		int samples = gt[k].n < 12 ? (int)gt[k].n : 12;
		for (int j = 0; j < samples; j++) {
			size_t idx =
			    gt[k].n < 12 ? (size_t)j : (size_t)circ_rng_below(&rng, gt[k].n);
			double fd = fd4(&pt[k].p[idx], loss_of_v, &s), an = gt[k].p[idx];
			double err = fabs(fd - an) / (fabs(fd) + 0.02 * gmax + 1e-4 * gall);
			worst = fmax(worst, err);
			checked++;
			if (err > 1e-2) {
				if (bad++ < 8)
					fprintf(stderr, "fd %s: %s[%zu]: fd %.7g, backward %.7g\n",
						fc->name, pt[k].name, idx, fd, an);
				failures++;
			}
		}
	}
	fprintf(stderr,
		"test_train: fd %-20s %4d elements, largest gradient %.3g, worst error %.2e\n",
		fc->name, checked, gall, worst);
	circ_weights_free(&g);
	free_setup(&s);
}

static void test_fd(void)
{
	fd_case cases[4];
	cases[0] = (fd_case){
	    "all-rows", small_config(2, 2, 8, 11, 6), 2, 5, CIRC_READ_ALL, 0, 0, 0, 0, 21};
	cases[1] = (fd_case){
	    "list-deltas-acdc", small_config(2, 2, 8, 13, 6), 2, 6, CIRC_READ_LIST, 6, 1, 0, 0, 22};
	cases[2] = (fd_case){
	    "gelu-recv-grads", small_config(3, 3, 12, 9, 5), 3, 4, CIRC_READ_LAST, 3, 0, 1, 0, 23};
	cases[2].c.act = CIRC_ACT_GELU;
	cases[3] = (fd_case){
	    "input-embed", small_config(1, 2, 8, 7, 4), 2, 4, CIRC_READ_ALL, 0, 0, 0, 1, 24};
	for (int i = 0; i < 4; i++)
		fd_check(&cases[i]);
}

/* ============================================================ paths that agree */

/* Fast kernels (1 and 2 threads) against the reference kernels on one
 * batch: each tensor within 1e-4 of its largest gradient; the fast run
 * repeated gives the same bytes. */
static void test_paths(void)
{
	fd_case fc = {"paths", small_config(2, 4, 32, 37, 16), 4, 16, CIRC_READ_ALL, 0, 0, 0, 0,
		      31};
	fd_setup s[3];
	circ_weights g[4];
	ptensor pt[3][64];
	int np = 0;
	setup_case(&s[0], &fc, 1, 1);
	setup_case(&s[1], &fc, 0, 1);
	setup_case(&s[2], &fc, 0, 2);
	for (int i = 0; i < 3; i++) {
		grads_of(&s[i], &g[i]);
		np = param_tensors(&fc.c, &g[i], pt[i]);
	}
	grads_of(&s[2], &g[3]);
	CHECK(!memcmp(g[2].mem, g[3].mem, g[2].n_params * sizeof(float)));
	double worst = 0;
	for (int k = 0; k < np; k++) {
		double gmax = 0, err = 0;
		for (size_t i = 0; i < pt[0][k].n; i++)
			gmax = fmax(gmax, fabs(pt[0][k].p[i]));
		for (int v = 1; v < 3; v++)
			for (size_t i = 0; i < pt[0][k].n; i++)
				err = fmax(err, fabs(pt[v][k].p[i] - pt[0][k].p[i]));
		err /= gmax > 0 ? gmax : 1;
		worst = fmax(worst, err);
		if (err > 1e-4) {
			fprintf(stderr,
				"paths: %s: fast differs from reference by %.3g of its largest "
				"gradient\n",
				pt[0][k].name, err);
			failures++;
		}
	}
	fprintf(stderr, "test_train: fast vs reference kernels, 1 and 2 threads: worst %.2e\n",
		worst);
	for (int i = 0; i < 4; i++)
		circ_weights_free(&g[i]);
	for (int i = 0; i < 3; i++)
		free_setup(&s[i]);
}

/* ============================================================ kernels, optimiser, schedule */

/* The parameter-gradient kernels against their reference twins, and the
 * small pieces of the trainer against closed forms. */
static void test_pieces(void)
{
	enum { N = 37, C = 29 };
	circ_rng rng;
	float dout[N * C], inp[N * C], mean[N], rstd[N];
	float dw[C] = {0}, db[C] = {0}, dwr[C] = {0}, dbr[C] = {0}, bb[C] = {0}, bbr[C] = {0};
	double e1 = 0, e2 = 0;
	circ_rng_seed(&rng, 5);
	for (int i = 0; i < N * C; i++) {
		dout[i] = (float)circ_rng_normal(&rng);
		inp[i] = (float)(2 * circ_rng_normal(&rng) + 1);
	}
	for (int n = 0; n < N; n++) {
		mean[n] = (float)circ_rng_normal(&rng);
		rstd[n] = (float)(0.5 + circ_rng_uniform(&rng));
	}
	circ_layernorm_bwd_params(dw, db, dout, inp, mean, rstd, N, C);
	circ_layernorm_bwd_params_ref(dwr, dbr, dout, inp, mean, rstd, N, C);
	circ_bias_bwd(bb, dout, N - 1, C - 3, C);
	circ_bias_bwd_ref(bbr, dout, N - 1, C - 3, C);
	for (int i = 0; i < C; i++) {
		e1 = fmax(e1, fmax(fabs(dw[i] - dwr[i]), fabs(db[i] - dbr[i])));
		e2 = fmax(e2, fabs(bb[i] - bbr[i]));
	}
	CHECK(e1 < 1e-4 && e2 < 1e-5 && bb[C - 1] == 0);

	/* cross-entropy: value and gradient against a direct computation */
	float lg[2 * 5] = {1, 2, 3, 4, 5, -1, 0, 0, 0, 10}, d[10];
	int32_t tg[2] = {4, 1};
	double l = circ_metric_xent(lg, 2, 5, tg, d, NULL);
	double z0 = 0, z1 = 0;
	for (int j = 0; j < 5; j++)
		z0 += exp(lg[j]), z1 += exp(lg[5 + j]);
	double want = ((log(z0) - 5) + (log(z1) - 0)) / 2;
	CHECK(fabs(l - want) < 1e-6);
	CHECK(fabs(d[4] - (exp(5) / z0 - 1) / 2) < 1e-6 && fabs(d[9] - exp(10) / z1 / 2) < 1e-6);

	/* clipping: norm 5 clipped to 1 */
	float g[2] = {3, 4};
	CHECK(fabs(circ_clip_grad_norm(g, 2, 1.0) - 5) < 1e-12);
	CHECK(fabs(g[0] - 0.6) < 1e-6 && fabs(g[1] - 0.8) < 1e-6);
	CHECK(circ_clip_grad_norm(g, 2, 0) > 0.99 && fabs(g[0] - 0.6) < 1e-6);

	/* schedule: warm-up to the peak, cosine to min_frac at the last step */
	CHECK(fabs(circ_lr_schedule(1.0, 0.1, 10, 110, 0) - 0.1) < 1e-12);
	CHECK(fabs(circ_lr_schedule(1.0, 0.1, 10, 110, 9) - 1.0) < 1e-12);
	CHECK(fabs(circ_lr_schedule(1.0, 0.1, 10, 110, 10) - 1.0) < 1e-12);
	CHECK(fabs(circ_lr_schedule(1.0, 0.1, 10, 110, 109) - 0.1) < 1e-12);

	/* AdamW: the first step moves each parameter by lr (bias-corrected
	 * m/sqrt(v) = sign g) after decaying it; masked parameters don't decay */
	float p[3] = {1, 1, 1}, gg[3] = {0.5f, -2, 0};
	unsigned char mask[3] = {1, 0, 1};
	circ_adamw_opts ao;
	circ_adamw_opts_default(&ao);
	ao.weight_decay = 0.5;
	circ_adamw *a = circ_adamw_new(3, mask, &ao);
	circ_adamw_step(a, p, gg, 0.1);
	CHECK(fabs(p[0] - (0.95 - 0.1)) < 1e-6 && fabs(p[1] - 1.1) < 1e-6 &&
	      fabs(p[2] - 0.95) < 1e-6);
	CHECK(circ_adamw_steps(a) == 1);
	circ_adamw_free(a);

	/* the decay mask: embeddings and matrices 1, LayerNorm and biases 0 */
	circ_config c = small_config(2, 2, 8, 11, 6);
	circ_weights w;
	unsigned char *m = circ_train_decay_mask(&c);
	circ_weights_alloc(&w, &c);
	CHECK(m[w.wte - w.mem] == 1 && m[w.wpe - w.mem] == 1 &&
	      m[w.layers[1].attn_w - w.mem] == 1 && m[w.layers[1].fcproj_w - w.mem] == 1 &&
	      m[w.layers[0].ln1_w - w.mem] == 0 && m[w.layers[0].attn_b - w.mem] == 0 &&
	      m[w.lnf_b - w.mem] == 0);
	free(m);
	/* GPT-2 initialisation: LayerNorm weights 1, biases 0, a pure function of the seed */
	circ_train_init_weights(&w, &c, 9);
	CHECK(w.layers[1].ln2_w[3] == 1 && w.layers[1].fc_b[2] == 0 && w.wte[0] != 0);
	{
		circ_weights w2;
		circ_weights_alloc(&w2, &c);
		circ_train_init_weights(&w2, &c, 9);
		CHECK(!memcmp(w.mem, w2.mem, w.n_params * sizeof(float)));
		circ_weights_free(&w2);
	}
	circ_weights_free(&w);
}

/* ============================================================ against PyTorch */

typedef struct torch_case {
	const char *name;
	circ_config c;
	int B, T, N, K; /* batch, length, loss rows, steps */
	double lr, clip, wd;
	int big; /* rescaled weights (strong gradients everywhere) */
	uint64_t seed;
	/* filled by prepare */
	circ_model *m;
	int32_t *tokens, *rows, *targets; /* (K, B, T), (K, N, 2), (K, N) */
} torch_case;

static void torch_prepare(torch_case *tc, int idx, FILE *cases)
{
	circ_error e = {{0}};
	circ_weights w;
	circ_rng rng;
	char dir[300], data[300], out[300];
	const circ_config *c = &tc->c;
	snprintf(dir, sizeof dir, "%s/torch%d", tmp, idx);
	snprintf(data, sizeof data, "%s/torch%d-data.safetensors", tmp, idx);
	snprintf(out, sizeof out, "%s/torch%d-out.safetensors", tmp, idx);
	circ_weights_alloc(&w, c);
	circ_train_init_weights(&w, c, tc->seed);
	tc->m = circ_model_new(c, &w, &e);
	if (!tc->m) {
		fprintf(stderr, "model_new: %s\n", e.msg);
		exit(1);
	}
	if (tc->big)
		rescale(tc->m, tc->seed);
	CHECK_MSG(circ_model_save(tc->m, dir, &e) == 0, e);
	circ_rng_seed(&rng, tc->seed + 77);
	size_t nt = (size_t)tc->K * tc->B * tc->T, nr = (size_t)tc->K * tc->N;
	tc->tokens = circ_xmalloc(nt * sizeof *tc->tokens);
	tc->rows = circ_xmalloc(2 * nr * sizeof *tc->rows);
	tc->targets = circ_xmalloc(nr * sizeof *tc->targets);
	for (size_t i = 0; i < nt; i++)
		tc->tokens[i] = (int32_t)circ_rng_below(&rng, (uint64_t)c->vocab_size);
	for (size_t i = 0; i < nr; i++) {
		tc->rows[2 * i] = (int32_t)circ_rng_below(&rng, (uint64_t)tc->B);
		tc->rows[2 * i + 1] = (int32_t)circ_rng_below(&rng, (uint64_t)tc->T);
		tc->targets[i] = (int32_t)circ_rng_below(&rng, (uint64_t)c->vocab_size);
	}
	circ_st_tensor st[3] = {
	    {"tokens", CIRC_I32, 3, {tc->K, tc->B, tc->T}, tc->tokens, nt * 4},
	    {"rows", CIRC_I32, 3, {tc->K, tc->N, 2}, tc->rows, 2 * nr * 4},
	    {"targets", CIRC_I32, 2, {tc->K, tc->N}, tc->targets, nr * 4},
	};
	CHECK_MSG(circ_st_write(data, 3, st, 0, NULL, &e) == 0, e);
	fprintf(cases, "%s{\"model\":\"%s\",\"data\":\"%s\",\"out\":\"%s\",\"lr\":[",
		idx ? "," : "", dir, data, out);
	for (int k = 0; k < tc->K; k++)
		fprintf(cases, "%s%.17g", k ? "," : "", circ_lr_schedule(tc->lr, 0.1, 1, tc->K, k));
	fprintf(cases,
		"],\"clip\":%.17g,\"weight_decay\":%.17g,\"beta1\":0.9,\"beta2\":0.999,"
		"\"eps\":1e-8}\n",
		tc->clip, tc->wd);
}

static void fill_batch(const torch_case *tc, int k, circ_tbatch *b)
{
	circ_tbatch_reserve(b, tc->B, tc->T, tc->N);
	b->B = tc->B;
	b->T = tc->T;
	b->N = tc->N;
	memcpy(b->tokens, tc->tokens + (size_t)k * tc->B * tc->T,
	       (size_t)tc->B * tc->T * sizeof *b->tokens);
	for (int i = 0; i < tc->N; i++) {
		size_t r = (size_t)k * tc->N + (size_t)i;
		b->rows[i] = (circ_read){tc->rows[2 * r], tc->rows[2 * r + 1]};
		b->targets[i] = tc->targets[r];
	}
}

/* Largest |a - b| over a tensor, divided by the largest |b| (or by `scale`
 * when it is larger). */
static double rel_err(const float *a, const float *b, size_t n, double scale)
{
	double d = 0, m = scale;
	for (size_t i = 0; i < n; i++) {
		d = fmax(d, fabs((double)a[i] - b[i]));
		m = fmax(m, fabs(b[i]));
	}
	return m > 0 ? d / m : d;
}

static void torch_compare(torch_case *tc, int idx)
{
	circ_error e = {{0}};
	circ_train_opts to;
	circ_trainer *tr;
	circ_tbatch b = {0};
	ptensor pt[64], gt[64];
	char out[300], nm[80];
	circ_st *st;
	double worst_g = 0, worst_w = 0, worst_l = 0;
	snprintf(out, sizeof out, "%s/torch%d-out.safetensors", tmp, idx);
	if (!(st = circ_st_open(out, &e))) {
		fprintf(stderr, "torch %s: %s\n", tc->name, e.msg);
		failures++;
		return;
	}
	circ_train_opts_default(&to);
	to.clip = tc->clip;
	to.adam.weight_decay = tc->wd;
	tr = circ_trainer_new(tc->m, tc->B, tc->T, &to, &e);
	CHECK_MSG(tr, e);
	if (!tr)
		return;
	int np = param_tensors(&tc->c, circ_model_weights(tc->m), pt);
	param_tensors(&tc->c, circ_trainer_grads(tr), gt);
	/* step 0's gradient */
	double loss;
	fill_batch(tc, 0, &b);
	CHECK_MSG(circ_trainer_grad(tr, &b, &loss, &e) == 0, e);
	for (int k = 0; k < np; k++) {
		snprintf(nm, sizeof nm, "grad.%.48s", gt[k].name);
		const circ_st_tensor *t = circ_st_find(st, nm);
		CHECK(t && t->nbytes == gt[k].n * 4);
		if (!t || t->nbytes != gt[k].n * 4)
			continue;
		double err = rel_err(gt[k].p, t->data, gt[k].n, 0);
		worst_g = fmax(worst_g, err);
		if (err > 1e-5) {
			fprintf(stderr,
				"torch %s: gradient %s differs by %.3g of its largest element\n",
				tc->name, gt[k].name, err);
			failures++;
		}
	}
	/* K optimisation steps */
	const circ_st_tensor *tl = circ_st_find(st, "loss");
	for (int k = 0; k < tc->K; k++) {
		fill_batch(tc, k, &b);
		CHECK_MSG(circ_trainer_step(tr, &b, circ_lr_schedule(tc->lr, 0.1, 1, tc->K, k),
					    &loss, NULL, &e) == 0,
			  e);
		if (tl)
			worst_l = fmax(worst_l, fabs(loss - ((const float *)tl->data)[k]) /
						    fabs(((const float *)tl->data)[k]));
	}
	CHECK(worst_l < 1e-5);
	for (int k = 0; k < np; k++) {
		snprintf(nm, sizeof nm, "final.%.48s", pt[k].name);
		const circ_st_tensor *t = circ_st_find(st, nm);
		if (!t || t->nbytes != pt[k].n * 4) {
			failures++;
			continue;
		}
		/* in units of the largest possible total update, lr * K. The key
		 * bias (attn_b columns C..2C) is skipped: it adds the same q.b_k to
		 * every score of a row, so its exact gradient is 0, and AdamW turns
		 * float32 rounding noise (~1e-9) there into steps of a fraction of
		 * lr that float64 does not see. */
		double d = 0;
		int is_attn_b = strstr(pt[k].name, "attn_b") != NULL;
		for (size_t i = 0; i < pt[k].n; i++) {
			if (is_attn_b && i >= (size_t)tc->c.n_embd && i < 2 * (size_t)tc->c.n_embd)
				continue;
			d = fmax(d, fabs((double)pt[k].p[i] - ((const float *)t->data)[i]));
		}
		d /= tc->lr * tc->K;
		worst_w = fmax(worst_w, d);
		if (d > 1e-3) {
			fprintf(stderr,
				"torch %s: weights %s after %d steps differ by %.3g of lr*steps\n",
				tc->name, pt[k].name, tc->K, d);
			failures++;
		}
	}
	fprintf(stderr,
		"test_train: torch %-12s gradients %.2e (of each tensor's largest), loss %.2e, "
		"weights after %d AdamW steps %.2e (of lr*steps)\n",
		tc->name, worst_g, worst_l, tc->K, worst_w);
	circ_tbatch_free(&b);
	circ_trainer_free(tr);
	circ_st_close(st);
}

static void test_torch(void)
{
	const char *root = getenv("CIRC_ROOT");
	char cases[300], cmd[1200];
	torch_case tc[2];
	FILE *f;
	if (getenv("CIRC_SKIP_TORCH")) {
		fprintf(stderr, "test_train: CIRC_SKIP_TORCH set: PyTorch comparisons skipped\n");
		return;
	}
	tc[0] = (torch_case){
	    "gpt2-init", small_config(2, 4, 32, 50, 16), 4, 12, 20, 5, 1e-2, 1.0, 0.1, 0, 41};
	tc[1] = (torch_case){
	    "big-clipped", small_config(3, 2, 24, 37, 10), 3, 10, 12, 4, 3e-3, 0.5, 0.01, 1, 42};
	tc[1].c.act = CIRC_ACT_GELU;
	snprintf(cases, sizeof cases, "%s/torch-cases.json", tmp);
	f = fopen(cases, "w");
	fprintf(f, "[\n");
	for (int i = 0; i < 2; i++)
		torch_prepare(&tc[i], i, f);
	fprintf(f, "]\n");
	fclose(f);
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/ref/train_ref.py' '%s'",
		 root ? root : ".", cases);
	if (system(cmd) != 0) {
		fprintf(stderr,
			"test_train: the PyTorch reference failed (%s); set CIRC_SKIP_TORCH=1 to "
			"skip it\n",
			cmd);
		failures++;
	} else {
		for (int i = 0; i < 2; i++)
			torch_compare(&tc[i], i);
	}
	for (int i = 0; i < 2; i++) {
		circ_model_free(tc[i].m);
		free(tc[i].tokens);
		free(tc[i].rows);
		free(tc[i].targets);
	}
}

/* Induction data: 3 chunks of 2 ids, each 3 times in 24; the first 2 batches focused. */
static circ_ttask *induction_task(const char *dir, circ_bpe **bpe)
{
	circ_ttask_opts o;
	circ_error e;
	circ_ttask *t;
	circ_ttask_opts_default(&o);
	o.task = "induction";
	o.seq_len = 24;
	o.chunks = 3;
	o.min_rep = 2;
	o.max_rep = 2;
	o.copies = 3;
	o.focus = 2;
	o.eval_len = 6;
	o.n_eval = 4;
	CHECK(circ_ttask_write_vocab(&o, dir, &e) == 0);
	CHECK((*bpe = circ_bpe_load_dir(dir, &e)) != NULL);
	if (!*bpe)
		return NULL;
	CHECK((t = circ_ttask_new(&o, *bpe, 7, &e)) != NULL);
	return t;
}

static void test_induction_data(void)
{
	circ_bpe *bpe, *bpe2;
	circ_ttask *t = induction_task(tmp, &bpe), *t2 = induction_task(tmp, &bpe2);
	circ_tbatch b = {0}, b2 = {0};
	const int B = 16, T = 24;
	if (!t || !t2)
		return;
	for (int k = 0; k < 3; k++) {
		int r = 0;
		circ_ttask_batch(t, B, &b);
		circ_ttask_batch(t2, B, &b2);
		CHECK(b.B == B && b.T == T && b.N == b2.N);
		CHECK(!memcmp(b.tokens, b2.tokens, (size_t)B * T * sizeof *b.tokens));
		for (int s = 0; s < B; s++) {
			const int32_t *x = b.tokens + (size_t)s * T;
			int rows = 0, thrice = 0;
			for (int j = 0; j < T; j++) {
				int n = 0;
				for (int i = 0; i < T; i++)
					n += x[i] == x[j];
				CHECK(n <= 3);
				thrice += n == 3;
			}
			CHECK(thrice == 3 * 3 * 2); /* 3 chunks of 2 ids, 3 copies */
			for (; r < b.N && b.rows[r].b == s; r++, rows++) {
				int j = b.rows[r].t, prev = -1;
				CHECK(j >= 0 && j + 1 < T && b.targets[r] == x[j + 1]);
				for (int i = 0; i < j; i++)
					if (x[i] == x[j])
						prev = i;
				if (k < 2)
					CHECK(prev >= 0 && x[prev + 1] == b.targets[r]);
			}
			/* each chunk's first id, in its 2 later copies */
			CHECK(k < 2 ? rows == 3 * 2 : rows == T - 1);
		}
		CHECK(r == b.N);
	}
	{ /* chunks of one id have no repeated position to focus on */
		circ_ttask_opts o;
		circ_error e;
		circ_ttask_opts_default(&o);
		o.task = "induction";
		o.min_rep = o.max_rep = 1;
		o.focus = 1;
		CHECK(!circ_ttask_new(&o, bpe, 7, &e) && strstr(e.msg, "no repeated position"));
		o.focus = 0;
		circ_ttask *t3 = circ_ttask_new(&o, bpe, 7, &e);
		CHECK(t3 != NULL);
		circ_ttask_free(t3);
	}
	circ_tbatch_free(&b);
	circ_tbatch_free(&b2);
	circ_ttask_free(t);
	circ_ttask_free(t2);
	circ_bpe_free(bpe);
	circ_bpe_free(bpe2);
}

/* ---- 5. the other families' parameter gradients (circ_bwd.dparams) ---- */

typedef struct fam_case {
	const char *name; /* tests/data/families/<name> */
	circ_model *m;
	circ_run *r;
	int B, T, N;
	int32_t *tokens, *rows, *targets;
	float *dlogits, *grad;
	double loss;
} fam_case;

/* Forward at the case's rows and the mean cross-entropy (dlogits set). */
static double fam_loss(fam_case *fc)
{
	circ_error e = {{0}};
	circ_fwd f;
	circ_read rd[64];
	int V = circ_model_config(fc->m)->vocab_size;
	for (int i = 0; i < fc->N; i++)
		rd[i] = (circ_read){fc->rows[2 * i], fc->rows[2 * i + 1]};
	circ_fwd_init(&f);
	f.tokens = fc->tokens;
	f.B = fc->B;
	f.T = fc->T;
	f.read = CIRC_READ_LIST;
	f.n_read = fc->N;
	f.reads = rd;
	if (circ_forward(fc->r, &f, &e) < 0) {
		fprintf(stderr, "family forward %s: %s\n", fc->name, e.msg);
		failures++;
		return 0;
	}
	return circ_metric_xent(circ_run_logits(fc->r, NULL), fc->N, V, fc->targets, fc->dlogits,
				NULL);
}

static double fam_loss_v(void *fc)
{
	return fam_loss(fc);
}

static void fam_setup(fam_case *fc, int reference, uint64_t seed)
{
	circ_error e = {{0}};
	circ_model_opts mo;
	circ_run_opts ro;
	circ_rng rng;
	char dir[300];
	const char *root = getenv("CIRC_ROOT");
	snprintf(dir, sizeof dir, "%s/tests/data/families/%s", root ? root : ".", fc->name);
	circ_model_opts_default(&mo);
	mo.copy = 1;
	fc->m = circ_model_open(dir, &mo, &e);
	if (!fc->m) {
		fprintf(stderr, "open %s: %s\n", dir, e.msg);
		exit(1);
	}
	circ_run_opts_default(&ro);
	ro.backward = 1;
	ro.keep_nodes = 0;
	ro.keep_recv_grads = 0;
	ro.reference = reference;
	fc->r = circ_run_new(fc->m, fc->B, fc->T, &ro, &e);
	CHECK_MSG(fc->r, e);
	int V = circ_model_config(fc->m)->vocab_size;
	circ_rng_seed(&rng, seed);
	fc->tokens = circ_xmalloc((size_t)fc->B * fc->T * sizeof *fc->tokens);
	fc->rows = circ_xmalloc(2 * (size_t)fc->N * sizeof *fc->rows);
	fc->targets = circ_xmalloc((size_t)fc->N * sizeof *fc->targets);
	for (int i = 0; i < fc->B * fc->T; i++)
		fc->tokens[i] = (int32_t)circ_rng_below(&rng, (uint64_t)V);
	for (int i = 0; i < fc->N; i++) {
		fc->rows[2 * i] = (int32_t)circ_rng_below(&rng, (uint64_t)fc->B);
		fc->rows[2 * i + 1] = (int32_t)circ_rng_below(&rng, (uint64_t)fc->T);
		fc->targets[i] = (int32_t)circ_rng_below(&rng, (uint64_t)V);
	}
	fc->dlogits = circ_xmalloc((size_t)fc->N * V * sizeof *fc->dlogits);
	fc->grad = circ_xcalloc(circ_model_weights(fc->m)->n_params, sizeof *fc->grad);
	{
		circ_bwd b = {0};
		fc->loss = fam_loss(fc);
		b.dlogits = fc->dlogits;
		b.dparams = fc->grad;
		CHECK_MSG(circ_backward(fc->r, &b, &e) == 0, e);
	}
}

static void fam_free(fam_case *fc)
{
	circ_run_free(fc->r);
	circ_model_free(fc->m);
	free(fc->tokens);
	free(fc->rows);
	free(fc->targets);
	free(fc->dlogits);
	free(fc->grad);
}

/* Finite differences of the mean cross-entropy (as part 1, fourth order,
 * step 2^-5) at 6 sampled elements of every tensor, reference kernels. */
static void fam_fd(const char *name)
{
	fam_case fc = {name, NULL, NULL, 2, 8, 5, NULL, NULL, NULL, NULL, NULL, 0};
	float *p;
	circ_rng rng;
	double worst = 0, gall = 0;
	int checked = 0;
	fam_setup(&fc, 1, 17);
	p = circ_model_params(fc.m);
	CHECK(p != NULL);
	if (!p) {
		fam_free(&fc);
		return;
	}
	circ_rng_seed(&rng, 23);
	for (size_t i = 0; i < circ_model_weights(fc.m)->n_params; i++)
		gall = fmax(gall, fabs(fc.grad[i]));
	for (int k = 0; k < circ_model_n_param_tensors(fc.m); k++) {
		circ_param_info pi;
		double gmax = 0;
		circ_model_param_info(fc.m, k, &pi);
		for (size_t i = 0; i < pi.count; i++)
			gmax = fmax(gmax, fabs(fc.grad[pi.offset + i]));
		for (int j = 0; j < 6; j++) {
			size_t idx = pi.offset + (size_t)circ_rng_below(&rng, pi.count);
			double fd = fd4(&p[idx], fam_loss_v, &fc), an = fc.grad[idx];
			double err = fabs(fd - an) / (fabs(fd) + 0.02 * gmax + 1e-4 * gall);
			worst = fmax(worst, err);
			checked++;
			if (err > 1e-2) {
				fprintf(stderr, "fd %s: %s[%zu]: fd %.7g, backward %.7g\n", name,
					pi.name, idx - pi.offset, fd, an);
				failures++;
			}
		}
	}
	fprintf(stderr,
		"test_train: fd %-20s %4d elements, largest gradient %.3g, worst error %.2e\n",
		name, checked, gall, worst);
	fam_free(&fc);
}

static void test_family_grads(void)
{
	static const char *names[] = {"llama", "llama-tied", "mistral", "qwen2", "gemma"};
	enum { NF = 5 };
	fam_case fc[NF];
	circ_error e = {{0}};
	char cases[300], cmd[1200];
	const char *root = getenv("CIRC_ROOT");
	FILE *f;
	fam_fd("llama-tied");
	fam_fd("llama");
	{ /* what dparams refuses */
		fam_case g = {"gemma2", NULL, NULL, 1, 4, 2, NULL, NULL, NULL, NULL, NULL, 0};
		circ_model_opts mo;
		circ_run_opts ro;
		char dir[300];
		snprintf(dir, sizeof dir, "%s/tests/data/families/gemma2", root ? root : ".");
		circ_model_opts_default(&mo);
		mo.copy = 1;
		g.m = circ_model_open(dir, &mo, &e);
		CHECK_MSG(g.m, e);
		circ_run_opts_default(&ro);
		ro.backward = 1;
		g.r = circ_run_new(g.m, 1, 4, &ro, &e);
		int32_t tok[4] = {1, 2, 3, 4};
		circ_fwd fw;
		circ_fwd_init(&fw);
		fw.tokens = tok;
		fw.B = 1;
		fw.T = 4;
		CHECK_MSG(circ_forward(g.r, &fw, &e) == 0, e);
		float *dl = circ_xcalloc((size_t)circ_model_config(g.m)->vocab_size, sizeof *dl);
		float *dp = circ_xcalloc(circ_model_weights(g.m)->n_params, sizeof *dp);
		circ_bwd b = {0};
		b.dlogits = dl;
		b.dparams = dp;
		CHECK(circ_backward(g.r, &b, &e) < 0 && strstr(e.msg, "norms after the blocks"));
		free(dl);
		free(dp);
		circ_run_free(g.r);
		circ_model_free(g.m);
	}
	if (getenv("CIRC_SKIP_TORCH"))
		return;
	snprintf(cases, sizeof cases, "%s/fam-cases.json", tmp);
	f = fopen(cases, "w");
	fprintf(f, "[\n");
	for (int i = 0; i < NF; i++) {
		char data[300], out[300];
		fc[i] = (fam_case){names[i], NULL, NULL, 3, 9, 7, NULL, NULL, NULL, NULL, NULL, 0};
		fam_setup(&fc[i], 0, 100 + (uint64_t)i);
		snprintf(data, sizeof data, "%s/fam%d-data.safetensors", tmp, i);
		snprintf(out, sizeof out, "%s/fam%d-out.safetensors", tmp, i);
		size_t nt = (size_t)fc[i].B * fc[i].T, nr = (size_t)fc[i].N;
		circ_st_tensor st[3] = {
		    {"tokens", CIRC_I32, 2, {fc[i].B, fc[i].T}, fc[i].tokens, nt * 4},
		    {"rows", CIRC_I32, 2, {fc[i].N, 2}, fc[i].rows, 2 * nr * 4},
		    {"targets", CIRC_I32, 1, {fc[i].N}, fc[i].targets, nr * 4},
		};
		CHECK_MSG(circ_st_write(data, 3, st, 0, NULL, &e) == 0, e);
		fprintf(
		    f,
		    "%s{\"model\":\"%s/tests/data/families/%s\",\"data\":\"%s\",\"out\":\"%s\"}\n",
		    i ? "," : "", root ? root : ".", names[i], data, out);
	}
	fprintf(f, "]\n");
	fclose(f);
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/ref/fam_train_ref.py' '%s'",
		 root ? root : ".", cases);
	int ok = system(cmd) == 0;
	if (!ok) {
		fprintf(stderr, "test_train: the PyTorch reference failed (%s)\n", cmd);
		failures++;
	}
	for (int i = 0; ok && i < NF; i++) {
		char out[300], nm[200];
		double worst = 0;
		circ_st *st;
		snprintf(out, sizeof out, "%s/fam%d-out.safetensors", tmp, i);
		if (!(st = circ_st_open(out, &e))) {
			fprintf(stderr, "%s: %s\n", out, e.msg);
			failures++;
			continue;
		}
		for (int k = 0; k < circ_model_n_param_tensors(fc[i].m); k++) {
			circ_param_info pi;
			circ_model_param_info(fc[i].m, k, &pi);
			snprintf(nm, sizeof nm, "grad.%.180s", pi.name);
			const circ_st_tensor *t = circ_st_find(st, nm);
			CHECK(t && t->nbytes == pi.count * 4);
			if (!t || t->nbytes != pi.count * 4)
				continue;
			double err = rel_err(fc[i].grad + pi.offset, t->data, pi.count, 0);
			worst = fmax(worst, err);
			if (err > 1e-5) {
				fprintf(stderr,
					"torch %s: gradient %s differs by %.3g of its largest\n",
					names[i], pi.name, err);
				failures++;
			}
		}
		const circ_st_tensor *tl = circ_st_find(st, "loss");
		double lerr = tl ? fabs(fc[i].loss - ((const float *)tl->data)[0]) : 1;
		CHECK(lerr < 1e-5 * fabs(fc[i].loss));
		fprintf(
		    stderr,
		    "test_train: torch %-12s parameter gradients %.2e (of each tensor's largest), "
		    "loss %.2e\n",
		    names[i], worst, lerr);
		circ_st_close(st);
	}
	for (int i = 0; i < NF; i++)
		fam_free(&fc[i]);
}

/* ---- 6. a Llama trained in memory, saved and read back ---- */

static void llama_logits(circ_model *m, const int32_t *tok, int B, int T, float *out)
{
	circ_error e = {{0}};
	circ_run *r = circ_run_new(m, B, T, NULL, &e);
	circ_fwd f;
	int n;
	CHECK_MSG(r, e);
	circ_fwd_init(&f);
	f.tokens = tok;
	f.B = B;
	f.T = T;
	f.read = CIRC_READ_ALL;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	const float *lg = circ_run_logits(r, &n);
	memcpy(out, lg, (size_t)n * circ_model_config(m)->vocab_size * sizeof *out);
	circ_run_free(r);
}

static void test_llama_roundtrip(void)
{
	circ_error e = {{0}};
	circ_config c;
	circ_model_opts mo;
	circ_train_opts to;
	circ_tbatch b = {0};
	circ_rng rng;
	char dir[300];
	int B = 3, T = 10;
	memset(&c, 0, sizeof c);
	c.model_type = CIRC_MODEL_LLAMA;
	c.n_layer = 2;
	c.n_head = 4;
	c.n_kv_head = 2;
	c.n_embd = 32;
	c.n_inner = 48;
	c.n_ctx = 16;
	c.vocab_size = 40;
	c.layer_norm_epsilon = 1e-5;
	c.act = CIRC_ACT_SILU;
	c.norm = CIRC_NORM_RMSNORM;
	c.pos = CIRC_POS_ROTARY;
	c.rope_theta = 10000;
	c.mlp = CIRC_MLP_GATED;
	c.no_bias_qkv = c.no_bias_o = c.no_bias_mlp = 1;
	circ_model *m = circ_model_new_family(&c, &e);
	CHECK_MSG(m, e);
	if (!m)
		return;
	circ_train_init_family(m, 5, 0.02);
	circ_train_opts_default(&to);
	to.threads = 2;
	circ_trainer *tr = circ_trainer_new(m, B, T, &to, &e);
	CHECK_MSG(tr, e);
	circ_rng_seed(&rng, 9);
	circ_tbatch_reserve(&b, B, T, B * (T - 1));
	b.B = B;
	b.T = T;
	b.N = B * (T - 1);
	for (int i = 0; i < B * T; i++)
		b.tokens[i] = (int32_t)circ_rng_below(&rng, (uint64_t)c.vocab_size);
	for (int s = 0, k = 0; s < B; s++)
		for (int t = 0; t + 1 < T; t++, k++) {
			b.rows[k] = (circ_read){s, t};
			b.targets[k] = b.tokens[s * T + t + 1];
		}
	double l0 = 0, l = 0;
	for (int step = 0; step < 20; step++) {
		CHECK_MSG(circ_trainer_step(tr, &b, 1e-2, &l, NULL, &e) == 0, e);
		if (!step)
			l0 = l;
	}
	CHECK(l < l0 - 0.5); /* one batch, learnt */
	circ_trainer_free(tr);
	snprintf(dir, sizeof dir, "%s/llama-rt", tmp);
	CHECK_MSG(circ_model_save(m, dir, &e) == 0, e);
	circ_model_opts_default(&mo);
	mo.copy = 1;
	circ_model *m2 = circ_model_open(dir, &mo, &e);
	CHECK_MSG(m2, e);
	if (m2) {
		size_t n = circ_model_weights(m)->n_params, V = (size_t)c.vocab_size;
		float *a = circ_xmalloc((size_t)B * T * V * sizeof *a);
		float *a2 = circ_xmalloc((size_t)B * T * V * sizeof *a2);
		CHECK(circ_model_weights(m2)->n_params == n);
		CHECK(!memcmp(circ_model_params(m), circ_model_params(m2), n * sizeof(float)));
		llama_logits(m, b.tokens, B, T, a);
		llama_logits(m2, b.tokens, B, T, a2);
		CHECK(!memcmp(a, a2, (size_t)B * T * V * sizeof *a));
		const char *d1 = circ_model_digest(m, &e), *d2 = circ_model_digest(m2, &e);
		CHECK(d1 && d2 && !strcmp(d1, d2));
		free(a);
		free(a2);
	}
	fprintf(stderr,
		"test_train: llama trained in memory (loss %.3f -> %.3f in 20 steps), saved and "
		"read back: same parameters, logits and digest\n",
		l0, l);
	circ_model_free(m2);
	circ_model_free(m);
	circ_tbatch_free(&b);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	snprintf(tmp, sizeof tmp, "%s/circ-test-train-XXXXXX", t ? t : "/tmp");
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	test_pieces();
	test_fd();
	test_paths();
	test_torch();
	test_induction_data();
	test_family_grads();
	test_llama_roundtrip();
	{
		char cmd[600];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
		if (system(cmd) != 0)
			fprintf(stderr, "test_train: could not remove %s\n", tmp);
	}
	if (failures) {
		fprintf(stderr, "test_train: %d failures\n", failures);
		return 1;
	}
	fprintf(stderr, "test_train: ok\n");
	return 0;
}
