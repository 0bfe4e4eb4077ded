/*
 * dict_train_bench: training steps of lib/dict_train on random data
 * (bench/dict_train.sh runs it beside bench/dict_train_torch.py).
 *
 * Usage: dict_train_bench ARCH D_IN D_SAE BATCH THREADS STEPS
 * One warm-up step, then STEPS timed steps on one fixed batch of normal(0,
 * 1) rows; prints "ARCH tokens_per_s wall_per_step_s L0". ARCH relu-sparse
 * is relu with b_enc started at -0.233, so that about 1% of the latents
 * fire (a trained SAE's L0 of a few hundred) as bench/dict_train_torch.py
 * does it too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dict_train.h"

int main(int argc, char **argv)
{
	circ_dtrain_opts o;
	circ_dtrain_arch a;
	circ_error e;
	circ_rng r;
	int sparse = argc == 7 && !strcmp(argv[1], "relu-sparse");
	if (argc != 7 || (circ_dtrain_arch_parse(sparse ? "relu" : argv[1], &a) < 0)) {
		fprintf(stderr, "usage: dict_train_bench ARCH D_IN D_SAE BATCH THREADS STEPS\n");
		return 2;
	}
	circ_dtrain_opts_default(&o, a);
	o.d_in = o.d_out = atoi(argv[2]);
	o.d_sae = atoi(argv[3]);
	o.batch = atoi(argv[4]);
	o.threads = atoi(argv[5]);
	int steps = atoi(argv[6]);
	o.steps = steps + 1;
	circ_dtrain *t = circ_dtrain_new(&o, &e);
	if (!t) {
		fprintf(stderr, "dict_train_bench: %s\n", e.msg);
		return 1;
	}
	if (sparse) {
		circ_dtrain_view v;
		circ_dtrain_views(t, circ_dtrain_params(t), &v);
		for (int i = 0; i < o.d_sae; i++)
			v.b_enc[i] = -0.233f;
	}
	size_t n = (size_t)o.batch * o.d_in;
	float *x = circ_xmalloc_aligned(n * sizeof(float));
	circ_rng_seed(&r, 1);
	for (size_t i = 0; i < n; i++)
		x[i] = (float)circ_rng_normal(&r);
	circ_dtrain_stats st;
	if (circ_dtrain_step(t, x, NULL, o.batch, &st, &e) < 0) {
		fprintf(stderr, "dict_train_bench: %s\n", e.msg);
		return 1;
	}
	double t0 = circ_now();
	for (int s = 0; s < steps; s++)
		if (circ_dtrain_step(t, x, NULL, o.batch, &st, &e) < 0) {
			fprintf(stderr, "dict_train_bench: %s\n", e.msg);
			return 1;
		}
	double dt = (circ_now() - t0) / steps;
	printf("%s %.1f %.4f %.1f\n", argv[1], o.batch / dt, dt, st.l0);
	free(x);
	circ_dtrain_free(t);
	return 0;
}
