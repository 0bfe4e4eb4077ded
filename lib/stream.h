/*
 * stream: circ's record streams.
 *
 * A stream is a header record, then data records, then (in binary form) a
 * trailer. Every record is one msgpack map. The bytes are zstd-compressed by
 * default; readers sniff the first bytes and accept zstd, plain msgpack, or
 * JSON lines (one JSON object per line, as `circ cat` prints them).
 *
 * Header (record 0): {"format":"circ","version":1,"kind":<kind>,
 *   "tool":..,"tool_version":..,"args":[..],"inputs":[..], <kind fields>}.
 * End record (the trailer): {"$end":{"records":N}}, N the data records since
 * the header. Every writer ends with it, in binary form and as the last line
 * of JSON lines, and readers check the count. A binary stream that ends
 * without it is reported as incomplete, and so are JSON lines whose header
 * has a "tool" field (a tool wrote them), so the output of a tool that died
 * half-way, or a copy cut at a line boundary, never passes for a whole stream.
 * JSON lines written by hand (no "tool" in the header, or no header) may
 * leave it out; where they give it, it is checked.
 *
 * Tensors are maps {"dtype":"f32","shape":[..],"data":<bin, little endian>}.
 * In JSON form their data is an array of numbers (f32 printed with 9
 * significant digits), so JSON -> stream -> JSON is byte-identical.
 * Any other bin is {"$base64":"..."} in JSON.
 *
 * Reading is streaming: memory is bounded by the largest record.
 * Records are numbered from 0 (the header); errors read
 * "'<file>': record N: <problem>".
 */
#ifndef CIRC_STREAM_H
#define CIRC_STREAM_H

#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>

#include "util.h"

#define CIRC_FORMAT	    "circ"
#define CIRC_FORMAT_VERSION 1

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

/* ---- reader ---- */
typedef struct circ_reader circ_reader;

/* Opens path ("-" is stdin) and reads the header. If kind is not NULL the
 * header's kind must equal it. A JSON-lines input whose first line is not a
 * header gets a generic header of kind "records". NULL on error. */
circ_reader *circ_reader_open(const char *path, const char *kind, circ_error *e);
/* The same on an open descriptor (not closed by the reader); name is used
 * in messages. */
circ_reader *circ_reader_open_fd(int fd, const char *name, const char *kind, circ_error *e);
/* The header map; valid while the reader lives. */
const msgpack_object *circ_reader_header(const circ_reader *r);
const char *circ_reader_kind(const circ_reader *r);
/* Next data record: 1 and *rec set (valid until the next call), 0 at the
 * proper end of the stream, -1 on error. */
int circ_reader_next(circ_reader *r, const msgpack_object **rec, circ_error *e);
/* Name for messages ("'file'" or "'<stdin>'") and current record number. */
const char *circ_reader_name(const circ_reader *r);
int64_t circ_reader_recno(const circ_reader *r);
/* Prefixes e with "'<file>': record N: " and returns -1. */
int circ_reader_fail(const circ_reader *r, circ_error *e);
/* "sha256:..." over the header record's msgpack bytes: identifies the input
 * and, through its provenance, everything upstream. */
const char *circ_reader_header_digest(const circ_reader *r);
/* Concatenated streams ("parts"): a part whose header equals an earlier
 * part's is refused (the same stream twice). fn, if set, is called at the end
 * of each part with its header and number of data records, and returns 0 or
 * -1 with a message (prefixed with the file and record); circ_reader_next
 * then fails with it. */
typedef int (*circ_reader_part_fn)(void *ctx, const msgpack_object *hdr, int64_t nrec,
				   circ_error *e);
void circ_reader_on_part_end(circ_reader *r, circ_reader_part_fn fn, void *ctx);
void circ_reader_free(circ_reader *r);

/* ---- writer ---- */
typedef struct circ_writer_opts {
	int json;     /* write JSON lines instead of a binary stream */
	int compress; /* zstd (default 1) */
	int level;    /* zstd level (default 3) */
	int force;    /* allow binary output to a terminal */
	int no_end;   /* write no end record: the output is not a stream (circ-cat
		       * --header, --no-header) */
} circ_writer_opts;
void circ_writer_opts_default(circ_writer_opts *o);

typedef struct circ_writer circ_writer;
/* Opens path ("-" is stdout). Refuses binary output to a terminal unless forced.
 * A path is written through a temporary beside it (circ_atomic_open in
 * util.h): renamed into place by circ_writer_close, removed by
 * circ_writer_abort, at exit and on fatal signals. */
circ_writer *circ_writer_open(const char *path, const circ_writer_opts *o, circ_error *e);
/* The packer for the current record: pack exactly one map, then call
 * circ_writer_end_record. */
msgpack_packer *circ_writer_packer(circ_writer *w);
int circ_writer_end_record(circ_writer *w, circ_error *e);
/* Packs the header's first entries and leaves the map open for nextra more
 * key/value pairs of the kind's own; the caller packs them and calls
 * circ_writer_end_record. inputs may be NULL; each input is a reader whose
 * kind and header digest are recorded. */
void circ_writer_header(circ_writer *w, const char *kind, int argc, char **argv,
			circ_reader *const *inputs, int ninputs, int nextra);
/* Writes a record that is already msgpack bytes (one map). */
int circ_writer_raw(circ_writer *w, const void *buf, size_t n, circ_error *e);
/* Writes the end record (the trailer; in JSON lines its last line), ends the
 * zstd frame, flushes and closes; checks every step. Must be called once;
 * after an error, use circ_writer_abort. */
int circ_writer_close(circ_writer *w, circ_error *e);
/* Frees without writing the trailer (on the error path). */
void circ_writer_abort(circ_writer *w);

#endif
