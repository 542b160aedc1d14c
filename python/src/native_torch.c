/*
 * grpo_swift._native.torch_policy_loss: the eager fast path of grpo_swift.torch.grpo_loss.
 *
 * The Python layer validates tensors with a dozen torch attribute reads and numpy views per
 * argument (~50-150 us a call, as much as the kernel takes at B=64 x T=1024). This function does
 * the same reads from C for the common case and calls the kernel directly on the tensors'
 * storage. It accepts only what the Python path would accept without a copy or a conversion of
 * its own making (exact torch.Tensor / nn.Parameter, strided CPU storage, contiguous, the dtypes
 * below, consistent shapes, constants that do not require grad). For anything else it returns
 * None WITHOUT side effects and the caller runs the Python path, which gives the same result or
 * raises the documented TypeError/ValueError naming the argument: error messages live in one
 * place. It does not import torch: the caller passes the torch objects it needs (`reg`, below).
 *
 * A mask of another integer or float dtype holding only 0 and 1 is converted into a temporary
 * uint8 buffer, as the Python path converts it; any other value falls back (and the Python path
 * raises with the value).
 */
#include "native_common.h"

#include <string.h>

/* The registry tuple built once by grpo_swift.torch._loss (_TORCH_REGISTRY), in this order. */
enum {
    R_TENSOR, R_PARAMETER,                          /* accepted types (exact) */
    R_F32, R_F64, R_BF16, R_F16,                    /* float dtypes */
    R_BOOL, R_U8, R_I8, R_I16, R_I32, R_I64,        /* mask-only dtypes */
    R_EMPTY,                                        /* torch.empty */
    R_STRIDED,                                      /* torch.strided */
    A_DTYPE, A_IS_CPU, A_SHAPE, A_IS_CONTIGUOUS,    /* attribute / method names */
    A_DATA_PTR, A_REQUIRES_GRAD, A_IS_NEG, A_LAYOUT,
    R_COUNT
};

typedef struct gs_tensor {
    PyObject *obj;    /* borrowed; NULL for None */
    void *data;
    PyObject *dtype;  /* borrowed from the registry */
    int ndim;
    Py_ssize_t shape[2];
    int requires_grad;
} gs_tensor;

/* The data pointer of a tensor (NULL: an exception is set, or the tensor has no storage). */
static void *data_of(PyObject *const *reg, PyObject *tensor) {
    PyObject *ptr = PyObject_CallMethodNoArgs(tensor, reg[A_DATA_PTR]);
    if (!ptr) return NULL;
    void *p = PyLong_AsVoidPtr(ptr);
    Py_DECREF(ptr);
    return p;
}

/* 1: read; 0: not on the fast path (no exception set); -1: an error to propagate. */
static int read_tensor(PyObject *obj, PyObject *const *reg, gs_tensor *t) {
    memset(t, 0, sizeof *t);
    if (obj == Py_None) return 1;
    if (Py_TYPE(obj) != (PyTypeObject *)reg[R_TENSOR] && Py_TYPE(obj) != (PyTypeObject *)reg[R_PARAMETER])
        return 0;  /* subclasses (FakeTensor, user subclasses, ...) take the Python path */
    t->obj = obj;
    int ok = 0;
    PyObject *dtype = NULL, *flag = NULL, *shape = NULL, *layout = NULL;
    if (!(layout = PyObject_GetAttr(obj, reg[A_LAYOUT]))) goto fail;
    if (layout != reg[R_STRIDED]) goto done;
    if (!(dtype = PyObject_GetAttr(obj, reg[A_DTYPE]))) goto fail;
    for (int i = R_F32; i <= R_I64; i++) {
        if (dtype == reg[i]) t->dtype = reg[i];
    }
    if (!t->dtype) goto done;
    if (!(flag = PyObject_GetAttr(obj, reg[A_IS_CPU]))) goto fail;
    if (flag != Py_True) goto done;
    Py_CLEAR(flag);
    if (!(flag = PyObject_CallMethodNoArgs(obj, reg[A_IS_CONTIGUOUS]))) goto fail;
    if (flag != Py_True) goto done;
    Py_CLEAR(flag);
    if (!(flag = PyObject_CallMethodNoArgs(obj, reg[A_IS_NEG]))) goto fail;
    if (flag != Py_False) goto done;  /* a lazily negated view: its storage holds -x */
    Py_CLEAR(flag);
    if (!(flag = PyObject_GetAttr(obj, reg[A_REQUIRES_GRAD]))) goto fail;
    t->requires_grad = flag == Py_True;
    if (!(shape = PyObject_GetAttr(obj, reg[A_SHAPE]))) goto fail;
    if (!PyTuple_Check(shape)) goto done;
    Py_ssize_t nd = PyTuple_GET_SIZE(shape);
    if (nd < 1 || nd > 2) goto done;
    t->ndim = (int)nd;
    for (Py_ssize_t i = 0; i < nd; i++) {
        t->shape[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, i));
        if (t->shape[i] <= 0) {  /* empty tensors (and errors) take the Python path */
            PyErr_Clear();
            goto done;
        }
    }
    t->data = data_of(reg, obj);
    if (!t->data) {
        PyErr_Clear();
        goto done;
    }
    ok = 1;
    goto done;
fail:
    /* A tensor whose attributes raise (functorch wrappers, storage-less tensors...): the Python
     * path decides what to say about it. */
    PyErr_Clear();
done:
    Py_XDECREF(layout);
    Py_XDECREF(dtype);
    Py_XDECREF(flag);
    Py_XDECREF(shape);
    return ok;
}

/* The storage addresses the last fast-path kernel call of this thread read and wrote, for tests
 * (torch_fast_pointers): logps, old, ref, samp, ent, adv, mask, isr, grad, grad_entropies. */
enum { N_POINTERS = 10 };
static _Thread_local const void *last_pointers[N_POINTERS];

static int float_code(PyObject *const *reg, PyObject *dtype) {
    if (dtype == reg[R_F32]) return GRPO_F32;
    if (dtype == reg[R_F64]) return GRPO_F64;
    if (dtype == reg[R_BF16]) return GRPO_BF16;
    if (dtype == reg[R_F16]) return GRPO_F16;
    return -1;
}

/* A (B,T) input like logps: same dtype and shape, and a constant unless `differentiable`. */
static int like_logps(const gs_tensor *t, const gs_tensor *lp, int grad_enabled, int differentiable) {
    if (!t->obj) return 1;
    return t->dtype == lp->dtype && t->ndim == 2 && t->shape[0] == lp->shape[0] && t->shape[1] == lp->shape[1] &&
           (differentiable || !(grad_enabled && t->requires_grad));
}

/* Advantages / IS ratio: the aux dtype, (B,), (B,1) or (B,T), a constant; its column count or 0. */
static Py_ssize_t row_cols(const gs_tensor *t, PyObject *aux, Py_ssize_t B, Py_ssize_t T, int grad_enabled) {
    if (t->dtype != aux || (grad_enabled && t->requires_grad) || t->shape[0] != B) return 0;
    if (t->ndim == 1) return 1;
    return (t->shape[1] == 1 || t->shape[1] == T) ? t->shape[1] : 0;
}

/* A new uninitialised CPU tensor of `ndim` (0, 1 or 2) dimensions and `dtype`: torch.empty(shape, dtype=dtype). */
static PyObject *new_tensor(PyObject *const *reg, int ndim, Py_ssize_t d0, Py_ssize_t d1, PyObject *dtype) {
    PyObject *shape = ndim == 0 ? PyTuple_New(0) : ndim == 1 ? Py_BuildValue("(n)", d0) : Py_BuildValue("(nn)", d0, d1);
    if (!shape) return NULL;
    PyObject *kwnames = PyTuple_Pack(1, reg[A_DTYPE]);  /* "dtype": also torch.empty's keyword */
    PyObject *args[3] = {NULL, shape, dtype};
    PyObject *out = kwnames ? PyObject_Vectorcall(reg[R_EMPTY], args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames)
                            : NULL;
    Py_XDECREF(kwnames);
    Py_DECREF(shape);
    return out;
}


/*
 * torch_policy_loss(fn, logps, old, ref, samp, ent, adv, mask, isr, config, want_grad, unlogged, reg)
 *     -> (loss, metrics, grad, grad_entropies) | None
 * want_grad: compute_grad and torch.is_grad_enabled() (the grad mode also decides whether a
 * constant that requires grad is an error: it is only with grad mode on). unlogged: a 4-tuple of
 * int bit masks (indexed by 2 * has_ref + has_ent) of the metrics this configuration does not log
 * (set to 0 in the metrics vector). grad / grad_entropies are None when autograd needs no
 * gradient (no input requires grad, or want_grad is false). Returns None when the call is not on
 * the fast path (see the file comment).
 */
static PyObject *torch_policy_loss(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 13) {
        PyErr_Format(PyExc_TypeError, "torch_policy_loss() takes 13 positional arguments (%zd given)", nargs);
        return NULL;
    }
    const char *fn = PyUnicode_Check(args[0]) ? PyUnicode_AsUTF8(args[0]) : NULL;
    PyObject *reg_tuple = args[12];
    if (!fn || !PyTuple_Check(reg_tuple) || PyTuple_GET_SIZE(reg_tuple) != R_COUNT || !PyTuple_Check(args[11]) ||
        PyTuple_GET_SIZE(args[11]) != 4) {
        PyErr_SetString(PyExc_TypeError, "torch_policy_loss(): bad fn, unlogged or registry argument (internal)");
        return NULL;
    }
    PyObject *const *reg = &PyTuple_GET_ITEM(reg_tuple, 0);
    int want_grad = PyObject_IsTrue(args[10]);
    if (want_grad < 0) return NULL;
    grpo_loss_config cfg;
    if (gs_loss_config_arg(args[9], &cfg) != 0) return NULL;

    enum { LP, OLD, REF, SAMP, ENT, ADV, MASK, ISR, N_IN };
    gs_tensor t[N_IN];
    for (int i = 0; i < N_IN; i++) {
        int r = read_tensor(args[1 + i], reg, &t[i]);
        if (r <= 0) {
            if (r < 0) return NULL;
            Py_RETURN_NONE;
        }
    }
    /* Required arguments, dtypes and shapes (the Python path phrases every error). */
    const gs_tensor *lp = &t[LP];
    int dtype = lp->obj ? float_code(reg, lp->dtype) : -1;
    if (dtype < 0 || lp->ndim != 2 || !t[ADV].obj || !t[MASK].obj) Py_RETURN_NONE;
    Py_ssize_t B = lp->shape[0], T = lp->shape[1];
    /* want_grad is false under no_grad, where constants may require grad. */
    if (!like_logps(&t[OLD], lp, want_grad, 0) || !like_logps(&t[REF], lp, want_grad, 0) ||
        !like_logps(&t[SAMP], lp, want_grad, 0) || !like_logps(&t[ENT], lp, want_grad, 1))
        Py_RETURN_NONE;
    PyObject *aux = dtype == GRPO_F64 ? reg[R_F64] : reg[R_F32];
    Py_ssize_t adv_cols = row_cols(&t[ADV], aux, B, T, want_grad);
    Py_ssize_t isr_cols = t[ISR].obj ? row_cols(&t[ISR], aux, B, T, want_grad) : 0;
    if (adv_cols == 0 || (t[ISR].obj && isr_cols == 0)) Py_RETURN_NONE;
    const gs_tensor *mask = &t[MASK];
    if (mask->ndim != 2 || mask->shape[0] != B || mask->shape[1] != T ||
        mask->dtype == reg[R_BF16] || mask->dtype == reg[R_F16])
        Py_RETURN_NONE;
    /* What the configuration requires (LossConfig states the reasons). */
    if ((cfg.beta != 0.0 && !t[REF].obj) || ((cfg.top_entropy_quantile < 1.0 || cfg.entropy_coef != 0.0) && !t[ENT].obj) ||
        (cfg.loss_type == GRPO_LOSS_VESPO && t[ISR].obj && isr_cols == 1 && T != 1))
        Py_RETURN_NONE;

    /* The mask as uint8 0/1: in place for bool/uint8, else converted (any other value: Python path). */
    uint8_t *mask_u8 = (uint8_t *)mask->data;
    uint8_t *owned_mask = NULL;
    if (mask->dtype != reg[R_BOOL] && mask->dtype != reg[R_U8]) {
        int kind;
        Py_ssize_t itemsize;
        if (mask->dtype == reg[R_I8]) kind = 1, itemsize = 1;
        else if (mask->dtype == reg[R_I16]) kind = 1, itemsize = 2;
        else if (mask->dtype == reg[R_I32]) kind = 1, itemsize = 4;
        else if (mask->dtype == reg[R_I64]) kind = 1, itemsize = 8;
        else if (mask->dtype == reg[R_F32]) kind = 3, itemsize = 4;
        else if (mask->dtype == reg[R_F64]) kind = 4, itemsize = 8;
        else Py_RETURN_NONE;
        owned_mask = PyMem_RawMalloc((size_t)(B * T));
        if (!owned_mask) return PyErr_NoMemory();
        Py_ssize_t bad;
        Py_BEGIN_ALLOW_THREADS
        bad = gs_mask_convert(kind, itemsize, mask->data, owned_mask, B * T);
        Py_END_ALLOW_THREADS
        if (bad >= 0) {
            PyMem_RawFree(owned_mask);
            Py_RETURN_NONE;
        }
        mask_u8 = owned_mask;
    }

    /* Outputs. */
    int need = want_grad && (lp->requires_grad || (t[ENT].obj && cfg.entropy_coef != 0.0 && t[ENT].requires_grad));
    int with_h = need && cfg.entropy_coef != 0.0;
    PyObject *out_dtype = dtype == GRPO_F64 ? reg[R_F64] : reg[R_F32];
    PyObject *loss = NULL, *metrics = NULL, *grad = NULL, *grad_h = NULL, *result = NULL;
    void *grad_p = NULL, *grad_h_p = NULL;
    double *mvec;
    if (!(metrics = new_tensor(reg, 1, GS_LOSS_METRICS, 0, reg[R_F64])) || !(mvec = data_of(reg, metrics))) goto exit;
    if (need && (!(grad = new_tensor(reg, 2, B, T, out_dtype)) || !(grad_p = data_of(reg, grad)))) goto exit;
    if (with_h && (!(grad_h = new_tensor(reg, 2, B, T, out_dtype)) || !(grad_h_p = data_of(reg, grad_h)))) goto exit;

    grpo_loss_inputs in = {
        .batch = B, .length = T, .dtype = dtype, .aux_dtype = dtype == GRPO_F64 ? GRPO_F64 : GRPO_F32,
        .logps = lp->data, .old_logps = t[OLD].data, .ref_logps = t[REF].data, .sampling_logps = t[SAMP].data,
        .entropies = t[ENT].data, .advantages = t[ADV].data, .advantages_cols = adv_cols, .mask = mask_u8,
        .importance_sampling_ratio = t[ISR].data, .importance_sampling_ratio_cols = isr_cols,
    };
    Py_ssize_t esize = dtype == GRPO_F64 ? 8 : dtype == GRPO_F32 ? 4 : 2;
    double work = (double)(B * T) * (double)(esize * (1 + !!t[OLD].obj + !!t[REF].obj + !!t[SAMP].obj + !!t[ENT].obj) + 1);
    const void *used[N_POINTERS] = {lp->data, t[OLD].data, t[REF].data, t[SAMP].data, t[ENT].data, t[ADV].data,
                                    mask_u8, t[ISR].data, grad_p, grad_h_p};
    memcpy(last_pointers, used, sizeof used);
    grpo_loss_metrics m;
    if (gs_policy_loss_call(&in, &cfg, grad_p, grad_h_p, &m, fn, work) != 0) goto exit;
    gs_loss_metrics_fill(&m, mvec);
    long long unlogged = PyLong_AsLongLong(PyTuple_GET_ITEM(args[11], 2 * !!t[REF].obj + !!t[ENT].obj));
    if (unlogged == -1 && PyErr_Occurred()) goto exit;
    for (int i = 0; i < GS_LOSS_METRICS; i++) {
        if (unlogged & (1LL << i)) mvec[i] = 0.0;  /* NaN from the kernel: 0 compares equal across runs */
    }
    if (!(loss = new_tensor(reg, 0, 0, 0, out_dtype))) goto exit;
    void *loss_p = data_of(reg, loss);
    if (!loss_p) goto exit;
    if (dtype == GRPO_F64) *(double *)loss_p = m.loss;
    else *(float *)loss_p = (float)m.loss;
    result = PyTuple_Pack(4, loss, metrics, grad ? grad : Py_None, grad_h ? grad_h : Py_None);
exit:
    if (owned_mask) PyMem_RawFree(owned_mask);
    Py_XDECREF(loss);
    Py_XDECREF(metrics);
    Py_XDECREF(grad);
    Py_XDECREF(grad_h);
    return result;
}

/* torch_fast_pointers() -> tuple of 10 ints (0 for None): see last_pointers. */
static PyObject *torch_fast_pointers(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    PyObject *out = PyTuple_New(N_POINTERS);
    for (int i = 0; out && i < N_POINTERS; i++) {
        PyObject *v = PyLong_FromVoidPtr((void *)last_pointers[i]);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}

PyMethodDef gs_torch_methods[] = {
    {"torch_policy_loss", (PyCFunction)(void (*)(void))torch_policy_loss, METH_FASTCALL,
     "torch_policy_loss(fn, logps, old, ref, samp, ent, adv, mask, isr, config, want_grad, unlogged, reg) "
     "-> (loss 0-d, metrics (18,), grad, grad_entropies) or None: grpo_swift.torch's eager fast path"},
    {"torch_fast_pointers", torch_fast_pointers, METH_NOARGS,
     "torch_fast_pointers() -> the addresses (logps, old, ref, samp, ent, adv, mask, isr, grad, grad_entropies) "
     "the calling thread's last torch_policy_loss kernel call read and wrote (for tests)"},
    {NULL, NULL, 0, NULL},
};
