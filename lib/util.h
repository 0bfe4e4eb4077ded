/*
 * util: errors as values, checked allocation, number parsing, progress, digests,
 * and files: bounded reads of regular files, atomic output files, and the
 * removal of temporaries at exit and on fatal signals.
 *
 * Layering: util is the bottom of lib/; it includes nothing of circ's.
 * Library code never prints or exits, with one documented exception:
 * allocation failure (circ_xmalloc and friends) prints and exits 1, as git
 * and zstd's programs do; a caller cannot do anything useful after it. (A
 * guarded mapping's SIGBUS, circ_guard_mapping, also prints and exits 1: a
 * fault inside a read has no caller to return an error to.)
 */
#ifndef CIRC_UTIL_H
#define CIRC_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#define CIRC_VERSION "0.1.0"

#if defined(__GNUC__)
#define CIRC_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define CIRC_NORETURN	  __attribute__((noreturn))
#else
#define CIRC_PRINTF(a, b)
#define CIRC_NORETURN
#endif

/* Always-on assertion for programmer errors (an index out of range at a
 * numbering or run-API boundary), on in release builds as ggml's
 * GGML_ASSERT: prints "file:line: assertion failed: cond" to stderr and
 * aborts. Never for bad input, which is an error value. */
#define CIRC_ASSERT(cond) ((cond) ? (void)0 : circ_assert_fail(__FILE__, __LINE__, #cond))
void circ_assert_fail(const char *file, int line, const char *cond) CIRC_NORETURN;

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
/* Aligned (64 bytes) allocation for tensors, not zeroed (for buffers that
 * are written before they are read: no page is touched here); free with
 * free(). */
void *circ_xmalloc_aligned(size_t n);
/* The same, zeroed. */
void *circ_xalloc_aligned(size_t n);
/* 1 if CIRC_HUGEPAGES=1 asks for transparent huge pages on big buffers. */
int circ_hugepages(void);
/* With CIRC_HUGEPAGES=1, asks for transparent huge pages on the whole 2 MiB
 * pages inside [p, p + n) when the range is large (circ_xmalloc_aligned's
 * big buffers, mmap'd arenas); a hint only. Else does nothing. */
void circ_advise_huge(void *p, size_t n);

/* Strict number parsing: whole string, no overflow, no trailing garbage. 0 ok, -1 bad. */
int circ_parse_i64(const char *s, int64_t *out);
int circ_parse_f64(const char *s, double *out);

/* The most fractions circ_parse_fractions takes. */
#define CIRC_FRACTIONS_MAX 64
/* A comma-separated list of increasing fractions in [0, 1] ("0.01,0.1,1")
 * into fr[0..CIRC_FRACTIONS_MAX); returns how many. -1 with a message for
 * an empty list or item, a list longer than CIRC_FRACTIONS_MAX (never a
 * silent cut), or an item that is not a number above the previous one in
 * [0, 1]. */
int circ_parse_fractions(const char *list, double fr[CIRC_FRACTIONS_MAX], circ_error *e);

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
/* Which block function runs: on 1 the SHA extensions where the CPU has them
 * (the default), 0 the portable one, -1 leaves the choice as it is.
 * Returns 1 when the SHA extensions are in use. Both give the same digest
 * (tests compare them). */
int circ_sha256_accel(int on);
/* Digest of a whole file into out ("sha256:..."); -1 with message on error. */
int circ_sha256_file(const char *path, char out[72], circ_error *e);

/* ---- reading files ---- */

/* The bound on a small text file read whole (config.json, vocab.json,
 * tokenizer.json, an index): far above any real one, far below what a
 * mistaken /dev/zero or a huge file would cost. */
#define CIRC_MAX_TEXT_FILE ((size_t)64 << 20)

/* Opens path for reading without ever blocking (a FIFO is refused, not
 * waited on) and refuses anything but a regular file; fills *st. The
 * descriptor is blocking and close-on-exec. -1 with "'<path>': <problem>". */
int circ_open_regular(const char *path, struct stat *st, circ_error *e);
/* Reads a whole regular file of at most max bytes into a NUL-terminated
 * heap buffer (free it); *len is its length. NULL with "'<path>': <problem>"
 * for a missing, non-regular or oversized file or a read error. */
char *circ_read_file(const char *path, size_t max, size_t *len, circ_error *e);

/* ---- writing files atomically ----
 *
 * An output file is written to a temporary made with mkstemp beside it
 * ("<path>.tmp.XXXXXX": O_EXCL, so a planted symlink is never followed),
 * flushed to disk and renamed over path, so a reader sees the old file or the
 * whole new one, never a part. The final file gets the mode a plain creat()
 * would (0666 & ~umask). A path that exists and is not a regular file (a
 * device, a FIFO) is written directly, never renamed over.
 *
 * Every temporary is registered for cleanup: it is removed when the program
 * exits without committing it (exit() on any error path), and on SIGINT,
 * SIGTERM, SIGHUP and SIGPIPE (then the signal is raised again, so the exit
 * status still tells). While it is being written the temporary holds a
 * flock, so a temporary that nobody holds, of a writer that died (SIGKILL,
 * a crash), is recognisably stale: opening a new one removes the stale
 * temporaries of the same path that are over a minute old. */
typedef struct circ_atomic {
	int fd;	    /* write here (or through f) */
	FILE *f;    /* from circ_atomic_file, or NULL */
	char *path; /* the final name */
	char *tmp;  /* the temporary, NULL when writing directly */
	int slot;   /* cleanup registration, -1 if none */
} circ_atomic;

/* Starts writing path. -1 with "'<path>': cannot create: ..." on error
 * (a is then inert: circ_atomic_abort is a no-op on it). */
int circ_atomic_open(circ_atomic *a, const char *path, circ_error *e);
/* A stdio stream on a->fd, owned by a (closed by commit or abort). */
FILE *circ_atomic_file(circ_atomic *a, circ_error *e);
/* Flushes, syncs and renames into place; closes either way. -1 with
 * "'<path>': write error: ..." (the temporary removed) on error. */
int circ_atomic_commit(circ_atomic *a, circ_error *e);
/* Closes and removes the temporary; safe on an inert or committed a. */
void circ_atomic_abort(circ_atomic *a);

/* 1 if the output paths a and b would write the same file: the same string
 * (two "-" are both stdout), one existing file under two names, or the same
 * name in the same directory however spelled ("x", "./x", "d/../x"). */
int circ_same_output(const char *a, const char *b);

/* Writes text to dir/name atomically (as above); -1 with a message naming
 * the file on error. */
int circ_write_text_file(const char *dir, const char *name, const char *text, circ_error *e);
/* The same for a whole path. */
int circ_write_text(const char *path, const char *text, circ_error *e);

/* ---- cleanup on exit and on fatal signals ---- */

/* Registers path (copied) to be unlinked if the program exits or is killed
 * by SIGINT, SIGTERM, SIGHUP or SIGPIPE before circ_cleanup_remove(slot).
 * The handlers are installed on first use (a signal the parent ignored stays
 * ignored). Returns the slot, or -1 with a message when too many are
 * registered or the path is too long. */
int circ_cleanup_add(const char *path, circ_error *e);
/* Installs the handlers that remove registered files on SIGINT, SIGTERM,
 * SIGHUP and SIGPIPE and at exit (once; circ_cleanup_add does it too). */
void circ_cleanup_install(void);
/* The same for a temporary directory: removed (rmdir, so only once empty)
 * after every registered file. */
int circ_cleanup_add_dir(const char *path, circ_error *e);
/* Forgets slot (after the file was renamed away or removed); -1 is a no-op. */
void circ_cleanup_remove(int slot);
/* Removes every registered file now (async-signal-safe). */
void circ_cleanup_run(void);

/* Guards a read-only file mapping: a SIGBUS with its address inside
 * [p, p + n) (the file was truncated under the mapping) prints
 * "<prog>: '<path>': the file was truncated or changed while in use (bus
 * error)", removes the registered temporaries and exits 1. Returns the slot,
 * or -1 when all are taken (the mapping then goes unguarded). */
int circ_guard_mapping(const void *p, size_t n, const char *path);
void circ_unguard_mapping(int slot); /* -1 is a no-op */

/* Progress of a long computation, reported to a callback: lib/ counts and
 * never draws; the caller decides what a report looks like (cmd/cli/progress.h
 * draws a line on stderr when it is a terminal). */
typedef struct circ_progress circ_progress;
/* Called after every step (end 0) and once by circ_progress_end (end 1);
 * steps can come thousands of times a second, so it throttles itself. */
typedef void (*circ_progress_fn)(const circ_progress *p, int end, void *ctx);
struct circ_progress {
	const char *what;	 /* what is counted ("examples", "edge tests") */
	int64_t total, done;	 /* total 0: unknown */
	circ_progress_fn report; /* NULL: nobody listens */
	void *ctx;		 /* report's context */
};
/* Starts counting what (total may be 0: unknown), reporting to report(ctx)
 * (NULL: counts silently). */
void circ_progress_start(circ_progress *p, const char *what, int64_t total, circ_progress_fn report,
			 void *ctx);
/* Counts n more done and reports; p may be NULL (nothing happens). */
void circ_progress_step(circ_progress *p, int64_t n);
/* The last report (end 1); p may be NULL. */
void circ_progress_end(circ_progress *p);

double circ_now(void); /* monotonic seconds */

#endif
