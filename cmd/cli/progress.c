/*
 * progress: lib/'s progress reports drawn on a terminal (see progress.h).
 */
#include "progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* When the line was last drawn (0: not yet, so there is nothing to erase)
 * and when the count started. */
static double last_drawn, started;

/* s seconds as 12s, 3m05s or 2h07m into buf. */
static const char *hms(char *buf, size_t n, double s)
{
	long t = (long)(s + 0.5);
	if (t < 60)
		snprintf(buf, n, "%lds", t);
	else if (t < 3600)
		snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
	else
		snprintf(buf, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
	return buf;
}

static void draw(const circ_progress *p, int end, void *ctx)
{
	double t, el;
	char a[32], b[32];
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
	el = t - started;
	if (p->total > 0 && p->done > 0 && el >= 1)
		fprintf(stderr, "\r%s: %s %lld/%lld (%.0f%%), %s, about %s left\033[K",
			circ_progname, p->what, (long long)p->done, (long long)p->total,
			100.0 * (double)p->done / (double)p->total, hms(a, sizeof a, el),
			hms(b, sizeof b, el * (double)(p->total - p->done) / (double)p->done));
	else if (p->total > 0)
		fprintf(stderr, "\r%s: %s %lld/%lld (%.0f%%)\033[K", circ_progname, p->what,
			(long long)p->done, (long long)p->total,
			100.0 * (double)p->done / (double)p->total);
	else
		fprintf(stderr, "\r%s: %s %lld, %s\033[K", circ_progname, p->what,
			(long long)p->done, hms(a, sizeof a, el));
}

void circ_cli_progress_erase(void)
{
	if (last_drawn > 0)
		fprintf(stderr, "\r\033[K");
	last_drawn = 0;
}

void circ_cli_progress(circ_progress *p, const char *what, int64_t total)
{
	int on = isatty(STDERR_FILENO) && !getenv("CIRC_NO_PROGRESS");
	last_drawn = 0;
	started = circ_now();
	circ_progress_start(p, what, total, on ? draw : NULL, NULL);
	if (on) /* at once: the first step may be a while */
		draw(p, 0, NULL);
}
