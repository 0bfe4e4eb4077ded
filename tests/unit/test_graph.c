/*
 * test_graph: the computational graph's shape, numbering and names.
 *
 * The reference twin here is a second, deliberately naive enumeration of the
 * edges, written the way EAP-IG builds its graph (walk the layers, connect
 * everything already in the residual stream to the new receivers) and keyed
 * by name. The fast arithmetic in lib/graph.c must produce the same set of
 * names, and every name must parse back to its own index.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "stream.h"
#include "check.h"

/* Naive enumeration: names of all edges, EAP-IG style, into a malloc'd
 * array of malloc'd strings. */
static char **naive_edges(int L, int H, int node_level, int64_t *count)
{
	char **out = NULL;
	int64_t n = 0, cap = 0;
	char(*stream)[32] = malloc(sizeof *stream * (size_t)(1 + L * (H + 1)));
	int ns = 0;
	char buf[96];
	snprintf(stream[ns++], 32, "input");
#define ADD()                                                                                      \
	do {                                                                                       \
		if (n == cap) {                                                                    \
			cap = cap ? 2 * cap : 1024;                                                \
			out = realloc(out, sizeof *out * (size_t)cap);                             \
		}                                                                                  \
		out[n++] = strdup(buf);                                                            \
	} while (0)
	for (int l = 0; l < L; l++) {
		for (int s = 0; s < ns; s++)
			for (int h = 0; h < H; h++) {
				if (node_level) {
					snprintf(buf, sizeof buf, "%s->a%d.h%d", stream[s], l, h);
					ADD();
				} else {
					for (const char *c = "qkv"; *c; c++) {
						snprintf(buf, sizeof buf, "%s->a%d.h%d<%c>",
							 stream[s], l, h, *c);
						ADD();
					}
				}
			}
		for (int h = 0; h < H; h++)
			snprintf(stream[ns++], 32, "a%d.h%d", l, h);
		for (int s = 0; s < ns; s++) {
			snprintf(buf, sizeof buf, "%s->m%d", stream[s], l);
			ADD();
		}
		snprintf(stream[ns++], 32, "m%d", l);
	}
	for (int s = 0; s < ns; s++) {
		snprintf(buf, sizeof buf, "%s->logits", stream[s]);
		ADD();
	}
	free(stream);
	*count = n;
	return out;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every edge name parses back to its index; the names equal the naive set;
 * the mask agrees with edge lookups. */
static void check_against_naive(int L, int H, circ_graph_level level)
{
	circ_error e;
	circ_graph *g = circ_graph_new(L, H, level, &e);
	CHECK(g != NULL);
	if (!g)
		return;
	int64_t nn;
	char **naive = naive_edges(L, H, level == CIRC_LEVEL_NODE, &nn);
	CHECK(nn == g->n_edges);
	char **mine = malloc(sizeof *mine * (size_t)g->n_edges);
	char name[CIRC_NAME_MAX];
	for (int64_t i = 0; i < g->n_edges; i++) {
		circ_graph_edge_name(g, i, name, sizeof name);
		mine[i] = strdup(name);
		int64_t back = -1;
		int rc = circ_graph_parse_edge(g, name, strlen(name), &back, &e);
		CHECK(rc == 0 && back == i);
		if (rc != 0)
			fprintf(stderr, "  %s: %s\n", name, e.msg);
		/* canonical order: by receiver, then upstream */
		if (i > 0)
			CHECK(g->edge_recv[i] > g->edge_recv[i - 1] ||
			      (g->edge_recv[i] == g->edge_recv[i - 1] &&
			       g->edge_up[i] == g->edge_up[i - 1] + 1));
	}
	if (nn == g->n_edges) {
		qsort(mine, (size_t)nn, sizeof *mine, cmp_str);
		qsort(naive, (size_t)nn, sizeof *naive, cmp_str);
		for (int64_t i = 0; i < nn; i++)
			if (strcmp(mine[i], naive[i])) {
				CHECK(!"edge name sets differ");
				fprintf(stderr, "  %s vs %s\n", mine[i], naive[i]);
				break;
			}
	}
	int64_t in_mask = 0;
	for (int r = 0; r < g->n_recv; r++)
		for (int u = 0; u < g->n_up; u++) {
			int m = g->mask[(size_t)r * (size_t)g->n_up + (size_t)u];
			in_mask += m;
			CHECK((circ_graph_edge(g, r, u) >= 0) == m);
		}
	CHECK(in_mask == g->n_edges);
	for (int64_t i = 0; i < nn; i++)
		free(naive[i]);
	for (int64_t i = 0; i < g->n_edges; i++)
		free(mine[i]);
	free(naive);
	free(mine);
	circ_graph_free(g);
}

static void expect_bad_edge(const circ_graph *g, const char *s, const char *want)
{
	circ_error e;
	int64_t idx;
	e.msg[0] = 0;
	int rc = circ_graph_parse_edge(g, s, strlen(s), &idx, &e);
	CHECK(rc == -1);
	if (rc == 0 || !strstr(e.msg, want)) {
		fprintf(stderr, "  edge '%s': got '%s', want '%s'\n", s, rc ? e.msg : "ok", want);
		failures++;
	}
}

static void expect_edge(const circ_graph *g, const char *s, int r, int u)
{
	circ_error e;
	int64_t idx = -1;
	int rc = circ_graph_parse_edge(g, s, strlen(s), &idx, &e);
	CHECK(rc == 0);
	if (rc)
		fprintf(stderr, "  %s: %s\n", s, e.msg);
	else
		CHECK(g->edge_recv[idx] == r && g->edge_up[idx] == u);
}

static void test_gpt2_small(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(12, 12, CIRC_LEVEL_EDGE, &e);
	CHECK(g && g->n_nodes == 158 && g->n_edges == 32491);
	CHECK(g->n_up == 157 && g->n_recv == 12 * 37 + 1);
	char name[CIRC_NAME_MAX];
	circ_graph_edge_name(g, 0, name, sizeof name);
	CHECK(!strcmp(name, "input->a0.h0<q>"));
	circ_graph_edge_name(g, 1, name, sizeof name);
	CHECK(!strcmp(name, "input->a0.h0<k>"));
	circ_graph_edge_name(g, g->n_edges - 1, name, sizeof name);
	CHECK(!strcmp(name, "m11->logits"));
	/* numbering agreed with the model code */
	CHECK(circ_graph_up_head(g, 0, 1) == 2);
	CHECK(circ_graph_up_mlp(g, 0) == 13);
	CHECK(circ_graph_up_head(g, 1, 0) == 14);
	CHECK(circ_graph_up_mlp(g, 11) == 156);
	CHECK(circ_graph_recv_head(g, 2, 3, 1) == 2 * 37 + 3 * 3 + 1);
	CHECK(circ_graph_recv_mlp(g, 0) == 36);
	CHECK(circ_graph_recv_logits(g) == 444);
	CHECK(circ_graph_recv_n_in(g, circ_graph_recv_head(g, 2, 0, 0)) == 27);
	CHECK(circ_graph_recv_n_in(g, circ_graph_recv_mlp(g, 2)) == 39);
	CHECK(circ_graph_recv_n_in(g, 444) == 157);

	expect_edge(g, "a0.h1->a2.h3<q>", circ_graph_recv_head(g, 2, 3, 0), 2);
	expect_edge(g, "a0.h1->a2.h3<v>", circ_graph_recv_head(g, 2, 3, 2), 2);
	expect_edge(g, "input->m0", 36, 0);
	expect_edge(g, "a0.h1->m0", 36, 2);
	expect_edge(g, "a0.h11->m0", 36, 12);
	expect_edge(g, "m3->logits", 444, circ_graph_up_mlp(g, 3));
	expect_edge(g, "m10->a11.h11<k>", circ_graph_recv_head(g, 11, 11, 1),
		    circ_graph_up_mlp(g, 10));

	expect_bad_edge(g, "a12.h0->logits", "no layer 12 (the graph has layers 0-11)");
	expect_bad_edge(g, "input->a0.h12<q>", "no head 12 (the graph has heads 0-11)");
	expect_bad_edge(g, "a01.h1->logits", "not a node name");
	expect_bad_edge(g, "a0.h1 ->logits", "not a node name");
	expect_bad_edge(g, "a-1.h1->logits", "not a node name");
	expect_bad_edge(g, "input->logits ", "not a node name");
	expect_bad_edge(g, "m3->a2.h0<q>", "no such edge");
	expect_bad_edge(g, "m2->m2", "no such edge");
	expect_bad_edge(g, "a2.h0->a2.h1<q>", "no such edge");
	expect_bad_edge(g, "input->a0.h0", "needs its receiver");
	expect_bad_edge(g, "input->m0<q>", "only heads");
	expect_bad_edge(g, "input->a0.h0<x>", "bad receiver <x>");
	expect_bad_edge(g, "logits->m0", "logits feeds nothing");
	expect_bad_edge(g, "a0.h0->input", "input receives nothing");
	expect_bad_edge(g, "input", "not an edge name");
	expect_bad_edge(g, "", "not an edge name");
	expect_bad_edge(g, "input->", "not a node name");
	expect_bad_edge(g, "m99999999999999->logits", "not a node name");

	int node;
	CHECK(circ_graph_parse_node(g, "a11.h11", 7, &node, &e) == 0 && node == 155);
	CHECK(circ_graph_parse_node(g, "logits", 6, &node, &e) == 0 && node == 157);
	CHECK(circ_graph_parse_node(g, "logitsx", 7, &node, &e) == -1);
	CHECK(circ_graph_parse_node(g, "m", 1, &node, &e) == -1);
	/* not NUL-terminated input */
	CHECK(circ_graph_parse_node(g, "m1xyz", 2, &node, &e) == 0 && node == 26);

	/* receivers of nodes and their inverse */
	for (int n = 0; n < g->n_nodes; n++) {
		int first, k = circ_graph_node_recvs(g, n, &first);
		for (int i = 0; i < k; i++) {
			int owner;
			circ_graph_recv_info(g, first + i, NULL, &owner);
			CHECK(owner == n);
		}
	}
	circ_graph_recv_name(g, circ_graph_recv_head(g, 2, 3, 2), name, sizeof name);
	CHECK(!strcmp(name, "a2.h3<v>"));

	/* --list-edges */
	FILE *f = tmpfile();
	CHECK(f && circ_graph_write_edges(g, f, &e) == 0);
	rewind(f);
	int64_t lines = 0;
	int ch;
	while ((ch = getc(f)) != EOF)
		lines += ch == '\n';
	CHECK(lines == 32491);
	fclose(f);
	circ_graph_free(g);
}

static void test_node_level(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(12, 12, CIRC_LEVEL_NODE, &e);
	CHECK(g && g->n_edges == 11611 && g->n_nodes == 158 && g->n_recv == 12 * 13 + 1);
	expect_edge(g, "a0.h1->a2.h3", circ_graph_recv_head(g, 2, 3, 0), 2);
	expect_bad_edge(g, "a0.h1->a2.h3<q>", "node-level");
	char name[CIRC_NAME_MAX];
	circ_graph_edge_name(g, 0, name, sizeof name);
	CHECK(!strcmp(name, "input->a0.h0"));
	/* node-level receiver index is node index - 1 */
	for (int r = 0; r < g->n_recv; r++) {
		int owner;
		circ_graph_recv_info(g, r, NULL, &owner);
		CHECK(owner == r + 1);
	}
	circ_graph_free(g);
}

static void test_header(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(3, 5, CIRC_LEVEL_NODE, &e);
	g->input = CIRC_INPUT_ACDC;
	msgpack_sbuffer sb;
	msgpack_sbuffer_init(&sb);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	circ_pack_str(&pk, "graph");
	circ_graph_pack(&pk, g);
	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	CHECK(msgpack_unpack_next(&up, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS);
	circ_graph *h = circ_graph_from_header(&up.data, &e);
	CHECK(h && circ_graph_same(g, h));
	circ_graph_free(h);
	/* missing field */
	h = circ_graph_from_header(&up.data.via.map.ptr[0].val, &e);
	CHECK(!h && strstr(e.msg, "no 'graph' field"));
	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&sb);

	/* bad shape */
	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	circ_pack_kv_i64(&pk, "n_layer", 0);
	circ_pack_kv_i64(&pk, "n_head", 4);
	circ_pack_kv_str(&pk, "level", "edge");
	msgpack_unpacked_init(&up);
	CHECK(msgpack_unpack_next(&up, sb.data, sb.size, NULL) == MSGPACK_UNPACK_SUCCESS);
	h = circ_graph_from_obj(&up.data, &e);
	CHECK(!h && strstr(e.msg, "out of range"));
	msgpack_unpacked_destroy(&up);
	msgpack_sbuffer_destroy(&sb);
	circ_graph_free(g);

	CHECK(circ_graph_new(0, 1, CIRC_LEVEL_EDGE, &e) == NULL);
	CHECK(circ_graph_new(1, CIRC_GRAPH_MAX_HEAD + 1, CIRC_LEVEL_EDGE, &e) == NULL);
}

int main(void)
{
	test_gpt2_small();
	test_node_level();
	test_header();
	int shapes[][2] = {{1, 1}, {1, 3}, {2, 1}, {4, 4}, {12, 12}, {3, 7}};
	for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
		check_against_naive(shapes[i][0], shapes[i][1], CIRC_LEVEL_EDGE);
		check_against_naive(shapes[i][0], shapes[i][1], CIRC_LEVEL_NODE);
	}
	if (failures) {
		fprintf(stderr, "test_graph: %d failures\n", failures);
		return 1;
	}
	printf("test_graph: ok\n");
	return 0;
}
