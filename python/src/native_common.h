/*
 * Shared plumbing of the grpo_swift._native extension: buffer acquisition with
 * argument-named errors, and the one mapping from grpo_status to Python exceptions.
 * Each kernel family has its own native_<family>.c with its PyMethodDef entries.
 */
#ifndef GRPO_NATIVE_COMMON_H
#define GRPO_NATIVE_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <signal.h>
#include "grpo_swift.h"

#define GS_ERRLEN 512
#define GS_MAXBUF 16

/* Element kinds a buffer may be checked against. */
typedef enum gs_kind {
    GS_F32, GS_F64, GS_BF16_BITS, GS_F16, GS_I64, GS_I32, GS_U8, GS_BOOL, GS_ANY_FLOAT
} gs_kind;

/*
 * A set of Py_buffers that a call holds until after the kernel ran (and the GIL is
 * re-acquired). gs_release() releases every one; safe to call more than once.
 */
typedef struct gs_buffers {
    Py_buffer views[GS_MAXBUF];
    int count;
} gs_buffers;

/*
 * Acquires `obj` as a C-contiguous buffer of `ndim` dimensions (ndim < 0: any) whose
 * element type matches `kind`. `writable` requests a writable buffer. On failure sets a
 * TypeError/ValueError naming `func` and `arg` and returns NULL. `obj == Py_None` with
 * `optional` returns a view with buf == NULL (not added to the set).
 */
Py_buffer *gs_acquire(gs_buffers *set, PyObject *obj, const char *func, const char *arg,
                      gs_kind kind, int ndim, int writable, int optional);

/* Releases every buffer in the set. */
void gs_release(gs_buffers *set);

/* The dtype code (GRPO_F32, GRPO_F64, GRPO_BF16, GRPO_F16) of an acquired float buffer,
 * or -1. bfloat16 travels as int16/uint16 bits ('h'/'H') and is named by the caller. */
int gs_float_dtype(const Py_buffer *view);

/* Number of elements of an acquired buffer. */
Py_ssize_t gs_numel(const Py_buffer *view);

/* Reads a Python int into an int32 (TypeError/ValueError naming fn and arg); 0 on success. */
int gs_int32_arg(PyObject *obj, const char *func, const char *arg, int32_t *out);

/* Reads a Python float (or int) into a double; 0 on success. */
int gs_double_arg(PyObject *obj, const char *func, const char *arg, double *out);

/* Ends a wrapper after its kernel ran: releases the buffers, then returns None on GRPO_OK or
 * raises the status's exception (returns NULL). Early failures still `goto exit`. */
PyObject *gs_finish(gs_buffers *set, grpo_status status, const char *func, const char *msg);

/* Maps a non-OK status plus the kernel's message to an exception; returns NULL. */
PyObject *gs_raise_status(grpo_status status, const char *func, const char *msg);

/* Loss helpers shared by policy_loss and fused_linear_loss (native_loss.c). */
/* Parses LossConfig._native_tuple into *cfg (zeroed first); 0, or -1 with an exception set. */
int gs_loss_config_arg(PyObject *tuple, grpo_loss_config *cfg);
/* The number of grpo_loss_metrics fields. */
#define GS_LOSS_METRICS 18
/* The grpo_loss_metrics fields in header order into out. */
void gs_loss_metrics_fill(const grpo_loss_metrics *m, double out[GS_LOSS_METRICS]);
/* The same as a tuple of floats (new reference or NULL). */
PyObject *gs_loss_metrics_tuple(const grpo_loss_metrics *m);
/* grpo_policy_loss with the GIL released and Ctrl-C handled (GS_KERNEL_BEGIN(work)); 0, or -1
 * with the status's exception set (naming fn). */
int gs_policy_loss_call(const grpo_loss_inputs *in, const grpo_loss_config *cfg, void *grad, void *grad_entropies,
                        grpo_loss_metrics *m, const char *fn, double work);
/* A 0/1 mask of n elements into uint8 (kind 1 signed integer, 2 uint8/bool, 3 float32, 4 float64;
 * itemsize in bytes): the index of the first other value, or -1. The GIL may be released. */
Py_ssize_t gs_mask_convert(int kind, Py_ssize_t itemsize, const void *src, uint8_t *out, Py_ssize_t n);

/*
 * Ctrl-C during a kernel call (see "Interruption" in grpo_swift.h).
 *
 * Every wrapper runs its kernel between GS_KERNEL_BEGIN(work) and GS_KERNEL_END instead of
 * Py_BEGIN/END_ALLOW_THREADS. For a call made from the main thread of the main interpreter,
 * while Python's SIGINT handler is signal.default_int_handler (Ctrl-C would raise
 * KeyboardInterrupt) and the call's work estimate is at least GS_INTERRUPTIBLE_WORK (the bytes of
 * its buffers, gs_bytes(&set), or an LM-head GEMM's multiply-adds / 8, about the same time per
 * unit: smaller calls take ~0.1 ms and skip the three sigaction system calls), gs_interrupt_enter
 * clears a static flag, registers it with grpo_set_interrupt_flag for this thread and installs a
 * SIGINT handler that only stores 1 into the flag (an async-signal-safe atomic store) and then
 * chains to the handler it replaced (Python's, which records the signal as usual). With the GIL
 * re-acquired, gs_interrupt_exit restores the previous handler and registration. The kernel
 * returns GRPO_ERR_INTERRUPTED, and gs_raise_status runs Python's pending signal handlers
 * (PyErr_CheckSignals), which raise KeyboardInterrupt. Calls from other threads are untouched
 * (they have no flag registered), so they keep running and stay bitwise identical.
 */
#define GS_INTERRUPTIBLE_WORK ((double)(1 << 20))

typedef struct gs_interrupt {
    int active;                   /* the handler is installed and the flag registered */
    const int32_t *previous_flag; /* this thread's registration before the call */
    struct sigaction previous;    /* the SIGINT action before the call */
} gs_interrupt;

/* Total bytes of the buffers in the set (a kernel's usual work estimate). */
double gs_bytes(const gs_buffers *set);

/* With the GIL held: installs the SIGINT handler and flag for a large main-thread call. */
void gs_interrupt_enter(gs_interrupt *scope, double work);

/* With the GIL held, after the kernel returned: restores the handler and the registration. */
void gs_interrupt_exit(gs_interrupt *scope);

/* Release the GIL around a kernel call, interruptible by Ctrl-C (see above). */
#define GS_KERNEL_BEGIN(work)                                                                  \
    {                                                                                          \
        gs_interrupt gs_scope_;                                                                \
        gs_interrupt_enter(&gs_scope_, (work));                                                \
        Py_BEGIN_ALLOW_THREADS
#define GS_KERNEL_END                                                                          \
        Py_END_ALLOW_THREADS                                                                   \
        gs_interrupt_exit(&gs_scope_);                                                         \
    }

/* Method tables of the kernel families, NULL-terminated. */
extern PyMethodDef gs_core_methods[];
extern PyMethodDef gs_advantages_methods[];
extern PyMethodDef gs_loss_methods[];
extern PyMethodDef gs_logprobs_methods[];
extern PyMethodDef gs_estimators_methods[];
extern PyMethodDef gs_fused_loss_methods[];
extern PyMethodDef gs_torch_methods[];

#endif
