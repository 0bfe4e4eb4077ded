/*
 * safetensors: mapped, validated reading and atomic writing of the
 * safetensors format (see safetensors.h for the rules enforced).
 *
 * Reading parses the JSON header with jansson (duplicate keys rejected),
 * builds the tensor table, sorts it by offset and then walks it once to find
 * overlaps and gaps. Names are looked up linearly: GPT-2 files hold a few
 * hundred tensors and each is looked up once.
 */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Header JSON larger than this is refused (the reference implementation's
 * limit is 100 MB). */
#define ST_MAX_HEADER (100u << 20)

struct circ_st {
	char *path;
	const unsigned char *map;
	size_t size;
	const unsigned char *data; /* data region */
	size_t data_size;
	int n;
	circ_st_tensor *t; /* (n), sorted by offset */
	char **names;	   /* owned copies of the names */
	int n_meta;
	char **meta;	/* (2 * n_meta) key, value */
	int fd;		/* of the mapped file, kept for circ_st_check_unchanged */
	struct stat st; /* at open, for the same */
	int guard;	/* SIGBUS guard slot of the mapping */
};

static const struct {
	const char *name;
	circ_dtype dtype;
} st_dtypes[] = {{"F64", CIRC_F64}, {"F32", CIRC_F32}, {"F16", CIRC_F16}, {"BF16", CIRC_BF16},
		 {"I64", CIRC_I64}, {"I32", CIRC_I32}, {"U8", CIRC_U8}};

static const char *st_dtype_name(circ_dtype d)
{
	for (size_t i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
		if (st_dtypes[i].dtype == d)
			return st_dtypes[i].name;
	return NULL;
}

static size_t st_dtype_size(circ_dtype d)
{
	switch (d) {
	case CIRC_F64:
	case CIRC_I64: return 8;
	case CIRC_F32:
	case CIRC_I32: return 4;
	case CIRC_F16:
	case CIRC_BF16: return 2;
	default: return 1;
	}
}

/* numel * size with overflow checks; -1 on overflow or a negative dim. */
static int st_nbytes(const int64_t *shape, int ndim, size_t esize, size_t *out)
{
	uint64_t n = 1;
	for (int i = 0; i < ndim; i++) {
		if (shape[i] < 0)
			return -1;
		if (shape[i] && n > UINT64_MAX / (uint64_t)shape[i])
			return -1;
		n *= (uint64_t)shape[i];
	}
	if (n > SIZE_MAX / esize)
		return -1;
	*out = (size_t)(n * esize);
	return 0;
}

static void shape_str(char *buf, size_t n, const int64_t *shape, int ndim)
{
	size_t len = 0;
	len += (size_t)snprintf(buf + len, n - len, "[");
	for (int i = 0; i < ndim && len < n; i++)
		len += (size_t)snprintf(buf + len, n - len, "%s%lld", i ? ", " : "",
					(long long)shape[i]);
	if (len < n)
		snprintf(buf + len, n - len, "]");
}

void circ_st_close(circ_st *f)
{
	if (!f)
		return;
	if (f->map) {
		circ_unguard_mapping(f->guard);
		munmap((void *)f->map, f->size);
	}
	if (f->fd >= 0)
		close(f->fd);
	for (int i = 0; i < f->n; i++)
		free(f->names[i]);
	for (int i = 0; i < 2 * f->n_meta; i++)
		free(f->meta[i]);
	free(f->names);
	free(f->t);
	free(f->meta);
	free(f->path);
	free(f);
}

typedef struct st_range {
	size_t begin, end;
	int idx;
} st_range;

static int range_cmp(const void *a, const void *b)
{
	const st_range *x = a, *y = b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return x->idx - y->idx;
}

/* Parses one tensor entry into t; -1 with a message (without the file). */
static int parse_entry(const char *name, json_t *v, const unsigned char *data, size_t data_size,
		       circ_st_tensor *t, size_t *begin, size_t *end, circ_error *e)
{
	json_t *dt, *shape, *offs, *x;
	const char *key;
	size_t i, nb;
	if (!json_is_object(v))
		return circ_errorf(e, "tensor '%s': entry is not an object", name);
	json_object_foreach(v, key, x)
	{
		if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
			return circ_errorf(e, "tensor '%s': unexpected field '%s'", name, key);
	}
	dt = json_object_get(v, "dtype");
	shape = json_object_get(v, "shape");
	offs = json_object_get(v, "data_offsets");
	if (!dt || !json_is_string(dt))
		return circ_errorf(e, "tensor '%s': missing or non-string 'dtype'", name);
	for (i = 0; i < sizeof st_dtypes / sizeof *st_dtypes; i++)
		if (!strcmp(json_string_value(dt), st_dtypes[i].name))
			break;
	if (i == sizeof st_dtypes / sizeof *st_dtypes)
		return circ_errorf(e, "tensor '%s': unsupported dtype '%s'", name,
				   json_string_value(dt));
	t->dtype = st_dtypes[i].dtype;
	if (!shape || !json_is_array(shape))
		return circ_errorf(e, "tensor '%s': missing or non-array 'shape'", name);
	if (json_array_size(shape) > CIRC_MAX_DIMS)
		return circ_errorf(e, "tensor '%s': %zu dimensions (at most %d)", name,
				   json_array_size(shape), CIRC_MAX_DIMS);
	t->ndim = (int)json_array_size(shape);
	json_array_foreach(shape, i, x)
	{
		if (!json_is_integer(x) || json_integer_value(x) < 0)
			return circ_errorf(
			    e, "tensor '%s': shape entry %zu is not a non-negative integer", name,
			    i);
		t->shape[i] = json_integer_value(x);
	}
	if (!offs || !json_is_array(offs) || json_array_size(offs) != 2 ||
	    !json_is_integer(json_array_get(offs, 0)) ||
	    !json_is_integer(json_array_get(offs, 1)) ||
	    json_integer_value(json_array_get(offs, 0)) < 0 ||
	    json_integer_value(json_array_get(offs, 1)) < 0)
		return circ_errorf(
		    e, "tensor '%s': 'data_offsets' is not two non-negative integers", name);
	*begin = (size_t)json_integer_value(json_array_get(offs, 0));
	*end = (size_t)json_integer_value(json_array_get(offs, 1));
	if (*begin > *end)
		return circ_errorf(e, "tensor '%s': data_offsets [%zu, %zu] end before they begin",
				   name, *begin, *end);
	if (*end > data_size)
		return circ_errorf(
		    e,
		    "tensor '%s': data_offsets [%zu, %zu] extend past the data region "
		    "(%zu bytes)",
		    name, *begin, *end, data_size);
	if (st_nbytes(t->shape, t->ndim, st_dtype_size(t->dtype), &nb) < 0)
		return circ_errorf(e, "tensor '%s': shape is too large", name);
	if (nb != *end - *begin) {
		char sb[256];
		shape_str(sb, sizeof sb, t->shape, t->ndim);
		return circ_errorf(e,
				   "tensor '%s': data_offsets [%zu, %zu] hold %zu bytes, shape %s "
				   "of %s needs %zu",
				   name, *begin, *end, *end - *begin, sb, json_string_value(dt),
				   nb);
	}
	t->data = data + *begin;
	t->nbytes = nb;
	return 0;
}

circ_st *circ_st_open(const char *path, circ_error *e)
{
	circ_st *f = circ_xcalloc(1, sizeof *f);
	struct stat sb;
	int fd = -1, n_alloc = 0;
	uint64_t hlen = 0;
	json_t *root = NULL, *v;
	json_error_t jerr;
	const char *key;
	st_range *ranges = NULL;
	size_t *begins = NULL, *ends = NULL;

	f->path = circ_xstrdup(path);
	f->guard = -1;
	f->fd = -1;
	fd = circ_open_regular(path, &sb, e); /* a FIFO is refused, never waited on */
	if (fd < 0)
		goto fail;
	f->st = sb;
	f->size = (size_t)sb.st_size;
	if (f->size < 8) {
		circ_errorf(e, "'%s': file too short for a safetensors header (%zu bytes)", path,
			    f->size);
		goto fail;
	}
	f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (f->map == MAP_FAILED) {
		f->map = NULL;
		circ_errorf(e, "'%s': cannot map: %s", path, strerror(errno));
		goto fail;
	}
	f->fd = fd;
	fd = -1;
	/* The file is used in place: truncated under the mapping, it would kill
	 * the process with a bare SIGBUS on the next page read. */
	f->guard = circ_guard_mapping(f->map, f->size, path);
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | f->map[i];
	if (hlen > f->size - 8) {
		circ_errorf(e, "'%s': header length %llu exceeds the file (%zu bytes)", path,
			    (unsigned long long)hlen, f->size);
		goto fail;
	}
	if (hlen > ST_MAX_HEADER) {
		circ_errorf(e, "'%s': header length %llu is over the limit of %u bytes", path,
			    (unsigned long long)hlen, ST_MAX_HEADER);
		goto fail;
	}
	if (hlen < 2 || f->map[8] != '{') {
		circ_errorf(e, "'%s': header is not a JSON object", path);
		goto fail;
	}
	f->data = f->map + 8 + hlen;
	f->data_size = f->size - 8 - (size_t)hlen;
	root = json_loadb((const char *)f->map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		circ_errorf(e, "'%s': bad JSON header: %s (at byte %d)", path, jerr.text,
			    jerr.position);
		goto fail;
	}
	if (!json_is_object(root)) {
		circ_errorf(e, "'%s': header is not a JSON object", path);
		goto fail;
	}
	n_alloc = (int)json_object_size(root);
	f->t = circ_xcalloc((size_t)n_alloc + 1, sizeof *f->t);
	f->names = circ_xcalloc((size_t)n_alloc + 1, sizeof *f->names);
	begins = circ_xcalloc((size_t)n_alloc + 1, sizeof *begins);
	ends = circ_xcalloc((size_t)n_alloc + 1, sizeof *ends);
	json_object_foreach(root, key, v)
	{
		if (!strcmp(key, "__metadata__")) {
			const char *mk;
			json_t *mv;
			if (!json_is_object(v)) {
				circ_errorf(e, "'%s': '__metadata__' is not an object", path);
				goto fail;
			}
			f->meta = circ_xcalloc(2 * json_object_size(v) + 1, sizeof *f->meta);
			json_object_foreach(v, mk, mv)
			{
				if (!json_is_string(mv)) {
					circ_errorf(e, "'%s': metadata '%s' is not a string", path,
						    mk);
					goto fail;
				}
				f->meta[2 * f->n_meta] = circ_xstrdup(mk);
				f->meta[2 * f->n_meta + 1] = circ_xstrdup(json_string_value(mv));
				f->n_meta++;
			}
			continue;
		}
		if (!*key) {
			circ_errorf(e, "'%s': a tensor has an empty name", path);
			goto fail;
		}
		f->names[f->n] = circ_xstrdup(key);
		f->t[f->n].name = f->names[f->n];
		if (parse_entry(key, v, f->data, f->data_size, &f->t[f->n], &begins[f->n],
				&ends[f->n], e) < 0) {
			circ_error_prefix(e, "'%s'", path);
			f->n++;
			goto fail;
		}
		f->n++;
	}
	/* Overlaps and gaps: walk the ranges in offset order. */
	ranges = circ_xcalloc((size_t)f->n + 1, sizeof *ranges);
	for (int i = 0; i < f->n; i++)
		ranges[i] = (st_range){begins[i], ends[i], i};
	qsort(ranges, (size_t)f->n, sizeof *ranges, range_cmp);
	{
		size_t at = 0;
		for (int i = 0; i < f->n; i++) {
			if (ranges[i].begin < at) {
				const st_range *p = &ranges[i - 1];
				circ_errorf(
				    e,
				    "'%s': tensor '%s' (bytes %zu-%zu) overlaps tensor '%s' "
				    "(bytes %zu-%zu)",
				    path, f->t[ranges[i].idx].name, ranges[i].begin, ranges[i].end,
				    f->t[p->idx].name, p->begin, p->end);
				goto fail;
			}
			if (ranges[i].begin > at) {
				circ_errorf(e,
					    "'%s': bytes %zu-%zu of the data region belong to no "
					    "tensor (before tensor '%s')",
					    path, at, ranges[i].begin, f->t[ranges[i].idx].name);
				goto fail;
			}
			at = ranges[i].end;
		}
		if (at != f->data_size) {
			circ_errorf(e, "'%s': bytes %zu-%zu of the data region belong to no tensor",
				    path, at, f->data_size);
			goto fail;
		}
	}
	/* Reorder the table by offset (names keep their owners). */
	{
		circ_st_tensor *t = circ_xcalloc((size_t)f->n + 1, sizeof *t);
		for (int i = 0; i < f->n; i++)
			t[i] = f->t[ranges[i].idx];
		free(f->t);
		f->t = t;
	}
	json_decref(root);
	free(ranges);
	free(begins);
	free(ends);
	return f;
fail:
	if (fd >= 0)
		close(fd);
	json_decref(root);
	free(ranges);
	free(begins);
	free(ends);
	circ_st_close(f);
	return NULL;
}

void circ_st_identity(const circ_st *f, char *out, size_t n, double *age)
{
	const struct stat *st = &f->st;
	struct timespec now;
	double last;
	snprintf(out, n, "%llu %llu %lld %lld.%09ld %lld.%09ld", (unsigned long long)st->st_dev,
		 (unsigned long long)st->st_ino, (long long)st->st_size,
		 (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec,
		 st->st_ctim.tv_nsec);
	clock_gettime(CLOCK_REALTIME, &now);
	last = (double)st->st_mtim.tv_sec + 1e-9 * (double)st->st_mtim.tv_nsec;
	if ((double)st->st_ctim.tv_sec + 1e-9 * (double)st->st_ctim.tv_nsec > last)
		last = (double)st->st_ctim.tv_sec + 1e-9 * (double)st->st_ctim.tv_nsec;
	*age = (double)now.tv_sec + 1e-9 * (double)now.tv_nsec - last;
}

int circ_st_check_unchanged(const circ_st *f, circ_error *e)
{
	/* The mapped file itself, by its descriptor: one renamed over the path
	 * leaves the mapping whole and the results consistent; only a change to
	 * this file mixes weights. The change time also moves when a rewrite
	 * is disguised with an old modification time (cp -p), but also when a
	 * link is made or removed (the rename above), so it counts only while
	 * the link count stays. Timestamps move in jiffies: a rewrite within a
	 * few milliseconds of the file's last change cannot be seen. */
	struct stat now;
	const struct stat *then = &f->st;
	if (fstat(f->fd, &now) < 0)
		return circ_errorf(e, "'%s': %s", f->path, strerror(errno));
	if (now.st_size != then->st_size || now.st_mtim.tv_sec != then->st_mtim.tv_sec ||
	    now.st_mtim.tv_nsec != then->st_mtim.tv_nsec ||
	    (now.st_nlink == then->st_nlink && (now.st_ctim.tv_sec != then->st_ctim.tv_sec ||
						now.st_ctim.tv_nsec != then->st_ctim.tv_nsec)))
		return circ_errorf(e,
				   "'%s': changed while in use (its size or modification time "
				   "differs from when it was opened); the results are discarded",
				   f->path);
	return 0;
}

const char *circ_st_path(const circ_st *f)
{
	return f->path;
}

int circ_st_count(const circ_st *f)
{
	return f->n;
}

const circ_st_tensor *circ_st_at(const circ_st *f, int i)
{
	return i >= 0 && i < f->n ? &f->t[i] : NULL;
}

const circ_st_tensor *circ_st_find(const circ_st *f, const char *name)
{
	for (int i = 0; i < f->n; i++)
		if (!strcmp(f->t[i].name, name))
			return &f->t[i];
	return NULL;
}

const char *circ_st_metadata(const circ_st *f, const char *key)
{
	for (int i = 0; i < f->n_meta; i++)
		if (!strcmp(f->meta[2 * i], key))
			return f->meta[2 * i + 1];
	return NULL;
}

const void *circ_st_bytes(const circ_st *f, size_t *len)
{
	if (len)
		*len = f->size;
	return f->map;
}

int circ_st_aligned(const circ_st_tensor *t)
{
	return ((uintptr_t)t->data & 3) == 0;
}

/* ---- half precision ---- */

float circ_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
	float f;
	if (exp == 0) {
		if (man == 0) {
			bits = sign;
		} else { /* subnormal: normalise */
			int e = -1;
			do {
				e++;
				man <<= 1;
			} while (!(man & 0x400));
			bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
		}
	} else if (exp == 31) {
		bits = sign | 0x7f800000u | man << 13;
	} else {
		bits = sign | (exp - 15 + 127) << 23 | man << 13;
	}
	memcpy(&f, &bits, 4);
	return f;
}

float circ_bf16_to_f32(uint16_t h)
{
	uint32_t bits = (uint32_t)h << 16;
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

uint16_t circ_f32_to_bf16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet and NaN */
		return (uint16_t)(x >> 16 | 0x40);
	x += 0x7fffu + ((x >> 16) & 1);
	return (uint16_t)(x >> 16);
}

uint16_t circ_f32_to_f16(float f)
{
	uint32_t x, sign, man;
	int exp;
	memcpy(&x, &f, 4);
	sign = (x >> 16) & 0x8000u;
	exp = (int)((x >> 23) & 0xff);
	man = x & 0x7fffffu;
	if (exp == 255)
		return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
	exp = exp - 127 + 15;
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00u);
	if (exp <= 0) { /* subnormal or zero */
		uint32_t m, shift, r, half;
		if (exp < -10)
			return (uint16_t)sign;
		m = man | 0x800000u;
		shift = (uint32_t)(14 - exp);
		r = m >> shift;
		half = 1u << (shift - 1);
		if ((m & ((1u << shift) - 1)) > half ||
		    ((m & ((1u << shift) - 1)) == half && (r & 1)))
			r++;
		return (uint16_t)(sign | r);
	}
	{
		uint32_t r = (uint32_t)exp << 10 | man >> 13, rest = man & 0x1fffu;
		if (rest > 0x1000u || (rest == 0x1000u && (r & 1)))
			r++; /* may carry into the exponent, up to infinity: correct */
		return (uint16_t)(sign | r);
	}
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* 16 values at a time: bf16 is the high half of an f32 (a shift); f16
 * through F16C's exact conversion (subnormals, infinities and NaNs as
 * circ_f16_to_f32 makes them). Returns how many values it converted. */
__attribute__((target("avx2"))) static size_t bf16_avx2(float *out, const unsigned char *p,
							size_t n)
{
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(p + 2 * i));
		__m256i lo = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(h));
		__m256i hi = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(h, 1));
		_mm256_storeu_si256((__m256i *)(void *)(out + i), _mm256_slli_epi32(lo, 16));
		_mm256_storeu_si256((__m256i *)(void *)(out + i + 8), _mm256_slli_epi32(hi, 16));
	}
	return i;
}

__attribute__((target("avx2,f16c"))) static size_t f16_avx2(float *out, const unsigned char *p,
							    size_t n)
{
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m128i a = _mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i));
		__m128i b = _mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i + 16));
		_mm256_storeu_ps(out + i, _mm256_cvtph_ps(a));
		_mm256_storeu_ps(out + i + 8, _mm256_cvtph_ps(b));
	}
	return i;
}

static size_t narrow_fast(float *out, const unsigned char *p, circ_dtype dtype, size_t n)
{
	static int have = -1;
	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("avx2") ? 2 : 0; /* every AVX2 CPU has F16C */
	}
	if (dtype == CIRC_BF16 && have >= 1)
		return bf16_avx2(out, p, n);
	if (dtype == CIRC_F16 && have >= 2)
		return f16_avx2(out, p, n);
	return 0;
}
#else
static size_t narrow_fast(float *out, const unsigned char *p, circ_dtype dtype, size_t n)
{
	(void)out, (void)p, (void)dtype, (void)n;
	return 0;
}
#endif

void circ_st_to_f32(float *out, const void *data, circ_dtype dtype, size_t n)
{
	const unsigned char *p = data;
	size_t i = 0;
	if (dtype == CIRC_BF16 || dtype == CIRC_F16)
		i = narrow_fast(out, p, dtype, n);
	for (; i < n; i++) {
		switch (dtype) {
		case CIRC_F32: memcpy(&out[i], p + 4 * i, 4); break;
		case CIRC_F64: {
			double d;
			memcpy(&d, p + 8 * i, 8);
			out[i] = (float)d;
			break;
		}
		case CIRC_F16:
			out[i] = circ_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
			break;
		case CIRC_BF16:
			out[i] = circ_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
			break;
		default: out[i] = 0; break;
		}
	}
}

/* ---- writer ---- */

int circ_st_serialize(int n, const circ_st_tensor *t, int n_meta, const char *const *meta,
		      void (*sink)(void *ctx, const void *p, size_t len), void *ctx, circ_error *e)
{
	json_t *root = json_object();
	char *text = NULL;
	size_t off = 0, tlen, padded;
	unsigned char len8[8];
	int rc = -1;

	if (n_meta > 0) {
		json_t *m = json_object();
		for (int i = 0; i < n_meta; i++)
			json_object_set_new(m, meta[2 * i], json_string(meta[2 * i + 1]));
		json_object_set_new(root, "__metadata__", m);
	}
	for (int i = 0; i < n; i++) {
		json_t *ent, *shape;
		const char *dn = st_dtype_name(t[i].dtype);
		size_t nb;
		if (!t[i].name || !*t[i].name) {
			circ_errorf(e, "tensor %d has no name", i);
			goto out;
		}
		if (!strcmp(t[i].name, "__metadata__") || json_object_get(root, t[i].name)) {
			circ_errorf(e, "tensor '%s': duplicate or reserved name", t[i].name);
			goto out;
		}
		if (!dn) {
			circ_errorf(e, "tensor '%s': dtype not supported by safetensors here",
				    t[i].name);
			goto out;
		}
		if (t[i].ndim < 0 || t[i].ndim > CIRC_MAX_DIMS ||
		    st_nbytes(t[i].shape, t[i].ndim, st_dtype_size(t[i].dtype), &nb) < 0 ||
		    nb != t[i].nbytes) {
			circ_errorf(e, "tensor '%s': %zu bytes do not match its shape", t[i].name,
				    t[i].nbytes);
			goto out;
		}
		ent = json_object();
		shape = json_array();
		json_object_set_new(ent, "dtype", json_string(dn));
		for (int d = 0; d < t[i].ndim; d++)
			json_array_append_new(shape, json_integer(t[i].shape[d]));
		json_object_set_new(ent, "shape", shape);
		json_object_set_new(ent, "data_offsets",
				    json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
		json_object_set_new(root, t[i].name, ent);
		off += nb;
	}
	text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!text) {
		circ_errorf(e, "cannot encode the header");
		goto out;
	}
	tlen = strlen(text);
	padded = (tlen + 8 + 7) / 8 * 8 - 8;
	for (int i = 0; i < 8; i++)
		len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
	sink(ctx, len8, 8);
	sink(ctx, text, tlen);
	for (size_t i = tlen; i < padded; i++)
		sink(ctx, " ", 1);
	for (int i = 0; i < n; i++)
		if (t[i].nbytes)
			sink(ctx, t[i].data, t[i].nbytes);
	rc = 0;
out:
	free(text);
	json_decref(root);
	return rc;
}

typedef struct file_sink {
	FILE *f;
	int err;
} file_sink;

static void to_file(void *ctx, const void *p, size_t len)
{
	file_sink *s = ctx;
	if (!s->err && fwrite(p, 1, len, s->f) != len)
		s->err = errno ? errno : EIO;
}

int circ_st_write(const char *path, int n, const circ_st_tensor *t, int n_meta,
		  const char *const *meta, circ_error *e)
{
	circ_atomic a;
	file_sink s = {NULL, 0};
	if (circ_atomic_open(&a, path, e) < 0)
		return -1;
	if (!(s.f = circ_atomic_file(&a, e)))
		goto fail;
	if (circ_st_serialize(n, t, n_meta, meta, to_file, &s, e) < 0) {
		circ_error_prefix(e, "'%s'", path);
		goto fail;
	}
	if (s.err) {
		circ_errorf(e, "'%s': write failed: %s", path, strerror(s.err));
		goto fail;
	}
	return circ_atomic_commit(&a, e);
fail:
	circ_atomic_abort(&a);
	return -1;
}

/* ================================================================ sets */

struct circ_st_set {
	char *index; /* path of the index, or NULL */
	int n_files;
	circ_st **files; /* (n_files) */
	int n;		 /* tensors in all files */
	int *start;	 /* (n_files + 1) index of each file's first tensor */
};

void circ_st_set_close(circ_st_set *s)
{
	if (!s)
		return;
	for (int k = 0; k < s->n_files; k++)
		circ_st_close(s->files[k]);
	free(s->files);
	free(s->start);
	free(s->index);
	free(s);
}

static char *join_path(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = circ_xmalloc(n);
	snprintf(p, n, "%s/%s", dir, name);
	return p;
}

static int str_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The shard names of a weight_map, sorted and unique, checked to be plain
 * file names; -1 with a message naming the index. */
static int shard_names(const char *index, json_t *map, const char ***out, int *n, circ_error *e)
{
	const char *key, **names = circ_xcalloc(json_object_size(map) + 1, sizeof *names);
	json_t *v;
	int k = 0, m = 0;
	json_object_foreach(map, key, v)
	{
		const char *f = json_is_string(v) ? json_string_value(v) : NULL;
		if (!f || !*f || strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..")) {
			free(names);
			return circ_errorf(e,
					   "'%s': weight_map: tensor '%s': expected the file name "
					   "of a shard in the same directory",
					   index, key);
		}
		names[k++] = f;
	}
	qsort(names, (size_t)k, sizeof *names, str_cmp);
	for (int i = 0; i < k; i++)
		if (!m || strcmp(names[m - 1], names[i]))
			names[m++] = names[i];
	*out = names;
	*n = m;
	return 0;
}

circ_st_set *circ_st_set_open(const char *dir, circ_error *e)
{
	circ_st_set *s = circ_xcalloc(1, sizeof *s);
	char *single = join_path(dir, "model.safetensors"), *text = NULL;
	const char **names = NULL, *key;
	json_t *root = NULL, *map, *v;
	json_error_t jerr;
	struct stat sb;
	size_t len;
	char *index = join_path(dir, "model.safetensors.index.json");
	int single_there = stat(single, &sb) == 0 || errno != ENOENT;
	if (single_there || (stat(index, &sb) != 0 && errno == ENOENT)) {
		/* model.safetensors (its own errors when absent and no index) */
		free(index);
		s->n_files = 1;
		s->files = circ_xcalloc(1, sizeof *s->files);
		s->files[0] = circ_st_open(single, e);
		if (!s->files[0])
			goto fail;
		goto count;
	}
	s->index = index;
	text = circ_read_file(s->index, CIRC_MAX_TEXT_FILE, &len, e);
	if (!text)
		goto fail;
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		circ_errorf(e, "'%s': bad JSON at line %d: %s", s->index, jerr.line, jerr.text);
		goto fail;
	}
	map = json_object_get(root, "weight_map");
	if (!json_is_object(map) || !json_object_size(map)) {
		circ_errorf(e,
			    "'%s': key 'weight_map': expected an object of tensor names to "
			    "shard files",
			    s->index);
		goto fail;
	}
	if (shard_names(s->index, map, &names, &s->n_files, e) < 0)
		goto fail;
	s->files = circ_xcalloc((size_t)s->n_files, sizeof *s->files);
	for (int k = 0; k < s->n_files; k++) {
		char *p = join_path(dir, names[k]);
		s->files[k] = circ_st_open(p, e);
		free(p);
		if (!s->files[k]) {
			circ_error_prefix(e, "'%s': weight_map names shard '%s'", s->index,
					  names[k]);
			goto fail;
		}
	}
	/* the weight_map and the shards agree, both ways */
	json_object_foreach(map, key, v)
	{
		const char *f = json_string_value(v);
		int k = (int)((const char **)bsearch(&f, names, (size_t)s->n_files, sizeof *names,
						     str_cmp) -
			      names);
		if (!circ_st_find(s->files[k], key)) {
			circ_errorf(e, "'%s': weight_map: tensor '%s' is not in its shard '%s'",
				    s->index, key, f);
			goto fail;
		}
	}
	for (int k = 0; k < s->n_files; k++)
		for (int i = 0; i < circ_st_count(s->files[k]); i++) {
			const char *t = circ_st_at(s->files[k], i)->name;
			json_t *w = json_object_get(map, t);
			if (!w) {
				circ_errorf(e, "'%s': tensor '%s' is not in the weight_map of '%s'",
					    circ_st_path(s->files[k]), t, s->index);
				goto fail;
			}
			if (strcmp(json_string_value(w), names[k])) {
				circ_errorf(e, "'%s': tensor '%s' is in two shards ('%s' and '%s')",
					    s->index, t, json_string_value(w), names[k]);
				goto fail;
			}
		}
count:
	s->start = circ_xcalloc((size_t)s->n_files + 1, sizeof *s->start);
	for (int k = 0; k < s->n_files; k++)
		s->start[k + 1] = s->start[k] + circ_st_count(s->files[k]);
	s->n = s->start[s->n_files];
	json_decref(root);
	free(names);
	free(text);
	free(single);
	return s;
fail:
	json_decref(root);
	free(names);
	free(text);
	free(single);
	circ_st_set_close(s);
	return NULL;
}

int circ_st_set_files(const circ_st_set *s)
{
	return s->n_files;
}

const circ_st *circ_st_set_file(const circ_st_set *s, int k)
{
	return k >= 0 && k < s->n_files ? s->files[k] : NULL;
}

const char *circ_st_set_index(const circ_st_set *s)
{
	return s->index;
}

int circ_st_set_count(const circ_st_set *s)
{
	return s->n;
}

const circ_st_tensor *circ_st_set_at(const circ_st_set *s, int i, const char **file)
{
	int k = 0;
	if (i < 0 || i >= s->n)
		return NULL;
	while (i >= s->start[k + 1])
		k++;
	if (file)
		*file = circ_st_path(s->files[k]);
	return circ_st_at(s->files[k], i - s->start[k]);
}

const circ_st_tensor *circ_st_set_find(const circ_st_set *s, const char *name, const char **file)
{
	for (int k = 0; k < s->n_files; k++) {
		const circ_st_tensor *t = circ_st_find(s->files[k], name);
		if (t) {
			if (file)
				*file = circ_st_path(s->files[k]);
			return t;
		}
	}
	return NULL;
}

int circ_st_set_check_unchanged(const circ_st_set *s, circ_error *e)
{
	for (int k = 0; k < s->n_files; k++)
		if (circ_st_check_unchanged(s->files[k], e) < 0)
			return -1;
	return 0;
}
