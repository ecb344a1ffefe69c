/* SPDX-License-Identifier: MIT */
/*
 * scm.h - one message and its file descriptors over a Unix socket
 * (SCM_RIGHTS), for the tests and fuzzers that play a shm:// peer by hand.
 */
#ifndef TERN_TESTS_SCM_H
#define TERN_TESTS_SCM_H

#include <stddef.h>
#include <sys/types.h>

/* Send @len bytes and @nfds (at most 4) descriptors as one message, with
 * sendmsg() @flags.  Return: 0, or -errno (-EIO for a short send). */
int scm_send(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags);

/*
 * Receive one message of up to @len bytes and up to @max descriptors
 * (received close-on-exec; any beyond @max, or all when @fds is NULL, are
 * closed), with recvmsg() @flags.  Return: its length, or -errno.
 */
ssize_t scm_recv(int sock, void *buf, size_t len, int *fds, int max, int *nfds, int flags);

#endif
