/*
 * model_weights: parameters (see model.h, "weights" and "the model"):
 * loading, saving, random weights and the digest.
 *
 * Loading. config.json is parsed by model_config.c; model.safetensors is
 * mapped (lib/safetensors) and each tensor is matched against a table built
 * from the config (name, shape, destination). F32 tensors that are 4-byte
 * aligned are used in place; others are converted once into one owned
 * buffer.
 *
 * The other families: their config is read in full (model_config.c) and
 * their checkpoint (one file or shards, lib/safetensors' sets) checked
 * against the family's table of names and shapes (model_names.c); as no
 * forward runs them yet, circ_model_open then refuses them by name, and
 * circ_model_describe reports what was read.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_impl.h"
#include "model_names.h"
#include "rng.h"
#include "safetensors.h"
#include "stream.h"

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
	if (m->set)
		return circ_st_set_check_unchanged(m->set, e);
	return m->st ? circ_st_check_unchanged(m->st, e) : 0;
}

void circ_model_free(circ_model *m)
{
	if (!m)
		return;
	circ_st_close(m->st);
	circ_st_set_close(m->set);
	free(m->fw.layers);
	free(m->fp);
	circ_topology_free(m->topo);
	model_bf16_free(m->bf16);
	model_pk_free(m->pk);
	free(m->own);
	free(m->w.mem);
	free(m->w.layers);
	free(m->config_bytes);
	free(m->dir);
	free(m);
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

/* The weights of a family other than GPT-2, checked against its table:
 * every tensor expected, nothing unexpected (known buffers aside), F32, F16
 * or BF16, the shape the config gives. */
static int family_check(const char *dir, const circ_config *c, const char *cfg_path, circ_error *e)
{
	circ_st_set *set = circ_st_set_open(dir, e);
	model_tensor *tab = NULL;
	const circ_st_tensor **found = NULL;
	int n;
	if (!set)
		return -1;
	n = model_names_bind(c, set, cfg_path, &tab, &found, e);
	free(tab);
	free(found);
	circ_st_set_close(set);
	return n < 0 ? -1 : 0;
}

char *circ_model_describe(const char *dir, circ_error *e)
{
	char *cfg_path, *text, *out = NULL;
	circ_config c;
	size_t len;
	if (!model_is_dir(dir)) {
		circ_errorf(e, "'%s': not a model directory (config.json and model.safetensors)",
			    dir);
		return NULL;
	}
	cfg_path = model_join_path(dir, "config.json");
	text = model_read_file(cfg_path, &len, e);
	if (text && model_config_parse(cfg_path, text, len, &c, e) == 0) {
		if (c.model_type == CIRC_MODEL_GPT2) {
			circ_model *m = circ_model_open(dir, NULL, e);
			if (m)
				out = circ_config_describe(&m->cfg, m->w.lm_head == m->w.wte);
			circ_model_free(m);
		} else if (family_check(dir, &c, cfg_path, e) == 0) {
			out = circ_config_describe(&c, !c.untied);
		}
	}
	free(text);
	free(cfg_path);
	return out;
}

circ_model *circ_model_open(const char *dir, const circ_model_opts *o, circ_error *e)
{
	circ_model *m = circ_xcalloc(1, sizeof *m);
	circ_model_opts defo;
	char *cfg_path = model_join_path(dir, "config.json");
	char *st_path = model_join_path(dir, "model.safetensors");
	wentry *tab = NULL;
	const circ_st_tensor **found = NULL;
	int n_tab, lm_idx;
	size_t own_n = 0;
	float *p;
	char dims[200];

	if (!o) {
		circ_model_opts_default(&defo);
		o = &defo;
	}
	m->dir = circ_xstrdup(dir);
	if (!model_is_dir(dir)) {
		circ_errorf(e, "'%s': not a model directory (config.json and model.safetensors)",
			    dir);
		goto fail;
	}
	m->config_bytes = model_read_file(cfg_path, &m->config_len, e);
	if (!m->config_bytes ||
	    model_config_parse(cfg_path, m->config_bytes, m->config_len, &m->cfg, e) < 0)
		goto fail;
	if (o->raw_heads && (!model_is_family(m) || m->cfg.norm_place == CIRC_NORM_PRE)) {
		circ_errorf(e, "%s: raw head nodes: model_type %s has no norm after attention",
			    cfg_path, circ_model_type_name(m->cfg.model_type));
		goto fail;
	}
	if (model_is_family(m)) {
		m->gqa_grouped = o->gqa_grouped;
		m->raw_heads = o->raw_heads;
		if (model_family_open(m, dir, cfg_path, o, e) < 0 || model_topology_make(m, e) < 0)
			goto fail;
		free(cfg_path);
		free(st_path);
		return m;
	}
	m->st = circ_st_open(st_path, e);
	if (!m->st)
		goto fail;
	m->w.layers = circ_xcalloc((size_t)m->cfg.n_layer, sizeof *m->w.layers);
	snprintf(dims, sizeof dims,
		 "n_layer %d, n_head %d, n_embd %d, n_inner %d, n_positions %d, vocab_size %d",
		 m->cfg.n_layer, m->cfg.n_head, m->cfg.n_embd, m->cfg.n_inner, m->cfg.n_ctx,
		 m->cfg.vocab_size);
	tab = circ_xcalloc((size_t)(15 + 12 * m->cfg.n_layer), sizeof *tab);
	n_tab = weight_table(&m->cfg, &m->w, tab, 1);
	lm_idx = n_tab - 1;
	found = circ_xcalloc((size_t)n_tab, sizeof *found);

	/* Match every tensor of the file to the table. */
	for (int i = 0; i < circ_st_count(m->st); i++) {
		const circ_st_tensor *t = circ_st_at(m->st, i);
		const char *base = t->name;
		int k;
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
		if (model_check_tensor(st_path, t, tab[k].ndim, tab[k].shape, cfg_path, dims, e) <
		    0)
			goto fail;
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
	model_pk_init(m, !o->copy); /* owned copies are the caller's to change */
	if (model_topology_make(m, e) < 0)
		goto fail;
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
	model_pk_init(m, 0); /* the caller may change the weights: never packed */
	if (model_topology_make(m, e) < 0) {
		circ_model_free(m);
		return NULL;
	}
	return m;
}

circ_model *circ_model_new_family(const circ_config *c, circ_error *e)
{
	circ_model *m;
	if (c->model_type == CIRC_MODEL_GPT2 || c->model_type == CIRC_MODEL_GPT_NEOX) {
		circ_errorf(e, "a %s model is not made in memory by circ_model_new_family%s",
			    circ_model_type_name(c->model_type),
			    c->model_type == CIRC_MODEL_GPT2 ? " (circ_model_new makes it)" : "");
		return NULL;
	}
	if (circ_config_check(c, e) < 0)
		return NULL;
	m = circ_xcalloc(1, sizeof *m);
	m->cfg = *c;
	if (model_family_new(m, e) < 0 || model_topology_make(m, e) < 0) {
		circ_model_free(m);
		return NULL;
	}
	return m;
}

/* A family model's tensors in the flat order, F32 from its own parameters
 * (names point into m); -1 if it does not hold them. */
static int family_tensors(const circ_model *m, circ_st_tensor **out, circ_error *e)
{
	float *p = circ_model_params((circ_model *)(uintptr_t)m);
	int n = circ_model_n_param_tensors(m);
	if (!p)
		return circ_errorf(e,
				   "the %s model does not hold its weights in memory (open it "
				   "with copy)",
				   circ_model_type_name(m->cfg.model_type));
	*out = circ_xcalloc((size_t)n, sizeof **out);
	for (int i = 0; i < n; i++) {
		circ_param_info pi;
		circ_st_tensor *t = &(*out)[i];
		circ_model_param_info(m, i, &pi);
		t->name = pi.name;
		t->dtype = CIRC_F32;
		t->ndim = pi.ndim;
		t->shape[0] = pi.shape[0];
		t->shape[1] = pi.shape[1];
		t->data = p + pi.offset;
		t->nbytes = pi.count * sizeof(float);
	}
	return n;
}

/* config.json's text of a family model: as read, or made (llama). */
static char *family_config_text(const circ_model *m)
{
	if (m->config_bytes) {
		char *t = circ_xmalloc(m->config_len + 1);
		memcpy(t, m->config_bytes, m->config_len);
		t[m->config_len] = 0;
		return t;
	}
	return model_config_text(&m->cfg);
}

static int save_family(const circ_model *m, const char *dir, circ_error *e)
{
	circ_st_tensor *t = NULL;
	const char *meta[] = {"format", "pt"};
	char *cfgp, *stp, *text;
	int n, rc = -1;
	if ((n = family_tensors(m, &t, e)) < 0)
		return -1;
	if (mkdir(dir, 0777) < 0 && errno != EEXIST) {
		free(t);
		return circ_errorf(e, "'%s': cannot create directory: %s", dir, strerror(errno));
	}
	cfgp = model_join_path(dir, "config.json");
	stp = model_join_path(dir, "model.safetensors");
	text = m->config_bytes ? family_config_text(m) : NULL;
	if ((text ? circ_write_text(cfgp, text, e) : circ_config_write(cfgp, &m->cfg, e)) == 0 &&
	    circ_st_write(stp, n, t, 1, meta, e) == 0)
		rc = 0;
	free(text);
	free(cfgp);
	free(stp);
	free(t);
	return rc;
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
	cfgp = model_join_path(dir, "config.json");
	stp = model_join_path(dir, "model.safetensors");
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
	if (model_is_family(m))
		return save_family(m, dir, e);
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

/* ---- the digest cache ----
 *
 * Hashing a model of several GB would cost every command seconds, so the
 * digest of a safetensors file is kept in a small file per model under
 * $CIRC_CACHE_DIR (default $XDG_CACHE_HOME/circ, else ~/.cache/circ; "off"
 * turns it off), keyed as git's index keys a file: the device, inode, size,
 * modification and change times of model.safetensors, and the digest of
 * config.json's bytes. Any change to the file changes the key. A file
 * changed in the last few seconds is not cached (a rewrite within the
 * timestamps' granularity would keep the key), and a cache entry that does
 * not hold exactly its key and a digest is ignored. The cache is only ever
 * a shortcut: without it the digest is computed, as before. */

#define DIGEST_CACHE_MIN_AGE 2.0 /* seconds since the file last changed */

static int cache_dir(char *out, size_t n)
{
	const char *d = getenv("CIRC_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"),
		   *h = getenv("HOME");
	int k;
	if (d)
		k = (*d && strcmp(d, "off")) ? snprintf(out, n, "%s", d) : -1;
	else if (x && *x)
		k = snprintf(out, n, "%s/circ", x);
	else if (h && *h)
		k = snprintf(out, n, "%s/.cache/circ", h);
	else
		k = -1;
	return k < 0 || (size_t)k >= n ? -1 : 0;
}

/* One model's cache entry: its file, its key, and the directory. */
typedef struct digest_entry {
	char dir[3072], path[4096], key[512];
} digest_entry;

/* The model's one weights file, or NULL (in memory, or shards). */
static const circ_st *model_single_st(const circ_model *m)
{
	if (m->st)
		return m->st;
	if (m->set && circ_st_set_files(m->set) == 1)
		return circ_st_set_file(m->set, 0);
	return NULL;
}

/* Fills d for m; -1 when there is no cache or the file changed too lately
 * for its identity to be trusted. */
static int cache_entry(const circ_model *m, digest_entry *d)
{
	char id[256], cfg[72], name[72];
	double age;
	circ_sha256 s;
	if (cache_dir(d->dir, sizeof d->dir) < 0)
		return -1;
	circ_st_identity(model_single_st(m), id, sizeof id, &age);
	if (age < DIGEST_CACHE_MIN_AGE)
		return -1;
	circ_sha256_init(&s);
	circ_sha256_update(&s, m->config_bytes, m->config_len);
	circ_sha256_final_hex(&s, cfg);
	if ((size_t)snprintf(d->key, sizeof d->key, "circ-digest 1 %s config %s", id, cfg) >=
	    sizeof d->key)
		return -1;
	circ_sha256_init(&s);
	circ_sha256_update(&s, d->key, strlen(d->key));
	circ_sha256_final_hex(&s, name);
	/* name is "sha256:<hex>": the hex names the entry */
	if ((size_t)snprintf(d->path, sizeof d->path, "%s/digest-%.40s", d->dir, name + 7) >=
	    sizeof d->path)
		return -1;
	return 0;
}

/* The digest an entry holds: exactly its key, a newline, a digest, a newline. */
static int cache_get(const digest_entry *d, char out[72])
{
	size_t len, k = strlen(d->key);
	circ_error e;
	char *t = circ_read_file(d->path, 4096, &len, &e);
	int ok;
	if (!t)
		return -1;
	ok = len == k + 1 + 71 + 1 && !strncmp(t, d->key, k) && t[k] == '\n' &&
	     !strncmp(t + k + 1, "sha256:", 7) && t[len - 1] == '\n';
	for (size_t i = k + 1 + 7; ok && i < len - 1; i++)
		ok = (t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f');
	if (ok)
		snprintf(out, 72, "%.71s", t + k + 1);
	free(t);
	return ok ? 0 : -1;
}

/* Best effort: a cache that cannot be written is no cache. */
static void cache_put(digest_entry *d, const char *digest)
{
	char text[600];
	circ_error e;
	if (access(d->dir, W_OK) != 0) {
		/* make it and its parent (~/.cache) if absent */
		char *slash = strrchr(d->dir, '/');
		if (slash && slash != d->dir) {
			*slash = 0;
			mkdir(d->dir, 0777);
			*slash = '/';
		}
		if (mkdir(d->dir, 0777) != 0 && errno != EEXIST)
			return;
	}
	snprintf(text, sizeof text, "%s\n%s\n", d->key, digest);
	(void)circ_write_text(d->path, text, &e);
}

const char *circ_model_digest(circ_model *m, circ_error *e)
{
	circ_sha256 s;
	digest_entry d;
	int cached;
	if (m->have_digest)
		return m->digest;
	cached = model_single_st(m) && cache_entry(m, &d) == 0;
	if (cached && cache_get(&d, m->digest) == 0) {
		m->have_digest = 1;
		return m->digest;
	}
	circ_sha256_init(&s);
	if (m->set) {
		/* config.json, then each file of the set in order (shards by name) */
		circ_sha256_update(&s, m->config_bytes, m->config_len);
		for (int k = 0; k < circ_st_set_files(m->set); k++) {
			size_t len;
			const void *b = circ_st_bytes(circ_st_set_file(m->set, k), &len);
			circ_sha256_update(&s, b, len);
		}
	} else if (m->st) {
		size_t len;
		const void *b = circ_st_bytes(m->st, &len);
		circ_sha256_update(&s, m->config_bytes, m->config_len);
		circ_sha256_update(&s, b, len);
	} else if (model_is_family(m)) {
		char *t = family_config_text(m);
		circ_st_tensor *ts = NULL;
		const char *meta[] = {"format", "pt"};
		int n = family_tensors(m, &ts, e);
		circ_sha256_update(&s, t, strlen(t));
		free(t);
		if (n < 0 || circ_st_serialize(n, ts, 1, meta, sha_sink, &s, e) < 0) {
			free(ts);
			return NULL;
		}
		free(ts);
	} else {
		char *t = model_config_text(&m->cfg), **names = NULL;
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
	if (cached)
		cache_put(&d, m->digest);
	return m->digest;
}
