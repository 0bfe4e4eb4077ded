/*
 * circ-dataset: writes a task dataset (IOI, greater-than, induction,
 * docstring, subject-verb agreement) as dataset JSON lines on stdout, the input of circ-tokenize.
 * The recipes live in lib/tasks; this file parses options, loads the
 * vocabulary when one is given, and writes the lines, checking the final
 * close of stdout.
 */
#include <stdlib.h>
#include <string.h>

#include "bpe.h"
#include "cli/opt.h"
#include "tasks.h"

enum {
	OPT_N = CIRC_OPT_FIRST_TOOL,
	OPT_SEED,
	OPT_VOCAB_DIR,
	OPT_MODEL_DIR,
	OPT_ORDER,
	OPT_TEMPLATES,
	OPT_CENTURY_LO,
	OPT_CENTURY_HI,
	OPT_LEN,
	OPT_VOCAB_LO,
	OPT_VOCAB_HI,
	OPT_TEMPLATE,
};

static const circ_opt opts[] = {
    {"n", OPT_N, "N", "number of examples (default 100)"},
    {"seed", OPT_SEED, "S", "random seed, 0..2^63-1 (default 0)"},
    {"vocab-dir", OPT_VOCAB_DIR, "DIR",
     "tokenizer directory (vocab.json + merges.txt, or tokenizer.json): keep only single-token "
     "entries"},
    {"model-dir", OPT_MODEL_DIR, "DIR", "same as --vocab-dir"},
    {"order", OPT_ORDER, "O", "ioi: mixed (default), baba or abba"},
    {"templates", OPT_TEMPLATES, "K",
     "ioi: use the first K templates of each order (default all 15)"},
    {"century-lo", OPT_CENTURY_LO, "CC", "greater-than: first century (default 11)"},
    {"century-hi", OPT_CENTURY_HI, "CC", "greater-than: last century (default 17)"},
    {"len", OPT_LEN, "L", "induction: length of the repeated sequence (default 16)"},
    {"vocab-lo", OPT_VOCAB_LO, "ID", "induction: smallest id drawn (default 1000)"},
    {"vocab-hi", OPT_VOCAB_HI, "ID", "induction: ids drawn are below this (default 20000)"},
    {"template", OPT_TEMPLATE, "T",
     "sva: simple, within-rc, across-rc, across-pp or all (default: all, in turn)"},
    {0},
};

static struct {
	circ_task_opts t;
	const char *vocab_dir;
	int vocab_key;						      /* the option that gave it */
	const char *only_for[OPT_TEMPLATE - CIRC_OPT_FIRST_TOOL + 1]; /* task an option needs */
	const char *given[OPT_TEMPLATE - CIRC_OPT_FIRST_TOOL + 1];    /* its name, when given */
} o;

static int handle(int key, const char *arg, void *ctx)
{
	circ_task_opts *t = &o.t;
	const char *name = NULL, *task = NULL;
	switch (key) {
	case OPT_N: t->n = circ_opt_i64("n", arg, 0, INT32_MAX); break;
	case OPT_SEED: t->seed = (uint64_t)circ_opt_i64("seed", arg, 0, INT64_MAX); break;
	case OPT_VOCAB_DIR:
	case OPT_MODEL_DIR:
		if (o.vocab_dir && o.vocab_key == key)
			circ_usage_error("option '--%s' given twice",
					 key == OPT_VOCAB_DIR ? "vocab-dir" : "model-dir");
		if (o.vocab_dir)
			circ_usage_error(
			    "--vocab-dir and --model-dir: give one tokenizer directory");
		o.vocab_dir = arg;
		o.vocab_key = key;
		break;
	case OPT_ORDER: t->ioi_order = arg, name = "order", task = "ioi"; break;
	case OPT_TEMPLATES:
		t->ioi_templates = (int)circ_opt_i64("templates", arg, 1, 15);
		name = "templates", task = "ioi";
		break;
	case OPT_CENTURY_LO:
		t->gt_century_lo = (int)circ_opt_i64("century-lo", arg, 10, 99);
		name = "century-lo", task = "greater-than";
		break;
	case OPT_CENTURY_HI:
		t->gt_century_hi = (int)circ_opt_i64("century-hi", arg, 10, 99);
		name = "century-hi", task = "greater-than";
		break;
	case OPT_LEN:
		t->ind_len = (int)circ_opt_i64("len", arg, 2, 100000);
		name = "len", task = "induction";
		break;
	case OPT_VOCAB_LO:
		t->ind_vocab_lo = (int32_t)circ_opt_i64("vocab-lo", arg, 0, INT32_MAX - 1);
		name = "vocab-lo", task = "induction";
		break;
	case OPT_VOCAB_HI:
		t->ind_vocab_hi = (int32_t)circ_opt_i64("vocab-hi", arg, 1, INT32_MAX);
		name = "vocab-hi", task = "induction";
		break;
	case OPT_TEMPLATE: t->sva_template = arg, name = "template", task = "sva"; break;
	default: return -1;
	}
	if (name) {
		o.given[key - CIRC_OPT_FIRST_TOOL] = name;
		o.only_for[key - CIRC_OPT_FIRST_TOOL] = task;
	}
	return 0;
}

static int emit_line(const char *line, size_t len, void *ctx, circ_error *e)
{
	if (fwrite(line, 1, len, stdout) != len || putchar('\n') == EOF)
		return circ_errorf(e, "'<stdout>': write error");
	return 0;
}

/* What the generator dropped or changed for the vocabulary, to stderr. */
static void print_note(const char *msg, void *ctx)
{
	(void)ctx;
	fprintf(stderr, "circ-dataset: note: %s\n", msg);
}

int main(int argc, char **argv)
{
	circ_cli cli = {"TASK [options]   (TASK: ioi, greater-than, induction, docstring, sva)",
			"Write a task dataset as JSON lines (the input of circ-tokenize).", opts,
			0};
	circ_error e;
	int i;

	circ_init("circ-dataset");
	circ_task_opts_default(&o.t);
	i = circ_cli_parse(&cli, argc, argv, handle, NULL);
	if (argc - i != 1)
		circ_usage_error(
		    argc - i ? "expected one task, got %d arguments"
			     : "no task given (ioi, greater-than, induction, docstring or sva)",
		    argc - i);
	o.t.task = argv[i];
	if (!circ_task_metric(o.t.task))
		circ_usage_error(
		    "unknown task '%s' (expected ioi, greater-than, induction, docstring or sva)",
		    o.t.task);
	for (size_t k = 0; k < sizeof o.given / sizeof *o.given; k++)
		if (o.given[k] && strcmp(o.only_for[k], o.t.task))
			circ_usage_error("option '--%s' applies to %s only", o.given[k],
					 o.only_for[k]);
	if (strcmp(o.t.ioi_order, "mixed") && strcmp(o.t.ioi_order, "baba") &&
	    strcmp(o.t.ioi_order, "abba"))
		circ_usage_error("option '--order': '%s' is not mixed, baba or abba",
				 o.t.ioi_order);
	if (o.t.sva_template && strcmp(o.t.sva_template, "all") &&
	    strcmp(o.t.sva_template, "simple") && strcmp(o.t.sva_template, "within-rc") &&
	    strcmp(o.t.sva_template, "across-rc") && strcmp(o.t.sva_template, "across-pp"))
		circ_usage_error("option '--template': '%s' is not simple, within-rc, across-rc, "
				 "across-pp or all",
				 o.t.sva_template);
	/* Ranges the options (with the defaults they leave) make empty. */
	circ_task_opts def;
	char why[64] = "";
	circ_task_opts_default(&def);
	if (!strcmp(o.t.task, "greater-than") && o.t.gt_century_lo > o.t.gt_century_hi) {
		if (!o.given[OPT_CENTURY_HI - CIRC_OPT_FIRST_TOOL])
			snprintf(why, sizeof why, " (the default --century-hi is %d)",
				 def.gt_century_hi);
		else if (!o.given[OPT_CENTURY_LO - CIRC_OPT_FIRST_TOOL])
			snprintf(why, sizeof why, " (the default --century-lo is %d)",
				 def.gt_century_lo);
		circ_usage_error(
		    "options '--century-lo' and '--century-hi': centuries %d..%d run backwards%s",
		    o.t.gt_century_lo, o.t.gt_century_hi, why);
	}
	if (!strcmp(o.t.task, "induction") && o.t.ind_vocab_lo >= o.t.ind_vocab_hi) {
		if (!o.given[OPT_VOCAB_HI - CIRC_OPT_FIRST_TOOL])
			snprintf(why, sizeof why, " (the default --vocab-hi is %d)",
				 (int)def.ind_vocab_hi);
		else if (!o.given[OPT_VOCAB_LO - CIRC_OPT_FIRST_TOOL])
			snprintf(why, sizeof why, " (the default --vocab-lo is %d)",
				 (int)def.ind_vocab_lo);
		circ_usage_error(
		    "options '--vocab-lo' and '--vocab-hi': the id range [%d, %d) is empty%s",
		    (int)o.t.ind_vocab_lo, (int)o.t.ind_vocab_hi, why);
	}
	if (o.vocab_dir && !(o.t.bpe = circ_bpe_load_dir(o.vocab_dir, &e)))
		circ_die(&e);
	o.t.note = print_note;
	static char obuf[1 << 16];
	setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
	if (circ_task_generate(&o.t, emit_line, NULL, &e) < 0)
		circ_die(&e);
	circ_bpe_free(o.t.bpe);
	if (fflush(stdout) != 0 || ferror(stdout) || fclose(stdout) != 0)
		circ_dief("'<stdout>': write error");
	return 0;
}
