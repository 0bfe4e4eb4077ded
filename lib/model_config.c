/*
 * model_config: config.json of a Hugging Face model read (with jansson),
 * checked and written (see model.h, "configuration"). GPT-2 is read from its
 * own keys as it always was; the other families from the keys their hub
 * configs use, each into the architecture-as-data fields of circ_config.
 * Keys that would change the architecture in ways circ does not implement
 * are errors that name the key and list what is supported: a model is never
 * run approximately.
 *
 * Where each family's defaults come from (the transformers configuration
 * classes' defaults, which a hub config may leave out): tie_word_embeddings
 * true for the Gemmas, false for the rest; GPT-NeoX rotary_pct 0.25,
 * rotary_emb_base 10000, use_parallel_residual and attention_bias true;
 * Gemma's hidden_activation gelu_pytorch_tanh when null or absent;
 * gemma2 layer i slides when i is even, gemma3_text unless (i + 1) %
 * sliding_window_pattern (default 6) is 0, unless layer_types says.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_impl.h"

/* ================================================================ config */

const char *circ_act_name(circ_act a)
{
	return a == CIRC_ACT_GELU ? "gelu" : a == CIRC_ACT_SILU ? "silu" : "gelu_new";
}

static const char *const model_type_names[CIRC_MODEL_COUNT] = {
    "gpt2",  "gpt_neox", "llama",  "mistral",	  "qwen2",
    "qwen3", "gemma",	 "gemma2", "gemma3_text", "olmo2"};

#define FAMILY_LIST                                                                                \
	"gpt2, gpt_neox, llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, olmo2"

const char *circ_model_type_name(circ_model_type f)
{
	return (unsigned)f < CIRC_MODEL_COUNT ? model_type_names[f] : "?";
}

int circ_config_head_dim(const circ_config *c)
{
	return c->head_dim ? c->head_dim : c->n_embd / c->n_head;
}

int circ_config_kv_heads(const circ_config *c)
{
	return c->n_kv_head ? c->n_kv_head : c->n_head;
}

int circ_config_rotary_dim(const circ_config *c)
{
	if (c->pos != CIRC_POS_ROTARY)
		return 0;
	return c->rotary_dim ? c->rotary_dim : circ_config_head_dim(c);
}

/* The checks of the fields other families use (GPT-2 leaves them zero). */
static int check_arch(const circ_config *c, circ_error *e)
{
	int D = circ_config_head_dim(c), K = circ_config_kv_heads(c);
	if ((unsigned)c->model_type >= CIRC_MODEL_COUNT)
		return circ_errorf(e, "unknown family %d", (int)c->model_type);
	if (c->head_dim < 0 || D < 1 || D > MAX_EMBD)
		return circ_errorf(e, "head_dim %d is out of range (1-%d)", D, MAX_EMBD);
	if (c->n_kv_head < 0 || K < 1 || c->n_head % K)
		return circ_errorf(e,
				   "num_key_value_heads %d does not divide num_attention_heads %d",
				   K, c->n_head);
	if (c->pos == CIRC_POS_ROTARY) {
		int rd = circ_config_rotary_dim(c);
		if (rd < 2 || rd > D || rd % 2)
			return circ_errorf(e, "rotary dimensions %d are not an even number in 2-%d",
					   rd, D);
		if (!(c->rope_theta > 0) || !isfinite(c->rope_theta) || c->rope_local_theta < 0 ||
		    !isfinite(c->rope_local_theta))
			return circ_errorf(e, "rope theta %g is not a positive number",
					   c->rope_theta);
		if (c->rope_scaling != CIRC_ROPE_DEFAULT &&
		    (!(c->rope_factor > 0) || !isfinite(c->rope_factor)))
			return circ_errorf(e, "rope factor %g is not a positive number",
					   c->rope_factor);
		if (c->rope_scaling == CIRC_ROPE_LLAMA3 &&
		    (!(c->rope_low_freq_factor > 0) ||
		     !(c->rope_high_freq_factor > c->rope_low_freq_factor) ||
		     !isfinite(c->rope_high_freq_factor) || c->rope_original_ctx < 1))
			return circ_errorf(e,
					   "llama3 rope scaling needs 0 < low_freq_factor < "
					   "high_freq_factor and original_max_position_embeddings "
					   ">= 1");
	}
	if (c->norm_offset != 0 && c->norm_offset != 1)
		return circ_errorf(e, "norm offset %g is not 0 or 1", c->norm_offset);
	if (c->embed_scale < 0 || !isfinite(c->embed_scale) || c->attn_softcap < 0 ||
	    !isfinite(c->attn_softcap) || c->final_softcap < 0 || !isfinite(c->final_softcap) ||
	    c->query_pre_attn_scalar < 0 || !isfinite(c->query_pre_attn_scalar))
		return circ_errorf(e, "a scale or soft-cap is negative or not finite");
	if (c->sliding_window < 0)
		return circ_errorf(e, "sliding_window %d is negative", c->sliding_window);
	if (c->model_type == CIRC_MODEL_GPT2 &&
	    (c->n_kv_head || c->head_dim || c->norm || c->norm_place || c->qk_norm || c->pos ||
	     c->mlp || c->no_bias_qkv || c->no_bias_o || c->no_bias_mlp || c->parallel_residual ||
	     c->untied || c->sliding_window || c->attn_softcap || c->final_softcap))
		return circ_errorf(e, "a gpt2 config sets fields of another architecture");
	return 0;
}

int circ_config_check(const circ_config *c, circ_error *e)
{
	if (c->n_layer < 1 || c->n_layer > MAX_LAYER)
		return circ_errorf(e, "n_layer %d is out of range (1-%d)", c->n_layer, MAX_LAYER);
	if (c->n_head < 1 || c->n_head > MAX_HEAD)
		return circ_errorf(e, "n_head %d is out of range (1-%d)", c->n_head, MAX_HEAD);
	if (c->n_embd < 1 || c->n_embd > MAX_EMBD)
		return circ_errorf(e, "n_embd %d is out of range (1-%d)", c->n_embd, MAX_EMBD);
	if (c->n_layer > CIRC_CONFIG_MAX_LAYER)
		return circ_errorf(e, "n_layer %d is out of range (1-%d)", c->n_layer,
				   CIRC_CONFIG_MAX_LAYER);
	if (!c->head_dim && c->n_embd % c->n_head)
		return circ_errorf(e, "n_embd %d is not a multiple of n_head %d", c->n_embd,
				   c->n_head);
	if (c->n_ctx < 1 || c->n_ctx > MAX_CTX)
		return circ_errorf(e, "n_positions %d is out of range (1-%d)", c->n_ctx, MAX_CTX);
	if (c->vocab_size < 1 || c->vocab_size > MAX_VOCAB)
		return circ_errorf(e, "vocab_size %d is out of range (1-%d)", c->vocab_size,
				   MAX_VOCAB);
	if (c->n_inner < 1 || c->n_inner > 16 * MAX_EMBD)
		return circ_errorf(e, "n_inner %d is out of range (1-%d)", c->n_inner,
				   16 * MAX_EMBD);
	if (!(c->layer_norm_epsilon > 0) || !isfinite(c->layer_norm_epsilon))
		return circ_errorf(e, "layer_norm_epsilon %g is not a positive number",
				   c->layer_norm_epsilon);
	if (c->act != CIRC_ACT_GELU && c->act != CIRC_ACT_GELU_NEW && c->act != CIRC_ACT_SILU)
		return circ_errorf(e, "unknown activation");
	return check_arch(c, e);
}

/* Reads a small text file whole (bounded; a FIFO or device refused). */
char *model_read_file(const char *path, size_t *len, circ_error *e)
{
	return circ_read_file(path, CIRC_MAX_TEXT_FILE, len, e);
}

static int cfg_int(json_t *root, const char *path, const char *key, int required, int *out,
		   circ_error *e)
{
	json_t *v = json_object_get(root, key);
	if (!v) {
		if (required)
			return circ_errorf(e, "'%s': key '%s': missing", path, key);
		return 1;
	}
	if (!json_is_integer(v))
		return circ_errorf(e, "'%s': key '%s': expected an integer, got %s", path, key,
				   json_is_real(v)     ? "a real number"
				   : json_is_string(v) ? "a string"
						       : "another type");
	if (json_integer_value(v) < 1 || json_integer_value(v) > (1 << 30))
		return circ_errorf(e, "'%s': key '%s': %lld is out of range", path, key,
				   (long long)json_integer_value(v));
	*out = (int)json_integer_value(v);
	return 0;
}

static int cfg_bool_must(json_t *root, const char *path, const char *key, int want, circ_error *e)
{
	json_t *v = json_object_get(root, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return circ_errorf(e, "'%s': key '%s': expected true or false", path, key);
	if (json_is_true(v) != want)
		return circ_errorf(e, "'%s': key '%s': %s is not supported (circ implements %s)",
				   path, key, json_is_true(v) ? "true" : "false",
				   want ? "true" : "false");
	return 0;
}

/* ---- the Hugging Face families other than GPT-2 ---- */

/* A number (integer or real) under key; absent or null -> def, *set 0. */
static int hf_num(json_t *o, const char *path, const char *key, double def, double *out,
		  circ_error *e)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v)) {
		*out = def;
		return 1;
	}
	if (!json_is_number(v) || !isfinite(json_number_value(v)))
		return circ_errorf(e, "'%s': key '%s': expected a number", path, key);
	*out = json_number_value(v);
	return 0;
}

/* A boolean under key; absent or null -> def. */
static int hf_bool(json_t *o, const char *path, const char *key, int def, int *out, circ_error *e)
{
	json_t *v = json_object_get(o, key);
	if (!v || json_is_null(v)) {
		*out = def;
		return 0;
	}
	if (!json_is_boolean(v))
		return circ_errorf(e, "'%s': key '%s': expected true or false", path, key);
	*out = json_is_true(v);
	return 0;
}

/* An activation name under key (absent or null -> def). */
static int hf_act(json_t *o, const char *path, const char *key, const char *def, circ_act *out,
		  circ_error *e)
{
	json_t *v = json_object_get(o, key);
	const char *a = def;
	if (v && !json_is_null(v)) {
		if (!json_is_string(v))
			return circ_errorf(e, "'%s': key '%s': expected a string", path, key);
		a = json_string_value(v);
	}
	if (!strcmp(a, "gelu_new") || !strcmp(a, "gelu_pytorch_tanh"))
		*out = CIRC_ACT_GELU_NEW;
	else if (!strcmp(a, "gelu"))
		*out = CIRC_ACT_GELU;
	else if (!strcmp(a, "silu") || !strcmp(a, "swish"))
		*out = CIRC_ACT_SILU;
	else
		return circ_errorf(e,
				   "'%s': key '%s': '%s' is not supported (gelu_new, "
				   "gelu_pytorch_tanh, gelu, silu)",
				   path, key, a);
	return 0;
}

/* One RoPE setting (a rope_scaling object, or one of rope_parameters):
 * its type and parameters into c (local: only the default type allowed). */
static int hf_rope_one(json_t *o, const char *path, const char *key, circ_config *c, int local,
		       circ_error *e)
{
	json_t *t = json_object_get(o, "rope_type");
	const char *type;
	double x;
	if (!t || json_is_null(t))
		t = json_object_get(o, "type");
	if (t && !json_is_string(t))
		return circ_errorf(e, "'%s': key '%s': 'rope_type' is not a string", path, key);
	type = t ? json_string_value(t) : "default";
	if (!strcmp(type, "default"))
		return 0;
	if (local || (strcmp(type, "linear") && strcmp(type, "llama3")))
		return circ_errorf(
		    e, "'%s': key '%s': rope type '%s' is not supported (%s)", path, key, type,
		    local ? "sliding-window layers: default" : "default, linear, llama3");
	c->rope_scaling = !strcmp(type, "linear") ? CIRC_ROPE_LINEAR : CIRC_ROPE_LLAMA3;
	if (hf_num(o, path, "factor", 0, &c->rope_factor, e) != 0)
		return circ_errorf(e, "'%s': key '%s': 'factor' missing or not a number", path,
				   key);
	if (c->rope_scaling == CIRC_ROPE_LLAMA3) {
		if (hf_num(o, path, "low_freq_factor", 0, &c->rope_low_freq_factor, e) != 0 ||
		    hf_num(o, path, "high_freq_factor", 0, &c->rope_high_freq_factor, e) != 0 ||
		    hf_num(o, path, "original_max_position_embeddings", 0, &x, e) != 0 ||
		    x != floor(x) || x < 1 || x > (1 << 30))
			return circ_errorf(e,
					   "'%s': key '%s': llama3 needs numbers low_freq_factor, "
					   "high_freq_factor and original_max_position_embeddings",
					   path, key);
		c->rope_original_ctx = (int)x;
	}
	return 0;
}

/* RoPE: theta and scaling from rope_scaling (hub configs) or rope_parameters
 * (recent transformers: flat, or one object per layer type). */
static int hf_rope(json_t *root, const char *path, circ_config *c, double def_theta, circ_error *e)
{
	json_t *rs = json_object_get(root, "rope_scaling"),
	       *rp = json_object_get(root, "rope_parameters");
	json_t *full = rp, *slide = NULL;
	double local;
	if (rp && !json_is_null(rp) && !json_is_object(rp))
		return circ_errorf(e, "'%s': key 'rope_parameters': expected an object", path);
	if (rs && !json_is_null(rs) && !json_is_object(rs))
		return circ_errorf(e, "'%s': key 'rope_scaling': expected an object or null", path);
	if (rp && json_is_object(json_object_get(rp, "full_attention"))) {
		full = json_object_get(rp, "full_attention");
		slide = json_object_get(rp, "sliding_attention");
		if (slide && !json_is_object(slide))
			return circ_errorf(e,
					   "'%s': key 'rope_parameters': 'sliding_attention' is "
					   "not an object",
					   path);
	}
	if (hf_num(root, path, "rope_theta", def_theta, &c->rope_theta, e) < 0)
		return -1;
	if (full && json_is_object(full) &&
	    hf_num(full, path, "rope_theta", c->rope_theta, &c->rope_theta, e) < 0)
		return -1;
	if (rs && json_is_object(rs)) {
		if (hf_rope_one(rs, path, "rope_scaling", c, 0, e) < 0)
			return -1;
	} else if (full && json_is_object(full) &&
		   hf_rope_one(full, path, "rope_parameters", c, 0, e) < 0) {
		return -1;
	}
	if (hf_num(root, path, "rope_local_base_freq", 0, &local, e) < 0)
		return -1;
	if (slide) {
		if (hf_rope_one(slide, path, "rope_parameters", c, 1, e) < 0 ||
		    hf_num(slide, path, "rope_theta", local, &local, e) < 0)
			return -1;
	}
	c->rope_local_theta = local;
	if (!(c->rope_theta > 0) || c->rope_local_theta < 0)
		return circ_errorf(e, "'%s': key 'rope_theta': expected a positive number", path);
	return 0;
}

/* Which layers slide: layer_types when given, else the family's pattern
 * (every layer: mistral; layer i unless (i + 1) % pattern == 0: Gemma). */
static int hf_layers(json_t *root, const char *path, circ_config *c, int pattern, circ_error *e)
{
	json_t *lt = json_object_get(root, "layer_types");
	if (lt && !json_is_null(lt)) {
		if (!json_is_array(lt) || (int)json_array_size(lt) != c->n_layer)
			return circ_errorf(e,
					   "'%s': key 'layer_types': expected an array of %d "
					   "strings (num_hidden_layers)",
					   path, c->n_layer);
		for (int i = 0; i < c->n_layer; i++) {
			json_t *v = json_array_get(lt, (size_t)i);
			const char *s = json_is_string(v) ? json_string_value(v) : "";
			if (strcmp(s, "sliding_attention") && strcmp(s, "full_attention"))
				return circ_errorf(e,
						   "'%s': key 'layer_types': entry %d is not "
						   "supported (sliding_attention, full_attention)",
						   path, i);
			c->local_layer[i] = !strcmp(s, "sliding_attention");
		}
		return 0;
	}
	for (int i = 0; i < c->n_layer; i++)
		c->local_layer[i] = pattern <= 0 || (i + 1) % pattern != 0;
	return 0;
}

/* A number that a config may set to null for "none" (0) and may leave out
 * for the configuration class's default def (transformers tells the two
 * apart: Gemma2Config's attn_logit_softcapping is 50 when absent, off when
 * null). */
static int hf_num_or_none(json_t *o, const char *path, const char *key, double def, double *out,
			  circ_error *e)
{
	json_t *v = json_object_get(o, key);
	if (v && json_is_null(v)) {
		*out = 0;
		return 0;
	}
	return hf_num(o, path, key, def, out, e) < 0 ? -1 : 0;
}

/* The sliding window: an integer, null (none), or absent (def). */
static int hf_window(json_t *root, const char *path, circ_config *c, int def, circ_error *e)
{
	json_t *v = json_object_get(root, "sliding_window");
	if (!v) {
		c->sliding_window = def;
		return 0;
	}
	if (json_is_null(v))
		return 0;
	return cfg_int(root, path, "sliding_window", 1, &c->sliding_window, e);
}

/* The fraction of each head that RoPE turns: rotary_pct (GPT-NeoX's hub
 * files), else partial_rotary_factor (recent transformers: at the top or in
 * rope_parameters), else def. */
static int hf_rotary_fraction(json_t *root, const char *path, double def, double *out,
			      circ_error *e)
{
	json_t *rp = json_object_get(root, "rope_parameters");
	int r = hf_num(root, path, "rotary_pct", def, out, e);
	if (r != 1)
		return r;
	r = hf_num(root, path, "partial_rotary_factor", def, out, e);
	if (r != 1 || !json_is_object(rp))
		return r < 0 ? -1 : 0;
	return hf_num(rp, path, "partial_rotary_factor", def, out, e) < 0 ? -1 : 0;
}

static int hf_parse(json_t *root, const char *path, circ_model_type fam, circ_config *c,
		    circ_error *e)
{
	json_t *v;
	int gemma =
	    fam == CIRC_MODEL_GEMMA || fam == CIRC_MODEL_GEMMA2 || fam == CIRC_MODEL_GEMMA3_TEXT;
	int tied = 0, b = 0, r, pattern = 0;
	double x;
	c->model_type = fam;
	if (cfg_int(root, path, "num_hidden_layers", 1, &c->n_layer, e) < 0 ||
	    cfg_int(root, path, "num_attention_heads", 1, &c->n_head, e) < 0 ||
	    cfg_int(root, path, "hidden_size", 1, &c->n_embd, e) < 0 ||
	    cfg_int(root, path, "vocab_size", 1, &c->vocab_size, e) < 0 ||
	    cfg_int(root, path, "intermediate_size", 1, &c->n_inner, e) < 0 ||
	    cfg_int(root, path, "max_position_embeddings", 1, &c->n_ctx, e) < 0)
		return -1;
	if (c->n_layer > CIRC_CONFIG_MAX_LAYER)
		return circ_errorf(e, "'%s': key 'num_hidden_layers': %d is out of range (1-%d)",
				   path, c->n_layer, CIRC_CONFIG_MAX_LAYER);
	/* rotary models have no position table: the context only bounds T */
	if (c->n_ctx > MAX_CTX)
		c->n_ctx = MAX_CTX;
	v = json_object_get(root, "num_key_value_heads");
	if (v && !json_is_null(v) &&
	    cfg_int(root, path, "num_key_value_heads", 1, &c->n_kv_head, e) < 0)
		return -1;
	v = json_object_get(root, "head_dim");
	if (v && !json_is_null(v) && cfg_int(root, path, "head_dim", 1, &c->head_dim, e) < 0)
		return -1;
	if (!c->head_dim && c->n_embd % c->n_head)
		return circ_errorf(e,
				   "'%s': key 'hidden_size': %d is not a multiple of "
				   "num_attention_heads %d (and no head_dim)",
				   path, c->n_embd, c->n_head);
	if (!c->head_dim)
		c->head_dim = c->n_embd / c->n_head;
	if (!c->n_kv_head)
		c->n_kv_head = c->n_head;
	c->pos = CIRC_POS_ROTARY;
	c->mlp = CIRC_MLP_GATED;
	c->norm = CIRC_NORM_RMSNORM;
	c->no_bias_qkv = c->no_bias_o = c->no_bias_mlp = 1;
	if (hf_bool(root, path, "tie_word_embeddings", gemma, &tied, e) < 0)
		return -1;
	c->untied = !tied;

	if (fam == CIRC_MODEL_GPT_NEOX) {
		c->norm = CIRC_NORM_LAYERNORM;
		c->mlp = CIRC_MLP_PLAIN;
		c->no_bias_mlp = 0;
		if (hf_num(root, path, "layer_norm_eps", 1e-5, &c->layer_norm_epsilon, e) < 0 ||
		    hf_act(root, path, "hidden_act", "gelu", &c->act, e) < 0 ||
		    hf_bool(root, path, "use_parallel_residual", 1, &c->parallel_residual, e) < 0 ||
		    hf_bool(root, path, "attention_bias", 1, &b, e) < 0 ||
		    hf_rotary_fraction(root, path, 0.25, &x, e) < 0 ||
		    hf_num(root, path, "rotary_emb_base", 10000, &c->rope_theta, e) < 0 ||
		    hf_rope(root, path, c, c->rope_theta, e) < 0)
			return -1;
		c->no_bias_qkv = c->no_bias_o = !b;
		if (!(x > 0 && x <= 1))
			return circ_errorf(e, "'%s': key 'rotary_pct': %g is not in (0, 1]", path,
					   x);
		c->rotary_dim = (int)(c->head_dim * x); /* HF: int(head_size * rotary_pct) */
		if (c->rotary_dim < 2 || c->rotary_dim % 2)
			return circ_errorf(e,
					   "'%s': key 'rotary_pct': %g of head_dim %d gives %d "
					   "rotary dimensions (supported: an even number >= 2)",
					   path, x, c->head_dim, c->rotary_dim);
		if (c->rotary_dim == c->head_dim)
			c->rotary_dim = 0;
		goto done;
	}
	if (hf_rotary_fraction(root, path, 1, &x, e) < 0)
		return -1;
	if (x != 1)
		return circ_errorf(e,
				   "'%s': key 'partial_rotary_factor': %g is not supported for %s "
				   "(1; partial rotary: gpt_neox)",
				   path, x, circ_model_type_name(fam));
	/* the configuration classes' defaults: 1e-5 for OLMo 2, 1e-6 for the rest */
	if (hf_num(root, path, "rms_norm_eps", fam == CIRC_MODEL_OLMO2 ? 1e-5 : 1e-6,
		   &c->layer_norm_epsilon, e) < 0 ||
	    hf_rope(root, path, c, fam == CIRC_MODEL_GEMMA3_TEXT ? 1e6 : 10000, e) < 0)
		return -1;
	if (fam != CIRC_MODEL_GEMMA3_TEXT) {
		if (c->rope_local_theta && c->rope_local_theta != c->rope_theta)
			return circ_errorf(
			    e,
			    "'%s': key 'rope_parameters': a RoPE base of its own for "
			    "sliding-window layers is not supported for %s (gemma3_text)",
			    path, circ_model_type_name(fam));
		c->rope_local_theta = 0;
	}
	if (gemma) {
		c->norm_offset = 1;
		/* sqrt(C) as a float32 (HF: a tensor cast to the weights' dtype;
		 * this is its value for float32 weights) */
		c->embed_scale = (double)(float)sqrt((double)c->n_embd);
		if (hf_act(root, path, "hidden_activation", "gelu_pytorch_tanh", &c->act, e) < 0 ||
		    hf_bool(root, path, "attention_bias", 0, &b, e) < 0)
			return -1;
		c->no_bias_qkv = c->no_bias_o = !b; /* GemmaAttention: q, k, v and o */
	} else if (hf_act(root, path, "hidden_act", "silu", &c->act, e) < 0) {
		return -1;
	}
	switch (fam) {
	case CIRC_MODEL_LLAMA:
		if (hf_bool(root, path, "attention_bias", 0, &b, e) < 0)
			return -1;
		c->no_bias_qkv = c->no_bias_o = !b;
		if (hf_bool(root, path, "mlp_bias", 0, &b, e) < 0)
			return -1;
		c->no_bias_mlp = !b;
		break;
	case CIRC_MODEL_MISTRAL:
		if (hf_window(root, path, c, 4096, e) < 0) /* MistralConfig's default */
			return -1;
		break;
	case CIRC_MODEL_QWEN2:
	case CIRC_MODEL_QWEN3:
		if (cfg_bool_must(root, path, "use_sliding_window", 0, e) < 0)
			return -1;
		if (fam == CIRC_MODEL_QWEN2) {
			c->no_bias_qkv = 0; /* Qwen2Attention: q, k, v always biased */
		} else {
			if (hf_bool(root, path, "attention_bias", 0, &b, e) < 0)
				return -1;
			c->no_bias_qkv = c->no_bias_o = !b;
			c->qk_norm = CIRC_QK_NORM_HEAD;
		}
		break;
	case CIRC_MODEL_GEMMA3_TEXT:
		c->qk_norm = CIRC_QK_NORM_HEAD;
		pattern = 6;
		if (!c->rope_local_theta)
			c->rope_local_theta = 10000;
		r = cfg_int(root, path, "sliding_window_pattern", 0, &pattern, e);
		if (r < 0)
			return -1;
		/* fall through */
	case CIRC_MODEL_GEMMA2:
		if (fam == CIRC_MODEL_GEMMA2)
			pattern = 2;
		c->norm_place = CIRC_NORM_PRE_POST;
		/* Gemma2Config: soft-caps 50 and 30 when absent; Gemma3TextConfig: none;
		 * both: query_pre_attn_scalar 256, sliding_window 4096 */
		if (hf_num_or_none(root, path, "attn_logit_softcapping",
				   fam == CIRC_MODEL_GEMMA2 ? 50 : 0, &c->attn_softcap, e) < 0 ||
		    hf_num_or_none(root, path, "final_logit_softcapping",
				   fam == CIRC_MODEL_GEMMA2 ? 30 : 0, &c->final_softcap, e) < 0 ||
		    hf_num(root, path, "query_pre_attn_scalar", 256, &c->query_pre_attn_scalar, e) <
			0 ||
		    hf_window(root, path, c, 4096, e) < 0)
			return -1;
		if (!(c->query_pre_attn_scalar > 0))
			return circ_errorf(e,
					   "'%s': key 'query_pre_attn_scalar': expected a positive "
					   "number",
					   path);
		break;
	case CIRC_MODEL_GEMMA: break;
	case CIRC_MODEL_OLMO2:
		if (hf_bool(root, path, "attention_bias", 0, &b, e) < 0)
			return -1;
		c->no_bias_qkv = c->no_bias_o = !b;
		c->norm_place = CIRC_NORM_POST;
		c->qk_norm = CIRC_QK_NORM_WHOLE;
		break;
	default: break;
	}
	if (c->sliding_window && hf_layers(root, path, c, pattern, e) < 0)
		return -1;
done:
	if (circ_config_check(c, e) < 0)
		return circ_error_prefix(e, "'%s'", path);
	return 0;
}

int model_config_parse(const char *path, const char *text, size_t len, circ_config *c,
		       circ_error *e)
{
	json_error_t jerr;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr), *v;
	int rc = -1, r;
	memset(c, 0, sizeof *c);
	if (!root)
		return circ_errorf(e, "'%s': bad JSON at line %d: %s", path, jerr.line, jerr.text);
	if (!json_is_object(root)) {
		circ_errorf(e, "'%s': not a JSON object", path);
		goto out;
	}
	v = json_object_get(root, "model_type");
	if (v && (!json_is_string(v) || strcmp(json_string_value(v), "gpt2"))) {
		int f;
		for (f = 1; f < CIRC_MODEL_COUNT && json_is_string(v); f++)
			if (!strcmp(json_string_value(v), model_type_names[f]))
				break;
		if (!json_is_string(v) || f == CIRC_MODEL_COUNT) {
			circ_errorf(e, "'%s': key 'model_type': '%s' is not supported (%s)", path,
				    json_is_string(v) ? json_string_value(v) : "?", FAMILY_LIST);
			goto out;
		}
		rc = hf_parse(root, path, (circ_model_type)f, c, e);
		goto out;
	}
	if (cfg_int(root, path, "n_layer", 1, &c->n_layer, e) < 0 ||
	    cfg_int(root, path, "n_head", 1, &c->n_head, e) < 0 ||
	    cfg_int(root, path, "n_embd", 1, &c->n_embd, e) < 0 ||
	    cfg_int(root, path, "vocab_size", 1, &c->vocab_size, e) < 0)
		goto out;
	r = cfg_int(root, path, "n_positions", 0, &c->n_ctx, e);
	if (r < 0)
		goto out;
	if (r == 1) {
		r = cfg_int(root, path, "n_ctx", 0, &c->n_ctx, e);
		if (r < 0)
			goto out;
		if (r == 1) {
			circ_errorf(e, "'%s': key 'n_positions': missing (and no 'n_ctx')", path);
			goto out;
		}
	}
	v = json_object_get(root, "n_inner");
	if (!v || json_is_null(v)) {
		/* as cfg_int bounds every size */
		if (c->n_embd > (1 << 30) / 4) {
			circ_errorf(
			    e,
			    "'%s': key 'n_embd': %d is out of range (n_inner, absent, would "
			    "be 4 x n_embd)",
			    path, c->n_embd);
			goto out;
		}
		c->n_inner = 4 * c->n_embd;
	} else if (cfg_int(root, path, "n_inner", 1, &c->n_inner, e) < 0) {
		goto out;
	}
	v = json_object_get(root, "layer_norm_epsilon");
	if (!v) {
		c->layer_norm_epsilon = 1e-5;
	} else if (!json_is_number(v) || !(json_number_value(v) > 0)) {
		circ_errorf(e, "'%s': key 'layer_norm_epsilon': expected a positive number", path);
		goto out;
	} else {
		c->layer_norm_epsilon = json_number_value(v);
	}
	v = json_object_get(root, "activation_function");
	if (!v) {
		c->act = CIRC_ACT_GELU_NEW;
	} else if (!json_is_string(v)) {
		circ_errorf(e, "'%s': key 'activation_function': expected a string", path);
		goto out;
	} else if (!strcmp(json_string_value(v), "gelu_new") ||
		   !strcmp(json_string_value(v), "gelu_pytorch_tanh")) {
		c->act = CIRC_ACT_GELU_NEW;
	} else if (!strcmp(json_string_value(v), "gelu")) {
		c->act = CIRC_ACT_GELU;
	} else {
		circ_errorf(e,
			    "'%s': key 'activation_function': '%s' is not supported (gelu_new, "
			    "gelu_pytorch_tanh or gelu)",
			    path, json_string_value(v));
		goto out;
	}
	if (cfg_bool_must(root, path, "scale_attn_weights", 1, e) < 0 ||
	    cfg_bool_must(root, path, "scale_attn_by_inverse_layer_idx", 0, e) < 0 ||
	    cfg_bool_must(root, path, "add_cross_attention", 0, e) < 0)
		goto out;
	if (circ_config_check(c, e) < 0) {
		circ_error_prefix(e, "'%s'", path);
		goto out;
	}
	rc = 0;
out:
	json_decref(root);
	return rc;
}

char *model_join_path(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = circ_xmalloc(n);
	snprintf(p, n, "%s/%s", dir, name);
	return p;
}

int model_is_dir(const char *p)
{
	struct stat sb;
	return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int circ_config_load(const char *path, circ_config *c, circ_error *e)
{
	char *file = model_is_dir(path) ? model_join_path(path, "config.json") : circ_xstrdup(path);
	size_t len;
	char *text = model_read_file(file, &len, e);
	int rc = -1;
	if (text)
		rc = model_config_parse(file, text, len, c, e);
	free(text);
	free(file);
	return rc;
}

/* The fewest significant digits that read every real of o (and of the
 * objects in it) back exactly: "1e-05", not 1.0000000000000001e-05. */
static int shortest_precision(json_t *o)
{
	int prec = 1;
	const char *k;
	json_t *v;
	json_object_foreach(o, k, v)
	{
		if (json_is_object(v)) {
			int p = shortest_precision(v);
			prec = p > prec ? p : prec;
		}
		for (; json_is_real(v) && prec < 17; prec++) {
			char b[64];
			snprintf(b, sizeof b, "%.*g", prec, json_real_value(v));
			if (strtod(b, NULL) == json_real_value(v))
				break;
		}
	}
	return prec;
}

static json_t *num_or_null(double x)
{
	return x ? json_real(x) : json_null();
}

char *circ_config_describe(const circ_config *c, int tied)
{
	static const char *const norms[] = {"layernorm", "rmsnorm"};
	static const char *const places[] = {"pre", "pre_post", "post"};
	static const char *const qk[] = {"none", "per_head", "whole"};
	static const char *const scal[] = {"default", "linear", "llama3"};
	int D = circ_config_head_dim(c), rot = c->pos == CIRC_POS_ROTARY;
	json_t *o = json_object(), *loc = json_array(), *rs = json_null();
	char *s;
	for (int l = 0; l < c->n_layer && c->sliding_window; l++)
		if (c->local_layer[l])
			json_array_append_new(loc, json_integer(l));
	if (rot && c->rope_scaling != CIRC_ROPE_DEFAULT) {
		rs = json_pack("{s:s, s:f}", "type", scal[c->rope_scaling], "factor",
			       c->rope_factor);
		if (c->rope_scaling == CIRC_ROPE_LLAMA3) {
			json_object_set_new(rs, "low_freq_factor",
					    json_real(c->rope_low_freq_factor));
			json_object_set_new(rs, "high_freq_factor",
					    json_real(c->rope_high_freq_factor));
			json_object_set_new(rs, "original_max_position_embeddings",
					    json_integer(c->rope_original_ctx));
		}
	}
	json_object_set_new(o, "model_type", json_string(circ_model_type_name(c->model_type)));
	json_object_set_new(o, "n_layer", json_integer(c->n_layer));
	json_object_set_new(o, "n_head", json_integer(c->n_head));
	json_object_set_new(o, "n_kv_head", json_integer(circ_config_kv_heads(c)));
	json_object_set_new(o, "head_dim", json_integer(D));
	json_object_set_new(o, "n_embd", json_integer(c->n_embd));
	json_object_set_new(o, "n_inner", json_integer(c->n_inner));
	json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
	json_object_set_new(o, "n_ctx", json_integer(c->n_ctx));
	json_object_set_new(o, "norm", json_string(norms[c->norm]));
	json_object_set_new(o, "norm_eps", json_real(c->layer_norm_epsilon));
	json_object_set_new(o, "norm_offset", json_real(c->norm_offset));
	json_object_set_new(o, "norm_placement", json_string(places[c->norm_place]));
	json_object_set_new(o, "qk_norm", json_string(qk[c->qk_norm]));
	json_object_set_new(o, "position", json_string(rot ? "rotary" : "learned"));
	json_object_set_new(o, "rotary_dim", json_integer(circ_config_rotary_dim(c)));
	json_object_set_new(o, "rope_theta", rot ? json_real(c->rope_theta) : json_null());
	json_object_set_new(o, "rope_scaling", rs);
	json_object_set_new(o, "rope_local_theta", num_or_null(rot ? c->rope_local_theta : 0));
	json_object_set_new(o, "mlp", json_string(c->mlp == CIRC_MLP_GATED ? "gated" : "plain"));
	json_object_set_new(o, "activation", json_string(circ_act_name(c->act)));
	json_object_set_new(o, "bias_qkv", json_boolean(!c->no_bias_qkv));
	json_object_set_new(o, "bias_o", json_boolean(!c->no_bias_o));
	json_object_set_new(o, "bias_mlp", json_boolean(!c->no_bias_mlp));
	json_object_set_new(o, "parallel_residual", json_boolean(c->parallel_residual));
	json_object_set_new(o, "tied_embeddings", tied < 0 ? json_null() : json_boolean(tied));
	json_object_set_new(o, "embed_scale", json_real(c->embed_scale ? c->embed_scale : 1));
	json_object_set_new(
	    o, "attn_scale",
	    json_real(1 / sqrt(c->query_pre_attn_scalar ? c->query_pre_attn_scalar : (double)D)));
	json_object_set_new(o, "attn_softcap", num_or_null(c->attn_softcap));
	json_object_set_new(o, "final_softcap", num_or_null(c->final_softcap));
	json_object_set_new(o, "sliding_window",
			    c->sliding_window ? json_integer(c->sliding_window) : json_null());
	json_object_set_new(o, "local_layers", loc);
	s = json_dumps(o, JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(shortest_precision(o)));
	json_decref(o);
	if (!s) {
		fprintf(stderr, "%s: out of memory (describing a config)\n", circ_progname);
		exit(1);
	}
	return s;
}

/* The config.json text circ writes (deterministic: fixed key order). */
/* A Llama config.json's keys (what circ-train writes): the Hugging Face
 * names, default RoPE. */
static void llama_keys(json_t *o, const circ_config *c)
{
	json_object_set_new(o, "model_type", json_string("llama"));
	json_object_set_new(o, "architectures", json_pack("[s]", "LlamaForCausalLM"));
	json_object_set_new(o, "hidden_size", json_integer(c->n_embd));
	json_object_set_new(o, "intermediate_size", json_integer(c->n_inner));
	json_object_set_new(o, "num_hidden_layers", json_integer(c->n_layer));
	json_object_set_new(o, "num_attention_heads", json_integer(c->n_head));
	json_object_set_new(o, "num_key_value_heads", json_integer(circ_config_kv_heads(c)));
	json_object_set_new(o, "head_dim", json_integer(circ_config_head_dim(c)));
	json_object_set_new(o, "max_position_embeddings", json_integer(c->n_ctx));
	json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
	json_object_set_new(o, "hidden_act", json_string(circ_act_name(c->act)));
	json_object_set_new(o, "rms_norm_eps", json_real(c->layer_norm_epsilon));
	json_object_set_new(o, "rope_theta", json_real(c->rope_theta));
	json_object_set_new(o, "attention_bias", json_boolean(!c->no_bias_qkv));
	json_object_set_new(o, "mlp_bias", json_boolean(!c->no_bias_mlp));
	json_object_set_new(o, "tie_word_embeddings", json_boolean(!c->untied));
	json_object_set_new(o, "torch_dtype", json_string("float32"));
}

char *model_config_text(const circ_config *c)
{
	json_t *o = json_object();
	char *s;
	int prec;
	if (c->model_type == CIRC_MODEL_LLAMA) {
		llama_keys(o, c);
		goto dump;
	}
	json_object_set_new(o, "model_type", json_string("gpt2"));
	json_object_set_new(o, "architectures", json_pack("[s]", "GPT2LMHeadModel"));
	json_object_set_new(o, "n_layer", json_integer(c->n_layer));
	json_object_set_new(o, "n_head", json_integer(c->n_head));
	json_object_set_new(o, "n_embd", json_integer(c->n_embd));
	json_object_set_new(o, "n_positions", json_integer(c->n_ctx));
	json_object_set_new(o, "n_ctx", json_integer(c->n_ctx));
	json_object_set_new(o, "vocab_size", json_integer(c->vocab_size));
	json_object_set_new(o, "n_inner",
			    c->n_inner == 4 * c->n_embd ? json_null() : json_integer(c->n_inner));
	json_object_set_new(o, "activation_function", json_string(circ_act_name(c->act)));
	json_object_set_new(o, "layer_norm_epsilon", json_real(c->layer_norm_epsilon));
	json_object_set_new(o, "tie_word_embeddings", json_true());
dump:
	/* the shortest precision that reads back exactly: "1e-05", not 1.0000000000000001e-05 */
	for (prec = 1; prec < 17; prec++) {
		char b[64];
		snprintf(b, sizeof b, "%.*g", prec, c->layer_norm_epsilon);
		if (strtod(b, NULL) == c->layer_norm_epsilon)
			break;
	}
	s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(prec));
	json_decref(o);
	if (!s) { /* jansson fails only when out of memory: util's allocation policy */
		fprintf(stderr, "%s: out of memory (encoding config.json)\n", circ_progname);
		exit(1);
	}
	{ /* with a final newline */
		size_t n = strlen(s);
		char *t = circ_xmalloc(n + 2);
		memcpy(t, s, n);
		t[n] = '\n';
		t[n + 1] = 0;
		free(s);
		s = t;
	}
	return s;
}

int circ_config_write(const char *path, const circ_config *c, circ_error *e)
{
	char *t;
	int rc;
	if (circ_config_check(c, e) < 0)
		return -1;
	if (c->model_type == CIRC_MODEL_LLAMA &&
	    (c->norm != CIRC_NORM_RMSNORM || c->pos != CIRC_POS_ROTARY ||
	     c->mlp != CIRC_MLP_GATED || c->rope_scaling != CIRC_ROPE_DEFAULT ||
	     c->no_bias_qkv != c->no_bias_o || c->sliding_window || c->norm_offset != 0 ||
	     c->norm_place != CIRC_NORM_PRE || c->qk_norm != CIRC_QK_NORM_NONE))
		return circ_errorf(e,
				   "'%s': the config is not a plain llama (RMSNorm, default "
				   "RoPE, gated MLP)",
				   path);
	if (c->model_type != CIRC_MODEL_GPT2 && c->model_type != CIRC_MODEL_LLAMA)
		return circ_errorf(e,
				   "'%s': writing a %s config is not implemented (gpt2 and llama "
				   "only)",
				   path, circ_model_type_name(c->model_type));
	t = model_config_text(c);
	rc = circ_write_text(path, t, e);
	free(t);
	return rc;
}
