/*
 * dictrun: circ-forward --dict and circ-harvest --dict (see dictrun.h).
 * Per batch, one clean forward reads the logits at every position that has
 * a next token; per dictionary, one spliced forward and one with the
 * activation zero-ablated give the CE loss recovered and the KL. The
 * dictionaries act one at a time (each against the clean model), as SAEBench
 * measures them.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dictrun.h"
#include "dict.h"
#include "model.h"

/* Loads the set and checks every dictionary against the model (and that
 * it can be spliced, when splice); exits 1 naming the file on error. */
static circ_dict_set *load_set(const circ_session *s, const char *dir, int splice)
{
	circ_error e;
	circ_dict_set *set = circ_dict_set_load(dir, &e);
	if (!set)
		circ_die(&e);
	for (int k = 0; k < set->n; k++) {
		circ_dict_splice *sp = NULL;
		if (circ_dict_check_model(set->dict[k], s->m, &e) < 0 ||
		    (splice && !(sp = circ_dict_splice_new(set->dict[k], s->m, 1, &e))))
			circ_die(&e);
		circ_dict_splice_free(sp);
	}
	return set;
}

static circ_run *grow_run(circ_session *s, circ_run *run, int *cap_t, int batch, int T, int threads)
{
	circ_error e;
	if (run && T <= *cap_t)
		return run;
	circ_run_free(run);
	circ_run_opts ro;
	circ_run_opts_default(&ro);
	ro.threads = threads;
	*cap_t = T;
	run = circ_run_new(s->m, batch, T, &ro, &e);
	if (!run)
		circ_die(&e);
	return run;
}

static void forward_or_die(circ_session *s, circ_run *run, const circ_fwd *f)
{
	circ_error e;
	if (circ_forward(run, f, &e) < 0)
		circ_session_die(s, &e);
}

static void pack_str_or_nil(msgpack_packer *pk, const char *k, const char *v)
{
	if (v && *v)
		circ_pack_kv_str(pk, k, v);
	else {
		circ_pack_str(pk, k);
		msgpack_pack_nil(pk);
	}
}

static void write_eval(circ_session *s, int k, const circ_dict *d, const circ_dict_stats *st,
		       double dense)
{
	circ_error e;
	circ_dict_summary m;
	circ_dict_stats_summary(st, dense, &m);
	msgpack_packer *pk = circ_writer_packer(s->w);
	msgpack_pack_map(pk, 22);
	circ_pack_kv_i64(pk, "dict", k);
	circ_pack_kv_str(pk, "path", d->path ? d->path : "");
	circ_pack_kv_str(pk, "architecture", circ_dict_arch_name(d));
	circ_pack_str(pk, "transcoder");
	if (d->cfg.transcoder)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
	circ_pack_kv_str(pk, "hook_name", d->cfg.hook_name);
	pack_str_or_nil(pk, "hook_name_out", d->cfg.hook_out);
	circ_pack_kv_i64(pk, "d_in", d->cfg.d_in);
	circ_pack_kv_i64(pk, "d_sae", d->cfg.d_sae);
	const struct {
		const char *k;
		double v;
	} nums[] = {{"mse", m.mse},
		    {"fvu", m.fvu},
		    {"l0", m.l0},
		    {"dead_frac", m.dead_frac},
		    {"dense_frac", m.dense_frac},
		    {"ce_clean", m.ce_clean},
		    {"ce_spliced", m.ce_spliced},
		    {"ce_zero", m.ce_zero},
		    {"ce_loss_recovered", m.ce_loss_recovered},
		    {"kl", m.kl}};
	circ_pack_kv_i64(pk, "rows", m.rows);
	circ_pack_kv_i64(pk, "ce_rows", m.ce_rows);
	circ_pack_kv_i64(pk, "n_dead", m.n_dead);
	for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++)
		circ_pack_kv_f64(pk, nums[i].k, nums[i].v);
	circ_pack_str(pk, "density_hist");
	msgpack_pack_map(pk, 3);
	circ_pack_kv_f64(pk, "lo", CIRC_DICT_HIST_LO);
	circ_pack_kv_f64(pk, "step", CIRC_DICT_HIST_STEP);
	circ_pack_str(pk, "counts");
	msgpack_pack_array(pk, CIRC_DICT_HIST_BINS);
	for (int b = 0; b < CIRC_DICT_HIST_BINS; b++)
		msgpack_pack_int64(pk, m.hist[b]);
	if (circ_writer_end_record(s->w, &e) < 0)
		circ_die(&e);
}

static void write_header(circ_session *s, const char *kind, const char *dir, int n, int argc,
			 char **argv)
{
	circ_error e;
	circ_hdr_field f[] = {
	    CIRC_HDR(STR, "dict_dir", dir),
	    CIRC_HDR(I64, "n_dict", n),
	    CIRC_HDR(STR, "model_digest", s->model_digest),
	    circ_hdr_dataset_digest(s->r),
	};
	if (circ_writer_header_fields(s->w, kind, argc, argv, &s->r, 1, f, CIRC_HDR_N(f), &e) < 0)
		circ_die(&e);
}

void circ_dictrun_forward(circ_session *s, const circ_cli *cli, const char *dir,
			  circ_metric_kind metric, int batch, int threads, double dense, int argc,
			  char **argv)
{
	circ_error e;
	circ_dict_set *set = load_set(s, dir, 1);
	int n = set->n, V = s->c->vocab_size, cap_t = 0, cap_rows = 0;
	circ_dict_splice **sp = circ_xcalloc((size_t)n, sizeof *sp);
	circ_dict_stats *st = circ_xcalloc((size_t)n, sizeof *st);
	for (int k = 0; k < n; k++)
		circ_dict_stats_init(&st[k], set->dict[k]);
	circ_session_output(s, cli);
	write_header(s, "dict-eval", dir, n, argc, argv);
	circ_session_batches(s, metric, batch, 1);
	circ_run *run = NULL;
	circ_read *reads = NULL;
	int32_t *next = NULL;
	float *clean = NULL, *spliced = NULL;
	circ_batch *b;
	while (circ_session_next(s, &b)) {
		int B = b->B, T = b->T, rows = B * T, N = B * (T - 1);
		run = grow_run(s, run, &cap_t, batch, T, threads);
		if (rows > cap_rows) {
			for (int k = 0; k < n; k++) {
				circ_dict_splice_free(sp[k]);
				sp[k] = circ_dict_splice_new(set->dict[k], s->m, rows, &e);
				if (!sp[k])
					circ_session_die(s, &e);
			}
			cap_rows = rows;
		}
		reads = circ_xrealloc(reads, (size_t)(N > 0 ? N : 1) * sizeof *reads);
		next = circ_xrealloc(next, (size_t)(N > 0 ? N : 1) * sizeof *next);
		for (int bb = 0, q = 0; bb < B; bb++)
			for (int t = 0; t + 1 < T; t++, q++) {
				reads[q] = (circ_read){bb, t};
				next[q] = b->clean[(size_t)bb * T + t + 1];
			}
		clean = circ_xrealloc(clean, ((size_t)N * V + 1) * sizeof *clean);
		spliced = circ_xrealloc(spliced, ((size_t)N * V + 1) * sizeof *spliced);
		circ_fwd f;
		circ_fwd_init(&f);
		f.tokens = b->clean;
		f.B = B;
		f.T = T;
		f.read = N > 0 ? CIRC_READ_LIST : CIRC_READ_NONE;
		f.n_read = N;
		f.reads = reads;
		forward_or_die(s, run, &f);
		if (N > 0)
			memcpy(clean, circ_run_logits(run, NULL), (size_t)N * V * sizeof *clean);
		for (int k = 0; k < n; k++) {
			f.hook = circ_dict_splice_hook;
			f.hook_ctx = sp[k];
			circ_dict_splice_set_zero(sp[k], 0);
			forward_or_die(s, run, &f);
			circ_dict_stats_add(&st[k], circ_dict_splice_target(sp[k]),
					    circ_dict_splice_recon(sp[k]),
					    circ_dict_splice_feats(sp[k]), rows);
			if (N <= 0)
				continue;
			memcpy(spliced, circ_run_logits(run, NULL),
			       (size_t)N * V * sizeof *spliced);
			circ_dict_splice_set_zero(sp[k], 1);
			forward_or_die(s, run, &f);
			circ_dict_stats_add_ce(&st[k], clean, spliced, circ_run_logits(run, NULL),
					       next, N, V);
		}
	}
	for (int k = 0; k < n; k++)
		write_eval(s, k, set->dict[k], &st[k], dense);
	circ_session_finish(s);
	for (int k = 0; k < n; k++) {
		circ_dict_splice_free(sp[k]);
		circ_dict_stats_free(&st[k]);
	}
	free(sp);
	free(st);
	free(reads);
	free(next);
	free(clean);
	free(spliced);
	circ_run_free(run);
	circ_dict_set_free(set);
}

/* One dictionary's features over a batch's rows, sparse (CSR). */
typedef struct sparse_rows {
	int64_t *row_ptr; /* (rows + 1) */
	int32_t *feat;	  /* (nnz) */
	float *act;	  /* (nnz) */
} sparse_rows;

static void to_sparse(sparse_rows *sr, const float *f, size_t rows, int S)
{
	size_t nnz = 0;
	for (size_t i = 0; i < rows * S; i++)
		nnz += f[i] != 0;
	sr->row_ptr = circ_xrealloc(sr->row_ptr, (rows + 1) * sizeof *sr->row_ptr);
	sr->feat = circ_xrealloc(sr->feat, (nnz + 1) * sizeof *sr->feat);
	sr->act = circ_xrealloc(sr->act, (nnz + 1) * sizeof *sr->act);
	nnz = 0;
	for (size_t i = 0; i < rows; i++) {
		sr->row_ptr[i] = (int64_t)nnz;
		for (int j = 0; j < S; j++)
			if (f[i * S + j] != 0) {
				sr->feat[nnz] = j;
				sr->act[nnz++] = f[i * S + j];
			}
	}
	sr->row_ptr[rows] = (int64_t)nnz;
}

/* Example bb's rows of dictionary k: its T rows of the batch's CSR, with
 * row_ptr counted from the example's first row. */
static void example_rows(const circ_batch *b, int bb, const sparse_rows *sr, int64_t *rp,
			 int64_t *base)
{
	int T = b->T;
	*base = sr->row_ptr[(size_t)bb * T];
	for (int t = 0; t <= T; t++)
		rp[t] = sr->row_ptr[(size_t)bb * T + t] - *base;
}

void circ_dictrun_each(circ_session *s, const circ_dict_set *set, circ_metric_kind metric,
		       int batch, int threads, circ_dictrun_fn fn, void *ctx)
{
	circ_error e;
	int n = set->n, cap_t = 0;
	circ_session_batches(s, metric, batch, 1);
	circ_run *run = NULL;
	float *x = NULL, *f = NULL;
	int64_t *rp = NULL;
	sparse_rows *sr = circ_xcalloc((size_t)n, sizeof *sr);
	circ_batch *b;
	while (circ_session_next(s, &b)) {
		size_t rows = (size_t)b->B * b->T;
		run = grow_run(s, run, &cap_t, batch, b->T, threads);
		circ_fwd fw;
		circ_fwd_init(&fw);
		fw.tokens = b->clean;
		fw.B = b->B;
		fw.T = b->T;
		fw.read = CIRC_READ_NONE;
		forward_or_die(s, run, &fw);
		for (int k = 0; k < n; k++) {
			const circ_dict *d = set->dict[k];
			x = circ_xrealloc(x, rows * d->cfg.d_in * sizeof *x);
			f = circ_xrealloc(f, rows * d->cfg.d_sae * sizeof *f);
			if (circ_dict_hook_read(d, 1, run, x, &e) < 0)
				circ_session_die(s, &e);
			circ_dict_encode(d, x, (int)rows, f);
			to_sparse(&sr[k], f, rows, d->cfg.d_sae);
		}
		rp = circ_xrealloc(rp, ((size_t)b->T + 1) * sizeof *rp);
		for (int bb = 0; bb < b->B; bb++)
			for (int k = 0; k < n; k++) {
				int64_t base;
				example_rows(b, bb, &sr[k], rp, &base);
				fn(ctx, b, bb, k, rp, sr[k].feat + base, sr[k].act + base);
			}
	}
	for (int k = 0; k < n; k++) {
		free(sr[k].row_ptr);
		free(sr[k].feat);
		free(sr[k].act);
	}
	free(sr);
	free(rp);
	free(x);
	free(f);
	circ_run_free(run);
}

/* circ_dictrun_each's callback for circ-harvest: one dict-acts record. */
static void pack_acts(void *ctx, const circ_batch *b, int bb, int k, const int64_t *rp,
		      const int32_t *feat, const float *act)
{
	circ_session *s = ctx;
	circ_error e;
	int T = b->T;
	int64_t sh_r = T + 1, sh_n = rp[T];
	msgpack_packer *pk = circ_writer_packer(s->w);
	msgpack_pack_map(pk, 6);
	circ_pack_kv_i64(pk, "id", b->ex[bb].id);
	circ_pack_kv_i64(pk, "dict", k);
	circ_pack_kv_i64(pk, "T", T);
	circ_pack_kv_tensor(pk, "row_ptr", CIRC_I64, 1, &sh_r, rp);
	circ_pack_kv_tensor(pk, "feat", CIRC_I32, 1, &sh_n, feat);
	circ_pack_kv_tensor(pk, "act", CIRC_F32, 1, &sh_n, act);
	if (circ_writer_end_record(s->w, &e) < 0)
		circ_die(&e);
}

void circ_dictrun_harvest(circ_session *s, const circ_cli *cli, const char *dir,
			  circ_metric_kind metric, int batch, int threads, int argc, char **argv)
{
	circ_dict_set *set = load_set(s, dir, 0);
	circ_session_output(s, cli);
	write_header(s, "dict-acts", dir, set->n, argc, argv);
	circ_dictrun_each(s, set, metric, batch, threads, pack_acts, s);
	circ_session_finish(s);
	circ_dict_set_free(set);
}
