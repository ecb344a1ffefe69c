// SPDX-License-Identifier: MIT
/*
 * tern._tern - the C half of the Python bindings.
 *
 * Small on purpose: a context with its own libuv loop, sessions, calls with
 * futures, handler registration, and the objects that hand slot memory to
 * Python.  Everything a user sees (services, proxies, messages, exceptions)
 * is in the pure-Python package around it.
 *
 * The GIL.  A context runs on the thread that made it.  Every wait and every
 * loop turn runs with the GIL released; a tern callback that needs Python
 * (a handler, a call completing) takes it back for its duration through the
 * thread state the context saved (ctx_enter/ctx_leave), so a callback that
 * fires while the GIL is held (a close from Python) just runs.
 *
 * Slot memory.  Handlers get memoryviews of a SlotView, an object exporting
 * a slot's bytes.  When the runtime is done with the slot it releases the
 * handler's memoryview and marks the SlotView released: its getbuffer then
 * fails, so nothing made later can reach the slot.  A buffer still exported
 * at that point (a numpy array or a memoryview slice the handler kept) holds
 * the slot: a call's reply waits, fully written, until the last export is
 * released, so an exported view never sees the slot reused.  One-way
 * messages and batch items are held the same way (tern_req_hold()): the
 * slot, and its credit, go back to tern when the last export is released.
 * Either happens on the loop's thread: a release on another thread hands
 * the request over to it (see pending_try_finish()).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include <tern.h>
#include <uv.h>

/* Method kinds, as the Python layer names them. */
enum kind { K_RAW, K_INPLACE, K_DEFERRED, K_ONEWAY, K_BATCH, K_ONEWAY_BATCH };

/* Longest stretch the GIL stays released without a look at signals. */
#define SLICE_NS 20000000ull

static PyObject *error_factory; /* tern.errors._from_code(code, message, remote) */
static PyObject *rpc_error;	/* tern.errors.RpcError: its ``code`` is a status */

typedef struct pending pending;
typedef struct ViewObject ViewObject;
typedef struct RequestObject RequestObject;
typedef struct MemObject MemObject;
typedef struct SlotObject SlotObject;
struct membind;

typedef struct {
	PyObject_HEAD tern_ctx *ctx;
	uv_loop_t loop;
	uv_timer_t wake;     /* bounds a blocking loop turn, so Ctrl-C is seen */
	uv_async_t async;    /* stop() and hand-overs from other threads wake the loop */
	unsigned long owner; /* the thread that runs the loop (0: none yet) */
	int progress;
	PyThreadState *ts; /* set while the GIL is released in tern */
	int depth;	   /* tern callbacks running Python right now */
	int stop;
	bool closed;
	PyObject *fatal;	 /* an error that must stop the loop, raised by run */
	PyObject *regs;		 /* list of capsules of struct reg: keeps handlers */
	PyObject *sessions;	 /* list of weak references to client sessions */
	long held;		 /* replies and held slots waiting for views to be released */
	pending *due;		 /* ...whose views are released, for the loop's thread */
	long peers_closed;	 /* accepted sessions that have ended */
	long refused;		 /* connections the listeners refused */
	PyObject *on_refused;	 /* called as on_refused(status, message) for each */
	RequestObject *reqs;	 /* deferred requests not answered yet */
	struct membind *binds;	 /* Memory objects registered here (tern_mem_register) */
	struct membind *unbinds; /* ...dropped on another thread, for the loop's thread */
	SlotObject *slots;	 /* send slots acquired and not yet committed or aborted */
} CtxObject;

/* What a registered method's user pointer points at. */
struct reg {
	CtxObject *c; /* borrowed: the context owns the registration */
	PyObject *fn;
	enum kind kind;
	uint32_t id;
};

struct ViewObject {
	PyObject_HEAD char *buf;
	Py_ssize_t len;
	int readonly;
	Py_ssize_t exports;
	bool released;
	pending *hold; /* a reply or a held slot waiting for this view's exports */
	tern_req *req; /* one-way and batch: the request whose slot this is */
};

/*
 * A reply written and ready, or a one-way message or batch item held
 * (tern_req_hold()), waiting for the request's views to go.
 */
struct pending {
	CtxObject *c; /* strong reference */
	tern_req *req;
	bool release; /* tern_req_release() it, nothing to answer */
	bool queued;  /* on c->due */
	pending *next;
	ViewObject *in, *out; /* strong references; out may be NULL */
	int err;	      /* 0: commit len bytes; else tern_reply_error */
	size_t len;
	char msg[208];
};

struct RequestObject {
	PyObject_HEAD CtxObject *c;
	tern_req *req; /* NULL once answered */
	ViewObject *in, *out;
	PyObject *in_mv, *out_mv;
	RequestObject *next, **pprev;
};

typedef struct {
	PyObject_HEAD CtxObject *c;
	tern_session *s; /* NULL once closed */
	int close_reason;
	size_t max_payload;
	PyObject *weakrefs;
} SessionObject;

typedef struct {
	PyObject_HEAD CtxObject *c;
	int done;
	int status;
	bool remote;	 /* the peer sent the status (tern_call_status_remote()) */
	PyObject *reply; /* bytes on success, the remote's message on failure */
	PyObject *decode;
	Py_buffer req; /* held while a queued request may still be read */
	bool has_req;
	Py_buffer rep;	   /* the reply buffer, held while the reply may land in it */
	bool has_rep;	   /* ...and then the reply is rep_obj's first reply_len bytes */
	PyObject *rep_obj; /* the reply buffer (a strong reference) */
	size_t reply_len;  /* the reply's length in it */
	MemObject *mem[2]; /* registrations the request and the reply buffer are in */
	tern_session *s;   /* the call's session, while it runs */
} FutureObject;

typedef struct {
	PyObject_HEAD CtxObject *c;
	struct tern_batch_item *items; /* NULL after the handler returned */
	size_t n;
	bool oneway;
	PyObject *views; /* memoryviews handed out by __getitem__ */
	PyObject *svs;	 /* and their SlotViews */
} BatchObject;

/*
 * A buffer registered for large messages (tern.register()).  It holds an
 * export of the buffer, so the memory cannot be freed or resized while
 * tern may reach it; it is registered with each context lazily, the first
 * time a call on that context names memory inside it (a request, a reply
 * buffer), and deregistered there at close().
 */
struct MemObject {
	PyObject_HEAD Py_buffer view; /* the export, held while open */
	bool open;
	long uses;		  /* calls in flight with memory inside it */
	struct membind *binds;	  /* its registration on each context */
	MemObject *next, **pprev; /* the open registrations (mems) */
	PyObject *weakrefs;
};

/*
 * A Memory registered on one context.  @pin is a second export of the
 * buffer, so the memory outlives the Memory object until tern_mem_register()
 * is undone, on the context's thread.
 */
struct membind {
	MemObject *m; /* borrowed; NULL once the Memory closed */
	CtxObject *c; /* borrowed: the context frees its binds at close */
	tern_mr *mr;
	Py_buffer pin;
	struct membind *next_m; /* in m->binds */
	struct membind *next_c; /* in c->binds, or c->unbinds */
};

static MemObject *mems; /* open Memory objects, newest first (under the GIL) */

static PyTypeObject CtxType, ViewType, RequestType, SessionType, FutureType, BatchType, MemType,
	SlotType;

/* ---- time and errors ------------------------------------------------------ */

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Raise the exception tern.errors maps @code to, with @msg: a RemoteError
 * when the peer sent the code (@remote), else a local class.
 */
static PyObject *raise_status(int code, const char *msg, bool remote)
{
	PyObject *e;

	if (!error_factory) {
		PyErr_Format(PyExc_RuntimeError, "tern error %d: %s", code, msg ? msg : "");
		return NULL;
	}
	e = PyObject_CallFunction(error_factory, "isO", code, msg ? msg : "",
				  remote ? Py_True : Py_False);
	if (e) {
		PyErr_SetObject((PyObject *)Py_TYPE(e), e);
		Py_DECREF(e);
	}
	return NULL;
}

/* A failure of this side. */
static PyObject *raise_code(int code, const char *msg)
{
	return raise_status(code, msg, false);
}

static PyObject *raise_ctx(CtxObject *c, int code)
{
	return raise_code(code, c && c->ctx ? tern_ctx_last_error(c->ctx) : "");
}

/*
 * A handler's exception as a tern status and message: RpcError and OSError
 * carry their code; anything else is TERN_EREMOTE with "Type: message".
 */
static int exc_to_status(char *msg, size_t cap)
{
	PyObject *type, *val, *tb, *code = NULL, *s = NULL;
	bool rpc_is = false; /* tern's exception */
	bool coded = false;  /* it, or an OSError: its code is the status */
	long v = 0;
	int status = TERN_EREMOTE;

	PyErr_Fetch(&type, &val, &tb);
	PyErr_NormalizeException(&type, &val, &tb);
	msg[0] = 0;
	if (val) {
		/* only tern's own exceptions and OSError carry a status */
		rpc_is = rpc_error && PyObject_IsInstance(val, rpc_error) > 0;
		if (rpc_is)
			code = PyObject_GetAttrString(val, "code");
		else if (PyObject_IsInstance(val, PyExc_OSError) > 0)
			code = PyObject_GetAttrString(val, "errno");
		coded = code && PyLong_Check(code);
		if (code && PyLong_Check(code)) {
			v = PyLong_AsLong(code);
			if (v > 0)
				v = -v;
			if (v < 0 && v > -100000)
				status = (int)v;
		}
		PyErr_Clear();
		/* an OSError's text without its "[Errno n]" */
		s = PyObject_GetAttrString(val, coded && !rpc_is ? "strerror" : "message");
		if (!s || !PyUnicode_Check(s)) {
			PyErr_Clear();
			Py_XDECREF(s);
			s = PyObject_Str(val);
		}
		if (s && PyUnicode_Check(s)) {
			const char *u = PyUnicode_AsUTF8(s);

			if (!coded)
				snprintf(msg, cap, "%s: %s", ((PyTypeObject *)type)->tp_name,
					 u ? u : "");
			else
				snprintf(msg, cap, "%s", u ? u : "");
		}
		PyErr_Clear();
	}
	Py_XDECREF(code);
	Py_XDECREF(s);
	Py_XDECREF(type);
	Py_XDECREF(val);
	Py_XDECREF(tb);
	return status;
}

/* ---- the GIL around tern callbacks --------------------------------------- */

static PyThreadState *ctx_enter(CtxObject *c)
{
	PyThreadState *t = c->ts;

	if (t) {
		c->ts = NULL;
		PyEval_RestoreThread(t);
	}
	c->depth++;
	return t;
}

static void ctx_leave(CtxObject *c, PyThreadState *t)
{
	c->depth--;
	if (t)
		c->ts = PyEval_SaveThread();
}

/* Record an error that must stop the loop; run() raises it. */
static void ctx_fail(CtxObject *c, PyObject *type, const char *msg)
{
	if (!c->fatal) {
		c->fatal = Py_BuildValue("(Os)", type, msg);
		if (!c->fatal)
			PyErr_Clear();
	}
	c->stop = 1;
	if (c->ctx)
		tern_ctx_stop(c->ctx);
}

/* A context's requests are answered on the thread that runs its loop. */
static int ctx_owned(CtxObject *c)
{
	if (c->owner && c->owner != PyThread_get_thread_ident()) {
		PyErr_SetString(PyExc_RuntimeError,
				"tern: a context is used by the thread that runs it; from another "
				"thread, hand the work over with call_soon()");
		return -1;
	}
	return 0;
}

/* ---- SlotView --------------------------------------------------------------- */

static ViewObject *view_new(const void *buf, size_t len, int readonly)
{
	ViewObject *v = PyObject_New(ViewObject, &ViewType);

	if (!v)
		return NULL;
	v->buf = (char *)buf;
	v->len = (Py_ssize_t)len;
	v->readonly = readonly;
	v->exports = 0;
	v->released = false;
	v->hold = NULL;
	v->req = NULL;
	return v;
}

static int view_getbuffer(PyObject *o, Py_buffer *b, int flags)
{
	ViewObject *v = (ViewObject *)o;

	if (v->released) {
		PyErr_SetString(PyExc_BufferError,
				"tern: this view's slot was released (a view is valid only "
				"until its handler returns or its request is answered)");
		b->obj = NULL;
		return -1;
	}
	if (PyBuffer_FillInfo(b, o, v->buf, v->len, v->readonly, flags))
		return -1;
	v->exports++;
	return 0;
}

static void pending_try_finish(pending *p);

static void view_releasebuffer(PyObject *o, Py_buffer *b)
{
	ViewObject *v = (ViewObject *)o;

	(void)b;
	if (--v->exports == 0 && v->hold)
		pending_try_finish(v->hold);
}

static void view_dealloc(PyObject *o)
{
	PyObject_Free(o);
}

static Py_ssize_t view_length(PyObject *o)
{
	ViewObject *v = (ViewObject *)o;

	if (v->released) {
		PyErr_SetString(PyExc_ValueError, "tern: this view's slot was released");
		return -1;
	}
	return v->len;
}

static PyObject *view_get_released(PyObject *o, void *unused)
{
	(void)unused;
	return PyBool_FromLong(((ViewObject *)o)->released);
}

static PyObject *view_get_exports(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromSsize_t(((ViewObject *)o)->exports);
}

static PyBufferProcs view_as_buffer = {
	.bf_getbuffer = view_getbuffer,
	.bf_releasebuffer = view_releasebuffer,
};

static PySequenceMethods view_as_sequence = {
	.sq_length = view_length,
};

static PyGetSetDef view_getset[] = {
	{"released", view_get_released, NULL, "True once the slot went back to tern", NULL},
	{"exports", view_get_exports, NULL, "buffers exported and not yet released", NULL},
	{NULL},
};

static PyTypeObject ViewType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.SlotView",
	.tp_basicsize = sizeof(ViewObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "The bytes of a slot, exported through the buffer protocol until released.",
	.tp_dealloc = view_dealloc,
	.tp_as_buffer = &view_as_buffer,
	.tp_as_sequence = &view_as_sequence,
	.tp_getset = view_getset,
};

/* A memoryview of @v for Python code. */
static PyObject *view_memory(ViewObject *v)
{
	return PyMemoryView_FromObject((PyObject *)v);
}

/* Release a memoryview we made; a failure (it has exports) is not an error. */
static void mv_release(PyObject *mv)
{
	PyObject *r;

	if (!mv)
		return;
	r = PyObject_CallMethod(mv, "release", NULL);
	if (!r)
		PyErr_Clear();
	Py_XDECREF(r);
}

/* Is @v free of exports?  A reference cycle may hold one: collect once. */
static bool view_idle(ViewObject *v)
{
	if (!v || v->exports == 0)
		return true;
	PyGC_Collect();
	return v->exports == 0;
}

/* ---- Memory: buffers registered for large messages ------------------------------ */

/* May tern be touched from this thread?  The loop's thread, or none yet. */
static bool ctx_here(CtxObject *c)
{
	return !c->owner || c->owner == PyThread_get_thread_ident();
}

/* Undo a registration and let its memory go, on the context's thread. */
static void bind_free(struct membind *b)
{
	/* a closed context has released every registration itself */
	if (b->c->ctx)
		tern_mem_deregister(b->mr);
	PyBuffer_Release(&b->pin);
	PyMem_Free(b);
}

static void bind_unlink_ctx(struct membind *b)
{
	for (struct membind **pp = &b->c->binds; *pp; pp = &(*pp)->next_c) {
		if (*pp == b) {
			*pp = b->next_c;
			return;
		}
	}
}

/* @m is closing: undo its registration on every context. */
static void mem_unbind_all(MemObject *m)
{
	struct membind *b;

	while ((b = m->binds)) {
		m->binds = b->next_m;
		b->m = NULL;
		bind_unlink_ctx(b);
		if (ctx_here(b->c)) {
			bind_free(b);
		} else {
			/* a context is the thread's that runs it: hand it over */
			b->next_c = b->c->unbinds;
			b->c->unbinds = b;
			uv_async_send(&b->c->async);
		}
	}
}

/* The open Memory whose buffer holds [p, p + len), if any. */
static MemObject *mem_find(const void *p, size_t len)
{
	for (MemObject *m = mems; m; m = m->next) {
		uintptr_t a = (uintptr_t)m->view.buf, x = (uintptr_t)p;

		if (x >= a && x - a <= (uintptr_t)m->view.len &&
		    len <= (size_t)m->view.len - (size_t)(x - a))
			return m;
	}
	return NULL;
}

/* Register @m with @c, once. */
static int mem_bind(MemObject *m, CtxObject *c)
{
	struct membind *b;
	int rc;

	for (b = m->binds; b; b = b->next_m)
		if (b->c == c)
			return 0;
	b = PyMem_Calloc(1, sizeof(*b));
	if (!b) {
		PyErr_NoMemory();
		return -1;
	}
	if (PyObject_GetBuffer(m->view.obj, &b->pin, PyBUF_SIMPLE)) {
		PyMem_Free(b);
		return -1;
	}
	rc = tern_mem_register(c->ctx, m->view.buf, (size_t)m->view.len, &b->mr);
	if (rc) {
		PyBuffer_Release(&b->pin);
		PyMem_Free(b);
		raise_ctx(c, rc);
		return -1;
	}
	b->m = m;
	b->c = c;
	b->next_m = m->binds;
	m->binds = b;
	b->next_c = c->binds;
	c->binds = b;
	return 0;
}

/*
 * A call on @c is about to name [p, p + len): if that lies in a Memory,
 * register it here and count the use.  *out: a new reference, or NULL.
 */
static int mem_use(CtxObject *c, const void *p, size_t len, MemObject **out)
{
	MemObject *m = len ? mem_find(p, len) : NULL;

	*out = NULL;
	if (!m)
		return 0;
	if (mem_bind(m, c))
		return -1;
	m->uses++;
	Py_INCREF(m);
	*out = m;
	return 0;
}

static void mem_done(MemObject *m)
{
	m->uses--;
	Py_DECREF(m);
}

static int mem_close_impl(MemObject *m)
{
	if (!m->open)
		return 0;
	if (m->uses) {
		PyErr_Format(PyExc_BufferError,
			     "tern: %ld calls use this memory (in flight, or timed out on a "
			     "session that is still open)",
			     m->uses);
		return -1;
	}
	mem_unbind_all(m);
	*m->pprev = m->next;
	if (m->next)
		m->next->pprev = m->pprev;
	m->open = false;
	PyBuffer_Release(&m->view);
	return 0;
}

static PyObject *mem_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"buffer", NULL};
	PyObject *obj;
	MemObject *m;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "O:register", kwlist, &obj))
		return NULL;
	m = (MemObject *)type->tp_alloc(type, 0);
	if (!m)
		return NULL;
	/* writable when it can be (a reply buffer), else for requests only */
	if (PyObject_GetBuffer(obj, &m->view, PyBUF_WRITABLE)) {
		PyErr_Clear();
		if (PyObject_GetBuffer(obj, &m->view, PyBUF_SIMPLE)) {
			Py_DECREF(m);
			return NULL;
		}
	}
	if (m->view.len == 0) {
		PyBuffer_Release(&m->view);
		Py_DECREF(m);
		PyErr_SetString(PyExc_ValueError, "tern.register: an empty buffer");
		return NULL;
	}
	m->open = true;
	m->next = mems;
	m->pprev = &mems;
	if (mems)
		mems->pprev = &m->next;
	mems = m;
	return (PyObject *)m;
}

static PyObject *mem_close(PyObject *o, PyObject *unused)
{
	(void)unused;
	if (mem_close_impl((MemObject *)o))
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *mem_enter(PyObject *o, PyObject *unused)
{
	(void)unused;
	return Py_NewRef(o);
}

static PyObject *mem_exit(PyObject *o, PyObject *args)
{
	(void)args;
	return mem_close(o, NULL);
}

static void mem_dealloc(PyObject *o)
{
	MemObject *m = (MemObject *)o;

	if (m->weakrefs)
		PyObject_ClearWeakRefs(o);
	/* every use holds a reference: none is left */
	if (mem_close_impl(m))
		PyErr_WriteUnraisable(o);
	Py_TYPE(o)->tp_free(o);
}

static PyObject *mem_get_closed(PyObject *o, void *unused)
{
	(void)unused;
	return PyBool_FromLong(!((MemObject *)o)->open);
}

static PyObject *mem_get_nbytes(PyObject *o, void *unused)
{
	MemObject *m = (MemObject *)o;

	(void)unused;
	return PyLong_FromSsize_t(m->open ? m->view.len : 0);
}

static PyObject *mem_get_uses(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromLong(((MemObject *)o)->uses);
}

static PyObject *mem_get_contexts(PyObject *o, void *unused)
{
	long n = 0;

	(void)unused;
	for (struct membind *b = ((MemObject *)o)->binds; b; b = b->next_m)
		n++;
	return PyLong_FromLong(n);
}

static PyObject *mem_get_obj(PyObject *o, void *unused)
{
	MemObject *m = (MemObject *)o;

	(void)unused;
	return Py_NewRef(m->open && m->view.obj ? m->view.obj : Py_None);
}

static PyMethodDef mem_methods[] = {
	{"close", mem_close, METH_NOARGS,
	 "deregister everywhere and release the buffer; refused while calls use it"},
	{"__enter__", mem_enter, METH_NOARGS, NULL},
	{"__exit__", mem_exit, METH_VARARGS, NULL},
	{NULL},
};

static PyGetSetDef mem_getset[] = {
	{"closed", mem_get_closed, NULL, "True once closed", NULL},
	{"nbytes", mem_get_nbytes, NULL, "the registered length", NULL},
	{"uses", mem_get_uses, NULL, "calls in flight using the memory", NULL},
	{"contexts", mem_get_contexts, NULL, "contexts it is registered with", NULL},
	{"obj", mem_get_obj, NULL, "the registered object", NULL},
	{NULL},
};

static PyTypeObject MemType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.Memory",
	.tp_basicsize = sizeof(MemObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "Memory(buffer): register a buffer for large messages with no copy "
		  "(tern.register).",
	.tp_new = mem_new,
	.tp_dealloc = mem_dealloc,
	.tp_weaklistoffset = offsetof(MemObject, weakrefs),
	.tp_methods = mem_methods,
	.tp_getset = mem_getset,
};

/* ---- CallSlot: a send slot to build a request in ------------------------------ */

/*
 * A send slot acquired to build a call's request or a one-way message in
 * (tern_call_acquire(), tern_send_acquire()): a SlotView of the slot's
 * room, writable, until commit() or abort() hands it back to tern.  Every
 * buffer exported from it holds a reference to it, and commit() and abort()
 * are refused while one lives, so no view outlives the slot.  While a slot
 * is out, its context's loop does not run: the session cannot go down and
 * take the slot's memory with it.
 */
struct SlotObject {
	ViewObject v;	   /* the slot's bytes; v.released once committed or aborted */
	SessionObject *so; /* strong reference */
	tern_callslot *cs; /* NULL once committed or aborted */
	bool oneway;
	PyObject *mv;		   /* the memoryview handed out by .buffer */
	SlotObject *next, **pprev; /* in c->slots */
};

static FutureObject *fut_new(CtxObject *c, PyObject *decode);
static void on_reply(tern_session *s, int status, const void *reply, size_t len, void *user);

/* A slot is out: the loop must not run (refused with RuntimeError). */
static bool slots_block(CtxObject *c)
{
	if (!c->slots)
		return false;
	PyErr_SetString(PyExc_RuntimeError,
			"tern: a send slot acquired on this context is neither committed nor "
			"aborted; the loop does not run until it is");
	return true;
}

/* Give the slot back to the runtime's books: it is no longer ours. */
static void slot_finish(SlotObject *sl)
{
	sl->cs = NULL;
	sl->v.released = true;
	sl->v.buf = NULL;
	if (sl->pprev) {
		*sl->pprev = sl->next;
		if (sl->next)
			sl->next->pprev = sl->pprev;
		sl->pprev = NULL;
		sl->next = NULL;
	}
}

/* Release the memoryview we handed out; 0 if nothing else reads the slot. */
static int slot_idle(SlotObject *sl, const char *what)
{
	if (sl->mv) {
		mv_release(sl->mv);
		Py_CLEAR(sl->mv);
	}
	if (view_idle(&sl->v))
		return 0;
	PyErr_Format(PyExc_BufferError,
		     "tern: release the views of this slot (numpy arrays, memoryviews) before "
		     "%s it",
		     what);
	return -1;
}

static int slot_live(SlotObject *sl)
{
	if (!sl->cs) {
		PyErr_SetString(PyExc_ValueError, "tern: this slot was committed or aborted");
		return -1;
	}
	return 0;
}

/* Abort every slot out on @c (of session @so only, if given); refused if one is in use. */
static int slots_abort_all(CtxObject *c, SessionObject *so)
{
	for (SlotObject *sl = c->slots; sl; sl = sl->next) {
		if ((!so || sl->so == so) && sl->mv) {
			mv_release(sl->mv);
			Py_CLEAR(sl->mv);
		}
		if ((!so || sl->so == so) && !view_idle(&sl->v)) {
			PyErr_SetString(PyExc_BufferError,
					"tern: views of an acquired send slot are still exported");
			return -1;
		}
	}
	for (SlotObject *sl = c->slots, *nx; sl; sl = nx) {
		nx = sl->next;
		if (so && sl->so != so)
			continue;
		Py_CLEAR(sl->mv);
		tern_call_abort(sl->cs);
		slot_finish(sl);
	}
	return 0;
}

static PyObject *slot_get_buffer(PyObject *o, void *unused)
{
	SlotObject *sl = (SlotObject *)o;

	(void)unused;
	if (slot_live(sl))
		return NULL;
	if (!sl->mv) {
		sl->mv = view_memory(&sl->v);
		if (!sl->mv)
			return NULL;
	}
	return Py_NewRef(sl->mv);
}

static PyObject *slot_get_cap(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromSsize_t(((SlotObject *)o)->v.len);
}

static PyObject *slot_get_committed(PyObject *o, void *unused)
{
	(void)unused;
	return PyBool_FromLong(((SlotObject *)o)->cs == NULL);
}

/*
 * commit(method_id, length, timeout_ms=0, decode=None): send the slot's
 * first @length bytes, as a call (-> Future) or a one-way message (-> None).
 */
static PyObject *slot_commit(PyObject *o, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"method_id", "length", "timeout_ms", "decode", NULL};
	SlotObject *sl = (SlotObject *)o;
	struct tern_call_opts co = {.size = sizeof(co)};
	CtxObject *c = sl->so->c;
	unsigned long id;
	Py_ssize_t len;
	unsigned int timeout_ms = 0;
	PyObject *decode = NULL;
	tern_callslot *cs;
	FutureObject *f;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "kn|IO:commit", kwlist, &id, &len, &timeout_ms,
					 &decode) ||
	    slot_live(sl))
		return NULL;
	if (len < 0 || len > sl->v.len)
		return raise_code(-EMSGSIZE, "commit(): the length is outside the slot");
	if (slot_idle(sl, "committing"))
		return NULL;
	cs = sl->cs;
	slot_finish(sl);
	if (!sl->so->s) {
		/* cannot happen while the loop is held; be safe anyway */
		return raise_code(-ENOTCONN, "the session is gone");
	}
	if (sl->oneway) {
		rc = tern_send_commit(cs, (uint32_t)id, (size_t)len);
		if (rc)
			return raise_ctx(c, rc);
		Py_RETURN_NONE;
	}
	f = fut_new(c, decode);
	if (!f) {
		tern_call_abort(cs);
		return NULL;
	}
	f->s = sl->so->s;
	co.timeout_ms = timeout_ms;
	Py_INCREF(f); /* the call's reference, dropped by on_reply */
	rc = tern_call_commit(cs, (uint32_t)id, (size_t)len, on_reply, f, &co);
	if (rc) {
		Py_DECREF(f);
		Py_DECREF(f);
		return raise_ctx(c, rc); /* tern aborted the slot */
	}
	return (PyObject *)f;
}

static PyObject *slot_abort(PyObject *o, PyObject *unused)
{
	SlotObject *sl = (SlotObject *)o;

	(void)unused;
	if (!sl->cs)
		Py_RETURN_NONE;
	if (slot_idle(sl, "aborting"))
		return NULL;
	tern_call_abort(sl->cs);
	slot_finish(sl);
	Py_RETURN_NONE;
}

static int slot_traverse(PyObject *o, visitproc visit, void *arg)
{
	SlotObject *sl = (SlotObject *)o;

	Py_VISIT(sl->mv);
	Py_VISIT(sl->so);
	return 0;
}

static int slot_clear(PyObject *o)
{
	SlotObject *sl = (SlotObject *)o;

	if (sl->mv)
		mv_release(sl->mv);
	Py_CLEAR(sl->mv);
	return 0;
}

/* Dropped unsent: the slot goes back (no buffer of it can be alive: each holds us). */
static void slot_dealloc(PyObject *o)
{
	SlotObject *sl = (SlotObject *)o;

	PyObject_GC_UnTrack(o);
	slot_clear(o);
	if (sl->cs) {
		tern_call_abort(sl->cs);
		slot_finish(sl);
	}
	Py_XDECREF(sl->so);
	PyObject_GC_Del(o);
}

static PyMethodDef slot_methods[] = {
	{"commit", (PyCFunction)(void (*)(void))slot_commit, METH_VARARGS | METH_KEYWORDS,
	 "commit(method_id, length, timeout_ms=0, decode=None) -> Future (None: one-way)"},
	{"abort", slot_abort, METH_NOARGS, "give the slot back unsent"},
	{NULL},
};

static PyGetSetDef slot_getset[] = {
	{"buffer", slot_get_buffer, NULL, "the slot's room: a writable memoryview", NULL},
	{"cap", slot_get_cap, NULL, "the room, in bytes", NULL},
	{"committed", slot_get_committed, NULL, "True once committed or aborted", NULL},
	{NULL},
};

static PyTypeObject SlotType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.CallSlot",
	.tp_basicsize = sizeof(SlotObject),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "A send slot to build a request in: buffer, commit(), abort().",
	.tp_base = &ViewType,
	.tp_dealloc = slot_dealloc,
	.tp_traverse = slot_traverse,
	.tp_clear = slot_clear,
	.tp_methods = slot_methods,
	.tp_getset = slot_getset,
};

/* ---- replies that wait for their views -------------------------------------- */

static void pending_finish(pending *p)
{
	if (p->release)
		tern_req_release(p->req);
	else if (p->err)
		tern_reply_error(p->req, p->err, p->msg[0] ? p->msg : NULL);
	else
		tern_reply_commit(p->req, p->len);
}

static void pending_free(pending *p)
{
	if (p->in) {
		p->in->hold = NULL;
		p->in->released = true;
		p->in->buf = NULL;
		Py_DECREF(p->in);
	}
	if (p->out) {
		p->out->hold = NULL;
		p->out->released = true;
		p->out->buf = NULL;
		Py_DECREF(p->out);
	}
	Py_DECREF(p->c);
	PyMem_Free(p);
}

static void pending_try_finish(pending *p)
{
	CtxObject *c = p->c;

	if ((p->in && p->in->exports) || (p->out && p->out->exports))
		return;
	if (c->owner && c->owner != PyThread_get_thread_ident()) {
		/* tern is the loop's thread's: hand the request over to it */
		if (!p->queued) {
			p->queued = true;
			p->next = c->due;
			c->due = p;
			uv_async_send(&c->async);
		}
		return;
	}
	c->held--;
	pending_finish(p);
	pending_free(p);
}

static void escaped(CtxObject *c, uint32_t id);

/*
 * Answer @req once the handler is done with @in and @out (either may be
 * NULL): now, or when the last buffer exported from them is released.  A
 * one-way message or batch item (@release) has nothing to answer: while
 * exported, its slot is held (tern_req_hold()) and released after.
 */
static void reply_when_free(CtxObject *c, tern_req *req, bool release, ViewObject *in,
			    ViewObject *out, int err, size_t len, const char *msg)
{
	pending *p;

	if (view_idle(in) && view_idle(out)) {
		if (in)
			in->released = true, in->buf = NULL;
		if (out)
			out->released = true, out->buf = NULL;
		if (release)
			return; /* tern takes the slot back when the handler returns */
		if (err)
			tern_reply_error(req, err, msg && *msg ? msg : NULL);
		else
			tern_reply_commit(req, len);
		return;
	}
	if (release && !tern_req_hold(req)) {
		if (in)
			in->released = true, in->buf = NULL;
		escaped(c, tern_req_method(req));
		return;
	}
	p = PyMem_Calloc(1, sizeof(*p));
	if (!p) {
		/* Cannot wait: nothing safe to do but stop this context. */
		if (release)
			tern_req_release(req);
		ctx_fail(c, PyExc_MemoryError, "tern: no memory to hold a reply");
		return;
	}
	p->c = c;
	Py_INCREF(c);
	p->req = req;
	p->release = release;
	p->err = err;
	p->len = len;
	snprintf(p->msg, sizeof(p->msg), "%s", msg ? msg : "");
	if (in) {
		p->in = in;
		Py_INCREF(in);
		in->hold = p;
	}
	if (out) {
		p->out = out;
		Py_INCREF(out);
		out->hold = p;
	}
	c->held++;
	if (PyErr_WarnEx(PyExc_ResourceWarning,
			 release ? "tern: a handler kept a view of its slot; the slot is held "
				   "until it is released"
				 : "tern: a handler kept a view of its slot; the reply is sent "
				   "when it is released",
			 1))
		PyErr_Clear();
}

/* ---- server handlers -------------------------------------------------------- */

/* Get @r's bytes as a reply: None is empty; bytes-like objects as they are. */
static int reply_bytes(PyObject *r, Py_buffer *b)
{
	if (r == Py_None) {
		memset(b, 0, sizeof(*b));
		return 0;
	}
	return PyObject_GetBuffer(r, b, PyBUF_SIMPLE);
}

/*
 * A raw handler's return @r as its reply's bytes in @b (release them with
 * reply_copy()): 0, or -EINVAL with @msg.
 */
static int reply_buffer(PyObject *r, Py_buffer *b, char *msg, size_t msg_cap)
{
	if (!reply_bytes(r, b))
		return 0;
	PyErr_Clear();
	snprintf(msg, msg_cap, "handler returned %s, not bytes", Py_TYPE(r)->tp_name);
	return -EINVAL;
}

/*
 * Copy @b (from reply_buffer()) into the reply slot @out of @cap bytes and
 * release it.  Return: its length, or -EMSGSIZE with @msg.
 */
static ssize_t reply_copy(Py_buffer *b, void *out, size_t cap, char *msg, size_t msg_cap)
{
	ssize_t rc = b->len;

	if ((size_t)b->len > cap) {
		rc = -EMSGSIZE;
		snprintf(msg, msg_cap, "reply of %zd bytes; the slot holds %zu", b->len, cap);
	} else if (b->len) {
		memcpy(out, b->buf, (size_t)b->len);
	}
	if (b->obj)
		PyBuffer_Release(b);
	return rc;
}

/*
 * What an inplace handler's return @r says: the reply's length (None is 0)
 * in @len and 0, or the call's error (a negative errno it returned, or
 * what is wrong with @r) with @msg.
 */
static int inplace_length(PyObject *r, size_t cap, size_t *len, char *msg, size_t msg_cap)
{
	Py_ssize_t n;

	*len = 0;
	if (r == Py_None)
		return 0;
	n = PyNumber_AsSsize_t(r, PyExc_OverflowError);
	if (n == -1 && PyErr_Occurred()) {
		PyErr_Clear();
		snprintf(msg, msg_cap, "inplace handler returned %s, not a length",
			 Py_TYPE(r)->tp_name);
		return -EINVAL;
	}
	if (n < 0 && n > -100000)
		return (int)n; /* a negative errno fails the call, as in C */
	if (n < 0 || (size_t)n > cap) {
		snprintf(msg, msg_cap, "inplace handler returned length %zd; the slot holds %zu", n,
			 cap);
		return -EMSGSIZE;
	}
	*len = (size_t)n;
	return 0;
}

/*
 * Every call kind is registered with tern as deferred: the request stays
 * ours until we answer it, so an answer can wait for the views.
 */
static int on_request(tern_req *req, const void *in, size_t in_len, void *user)
{
	struct reg *g = user;
	CtxObject *c = g->c;
	PyThreadState *t = ctx_enter(c);
	ViewObject *iv = NULL, *ov = NULL;
	PyObject *imv = NULL, *omv = NULL, *r = NULL;
	char msg[208] = "";
	int err = 0;
	size_t len = 0;
	void *out;
	size_t cap;

	iv = view_new(in, in_len, 1);
	imv = iv ? view_memory(iv) : NULL;
	if (!imv) {
		err = exc_to_status(msg, sizeof(msg));
		goto answer;
	}
	if (g->kind == K_DEFERRED) {
		RequestObject *q = PyObject_GC_New(RequestObject, &RequestType);

		if (!q) {
			err = exc_to_status(msg, sizeof(msg));
			goto answer;
		}
		q->c = c;
		Py_INCREF(c);
		q->req = req;
		q->in = iv;
		q->in_mv = imv;
		q->out = NULL;
		q->out_mv = NULL;
		Py_INCREF(iv);
		Py_INCREF(imv);
		q->next = c->reqs;
		q->pprev = &c->reqs;
		if (c->reqs)
			c->reqs->pprev = &q->next;
		c->reqs = q;
		PyObject_GC_Track(q);
		r = PyObject_CallFunctionObjArgs(g->fn, imv, (PyObject *)q, NULL);
		if (!r && q->req) {
			/* failed before answering: answer with the error now */
			tern_req *qr = q->req;

			err = exc_to_status(msg, sizeof(msg));
			q->req = NULL;
			mv_release(q->in_mv);
			mv_release(q->out_mv);
			reply_when_free(c, qr, false, q->in, q->out, err, 0, msg);
		} else if (!r) {
			PyErr_Clear();
		}
		Py_XDECREF(r);
		Py_DECREF(q);
		Py_DECREF(imv);
		Py_DECREF(iv);
		ctx_leave(c, t);
		return 0;
	}
	if (g->kind == K_INPLACE) {
		int rc = tern_reply_acquire(req, &out, &cap);

		if (rc) {
			/* the session is gone; the request is finished */
			mv_release(imv);
			iv->released = true;
			goto done;
		}
		ov = view_new(out, cap, 0);
		omv = ov ? view_memory(ov) : NULL;
		if (!omv) {
			err = exc_to_status(msg, sizeof(msg));
			goto answer;
		}
		r = PyObject_CallFunctionObjArgs(g->fn, imv, omv, NULL);
		if (!r)
			err = exc_to_status(msg, sizeof(msg));
		else
			err = inplace_length(r, cap, &len, msg, sizeof(msg));
		goto answer;
	}
	/* K_RAW: the returned bytes are copied once into the reply slot */
	r = PyObject_CallFunctionObjArgs(g->fn, imv, NULL);
	if (!r) {
		err = exc_to_status(msg, sizeof(msg));
	} else {
		Py_buffer b;

		err = reply_buffer(r, &b, msg, sizeof(msg));
		if (!err) {
			ssize_t n;

			if (tern_reply_acquire(req, &out, &cap)) {
				if (b.obj)
					PyBuffer_Release(&b);
				mv_release(imv);
				iv->released = true;
				goto done; /* the session is gone */
			}
			n = reply_copy(&b, out, cap, msg, sizeof(msg));
			if (n < 0)
				err = (int)n;
			else
				len = (size_t)n;
		}
	}
answer:
	mv_release(imv);
	mv_release(omv);
	if (!iv) {
		tern_reply_error(req, err ? err : -ENOMEM, msg);
		goto done;
	}
	reply_when_free(c, req, false, iv, ov, err, len, msg);
done:
	Py_XDECREF(r);
	Py_XDECREF(imv);
	Py_XDECREF(omv);
	Py_XDECREF(iv);
	Py_XDECREF(ov);
	ctx_leave(c, t);
	return 0;
}

static void escaped(CtxObject *c, uint32_t id)
{
	char m[200];

	snprintf(m, sizeof(m),
		 "tern: the handler of one-way or batch method 0x%08x kept a view of a "
		 "message past its return and its slot cannot be held; copy what you keep",
		 id);
	ctx_fail(c, PyExc_BufferError, m);
}

static void on_oneway(tern_req *req, const void *in, size_t in_len, void *user)
{
	struct reg *g = user;
	CtxObject *c = g->c;
	PyThreadState *t = ctx_enter(c);
	ViewObject *iv = view_new(in, in_len, 1);
	PyObject *imv = iv ? view_memory(iv) : NULL;
	PyObject *r = NULL;
	char msg[208];

	if (imv)
		r = PyObject_CallFunctionObjArgs(g->fn, imv, NULL);
	if (!r) {
		exc_to_status(msg, sizeof(msg));
		tern_req_set_error(req, msg);
	}
	Py_XDECREF(r);
	mv_release(imv);
	Py_XDECREF(imv);
	if (iv) {
		/* a buffer kept past the return holds the slot */
		reply_when_free(c, req, true, iv, NULL, 0, 0, NULL);
		Py_DECREF(iv);
	}
	ctx_leave(c, t);
}

static void batch_invalidate(BatchObject *b)
{
	Py_ssize_t i, n;

	if (b->views) {
		n = PyList_GET_SIZE(b->views);
		for (i = 0; i < n; i++)
			mv_release(PyList_GET_ITEM(b->views, i));
		/* a buffer kept past the return holds its item's slot (a call's
		 * reply waits for it) */
		for (i = 0; i < n; i++) {
			ViewObject *v = (ViewObject *)PyList_GET_ITEM(b->svs, i);

			reply_when_free(b->c, v->req, true, v, NULL, 0, 0, NULL);
		}
		Py_CLEAR(b->views);
		Py_CLEAR(b->svs);
	}
	b->items = NULL;
}

static void on_batch(struct tern_batch_item *items, size_t n, void *user)
{
	struct reg *g = user;
	CtxObject *c = g->c;
	PyThreadState *t = ctx_enter(c);
	BatchObject *b = PyObject_New(BatchObject, &BatchType);
	PyObject *r = NULL;
	char msg[208];
	int err = 0;

	if (!b) {
		err = exc_to_status(msg, sizeof(msg));
		goto fail_all;
	}
	b->c = c;
	Py_INCREF(c);
	b->items = items;
	b->n = n;
	b->oneway = g->kind == K_ONEWAY_BATCH;
	b->views = NULL;
	b->svs = NULL;
	r = PyObject_CallFunctionObjArgs(g->fn, (PyObject *)b, NULL);
	if (!r) {
		err = exc_to_status(msg, sizeof(msg));
	} else if (!b->oneway && r != Py_None) {
		/* a sequence of n replies: bytes-like, None or an exception */
		PyObject *seq = PySequence_Fast(r, "a batch handler returns a sequence of replies");

		if (!seq || PySequence_Fast_GET_SIZE(seq) != (Py_ssize_t)n) {
			if (seq)
				PyErr_Format(
					PyExc_ValueError,
					"a batch handler returned %zd replies for %zu requests",
					PySequence_Fast_GET_SIZE(seq), n);
			err = exc_to_status(msg, sizeof(msg));
		} else {
			for (size_t i = 0; i < n; i++) {
				PyObject *x = PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i);
				Py_buffer buf;

				if (PyExceptionInstance_Check(x)) {
					PyErr_SetObject((PyObject *)Py_TYPE(x), x);
					items[i].status = exc_to_status(msg, sizeof(msg));
					tern_req_set_error(items[i].req, msg);
				} else if (reply_bytes(x, &buf)) {
					PyErr_Clear();
					items[i].status = -EINVAL;
					tern_req_set_error(items[i].req,
							   "batch reply is not bytes-like");
				} else if ((size_t)buf.len > items[i].out_cap) {
					items[i].status = -EMSGSIZE;
					tern_req_set_error(items[i].req, "reply over the slot");
					PyBuffer_Release(&buf);
				} else {
					if (buf.len)
						memcpy(items[i].out, buf.buf, (size_t)buf.len);
					items[i].status = buf.len;
					if (buf.obj)
						PyBuffer_Release(&buf);
				}
			}
		}
		Py_XDECREF(seq);
	}
	Py_XDECREF(r);
	batch_invalidate(b);
	Py_DECREF(b);
fail_all:
	if (err) {
		for (size_t i = 0; i < n; i++) {
			items[i].status = err;
			tern_req_set_error(items[i].req, msg);
		}
	}
	ctx_leave(c, t);
}

/* ---- Batch ------------------------------------------------------------------- */

static int batch_live(BatchObject *b)
{
	if (!b->items) {
		PyErr_SetString(PyExc_ValueError,
				"tern: this batch is over (valid only inside its handler)");
		return -1;
	}
	return 0;
}

static Py_ssize_t batch_length(PyObject *o)
{
	BatchObject *b = (BatchObject *)o;

	if (batch_live(b))
		return -1;
	return (Py_ssize_t)b->n;
}

static PyObject *batch_item(PyObject *o, Py_ssize_t i)
{
	BatchObject *b = (BatchObject *)o;
	ViewObject *v;
	PyObject *mv;

	if (batch_live(b))
		return NULL;
	if (i < 0 || (size_t)i >= b->n) {
		PyErr_SetString(PyExc_IndexError, "batch index out of range");
		return NULL;
	}
	if (!b->views) {
		b->views = PyList_New(0);
		b->svs = PyList_New(0);
		if (!b->views || !b->svs)
			return NULL;
	}
	v = view_new(b->items[i].in, b->items[i].in_len, 1);
	if (!v)
		return NULL;
	v->req = b->items[i].req;
	mv = view_memory(v);
	if (!mv || PyList_Append(b->views, mv) || PyList_Append(b->svs, (PyObject *)v)) {
		Py_XDECREF(mv);
		Py_DECREF(v);
		return NULL;
	}
	Py_DECREF(v);
	return mv;
}

/*
 * gather(dst) - copy item i into row i of the writable buffer @dst: the one
 * copy out of the receive slots, with no Python per item.  Every item must
 * be exactly len(dst) // rows bytes, rows defaulting to len(batch).
 */
static PyObject *batch_gather(PyObject *o, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"dst", "item_size", NULL};
	BatchObject *b = (BatchObject *)o;
	Py_ssize_t item = -1;
	Py_buffer d;

	if (batch_live(b))
		return NULL;
	if (!PyArg_ParseTupleAndKeywords(args, kw, "w*|n:gather", kwlist, &d, &item))
		return NULL;
	if (item < 0)
		item = b->n ? (Py_ssize_t)b->items[0].in_len : 0;
	if (item * (Py_ssize_t)b->n > d.len) {
		PyErr_Format(PyExc_ValueError,
			     "gather: %zu items of %zd bytes do not fit %zd bytes", b->n, item,
			     d.len);
		PyBuffer_Release(&d);
		return NULL;
	}
	for (size_t i = 0; i < b->n; i++) {
		if ((Py_ssize_t)b->items[i].in_len != item) {
			PyErr_Format(PyExc_ValueError, "gather: item %zu is %zu bytes, not %zd", i,
				     b->items[i].in_len, item);
			PyBuffer_Release(&d);
			return NULL;
		}
		memcpy((char *)d.buf + (size_t)item * i, b->items[i].in, (size_t)item);
	}
	PyBuffer_Release(&d);
	return PyLong_FromSize_t(b->n);
}

static PyObject *batch_lengths(PyObject *o, PyObject *unused)
{
	BatchObject *b = (BatchObject *)o;
	PyObject *l;

	(void)unused;
	if (batch_live(b))
		return NULL;
	l = PyList_New((Py_ssize_t)b->n);
	for (size_t i = 0; l && i < b->n; i++)
		PyList_SET_ITEM(l, (Py_ssize_t)i, PyLong_FromSize_t(b->items[i].in_len));
	return l;
}

static void batch_dealloc(PyObject *o)
{
	BatchObject *b = (BatchObject *)o;

	Py_XDECREF(b->views);
	Py_XDECREF(b->svs);
	Py_XDECREF(b->c);
	PyObject_Free(o);
}

static PyMethodDef batch_methods[] = {
	{"gather", (PyCFunction)(void (*)(void))batch_gather, METH_VARARGS | METH_KEYWORDS,
	 "gather(dst, item_size=None) -> n: copy item i into row i of dst"},
	{"lengths", batch_lengths, METH_NOARGS, "the length of every item"},
	{NULL},
};

static PySequenceMethods batch_as_sequence = {
	.sq_length = batch_length,
	.sq_item = batch_item,
};

static PyTypeObject BatchType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.Batch",
	.tp_basicsize = sizeof(BatchObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "The requests of one batch, valid inside the handler only.",
	.tp_dealloc = batch_dealloc,
	.tp_as_sequence = &batch_as_sequence,
	.tp_methods = batch_methods,
};

/* ---- Request (deferred) ----------------------------------------------------- */

static int req_live(RequestObject *q)
{
	if (ctx_owned(q->c))
		return -1;
	if (!q->req) {
		PyErr_SetString(PyExc_ValueError, "tern: this request was already answered");
		return -1;
	}
	return 0;
}

static void req_unlink(RequestObject *q)
{
	if (q->pprev) {
		*q->pprev = q->next;
		if (q->next)
			q->next->pprev = q->pprev;
		q->pprev = NULL;
		q->next = NULL;
	}
}

/* Answer: refused while a buffer exported from the request's views lives. */
static PyObject *req_answer(RequestObject *q, int err, size_t len, const char *msg)
{
	tern_req *req = q->req;

	mv_release(q->in_mv);
	mv_release(q->out_mv);
	if (!view_idle(q->in) || !view_idle(q->out)) {
		PyErr_SetString(PyExc_BufferError,
				"tern: release the views of this request (numpy arrays, "
				"memoryviews) before answering it");
		return NULL;
	}
	q->req = NULL;
	req_unlink(q);
	q->in->released = true;
	q->in->buf = NULL;
	if (q->out)
		q->out->released = true, q->out->buf = NULL;
	if (err)
		tern_reply_error(req, err, msg && *msg ? msg : NULL);
	else if (tern_reply_commit(req, len) == -EMSGSIZE)
		return raise_code(-EMSGSIZE, "the reply is larger than the slot");
	Py_RETURN_NONE;
}

static PyObject *req_reply(PyObject *o, PyObject *arg)
{
	RequestObject *q = (RequestObject *)o;
	Py_buffer b;
	void *out;
	size_t cap;
	int rc;

	if (req_live(q) || reply_bytes(arg, &b))
		return NULL;
	if (q->out) {
		if (b.obj)
			PyBuffer_Release(&b);
		PyErr_SetString(PyExc_ValueError, "reply(): the reply slot was acquired; commit()");
		return NULL;
	}
	rc = tern_reply_acquire(q->req, &out, &cap);
	if (rc) {
		if (b.obj)
			PyBuffer_Release(&b);
		if (rc == -ECONNRESET) {
			q->req = NULL; /* finished by tern */
			req_unlink(q);
			mv_release(q->in_mv);
			q->in->released = true;
			q->in->buf = NULL;
		}
		return raise_code(rc, "the caller went away");
	}
	if ((size_t)b.len > cap) {
		Py_ssize_t n = b.len;

		if (b.obj)
			PyBuffer_Release(&b);
		return raise_code(-EMSGSIZE, n > 0 ? "the reply is larger than the slot" : "");
	}
	if (b.len)
		memcpy(out, b.buf, (size_t)b.len);
	if (b.obj)
		PyBuffer_Release(&b);
	return req_answer(q, 0, (size_t)b.len, NULL);
}

static PyObject *req_acquire(PyObject *o, PyObject *unused)
{
	RequestObject *q = (RequestObject *)o;
	void *out;
	size_t cap;
	int rc;

	(void)unused;
	if (req_live(q))
		return NULL;
	if (!q->out) {
		rc = tern_reply_acquire(q->req, &out, &cap);
		if (rc) {
			if (rc == -ECONNRESET) {
				q->req = NULL;
				req_unlink(q);
				mv_release(q->in_mv);
				q->in->released = true;
				q->in->buf = NULL;
			}
			return raise_code(rc, "the caller went away");
		}
		q->out = view_new(out, cap, 0);
		if (!q->out)
			return NULL;
		q->out_mv = view_memory(q->out);
		if (!q->out_mv)
			return NULL;
	}
	Py_INCREF(q->out_mv);
	return q->out_mv;
}

static PyObject *req_commit(PyObject *o, PyObject *arg)
{
	RequestObject *q = (RequestObject *)o;
	Py_ssize_t n;

	if (req_live(q))
		return NULL;
	if (!q->out) {
		PyErr_SetString(PyExc_ValueError, "commit(): acquire() the reply slot first");
		return NULL;
	}
	n = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
	if (n == -1 && PyErr_Occurred())
		return NULL;
	if (n < 0 || n > q->out->len)
		return raise_code(-EMSGSIZE, "commit(): the length is outside the slot");
	return req_answer(q, 0, (size_t)n, NULL);
}

static PyObject *req_error(PyObject *o, PyObject *args)
{
	RequestObject *q = (RequestObject *)o;
	int code;
	const char *msg = NULL;

	if (req_live(q) || !PyArg_ParseTuple(args, "i|z:error", &code, &msg))
		return NULL;
	if (code > 0)
		code = -code;
	if (code == 0) {
		PyErr_SetString(PyExc_ValueError, "error(): the code must not be 0");
		return NULL;
	}
	return req_answer(q, code, 0, msg);
}

static PyObject *req_get_answered(PyObject *o, void *unused)
{
	(void)unused;
	return PyBool_FromLong(((RequestObject *)o)->req == NULL);
}

static PyObject *req_get_data(PyObject *o, void *unused)
{
	RequestObject *q = (RequestObject *)o;

	(void)unused;
	Py_INCREF(q->in_mv);
	return q->in_mv;
}

static int req_traverse(PyObject *o, visitproc visit, void *arg)
{
	RequestObject *q = (RequestObject *)o;

	Py_VISIT(q->in_mv);
	Py_VISIT(q->out_mv);
	return 0;
}

/* Dropped unanswered: answer with an error, so the caller is not left waiting. */
static void req_dealloc(PyObject *o)
{
	RequestObject *q = (RequestObject *)o;

	PyObject_GC_UnTrack(o);
	if (q->req) {
		mv_release(q->in_mv);
		mv_release(q->out_mv);
		req_unlink(q);
		reply_when_free(q->c, q->req, false, q->in, q->out, -ECANCELED, 0,
				"the server dropped the request without answering");
		q->req = NULL;
	}
	Py_XDECREF(q->in_mv);
	Py_XDECREF(q->out_mv);
	Py_XDECREF(q->in);
	Py_XDECREF(q->out);
	Py_XDECREF(q->c);
	PyObject_GC_Del(o);
}

static PyMethodDef req_methods[] = {
	{"reply", req_reply, METH_O, "reply(data): answer with these bytes (copied once)"},
	{"acquire", req_acquire, METH_NOARGS,
	 "acquire() -> memoryview: the reply slot, to write the reply in place"},
	{"commit", req_commit, METH_O, "commit(n): send the first n bytes of the reply slot"},
	{"error", req_error, METH_VARARGS, "error(code, message=None): fail the call"},
	{NULL},
};

static PyGetSetDef req_getset[] = {
	{"answered", req_get_answered, NULL, "True once answered", NULL},
	{"data", req_get_data, NULL, "the request's bytes (read-only memoryview)", NULL},
	{NULL},
};

static PyTypeObject RequestType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.Request",
	.tp_basicsize = sizeof(RequestObject),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "A deferred request: answer it with reply(), acquire()/commit() or error().",
	.tp_dealloc = req_dealloc,
	.tp_traverse = req_traverse,
	.tp_methods = req_methods,
	.tp_getset = req_getset,
};

/* ---- running the loop --------------------------------------------------------- */

static void wake_cb(uv_timer_t *t)
{
	(void)t;
}

/* Finish what other threads handed over, on the loop's thread. */
static void async_cb(uv_async_t *h)
{
	CtxObject *c = h->data;
	PyThreadState *t = ctx_enter(c);
	pending *p;

	/* held replies and slots whose views went on another thread */
	while ((p = c->due)) {
		c->due = p->next;
		p->queued = false;
		pending_try_finish(p);
	}
	/* registrations of Memory objects closed on another thread */
	while (c->unbinds) {
		struct membind *b = c->unbinds;

		c->unbinds = b->next_c;
		bind_free(b);
	}
	ctx_leave(c, t);
}

static bool fut_all_done(PyObject **futs, Py_ssize_t n)
{
	for (Py_ssize_t i = 0; i < n; i++)
		if (!((FutureObject *)futs[i])->done)
			return false;
	return true;
}

/*
 * Run @c's loop until every future in @futs is done (n > 0), stop() (n == 0)
 * or @timeout_ns passes (UINT64_MAX: none).  The GIL is released in slices of
 * at most SLICE_NS; signals are checked between them.
 *
 * Return: 1 all done, 0 timed out or stopped, -1 exception set.
 */
static int ctx_run_until(CtxObject *c, PyObject **futs, Py_ssize_t n, uint64_t timeout_ns)
{
	uint64_t end = timeout_ns == UINT64_MAX ? UINT64_MAX : now_ns() + timeout_ns;

	if (c->closed) {
		PyErr_SetString(PyExc_ValueError, "tern: the context is closed");
		return -1;
	}
	if (c->depth) {
		PyErr_SetString(PyExc_RuntimeError,
				"tern: cannot wait inside a handler of the same context");
		return -1;
	}
	if (slots_block(c))
		return -1;
	c->owner = PyThread_get_thread_ident();
	c->stop = 0;
	for (;;) {
		uint64_t t = now_ns(), slice_end;

		if (n && fut_all_done(futs, n))
			return 1;
		if (c->fatal) {
			PyObject *f = c->fatal;

			c->fatal = NULL;
			PyErr_SetString(PyTuple_GET_ITEM(f, 0),
					PyUnicode_AsUTF8(PyTuple_GET_ITEM(f, 1)));
			Py_DECREF(f);
			return -1;
		}
		if (c->stop || t >= end)
			return n && fut_all_done(futs, n) ? 1 : 0;
		slice_end = end - t < SLICE_NS ? end : t + SLICE_NS;
		c->ts = PyEval_SaveThread();
		if (c->progress == TERN_PROGRESS_BUSY) {
			do {
				tern_ctx_run(c->ctx, TERN_RUN_NOWAIT);
			} while (!c->stop && !(n && fut_all_done(futs, n)) && now_ns() < slice_end);
		} else {
			uint64_t ms = (slice_end - t + 999999) / 1000000;

			uv_timer_start(&c->wake, wake_cb, ms ? ms : 1, 0);
			tern_ctx_run(c->ctx, TERN_RUN_ONCE);
			uv_timer_stop(&c->wake);
		}
		PyEval_RestoreThread(c->ts);
		c->ts = NULL;
		if (PyErr_CheckSignals())
			return -1;
	}
}

static uint64_t timeout_arg(PyObject *t, int *bad)
{
	double s;

	*bad = 0;
	if (!t || t == Py_None)
		return UINT64_MAX;
	s = PyFloat_AsDouble(t);
	if (s == -1.0 && PyErr_Occurred()) {
		*bad = 1;
		return 0;
	}
	if (s < 0)
		s = 0;
	if (s > 1e9)
		return UINT64_MAX;
	return (uint64_t)(s * 1e9);
}

/* ---- Context ------------------------------------------------------------------- */

static PyObject *ctx_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"progress", NULL};
	struct tern_ctx_opts o = {.size = sizeof(o)};
	int progress = TERN_PROGRESS_BUSY, rc;
	CtxObject *c;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "|i:Context", kwlist, &progress))
		return NULL;
	if (progress < TERN_PROGRESS_BUSY || progress > TERN_PROGRESS_ADAPTIVE) {
		PyErr_SetString(PyExc_ValueError, "progress must be 0 (busy), 1 (event) or 2");
		return NULL;
	}
	c = (CtxObject *)type->tp_alloc(type, 0);
	if (!c)
		return NULL;
	c->regs = PyList_New(0);
	c->sessions = PyList_New(0);
	if (!c->regs || !c->sessions) {
		Py_DECREF(c);
		return NULL;
	}
	c->progress = progress;
	if (uv_loop_init(&c->loop)) {
		c->closed = true;
		Py_DECREF(c);
		return raise_code(-ENOMEM, "uv_loop_init failed");
	}
	uv_timer_init(&c->loop, &c->wake);
	uv_async_init(&c->loop, &c->async, async_cb);
	c->async.data = c;
	o.loop = &c->loop;
	o.progress = progress;
	o.data = c;
	rc = tern_ctx_create(&o, &c->ctx);
	if (rc) {
		uv_close((uv_handle_t *)&c->wake, NULL);
		uv_close((uv_handle_t *)&c->async, NULL);
		uv_run(&c->loop, UV_RUN_DEFAULT);
		uv_loop_close(&c->loop);
		c->closed = true;
		Py_DECREF(c);
		return raise_code(rc, "tern_ctx_create failed");
	}
	return (PyObject *)c;
}

static int ctx_check(CtxObject *c)
{
	if (c->closed) {
		PyErr_SetString(PyExc_ValueError, "tern: the context is closed");
		return -1;
	}
	return 0;
}

static void sessions_forget(CtxObject *c);

/* Let go of the handlers of @regs (capsules of struct reg) once no thread
 * can call them; the records stay until their list goes. */
static void regs_drop(PyObject *regs)
{
	for (Py_ssize_t i = 0; regs && i < PyList_GET_SIZE(regs); i++) {
		struct reg *g = PyCapsule_GetPointer(PyList_GET_ITEM(regs, i), NULL);

		Py_CLEAR(g->fn);
	}
}

/* Close everything; refused while views of held requests are exported. */
static int ctx_close_impl(CtxObject *c)
{
	RequestObject *q;
	PyThreadState *save;
	struct membind *b;

	if (c->closed)
		return 0;
	if (c->depth) {
		PyErr_SetString(PyExc_RuntimeError,
				"tern: cannot close a context from its handler");
		return -1;
	}
	if (c->held) {
		PyGC_Collect();
		if (c->held) {
			PyErr_Format(PyExc_BufferError,
				     "tern: %ld replies wait for views of their requests to be "
				     "released; release them before closing",
				     c->held);
			return -1;
		}
	}
	/* deferred requests nobody answered: answer them, views permitting */
	for (q = c->reqs; q; q = q->next) {
		mv_release(q->in_mv);
		mv_release(q->out_mv);
		if (!view_idle(q->in) || !view_idle(q->out)) {
			PyErr_SetString(PyExc_BufferError,
					"tern: views of an unanswered request are still exported");
			return -1;
		}
	}
	while ((q = c->reqs)) {
		tern_req *req = q->req;

		req_unlink(q);
		q->req = NULL;
		mv_release(q->in_mv);
		mv_release(q->out_mv);
		q->in->released = true, q->in->buf = NULL;
		if (q->out)
			q->out->released = true, q->out->buf = NULL;
		tern_reply_error(req, -ESHUTDOWN, "the server is closing");
	}
	if (slots_abort_all(c, NULL))
		return -1;
	sessions_forget(c);
	c->closed = true;
	Py_CLEAR(c->on_refused); /* nobody to tell while everything closes */
	/* Memory objects registered here forget this context; the
	 * registrations go with it (tern_ctx_destroy()), then the pins */
	for (b = c->binds; b; b = b->next_c) {
		for (struct membind **pp = &b->m->binds; *pp; pp = &(*pp)->next_m) {
			if (*pp == b) {
				*pp = b->next_m;
				break;
			}
		}
		b->m = NULL;
	}
	save = PyEval_SaveThread();
	c->ts = save;
	tern_ctx_destroy(c->ctx);
	c->ctx = NULL;
	uv_close((uv_handle_t *)&c->wake, NULL);
	uv_close((uv_handle_t *)&c->async, NULL);
	uv_run(&c->loop, UV_RUN_DEFAULT);
	uv_loop_close(&c->loop);
	PyEval_RestoreThread(c->ts);
	c->ts = NULL;
	while ((b = c->binds) || (b = c->unbinds)) {
		if (b == c->binds)
			c->binds = b->next_c;
		else
			c->unbinds = b->next_c;
		bind_free(b);
	}
	regs_drop(c->regs);
	return 0;
}

static PyObject *ctx_close(PyObject *o, PyObject *unused)
{
	(void)unused;
	if (ctx_close_impl((CtxObject *)o))
		return NULL;
	Py_RETURN_NONE;
}

static int ctx_traverse(PyObject *o, visitproc visit, void *arg)
{
	CtxObject *c = (CtxObject *)o;

	Py_VISIT(c->regs);
	Py_VISIT(c->on_refused);
	return 0;
}

static int ctx_clear(PyObject *o)
{
	CtxObject *c = (CtxObject *)o;

	if (!c->closed && !c->depth) {
		if (ctx_close_impl(c))
			PyErr_Clear();
	}
	Py_CLEAR(c->on_refused);
	return 0;
}

static void ctx_dealloc(PyObject *o)
{
	CtxObject *c = (CtxObject *)o;

	PyObject_GC_UnTrack(o);
	if (!c->closed) {
		if (ctx_close_impl(c))
			PyErr_WriteUnraisable(o);
	}
	Py_XDECREF(c->regs);
	Py_XDECREF(c->sessions);
	Py_XDECREF(c->fatal);
	Py_XDECREF(c->on_refused);
	Py_TYPE(o)->tp_free(o);
}

static void reg_free(PyObject *cap)
{
	struct reg *g = PyCapsule_GetPointer(cap, NULL);

	Py_XDECREF(g->fn);
	PyMem_Free(g);
}

/* A registration record for @fn in @out, owned by the capsule returned
 * (NULL: an error is set). */
static PyObject *reg_new(uint32_t id, enum kind kind, PyObject *fn, struct reg **out)
{
	struct reg *g = PyMem_Calloc(1, sizeof(*g));
	PyObject *cap;

	if (!g)
		return PyErr_NoMemory();
	g->id = id;
	g->kind = kind;
	g->fn = fn;
	Py_XINCREF(fn);
	cap = PyCapsule_New(g, NULL, reg_free);
	if (!cap) {
		Py_XDECREF(fn);
		PyMem_Free(g);
		return NULL;
	}
	*out = g;
	return cap;
}

static PyObject *ctx_register(PyObject *o, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"method_id", "kind", "fn", "batch_max", "wait_us", NULL};
	CtxObject *c = (CtxObject *)o;
	unsigned long id;
	int kind, rc;
	unsigned int bmax = 0, wait_us = 0;
	PyObject *fn, *cap;
	struct reg *g;

	if (ctx_check(c) || !PyArg_ParseTupleAndKeywords(args, kw, "kiO|II:register", kwlist, &id,
							 &kind, &fn, &bmax, &wait_us))
		return NULL;
	if (!PyCallable_Check(fn)) {
		PyErr_SetString(PyExc_TypeError, "register: the handler is not callable");
		return NULL;
	}
	if (id == 0 || id > 0xffffffffu || kind < K_RAW || kind > K_ONEWAY_BATCH) {
		PyErr_SetString(PyExc_ValueError, "register: bad method id or kind");
		return NULL;
	}
	cap = reg_new((uint32_t)id, (enum kind)kind, fn, &g);
	if (!cap)
		return NULL;
	g->c = c;
	switch (g->kind) {
	case K_ONEWAY:
		rc = tern_register_oneway(c->ctx, g->id, on_oneway, g);
		break;
	case K_BATCH:
	case K_ONEWAY_BATCH: {
		struct tern_batch_opts bo = {.size = sizeof(bo),
					     .max = bmax,
					     .wait_us = wait_us,
					     .oneway = g->kind == K_ONEWAY_BATCH};

		rc = tern_register_batch(c->ctx, g->id, &bo, on_batch, g);
		break;
	}
	default:
		rc = tern_register_deferred(c->ctx, g->id, on_request, g);
	}
	if (rc || PyList_Append(c->regs, cap)) {
		Py_DECREF(cap);
		return rc ? raise_ctx(c, rc) : NULL;
	}
	Py_DECREF(cap);
	Py_RETURN_NONE;
}

static PyObject *ctx_service_register(PyObject *o, PyObject *args)
{
	CtxObject *c = (CtxObject *)o;
	struct tern_service_ref ref = {0};
	unsigned long long hash;
	const char *layout = NULL;
	Py_ssize_t layout_len = 0;
	int rc;

	if (ctx_check(c) || !PyArg_ParseTuple(args, "sK|y#:service_register", &ref.name, &hash,
					      &layout, &layout_len))
		return NULL;
	ref.schema_hash = hash;
	ref.layout = layout_len ? layout : NULL;
	ref.layout_len = (size_t)layout_len;
	rc = tern_service_register_ref(c->ctx, &ref);
	if (rc)
		return rc == -EINVAL ? raise_ctx(c, rc) : raise_code(rc, ref.name);
	Py_RETURN_NONE;
}

static int session_opts_parse(PyObject *d, struct tern_session_opts *so)
{
	unsigned long v;
	PyObject *x;

	memset(so, 0, sizeof(*so));
	so->size = sizeof(*so);
	if (!d || d == Py_None)
		return 0;
#define OPT(name)                                                                 \
	x = PyDict_GetItemString(d, #name);                                       \
	if (x && x != Py_None) {                                                  \
		v = PyLong_AsUnsignedLong(x);                                     \
		if (v == (unsigned long)-1 && PyErr_Occurred())                   \
			return -1;                                                \
		if (v > UINT32_MAX) {                                             \
			PyErr_SetString(PyExc_ValueError, #name " is too large"); \
			return -1;                                                \
		}                                                                 \
		so->name = (uint32_t)v;                                           \
	}
	OPT(slot_size)
	OPT(slot_count)
	OPT(call_timeout_ms)
	OPT(connect_timeout_ms)
	OPT(queue_depth)
	OPT(cancel_timeout_ms)
#undef OPT
	return 0;
}

static void on_session_close(tern_session *s, int reason);
static void session_closed_quietly(tern_session *s, int reason);

/*
 * A listener accepted a session (nothing to do: requests find their
 * handlers) or refused one: a schema or service mismatch, a bad handshake.
 * The client is told why; the server's user hears of it through
 * on_refused(status, message), with tern_ctx_last_error()'s message.
 */
static void on_accept(tern_listener *l, tern_session *s, int status)
{
	CtxObject *c = tern_listener_data(l);
	PyThreadState *t;
	PyObject *r;

	if (s || !c)
		return;
	t = ctx_enter(c);
	c->refused++;
	if (c->on_refused) {
		r = PyObject_CallFunction(c->on_refused, "is", status, tern_ctx_last_error(c->ctx));
		if (!r)
			PyErr_WriteUnraisable(c->on_refused);
		Py_XDECREF(r);
	}
	ctx_leave(c, t);
}

static PyObject *ctx_listen(PyObject *o, PyObject *args)
{
	CtxObject *c = (CtxObject *)o;
	PyObject *opts = NULL;
	struct tern_session_opts so;
	tern_listener *l;
	const char *uri;
	int rc;

	if (ctx_check(c) || !PyArg_ParseTuple(args, "s|O:listen", &uri, &opts) ||
	    session_opts_parse(opts, &so))
		return NULL;
	so.on_close = on_session_close;
	rc = tern_listen(c->ctx, uri, &so, on_accept, &l);
	if (rc)
		return raise_ctx(c, rc);
	tern_listener_set_data(l, c);
	return PyUnicode_FromString(tern_listener_uri(l));
}

static PyObject *ctx_run(PyObject *o, PyObject *args)
{
	CtxObject *c = (CtxObject *)o;
	PyObject *t = NULL;
	uint64_t ns;
	int bad, rc;

	if (!PyArg_ParseTuple(args, "|O:run", &t))
		return NULL;
	ns = timeout_arg(t, &bad);
	if (bad)
		return NULL;
	rc = ctx_run_until(c, NULL, 0, ns);
	if (rc < 0)
		return NULL;
	Py_RETURN_NONE;
}

/*
 * call_soon()'s callable, run by tern_ctx_post() on the loop's thread; or
 * dropped uncalled (-ECANCELED) when close() destroys the context first.
 */
static void soon_cb(tern_ctx *ctx, void *arg, int status)
{
	CtxObject *c = tern_ctx_data(ctx);
	PyObject *fn = arg, *r;
	PyThreadState *t = ctx_enter(c);

	if (status == 0) {
		r = PyObject_CallNoArgs(fn);
		if (!r)
			PyErr_WriteUnraisable(fn);
		Py_XDECREF(r);
	}
	Py_DECREF(fn);
	ctx_leave(c, t);
}

/*
 * call_soon(fn): run fn() on the loop's thread at its next turn, in the
 * order of the calls.  Thread-safe: a tern_ctx_post().  close() sets
 * closed before it lets go of the GIL, so c->ctx is alive here.
 */
static PyObject *ctx_call_soon(PyObject *o, PyObject *fn)
{
	CtxObject *c = (CtxObject *)o;
	int rc;

	if (ctx_check(c))
		return NULL;
	if (!PyCallable_Check(fn)) {
		PyErr_SetString(PyExc_TypeError, "call_soon: not callable");
		return NULL;
	}
	Py_INCREF(fn);
	rc = tern_ctx_post(c->ctx, soon_cb, fn);
	if (rc) {
		Py_DECREF(fn);
		return raise_code(rc, "tern_ctx_post failed");
	}
	Py_RETURN_NONE;
}

static PyObject *ctx_stop(PyObject *o, PyObject *unused)
{
	CtxObject *c = (CtxObject *)o;

	(void)unused;
	c->stop = 1;
	if (c->closed)
		Py_RETURN_NONE;
	if (c->owner == PyThread_get_thread_ident())
		tern_ctx_stop(c->ctx);
	else
		uv_async_send(&c->async); /* thread-safe: wakes a sleeping loop */
	Py_RETURN_NONE;
}

static PyObject *ctx_wait(PyObject *o, PyObject *args)
{
	CtxObject *c = (CtxObject *)o;
	PyObject *seq, *fast, *t = NULL;
	uint64_t ns;
	int bad, rc;

	if (!PyArg_ParseTuple(args, "O|O:wait", &seq, &t))
		return NULL;
	ns = timeout_arg(t, &bad);
	if (bad)
		return NULL;
	fast = PySequence_Fast(seq, "wait: a sequence of futures");
	if (!fast)
		return NULL;
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
		PyObject *f = PySequence_Fast_GET_ITEM(fast, i);

		if (!PyObject_TypeCheck(f, &FutureType) || ((FutureObject *)f)->c != c) {
			Py_DECREF(fast);
			PyErr_SetString(PyExc_TypeError, "wait: futures of this context only");
			return NULL;
		}
	}
	if (PySequence_Fast_GET_SIZE(fast) == 0) {
		Py_DECREF(fast);
		Py_RETURN_TRUE;
	}
	rc = ctx_run_until(c, PySequence_Fast_ITEMS(fast), PySequence_Fast_GET_SIZE(fast), ns);
	Py_DECREF(fast);
	if (rc < 0)
		return NULL;
	return PyBool_FromLong(rc);
}

static PyObject *session_make(CtxObject *c, tern_session *s);

static PyObject *ctx_connect(PyObject *o, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"uri", "services", "opts", "timeout_ms", NULL};
	CtxObject *c = (CtxObject *)o;
	PyObject *services = NULL, *opts = NULL, *fast = NULL, *r;
	struct tern_service_ref refs[64];
	struct tern_session_opts so;
	unsigned int timeout_ms = 10000;
	const char *uri;
	tern_session *s = NULL;
	Py_ssize_t n = 0;
	int rc;

	if (ctx_check(c) ||
	    !PyArg_ParseTupleAndKeywords(args, kw, "s|OOI:connect", kwlist, &uri, &services, &opts,
					 &timeout_ms) ||
	    session_opts_parse(opts, &so))
		return NULL;
	if (services && services != Py_None) {
		fast = PySequence_Fast(services, "services: a sequence of (name, hash[, layout])");
		if (!fast)
			return NULL;
		n = PySequence_Fast_GET_SIZE(fast);
		if (n > 64) {
			Py_DECREF(fast);
			PyErr_SetString(PyExc_ValueError, "at most 64 services");
			return NULL;
		}
		for (Py_ssize_t i = 0; i < n; i++) {
			unsigned long long h;
			const char *layout = NULL;
			Py_ssize_t layout_len = 0;

			/* the layout's bytes live in the item, which @fast holds */
			if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "sK|y#",
					      &refs[i].name, &h, &layout, &layout_len)) {
				Py_DECREF(fast);
				return NULL;
			}
			refs[i].schema_hash = h;
			refs[i].layout = layout_len ? layout : NULL;
			refs[i].layout_len = (size_t)layout_len;
		}
		so.services = refs;
		so.nservices = (uint32_t)n;
	}
	so.on_close = on_session_close;
	if (slots_block(c)) {
		Py_XDECREF(fast);
		return NULL;
	}
	c->owner = PyThread_get_thread_ident();
	c->ts = PyEval_SaveThread();
	rc = tern_connect_sync(c->ctx, uri, &so, timeout_ms, &s);
	PyEval_RestoreThread(c->ts);
	c->ts = NULL;
	Py_XDECREF(fast);
	if (rc)
		return raise_ctx(c, rc);
	r = session_make(c, s);
	if (!r)
		tern_session_close(s, session_closed_quietly);
	return r;
}

/* tern_ctx_mem(): a dict of the figures, named as the C fields are. */
static PyObject *ctx_mem(PyObject *o, PyObject *unused)
{
	CtxObject *c = (CtxObject *)o;
	struct tern_mem_stats m;
	PyObject *d, *v = NULL;
	int rc;

	(void)unused;
	if (ctx_check(c))
		return NULL;
	if ((rc = tern_ctx_mem(c->ctx, &m, sizeof(m))))
		return raise_ctx(c, rc);
	d = PyDict_New();
#define F(x)                                                                                   \
	if (d &&                                                                               \
	    (!(v = PyLong_FromUnsignedLongLong(m.x)) || PyDict_SetItemString(d, #x, v) < 0)) { \
		Py_CLEAR(d);                                                                   \
	}                                                                                      \
	Py_XDECREF(v);                                                                         \
	v = NULL;
	TERN_MEM_STATS_FIELDS(F)
#undef F
	return d;
}

/* metrics_enable(on=True): record per-method metrics (tern_ctx_metrics_enable). */
static PyObject *ctx_metrics_enable(PyObject *o, PyObject *args)
{
	CtxObject *c = (CtxObject *)o;
	int on = 1, rc;

	if (ctx_check(c) || !PyArg_ParseTuple(args, "|p:metrics_enable", &on))
		return NULL;
	if ((rc = tern_ctx_metrics_enable(c->ctx, on)))
		return raise_ctx(c, rc);
	Py_RETURN_NONE;
}

/* metrics_text() -> str: the metrics and session counters, Prometheus text. */
static PyObject *ctx_metrics_text(PyObject *o, PyObject *unused)
{
	CtxObject *c = (CtxObject *)o;
	PyObject *r;
	ssize_t n;
	char *buf;

	(void)unused;
	if (ctx_check(c))
		return NULL;
	n = tern_ctx_metrics_write(c->ctx, NULL, 0);
	if (n < 0)
		return raise_ctx(c, (int)n);
	if (!(buf = PyMem_Malloc((size_t)n + 1)))
		return PyErr_NoMemory();
	/* the same context, the same thread: the text cannot grow in between */
	n = tern_ctx_metrics_write(c->ctx, buf, (size_t)n + 1);
	r = n < 0 ? raise_ctx(c, (int)n) : PyUnicode_DecodeUTF8(buf, n, "replace");
	PyMem_Free(buf);
	return r;
}

static PyObject *method_stats_dict(const struct tern_method_stats *st)
{
	PyObject *d = NULL, *codes = PyDict_New(), *buckets = PyList_New(TERN_METRICS_BUCKETS);

	if (!codes || !buckets)
		goto out;
	for (int i = 0; i < TERN_METRICS_CODES && st->codes[i].count; i++) {
		PyObject *v = PyLong_FromUnsignedLongLong(st->codes[i].count);

		if (!v || PyDict_SetItemString(codes, tern_err_name(st->codes[i].code), v)) {
			Py_XDECREF(v);
			goto out;
		}
		Py_DECREF(v);
	}
	for (int i = 0; i < TERN_METRICS_BUCKETS; i++) {
		PyObject *v = PyLong_FromUnsignedLongLong(st->buckets[i]);

		if (!v)
			goto out;
		PyList_SET_ITEM(buckets, i, v);
	}
	d = Py_BuildValue("{sIsssKsKsKsOsKsKsKsKsO}", "method", st->method, "side",
			  st->side == TERN_METRICS_SERVED ? "served" : "issued", "started",
			  (unsigned long long)st->started, "completed",
			  (unsigned long long)st->completed, "errors",
			  (unsigned long long)st->errors, "codes", codes, "codes_other",
			  (unsigned long long)st->codes_other, "request_bytes",
			  (unsigned long long)st->request_bytes, "reply_bytes",
			  (unsigned long long)st->reply_bytes, "latency_sum_ns",
			  (unsigned long long)st->latency_sum_ns, "buckets", buckets);
out:
	Py_XDECREF(codes);
	Py_XDECREF(buckets);
	return d;
}

/* method_stats() -> [dict]: tern_ctx_method_stats(), one dict per entry. */
static PyObject *ctx_method_stats(PyObject *o, PyObject *unused)
{
	CtxObject *c = (CtxObject *)o;
	struct tern_method_stats *st;
	PyObject *list;
	int n;

	(void)unused;
	if (ctx_check(c))
		return NULL;
	n = tern_ctx_method_stats(c->ctx, NULL, 0);
	if (n < 0)
		return raise_ctx(c, n);
	if (!(st = PyMem_Calloc((size_t)n + 1, sizeof(*st))))
		return PyErr_NoMemory();
	n = tern_ctx_method_stats(c->ctx, st, (size_t)n);
	if (!(list = PyList_New(n)))
		goto out;
	for (int i = 0; i < n; i++) {
		PyObject *d = method_stats_dict(&st[i]);

		if (!d) {
			Py_CLEAR(list);
			break;
		}
		PyList_SET_ITEM(list, i, d);
	}
out:
	PyMem_Free(st);
	return list;
}

/* metrics_listen(addr) -> port: serve GET /metrics on the loop (tern_ctx_metrics_listen). */
static PyObject *ctx_metrics_listen(PyObject *o, PyObject *args)
{
	CtxObject *c = (CtxObject *)o;
	const char *addr;
	int rc;

	if (ctx_check(c) || !PyArg_ParseTuple(args, "s:metrics_listen", &addr))
		return NULL;
	if ((rc = tern_ctx_metrics_listen(c->ctx, addr)))
		return raise_ctx(c, rc);
	return PyLong_FromLong(tern_ctx_metrics_port(c->ctx));
}

static PyMethodDef ctx_methods[] = {
	{"register", (PyCFunction)(void (*)(void))ctx_register, METH_VARARGS | METH_KEYWORDS,
	 "register(method_id, kind, fn, batch_max=0, wait_us=0)"},
	{"service_register", ctx_service_register, METH_VARARGS,
	 "service_register(name, hash, layout=b'')"},
	{"listen", ctx_listen, METH_VARARGS, "listen(uri, opts=None) -> the URI to connect to"},
	{"connect", (PyCFunction)(void (*)(void))ctx_connect, METH_VARARGS | METH_KEYWORDS,
	 "connect(uri, services=None, opts=None, timeout_ms=10000) -> Session"},
	{"run", ctx_run, METH_VARARGS,
	 "run(timeout=None): serve until stop(), the timeout or a signal"},
	{"stop", ctx_stop, METH_NOARGS, "make run() return"},
	{"call_soon", ctx_call_soon, METH_O,
	 "call_soon(fn): run fn() on the loop's thread (thread-safe)"},
	{"wait", ctx_wait, METH_VARARGS, "wait(futures, timeout=None) -> True when all are done"},
	{"metrics_enable", ctx_metrics_enable, METH_VARARGS,
	 "metrics_enable(on=True): record per-method metrics"},
	{"metrics_text", ctx_metrics_text, METH_NOARGS,
	 "metrics_text() -> the metrics and session counters in Prometheus text"},
	{"method_stats", ctx_method_stats, METH_NOARGS,
	 "method_stats() -> one dict per method and side"},
	{"metrics_listen", ctx_metrics_listen, METH_VARARGS,
	 "metrics_listen(addr) -> port: serve GET /metrics on the context's loop"},
	{"close", ctx_close, METH_NOARGS, "close every session and listener, free the context"},
	{"mem", ctx_mem, METH_NOARGS,
	 "mem() -> dict: the memory the context holds (tern_ctx_mem()), in bytes"},
	{NULL},
};

static PyObject *ctx_get_held(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromLong(((CtxObject *)o)->held);
}

static PyObject *ctx_get_peers_closed(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromLong(((CtxObject *)o)->peers_closed);
}

static PyObject *ctx_get_refused(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromLong(((CtxObject *)o)->refused);
}

static PyObject *ctx_get_on_refused(PyObject *o, void *unused)
{
	CtxObject *c = (CtxObject *)o;

	(void)unused;
	return Py_NewRef(c->on_refused ? c->on_refused : Py_None);
}

static int ctx_set_on_refused(PyObject *o, PyObject *v, void *unused)
{
	CtxObject *c = (CtxObject *)o;

	(void)unused;
	if (v && v != Py_None && !PyCallable_Check(v)) {
		PyErr_SetString(PyExc_TypeError, "on_refused: a callable or None");
		return -1;
	}
	Py_XSETREF(c->on_refused, v && v != Py_None ? Py_NewRef(v) : NULL);
	return 0;
}

static PyObject *ctx_get_closed(PyObject *o, void *unused)
{
	(void)unused;
	return PyBool_FromLong(((CtxObject *)o)->closed);
}

static PyObject *ctx_get_last_error(PyObject *o, void *unused)
{
	CtxObject *c = (CtxObject *)o;

	(void)unused;
	return PyUnicode_FromString(c->ctx ? tern_ctx_last_error(c->ctx) : "");
}

static PyGetSetDef ctx_getset[] = {
	{"held_replies", ctx_get_held, NULL, "replies waiting for views to be released", NULL},
	{"closed", ctx_get_closed, NULL, "True once closed", NULL},
	{"peers_closed", ctx_get_peers_closed, NULL, "accepted sessions that have ended", NULL},
	{"refused", ctx_get_refused, NULL, "connections the listeners refused", NULL},
	{"on_refused", ctx_get_on_refused, ctx_set_on_refused,
	 "on_refused(status, message): called for each refused connection", NULL},
	{"last_error", ctx_get_last_error, NULL, "tern_ctx_last_error()", NULL},
	{NULL},
};

static PyTypeObject CtxType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.Context",
	.tp_basicsize = sizeof(CtxObject),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "Context(progress=0): a tern context on its own libuv loop.",
	.tp_new = ctx_new,
	.tp_dealloc = ctx_dealloc,
	.tp_traverse = ctx_traverse,
	.tp_clear = ctx_clear,
	.tp_methods = ctx_methods,
	.tp_getset = ctx_getset,
};

/* ---- Session -------------------------------------------------------------------- */

static void on_session_close(tern_session *s, int reason)
{
	SessionObject *so = tern_session_data(s);

	if (!so) {
		/* an accepted session (or a client one already detached) */
		CtxObject *c = tern_ctx_data(tern_session_ctx(s));

		if (c)
			c->peers_closed++;
		return;
	}
	so->s = NULL;
	so->close_reason = reason ? reason : -ECONNRESET;
}

/* A session the Python side let go of: nobody to tell that it closed
 * (with no callback, on_session_close would count it as a peer's). */
static void session_closed_quietly(tern_session *s, int reason)
{
	(void)s, (void)reason;
}

static void session_detach(SessionObject *so)
{
	if (so->s) {
		tern_session_set_data(so->s, NULL);
		tern_session_close(so->s, session_closed_quietly);
		so->s = NULL;
		so->close_reason = -ECANCELED;
	}
}

/* The context is going: every session handle is about to be freed. */
static void sessions_forget(CtxObject *c)
{
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(c->sessions); i++) {
		PyObject *so = PyWeakref_GetObject(PyList_GET_ITEM(c->sessions, i));

		if (so != Py_None && ((SessionObject *)so)->s) {
			tern_session_set_data(((SessionObject *)so)->s, NULL);
			((SessionObject *)so)->s = NULL;
			((SessionObject *)so)->close_reason = -ECANCELED;
		}
	}
	PyList_SetSlice(c->sessions, 0, PyList_GET_SIZE(c->sessions), NULL);
}

static PyObject *session_make(CtxObject *c, tern_session *s)
{
	SessionObject *so = PyObject_New(SessionObject, &SessionType);
	PyObject *w;

	if (!so)
		return NULL;
	so->c = c;
	Py_INCREF(c);
	so->s = s;
	so->close_reason = 0;
	so->weakrefs = NULL;
	so->max_payload = tern_session_max_payload(s);
	tern_session_set_data(s, so);
	w = PyWeakref_NewRef((PyObject *)so, NULL);
	if (!w || PyList_Append(c->sessions, w)) {
		Py_XDECREF(w);
		tern_session_set_data(s, NULL);
		so->s = NULL;
		Py_DECREF(so);
		return NULL;
	}
	Py_DECREF(w);
	return (PyObject *)so;
}

static int session_live(SessionObject *so)
{
	if (so->c->closed || !so->s) {
		raise_code(so->close_reason ? so->close_reason : -ENOTCONN,
			   so->close_reason == -ECANCELED ? "the session was closed"
							  : "the session is gone");
		return -1;
	}
	return 0;
}

static void on_reply(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	FutureObject *f = user;
	CtxObject *c = f->c;
	PyThreadState *t = ctx_enter(c);

	f->status = status;
	f->remote = status && tern_call_status_remote(s);
	if (status == 0 && f->rep_obj) {
		/* the reply is in the reply buffer (tern_call_opts.reply_buf) */
		if (reply != f->rep.buf)
			memmove(f->rep.buf, reply, len);
		f->reply_len = len;
	} else if (status == 0) {
		f->reply = PyBytes_FromStringAndSize(reply, (Py_ssize_t)len);
	} else {
		size_t n = reply ? strnlen(reply, len) : 0;

		f->reply = PyUnicode_DecodeUTF8(reply ? reply : "", (Py_ssize_t)n, "replace");
	}
	if (!f->reply && !(status == 0 && f->rep_obj)) {
		PyErr_Clear();
		f->status = status ? status : -ENOMEM;
	}
	if (f->has_req) {
		PyBuffer_Release(&f->req);
		f->has_req = false;
	}
	if (f->has_rep) {
		PyBuffer_Release(&f->rep);
		f->has_rep = false;
	}
	for (int i = 0; i < 2; i++) {
		if (!f->mem[i])
			continue;
		/* done, or timed out: tern withdrew the call's exports of our
		 * memory before this callback, so the peer reaches it no more */
		mem_done(f->mem[i]);
		f->mem[i] = NULL;
	}
	f->s = NULL;
	f->done = 1;
	Py_DECREF(f);
	ctx_leave(c, t);
}

static FutureObject *fut_new(CtxObject *c, PyObject *decode)
{
	FutureObject *f = PyObject_GC_New(FutureObject, &FutureType);

	if (!f)
		return NULL;
	f->c = c;
	Py_INCREF(c);
	f->done = 0;
	f->status = 0;
	f->remote = false;
	f->reply = NULL;
	f->decode = decode && decode != Py_None ? Py_NewRef(decode) : NULL;
	f->has_req = false;
	f->has_rep = false;
	f->rep_obj = NULL;
	f->reply_len = 0;
	f->mem[0] = f->mem[1] = NULL;
	f->s = NULL;
	PyObject_GC_Track(f);
	return f;
}

/* A call that never started: let go of what it took. */
static void fut_unstart(FutureObject *f)
{
	for (int i = 0; i < 2; i++) {
		if (f->mem[i])
			mem_done(f->mem[i]);
		f->mem[i] = NULL;
	}
	Py_DECREF(f);
}

/*
 * call(method_id, data=None, timeout_ms=0, decode=None, reply_buf=None):
 * a request of any size (one over the slot is pulled by the server: with no
 * copy when it lies in a Memory), its reply into @reply_buf when given (any
 * size up to the buffer's; written by the server with no copy when the
 * buffer lies in a Memory).
 */
static PyObject *session_call(PyObject *o, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"method_id", "data", "timeout_ms", "decode", "reply_buf", NULL};
	SessionObject *so = (SessionObject *)o;
	struct tern_call_opts co = {.size = sizeof(co)};
	CtxObject *c = so->c;
	unsigned long id;
	unsigned int timeout_ms = 0;
	PyObject *decode = NULL, *data = NULL, *reply_buf = NULL;
	FutureObject *f;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "k|OIOO:call", kwlist, &id, &data, &timeout_ms,
					 &decode, &reply_buf))
		return NULL;
	f = fut_new(c, decode);
	if (!f)
		return NULL;
	if (data && data != Py_None) {
		if (PyObject_GetBuffer(data, &f->req, PyBUF_SIMPLE)) {
			Py_DECREF(f);
			return NULL;
		}
		f->has_req = true;
	}
	if (reply_buf && reply_buf != Py_None) {
		if (PyObject_GetBuffer(reply_buf, &f->rep, PyBUF_WRITABLE)) {
			Py_DECREF(f);
			return NULL;
		}
		f->has_rep = true;
		f->rep_obj = Py_NewRef(reply_buf);
		co.reply_buf = f->rep.buf;
		co.reply_cap = (size_t)f->rep.len;
	}
	if (session_live(so) ||
	    (f->has_req && mem_use(c, f->req.buf, (size_t)f->req.len, &f->mem[0])) ||
	    (f->has_rep && mem_use(c, f->rep.buf, (size_t)f->rep.len, &f->mem[1]))) {
		fut_unstart(f);
		return NULL;
	}
	co.timeout_ms = timeout_ms;
	f->s = so->s;
	Py_INCREF(f); /* the call's reference, dropped by on_reply */
	rc = tern_call(so->s, (uint32_t)id, f->has_req ? f->req.buf : "",
		       f->has_req ? (size_t)f->req.len : 0, on_reply, f, &co);
	if (rc) {
		Py_DECREF(f);
		fut_unstart(f);
		return raise_ctx(c, rc);
	}
	return (PyObject *)f;
}

/* send(method_id, data, timeout_ms=0): one way; waits for a credit if needed. */
/*
 * Run @so's loop, GIL released, until a slot and a credit may be free (a
 * call also needs room for its reply: one more turn) or @end passes.
 *
 * Return: 0 try again; -ETIMEDOUT @end passed; -EAGAIN the loop cannot run
 * here (inside a handler, or with a send slot out); -EINTR an exception
 * (a signal's) is set; another negative errno: the session failed.
 */
static int wait_for_slot(SessionObject *so, uint64_t end, bool call)
{
	CtxObject *c = so->c;
	uint64_t t = now_ns();
	int rc;

	if (t >= end)
		return -ETIMEDOUT;
	if (c->depth || c->slots)
		return -EAGAIN;
	c->owner = PyThread_get_thread_ident(); /* whoever runs the loop owns it */
	c->ts = PyEval_SaveThread();
	rc = tern_session_wait_writable(
		so->s, (uint32_t)((end - t > SLICE_NS ? SLICE_NS : end - t) / 1000000 + 1));
	if (rc == 0 && call) {
		uv_timer_start(&c->wake, wake_cb, 1, 0);
		tern_ctx_run(c->ctx, TERN_RUN_ONCE);
		uv_timer_stop(&c->wake);
	}
	PyEval_RestoreThread(c->ts);
	c->ts = NULL;
	if (PyErr_CheckSignals())
		return -EINTR;
	return rc == -ETIMEDOUT ? 0 : rc;
}

/* send(method_id, data, timeout_ms=0): one way; waits for a credit if needed. */
static PyObject *session_send(PyObject *o, PyObject *args)
{
	SessionObject *so = (SessionObject *)o;
	CtxObject *c = so->c;
	unsigned long id;
	unsigned int timeout_ms = 0;
	uint64_t end;
	Py_buffer b;
	int rc, w;

	if (!PyArg_ParseTuple(args, "ky*|I:send", &id, &b, &timeout_ms))
		return NULL;
	end = timeout_ms ? now_ns() + (uint64_t)timeout_ms * 1000000ull : UINT64_MAX;
	for (;;) {
		if (session_live(so)) {
			PyBuffer_Release(&b);
			return NULL;
		}
		rc = tern_send(so->s, (uint32_t)id, b.buf, (size_t)b.len, NULL, NULL);
		if (rc != -EAGAIN)
			break;
		w = wait_for_slot(so, end, false);
		if (w == -EINTR) {
			PyBuffer_Release(&b);
			return NULL;
		}
		if (w == 0 || (w != -EAGAIN && w != -ETIMEDOUT && !so->s))
			continue; /* again, or session_live() raises */
		if (w != -EAGAIN)
			rc = w; /* waited for a credit until the timeout, or failed */
		break;
	}
	PyBuffer_Release(&b);
	if (rc)
		return raise_ctx(c, rc);
	Py_RETURN_NONE;
}

/*
 * acquire(oneway=False, timeout=None) -> CallSlot: a send slot to build a
 * call's request (or a one-way message) in.  No slot or credit free: wait
 * up to @timeout seconds (None: no limit; 0: fail at once, WouldBlock).
 */
static PyObject *session_acquire(PyObject *o, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"oneway", "timeout", NULL};
	SessionObject *so = (SessionObject *)o;
	CtxObject *c = so->c;
	PyObject *timeout = NULL;
	int oneway = 0, bad, rc, w;
	tern_callslot *cs;
	uint64_t ns, end;
	SlotObject *sl;
	void *buf;
	size_t cap;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "|pO:acquire", kwlist, &oneway, &timeout))
		return NULL;
	ns = timeout_arg(timeout, &bad);
	if (bad)
		return NULL;
	end = ns == UINT64_MAX ? UINT64_MAX : now_ns() + ns;
	for (;;) {
		if (session_live(so))
			return NULL;
		rc = oneway ? tern_send_acquire(so->s, &buf, &cap, &cs)
			    : tern_call_acquire(so->s, &buf, &cap, &cs);
		if (rc != -EAGAIN || ns == 0)
			break;
		w = wait_for_slot(so, end, !oneway);
		if (w == -EINTR)
			return NULL;
		if (w == 0 || (w != -EAGAIN && w != -ETIMEDOUT && !so->s))
			continue;
		if (w != -EAGAIN)
			rc = w;
		break;
	}
	if (rc)
		return raise_ctx(c, rc);
	sl = PyObject_GC_New(SlotObject, &SlotType);
	if (!sl) {
		tern_call_abort(cs);
		return NULL;
	}
	sl->v.buf = buf;
	sl->v.len = (Py_ssize_t)cap;
	sl->v.readonly = 0;
	sl->v.exports = 0;
	sl->v.released = false;
	sl->v.hold = NULL;
	sl->v.req = NULL;
	sl->so = (SessionObject *)Py_NewRef(o);
	sl->cs = cs;
	sl->oneway = oneway;
	sl->mv = NULL;
	sl->next = c->slots;
	sl->pprev = &c->slots;
	if (c->slots)
		c->slots->pprev = &sl->next;
	c->slots = sl;
	PyObject_GC_Track(sl);
	return (PyObject *)sl;
}

static PyObject *session_drain(PyObject *o, PyObject *args)
{
	SessionObject *so = (SessionObject *)o;
	CtxObject *c = so->c;
	unsigned int timeout_ms = 0;
	int rc;

	if (!PyArg_ParseTuple(args, "|I:drain", &timeout_ms) || session_live(so))
		return NULL;
	if (c->depth) {
		PyErr_SetString(PyExc_RuntimeError, "tern: cannot drain inside a handler");
		return NULL;
	}
	if (slots_block(c))
		return NULL;
	c->owner = PyThread_get_thread_ident();
	c->ts = PyEval_SaveThread();
	rc = tern_session_drain(so->s, timeout_ms);
	PyEval_RestoreThread(c->ts);
	c->ts = NULL;
	if (rc)
		return raise_ctx(c, rc);
	Py_RETURN_NONE;
}

static PyObject *session_close(PyObject *o, PyObject *unused)
{
	SessionObject *so = (SessionObject *)o;

	(void)unused;
	if (so->c->closed)
		Py_RETURN_NONE;
	/* the slots go with the session: refused while a view of one lives */
	if (slots_abort_all(so->c, so))
		return NULL;
	session_detach(so);
	Py_RETURN_NONE;
}

static PyObject *session_counters(PyObject *o, PyObject *unused)
{
	SessionObject *so = (SessionObject *)o;
	struct tern_session_counters k;

	(void)unused;
	if (session_live(so))
		return NULL;
	tern_session_counters(so->s, &k);
	return Py_BuildValue(
		"{sKsKsKsKsKsKsKsKsKsKsKsK}", "calls_sent", (unsigned long long)k.calls_sent,
		"calls_completed", (unsigned long long)k.calls_completed, "calls_served",
		(unsigned long long)k.calls_served, "bytes_sent", (unsigned long long)k.bytes_sent,
		"bytes_received", (unsigned long long)k.bytes_received, "credit_stalls",
		(unsigned long long)k.credit_stalls, "timeouts", (unsigned long long)k.timeouts,
		"errors", (unsigned long long)k.errors, "late_replies",
		(unsigned long long)k.late_replies, "protocol_errors",
		(unsigned long long)k.protocol_errors, "oneway_sent",
		(unsigned long long)k.oneway_sent, "oneway_received",
		(unsigned long long)k.oneway_received);
}

static PyObject *session_get_max_payload(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromSize_t(((SessionObject *)o)->max_payload);
}

static PyObject *session_get_open(PyObject *o, void *unused)
{
	SessionObject *so = (SessionObject *)o;

	(void)unused;
	return PyBool_FromLong(so->s && !so->c->closed && tern_session_is_ready(so->s));
}

static PyObject *session_get_peer(PyObject *o, void *unused)
{
	SessionObject *so = (SessionObject *)o;

	(void)unused;
	if (session_live(so))
		return NULL;
	return PyUnicode_FromString(tern_session_peer(so->s));
}

static void session_dealloc(PyObject *o)
{
	SessionObject *so = (SessionObject *)o;

	if (so->weakrefs)
		PyObject_ClearWeakRefs(o);
	if (!so->c->closed)
		session_detach(so);
	Py_DECREF(so->c);
	PyObject_Free(o);
}

static PyMethodDef session_methods[] = {
	{"call", (PyCFunction)(void (*)(void))session_call, METH_VARARGS | METH_KEYWORDS,
	 "call(method_id, data=None, timeout_ms=0, decode=None, reply_buf=None) -> Future"},
	{"send", session_send, METH_VARARGS, "send(method_id, data, timeout_ms=0): one way"},
	{"acquire", (PyCFunction)(void (*)(void))session_acquire, METH_VARARGS | METH_KEYWORDS,
	 "acquire(oneway=False, timeout=None) -> CallSlot: a send slot to build a message in"},
	{"drain", session_drain, METH_VARARGS,
	 "drain(timeout_ms=0): wait until the peer consumed all"},
	{"close", session_close, METH_NOARGS, "close the session"},
	{"counters", session_counters, METH_NOARGS, "the session's counters"},
	{NULL},
};

static PyGetSetDef session_getset[] = {
	{"max_payload", session_get_max_payload, NULL, "the largest message in one slot", NULL},
	{"open", session_get_open, NULL, "True while connected", NULL},
	{"peer", session_get_peer, NULL, "the peer's URI", NULL},
	{NULL},
};

static PyTypeObject SessionType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.Session",
	.tp_basicsize = sizeof(SessionObject),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "A client session, made by Context.connect().",
	.tp_dealloc = session_dealloc,
	.tp_weaklistoffset = offsetof(SessionObject, weakrefs),
	.tp_methods = session_methods,
	.tp_getset = session_getset,
};

/* ---- Future ----------------------------------------------------------------------- */

static PyObject *fut_wait(PyObject *o, PyObject *args)
{
	FutureObject *f = (FutureObject *)o;
	PyObject *t = NULL, *one[1] = {o};
	uint64_t ns;
	int bad, rc;

	if (!PyArg_ParseTuple(args, "|O:wait", &t))
		return NULL;
	if (f->done)
		Py_RETURN_TRUE;
	ns = timeout_arg(t, &bad);
	if (bad)
		return NULL;
	rc = ctx_run_until(f->c, one, 1, ns);
	if (rc < 0)
		return NULL;
	return PyBool_FromLong(rc);
}

static PyObject *fut_result(PyObject *o, PyObject *args)
{
	FutureObject *f = (FutureObject *)o;
	PyObject *r = fut_wait(o, args);

	if (!r)
		return NULL;
	Py_DECREF(r);
	if (!f->done)
		return raise_code(-ETIMEDOUT, "the call is not done (wait timed out)");
	if (f->status) {
		const char *m =
			f->reply && PyUnicode_Check(f->reply) ? PyUnicode_AsUTF8(f->reply) : "";
		return raise_status(f->status, m, f->remote);
	}
	if (f->rep_obj && !f->reply) {
		/* the reply is the reply buffer's first reply_len bytes */
		PyObject *mv = PyMemoryView_FromObject(f->rep_obj), *b;

		if (!mv)
			return NULL;
		b = PyMemoryView_GET_BUFFER(mv)->ndim == 1 &&
				    strcmp(PyMemoryView_GET_BUFFER(mv)->format ?: "B", "B") == 0
			    ? Py_NewRef(mv)
			    : PyObject_CallMethod(mv, "cast", "s", "B");
		Py_DECREF(mv);
		if (!b)
			return NULL;
		f->reply = PySequence_GetSlice(b, 0, (Py_ssize_t)f->reply_len);
		Py_DECREF(b);
		if (!f->reply)
			return NULL;
	}
	if (f->decode)
		return PyObject_CallFunctionObjArgs(f->decode, f->reply, NULL);
	Py_INCREF(f->reply);
	return f->reply;
}

static PyObject *fut_done(PyObject *o, PyObject *unused)
{
	(void)unused;
	return PyBool_FromLong(((FutureObject *)o)->done);
}

static PyObject *fut_get_status(PyObject *o, void *unused)
{
	FutureObject *f = (FutureObject *)o;

	(void)unused;
	if (!f->done)
		Py_RETURN_NONE;
	return PyLong_FromLong(f->status);
}

static PyObject *fut_get_remote(PyObject *o, void *unused)
{
	(void)unused;
	return PyBool_FromLong(((FutureObject *)o)->remote);
}

static PyObject *fut_get_ctx(PyObject *o, void *unused)
{
	(void)unused;
	Py_INCREF(((FutureObject *)o)->c);
	return (PyObject *)((FutureObject *)o)->c;
}

static int fut_traverse(PyObject *o, visitproc visit, void *arg)
{
	FutureObject *f = (FutureObject *)o;

	Py_VISIT(f->decode);
	Py_VISIT(f->rep_obj);
	Py_VISIT(f->reply);
	return 0;
}

static void fut_dealloc(PyObject *o)
{
	FutureObject *f = (FutureObject *)o;

	PyObject_GC_UnTrack(o);
	if (f->has_req)
		PyBuffer_Release(&f->req);
	if (f->has_rep)
		PyBuffer_Release(&f->rep);
	for (int i = 0; i < 2; i++)
		if (f->mem[i])
			mem_done(f->mem[i]);
	Py_XDECREF(f->rep_obj);
	Py_XDECREF(f->reply);
	Py_XDECREF(f->decode);
	Py_XDECREF(f->c);
	PyObject_GC_Del(o);
}

static PyMethodDef fut_methods[] = {
	{"wait", fut_wait, METH_VARARGS, "wait(timeout=None) -> True once done"},
	{"result", fut_result, METH_VARARGS,
	 "result(timeout=None): the reply, or raise the call's error"},
	{"done", fut_done, METH_NOARGS, "True once the call finished"},
	{NULL},
};

static PyGetSetDef fut_getset[] = {
	{"status", fut_get_status, NULL, "0 or the negative error code; None while running", NULL},
	{"remote", fut_get_remote, NULL, "True when the peer sent the failure status", NULL},
	{"context", fut_get_ctx, NULL, "the context the call runs on", NULL},
	{NULL},
};

static PyTypeObject FutureType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.Future",
	.tp_basicsize = sizeof(FutureObject),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "A call in flight: wait(timeout), result(timeout), done().",
	.tp_dealloc = fut_dealloc,
	.tp_traverse = fut_traverse,
	.tp_methods = fut_methods,
	.tp_getset = fut_getset,
};

/* ---- Group: N member contexts behind one URI (tern_group_*) -------------------- */

/*
 * A context group as Python sees it.  tern starts the members' threads
 * (own_threads): they run C loops that never hold the GIL, so a thread
 * the binding started would add a Python thread object and nothing else,
 * and tern_group_destroy() joins tern's threads itself.  A Python handler
 * takes the GIL on the member's thread (PyGILState_Ensure(), which gives
 * that thread a thread state the first time): the members' I/O, framing
 * and copies run in parallel, the Python code of the handlers runs one at
 * a time.  A C handler (register_c()) never takes the GIL.
 *
 * A Python handler gets a memoryview of a copy of its request, not of the
 * slot: a view kept past the handler's return would pin a slot of another
 * thread's context, and a reply held for it would have to be handed back
 * to that member, which may be gone by then.  The reply is copied into
 * the slot (the group registers inplace methods with tern); an inplace
 * handler writes into a bytearray of the slot's room, copied likewise.
 *
 * Counters the member threads update (sessions accepted and ended per
 * member, refused) are atomics: the accept and close callbacks run
 * without the GIL.
 */
typedef struct GroupObject {
	PyObject_HEAD tern_group *g;
	unsigned n;
	bool started;
	bool closed;
	PyObject *regs; /* list of capsules of struct reg (c NULL): keeps handlers */
	PyObject *uri;	/* the listening URI, once listening */
	unsigned long accepted[TERN_GROUP_MAX];
	unsigned long ended[TERN_GROUP_MAX];
	unsigned long refused;
} GroupObject;

/* The group whose handler this thread is running, if any: close() from
 * there would join the thread it runs on. */
static _Thread_local GroupObject *group_here;

static PyTypeObject GroupType;

/* The group a request arrived at: its members' context data. */
static GroupObject *req_group(tern_req *req)
{
	return tern_ctx_data(tern_session_ctx(tern_req_session(req)));
}
/*
 * Call @fn with a memoryview of a copy of @in, with the GIL: the handler
 * may keep it; and, given @out, a writable memoryview of it.  The result,
 * or NULL with an error.
 */
static PyObject *group_call(struct reg *r, const void *in, size_t in_len, PyObject *out)
{
	PyObject *b = PyBytes_FromStringAndSize(in, (Py_ssize_t)in_len), *mv, *omv = NULL, *res;

	if (!b)
		return NULL;
	mv = PyMemoryView_FromObject(b);
	Py_DECREF(b);
	if (mv && out)
		omv = PyMemoryView_FromObject(out);
	res = mv && (omv || !out) ? PyObject_CallFunctionObjArgs(r->fn, mv, omv, NULL) : NULL;
	Py_XDECREF(mv);
	Py_XDECREF(omv);
	return res;
}

/*
 * A Python raw or inplace method of a group.  Inplace: the handler writes
 * into a bytearray of the slot's room, copied into the slot after, so a
 * view it keeps never reaches the slot.
 */
static ssize_t group_on_request(tern_req *req, const void *in, size_t in_len, void *out,
				size_t out_cap, void *user)
{
	struct reg *r = user;
	PyGILState_STATE st = PyGILState_Ensure();
	GroupObject *prev = group_here;
	PyObject *res, *room = NULL;
	Py_buffer b;
	char msg[208] = "";
	size_t len;
	ssize_t rc;

	group_here = req_group(req);
	if (r->kind == K_INPLACE) {
		room = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)out_cap);
		res = room ? group_call(r, in, in_len, room) : NULL;
	} else {
		res = group_call(r, in, in_len, NULL);
	}
	if (!res) {
		rc = exc_to_status(msg, sizeof(msg));
	} else if (room) {
		rc = inplace_length(res, out_cap, &len, msg, sizeof(msg));
		if (rc == 0 && len)
			memcpy(out, PyByteArray_AS_STRING(room), len);
		if (rc == 0)
			rc = (ssize_t)len;
	} else if (!(rc = reply_buffer(res, &b, msg, sizeof(msg)))) {
		rc = reply_copy(&b, out, out_cap, msg, sizeof(msg));
	}
	Py_XDECREF(res);
	Py_XDECREF(room);
	group_here = prev;
	PyGILState_Release(st);
	if (rc < 0 && msg[0])
		tern_req_set_error(req, msg);
	return rc;
}

static void group_on_oneway(tern_req *req, const void *in, size_t in_len, void *user)
{
	struct reg *r = user;
	PyGILState_STATE st = PyGILState_Ensure();
	GroupObject *prev = group_here;
	PyObject *res;

	group_here = req_group(req);
	res = group_call(r, in, in_len, NULL);
	if (!res)
		PyErr_WriteUnraisable(r->fn);
	Py_XDECREF(res);
	group_here = prev;
	PyGILState_Release(st);
}

/* On the member's thread, without the GIL. */
static void group_on_accept(tern_listener *l, tern_session *s, int status)
{
	GroupObject *go = tern_listener_data(l);
	int i;

	(void)status;
	if (!s) {
		__atomic_fetch_add(&go->refused, 1, __ATOMIC_RELAXED);
		return;
	}
	i = tern_group_index(tern_session_ctx(s));
	if (i >= 0 && (unsigned)i < go->n)
		__atomic_fetch_add(&go->accepted[i], 1, __ATOMIC_RELAXED);
}

static void group_on_session_close(tern_session *s, int reason)
{
	tern_ctx *ctx = tern_session_ctx(s);
	GroupObject *go = tern_ctx_data(ctx);
	int i = tern_group_index(ctx);

	(void)reason;
	if (go && i >= 0 && (unsigned)i < go->n)
		__atomic_fetch_add(&go->ended[i], 1, __ATOMIC_RELAXED);
}

static PyObject *group_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
	static char *kwlist[] = {"members", "progress", NULL};
	struct tern_group_opts o = {.size = sizeof(o), .own_threads = 1};
	int members, progress = TERN_PROGRESS_EVENT, rc;
	GroupObject *go;
	PyThreadState *ts;

	if (!PyArg_ParseTupleAndKeywords(args, kw, "i|i:Group", kwlist, &members, &progress))
		return NULL;
	if (members < 1 || members > TERN_GROUP_MAX) {
		PyErr_Format(PyExc_ValueError, "members must be 1 to %d, not %d", TERN_GROUP_MAX,
			     members);
		return NULL;
	}
	if (progress < TERN_PROGRESS_BUSY || progress > TERN_PROGRESS_ADAPTIVE) {
		PyErr_SetString(PyExc_ValueError, "progress must be 0 (busy), 1 (event) or 2");
		return NULL;
	}
	go = (GroupObject *)type->tp_alloc(type, 0);
	if (!go)
		return NULL;
	go->closed = true; /* until the group exists: dealloc has nothing to do */
	go->regs = PyList_New(0);
	if (!go->regs) {
		Py_DECREF(go);
		return NULL;
	}
	o.members = (unsigned)members;
	o.ctx.size = sizeof(o.ctx);
	o.ctx.progress = progress;
	o.ctx.data = go;
	ts = PyEval_SaveThread();
	rc = tern_group_create(&o, &go->g);
	PyEval_RestoreThread(ts);
	if (rc) {
		Py_DECREF(go);
		return raise_code(rc, "tern_group_create failed");
	}
	go->n = (unsigned)members;
	go->closed = false;
	return (PyObject *)go;
}

static int group_check(GroupObject *go)
{
	if (go->closed) {
		PyErr_SetString(PyExc_ValueError, "tern: the group is closed");
		return -1;
	}
	return 0;
}

/* Set-up is for before start(): tern says -EBUSY; say it in words. */
static int group_setup_check(GroupObject *go)
{
	if (group_check(go))
		return -1;
	if (go->started) {
		raise_code(-EBUSY, "tern: a group is set up before start()");
		return -1;
	}
	return 0;
}

static PyObject *group_raise(GroupObject *go, int rc)
{
	return raise_code(rc, go->g ? tern_group_last_error(go->g) : "");
}

/*
 * Stop every member and free the group.  With the GIL released: a
 * member's thread may be waiting for it in a handler, and
 * tern_group_destroy() joins that thread.  Then no thread runs a handler,
 * and the handlers can go.
 */
static int group_close_impl(GroupObject *go)
{
	PyThreadState *ts;
	tern_group *g = go->g;

	if (go->closed)
		return 0;
	if (group_here == go) {
		PyErr_SetString(PyExc_RuntimeError,
				"tern: cannot close a group from its handler (stop() can)");
		return -1;
	}
	go->closed = true;
	go->g = NULL;
	ts = PyEval_SaveThread();
	tern_group_destroy(g);
	PyEval_RestoreThread(ts);
	regs_drop(go->regs);
	return 0;
}

static PyObject *group_close(PyObject *o, PyObject *unused)
{
	(void)unused;
	if (group_close_impl((GroupObject *)o))
		return NULL;
	Py_RETURN_NONE;
}

/* A registration record kept by the group for as long as it lives. */
static struct reg *group_reg_new(GroupObject *go, uint32_t id, enum kind kind, PyObject *fn)
{
	struct reg *r;
	PyObject *cap = reg_new(id, kind, fn, &r);

	if (!cap)
		return NULL;
	if (PyList_Append(go->regs, cap)) {
		Py_DECREF(cap);
		return NULL;
	}
	Py_DECREF(cap);
	return r;
}

static int method_id_arg(PyObject *v, uint32_t *id)
{
	unsigned long long x;

	if (!PyLong_Check(v)) {
		PyErr_Format(PyExc_TypeError, "method_id must be an int, not %s",
			     Py_TYPE(v)->tp_name);
		return -1;
	}
	x = PyLong_AsUnsignedLongLong(v);
	if (x == (unsigned long long)-1 && PyErr_Occurred()) {
		PyErr_Clear();
		x = 0;
	}
	if (x == 0 || x > 0xffffffffu) {
		PyErr_SetString(PyExc_ValueError, "method_id must be 1 to 0xffffffff");
		return -1;
	}
	*id = (uint32_t)x;
	return 0;
}

/* register(method_id, kind, fn): a Python handler; kind raw (0), inplace (1) or
 * oneway (3). */
static PyObject *group_register(PyObject *o, PyObject *args)
{
	GroupObject *go = (GroupObject *)o;
	PyObject *idv, *fn;
	struct reg *r;
	uint32_t id;
	int kind, rc;

	if (!PyArg_ParseTuple(args, "OiO:register", &idv, &kind, &fn) || group_setup_check(go) ||
	    method_id_arg(idv, &id))
		return NULL;
	if (!PyCallable_Check(fn)) {
		PyErr_SetString(PyExc_TypeError, "register: the handler is not callable");
		return NULL;
	}
	if (kind != K_RAW && kind != K_INPLACE && kind != K_ONEWAY) {
		PyErr_SetString(PyExc_ValueError,
				"register: a group serves raw, inplace and oneway Python methods");
		return NULL;
	}
	r = group_reg_new(go, id, (enum kind)kind, fn);
	if (!r)
		return NULL;
	rc = kind == K_ONEWAY ? tern_group_register_oneway(go->g, id, group_on_oneway, r)
			      : tern_group_register_inplace(go->g, id, group_on_request, r);
	return rc ? group_raise(go, rc) : Py_NewRef(Py_None);
}

/* An address given as an int (ctypes.cast(f, c_void_p).value); 0 is refused. */
static int address_arg(PyObject *v, const char *what, bool zero_ok, void **out)
{
	void *p;

	if (!PyLong_Check(v)) {
		PyErr_Format(PyExc_TypeError, "%s must be an int address, not %s", what,
			     Py_TYPE(v)->tp_name);
		return -1;
	}
	p = PyLong_AsVoidPtr(v);
	if (!p && PyErr_Occurred())
		return -1;
	if (!p && !zero_ok) {
		PyErr_Format(PyExc_ValueError, "%s is NULL", what);
		return -1;
	}
	*out = p;
	return 0;
}

/*
 * register_c(method_id, fn, user=0): a C tern_inplace_handler at address
 * @fn (from ctypes), called with @user on the members' threads, with no
 * GIL: the way a Python process serves on all its cores.
 */
static PyObject *group_register_c(PyObject *o, PyObject *args)
{
	GroupObject *go = (GroupObject *)o;
	PyObject *idv, *fnv, *userv = NULL;
	void *fn, *user = NULL;
	uint32_t id;
	int rc;

	if (!PyArg_ParseTuple(args, "OO|O:register_c", &idv, &fnv, &userv) ||
	    group_setup_check(go) || method_id_arg(idv, &id) ||
	    address_arg(fnv, "register_c: fn", false, &fn) ||
	    (userv && address_arg(userv, "register_c: user", true, &user)))
		return NULL;
	rc = tern_group_register_inplace(go->g, id, (tern_inplace_handler)fn, user);
	return rc ? group_raise(go, rc) : Py_NewRef(Py_None);
}

static int group_service_one(tern_ctx *ctx, unsigned i, void *arg)
{
	(void)i;
	return tern_service_register_ref(ctx, arg);
}

static PyObject *group_service_register(PyObject *o, PyObject *args)
{
	GroupObject *go = (GroupObject *)o;
	struct tern_service_ref ref = {0};
	unsigned long long hash;
	const char *layout = NULL;
	Py_ssize_t layout_len = 0;
	int rc;

	if (!PyArg_ParseTuple(args, "sK|y#:service_register", &ref.name, &hash, &layout,
			      &layout_len) ||
	    group_setup_check(go))
		return NULL;
	ref.schema_hash = hash;
	ref.layout = layout_len ? layout : NULL;
	ref.layout_len = (size_t)layout_len;
	rc = tern_group_setup(go->g, group_service_one, &ref);
	return rc ? raise_code(rc, ref.name) : Py_NewRef(Py_None);
}

static PyObject *group_listen(PyObject *o, PyObject *args)
{
	GroupObject *go = (GroupObject *)o;
	PyObject *opts = NULL, *u;
	struct tern_session_opts so;
	tern_listener *l;
	const char *uri;
	int rc;

	if (!PyArg_ParseTuple(args, "s|O:listen", &uri, &opts) || group_setup_check(go))
		return NULL;
	if (opts && opts != Py_None && !PyDict_Check(opts)) {
		PyErr_SetString(PyExc_TypeError, "listen: options must be a dict");
		return NULL;
	}
	if (session_opts_parse(opts, &so))
		return NULL;
	so.on_close = group_on_session_close;
	rc = tern_group_listen(go->g, uri, &so, group_on_accept, go, &l);
	if (rc)
		return group_raise(go, rc);
	u = PyUnicode_FromString(tern_listener_uri(l));
	if (u && !go->uri)
		go->uri = Py_NewRef(u);
	return u;
}

static PyObject *group_start(PyObject *o, PyObject *unused)
{
	GroupObject *go = (GroupObject *)o;
	int rc;

	(void)unused;
	if (group_check(go))
		return NULL;
	if (go->started)
		return raise_code(-EBUSY, "tern: the group is started already");
	rc = tern_group_start(go->g);
	/* Even on failure: what started stops in close(), not start() again. */
	go->started = true;
	if (rc)
		return raise_code(rc, "tern_group_start: a thread (the acceptor's or a member's) "
				      "did not start; close() the group");
	Py_RETURN_NONE;
}

/* stop(): every member stops and closes its sessions; close() frees. */
static PyObject *group_stop(PyObject *o, PyObject *args)
{
	GroupObject *go = (GroupObject *)o;
	int i = -1;

	if (!PyArg_ParseTuple(args, "|i:stop", &i) || group_check(go))
		return NULL;
	if (i < -1 || i >= (int)go->n) {
		PyErr_Format(PyExc_ValueError, "stop: member %d of %u", i, go->n);
		return NULL;
	}
	for (unsigned k = 0; k < go->n; k++)
		if (i < 0 || (unsigned)i == k)
			tern_group_member_stop(go->g, k); /* -ENOENT: gone already */
	Py_RETURN_NONE;
}

static PyObject *counts_tuple(GroupObject *go, unsigned long *v)
{
	PyObject *t = PyTuple_New(go->n);

	for (unsigned i = 0; t && i < go->n; i++) {
		PyObject *x = PyLong_FromUnsignedLong(__atomic_load_n(&v[i], __ATOMIC_RELAXED));

		if (!x) {
			Py_CLEAR(t);
			break;
		}
		PyTuple_SET_ITEM(t, i, x);
	}
	return t;
}

static PyObject *group_get_accepted(PyObject *o, void *unused)
{
	(void)unused;
	return counts_tuple((GroupObject *)o, ((GroupObject *)o)->accepted);
}

static PyObject *group_get_ended(PyObject *o, void *unused)
{
	(void)unused;
	return counts_tuple((GroupObject *)o, ((GroupObject *)o)->ended);
}

static PyObject *group_get_alive(PyObject *o, void *unused)
{
	GroupObject *go = (GroupObject *)o;
	PyObject *t = PyTuple_New(go->n);

	(void)unused;
	for (unsigned i = 0; t && i < go->n; i++)
		PyTuple_SET_ITEM(t, i, PyBool_FromLong(!go->closed && tern_group_member(go->g, i)));
	return t;
}

static PyObject *group_get_refused(PyObject *o, void *unused)
{
	(void)unused;
	return PyLong_FromUnsignedLong(
		__atomic_load_n(&((GroupObject *)o)->refused, __ATOMIC_RELAXED));
}

static PyObject *group_get_uri(PyObject *o, void *unused)
{
	GroupObject *go = (GroupObject *)o;

	(void)unused;
	return Py_NewRef(go->uri ? go->uri : Py_None);
}

static int group_traverse(PyObject *o, visitproc visit, void *arg)
{
	Py_VISIT(((GroupObject *)o)->regs);
	return 0;
}

/* A cycle through a handler: close first, so no member calls a handler
 * being cleared; never on a member's own thread (close would join it). */
static int group_clear(PyObject *o)
{
	GroupObject *go = (GroupObject *)o;

	if (!go->closed && group_here != go && group_close_impl(go))
		PyErr_Clear();
	if (go->closed)
		Py_CLEAR(go->regs);
	return 0;
}

static void group_dealloc(PyObject *o)
{
	GroupObject *go = (GroupObject *)o;

	PyObject_GC_UnTrack(o);
	if (!go->closed && group_here == go) {
		/* The last reference went in one of its own handlers: the
		 * group cannot join the thread this runs on.  Its members
		 * stop; the group and its handlers are left behind. */
		for (unsigned i = 0; i < go->n; i++)
			tern_group_member_stop(go->g, i);
		if (PyErr_WarnEx(PyExc_ResourceWarning,
				 "tern: a Group freed in its own handler is leaked; close() it", 1))
			PyErr_Clear();
		return;
	}
	if (!go->closed && group_close_impl(go))
		PyErr_WriteUnraisable(o);
	Py_XDECREF(go->regs);
	Py_XDECREF(go->uri);
	Py_TYPE(o)->tp_free(o);
}

static PyObject *group_enter(PyObject *o, PyObject *unused)
{
	(void)unused;
	return Py_NewRef(o);
}

static PyObject *group_exit(PyObject *o, PyObject *args)
{
	(void)args;
	return group_close(o, NULL);
}

static PyMethodDef group_methods[] = {
	{"register", group_register, METH_VARARGS,
	 "register(method_id, kind, fn): a Python handler (kind 0 raw, 1 inplace, 3 "
	 "oneway) on every member"},
	{"register_c", group_register_c, METH_VARARGS,
	 "register_c(method_id, fn, user=0): a C tern_inplace_handler at address fn"},
	{"service_register", group_service_register, METH_VARARGS, NULL},
	{"listen", group_listen, METH_VARARGS, "listen(uri, opts=None) -> the URI to connect to"},
	{"start", group_start, METH_NOARGS, "start the acceptor and the members' threads"},
	{"stop", group_stop, METH_VARARGS,
	 "stop(member=-1): stop one member, or all; their sessions close"},
	{"close", group_close, METH_NOARGS, "stop every member and free the group"},
	{"__enter__", group_enter, METH_NOARGS, NULL},
	{"__exit__", group_exit, METH_VARARGS, NULL},
	{NULL},
};

static PyGetSetDef group_getset[] = {
	{"accepted", group_get_accepted, NULL, "sessions each member accepted", NULL},
	{"ended", group_get_ended, NULL, "sessions each member saw end", NULL},
	{"alive", group_get_alive, NULL, "which members still run (or wait to)", NULL},
	{"refused", group_get_refused, NULL, "connections the members refused", NULL},
	{"uri", group_get_uri, NULL, "the first listen()'s URI, or None", NULL},
	{NULL},
};

static PyMemberDef group_members[] = {
	{"members", T_UINT, offsetof(GroupObject, n), READONLY, "how many member contexts"},
	{"closed", T_BOOL, offsetof(GroupObject, closed), READONLY, NULL},
	{"started", T_BOOL, offsetof(GroupObject, started), READONLY, NULL},
	{NULL},
};

static PyTypeObject GroupType = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._tern.Group",
	.tp_basicsize = sizeof(GroupObject),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "N member contexts on N threads tern starts, serving one URI.",
	.tp_new = group_new,
	.tp_dealloc = group_dealloc,
	.tp_traverse = group_traverse,
	.tp_clear = group_clear,
	.tp_methods = group_methods,
	.tp_getset = group_getset,
	.tp_members = group_members,
};

/* ---- module ------------------------------------------------------------------------- */

/* _set_error_factory(fn, RpcError): how codes become exceptions, and back. */
static PyObject *mod_set_error_factory(PyObject *m, PyObject *args)
{
	PyObject *fn, *base;

	(void)m;
	if (!PyArg_ParseTuple(args, "OO:_set_error_factory", &fn, &base))
		return NULL;
	Py_INCREF(fn);
	Py_INCREF(base);
	Py_XSETREF(error_factory, fn);
	Py_XSETREF(rpc_error, base);
	Py_RETURN_NONE;
}

static PyObject *mod_strerror(PyObject *m, PyObject *args)
{
	int code;

	(void)m;
	if (!PyArg_ParseTuple(args, "i:strerror", &code))
		return NULL;
	return Py_BuildValue("(ss)", tern_err_name(code), tern_strerror(code));
}

static PyMethodDef mod_methods[] = {
	{"_set_error_factory", mod_set_error_factory, METH_VARARGS, NULL},
	{"strerror", mod_strerror, METH_VARARGS, "strerror(code) -> (name, message)"},
	{NULL},
};

static struct PyModuleDef tern_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "tern._tern",
	.m_doc = "The C half of tern's Python bindings.",
	.m_size = -1,
	.m_methods = mod_methods,
};

PyMODINIT_FUNC PyInit__tern(void);

PyMODINIT_FUNC PyInit__tern(void)
{
	PyTypeObject *types[] = {&CtxType,   &ViewType, &RequestType, &SessionType, &FutureType,
				 &BatchType, &MemType,	&SlotType,    &GroupType};
	PyObject *m;

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (PyType_Ready(types[i]))
			return NULL;
	m = PyModule_Create(&tern_module);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "Context", (PyObject *)&CtxType) ||
	    PyModule_AddObjectRef(m, "SlotView", (PyObject *)&ViewType) ||
	    PyModule_AddObjectRef(m, "Request", (PyObject *)&RequestType) ||
	    PyModule_AddObjectRef(m, "Session", (PyObject *)&SessionType) ||
	    PyModule_AddObjectRef(m, "Future", (PyObject *)&FutureType) ||
	    PyModule_AddObjectRef(m, "Batch", (PyObject *)&BatchType) ||
	    PyModule_AddObjectRef(m, "Memory", (PyObject *)&MemType) ||
	    PyModule_AddObjectRef(m, "CallSlot", (PyObject *)&SlotType) ||
	    PyModule_AddObjectRef(m, "Group", (PyObject *)&GroupType) ||
	    PyModule_AddIntConstant(m, "GROUP_MAX", TERN_GROUP_MAX) ||
	    PyModule_AddIntConstant(m, "PROGRESS_BUSY", TERN_PROGRESS_BUSY) ||
	    PyModule_AddIntConstant(m, "PROGRESS_EVENT", TERN_PROGRESS_EVENT) ||
	    PyModule_AddIntConstant(m, "PROGRESS_ADAPTIVE", TERN_PROGRESS_ADAPTIVE) ||
	    PyModule_AddIntConstant(m, "ENOMETHOD", TERN_ENOMETHOD) ||
	    PyModule_AddIntConstant(m, "ENOSERVICE", TERN_ENOSERVICE) ||
	    PyModule_AddIntConstant(m, "ESCHEMA", TERN_ESCHEMA) ||
	    PyModule_AddIntConstant(m, "EVERSION", TERN_EVERSION) ||
	    PyModule_AddIntConstant(m, "EGEOMETRY", TERN_EGEOMETRY) ||
	    PyModule_AddIntConstant(m, "EREMOTE", TERN_EREMOTE) ||
	    PyModule_AddIntConstant(m, "EPEER", TERN_EPEER) ||
	    PyModule_AddStringConstant(m, "version", tern_version_string())) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
