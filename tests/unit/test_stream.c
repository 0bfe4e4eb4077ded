/*
 * Unit tests for lib/stream and lib/json: tensor records through every
 * encoding, field accessors and their messages, concatenation, and a
 * differential check of the JSON face against the binary one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "stream.h"

static int fails;
#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c)) {                                                                        \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);      \
			fails++;                                                                   \
		}                                                                                  \
	} while (0)

/* arg goes into the header's "args": shards of one stream differ there */
static void write_stream_arg(const char *path, const circ_writer_opts *o, int nrec, char *arg)
{
	circ_error e;
	circ_writer *w = circ_writer_open(path, o, &e);
	char *argv[] = {"test", arg};
	float buf[1000];
	CHECK(w != NULL);
	circ_hdr_field f[] = {CIRC_HDR(STR, "model_digest", "sha256:00")};
	CHECK(circ_writer_header_fields(w, "unit", 2, argv, NULL, 0, f, CIRC_HDR_N(f), &e) == 0);
	for (int r = 0; r < nrec; r++) {
		msgpack_packer *pk = circ_writer_packer(w);
		int64_t shape[2] = {10, 100};
		for (int i = 0; i < 1000; i++)
			buf[i] = (float)r + 0.001f * (float)i;
		msgpack_pack_map(pk, 3);
		circ_pack_kv_i64(pk, "id", r);
		circ_pack_kv_f64(pk, "score", r * 0.5);
		circ_pack_kv_tensor(pk, "x", CIRC_F32, 2, shape, buf);
		CHECK(circ_writer_end_record(w, &e) == 0);
	}
	CHECK(circ_writer_close(w, &e) == 0);
}

static void write_stream(const char *path, const circ_writer_opts *o, int nrec)
{
	write_stream_arg(path, o, nrec, "--x");
}

static int read_stream(const char *path, int expect)
{
	circ_error e;
	circ_reader *r = circ_reader_open(path, "unit", &e);
	const msgpack_object *rec;
	float buf[1000];
	int n = 0, k;
	if (!r) {
		fprintf(stderr, "%s\n", e.msg);
		return -1;
	}
	CHECK(!strcmp(circ_reader_kind(r), "unit"));
	CHECK(!strncmp(circ_reader_header_digest(r), "sha256:", 7));
	while ((k = circ_reader_next(r, &rec, &e)) > 0) {
		int64_t id;
		double sc;
		circ_tensor t;
		CHECK(circ_rec_i64(rec, "id", &id, &e) == 0 && id == n % expect);
		CHECK(circ_rec_f64(rec, "score", &sc, &e) == 0 && sc == (double)id * 0.5);
		CHECK(circ_rec_tensor(rec, "x", &t, &e) == 0);
		CHECK(t.ndim == 2 && t.shape[0] == 10 && t.shape[1] == 100);
		CHECK(circ_tensor_copy_f32(&t, buf, &e) == 0);
		CHECK(buf[999] == (float)id + 0.001f * 999.0f);
		/* wrong types name the field */
		CHECK(circ_rec_i64(rec, "x", &id, &e) < 0);
		CHECK(!strcmp(e.msg, "field 'x': expected int, got map"));
		CHECK(circ_rec_tensor(rec, "nope", &t, &e) < 0);
		CHECK(!strcmp(e.msg, "missing field 'nope'"));
		n++;
	}
	if (k < 0)
		fprintf(stderr, "%s\n", e.msg);
	CHECK(k == 0);
	circ_reader_free(r);
	return n;
}

/* Unpacks the one object packed into sb (valid while u lives). */
static const msgpack_object *unpack_one(msgpack_sbuffer *sb, msgpack_unpacked *u)
{
	size_t off = 0;
	msgpack_unpacked_init(u);
	CHECK(msgpack_unpack_next(u, sb->data, sb->size, &off) == MSGPACK_UNPACK_SUCCESS);
	return &u->data;
}

/* A tensor map with the given shape and no data, packed by hand. */
static void pack_shape(msgpack_sbuffer *sb, int nd, const uint64_t *shape)
{
	msgpack_packer pk;
	msgpack_sbuffer_clear(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	circ_pack_kv_str(&pk, "dtype", "f32");
	circ_pack_str(&pk, "shape");
	msgpack_pack_array(&pk, (size_t)nd);
	for (int i = 0; i < nd; i++)
		msgpack_pack_uint64(&pk, shape[i]);
	circ_pack_str(&pk, "data");
	msgpack_pack_bin(&pk, 0);
}

/* h13.3: the element count of a shape is checked without wrapping. */
static void test_shape_overflow(void)
{
	msgpack_sbuffer sb;
	msgpack_unpacked u;
	circ_tensor t;
	circ_error e;
	const uint64_t wrap[2] = {16777216, 1ull << 40}, big[3] = {1 << 20, 1 << 20, 2},
		       wrap3[3] = {1ull << 32, 1ull << 32, 1ull << 32},
		       empty[3] = {0, 1ull << 40, 7};
	msgpack_sbuffer_init(&sb);
	pack_shape(&sb, 2, wrap);
	CHECK(circ_obj_tensor(unpack_one(&sb, &u), &t, &e) < 0);
	CHECK(strstr(e.msg, "shape too large") != NULL);
	msgpack_unpacked_destroy(&u);
	pack_shape(&sb, 3, big);
	CHECK(circ_obj_tensor(unpack_one(&sb, &u), &t, &e) < 0);
	CHECK(strstr(e.msg, "shape too large") != NULL);
	msgpack_unpacked_destroy(&u);
	pack_shape(&sb, 3, wrap3);
	CHECK(circ_obj_tensor(unpack_one(&sb, &u), &t, &e) < 0);
	msgpack_unpacked_destroy(&u);
	/* a zero dimension makes an empty tensor whatever the others are */
	pack_shape(&sb, 3, empty);
	CHECK(circ_obj_tensor(unpack_one(&sb, &u), &t, &e) == 0 && circ_tensor_numel(&t) == 0);
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
}

/* Packs the JSON text as msgpack through the JSON face. */
static void pack_json_text(msgpack_sbuffer *sb, const char *text)
{
	msgpack_packer pk;
	json_error_t je;
	json_t *j = json_loads(text, 0, &je);
	circ_error e;
	CHECK(j != NULL);
	msgpack_sbuffer_clear(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	CHECK(circ_json_to_msgpack(j, &pk, &e) == 0);
	json_decref(j);
}

/* h13.22: a plain array of numbers is a 1-d tensor. */
static void test_plain_arrays(void)
{
	msgpack_sbuffer sb;
	msgpack_unpacked u;
	const msgpack_object *o;
	circ_tensor t;
	circ_error e;
	int32_t iv[4];
	float fv[4];
	msgpack_sbuffer_init(&sb);
	pack_json_text(&sb, "{\"clean\": [464, 1175, -3]}");
	o = unpack_one(&sb, &u);
	CHECK(circ_rec_tensor(o, "clean", &t, &e) == 0);
	CHECK(t.dtype == CIRC_I32 && t.ndim == 1 && t.shape[0] == 3 && t.nbytes == 12);
	CHECK(circ_tensor_copy_i32(&t, iv, &e) == 0 && iv[0] == 464 && iv[1] == 1175 &&
	      iv[2] == -3);
	CHECK(circ_tensor_copy_f32(&t, fv, &e) == 0 && fv[1] == 1175.0f && fv[2] == -3.0f);
	msgpack_unpacked_destroy(&u);

	pack_json_text(&sb, "{\"x\": [1, 2.5, -0.125]}");
	o = unpack_one(&sb, &u);
	CHECK(circ_rec_tensor(o, "x", &t, &e) == 0 && t.dtype == CIRC_F32 && t.shape[0] == 3);
	CHECK(circ_tensor_copy_f32(&t, fv, &e) == 0 && fv[0] == 1.0f && fv[1] == 2.5f &&
	      fv[2] == -0.125f);
	CHECK(circ_tensor_copy_i32(&t, iv, &e) < 0);
	CHECK(!strcmp(e.msg, "expected integers, got float at index 1"));
	msgpack_unpacked_destroy(&u);

	pack_json_text(&sb, "{\"x\": [1, 3000000000]}");
	o = unpack_one(&sb, &u);
	CHECK(circ_rec_tensor(o, "x", &t, &e) == 0 && t.dtype == CIRC_I64);
	CHECK(circ_tensor_copy_i32(&t, iv, &e) < 0);
	CHECK(!strcmp(e.msg, "value 3000000000 at index 1 does not fit in i32"));
	msgpack_unpacked_destroy(&u);

	pack_json_text(&sb, "{\"x\": [], \"y\": [1, \"a\"], \"z\": 5}");
	o = unpack_one(&sb, &u);
	CHECK(circ_rec_tensor(o, "x", &t, &e) == 0 && t.ndim == 1 && t.shape[0] == 0);
	CHECK(circ_rec_tensor(o, "y", &t, &e) < 0);
	CHECK(!strcmp(e.msg, "field 'y': tensor: item 1 of the array is string, not a number"));
	CHECK(circ_rec_tensor(o, "z", &t, &e) < 0);
	CHECK(!strcmp(e.msg, "field 'z': expected a tensor map or an array of numbers, got int"));
	msgpack_unpacked_destroy(&u);
	msgpack_sbuffer_destroy(&sb);
}

/* Reads every record of the file through a reader; 0 or -1 with e set. */
static int read_path(const char *path, circ_error *e)
{
	circ_reader *r = circ_reader_open(path, NULL, e);
	const msgpack_object *rec;
	int k;
	if (!r)
		return -1;
	while ((k = circ_reader_next(r, &rec, e)) > 0)
		;
	circ_reader_free(r);
	return k;
}

/* The same for bytes, written to a file in dir. */
static int read_bytes(const char *dir, const void *buf, size_t n, circ_error *e)
{
	char path[300];
	FILE *f;
	snprintf(path, sizeof path, "%s/bytes", dir);
	f = fopen(path, "wb");
	CHECK(f && fwrite(buf, 1, n, f) == n && fclose(f) == 0);
	return read_path(path, e);
}

/* h13.17: nesting as deep as the unpacker allows reads; one more level is
 * named, in msgpack and in JSON lines alike (not "out of memory"). */
static void test_nesting(const char *dir)
{
	static const unsigned char hdr[] = "\x83\xa6"
					   "format"
					   "\xa4"
					   "circ"
					   "\xa7"
					   "version"
					   "\x01\xa4"
					   "kind"
					   "\xa1"
					   "x";
	static const unsigned char end[] = "\x81\xa4$end\x81\xa7records\x01";
	unsigned char buf[256];
	char js[512];
	circ_error e;
	for (int depth = 31; depth <= 33; depth++) {
		/* {"a": [[...[nil]...]]}: the map and depth-1 arrays, the innermost
		 * array empty or holding nil */
		for (int empty = 0; empty <= 1; empty++) {
			size_t n = 0;
			memcpy(buf, hdr, sizeof hdr - 1);
			n += sizeof hdr - 1;
			buf[n++] = 0x81, buf[n++] = 0xa1, buf[n++] = 'a';
			for (int i = 1; i < depth; i++)
				buf[n++] = (i == depth - 1 && empty) ? 0x90 : 0x91;
			if (!empty)
				buf[n++] = 0xc0;
			memcpy(buf + n, end, sizeof end - 1);
			n += sizeof end - 1;
			if (depth <= CIRC_MAX_DEPTH) {
				CHECK(read_bytes(dir, buf, n, &e) == 0);
			} else {
				CHECK(read_bytes(dir, buf, n, &e) < 0);
				CHECK(strstr(e.msg, "record 1: nesting deeper than 32 levels"));
			}
		}
		{
			size_t n = (size_t)snprintf(
			    js, sizeof js,
			    "{\"format\":\"circ\",\"version\":1,\"kind\":\"x\"}\n{\"a\":");
			for (int i = 1; i < depth; i++)
				js[n++] = '[';
			for (int i = 1; i < depth; i++)
				js[n++] = ']';
			js[n++] = '}';
			js[n++] = '\n';
			if (depth <= CIRC_MAX_DEPTH) {
				CHECK(read_bytes(dir, js, n, &e) == 0);
			} else {
				CHECK(read_bytes(dir, js, n, &e) < 0);
				CHECK(strstr(e.msg, "record 1: nesting deeper than 32 levels"));
			}
		}
	}
}

/* A map whose count disagrees with its entries fails loudly in binary mode
 * too (JSON mode unpacks each record), at the record or at close: too low a
 * count (extra entries), too high (missing entries), and a record left
 * open. */
static void test_map_count(const char *dir)
{
	char path[300];
	static float big[1 << 16]; /* a tensor that bypasses the writer's stage */
	for (int mode = 0; mode < 5; mode++) {
		circ_writer_opts o;
		circ_error e;
		circ_writer *w;
		circ_writer_opts_default(&o);
		o.compress = mode % 2 == 0;
		snprintf(path, sizeof path, "%s/count%d.circ", dir, mode);
		w = circ_writer_open(path, &o, &e);
		CHECK(w != NULL);
		CHECK(circ_writer_header_fields(w, "unit", 0, NULL, NULL, 0, NULL, 0, &e) == 0);
		msgpack_packer *pk = circ_writer_packer(w);
		if (mode == 0) { /* count 1, two entries */
			msgpack_pack_map(pk, 1);
			circ_pack_kv_i64(pk, "a", 1);
			circ_pack_kv_i64(pk, "b", 2);
			CHECK(circ_writer_end_record(w, &e) < 0);
			CHECK(strstr(e.msg, "count is lower") != NULL);
		} else if (mode == 1) { /* count 3, two entries */
			msgpack_pack_map(pk, 3);
			circ_pack_kv_i64(pk, "a", 1);
			circ_pack_kv_str(pk, "b", "x");
			CHECK(circ_writer_end_record(w, &e) < 0);
			CHECK(strstr(e.msg, "count is higher") != NULL);
		} else if (mode == 3) { /* count 3, two entries, one a large tensor */
			int64_t shape[1] = {1 << 16};
			msgpack_pack_map(pk, 3);
			circ_pack_kv_i64(pk, "a", 1);
			circ_pack_kv_tensor(pk, "x", CIRC_F32, 1, shape, big);
			CHECK(circ_writer_end_record(w, &e) < 0);
			CHECK(strstr(e.msg, "record 1: internal error") != NULL);
			CHECK(strstr(e.msg, "count is higher") != NULL);
		} else if (mode ==
			   4) { /* count 1, then a large tensor: caught before it is written */
			int64_t shape[1] = {1 << 16};
			msgpack_pack_map(pk, 1);
			circ_pack_kv_i64(pk, "a", 1);
			circ_pack_kv_tensor(pk, "x", CIRC_F32, 1, shape, big);
			CHECK(circ_writer_end_record(w, &e) < 0);
			CHECK(strstr(e.msg, "count is lower") != NULL);
		} else { /* a record packed, never ended */
			msgpack_pack_map(pk, 1);
			circ_pack_kv_i64(pk, "a", 1);
			CHECK(circ_writer_close(w, &e) < 0);
			CHECK(strstr(e.msg, "not ended") != NULL);
			w = NULL;
		}
		if (w)
			CHECK(circ_writer_close(w, &e) < 0);
		CHECK(access(path, F_OK) != 0); /* nothing committed */
	}
}

/* The header table: counts and order from the table, skipped fields left
 * out, and the reader filling the same table with errors naming the field. */
static void test_header_fields(const char *dir)
{
	char path[300];
	circ_error e;
	circ_writer *w;
	circ_reader *r;
	circ_writer_opts o;
	circ_writer_opts_default(&o);
	snprintf(path, sizeof path, "%s/hdr.circ", dir);
	w = circ_writer_open(path, &o, &e);
	CHECK(w != NULL);
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "s", "text"), CIRC_HDR_IF(0, I64, "gone", 7), CIRC_HDR(I64, "i", -3),
	    CIRC_HDR(F64, "f", 0.5),	CIRC_HDR(BOOL, "b", 1),
	};
	CHECK(circ_hdr_count(f, CIRC_HDR_N(f)) == 4);
	CHECK(circ_writer_header_fields(w, "unit", 0, NULL, NULL, 0, f, CIRC_HDR_N(f), &e) == 0);
	CHECK(circ_writer_close(w, &e) == 0);
	r = circ_reader_open(path, "unit", &e);
	CHECK(r != NULL);
	if (!r)
		return;
	const msgpack_object *h = circ_reader_header(r);
	CHECK(h->via.map.size == 11);
	CHECK(circ_obj_str_eq(&h->via.map.ptr[7].key, "s"));
	CHECK(circ_obj_str_eq(&h->via.map.ptr[8].key, "i"));
	circ_hdr_field g[] = {
	    CIRC_HDR_NEED(STR, "s"), CIRC_HDR_MAY(I64, "gone"), CIRC_HDR_NEED(I64, "i"),
	    CIRC_HDR_NEED(F64, "f"), CIRC_HDR_NEED(BOOL, "b"),
	};
	CHECK(circ_hdr_read(h, g, CIRC_HDR_N(g), &e) == 0);
	char *s = circ_hdr_strdup(&g[0]);
	CHECK(s && !strcmp(s, "text"));
	free(s);
	CHECK(g[1].skip && circ_hdr_strdup(&g[1]) == NULL);
	CHECK(g[2].i == -3 && g[3].f == 0.5 && g[4].i == 1);
	circ_hdr_field bad[] = {CIRC_HDR_NEED(I64, "s")};
	CHECK(circ_hdr_read(h, bad, 1, &e) < 0 && strstr(e.msg, "field 's'") != NULL);
	circ_hdr_field missing[] = {CIRC_HDR_NEED(I64, "gone")};
	CHECK(circ_hdr_read(h, missing, 1, &e) < 0 &&
	      strstr(e.msg, "missing field 'gone'") != NULL);
	circ_reader_free(r);
}

int main(void)
{
	char dir[] = "/tmp/circ-unit-XXXXXX", path[256], cmd[600];
	circ_writer_opts o;
	CHECK(mkdtemp(dir) != NULL);
	test_shape_overflow();
	test_plain_arrays();
	test_nesting(dir);
	test_map_count(dir);
	test_header_fields(dir);
	snprintf(path, sizeof path, "%s/a.circ", dir);

	circ_writer_opts_default(&o);
	write_stream(path, &o, 50);
	CHECK(read_stream(path, 50) == 50);

	o.compress = 0;
	write_stream(path, &o, 7);
	CHECK(read_stream(path, 7) == 7);

	o.json = 1;
	write_stream(path, &o, 5);
	CHECK(read_stream(path, 5) == 5);
	/* h13.5: the JSON lines end with the end record, and without it (a copy
	 * cut at a line boundary) the tool-written stream is incomplete */
	snprintf(cmd, sizeof cmd, "tail -n 1 %s | grep -qx '{\"$end\":{\"records\":5}}'", path);
	CHECK(system(cmd) == 0);
	snprintf(cmd, sizeof cmd, "head -n -1 %s/a.circ > %s/cut.jsonl", dir, dir);
	CHECK(system(cmd) == 0);
	{
		char cut[300];
		circ_error e;
		snprintf(cut, sizeof cut, "%s/cut.jsonl", dir);
		CHECK(read_path(cut, &e) < 0);
		CHECK(strstr(e.msg, "record 6: stream ends without its end record") != NULL);
		CHECK(read_bytes(
			  dir,
			  "{\"format\":\"circ\",\"version\":1,\"kind\":\"x\",\"tool\":\"t\"}\n", 52,
			  &e) < 0);
		CHECK(strstr(e.msg, "record 1: stream ends without its end record") != NULL);
	}

	/* concatenation of two compressed shards (headers of their own) */
	circ_writer_opts_default(&o);
	write_stream(path, &o, 3);
	snprintf(path, sizeof path, "%s/c.circ", dir);
	write_stream_arg(path, &o, 3, "--y");
	snprintf(cmd, sizeof cmd, "cat %s/a.circ %s/c.circ > %s/b.circ", dir, dir, dir);
	CHECK(system(cmd) == 0);
	snprintf(path, sizeof path, "%s/b.circ", dir);
	CHECK(read_stream(path, 3) == 6);
	/* the same shard twice is refused at its second header */
	snprintf(cmd, sizeof cmd, "cat %s/a.circ %s/a.circ > %s/b.circ", dir, dir, dir);
	CHECK(system(cmd) == 0);
	{
		circ_error e;
		const msgpack_object *rec;
		circ_reader *r = circ_reader_open(path, "unit", &e);
		int k = 0;
		CHECK(r != NULL);
		while (r && (k = circ_reader_next(r, &rec, &e)) > 0)
			;
		CHECK(k < 0 && strstr(e.msg, "record 4: concatenated stream repeats the header"));
		circ_reader_free(r);
	}

	/* sha256 known answer */
	{
		circ_sha256 s;
		char hex[72];
		circ_sha256_init(&s);
		circ_sha256_update(&s, "abc", 3);
		circ_sha256_final_hex(&s, hex);
		CHECK(!strcmp(
		    hex,
		    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
		circ_sha256_init(&s);
		for (int i = 0; i < 1000; i++)
			circ_sha256_update(&s, "a", 1);
		circ_sha256_final_hex(&s, hex);
		CHECK(!strcmp(
		    hex,
		    "sha256:41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"));
	}
	/* sha256: the SHA-extension and portable block functions agree on every
	 * length around the block and buffer boundaries, fed whole or in pieces */
	{
		static unsigned char buf[4099];
		char a[72], b[72];
		int accel = circ_sha256_accel(-1), bad = 0;
		for (size_t i = 0; i < sizeof buf; i++)
			buf[i] = (unsigned char)(i * 131u + (i >> 7));
		for (size_t n = 0; n < sizeof buf; n += n < 300 ? 1 : 61) {
			for (int mode = 0; mode < 2; mode++) {
				circ_sha256 s;
				circ_sha256_accel(mode);
				circ_sha256_init(&s);
				if (mode == 0) {
					circ_sha256_update(&s, buf, n);
				} else {
					size_t k = n / 3;
					circ_sha256_update(&s, buf, k);
					circ_sha256_update(&s, buf + k, n - k);
				}
				circ_sha256_final_hex(&s, mode ? b : a);
			}
			bad += strcmp(a, b) != 0;
		}
		CHECK(bad == 0);
		circ_sha256_accel(1);
		fprintf(stderr, "test_stream: sha256 with the SHA extensions: %s\n",
			circ_sha256_accel(-1) ? "yes (compared with the portable one)"
					      : "no (portable only)");
		circ_sha256_accel(accel);
	}
	/* strict number parsing */
	{
		int64_t v;
		double d;
		CHECK(circ_parse_i64("12", &v) == 0 && v == 12);
		CHECK(circ_parse_i64("12x", &v) < 0);
		CHECK(circ_parse_i64("99999999999999999999", &v) < 0);
		CHECK(circ_parse_f64("1e-3", &d) == 0 && d == 1e-3);
		CHECK(circ_parse_f64("nan", &d) < 0);
	}
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	if (fails)
		fprintf(stderr, "test_stream: %d failures\n", fails);
	return fails != 0;
}
