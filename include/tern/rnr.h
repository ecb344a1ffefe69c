/* SPDX-License-Identifier: MIT */
/*
 * tern/rnr.h - the soft-RNR monitor.
 *
 * When a receive queue runs dry, an RC responder answers with an RNR NAK and
 * the requester's NIC retries in hardware.  No work completion reports it, so
 * the only trace is a set of per-port counters in sysfs, named differently by
 * every driver.  This monitor reads them, maps each driver's names onto a few
 * canonical ones, and reports deltas since a baseline and rates between two
 * readings.
 *
 * Where it reads:
 *   <root>/class/infiniband/<dev>/ports/<port>/hw_counters/<name>   (driver)
 *   <root>/class/infiniband/<dev>/ports/<port>/counters/<name>      (IB PMA)
 *   <root>/class/infiniband/<dev>/hw_counters/<name>                (port 0)
 * <root> is "/sys" unless the options say otherwise; tests point it at a
 * tree they build.  hw_counters/lifespan is a setting (the kernel's cache
 * time for these files, in ms), not a counter: it is reported as
 * tern_rnr_port.lifespan_ms and never as a counter.
 *
 * Canonical names (the table and how it was checked are in src/rnr.c):
 *
 *   responder_out_of_buffer     mlx5 out_of_buffer        rxe send_rnr_err
 *   requester_rnr_nak           mlx5 rnr_nak_retry_err    rxe rcvd_rnr_err
 *   rnr_retries_exceeded        mlx5 req_rnr_retries_exceeded
 *                                                         rxe retry_rnr_exceeded_err
 *   transport_retries_exceeded  mlx5 req_transport_retries_exceeded, or
 *                               local_ack_timeout_err on kernels without it
 *                                                         rxe retry_exceeded_err
 *
 * and the retransmission counters, which a lossy link moves (these are
 * not RNR: they count packets lost or late on the wire):
 *
 *   requester_retries           (none on mlx5)           rxe completer_retry_err
 *   requester_sequence_nak      mlx5 packet_seq_err      rxe rcvd_seq_err
 *   responder_duplicate_request mlx5 duplicate_request   rxe duplicate_request
 *   responder_out_of_sequence   mlx5 out_of_sequence     rxe out_of_seq_request
 *
 * Counters with no canonical name keep their raw names.
 *
 * Counter resets: a value lower than the previous reading means the counter
 * was reset (driver reload, port reset, 32-bit wrap of an mlx5 Q counter).
 * The new value is then taken as the increase since the reset, added to the
 * running total, and the counter's resets field goes up by one.  A reset
 * therefore never produces a huge bogus delta; at worst it undercounts what
 * happened between the last reading and the reset.
 *
 * A monitor is not thread-safe: use one per thread, or lock around it.
 */
#ifndef TERN_RNR_H
#define TERN_RNR_H

#include <stdint.h>
#include <stdio.h>

#include <tern.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The canonical counter names. */
#define TERN_RNR_RESPONDER_OUT_OF_BUFFER    "responder_out_of_buffer"
#define TERN_RNR_REQUESTER_RNR_NAK	    "requester_rnr_nak"
#define TERN_RNR_RNR_RETRIES_EXCEEDED	    "rnr_retries_exceeded"
#define TERN_RNR_TRANSPORT_RETRIES_EXCEEDED "transport_retries_exceeded"
/* The retransmission counters (a lossy link, not RNR). */
#define TERN_RNR_REQUESTER_RETRIES	     "requester_retries"
#define TERN_RNR_REQUESTER_SEQUENCE_NAK	     "requester_sequence_nak"
#define TERN_RNR_RESPONDER_DUPLICATE_REQUEST "responder_duplicate_request"
#define TERN_RNR_RESPONDER_OUT_OF_SEQUENCE   "responder_out_of_sequence"

typedef struct tern_rnr_monitor tern_rnr_monitor;
typedef struct tern_rnr_snapshot tern_rnr_snapshot;

/* How one counter's read went.  Only TERN_RNR_OK carries a fresh value. */
enum tern_rnr_status {
	TERN_RNR_OK = 0,
	TERN_RNR_MISSING,    /* the file was there in an earlier reading and is gone */
	TERN_RNR_GARBAGE,    /* the file holds no decimal u64 (e.g. "N/A (no PMA)") */
	TERN_RNR_UNREADABLE, /* open() or read() failed; err says why */
};

enum tern_rnr_port_state {
	TERN_RNR_PORT_PRESENT = 0,
	TERN_RNR_PORT_NEW,  /* first seen in this reading: its baseline is this reading */
	TERN_RNR_PORT_GONE, /* in the previous reading, not in this one; reported once */
};

enum tern_rnr_group {
	TERN_RNR_HW_COUNTERS = 0, /* ports/<n>/hw_counters: the driver's own counters */
	TERN_RNR_IB_COUNTERS,	  /* ports/<n>/counters: the IB PMA PortCounters */
};

struct tern_rnr_counter {
	const char *name;      /* canonical name if there is one, else raw */
	const char *raw;       /* the file name in sysfs */
	const char *canonical; /* NULL when the counter has no canonical name */
	enum tern_rnr_group group;
	enum tern_rnr_status status;
	int err;	 /* 0, or the negative errno behind MISSING / UNREADABLE */
	uint64_t value;	 /* the raw value read now; 0 unless status is OK */
	uint64_t total;	 /* reset-corrected increase since the monitor first saw it */
	uint64_t delta;	 /* reset-corrected increase since the baseline */
	uint32_t resets; /* resets seen since the baseline */
};

struct tern_rnr_port {
	const char *device;
	uint32_t port; /* 0 for device-wide hw_counters */
	enum tern_rnr_port_state state;
	int64_t lifespan_ms; /* hw_counters/lifespan, or -1 when absent */
	size_t n_counters;
	const struct tern_rnr_counter *counters; /* canonical ones first */
};

enum tern_rnr_format {
	TERN_RNR_FORMAT_TABLE = 0, /* aligned columns for people */
	TERN_RNR_FORMAT_JSON,	   /* one JSON object on one line */
	TERN_RNR_FORMAT_PROM,	   /* Prometheus text exposition format 0.0.4 */
};

/*
 * Options.  Zero the struct (or call tern_rnr_opts_init()), set size to
 * sizeof(struct tern_rnr_opts) and change what you need; fields added later
 * go at the end, and a caller built against an older header passes a
 * smaller size, so they read as their defaults.
 */
struct tern_rnr_opts {
	size_t size;
	const char *sysfs_root; /* NULL: "/sys" */
	const char *device;	/* fnmatch(3) pattern on device names; NULL: all */
	/* Clock for snapshot timestamps, in ns; NULL: CLOCK_MONOTONIC.  Tests
	 * inject time through it to check rates exactly. */
	uint64_t (*clock_ns)(void *arg);
	void *clock_arg;
};

/**
 * tern_rnr_opts_init - fill @opts with the defaults
 * @opts: options to initialise; its size field is set
 */
TERN_EXPORT void tern_rnr_opts_init(struct tern_rnr_opts *opts);

/**
 * tern_rnr_monitor_create - discover the ports and take the baseline
 * @opts: options, or NULL for the defaults
 * @out: receives the monitor
 *
 * Finding no device is not an error: devices that appear later are picked
 * up by later readings, each with its own baseline at first sight.
 *
 * Return: 0; -EINVAL for a NULL @out or a bad @opts->size; -ENOMEM; or the
 * negative errno of a sysfs root that cannot be listed.
 */
TERN_EXPORT int tern_rnr_monitor_create(const struct tern_rnr_opts *opts, tern_rnr_monitor **out);

/**
 * tern_rnr_monitor_destroy - free a monitor
 * @mon: the monitor, or NULL
 *
 * Snapshots taken from it stay valid and must still be freed.
 */
TERN_EXPORT void tern_rnr_monitor_destroy(tern_rnr_monitor *mon);

/**
 * tern_rnr_monitor_read - take a reading now
 * @mon: the monitor
 * @out: receives the snapshot; free it with tern_rnr_snapshot_free()
 *
 * Rediscovers devices and ports, reads every counter, and updates the
 * running totals.  Per-counter failures are reported in the snapshot, not
 * returned.
 *
 * Return: 0; -EINVAL; -ENOMEM; or the negative errno of a sysfs root that
 * exists but cannot be listed.
 */
TERN_EXPORT int tern_rnr_monitor_read(tern_rnr_monitor *mon, tern_rnr_snapshot **out);

/**
 * tern_rnr_monitor_rebaseline - take a reading now and make it the baseline
 * @mon: the monitor
 *
 * Every delta and resets field starts again from zero.
 *
 * Return: as tern_rnr_monitor_read().
 */
TERN_EXPORT int tern_rnr_monitor_rebaseline(tern_rnr_monitor *mon);

/**
 * tern_rnr_monitor_delta - read now and return one counter's delta
 * @mon: the monitor
 * @device: device name, or NULL to sum over every port of every device
 * @port: port number; ignored when @device is NULL
 * @name: canonical name, raw name, "hw_counters/RAW" or "counters/RAW"
 * @delta: receives the increase since the baseline
 *
 * This is the whole of a "did this run cause RNR?" check: create the
 * monitor (the baseline), run, then ask for TERN_RNR_RESPONDER_OUT_OF_BUFFER.
 * The kernel caches hw_counters for lifespan_ms (10 ms by default), so let
 * that long pass after the traffic before asking.
 *
 * Return: 0; -EINVAL; -ENOENT when no matching port has that counter;
 * -ENODATA (missing), -EBADMSG (garbage) or the read's errno when a matching
 * counter could not be read now, with @delta still set to what is known.
 */
TERN_EXPORT int tern_rnr_monitor_delta(tern_rnr_monitor *mon, const char *device, uint32_t port,
				       const char *name, uint64_t *delta);

/**
 * tern_rnr_snapshot_free - free a snapshot
 * @snap: the snapshot, or NULL
 */
TERN_EXPORT void tern_rnr_snapshot_free(tern_rnr_snapshot *snap);

/**
 * tern_rnr_snapshot_ports - the ports in a snapshot
 * @snap: the snapshot
 * @n: receives the number of ports
 *
 * Ports are sorted by device name, then port number.
 *
 * Return: the array, valid until the snapshot is freed (NULL when @n is 0).
 */
TERN_EXPORT const struct tern_rnr_port *tern_rnr_snapshot_ports(const tern_rnr_snapshot *snap,
								size_t *n);

/**
 * tern_rnr_snapshot_time_ns - when the snapshot was taken
 * @snap: the snapshot
 *
 * Return: the monitor's clock (CLOCK_MONOTONIC unless injected), in ns.
 */
TERN_EXPORT uint64_t tern_rnr_snapshot_time_ns(const tern_rnr_snapshot *snap);

/**
 * tern_rnr_snapshot_find - look a counter up by name on one port
 * @snap: the snapshot
 * @device: device name
 * @port: port number
 * @name: canonical name, raw name, "hw_counters/RAW" or "counters/RAW"
 * @out: receives the counter
 *
 * A name is tried as a canonical name, then as a raw name (hw_counters
 * first), and last as an alias: a raw name that another driver uses for a
 * canonical counter stands for that canonical counter, so "out_of_buffer"
 * finds send_rnr_err on an rxe port.
 *
 * Return: 0; -EINVAL; -ENOENT.
 */
TERN_EXPORT int tern_rnr_snapshot_find(const tern_rnr_snapshot *snap, const char *device,
				       uint32_t port, const char *name,
				       const struct tern_rnr_counter **out);

/**
 * tern_rnr_snapshot_delta - one counter's delta since the baseline
 * @snap: the snapshot
 * @device: device name, or NULL to sum over every port
 * @port: port number; ignored when @device is NULL
 * @name: as for tern_rnr_snapshot_find()
 * @delta: receives the delta (the sum, for a NULL @device)
 *
 * Return: as tern_rnr_monitor_delta().
 */
TERN_EXPORT int tern_rnr_snapshot_delta(const tern_rnr_snapshot *snap, const char *device,
					uint32_t port, const char *name, uint64_t *delta);

/**
 * tern_rnr_rate - a counter's rate per second between two snapshots
 * @older: the earlier snapshot
 * @newer: the later snapshot, from the same monitor
 * @device: device name, or NULL to sum over every port
 * @port: port number; ignored when @device is NULL
 * @name: as for tern_rnr_snapshot_find()
 * @per_sec: receives the rate
 *
 * Uses the reset-corrected totals, so a reset between the two readings does
 * not produce a bogus rate.  A port that appeared after @older counts from
 * its first sight.
 *
 * Return: 0; -EINVAL for snapshots of different monitors or not in time
 * order; otherwise as tern_rnr_snapshot_delta() for @newer.
 */
TERN_EXPORT int tern_rnr_rate(const tern_rnr_snapshot *older, const tern_rnr_snapshot *newer,
			      const char *device, uint32_t port, const char *name, double *per_sec);

/**
 * tern_rnr_snapshot_write - print a snapshot
 * @snap: the snapshot
 * @prev: an earlier snapshot of the same monitor for rates, or NULL
 * @fmt: table, JSON (one line) or Prometheus text
 * @out: where to write
 *
 * Prometheus output carries the families tern_rnr_counter_total (the raw
 * value), tern_rnr_counter_delta, tern_rnr_counter_resets,
 * tern_rnr_counter_read_error and tern_rnr_port_present, each with HELP and
 * TYPE lines and the labels device, port, group, counter and raw.
 *
 * Return: 0; -EINVAL; -EIO when writing to @out failed.
 */
TERN_EXPORT int tern_rnr_snapshot_write(const tern_rnr_snapshot *snap,
					const tern_rnr_snapshot *prev, enum tern_rnr_format fmt,
					FILE *out);

/**
 * tern_rnr_canonical_name - the canonical name a driver's counter maps to
 * @raw: a raw counter name, e.g. "out_of_buffer" or "send_rnr_err"
 *
 * Return: a static string, or NULL when @raw has no canonical name.
 */
TERN_EXPORT const char *tern_rnr_canonical_name(const char *raw);

/**
 * tern_rnr_is_canonical - whether @name is one of the canonical names
 * @name: a counter name
 *
 * Return: 1 or 0.
 */
TERN_EXPORT int tern_rnr_is_canonical(const char *name);

/**
 * tern_rnr_status_name - "ok", "missing", "garbage" or "unreadable"
 * @status: a status
 */
TERN_EXPORT const char *tern_rnr_status_name(enum tern_rnr_status status);

/**
 * tern_rnr_port_state_name - "present", "new" or "gone"
 * @state: a port state
 */
TERN_EXPORT const char *tern_rnr_port_state_name(enum tern_rnr_port_state state);

#ifdef __cplusplus
}
#endif
#endif /* TERN_RNR_H */
