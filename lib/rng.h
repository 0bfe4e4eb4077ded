/*
 * rng: circ's one pseudo-random number generator, so that every tool that
 * takes --seed produces the same bytes on every machine.
 *
 * The generator is xoshiro256** (Blackman and Vigna 2018) with its 256-bit
 * state filled from the 64-bit seed by four steps of splitmix64, as the
 * xoshiro authors recommend. Derived draws are specified exactly (no libc
 * rand, no floating point in integer draws), so a stream of draws is a pure
 * function of the seed and the sequence of calls:
 *   circ_rng_below(n)    Lemire's multiply-shift with rejection (unbiased)
 *   circ_rng_uniform()   top 53 bits of a draw, times 2^-53: [0, 1)
 *   circ_rng_normal()    Box-Muller on two uniforms, no cached second value
 *                        (libm's log/cos may differ in the last bit between
 *                        C libraries; integer draws never do)
 * Independent streams for shards or threads: seed each with
 * circ_rng_seed_stream(seed, k), which runs splitmix64 on seed and k so that
 * streams never share a state prefix by construction of the seeding.
 *
 * Not for cryptography.
 */
#ifndef CIRC_RNG_H
#define CIRC_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct circ_rng {
	uint64_t s[4];
} circ_rng;

/* One step of splitmix64: advances *x and returns the next output. Exposed
 * because it is also a good 64-bit mixer for seeds and hashes. */
uint64_t circ_splitmix64(uint64_t *x);

/* Seeds the generator from a 64-bit seed (any value, 0 included). */
void circ_rng_seed(circ_rng *r, uint64_t seed);
/* Seeds stream k of a family: different k give unrelated sequences. */
void circ_rng_seed_stream(circ_rng *r, uint64_t seed, uint64_t k);
/* Next 64 random bits (xoshiro256**). */
uint64_t circ_rng_next(circ_rng *r);
/* Uniform integer in [0, n); n must be > 0 (returns 0 for n == 0). */
uint64_t circ_rng_below(circ_rng *r, uint64_t n);
/* Uniform integer in [lo, hi]; requires lo <= hi. */
int64_t circ_rng_range(circ_rng *r, int64_t lo, int64_t hi);
/* Uniform double in [0, 1) with 53 random bits. */
double circ_rng_uniform(circ_rng *r);
/* Standard normal draw (Box-Muller; consumes two 64-bit draws). */
double circ_rng_normal(circ_rng *r);
/* Fisher-Yates shuffle of n items of size bytes each (size <= 256),
 * from the last item down: item i swaps with item circ_rng_below(i + 1). */
void circ_rng_shuffle(circ_rng *r, void *base, size_t n, size_t size);
/* Writes k distinct values from [0, n) into out in draw order, k <= n
 * (a partial Fisher-Yates over an index array; O(n) memory). Returns -1 if
 * k > n, else 0. */
int circ_rng_sample(circ_rng *r, size_t n, size_t k, size_t *out);

#endif
