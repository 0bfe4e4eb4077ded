/*
 * circ-tokenize: GPT-2 BPE and Hugging Face tokenizer.json BPE for circ. Three modes:
 *   dataset (default)  dataset JSON lines -> a "tokens" stream: clean and
 *                      corrupt ids, prediction position(s), answer and
 *                      wrong ids, with the task's metric in the header;
 *   --text             raw text -> ids (space-separated on one line), or
 *                      with --json one JSON string per line -> one JSON
 *                      array of ids per line;
 *   --decode           ids -> raw bytes, or with --json one array per
 *                      line -> one JSON string per line.
 * The dataset is read whole (datasets are small, and the header carries
 * its digest and example count); text mode streams in fixed chunks, so its
 * memory does not grow with the input.
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "bpe.h"
#include "json.h"
#include "metric.h"
#include "model.h"
#include "cli/opt.h"
#include "tasks.h"

enum {
	OPT_VOCAB_DIR = CIRC_OPT_FIRST_TOOL,
	OPT_MODEL_DIR,
	OPT_VOCAB_SIZE,
	OPT_TEXT,
	OPT_DECODE,
	OPT_SPECIAL,
	OPT_PREPEND_BOS,
	OPT_NO_BOS,
	OPT_TASK,
	OPT_METRIC,
	OPT_SKIP_MISALIGNED,
};

static const circ_opt opts[] = {
    {"vocab-dir", OPT_VOCAB_DIR, "DIR",
     "tokenizer directory: vocab.json + merges.txt, or tokenizer.json (needed for text)"},
    {"model-dir", OPT_MODEL_DIR, "DIR",
     "a model directory: its tokenizer files, and config.json's vocab_size for the header"},
    {"vocab-size", OPT_VOCAB_SIZE, "N",
     "dataset: the model's vocabulary size, stamped on the header; every id must be below it"},
    {"text", OPT_TEXT, NULL,
     "plain mode: text in, ids out (with --json: JSON strings in, arrays out)"},
    {"decode", OPT_DECODE, NULL, "ids in, text out (with --json: arrays in, JSON strings out)"},
    {"special", OPT_SPECIAL, NULL, "read <|endoftext|> in text as the special token"},
    {"prepend-bos", OPT_PREPEND_BOS, NULL,
     "dataset: put the BOS first in clean and corrupt (tokenizer.json's, else <|endoftext|>)"},
    {"no-bos", OPT_NO_BOS, NULL,
     "dataset: no BOS first, even where tokenizer.json's post-processor adds one"},
    {"task", OPT_TASK, "NAME", "dataset: task name for the header (default: from the lines)"},
    {"metric", OPT_METRIC, "M",
     "dataset: logit_diff, prob_diff, logprob or kl (default: from the lines)"},
    {"skip-misaligned", OPT_SKIP_MISALIGNED, NULL,
     "dataset: skip pairs whose clean and corrupt lengths differ (count on stderr)"},
    {0},
};

static struct {
	const char *vocab_dir, *model_dir, *task, *metric;
	int64_t vocab_size; /* --vocab-size, 0 when not given */
	int text, decode, special, bos, no_bos, skip_misaligned, dataset_only;
} o;

/* The tokenizer (NULL until some text needs it, in dataset mode), and the
 * vocabulary size every id is checked against (0: none known). */
static circ_bpe *tok;
static int64_t vsize;
static char vsize_src[4400]; /* "--vocab-size" or "'<dir>/config.json'" */

static int handle(int key, const char *arg, void *ctx)
{
	switch (key) {
	case OPT_VOCAB_DIR:
	case OPT_MODEL_DIR: {
		const char *name = key == OPT_VOCAB_DIR ? "vocab-dir" : "model-dir";
		const char **dir = key == OPT_VOCAB_DIR ? &o.vocab_dir : &o.model_dir;
		if (*dir)
			circ_usage_error("option '--%s' given twice", name);
		*dir = arg;
		if (o.vocab_dir && o.model_dir)
			circ_usage_error(
			    "--vocab-dir and --model-dir: give one tokenizer directory");
		return 0;
	}
	case OPT_VOCAB_SIZE:
		o.vocab_size = circ_opt_i64("vocab-size", arg, 1, INT32_MAX);
		o.dataset_only = 1;
		return 0;
	case OPT_TEXT: o.text = 1; return 0;
	case OPT_DECODE: o.decode = 1; return 0;
	case OPT_SPECIAL: o.special = 1; return 0;
	case OPT_PREPEND_BOS: o.bos = 1, o.dataset_only = 1; return 0;
	case OPT_NO_BOS: o.no_bos = 1, o.dataset_only = 1; return 0;
	case OPT_TASK: o.task = arg, o.dataset_only = 1; return 0;
	case OPT_METRIC: o.metric = arg, o.dataset_only = 1; return 0;
	case OPT_SKIP_MISALIGNED: o.skip_misaligned = 1, o.dataset_only = 1; return 0;
	}
	return -1;
}

/* The BOS: the token tokenizer.json's post-processor puts first, else
 * <|endoftext|> (GPT-2's habit); -1 when there is neither. */
static int32_t bos_id(void)
{
	if (!tok)
		return -1;
	return circ_bpe_bos(tok) >= 0 ? circ_bpe_bos(tok) : circ_bpe_eot(tok);
}

static int has_tokenizer(const char *dir);

static int valid_metric(const char *m)
{
	circ_metric_kind k;
	return circ_metric_parse(m, strlen(m), &k) == 0;
}

static FILE *open_input(const char *path, const char **name)
{
	if (!strcmp(path, "-")) {
		*name = "<stdin>";
		return stdin;
	}
	*name = path;
	FILE *f = fopen(path, "rb");
	if (!f)
		circ_dief("'%s': %s", path, strerror(errno));
	return f;
}

static void close_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0)
		circ_dief("'<stdout>': write error");
}

/* ------------------------------------------------------------ --text */

/* Ids as decimal text; printf per id would be a third of --text's time. */
static void print_ids(const circ_ids *ids, int json, int *first)
{
	char buf[16];
	for (size_t i = 0; i < ids->n; i++) {
		uint32_t v = (uint32_t)ids->v[i]; /* ids are never negative */
		int k = sizeof buf;
		do
			buf[--k] = (char)('0' + v % 10);
		while (v /= 10);
		if (!*first)
			buf[--k] = json ? ',' : ' ';
		fwrite_unlocked(buf + k, 1, sizeof buf - (size_t)k, stdout);
		*first = 0;
	}
}

static void text_mode(circ_bpe *b, FILE *in, const char *name, int json)
{
	int flags = o.special ? CIRC_BPE_SPECIAL : 0;
	circ_ids ids = {0};
	circ_error e;
	if (!json) { /* the whole input is one text, streamed */
		static char buf[1 << 16];
		circ_bpe_stream *s = circ_bpe_stream_new(b, flags);
		int first = 1;
		size_t n;
		while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
			if (circ_bpe_stream_feed(s, buf, n, &ids, &e) < 0)
				circ_dief("'%s': %s", name, e.msg);
			print_ids(&ids, 0, &first);
			ids.n = 0;
		}
		if (ferror(in))
			circ_dief("'%s': read error: %s", name, strerror(errno));
		if (circ_bpe_stream_finish(s, &ids, &e) < 0)
			circ_dief("'%s': %s", name, e.msg);
		print_ids(&ids, 0, &first);
		putchar('\n');
		circ_bpe_stream_free(s);
	} else { /* one JSON string per line */
		char *line = NULL;
		size_t cap = 0;
		ssize_t len;
		for (long lineno = 1; (len = getline(&line, &cap, in)) >= 0; lineno++) {
			json_error_t je;
			json_t *j =
			    json_loadb(line, (size_t)len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
			int first = 1;
			if (!j || !json_is_string(j))
				circ_dief("'%s': line %ld: expected a JSON string%s%s", name,
					  lineno, j ? "" : ": ", j ? "" : je.text);
			ids.n = 0;
			if (circ_bpe_encode(b, json_string_value(j), json_string_length(j), flags,
					    &ids, &e) < 0)
				circ_dief("'%s': line %ld: %s", name, lineno, e.msg);
			putchar('[');
			print_ids(&ids, 1, &first);
			fputs("]\n", stdout);
			json_decref(j);
		}
		if (ferror(in))
			circ_dief("'%s': read error: %s", name, strerror(errno));
		free(line);
	}
	circ_ids_free(&ids);
}

/* ------------------------------------------------------------ --decode */

/* Writes bytes as a JSON string; invalid UTF-8 bytes become U+FFFD. */
static void print_json_bytes(const char *s, size_t n)
{
	json_t *j;
	char *valid = circ_xmalloc(3 * n + 1);
	size_t k = 0;
	for (size_t i = 0; i < n;) {
		utf8proc_int32_t cp;
		utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
						      (utf8proc_ssize_t)(n - i), &cp);
		if (l <= 0) {
			memcpy(valid + k, "\xef\xbf\xbd", 3);
			k += 3;
			i++;
		} else {
			memcpy(valid + k, s + i, (size_t)l);
			k += (size_t)l;
			i += (size_t)l;
		}
	}
	j = json_stringn_nocheck(valid, k);
	char *text = json_dumps(j, JSON_ENCODE_ANY);
	puts(text);
	free(text);
	json_decref(j);
	free(valid);
}

static void decode_mode(circ_bpe *b, FILE *in, const char *name, int json)
{
	circ_error e;
	if (!json) { /* whitespace-separated ids, streamed */
		size_t index = 0;
		int c;
		for (;;) {
			while ((c = getc(in)) == ' ' || c == '\n' || c == '\t' || c == '\r')
				;
			if (c == EOF)
				break;
			ungetc(c, in);
			char word[32];
			size_t k = 0, len = 0;
			while ((c = getc(in)) != EOF && c != ' ' && c != '\n' && c != '\t' &&
			       c != '\r')
				if (len++ < sizeof word - 1)
					word[k++] = (char)c;
			word[k] = 0;
			size_t l;
			char *p;
			int64_t id;
			int32_t id32;
			/* a word cut to fit is no id, whatever its first 31 bytes say */
			if (len > k || circ_parse_i64(word, &id) < 0)
				circ_dief("'%s': token %zu: '%s%s' is not an integer id", name,
					  index, word, len > k ? "..." : "");
			id32 = id < INT32_MIN || id > INT32_MAX ? -1 : (int32_t)id;
			/* one id at a time: decoding may rewrite a token (SentencePiece's ▁) */
			if (!(p = circ_bpe_decode(b, &id32, 1, &l, &e)))
				circ_dief("'%s': token %zu: id %lld is not in the vocabulary", name,
					  index, (long long)id);
			fwrite(p, 1, l, stdout);
			free(p);
			index++;
		}
		if (ferror(in))
			circ_dief("'%s': read error: %s", name, strerror(errno));
		return;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	for (long lineno = 1; (len = getline(&line, &cap, in)) >= 0; lineno++) {
		json_error_t je;
		json_t *j = json_loadb(line, (size_t)len, 0, &je);
		if (!j || !json_is_array(j))
			circ_dief("'%s': line %ld: expected a JSON array of ids", name, lineno);
		size_t n = json_array_size(j), outlen;
		int32_t *ids = circ_xmalloc((n ? n : 1) * sizeof *ids);
		for (size_t i = 0; i < n; i++) {
			json_t *v = json_array_get(j, i);
			if (!json_is_integer(v) || json_integer_value(v) < 0 ||
			    json_integer_value(v) > INT32_MAX)
				circ_dief("'%s': line %ld: item %zu is not a token id", name,
					  lineno, i);
			ids[i] = (int32_t)json_integer_value(v);
		}
		char *text = circ_bpe_decode(b, ids, n, &outlen, &e);
		if (!text)
			circ_dief("'%s': line %ld: %s", name, lineno, e.msg);
		print_json_bytes(text, outlen);
		free(text);
		free(ids);
		json_decref(j);
	}
	if (ferror(in))
		circ_dief("'%s': read error: %s", name, strerror(errno));
	free(line);
}

/* ------------------------------------------------------------ dataset */

typedef struct example {
	long line; /* 0-based line index: the record's "id" */
	circ_ids clean, corrupt, pos, answer, wrong;
	int pos_list; /* "pos" was an array: one answer per position */
	json_t *meta;
} example;

static void free_example(example *x)
{
	circ_ids_free(&x->clean);
	circ_ids_free(&x->corrupt);
	circ_ids_free(&x->pos);
	circ_ids_free(&x->answer);
	circ_ids_free(&x->wrong);
	json_decref(x->meta);
}

/* Reads a whole input into memory. */
static char *slurp(FILE *in, const char *name, size_t *len)
{
	size_t n = 0, cap = 1 << 16;
	char *buf = circ_xmalloc(cap + 1);
	for (;;) {
		size_t got = fread(buf + n, 1, cap - n, in);
		n += got;
		if (n == cap) {
			cap *= 2;
			buf = circ_xrealloc(buf, cap + 1);
		} else if (got == 0)
			break;
	}
	if (ferror(in))
		circ_dief("'%s': read error: %s", name, strerror(errno));
	buf[n] = 0;
	*len = n;
	return buf;
}

/* Context for errors: "'<file>': line N: ". */
static const char *ds_name;
static long ds_line;

#define LINE_FAIL(...)                                                                             \
	do {                                                                                       \
		fprintf(stderr, "%s: '%s': line %ld: ", circ_progname, ds_name, ds_line);          \
		fprintf(stderr, __VA_ARGS__);                                                      \
		fputc('\n', stderr);                                                               \
		exit(1);                                                                           \
	} while (0)

/* Refuses an id at or above the vocabulary size (what names the field or
 * the item in the message). */
static void check_size(const char *what, int64_t id)
{
	if (vsize && id >= vsize)
		LINE_FAIL("%s: id %lld is not below the vocab size %lld (%s)", what, (long long)id,
			  (long long)vsize, vsize_src);
}

/* The tokenizer, loaded now if --model-dir names one; a usage error naming
 * the field when no directory was given. */
static circ_bpe *need_tokenizer(const char *key)
{
	circ_error e;
	if (tok)
		return tok;
	if (!o.model_dir) {
		fprintf(stderr,
			"%s: '%s': line %ld: field '%s' is text: give --vocab-dir DIR to "
			"tokenize it\n",
			circ_progname, ds_name, ds_line, key);
		exit(2);
	}
	if (!(tok = circ_bpe_load_dir(o.model_dir, &e)))
		circ_die(&e);
	return tok;
}

/* An id list field: an array of integers, each below the vocabulary size
 * and a token of the vocabulary when there is one. */
static void get_ids(json_t *ex, const char *key, const circ_bpe *b, circ_ids *out, int allow_int)
{
	json_t *v = json_object_get(ex, key);
	size_t l;
	if (allow_int && json_is_integer(v)) {
		json_t *one = json_array();
		json_array_append(one, v);
		v = one;
	} else {
		json_incref(v);
	}
	if (!json_is_array(v))
		LINE_FAIL("field '%s' must be an array of token ids", key);
	for (size_t i = 0; i < json_array_size(v); i++) {
		json_t *x = json_array_get(v, i);
		json_int_t id = json_integer_value(x);
		char what[64];
		if (!json_is_integer(x) || id < 0 || id > INT32_MAX)
			LINE_FAIL("field '%s': item %zu is not a token id", key, i);
		snprintf(what, sizeof what, "field '%s': item %zu", key, i);
		check_size(what, id);
		if (b && !circ_bpe_token_bytes(b, (int32_t)id, &l))
			LINE_FAIL("field '%s': item %zu is not a token id of this vocabulary", key,
				  i);
		circ_ids_push(out, (int32_t)id);
	}
	json_decref(v);
}

/* An answer field: a string or an array of strings, each one token. */
static void get_answers(json_t *ex, const char *key, circ_ids *out)
{
	json_t *v = json_object_get(ex, key);
	circ_bpe *b = need_tokenizer(key);
	size_t n = json_is_array(v) ? json_array_size(v) : 1;
	for (size_t i = 0; i < n; i++) {
		json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
		circ_ids ids = {0};
		circ_error e;
		if (!json_is_string(s))
			LINE_FAIL("field '%s' must be a string or an array of strings", key);
		if (circ_bpe_encode_after(b, json_string_value(s), json_string_length(s),
					  o.special ? CIRC_BPE_SPECIAL : 0, &ids, &e) < 0)
			LINE_FAIL("field '%s': %s", key, e.msg);
		if (ids.n != 1) {
			char list[256] = "";
			size_t k = 0;
			for (size_t t = 0; t < ids.n && k < sizeof list - 16; t++)
				k += (size_t)snprintf(list + k, sizeof list - k, "%s%d",
						      t ? ", " : "", (int)ids.v[t]);
			LINE_FAIL("%s '%s' is %zu tokens ([%s]), not 1", key, json_string_value(s),
				  ids.n, list);
		}
		char what[64];
		snprintf(what, sizeof what, "field '%s'", key);
		check_size(what, ids.v[0]);
		circ_ids_push(out, ids.v[0]);
		circ_ids_free(&ids);
	}
}

static void encode_prompt(json_t *ex, const char *key, circ_ids *out)
{
	json_t *v = json_object_get(ex, key);
	circ_error e;
	size_t from = out->n;
	if (!json_is_string(v))
		LINE_FAIL("field '%s' must be a string", key);
	if (circ_bpe_encode(need_tokenizer(key), json_string_value(v), json_string_length(v),
			    o.special ? CIRC_BPE_SPECIAL : 0, out, &e) < 0)
		LINE_FAIL("field '%s': %s", key, e.msg);
	char what[64];
	snprintf(what, sizeof what, "field '%s'", key);
	for (size_t i = from; i < out->n; i++)
		check_size(what, out->v[i]);
}

/* Agrees a per-line string field (task, metric) with the value so far. */
static void agree(json_t *ex, const char *key, const char *opt, const char **value, char **owned)
{
	json_t *v = json_object_get(ex, key);
	if (!v)
		return;
	if (!json_is_string(v))
		LINE_FAIL("field '%s' must be a string", key);
	const char *s = json_string_value(v);
	if (*value && strcmp(*value, s)) {
		if (opt)
			LINE_FAIL("%s '%s' differs from %s '%s'", key, s, opt, *value);
		LINE_FAIL("%s '%s' differs from '%s' on earlier lines", key, s, *value);
	}
	if (!*value) {
		*owned = circ_xstrdup(s);
		*value = *owned;
	}
}

/* Parses and tokenises one dataset line. Returns 0, or 1 when the pair is
 * misaligned and --skip-misaligned is on. */
static int parse_example(json_t *ex, const char *metric, example *x)
{
	int32_t bos = bos_id();
	if (json_object_get(ex, "clean_ids") || json_object_get(ex, "corrupt_ids")) {
		if (!json_object_get(ex, "clean_ids"))
			LINE_FAIL("missing field 'clean_ids'");
		if (!json_object_get(ex, "corrupt_ids"))
			LINE_FAIL("missing field 'corrupt_ids'");
		if (o.bos) {
			circ_ids_push(&x->clean, bos);
			circ_ids_push(&x->corrupt, bos);
		}
		get_ids(ex, "clean_ids", tok, &x->clean, 0);
		get_ids(ex, "corrupt_ids", tok, &x->corrupt, 0);
	} else {
		if (!json_object_get(ex, "clean"))
			LINE_FAIL("missing field 'clean'");
		if (!json_object_get(ex, "corrupt"))
			LINE_FAIL("missing field 'corrupt'");
		if (o.bos) {
			circ_ids_push(&x->clean, bos);
			circ_ids_push(&x->corrupt, bos);
		}
		encode_prompt(ex, "clean", &x->clean);
		encode_prompt(ex, "corrupt", &x->corrupt);
	}
	if (x->clean.n == (size_t)o.bos)
		LINE_FAIL("clean prompt is empty");
	if (x->clean.n != x->corrupt.n) {
		if (o.skip_misaligned)
			return 1;
		LINE_FAIL("clean and corrupt tokenize to different lengths (%zu and %zu)",
			  x->clean.n, x->corrupt.n);
	}
	/* answers */
	int need_answer = strcmp(metric, "kl") != 0;
	int need_wrong = !strcmp(metric, "logit_diff") || !strcmp(metric, "prob_diff");
	if (json_object_get(ex, "answer_ids"))
		get_ids(ex, "answer_ids", tok, &x->answer, 1);
	else if (json_object_get(ex, "answer"))
		get_answers(ex, "answer", &x->answer);
	else if (need_answer)
		LINE_FAIL("missing field 'answer'");
	if (json_object_get(ex, "wrong_ids"))
		get_ids(ex, "wrong_ids", tok, &x->wrong, 1);
	else if (json_object_get(ex, "wrong"))
		get_answers(ex, "wrong", &x->wrong);
	else if (need_wrong)
		LINE_FAIL("missing field 'wrong' (metric %s needs wrong answers)", metric);
	if (need_answer && !x->answer.n)
		LINE_FAIL("field 'answer' is empty");
	/* positions */
	json_t *pos = json_object_get(ex, "pos");
	if (!pos) {
		circ_ids_push(&x->pos, (int32_t)x->clean.n - 1);
	} else {
		/* positions as the dataset counts them: 0..last, before --prepend-bos */
		size_t last = x->clean.n - 1 - (size_t)o.bos;
		if (!json_is_integer(pos) && !json_is_array(pos))
			LINE_FAIL("field 'pos' must be an integer or an array of integers");
		x->pos_list = json_is_array(pos);
		size_t n = x->pos_list ? json_array_size(pos) : 1;
		for (size_t i = 0; i < n; i++) {
			json_t *p = x->pos_list ? json_array_get(pos, i) : pos;
			char what[64] = "field 'pos'";
			if (x->pos_list)
				snprintf(what, sizeof what, "field 'pos': item %zu", i);
			if (!json_is_integer(p))
				LINE_FAIL("%s is not an integer", what);
			json_int_t v = json_integer_value(p);
			if (v < 0)
				LINE_FAIL("%s: %lld is negative (positions count from 0: 0..%zu)",
					  what, (long long)v, last);
			if ((uint64_t)v > last)
				LINE_FAIL("%s: %lld is not a position in 0..%zu", what,
					  (long long)v, last);
			circ_ids_push(&x->pos, (int32_t)v + o.bos);
		}
		if (!n)
			LINE_FAIL("field 'pos' is empty");
		if (x->pos_list && need_answer && x->answer.n != n)
			LINE_FAIL("%zu positions but %zu answers (one answer per position)", n,
				  x->answer.n);
	}
	json_t *meta = json_object_get(ex, "meta");
	if (meta && !json_is_object(meta))
		LINE_FAIL("field 'meta' must be an object");
	x->meta = json_incref(meta);
	return 0;
}

static void pack_ids(msgpack_packer *pk, const char *key, const circ_ids *ids)
{
	circ_pack_str(pk, key);
	msgpack_pack_array(pk, ids->n);
	for (size_t i = 0; i < ids->n; i++)
		msgpack_pack_int32(pk, ids->v[i]);
}

static void dataset_mode(FILE *in, const char *name, circ_cli *cli, int argc, char **argv)
{
	size_t len;
	char *data = slurp(in, name, &len), digest[72];
	circ_sha256 sha;
	circ_sha256_init(&sha);
	circ_sha256_update(&sha, data, len);
	circ_sha256_final_hex(&sha, digest);

	const char *task = o.task, *metric = o.metric;
	char *task_owned = NULL, *metric_owned = NULL;
	example *ex = NULL;
	size_t nex = 0, cap = 0, skipped = 0;
	int uniform = 1;
	ds_name = name;
	const char *tdir = o.vocab_dir ? o.vocab_dir : o.model_dir;
	if (!o.bos && !o.no_bos && tdir && has_tokenizer(tdir)) {
		/* a tokenizer whose post-processor adds a BOS gets it, as in Hugging Face */
		circ_error e;
		if (!tok && !(tok = circ_bpe_load_dir(tdir, &e)))
			circ_die(&e);
		o.bos = circ_bpe_bos(tok) >= 0;
	}
	if (o.bos) {
		circ_error e;
		if (!tok && !(tok = circ_bpe_load_dir(tdir, &e)))
			circ_die(&e);
		if (bos_id() < 0)
			circ_dief("'%s': --prepend-bos: the vocabulary has no BOS (no "
				  "post-processor's token, no <|endoftext|>)",
				  tdir);
		if (vsize && bos_id() >= vsize)
			circ_dief("--prepend-bos: the BOS (id %d) is not below the vocab size "
				  "%lld (%s)",
				  (int)bos_id(), (long long)vsize, vsize_src);
	}

	/* First pass over the lines: task and metric must agree. */
	char *p = data, *end = data + len;
	json_t **lines = NULL;
	long *lineno = NULL;
	size_t nlines = 0;
	for (ds_line = 1; p < end; ds_line++) {
		char *nl = memchr(p, '\n', (size_t)(end - p)), *eol = nl ? nl : end;
		size_t n = (size_t)(eol - p), k;
		for (k = 0; k < n && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r'); k++)
			;
		if (k < n) { /* blank lines are skipped */
			json_error_t je;
			json_t *j = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
			if (!j)
				LINE_FAIL("malformed JSON: %s", je.text);
			if (!json_is_object(j))
				LINE_FAIL("expected a JSON object, got %s",
					  json_is_array(j) ? "an array" : "a scalar");
			agree(j, "task", o.task ? "--task" : NULL, &task, &task_owned);
			agree(j, "metric", o.metric ? "--metric" : NULL, &metric, &metric_owned);
			lines = circ_xrealloc(lines, (nlines + 1) * sizeof *lines);
			lineno = circ_xrealloc(lineno, (nlines + 1) * sizeof *lineno);
			lines[nlines] = j;
			lineno[nlines++] = ds_line;
		}
		p = eol + (nl ? 1 : 0);
	}
	free(data);
	if (!task)
		task = "custom";
	if (!metric)
		metric = circ_task_metric(task) ? circ_task_metric(task) : "logit_diff";
	if (!valid_metric(metric)) {
		if (o.metric)
			circ_usage_error(
			    "option '--metric': '%s' is not logit_diff, prob_diff, logprob or kl",
			    metric);
		circ_dief("'%s': metric '%s' is not logit_diff, prob_diff, logprob or kl", name,
			  metric);
	}

	/* Second pass: tokenise. */
	for (size_t i = 0; i < nlines; i++) {
		example x = {0};
		ds_line = lineno[i];
		x.line = lineno[i] - 1;
		if (parse_example(lines[i], metric, &x)) {
			skipped++;
			free_example(&x);
		} else {
			if (nex == cap) {
				cap = cap ? 2 * cap : 64;
				ex = circ_xrealloc(ex, cap * sizeof *ex);
			}
			if (nex && x.clean.n != ex[0].clean.n)
				uniform = 0;
			ex[nex++] = x;
		}
		json_decref(lines[i]);
	}
	free(lines);
	free(lineno);
	if (skipped)
		fprintf(stderr, "%s: '%s': skipped %zu misaligned example%s of %zu\n",
			circ_progname, name, skipped, skipped == 1 ? "" : "s", skipped + nex);

	circ_error e;
	circ_writer *w = circ_writer_open(cli->output, &cli->wopts, &e);
	if (!w)
		circ_die(&e);
	msgpack_packer *pk;
	/* The vocabulary's digest when there is one; its size when some option
	 * or the tokenizer says it (ids alone say nothing of the model's). */
	int64_t stamp = vsize ? vsize : tok ? circ_bpe_vocab_size(tok) : 0;
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "task", task),
	    CIRC_HDR(STR, "metric", metric),
	    CIRC_HDR_IF(tok, STR, "vocab_digest", tok ? circ_bpe_digest(tok) : NULL),
	    CIRC_HDR(STR, "dataset_digest", digest),
	    CIRC_HDR(I64, "n_examples", (int64_t)nex),
	    CIRC_HDR(I64, "n_skipped", (int64_t)skipped),
	    CIRC_HDR_IF(stamp, I64, "vocab_size", stamp),
	    CIRC_HDR(BOOL, "prepend_bos", o.bos),
	    CIRC_HDR_IF(o.bos, I64, "bos_id", (int64_t)bos_id()),
	    CIRC_HDR_IF(uniform && nex, I64, "seq_len", nex ? (int64_t)ex[0].clean.n : 0),
	};
	if (circ_writer_header_fields(w, "tokens", argc, argv, NULL, 0, f, CIRC_HDR_N(f), &e) < 0)
		goto fail;
	for (size_t i = 0; i < nex; i++) {
		example *x = &ex[i];
		int64_t T = (int64_t)x->clean.n;
		pk = circ_writer_packer(w);
		msgpack_pack_map(pk, x->meta ? 7 : 6);
		circ_pack_kv_i64(pk, "id", x->line);
		circ_pack_kv_tensor(pk, "clean", CIRC_I32, 1, &T, x->clean.v);
		circ_pack_kv_tensor(pk, "corrupt", CIRC_I32, 1, &T, x->corrupt.v);
		if (x->pos_list)
			pack_ids(pk, "pos", &x->pos);
		else
			circ_pack_kv_i64(pk, "pos", x->pos.v[0]);
		pack_ids(pk, "answer", &x->answer);
		pack_ids(pk, "wrong", &x->wrong);
		if (x->meta) {
			circ_pack_str(pk, "meta");
			if (circ_json_to_msgpack(x->meta, pk, &e) < 0)
				goto fail;
		}
		if (circ_writer_end_record(w, &e) < 0)
			goto fail;
		free_example(x);
	}
	free(ex);
	free(task_owned);
	free(metric_owned);
	if (circ_writer_close(w, &e) < 0)
		circ_die(&e);
	return;
fail:
	circ_writer_abort(w);
	circ_die(&e);
}

/* 1 if dir holds tokenizer files (what circ_bpe_load_dir looks for). */
static int has_tokenizer(const char *dir)
{
	static const char *files[] = {"vocab.json", "merges.txt", "tokenizer.json"};
	char path[4200];
	struct stat st;
	for (int i = 0; i < 3; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, files[i]);
		if (stat(path, &st) == 0)
			return 1;
	}
	return 0;
}

/* The vocabulary size ids are checked against: --vocab-size, else the
 * model directory's config.json (they must agree when both are given). */
static void find_vocab_size(void)
{
	char path[4200];
	struct stat st;
	circ_config c;
	circ_error e;
	if (o.model_dir) {
		snprintf(path, sizeof path, "%s/config.json", o.model_dir);
		if (stat(path, &st) == 0) {
			if (circ_config_load(path, &c, &e) < 0)
				circ_die(&e);
			if (o.vocab_size && o.vocab_size != c.vocab_size)
				circ_usage_error("option '--vocab-size': %lld differs from "
						 "vocab_size %d in '%s'",
						 (long long)o.vocab_size, c.vocab_size, path);
			vsize = c.vocab_size;
			snprintf(vsize_src, sizeof vsize_src, "'%s'", path);
		}
	}
	if (o.vocab_size) {
		vsize = o.vocab_size;
		snprintf(vsize_src, sizeof vsize_src, "--vocab-size");
	}
}

int main(int argc, char **argv)
{
	circ_cli cli = {"[--vocab-dir DIR | --model-dir DIR] [options] [file]",
			"Tokenize a dataset of prompt pairs (or plain text) with GPT-2's BPE or a "
			"tokenizer.json (Llama, Qwen, Gemma, Mistral, Pythia, OLMo).",
			opts, 1};
	circ_writer_opts wdef;
	circ_error e;
	const char *name;
	int i;

	circ_init("circ-tokenize");
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	circ_writer_opts_default(&wdef);
	if (argc - i > 1)
		circ_usage_error("expected at most one input file, got %d", argc - i);
	if (o.text && o.decode)
		circ_usage_error("--text and --decode cannot be combined (one mode at a time)");
	if ((o.text || o.decode) && !o.vocab_dir && !o.model_dir)
		circ_usage_error(
		    "no vocabulary: give --vocab-dir DIR (e.g. fixtures/gpt2-tokenizer)");
	if (o.decode && o.special)
		circ_usage_error("--special applies to text (--text and dataset mode), not to "
				 "--decode");
	if ((o.text || o.decode) && o.dataset_only)
		circ_usage_error("--prepend-bos, --no-bos, --task, --metric, --vocab-size and "
				 "--skip-misaligned apply to dataset mode only");
	if (o.bos && o.no_bos)
		circ_usage_error("--prepend-bos and --no-bos cannot be combined");
	if ((o.text || o.decode) && strcmp(cli.output, "-"))
		circ_usage_error("--output applies to dataset mode only (redirect stdout instead)");
	if ((o.text || o.decode) &&
	    (cli.wopts.compress != wdef.compress || cli.wopts.level != wdef.level ||
	     cli.wopts.force != wdef.force))
		circ_usage_error(
		    "--no-compress, --compress-level and --force apply to dataset mode "
		    "only (text and decode modes write text)");
	if (o.bos && !o.vocab_dir && !o.model_dir)
		circ_usage_error("--prepend-bos needs the tokenizer's <|endoftext|>: give "
				 "--vocab-dir DIR");
	if (o.metric && !valid_metric(o.metric))
		circ_usage_error(
		    "option '--metric': '%s' is not logit_diff, prob_diff, logprob or kl",
		    o.metric);
	/* A tokenizer named is loaded now, so a bad one fails before any input
	 * is read; dataset mode with ids alone needs none. */
	const char *dir = o.vocab_dir ? o.vocab_dir : o.model_dir;
	if (dir && (o.vocab_dir || o.text || o.decode || has_tokenizer(dir)) &&
	    !(tok = circ_bpe_load_dir(dir, &e)))
		circ_die(&e);
	FILE *in = open_input(i < argc ? argv[i] : "-", &name);
	if (o.text || o.decode) {
		static char obuf[1 << 16];
		setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
		if (o.decode)
			decode_mode(tok, in, name, cli.wopts.json);
		else
			text_mode(tok, in, name, cli.wopts.json);
		close_stdout();
	} else {
		find_vocab_size();
		dataset_mode(in, name, &cli, argc, argv);
	}
	if (in != stdin)
		fclose(in);
	circ_bpe_free(tok);
	return 0;
}
