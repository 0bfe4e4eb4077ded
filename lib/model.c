/*
 * model: GPT-2 loading, the decomposed forward and the backward to
 * receivers (see model.h for the conventions and the API contract).
 *
 * Loading. config.json is parsed with jansson; model.safetensors is mapped
 * (lib/safetensors) and each tensor is matched against a table built from
 * the config (name, shape, destination). F32 tensors that are 4-byte aligned
 * are used in place; others are converted once into one owned buffer.
 *
 * The run. One anonymous mapping holds every activation of a run, carved
 * into buffers by run_layout() from the config and the largest batch; pages
 * a forward never touches (full logits, say, when only the last position is
 * read) cost nothing. Per stage s (2l attention, 2l+1 MLP, 2L final):
 *   resid[s]     (B, T, C) the residual entering the stage
 *   mean/rstd[s] (B, T)    LayerNorm statistics of the stage's shared input
 *   qkv[l] (B, T, 3C), att[l] (B, H, T, T), z[l] (B, T, C): attention
 *   fc[l] (B, T, F): the MLP's pre-activation
 *   node[u] (B, T, C): each upstream node's output
 * Buffers are sized for max_b * max_t rows and used as (B*T) contiguous
 * rows for the current B and T.
 *
 * Receiver deltas. A q/k/v receiver with a delta gets its own LayerNorm of
 * (residual + delta) and its own D-column slice of the QKV projection,
 * overwriting the shared result in qkv[l]; its LayerNorm statistics live
 * after its delta buffer. The m and logits receivers have one LayerNorm
 * each, so a delta there just changes that LayerNorm's input.
 *
 * Backward. Gradients flow from dlogits through ln_f into dresid[2L], then
 * layer by layer: the MLP (its receiver gradient is the LayerNorm backward
 * of its path; dresid[2l+1] = dresid[2l+2] + that), then the attention: dz,
 * the attention backward into dqkv, and for each q/k/v receiver the
 * gradient through its D-column slice of W_QKV and ln_1 alone. A head's node
 * gradient is the residual gradient after its layer's attention, because
 * every receiver downstream of it reads that residual. When no receiver
 * gradient is wanted (no hook, not kept) and the layer has no deltas, the
 * fused projection (one GEMM) replaces the 3H small ones.
 * With dweights, each stage also adds its parameter gradients (weight
 * gradients as GEMMs over rows, biases and LayerNorm parameters as row
 * sums); the embeddings get theirs from the residual gradient at stage 0.
 *
 * Threads: everything parallel runs on the run's circ_pool: GEMMs are cut
 * into one part per thread (OpenBLAS single-threaded in each), row and
 * batch kernels split their rows.
 */
#include "model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "rng.h"
#include "safetensors.h"
#include "stream.h"

#define MAX_LAYER 1024
#define MAX_HEAD  1024
#define MAX_EMBD  65536
#define MAX_VOCAB (1 << 24)
#define MAX_CTX	  65536

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
static char *read_file(const char *path, size_t *len, circ_error *e)
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

static int config_parse(const char *path, const char *text, size_t len, circ_config *c,
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

static char *join_path(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = circ_xmalloc(n);
	snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static int is_dir(const char *p)
{
	struct stat sb;
	return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

int circ_config_load(const char *path, circ_config *c, circ_error *e)
{
	char *file = is_dir(path) ? join_path(path, "config.json") : circ_xstrdup(path);
	size_t len;
	char *text = read_file(file, &len, e);
	int rc = -1;
	if (text)
		rc = config_parse(file, text, len, c, e);
	free(text);
	free(file);
	return rc;
}

/* The config.json text circ writes (deterministic: fixed key order). */
static char *config_text(const circ_config *c)
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

static int write_text(const char *path, const char *text, circ_error *e)
{
	circ_atomic a;
	FILE *f;
	if (circ_atomic_open(&a, path, e) < 0)
		return -1;
	if (!(f = circ_atomic_file(&a, e))) {
		circ_atomic_abort(&a);
		return -1;
	}
	fputs(text, f);
	return circ_atomic_commit(&a, e);
}

int circ_config_write(const char *path, const circ_config *c, circ_error *e)
{
	char *t;
	int rc;
	if (circ_config_check(c, e) < 0)
		return -1;
	t = config_text(c);
	rc = write_text(path, t, e);
	free(t);
	return rc;
}

/* ================================================================ weights */

/* One parameter tensor: its name without the "transformer." prefix, its
 * shape, and the field of circ_weights it goes to. */
typedef struct wentry {
	char name[48];
	int ndim;
	int64_t shape[2];
	float **slot;
} wentry;

/* Fills the table for c and w (w->layers must be allocated); returns the
 * count. With lm_head != 0 the untied lm_head.weight is added last. */
static int weight_table(const circ_config *c, circ_weights *w, wentry *t, int lm_head)
{
	int n = 0, C = c->n_embd, F = c->n_inner;
#define ADD(nm, nd, s0, s1, sl)                                                                    \
	do {                                                                                       \
		snprintf(t[n].name, sizeof t[n].name, "%s", nm);                                   \
		t[n].ndim = nd;                                                                    \
		t[n].shape[0] = s0;                                                                \
		t[n].shape[1] = s1;                                                                \
		t[n].slot = sl;                                                                    \
		n++;                                                                               \
	} while (0)
	ADD("wte.weight", 2, c->vocab_size, C, &w->wte);
	ADD("wpe.weight", 2, c->n_ctx, C, &w->wpe);
	for (int l = 0; l < c->n_layer; l++) {
		circ_layer_weights *lw = &w->layers[l];
		char b[48];
#define LADD(suffix, nd, s0, s1, sl)                                                               \
	do {                                                                                       \
		snprintf(b, sizeof b, "h.%d.%s", l, suffix);                                       \
		ADD(b, nd, s0, s1, sl);                                                            \
	} while (0)
		LADD("ln_1.weight", 1, C, 0, &lw->ln1_w);
		LADD("ln_1.bias", 1, C, 0, &lw->ln1_b);
		LADD("attn.c_attn.weight", 2, C, 3 * C, &lw->attn_w);
		LADD("attn.c_attn.bias", 1, 3 * C, 0, &lw->attn_b);
		LADD("attn.c_proj.weight", 2, C, C, &lw->proj_w);
		LADD("attn.c_proj.bias", 1, C, 0, &lw->proj_b);
		LADD("ln_2.weight", 1, C, 0, &lw->ln2_w);
		LADD("ln_2.bias", 1, C, 0, &lw->ln2_b);
		LADD("mlp.c_fc.weight", 2, C, F, &lw->fc_w);
		LADD("mlp.c_fc.bias", 1, F, 0, &lw->fc_b);
		LADD("mlp.c_proj.weight", 2, F, C, &lw->fcproj_w);
		LADD("mlp.c_proj.bias", 1, C, 0, &lw->fcproj_b);
#undef LADD
	}
	ADD("ln_f.weight", 1, C, 0, &w->lnf_w);
	ADD("ln_f.bias", 1, C, 0, &w->lnf_b);
	if (lm_head)
		ADD("lm_head.weight", 2, c->vocab_size, C, &w->lm_head);
#undef ADD
	return n;
}

static int64_t wentry_numel(const wentry *t)
{
	return t->ndim == 1 ? t->shape[0] : t->shape[0] * t->shape[1];
}

size_t circ_config_n_params(const circ_config *c)
{
	size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner;
	size_t per_layer = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * F + F + F * C + C;
	return (size_t)c->vocab_size * C + (size_t)c->n_ctx * C + (size_t)c->n_layer * per_layer +
	       2 * C;
}

void circ_weights_alloc(circ_weights *w, const circ_config *c)
{
	int n = 14 + 12 * c->n_layer;
	wentry *t = circ_xcalloc((size_t)n, sizeof *t);
	float *p;
	memset(w, 0, sizeof *w);
	w->layers = circ_xcalloc((size_t)c->n_layer, sizeof *w->layers);
	w->n_params = circ_config_n_params(c);
	w->mem = circ_xalloc_aligned(w->n_params * sizeof(float));
	n = weight_table(c, w, t, 0);
	p = w->mem;
	for (int i = 0; i < n; i++) {
		*t[i].slot = p;
		p += wentry_numel(&t[i]);
	}
	w->lm_head = w->wte;
	free(t);
}

void circ_weights_free(circ_weights *w)
{
	if (!w)
		return;
	free(w->mem);
	free(w->layers);
	memset(w, 0, sizeof *w);
}

/* ================================================================ model */

struct circ_model {
	circ_config cfg;
	circ_weights w;
	char *dir;
	circ_st *st;	    /* the mapped file, or NULL (in-memory model) */
	char *config_bytes; /* config.json as read (for the digest) */
	size_t config_len;
	float *own; /* converted tensors of a loaded model */
	char digest[72];
	int have_digest;
};

void circ_model_opts_default(circ_model_opts *o)
{
	memset(o, 0, sizeof *o);
}

const circ_config *circ_model_config(const circ_model *m)
{
	return &m->cfg;
}

const circ_weights *circ_model_weights(const circ_model *m)
{
	return &m->w;
}

const char *circ_model_dir(const circ_model *m)
{
	return m->dir;
}

int circ_model_check_unchanged(const circ_model *m, circ_error *e)
{
	return m->st ? circ_st_check_unchanged(m->st, e) : 0;
}

void circ_model_free(circ_model *m)
{
	if (!m)
		return;
	circ_st_close(m->st);
	free(m->own);
	free(m->w.mem);
	free(m->w.layers);
	free(m->config_bytes);
	free(m->dir);
	free(m);
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

/* "h.12.attn.bias" / "h.12.attn.masked_bias" with 0 <= 12 < L. */
static int ignored_buffer(const char *name, int L)
{
	int l, used = 0;
	if (sscanf(name, "h.%d.attn.%n", &l, &used) != 1 || used == 0 || l < 0 || l >= L)
		return 0;
	return !strcmp(name + used, "bias") || !strcmp(name + used, "masked_bias");
}

static int check_finite(const char *file, const char *name, const float *p, size_t n, circ_error *e)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t bits;
		memcpy(&bits, &p[i], 4);
		if ((bits & 0x7f800000u) == 0x7f800000u)
			return circ_errorf(e, "'%s': tensor '%s': element %zu is %s", file, name, i,
					   isnan(p[i]) ? "NaN" : "infinite");
	}
	return 0;
}

circ_model *circ_model_open(const char *dir, const circ_model_opts *o, circ_error *e)
{
	circ_model *m = circ_xcalloc(1, sizeof *m);
	circ_model_opts defo;
	char *cfg_path = join_path(dir, "config.json");
	char *st_path = join_path(dir, "model.safetensors");
	wentry *tab = NULL;
	const circ_st_tensor **found = NULL;
	int n_tab, lm_idx;
	size_t own_n = 0;
	float *p;

	if (!o) {
		circ_model_opts_default(&defo);
		o = &defo;
	}
	m->dir = circ_xstrdup(dir);
	if (!is_dir(dir)) {
		circ_errorf(e, "'%s': not a model directory (config.json and model.safetensors)",
			    dir);
		goto fail;
	}
	m->config_bytes = read_file(cfg_path, &m->config_len, e);
	if (!m->config_bytes ||
	    config_parse(cfg_path, m->config_bytes, m->config_len, &m->cfg, e) < 0)
		goto fail;
	m->st = circ_st_open(st_path, e);
	if (!m->st)
		goto fail;
	m->w.layers = circ_xcalloc((size_t)m->cfg.n_layer, sizeof *m->w.layers);
	tab = circ_xcalloc((size_t)(15 + 12 * m->cfg.n_layer), sizeof *tab);
	n_tab = weight_table(&m->cfg, &m->w, tab, 1);
	lm_idx = n_tab - 1;
	found = circ_xcalloc((size_t)n_tab, sizeof *found);

	/* Match every tensor of the file to the table. */
	for (int i = 0; i < circ_st_count(m->st); i++) {
		const circ_st_tensor *t = circ_st_at(m->st, i);
		const char *base = t->name;
		int k;
		char got[96], want[96];
		if (!strncmp(base, "transformer.", 12) && strcmp(base + 12, "lm_head.weight"))
			base += 12;
		if (ignored_buffer(base, m->cfg.n_layer))
			continue;
		for (k = 0; k < n_tab; k++)
			if (!strcmp(tab[k].name, base))
				break;
		if (k == n_tab) {
			circ_errorf(
			    e, "'%s': unexpected tensor '%s' (not part of a GPT-2 with %d layers)",
			    st_path, t->name, m->cfg.n_layer);
			goto fail;
		}
		if (found[k]) {
			circ_errorf(e, "'%s': tensor '%s' appears twice (as '%s' and '%s')",
				    st_path, tab[k].name, found[k]->name, t->name);
			goto fail;
		}
		if (t->dtype != CIRC_F32 && t->dtype != CIRC_F16 && t->dtype != CIRC_BF16) {
			circ_errorf(e, "'%s': tensor '%s': dtype %s (expected F32, F16 or BF16)",
				    st_path, t->name, circ_dtype_name(t->dtype));
			goto fail;
		}
		if (t->ndim != tab[k].ndim || t->shape[0] != tab[k].shape[0] ||
		    (t->ndim == 2 && t->shape[1] != tab[k].shape[1])) {
			shape_text(got, sizeof got, t->ndim, t->shape);
			shape_text(want, sizeof want, tab[k].ndim, tab[k].shape);
			circ_errorf(
			    e,
			    "'%s': tensor '%s': shape %s, expected %s from '%s' (n_layer %d, "
			    "n_head %d, n_embd %d, n_inner %d, n_positions %d, vocab_size %d)",
			    st_path, t->name, got, want, cfg_path, m->cfg.n_layer, m->cfg.n_head,
			    m->cfg.n_embd, m->cfg.n_inner, m->cfg.n_ctx, m->cfg.vocab_size);
			goto fail;
		}
		found[k] = t;
	}
	for (int k = 0; k < n_tab; k++)
		if (!found[k] && k != lm_idx) {
			circ_errorf(e, "'%s': missing tensor '%s'", st_path, tab[k].name);
			goto fail;
		}
	/* In place where possible, else one owned buffer for the rest. */
	for (int k = 0; k < n_tab; k++)
		if (found[k] &&
		    (o->copy || found[k]->dtype != CIRC_F32 || !circ_st_aligned(found[k])))
			own_n += (size_t)wentry_numel(&tab[k]);
	if (own_n)
		m->own = circ_xalloc_aligned(own_n * sizeof(float));
	p = m->own;
	for (int k = 0; k < n_tab; k++) {
		const circ_st_tensor *t = found[k];
		size_t n = (size_t)wentry_numel(&tab[k]);
		if (!t)
			continue;
		if (o->copy || t->dtype != CIRC_F32 || !circ_st_aligned(t)) {
			circ_st_to_f32(p, t->data, t->dtype, n);
			*tab[k].slot = p;
			p += n;
		} else {
			*tab[k].slot = (float *)(uintptr_t)t->data; /* read-only mapping */
		}
		if (!o->allow_nonfinite && check_finite(st_path, t->name, *tab[k].slot, n, e) < 0)
			goto fail;
	}
	if (!found[lm_idx])
		m->w.lm_head = m->w.wte;
	m->w.n_params = circ_config_n_params(&m->cfg);
	free(tab);
	free(found);
	free(cfg_path);
	free(st_path);
	return m;
fail:
	free(tab);
	free(found);
	free(cfg_path);
	free(st_path);
	circ_model_free(m);
	return NULL;
}

circ_model *circ_model_new(const circ_config *c, circ_weights *w, circ_error *e)
{
	circ_model *m;
	if (circ_config_check(c, e) < 0)
		return NULL;
	if (!w->wte || !w->layers) {
		circ_errorf(e, "weights are not allocated");
		return NULL;
	}
	m = circ_xcalloc(1, sizeof *m);
	m->cfg = *c;
	m->w = *w;
	if (!m->w.lm_head)
		m->w.lm_head = m->w.wte;
	memset(w, 0, sizeof *w);
	return m;
}

/* Tensors to write for a model: names with the "transformer." prefix, data
 * as f32 or converted into bufs (freed by the caller). */
static int save_tensors(const circ_config *c, const circ_weights *w, const char *dtype,
			circ_st_tensor **out, char ***names, void **conv, circ_error *e)
{
	circ_weights tmp = *w;
	wentry *tab = circ_xcalloc((size_t)(15 + 12 * c->n_layer), sizeof *tab);
	int untied = w->lm_head && w->lm_head != w->wte;
	int n = weight_table(c, &tmp, tab, untied);
	circ_dtype dt;
	size_t total = 0, esz;
	unsigned char *cp = NULL;
	if (!strcmp(dtype, "F32"))
		dt = CIRC_F32;
	else if (!strcmp(dtype, "F16"))
		dt = CIRC_F16;
	else if (!strcmp(dtype, "BF16"))
		dt = CIRC_BF16;
	else {
		free(tab);
		return circ_errorf(e, "dtype '%s' is not F32, F16 or BF16", dtype);
	}
	esz = dt == CIRC_F32 ? 4 : 2;
	*out = circ_xcalloc((size_t)n, sizeof **out);
	*names = circ_xcalloc((size_t)n, sizeof **names);
	for (int i = 0; i < n; i++)
		total += (size_t)wentry_numel(&tab[i]);
	if (dt != CIRC_F32)
		cp = circ_xmalloc(total * esz + 1);
	*conv = cp;
	for (int i = 0; i < n; i++) {
		circ_st_tensor *t = &(*out)[i];
		size_t numel = (size_t)wentry_numel(&tab[i]);
		const float *src = *tab[i].slot;
		size_t len = strlen(tab[i].name) + 16;
		(*names)[i] = circ_xmalloc(len);
		snprintf((*names)[i], len, "%s%s",
			 strcmp(tab[i].name, "lm_head.weight") ? "transformer." : "", tab[i].name);
		t->name = (*names)[i];
		t->dtype = dt;
		t->ndim = tab[i].ndim;
		t->shape[0] = tab[i].shape[0];
		t->shape[1] = tab[i].shape[1];
		t->nbytes = numel * esz;
		if (dt == CIRC_F32) {
			t->data = src;
		} else {
			for (size_t j = 0; j < numel; j++) {
				uint16_t h = dt == CIRC_F16 ? circ_f32_to_f16(src[j])
							    : circ_f32_to_bf16(src[j]);
				cp[2 * j] = (unsigned char)(h & 0xff);
				cp[2 * j + 1] = (unsigned char)(h >> 8);
			}
			t->data = cp;
			cp += numel * esz;
		}
	}
	free(tab);
	return n;
}

static void free_names(char **names, int n)
{
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

static int save_dir(const char *dir, const circ_config *c, const circ_weights *w, const char *dtype,
		    circ_error *e)
{
	circ_st_tensor *t = NULL;
	char **names = NULL;
	void *conv = NULL;
	char *cfgp, *stp;
	int n, rc = -1;
	const char *meta[] = {"format", "pt"};
	if (mkdir(dir, 0777) < 0 && errno != EEXIST)
		return circ_errorf(e, "'%s': cannot create directory: %s", dir, strerror(errno));
	n = save_tensors(c, w, dtype, &t, &names, &conv, e);
	if (n < 0)
		return -1;
	cfgp = join_path(dir, "config.json");
	stp = join_path(dir, "model.safetensors");
	if (circ_config_write(cfgp, c, e) == 0 && circ_st_write(stp, n, t, 1, meta, e) == 0)
		rc = 0;
	free(cfgp);
	free(stp);
	free(t);
	free(conv);
	free_names(names, n);
	return rc;
}

int circ_model_save(const circ_model *m, const char *dir, circ_error *e)
{
	return save_dir(dir, &m->cfg, &m->w, "F32", e);
}

int circ_model_write_random(const char *dir, const circ_config *c, uint64_t seed, const char *dtype,
			    circ_error *e)
{
	circ_weights w;
	circ_rng rng;
	wentry *tab;
	int n, rc;
	if (circ_config_check(c, e) < 0)
		return -1;
	circ_weights_alloc(&w, c);
	circ_rng_seed(&rng, seed);
	tab = circ_xcalloc((size_t)(15 + 12 * c->n_layer), sizeof *tab);
	n = weight_table(c, &w, tab, 0);
	for (int i = 0; i < n; i++) {
		float *p = *tab[i].slot;
		size_t numel = (size_t)wentry_numel(&tab[i]);
		const char *nm = tab[i].name;
		size_t len = strlen(nm);
		int is_ln_w = strstr(nm, "ln_") && !strcmp(nm + len - 6, "weight");
		int is_proj = strstr(nm, "c_proj.weight") != NULL;
		double sd = is_ln_w ? 0.1 : is_proj ? 0.02 / sqrt(2.0 * c->n_layer) : 0.02;
		for (size_t j = 0; j < numel; j++)
			p[j] = (float)((is_ln_w ? 1.0 : 0.0) + sd * circ_rng_normal(&rng));
	}
	free(tab);
	rc = save_dir(dir, c, &w, dtype ? dtype : "F32", e);
	circ_weights_free(&w);
	return rc;
}

static void sha_sink(void *ctx, const void *p, size_t len)
{
	circ_sha256_update(ctx, p, len);
}

const char *circ_model_digest(circ_model *m, circ_error *e)
{
	circ_sha256 s;
	if (m->have_digest)
		return m->digest;
	circ_sha256_init(&s);
	if (m->st) {
		size_t len;
		const void *b = circ_st_bytes(m->st, &len);
		circ_sha256_update(&s, m->config_bytes, m->config_len);
		circ_sha256_update(&s, b, len);
	} else {
		char *t = config_text(&m->cfg), **names = NULL;
		circ_st_tensor *ts = NULL;
		void *conv = NULL;
		const char *meta[] = {"format", "pt"};
		int n;
		circ_sha256_update(&s, t, strlen(t));
		free(t);
		n = save_tensors(&m->cfg, &m->w, "F32", &ts, &names, &conv, e);
		if (n < 0 || circ_st_serialize(n, ts, 1, meta, sha_sink, &s, e) < 0) {
			free(ts);
			if (n > 0)
				free_names(names, n);
			return NULL;
		}
		free(ts);
		free(conv);
		free_names(names, n);
	}
	circ_sha256_final_hex(&s, m->digest);
	m->have_digest = 1;
	return m->digest;
}

/* ================================================================ numbering */

int circ_model_n_up(const circ_model *m)
{
	return 1 + m->cfg.n_layer * (m->cfg.n_head + 1);
}

int circ_model_n_recv(const circ_model *m)
{
	return m->cfg.n_layer * (3 * m->cfg.n_head + 1) + 1;
}

int circ_node_input(const circ_model *m)
{
	(void)m;
	return 0;
}

int circ_node_head(const circ_model *m, int layer, int head)
{
	return 1 + layer * (m->cfg.n_head + 1) + head;
}

int circ_node_mlp(const circ_model *m, int layer)
{
	return 1 + layer * (m->cfg.n_head + 1) + m->cfg.n_head;
}

int circ_recv_qkv(const circ_model *m, int layer, int head, int c)
{
	return layer * (3 * m->cfg.n_head + 1) + 3 * head + c;
}

int circ_recv_mlp(const circ_model *m, int layer)
{
	return layer * (3 * m->cfg.n_head + 1) + 3 * m->cfg.n_head;
}

int circ_recv_logits(const circ_model *m)
{
	return m->cfg.n_layer * (3 * m->cfg.n_head + 1);
}

int circ_recv_stage(const circ_model *m, int recv)
{
	int per = 3 * m->cfg.n_head + 1, l = recv / per;
	if (l >= m->cfg.n_layer)
		return 2 * m->cfg.n_layer;
	return 2 * l + (recv % per == 3 * m->cfg.n_head);
}

int circ_node_stage(const circ_model *m, int node)
{
	int l, h;
	if (node == 0)
		return -1;
	l = (node - 1) / (m->cfg.n_head + 1);
	h = (node - 1) % (m->cfg.n_head + 1);
	return 2 * l + (h == m->cfg.n_head);
}

/* ================================================================ runs */

struct circ_run {
	const circ_model *m;
	circ_run_opts o;
	int L, H, C, D, F, V, U, R;
	int max_b, max_t;
	size_t rows; /* max_b * max_t */
	circ_pool *pool;
	int threads;

	/* state of the last forward */
	int B, T;
	int valid;  /* stages 0..valid-1 hold this batch's activations; -1: nothing */
	int in_fwd; /* the stage the hook is running for, or -1 */
	int n_read;
	int read_none;
	int have_bwd;
	int used_embed; /* the last full forward took input_embed, not a token lookup */
	int bwd_stage;	/* stage reported to the backward hook (keep_recv_grads 0) */

	/* the arena */
	void *arena;
	size_t arena_bytes;
	int32_t *tokens;	    /* (B, T) */
	float **node;		    /* (U) each (B, T, C), NULL for heads without keep_nodes */
	float *resid;		    /* (2L+1, B, T, C) */
	float *mean, *rstd;	    /* (2L+1, B*T) */
	float *qkv;		    /* (L, B, T, 3C) */
	float *att;		    /* (L, B, H, T, T) */
	float *z;		    /* (L, B, T, C) */
	float *fc;		    /* (L, B, T, F) */
	float *s_ln;		    /* scratch (B*T, C) */
	float *s_ln2;		    /* scratch (B*T, C) */
	float *s_gelu;		    /* scratch (B*T, F) */
	float *lnf;		    /* (N, C) ln_f output at the read rows */
	float *lnf_mean, *lnf_rstd; /* (N) */
	float *logits;		    /* (N, V) */
	circ_read *reads;	    /* (N) */
	/* backward */
	float *dresid; /* (2L+1, B, T, C) */
	float *drecv;  /* (R, B, T, C) or (3H, B, T, C) */
	float *d_qkv;  /* (B, T, 3C) */
	float *d_z;    /* (B, T, C) */
	float *d_fc;   /* (B, T, F) */
	float *d_ln;   /* (B*T, C) */

	/* receiver deltas */
	float **delta;		 /* (R) each (rows, C), allocated when stored */
	unsigned char *delta_on; /* (R) 0 none, 1 stored in delta, 2 a sum (below) */
	/* deltas given as sums (circ_run_delta_sum): base + sign * sum of the
	 * terms, formed where the receiver's input is read */
	float **dstat;		  /* (R) LayerNorm mean and rstd (2, rows) of each input */
	const float **dsum_base;  /* (R) */
	const float **dsum_terms; /* (R, U) */
	int *dsum_k;		  /* (R) */
	signed char *dsum_sign;	  /* (R) */
	uint8_t *dsum_abs;	  /* (R) 1: the sum is the input itself, not a delta */

	/* per-thread scratch of the row-blocked q/k/v kernels (outside the
	 * arena: sized by the thread count, which can change) */
	float *s_blk; /* (blk_slots, QKV_BLOCK, C) */
	int blk_slots;
};

void circ_run_opts_default(circ_run_opts *o)
{
	memset(o, 0, sizeof *o);
	o->threads = 1;
	o->keep_nodes = 1;
	o->keep_recv_grads = 1;
}

void circ_fwd_init(circ_fwd *f)
{
	memset(f, 0, sizeof *f);
	f->read = CIRC_READ_LAST;
}

/* Size table: each buffer rounded up to 64 bytes. With base == NULL only
 * counts; else points the fields into base. */
static size_t run_layout(circ_run *r, char *base)
{
	size_t off = 0, rows = r->rows, C = (size_t)r->C, L = (size_t)r->L, S = 2 * L + 1;
#define CARVE(field, type, count)                                                                  \
	do {                                                                                       \
		size_t bytes_ = ((size_t)(count) * sizeof(type) + 63) & ~(size_t)63;               \
		if (base)                                                                          \
			r->field = (type *)(void *)(base + off);                                   \
		off += bytes_;                                                                     \
	} while (0)
	CARVE(tokens, int32_t, rows);
	CARVE(resid, float, S *rows *C);
	CARVE(mean, float, S *rows);
	CARVE(rstd, float, S *rows);
	CARVE(qkv, float, L *rows * 3 * C);
	CARVE(att, float, L *(size_t)r->max_b * r->H * r->max_t * r->max_t);
	CARVE(z, float, L *rows *C);
	CARVE(fc, float, L *rows * r->F);
	CARVE(s_ln, float, rows *C);
	CARVE(s_ln2, float, rows *C);
	CARVE(s_gelu, float, rows * r->F);
	CARVE(lnf, float, rows *C);
	CARVE(lnf_mean, float, rows);
	CARVE(lnf_rstd, float, rows);
	CARVE(logits, float, rows * r->V);
	CARVE(reads, circ_read, rows);
	for (int u = 0; u < r->U; u++) {
		int is_head = u > 0 && (u - 1) % (r->H + 1) != r->H;
		if (is_head && !r->o.keep_nodes) {
			if (base)
				r->node[u] = NULL;
			continue;
		}
		CARVE(node[u], float, rows *C);
	}
	if (r->o.backward) {
		CARVE(dresid, float, S *rows *C);
		CARVE(drecv, float, (size_t)(r->o.keep_recv_grads ? r->R : 3 * r->H) * rows * C);
		CARVE(d_qkv, float, rows * 3 * C);
		CARVE(d_z, float, rows *C);
		CARVE(d_fc, float, rows * r->F);
		CARVE(d_ln, float, rows *C);
	}
#undef CARVE
	return off;
}

circ_run *circ_run_new(const circ_model *m, int max_b, int max_t, const circ_run_opts *o,
		       circ_error *e)
{
	circ_run *r;
	circ_run_opts defo;
	const circ_config *c = &m->cfg;
	if (!o) {
		circ_run_opts_default(&defo);
		o = &defo;
	}
	if (max_b < 1 || max_t < 1) {
		circ_errorf(e, "batch size %d and length %d must be positive", max_b, max_t);
		return NULL;
	}
	if (max_t > c->n_ctx) {
		circ_errorf(e, "length %d is longer than the model's context (%d)", max_t,
			    c->n_ctx);
		return NULL;
	}
	if (max_t > CIRC_ATTN_MAX_T) {
		circ_errorf(e, "length %d is over circ's limit (%d)", max_t, CIRC_ATTN_MAX_T);
		return NULL;
	}
	if ((size_t)max_b * (size_t)max_t > (size_t)1 << 26) {
		circ_errorf(e, "batch %d x %d is too large", max_b, max_t);
		return NULL;
	}
	r = circ_xcalloc(1, sizeof *r);
	r->m = m;
	r->o = *o;
	r->L = c->n_layer;
	r->H = c->n_head;
	r->C = c->n_embd;
	r->D = c->n_embd / c->n_head;
	r->F = c->n_inner;
	r->V = c->vocab_size;
	r->U = circ_model_n_up(m);
	r->R = circ_model_n_recv(m);
	r->max_b = max_b;
	r->max_t = max_t;
	r->rows = (size_t)max_b * max_t;
	r->threads = o->threads < 1 ? 1 : o->threads;
	r->node = circ_xcalloc((size_t)r->U, sizeof *r->node);
	r->delta = circ_xcalloc((size_t)r->R, sizeof *r->delta);
	r->delta_on = circ_xcalloc((size_t)r->R, 1);
	r->dstat = circ_xcalloc((size_t)r->R, sizeof *r->dstat);
	r->dsum_base = circ_xcalloc((size_t)r->R, sizeof *r->dsum_base);
	r->dsum_terms = circ_xcalloc((size_t)r->R * (size_t)r->U, sizeof *r->dsum_terms);
	r->dsum_k = circ_xcalloc((size_t)r->R, sizeof *r->dsum_k);
	r->dsum_sign = circ_xcalloc((size_t)r->R, sizeof *r->dsum_sign);
	r->dsum_abs = circ_xcalloc((size_t)r->R, sizeof *r->dsum_abs);
	r->arena_bytes = run_layout(r, NULL);
	r->arena =
	    /* NORESERVE: a run made for long contexts reserves far more than a
	     * short batch touches; untouched pages cost nothing, and the kernel's
	     * overcommit heuristic must not refuse the mapping for its size. */
	    mmap(NULL, r->arena_bytes, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r->arena == MAP_FAILED) {
		circ_errorf(e, "cannot allocate %zu bytes of activations: %s", r->arena_bytes,
			    strerror(errno));
		r->arena = NULL;
		circ_run_free(r);
		return NULL;
	}
	circ_advise_huge(r->arena, r->arena_bytes);
	run_layout(r, r->arena);
	r->pool = circ_pool_new(r->threads);
	r->valid = -1;
	r->in_fwd = -1;
	return r;
}

void circ_run_free(circ_run *r)
{
	if (!r)
		return;
	if (r->arena)
		munmap(r->arena, r->arena_bytes);
	for (int i = 0; i < r->R; i++) {
		free(r->delta[i]);
		free(r->dstat[i]);
	}
	free(r->delta);
	free(r->dstat);
	free(r->delta_on);
	free(r->dsum_base);
	free(r->dsum_terms);
	free(r->dsum_k);
	free(r->dsum_sign);
	free(r->dsum_abs);
	free(r->s_blk);
	free(r->node);
	circ_pool_free(r->pool);
	free(r);
}

size_t circ_run_arena_bytes(const circ_run *r)
{
	return r->arena_bytes;
}

const circ_model *circ_run_model(const circ_run *r)
{
	return r->m;
}

struct circ_pool *circ_run_pool(circ_run *r)
{
	return r->pool;
}

int circ_run_b(const circ_run *r)
{
	return r->valid >= 0 ? r->B : 0;
}

int circ_run_t(const circ_run *r)
{
	return r->valid >= 0 ? r->T : 0;
}

void circ_run_set_threads(circ_run *r, int threads)
{
	threads = threads < 1 ? 1 : threads;
	if (threads != r->threads) {
		circ_pool_free(r->pool);
		r->pool = circ_pool_new(threads);
		r->threads = threads;
	}
}

/* ---- accessors ---- */

static size_t bt(const circ_run *r)
{
	return (size_t)r->B * r->T;
}

static float *resid_at(const circ_run *r, int s)
{
	return r->resid + (size_t)s * r->rows * r->C;
}

const float *circ_run_node_out(const circ_run *r, int node)
{
	if (node < 0 || node >= r->U)
		return NULL;
	return r->node[node];
}

const float *circ_run_resid(const circ_run *r, int stage)
{
	if (stage < 0 || stage > 2 * r->L)
		return NULL;
	return resid_at(r, stage);
}

const float *circ_run_attn(const circ_run *r, int layer)
{
	if (layer < 0 || layer >= r->L)
		return NULL;
	return r->att + (size_t)layer * r->max_b * r->H * r->max_t * r->max_t;
}

const float *circ_run_logits(const circ_run *r, int *n_rows)
{
	if (n_rows)
		*n_rows = r->read_none ? 0 : r->n_read;
	return r->logits;
}

const circ_read *circ_run_reads(const circ_run *r, int *n_rows)
{
	if (n_rows)
		*n_rows = r->n_read;
	return r->reads;
}

/* Receiver recv's buffers: its LayerNorm statistics, and with store its
 * delta (a delta given as a sum of rows needs none). */
static void delta_buffers(circ_run *r, int recv, int store)
{
	if (!r->dstat[recv])
		r->dstat[recv] = circ_xcalloc(2 * r->rows, sizeof(float));
	if (store && !r->delta[recv])
		r->delta[recv] = circ_xalloc_aligned(r->rows * (size_t)r->C * sizeof(float));
}

static void store_sum(circ_run *r, int recv);

static float *run_delta(circ_run *r, int recv, int zero)
{
	if (recv < 0 || recv >= r->R || r->in_fwd < 0 || circ_recv_stage(r->m, recv) < r->in_fwd)
		return NULL;
	delta_buffers(r, recv, 1);
	if (r->delta_on[recv] == 2)
		store_sum(r, recv);
	if (!r->delta_on[recv]) {
		if (zero)
			memset(r->delta[recv], 0, bt(r) * r->C * sizeof(float));
		r->delta_on[recv] = 1;
	}
	return r->delta[recv];
}

float *circ_run_delta(circ_run *r, int recv)
{
	return run_delta(r, recv, 1);
}

float *circ_run_delta_raw(circ_run *r, int recv)
{
	return run_delta(r, recv, 0);
}

const float *circ_run_get_delta(const circ_run *r, int recv)
{
	if (recv < 0 || recv >= r->R || r->delta_on[recv] != 1)
		return NULL;
	return r->delta[recv];
}

/* Rows [row0, row0 + nrows) of receiver recv's input (x = the residual:
 * x + the delta sum, or the input sum itself) into dst, whose row 0 is row
 * row0; x = NULL: the delta alone (an input sum less the residual). The
 * additions run in one fixed order: x, base, then the terms one by one
 * (an input sum: base, the terms, then minus the residual). */
static void form_sum(const circ_run *r, int recv, const float *x, float *dst, size_t row0,
		     size_t nrows)
{
	size_t o = row0 * (size_t)r->C, len = nrows * (size_t)r->C;
	const float *const *terms = r->dsum_terms + (size_t)recv * (size_t)r->U;
	const float *base = r->dsum_base[recv] ? r->dsum_base[recv] + o : NULL, *a, *res = NULL;
	const float *src[8];
	int k = r->dsum_k[recv], j = 0;
	if (r->dsum_abs[recv]) {
		a = base;
		if (!x)
			res = resid_at(r, circ_recv_stage(r->m, recv)) + o;
		base = NULL;
	} else if (x) {
		a = x + o;
	} else {
		a = base;
		base = NULL;
	}
	if (!a) {
		memset(dst, 0, len * sizeof *dst);
		a = dst;
	}
	do {
		int g = k - j < 8 ? k - j : 8;
		for (int i = 0; i < g; i++)
			src[i] = terms[j + i] + o;
		(r->dsum_sign[recv] < 0 ? circ_vsum_neg : circ_vsum)(dst, a, base, src, g, len);
		a = dst;
		base = NULL;
		j += g;
	} while (j < k);
	if (res)
		circ_vsum_neg(dst, dst, NULL, &res, 1, len);
}

#define SUM_ROWS 64 /* rows per task of store_sum */

typedef struct rowsum_task {
	const circ_run *r;
	int recv;
	const float *x;
	float *dst;
	size_t n; /* rows */
} rowsum_task;

static void rowsum_part(void *v, size_t b, size_t e)
{
	const rowsum_task *t = v;
	size_t C = (size_t)t->r->C;
	for (size_t k = b; k < e; k++) {
		size_t i0 = k * SUM_ROWS, m = t->n - i0 < SUM_ROWS ? t->n - i0 : SUM_ROWS;
		form_sum(t->r, t->recv, t->x, t->dst + i0 * C, i0, m);
	}
}

/* dst (n rows) = x + receiver recv's delta sum, over the pool. */
static void p_form_sum(const circ_run *r, int recv, const float *x, float *dst)
{
	rowsum_task t = {r, recv, x, dst, bt(r)};
	circ_pool_for(r->pool, (t.n + SUM_ROWS - 1) / SUM_ROWS, rowsum_part, &t);
}

/* A delta sum becomes a stored delta. */
static void store_sum(circ_run *r, int recv)
{
	delta_buffers(r, recv, 1);
	p_form_sum(r, recv, NULL, r->delta[recv]);
	r->delta_on[recv] = 1;
}

static int set_sum(circ_run *r, int recv, const float *base, int sign, int k,
		   const float *const *terms, int abs)
{
	if (recv < 0 || recv >= r->R || r->in_fwd < 0 || circ_recv_stage(r->m, recv) < r->in_fwd ||
	    k < 0 || k > r->U || (sign != 1 && sign != -1) || (abs && !base))
		return -1;
	delta_buffers(r, recv, 0);
	if (abs)
		r->delta_on[recv] = 0; /* the input is given whole */
	if (r->delta_on[recv] == 2)
		store_sum(r, recv);
	r->dsum_base[recv] = base;
	r->dsum_k[recv] = k;
	r->dsum_sign[recv] = (signed char)sign;
	r->dsum_abs[recv] = (uint8_t)abs;
	memcpy(r->dsum_terms + (size_t)recv * (size_t)r->U, terms, (size_t)k * sizeof *terms);
	if (r->delta_on[recv] == 1) {
		/* onto a delta already there: add the sum into it */
		p_form_sum(r, recv, r->delta[recv], r->delta[recv]);
		return 0;
	}
	r->delta_on[recv] = 2;
	/* a run that may go backward, or that checks the fast kernels, keeps
	 * every delta */
	if (r->o.backward || r->o.reference)
		store_sum(r, recv);
	return 0;
}

int circ_run_delta_sum(circ_run *r, int recv, const float *base, int sign, int k,
		       const float *const *terms)
{
	return set_sum(r, recv, base, sign, k, terms, 0);
}

int circ_run_input_sum(circ_run *r, int recv, const float *base, int sign, int k,
		       const float *const *terms)
{
	return set_sum(r, recv, base, sign, k, terms, 1);
}

/* LayerNorm statistics of a receiver's own input (after its delta). */
static float *delta_mean(const circ_run *r, int recv)
{
	return r->dstat[recv];
}

static float *delta_rstd(const circ_run *r, int recv)
{
	return r->dstat[recv] + r->rows;
}

/* ---- parallel kernel wrappers ---- */

typedef struct ln_task {
	const circ_run *r;
	float *out, *mean, *rstd;
	const float *inp, *w, *b;
	int C;
	float eps;
} ln_task;

static void ln_fwd_part(void *v, size_t b, size_t e)
{
	ln_task *t = v;
	size_t C = (size_t)t->C;
	(t->r->o.reference ? circ_layernorm_fwd_ref : circ_layernorm_fwd)(
	    t->out + b * C, t->C, t->mean + b, t->rstd + b, t->inp + b * C, t->C, t->w, t->b,
	    (int)(e - b), t->C, t->eps);
}

static void p_layernorm(const circ_run *r, float *out, float *mean, float *rstd, const float *inp,
			const float *w, const float *b, size_t n)
{
	ln_task t = {r, out, mean, rstd, inp, w, b, r->C, (float)r->m->cfg.layer_norm_epsilon};
	circ_pool_for(r->pool, n, ln_fwd_part, &t);
}

typedef struct lnb_task {
	const circ_run *r;
	float *dinp, *dacc;
	const float *dout, *inp, *add, *mean, *rstd, *w;
	int C, set;
} lnb_task;

static void ln_bwd_part(void *v, size_t b, size_t e)
{
	lnb_task *t = v;
	size_t C = (size_t)t->C;
	(t->r->o.reference ? circ_layernorm_bwd_add_ref : circ_layernorm_bwd_add)(
	    t->dinp + b * C, t->dacc ? t->dacc + b * C : NULL, t->dout + b * C, t->inp + b * C,
	    t->add ? t->add + b * C : NULL, t->mean + b, t->rstd + b, t->w, (int)(e - b), t->C,
	    t->set);
}

/* LayerNorm input gradient over the pool; the forward's input was inp + add
 * (add NULL: inp alone), summed on the fly. */
static void p_layernorm_bwd(const circ_run *r, float *dinp, float *dacc, const float *dout,
			    const float *inp, const float *add, const float *mean,
			    const float *rstd, const float *w, size_t n, int set)
{
	lnb_task t = {r, dinp, dacc, dout, inp, add, mean, rstd, w, r->C, set};
	circ_pool_for(r->pool, n, ln_bwd_part, &t);
}

typedef struct ew_task {
	const circ_run *r;
	float *out;
	const float *a, *b;
	int exact;
} ew_task;

#define EW_CHUNK 4096

static void gelu_part(void *v, size_t b, size_t e)
{
	ew_task *t = v;
	size_t lo = b * EW_CHUNK, n = (e - b) * EW_CHUNK;
	(t->r->o.reference ? circ_gelu_fwd_ref : circ_gelu_fwd)(t->out + lo, t->a + lo, n,
								t->exact);
}

static void dgelu_part(void *v, size_t b, size_t e)
{
	ew_task *t = v;
	size_t lo = b * EW_CHUNK, n = (e - b) * EW_CHUNK;
	if (t->r->o.reference) {
		float *tmp = circ_xcalloc(n, sizeof *tmp);
		circ_gelu_bwd_ref(tmp, t->a + lo, t->out + lo, n, t->exact);
		memcpy(t->out + lo, tmp, n * sizeof *tmp);
		free(tmp);
	} else {
		circ_gelu_bwd_inplace(t->out + lo, t->a + lo, n, t->exact);
	}
}

/* n must be a multiple of EW_CHUNK for the pool split; the remainder runs here. */
static void p_elementwise(const circ_run *r, void (*part)(void *, size_t, size_t), ew_task *t,
			  size_t n)
{
	size_t chunks = n / EW_CHUNK, rem = n % EW_CHUNK;
	circ_pool_for(r->pool, chunks, part, t);
	if (rem) {
		ew_task t2 = *t;
		t2.out += chunks * EW_CHUNK;
		t2.a += chunks * EW_CHUNK;
		/* one partial chunk: call the kernels directly */
		if (part == gelu_part)
			(r->o.reference ? circ_gelu_fwd_ref : circ_gelu_fwd)(t2.out, t2.a, rem,
									     t->exact);
		else if (r->o.reference) {
			float *tmp = circ_xcalloc(rem, sizeof *tmp);
			circ_gelu_bwd_ref(tmp, t2.a, t2.out, rem, t->exact);
			memcpy(t2.out, tmp, rem * sizeof *tmp);
			free(tmp);
		} else {
			circ_gelu_bwd_inplace(t2.out, t2.a, rem, t->exact);
		}
	}
}

typedef struct attn_task {
	const circ_run *r;
	float *z, *att, *dqkv;
	const float *qkv, *dz, *catt;
} attn_task;

static void attn_fwd_part(void *v, size_t b, size_t e)
{
	attn_task *t = v;
	const circ_run *r = t->r;
	size_t T = (size_t)r->T, C = (size_t)r->C;
	(r->o.reference ? circ_attn_fwd_ref
			: circ_attn_fwd)(t->z + b * T * C, t->att + b * r->H * T * T,
					 t->qkv + b * T * 3 * C, (int)(e - b), r->T, r->C, r->H);
}

static void attn_bwd_part(void *v, size_t b, size_t e)
{
	attn_task *t = v;
	const circ_run *r = t->r;
	size_t T = (size_t)r->T, C = (size_t)r->C;
	(r->o.reference ? circ_attn_bwd_ref : circ_attn_bwd)(
	    t->dqkv + b * T * 3 * C, t->dz + b * T * C, t->qkv + b * T * 3 * C,
	    t->catt + b * r->H * T * T, (int)(e - b), r->T, r->C, r->H);
}

/* out (n, C) = a + sum of the k sources + bias, rows split over the pool. */
typedef struct sum_task {
	float *out;
	const float *a;
	const float *const *src;
	int k;
	const float *bias;
	int C;
} sum_task;

static void sum_part(void *v, size_t b, size_t e)
{
	sum_task *t = v;
	size_t C = (size_t)t->C;
	const float *src[MAX_HEAD];
	for (size_t i = b; i < e; i++) {
		for (int j = 0; j < t->k; j++)
			src[j] = t->src[j] + i * C;
		circ_vsum(t->out + i * C, t->a + i * C, t->bias, src, t->k, C);
	}
}

static void p_sum(const circ_run *r, float *out, const float *a, const float *const *src, int k,
		  const float *bias, size_t n)
{
	sum_task t = {out, a, src, k, bias, r->C};
	circ_pool_for(r->pool, n, sum_part, &t);
}

/* GEMMs are split over the run's pool, OpenBLAS running one thread in
 * each part: one set of threads for the whole forward, which sleep when
 * idle (OpenBLAS's own threads spin between calls, taking the core from
 * the pool's work on a machine with few cores). C is cut along its longer
 * side into one part per thread, in multiples of 16 columns or rows. */
typedef struct gemm_task {
	int ta, tb, m, n, k, lda, ldb, ldc, P, by_cols;
	const float *a, *b;
	float beta;
	float *c;
} gemm_task;

#define GEMM_SPLIT_MIN (1 << 20) /* m * n * k below which one thread does it */

static void gemm_part(void *v, size_t p0, size_t p1)
{
	const gemm_task *t = v;
	int len = t->by_cols ? t->n : t->m;
	for (size_t q = p0; q < p1; q++) {
		int i0 = (int)(((size_t)len * q / (size_t)t->P) & ~(size_t)15);
		int i1 = q + 1 == (size_t)t->P
			     ? len
			     : (int)(((size_t)len * (q + 1) / (size_t)t->P) & ~(size_t)15);
		if (i1 <= i0)
			continue;
		if (t->by_cols)
			circ_gemm(t->ta, t->tb, t->m, i1 - i0, t->k, 1.0f, t->a, t->lda,
				  t->tb ? t->b + (size_t)i0 * t->ldb : t->b + i0, t->ldb, t->beta,
				  t->c + i0, t->ldc);
		else
			circ_gemm(t->ta, t->tb, i1 - i0, t->n, t->k, 1.0f,
				  t->ta ? t->a + i0 : t->a + (size_t)i0 * t->lda, t->lda, t->b,
				  t->ldb, t->beta, t->c + (size_t)i0 * t->ldc, t->ldc);
	}
}

static void gemm(const circ_run *r, int ta, int tb, int m, int n, int k, const float *a, int lda,
		 const float *b, int ldb, float beta, float *c, int ldc)
{
	int P = circ_pool_threads(r->pool);
	if (r->o.reference) {
		circ_gemm_ref(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
		return;
	}
	if (P == 1 || circ_pool_inside() || (double)m * n * k < GEMM_SPLIT_MIN ||
	    (m < 32 && n < 32)) {
		circ_gemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
		return;
	}
	gemm_task t = {ta, tb, m, n, k, lda, ldb, ldc, P, n >= m, a, b, beta, c};
	circ_pool_for(r->pool, (size_t)P, gemm_part, &t);
}

/* c (m, n) += a (m, k) b (k, n) on the calling thread (inside a pool
 * task): circ's own kernel where it has one for n columns. */
static void gemm_acc(const circ_run *r, int m, int n, int k, const float *a, int lda,
		     const float *b, int ldb, float *c, int ldc)
{
	if (r->o.reference)
		circ_gemm_ref(0, 0, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c, ldc);
	else
		circ_gemm_acc(m, n, k, a, lda, b, ldb, c, ldc);
}

/* Each row of c (m, n) = bias. */
static void bias_rows(float *c, const float *bias, size_t m, size_t n, size_t ldc)
{
	for (size_t i = 0; i < m; i++)
		memcpy(c + i * ldc, bias, n * sizeof *c);
}

/* ---- forward ---- */

static int call_hook(circ_run *r, const circ_fwd *f, int s, circ_error *e)
{
	int layer = s / 2;
	circ_stage_kind k = s == 2 * r->L ? CIRC_STAGE_FINAL
			    : (s & 1)	  ? CIRC_STAGE_MLP
					  : CIRC_STAGE_ATTN;
	if (!f->hook)
		return 0;
	r->in_fwd = s;
	if (f->hook(f->hook_ctx, r, layer, k, e) < 0) {
		r->in_fwd = -1;
		return -1;
	}
	r->in_fwd = -1;
	return 0;
}

static void embed(circ_run *r, const circ_fwd *f)
{
	const circ_weights *w = &r->m->w;
	size_t C = (size_t)r->C;
	float *in = r->node[0], *x = resid_at(r, 0);
	for (int b = 0; b < r->B; b++)
		for (int t = 0; t < r->T; t++) {
			size_t row = (size_t)b * r->T + t;
			const float *pe = w->wpe + (size_t)t * C;
			if (f->input_embed)
				memcpy(in + row * C, f->input_embed + row * C, C * sizeof(float));
			else
				memcpy(in + row * C, w->wte + (size_t)r->tokens[row] * C,
				       C * sizeof(float));
			if (r->o.acdc_convention && !f->input_embed)
				for (size_t c = 0; c < C; c++)
					in[row * C + c] += pe[c];
			for (size_t c = 0; c < C; c++)
				x[row * C + c] =
				    in[row * C + c] + (r->o.acdc_convention ? 0.0f : pe[c]);
		}
}

/* Input of a receiver into dst (residual + delta), or the residual itself. */
static const float *recv_input(const circ_run *r, int recv, const float *x, float *dst)
{
	size_t n = bt(r) * r->C;
	const float *d = r->delta[recv];
	if (!r->delta_on[recv])
		return x;
	if (r->delta_on[recv] == 2) {
		p_form_sum(r, recv, x, dst);
		return dst;
	}
	for (size_t i = 0; i < n; i++)
		dst[i] = x[i] + d[i];
	return dst;
}

/* ---- q/k/v receivers with deltas, in row blocks over the pool ----
 * When some of a layer's q/k/v receivers carry a delta, each receiver has
 * its own ln_1 input and so its own (n, C) x (C, D) GEMM. Those GEMMs are
 * too narrow to split well by columns (and OpenBLAS runs them a third
 * slower than one wide GEMM: circ_gemm_acc has its own kernel for them,
 * which the unpatched layer uses too, so patched and unpatched forwards
 * compute their columns alike). The rows are cut into blocks of
 * at most QKV_BLOCK and each pool thread takes a contiguous share of the
 * blocks, its GEMMs on that thread alone: per block, the shared
 * ln_1 and the GEMMs over the runs of unpatched columns, then each patched
 * receiver's LayerNorm of its input (residual + delta, or an input sum),
 * formed row by row, and its D columns. Every column is computed once,
 * each output row by one thread, in an order that does not depend on the
 * thread count. */

#define QKV_BLOCK 64

typedef struct qkv_task {
	circ_run *r;
	int l, npatched;
	size_t n, nblk, rb; /* n rows in blocks of rb (the last may be shorter) */
	const float *x;	    /* (n, C) the layer's residual */
	float *qkv;	    /* (n, 3C) output */
} qkv_task;

/* Scratch of thread slot k: (QKV_BLOCK, C). */
static float *blk_scratch(circ_run *r, int k)
{
	return r->s_blk + (size_t)k * QKV_BLOCK * r->C;
}

/* Splits n rows into blocks (at least one per thread when there are rows
 * enough) and makes sure every thread has its scratch. */
static void qkv_task_init(circ_run *r, qkv_task *t, int l, size_t n)
{
	int P = circ_pool_threads(r->pool);
	/* the same number of blocks for every thread, each at most QKV_BLOCK */
	size_t per = (n + (size_t)P * QKV_BLOCK - 1) / ((size_t)P * QKV_BLOCK);
	size_t rb = (n + (size_t)P * per - 1) / ((size_t)P * per);
	if (r->blk_slots < P) {
		free(r->s_blk);
		r->s_blk = circ_xalloc_aligned((size_t)P * QKV_BLOCK * r->C * sizeof(float));
		r->blk_slots = P;
	}
	t->r = r;
	t->l = l;
	t->n = n;
	t->rb = rb < 1 ? 1 : rb > QKV_BLOCK ? QKV_BLOCK : rb;
	t->nblk = (n + t->rb - 1) / t->rb;
}

/* Column block k (of 3H, D wide) is receiver (h = k % H, c = k / H). */
static int qkv_recv_of_col(const circ_run *r, int l, int k)
{
	return circ_recv_qkv(r->m, l, k % r->H, k / r->H);
}

static void qkv_fwd_block(qkv_task *t, float *buf, size_t i0, size_t m)
{
	circ_run *r = t->r;
	const circ_layer_weights *lw = &r->m->w.layers[t->l];
	size_t C = (size_t)r->C, C3 = 3 * C, D = (size_t)r->D;
	int K = 3 * r->H;
	float eps = (float)r->m->cfg.layer_norm_epsilon;
	const float *x = t->x + i0 * C;
	float *q = t->qkv + i0 * C3;
	bias_rows(q, lw->attn_b, m, C3, C3);
	if (t->npatched < K) {
		size_t so = (size_t)2 * t->l * r->rows + i0;
		(r->o.reference ? circ_layernorm_fwd_ref : circ_layernorm_fwd)(
		    buf, r->C, r->mean + so, r->rstd + so, x, r->C, lw->ln1_w, lw->ln1_b, (int)m,
		    r->C, eps);
		for (int k = 0; k < K;) {
			int k1 = k;
			while (k1 < K && !r->delta_on[qkv_recv_of_col(r, t->l, k1)])
				k1++;
			if (k1 > k)
				gemm_acc(r, (int)m, (k1 - k) * r->D, r->C, buf, r->C,
					 lw->attn_w + (size_t)k * D, (int)C3, q + (size_t)k * D,
					 (int)C3);
			k = k1 + 1;
		}
	}
	for (int k = 0; k < K; k++) {
		int recv = qkv_recv_of_col(r, t->l, k);
		if (!r->delta_on[recv])
			continue;
		if (r->delta_on[recv] == 2) {
			/* the input formed row by row (in L1), normalised in place */
			int abs = r->dsum_abs[recv];
			circ_layernorm_fwd_sum(
			    buf, r->C, delta_mean(r, recv) + i0, delta_rstd(r, recv) + i0,
			    abs ? r->dsum_base[recv] : t->x, abs ? NULL : r->dsum_base[recv],
			    r->dsum_terms + (size_t)recv * (size_t)r->U, r->dsum_k[recv],
			    r->dsum_sign[recv] < 0, i0, r->C, lw->ln1_w, lw->ln1_b, (int)m, r->C,
			    eps);
		} else {
			(r->o.reference ? circ_layernorm_fwd_add_ref : circ_layernorm_fwd_add)(
			    buf, r->C, delta_mean(r, recv) + i0, delta_rstd(r, recv) + i0, x,
			    r->delta[recv] + i0 * C, r->C, lw->ln1_w, lw->ln1_b, (int)m, r->C, eps);
		}
		gemm_acc(r, (int)m, r->D, r->C, buf, r->C, lw->attn_w + (size_t)k * D, (int)C3,
			 q + (size_t)k * D, (int)C3);
	}
}

/* Thread slot k of the pool runs qkv_fwd_block over its contiguous share
 * of the blocks. */
static void qkv_slot(void *v, size_t b, size_t e)
{
	qkv_task *t = v;
	int P = circ_pool_threads(t->r->pool);
	for (size_t k = b; k < e; k++) {
		size_t b0 = t->nblk * k / (size_t)P, b1 = t->nblk * (k + 1) / (size_t)P;
		for (size_t j = b0; j < b1; j++) {
			size_t i0 = j * t->rb, m = t->n - i0 < t->rb ? t->n - i0 : t->rb;
			qkv_fwd_block(t, blk_scratch(t->r, (int)k), i0, m);
		}
	}
}

static void attn_stage(circ_run *r, int l)
{
	const circ_layer_weights *lw = &r->m->w.layers[l];
	const float *x = resid_at(r, 2 * l);
	size_t n = bt(r), C = (size_t)r->C, C3 = 3 * C, D = (size_t)r->D;
	float *qkv = r->qkv + (size_t)l * r->rows * C3;
	float *att = r->att + (size_t)l * r->max_b * r->H * r->max_t * r->max_t;
	float *z = r->z + (size_t)l * r->rows * C;
	int r0 = circ_recv_qkv(r->m, l, 0, 0), npatched = 0;
	for (int j = 0; j < 3 * r->H; j++)
		npatched += r->delta_on[r0 + j] != 0;
	if (npatched == 0 && (r->o.reference || !circ_gemm_acc_fast((int)C3))) {
		p_layernorm(r, r->s_ln, r->mean + (size_t)2 * l * r->rows,
			    r->rstd + (size_t)2 * l * r->rows, x, lw->ln1_w, lw->ln1_b, n);
		bias_rows(qkv, lw->attn_b, n, C3, C3);
		gemm(r, 0, 0, (int)n, (int)C3, r->C, r->s_ln, r->C, lw->attn_w, (int)C3, 1.0f, qkv,
		     (int)C3);
	} else {
		qkv_task t;
		qkv_task_init(r, &t, l, n);
		t.npatched = npatched;
		t.x = x;
		t.qkv = qkv;
		circ_pool_for(r->pool, (size_t)circ_pool_threads(r->pool), qkv_slot, &t);
	}
	{
		attn_task t = {r, z, att, NULL, qkv, NULL, NULL};
		circ_pool_for(r->pool, (size_t)r->B, attn_fwd_part, &t);
	}
	if (r->o.keep_nodes) {
		const float *src[MAX_HEAD];
		for (int h = 0; h < r->H; h++) {
			float *out = r->node[circ_node_head(r->m, l, h)];
			gemm(r, 0, 0, (int)n, r->C, r->D, z + (size_t)h * D, r->C,
			     lw->proj_w + (size_t)h * D * C, r->C, 0.0f, out, r->C);
			src[h] = out;
		}
		p_sum(r, resid_at(r, 2 * l + 1), x, src, r->H, lw->proj_b, n);
	} else {
		const float *src[1] = {r->s_ln2};
		gemm(r, 0, 0, (int)n, r->C, r->C, z, r->C, lw->proj_w, r->C, 0.0f, r->s_ln2, r->C);
		p_sum(r, resid_at(r, 2 * l + 1), x, src, 1, lw->proj_b, n);
	}
}

static void mlp_stage(circ_run *r, int l)
{
	const circ_layer_weights *lw = &r->m->w.layers[l];
	const float *x = resid_at(r, 2 * l + 1), *xin;
	size_t n = bt(r), F = (size_t)r->F;
	float *fc = r->fc + (size_t)l * r->rows * F;
	float *out = r->node[circ_node_mlp(r->m, l)];
	int recv = circ_recv_mlp(r->m, l);
	ew_task g = {r, r->s_gelu, fc, NULL, r->m->cfg.act == CIRC_ACT_GELU};
	const float *src[1] = {out};
	xin = recv_input(r, recv, x, r->s_ln);
	p_layernorm(r, r->s_ln, r->mean + (size_t)(2 * l + 1) * r->rows,
		    r->rstd + (size_t)(2 * l + 1) * r->rows, xin, lw->ln2_w, lw->ln2_b, n);
	bias_rows(fc, lw->fc_b, n, F, F);
	gemm(r, 0, 0, (int)n, r->F, r->C, r->s_ln, r->C, lw->fc_w, r->F, 1.0f, fc, r->F);
	p_elementwise(r, gelu_part, &g, n * F);
	bias_rows(out, lw->fcproj_b, n, (size_t)r->C, (size_t)r->C);
	gemm(r, 0, 0, (int)n, r->C, r->F, r->s_gelu, r->F, lw->fcproj_w, r->C, 1.0f, out, r->C);
	p_sum(r, resid_at(r, 2 * l + 2), x, src, 1, NULL, n);
}

static void final_stage(circ_run *r)
{
	const circ_weights *w = &r->m->w;
	const float *x = resid_at(r, 2 * r->L);
	int recv = circ_recv_logits(r->m);
	const float *d = r->delta_on[recv] == 1 ? r->delta[recv] : NULL;
	size_t C = (size_t)r->C, N = (size_t)r->n_read;
	if (r->read_none)
		return;
	for (size_t i = 0; i < N; i++) {
		size_t row = (size_t)r->reads[i].b * r->T + (size_t)r->reads[i].t;
		float *dst = r->s_ln + i * C;
		if (r->delta_on[recv] == 2) {
			form_sum(r, recv, x, dst, row, 1);
			continue;
		}
		memcpy(dst, x + row * C, C * sizeof(float));
		if (d)
			for (size_t c = 0; c < C; c++)
				dst[c] += d[row * C + c];
	}
	p_layernorm(r, r->lnf, r->lnf_mean, r->lnf_rstd, r->s_ln, w->lnf_w, w->lnf_b, N);
	gemm(r, 0, 1, (int)N, r->V, r->C, r->lnf, r->C, w->lm_head, r->C, 0.0f, r->logits, r->V);
}

static int set_reads(circ_run *r, const circ_fwd *f, circ_error *e)
{
	r->read_none = 0;
	switch (f->read) {
	case CIRC_READ_LAST:
		r->n_read = f->B;
		for (int b = 0; b < f->B; b++)
			r->reads[b] = (circ_read){b, f->T - 1};
		break;
	case CIRC_READ_ALL:
		r->n_read = f->B * f->T;
		for (int b = 0; b < f->B; b++)
			for (int t = 0; t < f->T; t++)
				r->reads[b * f->T + t] = (circ_read){b, t};
		break;
	case CIRC_READ_LIST:
		if (f->n_read < 0 || (size_t)f->n_read > r->rows || (f->n_read && !f->reads))
			return circ_errorf(e, "%d read positions (at most %zu)", f->n_read,
					   r->rows);
		for (int i = 0; i < f->n_read; i++) {
			if (f->reads[i].b < 0 || f->reads[i].b >= f->B || f->reads[i].t < 0 ||
			    f->reads[i].t >= f->T)
				return circ_errorf(e,
						   "read position %d (sequence %d, position %d) is "
						   "outside the batch (%d x %d)",
						   i, f->reads[i].b, f->reads[i].t, f->B, f->T);
			r->reads[i] = f->reads[i];
		}
		r->n_read = f->n_read;
		break;
	case CIRC_READ_NONE:
		r->n_read = 0;
		r->read_none = 1;
		break;
	default: return circ_errorf(e, "unknown read mode %d", (int)f->read);
	}
	return 0;
}

int circ_forward(circ_run *r, const circ_fwd *f, circ_error *e)
{
	int s0 = f->start_stage, S = 2 * r->L;
	if (f->B < 1 || f->B > r->max_b)
		return circ_errorf(e, "batch of %d sequences (this run takes 1-%d)", f->B,
				   r->max_b);
	if (f->T < 1 || f->T > r->max_t)
		return circ_errorf(e, "sequences of %d tokens (this run takes 1-%d)", f->T,
				   r->max_t);
	if (s0 < 0 || s0 > S)
		return circ_errorf(e, "start stage %d is out of range (0-%d)", s0, S);
	if (!f->tokens && !f->input_embed && s0 == 0)
		return circ_errorf(e, "no tokens and no input embedding");
	if (s0 > 0) {
		if (r->valid < s0 || r->B != f->B || r->T != f->T)
			return circ_errorf(e,
					   "cannot resume at stage %d: the run holds no matching "
					   "prefix (%d x %d, %d stages)",
					   s0, r->B, r->T, r->valid < 0 ? 0 : r->valid);
		if (f->tokens &&
		    memcmp(f->tokens, r->tokens, (size_t)f->B * f->T * sizeof(int32_t)))
			return circ_errorf(e,
					   "cannot resume at stage %d: the tokens differ from the "
					   "run's",
					   s0);
	} else if (f->tokens) {
		for (int b = 0; b < f->B; b++)
			for (int t = 0; t < f->T; t++) {
				int32_t tok = f->tokens[(size_t)b * f->T + t];
				if (tok < 0 || tok >= r->V)
					return circ_errorf(
					    e,
					    "token %d at sequence %d, position %d is "
					    "outside the vocabulary (%d tokens)",
					    (int)tok, b, t, r->V);
			}
	}
	if (set_reads(r, f, e) < 0)
		return -1;
	circ_blas_threads(1);
	r->have_bwd = 0;
	for (int recv = 0; recv < r->R; recv++)
		if (circ_recv_stage(r->m, recv) >= s0)
			r->delta_on[recv] = 0;
	r->B = f->B;
	r->T = f->T;
	if (s0 == 0) {
		r->valid = -1;
		if (f->tokens)
			memcpy(r->tokens, f->tokens, (size_t)f->B * f->T * sizeof(int32_t));
		else
			memset(r->tokens, 0, (size_t)f->B * f->T * sizeof(int32_t));
		r->used_embed = f->input_embed != NULL;
		embed(r, f);
	}
	r->valid = s0;
	for (int s = s0; s <= S; s++) {
		if (call_hook(r, f, s, e) < 0)
			return -1;
		if (s == S)
			final_stage(r);
		else if (s & 1)
			mlp_stage(r, s / 2);
		else
			attn_stage(r, s / 2);
		r->valid = s + 1;
	}
	return 0;
}

int circ_run_copy_prefix(circ_run *dst, const circ_run *src, int stage, circ_error *e)
{
	size_t n, C;
	if (dst->m != src->m && (dst->L != src->L || dst->H != src->H || dst->C != src->C))
		return circ_errorf(e, "runs of different models");
	if (dst->o.keep_nodes != src->o.keep_nodes ||
	    dst->o.acdc_convention != src->o.acdc_convention)
		return circ_errorf(e, "runs with different options");
	if (stage < 0 || stage > 2 * src->L)
		return circ_errorf(e, "stage %d is out of range (0-%d)", stage, 2 * src->L);
	if (src->valid < stage)
		return circ_errorf(e, "the source run holds only %d stages",
				   src->valid < 0 ? 0 : src->valid);
	if (src->B > dst->max_b || src->T > dst->max_t)
		return circ_errorf(e, "batch %d x %d does not fit the destination run (%d x %d)",
				   src->B, src->T, dst->max_b, dst->max_t);
	dst->B = src->B;
	dst->T = src->T;
	dst->have_bwd = 0;
	dst->used_embed = src->used_embed;
	n = bt(src);
	C = (size_t)src->C;
	memcpy(dst->tokens, src->tokens, n * sizeof(int32_t));
	for (int u = 0; u < src->U; u++)
		if (src->node[u] && circ_node_stage(src->m, u) < stage)
			memcpy(dst->node[u], src->node[u], n * C * sizeof(float));
	for (int s = 0; s <= stage; s++)
		memcpy(resid_at(dst, s), resid_at(src, s), n * C * sizeof(float));
	for (int s = 0; s < stage; s++) {
		size_t so = (size_t)s * src->rows, dso = (size_t)s * dst->rows;
		int l = s / 2;
		memcpy(dst->mean + dso, src->mean + so, n * sizeof(float));
		memcpy(dst->rstd + dso, src->rstd + so, n * sizeof(float));
		if (s & 1) {
			memcpy(dst->fc + (size_t)l * dst->rows * dst->F,
			       src->fc + (size_t)l * src->rows * src->F,
			       n * src->F * sizeof(float));
		} else {
			size_t aa = (size_t)src->B * src->H * src->T * src->T;
			/* att is (B, H, T, T) packed for the current T at the layer's base */
			memcpy(dst->qkv + (size_t)l * dst->rows * 3 * C,
			       src->qkv + (size_t)l * src->rows * 3 * C, n * 3 * C * sizeof(float));
			memcpy(dst->att + (size_t)l * dst->max_b * dst->H * dst->max_t * dst->max_t,
			       src->att + (size_t)l * src->max_b * src->H * src->max_t * src->max_t,
			       aa * sizeof(float));
			memcpy(dst->z + (size_t)l * dst->rows * C,
			       src->z + (size_t)l * src->rows * C, n * C * sizeof(float));
		}
	}
	for (int recv = 0; recv < src->R; recv++) {
		int s = circ_recv_stage(src->m, recv);
		if (s >= stage)
			continue;
		if (src->delta_on[recv] == 2)
			return circ_errorf(
			    e,
			    "receiver %d's delta was a sum of rows not kept after its "
			    "stage: the prefix cannot be copied",
			    recv);
		dst->delta_on[recv] = src->delta_on[recv];
		if (src->delta_on[recv]) {
			delta_buffers(dst, recv, 1);
			memcpy(dst->delta[recv], src->delta[recv], n * C * sizeof(float));
			memcpy(delta_mean(dst, recv), delta_mean(src, recv), n * sizeof(float));
			memcpy(delta_rstd(dst, recv), delta_rstd(src, recv), n * sizeof(float));
		}
	}
	dst->valid = stage;
	return 0;
}

/* ---- backward ---- */

const float *circ_run_resid_grad(const circ_run *r, int stage)
{
	if (!r->o.backward || stage < 0 || stage > 2 * r->L)
		return NULL;
	return r->dresid + (size_t)stage * r->rows * r->C;
}

static float *dresid_at(const circ_run *r, int s)
{
	return r->dresid + (size_t)s * r->rows * r->C;
}

/* Buffer of receiver recv's gradient (keep: its own; else the stage's). */
static float *recv_grad_buf(const circ_run *r, int recv)
{
	int s = circ_recv_stage(r->m, recv);
	if (s == 2 * r->L)
		return dresid_at(r, s);
	if (r->o.keep_recv_grads)
		return r->drecv + (size_t)recv * r->rows * r->C;
	if (s & 1)
		return r->drecv;
	return r->drecv + (size_t)(recv - circ_recv_qkv(r->m, s / 2, 0, 0)) * r->rows * r->C;
}

const float *circ_run_recv_grad(const circ_run *r, int recv)
{
	if (!r->o.backward || recv < 0 || recv >= r->R)
		return NULL;
	if (!r->o.keep_recv_grads && circ_recv_stage(r->m, recv) != r->bwd_stage)
		return NULL;
	return recv_grad_buf(r, recv);
}

const float *circ_run_node_grad(const circ_run *r, int node)
{
	if (!r->o.backward || node < 0 || node >= r->U)
		return NULL;
	return dresid_at(r, circ_node_stage(r->m, node) + 1);
}

/* ---- parameter gradients ----
 * The forward keeps LayerNorm statistics, not outputs: the outputs that the
 * weight gradients need are rebuilt from the statistics, and the MLP's GELU
 * output from its stored pre-activation. Every sum over rows runs in row
 * order on the calling thread (OpenBLAS does the large ones), so gradients
 * are the same bytes for the same thread count. */

/* out (n, C) = (x - mean) * rstd * w + b, row by row. out may be x. */
static void ln_apply(float *out, const float *x, const float *mean, const float *rstd,
		     const float *w, const float *b, size_t n, int C)
{
	for (size_t i = 0; i < n; i++) {
		float m = mean[i], rs = rstd[i];
		for (int c = 0; c < C; c++) {
			size_t k = i * (size_t)C + (size_t)c;
			out[k] = (x[k] - m) * rs * w[c] + b[c];
		}
	}
}

static void bias_grad(const circ_run *r, float *db, const float *d, size_t m, int n, int ld)
{
	(r->o.reference ? circ_bias_bwd_ref : circ_bias_bwd)(db, d, (int)m, n, ld);
}

static void ln_param_grad(const circ_run *r, float *dw, float *db, const float *dout,
			  const float *inp, const float *mean, const float *rstd, size_t n)
{
	(r->o.reference ? circ_layernorm_bwd_params_ref
			: circ_layernorm_bwd_params)(dw, db, dout, inp, mean, rstd, (int)n, r->C);
}

/* dweights must be a circ_weights_alloc layout of the run's config; an
 * untied model needs its own lm_head buffer. */
static int check_dweights(const circ_run *r, const circ_weights *dw, circ_error *e)
{
	const circ_weights *w = &r->m->w;
	if (!dw->wte || !dw->wpe || !dw->layers || !dw->lnf_w || !dw->lnf_b || !dw->lm_head)
		return circ_errorf(e, "parameter gradients: dweights is not a circ_weights_alloc "
				      "layout");
	if (dw->n_params != circ_config_n_params(&r->m->cfg))
		return circ_errorf(e,
				   "parameter gradients: dweights holds %zu floats, the model "
				   "%zu",
				   dw->n_params, circ_config_n_params(&r->m->cfg));
	if (w->lm_head != w->wte && dw->lm_head == dw->wte)
		return circ_errorf(e,
				   "parameter gradients: the model's lm_head is not tied to wte, "
				   "so dweights needs its own lm_head buffer");
	return 0;
}

/* Embedding gradients from the residual gradient at stage 0: the token
 * rows (unless the forward took input_embed) and the positional rows
 * (unless the ACDC convention folded them into a given input_embed). */
static void embed_grad(const circ_run *r, circ_weights *dw)
{
	const float *g = dresid_at(r, 0);
	size_t C = (size_t)r->C;
	int tok = !r->used_embed, pos = !(r->o.acdc_convention && r->used_embed);
	for (int b = 0; b < r->B; b++)
		for (int t = 0; t < r->T; t++) {
			size_t row = (size_t)b * r->T + (size_t)t;
			if (tok)
				circ_vadd(dw->wte + (size_t)r->tokens[row] * C, g + row * C, C);
			if (pos)
				circ_vadd(dw->wpe + (size_t)t * C, g + row * C, C);
		}
}

static int call_bhook(circ_run *r, const circ_bwd *b, int s, circ_error *e)
{
	circ_stage_kind k = s == 2 * r->L ? CIRC_STAGE_FINAL
			    : (s & 1)	  ? CIRC_STAGE_MLP
					  : CIRC_STAGE_ATTN;
	r->bwd_stage = s;
	if (b->hook && b->hook(b->hook_ctx, r, s / 2, k, e) < 0)
		return -1;
	return 0;
}

int circ_backward(circ_run *r, const circ_bwd *b, circ_error *e)
{
	const circ_weights *w = &r->m->w;
	circ_weights *dw = b->dweights;
	size_t n, C = (size_t)r->C, C3 = 3 * C, D = (size_t)r->D, F = (size_t)r->F;
	size_t N = (size_t)r->n_read;
	int L = r->L, want_recv = r->o.keep_recv_grads || b->hook;
	if (!r->o.backward)
		return circ_errorf(e, "the run was made without a backward arena");
	if (r->valid != 2 * L + 1)
		return circ_errorf(e, "no complete forward to differentiate");
	if (r->read_none || !b->dlogits)
		return circ_errorf(e, "the forward read no logits (or no dlogits given)");
	if (dw && check_dweights(r, dw, e) < 0)
		return -1;
	circ_blas_threads(1);
	n = bt(r);
	r->bwd_stage = -1;

	/* ln_f and the unembedding, at the read rows only */
	{
		float *g = dresid_at(r, 2 * L), *tmp = r->d_z, *xr = r->s_ln;
		const float *d = circ_run_get_delta(r, circ_recv_logits(r->m));
		const float *x = resid_at(r, 2 * L);
		memset(g, 0, n * C * sizeof(float));
		gemm(r, 0, 0, (int)N, r->C, r->V, b->dlogits, r->V, w->lm_head, r->C, 0.0f, r->d_ln,
		     r->C);
		for (size_t i = 0; i < N; i++) {
			size_t row = (size_t)r->reads[i].b * r->T + (size_t)r->reads[i].t;
			for (size_t c = 0; c < C; c++)
				xr[i * C + c] = x[row * C + c] + (d ? d[row * C + c] : 0.0f);
		}
		p_layernorm_bwd(r, tmp, NULL, r->d_ln, xr, NULL, r->lnf_mean, r->lnf_rstd, w->lnf_w,
				N, 1);
		if (dw && N) { /* lm_head (V, C) += dlogits^T lnf; ln_f */
			gemm(r, 1, 0, r->V, r->C, (int)N, b->dlogits, r->V, r->lnf, r->C, 1.0f,
			     dw->lm_head, r->C);
			ln_param_grad(r, dw->lnf_w, dw->lnf_b, r->d_ln, xr, r->lnf_mean,
				      r->lnf_rstd, N);
		}
		for (size_t i = 0; i < N; i++) {
			size_t row = (size_t)r->reads[i].b * r->T + (size_t)r->reads[i].t;
			for (size_t c = 0; c < C; c++)
				g[row * C + c] += tmp[i * C + c];
		}
		if (call_bhook(r, b, 2 * L, e) < 0)
			return -1;
	}
	for (int l = L - 1; l >= 0; l--) {
		const circ_layer_weights *lw = &w->layers[l];
		/* MLP */
		{
			int recv = circ_recv_mlp(r->m, l), s = 2 * l + 1;
			const float *g = dresid_at(r, s + 1);
			float *gm = dresid_at(r, s), *rg = recv_grad_buf(r, recv);
			const float *fc = r->fc + (size_t)l * r->rows * F;
			/* the receiver's input (residual + delta) is needed whole only
			 * for the parameter gradients; otherwise it is summed on the fly */
			const float *xs = resid_at(r, s),
				    *add = r->delta_on[recv] ? r->delta[recv] : NULL;
			const float *xin = dw ? recv_input(r, recv, xs, r->s_ln) : xs;
			ew_task dg = {r, r->d_fc, fc, NULL, r->m->cfg.act == CIRC_ACT_GELU};
			gemm(r, 0, 1, (int)n, r->F, r->C, g, r->C, lw->fcproj_w, r->C, 0.0f,
			     r->d_fc, r->F);
			p_elementwise(r, dgelu_part, &dg, n * F);
			gemm(r, 0, 1, (int)n, r->C, r->F, r->d_fc, r->F, lw->fc_w, r->F, 0.0f,
			     r->d_ln, r->C);
			memcpy(gm, g, n * C * sizeof(float));
			p_layernorm_bwd(r, rg, gm, r->d_ln, xin, dw ? NULL : add,
					r->mean + (size_t)s * r->rows,
					r->rstd + (size_t)s * r->rows, lw->ln2_w, n, 1);
			if (dw) { /* c_proj (its input rebuilt: GELU of the stored fc), c_fc, ln_2
				   */
				circ_layer_weights *dl = &dw->layers[l];
				const float *mu = r->mean + (size_t)s * r->rows;
				const float *rs = r->rstd + (size_t)s * r->rows;
				ew_task gf = {r, r->s_gelu, fc, NULL,
					      r->m->cfg.act == CIRC_ACT_GELU};
				bias_grad(r, dl->fcproj_b, g, n, r->C, r->C);
				p_elementwise(r, gelu_part, &gf, n * F);
				gemm(r, 1, 0, r->F, r->C, (int)n, r->s_gelu, r->F, g, r->C, 1.0f,
				     dl->fcproj_w, r->C);
				bias_grad(r, dl->fc_b, r->d_fc, n, r->F, r->F);
				ln_apply(r->s_ln2, xin, mu, rs, lw->ln2_w, lw->ln2_b, n, r->C);
				gemm(r, 1, 0, r->C, r->F, (int)n, r->s_ln2, r->C, r->d_fc, r->F,
				     1.0f, dl->fc_w, r->F);
				ln_param_grad(r, dl->ln2_w, dl->ln2_b, r->d_ln, xin, mu, rs, n);
			}
			if (call_bhook(r, b, s, e) < 0)
				return -1;
		}
		/* attention */
		{
			int s = 2 * l, r0 = circ_recv_qkv(r->m, l, 0, 0), npatched = 0;
			const float *g = dresid_at(r, s + 1), *x = resid_at(r, s);
			float *gx = dresid_at(r, s);
			const float *qkv = r->qkv + (size_t)l * r->rows * C3;
			const float *att =
			    r->att + (size_t)l * r->max_b * r->H * r->max_t * r->max_t;
			for (int j = 0; j < 3 * r->H; j++)
				npatched += r->delta_on[r0 + j];
			gemm(r, 0, 1, (int)n, r->C, r->C, g, r->C, lw->proj_w, r->C, 0.0f, r->d_z,
			     r->C);
			memset(r->d_qkv, 0, n * C3 * sizeof(float));
			{
				attn_task t = {r, NULL, NULL, r->d_qkv, qkv, r->d_z, att};
				circ_pool_for(r->pool, (size_t)r->B, attn_bwd_part, &t);
			}
			memcpy(gx, g, n * C * sizeof(float));
			if (dw) { /* c_proj; the QKV bias; W_QKV for the receivers without a
				   * delta (their shared ln_1 output is rebuilt into d_z, free now)
				   */
				circ_layer_weights *dl = &dw->layers[l];
				const float *z = r->z + (size_t)l * r->rows * C;
				bias_grad(r, dl->proj_b, g, n, r->C, r->C);
				gemm(r, 1, 0, r->C, r->C, (int)n, z, r->C, g, r->C, 1.0f,
				     dl->proj_w, r->C);
				bias_grad(r, dl->attn_b, r->d_qkv, n, (int)C3, (int)C3);
				if (npatched < 3 * r->H)
					ln_apply(r->d_z, x, r->mean + (size_t)s * r->rows,
						 r->rstd + (size_t)s * r->rows, lw->ln1_w,
						 lw->ln1_b, n, r->C);
				if (npatched == 0)
					gemm(r, 1, 0, r->C, (int)C3, (int)n, r->d_z, r->C, r->d_qkv,
					     (int)C3, 1.0f, dl->attn_w, (int)C3);
				else
					for (int j = 0; j < 3 * r->H; j++) {
						size_t col =
						    (size_t)(j % 3) * C + (size_t)(j / 3) * D;
						if (r->delta_on[r0 + j])
							continue;
						gemm(r, 1, 0, r->C, r->D, (int)n, r->d_z, r->C,
						     r->d_qkv + col, (int)C3, 1.0f,
						     dl->attn_w + col, (int)C3);
					}
			}
			if (!want_recv && npatched == 0) {
				gemm(r, 0, 1, (int)n, r->C, (int)C3, r->d_qkv, (int)C3, lw->attn_w,
				     (int)C3, 0.0f, r->d_ln, r->C);
				p_layernorm_bwd(r, gx, NULL, r->d_ln, x, NULL,
						r->mean + (size_t)s * r->rows,
						r->rstd + (size_t)s * r->rows, lw->ln1_w, n, 0);
				if (dw)
					ln_param_grad(r, dw->layers[l].ln1_w, dw->layers[l].ln1_b,
						      r->d_ln, x, r->mean + (size_t)s * r->rows,
						      r->rstd + (size_t)s * r->rows, n);
			} else {
				for (int h = 0; h < r->H; h++)
					for (int c = 0; c < 3; c++) {
						int recv = circ_recv_qkv(r->m, l, h, c);
						size_t col = (size_t)c * C + (size_t)h * D;
						float *rg =
						    want_recv ? recv_grad_buf(r, recv) : r->s_ln2;
						const float *add =
						    r->delta_on[recv] ? r->delta[recv] : NULL;
						const float *xin =
						    dw ? recv_input(r, recv, x, r->s_ln) : x;
						const float *mu =
						    r->delta_on[recv]
							? delta_mean(r, recv)
							: r->mean + (size_t)s * r->rows;
						const float *rs =
						    r->delta_on[recv]
							? delta_rstd(r, recv)
							: r->rstd + (size_t)s * r->rows;
						gemm(r, 0, 1, (int)n, r->C, r->D, r->d_qkv + col,
						     (int)C3, lw->attn_w + col, (int)C3, 0.0f,
						     r->d_ln, r->C);
						p_layernorm_bwd(r, rg, gx, r->d_ln, xin,
								dw ? NULL : add, mu, rs, lw->ln1_w,
								n, 1);
						if (!dw)
							continue;
						ln_param_grad(r, dw->layers[l].ln1_w,
							      dw->layers[l].ln1_b, r->d_ln, xin, mu,
							      rs, n);
						if (!r->delta_on[recv])
							continue;
						/* this receiver's own ln_1 output, in place of its
						 * input (s_ln), for its W_QKV columns */
						ln_apply(r->s_ln, xin, mu, rs, lw->ln1_w, lw->ln1_b,
							 n, r->C);
						gemm(r, 1, 0, r->C, r->D, (int)n, r->s_ln, r->C,
						     r->d_qkv + col, (int)C3, 1.0f,
						     dw->layers[l].attn_w + col, (int)C3);
					}
			}
			if (call_bhook(r, b, s, e) < 0)
				return -1;
		}
	}
	if (dw)
		embed_grad(r, dw);
	r->have_bwd = 1;
	return 0;
}
