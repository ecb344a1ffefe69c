/* SPDX-License-Identifier: MIT */
/*
 * link.h - a tiny intrusive doubly linked list for the providers (the
 * engine's own is in src/internal.h, which a provider never includes).
 */
#ifndef TERN_LINK_H
#define TERN_LINK_H

#include <stdbool.h>
#include <stddef.h>

struct tern_link {
	struct tern_link *prev, *next;
};

#define TERN_LINK_INIT(name)     \
	{                        \
		&(name), &(name) \
	}

static inline void tern_link_init(struct tern_link *l)
{
	l->prev = l->next = l;
}

static inline void tern_link_add(struct tern_link *head, struct tern_link *n)
{
	n->next = head;
	n->prev = head->prev;
	head->prev->next = n;
	head->prev = n;
}

/* Idempotent: a removed node points at itself. */
static inline void tern_link_del(struct tern_link *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = n;
}

static inline bool tern_link_empty(const struct tern_link *l)
{
	return l->next == l;
}

#define tern_link_entry(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))
#define tern_link_each(it, head) \
	for (struct tern_link *it = (head)->next; it != (head); it = it->next)

#endif /* TERN_LINK_H */
