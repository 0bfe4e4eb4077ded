/*
 * circuit: edge selection, dangling-edge pruning, and the scores and circuit
 * streams (see circuit.h).
 *
 * Design: everything works on dense per-edge arrays in canonical order, so a
 * selection is a sort (top-n), a scan (threshold) or a heap walk (greedy),
 * and pruning is two sweeps over the receivers: forwards marks the nodes
 * reachable from input along kept edges, backwards marks the nodes that
 * reach logits. Receivers in index order are a topological order of the
 * graph (a receiver only reads nodes whose receivers all come earlier), which
 * is what makes one sweep each way enough. The fixpoint that EAP-IG uses
 * stays beside it as the reference twin.
 */
#include "circuit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- selection ---- */

double circ_rank_key(double s, int signed_)
{
	return signed_ ? s : fabs(s);
}

typedef struct keyed {
	double key;
	int64_t idx;
} keyed;

/* Best first: higher key, then lower index. */
static int keyed_before(const keyed *a, const keyed *b)
{
	if (a->key != b->key)
		return a->key > b->key;
	return a->idx < b->idx;
}

static int cmp_keyed(const void *pa, const void *pb)
{
	const keyed *a = pa, *b = pb;
	if (keyed_before(a, b))
		return -1;
	if (keyed_before(b, a))
		return 1;
	return 0;
}

int64_t circ_rank_edges(const circ_graph *g, const double *score, int signed_, int64_t *order)
{
	keyed *k = circ_xmalloc((size_t)g->n_edges * sizeof *k);
	int64_t n = 0;
	for (int64_t i = 0; i < g->n_edges; i++)
		if (!isnan(score[i])) {
			k[n].key = circ_rank_key(score[i], signed_);
			k[n].idx = i;
			n++;
		}
	qsort(k, (size_t)n, sizeof *k, cmp_keyed);
	for (int64_t i = 0; i < n; i++)
		order[i] = k[i].idx;
	free(k);
	return n;
}

int circ_select_topn(const circ_graph *g, const double *score, int64_t n, int signed_,
		     uint8_t *keep, circ_error *e)
{
	int64_t *order = circ_xmalloc((size_t)g->n_edges * sizeof *order);
	int64_t m = circ_rank_edges(g, score, signed_, order);
	if (n < 0 || n > m) {
		free(order);
		return circ_errorf(e,
				   "top-n: cannot keep %lld edges: %lld of the graph's %lld edges "
				   "have scores",
				   (long long)n, (long long)m, (long long)g->n_edges);
	}
	memset(keep, 0, (size_t)g->n_edges);
	for (int64_t i = 0; i < n; i++)
		keep[order[i]] = 1;
	free(order);
	return 0;
}

int64_t circ_select_threshold(const circ_graph *g, const double *score, double t, int signed_,
			      uint8_t *keep)
{
	int64_t n = 0;
	for (int64_t i = 0; i < g->n_edges; i++) {
		keep[i] = !isnan(score[i]) && circ_rank_key(score[i], signed_) >= t;
		n += keep[i];
	}
	return n;
}

/* A binary max-heap of keyed edges. */
typedef struct heap {
	keyed *a;
	int64_t n;
} heap;

static void heap_push(heap *h, keyed x)
{
	int64_t i = h->n++;
	while (i > 0) {
		int64_t p = (i - 1) / 2;
		if (!keyed_before(&x, &h->a[p]))
			break;
		h->a[i] = h->a[p];
		i = p;
	}
	h->a[i] = x;
}

static keyed heap_pop(heap *h)
{
	keyed top = h->a[0], x = h->a[--h->n];
	int64_t i = 0;
	for (;;) {
		int64_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && keyed_before(&h->a[c + 1], &h->a[c]))
			c++;
		if (!keyed_before(&h->a[c], &x))
			break;
		h->a[i] = h->a[c];
		i = c;
	}
	if (h->n > 0)
		h->a[i] = x;
	return top;
}

/* Adds the scored edges into every receiver of node to the heap. */
static void push_node_inputs(const circ_graph *g, const double *score, int signed_, int node,
			     heap *h)
{
	int first, k = circ_graph_node_recvs(g, node, &first);
	for (int r = first; r < first + k; r++)
		for (int64_t i = g->recv_first[r]; i < g->recv_first[r + 1]; i++)
			if (!isnan(score[i]))
				heap_push(h, (keyed){circ_rank_key(score[i], signed_), i});
}

int circ_select_greedy(const circ_graph *g, const double *score, int64_t n, int signed_,
		       uint8_t *keep, circ_error *e)
{
	if (n < 0)
		return circ_errorf(e, "greedy: cannot keep %lld edges", (long long)n);
	heap h = {circ_xmalloc((size_t)g->n_edges * sizeof *h.a), 0};
	uint8_t *node_in = circ_xcalloc((size_t)g->n_nodes, 1);
	memset(keep, 0, (size_t)g->n_edges);
	node_in[circ_graph_node_logits(g)] = 1;
	push_node_inputs(g, score, signed_, circ_graph_node_logits(g), &h);
	int64_t taken = 0;
	while (taken < n && h.n > 0) {
		keyed top = heap_pop(&h);
		keep[top.idx] = 1;
		taken++;
		int u = g->edge_up[top.idx];
		if (!node_in[u]) {
			node_in[u] = 1;
			push_node_inputs(g, score, signed_, u, &h);
		}
	}
	free(h.a);
	free(node_in);
	if (taken < n)
		return circ_errorf(e,
				   "greedy: cannot keep %lld edges: only %lld scored edges are "
				   "reachable from logits",
				   (long long)n, (long long)taken);
	return 0;
}

int64_t circ_prune_dangling(const circ_graph *g, uint8_t *keep)
{
	uint8_t *fwd = circ_xcalloc((size_t)g->n_nodes, 1);
	uint8_t *bwd = circ_xcalloc((size_t)g->n_nodes, 1);
	fwd[circ_graph_up_input(g)] = 1;
	for (int r = 0; r < g->n_recv; r++) {
		int node;
		circ_graph_recv_info(g, r, NULL, &node);
		for (int64_t i = g->recv_first[r]; i < g->recv_first[r + 1] && !fwd[node]; i++)
			if (keep[i] && fwd[g->edge_up[i]])
				fwd[node] = 1;
	}
	bwd[circ_graph_node_logits(g)] = 1;
	for (int r = g->n_recv - 1; r >= 0; r--) {
		int node;
		circ_graph_recv_info(g, r, NULL, &node);
		if (!bwd[node])
			continue;
		for (int64_t i = g->recv_first[r]; i < g->recv_first[r + 1]; i++)
			if (keep[i])
				bwd[g->edge_up[i]] = 1;
	}
	int64_t dropped = 0;
	for (int64_t i = 0; i < g->n_edges; i++) {
		if (!keep[i])
			continue;
		int node;
		circ_graph_recv_info(g, g->edge_recv[i], NULL, &node);
		if (!fwd[g->edge_up[i]] || !bwd[node]) {
			keep[i] = 0;
			dropped++;
		}
	}
	free(fwd);
	free(bwd);
	return dropped;
}

int64_t circ_prune_dangling_ref(const circ_graph *g, uint8_t *keep)
{
	int64_t before = circ_count_kept(g, keep);
	uint8_t *has_in = circ_xmalloc((size_t)g->n_nodes);
	uint8_t *has_out = circ_xmalloc((size_t)g->n_nodes);
	int changed = 1;
	while (changed) {
		changed = 0;
		memset(has_in, 0, (size_t)g->n_nodes);
		memset(has_out, 0, (size_t)g->n_nodes);
		for (int64_t i = 0; i < g->n_edges; i++)
			if (keep[i]) {
				int node;
				circ_graph_recv_info(g, g->edge_recv[i], NULL, &node);
				has_out[g->edge_up[i]] = 1;
				has_in[node] = 1;
			}
		has_in[circ_graph_up_input(g)] = 1;
		has_out[circ_graph_node_logits(g)] = 1;
		for (int64_t i = 0; i < g->n_edges; i++) {
			int node, u = g->edge_up[i];
			circ_graph_recv_info(g, g->edge_recv[i], NULL, &node);
			int alive = has_in[u] && has_out[u] && has_in[node] && has_out[node];
			if (keep[i] && !alive) {
				keep[i] = 0;
				changed = 1;
			}
		}
	}
	free(has_in);
	free(has_out);
	return before - circ_count_kept(g, keep);
}

void circ_circuit_nodes(const circ_graph *g, const uint8_t *keep, uint8_t *node_in)
{
	memset(node_in, 0, (size_t)g->n_nodes);
	for (int64_t i = 0; i < g->n_edges; i++)
		if (keep[i]) {
			int node;
			circ_graph_recv_info(g, g->edge_recv[i], NULL, &node);
			node_in[g->edge_up[i]] = 1;
			node_in[node] = 1;
		}
}

int64_t circ_count_kept(const circ_graph *g, const uint8_t *keep)
{
	int64_t n = 0;
	for (int64_t i = 0; i < g->n_edges; i++)
		n += keep[i] != 0;
	return n;
}

/* ---- streams ---- */

/* Optional string field: *out stays NULL when absent. */
/* The edge index named by the record's "edge" field. */
static int rec_edge(const circ_graph *g, const msgpack_object *rec, int64_t *edge, circ_error *e)
{
	const char *s;
	size_t n;
	if (circ_rec_str(rec, "edge", &s, &n, e) < 0)
		return -1;
	return circ_graph_parse_edge(g, s, n, edge, e);
}

int circ_count_add(int64_t *acc, int64_t v, circ_error *e)
{
	int64_t t;
	if (__builtin_add_overflow(*acc, v, &t))
		return circ_errorf(e, "count %lld + %lld overflows", (long long)*acc, (long long)v);
	*acc = t;
	return 0;
}

/* Concatenated scores streams: n_examples is the sum over the parts' headers
 * (-1 if a part does not declare it). */
static int add_part_examples(void *ctx, const msgpack_object *hdr, int64_t nrec, circ_error *e)
{
	circ_scores *s = ctx;
	int64_t n;
	(void)nrec;
	if (!circ_rec_get(hdr, "n_examples")) {
		s->n_examples = -1;
		return 0;
	}
	if (circ_rec_i64(hdr, "n_examples", &n, e) < 0)
		return circ_error_prefix(e, "header");
	if (n < 0)
		return circ_errorf(e, "header: field 'n_examples': negative (%lld)", (long long)n);
	if (s->n_examples >= 0 && circ_count_add(&s->n_examples, n, e) < 0)
		return circ_error_prefix(e, "header: field 'n_examples'");
	return 0;
}

int circ_score_mismatch(double score, double sum, int64_t count, circ_error *e)
{
	double mean = sum / (double)count;
	if (fabs(score - mean) <= 1e-9 * fmax(fabs(score), fabs(mean)))
		return 0;
	circ_errorf(e, "field 'score': %.17g is not sum / count (%.17g / %lld = %.17g)", score, sum,
		    (long long)count, mean);
	return 1;
}

circ_scores *circ_scores_read(circ_reader *r, circ_error *e)
{
	const msgpack_object *h = circ_reader_header(r), *rec;
	circ_scores *s = circ_xcalloc(1, sizeof *s);
	int64_t *first_rec = NULL;
	s->n_examples = -1;
	if (strcmp(circ_reader_kind(r), "scores")) {
		circ_errorf(e, "%s: expected a scores stream, got kind '%s'", circ_reader_name(r),
			    circ_reader_kind(r));
		goto fail;
	}
	s->g = circ_graph_from_header(h, e);
	if (!s->g)
		goto fail_hdr;
	circ_hdr_field f[] = {
	    CIRC_HDR_MAY(STR, "method"),       CIRC_HDR_MAY(STR, "metric"),
	    CIRC_HDR_MAY(STR, "model_digest"), CIRC_HDR_MAY(STR, "dataset_digest"),
	    CIRC_HDR_MAY(STR, "ablation"),     CIRC_HDR_MAY(I64, "n_examples"),
	    CIRC_HDR_MAY(I64, "steps"),
	};
	if (circ_hdr_read(h, f, CIRC_HDR_N(f), e) < 0)
		goto fail_hdr;
	s->method = circ_hdr_strdup(&f[0]);
	s->metric = circ_hdr_strdup(&f[1]);
	s->model_digest = circ_hdr_strdup(&f[2]);
	s->dataset_digest = circ_hdr_strdup(&f[3]);
	s->ablation = circ_hdr_strdup(&f[4]);
	s->n_examples = f[5].skip ? -1 : f[5].i;
	s->steps = f[6].skip ? -1 : f[6].i;
	/* each part adds its own at its end: start from 0 where declared */
	if (s->n_examples >= 0)
		s->n_examples = 0;
	circ_reader_on_part_end(r, add_part_examples, s);

	int64_t E = s->g->n_edges;
	s->score = circ_xmalloc((size_t)E * sizeof *s->score);
	s->sum = circ_xcalloc((size_t)E, sizeof *s->sum);
	s->count = circ_xcalloc((size_t)E, sizeof *s->count);
	first_rec = circ_xcalloc((size_t)E, sizeof *first_rec);
	for (int64_t i = 0; i < E; i++)
		s->score[i] = NAN;
	int k;
	while ((k = circ_reader_next(r, &rec, e)) > 0) {
		int64_t i, cnt = 0;
		double sc, sum = 0;
		int has_sc = circ_rec_get(rec, "score") != NULL;
		int has_sum = circ_rec_get(rec, "sum") && circ_rec_get(rec, "count");
		if (rec_edge(s->g, rec, &i, e) < 0)
			goto fail_rec;
		if (has_sum && (circ_rec_f64(rec, "sum", &sum, e) < 0 ||
				circ_rec_i64(rec, "count", &cnt, e) < 0))
			goto fail_rec;
		if (has_sum && cnt < 0) {
			circ_errorf(e, "field 'count': negative (%lld)", (long long)cnt);
			goto fail_rec;
		}
		if (has_sc) {
			if (circ_rec_f64(rec, "score", &sc, e) < 0)
				goto fail_rec;
			if (has_sum && cnt > 0 && circ_score_mismatch(sc, sum, cnt, e))
				goto fail_rec;
		} else if (has_sum && cnt > 0) {
			sc = sum / (double)cnt;
		} else {
			circ_errorf(e, "missing field 'score'");
			goto fail_rec;
		}
		if (!isfinite(sc) || !isfinite(sum)) {
			char name[CIRC_NAME_MAX];
			circ_graph_edge_name(s->g, i, name, sizeof name);
			circ_errorf(e, "edge '%s': score is not finite", name);
			goto fail_rec;
		}
		if (first_rec[i]) {
			char name[CIRC_NAME_MAX];
			circ_graph_edge_name(s->g, i, name, sizeof name);
			if (!has_sum || s->count[i] <= 0 || cnt <= 0) {
				circ_errorf(e,
					    "edge '%s' listed twice (first at record %lld) and the "
					    "records lack the sum and count needed to merge them",
					    name, (long long)first_rec[i]);
				goto fail_rec;
			}
			if (circ_count_add(&s->count[i], cnt, e) < 0) {
				circ_error_prefix(e, "edge '%s': field 'count'", name);
				goto fail_rec;
			}
			s->sum[i] += sum;
			s->score[i] = s->sum[i] / (double)s->count[i];
			continue;
		}
		first_rec[i] = circ_reader_recno(r);
		s->score[i] = sc;
		s->sum[i] = sum;
		s->count[i] = cnt;
		s->n_scored++;
	}
	circ_reader_on_part_end(r, NULL, NULL);
	if (k < 0)
		goto fail;
	free(first_rec);
	return s;
fail_rec:
	circ_reader_fail(r, e);
	goto fail;
fail_hdr:
	circ_error_prefix(e, "%s: record 0", circ_reader_name(r));
fail:
	free(first_rec);
	circ_scores_free(s);
	return NULL;
}

void circ_scores_free(circ_scores *s)
{
	if (!s)
		return;
	circ_graph_free(s->g);
	free(s->score);
	free(s->sum);
	free(s->count);
	free(s->method);
	free(s->metric);
	free(s->model_digest);
	free(s->dataset_digest);
	free(s->ablation);
	free(s);
}

void circ_circuit_source_init(circ_circuit_source *s)
{
	memset(s, 0, sizeof *s);
	s->n = -1;
	s->threshold = NAN;
	s->signed_ = -1;
	s->tau = NAN;
}

static circ_graph *graph_copy(const circ_graph *g, circ_error *e)
{
	circ_graph *c = circ_graph_new_like(g, e);
	if (c)
		c->input = g->input;
	return c;
}

circ_circuit *circ_circuit_read(circ_reader *r, const circ_graph *expect, circ_error *e)
{
	const msgpack_object *h = circ_reader_header(r), *rec;
	circ_circuit *c = circ_xcalloc(1, sizeof *c);
	const char *kind = circ_reader_kind(r);
	c->source_n = -1;
	c->source_threshold = NAN;
	c->source_signed = -1;
	if (!strcmp(kind, "records")) {
		if (!expect) {
			circ_errorf(e, "%s: a headerless edge list needs a graph from elsewhere",
				    circ_reader_name(r));
			goto fail;
		}
		c->g = graph_copy(expect, e);
		if (!c->g)
			goto fail;
	} else if (!strcmp(kind, "circuit")) {
		c->g = circ_graph_from_header(h, e);
		if (!c->g)
			goto fail_hdr;
		if (expect && !circ_graph_same(c->g, expect)) {
			circ_errorf(e,
				    "graph (%d layers, %d heads, %s level, %s convention) differs "
				    "from the expected one (%d layers, %d heads, %s level, %s "
				    "convention)",
				    c->g->n_layer, c->g->n_head, circ_graph_level_name(c->g->level),
				    circ_graph_input_name(c->g->input), expect->n_layer,
				    expect->n_head, circ_graph_level_name(expect->level),
				    circ_graph_input_name(expect->input));
			goto fail_hdr;
		}
		circ_hdr_field f[] = {
		    CIRC_HDR_MAY(STR, "model_digest"),
		    CIRC_HDR_MAY(OBJ, "source"),
		    CIRC_HDR_MAY(I64, "n_edges_total"),
		};
		circ_hdr_field sf[] = {
		    CIRC_HDR_MAY(STR, "method"),  CIRC_HDR_MAY(STR, "mode"),
		    CIRC_HDR_MAY(I64, "n"),	  CIRC_HDR_MAY(F64, "threshold"),
		    CIRC_HDR_MAY(BOOL, "signed"),
		};
		if (circ_hdr_read(h, f, CIRC_HDR_N(f), e) < 0)
			goto fail_hdr;
		c->model_digest = circ_hdr_strdup(&f[0]);
		if (!f[1].skip) {
			if (circ_hdr_read(f[1].o, sf, CIRC_HDR_N(sf), e) < 0) {
				circ_error_prefix(e, "field 'source'");
				goto fail_hdr;
			}
			c->method = circ_hdr_strdup(&sf[0]);
			c->mode = circ_hdr_strdup(&sf[1]);
			c->source_n = sf[2].skip ? c->source_n : sf[2].i;
			c->source_threshold = sf[3].skip ? c->source_threshold : sf[3].f;
			c->source_signed = sf[4].skip ? c->source_signed : (int)sf[4].i;
		}
		if (!f[2].skip && f[2].i != c->g->n_edges) {
			circ_errorf(e, "n_edges_total is %lld but the graph has %lld edges",
				    (long long)f[2].i, (long long)c->g->n_edges);
			goto fail_hdr;
		}
	} else {
		circ_errorf(e, "%s: expected a circuit stream or an edge list, got kind '%s'",
			    circ_reader_name(r), kind);
		goto fail;
	}
	int64_t E = c->g->n_edges;
	c->keep = circ_xcalloc((size_t)E, 1);
	c->score = circ_xmalloc((size_t)E * sizeof *c->score);
	for (int64_t i = 0; i < E; i++)
		c->score[i] = NAN;
	int k;
	while ((k = circ_reader_next(r, &rec, e)) > 0) {
		int64_t i;
		if (rec_edge(c->g, rec, &i, e) < 0)
			goto fail_rec;
		if (c->keep[i]) {
			char name[CIRC_NAME_MAX];
			circ_graph_edge_name(c->g, i, name, sizeof name);
			circ_errorf(e, "edge '%s' listed twice", name);
			goto fail_rec;
		}
		c->keep[i] = 1;
		c->n_kept++;
		if (circ_rec_get(rec, "score")) {
			double s;
			if (circ_rec_f64(rec, "score", &s, e) < 0)
				goto fail_rec;
			if (!isfinite(s)) {
				char name[CIRC_NAME_MAX];
				circ_graph_edge_name(c->g, i, name, sizeof name);
				circ_errorf(e, "edge '%s': score is not finite", name);
				goto fail_rec;
			}
			c->score[i] = s;
		}
	}
	if (k < 0)
		goto fail;
	return c;
fail_rec:
	circ_reader_fail(r, e);
	goto fail;
fail_hdr:
	circ_error_prefix(e, "%s: record 0", circ_reader_name(r));
fail:
	circ_circuit_free(c);
	return NULL;
}

void circ_circuit_free(circ_circuit *c)
{
	if (!c)
		return;
	circ_graph_free(c->g);
	free(c->keep);
	free(c->score);
	free(c->model_digest);
	free(c->method);
	free(c->mode);
	free(c);
}

void circ_circuit_pack_graph(msgpack_packer *pk, const void *g)
{
	circ_graph_pack(pk, g);
}

static void pack_source(msgpack_packer *pk, const void *ctx)
{
	const circ_circuit_source *src = ctx;
	circ_hdr_field f[] = {
	    CIRC_HDR_IF(src->method, STR, "method", src->method),
	    CIRC_HDR_IF(src->mode, STR, "mode", src->mode),
	    CIRC_HDR_IF(src->n >= 0, I64, "n", src->n),
	    CIRC_HDR_IF(!isnan(src->threshold), F64, "threshold", src->threshold),
	    CIRC_HDR_IF(src->signed_ >= 0, BOOL, "signed", src->signed_),
	    CIRC_HDR_IF(!isnan(src->tau), F64, "tau", src->tau),
	    CIRC_HDR_IF(src->metric, STR, "metric", src->metric),
	};
	msgpack_pack_map(pk, (size_t)circ_hdr_count(f, CIRC_HDR_N(f)));
	circ_hdr_pack(pk, f, CIRC_HDR_N(f));
}

int circ_circuit_write_header(circ_writer *w, int argc, char **argv, circ_reader *const *inputs,
			      int ninputs, const circ_graph *g, const circ_circuit_source *src,
			      const char *model_digest, const circ_hdr_field *extra, int nextra,
			      circ_error *e)
{
	circ_hdr_field own[] = {
	    CIRC_HDR_GRAPH(g),
	    CIRC_HDR_FN("source", pack_source, src),
	    CIRC_HDR_IF(model_digest, STR, "model_digest", model_digest),
	    CIRC_HDR(I64, "n_edges_total", g->n_edges),
	};
	return circ_writer_header_ext(w, "circuit", argc, argv, inputs, ninputs, own,
				      CIRC_HDR_N(own), extra, nextra, e);
}

int circ_circuit_write_edges(circ_writer *w, const circ_graph *g, const uint8_t *keep,
			     const double *score, circ_error *e)
{
	char name[CIRC_NAME_MAX];
	msgpack_packer *pk = circ_writer_packer(w);
	for (int64_t i = 0; i < g->n_edges; i++) {
		if (!keep[i])
			continue;
		int has = score && !isnan(score[i]);
		circ_graph_edge_name(g, i, name, sizeof name);
		msgpack_pack_map(pk, 1 + (size_t)has);
		circ_pack_kv_str(pk, "edge", name);
		if (has)
			circ_pack_kv_f64(pk, "score", score[i]);
		if (circ_writer_end_record(w, e) < 0)
			return -1;
	}
	return 0;
}
