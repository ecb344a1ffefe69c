// SPDX-License-Identifier: MIT
/*
 * C handlers for tern.Group.register_c() in test_group.py, loaded with
 * ctypes: they run on the members' threads without the GIL.
 */
#include <errno.h>
#include <string.h>
#include <sys/types.h>

#include <tern.h>

TERN_EXPORT ssize_t tern_test_reverse(tern_req *req, const void *in, size_t in_len, void *out,
				      size_t out_cap, void *user);

/*
 * The request's bytes reversed, so a reply proves it was computed from
 * its own request; @user, when set, counts the calls (an unsigned long).
 */
ssize_t tern_test_reverse(tern_req *req, const void *in, size_t in_len, void *out, size_t out_cap,
			  void *user)
{
	const unsigned char *p = in;
	unsigned char *q = out;

	(void)req;
	if (in_len > out_cap)
		return -EMSGSIZE;
	for (size_t i = 0; i < in_len; i++)
		q[i] = p[in_len - 1 - i];
	if (user)
		__atomic_fetch_add((unsigned long *)user, 1, __ATOMIC_RELAXED);
	return (ssize_t)in_len;
}
