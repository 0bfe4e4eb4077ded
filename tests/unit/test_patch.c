/*
 * Unit tests for lib/patch and lib/attrib on a random model:
 *  - EAP converges to exact patching as the reference approaches the clean
 *    run (the first-order property attribution patching rests on);
 *  - patching no edge gives the clean metric, every edge the reference run;
 *  - incremental recomputation (a forward resumed at the receiver's stage)
 *    gives the same numbers as a full patched forward;
 *  - a patcher made for attribution alone (circ_attrib_patch_opts) gives
 *    the same scores as a patching one and holds no more memory than the
 *    shape needs: one stage's receiver gradients, one set of node
 *    differences (a memory test, not a timed one).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acdc.h"
#include "attrib.h"
#include "rng.h"
#include "test_batch.h"

static int fails;
#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);      \
			fails++;                                                                   \
		}                                                                                  \
	} while (0)

/* max |eap - exact| / max |exact| at reference scale eps */
static double eap_vs_exact(const circ_model *m, const circ_graph *g, const circ_batch *b,
			   double eps)
{
	circ_error e;
	circ_patch_opts po = {CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 1, b->B, b->T, 1};
	circ_patcher *p = circ_patcher_new(m, g, &po, &e);
	circ_attrib *ea, *ex;
	double worst = 0, scale = 0;
	if (!p || circ_patcher_load(p, b, &e) < 0) {
		fprintf(stderr, "%s\n", e.msg);
		exit(1);
	}
	circ_patcher_scale_ref(p, eps);
	ea = circ_attrib_new(p, CIRC_ATTR_EAP, 1);
	ex = circ_attrib_new(p, CIRC_ATTR_EXACT, 1);
	CHECK(circ_attrib_batch(ea, NULL, &e) == 0);
	CHECK(circ_attrib_batch(ex, NULL, &e) == 0);
	for (int64_t i = 0; i < g->n_edges; i++) {
		double a = circ_attrib_sums(ea)[i], x = circ_attrib_sums(ex)[i];
		if (fabs(a - x) > worst)
			worst = fabs(a - x);
		if (fabs(x) > scale)
			scale = fabs(x);
	}
	circ_attrib_free(ea);
	circ_attrib_free(ex);
	circ_patcher_free(p);
	return worst / scale;
}

/* Keep mask for a test at stage s: receivers below s keep every edge, those
 * of stage s lose one in three, those above keep each edge with
 * probability dens. */
static void stage_mask(const circ_graph *g, const circ_patcher *p, int s, double dens, circ_rng *r,
		       uint8_t *keep)
{
	for (int64_t ed = 0; ed < g->n_edges; ed++) {
		int rs = circ_patcher_recv_stage(p, g->edge_recv[ed]);
		keep[ed] = rs < s ? 1 : rs == s ? ed % 3 != 0 : circ_rng_uniform(r) < dens;
	}
}

/* The patcher keeps state between evaluations (the clean stages below the
 * start, the stored difference rows ref - clean and ref - current, R(s)): a
 * long sequence of circuits, tested top-down as ACDC does, then at stages
 * in any order, then with the references rescaled, must give what a fresh
 * patcher gives for each circuit alone. */
static void test_patcher_state(circ_model *m, const circ_graph *g, const circ_batch *b, int L)
{
	circ_patch_opts po = {CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 2, b->B, b->T, 0};
	circ_error e;
	circ_patcher *p = circ_patcher_new(m, g, &po, &e);
	uint8_t *keep = circ_xmalloc((size_t)g->n_edges);
	static const double dens[] = {0.05, 0.5, 0.95, 0.0};
	double out[8], want[8], worst = 0;
	circ_rng r;
	int n = 0;
	CHECK(p && circ_patcher_load(p, b, &e) == 0);
	circ_rng_seed(&r, 5);
	for (int pass = 0; pass < 3; pass++) {
		if (pass == 2)
			circ_patcher_scale_ref(p, 0.5);
		for (int k = 0; k <= 2 * L; k++) {
			int s =
			    pass == 0 ? 2 * L - k : (int)circ_rng_below(&r, (uint64_t)(2 * L + 1));
			circ_patcher *q = circ_patcher_new(m, g, &po, &e);
			stage_mask(g, p, s, dens[(k + pass) % 4], &r, keep);
			CHECK(q && circ_patcher_load(q, b, &e) == 0);
			if (pass == 2)
				circ_patcher_scale_ref(q, 0.5);
			CHECK(circ_patcher_eval(p, keep, s, out, &e) == 0);
			CHECK(circ_patcher_eval(q, keep, 0, want, &e) == 0);
			for (int i = 0; i < b->B; i++) {
				double d = fabs(out[i] - want[i]) / (1 + fabs(want[i]));
				worst = d > worst ? d : worst;
			}
			circ_patcher_free(q);
			n++;
		}
	}
	fprintf(stderr, "test_patch: %d circuits evaluated incrementally vs fresh: worst %.3g\n", n,
		worst);
	CHECK(worst < 1e-5);
	free(keep);
	circ_patcher_free(p);
}

/* Cached bases (R(s) minus a receiver's kept clean rows, reused while the
 * start and those keep bits stay): ACDC's sequence at one stage (the
 * stage's own receivers change, those above do not), then a keep bit of a
 * clean input of the logits changed (its base must be made again), then
 * a start below with m0 patched (no longer clean) and back; each against
 * a fresh patcher (which has no clean nodes, so no cached base), exactly. */
static void test_patcher_cache(circ_model *m, const circ_graph *g, const circ_batch *b)
{
	circ_patch_opts po = {CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 2, b->B, b->T, 0};
	circ_error e;
	circ_patcher *p = circ_patcher_new(m, g, &po, &e);
	uint8_t *keep = circ_xmalloc((size_t)g->n_edges);
	int64_t lf = g->recv_first[circ_graph_recv_logits(g)];
	double out[8], want[8], worst = 0;
	circ_rng r;
	int s = 2, starts[] = {2, 2, 2, 1, 2, 2};
	CHECK(p && circ_patcher_load(p, b, &e) == 0);
	circ_rng_seed(&r, 9);
	stage_mask(g, p, s, 0.1, &r, keep);
	/* the input, the layer-0 heads and m0 into the logits: their base at
	 * start 2 (at least two kept clean rows make one) */
	memset(keep + lf, 1, 4);
	for (int step = 0; step < 6; step++) {
		circ_patcher *q = circ_patcher_new(m, g, &po, &e);
		double d = 0;
		if (step == 1 || step == 4) /* the stage's own receivers */
			for (int64_t ed = 0; ed < g->n_edges; ed++)
				if (circ_patcher_recv_stage(p, g->edge_recv[ed]) == s)
					keep[ed] ^= (ed + step) % 5 == 0;
		if (step == 2 || step == 5)
			keep[lf + 1 + step % 2] ^= 1; /* a layer-0 head into the logits */
		if (step == 3 || step == 4)	      /* m0 patched, so not clean, then back */
			for (int64_t ed = 0; ed < g->n_edges; ed++)
				if (circ_patcher_recv_stage(p, g->edge_recv[ed]) == 1)
					keep[ed] ^= ed % 2;
		CHECK(q && circ_patcher_load(q, b, &e) == 0);
		CHECK(circ_patcher_eval(p, keep, starts[step], out, &e) == 0);
		CHECK(circ_patcher_eval(q, keep, 0, want, &e) == 0);
		for (int i = 0; i < b->B; i++) {
			double di = fabs(out[i] - want[i]) / (1 + fabs(want[i]));
			d = di > d ? di : d;
		}
		if (d != 0)
			fprintf(stderr, "test_patch: cached bases, step %d: %.3g off\n", step, d);
		worst = d > worst ? d : worst;
		circ_patcher_free(q);
	}
	/* the same bytes: a base is summed as the run sums R(s) and the rows */
	CHECK(worst == 0);
	free(keep);
	circ_patcher_free(p);
}

/* The steps of an ACDC run, for comparing runs byte for byte. */
typedef struct steps {
	circ_acdc_step *s;
	int n, cap;
} steps;

static int record_step(void *ctx, const circ_acdc_step *st, circ_error *e)
{
	steps *t = ctx;
	(void)e;
	if (t->n == t->cap) {
		t->cap = t->cap ? 2 * t->cap : 256;
		t->s = circ_xrealloc(t->s, (size_t)t->cap * sizeof *t->s);
	}
	t->s[t->n++] = *st;
	return 0;
}

/* Patched forwards take two shortcuts: the last layer's MLP at the read
 * rows alone (circ_fwd.reads_only), and the start stage's projections
 * whose input did not change since the previous forward kept
 * (circ_run_keep_qkv). Whole ACDC runs (circ's order, groups, the
 * reference's order; resample and zero ablation; reads at one position
 * and at two per example) make the same tests with the same bytes as a
 * patcher that computes everything (plain), and so do single edges. The
 * model's head width is a multiple of 16, where projections can be kept. */
static void test_shortcuts(const char *dir)
{
	circ_config c = {3, 2, 32, 16, 50, 128, 1e-5, CIRC_ACT_GELU_NEW};
	circ_error e;
	circ_model *m;
	circ_graph *g;
	circ_batch *b = make_batch(3, 8, c.vocab_size, 17);
	int n = 0, differ = 0;
	double out[8], want[8];
	if (circ_model_write_random(dir, &c, 9, "F32", &e) < 0 ||
	    !(m = circ_model_open(dir, NULL, &e)) ||
	    !(g = circ_graph_new(c.n_layer, c.n_head, CIRC_LEVEL_EDGE, &e))) {
		fprintf(stderr, "%s\n", e.msg);
		exit(1);
	}
	for (int pass = 0; pass < 4; pass++) {
		circ_patch_opts po = {pass == 2 ? CIRC_ABL_ZERO : CIRC_ABL_RESAMPLE,
				      0,
				      pass ? CIRC_METRIC_KL : CIRC_METRIC_LOGIT_DIFF,
				      2,
				      b->B,
				      b->T,
				      0};
		circ_acdc_opts ao = {0};
		circ_patcher *p[2];
		steps st[2] = {{0}};
		uint8_t *keep[2];
		int64_t tests[2];
		if (pass == 1) { /* every example read at two positions */
			b->read_b = circ_xrealloc(b->read_b, (size_t)b->B * 2 * sizeof *b->read_b);
			b->read_t = circ_xrealloc(b->read_t, (size_t)b->B * 2 * sizeof *b->read_t);
			for (int i = 0; i < b->B; i++) {
				circ_example *x = &b->ex[i];
				x->pos = circ_xrealloc(x->pos, 2 * sizeof *x->pos);
				x->pos[1] = 2 + i;
				x->npos = 2;
				b->row0[i] = 2 * i;
				for (int j = 0; j < 2; j++) {
					b->read_b[2 * i + j] = i;
					b->read_t[2 * i + j] = x->pos[j];
				}
			}
			b->n_read = 2 * b->B;
		}
		/* every edge kept, those of negative change dropped, a few more */
		ao.tau = pass == 0 ? -1e30 : pass == 2 ? 1e-6 : 0;
		ao.group = pass == 3 ? 4 : 1;
		ao.order = pass == 2 ? CIRC_ACDC_ORDER_REFERENCE : CIRC_ACDC_ORDER_CIRC;
		for (int k = 0; k < 2; k++) {
			po.plain = k;
			p[k] = circ_patcher_new(m, g, &po, &e);
			keep[k] = circ_xmalloc((size_t)g->n_edges);
			CHECK(p[k] && circ_patcher_load(p[k], b, &e) == 0);
			CHECK(circ_acdc_run(&p[k], 1, &ao, keep[k], record_step, &st[k], &tests[k],
					    NULL, &e) == 0);
		}
		CHECK(st[0].n == st[1].n && st[0].n > 0 && tests[0] == tests[1]);
		for (int i = 0; i < st[0].n && i < st[1].n; i++) {
			const circ_acdc_step *a = &st[0].s[i], *w = &st[1].s[i];
			differ += a->edge != w->edge || a->kept != w->kept ||
				  memcmp(&a->after, &w->after, sizeof a->after) != 0 ||
				  memcmp(&a->before, &w->before, sizeof a->before) != 0;
		}
		CHECK(memcmp(keep[0], keep[1], (size_t)g->n_edges) == 0);
		n += st[0].n;
		for (int64_t ed = 0; pass == 0 && ed < g->n_edges; ed += 7) {
			CHECK(circ_patcher_eval_edge(p[0], ed, out, &e) == 0);
			CHECK(circ_patcher_eval_edge(p[1], ed, want, &e) == 0);
			differ += memcmp(out, want, (size_t)b->B * sizeof *out) != 0;
			n++;
		}
		for (int k = 0; k < 2; k++) {
			circ_patcher_free(p[k]);
			free(keep[k]);
			free(st[k].s);
		}
	}
	fprintf(stderr, "test_patch: %d ACDC steps and edges with shortcuts vs plain: %d differ\n",
		n, differ);
	CHECK(differ == 0);
	circ_batch_free(b);
	circ_graph_free(g);
	circ_model_free(m);
}

/* Zero and mean ablation (issue 13, item 20): after a load the patcher
 * still holds the whole clean run, as after a resampled one (its empty
 * circuit's metric reran only the logits stage), so forwards resume above
 * their receivers; the numbers are the bytes of full forwards from stage 0
 * (a patcher marked dirty). Means copied from another patcher give the
 * same bytes as means of its own. */
static void test_constant_refs(circ_model *m, const circ_graph *g, const circ_batch *b)
{
	for (int abl = CIRC_ABL_MEAN; abl <= CIRC_ABL_ZERO; abl++) {
		circ_patch_opts po = {
		    (circ_ablation)abl, 0, CIRC_METRIC_LOGIT_DIFF, 2, b->B, b->T, 0};
		circ_error e;
		circ_patcher *p = circ_patcher_new(m, g, &po, &e),
			     *q = circ_patcher_new(m, g, &po, &e),
			     *c = circ_patcher_new(m, g, &po, &e);
		uint8_t *none = circ_xcalloc((size_t)g->n_edges, 1);
		double out[8], want[8];
		CHECK(p && q && c);
		if (abl == CIRC_ABL_MEAN) {
			CHECK(circ_patcher_mean_add(p, b, &e) == 0 &&
			      circ_patcher_mean_finish(p, &e) == 0);
			CHECK(circ_patcher_mean_add(q, b, &e) == 0 &&
			      circ_patcher_mean_finish(q, &e) == 0);
			CHECK(circ_patcher_mean_copy(c, p, &e) == 0);
		}
		CHECK(circ_patcher_load(p, b, &e) == 0 && circ_patcher_load(q, b, &e) == 0 &&
		      circ_patcher_load(c, b, &e) == 0);
		CHECK(circ_patcher_is_clean(p));
		for (int i = 0; i < b->B; i++)
			CHECK(circ_patcher_ref_metric(c)[i] == circ_patcher_ref_metric(p)[i]);
		/* the empty circuit: a full forward from stage 0 */
		circ_patcher_dirty(q);
		CHECK(circ_patcher_eval(q, none, 0, want, &e) == 0);
		for (int i = 0; i < b->B; i++)
			CHECK(want[i] == circ_patcher_ref_metric(p)[i]);
		/* edges from the top down, each resumed at its receiver */
		for (int64_t ed = g->n_edges - 1; ed >= 0; ed -= 7) {
			circ_patcher_dirty(q);
			CHECK(circ_patcher_eval_edge(p, ed, out, &e) == 0);
			CHECK(circ_patcher_eval_edge(q, ed, want, &e) == 0);
			for (int i = 0; i < b->B; i++)
				CHECK(out[i] == want[i]);
		}
		free(none);
		circ_patcher_free(p);
		circ_patcher_free(q);
		circ_patcher_free(c);
	}
}

/* Scores of method `meth` on batch b from a patcher made with o. */
static double *scores_with(const circ_model *m, const circ_graph *g, const circ_batch *b,
			   const circ_patch_opts *o, circ_attr_method meth, size_t *bytes)
{
	circ_error e;
	circ_patcher *p = circ_patcher_new(m, g, o, &e);
	circ_attrib *a;
	double *out = circ_xmalloc((size_t)g->n_edges * sizeof *out);
	if (!p || circ_patcher_load(p, b, &e) < 0) {
		fprintf(stderr, "%s\n", e.msg);
		exit(1);
	}
	a = circ_attrib_new(p, meth, 3);
	CHECK(circ_attrib_batch(a, NULL, &e) == 0);
	memcpy(out, circ_attrib_sums(a), (size_t)g->n_edges * sizeof *out);
	*bytes = circ_patcher_bytes(p) + circ_attrib_bytes(a);
	/* the estimates that choose batch sizes (--max-memory) are near what
	 * the patcher and accumulator hold after the batch (within 0.8-1.5:
	 * the estimate counts the logits of the read rows only, which the
	 * arena maps for every row, and no per-edge sums; and it rounds T up
	 * to 16 as a run does when its limit allows, which this patcher's,
	 * made for T, does not) */
	double est = (double)(circ_patcher_bytes_for(p, b->B, b->T, b->n_read) +
			      circ_attrib_bytes_for(meth, p, b->B, b->T, b->n_read)),
	       held = (double)*bytes, round = (double)((b->T + 15) & ~15) / b->T;
	CHECK(est >= 0.8 * held && est <= 1.5 * round * held);
	if (!(est >= 0.8 * held && est <= 1.5 * round * held))
		fprintf(stderr, "estimate %.0f, held %.0f\n", est, held);
	circ_attrib_free(a);
	circ_patcher_free(p);
	return out;
}

/* Arena bytes of a run with options ro after a forward of b's clean prompts
 * (the arena is laid out by the first forward). */
static size_t arena_after_forward(const circ_model *m, const circ_batch *b, const circ_run_opts *ro)
{
	circ_error e;
	circ_run *r = circ_run_new(m, b->B, b->T, ro, &e);
	circ_fwd f;
	size_t n;
	circ_fwd_init(&f);
	f.tokens = b->clean;
	f.B = b->B;
	f.T = b->T;
	CHECK(r != NULL && circ_run_arena_bytes(r) == 0);
	CHECK(circ_forward(r, &f, &e) == 0);
	n = circ_run_arena_bytes(r);
	CHECK(n > 0);
	circ_run_free(r);
	return n;
}

/* Attribution alone: the same scores (bit for bit: the same sums in the
 * same order) as from a patcher that keeps everything, and memory bounded
 * by the shape. The bound: the arena of a run that keeps one stage's
 * receiver gradients, one (ref - clean) per node, the input's two copies,
 * the reference logits, the accumulator's sums, products and dlogits, and
 * for IG the gradients summed over the steps (R) and the interpolated
 * input. A run that kept every receiver's gradient, or a second copy of
 * the node outputs or differences, is over it. */
static void test_attrib_memory(const circ_model *m, const circ_graph *g, const circ_batch *b)
{
	const circ_config *c = circ_model_config(m);
	const circ_attr_method meths[] = {CIRC_ATTR_EAP, CIRC_ATTR_EAP_IG, CIRC_ATTR_EAP_IG_ACT};
	size_t U = (size_t)circ_model_n_up(m), R = (size_t)circ_model_n_recv(m),
	       tc = (size_t)b->T * (size_t)c->n_embd, btc = (size_t)b->B * tc, rs = 0, arena0,
	       arena_all;
	const circ_topology *t = circ_model_topology(m);
	circ_run_opts ro;
	for (int s = 0; s < t->n_stage; s++)
		if ((size_t)t->stage[s].n_recv > rs)
			rs = (size_t)t->stage[s].n_recv;
	circ_run_opts_default(&ro);
	ro.backward = 1;
	ro.keep_recv_grads = 0;
	arena0 = arena_after_forward(m, b, &ro);
	{
		/* the estimate counts the logits of the read rows only: each row
		 * not read is V floats less (the arena maps them, untouched) */
		size_t rows = (size_t)b->B * (size_t)((b->T + 15) & ~15), V = (size_t)c->vocab_size;
		size_t all = circ_run_bytes_for(m, b->B, b->T, (int)rows, &ro),
		       one = circ_run_bytes_for(m, b->B, b->T, 1, &ro);
		CHECK(all == arena0 || b->T % 16 != 0);
		CHECK(all - one == (rows - 1) * V * sizeof(float));
		CHECK(circ_run_bytes_for(m, b->B, b->T, (int)rows + 5, &ro) == all);
	}
	ro.keep_recv_grads = 1;
	arena_all = arena_after_forward(m, b, &ro);
	for (size_t i = 0; i < sizeof meths / sizeof *meths; i++) {
		circ_patch_opts po = {
		    CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 1, b->B, b->T, 1};
		size_t full_bytes, bytes, bound;
		int ig = meths[i] != CIRC_ATTR_EAP;
		double *full = scores_with(m, g, b, &po, meths[i], &full_bytes), *lean;
		circ_attrib_patch_opts(meths[i], &po);
		CHECK(po.backward && po.stage_grads && po.diff_only);
		lean = scores_with(m, g, b, &po, meths[i], &bytes);
		CHECK(memcmp(full, lean, (size_t)g->n_edges * sizeof *full) == 0);
		bound = arena0 +
			((U + 2) * btc + (size_t)b->n_read * (size_t)c->vocab_size * 2 +
			 (size_t)b->B * U * rs + rs * tc + (ig ? (R + 1) * btc : 0)) *
			    sizeof(float) +
			(size_t)g->n_edges * sizeof(double);
		fprintf(stderr,
			"test_patch: %s holds %zu bytes (bound %zu; a patching patcher %zu, "
			"every receiver's gradient kept %zu more)\n",
			circ_attr_name(meths[i]), bytes, bound, full_bytes, arena_all - arena0);
		CHECK(bytes <= bound);
		/* the bound can fail: over it with every gradient or a second diff */
		CHECK(bound < bytes + (arena_all - arena0) &&
		      bound < bytes + U * btc * sizeof(float));
		free(full);
		free(lean);
	}
}

int main(void)
{
	char dir[] = "/tmp/circ-test-patch-XXXXXX";
	circ_config c = {3, 2, 16, 16, 50, 64, 1e-5, CIRC_ACT_GELU_NEW};
	circ_error e;
	circ_model *m;
	circ_graph *g;
	circ_batch *b;
	double r1, r2, r3;
	char cmd[128];

	CHECK(mkdtemp(dir) != NULL);
	if (circ_model_write_random(dir, &c, 7, "F32", &e) < 0 ||
	    !(m = circ_model_open(dir, NULL, &e)) ||
	    !(g = circ_graph_new(c.n_layer, c.n_head, CIRC_LEVEL_EDGE, &e))) {
		fprintf(stderr, "%s\n", e.msg);
		return 1;
	}
	b = make_batch(3, 8, c.vocab_size, 11);

	/* EAP -> exact: the relative error shrinks about linearly with eps */
	r1 = eap_vs_exact(m, g, b, 1.0);
	r2 = eap_vs_exact(m, g, b, 0.1);
	r3 = eap_vs_exact(m, g, b, 0.01);
	fprintf(stderr, "test_patch: |eap - exact| / |exact|: eps 1 %.3g, 0.1 %.3g, 0.01 %.3g\n",
		r1, r2, r3);
	CHECK(r2 < r1 && r3 < r2);
	CHECK(r3 < 0.02);
	CHECK(r3 < 0.3 * r2);

	test_patcher_state(m, g, b, c.n_layer);
	test_patcher_cache(m, g, b);
	{
		char sub[64];
		snprintf(sub, sizeof sub, "%s/d16", dir);
		test_shortcuts(sub);
	}
	test_constant_refs(m, g, b);
	test_attrib_memory(m, g, b);

	/* no edge patched = clean; every edge patched = the reference run */
	{
		circ_patch_opts po = {
		    CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 1, b->B, b->T, 0};
		circ_patcher *p = circ_patcher_new(m, g, &po, &e);
		uint8_t *keep = circ_xmalloc((size_t)g->n_edges);
		double out[8], full[8];
		CHECK(p && circ_patcher_load(p, b, &e) == 0);
		memset(keep, 1, (size_t)g->n_edges);
		CHECK(circ_patcher_eval(p, keep, 0, out, &e) == 0);
		for (int i = 0; i < b->B; i++)
			CHECK(fabs(out[i] - circ_patcher_clean_metric(p)[i]) < 1e-4);
		memset(keep, 0, (size_t)g->n_edges);
		CHECK(circ_patcher_eval(p, keep, 0, out, &e) == 0);
		for (int i = 0; i < b->B; i++)
			CHECK(fabs(out[i] - circ_patcher_ref_metric(p)[i]) < 1e-4);
		/* incremental: a circuit missing only edges into the last layer's
		 * receivers, resumed from that stage, equals a full forward */
		memset(keep, 1, (size_t)g->n_edges);
		for (int64_t ed = 0; ed < g->n_edges; ed++)
			if (circ_patcher_recv_stage(p, g->edge_recv[ed]) >= 2 * (c.n_layer - 1) &&
			    ed % 3 == 0)
				keep[ed] = 0;
		CHECK(circ_patcher_eval(p, keep, 0, full, &e) == 0);
		CHECK(circ_patcher_load(p, b, &e) == 0);
		CHECK(circ_patcher_eval(p, keep, 2 * (c.n_layer - 1), out, &e) == 0);
		for (int i = 0; i < b->B; i++)
			CHECK(fabs(out[i] - full[i]) < 1e-5);
		free(keep);
		circ_patcher_free(p);
	}
	/* a batch reading more rows than B x T (what circ_batch_parse_example rules
	 * out) is refused before the patcher's buffers are written */
	{
		circ_patch_opts po = {
		    CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 1, b->B, b->T, 0};
		circ_patcher *p = circ_patcher_new(m, g, &po, &e);
		circ_batch *x = circ_batch_clone(b);
		int n = x->B * x->T + 1;
		x->read_b = circ_xrealloc(x->read_b, (size_t)n * sizeof *x->read_b);
		x->read_t = circ_xrealloc(x->read_t, (size_t)n * sizeof *x->read_t);
		for (int i = 0; i < n; i++)
			x->read_b[i] = x->read_t[i] = 0;
		x->n_read = n;
		CHECK(p && circ_patcher_load(p, x, &e) == -1 &&
		      strstr(e.msg, "reads 25 rows (at most 24)"));
		CHECK(circ_patcher_mean_add(p, x, &e) == -1 && strstr(e.msg, "reads 25 rows"));
		x->n_read = 0;
		CHECK(circ_patcher_load(p, x, &e) == -1);
		circ_batch_free(x);
		circ_patcher_free(p);
	}
	circ_batch_free(b);
	circ_graph_free(g);
	circ_model_free(m);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	if (fails)
		fprintf(stderr, "test_patch: %d failures\n", fails);
	return fails != 0;
}
