/*
 * progress: the tools' drawing of lib/'s progress reports (util.h's
 * circ_progress): one line on stderr,
 *   "\r<prog>: <what> <done>/<total> (<pct>%), <elapsed>, about <left> left"
 * (the time left from the pace so far, once a step is done and a second has
 * passed; "<done>, <elapsed>" when the total is unknown), drawn when the
 * count starts, redrawn at most five times a second, and erased at the end
 * and before a message (circ_cli_progress_erase), so that messages start on
 * a clean line. Only when stderr is a terminal and CIRC_NO_PROGRESS is
 * unset: a log file or a pipe never sees it.
 */
#ifndef CIRC_CLI_PROGRESS_H
#define CIRC_CLI_PROGRESS_H

#include "util.h"

/* Starts p counting what (total 0: unknown), drawn as above. A tool draws
 * one progress line at a time (the drawer's state is the process's). */
void circ_cli_progress(circ_progress *p, const char *what, int64_t total);
/* Erases the line if it is drawn, so that a message starts on a clean line
 * (the next step draws it again); the tools' messages call it. */
void circ_cli_progress_erase(void);

#endif
