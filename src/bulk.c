// SPDX-License-Identifier: MIT
/*
 * bulk.c - memory for large messages: the user's registrations (a cache,
 * so a region is registered once however often it is named) and a pool of
 * staging buffers for data that lives outside any registration.
 *
 * Registration with a device is the transports' business and lazy: a
 * region carries one struct tern_tmem per transport, where the transport
 * keeps what it made for it (verbs: an ibv_mr per device, at first use).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define STAGE_MIN      (64u << 10)
#define STAGE_IDLE_MAX (512ull << 20) /* idle staging kept for reuse, at most */

static void mr_init(tern_ctx *ctx, struct tern_mr *mr, void *addr, size_t len)
{
	memset(mr, 0, sizeof(*mr));
	mr->ctx = ctx;
	mr->addr = addr;
	mr->len = len;
	mr->refs = 1;
	mr->memfd = -1;
	tern_list_init(&mr->link);
	for (int i = 0; i < TERN_MAX_TRANSPORTS; i++) {
		mr->tm[i].addr = addr;
		mr->tm[i].len = len;
	}
}

/* Let every transport drop what it registered for @mr. */
static void mr_release(struct tern_mr *mr)
{
	tern_ctx *ctx = mr->ctx;

	for (int i = 0; i < ctx->ntp; i++)
		if (mr->tm[i].prov && ctx->tp[i].t && ctx->tp[i].ops->mem_release)
			ctx->tp[i].ops->mem_release(ctx->tp[i].t, &mr->tm[i]);
}

struct tern_mr *tern__mr_find(tern_ctx *ctx, const void *addr, size_t len)
{
	for (struct tern_list *l = ctx->mrs.next; l != &ctx->mrs; l = l->next) {
		struct tern_mr *mr = tern_container_of(l, struct tern_mr, link);
		if (tern__mr_contains(mr, addr, len))
			return mr;
	}
	return NULL;
}

int tern_mem_register(tern_ctx *ctx, void *addr, size_t len, tern_mr **out)
{
	struct tern_mr *mr;

	if (!ctx || !addr || !len || !out)
		return -EINVAL;
	/* The cache: a region already covered needs no second registration. */
	mr = tern__mr_find(ctx, addr, len);
	if (mr) {
		mr->refs++;
		*out = mr;
		return 0;
	}
	mr = malloc(sizeof(*mr));
	if (!mr)
		return -ENOMEM;
	mr_init(ctx, mr, addr, len);
	tern_list_add(&ctx->mrs, &mr->link);
	*out = mr;
	return 0;
}

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U /* Linux 6.3; older kernels refuse it and we retry */
#endif

/* A registration's end: the transports let go, then tern_mem_alloc() memory goes. */
static void mr_free(struct tern_mr *mr)
{
	mr_release(mr);
	tern_list_del(&mr->link);
	if (mr->memfd >= 0) {
		mr->ctx->user_shared_bytes -= mr->len;
		munmap(mr->addr, mr->len);
		close(mr->memfd);
	}
	free(mr);
}

int tern_mem_alloc(tern_ctx *ctx, size_t len, void **addr, tern_mr **out)
{
	struct tern_mr *mr;
	size_t size;
	void *mem;
	int fd, rc;

	if (!ctx || !len || !addr || !out || len > SIZE_MAX - 4095)
		return -EINVAL;
	size = (len + 4095) & ~(size_t)4095;
	if (!(mr = malloc(sizeof(*mr))))
		return -ENOMEM;
	fd = memfd_create("tern-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
	if (fd < 0 && errno == EINVAL)
		fd = memfd_create("tern-mem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		goto fail;
	/*
	 * Backed now, so running out of memory is this call's -ENOMEM rather
	 * than a SIGBUS in whichever process touches a page first.  Sealed
	 * against shrinking: a peer that maps it must never see it truncated
	 * under its copy (SIGBUS); against growing, so its size is a fact.
	 */
	if (ftruncate(fd, (off_t)size) ||
	    (fallocate(fd, 0, 0, (off_t)size) && errno != EOPNOTSUPP) ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
		goto fail;
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED)
		goto fail;
	mr_init(ctx, mr, mem, size);
	mr->memfd = fd;
	ctx->user_shared_bytes += size;
	for (int i = 0; i < TERN_MAX_TRANSPORTS; i++) {
		mr->tm[i].memfd = true;
		mr->tm[i].fd = fd;
	}
	tern_list_add(&ctx->mrs, &mr->link);
	*addr = mem;
	*out = mr;
	return 0;
fail:
	rc = errno == ENOSPC || errno == EFBIG ? -ENOMEM : -errno;
	if (fd >= 0)
		close(fd);
	free(mr);
	return rc;
}

int tern_mem_deregister(tern_mr *mr)
{
	if (!mr || mr->refs <= 0)
		return -EINVAL;
	if (--mr->refs)
		return 0;
	mr_free(mr);
	return 0;
}

/*
 * The size class of @len bytes: the power of two from STAGE_MIN that holds
 * them, or 0 when no size_t does (doubling past the top bit would wrap to 0
 * and never end).
 */
static size_t stage_class(size_t len)
{
	size_t c = STAGE_MIN;

	if (len > (SIZE_MAX >> 1) + 1)
		return 0;
	while (c < len)
		c <<= 1;
	return c;
}

struct tern_stage *tern__stage_get(tern_ctx *ctx, size_t len)
{
	size_t cap = stage_class(len);
	struct tern_stage **pp, *st;
	void *mem;

	if (!cap)
		return NULL;
	/* reuse an idle buffer of this size class: its registrations too */
	for (pp = &ctx->stages; (st = *pp); pp = &st->next) {
		if (st->mr.len == cap) {
			*pp = st->next;
			ctx->stage_idle_bytes -= cap;
			return st;
		}
	}
	st = malloc(sizeof(*st));
	if (!st || posix_memalign(&mem, 4096, cap)) {
		free(st);
		return NULL;
	}
	mr_init(ctx, &st->mr, mem, cap);
	for (int i = 0; i < TERN_MAX_TRANSPORTS; i++)
		st->mr.tm[i].kind = TERN_TMEM_STAGING;
	st->next = NULL;
	ctx->stage_bytes += cap;
	return st;
}

static void stage_free(struct tern_stage *st)
{
	st->mr.ctx->stage_bytes -= st->mr.len;
	mr_release(&st->mr);
	free(st->mr.addr);
	free(st);
}

void tern__stage_put(tern_ctx *ctx, struct tern_stage *st)
{
	if (!st)
		return;
	if (ctx->stage_idle_bytes + st->mr.len > STAGE_IDLE_MAX) {
		stage_free(st);
		return;
	}
	st->next = ctx->stages;
	ctx->stages = st;
	ctx->stage_idle_bytes += st->mr.len;
}

int tern__session_stage_get(tern_session *s, size_t len, struct tern_stage **out)
{
	size_t cap = stage_class(len);

	*out = NULL;
	/* s->staged never exceeds max_staging, so the subtraction cannot wrap */
	if (!cap || cap > s->max_staging - s->staged) {
		s->cnt.staging_refused++;
		return -ENOBUFS;
	}
	*out = tern__stage_get(s->ctx, cap);
	if (!*out)
		return -ENOMEM;
	s->staged += cap;
	return 0;
}

void tern__session_stage_put(tern_session *s, struct tern_stage *st)
{
	if (!st)
		return;
	s->staged -= st->mr.len;
	tern__stage_put(s->ctx, st);
}

void tern__bulk_free_all(tern_ctx *ctx)
{
	while (ctx->stages) {
		struct tern_stage *st = ctx->stages;
		ctx->stages = st->next;
		stage_free(st);
	}
	ctx->stage_idle_bytes = 0;
	/* registrations the user forgot: release them with the context */
	while (!tern_list_empty(&ctx->mrs))
		mr_free(tern_container_of(ctx->mrs.next, struct tern_mr, link));
}

int tern__tp_index(const tern_session *s)
{
	return (int)(s->tp - s->ctx->tp);
}

int tern__bulk_export(tern_session *s, const void *buf, size_t len, int writable,
		      struct tern_bulk_desc *d, struct tern_stage **stage)
{
	const struct tern_transport_ops *ops = s->conn->ops;
	int ti = tern__tp_index(s);
	struct tern_mr *mr;
	int rc;

	*stage = NULL;
	if (!ops->bulk_export)
		return -EMSGSIZE;
	mr = tern__mr_find(s->ctx, buf, len);
	if (mr)
		return ops->bulk_export(s->conn, &mr->tm[ti],
					(size_t)((const char *)buf - (const char *)mr->addr), len,
					writable, d);
	/* Not in a registration: go through staging (the one copy). */
	if ((rc = tern__session_stage_get(s, len, stage)))
		return rc;
	if (!writable) {
		memcpy((*stage)->mr.addr, buf, len);
		s->copy_bytes += len;
	}
	rc = ops->bulk_export(s->conn, &(*stage)->mr.tm[ti], 0, len, writable, d);
	if (rc) {
		tern__session_stage_put(s, *stage);
		*stage = NULL;
	}
	return rc;
}

void tern__bulk_unexport(tern_session *s, const struct tern_bulk_desc *d, unsigned n,
			 unsigned flags)
{
	if (!s->conn || !s->conn->ops->bulk_unexport)
		return;
	for (unsigned i = 0; i < n; i++)
		s->conn->ops->bulk_unexport(s->conn, &d[i], flags);
}
