/*
 * circ-harvest: not built yet (see the project's issues). It says so and exits 1
 * rather than pretending to work.
 */
#include "opt.h"

static const circ_opt opts[] = {{0}};

int main(int argc, char **argv)
{
	circ_cli cli = {"[options]", "circ-harvest is not built yet.", opts, 0};
	circ_init("circ-harvest");
	circ_cli_parse(&cli, argc, argv, NULL, NULL);
	circ_dief("not built yet");
}
