/*
 * dict: SAELens and circuit-tracer dictionaries read and written, encoded
 * and decoded (see dict.h for the formulas). The reader trusts nothing: each
 * cfg.json key is checked for presence and type, each tensor for its name,
 * dtype and shape against the config, each weight for being finite; the
 * first problem is reported with the file and the key or tensor.
 *
 * Weights are converted to f32 into one owned buffer carved up in a fixed
 * order (W_enc, W_dec, b_enc, b_dec, threshold, b_gate, b_mag, r_mag,
 * W_skip: those the architecture has), as llm.c carves its parameters.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "dict.h"
#include "kernels.h"
#include "metric.h"
#include "safetensors.h"

void circ_dict_cfg_init(circ_dict_cfg *c)
{
	memset(c, 0, sizeof *c);
	c->arch = CIRC_DICT_STANDARD;
	c->norm = CIRC_DICT_NORM_NONE;
	c->scale = 1;
	c->fold_ln = 1;
}

static const char *const arch_names[] = {"standard", "topk", "jumprelu", "gated"};

/* ---- the parameter table ---- */

enum { P_W_ENC, P_W_DEC, P_B_ENC, P_B_DEC, P_THRESHOLD, P_B_GATE, P_B_MAG, P_R_MAG, P_W_SKIP, P_N };

static const char *const param_names[P_N] = {"W_enc",  "W_dec", "b_enc", "b_dec", "threshold",
					     "b_gate", "b_mag", "r_mag", "W_skip"};

/* Whether the config has parameter p, and its shape (rows, cols; cols 0
 * for a vector). */
static int param_shape(const circ_dict_cfg *c, int p, int64_t *rows, int64_t *cols)
{
	int64_t I = c->d_in, S = c->d_sae, O = c->d_out;
	int gated = c->arch == CIRC_DICT_GATED;
	*cols = 0;
	switch (p) {
	case P_W_ENC: *rows = I, *cols = S; return 1;
	case P_W_DEC: *rows = S, *cols = O; return 1;
	case P_B_ENC: *rows = S; return !gated;
	case P_B_DEC: *rows = O; return 1;
	case P_THRESHOLD: *rows = S; return c->arch == CIRC_DICT_JUMPRELU;
	case P_B_GATE:
	case P_B_MAG:
	case P_R_MAG: *rows = S; return gated;
	case P_W_SKIP: *rows = O, *cols = I; return c->skip;
	}
	return 0;
}

static float **param_ptr(circ_dict *d, int p)
{
	float **t[P_N] = {&d->W_enc,  &d->W_dec, &d->b_enc, &d->b_dec, &d->threshold,
			  &d->b_gate, &d->b_mag, &d->r_mag, &d->W_skip};
	return t[p];
}

static int check_cfg(const circ_dict_cfg *c, circ_error *e)
{
	if (c->d_in < 1 || c->d_sae < 1 || c->d_out < 1)
		return circ_errorf(e, "key '%s': must be a positive integer",
				   c->d_in < 1	  ? "d_in"
				   : c->d_sae < 1 ? "d_sae"
						  : "d_out");
	if ((int64_t)c->d_in * c->d_sae > ((int64_t)1 << 34) ||
	    (int64_t)c->d_out * c->d_sae > ((int64_t)1 << 34))
		return circ_errorf(e, "key 'd_sae': %d x %d weights are too large", c->d_sae,
				   c->d_in);
	if (!c->transcoder && c->d_out != c->d_in)
		return circ_errorf(e, "key 'd_out': %d differs from d_in %d in an SAE", c->d_out,
				   c->d_in);
	if (c->arch == CIRC_DICT_TOPK && (c->k < 1 || c->k > c->d_sae))
		return circ_errorf(e, "key 'k': %d is not in [1, d_sae = %d]", c->k, c->d_sae);
	if (c->skip && !c->transcoder)
		return circ_errorf(e, "key 'architecture': a skip connection needs a transcoder");
	if (c->transcoder && c->apply_b_dec_to_input)
		return circ_errorf(e, "key 'apply_b_dec_to_input': true is not supported for a "
				      "transcoder (b_dec is its output bias)");
	if (!(c->scale > 0) || !isfinite(c->scale))
		return circ_errorf(e, "key 'scaling_factor': %g is not a positive number",
				   c->scale);
	circ_hook h;
	if (circ_hook_parse(c->hook_name, &h, e) < 0)
		return circ_error_prefix(e, "key 'hook_name'");
	if (c->transcoder && circ_hook_parse(c->hook_out, &h, e) < 0)
		return circ_error_prefix(e, "key 'hook_name_out'");
	return 0;
}

circ_dict *circ_dict_new(const circ_dict_cfg *c, circ_error *e)
{
	if (check_cfg(c, e) < 0)
		return NULL;
	circ_dict *d = circ_xcalloc(1, sizeof *d);
	d->cfg = *c;
	d->dtype = CIRC_F32;
	size_t n = 0;
	for (int p = 0; p < P_N; p++) {
		int64_t r, k;
		if (param_shape(c, p, &r, &k))
			n += (size_t)r * (size_t)(k ? k : 1);
	}
	d->mem = circ_xalloc_aligned(n * sizeof(float));
	d->n_params = n;
	size_t off = 0;
	for (int p = 0; p < P_N; p++) {
		int64_t r, k;
		if (!param_shape(c, p, &r, &k))
			continue;
		*param_ptr(d, p) = d->mem + off;
		off += (size_t)r * (size_t)(k ? k : 1);
	}
	return d;
}

void circ_dict_free(circ_dict *d)
{
	if (!d)
		return;
	free(d->mem);
	free(d->path);
	free(d);
}

const char *circ_dict_arch_name(const circ_dict *d)
{
	const circ_dict_cfg *c = &d->cfg;
	if (!c->transcoder)
		return arch_names[c->arch];
	if (c->arch == CIRC_DICT_JUMPRELU)
		return c->skip ? "jumprelu_skip_transcoder" : "jumprelu_transcoder";
	return c->skip ? "skip_transcoder" : "transcoder";
}

void circ_dict_name(const circ_dict *d, char *out, size_t n)
{
	static const char *const short_names[CIRC_HOOK_COUNT] = {
	    [CIRC_HOOK_RESID_PRE] = "resid_pre", [CIRC_HOOK_RESID_MID] = "resid_mid",
	    [CIRC_HOOK_RESID_POST] = "resid",	 [CIRC_HOOK_ATTN_OUT] = "attn",
	    [CIRC_HOOK_MLP_OUT] = "mlp",	 [CIRC_HOOK_ATTN_Z] = "z",
	    [CIRC_HOOK_LN2_NORMALIZED] = "ln2_", [CIRC_HOOK_MLP_IN] = "mlp_in",
	};
	circ_hook h = {0};
	circ_error e;
	if (d->cfg.transcoder) {
		if (circ_hook_parse(d->cfg.hook_out, &h, &e) < 0)
			circ_hook_parse(d->cfg.hook_name, &h, &e);
		snprintf(out, n, "tc%d", h.layer);
		return;
	}
	if (circ_hook_parse(d->cfg.hook_name, &h, &e) < 0) {
		snprintf(out, n, "dict");
		return;
	}
	snprintf(out, n, "%s%d", short_names[h.kind], h.layer);
}

/* ---- cfg.json ---- */

static char *join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = circ_xmalloc(n);
	snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static const char *type_of(const json_t *v)
{
	return json_is_integer(v)   ? "an integer"
	       : json_is_real(v)    ? "a real number"
	       : json_is_string(v)  ? "a string"
	       : json_is_boolean(v) ? "a boolean"
	       : json_is_null(v)    ? "null"
	       : json_is_array(v)   ? "an array"
				    : "an object";
}

/* The value of key in o, checked by is (a jansson type test) and named
 * by want: 0 with *v set; 1 if absent (or null) and not required; -1 with
 * "'<file>': key '<key>': ..." if required and absent, or of another type. */
static int lookup(json_t *o, const char *file, const char *key, int required,
		  int (*is)(const json_t *), const char *want, json_t **v, circ_error *e)
{
	*v = json_object_get(o, key);
	if (!*v || (json_is_null(*v) && !required)) {
		if (required)
			return circ_errorf(e, "'%s': key '%s': missing", file, key);
		return 1;
	}
	if (!is(*v))
		return circ_errorf(e, "'%s': key '%s': expected %s, got %s", file, key, want,
				   type_of(*v));
	return 0;
}

static int is_integer(const json_t *v)
{
	return json_is_integer(v);
}
static int is_string(const json_t *v)
{
	return json_is_string(v);
}
static int is_boolean(const json_t *v)
{
	return json_is_boolean(v);
}

/* A positive integer key (at most 2^30). */
static int get_int(json_t *o, const char *file, const char *key, int required, int *out,
		   circ_error *e)
{
	json_t *v;
	int r = lookup(o, file, key, required, is_integer, "an integer", &v, e);
	if (r)
		return r;
	json_int_t x = json_integer_value(v);
	if (x < 1 || x > (1 << 30))
		return circ_errorf(e, "'%s': key '%s': %lld is out of range", file, key,
				   (long long)x);
	*out = (int)x;
	return 0;
}

static int get_str(json_t *o, const char *file, const char *key, int required, const char **out,
		   circ_error *e)
{
	json_t *v;
	int r = lookup(o, file, key, required, is_string, "a string", &v, e);
	if (!r)
		*out = json_string_value(v);
	return r;
}

/* An optional boolean key (absent or null: *out unchanged, 1). */
static int get_bool(json_t *o, const char *file, const char *key, int *out, circ_error *e)
{
	json_t *v;
	int r = lookup(o, file, key, 0, is_boolean, "true or false", &v, e);
	if (!r)
		*out = json_is_true(v);
	return r;
}

static int copy_name(char *dst, const char *src, const char *file, const char *key, circ_error *e)
{
	if (strlen(src) >= CIRC_DICT_HOOK_MAX)
		return circ_errorf(e, "'%s': key '%s': longer than %d bytes", file, key,
				   CIRC_DICT_HOOK_MAX - 1);
	strcpy(dst, src);
	return 0;
}

static int parse_cfg(json_t *root, const char *file, circ_dict_cfg *c, circ_error *e)
{
	circ_dict_cfg_init(c);
	if (!json_is_object(root))
		return circ_errorf(e, "'%s': expected a JSON object", file);
	json_t *meta = json_object_get(root, "metadata");
	if (meta && !json_is_object(meta))
		meta = NULL;
	const char *arch = NULL;
	if (get_str(root, file, "architecture", 1, &arch, e) < 0)
		return -1;
	static const struct {
		const char *name;
		circ_dict_arch arch;
		int transcoder, skip;
	} archs[] = {
	    {"standard", CIRC_DICT_STANDARD, 0, 0},
	    {"topk", CIRC_DICT_TOPK, 0, 0},
	    {"jumprelu", CIRC_DICT_JUMPRELU, 0, 0},
	    {"gated", CIRC_DICT_GATED, 0, 0},
	    {"transcoder", CIRC_DICT_STANDARD, 1, 0},
	    {"skip_transcoder", CIRC_DICT_STANDARD, 1, 1},
	    {"jumprelu_transcoder", CIRC_DICT_JUMPRELU, 1, 0},
	    {"jumprelu_skip_transcoder", CIRC_DICT_JUMPRELU, 1, 1},
	};
	size_t a = 0;
	while (a < sizeof archs / sizeof archs[0] && strcmp(archs[a].name, arch))
		a++;
	if (a == sizeof archs / sizeof archs[0])
		return circ_errorf(
		    e,
		    "'%s': key 'architecture': unknown architecture '%s' (circ reads "
		    "standard, topk, jumprelu, gated, transcoder, skip_transcoder, "
		    "jumprelu_transcoder, jumprelu_skip_transcoder)",
		    file, arch);
	c->arch = archs[a].arch;
	c->transcoder = archs[a].transcoder;
	c->skip = archs[a].skip;
	/* SAELens 5 wrote TopK as architecture "standard" with activation_fn_str
	 * "topk" (what a TopK transcoder still is): the activation decides */
	const char *act = NULL;
	if (get_str(root, file, "activation_fn_str", 0, &act, e) < 0)
		return -1;
	if (act && !strcmp(act, "topk") && c->arch == CIRC_DICT_STANDARD)
		c->arch = CIRC_DICT_TOPK;
	else if (act && strcmp(act, "relu") && strcmp(act, "topk"))
		return circ_errorf(
		    e,
		    "'%s': key 'activation_fn_str': '%s' is not supported (circ reads "
		    "relu and topk)",
		    file, act);
	if (get_int(root, file, "d_in", 1, &c->d_in, e) < 0 ||
	    get_int(root, file, "d_sae", 1, &c->d_sae, e) < 0)
		return -1;
	c->d_out = c->d_in;
	const char *hook = NULL, *hook_out = NULL;
	int r = get_str(root, file, "hook_name", 0, &hook, e);
	if (r < 0 || (r == 1 && meta && get_str(meta, file, "hook_name", 0, &hook, e) < 0))
		return -1;
	if (!hook)
		return circ_errorf(e, "'%s': key 'hook_name': missing", file);
	if (copy_name(c->hook_name, hook, file, "hook_name", e) < 0)
		return -1;
	r = get_str(root, file, "hook_name_out", 0, &hook_out, e);
	if (r < 0 || (r == 1 && meta && get_str(meta, file, "hook_name_out", 0, &hook_out, e) < 0))
		return -1;
	if (hook_out && !c->transcoder)
		c->transcoder = 1;
	if (c->transcoder) {
		if (!hook_out)
			return circ_errorf(e, "'%s': key 'hook_name_out': missing (a transcoder)",
					   file);
		if (copy_name(c->hook_out, hook_out, file, "hook_name_out", e) < 0 ||
		    get_int(root, file, "d_out", 1, &c->d_out, e) < 0)
			return -1;
	}
	c->apply_b_dec_to_input = !c->transcoder; /* SAELens's default for SAEs */
	if (get_bool(root, file, "apply_b_dec_to_input", &c->apply_b_dec_to_input, e) < 0)
		return -1;
	if (c->arch == CIRC_DICT_TOPK) {
		json_t *kw = json_object_get(root, "activation_fn_kwargs");
		r = get_int(root, file, "k", 0, &c->k, e);
		if (r < 0)
			return -1;
		if (r == 1 && json_is_object(kw) && json_object_get(kw, "k")) {
			if (get_int(kw, file, "k", 1, &c->k, e) < 0)
				return circ_error_prefix(e, "activation_fn_kwargs");
		} else if (r == 1)
			return circ_errorf(e, "'%s': key 'k': missing (topk)", file);
	}
	const char *norm = "none";
	if (get_str(root, file, "normalize_activations", 0, &norm, e) < 0)
		return -1;
	if (!strcmp(norm, "expected_average_only_in"))
		c->norm = CIRC_DICT_NORM_EXPECTED_AVERAGE;
	else if (strcmp(norm, "none"))
		return circ_errorf(e,
				   "'%s': key 'normalize_activations': '%s' is not supported (circ "
				   "reads none and expected_average_only_in)",
				   file, norm);
	json_t *kw = json_object_get(root, "model_from_pretrained_kwargs");
	if (json_is_object(kw) && get_bool(kw, file, "fold_ln", &c->fold_ln, e) < 0)
		return circ_error_prefix(e, "model_from_pretrained_kwargs");
	const char *model = NULL;
	r = get_str(root, file, "model_name", 0, &model, e);
	if (r == 1 && meta)
		r = get_str(meta, file, "model_name", 0, &model, e);
	if (r < 0)
		return -1;
	if (model && copy_name(c->model_name, model, file, "model_name", e) < 0)
		return -1;
	return 0;
}

static json_t *load_json(const char *file, circ_error *e)
{
	size_t len;
	char *text = circ_read_file(file, CIRC_MAX_TEXT_FILE, &len, e);
	if (!text)
		return NULL;
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	free(text);
	if (!root)
		circ_errorf(e, "'%s': line %d: %s", file, je.line, je.text);
	return root;
}

/* ---- weights ---- */

static int all_finite(const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return 0;
	return 1;
}

/* The tensors of f (named by names[p], NULL for "not in this format") hold
 * every parameter of a dictionary configured as c, in a dtype circ reads,
 * with the shape c gives (the two dimensions swapped for those marked in
 * transpose), and nothing else. Checked before the parameters' memory is
 * allocated, so that a cfg.json whose sizes the file does not back is an
 * error naming them, not an allocation of its size. */
static int check_weights(const circ_dict_cfg *c, const circ_st *f, const char *file,
			 const char *const names[P_N], const int transpose[P_N], circ_error *e)
{
	int taken = 0;
	for (int p = 0; p < P_N; p++) {
		int64_t r, k;
		if (!param_shape(c, p, &r, &k))
			continue;
		const circ_st_tensor *t = circ_st_find(f, names[p]);
		if (!t)
			return circ_errorf(e, "'%s': tensor '%s': missing", file, names[p]);
		taken++;
		if (t->dtype != CIRC_F32 && t->dtype != CIRC_F16 && t->dtype != CIRC_BF16)
			return circ_errorf(
			    e, "'%s': tensor '%s': dtype %s (circ reads F32, F16, BF16)", file,
			    names[p], circ_dtype_name(t->dtype));
		int64_t want[2] = {transpose[p] ? k : r, transpose[p] ? r : k};
		int ndim = k ? 2 : 1;
		if (t->ndim != ndim || t->shape[0] != want[0] ||
		    (ndim == 2 && t->shape[1] != want[1])) {
			char got[96] = "[", w[64];
			for (int i = 0; i < t->ndim; i++)
				snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld",
					 i ? ", " : "", (long long)t->shape[i]);
			strncat(got, "]", sizeof got - strlen(got) - 1);
			if (ndim == 2)
				snprintf(w, sizeof w, "[%lld, %lld]", (long long)want[0],
					 (long long)want[1]);
			else
				snprintf(w, sizeof w, "[%lld]", (long long)want[0]);
			return circ_errorf(e, "'%s': tensor '%s': shape %s, expected %s", file,
					   names[p], got, w);
		}
	}
	if (taken != circ_st_count(f))
		for (int i = 0; i < circ_st_count(f); i++) {
			const char *nm = circ_st_at(f, i)->name;
			int known = 0;
			for (int p = 0; p < P_N; p++) {
				int64_t r, k;
				known |= param_shape(c, p, &r, &k) && !strcmp(nm, names[p]);
			}
			if (!known)
				return circ_errorf(e, "'%s': tensor '%s': not a tensor of a %s%s",
						   file, nm, arch_names[c->arch],
						   c->transcoder ? " transcoder" : " SAE");
		}
	return 0;
}

/* Fills d's parameters from the tensors of f, checked by check_weights,
 * transposing those marked in transpose. */
static int fill_weights(circ_dict *d, const circ_st *f, const char *file,
			const char *const names[P_N], const int transpose[P_N], circ_error *e)
{
	for (int p = 0; p < P_N; p++) {
		int64_t r, k;
		if (!param_shape(&d->cfg, p, &r, &k))
			continue;
		const circ_st_tensor *t = circ_st_find(f, names[p]);
		d->dtype = t->dtype;
		size_t n = (size_t)r * (size_t)(k ? k : 1);
		float *dst = *param_ptr(d, p);
		if (!transpose[p]) {
			circ_st_to_f32(dst, t->data, t->dtype, n);
		} else {
			float *tmp = circ_xmalloc(n * sizeof(float));
			circ_st_to_f32(tmp, t->data, t->dtype, n);
			/* in 32 x 32 tiles: a plain loop reads tmp a cache line per
			 * element (circ-trace loads 12 transcoders of 24,576 features) */
			for (int64_t i0 = 0; i0 < r; i0 += 32)
				for (int64_t j0 = 0; j0 < k; j0 += 32)
					for (int64_t i = i0; i < r && i < i0 + 32; i++)
						for (int64_t j = j0; j < k && j < j0 + 32; j++)
							dst[i * k + j] = tmp[j * r + i];
			free(tmp);
		}
		if (!all_finite(dst, n))
			return circ_errorf(e, "'%s': tensor '%s': holds NaN or infinity", file,
					   names[p]);
	}
	return 0;
}

/* A dictionary configured as c (check_cfg passed) with its parameters from
 * f (the file `file`), named by where it came from; NULL on error. */
static circ_dict *take_weights(const circ_dict_cfg *c, const circ_st *f, const char *file,
			       const char *const names[P_N], const int transpose[P_N],
			       const char *from, circ_error *e)
{
	circ_dict *d;
	if (check_weights(c, f, file, names, transpose, e) < 0 || !(d = circ_dict_new(c, e)))
		return NULL;
	if (fill_weights(d, f, file, names, transpose, e) < 0) {
		circ_dict_free(d);
		return NULL;
	}
	d->path = circ_xstrdup(from);
	return d;
}

static int read_scaler(circ_dict_cfg *c, const char *dir, circ_error *e)
{
	char *file = join(dir, "activation_scaler.json");
	json_t *root = load_json(file, e);
	int rc = -1;
	if (root) {
		json_t *v = json_object_get(root, "scaling_factor");
		if (!v)
			circ_errorf(e, "'%s': key 'scaling_factor': missing", file);
		else if (!json_is_number(v) || !(json_number_value(v) > 0) ||
			 !isfinite(json_number_value(v)))
			circ_errorf(e, "'%s': key 'scaling_factor': expected a positive number",
				    file);
		else
			c->scale = json_number_value(v), rc = 0;
	}
	json_decref(root);
	free(file);
	return rc;
}

circ_dict *circ_dict_load(const char *dir, circ_error *e)
{
	static const int no_transpose[P_N];
	char *cfgfile = join(dir, "cfg.json"), *wfile = join(dir, "sae_weights.safetensors");
	circ_dict *d = NULL;
	circ_st *f = NULL;
	circ_dict_cfg c;
	json_t *root = load_json(cfgfile, e);
	if (!root || parse_cfg(root, cfgfile, &c, e) < 0)
		goto out;
	if (c.norm == CIRC_DICT_NORM_EXPECTED_AVERAGE && read_scaler(&c, dir, e) < 0)
		goto out;
	if (check_cfg(&c, e) < 0) { /* before the weights: the cfg's errors first */
		circ_error_prefix(e, "'%s'", cfgfile);
		goto out;
	}
	if ((f = circ_st_open(wfile, e)))
		d = take_weights(&c, f, wfile, param_names, no_transpose, dir, e);
out:
	circ_st_close(f);
	json_decref(root);
	free(cfgfile);
	free(wfile);
	return d;
}

circ_dict *circ_dict_load_transcoder_file(const char *path, int layer, const char *hook_in,
					  const char *hook_out, circ_error *e)
{
	circ_st *f = circ_st_open(path, e);
	if (!f)
		return NULL;
	circ_dict_cfg c;
	circ_dict_cfg_init(&c);
	c.transcoder = 1;
	c.apply_b_dec_to_input = 0;
	const circ_st_tensor *we = circ_st_find(f, "W_enc"), *bd = circ_st_find(f, "b_dec");
	const char *thr = circ_st_find(f, "activation_function.threshold")
			      ? "activation_function.threshold"
			      : "threshold";
	circ_dict *d = NULL;
	/* the sizes from W_enc (S, I) and b_dec (O), as circuit-tracer reads them */
	if (!we || we->ndim != 2 || !bd || bd->ndim != 1) {
		circ_errorf(e, "'%s': tensor '%s': missing or not a %s", path,
			    !we || we->ndim != 2 ? "W_enc" : "b_dec",
			    !we || we->ndim != 2 ? "matrix" : "vector");
		goto out;
	}
	if (we->shape[0] > (1 << 30) || we->shape[1] > (1 << 30) || bd->shape[0] > (1 << 30)) {
		circ_errorf(e, "'%s': tensor 'W_enc': too large", path);
		goto out;
	}
	c.d_sae = (int)we->shape[0];
	c.d_in = (int)we->shape[1];
	c.d_out = (int)bd->shape[0];
	c.skip = circ_st_find(f, "W_skip") != NULL;
	c.arch = circ_st_find(f, thr) ? CIRC_DICT_JUMPRELU : CIRC_DICT_STANDARD;
	/* circuit-tracer loads its models unfolded: the MLP's input is the
	 * LayerNorm's output with its weight and bias */
	c.fold_ln = strcmp(hook_in, "mlp.hook_in") != 0;
	snprintf(c.hook_name, sizeof c.hook_name, "blocks.%d.%s", layer, hook_in);
	snprintf(c.hook_out, sizeof c.hook_out, "blocks.%d.%s", layer, hook_out);
	const char *names[P_N] = {"W_enc",  "W_dec", "b_enc", "b_dec", thr,
				  "b_gate", "b_mag", "r_mag", "W_skip"};
	static const int transpose[P_N] = {[P_W_ENC] = 1};
	if (check_cfg(&c, e) < 0) {
		circ_error_prefix(e, "'%s'", path);
		goto out;
	}
	d = take_weights(&c, f, path, names, transpose, path, e);
out:
	circ_st_close(f);
	return d;
}

/* ---- writing ---- */

static int set_new(json_t *o, const char *k, json_t *v)
{
	return json_object_set_new(o, k, v);
}

/* cfg.json as SAELens's SAE.save_model writes it (its flat, pre-6.0 keys,
 * which 6.x still reads), with the values circ knows and SAELens's
 * defaults for the rest. */
static json_t *cfg_json(const circ_dict *d)
{
	const circ_dict_cfg *c = &d->cfg;
	json_t *o = json_object();
	const char *arch = circ_dict_arch_name(d);
	circ_hook h = {0}, ho = {0};
	circ_error e;
	circ_hook_parse(c->hook_name, &h, &e);
	set_new(o, "architecture", json_string(arch));
	set_new(o, "d_in", json_integer(c->d_in));
	set_new(o, "d_sae", json_integer(c->d_sae));
	set_new(o, "dtype",
		json_string(d->dtype == CIRC_F16    ? "float16"
			    : d->dtype == CIRC_BF16 ? "bfloat16"
						    : "float32"));
	set_new(o, "device", json_string("cpu"));
	set_new(o, "model_name", json_string(c->model_name));
	set_new(o, "hook_name", json_string(c->hook_name));
	set_new(o, "hook_layer", json_integer(h.layer));
	set_new(o, "hook_head_index", json_null());
	set_new(o, "activation_fn_str", json_string(c->arch == CIRC_DICT_TOPK ? "topk" : "relu"));
	json_t *kw = json_object();
	if (c->arch == CIRC_DICT_TOPK) {
		set_new(kw, "k", json_integer(c->k));
		set_new(o, "k", json_integer(c->k));
	}
	set_new(o, "activation_fn_kwargs", kw);
	set_new(o, "apply_b_dec_to_input", json_boolean(c->apply_b_dec_to_input));
	set_new(o, "finetuning_scaling_factor", json_false());
	set_new(o, "sae_lens_training_version", json_null());
	set_new(o, "prepend_bos", json_true());
	set_new(o, "dataset_path", json_string(""));
	set_new(o, "dataset_trust_remote_code", json_false());
	set_new(o, "context_size", json_integer(128));
	set_new(o, "normalize_activations",
		json_string(c->norm == CIRC_DICT_NORM_EXPECTED_AVERAGE ? "expected_average_only_in"
								       : "none"));
	set_new(o, "neuronpedia_id", json_null());
	json_t *mk = json_object();
	if (!c->fold_ln)
		set_new(mk, "fold_ln", json_false());
	set_new(o, "model_from_pretrained_kwargs", mk);
	if (c->transcoder) {
		circ_hook_parse(c->hook_out, &ho, &e);
		set_new(o, "d_out", json_integer(c->d_out));
		set_new(o, "hook_name_out", json_string(c->hook_out));
		set_new(o, "hook_layer_out", json_integer(ho.layer));
		set_new(o, "hook_head_index_out", json_null());
	}
	return o;
}

int circ_dict_save(const circ_dict *d, const char *dir, const char *dtype, circ_error *e)
{
	circ_dtype dt = !dtype || !strcasecmp(dtype, "F32") ? CIRC_F32
			: !strcasecmp(dtype, "F16")	    ? CIRC_F16
			: !strcasecmp(dtype, "BF16")	    ? CIRC_BF16
							    : CIRC_DTYPE_COUNT;
	if (dt == CIRC_DTYPE_COUNT)
		return circ_errorf(e, "dtype '%s': circ writes F32, F16 or BF16", dtype);
	if (mkdir(dir, 0777) < 0 && errno != EEXIST)
		return circ_errorf(e, "'%s': cannot create: %s", dir, strerror(errno));
	circ_dict tmp = *d;
	tmp.dtype = dt;
	json_t *o = cfg_json(&tmp);
	char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
	json_decref(o);
	int rc = circ_write_text_file(dir, "cfg.json", text, e);
	free(text);
	if (rc < 0)
		return -1;
	if (d->cfg.norm == CIRC_DICT_NORM_EXPECTED_AVERAGE) {
		o = json_object();
		set_new(o, "scaling_factor", json_real(d->cfg.scale));
		text = json_dumps(o, JSON_REAL_PRECISION(17));
		json_decref(o);
		rc = circ_write_text_file(dir, "activation_scaler.json", text, e);
		free(text);
		if (rc < 0)
			return -1;
	}
	circ_st_tensor t[P_N];
	void *bufs[P_N] = {0};
	int n = 0;
	for (int p = 0; p < P_N; p++) {
		int64_t r, k;
		if (!param_shape(&d->cfg, p, &r, &k))
			continue;
		size_t cnt = (size_t)r * (size_t)(k ? k : 1);
		const float *src = *param_ptr((circ_dict *)d, p);
		memset(&t[n], 0, sizeof t[n]);
		t[n].name = param_names[p];
		t[n].dtype = dt;
		t[n].ndim = k ? 2 : 1;
		t[n].shape[0] = r;
		t[n].shape[1] = k;
		t[n].nbytes = cnt * circ_dtype_size(dt);
		if (dt == CIRC_F32) {
			t[n].data = src;
		} else {
			uint16_t *b = circ_xmalloc(cnt * 2);
			for (size_t i = 0; i < cnt; i++)
				b[i] = dt == CIRC_F16 ? circ_f32_to_f16(src[i])
						      : circ_f32_to_bf16(src[i]);
			t[n].data = bufs[n] = b;
		}
		n++;
	}
	char *wfile = join(dir, "sae_weights.safetensors");
	rc = circ_st_write(wfile, n, t, 0, NULL, e);
	free(wfile);
	for (int i = 0; i < n; i++)
		free(bufs[i]);
	return rc;
}

/* ---- sets ---- */

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int file_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

/* "layer_<L>.safetensors" -> L, else -1. */
static int layer_file(const char *name)
{
	if (strncmp(name, "layer_", 6))
		return -1;
	const char *p = name + 6;
	int l = 0, digits = 0;
	for (; *p >= '0' && *p <= '9' && digits < 6; p++, digits++)
		l = l * 10 + (*p - '0');
	return digits && !strcmp(p, ".safetensors") ? l : -1;
}

/* circuit-tracer's config.yaml: the scalar lines "feature_input_hook: x"
 * and "feature_output_hook: y" (quotes allowed); the rest is not read. */
static int read_yaml_hooks(const char *file, char *in, char *out, size_t n, circ_error *e)
{
	size_t len;
	char *text = circ_read_file(file, CIRC_MAX_TEXT_FILE, &len, e);
	if (!text)
		return -1;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *dst = !strncmp(line, "feature_input_hook:", 19)	 ? in
			    : !strncmp(line, "feature_output_hook:", 20) ? out
									 : NULL;
		if (!dst)
			continue;
		char *v = strchr(line, ':') + 1;
		v += strspn(v, " \t\"'");
		size_t k = strcspn(v, " \t\"'\r#");
		if (!k || k >= n) {
			free(text);
			return circ_errorf(e, "'%s': %.*s: expected a hook name", file,
					   (int)(strchr(line, ':') - line), line);
		}
		memcpy(dst, v, k);
		dst[k] = 0;
	}
	free(text);
	return 0;
}

static void set_add(circ_dict_set *s, circ_dict *d)
{
	s->dict = circ_xrealloc(s->dict, (size_t)(s->n + 1) * sizeof *s->dict);
	s->dict[s->n++] = d;
}

circ_dict_set *circ_dict_set_load(const char *dir, circ_error *e)
{
	circ_dict_set *s = circ_xcalloc(1, sizeof *s);
	char *cfg = join(dir, "cfg.json");
	int single = file_exists(cfg);
	free(cfg);
	if (single) {
		circ_dict *d = circ_dict_load(dir, e);
		if (!d)
			goto fail;
		set_add(s, d);
		return s;
	}
	DIR *dp = opendir(dir);
	if (!dp) {
		circ_errorf(e, "'%s': cannot open: %s", dir, strerror(errno));
		goto fail;
	}
	char **names = NULL;
	int nn = 0;
	for (struct dirent *de; (de = readdir(dp));) {
		if (de->d_name[0] == '.')
			continue;
		names = circ_xrealloc(names, (size_t)(nn + 1) * sizeof *names);
		names[nn++] = circ_xstrdup(de->d_name);
	}
	closedir(dp);
	if (nn > 1)
		qsort(names, (size_t)nn, sizeof *names, name_cmp);
	char hin[CIRC_DICT_HOOK_MAX] = "hook_resid_mid", hout[CIRC_DICT_HOOK_MAX] = "hook_mlp_out";
	char *yaml = join(dir, "config.yaml");
	int rc = file_exists(yaml) ? read_yaml_hooks(yaml, hin, hout, sizeof hin, e) : 0;
	free(yaml);
	for (int i = 0; i < nn && rc == 0; i++) {
		char *p = join(dir, names[i]), *pc = join(p, "cfg.json");
		int layer = layer_file(names[i]);
		circ_dict *d = NULL;
		if (is_dir(p) && file_exists(pc))
			d = circ_dict_load(p, e);
		else if (layer >= 0)
			d = circ_dict_load_transcoder_file(p, layer, hin, hout, e);
		else
			d = (circ_dict *)1; /* not a dictionary: skipped */
		free(p);
		free(pc);
		if (!d)
			rc = -1;
		else if (d != (circ_dict *)1)
			set_add(s, d);
	}
	for (int i = 0; i < nn; i++)
		free(names[i]);
	free(names);
	if (rc < 0)
		goto fail;
	if (!s->n) {
		circ_errorf(e,
			    "'%s': no dictionary (neither cfg.json, subdirectories with one, nor "
			    "layer_<L>.safetensors files)",
			    dir);
		goto fail;
	}
	return s;
fail:
	circ_dict_set_free(s);
	return NULL;
}

void circ_dict_set_free(circ_dict_set *s)
{
	if (!s)
		return;
	for (int i = 0; i < s->n; i++)
		circ_dict_free(s->dict[i]);
	free(s->dict);
	free(s);
}

/* ---- checking against a model ---- */

/* Width of a hook's activation in a model of config c. */
static int hook_width(const circ_config *c, circ_hook_kind k)
{
	return k == CIRC_HOOK_ATTN_Z ? c->n_head * circ_config_head_dim(c) : c->n_embd;
}

int circ_dict_check_model(const circ_dict *d, const circ_model *m, circ_error *e)
{
	const char *path = d->path ? d->path : "<dictionary>";
	const circ_config *mc = circ_model_config(m);
	const circ_topology *t = circ_model_topology(m);
	circ_hook h, ho;
	if (circ_hook_parse(d->cfg.hook_name, &h, e) < 0 || circ_hook_check(t, &h, e) < 0)
		return circ_error_prefix(e, "'%s': key 'hook_name'", path);
	/* hook_attn_out is read as the residual's step over the attention,
	 * which parallel blocks do not have */
	if (h.kind == CIRC_HOOK_ATTN_OUT && t->d.block != CIRC_BLOCK_SEQUENTIAL)
		return circ_errorf(e,
				   "'%s': key 'hook_name': %s is not implemented for parallel "
				   "blocks yet",
				   path, d->cfg.hook_name);
	if (hook_width(mc, h.kind) != d->cfg.d_in)
		return circ_errorf(e, "'%s': key 'd_in': %d does not match the model's %s width %d",
				   path, d->cfg.d_in, d->cfg.hook_name, hook_width(mc, h.kind));
	if (!d->cfg.transcoder)
		return 0;
	if (circ_hook_parse(d->cfg.hook_out, &ho, e) < 0 || circ_hook_check(t, &ho, e) < 0)
		return circ_error_prefix(e, "'%s': key 'hook_name_out'", path);
	if (hook_width(mc, ho.kind) != d->cfg.d_out)
		return circ_errorf(e,
				   "'%s': key 'd_out': %d does not match the model's %s width %d",
				   path, d->cfg.d_out, d->cfg.hook_out, hook_width(mc, ho.kind));
	if (ho.kind != CIRC_HOOK_MLP_OUT || ho.layer != h.layer ||
	    (h.kind != CIRC_HOOK_RESID_MID && h.kind != CIRC_HOOK_MLP_IN &&
	     h.kind != CIRC_HOOK_LN2_NORMALIZED))
		return circ_errorf(
		    e,
		    "'%s': key 'hook_name_out': a transcoder must read layer l's MLP "
		    "input (hook_resid_mid, hook_mlp_in, ln2.hook_normalized) and "
		    "write its hook_mlp_out; this one reads %s and writes %s",
		    path, d->cfg.hook_name, d->cfg.hook_out);
	return 0;
}

/* ---- encoding and decoding ---- */

/* Keeps the k largest of pre (S) (ties: the lower index), relu'd, in f;
 * zeros elsewhere. idx (k) is scratch. A min-heap of the kept indices. */
static void topk_row(float *f, const float *pre, int S, int k, int *idx)
{
#define LESS(a, b) (pre[a] < pre[b] || (pre[a] == pre[b] && (a) > (b)))
	int n = 0;
	for (int j = 0; j < S; j++) {
		if (n == k && !LESS(idx[0], j))
			continue;
		int i;
		if (n < k) { /* sift up */
			i = n++;
			while (i > 0 && LESS(j, idx[(i - 1) / 2])) {
				idx[i] = idx[(i - 1) / 2];
				i = (i - 1) / 2;
			}
		} else { /* replace the root, sift down */
			i = 0;
			for (;;) {
				int c = 2 * i + 1;
				if (c >= n)
					break;
				if (c + 1 < n && LESS(idx[c + 1], idx[c]))
					c++;
				if (!LESS(idx[c], j))
					break;
				idx[i] = idx[c];
				i = c;
			}
		}
		idx[i] = j;
	}
#undef LESS
	memset(f, 0, (size_t)S * sizeof *f);
	for (int i = 0; i < n; i++)
		f[idx[i]] = pre[idx[i]] > 0 ? pre[idx[i]] : 0;
}

/* The input as the encoder sees it: x * scale - b_dec (when applied). */
static void encoder_input(const circ_dict *d, const float *x, int n, float *xc)
{
	const circ_dict_cfg *c = &d->cfg;
	float s = (float)c->scale;
	for (size_t i = 0; i < (size_t)n; i++)
		for (int j = 0; j < c->d_in; j++) {
			float v = x[i * c->d_in + j];
			if (c->norm == CIRC_DICT_NORM_EXPECTED_AVERAGE)
				v *= s;
			if (c->apply_b_dec_to_input)
				v -= d->b_dec[j];
			xc[i * c->d_in + j] = v;
		}
}

/* Activation of one row from its pre-activation xc W_enc (S), in place;
 * idx (k) and pre (S) are TopK's scratch. */
static void activate_row(const circ_dict *d, float *f, int *idx, float *pre)
{
	const circ_dict_cfg *c = &d->cfg;
	int S = c->d_sae;
	switch (c->arch) {
	case CIRC_DICT_STANDARD:
		for (int j = 0; j < S; j++) {
			float v = f[j] + d->b_enc[j];
			f[j] = v > 0 ? v : 0;
		}
		break;
	case CIRC_DICT_JUMPRELU:
		for (int j = 0; j < S; j++) {
			float v = f[j] + d->b_enc[j];
			f[j] = v > d->threshold[j] && v > 0 ? v : 0;
		}
		break;
	case CIRC_DICT_GATED:
		for (int j = 0; j < S; j++) {
			float gate = f[j] + d->b_gate[j];
			float mag = f[j] * expf(d->r_mag[j]) + d->b_mag[j];
			f[j] = gate > 0 && mag > 0 ? mag : 0;
		}
		break;
	case CIRC_DICT_TOPK:
		for (int j = 0; j < S; j++)
			pre[j] = f[j] + d->b_enc[j];
		topk_row(f, pre, S, c->k, idx);
		break;
	}
}

void circ_dict_encode(const circ_dict *d, const float *x, int n, float *f)
{
	const circ_dict_cfg *c = &d->cfg;
	if (n <= 0)
		return;
	float *xc = circ_xmalloc_aligned((size_t)n * c->d_in * sizeof *xc);
	encoder_input(d, x, n, xc);
	circ_gemm(0, 0, n, c->d_sae, c->d_in, 1.0f, xc, c->d_in, d->W_enc, c->d_sae, 0.0f, f,
		  c->d_sae);
	int topk = c->arch == CIRC_DICT_TOPK;
	int *idx = topk ? circ_xmalloc((size_t)c->k * sizeof *idx) : NULL;
	float *pre = topk ? circ_xmalloc((size_t)c->d_sae * sizeof *pre) : NULL;
	for (int i = 0; i < n; i++)
		activate_row(d, f + (size_t)i * c->d_sae, idx, pre);
	free(idx);
	free(pre);
	free(xc);
}

void circ_dict_decode(const circ_dict *d, const float *f, const float *x, int n, float *out)
{
	const circ_dict_cfg *c = &d->cfg;
	int S = c->d_sae, O = c->d_out, I = c->d_in;
	float inv = c->norm == CIRC_DICT_NORM_EXPECTED_AVERAGE ? (float)(1.0 / c->scale) : 1.0f;
	float s = c->norm == CIRC_DICT_NORM_EXPECTED_AVERAGE ? (float)c->scale : 1.0f;
	for (int i = 0; i < n; i++) {
		float *o = out + (size_t)i * O;
		const float *fi = f + (size_t)i * S;
		memcpy(o, d->b_dec, (size_t)O * sizeof *o);
		/* The features are sparse: add only the active rows of W_dec. */
		for (int j = 0; j < S; j++)
			if (fi[j] != 0) {
				const float *w = d->W_dec + (size_t)j * O;
				for (int q = 0; q < O; q++)
					o[q] += fi[j] * w[q];
			}
		if (c->skip) {
			const float *xi = x + (size_t)i * I;
			for (int q = 0; q < O; q++) {
				const float *w = d->W_skip + (size_t)q * I;
				float acc = 0;
				for (int p = 0; p < I; p++)
					acc += xi[p] * s * w[p];
				o[q] += acc;
			}
		}
		for (int q = 0; q < O && inv != 1.0f; q++)
			o[q] *= inv;
	}
}

void circ_dict_encode_ref(const circ_dict *d, const float *x, int n, float *f)
{
	const circ_dict_cfg *c = &d->cfg;
	int S = c->d_sae, I = c->d_in;
	float *xc = circ_xmalloc((size_t)(n > 0 ? n : 1) * I * sizeof *xc);
	encoder_input(d, x, n, xc);
	int topk = c->arch == CIRC_DICT_TOPK;
	int *idx = topk ? circ_xmalloc((size_t)c->k * sizeof *idx) : NULL;
	float *pre = topk ? circ_xmalloc((size_t)S * sizeof *pre) : NULL;
	for (int i = 0; i < n; i++) {
		float *fi = f + (size_t)i * S;
		for (int j = 0; j < S; j++) {
			double acc = 0;
			for (int p = 0; p < I; p++)
				acc += (double)xc[(size_t)i * I + p] * d->W_enc[(size_t)p * S + j];
			fi[j] = (float)acc;
		}
		activate_row(d, fi, idx, pre);
	}
	free(idx);
	free(pre);
	free(xc);
}

void circ_dict_decode_ref(const circ_dict *d, const float *f, const float *x, int n, float *out)
{
	const circ_dict_cfg *c = &d->cfg;
	int S = c->d_sae, O = c->d_out, I = c->d_in;
	double s = c->norm == CIRC_DICT_NORM_EXPECTED_AVERAGE ? c->scale : 1.0;
	for (int i = 0; i < n; i++)
		for (int q = 0; q < O; q++) {
			double acc = d->b_dec[q];
			for (int j = 0; j < S; j++)
				acc += (double)f[(size_t)i * S + j] * d->W_dec[(size_t)j * O + q];
			for (int p = 0; c->skip && p < I; p++)
				acc +=
				    (double)x[(size_t)i * I + p] * s * d->W_skip[(size_t)q * I + p];
			out[(size_t)i * O + q] = (float)(acc / s);
		}
}

/* ---- activations at a hook point ---- */

int circ_dict_hook_read(const circ_dict *d, int in, const circ_run *r, float *out, circ_error *e)
{
	const circ_model *m = circ_run_model(r);
	const circ_topology *t = circ_model_topology(m);
	const circ_config *mc = circ_model_config(m);
	circ_hook h;
	if (circ_hook_parse(in ? d->cfg.hook_name : d->cfg.hook_out, &h, e) < 0)
		return -1;
	int C = mc->n_embd, l = h.layer;
	size_t N = (size_t)circ_run_b(r) * (size_t)circ_run_t(r);
	int s_attn = circ_topo_stage_attn(t, l), s_mlp = circ_topo_stage_mlp(t, l);
	const circ_layer_weights *lw = &circ_model_weights(m)->layers[l];
	switch (h.kind) {
	case CIRC_HOOK_RESID_PRE:
		memcpy(out, circ_run_resid(r, s_attn), N * C * sizeof *out);
		return 0;
	case CIRC_HOOK_RESID_MID:
	case CIRC_HOOK_MLP_IN: memcpy(out, circ_run_resid(r, s_mlp), N * C * sizeof *out); return 0;
	case CIRC_HOOK_RESID_POST:
		memcpy(out, circ_run_resid(r, s_mlp + 1), N * C * sizeof *out);
		return 0;
	case CIRC_HOOK_ATTN_OUT: {
		const float *a = circ_run_resid(r, s_mlp), *b = circ_run_resid(r, s_attn);
		for (size_t i = 0; i < N * C; i++)
			out[i] = a[i] - b[i];
		return 0;
	}
	case CIRC_HOOK_MLP_OUT:
		memcpy(out, circ_run_node_out(r, circ_topo_node_mlp(t, l)), N * C * sizeof *out);
		return 0;
	case CIRC_HOOK_LN2_NORMALIZED: return circ_run_mlp_input(r, l, !d->cfg.fold_ln, out, e);
	case CIRC_HOOK_ATTN_Z: {
		const float *fz = circ_run_attn_z(r, l);
		if (fz) { /* the families' runs keep z */
			memcpy(out, fz, N * (size_t)d->cfg.d_in * sizeof *out);
			return 0;
		}
		/* GPT-2: z = A v, values from ln_1 of the residual, weighted by
		 * the attention probabilities the run kept. */
		int H = mc->n_head, D = circ_config_head_dim(mc), B = circ_run_b(r),
		    T = circ_run_t(r);
		float *ln = circ_xmalloc(N * C * sizeof *ln), *v = circ_xmalloc(N * C * sizeof *v);
		circ_layernorm_fwd(ln, C, NULL, NULL, circ_run_resid(r, s_attn), C, lw->ln1_w,
				   lw->ln1_b, (int)N, C, (float)mc->layer_norm_epsilon);
		circ_gemm(0, 0, (int)N, C, C, 1.0f, ln, C, lw->attn_w + 2 * C, 3 * C, 0.0f, v, C);
		for (size_t i = 0; i < N; i++)
			for (int q = 0; q < C; q++)
				v[i * C + q] += lw->attn_b[2 * C + q];
		const float *A = circ_run_attn(r, l);
		for (int b = 0; b < B; b++)
			for (int hh = 0; hh < H; hh++)
				for (int ti = 0; ti < T; ti++) {
					const float *a = A + (((size_t)b * H + hh) * T + ti) * T;
					float *z = out + ((size_t)b * T + ti) * C + (size_t)hh * D;
					memset(z, 0, (size_t)D * sizeof *z);
					for (int tj = 0; tj <= ti; tj++) {
						const float *vj =
						    v + ((size_t)b * T + tj) * C + (size_t)hh * D;
						for (int q = 0; q < D; q++)
							z[q] += a[tj] * vj[q];
					}
				}
		free(ln);
		free(v);
		return 0;
	}
	default: return circ_errorf(e, "hook '%s': cannot be read", d->cfg.hook_name);
	}
}

/* ---- measuring ---- */

void circ_dict_stats_init(circ_dict_stats *st, const circ_dict *d)
{
	memset(st, 0, sizeof *st);
	st->d_sae = d->cfg.d_sae;
	st->d_out = d->cfg.d_out;
	st->sum = circ_xcalloc((size_t)st->d_out, sizeof *st->sum);
	st->fire = circ_xcalloc((size_t)st->d_sae, sizeof *st->fire);
}

void circ_dict_stats_free(circ_dict_stats *st)
{
	free(st->sum);
	free(st->fire);
	st->sum = NULL;
	st->fire = NULL;
}

void circ_dict_stats_add(circ_dict_stats *st, const float *target, const float *out, const float *f,
			 int n)
{
	int O = st->d_out, S = st->d_sae;
	for (int i = 0; i < n; i++) {
		const float *t = target + (size_t)i * O, *o = out + (size_t)i * O;
		const float *fi = f + (size_t)i * S;
		for (int q = 0; q < O; q++) {
			double dq = (double)o[q] - t[q];
			st->sse += dq * dq;
			st->sum_sq += (double)t[q] * t[q];
			st->sum[q] += t[q];
		}
		for (int j = 0; j < S; j++)
			if (fi[j] != 0) {
				st->fire[j]++;
				st->l0 += 1;
			}
	}
	st->rows += n;
}

void circ_dict_stats_add_ce(circ_dict_stats *st, const float *clean, const float *spliced,
			    const float *zero, const int32_t *next, int n, int V)
{
	for (int i = 0; i < n; i++) {
		const float *c = clean + (size_t)i * V, *s = spliced + (size_t)i * V,
			    *z = zero + (size_t)i * V;
		double lc = circ_metric_lse(c, V), ls = circ_metric_lse(s, V), kl = 0;
		st->ce_clean += lc - c[next[i]];
		st->ce_spliced += ls - s[next[i]];
		st->ce_zero += circ_metric_lse(z, V) - z[next[i]];
		/* KL(clean || spliced), all in double: a spliced row equal to
		 * the clean one gives exactly 0, not the rounding of float
		 * log-probabilities */
		for (int v = 0; v < V; v++) {
			double a = (double)c[v] - lc, b = (double)s[v] - ls, pa = exp(a);
			if (pa > 0 || isnan(pa)) /* 0 log 0 = 0 */
				kl += pa * (a - b);
		}
		st->kl += kl;
	}
	st->ce_rows += n;
}

void circ_dict_stats_summary(const circ_dict_stats *st, double dense_threshold,
			     circ_dict_summary *out)
{
	memset(out, 0, sizeof *out);
	double N = (double)st->rows, var = st->sum_sq;
	out->rows = st->rows;
	out->ce_rows = st->ce_rows;
	for (int q = 0; q < st->d_out && N > 0; q++)
		var -= st->sum[q] * st->sum[q] / N;
	out->mse = N > 0 ? st->sse / (N * st->d_out) : NAN;
	out->fvu = N > 0 ? st->sse / var : NAN;
	out->l0 = N > 0 ? st->l0 / N : NAN;
	int64_t dense = 0;
	for (int j = 0; j < st->d_sae; j++) {
		if (!st->fire[j]) {
			out->n_dead++;
			continue;
		}
		double dens = (double)st->fire[j] / N;
		dense += dens > dense_threshold;
		int b = (int)floor((log10(dens) - CIRC_DICT_HIST_LO) / CIRC_DICT_HIST_STEP);
		b = b < 0 ? 0 : b >= CIRC_DICT_HIST_BINS ? CIRC_DICT_HIST_BINS - 1 : b;
		out->hist[b]++;
	}
	out->dead_frac = (double)out->n_dead / st->d_sae;
	out->dense_frac = (double)dense / st->d_sae;
	double R = (double)st->ce_rows;
	out->ce_clean = R > 0 ? st->ce_clean / R : NAN;
	out->ce_spliced = R > 0 ? st->ce_spliced / R : NAN;
	out->ce_zero = R > 0 ? st->ce_zero / R : NAN;
	out->kl = R > 0 ? st->kl / R : NAN;
	out->ce_loss_recovered = (out->ce_zero - out->ce_spliced) / (out->ce_zero - out->ce_clean);
}
