/*
 * Unit tests for util's file handling: atomic output files (mode, commit,
 * abort, stale temporaries), the cleanup of temporaries at exit and on fatal
 * signals, bounded reads of regular files only, the SIGBUS guard of a
 * mapping, and safetensors' check that a mapped file was not rewritten.
 * Forked children stand in for tools that die.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "safetensors.h"
#include "util.h"

static char dir[64];

static char *in_dir(const char *name)
{
	static char p[8][256];
	static int k;
	k = (k + 1) % 8;
	snprintf(p[k], sizeof p[k], "%s/%s", dir, name);
	return p[k];
}

/* Number of "<name>.tmp.*" files in dir. */
static int n_tmp(const char *name)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;
	size_t l = strlen(name);
	while ((de = readdir(d)))
		if (!strncmp(de->d_name, name, l) && !strncmp(de->d_name + l, ".tmp.", 5))
			n++;
	closedir(d);
	return n;
}

static int exists(const char *p)
{
	struct stat st;
	return lstat(p, &st) == 0;
}

static void test_atomic(void)
{
	circ_error e;
	circ_atomic a;
	struct stat st;
	FILE *f;
	mode_t old = umask(027);
	char *out = in_dir("out");
	CHECK_MSG(circ_atomic_open(&a, out, &e) == 0, e);
	CHECK(n_tmp("out") == 1 && !exists(out));
	CHECK((f = circ_atomic_file(&a, &e)) != NULL);
	fputs("hello\n", f);
	CHECK_MSG(circ_atomic_commit(&a, &e) == 0, e);
	CHECK(n_tmp("out") == 0);
	CHECK(stat(out, &st) == 0 && st.st_size == 6);
	/* as creat() would make it, not mkstemp's 0600 */
	CHECK((st.st_mode & 0777) == 0640);
	umask(old);

	/* abort keeps the old file and removes the temporary */
	CHECK_MSG(circ_atomic_open(&a, out, &e) == 0, e);
	CHECK(write(a.fd, "x", 1) == 1);
	circ_atomic_abort(&a);
	CHECK(n_tmp("out") == 0);
	CHECK(stat(out, &st) == 0 && st.st_size == 6);
	circ_atomic_abort(&a); /* twice: a no-op */

	CHECK(circ_atomic_open(&a, "", &e) < 0 && strstr(e.msg, "empty output path"));
	CHECK(circ_atomic_open(&a, in_dir("no/such/dir/x"), &e) < 0 &&
	      strstr(e.msg, "cannot create"));
	circ_atomic_abort(&a);

	/* a device is written directly */
	CHECK_MSG(circ_atomic_open(&a, "/dev/null", &e) == 0, e);
	CHECK(a.tmp == NULL && write(a.fd, "x", 1) == 1);
	CHECK_MSG(circ_atomic_commit(&a, &e) == 0, e);
	CHECK_MSG(circ_atomic_open(&a, "/dev/full", &e) == 0, e);
	CHECK((f = circ_atomic_file(&a, &e)) != NULL);
	fputs("x", f);
	CHECK(circ_atomic_commit(&a, &e) < 0 && strstr(e.msg, "'/dev/full': write error"));
}

/* The child opens out's temporary, then dies by how (0: exit(1), else
 * raise(how)); returns the child's wait status. */
static int die_writing(const char *out, int how)
{
	int st;
	pid_t pid = fork();
	if (pid == 0) {
		circ_error e;
		circ_atomic a;
		if (circ_atomic_open(&a, out, &e) < 0 || write(a.fd, "x", 1) != 1)
			_exit(3);
		if (how)
			raise(how);
		exit(1);
	}
	waitpid(pid, &st, 0);
	return st;
}

static void test_cleanup(void)
{
	int st;
	st = die_writing(in_dir("c"), 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	CHECK(n_tmp("c") == 0);
	int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
	for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
		st = die_writing(in_dir("c"), sigs[i]);
		/* the signal still kills: the parent sees it */
		CHECK(WIFSIGNALED(st) && WTERMSIG(st) == sigs[i]);
		CHECK(n_tmp("c") == 0);
	}
	/* an ignored SIGINT stays ignored (and the file stays registered) */
	{
		pid_t pid = fork();
		if (pid == 0) {
			circ_error e;
			circ_atomic a;
			signal(SIGINT, SIG_IGN);
			if (circ_atomic_open(&a, in_dir("c"), &e) < 0)
				_exit(3);
			raise(SIGINT);
			_exit(n_tmp("c") == 1 ? 0 : 4); /* _exit: no cleanup */
		}
		waitpid(pid, &st, 0);
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
		CHECK(n_tmp("c") == 1);
		system("rm -f /tmp/circ-test-util.*/c.tmp.*");
	}
}

static void make_tmp(const char *name, int age)
{
	struct timeval tv[2];
	int fd = open(in_dir(name), O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && write(fd, "old", 3) == 3);
	close(fd);
	gettimeofday(&tv[0], NULL);
	tv[0].tv_sec -= age;
	tv[1] = tv[0];
	utimes(in_dir(name), tv);
}

static void test_stale(void)
{
	circ_error e;
	circ_atomic a;
	int fd;
	make_tmp("s.tmp.aaaaaa", 120);	 /* stale: removed */
	make_tmp("s.tmp.bbbbbb", 0);	 /* recent: kept (its writer may be starting) */
	make_tmp("s.tmp.cccccc", 120);	 /* locked: a live writer's, kept */
	make_tmp("s.tmp.dddddd.x", 120); /* not a temporary of ours: kept */
	make_tmp("t.tmp.eeeeee", 120);	 /* another output's: kept */
	fd = open(in_dir("s.tmp.cccccc"), O_RDONLY);
	CHECK(fd >= 0 && flock(fd, LOCK_EX) == 0);
	if (fork() == 0) { /* the lock is per open file: another process tries */
		if (circ_atomic_open(&a, in_dir("s"), &e) < 0)
			_exit(3);
		circ_atomic_abort(&a);
		_exit(0);
	}
	wait(NULL);
	close(fd);
	CHECK(!exists(in_dir("s.tmp.aaaaaa")));
	CHECK(exists(in_dir("s.tmp.bbbbbb")));
	CHECK(exists(in_dir("s.tmp.cccccc")));
	CHECK(exists(in_dir("s.tmp.dddddd.x")));
	CHECK(exists(in_dir("t.tmp.eeeeee")));
	/* a live writer's own temporary is locked */
	CHECK_MSG(circ_atomic_open(&a, in_dir("s"), &e) == 0, e);
	fd = open(a.tmp, O_RDONLY);
	CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK);
	close(fd);
	circ_atomic_abort(&a);
}

static void test_read_file(void)
{
	circ_error e;
	size_t len;
	char *s;
	FILE *f = fopen(in_dir("small"), "w");
	fputs("0123456789", f);
	fclose(f);
	CHECK((s = circ_read_file(in_dir("small"), 10, &len, &e)) && len == 10 && !s[10]);
	free(s);
	CHECK(!circ_read_file(in_dir("small"), 9, &len, &e) && strstr(e.msg, "too large"));
	/* a FIFO is refused at once, not waited on */
	CHECK(mkfifo(in_dir("fifo"), 0600) == 0);
	CHECK(!circ_read_file(in_dir("fifo"), 100, &len, &e) &&
	      strstr(e.msg, "not a regular file (a FIFO)"));
	CHECK(!circ_read_file("/dev/zero", 100, &len, &e) && strstr(e.msg, "not a regular file"));
	CHECK(!circ_read_file(dir, 100, &len, &e) &&
	      strstr(e.msg, "not a regular file (a directory)"));
	CHECK(!circ_read_file(in_dir("none"), 100, &len, &e) && strstr(e.msg, "No such file"));
}

static void test_sigbus(void)
{
	int p[2], st;
	char msg[512] = {0};
	const char *path = in_dir("mapped");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0 && ftruncate(fd, 1 << 20) == 0);
	CHECK(pipe(p) == 0);
	if (fork() == 0) {
		volatile const char *m = mmap(NULL, 1 << 20, PROT_READ, MAP_PRIVATE, fd, 0);
		dup2(p[1], 2);
		circ_progname = "test";
		circ_guard_mapping((const void *)m, 1 << 20, path);
		if (ftruncate(fd, 0) < 0)
			_exit(3);
		(void)m[1 << 19];
		_exit(4);
	}
	close(p[1]);
	wait(&st);
	CHECK(read(p[0], msg, sizeof msg - 1) > 0);
	close(p[0]);
	close(fd);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	CHECK(strstr(msg, "test: '") && strstr(msg, "mapped': the file was truncated or changed"));
}

static void test_unchanged(void)
{
	circ_error e;
	float v[4] = {1, 2, 3, 4};
	circ_st_tensor t = {"w", CIRC_F32, 1, {4}, v, sizeof v};
	const char *path = in_dir("m.safetensors");
	circ_st *f;
	int fd;
	CHECK_MSG(circ_st_write(path, 1, &t, 0, NULL, &e) == 0, e);
	CHECK_MSG((f = circ_st_open(path, &e)) != NULL, e);
	if (!f)
		return;
	CHECK_MSG(circ_st_check_unchanged(f, &e) == 0, e);
	/* rewritten in place, same size (cp over it); later than the kernel's
	 * timestamp granularity (a jiffy) */
	usleep(20000);
	fd = open(path, O_WRONLY);
	CHECK(fd >= 0 && pwrite(fd, "\x7f", 1,
				(off_t)circ_st_at(f, 0)->nbytes - 1 +
				    (off_t)((const char *)circ_st_at(f, 0)->data -
					    (const char *)circ_st_bytes(f, NULL))) == 1);
	close(fd);
	CHECK(circ_st_check_unchanged(f, &e) < 0 && strstr(e.msg, "changed while in use"));
	circ_st_close(f);
	/* replaced by a rename: the mapped file is whole, nothing mixed */
	CHECK_MSG((f = circ_st_open(path, &e)) != NULL, e);
	if (!f)
		return;
	CHECK_MSG(circ_st_write(path, 1, &t, 0, NULL, &e) == 0, e);
	CHECK_MSG(circ_st_check_unchanged(f, &e) == 0, e);
	circ_st_close(f);
	/* a FIFO is refused, never waited on */
	CHECK(mkfifo(in_dir("fifo.safetensors"), 0600) == 0);
	CHECK(!circ_st_open(in_dir("fifo.safetensors"), &e) && strstr(e.msg, "not a regular file"));
}

/* --fractions: increasing fractions in [0, 1]; the 65th is an error, never a
 * silent cut */
static void test_fractions(void)
{
	double fr[CIRC_FRACTIONS_MAX];
	char list[CIRC_FRACTIONS_MAX * 8 + 8];
	size_t n = 0;
	circ_error e;
	CHECK(circ_parse_fractions("0,0.5,1", fr, &e) == 3 && fr[0] == 0 && fr[1] == 0.5 &&
	      fr[2] == 1);
	CHECK(circ_parse_fractions("", fr, &e) < 0 && !strcmp(e.msg, "empty list"));
	CHECK(circ_parse_fractions("0.1,", fr, &e) < 0 && strstr(e.msg, "'' is not"));
	CHECK(circ_parse_fractions("0.5,0.5", fr, &e) < 0 &&
	      !strcmp(e.msg, "'0.5' is not an increasing fraction in [0, 1]"));
	CHECK(circ_parse_fractions("1.5", fr, &e) < 0);
	CHECK(circ_parse_fractions("nan", fr, &e) < 0);
	for (int i = 0; i < CIRC_FRACTIONS_MAX; i++)
		n += (size_t)snprintf(list + n, sizeof list - n, "%s%.4f", i ? "," : "",
				      (i + 1) / 100.0);
	CHECK(circ_parse_fractions(list, fr, &e) == CIRC_FRACTIONS_MAX);
	snprintf(list + n, sizeof list - n, ",0.99");
	CHECK(circ_parse_fractions(list, fr, &e) < 0 && !strcmp(e.msg, "65 fractions, at most 64"));
}

/* lib/ counts progress and reports to the caller's callback, never drawing */
static int reports, ended;
static void count_reports(const circ_progress *p, int end, void *ctx)
{
	*(int64_t *)ctx = p->done;
	reports++;
	ended += end;
}

static void test_progress(void)
{
	circ_progress p;
	int64_t seen = 0;
	circ_progress_start(&p, "examples", 10, count_reports, &seen);
	circ_progress_step(&p, 4);
	circ_progress_step(&p, 6);
	circ_progress_end(&p);
	CHECK(reports == 3 && ended == 1 && seen == 10);
	circ_progress_start(&p, "examples", 0, NULL, NULL);
	circ_progress_step(&p, 3);
	circ_progress_end(&p);
	circ_progress_step(NULL, 1);
	CHECK(p.done == 3 && reports == 3);
}

int main(void)
{
	/* default dispositions, whatever the test inherited (nohup ignores
	 * SIGHUP, and an ignored signal stays ignored: test_cleanup checks both) */
	int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
	for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
		signal(sigs[i], SIG_DFL);
	snprintf(dir, sizeof dir, "/tmp/circ-test-util.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	test_atomic();
	test_cleanup();
	test_stale();
	test_read_file();
	test_sigbus();
	test_unchanged();
	test_fractions();
	test_progress();
	if (!failures) {
		char cmd[128];
		snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
		system(cmd);
	}
	return failures != 0;
}
