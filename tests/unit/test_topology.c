/*
 * test_topology: lib/topology, the one place that numbers nodes, receivers,
 * stages and edges.
 *
 * The reference twin is the numbering as it was written out, formula by
 * formula, in model.c, graph.c, patch.c and attrib.c before the topology
 * replaced them (old_* below): for several shapes, at both levels, the
 * topology and the model's numbering API must give the same indices. GPT-2
 * small's counts and its canonical edge order (checked against the graph's
 * edge names) are pinned. Then what only the topology does: sparse edge
 * lists (circ_topology_restrict), grouped key/value heads, parallel blocks,
 * receiver kinds left out, and the sparse feature layout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "model.h"
#include "rng.h"
#include "topology.h"
#include "check.h"

/* ---- the old formulas (model.c, graph.c, patch.c, attrib.c) ---- */

static int old_n_up(int L, int H)
{
	return 1 + L * (H + 1);
}
static int old_node_head(int H, int l, int h)
{
	return 1 + l * (H + 1) + h;
}
static int old_node_mlp(int H, int l)
{
	return 1 + l * (H + 1) + H;
}
static int old_per(int H, int node_level)
{
	return node_level ? H + 1 : 3 * H + 1;
}
static int old_n_recv(int L, int H, int node_level)
{
	return L * old_per(H, node_level) + 1;
}
static int old_recv_head(int H, int node_level, int l, int h, int c)
{
	return node_level ? l * (H + 1) + h : l * (3 * H + 1) + 3 * h + c;
}
static int old_recv_mlp(int H, int node_level, int l)
{
	return l * old_per(H, node_level) + old_per(H, node_level) - 1;
}
/* model.c: circ_recv_stage (edge level) */
static int old_recv_stage(int L, int H, int recv)
{
	int per = 3 * H + 1, l = recv / per;
	if (l >= L)
		return 2 * L;
	return 2 * l + (recv % per == 3 * H);
}
/* model.c: circ_node_stage */
static int old_node_stage(int H, int node)
{
	if (node == 0)
		return -1;
	return 2 * ((node - 1) / (H + 1)) + ((node - 1) % (H + 1) == H);
}
/* graph.c: circ_graph_recv_n_in */
static int old_recv_n_in(int L, int H, int node_level, int r)
{
	int per = old_per(H, node_level), layer = r / per, within = r % per;
	int below = 1 + layer * (H + 1);
	if (r == old_n_recv(L, H, node_level) - 1)
		return old_n_up(L, H);
	return within == per - 1 ? below + H : below;
}
/* patch.c: stage_n_in */
static int old_stage_n_in(int L, int H, int s)
{
	if (s >= 2 * L)
		return old_n_up(L, H);
	return 1 + (s / 2) * (H + 1) + (s % 2 ? H : 0);
}

static void check_against_old(int L, int H, circ_graph_level level)
{
	int nl = level == CIRC_LEVEL_NODE;
	circ_topo_desc d;
	circ_error e;
	circ_topology *t;
	int64_t edges = 0;
	circ_topo_desc_init(&d, L, H);
	d.level = level;
	t = circ_topology_new(&d, &e);
	CHECK_MSG(t != NULL, e);
	if (!t)
		return;
	CHECK(t->n_up == old_n_up(L, H) && t->n_nodes == t->n_up + 1);
	CHECK(t->n_recv == old_n_recv(L, H, nl));
	CHECK(t->n_stage == 2 * L + 1 && t->dense && t->n_dense == t->n_up);
	CHECK(circ_topo_node_input(t) == 0 && circ_topo_node_logits(t) == old_n_up(L, H));
	CHECK(circ_topo_recv_logits(t) == old_n_recv(L, H, nl) - 1);
	for (int l = 0; l < L; l++) {
		CHECK(circ_topo_node_mlp(t, l) == old_node_mlp(H, l));
		CHECK(circ_topo_recv_mlp(t, l) == old_recv_mlp(H, nl, l));
		CHECK(circ_topo_stage_attn(t, l) == 2 * l &&
		      circ_topo_stage_mlp(t, l) == 2 * l + 1);
		for (int h = 0; h < H; h++) {
			CHECK(circ_topo_node_head(t, l, h) == old_node_head(H, l, h));
			for (int c = 0; c < 3; c++)
				CHECK(circ_topo_recv_head(t, l, h, (circ_recv_kind)c) ==
				      old_recv_head(H, nl, l, h, c));
		}
	}
	for (int r = 0; r < t->n_recv; r++) {
		CHECK(circ_topo_recv_n_in(t, r) == old_recv_n_in(L, H, nl, r));
		CHECK(t->recv_first[r] == edges);
		edges += old_recv_n_in(L, H, nl, r);
		if (!nl)
			CHECK(t->recv[r].stage == old_recv_stage(L, H, r));
	}
	CHECK(t->n_edges == edges && t->recv_first[t->n_recv] == edges);
	for (int u = 0; u < t->n_up; u++)
		CHECK(t->node[u].stage == old_node_stage(H, u));
	for (int s = 0; s < t->n_stage; s++) {
		const circ_topo_stage *st = &t->stage[s];
		CHECK(st->n_in == old_stage_n_in(L, H, s));
		/* attrib.c's units: stage s makes the heads (even s) or the MLP */
		if (s < 2 * L) {
			int l = s / 2;
			CHECK(st->first_node ==
			      (s % 2 ? old_node_mlp(H, l) : old_node_head(H, l, 0)));
			CHECK(st->n_node == (s % 2 ? 1 : H));
			/* attrib.c's accumulate: first model receiver, count */
			if (!nl)
				CHECK(st->first_recv ==
					  (s % 2 ? l * (3 * H + 1) + 3 * H : l * (3 * H + 1)) &&
				      st->n_recv == (s % 2 ? 1 : 3 * H));
		} else {
			CHECK(st->kind == CIRC_STAGE_FINAL && st->n_node == 0 && st->n_recv == 1);
		}
	}
	/* every edge where the dense rule puts it, and nowhere else */
	for (int r = 0; r < t->n_recv; r++)
		for (int u = 0; u < t->n_up; u++)
			CHECK(circ_topo_edge(t, r, u) ==
			      (u < old_recv_n_in(L, H, nl, r) ? t->recv_first[r] + u : -1));
	CHECK(circ_topo_edge(t, -1, 0) == -1 && circ_topo_edge(t, t->n_recv, 0) == -1 &&
	      circ_topo_edge(t, 0, -1) == -1);
	circ_topology_free(t);
}

/* The model's numbering API (which the forward, patch and attrib use) on a
 * tiny in-memory model of the shape. */
static void check_model_against_old(int L, int H)
{
	circ_config c = {L, H, 2 * H, 8, 11, 4 * H, 1e-5, CIRC_ACT_GELU_NEW};
	circ_weights w;
	circ_error e;
	circ_model *m;
	circ_weights_alloc(&w, &c);
	m = circ_model_new(&c, &w, &e);
	CHECK_MSG(m != NULL, e);
	if (!m)
		return;
	CHECK(circ_model_n_up(m) == old_n_up(L, H) && circ_model_n_recv(m) == old_n_recv(L, H, 0));
	CHECK(circ_recv_logits(m) == L * (3 * H + 1) && circ_node_input(m) == 0);
	for (int l = 0; l < L; l++) {
		CHECK(circ_node_mlp(m, l) == old_node_mlp(H, l));
		CHECK(circ_recv_mlp(m, l) == old_recv_mlp(H, 0, l));
		for (int h = 0; h < H; h++) {
			CHECK(circ_node_head(m, l, h) == old_node_head(H, l, h));
			CHECK(circ_recv_qkv(m, l, h, CIRC_RECV_Q) == old_recv_head(H, 0, l, h, 0));
			CHECK(circ_recv_qkv(m, l, h, CIRC_RECV_K) == old_recv_head(H, 0, l, h, 1));
			CHECK(circ_recv_qkv(m, l, h, CIRC_RECV_V) == old_recv_head(H, 0, l, h, 2));
		}
	}
	for (int r = 0; r < circ_model_n_recv(m); r++)
		CHECK(circ_recv_stage(m, r) == old_recv_stage(L, H, r));
	for (int u = 0; u < circ_model_n_up(m); u++)
		CHECK(circ_node_stage(m, u) == old_node_stage(H, u));
	circ_model_free(m);
}

/* GPT-2 small: counts, and the canonical edge order against the names. */
static void test_gpt2_small(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(12, 12, CIRC_LEVEL_EDGE, &e);
	circ_graph *gn = circ_graph_new(12, 12, CIRC_LEVEL_NODE, &e);
	char got[CIRC_NAME_MAX], want[3 * CIRC_NAME_MAX], up[CIRC_NAME_MAX];
	int64_t i = 0, bad = 0;
	CHECK(g && gn);
	if (!g || !gn)
		return;
	CHECK(g->topo->n_nodes == 158 && g->n_nodes == 158);
	CHECK(g->topo->n_edges == 32491 && g->n_edges == 32491);
	CHECK(gn->topo->n_edges == 11611 && gn->n_edges == 11611);
	/* walk receivers as EAP-IG does: per layer the heads' q, k, v, then
	 * the MLP, then logits; each reads everything before it */
	for (int l = 0; l <= 12; l++) {
		for (int j = 0; j < (l < 12 ? 37 : 1); j++) {
			char recv[CIRC_NAME_MAX];
			int n_in;
			if (l == 12)
				snprintf(recv, sizeof recv, "logits"), n_in = 1 + 12 * 13;
			else if (j == 36)
				snprintf(recv, sizeof recv, "m%d", l), n_in = 1 + l * 13 + 12;
			else
				snprintf(recv, sizeof recv, "a%d.h%d<%c>", l, j / 3, "qkv"[j % 3]),
				    n_in = 1 + l * 13;
			for (int u = 0; u < n_in; u++, i++) {
				if (u == 0)
					snprintf(up, sizeof up, "input");
				else if ((u - 1) % 13 == 12)
					snprintf(up, sizeof up, "m%d", (u - 1) / 13);
				else
					snprintf(up, sizeof up, "a%d.h%d", (u - 1) / 13,
						 (u - 1) % 13);
				snprintf(want, sizeof want, "%s->%s", up, recv);
				if (i >= g->n_edges) {
					bad++;
					continue;
				}
				circ_graph_edge_name(g, i, got, sizeof got);
				bad += strcmp(got, want) != 0;
			}
		}
	}
	CHECK(i == 32491 && bad == 0);
	circ_graph_free(g);
	circ_graph_free(gn);
}

/* Sparse edge lists: a restricted topology finds exactly the kept edges, in
 * canonical order; keeping everything gives the dense topology back. */
static void test_sparse(void)
{
	circ_topo_desc d;
	circ_error e;
	circ_topology *t, *s, *all;
	uint8_t *keep, *ones;
	circ_rng rng;
	int64_t kept = 0, k = 0;
	circ_topo_desc_init(&d, 3, 4);
	t = circ_topology_new(&d, &e);
	CHECK_MSG(t != NULL, e);
	if (!t)
		return;
	keep = malloc((size_t)t->n_edges);
	ones = malloc((size_t)t->n_edges);
	circ_rng_seed(&rng, 7);
	for (int64_t i = 0; i < t->n_edges; i++) {
		keep[i] = circ_rng_below(&rng, 3) == 0;
		kept += keep[i];
		ones[i] = 1;
	}
	s = circ_topology_restrict(t, keep);
	CHECK(!s->dense && s->n_edges == kept && s->n_recv == t->n_recv);
	CHECK(s->node[5].kind == t->node[5].kind && s->stage[3].n_in == t->stage[3].n_in);
	CHECK(circ_topo_recv_mlp(s, 1) == circ_topo_recv_mlp(t, 1));
	for (int r = 0; r < t->n_recv; r++)
		for (int u = 0; u < t->n_up; u++) {
			int64_t full = circ_topo_edge(t, r, u), sp = circ_topo_edge(s, r, u);
			if (full >= 0 && keep[full]) {
				CHECK(sp == k && s->edge_up[sp] == u && s->edge_recv[sp] == r);
				k++;
			} else {
				CHECK(sp == -1);
			}
		}
	CHECK(k == kept && !circ_topology_same(s, t));
	all = circ_topology_restrict(t, ones);
	CHECK(all->dense && circ_topology_same(all, t));
	circ_topology_free(all);
	circ_topology_free(s);
	circ_topology_free(t);
	free(keep);
	free(ones);
}

/* Grouped key/value heads, parallel blocks, receiver kinds left out. */
static void test_shapes(void)
{
	circ_topo_desc d;
	circ_error e;
	circ_topology *t;
	/* 2 layers, 4 heads in 2 groups: per layer 4 q + 2 k + 2 v + mlp */
	circ_topo_desc_init(&d, 2, 4);
	d.n_kv_head = 2;
	t = circ_topology_new(&d, &e);
	CHECK_MSG(t != NULL, e);
	if (t) {
		int k0 = circ_topo_recv_head(t, 1, 0, CIRC_RECV_K);
		CHECK(t->n_recv == 2 * 9 + 1 && t->n_up == 11);
		CHECK(circ_topo_recv_head(t, 1, 1, CIRC_RECV_K) == k0);
		CHECK(circ_topo_recv_head(t, 1, 3, CIRC_RECV_V) ==
		      circ_topo_recv_head(t, 1, 2, CIRC_RECV_V));
		CHECK(k0 != circ_topo_recv_head(t, 1, 2, CIRC_RECV_K));
		CHECK(t->recv[k0].group == 0 && t->recv[k0].node == circ_topo_node_head(t, 1, 0));
		CHECK(t->node[circ_topo_node_head(t, 1, 1)].n_recv == 1);
		CHECK(t->n_edges == 8 * 1 + 5 + 8 * 6 + 10 + 11);
		circ_topology_free(t);
	}
	/* parallel blocks: one stage per layer; the MLP does not read its
	 * layer's heads */
	circ_topo_desc_init(&d, 3, 2);
	d.block = CIRC_BLOCK_PARALLEL;
	t = circ_topology_new(&d, &e);
	CHECK_MSG(t != NULL, e);
	if (t) {
		CHECK(t->n_stage == 4 && t->stage[1].kind == CIRC_STAGE_BLOCK);
		CHECK(circ_topo_stage_attn(t, 2) == 2 && circ_topo_stage_mlp(t, 2) == 2);
		CHECK(circ_topo_recv_n_in(t, circ_topo_recv_mlp(t, 1)) == 4);
		CHECK(t->stage[1].first_node == 4 && t->stage[1].n_node == 3);
		CHECK(t->node[circ_topo_node_mlp(t, 1)].stage == 1);
		circ_topology_free(t);
	}
	/* no q receivers: heads keep k and v */
	circ_topo_desc_init(&d, 1, 2);
	d.recv_kinds = CIRC_RECV_BIT(CIRC_RECV_K) | CIRC_RECV_BIT(CIRC_RECV_V) |
		       CIRC_RECV_BIT(CIRC_RECV_MLP) | CIRC_RECV_BIT(CIRC_RECV_LOGITS);
	t = circ_topology_new(&d, &e);
	CHECK_MSG(t != NULL, e);
	if (t) {
		CHECK(t->n_recv == 6 && circ_topo_recv_head(t, 0, 1, CIRC_RECV_Q) == -1);
		CHECK(circ_topo_recv_head(t, 0, 1, CIRC_RECV_K) == 2);
		circ_topology_free(t);
	}
	/* bad descriptions are errors, not asserts */
	circ_topo_desc_init(&d, 2, 4);
	d.n_kv_head = 3;
	CHECK(circ_topology_new(&d, &e) == NULL && strstr(e.msg, "key/value"));
	circ_topo_desc_init(&d, 0, 4);
	CHECK(circ_topology_new(&d, &e) == NULL && strstr(e.msg, "n_layer"));
	circ_topo_desc_init(&d, 2, 4);
	d.recv_kinds = CIRC_RECV_BIT(CIRC_RECV_MLP) | CIRC_RECV_BIT(CIRC_RECV_LOGITS);
	CHECK(circ_topology_new(&d, &e) == NULL && strstr(e.msg, "without receivers"));
	d.recv_kinds = CIRC_RECV_BIT(CIRC_RECV_HEAD) | CIRC_RECV_BIT(CIRC_RECV_LOGITS);
	CHECK(circ_topology_new(&d, &e) == NULL && strstr(e.msg, "not of this level"));
}

/* Mapping a node-level receiver to the model's and back. */
static void test_map(void)
{
	circ_topo_desc d;
	circ_error e;
	circ_topology *te, *tn;
	circ_topo_desc_init(&d, 2, 3);
	te = circ_topology_new(&d, &e);
	d.level = CIRC_LEVEL_NODE;
	tn = circ_topology_new(&d, &e);
	CHECK(te && tn);
	if (!te || !tn)
		return;
	for (int l = 0; l < 2; l++)
		for (int h = 0; h < 3; h++)
			for (int c = 0; c < 3; c++)
				CHECK(
				    circ_topo_map_recv(te, circ_topo_recv_head(te, l, h, c), tn) ==
				    circ_topo_recv_head(tn, l, h, CIRC_RECV_HEAD));
	CHECK(circ_topo_map_recv(te, circ_topo_recv_mlp(te, 1), tn) == circ_topo_recv_mlp(tn, 1));
	CHECK(circ_topo_map_recv(tn, circ_topo_recv_logits(tn), te) == circ_topo_recv_logits(te));
	CHECK(circ_topo_map_recv(te, circ_topo_recv_head(te, 1, 2, CIRC_RECV_V), te) ==
	      circ_topo_recv_head(te, 1, 2, CIRC_RECV_V));
	circ_topology_free(te);
	circ_topology_free(tn);
}

/* The sparse feature layout: a feature's dense row is act * decoder row
 * where it is active, and the features of a row sum to the reconstruction. */
static void test_sparse_acts(void)
{
	/* 3 rows, 4 features, C = 2: row 0 {1: 2.0, 3: -1.0}, row 1 {}, row 2 {1: 0.5} */
	int64_t row_ptr[] = {0, 2, 2, 3};
	int32_t feat[] = {1, 3, 1};
	float act[] = {2.0f, -1.0f, 0.5f};
	float dec[] = {9, 9, 1, 2, 9, 9, 3, 4};
	circ_sparse_acts a = {3, 4, row_ptr, feat, act, dec};
	float out[6] = {0}, rec[6] = {0};
	circ_sparse_acts_add_node(out, &a, 1, 2);
	CHECK(out[0] == 2 && out[1] == 4 && out[2] == 0 && out[3] == 0 && out[4] == 0.5f &&
	      out[5] == 1);
	memset(out, 0, sizeof out);
	circ_sparse_acts_add_node(out, &a, 0, 2);
	CHECK(out[0] == 0 && out[1] == 0 && out[4] == 0);
	for (int f = 0; f < 4; f++)
		circ_sparse_acts_add_node(rec, &a, f, 2);
	CHECK(rec[0] == 2 - 3 && rec[1] == 4 - 4 && rec[2] == 0 && rec[4] == 0.5f);
}

int main(void)
{
	int shapes[][2] = {{1, 1}, {1, 3}, {2, 1}, {4, 4}, {12, 12}, {3, 7}, {5, 2}};
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		check_against_old(shapes[i][0], shapes[i][1], CIRC_LEVEL_EDGE);
		check_against_old(shapes[i][0], shapes[i][1], CIRC_LEVEL_NODE);
		check_model_against_old(shapes[i][0], shapes[i][1]);
	}
	test_gpt2_small();
	test_sparse();
	test_shapes();
	test_map();
	test_sparse_acts();
	if (failures) {
		fprintf(stderr, "test_topology: %d failures\n", failures);
		return 1;
	}
	printf("test_topology: ok\n");
	return 0;
}
