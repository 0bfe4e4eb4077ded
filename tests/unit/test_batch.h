/* test_batch.h: a batch of random prompts for the unit tests that patch
 * (test_patch, test_edgeprune): B examples of T tokens read at T-1, every
 * other token corrupted, answer 3 + i and wrong answer 7 + i. Allocated as
 * lib/batch allocates one: free it with circ_batch_free. */
#ifndef CIRC_TEST_BATCH_H
#define CIRC_TEST_BATCH_H

#include <stdint.h>
#include <string.h>

#include "batch.h"

static circ_batch *make_batch(int B, int T, int V, uint64_t seed)
{
	circ_batch *b = circ_xcalloc(1, sizeof *b);
	uint64_t s = seed;
	b->B = B;
	b->T = T;
	b->ex = circ_xcalloc((size_t)B, sizeof *b->ex);
	b->clean = circ_xmalloc((size_t)B * T * 4);
	b->corrupt = circ_xmalloc((size_t)B * T * 4);
	b->row0 = circ_xmalloc((size_t)B * sizeof(int));
	b->read_b = circ_xmalloc((size_t)B * 4);
	b->read_t = circ_xmalloc((size_t)B * 4);
	for (int i = 0; i < B; i++) {
		circ_example *x = &b->ex[i];
		x->id = i;
		x->T = T;
		x->clean = circ_xmalloc((size_t)T * 4);
		x->corrupt = circ_xmalloc((size_t)T * 4);
		for (int t = 0; t < T; t++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			x->clean[t] = (int32_t)((s >> 33) % (uint64_t)V);
			x->corrupt[t] = t % 2 ? (int32_t)((s >> 13) % (uint64_t)V) : x->clean[t];
		}
		memcpy(b->clean + (size_t)i * T, x->clean, (size_t)T * 4);
		memcpy(b->corrupt + (size_t)i * T, x->corrupt, (size_t)T * 4);
		x->npos = 1;
		x->pos = circ_xmalloc(4);
		x->pos[0] = T - 1;
		x->nans = x->nwrong = 1;
		x->ans = circ_xmalloc(4);
		x->wrong = circ_xmalloc(4);
		x->ans[0] = 3 + i;
		x->wrong[0] = 7 + i;
		b->row0[i] = i;
		b->read_b[i] = i;
		b->read_t[i] = T - 1;
	}
	b->n_read = B;
	return b;
}

#endif
