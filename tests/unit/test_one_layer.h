/*
 * test_one_layer.h: check_one_layer(), shared by test_model (GPT-2) and
 * test_family_run (every family). Include after check.h.
 */
#ifndef CIRC_TEST_ONE_LAYER_H
#define CIRC_TEST_ONE_LAYER_H

#include "topology.h"

/* one_layer runs (circ-forward's): the logits at every position, plain, with
 * a delta on one receiver of a middle stage and resumed at that stage, are
 * the bytes of a run that keeps every layer; the arena is smaller; the
 * backward and the per-layer accessors are refused. */
typedef struct one_layer_hook {
	int stage, recv;
} one_layer_hook;

static int one_layer_delta(void *ctx, circ_run *r, int stage, circ_error *e)
{
	const one_layer_hook *h = ctx;
	float *d;
	size_t n;
	(void)e;
	if (stage != h->stage)
		return 0;
	d = circ_run_delta(r, h->recv);
	n = (size_t)circ_run_b(r) * circ_run_t(r) * circ_model_config(circ_run_model(r))->n_embd;
	for (size_t i = 0; i < n; i++)
		d[i] = 0.01f * (float)((i * 7) % 13) - 0.06f;
	return 0;
}

static void check_one_layer(const char *name, circ_model *m, const int32_t *tok, int B, int T)
{
	const circ_topology *t = circ_model_topology(m);
	int V = circ_model_config(m)->vocab_size, nr[2];
	size_t nl = (size_t)B * T * V;
	circ_error e;
	circ_run_opts o[2];
	circ_run *r[2];
	circ_fwd f;
	/* a stage in the middle with receivers: its first one gets a delta */
	int s = t->n_stage / 2;
	while (s > 1 && !t->stage[s].n_recv)
		s--;
	one_layer_hook h = {s, t->stage[s].first_recv};
	for (int k = 0; k < 2; k++) {
		circ_run_opts_default(&o[k]);
		o[k].keep_nodes = 0;
		o[k].one_layer = k;
		r[k] = circ_run_new(m, B, T, &o[k], &e);
		CHECK_MSG(r[k], e);
		if (!r[k])
			return;
	}
	circ_fwd_init(&f);
	f.tokens = tok;
	f.B = B;
	f.T = T;
	f.read = CIRC_READ_ALL;
	for (int pass = 0; pass < 3; pass++) {
		const float *lg[2];
		if (pass) {
			f.hook = one_layer_delta;
			f.hook_ctx = &h;
			f.start_stage = pass == 2 ? s : 0;
		}
		for (int k = 0; k < 2; k++) {
			CHECK_MSG(circ_forward(r[k], &f, &e) == 0, e);
			lg[k] = circ_run_logits(r[k], &nr[k]);
		}
		CHECK(nr[0] == B * T && nr[1] == B * T);
		if (memcmp(lg[0], lg[1], nl * sizeof(float))) {
			fprintf(stderr,
				"%s: one_layer: logits (pass %d) not the bytes of a full run\n",
				name, pass);
			failures++;
		}
		/* the last layer's attention (and z) is the one still held */
		int L = circ_model_config(m)->n_layer, H = circ_model_config(m)->n_head;
		size_t na = (size_t)B * H * T * T,
		       nz = (size_t)B * T * H * circ_config_head_dim(circ_model_config(m));
		const float *a1 = circ_run_attn(r[1], L - 1), *z1 = circ_run_attn_z(r[1], L - 1),
			    *z0 = circ_run_attn_z(r[0], L - 1);
		CHECK(a1 && !memcmp(a1, circ_run_attn(r[0], L - 1), na * sizeof(float)));
		CHECK((z0 == NULL) == (z1 == NULL));
		CHECK(!z1 || !memcmp(z0, z1, nz * sizeof(float)));
		CHECK(L < 2 || circ_run_attn(r[1], L - 2) == NULL);
	}
	CHECK(circ_run_arena_bytes(r[1]) < circ_run_arena_bytes(r[0]));
	CHECK(circ_run_attn(r[0], 0) != NULL);
	circ_run_free(r[0]);
	circ_run_free(r[1]);
	o[1].backward = 1;
	r[1] = circ_run_new(m, B, T, &o[1], &e);
	CHECK(r[1] == NULL && strstr(e.msg, "no backward"));
	circ_run_free(r[1]);
}

#endif
