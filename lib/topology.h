/*
 * topology: the one place where nodes, receivers, stages and edges are
 * numbered. From a model description (family, layers, heads, key/value
 * heads, parallel or sequential blocks, which receivers exist) it builds
 * tables; the model, the graph, patching and attribution ask them and
 * compute no index themselves.
 *
 * Dimension letters: L layers, H heads, G key/value heads (groups), U
 * upstream nodes, R receivers, S stages, E edges, B sequences, T tokens,
 * C model width.
 *
 * Nodes (GPT-2 in the EAP-IG / MIB conventions; graph.h names them):
 *   u = 0 the embedding (`input`); then, layer by layer, the layer's nodes
 *   in the order its stages produce them: heads a{l}.h0 .. a{l}.h{H-1},
 *   then m{l}. So for GPT-2 u = 1 + l*(H+1) + h for a head and
 *   1 + l*(H+1) + H for m{l}; U = 1 + L*(H+1). The logits node is number U
 *   (it has receivers but no output): n_nodes = U + 1. Feature and error
 *   nodes (dictionaries) will be numbered after the component they read or
 *   replace, in the same bottom-up order; no description makes them yet.
 * Receivers: layer by layer, in stage order, each node's receivers
 *   together: edge level (split q/k/v), for each head its q, k and v
 *   (r = l*(3H+1) + 3h + c), then m{l}; finally logits (R = L*(3H+1) + 1).
 *   Node level: one receiver per head (r = l*(H+1) + h), then m{l}, then
 *   logits (R = L*(H+1) + 1). A description can leave receiver kinds out
 *   (recv_kinds): the others keep this order.
 * Stages: the forward's steps, each reading one residual: sequential
 *   blocks have stage 2l (layer l's attention: the q/k/v receivers of layer
 *   l read residual 2l), 2l+1 (its MLP) and 2L (ln_f and the unembedding,
 *   the logits receiver): S = 2L + 1. Parallel blocks (Pythia, GPT-J) have
 *   one stage per layer (attention and MLP read the same residual) and the
 *   final one: S = L + 1. A stage produces a contiguous run of nodes
 *   (first_node, n_node) and holds a contiguous run of receivers
 *   (first_recv, n_recv); n_in is the number of nodes produced before it,
 *   which is what its receivers can read.
 * Edges: canonical order, by receiver, then upstream node (increasing).
 *   A receiver's inputs are the list edge_up[recv_first[r] ..
 *   recv_first[r+1]). In a full topology that list is the prefix 0 ..
 *   n_in(r)-1 of the node order (every earlier node feeds it), flagged
 *   `dense`: then edge(u -> r) = recv_first[r] + u with no search, the fast
 *   path that every GPT-2 graph takes. A sparse topology
 *   (circ_topology_restrict: feature circuits, pruned graphs) keeps any
 *   increasing list; edge(u -> r) is then a binary search.
 *
 * Node outputs, stored per kind (the layout patching and attribution use;
 * features need not be filled yet):
 *   - components (embedding, heads, MLPs, error nodes): dense rows, one
 *     (B, T, C) array per node, node u at offset dense_row(u) * B*T*C of a
 *     (U_dense, B, T, C) buffer (for GPT-2 dense_row(u) = u);
 *   - features of dictionary d: never a (B, T, C) row each. Activations
 *     are sparse by row: a circ_sparse_acts in CSR form over the B*T rows
 *     (row_ptr (B*T + 1), then feat (nnz) feature indices increasing within
 *     a row and act (nnz) values), and the dictionary's decoder dec
 *     (n_feat, C). Feature f's output at row i is act * dec[f] when (i, f)
 *     is stored, else 0 (circ_sparse_acts_add_node forms it into a dense
 *     row). Its error node is dense: the component's true output minus
 *     the reconstruction, so features + error = the component exactly.
 *
 * Checks: builders check the description and return errors as values;
 * lookups (no error value) check their arguments with CIRC_ASSERT.
 *
 * Layering: topology uses util only.
 */
#ifndef CIRC_TOPOLOGY_H
#define CIRC_TOPOLOGY_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* Limits on the shape (so that every edge index fits an int32). */
#define CIRC_TOPO_MAX_LAYER 1024
#define CIRC_TOPO_MAX_HEAD  1024
/* Edges of one topology: 2^27, about 33 bytes each in a scores run (4 GiB);
 * an edge-level graph of 80 layers of 64 heads has 40 million. */
#define CIRC_TOPO_MAX_EDGES ((int64_t)1 << 27)

typedef enum circ_family { CIRC_FAMILY_GPT2 } circ_family;

/* Residual wiring of a block: sequential (the MLP reads the residual after
 * the attention: GPT-2, Llama) or parallel (both read the block's input:
 * Pythia, GPT-J). */
typedef enum circ_block_kind { CIRC_BLOCK_SEQUENTIAL, CIRC_BLOCK_PARALLEL } circ_block_kind;

/* Edge level: each head has q, k and v receivers; node level: one. */
typedef enum circ_graph_level { CIRC_LEVEL_EDGE, CIRC_LEVEL_NODE } circ_graph_level;

typedef enum circ_node_kind {
	CIRC_NODE_INPUT, /* the embedding */
	CIRC_NODE_HEAD,
	CIRC_NODE_MLP,
	CIRC_NODE_LOGITS,
	CIRC_NODE_FEATURE, /* a dictionary feature (sparse output) */
	CIRC_NODE_ERROR	   /* a dictionary's error term (dense output) */
} circ_node_kind;

typedef enum circ_recv_kind {
	CIRC_RECV_Q,
	CIRC_RECV_K,
	CIRC_RECV_V,
	CIRC_RECV_HEAD, /* a whole head, node-level graphs only */
	CIRC_RECV_MLP,
	CIRC_RECV_LOGITS,
	CIRC_RECV_DICT /* a dictionary's input (an SAE or transcoder encoder) */
} circ_recv_kind;

/* Bit of a receiver kind in circ_topo_desc.recv_kinds. */
#define CIRC_RECV_BIT(k) (1u << (unsigned)(k))

typedef enum circ_stage_kind {
	CIRC_STAGE_ATTN,  /* before layer l's attention (its q/k/v receivers) */
	CIRC_STAGE_MLP,	  /* before layer l's MLP (its m receiver) */
	CIRC_STAGE_FINAL, /* before ln_f (the logits receiver); layer == L */
	CIRC_STAGE_BLOCK  /* parallel blocks: attention and MLP of layer l together */
} circ_stage_kind;

/* How a node's output is stored (see the top of this file). */
typedef enum circ_store_kind {
	CIRC_STORE_NONE,  /* logits: no output */
	CIRC_STORE_DENSE, /* (B, T, C) rows */
	CIRC_STORE_SPARSE /* sparse activations times decoder rows */
} circ_store_kind;

typedef struct circ_topo_desc {
	circ_family family;
	int n_layer, n_head; /* L, H */
	int n_kv_head;	     /* G key/value heads; 0 means H (no grouping) */
	circ_block_kind block;
	circ_graph_level level;
	unsigned recv_kinds; /* CIRC_RECV_BIT set of the receivers that exist;
			      * 0: all of the level's (q, k, v or head; mlp;
			      * logits) */
	int raw_heads;	     /* with a norm after attention: 1 if a head's
			      * output is its own, before that norm (EAP-IG's
			      * and MIB's nodes), 0 (default) its share of the
			      * normed sum (circ(1), MODEL FAMILIES) */
} circ_topo_desc;

/* A description with the defaults: GPT-2, G = H, sequential, edge level. */
void circ_topo_desc_init(circ_topo_desc *d, int n_layer, int n_head);

typedef struct circ_topo_node {
	circ_node_kind kind;
	int layer;		/* -1 for the embedding, L for logits */
	int head;		/* the head, else -1 */
	int stage;		/* the stage producing it: -1 embedding, S-1 logits (none) */
	int first_recv, n_recv; /* its receivers (contiguous); 0 for the embedding */
	circ_store_kind store;
	int dense_row; /* CIRC_STORE_DENSE: its row in (U_dense, B, T, C) */
} circ_topo_node;

typedef struct circ_topo_recv {
	circ_recv_kind kind;
	int node;  /* the node it feeds */
	int layer; /* L for logits */
	int head;  /* q/k/v or head receivers: the head, else -1 */
	int group; /* k/v receivers: the key/value head (group), else -1 */
	int stage; /* the stage whose residual it reads */
} circ_topo_recv;

typedef struct circ_topo_stage {
	circ_stage_kind kind;
	int layer;		/* L for the final stage */
	int first_node, n_node; /* the nodes it produces */
	int first_recv, n_recv; /* its receivers */
	int n_in;		/* nodes produced before it (0 .. n_in-1) */
} circ_topo_stage;

typedef struct circ_topology {
	circ_topo_desc d;
	int n_up;		/* U: nodes with an output */
	int n_nodes;		/* U + 1 (logits) */
	int n_recv;		/* R */
	int n_stage;		/* S */
	int n_dense;		/* U_dense: dense node rows */
	int64_t n_edges;	/* E */
	int dense;		/* 1: every receiver's inputs are the prefix 0 .. n_in-1 */
	circ_topo_node *node;	/* (n_nodes) */
	circ_topo_recv *recv;	/* (R) */
	circ_topo_stage *stage; /* (S) */
	int64_t *recv_first;	/* (R + 1) first edge of each receiver; [R] = E */
	int32_t *edge_up;	/* (E) upstream node of each edge */
	int32_t *edge_recv;	/* (E) receiver of each edge */
} circ_topology;

/* Builds the full topology of a description (every earlier node feeds
 * every receiver: dense). NULL with a message if a dimension is out of
 * range, G does not divide H, or the receiver kinds leave a node without
 * receivers. Free with circ_topology_free. */
circ_topology *circ_topology_new(const circ_topo_desc *d, circ_error *e);
/* The same nodes, receivers and stages with only the edges where keep[e]
 * != 0 (keep: (E) of t): a sparse topology (dense 0) unless every edge is
 * kept. Never fails. */
circ_topology *circ_topology_restrict(const circ_topology *t, const uint8_t *keep);
void circ_topology_free(circ_topology *t); /* NULL is a no-op */
/* 1 if a and b have the same description and edges. */
int circ_topology_same(const circ_topology *a, const circ_topology *b);

/* ---- lookups (arguments checked with CIRC_ASSERT) ---- */
int circ_topo_node_input(const circ_topology *t); /* 0 */
int circ_topo_node_head(const circ_topology *t, int layer, int head);
int circ_topo_node_mlp(const circ_topology *t, int layer);
int circ_topo_node_logits(const circ_topology *t); /* U */
/* Receiver of head's input k (CIRC_RECV_Q, _K, _V at edge level; at node
 * level the head's one receiver, whatever k). -1 if the description left
 * that kind out. */
int circ_topo_recv_head(const circ_topology *t, int layer, int head, circ_recv_kind k);
int circ_topo_recv_mlp(const circ_topology *t, int layer);
int circ_topo_recv_logits(const circ_topology *t);
/* Stage of layer l's attention, its MLP (the same stage for parallel
 * blocks), and the final stage. */
int circ_topo_stage_attn(const circ_topology *t, int layer);
int circ_topo_stage_mlp(const circ_topology *t, int layer);
int circ_topo_stage_final(const circ_topology *t);
/* Number of nodes that can feed receiver r (its stage's n_in). */
int circ_topo_recv_n_in(const circ_topology *t, int r);
/* Edge index of u -> r, or -1 if that edge does not exist (any r, u). */
int64_t circ_topo_edge(const circ_topology *t, int r, int u);
/* The receiver of topology `to` that stands for receiver r of `from` (the
 * same model at another level or with other receivers): the receiver of
 * the same node and kind, or the node's whole-head receiver; -1 if none. */
int circ_topo_map_recv(const circ_topology *from, int r, const circ_topology *to);

/* ---- sparse feature activations (see the top of this file) ---- */
typedef struct circ_sparse_acts {
	int n_rows;		/* B*T */
	int n_feat;		/* features of the dictionary */
	const int64_t *row_ptr; /* (n_rows + 1) */
	const int32_t *feat;	/* (nnz) increasing within a row */
	const float *act;	/* (nnz) */
	const float *dec;	/* (n_feat, C) decoder rows */
} circ_sparse_acts;
/* Adds feature f's output (act * dec[f] at the rows where it is active)
 * into out (n_rows, C). */
void circ_sparse_acts_add_node(float *out, const circ_sparse_acts *a, int f, int C);

/* ---- hook points (topology_hooks.c) ----
 * TransformerLens's names of the activations a dictionary reads or writes,
 * "blocks.<l>.<point>", the same for every family:
 *   hook_resid_pre   residual before layer l (the input of its attention stage)
 *   hook_resid_mid   residual after the attention (sequential blocks only)
 *   hook_resid_post  residual after layer l (hook_resid_pre of l+1; before
 *                    ln_f for the last layer)
 *   hook_attn_out    the attention's output, its c_proj bias included
 *   hook_mlp_out     the MLP's output (its node's output)
 *   attn.hook_z      every head's attention-weighted values, (H*D) per row
 *   ln2.hook_normalized  the MLP's LayerNorm output (sequential blocks)
 *   hook_mlp_in      the MLP block's input (= hook_resid_mid)
 * circuit-tracer's "mlp.hook_in" / "mlp.hook_out" read as
 * ln2.hook_normalized / hook_mlp_out (lib/dict applies the LayerNorm's
 * weight and bias to mlp.hook_in: circuit-tracer's models are unfolded). */
typedef enum circ_hook_kind {
	CIRC_HOOK_RESID_PRE,
	CIRC_HOOK_RESID_MID,
	CIRC_HOOK_RESID_POST,
	CIRC_HOOK_ATTN_OUT,
	CIRC_HOOK_MLP_OUT,
	CIRC_HOOK_ATTN_Z,
	CIRC_HOOK_LN2_NORMALIZED,
	CIRC_HOOK_MLP_IN,
	CIRC_HOOK_COUNT
} circ_hook_kind;

typedef struct circ_hook {
	circ_hook_kind kind;
	int layer;
} circ_hook;

/* The point's name after "blocks.<l>." ("hook_resid_pre"). */
const char *circ_hook_point_name(circ_hook_kind k);
/* A point's name (or a circuit-tracer alias) into *k; -1 if unknown. */
int circ_hook_point_parse(const char *point, circ_hook_kind *k);
/* Parses "blocks.<l>.<point>"; -1 with "hook '<name>': ..." if malformed
 * or the point is unknown (the message lists the known points). */
int circ_hook_parse(const char *name, circ_hook *h, circ_error *e);
/* Writes "blocks.<l>.<point>" into out (n bytes). */
void circ_hook_format(const circ_hook *h, char *out, size_t n);
/* 0 if the hook exists in t (layer in range; resid_mid needs sequential
 * blocks: with parallel ones, mlp_in and ln2 read the block's input), else
 * -1 with the problem. */
int circ_hook_check(const circ_topology *t, const circ_hook *h, circ_error *e);
/* The first stage whose input the hook's activation has fully formed
 * (where a replacement of it starts to act): attention stage of l for
 * resid_pre; the MLP stage of l for resid_mid, mlp_in, attn_out, attn.hook_z,
 * ln2 (parallel blocks: the block's stage for mlp_in and ln2, the stage
 * after it for attn_out and attn.hook_z); the stage after the MLP of l for
 * mlp_out and resid_post. */
int circ_hook_stage(const circ_topology *t, const circ_hook *h);

#endif
