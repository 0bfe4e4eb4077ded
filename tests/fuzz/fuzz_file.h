/*
 * Shared by the libFuzzer targets: the input as a file, for the loaders that
 * take a path. The bytes go to a memfd (no disk, nothing left behind) whose
 * /proc/self/fd path any open(2) accepts.
 */
#ifndef CIRC_FUZZ_FILE_H
#define CIRC_FUZZ_FILE_H

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* A memfd holding the n bytes, its path in path; -1 if none could be made. */
static int fuzz_file(const void *data, size_t n, char *path, size_t cap)
{
	int fd = memfd_create("fuzz", 0);
	if (fd < 0)
		return -1;
	if (n && write(fd, data, n) != (ssize_t)n) {
		close(fd);
		return -1;
	}
	lseek(fd, 0, SEEK_SET);
	snprintf(path, cap, "/proc/self/fd/%d", fd);
	return fd;
}

#endif
