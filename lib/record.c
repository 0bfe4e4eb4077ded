/*
 * record: one msgpack record's values, below the stream and its JSON face:
 * tensors and their dtypes, field access whose errors name the field, and
 * packing helpers. See record.h.
 */
#include "record.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const dtype_names[CIRC_DTYPE_COUNT] = {"f32", "f64", "f16", "bf16",
							  "i32", "i64", "u8"};
static const size_t dtype_sizes[CIRC_DTYPE_COUNT] = {4, 8, 2, 2, 4, 8, 1};

const char *circ_dtype_name(circ_dtype d)
{
	return (unsigned)d < CIRC_DTYPE_COUNT ? dtype_names[d] : "?";
}

size_t circ_dtype_size(circ_dtype d)
{
	return (unsigned)d < CIRC_DTYPE_COUNT ? dtype_sizes[d] : 0;
}

int circ_dtype_parse(const char *s, size_t n, circ_dtype *d)
{
	if (!s)
		return -1;
	for (int i = 0; i < CIRC_DTYPE_COUNT; i++)
		if (strlen(dtype_names[i]) == n && !memcmp(dtype_names[i], s, n)) {
			*d = (circ_dtype)i;
			return 0;
		}
	return -1;
}

int64_t circ_tensor_numel(const circ_tensor *t)
{
	int64_t n = 1;
	for (int i = 0; i < t->ndim; i++)
		n *= t->shape[i];
	return n;
}

static float f16_to_f32(uint16_t h)
{
	uint32_t s = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 31, m = h & 1023, bits;
	float f;
	if (ex == 0) {
		f = ldexpf((float)m, -24);
		return s ? -f : f;
	}
	bits = ex == 31 ? (s | 0x7f800000u | (m << 13)) : (s | ((ex + 112) << 23) | (m << 13));
	memcpy(&f, &bits, 4);
	return f;
}

/* A plain array's item i as a double (circ_obj_tensor checked it is a number). */
static double item_f64(const circ_tensor *t, int64_t i)
{
	const msgpack_object *o = &t->items[i];
	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
	default: return o->via.f64;
	}
}

int circ_tensor_copy_f32(const circ_tensor *t, float *out, circ_error *e)
{
	int64_t n = circ_tensor_numel(t), i;
	const unsigned char *p = t->data;
	if (t->items) {
		for (i = 0; i < n; i++)
			out[i] = (float)item_f64(t, i);
		return 0;
	}
	switch (t->dtype) {
	case CIRC_F32: memcpy(out, p, (size_t)n * 4); return 0;
	case CIRC_F64:
		for (i = 0; i < n; i++) {
			double d;
			memcpy(&d, p + 8 * i, 8);
			out[i] = (float)d;
		}
		return 0;
	case CIRC_F16:
	case CIRC_BF16:
		for (i = 0; i < n; i++) {
			uint16_t h;
			memcpy(&h, p + 2 * i, 2);
			if (t->dtype == CIRC_F16) {
				out[i] = f16_to_f32(h);
			} else {
				uint32_t u = (uint32_t)h << 16;
				memcpy(&out[i], &u, 4);
			}
		}
		return 0;
	default:
		return circ_errorf(e, "expected a float tensor, got dtype %s",
				   circ_dtype_name(t->dtype));
	}
}

int circ_tensor_copy_i32(const circ_tensor *t, int32_t *out, circ_error *e)
{
	int64_t n = circ_tensor_numel(t), i;
	const unsigned char *p = t->data;
	if (t->items) {
		for (i = 0; i < n; i++) {
			const msgpack_object *o = &t->items[i];
			int64_t v;
			if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
				v = o->via.u64 > INT64_MAX ? INT64_MAX : (int64_t)o->via.u64;
			else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
				v = o->via.i64;
			else
				return circ_errorf(e, "expected integers, got %s at index %lld",
						   circ_obj_type_name(o), (long long)i);
			if (v < INT32_MIN || v > INT32_MAX)
				return circ_errorf(e,
						   "value %lld at index %lld does not fit in i32",
						   (long long)v, (long long)i);
			out[i] = (int32_t)v;
		}
		return 0;
	}
	switch (t->dtype) {
	case CIRC_I32: memcpy(out, p, (size_t)n * 4); return 0;
	case CIRC_U8:
		for (i = 0; i < n; i++)
			out[i] = p[i];
		return 0;
	case CIRC_I64:
		for (i = 0; i < n; i++) {
			int64_t v;
			memcpy(&v, p + 8 * i, 8);
			if (v < INT32_MIN || v > INT32_MAX)
				return circ_errorf(e,
						   "value %lld at index %lld does not fit in i32",
						   (long long)v, (long long)i);
			out[i] = (int32_t)v;
		}
		return 0;
	default:
		return circ_errorf(e, "expected an integer tensor, got dtype %s",
				   circ_dtype_name(t->dtype));
	}
}

/* ---- field access ---- */

const char *circ_obj_type_name(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "bool";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "int";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "float";
	case MSGPACK_OBJECT_STR: return "string";
	case MSGPACK_OBJECT_BIN: return "bin";
	case MSGPACK_OBJECT_ARRAY: return "array";
	case MSGPACK_OBJECT_MAP: return "map";
	default: return "ext";
	}
}

int circ_obj_str_eq(const msgpack_object *o, const char *s)
{
	size_t n = strlen(s);
	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
	       !memcmp(o->via.str.ptr, s, n);
}

const msgpack_object *circ_rec_get(const msgpack_object *map, const char *key)
{
	if (!map || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++)
		if (circ_obj_str_eq(&map->via.map.ptr[i].key, key))
			return &map->via.map.ptr[i].val;
	return NULL;
}

static const msgpack_object *need(const msgpack_object *map, const char *key, circ_error *e)
{
	const msgpack_object *o = circ_rec_get(map, key);
	if (!o)
		circ_errorf(e, "missing field '%s'", key);
	return o;
}

int circ_rec_str(const msgpack_object *map, const char *key, const char **s, size_t *n,
		 circ_error *e)
{
	const msgpack_object *o = need(map, key, e);
	if (!o)
		return -1;
	if (o->type != MSGPACK_OBJECT_STR)
		return circ_errorf(e, "field '%s': expected string, got %s", key,
				   circ_obj_type_name(o));
	*s = o->via.str.ptr;
	if (n)
		*n = o->via.str.size;
	return 0;
}

int circ_rec_strdup(const msgpack_object *map, const char *key, char **s, circ_error *e)
{
	const char *p;
	size_t n;
	if (circ_rec_str(map, key, &p, &n, e) < 0)
		return -1;
	if (memchr(p, 0, n))
		return circ_errorf(e, "field '%s': string contains a NUL byte", key);
	*s = circ_xmalloc(n + 1);
	memcpy(*s, p, n);
	(*s)[n] = 0;
	return 0;
}

int circ_rec_i64(const msgpack_object *map, const char *key, int64_t *v, circ_error *e)
{
	const msgpack_object *o = need(map, key, e);
	if (!o)
		return -1;
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		if (o->via.u64 > INT64_MAX)
			return circ_errorf(e, "field '%s': integer out of range", key);
		*v = (int64_t)o->via.u64;
	} else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
		*v = o->via.i64;
	} else {
		return circ_errorf(e, "field '%s': expected int, got %s", key,
				   circ_obj_type_name(o));
	}
	return 0;
}

int circ_rec_f64(const msgpack_object *map, const char *key, double *v, circ_error *e)
{
	const msgpack_object *o = need(map, key, e);
	if (!o)
		return -1;
	switch (o->type) {
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: *v = o->via.f64; return 0;
	case MSGPACK_OBJECT_POSITIVE_INTEGER: *v = (double)o->via.u64; return 0;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: *v = (double)o->via.i64; return 0;
	default:
		return circ_errorf(e, "field '%s': expected number, got %s", key,
				   circ_obj_type_name(o));
	}
}

int circ_rec_bool(const msgpack_object *map, const char *key, int *v, circ_error *e)
{
	const msgpack_object *o = need(map, key, e);
	if (!o)
		return -1;
	if (o->type != MSGPACK_OBJECT_BOOLEAN)
		return circ_errorf(e, "field '%s': expected bool, got %s", key,
				   circ_obj_type_name(o));
	*v = o->via.boolean;
	return 0;
}

int circ_rec_array(const msgpack_object *map, const char *key, const msgpack_object_array **arr,
		   circ_error *e)
{
	const msgpack_object *o = need(map, key, e);
	if (!o)
		return -1;
	if (o->type != MSGPACK_OBJECT_ARRAY)
		return circ_errorf(e, "field '%s': expected array, got %s", key,
				   circ_obj_type_name(o));
	*arr = &o->via.array;
	return 0;
}

/* The largest tensor a record may hold, in elements: far above any model's
 * activations, and small enough that numel * 8 bytes cannot overflow. */
#define TENSOR_MAX_NUMEL (1ull << 40)

/* A plain 1-d array of numbers as a tensor (see circ_tensor). */
static int plain_tensor(const msgpack_object *o, circ_tensor *t, circ_error *e)
{
	int ints = 1, wide = 0;
	for (uint32_t i = 0; i < o->via.array.size; i++) {
		const msgpack_object *v = &o->via.array.ptr[i];
		switch (v->type) {
		case MSGPACK_OBJECT_POSITIVE_INTEGER:
			if (v->via.u64 > INT32_MAX)
				wide = 1;
			break;
		case MSGPACK_OBJECT_NEGATIVE_INTEGER:
			if (v->via.i64 < INT32_MIN)
				wide = 1;
			break;
		case MSGPACK_OBJECT_FLOAT32:
		case MSGPACK_OBJECT_FLOAT64: ints = 0; break;
		default:
			return circ_errorf(e, "tensor: item %u of the array is %s, not a number", i,
					   circ_obj_type_name(v));
		}
	}
	t->dtype = !ints ? CIRC_F32 : wide ? CIRC_I64 : CIRC_I32;
	t->ndim = 1;
	t->shape[0] = o->via.array.size;
	t->data = NULL;
	t->nbytes = (size_t)o->via.array.size * circ_dtype_size(t->dtype);
	t->items = o->via.array.ptr;
	return 0;
}

int circ_obj_tensor(const msgpack_object *o, circ_tensor *t, circ_error *e)
{
	const msgpack_object *dt, *sh, *da;
	uint64_t numel = 1, need_bytes;
	t->items = NULL;
	if (o->type == MSGPACK_OBJECT_ARRAY)
		return plain_tensor(o, t, e);
	if (o->type != MSGPACK_OBJECT_MAP)
		return circ_errorf(e, "expected a tensor map or an array of numbers, got %s",
				   circ_obj_type_name(o));
	dt = need(o, "dtype", e);
	sh = dt ? need(o, "shape", e) : NULL;
	da = sh ? need(o, "data", e) : NULL;
	if (!da)
		return circ_error_prefix(e, "tensor");
	if (dt->type != MSGPACK_OBJECT_STR ||
	    circ_dtype_parse(dt->via.str.ptr, dt->via.str.size, &t->dtype) < 0)
		return circ_errorf(e, "tensor: unknown dtype");
	if (sh->type != MSGPACK_OBJECT_ARRAY || sh->via.array.size > CIRC_MAX_DIMS)
		return circ_errorf(e, "tensor: shape must be an array of at most %d sizes",
				   CIRC_MAX_DIMS);
	if (da->type != MSGPACK_OBJECT_BIN)
		return circ_errorf(e, "tensor: data must be bin, got %s", circ_obj_type_name(da));
	t->ndim = (int)sh->via.array.size;
	for (int i = 0; i < t->ndim; i++) {
		const msgpack_object *d = &sh->via.array.ptr[i];
		if (d->type != MSGPACK_OBJECT_POSITIVE_INTEGER || d->via.u64 > TENSOR_MAX_NUMEL)
			return circ_errorf(e, "tensor: shape[%d] is not a valid size", i);
		t->shape[i] = (int64_t)d->via.u64;
	}
	/* The product is tested by division before it is formed, so it cannot wrap
	 * (2^24 x 2^40 is 2^64, which would be 0). */
	for (int i = 0; i < t->ndim; i++) {
		uint64_t d = (uint64_t)t->shape[i];
		if (d && numel > TENSOR_MAX_NUMEL / d)
			return circ_errorf(e, "tensor: shape too large (more than 2^40 elements)");
		numel *= d;
	}
	need_bytes = numel * circ_dtype_size(t->dtype);
	if (need_bytes != da->via.bin.size) {
		char dims[256] = "";
		size_t k = 0;
		for (int i = 0; i < t->ndim && k < sizeof dims - 24; i++)
			k += (size_t)snprintf(dims + k, sizeof dims - k, i ? ",%lld" : "%lld",
					      (long long)t->shape[i]);
		return circ_errorf(e, "tensor: shape [%s] %s needs %llu bytes, data has %u", dims,
				   circ_dtype_name(t->dtype), (unsigned long long)need_bytes,
				   da->via.bin.size);
	}
	t->data = da->via.bin.ptr;
	t->nbytes = da->via.bin.size;
	return 0;
}

int circ_rec_tensor(const msgpack_object *map, const char *key, circ_tensor *t, circ_error *e)
{
	const msgpack_object *o = need(map, key, e);
	if (!o)
		return -1;
	if (circ_obj_tensor(o, t, e) < 0)
		return circ_error_prefix(e, "field '%s'", key);
	return 0;
}

/* ---- packing ---- */

void circ_pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

void circ_pack_str(msgpack_packer *pk, const char *s)
{
	circ_pack_strn(pk, s, strlen(s));
}

void circ_pack_kv_str(msgpack_packer *pk, const char *k, const char *v)
{
	circ_pack_str(pk, k);
	circ_pack_str(pk, v);
}

void circ_pack_kv_i64(msgpack_packer *pk, const char *k, int64_t v)
{
	circ_pack_str(pk, k);
	msgpack_pack_int64(pk, v);
}

void circ_pack_kv_f64(msgpack_packer *pk, const char *k, double v)
{
	circ_pack_str(pk, k);
	msgpack_pack_double(pk, v);
}

void circ_pack_tensor(msgpack_packer *pk, circ_dtype dtype, int ndim, const int64_t *shape,
		      const void *data)
{
	size_t n = circ_dtype_size(dtype);
	msgpack_pack_map(pk, 3);
	circ_pack_kv_str(pk, "dtype", circ_dtype_name(dtype));
	circ_pack_str(pk, "shape");
	msgpack_pack_array(pk, (size_t)ndim);
	for (int i = 0; i < ndim; i++) {
		msgpack_pack_int64(pk, shape[i]);
		n *= (size_t)shape[i];
	}
	circ_pack_str(pk, "data");
	msgpack_pack_bin(pk, n);
	msgpack_pack_bin_body(pk, data, n);
}

void circ_pack_kv_tensor(msgpack_packer *pk, const char *k, circ_dtype dtype, int ndim,
			 const int64_t *shape, const void *data)
{
	circ_pack_str(pk, k);
	circ_pack_tensor(pk, dtype, ndim, shape, data);
}
