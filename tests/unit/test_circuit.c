/*
 * test_circuit: edge selection, dangling-edge pruning and the circuit and
 * scores streams.
 *
 * Reference twins: a naive greedy selection (scan every candidate at every
 * step) against the heap version, and EAP-IG's pruning fixpoint
 * (circ_prune_dangling_ref) against the two-sweep version, on random scores
 * with many ties and random kept sets of several densities.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "circuit.h"
#include "check.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static int64_t edge_of(const circ_graph *g, const char *name)
{
	int64_t i = -1;
	circ_error e;
	if (circ_graph_parse_edge(g, name, strlen(name), &i, &e) < 0) {
		fprintf(stderr, "bad test edge %s: %s\n", name, e.msg);
		abort();
	}
	return i;
}

/* Naive greedy: at each step scan all candidate edges (receiver's node in
 * the circuit, not yet kept, scored) for the best key, lowest index. */
static int64_t greedy_ref(const circ_graph *g, const double *score, int64_t n, int signed_,
			  uint8_t *keep)
{
	uint8_t *node_in = calloc((size_t)g->n_nodes, 1);
	memset(keep, 0, (size_t)g->n_edges);
	node_in[g->n_up] = 1;
	int64_t taken = 0;
	for (; taken < n; taken++) {
		int64_t best = -1;
		for (int64_t i = 0; i < g->n_edges; i++) {
			int node;
			circ_graph_recv_info(g, g->edge_recv[i], NULL, &node);
			if (keep[i] || isnan(score[i]) || !node_in[node])
				continue;
			if (best < 0 ||
			    circ_rank_key(score[i], signed_) > circ_rank_key(score[best], signed_))
				best = i;
		}
		if (best < 0)
			break;
		keep[best] = 1;
		node_in[g->edge_up[best]] = 1;
	}
	free(node_in);
	return taken;
}

static void test_selection_small(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(2, 2, CIRC_LEVEL_EDGE, &e);
	double *s = malloc(sizeof *s * (size_t)g->n_edges);
	uint8_t *keep = malloc((size_t)g->n_edges);
	for (int64_t i = 0; i < g->n_edges; i++)
		s[i] = NAN;
	int64_t a = edge_of(g, "input->a0.h0<q>"), b = edge_of(g, "a0.h0->logits"),
		c = edge_of(g, "input->logits"), d = edge_of(g, "m1->logits"),
		f = edge_of(g, "input->m1");
	s[a] = 0.5;
	s[b] = -0.9;
	s[c] = 0.5;
	s[d] = 0.1;
	s[f] = -0.2;
	/* top-2 by |score|: b (0.9), then a or c (0.5): a has the lower index */
	CHECK(circ_select_topn(g, s, 2, 0, keep, &e) == 0);
	CHECK(keep[b] && keep[a] && !keep[c] && circ_count_kept(g, keep) == 2);
	/* signed: a and c are best (0.5), b is worst */
	CHECK(circ_select_topn(g, s, 2, 1, keep, &e) == 0);
	CHECK(keep[a] && keep[c] && !keep[b]);
	CHECK(circ_select_topn(g, s, 6, 0, keep, &e) == -1 && strstr(e.msg, "5 of the graph"));
	CHECK(circ_select_topn(g, s, 0, 0, keep, &e) == 0 && circ_count_kept(g, keep) == 0);
	/* threshold >= */
	CHECK(circ_select_threshold(g, s, 0.5, 0, keep) == 3);
	CHECK(keep[a] && keep[b] && keep[c]);
	CHECK(circ_select_threshold(g, s, -0.3, 1, keep) == 4);
	/* pruning: a then b is a path input->a0.h0->logits; c is a path; */
	CHECK(circ_select_threshold(g, s, 0.5, 0, keep) == 3);
	CHECK(circ_prune_dangling(g, keep) == 0);
	/* without a, b dangles */
	keep[a] = 0;
	CHECK(circ_prune_dangling(g, keep) == 1 && !keep[b] && keep[c]);
	/* greedy: candidates start at logits: b (0.9), then c (0.5) vs a (only
	 * after a0.h0 joined via b: 0.5, index lower than c) */
	CHECK(circ_select_greedy(g, s, 2, 0, keep, &e) == 0);
	CHECK(keep[b] && keep[a] && !keep[c]);
	CHECK(circ_select_greedy(g, s, 3, 0, keep, &e) == 0 && keep[c]);
	/* m1 -> logits then input->m1 */
	CHECK(circ_select_greedy(g, s, 5, 0, keep, &e) == 0 && keep[d] && keep[f]);
	CHECK(circ_select_greedy(g, s, 6, 0, keep, &e) == -1 && strstr(e.msg, "only 5"));
	free(s);
	free(keep);
	circ_graph_free(g);
}

static void test_prune_cases(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(2, 2, CIRC_LEVEL_EDGE, &e);
	uint8_t *keep = calloc((size_t)g->n_edges, 1);
	/* a head reached through its k receiver feeds m0, which feeds logits */
	keep[edge_of(g, "input->a0.h0<k>")] = 1;
	keep[edge_of(g, "a0.h0->m0")] = 1;
	keep[edge_of(g, "m0->logits")] = 1;
	/* dangling: a0.h1 never reaches logits; input->m1 likewise */
	keep[edge_of(g, "input->a0.h1<v>")] = 1;
	keep[edge_of(g, "input->m1")] = 1;
	/* dangling: a1.h1 has no input */
	keep[edge_of(g, "a1.h1->logits")] = 1;
	CHECK(circ_prune_dangling(g, keep) == 3);
	CHECK(circ_count_kept(g, keep) == 3);
	uint8_t *nodes = malloc((size_t)g->n_nodes);
	circ_circuit_nodes(g, keep, nodes);
	int cnt = 0;
	for (int n = 0; n < g->n_nodes; n++)
		cnt += nodes[n];
	CHECK(cnt == 4 && nodes[0] && nodes[g->n_up] && nodes[1] && nodes[3]);
	free(nodes);
	free(keep);
	circ_graph_free(g);
}

static void test_random(int L, int H, circ_graph_level level)
{
	circ_error e;
	circ_graph *g = circ_graph_new(L, H, level, &e);
	int64_t E = g->n_edges;
	double *s = malloc(sizeof *s * (size_t)E);
	uint8_t *k1 = malloc((size_t)E), *k2 = malloc((size_t)E);
	for (int trial = 0; trial < 40; trial++) {
		/* scores on a coarse grid so that ties are common; a few unscored */
		for (int64_t i = 0; i < E; i++) {
			uint64_t r = next_rand();
			s[i] = (double)((int64_t)(r % 21) - 10) / 4.0;
			if (r % 97 == 0)
				s[i] = NAN;
		}
		int signed_ = trial % 2;
		int64_t n = (int64_t)(next_rand() % (uint64_t)(E / 2 + 1));
		int64_t t2 = greedy_ref(g, s, n, signed_, k2);
		int rc = circ_select_greedy(g, s, n, signed_, k1, &e);
		CHECK(rc == (t2 == n ? 0 : -1));
		if (rc == 0)
			CHECK(!memcmp(k1, k2, (size_t)E));
		/* pruning against the fixpoint at several densities */
		for (int dens = 1; dens <= 4; dens++) {
			for (int64_t i = 0; i < E; i++)
				k1[i] = k2[i] = (next_rand() % 8) < (uint64_t)dens;
			int64_t d1 = circ_prune_dangling(g, k1);
			int64_t d2 = circ_prune_dangling_ref(g, k2);
			CHECK(d1 == d2 && !memcmp(k1, k2, (size_t)E));
			/* idempotent */
			CHECK(circ_prune_dangling(g, k1) == 0);
		}
		/* top-n then prune: pruning never adds */
		CHECK(circ_select_topn(g, s, n < 10 ? n : 10, signed_, k1, &e) == 0);
		int64_t before = circ_count_kept(g, k1);
		circ_prune_dangling(g, k1);
		CHECK(circ_count_kept(g, k1) <= before);
	}
	free(s);
	free(k1);
	free(k2);
	circ_graph_free(g);
}

static char *tmpdir;

static char *write_file(const char *name, const char *text)
{
	char *path = malloc(strlen(tmpdir) + strlen(name) + 2);
	sprintf(path, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

static void test_scores_stream(void)
{
	circ_error e;
	const char *hdr =
	    "{\"format\":\"circ\",\"version\":1,\"kind\":\"scores\",\"method\":\"eap\","
	    "\"metric\":\"logit_diff\",\"graph\":{\"n_layer\":2,\"n_head\":2,"
	    "\"level\":\"edge\"},\"model_digest\":\"sha256:m\",\"dataset_digest\":"
	    "\"sha256:d\",\"n_examples\":4}\n";
	/* a second shard's header: the same but for its own field */
	const char *hdr2 =
	    "{\"format\":\"circ\",\"version\":1,\"kind\":\"scores\",\"method\":\"eap\","
	    "\"metric\":\"logit_diff\",\"graph\":{\"n_layer\":2,\"n_head\":2,"
	    "\"level\":\"edge\"},\"model_digest\":\"sha256:m\",\"dataset_digest\":"
	    "\"sha256:d\",\"n_examples\":3,\"shard\":1}\n";
	char text[4096];
	snprintf(text, sizeof text,
		 "%s{\"edge\":\"input->logits\",\"score\":0.5,\"sum\":1.0,\"count\":2}\n"
		 "{\"edge\":\"a0.h1->m0\",\"score\":-2.0}\n"
		 "%s{\"edge\":\"input->logits\",\"score\":0.25,\"sum\":0.5,\"count\":2}\n",
		 hdr, hdr2);
	char *p = write_file("s.jsonl", text);
	circ_reader *r = circ_reader_open(p, NULL, &e);
	CHECK(r != NULL);
	circ_scores *s = circ_scores_read(r, &e);
	CHECK(s != NULL);
	if (!s)
		fprintf(stderr, "  %s\n", e.msg);
	if (s) {
		int64_t i = edge_of(s->g, "input->logits");
		CHECK(s->n_scored == 2 && s->count[i] == 4 && fabs(s->score[i] - 0.375) < 1e-15);
		CHECK(s->score[edge_of(s->g, "a0.h1->m0")] == -2.0);
		CHECK(isnan(s->score[0]));
		CHECK(!strcmp(s->method, "eap") && s->n_examples == 7);
	}
	circ_scores_free(s);
	circ_reader_free(r);
	free(p);

	/* the same shard twice: refused at the repeated header */
	snprintf(text, sizeof text,
		 "%s{\"edge\":\"input->logits\",\"score\":0.5,\"sum\":1.0,\"count\":2}\n"
		 "%s{\"edge\":\"input->logits\",\"score\":0.5,\"sum\":1.0,\"count\":2}\n",
		 hdr, hdr);
	p = write_file("twice.jsonl", text);
	r = circ_reader_open(p, NULL, &e);
	s = circ_scores_read(r, &e);
	CHECK(!s && strstr(e.msg, "record 2: concatenated stream repeats the header of part 1"));
	circ_scores_free(s);
	circ_reader_free(r);
	free(p);

	/* an unknown edge, with its record number */
	snprintf(text, sizeof text,
		 "%s{\"edge\":\"input->logits\",\"score\":1}\n"
		 "{\"edge\":\"a2.h0->logits\",\"score\":1}\n",
		 hdr);
	p = write_file("bad.jsonl", text);
	r = circ_reader_open(p, NULL, &e);
	s = circ_scores_read(r, &e);
	CHECK(!s && strstr(e.msg, "record 2: edge 'a2.h0->logits': node 'a2.h0': no layer 2"));
	circ_reader_free(r);
	free(p);

	/* a repeated edge without sum/count */
	snprintf(text, sizeof text,
		 "%s{\"edge\":\"input->logits\",\"score\":1}\n"
		 "{\"edge\":\"input->logits\",\"score\":1}\n",
		 hdr);
	p = write_file("dup.jsonl", text);
	r = circ_reader_open(p, NULL, &e);
	s = circ_scores_read(r, &e);
	CHECK(!s && strstr(e.msg, "listed twice (first at record 1)"));
	circ_reader_free(r);
	free(p);
}

static void test_circuit_stream(void)
{
	circ_error e;
	circ_graph *g = circ_graph_new(3, 2, CIRC_LEVEL_EDGE, &e);
	uint8_t *keep = calloc((size_t)g->n_edges, 1);
	double *sc = malloc(sizeof *sc * (size_t)g->n_edges);
	for (int64_t i = 0; i < g->n_edges; i++) {
		keep[i] = i % 7 == 0;
		sc[i] = i % 14 == 0 ? (double)i / 3 : NAN;
	}
	char path[512];
	snprintf(path, sizeof path, "%s/c.circ", tmpdir);
	for (int json = 0; json < 2; json++) {
		circ_writer_opts o;
		circ_writer_opts_default(&o);
		o.json = json;
		circ_writer *w = circ_writer_open(path, &o, &e);
		CHECK(w != NULL);
		circ_circuit_source src;
		circ_circuit_source_init(&src);
		src.method = "eap";
		src.mode = "top-n";
		src.n = 5;
		src.signed_ = 0;
		char *argv[] = {"test", "--top-n", "5", NULL};
		CHECK(circ_circuit_write_header(w, 3, argv, NULL, 0, g, &src, "sha256:x", NULL, 0,
						&e) == 0);
		CHECK(circ_circuit_write_edges(w, g, keep, sc, &e) == 0);
		CHECK(circ_writer_close(w, &e) == 0);
		circ_reader *r = circ_reader_open(path, NULL, &e);
		CHECK(r != NULL);
		circ_circuit *c = circ_circuit_read(r, g, &e);
		CHECK(c != NULL);
		if (!c) {
			fprintf(stderr, "  %s\n", e.msg);
		} else {
			CHECK(!memcmp(c->keep, keep, (size_t)g->n_edges));
			for (int64_t i = 0; i < g->n_edges; i++)
				if (keep[i])
					CHECK(isnan(sc[i]) ? isnan(c->score[i])
							   : c->score[i] == sc[i]);
			CHECK(!strcmp(c->mode, "top-n") && !strcmp(c->model_digest, "sha256:x"));
		}
		circ_circuit_free(c);
		circ_reader_free(r);
	}
	/* a different expected graph is refused */
	circ_graph *other = circ_graph_new(3, 3, CIRC_LEVEL_EDGE, &e);
	circ_reader *r = circ_reader_open(path, NULL, &e);
	circ_circuit *c = circ_circuit_read(r, other, &e);
	CHECK(!c && strstr(e.msg, "differs from the expected"));
	circ_reader_free(r);

	/* a header whose "source" is no map is refused, not read as absent */
	{
		char *q =
		    write_file("badsource.jsonl",
			       "{\"format\":\"circ\",\"version\":1,\"kind\":\"circuit\",\"graph\":"
			       "{\"n_layer\":3,\"n_head\":3},\"source\":1e300}\n"
			       "{\"edge\":\"m2->logits\"}\n{\"$end\":{\"records\":1}}\n");
		r = circ_reader_open(q, NULL, &e);
		CHECK(r != NULL);
		c = r ? circ_circuit_read(r, other, &e) : NULL;
		CHECK(!c && strstr(e.msg, "field 'source': expected a map, got"));
		circ_circuit_free(c);
		circ_reader_free(r);
		free(q);
	}

	/* a scores record's score must be its sum / count (one is read alone,
	 * the other merged) */
	{
		const char *hdr = "{\"format\":\"circ\",\"version\":1,\"kind\":\"scores\","
				  "\"graph\":{\"n_layer\":3,\"n_head\":3}}\n";
		const char *recs[2] = {"{\"edge\":\"m2->logits\",\"score\":0.25,\"sum\":1.0,"
				       "\"count\":4}\n",
				       "{\"edge\":\"m2->logits\",\"score\":0.5,\"sum\":1.0,"
				       "\"count\":4}\n"};
		for (int bad = 0; bad < 2; bad++) {
			char text[512];
			snprintf(text, sizeof text, "%s%s", hdr, recs[bad]);
			char *q = write_file("mismatch.jsonl", text);
			r = circ_reader_open(q, NULL, &e);
			circ_scores *sc2 = r ? circ_scores_read(r, &e) : NULL;
			if (bad)
				CHECK(!sc2 && strstr(e.msg, "record 1") &&
				      strstr(e.msg,
					     "field 'score': 0.5 is not sum / count (1 / 4 = "
					     "0.25)"));
			else
				CHECK(sc2 && sc2->score[edge_of(sc2->g, "m2->logits")] == 0.25);
			circ_scores_free(sc2);
			circ_reader_free(r);
			free(q);
		}
	}

	/* a headerless edge list takes the expected graph */
	char *p = write_file("truth.jsonl",
			     "{\"edge\":\"input->a0.h1<v>\"}\n{\"edge\":\"m2->logits\"}\n");
	r = circ_reader_open(p, NULL, &e);
	c = circ_circuit_read(r, other, &e);
	CHECK(c && c->n_kept == 2 && c->keep[edge_of(other, "m2->logits")]);
	circ_circuit_free(c);
	circ_reader_free(r);
	r = circ_reader_open(p, NULL, &e);
	c = circ_circuit_read(r, NULL, &e);
	CHECK(!c && strstr(e.msg, "needs a graph"));
	circ_reader_free(r);
	free(p);

	circ_graph_free(other);
	free(keep);
	free(sc);
	circ_graph_free(g);
}

/* Counts add exactly up to INT64_MAX and refuse to wrap past it. */
static void test_count_add(void)
{
	circ_error e;
	int64_t c = INT64_MAX - 8;
	CHECK(circ_count_add(&c, 8, &e) == 0 && c == INT64_MAX);
	CHECK(circ_count_add(&c, 1, &e) == -1 && c == INT64_MAX && strstr(e.msg, "overflows"));
	c = 3;
	CHECK(circ_count_add(&c, 0, &e) == 0 && c == 3);
}

int main(void)
{
	char tmpl[] = "/tmp/test_circuit.XXXXXX";
	tmpdir = mkdtemp(tmpl);
	test_selection_small();
	test_prune_cases();
	test_random(3, 3, CIRC_LEVEL_EDGE);
	test_random(4, 2, CIRC_LEVEL_NODE);
	test_random(1, 1, CIRC_LEVEL_EDGE);
	test_scores_stream();
	test_circuit_stream();
	test_count_add();
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "warning: could not remove %s\n", tmpdir);
	if (failures) {
		fprintf(stderr, "test_circuit: %d failures\n", failures);
		return 1;
	}
	printf("test_circuit: ok\n");
	return 0;
}
