// SPDX-License-Identifier: MIT
/*
 * grpc_echo - the gRPC peer of tern's tcp:// echo benchmark.
 *
 * A unary echo (bench/grpc/echo.proto: Blob in, the same Blob out) over
 * loopback TCP, written the way the gRPC C++ documentation teaches:
 *
 *   --inflight 1  the synchronous API on both sides: the client blocks in
 *                 stub->Echo(), the server is a synchronous service
 *                 (gRPC's own thread pool runs the handler).
 *   --inflight N  the asynchronous API on both sides: the client keeps N
 *                 calls outstanding on a CompletionQueue, the server is a
 *                 CompletionQueue state machine driven by one thread.
 *
 * The parent is the client and a forked child the server; the fork comes
 * before either side touches gRPC.  Every call is timed from issue to
 * completion; every reply is checked (length, and the sequence number the
 * request carried in its first bytes).  Output: one JSON object per size,
 * the keys tern_local_bench prints (plus mean_us).
 *
 * --one-thread: no fork.  One process serves and calls over loopback TCP,
 * both sides on one CompletionQueue that one thread drives, one call at a
 * time: the shape of bench/cost, for counting instructions per round trip
 * with "valgrind --tool=callgrind --toggle-collect=bench_measure".
 */
#include <getopt.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "echo.grpc.pb.h"

extern "C" {
#include "stats.h"
}

using ternbench::Blob;
using ternbench::Echo;

namespace
{

struct Cfg {
	size_t sizes[16] = {32, 1024, 4096, 65536};
	int nsizes = 4;
	long iters = 20000, warmup = 2000;
	int inflight = 1;
	bool one_thread = false;
};

/* ---- server ---------------------------------------------------------------- */

class SyncEcho final : public Echo::Service
{
	grpc::Status Echo(grpc::ServerContext *, const Blob *in, Blob *out) override
	{
		*out = *in;
		return grpc::Status::OK;
	}
};

/* One call on the asynchronous server: wait for a request, answer it, free. */
class AsyncCall
{
      public:
	AsyncCall(Echo::AsyncService *svc, grpc::ServerCompletionQueue *cq)
	    : svc_(svc), cq_(cq), responder_(&ctx_)
	{
		svc_->RequestEcho(&ctx_, &req_, &responder_, cq_, cq_, this);
	}
	/* The completion queue returned this call's tag. */
	void step(bool ok)
	{
		if (answered_ || !ok) {
			delete this;
			return;
		}
		new AsyncCall(svc_, cq_); /* the next request has somewhere to go */
		answered_ = true;
		responder_.Finish(req_, grpc::Status::OK, this);
	}

      private:
	Echo::AsyncService *svc_;
	grpc::ServerCompletionQueue *cq_;
	grpc::ServerContext ctx_;
	Blob req_;
	grpc::ServerAsyncResponseWriter<Blob> responder_;
	bool answered_ = false;
};

int serve(const Cfg &c, int wfd)
{
	SyncEcho sync;
	Echo::AsyncService async;
	grpc::ServerBuilder b;
	std::unique_ptr<grpc::ServerCompletionQueue> cq;
	int port = 0;

	b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
	b.SetMaxReceiveMessageSize(64 << 20);
	if (c.inflight == 1) {
		b.RegisterService(&sync);
	} else {
		b.RegisterService(&async);
		cq = b.AddCompletionQueue();
	}
	std::unique_ptr<grpc::Server> server = b.BuildAndStart();
	if (!server || port == 0)
		return 1;
	if (write(wfd, &port, sizeof(port)) != (ssize_t)sizeof(port))
		return 1;
	close(wfd);
	if (c.inflight == 1) {
		server->Wait(); /* until the client kills us */
		return 0;
	}
	for (int i = 0; i < 2 * c.inflight; i++)
		new AsyncCall(&async, cq.get());
	void *tag;
	bool ok;
	while (cq->Next(&tag, &ok))
		static_cast<AsyncCall *>(tag)->step(ok);
	return 0;
}

/* ---- client ---------------------------------------------------------------- */

struct Run {
	const Cfg *c;
	size_t len;
	long total;
	std::vector<double> t_issue, lat;
	long bad = 0;
};

/* The request: filled once per size; each call writes only its number. */
void fill(Blob *b, size_t len, long seq)
{
	std::string *d = b->mutable_data();

	if (d->size() != len)
		d->assign(len, '\x5a');
	memcpy(&(*d)[0], &seq, len < sizeof(seq) ? len : sizeof(seq));
}

bool check(const Blob &b, size_t len, long seq)
{
	return b.data().size() == len &&
	       memcmp(b.data().data(), &seq, len < sizeof(seq) ? len : sizeof(seq)) == 0;
}

void record(Run *r, long seq, double now)
{
	if (seq >= r->c->warmup)
		r->lat[seq - r->c->warmup] = now - r->t_issue[seq];
}

/* The synchronous client: one blocking call after another. */
double run_sync(Run *r, Echo::Stub *stub)
{
	Blob req, rep;
	double t_begin = 0;

	for (long seq = 0; seq < r->total; seq++) {
		grpc::ClientContext ctx;

		fill(&req, r->len, seq);
		if (seq == r->c->warmup)
			t_begin = bench_now_us();
		r->t_issue[seq] = bench_now_us();
		grpc::Status st = stub->Echo(&ctx, req, &rep);
		record(r, seq, bench_now_us());
		if (!st.ok() || !check(rep, r->len, seq))
			r->bad++;
	}
	return t_begin;
}

struct AsyncReq {
	long seq;
	grpc::ClientContext ctx;
	Blob rep;
	grpc::Status st;
	std::unique_ptr<grpc::ClientAsyncResponseReader<Blob>> rd;
};

void issue_async(Run *r, Echo::Stub *stub, grpc::CompletionQueue *cq, Blob *req, long seq)
{
	AsyncReq *a = new AsyncReq;

	a->seq = seq;
	fill(req, r->len, seq);
	r->t_issue[seq] = bench_now_us();
	a->rd = stub->AsyncEcho(&a->ctx, *req, cq);
	a->rd->Finish(&a->rep, &a->st, a);
}

/* The asynchronous client: keep INFLIGHT calls outstanding on one queue. */
double run_async(Run *r, Echo::Stub *stub)
{
	grpc::CompletionQueue cq;
	Blob req;
	long issued = 0, done = 0;
	double t_begin = 0;

	while (issued < r->total && issued < r->c->inflight) {
		if (issued == r->c->warmup)
			t_begin = bench_now_us();
		issue_async(r, stub, &cq, &req, issued++);
	}
	while (done < r->total) {
		void *tag;
		bool ok;

		if (!cq.Next(&tag, &ok))
			break;
		AsyncReq *a = static_cast<AsyncReq *>(tag);
		record(r, a->seq, bench_now_us());
		if (!ok || !a->st.ok() || !check(a->rep, r->len, a->seq))
			r->bad++;
		delete a;
		done++;
		if (issued < r->total) {
			if (issued == r->c->warmup)
				t_begin = bench_now_us();
			issue_async(r, stub, &cq, &req, issued++);
		}
	}
	return t_begin;
}

std::unique_ptr<Echo::Stub> make_stub(int port)
{
	grpc::ChannelArguments args;

	args.SetMaxReceiveMessageSize(64 << 20);
	auto ch = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
					    grpc::InsecureChannelCredentials(), args);
	if (!ch->WaitForConnected(gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
					       gpr_time_from_seconds(10, GPR_TIMESPAN))))
		return nullptr;
	return Echo::NewStub(ch);
}

int client(const Cfg &c, int port)
{
	std::unique_ptr<Echo::Stub> stub = make_stub(port);

	if (!stub) {
		fprintf(stderr, "grpc_echo: could not connect to 127.0.0.1:%d\n", port);
		return 1;
	}
	for (int i = 0; i < c.nsizes; i++) {
		Run r;
		struct bench_stats st;

		r.c = &c;
		r.len = c.sizes[i];
		r.total = c.iters + c.warmup;
		r.t_issue.assign(r.total, 0);
		r.lat.assign(c.iters, 0);
		double t0 = c.inflight == 1 ? run_sync(&r, stub.get()) : run_async(&r, stub.get());
		double elapsed = bench_now_us() - t0;
		if (r.bad) {
			fprintf(stderr, "grpc_echo: %ld bad replies\n", r.bad);
			return 1;
		}
		bench_stats_compute(&st, r.lat.data(), (size_t)c.iters, elapsed);
		printf("{\"bench\":\"grpc_echo\",\"transport\":\"tcp\",\"mode\":\"%s\","
		       "\"kind\":\"peer\",\"size\":%zu,\"inflight\":%d,\"iters\":%ld,"
		       "\"p50_us\":%.3f,\"p99_us\":%.3f,\"mean_us\":%.3f,\"rate_per_s\":%.0f}\n",
		       c.inflight == 1 ? "sync" : "async", r.len, c.inflight, c.iters, st.p50_us,
		       st.p99_us, st.mean_us, st.rate_per_s);
		fflush(stdout);
	}
	return 0;
}

/* ---- one thread, both sides (for callgrind) ---------------------------------- */

struct OneThread {
	Echo::AsyncService *svc = nullptr;
	grpc::ServerCompletionQueue *cq = nullptr;
	Echo::Stub *stub = nullptr;
	size_t len = 0;
	long seq = 0;
	long bad = 0;
	Blob req; /* reused: each call writes only its number */
};

/* Tags on the shared queue: the server's call objects are AsyncCall; the
 * client's single call is marked by this address. */
char client_tag;

/* One round trip: issue, then turn the shared queue until the reply is in. */
int one_round_trip(void *arg)
{
	OneThread *o = static_cast<OneThread *>(arg);
	grpc::ClientContext ctx;
	Blob rep;
	grpc::Status st;

	fill(&o->req, o->len, ++o->seq);
	auto rd = o->stub->AsyncEcho(&ctx, o->req, o->cq);
	rd->Finish(&rep, &st, &client_tag);
	for (;;) {
		void *tag;
		bool ok;

		if (!o->cq->Next(&tag, &ok))
			return 1;
		if (tag != &client_tag) {
			static_cast<AsyncCall *>(tag)->step(ok);
			continue;
		}
		if (!ok || !st.ok() || !check(rep, o->len, o->seq))
			o->bad++;
		return 0;
	}
}

int one_thread(const Cfg &c)
{
	Echo::AsyncService svc;
	grpc::ServerBuilder b;
	int port = 0;

	b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
	b.RegisterService(&svc);
	std::unique_ptr<grpc::ServerCompletionQueue> cq = b.AddCompletionQueue();
	std::unique_ptr<grpc::Server> server = b.BuildAndStart();
	if (!server || port == 0)
		return 1;
	std::unique_ptr<Echo::Stub> stub = make_stub(port);
	if (!stub)
		return 1;
	new AsyncCall(&svc, cq.get());
	for (int i = 0; i < c.nsizes; i++) {
		OneThread o;
		o.svc = &svc;
		o.cq = cq.get();
		o.stub = stub.get();
		o.len = c.sizes[i];
		double t0;
		int rc = bench_warm_up(one_round_trip, &o, c.warmup);

		t0 = bench_now_us();
		if (rc == 0)
			rc = bench_measure(one_round_trip, &o, c.iters);
		if (rc || o.bad) {
			fprintf(stderr, "grpc_echo: one thread: %ld bad replies\n", o.bad);
			return 1;
		}
		printf("{\"bench\":\"grpc_echo\",\"transport\":\"tcp\",\"mode\":\"one-thread\","
		       "\"size\":%zu,\"iters\":%ld,\"ns_per_rt\":%.0f}\n",
		       o.len, c.iters, c.iters ? (bench_now_us() - t0) * 1e3 / c.iters : 0.0);
	}
	server->Shutdown();
	cq->Shutdown();
	void *tag;
	bool ok;
	while (cq->Next(&tag, &ok))
		if (tag != &client_tag)
			static_cast<AsyncCall *>(tag)->step(false);
	return 0;
}

void usage(FILE *f)
{
	fprintf(f, "usage: grpc_echo [--sizes 32,1K,4K,64K] [--iters N] [--warmup N]\n"
		   "                 [--inflight N] [--one-thread]\n"
		   "gRPC unary echo over loopback TCP (sync API at 1 in flight, async above);\n"
		   "JSON lines on stdout.\n");
}

} // namespace

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"warmup", required_argument, 0, 'w'},
		{"inflight", required_argument, 0, 'i'},
		{"one-thread", no_argument, 0, 'o'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	Cfg c;
	int ch, pfd[2], port = 0, st, rc;
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:n:w:i:oh", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, c.sizes, 16, &c.nsizes)) {
				usage(stderr);
				return 2;
			}
			break;
		case 'n':
			c.iters = atol(optarg);
			break;
		case 'w':
			c.warmup = atol(optarg);
			break;
		case 'i':
			c.inflight = atoi(optarg);
			break;
		case 'o':
			c.one_thread = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (c.iters <= 0 || c.warmup < 0 || c.inflight < 1 || c.inflight > 4096) {
		usage(stderr);
		return 2;
	}
	if (c.one_thread)
		return one_thread(c);
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		close(pfd[0]);
		_exit(serve(c, pfd[1]));
	}
	close(pfd[1]);
	if (read(pfd[0], &port, sizeof(port)) != (ssize_t)sizeof(port)) {
		fprintf(stderr, "grpc_echo: the server did not start\n");
		waitpid(pid, &st, 0);
		return 1;
	}
	close(pfd[0]);
	rc = client(c, port);
	kill(pid, SIGKILL); /* a gRPC server has no "the client is done" of its own */
	waitpid(pid, &st, 0);
	return rc;
}
