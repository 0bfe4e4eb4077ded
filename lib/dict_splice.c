/*
 * dict_splice: a dictionary spliced into a model's forward. The activation
 * the dictionary replaces is never written back: the residual stream is the
 * sum of node outputs, so replacing one term of it (or the MLP's output) by
 * the dictionary's output is the same as adding the difference to the input
 * of every receiver that reads a residual formed after it. The hook computes
 * that difference once, at the first stage that reads it, and hands it to
 * each downstream receiver as a delta given by a sum of rows (no copy per
 * receiver).
 */
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "kernels.h"

struct circ_dict_splice {
	const circ_dict *d;
	const circ_model *m;
	circ_hook in, out; /* out: the replaced activation (in for an SAE) */
	int stage;	   /* where the hook acts */
	int max_rows;
	int zero;
	const circ_dict_edit *edits; /* (n_edits): interventions instead */
	int n_edits;
	int n;	       /* rows of the last forward */
	float *x;      /* (N, I) input activation */
	float *f;      /* (N, S) feature activations */
	float *recon;  /* (N, O) dictionary output */
	float *target; /* (N, O) the activation replaced */
	float *diff;   /* (N, C) what every downstream receiver gets added */
};

circ_dict_splice *circ_dict_splice_new(const circ_dict *d, const circ_model *m, int max_rows,
				       circ_error *e)
{
	if (circ_dict_check_model(d, m, e) < 0)
		return NULL;
	const circ_topology *t = circ_model_topology(m);
	circ_dict_splice *s = circ_xcalloc(1, sizeof *s);
	s->d = d;
	s->m = m;
	circ_hook_parse(d->cfg.hook_name, &s->in, e);
	s->out = s->in;
	if (d->cfg.transcoder)
		circ_hook_parse(d->cfg.hook_out, &s->out, e);
	if (!d->cfg.transcoder && s->in.kind == CIRC_HOOK_LN2_NORMALIZED) {
		circ_errorf(e,
			    "'%s': key 'hook_name': an SAE on %s cannot be spliced (the "
			    "LayerNorm's output is no sum of node outputs); encode it with "
			    "circ-harvest --dict instead",
			    d->path ? d->path : "<dictionary>", d->cfg.hook_name);
		free(s);
		return NULL;
	}
	const circ_config *mc = circ_model_config(m);
	if (s->out.kind == CIRC_HOOK_ATTN_Z && mc->model_type != CIRC_MODEL_GPT2 &&
	    mc->norm_place != CIRC_NORM_PRE) {
		circ_errorf(e,
			    "'%s': key 'hook_name': an SAE on %s cannot be spliced into %s (the "
			    "attention's output has a norm of its own: a change of z is no sum "
			    "of node outputs); encode it with circ-harvest --dict instead",
			    d->path ? d->path : "<dictionary>", d->cfg.hook_name,
			    circ_model_type_name(mc->model_type));
		free(s);
		return NULL;
	}
	s->stage = circ_hook_stage(t, &s->out);
	if (circ_hook_stage(t, &s->in) > s->stage)
		s->stage = circ_hook_stage(t, &s->in);
	s->max_rows = max_rows;
	size_t N = (size_t)max_rows, C = (size_t)circ_model_config(m)->n_embd;
	s->x = circ_xmalloc_aligned(N * d->cfg.d_in * sizeof(float));
	s->f = circ_xmalloc_aligned(N * d->cfg.d_sae * sizeof(float));
	s->recon = circ_xmalloc_aligned(N * d->cfg.d_out * sizeof(float));
	s->target = circ_xmalloc_aligned(N * d->cfg.d_out * sizeof(float));
	s->diff = circ_xmalloc_aligned(N * C * sizeof(float));
	return s;
}

void circ_dict_splice_free(circ_dict_splice *s)
{
	if (!s)
		return;
	free(s->x);
	free(s->f);
	free(s->recon);
	free(s->target);
	free(s->diff);
	free(s);
}

void circ_dict_splice_set_zero(circ_dict_splice *s, int zero)
{
	s->zero = zero;
}

void circ_dict_splice_set_edits(circ_dict_splice *s, const circ_dict_edit *ed, int n)
{
	s->edits = n > 0 ? ed : NULL;
	s->n_edits = n > 0 ? n : 0;
}

/* tmp (n, O) := decode(f with the edits) - decode(f): the interventions'
 * change of the activation. */
static int edit_diff(circ_dict_splice *s, int T, int n, float *tmp, circ_error *e)
{
	const circ_dict *d = s->d;
	size_t S = (size_t)d->cfg.d_sae, O = (size_t)d->cfg.d_out;
	float *f2 = circ_xmalloc_aligned((size_t)n * S * sizeof(float));
	memcpy(f2, s->f, (size_t)n * S * sizeof(float));
	for (int q = 0; q < s->n_edits; q++) {
		const circ_dict_edit *x = &s->edits[q];
		if (x->pos >= T) {
			free(f2);
			return circ_errorf(
			    e, "intervention at position %d: the prompts have %d tokens", x->pos,
			    T);
		}
		for (int row = x->pos; row < n; row += T) {
			float *v = f2 + (size_t)row * S + x->feature;
			*v = x->scale ? *v * x->value : x->value;
		}
	}
	circ_dict_decode(s->d, f2, s->x, n, tmp);
	for (size_t i = 0; i < (size_t)n * O; i++)
		tmp[i] -= s->recon[i];
	free(f2);
	return 0;
}

int circ_dict_splice_hook(void *ctx, circ_run *r, int stage, circ_error *e)
{
	circ_dict_splice *s = ctx;
	if (stage != s->stage)
		return 0;
	const circ_dict *d = s->d;
	const circ_config *mc = circ_model_config(s->m);
	const circ_topology *t = circ_model_topology(s->m);
	int n = circ_run_b(r) * circ_run_t(r), C = mc->n_embd, O = d->cfg.d_out;
	if (n > s->max_rows)
		return circ_errorf(e, "dictionary splice: %d rows, made for %d", n, s->max_rows);
	s->n = n;
	if (circ_dict_hook_read(d, 1, r, s->x, e) < 0)
		return -1;
	if (!d->cfg.transcoder)
		memcpy(s->target, s->x, (size_t)n * O * sizeof(float));
	else if (circ_dict_hook_read(d, 0, r, s->target, e) < 0)
		return -1;
	circ_dict_encode(d, s->x, n, s->f);
	circ_dict_decode(d, s->f, s->x, n, s->recon);
	/* The difference of the replaced activation, in the residual's space. */
	float *tmp = circ_xmalloc_aligned((size_t)n * O * sizeof(float));
	if (s->edits) {
		if (edit_diff(s, circ_run_t(r), n, tmp, e) < 0) {
			free(tmp);
			return -1;
		}
	} else
		for (size_t i = 0; i < (size_t)n * O; i++)
			tmp[i] = (s->zero ? 0.0f : s->recon[i]) - s->target[i];
	if (s->out.kind == CIRC_HOOK_ATTN_Z) {
		if (circ_model_attn_proj(s->m, s->out.layer, tmp, n, s->diff, e) < 0) {
			free(tmp);
			return -1;
		}
	} else {
		memcpy(s->diff, tmp, (size_t)n * C * sizeof(float));
	}
	free(tmp);
	/* hook_mlp_in is a copy of the residual that only the MLP reads:
	 * replacing it changes that one receiver; the others read the stream. */
	int first = t->stage[stage].first_recv, end = t->n_recv;
	if (s->out.kind == CIRC_HOOK_MLP_IN && !d->cfg.transcoder) {
		first = circ_topo_recv_mlp(t, s->out.layer);
		end = first + 1;
	}
	const float *terms[1] = {s->diff};
	for (int rc = first; rc < end; rc++)
		if (circ_run_delta_sum(r, rc, NULL, CIRC_SIGN_PLUS, 1, terms) < 0)
			return circ_errorf(e, "dictionary splice: receiver %d refused a delta", rc);
	return 0;
}

const float *circ_dict_splice_x(const circ_dict_splice *s)
{
	return s->x;
}
const float *circ_dict_splice_feats(const circ_dict_splice *s)
{
	return s->f;
}
const float *circ_dict_splice_recon(const circ_dict_splice *s)
{
	return s->recon;
}
const float *circ_dict_splice_target(const circ_dict_splice *s)
{
	return s->target;
}
int circ_dict_splice_stage(const circ_dict_splice *s)
{
	return s->stage;
}
