/*
 * batch: the examples of a task as the discovery tools use them — a clean
 * prompt, its corrupted counterpart, the positions read, the answer and the
 * wrong answer — parsed from a token stream (circ-tokenize) and gathered
 * into batches of equal length; and each example's metric read from a
 * batch's logits rows (the arithmetic is lib/metric's, per example: see
 * circ_metric_example for how answers pair with read positions).
 *
 * Layering: uses util, stream and metric; used by patch, attrib and the
 * tools.
 */
#ifndef CIRC_BATCH_H
#define CIRC_BATCH_H

#include <msgpack.h>
#include <stdint.h>

#include "metric.h"
#include "stream.h"

/* One example. Arrays are owned (circ_batch_example_free). */
typedef struct circ_example {
	int64_t id;
	int T;
	int32_t *clean;	  /* (T) */
	int32_t *corrupt; /* (T) */
	int npos;
	int32_t *pos; /* (npos) read positions, each < T */
	int nans, nwrong;
	int32_t *ans;	/* (nans) */
	int32_t *wrong; /* (nwrong) */
} circ_example;

/* Parses a tokens record. vocab and n_ctx bound ids and length (0: no
 * check). Errors name the field: "field 'clean': token 50300 at position 3 is
 * outside the vocabulary (50257 tokens)", "... 1100 tokens, longer than the
 * model's context (1024)". The metric decides which answers an example
 * needs (see circ_metric_example). */
int circ_batch_parse_example(const msgpack_object *rec, circ_metric_kind metric, int vocab,
			     int n_ctx, circ_example *ex, circ_error *e);
void circ_batch_example_free(circ_example *ex);

/* Metric kind from a tokens header ("metric"); logit_diff for the generic
 * header of headerless JSON lines (kind "records"); -1 with a message if
 * absent or unknown. */
int circ_batch_metric_from_header(const msgpack_object *hdr, circ_metric_kind *k, circ_error *e);

/* A token stream made with another tokenizer than the model's is refused:
 * the header's "vocab_digest" (if any) must equal the digest of the model
 * directory's tokenizer files, computed as circ-tokenize does (vocab.json
 * then merges.txt, else tokenizer.json; a directory without them has
 * nothing to compare). -1 with "'<file>': header: vocab_digest ... differs
 * from the model's tokenizer files in '<dir>' (...)", or on a read error.
 * Every tool that runs a model on tokens calls it. */
int circ_batch_check_vocab(const circ_reader *r, const char *model_dir, circ_error *e);

/* Reads examples from a token stream into batches of up to max_b examples
 * of equal length (a batch ends where the length changes: keep a dataset's
 * lengths grouped for speed). Under the generic header of headerless JSON
 * lines an example without "id" gets its 0-based line index. The number
 * of records of each (concatenated) stream must equal its header's
 * "n_examples" where declared: checked at its end. */
typedef struct circ_batch {
	int B, T;
	circ_example *ex;	  /* (B) */
	int32_t *clean;		  /* (B, T) */
	int32_t *corrupt;	  /* (B, T) */
	int n_read;		  /* sum of npos */
	int32_t *read_b, *read_t; /* (n_read) rows: example b, position t */
	int *row0;		  /* (B) first read row of each example */
} circ_batch;

typedef struct circ_batch_reader circ_batch_reader;
circ_batch_reader *circ_batch_reader_new(circ_reader *r, circ_metric_kind metric, int vocab,
					 int n_ctx, int max_b);
/* Next batch: 1 (valid until the next call), 0 at end, -1 with a message
 * naming the file and record. */
int circ_batch_reader_next(circ_batch_reader *bt, circ_batch **b, circ_error *e);
int64_t circ_batch_reader_count(const circ_batch_reader *bt); /* examples read so far */
/* A limit on batches beyond max_b: fit(ctx, B, T, n_read) says whether a
 * batch of B examples of T tokens reading n_read positions in all may be
 * formed (one example always may); a batch ends before the example that
 * would make it not fit. For memory budgets. */
typedef int (*circ_batch_fit_fn)(void *ctx, int B, int T, int n_read);
void circ_batch_reader_set_fit(circ_batch_reader *bt, circ_batch_fit_fn fit, void *ctx);
void circ_batch_reader_free(circ_batch_reader *bt);

/* A deep copy of a batch that outlives the batcher's next call (ACDC keeps
 * every batch of the dataset); free with circ_batch_free. */
circ_batch *circ_batch_clone(const circ_batch *b);
void circ_batch_free(circ_batch *b); /* NULL is a no-op */

/* Metric of example b of the batch from the logits rows of its reads
 * (rows row0[b] .. row0[b]+npos-1 of `logits`, (N, V)): circ_metric_example
 * on those rows. clean_logp is the clean log-softmax at the same rows (kl
 * only; else may be NULL). When dlogits is not NULL, writes d metric / d
 * logits into the same rows of dlogits (N, V) (other rows untouched).
 * Returns the metric. */
double circ_batch_metric(circ_metric_kind k, const circ_batch *bt, int b, const float *logits,
			 const float *clean_logp, int V, float *dlogits);
/* 1 if the top-1 token (circ_metric_argmax) at the example's first read row is
 * its first answer; 0 if it has no answer. */
int circ_batch_correct(const circ_batch *bt, int b, const float *logits, int V);

#endif
