// SPDX-License-Identifier: MIT
/*
 * tern._rnr - the soft-RNR monitor of <tern/rnr.h>, for Python.
 *
 * A thin layer: Monitor wraps a tern_rnr_monitor, Snapshot a
 * tern_rnr_snapshot, and readings come back as plain tuples.  The friendly
 * API (names, mappings, exceptions) is tern/rnr.py; every sysfs read, name
 * mapping and reset rule stays in src/rnr.c.
 *
 * A C monitor is not thread-safe, so each Monitor carries a lock.  Readings
 * are a few hundred small file reads: they run with the GIL released, under
 * that lock, so other Python threads keep running meanwhile.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include <tern/rnr.h>

typedef struct {
	PyObject ob_base;      /* PyObject_HEAD */
	tern_rnr_monitor *mon; /* NULL once closed */
	PyThread_type_lock lock;
} MonitorObject;

typedef struct {
	PyObject ob_base; /* PyObject_HEAD */
	tern_rnr_snapshot *snap;
} SnapshotObject;

static PyTypeObject Monitor_Type;
static PyTypeObject Snapshot_Type;

static const char *const group_names[] = {"hw_counters", "counters"};

/* A negative errno from the C API as the matching OSError subclass. */
static PyObject *raise_errno(int rc)
{
	PyObject *args;

	if (rc == -ENOMEM)
		return PyErr_NoMemory();
	args = Py_BuildValue("(is)", -rc, tern_strerror(rc));
	if (args) {
		PyErr_SetObject(PyExc_OSError, args);
		Py_DECREF(args);
	}
	return NULL;
}

/* sysfs names are bytes; decode them the way os.listdir() would. */
static PyObject *fs_str(const char *s)
{
	return PyUnicode_DecodeFSDefault(s);
}

/* ---- Snapshot ------------------------------------------------------------ */

static PyObject *snapshot_wrap(tern_rnr_snapshot *snap)
{
	SnapshotObject *o = PyObject_New(SnapshotObject, &Snapshot_Type);

	if (!o) {
		tern_rnr_snapshot_free(snap);
		return NULL;
	}
	o->snap = snap;
	return (PyObject *)o;
}

static void Snapshot_dealloc(SnapshotObject *self)
{
	tern_rnr_snapshot_free(self->snap);
	PyObject_Free(self);
}

/*
 * (name, raw, canonical or None, group, status, errno, value or None,
 *  total, delta, resets), errno positive as Python has it.
 */
static PyObject *counter_tuple(const struct tern_rnr_counter *c)
{
	PyObject *value;

	if (c->status == TERN_RNR_OK)
		value = PyLong_FromUnsignedLongLong(c->value);
	else
		value = Py_NewRef(Py_None);
	if (!value)
		return NULL;
	return Py_BuildValue("(NNNssiNKKI)", fs_str(c->name), fs_str(c->raw),
			     c->canonical ? fs_str(c->canonical) : Py_NewRef(Py_None),
			     group_names[c->group], tern_rnr_status_name(c->status), -c->err, value,
			     (unsigned long long)c->total, (unsigned long long)c->delta,
			     (unsigned int)c->resets);
}

/* (device, port, state, lifespan_ms or None, [counter tuples]) */
static PyObject *port_tuple(const struct tern_rnr_port *p)
{
	PyObject *counters = PyList_New((Py_ssize_t)p->n_counters);
	PyObject *lifespan;

	if (!counters)
		return NULL;
	for (size_t j = 0; j < p->n_counters; j++) {
		PyObject *c = counter_tuple(&p->counters[j]);
		if (!c) {
			Py_DECREF(counters);
			return NULL;
		}
		PyList_SET_ITEM(counters, (Py_ssize_t)j, c);
	}
	lifespan = p->lifespan_ms < 0 ? Py_NewRef(Py_None) : PyLong_FromLongLong(p->lifespan_ms);
	if (!lifespan) {
		Py_DECREF(counters);
		return NULL;
	}
	return Py_BuildValue("(NIsNN)", fs_str(p->device), (unsigned int)p->port,
			     tern_rnr_port_state_name(p->state), lifespan, counters);
}

static PyObject *Snapshot_ports(SnapshotObject *self, PyObject *unused)
{
	const struct tern_rnr_port *ports;
	PyObject *list;
	size_t n;

	(void)unused;
	ports = tern_rnr_snapshot_ports(self->snap, &n);
	if (!(list = PyList_New((Py_ssize_t)n)))
		return NULL;
	for (size_t i = 0; i < n; i++) {
		PyObject *p = port_tuple(&ports[i]);
		if (!p) {
			Py_DECREF(list);
			return NULL;
		}
		PyList_SET_ITEM(list, (Py_ssize_t)i, p);
	}
	return list;
}

static PyObject *Snapshot_find(SnapshotObject *self, PyObject *args)
{
	const struct tern_rnr_counter *c;
	const char *device, *name;
	unsigned int port;
	int rc;

	if (!PyArg_ParseTuple(args, "sIs:find", &device, &port, &name))
		return NULL;
	rc = tern_rnr_snapshot_find(self->snap, device, port, name, &c);
	if (rc == -ENOENT)
		Py_RETURN_NONE;
	if (rc)
		return raise_errno(rc);
	return counter_tuple(c);
}

/*
 * delta(device or None, port, name) -> (delta, errno): errno 0, ENOENT (no
 * such counter), or why a matching counter could not be read now, with the
 * delta still what is known.  The Python layer turns these into exceptions.
 */
static PyObject *Snapshot_delta(SnapshotObject *self, PyObject *args)
{
	const char *device, *name;
	unsigned int port;
	uint64_t delta = 0;
	int rc;

	if (!PyArg_ParseTuple(args, "zIs:delta", &device, &port, &name))
		return NULL;
	rc = tern_rnr_snapshot_delta(self->snap, device, port, name, &delta);
	if (rc == -EINVAL)
		return raise_errno(rc);
	return Py_BuildValue("(Ki)", (unsigned long long)delta, -rc);
}

/* rate(older, device or None, port, name) -> (per_sec, errno), as delta. */
static PyObject *Snapshot_rate(SnapshotObject *self, PyObject *args)
{
	SnapshotObject *older;
	const char *device, *name;
	unsigned int port;
	double per_sec = 0;
	int rc;

	if (!PyArg_ParseTuple(args, "O!zIs:rate", &Snapshot_Type, &older, &device, &port, &name))
		return NULL;
	rc = tern_rnr_rate(older->snap, self->snap, device, port, name, &per_sec);
	if (rc == -EINVAL) {
		PyErr_SetString(PyExc_ValueError,
				"rates need two snapshots of one monitor, older first");
		return NULL;
	}
	return Py_BuildValue("(di)", per_sec, -rc);
}

static PyObject *Snapshot_time_ns(SnapshotObject *self, void *closure)
{
	(void)closure;
	return PyLong_FromUnsignedLongLong(tern_rnr_snapshot_time_ns(self->snap));
}

static PyMethodDef Snapshot_methods[] = {
	{"ports", (PyCFunction)Snapshot_ports, METH_NOARGS,
	 "ports() -> [(device, port, state, lifespan_ms, [counter tuples])]"},
	{"find", (PyCFunction)Snapshot_find, METH_VARARGS,
	 "find(device, port, name) -> counter tuple, or None"},
	{"delta", (PyCFunction)Snapshot_delta, METH_VARARGS,
	 "delta(device or None, port, name) -> (delta, errno)"},
	{"rate", (PyCFunction)Snapshot_rate, METH_VARARGS,
	 "rate(older, device or None, port, name) -> (per_sec, errno)"},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef Snapshot_getset[] = {
	{"time_ns", (getter)Snapshot_time_ns, NULL, "the monitor's clock at the reading, in ns",
	 NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Snapshot_Type = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._rnr.Snapshot",
	.tp_basicsize = sizeof(SnapshotObject),
	.tp_dealloc = (destructor)Snapshot_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "One reading of a Monitor (made by Monitor.read(); not constructible).",
	.tp_methods = Snapshot_methods,
	.tp_getset = Snapshot_getset,
};

/* ---- Monitor ------------------------------------------------------------- */

static void Monitor_dealloc(MonitorObject *self)
{
	tern_rnr_monitor_destroy(self->mon);
	if (self->lock)
		PyThread_free_lock(self->lock);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Monitor_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
	static char *kwlist[] = {"root", "device", NULL};
	struct tern_rnr_opts o;
	PyObject *root = NULL;
	const char *device = NULL;
	MonitorObject *self;
	PyThreadState *ts;
	int rc;

	if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O&z:Monitor", kwlist,
					 PyUnicode_FSConverter, &root, &device))
		return NULL;
	if (!(self = (MonitorObject *)type->tp_alloc(type, 0))) {
		Py_XDECREF(root);
		return NULL;
	}
	if (!(self->lock = PyThread_allocate_lock())) {
		Py_XDECREF(root);
		Py_DECREF(self);
		return PyErr_NoMemory();
	}
	tern_rnr_opts_init(&o);
	o.sysfs_root = root ? PyBytes_AS_STRING(root) : NULL;
	o.device = device;
	/* The first scan (the baseline) reads sysfs: no GIL for it. */
	ts = PyEval_SaveThread();
	rc = tern_rnr_monitor_create(&o, &self->mon);
	PyEval_RestoreThread(ts);
	Py_XDECREF(root);
	if (rc) {
		Py_DECREF(self);
		return raise_errno(rc);
	}
	return (PyObject *)self;
}

/*
 * Take the monitor's lock without holding the GIL, so a thread waiting for
 * another's reading does not stop the interpreter.
 */
static void lock_without_gil(MonitorObject *self)
{
	PyThreadState *ts;

	if (PyThread_acquire_lock(self->lock, NOWAIT_LOCK))
		return;
	ts = PyEval_SaveThread();
	PyThread_acquire_lock(self->lock, WAIT_LOCK);
	PyEval_RestoreThread(ts);
}

/* The lock, on an open monitor: 0, or -1 with ValueError and no lock held. */
static int monitor_lock(MonitorObject *self)
{
	lock_without_gil(self);
	if (!self->mon) {
		PyThread_release_lock(self->lock);
		PyErr_SetString(PyExc_ValueError, "the RNR monitor is closed");
		return -1;
	}
	return 0;
}

static PyObject *Monitor_read(MonitorObject *self, PyObject *unused)
{
	tern_rnr_snapshot *snap = NULL;
	PyThreadState *ts;
	int rc;

	(void)unused;
	if (monitor_lock(self))
		return NULL;
	ts = PyEval_SaveThread();
	rc = tern_rnr_monitor_read(self->mon, &snap);
	PyEval_RestoreThread(ts);
	PyThread_release_lock(self->lock);
	if (rc)
		return raise_errno(rc);
	return snapshot_wrap(snap);
}

static PyObject *Monitor_rebaseline(MonitorObject *self, PyObject *unused)
{
	PyThreadState *ts;
	int rc;

	(void)unused;
	if (monitor_lock(self))
		return NULL;
	ts = PyEval_SaveThread();
	rc = tern_rnr_monitor_rebaseline(self->mon);
	PyEval_RestoreThread(ts);
	PyThread_release_lock(self->lock);
	if (rc)
		return raise_errno(rc);
	Py_RETURN_NONE;
}

/* Idempotent; snapshots already taken stay valid (they own their memory). */
static PyObject *Monitor_close(MonitorObject *self, PyObject *unused)
{
	tern_rnr_monitor *mon;

	(void)unused;
	lock_without_gil(self);
	mon = self->mon;
	self->mon = NULL;
	PyThread_release_lock(self->lock);
	tern_rnr_monitor_destroy(mon);
	Py_RETURN_NONE;
}

static PyObject *Monitor_closed(MonitorObject *self, void *closure)
{
	(void)closure;
	return PyBool_FromLong(self->mon == NULL);
}

static PyMethodDef Monitor_methods[] = {
	{"read", (PyCFunction)Monitor_read, METH_NOARGS, "read() -> Snapshot: a reading now"},
	{"rebaseline", (PyCFunction)Monitor_rebaseline, METH_NOARGS,
	 "rebaseline(): read now and make it the baseline"},
	{"close", (PyCFunction)Monitor_close, METH_NOARGS, "close(): free the monitor"},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef Monitor_getset[] = {
	{"closed", (getter)Monitor_closed, NULL, "True once close() was called", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject Monitor_Type = {
	PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tern._rnr.Monitor",
	.tp_basicsize = sizeof(MonitorObject),
	.tp_dealloc = (destructor)Monitor_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "Monitor(root=None, device=None): tern_rnr_monitor_create(); the baseline "
		  "is taken now.  root is the sysfs root (None: /sys), device an fnmatch "
		  "pattern on device names (None: all).",
	.tp_methods = Monitor_methods,
	.tp_getset = Monitor_getset,
	.tp_new = Monitor_new,
};

/* ---- module ---------------------------------------------------------------- */

static PyObject *mod_canonical_name(PyObject *mod, PyObject *arg)
{
	const char *raw = PyUnicode_AsUTF8(arg), *canonical;

	(void)mod;
	if (!raw)
		return NULL;
	canonical = tern_rnr_canonical_name(raw);
	if (!canonical)
		Py_RETURN_NONE;
	return PyUnicode_FromString(canonical);
}

static PyObject *mod_is_canonical(PyObject *mod, PyObject *arg)
{
	const char *name = PyUnicode_AsUTF8(arg);

	(void)mod;
	if (!name)
		return NULL;
	return PyBool_FromLong(tern_rnr_is_canonical(name));
}

static PyMethodDef module_methods[] = {
	{"canonical_name", mod_canonical_name, METH_O,
	 "canonical_name(raw) -> the canonical name a driver's counter maps to, or None"},
	{"is_canonical", mod_is_canonical, METH_O,
	 "is_canonical(name) -> whether name is one of the canonical names"},
	{NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *m)
{
	PyObject *canonical;

	if (PyType_Ready(&Snapshot_Type) || PyType_Ready(&Monitor_Type) ||
	    PyModule_AddObjectRef(m, "Snapshot", (PyObject *)&Snapshot_Type) ||
	    PyModule_AddObjectRef(m, "Monitor", (PyObject *)&Monitor_Type))
		return -1;
	/* In the order the C snapshot lists them. */
	canonical = Py_BuildValue(
		"(ssssssss)", TERN_RNR_RESPONDER_OUT_OF_BUFFER, TERN_RNR_REQUESTER_RNR_NAK,
		TERN_RNR_RNR_RETRIES_EXCEEDED, TERN_RNR_TRANSPORT_RETRIES_EXCEEDED,
		TERN_RNR_REQUESTER_RETRIES, TERN_RNR_REQUESTER_SEQUENCE_NAK,
		TERN_RNR_RESPONDER_DUPLICATE_REQUEST, TERN_RNR_RESPONDER_OUT_OF_SEQUENCE);
	if (!canonical || PyModule_AddObject(m, "CANONICAL", canonical)) {
		Py_XDECREF(canonical);
		return -1;
	}
	return 0;
}

static PyModuleDef_Slot module_slots[] = {
	{Py_mod_exec, module_exec},
	{0, NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT,
	.m_name = "tern._rnr",
	.m_doc = "The soft-RNR monitor of <tern/rnr.h>; use tern.RnrMonitor (tern/rnr.py).",
	.m_size = 0,
	.m_methods = module_methods,
	.m_slots = module_slots,
};

PyMODINIT_FUNC PyInit__rnr(void);

PyMODINIT_FUNC PyInit__rnr(void)
{
	return PyModuleDef_Init(&module_def);
}
