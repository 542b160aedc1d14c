/*
 * Shared plumbing of the grpo_swift._native extension: buffer acquisition with
 * argument-named errors, and the one mapping from grpo_status to Python exceptions.
 * Each kernel family has its own native_<family>.c with its PyMethodDef entries.
 */
#ifndef GRPO_NATIVE_COMMON_H
#define GRPO_NATIVE_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
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
/* The grpo_loss_metrics fields in header order as a tuple of floats (new reference or NULL). */
PyObject *gs_loss_metrics_tuple(const grpo_loss_metrics *m);

/* Method tables of the kernel families, NULL-terminated. */
extern PyMethodDef gs_core_methods[];
extern PyMethodDef gs_advantages_methods[];
extern PyMethodDef gs_loss_methods[];
extern PyMethodDef gs_logprobs_methods[];
extern PyMethodDef gs_estimators_methods[];
extern PyMethodDef gs_fused_loss_methods[];

#endif
