/* SPDX-License-Identifier: MIT */
/*
 * tern - an RPC runtime for RDMA verbs.
 *
 * The one public header.  Functions return 0 or a negative errno; tern's own
 * conditions use the TERN_E* codes below, which never collide with errno
 * values.  tern_strerror() names any of them.
 */
#ifndef TERN_H
#define TERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TERN_EXPORT __attribute__((visibility("default")))
#else
#define TERN_EXPORT
#endif

#define TERN_VERSION_MAJOR 0
#define TERN_VERSION_MINOR 1
#define TERN_VERSION_PATCH 0

/*
 * tern-specific error codes.  They sit far above any errno value so that a
 * negative return is unambiguous: either -errno or one of these.
 */
#define TERN_ERRNO_BASE 4000
enum {
	TERN_ENOMETHOD = -(TERN_ERRNO_BASE + 1),  /* the peer has no handler for this method id */
	TERN_ENOSERVICE = -(TERN_ERRNO_BASE + 2), /* the peer did not register this service */
	TERN_ESCHEMA = -(TERN_ERRNO_BASE + 3),	  /* a service's schema differs between the peers */
	TERN_EVERSION = -(TERN_ERRNO_BASE + 4),	  /* bad magic or unsupported wire version */
	TERN_EGEOMETRY = -(TERN_ERRNO_BASE + 5),  /* slot size or count refused by the peer */
	TERN_EREMOTE = -(TERN_ERRNO_BASE + 6),	  /* the remote handler failed with no errno */
};

/**
 * tern_strerror - a human-readable message for a tern return code
 * @err: 0, a negative errno, or a TERN_E* code
 *
 * Return: a static string; never NULL.
 */
TERN_EXPORT const char *tern_strerror(int err);

/**
 * tern_err_name - the symbolic name of a tern return code
 * @err: 0, a negative errno, or a TERN_E* code
 *
 * Return: "OK", an errno name such as "ETIMEDOUT", a tern name such as
 * "TERN_ENOMETHOD", or "UNKNOWN"; a static string, never NULL.
 */
TERN_EXPORT const char *tern_err_name(int err);

/**
 * tern_version_string - the library's version, "MAJOR.MINOR.PATCH"
 */
TERN_EXPORT const char *tern_version_string(void);

#ifdef __cplusplus
}
#endif
#endif /* TERN_H */
