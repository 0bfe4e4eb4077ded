/*
 * test_family_run: the forward and backward of every family of
 * tests/data/families (tiny random models made by tests/ref/families.py).
 *
 * Forward: logits at every position of the reference's sequences against
 * reference.safetensors (an independent float64 PyTorch forward of the
 * stored weights): max |circ - ref| <= 2e-4 * (1 + max |ref|).
 *
 * Backward: every receiver's gradient of a metric sum_i w_i . logits_i
 * (fixed random w, every position) against grads.safetensors, made by
 * tests/ref/family_recv.py (float64 PyTorch autograd through a forward in
 * which each receiver reads its own input), for the default (ungrouped)
 * topology and, where the family has grouped-query attention, the grouped
 * one. Node outputs: the residual after every
 * stage is the sum of the node outputs before it (and the attention output
 * biases), which patching needs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "safetensors.h"
#include "topology.h"
#include "util.h"
#include "check.h"
#include "test_one_layer.h"

static char root[4096];

static const char *fams[] = {"gpt_neox", "llama", "llama-tied", "mistral",     "qwen2",
			     "qwen3",	 "gemma", "gemma2",	"gemma3_text", "olmo2"};

/* Receiver gradients of metric = sum w . logits (every position) against
 * grads.safetensors (tests/ref/family_recv.py): max |circ - ref| over every
 * receiver <= 1e-4 * (1 + max |ref|). */
static void check_grads(const char *dir, circ_model *m, const char *key)
{
	char path[4700];
	circ_error e;
	circ_st *gf;
	snprintf(path, sizeof path, "%s/grads.safetensors", dir);
	gf = circ_st_open(path, &e);
	CHECK_MSG(gf != NULL, e);
	if (!gf)
		return;
	const circ_st_tensor *tt = circ_st_find(gf, "tokens"), *wt = circ_st_find(gf, "w"),
			     *gt = circ_st_find(gf, key);
	CHECK(tt && wt && gt);
	if (!tt || !wt || !gt) {
		circ_st_close(gf);
		return;
	}
	int T = (int)tt->shape[1], V = circ_model_config(m)->vocab_size,
	    C = circ_model_config(m)->n_embd, R = circ_model_n_recv(m);
	int32_t *tok = malloc((size_t)T * sizeof *tok);
	float *w = malloc((size_t)T * V * sizeof *w),
	      *want = malloc((size_t)R * T * C * sizeof *want);
	circ_run_opts o;
	circ_run *r;
	circ_fwd f;
	circ_bwd b;
	double worst = 0, big = 0;
	CHECK(gt->shape[0] == R);
	memcpy(tok, tt->data, (size_t)T * sizeof *tok);
	circ_st_to_f32(w, wt->data, wt->dtype, (size_t)T * V);
	circ_st_to_f32(want, gt->data, gt->dtype, (size_t)R * T * C);
	circ_run_opts_default(&o);
	o.backward = 1;
	r = circ_run_new(m, 1, T, &o, &e);
	circ_fwd_init(&f);
	f.tokens = tok;
	f.B = 1;
	f.T = T;
	f.read = CIRC_READ_ALL;
	CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
	memset(&b, 0, sizeof b);
	b.dlogits = w;
	CHECK_MSG(circ_backward(r, &b, &e) == 0, e);
	for (int rv = 0; rv < R && gt->shape[0] == R; rv++) {
		const float *g = circ_run_recv_grad(r, rv);
		double wr = 0;
		for (size_t i = 0; i < (size_t)T * C; i++) {
			double d = fabs((double)g[i] - want[(size_t)rv * T * C + i]);
			wr = d > wr ? d : wr;
			big = fabs(want[(size_t)rv * T * C + i]) > big
				  ? fabs(want[(size_t)rv * T * C + i])
				  : big;
		}
		if (wr > worst)
			worst = wr;
	}
	printf("  %-12s %s: max |circ - ref| %.3g (max |ref| %.3g)\n",
	       circ_model_type_name(circ_model_config(m)->model_type), key, worst, big);
	if (!(worst <= 1e-4 * (1 + big))) {
		fprintf(stderr, "%s: %s differ from the reference by %g\n", dir, key, worst);
		failures++;
	}
	circ_run_free(r);
	circ_st_close(gf);
	free(tok);
	free(w);
	free(want);
}

/* The residual after each stage is the residual before it plus its nodes'
 * outputs (constants aside: checked on the difference of two runs). */
static void check_sums(circ_model *m, const int32_t *tok, int B, int T)
{
	const circ_topology *t = circ_model_topology(m);
	int C = circ_model_config(m)->n_embd;
	size_t n = (size_t)B * T * C;
	circ_error e;
	circ_run *a = circ_run_new(m, B, T, NULL, &e), *b = circ_run_new(m, B, T, NULL, &e);
	int32_t *tok2 = malloc((size_t)B * T * sizeof *tok2);
	circ_fwd f;
	double worst = 0, big = 0;
	for (int i = 0; i < B * T; i++)
		tok2[i] = (tok[i] * 7 + 3) % circ_model_config(m)->vocab_size;
	circ_fwd_init(&f);
	f.B = B;
	f.T = T;
	f.tokens = tok;
	CHECK_MSG(circ_forward(a, &f, &e) == 0, e);
	f.tokens = tok2;
	CHECK_MSG(circ_forward(b, &f, &e) == 0, e);
	for (int s = 1; s < t->n_stage; s++) {
		const float *ra = circ_run_resid(a, s), *rb = circ_run_resid(b, s);
		for (size_t i = 0; i < n; i++) {
			double d = (double)ra[i] - rb[i], sum = 0;
			for (int u = 0; u < t->stage[s].n_in; u++)
				sum +=
				    (double)circ_run_node_out(a, u)[i] - circ_run_node_out(b, u)[i];
			worst = fabs(d - sum) > worst ? fabs(d - sum) : worst;
			big = fabs(d) > big ? fabs(d) : big;
		}
	}
	CHECK(worst <= 1e-4 * (1 + big));
	circ_run_free(a);
	circ_run_free(b);
	free(tok2);
}

static void check_family(const char *name)
{
	char dir[4600], ref[4700];
	circ_error e;
	circ_model_opts mo;
	circ_model *m;
	circ_st *rf;
	snprintf(dir, sizeof dir, "%s/tests/data/families/%s", root, name);
	snprintf(ref, sizeof ref, "%s/reference.safetensors", dir);
	circ_model_opts_default(&mo);
	m = circ_model_open(dir, &mo, &e);
	CHECK_MSG(m != NULL, e);
	rf = circ_st_open(ref, &e);
	CHECK_MSG(rf != NULL, e);
	if (!m || !rf)
		goto out;
	{
		const circ_st_tensor *tt = circ_st_find(rf, "tokens"),
				     *lt = circ_st_find(rf, "logits");
		int S = (int)tt->shape[0], T = (int)tt->shape[1],
		    V = circ_model_config(m)->vocab_size;
		int32_t *tok = malloc((size_t)S * T * sizeof *tok);
		float *want = malloc((size_t)S * T * V * sizeof *want);
		circ_run *r = circ_run_new(m, S, T, NULL, &e);
		circ_fwd f;
		int nr;
		double worst = 0, big = 0;
		memcpy(tok, tt->data, (size_t)S * T * sizeof *tok);
		circ_st_to_f32(want, lt->data, lt->dtype, (size_t)S * T * V);
		circ_fwd_init(&f);
		f.tokens = tok;
		f.B = S;
		f.T = T;
		f.read = CIRC_READ_ALL;
		CHECK_MSG(circ_forward(r, &f, &e) == 0, e);
		const float *lg = circ_run_logits(r, &nr);
		CHECK(nr == S * T);
		for (size_t i = 0; i < (size_t)S * T * V; i++) {
			double d = fabs((double)lg[i] - want[i]);
			worst = d > worst ? d : worst;
			big = fabs(want[i]) > big ? fabs(want[i]) : big;
		}
		printf("  %-12s logits: max |circ - ref| %.3g (max |ref| %.3g)\n", name, worst,
		       big);
		if (!(worst <= 2e-4 * (1 + big))) {
			fprintf(stderr, "%s: logits differ from the reference by %g\n", name,
				worst);
			failures++;
		}
		circ_run_free(r);
		check_one_layer(name, m, tok, S, T);
		check_sums(m, tok, S < 2 ? S : 2, T);
		check_grads(dir, m, "grads");
		if (circ_config_kv_heads(circ_model_config(m)) < circ_model_config(m)->n_head) {
			circ_model *mg;
			mo.gqa_grouped = 1;
			mg = circ_model_open(dir, &mo, &e);
			CHECK_MSG(mg != NULL, e);
			if (mg) {
				CHECK(circ_model_n_recv(mg) < circ_model_n_recv(m));
				check_grads(dir, mg, "grads_grouped");
			}
			circ_model_free(mg);
		}
		free(tok);
		free(want);
	}
out:
	circ_st_close(rf);
	circ_model_free(m);
}

int main(void)
{
	const char *rt = getenv("CIRC_ROOT");
	snprintf(root, sizeof root, "%s", rt ? rt : ".");
	for (size_t i = 0; i < sizeof fams / sizeof *fams; i++)
		check_family(fams[i]);
	if (failures)
		fprintf(stderr, "test_family_run: %d failures\n", failures);
	return failures != 0;
}
