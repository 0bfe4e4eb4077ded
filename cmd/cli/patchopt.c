/*
 * patchopt: shared options of the patching tools (see patchopt.h).
 */
#include "patchopt.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void circ_patch_cli_init(circ_patch_cli *pc)
{
	memset(pc, 0, sizeof *pc);
	pc->ablation = CIRC_ABL_RESAMPLE;
	pc->metric = CIRC_METRIC_KL;
	pc->level = CIRC_LEVEL_EDGE;
	pc->conv = CIRC_INPUT_EAPIG;
	pc->batch = 16;
	pc->threads = 0;
	pc->max_memory = (int64_t)3 << 30;
}

/* A size in bytes: digits, then an optional K, M, G or T (powers of 1024),
 * optionally followed by "B" or "iB". */
static int64_t parse_size(const char *opt, const char *arg)
{
	char *end;
	errno = 0;
	if (!*arg || *arg == '-' || *arg == ' ')
		circ_usage_error("option '--%s': '%s' is not a size (e.g. 3G, 512M, 0)", opt, arg);
	unsigned long long v = strtoull(arg, &end, 10);
	int shift = 0;
	if (end == arg)
		circ_usage_error("option '--%s': '%s' is not a size (e.g. 3G, 512M, 0)", opt, arg);
	switch (*end) {
	case 'K':
	case 'k':
		shift = 10;
		end++;
		break;
	case 'M':
	case 'm':
		shift = 20;
		end++;
		break;
	case 'G':
	case 'g':
		shift = 30;
		end++;
		break;
	case 'T':
	case 't':
		shift = 40;
		end++;
		break;
	}
	if (shift && !strcmp(end, "iB"))
		end += 2;
	else if (*end == 'B')
		end++;
	if (*end || errno || v > ((unsigned long long)INT64_MAX >> shift))
		circ_usage_error("option '--%s': '%s' is not a size (e.g. 3G, 512M, 0)", opt, arg);
	return (int64_t)(v << shift);
}

int circ_patch_cli_handle(circ_patch_cli *pc, int key, const char *arg)
{
	switch (key) {
	case CIRC_PO_MODEL: pc->model = arg; return 0;
	case CIRC_PO_ABLATION:
		if (circ_ablation_parse(arg, &pc->ablation) < 0)
			circ_usage_error("unknown ablation '%s' (resample, mean, zero)", arg);
		pc->ablation_set = 1;
		return 0;
	case CIRC_PO_MEAN_REF: pc->mean_ref = arg; return 0;
	case CIRC_PO_PER_POSITION: pc->per_position = 1; return 0;
	case CIRC_PO_METRIC:
		if (circ_metric_parse(arg, strlen(arg), &pc->metric) < 0)
			circ_usage_error("unknown metric '%s' (logit_diff, prob_diff, logprob, kl)",
					 arg);
		pc->metric_set = 1;
		return 0;
	case CIRC_PO_LEVEL:
		if (circ_graph_level_parse(arg, &pc->level) < 0)
			circ_usage_error("unknown level '%s' (edge, node)", arg);
		pc->level_set = 1;
		return 0;
	case CIRC_PO_CONVENTION:
		if (circ_graph_input_parse(arg, &pc->conv) < 0)
			circ_usage_error("unknown convention '%s' (eap-ig, acdc)", arg);
		pc->conv_set = 1;
		return 0;
	case CIRC_PO_BATCH:
		pc->batch = (int)circ_opt_i64("batch", arg, 1, 4096);
		pc->batch_set = 1;
		return 0;
	case CIRC_PO_THREADS:
		pc->threads = (int)circ_opt_i64("threads", arg, 1, CIRC_THREADS_MAX);
		return 0;
	case CIRC_PO_ALLOW_NONFINITE: pc->allow_nonfinite = 1; return 0;
	case CIRC_PO_MAX_MEMORY: pc->max_memory = parse_size("max-memory", arg); return 0;
	case CIRC_PO_GQA:
		if (strcmp(arg, "grouped") && strcmp(arg, "ungrouped"))
			circ_usage_error("unknown --gqa '%s' (ungrouped, grouped)", arg);
		pc->gqa_grouped = !strcmp(arg, "grouped");
		return 0;
	case CIRC_PO_COMPUTE:
		pc->compute = circ_cli_compute_parse(arg);
		pc->compute_set = 1;
		return 0;
	case CIRC_PO_HEAD_NODES:
		if (strcmp(arg, "share") && strcmp(arg, "raw"))
			circ_usage_error("unknown --head-nodes '%s' (share, raw)", arg);
		pc->raw_heads = !strcmp(arg, "raw");
		return 0;
	}
	return 1;
}

circ_compute circ_cli_compute_parse(const char *arg)
{
	if (!strcmp(arg, "f32"))
		return CIRC_COMPUTE_F32;
	if (!strcmp(arg, "bf16"))
		return CIRC_COMPUTE_BF16;
	circ_usage_error("unknown --compute '%s' (f32, bf16)", arg);
}

void circ_cli_model_compute(circ_model *m, circ_compute c)
{
	circ_error e;
	if (circ_model_set_compute(m, c, &e) < 0)
		circ_die(&e);
}

void circ_patch_cli_check(circ_patch_cli *pc)
{
	if (pc->ablation != CIRC_ABL_MEAN) {
		if (pc->per_position)
			circ_usage_error("option '--per-position' goes with --ablation mean");
		if (pc->mean_ref)
			circ_usage_error("option '--mean-ref' goes with --ablation mean");
	}
	if (pc->threads == 0)
		pc->threads = circ_threads_default();
}

const char *circ_patch_cli_given(const circ_patch_cli *pc, const int *allowed)
{
	static const struct {
		int key;
		const char *name;
	} opts[] = {
	    {CIRC_PO_MODEL, "model"},		{CIRC_PO_ABLATION, "ablation"},
	    {CIRC_PO_MEAN_REF, "mean-ref"},	{CIRC_PO_PER_POSITION, "per-position"},
	    {CIRC_PO_METRIC, "metric"},		{CIRC_PO_LEVEL, "level"},
	    {CIRC_PO_CONVENTION, "convention"}, {CIRC_PO_BATCH, "batch"},
	    {CIRC_PO_THREADS, "threads"},	{CIRC_PO_COMPUTE, "compute"},
	    {CIRC_PO_HEAD_NODES, "head-nodes"},
	};
	for (size_t i = 0; i < sizeof opts / sizeof *opts; i++) {
		int given = 0, ok = 0;
		switch (opts[i].key) {
		case CIRC_PO_MODEL: given = pc->model != NULL; break;
		case CIRC_PO_ABLATION: given = pc->ablation_set; break;
		case CIRC_PO_MEAN_REF: given = pc->mean_ref != NULL; break;
		case CIRC_PO_PER_POSITION: given = pc->per_position; break;
		case CIRC_PO_METRIC: given = pc->metric_set; break;
		case CIRC_PO_LEVEL: given = pc->level_set; break;
		case CIRC_PO_CONVENTION: given = pc->conv_set; break;
		case CIRC_PO_BATCH: given = pc->batch_set; break;
		case CIRC_PO_THREADS: given = pc->threads != 0; break;
		case CIRC_PO_COMPUTE: given = pc->compute_set; break;
		case CIRC_PO_HEAD_NODES: given = pc->raw_heads; break;
		}
		for (const int *a = allowed; a && *a; a++)
			ok |= *a == opts[i].key;
		if (given && !ok)
			return opts[i].name;
	}
	return NULL;
}

static circ_model *open_model(const char *dir, const circ_model_opts *mo)
{
	circ_error e;
	circ_model *m = circ_model_open(dir, mo, &e);
	if (!m || !circ_model_digest(m, &e))
		circ_die(&e);
	return m;
}

void circ_patch_cli_no_raw(const circ_patch_cli *pc, const char *what)
{
	if (pc->raw_heads)
		circ_usage_error("--head-nodes raw does not apply to %s", what);
}

circ_model *circ_cli_open_model(const char *dir, int allow_nonfinite, int gqa_grouped)
{
	circ_model_opts mo;
	circ_model_opts_default(&mo);
	mo.allow_nonfinite = allow_nonfinite;
	mo.gqa_grouped = gqa_grouped;
	return open_model(dir, &mo);
}

circ_model *circ_patch_cli_model(const circ_patch_cli *pc, circ_graph **g)
{
	circ_model *m;
	if (!pc->model)
		circ_usage_error("--model DIR is required");
	{
		circ_model_opts mo;
		circ_model_opts_default(&mo);
		mo.allow_nonfinite = pc->allow_nonfinite;
		mo.gqa_grouped = pc->gqa_grouped;
		mo.raw_heads = pc->raw_heads;
		m = open_model(pc->model, &mo);
	}
	circ_cli_model_compute(m, pc->compute);
	if (g)
		*g = circ_cli_model_graph(m, pc->level, pc->conv);
	return m;
}

circ_graph *circ_cli_model_graph(const circ_model *m, circ_graph_level level, circ_input_conv conv)
{
	circ_error e;
	circ_graph *g = circ_graph_new_desc(&circ_model_topology(m)->d, level, &e);
	if (!g)
		circ_die(&e);
	g->input = conv;
	snprintf(g->model_type, sizeof g->model_type, "%s",
		 circ_model_type_name(circ_model_config(m)->model_type));
	return g;
}

void circ_patch_cli_metric(circ_patch_cli *pc, circ_reader *tokens)
{
	circ_error e;
	if (pc->metric_set)
		return;
	if (circ_batch_metric_from_header(circ_reader_header(tokens), &pc->metric, &e) < 0) {
		circ_error_prefix(&e, "%s", circ_reader_name(tokens));
		circ_die(&e);
	}
	pc->metric_set = 1;
}

void circ_patch_cli_opts(const circ_patch_cli *pc, const circ_model *m, int backward,
			 circ_patch_opts *po)
{
	memset(po, 0, sizeof *po);
	po->ablation = pc->ablation;
	po->mean_per_position = pc->per_position;
	po->metric = pc->metric;
	po->threads = pc->threads;
	po->max_b = pc->batch;
	po->max_t = circ_model_config(m)->n_ctx; /* circ_patcher_new caps it at a run's limit */
	po->backward = backward;
	po->allow_nonfinite = pc->allow_nonfinite;
}

void circ_patch_cli_means(const circ_patch_cli *pc, circ_patcher *p, const circ_model *m,
			  const char *input)
{
	const circ_config *c = circ_model_config(m);
	circ_error e;
	circ_reader *r;
	circ_batch_reader *bt;
	circ_batch *b;
	int k;
	if (pc->ablation != CIRC_ABL_MEAN)
		return;
	if (!pc->mean_ref && !strcmp(input, "-"))
		circ_usage_error("mean ablation on standard input needs --mean-ref FILE");
	r = circ_reader_open(pc->mean_ref ? pc->mean_ref : input, "tokens", &e);
	if (!r || circ_batch_check_vocab(r, pc->model, &e) < 0)
		circ_die(&e);
	bt = circ_batch_reader_new(r, pc->metric, c->vocab_size, c->n_ctx, pc->batch);
	while ((k = circ_batch_reader_next(bt, &b, &e)) > 0)
		if (circ_patcher_mean_add(p, b, &e) < 0)
			circ_die(&e);
	if (k < 0 || circ_patcher_mean_finish(p, &e) < 0)
		circ_die(&e);
	circ_batch_reader_free(bt);
	circ_reader_free(r);
}
