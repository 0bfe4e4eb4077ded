/*
 * Unit tests for lib/edgeprune on a random model:
 *  - the hard-concrete sample and L0 probability against their finite
 *    differences (|error| < 1e-6);
 *  - the model's out_hook: the residual gradient handed back gives the same
 *    receiver gradients (1e-6 of the largest), a head's zeroed changes
 *    those below it only;
 *  - masks all 1 give the clean run, all 0 the corrupted run;
 *  - d loss / d z against central finite differences of the loss (h = 1e-2,
 *    float runs: |error| <= 2e-3 max|dz| + 1e-5), at edge and node level,
 *    with random masks and with every mask 1;
 *  - d loss / d z and the loss against an independent PyTorch reference
 *    (tests/ref/edgeprune_ref.py, float64): |error| <= 1e-3 max|dz| + 1e-6,
 *    loss to 1e-4 relative (CIRC_SKIP_TORCH=1 skips it);
 *  - training: the same seed gives the same log_alpha bytes, another seed
 *    others; the expected sparsity ends within 0.05 of the target (with node
 *    masks too, both within 0.1 of theirs).
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "edgeprune.h"
#include "rng.h"
#include "test_batch.h"

static char dir[] = "/tmp/circ-test-edgeprune-XXXXXX";

static void test_hard_concrete(void)
{
	const double h = 1e-5;
	for (double la = -4; la <= 4; la += 0.7)
		for (double u = 0.05; u < 1; u += 0.15) {
			double dz, z = circ_ep_hc_sample(la, u, &dz);
			double fd = (circ_ep_hc_sample(la + h, u, NULL) -
				     circ_ep_hc_sample(la - h, u, NULL)) /
				    (2 * h);
			double dp, p = circ_ep_hc_l0(la, &dp);
			CHECK(z >= 0 && z <= 1);
			if (z > 1e-3 && z < 1 - 1e-3)
				CHECK(fabs(fd - dz) < 1e-6);
			CHECK(p > 0 && p < 1);
			CHECK(fabs((circ_ep_hc_l0(la + h, NULL) - circ_ep_hc_l0(la - h, NULL)) /
				       (2 * h) -
				   dp) < 1e-6);
		}
	CHECK(circ_ep_hc_sample(20, 0.5, NULL) == 1 && circ_ep_hc_sample(-20, 0.5, NULL) == 0);
	CHECK(circ_ep_hc_det(10) == 1 && circ_ep_hc_det(-10) == 0);
}

typedef struct setup {
	circ_patcher *p;
	circ_edgeprune *ep;
	circ_batch *b;
	int64_t E;
} setup;

static int make_setup(setup *s, const circ_model *m, const circ_graph *g, circ_metric_kind k)
{
	circ_error e;
	circ_ep_opts o;
	/* one stage's receiver gradients at a time, as circ-prune runs it */
	circ_patch_opts po = {CIRC_ABL_RESAMPLE, 0, k, 1, 3, 6, 1, 0, 1};
	memset(s, 0, sizeof *s);
	s->b = make_batch(3, 6, circ_model_config(m)->vocab_size, 11);
	circ_ep_opts_default(&o);
	s->p = circ_patcher_new(m, g, &po, &e);
	CHECK_MSG(s->p && circ_patcher_load(s->p, s->b, &e) == 0, e);
	s->ep = circ_ep_new(&s->p, 1, &o, &e);
	CHECK_MSG(s->ep != NULL, e);
	s->E = g->n_edges;
	return s->ep ? 0 : -1;
}

static void free_setup(setup *s)
{
	circ_ep_free(s->ep);
	circ_patcher_free(s->p);
	circ_batch_free(s->b);
}

static void test_ends(const circ_model *m, const circ_graph *g)
{
	circ_error e;
	setup s;
	double loss, want = 0;
	float *z;
	if (make_setup(&s, m, g, CIRC_METRIC_LOGIT_DIFF) < 0)
		return;
	z = circ_xmalloc((size_t)s.E * sizeof *z);
	for (int64_t i = 0; i < s.E; i++)
		z[i] = 1;
	CHECK_MSG(circ_ep_loss_grad(s.ep, 0, z, &loss, NULL, &e) == 0, e);
	for (int i = 0; i < s.b->B; i++)
		want -= circ_patcher_clean_metric(s.p)[i] / s.b->B;
	CHECK(fabs(loss - want) < 1e-5 * (1 + fabs(want)));
	for (int64_t i = 0; i < s.E; i++)
		z[i] = 0;
	CHECK_MSG(circ_ep_loss_grad(s.ep, 0, z, &loss, NULL, &e) == 0, e);
	want = 0;
	for (int i = 0; i < s.b->B; i++)
		want -= circ_patcher_ref_metric(s.p)[i] / s.b->B;
	CHECK(fabs(loss - want) < 1e-4 * (1 + fabs(want)));
	free(z);
	free_setup(&s);
}

/* Random masks in [0.2, 0.8]. */
static float *random_z(int64_t E, uint64_t seed)
{
	circ_rng r;
	float *z = circ_xmalloc((size_t)E * sizeof *z);
	circ_rng_seed(&r, seed);
	for (int64_t i = 0; i < E; i++)
		z[i] = (float)(0.2 + 0.6 * circ_rng_uniform(&r));
	return z;
}

/* ones: every mask 1 (the clean run, no delta set), else random masks. */
static void test_finite_diff(const circ_model *m, const circ_graph *g, circ_metric_kind k, int ones)
{
	circ_error e;
	setup s;
	circ_rng r;
	double loss, lp, lm, scale = 0, worst = 0, *dz;
	float *z;
	const float h = 1e-2f;
	if (make_setup(&s, m, g, k) < 0)
		return;
	z = random_z(s.E, 5);
	for (int64_t i = 0; ones && i < s.E; i++)
		z[i] = 1;
	dz = circ_xmalloc((size_t)s.E * sizeof *dz);
	CHECK_MSG(circ_ep_loss_grad(s.ep, 0, z, &loss, dz, &e) == 0, e);
	for (int64_t i = 0; i < s.E; i++)
		scale = fmax(scale, fabs(dz[i]));
	CHECK(scale > 0);
	circ_rng_seed(&r, 9);
	for (int j = 0; j < 24; j++) {
		int64_t i = (int64_t)circ_rng_below(&r, (uint64_t)s.E);
		float z0 = z[i];
		z[i] = z0 + h;
		CHECK(circ_ep_loss_grad(s.ep, 0, z, &lp, NULL, &e) == 0);
		z[i] = z0 - h;
		CHECK(circ_ep_loss_grad(s.ep, 0, z, &lm, NULL, &e) == 0);
		z[i] = z0;
		worst = fmax(worst, fabs((lp - lm) / (2.0 * h) - dz[i]));
	}
	if (getenv("CIRC_TEST_VERBOSE") || !(worst <= 2e-3 * scale + 1e-5))
		fprintf(stderr, "finite differences (%s, %s level%s): worst %g, max |dz| %g\n",
			circ_metric_name(k), g->level == CIRC_LEVEL_EDGE ? "edge" : "node",
			ones ? ", z = 1" : "", worst, scale);
	CHECK(worst <= 2e-3 * scale + 1e-5);
	free(z);
	free(dz);
	free_setup(&s);
}

static void test_torch(const circ_model *m, const circ_graph *g, circ_metric_kind k)
{
	const char *root = getenv("CIRC_ROOT");
	char cpath[300], opath[300], cmd[1200];
	circ_error e;
	setup s;
	double loss, *dz, scale = 0, worst = 0;
	float *z;
	FILE *f;
	json_t *out;
	json_error_t je;
	if (getenv("CIRC_SKIP_TORCH"))
		return;
	if (make_setup(&s, m, g, k) < 0)
		return;
	z = random_z(s.E, 17);
	dz = circ_xmalloc((size_t)s.E * sizeof *dz);
	CHECK_MSG(circ_ep_loss_grad(s.ep, 0, z, &loss, dz, &e) == 0, e);
	snprintf(cpath, sizeof cpath, "%s/case.json", dir);
	snprintf(opath, sizeof opath, "%s/out.json", dir);
	f = fopen(cpath, "w");
	fprintf(f, "{\"model\": \"%s/model\", \"metric\": \"%s\", \"z\": [", dir,
		circ_metric_name(k));
	for (int64_t i = 0; i < s.E; i++)
		fprintf(f, "%s%.9g", i ? "," : "", (double)z[i]);
	fprintf(f, "], \"examples\": [");
	for (int b = 0; b < s.b->B; b++) {
		const circ_example *x = &s.b->ex[b];
		fprintf(f, "%s{\"pos\": %d, \"answer\": [%d], \"wrong\": [%d], \"clean\": [",
			b ? "," : "", x->pos[0], x->ans[0], x->wrong[0]);
		for (int t = 0; t < x->T; t++)
			fprintf(f, "%s%d", t ? "," : "", x->clean[t]);
		fprintf(f, "], \"corrupt\": [");
		for (int t = 0; t < x->T; t++)
			fprintf(f, "%s%d", t ? "," : "", x->corrupt[t]);
		fprintf(f, "]}");
	}
	fprintf(f, "]}\n");
	fclose(f);
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tests/ref/edgeprune_ref.py' '%s' '%s'",
		 root ? root : ".", cpath, opath);
	if (system(cmd) != 0) {
		fprintf(stderr,
			"test_edgeprune: the PyTorch reference failed (%s); set "
			"CIRC_SKIP_TORCH=1 to skip it\n",
			cmd);
		failures++;
	} else if (!(out = json_load_file(opath, 0, &je))) {
		fprintf(stderr, "test_edgeprune: '%s': %s\n", opath, je.text);
		failures++;
	} else {
		json_t *jd = json_object_get(out, "dz");
		double rl = json_real_value(json_object_get(out, "loss"));
		CHECK(json_array_size(jd) == (size_t)s.E);
		for (int64_t i = 0; i < s.E && i < (int64_t)json_array_size(jd); i++) {
			double want = json_real_value(json_array_get(jd, (size_t)i));
			scale = fmax(scale, fabs(want));
			worst = fmax(worst, fabs(want - dz[i]));
		}
		if (getenv("CIRC_TEST_VERBOSE") || !(worst <= 1e-3 * scale + 1e-6) ||
		    !(fabs(rl - loss) <= 1e-4 * (fabs(rl) + 1e-3)))
			fprintf(stderr,
				"PyTorch (%s): loss %.9g vs %.9g, worst |dz error| %g, max |dz| "
				"%g\n",
				circ_metric_name(k), loss, rl, worst, scale);
		CHECK(scale > 0 && worst <= 1e-3 * scale + 1e-6);
		CHECK(fabs(rl - loss) <= 1e-4 * (fabs(rl) + 1e-3));
		json_decref(out);
	}
	free(z);
	free(dz);
	free_setup(&s);
}

/* The model's out_hook (circ_bwd): handing every node the residual
 * gradient it would get anyway gives the same receiver gradients (per-head
 * GEMMs in place of one: 1e-6 of the largest); handing head 0 of the last
 * layer zeros takes its path out of the gradients of its layer's inputs and
 * changes nothing above it. */
typedef struct hook_ctx {
	int mode;      /* 0: none, 1: residual copies, 2: as 1 with a0 of the last layer zero */
	int L, H;      /* the model's shape */
	float *bufs;   /* (H, B, T, C) */
	float *zero;   /* (B, T, C) */
	size_t n;      /* B*T*C */
	float **grads; /* (R) receiver gradient copies */
	const circ_model *m;
} hook_ctx;

static int keep_grads(void *ctx, circ_run *r, int s, circ_error *e)
{
	hook_ctx *h = ctx;
	const circ_topo_stage *st = &circ_model_topology(h->m)->stage[s];
	(void)e;
	for (int mr = st->first_recv; mr < st->first_recv + st->n_recv; mr++)
		memcpy(h->grads[mr], circ_run_recv_grad(r, mr), h->n * sizeof(float));
	return 0;
}

static int give_grads(void *ctx, circ_run *r, int s, int nn, const float **ng, circ_error *e)
{
	hook_ctx *h = ctx;
	(void)e;
	for (int j = 0; j < nn; j++) {
		float *b = h->bufs + (size_t)j * h->n;
		memcpy(b, circ_run_resid_grad(r, s + 1), h->n * sizeof(float));
		ng[j] = h->mode == 2 && s == 2 * (h->L - 1) && j == 0 ? h->zero : b;
	}
	return 0;
}

static void run_grads(const circ_model *m, circ_run *r, const circ_batch *b, hook_ctx *h)
{
	circ_error e;
	circ_fwd f;
	circ_bwd bw = {0};
	int V = circ_model_config(m)->vocab_size;
	float *dl = circ_xmalloc((size_t)b->B * V * sizeof(float));
	circ_fwd_init(&f);
	f.tokens = b->clean;
	f.B = b->B;
	f.T = b->T;
	for (size_t i = 0; i < (size_t)b->B * V; i++)
		dl[i] = (float)((i * 7919 % 101) / 101.0 - 0.5);
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	bw.dlogits = dl;
	bw.hook = keep_grads;
	bw.hook_ctx = h;
	bw.out_hook = h->mode ? give_grads : NULL;
	CHECK_MSG(circ_backward(r, &bw, &e) == 0, e);
	free(dl);
}

static void test_out_hook(const circ_model *m)
{
	const circ_config *c = circ_model_config(m);
	circ_batch *b = make_batch(2, 5, c->vocab_size, 3);
	circ_error e;
	circ_run_opts ro;
	circ_run *r;
	hook_ctx h[3];
	int R = circ_model_n_recv(m);
	size_t n = (size_t)2 * 5 * (size_t)c->n_embd;
	double scale = 0, same = 0, below = 0, above = 0;
	circ_run_opts_default(&ro);
	ro.backward = 1;
	ro.keep_recv_grads = 0;
	r = circ_run_new(m, 2, 5, &ro, &e);
	CHECK_MSG(r != NULL, e);
	for (int k = 0; k < 3 && r; k++) {
		h[k] = (hook_ctx){k, c->n_layer, c->n_head, NULL, NULL, n, NULL, m};
		h[k].bufs = circ_xmalloc((size_t)c->n_head * n * sizeof(float));
		h[k].zero = circ_xcalloc(n, sizeof(float));
		h[k].grads = circ_xcalloc((size_t)R, sizeof *h[k].grads);
		for (int i = 0; i < R; i++)
			h[k].grads[i] = circ_xmalloc(n * sizeof(float));
		run_grads(m, r, b, &h[k]);
	}
	for (int i = 0; r && i < R; i++) {
		int st = circ_recv_stage(m, i);
		for (size_t j = 0; j < n; j++) {
			double g0 = h[0].grads[i][j];
			scale = fmax(scale, fabs(g0));
			same = fmax(same, fabs(h[1].grads[i][j] - g0));
			if (st >= 2 * (c->n_layer - 1) + 1)
				above = fmax(above, fabs(h[2].grads[i][j] - g0));
			else
				below = fmax(below, fabs(h[2].grads[i][j] - g0));
		}
	}
	if (getenv("CIRC_TEST_VERBOSE"))
		fprintf(stderr,
			"out_hook: residual copies %g, a head zeroed: above %g, below %g (of %g)\n",
			same, above, below, scale);
	CHECK(scale > 0 && same <= 1e-6 * scale);
	CHECK(above == 0 && below > 1e-3 * scale);
	for (int k = 0; k < 3 && r; k++) {
		for (int i = 0; i < R; i++)
			free(h[k].grads[i]);
		free(h[k].grads);
		free(h[k].bufs);
		free(h[k].zero);
	}
	circ_run_free(r);
	circ_batch_free(b);
}

static int count_step(void *ctx, const circ_ep_step *st, circ_error *e)
{
	(void)e;
	*(circ_ep_step *)ctx = *st;
	return 0;
}

/* log_alpha after training with seed `seed` (allocated), the last step in *last. */
static double *train(const circ_model *m, const circ_graph *g, uint64_t seed, int nodes,
		     circ_ep_step *last)
{
	circ_error e;
	circ_ep_opts o;
	circ_patch_opts po = {CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_KL, 1, 3, 6, 1};
	circ_batch *b = make_batch(3, 6, circ_model_config(m)->vocab_size, 11);
	circ_patcher *p = circ_patcher_new(m, g, &po, &e);
	circ_edgeprune *ep;
	double *la = NULL;
	circ_ep_opts_default(&o);
	o.sparsity = 0.5;
	o.steps = 120;
	o.warmup = 60;
	o.seed = seed;
	o.node_masks = nodes;
	o.node_sparsity = 0.6;
	CHECK_MSG(p && circ_patcher_load(p, b, &e) == 0, e);
	ep = circ_ep_new(&p, 1, &o, &e);
	CHECK_MSG(ep && circ_ep_train(ep, count_step, last, &e) == 0, e);
	if (ep) {
		la = circ_xmalloc((size_t)g->n_edges * sizeof *la);
		memcpy(la, circ_ep_log_alpha(ep), (size_t)g->n_edges * sizeof *la);
	}
	circ_ep_free(ep);
	circ_patcher_free(p);
	circ_batch_free(b);
	return la;
}

static void test_train(const circ_model *m, const circ_graph *g)
{
	circ_ep_step a, b, c, d;
	double *la = train(m, g, 3, 0, &a), *lb = train(m, g, 3, 0, &b),
	       *lc = train(m, g, 4, 0, &c);
	double *ld = train(m, g, 3, 1, &d);
	size_t n = (size_t)g->n_edges * sizeof(double);
	CHECK(la && lb && lc);
	if (la && lb && lc) {
		CHECK(memcmp(la, lb, n) == 0);
		CHECK(memcmp(la, lc, n) != 0);
	}
	CHECK(a.step == 120 && a.target == 0.5);
	if (getenv("CIRC_TEST_VERBOSE") || !(fabs(a.sparsity - 0.5) < 0.05))
		fprintf(stderr, "training: expected sparsity %g, target 0.5\n", a.sparsity);
	CHECK(fabs(a.sparsity - 0.5) < 0.05);
	/* node masks: both targets met */
	if (getenv("CIRC_TEST_VERBOSE") || !(fabs(d.node_sparsity - 0.6) < 0.1) ||
	    !(fabs(d.sparsity - 0.5) < 0.1))
		fprintf(stderr, "training with node masks: sparsity %g (0.5), nodes %g (0.6)\n",
			d.sparsity, d.node_sparsity);
	CHECK(ld && d.node_target == 0.6 && fabs(d.node_sparsity - 0.6) < 0.1);
	CHECK(fabs(d.sparsity - 0.5) < 0.1);
	free(ld);
	free(la);
	free(lb);
	free(lc);
}

int main(void)
{
	circ_config c = {2, 2, 16, 16, 50, 64, 1e-5, CIRC_ACT_GELU_NEW};
	char mdir[300];
	circ_error e;
	circ_model *m;
	circ_graph *g, *gn;
	if (!mkdtemp(dir))
		return 1;
	snprintf(mdir, sizeof mdir, "%s/model", dir);
	if (circ_model_write_random(mdir, &c, 7, "F32", &e) < 0 ||
	    !(m = circ_model_open(mdir, NULL, &e)) ||
	    !(g = circ_graph_new(c.n_layer, c.n_head, CIRC_LEVEL_EDGE, &e)) ||
	    !(gn = circ_graph_new(c.n_layer, c.n_head, CIRC_LEVEL_NODE, &e))) {
		fprintf(stderr, "%s\n", e.msg);
		return 1;
	}
	test_hard_concrete();
	test_out_hook(m);
	test_ends(m, g);
	test_finite_diff(m, g, CIRC_METRIC_LOGIT_DIFF, 0);
	test_finite_diff(m, g, CIRC_METRIC_LOGIT_DIFF, 1);
	test_finite_diff(m, g, CIRC_METRIC_KL, 0);
	test_finite_diff(m, gn, CIRC_METRIC_LOGIT_DIFF, 0);
	test_torch(m, g, CIRC_METRIC_LOGIT_DIFF);
	test_torch(m, g, CIRC_METRIC_KL);
	test_train(m, g);
	circ_graph_free(g);
	circ_graph_free(gn);
	circ_model_free(m);
	{
		char cmd[400];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			failures++;
	}
	return failures != 0;
}
