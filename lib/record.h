/*
 * record: the values of one record (a msgpack map), below the stream
 * (stream.h) and its JSON face (json.h), which both use it: tensors and
 * their dtypes, field access whose errors name the field, packing helpers.
 */
#ifndef CIRC_RECORD_H
#define CIRC_RECORD_H

#include <msgpack.h>
#include <stdint.h>

#include "util.h"

/* What a reader takes in one record, checked before it builds the record:
 * containers nested at most CIRC_MAX_DEPTH deep (msgpack-c's own limit), at
 * most CIRC_MAX_VALUES values (the environment variable of that name changes
 * it; in JSON lines the structural bytes [ { , : are counted), and at most
 * 2 GiB (CIRC_MAX_RECORD in the environment). Each unpacked value costs the
 * reader about 24 bytes (JSON about 40), so a small zstd frame that inflates
 * to 10^8 nils is refused before it takes gigabytes. */
#define CIRC_MAX_DEPTH	32
#define CIRC_MAX_VALUES ((size_t)1 << 24)

/* ---- tensors ---- */
typedef enum circ_dtype {
	CIRC_F32,
	CIRC_F64,
	CIRC_F16,
	CIRC_BF16,
	CIRC_I32,
	CIRC_I64,
	CIRC_U8,
	CIRC_DTYPE_COUNT
} circ_dtype;

#define CIRC_MAX_DIMS 8
/* A tensor field is either a tensor map or, as hand-written JSON lines give it,
 * a plain 1-d array of numbers: all integers make an i32 tensor (i64 when one
 * does not fit), anything else f32. A plain array keeps its items (data is
 * NULL) and is read through circ_tensor_copy_*, like any tensor. */
typedef struct circ_tensor {
	circ_dtype dtype;
	int ndim;
	int64_t shape[CIRC_MAX_DIMS];
	const void *data;	     /* may be unaligned: read with circ_tensor_copy_* */
	size_t nbytes;		     /* numel * dtype size, for a plain array too */
	const msgpack_object *items; /* (shape[0]) a plain array's numbers, or NULL */
} circ_tensor;

const char *circ_dtype_name(circ_dtype d);
int circ_dtype_parse(const char *s, size_t n, circ_dtype *d); /* 0 ok, -1 unknown */
size_t circ_dtype_size(circ_dtype d);
int64_t circ_tensor_numel(const circ_tensor *t);
/* Convert/copy into aligned buffers of numel elements (any float dtype -> f32,
 * any int dtype -> i32 with range check; a plain array's integers -> f32 too,
 * its non-integers are refused as i32). */
int circ_tensor_copy_f32(const circ_tensor *t, float *out, circ_error *e);
int circ_tensor_copy_i32(const circ_tensor *t, int32_t *out, circ_error *e);

/* ---- record field access (errors name the field) ---- */
const msgpack_object *circ_rec_get(const msgpack_object *map, const char *key);
int circ_rec_str(const msgpack_object *map, const char *key, const char **s, size_t *n,
		 circ_error *e);
/* Copies into a NUL-terminated heap string (free it). */
int circ_rec_strdup(const msgpack_object *map, const char *key, char **s, circ_error *e);
int circ_rec_i64(const msgpack_object *map, const char *key, int64_t *v, circ_error *e);
int circ_rec_f64(const msgpack_object *map, const char *key, double *v, circ_error *e);
int circ_rec_bool(const msgpack_object *map, const char *key, int *v, circ_error *e);
/* Array field: *arr points to the items. */
int circ_rec_array(const msgpack_object *map, const char *key, const msgpack_object_array **arr,
		   circ_error *e);
int circ_rec_tensor(const msgpack_object *map, const char *key, circ_tensor *t, circ_error *e);
/* Decode an object (not a field) as a tensor. */
int circ_obj_tensor(const msgpack_object *o, circ_tensor *t, circ_error *e);
const char *circ_obj_type_name(const msgpack_object *o);
/* 1 if a str object equals s. */
int circ_obj_str_eq(const msgpack_object *o, const char *s);

/* ---- packing helpers ---- */
void circ_pack_str(msgpack_packer *pk, const char *s);
void circ_pack_strn(msgpack_packer *pk, const char *s, size_t n);
void circ_pack_kv_str(msgpack_packer *pk, const char *k, const char *v);
void circ_pack_kv_i64(msgpack_packer *pk, const char *k, int64_t v);
void circ_pack_kv_f64(msgpack_packer *pk, const char *k, double v);
/* Packs the tensor map (3 entries). data is little-endian, numel * size bytes. */
void circ_pack_tensor(msgpack_packer *pk, circ_dtype dtype, int ndim, const int64_t *shape,
		      const void *data);
void circ_pack_kv_tensor(msgpack_packer *pk, const char *k, circ_dtype dtype, int ndim,
			 const int64_t *shape, const void *data);

#endif
