/*
 * model_names: the tensor names of each family's checkpoints, as one table
 * (see model_names.h). A row holds when every condition bit it needs is one
 * the config has; "%d" in a name is the layer. The names are the ones the
 * transformers modeling code gives its modules (GPTNeoXForCausalLM:
 * gpt_neox.*, embed_out; the Llama-style families: model.*, lm_head), and
 * where one name means different things the conditions tell them apart:
 * "post_attention_layernorm" is the norm before the MLP in Llama, Mistral,
 * Qwen and Gemma 1, but the norm of the attention's output in Gemma 2 and 3
 * and OLMo 2. model_names_bind matches a checkpoint (lib/safetensors' set of
 * one file or shards) against the table, checking every tensor's dtype and
 * shape (model_check_tensor, which GPT-2's loader uses too).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_names.h"
#include "safetensors.h"

/* Condition bits. */
enum {
	NEOX = 1 << 0,	   /* the GPT-NeoX layout */
	HF = 1 << 1,	   /* the Llama-style layout (model.layers.N.*) */
	LN = 1 << 2,	   /* LayerNorm (norms have biases) */
	NORM_IN = 1 << 3,  /* a norm before the attention (not OLMo 2) */
	PRE_ONLY = 1 << 4, /* norms before the blocks only */
	PRE_POST = 1 << 5, /* norms before and after (Gemma 2, 3) */
	POSTS = 1 << 6,	   /* norms after the blocks (Gemma 2, 3, OLMo 2) */
	QKV_B = 1 << 7,
	O_B = 1 << 8,
	MLP_B = 1 << 9,
	QK_NORM = 1 << 10,
	UNTIED = 1 << 11,
	TIED = 1 << 12,
	LAYER = 1 << 13,   /* per layer (the name has %d) */
	OPTIONAL = 1 << 14 /* may be absent (a marker, not a condition) */
};

/* Dimensions. */
typedef enum dim { D_NONE, D_V, D_C, D_F, D_D, D_HD, D_KD, D_3HD, D_QN, D_KN } dim;

typedef struct name_row {
	unsigned need;
	const char *name;
	model_role role;
	dim d0, d1;
} name_row;

static const name_row rows[] = {
    /* GPT-NeoX (Pythia): modeling_gpt_neox.py */
    {NEOX, "gpt_neox.embed_in.weight", MODEL_W_EMBED, D_V, D_C},
    {NEOX | LAYER, "gpt_neox.layers.%d.input_layernorm.weight", MODEL_W_NORM1_W, D_C, D_NONE},
    {NEOX | LAYER, "gpt_neox.layers.%d.input_layernorm.bias", MODEL_W_NORM1_B, D_C, D_NONE},
    {NEOX | LAYER, "gpt_neox.layers.%d.post_attention_layernorm.weight", MODEL_W_NORM2_W, D_C,
     D_NONE},
    {NEOX | LAYER, "gpt_neox.layers.%d.post_attention_layernorm.bias", MODEL_W_NORM2_B, D_C,
     D_NONE},
    {NEOX | LAYER, "gpt_neox.layers.%d.attention.query_key_value.weight", MODEL_W_QKV_W, D_3HD,
     D_C},
    {NEOX | LAYER | QKV_B, "gpt_neox.layers.%d.attention.query_key_value.bias", MODEL_W_QKV_B,
     D_3HD, D_NONE},
    {NEOX | LAYER, "gpt_neox.layers.%d.attention.dense.weight", MODEL_W_O_W, D_C, D_HD},
    {NEOX | LAYER | O_B, "gpt_neox.layers.%d.attention.dense.bias", MODEL_W_O_B, D_C, D_NONE},
    {NEOX | LAYER, "gpt_neox.layers.%d.mlp.dense_h_to_4h.weight", MODEL_W_FC_W, D_F, D_C},
    {NEOX | LAYER | MLP_B, "gpt_neox.layers.%d.mlp.dense_h_to_4h.bias", MODEL_W_FC_B, D_F, D_NONE},
    {NEOX | LAYER, "gpt_neox.layers.%d.mlp.dense_4h_to_h.weight", MODEL_W_FCPROJ_W, D_C, D_F},
    {NEOX | LAYER | MLP_B, "gpt_neox.layers.%d.mlp.dense_4h_to_h.bias", MODEL_W_FCPROJ_B, D_C,
     D_NONE},
    {NEOX, "gpt_neox.final_layer_norm.weight", MODEL_W_FINAL_W, D_C, D_NONE},
    {NEOX, "gpt_neox.final_layer_norm.bias", MODEL_W_FINAL_B, D_C, D_NONE},
    {NEOX | UNTIED, "embed_out.weight", MODEL_W_LM_HEAD, D_V, D_C},
    {NEOX | TIED | OPTIONAL, "embed_out.weight", MODEL_W_LM_HEAD, D_V, D_C},

    /* Llama, Mistral, Qwen 2 and 3, Gemma 1-3, OLMo 2: modeling_llama.py and kin */
    {HF, "model.embed_tokens.weight", MODEL_W_EMBED, D_V, D_C},
    {HF | LAYER | NORM_IN, "model.layers.%d.input_layernorm.weight", MODEL_W_NORM1_W, D_C, D_NONE},
    {HF | LAYER, "model.layers.%d.self_attn.q_proj.weight", MODEL_W_Q_W, D_HD, D_C},
    {HF | LAYER | QKV_B, "model.layers.%d.self_attn.q_proj.bias", MODEL_W_Q_B, D_HD, D_NONE},
    {HF | LAYER, "model.layers.%d.self_attn.k_proj.weight", MODEL_W_K_W, D_KD, D_C},
    {HF | LAYER | QKV_B, "model.layers.%d.self_attn.k_proj.bias", MODEL_W_K_B, D_KD, D_NONE},
    {HF | LAYER, "model.layers.%d.self_attn.v_proj.weight", MODEL_W_V_W, D_KD, D_C},
    {HF | LAYER | QKV_B, "model.layers.%d.self_attn.v_proj.bias", MODEL_W_V_B, D_KD, D_NONE},
    {HF | LAYER, "model.layers.%d.self_attn.o_proj.weight", MODEL_W_O_W, D_C, D_HD},
    {HF | LAYER | O_B, "model.layers.%d.self_attn.o_proj.bias", MODEL_W_O_B, D_C, D_NONE},
    {HF | LAYER | QK_NORM, "model.layers.%d.self_attn.q_norm.weight", MODEL_W_Q_NORM, D_QN, D_NONE},
    {HF | LAYER | QK_NORM, "model.layers.%d.self_attn.k_norm.weight", MODEL_W_K_NORM, D_KN, D_NONE},
    {HF | LAYER | PRE_ONLY, "model.layers.%d.post_attention_layernorm.weight", MODEL_W_NORM2_W, D_C,
     D_NONE},
    {HF | LAYER | POSTS, "model.layers.%d.post_attention_layernorm.weight", MODEL_W_POST_ATTN_W,
     D_C, D_NONE},
    {HF | LAYER | PRE_POST, "model.layers.%d.pre_feedforward_layernorm.weight", MODEL_W_NORM2_W,
     D_C, D_NONE},
    {HF | LAYER | POSTS, "model.layers.%d.post_feedforward_layernorm.weight", MODEL_W_POST_MLP_W,
     D_C, D_NONE},
    {HF | LAYER, "model.layers.%d.mlp.gate_proj.weight", MODEL_W_GATE_W, D_F, D_C},
    {HF | LAYER | MLP_B, "model.layers.%d.mlp.gate_proj.bias", MODEL_W_GATE_B, D_F, D_NONE},
    {HF | LAYER, "model.layers.%d.mlp.up_proj.weight", MODEL_W_UP_W, D_F, D_C},
    {HF | LAYER | MLP_B, "model.layers.%d.mlp.up_proj.bias", MODEL_W_UP_B, D_F, D_NONE},
    {HF | LAYER, "model.layers.%d.mlp.down_proj.weight", MODEL_W_DOWN_W, D_C, D_F},
    {HF | LAYER | MLP_B, "model.layers.%d.mlp.down_proj.bias", MODEL_W_DOWN_B, D_C, D_NONE},
    {HF, "model.norm.weight", MODEL_W_FINAL_W, D_C, D_NONE},
    {HF | UNTIED, "lm_head.weight", MODEL_W_LM_HEAD, D_V, D_C},
    /* tied checkpoints may carry a copy, which transformers ties over */
    {HF | TIED | OPTIONAL, "lm_head.weight", MODEL_W_LM_HEAD, D_V, D_C},
};

/* Buffers some checkpoints carry (older conversions); suffixes of a layer's
 * names. */
static const struct {
	unsigned need;
	const char *prefix, *suffix;
} ignored[] = {
    {NEOX, "gpt_neox.layers.", ".attention.rotary_emb.inv_freq"},
    {NEOX, "gpt_neox.layers.", ".attention.bias"},
    {NEOX, "gpt_neox.layers.", ".attention.masked_bias"},
    {HF, "model.layers.", ".self_attn.rotary_emb.inv_freq"},
};

static unsigned have_bits(const circ_config *c)
{
	unsigned h = c->model_type == CIRC_MODEL_GPT_NEOX ? NEOX : HF;
	if (c->norm == CIRC_NORM_LAYERNORM)
		h |= LN;
	if (c->norm_place != CIRC_NORM_POST)
		h |= NORM_IN;
	if (c->norm_place == CIRC_NORM_PRE)
		h |= PRE_ONLY;
	if (c->norm_place == CIRC_NORM_PRE_POST)
		h |= PRE_POST;
	if (c->norm_place != CIRC_NORM_PRE)
		h |= POSTS;
	if (!c->no_bias_qkv)
		h |= QKV_B;
	if (!c->no_bias_o)
		h |= O_B;
	if (!c->no_bias_mlp)
		h |= MLP_B;
	if (c->qk_norm != CIRC_QK_NORM_NONE)
		h |= QK_NORM;
	h |= c->untied ? UNTIED : TIED;
	return h | LAYER | OPTIONAL;
}

static int64_t dim_of(const circ_config *c, dim d)
{
	int64_t D = circ_config_head_dim(c), H = c->n_head, K = circ_config_kv_heads(c);
	int whole = c->qk_norm == CIRC_QK_NORM_WHOLE;
	switch (d) {
	case D_NONE: return 0;
	case D_V: return c->vocab_size;
	case D_C: return c->n_embd;
	case D_F: return c->n_inner;
	case D_D: return D;
	case D_HD: return H * D;
	case D_KD: return K * D;
	case D_3HD: return 3 * H * D;
	case D_QN: return whole ? H * D : D;
	case D_KN: return whole ? K * D : D;
	}
	return 0;
}

static void add(model_tensor *t, const circ_config *c, const name_row *r, int layer)
{
	const char *at = strstr(r->name, "%d");
	if (at) /* the layer in place of "%d" (names are not formats: no -Wformat-nonliteral) */
		snprintf(t->name, sizeof t->name, "%.*s%d%s", (int)(at - r->name), r->name, layer,
			 at + 2);
	else
		snprintf(t->name, sizeof t->name, "%s", r->name);
	t->role = r->role;
	t->layer = r->need & LAYER ? layer : -1;
	t->shape[0] = dim_of(c, r->d0);
	t->shape[1] = dim_of(c, r->d1);
	t->ndim = r->d1 == D_NONE ? 1 : 2;
	t->optional = (r->need & OPTIONAL) != 0;
}

int model_names_list(const circ_config *c, model_tensor **out)
{
	const int nr = (int)(sizeof rows / sizeof rows[0]);
	unsigned h = have_bits(c);
	model_tensor *t = circ_xcalloc((size_t)nr * ((size_t)c->n_layer + 1), sizeof *t);
	int n = 0;
	/* model-wide tensors before the layers, the final ones after */
	for (int i = 0; i < nr; i++)
		if (rows[i].role == MODEL_W_EMBED && !(rows[i].need & ~h))
			add(&t[n++], c, &rows[i], -1);
	for (int l = 0; l < c->n_layer; l++)
		for (int i = 0; i < nr; i++)
			if ((rows[i].need & LAYER) && !(rows[i].need & ~h))
				add(&t[n++], c, &rows[i], l);
	for (int i = 0; i < nr; i++)
		if (!(rows[i].need & LAYER) && rows[i].role != MODEL_W_EMBED &&
		    !(rows[i].need & ~h))
			add(&t[n++], c, &rows[i], -1);
	*out = t;
	return n;
}

int model_names_ignored(const circ_config *c, const char *name)
{
	unsigned h = have_bits(c);
	for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++) {
		size_t pl = strlen(ignored[i].prefix), sl = strlen(ignored[i].suffix), nl;
		char *end;
		long l;
		if ((ignored[i].need & ~h) || strncmp(name, ignored[i].prefix, pl))
			continue;
		l = strtol(name + pl, &end, 10);
		if (end == name + pl || l < 0 || l >= c->n_layer)
			continue;
		nl = strlen(end);
		if (nl == sl && !strcmp(end, ignored[i].suffix))
			return 1;
	}
	return 0;
}

static void shape_text(char *b, size_t n, int ndim, const int64_t *s)
{
	if (ndim == 1)
		snprintf(b, n, "[%lld]", (long long)s[0]);
	else if (ndim == 2)
		snprintf(b, n, "[%lld, %lld]", (long long)s[0], (long long)s[1]);
	else {
		size_t len = (size_t)snprintf(b, n, "[");
		for (int i = 0; i < ndim && len < n; i++)
			len += (size_t)snprintf(b + len, n - len, "%s%lld", i ? ", " : "",
						(long long)s[i]);
		if (len < n)
			snprintf(b + len, n - len, "]");
	}
}

/* t is F32, F16 or BF16 and has the shape (ndim, shape) the config gives;
 * -1 naming the file, the tensor, cfg_path and the config's dimensions (dims)
 * otherwise. */
int model_check_tensor(const char *file, const circ_st_tensor *t, int ndim, const int64_t *shape,
		       const char *cfg_path, const char *dims, circ_error *e)
{
	char got[96], want[96];
	if (t->dtype != CIRC_F32 && t->dtype != CIRC_F16 && t->dtype != CIRC_BF16)
		return circ_errorf(e, "'%s': tensor '%s': dtype %s (expected F32, F16 or BF16)",
				   file, t->name, circ_dtype_name(t->dtype));
	if (t->ndim == ndim && t->shape[0] == shape[0] && (ndim == 1 || t->shape[1] == shape[1]))
		return 0;
	shape_text(got, sizeof got, t->ndim, t->shape);
	shape_text(want, sizeof want, ndim, shape);
	return circ_errorf(e, "'%s': tensor '%s': shape %s, expected %s from '%s' (%s)", file,
			   t->name, got, want, cfg_path, dims);
}

int model_names_bind(const circ_config *c, const circ_st_set *set, const char *cfg_path,
		     model_tensor **tab_out, const circ_st_tensor ***found_out, circ_error *e)
{
	model_tensor *tab = NULL;
	const circ_st_tensor **found;
	char dims[200];
	int n;
	snprintf(dims, sizeof dims,
		 "layers %d, heads %d, kv heads %d, head_dim %d, hidden %d, intermediate %d, "
		 "vocabulary %d",
		 c->n_layer, c->n_head, circ_config_kv_heads(c), circ_config_head_dim(c), c->n_embd,
		 c->n_inner, c->vocab_size);
	n = model_names_list(c, &tab);
	found = circ_xcalloc((size_t)n, sizeof *found);
	for (int i = 0; i < circ_st_set_count(set); i++) {
		const char *file;
		const circ_st_tensor *t = circ_st_set_at(set, i, &file);
		int k;
		if (model_names_ignored(c, t->name))
			continue;
		for (k = 0; k < n; k++)
			if (!strcmp(tab[k].name, t->name))
				break;
		if (k == n) {
			circ_errorf(e,
				    "'%s': unexpected tensor '%s' (not part of this %s with %d "
				    "layers)",
				    file, t->name, circ_model_type_name(c->model_type), c->n_layer);
			goto fail;
		}
		if (model_check_tensor(file, t, tab[k].ndim, tab[k].shape, cfg_path, dims, e) < 0)
			goto fail;
		found[k] = t; /* names are unique in a set: no tensor is found twice */
	}
	for (int k = 0; k < n; k++) {
		if (!found[k] && !tab[k].optional) {
			circ_errorf(e, "'%s': missing tensor '%s'",
				    circ_st_set_index(set) ? circ_st_set_index(set)
							   : circ_st_path(circ_st_set_file(set, 0)),
				    tab[k].name);
			goto fail;
		}
		/* a tied output embedding's copy must be the embedding (the
		 * model uses the embedding, as transformers does) */
		if (found[k] && tab[k].optional && tab[k].role == MODEL_W_LM_HEAD &&
		    (found[k]->dtype != found[0]->dtype || found[k]->nbytes != found[0]->nbytes ||
		     memcmp(found[k]->data, found[0]->data, found[0]->nbytes))) {
			circ_errorf(e,
				    "'%s': tensor '%s' differs from '%s', but tie_word_embeddings "
				    "is true in '%s' (the model would use '%s')",
				    circ_st_set_index(set) ? circ_st_set_index(set)
							   : circ_st_path(circ_st_set_file(set, 0)),
				    tab[k].name, tab[0].name, cfg_path, tab[0].name);
			goto fail;
		}
	}
	*tab_out = tab;
	*found_out = found;
	return n;
fail:
	free(tab);
	free(found);
	*tab_out = NULL;
	*found_out = NULL;
	return -1;
}
