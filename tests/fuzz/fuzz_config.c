/*
 * libFuzzer target for config.json reading (lib/model_config.c): any bytes as a
 * model's config.json, through circ_config_load and circ_config_check. Every
 * input must load or be refused with a message, never crash.
 */
#include <stdlib.h>

#include "fuzz_file.h"
#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[64];
	circ_error e;
	circ_config c;
	int fd = fuzz_file(data, size, path, sizeof path);
	if (fd < 0)
		return 0;
	if (circ_config_load(path, &c, &e) == 0 && circ_config_check(&c, &e) == 0)
		(void)circ_config_n_params(&c);
	close(fd);
	return 0;
}
