/*
 * libFuzzer target for the JSON-lines reader (lib/stream.c, lib/json.c): the
 * input is the lines after a fixed header line, so every run takes the JSON
 * path (fuzz_stream covers the sniffing and the binary forms). Each record is
 * shown as JSON again, and its fields are read as tensors (maps or plain
 * arrays) and copied, as the tools do.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_file.h"
#include "json.h"
#include "stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char hdr[] = "{\"format\":\"circ\",\"version\":1,\"kind\":\"x\"}\n";
	char path[64], *buf = NULL;
	size_t len = 0, cap = 0;
	unsigned char *in = malloc(sizeof hdr - 1 + size + 1);
	circ_error e;
	circ_reader *r;
	const msgpack_object *rec;
	int fd;
	memcpy(in, hdr, sizeof hdr - 1);
	if (size)
		memcpy(in + sizeof hdr - 1, data, size);
	fd = fuzz_file(in, sizeof hdr - 1 + size, path, sizeof path);
	free(in);
	if (fd < 0)
		return 0;
	r = circ_reader_open(path, NULL, &e);
	if (r) {
		while (circ_reader_next(r, &rec, &e) > 0) {
			len = 0;
			if (circ_json_check(rec, &e) == 0)
				circ_json_from_msgpack(rec, &buf, &len, &cap, &e);
			for (uint32_t i = 0; i < rec->via.map.size; i++) {
				circ_tensor t;
				if (circ_obj_tensor(&rec->via.map.ptr[i].val, &t, &e) < 0)
					continue;
				int64_t n = circ_tensor_numel(&t);
				if (n <= 0 || n > (1 << 20))
					continue;
				float *f = malloc((size_t)n * sizeof *f);
				int32_t *k = malloc((size_t)n * sizeof *k);
				circ_tensor_copy_f32(&t, f, &e);
				circ_tensor_copy_i32(&t, k, &e);
				free(f);
				free(k);
			}
		}
		circ_reader_free(r);
	}
	free(buf);
	close(fd);
	return 0;
}
