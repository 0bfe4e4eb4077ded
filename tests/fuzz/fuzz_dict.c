/*
 * libFuzzer target for a dictionary's cfg.json (lib/dict.c, SAELens's
 * format): any bytes as the cfg.json of a directory whose
 * sae_weights.safetensors is the shipped TopK SAE of tests/data/dict/tiny
 * (24 inputs, 64 features), through circ_dict_load: keys, types, hook
 * names, architectures and sizes, the sizes checked against the file before
 * anything of their size is allocated. Every input must load or be refused
 * with a message, never crash. Run from the repository's root (make
 * fuzz-ci does).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dict.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[] = "/tmp/circ-fuzz-dict.XXXXXX";
static char cfg[sizeof dir + 16], weights[sizeof dir + 32];

static void cleanup(void)
{
	unlink(cfg);
	unlink(weights);
	rmdir(dir);
}

static int copy(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb"), *out = in ? fopen(to, "wb") : NULL;
	char buf[8192];
	size_t n;
	int rc = in && out ? 0 : -1;
	while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
		if (fwrite(buf, 1, n, out) != n)
			rc = -1;
	if (in)
		fclose(in);
	if (out && fclose(out) != 0)
		rc = -1;
	return rc;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (!mkdtemp(dir)) {
		perror("fuzz_dict: mkdtemp");
		exit(1);
	}
	snprintf(cfg, sizeof cfg, "%s/cfg.json", dir);
	snprintf(weights, sizeof weights, "%s/sae_weights.safetensors", dir);
	atexit(cleanup);
	if (copy("tests/data/dict/tiny/l0_resid_pre/sae_weights.safetensors", weights) < 0) {
		fprintf(stderr, "fuzz_dict: cannot copy the tiny SAE's weights (run from the "
				"repository's root)\n");
		exit(1);
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	circ_error e;
	FILE *f = fopen(cfg, "wb");
	if (!f)
		return 0;
	if (size && fwrite(data, 1, size, f) != size) {
		fclose(f);
		return 0;
	}
	fclose(f);
	circ_dict_free(circ_dict_load(dir, &e));
	return 0;
}
