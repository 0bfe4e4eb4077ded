/*
 * libFuzzer target for the stream reader: any bytes, as a file would give
 * them, through sniffing, zstd, msgpack or JSON lines, every record, and the
 * JSON face of each record. The reader must fail cleanly, never crash.
 */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "json.h"
#include "stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	circ_error e;
	int fd = memfd_create("fuzz", 0);
	circ_reader *r;
	const msgpack_object *rec;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	if (fd < 0)
		return 0;
	if (size && write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	lseek(fd, 0, SEEK_SET);
	r = circ_reader_open_fd(fd, "fuzz", NULL, &e);
	if (r) {
		circ_tensor t;
		len = 0;
		circ_json_from_msgpack(circ_reader_header(r), &buf, &len, &cap, &e);
		while (circ_reader_next(r, &rec, &e) > 0) {
			len = 0;
			circ_json_from_msgpack(rec, &buf, &len, &cap, &e);
			if (circ_rec_tensor(rec, "t", &t, &e) == 0 && t.dtype == CIRC_F32) {
				float *f = malloc(t.nbytes + 4);
				circ_tensor_copy_f32(&t, f, &e);
				free(f);
			}
		}
		circ_reader_free(r);
	}
	free(buf);
	close(fd);
	return 0;
}
