/*
 * dictrun: the tools' side of sparse dictionaries (lib/dict): circ-forward
 * --dict measures each dictionary of a set spliced into the model over a
 * token stream; circ-harvest --dict writes each example's feature
 * activations, sparse. Both load and check every dictionary against the
 * model before the output is opened, so bad input leaves no partial output.
 */
#ifndef CIRC_CLI_DICTRUN_H
#define CIRC_CLI_DICTRUN_H

#include "batch.h"
#include "dict.h"
#include "metric.h"
#include "session.h"

/* s holds the model and the token stream's reader (circ_session_open_model,
 * circ_session_reader); writes the "dict-eval" stream (one record per
 * dictionary, after the last batch) through circ_session_output(s, cli).
 * dense: the density above which a feature counts as dense. */
void circ_dictrun_forward(circ_session *s, const circ_cli *cli, const char *dir,
			  circ_metric_kind metric, int batch, int threads, double dense, int argc,
			  char **argv);
/* The same session; writes the "dict-acts" stream (one record per example
 * and dictionary). */
void circ_dictrun_harvest(circ_session *s, const circ_cli *cli, const char *dir,
			  circ_metric_kind metric, int batch, int threads, int argc, char **argv);

/* The feature activations of every example of s's batches (after
 * circ_session_tokens or circ_session_reader) under every dictionary of set
 * (checked against the model by the caller): fn gets example bb of batch b,
 * dictionary k, and its rows as CSR over the b->T positions (row_ptr (T+1)
 * from 0; feat, act (row_ptr[T])), valid during the call. Dies on a run
 * error. */
typedef void (*circ_dictrun_fn)(void *ctx, const circ_batch *b, int bb, int k,
				const int64_t *row_ptr, const int32_t *feat, const float *act);
void circ_dictrun_each(circ_session *s, const circ_dict_set *set, circ_metric_kind metric,
		       int batch, int threads, circ_dictrun_fn fn, void *ctx);

#endif
