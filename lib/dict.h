/*
 * dict: sparse dictionaries over a model's activations: sparse autoencoders
 * (SAEs) that encode one hook point's activation into features and decode
 * it back, and transcoders that read one hook point (the MLP's input) and
 * write another (the MLP's output). Read from and written to the files
 * people share: SAELens directories (cfg.json + sae_weights.safetensors)
 * and circuit-tracer's per-layer transcoder files; encoded, decoded, and
 * spliced into a model's forward (dict_splice.c).
 *
 * Dimension letters: N rows (positions), I = d_in, S = d_sae (features),
 * O = d_out (I for an SAE).
 *
 * The computation, as SAELens defines it (x one row of the input hook):
 *   x'   = x * scale                     normalize_activations
 *                                        "expected_average_only_in" (else 1)
 *   xc   = x' - b_dec                    when apply_b_dec_to_input (SAEs)
 *   pre  = xc W_enc + b_enc              (S)
 *   f    = standard  relu(pre)
 *          topk      relu of the k largest of pre, 0 elsewhere
 *          jumprelu  relu(pre) where pre > threshold, else 0
 *          gated     [xc W_enc + b_gate > 0] * relu(xc (W_enc * exp(r_mag))
 *                    + b_mag)  (no b_enc)
 *   out  = (f W_dec + b_dec [+ x' W_skip^T]) / scale       (O)
 * A transcoder's b_dec is its output bias (O): it is never taken off the
 * input.
 *
 * Hook names are TransformerLens's (topology.h: circ_hook_parse); a
 * dictionary is checked against a model before use (circ_dict_check_model):
 * the hook must exist and its width be d_in (d_out for the output hook).
 *
 * Layering: dict uses util, record, safetensors, kernels, topology, model,
 * metric.
 */
#ifndef CIRC_DICT_H
#define CIRC_DICT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"
#include "record.h"
#include "topology.h"
#include "util.h"

typedef enum circ_dict_arch {
	CIRC_DICT_STANDARD, /* ReLU ("standard") */
	CIRC_DICT_TOPK,	    /* k largest pre-activations ("topk") */
	CIRC_DICT_JUMPRELU, /* per-feature threshold ("jumprelu") */
	CIRC_DICT_GATED	    /* gate and magnitude paths ("gated") */
} circ_dict_arch;

typedef enum circ_dict_norm {
	CIRC_DICT_NORM_NONE,		/* "none" */
	CIRC_DICT_NORM_EXPECTED_AVERAGE /* "expected_average_only_in": x * scale in,
					 * the output divided by scale */
} circ_dict_norm;

/* The longest hook name kept (TransformerLens names are short). */
#define CIRC_DICT_HOOK_MAX 128

/* What a dictionary is, without its weights (cfg.json's content). */
typedef struct circ_dict_cfg {
	circ_dict_arch arch;
	int d_in, d_sae, d_out; /* I, S, O; an SAE has d_out == d_in */
	int transcoder;		/* 1: reads hook_name, writes hook_out */
	int skip;		/* 1: has W_skip (transcoders) */
	int k;			/* topk: features kept per row (1 <= k <= S) */
	int apply_b_dec_to_input;
	circ_dict_norm norm;
	double scale;			     /* expected_average_only_in: the scaling factor */
	char hook_name[CIRC_DICT_HOOK_MAX];  /* input hook ("blocks.3.hook_resid_pre") */
	char hook_out[CIRC_DICT_HOOK_MAX];   /* transcoders: output hook; "" for SAEs */
	int fold_ln;			     /* ln2.hook_normalized without (1, TransformerLens's
					      * default fold_ln) or with (0) the LayerNorm's weight
					      * and bias (model_from_pretrained_kwargs.fold_ln) */
	char model_name[CIRC_DICT_HOOK_MAX]; /* cfg.json's model_name, or "" */
} circ_dict_cfg;

/* Defaults: standard, none, apply_b_dec_to_input 0, fold_ln 1, no hooks. */
void circ_dict_cfg_init(circ_dict_cfg *c);

/* A dictionary: its config and its weights, f32, in one owned buffer. */
typedef struct circ_dict {
	circ_dict_cfg cfg;
	float *W_enc;	  /* (I, S) */
	float *W_dec;	  /* (S, O) */
	float *b_enc;	  /* (S); NULL for gated */
	float *b_dec;	  /* (O) */
	float *threshold; /* (S) jumprelu, else NULL */
	float *b_gate;	  /* (S) gated, else NULL */
	float *b_mag;	  /* (S) gated, else NULL */
	float *r_mag;	  /* (S) gated, else NULL */
	float *W_skip;	  /* (O, I) with cfg.skip, else NULL */
	float *mem;	  /* the owned buffer every pointer above points into */
	size_t n_params;  /* floats in mem */
	char *path;	  /* directory or file it was read from, or NULL */
	circ_dtype dtype; /* the file's float dtype (F32 for a new one) */
} circ_dict;

/* A zeroed dictionary of config c (checked: sizes positive, k in range,
 * d_out == d_in for SAEs, hooks parse, no skip on an SAE). For training
 * and tests. NULL with a message naming the field. Free with circ_dict_free. */
circ_dict *circ_dict_new(const circ_dict_cfg *c, circ_error *e);
void circ_dict_free(circ_dict *d); /* NULL is a no-op */
/* SAELens's name of d's architecture: "standard", "topk", "jumprelu",
 * "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder" or
 * "jumprelu_skip_transcoder". */
const char *circ_dict_arch_name(const circ_dict *d);

/* The name of d in feature graphs (circ(1) FEATURE GRAPHS): its input
 * hook's point and layer, "resid_pre3", "resid_mid3", "resid3"
 * (hook_resid_post), "attn3" (hook_attn_out), "mlp3" (hook_mlp_out), "z3"
 * (attn.hook_z), "ln2_3" (ln2.hook_normalized), "mlp_in3"; a transcoder is
 * "tc<l>" with l the layer of its output hook. Its nodes are
 * "<name>.f<i>" (feature i) and "<name>.err" (its error node), with
 * "@<t>" for one token position. Written into out (n bytes, at least 16). */
void circ_dict_name(const circ_dict *d, char *out, size_t n);

/* Reads a SAELens directory: dir/cfg.json (architecture, d_in, d_sae,
 * hook_name or metadata.hook_name, apply_b_dec_to_input,
 * normalize_activations; k for topk, at the top or in activation_fn_kwargs;
 * transcoders: d_out and hook_name_out, architecture "transcoder",
 * "skip_transcoder" or "jumprelu_transcoder") and
 * dir/sae_weights.safetensors (F32, F16 or BF16; every tensor of the
 * architecture with its shape, no other tensor); with
 * expected_average_only_in, dir/activation_scaler.json's scaling_factor.
 * NULL with "'<file>': key '<key>': <problem>" or "'<file>': tensor
 * '<name>': <problem>" on any error (missing key, wrong type or shape,
 * unknown architecture, non-finite weight). */
circ_dict *circ_dict_load(const char *dir, circ_error *e);

/* Reads one circuit-tracer per-layer transcoder file (safetensors: W_enc
 * (S, I), W_dec (S, O), b_enc (S), b_dec (O), optional W_skip (O, I), and
 * "activation_function.threshold" or "threshold" (S) for JumpReLU) for
 * layer `layer`, reading hook_in and writing hook_out (suffixes such as
 * "hook_resid_mid", "mlp.hook_in", "hook_mlp_out"; circuit-tracer's
 * config.yaml names them). NULL with a message naming file and tensor. */
circ_dict *circ_dict_load_transcoder_file(const char *path, int layer, const char *hook_in,
					  const char *hook_out, circ_error *e);

/* Writes d as a SAELens directory: dir/cfg.json (the keys SAELens writes,
 * with their JSON types), dir/sae_weights.safetensors in dtype ("F32",
 * "F16" or "BF16"; NULL: F32) and, with a scaling factor,
 * dir/activation_scaler.json. dir is created if missing; files are written
 * atomically. F32 reads back bit-exact through circ_dict_load. -1 with a
 * message naming the file. */
int circ_dict_save(const circ_dict *d, const char *dir, const char *dtype, circ_error *e);

/* A set of dictionaries: one directory holding cfg.json (one dictionary),
 * or subdirectories that each hold one (in name order), or circuit-tracer
 * layer_<L>.safetensors files (hooks from an optional config.yaml's
 * feature_input_hook / feature_output_hook, else hook_resid_mid ->
 * hook_mlp_out). */
typedef struct circ_dict_set {
	int n;
	circ_dict **dict; /* (n) */
} circ_dict_set;
/* NULL with a message naming the file at fault (or the directory when it
 * holds no dictionary). */
circ_dict_set *circ_dict_set_load(const char *dir, circ_error *e);
void circ_dict_set_free(circ_dict_set *s); /* NULL is a no-op */

/* ---- checking against a model ---- */

/* 0 if d's hooks exist in m (layer in range, a known point) and their widths
 * are d_in (input) and d_out (output), and a transcoder reads its MLP's
 * input and writes its output; else -1 with "'<path>': key 'hook_name':
 * ..." or "key 'd_in': ...". */
int circ_dict_check_model(const circ_dict *d, const circ_model *m, circ_error *e);

/* ---- encoding and decoding ---- */

/* Feature activations f (N, S) of x (N, I), as the top of this file says,
 * on the calling thread (the encoder's product through circ_gemm). */
void circ_dict_encode(const circ_dict *d, const float *x, int n, float *f);
/* Reconstruction out (N, O) of f (N, S); x (N, I) is the input (read only
 * for W_skip; may be NULL without it). */
void circ_dict_decode(const circ_dict *d, const float *f, const float *x, int n, float *out);
/* Plain loops in double: the reference twin of encode + decode. */
void circ_dict_encode_ref(const circ_dict *d, const float *x, int n, float *f);
void circ_dict_decode_ref(const circ_dict *d, const float *f, const float *x, int n, float *out);

/* ---- activations at a hook point ---- */

/* The activation of d's input hook (in = 1) or output hook (in = 0) in the
 * last forward of r (a run of the model d was checked against, with node
 * outputs kept): (B*T, width) into out. -1 with a message if the run lacks
 * what it needs. */
int circ_dict_hook_read(const circ_dict *d, int in, const circ_run *r, float *out, circ_error *e);

/* ---- splicing (dict_splice.c) ----
 * The dictionary's output in place of the activation it replaces: an SAE
 * replaces its hook's activation by the reconstruction; a transcoder
 * replaces the MLP's output by its own. Done through receiver deltas: the
 * difference (replacement - original) is added to the input of every
 * receiver downstream of the hook point (for attn.hook_z the difference of
 * z goes through each head's rows of W_O first). */
typedef struct circ_dict_splice circ_dict_splice;
/* A splicer of d (checked against the run's model) for runs of up to
 * max_rows = B*T rows. NULL with a message. */
circ_dict_splice *circ_dict_splice_new(const circ_dict *d, const circ_model *m, int max_rows,
				       circ_error *e);
void circ_dict_splice_free(circ_dict_splice *s); /* NULL is a no-op */
/* The forward hook (circ_fwd.hook, hook_ctx = the splicer). At the stage
 * after the hook point it reads the activation, encodes, decodes and sets
 * the deltas. */
int circ_dict_splice_hook(void *ctx, circ_run *r, int stage, circ_error *e);
/* After a spliced forward: the input activation x (N, I), the feature
 * activations f (N, S), the reconstruction (N, O) and the target (the
 * activation replaced, N, O) of the rows of that forward. */
const float *circ_dict_splice_x(const circ_dict_splice *s);
const float *circ_dict_splice_feats(const circ_dict_splice *s);
const float *circ_dict_splice_recon(const circ_dict_splice *s);
const float *circ_dict_splice_target(const circ_dict_splice *s);
/* zero 1: the hook puts zeros in place of the activation instead (the
 * zero ablation that CE loss recovered compares with); 0: the dictionary. */
void circ_dict_splice_set_zero(circ_dict_splice *s, int zero);
/* The stage at which the hook acts (the first stage reading the replaced
 * activation). */
int circ_dict_splice_stage(const circ_dict_splice *s);
/* Interventions instead of the replacement: at token position pos of every
 * example, feature `feature` is set to value (scale 0) or multiplied by it
 * (scale 1); the activation becomes target + decode(f') - decode(f), so the
 * dictionary's error is kept and no edit gives the model back exactly.
 * Edits are applied in order. The splicer keeps the pointer (n 0: none,
 * the replacement again). */
typedef struct circ_dict_edit {
	int pos, feature, scale;
	float value;
} circ_dict_edit;
void circ_dict_splice_set_edits(circ_dict_splice *s, const circ_dict_edit *ed, int n);

/* ---- measuring (dict.c) ----
 * The numbers SAELens and SAEBench report, summed over batches: MSE (mean
 * over rows and dimensions of (out - target)^2), fraction of variance
 * unexplained (sum of squared errors over the target's total variance about
 * its mean row), L0 (mean number of active features per row), dead
 * (never active) and dense (active on more than dense_threshold of the
 * rows) fractions, a histogram of log10 feature densities, and from the
 * spliced forwards: mean next-token cross-entropy clean, spliced and with the
 * activation zero-ablated, CE loss recovered (CE_zero - CE_spliced) /
 * (CE_zero - CE_clean), and mean KL(clean || spliced) per position. */

/* Histogram of log10(density) of the features that fire: bins of width 0.5
 * from -8 (the first bin takes everything below) to 0. */
#define CIRC_DICT_HIST_BINS 16
#define CIRC_DICT_HIST_LO   (-8.0)
#define CIRC_DICT_HIST_STEP 0.5

typedef struct circ_dict_stats {
	int d_sae, d_out;
	int64_t rows;
	double sse;				  /* sum of (out - target)^2 */
	double sum_sq;				  /* sum of target^2 */
	double *sum;				  /* (O) sum of target per dimension */
	double l0;				  /* sum of active features per row */
	int64_t *fire;				  /* (S) rows on which each feature is active */
	double ce_clean, ce_spliced, ce_zero, kl; /* sums over ce_rows positions */
	int64_t ce_rows;
} circ_dict_stats;

typedef struct circ_dict_summary {
	int64_t rows, ce_rows;
	double mse, fvu, l0, dead_frac, dense_frac;
	double ce_clean, ce_spliced, ce_zero, ce_loss_recovered, kl;
	int64_t n_dead;
	int64_t hist[CIRC_DICT_HIST_BINS];
} circ_dict_summary;

void circ_dict_stats_init(circ_dict_stats *st, const circ_dict *d);
void circ_dict_stats_free(circ_dict_stats *st);
/* Adds n rows: target and out (N, O), features f (N, S). */
void circ_dict_stats_add(circ_dict_stats *st, const float *target, const float *out, const float *f,
			 int n);
/* Adds n positions' logits (N, V) of the clean, spliced and zero-ablated
 * runs with their next tokens (N). */
void circ_dict_stats_add_ce(circ_dict_stats *st, const float *clean, const float *spliced,
			    const float *zero, const int32_t *next, int n, int V);
void circ_dict_stats_summary(const circ_dict_stats *st, double dense_threshold,
			     circ_dict_summary *out);

#endif
