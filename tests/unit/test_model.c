/*
 * test_model: the GPT-2 model against an independent PyTorch reference, by
 * finite differences, and against itself (paths that must agree).
 *
 * 1. Reference: random models of several shapes (layers, heads, widths,
 *    n_inner, gelu and gelu_new, F32/F16/BF16 files, ACDC convention,
 *    sequence lengths 1-16, last/all/listed read rows, random receiver
 *    deltas) are written by circ_model_write_random; tests/ref/gpt2_ref.py
 *    (PyTorch, float64, written from the formulas) computes logits, every
 *    node output, attention, and for loss = sum(logits * dlogits) every
 *    receiver's and node's gradient; this test runs circ's forward (with the
 *    same deltas set from a hook) and backward and compares. Tolerances, as
 *    max |circ - torch| / (max |torch| + floor) per tensor:
 *        logits 1e-4 absolute and 2e-6 relative, node outputs and attention
 *        2e-6, receiver, node and parameter gradients 2e-5 (measured errors
 *        are about 10x smaller: 1e-7 - 2e-7 forward, up to 1.6e-6
 *        gradients). Parameter gradients (circ_bwd.dweights, every tensor
 *        including the tied wte/lm_head and wpe) are compared tensor by
 *        tensor.
 *    Metric values and gradients are compared with PyTorch autograd (1e-5).
 * 2. Finite differences: with the reference kernels (double accumulation),
 *    d metric / d receiver input and / d node output at sampled elements,
 *    perturbing through receiver deltas, and d metric / d parameter at 300
 *    sampled parameters (relative 2e-3).
 * 3. Self-consistency: node gradient = sum of its downstream receivers'
 *    gradients; patching every edge to the corrupted run's outputs
 *    reproduces the corrupted logits; keep_nodes 0, 2 threads, resumed
 *    forwards (circ_run_copy_prefix), keep_recv_grads 0 with a hook and the
 *    fused backward all agree with the plain run.
 * 4. Loading: each malformed directory is refused with a message naming
 *    the file and the key or tensor; digests; save/load round trip.
 *
 * Set CIRC_SKIP_TORCH=1 to skip part 1 on a machine without python3-torch.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "metric.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "util.h"
#include "check.h"
#include "test_one_layer.h"

static char tmp[256];

/* max |a - b| / (max |b| + floor); reports and fails above tol. */
static double cmp(const char *what, const float *a, const float *b, size_t n, double tol,
		  double floor)
{
	double mx = 0, err = 0;
	size_t at = 0;
	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);
		if (fabs(b[i]) > mx)
			mx = fabs(b[i]);
		if (d > err || isnan(d)) {
			err = isnan(d) ? INFINITY : d;
			at = i;
		}
	}
	double rel = err / (mx + floor);
	if (getenv("CIRC_TEST_VERBOSE"))
		fprintf(stderr, "  %-50s rel %.2e abs %.2e (tol %.0e)\n", what, rel, err, tol);
	if (!(rel <= tol)) {
		fprintf(stderr,
			"%s: error %.3g (abs %.3g, scale %.3g) > %.3g at %zu: %.9g vs %.9g\n", what,
			rel, err, mx, tol, at, n ? a[at] : 0, n ? b[at] : 0);
		failures++;
	}
	return err;
}

static circ_config small_config(int L, int H, int C, int V, int P)
{
	circ_config c = {0};
	c.n_layer = L;
	c.n_head = H;
	c.n_embd = C;
	c.vocab_size = V;
	c.n_ctx = P;
	c.n_inner = 4 * C;
	c.layer_norm_epsilon = 1e-5;
	c.act = CIRC_ACT_GELU_NEW;
	return c;
}

static char *path2(const char *a, const char *b)
{
	static char buf[4][512];
	static int i;
	i = (i + 1) % 4;
	snprintf(buf[i], sizeof buf[i], "%s/%s", a, b);
	return buf[i];
}

/* ============================================================ hooks */

/* Sets the deltas of a list of receivers from a (K, B, T, C) array. */
typedef struct delta_ctx {
	int k;
	const int32_t *recv;
	const float *deltas;
	size_t per; /* B*T*C */
} delta_ctx;

static int delta_hook(void *v, circ_run *r, int s, circ_error *e)
{
	delta_ctx *d = v;
	const circ_model *m = circ_run_model(r);
	for (int i = 0; i < d->k; i++)
		if (circ_recv_stage(m, d->recv[i]) == s) {
			float *p = circ_run_delta(r, d->recv[i]);
			if (!p)
				return circ_errorf(e, "no delta buffer for receiver %d",
						   d->recv[i]);
			memcpy(p, d->deltas + (size_t)i * d->per, d->per * sizeof(float));
		}
	return 0;
}

/* ============================================================ part 1: PyTorch */

typedef struct ref_case {
	const char *name;
	circ_config c;
	const char *dtype;
	int B, T;
	const char *read;
	int n_deltas;
	int acdc;
	int seed;
} ref_case;

static const float *tensor_f32(circ_st *f, const char *name, size_t want)
{
	const circ_st_tensor *t = circ_st_find(f, name);
	if (!t || t->dtype != CIRC_F32 || t->nbytes != want * 4) {
		fprintf(stderr, "golden file lacks tensor '%s' of %zu floats\n", name, want);
		failures++;
		return NULL;
	}
	return t->data;
}

/* Parameter gradients tensor by tensor, in circ_weights_alloc order. */
static void compare_params(const char *name, const circ_config *c, const circ_weights *dw,
			   const float *want)
{
	static const char *const per_layer[12] = {
	    "ln_1.weight",	  "ln_1.bias",	      "attn.c_attn.weight", "attn.c_attn.bias",
	    "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight",	    "ln_2.bias",
	    "mlp.c_fc.weight",	  "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
	size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner;
	size_t sizes[12] = {C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * F, F, F * C, C};
	size_t off = 0;
	char what[128];
	if (!want)
		return;
#define PCMP(label, count)                                                                         \
	do {                                                                                       \
		snprintf(what, sizeof what, "%s: d %s", name, label);                              \
		cmp(what, dw->mem + off, want + off, count, 2e-5, 1e-6);                           \
		off += (count);                                                                    \
	} while (0)
	PCMP("wte.weight", (size_t)c->vocab_size * C);
	PCMP("wpe.weight", (size_t)c->n_ctx * C);
	for (int l = 0; l < c->n_layer; l++)
		for (int k = 0; k < 12; k++) {
			char lab[64];
			snprintf(lab, sizeof lab, "h.%d.%s", l, per_layer[k]);
			PCMP(lab, sizes[k]);
		}
	PCMP("ln_f.weight", C);
	PCMP("ln_f.bias", C);
#undef PCMP
	CHECK(off == dw->n_params);
}

static void compare_case(const ref_case *rc, const char *mdir, const char *gold)
{
	circ_error e = {{0}};
	circ_model *m = circ_model_open(mdir, NULL, &e);
	circ_st *g = circ_st_open(gold, &e);
	circ_run *r = NULL;
	circ_run_opts ro;
	circ_fwd f;
	circ_bwd b = {0};
	circ_weights dw;
	delta_ctx dc = {0};
	const circ_st_tensor *tok, *drecv, *reads;
	int B = rc->B, T = rc->T, C = rc->c.n_embd, V = rc->c.vocab_size, L = rc->c.n_layer,
	    H = rc->c.n_head;
	size_t per = (size_t)B * T * C, N;
	char what[128];

	CHECK_MSG(m && g, e);
	if (!m || !g)
		goto out;
	tok = circ_st_find(g, "tokens");
	drecv = circ_st_find(g, "delta_recv");
	reads = circ_st_find(g, "reads");
	N = reads->shape[0];
	circ_run_opts_default(&ro);
	ro.backward = 1;
	ro.acdc_convention = rc->acdc;
	r = circ_run_new(m, B, T, &ro, &e);
	CHECK_MSG(r, e);
	if (!r)
		goto out;
	dc.k = (int)drecv->shape[0];
	dc.recv = drecv->data;
	dc.deltas = circ_st_find(g, "deltas")->data;
	dc.per = per;
	circ_fwd_init(&f);
	f.tokens = tok->data;
	f.B = B;
	f.T = T;
	f.read = !strcmp(rc->read, "last")  ? CIRC_READ_LAST
		 : !strcmp(rc->read, "all") ? CIRC_READ_ALL
					    : CIRC_READ_LIST;
	f.n_read = (int)N;
	f.reads = (const circ_read *)reads->data;
	f.hook = delta_hook;
	f.hook_ctx = &dc;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	int nr;
	const float *logits = circ_run_logits(r, &nr);
	CHECK(nr == (int)N);
	const float *gl = tensor_f32(g, "logits", N * V);
	if (gl) {
		snprintf(what, sizeof what, "%s: logits", rc->name);
		double abs_err = cmp(what, logits, gl, N * V, 2e-6, 1e-3);
		if (abs_err > 1e-4) {
			fprintf(stderr, "%s: logits max abs error %.3g > 1e-4\n", rc->name,
				abs_err);
			failures++;
		}
	}
	const float *gn = tensor_f32(g, "nodes", (size_t)circ_model_n_up(m) * per);
	for (int u = 0; gn && u < circ_model_n_up(m); u++) {
		snprintf(what, sizeof what, "%s: node %d output", rc->name, u);
		cmp(what, circ_run_node_out(r, u), gn + (size_t)u * per, per, 2e-6, 1e-3);
	}
	const float *ga = tensor_f32(g, "attn", (size_t)L * B * H * T * T);
	for (int l = 0; ga && l < L; l++) {
		snprintf(what, sizeof what, "%s: attention of layer %d", rc->name, l);
		cmp(what, circ_run_attn(r, l), ga + (size_t)l * B * H * T * T,
		    (size_t)B * H * T * T, 2e-6, 1e-3);
	}
	b.dlogits = tensor_f32(g, "dlogits", N * V);
	circ_weights_alloc(&dw, &rc->c);
	b.dweights = &dw;
	CHECK_MSG(b.dlogits && circ_backward(r, &b, &e) == 0, e);
	compare_params(rc->name, &rc->c, &dw, tensor_f32(g, "param_grad", dw.n_params));
	circ_weights_free(&dw);
	const float *gr = tensor_f32(g, "recv_grad", (size_t)circ_model_n_recv(m) * per);
	for (int k = 0; gr && k < circ_model_n_recv(m); k++) {
		snprintf(what, sizeof what, "%s: receiver %d gradient", rc->name, k);
		cmp(what, circ_run_recv_grad(r, k), gr + (size_t)k * per, per, 2e-5, 1e-6);
	}
	const float *gg = tensor_f32(g, "node_grad", (size_t)circ_model_n_up(m) * per);
	for (int u = 0; gg && u < circ_model_n_up(m); u++) {
		snprintf(what, sizeof what, "%s: node %d gradient", rc->name, u);
		cmp(what, circ_run_node_grad(r, u), gg + (size_t)u * per, per, 2e-5, 1e-6);
	}
out:
	circ_run_free(r);
	circ_st_close(g);
	circ_model_free(m);
}

static void compare_metrics(const char *gold)
{
	circ_error e = {{0}};
	circ_st *g = circ_st_open(gold, &e);
	CHECK_MSG(g, e);
	if (!g)
		return;
	const float *lg = circ_st_find(g, "logits")->data, *cl = circ_st_find(g, "clean")->data;
	const int32_t *good = circ_st_find(g, "good")->data, *bad = circ_st_find(g, "bad")->data;
	const int32_t *ng = circ_st_find(g, "ngood")->data, *nb = circ_st_find(g, "nbad")->data;
	const float *vals = circ_st_find(g, "values")->data,
		    *grads = circ_st_find(g, "grads")->data;
	int n = (int)circ_st_find(g, "logits")->shape[0],
	    V = (int)circ_st_find(g, "logits")->shape[1];
	float *grad = circ_xcalloc((size_t)V, sizeof *grad),
	      *clp = circ_xcalloc((size_t)V, sizeof *clp);
	double *p = circ_xcalloc((size_t)V, sizeof *p);
	for (int i = 0; i < n; i++) {
		const float *z = lg + (size_t)i * V;
		double v[5];
		circ_metric_log_softmax_row(clp, cl + (size_t)i * V, V);
		for (int j = 0; j < 5; j++) {
			switch (j) {
			case 0:
				v[j] = circ_metric_logit_diff(z, V, good + 3 * i, ng[i],
							      bad + 3 * i, nb[i], 1, grad);
				break;
			case 1:
				v[j] = circ_metric_prob_diff(z, V, good + 3 * i, ng[i], bad + 3 * i,
							     nb[i], 1, p, grad);
				break;
			case 2: v[j] = circ_metric_kl(z, V, clp, 1, p, grad); break;
			case 3:
				v[j] = circ_metric_logprob(z, V, good + 3 * i, 1, 1, NULL, grad);
				break;
			default: v[j] = circ_metric_top1(z, V, good[3 * i], grad); break;
			}
			if (fabs(v[j] - vals[i * 5 + j]) > 1e-5 * (1 + fabs(vals[i * 5 + j]))) {
				fprintf(stderr, "metric %d row %d: %.9g vs torch %.9g\n", j, i,
					v[j], vals[i * 5 + j]);
				failures++;
			}
			char what[64];
			snprintf(what, sizeof what, "metric %d row %d gradient", j, i);
			cmp(what, grad, grads + ((size_t)i * 5 + j) * V, (size_t)V, 1e-5, 1e-3);
		}
	}
	/* top-k against a sort */
	int32_t ids[5];
	double probs[5];
	CHECK(circ_metric_topk(lg, V, 5, ids, probs) == 5);
	for (int i = 1; i < 5; i++)
		CHECK(lg[ids[i - 1]] >= lg[ids[i]] && probs[i - 1] >= probs[i]);
	CHECK(ids[0] == circ_metric_argmax(lg, V));
	for (int v = 0; v < V; v++) {
		int in = 0;
		for (int i = 0; i < 5; i++)
			in |= ids[i] == v;
		if (!in)
			CHECK(lg[v] <= lg[ids[4]]);
	}
	int32_t badid = V;
	CHECK(isnan(circ_metric_logprob(lg, V, &badid, 1, 1, NULL, NULL)));
	CHECK(isnan(circ_metric_logit_diff(lg, V, &badid, 1, good, 1, 1, NULL)));
	free(p);
	free(grad);
	free(clp);
	circ_st_close(g);
}

static void test_reference(void)
{
	const char *root = getenv("CIRC_ROOT");
	char script[512], cases[512], cmd[2048];
	FILE *f;
	ref_case rc[7];
	int n = 0;
	circ_error e = {{0}};
	if (getenv("CIRC_SKIP_TORCH")) {
		fprintf(stderr, "test_model: CIRC_SKIP_TORCH set: PyTorch comparisons skipped\n");
		return;
	}
	snprintf(script, sizeof script, "%s/tests/ref/gpt2_ref.py", root ? root : ".");
	rc[n] = (ref_case){
	    "l2h4 f32 last", small_config(2, 4, 32, 50, 16), "F32", 3, 7, "last", 0, 0, 11};
	n++;
	rc[n] = (ref_case){
	    "l2h4 f32 all deltas", small_config(2, 4, 32, 50, 16), "F32", 3, 7, "all", 9, 0, 12};
	n++;
	rc[n] = (ref_case){"l3h2 bf16 gelu list acdc",
			   small_config(3, 2, 24, 41, 8),
			   "BF16",
			   2,
			   5,
			   "list",
			   5,
			   1,
			   13};
	rc[n].c.n_inner = 40;
	rc[n].c.act = CIRC_ACT_GELU;
	n++;
	rc[n] =
	    (ref_case){"l1h1 f16 T1", small_config(1, 1, 16, 23, 4), "F16", 1, 1, "last", 1, 0, 14};
	n++;
	rc[n] = (ref_case){
	    "l4h3 f32 T16 eps", small_config(4, 3, 48, 64, 20), "F32", 2, 16, "all", 12, 0, 15};
	rc[n].c.layer_norm_epsilon = 1e-3;
	n++;
	rc[n] = (ref_case){
	    "l2h8 f32 wide", small_config(2, 8, 128, 97, 12), "F32", 4, 12, "last", 3, 1, 16};
	n++;
	/* a vocabulary large enough (V C floats >= 4 MB) for the few-rows
	 * unembedding kernel (circ_gemm_bt_set) */
	rc[n] = (ref_case){"l1h2 f32 large vocab",
			   small_config(1, 2, 64, 16400, 8),
			   "F32",
			   3,
			   5,
			   "last",
			   0,
			   0,
			   17};
	n++;

	snprintf(cases, sizeof cases, "%s/cases.json", tmp);
	f = fopen(cases, "w");
	fprintf(f, "[\n");
	for (int i = 0; i < n; i++) {
		char dir[300];
		snprintf(dir, sizeof dir, "%s/ref%d", tmp, i);
		if (circ_model_write_random(dir, &rc[i].c, (uint64_t)rc[i].seed, rc[i].dtype, &e) <
		    0) {
			fprintf(stderr, "write_random: %s\n", e.msg);
			failures++;
		}
		fprintf(f,
			"{\"model\":\"%s\",\"out\":\"%s/gold%d.safetensors\",\"seed\":%d,\"B\":%d,"
			"\"T\":%d,\"read\":\"%s\",\"n_deltas\":%d,\"acdc\":%s},\n",
			dir, tmp, i, rc[i].seed, rc[i].B, rc[i].T, rc[i].read, rc[i].n_deltas,
			rc[i].acdc ? "true" : "false");
	}
	fprintf(f, "{\"metrics\":\"%s/metrics.safetensors\",\"seed\":5}\n]\n", tmp);
	fclose(f);
	snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s'", script, cases);
	if (system(cmd) != 0) {
		fprintf(stderr,
			"test_model: the PyTorch reference failed (%s); set CIRC_SKIP_TORCH=1 "
			"to skip it\n",
			cmd);
		failures++;
		return;
	}
	for (int i = 0; i < n; i++) {
		char dir[300], gold[300];
		snprintf(dir, sizeof dir, "%s/ref%d", tmp, i);
		snprintf(gold, sizeof gold, "%s/gold%d.safetensors", tmp, i);
		compare_case(&rc[i], dir, gold);
	}
	compare_metrics(path2(tmp, "metrics.safetensors"));
}

/* ============================================================ part 2: finite differences */

#define FD_EPS 1e-3f

typedef struct fd_ctx {
	int recv; /* receiver to perturb, or -1 */
	size_t idx;
	float eps;
	int n_recv_all; /* perturb all receivers in [lo, hi) */
	int lo, hi;
} fd_ctx;

static int fd_hook(void *v, circ_run *r, int s, circ_error *e)
{
	fd_ctx *c = v;
	const circ_model *m = circ_run_model(r);
	(void)e;
	for (int k = c->lo; k < c->hi; k++)
		if (circ_recv_stage(m, k) == s)
			circ_run_delta(r, k)[c->idx] += c->eps;
	return 0;
}

/* The metric: logprob of token 3 at the last position of sequence 0 plus
 * logit diff on sequence 1 (two rows, two metrics). */
static double fd_metric(circ_run *r, float *dl)
{
	int n, V = circ_model_config(circ_run_model(r))->vocab_size;
	const float *lg = circ_run_logits(r, &n);
	int32_t a = 3, w = 5;
	double v = circ_metric_logprob(lg, V, &a, 1, 1, NULL, dl);
	v += circ_metric_logit_diff(lg + V, V, &a, 1, &w, 1, 1, dl ? dl + V : NULL);
	return v;
}

static void test_fd(void)
{
	circ_config c = small_config(2, 2, 8, 11, 6);
	circ_error e = {{0}};
	char dir[300];
	circ_model *m;
	circ_run *r;
	circ_run_opts ro;
	circ_fwd f;
	circ_bwd b = {0};
	int32_t tokens[2 * 5] = {1, 4, 2, 9, 0, 3, 3, 7, 10, 5};
	float dl[2 * 11];
	fd_ctx fc = {0};
	circ_rng rng;
	c.act = CIRC_ACT_GELU;
	snprintf(dir, sizeof dir, "%s/fd", tmp);
	CHECK_MSG(circ_model_write_random(dir, &c, 99, "F32", &e) == 0, e);
	m = circ_model_open(dir, NULL, &e);
	CHECK_MSG(m, e);
	if (!m)
		return;
	circ_run_opts_default(&ro);
	ro.backward = 1;
	ro.reference = 1;
	r = circ_run_new(m, 2, 5, &ro, &e);
	circ_fwd_init(&f);
	f.tokens = tokens;
	f.B = 2;
	f.T = 5;
	f.hook = fd_hook;
	f.hook_ctx = &fc;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	fd_metric(r, dl);
	b.dlogits = dl;
	CHECK_MSG(circ_backward(r, &b, &e) == 0, e);
	int R = circ_model_n_recv(m), U = circ_model_n_up(m);
	size_t per = 2 * 5 * 8;
	float *rg = circ_xcalloc((size_t)R * per, sizeof *rg),
	      *ng = circ_xcalloc((size_t)U * per, sizeof *ng);
	for (int k = 0; k < R; k++)
		memcpy(rg + k * per, circ_run_recv_grad(r, k), per * sizeof *rg);
	for (int u = 0; u < U; u++)
		memcpy(ng + u * per, circ_run_node_grad(r, u), per * sizeof *ng);
	circ_rng_seed(&rng, 3);
	int bad = 0;
	/* receivers: perturb one input element */
	for (int k = 0; k < R; k++)
		for (int rep = 0; rep < 4; rep++) {
			size_t idx = circ_rng_below(&rng, per);
			double v[2];
			for (int sgn = 0; sgn < 2; sgn++) {
				fc = (fd_ctx){k, idx, sgn ? -FD_EPS : FD_EPS, 0, k, k + 1};
				CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
				v[sgn] = fd_metric(r, NULL);
			}
			double fd = (v[0] - v[1]) / (2 * FD_EPS), an = rg[k * per + idx];
			if (fabs(fd - an) > 2e-3 * (fabs(fd) + 0.05)) {
				if (bad++ < 5)
					fprintf(stderr,
						"fd receiver %d elem %zu: fd %.6g, backward %.6g\n",
						k, idx, fd, an);
				failures++;
			}
		}
	/* nodes: perturb every receiver downstream of the node (same element) */
	for (int u = 0; u < U; u++)
		for (int rep = 0; rep < 4; rep++) {
			size_t idx = circ_rng_below(&rng, per);
			int s = circ_node_stage(m, u), lo = R;
			double v[2];
			for (int k = 0; k < R; k++)
				if (circ_recv_stage(m, k) > s) {
					lo = k;
					break;
				}
			for (int sgn = 0; sgn < 2; sgn++) {
				fc = (fd_ctx){-1, idx, sgn ? -FD_EPS : FD_EPS, 0, lo, R};
				CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
				v[sgn] = fd_metric(r, NULL);
			}
			double fd = (v[0] - v[1]) / (2 * FD_EPS), an = ng[u * per + idx];
			if (fabs(fd - an) > 2e-3 * (fabs(fd) + 0.05)) {
				if (bad++ < 10)
					fprintf(stderr,
						"fd node %d elem %zu: fd %.6g, backward %.6g\n", u,
						idx, fd, an);
				failures++;
			}
		}
	free(rg);
	free(ng);
	circ_run_free(r);
	circ_model_free(m);

	/* parameters: a writable copy of the model (copy = 1 lays the weights
	 * out as circ_weights_alloc does, so element i of the parameter vector
	 * is wte[i] of the model and dw.mem[i] of the gradient) */
	{
		circ_model_opts mo;
		circ_weights dw;
		circ_model_opts_default(&mo);
		mo.copy = 1;
		m = circ_model_open(dir, &mo, &e);
		CHECK_MSG(m, e);
		if (!m)
			return;
		r = circ_run_new(m, 2, 5, &ro, &e);
		fc = (fd_ctx){0};
		CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
		fd_metric(r, dl);
		circ_weights_alloc(&dw, &c);
		b.dweights = &dw;
		CHECK_MSG(circ_backward(r, &b, &e) == 0, e);
		float *pv = (float *)(uintptr_t)circ_model_weights(m)->wte;
		CHECK(circ_model_weights(m)->lnf_b + c.n_embd == pv + dw.n_params);
		for (int rep = 0; rep < 300; rep++) {
			size_t idx = circ_rng_below(&rng, dw.n_params);
			float save = pv[idx];
			double v[2];
			for (int sgn = 0; sgn < 2; sgn++) {
				pv[idx] = save + (sgn ? -FD_EPS : FD_EPS);
				CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
				v[sgn] = fd_metric(r, NULL);
			}
			pv[idx] = save;
			double fd = (v[0] - v[1]) / (2 * FD_EPS), an = dw.mem[idx];
			if (fabs(fd - an) > 2e-3 * (fabs(fd) + 0.05)) {
				if (bad++ < 15)
					fprintf(stderr,
						"fd parameter %zu: fd %.6g, backward %.6g\n", idx,
						fd, an);
				failures++;
			}
		}
		circ_weights_free(&dw);
		circ_run_free(r);
		circ_model_free(m);
	}
}

/* ============================================================ part 3: consistency */

typedef struct patch_ctx {
	const float *ref; /* (U, B, T, C) reference node outputs */
	size_t per;
	int all_edges;
	int some; /* patch only the receivers k with k % 3 != 1 */
} patch_ctx;

/* Patches every edge: each receiver's delta = sum over upstream u before it
 * of (ref_u - cur_u). With p->some, only receivers k with k % 3 != 1, so
 * that a layer has patched and unpatched q/k/v receivers side by side. */
static int patch_hook(void *v, circ_run *r, int s, circ_error *e)
{
	patch_ctx *p = v;
	const circ_model *m = circ_run_model(r);
	(void)e;
	for (int k = 0; k < circ_model_n_recv(m); k++) {
		if (circ_recv_stage(m, k) != s || (p->some && k % 3 == 1))
			continue;
		float *d = circ_run_delta(r, k);
		for (int u = 0; u < circ_model_n_up(m); u++) {
			if (circ_node_stage(m, u) >= s)
				continue;
			const float *cur = circ_run_node_out(r, u),
				    *ref = p->ref + (size_t)u * p->per;
			for (size_t i = 0; i < p->per; i++)
				d[i] += ref[i] - cur[i];
		}
	}
	return 0;
}

typedef struct grad_sink {
	float *store; /* (R, per) */
	size_t per;
} grad_sink;

static int bwd_sink(void *v, circ_run *r, int s, circ_error *e)
{
	grad_sink *g = v;
	const circ_model *m = circ_run_model(r);
	for (int k = 0; k < circ_model_n_recv(m); k++)
		if (circ_recv_stage(m, k) == s) {
			const float *p = circ_run_recv_grad(r, k);
			if (!p)
				return circ_errorf(e, "receiver %d has no gradient at its stage",
						   k);
			memcpy(g->store + (size_t)k * g->per, p, g->per * sizeof(float));
		}
	return 0;
}

/* A random F32 model written under tmp/name and opened, and n clean and n
 * corrupted token ids below V drawn from rng seeded with tseed (left for
 * the caller to go on with). NULL (failure counted) if it cannot be made. */
static circ_model *random_model_pair(const char *name, const circ_config *c, uint64_t seed,
				     uint64_t tseed, circ_rng *rng, int n, int V, int32_t *clean,
				     int32_t *corrupt)
{
	circ_error e = {{0}};
	char dir[300];
	circ_model *m;
	snprintf(dir, sizeof dir, "%s/%s", tmp, name);
	CHECK_MSG(circ_model_write_random(dir, c, seed, "F32", &e) == 0, e);
	m = circ_model_open(dir, NULL, &e);
	CHECK_MSG(m, e);
	circ_rng_seed(rng, tseed);
	for (int i = 0; i < n; i++) {
		clean[i] = (int32_t)circ_rng_below(rng, (uint64_t)V);
		corrupt[i] = (int32_t)circ_rng_below(rng, (uint64_t)V);
	}
	return m;
}

/* f set up for a B x T batch read at every position. */
static void fwd_all_rows(circ_fwd *f, int B, int T)
{
	circ_fwd_init(f);
	f->B = B;
	f->T = T;
	f->read = CIRC_READ_ALL;
}

/* A run (options ro) that has run the corrupt tokens, their node outputs
 * copied to ref (U, per); f set up for the whole batch. NULL on error. */
static circ_run *run_with_ref(circ_model *m, const circ_run_opts *ro, int B, int T,
			      const int32_t *corrupt, float *ref, size_t per, circ_fwd *f)
{
	circ_error e = {{0}};
	circ_run *r = circ_run_new(m, B, T, ro, &e);
	CHECK_MSG(r, e);
	if (!r)
		return NULL;
	fwd_all_rows(f, B, T);
	f->tokens = corrupt;
	CHECK_MSG(circ_forward(r, f, &e) == 0, e);
	for (int u = 0; u < circ_model_n_up(m); u++)
		memcpy(ref + u * per, circ_run_node_out(r, u), per * sizeof *ref);
	return r;
}

/* Deltas given as sums of rows (circ_run_delta_sum, circ_run_input_sum)
 * against the same deltas written out (patch_hook): every form (the plain
 * sum, base minus rows, the input itself as a sum, a sum then more added
 * through circ_run_delta and as a sum), on q/k/v, MLP and
 * logits receivers, formed in the model's blocks (no backward) or stored at
 * once (a backward run), at 1 and 2 threads. */
typedef struct sum_ctx {
	const float *ref;
	size_t per;
	float *diff; /* (U, per) ref_u - cur_u */
	float *base; /* (R, per) */
} sum_ctx;

static int sum_hook(void *v, circ_run *r, int s, circ_error *e)
{
	sum_ctx *p = v;
	const circ_model *m = circ_run_model(r);
	int U = circ_model_n_up(m), nu = 0;
	const float *rows[64];
	(void)e;
	for (int u = 0; u < U; u++) {
		const float *cur = circ_run_node_out(r, u), *ref = p->ref + (size_t)u * p->per;
		if (circ_node_stage(m, u) >= s)
			continue;
		for (size_t i = 0; i < p->per; i++)
			p->diff[(size_t)u * p->per + i] = ref[i] - cur[i];
		rows[nu++] = p->diff + (size_t)u * p->per;
	}
	for (int k = 0; k < circ_model_n_recv(m); k++) {
		float *b = p->base + (size_t)k * p->per;
		if (circ_recv_stage(m, k) != s || k % 3 == 1)
			continue;
		switch (k % 4) {
		case 0: /* the plain sum */
			CHECK(circ_run_delta_sum(r, k, NULL, 1, nu, rows) == 0);
			break;
		case 1:	  /* base = all rows + the odd ones, minus the odd ones */
		case 2: { /* the same as the input: the residual + that */
			const float *odd[64];
			const float *res = circ_run_resid(r, s);
			int no = 0;
			for (size_t i = 0; i < p->per; i++)
				b[i] = k % 4 == 2 ? res[i] : 0;
			for (int j = 0; j < nu; j++)
				for (size_t i = 0; i < p->per; i++)
					b[i] += rows[j][i] * (j % 2 ? 2.0f : 1.0f);
			for (int j = 1; j < nu; j += 2)
				odd[no++] = rows[j];
			if (k % 4 == 1) {
				CHECK(circ_run_delta_sum(r, k, b, -1, no, odd) == 0);
				break;
			}
			/* an input sum drops a delta set before */
			float *d = circ_run_delta(r, k);
			for (size_t i = 0; i < p->per; i++)
				d[i] = 1.0f;
			CHECK(circ_run_input_sum(r, k, NULL, -1, no, odd) == -1);
			CHECK(circ_run_input_sum(r, k, b, -1, no, odd) == 0);
			break;
		}
		default: { /* half as a sum, one row added to it as a stored delta,
			    * the rest onto that as twice the rest minus the rest */
			float *d;
			int h = nu / 2;
			CHECK(circ_run_delta_sum(r, k, NULL, 1, h, rows) == 0);
			d = circ_run_delta(r, k);
			for (size_t i = 0; i < p->per; i++) {
				d[i] += rows[h][i];
				b[i] = 0;
			}
			for (int j = h + 1; j < nu; j++)
				for (size_t i = 0; i < p->per; i++)
					b[i] += 2 * rows[j][i];
			CHECK(circ_run_delta_sum(r, k, b, -1, nu - h - 1, rows + h + 1) == 0);
		}
		}
	}
	/* a receiver below the stage, or a bad sign, is refused */
	CHECK(circ_run_delta_sum(r, 0, NULL, 1, 0, rows) == (s == 0 ? 0 : -1) ||
	      circ_recv_stage(m, 0) == s);
	CHECK(circ_run_delta_sum(r, circ_model_n_recv(m) - 1, NULL, 2, 0, rows) == -1);
	return 0;
}

static void test_delta_sum(void)
{
	circ_config c = small_config(2, 2, 128, 40, 10);
	circ_error e = {{0}};
	enum { B = 3, T = 7, V = 40 };
	int32_t clean[B * T], corrupt[B * T];
	circ_rng rng;
	circ_model *m = random_model_pair("dsum", &c, 21, 22, &rng, B * T, V, clean, corrupt);
	if (!m)
		return;
	int U = circ_model_n_up(m), R = circ_model_n_recv(m);
	size_t per = (size_t)B * T * (size_t)c.n_embd, nl = (size_t)B * T * V;
	float *ref = circ_xcalloc((size_t)U * per, sizeof *ref);
	float *want = circ_xcalloc(nl, sizeof *want);
	float *want_u = circ_xcalloc((size_t)U * per, sizeof *want_u);
	sum_ctx sc = {ref, per, circ_xcalloc((size_t)U * per, sizeof(float)),
		      circ_xcalloc((size_t)R * per, sizeof(float))};
	for (int mode = 0; mode < 4; mode++) {
		/* 0: patch_hook, reference kernels (the answer); 1, 2: sums, no
		 * backward, 1 and 2 threads; 3: sums in a backward run */
		circ_run_opts ro;
		circ_fwd f;
		circ_run *r, *r2;
		patch_ctx pc = {ref, per, 1, 1};
		circ_run_opts_default(&ro);
		ro.threads = mode == 2 ? 2 : 1;
		ro.reference = mode == 0;
		ro.backward = mode == 3;
		r = run_with_ref(m, &ro, B, T, corrupt, ref, per, &f);
		if (!r)
			break;
		/* noise on the reference outputs: no node's clean output meets
		 * its reference even when all its inputs are patched, so every
		 * term of every sum is a row of its own */
		circ_rng_seed(&rng, 23);
		for (size_t i = 0; i < (size_t)U * per; i++)
			ref[i] += 0.02f * (float)circ_rng_normal(&rng);
		f.tokens = clean;
		f.hook = mode ? sum_hook : patch_hook;
		f.hook_ctx = mode ? (void *)&sc : (void *)&pc;
		CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
		if (mode == 0) {
			memcpy(want, circ_run_logits(r, NULL), nl * sizeof *want);
			for (int u = 0; u < U; u++)
				memcpy(want_u + (size_t)u * per, circ_run_node_out(r, u),
				       per * sizeof *want_u);
		} else {
			char what[64];
			int q0 = circ_recv_qkv(m, 1, 0, 0);
			while (q0 % 3 == 1 || q0 % 4 == 3) /* one sum_hook left as a sum */
				q0++;
			snprintf(what, sizeof what, "delta sums, mode %d: logits", mode);
			cmp(what, circ_run_logits(r, NULL), want, nl, 1e-5, 1e-3);
			/* With every edge patched the logits see only corrupted
			 * inputs, whatever went on below: each receiver's delta is
			 * checked through the node it feeds. */
			for (int u = 0; u < U; u++) {
				snprintf(what, sizeof what, "delta sums, mode %d: node %d", mode,
					 u);
				cmp(what, circ_run_node_out(r, u), want_u + (size_t)u * per, per,
				    1e-5, 1e-5);
			}
			/* formed in the blocks: not stored, and no prefix to copy */
			CHECK((circ_run_get_delta(r, q0) != NULL) == (mode == 3));
			r2 = circ_run_new(m, B, T, &ro, &e);
			CHECK_MSG(r2, e);
			CHECK((circ_run_copy_prefix(r2, r, 2 * c.n_layer, &e) == 0) == (mode == 3));
			if (mode != 3)
				CHECK(strstr(e.msg, "sum of rows") != NULL);
			circ_run_free(r2);
		}
		circ_run_free(r);
	}
	free(sc.diff);
	free(sc.base);
	free(ref);
	free(want);
	free(want_u);
	circ_model_free(m);
}

/* Patched forwards and backwards (every q/k/v receiver patched, or some)
 * split over 1, 2 and 3 threads agree up to rounding with the reference
 * kernels, and a repeat at the same thread count gives the same bytes
 * (the q/k/v receivers run in row blocks over the pool). B*T = 21 rows:
 * blocks of unequal size. Heads 8 wide (OpenBLAS) and 64 wide (circ's
 * own kernel where the CPU has it, in blocks of 6 rows and a tail). */
static void test_patched_threads(int H, int C)
{
	circ_config c = small_config(2, H, C, 40, 10);
	circ_error e = {{0}};
	enum { B = 3, T = 7, V = 40 };
	int32_t clean[B * T], corrupt[B * T];
	circ_rng rng;
	circ_model *m = random_model_pair("pthreads", &c, 9, 11, &rng, B * T, V, clean, corrupt);
	if (!m)
		return;
	int U = circ_model_n_up(m), R = circ_model_n_recv(m);
	size_t per = (size_t)B * T * (size_t)C, nl = (size_t)B * T * V;
	float *ref = circ_xcalloc((size_t)U * per, sizeof *ref);
	float *dl = circ_xcalloc(nl, sizeof *dl);
	circ_weights dw;
	circ_weights_alloc(&dw, &c);
	for (size_t i = 0; i < nl; i++)
		dl[i] = (float)circ_rng_normal(&rng);
	for (int some = 0; some < 2; some++) {
		float *want_l = circ_xcalloc(nl, sizeof *want_l);
		float *want_g = circ_xcalloc((size_t)R * per, sizeof *want_g);
		float *first_l = circ_xcalloc(nl, sizeof *first_l);
		float *first_g = circ_xcalloc((size_t)R * per, sizeof *first_g);
		/* threads 0: the reference kernels (1 thread) */
		for (int th = 0; th <= 3; th++) {
			circ_run_opts ro;
			circ_fwd f;
			circ_bwd b = {0};
			patch_ctx pc = {ref, per, 1, some};
			circ_run *r;
			circ_run_opts_default(&ro);
			ro.backward = 1;
			ro.threads = th ? th : 1;
			ro.reference = th == 0;
			r = run_with_ref(m, &ro, B, T, corrupt, ref, per, &f);
			if (!r)
				break;
			f.tokens = clean;
			f.hook = patch_hook;
			f.hook_ctx = &pc;
			b.dlogits = dl;
			/* the reference run also asks for parameter gradients (the
			 * serial per-receiver backward): a check independent of the
			 * forward's row blocks */
			if (th == 0)
				b.dweights = &dw;
			/* five forwards: the weights are packed on the fourth use
			 * (the model is shared by the thread counts), which must
			 * change no byte */
			for (int rep = 0; rep < 5; rep++) {
				char what[96];
				CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
				CHECK_MSG(circ_backward(r, &b, &e) == 0, e);
				if (th == 0) {
					memcpy(want_l, circ_run_logits(r, NULL),
					       nl * sizeof(float));
					for (int k = 0; k < R; k++)
						memcpy(want_g + (size_t)k * per,
						       circ_run_recv_grad(r, k),
						       per * sizeof(float));
					break;
				}
				if (rep >= 1) {
					CHECK(!memcmp(first_l, circ_run_logits(r, NULL),
						      nl * sizeof(float)));
					for (int k = 0; k < R; k++)
						CHECK(!memcmp(first_g + (size_t)k * per,
							      circ_run_recv_grad(r, k),
							      per * sizeof(float)));
					continue;
				}
				snprintf(what, sizeof what, "patched (%s), %d threads: logits",
					 some ? "some" : "all", th);
				cmp(what, circ_run_logits(r, NULL), want_l, nl, 1e-5, 1e-3);
				for (int k = 0; k < R; k++) {
					snprintf(what, sizeof what,
						 "patched (%s), %d threads: receiver %d grad",
						 some ? "some" : "all", th, k);
					cmp(what, circ_run_recv_grad(r, k),
					    want_g + (size_t)k * per, per, 2e-5, 1e-6);
				}
				/* the repeats compare bytes with the first */
				memcpy(first_l, circ_run_logits(r, NULL), nl * sizeof(float));
				for (int k = 0; k < R; k++)
					memcpy(first_g + (size_t)k * per, circ_run_recv_grad(r, k),
					       per * sizeof(float));
			}
			circ_run_free(r);
		}
		free(want_l);
		free(want_g);
		free(first_l);
		free(first_g);
	}
	if (circ_gemm_pk_fast()) /* the repeats above ran packed too */
		CHECK(circ_model_packed_bytes(m) > 0);
	free(ref);
	free(dl);
	circ_weights_free(&dw);
	circ_model_free(m);
}

static void test_consistency(void)
{
	circ_config c = small_config(3, 4, 32, 40, 10);
	circ_error e = {{0}};
	circ_run_opts ro;
	circ_run *r, *r2, *r3;
	circ_fwd f;
	circ_bwd b = {0};
	enum { B = 3, T = 6 };
	int32_t clean[B * T], corrupt[B * T];
	circ_rng rng;
	circ_model *m = random_model_pair("cons", &c, 5, 8, &rng, B * T, 40, clean, corrupt);
	if (!m)
		return;
	int U = circ_model_n_up(m), R = circ_model_n_recv(m), V = 40;
	size_t per = (size_t)B * T * 32;
	circ_run_opts_default(&ro);
	ro.backward = 1;
	r = circ_run_new(m, B, T, &ro, &e);
	r2 = circ_run_new(m, B, T, &ro, &e);
	CHECK_MSG(r && r2, e);
	fwd_all_rows(&f, B, T);

	/* the corrupted run's node outputs and logits */
	f.tokens = corrupt;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	float *ref = circ_xcalloc((size_t)U * per, sizeof *ref);
	float *ref_logits = circ_xcalloc((size_t)B * T * V, sizeof *ref_logits);
	for (int u = 0; u < U; u++)
		memcpy(ref + u * per, circ_run_node_out(r, u), per * sizeof *ref);
	memcpy(ref_logits, circ_run_logits(r, NULL), (size_t)B * T * V * sizeof(float));

	/* clean run + its gradients */
	f.tokens = clean;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	float *dl = circ_xcalloc((size_t)B * T * V, sizeof *dl);
	for (int i = 0; i < B * T * V; i++)
		dl[i] = (float)circ_rng_normal(&rng);
	b.dlogits = dl;
	CHECK_MSG(circ_backward(r, &b, &e) == 0, e);
	/* node gradient = sum of downstream receivers' gradients */
	for (int u = 0; u < U; u++) {
		float *sum = circ_xcalloc(per, sizeof *sum);
		int s = circ_node_stage(m, u);
		for (int k = 0; k < R; k++)
			if (circ_recv_stage(m, k) > s)
				circ_vadd(sum, circ_run_recv_grad(r, k), per);
		char what[64];
		snprintf(what, sizeof what, "node %d grad vs sum of receivers", u);
		cmp(what, circ_run_node_grad(r, u), sum, per, 1e-5, 1e-6);
		free(sum);
	}

	/* patching every edge gives the corrupted logits */
	{
		patch_ctx pc = {ref, per, 1};
		f.hook = patch_hook;
		f.hook_ctx = &pc;
		CHECK_MSG(circ_forward(r2, &f, &e) == 0, e);
		cmp("all edges patched vs corrupted run", circ_run_logits(r2, NULL), ref_logits,
		    (size_t)B * T * V, 2e-5, 1e-3);
		/* the backward of a patched run runs (deltas held constant) */
		CHECK_MSG(circ_backward(r2, &b, &e) == 0, e);
		f.hook = NULL;
	}

	/* fresh clean forward on r2: identical to r (same code, same inputs) */
	CHECK_MSG(circ_forward(r2, &f, &e) == 0, e);
	CHECK(!memcmp(circ_run_logits(r2, NULL), circ_run_logits(r, NULL), (size_t)B * T * V * 4));

	/* keep_nodes 0 and 2 threads: same logits (up to rounding) */
	{
		circ_run_opts o2 = ro;
		o2.keep_nodes = 0;
		o2.threads = 2;
		r3 = circ_run_new(m, B, T, &o2, &e);
		CHECK_MSG(r3 && circ_forward(r3, &f, &e) == 0, e);
		cmp("keep_nodes 0, 2 threads", circ_run_logits(r3, NULL), circ_run_logits(r, NULL),
		    (size_t)B * T * V, 1e-5, 1e-3);
		CHECK(circ_run_node_out(r3, 1) == NULL && circ_run_node_out(r3, 0) != NULL);
		/* fused backward (no receiver gradients wanted) gives the same node grads */
		circ_run_free(r3);
		o2.keep_nodes = 1;
		o2.keep_recv_grads = 0;
		r3 = circ_run_new(m, B, T, &o2, &e);
		CHECK_MSG(r3 && circ_forward(r3, &f, &e) == 0 && circ_backward(r3, &b, &e) == 0, e);
		for (int u = 0; u < U; u++)
			cmp("fused backward node grad", circ_run_node_grad(r3, u),
			    circ_run_node_grad(r, u), per, 1e-5, 1e-6);
		CHECK(circ_run_recv_grad(r3, circ_recv_mlp(m, 1)) ==
		      NULL); /* not the last stage's */
		/* ... and a backward hook sees every receiver's gradient at its stage */
		grad_sink gs = {circ_xcalloc((size_t)R * per, sizeof(float)), per};
		circ_bwd b2 = b;
		b2.hook = bwd_sink;
		b2.hook_ctx = &gs;
		CHECK_MSG(circ_backward(r3, &b2, &e) == 0, e);
		for (int k = 0; k < R; k++)
			cmp("hook receiver grad", gs.store + (size_t)k * per,
			    circ_run_recv_grad(r, k), per, 1e-6, 1e-6);
		free(gs.store);
		circ_run_free(r3);
	}

	/* resuming: copy the clean prefix below stage s, patch from s on */
	for (int s = 1; s <= 2 * c.n_layer; s += 2) {
		patch_ctx pc = {ref, per, 1};
		circ_fwd fp = f;
		/* full patched forward for comparison */
		fp.hook = patch_hook;
		fp.hook_ctx = &pc;
		r3 = circ_run_new(m, B, T, &ro, &e);
		CHECK_MSG(circ_run_copy_prefix(r3, r, s, &e) == 0, e);
		fp.start_stage = s;
		CHECK_MSG(circ_forward(r3, &fp, &e) == 0, e);
		/* expected: a run whose hook patches only stages >= s */
		float *want = circ_xcalloc((size_t)B * T * V, sizeof *want);
		{
			circ_run *r4 = circ_run_new(m, B, T, &ro, &e);
			CHECK_MSG(circ_forward(r4, &f, &e) == 0, e); /* clean */
			fp.start_stage = s;
			CHECK_MSG(circ_forward(r4, &fp, &e) == 0, e); /* resume on itself */
			memcpy(want, circ_run_logits(r4, NULL), (size_t)B * T * V * 4);
			circ_run_free(r4);
		}
		CHECK(!memcmp(circ_run_logits(r3, NULL), want, (size_t)B * T * V * 4));
		/* resume errors: other tokens, no prefix */
		fp.tokens = corrupt;
		CHECK(circ_forward(r3, &fp, &e) < 0 && strstr(e.msg, "tokens differ"));
		free(want);
		circ_run_free(r3);
	}
	r3 = circ_run_new(m, B, T, &ro, &e);
	f.start_stage = 2;
	CHECK(circ_forward(r3, &f, &e) < 0 && strstr(e.msg, "cannot resume"));
	f.start_stage = 0;
	circ_run_free(r3);

	/* read-row modes agree */
	{
		circ_fwd fl = f;
		circ_read rows[2] = {{2, 3}, {0, T - 1}};
		fl.read = CIRC_READ_LAST;
		CHECK_MSG(circ_forward(r2, &fl, &e) == 0, e);
		for (int bb = 0; bb < B; bb++)
			cmp("last vs all", circ_run_logits(r2, NULL) + (size_t)bb * V,
			    circ_run_logits(r, NULL) + ((size_t)bb * T + T - 1) * V, (size_t)V,
			    1e-6, 1e-3);
		fl.read = CIRC_READ_LIST;
		fl.n_read = 2;
		fl.reads = rows;
		CHECK_MSG(circ_forward(r2, &fl, &e) == 0, e);
		cmp("list vs all", circ_run_logits(r2, NULL),
		    circ_run_logits(r, NULL) + (2 * T + 3) * V, (size_t)V, 1e-6, 1e-3);
		rows[1].t = T;
		CHECK(circ_forward(r2, &fl, &e) < 0 && strstr(e.msg, "outside the batch"));
		fl.read = CIRC_READ_NONE;
		CHECK_MSG(circ_forward(r2, &fl, &e) == 0, e);
		CHECK(circ_backward(r2, &b, &e) < 0 && strstr(e.msg, "no logits"));
	}
	/* bad inputs */
	{
		circ_fwd fb = f;
		int32_t bad[B * T];
		memcpy(bad, clean, sizeof bad);
		bad[4] = 40;
		fb.tokens = bad;
		CHECK(circ_forward(r2, &fb, &e) < 0 && strstr(e.msg, "token 40") &&
		      strstr(e.msg, "vocabulary (40 tokens)"));
		fb.tokens = clean;
		fb.T = T + 1;
		CHECK(circ_forward(r2, &fb, &e) < 0 && strstr(e.msg, "7 tokens"));
		CHECK(circ_run_new(m, 1, 11, &ro, &e) == NULL && strstr(e.msg, "context (10)"));
		circ_weights badw = {0}; /* not a circ_weights_alloc layout */
		circ_bwd bw = {dl, NULL, NULL, &badw};
		CHECK_MSG(circ_forward(r2, &f, &e) == 0, e);
		CHECK(circ_backward(r2, &bw, &e) < 0 && strstr(e.msg, "dweights"));
		circ_run_opts nob;
		circ_run_opts_default(&nob);
		r3 = circ_run_new(m, B, T, &nob, &e);
		CHECK_MSG(circ_forward(r3, &f, &e) == 0, e);
		CHECK(circ_backward(r3, &b, &e) < 0 && strstr(e.msg, "backward arena"));
		CHECK(circ_run_delta(r3, 0) == NULL); /* outside a hook */
		circ_run_free(r3);
	}
	/* input_embed equals the embedding lookup */
	{
		circ_fwd fe = f;
		float *emb = circ_xcalloc(per, sizeof *emb);
		memcpy(emb, circ_run_node_out(r, 0), per * sizeof *emb);
		fe.tokens = NULL;
		fe.input_embed = emb;
		CHECK_MSG(circ_forward(r2, &fe, &e) == 0, e);
		CHECK(!memcmp(circ_run_logits(r2, NULL), circ_run_logits(r, NULL),
			      (size_t)B * T * V * 4));
		free(emb);
	}
	free(ref);
	free(ref_logits);
	free(dl);
	circ_run_free(r);
	circ_run_free(r2);
	circ_model_free(m);
}

/* ============================================================ part 4: loading */

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

/* Copies the tensors of src into dir/model.safetensors after applying edit. */
typedef void (*edit_fn)(circ_st_tensor *t, int *n, void *scratch);

static void rewrite(const char *src_dir, const char *dir, edit_fn edit, void *scratch)
{
	circ_error e = {{0}};
	circ_st *f = circ_st_open(path2(src_dir, "model.safetensors"), &e);
	int n = circ_st_count(f);
	circ_st_tensor *t = circ_xcalloc((size_t)n + 4, sizeof *t);
	char cmd[700];
	mkdir(dir, 0777);
	snprintf(cmd, sizeof cmd, "cp '%s/config.json' '%s/config.json'", src_dir, dir);
	if (system(cmd) != 0)
		failures++;
	for (int i = 0; i < n; i++)
		t[i] = *circ_st_at(f, i);
	edit(t, &n, scratch);
	if (circ_st_write(path2(dir, "model.safetensors"), n, t, 0, NULL, &e) < 0) {
		fprintf(stderr, "rewrite: %s\n", e.msg);
		failures++;
	}
	free(t);
	circ_st_close(f);
}

static int find_t(circ_st_tensor *t, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(t[i].name, name))
			return i;
	return -1;
}

static void ed_drop(circ_st_tensor *t, int *n, void *s)
{
	int i = find_t(t, *n, "transformer.h.1.ln_2.bias");
	(void)s;
	t[i] = t[--*n];
}

static void ed_extra(circ_st_tensor *t, int *n, void *s)
{
	t[*n] = t[0];
	t[*n].name = "transformer.h.0.attn.rotary";
	++*n;
	(void)s;
}

static void ed_shape(circ_st_tensor *t, int *n, void *s)
{
	int i = find_t(t, *n, "transformer.h.0.attn.c_attn.weight");
	int64_t a = t[i].shape[0];
	(void)s;
	t[i].shape[0] = t[i].shape[1];
	t[i].shape[1] = a;
}

static void ed_dtype(circ_st_tensor *t, int *n, void *s)
{
	int i = find_t(t, *n, "transformer.ln_f.bias");
	(void)s;
	t[i].dtype = CIRC_I32;
}

static void ed_dup(circ_st_tensor *t, int *n, void *s)
{
	int i = find_t(t, *n, "transformer.wpe.weight");
	(void)s;
	t[*n] = t[i];
	t[*n].name = "wpe.weight";
	++*n;
}

/* Element `at` of tensor `name` set to v (a copy in s). In a model of
 * n_embd 64 and vocabulary 50 (tensors past 1024 elements): wte's element
 * 3000 infinite, c_fc's weight's element 1024 NaN. */
static void ed_late(circ_st_tensor *t, int *n, void *s, const char *name, size_t at, float v)
{
	int i = find_t(t, *n, name);
	float *copy = s;
	memcpy(copy, t[i].data, t[i].nbytes);
	copy[at] = v;
	t[i].data = copy;
}
static void ed_inf_wte(circ_st_tensor *t, int *n, void *s)
{
	ed_late(t, n, s, "transformer.wte.weight", 3000, -INFINITY);
}
static void ed_nan_fc(circ_st_tensor *t, int *n, void *s)
{
	ed_late(t, n, s, "transformer.h.0.mlp.c_fc.weight", 1024, NAN);
}

static void ed_nan(circ_st_tensor *t, int *n, void *s)
{
	ed_late(t, n, s, "transformer.h.1.mlp.c_fc.bias", 5, NAN);
}

/* Strip the prefix from half of the names, add the mask buffers and an
 * untied lm_head: all of which must load. */
static void ed_mixed(circ_st_tensor *t, int *n, void *s)
{
	static char names[64][64];
	int k = 0, nn = *n;
	float *buf = s;
	for (int i = 0; i < nn; i += 2)
		if (!strncmp(t[i].name, "transformer.", 12) && k < 64) {
			snprintf(names[k], 64, "%s", t[i].name + 12);
			t[i].name = names[k++];
		}
	int wte = find_t(t, nn, "transformer.wte.weight");
	if (wte < 0)
		wte = find_t(t, nn, "wte.weight");
	t[*n] = t[wte];
	t[*n].name = "lm_head.weight";
	memcpy(buf, t[wte].data, t[wte].nbytes);
	buf[0] += 1.0f; /* differs from wte: untied */
	t[*n].data = buf;
	++*n;
	t[*n] = (circ_st_tensor){"transformer.h.0.attn.bias", CIRC_F32, 4, {1, 1, 4, 4}, buf, 64};
	++*n;
	t[*n] = (circ_st_tensor){"h.1.attn.masked_bias", CIRC_F32, 0, {0}, buf, 4};
	++*n;
}

static void expect_open_fail(const char *dir, const char *w1, const char *w2)
{
	circ_error e = {{0}};
	circ_model *m = circ_model_open(dir, NULL, &e);
	if (m || !strstr(e.msg, w1) || (w2 && !strstr(e.msg, w2))) {
		fprintf(stderr, "open '%s': expected failure with '%s' / '%s', got: %s\n", dir, w1,
			w2 ? w2 : "", m ? "success" : e.msg);
		failures++;
	}
	circ_model_free(m);
}

static void test_loading(void)
{
	circ_config c = small_config(2, 2, 8, 13, 5);
	circ_error e = {{0}};
	char base[300], d[300];
	float *scratch = circ_xcalloc(4096, sizeof(float));
	circ_model *m, *m2;
	snprintf(base, sizeof base, "%s/base", tmp);
	CHECK_MSG(circ_model_write_random(base, &c, 1, "F32", &e) == 0, e);

	/* config errors: each names the file and the key */
	snprintf(d, sizeof d, "%s/cfg", tmp);
	mkdir(d, 0777);
	{
		char cmd[700];
		snprintf(cmd, sizeof cmd, "cp '%s/model.safetensors' '%s/'", base, d);
		CHECK(system(cmd) == 0);
	}
	struct {
		const char *text, *w1, *w2;
	} bad_cfg[] = {
	    {"{\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5}", "key 'n_layer'",
	     "missing"},
	    {"{\"n_layer\":2.0,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5}",
	     "key 'n_layer'", "integer"},
	    {"{\"n_layer\":2,\"n_head\":3,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5}",
	     "not a multiple", NULL},
	    {"{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13}", "key 'n_positions'",
	     "missing"},
	    {"{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5,"
	     "\"activation_function\":\"relu\"}",
	     "key 'activation_function'", "'relu'"},
	    {"{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5,\"layer_"
	     "norm_epsilon\":-1}",
	     "key 'layer_norm_epsilon'", NULL},
	    {"{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5,\"scale_"
	     "attn_by_inverse_layer_idx\":true}",
	     "key 'scale_attn_by_inverse_layer_idx'", "not supported"},
	    {"{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5,\"model_"
	     "type\":\"phi3\"}",
	     "key 'model_type'", NULL},
	    {"{\"n_layer\":2,", "bad JSON", NULL},
	    {"[]", "not a JSON object", NULL},
	    {"{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5,\"n_"
	     "inner\":\"x\"}",
	     "key 'n_inner'", NULL},
	};
	for (size_t i = 0; i < sizeof bad_cfg / sizeof *bad_cfg; i++) {
		write_text(path2(d, "config.json"), bad_cfg[i].text);
		expect_open_fail(d, "config.json'", bad_cfg[i].w1);
		if (bad_cfg[i].w2)
			expect_open_fail(d, bad_cfg[i].w1, bad_cfg[i].w2);
	}
	/* n_ctx instead of n_positions, n_inner null, defaults: loads */
	write_text(path2(d, "config.json"), "{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_"
					    "size\":13,\"n_ctx\":5,\"n_inner\":null}");
	m = circ_model_open(d, NULL, &e);
	CHECK_MSG(m && circ_model_config(m)->n_inner == 32 &&
		      circ_model_config(m)->act == CIRC_ACT_GELU_NEW &&
		      circ_model_config(m)->layer_norm_epsilon == 1e-5,
		  e);
	circ_model_free(m);
	expect_open_fail("/nonexistent-model", "'/nonexistent-model'", "not a model directory");
	write_text(path2(d, "config.json"),
		   "{\"n_layer\":2,\"n_head\":2,\"n_embd\":8,\"vocab_size\":13,\"n_positions\":5}");
	unlink(path2(d, "model.safetensors"));
	expect_open_fail(d, "model.safetensors'", NULL);

	/* tensor errors: each names the file and the tensor */
	snprintf(d, sizeof d, "%s/t1", tmp);
	rewrite(base, d, ed_drop, NULL);
	expect_open_fail(d, "model.safetensors'", "missing tensor 'h.1.ln_2.bias'");
	snprintf(d, sizeof d, "%s/t2", tmp);
	rewrite(base, d, ed_extra, NULL);
	expect_open_fail(d, "model.safetensors'",
			 "unexpected tensor 'transformer.h.0.attn.rotary'");
	snprintf(d, sizeof d, "%s/t3", tmp);
	rewrite(base, d, ed_shape, NULL);
	expect_open_fail(d, "tensor 'transformer.h.0.attn.c_attn.weight'",
			 "shape [24, 8], expected [8, 24]");
	snprintf(d, sizeof d, "%s/t4", tmp);
	rewrite(base, d, ed_dtype, NULL);
	expect_open_fail(d, "tensor 'transformer.ln_f.bias'", "dtype i32");
	snprintf(d, sizeof d, "%s/t5", tmp);
	rewrite(base, d, ed_dup, NULL);
	expect_open_fail(d, "'wpe.weight' appears twice", NULL);
	snprintf(d, sizeof d, "%s/t6", tmp);
	rewrite(base, d, ed_nan, scratch);
	expect_open_fail(d, "tensor 'transformer.h.1.mlp.c_fc.bias'", "element 5 is NaN");
	{ /* past the first 1024 elements, in the middle of a block and at one's start */
		circ_config cw = small_config(1, 2, 64, 50, 5);
		char wide[300], dw[300];
		float *big = circ_xcalloc(65536, sizeof *big);
		snprintf(wide, sizeof wide, "%s/wide", tmp);
		CHECK_MSG(circ_model_write_random(wide, &cw, 2, "F32", &e) == 0, e);
		snprintf(dw, sizeof dw, "%s/t6a", tmp);
		rewrite(wide, dw, ed_inf_wte, big);
		expect_open_fail(dw, "tensor 'transformer.wte.weight'", "element 3000 is infinite");
		snprintf(dw, sizeof dw, "%s/t6b", tmp);
		rewrite(wide, dw, ed_nan_fc, big);
		expect_open_fail(dw, "tensor 'transformer.h.0.mlp.c_fc.weight'",
				 "element 1024 is NaN");
		free(big);
	}
	{
		circ_model_opts mo;
		circ_model_opts_default(&mo);
		mo.allow_nonfinite = 1;
		m = circ_model_open(d, &mo, &e);
		CHECK_MSG(m != NULL, e);
		circ_model_free(m);
	}
	/* mixed prefixes, mask buffers, untied lm_head: loads, lm_head used */
	snprintf(d, sizeof d, "%s/t7", tmp);
	rewrite(base, d, ed_mixed, scratch);
	m = circ_model_open(d, NULL, &e);
	CHECK_MSG(m != NULL, e);
	if (m) {
		const circ_weights *w = circ_model_weights(m);
		CHECK(w->lm_head != w->wte && w->lm_head[0] == w->wte[0] + 1.0f);
		CHECK(circ_model_save(m, path2(tmp, "t7saved"), &e) == 0);
		m2 = circ_model_open(path2(tmp, "t7saved"), NULL, &e);
		CHECK_MSG(m2 && circ_model_weights(m2)->lm_head != circ_model_weights(m2)->wte, e);
		circ_model_free(m2);
	}
	circ_model_free(m);

	/* digests: stable, lazily computed, differ with the weights, and an
	 * in-memory model hashes as its saved directory */
	m = circ_model_open(base, NULL, &e);
	const char *d1 = circ_model_digest(m, &e);
	CHECK(d1 && !strncmp(d1, "sha256:", 7) && strlen(d1) == 71);
	CHECK(circ_model_digest(m, &e) == d1);
	{
		char cmdline[700];
		snprintf(cmdline, sizeof cmdline, "%s/b2", tmp);
		CHECK(circ_model_save(m, cmdline, &e) == 0);
		m2 = circ_model_open(cmdline, NULL, &e);
		CHECK(m2 && !strcmp(circ_model_digest(m2, &e), d1));
		circ_model_free(m2);
		snprintf(cmdline, sizeof cmdline, "%s/b3", tmp);
		CHECK(circ_model_write_random(cmdline, &c, 2, "F32", &e) == 0);
		m2 = circ_model_open(cmdline, NULL, &e);
		CHECK(m2 && strcmp(circ_model_digest(m2, &e), d1));
		circ_model_free(m2);
	}
	{
		circ_weights w;
		circ_model_opts mo;
		circ_model_opts_default(&mo);
		mo.copy = 1;
		m2 = circ_model_open(base, &mo, &e); /* owned, writable copy */
		circ_weights_alloc(&w, &c);
		memcpy(w.mem, circ_model_weights(m2)->wte, w.n_params * sizeof(float));
		CHECK(circ_model_weights(m2)->wpe == circ_model_weights(m2)->wte + 13 * 8);
		circ_model *mm = circ_model_new(&c, &w, &e);
		CHECK_MSG(mm && !strcmp(circ_model_digest(mm, &e), d1), e);
		CHECK(w.mem == NULL);
		circ_model_free(mm);
		circ_model_free(m2);
	}
	/* F16 files load converted, BF16 too; the parameters count */
	CHECK(circ_config_n_params(&c) ==
	      13 * 8 + 5 * 8 + 2 * (16 + 8 * 24 + 24 + 64 + 8 + 16 + 8 * 32 + 32 + 32 * 8 + 8) +
		  16);
	circ_model_free(m);
	/* numbering */
	circ_config c2 = small_config(12, 12, 24, 10, 4);
	CHECK(circ_model_write_random(path2(tmp, "gpt2shape"), &c2, 1, "F16", &e) == 0);
	m = circ_model_open(path2(tmp, "gpt2shape"), NULL, &e);
	CHECK_MSG(m, e);
	if (m) {
		CHECK(circ_model_n_up(m) == 157 && circ_model_n_recv(m) == 445);
		CHECK(circ_node_head(m, 0, 0) == 1 && circ_node_mlp(m, 0) == 13 &&
		      circ_node_head(m, 1, 0) == 14);
		CHECK(circ_recv_qkv(m, 0, 1, 2) == 5 && circ_recv_mlp(m, 0) == 36 &&
		      circ_recv_logits(m) == 444);
		CHECK(circ_recv_stage(m, 36) == 1 && circ_recv_stage(m, 37) == 2 &&
		      circ_recv_stage(m, 444) == 24);
		CHECK(circ_node_stage(m, 0) == -1 && circ_node_stage(m, 13) == 1 &&
		      circ_node_stage(m, 14) == 2);
	}
	circ_model_free(m);
	free(scratch);
}

/* Packed weights (circ_model_packed_bytes) change no bit: full-logit
 * forwards of a model opened from its file (packed on the fourth: main
 * sets CIRC_PACK_AT=4) at 1, 2 and 3 threads, five each, and at 2 threads
 * with CIRC_PACK_AT=0 (never packed), give the bytes of the same model
 * opened with copy (never packed) at 1 thread. Widths that are not whole 64-column panels (3C =
 * 288, V = 1000) and 36 rows (tiles of 6 and a tail). */
static void test_packed(void)
{
	circ_config c = small_config(2, 3, 96, 1000, 16);
	circ_error e = {{0}};
	enum { B = 4, T = 9, V = 1000 };
	int32_t clean[B * T], corrupt[B * T];
	circ_rng rng;
	circ_model_opts mo;
	circ_model *m = random_model_pair("packed", &c, 5, 6, &rng, B * T, V, clean, corrupt);
	circ_model *mc;
	size_t nl = (size_t)B * T * V;
	float *want = circ_xmalloc(nl * sizeof *want);
	if (!m)
		return;
	circ_model_free(m);
	circ_model_opts_default(&mo);
	mo.copy = 1;
	mc = circ_model_open(path2(tmp, "packed"), &mo, &e);
	CHECK_MSG(mc, e);
	if (!mc)
		return;
	for (int th = 0; th <= 4; th++) {
		circ_run_opts ro;
		circ_fwd f;
		circ_run *r;
		circ_model *mm;
		if (th == 4)
			setenv("CIRC_PACK_AT", "0", 1);
		mm = th ? circ_model_open(path2(tmp, "packed"), NULL, &e) : mc;
		if (th == 4)
			setenv("CIRC_PACK_AT", "4", 1);
		CHECK_MSG(mm, e);
		if (!mm)
			break;
		circ_run_opts_default(&ro);
		ro.threads = th == 4 ? 2 : th ? th : 1;
		ro.keep_nodes = 0;
		r = circ_run_new(mm, B, T, &ro, &e);
		CHECK_MSG(r, e);
		fwd_all_rows(&f, B, T);
		f.tokens = clean;
		for (int rep = 0; rep < (th ? 5 : 1) && r; rep++) {
			CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
			if (!th)
				memcpy(want, circ_run_logits(r, NULL), nl * sizeof *want);
			else if (memcmp(want, circ_run_logits(r, NULL), nl * sizeof *want)) {
				fprintf(stderr,
					"packed: threads %d, forward %d: not the bytes of "
					"the model opened with copy\n",
					th, rep + 1);
				failures++;
			}
		}
		if (th == 1)
			check_one_layer("gpt2", mm, clean, B, T);
		if (th && th < 4 && circ_gemm_pk_fast())
			CHECK(circ_model_packed_bytes(mm) > 0);
		else
			CHECK(circ_model_packed_bytes(mm) == 0);
		circ_run_free(r);
		if (th)
			circ_model_free(mm);
	}
	circ_model_free(mc);
	free(want);
}

int main(void)
{
	/* packed weights from the fourth forward, so the tests' few forwards
	 * run both ways (test_packed, test_patched_threads) */
	setenv("CIRC_PACK_AT", "4", 1);
	snprintf(tmp, sizeof tmp, "/tmp/circ-test-model-XXXXXX");
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 1;
	}
	test_loading();
	test_consistency();
	test_delta_sum();
	test_patched_threads(4, 32);
	test_patched_threads(2, 128);
	test_packed();
	test_fd();
	test_reference();
	if (!failures) {
		char cmd[300];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
		if (system(cmd) != 0)
			failures++;
	} else {
		fprintf(stderr, "test_model: %d failures (files kept in %s)\n", failures, tmp);
	}
	if (!failures)
		printf("test_model: ok\n");
	return failures != 0;
}
