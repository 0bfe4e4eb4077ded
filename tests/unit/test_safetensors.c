/*
 * test_safetensors: the writer and reader round-trip every dtype, shape and
 * metadata; each malformed file is refused with a message that names the
 * file and (where there is one) the tensor; half-precision conversions are
 * checked exhaustively against the compiler's _Float16 (all 65536 F16 bit
 * patterns, and f32 -> F16 rounding on ties and random values) and BF16
 * against a plain round-to-nearest-even written differently. Sets: a
 * sharded checkpoint reads as its tensors with the files that hold them, and
 * every broken index (missing shard, a tensor in two shards or in none of
 * those named, bad JSON, a path for a shard name) is refused naming the
 * index or the shard and the tensor.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rng.h"
#include "safetensors.h"
#include "util.h"
#include "check.h"

static char dir[256];

/* The compiler's half type is the reference for F16 (an extension in C11). */
__extension__ typedef _Float16 half_t;

/* A file of: 8-byte length of header, header, then ndata bytes (0..). */
static void write_raw(const char *path, const char *header, size_t hlen_claim, size_t ndata)
{
	FILE *f = fopen(path, "wb");
	size_t hl = strlen(header);
	unsigned char len8[8];
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)((uint64_t)hlen_claim >> (8 * i));
	fwrite(len8, 1, 8, f);
	fwrite(header, 1, hl, f);
	for (size_t i = 0; i < ndata; i++)
		fputc((int)(i & 0xff), f);
	fclose(f);
}

/* Opens a raw file and expects failure with each of the words in msg. */
static void expect_fail(const char *header, long hlen_claim, size_t ndata, const char *want1,
			const char *want2)
{
	char path[512];
	circ_error e = {{0}};
	circ_st *f;
	snprintf(path, sizeof path, "%s/bad.safetensors", dir);
	write_raw(path, header, hlen_claim < 0 ? strlen(header) : (size_t)hlen_claim, ndata);
	f = circ_st_open(path, &e);
	if (f) {
		fprintf(stderr, "accepted bad header: %s\n", header);
		failures++;
		circ_st_close(f);
		return;
	}
	if (!strstr(e.msg, "'") || !strstr(e.msg, "bad.safetensors") || !strstr(e.msg, want1) ||
	    (want2 && !strstr(e.msg, want2))) {
		fprintf(stderr, "message for %s lacks '%s'/'%s': %s\n", header, want1,
			want2 ? want2 : "", e.msg);
		failures++;
	}
}

static void test_roundtrip(void)
{
	char path[512];
	float f32[6] = {1, -2, 3.5f, 0, 1e-20f, -7};
	uint16_t f16[3] = {circ_f32_to_f16(1.5f), circ_f32_to_f16(-2), circ_f32_to_f16(65504)};
	uint16_t bf16[2] = {circ_f32_to_bf16(3.25f), circ_f32_to_bf16(-1e30f)};
	int32_t i32[2] = {7, -9};
	double f64[1] = {0.1};
	circ_st_tensor t[6] = {
	    {"a.weight", CIRC_F32, 2, {2, 3}, f32, sizeof f32},
	    {"b", CIRC_F16, 1, {3}, f16, sizeof f16},
	    {"c", CIRC_BF16, 2, {1, 2}, bf16, sizeof bf16},
	    {"d", CIRC_I32, 1, {2}, i32, sizeof i32},
	    {"e", CIRC_F64, 0, {0}, f64, sizeof f64},
	    {"empty", CIRC_F32, 2, {0, 4}, NULL, 0},
	};
	const char *meta[] = {"format", "pt", "note", "circ test"};
	circ_error e = {{0}};
	circ_st *f;
	float out[6];

	snprintf(path, sizeof path, "%s/ok.safetensors", dir);
	CHECK(circ_st_write(path, 6, t, 2, meta, &e) == 0);
	f = circ_st_open(path, &e);
	CHECK(f != NULL);
	if (!f) {
		fprintf(stderr, "%s\n", e.msg);
		return;
	}
	CHECK(circ_st_count(f) == 6);
	CHECK(!strcmp(circ_st_metadata(f, "note"), "circ test"));
	CHECK(circ_st_metadata(f, "absent") == NULL);
	const circ_st_tensor *a = circ_st_find(f, "a.weight");
	CHECK(a && a->dtype == CIRC_F32 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3);
	CHECK(a && circ_st_aligned(a) && ((uintptr_t)a->data & 7) == 0);
	CHECK(a && !memcmp(a->data, f32, sizeof f32));
	const circ_st_tensor *b = circ_st_find(f, "b");
	circ_st_to_f32(out, b->data, b->dtype, 3);
	CHECK(out[0] == 1.5f && out[1] == -2 && out[2] == 65504);
	const circ_st_tensor *c = circ_st_find(f, "c");
	circ_st_to_f32(out, c->data, c->dtype, 2);
	CHECK(out[0] == 3.25f && fabsf(out[1] + 1e30f) < 1e28f);
	const circ_st_tensor *d = circ_st_find(f, "d");
	CHECK(d && d->dtype == CIRC_I32 && !memcmp(d->data, i32, sizeof i32));
	const circ_st_tensor *ee = circ_st_find(f, "e");
	CHECK(ee && ee->ndim == 0 && ee->nbytes == 8);
	circ_st_to_f32(out, ee->data, ee->dtype, 1);
	CHECK(out[0] == 0.1f);
	const circ_st_tensor *em = circ_st_find(f, "empty");
	CHECK(em && em->nbytes == 0 && em->shape[0] == 0);
	/* in offset order */
	CHECK(!strcmp(circ_st_at(f, 0)->name, "a.weight") || circ_st_at(f, 0)->nbytes == 0);
	size_t len;
	CHECK(circ_st_bytes(f, &len) != NULL && len > 8);
	circ_st_close(f);
	circ_st_close(NULL);

	/* writer errors */
	circ_st_tensor dup[2] = {t[0], t[0]};
	CHECK(circ_st_write(path, 2, dup, 0, NULL, &e) < 0 && strstr(e.msg, "'a.weight'"));
	circ_st_tensor badn = t[0];
	badn.nbytes = 4;
	CHECK(circ_st_write(path, 1, &badn, 0, NULL, &e) < 0 && strstr(e.msg, "do not match"));
	CHECK(circ_st_write("/nonexistent-dir/x.safetensors", 1, t, 0, NULL, &e) < 0 &&
	      strstr(e.msg, "/nonexistent-dir/x.safetensors"));
	/* a failed write leaves no file */
	CHECK(access("/nonexistent-dir/x.safetensors", F_OK) != 0);
}

static void test_errors(void)
{
	char path[512];
	circ_error e = {{0}};
	FILE *f;
	snprintf(path, sizeof path, "%s/bad.safetensors", dir);

	f = fopen(path, "wb");
	fclose(f);
	CHECK(circ_st_open(path, &e) == NULL && strstr(e.msg, "too short") &&
	      strstr(e.msg, "bad.safetensors"));
	f = fopen(path, "wb");
	fwrite("abcde", 1, 5, f);
	fclose(f);
	CHECK(circ_st_open(path, &e) == NULL && strstr(e.msg, "too short"));
	CHECK(circ_st_open("/nonexistent.safetensors", &e) == NULL &&
	      strstr(e.msg, "'/nonexistent.safetensors'"));
	CHECK(circ_st_open("/tmp", &e) == NULL && strstr(e.msg, "not a regular file"));

	expect_fail("{}", 1000, 0, "exceeds the file", NULL);
	expect_fail("{\"a\":", -1, 0, "bad JSON", NULL);
	expect_fail("[1, 2]", -1, 0, "not a JSON object", NULL);
	expect_fail("{\"a\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", -1, 1, "'a'",
		    "unsupported dtype 'I8'");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,12]}}", -1, 12,
		    "'w'", "needs 24");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", -1, 4,
		    "'w'", "past the data region");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", -1, 8,
		    "'w'", "end before");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		    "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
		    -1, 12, "overlaps", "'w'");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		    "\"v\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
		    -1, 12, "belong to no tensor", "'v'");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 6,
		    "bytes 4-6", "belong to no tensor");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
		    "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
		    -1, 8, "bad JSON", "duplicate");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", -1, 4, "'w'", "'shape'");
	expect_fail("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "'w'", "'dtype'");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", -1, 4, "'w'", "data_offsets");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", -1, 4,
		    "'w'", "non-negative");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", -1,
		    4, "'w'", "unexpected field 'x'");
	expect_fail("{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
		    "\"data_offsets\":[0,4]}}",
		    -1, 4, "'w'", "too large");
	expect_fail("{\"__metadata__\":{\"k\":1}}", -1, 0, "metadata 'k'", NULL);
	expect_fail("{\"__metadata__\":[]}", -1, 0, "__metadata__", NULL);
	expect_fail("{\"w\":7}", -1, 0, "'w'", "not an object");
	expect_fail("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4,
		    "empty name", NULL);
	/* a correct minimal file still opens (the helper itself is sound) */
	{
		const char *hdr =
		    "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} ";
		write_raw(path, hdr, strlen(hdr), 4);
	}
	circ_st *ok = circ_st_open(path, &e);
	CHECK(ok != NULL);
	if (ok)
		CHECK(!circ_st_aligned(circ_st_find(ok, "w"))); /* 8 + 57 bytes: unaligned */
	circ_st_close(ok);
}

/* Round to nearest even written as arithmetic on the value, as a twin of the
 * bit-twiddling conversion. */
static float bf16_twin(float f)
{
	if (isnan(f) || isinf(f) || f == 0)
		return f;
	int ex;
	double m = frexp(f, &ex);     /* f = m 2^ex, 0.5 <= |m| < 1 */
	double scaled = ldexp(m, 8);  /* 8 significant bits */
	double r = nearbyint(scaled); /* default rounding mode: to even */
	return (float)ldexp(r, ex - 8);
}

/* circ_st_to_f32's bulk paths (vector where the CPU has them) against the
 * scalar conversions, every 16-bit pattern, from an odd byte offset and
 * with a tail shorter than a vector. */
static void test_bulk_narrow(void)
{
	size_t n = 65536 + 7;
	unsigned char *raw = malloc(2 * n + 1);
	float *out = malloc(n * sizeof(float));
	for (int k = 0; k < 2; k++) {
		circ_dtype dt = k ? CIRC_BF16 : CIRC_F16;
		int bad = 0;
		for (size_t i = 0; i < n; i++) {
			raw[1 + 2 * i] = (unsigned char)(i & 0xff);
			raw[2 + 2 * i] = (unsigned char)((i >> 8) & 0xff);
		}
		circ_st_to_f32(out, raw + 1, dt, n);
		for (size_t i = 0; i < n && !bad; i++) {
			uint16_t h = (uint16_t)i;
			float want = k ? circ_bf16_to_f32(h) : circ_f16_to_f32(h);
			bad = isnan(want) ? !isnan(out[i]) : memcmp(&want, &out[i], 4) != 0;
			if (bad)
				fprintf(stderr, "%s %04x: %g, want %g\n", k ? "bf16" : "f16", h,
					out[i], want);
		}
		CHECK(!bad);
	}
	free(raw);
	free(out);
}

static void test_half(void)
{
	circ_rng rng;
	circ_rng_seed(&rng, 7);
	for (uint32_t h = 0; h < 65536; h++) {
		half_t ref;
		uint16_t hh = (uint16_t)h;
		memcpy(&ref, &hh, 2);
		float f = circ_f16_to_f32(hh), rf = (float)ref;
		if (isnan(rf) ? !isnan(f) : memcmp(&f, &rf, 4) != 0) {
			fprintf(stderr, "f16 %04x: %g vs %g\n", h, f, rf);
			failures++;
			break;
		}
		if (!isnan(f) && circ_f32_to_f16(f) != hh) {
			fprintf(stderr, "f16 roundtrip %04x -> %g -> %04x\n", h, f,
				circ_f32_to_f16(f));
			failures++;
			break;
		}
	}
	for (int i = 0; i < 200000; i++) {
		float f;
		if (i < 100000) {
			uint32_t bits = (uint32_t)circ_rng_next(&rng);
			memcpy(&f, &bits, 4);
		} else {
			f = (float)(circ_rng_normal(&rng) * pow(2, (double)(i % 40) - 25));
		}
		if (isnan(f))
			continue;
		half_t r16 = (half_t)f;
		uint16_t want, got = circ_f32_to_f16(f);
		memcpy(&want, &r16, 2);
		if (got != want) {
			fprintf(stderr, "f32 %a -> f16 %04x, want %04x\n", f, got, want);
			failures++;
			break;
		}
		float bt = bf16_twin(f), bg = circ_bf16_to_f32(circ_f32_to_bf16(f));
		if (fabsf(f) >= 0x1p-126f && fabsf(f) < 3e38f && bt != bg) { /* normal range */
			fprintf(stderr, "f32 %a -> bf16 %a, want %a\n", f, bg, bt);
			failures++;
			break;
		}
	}
	CHECK(isnan(circ_bf16_to_f32(circ_f32_to_bf16(NAN))));
	CHECK(isnan(circ_f16_to_f32(circ_f32_to_f16(NAN))));
	CHECK(isinf(circ_f16_to_f32(circ_f32_to_f16(1e6f))));
}

static void write_text_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (!f)
		return;
	fputs(text, f);
	fclose(f);
}

/* dir/s/: shard a.safetensors (x, y), b.safetensors (z); index as given. */
static void make_shards(const char *sub, const char *index)
{
	char p[600];
	float v[4] = {1, 2, 3, 4};
	circ_st_tensor t[3] = {
	    {.name = "x", .dtype = CIRC_F32, .ndim = 1, .shape = {2}, .data = v, .nbytes = 8},
	    {.name = "y",
	     .dtype = CIRC_F32,
	     .ndim = 2,
	     .shape = {1, 2},
	     .data = v + 2,
	     .nbytes = 8},
	    {.name = "z", .dtype = CIRC_F32, .ndim = 1, .shape = {1}, .data = v, .nbytes = 4}};
	circ_error e = {{0}};
	snprintf(p, sizeof p, "rm -rf '%s/%s' && mkdir '%s/%s'", dir, sub, dir, sub);
	CHECK(system(p) == 0);
	snprintf(p, sizeof p, "%s/%s/a.safetensors", dir, sub);
	CHECK_MSG(circ_st_write(p, 2, t, 0, NULL, &e) == 0, e);
	snprintf(p, sizeof p, "%s/%s/b.safetensors", dir, sub);
	CHECK_MSG(circ_st_write(p, 1, t + 2, 0, NULL, &e) == 0, e);
	snprintf(p, sizeof p, "%s/%s/model.safetensors.index.json", dir, sub);
	write_text_file(p, index);
}

static void expect_set_fail(const char *index, const char *want1, const char *want2)
{
	char d[400];
	circ_error e = {{0}};
	circ_st_set *s;
	make_shards("bad", index);
	snprintf(d, sizeof d, "%s/bad", dir);
	s = circ_st_set_open(d, &e);
	if (s) {
		fprintf(stderr, "accepted bad index: %s\n", index);
		failures++;
		circ_st_set_close(s);
		return;
	}
	if (!strstr(e.msg, want1) || (want2 && !strstr(e.msg, want2))) {
		fprintf(stderr, "message for %s lacks '%s'/'%s': %s\n", index, want1,
			want2 ? want2 : "", e.msg);
		failures++;
	}
}

static void test_sets(void)
{
	char d[400], p[600];
	const char *file = NULL;
	circ_error e = {{0}};
	circ_st_set *s;
	const circ_st_tensor *t;
	make_shards("ok", "{\"metadata\": {\"total_size\": 20}, \"weight_map\": "
			  "{\"z\": \"b.safetensors\", \"x\": \"a.safetensors\", \"y\": "
			  "\"a.safetensors\"}}");
	snprintf(d, sizeof d, "%s/ok", dir);
	s = circ_st_set_open(d, &e);
	CHECK_MSG(s != NULL, e);
	if (s) {
		CHECK(circ_st_set_files(s) == 2 && circ_st_set_count(s) == 3);
		CHECK(circ_st_set_index(s) && strstr(circ_st_set_index(s), "index.json"));
		t = circ_st_set_find(s, "z", &file);
		CHECK(t && t->shape[0] == 1 && file && strstr(file, "/ok/b.safetensors"));
		t = circ_st_set_find(s, "y", &file);
		CHECK(t && t->ndim == 2 && ((const float *)t->data)[1] == 4 &&
		      strstr(file, "/ok/a.safetensors"));
		CHECK(circ_st_set_find(s, "w", NULL) == NULL);
		/* file by file, in the order of their names */
		CHECK(!strcmp(circ_st_set_at(s, 0, &file)->name, "x") && strstr(file, "a.safe"));
		CHECK(!strcmp(circ_st_set_at(s, 2, &file)->name, "z") && strstr(file, "b.safe"));
		CHECK(circ_st_set_at(s, 3, NULL) == NULL && circ_st_set_at(s, -1, NULL) == NULL);
		CHECK_MSG(circ_st_set_check_unchanged(s, &e) == 0, e);
		circ_st_set_close(s);
	}
	/* model.safetensors, when there, is the set (as transformers prefers it) */
	snprintf(p, sizeof p, "cp '%s/ok/b.safetensors' '%s/ok/model.safetensors'", dir, dir);
	CHECK(system(p) == 0);
	s = circ_st_set_open(d, &e);
	CHECK_MSG(s && circ_st_set_files(s) == 1 && circ_st_set_count(s) == 1 &&
		      !circ_st_set_index(s),
		  e);
	circ_st_set_close(s);
	/* neither file: the single file's error */
	snprintf(d, sizeof d, "%s/none", dir);
	CHECK(mkdir(d, 0777) == 0);
	s = circ_st_set_open(d, &e);
	CHECK(!s && strstr(e.msg, "none/model.safetensors'"));

	expect_set_fail("{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
			"\"z\": \"c.safetensors\"}}",
			"index.json': weight_map names shard 'c.safetensors'", "c.safetensors'");
	expect_set_fail("{\"weight_map\": {\"x\": \"a.safetensors\", \"z\": \"b.safetensors\"}}",
			"a.safetensors': tensor 'y' is not in the weight_map of", "index.json'");
	expect_set_fail("{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"b.safetensors\", "
			"\"z\": \"b.safetensors\"}}",
			"weight_map: tensor 'y' is not in its shard 'b.safetensors'", NULL);
	expect_set_fail("{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
			"\"z\": \"b.safetensors\", \"w\": \"a.safetensors\"}}",
			"tensor 'w' is not in its shard 'a.safetensors'", NULL);
	expect_set_fail("{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"a.safetensors\", "
			"\"x\": \"b.safetensors\"}}",
			"index.json': bad JSON", "duplicate");
	expect_set_fail("{\"weight_map\": {\"x\": ", "index.json': bad JSON", NULL);
	expect_set_fail("{\"weight_map\": {}}", "key 'weight_map'", NULL);
	expect_set_fail("[]", "key 'weight_map'", NULL);
	expect_set_fail("{\"weight_map\": {\"x\": \"../ok/a.safetensors\"}}",
			"tensor 'x': expected the file name of a shard", NULL);
	expect_set_fail("{\"weight_map\": {\"x\": 3}}", "tensor 'x': expected the file name", NULL);
	/* a tensor in two shards: b.safetensors also holds x */
	{
		char q[600];
		float v[2] = {5, 6};
		circ_st_tensor t2[2] = {{.name = "x",
					 .dtype = CIRC_F32,
					 .ndim = 1,
					 .shape = {2},
					 .data = v,
					 .nbytes = 8},
					{.name = "z",
					 .dtype = CIRC_F32,
					 .ndim = 1,
					 .shape = {1},
					 .data = v,
					 .nbytes = 4}};
		make_shards("two", "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": "
				   "\"a.safetensors\", \"z\": \"b.safetensors\"}}");
		snprintf(q, sizeof q, "%s/two/b.safetensors", dir);
		CHECK_MSG(circ_st_write(q, 2, t2, 0, NULL, &e) == 0, e);
		snprintf(d, sizeof d, "%s/two", dir);
		s = circ_st_set_open(d, &e);
		CHECK(!s && strstr(e.msg, "tensor 'x' is in two shards ('a.safetensors' and "
					  "'b.safetensors')"));
		circ_st_set_close(s);
	}
}

int main(void)
{
	snprintf(dir, sizeof dir, "/tmp/circ-test-st-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	test_roundtrip();
	test_errors();
	test_half();
	test_bulk_narrow();
	test_sets();
	{
		char cmd[300];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			failures++;
	}
	if (failures)
		fprintf(stderr, "test_safetensors: %d failures\n", failures);
	if (!failures)
		printf("test_safetensors: ok\n");
	return failures != 0;
}
