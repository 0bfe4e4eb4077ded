/*
 * libFuzzer target for the safetensors reader (lib/safetensors.c): any bytes
 * as a model.safetensors, through circ_st_open's checks, then every tensor's
 * bytes read and converted, as a model load would. The reader must refuse
 * what it cannot trust and never touch a byte outside the mapping.
 */
#include <stdlib.h>

#include "fuzz_file.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	circ_error e;
	circ_st *f;
	int fd = fuzz_file(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	f = circ_st_open(path, &e);
	if (f) {
		volatile unsigned sum = 0;
		circ_st_metadata(f, "format");
		for (int i = 0; i < circ_st_count(f); i++) {
			const circ_st_tensor *t = circ_st_at(f, i);
			const unsigned char *p = t->data;
			size_t esz = circ_dtype_size(t->dtype), n = esz ? t->nbytes / esz : 0;
			for (size_t k = 0; k < t->nbytes; k++)
				sum += p[k];
			if (circ_st_find(f, t->name) != t)
				abort();
			if (n && n <= (1u << 16) &&
			    (t->dtype == CIRC_F32 || t->dtype == CIRC_F16 ||
			     t->dtype == CIRC_BF16 || t->dtype == CIRC_F64)) {
				float *out = malloc(n * sizeof *out);
				circ_st_to_f32(out, t->data, t->dtype, n);
				free(out);
			}
		}
		circ_st_close(f);
	}
	close(fd);
	return 0;
}
