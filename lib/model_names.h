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
#include "safetensors.h"

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
	int optional; /* may be absent: a tied model's copy of the embedding */
} model_tensor;

/* The tensors of c's family (not GPT-2), in table order, layer by layer
 * (the embedding first: index 0);
 * *out is allocated (free it). Returns the count. */
int model_names_list(const circ_config *c, model_tensor **out);
/* 1 if name is a buffer some checkpoints of c's family carry and no
 * forward reads (rotary inv_freq, GPT-NeoX's attention masks). */
int model_names_ignored(const circ_config *c, const char *name);

/* Binds c's table to the tensors of a checkpoint: (*found)[k] is the tensor
 * of set named (*tab)[k].name (pointers into the set's mappings, valid
 * while it is open). Every tensor of the set must be in the table (or an
 * ignored buffer), F32, F16 or BF16, with the table's shape, and every
 * tensor of the table must be there. Returns the count, with *tab and
 * *found allocated (free both); -1 with a message naming the file, the
 * tensor and, for a shape, cfg_path and the config's dimensions. */
int model_names_bind(const circ_config *c, const circ_st_set *set, const char *cfg_path,
		     model_tensor **tab, const circ_st_tensor ***found, circ_error *e);
/* t is F32, F16 or BF16 with the shape (ndim, shape) the config gives; -1
 * naming file, the tensor, cfg_path and dims (the config's dimensions in
 * words) otherwise. */
int model_check_tensor(const char *file, const circ_st_tensor *t, int ndim, const int64_t *shape,
		       const char *cfg_path, const char *dims, circ_error *e);

#endif
