/*
 * dict_train: training sparse dictionaries (SAEs and transcoders) on
 * activations, part of the dict module.
 *
 * A dictionary maps an input x (d_in) to latents f (d_sae) and decodes them
 * to an output y_hat = f W_dec + b_dec (d_out): an SAE reconstructs its own
 * input (d_out = d_in, target y = x), a transcoder predicts another
 * activation (an MLP's output y from its input x). Architectures:
 *   relu       f = ReLU(pre), loss ||y_hat - y||^2 + l1 * sum_i f_i ||W_dec,i||
 *              (Anthropic's April 2024 update: the penalty weighted by each
 *              decoder row's norm, the decoder unconstrained, the L1
 *              coefficient warmed up linearly)
 *   topk       f = ReLU(TopK_k(pre)) per token, unit-norm decoder rows, plus
 *              aux_coeff * AuxK: the residual y - y_hat (a constant) fitted
 *              by the top k_aux latents among the dead ones (Gao et al.
 *              2024), scaled by min(n_dead / k_aux, 1)
 *   batchtopk  the top B*k positive pre-activations of the whole batch
 *              (Bussmann et al. 2024), AuxK as topk; the inference threshold
 *              is a running mean of the smallest kept activation
 *   jumprelu   f = pre * H(pre - theta), theta = exp(log_theta), loss
 *              ||y_hat - y||^2 + l0 * sum_i H(pre_i - theta_i); theta's
 *              gradient by the straight-through estimator with the rectangle
 *              kernel of width `bandwidth` (Rajamanoharan et al. 2024),
 *              unit-norm decoder rows
 * where pre = (x - b_dec) W_enc + b_enc for an SAE with apply_b_dec_to_input
 * (else x W_enc + b_enc). A transcoder may add a skip connection:
 * y_hat += x W_skip^T (Paulo et al. 2025; SAELens's skip_transcoder). Losses are means over the
 * batch of per-token sums. Unit-norm decoders get the gradient's component along each row removed
 * before the step and their rows renormalised after it.
 *
 * The optimiser is AdamW as torch.optim.AdamW (weight decay on W_enc and
 * W_dec only), the learning rate warmed up linearly, held, then decayed
 * linearly over the last `decay` steps; optional global-norm clipping.
 * Dead latents: a latent that has not fired for dead_tokens tokens.
 *
 * Speed: the encoder is one dense product split over the thread pool; TopK
 * and BatchTopK decode, and take every gradient, from their k active latents
 * per token (sparse rows, then a latent-major pass in a fixed order), never
 * a dense (B, d_sae) product; so does relu on a batch whose activations are
 * sparse enough (sparse_below: a trained SAE's L0 is a few hundred of tens of
 * thousands), else it uses GEMMs. OpenBLAS runs single-threaded inside the pool's
 * parts: the same seed and thread count give the same bytes.
 *
 * Data: a shuffled buffer in memory (circ_dbuf) fed by a source callback; a
 * source for a superposition fixture (known feature directions) and one that
 * harvests a model's activations at TransformerLens hook points
 * (circ_dharvest). Checkpoints are safetensors files; resuming from one
 * gives the same bytes as the uninterrupted run.
 *
 * Internal layout: W_enc is kept transposed, (d_sae, d_in), so that a
 * latent's encoder and decoder rows are both contiguous; circ_dtrain_export
 * gives SAELens's (d_in, d_sae).
 *
 * Dimension letters: B tokens in a batch, D = d_in, O = d_out, S = d_sae.
 *
 * Layering: dict uses util, rng, kernels, safetensors, topology and model.
 */
#ifndef CIRC_DICT_TRAIN_H
#define CIRC_DICT_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "dict.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "util.h"

typedef enum circ_dtrain_arch {
	CIRC_DTRAIN_RELU,
	CIRC_DTRAIN_TOPK,
	CIRC_DTRAIN_BATCHTOPK,
	CIRC_DTRAIN_JUMPRELU,
	CIRC_DTRAIN_ARCH_COUNT
} circ_dtrain_arch;

/* "relu", "topk", "batchtopk", "jumprelu"; parse returns -1 if unknown. */
const char *circ_dtrain_arch_name(circ_dtrain_arch a);
int circ_dtrain_arch_parse(const char *s, circ_dtrain_arch *a);

typedef struct circ_dtrain_opts {
	circ_dtrain_arch arch;
	int d_in, d_out, d_sae;	  /* D, O (= D for an SAE), S */
	int transcoder;		  /* 1: target y given separately (else y = x) */
	int skip;		  /* transcoder only: a learned skip connection W_skip
				   * (O, D): y_hat += x W_skip^T (SAELens's
				   * skip_transcoder; starts at zero, no weight decay) */
	int apply_b_dec_to_input; /* SAE only: pre = (x - b_dec) W_enc + b_enc */
	int k;			  /* topk, batchtopk: active latents per token */
	int k_aux;		  /* AuxK latents (0: off) */
	double aux_coeff;	  /* AuxK weight */
	int64_t dead_tokens;	  /* tokens without firing that make a latent dead */
	double l1;		  /* relu: L1 coefficient */
	int64_t l1_warmup;	  /* relu: steps of linear warm-up of l1 */
	double l0;		  /* jumprelu: L0 coefficient */
	double bandwidth;	  /* jumprelu: STE kernel width */
	double threshold_init;	  /* jumprelu: initial theta */
	double dec_init_norm;	  /* norm of the initial decoder rows */
	double sparse_below;	  /* relu: a batch whose activations are denser than
				   * this fraction goes the dense way (GEMMs), a
				   * sparser one the sparse way (0: always dense,
				   * 1: always sparse) */
	double lr, min_lr;	  /* peak rate; final rate as a fraction of it */
	int64_t steps, warmup, decay;
	double beta1, beta2, eps, weight_decay, clip; /* clip <= 0: none */
	int batch;				      /* B: tokens per step */
	int threads;
	uint64_t seed;
} circ_dtrain_opts;

/* Defaults for architecture a (dimensions left 0): k 32, k_aux d_in/2 at
 * circ_dtrain_new, aux 1/32, dead after 10M tokens, l1 5 with warm-up over
 * 5% of the steps, l0 1e-3 (scaled by nothing: set it), bandwidth 1e-3,
 * theta 1e-3, decoder rows of norm 0.1 (relu) or 1, sparse_below 0.05, lr 4e-4 (relu 5e-5),
 * min_lr 0, 1000 steps, no warm-up, decay over the last 20% (relu) or none,
 * betas 0.9/0.999, eps 1e-8, no weight decay, clip 1 (relu) or none, batch
 * 4096, 1 thread, seed 0. */
void circ_dtrain_opts_default(circ_dtrain_opts *o, circ_dtrain_arch a);

/* Per-step numbers (means over the batch's tokens). */
typedef struct circ_dtrain_stats {
	double loss;	  /* what the step minimised */
	double mse;	  /* ||y_hat - y||^2 per token */
	double fvu;	  /* mse over the batch's variance of y (per token) */
	double sparsity;  /* the L1 or L0 term (relu, jumprelu) */
	double aux;	  /* the weighted AuxK term */
	double l0;	  /* active latents per token */
	double dead_frac; /* dead latents after the step / S */
	double lr;
} circ_dtrain_stats;

typedef struct circ_dtrain circ_dtrain;

/* A trainer with freshly initialised parameters (from o->seed: decoder rows
 * random directions of norm dec_init_norm; W_enc = W_dec^T for an SAE, its
 * own random directions for a transcoder; biases 0; log theta = log
 * threshold_init). NULL with a message on bad options. */
circ_dtrain *circ_dtrain_new(const circ_dtrain_opts *o, circ_error *e);
void circ_dtrain_free(circ_dtrain *t); /* NULL is a no-op */
const circ_dtrain_opts *circ_dtrain_options(const circ_dtrain *t);

/* The parameters, one buffer in this order (views below). */
typedef struct circ_dtrain_view {
	float *W_enc_t;	  /* (S, D) */
	float *b_enc;	  /* (S) */
	float *W_dec;	  /* (S, O) */
	float *b_dec;	  /* (O) */
	float *W_skip;	  /* (O, D) with skip; NULL otherwise */
	float *log_theta; /* (S) jumprelu; NULL otherwise */
} circ_dtrain_view;
size_t circ_dtrain_n_params(const circ_dtrain *t);
float *circ_dtrain_params(circ_dtrain *t); /* (n_params) */
/* The gradient of the last circ_dtrain_grad or step (after the decoder
 * projection and clipping, as the optimiser saw it): (n_params). */
const float *circ_dtrain_grads(const circ_dtrain *t);
void circ_dtrain_views(circ_dtrain *t, float *buf, circ_dtrain_view *v); /* views into buf */
int64_t circ_dtrain_step_count(const circ_dtrain *t);
/* dead[i] = 1 if latent i is dead now: (S). */
void circ_dtrain_dead(const circ_dtrain *t, unsigned char *dead);
/* Sets the dead-latent counters so that exactly the latents with dead[i]
 * set are dead (for tests; needs dead_tokens > 0). */
void circ_dtrain_set_dead(circ_dtrain *t, const unsigned char *dead);
/* The batchtopk inference threshold (0 before any step). */
double circ_dtrain_batch_threshold(const circ_dtrain *t);

/* b_dec = the mean of rows y (n, O) (an SAE's usual start). */
void circ_dtrain_init_b_dec(circ_dtrain *t, const float *y, size_t n);

/* Loss and gradient of one batch for the current parameters, no update and
 * no change of the dead-latent counters or the step (for tests): x (B, D),
 * y (B, O) for a transcoder (NULL for an SAE), B <= o->batch. The gradient
 * is the raw one (no projection, no clipping): circ_dtrain_grads. */
int circ_dtrain_grad(circ_dtrain *t, const float *x, const float *y, int B, circ_dtrain_stats *st,
		     circ_error *e);

/* One optimisation step on x (B, D) and y (transcoder). st may be NULL. */
int circ_dtrain_step(circ_dtrain *t, const float *x, const float *y, int B, circ_dtrain_stats *st,
		     circ_error *e);

/* The learning rate of step s (0-based) under o. */
double circ_dtrain_lr(const circ_dtrain_opts *o, int64_t s);

/* The dictionary in SAELens's layout: W_enc (D, S), b_enc (S), W_dec (S, O),
 * b_dec (O), threshold (S) (jumprelu: exp(log_theta); batchtopk: the
 * running threshold for every latent; others: may be NULL, not written). */
void circ_dtrain_export(const circ_dtrain *t, float *W_enc, float *b_enc, float *W_dec,
			float *b_dec, float *threshold);

/* ---- checkpoints ---- */

/* Adds the trainer's state (parameters, moments, step, dead counters,
 * batchtopk threshold) to a safetensors file at path, with n extra tensors
 * and n_meta extra metadata pairs of the caller (its data state). -1 with a
 * message on I/O errors. */
int circ_dtrain_save(const circ_dtrain *t, const char *path, int n, const circ_st_tensor *extra,
		     int n_meta, const char *const *meta, circ_error *e);
/* Restores a trainer made with the same options from an open checkpoint
 * (the options' fingerprint must match: -1 naming the difference). */
int circ_dtrain_restore(circ_dtrain *t, const circ_st *f, circ_error *e);

/* ---- the shuffled buffer ---- */

/* Writes n rows of the source's width into rows; -1 with a message. */
typedef int (*circ_dbuf_fill)(void *ctx, float *rows, size_t n, circ_error *e);

/* A buffer of cap rows of width floats, filled from fill and mixed by
 * Fisher-Yates from seed: batches are served in a shuffled order of its
 * slots; when half of it is served, those slots are refilled and the
 * order of all of them shuffled again (SAELens's mixing). Rows are never
 * moved: the order is a permutation of slots, so a buffer larger than
 * memory can live on disk. cap >= 2. */
typedef struct circ_dbuf circ_dbuf;
circ_dbuf *circ_dbuf_new(size_t cap, int width, uint64_t seed, circ_dbuf_fill fill, void *ctx);
/* The same with its rows in a file in dir (made there, unlinked at once so
 * that nothing is left behind, its space reserved up front and mapped):
 * the kernel keeps in memory only the pages in use. NULL with "'<dir>':
 * ..." when the file cannot be made, reserved (no space) or mapped. */
circ_dbuf *circ_dbuf_new_file(size_t cap, int width, uint64_t seed, circ_dbuf_fill fill, void *ctx,
			      const char *dir, circ_error *e);
void circ_dbuf_free(circ_dbuf *b); /* NULL is a no-op */
/* The next n rows (n <= cap / 2) into out (n, width). */
int circ_dbuf_next(circ_dbuf *b, float *out, size_t n, circ_error *e);
/* The whole buffer (cap rows, in slot order), filled first if it is new:
 * for statistics of the data before training (the rows served are the
 * same). */
const float *circ_dbuf_peek(circ_dbuf *b, size_t *n, circ_error *e);
/* The rows that the source has written so far. */
int64_t circ_dbuf_rows_in(const circ_dbuf *b);
/* The buffer's state as checkpoint tensors/metadata: fills t[0..1]
 * ("dbuf.rows", "dbuf.perm") and meta[0..3] (two pairs; the strings live in
 * the buffer until the next call). Restore checks the sizes and that the
 * order is a permutation, and puts the state back. */
void circ_dbuf_state(circ_dbuf *b, circ_st_tensor *t, const char **meta);
int circ_dbuf_restore(circ_dbuf *b, const circ_st *f, circ_error *e);

/* ---- a superposition fixture ---- */

/* n_feat known unit directions in R^d (and, for a transcoder, n_feat in
 * R^d_out): each token is sum_i a_i v_i over a sparse set of active
 * features, a_i uniform in [0.5, 1.5). Features come in groups: the first
 * n_corr pairs fire together (each pair: both with probability p, each alone
 * with probability p/4), the next n_anti pairs never together (one of the
 * two with probability p), the rest independently with probability p.
 * Deterministic from seed. */
typedef struct circ_dfix circ_dfix;
circ_dfix *circ_dfix_new(int d, int d_out, int n_feat, int n_corr, int n_anti, double p,
			 uint64_t seed);
void circ_dfix_free(circ_dfix *f);
/* The true directions: (n_feat, d) input side, (n_feat, d_out) output side
 * (d_out 0: NULL). */
const float *circ_dfix_dirs(const circ_dfix *f);
const float *circ_dfix_out_dirs(const circ_dfix *f);
/* A circ_dbuf_fill: rows of d (+ d_out) floats. */
int circ_dfix_fill(void *ctx, float *rows, size_t n, circ_error *e);

/* Mean over the n true directions (n, d) of the largest cosine similarity
 * with any of the m learned rows (m, d). */
double circ_dtrain_recovery(const float *truth, int n, const float *learned, int m, int d);

/* ---- the dictionary trained ---- */

/* The cfg.json side of the trained dictionary into c (after
 * circ_dict_cfg_init; the caller names the hooks): relu -> "standard",
 * topk -> "topk" with k, batchtopk and jumprelu -> "jumprelu" (batchtopk's
 * threshold the same for every latent, as SAELens saves it),
 * apply_b_dec_to_input, d_in, d_sae, d_out, transcoder, skip. */
void circ_dtrain_dict_cfg(const circ_dtrain *t, circ_dict_cfg *c);
/* The parameters into d (made by circ_dict_new from that config). */
void circ_dtrain_to_dict(const circ_dtrain *t, circ_dict *d);

/* ---- activations from a model ---- */

/* Token sequences for the harvester: fills tokens (B, T) with the next B
 * sequences of T tokens; returns the number given (< B only at the end of
 * the corpus: 0 then), -1 with a message. */
typedef int (*circ_dtokens_fn)(void *ctx, int32_t *tokens, int B, int T, circ_error *e);

/* Harvests rows [input hook | output hook] (the output only for a
 * transcoder) of dictionary d's hooks (circ_dict_hook_read) from forwards
 * of m over seqs sequences of ctx_len tokens at a time, each stopped after
 * the last stage it needs; a circ_dbuf_fill over it (circ_dharvest_fill).
 * d must have been checked against m (circ_dict_check_model); only its
 * config is read. At the corpus's end a fill fails with "corpus exhausted
 * after N sequences". */
typedef struct circ_dharvest circ_dharvest;
circ_dharvest *circ_dharvest_new(const circ_model *m, const circ_dict *d, int seqs, int ctx_len,
				 int threads, circ_dtokens_fn tokens, void *tokens_ctx,
				 circ_error *e);
void circ_dharvest_free(circ_dharvest *h); /* NULL is a no-op */
int circ_dharvest_fill(void *ctx, float *rows, size_t n, circ_error *e);
int circ_dharvest_width(const circ_dharvest *h); /* d_in (+ d_out) */
/* Sequences read from the token source so far. */
int64_t circ_dharvest_seqs(const circ_dharvest *h);
/* The rows harvested and not yet handed out, as a checkpoint tensor and
 * one metadata pair (meta[0..1]); restore puts them back (a resumed run first skips
 * circ_dharvest_seqs of the checkpoint's sequences in its corpus: the
 * restored count, read by the caller from metadata "dharvest.seqs"). */
void circ_dharvest_state(circ_dharvest *h, circ_st_tensor *t, const char **meta);
int circ_dharvest_restore(circ_dharvest *h, const circ_st *f, circ_error *e);

#endif
