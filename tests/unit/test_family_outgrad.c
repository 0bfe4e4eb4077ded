/*
 * test_family_outgrad: per-node output gradients (circ_bwd.out_hook) in the
 * backward of the families of tests/data/families, and Edge Pruning's mask
 * gradients on them.
 *
 *  - every node handed the residual gradient it would get anyway gives the
 *    receiver gradients of the plain backward: max |diff| <= 1e-5 of the
 *    largest (per-head GEMMs, and with post norms the heads' own path
 *    through the norm, in place of one GEMM after the norm's backward);
 *  - every node handed its own gradient g_u[t, c] = sin(0.37 u + 0.91 t +
 *    0.13 c + 0.5) gives the receiver gradients of tests/ref/family_recv.py
 *    outgrad (float64 PyTorch autograd of sum_u <g_u, out_u> over each
 *    stage's nodes at the stage's receivers): max |circ - ref| <= 1e-4 (1 +
 *    max |ref|); the logits' receiver as the plain backward's (it has no
 *    nodes above it). CIRC_SKIP_TORCH=1 skips this part;
 *  - Edge Pruning's d loss / d z on llama, gpt_neox (parallel blocks) and
 *    gemma2 (norms after the blocks) against central finite differences of
 *    its loss (h = 1e-2, float runs: |error| <= 5e-4 max |dz| + 1e-5), as
 *    tests/unit/test_edgeprune.c checks GPT-2's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "edgeprune.h"
#include "rng.h"
#include "safetensors.h"
#include "test_batch.h"
#include "topology.h"

static char root[4096];
static char tmp[] = "/tmp/circ-test-family-outgrad-XXXXXX";

typedef struct og_ctx {
	int mode; /* 1: residual copies, 2: the formula's gradients */
	const circ_topology *t;
	float *bufs; /* (U, n) */
	size_t n;    /* T*C */
	int T, C;
	float *grads; /* (R, n) receiver gradients */
} og_ctx;

static int keep(void *ctx, circ_run *r, int s, circ_error *e)
{
	og_ctx *h = ctx;
	const circ_topo_stage *st = &h->t->stage[s];
	(void)e;
	for (int mr = st->first_recv; mr < st->first_recv + st->n_recv; mr++)
		memcpy(h->grads + (size_t)mr * h->n, circ_run_recv_grad(r, mr),
		       h->n * sizeof(float));
	return 0;
}

static int give(void *ctx, circ_run *r, int s, int nn, const float **ng, circ_error *e)
{
	og_ctx *h = ctx;
	const circ_topo_stage *st = &h->t->stage[s];
	(void)e;
	CHECK(nn == st->n_node);
	for (int j = 0; j < nn; j++) {
		int u = st->first_node + j;
		float *b = h->bufs + (size_t)u * h->n;
		if (h->mode == 1)
			memcpy(b, circ_run_resid_grad(r, s + 1), h->n * sizeof(float));
		else
			for (int t = 0; t < h->T; t++)
				for (int c = 0; c < h->C; c++)
					b[(size_t)t * h->C + c] =
					    (float)sin(0.37 * u + 0.91 * t + 0.13 * c + 0.5);
		ng[j] = b;
	}
	return 0;
}

static void backward(circ_run *r, const float *w, og_ctx *h)
{
	circ_error e;
	circ_bwd b = {0};
	b.dlogits = w;
	b.hook = keep;
	b.hook_ctx = h;
	b.out_hook = h->mode ? give : NULL;
	CHECK_MSG(circ_backward(r, &b, &e) == 0, e);
}

/* max |a - b| over receivers [r0, r1) into *d, max |b| into *big. */
static void compare(const float *a, const float *b, size_t n, int r0, int r1, double *d,
		    double *big)
{
	for (size_t i = (size_t)r0 * n; i < (size_t)r1 * n; i++) {
		*d = fmax(*d, fabs((double)a[i] - b[i]));
		*big = fmax(*big, fabs((double)b[i]));
	}
}

static void check_outgrad(const char *name, int grouped)
{
	char dir[4600], path[4700], cmd[14400], ref[4800];
	circ_error e;
	circ_model_opts mo;
	circ_model *m;
	circ_st *gf = NULL, *rf = NULL;
	circ_run_opts o;
	circ_run *r = NULL;
	circ_fwd f;
	og_ctx h[3];
	int T, V, C, R, U;
	float *w = NULL;
	int32_t *tok = NULL;
	double same = 0, big = 0, worst = 0, rbig = 0, lg = 0, lbig = 0;
	snprintf(dir, sizeof dir, "%s/tests/data/families/%s", root, name);
	snprintf(path, sizeof path, "%s/grads.safetensors", dir);
	circ_model_opts_default(&mo);
	mo.gqa_grouped = grouped;
	m = circ_model_open(dir, &mo, &e);
	CHECK_MSG(m != NULL, e);
	gf = m ? circ_st_open(path, &e) : NULL;
	CHECK_MSG(gf != NULL, e);
	if (!m || !gf)
		goto out;
	{
		const circ_st_tensor *tt = circ_st_find(gf, "tokens"), *wt = circ_st_find(gf, "w");
		T = (int)tt->shape[1];
		V = circ_model_config(m)->vocab_size;
		C = circ_model_config(m)->n_embd;
		R = circ_model_n_recv(m);
		U = circ_model_n_up(m);
		tok = circ_xmalloc((size_t)T * sizeof *tok);
		w = circ_xmalloc((size_t)T * V * sizeof *w);
		memcpy(tok, tt->data, (size_t)T * sizeof *tok);
		circ_st_to_f32(w, wt->data, wt->dtype, (size_t)T * V);
	}
	circ_run_opts_default(&o);
	o.backward = 1;
	r = circ_run_new(m, 1, T, &o, &e);
	CHECK_MSG(r != NULL, e);
	if (!r)
		goto out;
	circ_fwd_init(&f);
	f.tokens = tok;
	f.B = 1;
	f.T = T;
	f.read = CIRC_READ_ALL;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	for (int k = 0; k < 3; k++) {
		h[k] = (og_ctx){k, circ_model_topology(m), NULL, (size_t)T * C, T, C, NULL};
		h[k].bufs = circ_xmalloc((size_t)U * h[k].n * sizeof(float));
		h[k].grads = circ_xcalloc((size_t)R * h[k].n, sizeof(float));
		backward(r, w, &h[k]);
	}
	/* (a) the residual gradient handed back: the plain backward's */
	compare(h[1].grads, h[0].grads, h[0].n, 0, R, &same, &big);
	printf("  %-12s%s residual copies: max |diff| %.3g (max |grad| %.3g)\n", name,
	       grouped ? " grouped" : "", same, big);
	CHECK(big > 0 && same <= 1e-5 * big);
	/* (b) the formula's gradients against PyTorch */
	compare(h[2].grads, h[0].grads, h[0].n, R - 1, R, &lg, &lbig);
	CHECK(lg == 0);
	if (getenv("CIRC_SKIP_TORCH"))
		goto out;
	snprintf(ref, sizeof ref, "%s/%s%s.safetensors", tmp, name, grouped ? "-g" : "");
	snprintf(cmd, sizeof cmd,
		 "/usr/bin/python3 '%s/tests/ref/family_recv.py' outgrad '%s' '%s'%s", root, dir,
		 ref, grouped ? " grouped" : "");
	if (system(cmd) != 0) {
		fprintf(stderr, "test_family_outgrad: %s failed (CIRC_SKIP_TORCH=1 skips it)\n",
			cmd);
		failures++;
		goto out;
	}
	rf = circ_st_open(ref, &e);
	CHECK_MSG(rf != NULL, e);
	if (rf) {
		const circ_st_tensor *gt = circ_st_find(rf, "grads");
		float *want = circ_xmalloc((size_t)R * h[0].n * sizeof *want);
		CHECK(gt && gt->shape[0] == R && gt->shape[1] == T && gt->shape[2] == C);
		circ_st_to_f32(want, gt->data, gt->dtype, (size_t)R * h[0].n);
		compare(h[2].grads, want, h[0].n, 0, R - 1, &worst, &rbig);
		printf("  %-12s%s own gradients: max |circ - ref| %.3g (max |ref| %.3g)\n", name,
		       grouped ? " grouped" : "", worst, rbig);
		CHECK(rbig > 0);
		if (!(worst <= 1e-4 * (1 + rbig))) {
			fprintf(stderr, "%s: own output gradients: receivers off by %g\n", name,
				worst);
			failures++;
		}
		free(want);
	}
out:
	for (int k = 0; r && k < 3; k++) {
		free(h[k].bufs);
		free(h[k].grads);
	}
	circ_st_close(rf);
	circ_st_close(gf);
	circ_run_free(r);
	circ_model_free(m);
	free(tok);
	free(w);
}

/* Edge Pruning's mask gradient on family `name` (edge level) against
 * central finite differences of its loss. */
static void check_ep(const char *name)
{
	char dir[4600];
	circ_error e;
	circ_model *m;
	circ_graph *g = NULL;
	circ_patch_opts po = {CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 1, 3, 6, 1, 0, 1};
	circ_patcher *p = NULL;
	circ_edgeprune *ep = NULL;
	circ_batch *b = NULL;
	circ_ep_opts o;
	circ_rng rng;
	double loss, lp, lm, scale = 0, worst = 0, *dz = NULL;
	float *z = NULL;
	const float hh = 1e-2f;
	snprintf(dir, sizeof dir, "%s/tests/data/families/%s", root, name);
	m = circ_model_open(dir, NULL, &e);
	CHECK_MSG(m != NULL, e);
	if (!m)
		return;
	g = circ_graph_new_desc(&circ_model_topology(m)->d, CIRC_LEVEL_EDGE, &e);
	CHECK_MSG(g != NULL, e);
	b = make_batch(3, 6, circ_model_config(m)->vocab_size, 11);
	p = g ? circ_patcher_new(m, g, &po, &e) : NULL;
	CHECK_MSG(p && circ_patcher_load(p, b, &e) == 0, e);
	circ_ep_opts_default(&o);
	ep = p ? circ_ep_new(&p, 1, &o, &e) : NULL;
	CHECK_MSG(ep != NULL, e);
	if (!ep)
		goto out;
	z = circ_xmalloc((size_t)g->n_edges * sizeof *z);
	dz = circ_xmalloc((size_t)g->n_edges * sizeof *dz);
	circ_rng_seed(&rng, 5);
	for (int64_t i = 0; i < g->n_edges; i++)
		z[i] = (float)(0.2 + 0.6 * circ_rng_uniform(&rng));
	CHECK_MSG(circ_ep_loss_grad(ep, 0, z, &loss, dz, &e) == 0, e);
	for (int64_t i = 0; i < g->n_edges; i++)
		scale = fmax(scale, fabs(dz[i]));
	CHECK(scale > 0);
	for (int j = 0; j < 24; j++) {
		int64_t i = (int64_t)circ_rng_below(&rng, (uint64_t)g->n_edges);
		float z0 = z[i];
		z[i] = z0 + hh;
		CHECK(circ_ep_loss_grad(ep, 0, z, &lp, NULL, &e) == 0);
		z[i] = z0 - hh;
		CHECK(circ_ep_loss_grad(ep, 0, z, &lm, NULL, &e) == 0);
		z[i] = z0;
		worst = fmax(worst, fabs((lp - lm) / (2.0 * hh) - dz[i]));
	}
	printf("  %-12s edge pruning: max |dz - finite differences| %.3g (max |dz| %.3g)\n", name,
	       worst, scale);
	if (!(worst <= 5e-4 * scale + 1e-5)) {
		fprintf(stderr, "%s: edge pruning's mask gradient off by %g\n", name, worst);
		failures++;
	}
out:
	free(z);
	free(dz);
	circ_ep_free(ep);
	circ_patcher_free(p);
	circ_batch_free(b);
	circ_graph_free(g);
	circ_model_free(m);
}

int main(void)
{
	static const char *fams[] = {"gpt_neox", "llama", "llama-tied", "mistral",     "qwen2",
				     "qwen3",	 "gemma", "gemma2",	"gemma3_text", "olmo2"};
	const char *rt = getenv("CIRC_ROOT");
	snprintf(root, sizeof root, "%s", rt ? rt : ".");
	if (!mkdtemp(tmp))
		return 1;
	for (size_t i = 0; i < sizeof fams / sizeof *fams; i++)
		check_outgrad(fams[i], 0);
	check_outgrad("llama", 1);
	check_ep("llama");
	check_ep("gpt_neox");
	check_ep("gemma2");
	{
		char cmd[200];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
		if (system(cmd) != 0)
			failures++;
	}
	if (failures)
		fprintf(stderr, "test_family_outgrad: %d failures\n", failures);
	return failures != 0;
}
