// SPDX-License-Identifier: MIT
/*
 * chaos.c - the seeded chaos run: options, processes, phases, the summary.
 *
 *   chaos [--seed N] [--ops N | --seconds S | --calls N] [--transport shm|tcp|rdma|mem]
 *         [--clients N] [--max-large SIZE] [--large-budget SIZE]
 *         [--without FEATURE,...] [--soak] [--runs N] [--trace] [--tail N]
 *
 * This process is the coordinator and the server (agent 0): it listens,
 * starts the clients (this program again, with --role client; on mem://
 * they are agents of this process), kills some with SIGKILL mid-burst and
 * starts others in their place, and takes every agent through the phases
 * (agent.c): run, quiesce, drain, check.  A client talks to it over its
 * stdin and stdout, one line at a time:
 *
 *   client -> coordinator   READY, OPSDONE, QUIET, DRAINED, RESULT key=value...
 *   coordinator -> client   GO, QUIESCE, DRAIN, CHECK, EXIT, DUMP
 *
 * A broken invariant ends the process that saw it with a report on stderr
 * (util.c, chaos_fail()) and exit status 1; the coordinator then stops
 * the others and exits 1 too.  The last line on stdout counts the seeds
 * run in the form tools/lib/test_summary.py reads ("3 passed").
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chaos.h"
#include "tern/rnr.h"
#include "verbs_pair.h"

extern char **environ;

struct chaos_cfg cfg;
const char *chaos_rdma_addr;

/* SIGUSR1: print what is in flight and the trace's tail, and go on (a hang's autopsy). */
static volatile sig_atomic_t dump_asked;

static void on_usr1(int sig)
{
	(void)sig;
	dump_asked = 1;
}

static void dump_if_asked(struct agent *a)
{
	if (!dump_asked)
		return;
	dump_asked = 0;
	agent_dump(a, "SIGUSR1");
	chaos_trace_print(agent_trace(a), cfg.tail);
}

const struct chaos_feature_name chaos_features[] = {
	{"large", CF_LARGE, "requests and replies larger than a slot"},
	{"oneway", CF_ONEWAY, "one-way messages"},
	{"batch", CF_BATCH, "batched methods"},
	{"hold", CF_HOLD, "tern_req_hold on batch items"},
	{"deadlines", CF_DEADLINES, "deadlines, some of which expire"},
	{"reverse", CF_REVERSE, "the server calls its clients too"},
	{"close", CF_CLOSE, "session closes from either side, new connections"},
	{"kill", CF_KILL, "a client killed with SIGKILL mid-burst"},
	{"burst", CF_BURST, "a session's whole window of calls at once"},
	{"acquire", CF_ACQUIRE, "tern_call_acquire and tern_send_acquire"},
	{"errors", CF_ERRORS, "failing handlers, unknown methods, oversize replies"},
	{"longpoll", CF_LONGPOLL, "deferred calls woken by a later call (issue 13 defect 1)"},
	{"large-window", CF_LARGE_WINDOW, "a window of large calls at once (defect 2)"},
	{"late-large", CF_LATE_LARGE, "large calls in user memory that time out (defect 3)"},
	{"abandon", CF_ABANDON, "calls the server never answers (defect 3)"},
	{"commit-reply-buf", CF_COMMIT_RBUF, "a reply buffer with tern_call_commit (found here)"},
	{"close-null-cb", CF_CLOSE_NULL, "tern_session_close with no callback (found here)"},
	{"raw-reg-reply", CF_RAW_REG,
	 "raw handlers' large replies from registered memory (found here)"},
	{"slots-home", CF_SLOTS_HOME,
	 "check: every slot free once traffic stops (defect 1 on rdma)"},
	{"hold-oneway", CF_HOLD_OW, "tern_req_hold on one-way messages (found here)"},
	{NULL, 0, NULL},
};

/* ---- options ----------------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: chaos [options]\n"
		"  --seed N            the run's seed (default: from the clock, printed)\n"
		"  --ops N             operations per agent (default 2000)\n"
		"  --seconds S         run this long instead\n"
		"  --calls N           or until this many calls were made, over all agents\n"
		"  --transport T       shm, tcp, rdma or mem (default shm)\n"
		"  --clients N         client agents at a time (default 3)\n"
		"  --max-large SIZE    the largest request or reply (default 64M)\n"
		"  --large-budget SIZE bytes of large calls in flight per agent (default 4 x "
		"max-large)\n"
		"  --without F,...     leave features out of the mix (below)\n"
		"  --soak              the soak's mix: no kills, closes or known-defect patterns\n"
		"  --runs N            run seeds N, N+1, ... (default 1)\n"
		"  --trace             print every event\n"
		"  --trace-dir DIR     write every event to DIR/seedN-agentI.log\n"
		"  --tail N            events printed with a failure (default 60)\n"
		"features:\n");
	for (const struct chaos_feature_name *f2 = chaos_features; f2->name; f2++)
		fprintf(f, "  %-14s %s\n", f2->name, f2->what);
}

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);

	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		break;
	case 'm':
	case 'M':
		v <<= 20;
		break;
	case 'g':
	case 'G':
		v <<= 30;
		break;
	case 0:
		break;
	default:
		fprintf(stderr, "chaos: bad size %s\n", s);
		exit(2);
	}
	return v;
}

static uint32_t parse_features(const char *list)
{
	uint32_t bits = 0;
	char buf[512], *save, *tok;

	snprintf(buf, sizeof(buf), "%s", list);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		const struct chaos_feature_name *f = chaos_features;

		while (f->name && strcmp(f->name, tok))
			f++;
		if (!f->name) {
			fprintf(stderr, "chaos: no feature \"%s\"\n", tok);
			usage(stderr);
			exit(2);
		}
		bits |= f->bit;
	}
	return bits;
}

static const char *features_off(char *out, size_t len)
{
	size_t at = 0;

	out[0] = 0;
	for (const struct chaos_feature_name *f = chaos_features; f->name; f++)
		if (!(cfg.features & f->bit))
			at += (size_t)snprintf(out + at, len - at, "%s%s", at ? "," : "", f->name);
	return out;
}

/* What the role a re-executed process plays. */
struct role {
	bool client;
	int id;
	uint64_t ops, calls;
	const char *uris[CHAOS_NLISTEN];
	int nuris;
};

static void parse_args(int argc, char **argv, struct role *role)
{
	bool seeded = false, sized = false;
	uint32_t without = 0;

	memset(&cfg, 0, sizeof(cfg));
	cfg.features = CF_ALL;
	cfg.clients = 3;
	cfg.max_large = 64u << 20;
	cfg.tail = 60;
	cfg.runs = 1;
	snprintf(cfg.transport, sizeof(cfg.transport), "shm");
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

#define NEED()                                                           \
	do {                                                             \
		if (!v) {                                                \
			fprintf(stderr, "chaos: %s needs a value\n", o); \
			exit(2);                                         \
		}                                                        \
		i++;                                                     \
	} while (0)
		if (!strcmp(o, "--seed")) {
			NEED();
			cfg.seed = strtoull(v, NULL, 0);
			seeded = true;
		} else if (!strcmp(o, "--ops")) {
			NEED();
			cfg.ops = strtoull(v, NULL, 0);
			sized = true;
		} else if (!strcmp(o, "--seconds")) {
			NEED();
			cfg.seconds = strtod(v, NULL);
			sized = true;
		} else if (!strcmp(o, "--calls")) {
			NEED();
			cfg.calls = strtoull(v, NULL, 0);
			sized = true;
		} else if (!strcmp(o, "--transport")) {
			NEED();
			snprintf(cfg.transport, sizeof(cfg.transport), "%s", v);
		} else if (!strcmp(o, "--clients")) {
			NEED();
			cfg.clients = (uint32_t)strtoul(v, NULL, 0);
		} else if (!strcmp(o, "--max-large")) {
			NEED();
			cfg.max_large = parse_size(v);
		} else if (!strcmp(o, "--large-budget")) {
			NEED();
			cfg.large_budget = parse_size(v);
		} else if (!strcmp(o, "--without")) {
			NEED();
			without |= parse_features(v);
		} else if (!strcmp(o, "--soak")) {
			cfg.soak = true;
		} else if (!strcmp(o, "--runs")) {
			NEED();
			cfg.runs = atoi(v);
		} else if (!strcmp(o, "--trace")) {
			cfg.trace = true;
		} else if (!strcmp(o, "--trace-dir")) {
			NEED();
			cfg.trace_dir = v;
		} else if (!strcmp(o, "--tail")) {
			NEED();
			cfg.tail = atoi(v);
		} else if (!strcmp(o, "--role")) {
			NEED();
			role->client = !strcmp(v, "client");
		} else if (!strcmp(o, "--id")) {
			NEED();
			role->id = atoi(v);
		} else if (!strcmp(o, "--agent-ops")) {
			NEED();
			role->ops = strtoull(v, NULL, 0);
		} else if (!strcmp(o, "--agent-calls")) {
			NEED();
			role->calls = strtoull(v, NULL, 0);
		} else if (!strcmp(o, "--uri")) {
			NEED();
			if (role->nuris < CHAOS_NLISTEN)
				role->uris[role->nuris++] = v;
		} else if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
			usage(stdout);
			exit(0);
		} else {
			fprintf(stderr, "chaos: unknown option %s\n", o);
			usage(stderr);
			exit(2);
		}
#undef NEED
	}
	if (!seeded) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		cfg.seed = chaos_mix((uint64_t)ts.tv_nsec ^ (uint64_t)getpid()) % 1000000000u;
	}
	if (!sized)
		cfg.ops = 2000;
	if (cfg.soak) {
		/* mixed sizes and checksums, long-lived processes: no kills or
		 * closes; every pattern the lanes run is in */
		without |= CF_KILL | CF_CLOSE;
	}
	cfg.features &= ~without;
	if (!cfg.large_budget)
		cfg.large_budget = 4 * cfg.max_large;
	if (cfg.runs < 1)
		cfg.runs = 1;
	if (strcmp(cfg.transport, "shm") && strcmp(cfg.transport, "tcp") &&
	    strcmp(cfg.transport, "rdma") && strcmp(cfg.transport, "mem")) {
		fprintf(stderr, "chaos: no transport \"%s\"\n", cfg.transport);
		exit(2);
	}
}

/* The command line that replays the current seed. */
static void make_replay(void)
{
	char off[256];
	int n;

	n = snprintf(cfg.replay, sizeof(cfg.replay), "%s --transport %s --seed %" PRIu64, cfg.self,
		     cfg.transport, cfg.seed);
	if (cfg.seconds)
		n += snprintf(cfg.replay + n, sizeof(cfg.replay) - (size_t)n, " --seconds %g",
			      cfg.seconds);
	else if (cfg.calls)
		n += snprintf(cfg.replay + n, sizeof(cfg.replay) - (size_t)n, " --calls %" PRIu64,
			      cfg.calls);
	else
		n += snprintf(cfg.replay + n, sizeof(cfg.replay) - (size_t)n, " --ops %" PRIu64,
			      cfg.ops);
	n += snprintf(cfg.replay + n, sizeof(cfg.replay) - (size_t)n,
		      " --clients %u --max-large %" PRIu64 " --large-budget %" PRIu64, cfg.clients,
		      cfg.max_large, cfg.large_budget);
	if (cfg.soak)
		n += snprintf(cfg.replay + n, sizeof(cfg.replay) - (size_t)n, " --soak");
	else if (*features_off(off, sizeof(off)))
		n += snprintf(cfg.replay + n, sizeof(cfg.replay) - (size_t)n, " --without %s", off);
	(void)n;
}

/* ---- a client process ------------------------------------------------------- */

/* Read complete lines from @fd (non-blocking) into @buf; call @fn for each. */
struct linebuf {
	char buf[4096];
	size_t have;
	bool eof;
};

static int read_lines(int fd, struct linebuf *lb, void (*fn)(void *, char *), void *arg)
{
	ssize_t n = read(fd, lb->buf + lb->have, sizeof(lb->buf) - 1 - lb->have);
	char *nl;

	if (n == 0)
		lb->eof = true;
	if (n <= 0)
		return 0;
	lb->have += (size_t)n;
	lb->buf[lb->have] = 0;
	while ((nl = strchr(lb->buf, '\n'))) {
		size_t len = (size_t)(nl - lb->buf) + 1;

		*nl = 0;
		fn(arg, lb->buf);
		memmove(lb->buf, lb->buf + len, lb->have - len);
		lb->have -= len;
		lb->buf[lb->have] = 0;
	}
	return 1;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void print_result(struct agent_stats *st)
{
	say("RESULT ops=%" PRIu64 " calls=%" PRIu64 " ok=%" PRIu64 " rerr=%" PRIu64 " tmo=%" PRIu64
	    " reset=%" PRIu64 " canc=%" PRIu64 " nobufs=%" PRIu64 " refused=%" PRIu64
	    " owsent=%" PRIu64 " owrecv=%" PRIu64 " served=%" PRIu64 " large=%" PRIu64
	    " sessions=%" PRIu64 " closes=%" PRIu64 " lost=%" PRIu64 " dup=%" PRIu64
	    " wrong=%" PRIu64 " rss0=%" PRIu64 " rssw=%" PRIu64 " rss1=%" PRIu64 " late=%" PRIu64,
	    st->ops, st->calls, st->ok, st->remote_err, st->timeouts, st->resets, st->canceled,
	    st->nobufs, st->refused, st->oneway_sent, st->oneway_recv, st->served, st->large_bytes,
	    st->sessions, st->closes, st->lost, st->dup, st->wrong, st->rss_start, st->rss_warm,
	    st->rss_end, st->late_replies);
}

struct client_state {
	struct agent *a;
	bool go, exit;
};

/* A phase command from the coordinator: true if @line was one. */
static bool phase_cmd(struct agent *a, const char *line)
{
	static const struct {
		const char *cmd;
		enum agent_phase ph;
	} cmds[] = {{"QUIESCE", PH_QUIESCE}, {"DRAIN", PH_DRAIN}, {"CHECK", PH_CHECK}};

	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (!strcmp(line, cmds[i].cmd)) {
			agent_set_phase(a, cmds[i].ph);
			return true;
		}
	}
	return false;
}

static void client_cmd(void *arg, char *line)
{
	struct client_state *c = arg;

	if (!strcmp(line, "GO"))
		c->go = true;
	else if (phase_cmd(c->a, line))
		;
	else if (!strcmp(line, "EXIT"))
		c->exit = true;
	else if (!strcmp(line, "DUMP")) {
		agent_dump(c->a, "the coordinator saw a stall");
		chaos_fail(agent_trace(c->a), "stopped by the coordinator (a stall)");
	}
}

static int client_main(const struct role *role)
{
	struct client_state c = {0};
	struct linebuf lb = {0};
	enum agent_phase told = PH_RUN;
	bool ready = false, opsdone = false;
	pid_t parent = getppid();

	/* If the coordinator dies, so do we (and a killed client is ours to reap). */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		return 1;
	snprintf(chaos_role, sizeof(chaos_role), "chaos[client %d]", role->id);
	make_replay();
	fcntl(0, F_SETFL, O_NONBLOCK);
	c.a = agent_new(role->id, role->uris, true);
	agent_set_limits(c.a, role->ops, role->calls);
	while (!c.exit) {
		agent_pump(c.a, true);
		dump_if_asked(c.a);
		read_lines(0, &lb, client_cmd, &c);
		if (lb.eof)
			chaos_fail(agent_trace(c.a), "the coordinator went away");
		if (!ready && agent_ready(c.a)) {
			ready = true;
			say("READY");
		}
		if (!c.go)
			continue;
		agent_step(c.a);
		if (!opsdone && agent_phase(c.a) == PH_RUN && agent_ops_done(c.a)) {
			opsdone = true;
			say("OPSDONE");
		}
		if (agent_phase(c.a) != told) {
			told = agent_phase(c.a);
			if (told == PH_QUIET)
				say("QUIET");
			else if (told == PH_DRAINED)
				say("DRAINED");
			else if (told == PH_CHECKED)
				print_result(agent_stats(c.a));
		}
	}
	agent_free(c.a);
	return 0;
}

/* ---- the coordinator ------------------------------------------------------------ */

struct child {
	int id;
	pid_t pid;
	int in, out; /* its stdin (we write), its stdout (we read) */
	struct linebuf lb;
	bool ready, opsdone, killed, exited, go;
	enum agent_phase phase;
	struct agent_stats st;
	bool has_st;
	struct agent *a; /* mem://: the agent itself, in this process */
};

#define MAX_CHILDREN 64

struct coord {
	struct agent *server;
	struct child ch[MAX_CHILDREN];
	int nch;
	int next_id;
	const char *uris[CHAOS_NLISTEN];
	char uribuf[CHAOS_NLISTEN][300];
	bool mem;
	struct chaos_rng rng;
	double kill_at[4];
	int nkills, kills_done;
	uint64_t kill_due_ns;
	uint64_t t0_ns;
	int killed;
};

static bool child_alive(const struct child *c)
{
	return !c->killed && !c->exited;
}

static void child_send(struct child *c, const char *line)
{
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%s\n", line);

	if (c->a) {
		/* an agent of this process (mem://): told directly */
		if (!strcmp(line, "GO"))
			c->go = true;
		else
			phase_cmd(c->a, line);
		return;
	}
	if (write(c->in, buf, (size_t)n) != n) {
		/* it died: waitpid() tells how */
	}
}

static void child_line(void *arg, char *line)
{
	struct child *c = arg;

	if (!strcmp(line, "READY")) {
		c->ready = true;
	} else if (!strcmp(line, "OPSDONE")) {
		c->opsdone = true;
	} else if (!strcmp(line, "QUIET")) {
		c->phase = PH_QUIET;
	} else if (!strcmp(line, "DRAINED")) {
		c->phase = PH_DRAINED;
	} else if (!strncmp(line, "RESULT ", 7)) {
		struct agent_stats *st = &c->st;
		char *save, *tok;

		for (tok = strtok_r(line + 7, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
			char *eq = strchr(tok, '=');
			uint64_t v;

			if (!eq)
				continue;
			*eq = 0;
			v = strtoull(eq + 1, NULL, 10);
#define F(k, f)              \
	if (!strcmp(tok, k)) \
		st->f = v;
			/* clang-format off: it cannot settle this table */
			F("ops", ops)
			F("calls", calls)
			F("ok", ok)
			F("rerr", remote_err)
			F("tmo", timeouts)
			F("reset", resets)
			F("canc", canceled)
			F("nobufs", nobufs)
			F("refused", refused)
			F("owsent", oneway_sent)
			F("owrecv", oneway_recv)
			F("served", served)
			F("large", large_bytes)
			F("sessions", sessions)
			F("closes", closes)
			F("lost", lost)
			F("dup", dup)
			F("wrong", wrong)
			F("rss0", rss_start)
			F("rssw", rss_warm)
			F("rss1", rss_end)
			F("late", late_replies)
			/* clang-format on */
#undef F
		}
		c->has_st = true;
		c->phase = PH_CHECKED;
	} else {
		chaos_log("client %d said \"%s\"", c->id, line);
	}
}

static void spawn_child(struct coord *co)
{
	struct child *c;
	char id[16], ops[32], calls[32], seed[32], clients[16], maxl[32], budget[32], off[256];
	char tail[16], size[32];
	char *argv[64];
	int argc = 0, in[2], out[2];
	posix_spawn_file_actions_t fa;

	if (co->nch == MAX_CHILDREN)
		chaos_fail(agent_trace(co->server), "too many client processes");
	c = &co->ch[co->nch++];
	memset(c, 0, sizeof(*c));
	c->id = co->next_id++;
	c->phase = PH_RUN;
	if (co->mem) {
		c->a = agent_new(c->id, co->uris, false);
		agent_set_limits(c->a, cfg.ops, cfg.calls ? cfg.calls / (cfg.clients + 1) : 0);
		return;
	}
	snprintf(id, sizeof(id), "%d", c->id);
	snprintf(ops, sizeof(ops), "%" PRIu64, cfg.ops);
	snprintf(calls, sizeof(calls), "%" PRIu64, cfg.calls ? cfg.calls / (cfg.clients + 1) : 0);
	argv[argc++] = (char *)cfg.self;
	argv[argc++] = "--role";
	argv[argc++] = "client";
	argv[argc++] = "--id";
	argv[argc++] = id;
	argv[argc++] = "--agent-ops";
	argv[argc++] = ops;
	argv[argc++] = "--agent-calls";
	argv[argc++] = calls;
	/* the run's own options, so both ends see the same configuration */
	snprintf(seed, sizeof(seed), "%" PRIu64, cfg.seed);
	snprintf(clients, sizeof(clients), "%u", cfg.clients);
	snprintf(maxl, sizeof(maxl), "%" PRIu64, cfg.max_large);
	snprintf(budget, sizeof(budget), "%" PRIu64, cfg.large_budget);
	if (cfg.seconds) {
		snprintf(size, sizeof(size), "%g", cfg.seconds);
		argv[argc++] = "--seconds";
	} else if (cfg.calls) {
		snprintf(size, sizeof(size), "%" PRIu64, cfg.calls);
		argv[argc++] = "--calls";
	} else {
		snprintf(size, sizeof(size), "%" PRIu64, cfg.ops);
		argv[argc++] = "--ops";
	}
	argv[argc++] = size;
	argv[argc++] = "--transport";
	argv[argc++] = cfg.transport;
	argv[argc++] = "--seed";
	argv[argc++] = seed;
	argv[argc++] = "--clients";
	argv[argc++] = clients;
	argv[argc++] = "--max-large";
	argv[argc++] = maxl;
	argv[argc++] = "--large-budget";
	argv[argc++] = budget;
	if (cfg.soak)
		argv[argc++] = "--soak";
	if (*features_off(off, sizeof(off))) {
		argv[argc++] = "--without";
		argv[argc++] = off;
	}
	if (cfg.trace)
		argv[argc++] = "--trace";
	if (cfg.trace_dir) {
		argv[argc++] = "--trace-dir";
		argv[argc++] = (char *)cfg.trace_dir;
	}
	snprintf(tail, sizeof(tail), "%d", cfg.tail);
	argv[argc++] = "--tail";
	argv[argc++] = tail;
	for (int i = 0; i < CHAOS_NLISTEN; i++) {
		argv[argc++] = "--uri";
		argv[argc++] = (char *)co->uris[i];
	}
	argv[argc] = NULL;

	if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC))
		chaos_fail(agent_trace(co->server), "pipe: %s", strerror(errno));
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	if (posix_spawn(&c->pid, "/proc/self/exe", &fa, NULL, argv, environ))
		chaos_fail(agent_trace(co->server), "posix_spawn: %s", strerror(errno));
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	c->in = in[1];
	c->out = out[0];
	fcntl(c->out, F_SETFL, O_NONBLOCK);
	chaos_ev(agent_trace(co->server), "started client %d (pid %d)", c->id, (int)c->pid);
}

static void kill_child(struct coord *co, struct child *c)
{
	chaos_ev(agent_trace(co->server), "SIGKILL client %d (pid %d), %d calls with it in flight",
		 c->id, (int)c->pid, agent_traffic_with(co->server, c->id));
	if (c->a) {
		agent_kill(c->a);
		agent_free(c->a);
		c->a = NULL;
	} else {
		/* reaped later (reap()): the loop goes on serving meanwhile */
		kill(c->pid, SIGKILL);
		close(c->in);
		close(c->out);
	}
	c->killed = true;
	co->killed++;
}

/* Stop every client (a failure, or a stall), then fail. */
static void coord_abort(struct coord *co, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 2, 3)));
static void coord_abort(struct coord *co, const char *fmt, ...)
{
	char why[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	/* our own state first, while the clients' sessions still stand */
	agent_dump(co->server, why);
	for (int i = 0; i < co->nch; i++) {
		struct child *c = &co->ch[i];
		int st;

		if (!child_alive(c))
			continue;
		if (c->a) {
			agent_dump(c->a, why);
			chaos_trace_print(agent_trace(c->a), cfg.tail);
			continue;
		}
		/* a stalled client says what it holds before it goes */
		child_send(c, "DUMP");
		for (int t = 0; t < 50 && waitpid(c->pid, &st, WNOHANG) == 0; t++)
			usleep(100000);
		kill(c->pid, SIGKILL);
		waitpid(c->pid, &st, 0);
	}
	chaos_fail(agent_trace(co->server), "%s", why);
}

/* Reap clients that ended: an unexpected end is a failure (it said why on stderr). */
static void reap(struct coord *co)
{
	for (int i = 0; i < co->nch; i++) {
		struct child *c = &co->ch[i];
		int st;

		if (c->a || c->exited)
			continue;
		if (waitpid(c->pid, &st, WNOHANG) != c->pid)
			continue;
		if (c->killed) {
			c->exited = true; /* one we killed */
			continue;
		}
		c->exited = true;
		if (WIFEXITED(st) && WEXITSTATUS(st) == 0 && c->phase == PH_CHECKED)
			continue;
		coord_abort(co, "client %d (pid %d) %s %d", c->id, (int)c->pid,
			    WIFEXITED(st) ? "exited with status" : "was killed by signal",
			    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
	}
}

static void pump_all(struct coord *co, bool stepping)
{
	bool block = !co->mem;

	agent_pump(co->server, block);
	dump_if_asked(co->server);
	if (stepping)
		agent_step(co->server);
	for (int i = 0; i < co->nch; i++) {
		struct child *c = &co->ch[i];

		if (!child_alive(c))
			continue;
		if (c->a) {
			agent_pump(c->a, false);
			if (!c->ready && agent_ready(c->a))
				c->ready = true;
			if (c->go)
				agent_step(c->a);
			if (agent_phase(c->a) == PH_RUN && agent_ops_done(c->a))
				c->opsdone = true;
			c->phase = agent_phase(c->a);
			if (c->phase == PH_CHECKED && !c->has_st) {
				c->st = *agent_stats(c->a);
				c->has_st = true;
			}
			continue;
		}
		read_lines(c->out, &c->lb, child_line, c);
	}
	reap(co);
}

/* Progress of the run, 0..1, for the kill schedule. */
static double run_progress(struct coord *co)
{
	if (cfg.seconds)
		return (chaos_now_ns() - co->t0_ns) / 1e9 / cfg.seconds;
	if (cfg.ops)
		return (double)agent_stats(co->server)->ops / (double)cfg.ops;
	if (cfg.calls)
		return (double)agent_stats(co->server)->calls * (cfg.clients + 1) /
		       (double)cfg.calls;
	return 0;
}

/* A kill is due: pick a client with calls in flight (mid-burst), or any after a while. */
static void maybe_kill(struct coord *co)
{
	struct child *victim = NULL;
	int best = 0;

	if (co->kills_done >= co->nkills || run_progress(co) < co->kill_at[co->kills_done])
		return;
	if (!co->kill_due_ns)
		co->kill_due_ns = chaos_now_ns();
	for (int i = 0; i < co->nch; i++) {
		struct child *c = &co->ch[i];
		int t;

		if (!child_alive(c) || !c->go || c->opsdone)
			continue;
		t = agent_traffic_with(co->server, c->id);
		if (t > best) {
			best = t;
			victim = c;
		}
	}
	if (!victim && chaos_now_ns() - co->kill_due_ns < 500000000ull)
		return;
	if (!victim) {
		for (int i = 0; i < co->nch && !victim; i++)
			if (child_alive(&co->ch[i]) && co->ch[i].go && !co->ch[i].opsdone)
				victim = &co->ch[i];
	}
	if (!victim) {
		/* every client is done with its operations: nothing to kill mid-burst */
		co->kills_done++;
		co->kill_due_ns = 0;
		return;
	}
	kill_child(co, victim);
	co->kills_done++;
	co->kill_due_ns = 0;
	spawn_child(co); /* a new connection in its place */
}

static bool all_children(struct coord *co, bool (*pred)(const struct child *))
{
	for (int i = 0; i < co->nch; i++)
		if (child_alive(&co->ch[i]) && !pred(&co->ch[i]))
			return false;
	return true;
}

static bool ch_ready(const struct child *c)
{
	return c->ready;
}
static bool ch_opsdone(const struct child *c)
{
	return c->opsdone;
}
static bool ch_quiet(const struct child *c)
{
	return c->phase == PH_QUIET;
}
static bool ch_drained(const struct child *c)
{
	return c->phase == PH_DRAINED;
}
static bool ch_checked(const struct child *c)
{
	return c->phase == PH_CHECKED;
}

/* Take every agent into phase @ph, then wait until all reach @done. */
static void phase_all(struct coord *co, const char *cmd, enum agent_phase ph, enum agent_phase done,
		      bool (*pred)(const struct child *), int timeout_s)
{
	uint64_t t0 = chaos_now_ns();

	agent_set_phase(co->server, ph);
	for (int i = 0; i < co->nch; i++)
		if (child_alive(&co->ch[i]))
			child_send(&co->ch[i], cmd);
	while (agent_phase(co->server) != done || !all_children(co, pred)) {
		pump_all(co, true);
		if (chaos_now_ns() - t0 > (uint64_t)timeout_s * 1000000000ull) {
			int waiting = -1;

			for (int i = 0; i < co->nch; i++)
				if (child_alive(&co->ch[i]) && !pred(&co->ch[i]))
					waiting = co->ch[i].id;
			coord_abort(co, "a stall: %s not finished after %d s (%s)", cmd, timeout_s,
				    agent_phase(co->server) != done ? "the server" : "a client");
			(void)waiting;
		}
	}
}

static void add_stats(struct agent_stats *sum, const struct agent_stats *s)
{
	sum->ops += s->ops;
	sum->calls += s->calls;
	sum->ok += s->ok;
	sum->remote_err += s->remote_err;
	sum->timeouts += s->timeouts;
	sum->resets += s->resets;
	sum->canceled += s->canceled;
	sum->nobufs += s->nobufs;
	sum->refused += s->refused;
	sum->oneway_sent += s->oneway_sent;
	sum->oneway_recv += s->oneway_recv;
	sum->served += s->served;
	sum->large_bytes += s->large_bytes;
	sum->sessions += s->sessions;
	sum->closes += s->closes;
	sum->lost += s->lost;
	sum->dup += s->dup;
	sum->wrong += s->wrong;
	sum->late_replies += s->late_replies;
}

/* On rdma: the RNR counters, which the credits keep at 0 by construction. */
static const char *const rnr_names[] = {
	TERN_RNR_RESPONDER_OUT_OF_BUFFER,
	TERN_RNR_REQUESTER_RNR_NAK,
	TERN_RNR_RNR_RETRIES_EXCEEDED,
};

static int run_once(void)
{
	struct coord co = {0};
	uint64_t limit_s;
	struct agent_stats sum = {0}, *srv;
	tern_rnr_monitor *mon = NULL;
	uint64_t t0 = chaos_now_ns();
	/* the clients' largest RSS: before traffic, a tenth of the way, at the end */
	uint64_t cmax0 = 0, cmaxw = 0, cmax1 = 0;
	int survivors = 0;

	make_replay();
	co.mem = !strcmp(cfg.transport, "mem");
	co.next_id = 1;
	co.rng.s = chaos_mix(cfg.seed ^ 0x6b696c6cull);
	snprintf(chaos_role, sizeof(chaos_role), "chaos[server]");
	printf("chaos: seed %" PRIu64 ": %s\n", cfg.seed, cfg.replay);
	fflush(stdout);
	if (chaos_rdma_addr) {
		usleep(100000); /* the kernel caches hw_counters briefly (12 ms on rxe) */
		if (tern_rnr_monitor_create(NULL, &mon))
			mon = NULL;
	}

	co.server = agent_new(0, NULL, !co.mem);
	agent_set_limits(co.server, cfg.ops, cfg.calls ? cfg.calls / (cfg.clients + 1) : 0);
	for (int i = 0; i < CHAOS_NLISTEN; i++) {
		snprintf(co.uribuf[i], sizeof(co.uribuf[i]), "%s", agent_listen_uri(co.server, i));
		co.uris[i] = co.uribuf[i];
	}
	if ((cfg.features & CF_KILL) && cfg.clients) {
		co.nkills = 1 + (int)rng_below(&co.rng, 2);
		for (int k = 0; k < co.nkills; k++)
			co.kill_at[k] = 0.15 + 0.6 * (double)(k + 1) / (co.nkills + 1) +
					0.1 * (double)rng_below(&co.rng, 100) / 100.0;
	}
	for (uint32_t i = 0; i < cfg.clients; i++)
		spawn_child(&co);

	/* everyone connected, then everyone goes at once */
	while (!all_children(&co, ch_ready)) {
		pump_all(&co, false);
		if (chaos_now_ns() - t0 > 60000000000ull)
			coord_abort(&co, "clients did not connect within 60 s");
	}
	for (int i = 0; i < co.nch; i++)
		child_send(&co.ch[i], "GO");
	co.t0_ns = chaos_now_ns();
	/*
	 * A safety net behind the agents' own stall checks (30 s without
	 * progress): 600 s, or 1,000 calls a second for a run sized in calls
	 * (a 10-million-call soak on a loaded two-core machine takes more
	 * than 600 s; it once hit that net while every agent still moved).
	 */
	limit_s = cfg.calls / 1000 > 600 ? cfg.calls / 1000 : 600;

	/* the run */
	for (;;) {
		pump_all(&co, true);
		for (int i = 0; i < co.nch; i++) {
			struct child *c = &co.ch[i];
			if (child_alive(c) && c->ready && !c->go) {
				child_send(c, "GO"); /* a client started in place of a killed one */
				c->go = true;
			}
		}
		maybe_kill(&co);
		if (cfg.seconds) {
			if (chaos_now_ns() - co.t0_ns >= (uint64_t)(cfg.seconds * 1e9))
				break;
		} else if (agent_ops_done(co.server) && all_children(&co, ch_opsdone) &&
			   co.kills_done >= co.nkills) {
			break;
		}
		if (!cfg.seconds && chaos_now_ns() - co.t0_ns > limit_s * 1000000000ull)
			coord_abort(&co,
				    "the run did not finish its operations in the time allowed");
	}

	/* the phases: every agent through each before the next starts */
	phase_all(&co, "QUIESCE", PH_QUIESCE, PH_QUIET, ch_quiet, 60);
	phase_all(&co, "DRAIN", PH_DRAIN, PH_DRAINED, ch_drained, 60);
	phase_all(&co, "CHECK", PH_CHECK, PH_CHECKED, ch_checked, 30);

	if (mon) {
		usleep(100000);
		for (size_t i = 0; i < sizeof(rnr_names) / sizeof(rnr_names[0]); i++) {
			uint64_t d = 0;

			if (tern_rnr_monitor_delta(mon, NULL, 0, rnr_names[i], &d) == 0 && d)
				coord_abort(&co,
					    "the RNR counter %s moved by %" PRIu64
					    " (credits should make RNR impossible)",
					    rnr_names[i], d);
		}
		tern_rnr_monitor_destroy(mon);
	}

	/* the results, then everyone goes */
	srv = agent_stats(co.server);
	add_stats(&sum, srv);
	for (int i = 0; i < co.nch; i++) {
		struct child *c = &co.ch[i];

		if (!child_alive(c))
			continue;
		survivors++;
		add_stats(&sum, &c->st);
		cmax0 = c->st.rss_start > cmax0 ? c->st.rss_start : cmax0;
		cmaxw = c->st.rss_warm > cmaxw ? c->st.rss_warm : cmaxw;
		cmax1 = c->st.rss_end > cmax1 ? c->st.rss_end : cmax1;
		if (c->a) {
			agent_free(c->a);
			c->a = NULL;
			c->exited = true;
			continue;
		}
		child_send(c, "EXIT");
	}
	for (int i = 0; i < co.nch; i++) {
		struct child *c = &co.ch[i];
		uint64_t w0 = chaos_now_ns();
		int st = 0;

		if (c->killed && !c->exited && !c->a) {
			waitpid(c->pid, &st, 0); /* no zombies left behind */
			c->exited = true;
		}
		if (!child_alive(c))
			continue;
		/* keep serving while they tear down */
		while (waitpid(c->pid, &st, WNOHANG) != c->pid) {
			agent_pump(co.server, false);
			usleep(1000);
			if (chaos_now_ns() - w0 > 60000000000ull)
				coord_abort(&co, "client %d did not exit", c->id);
		}
		c->exited = true;
		close(c->in);
		close(c->out);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			coord_abort(&co,
				    "client %d exited with status %d at the end (a leak report?)",
				    c->id, WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
	}
	printf("chaos: seed %" PRIu64 ", %s, %u clients (%d killed, %d replaced them): "
	       "%" PRIu64 " ops, %" PRIu64 " calls (%" PRIu64 " ok, %" PRIu64
	       " failed as told, %" PRIu64 " timed out, %" PRIu64 " reset, %" PRIu64
	       " canceled, %" PRIu64 " without staging; %" PRIu64 " refused at once), "
	       "%" PRIu64 " one-way sent, %" PRIu64 " received, %.1f MiB of large messages "
	       "checked, %" PRIu64 " late replies, %" PRIu64 " sessions, %" PRIu64 " closed; "
	       "lost %" PRIu64 ", duplicated %" PRIu64 ", wrong %" PRIu64 "; %.1f s\n",
	       cfg.seed, cfg.transport, cfg.clients, co.killed, co.killed, sum.ops, sum.calls,
	       sum.ok, sum.remote_err, sum.timeouts, sum.resets, sum.canceled, sum.nobufs,
	       sum.refused, sum.oneway_sent, sum.oneway_recv, sum.large_bytes / 1048576.0,
	       sum.late_replies, sum.sessions, sum.closes, sum.lost, sum.dup, sum.wrong,
	       (chaos_now_ns() - t0) / 1e9);
	/* RSS: before any traffic, a tenth of the way in (pools and caches are
	 * filled by then), at the end; growth after the tenth is what leaks */
	printf("%s: rss (MiB) before traffic / at a tenth / at the end: server %.1f / %.1f / %.1f, "
	       "clients (largest) %.1f / %.1f / %.1f\n",
	       cfg.soak ? "soak" : "chaos", srv->rss_start / 1048576.0, srv->rss_warm / 1048576.0,
	       srv->rss_end / 1048576.0, cmax0 / 1048576.0, cmaxw / 1048576.0, cmax1 / 1048576.0);
	if (cfg.soak)
		printf("soak: %s, %.0f s, %u client processes, seed %" PRIu64 ": calls %" PRIu64
		       ", lost %" PRIu64 ", duplicated %" PRIu64 ", wrong %" PRIu64
		       "; rss server %.1f MiB at a tenth, %.1f MiB at the end\n",
		       cfg.transport, (chaos_now_ns() - t0) / 1e9, cfg.clients, cfg.seed, sum.calls,
		       sum.lost, sum.dup, sum.wrong, srv->rss_warm / 1048576.0,
		       srv->rss_end / 1048576.0);
	fflush(stdout);
	(void)survivors;
	agent_free(co.server);
	return sum.lost || sum.dup || sum.wrong;
}

int main(int argc, char **argv)
{
	struct role role = {0};
	static char addr[64];
	int failed = 0, passed = 0;
	uint64_t first;

	parse_args(argc, argv, &role);
	cfg.self = argv[0];
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGUSR1, on_usr1);
	if (!strcmp(cfg.transport, "mem") && chaos_register_mem()) {
		fprintf(stderr, "chaos: cannot add mem://\n");
		return 1;
	}
	if (!strcmp(cfg.transport, "rdma")) {
		if (vp_find_addr(addr, sizeof(addr))) {
			printf("chaos: no RDMA device here\n1 skipped\n");
			return 77;
		}
		chaos_rdma_addr = addr;
	}
	if (role.client) {
		if (role.nuris != CHAOS_NLISTEN) {
			fprintf(stderr, "chaos: a client needs %d --uri\n", CHAOS_NLISTEN);
			return 2;
		}
		return client_main(&role);
	}
	first = cfg.seed;
	for (int r = 0; r < cfg.runs; r++) {
		cfg.seed = first + (uint64_t)r;
		if (run_once())
			failed++;
		else
			passed++;
	}
	if (failed)
		printf("%d passed, %d failed\n", passed, failed);
	else
		printf("%d passed\n", passed);
	return failed ? 1 : 0;
}
