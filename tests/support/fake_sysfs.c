// SPDX-License-Identifier: MIT
/* Throwaway sysfs trees for host tests; see fake_sysfs.h. */
#include "fake_sysfs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fake_sysfs_init(struct fake_sysfs *fs)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(fs->root, sizeof(fs->root), "%s/tern-sysfs.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	return mkdtemp(fs->root) ? 0 : -errno;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return flag == FTW_DP ? rmdir(path) : unlink(path);
}

void fake_sysfs_cleanup(struct fake_sysfs *fs)
{
	if (fs->root[0])
		nftw(fs->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	fs->root[0] = '\0';
}

const char *fake_sysfs_path(struct fake_sysfs *fs, const char *rel, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", fs->root, rel);

	if (n < 0 || (size_t)n >= len)
		abort(); /* a test's own paths never get this long */
	return buf;
}

/* mkdir -p for every directory above @path (following existing symlinks). */
static int make_parents(char *path)
{
	for (char *p = strchr(path + 1, '/'); p; p = strchr(p + 1, '/')) {
		*p = '\0';
		if (mkdir(path, 0755) && errno != EEXIST) {
			*p = '/';
			return -errno;
		}
		*p = '/';
	}
	return 0;
}

int fake_sysfs_write(struct fake_sysfs *fs, const char *rel, const char *content)
{
	return fake_sysfs_write_bytes(fs, rel, content, strlen(content));
}

int fake_sysfs_write_bytes(struct fake_sysfs *fs, const char *rel, const void *content, size_t len)
{
	char path[PATH_MAX];
	int fd, rc;

	fake_sysfs_path(fs, rel, path, sizeof(path));
	if ((rc = make_parents(path)))
		return rc;
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	rc = write(fd, content, len) == (ssize_t)len ? 0 : -EIO;
	close(fd);
	return rc;
}

int fake_sysfs_remove(struct fake_sysfs *fs, const char *rel)
{
	char path[PATH_MAX];
	struct stat st;

	fake_sysfs_path(fs, rel, path, sizeof(path));
	if (lstat(path, &st))
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return unlink(path) ? -errno : 0;
	return nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) ? -errno : 0;
}

int fake_sysfs_symlink(struct fake_sysfs *fs, const char *target, const char *rel)
{
	char path[PATH_MAX];
	int rc;

	fake_sysfs_path(fs, rel, path, sizeof(path));
	if ((rc = make_parents(path)))
		return rc;
	return symlink(target, path) ? -errno : 0;
}

int fake_sysfs_set(struct fake_sysfs *fs, const char *dev, unsigned port, const char *group,
		   const char *name, const char *content)
{
	char rel[PATH_MAX];

	if (port)
		snprintf(rel, sizeof(rel), "class/infiniband/%s/ports/%u/%s/%s", dev, port, group,
			 name);
	else
		snprintf(rel, sizeof(rel), "class/infiniband/%s/%s/%s", dev, group, name);
	return fake_sysfs_write(fs, rel, content);
}

int fake_sysfs_set_u64(struct fake_sysfs *fs, const char *dev, unsigned port, const char *group,
		       const char *name, uint64_t value)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%" PRIu64 "\n", value);
	return fake_sysfs_set(fs, dev, port, group, name, buf);
}

/* Make the device's real directory and the class symlink to it. */
static int add_device(struct fake_sysfs *fs, const char *devices_dir, const char *dev)
{
	char rel[PATH_MAX], target[PATH_MAX];
	int rc;

	snprintf(rel, sizeof(rel), "%s/%s/ports/1/.keep", devices_dir, dev);
	if ((rc = fake_sysfs_write(fs, rel, "")))
		return rc;
	snprintf(target, sizeof(target), "../../%s/%s", devices_dir, dev);
	snprintf(rel, sizeof(rel), "class/infiniband/%s", dev);
	return fake_sysfs_symlink(fs, target, rel);
}

static int set_all(struct fake_sysfs *fs, const char *dev, unsigned port, const char *group,
		   const char *const *names, uint64_t value)
{
	int rc = 0;

	for (size_t i = 0; !rc && names[i]; i++)
		rc = fake_sysfs_set_u64(fs, dev, port, group, names[i], value);
	return rc;
}

int fake_sysfs_add_mlx5(struct fake_sysfs *fs, const char *dev, uint64_t base)
{
	static const char *const q[] = {
		"rx_write_requests",
		"rx_read_requests",
		"rx_atomic_requests",
		"out_of_buffer",
		"out_of_sequence",
		"duplicate_request",
		"rnr_nak_retry_err",
		"packet_seq_err",
		"implied_nak_seq_err",
		"local_ack_timeout_err",
		"resp_local_length_error",
		"req_cqe_error",
		NULL,
	};
	static const char *const pma[] = {"port_xmit_data", "port_rcv_data", "symbol_error",
					  "link_downed", NULL};
	static const char *const dev_wide[] = {"rx_icrc_encapsulated", NULL};
	int rc;

	if ((rc = add_device(fs, "devices/pci0000:00/0000:00:03.0/infiniband", dev)) ||
	    (rc = set_all(fs, dev, 1, "hw_counters", q, base)) ||
	    (rc = fake_sysfs_set(fs, dev, 1, "hw_counters", "lifespan", "10\n")) ||
	    (rc = set_all(fs, dev, 1, "counters", pma, base)) ||
	    (rc = set_all(fs, dev, 0, "hw_counters", dev_wide, base)))
		return rc;
	return fake_sysfs_set(fs, dev, 0, "hw_counters", "lifespan", "10\n");
}

int fake_sysfs_add_rxe(struct fake_sysfs *fs, const char *dev, uint64_t base)
{
	/* As listed in the Soft-RoCE VM (Debian 6.1), lifespan aside. */
	static const char *const hw[] = {
		"ack_deferred", "completer_retry_err", "duplicate_request",
		"link_downed",	"out_of_seq_request",  "rcvd_pkts",
		"rcvd_rnr_err", "rcvd_seq_err",	       "rdma_recvs",
		"rdma_sends",	"retry_exceeded_err",  "retry_rnr_exceeded_err",
		"send_err",	"send_rnr_err",	       "sent_pkts",
		NULL,
	};
	int rc;

	if ((rc = add_device(fs, "devices/virtual/infiniband", dev)) ||
	    (rc = set_all(fs, dev, 1, "hw_counters", hw, base)))
		return rc;
	return fake_sysfs_set(fs, dev, 1, "hw_counters", "lifespan", "12\n");
}
