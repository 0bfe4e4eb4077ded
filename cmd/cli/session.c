/*
 * session: the patching tools' shared opening and closing (see session.h).
 */
#include "session.h"

#include "progress.h"

void circ_session_model(circ_session *s, circ_patch_cli *pc, int with_graph)
{
	circ_error e;
	s->pc = pc;
	s->model_dir = pc->model;
	s->m = circ_patch_cli_model(pc, with_graph ? &s->g : NULL);
	s->c = circ_model_config(s->m);
	/* circ_patch_cli_model digested the weights: this is the kept digest */
	if (!(s->model_digest = circ_model_digest(s->m, &e)))
		circ_die(&e);
}

void circ_session_open_model(circ_session *s, const char *dir, int allow_nonfinite)
{
	circ_error e;
	s->model_dir = dir;
	s->m = circ_cli_open_model(dir, allow_nonfinite, 0);
	circ_cli_model_compute(s->m, s->compute);
	s->c = circ_model_config(s->m);
	if (!(s->model_digest = circ_model_digest(s->m, &e)))
		circ_die(&e);
}

void circ_session_tokens(circ_session *s, const char *input)
{
	circ_session_reader(s, input);
	circ_session_check_vocab(s);
}

void circ_session_reader(circ_session *s, const char *input)
{
	circ_error e;
	s->input = input;
	s->r = circ_reader_open(input, "tokens", &e);
	if (!s->r)
		circ_die(&e);
}

void circ_session_check_vocab(circ_session *s)
{
	circ_error e;
	if (circ_batch_check_vocab(s->r, s->model_dir, &e) < 0)
		circ_die(&e);
}

/* method < 0: a patcher for patching; else for that attribution method. */
static void make_patcher(circ_session *s, circ_graph *g, int backward, int method)
{
	circ_error e;
	circ_patch_opts po;
	circ_patch_cli_opts(s->pc, s->m, backward, &po);
	if (method >= 0)
		circ_attrib_patch_opts((circ_attr_method)method, &po);
	s->p = circ_patcher_new(s->m, g ? g : s->g, &po, &e);
	if (!s->p)
		circ_die(&e);
	s->attr_method = method;
}

/* --max-memory: a batch fits when the patcher's (and the accumulator's)
 * estimate for it stays under the budget. */
static int batch_fits(void *ctx, int B, int T, int n_read)
{
	const circ_session *s = ctx;
	size_t bytes = circ_patcher_bytes_for(s->p, B, T, n_read);
	if (s->attr_method >= 0)
		bytes +=
		    circ_attrib_bytes_for((circ_attr_method)s->attr_method, s->p, B, T, n_read);
	return bytes <= (size_t)s->pc->max_memory;
}

void circ_session_patcher(circ_session *s, circ_graph *g, int backward)
{
	make_patcher(s, g, backward, -1);
}

void circ_session_attrib_patcher(circ_session *s, circ_attr_method m)
{
	make_patcher(s, NULL, circ_attr_needs_backward(m), (int)m);
}

void circ_session_means(circ_session *s)
{
	circ_patch_cli_means(s->pc, s->p, s->m, s->input);
}

void circ_session_output(circ_session *s, const circ_cli *cli)
{
	circ_error e;
	s->w = circ_writer_open(cli->output, &cli->wopts, &e);
	if (!s->w)
		circ_die(&e);
}

int64_t circ_session_n_examples(const circ_session *s)
{
	const msgpack_object *h = circ_reader_header(s->r);
	const msgpack_object *v = h ? circ_rec_get(h, "n_examples") : NULL;
	if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX)
		return (int64_t)v->via.u64;
	return 0;
}

void circ_session_batches(circ_session *s, circ_metric_kind metric, int batch, int progress)
{
	s->bt = circ_batch_reader_new(s->r, metric, s->c->vocab_size, s->c->n_ctx, batch);
	if (s->p && s->pc && s->pc->max_memory > 0)
		circ_batch_reader_set_fit(s->bt, batch_fits, s);
	if (progress && !s->pr.what) {
		/* out of the total the header declares, if it does */
		circ_cli_progress(&s->pr, "examples", circ_session_n_examples(s));
		s->count_batches = 1;
	}
}

int circ_session_next(circ_session *s, circ_batch **b)
{
	circ_error e;
	int k;
	if (!s->bt)
		circ_session_batches(s, s->pc->metric, s->pc->batch, 1);
	if (s->last && s->count_batches)
		circ_progress_step(&s->pr, s->last->B);
	s->last = NULL;
	k = circ_batch_reader_next(s->bt, b, &e);
	if (k < 0)
		circ_die(&e);
	if (k == 0) {
		circ_progress_end(&s->pr);
		return 0;
	}
	s->last = *b;
	return 1;
}

void circ_session_load(circ_session *s, circ_batch *b, int backward)
{
	circ_error e;
	if (circ_patcher_load(s->p, b, &e) < 0 || (backward && circ_loss_backward(s->p, &e) < 0))
		circ_session_die(s, &e);
}

void circ_session_die(circ_session *s, circ_error *e)
{
	circ_writer_abort(s->w);
	s->w = NULL;
	circ_error_prefix(e, "%s", circ_reader_name(s->r));
	circ_die(e);
}

void circ_session_finish(circ_session *s)
{
	circ_error e;
	if (circ_model_check_unchanged(s->m, &e) < 0) /* weights used in place: not rewritten? */
		circ_die(&e);
	if (s->w) {
		circ_writer *w = s->w;
		s->w = NULL;
		if (circ_writer_close(w, &e) < 0)
			circ_die(&e);
	}
}

void circ_session_free(circ_session *s)
{
	circ_writer_abort(s->w);
	circ_batch_reader_free(s->bt);
	circ_patcher_free(s->p);
	circ_reader_free(s->r);
	circ_graph_free(s->g);
	circ_model_free(s->m);
	*s = (circ_session){0};
}
