/*
 * json: msgpack <-> JSON for circ records (see json.h for the mapping).
 * Output is written by hand (jansson cannot print shortest round-trip floats
 * or tensors as number arrays); input is parsed by jansson, which keeps
 * object keys in their order, so maps round-trip in order.
 */
#include "json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "record.h"

typedef struct sbuf {
	char **buf;
	size_t *len, *cap;
} sbuf;

/* A NULL buf checks without writing (circ_json_check). */
static void put(sbuf *b, const char *s, size_t n)
{
	if (!b->buf)
		return;
	if (*b->len + n + 1 > *b->cap) {
		size_t c = *b->cap ? *b->cap : 256;
		while (c < *b->len + n + 1)
			c *= 2;
		*b->buf = circ_xrealloc(*b->buf, c);
		*b->cap = c;
	}
	memcpy(*b->buf + *b->len, s, n);
	*b->len += n;
	(*b->buf)[*b->len] = 0;
}

static void puts_(sbuf *b, const char *s)
{
	put(b, s, strlen(s));
}

/* Shortest %.Ng text that reads back to the same double. */
static void fmt_f64(char *out, size_t n, double v)
{
	for (int p = 15; p <= 17; p++) {
		snprintf(out, n, "%.*g", p, v);
		if (strtod(out, NULL) == v)
			break;
	}
	if (!strpbrk(out, ".en"))
		strncat(out, ".0", n - strlen(out) - 1);
}

static void fmt_f32(char *out, size_t n, float v)
{
	for (int p = 6; p <= 9; p++) {
		snprintf(out, n, "%.*g", p, (double)v);
		if (strtof(out, NULL) == v)
			break;
	}
	if (!strpbrk(out, ".en"))
		strncat(out, ".0", n - strlen(out) - 1);
}

static void put_nonfinite(sbuf *b, double v)
{
	puts_(b, isnan(v) ? "{\"$f64\":\"NaN\"}"
		 : v > 0  ? "{\"$f64\":\"Infinity\"}"
			  : "{\"$f64\":\"-Infinity\"}");
}

static void put_f64(sbuf *b, double v)
{
	char t[40];
	if (!isfinite(v)) {
		put_nonfinite(b, v);
		return;
	}
	fmt_f64(t, sizeof t, v);
	puts_(b, t);
}

static int utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		size_t k;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			k = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			k = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			k = 3, cp = c & 0x07;
		else
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if (i + j >= n || (s[i + j] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k + 1;
	}
	return 1;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void put_base64(sbuf *b, const unsigned char *p, size_t n)
{
	char t[4];
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		t[0] = b64[v >> 18 & 63];
		t[1] = b64[v >> 12 & 63];
		t[2] = i + 1 < n ? b64[v >> 6 & 63] : '=';
		t[3] = i + 2 < n ? b64[v & 63] : '=';
		put(b, t, 4);
	}
}

static int base64_decode(const char *s, size_t n, unsigned char **out, size_t *outn)
{
	unsigned char *o;
	size_t k = 0;
	uint32_t v = 0;
	int bits = 0;
	if (n % 4)
		return -1;
	o = circ_xmalloc(n / 4 * 3 + 1);
	for (size_t i = 0; i < n; i++) {
		const char *c;
		if (s[i] == '=') {
			if (i < n - 2)
				goto bad;
			continue;
		}
		c = memchr(b64, s[i], 64);
		if (!c || !s[i])
			goto bad;
		v = v << 6 | (uint32_t)(c - b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			o[k++] = (unsigned char)(v >> bits);
		}
	}
	*out = o;
	*outn = k;
	return 0;
bad:
	free(o);
	return -1;
}

static void put_str(sbuf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, start = 0;
	put(b, "\"", 1);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[8];
		if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
			continue;
		put(b, s + start, i - start);
		start = i + 1;
		switch (c) {
		case '"': puts_(b, "\\\""); break;
		case '\\': puts_(b, "\\\\"); break;
		case '\n': puts_(b, "\\n"); break;
		case '\t': puts_(b, "\\t"); break;
		case '\r': puts_(b, "\\r"); break;
		default:
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			put(b, esc, 6);
		}
	}
	if (n > start) /* s may be NULL for "" (msgpack's empty str) */
		put(b, s + start, n - start);
	put(b, "\"", 1);
}

static int is_tensor_map(const msgpack_object *o)
{
	const msgpack_object_map *m = &o->via.map;
	if (o->type != MSGPACK_OBJECT_MAP || m->size != 3)
		return 0;
	return circ_obj_str_eq(&m->ptr[0].key, "dtype") &&
	       circ_obj_str_eq(&m->ptr[1].key, "shape") &&
	       circ_obj_str_eq(&m->ptr[2].key, "data") && m->ptr[2].val.type == MSGPACK_OBJECT_BIN;
}

static float half_to_f32(uint16_t h)
{
	uint32_t s = (uint32_t)(h >> 15) << 31, ex = (h >> 10) & 31, m = h & 1023, bits;
	float f;
	if (ex == 0) {
		f = ldexpf((float)m, -24);
		return s ? -f : f;
	}
	if (ex == 31)
		bits = s | 0x7f800000u | (m << 13);
	else
		bits = s | ((ex + 112) << 23) | (m << 13);
	memcpy(&f, &bits, 4);
	return f;
}

static int put_tensor(sbuf *b, const msgpack_object *o, circ_error *e)
{
	circ_tensor t;
	const unsigned char *p;
	int64_t n, i;
	char num[48];
	if (circ_obj_tensor(o, &t, e) < 0)
		return -1;
	if (!b->buf)
		return 0;
	puts_(b, "{\"dtype\":");
	put_str(b, circ_dtype_name(t.dtype), strlen(circ_dtype_name(t.dtype)));
	puts_(b, ",\"shape\":[");
	for (i = 0; i < t.ndim; i++) {
		snprintf(num, sizeof num, i ? ",%lld" : "%lld", (long long)t.shape[i]);
		puts_(b, num);
	}
	puts_(b, "],\"data\":[");
	n = circ_tensor_numel(&t);
	p = t.data;
	for (i = 0; i < n; i++) {
		if (i)
			put(b, ",", 1);
		switch (t.dtype) {
		case CIRC_F32: {
			float f;
			memcpy(&f, p + 4 * i, 4);
			if (!isfinite(f)) {
				put_nonfinite(b, f);
				continue;
			}
			fmt_f32(num, sizeof num, f);
			break;
		}
		case CIRC_F64: {
			double d;
			memcpy(&d, p + 8 * i, 8);
			if (!isfinite(d)) {
				put_nonfinite(b, d);
				continue;
			}
			fmt_f64(num, sizeof num, d);
			break;
		}
		case CIRC_F16:
		case CIRC_BF16: {
			uint16_t h;
			float f;
			memcpy(&h, p + 2 * i, 2);
			if (t.dtype == CIRC_F16) {
				f = half_to_f32(h);
			} else {
				uint32_t u = (uint32_t)h << 16;
				memcpy(&f, &u, 4);
			}
			if (!isfinite(f)) {
				put_nonfinite(b, f);
				continue;
			}
			fmt_f32(num, sizeof num, f);
			break;
		}
		case CIRC_I32: {
			int32_t v;
			memcpy(&v, p + 4 * i, 4);
			snprintf(num, sizeof num, "%d", (int)v);
			break;
		}
		case CIRC_I64: {
			int64_t v;
			memcpy(&v, p + 8 * i, 8);
			snprintf(num, sizeof num, "%lld", (long long)v);
			break;
		}
		case CIRC_U8: snprintf(num, sizeof num, "%u", (unsigned)p[i]); break;
		default: return circ_errorf(e, "unsupported dtype");
		}
		puts_(b, num);
	}
	puts_(b, "]}");
	return 0;
}

static int to_json(sbuf *b, const msgpack_object *o, int depth, circ_error *e)
{
	char num[48];
	uint32_t i;
	if (depth >= CIRC_MAX_DEPTH &&
	    (o->type == MSGPACK_OBJECT_ARRAY || o->type == MSGPACK_OBJECT_MAP))
		return circ_errorf(e, "nesting deeper than %d levels", CIRC_MAX_DEPTH);
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: puts_(b, "null"); break;
	case MSGPACK_OBJECT_BOOLEAN: puts_(b, o->via.boolean ? "true" : "false"); break;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		snprintf(num, sizeof num, "%llu", (unsigned long long)o->via.u64);
		puts_(b, num);
		break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		snprintf(num, sizeof num, "%lld", (long long)o->via.i64);
		puts_(b, num);
		break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: put_f64(b, o->via.f64); break;
	case MSGPACK_OBJECT_STR:
		if (!utf8_valid((const unsigned char *)o->via.str.ptr, o->via.str.size))
			return circ_errorf(e, "string is not valid UTF-8");
		put_str(b, o->via.str.ptr, o->via.str.size);
		break;
	case MSGPACK_OBJECT_BIN:
		puts_(b, "{\"$base64\":\"");
		put_base64(b, (const unsigned char *)o->via.bin.ptr, o->via.bin.size);
		puts_(b, "\"}");
		break;
	case MSGPACK_OBJECT_ARRAY:
		put(b, "[", 1);
		for (i = 0; i < o->via.array.size; i++) {
			if (i)
				put(b, ",", 1);
			if (to_json(b, &o->via.array.ptr[i], depth + 1, e) < 0)
				return -1;
		}
		put(b, "]", 1);
		break;
	case MSGPACK_OBJECT_MAP:
		if (is_tensor_map(o))
			return put_tensor(b, o, e);
		put(b, "{", 1);
		for (i = 0; i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;
			if (k->type != MSGPACK_OBJECT_STR)
				return circ_errorf(e, "map key is %s, not a string",
						   circ_obj_type_name(k));
			if (i)
				put(b, ",", 1);
			put_str(b, k->via.str.ptr, k->via.str.size);
			put(b, ":", 1);
			if (to_json(b, &o->via.map.ptr[i].val, depth + 1, e) < 0)
				return circ_error_prefix(e, "field '%.*s'", (int)k->via.str.size,
							 k->via.str.ptr);
		}
		put(b, "}", 1);
		break;
	default: return circ_errorf(e, "unsupported msgpack type %s", circ_obj_type_name(o));
	}
	return 0;
}

int circ_json_from_msgpack(const msgpack_object *o, char **buf, size_t *len, size_t *cap,
			   circ_error *e)
{
	sbuf b = {buf, len, cap};
	return to_json(&b, o, 0, e);
}

int circ_json_check(const msgpack_object *o, circ_error *e)
{
	sbuf b = {NULL, NULL, NULL};
	return to_json(&b, o, 0, e);
}

/* ---- JSON -> msgpack ---- */

static int nonfinite_value(const json_t *j, double *v)
{
	const json_t *s;
	const char *t;
	if (!json_is_object(j) || json_object_size(j) != 1 || !(s = json_object_get(j, "$f64")) ||
	    !json_is_string(s))
		return 0;
	t = json_string_value(s);
	if (!strcmp(t, "NaN"))
		*v = NAN;
	else if (!strcmp(t, "Infinity"))
		*v = INFINITY;
	else if (!strcmp(t, "-Infinity"))
		*v = -INFINITY;
	else
		return 0;
	return 1;
}

static int json_number(const json_t *j, double *v)
{
	if (json_is_integer(j))
		*v = (double)json_integer_value(j);
	else if (json_is_real(j))
		*v = json_real_value(j);
	else
		return nonfinite_value(j, v) ? 0 : -1;
	return 0;
}

static uint16_t f32_to_half(float f)
{
	uint32_t x, s, m;
	int ex;
	memcpy(&x, &f, 4);
	s = (x >> 16) & 0x8000;
	ex = (int)((x >> 23) & 0xff) - 127 + 15;
	m = x & 0x7fffff;
	if (((x >> 23) & 0xff) == 0xff)
		return (uint16_t)(s | 0x7c00 | (m ? 0x200 : 0));
	if (ex >= 31)
		return (uint16_t)(s | 0x7c00);
	if (ex <= 0) {
		if (ex < -10)
			return (uint16_t)s;
		m |= 0x800000;
		uint32_t shift = (uint32_t)(14 - ex);
		uint32_t hm = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
		if (rem > half || (rem == half && (hm & 1)))
			hm++;
		return (uint16_t)(s | hm);
	}
	uint32_t hm = m >> 13, rem = m & 0x1fff;
	uint32_t h = s | ((uint32_t)ex << 10) | hm;
	if (rem > 0x1000 || (rem == 0x1000 && (hm & 1)))
		h++;
	return (uint16_t)h;
}

static int pack_tensor_json(const json_t *j, msgpack_packer *pk, circ_error *e)
{
	const json_t *jd = json_object_get(j, "dtype"), *js = json_object_get(j, "shape"),
		     *jv = json_object_get(j, "data");
	circ_dtype dt;
	int64_t shape[CIRC_MAX_DIMS], numel = 1;
	size_t nd, i, esz;
	unsigned char *data;
	if (circ_dtype_parse(json_string_value(jd), json_string_length(jd), &dt) < 0)
		return circ_errorf(e, "tensor: unknown dtype '%s'", json_string_value(jd));
	nd = json_array_size(js);
	if (nd > CIRC_MAX_DIMS)
		return circ_errorf(e, "tensor: %zu dimensions, at most %d", nd, CIRC_MAX_DIMS);
	for (i = 0; i < nd; i++) {
		const json_t *d = json_array_get(js, i);
		if (!json_is_integer(d) || json_integer_value(d) < 0)
			return circ_errorf(e, "tensor: shape[%zu] is not a non-negative integer",
					   i);
		shape[i] = json_integer_value(d);
		if (shape[i] && numel > INT64_MAX / 16 / shape[i])
			return circ_errorf(e, "tensor: shape too large");
		numel *= shape[i];
	}
	if ((int64_t)json_array_size(jv) != numel)
		return circ_errorf(e, "tensor: shape needs %lld values, data has %zu",
				   (long long)numel, json_array_size(jv));
	esz = circ_dtype_size(dt);
	data = circ_xmalloc((size_t)numel * esz);
	for (i = 0; i < (size_t)numel; i++) {
		const json_t *v = json_array_get(jv, i);
		double d;
		unsigned char *p = data + i * esz;
		if (json_number(v, &d) < 0) {
			free(data);
			return circ_errorf(e, "tensor: data[%zu] is not a number", i);
		}
		switch (dt) {
		case CIRC_F32: {
			float f = (float)d;
			if (json_is_real(v) && isfinite(d)) {
				/* parse the text again as float to avoid double rounding */
				char t[48];
				fmt_f64(t, sizeof t, d);
				f = strtof(t, NULL);
			}
			memcpy(p, &f, 4);
			break;
		}
		case CIRC_F64: memcpy(p, &d, 8); break;
		case CIRC_F16: {
			uint16_t h = f32_to_half((float)d);
			memcpy(p, &h, 2);
			break;
		}
		case CIRC_BF16: {
			float f = (float)d;
			uint32_t u;
			memcpy(&u, &f, 4);
			if ((u & 0x7fffffff) > 0x7f800000)
				u = (u | 0x400000);
			else
				u += 0x7fff + ((u >> 16) & 1);
			uint16_t h = (uint16_t)(u >> 16);
			memcpy(p, &h, 2);
			break;
		}
		case CIRC_I32:
		case CIRC_I64:
		case CIRC_U8: {
			json_int_t iv;
			if (!json_is_integer(v)) {
				free(data);
				return circ_errorf(e, "tensor: data[%zu] is not an integer", i);
			}
			iv = json_integer_value(v);
			if (dt == CIRC_I32) {
				if (iv < INT32_MIN || iv > INT32_MAX) {
					free(data);
					return circ_errorf(e, "tensor: data[%zu] out of i32 range",
							   i);
				}
				int32_t x = (int32_t)iv;
				memcpy(p, &x, 4);
			} else if (dt == CIRC_I64) {
				int64_t x = iv;
				memcpy(p, &x, 8);
			} else {
				if (iv < 0 || iv > 255) {
					free(data);
					return circ_errorf(e, "tensor: data[%zu] out of u8 range",
							   i);
				}
				*p = (unsigned char)iv;
			}
			break;
		}
		default: free(data); return circ_errorf(e, "tensor: unsupported dtype");
		}
	}
	circ_pack_tensor(pk, dt, (int)nd, shape, data);
	free(data);
	return 0;
}

static int is_tensor_json(const json_t *j)
{
	const char *k;
	json_t *v;
	int i = 0;
	static const char *const keys[3] = {"dtype", "shape", "data"};
	if (json_object_size(j) != 3)
		return 0;
	json_object_foreach((json_t *)j, k, v)
	{
		if (strcmp(k, keys[i++]))
			return 0;
	}
	return json_is_string(json_object_get(j, "dtype")) &&
	       json_is_array(json_object_get(j, "shape")) &&
	       json_is_array(json_object_get(j, "data"));
}

static int pack_json(const json_t *j, msgpack_packer *pk, int depth, circ_error *e)
{
	double d;
	/* as deep as a reader takes (stream.h) */
	if (depth >= CIRC_MAX_DEPTH && (json_is_array(j) || json_is_object(j)))
		return circ_errorf(e, "nesting deeper than %d levels", CIRC_MAX_DEPTH);
	switch (json_typeof(j)) {
	case JSON_NULL: msgpack_pack_nil(pk); break;
	case JSON_TRUE: msgpack_pack_true(pk); break;
	case JSON_FALSE: msgpack_pack_false(pk); break;
	case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(j)); break;
	case JSON_REAL: msgpack_pack_double(pk, json_real_value(j)); break;
	case JSON_STRING: circ_pack_strn(pk, json_string_value(j), json_string_length(j)); break;
	case JSON_ARRAY:
		msgpack_pack_array(pk, json_array_size(j));
		for (size_t i = 0; i < json_array_size(j); i++)
			if (pack_json(json_array_get(j, i), pk, depth + 1, e) < 0)
				return -1;
		break;
	case JSON_OBJECT: {
		const char *k;
		json_t *v;
		const json_t *b;
		if (nonfinite_value(j, &d)) {
			msgpack_pack_double(pk, d);
			break;
		}
		if (json_object_size(j) == 1 && (b = json_object_get(j, "$base64")) &&
		    json_is_string(b)) {
			unsigned char *raw;
			size_t n;
			if (base64_decode(json_string_value(b), json_string_length(b), &raw, &n) <
			    0)
				return circ_errorf(e, "\"$base64\": invalid base64 text");
			msgpack_pack_bin(pk, n);
			msgpack_pack_bin_body(pk, raw, n);
			free(raw);
			break;
		}
		if (is_tensor_json(j))
			return pack_tensor_json(j, pk, e);
		msgpack_pack_map(pk, json_object_size(j));
		json_object_foreach((json_t *)j, k, v)
		{
			circ_pack_strn(pk, k, strlen(k));
			if (pack_json(v, pk, depth + 1, e) < 0)
				return circ_error_prefix(e, "field '%s'", k);
		}
		break;
	}
	}
	return 0;
}

int circ_json_to_msgpack(const json_t *j, msgpack_packer *pk, circ_error *e)
{
	return pack_json(j, pk, 0, e);
}
