/*
 * graph: the computational graph of a GPT-2-style transformer as EAP-IG and
 * the MIB benchmark define it: nodes, receivers, edges, their names and their
 * numbering.
 *
 * Nodes: `input`, `a{l}.h{h}` (attention head h of layer l), `m{l}` (the MLP
 * of layer l) and `logits`. A node reads the residual stream through its
 * receivers: a head has three (its q, k and v inputs), an MLP one, logits
 * one. An edge u->r joins an upstream node u (input, a head or an MLP) to a
 * receiver r: every upstream node feeds every receiver of a later layer, an
 * MLP also reads the heads of its own layer, and logits reads every upstream
 * node. Edge names: `a0.h1->a2.h3<q>` (also <k>, <v>), `input->m0`,
 * `a0.h1->m0`, `m3->logits`. GPT-2 small (12 layers, 12 heads) has 158 nodes
 * and 32,491 edges.
 *
 * A node-level graph treats each head as one receiver (no q/k/v split): its
 * edges are written `a0.h1->a2.h3`. Everything else is the same.
 *
 * Numbering: lib/topology's (topology.h writes it out; do not change it):
 * upstream nodes u (input, then per layer its heads and its MLP; n_up =
 * 1 + L*(H+1)), the node index (logits is n_up), receivers r (per layer each
 * head's q, k, v, or the head at node level, then the MLP's, then logits)
 * and edges e in canonical order, by receiver, then upstream; the upstream
 * nodes feeding a receiver are a prefix 0 .. n_in(r)-1, so e =
 * recv_first[r] + u.
 *   Note: EAP-IG's own "backward index" groups a layer's receivers as all q,
 *   then all k, then all v; circ groups them by head. Names are the same, so
 *   exchange by name (circ-render --format json) is unaffected.
 *
 * Conventions (what a node's output is; they decide which model terms belong
 * to no node and so are constants under patching):
 *   CIRC_INPUT_EAPIG (default, as EAP-IG and MIB): `input` is the token
 *   embedding only; the positional embedding and the attention output biases
 *   belong to no node.
 *   CIRC_INPUT_ACDC (as ACDC): `input` is token plus positional embedding.
 * In both, a head's output is its z.W_O slice without the output bias, an MLP's
 * output includes its output bias, each q/k/v receiver reads the residual
 * before the layer's first LayerNorm, and logits reads the final residual
 * before ln_f. The graph only records the convention; the model applies it.
 *
 * Shapes beyond GPT-2's (circ(1), MODEL FAMILIES): parallel blocks (no
 * a{l}.h{h}->m{l} edges) and grouped key/value receivers (k and v per
 * key/value head, named after the group's first head); the header says so
 * ("block", "kv_heads") and names the family ("model_type").
 *
 * Layering: graph uses util, topology and stream (for the header map); patching, scoring
 * and pruning use graph.
 */
#ifndef CIRC_GRAPH_H
#define CIRC_GRAPH_H

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>

#include "topology.h"
#include "util.h"

/* Longest node, receiver or edge name plus NUL, for any graph circ accepts. */
#define CIRC_NAME_MAX 64
/* Limits on the shape (so that every edge index fits an int32). */
#define CIRC_GRAPH_MAX_LAYER CIRC_TOPO_MAX_LAYER
#define CIRC_GRAPH_MAX_HEAD  CIRC_TOPO_MAX_HEAD

typedef enum circ_input_conv { CIRC_INPUT_EAPIG, CIRC_INPUT_ACDC } circ_input_conv;

/* Dimension letters: L layers, H heads, U = n_up, R = n_recv, E = n_edges. */
typedef struct circ_graph {
	int n_layer, n_head;   /* L, H */
	int n_kv_head;	       /* key/value heads with k and v receivers of their own:
				* n_head (the default), or fewer (grouped) */
	circ_block_kind block; /* sequential, or parallel (GPT-NeoX: the MLP does
				* not read its layer's heads) */
	int raw_heads;	       /* heads output before the norm after attention
				* (circ_topo_desc.raw_heads; header "head_nodes":
				* "raw") */
	char model_type[32];   /* the family the graph was made for ("" or "gpt2":
				* not written into headers) */
	circ_graph_level level;
	circ_input_conv input; /* convention; see above */
	int n_up;	       /* U = 1 + L*(H+1) */
	int n_recv;	       /* R = L*(3H+1) + 1, or L*(H+1) + 1 at node level */
	int n_nodes;	       /* U + 1 */
	int64_t n_edges;       /* E */
	int64_t *recv_first;   /* (R + 1) first edge of each receiver; [R] = E */
	int32_t *edge_up;      /* (E) upstream index of each edge */
	int32_t *edge_recv;    /* (E) receiver index of each edge */
	uint8_t *mask;	       /* (R, U) 1 where the edge u->r exists */
	circ_topology *topo;   /* the numbering; the arrays above are its own */
} circ_graph;

/* A new graph for a model of n_layer layers and n_head heads per layer, with
 * the EAP-IG input convention. NULL with a message if a dimension is out of
 * range (1 .. CIRC_GRAPH_MAX_*). Free with circ_graph_free. */
circ_graph *circ_graph_new(int n_layer, int n_head, circ_graph_level level, circ_error *e);
/* A graph of the shape topology description d has (layers, heads, key/value
 * heads, sequential or parallel blocks) at the given level. */
circ_graph *circ_graph_new_desc(const circ_topo_desc *d, circ_graph_level level, circ_error *e);
/* A new graph of g's shape, level, convention and model_type. */
circ_graph *circ_graph_new_like(const circ_graph *g, circ_error *e);
void circ_graph_free(circ_graph *g); /* NULL is a no-op */
/* 1 if a and b have the same shape, level and convention. */
int circ_graph_same(const circ_graph *a, const circ_graph *b);

/* ---- numbering (no checks: arguments must be in range) ---- */
int circ_graph_up_input(const circ_graph *g); /* 0 */
int circ_graph_up_head(const circ_graph *g, int layer, int head);
int circ_graph_up_mlp(const circ_graph *g, int layer);
int circ_graph_node_logits(const circ_graph *g); /* n_up */
/* Receiver of a head's input k: CIRC_RECV_Q, _K or _V (ignored at node
 * level). */
int circ_graph_recv_head(const circ_graph *g, int layer, int head, circ_recv_kind k);
int circ_graph_recv_mlp(const circ_graph *g, int layer);
int circ_graph_recv_logits(const circ_graph *g);
/* Number of upstream nodes feeding receiver r (they are u = 0 .. n-1). */
int circ_graph_recv_n_in(const circ_graph *g, int r);
/* Edge index of u->r, or -1 if that edge does not exist. r and u may be any
 * int (out-of-range values give -1). */
int64_t circ_graph_edge(const circ_graph *g, int r, int u);

/* What node `node` is; layer is -1 for input and n_layer for logits; head is
 * -1 unless a head. Any pointer may be NULL. */
void circ_graph_node_info(const circ_graph *g, int node, circ_node_kind *kind, int *layer,
			  int *head);
/* What receiver r is and the node it belongs to (any pointer may be NULL). */
void circ_graph_recv_info(const circ_graph *g, int r, circ_recv_kind *kind, int *node);
/* The receivers of a node are contiguous: sets *first and returns how many
 * (3 for a head at edge level, 1 for a head at node level, an MLP or logits,
 * 0 for input). */
int circ_graph_node_recvs(const circ_graph *g, int node, int *first);
/* Layer used to order nodes bottom-up: input -1, heads and MLPs their layer,
 * logits n_layer. Within a layer, heads come before the MLP. */
int circ_graph_node_layer(const circ_graph *g, int node);

/* ---- names ---- */
/* Write the name into buf (always NUL-terminated, truncated to n); return
 * the full length as snprintf does. CIRC_NAME_MAX is always enough. */
int circ_graph_node_name(const circ_graph *g, int node, char *buf, size_t n);
int circ_graph_recv_name(const circ_graph *g, int r, char *buf, size_t n); /* "a2.h3<q>" */
int circ_graph_edge_name(const circ_graph *g, int64_t e, char *buf, size_t n);
/* "q", "k", "v" for a head receiver at edge level, else "". */
const char *circ_graph_recv_letter(const circ_graph *g, int r);

/* Parse a node name (s need not be NUL-terminated; len bytes). Strict: the
 * node must exist in this graph, numbers are decimal without sign or leading
 * zeros. 0 and *node set, or -1 with a message naming the node and what is
 * wrong ("node 'a12.h0': no layer 12 (the graph has layers 0-11)"). */
int circ_graph_parse_node(const circ_graph *g, const char *s, size_t len, int *node, circ_error *e);
/* Parse an edge name "up->down" or "up->down<q|k|v>". 0 and *edge set, or -1
 * with a message saying why the edge does not exist in this graph (unknown
 * node, missing or stray <q|k|v>, wrong direction, input as receiver, ...). */
int circ_graph_parse_edge(const circ_graph *g, const char *s, size_t len, int64_t *edge,
			  circ_error *e);

/* Writes every edge name, one a line, in canonical order (line i+1 is edge
 * i): what `--list-edges` prints. -1 with a message on a write error. */
int circ_graph_write_edges(const circ_graph *g, FILE *f, circ_error *e);

/* ---- stream headers ---- */
/* Parses "level" ("edge" or "node") and "convention" ("eap-ig" or "acdc"). */
int circ_graph_level_parse(const char *s, circ_graph_level *level);
int circ_graph_input_parse(const char *s, circ_input_conv *conv);
const char *circ_graph_level_name(circ_graph_level level);
const char *circ_graph_input_name(circ_input_conv conv);
/* Packs the header value {"n_layer","n_head","level"} (plus "convention"
 * only when it is not the default, so EAP-IG-convention headers keep the
 * agreed three keys; "block": "parallel", "kv_heads" when grouped and
 * "model_type" when not gpt2, likewise only when they say something).
 * Packs exactly one object. */
void circ_graph_pack(msgpack_packer *pk, const circ_graph *g);
/* Builds the graph described by the map o (as circ_graph_pack writes it).
 * NULL with a message naming the bad field. */
circ_graph *circ_graph_from_obj(const msgpack_object *o, circ_error *e);
/* Builds the graph from a header's "graph" field. NULL with a message if the
 * field is missing or bad. */
circ_graph *circ_graph_from_header(const msgpack_object *header, circ_error *e);

#endif
