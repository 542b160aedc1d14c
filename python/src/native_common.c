#include "native_common.h"
#include <errno.h>
#include <string.h>

static const char *kind_name(gs_kind kind) {
    switch (kind) {
    case GS_F32: return "float32";
    case GS_F64: return "float64";
    case GS_BF16_BITS: return "bfloat16 (as 16-bit integer bits)";
    case GS_F16: return "float16";
    case GS_I64: return "int64";
    case GS_I32: return "int32";
    case GS_U8: return "uint8";
    case GS_BOOL: return "bool";
    case GS_ANY_FLOAT: return "float32, float64, float16 or bfloat16";
    }
    return "?";
}

/* The buffer format with byte-order/alignment prefixes stripped ("<f" -> 'f'). */
static char format_char(const Py_buffer *view) {
    const char *f = view->format ? view->format : "B";
    while (*f == '@' || *f == '=' || *f == '<' || *f == '!') f++;
    if (f[0] == '\0' || f[1] != '\0') return '\0';
    return f[0];
}

static int matches(const Py_buffer *view, gs_kind kind) {
    char c = format_char(view);
    Py_ssize_t s = view->itemsize;
    switch (kind) {
    case GS_F32: return c == 'f' && s == 4;
    case GS_F64: return c == 'd' && s == 8;
    case GS_F16: return c == 'e' && s == 2;
    case GS_BF16_BITS: return (c == 'h' || c == 'H') && s == 2;
    case GS_I64: return (c == 'l' || c == 'q') && s == 8;
    case GS_I32: return (c == 'i' || (c == 'l' && s == 4)) && s == 4;
    case GS_U8: return c == 'B' && s == 1;
    case GS_BOOL: return c == '?' && s == 1;
    case GS_ANY_FLOAT:
        return (c == 'f' && s == 4) || (c == 'd' && s == 8) || (c == 'e' && s == 2) ||
               ((c == 'h' || c == 'H') && s == 2);
    }
    return 0;
}

int gs_float_dtype(const Py_buffer *view) {
    char c = format_char(view);
    if (c == 'f' && view->itemsize == 4) return GRPO_F32;
    if (c == 'd' && view->itemsize == 8) return GRPO_F64;
    if (c == 'e' && view->itemsize == 2) return GRPO_F16;
    if ((c == 'h' || c == 'H') && view->itemsize == 2) return GRPO_BF16;
    return -1;
}

Py_ssize_t gs_numel(const Py_buffer *view) {
    return view->itemsize > 0 ? view->len / view->itemsize : 0;
}

/* Returned for an optional argument given as None: all zero, never written. */
static Py_buffer none_view;

Py_buffer *gs_acquire(gs_buffers *set, PyObject *obj, const char *func, const char *arg,
                      gs_kind kind, int ndim, int writable, int optional) {
    if (obj == Py_None) {
        if (optional) return &none_view;
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be a %s array, got None",
                     func, arg, kind_name(kind));
        return NULL;
    }
    if (set->count >= GS_MAXBUF) {
        PyErr_Format(PyExc_RuntimeError, "%s(): too many buffers (internal error)", func);
        return NULL;
    }
    Py_buffer *view = &set->views[set->count];
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        /* Re-raise with the argument's name: numpy's own message does not name it. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *msg = value ? PyObject_Str(value) : NULL;
        const char *detail = msg ? PyUnicode_AsUTF8(msg) : NULL;
        if (!detail) PyErr_Clear();
        int is_type = type == NULL || PyErr_GivenExceptionMatches(type, PyExc_TypeError);
        PyErr_Format(is_type && !PyObject_CheckBuffer(obj) ? PyExc_TypeError : PyExc_ValueError,
                     "%s(): argument '%s' must be a C-contiguous%s %s buffer, got %.200s (%s)",
                     func, arg, writable ? " writable" : "", kind_name(kind),
                     Py_TYPE(obj)->tp_name, detail ? detail : "no buffer interface");
        Py_XDECREF(msg);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    set->count++;
    if (!matches(view, kind)) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must have dtype %s, got format '%s' (itemsize %zd)",
                     func, arg, kind_name(kind), view->format ? view->format : "B", view->itemsize);
        return NULL;
    }
    if (ndim >= 0 && view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must be %d-dimensional, got %d dimensions",
                     func, arg, ndim, view->ndim);
        return NULL;
    }
    return view;
}

void gs_release(gs_buffers *set) {
    for (int i = 0; i < set->count; i++) PyBuffer_Release(&set->views[i]);
    set->count = 0;
}

PyObject *gs_raise_status(grpo_status status, const char *func, const char *msg) {
    const char *m = (msg && msg[0]) ? msg : grpo_status_name(status);
    switch (status) {
    case GRPO_OK:
        PyErr_Format(PyExc_SystemError, "%s(): kernel reported success as an error", func);
        break;
    case GRPO_ERR_DTYPE:
    case GRPO_ERR_NULL:
        PyErr_Format(PyExc_TypeError, "%s(): %s", func, m);
        break;
    case GRPO_ERR_SHAPE:
    case GRPO_ERR_VALUE:
    case GRPO_ERR_OVERFLOW:
        PyErr_Format(PyExc_ValueError, "%s(): %s", func, m);
        break;
    case GRPO_ERR_NOMEM:
        PyErr_Format(PyExc_MemoryError, "%s(): %s", func, m);
        break;
    case GRPO_ERR_INTERRUPTED:
        /* Ctrl-C: run Python's pending signal handlers (default_int_handler raises
         * KeyboardInterrupt); the kernel stopped, so raise it even if no handler did. */
        if (PyErr_CheckSignals() == 0 && !PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        break;
    default:
        PyErr_Format(PyExc_RuntimeError, "%s(): internal error in grpo_swift: %s", func, m);
        break;
    }
    return NULL;
}

int gs_int32_arg(PyObject *obj, const char *func, const char *arg, int32_t *out) {
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be an int, got %.200s", func, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < INT32_MIN || v > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' out of range: %ld", func, arg, v);
        return -1;
    }
    *out = (int32_t)v;
    return 0;
}

int gs_double_arg(PyObject *obj, const char *func, const char *arg, double *out) {
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be a float, got %.200s", func, arg,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    *out = v;
    return 0;
}

PyObject *gs_finish(gs_buffers *set, grpo_status status, const char *func, const char *msg) {
    gs_release(set);
    if (status != GRPO_OK) return gs_raise_status(status, func, msg);
    Py_RETURN_NONE;
}

double gs_bytes(const gs_buffers *set) {
    double total = 0;
    for (int i = 0; i < set->count; i++) total += (double)set->views[i].len;
    return total;
}

/* ---- Ctrl-C during a kernel call (see native_common.h) ------------------------------------ */

/* Written by the SIGINT handler (atomic store), read by the kernels (relaxed atomic loads).
 * Only main-thread calls use it, and the main thread runs one kernel call at a time. */
static int32_t gs_sigint_flag;
/* The SIGINT action our handler replaced (chained to); valid while a scope is active. */
static struct sigaction gs_chained;

static void gs_sigint_handler(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    __atomic_store_n(&gs_sigint_flag, 1, __ATOMIC_RELAXED);
    /* Python's handler (async-signal-safe by design) records the signal for PyErr_CheckSignals. */
    if (gs_chained.sa_flags & SA_SIGINFO) {
        if (gs_chained.sa_sigaction) gs_chained.sa_sigaction(sig, info, context);
    } else if (gs_chained.sa_handler != SIG_DFL && gs_chained.sa_handler != SIG_IGN &&
               gs_chained.sa_handler != NULL) {
        gs_chained.sa_handler(sig);
    }
    errno = saved_errno;
}

/* Whether Python's SIGINT handler is signal.default_int_handler (Ctrl-C raises
 * KeyboardInterrupt). A custom handler (e.g. a trainer's graceful-stop flag) is respected: the
 * kernel then runs to completion and Python calls that handler afterwards. */
static int gs_python_raises_on_sigint(void) {
    PyObject *signal = PyImport_ImportModule("signal");
    if (!signal) { PyErr_Clear(); return 0; }
    PyObject *handler = PyObject_CallMethod(signal, "getsignal", "i", SIGINT);
    PyObject *deflt = PyObject_GetAttrString(signal, "default_int_handler");
    int yes = handler && deflt && handler == deflt;
    Py_XDECREF(handler);
    Py_XDECREF(deflt);
    Py_DECREF(signal);
    if (PyErr_Occurred()) PyErr_Clear();
    return yes;
}

void gs_interrupt_enter(gs_interrupt *scope, double work) {
    scope->active = 0;
    if (work < GS_INTERRUPTIBLE_WORK || !_PyOS_IsMainThread() || grpo_get_interrupt_flag() != NULL ||
        !gs_python_raises_on_sigint())
        return;
    __atomic_store_n(&gs_sigint_flag, 0, __ATOMIC_RELAXED);
    struct sigaction current;
    if (sigaction(SIGINT, NULL, &current) != 0) return;
    if (!(current.sa_flags & SA_SIGINFO) && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN))
        return; /* nothing to chain to: leave the process's disposition alone */
    gs_chained = current;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = gs_sigint_handler;
    action.sa_flags = SA_SIGINFO | (current.sa_flags & SA_ONSTACK);
    action.sa_mask = current.sa_mask;
    if (sigaction(SIGINT, &action, &scope->previous) != 0) return;
    if (grpo_set_interrupt_flag(&gs_sigint_flag) != GRPO_OK) {
        sigaction(SIGINT, &scope->previous, NULL);
        return;
    }
    scope->previous_flag = NULL;
    scope->active = 1;
}

void gs_interrupt_exit(gs_interrupt *scope) {
    if (!scope->active) return;
    sigaction(SIGINT, &scope->previous, NULL);
    grpo_set_interrupt_flag(scope->previous_flag);
    scope->active = 0;
}
