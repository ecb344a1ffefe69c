// SPDX-License-Identifier: MIT
/*
 * tern-rnr - watch RDMA ports for soft RNR: receive queues that ran dry and
 * made the NIC retry in hardware, which no work completion ever reports.
 *
 * Prints deltas and rates of every port counter (table, JSON lines or
 * Prometheus text), serves /metrics over HTTP for Prometheus, and exits with
 * its own status when an alert rule fires.  Built on <tern/rnr.h> only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include <tern/rnr.h>

#include "http.h" /* the library's responder, linked from its own archive */

/* Exit statuses; documented in --help and docs/operations.md. */
enum {
	EXIT_OK = 0,
	EXIT_RUNTIME = 1,
	EXIT_USAGE = 2,
	EXIT_ALERT = 3,
	EXIT_NO_DEVICE = 4,
};

#define PROG	       "tern-rnr"
#define MAX_RULES      16
#define MAX_NAME       256
#define MAX_INTERVAL   1e6
#define REQ_MAX	       8192 /* bytes of request line + headers we accept */
#define MAX_CLIENTS    32
#define CLIENT_IDLE_MS 10000 /* to send a whole request */
#define LINGER_MS      2000  /* to close after our response */

enum rule_field { FIELD_DELTA, FIELD_TOTAL, FIELD_RATE };
enum rule_op { OP_GT, OP_GE, OP_LT, OP_LE, OP_EQ, OP_NE };

struct rule {
	const char *text;
	char name[MAX_NAME];
	enum rule_field field;
	enum rule_op op;
	double threshold;
};

struct cli {
	double interval;
	unsigned long count; /* 0: until interrupted */
	const char *device;
	const char *root;
	const char *listen;
	enum tern_rnr_format fmt;
	struct rule rules[MAX_RULES];
	int n_rules;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [options]\n"
		"\n"
		"Watch the RDMA ports' counters for soft RNR (receive queues that ran dry),\n"
		"under the canonical names responder_out_of_buffer, requester_rnr_nak,\n"
		"rnr_retries_exceeded and transport_retries_exceeded; for retransmissions\n"
		"(a lossy link) under requester_retries, requester_sequence_nak,\n"
		"responder_duplicate_request and responder_out_of_sequence; and every other\n"
		"counter under its driver's name.  A baseline is taken at start; reading i\n"
		"comes i intervals later and shows deltas since the baseline and rates over\n"
		"the last interval.\n"
		"\n"
		"options:\n"
		"  --interval S     seconds between readings (default 1; 0 needs --count)\n"
		"  --count N        stop after N readings (default: until interrupted);\n"
		"                   with --listen, after N scrapes of /metrics\n"
		"  --device NAME    only devices matching NAME (a glob, e.g. 'mlx5_*')\n"
		"  --root DIR       sysfs root (default /sys)\n"
		"  --format F       table (default), json (one object per line) or prom\n"
		"                   (Prometheus text format)\n"
		"  --listen H:P     serve GET /metrics (Prometheus text) on host H, port P\n"
		"                   (0 picks a free port; the address is printed on stderr)\n"
		"                   instead of printing readings\n"
		"  --alert RULE     exit with status 3 when RULE holds on any port; RULE is\n"
		"                   NAME[.delta|.total|.rate] OP NUMBER, OP one of\n"
		"                   > >= < <= == !=, e.g. 'out_of_buffer>0'.  NAME is a\n"
		"                   canonical or raw counter name; a raw name another driver\n"
		"                   uses for a canonical counter stands for it (out_of_buffer\n"
		"                   matches rxe's send_rnr_err).  .delta (default) is the\n"
		"                   increase since start, .total the raw value, .rate per\n"
		"                   second over the last interval.  Repeatable (up to %d).\n"
		"  -h, --help       this text\n"
		"\n"
		"exit status:\n"
		"  0  all readings taken (or interrupted by SIGINT/SIGTERM)\n"
		"  1  runtime error (sysfs unreadable, cannot listen, ...)\n"
		"  2  usage error\n"
		"  3  an --alert rule fired\n"
		"  4  no RDMA device found (or none matches --device)\n",
		MAX_RULES);
}

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, PROG ": ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n" PROG ": try '" PROG " --help'\n");
	return EXIT_USAGE;
}

/* ---- arguments ------------------------------------------------------------ */

static bool parse_double(const char *s, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v))
		return false;
	*out = v;
	return true;
}

static bool parse_count(const char *s, unsigned long *out)
{
	char *end;
	unsigned long v;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v == 0)
		return false;
	*out = v;
	return true;
}

static bool name_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '_' || ch == '-' || ch == '/';
}

/* NAME[.delta|.total|.rate] OP NUMBER, blanks allowed around OP. */
static bool parse_rule(const char *text, struct rule *r)
{
	static const struct {
		const char *s;
		enum rule_op op;
	} ops[] = {{">=", OP_GE}, {"<=", OP_LE}, {"==", OP_EQ},
		   {"!=", OP_NE}, {">", OP_GT},	 {"<", OP_LT}};
	const char *p = text, *start;
	size_t len;

	memset(r, 0, sizeof(*r));
	r->text = text;
	while (*p == ' ')
		p++;
	for (start = p; name_char(*p); p++)
		;
	len = (size_t)(p - start);
	if (len == 0 || len >= sizeof(r->name))
		return false;
	memcpy(r->name, start, len);
	r->field = FIELD_DELTA;
	if (strncmp(p, ".delta", 6) == 0) {
		p += 6;
	} else if (strncmp(p, ".total", 6) == 0) {
		r->field = FIELD_TOTAL;
		p += 6;
	} else if (strncmp(p, ".rate", 5) == 0) {
		r->field = FIELD_RATE;
		p += 5;
	}
	while (*p == ' ')
		p++;
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		size_t n = strlen(ops[i].s);
		if (strncmp(p, ops[i].s, n) == 0) {
			r->op = ops[i].op;
			p += n;
			while (*p == ' ')
				p++;
			return parse_double(p, &r->threshold);
		}
	}
	return false;
}

static int parse_args(int argc, char **argv, struct cli *c)
{
	static const struct option longopts[] = {
		{"interval", required_argument, NULL, 'i'},
		{"count", required_argument, NULL, 'c'},
		{"device", required_argument, NULL, 'd'},
		{"root", required_argument, NULL, 'r'},
		{"format", required_argument, NULL, 'f'},
		{"listen", required_argument, NULL, 'l'},
		{"alert", required_argument, NULL, 'a'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	bool interval_set = false;
	int opt;

	memset(c, 0, sizeof(*c));
	c->interval = 1.0;
	c->root = "/sys";
	opterr = 0; /* our own messages, with the --help hint */
	while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'i':
			if (!parse_double(optarg, &c->interval) || c->interval < 0 ||
			    c->interval > MAX_INTERVAL)
				return usage_error(
					"--interval needs seconds from 0 to 1e6, not '%s'", optarg);
			interval_set = true;
			break;
		case 'c':
			if (!parse_count(optarg, &c->count))
				return usage_error(
					"--count needs a whole number of at least 1, not '%s'",
					optarg);
			break;
		case 'd':
			if (!*optarg)
				return usage_error("--device needs a name%s", "");
			c->device = optarg;
			break;
		case 'r':
			c->root = optarg;
			break;
		case 'f':
			if (strcmp(optarg, "table") == 0)
				c->fmt = TERN_RNR_FORMAT_TABLE;
			else if (strcmp(optarg, "json") == 0)
				c->fmt = TERN_RNR_FORMAT_JSON;
			else if (strcmp(optarg, "prom") == 0)
				c->fmt = TERN_RNR_FORMAT_PROM;
			else
				return usage_error("--format is table, json or prom, not '%s'",
						   optarg);
			break;
		case 'l':
			c->listen = optarg;
			break;
		case 'a':
			if (c->n_rules == MAX_RULES)
				return usage_error("at most 16 --alert rules%s", "");
			if (!parse_rule(optarg, &c->rules[c->n_rules]))
				return usage_error(
					"bad --alert '%s': expected NAME[.delta|.total|.rate] "
					"OP NUMBER, e.g. 'out_of_buffer>0'",
					optarg);
			c->n_rules++;
			break;
		case 'h':
			usage(stdout);
			exit(EXIT_OK);
		case ':':
			return usage_error("option '%s' needs an argument", argv[optind - 1]);
		default:
			return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (c->interval == 0 && !c->count && !c->listen)
		return usage_error("--interval 0 without --count would spin forever%s", "");
	if (c->listen && interval_set)
		fprintf(stderr, PROG ": note: --interval is ignored with --listen (one reading "
				     "per scrape)\n");
	return EXIT_OK;
}

/* ---- alerts --------------------------------------------------------------- */

static bool compare(double v, enum rule_op op, double t)
{
	switch (op) {
	case OP_GT:
		return v > t;
	case OP_GE:
		return v >= t;
	case OP_LT:
		return v < t;
	case OP_LE:
		return v <= t;
	case OP_EQ:
		return v == t;
	case OP_NE:
		return v != t;
	}
	return false;
}

/* A rule's name must mean something now, so a typo is a usage error. */
static bool rule_name_known(const struct rule *r, const tern_rnr_snapshot *s)
{
	const struct tern_rnr_port *ports;
	const struct tern_rnr_counter *c;
	size_t n;

	if (tern_rnr_is_canonical(r->name) || tern_rnr_canonical_name(r->name))
		return true;
	ports = tern_rnr_snapshot_ports(s, &n);
	for (size_t i = 0; i < n; i++)
		if (tern_rnr_snapshot_find(s, ports[i].device, ports[i].port, r->name, &c) == 0)
			return true;
	return false;
}

/* Print every rule that holds on some port now; true when any did. */
static bool alerts_fired(const struct cli *cli, const tern_rnr_snapshot *s,
			 const tern_rnr_snapshot *prev)
{
	const struct tern_rnr_port *ports;
	bool fired = false;
	size_t n;

	ports = tern_rnr_snapshot_ports(s, &n);
	for (int k = 0; k < cli->n_rules; k++) {
		const struct rule *r = &cli->rules[k];

		for (size_t i = 0; i < n; i++) {
			const struct tern_rnr_port *p = &ports[i];
			const struct tern_rnr_counter *c;
			double v;

			if (tern_rnr_snapshot_find(s, p->device, p->port, r->name, &c) ||
			    c->status != TERN_RNR_OK)
				continue; /* an unreadable counter proves nothing either way */
			if (r->field == FIELD_DELTA)
				v = (double)c->delta;
			else if (r->field == FIELD_TOTAL)
				v = (double)c->value;
			else if (!prev || tern_rnr_rate(prev, s, p->device, p->port, r->name, &v))
				continue;
			if (!compare(v, r->op, r->threshold))
				continue;
			fprintf(stderr,
				PROG
				": alert '%s' fired: %s port %u %s (%s) delta %llu value %llu\n",
				r->text, p->device, p->port, c->name, c->raw,
				(unsigned long long)c->delta, (unsigned long long)c->value);
			fired = true;
		}
	}
	return fired;
}

/* ---- the monitor ------------------------------------------------------------ */

static int open_monitor(const struct cli *cli, tern_rnr_monitor **mon, tern_rnr_snapshot **first)
{
	struct tern_rnr_opts o;
	struct stat st;
	size_t n;
	int rc;

	if (stat(cli->root, &st) || !S_ISDIR(st.st_mode))
		return usage_error("--root '%s' is not a directory", cli->root);
	tern_rnr_opts_init(&o);
	o.sysfs_root = cli->root;
	o.device = cli->device;
	if ((rc = tern_rnr_monitor_create(&o, mon)) || (rc = tern_rnr_monitor_read(*mon, first))) {
		fprintf(stderr, PROG ": cannot read %s/class/infiniband: %s\n", cli->root,
			tern_strerror(rc));
		tern_rnr_monitor_destroy(*mon);
		return EXIT_RUNTIME;
	}
	tern_rnr_snapshot_ports(*first, &n);
	if (n == 0) {
		fprintf(stderr, PROG ": no RDMA devices found under %s/class/infiniband",
			cli->root);
		if (cli->device)
			fprintf(stderr,
				" matching '%s'\n" PROG ": --device is a glob over the "
				"device names there (e.g. 'mlx5_*')\n",
				cli->device);
		else
			fprintf(stderr,
				"\n" PROG ": load an RDMA driver (e.g. modprobe mlx5_ib, or "
				"rdma link add rxe0 type rxe netdev eth0), or point --root at a "
				"sysfs tree\n");
		rc = EXIT_NO_DEVICE;
	}
	for (int k = 0; rc == 0 && k < cli->n_rules; k++) {
		if (!rule_name_known(&cli->rules[k], *first)) {
			rc = usage_error("--alert names '%s', which is not a canonical name nor a "
					 "counter on any port",
					 cli->rules[k].name);
		}
	}
	if (rc) {
		tern_rnr_snapshot_free(*first);
		tern_rnr_monitor_destroy(*mon);
	}
	return rc;
}

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Sleep until @deadline (CLOCK_MONOTONIC seconds); false when interrupted. */
static bool sleep_until(double deadline)
{
	for (;;) {
		double left = deadline - now_s();
		struct timespec ts;

		if (interrupted)
			return false;
		if (left <= 0)
			return true;
		ts.tv_sec = (time_t)left;
		ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
		nanosleep(&ts, NULL); /* EINTR: the loop looks at the flag */
	}
}

static int run_readings(const struct cli *cli, tern_rnr_monitor *mon, tern_rnr_snapshot *prev)
{
	struct sigaction sa;
	double start = now_s();
	int status = EXIT_OK;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: nanosleep returns early */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	for (unsigned long i = 1; !cli->count || i <= cli->count; i++) {
		tern_rnr_snapshot *s;
		int rc;

		/* Deadlines from the start, so the interval does not drift. */
		if (!sleep_until(start + (double)i * cli->interval))
			break;
		if ((rc = tern_rnr_monitor_read(mon, &s))) {
			fprintf(stderr, PROG ": reading failed: %s\n", tern_strerror(rc));
			status = EXIT_RUNTIME;
			break;
		}
		if (tern_rnr_snapshot_write(s, prev, cli->fmt, stdout) || fflush(stdout)) {
			fprintf(stderr, PROG ": cannot write to stdout\n");
			tern_rnr_snapshot_free(s);
			status = EXIT_RUNTIME;
			break;
		}
		if (cli->fmt == TERN_RNR_FORMAT_TABLE)
			fputc('\n', stdout);
		if (alerts_fired(cli, s, prev))
			status = EXIT_ALERT;
		tern_rnr_snapshot_free(prev);
		prev = s;
		if (status == EXIT_ALERT)
			break;
	}
	tern_rnr_snapshot_free(prev);
	return status;
}

/* ---- /metrics over HTTP ----------------------------------------------------- */

/*
 * The responder is the library's (src/http.h, shared with
 * tern_ctx_metrics_listen()); this part gives it the page, counts the
 * scrapes for --count and checks the rules on each reading.
 */
struct server {
	uv_loop_t loop;
	uv_signal_t sigint, sigterm;
	struct tern__http *http;
	const struct cli *cli;
	tern_rnr_monitor *mon;
	tern_rnr_snapshot *last; /* the previous scrape's reading, for .rate rules */
	unsigned long served;
	int status;
};

/* The responder has closed: the signals are all that keep the loop running. */
static void http_closed(void *arg)
{
	struct server *s = arg;

	s->http = NULL;
	uv_close((uv_handle_t *)&s->sigint, NULL);
	uv_close((uv_handle_t *)&s->sigterm, NULL);
}

static void on_signal_uv(uv_signal_t *h, int sig)
{
	struct server *s = h->data;

	(void)sig;
	if (s->http)
		tern__http_stop(s->http, false); /* answers under way finish */
}

/* A GET was answered: --count counts what Prometheus does. */
static void scrape_sent(void *arg)
{
	struct server *s = arg;

	if (s->cli->count && ++s->served >= s->cli->count)
		tern__http_stop(s->http, false);
}

/* The Prometheus page: a fresh reading per scrape; the last one if a rule fires. */
static int metrics_page(void *arg, char **body, size_t *len)
{
	struct server *s = arg;
	tern_rnr_snapshot *snap;
	FILE *f;
	int rc;

	if ((rc = tern_rnr_monitor_read(s->mon, &snap)))
		return rc;
	f = open_memstream(body, len);
	if (!f) {
		tern_rnr_snapshot_free(snap);
		return -ENOMEM;
	}
	rc = tern_rnr_snapshot_write(snap, NULL, TERN_RNR_FORMAT_PROM, f);
	if (fclose(f) && !rc)
		rc = -ENOMEM;
	if (!rc && s->cli->n_rules && alerts_fired(s->cli, snap, s->last))
		s->status = EXIT_ALERT;
	tern_rnr_snapshot_free(s->last);
	s->last = snap;
	if (rc)
		return rc;
	return s->status == EXIT_ALERT ? TERN__HTTP_LAST : 0;
}

static void print_address(const struct sockaddr_storage *ss, int port)
{
	char ip[64] = "?";

	if (ss->ss_family == AF_INET6) {
		uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof(ip));
		fprintf(stderr, PROG ": serving http://[%s]:%d/metrics\n", ip, port);
	} else {
		uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof(ip));
		fprintf(stderr, PROG ": serving http://%s:%d/metrics\n", ip, port);
	}
}

static int run_server(const struct cli *cli, tern_rnr_monitor *mon, tern_rnr_snapshot *first)
{
	struct sockaddr_storage ss;
	struct server s;
	struct tern__http_opts o = {
		.req_max = REQ_MAX,
		.max_clients = MAX_CLIENTS,
		.idle_ms = CLIENT_IDLE_MS,
		.linger_ms = LINGER_MS,
		.page = metrics_page,
		.sent = scrape_sent,
		.closed = http_closed,
		.arg = &s,
	};
	int rc;

	memset(&s, 0, sizeof(s));
	s.cli = cli;
	s.mon = mon;
	s.last = first;
	if (tern__http_parse_addr(cli->listen, &ss)) {
		tern_rnr_snapshot_free(first);
		return usage_error("--listen needs HOST:PORT, e.g. 127.0.0.1:9464, not '%s'",
				   cli->listen);
	}
	signal(SIGPIPE, SIG_IGN); /* a scraper that hangs up is not our death */
	if ((rc = uv_loop_init(&s.loop))) {
		tern_rnr_snapshot_free(first);
		fprintf(stderr, PROG ": %s\n", uv_strerror(rc));
		return EXIT_RUNTIME;
	}
	if ((rc = tern__http_start(&s.loop, (const struct sockaddr *)&ss, &o, &s.http))) {
		fprintf(stderr, PROG ": cannot listen on %s: %s\n", cli->listen, uv_strerror(rc));
		s.status = EXIT_RUNTIME;
	} else {
		uv_signal_init(&s.loop, &s.sigint);
		uv_signal_init(&s.loop, &s.sigterm);
		s.sigint.data = s.sigterm.data = &s;
		uv_signal_start(&s.sigint, on_signal_uv, SIGINT);
		uv_signal_start(&s.sigterm, on_signal_uv, SIGTERM);
		print_address(&ss, tern__http_port(s.http));
	}
	uv_run(&s.loop, UV_RUN_DEFAULT); /* until the responder and the signals close */
	uv_loop_close(&s.loop);
	tern_rnr_snapshot_free(s.last);
	return s.status;
}

int main(int argc, char **argv)
{
	tern_rnr_monitor *mon;
	tern_rnr_snapshot *first;
	struct cli cli;
	int rc;

	if ((rc = parse_args(argc, argv, &cli)))
		return rc;
	if ((rc = open_monitor(&cli, &mon, &first)))
		return rc;
	rc = cli.listen ? run_server(&cli, mon, first) : run_readings(&cli, mon, first);
	tern_rnr_monitor_destroy(mon);
	return rc;
}
