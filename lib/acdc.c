/*
 * acdc: greedy edge pruning by patching (see acdc.h), in circ's order or in
 * the reference implementation's.
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

/* Decides the n edges eds[0..n-1] of one receiver (of stage `stage`),
 * patched together: dropped when their joint change is below tau, kept
 * when n == 1 and it is not, else split in two halves, eds[n/2..n-1]
 * first. With one edge this is ACDC's own edge test. Decisions are
 * reported from eds[n-1] down. */
static int decide(acdc_ctx *a, int stage, const int64_t *eds, int64_t n, circ_error *e)
{
	const circ_acdc_opts *o = a->o;
	double after, change;
	int dropped;
	for (int64_t i = 0; i < n; i++)
		a->keep[eds[i]] = 0;
	if (loss(a->ps, a->n, a->keep, stage, &after, e) < 0)
		return -1;
	(*a->tests)++;
	change = after - a->cur;
	dropped = (o->abs_change ? fabs(change) : change) < o->tau;
	if (!dropped && n > 1) {
		int64_t mid = n / 2;
		for (int64_t i = 0; i < n; i++)
			a->keep[eds[i]] = 1;
		if (decide(a, stage, eds + mid, n - mid, e) < 0)
			return -1;
		return decide(a, stage, eds, mid, e);
	}
	for (int64_t i = n - 1; i >= 0; i--) {
		circ_acdc_step st;
		st.edge = eds[i];
		st.recv = -1;
		st.before = a->cur;
		st.after = after;
		st.kept = !dropped;
		st.group = (int)n;
		st.screened = 0;
		if (st.kept)
			a->keep[eds[i]] = 1;
		if (a->cb && a->cb(a->cb_ctx, &st, e) < 0)
			return -1;
	}
	if (dropped)
		a->cur = after;
	if (a->pr)
		circ_progress_step(a->pr, n);
	return 0;
}

const char *circ_acdc_order_name(circ_acdc_order o)
{
	switch (o) {
	case CIRC_ACDC_ORDER_CIRC: return "circ";
	case CIRC_ACDC_ORDER_REFERENCE: return "reference";
	}
	return NULL;
}

int circ_acdc_order_parse(const char *s, circ_acdc_order *o)
{
	if (!strcmp(s, "circ"))
		*o = CIRC_ACDC_ORDER_CIRC;
	else if (!strcmp(s, "reference"))
		*o = CIRC_ACDC_ORDER_REFERENCE;
	else
		return -1;
	return 0;
}

/* ---- the reference implementation's order (acdc.h) ---- */

static void drop_recv(const circ_graph *g, uint8_t *keep, int r)
{
	for (int64_t ed = g->recv_first[r]; ed < g->recv_first[r + 1]; ed++)
		keep[ed] = 0;
}

/* The reference's whole-input test of receiver r (its direct-computation
 * edge into a head's q, k or v): every edge of r patched at once. *kept
 * gets the decision; dropped, r's edges stay patched. */
static int decide_whole(acdc_ctx *a, int stage, int r, int *kept, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(a->ps[0]);
	circ_acdc_step st;
	double change;
	st.edge = -1;
	st.recv = r;
	st.before = a->cur;
	st.group = (int)(g->recv_first[r + 1] - g->recv_first[r]);
	st.screened = 0;
	drop_recv(g, a->keep, r);
	if (loss(a->ps, a->n, a->keep, stage, &st.after, e) < 0)
		return -1;
	(*a->tests)++;
	change = st.after - st.before;
	*kept = st.kept = !((a->o->abs_change ? fabs(change) : change) < a->o->tau);
	if (*kept)
		for (int64_t ed = g->recv_first[r]; ed < g->recv_first[r + 1]; ed++)
			a->keep[ed] = 1;
	else
		a->cur = st.after;
	if (a->cb && a->cb(a->cb_ctx, &st, e) < 0)
		return -1;
	if (a->pr && !*kept)
		circ_progress_step(a->pr, st.group);
	return 0;
}

/* Appends upstream node u to order (n) if the edge u->r exists. */
static void push_up(const circ_graph *g, int r, int u, int64_t *order, int *n)
{
	int64_t ed = circ_graph_edge(g, r, u);
	if (ed >= 0)
		order[(*n)++] = ed;
}

/* The edges of receiver r in the reference's order into order (at least
 * n_in(r) long); returns their number. Its upstream "names": the input,
 * each layer's heads (one name) and each layer's MLP, the latest first
 * (names_reverse: the input first); a layer's heads from the last down
 * (indices_reverse: from head 0 up). */
static int reference_edges(const circ_graph *g, const circ_acdc_opts *o, int r, int64_t *order)
{
	int n = 0, n_in = circ_graph_recv_n_in(g, r), L = g->n_layer, H = g->n_head;
	/* names from the latest down: for l = L-1..0 the MLP, then the heads;
	 * then the input. A name absent from r's inputs adds nothing. */
	for (int i = 0; i < 2 * L + 1; i++) {
		int k = o->names_reverse ? 2 * L - i : i; /* k-th name from the latest */
		if (k == 2 * L) {
			push_up(g, r, circ_graph_up_input(g), order, &n);
			continue;
		}
		int l = L - 1 - k / 2;
		if (k % 2 == 0) {
			if (circ_graph_up_mlp(g, l) < n_in)
				push_up(g, r, circ_graph_up_mlp(g, l), order, &n);
			continue;
		}
		for (int j = 0; j < H; j++) {
			int h = o->indices_reverse ? j : H - 1 - j;
			if (circ_graph_up_head(g, l, h) < n_in)
				push_up(g, r, circ_graph_up_head(g, l, h), order, &n);
		}
	}
	return n;
}

/* Tests the edges of receiver r one by one in the reference's order. */
static int decide_edges(acdc_ctx *a, int r, int64_t *order, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(a->ps[0]);
	int stage = circ_patcher_recv_stage(a->ps[0], r);
	int n = reference_edges(g, a->o, r, order);
	for (int i = 0; i < n; i++)
		if (decide(a, stage, &order[i], 1, e) < 0)
			return -1;
	return 0;
}

static const circ_recv_kind vkq[3] = {CIRC_RECV_V, CIRC_RECV_K, CIRC_RECV_Q};

/* One layer in the reference's order (acdc.h). */
static int reference_layer(acdc_ctx *a, int l, int64_t *order, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(a->ps[0]);
	int H = g->n_head, r = circ_graph_recv_mlp(g, l);
	uint8_t *alive = circ_xmalloc((size_t)H * 3); /* (H, 3) whole input kept */
	int rc = -1;
	if (!node_has_output(g, a->keep, circ_graph_up_mlp(g, l)))
		drop_recv(g, a->keep, r);
	else if (decide_edges(a, r, order, e) < 0)
		goto out;
	/* a head's outgoing edges are all decided now: its liveness is final */
	for (int h = 0; h < H; h++) {
		int live = node_has_output(g, a->keep, circ_graph_up_head(g, l, h));
		for (int c = 0; c < 3; c++)
			alive[h * 3 + c] = (uint8_t)live;
	}
	for (int c = 0; c < 3; c++)
		for (int h = H - 1; h >= 0; h--) {
			int kept;
			r = circ_graph_recv_head(g, l, h, vkq[c]);
			if (!alive[h * 3 + c]) {
				drop_recv(g, a->keep, r);
				continue;
			}
			if (decide_whole(a, circ_patcher_recv_stage(a->ps[0], r), r, &kept, e) < 0)
				goto out;
			alive[h * 3 + c] = (uint8_t)kept;
		}
	for (int c = 0; c < 3; c++)
		for (int h = H - 1; h >= 0; h--)
			if (alive[h * 3 + c] &&
			    decide_edges(a, circ_graph_recv_head(g, l, h, vkq[c]), order, e) < 0)
				goto out;
	rc = 0;
out:
	free(alive);
	return rc;
}

static int run_reference(acdc_ctx *a, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(a->ps[0]);
	int64_t *order = circ_xmalloc((size_t)g->n_up * sizeof *order);
	int rc = decide_edges(a, circ_graph_recv_logits(g), order, e);
	for (int l = g->n_layer - 1; rc == 0 && l >= 0; l--)
		rc = reference_layer(a, l, order, e);
	free(order);
	return rc;
}

/* Decides the n edges of list (ACDC's order: the last first) in groups of
 * `group` (1: one by one). */
static int decide_groups(acdc_ctx *a, int stage, const int64_t *list, int64_t n, int64_t group,
			 circ_error *e)
{
	for (int64_t hi = n - 1; hi >= 0; hi -= group) {
		int64_t lo = hi - group + 1 > 0 ? hi - group + 1 : 0;
		if (decide(a, stage, list + lo, hi - lo + 1, e) < 0)
			return -1;
	}
	return 0;
}

/* The screen (acdc.h): drops the edges below the bound into receivers
 * lo..hi-1 at once, measured by one forward, and reports them from the
 * last down. */
static int drop_screened(acdc_ctx *a, int lo, int hi, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(a->ps[0]);
	const double *attr = a->o->screen_attr;
	double bound = a->o->screen * a->o->tau, after;
	int64_t nb = 0;
	int stage = g->topo->n_stage;
	for (int r = lo; r < hi; r++)
		for (int64_t ed = g->recv_first[r]; ed < g->recv_first[r + 1]; ed++)
			if (fabs(attr[ed]) < bound) {
				a->keep[ed] = 0;
				nb++;
				if (circ_patcher_recv_stage(a->ps[0], r) < stage)
					stage = circ_patcher_recv_stage(a->ps[0], r);
			}
	if (nb == 0)
		return 0;
	if (loss(a->ps, a->n, a->keep, stage, &after, e) < 0)
		return -1;
	(*a->tests)++;
	for (int64_t ed = g->recv_first[hi] - 1; ed >= g->recv_first[lo]; ed--) {
		circ_acdc_step st = {ed, -1, a->cur, after, 0, (int)nb, 1};
		if (fabs(attr[ed]) < bound && a->cb && a->cb(a->cb_ctx, &st, e) < 0)
			return -1;
	}
	a->cur = after;
	if (a->pr)
		circ_progress_step(a->pr, nb);
	return 0;
}

/* circ's order (acdc.h): receivers by circ's numbering from the last down,
 * each receiver's edges from the latest upstream node down, in groups of
 * `group` (1: one by one); with the screen, only those at or above its
 * bound, the others dropped first. */
static int run_circ(acdc_ctx *a, int64_t group, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(a->ps[0]);
	const double *attr = a->o->screen_attr;
	int screen = attr && a->o->screen > 0;
	double bound = a->o->screen * a->o->tau;
	int64_t *list = circ_xmalloc((size_t)g->n_up * sizeof *list);
	int rc = screen ? drop_screened(a, 0, g->n_recv, e) : 0;
	for (int r = g->n_recv - 1; rc == 0 && r >= 0; r--) {
		int node, stage = circ_patcher_recv_stage(a->ps[0], r);
		int64_t n = 0;
		circ_graph_recv_info(g, r, NULL, &node);
		if (!node_has_output(g, a->keep, node)) {
			/* unreachable from the logits: its inputs cannot matter */
			drop_recv(g, a->keep, r);
			continue;
		}
		for (int64_t ed = g->recv_first[r]; ed < g->recv_first[r + 1]; ed++)
			if (!screen || fabs(attr[ed]) >= bound)
				list[n++] = ed;
		rc = decide_groups(a, stage, list, n, group, e);
	}
	free(list);
	return rc;
}

int circ_acdc_run(circ_patcher **ps, int n, const circ_acdc_opts *o, uint8_t *keep, circ_acdc_cb cb,
		  void *ctx, int64_t *tests, circ_progress *pr, circ_error *e)
{
	const circ_graph *g = circ_patcher_graph(ps[0]);
	int64_t group = o->group > 1 ? o->group : 1;
	acdc_ctx a = {ps, n, o, keep, cb, ctx, tests, pr, 0};
	int reference = o->order == CIRC_ACDC_ORDER_REFERENCE;
	*tests = 0;
	if (reference && g->level != CIRC_LEVEL_EDGE)
		return circ_errorf(e, "the reference order needs an edge-level graph (its heads "
				      "have q, k and v inputs)");
	if (reference && group > 1)
		return circ_errorf(e, "the reference order tests edges one by one (no groups)");
	if (reference && o->screen_attr && o->screen > 0)
		return circ_errorf(e, "the reference order tests every edge (no screen)");
	memset(keep, 1, (size_t)g->n_edges);
	if (loss(ps, n, keep, g->topo->n_stage, &a.cur, e) < 0)
		return -1;
	if ((reference ? run_reference(&a, e) : run_circ(&a, group, e)) < 0)
		return -1;
	circ_prune_dangling(g, keep);
	return 0;
}
