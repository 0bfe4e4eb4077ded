/* test_trace: attribution graphs on a small random GPT-2 with random
 * transcoders (one layer left without one): each target's incoming edges
 * plus its bias equal its pre-activation (within 1e-4 relative, float32
 * against the exact linear identity), the graph is causal (no edge from a
 * later position or from a feature of the same or a later layer), the
 * batch size changes nothing (1e-5), and bad prompts are refused with a
 * message. The numbers themselves are checked against PyTorch in
 * tests/trace.bats (tests/ref/trace_ref.py). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "rng.h"
#include "trace.h"

static void normal(float *x, size_t n, double s, double mean, circ_rng *r)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(mean + s * circ_rng_normal(r));
}

static circ_model *make_model(void)
{
	circ_config c = {.n_layer = 3,
			 .n_head = 4,
			 .n_embd = 32,
			 .n_ctx = 12,
			 .vocab_size = 40,
			 .n_inner = 128,
			 .layer_norm_epsilon = 1e-5};
	circ_weights w;
	circ_error e;
	circ_rng r;
	circ_rng_seed(&r, 11);
	circ_weights_alloc(&w, &c);
	normal(w.mem, w.n_params, 0.2, 0, &r);
	for (int l = 0; l < c.n_layer; l++) {
		normal(w.layers[l].ln1_w, 32, 0.1, 1, &r);
		normal(w.layers[l].ln2_w, 32, 0.1, 1, &r);
	}
	normal(w.lnf_w, 32, 0.1, 1, &r);
	circ_model *m = circ_model_new(&c, &w, &e);
	CHECK_MSG(m, e);
	return m;
}

static circ_dict *make_tc(int layer, const char *in, circ_dict_arch a, uint64_t seed)
{
	circ_dict_cfg c;
	circ_error e;
	circ_dict_cfg_init(&c);
	c.arch = a;
	c.d_in = c.d_out = 32;
	c.d_sae = 64;
	c.k = a == CIRC_DICT_TOPK ? 6 : 0;
	c.transcoder = 1;
	snprintf(c.hook_name, sizeof c.hook_name, "blocks.%d.%s", layer, in);
	snprintf(c.hook_out, sizeof c.hook_out, "blocks.%d.hook_mlp_out", layer);
	circ_dict *d = circ_dict_new(&c, &e);
	CHECK_MSG(d, e);
	circ_rng r;
	circ_rng_seed(&r, seed);
	normal(d->mem, d->n_params, 0.2, 0, &r);
	if (d->threshold)
		for (int j = 0; j < 64; j++)
			d->threshold[j] = fabsf(d->threshold[j]);
	return d;
}

static void test_graph(void)
{
	circ_error e;
	circ_model *m = make_model();
	circ_dict *d0 = make_tc(0, "ln2.hook_normalized", CIRC_DICT_STANDARD, 1);
	circ_dict *d2 = make_tc(2, "hook_resid_mid", CIRC_DICT_TOPK, 2);
	circ_dict *dl[2] = {d0, d2};
	circ_dict_set set = {2, dl};
	const circ_dict *tc[3];
	CHECK_MSG(circ_trace_layers(m, &set, tc, &e) == 0, e);
	CHECK(tc[0] == d0 && tc[1] == NULL && tc[2] == d2);
	int32_t tok[7] = {3, 9, 27, 1, 30, 14, 6};
	circ_trace_opts o;
	circ_trace_opts_default(&o);
	circ_trace_graph *g = circ_trace_build(m, tc, tok, 7, &o, &e);
	CHECK_MSG(g, e);
	if (!g)
		return;
	CHECK(g->n_err == 21 && g->n_input == 7 && g->n_logit >= 1 && g->n_feat > 0);
	double rel, abs_ = circ_trace_check(g, &rel);
	CHECK(rel < 1e-4);
	(void)abs_;
	int n = g->n, causal = 1, layer1 = 0;
	for (int i = 0; i < n; i++) {
		const circ_tnode *t = &g->nodes[i];
		layer1 |= t->kind == CIRC_TNODE_FEATURE && t->layer == 1;
		for (int j = 0; j < n; j++) {
			const circ_tnode *s = &g->nodes[j];
			float w = g->adj[(size_t)i * n + j];
			if (w == 0)
				continue;
			int tl = t->kind == CIRC_TNODE_LOGIT ? 3 : t->layer;
			if (s->pos > t->pos || (s->layer >= tl && s->kind != CIRC_TNODE_INPUT) ||
			    t->kind == CIRC_TNODE_ERROR || t->kind == CIRC_TNODE_INPUT)
				causal = 0;
		}
	}
	CHECK(causal);
	CHECK(!layer1); /* no transcoder at layer 1: only its error nodes */
	/* the batch size changes nothing */
	o.batch = 3;
	circ_trace_graph *g3 = circ_trace_build(m, tc, tok, 7, &o, &e);
	CHECK_MSG(g3, e);
	double diff = 0, big = 0;
	for (size_t k = 0; g3 && k < (size_t)n * n; k++) {
		diff = fmax(diff, fabs(g3->adj[k] - g->adj[k]));
		big = fmax(big, fabs(g->adj[k]));
	}
	CHECK(g3 && diff <= 1e-5 * big);
	/* pruning: thresholds checked, tokens and logits always kept */
	circ_trace_prune p;
	CHECK(circ_trace_prune_run(g, 1.5, 0.98, &p, &e) < 0 && strstr(e.msg, "node threshold"));
	CHECK_MSG(circ_trace_prune_run(g, 0.8, 0.98, &p, &e) == 0, e);
	for (int i = n - g->n_logit - g->n_input; i < n; i++)
		CHECK(p.node_keep[i]);
	circ_trace_prune_free(&p);
	/* bad prompts */
	CHECK(!circ_trace_build(m, tc, tok, 0, &o, &e) && strstr(e.msg, "empty prompt"));
	int32_t longp[13] = {0};
	CHECK(!circ_trace_build(m, tc, longp, 13, &o, &e) && strstr(e.msg, "longer than"));
	int32_t badt[2] = {1, 40};
	CHECK(!circ_trace_build(m, tc, badt, 2, &o, &e) && strstr(e.msg, "outside the vocabulary"));
	/* two transcoders for one layer, and one that is not a transcoder */
	circ_dict *dup = make_tc(0, "hook_resid_mid", CIRC_DICT_JUMPRELU, 3);
	circ_dict *dl2[2] = {d0, dup};
	circ_dict_set set2 = {2, dl2};
	CHECK(circ_trace_layers(m, &set2, tc, &e) < 0 && strstr(e.msg, "second transcoder"));
	circ_trace_graph_free(g);
	circ_trace_graph_free(g3);
	circ_dict_free(dup);
	circ_dict_free(d0);
	circ_dict_free(d2);
	circ_model_free(m);
}

int main(void)
{
	test_graph();
	return failures != 0;
}
