/*
 * render_dashboard: feature dashboards of sparse dictionaries (SAEs,
 * transcoders) from their activations over a corpus (the dict-acts stream
 * of circ-harvest --dict): for each feature, the examples where it is most
 * active with a window of tokens around each maximum, a histogram of its
 * non-zero activations, and the tokens whose logits its decoder direction
 * promotes and suppresses (direction . W_U). Written as JSON lines (one
 * object per feature, schemas/dashboard.schema.json) or as one
 * self-contained HTML page (data inline, drawn by inline script, a content
 * security policy that forbids network access).
 *
 * The accumulator is streaming in the examples: per feature it keeps its
 * top contexts (a bounded list) and its non-zero activations (for the
 * histogram, whose range is known only at the end).
 *
 * Determinism: ties are broken by the smaller example id, dictionary,
 * feature or token id, so fixed input gives byte-identical output.
 *
 * Dimension letters: S features of a dictionary, C model width, V
 * vocabulary, T positions of an example.
 *
 * Layering: part of render; uses util and bpe (no dictionary code: the
 * caller passes the decoder directions as plain arrays).
 */
#ifndef CIRC_RENDER_DASHBOARD_H
#define CIRC_RENDER_DASHBOARD_H

#include <stdint.h>
#include <stdio.h>

#include "bpe.h"
#include "util.h"

typedef struct circ_dash_opts {
	int contexts; /* top examples kept per feature (>= 1) */
	int window;   /* tokens shown on each side of a maximum (>= 0) */
	int bins;     /* histogram bins (>= 1) */
	int logits;   /* promoted and suppressed tokens listed, each (>= 0) */
} circ_dash_opts;

/* contexts 10, window 8, bins 20, logits 10. */
void circ_dash_opts_default(circ_dash_opts *o);

typedef struct circ_dash circ_dash;

/* An accumulator over n_dict dictionaries of d_sae[k] features each. Never
 * fails (allocation failure exits). Free with circ_dash_free. */
circ_dash *circ_dash_new(int n_dict, const int *d_sae, const circ_dash_opts *o);
void circ_dash_free(circ_dash *d); /* NULL is a no-op */

/* Adds one example's activations of dictionary k (CSR over its T
 * positions: the active features of position t are feat[row_ptr[t] ..
 * row_ptr[t+1]), increasing, with their activations act) and the
 * example's tokens (T of them). -1 with a message when the record does not
 * fit: k out of range, row_ptr not starting at 0 or decreasing or not
 * ending at nnz, a feature out of [0, d_sae) or not increasing, an
 * activation zero or not finite. */
int circ_dash_add(circ_dash *d, int k, int64_t id, const int32_t *tokens, int T,
		  const int64_t *row_ptr, int64_t nnz, const int32_t *feat, const float *act,
		  circ_error *e);

/* A feature: dictionary index and feature index. */
typedef struct circ_dash_feat {
	int dict, feat;
} circ_dash_feat;

/* The (at most) n most active features: most positions active first, ties
 * to the smaller dictionary, then feature; features never active are left
 * out. Returns how many it wrote to out (n entries). */
int circ_dash_top(const circ_dash *d, int n, circ_dash_feat *out);
/* Positions seen in dictionary k's records. */
int64_t circ_dash_positions(const circ_dash *d, int k);

/* What the writers show besides the accumulated activations. */
typedef struct circ_dash_show {
	const char *title;	     /* may be NULL */
	const circ_dash_feat *feats; /* (n_feats) in the order shown */
	int n_feats;
	const char *const *dict_name;  /* (n_dict) e.g. the directory */
	const char *const *dict_hook;  /* (n_dict) the input hook's name */
	const char *const *dict_out;   /* (n_dict) a transcoder's output hook, else NULL;
					* the array may be NULL */
	const float *const *direction; /* (n_dict) each (S, C) decoder directions in the
					* residual stream, or NULL: no logits */
	const float *W_U;	       /* (V, C) unembedding rows */
	int V, C;
	const circ_bpe *bpe; /* token text; NULL: ids as text */
} circ_dash_show;

/* One JSON object per line per feature of s->feats (see
 * schemas/dashboard.schema.json). -1 on a write error. */
int circ_dash_write_jsonl(FILE *f, const circ_dash *d, const circ_dash_show *s, circ_error *e);
/* One self-contained HTML page: every feature of s->feats as a section
 * with class "feature" (id "f<dict>-<feature>") holding its contexts,
 * histogram (inline SVG) and logit tables; the body gets data-ready="1"
 * once the script has drawn them. -1 on a write error. */
int circ_dash_write_html(FILE *f, const circ_dash *d, const circ_dash_show *s, circ_error *e);

#endif
