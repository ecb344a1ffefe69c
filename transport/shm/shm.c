// SPDX-License-Identifier: MIT
/*
 * shm.c - the shm:// provider: two processes on one host, zero copies.
 *
 * A connection is a sealed memfd segment (layout in shm_layout.h) holding,
 * for each direction, the 2N + 3 slots the engine writes its messages into
 * and two single-producer/single-consumer rings: descriptors ("slot i holds
 * len bytes", sender to receiver) and returns ("done with slot i", receiver
 * to sender).  The sender's send slots are the receiver's receive slots, so
 * a message, and in particular an inplace reply, is written once by its
 * author and read in place by its reader.
 *
 * The segment and the eventfd doorbells travel with SCM_RIGHTS over a
 * SOCK_SEQPACKET Unix-domain socket, which also carries the handshake and,
 * once the connection is up, nothing but its own hang-up: that is how each
 * side learns that the other died.
 *
 * The peer is not trusted.  Everything it writes into the segment (indices,
 * descriptors, returned slot ids) is read once into a local and checked
 * against the geometry this side computed itself; a violation closes the
 * connection with TERN_EPEER.  Our own indices live in local memory and are
 * only *published* in the segment, so a peer scribbling over them hurts no
 * one but itself.  The slot bytes themselves are the engine's to check (it
 * decodes the header into a local copy before judging it).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "tern/transport.h"
#include "../common/link.h"
#include "../common/memstat.h"
#include "../common/xtab.h"
#include "shm_layout.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U /* Linux 6.3; older kernels refuse it and we retry */
#endif

/* Defined at the bottom; the engine finds it by name (src/ctx.c). */
extern const struct tern_transport_ops tern_shm_transport;

#define SHM_HANDSHAKE_MS 10000 /* an accepted socket must say HELLO within this */
#define SHM_POLL_BATCH	 32
#define SHM_WAKE_BUDGET	 256 /* messages one doorbell wake-up handles before yielding */
#define SHM_ACCEPT_BATCH 64

#define SHM_REQUIRED_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

#define SHM_BULK_OPS   64   /* bulk transfers one connection has in flight, at most */
#define SHM_SOCK_BATCH 64   /* socket messages one wake-up handles */
#define SHM_LINGER_MS  1000 /* how long a close waits for a peer inside a copy */

/* slot_state bits, per slot index */
#define SLOT_SENT 0x1 /* our send slot i is with the peer (not yet returned) */
#define SLOT_HELD 0x2 /* the peer's slot i is with our engine (not yet returned) */

/* ---- objects ------------------------------------------------------------------ */

struct shm_tctx {
	tern_ctx *ctx;
	uv_loop_t *loop;
	const struct tern_transport_events *ev;
	enum tern_transport_mode mode;
	/*
	 * Connections that are up, walked by poll().  A connection leaves it
	 * only when its memory is freed (a uv close callback, never inside
	 * poll), so upcalls that close connections cannot break the walk.
	 */
	struct tern_link up;
	int doorbells_owed; /* up connections with a deferred doorbell check */
	int in_poll;	    /* inside our own poll loop: returns go out on the way out */
	int open_handles;
	struct tern_mem_stats mem; /* tern_ctx_mem(): counted where taken and given back */
	struct tern_link maps;	   /* segments mapped (struct tern_memmap), for residency */
};

struct slistener {
	struct tern_tlistener base;
	struct shm_tctx *t;
	int fd;
	uv_poll_t poll;
	struct tern_link pending; /* accepted sockets that have not said HELLO yet */
	char name[SHM_NAME_MAX + 1];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* "" for an abstract name */
};

enum sstate {
	SC_CONNECTING, /* client: HELLO sent, waiting for ACCEPT or REFUSE */
	SC_HELLO,      /* server: socket accepted, waiting for HELLO */
	SC_ACCEPTED,   /* server: ACCEPT sent, waiting for READY */
	SC_UP,
	SC_CLOSING, /* handles closing; freed (and closed() called) when they are */
};

/* An area we lent the peer (see BULK_MAP in shm_layout.h). */
struct shm_lent {
	struct tern_tmem *m; /* a tern_mem_alloc() region, or NULL: staging */
	uint8_t *map;	     /* staging: our mapping */
	uint64_t size;	     /* staging: its size */
	bool used;	     /* the id is the peer's name for this area */
	bool busy;	     /* staging: a transfer is in it until FREE or FILLED */
	struct shm_bulk req; /* ...that one's request, checked when it came */
};

/* An area the peer lent us, mapped. */
struct shm_area {
	uint8_t *map;
	uint64_t size;
};

struct sconn {
	struct tern_conn base;
	struct shm_tctx *t;
	struct slistener *l;   /* server: until the engine has seen the HELLO */
	struct tern_link link; /* t->up when up, l->pending before HELLO */
	enum sstate state;
	bool server;
	int pending_err; /* a failure the timer reports (connect() cannot upcall) */
	int sock;
	int bell_in;  /* our eventfd: the peer rings it to wake us */
	int bell_out; /* the peer's */
	uv_poll_t sock_poll;
	uv_poll_t bell_poll;
	uv_timer_t timer; /* handshake deadline */
	bool sock_poll_init, bell_poll_init, bell_polling;
	int handles; /* uv handles not yet closed */
	uint8_t hs[TERN_HANDSHAKE_MAX];
	uint32_t hs_len;

	/* The segment, and this side's view of it. */
	uint8_t *seg;
	struct tern_memmap segmap; /* seg, counted in t->mem.slots_shared */
	int segfd;		   /* its memfd, kept for tern_ctx_mem() (its allocated blocks) */
	size_t heap;		   /* our own bytes for this connection, in t->mem.conn_heap */
	struct shm_geom g;
	uint8_t *slot_state; /* SLOT_* bits, nslots entries */

	/* Sending: direction `server` (0: client->server). */
	struct shm_desc *tx_desc;
	_Atomic uint32_t *tx_tail_w; /* our tail, published */
	_Atomic uint32_t *tx_head_r; /* the peer's head */
	uint32_t tx_tail;	     /* descriptors we wrote */
	uint32_t tx_head_seen;	     /* the peer's head when we last looked */
	uint32_t *rets;		     /* the peer's slots the engine gave back, not yet told */
	uint32_t nrets;
	bool rets_waited; /* ...and they have waited through a whole poll() */

	/* Receiving: the other direction. */
	struct shm_desc *rx_desc;
	_Atomic uint32_t *rx_tail_r; /* the peer's tail */
	_Atomic uint32_t *rx_head_w; /* our head, published */
	uint32_t rx_head;	     /* descriptors we consumed */
	uint8_t *rx_slots;

	/* Doorbells: see conn_arm(). */
	_Atomic uint32_t *wake_me;
	_Atomic uint32_t *wake_peer;
	uint32_t wake_seq;  /* our epoch: odd while we may sleep */
	uint32_t peer_rung; /* the peer epoch we last rang for */
	bool doorbell_owed; /* published in polled mode; the check waits for poll() */

	/* Large messages: see shm_layout.h. */
	pid_t peer_pid;	     /* from SO_PEERCRED: whose memory process_vm_* reaches */
	struct tern_xtab xt; /* what we exported to the peer */
	struct shm_bop {     /* transfers we asked the peer for */
		uint64_t cookie;
		uint32_t gen; /* in the token: a stale or forged DONE misses */
		bool busy;
		bool split;	     /* the exporter split it: our half is done or asked for */
		bool mapped;	     /* it answered with a BULK_MAP (at most one per transfer) */
		uint8_t dones;	     /* DONEs still owed */
		int status;	     /* the first failure */
		struct shm_bulk req; /* what we asked */
	} bops[SHM_BULK_OPS];
	uint32_t bops_live; /* how many are busy */
	bool split_given;   /* the peer copied half of a transfer of our exports */
	bool lingering;	    /* closing, waiting for the peer to finish copying */

	/* Without ptrace: memfd areas (shm_layout.h, BULK_MAP). */
	enum { VM_UNKNOWN, VM_OK, VM_DENIED } vm; /* may we process_vm_* the peer? */
	struct shm_lent *lent;			  /* areas we lent the peer, by id */
	struct shm_area *areas;			  /* areas the peer lent us, by id */
	uint64_t stage_idle;			  /* bytes of idle staging we keep lent */
};

#define T(x) ((struct shm_tctx *)(x))
#define C(x) ((struct sconn *)(x))

static int conn_poll(struct sconn *c, int budget);

/* ---- addresses --------------------------------------------------------------------- */

static const char *shm_dir(void)
{
	const char *d = getenv("TERN_SHM_DIR");
	return d && *d ? d : NULL;
}

/*
 * shm://name is the abstract socket "\0tern.shm.<name>": no file to clean
 * up, gone with its listener, and guarded by the peer-uid check below
 * since the abstract namespace has no permissions.  With TERN_SHM_DIR=<dir>
 * it is <dir>/<name>.sock instead, in a 0700 directory, mode 0600.
 */
static int shm_addr(const char *name, struct sockaddr_un *sa, socklen_t *len, char *path,
		    size_t path_len)
{
	const char *dir = shm_dir();
	size_t n = strlen(name);
	int k;

	if (n == 0 || n > SHM_NAME_MAX)
		return -ENAMETOOLONG;
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (dir) {
		k = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/%s.sock", dir, name);
		if (k < 0 || (size_t)k >= sizeof(sa->sun_path) || (size_t)k >= path_len)
			return -ENAMETOOLONG;
		memcpy(path, sa->sun_path, (size_t)k + 1);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)k + 1);
	} else {
		k = snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "%s%s",
			     SHM_ABSTRACT_PREFIX, name);
		if (k < 0 || (size_t)k >= sizeof(sa->sun_path) - 1)
			return -ENAMETOOLONG;
		path[0] = 0;
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)k);
	}
	return 0;
}

/* The socket directory must be ours alone: a directory, not a symlink, 0700. */
static int dir_prepare(const char *dir)
{
	struct stat st;

	if (mkdir(dir, 0700) && errno != EEXIST)
		return -errno;
	if (lstat(dir, &st))
		return -errno;
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077))
		return -EACCES;
	return 0;
}

/*
 * Both ends check who is on the other side.  A process of another user
 * could reach an abstract name, or squat one before the real server
 * starts; only our own uid (or root, who could read our memory anyway) is
 * let in.
 */
static int peer_check(int fd, pid_t *pid)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len))
		return -errno;
	if (pid)
		*pid = cr.pid;
	return cr.uid == geteuid() || cr.uid == 0 ? 0 : -EACCES;
}

/* ---- socket messages ----------------------------------------------------------------- */

#define SHM_MAX_FDS 2

static int msg_send(int fd, const struct shm_msg *m, const int *fds, int nfds)
{
	union {
		char buf[CMSG_SPACE(SHM_MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = (void *)m, .iov_len = sizeof(*m)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	ssize_t n;

	if (nfds) {
		struct cmsghdr *cm;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, (size_t)nfds * sizeof(int));
	}
	n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n < 0)
		return -errno;
	return n == (ssize_t)sizeof(*m) ? 0 : -EIO;
}

static void close_fds(int *fds, int *nfds)
{
	for (int i = 0; i < *nfds; i++)
		close(fds[i]);
	*nfds = 0;
}

/*
 * Receive one message with at most @maxfds descriptors.  A message that is
 * not exactly one struct shm_msg, or that brings more descriptors than
 * expected or anything else in its control data, is refused and whatever
 * it brought is closed.  (The kernel itself closes descriptors that did not
 * fit the control buffer, and flags MSG_CTRUNC.)
 *
 * Return: the message size, 0 on hang-up, -EAGAIN when there is nothing,
 * -EBADMSG for a malformed message, or another -errno.
 */
static ssize_t msg_recv(int fd, struct shm_msg *m, int *fds, int maxfds, int *nfds)
{
	union {
		char buf[CMSG_SPACE(SHM_MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = {.iov_base = m, .iov_len = sizeof(*m)};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u)};
	bool bad = false;
	ssize_t n;

	*nfds = 0;
	memset(m, 0, sizeof(*m));
	n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
			size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (size_t i = 0; i < k; i++) {
				int f;

				memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (*nfds < maxfds) {
					fds[(*nfds)++] = f;
				} else {
					close(f);
					bad = true;
				}
			}
		} else {
			bad = true;
		}
	}
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
		bad = true;
	if (n > 0 && (bad || n != (ssize_t)sizeof(*m) || m->magic != SHM_MSG_MAGIC ||
		      m->version != SHM_PROTO_VERSION || m->hs_len > TERN_HANDSHAKE_MAX)) {
		close_fds(fds, nfds);
		return -EBADMSG;
	}
	if (n == 0)
		close_fds(fds, nfds);
	return n;
}

static void msg_init(struct shm_msg *m, uint16_t type, int32_t status, const struct shm_geom *g,
		     const void *hs, size_t hs_len)
{
	memset(m, 0, sizeof(*m));
	m->magic = SHM_MSG_MAGIC;
	m->version = SHM_PROTO_VERSION;
	m->type = type;
	m->status = status;
	if (g) {
		m->slot_size = g->slot_size;
		m->nslots = g->nslots;
		m->seg_size = g->size;
	}
	if (hs_len) {
		memcpy(m->hs, hs, hs_len);
		m->hs_len = (uint32_t)hs_len;
	}
}

/* Best effort: the peer may already be gone. */
static void send_refusal(int fd, int status, const void *hs, size_t hs_len)
{
	struct shm_msg m;

	msg_init(&m, SHM_MSG_REFUSE, status, NULL, hs, hs_len);
	(void)msg_send(fd, &m, NULL, 0);
}

/* ---- descriptors the peer hands us --------------------------------------------------- */

static bool fd_is_eventfd(int fd)
{
	char p[40], link[32];
	ssize_t n;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	n = readlink(p, link, sizeof(link) - 1);
	if (n < 0)
		return false;
	link[n] = 0;
	return strcmp(link, "anon_inode:[eventfd]") == 0;
}

/*
 * The server's segment, checked before it is mapped.  The seals are what
 * make mapping a peer's memory safe: with F_SEAL_SHRINK nobody can truncate
 * it under us (every access past the new end would be SIGBUS); F_SEAL_SEAL
 * means that stays so.  Plain shmem only: hugetlbfs pages can run out at
 * fault time, which is SIGBUS again.
 */
static int memfd_check(int fd, uint64_t *size)
{
	struct statfs sf;
	struct stat st;
	int seals = fcntl(fd, F_GET_SEALS);

	if (seals < 0)
		return TERN_EPEER; /* not a memfd */
	if ((seals & SHM_REQUIRED_SEALS) != SHM_REQUIRED_SEALS)
		return TERN_EPEER; /* its size could still change */
	if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))
		return TERN_EPEER; /* we could not write our half */
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size <= 0)
		return TERN_EPEER;
	if (fstatfs(fd, &sf) || sf.f_type != TMPFS_MAGIC)
		return TERN_EPEER;
	*size = (uint64_t)st.st_size;
	return 0;
}

static int segment_check(int fd, size_t size)
{
	uint64_t have;
	int rc = memfd_check(fd, &have);

	return rc ? rc : have == size ? 0 : TERN_EPEER;
}

/* ---- connection objects ----------------------------------------------------------------- */

static void bulk_fail_all(struct sconn *c, int err);
static void areas_free(struct sconn *c);
static void lent_retire(struct sconn *c, uint32_t id, bool tell);

/* A segment the engine kept after its connection (keep_rx). */
struct kept_seg {
	void *seg;
	size_t size;
	int fd;
	struct tern_memmap map; /* still counted until the engine lets go */
};

static void kept_seg_release(void *arg)
{
	struct kept_seg *k = arg;

	tern_memmap_del(&k->map);
	munmap(k->seg, k->size);
	close(k->fd);
	free(k);
}

/* Hand the segment to the engine if a request still points into it. */
static bool seg_keep(struct sconn *c)
{
	struct kept_seg *k;

	if (!(k = malloc(sizeof(*k))))
		return false;
	k->seg = c->seg;
	k->size = c->g.size;
	k->fd = c->segfd;
	k->map.counter = NULL;
	if (c->t->ev->keep_rx(&c->base, kept_seg_release, k)) {
		tern_memmap_del(&c->segmap);
		tern_memmap_add(&c->t->maps, &k->map, k->seg, k->size, k->fd,
				&c->t->mem.slots_shared);
		c->segfd = -1;
		return true;
	}
	free(k);
	return false;
}

static void conn_free(struct sconn *c)
{
	struct shm_tctx *t = c->t;

	bulk_fail_all(c, -ECONNRESET);
	areas_free(c);
	tern_xtab_free(&c->xt);
	tern_link_del(&c->link);
	if (c->sock >= 0)
		close(c->sock);
	if (c->bell_in >= 0)
		close(c->bell_in);
	if (c->bell_out >= 0)
		close(c->bell_out);
	if (c->seg && !seg_keep(c)) {
		tern_memmap_del(&c->segmap);
		munmap(c->seg, c->g.size);
	}
	if (c->segfd >= 0)
		close(c->segfd);
	free(c->slot_state);
	free(c->rets);
	t->mem.conn_heap -= c->heap;
	c->base.send_base = NULL;
	t->ev->closed(&c->base);
	free(c);
}

static void conn_handle_closed(uv_handle_t *h)
{
	struct sconn *c = h->data;

	c->t->open_handles--;
	if (--c->handles == 0)
		conn_free(c);
}

/*
 * Tear down.  The peer learns at once (shutdown); the memory goes when the
 * last uv handle has closed, which is never inside one of our own loops,
 * so this is safe from any upcall.  Idempotent.
 */
static void conn_finish_close(struct sconn *c)
{
	c->lingering = false;
	if (c->sock >= 0)
		shutdown(c->sock, SHUT_RDWR);
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
	if (c->sock_poll_init)
		uv_close((uv_handle_t *)&c->sock_poll, conn_handle_closed);
	if (c->bell_poll_init)
		uv_close((uv_handle_t *)&c->bell_poll, conn_handle_closed);
}

static void linger_timer_cb(uv_timer_t *tm)
{
	struct sconn *c = tm->data;

	if (c->lingering)
		conn_finish_close(c); /* a peer stuck that long: give up on it */
}

/*
 * The peer may be inside a process_vm copy into our memory: for a transfer
 * we asked for (the engine reuses that memory once we report the transfer
 * failed, in conn_free), or into or out of something we exported, when it
 * copies its half of a split transfer.  The engine reuses an export's
 * memory once closed() says the connection is gone, but nothing tells us
 * when the peer's half is over (the call's reply does, and a failed
 * session's calls get none): so once we have split a transfer, or while
 * exports are live (a timed-out call's), or transfers are pending, we
 * only stop sending and wait for the peer to hang up too, which it does
 * once its copy is over (it is single-threaded: it sees our hang-up
 * between copies), or for SHM_LINGER_MS.  A dead peer's hang-up is there
 * at once.
 */
static void conn_close(struct sconn *c)
{
	if (c->state == SC_CLOSING)
		return;
	c->state = SC_CLOSING;
	if (c->l) {
		tern_link_del(&c->link);
		c->l = NULL;
	}
	if ((c->bops_live || c->xt.live || c->split_given) && c->sock >= 0 && c->sock_poll_init) {
		c->lingering = true;
		shutdown(c->sock, SHUT_WR);
		uv_timer_stop(&c->timer);
		uv_timer_start(&c->timer, linger_timer_cb, SHM_LINGER_MS, 0);
		return;
	}
	conn_finish_close(c);
}

/* Closing with transfers pending: read until the peer hangs up. */
static void linger_on_socket(struct sconn *c)
{
	for (;;) {
		struct shm_msg m;
		int fds[SHM_MAX_FDS], nfds;
		ssize_t n = msg_recv(c->sock, &m, fds, 0, &nfds);

		if (n == -EAGAIN)
			return;
		if (n <= 0 && n != -EBADMSG) {
			conn_finish_close(c); /* its end is closed: no copy is running */
			return;
		}
	}
}

/* Failed, at any stage: the engine sorts out what that means (tern/transport.h). */
static void conn_failed(struct sconn *c, int err, const char *why)
{
	c->t->ev->error(&c->base, err, why);
	conn_close(c);
}

static void conn_timer_cb(uv_timer_t *tm)
{
	struct sconn *c = tm->data;

	if (c->state < SC_UP)
		conn_failed(c, c->pending_err ? c->pending_err : -ETIMEDOUT, NULL);
}

static void sock_cb(uv_poll_t *h, int status, int events);
static void bell_cb(uv_poll_t *h, int status, int events);

/* TERN_SHM_NO_PTRACE=1: never process_vm_*; every large transfer goes through memfd areas. */
static bool no_ptrace(void)
{
	const char *v = getenv("TERN_SHM_NO_PTRACE");

	return v && *v && strcmp(v, "0") != 0;
}

static struct sconn *conn_new(struct shm_tctx *t, bool server)
{
	struct sconn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->t = t;
	c->server = server;
	c->heap = sizeof(*c);
	t->mem.conn_heap += c->heap;
	c->sock = c->bell_in = c->bell_out = c->segfd = -1;
	c->vm = no_ptrace() ? VM_DENIED : VM_UNKNOWN;
	c->base.ops = &tern_shm_transport;
	c->base.tctx = (struct tern_tctx *)t;
	tern_link_init(&c->link);
	uv_timer_init(t->loop, &c->timer);
	c->timer.data = c;
	c->handles = 1;
	t->open_handles++;
	c->bell_in = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->bell_in < 0) {
		conn_close(c);
		return NULL;
	}
	uv_poll_init(t->loop, &c->bell_poll, c->bell_in);
	c->bell_poll.data = c;
	c->bell_poll_init = true;
	c->handles++;
	t->open_handles++;
	return c;
}

static void conn_watch_socket(struct sconn *c, int fd)
{
	c->sock = fd;
	uv_poll_init(c->t->loop, &c->sock_poll, fd);
	c->sock_poll.data = c;
	c->sock_poll_init = true;
	c->handles++;
	c->t->open_handles++;
	/* Readable covers both the next handshake message and the hang-up. */
	uv_poll_start(&c->sock_poll, UV_READABLE, sock_cb);
}

/* Point this side's view at the mapped segment.  Return: 0 or -ENOMEM. */
static int conn_map_views(struct sconn *c)
{
	int tx = c->server ? 1 : 0, rx = 1 - tx;
	uint8_t *seg = c->seg;
	const struct shm_geom *g = &c->g;

	c->slot_state = calloc(g->nslots, 1);
	c->rets = calloc(g->nslots, sizeof(*c->rets)); /* a slot is held once at a time */
	if (!c->slot_state || !c->rets)
		return -ENOMEM;
	c->heap += (size_t)g->nslots * (1 + sizeof(*c->rets));
	c->t->mem.conn_heap += (size_t)g->nslots * (1 + sizeof(*c->rets));
	c->tx_desc = shm_descs(seg, g, tx);
	c->tx_tail_w = shm_dir_word(seg, g, tx, SHM_TAIL);
	c->tx_head_r = shm_dir_word(seg, g, tx, SHM_HEAD);
	c->rx_desc = shm_descs(seg, g, rx);
	c->rx_tail_r = shm_dir_word(seg, g, rx, SHM_TAIL);
	c->rx_head_w = shm_dir_word(seg, g, rx, SHM_HEAD);
	c->rx_slots = shm_slots(seg, g, rx);
	c->wake_me = &shm_ctl(seg, g, SHM_WAKE + tx)->v;
	c->wake_peer = &shm_ctl(seg, g, SHM_WAKE + rx)->v;
	c->base.send_base = shm_slots(seg, g, tx);
	c->base.send_region = (size_t)g->nslots * g->slot_size;
	c->base.slot_size = g->slot_size;
	c->base.send_slots = g->nslots;
	c->base.recv_slots = g->nslots;
	return 0;
}

/* ---- the rings ------------------------------------------------------------------------------ */

/*
 * The doorbell handshake, for event mode.
 *
 * The lost wake-up: a receiver checks its rings, finds nothing, and goes to
 * sleep on its eventfd just as the sender publishes a message and, seeing
 * the receiver awake, does not ring.  It is closed the way Dekker's
 * algorithm closes it:
 *
 *   receiver (conn_arm):  wake = odd  (seq_cst store)
 *                         seq_cst fence
 *                         check the rings, then sleep in epoll
 *   sender (post_*):      tail = t    (seq_cst store)
 *                         w = wake    (seq_cst load); odd: ring
 *                         (in polled mode: a release store, and a seq_cst
 *                         fence before the load, in the next poll(); see
 *                         publish())
 *
 * All of these are in the one total order of seq_cst operations.  If the
 * sender's tail store comes first, the receiver's check, after its fence,
 * sees the new tail; otherwise the receiver's wake store comes first and
 * the sender's load sees the odd epoch and rings.  Both may happen: the
 * wake-up is then merely spurious.
 *
 * The epoch grows every time the receiver re-arms, and a sender rings at
 * most once per epoch, so a sleeping peer costs one eventfd write, not one
 * per message; an awake one (even epoch) costs none.  The wake words are
 * advisory: a peer that writes nonsense into its own only makes us ring it
 * more often, and one that writes into ours only loses its wake-ups.
 */
static void ring_peer(struct sconn *c)
{
	/* seq_cst: ordered after the tail store the caller just made (or,
	 * from settle_doorbells(), after its fence). */
	uint32_t w = atomic_load_explicit(c->wake_peer, memory_order_seq_cst);

	if ((w & 1) && w != c->peer_rung) {
		c->peer_rung = w;
		/* The one syscall of the path, and only toward a sleeper. */
		(void)!eventfd_write(c->bell_out, 1);
	}
}

/*
 * Publish one of our indices and make sure a sleeping peer hears of it.
 *
 * Event mode: a seq_cst store, then ring_peer() at once, as above.
 *
 * Polled mode: we are spinning, so the check can wait for our next poll():
 * a release store now (a plain mov on x86, which keeps the store buffer
 * flowing: the slot bytes, a return and a descriptor of one reply drain
 * together instead of stalling on a locked instruction between them), and
 * settle_doorbells() issues one seq_cst fence for every index published
 * since, then looks at the peers' wake words.  The fence plays the role of
 * the seq_cst store in the handshake: with fences on both sides this is
 * the store-buffering pattern, whose "neither sees the other" outcome C11
 * forbids.  set_mode() settles before it leaves polled mode.
 */
static void publish(struct sconn *c, _Atomic uint32_t *word, uint32_t v)
{
	if (c->t->mode == TERN_TRANSPORT_EVENTS) {
		atomic_store_explicit(word, v, memory_order_seq_cst);
		ring_peer(c);
		return;
	}
	/* Release: whatever the index announces is visible before it. */
	atomic_store_explicit(word, v, memory_order_release);
	if (!c->doorbell_owed) {
		c->doorbell_owed = true;
		c->t->doorbells_owed++;
	}
}

static void settle_doorbells(struct shm_tctx *t)
{
	if (!t->doorbells_owed)
		return;
	/* Orders every release store publish() made before the loads below. */
	atomic_thread_fence(memory_order_seq_cst);
	for (struct tern_link *l = t->up.next; l != &t->up; l = l->next) {
		struct sconn *c = tern_link_entry(l, struct sconn, link);

		if (!c->doorbell_owed)
			continue;
		c->doorbell_owed = false;
		if (c->state == SC_UP)
			ring_peer(c);
	}
	t->doorbells_owed = 0;
}

/*
 * Write one descriptor at our tail; publish() makes it visible.  Return: 0,
 * or TERN_EPEER when the peer claims the ring is full, which credits make
 * impossible for an honest one.
 */
static int desc_put(struct sconn *c, uint32_t slot, uint32_t len, uint32_t ret)
{
	uint32_t pos = c->tx_tail;
	struct shm_desc *d;

	if (pos - c->tx_head_seen >= c->g.ring_size) {
		/*
		 * The ring looks full: see how far the receiver really got.
		 * Acquire pairs with its release of head in poll_ring(): its
		 * reads of the entries we are about to reuse are done.
		 */
		uint32_t head = atomic_load_explicit(c->tx_head_r, memory_order_acquire);

		/* At most 2 * nslots <= ring_size descriptors are ever unread
		 * (shm_layout.h); a head that says otherwise is a lie. */
		if (pos - head >= c->g.ring_size)
			return TERN_EPEER;
		c->tx_head_seen = head;
	}
	d = &c->tx_desc[pos & (c->g.ring_size - 1)];
	atomic_store_explicit(&d->slot, slot, memory_order_relaxed);
	atomic_store_explicit(&d->len, len, memory_order_relaxed);
	atomic_store_explicit(&d->ret, ret, memory_order_relaxed);
	c->tx_tail = pos + 1;
	return 0;
}

/* Tell the peer about every slot of its we are done with, in descriptors
 * of their own: there was no message to carry them. */
static int flush_rets(struct sconn *c)
{
	int rc = 0;

	if (!c->nrets || c->state != SC_UP)
		return 0;
	while (c->nrets && !(rc = desc_put(c, SHM_NONE, 0, c->rets[c->nrets - 1])))
		c->nrets--;
	c->rets_waited = false;
	/* Release: the engine's reads of those slots happen before the
	 * peer sees them returned and lets its engine rewrite them. */
	publish(c, c->tx_tail_w, c->tx_tail);
	return rc;
}

/* Hand the engine's send slot @slot of @len bytes to the peer. */
static int shm_post_send(struct tern_conn *bc, uint32_t slot, uint32_t len, uint32_t flags)
{
	struct sconn *c = C(bc);
	uint32_t ret = SHM_NONE;
	int rc;

	/* every send_done comes with the peer's return of the slot: CONFIRM is implied */
	(void)flags;

	if (c->state != SC_UP)
		return -ENOTCONN;
	if (slot >= c->g.nslots || len > c->g.slot_size || (c->slot_state[slot] & SLOT_SENT))
		return -EINVAL;
	/* A slot the engine gave back rides along for free. */
	if (c->nrets)
		ret = c->rets[--c->nrets];
	if ((rc = desc_put(c, slot, len, ret)))
		return rc;
	if (!c->nrets)
		c->rets_waited = false;
	c->slot_state[slot] |= SLOT_SENT;
	/* The slot's bytes (the engine wrote them), the descriptor, and the
	 * reads of any slot it returns are ordered before the tail that
	 * announces them; see publish(). */
	publish(c, c->tx_tail_w, c->tx_tail);
	return 0;
}

/* The engine is done with the peer's slot @token: give it back. */
static int shm_post_recv(struct tern_conn *bc, uint32_t token)
{
	struct sconn *c = C(bc);

	if (c->state != SC_UP)
		return -ENOTCONN;
	if (token >= c->g.nslots || !(c->slot_state[token] & SLOT_HELD))
		return -EINVAL;
	c->slot_state[token] &= ~SLOT_HELD;
	c->rets[c->nrets++] = token; /* at most nslots: each was held once */
	/*
	 * It goes out with our next message (a reply usually follows at
	 * once), or alone: on the way out of the current poll in event mode,
	 * after a poll without one in polled mode (see shm_poll()), or now,
	 * in event mode outside any poll, since nothing else will come by.
	 */
	if (c->t->mode == TERN_TRANSPORT_EVENTS && !c->t->in_poll)
		return flush_rets(c);
	return 0;
}

static unsigned min3(unsigned a, unsigned b, unsigned c)
{
	unsigned m = a < b ? a : b;
	return m < c ? m : c;
}

/* What a descriptor the peer wrote may not be (desc_check()). */
enum desc_fault {
	DESC_OK,
	DESC_RET,   /* returns a slot of ours it does not hold */
	DESC_EMPTY, /* neither a message nor a return */
	DESC_SLOT,  /* a message in a slot past the ring's */
	DESC_LEN,   /* a message longer than a slot */
	DESC_HELD,  /* a message in a slot we still hold */
};

/*
 * Judge a descriptor the peer wrote (read once by the caller): what it
 * returns is a slot of ours it holds, what it carries lies in a slot of
 * its own that we do not hold, and it does one or the other at least.
 */
static inline enum desc_fault desc_check(const struct sconn *c, uint32_t slot, uint32_t len,
					 uint32_t ret)
{
	if (ret != SHM_NONE && (ret >= c->g.nslots || !(c->slot_state[ret] & SLOT_SENT)))
		return DESC_RET;
	if (slot == SHM_NONE)
		return len || ret == SHM_NONE ? DESC_EMPTY : DESC_OK;
	if (slot >= c->g.nslots)
		return DESC_SLOT;
	if (len > c->g.slot_size)
		return DESC_LEN;
	return (c->slot_state[slot] & SLOT_HELD) ? DESC_HELD : DESC_OK;
}

/* Fail the connection over a descriptor desc_check() refused.  Out of
 * line: the poll that judges every descriptor stays lean. */
static __attribute__((cold, noinline)) void desc_failed(struct sconn *c, enum desc_fault f,
							uint32_t slot, uint32_t len, uint32_t ret)
{
	char why[96];

	switch (f) {
	case DESC_RET:
		snprintf(why, sizeof(why), "shm: the peer returned slot %u, which it did not hold",
			 ret);
		break;
	case DESC_EMPTY:
		snprintf(why, sizeof(why), "shm: a descriptor with no message and no return");
		break;
	case DESC_SLOT:
		snprintf(why, sizeof(why), "shm: message in slot %u of %u", slot, c->g.nslots);
		break;
	case DESC_LEN:
		snprintf(why, sizeof(why), "shm: message of %u bytes in a %u-byte slot", len,
			 c->g.slot_size);
		break;
	default:
		snprintf(why, sizeof(why), "shm: message in slot %u, which we still hold", slot);
		break;
	}
	conn_failed(c, TERN_EPEER, why);
}

/* The peer's tail moved by more than it can: out of line, as above. */
static __attribute__((cold, noinline)) void tail_failed(struct sconn *c, uint32_t avail)
{
	char why[96];

	snprintf(why, sizeof(why), "shm: the peer's index moved by %u (%u slots)", avail,
		 c->g.nslots);
	conn_failed(c, TERN_EPEER, why);
}

/* New descriptors from the peer: returned slots, and messages handed to
 * the engine where they lie.  Return: how many upcalls were made. */
static int poll_ring(struct sconn *c, int budget)
{
	struct {
		uint32_t slot, len, ret;
	} e[SHM_POLL_BATCH];
	/*
	 * Acquire pairs with the sender's release (or seq_cst) store of tail
	 * in publish(): the descriptors, the slot bytes they announce, and the
	 * sender's last reads of the slots they return happen before.
	 */
	uint32_t tail = atomic_load_explicit(c->rx_tail_r, memory_order_acquire);
	uint32_t avail = tail - c->rx_head, n;
	int done = 0;

	if (avail == 0)
		return 0;
	if (avail > 2 * c->g.nslots) {
		tail_failed(c, avail);
		return 0;
	}
	n = min3(avail, (unsigned)budget, SHM_POLL_BATCH);
	for (uint32_t i = 0; i < n; i++) {
		const struct shm_desc *d = &c->rx_desc[(c->rx_head + i) & (c->g.ring_size - 1)];
		/* Read once: the peer may rewrite the entry while we judge it. */
		uint32_t slot = atomic_load_explicit(&d->slot, memory_order_relaxed);
		uint32_t len = atomic_load_explicit(&d->len, memory_order_relaxed);
		uint32_t ret = atomic_load_explicit(&d->ret, memory_order_relaxed);

		enum desc_fault f = desc_check(c, slot, len, ret);

		if (f != DESC_OK) {
			desc_failed(c, f, slot, len, ret);
			return 0;
		}
		if (ret != SHM_NONE)
			c->slot_state[ret] &= ~SLOT_SENT;
		if (slot != SHM_NONE)
			c->slot_state[slot] |= SLOT_HELD;
		e[i].slot = slot;
		e[i].len = len;
		e[i].ret = ret;
	}
	c->rx_head += n;
	/*
	 * Release: our reads of those descriptors are done before the sender
	 * may reuse their entries.  Published before any upcall: the engine
	 * may send from inside one, and the sender must see how far we got.
	 */
	atomic_store_explicit(c->rx_head_w, c->rx_head, memory_order_release);
	for (uint32_t i = 0; i < n; i++) {
		if (e[i].ret != SHM_NONE) {
			c->t->ev->send_done(&c->base, e[i].ret);
			done++;
			if (c->state != SC_UP)
				return done;
		}
		if (e[i].slot != SHM_NONE) {
			c->t->ev->recv(&c->base, e[i].slot,
				       c->rx_slots + (size_t)e[i].slot * c->g.slot_size, e[i].len);
			done++;
			if (c->state != SC_UP)
				return done;
		}
	}
	return done;
}

static int conn_poll(struct sconn *c, int budget)
{
	return poll_ring(c, budget);
}

/* Event mode, leaving our own poll: returns must not wait for a next poll
 * that a sleeping context will not make. */
static void poll_exit(struct shm_tctx *t)
{
	if (--t->in_poll || t->mode != TERN_TRANSPORT_EVENTS)
		return;
	for (struct tern_link *l = t->up.next; l != &t->up; l = l->next) {
		struct sconn *c = tern_link_entry(l, struct sconn, link);

		if (c->nrets && flush_rets(c))
			conn_failed(c, TERN_EPEER, "shm: the peer's index says its ring is full");
	}
}

/*
 * Handle what is waiting, up to SHM_WAKE_BUDGET messages.  In event mode,
 * work left over would never ring our doorbell again (it was published
 * before we armed), so we ring it ourselves and come back after libuv has
 * let everything else run.
 */
static int conn_drain(struct sconn *c)
{
	int total = 0;
	bool more;

	do {
		total += conn_poll(c, SHM_POLL_BATCH);
		/*
		 * Judge by the ring, not by the count: one descriptor can make
		 * two upcalls (a return and a message).  Acquire, as in
		 * poll_ring(), since the next round reads what it announces.
		 */
		more = c->state == SC_UP &&
		       atomic_load_explicit(c->rx_tail_r, memory_order_acquire) != c->rx_head;
	} while (more && total < SHM_WAKE_BUDGET);
	if (more && c->t->mode == TERN_TRANSPORT_EVENTS)
		(void)!eventfd_write(c->bell_in, 1);
	return total;
}

/* Event mode: announce that we may sleep, then look once more.  See ring_peer(). */
static int conn_arm(struct sconn *c)
{
	int n;

	c->wake_seq += (c->wake_seq & 1) ? 2 : 1;
	/* seq_cst store, then a seq_cst fence: the receiver's half of the
	 * doorbell handshake; the rings are read only after both. */
	atomic_store_explicit(c->wake_me, c->wake_seq, memory_order_seq_cst);
	atomic_thread_fence(memory_order_seq_cst);
	if (!c->bell_polling) {
		uv_poll_start(&c->bell_poll, UV_READABLE, bell_cb);
		c->bell_polling = true;
	}
	c->t->in_poll++;
	n = conn_drain(c);
	poll_exit(c->t); /* returns go out before we sleep */
	return n;
}

/* Polled mode: we spin, nobody needs to ring. */
static void conn_disarm(struct sconn *c)
{
	if (c->wake_seq & 1) {
		c->wake_seq++;
		/* Relaxed is enough: a peer that still sees the odd epoch rings
		 * once more, which costs a spurious wake-up and nothing else. */
		atomic_store_explicit(c->wake_me, c->wake_seq, memory_order_relaxed);
	}
	if (c->bell_polling) {
		uv_poll_stop(&c->bell_poll);
		c->bell_polling = false;
	}
}

static void bell_cb(uv_poll_t *h, int status, int events)
{
	struct sconn *c = h->data;
	eventfd_t v;

	(void)status;
	(void)events;
	(void)!eventfd_read(c->bell_in, &v); /* drain the count */
	if (c->state != SC_UP || c->t->mode != TERN_TRANSPORT_EVENTS)
		return;
	/* A new epoch before looking, so the peer rings again for anything
	 * it publishes after our look. */
	conn_arm(c);
	c->t->ev->activity(c->t->ctx);
}

static void conn_up(struct sconn *c)
{
	uv_timer_stop(&c->timer);
	c->state = SC_UP;
	tern_link_add(&c->t->up, &c->link);
}

/* Up, and the engine told: start watching the doorbell if we sleep. */
static void conn_start(struct sconn *c)
{
	if (c->state == SC_UP && c->t->mode == TERN_TRANSPORT_EVENTS)
		conn_arm(c);
}

/* ---- the handshake, server side --------------------------------------------------------- */

static int memfd_sealed(const char *name, uint64_t size, uint64_t backed);

/*
 * How much of a new segment to back with pages now.  The control words
 * and descriptor rings are written at once by both sides: always.  The
 * slots only come on first touch, so an idle session costs the few pages
 * its handshake and its service check wrote, not 2 x (2N + 3) slots
 * (docs/memory.md has the figures).
 *
 * That must never turn into a SIGBUS where the fallocate() of the whole
 * segment used to turn it into a clean error.  A memfd lives on the
 * kernel's internal shmem mount, which has no size limit (a full /dev/shm
 * is nothing to it), so a page fault on it can fail for one reason only:
 * the commit charge that shmem takes page by page for a memfd
 * (VM_NORESERVE), which fails only under strict overcommit
 * (vm.overcommit_memory = 2).  Under strict overcommit the whole segment
 * is backed at creation, as before, and running out is this connection's
 * -ENOMEM; in the other modes a page costs what any anonymous page costs
 * (a memory cgroup over its limit reclaims, then OOM-kills, as it would
 * for the malloc'd slots of tcp://).  TERN_SHM_BACK=full asks for the
 * old behaviour everywhere, TERN_SHM_BACK=lazy for the new one even
 * under strict overcommit (tests, and the "before" figures of
 * bench/idle).
 */
static bool segment_back_whole(void)
{
	const char *v = getenv("TERN_SHM_BACK");
	char mode = '0';
	int fd;

	if (v && !strcmp(v, "full"))
		return true;
	if (v && !strcmp(v, "lazy"))
		return false;
	fd = open("/proc/sys/vm/overcommit_memory", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return true; /* cannot tell: the safe choice */
	if (read(fd, &mode, 1) != 1)
		mode = '2';
	close(fd);
	return mode == '2';
}

/* Make, size, seal and map the segment (its memfd: c->segfd).  Return: 0 or -errno. */
static int segment_create(struct sconn *c)
{
	struct shm_seg_hdr *h;
	int fd, rc;

	fd = memfd_sealed("tern-shm", c->g.size,
			  segment_back_whole() ? c->g.size : c->g.slots_off[0]);
	if (fd < 0)
		return fd;
	c->seg = mmap(NULL, c->g.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (c->seg == MAP_FAILED) {
		c->seg = NULL;
		rc = -errno;
		close(fd);
		return rc;
	}
	c->segfd = fd;
	tern_memmap_add(&c->t->maps, &c->segmap, c->seg, c->g.size, fd, &c->t->mem.slots_shared);
	h = (struct shm_seg_hdr *)c->seg;
	h->magic = SHM_SEG_MAGIC;
	h->version = SHM_PROTO_VERSION;
	h->slot_size = c->g.slot_size;
	h->nslots = c->g.nslots;
	h->ring_size = c->g.ring_size;
	h->size = c->g.size;
	return conn_map_views(c);
}

/*
 * An accepted socket that does not speak our protocol: hand the engine an
 * empty handshake, so that it refuses the connection and reports it to the
 * listener's callback like any other non-tern client.
 */
static void server_refuse_garbage(struct sconn *c)
{
	struct slistener *l = c->l;
	struct tern_conn_params p = {0};
	uint8_t reply[TERN_HANDSHAKE_MAX];
	size_t reply_len = 0;
	void *owner = NULL;
	int rc;

	tern_link_del(&c->link);
	c->l = NULL;
	rc = c->t->ev->incoming(&l->base, NULL, 0, &p, &owner, reply, &reply_len);
	if (rc == 0) {
		/* It cannot accept nothing; if it did, fail the session it made. */
		c->base.owner = owner;
		conn_failed(c, TERN_EPEER, NULL);
		return;
	}
	send_refusal(c->sock, rc, reply, reply_len < sizeof(reply) ? reply_len : sizeof(reply));
	conn_close(c);
}

static void server_on_hello(struct sconn *c)
{
	struct shm_tctx *t = c->t;
	struct slistener *l = c->l;
	struct tern_conn_params p = {0};
	uint8_t reply[TERN_HANDSHAKE_MAX];
	size_t reply_len = 0;
	struct shm_msg m;
	void *owner = NULL;
	int fds[SHM_MAX_FDS], nfds, rc;
	ssize_t n;

	n = msg_recv(c->sock, &m, fds, 1, &nfds);
	if (n == -EAGAIN)
		return;
	if (n == 0 || (n < 0 && n != -EBADMSG)) {
		conn_close(c); /* gone before saying anything: nobody to tell */
		return;
	}
	/*
	 * Another user's process: refuse it before looking at what it sent.
	 * Only now, with its HELLO read: a Unix socket closed with unread
	 * data resets the peer, which would then never read our REFUSE.
	 */
	if ((rc = peer_check(c->sock, &c->peer_pid))) {
		close_fds(fds, &nfds);
		send_refusal(c->sock, rc, NULL, 0);
		conn_close(c);
		return;
	}
	if (n < 0 || m.type != SHM_MSG_HELLO || nfds != 1 || !fd_is_eventfd(fds[0]) ||
	    shm_geom_init(&c->g, m.slot_size, m.nslots)) {
		close_fds(fds, &nfds);
		server_refuse_garbage(c);
		return;
	}
	c->bell_out = fds[0];
	tern_link_del(&c->link);
	c->l = NULL;

	rc = t->ev->incoming(&l->base, m.hs, m.hs_len, &p, &owner, reply, &reply_len);
	if (rc) {
		/* Refused (the engine told its user): say why, and go quietly. */
		send_refusal(c->sock, rc, reply, reply_len);
		conn_close(c);
		return;
	}
	c->base.owner = owner;
	/* The geometry the engine accepted must be the one the client laid
	 * the rings out for. */
	if (p.slot_size != m.slot_size || p.send_slots != m.nslots || p.recv_slots != m.nslots) {
		rc = TERN_EPEER;
		goto refuse;
	}
	if ((rc = segment_create(c)))
		goto refuse;
	msg_init(&m, SHM_MSG_ACCEPT, 0, &c->g, reply, reply_len);
	fds[0] = c->segfd;
	fds[1] = c->bell_in;
	rc = msg_send(c->sock, &m, fds, 2);
	if (rc) {
		conn_failed(c, rc, NULL);
		return;
	}
	c->state = SC_ACCEPTED;
	uv_timer_start(&c->timer, conn_timer_cb, p.connect_timeout_ms, 0);
	return;
refuse:
	send_refusal(c->sock, rc, NULL, 0);
	conn_failed(c, rc, NULL);
}

static void server_on_ready(struct sconn *c)
{
	struct shm_msg m;
	int fds[SHM_MAX_FDS], nfds;
	ssize_t n = msg_recv(c->sock, &m, fds, 0, &nfds);

	if (n == -EAGAIN)
		return;
	if (n <= 0 || m.type != SHM_MSG_READY) {
		conn_failed(c, n == 0 ? -ECONNRESET : TERN_EPEER, NULL);
		return;
	}
	conn_up(c);
	c->t->ev->accepted(&c->base, 0);
	conn_start(c);
}

/* ---- the handshake, client side ---------------------------------------------------------- */

/*
 * Check the server's segment and map it; @fd becomes c->segfd, or is
 * closed.  Return: 0 or an error.
 */
static int segment_attach(struct sconn *c, int fd)
{
	const struct shm_seg_hdr *h;
	int rc = segment_check(fd, c->g.size);

	if (rc) {
		close(fd);
		return rc;
	}
	c->seg = mmap(NULL, c->g.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (c->seg == MAP_FAILED) {
		c->seg = NULL;
		close(fd);
		return TERN_EPEER;
	}
	c->segfd = fd;
	tern_memmap_add(&c->t->maps, &c->segmap, c->seg, c->g.size, fd, &c->t->mem.slots_shared);
	/* The header must describe the layout we computed; it is not used
	 * afterwards (the server could rewrite it at any time). */
	h = (const struct shm_seg_hdr *)c->seg;
	if (h->magic != SHM_SEG_MAGIC || h->version != SHM_PROTO_VERSION ||
	    h->slot_size != c->g.slot_size || h->nslots != c->g.nslots ||
	    h->ring_size != c->g.ring_size || h->size != c->g.size)
		return TERN_EPEER;
	return conn_map_views(c);
}

static bool status_is_sane(int32_t st)
{
	/* A negative errno or TERN_E* code; anything else is made up. */
	return st < 0 && st > -(TERN_ERRNO_BASE + 1000);
}

static void client_on_answer(struct sconn *c)
{
	struct shm_msg m, ready;
	int fds[SHM_MAX_FDS], nfds, rc;
	ssize_t n = msg_recv(c->sock, &m, fds, 2, &nfds);

	if (n == -EAGAIN)
		return;
	if (n == 0) {
		conn_failed(c, -ECONNRESET, NULL);
		return;
	}
	if (n < 0) {
		conn_failed(c, n == -EBADMSG ? TERN_EPEER : (int)n, NULL);
		return;
	}
	if (m.type == SHM_MSG_REFUSE) {
		close_fds(fds, &nfds);
		/* The engine's refusal carries its reason (the engine decodes
		 * it); a bare one, a status. */
		int st = !m.hs_len && status_is_sane(m.status) ? m.status : -ECONNREFUSED;

		c->t->ev->connected(&c->base, st, m.hs, m.hs_len);
		conn_close(c);
		return;
	}
	if (m.type != SHM_MSG_ACCEPT || nfds != 2 || m.slot_size != c->g.slot_size ||
	    m.nslots != c->g.nslots || m.seg_size != c->g.size || !fd_is_eventfd(fds[1])) {
		close_fds(fds, &nfds);
		conn_failed(c, TERN_EPEER, NULL);
		return;
	}
	c->bell_out = fds[1];
	if ((rc = segment_attach(c, fds[0]))) {
		conn_failed(c, rc, NULL);
		return;
	}
	msg_init(&ready, SHM_MSG_READY, 0, NULL, NULL, 0);
	if ((rc = msg_send(c->sock, &ready, NULL, 0))) {
		conn_failed(c, rc, NULL);
		return;
	}
	conn_up(c);
	if (c->t->ev->connected(&c->base, 0, m.hs, m.hs_len)) {
		conn_close(c); /* the engine refused the answer */
		return;
	}
	conn_start(c);
}

/* ---- the socket once up: only a hang-up is expected ---------------------------------------- */

/* Take what a peer that hung up left in the rings: a reply written just
 * before it exited is still a reply.  Bounded: it cannot keep writing. */
static void conn_drain_dead(struct sconn *c)
{
	int left = 4 * (int)c->g.nslots;

	while (left > 0 && c->state == SC_UP) {
		int n = conn_poll(c, SHM_POLL_BATCH);

		if (n == 0)
			break;
		left -= n;
	}
}

static void bulk_on_msg(struct sconn *c, uint16_t type, const struct shm_bulk *b, int fd);

/* Socket messages once up: bulk traffic, or the hang-up.  Return: how many. */
static int up_on_socket(struct sconn *c)
{
	int i;

	for (i = 0; i < SHM_SOCK_BATCH && c->state == SC_UP; i++) {
		struct shm_msg m;
		struct shm_bulk b;
		int fds[SHM_MAX_FDS], nfds;
		/* one descriptor at most: a BULK_MAP's area */
		ssize_t n = msg_recv(c->sock, &m, fds, 1, &nfds);

		if (n == -EAGAIN)
			return i;
		if (n > 0 && m.hs_len == 0 && m.type >= SHM_MSG_BULK_REQ &&
		    m.type < SHM_MSG_TYPES && (nfds == 0 || m.type == SHM_MSG_BULK_MAP)) {
			memcpy(&b, m.hs, sizeof(b)); /* a local copy: judged, then used */
			bulk_on_msg(c, m.type, &b, nfds ? fds[0] : -1);
			continue;
		}
		close_fds(fds, &nfds);
		if (n > 0 || n == -EBADMSG) {
			/* Anything else breaks the protocol. */
			conn_failed(c, TERN_EPEER, "shm: unexpected message on the socket");
			return i;
		}
		conn_drain_dead(c);
		if (c->state == SC_UP)
			conn_failed(c, -ECONNRESET, "the peer hung up");
		return i;
	}
	return i;
}

static void sock_cb(uv_poll_t *h, int status, int events)
{
	struct sconn *c = h->data;
	struct shm_tctx *t = c->t;

	(void)status;
	(void)events;
	switch (c->state) {
	case SC_HELLO:
		server_on_hello(c);
		break;
	case SC_ACCEPTED:
		server_on_ready(c);
		break;
	case SC_CONNECTING:
		client_on_answer(c);
		break;
	case SC_UP:
		(void)up_on_socket(c);
		break;
	case SC_CLOSING:
		if (c->lingering)
			linger_on_socket(c);
		else
			uv_poll_stop(h);
		return;
	}
	t->ev->activity(t->ctx);
}

/* ---- listeners ------------------------------------------------------------------------------- */

static int server_conn_start(struct slistener *l, int fd);

static void listener_cb(uv_poll_t *h, int status, int events)
{
	struct slistener *l = h->data;
	struct shm_tctx *t = l->t;

	(void)status;
	(void)events;
	for (int i = 0; i < SHM_ACCEPT_BATCH; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0)
			return; /* EAGAIN, or a connection that died in the backlog */
		/* A group's listener: a member runs it. */
		if (l->base.handoff)
			t->ev->handoff(&l->base, (struct tern_handoff){.fd = fd});
		else
			(void)server_conn_start(l, fd);
	}
}

/* An accepted socket: wait for its HELLO, as @l's.  Owns @fd. */
static int server_conn_start(struct slistener *l, int fd)
{
	struct sconn *c;
	pid_t pid = 0;

	/* Who it is gets checked at HELLO (see server_on_hello()). */
	(void)peer_check(fd, &pid);
	c = conn_new(l->t, true);
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	c->l = l;
	tern_link_add(&l->pending, &c->link);
	c->state = SC_HELLO;
	snprintf(c->base.peer, sizeof(c->base.peer), "%s[pid %d]", l->name, (int)pid);
	conn_watch_socket(c, fd);
	uv_timer_start(&c->timer, conn_timer_cb, SHM_HANDSHAKE_MS, 0);
	return 0;
}

/* A socket another context's group listener accepted, run as @tl's. */
static int shm_adopt(struct tern_tlistener *tl, struct tern_handoff h)
{
	return server_conn_start((struct slistener *)tl, h.fd);
}

/* A group member's listener: it owns no socket and no name. */
static int shm_adopt_listen(struct tern_tctx *tt, const struct tern_uri *u, void *owner,
			    struct tern_tlistener **out)
{
	struct slistener *l = calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	l->base.ops = &tern_shm_transport;
	l->base.tctx = tt;
	l->base.owner = owner;
	l->t = T(tt);
	l->fd = -1;
	tern_link_init(&l->pending);
	snprintf(l->name, sizeof(l->name), "%.64s", u->host);
	*out = &l->base;
	return 0;
}

/* A socket file with nobody listening behind it, left by a dead server? */
static bool stale_socket(const struct sockaddr_un *sa, socklen_t len)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	bool stale;

	if (fd < 0)
		return false;
	stale = connect(fd, (const struct sockaddr *)sa, len) && errno == ECONNREFUSED;
	close(fd);
	return stale;
}

static void listener_closed(uv_handle_t *h)
{
	struct slistener *l = h->data;

	l->t->open_handles--;
	free(l);
}

static int shm_listen(struct tern_tctx *tt, const struct tern_uri *u, void *owner,
		      struct tern_tlistener **out)
{
	struct shm_tctx *t = T(tt);
	struct sockaddr_un sa;
	struct slistener *l;
	socklen_t len;
	int rc;

	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->base.ops = &tern_shm_transport;
	l->base.tctx = tt;
	l->base.owner = owner;
	l->t = t;
	l->fd = -1;
	tern_link_init(&l->pending);
	snprintf(l->name, sizeof(l->name), "%.64s", u->host);
	if ((rc = shm_addr(u->host, &sa, &len, l->path, sizeof(l->path))))
		goto fail;
	if (l->path[0] && (rc = dir_prepare(shm_dir())))
		goto fail;
	l->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->fd < 0) {
		rc = -errno;
		goto fail;
	}
	if (bind(l->fd, (struct sockaddr *)&sa, len)) {
		rc = -errno;
		if (rc != -EADDRINUSE || !l->path[0] || !stale_socket(&sa, len))
			goto fail;
		unlink(l->path);
		if (bind(l->fd, (struct sockaddr *)&sa, len)) {
			rc = -errno;
			goto fail;
		}
	}
	/* The 0700 directory already keeps others out; the mode says so too. */
	if (l->path[0] && chmod(l->path, 0600)) {
		rc = -errno;
		unlink(l->path);
		goto fail;
	}
	if (listen(l->fd, SOMAXCONN)) {
		rc = -errno;
		if (l->path[0])
			unlink(l->path);
		goto fail;
	}
	uv_poll_init(t->loop, &l->poll, l->fd);
	l->poll.data = l;
	uv_poll_start(&l->poll, UV_READABLE, listener_cb);
	t->open_handles++;
	l->base.port = 0;
	*out = &l->base;
	return 0;
fail:
	if (l->fd >= 0)
		close(l->fd);
	free(l);
	return rc;
}

static void shm_listener_close(struct tern_tlistener *tl)
{
	struct slistener *l = (struct slistener *)tl;

	/* Sockets that never said HELLO have no session; drop them. */
	while (l->pending.next != &l->pending)
		conn_close(tern_link_entry(l->pending.next, struct sconn, link));
	if (l->fd < 0) { /* adopt_listen()'s: no socket, no handle */
		free(l);
		return;
	}
	if (l->path[0])
		unlink(l->path);
	/* Release the name now, not a loop turn later, so it can be listened
	 * on again at once; libuv allows closing the fd once polling stopped. */
	uv_poll_stop(&l->poll);
	close(l->fd);
	l->fd = -1;
	uv_close((uv_handle_t *)&l->poll, listener_closed);
}

/* ---- connect ----------------------------------------------------------------------------------
 */

static int shm_connect(struct tern_tctx *tt, const struct tern_uri *u,
		       const struct tern_conn_params *p, const void *hs, size_t hs_len, void *owner,
		       struct tern_conn **out)
{
	struct shm_tctx *t = T(tt);
	struct sockaddr_un sa;
	struct shm_msg m;
	struct sconn *c;
	char path[sizeof(sa.sun_path)];
	socklen_t len;
	int fd, rc;

	if (hs_len > TERN_HANDSHAKE_MAX || p->send_slots != p->recv_slots)
		return -EINVAL;
	if ((rc = shm_addr(u->host, &sa, &len, path, sizeof(path))))
		return rc;
	c = conn_new(t, false);
	if (!c)
		return -ENOMEM;
	if ((rc = shm_geom_init(&c->g, p->slot_size, p->send_slots))) {
		conn_close(c);
		return rc;
	}
	c->base.slot_size = p->slot_size;
	c->base.send_slots = p->send_slots;
	c->base.recv_slots = p->recv_slots;
	memcpy(c->hs, hs, hs_len);
	c->hs_len = (uint32_t)hs_len;
	snprintf(c->base.peer, sizeof(c->base.peer), "%.64s", u->host);
	c->state = SC_CONNECTING;

	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		conn_close(c);
		return rc;
	}
	conn_watch_socket(c, fd);
	/* From here failures are reported through error(), from the
	 * timer: this function must not upcall. */
	if (connect(fd, (struct sockaddr *)&sa, len)) {
		/* No listener: ENOENT (path), ECONNREFUSED (abstract); a full
		 * backlog: EAGAIN. */
		c->pending_err = errno == ENOENT ? -ECONNREFUSED : -errno;
	} else if ((rc = peer_check(fd, &c->peer_pid))) {
		c->pending_err = rc;
	} else {
		msg_init(&m, SHM_MSG_HELLO, 0, &c->g, hs, hs_len);
		m.seg_size = 0;
		rc = msg_send(fd, &m, &c->bell_in, 1);
		/* A server that refused us at once (say, our uid) may have
		 * closed already: its REFUSE still waits in our queue. */
		if (rc && rc != -EPIPE && rc != -ECONNRESET)
			c->pending_err = rc;
	}
	uv_timer_start(&c->timer, conn_timer_cb, c->pending_err ? 0 : p->connect_timeout_ms, 0);
	c->base.owner = owner; /* the engine knows it from here */
	*out = &c->base;
	return 0;
}

static void shm_disconnect(struct tern_conn *bc)
{
	struct sconn *c = C(bc);

	conn_close(c);
}

/* ---- large messages ------------------------------------------------------------------------ */

static uint64_t shm_bulk_max(struct tern_conn *bc)
{
	(void)bc;
	return UINT32_MAX; /* one process_vm_* call moves any message the engine has */
}

static int shm_bulk_export(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			   int writable, struct tern_bulk_desc *out)
{
	struct sconn *c = C(bc);

	if (c->state != SC_UP)
		return -ENOTCONN;
	return tern_xtab_add(&c->xt, m, off, len, writable, out);
}

static void shm_bulk_unexport(struct tern_conn *bc, const struct tern_bulk_desc *d, unsigned flags)
{
	(void)flags;
	(void)tern_xtab_del(&C(bc)->xt, d); /* gone already with a failed connection: fine */
}

static void shm_mem_release(struct tern_tctx *tt, struct tern_tmem *m)
{
	struct shm_tctx *t = T(tt);

	for (struct tern_link *l = t->up.next; l != &t->up; l = l->next) {
		struct sconn *c = tern_link_entry(l, struct sconn, link);

		tern_xtab_drop_mem(&c->xt, m);
		/* a peer that mapped the region is told to let go of it */
		for (uint32_t i = 0; c->lent && i < SHM_MAX_AREAS; i++)
			if (c->lent[i].used && c->lent[i].m == m)
				lent_retire(c, i, true);
	}
	m->prov = NULL;
}

/*
 * Copy @len bytes between our @local and the peer's @remote: one copy,
 * straight from source to destination, by the kernel.  Needs ptrace access
 * to the peer (same uid and yama ptrace_scope 0, or CAP_SYS_PTRACE).
 * Return: 0 or -errno (-EPERM without that access, -EFAULT for a bad
 * address of the peer's).
 */
static int vm_copy(pid_t pid, bool to_peer, void *local, uint64_t remote, uint64_t len)
{
	uint64_t done = 0;

	while (done < len) {
		struct iovec l = {.iov_base = (char *)local + done, .iov_len = len - done};
		struct iovec r = {.iov_base = (void *)(uintptr_t)(remote + done),
				  .iov_len = len - done};
		ssize_t n = to_peer ? process_vm_writev(pid, &l, 1, &r, 1, 0)
				    : process_vm_readv(pid, &l, 1, &r, 1, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == ESRCH ? -ECONNRESET : -errno;
		if (n == 0)
			return -EFAULT; /* a partial copy stops at a fault */
		done += (uint64_t)n;
	}
	return 0;
}

static int bulk_msg_send(struct sconn *c, uint16_t type, const struct shm_bulk *b, int fd)
{
	struct shm_msg m;

	/* the descriptor rides in hs, with hs_len 0: the receiver insists */
	msg_init(&m, type, 0, NULL, NULL, 0);
	memcpy(m.hs, b, sizeof(*b));
	return msg_send(c->sock, &m, &fd, fd >= 0 ? 1 : 0);
}

static void bulk_send_failed(struct sconn *c, int rc)
{
	conn_failed(c, rc == -EPIPE ? -ECONNRESET : rc, "shm: could not answer a bulk transfer");
}

/*
 * May we process_vm_* the peer?  Asked once per connection, by reading one
 * byte at @addr (the peer's own buffer of the request at hand): under Yama
 * ptrace_scope 1, or with a non-dumpable peer, the kernel says EPERM.
 */
static bool vm_allowed(struct sconn *c, uint64_t addr)
{
	if (c->vm == VM_UNKNOWN) {
		char byte;
		struct iovec l = {.iov_base = &byte, .iov_len = 1};
		struct iovec r = {.iov_base = (void *)(uintptr_t)addr, .iov_len = 1};
		ssize_t n = process_vm_readv(c->peer_pid, &l, 1, &r, 1, 0);

		if (n == 1)
			c->vm = VM_OK;
		else if (n < 0 && errno == EPERM)
			c->vm = VM_DENIED;
	}
	return c->vm != VM_DENIED;
}

/* ---- memfd areas: what we lend the peer (exporter side) ---- */

/*
 * A sealed memfd of @size bytes (shm_layout.h says why each seal), its
 * first @backed bytes backed by pages now.  Return: the fd or -errno.
 */
static int memfd_sealed(const char *name, uint64_t size, uint64_t backed)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
	int rc;

	if (fd < 0 && errno == EINVAL)
		fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size))
		goto fail;
	/* Back it now, so running out of memory is an error here rather than
	 * a fault later, in either process. */
	if (fallocate(fd, 0, 0, (off_t)backed) && errno != EOPNOTSUPP)
		goto fail;
	if (fcntl(fd, F_ADD_SEALS, SHM_REQUIRED_SEALS))
		goto fail;
	return fd;
fail:
	rc = errno == ENOSPC ? -ENOMEM : -errno;
	close(fd);
	return rc;
}

/* Take area @id back; @tell the peer to unmap it (else it is our end anyway). */
static void lent_retire(struct sconn *c, uint32_t id, bool tell)
{
	struct shm_lent *a = &c->lent[id];
	struct shm_bulk b = {.key = id};

	if (!a->m) {
		c->t->mem.staging_shared -= a->size;
		munmap(a->map, a->size);
		if (!a->busy)
			c->stage_idle -= a->size;
	}
	memset(a, 0, sizeof(*a));
	/* Best effort: a socket that cannot take it fails the next message. */
	if (tell && c->state == SC_UP)
		(void)bulk_msg_send(c, SHM_MSG_BULK_UNMAP, &b, -1);
}

/* A free area id, retiring an idle area when all are taken.  Return: 0 or an error. */
static int lent_id(struct sconn *c, uint32_t *id)
{
	uint32_t idle = UINT32_MAX;

	if (!c->lent && !(c->lent = calloc(SHM_MAX_AREAS, sizeof(*c->lent))))
		return -ENOMEM;
	for (uint32_t i = 0; i < SHM_MAX_AREAS; i++) {
		if (!c->lent[i].used) {
			*id = i;
			return 0;
		}
		if (!c->lent[i].busy && idle == UINT32_MAX)
			idle = i;
	}
	/* An honest peer keeps at most 2 * SHM_BULK_OPS staging areas busy. */
	if (idle == UINT32_MAX)
		return TERN_EPEER;
	lent_retire(c, idle, true);
	*id = idle;
	return 0;
}

/* The id the peer knows region @m by; *@fd: the memfd to send along when it is new, else -1. */
static int lend_region(struct sconn *c, struct tern_tmem *m, uint32_t *id, int *fd)
{
	int rc;

	*fd = -1;
	for (uint32_t i = 0; c->lent && i < SHM_MAX_AREAS; i++) {
		if (c->lent[i].used && c->lent[i].m == m) {
			*id = i;
			return 0;
		}
	}
	if ((rc = lent_id(c, id)))
		return rc;
	c->lent[*id].used = true;
	c->lent[*id].m = m;
	*fd = m->fd;
	return 0;
}

/*
 * A staging area of at least @len bytes for one transfer, busy until the
 * peer frees or fills it: an idle one of this connection's, or a new one
 * (*@fd: its memfd, to send along and then close; else -1).  Staging is
 * per connection, so it only ever holds bytes this peer may see.
 */
static int stage_take(struct sconn *c, uint64_t len, uint32_t *id, int *fd)
{
	uint64_t size = SHM_STAGE_MIN;
	struct shm_lent *a;
	void *map;
	int rc;

	*fd = -1;
	while (size < len)
		size <<= 1; /* len is inside an export: far below 2^63 */
	for (uint32_t i = 0; c->lent && i < SHM_MAX_AREAS; i++) {
		a = &c->lent[i];
		if (a->used && !a->m && !a->busy && a->size == size) {
			a->busy = true;
			c->stage_idle -= size;
			*id = i;
			return 0;
		}
	}
	if ((rc = lent_id(c, id)))
		return rc;
	if ((*fd = memfd_sealed("tern-shm-stage", size, size)) < 0) {
		rc = *fd;
		*fd = -1;
		return rc;
	}
	map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
	if (map == MAP_FAILED) {
		rc = -errno;
		close(*fd);
		*fd = -1;
		return rc;
	}
	a = &c->lent[*id];
	a->used = a->busy = true;
	a->map = map;
	a->size = size;
	c->t->mem.staging_shared += size;
	return 0;
}

/*
 * A staged transfer is over: keep the area for the next.  Past
 * SHM_STAGE_IDLE_MAX of idle staging, the other idle areas go first: the
 * one just used is the likeliest to be wanted again (a run of transfers of
 * one size), and making a fresh one costs its every page twice (zeroed
 * here, faulted in by both processes).
 */
static void stage_put(struct sconn *c, uint32_t id)
{
	struct shm_lent *a = &c->lent[id];

	a->busy = false;
	c->stage_idle += a->size;
	for (uint32_t i = 0; i < SHM_MAX_AREAS && c->stage_idle > SHM_STAGE_IDLE_MAX; i++)
		if (i != id && c->lent[i].used && !c->lent[i].m && !c->lent[i].busy)
			lent_retire(c, i, true);
	if (c->stage_idle > SHM_STAGE_IDLE_MAX)
		lent_retire(c, id, true);
}

/* Answer the checked request @b with a BULK_MAP: area @id, at @off. */
static int map_send(struct sconn *c, const struct shm_bulk *b, uint32_t id, uint64_t off,
		    uint32_t flags, int fd)
{
	struct shm_bulk mp = {.xaddr = off,
			      .len = b->len,
			      .laddr = b->laddr,
			      .key = id,
			      .token = b->token,
			      .op = (b->op & SHM_BULK_OP_MASK) | flags};

	return bulk_msg_send(c, SHM_MSG_BULK_MAP, &mp, fd);
}

/*
 * The checked request @b for export @e, when the peer's memory is out of
 * our reach or the export is a tern_mem_alloc() region: the peer copies
 * through a mapping, of the region itself (one copy) or of a staging
 * area (two).
 */
static void bulk_map(struct sconn *c, const struct shm_bulk *b, const struct tern_xent *e)
{
	struct shm_bulk d = {.token = b->token};
	uint32_t id;
	int fd, rc;

	if (e->m->memfd) {
		if (!(rc = lend_region(c, e->m, &id, &fd)))
			rc = map_send(c, b, id, b->xaddr - (uint64_t)(uintptr_t)e->m->addr, 0, fd);
	} else if (!(rc = stage_take(c, b->len, &id, &fd))) {
		c->lent[id].req = *b;
		/* checked: [xaddr, +len) lies inside a live export of ours */
		if ((b->op & SHM_BULK_OP_MASK) == SHM_BULK_READ)
			memcpy(c->lent[id].map, (void *)(uintptr_t)b->xaddr, b->len);
		rc = map_send(c, b, id, 0, SHM_MAP_STAGED, fd);
		if (fd >= 0)
			close(fd); /* our mapping, and soon the peer's, keep it */
	} else if (rc != TERN_EPEER) {
		/* no memory for staging: this transfer fails, the connection goes on */
		d.status = rc;
		rc = bulk_msg_send(c, SHM_MSG_BULK_DONE, &d, -1);
	}
	if (rc == TERN_EPEER)
		conn_failed(c, rc, "shm: the peer holds every staging area");
	else if (rc)
		bulk_send_failed(c, rc);
}

/* The peer asks us to move bytes of something we exported. */
static void bulk_on_req(struct sconn *c, const struct shm_bulk *b)
{
	const struct tern_xent *e = NULL;
	struct shm_bulk d = {.token = b->token};
	uint32_t op = b->op & SHM_BULK_OP_MASK;
	uint64_t len = b->len;
	int rc;

	if ((op == SHM_BULK_READ || op == SHM_BULK_WRITE) && !(b->op & ~0x1ffu) && b->len)
		e = tern_xtab_check(&c->xt, b->key, b->xaddr, b->len, op == SHM_BULK_WRITE);
	if (!e) {
		conn_failed(c, TERN_EPEER, "shm: the peer named memory it was not given");
		return;
	}
	/* Checked: [xaddr, xaddr + len) is inside a live export of ours. */
	if (e->m->memfd || !vm_allowed(c, b->laddr)) {
		bulk_map(c, b, e);
		return;
	}
	/*
	 * A large one is split, once we know we reach the peer: the user
	 * copies the second half itself while we copy the first, two
	 * processes at once.
	 */
	if (len >= SHM_SPLIT_MIN && !(b->op & SHM_BULK_NOSPLIT) && c->vm == VM_OK) {
		struct shm_bulk sp = {.token = b->token, .len = (len / 2) & ~(uint64_t)4095};

		if ((rc = bulk_msg_send(c, SHM_MSG_BULK_SPLIT, &sp, -1))) {
			bulk_send_failed(c, rc);
			return;
		}
		c->split_given = true;
		len = sp.len;
	}
	d.status = vm_copy(c->peer_pid, op == SHM_BULK_READ, (void *)(uintptr_t)b->xaddr, b->laddr,
			   len);
	if (d.status == -EPERM && len == b->len) {
		/* refused after all (the peer just became non-dumpable?) */
		c->vm = VM_DENIED;
		bulk_map(c, b, e);
		return;
	}
	if ((rc = bulk_msg_send(c, SHM_MSG_BULK_DONE, &d, -1)))
		bulk_send_failed(c, rc);
}

/* The peer is done with staging area b->key: copied out (FREE) or filled (FILLED). */
static void bulk_on_staged(struct sconn *c, const struct shm_bulk *b, bool filled)
{
	struct shm_lent *a = c->lent && b->key < SHM_MAX_AREAS ? &c->lent[b->key] : NULL;
	struct shm_bulk d = {.token = b->token};
	const struct shm_bulk *q;
	int rc;

	if (!a || !a->busy || a->req.token != b->token ||
	    (a->req.op & SHM_BULK_OP_MASK) != (filled ? SHM_BULK_WRITE : SHM_BULK_READ)) {
		conn_failed(c, TERN_EPEER, "shm: the peer gave back an area it was not lent");
		return;
	}
	q = &a->req;
	if (filled) {
		/* Checked again: the call may have ended meanwhile. */
		if (tern_xtab_check(&c->xt, q->key, q->xaddr, q->len, true))
			memcpy((void *)(uintptr_t)q->xaddr, a->map, q->len);
		else
			d.status = -ECANCELED;
	}
	stage_put(c, b->key);
	if (filled && (rc = bulk_msg_send(c, SHM_MSG_BULK_DONE, &d, -1)))
		bulk_send_failed(c, rc);
}

/* ---- transfers we asked for (user side) ---- */

/* The pending transfer @token names, or NULL. */
static struct shm_bop *bop_of(struct sconn *c, uint32_t token)
{
	uint32_t i = token & 0xffu;
	struct shm_bop *op = &c->bops[i % SHM_BULK_OPS];

	return i < SHM_BULK_OPS && op->busy && op->gen == token >> 8 && op->dones ? op : NULL;
}

/* One part of @op is over, with status @st (the peer's: judged here). */
static void bop_part_done(struct sconn *c, struct shm_bop *op, int st)
{
	if (st > 0 || st < -4095)
		st = -EIO; /* not an errno: say so rather than pass it on */
	if (!op->status)
		op->status = st;
	if (--op->dones)
		return;
	op->busy = false;
	c->bops_live--;
	c->t->ev->bulk_done(&c->base, op->cookie, op->status);
}

/* The peer finished (or refused) a transfer we asked for. */
static void bulk_on_done(struct sconn *c, const struct shm_bulk *b)
{
	struct shm_bop *op = bop_of(c, b->token);

	if (!op) {
		conn_failed(c, TERN_EPEER, "shm: the peer finished a transfer nobody asked for");
		return;
	}
	bop_part_done(c, op, b->status);
}

/* The exporter copies the first half of a large transfer: we copy the rest. */
static void bulk_on_split(struct sconn *c, const struct shm_bulk *b)
{
	struct shm_bop *op = bop_of(c, b->token);
	struct shm_bulk *q = op ? &op->req : NULL;
	uint64_t mid = b->len;
	int rc;

	if (!op || op->split || mid >= q->len) {
		conn_failed(c, TERN_EPEER, "shm: the peer split a transfer it was not asked for");
		return;
	}
	op->split = true;
	/* the exporter's own memory, at the address its descriptor gave */
	rc = c->vm == VM_DENIED
		     ? -EPERM
		     : vm_copy(c->peer_pid, (q->op & SHM_BULK_OP_MASK) == SHM_BULK_WRITE,
			       (void *)(uintptr_t)(q->laddr + mid), q->xaddr + mid, q->len - mid);
	if (rc != -EPERM) {
		if (rc && !op->status)
			op->status = rc;
		return;
	}
	/* We cannot reach it: let the exporter copy our half, and all from now on. */
	c->vm = VM_DENIED;
	q->xaddr += mid;
	q->laddr += mid;
	q->len -= mid;
	q->op |= SHM_BULK_NOSPLIT;
	if ((rc = bulk_msg_send(c, SHM_MSG_BULK_REQ, q, -1))) {
		if (!op->status)
			op->status = rc == -EPIPE ? -ECONNRESET : rc;
		return;
	}
	op->dones++;
}

/* Map the peer's area @fd as @a, checked like the segment.  Closes @fd.  Return: 0 or an error. */
static int area_map(struct sconn *c, struct shm_area *a, int fd)
{
	uint64_t size = 0;
	void *p = MAP_FAILED;
	int rc = memfd_check(fd, &size);

	if (!rc && size > SIZE_MAX)
		rc = TERN_EPEER;
	if (!rc && (p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
		rc = -errno;
	close(fd);
	if (rc)
		return rc;
	if (a->map) {
		c->t->mem.staging_shared -= a->size;
		munmap(a->map, a->size);
	}
	a->map = p;
	a->size = size;
	c->t->mem.staging_shared += size;
	return 0;
}

/*
 * The exporter answers our request with an area to copy through.  Every
 * field is held against what we asked (token, direction, our own buffer
 * and length) and the area's size as fstat gives it, so a hostile
 * exporter makes us copy only between our own buffer and its memory.
 */
static void bulk_on_map(struct sconn *c, const struct shm_bulk *b, int fd)
{
	struct shm_bop *op = bop_of(c, b->token);
	uint32_t dir = b->op & SHM_BULK_OP_MASK;
	bool staged = b->op & SHM_MAP_STAGED;
	const char *why = "shm: the peer answered with an area out of bounds";
	struct shm_bulk back = {.key = b->key, .token = b->token};
	struct shm_area *a;
	uint8_t *mine, *area;
	int rc = TERN_EPEER;

	if (!op || op->mapped || (op->split && !(op->req.op & SHM_BULK_NOSPLIT)) ||
	    b->laddr != op->req.laddr || b->len != op->req.len ||
	    dir != (op->req.op & SHM_BULK_OP_MASK) ||
	    (b->op & ~(uint32_t)(SHM_BULK_OP_MASK | SHM_MAP_STAGED)) || b->key >= SHM_MAX_AREAS) {
		why = "shm: the peer mapped a transfer it was not asked for";
		goto bad;
	}
	if (!c->areas && !(c->areas = calloc(SHM_MAX_AREAS, sizeof(*c->areas)))) {
		rc = -ENOMEM;
		goto bad;
	}
	a = &c->areas[b->key];
	if (fd >= 0) {
		rc = area_map(c, a, fd);
		fd = -1;
		if (rc) {
			why = "shm: the peer's area is not a sealed memfd we can map";
			goto bad;
		}
		rc = TERN_EPEER;
	}
	if (!a->map || b->xaddr > a->size || b->len > a->size - b->xaddr)
		goto bad;
	op->mapped = true;
	mine = (uint8_t *)(uintptr_t)b->laddr;
	area = a->map + b->xaddr;
	if (dir == SHM_BULK_READ)
		memcpy(mine, area, b->len);
	else
		memcpy(area, mine, b->len);
	if (staged &&
	    (rc = bulk_msg_send(c, dir == SHM_BULK_READ ? SHM_MSG_BULK_FREE : SHM_MSG_BULK_FILLED,
				&back, -1))) {
		bulk_send_failed(c, rc);
		return;
	}
	/* A staged write is over when the exporter says so (BULK_DONE). */
	if (dir == SHM_BULK_READ || !staged)
		bop_part_done(c, op, 0);
	return;
bad:
	if (fd >= 0)
		close(fd);
	conn_failed(c, rc, why);
}

/* The exporter takes area b->key back. */
static void bulk_on_unmap(struct sconn *c, const struct shm_bulk *b)
{
	struct shm_area *a;

	if (b->key >= SHM_MAX_AREAS) {
		conn_failed(c, TERN_EPEER, "shm: the peer unmapped an area out of range");
		return;
	}
	if (!c->areas || !(a = &c->areas[b->key])->map)
		return; /* never mapped (its BULK_MAP failed to go out): nothing to do */
	c->t->mem.staging_shared -= a->size;
	munmap(a->map, a->size);
	a->map = NULL;
	a->size = 0;
}

/* A bulk message, judged by its type; @fd: a descriptor it brought (BULK_MAP only), or -1. */
static void bulk_on_msg(struct sconn *c, uint16_t type, const struct shm_bulk *b, int fd)
{
	switch (type) {
	case SHM_MSG_BULK_REQ:
		bulk_on_req(c, b);
		break;
	case SHM_MSG_BULK_DONE:
		bulk_on_done(c, b);
		break;
	case SHM_MSG_BULK_SPLIT:
		bulk_on_split(c, b);
		break;
	case SHM_MSG_BULK_MAP:
		bulk_on_map(c, b, fd);
		break;
	case SHM_MSG_BULK_FREE:
	case SHM_MSG_BULK_FILLED:
		bulk_on_staged(c, b, type == SHM_MSG_BULK_FILLED);
		break;
	default:
		bulk_on_unmap(c, b);
		break;
	}
}

/* Every area, both ways, goes with the connection. */
static void areas_free(struct sconn *c)
{
	for (uint32_t i = 0; c->lent && i < SHM_MAX_AREAS; i++)
		if (c->lent[i].used)
			lent_retire(c, i, false);
	for (uint32_t i = 0; c->areas && i < SHM_MAX_AREAS; i++)
		if (c->areas[i].map) {
			c->t->mem.staging_shared -= c->areas[i].size;
			munmap(c->areas[i].map, c->areas[i].size);
		}
	free(c->lent);
	free(c->areas);
	c->lent = NULL;
	c->areas = NULL;
}

static void bulk_fail_all(struct sconn *c, int err)
{
	for (uint32_t i = 0; i < SHM_BULK_OPS; i++) {
		if (c->bops[i].busy) {
			c->bops[i].busy = false;
			c->bops_live--;
			c->t->ev->bulk_done(&c->base, c->bops[i].cookie, err);
		}
	}
}

static int bulk_ask(struct sconn *c, uint32_t op, const struct tern_bulk_desc *remote,
		    struct tern_tmem *m, size_t off, size_t len, uint64_t cookie)
{
	struct shm_bulk b = {.xaddr = remote->addr, .len = len, .key = remote->key, .op = op};
	struct shm_bop *o = NULL;
	uint32_t i;
	int rc;

	if (c->state != SC_UP)
		return -ENOTCONN;
	if (len == 0 || off > m->len || len > m->len - off || len > remote->len)
		return -EINVAL;
	for (i = 0; i < SHM_BULK_OPS; i++)
		if (!c->bops[i].busy) {
			o = &c->bops[i];
			break;
		}
	if (!o)
		return -EAGAIN;
	o->gen = (o->gen + 1) & 0xffffffu;
	b.laddr = (uint64_t)(uintptr_t)m->addr + off;
	b.token = o->gen << 8 | i;
	if (c->vm == VM_DENIED)
		b.op |= SHM_BULK_NOSPLIT;
	if ((rc = bulk_msg_send(c, SHM_MSG_BULK_REQ, &b, -1)))
		return rc == -EPIPE ? -ECONNRESET : rc;
	o->busy = true;
	o->cookie = cookie;
	o->split = false;
	o->mapped = false;
	o->dones = 1;
	o->status = 0;
	o->req = b;
	c->bops_live++;
	return 0;
}

static int shm_bulk_read(struct tern_conn *bc, const struct tern_bulk_desc *remote,
			 struct tern_tmem *m, size_t off, size_t len, uint64_t cookie)
{
	return bulk_ask(C(bc), SHM_BULK_READ, remote, m, off, len, cookie);
}

static int shm_bulk_write(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			  const struct tern_bulk_desc *remote, uint64_t cookie)
{
	return bulk_ask(C(bc), SHM_BULK_WRITE, remote, m, off, len, cookie);
}

/* ---- the context --------------------------------------------------------------------------------
 */

static int shm_ctx_init(tern_ctx *ctx, uv_loop_t *loop, const struct tern_transport_events *ev,
			struct tern_tctx **out)
{
	struct shm_tctx *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	t->ctx = ctx;
	t->loop = loop;
	t->ev = ev;
	t->mode = TERN_TRANSPORT_POLLED;
	tern_link_init(&t->up);
	tern_link_init(&t->maps);
	*out = (struct tern_tctx *)t;
	return 0;
}

static void shm_mem_stats(struct tern_tctx *tt, struct tern_mem_stats *acc)
{
	struct shm_tctx *t = T(tt);

	tern_mem_stats_add(acc, &t->mem);
	acc->slots_shared_resident += tern_memmap_resident(&t->maps);
}

static void shm_ctx_fini(struct tern_tctx *tt)
{
	struct shm_tctx *t = T(tt);

	/* Connections and listeners are closed; let their handles finish. */
	while (t->open_handles > 0)
		uv_run(t->loop, UV_RUN_NOWAIT);
	free(t);
}

static int shm_poll(struct tern_tctx *tt, int budget)
{
	struct shm_tctx *t = T(tt);
	int n = 0;

	t->in_poll++;
	settle_doorbells(t);
	for (struct tern_link *l = t->up.next; l != &t->up; l = l->next) {
		struct sconn *c = tern_link_entry(l, struct sconn, link);

		if (c->state != SC_UP)
			continue;
		if (n < budget) {
			n += conn_poll(c, budget - n);
			/*
			 * While bulk transfers may be asked for or answered,
			 * look at the socket here too (one recvmsg): a busy
			 * context returns to libuv's epoll only every
			 * busy_spin_ns, which would add that much to every
			 * large message.  Small calls pay nothing.
			 */
			if (c->state == SC_UP && (c->xt.live || c->bops_live))
				n += up_on_socket(c);
		}
		/*
		 * Slots the engine gave back wait one poll for a message to
		 * ride on (the usual case: it replies, or calls again, at
		 * once); after that they go out alone, so a peer waiting for
		 * slots waits one spin.  Every connection, past the budget
		 * too: returns are not work the budget bounds.
		 */
		if (!c->nrets || c->state != SC_UP)
			continue;
		if (!c->rets_waited)
			c->rets_waited = true;
		else if (flush_rets(c))
			conn_failed(c, TERN_EPEER, "shm: the peer's index says its ring is full");
	}
	poll_exit(t);
	return n;
}

static int shm_set_mode(struct tern_tctx *tt, enum tern_transport_mode mode)
{
	struct shm_tctx *t = T(tt);
	int n = 0;

	settle_doorbells(t); /* checks owed from polled mode, before leaving it */
	t->mode = mode;
	for (struct tern_link *l = t->up.next; l != &t->up; l = l->next) {
		struct sconn *c = tern_link_entry(l, struct sconn, link);

		if (c->state != SC_UP)
			continue;
		if (mode == TERN_TRANSPORT_EVENTS)
			n += conn_arm(c);
		else
			conn_disarm(c);
	}
	return n;
}

const struct tern_transport_ops tern_shm_transport = {
	.scheme = "shm",
	.uri_form = TERN_URI_NAME,
	.ctx_init = shm_ctx_init,
	.ctx_fini = shm_ctx_fini,
	.listen = shm_listen,
	.listener_close = shm_listener_close,
	.adopt_listen = shm_adopt_listen,
	.adopt = shm_adopt,
	.connect = shm_connect,
	.post_send = shm_post_send,
	.post_recv = shm_post_recv,
	.disconnect = shm_disconnect,
	.poll = shm_poll,
	.set_mode = shm_set_mode,
	.bulk_max = shm_bulk_max,
	.bulk_export = shm_bulk_export,
	.bulk_read = shm_bulk_read,
	.bulk_write = shm_bulk_write,
	.mem_release = shm_mem_release,
	.bulk_unexport = shm_bulk_unexport,
	.mem_stats = shm_mem_stats,
};
