/*
 * progress: lib/'s progress reports drawn on a terminal (see progress.h).
 */
#include "progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* When the line was last drawn (0: not yet, so there is nothing to erase). */
static double last_drawn;

static void draw(const circ_progress *p, int end, void *ctx)
{
	double t;
	(void)ctx;
	if (end) {
		if (last_drawn > 0)
			fprintf(stderr, "\r\033[K");
		return;
	}
	t = circ_now();
	if (t - last_drawn < 0.2 && p->done != p->total)
		return;
	last_drawn = t;
	if (p->total > 0)
		fprintf(stderr, "\r%s: %s %lld/%lld (%.0f%%)", circ_progname, p->what,
			(long long)p->done, (long long)p->total,
			100.0 * (double)p->done / (double)p->total);
	else
		fprintf(stderr, "\r%s: %s %lld", circ_progname, p->what, (long long)p->done);
}

void circ_cli_progress(circ_progress *p, const char *what, int64_t total)
{
	int on = isatty(STDERR_FILENO) && !getenv("CIRC_NO_PROGRESS");
	last_drawn = 0;
	circ_progress_start(p, what, total, on ? draw : NULL, NULL);
}
