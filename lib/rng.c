/*
 * rng: xoshiro256** seeded by splitmix64, and the exact derived draws that
 * rng.h specifies. Every draw is written out so that a port to another
 * language (the unit test keeps reference values) reproduces it bit for bit.
 */
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* GCC and Clang on 64-bit targets; __extension__ keeps -Wpedantic quiet. */
__extension__ typedef unsigned __int128 u128;

uint64_t circ_splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

void circ_rng_seed(circ_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = circ_splitmix64(&x);
}

void circ_rng_seed_stream(circ_rng *r, uint64_t seed, uint64_t k)
{
	/* Mix the stream number through splitmix64 before combining, so that
	 * (seed, k) and (seed + 1, k - 1) do not collide. */
	uint64_t x = k, mixed = circ_splitmix64(&x);
	circ_rng_seed(r, seed ^ mixed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t circ_rng_next(circ_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

uint64_t circ_rng_below(circ_rng *r, uint64_t n)
{
	/* Lemire (2019): the high word of x * n is uniform once draws whose low
	 * word falls below 2^64 mod n are rejected. */
	if (n == 0)
		return 0;
	u128 m = (u128)circ_rng_next(r) * n;
	uint64_t lo = (uint64_t)m;
	if (lo < n) {
		uint64_t thresh = (0 - n) % n;
		while (lo < thresh) {
			m = (u128)circ_rng_next(r) * n;
			lo = (uint64_t)m;
		}
	}
	return (uint64_t)(m >> 64);
}

int64_t circ_rng_range(circ_rng *r, int64_t lo, int64_t hi)
{
	uint64_t span = (uint64_t)hi - (uint64_t)lo;
	if (span == UINT64_MAX)
		return (int64_t)circ_rng_next(r);
	return (int64_t)((uint64_t)lo + circ_rng_below(r, span + 1));
}

double circ_rng_uniform(circ_rng *r)
{
	return (double)(circ_rng_next(r) >> 11) * 0x1.0p-53;
}

double circ_rng_normal(circ_rng *r)
{
	/* 1 - u is in (0, 1], so the log is finite. */
	double u1 = 1.0 - circ_rng_uniform(r);
	double u2 = circ_rng_uniform(r);
	return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

void circ_rng_shuffle(circ_rng *r, void *base, size_t n, size_t size)
{
	unsigned char tmp[256], *b = base;
	if (n < 2 || size == 0 || size > sizeof tmp)
		return;
	for (size_t i = n - 1; i > 0; i--) {
		size_t j = (size_t)circ_rng_below(r, (uint64_t)i + 1);
		if (j != i) {
			memcpy(tmp, b + i * size, size);
			memcpy(b + i * size, b + j * size, size);
			memcpy(b + j * size, tmp, size);
		}
	}
}

int circ_rng_sample(circ_rng *r, size_t n, size_t k, size_t *out)
{
	if (k > n)
		return -1;
	size_t *idx = circ_xmalloc((n ? n : 1) * sizeof *idx);
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	/* Forward partial Fisher-Yates: position i takes a random survivor. */
	for (size_t i = 0; i < k; i++) {
		size_t j = i + (size_t)circ_rng_below(r, (uint64_t)(n - i));
		size_t t = idx[i];
		idx[i] = idx[j];
		idx[j] = t;
		out[i] = idx[i];
	}
	free(idx);
	return 0;
}
