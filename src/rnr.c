// SPDX-License-Identifier: MIT
/*
 * The soft-RNR monitor: RDMA port counters from sysfs, mapped onto canonical
 * names, with reset-aware deltas and rates.  See include/tern/rnr.h.
 *
 * Nothing here is on a data path: a reading costs a few hundred small file
 * reads, and is meant to be taken every second or so, or once around a test.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <limits.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tern/rnr.h"

/*
 * The canonical map.  Keyed by raw name alone: the drivers' names for these
 * counters do not collide, so no driver detection is needed, and a driver
 * that reuses one of mlx5's names gets the same meaning.  Within one
 * canonical name the rows are in order of preference: the first raw name a
 * port has wins, and the others stay visible under their raw names.
 *
 * Checked against the kernel (torvalds/linux; the VM runs Debian's 6.1):
 *
 * responder_out_of_buffer
 *   mlx5 out_of_buffer: a Q counter, drivers/infiniband/hw/mlx5/counters.c
 *   (basic_q_cnts); commit 0ad17a8f7fa0 "IB/mlx5: Add port protocol stats"
 *   describes it as "drops occurred due to lack of WQE for the associated
 *   QPs/RQs"; Documentation/networking/device_drivers/ethernet/mellanox/mlx5/
 *   counters.rst has the same counter as rx_out_of_buffer, "receive queue had
 *   no software buffers allocated".  On RC, no receive WQE means an RNR NAK.
 *   mlx5 also counts UD drops here; rxe does not.
 *   rxe send_rnr_err: RXE_CNT_SND_RNR, incremented in rxe_resp.c in the
 *   RESPST_ERR_RNR state, for RC QPs only, right before it sends the RNR NAK.
 *
 * requester_rnr_nak
 *   mlx5 rnr_nak_retry_err: retrans_q_cnts in counters.c, the retransmission
 *   group; the Mellanox manuals call it the RNR NAKs received by the
 *   requester (each retry, not only the last).
 *   rxe rcvd_rnr_err: RXE_CNT_RCV_RNR, incremented in rxe_comp.c check_ack()
 *   for every ACK whose AETH syndrome is an RNR NAK.
 *
 * rnr_retries_exceeded
 *   mlx5 req_rnr_retries_exceeded: extended_err_cnts in counters.c, added by
 *   commit b339e0a39dc3 ("the number of times the requester detected RNR
 *   NAKs retries exceed error"; Linux 6.11, needs enhanced_error_q_counters).
 *   rxe retry_rnr_exceeded_err: RXE_CNT_RNR_RETRY_EXCEEDED, rxe_comp.c
 *   COMPST_RNR_RETRY when qp->comp.rnr_retry is spent; the WQE then
 *   completes with IB_WC_RNR_RETRY_EXC_ERR.
 *
 * transport_retries_exceeded
 *   rxe retry_exceeded_err: RXE_CNT_RETRY_EXCEEDED, rxe_comp.c
 *   COMPST_ERROR_RETRY when qp->comp.retry_cnt is spent (IB_WC_RETRY_EXC_ERR).
 *   mlx5 req_transport_retries_exceeded (same commit b339e0a39dc3) is the
 *   exact counterpart and is preferred.  The issue named mlx5
 *   local_ack_timeout_err, which sits in retrans_q_cnts and counts every
 *   ACK timeout, not only exhausted retries: it is kept as the fallback for
 *   kernels before 6.11, where it over-counts but never misses (an exhausted
 *   retry count was preceded by timeouts), which is the safe side for an
 *   alert.  rxe has no per-timeout counter: completer_retry_err (below)
 *   also counts retries after sequence-error NAKs.
 *
 * The retransmission counters: what a lossy link costs.  They move on any
 * fabric that drops packets and say nothing about credits; tern's
 * two-device lane (docs/testing.md) reads them on rxe across a veth that
 * netem makes lossy, where each one was seen to move.
 *
 * requester_retries
 *   rxe completer_retry_err: RXE_CNT_COMP_RETRY, rxe_comp.c
 *   COMPST_ERROR_RETRY, once per retry the requester starts (it resends
 *   from the oldest unacknowledged packet) after an ACK timeout, a
 *   sequence-error NAK, or a read response that skips ahead.  mlx5 has no
 *   single counter for it: local_ack_timeout_err (kept above),
 *   packet_seq_err and implied_nak_seq_err are its parts.
 *
 * requester_sequence_nak
 *   mlx5 packet_seq_err: retrans_q_cnts, "number of received NAK sequence
 *   error packets" (the mlx5 counters documentation).
 *   rxe rcvd_seq_err: RXE_CNT_RCV_SEQ_ERR, rxe_comp.c check_ack(), for a
 *   PSN sequence error NAK that acknowledges something new.
 *
 * responder_duplicate_request
 *   mlx5 duplicate_request: retrans_q_cnts, requests received that had
 *   already been executed, i.e. retransmissions that reached the responder
 *   after all.  rxe duplicate_request: RXE_CNT_DUP_REQ, rxe_resp.c
 *   check_psn() for a PSN behind the expected one.  The same name on both.
 *
 * responder_out_of_sequence
 *   mlx5 out_of_sequence: out_of_seq_q_cnts, "number of out of sequence
 *   packets received".  rxe out_of_seq_request: RXE_CNT_OUT_OF_SEQ_REQ,
 *   rxe_resp.c check_psn() for a PSN ahead of the expected one (something
 *   before it was lost), counted once per NAK it sends.
 */
static const char *const rnr_canonical[] = {
	/* RNR (a credit bug) and retries given up (a dead peer or link) */
	TERN_RNR_RESPONDER_OUT_OF_BUFFER,
	TERN_RNR_REQUESTER_RNR_NAK,
	TERN_RNR_RNR_RETRIES_EXCEEDED,
	TERN_RNR_TRANSPORT_RETRIES_EXCEEDED,
	/* retransmissions (a lossy link) */
	TERN_RNR_REQUESTER_RETRIES,
	TERN_RNR_REQUESTER_SEQUENCE_NAK,
	TERN_RNR_RESPONDER_DUPLICATE_REQUEST,
	TERN_RNR_RESPONDER_OUT_OF_SEQUENCE,
};
#define N_CANONICAL (sizeof(rnr_canonical) / sizeof(rnr_canonical[0]))

static const struct {
	unsigned canonical; /* index into rnr_canonical */
	const char *raw;
} rnr_map[] = {
	{0, "out_of_buffer"},		       /* mlx5 */
	{0, "send_rnr_err"},		       /* rxe */
	{1, "rnr_nak_retry_err"},	       /* mlx5 */
	{1, "rcvd_rnr_err"},		       /* rxe */
	{2, "req_rnr_retries_exceeded"},       /* mlx5 */
	{2, "retry_rnr_exceeded_err"},	       /* rxe */
	{3, "req_transport_retries_exceeded"}, /* mlx5, >= 6.11 */
	{3, "local_ack_timeout_err"},	       /* mlx5, fallback */
	{3, "retry_exceeded_err"},	       /* rxe */
	{4, "completer_retry_err"},	       /* rxe */
	{5, "packet_seq_err"},		       /* mlx5 */
	{5, "rcvd_seq_err"},		       /* rxe */
	{6, "duplicate_request"},	       /* mlx5 and rxe */
	{7, "out_of_sequence"},		       /* mlx5 */
	{7, "out_of_seq_request"},	       /* rxe */
};
#define N_MAP (sizeof(rnr_map) / sizeof(rnr_map[0]))

/*
 * Bounds on what one reading takes from sysfs, so a strange or hostile tree
 * cannot make the monitor allocate without limit.  Real hardware is far
 * below them (an mlx5 port has about 60 hw_counters).
 */
#define MAX_DEVICES	     256
#define MAX_PORTS_PER_DEVICE 64
#define MAX_FILES_PER_GROUP  1024
#define VALUE_MAX_BYTES	     64

/* The kernel's cache time for hw_counters: a setting, not a counter. */
#define LIFESPAN_FILE "lifespan"

struct rnr_counter_state {
	char *raw;
	enum tern_rnr_group group;
	enum tern_rnr_status status;
	int err;
	bool listed;	/* in this reading's directory listing */
	bool have_last; /* last holds a value read with status OK */
	uint64_t value;
	uint64_t last;
	uint64_t total; /* reset-corrected increase since first sight */
	uint64_t base;	/* total at the baseline */
	uint32_t resets;
};

struct rnr_port_state {
	char *device;
	uint32_t port;
	bool seen;  /* found by this reading's scan */
	bool fresh; /* first seen since the last snapshot or baseline */
	int64_t lifespan_ms;
	size_t n, cap;
	struct rnr_counter_state *ctr;
};

struct tern_rnr_monitor {
	char *root;
	char *pattern;
	uint64_t (*clock_ns)(void *arg);
	void *clock_arg;
	uint64_t id;
	size_t n, cap;
	struct rnr_port_state *ports;
};

struct tern_rnr_snapshot {
	uint64_t monitor_id;
	uint64_t time_ns;
	int64_t realtime_s;
	size_t n_ports;
	struct tern_rnr_port *ports;
	/* ...followed, in the same allocation, by the counters and strings */
};

/* Snapshots remember which monitor took them, so rates refuse to mix two. */
static uint64_t next_monitor_id = 1;

static const char *const group_dir[] = {
	[TERN_RNR_HW_COUNTERS] = "hw_counters",
	[TERN_RNR_IB_COUNTERS] = "counters",
};

/* ---- names ---------------------------------------------------------------- */

const char *tern_rnr_canonical_name(const char *raw)
{
	if (!raw)
		return NULL;
	for (size_t i = 0; i < N_MAP; i++)
		if (strcmp(rnr_map[i].raw, raw) == 0)
			return rnr_canonical[rnr_map[i].canonical];
	return NULL;
}

static unsigned canonical_rank(const char *name)
{
	for (unsigned i = 0; i < N_CANONICAL; i++)
		if (name && strcmp(rnr_canonical[i], name) == 0)
			return i;
	return N_CANONICAL;
}

int tern_rnr_is_canonical(const char *name)
{
	return canonical_rank(name) < N_CANONICAL;
}

const char *tern_rnr_status_name(enum tern_rnr_status status)
{
	switch (status) {
	case TERN_RNR_OK:
		return "ok";
	case TERN_RNR_MISSING:
		return "missing";
	case TERN_RNR_GARBAGE:
		return "garbage";
	case TERN_RNR_UNREADABLE:
		return "unreadable";
	}
	return "unknown";
}

const char *tern_rnr_port_state_name(enum tern_rnr_port_state state)
{
	switch (state) {
	case TERN_RNR_PORT_PRESENT:
		return "present";
	case TERN_RNR_PORT_NEW:
		return "new";
	case TERN_RNR_PORT_GONE:
		return "gone";
	}
	return "unknown";
}

/* ---- reading sysfs ---------------------------------------------------------- */

static int path_join(char *buf, size_t len, const char *a, const char *b)
{
	int n = snprintf(buf, len, "%s/%s", a, b);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/*
 * Room for element @n of an array of @cap elements of @elem bytes: the
 * array itself, or a larger copy with *@cap doubled (from @first), or NULL
 * when that allocation fails and the old array is left as it was.
 */
static void *grow(void *arr, size_t *cap, size_t n, size_t elem, size_t first)
{
	size_t ncap = *cap ? 2 * *cap : first;
	void *p;

	if (n < *cap)
		return arr;
	if (!(p = realloc(arr, ncap * elem)))
		return NULL;
	*cap = ncap;
	return p;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/*
 * The sorted names in directory @fd: subdirectories (following symlinks, as
 * class/infiniband/<dev> is one) when @want_dirs, else everything that is not
 * itself a directory.  At most @max names; the rest are ignored.
 */
static int list_dir(int fd, bool want_dirs, size_t max, char ***out, size_t *n_out)
{
	char **names = NULL, **nn;
	size_t n = 0, cap = 0;
	struct dirent *e;
	int dfd = dup(fd), rc = 0;
	DIR *d;

	if (dfd < 0)
		return -errno;
	d = fdopendir(dfd);
	if (!d) {
		rc = -errno;
		close(dfd);
		return rc;
	}
	while ((e = readdir(d)) && n < max) {
		struct stat st;
		bool is_dir;

		if (e->d_name[0] == '.')
			continue;
		if (e->d_type == DT_DIR || e->d_type == DT_REG) {
			is_dir = e->d_type == DT_DIR;
		} else if (fstatat(fd, e->d_name, &st, want_dirs ? 0 : AT_SYMLINK_NOFOLLOW) == 0) {
			is_dir = S_ISDIR(st.st_mode);
		} else {
			continue; /* gone since readdir, or a dangling link to a device */
		}
		if (is_dir != want_dirs)
			continue;
		if (!(nn = grow(names, &cap, n, sizeof(*names), 32))) {
			rc = -ENOMEM;
			break;
		}
		names = nn;
		if (!(names[n] = strdup(e->d_name))) {
			rc = -ENOMEM;
			break;
		}
		n++;
	}
	closedir(d);
	if (rc) {
		free_names(names, n);
		return rc;
	}
	if (n)
		qsort(names, n, sizeof(*names), cmp_str);
	*out = names;
	*n_out = n;
	return 0;
}

/* Strict: optional blanks, 1-20 digits that fit in a u64, optional blanks. */
static bool parse_u64(const char *s, uint64_t *v)
{
	uint64_t x = 0;
	bool any = false;

	while (*s == ' ' || *s == '\t')
		s++;
	for (; *s >= '0' && *s <= '9'; s++) {
		unsigned d = (unsigned)(*s - '0');
		if (x > (UINT64_MAX - d) / 10)
			return false;
		x = x * 10 + d;
		any = true;
	}
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	if (!any || *s)
		return false;
	*v = x;
	return true;
}

/*
 * Read one counter file.  O_NONBLOCK so that a FIFO in a test tree reads as
 * empty instead of hanging the monitor; sysfs ignores the flag.
 */
static enum tern_rnr_status read_value(int dirfd, const char *name, uint64_t *v, int *err)
{
	char buf[VALUE_MAX_BYTES + 1];
	size_t len = 0;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);

	*err = 0;
	if (fd < 0) {
		*err = -errno;
		return errno == ENOENT ? TERN_RNR_MISSING : TERN_RNR_UNREADABLE;
	}
	while (len < sizeof(buf) - 1) {
		ssize_t r = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			*err = -errno;
			close(fd);
			return TERN_RNR_UNREADABLE;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	/* A full buffer is longer than any number, and a NUL inside is not one. */
	if (len == sizeof(buf) - 1 || strlen(buf) != len || !parse_u64(buf, v))
		return TERN_RNR_GARBAGE;
	return TERN_RNR_OK;
}

/* ---- the monitor's state ------------------------------------------------------ */

static void port_state_free(struct rnr_port_state *ps)
{
	for (size_t i = 0; i < ps->n; i++)
		free(ps->ctr[i].raw);
	free(ps->ctr);
	free(ps->device);
}

static struct rnr_port_state *port_get(struct tern_rnr_monitor *m, const char *dev, uint32_t port)
{
	struct rnr_port_state *ps;

	for (size_t i = 0; i < m->n; i++)
		if (m->ports[i].port == port && strcmp(m->ports[i].device, dev) == 0)
			return &m->ports[i];
	if (!(ps = grow(m->ports, &m->cap, m->n, sizeof(*ps), 8)))
		return NULL;
	m->ports = ps;
	ps = &m->ports[m->n];
	memset(ps, 0, sizeof(*ps));
	if (!(ps->device = strdup(dev)))
		return NULL;
	ps->port = port;
	ps->fresh = true;
	m->n++;
	return ps;
}

static struct rnr_counter_state *counter_get(struct rnr_port_state *ps, const char *raw,
					     enum tern_rnr_group g)
{
	struct rnr_counter_state *c;

	for (size_t i = 0; i < ps->n; i++)
		if (ps->ctr[i].group == g && strcmp(ps->ctr[i].raw, raw) == 0)
			return &ps->ctr[i];
	if (!(c = grow(ps->ctr, &ps->cap, ps->n, sizeof(*c), 16)))
		return NULL;
	ps->ctr = c;
	c = &ps->ctr[ps->n];
	memset(c, 0, sizeof(*c));
	if (!(c->raw = strdup(raw)))
		return NULL;
	c->group = g;
	ps->n++;
	return c;
}

/*
 * Fold one read into the counter.  The reset rule lives here: a value below
 * the last one is the increase since a reset, never last - value wrapped.
 */
static void counter_update(struct rnr_counter_state *c, enum tern_rnr_status st, uint64_t v,
			   int err)
{
	c->status = st;
	c->err = err;
	c->value = st == TERN_RNR_OK ? v : 0;
	if (st != TERN_RNR_OK)
		return; /* the total stands until a value can be read again */
	if (!c->have_last) {
		/* First sight: this value is the counter's own baseline. */
	} else if (v >= c->last) {
		c->total += v - c->last;
	} else {
		c->total += v;
		c->resets++;
	}
	c->last = v;
	c->have_last = true;
}

static int scan_group(struct rnr_port_state *ps, int portfd, enum tern_rnr_group g)
{
	char **names = NULL;
	size_t n = 0;
	int fd = openat(portfd, group_dir[g], O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

	if (fd < 0)
		return 0; /* no such group here (now): its counters read as missing */
	rc = list_dir(fd, false, MAX_FILES_PER_GROUP, &names, &n);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct rnr_counter_state *c;
		enum tern_rnr_status st;
		uint64_t v = 0;
		int err;

		st = read_value(fd, names[i], &v, &err);
		if (g == TERN_RNR_HW_COUNTERS && strcmp(names[i], LIFESPAN_FILE) == 0) {
			ps->lifespan_ms = st == TERN_RNR_OK && v <= INT64_MAX ? (int64_t)v : -1;
			continue;
		}
		if (!(c = counter_get(ps, names[i], g))) {
			rc = -ENOMEM;
			break;
		}
		c->listed = true;
		counter_update(c, st, v, err);
	}
	free_names(names, n);
	close(fd);
	return rc;
}

static int scan_port(struct tern_rnr_monitor *m, const char *dev, uint32_t port, int portfd)
{
	struct rnr_port_state *ps = port_get(m, dev, port);
	int rc = 0;

	if (!ps)
		return -ENOMEM;
	ps->seen = true;
	ps->lifespan_ms = -1;
	for (size_t i = 0; i < ps->n; i++)
		ps->ctr[i].listed = false;
	for (int g = TERN_RNR_HW_COUNTERS; rc == 0 && g <= TERN_RNR_IB_COUNTERS; g++)
		rc = scan_group(ps, portfd, (enum tern_rnr_group)g);
	for (size_t i = 0; i < ps->n; i++)
		if (!ps->ctr[i].listed)
			counter_update(&ps->ctr[i], TERN_RNR_MISSING, 0, -ENOENT);
	return rc;
}

static bool has_dir(int fd, const char *name)
{
	struct stat st;
	return fstatat(fd, name, &st, 0) == 0 && S_ISDIR(st.st_mode);
}

/* Port numbers are decimal and start at 1; "0" would clash with port 0. */
static bool parse_port(const char *s, uint32_t *port)
{
	uint64_t v = 0;

	if (*s < '1' || *s > '9')
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > UINT32_MAX)
			return false;
	}
	*port = (uint32_t)v;
	return true;
}

static bool has_counters(int fd)
{
	return has_dir(fd, group_dir[TERN_RNR_HW_COUNTERS]) ||
	       has_dir(fd, group_dir[TERN_RNR_IB_COUNTERS]);
}

static int scan_device(struct tern_rnr_monitor *m, int classfd, const char *dev)
{
	int devfd = openat(classfd, dev, O_RDONLY | O_DIRECTORY | O_CLOEXEC), portsfd, rc = 0;
	char **names = NULL;
	size_t n = 0;

	if (devfd < 0)
		return 0; /* unplugged while we looked: it will read as gone */
	/* Device-wide hw_counters (the kernel's port 0), where a driver has them. */
	if (has_dir(devfd, group_dir[TERN_RNR_HW_COUNTERS]))
		rc = scan_port(m, dev, 0, devfd);
	portsfd = openat(devfd, "ports", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rc == 0 && portsfd >= 0)
		rc = list_dir(portsfd, true, MAX_PORTS_PER_DEVICE, &names, &n);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		uint32_t port;
		int pfd;

		if (!parse_port(names[i], &port))
			continue;
		pfd = openat(portsfd, names[i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (pfd < 0)
			continue;
		if (has_counters(pfd))
			rc = scan_port(m, dev, port, pfd);
		close(pfd);
	}
	free_names(names, n);
	if (portsfd >= 0)
		close(portsfd);
	close(devfd);
	return rc;
}

static int monitor_scan(struct tern_rnr_monitor *m)
{
	char path[PATH_MAX];
	char **names = NULL;
	size_t n = 0;
	int classfd, rc;

	for (size_t i = 0; i < m->n; i++)
		m->ports[i].seen = false;
	if ((rc = path_join(path, sizeof(path), m->root, "class/infiniband")))
		return rc;
	classfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (classfd < 0) {
		/* No RDMA subsystem at all is a machine with no devices. */
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	}
	rc = list_dir(classfd, true, MAX_DEVICES, &names, &n);
	for (size_t i = 0; rc == 0 && i < n; i++)
		if (!m->pattern || fnmatch(m->pattern, names[i], 0) == 0)
			rc = scan_device(m, classfd, names[i]);
	free_names(names, n);
	close(classfd);
	return rc;
}

/* After a snapshot or a new baseline: forget gone ports, nothing is new. */
static void monitor_settle(struct tern_rnr_monitor *m)
{
	size_t j = 0;

	for (size_t i = 0; i < m->n; i++) {
		if (!m->ports[i].seen) {
			port_state_free(&m->ports[i]);
			continue;
		}
		m->ports[i].fresh = false;
		m->ports[j++] = m->ports[i];
	}
	m->n = j;
}

static uint64_t monotonic_ns(void *arg)
{
	struct timespec ts;
	(void)arg;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void tern_rnr_opts_init(struct tern_rnr_opts *opts)
{
	if (!opts)
		return;
	memset(opts, 0, sizeof(*opts));
	opts->size = sizeof(*opts);
}

void tern_rnr_monitor_destroy(tern_rnr_monitor *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		port_state_free(&m->ports[i]);
	free(m->ports);
	free(m->root);
	free(m->pattern);
	free(m);
}

int tern_rnr_monitor_create(const struct tern_rnr_opts *opts, tern_rnr_monitor **out)
{
	struct tern_rnr_opts o;
	tern_rnr_monitor *m;
	int rc;

	if (!out)
		return -EINVAL;
	*out = NULL;
	tern_rnr_opts_init(&o);
	if (opts) {
		/* Fields past the caller's size keep their defaults. */
		if (opts->size < offsetof(struct tern_rnr_opts, sysfs_root) + sizeof(char *) ||
		    opts->size > sizeof(o))
			return -EINVAL;
		memcpy(&o, opts, opts->size);
	}
	if (o.sysfs_root && !*o.sysfs_root)
		return -EINVAL;
	if (!(m = calloc(1, sizeof(*m))))
		return -ENOMEM;
	m->root = strdup(o.sysfs_root ? o.sysfs_root : "/sys");
	m->pattern = o.device ? strdup(o.device) : NULL;
	if (!m->root || (o.device && !m->pattern)) {
		tern_rnr_monitor_destroy(m);
		return -ENOMEM;
	}
	m->clock_ns = o.clock_ns ? o.clock_ns : monotonic_ns;
	m->clock_arg = o.clock_arg;
	m->id = __atomic_fetch_add(&next_monitor_id, 1, __ATOMIC_RELAXED);
	if ((rc = tern_rnr_monitor_rebaseline(m))) {
		tern_rnr_monitor_destroy(m);
		return rc;
	}
	*out = m;
	return 0;
}

int tern_rnr_monitor_rebaseline(tern_rnr_monitor *m)
{
	int rc;

	if (!m)
		return -EINVAL;
	if ((rc = monitor_scan(m)))
		return rc;
	monitor_settle(m);
	for (size_t i = 0; i < m->n; i++) {
		for (size_t j = 0; j < m->ports[i].n; j++) {
			m->ports[i].ctr[j].base = m->ports[i].ctr[j].total;
			m->ports[i].ctr[j].resets = 0;
		}
	}
	return 0;
}

/* ---- snapshots ------------------------------------------------------------------ */

static size_t align_up(size_t n)
{
	const size_t a = alignof(max_align_t);
	return (n + a - 1) & ~(a - 1);
}

static int cmp_port_state(const void *a, const void *b)
{
	const struct rnr_port_state *x = *(const struct rnr_port_state *const *)a;
	const struct rnr_port_state *y = *(const struct rnr_port_state *const *)b;
	int c = strcmp(x->device, y->device);
	return c ? c : (x->port > y->port) - (x->port < y->port);
}

/* Canonical counters first, in the canonical order; then by group and name. */
static int cmp_counter(const void *a, const void *b)
{
	const struct tern_rnr_counter *x = a, *y = b;
	unsigned rx = canonical_rank(x->canonical), ry = canonical_rank(y->canonical);

	if (rx != ry)
		return rx < ry ? -1 : 1;
	if (x->group != y->group)
		return x->group < y->group ? -1 : 1;
	return strcmp(x->raw, y->raw);
}

/* Which of the port's hw_counters carries canonical name @k, if any. */
static const struct rnr_counter_state *canonical_source(const struct rnr_port_state *ps, unsigned k)
{
	for (size_t i = 0; i < N_MAP; i++) {
		if (rnr_map[i].canonical != k)
			continue;
		for (size_t j = 0; j < ps->n; j++)
			if (ps->ctr[j].group == TERN_RNR_HW_COUNTERS &&
			    strcmp(ps->ctr[j].raw, rnr_map[i].raw) == 0)
				return &ps->ctr[j];
	}
	return NULL;
}

static char *copy_str(char **pool, const char *s)
{
	size_t len = strlen(s) + 1;
	char *d = memcpy(*pool, s, len);
	*pool += len;
	return d;
}

/* One allocation holds the snapshot, its ports, counters and strings. */
static int snapshot_build(const struct tern_rnr_monitor *m, uint64_t now, tern_rnr_snapshot **out)
{
	const struct rnr_port_state **order;
	size_t n_ctr = 0, strings = 0, size;
	struct tern_rnr_counter *ctr;
	struct timespec rt;
	tern_rnr_snapshot *s;
	char *pool;

	order = m->n ? malloc(m->n * sizeof(*order)) : NULL;
	if (m->n && !order)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		order[i] = &m->ports[i];
		strings += strlen(m->ports[i].device) + 1;
		n_ctr += m->ports[i].n;
		for (size_t j = 0; j < m->ports[i].n; j++)
			strings += strlen(m->ports[i].ctr[j].raw) + 1;
	}
	if (m->n)
		qsort(order, m->n, sizeof(*order), cmp_port_state);
	size = align_up(sizeof(*s)) + align_up(m->n * sizeof(struct tern_rnr_port)) +
	       align_up(n_ctr * sizeof(*ctr)) + strings;
	if (!(s = calloc(1, size))) {
		free(order);
		return -ENOMEM;
	}
	s->monitor_id = m->id;
	s->time_ns = now;
	clock_gettime(CLOCK_REALTIME, &rt);
	s->realtime_s = rt.tv_sec;
	s->n_ports = m->n;
	s->ports = (struct tern_rnr_port *)((char *)s + align_up(sizeof(*s)));
	ctr = (struct tern_rnr_counter *)((char *)s->ports +
					  align_up(m->n * sizeof(struct tern_rnr_port)));
	pool = (char *)ctr + align_up(n_ctr * sizeof(*ctr));

	for (size_t i = 0; i < m->n; i++) {
		const struct rnr_port_state *ps = order[i];
		struct tern_rnr_port *p = &s->ports[i];

		p->device = copy_str(&pool, ps->device);
		p->port = ps->port;
		p->state = !ps->seen   ? TERN_RNR_PORT_GONE
			   : ps->fresh ? TERN_RNR_PORT_NEW
				       : TERN_RNR_PORT_PRESENT;
		p->lifespan_ms = ps->seen ? ps->lifespan_ms : -1;
		p->n_counters = ps->n;
		p->counters = ctr;
		for (size_t j = 0; j < ps->n; j++) {
			const struct rnr_counter_state *cs = &ps->ctr[j];
			struct tern_rnr_counter *c = &ctr[j];

			c->raw = copy_str(&pool, cs->raw);
			c->name = c->raw;
			c->group = cs->group;
			c->status = ps->seen ? cs->status : TERN_RNR_MISSING;
			c->err = ps->seen ? cs->err : -ENOENT;
			c->value = ps->seen ? cs->value : 0;
			c->total = cs->total;
			c->delta = cs->total - cs->base;
			c->resets = cs->resets;
		}
		for (unsigned k = 0; k < N_CANONICAL; k++) {
			const struct rnr_counter_state *src = canonical_source(ps, k);
			if (src) {
				struct tern_rnr_counter *c = &ctr[src - ps->ctr];
				c->canonical = c->name = rnr_canonical[k];
			}
		}
		if (ps->n)
			qsort(ctr, ps->n, sizeof(*ctr), cmp_counter);
		ctr += ps->n;
	}
	free(order);
	*out = s;
	return 0;
}

int tern_rnr_monitor_read(tern_rnr_monitor *m, tern_rnr_snapshot **out)
{
	int rc;

	if (!m || !out)
		return -EINVAL;
	*out = NULL;
	if ((rc = monitor_scan(m)) || (rc = snapshot_build(m, m->clock_ns(m->clock_arg), out)))
		return rc;
	monitor_settle(m);
	return 0;
}

void tern_rnr_snapshot_free(tern_rnr_snapshot *s)
{
	free(s);
}

const struct tern_rnr_port *tern_rnr_snapshot_ports(const tern_rnr_snapshot *s, size_t *n)
{
	if (n)
		*n = s ? s->n_ports : 0;
	return s && s->n_ports ? s->ports : NULL;
}

uint64_t tern_rnr_snapshot_time_ns(const tern_rnr_snapshot *s)
{
	return s ? s->time_ns : 0;
}

/* ---- lookups -------------------------------------------------------------------- */

static const struct tern_rnr_counter *by_raw(const struct tern_rnr_port *p, enum tern_rnr_group g,
					     const char *raw)
{
	for (size_t i = 0; i < p->n_counters; i++)
		if (p->counters[i].group == g && strcmp(p->counters[i].raw, raw) == 0)
			return &p->counters[i];
	return NULL;
}

static const struct tern_rnr_counter *by_canonical(const struct tern_rnr_port *p, const char *name)
{
	for (size_t i = 0; i < p->n_counters; i++)
		if (p->counters[i].canonical && strcmp(p->counters[i].canonical, name) == 0)
			return &p->counters[i];
	return NULL;
}

static const struct tern_rnr_counter *port_counter(const struct tern_rnr_port *p, const char *name)
{
	const struct tern_rnr_counter *c;
	const char *alias;

	for (int g = TERN_RNR_HW_COUNTERS; g <= TERN_RNR_IB_COUNTERS; g++) {
		size_t len = strlen(group_dir[g]);
		if (strncmp(name, group_dir[g], len) == 0 && name[len] == '/')
			return by_raw(p, (enum tern_rnr_group)g, name + len + 1);
	}
	if ((c = by_canonical(p, name)) || (c = by_raw(p, TERN_RNR_HW_COUNTERS, name)) ||
	    (c = by_raw(p, TERN_RNR_IB_COUNTERS, name)))
		return c;
	alias = tern_rnr_canonical_name(name);
	return alias ? by_canonical(p, alias) : NULL;
}

static const struct tern_rnr_port *find_port(const tern_rnr_snapshot *s, const char *device,
					     uint32_t port)
{
	for (size_t i = 0; i < s->n_ports; i++)
		if (s->ports[i].port == port && strcmp(s->ports[i].device, device) == 0)
			return &s->ports[i];
	return NULL;
}

int tern_rnr_snapshot_find(const tern_rnr_snapshot *s, const char *device, uint32_t port,
			   const char *name, const struct tern_rnr_counter **out)
{
	const struct tern_rnr_port *p;
	const struct tern_rnr_counter *c;

	if (!s || !device || !name || !out)
		return -EINVAL;
	*out = NULL;
	if (!(p = find_port(s, device, port)) || !(c = port_counter(p, name)))
		return -ENOENT;
	*out = c;
	return 0;
}

static int status_errno(const struct tern_rnr_counter *c)
{
	switch (c->status) {
	case TERN_RNR_OK:
		return 0;
	case TERN_RNR_MISSING:
		return -ENODATA;
	case TERN_RNR_GARBAGE:
		return -EBADMSG;
	case TERN_RNR_UNREADABLE:
		break;
	}
	return c->err ? c->err : -EIO;
}

/*
 * The increase of @c (on port @p of the newer snapshot) since @older: the
 * difference of the running totals, or the whole total when @older did not
 * have the counter (it was first seen after @older).
 */
static uint64_t increase_since(const tern_rnr_snapshot *older, const struct tern_rnr_port *p,
			       const struct tern_rnr_counter *c)
{
	const struct tern_rnr_port *op = find_port(older, p->device, p->port);
	const struct tern_rnr_counter *oc = op ? by_raw(op, c->group, c->raw) : NULL;

	/* A port that vanished and came back starts a new total. */
	return oc && oc->total <= c->total ? c->total - oc->total : c->total;
}

/*
 * Sum a counter over the matching ports of @s: deltas since the baseline,
 * or increases since @older when it is given.
 */
static int sum_counter(const tern_rnr_snapshot *s, const tern_rnr_snapshot *older,
		       const char *device, uint32_t port, const char *name, uint64_t *sum)
{
	int rc = -ENOENT;

	*sum = 0;
	for (size_t i = 0; i < s->n_ports; i++) {
		const struct tern_rnr_port *p = &s->ports[i];
		const struct tern_rnr_counter *c;

		if (device && (p->port != port || strcmp(p->device, device) != 0))
			continue;
		if (!(c = port_counter(p, name)))
			continue;
		*sum += older ? increase_since(older, p, c) : c->delta;
		if (rc == -ENOENT || rc == 0)
			rc = status_errno(c);
	}
	return rc;
}

int tern_rnr_snapshot_delta(const tern_rnr_snapshot *s, const char *device, uint32_t port,
			    const char *name, uint64_t *delta)
{
	if (!s || !name || !delta)
		return -EINVAL;
	return sum_counter(s, NULL, device, port, name, delta);
}

int tern_rnr_monitor_delta(tern_rnr_monitor *m, const char *device, uint32_t port, const char *name,
			   uint64_t *delta)
{
	tern_rnr_snapshot *s;
	int rc;

	if (!m || !name || !delta)
		return -EINVAL;
	if ((rc = tern_rnr_monitor_read(m, &s)))
		return rc;
	rc = sum_counter(s, NULL, device, port, name, delta);
	tern_rnr_snapshot_free(s);
	return rc;
}

int tern_rnr_rate(const tern_rnr_snapshot *older, const tern_rnr_snapshot *newer,
		  const char *device, uint32_t port, const char *name, double *per_sec)
{
	uint64_t inc;
	int rc;

	if (!older || !newer || !name || !per_sec || older->monitor_id != newer->monitor_id ||
	    newer->time_ns <= older->time_ns)
		return -EINVAL;
	rc = sum_counter(newer, older, device, port, name, &inc);
	*per_sec = (double)inc * 1e9 / (double)(newer->time_ns - older->time_ns);
	return rc;
}

/* ---- output --------------------------------------------------------------------- */

/* A counter's rate since @prev for the printers; false when there is none. */
static bool counter_rate(const tern_rnr_snapshot *prev, const tern_rnr_snapshot *s,
			 const struct tern_rnr_port *p, const struct tern_rnr_counter *c,
			 double *rate)
{
	if (!prev || prev->monitor_id != s->monitor_id || s->time_ns <= prev->time_ns ||
	    c->status != TERN_RNR_OK)
		return false;
	*rate = (double)increase_since(prev, p, c) * 1e9 / (double)(s->time_ns - prev->time_ns);
	return true;
}

/* Prometheus label values escape backslash, double quote and newline. */
static void prom_escape(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

static void prom_port_labels(FILE *f, const struct tern_rnr_port *p)
{
	fputs("device=\"", f);
	prom_escape(f, p->device);
	fprintf(f, "\",port=\"%" PRIu32 "\"", p->port);
}

static void prom_labels(FILE *f, const struct tern_rnr_port *p, const struct tern_rnr_counter *c)
{
	fputc('{', f);
	prom_port_labels(f, p);
	fprintf(f, ",group=\"%s\",counter=\"", group_dir[c->group]);
	prom_escape(f, c->name);
	fputs("\",raw=\"", f);
	prom_escape(f, c->raw);
	fputc('"', f);
}

static void prom_family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

enum prom_what { PROM_VALUE, PROM_DELTA, PROM_RESETS, PROM_ERROR };

static void prom_samples(FILE *f, const tern_rnr_snapshot *s, const char *family,
			 enum prom_what what)
{
	for (size_t i = 0; i < s->n_ports; i++) {
		const struct tern_rnr_port *p = &s->ports[i];
		for (size_t j = 0; j < p->n_counters; j++) {
			const struct tern_rnr_counter *c = &p->counters[j];
			uint64_t v = what == PROM_VALUE	  ? c->value
				     : what == PROM_DELTA ? c->delta
							  : c->resets;

			bool ok = c->status == TERN_RNR_OK;

			/* A value only when there is one; an error line only when not. */
			if ((what == PROM_VALUE && !ok) || (what == PROM_ERROR && ok))
				continue;
			fputs(family, f);
			prom_labels(f, p, c);
			if (what == PROM_ERROR) {
				fprintf(f, ",status=\"%s\"} 1\n", tern_rnr_status_name(c->status));
				continue;
			}
			fprintf(f, "} %" PRIu64 "\n", v);
		}
	}
}

static void write_prom(FILE *f, const tern_rnr_snapshot *s)
{
	prom_family(f, "tern_rnr_counter_total", "counter",
		    "RDMA port counter as read from sysfs; counter is tern's canonical name "
		    "where there is one, raw the driver's file name.");
	prom_samples(f, s, "tern_rnr_counter_total", PROM_VALUE);
	prom_family(f, "tern_rnr_counter_delta", "gauge",
		    "Increase since the monitor's baseline, corrected for counter resets.");
	prom_samples(f, s, "tern_rnr_counter_delta", PROM_DELTA);
	prom_family(f, "tern_rnr_counter_resets", "gauge",
		    "Times the counter went backwards (was reset) since the baseline.");
	prom_samples(f, s, "tern_rnr_counter_resets", PROM_RESETS);
	prom_family(f, "tern_rnr_counter_read_error", "gauge",
		    "1 when the counter could not be read; status is missing, garbage or "
		    "unreadable.");
	prom_samples(f, s, "tern_rnr_counter_read_error", PROM_ERROR);
	prom_family(f, "tern_rnr_port_present", "gauge",
		    "1 while the port is in sysfs, 0 in the one reading after it disappeared.");
	for (size_t i = 0; i < s->n_ports; i++) {
		fputs("tern_rnr_port_present{", f);
		prom_port_labels(f, &s->ports[i]);
		fprintf(f, "} %d\n", s->ports[i].state != TERN_RNR_PORT_GONE);
	}
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void write_json(FILE *f, const tern_rnr_snapshot *s, const tern_rnr_snapshot *prev)
{
	bool have_interval =
		prev && prev->monitor_id == s->monitor_id && s->time_ns > prev->time_ns;

	fprintf(f, "{\"time_s\":%.6f,\"unix_time\":%" PRId64 ",\"interval_s\":",
		(double)s->time_ns / 1e9, s->realtime_s);
	if (have_interval)
		fprintf(f, "%.6f", (double)(s->time_ns - prev->time_ns) / 1e9);
	else
		fputs("null", f);
	fputs(",\"ports\":[", f);
	for (size_t i = 0; i < s->n_ports; i++) {
		const struct tern_rnr_port *p = &s->ports[i];

		fputs(i ? ",{\"device\":" : "{\"device\":", f);
		json_string(f, p->device);
		fprintf(f,
			",\"port\":%" PRIu32 ",\"state\":\"%s\",\"lifespan_ms\":%" PRId64
			",\"counters\":[",
			p->port, tern_rnr_port_state_name(p->state), p->lifespan_ms);
		for (size_t j = 0; j < p->n_counters; j++) {
			const struct tern_rnr_counter *c = &p->counters[j];
			double rate;

			fputs(j ? ",{\"counter\":" : "{\"counter\":", f);
			json_string(f, c->name);
			fputs(",\"raw\":", f);
			json_string(f, c->raw);
			fprintf(f,
				",\"group\":\"%s\",\"canonical\":%s,\"status\":\"%s\",\"value\":",
				group_dir[c->group], c->canonical ? "true" : "false",
				tern_rnr_status_name(c->status));
			if (c->status == TERN_RNR_OK)
				fprintf(f, "%" PRIu64, c->value);
			else
				fputs("null", f);
			fprintf(f,
				",\"delta\":%" PRIu64 ",\"resets\":%" PRIu32 ",\"rate\":", c->delta,
				c->resets);
			if (counter_rate(prev, s, p, c, &rate))
				fprintf(f, "%.3f}", rate);
			else
				fputs("null}", f);
		}
		fputs("]}", f);
	}
	fputs("]}\n", f);
}

/* Wide enough for "counters/" and a NAME_MAX file name. */
#define CELL 300

enum {
	COL_DEVICE,
	COL_PORT,
	COL_COUNTER,
	COL_RAW,
	COL_STATUS,
	COL_VALUE,
	COL_DELTA,
	COL_RATE,
	NCOL
};

static const char *const table_head[NCOL] = {"DEVICE", "PORT",	"COUNTER", "RAW",
					     "STATUS", "VALUE", "DELTA",   "RATE/s"};

/* The cells of one table row; numbers are right-aligned, text left. */
static void table_cells(const tern_rnr_snapshot *s, const tern_rnr_snapshot *prev,
			const struct tern_rnr_port *p, const struct tern_rnr_counter *c,
			char cell[NCOL][CELL])
{
	const char *status = tern_rnr_status_name(c->status);
	double rate;

	if (p->state == TERN_RNR_PORT_GONE)
		status = "gone";
	else if (p->state == TERN_RNR_PORT_NEW && c->status == TERN_RNR_OK)
		status = "new";
	snprintf(cell[COL_DEVICE], CELL, "%s", p->device);
	snprintf(cell[COL_PORT], CELL, "%" PRIu32, p->port);
	snprintf(cell[COL_COUNTER], CELL, "%s%s",
		 c->group == TERN_RNR_IB_COUNTERS ? "counters/" : "", c->name);
	snprintf(cell[COL_RAW], CELL, "%s", c->raw);
	snprintf(cell[COL_STATUS], CELL, "%s", status);
	if (c->status == TERN_RNR_OK)
		snprintf(cell[COL_VALUE], CELL, "%" PRIu64, c->value);
	else
		snprintf(cell[COL_VALUE], CELL, "-");
	snprintf(cell[COL_DELTA], CELL, "%" PRIu64, c->delta);
	if (counter_rate(prev, s, p, c, &rate))
		snprintf(cell[COL_RATE], CELL, "%.2f", rate);
	else
		snprintf(cell[COL_RATE], CELL, "-");
}

static void table_row(FILE *f, char cell[NCOL][CELL], const int width[NCOL])
{
	for (int k = 0; k < NCOL; k++) {
		bool right = k == COL_PORT || k >= COL_VALUE; /* the last one is */
		fprintf(f, right ? "%*s%s" : "%-*s%s", width[k], cell[k],
			k + 1 < NCOL ? "  " : "\n");
	}
}

static void write_table(FILE *f, const tern_rnr_snapshot *s, const tern_rnr_snapshot *prev)
{
	char cell[NCOL][CELL];
	int width[NCOL];
	struct tm tm;
	time_t t = (time_t)s->realtime_s;
	char when[32];

	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (prev && prev->monitor_id == s->monitor_id && s->time_ns > prev->time_ns)
		fprintf(f, "# %s  rates over %.3f s\n", when,
			(double)(s->time_ns - prev->time_ns) / 1e9);
	else
		fprintf(f, "# %s\n", when);
	if (!s->n_ports) {
		fputs("# no RDMA ports\n", f);
		return;
	}
	for (int k = 0; k < NCOL; k++)
		width[k] = (int)strlen(table_head[k]);
	for (size_t i = 0; i < s->n_ports; i++) {
		for (size_t j = 0; j < s->ports[i].n_counters; j++) {
			table_cells(s, prev, &s->ports[i], &s->ports[i].counters[j], cell);
			for (int k = 0; k < NCOL; k++)
				if ((int)strlen(cell[k]) > width[k])
					width[k] = (int)strlen(cell[k]);
		}
	}
	for (int k = 0; k < NCOL; k++)
		snprintf(cell[k], CELL, "%s", table_head[k]);
	table_row(f, cell, width);
	for (size_t i = 0; i < s->n_ports; i++) {
		for (size_t j = 0; j < s->ports[i].n_counters; j++) {
			table_cells(s, prev, &s->ports[i], &s->ports[i].counters[j], cell);
			table_row(f, cell, width);
		}
	}
}

int tern_rnr_snapshot_write(const tern_rnr_snapshot *s, const tern_rnr_snapshot *prev,
			    enum tern_rnr_format fmt, FILE *out)
{
	if (!s || !out)
		return -EINVAL;
	switch (fmt) {
	case TERN_RNR_FORMAT_TABLE:
		write_table(out, s, prev);
		break;
	case TERN_RNR_FORMAT_JSON:
		write_json(out, s, prev);
		break;
	case TERN_RNR_FORMAT_PROM:
		write_prom(out, s);
		break;
	default:
		return -EINVAL;
	}
	return ferror(out) ? -EIO : 0;
}
