/*
 * test_family_eap: EAP converges to exact patching as the patch shrinks, on
 * the families whose blocks are normed after they run (gemma2, gemma3_text:
 * norms before and after; olmo2: after only) and on llama for comparison.
 *
 * There a head's node output is its share of the post-normed attention
 * output (circ(1), MODEL FAMILIES): o_h rsqrt(mean(A^2) + eps) (off + w),
 * A the sum of the layer's heads in that run. Exact patching of an edge
 * moves its receiver's input by ref - clean of that output; EAP is the
 * first-order term of the same move. With the references moved toward the
 * clean run, ref = clean + eps (ref - clean) (circ_patcher_scale_ref), the
 * relative error max |eap - exact| / max |exact| over every edge must
 * shrink about linearly: r(0.1) < r(1), r(0.01) < 0.3 r(0.1) and
 * r(0.01) < 0.02 (float32 runs), as tests/unit/test_patch.c checks GPT-2's.
 * That exact and EAP scores at eps = 1 equal a float64 PyTorch reference
 * is tests/families.bats' "every family: exact and EAP scores".
 *
 * The same with raw head nodes (circ_model_opts.raw_heads, EAP-IG's and
 * MIB's definition: a head outputs o_h, the norm applied on the receiver's
 * side): exact patching moves a receiver's input by N(A + ref_h - o_h) -
 * N(A), EAP takes the norm's Jacobian at the clean A times ref_h - o_h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "attrib.h"
#include "check.h"
#include "test_batch.h"
#include "topology.h"

static char root[4096];

/* max |eap - exact| / max |exact| at reference scale eps, over every edge
 * (heads 0) or over the edges out of heads (heads 1) */
static double eap_vs_exact(const circ_model *m, const circ_graph *g, const circ_batch *b,
			   double eps, int heads)
{
	circ_error e;
	circ_patch_opts po = {CIRC_ABL_RESAMPLE, 0, CIRC_METRIC_LOGIT_DIFF, 1, b->B, b->T, 1};
	circ_patcher *p = circ_patcher_new(m, g, &po, &e);
	circ_attrib *ea = NULL, *ex = NULL;
	double worst = 0, scale = 0;
	CHECK_MSG(p && circ_patcher_load(p, b, &e) == 0, e);
	if (!p)
		return INFINITY;
	circ_patcher_scale_ref(p, eps);
	ea = circ_attrib_new(p, CIRC_ATTR_EAP, 1);
	ex = circ_attrib_new(p, CIRC_ATTR_EXACT, 1);
	CHECK_MSG(circ_attrib_batch(ea, NULL, &e) == 0, e);
	CHECK_MSG(circ_attrib_batch(ex, NULL, &e) == 0, e);
	for (int64_t i = 0; i < g->n_edges; i++) {
		double a = circ_attrib_sums(ea)[i], x = circ_attrib_sums(ex)[i];
		if (heads && g->topo->node[g->edge_up[i]].kind != CIRC_NODE_HEAD)
			continue;
		worst = fmax(worst, fabs(a - x));
		scale = fmax(scale, fabs(x));
	}
	circ_attrib_free(ea);
	circ_attrib_free(ex);
	circ_patcher_free(p);
	return scale > 0 ? worst / scale : INFINITY;
}

static void check_family(const char *name, int raw)
{
	circ_model_opts mo;
	char dir[4600];
	circ_error e;
	circ_model *m;
	circ_graph *g;
	circ_batch *b;
	double r[3], rh[3];
	static const double eps[3] = {1.0, 0.1, 0.01};
	snprintf(dir, sizeof dir, "%s/tests/data/families/%s", root, name);
	circ_model_opts_default(&mo);
	mo.raw_heads = raw;
	m = circ_model_open(dir, &mo, &e);
	CHECK_MSG(m != NULL, e);
	if (!m)
		return;
	g = circ_graph_new_desc(&circ_model_topology(m)->d, CIRC_LEVEL_EDGE, &e);
	CHECK_MSG(g != NULL, e);
	b = make_batch(3, 8, circ_model_config(m)->vocab_size, 11);
	for (int i = 0; i < 3 && g; i++) {
		r[i] = eap_vs_exact(m, g, b, eps[i], 0);
		rh[i] = eap_vs_exact(m, g, b, eps[i], 1);
	}
	if (g) {
		printf("  %-12s %s |eap - exact| / |exact|: eps 1 %.3g, 0.1 %.3g, 0.01 %.3g; "
		       "out of heads %.3g, %.3g, %.3g\n",
		       name, raw ? "raw  " : "share", r[0], r[1], r[2], rh[0], rh[1], rh[2]);
		if (!(r[1] < r[0] && r[2] < 0.3 * r[1] && r[2] < 0.02) ||
		    !(rh[1] < rh[0] && rh[2] < 0.3 * rh[1] && rh[2] < 0.02)) {
			fprintf(stderr, "%s: EAP does not converge to exact patching\n", name);
			failures++;
		}
	}
	circ_batch_free(b);
	circ_graph_free(g);
	circ_model_free(m);
}

int main(void)
{
	static const char *fams[] = {"gemma2", "gemma3_text", "olmo2", "llama"};
	const char *rt = getenv("CIRC_ROOT");
	snprintf(root, sizeof root, "%s", rt ? rt : ".");
	for (size_t i = 0; i < sizeof fams / sizeof *fams; i++)
		check_family(fams[i], 0);
	for (size_t i = 0; i < 3; i++) /* the families with norms after attention */
		check_family(fams[i], 1);
	if (failures)
		fprintf(stderr, "test_family_eap: %d failures\n", failures);
	return failures != 0;
}
