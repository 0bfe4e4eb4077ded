/*
 * acdc: greedy edge pruning by patching (see acdc.h).
 */
#include "acdc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "circuit.h"

/* Mean loss over every example of every patcher with the circuit keep,
 * whose lowest patched stage is `stage`. */
static int loss(circ_patcher **ps, int n, const uint8_t *keep, int stage, double *out,
		circ_error *e)
{
	double sum = 0;
	int64_t count = 0;
	int sign = circ_metric_higher_better(circ_patcher_opts(ps[0])->metric) ? -1 : 1;
	for (int i = 0; i < n; i++) {
		const circ_batch *b = circ_patcher_batch(ps[i]);
		double *m = circ_xmalloc((size_t)b->B * sizeof *m);
		if (circ_patcher_eval(ps[i], keep, stage, m, e) < 0) {
			free(m);
			return -1;
		}
		for (int j = 0; j < b->B; j++)
			sum += sign * m[j];
		count += b->B;
		free(m);
	}
	*out = sum / (double)count;
	return 0;
}

/* 1 if some kept edge leaves node `node` (logits always counts). */
static int node_has_output(const circ_graph *g, const uint8_t *keep, int node)
{
	if (node >= g->n_up)
		return 1;
	for (int64_t ed = 0; ed < g->n_edges; ed++)
		if (g->edge_up[ed] == node && keep[ed])
			return 1;
	return 0;
}

/* The state of one run, shared by the group tests. */
typedef struct acdc_ctx {
	circ_patcher **ps;
	int n;
	const circ_acdc_opts *o;
	uint8_t *keep;
	circ_acdc_cb cb;
	void *cb_ctx;
	int64_t *tests;
	circ_progress *pr;
	double cur; /* loss of the current circuit */
} acdc_ctx;

/* Decides edges lo..hi of one receiver (of stage `stage`), patched
 * together: dropped when their joint change is below tau, kept when hi ==
 * lo and it is not, else split in two halves, the later edges first. With
 * hi == lo this is ACDC's own edge test. */
static int decide(acdc_ctx *a, int stage, int64_t lo, int64_t hi, circ_error *e)
{
	const circ_acdc_opts *o = a->o;
	double after, change;
	int dropped;
	for (int64_t ed = lo; ed <= hi; ed++)
		a->keep[ed] = 0;
	if (loss(a->ps, a->n, a->keep, stage, &after, e) < 0)
		return -1;
	(*a->tests)++;
	change = after - a->cur;
	dropped = (o->abs_change ? fabs(change) : change) < o->tau;
	if (!dropped && hi > lo) {
		int64_t mid = lo + (hi - lo + 1) / 2;
		for (int64_t ed = lo; ed <= hi; ed++)
			a->keep[ed] = 1;
		if (decide(a, stage, mid, hi, e) < 0)
			return -1;
		return decide(a, stage, lo, mid - 1, e);
	}
	for (int64_t ed = hi; ed >= lo; ed--) {
		circ_acdc_step st;
		st.edge = ed;
		st.before = a->cur;
		st.after = after;
		st.kept = !dropped;
		st.group = (int)(hi - lo + 1);
		if (st.kept)
			a->keep[ed] = 1;
		if (a->cb && a->cb(a->cb_ctx, &st, e) < 0)
			return -1;
	}
	if (dropped)
		a->cur = after;
	if (a->pr)
		circ_progress_step(a->pr, hi - lo + 1);
	return 0;
}

int circ_acdc_run(circ_patcher **ps, int n, const circ_acdc_opts *o, uint8_t *keep, circ_acdc_cb cb,
		  void *ctx, int64_t *tests, circ_progress *pr, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(ps[0]);
	int64_t group = o->group > 1 ? o->group : 1;
	acdc_ctx a = {ps, n, o, keep, cb, ctx, tests, pr, 0};
	*tests = 0;
	memset(keep, 1, (size_t)g->n_edges);
	if (loss(ps, n, keep, g->topo->n_stage, &a.cur, e) < 0)
		return -1;
	for (int r = g->n_recv - 1; r >= 0; r--) {
		int node, stage = circ_patcher_recv_stage(ps[0], r);
		circ_graph_recv_info(g, r, NULL, &node);
		if (!node_has_output(g, keep, node)) {
			/* unreachable from the logits: its inputs cannot matter */
			for (int64_t ed = g->recv_first[r]; ed < g->recv_first[r + 1]; ed++)
				keep[ed] = 0;
			continue;
		}
		/* incoming edges from the latest upstream node down, as ACDC
		 * does; in groups of `group` (1: one by one) */
		for (int64_t hi = g->recv_first[r + 1] - 1; hi >= g->recv_first[r]; hi -= group) {
			int64_t lo =
			    hi - group + 1 > g->recv_first[r] ? hi - group + 1 : g->recv_first[r];
			if (decide(&a, stage, lo, hi, e) < 0)
				return -1;
		}
	}
	circ_prune_dangling(g, keep);
	return 0;
}
