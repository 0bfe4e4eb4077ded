/*
 * test_families: config.json files of released models
 * (tests/data/families/hub-configs) read into the architecture each model
 * has (the values of its model card and modeling code, written here by
 * hand), the derived values (head width, kv heads, rotary dims, local
 * layers) and the size of each family's tensor table (the tensor count of
 * the released checkpoint). The tiny test models of tests/data/families are
 * checked end to end by tests/families.bats.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "model_names.h"
#include "util.h"
#include "check.h"

static char root[4096];

typedef struct want {
	const char *file;
	circ_model_type type;
	int L, H, K, D, C, F, V, P;
	circ_norm_kind norm;
	double eps, offset;
	circ_norm_place place;
	circ_qk_norm qk;
	circ_act act;
	double theta;
	int rotary;
	circ_rope_scaling scaling;
	double local_theta;
	int qkv_bias, o_bias, mlp_bias, parallel, untied;
	double embed_scale, attn_cap, final_cap, qpas;
	int window, n_local;
	int n_tensors;
} want;

/* The values each model has (its model card, its modeling code's defaults). */
/* clang-format off */
static const want cases[] = {
    /* file, family, L, H, K, D, C, F, V, P (at most 65536),
     * norm, eps, offset, place, q/k norm, act, theta, rotary dims, scaling, local theta,
     * qkv, o, mlp biases, parallel, untied,
     * embed scale (0: none), attention and final soft-caps, query_pre_attn_scalar,
     * window, local layers, tensors */
    {"Llama-3.2-1B", CIRC_MODEL_LLAMA, 16, 32, 8, 64, 2048, 8192, 128256, 65536,
     CIRC_NORM_RMSNORM, 1e-5, 0, CIRC_NORM_PRE, CIRC_QK_NORM_NONE, CIRC_ACT_SILU, 500000, 64,
     CIRC_ROPE_LLAMA3, 0,
     0, 0, 0, 0, 0,
     0, 0, 0, 0,
     0, 0, 146},
    {"Llama-2-7b-hf", CIRC_MODEL_LLAMA, 32, 32, 32, 128, 4096, 11008, 32000, 4096,
     CIRC_NORM_RMSNORM, 1e-5, 0, CIRC_NORM_PRE, CIRC_QK_NORM_NONE, CIRC_ACT_SILU, 10000, 128,
     CIRC_ROPE_DEFAULT, 0,
     0, 0, 0, 0, 1,
     0, 0, 0, 0,
     0, 0, 291},
    {"pythia-70m", CIRC_MODEL_GPT_NEOX, 6, 8, 8, 64, 512, 2048, 50304, 2048,
     CIRC_NORM_LAYERNORM, 1e-5, 0, CIRC_NORM_PRE, CIRC_QK_NORM_NONE, CIRC_ACT_GELU, 10000, 16,
     CIRC_ROPE_DEFAULT, 0,
     1, 1, 1, 1, 1,
     0, 0, 0, 0,
     0, 0, 76},
    {"Mistral-7B-v0.1", CIRC_MODEL_MISTRAL, 32, 32, 8, 128, 4096, 14336, 32000, 32768,
     CIRC_NORM_RMSNORM, 1e-5, 0, CIRC_NORM_PRE, CIRC_QK_NORM_NONE, CIRC_ACT_SILU, 10000, 128,
     CIRC_ROPE_DEFAULT, 0,
     0, 0, 0, 0, 1,
     0, 0, 0, 0,
     4096, 32, 291},
    {"Qwen2.5-0.5B", CIRC_MODEL_QWEN2, 24, 14, 2, 64, 896, 4864, 151936, 32768,
     CIRC_NORM_RMSNORM, 1e-6, 0, CIRC_NORM_PRE, CIRC_QK_NORM_NONE, CIRC_ACT_SILU, 1e6, 64,
     CIRC_ROPE_DEFAULT, 0,
     1, 0, 0, 0, 0,
     0, 0, 0, 0,
     0, 0, 290},
    {"Qwen3-0.6B", CIRC_MODEL_QWEN3, 28, 16, 8, 128, 1024, 3072, 151936, 40960,
     CIRC_NORM_RMSNORM, 1e-6, 0, CIRC_NORM_PRE, CIRC_QK_NORM_HEAD, CIRC_ACT_SILU, 1e6, 128,
     CIRC_ROPE_DEFAULT, 0,
     0, 0, 0, 0, 0,
     0, 0, 0, 0,
     0, 0, 310},
    {"gemma-2b", CIRC_MODEL_GEMMA, 18, 8, 1, 256, 2048, 16384, 256000, 8192,
     CIRC_NORM_RMSNORM, 1e-6, 1, CIRC_NORM_PRE, CIRC_QK_NORM_NONE, CIRC_ACT_GELU_NEW, 10000, 256,
     CIRC_ROPE_DEFAULT, 0,
     0, 0, 0, 0, 0,
     45.254833995939045, 0, 0, 0,
     0, 0, 164},
    {"gemma-2-2b", CIRC_MODEL_GEMMA2, 26, 8, 4, 256, 2304, 9216, 256000, 8192,
     CIRC_NORM_RMSNORM, 1e-6, 1, CIRC_NORM_PRE_POST, CIRC_QK_NORM_NONE, CIRC_ACT_GELU_NEW, 10000,
     256, CIRC_ROPE_DEFAULT, 0,
     0, 0, 0, 0, 0,
     48, 50, 30, 256,
     4096, 13, 288},
    {"gemma-3-1b-it", CIRC_MODEL_GEMMA3_TEXT, 26, 4, 1, 256, 1152, 6912, 262144, 32768,
     CIRC_NORM_RMSNORM, 1e-6, 1, CIRC_NORM_PRE_POST, CIRC_QK_NORM_HEAD, CIRC_ACT_GELU_NEW, 1e6,
     256, CIRC_ROPE_DEFAULT, 10000,
     0, 0, 0, 0, 0,
     33.941125496954278, 0, 0, 256,
     512, 22, 340},
    {"OLMo-2-0425-1B", CIRC_MODEL_OLMO2, 16, 16, 16, 128, 2048, 8192, 100352, 4096,
     CIRC_NORM_RMSNORM, 1e-6, 0, CIRC_NORM_POST, CIRC_QK_NORM_WHOLE, CIRC_ACT_SILU, 500000, 128,
     CIRC_ROPE_DEFAULT, 0,
     0, 0, 0, 0, 1,
     0, 0, 0, 0,
     0, 0, 179},
};
/* clang-format on */

static int close_to(double a, double b)
{
	return fabs(a - b) <= 1e-6 * fabs(b);
}

static void check_case(const want *w)
{
	char path[4400];
	circ_config c;
	circ_error e = {{0}};
	model_tensor *tab = NULL;
	int n_local = 0, n;
	snprintf(path, sizeof path, "%s/tests/data/families/hub-configs/%s.json", root, w->file);
	if (circ_config_load(path, &c, &e) < 0) {
		fprintf(stderr, "test_families: %s: %s\n", w->file, e.msg);
		failures++;
		return;
	}
	for (int l = 0; l < c.n_layer; l++)
		n_local += c.sliding_window && c.local_layer[l];
	n = model_names_list(&c, &tab);
	for (int k = 0, m = n; k < m; k++)
		n -= tab[k].optional; /* a tied lm_head copy: released files have none */
	free(tab);
	if (c.model_type != w->type || c.n_layer != w->L || c.n_head != w->H ||
	    circ_config_kv_heads(&c) != w->K || circ_config_head_dim(&c) != w->D ||
	    c.n_embd != w->C || c.n_inner != w->F || c.vocab_size != w->V || c.n_ctx != w->P ||
	    c.norm != w->norm || !close_to(c.layer_norm_epsilon, w->eps) ||
	    c.norm_offset != w->offset || c.norm_place != w->place || c.qk_norm != w->qk ||
	    c.act != w->act || c.pos != CIRC_POS_ROTARY || !close_to(c.rope_theta, w->theta) ||
	    circ_config_rotary_dim(&c) != w->rotary || c.rope_scaling != w->scaling ||
	    c.rope_local_theta != w->local_theta || (!c.no_bias_qkv) != w->qkv_bias ||
	    (!c.no_bias_o) != w->o_bias || (!c.no_bias_mlp) != w->mlp_bias ||
	    c.parallel_residual != w->parallel || c.untied != w->untied ||
	    (w->embed_scale && !close_to(c.embed_scale, w->embed_scale)) ||
	    (!w->embed_scale && c.embed_scale) || c.attn_softcap != w->attn_cap ||
	    c.final_softcap != w->final_cap || c.query_pre_attn_scalar != w->qpas ||
	    c.sliding_window != w->window || n_local != w->n_local || n != w->n_tensors) {
		char *d = circ_config_describe(&c, !c.untied);
		fprintf(stderr, "test_families: %s read as %s (%d tensors)\n", w->file, d, n);
		free(d);
		failures++;
	}
}

int main(void)
{
	const char *r = getenv("CIRC_ROOT");
	snprintf(root, sizeof root, "%s", r ? r : ".");
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		check_case(&cases[i]);
	/* Llama 3's frequency scaling, as the file has it */
	{
		char path[4400];
		circ_config c;
		circ_error e = {{0}};
		snprintf(path, sizeof path, "%s/tests/data/families/hub-configs/Llama-3.2-1B.json",
			 root);
		CHECK_MSG(circ_config_load(path, &c, &e) == 0, e);
		CHECK(c.rope_factor == 32 && c.rope_low_freq_factor == 1 &&
		      c.rope_high_freq_factor == 4 && c.rope_original_ctx == 8192);
	}
	if (failures)
		fprintf(stderr, "test_families: %d failures\n", failures);
	else
		printf("test_families: ok\n");
	return failures != 0;
}
