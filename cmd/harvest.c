/*
 * circ-harvest: run the model once on the clean and reference inputs and
 * keep, per example, what later stages need so that the runs are not
 * repeated: the reference outputs of every upstream node, their difference
 * from the clean outputs, and the loss gradient at every receiver (the
 * ingredients of EAP: circ-score --acts). Records stream out batch by batch:
 * memory does not grow with the number of examples, and runs split over
 * examples concatenate (`cat a.acts b.acts`).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attrib.h"
#include "circuit.h"
#include "cli/patchopt.h"
#include "cli/session.h"
#include "cli/dictrun.h"

enum {
	OPT_WHAT = CIRC_OPT_FIRST_TOOL,
	OPT_DICT,
};

static const circ_opt opts[] = {
    CIRC_PATCH_OPT_MODEL,
    {"what", OPT_WHAT, "LIST", "tensors per example: ref,diff,grad (default all three)"},
    {"dict", OPT_DICT, "DIR",
     "instead: each dictionary's feature activations per example, sparse (dict-acts)"},
    CIRC_PATCH_OPT_COMMON,
    {0},
};

static struct {
	circ_patch_cli pc;
	const char *dict;
	int want_ref, want_diff, want_grad;
} o = {.want_ref = 1, .want_diff = 1, .want_grad = 1};

static int handle(int key, const char *arg, void *ctx)
{
	switch (key) {
	case OPT_DICT: o.dict = arg; return 0;
	case OPT_WHAT: {
		const char *s = arg;
		o.want_ref = o.want_diff = o.want_grad = 0;
		while (*s) {
			size_t n = strcspn(s, ",");
			if (n == 3 && !strncmp(s, "ref", 3))
				o.want_ref = 1;
			else if (n == 4 && !strncmp(s, "diff", 4))
				o.want_diff = 1;
			else if (n == 4 && !strncmp(s, "grad", 4))
				o.want_grad = 1;
			else
				circ_usage_error("--what: unknown tensor '%.*s' (ref, diff, grad)",
						 (int)n, s);
			s += n + (s[n] == ',');
		}
		return 0;
	}
	}
	return circ_patch_cli_handle(&o.pc, key, arg) ? -1 : 0;
}

/* Exits 1 naming the example and field at the first NaN or infinity of x
 * (n) unless --allow-nonfinite. */
static void finite_or_die(circ_writer *w, const circ_reader *r, int64_t id, const char *field,
			  const float *x, size_t n)
{
	if (o.pc.allow_nonfinite)
		return;
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i])) {
			circ_writer_abort(w);
			circ_dief("%s: example %lld: '%s' element %zu is %s (the model's numbers "
				  "overflow; --allow-nonfinite lets it through)",
				  circ_reader_name(r), (long long)id, field, i,
				  isnan(x[i]) ? "nan" : "infinite");
		}
}

/* One example's record: its metrics and the tensors --what asks for, each
 * gathered from the batch's (U or R, B, T, C) rows into diff (U*T*C) first. */
static void pack_example(circ_session *s, const circ_batch *b, int bb, float *diff)
{
	const circ_config *c = s->c;
	int U = circ_model_n_up(s->m), R = circ_model_n_recv(s->m);
	size_t tc = (size_t)b->T * (size_t)c->n_embd;
	circ_run *run = circ_patcher_run(s->p);
	circ_writer *w = s->w;
	circ_reader *r = s->r;
	circ_error e;
	msgpack_packer *pk = circ_writer_packer(w);
	int64_t shape[3] = {U, b->T, c->n_embd};
	msgpack_pack_map(pk, 4 + o.want_ref + o.want_diff + o.want_grad);
	circ_pack_kv_i64(pk, "id", b->ex[bb].id);
	circ_pack_kv_i64(pk, "T", b->T);
	circ_pack_kv_f64(pk, "metric_clean", circ_patcher_clean_metric(s->p)[bb]);
	circ_pack_kv_f64(pk, "metric_ref", circ_patcher_ref_metric(s->p)[bb]);
	if (o.want_ref) {
		/* one example's rows are strided by B*T*C: gather them */
		for (int u = 0; u < U; u++)
			memcpy(diff + (size_t)u * tc,
			       circ_patcher_ref_out(s->p, u) + (size_t)bb * tc, tc * sizeof(float));
		finite_or_die(w, r, b->ex[bb].id, "ref", diff, (size_t)U * tc);
		circ_pack_kv_tensor(pk, "ref", CIRC_F32, 3, shape, diff);
	}
	if (o.want_diff) {
		for (int u = 0; u < U; u++) {
			const float *rf = circ_patcher_ref_out(s->p, u) + (size_t)bb * tc,
				    *cl = circ_patcher_clean_out(s->p, u) + (size_t)bb * tc;
			float *d = diff + (size_t)u * tc;
			for (size_t q = 0; q < tc; q++)
				d[q] = rf[q] - cl[q];
		}
		finite_or_die(w, r, b->ex[bb].id, "diff", diff, (size_t)U * tc);
		circ_pack_kv_tensor(pk, "diff", CIRC_F32, 3, shape, diff);
	}
	if (o.want_grad) {
		float *gr = circ_xmalloc((size_t)R * tc * sizeof *gr);
		shape[0] = R;
		for (int q = 0; q < R; q++)
			memcpy(gr + (size_t)q * tc, circ_run_recv_grad(run, q) + (size_t)bb * tc,
			       tc * sizeof(float));
		finite_or_die(w, r, b->ex[bb].id, "grad", gr, (size_t)R * tc);
		circ_pack_kv_tensor(pk, "grad", CIRC_F32, 3, shape, gr);
		free(gr);
	}
	if (circ_writer_end_record(w, &e) < 0)
		circ_die(&e);
}

int main(int argc, char **argv)
{
	circ_cli cli = {"--model DIR [options] [tokens]",
			"Reference outputs, output differences and receiver gradients per example "
			"(with --dict: dictionary activations).",
			opts, 1};
	circ_session s = {0};
	circ_error e;
	circ_graph *g;
	circ_reader *r;
	circ_batch *b;
	circ_writer *w;
	const char *in = "-", *md;
	const circ_config *c;
	float *diff = NULL;
	int i, U, R;

	circ_init("circ-harvest");
	circ_patch_cli_init(&o.pc);
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i > 1)
		circ_usage_error("one token stream at most");
	if (argc - i == 1)
		in = argv[i];
	if (!o.want_ref && !o.want_diff && !o.want_grad)
		circ_usage_error("--what: nothing to harvest");
	if (o.pc.level != CIRC_LEVEL_EDGE)
		circ_usage_error("a harvest keeps every receiver: --level node does not apply");
	if (o.dict) { /* feature activations: a plain forward, no patching */
		static const int allowed[] = {CIRC_PO_MODEL,
					      CIRC_PO_METRIC,
					      CIRC_PO_BATCH,
					      CIRC_PO_THREADS,
					      CIRC_PO_ALLOW_NONFINITE,
					      CIRC_PO_COMPUTE,
					      0};
		const char *bad = circ_patch_cli_given(&o.pc, allowed);
		if (bad)
			circ_usage_error("--dict: --%s does not apply", bad);
		circ_patch_cli_check(&o.pc);
		if (!o.pc.model)
			circ_usage_error("--model DIR is required");
		s.compute = o.pc.compute;
		circ_session_open_model(&s, o.pc.model, o.pc.allow_nonfinite);
		circ_session_reader(&s, in);
		circ_patch_cli_metric(&o.pc, s.r);
		circ_session_check_vocab(&s);
		circ_dictrun_harvest(&s, &cli, o.dict, o.pc.metric, o.pc.batch, o.pc.threads, argc,
				     argv);
		circ_session_free(&s);
		return 0;
	}
	circ_patch_cli_no_raw(&o.pc, "circ-harvest");
	circ_patch_cli_check(&o.pc);
	circ_session_model(&s, &o.pc, 1);
	g = s.g, md = s.model_digest, c = s.c;
	U = circ_model_n_up(s.m);
	R = circ_model_n_recv(s.m);
	circ_session_tokens(&s, in);
	r = s.r;
	circ_patch_cli_metric(&o.pc, r);
	circ_session_patcher(&s, NULL, o.want_grad);
	circ_session_means(&s);
	circ_session_output(&s, &cli);
	w = s.w;
	{
		circ_hdr_field f[] = {
		    CIRC_HDR(STR, "metric", circ_metric_name(o.pc.metric)),
		    CIRC_HDR(STR, "ablation", circ_ablation_name(o.pc.ablation)),
		    CIRC_HDR_GRAPH(g),
		    CIRC_HDR(STR, "model_digest", md),
		    circ_hdr_dataset_digest(r),
		    CIRC_HDR(I64, "d_model", c->n_embd),
		    CIRC_HDR(I64, "n_up", U),
		    CIRC_HDR(I64, "n_recv", R),
		};
		if (circ_writer_header_fields(w, "acts", argc, argv, &r, 1, f, CIRC_HDR_N(f), &e) <
		    0)
			circ_die(&e);
	}
	while (circ_session_next(&s, &b)) {
		size_t tc = (size_t)b->T * (size_t)c->n_embd;
		circ_session_load(&s, b, o.want_grad);
		diff = circ_xrealloc(diff, (size_t)U * tc * sizeof *diff);
		for (int bb = 0; bb < b->B; bb++)
			pack_example(&s, b, bb, diff);
	}
	circ_session_finish(&s);
	free(diff);
	circ_session_free(&s);
	return 0;
}
