/*
 * opt: option tables -> getopt_long, --help text, and the exit-code policy
 * shared by every tool (0 ok, 1 data or runtime error, 2 usage error).
 */
#include "opt.h"
#include "progress.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const circ_opt common_opts[] = {
    {"help", CIRC_OPT_HELP, NULL, "show this help and exit"},
    {"version", CIRC_OPT_VERSION, NULL, "show the version and exit"},
    {0},
};

static const circ_opt stream_opts[] = {
    {"output", CIRC_OPT_OUTPUT, "FILE",
     "write to FILE (atomically, via a temporary) instead of stdout"},
    {"json", CIRC_OPT_JSON, NULL, "write JSON lines instead of a binary stream"},
    {"no-compress", CIRC_OPT_NO_COMPRESS, NULL, "write plain msgpack (no zstd)"},
    {"compress-level", CIRC_OPT_LEVEL, "N", "zstd level, 1..19 (default 3)"},
    {"force", CIRC_OPT_FORCE, NULL, "write a binary stream even to a terminal"},
    {0},
};

void circ_init(const char *progname)
{
	circ_progname = progname;
	/* A closed pipe ends the tool quietly, as `circ-x | head -1` expects,
	 * even when the parent ignored SIGPIPE. */
	signal(SIGPIPE, SIG_DFL);
}

static size_t count(const circ_opt *o)
{
	size_t n = 0;
	while (o && o[n].name)
		n++;
	return n;
}

/* The default thread count: 0 with *bad set when CIRC_THREADS is not a
 * thread count (the caller decides whether that is fatal). */
static int threads_default(const char **bad, int *from_env)
{
	const char *env = getenv("CIRC_THREADS");
	cpu_set_t set;
	long n = 0;
	*bad = NULL;
	*from_env = env != NULL;
	if (env) {
		int64_t v;
		if (circ_parse_i64(env, &v) < 0 || v < 1 || v > CIRC_THREADS_MAX) {
			*bad = env;
			return 0;
		}
		return (int)v;
	}
	/* the cores this process may run on (taskset, cgroup cpusets), which
	 * can be fewer than the machine's online cores */
	if (sched_getaffinity(0, sizeof set, &set) == 0)
		n = CPU_COUNT(&set);
	if (n < 1)
		n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	return n > CIRC_THREADS_MAX ? CIRC_THREADS_MAX : (int)n;
}

int circ_threads_default(void)
{
	const char *bad;
	int env, n = threads_default(&bad, &env);
	if (bad)
		circ_usage_error("CIRC_THREADS: '%s' is not an integer in 1..%d (the default "
				 "thread count)",
				 bad, CIRC_THREADS_MAX);
	return n;
}

/* CIRC_PACK_AT (circ(1)): lib/ uses its default for a value that is not
 * a count; the tools refuse it, as they refuse a bad CIRC_THREADS. */
static void pack_at_check(void)
{
	const char *env = getenv("CIRC_PACK_AT");
	int64_t v;
	if (env && *env && (circ_parse_i64(env, &v) < 0 || v < 0 || v > 1000000000))
		circ_usage_error("CIRC_PACK_AT: '%s' is not an integer in 0..1000000000 (the "
				 "forwards after which weights are packed; 0: never)",
				 env);
}

static void help_table(const circ_opt *o, FILE *f)
{
	for (; o && o->name; o++) {
		char left[64];
		if (o->key < 256 && o->key > ' ')
			snprintf(left, sizeof left, "-%c, --%s%s%s", o->key, o->name,
				 o->arg ? " " : "", o->arg ? o->arg : "");
		else
			snprintf(left, sizeof left, "    --%s%s%s", o->name, o->arg ? " " : "",
				 o->arg ? o->arg : "");
		fprintf(f, "  %-28s %s", left, o->help);
		if (!strcmp(o->name, "threads")) {
			const char *bad;
			int env, n = threads_default(&bad, &env);
			if (bad)
				fprintf(f, " (CIRC_THREADS '%s' is not a thread count)", bad);
			else if (env)
				fprintf(f, " (default %d: CIRC_THREADS)", n);
			else
				fprintf(f, " (default %d: the cores; CIRC_THREADS sets another)",
					n);
		}
		fputc('\n', f);
	}
}

void circ_cli_help(const circ_cli *cli, FILE *f)
{
	fprintf(f, "usage: %s %s\n%s\n\noptions:\n", circ_progname, cli->usage, cli->summary);
	help_table(cli->opts, f);
	if (cli->stream_out)
		help_table(stream_opts, f);
	help_table(common_opts, f);
	fprintf(f, "\nSee man %s for details.\n", circ_progname);
}

void circ_usage_error(const char *fmt, ...)
{
	va_list ap;
	circ_cli_progress_erase();
	fprintf(stderr, "%s: ", circ_progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry '%s --help' for more information.\n", circ_progname);
	exit(2);
}

void circ_die(const circ_error *e)
{
	circ_cli_progress_erase();
	fprintf(stderr, "%s: %s\n", circ_progname, e->msg);
	exit(1);
}

void circ_dief(const char *fmt, ...)
{
	va_list ap;
	circ_cli_progress_erase();
	fprintf(stderr, "%s: ", circ_progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

int64_t circ_opt_i64(const char *opt, const char *arg, int64_t lo, int64_t hi)
{
	int64_t v;
	if (circ_parse_i64(arg, &v) < 0 || v < lo || v > hi)
		circ_usage_error("option '--%s': '%s' is not an integer in %lld..%lld", opt, arg,
				 (long long)lo, (long long)hi);
	return v;
}

double circ_opt_f64(const char *opt, const char *arg)
{
	double v;
	if (circ_parse_f64(arg, &v) < 0)
		circ_usage_error("option '--%s': '%s' is not a number", opt, arg);
	return v;
}

double circ_opt_f64_in(const char *opt, const char *arg, double lo, int lo_open, double hi,
		       int hi_open)
{
	double v = circ_opt_f64(opt, arg);
	if (!isfinite(v) || (lo_open ? v <= lo : v < lo) || (hi_open ? v >= hi : v > hi))
		circ_usage_error("option '--%s': '%s' is not in %c%g, %g%c", opt, arg,
				 lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
	return v;
}

/* --help and --version: a failed write is a write error (exit 1), as for
 * any output, with a message. */
static void close_stdout(void)
{
	int bad = ferror(stdout);
	if (fclose(stdout) != 0 || bad)
		circ_dief("'<stdout>': write error: %s", strerror(errno ? errno : EIO));
}

static void add(struct option *lo, size_t *nl, char *so, size_t *ns, const circ_opt *o)
{
	for (; o && o->name; o++) {
		lo[*nl].name = o->name;
		lo[*nl].has_arg = o->arg ? required_argument : no_argument;
		lo[*nl].flag = NULL;
		lo[*nl].val = o->key;
		(*nl)++;
		if (o->key < 256 && o->key > ' ') {
			so[(*ns)++] = (char)o->key;
			if (o->arg)
				so[(*ns)++] = ':';
		}
	}
}

int circ_cli_parse(circ_cli *cli, int argc, char **argv,
		   int (*handle)(int key, const char *arg, void *ctx), void *ctx)
{
	size_t n = count(cli->opts) + count(stream_opts) + count(common_opts) + 1;
	struct option *lo = circ_xcalloc(n, sizeof *lo);
	char *so = circ_xcalloc(3 * n + 2, 1);
	size_t nl = 0, ns = 0;
	int c;
	so[ns++] = ':';
	add(lo, &nl, so, &ns, cli->opts);
	if (cli->stream_out)
		add(lo, &nl, so, &ns, stream_opts);
	add(lo, &nl, so, &ns, common_opts);
	circ_writer_opts_default(&cli->wopts);
	cli->output = "-";
	opterr = 0;
	while ((c = getopt_long(argc, argv, so, lo, NULL)) != -1) {
		switch (c) {
		case CIRC_OPT_HELP:
			free(lo);
			free(so);
			circ_cli_help(cli, stdout);
			close_stdout();
			exit(0);
		case CIRC_OPT_VERSION:
			free(lo);
			free(so);
			printf("%s %s\n", circ_progname, CIRC_VERSION);
			close_stdout();
			exit(0);
		case CIRC_OPT_OUTPUT:
			if (!*optarg)
				circ_usage_error("option '--output': empty output path");
			cli->output = optarg;
			break;
		case CIRC_OPT_JSON: cli->wopts.json = 1; break;
		case CIRC_OPT_NO_COMPRESS: cli->wopts.compress = 0; break;
		case CIRC_OPT_LEVEL:
			cli->wopts.level = (int)circ_opt_i64("compress-level", optarg, 1, 19);
			break;
		case CIRC_OPT_FORCE: cli->wopts.force = 1; break;
		case '?':
			if (optopt && optopt < 256)
				circ_usage_error("unknown option '-%c'", optopt);
			circ_usage_error("unknown option '%s'", argv[optind - 1]);
		case ':': circ_usage_error("option '%s' needs an argument", argv[optind - 1]);
		default:
			if (!handle || handle(c, optarg, ctx) < 0)
				exit(2);
		}
	}
	free(lo);
	free(so);
	pack_at_check();
	return optind;
}
