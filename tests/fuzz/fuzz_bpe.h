/*
 * Shared by the tokenizer fuzz targets: a loaded tokenizer encodes and
 * decodes a short text (specials included), so that what the loader let
 * through is used, then is freed.
 */
#ifndef CIRC_FUZZ_BPE_H
#define CIRC_FUZZ_BPE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"

/* The default reader's result a (message ea) against jansson's j (ej):
 * the same tokenizer, or the same failure; else abort. j is freed. */
static inline void fuzz_same_bpe(const circ_bpe *a, circ_bpe *j, const circ_error *ea,
				 const circ_error *ej)
{
	char why[160] = "";
	if (!a != !j || (!a && strcmp(ea->msg, ej->msg)) ||
	    (a && !circ_bpe_same(a, j, why, sizeof why))) {
		fprintf(stderr, "readers differ: %s / %s (%s)\n", a ? "loaded" : ea->msg,
			j ? "loaded" : ej->msg, why);
		abort();
	}
	circ_bpe_free(j);
}

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
