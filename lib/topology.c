/*
 * topology: nodes, receivers, stages and edges from a model description
 * (see topology.h for the numbering and the storage layout).
 *
 * Design: the builder walks the model once, bottom-up, appending stages,
 * nodes and receivers to tables in the order the forward meets them, so
 * the numbering is a consequence of one walk and not a formula copied
 * around. A few (layer, head) -> index tables (head_node, head_recv) make
 * the lookups O(1). Edges are materialised (recv_first, edge_up,
 * edge_recv): about 300 KB for GPT-2 small.
 *
 * Grouped key/value heads (G < H; data only until a family forward uses
 * them): each group's k and v receivers belong to the first head of the
 * group, after its q, so that a node's receivers stay contiguous; the
 * other heads of the group have a q receiver only.
 */
#include "topology.h"

#include <stdlib.h>
#include <string.h>

void circ_topo_desc_init(circ_topo_desc *d, int n_layer, int n_head)
{
	memset(d, 0, sizeof *d);
	d->family = CIRC_FAMILY_GPT2;
	d->n_layer = n_layer;
	d->n_head = n_head;
	d->n_kv_head = n_head;
	d->block = CIRC_BLOCK_SEQUENTIAL;
	d->level = CIRC_LEVEL_EDGE;
}

/* The private part: lookup tables behind the public struct. */
typedef struct topo_full {
	circ_topology t;
	int *head_node;	  /* (L, H) node of each head */
	int *head_recv;	  /* (L, H, 3) receiver of each head's q, k, v (-1 none) */
	int *mlp_recv;	  /* (L) */
	int *layer_stage; /* (L, 2) attention and MLP stage of each layer */
} topo_full;

static unsigned default_kinds(circ_graph_level level)
{
	unsigned k = CIRC_RECV_BIT(CIRC_RECV_MLP) | CIRC_RECV_BIT(CIRC_RECV_LOGITS);
	if (level == CIRC_LEVEL_NODE)
		return k | CIRC_RECV_BIT(CIRC_RECV_HEAD);
	return k | CIRC_RECV_BIT(CIRC_RECV_Q) | CIRC_RECV_BIT(CIRC_RECV_K) |
	       CIRC_RECV_BIT(CIRC_RECV_V);
}

static int check_desc(const circ_topo_desc *d, unsigned kinds, circ_error *e)
{
	if (d->family != CIRC_FAMILY_GPT2)
		return circ_errorf(e, "topology: unknown family %d", (int)d->family);
	if (d->n_layer < 1 || d->n_layer > CIRC_TOPO_MAX_LAYER)
		return circ_errorf(e, "graph: n_layer %d out of range (1-%d)", d->n_layer,
				   CIRC_TOPO_MAX_LAYER);
	if (d->n_head < 1 || d->n_head > CIRC_TOPO_MAX_HEAD)
		return circ_errorf(e, "graph: n_head %d out of range (1-%d)", d->n_head,
				   CIRC_TOPO_MAX_HEAD);
	if (d->n_kv_head < 1 || d->n_kv_head > d->n_head || d->n_head % d->n_kv_head)
		return circ_errorf(e, "topology: %d key/value heads do not divide %d heads",
				   d->n_kv_head, d->n_head);
	if (d->block != CIRC_BLOCK_SEQUENTIAL && d->block != CIRC_BLOCK_PARALLEL)
		return circ_errorf(e, "topology: bad block kind %d", (int)d->block);
	if (d->level != CIRC_LEVEL_EDGE && d->level != CIRC_LEVEL_NODE)
		return circ_errorf(e, "graph: bad level %d", (int)d->level);
	if (kinds & ~default_kinds(d->level))
		return circ_errorf(e, "topology: receiver kinds 0x%x are not of this level",
				   kinds & ~default_kinds(d->level));
	if (!(kinds & CIRC_RECV_BIT(CIRC_RECV_LOGITS)))
		return circ_errorf(e, "topology: no logits receiver");
	return 0;
}

/* ---- the walk ---- */

typedef struct walk {
	topo_full *f;
	unsigned kinds;
	int cap_node, cap_recv;
} walk;

static int add_stage(walk *w, circ_stage_kind kind, int layer)
{
	circ_topology *t = &w->f->t;
	circ_topo_stage *s = &t->stage[t->n_stage];
	s->kind = kind;
	s->layer = layer;
	s->first_node = t->n_up;
	s->first_recv = t->n_recv;
	s->n_in = t->n_up;
	return t->n_stage++;
}

static int add_node(walk *w, circ_node_kind kind, int layer, int head, int stage)
{
	circ_topology *t = &w->f->t;
	int u = kind == CIRC_NODE_LOGITS ? t->n_up : t->n_up++;
	circ_topo_node *n = &t->node[u];
	CIRC_ASSERT(u < w->cap_node);
	n->kind = kind;
	n->layer = layer;
	n->head = head;
	n->stage = stage;
	n->first_recv = t->n_recv;
	n->n_recv = 0;
	n->store = kind == CIRC_NODE_LOGITS ? CIRC_STORE_NONE : CIRC_STORE_DENSE;
	n->dense_row = kind == CIRC_NODE_LOGITS ? -1 : t->n_dense++;
	if (stage >= 0 && kind != CIRC_NODE_LOGITS)
		t->stage[stage].n_node++;
	return u;
}

/* Adds a receiver of node u reading stage s, if its kind exists. */
static int add_recv(walk *w, int u, circ_recv_kind kind, int s, int group)
{
	circ_topology *t = &w->f->t;
	circ_topo_recv *r;
	if (!(w->kinds & CIRC_RECV_BIT(kind)))
		return -1;
	CIRC_ASSERT(t->n_recv < w->cap_recv);
	r = &t->recv[t->n_recv];
	r->kind = kind;
	r->node = u;
	r->layer = t->node[u].layer;
	r->head = t->node[u].head;
	r->group = group;
	r->stage = s;
	t->node[u].n_recv++;
	t->stage[s].n_recv++;
	return t->n_recv++;
}

static void add_heads(walk *w, int l, int s)
{
	topo_full *f = w->f;
	const circ_topo_desc *d = &f->t.d;
	int H = d->n_head, per = d->n_head / d->n_kv_head;
	for (int h = 0; h < H; h++) {
		int u = add_node(w, CIRC_NODE_HEAD, l, h, s),
		    *hr = f->head_recv + ((size_t)l * H + h) * 3;
		f->head_node[(size_t)l * H + h] = u;
		if (d->level == CIRC_LEVEL_NODE) {
			hr[0] = hr[1] = hr[2] = add_recv(w, u, CIRC_RECV_HEAD, s, -1);
			continue;
		}
		hr[0] = add_recv(w, u, CIRC_RECV_Q, s, -1);
		if (h % per == 0) {
			hr[1] = add_recv(w, u, CIRC_RECV_K, s, h / per);
			hr[2] = add_recv(w, u, CIRC_RECV_V, s, h / per);
		} else {
			/* the group's k and v, on its first head */
			hr[1] = hr[1 - 3 * (h % per)];
			hr[2] = hr[2 - 3 * (h % per)];
		}
	}
}

static void add_mlp(walk *w, int l, int s)
{
	int u = add_node(w, CIRC_NODE_MLP, l, -1, s);
	w->f->mlp_recv[l] = add_recv(w, u, CIRC_RECV_MLP, s, -1);
}

/* Receivers of a stage read what was made before it; the nodes a stage
 * makes are added after its receivers' n_in is fixed. */
static void walk_model(walk *w)
{
	topo_full *f = w->f;
	circ_topology *t = &f->t;
	const circ_topo_desc *d = &t->d;
	int L = d->n_layer, s;
	add_node(w, CIRC_NODE_INPUT, -1, -1, -1);
	for (int l = 0; l < L; l++) {
		if (d->block == CIRC_BLOCK_PARALLEL) {
			s = add_stage(w, CIRC_STAGE_BLOCK, l);
			f->layer_stage[2 * l] = f->layer_stage[2 * l + 1] = s;
			add_heads(w, l, s);
			add_mlp(w, l, s);
			continue;
		}
		s = add_stage(w, CIRC_STAGE_ATTN, l);
		f->layer_stage[2 * l] = s;
		add_heads(w, l, s);
		s = add_stage(w, CIRC_STAGE_MLP, l);
		f->layer_stage[2 * l + 1] = s;
		add_mlp(w, l, s);
	}
	s = add_stage(w, CIRC_STAGE_FINAL, L);
	add_node(w, CIRC_NODE_LOGITS, L, -1, s); /* numbered U, after every output */
	add_recv(w, t->n_up, CIRC_RECV_LOGITS, s, -1);
	t->n_nodes = t->n_up + 1;
}

/* Sets recv_first and the edge arrays: keep NULL = every earlier node. */
static int make_edges(circ_topology *t, const circ_topology *from, const uint8_t *keep,
		      circ_error *e)
{
	int64_t total = 0;
	t->recv_first = circ_xmalloc(((size_t)t->n_recv + 1) * sizeof *t->recv_first);
	for (int r = 0; r < t->n_recv; r++) {
		t->recv_first[r] = total;
		if (!keep) {
			total += t->stage[t->recv[r].stage].n_in;
			continue;
		}
		for (int64_t i = from->recv_first[r]; i < from->recv_first[r + 1]; i++)
			total += keep[i] != 0;
	}
	t->recv_first[t->n_recv] = total;
	/* Checked before the per-edge arrays exist: a header of a few bytes
	 * must not make a reader allocate gigabytes. */
	if (total > CIRC_TOPO_MAX_EDGES)
		return circ_errorf(
		    e,
		    "graph: %d layers of %d heads make %lld edges, more than a dense "
		    "graph holds (%lld)",
		    t->d.n_layer, t->d.n_head, (long long)total, (long long)CIRC_TOPO_MAX_EDGES);
	t->n_edges = total;
	t->edge_up = circ_xmalloc((size_t)total * sizeof *t->edge_up);
	t->edge_recv = circ_xmalloc((size_t)total * sizeof *t->edge_recv);
	t->dense = 1;
	for (int r = 0; r < t->n_recv; r++) {
		int64_t o = t->recv_first[r];
		if (!keep) {
			for (int u = 0; u < t->stage[t->recv[r].stage].n_in; u++, o++) {
				t->edge_up[o] = u;
				t->edge_recv[o] = r;
			}
			continue;
		}
		for (int64_t i = from->recv_first[r]; i < from->recv_first[r + 1]; i++)
			if (keep[i]) {
				t->edge_up[o] = from->edge_up[i];
				t->edge_recv[o] = r;
				t->dense &= t->edge_up[o] == o - t->recv_first[r];
				o++;
			}
		t->dense &= o - t->recv_first[r] == t->stage[t->recv[r].stage].n_in;
	}
	return 0;
}

static topo_full *alloc_full(const circ_topo_desc *d)
{
	topo_full *f = circ_xcalloc(1, sizeof *f);
	size_t L = (size_t)d->n_layer, H = (size_t)d->n_head;
	size_t nodes = 2 + L * (H + 1), recvs = 1 + L * (3 * H + 1), stages = 2 * L + 1;
	f->t.d = *d;
	f->t.node = circ_xcalloc(nodes, sizeof *f->t.node);
	f->t.recv = circ_xcalloc(recvs, sizeof *f->t.recv);
	f->t.stage = circ_xcalloc(stages, sizeof *f->t.stage);
	f->head_node = circ_xcalloc(L * H, sizeof *f->head_node);
	f->head_recv = circ_xcalloc(L * H * 3, sizeof *f->head_recv);
	f->mlp_recv = circ_xcalloc(L, sizeof *f->mlp_recv);
	f->layer_stage = circ_xcalloc(2 * L, sizeof *f->layer_stage);
	return f;
}

circ_topology *circ_topology_new(const circ_topo_desc *d0, circ_error *e)
{
	circ_topo_desc d = *d0;
	walk w;
	if (d.n_kv_head == 0)
		d.n_kv_head = d.n_head;
	w.kinds = d.recv_kinds ? d.recv_kinds : default_kinds(d.level);
	if (check_desc(&d, w.kinds, e) < 0)
		return NULL;
	d.recv_kinds = w.kinds;
	w.f = alloc_full(&d);
	w.cap_node = 2 + d.n_layer * (d.n_head + 1);
	w.cap_recv = 1 + d.n_layer * (3 * d.n_head + 1);
	walk_model(&w);
	for (int u = 1; u < w.f->t.n_nodes; u++)
		if (w.f->t.node[u].n_recv == 0) {
			circ_errorf(e,
				    "topology: receiver kinds 0x%x leave node %d without receivers",
				    w.kinds, u);
			circ_topology_free(&w.f->t);
			return NULL;
		}
	if (make_edges(&w.f->t, NULL, NULL, e) < 0) {
		circ_topology_free(&w.f->t);
		return NULL;
	}
	return &w.f->t;
}

circ_topology *circ_topology_restrict(const circ_topology *t, const uint8_t *keep)
{
	const topo_full *src = (const topo_full *)(const void *)t;
	topo_full *f = alloc_full(&t->d);
	size_t L = (size_t)t->d.n_layer, H = (size_t)t->d.n_head;
	circ_error e;
	circ_topology *n = &f->t;
	int rc;
	n->n_up = t->n_up;
	n->n_nodes = t->n_nodes;
	n->n_recv = t->n_recv;
	n->n_stage = t->n_stage;
	n->n_dense = t->n_dense;
	memcpy(n->node, t->node, (size_t)t->n_nodes * sizeof *n->node);
	memcpy(n->recv, t->recv, (size_t)t->n_recv * sizeof *n->recv);
	memcpy(n->stage, t->stage, (size_t)t->n_stage * sizeof *n->stage);
	memcpy(f->head_node, src->head_node, L * H * sizeof *f->head_node);
	memcpy(f->head_recv, src->head_recv, L * H * 3 * sizeof *f->head_recv);
	memcpy(f->mlp_recv, src->mlp_recv, L * sizeof *f->mlp_recv);
	memcpy(f->layer_stage, src->layer_stage, 2 * L * sizeof *f->layer_stage);
	rc = make_edges(n, t, keep, &e); /* fewer edges than t: cannot overflow */
	CIRC_ASSERT(rc == 0);
	return n;
}

void circ_topology_free(circ_topology *t)
{
	topo_full *f = (topo_full *)(void *)t;
	if (!t)
		return;
	free(t->node);
	free(t->recv);
	free(t->stage);
	free(t->recv_first);
	free(t->edge_up);
	free(t->edge_recv);
	free(f->head_node);
	free(f->head_recv);
	free(f->mlp_recv);
	free(f->layer_stage);
	free(f);
}

int circ_topology_same(const circ_topology *a, const circ_topology *b)
{
	if (memcmp(&a->d, &b->d, sizeof a->d) || a->n_edges != b->n_edges)
		return 0;
	return !memcmp(a->recv_first, b->recv_first, ((size_t)a->n_recv + 1) * sizeof(int64_t)) &&
	       !memcmp(a->edge_up, b->edge_up, (size_t)a->n_edges * sizeof(int32_t));
}

/* ---- lookups ---- */

static const topo_full *full(const circ_topology *t)
{
	return (const topo_full *)(const void *)t;
}

int circ_topo_node_input(const circ_topology *t)
{
	(void)t;
	return 0;
}

int circ_topo_node_head(const circ_topology *t, int layer, int head)
{
	CIRC_ASSERT(layer >= 0 && layer < t->d.n_layer && head >= 0 && head < t->d.n_head);
	return full(t)->head_node[(size_t)layer * t->d.n_head + head];
}

int circ_topo_node_mlp(const circ_topology *t, int layer)
{
	CIRC_ASSERT(layer >= 0 && layer < t->d.n_layer);
	return t->recv[full(t)->mlp_recv[layer]].node;
}

int circ_topo_node_logits(const circ_topology *t)
{
	return t->n_up;
}

int circ_topo_recv_head(const circ_topology *t, int layer, int head, circ_recv_kind k)
{
	CIRC_ASSERT(layer >= 0 && layer < t->d.n_layer && head >= 0 && head < t->d.n_head);
	CIRC_ASSERT(k == CIRC_RECV_Q || k == CIRC_RECV_K || k == CIRC_RECV_V ||
		    k == CIRC_RECV_HEAD);
	return full(t)->head_recv[((size_t)layer * t->d.n_head + head) * 3 +
				  (k == CIRC_RECV_HEAD ? 0 : (int)k)];
}

int circ_topo_recv_mlp(const circ_topology *t, int layer)
{
	CIRC_ASSERT(layer >= 0 && layer < t->d.n_layer);
	return full(t)->mlp_recv[layer];
}

int circ_topo_recv_logits(const circ_topology *t)
{
	return t->node[t->n_up].first_recv;
}

int circ_topo_stage_attn(const circ_topology *t, int layer)
{
	CIRC_ASSERT(layer >= 0 && layer < t->d.n_layer);
	return full(t)->layer_stage[2 * layer];
}

int circ_topo_stage_mlp(const circ_topology *t, int layer)
{
	CIRC_ASSERT(layer >= 0 && layer < t->d.n_layer);
	return full(t)->layer_stage[2 * layer + 1];
}

int circ_topo_stage_final(const circ_topology *t)
{
	return t->n_stage - 1;
}

int circ_topo_recv_n_in(const circ_topology *t, int r)
{
	CIRC_ASSERT(r >= 0 && r < t->n_recv);
	return t->stage[t->recv[r].stage].n_in;
}

int64_t circ_topo_edge(const circ_topology *t, int r, int u)
{
	int64_t lo, hi;
	if (r < 0 || r >= t->n_recv || u < 0)
		return -1;
	lo = t->recv_first[r];
	hi = t->recv_first[r + 1];
	if (t->dense)
		return u < hi - lo ? lo + u : -1;
	while (lo < hi) {
		int64_t mid = lo + (hi - lo) / 2;
		if (t->edge_up[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < t->recv_first[r + 1] && t->edge_up[lo] == u ? lo : -1;
}

int circ_topo_map_recv(const circ_topology *from, int r, const circ_topology *to)
{
	const circ_topo_recv *x;
	const circ_topo_node *n;
	CIRC_ASSERT(r >= 0 && r < from->n_recv);
	CIRC_ASSERT(from->n_nodes == to->n_nodes);
	x = &from->recv[r];
	n = &to->node[x->node];
	for (int i = n->first_recv; i < n->first_recv + n->n_recv; i++)
		if (to->recv[i].kind == x->kind || to->recv[i].kind == CIRC_RECV_HEAD)
			return i;
	return -1;
}

void circ_sparse_acts_add_node(float *out, const circ_sparse_acts *a, int f, int C)
{
	const float *dec;
	CIRC_ASSERT(f >= 0 && f < a->n_feat);
	dec = a->dec + (size_t)f * (size_t)C;
	for (int i = 0; i < a->n_rows; i++) {
		int64_t lo = a->row_ptr[i], hi = a->row_ptr[i + 1];
		while (lo < hi) { /* feat is increasing within the row */
			int64_t mid = lo + (hi - lo) / 2;
			if (a->feat[mid] < f)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < a->row_ptr[i + 1] && a->feat[lo] == f) {
			float v = a->act[lo], *o = out + (size_t)i * (size_t)C;
			for (int c = 0; c < C; c++)
				o[c] += v * dec[c];
		}
	}
}
