/* check.h: the unit tests' assertions. A failed check prints the file, the
 * line and the condition and counts a failure; a test's main returns
 * failures != 0 at the end, so one run reports every failed check. */
#ifndef CIRC_TEST_CHECK_H
#define CIRC_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

/* With the message of a circ_error e. */
#define CHECK_MSG(cond, e)                                                                         \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__,      \
				#cond, (e).msg);                                                   \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

#endif
