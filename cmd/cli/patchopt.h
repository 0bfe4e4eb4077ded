/*
 * patchopt: the command-line options shared by the tools that run patched
 * models (circ-score, circ-patch, circ-harvest, circ-prune --acdc): model,
 * ablation and its reference, metric, graph level and convention, batch and
 * threads. One table, one parser, one meaning for every tool.
 *
 * Layering: cmd/cli/, over opt and lib/'s patch and batch (like opt, it
 * prints usage errors and exits).
 */
#ifndef CIRC_PATCHOPT_H
#define CIRC_PATCHOPT_H

#include "opt.h"
#include "patch.h"

/* Option keys (tools number their own from CIRC_OPT_FIRST_TOOL). */
enum {
	CIRC_PO_MODEL = 'm',
	CIRC_PO_ABLATION = 1050,
	CIRC_PO_MEAN_REF,
	CIRC_PO_PER_POSITION,
	CIRC_PO_METRIC,
	CIRC_PO_LEVEL,
	CIRC_PO_CONVENTION,
	CIRC_PO_BATCH,
	CIRC_PO_THREADS,
	CIRC_PO_ALLOW_NONFINITE,
	CIRC_PO_GQA,
	CIRC_PO_MAX_MEMORY,
	CIRC_PO_COMPUTE,
	CIRC_PO_HEAD_NODES,
};

/* The options' table entries, for a tool to list in its own table (the help
 * texts are the same in every tool). */
/* clang-format off */
/* --compute's help, for circ-forward's table too */
#define CIRC_OPT_COMPUTE_HELP \
	"f32 (default, exact) or bf16: products with the weight matrices in bfloat16 through " \
	"oneDNN (AMX-BF16 or AVX512-BF16), summed in f32; refused on a CPU without them"
#define CIRC_PATCH_OPT_MODEL \
	{"model", CIRC_PO_MODEL, "DIR", "Hugging Face model directory (config.json, model.safetensors or shards)"}
#define CIRC_PATCH_OPT_COMMON \
	{"ablation", CIRC_PO_ABLATION, "A", "resample (default: the corrupted prompt), mean or zero"}, \
	{"mean-ref", CIRC_PO_MEAN_REF, "FILE", \
	 "token stream whose clean prompts give the means (default: the input)"}, \
	{"per-position", CIRC_PO_PER_POSITION, NULL, "mean ablation with one mean per position"}, \
	{"metric", CIRC_PO_METRIC, "M", \
	 "override the task's metric (logit_diff, prob_diff, logprob, kl)"}, \
	{"level", CIRC_PO_LEVEL, "L", "edge (default: q/k/v receivers) or node (whole heads)"}, \
	{"convention", CIRC_PO_CONVENTION, "C", \
	 "eap-ig (default: input is the token embedding) or acdc"}, \
	{"batch", CIRC_PO_BATCH, "N", "examples per batch (default 16)"}, \
	{"max-memory", CIRC_PO_MAX_MEMORY, "SIZE", \
	 "cut batches so that their activations stay under SIZE bytes (K, M, G suffixes; " \
	 "default 3G; 0: no limit)"}, \
	{"threads", CIRC_PO_THREADS, "N", "threads"}, \
	{"allow-nonfinite", CIRC_PO_ALLOW_NONFINITE, NULL, \
	 "let NaN or infinite weights, activations, metrics and scores through"}, \
	{"gqa", CIRC_PO_GQA, "G", \
	 "grouped-query attention: ungrouped (default: k, v receivers per query head) or grouped"}, \
	{"compute", CIRC_PO_COMPUTE, "T", CIRC_OPT_COMPUTE_HELP}, \
	{"head-nodes", CIRC_PO_HEAD_NODES, "N", \
	 "norms after attention (gemma2, gemma3_text, olmo2): share (default: a head outputs its " \
	 "share of the normed sum) or raw (its own output, the norm on the receiver's side: " \
	 "EAP-IG's and MIB's nodes)"}
/* clang-format on */

typedef struct circ_patch_cli {
	const char *model, *mean_ref;
	circ_ablation ablation;
	int per_position;
	int metric_set;
	circ_metric_kind metric;
	int level_set, conv_set;
	circ_graph_level level;
	circ_input_conv conv;
	int batch, threads; /* threads 0: not given (circ_patch_cli_check sets it) */
	int batch_set, ablation_set;
	int allow_nonfinite;  /* NaN/Inf weights, activations, metrics, scores let through */
	int gqa_grouped;      /* --gqa grouped */
	int raw_heads;	      /* --head-nodes raw */
	int64_t max_memory;   /* --max-memory: bytes of a batch's activations; 0: no limit */
	circ_compute compute; /* --compute */
	int compute_set;
} circ_patch_cli;

void circ_patch_cli_init(circ_patch_cli *pc);
/* Handles a key of the shared options: 0 if handled, 1 if not one of them
 * (usage errors exit 2). */
int circ_patch_cli_handle(circ_patch_cli *pc, int key, const char *arg);
/* After parsing, before anything is read: options that only mean something
 * together (--per-position and --mean-ref with --ablation mean) are usage
 * errors alone, and the thread count defaults (circ_threads_default; a bad
 * CIRC_THREADS exits 2). */
void circ_patch_cli_check(circ_patch_cli *pc);
/* The name of the first shared option given other than those in `allowed`
 * (CIRC_PO_* keys, ended by 0; NULL: none allowed), or NULL: for modes that
 * run no model. Call it before circ_patch_cli_check, which sets the thread
 * count. */
const char *circ_patch_cli_given(const circ_patch_cli *pc, const int *allowed);

/* Usage error (exit 2) if --head-nodes raw was given: for the methods
 * that read node outputs as a sum (`what` names the method). */
void circ_patch_cli_no_raw(const circ_patch_cli *pc, const char *what);
/* Opens the model in dir (--allow-nonfinite: allow_nonfinite) and digests
 * its weights; exits 1 with the message on error. */
circ_model *circ_cli_open_model(const char *dir, int allow_nonfinite, int gqa_grouped);
/* --compute's argument (f32, bf16); a usage error (exit 2) otherwise. */
circ_compute circ_cli_compute_parse(const char *arg);
/* Sets m's compute (circ_model_set_compute); exits 1 with the message (a CPU
 * without bf16 instructions, circ built without oneDNN) on error. */
void circ_cli_model_compute(circ_model *m, circ_compute c);
/* The model's graph (its topology's shape: grouped or parallel blocks) at
 * the level and convention given, named by its model_type; exits 1 on
 * error. */
circ_graph *circ_cli_model_graph(const circ_model *m, circ_graph_level level, circ_input_conv conv);
/* Opens --model (required: usage error if missing) and builds its graph at
 * the chosen level and convention; exits 1 with the message on error. */
circ_model *circ_patch_cli_model(const circ_patch_cli *pc, circ_graph **g);
/* The metric: --metric, else the token stream's header ("metric"). */
void circ_patch_cli_metric(circ_patch_cli *pc, circ_reader *tokens);
/* Patcher options for the model and the chosen settings. */
void circ_patch_cli_opts(const circ_patch_cli *pc, const circ_model *m, int backward,
			 circ_patch_opts *po);
/* For mean ablation: feeds the reference dataset (--mean-ref, else the input
 * file) to the patcher's means. Does nothing for other ablations. Exits on
 * error (input "-" without --mean-ref is a usage error). */
void circ_patch_cli_means(const circ_patch_cli *pc, circ_patcher *p, const circ_model *m,
			  const char *input);

#endif
