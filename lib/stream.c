/*
 * stream: reading and writing circ's record streams (see stream.h).
 *
 * Reading has two layers. The byte layer yields the stream's bytes, from a
 * plain file or through a zstd decoder (sniffed by the frame magic). The
 * record layer turns those bytes into msgpack objects, either straight from
 * msgpack (bytes are decompressed directly into the unpacker's buffer, so a
 * record is copied once) or by parsing JSON lines (sniffed by '{'), which are
 * converted to msgpack so that every tool sees the same objects.
 *
 * Writing packs each record through a msgpack packer whose callback stages
 * small writes and passes large ones (tensor data) straight to the zstd
 * encoder. Every write is checked; an output named by path is written to a
 * temporary and renamed at close, so a failed run leaves no file that looks
 * complete; on a pipe, the missing trailer tells the reader the same.
 */
#include "stream.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "json.h"

#define CHUNK	    (1u << 17)
#define UNPACK_INIT (1u << 23) /* unpacker buffer: whole tensor records land without regrowth */
#define UNPACK_READ (1u << 20)
#define STAGE_CAP   (1u << 16)

/* ---- reader ---- */

enum { FMT_MSGPACK, FMT_JSON };

struct circ_reader {
	char *name; /* quoted, for messages */
	int fd, own_fd;
	/* byte layer */
	int zstd;
	ZSTD_DStream *zd;
	unsigned char *in; /* (CHUNK) raw input */
	ZSTD_inBuffer zin;
	size_t zret; /* last ZSTD_decompressStream result: 0 = at a frame boundary */
	int raw_eof;
	unsigned char *pend; /* decoded bytes read while sniffing, not yet consumed */
	size_t npend, pend_off;
	/* record layer */
	int fmt;
	msgpack_unpacker up;
	int up_init;
	msgpack_unpacked res;
	char *line;
	size_t line_len, line_cap, line_off;
	int line_eof;
	size_t js_n;	  /* bytes of the current line scanned so far (jscan) */
	size_t js_values; /* and what they hold: values, open brackets, string state */
	int js_depth, js_str, js_esc;
	msgpack_sbuffer jsb;
	msgpack_unpacked jres;
	size_t max_record, max_values;
	/* A byte-layer error met while reading ahead: the bytes before it are
	 * still parsed, and the error is reported for the record that needs more
	 * (byte_err: 1 once set; byte_msg: the problem, without its prefix). */
	int byte_err;
	char byte_msg[200];
	/* stream state */
	msgpack_sbuffer hdr_sb;
	msgpack_unpacked hdr;
	char hdr_digest[72];
	char *kind;
	const msgpack_object *pending; /* first data record of a headerless JSON input */
	int64_t recno, ndata_part;
	int ended, parts;
	/* concatenated streams: each part's header digest (a part repeated is
	 * refused), a copy of the current part's header after the first, and the
	 * caller's check at the end of each part */
	char (*part_digest)[72]; /* (parts) */
	msgpack_sbuffer part_sb;
	msgpack_unpacked part_hdr;
	circ_reader_part_fn part_end;
	void *part_ctx;
	int part_checked; /* the last part's check ran (at the end of the input) */
	int need_end;	  /* the current part must end with its end record (see stream.h) */
};

/* "'<file>': record N: <formatted>" for record N. */
static int rec_vfail(const circ_reader *r, circ_error *e, int64_t recno, const char *fmt,
		     va_list ap) CIRC_PRINTF(4, 0);
static int rec_vfail(const circ_reader *r, circ_error *e, int64_t recno, const char *fmt,
		     va_list ap)
{
	char m[sizeof e->msg];
	vsnprintf(m, sizeof m, fmt, ap);
	return circ_errorf(e, "%s: record %lld: %s", r->name, (long long)recno, m);
}

/* A problem with the record last returned. */
static int rd_fail(const circ_reader *r, circ_error *e, const char *fmt, ...) CIRC_PRINTF(3, 4);
static int rd_fail(const circ_reader *r, circ_error *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	rec_vfail(r, e, r->recno, fmt, ap);
	va_end(ap);
	return -1;
}

int circ_reader_fail(const circ_reader *r, circ_error *e)
{
	return circ_error_prefix(e, "%s: record %lld", r->name, (long long)r->recno);
}

/* As rd_fail, for the record being read (the one after the last returned). */
static int next_fail(const circ_reader *r, circ_error *e, const char *fmt, ...) CIRC_PRINTF(3, 4);
static int next_fail(const circ_reader *r, circ_error *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	rec_vfail(r, e, r->recno + 1, fmt, ap);
	va_end(ap);
	return -1;
}

/* Keeps a byte-layer problem (see byte_err) and reports it. */
static int byte_fail(circ_reader *r, circ_error *e, const char *fmt, ...) CIRC_PRINTF(3, 4);
static int byte_fail(circ_reader *r, circ_error *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->byte_msg, sizeof r->byte_msg, fmt, ap);
	va_end(ap);
	r->byte_err = 1;
	return next_fail(r, e, "%s", r->byte_msg);
}

/* Reads raw bytes; 0 at EOF. */
static ssize_t raw_read(circ_reader *r, void *buf, size_t n, circ_error *e)
{
	ssize_t k;
	if (r->raw_eof)
		return 0;
	do
		k = read(r->fd, buf, n);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		return byte_fail(r, e, "read error: %s", strerror(errno));
	if (k == 0)
		r->raw_eof = 1;
	return k;
}

/* Byte layer: up to n decoded bytes into buf; 0 at proper EOF, -1 on error.
 * After an error every call fails again, naming the record then being read. */
static ssize_t bytes_read(circ_reader *r, void *buf, size_t n, circ_error *e)
{
	if (r->byte_err)
		return next_fail(r, e, "%s", r->byte_msg);
	if (r->pend_off < r->npend) {
		size_t k = r->npend - r->pend_off < n ? r->npend - r->pend_off : n;
		memcpy(buf, r->pend + r->pend_off, k);
		r->pend_off += k;
		return (ssize_t)k;
	}
	if (!r->zstd)
		return raw_read(r, buf, n, e);
	for (;;) {
		ZSTD_outBuffer out = {buf, n, 0};
		size_t ret;
		if (r->zin.pos == r->zin.size) {
			ssize_t k = raw_read(r, r->in, CHUNK, e);
			if (k < 0)
				return -1;
			if (k == 0) {
				if (r->zret != 0)
					return byte_fail(
					    r, e,
					    "truncated zstd frame (input ends inside a "
					    "compressed frame)");
				return 0;
			}
			r->zin.src = r->in;
			r->zin.size = (size_t)k;
			r->zin.pos = 0;
		}
		ret = ZSTD_decompressStream(r->zd, &out, &r->zin);
		if (ZSTD_isError(ret))
			return byte_fail(r, e, "corrupt zstd data: %s", ZSTD_getErrorName(ret));
		r->zret = ret;
		if (out.pos > 0)
			return (ssize_t)out.pos;
	}
}

/* mp_scan's answers besides "whole" (1) and "needs more bytes" (0). */
enum { MP_INVALID = -1, MP_DEEP = -2, MP_MANY = -3, MP_BIG = -4 };

/* What a msgpack object's first byte c announces: a length field of w
 * bytes follows (whose value, times per, is more items for a container, or
 * more payload bytes otherwise), then skip payload bytes; kids items are
 * known from c itself; box for a map or an array. -1 for 0xc1, which
 * msgpack never uses. The reader's scan and the writer's check share it. */
typedef struct mp_head {
	unsigned w, per;
	uint64_t skip, kids;
	int box;
} mp_head;

static int mp_head_of(unsigned c, mp_head *h)
{
	memset(h, 0, sizeof *h);
	if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
		return 0; /* a one-byte value */
	if (c <= 0x8f) {
		h->kids = 2 * (uint64_t)(c & 0xf), h->box = 1;
		return 0;
	}
	if (c <= 0x9f) {
		h->kids = c & 0xf, h->box = 1;
		return 0;
	}
	if (c <= 0xbf) {
		h->skip = c & 0x1f;
		return 0;
	}
	switch (c) {
	case 0xc4:
	case 0xd9: h->w = 1; break;
	case 0xc5:
	case 0xda: h->w = 2; break;
	case 0xc6:
	case 0xdb: h->w = 4; break;
	case 0xc7: h->w = 1, h->skip = 1; break;
	case 0xc8: h->w = 2, h->skip = 1; break;
	case 0xc9: h->w = 4, h->skip = 1; break;
	case 0xca: h->skip = 4; break;
	case 0xcb: h->skip = 8; break;
	case 0xcc:
	case 0xd0: h->skip = 1; break;
	case 0xcd:
	case 0xd1: h->skip = 2; break;
	case 0xce:
	case 0xd2: h->skip = 4; break;
	case 0xcf:
	case 0xd3: h->skip = 8; break;
	case 0xd4: h->skip = 2; break;
	case 0xd5: h->skip = 3; break;
	case 0xd6: h->skip = 5; break;
	case 0xd7: h->skip = 9; break;
	case 0xd8: h->skip = 17; break;
	case 0xdc: h->w = 2, h->per = 1, h->box = 1; break;
	case 0xdd: h->w = 4, h->per = 1, h->box = 1; break;
	case 0xde: h->w = 2, h->per = 2, h->box = 1; break;
	case 0xdf: h->w = 4, h->per = 2, h->box = 1; break;
	default: return -1;
	}
	return 0;
}

/* The head h completed by its length field's value v. */
static void mp_head_len(mp_head *h, uint64_t v)
{
	if (h->box)
		h->kids += h->per * v;
	else
		h->skip += v;
}

/* Scans the msgpack object at p without allocating: 1 and its length in *len
 * if the n bytes hold it whole, 0 if it needs more bytes, or an MP_ problem.
 * The unpacker is only called on whole objects that passed this scan, so a
 * tiny input that declares a map of 2^32 entries cannot make it allocate
 * gigabytes, and neither can a small zstd frame that inflates to 10^8 nils
 * (the unpacker spends 24 bytes on each value): more than max_values values
 * fail as soon as the scan has seen them, before the record is read whole,
 * and so do a container declaring more items, or a string or bin declaring
 * more bytes (max_bytes), than a record may hold: they are refused on sight.
 * Nesting is limited to the unpacker's stack (CIRC_MAX_DEPTH containers). */
static int mp_scan(const unsigned char *p, size_t n, size_t max_values, size_t max_bytes,
		   size_t *len)
{
	uint64_t left[CIRC_MAX_DEPTH + 1]; /* values still due at each open level */
	int depth = 0;			   /* left[0]: the one top-level object */
	size_t i = 0, nvalues = 0;
	left[0] = 1;
	while (depth >= 0) {
		mp_head h;
		if (i >= n)
			return 0;
		if (++nvalues > max_values)
			return MP_MANY;
		left[depth]--;
		if (mp_head_of(p[i++], &h) < 0)
			return MP_INVALID;
		if (h.w) {
			uint64_t v = 0;
			if (n - i < h.w)
				return 0;
			for (size_t j = 0; j < h.w; j++)
				v = v << 8 | p[i + j];
			i += h.w;
			mp_head_len(&h, v);
		}
		uint64_t skip = h.skip, kids = h.kids;
		int box = h.box;
		if (kids > max_values - nvalues)
			return MP_MANY;
		if (skip > max_bytes || i + skip > max_bytes)
			return MP_BIG;
		if (n - i < skip)
			return 0;
		i += (size_t)skip;
		/* the unpacker refuses a container, empty or not, below CIRC_MAX_DEPTH
		 * open ones; an empty one opens no level */
		if (box && depth == CIRC_MAX_DEPTH)
			return MP_DEEP;
		if (kids)
			left[++depth] = kids;
		while (depth >= 0 && left[depth] == 0)
			depth--;
	}
	*len = i;
	return 1;
}

/* Record layer, msgpack: next object or 0 at EOF. */
static int next_msgpack(circ_reader *r, const msgpack_object **o, circ_error *e)
{
	for (;;) {
		size_t avail = r->up.used - r->up.off, len = 0;
		int scan = 0;
		if (avail)
			scan = mp_scan((const unsigned char *)r->up.buffer + r->up.off, avail,
				       r->max_values, r->max_record, &len);
		if (scan == MP_INVALID)
			return next_fail(r, e, "invalid msgpack data");
		if (scan == MP_DEEP)
			return next_fail(r, e, "nesting deeper than %d levels", CIRC_MAX_DEPTH);
		if (scan == MP_MANY)
			return next_fail(r, e,
					 "more than %zu values in one record (CIRC_MAX_VALUES "
					 "raises the limit)",
					 r->max_values);
		if (scan == 1) {
			msgpack_unpack_return ret = msgpack_unpacker_next(&r->up, &r->res);
			if (ret == MSGPACK_UNPACK_SUCCESS) {
				*o = &r->res.data;
				return 1;
			}
			if (ret == MSGPACK_UNPACK_NOMEM_ERROR)
				return next_fail(r, e, "out of memory");
			return next_fail(r, e, "invalid msgpack data");
		}
		if (scan == MP_BIG || avail > r->max_record)
			return next_fail(r, e,
					 "record larger than %zu bytes (CIRC_MAX_RECORD raises the "
					 "limit)",
					 r->max_record);
		/* Grow reads geometrically so that rescanning a large record stays linear. */
		{
			size_t want = avail > UNPACK_READ ? avail : UNPACK_READ, got = 0;
			ssize_t k;
			if (msgpack_unpacker_buffer_capacity(&r->up) < want &&
			    !msgpack_unpacker_reserve_buffer(&r->up, want))
				return next_fail(r, e, "out of memory");
			while (got < want) {
				k = bytes_read(r, msgpack_unpacker_buffer(&r->up),
					       msgpack_unpacker_buffer_capacity(&r->up), e);
				if (k < 0) {
					/* parse what came before the error first: the
					 * error belongs to the record that needs more */
					if (got > 0)
						break;
					return -1;
				}
				if (k == 0)
					break;
				msgpack_unpacker_buffer_consumed(&r->up, (size_t)k);
				got += (size_t)k;
				if (msgpack_unpacker_buffer_capacity(&r->up) == 0)
					break;
			}
			if (got == 0) {
				if (avail > 0)
					return next_fail(r, e,
							 "truncated msgpack object at end of input "
							 "(a declared length runs past the data)");
				return 0;
			}
		}
	}
}

/* Scans the current line's bytes that arrived since the last call, up to its
 * newline: 1 if the line is whole (js_n its length), 0 if it needs more bytes,
 * -1 on a problem. The scan counts what jansson would build before it builds
 * it (tens of bytes a value), so a line of 10^8 nulls or 100,000 open
 * brackets is refused early and by name; it counts the structural bytes
 * ('[', '{', ',' and ':'), one or more per value. A NUL byte is named too
 * (jansson would stop at it, and it is no whitespace). */
static int jscan(circ_reader *r, circ_error *e)
{
	/* no buffer before the first read (NULL + 0 is undefined) */
	const unsigned char *p = r->line ? (const unsigned char *)r->line + r->line_off : NULL;
	size_t n = r->line_len - r->line_off, i;
	for (i = r->js_n; i < n; i++) {
		unsigned c = p[i];
		if (c == '\n') {
			r->js_n = i;
			return 1;
		}
		if (c == 0)
			return next_fail(r, e, "invalid JSON: NUL byte at column %zu", i + 1);
		if (r->js_str) {
			if (r->js_esc)
				r->js_esc = 0;
			else if (c == '\\')
				r->js_esc = 1;
			else if (c == '"')
				r->js_str = 0;
			continue;
		}
		switch (c) {
		case '"': r->js_str = 1; break;
		case '[':
		case '{':
			if (++r->js_depth > CIRC_MAX_DEPTH)
				return next_fail(r, e, "nesting deeper than %d levels",
						 CIRC_MAX_DEPTH);
			/* fall through */
		case ',':
		case ':':
			if (++r->js_values > r->max_values)
				return next_fail(r, e,
						 "more than %zu values in one record "
						 "(CIRC_MAX_VALUES raises the limit)",
						 r->max_values);
			break;
		case ']':
		case '}':
			if (r->js_depth > 0)
				r->js_depth--;
			break;
		}
	}
	r->js_n = n;
	return 0;
}

/* Record layer, JSON lines: next object or 0 at EOF. Blank lines are skipped. */
static int next_json(circ_reader *r, const msgpack_object **o, circ_error *e)
{
	for (;;) {
		size_t start = r->line_off, n, i;
		json_t *j;
		json_error_t je;
		msgpack_packer pk;
		size_t off = 0;
		int whole = jscan(r, e);
		if (whole < 0)
			return -1;
		if (!whole && !r->line_eof) {
			ssize_t k;
			if (r->line_off) {
				memmove(r->line, r->line + r->line_off, r->line_len - r->line_off);
				r->line_len -= r->line_off;
				r->line_off = 0;
			}
			if (r->line_cap - r->line_len < CHUNK) {
				if (r->line_len > r->max_record)
					return next_fail(r, e,
							 "line longer than %zu bytes "
							 "(CIRC_MAX_RECORD raises the limit)",
							 r->max_record);
				r->line_cap = r->line_cap * 2 + CHUNK;
				r->line = circ_xrealloc(r->line, r->line_cap);
			}
			k = bytes_read(r, r->line + r->line_len, r->line_cap - r->line_len, e);
			if (k < 0)
				return -1;
			if (k == 0)
				r->line_eof = 1;
			r->line_len += (size_t)k;
			continue;
		}
		n = r->js_n;
		if (!whole && n == 0)
			return 0;
		r->line_off = start + n + (size_t)whole;
		r->js_n = r->js_values = 0;
		r->js_depth = r->js_str = r->js_esc = 0;
		for (i = 0; i < n; i++) {
			char c = r->line[start + i];
			if (c != ' ' && c != '\t' && c != '\r')
				break;
		}
		if (i == n)
			continue;
		j = json_loadb(r->line + start, n, JSON_DECODE_ANY, &je);
		if (!j)
			return next_fail(r, e, "invalid JSON: %s (column %d)", je.text, je.column);
		if (!json_is_object(j)) {
			json_decref(j);
			return next_fail(r, e, "expected a JSON object per line");
		}
		msgpack_sbuffer_clear(&r->jsb);
		msgpack_packer_init(&pk, &r->jsb, msgpack_sbuffer_write);
		if (circ_json_to_msgpack(j, &pk, e) < 0) {
			json_decref(j);
			return circ_error_prefix(e, "%s: record %lld", r->name,
						 (long long)r->recno + 1);
		}
		json_decref(j);
		if (msgpack_unpack_next(&r->jres, r->jsb.data, r->jsb.size, &off) !=
		    MSGPACK_UNPACK_SUCCESS)
			return next_fail(r, e, "internal error converting JSON");
		*o = &r->jres.data;
		return 1;
	}
}

static int next_raw(circ_reader *r, const msgpack_object **o, circ_error *e)
{
	return r->fmt == FMT_JSON ? next_json(r, o, e) : next_msgpack(r, o, e);
}

static int first_key_is(const msgpack_object *o, const char *k)
{
	return o->type == MSGPACK_OBJECT_MAP && o->via.map.size > 0 &&
	       circ_obj_str_eq(&o->via.map.ptr[0].key, k);
}

/* Validates a header record and keeps an owned copy of the first one. */
static int take_header(circ_reader *r, const msgpack_object *o, circ_error *e)
{
	const msgpack_object *f = circ_rec_get(o, "format"), *v, *k;
	msgpack_packer pk;
	size_t off = 0;
	if (!circ_obj_str_eq(f, CIRC_FORMAT)) {
		if (f && f->type == MSGPACK_OBJECT_STR)
			return rd_fail(r, e, "foreign header: format is '%.*s', not 'circ'",
				       (int)f->via.str.size, f->via.str.ptr);
		return rd_fail(r, e, "foreign header: 'format' is not a string");
	}
	v = circ_rec_get(o, "version");
	if (!v || v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return rd_fail(r, e, "header has no valid 'version'");
	if (v->via.u64 != CIRC_FORMAT_VERSION)
		return rd_fail(r, e, "unknown stream version %llu (this circ reads version %d)",
			       (unsigned long long)v->via.u64, CIRC_FORMAT_VERSION);
	k = circ_rec_get(o, "kind");
	if (!k || k->type != MSGPACK_OBJECT_STR)
		return rd_fail(r, e, "header has no 'kind'");
	/* Binary streams always end with their end record; JSON lines when a tool
	 * wrote them (a header with "tool"), not when a person did. */
	r->need_end = r->fmt == FMT_MSGPACK || circ_rec_get(o, "tool") != NULL;
	if (r->parts > 0) {
		const msgpack_object *a = circ_rec_get(&r->hdr.data, "model_digest"),
				     *b = circ_rec_get(o, "model_digest");
		char d[72];
		if (!circ_obj_str_eq(k, r->kind))
			return rd_fail(r, e, "concatenated stream of kind '%.*s' follows kind '%s'",
				       (int)k->via.str.size, k->via.str.ptr, r->kind);
		if (a && b && !msgpack_object_equal(*a, *b))
			return rd_fail(r, e,
				       "concatenated stream comes from another model "
				       "(model_digest differs)");
		/* the same header twice is the same stream (or shard) twice: its
		 * records would count twice */
		r->part_sb.size = 0;
		msgpack_packer_init(&pk, &r->part_sb, msgpack_sbuffer_write);
		msgpack_pack_object(&pk, *o);
		{
			circ_sha256 s;
			circ_sha256_init(&s);
			circ_sha256_update(&s, r->part_sb.data, r->part_sb.size);
			circ_sha256_final_hex(&s, d);
		}
		for (int i = 0; i < r->parts; i++)
			if (!strcmp(r->part_digest[i], d))
				return rd_fail(
				    r, e,
				    "concatenated stream repeats the header of part %d (the "
				    "same stream or shard twice would count its records "
				    "twice)",
				    i + 1);
		if (msgpack_unpack_next(&r->part_hdr, r->part_sb.data, r->part_sb.size, &off) !=
		    MSGPACK_UNPACK_SUCCESS)
			return rd_fail(r, e, "internal error copying the header");
		r->part_digest =
		    circ_xrealloc(r->part_digest, (size_t)(r->parts + 1) * sizeof *r->part_digest);
		memcpy(r->part_digest[r->parts], d, sizeof d);
		r->parts++;
		return 0;
	}
	msgpack_packer_init(&pk, &r->hdr_sb, msgpack_sbuffer_write);
	msgpack_pack_object(&pk, *o);
	if (msgpack_unpack_next(&r->hdr, r->hdr_sb.data, r->hdr_sb.size, &off) !=
	    MSGPACK_UNPACK_SUCCESS)
		return rd_fail(r, e, "internal error copying the header");
	{
		circ_sha256 s;
		circ_sha256_init(&s);
		circ_sha256_update(&s, r->hdr_sb.data, r->hdr_sb.size);
		circ_sha256_final_hex(&s, r->hdr_digest);
	}
	k = circ_rec_get(&r->hdr.data, "kind");
	r->kind = circ_xmalloc(k->via.str.size + 1);
	memcpy(r->kind, k->via.str.ptr, k->via.str.size);
	r->kind[k->via.str.size] = 0;
	r->part_digest = circ_xmalloc(sizeof *r->part_digest);
	memcpy(r->part_digest[0], r->hdr_digest, sizeof r->hdr_digest);
	r->parts = 1;
	return 0;
}

/* Runs the caller's check on the part that just ended (its header and
 * number of data records); its message gets the file and record. */
static int end_part(circ_reader *r, circ_error *e)
{
	const msgpack_object *h = r->parts > 1 ? &r->part_hdr.data : &r->hdr.data;
	if (!r->part_end || r->part_end(r->part_ctx, h, r->ndata_part, e) == 0)
		return 0;
	return circ_reader_fail(r, e);
}

void circ_reader_on_part_end(circ_reader *r, circ_reader_part_fn fn, void *ctx)
{
	r->part_end = fn;
	r->part_ctx = ctx;
}

static void generic_header(circ_reader *r)
{
	msgpack_packer pk;
	size_t off = 0;
	circ_sha256 s;
	msgpack_packer_init(&pk, &r->hdr_sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 3);
	circ_pack_kv_str(&pk, "format", CIRC_FORMAT);
	circ_pack_kv_i64(&pk, "version", CIRC_FORMAT_VERSION);
	circ_pack_kv_str(&pk, "kind", "records");
	msgpack_unpack_next(&r->hdr, r->hdr_sb.data, r->hdr_sb.size, &off);
	circ_sha256_init(&s);
	circ_sha256_update(&s, r->hdr_sb.data, r->hdr_sb.size);
	circ_sha256_final_hex(&s, r->hdr_digest);
	r->kind = circ_xstrdup("records");
	r->part_digest = circ_xmalloc(sizeof *r->part_digest);
	memcpy(r->part_digest[0], r->hdr_digest, sizeof r->hdr_digest);
	r->parts = 1;
}

static circ_reader *reader_start(circ_reader *r, const char *kind, circ_error *e);

circ_reader *circ_reader_open_fd(int fd, const char *name, const char *kind, circ_error *e)
{
	circ_reader *r = circ_xcalloc(1, sizeof *r);
	size_t len = strlen(name) + 3;
	r->name = circ_xmalloc(len);
	snprintf(r->name, len, "'%s'", name);
	r->fd = fd;
	return reader_start(r, kind, e);
}

circ_reader *circ_reader_open(const char *path, const char *kind, circ_error *e)
{
	circ_reader *r = circ_xcalloc(1, sizeof *r);
	if (!strcmp(path, "-")) {
		r->name = circ_xstrdup("'<stdin>'");
		r->fd = 0;
	} else {
		struct stat st;
		size_t len = strlen(path) + 3;
		r->name = circ_xmalloc(len);
		snprintf(r->name, len, "'%s'", path);
		r->fd = open(path, O_RDONLY);
		if (r->fd < 0) {
			circ_errorf(e, "%s: %s", r->name, strerror(errno));
			goto fail;
		}
		r->own_fd = 1;
		if (fstat(r->fd, &st) == 0 && S_ISDIR(st.st_mode)) {
			circ_errorf(e, "%s: is a directory", r->name);
			goto fail;
		}
	}
	return reader_start(r, kind, e);
fail:
	circ_reader_free(r);
	return NULL;
}

/* Sniffs the encoding and format, then reads and checks the header. */
static circ_reader *reader_start(circ_reader *r, const char *kind, circ_error *e)
{
	const msgpack_object *o;
	unsigned char head[4096];
	ssize_t n;
	size_t i;
	const char *lim = getenv("CIRC_MAX_RECORD");
	int64_t limv;

	r->recno = -1; /* messages before the header is read name record 0 */
	r->max_record = (size_t)1 << 31;
	if (lim && circ_parse_i64(lim, &limv) == 0 && limv > 0)
		r->max_record = (size_t)limv;
	lim = getenv("CIRC_MAX_VALUES");
	r->max_values = CIRC_MAX_VALUES;
	if (lim && circ_parse_i64(lim, &limv) == 0 && limv > 0)
		r->max_values = (size_t)limv;
	msgpack_sbuffer_init(&r->jsb);
	msgpack_sbuffer_init(&r->hdr_sb);
	msgpack_sbuffer_init(&r->part_sb);
	msgpack_unpacked_init(&r->part_hdr);
	msgpack_unpacked_init(&r->res);
	msgpack_unpacked_init(&r->jres);
	msgpack_unpacked_init(&r->hdr);
	r->in = circ_xmalloc(CHUNK);
	/* Sniff: zstd magic, then (after decoding) '{' for JSON lines. */
	n = raw_read(r, r->in, 4, e);
	if (n < 0)
		goto fail;
	while (n > 0 && n < 4) {
		ssize_t k = raw_read(r, r->in + n, (size_t)(4 - n), e);
		if (k < 0)
			goto fail;
		if (k == 0)
			break;
		n += k;
	}
	if (n == 4 && r->in[0] == 0x28 && r->in[1] == 0xb5 && r->in[2] == 0x2f &&
	    r->in[3] == 0xfd) {
		r->zstd = 1;
		r->zd = ZSTD_createDStream();
		if (!r->zd) {
			circ_errorf(e, "%s: cannot create zstd decoder", r->name);
			goto fail;
		}
		r->zin.src = r->in;
		r->zin.size = (size_t)n;
		r->zin.pos = 0;
		r->zret = 1;
		n = 0;
	} else {
		memcpy(head, r->in, (size_t)n);
	}
	/* Gather the first decoded bytes for the format sniff. */
	{
		size_t have = (size_t)n;
		while (have < 64) {
			ssize_t k;
			if (r->zstd) {
				k = bytes_read(r, head + have, sizeof head - have, e);
			} else {
				k = raw_read(r, head + have, sizeof head - have, e);
			}
			if (k < 0)
				goto fail;
			if (k == 0)
				break;
			have += (size_t)k;
		}
		r->pend = circ_xmalloc(have ? have : 1);
		memcpy(r->pend, head, have);
		r->npend = have;
	}
	if (r->npend == 0) {
		circ_errorf(e, "%s: record 0: empty input (no header)", r->name);
		goto fail;
	}
	/* Text: a '{' after blanks, or blanks (no msgpack header starts with one;
	 * blanks alone are then empty JSON lines). A NUL is no blank. */
	for (i = 0; i < r->npend && (r->pend[i] == ' ' || r->pend[i] == '\t' ||
				     r->pend[i] == '\r' || r->pend[i] == '\n');
	     i++)
		;
	if (i > 0 || r->pend[0] == '{') {
		r->fmt = FMT_JSON;
	} else {
		r->fmt = FMT_MSGPACK;
		if (!msgpack_unpacker_init(&r->up, UNPACK_INIT)) {
			circ_errorf(e, "%s: out of memory", r->name);
			goto fail;
		}
		r->up_init = 1;
	}
	n = next_raw(r, &o, e);
	r->recno = 0;
	if (n < 0)
		goto fail;
	if (n == 0) {
		circ_errorf(e, "%s: record 0: empty input (no header)", r->name);
		goto fail;
	}
	if (o->type != MSGPACK_OBJECT_MAP) {
		rd_fail(r, e, "expected a map, got %s", circ_obj_type_name(o));
		goto fail;
	}
	if (circ_rec_get(o, "format")) {
		if (take_header(r, o, e) < 0)
			goto fail;
	} else if (r->fmt == FMT_JSON && !first_key_is(o, "$end")) {
		generic_header(r);
		r->pending = o;
	} else {
		rd_fail(r, e, "missing header: the first record has no 'format' field");
		goto fail;
	}
	if (kind && strcmp(r->kind, kind) && strcmp(r->kind, "records")) {
		rd_fail(r, e, "stream kind is '%s', expected '%s'", r->kind, kind);
		goto fail;
	}
	return r;
fail:
	circ_reader_free(r);
	return NULL;
}

const msgpack_object *circ_reader_header(const circ_reader *r)
{
	return &r->hdr.data;
}

const char *circ_reader_kind(const circ_reader *r)
{
	return r->kind;
}

const char *circ_reader_name(const circ_reader *r)
{
	return r->name;
}

int64_t circ_reader_recno(const circ_reader *r)
{
	return r->recno;
}

const char *circ_reader_header_digest(const circ_reader *r)
{
	return r->hdr_digest;
}

int circ_reader_next(circ_reader *r, const msgpack_object **rec, circ_error *e)
{
	const msgpack_object *o;
	int k;
	if (r->pending) {
		*rec = r->pending;
		r->pending = NULL;
		r->recno++;
		r->ndata_part++;
		return 1;
	}
	for (;;) {
		k = next_raw(r, &o, e);
		if (k < 0)
			return -1;
		if (k == 0) {
			if (r->need_end && !r->ended)
				return next_fail(r, e,
						 "stream ends without its end record (incomplete: "
						 "the writer did not finish)");
			if (!r->part_checked) {
				r->part_checked = 1;
				if (end_part(r, e) < 0)
					return -1;
			}
			return 0;
		}
		r->recno++;
		if (o->type != MSGPACK_OBJECT_MAP)
			return rd_fail(r, e, "expected a map, got %s", circ_obj_type_name(o));
		if (first_key_is(o, "$end")) {
			const msgpack_object *c = circ_rec_get(&o->via.map.ptr[0].val, "records");
			if (r->ended)
				return rd_fail(r, e, "second end record");
			if (!c || c->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
				return rd_fail(r, e, "end record without a record count");
			if ((int64_t)c->via.u64 != r->ndata_part)
				return rd_fail(
				    r, e, "end record counts %llu records, stream has %lld",
				    (unsigned long long)c->via.u64, (long long)r->ndata_part);
			r->ended = 1;
			r->recno--;
			continue;
		}
		if (circ_rec_get(o, "format") && (r->ended || r->fmt == FMT_JSON)) {
			/* the next of several concatenated streams */
			if (r->need_end && !r->ended)
				return rd_fail(r, e,
					       "the stream before this header ends without its end "
					       "record (incomplete: the writer did not finish)");
			if (end_part(r, e) < 0 || take_header(r, o, e) < 0)
				return -1;
			r->ended = 0;
			r->ndata_part = 0;
			r->recno--;
			continue;
		}
		if (r->ended)
			return rd_fail(r, e, "data after the end record");
		r->ndata_part++;
		*rec = o;
		return 1;
	}
}

void circ_reader_free(circ_reader *r)
{
	if (!r)
		return;
	if (r->own_fd && r->fd >= 0)
		close(r->fd);
	if (r->zd)
		ZSTD_freeDStream(r->zd);
	if (r->up_init) {
		msgpack_unpacked_destroy(&r->res);
		msgpack_unpacker_destroy(&r->up);
	}
	msgpack_unpacked_destroy(&r->jres);
	msgpack_unpacked_destroy(&r->hdr);
	msgpack_unpacked_destroy(&r->part_hdr);
	msgpack_sbuffer_destroy(&r->jsb);
	msgpack_sbuffer_destroy(&r->hdr_sb);
	msgpack_sbuffer_destroy(&r->part_sb);
	free(r->part_digest);
	free(r->in);
	free(r->pend);
	free(r->line);
	free(r->kind);
	free(r->name);
	free(r);
}

/* ---- writer ---- */

/* What the bytes of the record being written still owe, so that a binary
 * write checks a map's count as the JSON face does (it unpacks the record):
 * a header packed with the wrong number of entries would otherwise be read
 * back with its keys and values shifted, or swallow the next record. No
 * stack is needed: a map of n announces 2n more objects, an array n, and
 * the record is whole when no object is owed. */
typedef struct rec_scan {
	uint64_t owed;	    /* objects still to come in this record */
	uint64_t skip;	    /* payload bytes still to pass over */
	unsigned char h[5]; /* the object's first byte and its length field */
	int hn, hneed;
	int started;
} rec_scan;

/* An object's head (first byte and length field) is complete: what it owes. */
static void scan_object(rec_scan *s)
{
	mp_head h;
	uint64_t v = 0;
	mp_head_of(s->h[0], &h);
	for (unsigned i = 0; i < h.w; i++)
		v = v << 8 | s->h[1 + i];
	if (h.w)
		mp_head_len(&h, v);
	s->owed = s->owed - 1 + h.kids;
	s->skip = h.skip;
}

/* Follows len more bytes of the record; 0, or -1 with the problem in msg
 * when they are not the rest of one msgpack map. */
static int scan_bytes(rec_scan *s, const unsigned char *p, size_t len, char *msg, size_t cap)
{
	while (len) {
		if (s->skip) {
			size_t k = s->skip < len ? (size_t)s->skip : len;
			s->skip -= k;
			p += k;
			len -= k;
			continue;
		}
		if (s->hn == 0) {
			mp_head h;
			unsigned c = *p;
			if (s->owed && (c <= 0x7f || c >= 0xa0) && (c <= 0xbf || c >= 0xe0)) {
				/* fast path: a fixint or fixstr, most of a small record */
				s->owed--;
				s->skip = c >= 0xa0 && c <= 0xbf ? c & 0x1f : 0;
				p++;
				len--;
				continue;
			}
			if (!s->started) {
				s->started = 1;
				s->owed = 1;
				if (!((*p >= 0x80 && *p <= 0x8f) || *p == 0xde || *p == 0xdf)) {
					snprintf(msg, cap, "internal error: record is not a map");
					return -1;
				}
			} else if (s->owed == 0) {
				snprintf(msg, cap,
					 "internal error: record goes on after its map ends "
					 "(a map's count is lower than the entries packed)");
				return -1;
			}
			if (mp_head_of(*p, &h) < 0) {
				snprintf(msg, cap, "internal error: record has byte 0xc1");
				return -1;
			}
			if (len > h.w) { /* the whole head is here: the usual case */
				uint64_t v = 0;
				for (unsigned j = 1; j <= h.w; j++)
					v = v << 8 | p[j];
				if (h.w)
					mp_head_len(&h, v);
				s->owed = s->owed - 1 + h.kids;
				s->skip = h.skip;
				p += 1 + h.w;
				len -= 1 + h.w;
				continue;
			}
			s->hneed = 1 + (int)h.w;
		}
		s->h[s->hn++] = *p++;
		len--;
		if (s->hn == s->hneed) {
			s->hn = 0;
			scan_object(s);
		}
	}
	return 0;
}

/* 1 when the bytes followed since the last record make one whole map. */
static int scan_whole(const rec_scan *s)
{
	return s->started && s->owed == 0 && s->skip == 0 && s->hn == 0;
}

struct circ_writer {
	int fd, own_fd;
	circ_atomic out; /* own_fd: the file (a temporary renamed into place at close) */
	char *name;
	int json, compress;
	ZSTD_CStream *zc;
	unsigned char *zout; /* (zout_cap) */
	size_t zout_cap;
	unsigned char *stage; /* (STAGE_CAP) small writes gathered before the encoder */
	size_t nstage;
	size_t nscan; /* of those, followed by scan */
	msgpack_packer pk;
	msgpack_sbuffer jsb; /* JSON mode: the current record */
	char *jbuf;
	size_t jlen, jcap;
	rec_scan scan; /* binary mode: the current record's shape so far */
	int64_t nrec;  /* records written, header included */
	int no_end;    /* write no end record (circ_writer_opts) */
	int err;       /* first errno from a write, or -1 for an encoder error */
	char errmsg[256];
};

void circ_writer_opts_default(circ_writer_opts *o)
{
	o->json = 0;
	o->compress = 1;
	o->level = 3;
	o->force = 0;
	o->no_end = 0;
}

static int write_all(circ_writer *w, const void *buf, size_t n)
{
	const char *p = buf;
	if (w->err)
		return -1;
	while (n > 0) {
		ssize_t k = write(w->fd, p, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			w->err = k < 0 ? errno : EIO;
			return -1;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int sink(circ_writer *w, const void *buf, size_t n, ZSTD_EndDirective mode)
{
	ZSTD_inBuffer in = {buf, n, 0};
	if (!w->compress)
		return write_all(w, buf, n);
	for (;;) {
		ZSTD_outBuffer out = {w->zout, w->zout_cap, 0};
		size_t r = ZSTD_compressStream2(w->zc, &out, &in, mode);
		if (ZSTD_isError(r)) {
			w->err = -1;
			snprintf(w->errmsg, sizeof w->errmsg, "zstd: %s", ZSTD_getErrorName(r));
			return -1;
		}
		if (out.pos && write_all(w, w->zout, out.pos) < 0)
			return -1;
		if (mode == ZSTD_e_end ? r == 0 : in.pos == in.size)
			return 0;
	}
}

/* Follows the staged bytes not yet followed, then buf (len bytes: a large
 * write that bypasses the stage); -1 with w->err set when they are not the
 * rest of one map. It runs at each record's end and before the stage is
 * emptied, over runs of bytes rather than each packer call, which keeps the
 * check's cost on small records low. */
static int scan_pending(circ_writer *w, const void *buf, size_t len, int64_t recno)
{
	char m[200];
	if ((w->nstage > w->nscan &&
	     scan_bytes(&w->scan, w->stage + w->nscan, w->nstage - w->nscan, m, sizeof m) < 0) ||
	    (len && scan_bytes(&w->scan, buf, len, m, sizeof m) < 0)) {
		snprintf(w->errmsg, sizeof w->errmsg, "record %lld: %s", (long long)recno, m);
		w->err = -1;
		return -1;
	}
	w->nscan = w->nstage;
	return 0;
}

static int flush_stage(circ_writer *w)
{
	int r = 0;
	if (scan_pending(w, NULL, 0, w->nrec) < 0)
		return -1;
	if (w->nstage)
		r = sink(w, w->stage, w->nstage, ZSTD_e_continue);
	w->nstage = w->nscan = 0;
	return r;
}

static int pack_cb(void *data, const char *buf, size_t len)
{
	circ_writer *w = data;
	if (w->err)
		return -1;
	if (w->json)
		return msgpack_sbuffer_write(&w->jsb, buf, len);
	if (len >= STAGE_CAP / 2) {
		if (flush_stage(w) < 0 || scan_pending(w, buf, len, w->nrec) < 0)
			return -1;
		return sink(w, buf, len, ZSTD_e_continue);
	}
	if (w->nstage + len > STAGE_CAP && flush_stage(w) < 0)
		return -1;
	memcpy(w->stage + w->nstage, buf, len);
	w->nstage += len;
	return 0;
}

static int wr_error(circ_writer *w, circ_error *e)
{
	if (w->err == -1)
		return circ_errorf(e, "%s: %s", w->name, w->errmsg);
	if (w->err == EPIPE)
		return circ_errorf(e, "%s: write error: broken pipe", w->name);
	return circ_errorf(e, "%s: write error: %s", w->name, strerror(w->err));
}

circ_writer *circ_writer_open(const char *path, const circ_writer_opts *o, circ_error *e)
{
	circ_writer *w = circ_xcalloc(1, sizeof *w);
	circ_writer_opts def;
	if (!o) {
		circ_writer_opts_default(&def);
		o = &def;
	}
	w->json = o->json;
	w->compress = !o->json && o->compress;
	w->no_end = o->no_end;
	if (!strcmp(path, "-")) {
		w->fd = 1;
		w->name = circ_xstrdup("'<stdout>'");
	} else {
		size_t n = strlen(path) + 32;
		w->name = circ_xmalloc(n);
		snprintf(w->name, n, "'%s'", path);
		if (circ_atomic_open(&w->out, path, e) < 0) {
			circ_writer_abort(w);
			return NULL;
		}
		w->fd = w->out.fd;
		w->own_fd = 1;
	}
	if (!w->json && !o->force && isatty(w->fd)) {
		circ_errorf(e, "refusing to write a binary stream to a terminal "
			       "(use --json to read it, or --force)");
		circ_writer_abort(w);
		return NULL;
	}
	if (w->compress) {
		size_t r;
		w->zc = ZSTD_createCStream();
		if (!w->zc) {
			circ_errorf(e, "cannot create zstd encoder");
			circ_writer_abort(w);
			return NULL;
		}
		r = ZSTD_CCtx_setParameter(w->zc, ZSTD_c_compressionLevel, o->level);
		if (!ZSTD_isError(r))
			r = ZSTD_CCtx_setParameter(w->zc, ZSTD_c_checksumFlag, 1);
		if (ZSTD_isError(r)) {
			circ_errorf(e, "zstd: %s", ZSTD_getErrorName(r));
			circ_writer_abort(w);
			return NULL;
		}
		w->zout_cap = ZSTD_CStreamOutSize();
		w->zout = circ_xmalloc(w->zout_cap);
	}
	w->stage = circ_xmalloc(STAGE_CAP);
	msgpack_sbuffer_init(&w->jsb);
	msgpack_packer_init(&w->pk, w, pack_cb);
	return w;
}

msgpack_packer *circ_writer_packer(circ_writer *w)
{
	return &w->pk;
}

int circ_writer_end_record(circ_writer *w, circ_error *e)
{
	if (w->err)
		return wr_error(w, e);
	w->nrec++;
	if (w->json) {
		msgpack_unpacked u;
		size_t off = 0;
		int r;
		msgpack_unpacked_init(&u);
		if (msgpack_unpack_next(&u, w->jsb.data, w->jsb.size, &off) !=
			MSGPACK_UNPACK_SUCCESS ||
		    off != w->jsb.size) {
			msgpack_unpacked_destroy(&u);
			return circ_errorf(
			    e, "%s: internal error: record is not one msgpack object", w->name);
		}
		w->jlen = 0;
		r = circ_json_from_msgpack(&u.data, &w->jbuf, &w->jlen, &w->jcap, e);
		msgpack_unpacked_destroy(&u);
		msgpack_sbuffer_clear(&w->jsb);
		if (r < 0)
			return circ_error_prefix(e, "%s: record %lld", w->name,
						 (long long)w->nrec - 1);
		w->jbuf[w->jlen++] = '\n';
		if (write_all(w, w->jbuf, w->jlen) < 0)
			return wr_error(w, e);
		return 0;
	}
	if (scan_pending(w, NULL, 0, w->nrec - 1) < 0)
		return wr_error(w, e);
	if (!scan_whole(&w->scan)) {
		w->err = -1;
		snprintf(w->errmsg, sizeof w->errmsg,
			 "record %lld: internal error: record is not one whole map (a map's "
			 "count is higher than the entries packed)",
			 (long long)w->nrec - 1);
		return wr_error(w, e);
	}
	memset(&w->scan, 0, sizeof w->scan);
	if (w->nstage >= STAGE_CAP / 2 && flush_stage(w) < 0)
		return wr_error(w, e);
	return 0;
}

int circ_writer_raw(circ_writer *w, const void *buf, size_t n, circ_error *e)
{
	pack_cb(w, buf, n);
	return circ_writer_end_record(w, e);
}

/* ---- declarative headers ---- */

int circ_hdr_count(const circ_hdr_field *f, int nf)
{
	int n = 0;
	for (int i = 0; i < nf; i++)
		n += !f[i].skip;
	return n;
}

void circ_hdr_pack(msgpack_packer *pk, const circ_hdr_field *f, int nf)
{
	for (int i = 0; i < nf; i++) {
		if (f[i].skip)
			continue;
		circ_pack_str(pk, f[i].key);
		switch (f[i].type) {
		case CIRC_HDR_STR: circ_pack_str(pk, f[i].s); break;
		case CIRC_HDR_I64: msgpack_pack_int64(pk, f[i].i); break;
		case CIRC_HDR_F64: msgpack_pack_double(pk, f[i].f); break;
		case CIRC_HDR_BOOL:
			if (f[i].i)
				msgpack_pack_true(pk);
			else
				msgpack_pack_false(pk);
			break;
		case CIRC_HDR_OBJ:
			if (f[i].o)
				msgpack_pack_object(pk, *f[i].o);
			else
				msgpack_pack_nil(pk);
			break;
		case CIRC_HDR_PACK: f[i].pack(pk, f[i].ctx); break;
		}
	}
}

int circ_hdr_read(const msgpack_object *hdr, circ_hdr_field *f, int nf, circ_error *e)
{
	for (int i = 0; i < nf; i++) {
		const msgpack_object *o = circ_rec_get(hdr, f[i].key);
		int r = 0;
		f[i].skip = 0;
		f[i].o = o;
		if (!o) {
			if (f[i].optional) {
				f[i].skip = 1;
				continue;
			}
			return circ_errorf(e, "missing field '%s'", f[i].key);
		}
		switch (f[i].type) {
		case CIRC_HDR_STR: r = circ_rec_str(hdr, f[i].key, &f[i].s, &f[i].n, e); break;
		case CIRC_HDR_I64: r = circ_rec_i64(hdr, f[i].key, &f[i].i, e); break;
		case CIRC_HDR_F64: r = circ_rec_f64(hdr, f[i].key, &f[i].f, e); break;
		case CIRC_HDR_BOOL: {
			int b = 0;
			r = circ_rec_bool(hdr, f[i].key, &b, e);
			f[i].i = b;
			break;
		}
		case CIRC_HDR_OBJ:
			if (o->type != MSGPACK_OBJECT_MAP)
				r = circ_errorf(e, "field '%s': expected a map, got %s", f[i].key,
						circ_obj_type_name(o));
			break;
		case CIRC_HDR_PACK: break;
		}
		if (r < 0)
			return -1;
	}
	return 0;
}

const circ_hdr_field *circ_hdr_find(const circ_hdr_field *f, int nf, const char *key)
{
	for (int i = 0; i < nf; i++)
		if (!strcmp(f[i].key, key))
			return &f[i];
	return NULL;
}

circ_hdr_field circ_hdr_dataset_digest(const circ_reader *r)
{
	const msgpack_object *dd = circ_rec_get(circ_reader_header(r), "dataset_digest");
	circ_hdr_field f = CIRC_HDR(STR, "dataset_digest", circ_reader_header_digest(r));
	if (dd && dd->type == MSGPACK_OBJECT_STR) {
		f.type = CIRC_HDR_OBJ;
		f.o = dd;
	}
	return f;
}

char *circ_hdr_strdup(const circ_hdr_field *f)
{
	char *s;
	if (f->skip || f->type != CIRC_HDR_STR || !f->s)
		return NULL;
	s = circ_xmalloc(f->n + 1);
	memcpy(s, f->s, f->n);
	s[f->n] = 0;
	return s;
}

typedef struct hdr_args {
	int argc;
	char **argv;
} hdr_args;

typedef struct hdr_inputs {
	circ_reader *const *r;
	int n;
} hdr_inputs;

/* "args": the command line after the tool's name. */
static void pack_args(msgpack_packer *pk, const void *ctx)
{
	const hdr_args *a = ctx;
	msgpack_pack_array(pk, a->argc > 1 ? (size_t)a->argc - 1 : 0);
	for (int i = 1; i < a->argc; i++)
		circ_pack_str(pk, a->argv[i]);
}

/* "inputs": each input stream's kind and header digest. */
static void pack_inputs(msgpack_packer *pk, const void *ctx)
{
	const hdr_inputs *in = ctx;
	msgpack_pack_array(pk, (size_t)in->n);
	for (int i = 0; i < in->n; i++) {
		msgpack_pack_map(pk, 2);
		circ_pack_kv_str(pk, "kind", circ_reader_kind(in->r[i]));
		circ_pack_kv_str(pk, "digest", circ_reader_header_digest(in->r[i]));
	}
}

int circ_writer_header_fields(circ_writer *w, const char *kind, int argc, char **argv,
			      circ_reader *const *inputs, int ninputs, const circ_hdr_field *f,
			      int nf, circ_error *e)
{
	return circ_writer_header_ext(w, kind, argc, argv, inputs, ninputs, f, nf, NULL, 0, e);
}

int circ_writer_header_ext(circ_writer *w, const char *kind, int argc, char **argv,
			   circ_reader *const *inputs, int ninputs, const circ_hdr_field *f, int nf,
			   const circ_hdr_field *extra, int nextra, circ_error *e)
{
	hdr_args a = {argc, argv};
	hdr_inputs in = {inputs, ninputs};
	circ_hdr_field common[] = {
	    CIRC_HDR(STR, "format", CIRC_FORMAT),
	    CIRC_HDR(I64, "version", CIRC_FORMAT_VERSION),
	    CIRC_HDR(STR, "kind", kind),
	    CIRC_HDR(STR, "tool", circ_progname),
	    CIRC_HDR(STR, "tool_version", CIRC_VERSION),
	    CIRC_HDR_FN("args", pack_args, &a),
	    CIRC_HDR_FN("inputs", pack_inputs, &in),
	};
	msgpack_pack_map(&w->pk, (size_t)(circ_hdr_count(common, CIRC_HDR_N(common)) +
					  circ_hdr_count(f, nf) + circ_hdr_count(extra, nextra)));
	circ_hdr_pack(&w->pk, common, CIRC_HDR_N(common));
	circ_hdr_pack(&w->pk, f, nf);
	circ_hdr_pack(&w->pk, extra, nextra);
	return circ_writer_end_record(w, e);
}

int circ_writer_close(circ_writer *w, circ_error *e)
{
	int rc = 0;
	if (!w)
		return 0;
	if (w->err) {
		rc = wr_error(w, e);
		goto out;
	}
	if (w->json && !w->no_end) {
		/* the end record as circ_json_from_msgpack shows it */
		char line[64];
		int n = snprintf(line, sizeof line, "{\"$end\":{\"records\":%lld}}\n",
				 (long long)(w->nrec > 0 ? w->nrec - 1 : 0));
		if (write_all(w, line, (size_t)n) < 0) {
			rc = wr_error(w, e);
			goto out;
		}
	} else if (!w->json) {
		if (w->scan.started || w->nstage > w->nscan) {
			w->err = -1;
			snprintf(w->errmsg, sizeof w->errmsg,
				 "record %lld: internal error: record not ended",
				 (long long)w->nrec);
			rc = wr_error(w, e);
			goto out;
		}
		if (!w->no_end) {
			msgpack_pack_map(&w->pk, 1);
			circ_pack_str(&w->pk, "$end");
			msgpack_pack_map(&w->pk, 1);
			circ_pack_kv_i64(&w->pk, "records", w->nrec > 0 ? w->nrec - 1 : 0);
		}
		if (flush_stage(w) < 0 || (w->compress && sink(w, NULL, 0, ZSTD_e_end) < 0)) {
			rc = wr_error(w, e);
			goto out;
		}
	}
	if (w->own_fd) {
		w->own_fd = 0;
		rc = circ_atomic_commit(&w->out, e);
	}
out:
	circ_writer_abort(w);
	return rc;
}

void circ_writer_abort(circ_writer *w)
{
	if (!w)
		return;
	if (w->own_fd)
		circ_atomic_abort(&w->out);
	if (w->zc)
		ZSTD_freeCStream(w->zc);
	msgpack_sbuffer_destroy(&w->jsb);
	free(w->zout);
	free(w->stage);
	free(w->jbuf);
	free(w->name);
	free(w);
}
