/*
 * util: the bottom layer of lib/ — error values, allocation, strict number
 * parsing, SHA-256 for provenance digests, progress counted for a callback, and the
 * file handling every tool shares: bounded reads of regular files, atomic
 * output files, and the cleanup of temporaries on exit and fatal signals.
 */
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

const char *circ_progname = "circ";

int circ_errorf(circ_error *e, const char *fmt, ...)
{
	va_list ap;
	if (!e)
		return -1;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
	return -1;
}

int circ_error_prefix(circ_error *e, const char *fmt, ...)
{
	char pre[512];
	size_t pl, ml, room;
	va_list ap;
	if (!e)
		return -1;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof pre, fmt, ap);
	va_end(ap);
	pl = strlen(pre);
	ml = strnlen(e->msg, sizeof e->msg - 1);
	room = sizeof e->msg - 1 - pl - 2; /* pl < 512 < sizeof e->msg - 2 */
	if (ml > room)
		ml = room;
	memmove(e->msg + pl + 2, e->msg, ml);
	memcpy(e->msg, pre, pl);
	e->msg[pl] = ':';
	e->msg[pl + 1] = ' ';
	e->msg[pl + 2 + ml] = 0;
	return -1;
}

static void oom(size_t n)
{
	fprintf(stderr, "%s: out of memory (allocating %zu bytes)\n", circ_progname, n);
	exit(1);
}

void *circ_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom(n);
	return p;
}

void *circ_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom(n * size);
	return p;
}

void *circ_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		oom(n);
	return q;
}

char *circ_xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(circ_xmalloc(n), s, n);
}

/* With CIRC_HUGEPAGES=1, buffers from this size on are aligned and rounded
 * to 2 MiB and offered to the kernel for transparent huge pages. Off by
 * default: with the kernel's defrag=madvise setting (common) a fault in an
 * advised region may stall in direct compaction when memory is fragmented
 * (seconds of system time for a one-batch command), and once buffers are
 * allocated once and reused, 4 KiB pages cost little (see man/circ.1). */
#define HUGE_FROM ((size_t)4 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

int circ_hugepages(void)
{
	const char *v = getenv("CIRC_HUGEPAGES");
	return v && !strcmp(v, "1");
}

void *circ_xmalloc_aligned(size_t n)
{
	void *p = NULL;
	size_t r = (n + 63) & ~(size_t)63, align = 64;
	int huge = r >= HUGE_FROM && circ_hugepages();
	if (huge) {
		r = (r + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
		align = HUGE_PAGE;
	}
	if (posix_memalign(&p, align, r ? r : 64) != 0)
		oom(n);
	if (huge)
		circ_advise_huge(p, r);
	return p;
}

void *circ_xalloc_aligned(size_t n)
{
	size_t r = (n + 63) & ~(size_t)63;
	void *p = circ_xmalloc_aligned(n);
	memset(p, 0, r ? r : 64);
	return p;
}

void circ_advise_huge(void *p, size_t n)
{
#ifdef MADV_HUGEPAGE
	/* the whole huge pages inside the range */
	uintptr_t a = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
	uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)(HUGE_PAGE - 1);
	if (n >= HUGE_FROM && b > a && circ_hugepages())
		(void)madvise((void *)a, b - a, MADV_HUGEPAGE); /* a hint: failure is fine */
#else
	(void)p;
	(void)n;
#endif
}

int circ_parse_i64(const char *s, int64_t *out)
{
	char *end;
	long long v;
	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

int circ_parse_f64(const char *s, double *out)
{
	char *end;
	double v;
	if (!s || !*s)
		return -1;
	errno = 0;
	v = strtod(s, &end);
	if (errno == ERANGE || *end || isnan(v))
		return -1;
	*out = v;
	return 0;
}

int circ_parse_fractions(const char *list, double fr[CIRC_FRACTIONS_MAX], circ_error *e)
{
	const char *s = list;
	int nf = 0, total = 1;
	if (!*list)
		return circ_errorf(e, "empty list");
	for (const char *q = list; *q; q++)
		total += *q == ',';
	if (total > CIRC_FRACTIONS_MAX)
		return circ_errorf(e, "%d fractions, at most %d", total, CIRC_FRACTIONS_MAX);
	for (;;) {
		char t[64];
		size_t n = strcspn(s, ",");
		double v;
		snprintf(t, sizeof t, "%.*s", (int)(n < 63 ? n : 63), s);
		if (n > 63 || circ_parse_f64(t, &v) < 0 || !(v >= 0 && v <= 1) ||
		    (nf && v <= fr[nf - 1]))
			return circ_errorf(e, "'%s' is not an increasing fraction in [0, 1]", t);
		fr[nf++] = v;
		s += n;
		if (!*s)
			return nf;
		s++; /* the comma: an item follows, empty or not */
	}
}

/* ---- progress (counted here, drawn by the caller's callback) ---- */
double circ_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void circ_progress_start(circ_progress *p, const char *what, int64_t total, circ_progress_fn report,
			 void *ctx)
{
	p->what = what;
	p->total = total;
	p->done = 0;
	p->report = report;
	p->ctx = ctx;
}

void circ_progress_step(circ_progress *p, int64_t n)
{
	if (!p)
		return;
	p->done += n;
	if (p->report)
		p->report(p, 0, p->ctx);
}

void circ_progress_end(circ_progress *p)
{
	if (p && p->report)
		p->report(p, 1, p->ctx);
}

/* ---- reading files ---- */

int circ_open_regular(const char *path, struct stat *st, circ_error *e)
{
	/* O_NONBLOCK: opening a FIFO for reading would wait for a writer */
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return circ_errorf(e, "'%s': %s", path, strerror(errno));
	if (fstat(fd, st) < 0) {
		int err = errno;
		close(fd);
		return circ_errorf(e, "'%s': %s", path, strerror(err));
	}
	if (!S_ISREG(st->st_mode)) {
		close(fd);
		return circ_errorf(e, "'%s': not a regular file (%s)", path,
				   S_ISDIR(st->st_mode)	   ? "a directory"
				   : S_ISFIFO(st->st_mode) ? "a FIFO"
				   : S_ISSOCK(st->st_mode) ? "a socket"
							   : "a device");
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		int err = errno;
		close(fd);
		return circ_errorf(e, "'%s': %s", path, strerror(err));
	}
	return fd;
}

char *circ_read_file(const char *path, size_t max, size_t *len, circ_error *e)
{
	struct stat st;
	char *buf;
	size_t n = 0, cap;
	int fd = circ_open_regular(path, &st, e);
	if (fd < 0)
		return NULL;
	if ((uint64_t)st.st_size > max) {
		close(fd);
		circ_errorf(e, "'%s': too large (%lld bytes; the limit is %zu)", path,
			    (long long)st.st_size, max);
		return NULL;
	}
	/* the size is a hint: the file may grow, or (in /proc) say 0 */
	cap = (size_t)st.st_size + 1;
	buf = circ_xmalloc(cap + 1);
	for (;;) {
		ssize_t k;
		if (n == cap) {
			if (cap > max) {
				close(fd);
				free(buf);
				circ_errorf(e, "'%s': too large (over the limit of %zu bytes)",
					    path, max);
				return NULL;
			}
			cap = cap * 2 < max + 1 ? cap * 2 : max + 1;
			buf = circ_xrealloc(buf, cap + 1);
		}
		k = read(fd, buf + n, cap - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			int err = errno;
			close(fd);
			free(buf);
			circ_errorf(e, "'%s': read error: %s", path, strerror(err));
			return NULL;
		}
		if (k == 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	buf[n] = 0;
	*len = n;
	return buf;
}

/* ---- cleanup on exit and fatal signals ----
 *
 * The registry is a fixed table so that the signal handlers can walk it
 * without locks or allocation: a slot's path is written before its `used`
 * flag is set, and the flag cleared before the path is reused. Only the
 * process that registered a file removes it (a forked child that exits
 * leaves its parent's temporaries alone). */
#define CLEANUP_SLOTS 16
#define CLEANUP_PATH  4096
static struct {
	volatile sig_atomic_t used;
	pid_t pid;  /* the registering process */
	int is_dir; /* removed (when empty) after the files */
	char path[CLEANUP_PATH];
} cleanup[CLEANUP_SLOTS];

#define GUARD_SLOTS 8
static struct {
	volatile sig_atomic_t used;
	uintptr_t lo, hi;
	char path[CLEANUP_PATH];
} guard[GUARD_SLOTS];

void circ_cleanup_run(void)
{
	pid_t self = getpid();
	for (int i = 0; i < CLEANUP_SLOTS; i++)
		if (cleanup[i].used && cleanup[i].pid == self && !cleanup[i].is_dir)
			unlink(cleanup[i].path);
	for (int i = 0; i < CLEANUP_SLOTS; i++)
		if (cleanup[i].used && cleanup[i].pid == self && cleanup[i].is_dir)
			rmdir(cleanup[i].path);
}

static void on_fatal(int sig)
{
	int saved = errno;
	circ_cleanup_run();
	/* The default action back (SA_RESETHAND did it, unless someone
	 * reinstalled this handler with signal()); the signal is blocked in the
	 * handler and kills the process as soon as the handler returns. */
	signal(sig, SIG_DFL);
	raise(sig);
	errno = saved;
}

static void put(const char *s)
{
	size_t n = strlen(s);
	while (n > 0) {
		ssize_t k = write(STDERR_FILENO, s, n);
		if (k <= 0)
			return;
		s += k;
		n -= (size_t)k;
	}
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	uintptr_t a = (uintptr_t)si->si_addr;
	(void)uc;
	for (int i = 0; i < GUARD_SLOTS; i++)
		if (guard[i].used && a >= guard[i].lo && a < guard[i].hi) {
			put(circ_progname);
			put(": '");
			put(guard[i].path);
			put("': the file was truncated or changed while in use (bus error)\n");
			circ_cleanup_run();
			_exit(1);
		}
	/* not ours: die of it as before, without leaving temporaries */
	circ_cleanup_run();
	signal(sig, SIG_DFL);
	raise(sig);
}

static void install(int sig, void (*fn)(int))
{
	struct sigaction sa, old;
	if (sigaction(sig, NULL, &old) == 0 && old.sa_handler == SIG_IGN)
		return; /* ignored by the parent (nohup, a background job): keep it so */
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = fn;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESETHAND;
	sigaction(sig, &sa, NULL);
}

static void cleanup_atexit(void)
{
	circ_cleanup_run();
}

void circ_cleanup_install(void)
{
	static int done;
	if (done)
		return;
	done = 1;
	atexit(cleanup_atexit);
	install(SIGINT, on_fatal);
	install(SIGTERM, on_fatal);
	install(SIGHUP, on_fatal);
	install(SIGPIPE, on_fatal);
}

static int cleanup_add(const char *path, int is_dir, circ_error *e)
{
	size_t n = strlen(path);
	if (n >= CLEANUP_PATH)
		return circ_errorf(e, "'%s': path too long", path);
	circ_cleanup_install();
	for (int i = 0; i < CLEANUP_SLOTS; i++)
		if (!cleanup[i].used) {
			memcpy(cleanup[i].path, path, n + 1);
			cleanup[i].pid = getpid();
			cleanup[i].is_dir = is_dir;
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
			cleanup[i].used = 1;
			return i;
		}
	return circ_errorf(e, "'%s': too many output files open at once", path);
}

int circ_cleanup_add(const char *path, circ_error *e)
{
	return cleanup_add(path, 0, e);
}

int circ_cleanup_add_dir(const char *path, circ_error *e)
{
	return cleanup_add(path, 1, e);
}

void circ_cleanup_remove(int slot)
{
	if (slot >= 0 && slot < CLEANUP_SLOTS)
		cleanup[slot].used = 0;
}

int circ_guard_mapping(const void *p, size_t n, const char *path)
{
	static int installed;
	size_t len = strlen(path);
	if (len >= CLEANUP_PATH)
		len = CLEANUP_PATH - 1;
	if (!installed) {
		struct sigaction sa;
		memset(&sa, 0, sizeof sa);
		sa.sa_sigaction = on_sigbus;
		sigemptyset(&sa.sa_mask);
		sa.sa_flags = SA_SIGINFO;
		if (sigaction(SIGBUS, &sa, NULL) < 0)
			return -1;
		installed = 1;
	}
	for (int i = 0; i < GUARD_SLOTS; i++)
		if (!guard[i].used) {
			guard[i].lo = (uintptr_t)p;
			guard[i].hi = (uintptr_t)p + n;
			memcpy(guard[i].path, path, len);
			guard[i].path[len] = 0;
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
			guard[i].used = 1;
			return i;
		}
	return -1;
}

void circ_unguard_mapping(int slot)
{
	if (slot >= 0 && slot < GUARD_SLOTS)
		guard[slot].used = 0;
}

/* ---- writing files atomically ---- */

/* A temporary is stale when no live writer holds its lock; the age guards
 * the moment between its creation and its writer's flock. */
#define STALE_AGE 60

static mode_t file_mode(void)
{
	static mode_t mode;
	static int known;
	if (!known) { /* umask can only be read by setting it */
		mode_t u = umask(022);
		umask(u);
		mode = 0666 & ~u;
		known = 1;
	}
	return mode;
}

/* Removes "<base>.tmp.XXXXXX" files in dir that are regular, ours, over
 * STALE_AGE seconds old and locked by nobody. Best effort: any doubt keeps
 * the file. */
static void clear_stale(const char *dir, const char *base)
{
	size_t bl = strlen(base);
	time_t now = time(NULL);
	struct dirent *d;
	int dfd;
	DIR *dp = opendir(dir);
	if (!dp)
		return;
	dfd = dirfd(dp);
	while ((d = readdir(dp))) {
		const char *s = d->d_name;
		struct stat st;
		int fd, ok = 1;
		if (strncmp(s, base, bl) || strncmp(s + bl, ".tmp.", 5) || strlen(s + bl + 5) != 6)
			continue;
		for (int i = 0; i < 6; i++) {
			char c = s[bl + 5 + i];
			ok &= (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
			      (c >= 'A' && c <= 'Z');
		}
		if (!ok)
			continue;
		fd = openat(dfd, s, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == geteuid() &&
		    st.st_mtime < now - STALE_AGE && flock(fd, LOCK_EX | LOCK_NB) == 0)
			unlinkat(dfd, s, 0);
		close(fd);
	}
	closedir(dp);
}

static void split_path(const char *path, char **dir, char **base)
{
	char *a = circ_xstrdup(path), *b = circ_xstrdup(path);
	*dir = circ_xstrdup(dirname(a));
	*base = circ_xstrdup(basename(b));
	free(a);
	free(b);
}

int circ_atomic_open(circ_atomic *a, const char *path, circ_error *e)
{
	struct stat st;
	size_t n = strlen(path);
	char *dir, *base;
	memset(a, 0, sizeof *a);
	a->fd = -1;
	a->slot = -1;
	if (!*path)
		return circ_errorf(e, "empty output path");
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		/* a device or FIFO: write to it directly, never rename over it */
		a->fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
		if (a->fd < 0)
			return circ_errorf(e, "'%s': cannot open: %s", path, strerror(errno));
		a->path = circ_xstrdup(path);
		return 0;
	}
	split_path(path, &dir, &base);
	clear_stale(dir, base);
	free(dir);
	free(base);
	a->tmp = circ_xmalloc(n + 12);
	memcpy(a->tmp, path, n);
	memcpy(a->tmp + n, ".tmp.XXXXXX", 12);
	{ /* The name is registered for removal before the file is created: a
	   * fatal signal delivered to another thread of the process (one that
	   * does not block it) at any moment leaves nothing behind; removing
	   * a name not yet created is harmless. The handlers are installed
	   * first, so the default action never kills the process between. */
		sigset_t block, old;
		int err = EEXIST;
		static const char set[] =
		    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
		circ_cleanup_install();
		sigemptyset(&block);
		sigaddset(&block, SIGINT);
		sigaddset(&block, SIGTERM);
		sigaddset(&block, SIGHUP);
		pthread_sigmask(SIG_BLOCK, &block, &old);
		for (int tries = 0; a->fd < 0 && err == EEXIST && tries < 1000; tries++) {
			unsigned char rnd[6];
			if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
				uint64_t x = (uint64_t)getpid() * 0x9E3779B97F4A7C15u ^
					     (uint64_t)time(NULL) ^ (uint64_t)tries << 40;
				for (int i = 0; i < 6; i++, x >>= 8)
					rnd[i] = (unsigned char)x;
			}
			for (int i = 0; i < 6; i++)
				a->tmp[n + 5 + (size_t)i] = set[rnd[i] % (sizeof set - 1)];
			if ((a->slot = circ_cleanup_add(a->tmp, e)) < 0) {
				err = 0;
				break;
			}
			a->fd =
			    open(a->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
			err = errno;
			if (a->fd < 0) {
				circ_cleanup_remove(a->slot);
				a->slot = -1;
			}
		}
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		if (a->fd < 0) {
			free(a->tmp);
			a->tmp = NULL;
			if (!err)
				return circ_error_prefix(e, "'%s': cannot create", path);
			return circ_errorf(e, "'%s': cannot create: %s", path, strerror(err));
		}
	}
	(void)flock(a->fd, LOCK_EX | LOCK_NB); /* marks it live; no lock, no harm */
	(void)fchmod(a->fd, file_mode());
	a->path = circ_xstrdup(path);
	return 0;
}

FILE *circ_atomic_file(circ_atomic *a, circ_error *e)
{
	if (!a->f && !(a->f = fdopen(a->fd, "w")))
		circ_errorf(e, "'%s': %s", a->path, strerror(errno));
	return a->f;
}

static void atomic_release(circ_atomic *a)
{
	if (a->f)
		fclose(a->f);
	else if (a->fd >= 0)
		close(a->fd);
	a->f = NULL;
	a->fd = -1;
	free(a->path);
	free(a->tmp);
	a->path = a->tmp = NULL;
}

int circ_atomic_commit(circ_atomic *a, circ_error *e)
{
	int err = 0;
	if (!a->path)
		return 0;
	errno = 0;
	if (a->f && (fflush(a->f) != 0 || ferror(a->f)))
		err = errno ? errno : EIO;
	/* to disk before the rename, or a crash can leave an empty file under
	 * the final name; not for a device or FIFO (fsync says EINVAL) */
	if (!err && a->tmp && fsync(a->fd) < 0)
		err = errno;
	/* renamed while the lock is still held, so that it never looks stale */
	if (!err && a->tmp && rename(a->tmp, a->path) < 0) {
		err = errno;
		circ_errorf(e, "'%s': cannot rename into place: %s", a->path, strerror(err));
		circ_atomic_abort(a);
		return -1;
	}
	if (!err && a->tmp) {
		circ_cleanup_remove(a->slot);
		a->slot = -1;
		free(a->tmp);
		a->tmp = NULL;
	}
	if (a->f) {
		if (fclose(a->f) != 0 && !err)
			err = errno ? errno : EIO;
		a->f = NULL;
		a->fd = -1;
	} else if (a->fd >= 0) {
		if (close(a->fd) < 0 && !err)
			err = errno;
		a->fd = -1;
	}
	if (err) {
		circ_errorf(e, "'%s': write error: %s", a->path, strerror(err));
		circ_atomic_abort(a);
		return -1;
	}
	atomic_release(a);
	return 0;
}

void circ_atomic_abort(circ_atomic *a)
{
	if (a->f) {
		fclose(a->f);
		a->f = NULL;
		a->fd = -1;
	}
	if (a->fd >= 0)
		close(a->fd);
	a->fd = -1;
	if (a->tmp)
		unlink(a->tmp);
	circ_cleanup_remove(a->slot);
	a->slot = -1;
	atomic_release(a);
}

int circ_same_output(const char *a, const char *b)
{
	struct stat sa, sb;
	char *da, *ba, *db, *bb, *ra = NULL, *rb = NULL;
	int same;
	if (!strcmp(a, b))
		return 1;
	if (!strcmp(a, "-") || !strcmp(b, "-"))
		return 0;
	if (stat(a, &sa) == 0 && stat(b, &sb) == 0)
		return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
	split_path(a, &da, &ba);
	split_path(b, &db, &bb);
	ra = realpath(da, NULL);
	rb = realpath(db, NULL);
	same = ra && rb && !strcmp(ra, rb) && !strcmp(ba, bb);
	free(da), free(ba), free(db), free(bb), free(ra), free(rb);
	return same;
}

int circ_write_text(const char *path, const char *text, circ_error *e)
{
	circ_atomic a;
	FILE *f;
	if (circ_atomic_open(&a, path, e) < 0)
		return -1;
	if (!(f = circ_atomic_file(&a, e))) {
		circ_atomic_abort(&a);
		return -1;
	}
	fputs(text, f);
	return circ_atomic_commit(&a, e);
}

int circ_write_text_file(const char *dir, const char *name, const char *text, circ_error *e)
{
	char path[4096];
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path)
		return circ_errorf(e, "'%s/%s': path too long", dir, name);
	return circ_write_text(path, text, e);
}

void circ_assert_fail(const char *file, int line, const char *cond)
{
	fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, cond);
	fflush(stderr);
	abort();
}
