/*
 * circ-fixture: writes a hand-built model (lib/handbuilt) as a Hugging Face
 * GPT-2 directory with its ground-truth circuit and specification (a
 * feature fixture also with its SAE dictionaries and feature-level truth). The
 * output is a pure function of the model's name: rerunning gives the same
 * bytes, which is how the committed fixtures are checked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "handbuilt.h"
#include "cli/opt.h"

enum {
	OPT_OUT = CIRC_OPT_FIRST_TOOL,
	OPT_LIST,
	OPT_TRUTH,
	OPT_EXAMPLES,
	OPT_SEED,
	OPT_SPEC,
	OPT_RANDOM,
	OPT_VOCAB_DIR,
	OPT_LAYERS,
	OPT_HEADS,
	OPT_EMBD,
	OPT_CTX
};

static const circ_opt opts[] = {
    {"out", OPT_OUT, "DIR", "write the model directory DIR (created if missing)"},
    {"list", OPT_LIST, NULL, "list the hand-built models with a summary and exit"},
    {"truth", OPT_TRUTH, NULL,
     "print the ground-truth edges (a feature fixture: feature edges), one a line, and exit"},
    {"examples", OPT_EXAMPLES, "N",
     "write N examples of the model's task as dataset JSON lines (for circ-tokenize)"},
    {"seed", OPT_SEED, "S", "with --examples: random seed, 0..2^63-1 (default 1)"},
    {"spec", OPT_SPEC, NULL, "print SPEC.md to stdout and exit"},
    {"random", OPT_RANDOM, NULL,
     "instead of a hand-built model, write a random-weight GPT-2 with --vocab-dir's tokenizer"},
    {"vocab-dir", OPT_VOCAB_DIR, "DIR",
     "with --random: tokenizer directory (vocab.json, merges.txt)"},
    {"layers", OPT_LAYERS, "L", "with --random: layers (default 2)"},
    {"heads", OPT_HEADS, "H", "with --random: heads per layer (default 4)"},
    {"embd", OPT_EMBD, "C", "with --random: width (default 32)"},
    {"ctx", OPT_CTX, "P", "with --random: context length (default 64)"},
    {0},
};

static struct {
	const char *out;
	int list, truth, spec;
	int64_t examples;
	uint64_t seed;
	int seed_given;
	int random;
	const char *vocab_dir;
	int layers, heads, embd, ctx;
	const char *shape_opt; /* the first of --layers, --heads, --embd, --ctx given */
} o = {.examples = -1, .seed = 1, .layers = 2, .heads = 4, .embd = 32, .ctx = 64};

static int handle(int key, const char *arg, void *ctx)
{
	(void)ctx;
	switch (key) {
	case OPT_OUT:
		if (!*arg)
			circ_usage_error("option '--out': empty output path");
		o.out = arg;
		return 0;
	case OPT_LIST: o.list = 1; return 0;
	case OPT_TRUTH: o.truth = 1; return 0;
	case OPT_EXAMPLES: o.examples = circ_opt_i64("examples", arg, 0, INT32_MAX); return 0;
	case OPT_SEED:
		o.seed = (uint64_t)circ_opt_i64("seed", arg, 0, INT64_MAX);
		o.seed_given = 1;
		return 0;
	case OPT_SPEC: o.spec = 1; return 0;
	case OPT_RANDOM: o.random = 1; return 0;
	case OPT_VOCAB_DIR: o.vocab_dir = arg; return 0;
	case OPT_LAYERS: o.layers = (int)circ_opt_i64("layers", arg, 1, 64); break;
	case OPT_HEADS: o.heads = (int)circ_opt_i64("heads", arg, 1, 64); break;
	case OPT_EMBD: o.embd = (int)circ_opt_i64("embd", arg, 1, 4096); break;
	case OPT_CTX: o.ctx = (int)circ_opt_i64("ctx", arg, 1, 8192); break;
	default: return -1;
	}
	/* the shape options */
	if (!o.shape_opt)
		o.shape_opt = key == OPT_LAYERS	 ? "layers"
			      : key == OPT_HEADS ? "heads"
			      : key == OPT_EMBD	 ? "embd"
						 : "ctx";
	return 0;
}

static int emit_line(const char *line, size_t len, void *ctx, circ_error *e)
{
	(void)ctx;
	if (fwrite(line, 1, len, stdout) != len || putchar('\n') == EOF)
		return circ_errorf(e, "'<stdout>': write error");
	return 0;
}

static int copy_file(const char *from, const char *to, circ_error *e)
{
	char buf[1 << 16];
	size_t n;
	circ_atomic a;
	FILE *in = fopen(from, "rb"), *out;
	if (!in)
		return circ_errorf(e, "'%s': cannot open", from);
	if (circ_atomic_open(&a, to, e) < 0 || !(out = circ_atomic_file(&a, e))) {
		circ_atomic_abort(&a);
		fclose(in);
		return -1;
	}
	while ((n = fread(buf, 1, sizeof buf, in)) > 0)
		if (fwrite(buf, 1, n, out) != n)
			break;
	if (ferror(in)) {
		circ_atomic_abort(&a);
		fclose(in);
		return circ_errorf(e, "'%s': read error", from);
	}
	fclose(in);
	return circ_atomic_commit(&a, e);
}

/* A random-weight GPT-2 over a real tokenizer: it exercises the pipelines on
 * that vocabulary (e.g. GPT-2's), though its circuits mean nothing. */
static int write_random(circ_error *e)
{
	char from[4096], to[4096];
	circ_bpe *bpe;
	circ_config c = {0};
	if (!o.vocab_dir)
		circ_usage_error("--random needs --vocab-dir DIR");
	if (o.embd % o.heads)
		circ_usage_error("--embd must be a multiple of --heads");
	bpe = circ_bpe_load_dir(o.vocab_dir, e);
	if (!bpe)
		return -1;
	c.n_layer = o.layers;
	c.n_head = o.heads;
	c.n_embd = o.embd;
	c.n_ctx = o.ctx;
	c.vocab_size = circ_bpe_vocab_size(bpe);
	c.n_inner = 4 * o.embd;
	c.layer_norm_epsilon = 1e-5;
	c.act = CIRC_ACT_GELU_NEW;
	circ_bpe_free(bpe);
	if (circ_model_write_random(o.out, &c, o.seed, "F32", e) < 0)
		return -1;
	for (int k = 0; k < 2; k++) {
		const char *f = k ? "merges.txt" : "vocab.json";
		snprintf(from, sizeof from, "%s/%s", o.vocab_dir, f);
		snprintf(to, sizeof to, "%s/%s", o.out, f);
		if (copy_file(from, to, e) < 0)
			return -1;
	}
	return 0;
}

static void close_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0)
		circ_dief("'<stdout>': write error");
}

int main(int argc, char **argv)
{
	circ_cli cli = {"NAME --out DIR | --list | NAME (--truth | --spec | --examples N [--seed "
			"S]) | --random "
			"--vocab-dir DIR --out DIR",
			"Write a hand-built model with a known circuit (a ground-truth fixture).",
			opts, 0};
	circ_error e;
	circ_hb_info info;
	circ_config c;
	circ_weights w;
	int i, n, nf, modes, feature = 0;
	const char *const *names = circ_hb_names(&n);
	const char *const *fnames = circ_hb_feature_names(&nf);

	circ_init("circ-fixture");
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (o.random) {
		if (o.list || o.truth || o.spec || o.examples >= 0)
			circ_usage_error(
			    "--random excludes --list, --truth, --spec and --examples");
		if (argc - i != 0 || !o.out)
			circ_usage_error("--random takes --out DIR and no model name");
		if (write_random(&e) < 0)
			circ_die(&e);
		return 0;
	}
	if (o.vocab_dir)
		circ_usage_error("--vocab-dir goes with --random");
	if (o.shape_opt)
		circ_usage_error("option '--%s' goes with --random", o.shape_opt);
	if (o.list) {
		if (argc - i != 0)
			circ_usage_error("--list takes no model name");
		for (int k = 0; k < n + nf; k++) {
			const char *nm = k < n ? names[k] : fnames[k - n];
			if (circ_hb_build(nm, &c, &w, &info, &e) < 0)
				circ_die(&e);
			circ_weights_free(&w);
			printf("%-16s %s\n", nm, info.summary);
		}
		close_stdout();
		return 0;
	}
	if (argc - i != 1)
		circ_usage_error(argc - i ? "expected one model name, got %d arguments"
					  : "no model name given (see --list)",
				 argc - i);
	modes = (o.out != NULL) + o.truth + (o.examples >= 0) + o.spec;
	if (modes != 1)
		circ_usage_error(
		    modes ? "--out, --truth, --examples and --spec exclude each other"
			  : "nothing to do: give --out DIR (or --truth, --examples N, --spec)");
	if (o.seed_given && o.examples < 0)
		circ_usage_error("option '--seed' applies to --examples only");
	{
		int known = 0;
		for (int k = 0; k < n; k++)
			known |= !strcmp(names[k], argv[i]);
		for (int k = 0; k < nf; k++)
			feature |= !strcmp(fnames[k], argv[i]);
		if (!known && !feature)
			circ_usage_error("unknown model '%s' (see --list)", argv[i]);
	}
	if (o.out) {
		if (circ_hb_write_dir(argv[i], o.out, &e) < 0)
			circ_die(&e);
		return 0;
	}
	if (o.spec) {
		if (circ_hb_write_spec(argv[i], stdout, &e) < 0) {
			circ_error_prefix(&e, "'<stdout>'");
			circ_die(&e);
		}
		close_stdout();
		return 0;
	}
	if (o.examples >= 0) {
		static char obuf[1 << 16];
		setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
		if (circ_hb_examples(argv[i], o.examples, o.seed, emit_line, NULL, &e) < 0)
			circ_die(&e);
		close_stdout();
		return 0;
	}
	if (circ_hb_build(argv[i], &c, &w, &info, &e) < 0)
		circ_die(&e);
	circ_weights_free(&w);
	/* a feature fixture's truth is its feature edges */
	for (int k = 0; k < (feature ? info.n_feature_truth : info.n_truth); k++)
		printf("%s\n", feature ? info.feature_truth[k] : info.truth[k]);
	close_stdout();
	return 0;
}
