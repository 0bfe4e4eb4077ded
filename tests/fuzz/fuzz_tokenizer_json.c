/*
 * libFuzzer target for tokenizer.json reading (lib/bpe.c): any bytes as a
 * Hugging Face tokenizer.json; a loaded tokenizer encodes and decodes a
 * short text. Differential: the default reader (the fast one, jansson
 * where it gives up) and jansson alone load the same tokenizer or fail
 * with the same message (circ_bpe_reader); a difference aborts.
 */
#include <stdlib.h>

#include "fuzz_bpe.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	circ_error e, e2;
	circ_bpe *b;
	int fd = fuzz_file(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	b = circ_bpe_load_tokenizer_json(path, &e);
	fuzz_same_bpe(b, circ_bpe_load_tokenizer_json_with(path, CIRC_BPE_READ_JANSSON, &e2), &e,
		      &e2);
	if (b)
		fuzz_use_bpe(b);
	close(fd);
	return 0;
}
