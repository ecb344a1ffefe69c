// SPDX-License-Identifier: MIT
/* Error codes: one convention (0 or negative) at every public boundary. */
#include <errno.h>
#include <string.h>

#include "tern.h"

#define STR_(x) #x
#define STR(x)	STR_(x)

static const struct {
	int code;
	const char *name;
	const char *msg;
} tern_errors[] = {
	{TERN_ENOMETHOD, "TERN_ENOMETHOD", "no handler for this method at the peer"},
	{TERN_ENOSERVICE, "TERN_ENOSERVICE", "service not registered at the peer"},
	{TERN_ESCHEMA, "TERN_ESCHEMA", "service schema differs between the peers"},
	{TERN_EVERSION, "TERN_EVERSION", "bad magic or unsupported wire version"},
	{TERN_EGEOMETRY, "TERN_EGEOMETRY", "slot geometry refused by the peer"},
	{TERN_EREMOTE, "TERN_EREMOTE", "remote handler failed"},
	{TERN_EPEER, "TERN_EPEER", "the peer broke the protocol"},
};

const char *tern_strerror(int err)
{
	if (err == 0)
		return "success";
	for (size_t i = 0; i < sizeof(tern_errors) / sizeof(tern_errors[0]); i++)
		if (tern_errors[i].code == err)
			return tern_errors[i].msg;
	if (err < 0 && err > -TERN_ERRNO_BASE)
		return strerror(-err); /* glibc: static strings for every errno */
	return "unknown error";
}

const char *tern_err_name(int err)
{
	if (err == 0)
		return "OK";
	for (size_t i = 0; i < sizeof(tern_errors) / sizeof(tern_errors[0]); i++)
		if (tern_errors[i].code == err)
			return tern_errors[i].name;
	if (err < 0 && err > -TERN_ERRNO_BASE) {
		const char *n = strerrorname_np(-err);
		if (n)
			return n;
	}
	return "UNKNOWN";
}

const char *tern_version_string(void)
{
	return STR(TERN_VERSION_MAJOR) "." STR(TERN_VERSION_MINOR) "." STR(TERN_VERSION_PATCH);
}
