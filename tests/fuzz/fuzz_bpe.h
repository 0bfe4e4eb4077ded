/*
 * Shared by the tokenizer fuzz targets: a loaded tokenizer encodes and
 * decodes a short text (specials included), so that what the loader let
 * through is used, then is freed.
 */
#ifndef CIRC_FUZZ_BPE_H
#define CIRC_FUZZ_BPE_H

#include <stdlib.h>

#include "bpe.h"

static inline void fuzz_use_bpe(circ_bpe *b)
{
	static const char text[] = "Hello world, it's 2024!\n  héllo <|endoftext|>";
	circ_ids ids = {0};
	circ_error e;
	if (circ_bpe_encode(b, text, sizeof text - 1, 0, &ids, &e) == 0) {
		size_t len;
		free(circ_bpe_decode(b, ids.v, ids.n, &len, &e));
	}
	circ_ids_free(&ids);
	circ_bpe_free(b);
}

#endif
