/*
 * model: a GPT-2 (Hugging Face layout) in C, decomposed for circuit
 * discovery: a forward pass that keeps every node's output and lets a hook
 * change any receiver's input, and a backward pass that gives the gradient
 * of a scalar metric at every receiver's input and every node's output.
 *
 * Dimension letters (used in every shape comment of this file):
 *   L layers, H heads, C = n_embd, D = C/H head width, F = n_inner (MLP
 *   width), V vocabulary, P = n_ctx positions, B sequences in a batch, T
 *   tokens per sequence (the same T for every sequence of a batch), N read
 *   rows (positions at which logits are computed), U upstream nodes,
 *   R receivers.
 *
 * Nodes, receivers and stages are numbered by lib/topology (topology.h
 * writes the numbering out; EAP-IG / MIB conventions): the model keeps an
 * edge-level topology of its config (circ_model_topology) and the numbering
 * functions below ask it; lib/graph names them. In short: node 0 the input,
 * then per layer its heads and its MLP (U = 1 + L*(H+1)); receivers per
 * layer each head's q, k, v, then the MLP's, then logits (R = L*(3H+1) + 1).
 *   What a node outputs:
 *     input  the token embedding wte[token] (default), or token plus
 *            positional embedding when the run uses the ACDC convention;
 *     a{l}.h{h}  z_h @ W_O[h*D:(h+1)*D, :], WITHOUT the c_proj bias;
 *     m{l}   the MLP's output, its c_proj bias included.
 *   The positional embedding (default convention) and every attention c_proj
 *   bias belong to no node: they are constants of the residual stream.
 *   What a receiver reads: each q/k/v receiver of layer l the residual before
 *   that layer's ln_1; m{l} the residual before ln_2 (which includes the
 *   heads of layer l); logits the final residual before ln_f. A receiver's
 *   input is that residual plus an optional per-receiver additive delta set
 *   by the forward hook; the residual itself is always the plain sum of the
 *   current run's node outputs and the constants.
 *
 * Stages (topology.h): the forward is a sequence of stages s = 0 .. 2L:
 * stage 2l is layer l's attention, 2l+1 its MLP, 2L the final LayerNorm and
 * unembedding. Residual s (B, T, C) is the input of stage s. Hooks get s.
 *
 * Memory: weights are memory-mapped (F32, aligned) or converted once to f32
 * (F16, BF16); a run owns one activation arena sized from the config and the
 * largest B and T it was made for, so forwards never allocate (receiver
 * delta buffers are the exception: made on first use, then kept). The arena
 * is an anonymous mapping: address space is reserved for max_b x max_t, but
 * only the pages a forward touches (its B x T rows) use memory.
 *
 * Backward: receiver and residual gradients, and on request parameter
 * gradients (for training, lib/train): they are added (+=) into a buffer
 * with the circ_weights layout (circ_weights_alloc), as llm.c's backward
 * kernels accumulate, so a caller can sum them over batches.
 *
 * Threads: a run has a thread count, the size of its own small pthread pool,
 * over which its GEMMs (each part a single-threaded OpenBLAS call: OpenBLAS
 * is set to one thread, process-wide, at every forward and backward) and
 * circ's kernels are split.
 *
 * Layering: model uses util, stream (dtypes), safetensors, kernels and
 * topology.
 */
#ifndef CIRC_MODEL_H
#define CIRC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "topology.h"
#include "util.h"

/* ---- configuration ---- */

typedef enum circ_act {
	CIRC_ACT_GELU_NEW, /* "gelu_new", "gelu_pytorch_tanh": the tanh approximation */
	CIRC_ACT_GELU,	   /* "gelu": exact, x * Phi(x) with erf */
	CIRC_ACT_SILU	   /* "silu" (also spelled "swish"): x * sigmoid(x) */
} circ_act;

/* The model families circ reads (config.json's model_type). */
typedef enum circ_model_type {
	CIRC_MODEL_GPT2, /* 0: a config made field by field is GPT-2 */
	CIRC_MODEL_GPT_NEOX,
	CIRC_MODEL_LLAMA,
	CIRC_MODEL_MISTRAL,
	CIRC_MODEL_QWEN2,
	CIRC_MODEL_QWEN3,
	CIRC_MODEL_GEMMA,
	CIRC_MODEL_GEMMA2,
	CIRC_MODEL_GEMMA3_TEXT,
	CIRC_MODEL_OLMO2,
	CIRC_MODEL_COUNT
} circ_model_type;

typedef enum circ_norm_kind {
	CIRC_NORM_LAYERNORM, /* (x - mean) / sqrt(var + eps) * w + b */
	CIRC_NORM_RMSNORM    /* x / sqrt(mean(x^2) + eps) * (norm_offset + w), no bias */
} circ_norm_kind;

/* Where a block's norms are. */
typedef enum circ_norm_place {
	CIRC_NORM_PRE,	    /* x + f(norm(x)): GPT-2, Llama, ... */
	CIRC_NORM_PRE_POST, /* x + norm_post(f(norm_pre(x))): Gemma 2 and 3 */
	CIRC_NORM_POST	    /* x + norm_post(f(x)): OLMo 2 */
} circ_norm_place;

typedef enum circ_qk_norm {
	CIRC_QK_NORM_NONE,
	CIRC_QK_NORM_HEAD, /* RMSNorm of each head's q and k over D (Qwen 3, Gemma 3) */
	CIRC_QK_NORM_WHOLE /* RMSNorm over the whole projection, H*D and K*D (OLMo 2) */
} circ_qk_norm;

typedef enum circ_pos_kind {
	CIRC_POS_LEARNED, /* wpe added to the token embedding (GPT-2) */
	CIRC_POS_ROTARY	  /* RoPE, rotate_half convention, on q and k */
} circ_pos_kind;

typedef enum circ_rope_scaling {
	CIRC_ROPE_DEFAULT, /* inv_freq_i = theta^(-2i/rotary_dim) */
	CIRC_ROPE_LINEAR,  /* inv_freq / rope_factor */
	CIRC_ROPE_LLAMA3   /* Llama 3.1's: long wavelengths / factor, a blend in between */
} circ_rope_scaling;

typedef enum circ_mlp_kind {
	CIRC_MLP_PLAIN, /* proj(act(fc(x))) */
	CIRC_MLP_GATED	/* down(act(gate(x)) * up(x)): SwiGLU, GeGLU */
} circ_mlp_kind;

/* Upper bound of n_layer (circ_config.local_layer). */
#define CIRC_CONFIG_MAX_LAYER 1024

typedef struct circ_config {
	int n_layer;		   /* L */
	int n_head;		   /* H */
	int n_embd;		   /* C; a multiple of H (GPT-2) */
	int n_ctx;		   /* P, "n_positions" (or "n_ctx") in config.json;
				    * max_position_embeddings (at most 65536) */
	int vocab_size;		   /* V */
	int n_inner;		   /* F; null or absent in config.json -> 4*C */
	double layer_norm_epsilon; /* absent -> 1e-5 (the Hugging Face default);
				    * every norm's epsilon (rms_norm_eps) */
	circ_act act;		   /* absent -> gelu_new (the Hugging Face default) */

	/* The architecture as data. Every field's zero is GPT-2's choice, so a
	 * GPT-2 config made field by field (or by position, as above) needs
	 * none of them; circ_config_load fills them from config.json. Helpers
	 * below give the derived values (head width, kv heads, ...). */
	circ_model_type model_type;
	int n_kv_head;		    /* K: key/value heads (grouped-query); 0 -> H */
	int head_dim;		    /* D; 0 -> C/H */
	circ_norm_kind norm;	    /* every norm of the model (blocks, final, q/k) */
	double norm_offset;	    /* RMSNorm scale is offset + w: 0, or 1 (Gemma) */
	circ_norm_place norm_place; /* the blocks' norms */
	circ_qk_norm qk_norm;
	circ_pos_kind pos;
	double rope_theta;		/* RoPE base of full-attention layers */
	int rotary_dim;			/* leading dims of each head rotated; 0 -> D */
	circ_rope_scaling rope_scaling; /* of full-attention layers */
	double rope_factor;		/* linear, llama3 */
	double rope_low_freq_factor;	/* llama3 */
	double rope_high_freq_factor;	/* llama3 */
	int rope_original_ctx;		/* llama3: original_max_position_embeddings */
	double rope_local_theta;	/* base of sliding-window layers, which then
					 * use no scaling (Gemma 3); 0: as full layers */
	circ_mlp_kind mlp;
	int no_bias_qkv;	      /* 1: q, k, v projections have no bias */
	int no_bias_o;		      /* 1: the attention output projection has none */
	int no_bias_mlp;	      /* 1: the MLP's projections have none */
	int parallel_residual;	      /* 1: x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX) */
	int untied;		      /* 1: the output embedding is its own tensor
				       * (GPT-2: decided by the file, as before) */
	double embed_scale;	      /* token embeddings times this; 0 -> 1 (Gemma: sqrt(C)) */
	double attn_softcap;	      /* scores -> c * tanh(scores / c); 0: none */
	double final_softcap;	      /* logits -> c * tanh(logits / c); 0: none */
	double query_pre_attn_scalar; /* scores scaled by 1/sqrt(this); 0 -> 1/sqrt(D) */
	int sliding_window;	      /* W: a local layer's query i sees keys j with
				       * 0 <= i - j < W; 0: no local layers */
	unsigned char local_layer[CIRC_CONFIG_MAX_LAYER]; /* (L) 1: layer attends
							   * within the sliding window (and uses
							   * rope_local_theta when set) */
} circ_config;

/* Reads and checks dir/config.json (path is the file itself when it does not
 * name a directory). model_type absent or "gpt2": required keys n_layer,
 * n_head, n_embd, vocab_size and n_positions or n_ctx (positive integers;
 * n_embd a multiple of n_head); keys that would change the architecture in
 * ways circ does not implement (scale_attn_weights false,
 * scale_attn_by_inverse_layer_idx true, reorder_and_upcast_attn true,
 * add_cross_attention true) are errors. The other families (gpt_neox, llama,
 * mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, olmo2) are read from
 * their Hugging Face keys (hidden_size, num_attention_heads, ...; RoPE
 * scaling from rope_scaling or rope_parameters: default, linear or llama3);
 * an unknown model_type or a setting circ does not implement is an error
 * naming the key and listing what is supported.
 * -1 with "'<file>': key '<key>': <problem>" on any error. */
int circ_config_load(const char *path, circ_config *c, circ_error *e);
/* Checks a config's values (ranges, divisibility); -1 naming the field. */
int circ_config_check(const circ_config *c, circ_error *e);
/* Writes config.json for c (Hugging Face GPT-2 keys; GPT-2 only). -1 on I/O
 * error or another family. */
int circ_config_write(const char *path, const circ_config *c, circ_error *e);
const char *circ_act_name(circ_act a);		     /* "gelu_new" / "gelu" / "silu" */
const char *circ_model_type_name(circ_model_type f); /* the model_type: "gpt2", "llama", ... */
int circ_config_head_dim(const circ_config *c);	     /* D: head_dim, or C/H */
int circ_config_kv_heads(const circ_config *c);	     /* K: n_kv_head, or H */
int circ_config_rotary_dim(const circ_config *c);    /* 0 for learned positions */
/* The parsed architecture as one JSON object (keys as circ-forward
 * --describe prints them; tied is -1 when the weights decide it, else 0 or
 * 1). Allocated; the caller frees it. */
char *circ_config_describe(const circ_config *c, int tied);
/* Reads dir's config.json and checks its weights (every tensor's name,
 * dtype and shape; GPT-2's as circ_model_open does) without running
 * anything, and returns circ_config_describe of it, tied from the
 * checkpoint. For every family circ reads, also those whose forward is not
 * implemented yet (which circ_model_open refuses). NULL with a message
 * naming the file and key or tensor on any error. */
char *circ_model_describe(const char *dir, circ_error *e);

/* ---- weights ---- */

/* Pointers to one layer's parameters. Conv1D layout: [in, out] row-major. */
typedef struct circ_layer_weights {
	float *ln1_w, *ln1_b; /* (C) */
	float *attn_w;	      /* (C, 3C) columns Q | K | V, head h at h*D within each */
	float *attn_b;	      /* (3C) */
	float *proj_w;	      /* (C, C) rows h*D..(h+1)*D are head h's W_O */
	float *proj_b;	      /* (C) */
	float *ln2_w, *ln2_b; /* (C) */
	float *fc_w;	      /* (C, F) */
	float *fc_b;	      /* (F) */
	float *fcproj_w;      /* (F, C) */
	float *fcproj_b;      /* (C) */
} circ_layer_weights;

/* All parameters. For a loaded model the pointers point into the mapped
 * file (read-only memory: never write through them) or into one converted
 * f32 buffer. lm_head == wte when the file has no lm_head.weight (tied). */
typedef struct circ_weights {
	float *wte;		    /* (V, C) */
	float *wpe;		    /* (P, C) */
	circ_layer_weights *layers; /* (L) */
	float *lnf_w, *lnf_b;	    /* (C) */
	float *lm_head;		    /* (V, C); == wte when tied */
	float *mem;		    /* the owned buffer, or NULL */
	size_t n_params;	    /* number of floats in mem (tied lm_head counted once) */
} circ_weights;

/* Number of parameters of a config (lm_head tied, so counted once). */
size_t circ_config_n_params(const circ_config *c);
/* Allocates one zeroed, 64-byte aligned buffer of n_params floats and points
 * every field into it, in a fixed order (wte, wpe, then per layer ln1_w ..
 * fcproj_b, then lnf_w, lnf_b; lm_head tied to wte). Used for in-memory
 * models and for parameter gradients (circ_bwd.dweights). Never fails (OOM
 * exits). Free with circ_weights_free. */
void circ_weights_alloc(circ_weights *w, const circ_config *c);
void circ_weights_free(circ_weights *w); /* frees mem and layers; NULL-safe */

/* ---- the model ---- */

typedef struct circ_model circ_model;

typedef struct circ_model_opts {
	int allow_nonfinite; /* 1: accept NaN/Inf in weights (default 0: error) */
	int copy;	     /* 1: copy weights into owned, writable memory (default 0) */
	int gqa_grouped;     /* 1: grouped-query attention graphs have k and v
			      * receivers per key/value head (shared by the heads
			      * of its group); 0 (default): per query head, as
			      * EAP-IG builds them on TransformerLens */
	int raw_heads;	     /* 1: a head's node output is its own, before the
			      * norm after attention (circ_topo_desc.raw_heads;
			      * families with such a norm only) */
} circ_model_opts;
void circ_model_opts_default(circ_model_opts *o);

/* Opens a Hugging Face GPT-2 directory: dir/config.json and
 * dir/model.safetensors. Tensor names may carry the "transformer." prefix
 * or not; attn.bias and attn.masked_bias buffers are ignored; lm_head.weight
 * is used when present, else tied to wte. Every tensor is checked: dtype
 * (F32, F16 or BF16), shape against the config, no missing or unexpected
 * tensors, no NaN/Inf (unless allowed). o may be NULL (defaults). NULL with
 * a message naming the file and the tensor on any error. A directory of
 * another family (config.json's model_type) has its config and weights
 * checked (see circ_model_describe) and bound (model_family.c: F32 in
 * place, F16/BF16 converted; o->gqa_grouped picks its graph's k/v
 * receivers). */
circ_model *circ_model_open(const char *dir, const circ_model_opts *o, circ_error *e);
/* A model over weights the caller built (e.g. circ_weights_alloc then
 * filled): takes ownership of *w (its mem and layers; *w is zeroed). The
 * config is checked; NULL with a message if it is bad. Its digest hashes the
 * config.json text circ_config_write would write and the safetensors bytes
 * circ_model_save would write. */
circ_model *circ_model_new(const circ_config *c, circ_weights *w, circ_error *e);
/* A model of c's family (not GPT-2: circ_model_new; not GPT-NeoX, whose
 * checkpoint fuses q, k and v) with zeroed f32
 * parameters in the flat order (circ_model_params), to be filled, say by
 * lib/train's initialisation. Its digest hashes the config.json and the
 * model.safetensors circ_model_save would write. NULL with a message if c
 * is bad. */
circ_model *circ_model_new_family(const circ_config *c, circ_error *e);
void circ_model_free(circ_model *m); /* NULL is a no-op */
/* Bytes of packed weights the model holds now. Where the CPU has AVX-512,
 * a GPT-2 model's f32 forward multiplies by its weight matrices with circ's
 * panel kernels; a model opened from its file (without copy) lays each
 * matrix out in the kernels' panels once, on the 16th forward that
 * multiplies by it (CIRC_PACK_AT; 0: never), and gives the mapped file's
 * pages of it back, so the process holds one copy. Packed or not, the results are the same bits. */
size_t circ_model_packed_bytes(const circ_model *m);

const circ_config *circ_model_config(const circ_model *m);
const circ_weights *circ_model_weights(const circ_model *m);
/* Directory the model was opened from, or NULL for circ_model_new. */
const char *circ_model_dir(const circ_model *m);

/* 0 if model.safetensors, used in place from its mapping, is the file it
 * was at circ_model_open: same size, modification and change times (a file
 * rewritten in place during a run, as cp does, would give results computed
 * partly from other weights under the old digest). -1 with "'<dir>/
 * model.safetensors': changed while in use ..." otherwise; always 0 for a
 * model from circ_model_new. Every tool that runs a model calls this before
 * it commits its output. (A file truncated under the mapping is reported by
 * the SIGBUS guard, see circ_guard_mapping in util.h.) */
int circ_model_check_unchanged(const circ_model *m, circ_error *e);

/* "sha256:<hex>" of the config.json bytes followed by the model.safetensors
 * bytes; computed on the first call (reads the mapped file), then cached.
 * Tools put it in stream headers and compare. NULL with a message only if
 * the files cannot be read. The string lives as long as the model. */
const char *circ_model_digest(circ_model *m, circ_error *e);

/* Writes dir/config.json and dir/model.safetensors (F32, names with the
 * "transformer." prefix, Conv1D layout, no lm_head: tied) for m. dir is
 * created if missing. A family model that holds its parameters in the flat
 * order (circ_model_params) is written with its Hugging Face names in that
 * order, F32, and its config.json as read (or circ_config_write's: llama).
 * -1 with a message on error. */
int circ_model_save(const circ_model *m, const char *dir, circ_error *e);
/* Writes a model with random weights: a deterministic function of c and
 * seed (circ_rng): normal(0, 0.02) matrices and embeddings, c_proj matrices
 * normal(0, 0.02/sqrt(2L)) as GPT-2 initialises them, LayerNorm weights
 * 1 + normal(0, 0.1), biases normal(0, 0.02) (non-zero so that tests see
 * them). dtype is "F32", "F16" or "BF16" (the file's dtype). For tests and
 * fixtures. -1 with a message on error. */
int circ_model_write_random(const char *dir, const circ_config *c, uint64_t seed, const char *dtype,
			    circ_error *e);

/* How a model's runs multiply by its weight matrices. F32 (the default):
 * in f32, exact as documented everywhere. BF16: the matrices get bf16 twins
 * (made once here, 2 bytes a parameter: F32 and F16 rounded to nearest
 * even, a checkpoint's BF16 bits kept; nn.Linear matrices transposed), each
 * product's activations are rounded to bf16 as it runs, and the products
 * are summed in f32 into f32 outputs, through oneDNN (AMX-BF16 or
 * AVX512-BF16), the same bits for every thread count and for a patched
 * receiver's columns computed alone (kernels.h, circ_gemm_bf16).
 * Everything else stays f32: embeddings, norms, attention scores,
 * activations, residual sums, the products of two activations (the
 * backward's weight gradients) and runs with reference kernels. Applies to
 * every run of m, made before or after; writes to the weights after the
 * call are not seen by the twins. -1 with a message when bf16 cannot run
 * here (circ_bf16_check: no oneDNN, or a CPU without AVX512-BF16 or
 * AMX-BF16). */
typedef enum circ_compute { CIRC_COMPUTE_F32, CIRC_COMPUTE_BF16 } circ_compute;
int circ_model_set_compute(circ_model *m, circ_compute c, circ_error *e);
circ_compute circ_model_compute(const circ_model *m);

/* ---- flat parameters of the other families ----
 * A model of a family other than GPT-2 has its tensors in one flat order:
 * the checkpoint's tensors as the family's table lists them (the embedding
 * first, then layer by layer, the final norm, an untied lm_head last), each
 * row-major in its Hugging Face shape (nn.Linear: (out, in)). Parameter
 * gradients (circ_bwd.dparams) use it, and a model opened with copy holds
 * its weights in it (circ_model_params). */

typedef struct circ_param_info {
	const char *name; /* the Hugging Face name ("model.layers.0.self_attn.q_proj.weight") */
	size_t offset;	  /* in floats from the start of the order */
	size_t count;
	int ndim;
	int64_t shape[2];
	int layer;    /* -1: model-wide */
	int matrix;   /* 1: an embedding or a projection weight; 0: a norm weight
		       * or a bias */
	int out_proj; /* 1: o_proj or down_proj (scaled at initialisation) */
} circ_param_info;
/* Tensors of the flat order: 0 for GPT-2 (which uses circ_weights). */
int circ_model_n_param_tensors(const circ_model *m);
/* Tensor i (0 <= i < circ_model_n_param_tensors) into *out; the name lives
 * as long as the model. */
void circ_model_param_info(const circ_model *m, int i, circ_param_info *out);
/* The model's writable parameters in the flat order ((n_params) floats):
 * a family model opened with copy; NULL otherwise. Writing them changes
 * the model (its digest is not recomputed). */
float *circ_model_params(circ_model *m);

/* ---- numbering (lib/topology's; arguments checked with CIRC_ASSERT) ---- */

/* The model's edge-level topology (nodes, receivers, stages); lives as long
 * as the model. A hook finds its stage's kind, layer and receivers there. */
const circ_topology *circ_model_topology(const circ_model *m);
int circ_model_n_up(const circ_model *m);   /* U = 1 + L*(H+1) */
int circ_model_n_recv(const circ_model *m); /* R = L*(3H+1) + 1 */
int circ_node_input(const circ_model *m);   /* 0 */
int circ_node_head(const circ_model *m, int layer, int head);
int circ_node_mlp(const circ_model *m, int layer);
/* Receiver of a head's input k: CIRC_RECV_Q, CIRC_RECV_K or CIRC_RECV_V. */
int circ_recv_qkv(const circ_model *m, int layer, int head, circ_recv_kind k);
int circ_recv_mlp(const circ_model *m, int layer);
int circ_recv_logits(const circ_model *m);
/* Stage whose input a receiver reads: 2l for q/k/v of layer l, 2l+1 for m{l},
 * 2L for logits. */
int circ_recv_stage(const circ_model *m, int recv);
/* Stage that produces a node's output: -1 for input (the embedding), 2l for a
 * head of layer l, 2l+1 for m{l}. */
int circ_node_stage(const circ_model *m, int node);

/* ---- runs: activations of one batch ---- */

typedef struct circ_run circ_run;

typedef struct circ_run_opts {
	int threads;	     /* threads of the run's pool; <= 0: 1 */
	int acdc_convention; /* 1: the input node is token + positional embedding */
	int keep_nodes;	     /* 1 (default): per-head outputs kept (U, B, T, C);
			      * 0: only the fused attention output is computed
			      * (faster; node outputs of heads then read as NULL) */
	int backward;	     /* 1: allocate the backward arena (default 0) */
	int keep_recv_grads; /* with backward: 1 (default) keep every receiver's
			      * gradient (R, B, T, C); 0: only the current
			      * stage's, visible to the backward hook */
	int reference;	     /* 1: use the reference kernels (double
			      * accumulation, slow): for tests */
	int one_layer;	     /* 1: the per-layer activations (q, k, v,
			      * attention patterns, z, the MLP's
			      * pre-activations) live in one layer's buffers
			      * that each layer overwrites: for forwards whose
			      * caller reads only the logits, the residual
			      * stream and node outputs (circ-forward). No
			      * backward (circ_run_new refuses both),
			      * circ_run_attn and circ_run_attn_z return NULL
			      * but for the layer whose attention ran last (a
			      * hook after it reads it), circ_run_keep_qkv
			      * refuses. Default 0 */
} circ_run_opts;
void circ_run_opts_default(circ_run_opts *o);

/* A run for batches of up to max_b sequences of up to max_t tokens
 * (max_t <= n_ctx). The arena is allocated by the first forward for its
 * batch (its length rounded up to 16 tokens), and remade larger when a
 * larger batch comes: circ_run_arena_bytes tells its size (0 before).
 * o may be NULL (defaults). NULL with a message on bad sizes. */
circ_run *circ_run_new(const circ_model *m, int max_b, int max_t, const circ_run_opts *o,
		       circ_error *e);
void circ_run_free(circ_run *r); /* NULL is a no-op */
size_t circ_run_arena_bytes(const circ_run *r);
/* The part of the arena a run of m with options o (NULL: defaults) would
 * touch for a batch of B sequences of T tokens (T rounded up as a forward
 * rounds it) whose forward reads n_read positions: circ_run_arena_bytes's
 * size less the logits (and, backward, their gradients) of the rows not
 * read, pages that are mapped but never touched and cost nothing. To choose
 * batch sizes before any memory is touched. */
size_t circ_run_bytes_for(const circ_model *m, int B, int T, int n_read, const circ_run_opts *o);
const circ_model *circ_run_model(const circ_run *r);
/* The run's thread pool, for work between its stages (a hook's): one set of
 * threads for both. Valid until circ_run_set_threads or circ_run_free. */
struct circ_pool *circ_run_pool(circ_run *r);
/* B and T of the last forward (0 before any). */
int circ_run_b(const circ_run *r);
int circ_run_t(const circ_run *r);
/* Changes the thread count (takes effect at the next forward/backward). */
void circ_run_set_threads(circ_run *r, int threads);

/* Where logits are computed. Rows of the logits buffer follow this order. */
typedef enum circ_read_mode {
	CIRC_READ_LAST, /* (b, T-1) for each b: N = B (the default) */
	CIRC_READ_ALL,	/* every (b, t), b-major: N = B*T */
	CIRC_READ_LIST, /* the given (b, t) pairs: N = n_read */
	CIRC_READ_NONE	/* no unembedding (stops after ln_f) */
} circ_read_mode;

typedef struct circ_read {
	int32_t b, t;
} circ_read;

/* Forward hook: called before each stage s (an index of the model's
 * topology: circ_model_topology(m)->stage[s] gives its kind, layer and
 * receivers) from the start stage on. It may
 * read the outputs of every node computed so far (circ_run_node_out) and
 * the stage's residual (circ_run_resid), and set deltas on the receivers of
 * this stage (circ_run_delta). Return 0, or -1 with a message to abort the
 * forward (the run's contents are then unspecified). */
typedef int (*circ_fwd_hook)(void *ctx, circ_run *r, int stage, circ_error *e);

typedef struct circ_fwd {
	const int32_t *tokens; /* (B, T) token ids, each in [0, V) */
	int B, T;	       /* 1 <= B <= max_b, 1 <= T <= max_t */
	circ_read_mode read;
	int n_read;		  /* CIRC_READ_LIST: number of pairs */
	const circ_read *reads;	  /* CIRC_READ_LIST: (n_read) pairs, any order, repeats allowed */
	const float *input_embed; /* optional (B, T, C): the input node's output
				   * instead of the embedding lookup (e.g. EAP-IG
				   * interpolation); tokens may then be NULL */
	circ_fwd_hook hook;	  /* optional */
	void *hook_ctx;
	int start_stage; /* 0: full forward. s > 0: resume at stage s; the run
			  * must already hold the state below s for the same
			  * tokens, B and T (a previous forward on this run, or
			  * circ_run_copy_prefix from another run) */
	int reads_only;	 /* 1: the last layer's MLP is computed at the read
			  * rows alone (the logits are the same bytes): its
			  * output and the final residual at the other rows
			  * are left as they were, and the run can then
			  * resume at stage 2L-1 at the latest.
			  * GPT-2 runs not made for the backward; ignored
			  * otherwise */
} circ_fwd;
/* Zeroed fwd with read = CIRC_READ_LAST. */
void circ_fwd_init(circ_fwd *f);

/* Runs the forward. Receiver deltas of stages >= start_stage are cleared
 * first; the hook sets them again. Token ids out of range, T > max_t,
 * B > max_b, bad read pairs, or a resume without a matching prefix are errors
 * (-1 with a message). */
int circ_forward(circ_run *r, const circ_fwd *f, circ_error *e);

/* ---- reading a run (pointers valid until the next forward or free) ---- */

/* Output of upstream node u: (B, T, C), row-major for the current B, T.
 * NULL for heads when the run does not keep node outputs. */
const float *circ_run_node_out(const circ_run *r, int node);
/* Families with a norm after attention (raw head nodes, circ_model_opts):
 * out = N_l(x), layer l's post-attention norm of `rows` rows of n_embd, as
 * the forward computes it (out may not overlap x); and out = J v, the
 * norm's Jacobian at a applied to v. */
void circ_model_post_attn_norm(const circ_model *m, int l, float *out, const float *x, size_t rows);
void circ_model_post_attn_jvp(const circ_model *m, int l, float *out, const float *a,
			      const float *v, size_t rows);
/* Residual s (input of stage s, without any delta): (B, T, C). */
const float *circ_run_resid(const circ_run *r, int stage);
/* Attention probabilities of layer l: (B, H, T, T), row t over keys 0..t
 * (entries above the diagonal are 0). */
const float *circ_run_attn(const circ_run *r, int layer);
/* The input of layer l's MLP after its norm, as the last forward formed it
 * from the residual before the MLP (deltas not included): (B*T, C) into
 * out; weighted 0 leaves the norm's weight and bias out (TransformerLens's
 * ln2.hook_normalized with fold_ln), 1 applies them (the MLP's real input;
 * Gemma's RMSNorm scale is 1 + w). A family without a norm before the MLP
 * (OLMo 2) gives the residual itself; parallel blocks (GPT-NeoX) norm the
 * block's input. -1 with a message for a layer out of range. */
int circ_run_mlp_input(const circ_run *r, int layer, int weighted, float *out, circ_error *e);
/* Layer l's heads' attention-weighted values z (B*T, H*D), head-major
 * within a row, of the last forward: families other than GPT-2 keep them
 * (NULL for GPT-2, whose runs do not: lib/dict computes them). */
const float *circ_run_attn_z(const circ_run *r, int layer);
/* out (n, C) = z (n, H*D) through layer l's output projection without its
 * bias: what a change of z changes in the residual. -1 with a message where
 * the attention's output has a norm of its own (Gemma 2/3, OLMo 2: a change
 * of z is then no sum of node outputs). */
int circ_model_attn_proj(const circ_model *m, int layer, const float *z, int n, float *out,
			 circ_error *e);
/* 1 when every head's node output is its z times its slice of the output
 * projection (a family without a norm after attention), so that the
 * difference of two runs' head outputs can be made from their z's
 * (circ_run_head_outputs); 0 for GPT-2 and where a norm follows. */
int circ_model_heads_from_z(const circ_model *m);
/* dst[h] (B*T, C) = z_h (B*T, D; rows H*D apart, head-major as
 * circ_run_attn_z gives them) times head h's slice of layer l's output
 * projection, for the run's current batch: the heads' node outputs of that
 * z. Only where circ_model_heads_from_z. */
void circ_run_head_outputs(const circ_run *r, int layer, const float *z, float *const *dst);
/* Logits at the read rows: (N, V); *n_rows set when not NULL. */
const float *circ_run_logits(const circ_run *r, int *n_rows);
/* The read rows of the last forward: (N) pairs. */
const circ_read *circ_run_reads(const circ_run *r, int *n_rows);

/* ---- patch support: receiver deltas and resuming at a stage ----
 * What lib/patch (and the attribution over it) drives: from a forward hook,
 * the input of any receiver of the current stage or a later one becomes
 * residual + delta (or a given sum of rows), and a forward can resume at a
 * stage from the state of another run (circ_fwd.start_stage). */

/* Sign of the terms of a sum of rows (circ_run_delta_sum, circ_run_input_sum). */
typedef enum circ_sign { CIRC_SIGN_MINUS = -1, CIRC_SIGN_PLUS = 1 } circ_sign;

/* Receiver delta of the current stage: a zeroed (B, T, C) buffer the hook
 * adds into (input = residual + delta). The receiver must belong to the
 * stage the hook was called for (or a later one); a second call in the same
 * forward returns the same buffer without zeroing it. */
float *circ_run_delta(circ_run *r, int recv);
/* The same buffer, not zeroed: for a hook that writes every element. */
float *circ_run_delta_raw(circ_run *r, int recv);
/* Receiver recv's delta as a sum of rows, formed where the receiver's
 * input is read instead of stored: delta = base + sign * (terms[0] + ... +
 * terms[k-1]), each a (B, T, C) array like a delta (base NULL: zero; sign
 * CIRC_SIGN_PLUS or CIRC_SIGN_MINUS). The arrays must stay as they are until the forward has run
 * the receiver's stage. A q/k/v receiver's input is then formed block by block next to its
 * LayerNorm and never written out; a run made for the backward or with reference kernels stores the
 * delta at once. A receiver that already has a delta gets the sum added to it. -1 if the receiver
 * is not of this stage or later, or k or sign is out of range. */
int circ_run_delta_sum(circ_run *r, int recv, const float *base, circ_sign sign, int k,
		       const float *const *terms);
/* Receiver recv's input itself as a sum of rows, in place of residual +
 * delta: input = base + sign * (terms[0] + ... + terms[k-1]), base not
 * NULL (say a residual of another run, with some of its inputs' share
 * taken off). The residual of this run is then not read. Any delta set on
 * the receiver before in this forward is dropped. Otherwise as
 * circ_run_delta_sum; stored, the delta is the input less the residual. */
int circ_run_input_sum(circ_run *r, int recv, const float *base, circ_sign sign, int k,
		       const float *const *terms);
/* From the hook of the stage the forward started at, when the previous
 * forward on this run started there too: q/k/v receiver recv's projection
 * (its D columns), as that forward left it, is what this one would make
 * (the caller knows the receiver's input is the same bytes): it is kept,
 * not computed, any delta of the receiver dropped; a head whose q, k and v
 * are all kept keeps its attention and output (they are added into the
 * residual as computed ones are). -1, and nothing kept, where that does
 * not hold or the run cannot (families, reference kernels, runs made for
 * the backward or without node outputs). */
int circ_run_keep_qkv(circ_run *r, int recv);
/* A number that changes with every forward on the run: a caller that
 * knows the previous forward was its own (circ_run_keep_qkv) compares it. */
unsigned long circ_run_serial(const circ_run *r);
/* The delta of a receiver in this forward, or NULL if it has none (or it
 * was given as a sum and not stored). */
const float *circ_run_get_delta(const circ_run *r, int recv);

/* Copies into dst the state of src that a forward resumed at stage s needs
 * and that a backward reads for the stages below s: tokens, B, T, the input
 * node, the node outputs of stages < s, residuals 0..s, LayerNorm statistics,
 * attention and MLP activations and receiver deltas of stages < s. dst and
 * src must be runs of the same model with the same options and dst's sizes
 * at least src's B and T. -1 with a message otherwise. */
int circ_run_copy_prefix(circ_run *dst, const circ_run *src, int stage, circ_error *e);

/* ---- backward ---- */

/* Backward hook: called once per stage s, from 2L down to 0, when the
 * gradients of that stage's receivers (circ_run_recv_grad) and of the
 * residual feeding it are final. Return 0, or -1 with a message to abort. */
typedef int (*circ_bwd_hook)(void *ctx, circ_run *r, int stage, circ_error *e);
/* Output-gradient hook: called before the backward of every stage s but
 * the final one with node_grad (n) all NULL, one slot per node the stage
 * produces, in node order (topology.h: its H heads for an attention stage,
 * its MLP for an MLP stage, the H heads then the MLP for a parallel block).
 * Setting node_grad[j] to a (B, T, C) array makes it the gradient of node
 * j's output in place of the residual gradient after the stage (which every
 * node receives when its input is the plain residual): for a caller whose
 * deltas weight a node's output per receiver (lib/edgeprune's masks), so
 * that each node gets its own. A head's output is its share of the normed
 * sum where the attention output has a norm of its own (model_family.c),
 * so its gradient reaches its z through that norm's backward, every head's
 * output gradient coupled by the norm's scale. The input node has no stage
 * and nothing reads its output gradient: it gets no slot. The arrays must
 * stay until the stage's backward is done. The residual gradients after the
 * stage are unchanged (circ_run_node_grad does not see these); those before
 * it add the receivers' gradients so made. Every model type; not with
 * dweights. Return 0, or -1 with a message to abort. */
typedef int (*circ_bwd_out_hook)(void *ctx, circ_run *r, int stage, int n, const float **node_grad,
				 circ_error *e);

typedef struct circ_bwd {
	const float *dlogits; /* (N, V): d metric / d logits at the read rows of
			       * the last forward (CIRC_READ_NONE: not allowed) */
	circ_bwd_hook hook;   /* optional */
	void *hook_ctx;
	circ_weights *dweights;	    /* optional: parameter gradients are added (+=)
				     * here; a circ_weights_alloc layout of the model's
				     * config (an untied model needs its own lm_head
				     * buffer). Deltas stay constants; a forward with
				     * input_embed gives no token-row (wte) gradient
				     * from the lookup, and with the ACDC convention no
				     * wpe gradient either */
	circ_bwd_out_hook out_hook; /* optional, with hook_ctx; not with dweights */
	float *dparams;		    /* optional, families other than GPT-2: parameter
				     * gradients are added (+=) here, (n_params) floats
				     * in the model's flat parameter order
				     * (circ_model_param_info). Pre-norm families
				     * without q/k norms or a fused q/k/v (llama,
				     * mistral, qwen2, gemma) with f32 weights;
				     * deltas are constants as for dweights */
} circ_bwd;

/* One backward pass from dlogits through the last forward of r (made with
 * backward enabled). Deltas are constants (the gradient does not flow
 * through them). Fills the receiver gradients and the residual gradients.
 * -1 with a message if the run has no backward arena, no forward was made,
 * the forward read no logits, dweights does not fit the model, or both
 * dweights and out_hook are given. */
int circ_backward(circ_run *r, const circ_bwd *b, circ_error *e);

/* Gradient of the metric with respect to receiver recv's input: (B, T, C)
 * (the path through that receiver only: for a q receiver, its ln_1 and its
 * head's q projection). With keep_recv_grads 0, only the receivers of the
 * stage being reported to the backward hook are available (else NULL). */
const float *circ_run_recv_grad(const circ_run *r, int recv);
/* Gradient of the metric with respect to upstream node u's output: (B, T, C),
 * the sum over its downstream receivers. All heads of a layer share one
 * buffer (the residual gradient after the attention of that layer). */
const float *circ_run_node_grad(const circ_run *r, int node);
/* Gradient with respect to residual s (all paths): (B, T, C). */
const float *circ_run_resid_grad(const circ_run *r, int stage);

#endif
