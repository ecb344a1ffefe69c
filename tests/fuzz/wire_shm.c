// SPDX-License-Identifier: MIT
/*
 * wire_shm.c - the fuzzing peer over shm://, by hand: the real provider
 * (transport/shm/shm.c) on the engine's side, and on the peer's side this
 * file, speaking shm_layout.h over a socket and a segment in this same
 * process.  The peer is the client when the engine listens and the server
 * (making the segment) when the engine connects.
 *
 * Honest, it does what shm.c does: messages in its own free slots, one
 * descriptor each, returns of the engine's slots riding on them or alone,
 * indices published with release stores; bulk requests answered after
 * checking its own exports, and its reads and writes of the engine's
 * exports asked for with BULK_REQ.  Its hostile op writes whatever the
 * input says into indices, descriptors, wake words, slot bytes and the
 * segment at large, rings doorbells, and sends socket messages of any
 * shape, with or without descriptors attached.
 *
 * Both sides are one process, so whatever the provider copies with
 * process_vm_* lands in this process too: the peer only ever names its
 * own buffers as the place for the engine's copies, and splits only
 * transfers it has checked, so that a hostile input cannot make the
 * engine scribble over the harness (it could only hurt itself, were it a
 * process of its own).
 *
 * Without ptrace (shm_layout.h, BULK_MAP): the peer answers the engine's
 * requests in turn with a BULK_DONE (as process_vm would), a staged area
 * (then waits for FREE or FILLED) or a direct one; and it copies through
 * the areas the engine answers its own requests with, which the engine
 * does with the setup byte's 0x01 bit (fuzz_shm.c sets TERN_SHM_NO_PTRACE).
 * The hostile op sends areas too: sealed memfds, unsealed ones, any
 * offsets and ids.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tern.h"
#include "../../transport/common/xtab.h"
#include "scm.h"
#include "shm_layout.h"
#include "wire.h"

#define BULK_HELD 64
#define AREA_IDS  8	      /* the ids the peer lends areas under */
#define AREA_SIZE (64u << 10) /* ...each this big: FZ_MAX_MSG fits */
#define ASKS	  64	      /* our own requests remembered, by token */

struct bulk_req {
	struct shm_bulk b;
};

static struct {
	bool server; /* we made the segment (the engine connected) */
	enum fz_wire_state state;
	int lsock; /* client role: our listening socket, for every run */
	int sock;
	int bell;      /* ours */
	int peer_bell; /* the engine's */
	uint8_t *seg;
	struct shm_geom g;
	int tx, rx; /* directions */
	uint32_t tx_tail, rx_head;
	uint8_t sent[FZ_NSLOTS];  /* our slot i is with the engine */
	uint32_t rets[FZ_NSLOTS]; /* the engine's slots we are done with */
	uint32_t nrets;
	uint32_t held[FZ_NSLOTS]; /* ...or hold (its sends stay incomplete) */
	uint32_t nheld;
	bool hold_sends, hold_bulk;
	struct shm_bulk breq[BULK_HELD]; /* the engine's bulk requests we hold */
	uint32_t nbreq;
	struct tern_xtab xt; /* our exports */
	struct tern_tmem pmem_tm;
	uint32_t token;			  /* our bulk requests' names */
	struct shm_bulk asks[ASKS];	  /* ...and what they asked, by token % ASKS */
	uint8_t *lent[AREA_IDS];	  /* areas we lent the engine (mapped here too) */
	struct shm_bulk staged[AREA_IDS]; /* the request a staged area serves (len 0: none) */
	struct {
		uint8_t *map;
		uint64_t size;
	} areas[SHM_MAX_AREAS]; /* areas the engine lent us */
	uint32_t served;	/* requests answered, to take turns between the ways */
	char name[64];
	char peer_name[64];
	char uri[96];
	bool scribbled;	   /* a hostile op wrote over the engine's half */
	bool sock_hostile; /* a hostile op sent a socket message */
} W;

static uint8_t landing[FZ_MAX_MSG + 64]; /* where the engine copies what we read */

/* ---- the socket ------------------------------------------------------------------ */

static void abstract(const char *name, struct sockaddr_un *sa, socklen_t *len)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "%s%s", SHM_ABSTRACT_PREFIX, name);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(sa->sun_path + 1));
}

static int msg_out(const void *m, size_t len, const int *fds, int nfds)
{
	if (W.sock < 0)
		return -ENOTCONN;
	return scm_send(W.sock, m, len, fds, nfds, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void msg_init(struct shm_msg *m, uint16_t type)
{
	memset(m, 0, sizeof(*m));
	m->magic = SHM_MSG_MAGIC;
	m->version = SHM_PROTO_VERSION;
	m->type = type;
	m->slot_size = W.g.slot_size;
	m->nslots = W.g.nslots;
}

/* One message and up to 2 descriptors (@fds NULL: none kept); -EAGAIN
 * when there is none. */
static ssize_t msg_in(int fd, struct shm_msg *m, int *fds, int *nfds)
{
	memset(m, 0, sizeof(*m));
	return scm_recv(fd, m, sizeof(*m), fds, 2, nfds, MSG_DONTWAIT);
}

static void bug(const char *what) __attribute__((noreturn));

static void bug(const char *what)
{
	fprintf(stderr, "wire_shm: the provider %s\n", what);
	abort();
}

/* ---- the segment --------------------------------------------------------------------- */

static _Atomic uint32_t *word(int d, enum shm_ctl w)
{
	return shm_dir_word(W.seg, &W.g, d, w);
}

static void view(bool server)
{
	W.server = server;
	W.tx = server ? 1 : 0;
	W.rx = 1 - W.tx;
	W.pmem_tm.addr = fz_pmem;
	W.pmem_tm.len = sizeof(fz_pmem);
}

/* Put descriptor {slot, len, ret} at our tail and publish it. */
static void desc_put(uint32_t slot, uint32_t len, uint32_t ret)
{
	struct shm_desc *d = &shm_descs(W.seg, &W.g, W.tx)[W.tx_tail & (W.g.ring_size - 1)];

	atomic_store_explicit(&d->slot, slot, memory_order_relaxed);
	atomic_store_explicit(&d->len, len, memory_order_relaxed);
	atomic_store_explicit(&d->ret, ret, memory_order_relaxed);
	W.tx_tail++;
	/* the slot's bytes and the descriptor before the tail that announces them */
	atomic_store_explicit(word(W.tx, SHM_TAIL), W.tx_tail, memory_order_release);
}

static void flush_rets(void)
{
	while (W.nrets)
		desc_put(SHM_NONE, 0, W.rets[--W.nrets]);
}

/* The engine's descriptors: its messages, and our slots it gives back. */
static void take_in(void)
{
	uint32_t tail;

	if (W.state != FZ_UP || !W.seg)
		return;
	tail = atomic_load_explicit(word(W.rx, SHM_TAIL), memory_order_acquire);
	if (tail - W.rx_head > 2 * W.g.nslots) {
		if (!W.scribbled)
			bug("published more descriptors than it can have unread");
		return;
	}
	while (W.rx_head != tail) {
		const struct shm_desc *d =
			&shm_descs(W.seg, &W.g, W.rx)[W.rx_head & (W.g.ring_size - 1)];
		uint32_t slot = atomic_load_explicit(&d->slot, memory_order_relaxed);
		uint32_t len = atomic_load_explicit(&d->len, memory_order_relaxed);
		uint32_t ret = atomic_load_explicit(&d->ret, memory_order_relaxed);

		W.rx_head++;
		if (ret != SHM_NONE) {
			/* a slot of ours it never had is ours to complain of only
			 * if we were honest: a hostile op may have told it so */
			if (ret < W.g.nslots)
				W.sent[ret] = 0;
		}
		if (slot == SHM_NONE)
			continue;
		if (slot >= W.g.nslots || len > W.g.slot_size) {
			if (!W.scribbled)
				bug("described a message outside its slots");
			continue;
		}
		fz_engine_msg(shm_slots(W.seg, &W.g, W.rx) + (size_t)slot * W.g.slot_size, len);
		if (W.hold_sends)
			W.held[W.nheld++ % FZ_NSLOTS] = slot;
		else
			W.rets[W.nrets++ % FZ_NSLOTS] = slot;
	}
	atomic_store_explicit(word(W.rx, SHM_HEAD), W.rx_head, memory_order_release);
	flush_rets();
}

/* ---- bulk ------------------------------------------------------------------------------- */

static void bulk_done(uint32_t token, int32_t status)
{
	struct shm_msg m;
	struct shm_bulk d = {.token = token, .status = status};

	msg_init(&m, SHM_MSG_BULK_DONE);
	memcpy(m.hs, &d, sizeof(d));
	msg_out(&m, sizeof(m), NULL, 0);
}

static int msg_bulk(uint16_t type, const struct shm_bulk *b, int fd)
{
	struct shm_msg m;

	msg_init(&m, type);
	memcpy(m.hs, b, sizeof(*b));
	return msg_out(&m, sizeof(m), &fd, fd >= 0 ? 1 : 0);
}

/* A sealed memfd of @size bytes, as shm.c makes them, mapped at *@map. */
static int area_make(size_t size, bool seal, uint8_t **map)
{
	int fd = memfd_create("fz-area", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0 || ftruncate(fd, (off_t)size) ||
	    (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)))
		bug("could not be given a memfd (the harness's fault)");
	*map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (*map == MAP_FAILED)
		bug("could not be given a memfd mapping (the harness's fault)");
	return fd;
}

/*
 * Answer the engine's request @b (checked) with an area: @staged, one of
 * ours holding a copy (READ) or to be filled (WRITE); else (READ only) id
 * 0, a mirror of fz_pmem as it is now, which the engine copies from alone,
 * the way it would from a tern_mem_alloc() region.
 */
static void bulk_lend(const struct shm_bulk *b, uint32_t op, bool staged)
{
	struct shm_bulk mp = {.len = b->len, .laddr = b->laddr, .token = b->token, .op = op};
	uint32_t id = 0;
	int fd = -1;

	if (staged || op == SHM_BULK_WRITE) {
		for (id = 1; id < AREA_IDS && W.staged[id].len; id++)
			;
		if (id == AREA_IDS) { /* all busy: copy as process_vm would */
			if (op == SHM_BULK_READ)
				memcpy((void *)(uintptr_t)b->laddr, (void *)(uintptr_t)b->xaddr,
				       b->len);
			else
				memcpy((void *)(uintptr_t)b->xaddr, (void *)(uintptr_t)b->laddr,
				       b->len);
			bulk_done(b->token, 0);
			return;
		}
		W.staged[id] = *b;
		mp.op |= SHM_MAP_STAGED;
	} else {
		mp.xaddr = b->xaddr - (uint64_t)(uintptr_t)fz_pmem; /* exports lie in fz_pmem */
	}
	if (!W.lent[id])
		fd = area_make(AREA_SIZE, true, &W.lent[id]);
	if (id == 0)
		memcpy(W.lent[0], fz_pmem, sizeof(fz_pmem));
	else if (op == SHM_BULK_READ)
		memcpy(W.lent[id], (void *)(uintptr_t)b->xaddr, b->len);
	mp.key = id;
	msg_bulk(SHM_MSG_BULK_MAP, &mp, fd);
	if (fd >= 0)
		close(fd);
}

/* Answer the engine's request for our memory, as shm.c's exporter would. */
static void bulk_serve(const struct shm_bulk *b, int status)
{
	uint32_t op = b->op & SHM_BULK_OP_MASK;
	const struct tern_xent *e = NULL;

	if ((op == SHM_BULK_READ || op == SHM_BULK_WRITE) && b->len)
		e = tern_xtab_check(&W.xt, b->key, b->xaddr, b->len, op == SHM_BULK_WRITE);
	if (!e) {
		/* what shm.c does to a peer naming memory it was not given */
		W.state = FZ_GONE;
		shutdown(W.sock, SHUT_RDWR);
		return;
	}
	/* every other request, and any split half, goes through an area */
	if (status == 0 && !(b->op & SHM_BULK_NOSPLIT) && W.served++ % 3 && b->len <= AREA_SIZE) {
		bulk_lend(b, op, W.served % 3 == 1);
		return;
	}
	if (status == 0) {
		/* the engine's laddr is its own staging: copy as process_vm would */
		if (op == SHM_BULK_READ)
			memcpy((void *)(uintptr_t)b->laddr, (void *)(uintptr_t)b->xaddr, b->len);
		else
			memcpy((void *)(uintptr_t)b->xaddr, (void *)(uintptr_t)b->laddr, b->len);
	}
	bulk_done(b->token, status);
}

/* The engine gave back staged area @id: FREE after a read, FILLED after a write. */
static void bulk_given_back(const struct shm_bulk *b, bool filled)
{
	struct shm_bulk *q = b->key < AREA_IDS ? &W.staged[b->key] : NULL;

	if (!q || !q->len || q->token != b->token ||
	    (q->op & SHM_BULK_OP_MASK) != (filled ? SHM_BULK_WRITE : SHM_BULK_READ)) {
		if (!W.sock_hostile) /* else our own forged MAP may have led it on */
			bug("gave back an area it was not lent");
		return;
	}
	if (filled)
		memcpy((void *)(uintptr_t)q->xaddr, W.lent[b->key], q->len);
	if (filled)
		bulk_done(b->token, 0);
	q->len = 0;
}

/* The engine answered our request with an area: copy through it as shm.c does. */
static void bulk_mapped(const struct shm_bulk *b, int fd)
{
	struct shm_bulk *q = &W.asks[b->token % ASKS];
	uint32_t dir = b->op & SHM_BULK_OP_MASK;
	struct shm_bulk back = {.key = b->key, .token = b->token};
	struct stat st;
	uint8_t *p;

	if (!q->len || q->token != b->token || b->key >= SHM_MAX_AREAS || b->len != q->len ||
	    b->laddr != q->laddr || dir != (q->op & SHM_BULK_OP_MASK)) {
		if (fd >= 0)
			close(fd);
		if (!W.sock_hostile) /* else it may answer our forged requests */
			bug("mapped a transfer nobody asked for");
		return;
	}
	if (fd >= 0) {
		if (fstat(fd, &st) || st.st_size <= 0)
			bug("lent an area that is no file");
		p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
		if (p == MAP_FAILED)
			bug("lent an area we cannot map");
		if (W.areas[b->key].map)
			munmap(W.areas[b->key].map, W.areas[b->key].size);
		W.areas[b->key].map = p;
		W.areas[b->key].size = (uint64_t)st.st_size;
	}
	if (!W.areas[b->key].map || b->xaddr > W.areas[b->key].size ||
	    b->len > W.areas[b->key].size - b->xaddr)
		bug("mapped an area out of bounds");
	p = W.areas[b->key].map + b->xaddr;
	if (dir == SHM_BULK_READ)
		memcpy((void *)(uintptr_t)q->laddr, p, b->len);
	else
		memcpy(p, (void *)(uintptr_t)q->laddr, b->len);
	q->len = 0;
	if (b->op & SHM_MAP_STAGED)
		msg_bulk(dir == SHM_BULK_READ ? SHM_MSG_BULK_FREE : SHM_MSG_BULK_FILLED, &back, -1);
}

static void bulk_unmapped(const struct shm_bulk *b)
{
	if (b->key >= SHM_MAX_AREAS)
		bug("unmapped an area out of range");
	if (W.areas[b->key].map)
		munmap(W.areas[b->key].map, W.areas[b->key].size);
	W.areas[b->key].map = NULL;
}

static void sock_in(void)
{
	for (int i = 0; i < 16 && W.sock >= 0 && W.state == FZ_UP; i++) {
		struct shm_msg m;
		struct shm_bulk b;
		int fds[2], nfds = 0;
		ssize_t n = msg_in(W.sock, &m, fds, &nfds);

		if (n == -EAGAIN)
			return;
		if (n <= 0) {
			W.state = FZ_GONE;
			return;
		}
		memcpy(&b, m.hs, sizeof(b));
		if (nfds && (m.type != SHM_MSG_BULK_MAP || nfds > 1))
			bug("sent a descriptor with a message that takes none");
		if (m.type == SHM_MSG_BULK_REQ) {
			if (W.hold_bulk && W.nbreq < BULK_HELD)
				W.breq[W.nbreq++] = b;
			else
				bulk_serve(&b, 0);
		} else if (m.type == SHM_MSG_BULK_MAP) {
			bulk_mapped(&b, nfds ? fds[0] : -1);
		} else if (m.type == SHM_MSG_BULK_FREE || m.type == SHM_MSG_BULK_FILLED) {
			bulk_given_back(&b, m.type == SHM_MSG_BULK_FILLED);
		} else if (m.type == SHM_MSG_BULK_UNMAP) {
			bulk_unmapped(&b);
		} else if (m.type == SHM_MSG_BULK_DONE && W.asks[b.token % ASKS].token == b.token) {
			W.asks[b.token % ASKS].len = 0; /* answered: its slot is free again */
		}
	}
}

/* ---- the handshake ------------------------------------------------------------------------ */

static const char *shm_listen_uri(void)
{
	snprintf(W.name, sizeof(W.name), "fz-shm-%d", (int)getpid());
	snprintf(W.uri, sizeof(W.uri), "shm://%s", W.name);
	W.sock = W.lsock = W.bell = W.peer_bell = -1;
	return W.uri;
}

static void reset(void)
{
	W.state = FZ_WAITING;
	W.sock = W.bell = W.peer_bell = -1;
	W.seg = NULL;
	W.tx_tail = W.rx_head = 0;
	memset(W.sent, 0, sizeof(W.sent));
	W.nrets = W.nheld = W.nbreq = 0;
	W.hold_sends = W.hold_bulk = false;
	W.scribbled = W.sock_hostile = false;
	tern_xtab_free(&W.xt);
	/* areas both ways go with the connection, as in shm.c */
	for (int i = 0; i < AREA_IDS; i++) {
		if (W.lent[i])
			munmap(W.lent[i], AREA_SIZE);
		W.lent[i] = NULL;
	}
	for (int i = 0; i < SHM_MAX_AREAS; i++)
		if (W.areas[i].map)
			munmap(W.areas[i].map, W.areas[i].size);
	memset(W.areas, 0, sizeof(W.areas));
	memset(W.staged, 0, sizeof(W.staged));
	memset(W.asks, 0, sizeof(W.asks));
}

static int shm_connect(const char *uri, const void *hs, size_t len)
{
	struct sockaddr_un sa;
	struct shm_msg m;
	socklen_t sl;

	(void)uri;
	reset();
	view(false);
	shm_geom_init(&W.g, FZ_SLOT, FZ_NSLOTS);
	W.sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	W.bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	abstract(W.name, &sa, &sl);
	if (W.sock < 0 || W.bell < 0 || connect(W.sock, (struct sockaddr *)&sa, sl))
		return -errno;
	msg_init(&m, SHM_MSG_HELLO);
	m.hs_len = len < TERN_HANDSHAKE_MAX ? (uint32_t)len : TERN_HANDSHAKE_MAX;
	memcpy(m.hs, hs, m.hs_len);
	return msg_out(&m, sizeof(m), &W.bell, 1);
}

/* Client side of the handshake: the engine's ACCEPT (or REFUSE). */
static void client_answer(void)
{
	struct shm_msg m;
	int fds[2], nfds;
	ssize_t n = msg_in(W.sock, &m, fds, &nfds);

	if (n == -EAGAIN)
		return;
	if (n <= 0 || m.type != SHM_MSG_ACCEPT || nfds != 2) {
		for (int k = 0; k < nfds; k++)
			close(fds[k]);
		W.state = n > 0 && m.type == SHM_MSG_REFUSE ? FZ_REFUSED : FZ_GONE;
		return;
	}
	if (m.seg_size != W.g.size)
		bug("sent a segment of the wrong size");
	W.seg = mmap(NULL, W.g.size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	close(fds[0]);
	W.peer_bell = fds[1];
	if (W.seg == MAP_FAILED)
		bug("sent a segment that does not map");
	msg_init(&m, SHM_MSG_READY);
	msg_out(&m, sizeof(m), NULL, 0);
	W.state = FZ_UP;
}

static const char *shm_listen(void)
{
	struct sockaddr_un sa;
	socklen_t sl;

	reset();
	view(true);
	if (W.lsock < 0) {
		snprintf(W.peer_name, sizeof(W.peer_name), "fz-shm-peer-%d", (int)getpid());
		W.lsock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		abstract(W.peer_name, &sa, &sl);
		if (W.lsock < 0 || bind(W.lsock, (struct sockaddr *)&sa, sl) || listen(W.lsock, 4))
			return NULL;
	}
	snprintf(W.uri, sizeof(W.uri), "shm://%s", W.peer_name);
	return W.uri;
}

/* Server side: the engine's connect and HELLO. */
static void server_hello(void)
{
	struct shm_msg m;
	int fds[2], nfds;
	ssize_t n;

	if (W.sock < 0) {
		W.sock = accept4(W.lsock, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (W.sock < 0)
			return;
	}
	if (W.peer_bell >= 0)
		return; /* HELLO seen: waiting for our answer */
	n = msg_in(W.sock, &m, fds, &nfds);
	if (n == -EAGAIN)
		return;
	if (n <= 0) {
		W.state = FZ_GONE; /* it gave up */
		return;
	}
	if (n != sizeof(m) || m.type != SHM_MSG_HELLO || nfds != 1)
		bug("connected without a proper HELLO");
	if (shm_geom_init(&W.g, m.slot_size, m.nslots) || m.slot_size != FZ_SLOT ||
	    m.nslots != FZ_NSLOTS)
		bug("asked for another geometry");
	W.peer_bell = fds[0];
	fz_engine_hello(m.hs, m.hs_len);
}

static int segment_make(void)
{
	struct shm_seg_hdr *h;
	int fd = memfd_create("fz-shm", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0 || ftruncate(fd, (off_t)W.g.size) ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
		bug("(harness) cannot make a segment");
	W.seg = mmap(NULL, W.g.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (W.seg == MAP_FAILED)
		bug("(harness) cannot map a segment");
	h = (struct shm_seg_hdr *)W.seg;
	h->magic = SHM_SEG_MAGIC;
	h->version = SHM_PROTO_VERSION;
	h->slot_size = W.g.slot_size;
	h->nslots = W.g.nslots;
	h->ring_size = W.g.ring_size;
	h->size = W.g.size;
	return fd;
}

static void shm_answer(bool accept, int32_t status, const void *hs, size_t len)
{
	struct shm_msg m;
	int fds[2];

	msg_init(&m, accept ? SHM_MSG_ACCEPT : SHM_MSG_REFUSE);
	m.status = status;
	m.hs_len = len < TERN_HANDSHAKE_MAX ? (uint32_t)len : TERN_HANDSHAKE_MAX;
	memcpy(m.hs, hs, m.hs_len);
	if (!accept) {
		msg_out(&m, sizeof(m), NULL, 0);
		W.state = FZ_REFUSED;
		return;
	}
	W.bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	fds[0] = segment_make();
	fds[1] = W.bell;
	m.seg_size = W.g.size;
	msg_out(&m, sizeof(m), fds, 2);
	close(fds[0]);
	W.state = FZ_WAITING; /* until READY */
	W.server = true;
}

static void server_ready(void)
{
	struct shm_msg m;
	ssize_t n = msg_in(W.sock, &m, NULL, NULL);

	if (n == -EAGAIN)
		return;
	W.state = n > 0 && m.type == SHM_MSG_READY ? FZ_UP : FZ_GONE;
}

static enum fz_wire_state shm_state(void)
{
	return W.state;
}

/* ---- messages ------------------------------------------------------------------------------ */

static int shm_send(const void *buf, uint32_t len)
{
	uint32_t slot, ret = SHM_NONE;

	if (W.state != FZ_UP)
		return -ENOTCONN;
	for (slot = 0; slot < W.g.nslots && W.sent[slot]; slot++)
		;
	if (slot == W.g.nslots)
		slot = 0; /* none free: the engine must refuse it */
	if (len > W.g.slot_size)
		len = W.g.slot_size + 1; /* what it must refuse, not our overrun */
	memcpy(shm_slots(W.seg, &W.g, W.tx) + (size_t)slot * W.g.slot_size, buf,
	       len <= W.g.slot_size ? len : W.g.slot_size);
	W.sent[slot] = 1;
	if (W.nrets)
		ret = W.rets[--W.nrets];
	desc_put(slot, len, ret);
	return 0;
}

static void shm_pump(void)
{
	tern_ctx *ctx = fz_ctx();

	tern_ctx_poll(ctx, 64);
	uv_run(tern_ctx_loop(ctx), UV_RUN_NOWAIT);
	if (W.server && W.state == FZ_WAITING) {
		if (W.seg)
			server_ready();
		else if (W.lsock >= 0)
			server_hello();
	} else if (!W.server && W.state == FZ_WAITING && W.sock >= 0) {
		client_answer();
	}
	take_in();
	sock_in();
}

static void shm_hold(bool sends, bool bulk)
{
	W.hold_sends = sends;
	W.hold_bulk = bulk;
	if (!sends) {
		while (W.nheld)
			W.rets[W.nrets++ % FZ_NSLOTS] = W.held[--W.nheld % FZ_NSLOTS];
		if (W.state == FZ_UP)
			flush_rets();
	}
	while (!bulk && W.nbreq && W.state == FZ_UP)
		bulk_serve(&W.breq[--W.nbreq], 0);
}

static uint32_t shm_complete_sends(uint32_t n)
{
	uint32_t k = 0;

	while (k < n && W.nheld) {
		W.rets[W.nrets++ % FZ_NSLOTS] = W.held[--W.nheld % FZ_NSLOTS];
		k++;
	}
	if (W.state == FZ_UP)
		flush_rets();
	return k;
}

static uint32_t shm_bulk_pending(void)
{
	return W.state == FZ_UP ? W.nbreq : 0;
}

static int shm_complete_bulk(uint32_t i, int status)
{
	struct shm_bulk b;

	if (i >= W.nbreq)
		return -EINVAL;
	b = W.breq[i];
	memmove(&W.breq[i], &W.breq[i + 1], (W.nbreq - i - 1) * sizeof(b));
	W.nbreq--;
	bulk_serve(&b, status);
	return 0;
}

static int shm_expose(size_t off, size_t len, int writable, struct tern_bulk_desc *out)
{
	return tern_xtab_add(&W.xt, &W.pmem_tm, off, len, writable, out);
}

/* Ask the engine to copy (READ: into our landing buffer) or to take our
 * bytes (WRITE) through its export @d. */
static int bulk_ask(const struct tern_bulk_desc *d, const void *buf, bool write)
{
	struct shm_msg m;
	struct shm_bulk b = {
		.xaddr = d->addr,
		.len = d->len,
		.laddr = (uint64_t)(uintptr_t)(write ? buf : landing),
		.key = d->key,
		.token = ++W.token,
		.op = write ? SHM_BULK_WRITE : SHM_BULK_READ,
	};

	if (W.state != FZ_UP)
		return -ENOTCONN;
	if (d->len > sizeof(landing))
		return -EINVAL; /* the engine would copy past our buffer */
	/* Its slot still holds an ask the engine has not answered: asking
	 * again would forget that one, and the engine's answer to it would
	 * then look like an answer to nothing (found by the campaign). */
	if (W.asks[b.token % ASKS].len) {
		W.token--;
		return -EBUSY;
	}
	W.asks[b.token % ASKS] = b; /* for its BULK_MAP, if it answers with one */
	msg_init(&m, SHM_MSG_BULK_REQ);
	memcpy(m.hs, &b, sizeof(b));
	return msg_out(&m, sizeof(m), NULL, 0);
}

static int shm_read(const struct tern_bulk_desc *d, void *buf)
{
	(void)buf;
	return bulk_ask(d, NULL, false);
}

static int shm_write(const struct tern_bulk_desc *d, const void *buf)
{
	return bulk_ask(d, buf, true);
}

/* ---- hostile ------------------------------------------------------------------------------ */

static void shm_hostile(void)
{
	uint8_t op = fz_u8();
	struct {
		struct shm_msg m;
		uint8_t past[8]; /* a message may run past the struct: zeros */
	} big = {0};
	struct shm_msg *mp = &big.m;
	int fds[2], nfds = 0;

	if (W.state != FZ_UP && op % 10 < 8)
		return;
	switch (op % 10) {
	case 0: /* our tail: anywhere */
		W.tx_tail = op & 0x80 ? W.tx_tail + fz_u8() : fz_u32();
		atomic_store_explicit(word(W.tx, SHM_TAIL), W.tx_tail, memory_order_release);
		break;
	case 1: /* a descriptor of any content */
		desc_put(fz_u32(), fz_u32(), fz_u32());
		break;
	case 2: /* a return of a slot it does not have, or twice */
		desc_put(SHM_NONE, 0, op & 0x80 ? fz_u8() % (W.g.nslots + 2) : fz_u32());
		break;
	case 3: /* our head of its ring: anywhere */
		atomic_store_explicit(word(W.rx, SHM_HEAD), fz_u32(), memory_order_release);
		break;
	case 4: /* the wake words */
		atomic_store_explicit(&shm_ctl(W.seg, &W.g, SHM_WAKE + (op >> 7))->v, fz_u32(),
				      memory_order_relaxed);
		break;
	case 5: /* bytes anywhere in the segment, the engine's half too */
	{
		uint32_t n = fz_u8() % 64 + 1;
		size_t at = fz_u32() % (W.g.size - n);

		fz_take(W.seg + at, n);
		W.scribbled = true;
		break;
	}
	case 6: /* rewrite a message the engine holds, under it */
	{
		uint32_t slot = fz_u8() % W.g.nslots;

		fz_take(shm_slots(W.seg, &W.g, W.tx) + (size_t)slot * W.g.slot_size + fz_u8() % 64,
			16);
		break;
	}
	case 7: /* its doorbell */
		if (W.peer_bell >= 0)
			(void)!eventfd_write(W.peer_bell, fz_u8() + 1);
		break;
	default: /* a socket message of any shape */
		msg_init(mp, (uint16_t)(fz_u8() % (SHM_MSG_TYPES + 1)));
		if (op & 0x80)
			fz_take(mp, sizeof(*mp));
		else
			fz_take(mp->hs, sizeof(struct shm_bulk));
		W.sock_hostile = true;
		if (op & 0x40) {
			uint8_t kind = fz_u8(), *map;

			/* an area: sealed or not, any size up to 128 KiB; or a doorbell */
			if (kind & 1) {
				size_t size = ((size_t)(kind >> 1) + 1) << 10;

				fds[nfds++] = area_make(size, kind & 0x80, &map);
				munmap(map, size);
			} else {
				fds[nfds++] = eventfd(0, EFD_CLOEXEC);
			}
		}
		msg_out(&big, op & 0x20 ? fz_u8() % sizeof(big) : sizeof(*mp), fds, nfds);
		for (int k = 0; k < nfds; k++)
			close(fds[k]);
		break;
	}
}

static void shm_close(void)
{
	if (W.sock >= 0)
		close(W.sock);
	if (W.bell >= 0)
		close(W.bell);
	if (W.peer_bell >= 0)
		close(W.peer_bell);
	if (W.seg)
		munmap(W.seg, W.g.size);
	tern_xtab_free(&W.xt);
	reset();
	W.state = FZ_GONE;
}

const struct fz_wire fz_wire_shm = {
	.name = "shm",
	.listen_uri = shm_listen_uri,
	.connect = shm_connect,
	.listen = shm_listen,
	.answer = shm_answer,
	.state = shm_state,
	.send = shm_send,
	.pump = shm_pump,
	.hold = shm_hold,
	.complete_sends = shm_complete_sends,
	.bulk_pending = shm_bulk_pending,
	.complete_bulk = shm_complete_bulk,
	.expose = shm_expose,
	.read = shm_read,
	.write = shm_write,
	.hostile = shm_hostile,
	.close = shm_close,
};
