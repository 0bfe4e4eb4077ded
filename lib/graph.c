/*
 * graph: nodes, receivers and edges of a transformer's computational graph
 * (see graph.h for the numbering and the conventions).
 *
 * Design: lib/topology numbers nodes, receivers and edges (the upstream
 * nodes feeding any receiver form a prefix of the upstream order, which
 * makes "edge index = first edge of the receiver + upstream index"); the
 * graph adds names, the input convention, stream headers and the dense
 * (receiver, upstream) mask, which callers read in tight loops.
 *
 * Names are parsed strictly so that each edge has exactly one spelling:
 * decimal numbers without sign or leading zeros, nothing after the name.
 */
#include "graph.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "stream.h"

/* ---- shape ---- */

circ_graph *circ_graph_new_desc(const circ_topo_desc *desc, circ_graph_level level, circ_error *e)
{
	circ_topo_desc d = *desc;
	circ_topology *t;
	circ_graph *g;
	d.level = level;
	d.recv_kinds = 0;
	t = circ_topology_new(&d, e);
	if (!t)
		return NULL;
	g = circ_xcalloc(1, sizeof *g);
	g->topo = t;
	g->n_layer = d.n_layer;
	g->n_head = d.n_head;
	g->n_kv_head = t->d.n_kv_head;
	g->block = d.block;
	g->raw_heads = d.raw_heads;
	g->level = level;
	g->input = CIRC_INPUT_EAPIG;
	g->n_up = t->n_up;
	g->n_recv = t->n_recv;
	g->n_nodes = t->n_nodes;
	g->n_edges = t->n_edges;
	g->recv_first = t->recv_first;
	g->edge_up = t->edge_up;
	g->edge_recv = t->edge_recv;
	g->mask = circ_xcalloc((size_t)g->n_recv * (size_t)g->n_up, 1);
	for (int64_t i = 0; i < g->n_edges; i++)
		g->mask[(size_t)g->edge_recv[i] * (size_t)g->n_up + (size_t)g->edge_up[i]] = 1;
	return g;
}

circ_graph *circ_graph_new(int n_layer, int n_head, circ_graph_level level, circ_error *e)
{
	circ_topo_desc d;
	circ_topo_desc_init(&d, n_layer, n_head);
	return circ_graph_new_desc(&d, level, e);
}

circ_graph *circ_graph_new_like(const circ_graph *g, circ_error *e)
{
	circ_graph *c = circ_graph_new_desc(&g->topo->d, g->level, e);
	if (c) {
		c->input = g->input;
		memcpy(c->model_type, g->model_type, sizeof c->model_type);
	}
	return c;
}

void circ_graph_free(circ_graph *g)
{
	if (!g)
		return;
	circ_topology_free(g->topo);
	free(g->mask);
	free(g);
}

int circ_graph_same(const circ_graph *a, const circ_graph *b)
{
	return a->n_layer == b->n_layer && a->n_head == b->n_head && a->level == b->level &&
	       a->input == b->input && a->n_kv_head == b->n_kv_head && a->block == b->block &&
	       a->raw_heads == b->raw_heads;
}

/* ---- numbering: lib/topology's ---- */

int circ_graph_up_input(const circ_graph *g)
{
	return circ_topo_node_input(g->topo);
}

int circ_graph_up_head(const circ_graph *g, int layer, int head)
{
	return circ_topo_node_head(g->topo, layer, head);
}

int circ_graph_up_mlp(const circ_graph *g, int layer)
{
	return circ_topo_node_mlp(g->topo, layer);
}

int circ_graph_node_logits(const circ_graph *g)
{
	return circ_topo_node_logits(g->topo);
}

int circ_graph_recv_head(const circ_graph *g, int layer, int head, circ_recv_kind k)
{
	return circ_topo_recv_head(g->topo, layer, head, k);
}

int circ_graph_recv_mlp(const circ_graph *g, int layer)
{
	return circ_topo_recv_mlp(g->topo, layer);
}

int circ_graph_recv_logits(const circ_graph *g)
{
	return circ_topo_recv_logits(g->topo);
}

int circ_graph_recv_n_in(const circ_graph *g, int r)
{
	return circ_topo_recv_n_in(g->topo, r);
}

int64_t circ_graph_edge(const circ_graph *g, int r, int u)
{
	return circ_topo_edge(g->topo, r, u);
}

void circ_graph_node_info(const circ_graph *g, int node, circ_node_kind *kind, int *layer,
			  int *head)
{
	const circ_topo_node *n;
	CIRC_ASSERT(node >= 0 && node < g->n_nodes);
	n = &g->topo->node[node];
	if (kind)
		*kind = n->kind;
	if (layer)
		*layer = n->layer;
	if (head)
		*head = n->head;
}

void circ_graph_recv_info(const circ_graph *g, int r, circ_recv_kind *kind, int *node)
{
	const circ_topo_recv *x;
	CIRC_ASSERT(r >= 0 && r < g->n_recv);
	x = &g->topo->recv[r];
	if (kind)
		*kind = x->kind;
	if (node)
		*node = x->node;
}

int circ_graph_node_recvs(const circ_graph *g, int node, int *first)
{
	const circ_topo_node *n;
	CIRC_ASSERT(node >= 0 && node < g->n_nodes);
	n = &g->topo->node[node];
	*first = n->n_recv ? n->first_recv : -1;
	return n->n_recv;
}

int circ_graph_node_layer(const circ_graph *g, int node)
{
	int l;
	circ_graph_node_info(g, node, NULL, &l, NULL);
	return l;
}

/* ---- names ---- */

int circ_graph_node_name(const circ_graph *g, int node, char *buf, size_t n)
{
	circ_node_kind k;
	int l, h;
	circ_graph_node_info(g, node, &k, &l, &h);
	switch (k) {
	case CIRC_NODE_INPUT: return snprintf(buf, n, "input");
	case CIRC_NODE_HEAD: return snprintf(buf, n, "a%d.h%d", l, h);
	case CIRC_NODE_MLP: return snprintf(buf, n, "m%d", l);
	case CIRC_NODE_LOGITS:
	default: return snprintf(buf, n, "logits");
	}
}

const char *circ_graph_recv_letter(const circ_graph *g, int r)
{
	circ_recv_kind k;
	circ_graph_recv_info(g, r, &k, NULL);
	switch (k) {
	case CIRC_RECV_Q: return "q";
	case CIRC_RECV_K: return "k";
	case CIRC_RECV_V: return "v";
	default: return "";
	}
}

int circ_graph_recv_name(const circ_graph *g, int r, char *buf, size_t n)
{
	int node;
	char name[CIRC_NAME_MAX];
	circ_graph_recv_info(g, r, NULL, &node);
	circ_graph_node_name(g, node, name, sizeof name);
	const char *c = circ_graph_recv_letter(g, r);
	if (*c)
		return snprintf(buf, n, "%s<%s>", name, c);
	return snprintf(buf, n, "%s", name);
}

int circ_graph_edge_name(const circ_graph *g, int64_t e, char *buf, size_t n)
{
	char up[CIRC_NAME_MAX], recv[CIRC_NAME_MAX];
	circ_graph_node_name(g, g->edge_up[e], up, sizeof up);
	circ_graph_recv_name(g, g->edge_recv[e], recv, sizeof recv);
	return snprintf(buf, n, "%s->%s", up, recv);
}

/* Parses a decimal number without sign or leading zeros from s[0..len);
 * returns the count of digits read (0 if none or malformed). */
static size_t parse_uint(const char *s, size_t len, long *out)
{
	size_t i = 0;
	long v = 0;
	while (i < len && s[i] >= '0' && s[i] <= '9') {
		if (v > 100000000L)
			return 0; /* absurdly large: no such node anyway */
		v = v * 10 + (s[i] - '0');
		i++;
	}
	if (i == 0 || (i > 1 && s[0] == '0'))
		return 0;
	*out = v;
	return i;
}

/* Quoted subject for messages: at most 80 bytes of a name. */
#define QN(len) ((int)((len) > 80 ? 80 : (len)))

int circ_graph_parse_node(const circ_graph *g, const char *s, size_t len, int *node, circ_error *e)
{
	long l, h;
	size_t k;
	if (len == 5 && !memcmp(s, "input", 5)) {
		*node = 0;
		return 0;
	}
	if (len == 6 && !memcmp(s, "logits", 6)) {
		*node = g->n_up;
		return 0;
	}
	if (len >= 2 && s[0] == 'm') {
		k = parse_uint(s + 1, len - 1, &l);
		if (k == 0 || 1 + k != len)
			goto bad;
		if (l >= g->n_layer)
			return circ_errorf(e,
					   "node '%.*s': no layer %ld (the graph has layers 0-%d)",
					   QN(len), s, l, g->n_layer - 1);
		*node = circ_graph_up_mlp(g, (int)l);
		return 0;
	}
	if (len >= 5 && s[0] == 'a') {
		k = parse_uint(s + 1, len - 1, &l);
		if (k == 0)
			goto bad;
		size_t i = 1 + k;
		if (i + 2 > len || s[i] != '.' || s[i + 1] != 'h')
			goto bad;
		i += 2;
		size_t k2 = parse_uint(s + i, len - i, &h);
		if (k2 == 0 || i + k2 != len)
			goto bad;
		if (l >= g->n_layer)
			return circ_errorf(e,
					   "node '%.*s': no layer %ld (the graph has layers 0-%d)",
					   QN(len), s, l, g->n_layer - 1);
		if (h >= g->n_head)
			return circ_errorf(e, "node '%.*s': no head %ld (the graph has heads 0-%d)",
					   QN(len), s, h, g->n_head - 1);
		*node = circ_graph_up_head(g, (int)l, (int)h);
		return 0;
	}
bad:
	return circ_errorf(e,
			   "node '%.*s': not a node name (expected input, a<layer>.h<head>, "
			   "m<layer> or logits)",
			   QN(len), s);
}

int circ_graph_parse_edge(const circ_graph *g, const char *s, size_t len, int64_t *edge,
			  circ_error *e)
{
	const char *arrow = NULL;
	for (size_t i = 0; i + 1 < len; i++)
		if (s[i] == '-' && s[i + 1] == '>') {
			arrow = s + i;
			break;
		}
	if (!arrow)
		return circ_errorf(
		    e, "edge '%.*s': not an edge name (expected <upstream>-><receiver>)", QN(len),
		    s);
	size_t ulen = (size_t)(arrow - s);
	const char *d = arrow + 2;
	size_t dlen = len - ulen - 2;
	int c = -1; /* q/k/v letter index, -1 if none */
	if (dlen >= 3 && d[dlen - 1] == '>' && d[dlen - 3] == '<') {
		static const char letters[] = "qkv";
		const char *p = d[dlen - 2] ? strchr(letters, d[dlen - 2]) : NULL;
		if (!p)
			return circ_errorf(
			    e, "edge '%.*s': bad receiver <%c> (expected <q>, <k> or <v>)", QN(len),
			    s, d[dlen - 2]);
		c = (int)(p - letters);
		dlen -= 3;
	}
	int u, v;
	circ_error sub;
	if (circ_graph_parse_node(g, s, ulen, &u, &sub) < 0 ||
	    circ_graph_parse_node(g, d, dlen, &v, &sub) < 0)
		return circ_errorf(e, "edge '%.*s': %s", QN(len), s, sub.msg);
	if (u == g->n_up)
		return circ_errorf(e, "edge '%.*s': logits feeds nothing", QN(len), s);
	circ_node_kind vk;
	circ_graph_node_info(g, v, &vk, NULL, NULL);
	if (vk == CIRC_NODE_INPUT)
		return circ_errorf(e, "edge '%.*s': input receives nothing", QN(len), s);
	if (c >= 0 && vk != CIRC_NODE_HEAD)
		return circ_errorf(e, "edge '%.*s': only heads have <q>, <k>, <v> receivers",
				   QN(len), s);
	if (vk == CIRC_NODE_HEAD) {
		if (g->level == CIRC_LEVEL_NODE && c >= 0)
			return circ_errorf(e,
					   "edge '%.*s': a node-level graph has no <q>, <k>, <v> "
					   "receivers",
					   QN(len), s);
		if (g->level == CIRC_LEVEL_EDGE && c < 0)
			return circ_errorf(e,
					   "edge '%.*s': an edge into a head needs its receiver "
					   "<q>, <k> or <v>",
					   QN(len), s);
	}
	int first;
	circ_graph_node_recvs(g, v, &first);
	int r = first + (c > 0 && g->level == CIRC_LEVEL_EDGE ? c : 0);
	int64_t idx = circ_graph_edge(g, r, u);
	if (idx < 0) {
		char un[CIRC_NAME_MAX], vn[CIRC_NAME_MAX];
		circ_graph_node_name(g, u, un, sizeof un);
		circ_graph_node_name(g, v, vn, sizeof vn);
		return circ_errorf(e,
				   "edge '%.*s': no such edge (%s, layer %d, does not feed %s, "
				   "layer %d)",
				   QN(len), s, un, circ_graph_node_layer(g, u), vn,
				   circ_graph_node_layer(g, v));
	}
	*edge = idx;
	return 0;
}

int circ_graph_write_edges(const circ_graph *g, FILE *f, circ_error *e)
{
	char name[CIRC_NAME_MAX];
	for (int64_t i = 0; i < g->n_edges; i++) {
		circ_graph_edge_name(g, i, name, sizeof name);
		if (fputs(name, f) == EOF || putc('\n', f) == EOF)
			return circ_errorf(e, "write error: %s", strerror(errno));
	}
	return 0;
}

/* ---- headers ---- */

int circ_graph_level_parse(const char *s, circ_graph_level *level)
{
	if (!strcmp(s, "edge"))
		*level = CIRC_LEVEL_EDGE;
	else if (!strcmp(s, "node"))
		*level = CIRC_LEVEL_NODE;
	else
		return -1;
	return 0;
}

int circ_graph_input_parse(const char *s, circ_input_conv *conv)
{
	if (!strcmp(s, "eap-ig"))
		*conv = CIRC_INPUT_EAPIG;
	else if (!strcmp(s, "acdc"))
		*conv = CIRC_INPUT_ACDC;
	else
		return -1;
	return 0;
}

const char *circ_graph_level_name(circ_graph_level level)
{
	return level == CIRC_LEVEL_NODE ? "node" : "edge";
}

const char *circ_graph_input_name(circ_input_conv conv)
{
	return conv == CIRC_INPUT_ACDC ? "acdc" : "eap-ig";
}

void circ_graph_pack(msgpack_packer *pk, const circ_graph *g)
{
	int acdc = g->input != CIRC_INPUT_EAPIG, par = g->block == CIRC_BLOCK_PARALLEL,
	    kv = g->n_kv_head != g->n_head, raw = g->raw_heads != 0,
	    mt = g->model_type[0] && strcmp(g->model_type, "gpt2") != 0;
	msgpack_pack_map(pk, (uint32_t)(3 + acdc + par + kv + raw + mt));
	circ_pack_kv_i64(pk, "n_layer", g->n_layer);
	circ_pack_kv_i64(pk, "n_head", g->n_head);
	circ_pack_kv_str(pk, "level", circ_graph_level_name(g->level));
	if (acdc)
		circ_pack_kv_str(pk, "convention", circ_graph_input_name(g->input));
	if (par)
		circ_pack_kv_str(pk, "block", "parallel");
	if (kv)
		circ_pack_kv_i64(pk, "kv_heads", g->n_kv_head);
	if (raw)
		circ_pack_kv_str(pk, "head_nodes", "raw");
	if (mt)
		circ_pack_kv_str(pk, "model_type", g->model_type);
}

static int str_field(const msgpack_object *o, const char *key, char *buf, size_t n, circ_error *e)
{
	const char *s;
	size_t len;
	if (circ_rec_str(o, key, &s, &len, e) < 0)
		return -1;
	if (len >= n || memchr(s, 0, len))
		return circ_errorf(e, "field '%s': unknown value '%.*s'", key, QN(len), s);
	memcpy(buf, s, len);
	buf[len] = 0;
	return 0;
}

circ_graph *circ_graph_from_obj(const msgpack_object *o, circ_error *e)
{
	int64_t nl, nh;
	char buf[32];
	circ_graph_level level = CIRC_LEVEL_EDGE;
	circ_input_conv conv = CIRC_INPUT_EAPIG;
	circ_topo_desc d;
	int64_t kv;
	char mt[32] = "";
	if (o->type != MSGPACK_OBJECT_MAP) {
		circ_errorf(e, "graph: expected a map, got %s", circ_obj_type_name(o));
		return NULL;
	}
	if (circ_rec_i64(o, "n_layer", &nl, e) < 0 || circ_rec_i64(o, "n_head", &nh, e) < 0)
		goto fail;
	if (circ_rec_get(o, "level")) {
		if (str_field(o, "level", buf, sizeof buf, e) < 0)
			goto fail;
		if (circ_graph_level_parse(buf, &level) < 0) {
			circ_errorf(e, "field 'level': expected \"edge\" or \"node\", got \"%s\"",
				    buf);
			goto fail;
		}
	}
	if (circ_rec_get(o, "convention")) {
		if (str_field(o, "convention", buf, sizeof buf, e) < 0)
			goto fail;
		if (circ_graph_input_parse(buf, &conv) < 0) {
			circ_errorf(
			    e, "field 'convention': expected \"eap-ig\" or \"acdc\", got \"%s\"",
			    buf);
			goto fail;
		}
	}
	if (nl < 1 || nl > CIRC_GRAPH_MAX_LAYER || nh < 1 || nh > CIRC_GRAPH_MAX_HEAD) {
		circ_errorf(e, "n_layer %lld, n_head %lld out of range", (long long)nl,
			    (long long)nh);
		goto fail;
	}
	circ_topo_desc_init(&d, (int)nl, (int)nh);
	if (circ_rec_get(o, "block")) {
		if (str_field(o, "block", buf, sizeof buf, e) < 0)
			goto fail;
		if (strcmp(buf, "sequential") && strcmp(buf, "parallel")) {
			circ_errorf(e,
				    "field 'block': expected \"sequential\" or \"parallel\", got "
				    "\"%s\"",
				    buf);
			goto fail;
		}
		d.block = strcmp(buf, "parallel") ? CIRC_BLOCK_SEQUENTIAL : CIRC_BLOCK_PARALLEL;
	}
	if (circ_rec_get(o, "kv_heads")) {
		if (circ_rec_i64(o, "kv_heads", &kv, e) < 0)
			goto fail;
		if (kv < 1 || kv > nh || nh % kv) {
			circ_errorf(e, "field 'kv_heads': %lld does not divide n_head %lld",
				    (long long)kv, (long long)nh);
			goto fail;
		}
		d.n_kv_head = (int)kv;
	}
	if (circ_rec_get(o, "head_nodes")) {
		if (str_field(o, "head_nodes", buf, sizeof buf, e) < 0)
			goto fail;
		if (strcmp(buf, "share") && strcmp(buf, "raw")) {
			circ_errorf(e,
				    "field 'head_nodes': expected \"share\" or \"raw\", got \"%s\"",
				    buf);
			goto fail;
		}
		d.raw_heads = !strcmp(buf, "raw");
	}
	if (circ_rec_get(o, "model_type") && str_field(o, "model_type", mt, sizeof mt, e) < 0)
		goto fail;
	circ_graph *g = circ_graph_new_desc(&d, level, e);
	if (!g)
		return NULL;
	g->input = conv;
	memcpy(g->model_type, mt, sizeof g->model_type);
	return g;
fail:
	circ_error_prefix(e, "graph");
	return NULL;
}

circ_graph *circ_graph_from_header(const msgpack_object *header, circ_error *e)
{
	const msgpack_object *o = circ_rec_get(header, "graph");
	if (!o) {
		circ_errorf(e, "header has no 'graph' field");
		return NULL;
	}
	return circ_graph_from_obj(o, e);
}
