/* SPDX-License-Identifier: MIT */
/*
 * fake_sysfs - throwaway /sys trees for the RNR monitor's host tests.
 *
 * A tree lives in a fresh directory under $TMPDIR and mimics what the kernel
 * shows under class/infiniband: devices as symlinks into devices/, ports
 * with hw_counters/ (driver counters plus the "lifespan" setting) and, for
 * InfiniBand-style devices, counters/ (the PMA PortCounters).
 */
#ifndef TERN_TESTS_FAKE_SYSFS_H
#define TERN_TESTS_FAKE_SYSFS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

struct fake_sysfs {
	char root[PATH_MAX];
};

/* Create an empty tree; 0 or -errno. */
int fake_sysfs_init(struct fake_sysfs *fs);
/* Remove the whole tree. */
void fake_sysfs_cleanup(struct fake_sysfs *fs);

/* Write @content to @rel (relative to the root), creating directories. */
int fake_sysfs_write(struct fake_sysfs *fs, const char *rel, const char *content);
/* The same for @len bytes that may include NULs. */
int fake_sysfs_write_bytes(struct fake_sysfs *fs, const char *rel, const void *buf, size_t len);
/* Remove @rel, a file or a whole directory. */
int fake_sysfs_remove(struct fake_sysfs *fs, const char *rel);
/* Make @rel a symlink to @target (target as the link stores it). */
int fake_sysfs_symlink(struct fake_sysfs *fs, const char *target, const char *rel);
/* Absolute path of @rel in @buf. */
const char *fake_sysfs_path(struct fake_sysfs *fs, const char *rel, char *buf, size_t len);

/* Set a counter file of device @dev, port @port (0: device-wide hw_counters)
 * in @group ("hw_counters" or "counters") to @content, as written. */
int fake_sysfs_set(struct fake_sysfs *fs, const char *dev, unsigned port, const char *group,
		   const char *name, const char *content);
/* The same with a number, written the kernel's way ("%llu\n"). */
int fake_sysfs_set_u64(struct fake_sysfs *fs, const char *dev, unsigned port, const char *group,
		       const char *name, uint64_t value);

/*
 * A ConnectX-like device: class/infiniband/@dev -> a PCI path; port 1 with
 * mlx5's Q counters (out_of_buffer, rnr_nak_retry_err, local_ack_timeout_err,
 * ...) at @base, lifespan 10, the IB PMA counters/ group, and device-wide
 * hw_counters (port 0).
 */
int fake_sysfs_add_mlx5(struct fake_sysfs *fs, const char *dev, uint64_t base);
/* A Soft-RoCE device: class/infiniband/@dev -> devices/virtual/...; port 1
 * with exactly the hw_counters rxe has on Linux 6.1 at @base, lifespan 12,
 * and no counters/ group. */
int fake_sysfs_add_rxe(struct fake_sysfs *fs, const char *dev, uint64_t base);

#endif
