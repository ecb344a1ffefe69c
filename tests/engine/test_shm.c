// SPDX-License-Identifier: MIT
/*
 * What only shm:// has: the zero-copy proof in two mappings of one memfd,
 * the socket's name, directory and permissions, the peer-uid check, and a
 * hostile peer on either side of the handshake and in the rings (targeted
 * attacks, then random bytes into indices, descriptors and headers).  The
 * doorbells get a cross-process stress in event and adaptive mode, where a
 * lost wake-up would hang a call.  Large messages: a hostile peer naming
 * keys it was never given, ranges past an export, a read-only export to
 * write, transfers nobody asked for, and dying mid-transfer; and a peer
 * without ptrace access, which gets -EPERM and says why.
 *
 * The hostile peers speak the provider's protocol by hand, from
 * transport/shm/shm_layout.h, in this thread: each step runs the tern loop
 * until the raw socket has something to say.
 */
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <linux/capability.h>
#include <sys/syscall.h>

#include "fixture.h"
#include "internal.h"
#include "scm.h"
#include "shm_layout.h"

extern char **environ;

#define M_ECHO	  0x300
#define M_INPLACE 0x301

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *inplace_out; /* where the inplace handler wrote its reply */

static ssize_t echo_inplace(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)u;
	if (n > cap)
		return -EMSGSIZE;
	inplace_out = out;
	memcpy(out, in, n);
	return (ssize_t)n;
}

/* Run @ctx until @fd is readable; 0 or -ETIMEDOUT. */
static int run_until_readable(tern_ctx *ctx, int fd, double timeout_s)
{
	double end = now_s() + timeout_s;
	struct pollfd p = {.fd = fd, .events = POLLIN};

	while (now_s() < end) {
		if (poll(&p, 1, 0) == 1)
			return 0;
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	}
	return -ETIMEDOUT;
}

static void run_until(tern_ctx *ctx, const bool *flag, double timeout_s)
{
	double end = now_s() + timeout_s;

	while (!*flag && now_s() < end)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
}

/* ---- zero copy: the reply is read where the handler wrote it ------------------- */

struct mapping {
	uintptr_t start, end;
	unsigned long long offset, inode;
	char dev[16];
	char path[256];
};

/* The /proc/self/maps line that holds @p. */
static bool find_mapping(const void *p, struct mapping *m)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	bool found = false;

	assert_non_null(f);
	while (!found && fgets(line, sizeof(line), f)) {
		char perms[8];
		int pos = 0;

		m->path[0] = 0;
		if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %7s %llx %15s %llu %n", &m->start,
			   &m->end, perms, &m->offset, m->dev, &m->inode, &pos) < 6)
			continue;
		if ((uintptr_t)p >= m->start && (uintptr_t)p < m->end) {
			snprintf(m->path, sizeof(m->path), "%s", line + pos);
			m->path[strcspn(m->path, "\n")] = 0;
			found = true;
		}
	}
	fclose(f);
	return found;
}

struct reply_seen {
	bool done;
	int status;
	const void *ptr;
	size_t len;
	uint8_t bytes[64];
};

static void reply_seen_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct reply_seen *r = user;

	(void)s;
	r->done = true;
	r->status = status;
	r->ptr = reply;
	r->len = len;
	memcpy(r->bytes, reply, len < sizeof(r->bytes) ? len : sizeof(r->bytes));
}

static void test_inplace_reply_is_read_in_place_from_the_same_memfd_page(void **state)
{
	struct fx f;
	struct reply_seen r = {0};
	struct mapping mc, ms;
	uint64_t srv_copies, cli_copies;

	(void)state;
	assert_int_equal(fx_setup(&f, NULL, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_inplace(f.ctx, M_INPLACE, echo_inplace, NULL), 0);
	srv_copies = f.srv->copy_bytes;
	cli_copies = f.cli->copy_bytes;
	inplace_out = NULL;
	assert_int_equal(
		tern_call(f.cli, M_INPLACE, "in place, no copy", 17, reply_seen_cb, &r, NULL), 0);
	assert_int_equal(fx_run_until(&f, &r.done, 10000), 0);
	assert_int_equal(r.status, 0);
	assert_memory_equal(r.bytes, "in place, no copy", 17);
	assert_non_null(inplace_out);

	/* Two different mappings (the client's and the server's)... */
	assert_true(find_mapping(r.ptr, &mc));
	assert_true(find_mapping(inplace_out, &ms));
	printf("client reads %p in %s, server wrote %p in %s\n", r.ptr, mc.path, inplace_out,
	       ms.path);
	assert_true(mc.start != ms.start);
	/* ...of one memfd... */
	assert_non_null(strstr(mc.path, "memfd:tern-shm"));
	assert_string_equal(mc.path, ms.path);
	assert_string_equal(mc.dev, ms.dev);
	assert_true(mc.inode == ms.inode);
	/* ...at the same offset in it: the caller reads the very bytes the
	 * handler wrote. */
	assert_true((uintptr_t)r.ptr - mc.start + mc.offset ==
		    (uintptr_t)inplace_out - ms.start + ms.offset);
	/* and neither engine copied a payload byte */
	assert_int_equal(f.srv->copy_bytes, srv_copies);
	assert_int_equal(f.cli->copy_bytes, cli_copies + 17); /* tern_call's one request copy */
	fx_teardown(&f);
}

/* ---- the socket: abstract by default, or a private directory ------------------------- */

static void echo_check(struct fx *f)
{
	uint8_t out[16];
	struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out)};

	assert_int_equal(tern_call_sync(f->cli, M_ECHO, "ping", 4, &rep, 5000), 0);
	assert_memory_equal(out, "ping", 4);
}

/* Is an abstract socket "@tern.shm.<name>" listening (/proc/net/unix)? */
static bool abstract_socket_listed(const char *name)
{
	FILE *f = fopen("/proc/net/unix", "r");
	char line[512], want[128];
	bool found = false;

	snprintf(want, sizeof(want), " @%s%s\n", SHM_ABSTRACT_PREFIX, name);
	/* flags 00010000 (__SO_ACCEPTCON): the listening socket itself, not
	 * the accepted ones, which carry its address too */
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, want) && strstr(line, " 00010000 ");
	fclose(f);
	return found;
}

static void test_default_name_is_abstract_and_leaves_no_file(void **state)
{
	struct fx f;
	char name[sizeof(f.uri)];

	(void)state;
	unsetenv("TERN_SHM_DIR");
	assert_int_equal(fx_setup(&f, NULL, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f.ctx, M_ECHO, fx_echo, NULL), 0);
	echo_check(&f);
	snprintf(name, sizeof(name), "%s", f.uri + strlen("shm://"));
	assert_true(abstract_socket_listed(name));
	assert_int_equal(tern_listener_port(f.l), 0);
	/* gone with its listener, at once, with no file to clean up */
	tern_listener_close(f.l, NULL);
	assert_false(abstract_socket_listed(name));
	assert_int_equal(tern_listen(f.ctx, f.uri, NULL, NULL, &f.l), 0);
	assert_true(abstract_socket_listed(name));
	fx_teardown(&f);
}

static void test_socket_dir_is_private_and_cleaned_up(void **state)
{
	char base[] = "/tmp/tern-shm-test-XXXXXX", dir[64], sock[300];
	struct stat st;
	struct fx f;
	tern_listener *l2;

	(void)state;
	assert_non_null(mkdtemp(base));
	snprintf(dir, sizeof(dir), "%s/run", base);
	setenv("TERN_SHM_DIR", dir, 1);
	assert_int_equal(fx_setup(&f, NULL, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f.ctx, M_ECHO, fx_echo, NULL), 0);
	echo_check(&f);
	/* the directory was made 0700, the socket is 0600 */
	assert_int_equal(lstat(dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	snprintf(sock, sizeof(sock), "%s/%s.sock", dir, f.uri + strlen("shm://"));
	assert_int_equal(lstat(sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0600);
	/* closing the listener removes it; the session lives on */
	tern_listener_close(f.l, NULL);
	f.l = NULL;
	assert_int_equal(lstat(sock, &st), -1);
	echo_check(&f);
	/* a directory others can enter is refused */
	assert_int_equal(chmod(dir, 0755), 0);
	assert_int_equal(tern_listen(f.ctx, fx_listen_uri(), NULL, NULL, &l2), -EACCES);
	fx_teardown(&f);
	unsetenv("TERN_SHM_DIR");
	rmdir(dir);
	rmdir(base);
}

static void test_malformed_shm_uris_are_clear_errors(void **state)
{
	tern_ctx *ctx;
	tern_session *s;
	tern_listener *l;
	char longname[200];

	(void)state;
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	assert_int_equal(tern_connect(ctx, "shm://bus:7", NULL, NULL, &s), -EINVAL);
	assert_non_null(strstr(tern_ctx_last_error(ctx), "takes a name and no port"));
	assert_int_equal(tern_listen(ctx, "shm://bus:0", NULL, NULL, &l), -EINVAL);
	memset(longname, 'n', sizeof(longname));
	memcpy(longname, "shm://", 6);
	longname[sizeof(longname) - 1] = 0;
	assert_int_equal(tern_listen(ctx, longname, NULL, NULL, &l), -ENAMETOOLONG);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
}

/* ---- another user on the other end ---------------------------------------------------------- */

static void drop_to_nobody(void)
{
	if (setgid(65534) || setuid(65534))
		_exit(3);
}

static int child_status(pid_t pid, tern_ctx *ctx)
{
	int st = 0;
	double end = now_s() + 20;

	while (waitpid(pid, &st, WNOHANG) == 0 && now_s() < end)
		if (ctx)
			tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static int refusals, refusal_status, accepts_seen;

static void count_accepts(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (s)
		accepts_seen++;
	else {
		refusals++;
		refusal_status = status;
	}
}

static void test_a_peer_of_another_user_is_refused_both_ways(void **state)
{
	char uri[96];
	tern_listener *l;
	tern_session *s = NULL;
	tern_ctx *ctx;
	pid_t pid;
	int pfd[2];
	char c;

	(void)state;
	if (geteuid() != 0)
		skip(); /* needs root to become another user */
	unsetenv("TERN_SHM_DIR");

	/* A client of another uid knocks on our abstract name. */
	snprintf(uri, sizeof(uri), "%s", fx_listen_uri());
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	accepts_seen = refusals = 0;
	assert_int_equal(tern_listen(ctx, uri, NULL, count_accepts, &l), 0);
	pid = fork();
	if (pid == 0) {
		tern_ctx *cc;
		tern_session *cs;
		int rc;

		drop_to_nobody();
		if (tern_ctx_create(NULL, &cc))
			_exit(2);
		rc = tern_connect_sync(cc, uri, NULL, 5000, &cs);
		if (rc != -EACCES)
			fprintf(stderr, "child: %s: %s\n", tern_err_name(rc),
				tern_ctx_last_error(cc));
		_exit(rc == -EACCES ? 0 : 1);
	}
	assert_int_equal(child_status(pid, ctx), 0);
	assert_int_equal(accepts_seen, 0);
	assert_int_equal(tern_ctx_destroy(ctx), 0);

	/* A listener of another uid squats a name; our client will not talk
	 * to it. */
	snprintf(uri, sizeof(uri), "%s", fx_listen_uri());
	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	if (pid == 0) {
		tern_ctx *sc;
		tern_listener *sl;

		drop_to_nobody();
		if (tern_ctx_create(NULL, &sc) || tern_listen(sc, uri, NULL, NULL, &sl))
			_exit(2);
		(void)!write(pfd[1], "r", 1);
		for (double end = now_s() + 10; now_s() < end;)
			tern_ctx_run(sc, TERN_RUN_NOWAIT);
		_exit(0);
	}
	assert_int_equal(read(pfd[0], &c, 1), 1);
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	assert_int_equal(tern_connect_sync(ctx, uri, NULL, 5000, &s), -EACCES);
	assert_null(s);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(pfd[0]);
	close(pfd[1]);
}

/* ---- a hostile client ---------------------------------------------------------------------- */

#define H_SLOT	256
#define H_COUNT 4
#define H_SLOTS (2 * H_COUNT + TERN_CTRL_SLOTS)

struct hostile {
	tern_ctx *ctx;
	tern_listener *l;
	tern_session *srv;
	char name[80];
	bool closed;
	int reason;
	struct tern_session_counters cnt;
	char why[256];
	/* the raw peer */
	int sock;
	int bell;      /* ours, given to the server */
	int peer_bell; /* the server's */
	uint8_t *seg;
	struct shm_geom g;
};

static struct hostile *H;

static void h_on_close(tern_session *s, int reason)
{
	H->closed = true;
	H->reason = reason;
	tern_session_counters(s, &H->cnt);
	snprintf(H->why, sizeof(H->why), "%s", tern_ctx_last_error(tern_session_ctx(s)));
}

static void h_on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (s)
		H->srv = s;
	else {
		refusals++;
		refusal_status = status;
	}
}

static int h_send(int sock, const void *buf, size_t len, const int *fds, int nfds)
{
	return scm_send(sock, buf, len, fds, nfds, MSG_NOSIGNAL);
}

static ssize_t h_recv(int sock, struct shm_msg *m, int *fds, int *nfds)
{
	return scm_recv(sock, m, sizeof(*m), fds, 4, nfds, MSG_DONTWAIT);
}

static void abstract_addr(const char *name, struct sockaddr_un *sa, socklen_t *len)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	snprintf(sa->sun_path + 1, sizeof(sa->sun_path) - 1, "%s%s", SHM_ABSTRACT_PREFIX, name);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(sa->sun_path + 1));
}

static void engine_hello(uint8_t *hs, bool reply)
{
	struct tern_hello h = {.version = TERN_WIRE_VERSION,
			       .flags = reply ? TERN_HELLO_REPLY : 0,
			       .slot_size = H_SLOT,
			       .slot_count = H_COUNT,
			       .max_msg = 1u
					  << 30}; /* we take large messages: see the bulk tests */
	tern_hello_encode(hs, &h);
}

static void hello_msg(struct shm_msg *m)
{
	memset(m, 0, sizeof(*m));
	m->magic = SHM_MSG_MAGIC;
	m->version = SHM_PROTO_VERSION;
	m->type = SHM_MSG_HELLO;
	m->slot_size = H_SLOT;
	m->nslots = H_SLOTS;
	m->hs_len = sizeof(struct tern_wire_hello);
	engine_hello(m->hs, false);
}

static void hostile_setup(struct hostile *h, enum tern_progress progress)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = progress};
	struct tern_session_opts so = {.size = sizeof(so),
				       .slot_size = H_SLOT,
				       .slot_count = H_COUNT,
				       .on_close = h_on_close};
	struct sockaddr_un sa;
	socklen_t len;

	memset(h, 0, sizeof(*h));
	H = h;
	refusals = 0;
	h->peer_bell = -1;
	assert_int_equal(tern_ctx_create(&co, &h->ctx), 0);
	assert_int_equal(tern_register_raw(h->ctx, M_ECHO, fx_echo, NULL), 0);
	snprintf(h->name, sizeof(h->name), "%s", fx_listen_uri() + strlen("shm://"));
	{
		char uri[96];
		snprintf(uri, sizeof(uri), "shm://%s", h->name);
		assert_int_equal(tern_listen(h->ctx, uri, &so, h_on_accept, &h->l), 0);
	}
	h->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_true(h->sock >= 0);
	abstract_addr(h->name, &sa, &len);
	assert_int_equal(connect(h->sock, (struct sockaddr *)&sa, len), 0);
	h->bell = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

/* Complete the handshake as an honest client would, and map the segment. */
static void hostile_handshake(struct hostile *h)
{
	struct shm_msg m;
	int fds[4], nfds;

	hello_msg(&m);
	assert_int_equal(h_send(h->sock, &m, sizeof(m), &h->bell, 1), 0);
	assert_int_equal(run_until_readable(h->ctx, h->sock, 5), 0);
	assert_int_equal(h_recv(h->sock, &m, fds, &nfds), (ssize_t)sizeof(m));
	assert_int_equal(m.type, SHM_MSG_ACCEPT);
	assert_int_equal(nfds, 2);
	assert_int_equal(shm_geom_init(&h->g, H_SLOT, H_SLOTS), 0);
	assert_int_equal(m.seg_size, h->g.size);
	h->seg = mmap(NULL, h->g.size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	assert_true(h->seg != MAP_FAILED);
	close(fds[0]);
	h->peer_bell = fds[1];
	memset(&m, 0, sizeof(m));
	m.magic = SHM_MSG_MAGIC;
	m.version = SHM_PROTO_VERSION;
	m.type = SHM_MSG_READY;
	assert_int_equal(h_send(h->sock, &m, sizeof(m), NULL, 0), 0);
	for (double end = now_s() + 5; !h->srv && now_s() < end;)
		tern_ctx_run(h->ctx, TERN_RUN_NOWAIT);
	assert_non_null(h->srv);
}

/* Wait for the server to close the session; hang up if it does not. */
static void hostile_finish(struct hostile *h, double patience_s)
{
	run_until(h->ctx, &h->closed, patience_s);
	if (!h->closed) {
		close(h->sock);
		h->sock = -1;
		run_until(h->ctx, &h->closed, 5);
	}
	assert_true(h->closed);
}

static void hostile_teardown(struct hostile *h)
{
	if (h->sock >= 0)
		close(h->sock);
	if (h->seg)
		munmap(h->seg, h->g.size);
	close(h->bell);
	if (h->peer_bell >= 0)
		close(h->peer_bell);
	assert_int_equal(tern_ctx_destroy(h->ctx), 0);
	H = NULL;
}

/* The c->s direction is 0: the client sends, the server receives. */
static _Atomic uint32_t *word(struct hostile *h, int dir, enum shm_ctl w)
{
	return shm_dir_word(h->seg, &h->g, dir, w);
}

static void put_desc_ret(struct hostile *h, uint32_t i, uint32_t slot, uint32_t len, uint32_t ret)
{
	struct shm_desc *d = &shm_descs(h->seg, &h->g, 0)[i & (h->g.ring_size - 1)];
	atomic_store(&d->slot, slot);
	atomic_store(&d->len, len);
	atomic_store(&d->ret, ret);
}

static void put_desc(struct hostile *h, uint32_t i, uint32_t slot, uint32_t len)
{
	put_desc_ret(h, i, slot, len, SHM_NONE);
}

/* A valid request in client slot @slot, as the engine would write it. */
static void put_request(struct hostile *h, uint32_t slot, uint32_t seq)
{
	struct tern_hdr r = {.kind = TERN_MSG_REQ, .method = M_ECHO, .seq = seq, .len = 4};
	uint8_t *p = shm_slots(h->seg, &h->g, 0) + (size_t)slot * H_SLOT;

	tern_hdr_encode(p, &r);
	memcpy(p + TERN_HDR_SIZE, "ping", 4);
}

static void expect_epeer(struct hostile *h, const char *needle)
{
	hostile_finish(h, 5);
	printf("server closed: %s\n", h->why);
	assert_int_equal(h->reason, TERN_EPEER);
	assert_int_equal(h->cnt.protocol_errors, 1);
	if (needle)
		assert_non_null(strstr(h->why, needle));
}

/* First, proof that the hand-made peer is right: a valid request is served. */
static void test_hand_made_peer_is_served_when_it_plays_by_the_rules(void **state)
{
	struct hostile h;
	struct tern_hdr rep;
	uint8_t *p;
	double end;

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	put_request(&h, 0, 0);
	put_desc(&h, 0, 0, TERN_HDR_SIZE + 4);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	/* the reply arrives in the server->client ring */
	end = now_s() + 5;
	while (atomic_load(word(&h, 1, SHM_TAIL)) == 0 && now_s() < end)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_int_equal(atomic_load(word(&h, 1, SHM_TAIL)), 1);
	p = shm_slots(h.seg, &h.g, 1) +
	    (size_t)atomic_load(&shm_descs(h.seg, &h.g, 1)[0].slot) * H_SLOT;
	tern_hdr_decode(p, &rep);
	assert_int_equal(rep.kind, TERN_MSG_REP);
	assert_int_equal(rep.len, 4);
	assert_memory_equal(p + TERN_HDR_SIZE, "ping", 4);
	/* and the same descriptor hands our slot 0 back */
	assert_int_equal(atomic_load(&shm_descs(h.seg, &h.g, 1)[0].ret), 0);
	assert_int_equal(atomic_load(word(&h, 0, SHM_HEAD)), 1);
	hostile_finish(&h, 0.05);
	assert_int_equal(h.reason, -ECONNRESET); /* we hung up; nothing was wrong */
	assert_int_equal(h.cnt.protocol_errors, 0);
	hostile_teardown(&h);
}

static void test_hostile_message_index_past_the_ring(void **state)
{
	struct hostile h;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	/* at most 2 x nslots descriptors can ever be unread */
	char needle[64];

	atomic_store(word(&h, 0, SHM_TAIL), 2 * H_SLOTS + 1);
	snprintf(needle, sizeof(needle), "index moved by %d (%d slots)", 2 * H_SLOTS + 1, H_SLOTS);
	expect_epeer(&h, needle);
	hostile_teardown(&h);
}

static void test_hostile_descriptor_slot_out_of_range(void **state)
{
	struct hostile h;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	char needle[64];

	put_desc(&h, 0, H_SLOTS, 64);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	snprintf(needle, sizeof(needle), "message in slot %d of %d", H_SLOTS, H_SLOTS);
	expect_epeer(&h, needle);
	hostile_teardown(&h);
}

static void test_hostile_descriptor_length_past_the_slot(void **state)
{
	struct hostile h;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	put_request(&h, 0, 0);
	put_desc(&h, 0, 0, H_SLOT + 1);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	expect_epeer(&h, "257 bytes in a 256-byte slot");
	hostile_teardown(&h);
}

static void test_hostile_same_slot_twice(void **state)
{
	struct hostile h;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	put_request(&h, 0, 0);
	put_desc(&h, 0, 0, TERN_HDR_SIZE + 4);
	put_desc(&h, 1, 0, TERN_HDR_SIZE + 4);
	atomic_store(word(&h, 0, SHM_TAIL), 2);
	expect_epeer(&h, "which we still hold");
	hostile_teardown(&h);
}

static void test_hostile_header_in_a_valid_descriptor(void **state)
{
	struct hostile h;
	struct tern_hdr r = {.kind = 9, .method = M_ECHO, .len = 4};
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	tern_hdr_encode(shm_slots(h.seg, &h.g, 0), &r);
	put_desc(&h, 0, 0, TERN_HDR_SIZE + 4);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	expect_epeer(&h, "unknown message kind");
	hostile_teardown(&h);
}

static void test_hostile_returns_a_slot_the_server_never_sent(void **state)
{
	struct hostile h;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	put_desc_ret(&h, 0, SHM_NONE, 0, 3);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	expect_epeer(&h, "returned slot 3, which it did not hold");
	hostile_teardown(&h);
}

static void test_hostile_returns_a_slot_twice(void **state)
{
	struct hostile h;
	uint32_t served;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	/* an honest call, so the server sends (and we may return) one slot */
	put_request(&h, 0, 0);
	put_desc(&h, 0, 0, TERN_HDR_SIZE + 4);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	for (double end = now_s() + 5; !atomic_load(word(&h, 1, SHM_TAIL)) && now_s() < end;)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	served = atomic_load(&shm_descs(h.seg, &h.g, 1)[0].slot);
	assert_true(served < H_SLOTS);
	/* once is fine, twice is a lie */
	put_desc_ret(&h, 1, SHM_NONE, 0, served);
	put_desc_ret(&h, 2, SHM_NONE, 0, served);
	atomic_store(word(&h, 0, SHM_TAIL), 3);
	expect_epeer(&h, "which it did not hold");
	hostile_teardown(&h);
}

static void test_hostile_descriptor_with_nothing_in_it(void **state)
{
	struct hostile h;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	put_desc_ret(&h, 0, SHM_NONE, 0, SHM_NONE);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	expect_epeer(&h, "no message and no return");
	hostile_teardown(&h);
}

/* Event mode: the server sleeps on its doorbell; ringing it after writing
 * garbage must wake it into rejecting the garbage. */
static void test_hostile_garbage_then_doorbell_in_event_mode(void **state)
{
	struct hostile h;
	(void)state;
	hostile_setup(&h, TERN_PROGRESS_EVENT);
	hostile_handshake(&h);
	/* the server advertised that it sleeps */
	for (double end = now_s() + 2;
	     !(atomic_load(&shm_ctl(h.seg, &h.g, SHM_WAKE + 1)->v) & 1) && now_s() < end;)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_true(atomic_load(&shm_ctl(h.seg, &h.g, SHM_WAKE + 1)->v) & 1);
	put_desc(&h, 0, 1000, 64);
	atomic_store(word(&h, 0, SHM_TAIL), 1);
	assert_int_equal(eventfd_write(h.peer_bell, 1), 0);
	expect_epeer(&h, "message in slot 1000");
	hostile_teardown(&h);
}

/* Random bytes into the control words, descriptors, returns and headers. */
static uint64_t rng_state;

static uint32_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 16);
}

static void scribble(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rnd();
}

enum fuzz_target {
	FZ_MSG_TAIL,	/* a random message index */
	FZ_DESCRIPTORS, /* random descriptors, a small valid-looking tail */
	FZ_HEADERS,	/* valid descriptors, random slot headers and lengths */
	FZ_RETURNS,	/* returns of random slots (the server sent none) */
	FZ_EVERYTHING,	/* every byte the client can reach, control area to slots */
	FZ_TARGETS,
};

static void fuzz_once(struct hostile *h, enum fuzz_target what)
{
	uint8_t *seg = h->seg;
	const struct shm_geom *g = &h->g;
	uint32_t k = 1 + rnd() % H_SLOTS;

	switch (what) {
	case FZ_MSG_TAIL:
		atomic_store(word(h, 0, SHM_TAIL), rnd() | 1);
		break;
	case FZ_DESCRIPTORS:
		scribble(seg + g->desc_off[0], g->ring_size * sizeof(struct shm_desc));
		atomic_store(word(h, 0, SHM_TAIL), k);
		break;
	case FZ_HEADERS:
		for (uint32_t i = 0; i < k; i++) {
			uint8_t *slot = shm_slots(seg, g, 0) + (size_t)i * H_SLOT;
			scribble(slot, TERN_HDR_SIZE);
			slot[1] |= 1; /* flags: never valid, so the outcome is certain */
			put_desc(h, i, i, rnd() % (H_SLOT + 1));
		}
		atomic_store(word(h, 0, SHM_TAIL), k);
		break;
	case FZ_RETURNS:
		for (uint32_t i = 0; i < k; i++)
			put_desc_ret(h, i, SHM_NONE, 0, rnd());
		atomic_store(word(h, 0, SHM_TAIL), k);
		break;
	case FZ_EVERYTHING:
		scribble(seg + g->ctl_off, g->size - g->ctl_off);
		break;
	default:
		break;
	}
	/* as an honest peer would when the server sleeps (event mode) */
	(void)!eventfd_write(h->peer_bell, 1);
}

static void test_fuzz_random_bytes_into_the_segment_are_rejected_safely(void **state)
{
	int outcomes[FZ_TARGETS][2] = {{0}};
	const int rounds = 60;

	(void)state;
	rng_state = 0x9e3779b97f4a7c15ull;
	for (int i = 0; i < rounds * FZ_TARGETS; i++) {
		enum fuzz_target what = (enum fuzz_target)(i % FZ_TARGETS);
		struct hostile h;

		hostile_setup(&h, i & 1 ? TERN_PROGRESS_EVENT : TERN_PROGRESS_BUSY);
		hostile_handshake(&h);
		fuzz_once(&h, what);
		hostile_finish(&h, 2);
		/* Closed either way, counted only as what it was. */
		assert_true(h.reason == TERN_EPEER || h.reason == -ECONNRESET);
		assert_int_equal(h.cnt.protocol_errors, h.reason == TERN_EPEER ? 1 : 0);
		/* Every targeted corruption is certain to be invalid; random
		 * bytes over everything hit the message index too. */
		assert_int_equal(h.reason, TERN_EPEER);
		outcomes[what][h.reason == TERN_EPEER]++;
		hostile_teardown(&h);
	}
	for (int t = 0; t < FZ_TARGETS; t++)
		printf("fuzz target %d: %d rejected, %d hung up\n", t, outcomes[t][1],
		       outcomes[t][0]);
}

/* Malformed HELLOs: refused, and the listener hears of it. */
static void expect_hello_refused(const void *msg, size_t len, const int *fds, int nfds)
{
	struct hostile h;
	struct shm_msg m;
	int got[4], ngot;

	hostile_setup(&h, TERN_PROGRESS_BUSY);
	assert_int_equal(h_send(h.sock, msg, len, fds, nfds), 0);
	assert_int_equal(run_until_readable(h.ctx, h.sock, 5), 0);
	/* a REFUSE (or nothing, then EOF) */
	if (h_recv(h.sock, &m, got, &ngot) > 0) {
		assert_int_equal(m.type, SHM_MSG_REFUSE);
		assert_int_equal(ngot, 0);
	}
	assert_int_equal(refusals, 1);
	assert_int_equal(refusal_status, TERN_EVERSION);
	assert_null(h.srv);
	printf("listener: %s\n", tern_ctx_last_error(h.ctx));
	hostile_teardown(&h);
}

static void test_hostile_hello_bad_magic(void **state)
{
	struct shm_msg m;
	int fd = eventfd(0, EFD_CLOEXEC);
	(void)state;
	hello_msg(&m);
	m.magic ^= 1;
	expect_hello_refused(&m, sizeof(m), &fd, 1);
	close(fd);
}

static void test_hostile_hello_truncated(void **state)
{
	struct shm_msg m;
	int fd = eventfd(0, EFD_CLOEXEC);
	(void)state;
	hello_msg(&m);
	expect_hello_refused(&m, 20, &fd, 1);
	close(fd);
}

static void test_hostile_hello_without_a_doorbell(void **state)
{
	struct shm_msg m;
	(void)state;
	hello_msg(&m);
	expect_hello_refused(&m, sizeof(m), NULL, 0);
}

static void test_hostile_hello_with_a_pipe_for_a_doorbell(void **state)
{
	struct shm_msg m;
	int p[2];
	(void)state;
	assert_int_equal(pipe(p), 0);
	hello_msg(&m);
	expect_hello_refused(&m, sizeof(m), &p[1], 1);
	close(p[0]);
	close(p[1]);
}

static void test_hostile_hello_with_too_many_descriptors(void **state)
{
	struct shm_msg m;
	int fds[4];
	(void)state;
	for (int i = 0; i < 4; i++)
		fds[i] = eventfd(0, EFD_CLOEXEC);
	hello_msg(&m);
	expect_hello_refused(&m, sizeof(m), fds, 4);
	for (int i = 0; i < 4; i++)
		close(fds[i]);
}

static void test_hostile_hello_with_an_absurd_geometry(void **state)
{
	struct shm_msg m;
	int fd = eventfd(0, EFD_CLOEXEC);
	(void)state;
	hello_msg(&m);
	m.nslots = 0xffffffffu;
	expect_hello_refused(&m, sizeof(m), &fd, 1);
	close(fd);
}

/* ---- a hostile server -------------------------------------------------------------------------
 */

enum bad_segment {
	SEG_GOOD,
	SEG_UNSEALED,
	SEG_WRONG_SIZE,
	SEG_WRITE_SEALED,
	SEG_PIPE,
	SEG_TMPFILE,
	SEG_BAD_HEADER,
	SEG_PIPE_DOORBELL,
};

struct hserver {
	tern_ctx *ctx;
	int lfd, sock;
	tern_session *s;
	bool done, closed;
	int status, reason;
	struct tern_session_counters cnt;
	uint8_t *seg;
	struct shm_geom g;
	int fds[2];
};

static struct hserver *HS;

static void hs_connected(tern_session *s, int status)
{
	HS->done = true;
	HS->status = status;
	HS->s = status ? NULL : s;
}

static void hs_on_close(tern_session *s, int reason)
{
	HS->closed = true;
	HS->reason = reason;
	tern_session_counters(s, &HS->cnt);
}

static int make_segment(struct hserver *hs, enum bad_segment bad)
{
	size_t size = hs->g.size;
	int fd;

	if (bad == SEG_PIPE) {
		int p[2];
		assert_int_equal(pipe(p), 0);
		close(p[1]);
		return p[0];
	}
	if (bad == SEG_TMPFILE) {
		fd = open("/tmp", O_TMPFILE | O_RDWR, 0600);
		assert_true(fd >= 0);
		assert_int_equal(ftruncate(fd, (off_t)size), 0);
		return fd;
	}
	fd = memfd_create("evil", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)(bad == SEG_WRONG_SIZE ? size - 4096 : size)), 0);
	if (bad != SEG_BAD_HEADER && bad != SEG_UNSEALED && bad != SEG_WRONG_SIZE &&
	    bad != SEG_WRITE_SEALED) {
		struct shm_seg_hdr *h;
		hs->seg = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		assert_true(hs->seg != MAP_FAILED);
		h = (struct shm_seg_hdr *)hs->seg;
		h->magic = SHM_SEG_MAGIC;
		h->version = SHM_PROTO_VERSION;
		h->slot_size = hs->g.slot_size;
		h->nslots = hs->g.nslots;
		h->ring_size = hs->g.ring_size;
		h->size = size;
	}
	if (bad != SEG_UNSEALED)
		assert_int_equal(fcntl(fd, F_ADD_SEALS,
				       F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL |
					       (bad == SEG_WRITE_SEALED ? F_SEAL_WRITE : 0)),
				 0);
	return fd;
}

/* A raw shm listener that answers a tern client's HELLO with @bad. */
static void hostile_server(struct hserver *hs, enum bad_segment bad)
{
	struct tern_session_opts so = {.size = sizeof(so),
				       .slot_size = H_SLOT,
				       .slot_count = H_COUNT,
				       .on_close = hs_on_close};
	struct sockaddr_un sa;
	struct shm_msg m;
	char name[64], uri[96];
	socklen_t len;
	int got[4], ngot, seg_fd, bell_fd, p[2] = {-1, -1};
	tern_session *s;

	memset(hs, 0, sizeof(*hs));
	HS = hs;
	assert_int_equal(tern_ctx_create(NULL, &hs->ctx), 0);
	snprintf(name, sizeof(name), "%s", fx_listen_uri() + strlen("shm://"));
	snprintf(uri, sizeof(uri), "shm://%s", name);
	abstract_addr(name, &sa, &len);
	hs->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(hs->lfd, (struct sockaddr *)&sa, len), 0);
	assert_int_equal(listen(hs->lfd, 4), 0);
	assert_int_equal(tern_connect(hs->ctx, uri, &so, hs_connected, &s), 0);
	assert_int_equal(run_until_readable(hs->ctx, hs->lfd, 5), 0);
	hs->sock = accept4(hs->lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(hs->sock >= 0);
	assert_int_equal(run_until_readable(hs->ctx, hs->sock, 5), 0);
	assert_int_equal(h_recv(hs->sock, &m, got, &ngot), (ssize_t)sizeof(m));
	assert_int_equal(m.type, SHM_MSG_HELLO);
	assert_int_equal(ngot, 1); /* the client's doorbell */
	close(got[0]);
	assert_int_equal(shm_geom_init(&hs->g, m.slot_size, m.nslots), 0);

	seg_fd = make_segment(hs, bad);
	if (bad == SEG_PIPE_DOORBELL) {
		assert_int_equal(pipe(p), 0);
		bell_fd = p[1];
	} else {
		bell_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	}
	memset(&m, 0, sizeof(m));
	m.magic = SHM_MSG_MAGIC;
	m.version = SHM_PROTO_VERSION;
	m.type = SHM_MSG_ACCEPT;
	m.slot_size = hs->g.slot_size;
	m.nslots = hs->g.nslots;
	m.seg_size = hs->g.size;
	m.hs_len = sizeof(struct tern_wire_hello);
	engine_hello(m.hs, true);
	hs->fds[0] = seg_fd;
	hs->fds[1] = bell_fd;
	assert_int_equal(h_send(hs->sock, &m, sizeof(m), hs->fds, 2), 0);
	run_until(hs->ctx, &hs->done, 5);
	assert_true(hs->done);
	if (p[0] >= 0)
		close(p[0]);
}

static void hserver_teardown(struct hserver *hs)
{
	assert_int_equal(tern_ctx_destroy(hs->ctx), 0);
	close(hs->sock);
	close(hs->lfd);
	close(hs->fds[0]);
	close(hs->fds[1]);
	if (hs->seg)
		munmap(hs->seg, hs->g.size);
	HS = NULL;
}

/* Is any mapping of the hostile memfd still in this process? */
static bool evil_mapped(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;

	while (fgets(line, sizeof(line), f))
		n += strstr(line, "memfd:evil") != NULL;
	fclose(f);
	return n > (HS && HS->seg ? 1 : 0); /* our own raw mapping aside */
}

static void expect_bad_segment_refused(enum bad_segment bad)
{
	struct hserver hs;

	hostile_server(&hs, bad);
	printf("client: %s: %s\n", tern_err_name(hs.status), tern_ctx_last_error(hs.ctx));
	assert_int_equal(hs.status, TERN_EPEER);
	/* nothing of it stays mapped once the connection is gone */
	for (int i = 0; i < 100; i++)
		tern_ctx_run(hs.ctx, TERN_RUN_NOWAIT);
	assert_false(evil_mapped());
	hserver_teardown(&hs);
}

static void test_hostile_server_unsealed_segment(void **state)
{
	(void)state;
	expect_bad_segment_refused(SEG_UNSEALED);
}

static void test_hostile_server_segment_of_the_wrong_size(void **state)
{
	(void)state;
	expect_bad_segment_refused(SEG_WRONG_SIZE);
}

static void test_hostile_server_segment_sealed_against_writing(void **state)
{
	(void)state;
	expect_bad_segment_refused(SEG_WRITE_SEALED);
}

static void test_hostile_server_pipe_for_a_segment(void **state)
{
	(void)state;
	expect_bad_segment_refused(SEG_PIPE);
}

static void test_hostile_server_plain_file_for_a_segment(void **state)
{
	(void)state;
	expect_bad_segment_refused(SEG_TMPFILE);
}

static void test_hostile_server_segment_with_a_bad_header(void **state)
{
	(void)state;
	expect_bad_segment_refused(SEG_BAD_HEADER);
}

static void test_hostile_server_pipe_for_a_doorbell(void **state)
{
	(void)state;
	expect_bad_segment_refused(SEG_PIPE_DOORBELL);
}

/* The client checks what it reads as strictly as the server does. */
static void test_hostile_server_scribbles_on_the_clients_ring(void **state)
{
	struct hserver hs;

	(void)state;
	hostile_server(&hs, SEG_GOOD);
	assert_int_equal(hs.status, 0);
	assert_non_null(hs.s);
	/* READY came back */
	assert_int_equal(run_until_readable(hs.ctx, hs.sock, 5), 0);
	atomic_store(shm_dir_word(hs.seg, &hs.g, 1, SHM_TAIL), 7);
	for (uint32_t i = 0; i < 7; i++) {
		atomic_store(&shm_descs(hs.seg, &hs.g, 1)[i].slot, i);
		atomic_store(&shm_descs(hs.seg, &hs.g, 1)[i].len, 0xfffffff0u);
	}
	run_until(hs.ctx, &hs.closed, 5);
	assert_true(hs.closed);
	assert_int_equal(hs.reason, TERN_EPEER);
	assert_int_equal(hs.cnt.protocol_errors, 1);
	printf("client closed: %s\n", tern_ctx_last_error(hs.ctx));
	hserver_teardown(&hs);
}

static void test_refusal_with_a_made_up_status_is_a_plain_refusal(void **state)
{
	struct hserver hs;
	struct sockaddr_un sa;
	struct shm_msg m;
	char name[64], uri[96];
	socklen_t len;
	int got[4], ngot;
	tern_session *s;

	(void)state;
	memset(&hs, 0, sizeof(hs));
	HS = &hs;
	hs.fds[0] = hs.fds[1] = -1;
	assert_int_equal(tern_ctx_create(NULL, &hs.ctx), 0);
	snprintf(name, sizeof(name), "%s", fx_listen_uri() + strlen("shm://"));
	snprintf(uri, sizeof(uri), "shm://%s", name);
	abstract_addr(name, &sa, &len);
	hs.lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(hs.lfd, (struct sockaddr *)&sa, len), 0);
	assert_int_equal(listen(hs.lfd, 4), 0);
	assert_int_equal(tern_connect(hs.ctx, uri, NULL, hs_connected, &s), 0);
	assert_int_equal(run_until_readable(hs.ctx, hs.lfd, 5), 0);
	hs.sock = accept4(hs.lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_int_equal(run_until_readable(hs.ctx, hs.sock, 5), 0);
	assert_int_equal(h_recv(hs.sock, &m, got, &ngot), (ssize_t)sizeof(m));
	close(got[0]);
	memset(&m, 0, sizeof(m));
	m.magic = SHM_MSG_MAGIC;
	m.version = SHM_PROTO_VERSION;
	m.type = SHM_MSG_REFUSE;
	m.status = 12345; /* not an error code */
	assert_int_equal(h_send(hs.sock, &m, sizeof(m), NULL, 0), 0);
	run_until(hs.ctx, &hs.done, 5);
	assert_int_equal(hs.status, -ECONNREFUSED);
	hserver_teardown(&hs);
}

/* ---- doorbells across processes: a lost wake-up would hang a call --------------------------- */

static void ptrace_cap(int on);

static int serve_main(const char *mode)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	tern_listener *l;
	tern_ctx *ctx;

	/*
	 * "yama": a server no ancestor of the test's, so that Yama's
	 * ptrace_scope 1 stands between the two as between unrelated
	 * processes: the intermediate process exits, we are reparented.  A
	 * deadline, not the parent's death, bounds our life then.
	 */
	if (strcmp(mode, "yama") == 0) {
		pid_t pid = fork();

		if (pid < 0)
			return 1;
		if (pid > 0)
			return 0;
		alarm(300);
		ptrace_cap(0);
	} else {
		/* Never outlive the test, even one that failed before killing us. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() == 1)
			return 1;
	}
	/* no one without CAP_SYS_PTRACE may reach our memory */
	if (strcmp(mode, "undumpable") == 0)
		prctl(PR_SET_DUMPABLE, 0);
	/* we may reach no one who is not dumpable */
	if (strcmp(mode, "nocap") == 0)
		ptrace_cap(0);
	co.progress = strcmp(mode, "event") == 0      ? TERN_PROGRESS_EVENT
		      : strcmp(mode, "adaptive") == 0 ? TERN_PROGRESS_ADAPTIVE
						      : TERN_PROGRESS_BUSY;
	/* sleep as soon as it can: the racy path */
	co.adaptive_spin_us = 5;
	if (tern_ctx_create(&co, &ctx) || tern_register_raw(ctx, M_ECHO, fx_echo, NULL) ||
	    tern_register_inplace(ctx, M_INPLACE, echo_inplace, NULL) ||
	    tern_listen(ctx, fx_listen_uri(), NULL, NULL, &l))
		return 1;
	printf("%s %d\n", tern_listener_uri(l), (int)getpid());
	fflush(stdout);
	tern_ctx_run(ctx, TERN_RUN_DEFAULT);
	return 0;
}

static pid_t spawn_server(const char *mode, char *uri, size_t len)
{
	char *argv[] = {"/proc/self/exe", "--serve", (char *)mode, NULL};
	posix_spawn_file_actions_t fa;
	int out[2];
	pid_t pid;
	FILE *fp;

	assert_int_equal(pipe(out), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addclose(&fa, out[0]);
	assert_int_equal(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(out[1]);
	fp = fdopen(out[0], "r");
	assert_non_null(fgets(uri, (int)len, fp));
	uri[strcspn(uri, "\n")] = 0;
	fclose(fp);
	/* "URI PID": the server's own pid, which the yama mode's is not ours */
	assert_non_null(strchr(uri, ' '));
	if (strcmp(mode, "yama") == 0) {
		waitpid(pid, NULL, 0); /* the intermediate */
		pid = (pid_t)atoi(strchr(uri, ' ') + 1);
	}
	*strchr(uri, ' ') = 0;
	return pid;
}

struct pipe_state {
	int issued, done, failed;
};

static void piped_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct pipe_state *p = user;

	(void)s, (void)reply, (void)len;
	p->done++;
	if (status)
		p->failed++;
}

static void doorbell_stress(const char *server_mode, enum tern_progress client_mode)
{
	struct tern_ctx_opts co = {
		.size = sizeof(co), .progress = client_mode, .adaptive_spin_us = 5};
	struct tern_call_opts cop = {.size = sizeof(cop), .timeout_ms = 30000};
	struct pipe_state ps = {0};
	char uri[128];
	tern_session *s;
	tern_ctx *ctx;
	uint8_t out[64];
	struct tern_session_counters cnt;
	double t0;
	pid_t pid;

	pid = spawn_server(server_mode, uri, sizeof(uri));
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	assert_int_equal(tern_connect_sync(ctx, uri, NULL, 10000, &s), 0);
	/*
	 * One call at a time: every reply needs a wake-up on both sides, and
	 * nothing else is in flight that could wake a side that missed one
	 * (no timer but the call's deadline), so a lost wake-up leaves its
	 * call stuck until that deadline: -ETIMEDOUT.  The deadline is long
	 * so that a loaded machine never reaches it; how fast calls are is
	 * no business of this test.
	 */
	t0 = now_s();
	for (int i = 0; i < 5000; i++) {
		struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out)};

		assert_int_equal(
			tern_call_sync(s, i & 1 ? M_ECHO : M_INPLACE, &i, sizeof(i), &rep, 30000),
			0);
		assert_memory_equal(out, &i, sizeof(i));
		if (i % 500 == 499)
			uv_sleep(2); /* let both sides fall asleep now and then */
	}
	/* and pipelined: returns and messages race the arming */
	while (ps.done < 20000) {
		while (ps.issued < 20000 && tern_call(s, M_ECHO, "x", 1, piped_cb, &ps, &cop) == 0)
			ps.issued++;
		tern_ctx_run(ctx, TERN_RUN_ONCE);
	}
	printf("%s server, %s client: 25000 calls in %.2f s\n", server_mode,
	       client_mode == TERN_PROGRESS_EVENT ? "event" : "adaptive", now_s() - t0);
	assert_int_equal(ps.failed, 0);
	/* a lost wake-up shows as a call stuck until its deadline */
	tern_session_counters(s, &cnt);
	assert_int_equal(cnt.timeouts, 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
}

static void test_event_mode_doorbells_lose_no_wakeup(void **state)
{
	(void)state;
	doorbell_stress("event", TERN_PROGRESS_EVENT);
}

static void test_adaptive_mode_doorbells_lose_no_wakeup(void **state)
{
	(void)state;
	doorbell_stress("adaptive", TERN_PROGRESS_ADAPTIVE);
}

/* ---- large messages from a hostile peer -----------------------------------------------------
 *
 * The server under test exports memory when it calls us with a large
 * request; it asks us for bytes when we call it with one.
 */

#define BIG 4096 /* over the 224-byte slot payload: a bulk transfer */

static void ignore_call(tern_session *s, int status, const void *r, size_t len, void *u)
{
	(void)s, (void)status, (void)r, (void)len, (void)u;
}

/*
 * The server's call, which @h's session has just made, as it lies in our
 * receive ring: @msg_len bytes flagged @flag, starting with a descriptor.
 */
static void server_call_desc(struct hostile *h, uint32_t msg_len, uint8_t flag,
			     struct tern_bulk_desc *d)
{
	struct tern_hdr hd;
	uint32_t slot, len;
	const uint8_t *p;
	double end = now_s() + 5;

	while (atomic_load(word(h, 1, SHM_TAIL)) == 0 && now_s() < end)
		tern_ctx_run(h->ctx, TERN_RUN_NOWAIT);
	assert_int_equal(atomic_load(word(h, 1, SHM_TAIL)), 1);
	slot = atomic_load(&shm_descs(h->seg, &h->g, 1)[0].slot);
	len = atomic_load(&shm_descs(h->seg, &h->g, 1)[0].len);
	assert_true(slot < H_SLOTS);
	assert_int_equal(len, msg_len);
	p = shm_slots(h->seg, &h->g, 1) + (size_t)slot * H_SLOT;
	tern_hdr_decode(p, &hd);
	assert_int_equal(hd.kind, TERN_MSG_REQ);
	assert_true(hd.flags & flag);
	tern_bulk_desc_decode(p + TERN_HDR_SIZE, d);
}

/* The server calls us with @req (BIG bytes): its request's descriptor. */
static void server_calls_us(struct hostile *h, uint8_t *req, struct tern_bulk_desc *qd)
{
	for (int i = 0; i < BIG; i++)
		req[i] = (uint8_t)(i * 7 + 1);
	assert_int_equal(tern_call(h->srv, M_ECHO, req, BIG, ignore_call, NULL, NULL), 0);
	server_call_desc(h, TERN_HDR_SIZE + TERN_BULK_DESC_SIZE, TERN_F_BULK, qd);
	assert_int_equal(qd->len, BIG);
}

static void send_bulk(struct hostile *h, uint16_t type, const struct shm_bulk *b)
{
	struct shm_msg m;

	memset(&m, 0, sizeof(m));
	m.magic = SHM_MSG_MAGIC;
	m.version = SHM_PROTO_VERSION;
	m.type = type;
	memcpy(m.hs, b, sizeof(*b));
	assert_int_equal(h_send(h->sock, &m, sizeof(m), NULL, 0), 0);
}

/* Proof the hand-made user is right: a read inside the export is served. */
static void test_bulk_read_inside_an_export_is_served_with_one_copy(void **state)
{
	struct hostile h;
	uint8_t req[BIG], got[1000];
	struct tern_bulk_desc q;
	struct shm_bulk b, d;
	struct shm_msg m;
	int fds[4], nfds;

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	server_calls_us(&h, req, &q);
	memset(got, 0, sizeof(got));
	b = (struct shm_bulk){.xaddr = q.addr + 96,
			      .len = sizeof(got),
			      .laddr = (uintptr_t)got,
			      .key = q.key,
			      .token = 0x4242,
			      .op = SHM_BULK_READ};
	send_bulk(&h, SHM_MSG_BULK_REQ, &b);
	assert_int_equal(run_until_readable(h.ctx, h.sock, 5), 0);
	assert_int_equal(h_recv(h.sock, &m, fds, &nfds), (ssize_t)sizeof(m));
	assert_int_equal(m.type, SHM_MSG_BULK_DONE);
	memcpy(&d, m.hs, sizeof(d));
	assert_int_equal(d.token, 0x4242);
	assert_int_equal(d.status, 0);
	assert_memory_equal(got, req + 96, sizeof(got));
	for (int i = 0; i < 1000; i++)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_false(h.closed);
	hostile_teardown(&h);
}

/* Ask the server for bytes of its export @q; it must refuse and hang up. */
static void bulk_req_refused(uint32_t op, uint32_t key_delta, uint64_t off, uint64_t len)
{
	struct hostile h;
	uint8_t req[BIG], got[64];
	struct tern_bulk_desc q;
	struct shm_bulk b;

	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	server_calls_us(&h, req, &q);
	memset(got, 0x5a, sizeof(got));
	b = (struct shm_bulk){.xaddr = q.addr + off,
			      .len = len,
			      .laddr = (uintptr_t)got,
			      .key = q.key + key_delta,
			      .token = 1,
			      .op = op};
	send_bulk(&h, SHM_MSG_BULK_REQ, &b);
	expect_epeer(&h, "named memory it was not given");
	assert_int_equal(req[0], 1);	/* nothing was written into the export */
	assert_int_equal(got[0], 0x5a); /* ...nor anything read out of it */
	hostile_teardown(&h);
}

static void test_hostile_bulk_read_with_a_key_never_given(void **state)
{
	(void)state;
	bulk_req_refused(SHM_BULK_READ, 0x10000, 0, 16); /* the right entry, another generation */
}

static void test_hostile_bulk_read_one_byte_past_the_export(void **state)
{
	(void)state;
	bulk_req_refused(SHM_BULK_READ, 0, 1, BIG);
}

static void test_hostile_bulk_read_of_an_absurd_length(void **state)
{
	(void)state;
	bulk_req_refused(SHM_BULK_READ, 0, 8, UINT64_MAX - 4); /* addr + len wraps */
}

static void test_hostile_bulk_write_into_a_read_only_export(void **state)
{
	(void)state;
	bulk_req_refused(SHM_BULK_WRITE, 0, 0, 16);
}

static void test_hostile_done_for_a_transfer_nobody_asked_for(void **state)
{
	struct hostile h;
	struct shm_bulk d = {.token = 0x101};

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	send_bulk(&h, SHM_MSG_BULK_DONE, &d);
	expect_epeer(&h, "finished a transfer nobody asked for");
	hostile_teardown(&h);
}

/* We call the server with a BIG request it must pull from us: its BULK_REQ. */
static void we_call_with_a_large_request(struct hostile *h, struct shm_bulk *got)
{
	struct tern_hdr r = {.kind = TERN_MSG_REQ,
			     .flags = TERN_F_BULK,
			     .method = M_ECHO,
			     .len = TERN_BULK_DESC_SIZE};
	struct tern_bulk_desc d = {.addr = 0x10000, .len = 1000, .key = 77};
	uint8_t *p = shm_slots(h->seg, &h->g, 0);
	struct shm_msg m;
	int fds[4], nfds;

	tern_hdr_encode(p, &r);
	tern_bulk_desc_encode(p + TERN_HDR_SIZE, &d);
	put_desc(h, 0, 0, TERN_HDR_SIZE + TERN_BULK_DESC_SIZE);
	atomic_store(word(h, 0, SHM_TAIL), 1);
	assert_int_equal(run_until_readable(h->ctx, h->sock, 5), 0);
	assert_int_equal(h_recv(h->sock, &m, fds, &nfds), (ssize_t)sizeof(m));
	assert_int_equal(m.type, SHM_MSG_BULK_REQ);
	memcpy(got, m.hs, sizeof(*got));
	assert_int_equal(got->op, SHM_BULK_READ);
	assert_int_equal(got->key, 77);
	assert_int_equal(got->xaddr, 0x10000);
	assert_int_equal(got->len, 1000);
}

static void test_hostile_done_with_a_stale_generation(void **state)
{
	struct hostile h;
	struct shm_bulk b, d = {0};

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	we_call_with_a_large_request(&h, &b);
	d.token = b.token + (1u << 8); /* the pending entry, another generation */
	send_bulk(&h, SHM_MSG_BULK_DONE, &d);
	expect_epeer(&h, "finished a transfer nobody asked for");
	hostile_teardown(&h);
}

/* A split must name a pending transfer and a point inside it. */
static void test_hostile_split_past_the_end_of_the_transfer(void **state)
{
	struct hostile h;
	struct shm_bulk b, sp = {0};

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	we_call_with_a_large_request(&h, &b);
	sp.token = b.token;
	sp.len = b.len; /* "you copy [len, len)": not a split */
	send_bulk(&h, SHM_MSG_BULK_SPLIT, &sp);
	expect_epeer(&h, "split a transfer it was not asked for");
	hostile_teardown(&h);
}

static void test_hostile_split_of_a_transfer_nobody_asked_for(void **state)
{
	struct hostile h;
	struct shm_bulk sp = {.token = 3, .len = 0};

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	send_bulk(&h, SHM_MSG_BULK_SPLIT, &sp);
	expect_epeer(&h, "split a transfer it was not asked for");
	hostile_teardown(&h);
}

/* ---- memfd areas (BULK_MAP), from a hostile peer ----------------------------------------------
 */

static void send_bulk_fd(struct hostile *h, uint16_t type, const struct shm_bulk *b, int fd)
{
	struct shm_msg m;

	memset(&m, 0, sizeof(m));
	m.magic = SHM_MSG_MAGIC;
	m.version = SHM_PROTO_VERSION;
	m.type = type;
	memcpy(m.hs, b, sizeof(*b));
	assert_int_equal(h_send(h->sock, &m, sizeof(m), &fd, fd >= 0 ? 1 : 0), 0);
}

/* A memfd of @size bytes holding @fill, sealed as shm.c wants it (@seal) or not at all. */
static int area_memfd(size_t size, uint8_t fill, bool seal)
{
	int fd = memfd_create("test-area", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	uint8_t *p;

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	memset(p, fill, size);
	munmap(p, size);
	if (seal)
		assert_int_equal(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
				 0);
	return fd;
}

/* Wait for the server's next socket message, of @type: its body. */
static void expect_bulk(struct hostile *h, uint16_t type, struct shm_bulk *b, int *fd)
{
	struct shm_msg m;
	int fds[4], nfds;

	assert_int_equal(run_until_readable(h->ctx, h->sock, 5), 0);
	assert_int_equal(h_recv(h->sock, &m, fds, &nfds), (ssize_t)sizeof(m));
	assert_int_equal(m.type, type);
	memcpy(b, m.hs, sizeof(*b));
	if (fd)
		*fd = nfds ? fds[0] : -1;
	else
		assert_int_equal(nfds, 0);
}

/*
 * Proof the hand-made exporter is right: the server pulls our large
 * request, we answer with a staged area holding it; the server copies it
 * out, frees the area, and goes on.
 */
static void test_hand_made_exporter_answering_with_a_staged_area_is_served(void **state)
{
	struct hostile h;
	struct shm_bulk b, mp, fr;
	int fd;

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	we_call_with_a_large_request(&h, &b);
	fd = area_memfd(64 << 10, 0x77, true);
	mp = (struct shm_bulk){.xaddr = 4096,
			       .len = b.len,
			       .laddr = b.laddr,
			       .key = 3,
			       .token = b.token,
			       .op = SHM_BULK_READ | SHM_MAP_STAGED};
	send_bulk_fd(&h, SHM_MSG_BULK_MAP, &mp, fd);
	close(fd);
	expect_bulk(&h, SHM_MSG_BULK_FREE, &fr, NULL);
	assert_int_equal(fr.key, 3);
	assert_int_equal(fr.token, b.token);
	for (int i = 0; i < 1000; i++)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_false(h.closed);
	hostile_teardown(&h);
}

/* Answer the server's pull of our request with BULK_MAP @mp (its token and
 * laddr filled in unless @raw); it must refuse and hang up, saying @needle. */
static void map_refused(struct shm_bulk mp, int fd, bool raw, const char *needle)
{
	struct hostile h;
	struct shm_bulk b;

	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	we_call_with_a_large_request(&h, &b);
	if (!raw) {
		mp.token = b.token;
		mp.laddr = b.laddr;
	}
	if (mp.len == 0)
		mp.len = b.len;
	send_bulk_fd(&h, SHM_MSG_BULK_MAP, &mp, fd);
	if (fd >= 0)
		close(fd);
	expect_epeer(&h, needle);
	hostile_teardown(&h);
}

static void test_hostile_map_offset_past_the_area(void **state)
{
	(void)state;
	/* 1000 bytes from 999 before the end of a 64 KiB area */
	map_refused((struct shm_bulk){.xaddr = (64 << 10) - 999, .op = SHM_BULK_READ},
		    area_memfd(64 << 10, 1, true), false, "area out of bounds");
}

static void test_hostile_map_offset_that_wraps(void **state)
{
	(void)state;
	map_refused((struct shm_bulk){.xaddr = UINT64_MAX - 10, .op = SHM_BULK_READ},
		    area_memfd(64 << 10, 1, true), false, "area out of bounds");
}

static void test_hostile_map_of_an_area_never_sent(void **state)
{
	(void)state;
	map_refused((struct shm_bulk){.key = 5, .op = SHM_BULK_READ}, -1, false,
		    "area out of bounds");
}

static void test_hostile_map_of_an_area_id_out_of_range(void **state)
{
	(void)state;
	map_refused((struct shm_bulk){.key = SHM_MAX_AREAS, .op = SHM_BULK_READ},
		    area_memfd(64 << 10, 1, true), false, "not asked for");
}

static void test_hostile_map_of_an_unsealed_memfd(void **state)
{
	(void)state;
	/* it could shrink under the server's copy: SIGBUS */
	map_refused((struct shm_bulk){.op = SHM_BULK_READ}, area_memfd(64 << 10, 1, false), false,
		    "not a sealed memfd");
}

static void test_hostile_map_of_a_pipe(void **state)
{
	int p[2];

	(void)state;
	assert_int_equal(pipe(p), 0);
	close(p[1]);
	map_refused((struct shm_bulk){.op = SHM_BULK_READ}, p[0], false, "not a sealed memfd");
}

static void test_hostile_map_with_another_length(void **state)
{
	(void)state;
	map_refused((struct shm_bulk){.len = 2000, .op = SHM_BULK_READ},
		    area_memfd(64 << 10, 1, true), false, "not asked for");
}

static void test_hostile_map_into_another_buffer_of_the_servers(void **state)
{
	(void)state;
	/* laddr is the server's own: it copies only where it asked to */
	map_refused((struct shm_bulk){.laddr = 0x1000, .op = SHM_BULK_READ},
		    area_memfd(64 << 10, 1, true), true, "not asked for");
}

static void test_hostile_map_in_the_wrong_direction(void **state)
{
	(void)state;
	map_refused((struct shm_bulk){.op = SHM_BULK_WRITE | SHM_MAP_STAGED},
		    area_memfd(64 << 10, 1, true), false, "not asked for");
}

static void test_hostile_map_of_a_transfer_nobody_asked_for(void **state)
{
	(void)state;
	map_refused((struct shm_bulk){.token = 0x999, .op = SHM_BULK_READ},
		    area_memfd(64 << 10, 1, true), true, "not asked for");
}

/*
 * The server as the exporter, with process_vm_* off: it calls us with a
 * large request, we ask for a piece of it and get a staged area holding
 * exactly that piece; freed, the area serves the next request without
 * being sent again.
 */
static void test_without_ptrace_the_exporter_answers_with_a_staged_area(void **state)
{
	struct hostile h;
	uint8_t req[BIG], got[1000];
	struct tern_bulk_desc q;
	struct shm_bulk b, mp;
	uint64_t size = 0;
	uint8_t *area = NULL;
	int fd;

	(void)state;
	setenv("TERN_SHM_NO_PTRACE", "1", 1);
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	unsetenv("TERN_SHM_NO_PTRACE");
	server_calls_us(&h, req, &q);
	for (int round = 0; round < 2; round++) {
		memset(got, 0x5a, sizeof(got));
		b = (struct shm_bulk){.xaddr = q.addr + 96 + (uint64_t)round,
				      .len = sizeof(got),
				      .laddr = (uintptr_t)got,
				      .key = q.key,
				      .token = 0x4242 + (uint32_t)round,
				      .op = SHM_BULK_READ};
		send_bulk(&h, SHM_MSG_BULK_REQ, &b);
		expect_bulk(&h, SHM_MSG_BULK_MAP, &mp, &fd);
		assert_int_equal(mp.token, b.token);
		assert_int_equal(mp.laddr, b.laddr);
		assert_int_equal(mp.len, sizeof(got));
		assert_int_equal(mp.op, SHM_BULK_READ | SHM_MAP_STAGED);
		assert_int_equal(mp.key, 0);
		if (round == 0) {
			struct stat st;

			assert_true(fd >= 0); /* sent once, with its first use */
			assert_int_equal(fcntl(fd, F_GET_SEALS) &
						 (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
					 F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
			assert_int_equal(fstat(fd, &st), 0);
			size = (uint64_t)st.st_size;
			area = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
			assert_true(area != MAP_FAILED);
			close(fd);
		} else {
			assert_int_equal(fd, -1);
		}
		assert_true(mp.xaddr <= size && mp.len <= size - mp.xaddr);
		assert_memory_equal(area + mp.xaddr, req + 96 + round, sizeof(got));
		assert_int_equal(got[0], 0x5a); /* it did not reach into us */
		send_bulk(&h, SHM_MSG_BULK_FREE,
			  &(struct shm_bulk){.key = mp.key, .token = mp.token});
	}
	for (int i = 0; i < 1000; i++)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_false(h.closed);
	munmap(area, size);
	hostile_teardown(&h);
}

/* Give back an area we were not lent (@lent false), or one we were, the wrong way. */
static void area_give_back_refused(bool lent, uint16_t type)
{
	struct hostile h;
	uint8_t req[BIG], got[64];
	struct tern_bulk_desc q;
	struct shm_bulk b, mp = {.key = 0, .token = 0x31};
	int fd;

	setenv("TERN_SHM_NO_PTRACE", "1", 1);
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	unsetenv("TERN_SHM_NO_PTRACE");
	if (lent) {
		server_calls_us(&h, req, &q);
		b = (struct shm_bulk){.xaddr = q.addr,
				      .len = sizeof(got),
				      .laddr = (uintptr_t)got,
				      .key = q.key,
				      .token = 0x31,
				      .op = SHM_BULK_READ};
		send_bulk(&h, SHM_MSG_BULK_REQ, &b);
		expect_bulk(&h, SHM_MSG_BULK_MAP, &mp, &fd);
		close(fd);
	}
	send_bulk(&h, type, &(struct shm_bulk){.key = mp.key, .token = mp.token});
	expect_epeer(&h, "gave back an area it was not lent");
	hostile_teardown(&h);
}

static void test_hostile_free_of_an_area_never_lent(void **state)
{
	(void)state;
	area_give_back_refused(false, SHM_MSG_BULK_FREE);
}

static void test_hostile_filled_for_an_area_lent_for_a_read(void **state)
{
	(void)state;
	/* the server would copy the area into an export only readable by us */
	area_give_back_refused(true, SHM_MSG_BULK_FILLED);
}

/* Ask the server for [off, off + len) of its export @q; it answers with a
 * staged area, which we give back at once.  The area's id; *@fd: its
 * memfd if it came along (else -1). */
static uint32_t staged_read(struct hostile *h, const struct tern_bulk_desc *q, uint64_t off,
			    uint64_t len, void *into, int *fd)
{
	struct shm_bulk b = {.xaddr = q->addr + off,
			     .len = len,
			     .laddr = (uintptr_t)into,
			     .key = q->key,
			     .token = 0x500 + (uint32_t)off,
			     .op = SHM_BULK_READ},
			mp;

	send_bulk(h, SHM_MSG_BULK_REQ, &b);
	expect_bulk(h, SHM_MSG_BULK_MAP, &mp, fd);
	assert_int_equal(mp.op, SHM_BULK_READ | SHM_MAP_STAGED);
	assert_int_equal(mp.len, len);
	send_bulk(h, SHM_MSG_BULK_FREE, &(struct shm_bulk){.key = mp.key, .token = mp.token});
	return mp.key;
}

/*
 * Idle staging is kept for reuse up to 64 MiB a connection; past that, the
 * other idle areas are retired (the peer told to unmap them) before the
 * one just given back, which the next transfer of its size reuses.
 */
static void test_idle_staging_past_64_mib_is_unmapped(void **state)
{
	size_t big = 40 << 20;
	uint8_t *req = malloc(big);
	struct hostile h;
	struct tern_bulk_desc q;
	struct shm_bulk um;
	uint32_t id, small;
	int fd;

	(void)state;
	assert_non_null(req);
	setenv("TERN_SHM_NO_PTRACE", "1", 1);
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	unsetenv("TERN_SHM_NO_PTRACE");
	memset(req, 0x42, big);
	assert_int_equal(tern_call(h.srv, M_ECHO, req, big, ignore_call, NULL, NULL), 0);
	server_call_desc(&h, TERN_HDR_SIZE + TERN_BULK_DESC_SIZE, TERN_F_BULK, &q);
	/* 33 MiB: a 64 MiB area, kept idle once given back */
	id = staged_read(&h, &q, 0, 33 << 20, NULL, &fd);
	assert_true(fd >= 0);
	close(fd);
	/* a small one takes a 64 KiB area: 64 MiB + 64 KiB idle, the big one goes */
	small = staged_read(&h, &q, 64, 1000, NULL, &fd);
	assert_int_not_equal(small, id);
	assert_true(fd >= 0);
	close(fd);
	expect_bulk(&h, SHM_MSG_BULK_UNMAP, &um, NULL);
	assert_int_equal(um.key, id);
	/* the small one stays: reused, not sent again, nothing unmapped */
	for (int i = 0; i < 3; i++) {
		assert_int_equal(staged_read(&h, &q, 65 + (uint64_t)i, 1000, NULL, &fd), small);
		assert_int_equal(fd, -1);
	}
	/* the big size again: a new area, and still nothing over the limit */
	id = staged_read(&h, &q, 0, 33 << 20, NULL, &fd);
	assert_true(fd >= 0);
	close(fd);
	expect_bulk(&h, SHM_MSG_BULK_UNMAP, &um, NULL); /* ...but the small one */
	assert_int_equal(um.key, small);
	for (int i = 0; i < 100; i++)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_false(h.closed);
	hostile_teardown(&h);
	free(req);
}

/* tern_mem_alloc() memory is lent as it is, whatever ptrace allows: the
 * region's own memfd, the offset of the piece asked for inside it. */
static void test_tern_mem_alloc_memory_is_lent_as_its_own_memfd(void **state)
{
	struct hostile h;
	uint8_t got[1000], *req, *area;
	struct tern_bulk_desc q;
	struct shm_bulk b, mp;
	tern_mr *mr;
	struct stat st;
	int fd;

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	assert_int_equal(tern_mem_alloc(h.ctx, BIG, (void **)&req, &mr), 0);
	server_calls_us(&h, req, &q);
	b = (struct shm_bulk){.xaddr = q.addr + 96,
			      .len = sizeof(got),
			      .laddr = (uintptr_t)got,
			      .key = q.key,
			      .token = 0x77,
			      .op = SHM_BULK_READ};
	send_bulk(&h, SHM_MSG_BULK_REQ, &b);
	expect_bulk(&h, SHM_MSG_BULK_MAP, &mp, &fd);
	assert_int_equal(mp.op, SHM_BULK_READ); /* not staged: the copy is ours alone */
	assert_int_equal(mp.xaddr, 96);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_size, BIG);
	area = mmap(NULL, BIG, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(area != MAP_FAILED);
	close(fd);
	assert_memory_equal(area + 96, req + 96, sizeof(got));
	munmap(area, BIG);
	for (int i = 0; i < 100; i++)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_false(h.closed);
	hostile_teardown(&h); /* the context releases the region with the call */
	(void)mr;
}

static bool srv_closed;

static void srv_close_cb(tern_session *s, int status)
{
	(void)s, (void)status;
	srv_closed = true;
}

/*
 * The server closes while it waits for us to copy into its staging: it
 * must not hand that memory back while we might be inside the copy.  It
 * stops sending (we see the hang-up) and waits for us to hang up too.
 */
static void test_close_waits_for_a_peer_that_may_be_inside_a_copy(void **state)
{
	struct hostile h;
	struct shm_bulk b;
	char x;

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	we_call_with_a_large_request(&h, &b);
	srv_closed = false;
	assert_int_equal(tern_session_close(h.srv, srv_close_cb), 0);
	for (double end = now_s() + 0.3; now_s() < end;)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_false(srv_closed);
	assert_int_equal(recv(h.sock, &x, 1, MSG_DONTWAIT), 0); /* its hang-up */
	close(h.sock);						/* our copy is over: we hang up */
	h.sock = -1;
	run_until(h.ctx, &srv_closed, 0.5);
	assert_true(srv_closed);
	hostile_teardown(&h);
}

/*
 * The server calls us with a reply buffer of BIG_SPLIT bytes (not
 * registered: it goes through staging): its reply descriptor.
 */
#define BIG_SPLIT (SHM_SPLIT_MIN + (1u << 20))

static void server_calls_us_for_a_large_reply(struct hostile *h, void *reply_buf,
					      struct tern_bulk_desc *rd)
{
	struct tern_call_opts co = {
		.size = sizeof(co), .reply_buf = reply_buf, .reply_cap = BIG_SPLIT};

	assert_int_equal(tern_call(h->srv, M_ECHO, "get", 3, ignore_call, NULL, &co), 0);
	server_call_desc(h, TERN_HDR_SIZE + TERN_BULK_DESC_SIZE + 3, TERN_F_REPLY_DESC, rd);
	assert_int_equal(rd->len, BIG_SPLIT);
}

/*
 * The server (the caller here) closes its session while we are still
 * copying our half of a split reply push into its reply staging: that
 * staging must not go back to the pool, where the next large call would
 * find it, until we have hung up.  We play the peer whose copy is late:
 * after the close we write our half, then check that the memory the
 * server hands out next (a canary in fresh staging) was not what we hit.
 */
static void test_close_waits_for_the_peers_half_of_a_split_push(void **state)
{
	struct hostile h;
	struct tern_bulk_desc rd;
	struct tern_stage *canary;
	struct shm_bulk b, sp = {0}, d = {0};
	struct shm_msg m;
	uint8_t *ours = malloc(BIG_SPLIT), *reply_buf = malloc(BIG_SPLIT);
	int fds[4], nfds, got_split = 0, got_done = 0;
	size_t mid;

	(void)state;
	assert_non_null(ours);
	assert_non_null(reply_buf);
	memset(ours, 0xab, BIG_SPLIT);
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	server_calls_us_for_a_large_reply(&h, reply_buf, &rd);

	/* Push the reply: the server splits it, copies its half, says DONE. */
	b = (struct shm_bulk){.xaddr = rd.addr,
			      .len = BIG_SPLIT,
			      .laddr = (uintptr_t)ours,
			      .key = rd.key,
			      .token = 0x77,
			      .op = SHM_BULK_WRITE};
	send_bulk(&h, SHM_MSG_BULK_REQ, &b);
	while (!got_done) {
		assert_int_equal(run_until_readable(h.ctx, h.sock, 5), 0);
		assert_int_equal(h_recv(h.sock, &m, fds, &nfds), (ssize_t)sizeof(m));
		if (m.type == SHM_MSG_BULK_SPLIT) {
			memcpy(&sp, m.hs, sizeof(sp));
			got_split++;
		} else {
			assert_int_equal(m.type, SHM_MSG_BULK_DONE);
			memcpy(&d, m.hs, sizeof(d));
			got_done++;
		}
	}
	assert_int_equal(got_split, 1);
	assert_int_equal(d.status, 0);
	mid = sp.len;
	assert_true(mid > 0 && mid < BIG_SPLIT);

	/* We are "still copying" our half [mid, len) when the server closes. */
	srv_closed = false;
	assert_int_equal(tern_session_close(h.srv, srv_close_cb), 0);
	for (double end = now_s() + 0.2; now_s() < end;)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);

	/* The server's next large call takes staging of this size: a canary. */
	canary = tern__stage_get(h.ctx, BIG_SPLIT);
	assert_non_null(canary);
	memset(canary->mr.addr, 0xcc, BIG_SPLIT);

	/* Our late half lands where the export was. */
	{
		struct iovec l = {.iov_base = ours + mid, .iov_len = BIG_SPLIT - mid};
		struct iovec r = {.iov_base = (void *)(uintptr_t)(rd.addr + mid),
				  .iov_len = BIG_SPLIT - mid};
		assert_int_equal(process_vm_writev(getpid(), &l, 1, &r, 1, 0),
				 (ssize_t)(BIG_SPLIT - mid));
	}
	for (size_t i = 0; i < BIG_SPLIT; i++)
		if (((uint8_t *)canary->mr.addr)[i] != 0xcc)
			fail_msg("the canary was overwritten at %zu of %u", i, BIG_SPLIT);
	tern__stage_put(h.ctx, canary);
	assert_false(srv_closed); /* it waits for our hang-up */

	close(h.sock); /* our copy is over: we hang up */
	h.sock = -1;
	run_until(h.ctx, &srv_closed, 2);
	assert_true(srv_closed);
	hostile_teardown(&h);
	free(ours);
	free(reply_buf);
}

/* Dying with the server waiting on our answer: a reset, not a protocol
 * error, and the request's staging is released (LSan checks at exit). */
static void test_peer_dying_mid_transfer_is_a_reset(void **state)
{
	struct hostile h;
	struct shm_bulk b;

	(void)state;
	hostile_setup(&h, TERN_PROGRESS_BUSY);
	hostile_handshake(&h);
	we_call_with_a_large_request(&h, &b);
	for (int i = 0; i < 100; i++)
		tern_ctx_run(h.ctx, TERN_RUN_NOWAIT);
	assert_false(h.closed);
	hostile_finish(&h, 0.01); /* hangs up */
	assert_int_equal(h.reason, -ECONNRESET);
	assert_int_equal(h.cnt.protocol_errors, 0);
	hostile_teardown(&h);
}

/* ---- large messages between two processes ------------------------------------------------ */

/* Turn CAP_SYS_PTRACE off (0) or back on (1) in our effective set. */
static void ptrace_cap(int on)
{
	struct __user_cap_header_struct hd = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];

	assert_int_equal(syscall(SYS_capget, &hd, d), 0);
	if (on)
		d[0].effective |= d[0].permitted & (1u << CAP_SYS_PTRACE);
	else
		d[0].effective &= ~(1u << CAP_SYS_PTRACE);
	assert_int_equal(syscall(SYS_capset, &hd, d), 0);
}

/*
 * Does process @pid map a memfd named @name?  (/proc/pid/maps says
 * "/memfd:name (deleted)".)  Reading an undumpable process's maps takes
 * CAP_SYS_PTRACE, which we hold for the look only.
 */
static bool maps_memfd(pid_t pid, const char *name)
{
	struct __user_cap_header_struct hd = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];
	char path[64], line[512], needle[96];
	bool found = false;
	FILE *f;

	assert_int_equal(syscall(SYS_capget, &hd, d), 0);
	ptrace_cap(1);
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	snprintf(needle, sizeof(needle), "/memfd:%s ", name);
	assert_non_null(f = fopen(path, "r"));
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, needle) != NULL;
	fclose(f);
	assert_int_equal(syscall(SYS_capset, &hd, d), 0);
	return found;
}

/* Run @ctx until @pid no longer maps memfd @name, for up to 5 s. */
static bool unmaps_memfd(tern_ctx *ctx, pid_t pid, const char *name)
{
	for (double end = now_s() + 5; now_s() < end;) {
		if (!maps_memfd(pid, name))
			return true;
		for (int i = 0; i < 100; i++)
			tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	}
	return false;
}

enum echo_mem {
	ECHO_MALLOC, /* plain heap memory: staging (or process_vm) */
	ECHO_ALLOC,  /* tern_mem_alloc(): the peer maps it */
};

/*
 * Large echoes of echo_size bytes (8 MiB), the request one way and the reply the other, with
 * a server in another process (@server_mode); the first failed call's
 * status and message.  @mapped, when not NULL: a memfd the server must map
 * once the calls are done ("tern-shm-stage", "tern-mem"), and, for
 * tern-mem, unmap once we deregistered it.
 */
static size_t echo_size = 8 << 20;

static int large_echo_with_mem(const char *server_mode, enum echo_mem mem, char *errmsg,
			       size_t errlen, const char *mapped)
{
	size_t size = echo_size;
	uint8_t *req, *back, small[8];
	tern_mr *mr_req = NULL, *mr_back = NULL;
	struct tern_sync_reply srep = {.buf = small, .cap = sizeof(small)};
	char uri[128];
	tern_session *s;
	tern_ctx *ctx;
	pid_t pid;
	int rc = 0;

	pid = spawn_server(server_mode, uri, sizeof(uri));
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	if (mem == ECHO_ALLOC) {
		assert_int_equal(tern_mem_alloc(ctx, size, (void **)&req, &mr_req), 0);
		assert_int_equal(tern_mem_alloc(ctx, size, (void **)&back, &mr_back), 0);
	} else {
		assert_non_null(req = malloc(size));
		assert_non_null(back = malloc(size));
	}
	assert_int_equal(tern_connect_sync(ctx, uri, NULL, 10000, &s), 0);
	/* twice, with other bytes: the second reuses what the first set up */
	for (int round = 0; round < 2 && rc == 0; round++) {
		struct tern_sync_reply rep = {.buf = back, .cap = size, .direct = 1};

		for (size_t i = 0; i < size; i++)
			req[i] = (uint8_t)(i * 13 + 5 + round);
		memset(back, 0, size);
		rc = tern_call_sync(s, M_ECHO, req, size, &rep, 20000);
		snprintf(errmsg, errlen, "%s", rep.errmsg);
		if (rc == 0) {
			assert_int_equal(rep.len, size);
			assert_memory_equal(back, req, size);
		}
	}
	/* either way the session goes on */
	assert_int_equal(tern_call_sync(s, M_ECHO, "ok", 2, &srep, 5000), 0);
	if (mapped && rc == 0)
		assert_true(maps_memfd(pid, mapped));
	if (mem == ECHO_ALLOC) {
		assert_int_equal(tern_mem_deregister(mr_req), 0);
		assert_int_equal(tern_mem_deregister(mr_back), 0);
		/* the server was told to let go of both regions */
		if (mapped && rc == 0)
			assert_true(unmaps_memfd(ctx, pid, "tern-mem"));
	} else {
		free(req);
		free(back);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
	return rc;
}

static int large_echo_with(const char *server_mode, char *errmsg, size_t errlen)
{
	return large_echo_with_mem(server_mode, ECHO_MALLOC, errmsg, errlen, NULL);
}

static void test_large_echo_between_two_processes(void **state)
{
	char why[256];

	(void)state;
	assert_int_equal(large_echo_with("busy", why, sizeof(why)), 0);
}

/* The server cannot reach us (we are not dumpable, it holds no
 * CAP_SYS_PTRACE) but we can reach it: the halves it would copy itself
 * are asked of us instead, and the echo comes back whole. */
static void test_a_peer_that_cannot_reach_us_gets_its_half_copied_for_it(void **state)
{
	char why[256];
	int rc;

	(void)state;
	prctl(PR_SET_DUMPABLE, 0);
	rc = large_echo_with("nocap", why, sizeof(why));
	prctl(PR_SET_DUMPABLE, 1);
	assert_int_equal(rc, 0);
}

/*
 * Neither process may process_vm_* the other (what Yama's ptrace_scope 1
 * does to two unrelated processes): the server is not dumpable and we drop
 * CAP_SYS_PTRACE, so our copies into and out of it are refused; it reaches
 * us, but is never asked to (we refuse to split).  The request and the
 * reply both pass through a staging memfd of the connection's, which the
 * server maps.
 */
static void test_large_calls_without_ptrace_go_through_a_staging_memfd(void **state)
{
	char why[256];
	int rc;

	(void)state;
	ptrace_cap(0);
	rc = large_echo_with_mem("undumpable", ECHO_MALLOC, why, sizeof(why), "tern-shm-stage");
	ptrace_cap(1);
	if (rc)
		printf("call failed: %s (%s)\n", tern_strerror(rc), why);
	assert_int_equal(rc, 0);
}

/* The same with tern_mem_alloc() buffers: the server maps them and copies
 * straight in and out, no staging on our side. */
static void test_large_calls_without_ptrace_map_tern_mem_alloc_memory(void **state)
{
	char why[256];
	int rc;

	(void)state;
	ptrace_cap(0);
	rc = large_echo_with_mem("undumpable", ECHO_ALLOC, why, sizeof(why), "tern-mem");
	ptrace_cap(1);
	if (rc)
		printf("call failed: %s (%s)\n", tern_strerror(rc), why);
	assert_int_equal(rc, 0);
}

/* TERN_SHM_NO_PTRACE=1 on the server: it never tries process_vm_* (it
 * would be allowed: root, dumpable peers), and asks us for every copy. */
static void test_no_ptrace_setting_moves_large_calls_without_process_vm(void **state)
{
	char why[256];

	(void)state;
	setenv("TERN_SHM_NO_PTRACE", "1", 1);
	assert_int_equal(
		large_echo_with_mem("busy", ECHO_MALLOC, why, sizeof(why), "tern-shm-stage"), 0);
	unsetenv("TERN_SHM_NO_PTRACE");
}

/*
 * Under Yama ptrace_scope 1 (Ubuntu's default), with a server that is no
 * descendant of ours and neither side holding CAP_SYS_PTRACE: what two
 * unrelated processes of one user get.  Needs a kernel with Yama (the
 * rdma lane's VM has one; this host may not) and root to set it.
 */
static char yama_old[8];

static int yama_set(const char *v)
{
	/* a file of its own: a sysctl ignores writes past offset 0 */
	FILE *f = fopen("/proc/sys/kernel/yama/ptrace_scope", "w");

	if (!f || fputs(v, f) < 0)
		return -1;
	return fclose(f);
}

static int yama_setup(void **state)
{
	FILE *f = fopen("/proc/sys/kernel/yama/ptrace_scope", "r");
	char now[8] = "";

	(void)state;
	if (!f)
		return 0; /* each test skips, which fails the lane that insists */
	assert_non_null(fgets(yama_old, sizeof(yama_old), f));
	fclose(f);
	assert_int_equal(yama_set("1\n"), 0);
	assert_non_null(f = fopen("/proc/sys/kernel/yama/ptrace_scope", "r"));
	assert_non_null(fgets(now, sizeof(now), f));
	fclose(f);
	assert_string_equal(now, "1\n");
	echo_size = 2 << 20; /* the VM's emulated CPU is slow */
	return 0;
}

static int yama_teardown(void **state)
{
	(void)state;
	if (yama_old[0])
		(void)yama_set(yama_old);
	return 0;
}

static void yama_large_echo(enum echo_mem mem, const char *mapped)
{
	char why[256];
	int rc;

	if (access("/proc/sys/kernel/yama/ptrace_scope", F_OK))
		skip();
	ptrace_cap(0);
	rc = large_echo_with_mem("yama", mem, why, sizeof(why), mapped);
	ptrace_cap(1);
	if (rc)
		printf("call failed: %s (%s)\n", tern_strerror(rc), why);
	assert_int_equal(rc, 0);
}

/* First, that Yama does stand between the test and such a server. */
static void test_yama_ptrace_scope_1_denies_process_vm_to_an_unrelated_server(void **state)
{
	char uri[128], byte;
	struct iovec l = {.iov_base = &byte, .iov_len = 1};
	struct iovec r = {.iov_base = &byte, .iov_len = 1}; /* some address of its: same binary */
	ssize_t n;
	pid_t pid;
	int err;

	(void)state;
	if (access("/proc/sys/kernel/yama/ptrace_scope", F_OK))
		skip();
	pid = spawn_server("yama", uri, sizeof(uri));
	ptrace_cap(0);
	n = process_vm_readv(pid, &l, 1, &r, 1, 0);
	err = errno;
	ptrace_cap(1);
	kill(pid, SIGKILL);
	assert_int_equal(n, -1);
	assert_int_equal(err, EPERM);
}

static void test_yama_ptrace_scope_1_large_calls_go_through_a_staging_memfd(void **state)
{
	(void)state;
	yama_large_echo(ECHO_MALLOC, "tern-shm-stage");
}

static void test_yama_ptrace_scope_1_large_calls_map_tern_mem_alloc_memory(void **state)
{
	(void)state;
	yama_large_echo(ECHO_ALLOC, "tern-mem");
}

int main(int argc, char **argv)
{
	const struct CMUnitTest yama_tests[] = {
		cmocka_unit_test(test_yama_ptrace_scope_1_denies_process_vm_to_an_unrelated_server),
		cmocka_unit_test(test_yama_ptrace_scope_1_large_calls_go_through_a_staging_memfd),
		cmocka_unit_test(test_yama_ptrace_scope_1_large_calls_map_tern_mem_alloc_memory),
	};
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inplace_reply_is_read_in_place_from_the_same_memfd_page),
		cmocka_unit_test(test_default_name_is_abstract_and_leaves_no_file),
		cmocka_unit_test(test_socket_dir_is_private_and_cleaned_up),
		cmocka_unit_test(test_malformed_shm_uris_are_clear_errors),
		cmocka_unit_test(test_a_peer_of_another_user_is_refused_both_ways),
		cmocka_unit_test(test_hand_made_peer_is_served_when_it_plays_by_the_rules),
		cmocka_unit_test(test_hostile_message_index_past_the_ring),
		cmocka_unit_test(test_hostile_descriptor_slot_out_of_range),
		cmocka_unit_test(test_hostile_descriptor_length_past_the_slot),
		cmocka_unit_test(test_hostile_same_slot_twice),
		cmocka_unit_test(test_hostile_header_in_a_valid_descriptor),
		cmocka_unit_test(test_hostile_returns_a_slot_the_server_never_sent),
		cmocka_unit_test(test_hostile_returns_a_slot_twice),
		cmocka_unit_test(test_hostile_descriptor_with_nothing_in_it),
		cmocka_unit_test(test_hostile_garbage_then_doorbell_in_event_mode),
		cmocka_unit_test(test_fuzz_random_bytes_into_the_segment_are_rejected_safely),
		cmocka_unit_test(test_bulk_read_inside_an_export_is_served_with_one_copy),
		cmocka_unit_test(test_hostile_bulk_read_with_a_key_never_given),
		cmocka_unit_test(test_hostile_bulk_read_one_byte_past_the_export),
		cmocka_unit_test(test_hostile_bulk_read_of_an_absurd_length),
		cmocka_unit_test(test_hostile_bulk_write_into_a_read_only_export),
		cmocka_unit_test(test_hostile_done_for_a_transfer_nobody_asked_for),
		cmocka_unit_test(test_hostile_done_with_a_stale_generation),
		cmocka_unit_test(test_hostile_split_past_the_end_of_the_transfer),
		cmocka_unit_test(test_hostile_split_of_a_transfer_nobody_asked_for),
		cmocka_unit_test(test_peer_dying_mid_transfer_is_a_reset),
		cmocka_unit_test(test_hand_made_exporter_answering_with_a_staged_area_is_served),
		cmocka_unit_test(test_hostile_map_offset_past_the_area),
		cmocka_unit_test(test_hostile_map_offset_that_wraps),
		cmocka_unit_test(test_hostile_map_of_an_area_never_sent),
		cmocka_unit_test(test_hostile_map_of_an_area_id_out_of_range),
		cmocka_unit_test(test_hostile_map_of_an_unsealed_memfd),
		cmocka_unit_test(test_hostile_map_of_a_pipe),
		cmocka_unit_test(test_hostile_map_with_another_length),
		cmocka_unit_test(test_hostile_map_into_another_buffer_of_the_servers),
		cmocka_unit_test(test_hostile_map_in_the_wrong_direction),
		cmocka_unit_test(test_hostile_map_of_a_transfer_nobody_asked_for),
		cmocka_unit_test(test_without_ptrace_the_exporter_answers_with_a_staged_area),
		cmocka_unit_test(test_hostile_free_of_an_area_never_lent),
		cmocka_unit_test(test_hostile_filled_for_an_area_lent_for_a_read),
		cmocka_unit_test(test_tern_mem_alloc_memory_is_lent_as_its_own_memfd),
		cmocka_unit_test(test_idle_staging_past_64_mib_is_unmapped),
		cmocka_unit_test(test_close_waits_for_a_peer_that_may_be_inside_a_copy),
		cmocka_unit_test(test_close_waits_for_the_peers_half_of_a_split_push),
		cmocka_unit_test(test_hostile_hello_bad_magic),
		cmocka_unit_test(test_hostile_hello_truncated),
		cmocka_unit_test(test_hostile_hello_without_a_doorbell),
		cmocka_unit_test(test_hostile_hello_with_a_pipe_for_a_doorbell),
		cmocka_unit_test(test_hostile_hello_with_too_many_descriptors),
		cmocka_unit_test(test_hostile_hello_with_an_absurd_geometry),
		cmocka_unit_test(test_hostile_server_unsealed_segment),
		cmocka_unit_test(test_hostile_server_segment_of_the_wrong_size),
		cmocka_unit_test(test_hostile_server_segment_sealed_against_writing),
		cmocka_unit_test(test_hostile_server_pipe_for_a_segment),
		cmocka_unit_test(test_hostile_server_plain_file_for_a_segment),
		cmocka_unit_test(test_hostile_server_segment_with_a_bad_header),
		cmocka_unit_test(test_hostile_server_pipe_for_a_doorbell),
		cmocka_unit_test(test_hostile_server_scribbles_on_the_clients_ring),
		cmocka_unit_test(test_refusal_with_a_made_up_status_is_a_plain_refusal),
		cmocka_unit_test(test_event_mode_doorbells_lose_no_wakeup),
		cmocka_unit_test(test_adaptive_mode_doorbells_lose_no_wakeup),
		cmocka_unit_test(test_large_echo_between_two_processes),
		cmocka_unit_test(test_a_peer_that_cannot_reach_us_gets_its_half_copied_for_it),
		cmocka_unit_test(test_large_calls_without_ptrace_go_through_a_staging_memfd),
		cmocka_unit_test(test_large_calls_without_ptrace_map_tern_mem_alloc_memory),
		cmocka_unit_test(test_no_ptrace_setting_moves_large_calls_without_process_vm),
	};

	setenv("TERN_TEST_TRANSPORT", "shm", 1);
	if (argc > 2 && strcmp(argv[1], "--serve") == 0)
		return serve_main(argv[2]);
	/* the rdma lane runs these in the VM, whose kernel has Yama (tests/meson.build) */
	if (argc > 1 && strcmp(argv[1], "--yama") == 0) {
		if (access("/proc/sys/kernel/yama/ptrace_scope", W_OK)) {
			fprintf(stderr, "no Yama ptrace_scope to set here\n");
			return 77; /* a skip: the rdma lane fails on it */
		}
		return cmocka_run_group_tests(yama_tests, yama_setup, yama_teardown);
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
