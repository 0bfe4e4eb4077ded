/*
 * bpe: GPT-2 byte-level BPE and Hugging Face tokenizer.json BPE (see bpe.h
 * for the exact rules).
 *
 * tokenizer.json adds to the GPT-2 machinery below: a hash of the
 * vocabulary's text (vh_*: ignore_merges, SentencePiece characters), a
 * second hand-written pattern scanner (pretok_llama3) with the same
 * "need more input" contract, the normalizers (normalize), whose texts are
 * encoded whole (encode_whole), and SentencePiece first symbols
 * (sp_symbols) laid out as merge_long expects, tokens wider than a byte.
 *
 * Data layout. Token bytes live in one arena (tok_off/tok_len per id, len
 * -1 for ids the vocabulary skips). The merge list is an open-addressing
 * table keyed by the pair of ids (left << 32 | right) giving the merge's
 * rank and the merged id; GPT-2 has 50000 merges, so the table has 2^17
 * slots and a lookup is one or two probes.
 *
 * Encoding a piece: ids start as the byte tokens; pieces of up to
 * SCAN_MAX bytes merge by a linear scan over a rank array (the rank of the
 * pair at i and i+1), which is fastest for words; longer pieces merge in
 * place over byte positions with a tournament tree over blocks of ranks
 * (merge_long), so a megabyte without a space costs O(n log n), not
 * O(n^2), and about 9 bytes of memory per byte of the piece.
 *
 * The cache maps a piece's bytes to its ids: open addressing over 64-bit
 * hashes, keys and ids in two arenas. When it is half full (or an arena
 * is) it is emptied wholesale: simpler than LRU, and the hot pieces of any
 * text come back within a few kilobytes. Its memory is bounded.
 *
 * Pre-tokenisation scans bytes: ASCII by a small classifier, other
 * characters decoded strictly (no overlongs, no surrogates, nothing past
 * U+10FFFF) and classified with utf8proc_category. Invalid bytes are
 * single "other" characters. The scanner reports "need more input" when a
 * decision depends on bytes past the buffer, which is what lets the
 * streaming encoder cut its input anywhere; it says how far it got, so a
 * long piece arriving in chunks is scanned once, not once per chunk.
 *
 * Loading trusts no size in the files: ids are bounded by the number of
 * tokens named (id_limit) before the table indexed by id is allocated, and
 * added tokens are sized and deduplicated in linear or n log n time.
 */
#include "bpe.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#define SCAN_MAX      64	/* pieces up to this many bytes merge by scanning */
#define SCRATCH_KEEP  (1 << 16) /* merge scratch kept between pieces up to this */
#define PIECE_MAX     INT32_MAX /* longest piece (positions are int32) */
#define CACHE_KEY_MAX 256	/* longer pieces are not cached */
#define CACHE_DEFAULT (1 << 16) /* slots; at most half are used */
#define NO_RANK	      INT32_MAX
#define EMPTY_KEY     UINT64_MAX

typedef struct special {
	char *text;
	size_t len;
	int32_t id;
	int order;	    /* the order added: the first of a repeated text wins */
	int special;	    /* 1: matched only with CIRC_BPE_SPECIAL; 0: always (an added token) */
	int lstrip, rstrip; /* white space before / after it is dropped */
	int single_word;    /* matched only where no word character touches it */
} special;

/* A set of added tokens and their trie, so finding them costs the same
 * however many there are: edges in an open-addressing table keyed
 * node << 8 | byte. A tokenizer.json with a normalizer has two, as Hugging
 * Face tokenizers does: tokens matched in the raw text ("normalized":
 * false) and tokens matched, by their normalized text, in the normalized
 * texts between those. */
typedef struct added_set {
	special *v;
	int n;
	size_t cap;
	int n_plain;		  /* tokens that are not special */
	size_t max;		  /* longest text */
	unsigned char first[256]; /* 1 for a byte some text starts with */
	uint64_t *trie_key;	  /* EMPTY_KEY if free */
	int32_t *trie_next;
	int32_t *trie_term; /* (nodes) the token ending at a node, or -1 */
	size_t trie_mask;
} added_set;

typedef struct cache_slot {
	uint64_t hash; /* 0 = empty (hashes are forced non-zero) */
	uint32_t key_off, key_len, ids_off, n_ids;
} cache_slot;

/* What a tokenizer.json asks for beyond GPT-2 (see bpe.h). */
enum { PRETOK_GPT2, PRETOK_LLAMA3, PRETOK_NONE };
/* Metaspace's prepend_scheme */
enum { META_ALWAYS = 1, META_FIRST, META_NEVER };

struct circ_bpe {
	int pretok;	   /* PRETOK_* */
	int max_digits;	   /* PRETOK_LLAMA3: \p{N}{1,max_digits} */
	int nfc;	   /* normalizer: NFC */
	int sp;		   /* SentencePiece style: vocabulary text as is, ▁ for spaces */
	int sp_prepend;	   /* normalizer: Prepend "▁" to each text between added tokens */
	int sp_replace;	   /* normalizer: Replace " " by "▁" */
	int meta;	   /* pre-tokenizer Metaspace: 0 none, else META_* */
	int byte_fallback; /* characters without a token become <0xNN> tokens */
	int ignore_merges; /* a piece that is a token is that token */
	int32_t bos;	   /* the id TemplateProcessing puts first, or -1 */
	int32_t unk;	   /* model.unk_token's id, or -1 */
	int fuse_unk;	   /* a run of unknown tokens is one */
	/* model vocabulary text -> id (ignore_merges, SentencePiece characters) */
	uint64_t *vh_key; /* hash, 0 if free */
	int32_t *vh_id;
	size_t vh_mask;
	int32_t n_ids;	  /* largest id + 1 */
	int64_t *tok_off; /* (n_ids) offset into tok_bytes */
	int32_t *tok_len; /* (n_ids) byte length, -1 for an unused id */
	unsigned char *tok_bytes;
	size_t tok_used;      /* bytes of tok_bytes in use */
	int32_t byte_id[256]; /* id of each single-byte token, -1 if absent */
	int32_t n_merges;
	size_t pair_mask;   /* pair table has pair_mask + 1 slots */
	uint64_t *pair_key; /* left << 32 | right, EMPTY_KEY if free */
	int32_t *pair_rank;
	int32_t *pair_id;
	added_set raw;	/* added tokens matched in the text as it comes */
	added_set norm; /* added tokens matched in normalized text (see added_set) */
	int32_t eot;
	char digest[72];
	/* piece cache */
	cache_slot *cache;
	size_t cache_mask, cache_count;
	unsigned char *ckeys;
	size_t ckeys_len, ckeys_cap;
	int32_t *cids;
	size_t cids_len, cids_cap;
	/* scratch for merging */
	int32_t *sym, *rank; /* (piece bytes) */
	size_t scratch_cap;
	uint64_t
	    *tree; /* (2 * leaves) least (rank, position) key of each block, and of pairs of them */
	size_t tree_cap;
};

/* ---------------------------------------------------------------- ids */

void circ_ids_push(circ_ids *a, int32_t id)
{
	if (a->n == a->cap) {
		a->cap = a->cap ? a->cap * 2 : 64;
		a->v = circ_xrealloc(a->v, a->cap * sizeof *a->v);
	}
	a->v[a->n++] = id;
}

/* Room for k more ids. */
static void ids_reserve(circ_ids *a, size_t k)
{
	if (a->cap - a->n >= k)
		return;
	size_t cap = a->cap ? a->cap : 64;
	while (cap - a->n < k)
		cap *= 2;
	a->v = circ_xrealloc(a->v, cap * sizeof *a->v);
	a->cap = cap;
}

void circ_ids_free(circ_ids *a)
{
	free(a->v);
	a->v = NULL;
	a->n = a->cap = 0;
}

/* --------------------------------------------------- byte-to-unicode map */

/* GPT-2 maps every byte to a printable code point: the printable bytes
 * '!'..'~', 0xA1..0xAC and 0xAE..0xFF to themselves, the other 68 bytes in
 * order to U+0100 upwards. */
static void byte_to_unicode(int32_t cp_of[256])
{
	int n = 0;
	for (int b = 0; b < 256; b++) {
		if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE))
			cp_of[b] = b;
		else
			cp_of[b] = 256 + n++;
	}
}

/* Inverse: code point -> byte, for code points below 324; -1 elsewhere. */
static int unicode_to_byte(int32_t cp)
{
	static int16_t inv[324];
	static int ready;
	if (!ready) { /* idempotent, so a benign race between threads */
		int32_t cp_of[256];
		byte_to_unicode(cp_of);
		for (int i = 0; i < 324; i++)
			inv[i] = -1;
		for (int b = 0; b < 256; b++)
			inv[cp_of[b]] = (int16_t)b;
		ready = 1;
	}
	return cp >= 0 && cp < 324 ? inv[cp] : -1;
}

/* Converts a vocabulary string (byte-to-unicode form) to raw bytes in out
 * (at most n bytes). Returns the byte count, or -1 if some character is not
 * in the byte-to-unicode image (then the token is not byte-level). */
static long vocab_str_bytes(const char *s, size_t n, unsigned char *out)
{
	const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)s;
	long k = 0;
	size_t i = 0;
	while (i < n) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t l = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
		if (l <= 0)
			return -1;
		int b = unicode_to_byte(cp);
		if (b < 0)
			return -1;
		out[k++] = (unsigned char)b;
		i += (size_t)l;
	}
	return k;
}

/* ------------------------------------------------------------ hashing */

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
	uint64_t h = 0x9e3779b97f4a7c15ULL ^ (n * 0xff51afd7ed558ccdULL), w;
	while (n >= 8) {
		memcpy(&w, p, 8);
		h = (h ^ w) * 0x87c37b91114253d5ULL;
		h ^= h >> 31;
		p += 8;
		n -= 8;
	}
	w = 0;
	memcpy(&w, p, n);
	h = mix64(h ^ w);
	return h ? h : 1;
}

/* ------------------------------------------------------------ pair table */

static inline uint64_t pair_key(int32_t a, int32_t b)
{
	return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static inline size_t pair_find(const circ_bpe *b, uint64_t key)
{
	size_t i = (size_t)mix64(key) & b->pair_mask;
	while (b->pair_key[i] != EMPTY_KEY && b->pair_key[i] != key)
		i = (i + 1) & b->pair_mask;
	return i;
}

/* Rank of merging a with c, or NO_RANK; the merged id in *id. */
static inline int32_t pair_lookup(const circ_bpe *b, int32_t a, int32_t c, int32_t *id)
{
	size_t i = pair_find(b, pair_key(a, c));
	if (b->pair_key[i] == EMPTY_KEY)
		return NO_RANK;
	*id = b->pair_id[i];
	return b->pair_rank[i];
}

/* ------------------------------------------------------------ loading */

/* vocab.json, merges.txt, tokenizer.json: bounded, regular files only. */
static char *read_file(const char *path, size_t *len, circ_error *e)
{
	return circ_read_file(path, CIRC_MAX_TEXT_FILE, len, e);
}

static circ_bpe *bpe_alloc(void)
{
	circ_bpe *b = circ_xcalloc(1, sizeof *b);
	b->eot = -1;
	b->bos = -1;
	b->unk = -1;
	for (int i = 0; i < 256; i++)
		b->byte_id[i] = -1;
	circ_bpe_set_cache(b, CACHE_DEFAULT);
	return b;
}

/* Ids must be below this. The token table is indexed by id and allocated
 * before anything else is checked, so a few bytes of JSON must not be able
 * to ask for gigabytes. Real vocabularies are dense (GPT-2's ids are
 * 0..50256); twice the tokens named plus 1024 leaves room for holes and
 * keeps the table proportional to the file. */
static int64_t id_limit(size_t named)
{
	return 2 * (int64_t)named + 1024;
}

/* A token's text for messages: at most 60 bytes of it. */
#define TOKEN_FMT	"'%.*s%s'"
#define TOKEN_ARG(s, n) (int)((n) < 60 ? (n) : 60), (s), (n) > 60 ? "..." : ""

/* The vocabulary hash: text -> id, for the model's vocabulary (not the
 * added tokens, not the <0xNN> byte tokens), as tokenizers look tokens up. */
static int32_t vh_get(const circ_bpe *b, const unsigned char *p, size_t n, uint64_t h)
{
	for (size_t i = (size_t)h & b->vh_mask; b->vh_key[i]; i = (i + 1) & b->vh_mask)
		if (b->vh_key[i] == h) {
			int32_t id = b->vh_id[i];
			if ((size_t)b->tok_len[id] == n &&
			    !memcmp(b->tok_bytes + b->tok_off[id], p, n))
				return id;
		}
	return -1;
}

static void vh_put(circ_bpe *b, int32_t id)
{
	const unsigned char *p = b->tok_bytes + b->tok_off[id];
	size_t n = (size_t)b->tok_len[id], i;
	uint64_t h = hash_bytes(p, n);
	if (vh_get(b, p, n, h) >= 0) /* the first keeps the text */
		return;
	for (i = (size_t)h & b->vh_mask; b->vh_key[i]; i = (i + 1) & b->vh_mask)
		;
	b->vh_key[i] = h;
	b->vh_id[i] = id;
}

/* "<0xNN>": the byte, else -1. */
static int fallback_byte(const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	const char *hi, *lo;
	if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>' || !s[3] || !s[4] ||
	    !(hi = strchr(hex, s[3])) || !(lo = strchr(hex, s[4])))
		return -1;
	return (int)(hi - hex) * 16 + (int)(lo - hex);
}

/* ------------------------------------------ vocabulary and merges as read
 *
 * A vocabulary is read into a vtab (its entries in file order, and a hash
 * of their text) and the merges are read through an msrc, from either of
 * two readers: jansson's tree of the whole file (the reference, and the
 * reader of every file the fast one gives up on), or the fast reader
 * below, which reads model.vocab and model.merges straight from the bytes
 * and leaves jansson the rest of the file with those two blanked. Both
 * give the same entries in the same order, so the tables built from them
 * are the same. */

typedef struct vent {
	const char *key; /* the token's text (not NUL-terminated) */
	size_t len;
	int64_t id; /* -1: not a non-negative integer */
} vent;

/* The hash of the entries: each slot holds what a lookup compares, so
 * that one costs a slot and the text (two cache misses on a vocabulary of
 * 262,144 tokens, where the three lookups of each of half a million merges
 * are most of the load). */
typedef struct vslot {
	uint64_t hash;	 /* 0 if free (hashes are non-zero) */
	const char *key; /* the entry's */
	uint32_t len, k; /* k: the entry */
} vslot;

typedef struct vtab {
	vent *v;
	size_t n;
	vslot *slot;
	size_t mask;
} vtab;

static void vtab_free(vtab *t)
{
	free(t->v);
	free(t->slot);
	memset(t, 0, sizeof *t);
}

/* The entry of text s, or -1. */
static int64_t vtab_find(const vtab *t, const char *s, size_t n, uint64_t h)
{
	if (!t->slot)
		return -1;
	for (size_t i = (size_t)h & t->mask; t->slot[i].hash; i = (i + 1) & t->mask) {
		const vslot *v = &t->slot[i];
		if (v->hash == h && v->len == n && !memcmp(v->key, s, n))
			return (int64_t)v->k;
	}
	return -1;
}

/* Hashes the entries; -1 if a text is there twice (the JSON readers
 * refuse repeated keys before this) or one is 4 GB long. */
static int vtab_index(vtab *t)
{
	size_t cap = 16;
	while (cap < 2 * t->n + 2)
		cap *= 2;
	t->mask = cap - 1;
	t->slot = circ_xcalloc(cap, sizeof *t->slot);
	for (size_t k = 0; k < t->n; k++) {
		const vent *v = &t->v[k];
		uint64_t h = hash_bytes((const unsigned char *)v->key, v->len);
		size_t i;
		if (v->len >= UINT32_MAX || vtab_find(t, v->key, v->len, h) >= 0)
			return -1;
		for (i = (size_t)h & t->mask; t->slot[i].hash; i = (i + 1) & t->mask)
			;
		t->slot[i] = (vslot){h, v->key, (uint32_t)v->len, (uint32_t)k};
	}
	return 0;
}

/* Looks a vocabulary string up; -1 if absent. */
static int32_t vocab_get(const vtab *t, const char *s, size_t n)
{
	int64_t k = vtab_find(t, s, n, hash_bytes((const unsigned char *)s, n));
	return k < 0 ? -1 : (int32_t)t->v[k].id;
}

/* The entries of a JSON object of token -> id (jansson keeps the file's
 * order); -1 with more than UINT32_MAX - 1 of them. */
static int vtab_from_json(vtab *t, json_t *vocab)
{
	const char *key;
	json_t *val;
	size_t k = 0;
	memset(t, 0, sizeof *t);
	if (json_object_size(vocab) >= UINT32_MAX)
		return -1;
	t->n = json_object_size(vocab);
	t->v = circ_xmalloc((t->n ? t->n : 1) * sizeof *t->v);
	json_object_foreach(vocab, key, val)
	{
		vent *v = &t->v[k++];
		v->key = key;
		v->len = json_object_iter_key_len(json_object_key_to_iter(key));
		v->id = json_is_integer(val) && json_integer_value(val) >= 0
			    ? (int64_t)json_integer_value(val)
			    : -1;
	}
	return vtab_index(t);
}

/* Where a merge is, for messages: formatted only when one is given. */
typedef struct merge_at {
	const char *file;
	int line; /* 1: line n of merges.txt; 0: tokenizer.json's merges[n] */
	size_t n;
} merge_at;

static void merge_where(char *buf, size_t len, const merge_at *at)
{
	if (at->line)
		snprintf(buf, len, "'%s': line %zu", at->file, at->n);
	else
		snprintf(buf, len, "'%s': merges[%zu]", at->file, at->n);
}

/* Merges as read: a JSON array ("left right" strings or [left, right]
 * pairs), or the fast reader's pairs. */
typedef struct ment {
	const char *l, *r;
	size_t ln, rn;
} ment;

typedef struct msrc {
	json_t *json; /* the array, or NULL */
	const ment *v;
	size_t n;
} msrc;

static size_t msrc_size(const msrc *m)
{
	return m->json ? json_array_size(m->json) : m->n;
}

/* Merge i's two parts; -1 with the message when it is malformed. */
static int msrc_get(const msrc *m, size_t i, const char **l, size_t *ln, const char **r, size_t *rn,
		    const merge_at *at, circ_error *e)
{
	json_t *j;
	char where[1100];
	if (!m->json) {
		*l = m->v[i].l, *ln = m->v[i].ln, *r = m->v[i].r, *rn = m->v[i].rn;
		return 0;
	}
	j = json_array_get(m->json, i);
	if (json_is_string(j)) { /* "left right" */
		const char *s = json_string_value(j), *sp = strchr(s, ' ');
		if (!sp || sp == s || !sp[1] || strchr(sp + 1, ' ')) {
			merge_where(where, sizeof where, at);
			return circ_errorf(e, "%s: expected two tokens separated by one space",
					   where);
		}
		*l = s, *ln = (size_t)(sp - s), *r = sp + 1, *rn = strlen(sp + 1);
		return 0;
	}
	if (json_array_size(j) == 2 && json_is_string(json_array_get(j, 0)) &&
	    json_is_string(json_array_get(j, 1))) { /* ["left", "right"] */
		*l = json_string_value(json_array_get(j, 0));
		*ln = json_string_length(json_array_get(j, 0));
		*r = json_string_value(json_array_get(j, 1));
		*rn = json_string_length(json_array_get(j, 1));
		return 0;
	}
	merge_where(where, sizeof where, at);
	return circ_errorf(e, "%s: expected \"left right\" or [left, right]", where);
}

/* ---- the fast reader
 *
 * Strict where it reads: it accepts a subset of what jansson accepts
 * (RFC 8259 JSON, strings valid UTF-8 without U+0000, integers that fit),
 * and gives up (-1, no message) on anything else, which then goes to
 * jansson's reader for its verdict and message. Strings without escapes
 * are read where they lie; the others are decoded into an arena as long as
 * the part read (no decoded string is longer than its JSON). */

typedef struct jrd {
	const unsigned char *p, *end;
	char *arena; /* at least end - p bytes */
	size_t used;
} jrd;

static void jr_ws(jrd *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t'))
		r->p++;
}

/* Length of the UTF-8 character at p (strict: no overlongs, no
 * surrogates, nothing past U+10FFFF), 0 if invalid. */
static size_t jr_utf8(const unsigned char *p, const unsigned char *end)
{
	unsigned c = p[0], lo = 0x80, hi = 0xBF;
	size_t n;
	if (c >= 0xC2 && c <= 0xDF)
		n = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
	else if (c >= 0xF0 && c <= 0xF4)
		n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
	else
		return 0;
	if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return n;
}

static int jr_hex4(const unsigned char *p, const unsigned char *end, unsigned *v)
{
	*v = 0;
	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		int c = p[i], d = c >= '0' && c <= '9'	 ? c - '0'
				  : c >= 'a' && c <= 'f' ? c - 'a' + 10
				  : c >= 'A' && c <= 'F' ? c - 'A' + 10
							 : -1;
		if (d < 0)
			return -1;
		*v = *v << 4 | (unsigned)d;
	}
	return 0;
}

/* The string at r->p. */
static int jr_str(jrd *r, const char **s, size_t *n)
{
	const unsigned char *p = r->p, *q, *end = r->end;
	char *o, *o0;
	size_t k;
	if (p >= end || *p != '"')
		return -1;
	q = ++p;
	while (p < end && *p != '"' && *p != '\\') {
		if (*p < 0x20)
			return -1;
		if (*p < 0x80)
			p++;
		else if ((k = jr_utf8(p, end)))
			p += k;
		else
			return -1;
	}
	if (p >= end)
		return -1;
	if (*p == '"') {
		*s = (const char *)q, *n = (size_t)(p - q);
		r->p = p + 1;
		return 0;
	}
	o = o0 = r->arena + r->used; /* escapes: decode */
	memcpy(o, q, (size_t)(p - q));
	o += p - q;
	while (p < end && *p != '"') {
		unsigned cp, lo;
		if (*p < 0x20)
			return -1;
		if (*p >= 0x80) {
			if (!(k = jr_utf8(p, end)))
				return -1;
			memcpy(o, p, k);
			o += k, p += k;
			continue;
		}
		if (*p != '\\') {
			*o++ = (char)*p++;
			continue;
		}
		if (++p >= end)
			return -1;
		switch (*p++) {
		case '"': *o++ = '"'; continue;
		case '\\': *o++ = '\\'; continue;
		case '/': *o++ = '/'; continue;
		case 'b': *o++ = '\b'; continue;
		case 'f': *o++ = '\f'; continue;
		case 'n': *o++ = '\n'; continue;
		case 'r': *o++ = '\r'; continue;
		case 't': *o++ = '\t'; continue;
		case 'u': break;
		default: return -1;
		}
		if (jr_hex4(p, end, &cp) < 0 || cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
			return -1;
		p += 4;
		if (cp >= 0xD800 && cp <= 0xDBFF) { /* a surrogate pair */
			if (end - p < 6 || p[0] != '\\' || p[1] != 'u' ||
			    jr_hex4(p + 2, end, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
				return -1;
			p += 6;
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
		}
		if (cp < 0x80) {
			*o++ = (char)cp;
		} else if (cp < 0x800) {
			*o++ = (char)(0xC0 | cp >> 6);
			*o++ = (char)(0x80 | (cp & 0x3F));
		} else if (cp < 0x10000) {
			*o++ = (char)(0xE0 | cp >> 12);
			*o++ = (char)(0x80 | (cp >> 6 & 0x3F));
			*o++ = (char)(0x80 | (cp & 0x3F));
		} else {
			*o++ = (char)(0xF0 | cp >> 18);
			*o++ = (char)(0x80 | (cp >> 12 & 0x3F));
			*o++ = (char)(0x80 | (cp >> 6 & 0x3F));
			*o++ = (char)(0x80 | (cp & 0x3F));
		}
	}
	if (p >= end)
		return -1;
	*s = o0, *n = (size_t)(o - o0);
	r->used += *n;
	r->p = p + 1;
	return 0;
}

/* A non-negative integer of at most 18 digits (no fraction, exponent or
 * leading zero). */
static int jr_uint(jrd *r, int64_t *v)
{
	const unsigned char *p = r->p;
	int64_t x = 0;
	int d = 0;
	while (p < r->end && *p >= '0' && *p <= '9') {
		if (++d > 18)
			return -1;
		x = x * 10 + (*p++ - '0');
	}
	if (!d || (d > 1 && *r->p == '0') || (p < r->end && (*p == '.' || *p == 'e' || *p == 'E')))
		return -1;
	*v = x;
	r->p = p;
	return 0;
}

/* The punctuation c after white space. */
static int jr_is(jrd *r, unsigned char c)
{
	jr_ws(r);
	if (r->p < r->end && *r->p == c) {
		r->p++;
		return 1;
	}
	return 0;
}

/* {"text": id, ...} at r->p into t (entries, not yet indexed). */
static int jr_vocab(jrd *r, vtab *t)
{
	size_t cap = 1024;
	memset(t, 0, sizeof *t);
	if (!jr_is(r, '{'))
		return -1;
	t->v = circ_xmalloc(cap * sizeof *t->v);
	if (jr_is(r, '}'))
		return 0;
	do {
		vent *v;
		if (t->n == cap) {
			cap *= 2;
			t->v = circ_xrealloc(t->v, cap * sizeof *t->v);
		}
		if (t->n + 1 >= UINT32_MAX)
			return -1;
		v = &t->v[t->n++];
		jr_ws(r);
		if (jr_str(r, &v->key, &v->len) < 0 || !jr_is(r, ':'))
			return -1;
		jr_ws(r);
		if (jr_uint(r, &v->id) < 0)
			return -1;
	} while (jr_is(r, ','));
	return jr_is(r, '}') ? 0 : -1;
}

/* ["left right", ...] or [["left", "right"], ...] at r->p. */
static int jr_merges(jrd *r, ment **out, size_t *n)
{
	size_t cap = 1024;
	ment *v = circ_xmalloc(cap * sizeof *v);
	*out = v;
	*n = 0;
	if (!jr_is(r, '['))
		return -1;
	if (jr_is(r, ']'))
		return 0;
	do {
		ment *m;
		if (*n == cap) {
			cap *= 2;
			*out = v = circ_xrealloc(v, cap * sizeof *v);
		}
		m = &v[(*n)++];
		jr_ws(r);
		if (r->p < r->end && *r->p == '"') {
			const char *s, *sp;
			size_t len;
			if (jr_str(r, &s, &len) < 0 || !(sp = memchr(s, ' ', len)) || sp == s ||
			    sp == s + len - 1 || memchr(sp + 1, ' ', (size_t)(s + len - sp - 1)))
				return -1; /* jansson's reader names the merge */
			m->l = s, m->ln = (size_t)(sp - s), m->r = sp + 1;
			m->rn = (size_t)(s + len - sp - 1);
		} else {
			if (!jr_is(r, '['))
				return -1;
			jr_ws(r);
			if (jr_str(r, &m->l, &m->ln) < 0 || !jr_is(r, ','))
				return -1;
			jr_ws(r);
			if (jr_str(r, &m->r, &m->rn) < 0 || !jr_is(r, ']'))
				return -1;
		}
	} while (jr_is(r, ','));
	return jr_is(r, ']') ? 0 : -1;
}

/* Skips the value at r->p: loosely (jansson reads every byte skipped
 * here), but it knows strings, so it finds the end of a valid value. */
static int jr_skip(jrd *r)
{
	int depth = 0;
	jr_ws(r);
	if (r->p >= r->end)
		return -1;
	if (*r->p != '"' && *r->p != '{' && *r->p != '[') { /* a number or a literal */
		const unsigned char *p0 = r->p;
		while (r->p < r->end && *r->p && !strchr(",}] \t\r\n", *r->p))
			r->p++;
		return r->p > p0 ? 0 : -1;
	}
	do {
		unsigned char c;
		if (r->p >= r->end)
			return -1;
		c = *r->p++;
		if (c == '"') {
			while (r->p < r->end && *r->p != '"')
				r->p += *r->p == '\\' ? 2 : 1;
			if (r->p >= r->end)
				return -1;
			r->p++;
		} else if (c == '{' || c == '[') {
			depth++;
		} else if (c == '}' || c == ']') {
			depth--;
		}
	} while (depth > 0);
	return 0;
}

/* The object at r->p: the values of keys[0..nk) (nk <= 8) read by fn,
 * the others skipped. -1 if it is no object, a key is there twice or fn
 * fails. */
typedef int (*jr_value_fn)(jrd *r, int key, void *ctx);

static int jr_object(jrd *r, const char *const *keys, int nk, jr_value_fn fn, void *ctx)
{
	unsigned seen = 0;
	if (!jr_is(r, '{'))
		return -1;
	if (jr_is(r, '}'))
		return 0;
	do {
		const char *s;
		size_t n;
		int k = 0;
		jr_ws(r);
		if (jr_str(r, &s, &n) < 0 || !jr_is(r, ':'))
			return -1;
		jr_ws(r);
		while (k < nk && (strlen(keys[k]) != n || memcmp(keys[k], s, n)))
			k++;
		if (k < nk) {
			if (seen >> k & 1 || fn(r, k, ctx) < 0)
				return -1;
			seen |= 1u << k;
		} else if (jr_skip(r) < 0) {
			return -1;
		}
	} while (jr_is(r, ','));
	return jr_is(r, '}') ? 0 : -1;
}

/* Fills the token table from the vocabulary {token string: id}. Tokens that
 * are not byte-level (only possible among added tokens) keep their UTF-8
 * bytes; in SentencePiece style (b->sp) every token keeps its text but
 * <0xNN>, which is its byte. extra_max is the largest id among the n_added added tokens (or
 * -1). */
static int load_vocab(circ_bpe *b, const vtab *t, int32_t extra_max, size_t n_added,
		      const char *name, circ_error *e)
{
	int64_t max_id = extra_max, limit = id_limit(t->n + n_added);
	size_t total = 0;

	for (size_t k = 0; k < t->n; k++) {
		const vent *v = &t->v[k];
		if (v->id < 0)
			return circ_errorf(
			    e, "'%s': token " TOKEN_FMT ": id must be a non-negative integer", name,
			    TOKEN_ARG(v->key, v->len));
		if (v->id >= limit)
			return circ_errorf(e,
					   "'%s': token " TOKEN_FMT
					   ": id %lld is far beyond the %zu "
					   "tokens given (ids must be below %lld)",
					   name, TOKEN_ARG(v->key, v->len), (long long)v->id,
					   t->n + n_added, (long long)limit);
		if (v->id > max_id)
			max_id = v->id;
		total += v->len;
	}
	if (max_id < 0)
		return circ_errorf(e, "'%s': empty vocabulary", name);
	b->n_ids = (int32_t)(max_id + 1);
	b->tok_off = circ_xmalloc((size_t)b->n_ids * sizeof *b->tok_off);
	b->tok_len = circ_xmalloc((size_t)b->n_ids * sizeof *b->tok_len);
	for (int32_t i = 0; i < b->n_ids; i++)
		b->tok_len[i] = -1;
	b->tok_bytes = circ_xmalloc(total + 1);
	size_t off = 0, cap = 16;
	while (cap < 2 * t->n + 2)
		cap *= 2;
	b->vh_mask = cap - 1;
	b->vh_key = circ_xcalloc(cap, sizeof *b->vh_key);
	b->vh_id = circ_xmalloc(cap * sizeof *b->vh_id);
	for (size_t k = 0; k < t->n; k++) {
		const char *key = t->v[k].key;
		int32_t id = (int32_t)t->v[k].id;
		size_t klen = t->v[k].len;
		int fb = b->sp ? fallback_byte(key, klen) : -1;
		if (b->tok_len[id] >= 0)
			return circ_errorf(e, "'%s': id %d is given to two tokens", name, (int)id);
		long n = b->sp ? -1 : vocab_str_bytes(key, klen, b->tok_bytes + off);
		if (fb >= 0) { /* a byte-fallback token decodes to its byte */
			b->tok_bytes[off] = (unsigned char)fb;
			n = 1;
			if (b->byte_id[fb] < 0)
				b->byte_id[fb] = id;
		} else if (n < 0) { /* not byte-level: keep the text */
			memcpy(b->tok_bytes + off, key, klen);
			n = (long)klen;
		} else if (n == 1 && b->byte_id[b->tok_bytes[off]] < 0) {
			b->byte_id[b->tok_bytes[off]] = id;
		}
		b->tok_off[id] = (int64_t)off;
		b->tok_len[id] = (int32_t)n;
		off += (size_t)n;
		if (fb < 0)
			vh_put(b, id);
	}
	b->tok_used = off;
	return 0;
}

static void pair_table_alloc(circ_bpe *b, size_t n)
{
	size_t cap = 16;
	while (cap < 2 * n + 2)
		cap *= 2;
	b->pair_mask = cap - 1;
	b->pair_key = circ_xmalloc(cap * sizeof *b->pair_key);
	b->pair_rank = circ_xmalloc(cap * sizeof *b->pair_rank);
	b->pair_id = circ_xmalloc(cap * sizeof *b->pair_id);
	for (size_t i = 0; i < cap; i++)
		b->pair_key[i] = EMPTY_KEY;
}

/* Adds merge number rank: left and right (vocabulary strings). at names
 * the merge for messages ("'merges.txt': line 7"). */
static int add_merge(circ_bpe *b, const vtab *vocab, const char *l, size_t ln, const char *r,
		     size_t rn, const merge_at *at, circ_error *e)
{
	char stackbuf[512], *cat = ln + rn < sizeof stackbuf ? stackbuf : circ_xmalloc(ln + rn + 1),
			    where[1100];
	int32_t a = vocab_get(vocab, l, ln), c = vocab_get(vocab, r, rn), m;
	int rc = 0;
	memcpy(cat, l, ln);
	memcpy(cat + ln, r, rn);
	cat[ln + rn] = 0;
	m = vocab_get(vocab, cat, ln + rn);
	if (a < 0 || c < 0 || m < 0 || b->tok_len[a] < 0 || b->tok_len[c] < 0 ||
	    b->tok_len[m] != b->tok_len[a] + b->tok_len[c])
		merge_where(where, sizeof where, at);
	if (a < 0)
		rc = circ_errorf(e, "%s: '%.*s %.*s': '%.*s' is not in the vocabulary", where,
				 (int)ln, l, (int)rn, r, (int)ln, l);
	else if (c < 0)
		rc = circ_errorf(e, "%s: '%.*s %.*s': '%.*s' is not in the vocabulary", where,
				 (int)ln, l, (int)rn, r, (int)rn, r);
	else if (m < 0)
		rc = circ_errorf(e,
				 "%s: '%.*s %.*s': the merged token '%s' is not in the vocabulary",
				 where, (int)ln, l, (int)rn, r, cat);
	else if (b->tok_len[a] < 0 || b->tok_len[c] < 0 ||
		 b->tok_len[m] != b->tok_len[a] + b->tok_len[c])
		rc = circ_errorf(e, "%s: '%.*s %.*s': not a byte-level merge", where, (int)ln, l,
				 (int)rn, r);
	if (cat != stackbuf)
		free(cat);
	if (rc < 0)
		return -1;
	size_t i = pair_find(b, pair_key(a, c));
	if (b->pair_key[i] == EMPTY_KEY) { /* a repeated merge keeps its first rank */
		b->pair_key[i] = pair_key(a, c);
		b->pair_rank[i] = b->n_merges;
		b->pair_id[i] = m;
	}
	b->n_merges++;
	return 0;
}

static int has_normalizer(const circ_bpe *b);
static unsigned char *normalize(const circ_bpe *b, const unsigned char *text, size_t n, int first,
				size_t *len, circ_error *e);

/* Adds an added token to set (its text copied); duplicates are dropped by
 * set_done. Returns it, for the caller's flags. */
static special *set_add(added_set *set, const char *text, size_t len, int32_t id, int is_special)
{
	if ((size_t)set->n == set->cap) {
		set->cap = set->cap ? 2 * set->cap : 16;
		set->v = circ_xrealloc(set->v, set->cap * sizeof *set->v);
	}
	special *sp = &set->v[set->n];
	memset(sp, 0, sizeof *sp);
	sp->text = circ_xmalloc(len + 1);
	memcpy(sp->text, text, len);
	sp->text[len] = 0;
	sp->len = len;
	sp->id = id;
	sp->special = is_special;
	sp->order = set->n++;
	return sp;
}

static void add_special(circ_bpe *b, const char *text, size_t len, int32_t id, int is_special)
{
	set_add(&b->raw, text, len, id, is_special);
}

static int special_cmp(const void *x, const void *y)
{
	const special *a = x, *c = y;
	if (a->len != c->len)
		return a->len < c->len ? -1 : 1;
	int d = memcmp(a->text, c->text, a->len);
	return d ? d : a->order < c->order ? -1 : a->order > c->order;
}

/* Sorts the set and keeps the first of each text (n log n: a file with
 * many added tokens must not load in quadratic time); finds the longest;
 * builds the trie. */
static void set_done(added_set *set)
{
	int k = 0;
	if (!set->n)
		return;
	qsort(set->v, (size_t)set->n, sizeof *set->v, special_cmp);
	for (int i = 0; i < set->n; i++) {
		special *sp = &set->v[i];
		if (k && sp->len == set->v[k - 1].len &&
		    !memcmp(sp->text, set->v[k - 1].text, sp->len)) {
			free(sp->text);
			continue;
		}
		set->v[k++] = *sp;
		set->n_plain += !sp->special;
		if (sp->len > set->max)
			set->max = sp->len;
	}
	set->n = k;
	/* the trie: at most one node per byte of the texts, plus the root */
	size_t bytes = 0, cap = 16;
	for (int i = 0; i < k; i++)
		bytes += set->v[i].len;
	while (cap < 2 * bytes + 2)
		cap *= 2;
	set->trie_mask = cap - 1;
	set->trie_key = circ_xmalloc(cap * sizeof *set->trie_key);
	set->trie_next = circ_xmalloc(cap * sizeof *set->trie_next);
	set->trie_term = circ_xmalloc((bytes + 1) * sizeof *set->trie_term);
	for (size_t i = 0; i < cap; i++)
		set->trie_key[i] = EMPTY_KEY;
	set->trie_term[0] = -1;
	int32_t nodes = 1;
	for (int i = 0; i < k; i++) {
		const special *sp = &set->v[i];
		int32_t node = 0;
		set->first[(unsigned char)sp->text[0]] = 1;
		for (size_t j = 0; j < sp->len; j++) {
			uint64_t key = (uint64_t)node << 8 | (unsigned char)sp->text[j];
			size_t h = (size_t)mix64(key) & set->trie_mask;
			while (set->trie_key[h] != EMPTY_KEY && set->trie_key[h] != key)
				h = (h + 1) & set->trie_mask;
			if (set->trie_key[h] == EMPTY_KEY) {
				set->trie_key[h] = key;
				set->trie_next[h] = nodes;
				set->trie_term[nodes++] = -1;
			}
			node = set->trie_next[h];
		}
		set->trie_term[node] = i;
	}
}

static void set_free(added_set *set)
{
	for (int i = 0; i < set->n; i++)
		free(set->v[i].text);
	free(set->v);
	free(set->trie_key);
	free(set->trie_next);
	free(set->trie_term);
}

/* The raw set done, and <|endoftext|>'s id found. */
static void specials_done(circ_bpe *b)
{
	set_done(&b->raw);
	set_done(&b->norm);
	for (int i = 0; i < b->raw.n; i++)
		if (!strcmp(b->raw.v[i].text, "<|endoftext|>"))
			b->eot = b->raw.v[i].id;
}

/* The trie node after node on byte c, or -1. */
static inline int32_t trie_step(const added_set *set, int32_t node, unsigned char c)
{
	uint64_t key = (uint64_t)node << 8 | c;
	size_t h = (size_t)mix64(key) & set->trie_mask;
	while (set->trie_key[h] != EMPTY_KEY) {
		if (set->trie_key[h] == key)
			return set->trie_next[h];
		h = (h + 1) & set->trie_mask;
	}
	return -1;
}

static json_t *parse_json(const char *buf, size_t len, const char *name, circ_error *e)
{
	json_error_t je;
	json_t *j = json_loadb(buf, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &je);
	if (!j)
		circ_errorf(e, "'%s': line %d: invalid JSON: %s", name, je.line, je.text);
	return j;
}

/* vocab.json's object read by the fast reader (0), else -1 and jansson
 * reads it. */
static int vocab_fast(const char *buf, size_t len, vtab *t, char **arena)
{
	jrd r = {(const unsigned char *)buf, (const unsigned char *)buf + len, NULL, 0};
	*arena = r.arena = circ_xmalloc(len + 1);
	if (jr_vocab(&r, t) < 0)
		return -1;
	jr_ws(&r);
	return r.p == r.end ? vtab_index(t) : -1;
}

circ_bpe *circ_bpe_load_files(const char *vocab_json, const char *merges_txt, circ_error *e)
{
	return circ_bpe_load_files_with(vocab_json, merges_txt, CIRC_BPE_READ_ANY, e);
}

circ_bpe *circ_bpe_load_files_with(const char *vocab_json, const char *merges_txt,
				   circ_bpe_reader reader, circ_error *e)
{
	size_t vlen, mlen;
	char *vbuf = NULL, *mbuf = NULL, *arena = NULL;
	json_t *vocab = NULL;
	vtab vt = {0};
	circ_bpe *b = bpe_alloc();
	circ_sha256 sha;

	if (!(vbuf = read_file(vocab_json, &vlen, e)) || !(mbuf = read_file(merges_txt, &mlen, e)))
		goto fail;
	if (reader == CIRC_BPE_READ_JANSSON || vocab_fast(vbuf, vlen, &vt, &arena) < 0) {
		vtab_free(&vt);
		if (reader == CIRC_BPE_READ_FAST) {
			circ_errorf(e, "'%s': beyond the fast reader", vocab_json);
			goto fail;
		}
		if (!(vocab = parse_json(vbuf, vlen, vocab_json, e)))
			goto fail;
		if (!json_is_object(vocab)) {
			circ_errorf(e, "'%s': expected a JSON object of token -> id", vocab_json);
			goto fail;
		}
		if (vtab_from_json(&vt, vocab) < 0) {
			circ_errorf(e, "'%s': more tokens than circ reads", vocab_json);
			goto fail;
		}
	}
	if (load_vocab(b, &vt, -1, 0, vocab_json, e) < 0)
		goto fail;

	/* merges.txt: an optional "#version" line, then "left right" lines. */
	size_t nlines = 0;
	for (size_t i = 0; i < mlen; i++)
		nlines += mbuf[i] == '\n';
	pair_table_alloc(b, nlines + 1);
	char *p = mbuf, *end = mbuf + mlen;
	for (long line = 1; p < end; line++) {
		char *nl = memchr(p, '\n', (size_t)(end - p)), *eol = nl ? nl : end;
		size_t n = (size_t)(eol - p);
		if (n && p[n - 1] == '\r')
			n--;
		if (!(line == 1 && n >= 8 && !memcmp(p, "#version", 8)) && n > 0) {
			char *sp = memchr(p, ' ', n);
			merge_at at = {merges_txt, 1, (size_t)line};
			if (!sp || sp == p || sp == p + n - 1 ||
			    memchr(sp + 1, ' ', (size_t)(p + n - sp - 1))) {
				circ_errorf(
				    e, "'%s': line %ld: expected two tokens separated by one space",
				    merges_txt, line);
				goto fail;
			}
			if (add_merge(b, &vt, p, (size_t)(sp - p), sp + 1, (size_t)(p + n - sp - 1),
				      &at, e) < 0)
				goto fail;
		}
		p = eol + (nl ? 1 : 0);
	}
	int32_t eot = vocab_get(&vt, "<|endoftext|>", 13);
	if (eot >= 0)
		add_special(b, "<|endoftext|>", 13, eot, 1);
	specials_done(b);
	circ_sha256_init(&sha);
	circ_sha256_update(&sha, vbuf, vlen);
	circ_sha256_update(&sha, mbuf, mlen);
	circ_sha256_final_hex(&sha, b->digest);
	vtab_free(&vt);
	json_decref(vocab);
	free(arena);
	free(vbuf);
	free(mbuf);
	return b;
fail:
	vtab_free(&vt);
	json_decref(vocab);
	free(arena);
	free(vbuf);
	free(mbuf);
	circ_bpe_free(b);
	return NULL;
}

/* ------------------------------------------------ tokenizer.json components */

/* The pre-tokenizer patterns circ implements (as Llama 3 and Qwen 2/3 spell them). */
#define LLAMA3_PATTERN                                                                             \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "                 \
	"?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define QWEN_PATTERN                                                                               \
	"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "                      \
	"?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define SP_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's space */

static const char *type_of(json_t *j)
{
	const char *t = json_string_value(json_object_get(j, "type"));
	return t ? t : "(none)";
}

static int is_str(json_t *j, const char *key, const char *want)
{
	const char *v = json_string_value(json_object_get(j, key));
	return v && !strcmp(v, want);
}

/* The message for a component circ does not implement. */
static int refuse(circ_error *e, const char *path, const char *where, const char *what,
		  const char *supported)
{
	return circ_errorf(e, "'%s': %s: %s is not supported (supported: %s)", path, where, what,
			   supported);
}

#define NORMALIZERS                                                                                \
	"null, NFC, Prepend \"" SP_SPACE "\", Replace \" \" by \"" SP_SPACE                        \
	"\", a Sequence of these"

static int hf_normalizer(circ_bpe *b, json_t *n, const char *where, const char *path, circ_error *e)
{
	const char *t = type_of(n);
	char sub[96];
	if (!n || json_is_null(n))
		return 0;
	if (!strcmp(t, "Sequence")) {
		json_t *list = json_object_get(n, "normalizers");
		if (!json_is_array(list))
			return refuse(e, path, where, "a Sequence without \"normalizers\"",
				      NORMALIZERS);
		for (size_t i = 0; i < json_array_size(list); i++) {
			snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
			if (hf_normalizer(b, json_array_get(list, i), sub, path, e) < 0)
				return -1;
		}
		return 0;
	}
	if (!strcmp(t, "NFC"))
		b->nfc = 1;
	else if (!strcmp(t, "Prepend") && is_str(n, "prepend", SP_SPACE))
		b->sp_prepend = 1;
	else if (!strcmp(t, "Replace") && is_str(json_object_get(n, "pattern"), "String", " ") &&
		 is_str(n, "content", SP_SPACE))
		b->sp_replace = 1;
	else {
		char what[160];
		snprintf(what, sizeof what, "type \"%.60s\" with these settings", t);
		return refuse(e, path, where, what, NORMALIZERS);
	}
	return 0;
}

#define PRETOKENIZERS                                                                              \
	"null; ByteLevel (add_prefix_space false); Metaspace (split false); a Sequence of Split "  \
	"(Llama 3's or Qwen 2's "                                                                  \
	"pattern, Isolated) and ByteLevel (use_regex false); Split on \" \" after a normalizer "   \
	"that replaces spaces"

static int hf_pretokenizer(circ_bpe *b, json_t *pt, const char *path, circ_error *e)
{
	const char *t = type_of(pt), *where = "pre_tokenizer";
	char what[200];
	b->pretok = PRETOK_NONE;
	b->sp = 1;
	if (!pt || json_is_null(pt))
		return 0;
	if (!strcmp(t, "ByteLevel")) {
		if (json_is_true(json_object_get(pt, "add_prefix_space")))
			return refuse(e, path, "pre_tokenizer.add_prefix_space", "true",
				      "false, as GPT-2");
		if (json_is_false(json_object_get(pt, "use_regex")))
			return refuse(e, path, "pre_tokenizer.use_regex", "false alone",
				      PRETOKENIZERS);
		b->pretok = PRETOK_GPT2;
		b->sp = 0;
		return 0;
	}
	if (!strcmp(t, "Metaspace")) {
		const char *ps = json_string_value(json_object_get(pt, "prepend_scheme"));
		if (!is_str(pt, "replacement", SP_SPACE))
			return refuse(e, path, "pre_tokenizer.replacement", "this replacement",
				      "\"" SP_SPACE "\"");
		if (!json_is_false(json_object_get(pt, "split")))
			return refuse(e, path, "pre_tokenizer.split", "true (or absent)",
				      "false: tokenizers.js, the reference, never splits");
		if (!ps || !strcmp(ps, "always"))
			b->meta = META_ALWAYS;
		else if (!strcmp(ps, "first"))
			b->meta = META_FIRST;
		else if (!strcmp(ps, "never"))
			b->meta = META_NEVER;
		else
			return refuse(e, path, "pre_tokenizer.prepend_scheme", "this scheme",
				      "always, first, never");
		return 0;
	}
	if (!strcmp(t, "Split") && is_str(json_object_get(pt, "pattern"), "String", " ") &&
	    !json_is_true(json_object_get(pt, "invert")) && b->sp_replace)
		return 0; /* no space is left to split on */
	json_t *list = json_object_get(pt, "pretokenizers");
	if (!strcmp(t, "Sequence") && json_array_size(list) == 1)
		return hf_pretokenizer(b, json_array_get(list, 0), path, e);
	if (!strcmp(t, "Sequence") && json_array_size(list) == 2) {
		json_t *split = json_array_get(list, 0), *bl = json_array_get(list, 1);
		const char *re =
		    json_string_value(json_object_get(json_object_get(split, "pattern"), "Regex"));
		if (strcmp(type_of(split), "Split") || !re)
			return refuse(e, path, "pre_tokenizer.pretokenizers[0]", "this component",
				      PRETOKENIZERS);
		if (!strcmp(re, LLAMA3_PATTERN))
			b->max_digits = 3;
		else if (!strcmp(re, QWEN_PATTERN))
			b->max_digits = 1;
		else {
			snprintf(what, sizeof what, "the pattern '%.120s'", re);
			return refuse(e, path, "pre_tokenizer.pretokenizers[0].pattern.Regex", what,
				      "Llama 3's and Qwen 2's patterns, exactly");
		}
		if (!is_str(split, "behavior", "Isolated") ||
		    json_is_true(json_object_get(split, "invert")))
			return refuse(e, path, "pre_tokenizer.pretokenizers[0]",
				      "a behavior other than Isolated, or invert",
				      "Isolated, invert false");
		if (strcmp(type_of(bl), "ByteLevel") ||
		    json_is_true(json_object_get(bl, "add_prefix_space")) ||
		    json_is_true(json_object_get(bl, "use_regex")))
			return refuse(e, path, "pre_tokenizer.pretokenizers[1]", "this component",
				      "ByteLevel with add_prefix_space and use_regex false");
		b->pretok = PRETOK_LLAMA3;
		b->sp = 0;
		return 0;
	}
	snprintf(what, sizeof what, "type \"%.60s\" with these settings", t);
	return refuse(e, path, where, what, PRETOKENIZERS);
}

#define POSTPROCESSORS                                                                             \
	"null, ByteLevel, TemplateProcessing with at most one special token before $A and "        \
	"none after, a Sequence of these"

static int hf_postprocessor(circ_bpe *b, json_t *pp, const char *where, const char *path,
			    circ_error *e)
{
	const char *t = type_of(pp);
	char sub[96];
	if (!pp || json_is_null(pp) || !strcmp(t, "ByteLevel"))
		return 0;
	if (!strcmp(t, "Sequence")) {
		json_t *list = json_object_get(pp, "processors");
		for (size_t i = 0; i < json_array_size(list); i++) {
			snprintf(sub, sizeof sub, "%s.processors[%zu]", where, i);
			if (hf_postprocessor(b, json_array_get(list, i), sub, path, e) < 0)
				return -1;
		}
		return 0;
	}
	if (strcmp(t, "TemplateProcessing"))
		return refuse(e, path, where, "this type", POSTPROCESSORS);
	json_t *single = json_object_get(pp, "single");
	size_t n = json_array_size(single), i;
	snprintf(sub, sizeof sub, "%s.single", where);
	for (i = 0; i < n && json_object_get(json_array_get(single, i), "SpecialToken"); i++)
		;
	if (i > 1 || i + 1 != n || !json_object_get(json_array_get(single, i), "Sequence"))
		return refuse(e, path, sub, "this template", POSTPROCESSORS);
	if (i == 1) {
		const char *name = json_string_value(json_object_get(
		    json_object_get(json_array_get(single, 0), "SpecialToken"), "id"));
		json_t *ids = json_object_get(
		    json_object_get(json_object_get(pp, "special_tokens"), name ? name : ""),
		    "ids");
		if (json_array_size(ids) != 1 || !json_is_integer(json_array_get(ids, 0)) ||
		    json_integer_value(json_array_get(ids, 0)) < 0 ||
		    json_integer_value(json_array_get(ids, 0)) > INT32_MAX)
			return circ_errorf(e, "'%s': %s.special_tokens: no single id for '%s'",
					   path, where, name ? name : "(none)");
		b->bos = (int32_t)json_integer_value(json_array_get(ids, 0));
	}
	return 0;
}

/* Reads normalizer, pre_tokenizer, post_processor and the model's options. */
static int hf_components(circ_bpe *b, json_t *root, const char *path, circ_error *e)
{
	json_t *model = json_object_get(root, "model"), *v;
	if (hf_normalizer(b, json_object_get(root, "normalizer"), "normalizer", path, e) < 0 ||
	    hf_pretokenizer(b, json_object_get(root, "pre_tokenizer"), path, e) < 0 ||
	    hf_postprocessor(b, json_object_get(root, "post_processor"), "post_processor", path,
			     e) < 0)
		return -1;
	if (b->meta && (b->nfc || b->sp_prepend || b->sp_replace))
		return refuse(e, path, "normalizer", "a normalizer with Metaspace", "null");
	if (b->nfc && (b->sp_prepend || b->sp_replace))
		return refuse(e, path, "normalizer", "NFC with " SP_SPACE " replacement",
			      NORMALIZERS);
	if (!b->sp && (b->sp_prepend || b->sp_replace))
		return refuse(e, path, "normalizer", "" SP_SPACE " replacement with ByteLevel",
			      SP_SPACE " replacement without a ByteLevel pre-tokenizer");
	if ((v = json_object_get(model, "dropout")) && !json_is_null(v))
		return refuse(e, path, "model.dropout", "a value", "null");
	static const char *const affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
	for (int k = 0; k < 2; k++)
		if ((v = json_object_get(model, affix[k])) && !json_is_null(v) &&
		    !(json_is_string(v) && !json_string_length(v))) {
			char where[64];
			snprintf(where, sizeof where, "model.%s", affix[k]);
			return refuse(e, path, where, "a value", "null or \"\"");
		}
	b->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
	b->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
	b->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
	return 0;
}

/* tokenizer.json as the fast reader reads it: model.vocab and
 * model.merges, and where they lie. */
typedef struct tj_parts {
	vtab *t;
	ment **mv;
	size_t *nm;
	const unsigned char *span[2][2]; /* vocab's and merges' first and end bytes */
} tj_parts;

static int tj_model_value(jrd *r, int key, void *ctx)
{
	tj_parts *tp = ctx;
	int rc;
	tp->span[key][0] = r->p;
	rc = key == 0 ? (jr_vocab(r, tp->t) < 0 || vtab_index(tp->t) < 0 ? -1 : 0)
		      : jr_merges(r, tp->mv, tp->nm);
	tp->span[key][1] = r->p;
	return rc;
}

static int tj_root_value(jrd *r, int key, void *ctx)
{
	static const char *const mk[] = {"vocab", "merges"};
	(void)key;
	return jr_object(r, mk, 2, tj_model_value, ctx);
}

/* tokenizer.json's model.vocab and model.merges read by the fast reader
 * (into t, *mv, *nm), and the rest of the file (*rest, *rest_len) for
 * jansson: the file with those two values written {} and [] (their line
 * breaks kept, so that line numbers hold). -1 where the fast reader gives
 * up: jansson then reads the whole file. */
static int tj_fast(const char *buf, size_t len, vtab *t, ment **mv, size_t *nm, char **arena,
		   char **rest, size_t *rest_len)
{
	static const char *const top[] = {"model"};
	const unsigned char *u = (const unsigned char *)buf;
	jrd r = {u, u + len, NULL, 0};
	tj_parts tp = {t, mv, nm, {{NULL, NULL}, {NULL, NULL}}};
	char *o;
	int first;
	*arena = r.arena = circ_xmalloc(len + 1);
	if (jr_object(&r, top, 1, tj_root_value, &tp) < 0 || !tp.span[0][0] || !tp.span[1][0])
		return -1;
	*rest = o = circ_xmalloc(len + 1);
	first = tp.span[0][0] > tp.span[1][0];
	for (int k = 0; k < 2; k++) { /* in file order */
		const unsigned char *s0 = tp.span[first ^ k][0], *s1 = tp.span[first ^ k][1],
				    *from = k ? tp.span[first][1] : u;
		memcpy(o, from, (size_t)(s0 - from));
		o += s0 - from;
		*o++ = first ^ k ? '[' : '{';
		for (const unsigned char *c = s0; c < s1; c++)
			if (*c == '\n')
				*o++ = '\n';
		*o++ = first ^ k ? ']' : '}';
	}
	memcpy(o, tp.span[!first][1], (size_t)(u + len - tp.span[!first][1]));
	o += u + len - tp.span[!first][1];
	*rest_len = (size_t)(o - *rest);
	return 0;
}

/* The tokenizer from root (jansson's tree, whole or with vocab and merges
 * blanked) and the vocabulary and merges (read from the tree when vt has
 * no entries and ms no array). */
static circ_bpe *tj_build(const char *path, const char *buf, size_t len, json_t *root, vtab *vt,
			  msrc *ms, circ_error *e)
{
	json_t *model, *vocab, *merges, *added;
	circ_bpe *b = NULL;
	int32_t extra_max = -1;
	circ_sha256 sha;

	model = json_object_get(root, "model");
	vocab = json_object_get(model, "vocab");
	merges = json_object_get(model, "merges");
	added = json_object_get(root, "added_tokens");
	json_t *jtype = json_object_get(model, "type");
	const char *type = json_string_value(jtype);
	if (!json_is_object(model) || (jtype && (!type || strcmp(type, "BPE"))) ||
	    !json_is_object(vocab) || !json_is_array(merges)) {
		circ_errorf(
		    e,
		    "'%s': not a BPE tokenizer (expected model.type \"BPE\" with vocab and merges)",
		    path);
		goto fail;
	}
	if (!vt->v && vtab_from_json(vt, vocab) < 0) {
		circ_errorf(e, "'%s': model.vocab: more tokens than circ reads", path);
		goto fail;
	}
	if (!ms->v)
		ms->json = merges;
	b = bpe_alloc();
	if (hf_components(b, root, path, e) < 0)
		goto fail;
	if (added && !json_is_array(added)) {
		circ_errorf(e, "'%s': added_tokens must be an array", path);
		goto fail;
	}
	int64_t limit = id_limit(vt->n + json_array_size(added));
	for (size_t i = 0; i < json_array_size(added); i++) {
		json_t *t = json_array_get(added, i), *id = json_object_get(t, "id"),
		       *text = json_object_get(t, "content");
		if (!json_is_integer(id) || json_integer_value(id) < 0 || !json_is_string(text)) {
			circ_errorf(e, "'%s': added_tokens[%zu]: expected \"id\" and \"content\"",
				    path, i);
			goto fail;
		}
		if (json_integer_value(id) >= limit) {
			circ_errorf(e,
				    "'%s': added_tokens[%zu]: id %lld is far beyond the %zu tokens "
				    "given (ids must be below %lld)",
				    path, i, (long long)json_integer_value(id),
				    vt->n + json_array_size(added), (long long)limit);
			goto fail;
		}
		if (!json_string_length(text) ||
		    strlen(json_string_value(text)) != json_string_length(text)) {
			circ_errorf(e,
				    "'%s': added_tokens[%zu]: content must be a non-empty string "
				    "without NUL",
				    path, i);
			goto fail;
		}
		if (json_integer_value(id) > extra_max)
			extra_max = (int32_t)json_integer_value(id);
	}
	if (load_vocab(b, vt, extra_max, json_array_size(added), path, e) < 0)
		goto fail;
	json_t *unk = json_object_get(model, "unk_token");
	if (json_is_string(unk))
		b->unk = vocab_get(vt, json_string_value(unk), json_string_length(unk));
	pair_table_alloc(b, msrc_size(ms));
	for (size_t i = 0; i < msrc_size(ms); i++) {
		const char *l = NULL, *r = NULL;
		size_t ln = 0, rn = 0;
		merge_at at = {path, 0, i};
		if (msrc_get(ms, i, &l, &ln, &r, &rn, &at, e) < 0 ||
		    add_merge(b, vt, l, ln, r, rn, &at, e) < 0)
			goto fail;
	}
	/* Added tokens the vocabulary lacks: their text is their bytes. One
	 * pass to size the arena, one to fill it (linear, however many). */
	size_t extra = 0, used = b->tok_used;
	int32_t *first = circ_xmalloc((size_t)b->n_ids * sizeof *first); /* added index + 1 */
	memset(first, 0, (size_t)b->n_ids * sizeof *first);
	for (size_t i = 0; i < json_array_size(added); i++) {
		json_t *t = json_array_get(added, i);
		int32_t id = (int32_t)json_integer_value(json_object_get(t, "id"));
		if (first[id]) {
			circ_errorf(e, "'%s': added_tokens[%zu]: id %d is also added_tokens[%d]",
				    path, i, (int)id, (int)first[id] - 1);
			free(first);
			goto fail;
		}
		first[id] = (int32_t)i + 1;
		if (b->tok_len[id] < 0)
			extra += json_string_length(json_object_get(t, "content"));
	}
	free(first);
	b->tok_bytes = circ_xrealloc(b->tok_bytes, used + extra + 1);
	for (size_t i = 0; i < json_array_size(added); i++) {
		json_t *t = json_array_get(added, i), *text = json_object_get(t, "content");
		int32_t id = (int32_t)json_integer_value(json_object_get(t, "id"));
		size_t n = json_string_length(text);
		if (b->tok_len[id] < 0) {
			memcpy(b->tok_bytes + used, json_string_value(text), n);
			b->tok_off[id] = (int64_t)used;
			b->tok_len[id] = (int32_t)n;
			used += n;
		}
		/* "normalized" defaults to !special (as both libraries read it);
		 * without a normalizer one pass finds every token, as
		 * tokenizers.js does (see bpe.h for where Hugging Face differs) */
		int is_special = json_is_true(json_object_get(t, "special"));
		json_t *norm = json_object_get(t, "normalized");
		special *sp;
		if (has_normalizer(b) && (norm ? json_is_true(norm) : !is_special)) {
			size_t nl;
			unsigned char *nt = normalize(
			    b, (const unsigned char *)json_string_value(text), n, 1, &nl, e);
			if (!nt)
				goto fail;
			if (!nl) { /* e.g. a token the normalizer removes: never matched */
				free(nt);
				continue;
			}
			sp = set_add(&b->norm, (const char *)nt, nl, id, is_special);
			free(nt);
		} else {
			sp = set_add(&b->raw, json_string_value(text), n, id, is_special);
		}
		sp->lstrip = json_is_true(json_object_get(t, "lstrip"));
		sp->rstrip = json_is_true(json_object_get(t, "rstrip"));
		sp->single_word = json_is_true(json_object_get(t, "single_word"));
	}
	b->tok_used = used;
	if (b->bos >= b->n_ids || (b->bos >= 0 && b->tok_len[b->bos] < 0)) {
		circ_errorf(
		    e, "'%s': post_processor: the first token's id %d is not in the vocabulary",
		    path, (int)b->bos);
		goto fail;
	}
	int32_t eot = vocab_get(vt, "<|endoftext|>", 13);
	if (eot >= 0)
		add_special(b, "<|endoftext|>", 13, eot, 1);
	specials_done(b);
	circ_sha256_init(&sha);
	circ_sha256_update(&sha, buf, len);
	circ_sha256_final_hex(&sha, b->digest);
	return b;
fail:
	circ_bpe_free(b);
	return NULL;
}

circ_bpe *circ_bpe_load_tokenizer_json_with(const char *path, circ_bpe_reader reader, circ_error *e)
{
	size_t len, rest_len, nm = 0;
	char *buf = read_file(path, &len, e), *arena = NULL, *rest = NULL;
	json_t *root = NULL;
	circ_bpe *b = NULL;
	vtab vt = {0};
	ment *mv = NULL;
	msrc ms = {0};
	circ_error ignored;

	if (!buf)
		return NULL;
	if (reader != CIRC_BPE_READ_JANSSON &&
	    tj_fast(buf, len, &vt, &mv, &nm, &arena, &rest, &rest_len) == 0 &&
	    (root = parse_json(rest, rest_len, path, &ignored))) {
		ms.v = mv, ms.n = nm;
		b = tj_build(path, buf, len, root, &vt, &ms,
			     reader == CIRC_BPE_READ_FAST ? e : &ignored);
	} else if (reader == CIRC_BPE_READ_FAST) {
		circ_errorf(e, "'%s': beyond the fast reader", path);
	}
	json_decref(root);
	vtab_free(&vt);
	free(mv);
	free(arena);
	free(rest);
	root = NULL;
	if (!b && reader != CIRC_BPE_READ_FAST) { /* jansson's tree, and its verdict */
		ms = (msrc){0};
		if ((root = parse_json(buf, len, path, e)))
			b = tj_build(path, buf, len, root, &vt, &ms, e);
		json_decref(root);
		vtab_free(&vt);
	}
	free(buf);
	return b;
}

circ_bpe *circ_bpe_load_tokenizer_json(const char *path, circ_error *e)
{
	return circ_bpe_load_tokenizer_json_with(path, CIRC_BPE_READ_ANY, e);
}

/* By name only: opening a FIFO to see would wait for a writer (read_file
 * then refuses what is not a regular file, with a message). */
static int file_exists(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0;
}

circ_bpe *circ_bpe_load_dir(const char *dir, circ_error *e)
{
	size_t n = strlen(dir) + 32;
	char *v = circ_xmalloc(n), *m = circ_xmalloc(n), *t = circ_xmalloc(n);
	circ_bpe *b = NULL;
	snprintf(v, n, "%s/vocab.json", dir);
	snprintf(m, n, "%s/merges.txt", dir);
	snprintf(t, n, "%s/tokenizer.json", dir);
	if (file_exists(t)) /* it says more: normalizer, pre-tokenizer, added tokens, BOS */
		b = circ_bpe_load_tokenizer_json(t, e);
	else if (file_exists(v) || file_exists(m))
		b = circ_bpe_load_files(v, m, e);
	else
		circ_errorf(e,
			    "'%s': no tokenizer there (expected tokenizer.json, or vocab.json and "
			    "merges.txt)",
			    dir);
	free(v);
	free(m);
	free(t);
	return b;
}

void circ_bpe_free(circ_bpe *b)
{
	if (!b)
		return;
	free(b->tok_off);
	free(b->tok_len);
	free(b->vh_key);
	free(b->vh_id);
	free(b->tok_bytes);
	free(b->pair_key);
	free(b->pair_rank);
	free(b->pair_id);
	set_free(&b->raw);
	set_free(&b->norm);
	free(b->cache);
	free(b->ckeys);
	free(b->cids);
	free(b->sym);
	free(b->rank);
	free(b->tree);
	free(b);
}

static int set_same(const added_set *a, const added_set *b)
{
	if (a->n != b->n || a->n_plain != b->n_plain || a->max != b->max ||
	    memcmp(a->first, b->first, sizeof a->first))
		return 0;
	for (int i = 0; i < a->n; i++) {
		const special *x = &a->v[i], *y = &b->v[i];
		if (x->len != y->len || memcmp(x->text, y->text, x->len) || x->id != y->id ||
		    x->special != y->special || x->lstrip != y->lstrip || x->rstrip != y->rstrip ||
		    x->single_word != y->single_word)
			return 0;
	}
	return 1;
}

int circ_bpe_same(const circ_bpe *a, const circ_bpe *b, char *why, size_t why_len)
{
	const char *what = NULL;
	char buf[128];
	if (a->pretok != b->pretok || a->max_digits != b->max_digits || a->nfc != b->nfc ||
	    a->sp != b->sp || a->sp_prepend != b->sp_prepend || a->sp_replace != b->sp_replace ||
	    a->meta != b->meta || a->byte_fallback != b->byte_fallback ||
	    a->ignore_merges != b->ignore_merges || a->bos != b->bos || a->unk != b->unk ||
	    a->fuse_unk != b->fuse_unk || a->eot != b->eot)
		what = "components or special ids";
	else if (strcmp(a->digest, b->digest))
		what = "digest";
	else if (a->n_ids != b->n_ids || a->tok_used != b->tok_used ||
		 memcmp(a->byte_id, b->byte_id, sizeof a->byte_id))
		what = "vocabulary size or byte tokens";
	else if (a->n_merges != b->n_merges || a->pair_mask != b->pair_mask)
		what = "number of merges";
	else if (!set_same(&a->raw, &b->raw) || !set_same(&a->norm, &b->norm))
		what = "added tokens";
	for (int32_t id = 0; !what && id < a->n_ids; id++)
		if (a->tok_len[id] != b->tok_len[id] ||
		    (a->tok_len[id] > 0 &&
		     memcmp(a->tok_bytes + a->tok_off[id], b->tok_bytes + b->tok_off[id],
			    (size_t)a->tok_len[id]))) {
			snprintf(buf, sizeof buf, "token %d", (int)id);
			what = buf;
		} else if (a->tok_len[id] >= 0) { /* the text lookup */
			const unsigned char *p = a->tok_bytes + a->tok_off[id];
			size_t n = (size_t)a->tok_len[id];
			uint64_t h = hash_bytes(p, n);
			if (vh_get(a, p, n, h) != vh_get(b, p, n, h)) {
				snprintf(buf, sizeof buf, "vocabulary text of token %d", (int)id);
				what = buf;
			}
		}
	for (size_t i = 0; !what && i <= a->pair_mask; i++) {
		uint64_t k = a->pair_key[i];
		size_t j;
		if (k == EMPTY_KEY)
			continue;
		j = pair_find(b, k);
		if (b->pair_key[j] != k || b->pair_rank[j] != a->pair_rank[i] ||
		    b->pair_id[j] != a->pair_id[i]) {
			snprintf(buf, sizeof buf, "merge of %d and %d", (int)(k >> 32),
				 (int)(k & 0xffffffff));
			what = buf;
		}
	}
	if (what && why)
		snprintf(why, why_len, "%s", what);
	return !what;
}

int32_t circ_bpe_vocab_size(const circ_bpe *b)
{
	return b->n_ids;
}

int32_t circ_bpe_n_merges(const circ_bpe *b)
{
	return b->n_merges;
}

const char *circ_bpe_digest(const circ_bpe *b)
{
	return b->digest;
}

int32_t circ_bpe_eot(const circ_bpe *b)
{
	return b->eot;
}

int32_t circ_bpe_bos(const circ_bpe *b)
{
	return b->bos;
}

const unsigned char *circ_bpe_token_bytes(const circ_bpe *b, int32_t id, size_t *len)
{
	if (id < 0 || id >= b->n_ids || b->tok_len[id] < 0)
		return NULL;
	*len = (size_t)b->tok_len[id];
	return b->tok_bytes + b->tok_off[id];
}

/* ------------------------------------------------------------ cache */

void circ_bpe_set_cache(circ_bpe *b, size_t entries)
{
	free(b->cache);
	b->cache = NULL;
	b->cache_mask = 0;
	b->cache_count = 0;
	b->ckeys_len = b->cids_len = 0;
	if (!entries)
		return;
	size_t cap = 16;
	while (cap < entries)
		cap *= 2;
	b->cache = circ_xcalloc(cap, sizeof *b->cache);
	b->cache_mask = cap - 1;
	/* Arenas sized for the average piece; overflow also empties the cache. */
	b->ckeys_cap = cap * 8;
	b->cids_cap = cap * 2;
	b->ckeys = circ_xrealloc(b->ckeys, b->ckeys_cap);
	b->cids = circ_xrealloc(b->cids, b->cids_cap * sizeof *b->cids);
}

static void cache_clear(circ_bpe *b)
{
	memset(b->cache, 0, (b->cache_mask + 1) * sizeof *b->cache);
	b->cache_count = 0;
	b->ckeys_len = b->cids_len = 0;
}

/* Returns the slot of the piece (hash h), found or empty. */
static inline cache_slot *cache_find(circ_bpe *b, const unsigned char *p, size_t n, uint64_t h)
{
	size_t i = (size_t)h & b->cache_mask;
	for (;;) {
		cache_slot *s = &b->cache[i];
		if (!s->hash ||
		    (s->hash == h && s->key_len == n && !memcmp(b->ckeys + s->key_off, p, n)))
			return s;
		i = (i + 1) & b->cache_mask;
	}
}

static void cache_put(circ_bpe *b, const unsigned char *p, size_t n, uint64_t h, const int32_t *ids,
		      size_t nids)
{
	if (b->cache_count + 1 > (b->cache_mask + 1) / 2 || b->ckeys_len + n > b->ckeys_cap ||
	    b->cids_len + nids > b->cids_cap)
		cache_clear(b);
	if (b->ckeys_len + n > b->ckeys_cap || b->cids_len + nids > b->cids_cap)
		return; /* larger than the whole arena */
	cache_slot *s = cache_find(b, p, n, h);
	s->hash = h;
	s->key_off = (uint32_t)b->ckeys_len;
	s->key_len = (uint32_t)n;
	s->ids_off = (uint32_t)b->cids_len;
	s->n_ids = (uint32_t)nids;
	memcpy(b->ckeys + b->ckeys_len, p, n);
	memcpy(b->cids + b->cids_len, ids, nids * sizeof *ids);
	b->ckeys_len += n;
	b->cids_len += nids;
	b->cache_count++;
}

/* ------------------------------------------------------------ merging */

static void scratch_reserve(circ_bpe *b, size_t n)
{
	if (n <= b->scratch_cap)
		return;
	size_t cap = b->scratch_cap ? b->scratch_cap : 256;
	while (cap < n)
		cap *= 2;
	b->sym = circ_xrealloc(b->sym, cap * sizeof *b->sym);
	b->rank = circ_xrealloc(b->rank, cap * sizeof *b->rank);
	b->scratch_cap = cap;
}

/* Merges sym[0..n) in place by scanning; returns the new length. */
static size_t merge_scan(const circ_bpe *b, int32_t *sym, int32_t *rank, size_t n)
{
	int32_t id = -1;
	for (size_t i = 0; i + 1 < n; i++)
		rank[i] = pair_lookup(b, sym[i], sym[i + 1], &id);
	while (n > 1) {
		size_t best = 0;
		int32_t r = rank[0];
		for (size_t i = 1; i + 1 < n; i++)
			if (rank[i] < r)
				r = rank[i], best = i;
		if (r == NO_RANK)
			break;
		pair_lookup(b, sym[best], sym[best + 1], &id);
		sym[best] = id;
		/* drop element best + 1 from both arrays */
		memmove(sym + best + 1, sym + best + 2, (n - best - 2) * sizeof *sym);
		if (best + 2 < n)
			memmove(rank + best + 1, rank + best + 2, (n - best - 3) * sizeof *rank);
		n--;
		if (best + 1 < n)
			rank[best] = pair_lookup(b, sym[best], sym[best + 1], &id);
		if (best > 0)
			rank[best - 1] = pair_lookup(b, sym[best - 1], sym[best], &id);
	}
	return n;
}

/* Long pieces merge in place over byte positions. sym[i] is the id of the
 * token that starts at byte i, and is >= 0 only there; the last byte of a
 * token of two or more bytes holds -(start + 1), and other bytes -1. So the
 * right neighbour of the token at i starts at i + tok_len[sym[i]], and the
 * left one ends at i - 1. rank[i] is the rank of the pair that starts at i
 * (NO_RANK where none does). The next merge, the least key rank << 32 |
 * position (lowest rank, then leftmost: the scan's and the reference's
 * order), comes from a tournament tree over blocks of BLOCK bytes whose
 * leaves are each block's least key. A merge changes three ranks at most,
 * and a block is rescanned only when its least key rose. Memory: 8 bytes
 * per byte of the piece and one key per block; time O(BLOCK + log n) per
 * merge. Pieces are below 2^31 bytes (checked by the caller). */
#define BLOCK 64

static inline uint64_t merge_key(int32_t rank, size_t pos)
{
	return (uint64_t)(uint32_t)rank << 32 | (uint32_t)pos;
}

static uint64_t block_least(const int32_t *rank, size_t lo, size_t hi)
{
	int32_t r = NO_RANK;
	size_t at = lo;
	for (size_t i = lo; i < hi; i++)
		if (rank[i] < r)
			r = rank[i], at = i;
	return merge_key(r, at);
}

/* Sets leaf x (an index into tree) and the minima above it. */
static void tree_set(uint64_t *tree, size_t x, uint64_t key)
{
	tree[x] = key;
	for (x >>= 1; x; x >>= 1) {
		uint64_t m = tree[2 * x] < tree[2 * x + 1] ? tree[2 * x] : tree[2 * x + 1];
		if (tree[x] == m)
			break;
		tree[x] = m;
	}
}

static void set_rank(int32_t *rank, uint64_t *tree, size_t leaves, size_t n, size_t i, int32_t r)
{
	size_t blk = i / BLOCK, x = leaves + blk;
	uint64_t key = merge_key(r, i), cur = tree[x];
	rank[i] = r;
	if (key < cur)
		tree_set(tree, x, key);
	else if (key != cur && (uint32_t)cur == (uint32_t)i) /* the block's least rose */
		tree_set(tree, x,
			 block_least(rank, blk * BLOCK,
				     blk * BLOCK + BLOCK < n ? blk * BLOCK + BLOCK : n));
}

/* Merges the byte tokens in sym[0..n); the survivors end at the front of
 * sym. Returns their count. */
static size_t merge_long(circ_bpe *b, size_t n)
{
	int32_t *sym = b->sym, *rank = b->rank, id = -1, unused;
	size_t nb = (n + BLOCK - 1) / BLOCK, leaves = 1;
	while (leaves < nb)
		leaves *= 2;
	if (2 * leaves > b->tree_cap) {
		b->tree_cap = 2 * leaves;
		b->tree = circ_xrealloc(b->tree, b->tree_cap * sizeof *b->tree);
	}
	uint64_t *tree = b->tree;
	for (size_t i = 0; i < n; i++) { /* tokens may start wider than a byte (SentencePiece) */
		size_t j = sym[i] >= 0 ? i + (size_t)b->tok_len[sym[i]] : n;
		rank[i] = j < n ? pair_lookup(b, sym[i], sym[j], &unused) : NO_RANK;
	}
	for (size_t k = 0; k < leaves; k++)
		tree[leaves + k] =
		    k < nb ? block_least(rank, k * BLOCK, (k + 1) * BLOCK < n ? (k + 1) * BLOCK : n)
			   : UINT64_MAX;
	for (size_t x = leaves - 1; x >= 1; x--)
		tree[x] = tree[2 * x] < tree[2 * x + 1] ? tree[2 * x] : tree[2 * x + 1];
	while ((int32_t)(tree[1] >> 32) != NO_RANK) {
		size_t a = (uint32_t)tree[1], m = a + (size_t)b->tok_len[sym[a]],
		       c = m + (size_t)b->tok_len[sym[m]];
		pair_lookup(b, sym[a], sym[m], &id);
		sym[a] = id;
		sym[m] = -1;
		sym[c - 1] = -(int32_t)a - 1;
		set_rank(rank, tree, leaves, n, m, NO_RANK);
		set_rank(rank, tree, leaves, n, a,
			 c < n ? pair_lookup(b, id, sym[c], &unused) : NO_RANK);
		if (a > 0) {
			int32_t v = sym[a - 1];
			size_t p = v >= 0 ? a - 1 : (size_t)(-(int64_t)v - 1);
			set_rank(rank, tree, leaves, n, p, pair_lookup(b, sym[p], id, &unused));
		}
	}
	size_t k = 0;
	for (size_t i = 0; i < n;) {
		int32_t t = sym[i];
		sym[k++] = t;
		i += (size_t)b->tok_len[t];
	}
	return k;
}

static int missing_byte(unsigned char c, circ_error *e)
{
	return circ_errorf(e, "byte 0x%02x has no token in the vocabulary", c);
}

/* Whether character p[0..l) falls back to its bytes' tokens: byte_fallback
 * on and all of them there (else it is the unknown token, as in tokenizers). */
static int has_bytes(const circ_bpe *b, const unsigned char *p, size_t l)
{
	if (!b->byte_fallback)
		return 0;
	for (size_t q = 0; q < l; q++)
		if (b->byte_id[p[q]] < 0)
			return 0;
	return 1;
}

/* A character with neither a token nor byte tokens: the unknown token, or
 * an error when there is none (never dropped, unlike tokenizers.js). */
static int no_token(const circ_bpe *b, const unsigned char *p, size_t l, circ_error *e)
{
	if (b->unk >= 0)
		return 0;
	if (b->byte_fallback)
		for (size_t q = 0; q < l; q++)
			if (b->byte_id[p[q]] < 0)
				return missing_byte(p[q], e);
	return circ_errorf(e, "character '%.*s' has no token in the vocabulary", (int)l,
			   (const char *)p);
}

/* SentencePiece style: the first symbols of p[0..n) are its characters'
 * tokens, or the byte tokens of a character without one, or (UNK_SYM, which
 * no merge joins) the unknown token. Into b->sym in merge_long's layout
 * unless packed, packed (*k of them) when packed. Returns 1 when an unknown
 * token needs the packed layout, 0, or -1 on error. */
#define UNK_SYM(b) ((b)->n_ids)
static int sp_symbols(circ_bpe *b, const unsigned char *p, size_t n, int packed, size_t *k,
		      circ_error *e)
{
	size_t m = 0;
	for (size_t i = 0; i < n;) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t r = utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
		size_t l = r > 0 ? (size_t)r : 1;
		int32_t id = vh_get(b, p + i, l, hash_bytes(p + i, l));
		if (id >= 0) {
			if (packed) {
				b->sym[m++] = id;
			} else {
				b->sym[i] = id;
				for (size_t q = 1; q < l; q++)
					b->sym[i + q] = -1;
				if (l > 1)
					b->sym[i + l - 1] = -(int32_t)i - 1;
			}
		} else if (has_bytes(b, p + i, l)) {
			for (size_t q = 0; q < l; q++)
				b->sym[packed ? m++ : i + q] = b->byte_id[p[i + q]];
		} else {
			if (no_token(b, p + i, l, e) < 0)
				return -1;
			if (!packed)
				return 1;
			b->sym[m++] = UNK_SYM(b);
		}
		i += l;
	}
	*k = m;
	return 0;
}

/* UNK_SYM -> the unknown token's id, a run of them one with fuse_unk.
 * Returns the new count. */
static size_t unk_ids(const circ_bpe *b, int32_t *sym, size_t k)
{
	size_t j = 0;
	if (!b->sp)
		return k;
	for (size_t i = 0; i < k; i++) {
		if (sym[i] == UNK_SYM(b) && b->fuse_unk && j && sym[j - 1] == b->unk)
			continue;
		sym[j++] = sym[i] == UNK_SYM(b) ? b->unk : sym[i];
	}
	return j;
}

/* Appends the ids of one piece. */
static int encode_piece(circ_bpe *b, const unsigned char *p, size_t n, circ_ids *out, circ_error *e)
{
	if (b->ignore_merges) {
		int32_t id = vh_get(b, p, n, hash_bytes(p, n));
		if (id >= 0) {
			circ_ids_push(out, id);
			return 0;
		}
	}
	if (n == 1 && !b->sp) {
		if (b->byte_id[p[0]] < 0)
			return missing_byte(p[0], e);
		circ_ids_push(out, b->byte_id[p[0]]);
		return 0;
	}
	uint64_t h = 0;
	if (b->cache && n <= CACHE_KEY_MAX) {
		h = hash_bytes(p, n);
		cache_slot *s = cache_find(b, p, n, h);
		if (s->hash) {
			for (uint32_t i = 0; i < s->n_ids; i++)
				circ_ids_push(out, b->cids[s->ids_off + i]);
			return 0;
		}
	}
	if (n > PIECE_MAX)
		return circ_errorf(e, "a piece of %zu bytes without a break (at most %d)", n,
				   PIECE_MAX);
	scratch_reserve(b, n);
	size_t k = n;
	int packed = n <= SCAN_MAX, r;
	if (b->sp) {
		if ((r = sp_symbols(b, p, n, packed, &k, e)) == 1) /* unknown: scan */
			r = sp_symbols(b, p, n, packed = 1, &k, e);
		if (r < 0)
			return -1;
	} else {
		for (size_t i = 0; i < n; i++)
			if ((b->sym[i] = b->byte_id[p[i]]) < 0)
				return missing_byte(p[i], e);
	}
	k = packed ? merge_scan(b, b->sym, b->rank, k) : merge_long(b, n);
	k = unk_ids(b, b->sym, k);
	if (h)
		cache_put(b, p, n, h, b->sym, k);
	if (n > SCRATCH_KEEP) { /* a long word's scratch goes, its ranks before the ids grow */
		free(b->rank);
		free(b->tree);
		b->rank = NULL;
		b->tree = NULL;
		b->tree_cap = 0;
	}
	ids_reserve(out, k);
	memcpy(out->v + out->n, b->sym, k * sizeof *out->v);
	out->n += k;
	if (n > SCRATCH_KEEP) {
		free(b->sym);
		b->sym = NULL;
		b->scratch_cap = 0;
	}
	return 0;
}

/* ------------------------------------------------------------ pre-tokenisation */

enum { C_L = 1, C_N, C_S, C_O };

static int js_space(int32_t c)
{
	return (c >= 9 && c <= 13) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
	       c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

/* Unicode's White_Space: what \s means in the tokenizers' (Oniguruma)
 * patterns, and in tokenizers.js's translation of them. */
static int uni_space(int32_t c)
{
	return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
	       c == 0x205F || c == 0x3000;
}

/* uni: 0 for ECMAScript's \s (GPT-2, as js-tiktoken), 1 for White_Space. */
static int cp_class(int32_t c, int uni)
{
	if (uni ? uni_space(c) : js_space(c))
		return C_S;
	switch (utf8proc_category(c)) {
	case UTF8PROC_CATEGORY_LU:
	case UTF8PROC_CATEGORY_LL:
	case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_LO: return C_L;
	case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_NO: return C_N;
	default: return C_O;
	}
}

static inline int ascii_class(unsigned c)
{
	if ((unsigned)((c | 32) - 'a') < 26)
		return C_L;
	if ((unsigned)(c - '0') < 10)
		return C_N;
	if (c == ' ' || (c >= 9 && c <= 13))
		return C_S;
	return C_O;
}

/* Length (1..4) and class of the character at s[i], i < n. Returns 0 when
 * the bytes end inside a character that could still be valid and !eof.
 * An invalid byte is one character of class C_O. */
static inline int char_at(const unsigned char *s, size_t n, size_t i, int eof, int *cls, int uni)
{
	unsigned c = s[i];
	if (c < 0x80) {
		*cls = ascii_class(c);
		return 1;
	}
	int need;
	unsigned lo = 0x80, hi = 0xBF;
	int32_t cp;
	if (c >= 0xC2 && c <= 0xDF)
		need = 1, cp = c & 0x1F;
	else if (c >= 0xE0 && c <= 0xEF) {
		need = 2, cp = c & 0x0F;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		need = 3, cp = c & 0x07;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	} else {
		*cls = C_O;
		return 1;
	}
	for (int k = 1; k <= need; k++) {
		if (i + (size_t)k >= n) {
			if (!eof)
				return 0;
			*cls = C_O;
			return 1;
		}
		unsigned d = s[i + (size_t)k];
		if (d < lo || d > hi) {
			*cls = C_O;
			return 1;
		}
		lo = 0x80, hi = 0xBF;
		cp = (cp << 6) | (int32_t)(d & 0x3F);
	}
	*cls = cp_class(cp, uni);
	return need + 1;
}

/* End of the run of class cls that starts at i. Returning 0 (more input
 * needed), sets *seen to where it stopped: a character boundary up to which
 * the run is known, so the next call, with more input, starts there. */
static inline int run_end(const unsigned char *s, size_t n, size_t i, int cls, int eof, size_t *end,
			  size_t *seen, int uni)
{
	int k, l;
	if (*seen > i)
		i = *seen;
	while (i < n) {
		if (s[i] < 0x80) { /* ASCII fast path */
			if (ascii_class(s[i]) != cls)
				break;
			i++;
			continue;
		}
		if (!(l = char_at(s, n, i, eof, &k, uni))) {
			*seen = i;
			return 0;
		}
		if (k != cls)
			break;
		i += (size_t)l;
	}
	if (i >= n && !eof) {
		*seen = i;
		return 0;
	}
	*end = i;
	return 1;
}

/* 's 't 're 've 'm 'll 'd at s[i] (an apostrophe), ASCII letters ORed
 * with fold (0x20: either case). 1 and *end when one is there, 0 when more
 * input is needed, -1 when none is. */
static int contraction(const unsigned char *s, size_t n, size_t i, int eof, unsigned fold,
		       size_t *end)
{
	if (i + 1 >= n)
		return eof ? -1 : 0;
	unsigned c1 = s[i + 1] | fold;
	if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
		*end = i + 2;
		return 1;
	}
	if (c1 != 'r' && c1 != 'v' && c1 != 'l')
		return -1;
	if (i + 2 >= n)
		return eof ? -1 : 0;
	if ((s[i + 2] | fold) != (c1 == 'l' ? 'l' : 'e'))
		return -1;
	*end = i + 3;
	return 1;
}

/* circ_bpe_pretok_next, resumable: *seen (0 the first time) is where the
 * last call on the same piece start stopped for want of input. Without it
 * a long word fed in chunks would be rescanned from its start each time. */
static int pretok_next(const unsigned char *s, size_t n, size_t i, int eof, size_t *end,
		       size_t *seen)
{
	int cls, l;
	unsigned char c = s[i];

	if (c == '\'') { /* 's 't 're 've 'm 'll 'd, lower case only */
		int r = contraction(s, n, i, eof, 0, end);
		if (r >= 0)
			return r;
		return run_end(s, n, i, C_O, eof, end, seen, 0);
	}
	if (c == ' ') { /* " ?" before a letter, number or other run */
		if (i + 1 >= n) {
			if (!eof)
				return 0;
			*end = n;
			return 1;
		}
		if (!(l = char_at(s, n, i + 1, eof, &cls, 0)))
			return 0;
		if (cls != C_S)
			return run_end(s, n, i + 1, cls, eof, end, seen, 0);
	} else {
		if (!(l = char_at(s, n, i, eof, &cls, 0)))
			return 0;
		if (cls != C_S)
			return run_end(s, n, i, cls, eof, end, seen, 0);
	}
	/* Whitespace: \s+(?!\S) keeps the last space for the next piece when a
	 * non-space follows a run of two or more; \s+ takes a lone one. */
	size_t j = i, last = i;
	if (*seen > i) { /* [i, *seen) are spaces: last is the one before *seen */
		last = *seen - 1;
		while (last > i && (s[last] & 0xC0) == 0x80)
			last--;
		j = *seen;
	}
	while (j < n) {
		if (!(l = char_at(s, n, j, eof, &cls, 0))) {
			*seen = j;
			return 0;
		}
		if (cls != C_S)
			break;
		last = j;
		j += (size_t)l;
	}
	if (j >= n) {
		if (!eof) {
			*seen = j;
			return 0;
		}
		*end = n;
		return 1;
	}
	*end = last > i ? last : j;
	return 1;
}

/* Llama 3's and Qwen 2's pattern (max_digits 3 and 1), alternatives in order:
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d) | [^\r\n\p{L}\p{N}]?\p{L}+ | \p{N}{1,max_digits}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 * with \s White_Space and (?i:) ASCII case folding (as tokenizers.js
 * translates them). Same contract as pretok_next. */
static inline int is_crlf(unsigned char c)
{
	return c == '\r' || c == '\n';
}

static int pretok_llama3(const unsigned char *s, size_t n, size_t i, int eof, size_t *end,
			 size_t *seen, int max_digits)
{
	int cls, l, ncls = 0, nl = 0;
	unsigned char c = s[i];
	if (c == '\'') {
		int r = contraction(s, n, i, eof, 0x20, end);
		if (r >= 0)
			return r;
	}
	if (!(l = char_at(s, n, i, eof, &cls, 1)))
		return 0;
	if (cls == C_L)
		return run_end(s, n, i, C_L, eof, end, seen, 1);
	if (cls != C_N && !is_crlf(c)) { /* one character of prefix, then letters */
		if (i + (size_t)l >= n) {
			if (!eof)
				return 0;
		} else if (!(nl = char_at(s, n, i + (size_t)l, eof, &ncls, 1))) {
			return 0;
		} else if (ncls == C_L) {
			return run_end(s, n, i + (size_t)l, C_L, eof, end, seen, 1);
		}
	}
	if (cls == C_N) {
		size_t j = i;
		for (int k = 0; k < max_digits; k++) {
			int kc, kl;
			if (j >= n) {
				if (!eof)
					return 0;
				break;
			}
			if (!(kl = char_at(s, n, j, eof, &kc, 1)))
				return 0;
			if (kc != C_N)
				break;
			j += (size_t)kl;
		}
		*end = j;
		return 1;
	}
	if (cls == C_O || (c == ' ' && nl && ncls == C_O)) { /* " ?" other+ [\r\n]* */
		size_t j;
		if (!run_end(s, n, cls == C_O ? i : i + 1, C_O, eof, &j, seen, 1))
			return 0;
		while (j < n && is_crlf(s[j]))
			j++;
		if (j >= n && !eof)
			return 0;
		*end = j;
		return 1;
	}
	/* Whitespace: \s*[\r\n]+ ends after the run's last CR or LF; else
	 * \s+(?!\S) leaves the last space of two or more before a non-space. */
	size_t j = i, last = i, crlf = 0;
	int found = 0;
	while (j < n) {
		if (!(l = char_at(s, n, j, eof, &cls, 1)))
			return 0;
		if (cls != C_S)
			break;
		if (is_crlf(s[j]))
			crlf = j, found = 1;
		last = j;
		j += (size_t)l;
	}
	if (j >= n && !eof)
		return 0;
	if (found)
		*end = crlf + 1;
	else if (j >= n)
		*end = n;
	else
		*end = last > i ? last : j;
	return 1;
}

/* The pre-tokenizer b uses. */
static int pretok_any(const circ_bpe *b, const unsigned char *s, size_t n, size_t i, int eof,
		      size_t *end, size_t *seen)
{
	if (b->pretok == PRETOK_LLAMA3)
		return pretok_llama3(s, n, i, eof, end, seen, b->max_digits);
	if (b->pretok == PRETOK_NONE) {
		if (!eof)
			return 0;
		*end = n;
		return 1;
	}
	return pretok_next(s, n, i, eof, end, seen);
}

/* A normalizer proper (Metaspace is a pre-tokenizer, folded into normalize). */
static int has_normalizer(const circ_bpe *b)
{
	return b->nfc || b->sp_prepend || b->sp_replace;
}

/* Texts are normalized (or Metaspace'd) before pre-tokenization. */
static int normalizes(const circ_bpe *b)
{
	return b->nfc || b->sp_prepend || b->sp_replace || b->meta;
}

/* The normalizer (and Metaspace): text[0..n) -> a new buffer (*len bytes).
 * first: the text starts the input (Metaspace's prepend_scheme first). */
static unsigned char *normalize(const circ_bpe *b, const unsigned char *text, size_t n, int first,
				size_t *len, circ_error *e)
{
	unsigned char *out;
	if (b->nfc) { /* valid stretches composed; a byte that is not UTF-8 stays as it is */
		size_t cap = n + 16, k = 0;
		out = circ_xmalloc(cap);
		for (size_t i = 0; i < n;) {
			size_t j = i;
			utf8proc_int32_t cp;
			utf8proc_ssize_t l;
			while (j < n &&
			       (l = utf8proc_iterate(text + j, (utf8proc_ssize_t)(n - j), &cp)) > 0)
				j += (size_t)l;
			if (j > i) {
				utf8proc_uint8_t *dst = NULL;
				utf8proc_ssize_t r =
				    utf8proc_map(text + i, (utf8proc_ssize_t)(j - i), &dst,
						 UTF8PROC_STABLE | UTF8PROC_COMPOSE);
				if (r < 0) {
					free(out);
					circ_errorf(e, "NFC normalizer: %s", utf8proc_errmsg(r));
					return NULL;
				}
				while (k + (size_t)r + 1 > cap)
					cap *= 2;
				out = circ_xrealloc(out, cap);
				memcpy(out + k, dst, (size_t)r);
				k += (size_t)r;
				free(dst);
			}
			if (j < n) {
				if (k + 1 > cap)
					out = circ_xrealloc(out, cap *= 2);
				out[k++] = text[j++];
			}
			i = j;
		}
		*len = k;
		return out;
	}
	/* SentencePiece: Prepend "▁", Replace " " by "▁"; or Metaspace, which
	 * prepends unless the text starts with one */
	size_t spaces = 0, k = 0;
	int meta_pre = b->meta == META_ALWAYS || (b->meta == META_FIRST && first);
	for (size_t i = 0; i < n; i++)
		spaces += text[i] == ' ';
	out = circ_xmalloc(n + 2 * spaces + 4);
	if (n && (b->sp_prepend ||
		  (meta_pre && text[0] != ' ' && (n < 3 || memcmp(text, SP_SPACE, 3))))) {
		memcpy(out, SP_SPACE, 3);
		k = 3;
	}
	for (size_t i = 0; i < n; i++) {
		if (text[i] == ' ' && (b->sp_replace || b->meta)) {
			memcpy(out + k, SP_SPACE, 3);
			k += 3;
		} else {
			out[k++] = text[i];
		}
	}
	*len = k;
	return out;
}

/* First added token of set in s[from..n) (the earliest, then the longest,
 * as Aho-Corasick's leftmost-longest search; special ones only with all):
 * its index in *at and the token. A walk down the trie at each position
 * whose byte starts a token: the cost grows with the text and the longest
 * token, not with the number of tokens. */
static const special *set_find(const added_set *set, const unsigned char *s, size_t from, size_t n,
			       int all, size_t *at)
{
	for (size_t p = from; set->n && p < n; p++) {
		if (!set->first[s[p]])
			continue;
		int32_t node = 0, best = -1;
		for (size_t q = p; q < n && (node = trie_step(set, node, s[q])) >= 0; q++)
			if (set->trie_term[node] >= 0 &&
			    (all || !set->v[set->trie_term[node]].special))
				best = set->trie_term[node];
		if (best >= 0) {
			*at = p;
			return &set->v[best];
		}
	}
	*at = n;
	return NULL;
}

/* The white space of an added token's lstrip and rstrip: Hugging Face
 * tokenizers' \s, Unicode's White_Space (tokenizers.js trims
 * ECMAScript's, which has U+FEFF and lacks U+0085). */
static size_t space_len(const unsigned char *s, size_t n, size_t i, int eof, int *need_more)
{
	utf8proc_int32_t cp;
	utf8proc_ssize_t l = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
	*need_more = 0;
	if (l > 0)
		return uni_space(cp) ? (size_t)l : 0;
	if (!eof && s[i] >= 0xC0 && n - i < 4) /* maybe a character cut by the buffer */
		*need_more = 1;
	return 0;
}

/* The start of the character that ends at s[to] (from <= it < to). */
static size_t char_start(const unsigned char *s, size_t from, size_t to)
{
	size_t st = to - 1;
	while (st > from && to - st < 4 && (s[st] & 0xC0) == 0x80)
		st--;
	return st;
}

/* The end of s[from..to) without its trailing white space. */
static size_t trim_end(const unsigned char *s, size_t from, size_t to)
{
	while (to > from) {
		size_t st = char_start(s, from, to);
		int more;
		size_t l = space_len(s, to, st, 1, &more);
		if (!l || st + l != to)
			break;
		to = st;
	}
	return to;
}

/* Regex \w as Hugging Face's single_word reads it (Rust regex, Unicode):
 * Alphabetic (letters, Nl, Other_Alphabetic: marks and the circled and
 * squared letters), marks, decimal digits, connector punctuation, the
 * joiners. A byte that is not UTF-8 is no word character. */
static int word_char(int32_t c)
{
	if (c < 0x80)
		return (unsigned)((c | 32) - 'a') < 26 || (unsigned)(c - '0') < 10 || c == '_';
	if (c == 0x200C || c == 0x200D || (c >= 0x24B6 && c <= 0x24E9) ||
	    (c >= 0x1F130 && c <= 0x1F149) || (c >= 0x1F150 && c <= 0x1F169) ||
	    (c >= 0x1F170 && c <= 0x1F189))
		return 1;
	switch (utf8proc_category(c)) {
	case UTF8PROC_CATEGORY_LU:
	case UTF8PROC_CATEGORY_LL:
	case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_LO:
	case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_MN:
	case UTF8PROC_CATEGORY_MC:
	case UTF8PROC_CATEGORY_ME:
	case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_PC: return 1;
	default: return 0;
	}
}

/* single_word: 1 if no word character touches s[at..end) (base..n is the
 * text, the bytes before base are not), 0 if one does, -1 if the character
 * after it is past the buffer and !eof. */
static int single_ok(const unsigned char *s, size_t base, size_t n, size_t at, size_t end, int eof)
{
	utf8proc_int32_t cp;
	utf8proc_ssize_t l;
	if (at > base) {
		size_t st = char_start(s, base, at);
		l = utf8proc_iterate(s + st, (utf8proc_ssize_t)(at - st), &cp);
		if (l > 0 && st + (size_t)l == at && word_char(cp))
			return 0;
	}
	if (end == n)
		return eof ? 1 : -1;
	l = utf8proc_iterate(s + end, (utf8proc_ssize_t)(n - end), &cp);
	if (l <= 0 && !eof && s[end] >= 0xC0 && n - end < 4)
		return -1;
	return !(l > 0 && word_char(cp));
}

/* Pre-tokenizes and encodes t[0..n), a whole text. */
static int encode_text(circ_bpe *b, const unsigned char *t, size_t n, circ_ids *out, circ_error *e)
{
	size_t pos = 0, end, seen;
	int rc = 0;
	while (rc == 0 && pos < n) {
		seen = 0;
		pretok_any(b, t, n, pos, 1, &end, &seen);
		rc = encode_piece(b, t + pos, end - pos, out, e);
		pos = end;
	}
	return rc;
}

/* Normalizes, pre-tokenizes and encodes text[0..n) whole (a text between
 * added tokens, for tokenizers with a normalizer or no pre-tokenizer). The
 * added tokens matched in normalized text are found as Hugging Face's
 * find_matches finds them: leftmost-longest, a token that fails
 * single_word skipped (the search goes on after it), lstrip taking the
 * white space before it back to the previous token's end, rstrip the white
 * space after it (a token the search then finds inside that white space is
 * still taken, and the next text starts after it: Hugging Face's offsets). */
static int encode_whole(circ_bpe *b, const unsigned char *text, size_t n, int first, int all,
			circ_ids *out, circ_error *e)
{
	size_t len = n, done = 0, from = 0, at;
	unsigned char *norm = NULL;
	const unsigned char *t = text;
	const special *sp;
	int rc = 0;
	if (normalizes(b)) {
		if (!(norm = normalize(b, text, n, first, &len, e)))
			return -1;
		t = norm;
	}
	while (rc == 0 && (sp = set_find(&b->norm, t, from, len, all, &at))) {
		size_t start = at, stop = at + sp->len;
		int more;
		from = stop;
		if (sp->single_word && !single_ok(t, 0, len, start, stop, 1))
			continue;
		if (sp->lstrip && (start = trim_end(t, 0, start)) < done)
			start = done;
		for (size_t l; sp->rstrip && stop < len && (l = space_len(t, len, stop, 1, &more));)
			stop += l;
		if (done < start)
			rc = encode_text(b, t + done, start - done, out, e);
		circ_ids_push(out, sp->id);
		done = stop;
	}
	if (rc == 0 && done < len)
		rc = encode_text(b, t + done, len - done, out, e);
	free(norm);
	return rc;
}

int circ_bpe_pretok_next(const unsigned char *s, size_t n, size_t i, int eof, size_t *end)
{
	size_t seen = 0;
	return pretok_next(s, n, i, eof, end, &seen);
}

/* ------------------------------------------------------------ encoding */

struct circ_bpe_stream {
	circ_bpe *b;
	int flags;
	unsigned char *buf;
	size_t len, cap, pos;
	size_t seen_at, seen; /* the piece at seen_at is scanned up to seen */
	size_t spec_from;     /* no special token starts in [pos, spec_from) */
	int started;	      /* something of this text is encoded (Metaspace's "first") */
	int skip_space;	      /* the last added token was rstrip: white space after it goes */
};

circ_bpe_stream *circ_bpe_stream_new(circ_bpe *b, int flags)
{
	circ_bpe_stream *s = circ_xcalloc(1, sizeof *s);
	s->b = b;
	s->flags = flags;
	return s;
}

void circ_bpe_stream_free(circ_bpe_stream *s)
{
	if (!s)
		return;
	free(s->buf);
	free(s);
}

/* Tokenises what can be decided in s->buf[pos..len). */
static int stream_run(circ_bpe_stream *s, int eof, circ_ids *out, circ_error *e)
{
	circ_bpe *b = s->b;
	const unsigned char *buf = s->buf;
	for (;;) {
		size_t limit = s->len, at = s->len, end;
		int seg_eof = eof;
		const special *sp = NULL;
		while (s->skip_space) { /* rstrip */
			int more = 0;
			size_t l = s->pos < s->len ? space_len(buf, s->len, s->pos, eof, &more) : 0;
			if (more || (s->pos >= s->len && !eof))
				return 0;
			if (!l)
				s->skip_space = 0;
			s->pos += l;
		}
		int all = s->flags & CIRC_BPE_SPECIAL;
		if (b->raw.n && (all || b->raw.n_plain)) {
			/* Searched once: a token cut by the end of the buffer starts in
			 * its last raw.max - 1 bytes, which wait for more. */
			size_t from = s->spec_from > s->pos ? s->spec_from : s->pos;
			/* no token starting before safe can end past the buffer */
			size_t safe =
			    s->len - from > b->raw.max - 1 ? s->len - (b->raw.max - 1) : from;
			for (;;) {
				sp = set_find(&b->raw, buf, from, s->len, all, &at);
				if (sp && !eof &&
				    at >= safe) /* a longer or earlier one may yet come */
					sp = NULL;
				if (!sp || !sp->single_word)
					break;
				int ok = single_ok(buf, 0, s->len, at, at + sp->len, eof);
				if (ok > 0)
					break;
				if (ok < 0) { /* the character after it is to come */
					sp = NULL;
					safe = at;
					break;
				}
				/* not a single word: text, and the search goes on after it */
				from = at + sp->len;
				if (safe < from)
					safe = from;
				sp = NULL;
			}
			if (sp) {
				limit = sp->lstrip ? trim_end(buf, s->pos, at) : at, seg_eof = 1;
			} else {
				s->spec_from = safe;
				if (!eof)
					limit = safe;
			}
		}
		if (normalizes(b) || b->pretok == PRETOK_NONE) {
			/* normalizers see a whole text between added tokens */
			if (!seg_eof)
				return 0;
			if (encode_whole(b, buf + s->pos, limit - s->pos, !s->started, all, out,
					 e) < 0)
				return -1;
			s->pos = limit;
		}
		while (s->pos < limit) {
			size_t seen = s->seen_at == s->pos && s->seen <= limit ? s->seen : 0;
			if (!pretok_any(b, buf, limit, s->pos, seg_eof, &end, &seen)) {
				s->seen_at = s->pos, s->seen = seen;
				return 0;
			}
			if (encode_piece(b, buf + s->pos, end - s->pos, out, e) < 0)
				return -1;
			s->pos = end;
			s->seen = 0;
		}
		if (!sp)
			return 0;
		circ_ids_push(out, sp->id);
		s->started = 1;
		s->skip_space = sp->rstrip;
		s->pos = at + sp->len;
		s->seen = 0;
	}
}

int circ_bpe_stream_feed(circ_bpe_stream *s, const char *data, size_t n, circ_ids *out,
			 circ_error *e)
{
	if (s->pos > 4) { /* drop what is done but its last character (single_word reads it) */
		size_t drop = s->pos - 4;
		memmove(s->buf, s->buf + drop, s->len - drop);
		s->len -= drop;
		s->seen_at = s->seen_at >= drop ? s->seen_at - drop : 0;
		s->seen = s->seen >= drop ? s->seen - drop : 0;
		s->spec_from = s->spec_from >= drop ? s->spec_from - drop : 0;
		s->pos -= drop;
	}
	if (s->len + n > s->cap) {
		s->cap = s->cap ? s->cap : 65536;
		while (s->cap < s->len + n)
			s->cap *= 2;
		s->buf = circ_xrealloc(s->buf, s->cap);
	}
	memcpy(s->buf + s->len, data, n);
	s->len += n;
	return stream_run(s, 0, out, e);
}

int circ_bpe_stream_finish(circ_bpe_stream *s, circ_ids *out, circ_error *e)
{
	int rc = stream_run(s, 1, out, e);
	s->len = s->pos = s->seen_at = s->seen = s->spec_from = 0;
	s->started = s->skip_space = 0;
	return rc;
}

int circ_bpe_encode(circ_bpe *b, const char *text, size_t n, int flags, circ_ids *out,
		    circ_error *e)
{
	/* A stream over the caller's buffer, without copying it. */
	circ_bpe_stream s = {
	    .b = b, .flags = flags, .buf = (unsigned char *)(uintptr_t)text, .len = n, .cap = n};
	return stream_run(&s, 1, out, e);
}

int circ_bpe_encode_after(circ_bpe *b, const char *text, size_t n, int flags, circ_ids *out,
			  circ_error *e)
{
	circ_ids pre = {0}, all = {0};
	char *buf = circ_xmalloc(n + 1);
	int rc = -1, cont = 0;
	buf[0] = 'a';
	memcpy(buf + 1, text, n);
	if (circ_bpe_encode(b, "a", 1, flags, &pre, e) < 0 ||
	    circ_bpe_encode(b, buf, n + 1, flags, &all, e) < 0)
		goto out;
	cont = all.n > pre.n && !memcmp(all.v, pre.v, pre.n * sizeof *pre.v);
	if (cont) {
		for (size_t i = pre.n; i < all.n; i++)
			circ_ids_push(out, all.v[i]);
		rc = 0;
	} else {
		rc = circ_bpe_encode(b, text, n, flags, out, e);
	}
out:
	circ_ids_free(&pre);
	circ_ids_free(&all);
	free(buf);
	return rc;
}

int32_t circ_bpe_single(circ_bpe *b, const char *text, size_t n)
{
	circ_ids ids = {0};
	circ_error e;
	int32_t id = -1;
	if (circ_bpe_encode_after(b, text, n, 0, &ids, &e) == 0 && ids.n == 1)
		id = ids.v[0];
	circ_ids_free(&ids);
	return id;
}

char *circ_bpe_decode(const circ_bpe *b, const int32_t *ids, size_t n, size_t *len, circ_error *e)
{
	size_t total = 0, k = 0, l;
	for (size_t i = 0; i < n; i++) {
		if (!circ_bpe_token_bytes(b, ids[i], &l)) {
			circ_errorf(e, "token %zu: id %ld is not in the vocabulary", i,
				    (long)ids[i]);
			return NULL;
		}
		total += l;
	}
	char *out = circ_xmalloc(total + 1);
	for (size_t i = 0; i < n; i++) {
		const unsigned char *p = circ_bpe_token_bytes(b, ids[i], &l);
		memcpy(out + k, p, l);
		k += l;
	}
	if (b->sp) { /* "▁" is a space */
		size_t j = 0;
		for (size_t i = 0; i < k; i++) {
			if (i + 3 <= k && !memcmp(out + i, SP_SPACE, 3)) {
				out[j++] = ' ';
				i += 2;
			} else {
				out[j++] = out[i];
			}
		}
		k = j;
	}
	out[k] = 0;
	*len = k;
	return out;
}

/* ------------------------------------------------------------ reference twin */

/* The reference follows the pattern literally: decode the whole text to
 * code points (an invalid byte b becomes -1 - b), then at each position try
 * the alternatives in order, each greedy with backtracking as a regex
 * engine would; merge naively by recomputing every pair's rank. */

static int ref_class(int32_t c)
{
	return c < 0 ? C_O : cp_class(c, 0);
}

static int ref_is(int32_t c, int cls)
{
	return ref_class(c) == cls;
}

/* Length of the match of alternatives 2-4 (" ?" then a run of cls), 0 if none. */
static size_t ref_opt_space_run(const int32_t *cp, size_t n, size_t i, int cls)
{
	for (int with_space = 1; with_space >= 0; with_space--) {
		size_t j = i;
		if (with_space) {
			if (cp[j] != ' ')
				continue;
			j++;
		}
		size_t k = j;
		while (k < n && ref_is(cp[k], cls))
			k++;
		if (k > j)
			return k - i;
	}
	return 0;
}

static size_t ref_piece(const int32_t *cp, size_t n, size_t i)
{
	static const char *contr[] = {"s", "t", "re", "ve", "m", "ll", "d"};
	if (cp[i] == '\'')
		for (int c = 0; c < 7; c++) {
			size_t l = strlen(contr[c]), k;
			for (k = 0; k < l && i + 1 + k < n && cp[i + 1 + k] == contr[c][k]; k++)
				;
			if (k == l)
				return l + 1;
		}
	size_t m;
	if ((m = ref_opt_space_run(cp, n, i, C_L)) || (m = ref_opt_space_run(cp, n, i, C_N)) ||
	    (m = ref_opt_space_run(cp, n, i, C_O)))
		return m;
	size_t k = i;
	while (k < n && ref_is(cp[k], C_S))
		k++;
	for (size_t t = k; t > i; t--) /* \s+(?!\S), backtracking from greedy */
		if (t == n || ref_is(cp[t], C_S))
			return t - i;
	return k - i; /* \s+ (never 0: the alternatives cover every class) */
}

/* The first symbols: byte tokens, or (SentencePiece) each character's
 * token or its bytes' tokens. Returns their count, or -1. */
static long ref_symbols(const circ_bpe *b, const unsigned char *p, size_t n, int32_t *sym,
			circ_error *e)
{
	size_t k = 0;
	for (size_t i = 0; i < n;) {
		size_t l = 1;
		int32_t id = -1;
		if (b->sp) {
			utf8proc_int32_t cp;
			utf8proc_ssize_t r =
			    utf8proc_iterate(p + i, (utf8proc_ssize_t)(n - i), &cp);
			l = r > 0 ? (size_t)r : 1;
			id = vh_get(b, p + i, l, hash_bytes(p + i, l));
			if (id < 0 && !has_bytes(b, p + i, l)) {
				if (no_token(b, p + i, l, e) < 0)
					return -1;
				id = UNK_SYM(b);
			}
		}
		if (id >= 0)
			sym[k++] = id;
		else
			for (size_t q = 0; q < l; q++)
				if ((sym[k++] = b->byte_id[p[i + q]]) < 0)
					return missing_byte(p[i + q], e);
		i += l;
	}
	return (long)k;
}

static int ref_encode_bytes(const circ_bpe *b, const unsigned char *p, size_t n, circ_ids *out,
			    circ_error *e)
{
	int32_t *sym = circ_xmalloc((n ? n : 1) * sizeof *sym), id = -1;
	if (b->ignore_merges && (id = vh_get(b, p, n, hash_bytes(p, n))) >= 0) {
		circ_ids_push(out, id);
		free(sym);
		return 0;
	}
	long k = ref_symbols(b, p, n, sym, e);
	if (k < 0) {
		free(sym);
		return -1;
	}
	n = (size_t)k;
	while (n > 1) {
		int32_t best = NO_RANK;
		size_t at = 0;
		for (size_t i = 0; i + 1 < n; i++) {
			int32_t r = pair_lookup(b, sym[i], sym[i + 1], &id);
			if (r < best)
				best = r, at = i;
		}
		if (best == NO_RANK)
			break;
		pair_lookup(b, sym[at], sym[at + 1], &id);
		sym[at] = id;
		for (size_t i = at + 1; i + 1 < n; i++)
			sym[i] = sym[i + 1];
		n--;
	}
	n = unk_ids(b, sym, n);
	for (size_t i = 0; i < n; i++)
		circ_ids_push(out, sym[i]);
	free(sym);
	return 0;
}

static int ref_encode_segment(const circ_bpe *b, const unsigned char *s, size_t n, int first,
			      circ_ids *out, circ_error *e)
{
	if (b->pretok != PRETOK_GPT2) { /* normalized, then (no pre-tokenizer) one piece */
		size_t len = n;
		unsigned char *norm = NULL;
		if (normalizes(b) && !(norm = normalize(b, s, n, first, &len, e)))
			return -1;
		if (b->pretok == PRETOK_NONE) {
			int rc = ref_encode_bytes(b, norm ? norm : s, len, out, e);
			free(norm);
			return rc;
		}
		free(norm);
		return circ_errorf(e, "the reference encoder has GPT-2's pre-tokenizer only");
	}
	int32_t *cp = circ_xmalloc((n ? n : 1) * sizeof *cp);
	size_t *off = circ_xmalloc((n + 1) * sizeof *off), m = 0, i = 0;
	int rc = 0;
	while (i < n) {
		utf8proc_int32_t c;
		utf8proc_ssize_t l = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
		if (l <= 0 || !utf8proc_codepoint_valid(c))
			c = -1 - (int32_t)s[i], l = 1;
		off[m] = i;
		cp[m++] = c;
		i += (size_t)l;
	}
	off[m] = n;
	for (size_t k = 0; k < m && rc == 0;) {
		size_t len = ref_piece(cp, m, k);
		rc = ref_encode_bytes(b, s + off[k], off[k + len] - off[k], out, e);
		k += len;
	}
	free(cp);
	free(off);
	return rc;
}

int circ_bpe_encode_ref(const circ_bpe *b, const char *text, size_t n, int flags, circ_ids *out,
			circ_error *e)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t pos = 0;
	for (;;) {
		size_t at = n;
		const special *sp = NULL;
		for (int k = 0; k < b->raw.n; k++) /* earliest, then longest */
			if ((flags & CIRC_BPE_SPECIAL) || !b->raw.v[k].special)
				for (size_t i = pos; i + b->raw.v[k].len <= n && i <= at; i++)
					if (!memcmp(s + i, b->raw.v[k].text, b->raw.v[k].len)) {
						if (i < at || b->raw.v[k].len > sp->len)
							at = i, sp = &b->raw.v[k];
						break;
					}
		size_t seg_end = sp && sp->lstrip ? trim_end(s, pos, at) : at;
		if (ref_encode_segment(b, s + pos, seg_end - pos, pos == 0, out, e) < 0)
			return -1;
		if (!sp)
			return 0;
		circ_ids_push(out, sp->id);
		pos = at + sp->len;
		for (int more, l;
		     sp->rstrip && pos < n && (l = (int)space_len(s, n, pos, 1, &more));)
			pos += (size_t)l;
	}
}

char *circ_bpe_token_text(const circ_bpe *b, int32_t id)
{
	circ_error e;
	size_t len;
	char *d = b ? circ_bpe_decode(b, &id, 1, &len, &e) : NULL;
	if (!d) {
		d = circ_xmalloc(16);
		snprintf(d, 16, "%d", (int)id);
	}
	return d;
}
