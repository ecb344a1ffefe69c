// SPDX-License-Identifier: MIT
/* URI parsing: "scheme://host:port", "scheme://[v6addr]:port", "scheme://name". */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int tern__uri_parse(const char *uri, struct tern_uri *out, char *why, size_t why_len)
{
	const char *p, *sep, *host, *host_end, *port = NULL;
	size_t n;

	memset(out, 0, sizeof(*out));
	if (!uri || !*uri) {
		snprintf(why, why_len, "empty URI");
		return -EINVAL;
	}
	sep = strstr(uri, "://");
	if (!sep || sep == uri) {
		snprintf(why, why_len, "'%s' is not a URI (expected scheme://...)", uri);
		return -EINVAL;
	}
	n = (size_t)(sep - uri);
	if (n >= sizeof(out->scheme)) {
		snprintf(why, why_len, "URI scheme too long in '%s'", uri);
		return -EINVAL;
	}
	for (p = uri; p < sep; p++) {
		if (!isalnum((unsigned char)*p)) {
			snprintf(why, why_len, "bad character in the scheme of '%s'", uri);
			return -EINVAL;
		}
		out->scheme[p - uri] = (char)tolower((unsigned char)*p);
	}
	host = sep + 3;
	if (*host == '[') {
		host_end = strchr(host, ']');
		if (!host_end) {
			snprintf(why, why_len, "unterminated '[' in '%s'", uri);
			return -EINVAL;
		}
		host++;
		p = host_end + 1;
		if (*p == ':')
			port = p + 1;
		else if (*p) {
			snprintf(why, why_len, "junk after ']' in '%s'", uri);
			return -EINVAL;
		}
	} else {
		host_end = strrchr(host, ':');
		if (host_end) {
			port = host_end + 1;
		} else {
			host_end = host + strlen(host);
		}
	}
	n = (size_t)(host_end - host);
	if (n == 0) {
		snprintf(why, why_len, "no host in '%s'", uri);
		return -EINVAL;
	}
	if (n >= sizeof(out->host)) {
		snprintf(why, why_len, "host too long in '%s'", uri);
		return -EINVAL;
	}
	memcpy(out->host, host, n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)out->host[i];
		if (c <= ' ' || c == '/' || c == '?' || c == '#' || c == '@' || c >= 0x7f) {
			snprintf(why, why_len, "bad character in the host of '%s'", uri);
			return -EINVAL;
		}
	}
	if (port) {
		char *end;
		unsigned long v;

		if (!*port || !isdigit((unsigned char)*port)) {
			snprintf(why, why_len, "bad port in '%s'", uri);
			return -EINVAL;
		}
		errno = 0;
		v = strtoul(port, &end, 10);
		if (errno || *end || v > 65535) {
			snprintf(why, why_len, "bad port in '%s'", uri);
			return -EINVAL;
		}
		out->port = (uint16_t)v;
		out->has_port = 1;
	}
	return 0;
}
