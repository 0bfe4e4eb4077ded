/*
 * libFuzzer target for tokenizer.json reading (lib/bpe.c): any bytes as a
 * Hugging Face tokenizer.json; a loaded tokenizer encodes and decodes a
 * short text.
 */
#include <stdlib.h>

#include "bpe.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char text[] = "Hello world, it's 2024!\n  héllo <|endoftext|>";
	char path[64];
	circ_error e;
	circ_bpe *b;
	int fd = fuzz_file(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	b = circ_bpe_load_tokenizer_json(path, &e);
	if (b) {
		circ_ids ids = {0};
		if (circ_bpe_encode(b, text, sizeof text - 1, 0, &ids, &e) == 0) {
			size_t len;
			free(circ_bpe_decode(b, ids.v, ids.n, &len, &e));
		}
		circ_ids_free(&ids);
		circ_bpe_free(b);
	}
	close(fd);
	return 0;
}
