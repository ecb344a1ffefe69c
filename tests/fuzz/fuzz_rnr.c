// SPDX-License-Identifier: MIT
/*
 * fuzz_rnr - the RNR monitor's sysfs reader (src/rnr.c) on a fake sysfs
 * tree the input builds and changes between readings: devices as
 * directories or symlinks (dangling ones too), ports of any name, counter
 * files of any content (numbers past 2^64, blanks, NULs, longer than any
 * number), FIFOs, directories where files belong and files where
 * directories do, files vanishing between readings; and the monitor read,
 * rebaselined, queried by every kind of name, asked for rates on an
 * injected clock that may stand still or run backwards, and printed in
 * every format.
 *
 * The tree lives in a private directory on tmpfs (/dev/shm when there is
 * one), made once per process and emptied after every input.
 */
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tern/rnr.h"
#include "fake_sysfs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct in {
	const uint8_t *p, *end;
};

static uint8_t u8(struct in *in)
{
	return in->p < in->end ? *in->p++ : 0;
}

static uint64_t u64(struct in *in)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)u8(in) << (8 * i);
	return v;
}

static struct fake_sysfs fs;
static FILE *devnull;
static uint64_t now_ns;

static uint64_t clock_fake(void *arg)
{
	(void)arg;
	return now_ns;
}

static const char *const devs[] = {"mlx5_0", "mlx5_1", "rxe0", "irdma0", "d"};
static const char *const ports[] = {"1", "2", "0", "01", "4294967297", "x", "-1", "64"};
static const char *const groups[] = {"hw_counters", "counters"};
static const char *const names[] = {
	"out_of_buffer",
	"rnr_nak_retry_err",
	"req_rnr_retries_exceeded",
	"local_ack_timeout_err",
	"req_transport_retries_exceeded",
	"send_rnr_err",
	"rcvd_rnr_err",
	"retry_rnr_exceeded_err",
	"retry_exceeded_err",
	"lifespan",
	"port_rcv_data",
	"duplicate_request",
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

/* A name from the list, or up to 8 bytes of the input's (no '/' or NUL). */
static void pick(struct in *in, const char *const *list, size_t n, char *out, size_t cap)
{
	uint8_t sel = u8(in);
	size_t len;

	if (sel < 0xf0) {
		snprintf(out, cap, "%s", list[sel % n]);
		return;
	}
	len = sel % 8 + 1;
	for (size_t i = 0; i < len && i + 1 < cap; i++) {
		char c = (char)u8(in);

		out[i] = c == '/' || c == 0 ? '_' : c;
		out[i + 1] = 0;
	}
	/* one path component, inside the tree: never "." or ".." */
	if (strcmp(out, ".") == 0 || strcmp(out, "..") == 0)
		out[0] = '_';
}

/* class/infiniband/<dev>[/ports/<port>][/<group>[/<name>]] */
static void rel_path(struct in *in, char *rel, size_t cap, int depth)
{
	char dev[16], port[16], group[16], name[40];
	uint8_t shape = u8(in);
	int n;

	pick(in, devs, N(devs), dev, sizeof(dev));
	pick(in, ports, N(ports), port, sizeof(port));
	pick(in, groups, N(groups), group, sizeof(group));
	pick(in, names, N(names), name, sizeof(name));
	if (shape & 1) /* a device-wide group (port 0) */
		n = snprintf(rel, cap, "class/infiniband/%s", dev);
	else
		n = snprintf(rel, cap, "class/infiniband/%s/ports/%s", dev, port);
	if (depth > 0)
		n += snprintf(rel + n, cap - (size_t)n, "/%s", group);
	if (depth > 1)
		snprintf(rel + n, cap - (size_t)n, "/%s", name);
}

/* Write a file afresh: whatever was there goes first (opening a FIFO the
 * input left there for writing would wait for a reader forever). */
static void put(const char *rel, const void *buf, size_t len)
{
	fake_sysfs_remove(&fs, rel);
	fake_sysfs_write_bytes(&fs, rel, buf, len);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	if (ftw->level == 0)
		return 0; /* the root stays */
	return flag == FTW_DP ? rmdir(path) : unlink(path);
}

static void cleanup(void)
{
	fake_sysfs_cleanup(&fs);
}

static void setup(void)
{
	const char *tmp = getenv("TMPDIR");
	struct stat st;

	if (devnull)
		return;
	/* tmpfs: the tree is made and emptied for every input */
	if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
		setenv("TMPDIR", "/dev/shm", 1);
	if (fake_sysfs_init(&fs))
		abort();
	atexit(cleanup);
	if (tmp)
		setenv("TMPDIR", tmp, 1);
	else
		unsetenv("TMPDIR");
	devnull = fopen("/dev/null", "w");
	if (!devnull)
		abort();
}

static tern_rnr_monitor *monitor_new(struct in *in)
{
	struct tern_rnr_opts o;
	char pattern[16];
	tern_rnr_monitor *m = NULL;

	tern_rnr_opts_init(&o);
	o.sysfs_root = fs.root;
	o.clock_ns = clock_fake;
	if (u8(in) & 1) {
		pick(in, devs, N(devs), pattern, sizeof(pattern));
		if (pattern[0] && (u8(in) & 1))
			pattern[strlen(pattern) - 1] = '*';
		o.device = pattern;
	}
	if (tern_rnr_monitor_create(&o, &m))
		return NULL;
	return m;
}

static void query(struct in *in, tern_rnr_monitor *m, tern_rnr_snapshot *older,
		  tern_rnr_snapshot *newer)
{
	char dev[16], name[64], raw[40];
	const struct tern_rnr_counter *c;
	uint64_t delta;
	double rate;
	uint8_t how = u8(in);
	uint32_t port = u8(in) % 4;
	const char *d = how & 0x80 ? NULL : dev;

	pick(in, devs, N(devs), dev, sizeof(dev));
	pick(in, names, N(names), raw, sizeof(raw));
	switch ((how >> 4) & 3) {
	case 0:
		snprintf(name, sizeof(name), "%s", raw);
		break;
	case 1:
		snprintf(name, sizeof(name), "hw_counters/%s", raw);
		break;
	case 2:
		snprintf(name, sizeof(name), "counters/%s", raw);
		break;
	default:
		snprintf(name, sizeof(name), "%s",
			 tern_rnr_canonical_name(raw) ? tern_rnr_canonical_name(raw) : raw);
		break;
	}
	switch (how % 4) {
	case 0:
		if (m)
			tern_rnr_monitor_delta(m, d, port, name, &delta);
		break;
	case 1:
		if (newer)
			tern_rnr_snapshot_delta(newer, d, port, name, &delta);
		break;
	case 2:
		if (newer && tern_rnr_snapshot_find(newer, dev, port, name, &c) == 0 &&
		    (!c->name || !c->raw))
			abort();
		break;
	default:
		if (older && newer)
			tern_rnr_rate(older, newer, d, port, name, &rate);
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = {data, data + size};
	tern_rnr_monitor *m = NULL;
	tern_rnr_snapshot *snap[2] = {NULL, NULL};
	char rel[256], target[256], content[96];
	size_t len;
	int ops = 0, readings = 0;

	setup();
	now_ns = 1000000000;
	/* Bounded: every reading walks the whole tree, and the tree is
	 * emptied after each input (both are most of an input's time). */
	while (in.p < in.end && ops++ < 64) {
		uint8_t op = u8(&in);

		switch (op % 12) {
		case 0:
		case 1:
		case 2: /* a counter file of any content */
			rel_path(&in, rel, sizeof(rel), 2);
			len = u8(&in) % sizeof(content);
			for (size_t i = 0; i < len; i++)
				content[i] = (char)u8(&in);
			if (op & 0x80) /* a number, the way the kernel writes it */
				len = (size_t)snprintf(content, sizeof(content), "%llu\n",
						       (unsigned long long)u64(&in));
			put(rel, content, len);
			break;
		case 3: /* something goes away */
			rel_path(&in, rel, sizeof(rel), u8(&in) % 3);
			fake_sysfs_remove(&fs, rel);
			break;
		case 4: /* a device is a symlink, into devices/ or nowhere */
			pick(&in, devs, N(devs), content, 16);
			snprintf(rel, sizeof(rel), "class/infiniband/%s", content);
			snprintf(target, sizeof(target), "../../devices/virtual/infiniband/%s",
				 content);
			if (op & 0x80) {
				char real[300];

				snprintf(real, sizeof(real),
					 "devices/virtual/infiniband/%s/ports/1/.keep", content);
				put(real, "", 0);
			}
			fake_sysfs_remove(&fs, rel);
			fake_sysfs_symlink(&fs, target, rel);
			break;
		case 5: /* a FIFO, or a directory, where a counter file belongs */
		{
			char path[4096];

			rel_path(&in, rel, sizeof(rel), 2);
			put(rel, "", 0); /* its parents */
			fake_sysfs_remove(&fs, rel);
			fake_sysfs_path(&fs, rel, path, sizeof(path));
			if (op & 0x80)
				mkdir(path, 0755);
			else
				mkfifo(path, 0644);
			break;
		}
		case 6: /* a file where a directory belongs */
			rel_path(&in, rel, sizeof(rel), u8(&in) % 2);
			put(rel, "1\n", 2);
			break;
		case 7:
			tern_rnr_monitor_destroy(m);
			m = monitor_new(&in);
			break;
		case 8: /* a reading, printed */
			if (!m || readings++ == 8)
				break;
			tern_rnr_snapshot_free(snap[0]);
			snap[0] = snap[1];
			snap[1] = NULL;
			if (tern_rnr_monitor_read(m, &snap[1]) == 0)
				tern_rnr_snapshot_write(snap[1], u8(&in) & 1 ? snap[0] : NULL,
							(enum tern_rnr_format)(u8(&in) % 3),
							devnull);
			break;
		case 9:
			if (m)
				tern_rnr_monitor_rebaseline(m);
			break;
		case 10:
			query(&in, m, snap[0], snap[1]);
			break;
		default: /* the clock: forward, still, or backwards */
			now_ns += (uint64_t)(int64_t)(int8_t)u8(&in) * 1000000;
			break;
		}
	}
	tern_rnr_snapshot_free(snap[0]);
	tern_rnr_snapshot_free(snap[1]);
	tern_rnr_monitor_destroy(m);
	nftw(fs.root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
