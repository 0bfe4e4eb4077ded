/*
 * util: the bottom layer of lib/ — error values, allocation, strict number
 * parsing, SHA-256 for provenance digests, and terminal-only progress.
 */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

const char *circ_progname = "circ";

int circ_errorf(circ_error *e, const char *fmt, ...)
{
	va_list ap;
	if (!e)
		return -1;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
	return -1;
}

int circ_error_prefix(circ_error *e, const char *fmt, ...)
{
	char pre[512];
	size_t pl, ml, room;
	va_list ap;
	if (!e)
		return -1;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof pre, fmt, ap);
	va_end(ap);
	pl = strlen(pre);
	ml = strnlen(e->msg, sizeof e->msg - 1);
	room = sizeof e->msg - 1 - pl - 2; /* pl < 512 < sizeof e->msg - 2 */
	if (ml > room)
		ml = room;
	memmove(e->msg + pl + 2, e->msg, ml);
	memcpy(e->msg, pre, pl);
	e->msg[pl] = ':';
	e->msg[pl + 1] = ' ';
	e->msg[pl + 2 + ml] = 0;
	return -1;
}

static void oom(size_t n)
{
	fprintf(stderr, "%s: out of memory (allocating %zu bytes)\n", circ_progname, n);
	exit(1);
}

void *circ_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom(n);
	return p;
}

void *circ_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom(n * size);
	return p;
}

void *circ_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		oom(n);
	return q;
}

char *circ_xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(circ_xmalloc(n), s, n);
}

/* Buffers from this size on are aligned and rounded to 2 MiB and offered to
 * the kernel for transparent huge pages: activations and gradients of a
 * GPT-2-small batch are hundreds of megabytes, and touching them 4 KiB at
 * a time costs more page faults (slow under a hypervisor) than the work. */
#define HUGE_FROM ((size_t)4 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

void *circ_xalloc_aligned(size_t n)
{
	void *p = NULL;
	size_t r = (n + 63) & ~(size_t)63, align = 64;
	if (r >= HUGE_FROM) {
		r = (r + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
		align = HUGE_PAGE;
	}
	if (posix_memalign(&p, align, r ? r : 64) != 0)
		oom(n);
	circ_advise_huge(p, r);
	memset(p, 0, r ? r : 64);
	return p;
}

void circ_advise_huge(void *p, size_t n)
{
#ifdef MADV_HUGEPAGE
	/* the whole huge pages inside the range */
	uintptr_t a = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
	uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)(HUGE_PAGE - 1);
	if (n >= HUGE_FROM && b > a)
		(void)madvise((void *)a, b - a, MADV_HUGEPAGE); /* a hint: failure is fine */
#else
	(void)p;
	(void)n;
#endif
}

int circ_parse_i64(const char *s, int64_t *out)
{
	char *end;
	long long v;
	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

int circ_parse_f64(const char *s, double *out)
{
	char *end;
	double v;
	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno == ERANGE || *end || isnan(v))
		return -1;
	*out = v;
	return 0;
}

/* ---- SHA-256 (FIPS 180-4) ---- */
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

static void sha256_block(circ_sha256 *s, const unsigned char *p)
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
	a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3];
	e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
	for (i = 0; i < 64; i++) {
		uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) +
			      K256[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
	}
	s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
	s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
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
		sha256_block(s, s->buf);
		s->nbuf = 0;
	}
	for (; n >= 64; p += 64, n -= 64)
		sha256_block(s, p);
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
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return circ_errorf(e, "'%s': %s", path, strerror(errno));
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

/* ---- progress ---- */
double circ_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void circ_progress_start(circ_progress *p, const char *what, int64_t total)
{
	p->what = what;
	p->total = total;
	p->done = 0;
	p->last = 0;
	p->enabled = isatty(STDERR_FILENO) && !getenv("CIRC_NO_PROGRESS");
}

void circ_progress_step(circ_progress *p, int64_t n)
{
	double t;
	p->done += n;
	if (!p->enabled)
		return;
	t = circ_now();
	if (t - p->last < 0.2 && p->done != p->total)
		return;
	p->last = t;
	if (p->total > 0)
		fprintf(stderr, "\r%s: %s %lld/%lld (%.0f%%)", circ_progname, p->what,
			(long long)p->done, (long long)p->total,
			100.0 * (double)p->done / (double)p->total);
	else
		fprintf(stderr, "\r%s: %s %lld", circ_progname, p->what, (long long)p->done);
}

void circ_progress_end(circ_progress *p)
{
	if (p->enabled && p->last > 0)
		fprintf(stderr, "\r\033[K");
}

int circ_write_text_file(const char *dir, const char *name, const char *text, circ_error *e)
{
	char path[4096];
	FILE *f;
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
		return circ_errorf(e, "'%s/%s': path too long", dir, name);
	if (!(f = fopen(path, "w")))
		return circ_errorf(e, "'%s': cannot create: %s", path, strerror(errno));
	fputs(text, f);
	if (ferror(f) | fclose(f))
		return circ_errorf(e, "'%s': write error", path);
	return 0;
}
