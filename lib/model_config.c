/*
 * model_config: config.json of a Hugging Face GPT-2 read (with jansson),
 * checked and written (see model.h, "configuration"). Keys that would
 * change the architecture in ways circ does not implement are errors.
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
	return a == CIRC_ACT_GELU ? "gelu" : "gelu_new";
}

int circ_config_check(const circ_config *c, circ_error *e)
{
	if (c->n_layer < 1 || c->n_layer > MAX_LAYER)
		return circ_errorf(e, "n_layer %d is out of range (1-%d)", c->n_layer, MAX_LAYER);
	if (c->n_head < 1 || c->n_head > MAX_HEAD)
		return circ_errorf(e, "n_head %d is out of range (1-%d)", c->n_head, MAX_HEAD);
	if (c->n_embd < 1 || c->n_embd > MAX_EMBD)
		return circ_errorf(e, "n_embd %d is out of range (1-%d)", c->n_embd, MAX_EMBD);
	if (c->n_embd % c->n_head)
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
	if (c->act != CIRC_ACT_GELU && c->act != CIRC_ACT_GELU_NEW)
		return circ_errorf(e, "unknown activation");
	return 0;
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
		circ_errorf(e, "'%s': key 'model_type': '%s' is not supported (circ reads gpt2)",
			    path, json_is_string(v) ? json_string_value(v) : "?");
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

/* The config.json text circ writes (deterministic: fixed key order). */
char *model_config_text(const circ_config *c)
{
	json_t *o = json_object();
	char *s;
	int prec;
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
	t = model_config_text(c);
	rc = circ_write_text(path, t, e);
	free(t);
	return rc;
}
