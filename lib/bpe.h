/*
 * bpe: GPT-2's byte-level byte-pair encoding, exact; and Hugging Face
 * tokenizer.json BPE as Llama 2, Llama 3, Llama 3.1, Qwen 3 and Gemma 3 ship
 * it (below, after GPT-2's rules).
 *
 * Encoding is three steps, each as GPT-2 defines it:
 *  1. Pre-tokenisation splits the text into pieces with GPT-2's pattern
 *       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *     implemented by hand (no regex engine) over Unicode general categories
 *     from utf8proc: \p{L} = Lu Ll Lt Lm Lo, \p{N} = Nd Nl No, and \s is
 *     ECMAScript's whitespace (the reference js-tiktoken runs this pattern
 *     in JavaScript): U+0009-000D, U+0020, U+00A0, U+1680, U+2000-200A,
 *     U+2028, U+2029, U+202F, U+205F, U+3000, U+FEFF. Contractions are
 *     lower-case ASCII only, as in the pattern. Bytes that are not valid
 *     UTF-8 are kept: each is one character of the "other" class
 *     ([^\s\p{L}\p{N}]), so they join runs of punctuation and encode as
 *     their byte tokens; decoding gives the same bytes back.
 *  2. Each piece's bytes become the byte tokens of GPT-2's byte-to-unicode
 *     table.
 *  3. Adjacent pairs are merged by rank (line order of merges.txt), lowest
 *     rank first, leftmost first among equal ranks, until no pair of the
 *     merge list is adjacent.
 * The special token <|endoftext|> (and the special added_tokens of a
 * tokenizer.json) are recognised in text only when CIRC_BPE_SPECIAL is
 * passed; otherwise "<|endoftext|>" is encoded as ordinary text.
 *
 * Speed: a bounded cache maps recent pieces to their ids; pieces of up to
 * 64 bytes merge with a linear scan, longer ones in place with a tree over
 * blocks of pair ranks (O(n log n)), so a long run without spaces stays
 * fast. Memory: a piece is merged whole (BPE's result depends on all of
 * it), at about 9 bytes per byte of the piece (9.5 at most: the bytes,
 * 4 for the token ids and 4 for the pair ranks, and the tree); the ranks
 * are freed before the ids are copied out. Pieces are below 2^31 bytes. circ_bpe_encode_ref is the
 * plain reference twin (literal regex semantics over a code point array, naive merges, no cache)
 * that the unit test compares against.
 *
 * A circ_bpe is not thread-safe while encoding (the cache is shared): use
 * one per thread. Loading and decoding only read it.
 */
/*
 * tokenizer.json: encoding follows the Hugging Face tokenizers library (the
 * tests compare with @huggingface/tokenizers, its JavaScript port):
 *  0. Added tokens are found first (the earliest, then the longest): special
 *     ones only with CIRC_BPE_SPECIAL, the others always; lstrip and rstrip
 *     take the White_Space before and after them, single_word drops a match
 *     a word character touches (Hugging Face's added_vocabulary.rs; not
 *     tokenizers.js, which trims ECMAScript's white space and ignores
 *     single_word). With a normalizer, tokens with "normalized" true are
 *     found in step 1's output instead, within each text, by their
 *     normalized text (GPT-NeoX's runs of spaces).
 *  1. Each text between them is normalized: NFC (Qwen), or Prepend "▁" and
 *     Replace " " by "▁" (SentencePiece style: Llama 2, Gemma 3), and with
 *     the Metaspace pre-tokenizer the same (prepend_scheme always, first,
 *     never). Such texts are encoded whole: streaming waits for the next
 *     added token or the end.
 *  2. Pre-tokenization: GPT-2's pattern (ByteLevel), Llama 3's or Qwen 2's
 *     pattern (Split, Isolated, then ByteLevel; \s is Unicode's White_Space,
 *     contractions in either ASCII case), or none (the text is one piece).
 *  3. Merges as in 3. above, over byte tokens (ByteLevel) or over characters
 *     (SentencePiece style, vocabulary text as is) whose missing ones become
 *     their <0xNN> byte tokens (byte_fallback) or unk_token (runs fused with
 *     fuse_unk); with ignore_merges a piece that is a token is that token.
 * TemplateProcessing's token before the text is the BOS (circ_bpe_bos);
 * encoding never adds it. Decoding gives "▁" as a space and <0xNN> as its
 * byte. circ_bpe_encode_ref covers GPT-2's pattern and tokenizers without
 * a pre-tokenizer; it fails on Llama 3's pattern, and knows neither
 * single_word nor tokens matched in normalized text.
 */
#ifndef CIRC_BPE_H
#define CIRC_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct circ_bpe circ_bpe;

/* A growable array of token ids. Zero-initialise; free with circ_ids_free. */
typedef struct circ_ids {
	int32_t *v;
	size_t n, cap;
} circ_ids;
void circ_ids_push(circ_ids *a, int32_t id);
void circ_ids_free(circ_ids *a);

/* Flags for encoding. */
enum {
	CIRC_BPE_SPECIAL = 1 /* text "<|endoftext|>" (and other specials) -> its id */
};

/* Loads a Hugging Face tokenizer directory: tokenizer.json when it is
 * there, else vocab.json + merges.txt. Fails (NULL, message naming the
 * file) when neither is there, a file cannot be read or parsed (repeated
 * JSON keys included), an id is negative or repeated, an id is far beyond
 * the number of tokens named (at least 2 x (vocabulary + added tokens) +
 * 1024: the table indexed by id is sized from it), an added token is
 * empty or holds NUL, or vocabulary and merges disagree (a merge whose
 * parts or result are not in the vocabulary). */
circ_bpe *circ_bpe_load_dir(const char *dir, circ_error *e);
/* Loads the two GPT-2 files given by path. Same failures. */
circ_bpe *circ_bpe_load_files(const char *vocab_json, const char *merges_txt, circ_error *e);
/* Loads a tokenizer.json (see "tokenizer.json" above). Components circ
 * does not implement fail, the message naming the file, the JSON path and
 * what is supported. */
circ_bpe *circ_bpe_load_tokenizer_json(const char *path, circ_error *e);
/* Which reader parses model.vocab and model.merges (and vocab.json):
 * ANY, the default, reads them straight from the bytes (a strict reader of
 * the JSON those parts hold, no tree built) and leaves the rest of the
 * file to jansson; where it gives up (anything it does not read, every
 * malformed file) jansson reads the whole file, and its messages are the
 * ones given. JANSSON is jansson alone, the reference; FAST the fast
 * reader alone, failing where it gives up (for tests). The tokenizers
 * loaded are the same (circ_bpe_same). */
typedef enum { CIRC_BPE_READ_ANY, CIRC_BPE_READ_JANSSON, CIRC_BPE_READ_FAST } circ_bpe_reader;
circ_bpe *circ_bpe_load_tokenizer_json_with(const char *path, circ_bpe_reader reader,
					    circ_error *e);
circ_bpe *circ_bpe_load_files_with(const char *vocab_json, const char *merges_txt,
				   circ_bpe_reader reader, circ_error *e);
/* 1 if a and b hold the same tokenizer: components, vocabulary, merges,
 * added tokens, digest. Otherwise 0 and what differs first in why (may be
 * NULL). */
int circ_bpe_same(const circ_bpe *a, const circ_bpe *b, char *why, size_t why_len);
/* Frees; NULL is a no-op. */
void circ_bpe_free(circ_bpe *b);

/* Largest id + 1 (50257 for GPT-2). */
int32_t circ_bpe_vocab_size(const circ_bpe *b);
/* Number of merges (50000 for GPT-2). */
int32_t circ_bpe_n_merges(const circ_bpe *b);
/* "sha256:..." over the files as read: vocab.json then merges.txt, or
 * tokenizer.json. Identifies the vocabulary in stream headers. */
const char *circ_bpe_digest(const circ_bpe *b);
/* Id of <|endoftext|>, or -1 if the vocabulary has none. */
int32_t circ_bpe_eot(const circ_bpe *b);
/* The id the tokenizer puts before a text (TemplateProcessing's token
 * before $A in tokenizer.json, e.g. Llama 3.1's <|begin_of_text|>), or -1
 * when it puts none. Encoding never adds it: callers do. */
int32_t circ_bpe_bos(const circ_bpe *b);
/* The bytes of token id (raw bytes, not the byte-to-unicode form); NULL
 * for an id the vocabulary does not have. */
const unsigned char *circ_bpe_token_bytes(const circ_bpe *b, int32_t id, size_t *len);

/* Appends the ids of text[0..n) to out. Fails only when a byte has no
 * token in the vocabulary (never for GPT-2's, which has all 256) or a
 * piece is 2^31 bytes or longer. */
int circ_bpe_encode(circ_bpe *b, const char *text, size_t n, int flags, circ_ids *out,
		    circ_error *e);
/* The ids text[0..n) takes when it follows other text (an answer after its
 * prompt): those of "a" + text less those of "a" when they are a prefix
 * (so SentencePiece's prepended "\u2581" is not counted twice: " Mary" is
 * "\u2581Mary", not "\u2581" "\u2581Mary"), else those of text alone. */
int circ_bpe_encode_after(circ_bpe *b, const char *text, size_t n, int flags, circ_ids *out,
			  circ_error *e);
/* The reference twin of circ_bpe_encode: same contract, slow and plain. */
int circ_bpe_encode_ref(const circ_bpe *b, const char *text, size_t n, int flags, circ_ids *out,
			circ_error *e);
/* The id of text if it encodes to exactly one token, else -1 (also when it
 * cannot be encoded). Used to check that answers are single tokens. */
int32_t circ_bpe_single(circ_bpe *b, const char *text, size_t n);
/* Decodes ids into a new heap buffer of *len bytes (NUL-terminated for
 * convenience; the bytes may contain NUL and need not be valid UTF-8).
 * Fails on an id the vocabulary does not have, naming its index. */
char *circ_bpe_decode(const circ_bpe *b, const int32_t *ids, size_t n, size_t *len, circ_error *e);
/* One token's text for display in a new heap string: b's decoding of id,
 * or the id in decimal when b is NULL or has no such id. */
char *circ_bpe_token_text(const circ_bpe *b, int32_t id);

/* Streaming encoder: feed text in chunks of any size (cut anywhere, even
 * inside a UTF-8 character or a special token); ids are appended to out as
 * soon as their piece is complete. Memory is bounded by the longest piece
 * (about 10 bytes per byte of it, see Speed above), not by the input. circ_bpe_stream_finish ends
 * the text (and may be followed by more feeding, for a new text). The ids equal those of
 * circ_bpe_encode on the concatenated chunks. */
typedef struct circ_bpe_stream circ_bpe_stream;
circ_bpe_stream *circ_bpe_stream_new(circ_bpe *b, int flags);
int circ_bpe_stream_feed(circ_bpe_stream *s, const char *buf, size_t n, circ_ids *out,
			 circ_error *e);
int circ_bpe_stream_finish(circ_bpe_stream *s, circ_ids *out, circ_error *e);
void circ_bpe_stream_free(circ_bpe_stream *s);

/* Pre-tokenisation step alone: the end of the piece that starts at
 * text[pos] (pos < n). Returns 1 and sets *end; returns 0 when the piece
 * could continue past n and eof is 0 (more input needed). */
int circ_bpe_pretok_next(const unsigned char *text, size_t n, size_t pos, int eof, size_t *end);

/* Sets the piece cache's capacity in entries (rounded up to a power of
 * two, at least 16; 0 disables the cache). For tests and benchmarks. */
void circ_bpe_set_cache(circ_bpe *b, size_t entries);

#endif
