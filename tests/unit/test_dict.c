/* test_dict: dictionaries written and read back bit-exact (every
 * architecture, F32; F16/BF16 equal to their rounding; cfg.json checked
 * against SAELens's keys and types by tests/ref/dict_ref.py cfgcheck when
 * CIRC_ROOT is set, as make unit sets it), encode/decode
 * against the plain double-precision twins, TopK against a sort, the hook
 * names' table, and the reader's refusals (each naming file and key or
 * tensor). Numbers are compared with a stated tolerance: 1e-5 relative to
 * the row's scale (float32 sums of at most 64 terms against double). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "check.h"
#include "dict.h"
#include "rng.h"
#include "safetensors.h"

static char tmpdir[] = "/tmp/test_dict.XXXXXX";

static void fill(circ_dict *d, uint64_t seed)
{
	circ_rng r;
	circ_rng_seed(&r, seed);
	for (size_t i = 0; i < d->n_params; i++)
		d->mem[i] = (float)(circ_rng_normal(&r) * 0.3);
	if (d->threshold)
		for (int j = 0; j < d->cfg.d_sae; j++)
			d->threshold[j] = fabsf(d->threshold[j]) * 0.3f;
}

static circ_dict *make(circ_dict_arch a, int transcoder, int skip, uint64_t seed)
{
	circ_dict_cfg c;
	circ_error e;
	circ_dict_cfg_init(&c);
	c.arch = a;
	c.d_in = 12;
	c.d_sae = 40;
	c.d_out = 12;
	c.k = a == CIRC_DICT_TOPK ? 5 : 0;
	c.transcoder = transcoder;
	c.skip = skip;
	c.apply_b_dec_to_input = !transcoder;
	strcpy(c.hook_name,
	       transcoder ? "blocks.1.ln2.hook_normalized" : "blocks.0.hook_resid_pre");
	if (transcoder)
		strcpy(c.hook_out, "blocks.1.hook_mlp_out");
	if (a == CIRC_DICT_GATED) {
		c.norm = CIRC_DICT_NORM_EXPECTED_AVERAGE;
		c.scale = 0.75;
	}
	circ_dict *d = circ_dict_new(&c, &e);
	CHECK_MSG(d, e);
	fill(d, seed);
	return d;
}

static void test_roundtrip(void)
{
	circ_error e;
	struct {
		circ_dict_arch a;
		int tc, skip;
	} cases[] = {{CIRC_DICT_STANDARD, 0, 0}, {CIRC_DICT_TOPK, 0, 0},
		     {CIRC_DICT_JUMPRELU, 0, 0}, {CIRC_DICT_GATED, 0, 0},
		     {CIRC_DICT_STANDARD, 1, 1}, {CIRC_DICT_JUMPRELU, 1, 0},
		     {CIRC_DICT_TOPK, 1, 0},	 {CIRC_DICT_TOPK, 1, 1}};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		circ_dict *d = make(cases[i].a, cases[i].tc, cases[i].skip, 7 + i);
		char dir[256];
		snprintf(dir, sizeof dir, "%s/d%zu", tmpdir, i);
		CHECK_MSG(circ_dict_save(d, dir, NULL, &e) == 0, e);
		/* cfg.json's keys and JSON types are SAELens's (tests/ref/dict_ref.py
		 * holds the documented table) */
		const char *root = getenv("CIRC_ROOT");
		if (root) {
			char cmd[1024];
			snprintf(
			    cmd, sizeof cmd,
			    "/usr/bin/python3 '%s/tests/ref/dict_ref.py' cfgcheck '%s' >/dev/null",
			    root, dir);
			CHECK(system(cmd) == 0);
		}
		circ_dict *b = circ_dict_load(dir, &e);
		CHECK_MSG(b, e);
		if (!b)
			continue;
		CHECK(b->n_params == d->n_params);
		CHECK(!memcmp(b->mem, d->mem, d->n_params * sizeof(float)));
		CHECK(b->cfg.arch == d->cfg.arch && b->cfg.transcoder == d->cfg.transcoder);
		CHECK(b->cfg.skip == d->cfg.skip && b->cfg.k == d->cfg.k);
		CHECK(b->cfg.d_out == d->cfg.d_out && b->cfg.scale == d->cfg.scale);
		CHECK(b->cfg.apply_b_dec_to_input == d->cfg.apply_b_dec_to_input);
		CHECK(!strcmp(b->cfg.hook_name, d->cfg.hook_name));
		CHECK(!strcmp(b->cfg.hook_out, d->cfg.hook_out));
		/* F16 and BF16: each weight is its rounding */
		const char *dts[] = {"F16", "BF16"};
		for (int k = 0; k < 2; k++) {
			CHECK_MSG(circ_dict_save(d, dir, dts[k], &e) == 0, e);
			circ_dict *h = circ_dict_load(dir, &e);
			CHECK_MSG(h, e);
			for (size_t q = 0; h && q < d->n_params; q++) {
				float want = k ? circ_bf16_to_f32(circ_f32_to_bf16(d->mem[q]))
					       : circ_f16_to_f32(circ_f32_to_f16(d->mem[q]));
				if (h->mem[q] != want) {
					CHECK(h->mem[q] == want);
					break;
				}
			}
			CHECK(!h || h->dtype == (k ? CIRC_BF16 : CIRC_F16));
			circ_dict_free(h);
		}
		circ_dict_free(b);
		circ_dict_free(d);
	}
}

static void test_encode(void)
{
	circ_rng r;
	circ_rng_seed(&r, 3);
	int n = 9;
	for (int a = 0; a < 4; a++)
		for (int tc = 0; tc < 2; tc++) {
			circ_dict *d = make((circ_dict_arch)a, tc, tc, 100 + a);
			int I = d->cfg.d_in, S = d->cfg.d_sae, O = d->cfg.d_out;
			float *x = malloc(sizeof(float) * n * I),
			      *f = malloc(sizeof(float) * n * S),
			      *fr = malloc(sizeof(float) * n * S),
			      *o = malloc(sizeof(float) * n * O),
			      *orf = malloc(sizeof(float) * n * O);
			for (int i = 0; i < n * I; i++)
				x[i] = (float)circ_rng_normal(&r);
			circ_dict_encode(d, x, n, f);
			circ_dict_encode_ref(d, x, n, fr);
			int active = 0;
			for (int i = 0; i < n * S; i++) {
				CHECK(fabsf(f[i] - fr[i]) <= 1e-5f * (1 + fabsf(fr[i])));
				active += f[i] != 0;
			}
			CHECK(active > 0 && active < n * S);
			if (a == CIRC_DICT_TOPK)
				for (int i = 0; i < n; i++) {
					int c = 0;
					for (int j = 0; j < S; j++)
						c += f[i * S + j] != 0;
					CHECK(c <= d->cfg.k);
				}
			circ_dict_decode(d, f, x, n, o);
			circ_dict_decode_ref(d, f, x, n, orf);
			for (int i = 0; i < n * O; i++)
				CHECK(fabsf(o[i] - orf[i]) <= 1e-5f * (1 + fabsf(orf[i])));
			free(x), free(f), free(fr), free(o), free(orf);
			circ_dict_free(d);
		}
}

/* TopK keeps the k largest pre-activations: against a full sort. */
static void test_topk(void)
{
	circ_dict *d = make(CIRC_DICT_TOPK, 0, 0, 5);
	int I = 12, S = 40, k = d->cfg.k;
	memset(d->b_dec, 0, sizeof(float) * I);
	memset(d->b_enc, 0, sizeof(float) * S);
	float x[12], f[40], pre[40];
	circ_rng r;
	circ_rng_seed(&r, 9);
	for (int t = 0; t < 50; t++) {
		for (int i = 0; i < I; i++)
			x[i] = (float)circ_rng_normal(&r);
		circ_dict_encode_ref(d, x, 1, f);
		for (int j = 0; j < S; j++) {
			double acc = 0;
			for (int i = 0; i < I; i++)
				acc += (double)x[i] * d->W_enc[i * S + j];
			pre[j] = (float)acc;
		}
		for (int j = 0; j < S; j++) {
			int above = 0;
			for (int q = 0; q < S; q++)
				above += pre[q] > pre[j];
			float want = above < k && pre[j] > 0 ? pre[j] : 0;
			CHECK(f[j] == want);
		}
	}
	circ_dict_free(d);
}

static void test_hooks(void)
{
	circ_hook h;
	circ_error e;
	char buf[64];
	for (int k = 0; k < CIRC_HOOK_COUNT; k++) {
		snprintf(buf, sizeof buf, "blocks.11.%s", circ_hook_point_name((circ_hook_kind)k));
		CHECK_MSG(circ_hook_parse(buf, &h, &e) == 0, e);
		CHECK(h.layer == 11 && h.kind == (circ_hook_kind)k);
		char back[64];
		circ_hook_format(&h, back, sizeof back);
		CHECK(!strcmp(back, buf));
	}
	CHECK(circ_hook_parse("blocks.0.mlp.hook_out", &h, &e) == 0 && h.kind == CIRC_HOOK_MLP_OUT);
	CHECK(circ_hook_parse("blocks.01.hook_resid_pre", &h, &e) < 0);
	CHECK(circ_hook_parse("blocks.x.hook_resid_pre", &h, &e) < 0);
	CHECK(circ_hook_parse("blocks.1.hook_q", &h, &e) < 0 && strstr(e.msg, "unknown point"));
	circ_topo_desc td;
	circ_topo_desc_init(&td, 2, 3);
	circ_topology *t = circ_topology_new(&td, &e);
	h = (circ_hook){CIRC_HOOK_RESID_PRE, 2};
	CHECK(circ_hook_check(t, &h, &e) < 0 && strstr(e.msg, "not in the model"));
	h = (circ_hook){CIRC_HOOK_MLP_OUT, 1};
	CHECK(circ_hook_check(t, &h, &e) == 0 && circ_hook_stage(t, &h) == 4);
	h = (circ_hook){CIRC_HOOK_RESID_PRE, 1};
	CHECK(circ_hook_stage(t, &h) == 2);
	h = (circ_hook){CIRC_HOOK_ATTN_Z, 0};
	CHECK(circ_hook_stage(t, &h) == 1);
	circ_topology_free(t);
}

/* Sets dir's cfg.json key to v (NULL: removes it). */
static void set_key(const char *dir, const char *key, json_t *v)
{
	char path[300];
	snprintf(path, sizeof path, "%s/cfg.json", dir);
	json_t *root = json_load_file(path, 0, NULL);
	CHECK(root != NULL);
	if (!root)
		return;
	if (v)
		json_object_set_new(root, key, v);
	else
		json_object_del(root, key);
	CHECK(json_dump_file(root, path, JSON_INDENT(1)) == 0);
	json_decref(root);
}

/* Saves an SAE of architecture a (seed; W_dec[7] NaN if nan_at_7) in dir,
 * then sets cfg.json's key to v (none if key is NULL). */
static void save_with(const char *dir, circ_dict_arch a, uint64_t seed, int nan_at_7,
		      const char *key, json_t *v)
{
	circ_error e;
	circ_dict *d = make(a, 0, 0, seed);
	d->W_dec[7] = nan_at_7 ? NAN : d->W_dec[7];
	CHECK_MSG(circ_dict_save(d, dir, NULL, &e) == 0, e);
	circ_dict_free(d);
	if (key)
		set_key(dir, key, v);
}

/* circ_dict_load on dir fails with a message that contains each of want
 * (NULL-terminated). */
static void expect_refused(const char *dir, const char *const *want)
{
	circ_error e;
	circ_dict *d = circ_dict_load(dir, &e);
	CHECK(d == NULL);
	circ_dict_free(d);
	for (; d == NULL && *want; want++)
		if (!strstr(e.msg, *want)) {
			fprintf(stderr, "test_dict: '%s' lacks '%s'\n", e.msg, *want);
			CHECK(strstr(e.msg, *want) != NULL);
		}
}

/* The reader's refusals, each naming the file and the key or tensor (the
 * catalogue, tests/catalogue/dict.cases, holds the tools' messages; here the
 * loader's error paths run under the leak checker of the sanitized unit
 * tests). The sizes are checked against the weights before the parameters'
 * memory is allocated: a cfg.json claiming 16,777,216 features of 1,024
 * (128 GiB of parameters) over a 12 x 40 file is refused by shape, not by
 * allocating. */
static void test_refusals(void)
{
	char dir[256];
	snprintf(dir, sizeof dir, "%s/bad", tmpdir);
	save_with(dir, CIRC_DICT_STANDARD, 3, 0, "d_sae", json_integer(1 << 24));
	set_key(dir, "d_in", json_integer(1024));
	expect_refused(dir,
		       (const char *const[]){"sae_weights.safetensors", "tensor 'W_enc'",
					     "shape [12, 40], expected [1024, 16777216]", NULL});
	save_with(dir, CIRC_DICT_STANDARD, 3, 0, "d_sae", json_integer(41));
	expect_refused(dir, (const char *const[]){"tensor 'W_enc'", "expected [12, 41]", NULL});
	save_with(dir, CIRC_DICT_STANDARD, 3, 0, "d_in", json_string("12"));
	expect_refused(dir, (const char *const[]){"cfg.json", "'d_in'", "a string", NULL});
	save_with(dir, CIRC_DICT_STANDARD, 3, 0, "d_sae", NULL);
	expect_refused(dir, (const char *const[]){"cfg.json", "'d_sae'", NULL});
	save_with(dir, CIRC_DICT_STANDARD, 3, 0, "d_sae", json_integer(0));
	expect_refused(dir, (const char *const[]){"cfg.json", "'d_sae'", "out of range", NULL});
	/* a JumpReLU needs a threshold the file lacks, a standard SAE takes none */
	save_with(dir, CIRC_DICT_STANDARD, 3, 0, "architecture", json_string("jumprelu"));
	expect_refused(dir, (const char *const[]){"sae_weights.safetensors",
						  "tensor 'threshold': missing", NULL});
	save_with(dir, CIRC_DICT_JUMPRELU, 4, 0, "architecture", json_string("standard"));
	expect_refused(dir, (const char *const[]){"tensor 'threshold'",
						  "not a tensor of a standard SAE", NULL});
	/* a weight that is not finite (after the parameters are allocated) */
	save_with(dir, CIRC_DICT_STANDARD, 5, 1, NULL, NULL);
	expect_refused(dir, (const char *const[]){"sae_weights.safetensors",
						  "tensor 'W_dec': holds NaN", NULL});
}

static void test_names(void)
{
	char buf[32];
	circ_dict *d = make(CIRC_DICT_STANDARD, 0, 0, 1);
	circ_dict_name(d, buf, sizeof buf);
	CHECK(!strcmp(buf, "resid_pre0"));
	strcpy(d->cfg.hook_name, "blocks.7.hook_resid_post");
	circ_dict_name(d, buf, sizeof buf);
	CHECK(!strcmp(buf, "resid7"));
	strcpy(d->cfg.hook_name, "blocks.2.attn.hook_z");
	circ_dict_name(d, buf, sizeof buf);
	CHECK(!strcmp(buf, "z2"));
	circ_dict_free(d);
	d = make(CIRC_DICT_STANDARD, 1, 0, 2);
	circ_dict_name(d, buf, sizeof buf);
	CHECK(!strcmp(buf, "tc1"));
	circ_dict_free(d);
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	test_roundtrip();
	test_encode();
	test_topk();
	test_hooks();
	test_names();
	test_refusals();
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		failures++;
	if (failures) {
		fprintf(stderr, "test_dict: %d failures\n", failures);
		return 1;
	}
	return 0;
}
