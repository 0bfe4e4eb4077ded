/*
 * util_sha256: SHA-256 (FIPS 180-4) for provenance digests. Two block
 * functions give the same digest: the portable one below, and one with the
 * x86 SHA extensions (SHA-NI: Intel since Goldmont/Ice Lake, AMD since Zen),
 * chosen at run time from CPUID. The digest of a 500 MB model takes about
 * 2.5 s portably and about 0.3 s with SHA-NI; models are hashed on every
 * command whose digest is not cached (CIRC_CACHE_DIR, model_weights.c).
 */
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI 1
#endif

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block_c(uint32_t *hs, const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h;
	int i;
	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = hs[0], b = hs[1], c = hs[2], d = hs[3];
	e = hs[4], f = hs[5], g = hs[6], h = hs[7];
	for (i = 0; i < 64; i++) {
		uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) +
			      K256[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
	}
	hs[0] += a, hs[1] += b, hs[2] += c, hs[3] += d;
	hs[4] += e, hs[5] += f, hs[6] += g, hs[7] += h;
}

static void sha256_blocks_c(uint32_t *hs, const unsigned char *p, size_t n)
{
	for (; n; n--, p += 64)
		sha256_block_c(hs, p);
}

#ifdef HAVE_SHA_NI
/* n blocks with the SHA extensions. The state is kept as the instructions
 * want it, (A, B, E, F) and (C, D, G, H); each group of four rounds adds
 * the next four schedule words W[4g..4g+3] (from the block for g < 4, else
 * W[i-16] + s0(W[i-15]) + W[i-7] + s1(W[i-2]) by msg1, alignr and msg2). */
__attribute__((target("sha,sse4.1,ssse3"))) static void
sha256_blocks_ni(uint32_t *hs, const unsigned char *p, size_t n)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);
	__m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)hs), 0xB1); /* CDAB */
	__m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(hs + 4)), 0x1B);
	__m128i s0 = _mm_alignr_epi8(t, s1, 8); /* ABEF */
	s1 = _mm_blend_epi16(s1, t, 0xF0);	/* CDGH */
	for (; n; n--, p += 64) {
		__m128i save0 = s0, save1 = s1, m[4];
		for (int g = 0; g < 16; g++) {
			__m128i w, k;
			if (g < 4) {
				w = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)),
						     bswap);
			} else {
				w = _mm_sha256msg1_epu32(m[g & 3], m[(g + 1) & 3]);
				w = _mm_add_epi32(
				    w, _mm_alignr_epi8(m[(g + 3) & 3], m[(g + 2) & 3], 4));
				w = _mm_sha256msg2_epu32(w, m[(g + 3) & 3]);
			}
			m[g & 3] = w;
			k = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *)(K256 + 4 * g)));
			s1 = _mm_sha256rnds2_epu32(s1, s0, k);
			s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(k, 0x0E));
		}
		s0 = _mm_add_epi32(s0, save0);
		s1 = _mm_add_epi32(s1, save1);
	}
	t = _mm_shuffle_epi32(s0, 0x1B);   /* FEBA */
	s1 = _mm_shuffle_epi32(s1, 0xB1);  /* DCHG */
	s0 = _mm_blend_epi16(t, s1, 0xF0); /* DCBA */
	s1 = _mm_alignr_epi8(s1, t, 8);	   /* HGFE */
	_mm_storeu_si128((__m128i *)hs, s0);
	_mm_storeu_si128((__m128i *)(hs + 4), s1);
}

static int cpu_has_sha(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(b & (1u << 29)))
		return 0;
	/* SSSE3 (pshufb) and SSE4.1 (blend) */
	return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 9)) && (c & (1u << 19));
}
#endif

/* -1: not chosen yet; 0 portable; 1 SHA-NI. Chosen once from CPUID (a
 * benign race: every thread chooses the same). */
static int sha_mode = -1;

int circ_sha256_accel(int on)
{
#ifdef HAVE_SHA_NI
	if (on >= 0 || sha_mode < 0)
		sha_mode = on != 0 && cpu_has_sha();
#else
	(void)on;
	sha_mode = 0;
#endif
	return sha_mode;
}

static void sha256_blocks(uint32_t *hs, const unsigned char *p, size_t n)
{
	if (sha_mode < 0)
		circ_sha256_accel(-1);
#ifdef HAVE_SHA_NI
	if (sha_mode == 1) {
		sha256_blocks_ni(hs, p, n);
		return;
	}
#endif
	sha256_blocks_c(hs, p, n);
}

void circ_sha256_init(circ_sha256 *s)
{
	static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
				       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	memcpy(s->h, iv, sizeof iv);
	s->len = 0;
	s->nbuf = 0;
}

void circ_sha256_update(circ_sha256 *s, const void *data, size_t n)
{
	const unsigned char *p = data;
	s->len += n;
	if (s->nbuf) {
		size_t k = 64 - s->nbuf < n ? 64 - s->nbuf : n;
		memcpy(s->buf + s->nbuf, p, k);
		s->nbuf += k, p += k, n -= k;
		if (s->nbuf < 64)
			return;
		sha256_blocks(s->h, s->buf, 1);
		s->nbuf = 0;
	}
	sha256_blocks(s->h, p, n / 64);
	p += n / 64 * 64;
	n %= 64;
	memcpy(s->buf, p, n);
	s->nbuf = n;
}

void circ_sha256_final_hex(circ_sha256 *s, char out[72])
{
	uint64_t bits = s->len * 8;
	unsigned char pad[72] = {0x80};
	size_t padn = (s->nbuf < 56 ? 56 : 120) - s->nbuf;
	int i;
	for (i = 0; i < 8; i++)
		pad[padn + i] = (unsigned char)(bits >> (56 - 8 * i));
	circ_sha256_update(s, pad, padn + 8);
	memcpy(out, "sha256:", 7);
	for (i = 0; i < 32; i++)
		sprintf(out + 7 + 2 * i, "%02x", (s->h[i / 4] >> (24 - 8 * (i % 4))) & 0xff);
}

int circ_sha256_file(const char *path, char out[72], circ_error *e)
{
	static unsigned char buf[1 << 16];
	circ_sha256 s;
	ssize_t n;
	struct stat st;
	int fd = circ_open_regular(path, &st, e);
	if (fd < 0)
		return -1;
	circ_sha256_init(&s);
	while ((n = read(fd, buf, sizeof buf)) > 0)
		circ_sha256_update(&s, buf, (size_t)n);
	if (n < 0) {
		int err = errno;
		close(fd);
		return circ_errorf(e, "'%s': %s", path, strerror(err));
	}
	close(fd);
	circ_sha256_final_hex(&s, out);
	return 0;
}
