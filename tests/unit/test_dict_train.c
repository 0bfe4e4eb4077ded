/*
 * test_dict_train: dictionary training (lib/dict_train).
 *
 * 1. Finite differences: every parameter's gradient of each architecture's
 *    loss (SAE and transcoder; relu on its dense and its sparse path), AuxK off (its residual is a
 * constant by definition) and jumprelu's thresholds left out (their gradient is the
 *    straight-through estimate, not the derivative): central differences
 *    with h = 1e-3 within 2e-3 of the largest gradient.
 * 2. Against PyTorch (tests/ref/dict_train_ref.py, float64, autograd over
 *    the papers' formulas; AuxK on with some latents dead; jumprelu's STE):
 *    the gradient within 1e-4 of the largest, then three AdamW steps (2
 *    threads) with warm-up, decoder projection and renormalisation, clipping
 *    and weight decay: parameters within 1e-4.
 * 3. Ground truth: each architecture, as an SAE and as a transcoder, trained
 *    on a superposition fixture (64 known directions in 32 dimensions,
 *    correlated and anti-correlated pairs) recovers the true directions:
 *    mean max cosine similarity >= 0.95 (printed).
 * 4. Determinism and resume: two runs give the same bytes; a run saved
 *    half-way and resumed in a new trainer and buffer gives the same bytes
 *    as the uninterrupted run.
 * 5. Harvesting: the rows circ_dharvest hands out (forwards stopped at the
 *    hooks' stage, one layer's activations kept) are the bytes
 *    circ_dict_hook_read gives after a full forward of a run that keeps
 *    every layer's, at every hook point, on GPT-2 and on families
 *    (tests/data/families).
 * Set CIRC_SKIP_TORCH=1 to skip part 2 on a machine without python3-torch.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "dict.h"
#include "dict_train.h"
#include "model.h"

static char tmp[256];

/* The architectures, and relu once more on its sparse path (index 4). */
static const circ_dtrain_arch archs[] = {CIRC_DTRAIN_RELU, CIRC_DTRAIN_TOPK, CIRC_DTRAIN_BATCHTOPK,
					 CIRC_DTRAIN_JUMPRELU, CIRC_DTRAIN_RELU};
static const char *const arch_label[] = {"relu", "topk", "batchtopk", "jumprelu", "relu-sparse"};

/* tc: 0 an SAE, 1 a transcoder, 2 a transcoder with a skip connection. */
static const char *const kind_label[] = {"sae", "transcoder", "skip-transcoder"};

/* Small options for gradient checks. */
static void small_opts(circ_dtrain_opts *o, int ai, int tc, int B)
{
	circ_dtrain_opts_default(o, archs[ai]);
	o->sparse_below = ai == 4 ? 1.0 : 0.0;
	o->d_in = 6;
	o->d_out = tc ? 5 : 6;
	o->d_sae = 12;
	o->transcoder = tc > 0;
	o->skip = tc == 2;
	o->batch = B;
	o->k = 3;
	o->k_aux = 4;
	o->dead_tokens = 1000;
	o->l1 = 0.3;
	o->l1_warmup = 0;
	o->l0 = 0.2;
	o->bandwidth = 0.5;
	o->threshold_init = 0.3;
	o->aux_coeff = 0;
}

static void normals(circ_rng *r, float *x, size_t n, double s)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(s * circ_rng_normal(r));
}

static double loss_of(circ_dtrain *t, const float *x, const float *y, int B)
{
	circ_dtrain_stats st;
	circ_error e;
	CHECK_MSG(circ_dtrain_grad(t, x, y, B, &st, &e) == 0, e);
	return st.loss;
}

static void test_finite_differences(void)
{
	for (int ai = 0; ai < 5; ai++)
		for (int tc = 0; tc < 3; tc++) {
			circ_dtrain_opts o;
			circ_error e;
			circ_rng r;
			int B = 7;
			small_opts(&o, ai, tc, B);
			circ_dtrain *t = circ_dtrain_new(&o, &e);
			CHECK_MSG(t != NULL, e);
			circ_rng_seed(&r, 5 + (uint64_t)ai);
			float x[7 * 6], y[7 * 5];
			normals(&r, x, 7 * 6, 1);
			normals(&r, y, 7 * 5, 1);
			float *p = circ_dtrain_params(t);
			size_t n = circ_dtrain_n_params(t);
			for (size_t i = 0; i < n; i++)
				p[i] += (float)(0.3 * circ_rng_normal(&r));
			loss_of(t, x, y, B);
			float *g = malloc(n * sizeof *g);
			memcpy(g, circ_dtrain_grads(t), n * sizeof *g);
			circ_dtrain_view v;
			circ_dtrain_views(t, p, &v);
			size_t skip = v.log_theta ? (size_t)(v.log_theta - p) : n;
			double gmax = 0, worst = 0;
			for (size_t i = 0; i < n; i++)
				gmax = fmax(gmax, fabs(g[i]));
			for (size_t i = 0; i < skip; i++) {
				float keep = p[i];
				double h = 1e-3;
				p[i] = keep + (float)h;
				double lp = loss_of(t, x, y, B);
				p[i] = keep - (float)h;
				double lm = loss_of(t, x, y, B);
				p[i] = keep;
				worst = fmax(worst, fabs((lp - lm) / (2 * h) - g[i]));
			}
			fprintf(
			    stderr,
			    "test_dict_train: finite differences %-11s %s: worst %.2e of %.2e\n",
			    arch_label[ai], kind_label[tc], worst, gmax);
			CHECK(gmax > 0.1 && worst < 2e-3 * gmax);
			free(g);
			circ_dtrain_free(t);
		}
}

/* ---- PyTorch ---- */

enum { TB = 9, TSTEPS = 3 };

typedef struct torch_case {
	circ_dtrain_opts o;
	const char *label;
	circ_dtrain *t;
	float x[TB * 6], y[TB * 5], xs[TSTEPS][TB * 6], ys[TSTEPS][TB * 5];
	unsigned char dead[12];
} torch_case;

static void export_all(circ_dtrain *t, float *W_enc, float *b_enc, float *W_dec, float *b_dec,
		       float *lt, float *W_skip)
{
	circ_dtrain_view v;
	const circ_dtrain_opts *o = circ_dtrain_options(t);
	circ_dtrain_export(t, W_enc, b_enc, W_dec, b_dec, NULL);
	circ_dtrain_views(t, circ_dtrain_params(t), &v);
	if (v.log_theta)
		memcpy(lt, v.log_theta, (size_t)o->d_sae * sizeof(float));
	if (v.W_skip)
		memcpy(W_skip, v.W_skip, (size_t)o->d_out * o->d_in * sizeof(float));
}

static void torch_prepare(torch_case *c, int idx, FILE *js)
{
	circ_error e;
	circ_rng r;
	const circ_dtrain_opts *o = &c->o;
	int D = o->d_in, O = o->d_out, S = o->d_sae;
	char in[300], out[300];
	c->t = circ_dtrain_new(o, &e);
	CHECK_MSG(c->t != NULL, e);
	circ_rng_seed(&r, 100 + (uint64_t)idx);
	float *p = circ_dtrain_params(c->t);
	for (size_t i = 0; i < circ_dtrain_n_params(c->t); i++)
		p[i] += (float)(0.2 * circ_rng_normal(&r));
	normals(&r, c->x, (size_t)TB * D, 1);
	normals(&r, c->y, (size_t)TB * O, 1);
	for (int k = 0; k < TSTEPS; k++) {
		normals(&r, c->xs[k], (size_t)TB * D, 1);
		normals(&r, c->ys[k], (size_t)TB * O, 1);
	}
	for (int i = 0; i < S; i++)
		c->dead[i] = i % 3 != 0;
	float W_enc[6 * 12], b_enc[12], W_dec[12 * 6], b_dec[6], lt[12], dead[12], W_skip[5 * 6];
	export_all(c->t, W_enc, b_enc, W_dec, b_dec, lt, W_skip);
	for (int i = 0; i < S; i++)
		dead[i] = c->dead[i];
	circ_st_tensor ts[] = {
	    {"W_enc", CIRC_F32, 2, {D, S}, W_enc, sizeof(float) * D * S},
	    {"b_enc", CIRC_F32, 1, {S}, b_enc, sizeof(float) * S},
	    {"W_dec", CIRC_F32, 2, {S, O}, W_dec, sizeof(float) * S * O},
	    {"b_dec", CIRC_F32, 1, {O}, b_dec, sizeof(float) * O},
	    {"dead", CIRC_F32, 1, {S}, dead, sizeof(float) * S},
	    {"x", CIRC_F32, 2, {TB, D}, c->x, sizeof(float) * TB * D},
	    {"xs", CIRC_F32, 3, {TSTEPS, TB, D}, c->xs, sizeof(float) * TSTEPS * TB * D},
	    {"y", CIRC_F32, 2, {TB, O}, c->y, sizeof(float) * TB * O},
	    {"ys", CIRC_F32, 3, {TSTEPS, TB, O}, c->ys, sizeof(float) * TSTEPS * TB * O},
	    {"log_theta", CIRC_F32, 1, {S}, lt, sizeof(float) * S},
	    {"W_skip", CIRC_F32, 2, {O, D}, W_skip, sizeof(float) * O * D},
	};
	int nt = o->transcoder ? 9 : 7;
	if (o->arch == CIRC_DTRAIN_JUMPRELU)
		ts[nt++] = ts[9];
	if (o->skip)
		ts[nt++] = ts[10];
	snprintf(in, sizeof in, "%s/torch-in-%d.safetensors", tmp, idx);
	snprintf(out, sizeof out, "%s/torch-out-%d.safetensors", tmp, idx);
	CHECK_MSG(circ_st_write(in, nt, ts, 0, NULL, &e) == 0, e);
	fprintf(js,
		"%s{\"arch\": \"%s\", \"transcoder\": %d, \"k\": %d, \"k_aux\": %d, "
		"\"aux_coeff\": %.17g, \"l1\": %.17g, \"l0\": %.17g, \"bandwidth\": %.17g, "
		"\"in\": \"%s\", \"out\": \"%s\", \"steps\": %d, \"lr\": [",
		idx ? "," : "", circ_dtrain_arch_name(o->arch), o->transcoder, o->k, o->k_aux,
		o->aux_coeff, o->l1 * (o->l1_warmup > 0 ? 1.0 / (double)o->l1_warmup : 1.0), o->l0,
		o->bandwidth, in, out, TSTEPS);
	for (int k = 0; k < TSTEPS; k++)
		fprintf(js, "%s%.17g", k ? ", " : "", circ_dtrain_lr(o, k));
	fprintf(js, "], \"l1_steps\": [");
	for (int k = 0; k < TSTEPS; k++)
		fprintf(js, "%s%.17g", k ? ", " : "",
			o->l1 * (o->l1_warmup > 0 && k < o->l1_warmup
				     ? (double)(k + 1) / (double)o->l1_warmup
				     : 1.0));
	fprintf(js,
		"], \"betas\": [%.17g, %.17g], \"eps\": %.17g, \"weight_decay\": %.17g, "
		"\"clip\": %.17g}\n",
		o->beta1, o->beta2, o->eps, o->weight_decay, o->clip);
}

static double worst_diff(const float *a, const float *b, size_t n, double *amax)
{
	double w = 0;
	*amax = 0;
	for (size_t i = 0; i < n; i++) {
		w = fmax(w, fabs((double)a[i] - b[i]));
		*amax = fmax(*amax, fabs((double)b[i]));
	}
	return w;
}

/* One of circ's tensors and the name of the reference's. */
typedef struct named {
	const char *name;
	const float *mine;
	size_t n;
} named;

/* The largest difference between each of circ's tensors and the
 * reference's of the same name (a missing or misshapen one fails); *amax
 * gets the largest reference value. */
static double compare_named(const circ_st *f, const named *t, int n, double *amax)
{
	double worst = 0;
	*amax = 0;
	for (int q = 0; q < n; q++) {
		if (!t[q].mine)
			continue;
		const circ_st_tensor *r = circ_st_find(f, t[q].name);
		CHECK(r && r->nbytes == t[q].n * sizeof(float));
		if (!r || r->nbytes != t[q].n * sizeof(float))
			continue;
		double am;
		worst = fmax(worst, worst_diff(t[q].mine, r->data, t[q].n, &am));
		*amax = fmax(*amax, am);
	}
	return worst;
}

static void torch_compare(torch_case *c, int idx)
{
	circ_error e;
	char out[300];
	const circ_dtrain_opts *o = &c->o;
	int D = o->d_in, O = o->d_out, S = o->d_sae;
	snprintf(out, sizeof out, "%s/torch-out-%d.safetensors", tmp, idx);
	circ_st *f = circ_st_open(out, &e);
	CHECK_MSG(f != NULL, e);
	if (!f)
		return;
	/* the gradient at the given parameters, AuxK over the dead latents */
	circ_dtrain_set_dead(c->t, c->dead);
	loss_of(c->t, c->x, o->transcoder ? c->y : NULL, TB);
	const float *g = circ_dtrain_grads(c->t);
	circ_dtrain_view gv;
	circ_dtrain_views(c->t, (float *)g, &gv);
	float gW_enc[6 * 12];
	for (int i = 0; i < S; i++)
		for (int j = 0; j < D; j++)
			gW_enc[j * S + i] = gv.W_enc_t[i * D + j];
	named gs[] = {
	    {"grad.W_enc", gW_enc, (size_t)D * S},	 {"grad.b_enc", gv.b_enc, (size_t)S},
	    {"grad.W_dec", gv.W_dec, (size_t)S * O},	 {"grad.b_dec", gv.b_dec, (size_t)O},
	    {"grad.log_theta", gv.log_theta, (size_t)S}, {"grad.W_skip", gv.W_skip, (size_t)O * D}};
	double gmax, worst = compare_named(f, gs, 6, &gmax);
	/* three steps, nothing dead */
	unsigned char none[12] = {0};
	circ_dtrain_set_dead(c->t, none);
	for (int k = 0; k < TSTEPS; k++)
		CHECK_MSG(circ_dtrain_step(c->t, c->xs[k], o->transcoder ? c->ys[k] : NULL, TB,
					   NULL, &e) == 0,
			  e);
	float W_enc[6 * 12], b_enc[12], W_dec[12 * 6], b_dec[6], lt[12], W_skip[5 * 6];
	export_all(c->t, W_enc, b_enc, W_dec, b_dec, lt, W_skip);
	named ps[] = {{"final.W_enc", W_enc, (size_t)D * S},
		      {"final.b_enc", b_enc, (size_t)S},
		      {"final.W_dec", W_dec, (size_t)S * O},
		      {"final.b_dec", b_dec, (size_t)O},
		      {"final.log_theta", o->arch == CIRC_DTRAIN_JUMPRELU ? lt : NULL, (size_t)S},
		      {"final.W_skip", o->skip ? W_skip : NULL, (size_t)O * D}};
	double pmax, pworst = compare_named(f, ps, 6, &pmax);
	fprintf(stderr,
		"test_dict_train: PyTorch %-11s %s: gradient worst %.2e of %.2e, after %d steps "
		"%.2e\n",
		c->label, kind_label[o->transcoder + o->skip], worst, gmax, TSTEPS, pworst);
	CHECK(gmax > 0.1 && worst < 1e-4 * gmax);
	CHECK(pworst < 1e-4);
	circ_st_close(f);
}

static void test_torch(void)
{
	const char *root = getenv("CIRC_ROOT");
	char cases[300], cmd[1200];
	enum { NCASE = 15 };
	torch_case *tc = calloc(NCASE, sizeof *tc);
	if (getenv("CIRC_SKIP_TORCH")) {
		fprintf(stderr,
			"test_dict_train: CIRC_SKIP_TORCH set: PyTorch comparisons skipped\n");
		free(tc);
		return;
	}
	snprintf(cases, sizeof cases, "%s/torch-cases.json", tmp);
	FILE *js = fopen(cases, "w");
	CHECK(js != NULL);
	if (!js) {
		free(tc);
		return;
	}
	fprintf(js, "[\n");
	for (int q = 0; q < NCASE; q++) {
		small_opts(&tc[q].o, q / 3, q % 3, TB);
		tc[q].label = arch_label[q / 3];
		tc[q].o.aux_coeff = 0.5;
		tc[q].o.threads = 2;
		tc[q].o.lr = 1e-2;
		tc[q].o.steps = 10;
		tc[q].o.warmup = 2;
		tc[q].o.decay = 0;
		tc[q].o.weight_decay = q % 3 ? 0.1 : 0;
		tc[q].o.clip = q % 4 == 1 ? 0.5 : 0;
		tc[q].o.l1_warmup = 2;
		torch_prepare(&tc[q], q, js);
	}
	fprintf(js, "]\n");
	fclose(js);
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/ref/dict_train_ref.py' '%s'",
		 root ? root : ".", cases);
	if (system(cmd) != 0) {
		fprintf(stderr,
			"test_dict_train: the PyTorch reference failed (%s); set CIRC_SKIP_TORCH=1 "
			"to skip it\n",
			cmd);
		failures++;
	} else
		for (int q = 0; q < NCASE; q++)
			torch_compare(&tc[q], q);
	for (int q = 0; q < NCASE; q++)
		circ_dtrain_free(tc[q].t);
	free(tc);
}

/* ---- ground truth ---- */

enum { FD = 32, FOUT = 40, NFEAT = 64, FS = 128, FB = 256 };

/* Trains o on the fixture for steps (from step `from`, a trainer and
 * buffer given or made); returns the trainer. */
static void train_on(circ_dtrain *t, circ_dbuf *b, int from, int steps)
{
	const circ_dtrain_opts *o = circ_dtrain_options(t);
	int w = o->d_in + (o->transcoder ? o->d_out : 0);
	float *rows = malloc((size_t)FB * w * sizeof(float)),
	      *x = malloc((size_t)FB * o->d_in * sizeof(float)),
	      *y = malloc((size_t)FB * o->d_out * sizeof(float));
	circ_error e;
	for (int s = from; s < steps; s++) {
		CHECK_MSG(circ_dbuf_next(b, rows, FB, &e) == 0, e);
		for (int q = 0; q < FB; q++) {
			memcpy(x + (size_t)q * o->d_in, rows + (size_t)q * w,
			       (size_t)o->d_in * sizeof(float));
			if (o->transcoder)
				memcpy(y + (size_t)q * o->d_out, rows + (size_t)q * w + o->d_in,
				       (size_t)o->d_out * sizeof(float));
		}
		if (s == 0 && !o->transcoder)
			circ_dtrain_init_b_dec(t, x, FB);
		CHECK_MSG(circ_dtrain_step(t, x, o->transcoder ? y : NULL, FB, NULL, &e) == 0, e);
	}
	free(rows);
	free(x);
	free(y);
}

static void fixture_opts(circ_dtrain_opts *o, circ_dtrain_arch a, int tc, int steps)
{
	circ_dtrain_opts_default(o, a);
	o->d_in = FD;
	o->d_out = tc ? FOUT : FD;
	o->d_sae = FS;
	o->transcoder = tc;
	o->k = 4;
	o->steps = steps;
	o->lr = 1e-2;
	o->warmup = steps / 20;
	o->batch = FB;
	o->dead_tokens = FB * 50;
	o->l1 = 0.3;
	o->l0 = 0.1;
	o->threshold_init = 0.1;
	o->bandwidth = 0.1;
	o->threads = tc ? 2 : 1;
}

static void test_recovery(void)
{
	for (int q = 0; q < 8; q++) {
		circ_dtrain_opts o;
		circ_error e;
		int tc = q % 2;
		fixture_opts(&o, archs[q / 2], tc, 1000);
		circ_dtrain *t = circ_dtrain_new(&o, &e);
		CHECK_MSG(t != NULL, e);
		circ_dfix *f =
		    circ_dfix_new(FD, tc ? FOUT : 0, NFEAT, NFEAT / 8, NFEAT / 8, 0.04, 1);
		circ_dbuf *b = circ_dbuf_new(8192, FD + (tc ? FOUT : 0), 1, circ_dfix_fill, f);
		train_on(t, b, 0, (int)o.steps);
		circ_dtrain_view v;
		circ_dtrain_views(t, circ_dtrain_params(t), &v);
		double rec = circ_dtrain_recovery(tc ? circ_dfix_out_dirs(f) : circ_dfix_dirs(f),
						  NFEAT, v.W_dec, FS, o.d_out);
		fprintf(stderr,
			"test_dict_train: superposition (%d features in %d dimensions) %-9s %s: "
			"mean max cosine %.4f\n",
			NFEAT, FD, circ_dtrain_arch_name(o.arch), tc ? "transcoder" : "sae", rec);
		CHECK(rec >= 0.95);
		circ_dbuf_free(b);
		circ_dfix_free(f);
		circ_dtrain_free(t);
	}
}

/* ---- determinism and resume ---- */

static void test_resume(void)
{
	for (int ai = 0; ai < 4; ai += 1 + (ai == 1)) { /* relu, topk, jumprelu */
		circ_dtrain_opts o;
		circ_error e;
		char ck[300];
		fixture_opts(&o, archs[ai], 0, 60);
		o.threads = 2;
		o.dead_tokens = FB * 5; /* AuxK active in the second half */
		float *ref = NULL;
		size_t n = 0;
		for (int run = 0; run < 3; run++) {
			circ_dfix *f = circ_dfix_new(FD, 0, NFEAT, 8, 8, 0.04, 3);
			circ_dbuf *b = circ_dbuf_new(1024, FD, 3, circ_dfix_fill, f);
			circ_dtrain *t = circ_dtrain_new(&o, &e);
			if (run < 2)
				train_on(t, b, 0, 60);
			else {
				train_on(t, b, 0, 25);
				circ_st_tensor bt[2];
				const char *meta[4];
				snprintf(ck, sizeof ck, "%s/ck.safetensors", tmp);
				circ_dbuf_state(b, bt, meta);
				CHECK_MSG(circ_dtrain_save(t, ck, 2, bt, 2, meta, &e) == 0, e);
				circ_dtrain_free(t);
				circ_dbuf_free(b);
				circ_dfix_free(f);
				/* a fresh process's view: new objects, state from the file
				 * (the fixture source is a pure function of its draws:
				 * replay them) */
				f = circ_dfix_new(FD, 0, NFEAT, 8, 8, 0.04, 3);
				b = circ_dbuf_new(1024, FD, 3, circ_dfix_fill, f);
				t = circ_dtrain_new(&o, &e);
				circ_st *cf = circ_st_open(ck, &e);
				CHECK_MSG(cf != NULL, e);
				CHECK_MSG(circ_dtrain_restore(t, cf, &e) == 0, e);
				CHECK_MSG(circ_dbuf_restore(b, cf, &e) == 0, e);
				float *skip =
				    malloc((size_t)circ_dbuf_rows_in(b) * FD * sizeof(float));
				circ_dfix_fill(f, skip, (size_t)circ_dbuf_rows_in(b), &e);
				free(skip);
				circ_st_close(cf);
				CHECK(circ_dtrain_step_count(t) == 25);
				train_on(t, b, 25, 60);
				/* other options are refused */
				circ_dtrain_opts o2 = o;
				o2.lr *= 2;
				circ_dtrain *t2 = circ_dtrain_new(&o2, &e);
				cf = circ_st_open(ck, &e);
				CHECK(circ_dtrain_restore(t2, cf, &e) < 0 &&
				      strstr(e.msg, "options"));
				circ_st_close(cf);
				circ_dtrain_free(t2);
			}
			n = circ_dtrain_n_params(t);
			if (!ref) {
				ref = malloc(n * sizeof(float));
				memcpy(ref, circ_dtrain_params(t), n * sizeof(float));
			} else
				CHECK(!memcmp(ref, circ_dtrain_params(t), n * sizeof(float)));
			circ_dtrain_free(t);
			circ_dbuf_free(b);
			circ_dfix_free(f);
		}
		fprintf(stderr, "test_dict_train: %s: repeat and resume byte-identical\n",
			circ_dtrain_arch_name(o.arch));
		free(ref);
	}
}

/* The buffer on disk serves the rows the buffer in memory serves, leaves
 * no file behind, and every row written is served once before the buffer
 * mixes it with new ones: over a window of half the buffer, served rows are
 * distinct (the fixture's rows are, with probability ~1). */
static void test_buffer_file(void)
{
	circ_error e;
	const size_t cap = 3000; /* not a multiple of the refill chunk */
	const int n = 700, steps = 9;
	circ_dfix *fa = circ_dfix_new(FD, 0, NFEAT, 8, 8, 0.2, 5);
	circ_dfix *fb = circ_dfix_new(FD, 0, NFEAT, 8, 8, 0.2, 5);
	circ_dbuf *a = circ_dbuf_new(cap, FD, 11, circ_dfix_fill, fa);
	circ_dbuf *b = circ_dbuf_new_file(cap, FD, 11, circ_dfix_fill, fb, tmp, &e);
	CHECK_MSG(b != NULL, e);
	float *ra = malloc((size_t)n * FD * sizeof(float)),
	      *rb = malloc((size_t)n * FD * sizeof(float));
	int same = 1;
	for (int s = 0; s < steps && b; s++) {
		CHECK(circ_dbuf_next(a, ra, n, &e) == 0 && circ_dbuf_next(b, rb, n, &e) == 0);
		same &= !memcmp(ra, rb, (size_t)n * FD * sizeof(float));
		/* within a batch no row is served twice */
		for (int i = 1; i < n; i++)
			same &= !!memcmp(ra + (size_t)i * FD, ra, FD * sizeof(float));
	}
	CHECK(same);
	CHECK(circ_dbuf_rows_in(a) == circ_dbuf_rows_in(b) && circ_dbuf_rows_in(a) > (int64_t)cap);
	char cmd[400];
	snprintf(cmd, sizeof cmd, "test -z \"$(ls '%s' | grep circ-buffer)\"", tmp);
	CHECK(system(cmd) == 0);
	free(ra);
	free(rb);
	circ_dbuf_free(a);
	circ_dbuf_free(b);
	circ_dfix_free(fa);
	circ_dfix_free(fb);
	CHECK(circ_dbuf_new_file(cap, FD, 1, circ_dfix_fill, NULL, "/nonexistent-dir", &e) ==
		  NULL &&
	      strstr(e.msg, "'/nonexistent-dir'") && strstr(e.msg, "buffer"));
}

/* Token source of the harvest test: B sequences of T ids below V, from
 * a fixed sequence. */
typedef struct htok {
	int V, given, limit;
} htok;

static int htok_next(void *ctx, int32_t *tokens, int B, int T, circ_error *e)
{
	htok *h = ctx;
	(void)e;
	if (h->given >= h->limit)
		return 0;
	for (int i = 0; i < B * T; i++)
		tokens[i] = (int32_t)(((size_t)(h->given * T + i) * 7919u + 13u) % (size_t)h->V);
	h->given += B;
	return B;
}

static void harvest_case(circ_model *m, const char *label, const char *hook, int d_in)
{
	enum { B = 3, T = 9 };
	circ_error e;
	circ_dict_cfg c;
	circ_dict *d;
	circ_dharvest *h;
	htok src = {circ_model_config(m)->vocab_size, 0, B};
	int32_t tok[B * T];
	size_t n = (size_t)B * T * d_in;
	float *got = malloc(n * sizeof *got), *want = malloc(n * sizeof *want);
	circ_dict_cfg_init(&c);
	c.arch = CIRC_DICT_STANDARD;
	c.d_in = d_in;
	c.d_sae = 8;
	c.d_out = d_in;
	c.apply_b_dec_to_input = 1;
	snprintf(c.hook_name, sizeof c.hook_name, "%s", hook);
	d = circ_dict_new(&c, &e);
	CHECK_MSG(d, e);
	if (!d || circ_dict_check_model(d, m, &e) < 0) {
		fprintf(stderr, "harvest %s %s: %s\n", label, hook, e.msg);
		failures++;
		goto out;
	}
	h = circ_dharvest_new(m, d, B, T, 2, htok_next, &src, &e);
	CHECK_MSG(h, e);
	if (h) {
		CHECK_MSG(circ_dharvest_fill(h, got, (size_t)B * T, &e) == 0, e);
		circ_dharvest_free(h);
	}
	{
		htok again = {src.V, 0, B};
		circ_run_opts ro;
		circ_run *r;
		circ_fwd f;
		circ_run_opts_default(&ro);
		/* as the harvester's run, but every layer's activations kept */
		ro.keep_nodes = strstr(hook, "hook_z") != NULL;
		r = circ_run_new(m, B, T, &ro, &e);
		CHECK_MSG(r, e);
		htok_next(&again, tok, B, T, &e);
		circ_fwd_init(&f);
		f.tokens = tok;
		f.B = B;
		f.T = T;
		CHECK_MSG(r && circ_forward(r, &f, &e) == 0, e);
		CHECK_MSG(r && circ_dict_hook_read(d, 1, r, want, &e) == 0, e);
		circ_run_free(r);
	}
	if (memcmp(got, want, n * sizeof *got)) {
		fprintf(stderr, "harvest %s %s: rows differ from a full run's\n", label, hook);
		failures++;
	}
out:
	circ_dict_free(d);
	free(got);
	free(want);
}

static void test_harvest(void)
{
	static const char *const fams[] = {"gpt2", "llama", "qwen3", "gemma2", "gpt_neox", "olmo2"};
	static const char *const hooks[] = {
	    "blocks.1.hook_resid_pre",	    "blocks.1.hook_resid_mid", "blocks.0.hook_resid_post",
	    "blocks.1.hook_attn_out",	    "blocks.1.hook_mlp_out",   "blocks.1.attn.hook_z",
	    "blocks.1.ln2.hook_normalized", "blocks.0.attn.hook_z"};
	/* parallel blocks (GPT-NeoX) have no resid_mid and no attn_out yet */
	const char *root = getenv("CIRC_ROOT");
	for (size_t i = 0; i < sizeof fams / sizeof *fams; i++) {
		char dir[4400];
		circ_error e;
		circ_model *m;
		if (!strcmp(fams[i], "gpt2")) {
			circ_config c = {0};
			c.n_layer = 2;
			c.n_head = 3;
			c.n_embd = 48;
			c.n_inner = 192;
			c.vocab_size = 300;
			c.n_ctx = 32;
			c.layer_norm_epsilon = 1e-5;
			c.act = CIRC_ACT_GELU_NEW;
			snprintf(dir, sizeof dir, "%s/gpt2-harvest", tmp);
			CHECK_MSG(circ_model_write_random(dir, &c, 11, "F32", &e) == 0, e);
		} else {
			snprintf(dir, sizeof dir, "%s/tests/data/families/%s", root ? root : ".",
				 fams[i]);
		}
		m = circ_model_open(dir, NULL, &e);
		CHECK_MSG(m, e);
		if (!m)
			continue;
		const circ_config *mc = circ_model_config(m);
		for (size_t k = 0; k < sizeof hooks / sizeof *hooks; k++) {
			int z = strstr(hooks[k], "hook_z") != NULL;
			if (!strcmp(fams[i], "gpt_neox") &&
			    (strstr(hooks[k], "resid_mid") || strstr(hooks[k], "attn_out")))
				continue;
			harvest_case(m, fams[i], hooks[k],
				     z ? mc->n_head * circ_config_head_dim(mc) : mc->n_embd);
		}
		circ_model_free(m);
	}
}

int main(void)
{
	snprintf(tmp, sizeof tmp, "/tmp/circ-test-dict-train-%ld", (long)getpid());
	char cmd[400];
	snprintf(cmd, sizeof cmd, "mkdir -p '%s'", tmp);
	if (system(cmd) != 0)
		return 1;
	test_finite_differences();
	test_torch();
	test_recovery();
	test_resume();
	test_buffer_file();
	test_harvest();
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
	if (system(cmd) != 0)
		failures++;
	if (failures)
		fprintf(stderr, "test_dict_train: %d failures\n", failures);
	return failures != 0;
}
