/*
 * tasks: generators of the reference task datasets (IOI, greater-than,
 * induction, docstring, subject-verb agreement) as dataset JSON lines,
 * deterministic from a seed.
 *
 * Each example is one JSON object (the input of circ-tokenize):
 *   {"task", "clean", "corrupt", "answer", "wrong", "metric", "meta"}
 * with strings for prompts and answers, or for token-level tasks
 * (induction) {"task", "clean_ids", "corrupt_ids", "pos", "answer_ids",
 * "wrong_ids", "metric", "meta"}. The recipes (which draws, in which order)
 * are documented in man/circ-dataset.1 and fixed: the same options and seed
 * give the same bytes, and the first k examples of a run with --n N > k
 * equal those of --n k.
 *
 * The data lists (names, places, objects, templates, nouns, variable names)
 * are compiled in; they are copies of the JSON files in fixtures/tasks (the unit test
 * checks the two agree). With a vocabulary, list entries that would not be
 * single tokens in their position (" Name") are dropped first, so the
 * generators also work with small trained vocabularies; without one the
 * lists are used as they are (they were chosen for GPT-2).
 *
 * Randomness comes from lib/rng (xoshiro256** seeded by splitmix64).
 */
#ifndef CIRC_TASKS_H
#define CIRC_TASKS_H

#include <stddef.h>
#include <stdint.h>

#include "bpe.h"
#include "util.h"

typedef struct circ_task_opts {
	const char *task; /* "ioi", "greater-than", "induction", "docstring", "sva" */
	int64_t n;	  /* number of examples (>= 0) */
	uint64_t seed;
	circ_bpe *bpe; /* vocabulary for single-token checks, or NULL */
	/* ioi */
	const char *ioi_order; /* "mixed" (default), "baba" or "abba" */
	int ioi_templates;     /* use the first K templates of each order; 0 = all */
	/* greater-than (needs bpe) */
	int gt_century_lo, gt_century_hi; /* inclusive; default 11..17 */
	/* induction */
	int ind_len; /* length of the sequence that is repeated (default 16) */
	int32_t ind_vocab_lo, ind_vocab_hi; /* ids drawn from [lo, hi); default 1000, 20000 */
	/* sva */
	const char *sva_template; /* "simple", "within-rc", "across-rc", "across-pp" or
				   * "all" (default, NULL: all) */
	/* Told what the generator dropped or changed for the vocabulary (list
	 * entries that are not single tokens, the greater-than variant), one
	 * message a call; NULL: not told. */
	void (*note)(const char *msg, void *note_ctx);
	void *note_ctx;
} circ_task_opts;

/* Fills the defaults above (task NULL, n 100, seed 0). */
void circ_task_opts_default(circ_task_opts *o);

/* Called once per example with the JSON line (no newline, NUL-terminated).
 * Returns 0, or -1 to stop (after filling e). */
typedef int (*circ_task_emit)(const char *line, size_t len, void *ctx, circ_error *e);

/* Generates o->n examples of o->task. Fails on an unknown task or order,
 * options out of range, too few single-token list entries for the
 * vocabulary, greater-than without a vocabulary or with no valid year (or
 * a tokenizer that writes numbers in none of the ways it knows), an
 * SVA pair that tokenizes to different lengths (clean vs corrupt), or when
 * emit fails. */
int circ_task_generate(const circ_task_opts *o, circ_task_emit emit, void *ctx, circ_error *e);

/* The metric a task's examples name ("logit_diff", "prob_diff",
 * "logprob"); NULL for an unknown task. */
const char *circ_task_metric(const char *task);

/* A compiled-in list by name, for tests and tools: "ioi.names",
 * "ioi.places", "ioi.objects", "ioi.baba_templates", "ioi.abba_templates",
 * "greater-than.nouns", "docstring.variable_names", "docstring.nouns",
 * "sva.templates", "sva.prepositions".
 * NULL for an unknown name. */
const char *const *circ_task_list(const char *name, size_t *n);

#endif
