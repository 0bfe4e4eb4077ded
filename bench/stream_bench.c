/*
 * stream_bench: writes and reads a stream of tensor records of a given total
 * size through lib/stream, timing each, for bench/stream.sh to compare with
 * the zstd command line on the same bytes.
 *
 *   stream_bench write OUT MIB [--no-compress]   prints seconds
 *   stream_bench read IN                          prints seconds and checksum
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "stream.h"

/* Activation-like values: smooth plus noise, so zstd finds some redundancy
 * (exponents) but not much, as with real activations. */
static void fill(float *x, size_t n, uint64_t *s)
{
	for (size_t i = 0; i < n; i++) {
		*s = *s * 6364136223846793005ull + 1442695040888963407ull;
		float u = (float)(*s >> 40) / (float)(1 << 24);
		x[i] = sinf((float)i * 0.01f) + 0.25f * (u - 0.5f);
	}
}

static long peak_rss_kib(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

int main(int argc, char **argv)
{
	circ_error e;
	if (argc >= 4 && !strcmp(argv[1], "write")) {
		circ_writer_opts o;
		int64_t mib = atoll(argv[3]), shape[2] = {16, 16384};
		size_t n = 16 * 16384; /* 1 MiB per record */
		size_t pool = 64 * n;  /* records are slices of a 64 MiB pool, further apart
					 than zstd's window, so no record repeats another */
		float *x = circ_xmalloc(pool * 4);
		uint64_t s = 1;
		double t0;
		circ_writer *w;
		circ_writer_opts_default(&o);
		if (argc > 4 && !strcmp(argv[4], "--no-compress"))
			o.compress = 0;
		fill(x, pool, &s);
		t0 = circ_now();
		if (!(w = circ_writer_open(argv[2], &o, &e)))
			goto fail;
		if (circ_writer_header_fields(w, "bench", argc, argv, NULL, 0, NULL, 0, &e) < 0)
			goto fail;
		for (int64_t r = 0; r < mib; r++) {
			msgpack_packer *pk = circ_writer_packer(w);
			size_t off = (size_t)(r * 37 % 63) * n;
			msgpack_pack_map(pk, 2);
			circ_pack_kv_i64(pk, "id", r);
			circ_pack_kv_tensor(pk, "x", CIRC_F32, 2, shape, x + off);
			if (circ_writer_end_record(w, &e) < 0)
				goto fail;
		}
		if (circ_writer_close(w, &e) < 0)
			goto fail;
		printf("%.4f %ld\n", circ_now() - t0, peak_rss_kib());
		free(x);
		return 0;
	}
	if (argc >= 3 && !strcmp(argv[1], "read")) {
		double t0 = circ_now(), sum = 0;
		circ_reader *r = circ_reader_open(argv[2], "bench", &e);
		const msgpack_object *rec;
		int k;
		if (!r)
			goto fail;
		while ((k = circ_reader_next(r, &rec, &e)) > 0) {
			circ_tensor t;
			float f;
			if (circ_rec_tensor(rec, "x", &t, &e) < 0)
				goto fail;
			memcpy(&f, t.data, 4);
			sum += f;
		}
		if (k < 0)
			goto fail;
		circ_reader_free(r);
		printf("%.4f %ld %g\n", circ_now() - t0, peak_rss_kib(), sum);
		return 0;
	}
	fprintf(stderr, "usage: stream_bench write OUT MIB [--no-compress] | read IN\n");
	return 2;
fail:
	fprintf(stderr, "stream_bench: %s\n", e.msg);
	return 1;
}
