/*
 * session: what the model tools (circ-score, circ-patch, circ-harvest,
 * circ-prune --acdc; circ-forward without the patching options and the
 * patcher) open before their read loop and check after it, in one
 * order and with one set of messages: the model (--model, digested) and its
 * graph, the token stream (its vocabulary checked against the model's), the
 * patcher and its means, the output stream, and the batches with progress.
 * Each step exits with the message on error (it is cmd/'s side: lib/ returns
 * errors as values), so a tool's main reads as options, open, loop, close.
 *
 * A session starts zeroed (`circ_session s = {0};`) and is freed by
 * circ_session_free; every field below may be read by the tool.
 */
#ifndef CIRC_CLI_SESSION_H
#define CIRC_CLI_SESSION_H

#include "attrib.h"
#include "batch.h"
#include "patchopt.h"

typedef struct circ_session {
	circ_patch_cli *pc;	  /* the options (circ_patch_cli_check'ed), or NULL */
	const char *model_dir;	  /* the model's directory (--model) */
	circ_model *m;		  /* --model */
	const circ_config *c;	  /* m's configuration */
	const char *model_digest; /* "sha256:..." of m's weights */
	circ_graph *g;		  /* the model's graph at --level/--convention, or NULL */
	const char *input;	  /* the token stream's path ("-": standard input) */
	circ_reader *r;		  /* the token stream, or NULL */
	circ_patcher *p;	  /* NULL until circ_session_patcher */
	circ_writer *w;		  /* NULL until circ_session_output; aborted on errors */
	circ_batch_reader *bt;	  /* NULL until the first circ_session_next */
	circ_progress pr;	  /* "examples" counted by batch, unless the tool starts it */
	int count_batches;	  /* circ_session_next counts batches in pr */
	circ_batch *last;	  /* the batch handed out last (counted at the next call) */
	int attr_method;	  /* circ_session_attrib_patcher's method, or -1 */
	circ_compute compute;	  /* set before circ_session_open_model (--compute) */
} circ_session;

/* Opens pc's model (a missing --model is a usage error) and, with_graph, its
 * graph; digests the weights. */
void circ_session_model(circ_session *s, circ_patch_cli *pc, int with_graph);
/* For a tool without the patching options (circ-forward): opens the model
 * in dir (--allow-nonfinite: allow_nonfinite) without a graph, digests
 * its weights and sets s->compute; s->pc stays NULL, so the batches come
 * from circ_session_batches. */
void circ_session_open_model(circ_session *s, const char *dir, int allow_nonfinite);
/* Opens the token stream input ("-": standard input) and checks its
 * vocabulary against the model's (circ_session_reader, then
 * circ_session_check_vocab). */
void circ_session_tokens(circ_session *s, const char *input);
/* Opens the token stream input ("-": standard input), unchecked. */
void circ_session_reader(circ_session *s, const char *input);
/* Checks the token stream's vocabulary against the model's. */
void circ_session_check_vocab(circ_session *s);
/* The patcher over s->g (or over g when s->g is NULL) with the options' ablation,
 * metric, batch and threads; backward for gradients. The means (mean
 * ablation) are a separate step, circ_session_means. */
void circ_session_patcher(circ_session *s, circ_graph *g, int backward);
/* The patcher over s->g for an accumulator of method m alone (circ-score):
 * as circ_session_patcher, with circ_attrib_patch_opts (less memory). */
void circ_session_attrib_patcher(circ_session *s, circ_attr_method m);
/* For mean ablation: the means from --mean-ref, else the token stream. */
void circ_session_means(circ_session *s);
/* Opens the output stream (cli's --output and stream options). */
void circ_session_output(circ_session *s, const circ_cli *cli);
/* Starts the token stream's batches for the metric, batch examples each,
 * and, with progress, unless the tool started s->pr, the progress over
 * "examples" (circ-prune --acdc reads its batches without one);
 * circ_session_next does it with the patching options' when no tool did. */
void circ_session_batches(circ_session *s, circ_metric_kind metric, int batch, int progress);
/* The examples the token stream's header declares (n_examples), or 0. */
int64_t circ_session_n_examples(const circ_session *s);
/* The next batch of the token stream into *b (1), or 0 at its end (the
 * progress then ends). Unless the tool started s->pr itself, progress counts
 * "examples" (each batch when the next one is asked for). */
int circ_session_next(circ_session *s, circ_batch **b);
/* Loads batch b into the patcher (clean and reference runs); with backward,
 * also the metric's gradients. An error names the token stream. */
void circ_session_load(circ_session *s, circ_batch *b, int backward);
/* Dies with e prefixed by the token stream's name, after aborting the output. */
void circ_session_die(circ_session *s, circ_error *e) CIRC_NORETURN;
/* After the loop: the weights, used in place, were not rewritten meanwhile,
 * and the output (if any) is closed, checked and renamed into place. */
void circ_session_finish(circ_session *s);
/* Frees everything the session opened (not pc); safe on a zeroed session. */
void circ_session_free(circ_session *s);

#endif
