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
	circ_writer_header(w, "unit", 2, argv, NULL, 0, 1);
	circ_pack_kv_str(circ_writer_packer(w), "model_digest", "sha256:00");
	CHECK(circ_writer_end_record(w, &e) == 0);
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

int main(void)
{
	char dir[] = "/tmp/circ-unit-XXXXXX", path[256], cmd[600];
	circ_writer_opts o;
	CHECK(mkdtemp(dir) != NULL);
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
