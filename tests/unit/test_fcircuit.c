/*
 * test_fcircuit: the feature-graph bookkeeping of lib/fcircuit that the
 * Bats tests reach only through the tools: node sets in forward order, the
 * edge pattern's count against a direct enumeration, node and edge names
 * parsed and refused with their messages, and circ_fc_new's refusals (a
 * transcoder, a hook point outside Marks et al.'s, two dictionaries at one
 * point). The numbers (node and edge effects, ablations) are checked
 * against tests/ref/fcircuit_ref.py in tests/fcircuit.bats.
 */
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fcircuit.h"
#include "check.h"

/* A header {"graph": {"type": "feature", "input": input, "dictionaries":
 * [{"name", "d_sae"} ...]}} unpacked into *z (names[i] with d_sae[i]). */
static const msgpack_object *header(msgpack_zone *z, msgpack_sbuffer *sb, const char *input, int n,
				    const char *const *names, const int *d_sae)
{
	msgpack_packer pk;
	msgpack_object *o = malloc(sizeof *o);
	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	circ_pack_str(&pk, "graph");
	msgpack_pack_map(&pk, 3);
	circ_pack_kv_str(&pk, "type", "feature");
	circ_pack_kv_str(&pk, "input", input);
	circ_pack_str(&pk, "dictionaries");
	msgpack_pack_array(&pk, (size_t)n);
	for (int i = 0; i < n; i++) {
		msgpack_pack_map(&pk, 2);
		circ_pack_kv_str(&pk, "name", names[i]);
		circ_pack_kv_i64(&pk, "d_sae", d_sae[i]);
	}
	msgpack_zone_init(z, 2048);
	size_t off = 0;
	if (msgpack_unpack(sb->data, sb->size, &off, z, o) != MSGPACK_UNPACK_SUCCESS)
		abort();
	return o;
}

static int has_resid_between(const circ_fgraph *g, int up, int dn)
{
	for (int j = up + 1; j < dn; j++)
		if (g->slot[j].resid)
			return 1;
	return 0;
}

static void test_graph(void)
{
	circ_error e;
	msgpack_zone z;
	msgpack_sbuffer sb;
	/* given out of order; no embedding dictionary: the input node */
	const char *names[] = {"resid1", "attn0", "mlp1", "resid0", "attn1"};
	const int S[] = {5, 3, 4, 6, 2};
	const msgpack_object *h = header(&z, &sb, "node", 5, names, S);
	circ_fgraph *g = circ_fgraph_from_header(h, &e);
	CHECK_MSG(g != NULL, e);
	if (!g)
		return;
	CHECK(g->n == 6);
	const char *order[] = {"input", "attn0", "resid0", "attn1", "mlp1", "resid1"};
	for (int k = 0; k < 6; k++)
		CHECK(!strcmp(g->slot[k].name, order[k]));
	CHECK(g->n_nodes == 1 + 4 + 7 + 3 + 5 + 6);
	/* the pattern by enumeration: U -> D unless a resid lies between */
	int64_t want = 0;
	for (int dn = 1; dn <= g->n; dn++)
		for (int up = 0; up < dn; up++)
			if (!has_resid_between(g, up, dn))
				want += (int64_t)(g->slot[up].S + 1) *
					(dn == g->n ? 1 : g->slot[dn].S + 1);
	CHECK(g->n_edges == want);
	/* input->attn0, input->resid0, attn0->resid0; resid0->attn1, mlp1, resid1;
	 * attn1->mlp1, resid1; mlp1->resid1; resid1->logits */
	CHECK(want == 1 * 4 + 1 * 7 + 4 * 7 + 7 * 3 + 7 * 5 + 7 * 6 + 3 * 5 + 3 * 6 + 5 * 6 + 6);

	int k, i, uk, ui, dk, di;
	CHECK(circ_fgraph_node(g, "attn1.f2", 8, &k, &i, &e) < 0 &&
	      strstr(e.msg, "feature 2 of 2"));
	CHECK(circ_fgraph_node(g, "resid0.f5", 9, &k, &i, &e) == 0 && k == 2 && i == 5);
	CHECK(circ_fgraph_node(g, "resid0.err", 10, &k, &i, &e) == 0 && k == 2 && i == 6);
	CHECK(circ_fgraph_node(g, "input", 5, &k, &i, &e) == 0 && k == 0 && i == 0);
	CHECK(circ_fgraph_node(g, "logits", 6, &k, &i, &e) == 0 && k == 6);
	CHECK(circ_fgraph_node(g, "resid0.f05", 10, &k, &i, &e) < 0);
	CHECK(circ_fgraph_node(g, "input.err", 9, &k, &i, &e) < 0);
	CHECK(circ_fgraph_node(g, "mlp0.f1", 7, &k, &i, &e) < 0 &&
	      strstr(e.msg, "not a node of this feature graph"));
	const char *ok = "resid0.f1->resid1.err";
	CHECK(circ_fgraph_edge(g, ok, strlen(ok), &uk, &ui, &dk, &di, &e) == 0 && uk == 2 &&
	      ui == 1 && dk == 5 && di == 5);
	const char *skip = "attn0.f1->attn1.f0"; /* resid0 between */
	CHECK(circ_fgraph_edge(g, skip, strlen(skip), &uk, &ui, &dk, &di, &e) < 0 &&
	      strstr(e.msg, "not an edge of the feature graph"));
	const char *back = "resid1.f0->mlp1.f0";
	CHECK(circ_fgraph_edge(g, back, strlen(back), &uk, &ui, &dk, &di, &e) < 0);
	const char *sink = "mlp1.err->logits";
	CHECK(circ_fgraph_edge(g, sink, strlen(sink), &uk, &ui, &dk, &di, &e) < 0);
	const char *noarrow = "resid0.f1";
	CHECK(circ_fgraph_edge(g, noarrow, strlen(noarrow), &uk, &ui, &dk, &di, &e) < 0 &&
	      strstr(e.msg, "no '->'"));
	circ_fgraph_free(g);
	msgpack_zone_destroy(&z);
	msgpack_sbuffer_destroy(&sb);
	free((void *)h);

	/* a dictionary twice; a bad name */
	const char *dup[] = {"attn0", "attn0"};
	const int S2[] = {2, 2};
	h = header(&z, &sb, "node", 2, dup, S2);
	CHECK(!circ_fgraph_from_header(h, &e) && strstr(e.msg, "'attn0' twice"));
	msgpack_zone_destroy(&z);
	msgpack_sbuffer_destroy(&sb);
	free((void *)h);
	const char *bad[] = {"resid_pre03"};
	h = header(&z, &sb, "dictionary", 1, bad, S2);
	CHECK(!circ_fgraph_from_header(h, &e) && strstr(e.msg, "dictionary 0"));
	msgpack_zone_destroy(&z);
	msgpack_sbuffer_destroy(&sb);
	free((void *)h);
}

/* A small in-memory GPT-2 and dictionaries at given hooks. */
static circ_model *tiny_model(void)
{
	circ_config c = {2, 2, 8, 8, 11, 32, 1e-5, CIRC_ACT_GELU_NEW};
	circ_weights w;
	circ_error e;
	circ_model *m;
	circ_weights_alloc(&w, &c);
	for (size_t i = 0; i < w.n_params; i++)
		w.mem[i] = (float)((int)(i * 7919 % 200) - 100) * 0.001f;
	m = circ_model_new(&c, &w, &e);
	if (!m)
		fprintf(stderr, "tiny_model: %s\n", e.msg);
	return m;
}

static circ_dict *sae(const char *hook, int transcoder)
{
	circ_dict_cfg c;
	circ_error e;
	circ_dict_cfg_init(&c);
	c.d_in = c.d_out = 8;
	c.d_sae = 4;
	snprintf(c.hook_name, sizeof c.hook_name, "%s", hook);
	if (transcoder) {
		c.transcoder = 1;
		snprintf(c.hook_out, sizeof c.hook_out, "blocks.0.hook_mlp_out");
	}
	return circ_dict_new(&c, &e);
}

static void test_refusals(void)
{
	circ_error e;
	circ_fc_opts o;
	circ_model *m = tiny_model();
	CHECK(m != NULL);
	if (!m)
		return;
	circ_fc_opts_default(&o);
	CHECK(o.steps == 10 && o.edges == 1 && o.method == CIRC_FC_ATP);
	struct {
		const char *hook;
		int tc;
		const char *want;
	} cases[] = {
	    {"blocks.0.hook_resid_mid", 0, "is not a feature-circuit point"},
	    {"blocks.1.hook_mlp_in", 0, "is not a feature-circuit point"},
	    {"blocks.0.ln2.hook_normalized", 1, "a transcoder"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		circ_dict *d = sae(cases[i].hook, cases[i].tc);
		circ_dict_set set = {1, &d};
		CHECK(d != NULL);
		circ_fc *fc = d ? circ_fc_new(m, &set, &o, 2, 8, &e) : NULL;
		CHECK(!fc && strstr(e.msg, cases[i].want));
		circ_fc_free(fc);
		circ_dict_free(d);
	}
	circ_dict *two[2] = {sae("blocks.1.hook_attn_out", 0), sae("blocks.1.hook_attn_out", 0)};
	circ_dict_set set2 = {2, two};
	CHECK(!circ_fc_new(m, &set2, &o, 2, 8, &e) && strstr(e.msg, "a second dictionary"));
	/* a good set: forward order, input added */
	circ_dict *good[3] = {sae("blocks.1.hook_resid_post", 0), sae("blocks.0.hook_mlp_out", 0),
			      sae("blocks.0.hook_attn_out", 0)};
	circ_dict_set set3 = {3, good};
	circ_fc *fc = circ_fc_new(m, &set3, &o, 2, 8, &e);
	CHECK_MSG(fc != NULL, e);
	if (fc) {
		char name[32];
		CHECK(circ_fc_n_slots(fc) == 4);
		CHECK(!strcmp(circ_fc_slot_get(fc, 0)->name, "input"));
		CHECK(!strcmp(circ_fc_slot_get(fc, 1)->name, "attn0"));
		CHECK(!strcmp(circ_fc_slot_get(fc, 3)->name, "resid1"));
		circ_fc_node_name(fc, 2, 4, name, sizeof name);
		CHECK(!strcmp(name, "mlp0.err"));
		circ_fc_node_name(fc, 4, 0, name, sizeof name);
		CHECK(!strcmp(name, "logits"));
	}
	circ_fc_free(fc);
	for (int i = 0; i < 3; i++)
		circ_dict_free(good[i]);
	circ_dict_free(two[0]);
	circ_dict_free(two[1]);
	circ_model_free(m);
}

int main(void)
{
	test_graph();
	test_refusals();
	if (failures) {
		fprintf(stderr, "test_fcircuit: %d failures\n", failures);
		return 1;
	}
	printf("test_fcircuit: ok\n");
	return 0;
}
