/*
 * dictrun: the tools' side of sparse dictionaries (lib/dict): circ-forward
 * --dict measures each dictionary of a set spliced into the model over a
 * token stream; circ-harvest --dict writes each example's feature
 * activations, sparse. Both load and check every dictionary against the
 * model before the output is opened, so bad input leaves no partial output.
 */
#ifndef CIRC_CLI_DICTRUN_H
#define CIRC_CLI_DICTRUN_H

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

#endif
