/* SPDX-License-Identifier: MIT */
/*
 * xtab.h - a connection's table of live bulk exports, shared by the
 * providers whose peers name exported memory by descriptor (shm, tcp).
 *
 * The engine exports a region for one call (bulk_export) and withdraws it
 * when the call is over (bulk_unexport).  A descriptor's key names one
 * table entry and carries that entry's generation, so a key the peer was
 * never given, or kept from an export that is gone, matches nothing.  Every
 * access the peer asks for is checked here before a byte moves: the key,
 * the direction, and that the range lies inside what was exported.
 */
#ifndef TERN_XTAB_H
#define TERN_XTAB_H

#include <stdbool.h>
#include <stdint.h>

#include "tern/transport.h"

struct tern_xent {
	struct tern_tmem *m; /* NULL: free */
	uint64_t addr;	     /* first byte exported */
	uint64_t len;
	uint32_t key;
	bool writable;
	uint32_t next_free;
};

struct tern_xtab {
	struct tern_xent *e;
	uint32_t cap;
	uint32_t live;
	uint32_t free_head; /* a free entry, or UINT32_MAX */
	uint16_t gen;
};

/**
 * tern_xtab_add - export @m's bytes [off, off + len) to the peer.
 * @x: the connection's table
 * @m: the region
 * @off: where the export starts in @m
 * @len: its length
 * @writable: whether the peer may write (else only read)
 * @out: the descriptor to send: addr is the first byte's address here
 *
 * Marks @m (m->prov, if NULL) so that the engine calls the provider's
 * mem_release() for it, which should call tern_xtab_drop_mem().
 *
 * Return: 0, -EINVAL for a range outside @m, -ENOSPC with 65536 exports
 * live, or -ENOMEM.
 */
int tern_xtab_add(struct tern_xtab *x, struct tern_tmem *m, size_t off, size_t len, int writable,
		  struct tern_bulk_desc *out);

/**
 * tern_xtab_check - may the peer reach [addr, addr + len) through @key?
 * @x: the table
 * @key: the key the peer names
 * @addr: the first byte it asks for, an address of ours
 * @len: how many
 * @write: it wants to write them
 *
 * Return: the entry, or NULL for a key that is not live, a range that is
 * not wholly inside the export, or a write to a read-only export.
 */
const struct tern_xent *tern_xtab_check(const struct tern_xtab *x, uint32_t key, uint64_t addr,
					uint64_t len, bool write);

/**
 * tern_xtab_del - withdraw the export @d described.
 * @x: the table
 * @d: a descriptor tern_xtab_add() made
 *
 * Return: 0, or -ENOENT if it is not live (already withdrawn).
 */
int tern_xtab_del(struct tern_xtab *x, const struct tern_bulk_desc *d);

/**
 * tern_xtab_drop_mem - withdraw every export of region @m (being released).
 * @x: the table
 * @m: the region
 */
void tern_xtab_drop_mem(struct tern_xtab *x, const struct tern_tmem *m);

/**
 * tern_xtab_free - release the table's memory; every export goes with it.
 * @x: the table
 */
void tern_xtab_free(struct tern_xtab *x);

#endif /* TERN_XTAB_H */
