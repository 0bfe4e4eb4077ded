/*
 * libFuzzer target for the GPT-2 tokenizer files (lib/bpe.c): the input is
 * vocab.json, a NUL byte, then merges.txt (without a NUL, all of it is
 * vocab.json and merges.txt is empty). A loaded tokenizer encodes and
 * decodes a short text, so that what the loader let through is used.
 * Differential, as fuzz_tokenizer_json: the default reader of vocab.json
 * against jansson alone.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz_bpe.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	size_t nv = nul ? (size_t)(nul - data) : size;
	char vpath[64], mpath[64];
	circ_error e, e2;
	circ_bpe *b;
	int vfd = fuzz_file(data, nv, vpath, sizeof vpath), mfd;
	if (vfd < 0)
		return 0;
	mfd = nul ? fuzz_file(nul + 1, size - nv - 1, mpath, sizeof mpath)
		  : fuzz_file("", 0, mpath, sizeof mpath);
	if (mfd < 0) {
		close(vfd);
		return 0;
	}
	b = circ_bpe_load_files(vpath, mpath, &e);
	fuzz_same_bpe(b, circ_bpe_load_files_with(vpath, mpath, CIRC_BPE_READ_JANSSON, &e2), &e,
		      &e2);
	if (b)
		fuzz_use_bpe(b);
	close(mfd);
	close(vfd);
	return 0;
}
