/*
 * util: errors as values, checked allocation, number parsing, progress, digests.
 *
 * Layering: util is the bottom of lib/; it includes nothing of circ's.
 * Library code never prints or exits, with one documented exception:
 * allocation failure (circ_xmalloc and friends) prints and exits 1, as git
 * and zstd's programs do; a caller cannot do anything useful after it.
 */
#ifndef CIRC_UTIL_H
#define CIRC_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define CIRC_VERSION "0.1.0"

#if defined(__GNUC__)
#define CIRC_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define CIRC_NORETURN	  __attribute__((noreturn))
#else
#define CIRC_PRINTF(a, b)
#define CIRC_NORETURN
#endif

/* An error message filled in by the failing function; callers add context
 * in front with circ_error_prefix. Functions return -1 (or NULL) on error. */
typedef struct circ_error {
	char msg[1024];
} circ_error;

/* Sets e->msg from the format; returns -1 so that `return circ_errorf(...)` works. */
int circ_errorf(circ_error *e, const char *fmt, ...) CIRC_PRINTF(2, 3);
/* Puts "<formatted>: " in front of the existing message; returns -1. */
int circ_error_prefix(circ_error *e, const char *fmt, ...) CIRC_PRINTF(2, 3);

/* Program name used in every message ("circ-score"); set by circ_init. */
extern const char *circ_progname;

/* Allocation that never returns NULL (exits 1 with a message on failure). */
void *circ_xmalloc(size_t n);
void *circ_xcalloc(size_t n, size_t size);
void *circ_xrealloc(void *p, size_t n);
char *circ_xstrdup(const char *s);
/* Aligned (64 bytes) zeroed allocation for tensors; free with free(). */
void *circ_xalloc_aligned(size_t n);
/* Asks for transparent huge pages on the whole 2 MiB pages inside [p, p + n)
 * when the range is large (circ_xalloc_aligned's big buffers, mmap'd
 * arenas); a hint only. */
void circ_advise_huge(void *p, size_t n);

/* Strict number parsing: whole string, no overflow, no trailing garbage. 0 ok, -1 bad. */
int circ_parse_i64(const char *s, int64_t *out);
int circ_parse_f64(const char *s, double *out);

/* SHA-256, for provenance digests. */
typedef struct circ_sha256 {
	uint32_t h[8];
	uint64_t len;
	unsigned char buf[64];
	size_t nbuf;
} circ_sha256;
void circ_sha256_init(circ_sha256 *s);
void circ_sha256_update(circ_sha256 *s, const void *data, size_t n);
/* Writes "sha256:<64 hex>" (72 bytes incl. NUL) into out. */
void circ_sha256_final_hex(circ_sha256 *s, char out[72]);
/* Digest of a whole file into out ("sha256:..."); -1 with message on error. */
int circ_sha256_file(const char *path, char out[72], circ_error *e);

/* Writes text to dir/name (created or truncated), checking the write and
 * the close; -1 with a message naming the file on error. */
int circ_write_text_file(const char *dir, const char *name, const char *text, circ_error *e);

/* Progress on stderr, only when stderr is a terminal. total may be 0 (unknown). */
typedef struct circ_progress {
	const char *what;
	int64_t total, done;
	double last;
	int enabled;
} circ_progress;
void circ_progress_start(circ_progress *p, const char *what, int64_t total);
void circ_progress_step(circ_progress *p, int64_t n);
void circ_progress_end(circ_progress *p);

double circ_now(void); /* monotonic seconds */

#endif
