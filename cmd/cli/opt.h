/*
 * opt: command-line options declared as a table, git-style. The same table
 * drives getopt_long and the --help text, so help never drifts from the
 * parser. Tools print help to stdout (exit 0) and usage errors to stderr
 * (exit 2).
 *
 * Layering: cmd/cli/ is the tools' side of the line: it prints and exits, so
 * lib/ never includes it (lib/ returns errors as values).
 */
#ifndef CIRC_OPT_H
#define CIRC_OPT_H

#include "stream.h"

typedef struct circ_opt {
	const char *name; /* long name without dashes */
	int key;	  /* short letter, or a value >= 256 for long-only */
	const char *arg;  /* argument name, NULL for flags */
	const char *help;
} circ_opt;

/* Common options every stream-writing tool accepts; their keys: */
enum {
	CIRC_OPT_HELP = 'h',
	CIRC_OPT_VERSION = 'V',
	CIRC_OPT_OUTPUT = 'o',
	CIRC_OPT_JSON = 1000,
	CIRC_OPT_NO_COMPRESS,
	CIRC_OPT_LEVEL,
	CIRC_OPT_FORCE,
	CIRC_OPT_FIRST_TOOL = 1100 /* tools number their long-only keys from here */
};

typedef struct circ_cli {
	const char *usage;	/* "[options] [file]" */
	const char *summary;	/* one line */
	const circ_opt *opts;	/* tool options, terminated by {0} */
	int stream_out;		/* adds --json/--no-compress/--level/--force/--output */
	circ_writer_opts wopts; /* filled by the common options */
	const char *output;	/* --output, default "-" */
} circ_cli;

/* Sets circ_progname, installs the SIGPIPE policy. Call first in main. */
void circ_init(const char *progname);
/* Parses argv. Calls handle(key, optarg, ctx) for each tool option; handle
 * returns 0, or -1 after it has printed a usage error. Handles --help,
 * --version and the common options itself (exits). Returns optind. */
int circ_cli_parse(circ_cli *cli, int argc, char **argv,
		   int (*handle)(int key, const char *arg, void *ctx), void *ctx);
void circ_cli_help(const circ_cli *cli, FILE *f);
/* Usage error: prints "<prog>: <msg>" and a hint, exits 2. */
void circ_usage_error(const char *fmt, ...) CIRC_PRINTF(1, 2) CIRC_NORETURN;
/* Data/runtime error: prints "<prog>: <e->msg>", exits 1. */
void circ_die(const circ_error *e) CIRC_NORETURN;
void circ_dief(const char *fmt, ...) CIRC_PRINTF(1, 2) CIRC_NORETURN;
/* Option argument parsing that exits 2 with a message naming the option. */
int64_t circ_opt_i64(const char *opt, const char *arg, int64_t lo, int64_t hi);
double circ_opt_f64(const char *opt, const char *arg);
/* A finite number in [lo, hi] (lo_open, hi_open: the bound itself is out),
 * else exits 2 naming the option and the interval. */
double circ_opt_f64_in(const char *opt, const char *arg, double lo, int lo_open, double hi,
		       int hi_open);

/* Threads: the most --threads accepts. */
#define CIRC_THREADS_MAX 256
/* The thread count a tool uses when --threads is not given: CIRC_THREADS
 * when set (an integer in 1..CIRC_THREADS_MAX; anything else, empty
 * included, is a usage error: exits 2), else the cores this process may run
 * on (its CPU affinity, as nproc counts them; at most CIRC_THREADS_MAX).
 * Results do not depend on it: every tool gives the same bytes for every
 * thread count (circ-train excepted, whose weights are a function of it).
 * The --help text of an option named "threads" states this default. */
int circ_threads_default(void);

#endif
