/*
 * libFuzzer target for the readers of circ's own record streams, the
 * consumers of what circ-score, circ-prune, circ-patch and circ-tokenize
 * write: the input is a whole stream (header line included, as a user may
 * hand any file to any tool) and the header's "kind" picks the reader:
 *   scores             circ_scores_read (edge names, merged shards, counts)
 *   circuit, records   circ_circuit_read, against a 2-layer graph when the
 *                      stream has none (a headerless edge list)
 *   curve              circ_eval_curve_read
 *   tokens             circ_batch_reader over every batch (ids bounded by a
 *                      vocabulary of 64 and a context of 32)
 * A graph in the header larger than 16 layers x 16 heads is passed over:
 * a big graph is a valid request whose memory is the caller's to allow, not
 * a parser's bug. Every input must be read or refused with a message, never
 * crash, leak or read out of bounds.
 */
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "circuit.h"
#include "eval.h"
#include "fuzz_file.h"
#include "graph.h"
#include "stream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* 1 if the header's graph (if any) is small enough to build here. */
static int small_graph(const msgpack_object *hdr)
{
	const msgpack_object *g = circ_rec_get(hdr, "graph");
	const msgpack_object *l, *h;
	if (!g || g->type != MSGPACK_OBJECT_MAP)
		return 1;
	l = circ_rec_get(g, "n_layer");
	h = circ_rec_get(g, "n_head");
	if (l && l->type == MSGPACK_OBJECT_POSITIVE_INTEGER && l->via.u64 > 16)
		return 0;
	if (h && h->type == MSGPACK_OBJECT_POSITIVE_INTEGER && h->via.u64 > 16)
		return 0;
	return 1;
}

static void read_tokens(circ_reader *r)
{
	circ_error e;
	circ_metric_kind k;
	circ_batch_reader *bt;
	circ_batch *b;
	if (circ_batch_metric_from_header(circ_reader_header(r), &k, &e) < 0)
		return;
	bt = circ_batch_reader_new(r, k, 64, 32, 4);
	while (circ_batch_reader_next(bt, &b, &e) > 0) {
		circ_batch *c = circ_batch_clone(b);
		circ_batch_free(c);
	}
	circ_batch_reader_free(bt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	circ_error e;
	circ_reader *r;
	const char *kind;
	int fd = fuzz_file(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	r = circ_reader_open(path, NULL, &e);
	if (!r) {
		close(fd);
		return 0;
	}
	kind = circ_reader_kind(r);
	if (!small_graph(circ_reader_header(r))) {
		/* nothing */
	} else if (!strcmp(kind, "scores")) {
		circ_scores_free(circ_scores_read(r, &e));
	} else if (!strcmp(kind, "circuit") || !strcmp(kind, "records")) {
		circ_graph *g = circ_graph_new(2, 2, CIRC_LEVEL_EDGE, &e);
		circ_circuit_free(circ_circuit_read(r, g, &e));
		circ_graph_free(g);
	} else if (!strcmp(kind, "curve")) {
		circ_eval_curve_free(circ_eval_curve_read(r, &e));
	} else if (!strcmp(kind, "tokens")) {
		read_tokens(r);
	}
	circ_reader_free(r);
	close(fd);
	return 0;
}
