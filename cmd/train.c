/*
 * circ-train: trains a small GPT-2- or Llama-architecture model on one of circ's
 * synthetic tasks (induction, ioi, greater-than) and writes it as a Hugging
 * Face directory that every circ tool reads: config.json, model.safetensors,
 * vocab.json, merges.txt, plus circ.mk (the pipelines' dataset settings for
 * the model) and README.md (the command, the settings and the evaluation).
 * With --diagnose DIR it prints per-head attention scores (previous-token,
 * induction, duplicate-token) of any model directory instead.
 *
 * Everything is built in DIR.tmp-<pid> and renamed into place at the end, so
 * an interrupted run never leaves a directory that looks complete. The
 * output is a function of the options and the thread count.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "batch.h"
#include "bpe.h"
#include "model.h"
#include "cli/opt.h"
#include "dict_train.h"
#include "train.h"

enum {
	OPT_OUT = CIRC_OPT_FIRST_TOOL,
	OPT_SEED,
	OPT_STEPS,
	OPT_BATCH,
	OPT_LR,
	OPT_MIN_LR,
	OPT_WARMUP,
	OPT_WD,
	OPT_CLIP,
	OPT_LAYERS,
	OPT_HEADS,
	OPT_EMBD,
	OPT_INNER,
	OPT_CTX,
	OPT_THREADS,
	OPT_LOG,
	OPT_EVAL,
	OPT_NAMES,
	OPT_SEQ_LEN,
	OPT_MIN_REP,
	OPT_MAX_REP,
	OPT_CHUNKS,
	OPT_COPIES,
	OPT_FOCUS,
	OPT_LEN,
	OPT_VOCAB_LO,
	OPT_VOCAB_HI,
	OPT_DIAGNOSE,
	OPT_ARCH,
	OPT_KV_HEADS,
	OPT_ATTN_BIAS,
	OPT_QK_BIAS_SD,
	OPT_N,
};

static const circ_opt opts[] = {
    {"out", OPT_OUT, "DIR", "write the trained model directory DIR"},
    {"seed", OPT_SEED, "S", "random seed for weights and data, 0..2^63-1 (default 0)"},
    {"steps", OPT_STEPS, "N", "optimisation steps (default: per task, see the manual)"},
    {"batch", OPT_BATCH, "B", "sequences per step (default 32)"},
    {"lr", OPT_LR, "LR", "peak learning rate (default: per task)"},
    {"min-lr", OPT_MIN_LR, "F", "final learning rate as a fraction of the peak (default 0.1)"},
    {"warmup", OPT_WARMUP, "N", "linear warm-up steps (default: steps/20)"},
    {"weight-decay", OPT_WD, "WD", "AdamW weight decay of matrices and embeddings (default 0.01)"},
    {"clip", OPT_CLIP, "G", "clip the gradient's global norm to G; 0: off (default 1)"},
    {"layers", OPT_LAYERS, "L", "transformer layers (default 2)"},
    {"heads", OPT_HEADS, "H", "attention heads per layer (default 4)"},
    {"embd", OPT_EMBD, "C", "residual width, a multiple of the heads (default 64)"},
    {"inner", OPT_INNER, "F", "MLP width (default 4C)"},
    {"ctx", OPT_CTX, "P", "context length n_ctx (default: the task's longest sequence)"},
    {"threads", OPT_THREADS, "N", "threads for the matrix products and circ's kernels"},
    {"log", OPT_LOG, "N", "print the mean loss every N steps on stderr (default 0: never)"},
    {"eval", OPT_EVAL, "N", "evaluation examples, generator seed 0 (default 500)"},
    {"names", OPT_NAMES, "K", "ioi: use the first K names of the IOI list (default 16)"},
    {"seq-len", OPT_SEQ_LEN, "T", "induction: training sequence length (default 24)"},
    {"chunks", OPT_CHUNKS, "K", "induction: repeated chunks per training sequence (default 4)"},
    {"min-rep", OPT_MIN_REP, "N", "induction: fewest ids in a chunk (default 2)"},
    {"max-rep", OPT_MAX_REP, "N", "induction: most ids in a chunk (default 3)"},
    {"copies", OPT_COPIES, "N", "induction: times each chunk appears (default 2)"},
    {"focus", OPT_FOCUS, "N",
     "induction: the first N steps take the loss only at chunks' repeated ids (default 0)"},
    {"len", OPT_LEN, "L",
     "induction and --diagnose: repeated length of the evaluation sequences (default: half "
     "of --seq-len; --diagnose: half the context, at most 16)"},
    {"vocab-lo", OPT_VOCAB_LO, "ID", "induction and --diagnose: smallest id drawn (default 0)"},
    {"vocab-hi", OPT_VOCAB_HI, "ID",
     "induction and --diagnose: ids drawn are below this (default 256; --diagnose: V)"},
    {"diagnose", OPT_DIAGNOSE, "DIR",
     "print per-head previous-token, induction and duplicate-token scores of DIR"},
    {"arch", OPT_ARCH, "A", "architecture of the model: gpt2 or llama (default gpt2)"},
    {"kv-heads", OPT_KV_HEADS, "K",
     "llama: key/value heads (grouped-query attention), dividing --heads (default: --heads)"},
    {"attn-bias", OPT_ATTN_BIAS, NULL,
     "llama: biases on q, k, v and o (attention_bias), q and k's drawn normal(0, --qk-bias-sd)"},
    {"qk-bias-sd", OPT_QK_BIAS_SD, "SD",
     "llama with --attn-bias: standard deviation of q and k's initial biases (default 0.02)"},
    {"n", OPT_N, "N", "--diagnose: number of random sequences (default 64)"},
    {0},
};

static struct {
	const char *out, *diagnose;
	uint64_t seed;
	int steps, batch, warmup, layers, heads, embd, inner, ctx, threads, log, n;
	int llama, kv_heads, attn_bias;
	double lr, min_lr, wd, clip, qk_bias_sd;
	circ_ttask_opts t;
	int given_vlo, given_vhi, given_len;
	const char *task_only[OPT_N - CIRC_OPT_FIRST_TOOL + 1];
	const char *given[OPT_N - CIRC_OPT_FIRST_TOOL + 1];
} o = {.steps = -1,
       .batch = 32,
       .warmup = -1,
       .layers = 2,
       .heads = 4,
       .embd = 64,
       .threads = 0,
       .n = 64,
       .lr = -1,
       .min_lr = 0.1,
       .wd = 0.01,
       .clip = 1.0,
       .qk_bias_sd = 0.02};

static const char *opt_name(int key)
{
	for (const circ_opt *p = opts; p->name; p++)
		if (p->key == key)
			return p->name;
	return "?";
}

static int handle(int key, const char *arg, void *ctx)
{
	const char *task = NULL, *name = NULL;
	(void)ctx;
	switch (key) {
	case OPT_OUT:
		if (!*arg)
			circ_usage_error("option '--out': empty output path");
		o.out = arg;
		break;
	case OPT_SEED: o.seed = (uint64_t)circ_opt_i64("seed", arg, 0, INT64_MAX); break;
	case OPT_STEPS: o.steps = (int)circ_opt_i64("steps", arg, 1, 10000000); break;
	case OPT_BATCH: o.batch = (int)circ_opt_i64("batch", arg, 1, 65536); break;
	case OPT_LR: o.lr = circ_opt_f64_in("lr", arg, 0, 1, 1, 1); break;
	case OPT_MIN_LR: o.min_lr = circ_opt_f64_in("min-lr", arg, 0, 0, 1, 0); break;
	case OPT_WARMUP: o.warmup = (int)circ_opt_i64("warmup", arg, 0, 10000000); break;
	case OPT_WD: o.wd = circ_opt_f64_in("weight-decay", arg, 0, 0, 1, 1); break;
	case OPT_CLIP:
		o.clip = circ_opt_f64("clip", arg);
		if (!isfinite(o.clip) || o.clip < 0)
			circ_usage_error("option '--clip': '%s' is not a finite number >= 0", arg);
		break;
	case OPT_LAYERS: o.layers = (int)circ_opt_i64("layers", arg, 1, 64); break;
	case OPT_HEADS: o.heads = (int)circ_opt_i64("heads", arg, 1, 64); break;
	case OPT_EMBD: o.embd = (int)circ_opt_i64("embd", arg, 1, 4096); break;
	case OPT_INNER: o.inner = (int)circ_opt_i64("inner", arg, 1, 65536); break;
	case OPT_CTX: o.ctx = (int)circ_opt_i64("ctx", arg, 2, 8192); break;
	case OPT_THREADS: o.threads = (int)circ_opt_i64("threads", arg, 1, CIRC_THREADS_MAX); break;
	case OPT_LOG: o.log = (int)circ_opt_i64("log", arg, 0, 10000000); break;
	case OPT_EVAL: o.t.n_eval = circ_opt_i64("eval", arg, 1, 1000000); break;
	case OPT_NAMES:
		o.t.n_names = (int)circ_opt_i64("names", arg, 5, 100);
		task = "ioi", name = "names";
		break;
	case OPT_SEQ_LEN:
		o.t.seq_len = (int)circ_opt_i64("seq-len", arg, 4, 8192);
		task = "induction", name = "seq-len";
		break;
	case OPT_MIN_REP:
		o.t.min_rep = (int)circ_opt_i64("min-rep", arg, 1, 4096);
		task = "induction", name = "min-rep";
		break;
	case OPT_MAX_REP:
		o.t.max_rep = (int)circ_opt_i64("max-rep", arg, 2, 4096);
		task = "induction", name = "max-rep";
		break;
	case OPT_CHUNKS:
		o.t.chunks = (int)circ_opt_i64("chunks", arg, 1, 4096);
		task = "induction", name = "chunks";
		break;
	case OPT_COPIES:
		o.t.copies = (int)circ_opt_i64("copies", arg, 2, 4096);
		task = "induction", name = "copies";
		break;
	case OPT_FOCUS:
		o.t.focus = circ_opt_i64("focus", arg, 0, 10000000);
		task = "induction", name = "focus";
		break;
	case OPT_LEN:
		o.t.eval_len = (int)circ_opt_i64("len", arg, 2, 4096);
		o.given_len = 1;
		break;
	case OPT_VOCAB_LO:
		o.t.vocab_lo = (int32_t)circ_opt_i64("vocab-lo", arg, 0, INT32_MAX - 1);
		o.given_vlo = 1;
		break;
	case OPT_VOCAB_HI:
		o.t.vocab_hi = (int32_t)circ_opt_i64("vocab-hi", arg, 1, INT32_MAX);
		o.given_vhi = 1;
		break;
	case OPT_DIAGNOSE: o.diagnose = arg; break;
	case OPT_N: o.n = (int)circ_opt_i64("n", arg, 1, 100000); break;
	case OPT_ARCH:
		if (strcmp(arg, "gpt2") && strcmp(arg, "llama"))
			circ_usage_error("option '--arch': '%s' is not gpt2 or llama", arg);
		o.llama = !strcmp(arg, "llama");
		break;
	case OPT_KV_HEADS: o.kv_heads = (int)circ_opt_i64("kv-heads", arg, 1, 64); break;
	case OPT_ATTN_BIAS: o.attn_bias = 1; break;
	case OPT_QK_BIAS_SD: o.qk_bias_sd = circ_opt_f64_in("qk-bias-sd", arg, 0, 0, 100, 1); break;
	default: return -1;
	}
	o.given[key - CIRC_OPT_FIRST_TOOL] = opt_name(key);
	if (task)
		o.task_only[key - CIRC_OPT_FIRST_TOOL] = task;
	(void)name;
	return 0;
}

/* ---- --diagnose ---- */

static void close_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0)
		circ_dief("'<stdout>': write error");
}

static int diagnose(const char *dir)
{
	static const int allowed[] = {OPT_LEN, OPT_VOCAB_LO, OPT_VOCAB_HI,
				      OPT_N,   OPT_SEED,     OPT_THREADS};
	circ_error e;
	circ_model *m;
	circ_bpe *b = NULL;
	char path[4096];
	struct stat st;
	int32_t skip = -1, lo = 0, hi;
	for (int k = 0; k <= OPT_N - CIRC_OPT_FIRST_TOOL; k++) {
		int ok = k + CIRC_OPT_FIRST_TOOL == OPT_DIAGNOSE;
		for (size_t a = 0; a < sizeof allowed / sizeof *allowed; a++)
			ok |= allowed[a] == k + CIRC_OPT_FIRST_TOOL;
		if (o.given[k] && !ok)
			circ_usage_error("option '--%s' does not apply to --diagnose", o.given[k]);
	}
	if (!(m = circ_model_open(dir, NULL, &e)))
		circ_die(&e);
	const circ_config *c = circ_model_config(m);
	snprintf(path, sizeof path, "%s/vocab.json", dir);
	if (stat(path, &st) == 0) {
		if (!(b = circ_bpe_load_dir(dir, &e)))
			circ_die(&e);
		skip = circ_bpe_eot(b);
	}
	hi = o.given_vhi ? o.t.vocab_hi : c->vocab_size;
	if (o.given_vlo)
		lo = o.t.vocab_lo;
	int len = o.given_len ? o.t.eval_len : (c->n_ctx / 2 < 16 ? c->n_ctx / 2 : 16);
	size_t LH = (size_t)c->n_layer * c->n_head;
	double *prev = circ_xmalloc(LH * sizeof *prev), *ind = circ_xmalloc(LH * sizeof *ind),
	       *dup = circ_xmalloc(LH * sizeof *dup);
	if (circ_diag_heads(m, o.n, len, lo, hi, skip, o.seed, o.threads, prev, ind, dup, &e) < 0)
		circ_die(&e);
	if (circ_model_check_unchanged(m, &e) < 0) /* weights used in place: not rewritten? */
		circ_die(&e);
	printf("# %s: %d random sequences of %d distinct ids from [%d, %d), repeated once; seed "
	       "%llu\n",
	       dir, o.n, len, (int)lo, (int)hi, (unsigned long long)o.seed);
	printf("# prev-token: attention from t to t-1; induction: from t to t-%d (the token after "
	       "the previous occurrence); duplicate: from t to t-%d\n",
	       len - 1, len);
	printf("layer\thead\tprev-token\tinduction\tduplicate\n");
	for (int l = 0; l < c->n_layer; l++)
		for (int h = 0; h < c->n_head; h++) {
			size_t k = (size_t)l * c->n_head + h;
			printf("%d\t%d\t%.4f\t%.4f\t%.4f\n", l, h, prev[k], ind[k], dup[k]);
		}
	close_stdout();
	free(prev);
	free(ind);
	free(dup);
	circ_bpe_free(b);
	circ_model_free(m);
	return 0;
}

/* ---- training ---- */

typedef struct task_defaults {
	const char *task;
	int steps;
	double lr;
} task_defaults;

static const task_defaults defaults[] = {
    {"induction", 6000, 3e-3},
    {"ioi", 2000, 2e-3},
    {"greater-than", 1500, 2e-3},
};

/* Moves the files of tmp into dir (created if missing), then removes tmp. */
static int move_into_place(const char *tmp, const char *dir, circ_error *e)
{
	static const char *const files[] = {"config.json", "model.safetensors", "vocab.json",
					    "merges.txt",  "circ.mk",		"README.md"};
	char a[8192], b[8192];
	if (mkdir(dir, 0777) < 0 && errno != EEXIST)
		return circ_errorf(e, "'%s': cannot create: %s", dir, strerror(errno));
	for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
		snprintf(a, sizeof a, "%s/%s", tmp, files[i]);
		snprintf(b, sizeof b, "%s/%s", dir, files[i]);
		if (rename(a, b) < 0)
			return circ_errorf(e, "'%s': cannot move into place: %s", b,
					   strerror(errno));
	}
	if (rmdir(tmp) < 0)
		return circ_errorf(e, "'%s': cannot remove: %s", tmp, strerror(errno));
	return 0;
}

static char tmpdir[2048];
static const char *const tmp_files[] = {"config.json", "model.safetensors", "vocab.json",
					"merges.txt",  "circ.mk",	    "README.md"};
static int tmp_slots[1 + sizeof tmp_files / sizeof *tmp_files];

/* The temporary directory and its files, removed if a signal (SIGINT,
 * SIGTERM, SIGHUP) ends the run: see circ_cleanup_add. */
static void register_tmp(void)
{
	circ_error e;
	char p[4200];
	tmp_slots[0] = circ_cleanup_add_dir(tmpdir, &e);
	for (size_t i = 0; i < sizeof tmp_files / sizeof *tmp_files; i++) {
		snprintf(p, sizeof p, "%s/%s", tmpdir, tmp_files[i]);
		tmp_slots[i + 1] = circ_cleanup_add(p, &e);
	}
}

static void remove_tmp(void)
{
	char p[4200];
	if (!tmpdir[0])
		return;
	for (size_t i = 0; i < sizeof tmp_files / sizeof *tmp_files; i++) {
		snprintf(p, sizeof p, "%s/%s", tmpdir, tmp_files[i]);
		unlink(p);
	}
	rmdir(tmpdir);
}

static void unregister_tmp(void)
{
	for (size_t i = 0; i < sizeof tmp_slots / sizeof *tmp_slots; i++)
		circ_cleanup_remove(tmp_slots[i]);
}

static void die_clean(const circ_error *e)
{
	remove_tmp();
	circ_die(e);
}

static void progress(int step, int steps, double loss, double lr, double t0, int done)
{
	static double last;
	double now = circ_now();
	if (!done && now - last < 0.2)
		return;
	last = now;
	fprintf(stderr, "\r%s: step %d/%d  loss %.4f  lr %.2e  %.0fs%s", circ_progname, step, steps,
		loss, lr, now - t0, done ? "\n" : "");
}

/* The checks every mode shares; the thread count defaults. Returns whether
 * --threads was given (the training README then names the default). */
static int check_common_options(void)
{
	int threads_given;
	if (o.given_vlo && o.given_vhi && o.t.vocab_lo >= o.t.vocab_hi)
		circ_usage_error("option '--vocab-lo' (%d) is not below --vocab-hi (%d)",
				 (int)o.t.vocab_lo, (int)o.t.vocab_hi);
	if (o.t.min_rep > o.t.max_rep)
		circ_usage_error("option '--min-rep' (%d) is more than --max-rep (%d)", o.t.min_rep,
				 o.t.max_rep);
	threads_given = o.threads != 0;
	if (!threads_given)
		o.threads = circ_threads_default();
	return threads_given;
}

/* The training run's task (the nargs arguments args) and options, checked
 * together; the task's defaults filled in. */
static void check_training_options(int nargs, char **args)
{
	const task_defaults *td = NULL;
	if (nargs != 1)
		circ_usage_error(nargs ? "expected one task, got %d arguments"
				       : "no task given (induction, ioi or greater-than)",
				 nargs);
	o.t.task = args[0];
	for (size_t k = 0; k < sizeof defaults / sizeof *defaults; k++)
		if (!strcmp(defaults[k].task, o.t.task))
			td = &defaults[k];
	if (!td)
		circ_usage_error("unknown task '%s' (expected induction, ioi or greater-than)",
				 o.t.task);
	for (int k = 0; k <= OPT_N - CIRC_OPT_FIRST_TOOL; k++)
		if (o.given[k] && o.task_only[k] && strcmp(o.task_only[k], o.t.task))
			circ_usage_error("option '--%s' applies to %s only", o.given[k],
					 o.task_only[k]);
	if (strcmp(o.t.task, "induction") && (o.given_len || o.given_vlo || o.given_vhi))
		circ_usage_error(
		    "options '--len', '--vocab-lo' and '--vocab-hi' apply to induction "
		    "(and --diagnose) only");
	if (o.given[OPT_N - CIRC_OPT_FIRST_TOOL])
		circ_usage_error("option '--n' applies to --diagnose only");
	if (!o.out)
		circ_usage_error("no output directory given (--out DIR)");
	if (o.embd % o.heads)
		circ_usage_error("option '--embd': %d is not a multiple of --heads %d", o.embd,
				 o.heads);
	if ((o.kv_heads || o.attn_bias) && !o.llama)
		circ_usage_error(
		    "options '--kv-heads' and '--attn-bias' apply to --arch llama only");
	if (o.given[OPT_QK_BIAS_SD - CIRC_OPT_FIRST_TOOL] && !o.attn_bias)
		circ_usage_error("option '--qk-bias-sd' applies to --arch llama --attn-bias only");
	if (o.kv_heads && o.heads % o.kv_heads)
		circ_usage_error("option '--kv-heads': %d does not divide --heads %d", o.kv_heads,
				 o.heads);
	if (o.llama && (o.embd / o.heads) % 2)
		circ_usage_error("option '--embd': the head width %d is odd (RoPE rotates pairs)",
				 o.embd / o.heads);
	/* --steps and --lr are range-checked where parsed (a given value is
	 * never taken for "not given") */
	if (!o.given[OPT_STEPS - CIRC_OPT_FIRST_TOOL])
		o.steps = td->steps;
	if (!o.given[OPT_LR - CIRC_OPT_FIRST_TOOL])
		o.lr = td->lr;
	if (!o.given[OPT_WARMUP - CIRC_OPT_FIRST_TOOL])
		o.warmup = o.steps / 20;
	if (o.warmup > o.steps)
		circ_usage_error("option '--warmup': more than --steps");
	o.t.n_train = (int64_t)o.steps * o.batch;
	if (!o.given_len)
		o.t.eval_len = o.t.seq_len / 2;
}

/* Creates the temporary directory DIR.tmp-<pid> (tmpdir), registered for
 * removal on signals. */
static void make_tmpdir(void)
{
	circ_error e;
	snprintf(tmpdir, sizeof tmpdir, "%s.tmp-%ld", o.out, (long)getpid());
	if (mkdir(tmpdir, 0777) < 0) {
		circ_errorf(&e, "'%s': cannot create: %s", tmpdir, strerror(errno));
		tmpdir[0] = 0;
		circ_die(&e);
	}
	register_tmp();
}

/* The model's configuration from the options, the vocabulary and the task
 * (a --ctx shorter than the task's sequences is a usage error). */
static void model_config(circ_config *c, const circ_bpe *bpe, const circ_ttask *task)
{
	memset(c, 0, sizeof *c);
	c->n_layer = o.layers;
	c->n_head = o.heads;
	c->n_embd = o.embd;
	c->n_inner = o.inner ? o.inner : 4 * o.embd;
	c->vocab_size = circ_bpe_vocab_size(bpe);
	c->n_ctx = o.ctx ? o.ctx : circ_ttask_max_len(task);
	c->layer_norm_epsilon = 1e-5;
	c->act = CIRC_ACT_GELU_NEW;
	if (o.llama) { /* Llama: RMSNorm, RoPE, SwiGLU, no biases, tied */
		c->model_type = CIRC_MODEL_LLAMA;
		c->n_kv_head = o.kv_heads ? o.kv_heads : o.heads;
		c->norm = CIRC_NORM_RMSNORM;
		c->pos = CIRC_POS_ROTARY;
		c->rope_theta = 10000;
		c->mlp = CIRC_MLP_GATED;
		c->act = CIRC_ACT_SILU;
		c->no_bias_qkv = c->no_bias_o = !o.attn_bias;
		c->no_bias_mlp = 1;
	}
	if (c->n_ctx < circ_ttask_max_len(task)) {
		remove_tmp();
		circ_usage_error("option '--ctx': %d is shorter than the task's sequences (%d)",
				 c->n_ctx, circ_ttask_max_len(task));
	}
}

/* The model to train: its configuration into c (model_config), its weights
 * drawn from --seed (the model owns them). */
static circ_model *new_model(circ_config *c, const circ_bpe *bpe, const circ_ttask *task)
{
	circ_error e;
	circ_weights w;
	circ_model *m;
	model_config(c, bpe, task);
	if (o.llama) {
		if (!(m = circ_model_new_family(c, &e)))
			die_clean(&e);
		circ_train_init_family(m, o.seed, o.qk_bias_sd);
		return m;
	}
	circ_weights_alloc(&w, c);
	circ_train_init_weights(&w, c, o.seed);
	if (!(m = circ_model_new(c, &w, &e)))
		die_clean(&e);
	return m;
}

/* The trainer of m with the options' optimiser settings. */
static circ_trainer *new_trainer(circ_model *m, const circ_ttask *task)
{
	circ_error e;
	circ_train_opts to;
	circ_trainer *tr;
	circ_train_opts_default(&to);
	to.threads = o.threads;
	to.clip = o.clip;
	to.adam.weight_decay = o.wd;
	tr = circ_trainer_new(m, o.batch, circ_ttask_max_len(task), &to, &e);
	if (!tr)
		die_clean(&e);
	return tr;
}

/* The optimisation steps, with --log lines and the progress line on a
 * terminal; b is the batch buffer. */
static void train(circ_trainer *tr, circ_ttask *task, circ_tbatch *b, double t0)
{
	circ_error e;
	int tty = isatty(2);
	double sum = 0, loss = 0, lr = 0;
	int nsum = 0;
	for (int s = 0; s < o.steps; s++) {
		circ_ttask_batch(task, o.batch, b);
		lr = circ_lr_schedule(o.lr, o.min_lr, o.warmup, o.steps, s);
		if (circ_trainer_step(tr, b, lr, &loss, NULL, &e) < 0)
			die_clean(&e);
		sum += loss;
		nsum++;
		if (o.log && (s + 1) % o.log == 0) {
			if (tty)
				fputc('\r', stderr);
			fprintf(stderr, "%s: step %d loss %.4f lr %.3e\n", circ_progname, s + 1,
				sum / nsum, lr);
			sum = 0;
			nsum = 0;
		}
		if (tty)
			progress(s + 1, o.steps, loss, lr, t0, s + 1 == o.steps);
	}
}

/* The evaluation's sentence for the task into res (n bytes). */
static void describe_eval(const circ_ttask_eval *ev, char *res, size_t n)
{
	if (!strcmp(o.t.task, "induction"))
		snprintf(res, n,
			 "loss on the first half %.4f, on the repeated half %.4f (nats/token); "
			 "top-1 accuracy on the repeated half %.4f",
			 ev->loss_first, ev->loss_repeat, ev->acc_repeat);
	else if (!strcmp(o.t.task, "ioi"))
		snprintf(res, n,
			 "mean logit difference (IO - S) %.4f; IO above S in %.4f of examples; "
			 "top-1 is IO in %.4f; loss %.4f",
			 ev->metric, ev->acc_pair, ev->acc_top1, ev->loss);
	else
		snprintf(res, n,
			 "mean probability difference (later - earlier years) %.4f; positive in "
			 "%.4f of examples; top-1 a later year in %.4f",
			 ev->metric, ev->acc_pair, ev->acc_top1);
}

/* circ.mk: the pipelines' dataset settings, for the model's own task only
 * (pipelines/common.mk: MODEL_TASK); dsargs (n bytes) gets the dataset
 * options the README names too. */
static void write_circ_mk(char *dsargs, size_t n)
{
	circ_error e;
	char mk[1024];
	if (!strcmp(o.t.task, "induction")) {
		snprintf(dsargs, n, " --len %d --vocab-lo %d --vocab-hi %d", o.t.eval_len,
			 (int)o.t.vocab_lo, (int)o.t.vocab_hi);
		snprintf(
		    mk, sizeof mk,
		    "# Pipeline settings for this model (written by circ-train): the induction\n"
		    "# recipe over the ids it was trained on. Other tasks run with their\n"
		    "# defaults.\n"
		    "MODEL_TASK := induction\n"
		    "ifeq ($(TASK),induction)\n"
		    "DATASET_ARGS ?=%s\n"
		    "endif\n",
		    dsargs);
	} else
		snprintf(
		    mk, sizeof mk,
		    "# Pipeline settings for this model (written by circ-train): circ-dataset's\n"
		    "# %s recipe restricted to this vocabulary (--model-dir) needs no options.\n"
		    "MODEL_TASK := %s\n"
		    "ifeq ($(TASK),%s)\n"
		    "DATASET_ARGS ?=\n"
		    "endif\n",
		    o.t.task, o.t.task, o.t.task);
	if (circ_write_text_file(tmpdir, "circ.mk", mk, &e) < 0)
		die_clean(&e);
}

/* For induction: the data's line, inserted before the README's evaluation
 * line (readme holds rl of rc bytes); returns the new length. */
static size_t readme_insert_data(char *readme, size_t rl, size_t rc)
{
	char data[512], reps[64], *at = strstr(readme, "- evaluation on");
	if (o.t.min_rep == o.t.max_rep)
		snprintf(reps, sizeof reps, "%d", o.t.max_rep);
	else
		snprintf(reps, sizeof reps, "%d-%d", o.t.min_rep, o.t.max_rep);
	int dl = snprintf(data, sizeof data,
			  "- data: sequences of %d ids holding %d chunks of %s distinct ids, "
			  "each %d times, the rest single ids; ",
			  o.t.seq_len, o.t.chunks, reps, o.t.copies);
	if (o.t.focus)
		dl += snprintf(data + dl, sizeof data - (size_t)dl,
			       "loss only at the repeated ids for the first %lld steps, then "
			       "at every position\n",
			       (long long)o.t.focus);
	else
		dl += snprintf(data + dl, sizeof data - (size_t)dl, "loss at every position\n");
	if (at && rl + (size_t)dl < rc) {
		memmove(at + dl, at, strlen(at) + 1);
		memcpy(at, data, (size_t)dl);
		rl += (size_t)dl;
	}
	return rl;
}

/* README.md: the command that reproduces the model, its settings and the
 * evaluation (res, over ev->n examples). */
static void write_readme(int argc, char **argv, int threads_given, const circ_model *m,
			 const circ_bpe *bpe, const circ_ttask_eval *ev, const char *dsargs,
			 const char *res)
{
	circ_error e;
	const circ_config *c = circ_model_config(m);
	size_t n_params = circ_model_weights(m)->n_params;
	char arch[160] = "", *readme;
	if (o.llama)
		snprintf(arch, sizeof arch,
			 "Llama (RMSNorm, RoPE base 10000, SwiGLU, %s), %d key/value heads, ",
			 o.attn_bias ? "biases on q, k, v and o" : "no biases", c->n_kv_head);
	else
		n_params = circ_config_n_params(c);
	size_t rl = 0, rc = 16384;
	readme = circ_xmalloc(rc);
	rl += (size_t)snprintf(readme + rl, rc - rl,
			       "# A %s-architecture model trained by circ-train on %s\n\n"
			       "Reproduce it, from the repository root:\n\n    circ-train",
			       o.llama ? "Llama" : "GPT-2", o.t.task);
	for (int k = 1; k < argc && rl < rc - 512; k++)
		rl += (size_t)snprintf(readme + rl, rc - rl, " %s", argv[k]);
	if (!threads_given) /* the weights depend on it: the command names it */
		rl += (size_t)snprintf(readme + rl, rc - rl, " --threads %d", o.threads);
	rl += (size_t)snprintf(
	    readme + rl, rc - rl,
	    "\n\nThe weights are a function of the options and the thread count.\n\n"
	    "- architecture: %s%d layers, %d heads, n_embd %d, n_inner %d, n_ctx %d, "
	    "vocabulary %d (byte-level BPE: 256 bytes, %d merges, <|endoftext|>), %zu "
	    "parameters, lm_head tied to %s\n"
	    "- training: %d steps of %d sequences, AdamW (betas 0.9, 0.999, eps 1e-8, "
	    "weight decay %g on matrices and embeddings), peak learning rate %g, %d warm-up "
	    "steps, cosine decay to %g of the peak, gradient norm clipped at %g, seed %llu\n"
	    "- evaluation on %lld examples (`circ-dataset %s --seed 0 --model-dir DIR%s`): %s\n"
	    "\nPer-head attention diagnostics: `circ-train --diagnose DIR`.\n",
	    arch, c->n_layer, c->n_head, c->n_embd, c->n_inner, c->n_ctx, c->vocab_size,
	    (int)circ_bpe_n_merges(bpe), n_params, o.llama ? "embed_tokens" : "wte", o.steps,
	    o.batch, o.wd, o.lr, o.warmup, o.min_lr, o.clip, (unsigned long long)o.seed,
	    (long long)ev->n, o.t.task, dsargs, res);
	if (!strcmp(o.t.task, "induction"))
		rl = readme_insert_data(readme, rl, rc);
	if (circ_write_text_file(tmpdir, "README.md", readme, &e) < 0)
		die_clean(&e);
	free(readme);
}

/* ---- circ-train sae / circ-train transcoder ----
 * Sparse dictionaries (lib/dict_train): activations harvested from --model
 * over a corpus of token ids (circ-tokenize --text's output: ids separated
 * by spaces, commas or brackets, one document or many per line, read as one
 * stream cut into --ctx-len sequences), or the superposition fixture
 * (--fixture), through a shuffled buffer; the dictionary is written as a
 * SAELens directory (lib/dict's writer). */

enum {
	DOPT_MODEL = CIRC_OPT_FIRST_TOOL,
	DOPT_HOOK,
	DOPT_HOOK_OUT,
	DOPT_SKIP,
	DOPT_OUT,
	DOPT_ARCH,
	DOPT_D_SAE,
	DOPT_K,
	DOPT_K_AUX,
	DOPT_AUX,
	DOPT_DEAD,
	DOPT_L1,
	DOPT_L1_WARMUP,
	DOPT_L0,
	DOPT_BANDWIDTH,
	DOPT_THRESHOLD,
	DOPT_STEPS,
	DOPT_BATCH,
	DOPT_LR,
	DOPT_MIN_LR,
	DOPT_WARMUP,
	DOPT_DECAY,
	DOPT_WD,
	DOPT_CLIP,
	DOPT_BUFFER,
	DOPT_BUFFER_DIR,
	DOPT_CTX_LEN,
	DOPT_SEQS,
	DOPT_SEED,
	DOPT_THREADS,
	DOPT_DTYPE,
	DOPT_LOG,
	DOPT_CHECKPOINT,
	DOPT_EVERY,
	DOPT_RESUME,
	DOPT_FIXTURE,
	DOPT_STOP_AFTER,
	DOPT_NORMALIZE,
	DOPT_TOKENS,
	DOPT_N
};

static const circ_opt dopts[] = {
    {"model", DOPT_MODEL, "DIR", "harvest activations from the model in DIR"},
    {"hook", DOPT_HOOK, "NAME",
     "input hook point (default blocks.0.hook_resid_pre; transcoder blocks.0.ln2.hook_normalized)"},
    {"hook-out", DOPT_HOOK_OUT, "NAME",
     "transcoder: output hook point (default blocks.L.hook_mlp_out of --hook's layer)"},
    {"skip", DOPT_SKIP, NULL,
     "transcoder: learn a skip connection W_skip too (y += x W_skip^T; SAELens's "
     "skip_transcoder)"},
    {"out", DOPT_OUT, "DIR", "write the dictionary as a SAELens directory DIR"},
    {"arch", DOPT_ARCH, "A", "relu, topk, batchtopk or jumprelu (default topk)"},
    {"d-sae", DOPT_D_SAE, "S", "latents (default 8 x d_in)"},
    {"k", DOPT_K, "K", "topk, batchtopk: active latents per token (default 32)"},
    {"k-aux", DOPT_K_AUX, "K", "topk, batchtopk: AuxK latents, 0: off (default d_in/2)"},
    {"aux-coeff", DOPT_AUX, "C", "topk, batchtopk: AuxK weight (default 1/32)"},
    {"dead-tokens", DOPT_DEAD, "N",
     "a latent that has not fired for N tokens is dead (default 10000000)"},
    {"l1", DOPT_L1, "C", "relu: L1 coefficient (default 5)"},
    {"l1-warmup", DOPT_L1_WARMUP, "N", "relu: steps of L1 warm-up (default steps/20)"},
    {"l0", DOPT_L0, "C", "jumprelu: L0 coefficient (default 1e-3)"},
    {"bandwidth", DOPT_BANDWIDTH, "E", "jumprelu: straight-through kernel width (default 1e-3)"},
    {"threshold", DOPT_THRESHOLD, "T", "jumprelu: initial threshold (default 1e-3)"},
    {"steps", DOPT_STEPS, "N", "optimisation steps (default 1000)"},
    {"batch", DOPT_BATCH, "B", "tokens per step (default 4096)"},
    {"lr", DOPT_LR, "LR", "peak learning rate (default 4e-4; relu 5e-5)"},
    {"min-lr", DOPT_MIN_LR, "F", "final learning rate as a fraction of the peak (default 0)"},
    {"warmup", DOPT_WARMUP, "N", "steps of linear learning-rate warm-up (default 0)"},
    {"decay", DOPT_DECAY, "N", "steps of linear decay at the end (default: relu steps/5, else 0)"},
    {"weight-decay", DOPT_WD, "WD", "AdamW weight decay of W_enc and W_dec (default 0)"},
    {"clip", DOPT_CLIP, "G",
     "clip the gradient's global norm to G; 0: off (default: relu 1, else 0)"},
    {"buffer", DOPT_BUFFER, "N", "rows in the shuffled activation buffer (default 16 x batch)"},
    {"buffer-dir", DOPT_BUFFER_DIR, "DIR",
     "keep the buffer in a file in DIR (made, unlinked and its space reserved at once) instead "
     "of memory: for buffers larger than memory"},
    {"ctx-len", DOPT_CTX_LEN, "T",
     "tokens per harvested sequence (default 128, or n_ctx when shorter)"},
    {"seqs", DOPT_SEQS, "N", "sequences per harvesting forward (default 16)"},
    {"seed", DOPT_SEED, "S", "random seed, 0..2^63-1 (default 0)"},
    {"threads", DOPT_THREADS, "N", "threads for the products and the model's forwards"},
    {"dtype", DOPT_DTYPE, "T", "weights written as F32, F16 or BF16 (default F32)"},
    {"log", DOPT_LOG, "N", "print MSE, L0, dead fraction and tokens/s every N steps on stderr"},
    {"checkpoint", DOPT_CHECKPOINT, "FILE", "write the training state to FILE (see --every)"},
    {"every", DOPT_EVERY, "N", "with --checkpoint: every N steps (default 1000) and at the end"},
    {"resume", DOPT_RESUME, "FILE", "continue from checkpoint FILE (same options and corpus)"},
    {"fixture", DOPT_FIXTURE, NULL,
     "train on the superposition fixture (64 known directions in 32 dimensions) instead of a "
     "model and print how well they are recovered"},
    {"tokens", DOPT_TOKENS, NULL,
     "the corpus is a token stream (circ-tokenize's dataset output): its examples' clean ids, "
     "one after another"},
    {"normalize", DOPT_NORMALIZE, NULL,
     "scale activations so that their mean squared norm is d_in (SAELens's "
     "expected_average_only_in, estimated on the first buffer; saved in the dictionary)"},
    {"stop-after", DOPT_STOP_AFTER, "N",
     "stop after step N (with --checkpoint: a run to --resume later; nothing else written)"},
    {0},
};

static struct {
	const char *model, *hook, *hook_out, *out, *dtype, *checkpoint, *resume;
	circ_dtrain_opts t;
	int d_sae, ctx_len, seqs, log, every, fixture, transcoder, normalize, tokens;
	int64_t buffer, stop_after;
	const char *buffer_dir;
	const char *given[DOPT_N - CIRC_OPT_FIRST_TOOL + 1];
} d = {.dtype = "F32", .ctx_len = 128, .seqs = 16, .every = 1000};

static int dhandle(int key, const char *arg, void *ctx)
{
	circ_dtrain_opts *t = &d.t;
	(void)ctx;
	switch (key) {
	case DOPT_MODEL: d.model = arg; break;
	case DOPT_HOOK: d.hook = arg; break;
	case DOPT_HOOK_OUT: d.hook_out = arg; break;
	case DOPT_SKIP: d.t.skip = 1; break;
	case DOPT_OUT:
		if (!*arg)
			circ_usage_error("option '--out': empty output path");
		d.out = arg;
		break;
	case DOPT_ARCH:
		if (circ_dtrain_arch_parse(arg, &t->arch) < 0)
			circ_usage_error("option '--arch': unknown architecture '%s' (relu, topk, "
					 "batchtopk, jumprelu)",
					 arg);
		break;
	case DOPT_D_SAE: d.d_sae = (int)circ_opt_i64("d-sae", arg, 1, 1 << 24); break;
	case DOPT_K: t->k = (int)circ_opt_i64("k", arg, 1, 1 << 24); break;
	case DOPT_K_AUX: t->k_aux = (int)circ_opt_i64("k-aux", arg, 0, 1 << 24); break;
	case DOPT_AUX: t->aux_coeff = circ_opt_f64_in("aux-coeff", arg, 0, 0, 1e6, 0); break;
	case DOPT_DEAD: t->dead_tokens = circ_opt_i64("dead-tokens", arg, 1, INT64_MAX / 2); break;
	case DOPT_L1: t->l1 = circ_opt_f64_in("l1", arg, 0, 0, 1e9, 0); break;
	case DOPT_L1_WARMUP: t->l1_warmup = circ_opt_i64("l1-warmup", arg, 0, INT64_MAX / 2); break;
	case DOPT_L0: t->l0 = circ_opt_f64_in("l0", arg, 0, 0, 1e9, 0); break;
	case DOPT_BANDWIDTH: t->bandwidth = circ_opt_f64_in("bandwidth", arg, 0, 1, 1e9, 0); break;
	case DOPT_THRESHOLD:
		t->threshold_init = circ_opt_f64_in("threshold", arg, 0, 1, 1e9, 0);
		break;
	case DOPT_STEPS: t->steps = circ_opt_i64("steps", arg, 1, 1000000000); break;
	case DOPT_BATCH: t->batch = (int)circ_opt_i64("batch", arg, 1, 1 << 20); break;
	case DOPT_LR: t->lr = circ_opt_f64_in("lr", arg, 0, 1, 1, 0); break;
	case DOPT_MIN_LR: t->min_lr = circ_opt_f64_in("min-lr", arg, 0, 0, 1, 0); break;
	case DOPT_WARMUP: t->warmup = circ_opt_i64("warmup", arg, 0, 1000000000); break;
	case DOPT_DECAY: t->decay = circ_opt_i64("decay", arg, 0, 1000000000); break;
	case DOPT_WD: t->weight_decay = circ_opt_f64_in("weight-decay", arg, 0, 0, 1, 0); break;
	case DOPT_CLIP: t->clip = circ_opt_f64_in("clip", arg, 0, 0, 1e9, 0); break;
	case DOPT_BUFFER: d.buffer = circ_opt_i64("buffer", arg, 2, INT64_MAX / 2); break;
	case DOPT_BUFFER_DIR: d.buffer_dir = arg; break;
	case DOPT_CTX_LEN: d.ctx_len = (int)circ_opt_i64("ctx-len", arg, 1, 1 << 20); break;
	case DOPT_SEQS: d.seqs = (int)circ_opt_i64("seqs", arg, 1, 1 << 16); break;
	case DOPT_SEED: t->seed = (uint64_t)circ_opt_i64("seed", arg, 0, INT64_MAX); break;
	case DOPT_THREADS:
		t->threads = (int)circ_opt_i64("threads", arg, 1, CIRC_THREADS_MAX);
		break;
	case DOPT_DTYPE:
		if (strcmp(arg, "F32") && strcmp(arg, "F16") && strcmp(arg, "BF16"))
			circ_usage_error("option '--dtype': '%s' is not F32, F16 or BF16", arg);
		d.dtype = arg;
		break;
	case DOPT_LOG: d.log = (int)circ_opt_i64("log", arg, 0, 1000000000); break;
	case DOPT_CHECKPOINT: d.checkpoint = arg; break;
	case DOPT_EVERY: d.every = (int)circ_opt_i64("every", arg, 1, 1000000000); break;
	case DOPT_RESUME: d.resume = arg; break;
	case DOPT_FIXTURE: d.fixture = 1; break;
	case DOPT_NORMALIZE: d.normalize = 1; break;
	case DOPT_TOKENS: d.tokens = 1; break;
	case DOPT_STOP_AFTER: d.stop_after = circ_opt_i64("stop-after", arg, 1, 1000000000); break;
	default: return -1;
	}
	d.given[key - CIRC_OPT_FIRST_TOOL] = "";
	return 0;
}

static int dgiven(int key)
{
	return d.given[key - CIRC_OPT_FIRST_TOOL] != NULL;
}

/* The corpus: token ids as text, or a token stream's clean ids, cut into
 * sequences of T. */
typedef struct corpus {
	FILE *f;
	circ_reader *r;	 /* a token stream, else NULL */
	int32_t *ids;	 /* the current record's ids */
	size_t nids, at; /* how many; the next one */
	const char *name;
	int vocab;
	int64_t n; /* ids read */
} corpus;

/* The next id of a token stream into *v: 1, 0 at its end, -1 on error. */
static int stream_id(corpus *c, int32_t *v, circ_error *e)
{
	while (c->at == c->nids) {
		const msgpack_object *rec;
		circ_tensor t;
		int rc = circ_reader_next(c->r, &rec, e);
		if (rc <= 0)
			return rc;
		if (circ_rec_tensor(rec, "clean", &t, e) < 0)
			return circ_reader_fail(c->r, e);
		c->nids = (size_t)circ_tensor_numel(&t);
		c->ids = circ_xrealloc(c->ids, (c->nids ? c->nids : 1) * sizeof *c->ids);
		if (circ_tensor_copy_i32(&t, c->ids, e) < 0)
			return circ_reader_fail(c->r, e);
		c->at = 0;
		for (size_t q = 0; q < c->nids; q++)
			if (c->ids[q] < 0 || c->ids[q] >= c->vocab) {
				circ_errorf(
				    e,
				    "field 'clean': id %d outside the model's vocabulary (%d ids)",
				    (int)c->ids[q], c->vocab);
				return circ_reader_fail(c->r, e);
			}
	}
	*v = c->ids[c->at++];
	return 1;
}

static int corpus_next(void *ctx, int32_t *tokens, int B, int T, circ_error *e)
{
	corpus *c = ctx;
	int g = 0, t = 0;
	while (c->r && g < B) {
		int rc = stream_id(c, &tokens[(size_t)g * T + t], e);
		if (rc < 0)
			return -1;
		if (rc == 0)
			break;
		c->n++;
		if (++t == T)
			t = 0, g++;
	}
	while (!c->r && g < B) {
		int ch;
		while ((ch = getc(c->f)) != EOF && !(ch >= '0' && ch <= '9')) {
			if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == ',' ||
			    ch == '[' || ch == ']')
				continue;
			/* a stream's first byte: zstd's magic, a msgpack map, JSON */
			if (c->n == 0 && (ch == 0x28 || (ch >= 0x80 && ch <= 0x8f) || ch == 0xde ||
					  ch == 0xdf || ch == '{'))
				return circ_errorf(
				    e,
				    "'%s': a circ stream or JSON lines, not token ids "
				    "as text: give --tokens to read a token stream",
				    c->name);
			if (ch > ' ' && ch < 0x7f)
				return circ_errorf(e,
						   "'%s': token %" PRId64
						   ": unexpected '%c' (expected "
						   "ids as circ-tokenize --text writes them)",
						   c->name, c->n, ch);
			return circ_errorf(e,
					   "'%s': token %" PRId64
					   ": unexpected byte 0x%02x (expected "
					   "ids as circ-tokenize --text writes them)",
					   c->name, c->n, ch);
		}
		if (ch == EOF)
			break;
		int64_t v = 0;
		while (ch >= '0' && ch <= '9') {
			v = v * 10 + (ch - '0');
			if (v >= c->vocab)
				return circ_errorf(e,
						   "'%s': token %" PRId64
						   ": id outside the model's "
						   "vocabulary (%d ids)",
						   c->name, c->n, c->vocab);
			ch = getc(c->f);
		}
		if (ch != EOF)
			ungetc(ch, c->f);
		tokens[(size_t)g * T + t] = (int32_t)v;
		c->n++;
		if (++t == T)
			t = 0, g++;
	}
	if (c->f && ferror(c->f))
		return circ_errorf(e, "'%s': read error", c->name);
	return g; /* a last partial sequence is dropped */
}

static void dict_progress(int64_t step, int64_t steps, const circ_dtrain_stats *st, double tps,
			  int done)
{
	static double last;
	double now = circ_now();
	if (!done && now - last < 0.2)
		return;
	last = now;
	fprintf(stderr, "\r%s: step %lld/%lld  mse %.4g  L0 %.1f  dead %.1f%%  %.0f tokens/s%s",
		circ_progname, (long long)step, (long long)steps, st->mse, st->l0,
		100 * st->dead_frac, tps, done ? "\n" : "\033[K");
}

/* Writes the checkpoint: trainer, buffer, harvester, the scale. */
static void write_checkpoint(circ_dtrain *t, circ_dbuf *b, circ_dharvest *h, double scale)
{
	circ_error e;
	circ_st_tensor x[3];
	const char *meta[8];
	char sc[64];
	int n = 2, nm = 3;
	circ_dbuf_state(b, &x[0], meta);
	snprintf(sc, sizeof sc, "%a", scale);
	meta[4] = "train.scale";
	meta[5] = sc;
	if (h) {
		circ_dharvest_state(h, &x[2], meta + 6);
		n++, nm++;
	}
	if (circ_dtrain_save(t, d.checkpoint, n, x, nm, meta, &e) < 0)
		circ_die(&e);
}

/* Fails before any training when --out's parent directory is missing (the
 * dictionary's directory is made at the end, not its parents). */
static void check_out_parent(const char *out)
{
	size_t n = strlen(out);
	while (n > 1 && out[n - 1] == '/')
		n--;
	while (n > 0 && out[n - 1] != '/')
		n--;
	if (n == 0)
		return; /* in the current directory */
	char *parent = circ_xmalloc(n + 1);
	memcpy(parent, out, n);
	parent[n] = 0;
	struct stat sb;
	if (stat(parent, &sb) < 0 || !S_ISDIR(sb.st_mode))
		circ_dief("'%s': cannot create: its parent directory '%s' does not exist", out,
			  parent);
	free(parent);
}

/* The harvest's fill, its errors named by the corpus (the end of the
 * corpus is found there, where the corpus's name is not known). */
typedef struct corpus_fill_ctx {
	circ_dharvest *h;
	const char *name;
	int64_t need; /* tokens a run takes: the buffer, then every batch */
} corpus_fill_ctx;

static int corpus_fill(void *ctx, float *rows, size_t n, circ_error *e)
{
	corpus_fill_ctx *c = ctx;
	if (circ_dharvest_fill(c->h, rows, n, e) == 0)
		return 0;
	if (!strncmp(e->msg, "corpus exhausted", 16)) {
		char msg[sizeof e->msg + 128];
		snprintf(msg, sizeof msg,
			 "%s; the run takes about %" PRId64
			 " tokens (--buffer rows, then --steps x "
			 "--batch)",
			 e->msg, c->need);
		circ_errorf(e, "%s", msg);
	}
	if (e->msg[0] != '\'')
		circ_error_prefix(e, "'%s'", c->name);
	return -1;
}

/* The shuffled buffer, in memory or in a file under --buffer-dir. */
static circ_dbuf *make_buffer(size_t cap, int w, circ_dbuf_fill fill, void *ctx)
{
	if (!d.buffer_dir)
		return circ_dbuf_new(cap, w, d.t.seed, fill, ctx);
	circ_error e;
	circ_dbuf *b = circ_dbuf_new_file(cap, w, d.t.seed, fill, ctx, d.buffer_dir, &e);
	if (!b)
		circ_dief("option '--buffer-dir': %s", e.msg);
	return b;
}

static int dict_main(int argc, char **argv, int transcoder)
{
	circ_cli cli = {transcoder ? "transcoder (--model DIR | --fixture) --out DIR [options] "
				     "[corpus]"
				   : "sae (--model DIR | --fixture) --out DIR [options] [corpus]",
			transcoder ? "Train a transcoder (MLP input -> MLP output) on a model's "
				     "activations or the superposition fixture."
				   : "Train a sparse autoencoder on a model's activations or the "
				     "superposition fixture.",
			dopts, 0};
	circ_error e;
	circ_model *m = NULL;
	circ_dfix *fix = NULL;
	circ_dharvest *h = NULL;
	corpus cp = {0};
	corpus_fill_ctx cfill;
	int i;

	d.transcoder = transcoder;
	circ_dtrain_opts_default(&d.t, CIRC_DTRAIN_TOPK);
	/* the defaults that depend on --arch are set after parsing */
	i = circ_cli_parse(&cli, argc, argv, dhandle, NULL);
	{
		circ_dtrain_opts given = d.t, def;
		circ_dtrain_opts_default(&def, given.arch);
		d.t = def;
#define KEEP(key, field)                                                                           \
	if (dgiven(key))                                                                           \
	d.t.field = given.field
		KEEP(DOPT_K, k);
		KEEP(DOPT_SKIP, skip);
		KEEP(DOPT_K_AUX, k_aux);
		KEEP(DOPT_AUX, aux_coeff);
		KEEP(DOPT_DEAD, dead_tokens);
		KEEP(DOPT_L1, l1);
		KEEP(DOPT_L1_WARMUP, l1_warmup);
		KEEP(DOPT_L0, l0);
		KEEP(DOPT_BANDWIDTH, bandwidth);
		KEEP(DOPT_THRESHOLD, threshold_init);
		KEEP(DOPT_STEPS, steps);
		KEEP(DOPT_BATCH, batch);
		KEEP(DOPT_LR, lr);
		KEEP(DOPT_MIN_LR, min_lr);
		KEEP(DOPT_WARMUP, warmup);
		KEEP(DOPT_DECAY, decay);
		KEEP(DOPT_WD, weight_decay);
		KEEP(DOPT_CLIP, clip);
		KEEP(DOPT_SEED, seed);
		KEEP(DOPT_THREADS, threads);
#undef KEEP
	}
	if (!dgiven(DOPT_THREADS))
		d.t.threads = circ_threads_default();
	if (!!d.model + d.fixture != 1)
		circ_usage_error("give one of --model DIR and --fixture");
	if (!d.out && !(d.stop_after && d.checkpoint))
		circ_usage_error("no output directory given (--out DIR)");
	if (d.out)
		check_out_parent(d.out);
	if (d.fixture && argc - i > 0)
		circ_usage_error("--fixture takes no corpus");
	if (d.fixture && d.tokens)
		circ_usage_error("option '--tokens' needs --model");
	if (argc - i > 1)
		circ_usage_error("one corpus at most");
	if (d.hook_out && !transcoder)
		circ_usage_error("option '--hook-out' applies to transcoders only");
	if (d.t.skip && !transcoder)
		circ_usage_error("option '--skip' applies to transcoders only");
	if (d.t.warmup > d.t.steps)
		circ_usage_error("option '--warmup': more than --steps");
	if (dgiven(DOPT_EVERY) && !d.checkpoint)
		circ_usage_error("option '--every' needs --checkpoint");
	if (d.stop_after && !d.checkpoint)
		circ_usage_error("option '--stop-after' needs --checkpoint");

	/* the dictionary's shape and hooks */
	circ_dict_cfg cfg;
	circ_dict_cfg_init(&cfg);
	snprintf(cfg.hook_name, sizeof cfg.hook_name, "%s",
		 d.hook	      ? d.hook
		 : transcoder ? "blocks.0.ln2.hook_normalized"
			      : "blocks.0.hook_resid_pre");
	if (transcoder) {
		circ_hook hk;
		if (circ_hook_parse(cfg.hook_name, &hk, &e) < 0)
			circ_usage_error("option '--hook': %s", e.msg);
		if (d.hook_out)
			snprintf(cfg.hook_out, sizeof cfg.hook_out, "%s", d.hook_out);
		else
			snprintf(cfg.hook_out, sizeof cfg.hook_out, "blocks.%d.hook_mlp_out",
				 hk.layer);
	}
	int D, O;
	if (d.fixture) {
		D = 32;
		O = transcoder ? 40 : 32;
	} else {
		circ_model_opts mo;
		circ_model_opts_default(&mo);
		if (!(m = circ_model_open(d.model, &mo, &e)))
			circ_die(&e);
		D = O = circ_model_config(m)->n_embd;
		if (!dgiven(DOPT_CTX_LEN) && d.ctx_len > circ_model_config(m)->n_ctx)
			d.ctx_len = circ_model_config(m)->n_ctx;
		if (d.ctx_len > circ_model_config(m)->n_ctx)
			circ_usage_error(
			    "option '--ctx-len': %d is longer than the model's context (%d)",
			    d.ctx_len, circ_model_config(m)->n_ctx);
	}
	d.t.d_in = cfg.d_in = D;
	d.t.d_out = cfg.d_out = O;
	d.t.d_sae = cfg.d_sae = d.d_sae ? d.d_sae : 8 * D;
	d.t.transcoder = cfg.transcoder = transcoder;
	if ((d.t.arch == CIRC_DTRAIN_TOPK || d.t.arch == CIRC_DTRAIN_BATCHTOPK) &&
	    d.t.k > d.t.d_sae)
		circ_usage_error("option '--k': %d is more than the %d latents", d.t.k, d.t.d_sae);
	circ_dtrain *t = circ_dtrain_new(&d.t, &e);
	if (!t)
		circ_usage_error("%s", e.msg);
	circ_dtrain_dict_cfg(t, &cfg);
	circ_dict *dict = circ_dict_new(&cfg, &e);
	if (!dict)
		circ_usage_error("%s", e.msg);
	if (m && circ_dict_check_model(dict, m, &e) < 0)
		circ_usage_error("%s", e.msg);

	/* the data */
	int w = D + (transcoder ? O : 0);
	size_t cap = d.buffer ? (size_t)d.buffer : 16 * (size_t)d.t.batch;
	if (cap < 2 * (size_t)d.t.batch)
		circ_usage_error(
		    "option '--buffer': %zu rows hold less than two batches (%d rows each)", cap,
		    d.t.batch);
	circ_dbuf *buf;
	if (d.fixture) {
		fix = circ_dfix_new(D, transcoder ? O : 0, 64, 8, 8, 0.04, d.t.seed);
		buf = make_buffer(cap, w, circ_dfix_fill, fix);
	} else {
		cp.name = argc - i == 1 ? argv[i] : "-";
		cp.vocab = circ_model_config(m)->vocab_size;
		if (d.tokens) {
			if (!(cp.r = circ_reader_open(cp.name, "tokens", &e)) ||
			    circ_batch_check_vocab(cp.r, d.model, &e) < 0)
				circ_die(&e);
		} else if (!(cp.f = strcmp(cp.name, "-") ? fopen(cp.name, "r") : stdin))
			circ_dief("'%s': cannot open: %s", cp.name, strerror(errno));
		if (!strcmp(cp.name, "-")) /* named as the stream reader names it */
			cp.name = "<stdin>";
		if (!(h = circ_dharvest_new(m, dict, d.seqs, d.ctx_len, d.t.threads, corpus_next,
					    &cp, &e)))
			circ_die(&e);
		cfill.h = h;
		cfill.name = cp.name;
		cfill.need = (int64_t)cap + (int64_t)d.t.steps * d.t.batch;
		buf = make_buffer(cap, w, corpus_fill, &cfill);
	}
	double scale = 1;
	if (d.resume) {
		circ_st *f = circ_st_open(d.resume, &e);
		if (!f || circ_dtrain_restore(t, f, &e) < 0 || circ_dbuf_restore(buf, f, &e) < 0)
			circ_die(&e);
		const char *sc = circ_st_metadata(f, "train.scale");
		scale = sc ? strtod(sc, NULL) : 0;
		if (!(scale > 0) || (scale != 1) != d.normalize)
			circ_dief("'%s': checkpoint made %s --normalize", d.resume,
				  d.normalize ? "without" : "with");
		if (fix) { /* the fixture's draws replayed */
			int64_t n = circ_dbuf_rows_in(buf);
			float *skip = circ_xmalloc((size_t)n * w * sizeof(float));
			circ_dfix_fill(fix, skip, (size_t)n, &e);
			free(skip);
		} else {
			const char *s = circ_st_metadata(f, "dharvest.seqs");
			int64_t n = s ? strtoll(s, NULL, 10) : -1;
			int32_t *tok = circ_xmalloc((size_t)d.ctx_len * sizeof *tok);
			for (int64_t q = 0; q < n; q++)
				if (corpus_next(&cp, tok, 1, d.ctx_len, &e) != 1)
					circ_dief(
					    "'%s': the corpus is shorter than when the checkpoint "
					    "'%s' was written",
					    cp.name, d.resume);
			free(tok);
			if (n < 0 || circ_dharvest_restore(h, f, &e) < 0)
				circ_die(&e);
		}
		circ_st_close(f);
	}

	if (d.normalize && !d.resume) {
		/* SAELens's estimate: sqrt(d_in) / the mean norm of the input rows */
		size_t n;
		const float *all = circ_dbuf_peek(buf, &n, &e);
		if (!all)
			circ_die(&e);
		double sum = 0;
		for (size_t q = 0; q < n; q++) {
			double nn = 0;
			for (int j = 0; j < D; j++)
				nn += (double)all[q * w + j] * all[q * w + j];
			sum += sqrt(nn);
		}
		if (!(sum > 0))
			circ_dief("--normalize: the activations are all zero");
		scale = sqrt((double)D) / (sum / (double)n);
	}

	/* training */
	float *rows = circ_xmalloc_aligned((size_t)d.t.batch * w * sizeof(float)),
	      *x = circ_xmalloc_aligned((size_t)d.t.batch * D * sizeof(float)),
	      *y = transcoder ? circ_xmalloc_aligned((size_t)d.t.batch * O * sizeof(float)) : NULL;
	circ_dtrain_stats st = {0};
	int tty = isatty(2) && !getenv("CIRC_NO_PROGRESS");
	double t0 = circ_now();
	int64_t s0 = circ_dtrain_step_count(t),
		end = d.stop_after && d.stop_after < d.t.steps ? d.stop_after : d.t.steps;
	for (int64_t s = s0; s < end; s++) {
		if (circ_dbuf_next(buf, rows, (size_t)d.t.batch, &e) < 0)
			circ_die(&e);
		for (int q = 0; q < d.t.batch; q++) {
			memcpy(x + (size_t)q * D, rows + (size_t)q * w, (size_t)D * sizeof(float));
			if (y)
				memcpy(y + (size_t)q * O, rows + (size_t)q * w + D,
				       (size_t)O * sizeof(float));
		}
		if (scale != 1) {
			for (size_t q = 0; q < (size_t)d.t.batch * D; q++)
				x[q] = (float)(x[q] * scale);
			for (size_t q = 0; y && q < (size_t)d.t.batch * O; q++)
				y[q] = (float)(y[q] * scale);
		}
		if (s == 0 && !transcoder)
			circ_dtrain_init_b_dec(t, x, (size_t)d.t.batch);
		if (circ_dtrain_step(t, x, y, d.t.batch, &st, &e) < 0)
			circ_die(&e);
		double tps = (double)(s + 1 - s0) * d.t.batch / (circ_now() - t0 + 1e-9);
		if (d.log && (s + 1) % d.log == 0)
			fprintf(
			    stderr,
			    "%s%s: step %lld mse %.6g fvu %.4f L0 %.2f dead %.4f aux %.4g lr %.3g "
			    "%.0f tokens/s\n",
			    tty ? "\r\033[K" : "", circ_progname, (long long)(s + 1), st.mse,
			    st.fvu, st.l0, st.dead_frac, st.aux, st.lr, tps);
		if (tty)
			dict_progress(s + 1, d.t.steps, &st, tps, s + 1 == end);
		if (d.checkpoint && ((s + 1) % d.every == 0 || s + 1 == end))
			write_checkpoint(t, buf, h, scale);
	}
	if (m && circ_model_check_unchanged(m, &e) < 0)
		circ_die(&e);
	if (fix) {
		circ_dtrain_view v;
		circ_dtrain_views(t, circ_dtrain_params(t), &v);
		fprintf(
		    stderr,
		    "%s: superposition fixture: mean max cosine of the 64 true directions with "
		    "the decoder's rows %.4f\n",
		    circ_progname,
		    circ_dtrain_recovery(transcoder ? circ_dfix_out_dirs(fix) : circ_dfix_dirs(fix),
					 64, v.W_dec, d.t.d_sae, O));
	}
	if (end == d.t.steps) {
		circ_dtrain_to_dict(t, dict);
		if (scale != 1) {
			dict->cfg.norm = CIRC_DICT_NORM_EXPECTED_AVERAGE;
			dict->cfg.scale = scale;
		}
		if (circ_dict_save(dict, d.out, d.dtype, &e) < 0)
			circ_die(&e);
	}
	if (cp.f && cp.f != stdin)
		fclose(cp.f);
	circ_reader_free(cp.r);
	free(cp.ids);
	free(rows);
	free(x);
	free(y);
	circ_dbuf_free(buf);
	circ_dharvest_free(h);
	circ_dfix_free(fix);
	circ_dict_free(dict);
	circ_dtrain_free(t);
	circ_model_free(m);
	return 0;
}

int main(int argc, char **argv)
{
	circ_cli cli = {
	    "TASK --out DIR [options]   (TASK: induction, ioi, greater-than)\n"
	    "       circ-train --diagnose DIR [--len L] [--n N] [--seed S]\n"
	    "       circ-train sae|transcoder ... (sparse dictionaries: circ-train sae "
	    "--help)",
	    "Train a small GPT-2- or Llama-architecture model on a synthetic task, or print "
	    "per-head attention diagnostics of a model.",
	    opts, 0};
	circ_error e;
	circ_config c;
	circ_tbatch b = {0};
	circ_ttask_eval ev;
	char res[1024], dsargs[256] = "";
	int i, threads_given;

	circ_init("circ-train");
	if (argc > 1 && (!strcmp(argv[1], "sae") || !strcmp(argv[1], "transcoder")))
		return dict_main(argc - 1, argv + 1, !strcmp(argv[1], "transcoder"));
	circ_ttask_opts_default(&o.t);
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	threads_given = check_common_options();
	if (o.diagnose) {
		if (argc - i != 0)
			circ_usage_error("--diagnose takes no task");
		return diagnose(o.diagnose);
	}
	check_training_options(argc - i, argv + i);

	/* the vocabulary, the data, the model */
	make_tmpdir();
	if (circ_ttask_write_vocab(&o.t, tmpdir, &e) < 0)
		die_clean(&e);
	circ_bpe *bpe = circ_bpe_load_dir(tmpdir, &e);
	if (!bpe)
		die_clean(&e);
	double t0 = circ_now();
	circ_ttask *task = circ_ttask_new(&o.t, bpe, o.seed, &e);
	if (!task) { /* the options do not fit the task together */
		remove_tmp();
		circ_usage_error("%s", e.msg);
	}
	circ_model *m = new_model(&c, bpe, task);
	circ_trainer *tr = new_trainer(m, task);

	train(tr, task, &b, t0);
	double train_s = circ_now() - t0;

	/* evaluation and output */
	if (circ_ttask_evaluate(task, tr, o.batch, &ev, &e) < 0)
		die_clean(&e);
	describe_eval(&ev, res, sizeof res);
	fprintf(stderr, "%s: trained %d steps in %.1fs; evaluation on %lld examples: %s\n",
		circ_progname, o.steps, train_s, (long long)ev.n, res);
	if (circ_model_save(m, tmpdir, &e) < 0)
		die_clean(&e);
	write_circ_mk(dsargs, sizeof dsargs);
	write_readme(argc, argv, threads_given, m, bpe, &ev, dsargs, res);
	if (move_into_place(tmpdir, o.out, &e) < 0)
		die_clean(&e);
	unregister_tmp();
	tmpdir[0] = 0;
	circ_tbatch_free(&b);
	circ_trainer_free(tr);
	circ_model_free(m);
	circ_ttask_free(task);
	circ_bpe_free(bpe);
	return 0;
}
