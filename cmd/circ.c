/*
 * circ: the front door. `circ <tool> args...` runs circ-<tool> found next to
 * this binary first, then on PATH, as git does for its subcommands.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/opt.h"

static const char *const tools[][2] = {
    {"dataset", "task datasets (IOI, greater-than, induction, docstring, sva)"},
    {"tokenize", "text and datasets to token streams (GPT-2 BPE, tokenizer.json)"},
    {"forward", "run the model: metric, top-k, logits; dictionaries' quality"},
    {"harvest", "activations and gradients per example; dictionary activations"},
    {"score", "score edges (exact, eap, eap-ig, cd-t) or features (--dict)"},
    {"prune", "circuits: top-n, threshold, greedy; ACDC, CD-T, Edge Pruning"},
    {"patch", "run with edges or features patched; faithfulness, curves"},
    {"trace", "attribution graph of one prompt through transcoders"},
    {"paths", "transcoder circuits: top paths, routes, input-invariant connections"},
    {"render", "circuits, curves and graphs to DOT, SVG, JSON, HTML, text"},
    {"cat", "print any stream as JSON lines; JSON lines back to a stream"},
    {"fixture", "write hand-built models with known circuits (ground truth)"},
    {"train", "train small GPT-2 or Llama models on tasks; SAEs and transcoders"},
};

static void usage(FILE *f)
{
	fprintf(f, "usage: circ <tool> [args...]\n       circ --help | --version\n       circ help "
		   "[<tool>]\n\ntools:\n");
	for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++)
		fprintf(f, "  %-10s %s\n", tools[i][0], tools[i][1]);
	fprintf(f, "\n'circ <tool> --help' and 'man circ-<tool>' describe each tool.\n");
}

int main(int argc, char **argv)
{
	char self[PATH_MAX], path[PATH_MAX + 64];
	ssize_t n;
	circ_init("circ");
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	/* circ help <tool>: circ <tool> --help, as git help does for its own */
	if (!strcmp(argv[1], "help") && argc == 3) {
		static char help[] = "--help";
		argv[1] = argv[2];
		argv[2] = help;
	} else if (!strcmp(argv[1], "help") && argc > 3)
		circ_usage_error("help takes one tool");
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		if (ferror(stdout) | fclose(stdout))
			circ_dief("'<stdout>': write error: %s", strerror(errno ? errno : EIO));
		return 0;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
		printf("circ %s\n", CIRC_VERSION);
		if (ferror(stdout) | fclose(stdout))
			circ_dief("'<stdout>': write error: %s", strerror(errno ? errno : EIO));
		return 0;
	}
	if (argv[1][0] == '-' || strchr(argv[1], '/'))
		circ_usage_error("unknown option or tool '%s'", argv[1]);
	/* Next to this binary first, so that a build tree runs its own tools. */
	n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0) {
		char *slash;
		self[n] = 0;
		slash = strrchr(self, '/');
		if (slash) {
			*slash = 0;
			snprintf(path, sizeof path, "%s/circ-%s", self, argv[1]);
			if (access(path, X_OK) == 0) {
				argv[1] = path;
				execv(path, argv + 1);
			}
		}
	}
	snprintf(path, sizeof path, "circ-%s", argv[1]);
	argv[1] = path;
	execvp(path, argv + 1);
	if (errno == ENOENT)
		circ_usage_error("'%s' is not a circ tool (see 'circ --help')", path + 5);
	circ_dief("cannot run '%s': %s", path, strerror(errno));
}
