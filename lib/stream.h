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
 * Any other bin is {"$base64":"..."} in JSON. Tensors, field access and
 * packing helpers live in record.h (below this module and json.h, which this
 * one uses: json.h never uses stream.h).
 *
 * Writing checks the shape of every record in binary form as the JSON form
 * does: a map packed with more or fewer entries than its count fails the
 * record (an internal error), never a silently corrupt stream. Headers are
 * written from tables (circ_hdr_field) whose count the writer computes.
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

#include "record.h"
#include "util.h"

#define CIRC_FORMAT	    "circ"
#define CIRC_FORMAT_VERSION 1

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

/* ---- declarative headers ----
 * A kind's own header fields as a table, one skeleton for writer and
 * reader. The writer packs the common fields (format, version, kind, tool,
 * tool_version, args, inputs) and then the table's fields that are not
 * skipped, in table order, the map's count computed from the table. A
 * reader fills the same table from a header, and its errors name the field.
 *
 *	circ_hdr_field f[] = {
 *		CIRC_HDR(STR, "metric", name),
 *		CIRC_HDR_IF(n >= 0, I64, "n_examples", n),
 *		CIRC_HDR_FN("graph", pack_graph, g),
 *	};
 *	circ_writer_header_fields(w, "scores", argc, argv, &r, 1, f, CIRC_HDR_N(f), &e);
 */
typedef enum circ_hdr_type {
	CIRC_HDR_STR,  /* s (writer: NUL-terminated; reader: s and n, not terminated) */
	CIRC_HDR_I64,  /* i */
	CIRC_HDR_F64,  /* f (reader: any number) */
	CIRC_HDR_BOOL, /* i: 0 or 1 */
	CIRC_HDR_OBJ,  /* o: any msgpack value, packed as it is */
	CIRC_HDR_PACK  /* writer: pack(pk, ctx) packs the value; reader: like OBJ */
} circ_hdr_type;

typedef void (*circ_hdr_pack_fn)(msgpack_packer *pk, const void *ctx);

typedef struct circ_hdr_field {
	const char *key;
	circ_hdr_type type;
	int skip;     /* writer: leave the field out; reader: set when it is absent */
	int optional; /* reader: the field may be absent (then skip is set) */
	const char *s;
	size_t n;
	int64_t i;
	double f;
	const msgpack_object *o;
	circ_hdr_pack_fn pack;
	const void *ctx;
} circ_hdr_field;

#define CIRC_HDR_N(f) ((int)(sizeof(f) / sizeof((f)[0])))
/* Writer fields: CIRC_HDR(T, key, value) with T one of STR, I64, F64,
 * BOOL, OBJ; CIRC_HDR_IF(cond, T, key, value) is left out when cond is
 * false; CIRC_HDR_FN[_IF] packs through fn(pk, ctx). */
#define CIRC_HDR_IF(c, T, k, v)                                                                    \
	{                                                                                          \
		.key = (k), .type = CIRC_HDR_##T, .skip = !(c), CIRC_HDR_V_##T(v)                  \
	}
#define CIRC_HDR(T, k, v)  CIRC_HDR_IF(1, T, k, v)
#define CIRC_HDR_V_STR(v)  .s = (v)
#define CIRC_HDR_V_I64(v)  .i = (v)
#define CIRC_HDR_V_F64(v)  .f = (v)
#define CIRC_HDR_V_BOOL(v) .i = !!(v)
#define CIRC_HDR_V_OBJ(v)  .o = (v)
#define CIRC_HDR_FN_IF(c, k, fn, x)                                                                \
	{                                                                                          \
		.key = (k), .type = CIRC_HDR_PACK, .skip = !(c), .pack = (fn), .ctx = (x)          \
	}
#define CIRC_HDR_FN(k, fn, x) CIRC_HDR_FN_IF(1, k, fn, x)
/* Reader fields of type T (STR, I64, F64, BOOL, OBJ: a map, as o):
 * required, or optional (skip set when absent). */
#define CIRC_HDR_READ(T, k, opt)                                                                   \
	{                                                                                          \
		.key = (k), .type = CIRC_HDR_##T, .optional = (opt)                                \
	}
#define CIRC_HDR_NEED(T, k) CIRC_HDR_READ(T, k, 0)
#define CIRC_HDR_MAY(T, k)  CIRC_HDR_READ(T, k, 1)

/* The number of fields the table packs (those not skipped). */
int circ_hdr_count(const circ_hdr_field *f, int nf);
/* Packs the fields not skipped as key/value pairs (no map header). */
void circ_hdr_pack(msgpack_packer *pk, const circ_hdr_field *f, int nf);
/* Fills f from the map hdr: each field's value (pointers into hdr, valid
 * while it lives), skip set for an absent optional field. -1 with
 * "header: field 'k': ..." on a missing required field or a wrong type. */
int circ_hdr_read(const msgpack_object *hdr, circ_hdr_field *f, int nf, circ_error *e);
/* The field named key in f, or NULL. */
const circ_hdr_field *circ_hdr_find(const circ_hdr_field *f, int nf, const char *key);
/* The field "dataset_digest" that a stream made from r's records carries:
 * r's own dataset_digest where its header has one (the dataset's, passed on
 * from tokens), else r's header digest. */
circ_hdr_field circ_hdr_dataset_digest(const circ_reader *r);
/* A heap copy of a read string field (NULL when skipped); free it. */
char *circ_hdr_strdup(const circ_hdr_field *f);

/* Writes the header record: the common fields, then f's (nf may be 0), and
 * ends the record (circ_writer_end_record's result). inputs may be NULL;
 * each input is a reader whose kind and header digest are recorded. */
int circ_writer_header_fields(circ_writer *w, const char *kind, int argc, char **argv,
			      circ_reader *const *inputs, int ninputs, const circ_hdr_field *f,
			      int nf, circ_error *e);
/* The same with a second table after the first: a module's own fields,
 * then its caller's extra ones (extra may be NULL when nextra is 0). */
int circ_writer_header_ext(circ_writer *w, const char *kind, int argc, char **argv,
			   circ_reader *const *inputs, int ninputs, const circ_hdr_field *f, int nf,
			   const circ_hdr_field *extra, int nextra, circ_error *e);
/* Writes a record that is already msgpack bytes (one map). */
int circ_writer_raw(circ_writer *w, const void *buf, size_t n, circ_error *e);
/* Writes the end record (the trailer; in JSON lines its last line), ends the
 * zstd frame, flushes and closes; checks every step. Must be called once;
 * after an error, use circ_writer_abort. */
int circ_writer_close(circ_writer *w, circ_error *e);
/* Frees without writing the trailer (on the error path). */
void circ_writer_abort(circ_writer *w);

#endif
