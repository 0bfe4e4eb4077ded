/*
 * train: training small GPT-2- and Llama-architecture models on circ's synthetic tasks,
 * so that circ can ship models whose behaviour is known (issue 7).
 *
 * Pieces, from the bottom up:
 *   - GPT-2's initialisation of a parameter buffer (circ_weights_alloc
 *     layout), from a seed;
 *   - AdamW as PyTorch defines it (decoupled weight decay, bias-corrected
 *     moments), global-norm gradient clipping as clip_grad_norm_ does it,
 *     and a linear-warmup cosine learning-rate schedule;
 *   - a trainer: one run of the model (lib/model) with a backward arena and
 *     a parameter-gradient buffer; a step is forward at the loss rows,
 *     cross-entropy, backward with parameter gradients, clipping, AdamW;
 *   - task data: a byte-level BPE vocabulary built for a task (every word
 *     of its prompts one token), and batches drawn from the task's own
 *     generator (lib/tasks, the recipes circ-dataset writes), so a trained
 *     model is evaluated on exactly the datasets the pipelines make;
 *   - diagnostics that need no discovery method: per-head previous-token,
 *     induction and duplicate-token attention scores on repeated random
 *     token sequences.
 *
 * Determinism: every random draw comes from lib/rng streams derived from
 * the seed, sums over rows run in a fixed order, and OpenBLAS is given a
 * fixed thread count: the same seed and thread count give the same bytes.
 *
 * Dimension letters: B sequences, T tokens, N loss rows, V vocabulary,
 * L layers, H heads, n parameters.
 *
 * Layering: train uses util, rng, bpe, tasks, kernels, model and metric.
 */
#ifndef CIRC_TRAIN_H
#define CIRC_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "bpe.h"
#include "metric.h"
#include "model.h"
#include "util.h"

/* ---- parameters ---- */

/* Fills w (a circ_weights_alloc layout of c) as GPT-2 initialises a model:
 * wte, wpe and the matrices normal(0, 0.02), the two c_proj matrices of
 * each layer normal(0, 0.02 / sqrt(2L)), LayerNorm weights 1, biases 0.
 * A pure function of c and seed. */
void circ_train_init_weights(circ_weights *w, const circ_config *c, uint64_t seed);

/* The same for a model of another family made by circ_model_new_family
 * (or opened with copy): every matrix and the embeddings normal(0, 0.02),
 * o_proj and down_proj normal(0, 0.02 / sqrt(2L)), norm scales 1 (Gemma's
 * 1 + w: w = 0), q and k biases normal(0, qk_bias_sd) (so that a score of
 * position alone, b_q . RoPE(d) b_k, is there from the start; 0.02 as the
 * matrices, or larger: with 1 a small Llama grows the induction circuit,
 * fixtures/README.md), other biases 0, drawn in the flat order
 * (circ_model_params). */
void circ_train_init_family(circ_model *m, uint64_t seed, double qk_bias_sd);

/* A new (n_params) array: 1 for parameters that get weight decay (the
 * embeddings and every matrix), 0 for biases and LayerNorm parameters, in
 * the circ_weights_alloc order. Free with free(). */
unsigned char *circ_train_decay_mask(const circ_config *c);

/* ---- optimiser ---- */

typedef struct circ_adamw_opts {
	double beta1, beta2, eps, weight_decay;
} circ_adamw_opts;
/* PyTorch's AdamW defaults: 0.9, 0.999, 1e-8, weight decay 0.01. */
void circ_adamw_opts_default(circ_adamw_opts *o);

typedef struct circ_adamw circ_adamw;
/* State for n parameters (moments zeroed, step 0). decay_mask (n) says
 * which parameters decay; NULL: all of them. The mask is copied. */
circ_adamw *circ_adamw_new(size_t n, const unsigned char *decay_mask, const circ_adamw_opts *o);
void circ_adamw_free(circ_adamw *a); /* NULL is a no-op */
/* One step at learning rate lr, as torch.optim.AdamW does it: p *= 1 -
 * lr*wd (decaying parameters only); m = b1 m + (1-b1) g; v = b2 v + (1-b2)
 * g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). */
void circ_adamw_step(circ_adamw *a, float *p, const float *g, double lr);
int64_t circ_adamw_steps(const circ_adamw *a); /* steps taken */

/* Global-norm clipping as torch.nn.utils.clip_grad_norm_: returns the norm
 * of g (n) before clipping (summed in double) and, when it exceeds
 * max_norm > 0, scales g by max_norm / (norm + 1e-6). */
double circ_clip_grad_norm(float *g, size_t n, double max_norm);

/* Learning rate at step (0-based) of steps: linear warmup from lr/warmup to
 * lr over the first warmup steps, then cosine decay to lr * min_frac at
 * the last step. */
double circ_lr_schedule(double lr, double min_frac, int warmup, int steps, int step);

/* ---- batches ---- */

/* Token sequences (right-padded to T) and the rows where the loss is
 * taken, each with its target id. Grown by circ_batch_reserve. */
typedef struct circ_tbatch {
	int B, T;
	int32_t *tokens;  /* (B, T) */
	int N;		  /* loss rows */
	circ_read *rows;  /* (N) (sequence, position) */
	int32_t *targets; /* (N) the next token at each row */
	size_t cap_tok, cap_rows;
} circ_tbatch;
/* Makes room for B x T tokens and N rows (contents kept). */
void circ_tbatch_reserve(circ_tbatch *b, int B, int T, int N);
void circ_tbatch_free(circ_tbatch *b); /* frees the arrays; NULL-safe fields */

/* ---- the trainer ---- */

typedef struct circ_train_opts {
	int threads; /* OpenBLAS and kernel threads (>= 1) */
	double clip; /* global gradient-norm limit; <= 0: none */
	circ_adamw_opts adam;
} circ_train_opts;
void circ_train_opts_default(circ_train_opts *o); /* 1 thread, clip 1.0, AdamW defaults */

typedef struct circ_trainer circ_trainer;

/* A trainer that updates m's weights in place. m must own one writable
 * parameter buffer in the circ_weights_alloc layout (a model made by
 * circ_model_new), or, for another family, hold its weights in the flat
 * order (circ_model_params: circ_model_new_family, or opened with copy;
 * a family whose parameter gradients are implemented, circ_bwd.dparams);
 * there weight decay applies to every 2-D tensor. Batches may have up to max_b sequences of up to
 * max_t tokens. NULL with a message if m is not such a model or the sizes are bad. The trainer must
 * be freed before m. */
circ_trainer *circ_trainer_new(circ_model *m, int max_b, int max_t, const circ_train_opts *o,
			       circ_error *e);
void circ_trainer_free(circ_trainer *t); /* NULL is a no-op */

/* One optimisation step on b at learning rate lr: forward at b's loss rows,
 * mean cross-entropy, backward with parameter gradients, clipping, AdamW.
 * *loss and *grad_norm (before clipping) are set when not NULL. -1 with a
 * message on a bad batch (ids outside the vocabulary, sizes, rows). */
int circ_trainer_step(circ_trainer *t, const circ_tbatch *b, double lr, double *loss,
		      double *grad_norm, circ_error *e);

/* The gradient of the mean loss of b for the current weights, without an
 * update (for tests): fills the trainer's gradient buffer, returned by
 * circ_trainer_grads, and *loss. */
int circ_trainer_grad(circ_trainer *t, const circ_tbatch *b, double *loss, circ_error *e);
const circ_weights *circ_trainer_grads(const circ_trainer *t);
/* The gradient buffer as one (n_params) array: the circ_weights_alloc
 * layout (GPT-2) or the flat order (other families). */
const float *circ_trainer_grad_flat(const circ_trainer *t);

/* Forward only: per-row losses (N) and, when logits_out is not NULL, a
 * pointer to the logits rows (N, V) (valid until the next call). */
int circ_trainer_eval(circ_trainer *t, const circ_tbatch *b, float *row_loss,
		      const float **logits_out, circ_error *e);

/* ---- task data ---- */

typedef struct circ_ttask_opts {
	const char *task; /* "induction", "ioi", "greater-than" */
	/* induction */
	int32_t vocab_lo, vocab_hi; /* ids drawn from [lo, hi) (default 0, 256) */
	int seq_len;		    /* training sequence length (default 24) */
	int chunks;		    /* repeated chunks per sequence (default 4) */
	int min_rep, max_rep;	    /* ids per chunk (default 2, 3) */
	int copies;		    /* times each chunk appears (default 2) */
	int64_t focus;		    /* the first `focus` batches take the loss only
				     * where the next id repeats a chunk's (the
				     * rest at every position; default 0) */
	int eval_len;		    /* repeated length of the evaluation set (12);
				     * 2 eval_len <= seq_len */
	/* ioi */
	int n_names; /* the first K names of the IOI list (16) */
	/* all */
	int64_t n_train; /* text tasks: examples generated for training */
	int64_t n_eval;	 /* evaluation examples (default 500) */
} circ_ttask_opts;
void circ_ttask_opts_default(circ_ttask_opts *o);

/* Writes dir/vocab.json and dir/merges.txt: a byte-level BPE vocabulary
 * for the task. All 256 byte tokens, merges learned (by BPE's own
 * most-frequent-pair rule) until every word of the task's prompts is one
 * token, then <|endoftext|>. ioi: the chosen names are single tokens and no
 * other name of the IOI list is; greater-than: " 11" .. " 17" and all
 * two-digit "00" .. "99" are tokens and " CCYY" encodes as [" CC", "YY"].
 * induction: the byte tokens and <|endoftext|> only. -1 with a message on
 * an I/O error or if a check fails. */
int circ_ttask_write_vocab(const circ_ttask_opts *o, const char *dir, circ_error *e);

typedef struct circ_ttask circ_ttask;
/* Task data over a vocabulary (loaded from the directory written above).
 * Text tasks generate n_train training examples with circ-dataset's
 * generator (seed derived from `seed`) and n_eval evaluation examples with
 * generator seed 0 (the examples `circ-dataset TASK --seed 0 --model-dir`
 * writes). Takes no ownership of bpe (it must outlive the task). */
circ_ttask *circ_ttask_new(const circ_ttask_opts *o, circ_bpe *bpe, uint64_t seed, circ_error *e);
void circ_ttask_free(circ_ttask *t);
/* Longest sequence a batch can have (the model's n_ctx must be >= it). */
int circ_ttask_max_len(const circ_ttask *t);
/* Fills b with B training sequences drawn with the task's generator:
 * induction, fresh random sequences in which `chunks` short runs of ids
 * each appear `copies` times at random places, loss at every position (in
 * the first `focus` batches drawn, only where the next id repeats a run's);
 * text tasks, the next examples of the
 * training set (cycled), loss at the last prompt position, target the answer (greater-than: one
 * correct year drawn uniformly). */
void circ_ttask_batch(circ_ttask *t, int B, circ_tbatch *b);

/* Evaluation on the task's evaluation set. */
typedef struct circ_ttask_eval {
	int64_t n;
	/* induction: mean loss predicting tokens 1..L-1 (first half) and
	 * L+1..2L-1 (repeated half), top-1 accuracy in the repeated half */
	double loss_first, loss_repeat, acc_repeat;
	/* ioi: mean logit(IO) - logit(S), fraction > 0, top-1 = IO;
	 * greater-than: mean prob_diff, fraction with more probability on later
	 * years, top-1 a later year */
	double metric, acc_pair, acc_top1;
	double loss; /* mean cross-entropy of the training target */
} circ_ttask_eval;
int circ_ttask_evaluate(circ_ttask *t, circ_trainer *tr, int batch, circ_ttask_eval *out,
			circ_error *e);

/* ---- diagnostics ---- */

/* Per-head attention scores on B repeated random sequences s s (len
 * distinct ids from [lo, hi) each, never `skip` (e.g. <|endoftext|>; -1:
 * none), drawn from seed): for each layer l and
 * head h, (L, H) arrays of
 *   prev  mean attention from position t to t-1, over t = 1 .. 2len-1;
 *   ind   mean attention from t to t-len+1 (the token after the previous
 *         occurrence of the current token), over t = len .. 2len-1;
 *   dup   mean attention from t to t-len (the previous occurrence itself).
 * 2*len must fit the model's context. -1 with a message otherwise. */
int circ_diag_heads(const circ_model *m, int B, int len, int32_t lo, int32_t hi, int32_t skip,
		    uint64_t seed, int threads, double *prev, double *ind, double *dup,
		    circ_error *e);

#endif
