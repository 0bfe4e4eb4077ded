/*
 * model_names: which tensors of a Hugging Face checkpoint make each part of
 * a model, per family, as one table of data (model_names.c): the name, its
 * shape in the config's dimensions, the role it plays (what a forward reads
 * it as) and when it is there (biases, norm kinds and places, q/k norms,
 * an untied output embedding). GPT-2's own names stay in model_weights.c,
 * which maps them into circ_weights.
 *
 * Dimension letters as in model.h; K kv heads, D head width.
 * Not a public header: only lib/model*.c include it.
 */
#ifndef CIRC_MODEL_NAMES_H
#define CIRC_MODEL_NAMES_H

#include <stdint.h>

#include "model.h"

/* What a tensor is to the forward. Per layer unless said. nn.Linear layout:
 * weights are (out, in). */
typedef enum model_role {
	MODEL_W_EMBED,	     /* (V, C) token embedding (model-wide) */
	MODEL_W_NORM1_W,     /* (C) the norm before the attention */
	MODEL_W_NORM1_B,     /* (C) its bias (LayerNorm) */
	MODEL_W_QKV_W,	     /* (3*H*D, C) fused, per head q | k | v rows (GPT-NeoX) */
	MODEL_W_QKV_B,	     /* (3*H*D) */
	MODEL_W_Q_W,	     /* (H*D, C) */
	MODEL_W_Q_B,	     /* (H*D) */
	MODEL_W_K_W,	     /* (K*D, C) */
	MODEL_W_K_B,	     /* (K*D) */
	MODEL_W_V_W,	     /* (K*D, C) */
	MODEL_W_V_B,	     /* (K*D) */
	MODEL_W_Q_NORM,	     /* (D) per head, or (H*D) whole */
	MODEL_W_K_NORM,	     /* (D) per head, or (K*D) whole */
	MODEL_W_O_W,	     /* (C, H*D) */
	MODEL_W_O_B,	     /* (C) */
	MODEL_W_POST_ATTN_W, /* (C) the norm of the attention's output */
	MODEL_W_NORM2_W,     /* (C) the norm before the MLP */
	MODEL_W_NORM2_B,     /* (C) */
	MODEL_W_FC_W,	     /* (F, C) plain MLP in */
	MODEL_W_FC_B,	     /* (F) */
	MODEL_W_FCPROJ_W,    /* (C, F) plain MLP out */
	MODEL_W_FCPROJ_B,    /* (C) */
	MODEL_W_GATE_W,	     /* (F, C) */
	MODEL_W_GATE_B,	     /* (F) */
	MODEL_W_UP_W,	     /* (F, C) */
	MODEL_W_UP_B,	     /* (F) */
	MODEL_W_DOWN_W,	     /* (C, F) */
	MODEL_W_DOWN_B,	     /* (C) */
	MODEL_W_POST_MLP_W,  /* (C) the norm of the MLP's output */
	MODEL_W_FINAL_W,     /* (C) final norm (model-wide) */
	MODEL_W_FINAL_B,     /* (C) */
	MODEL_W_LM_HEAD,     /* (V, C) untied output embedding (model-wide) */
	MODEL_W_ROLES
} model_role;

/* One tensor a checkpoint must hold. */
typedef struct model_tensor {
	char name[128];
	model_role role;
	int layer; /* -1 for model-wide tensors */
	int ndim;
	int64_t shape[2];
} model_tensor;

/* The tensors of c's family (not GPT-2), in table order, layer by layer;
 * *out is allocated (free it). Returns the count. */
int model_names_list(const circ_config *c, model_tensor **out);
/* 1 if name is a buffer some checkpoints of c's family carry and no
 * forward reads (rotary inv_freq, GPT-NeoX's attention masks). */
int model_names_ignored(const circ_config *c, const char *name);

#endif
