// SPDX-License-Identifier: MIT
/*
 * failthread - an LD_PRELOAD shim for test_group.py: once armed with
 * tern_test_threads_ok(n), pthread_create() lets n more threads start and
 * fails the rest with EAGAIN, so a group's start() meets a member whose
 * thread cannot start.  Preloaded after the sanitizers' runtimes (their
 * interceptors find this one as the next pthread_create).
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

static int left = -1; /* threads still allowed; -1: not armed */

__attribute__((visibility("default"))) void tern_test_threads_ok(int n);
__attribute__((visibility("default"))) int pthread_create(pthread_t *t, const pthread_attr_t *a,
							  void *(*fn)(void *), void *arg);

void tern_test_threads_ok(int n)
{
	__atomic_store_n(&left, n, __ATOMIC_SEQ_CST);
}

int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
	static create_fn real;
	int n = __atomic_load_n(&left, __ATOMIC_SEQ_CST);

	if (!real)
		real = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
	if (n == 0)
		return EAGAIN;
	if (n > 0)
		__atomic_fetch_sub(&left, 1, __ATOMIC_SEQ_CST);
	return real(t, a, fn, arg);
}
