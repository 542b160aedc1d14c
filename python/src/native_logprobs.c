/*
 * grpo_swift._native log-prob kernels: selective log-softmax + entropy from logits, the
 * fused LM head, their backwards, and the sgemm benchmark anchor. Buffers in,
 * caller-allocated outputs, GIL released around every kernel.
 */
#include "native_common.h"

#define LP_CHECK_NARGS(fn, want)                                                              \
    if (nargs != (want)) {                                                                    \
        PyErr_Format(PyExc_TypeError, "%s() takes %d positional arguments (%zd given)", fn,   \
                     (int)(want), nargs);                                                     \
        return NULL;                                                                          \
    }

/* Checks that an acquired (non-None) 1-D buffer has n elements. */
static int lp_check_len(const Py_buffer *v, Py_ssize_t n, const char *fn, const char *arg) {
    if (v->buf && v->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must have %zd elements, got %zd",
                     fn, arg, n, v->shape[0]);
        return -1;
    }
    return 0;
}

/* The logits' dtype code: the buffer's float kind, with int16 bits meaning bfloat16. */
static int lp_logits_dtype(const Py_buffer *v, int32_t declared, const char *fn, const char *arg) {
    int actual = gs_float_dtype(v);
    if (actual < 0 || actual != declared) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' has format '%s' (itemsize %zd), which does "
                     "not hold dtype code %d", fn, arg, v->format ? v->format : "B", v->itemsize,
                     (int)declared);
        return -1;
    }
    return actual;
}

static gs_kind lp_kind_of(int dtype) {
    switch (dtype) {
    case GRPO_F64: return GS_F64;
    case GRPO_BF16: return GS_BF16_BITS;
    case GRPO_F16: return GS_F16;
    default: return GS_F32;
    }
}

/*
 * selective_log_softmax(logits, dtype, targets, row_mask, temperature,
 *                       out_log_probs, out_entropy, out_logsumexp) -> None
 * logits (N, V) float32/float64/float16 or int16 bits (dtype BF16); targets (N,) int64;
 * row_mask (N,) uint8/bool or None; outputs (N,): float32 (float64 for F64), entropy may be
 * None; logsumexp float64 or None.
 */
static PyObject *lp_selective_log_softmax(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "selective_log_softmax";
    (void)self;
    LP_CHECK_NARGS(fn, 8);
    int32_t dtype;
    double temperature;
    if (gs_int32_arg(args[1], fn, "dtype", &dtype) < 0) return NULL;
    if (gs_double_arg(args[4], fn, "temperature", &temperature) < 0) return NULL;
    gs_buffers set = {.count = 0};
    Py_buffer *logits = gs_acquire(&set, args[0], fn, "logits", GS_ANY_FLOAT, 2, 0, 0);
    if (!logits || lp_logits_dtype(logits, dtype, fn, "logits") < 0) goto exit;
    gs_kind out_kind = dtype == GRPO_F64 ? GS_F64 : GS_F32;
    Py_buffer *targets = gs_acquire(&set, args[2], fn, "targets", GS_I64, 1, 0, 0);
    Py_buffer *mask = targets ? gs_acquire(&set, args[3], fn, "row_mask", GS_U8, 1, 0, 1) : NULL;
    Py_buffer *lp = mask ? gs_acquire(&set, args[5], fn, "out_log_probs", out_kind, 1, 1, 0) : NULL;
    Py_buffer *ent = lp ? gs_acquire(&set, args[6], fn, "out_entropy", out_kind, 1, 1, 1) : NULL;
    Py_buffer *lse = ent ? gs_acquire(&set, args[7], fn, "out_logsumexp", GS_F64, 1, 1, 1) : NULL;
    if (!lse) goto exit;
    Py_ssize_t n = logits->shape[0], v = logits->shape[1];
    if (lp_check_len(targets, n, fn, "targets") || lp_check_len(mask, n, fn, "row_mask") ||
        lp_check_len(lp, n, fn, "out_log_probs") || lp_check_len(ent, n, fn, "out_entropy") ||
        lp_check_len(lse, n, fn, "out_logsumexp"))
        goto exit;
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(gs_bytes(&set))
    st = grpo_selective_log_softmax(logits->buf, dtype, n, v, targets->buf, mask->buf, temperature,
                                    lp->buf, ent->buf, lse->buf, err, sizeof err);
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

/*
 * selective_log_softmax_backward(logits, dtype, targets, row_mask, temperature, logsumexp,
 *     entropy, grad_log_probs, grad_entropy, out_grad_logits, grad_dtype) -> None
 * out_grad_logits may be the logits array itself (in place, same dtype).
 */
static PyObject *lp_selective_log_softmax_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "selective_log_softmax_backward";
    (void)self;
    LP_CHECK_NARGS(fn, 11);
    int32_t dtype, grad_dtype;
    double temperature;
    if (gs_int32_arg(args[1], fn, "dtype", &dtype) < 0) return NULL;
    if (gs_double_arg(args[4], fn, "temperature", &temperature) < 0) return NULL;
    if (gs_int32_arg(args[10], fn, "grad_dtype", &grad_dtype) < 0) return NULL;
    gs_buffers set = {.count = 0};
    Py_buffer *logits = gs_acquire(&set, args[0], fn, "logits", GS_ANY_FLOAT, 2, 0, 0);
    if (!logits || lp_logits_dtype(logits, dtype, fn, "logits") < 0) goto exit;
    gs_kind row_kind = dtype == GRPO_F64 ? GS_F64 : GS_F32;
    Py_buffer *targets = gs_acquire(&set, args[2], fn, "targets", GS_I64, 1, 0, 0);
    Py_buffer *mask = targets ? gs_acquire(&set, args[3], fn, "row_mask", GS_U8, 1, 0, 1) : NULL;
    Py_buffer *lse = mask ? gs_acquire(&set, args[5], fn, "logsumexp", GS_F64, 1, 0, 1) : NULL;
    Py_buffer *ent = lse ? gs_acquire(&set, args[6], fn, "entropy", row_kind, 1, 0, 1) : NULL;
    Py_buffer *glp = ent ? gs_acquire(&set, args[7], fn, "grad_log_probs", row_kind, 1, 0, 1) : NULL;
    Py_buffer *gent = glp ? gs_acquire(&set, args[8], fn, "grad_entropy", row_kind, 1, 0, 1) : NULL;
    Py_buffer *out = gent ? gs_acquire(&set, args[9], fn, "out_grad_logits", lp_kind_of(grad_dtype), 2, 1, 0) : NULL;
    if (!out) goto exit;
    Py_ssize_t n = logits->shape[0], v = logits->shape[1];
    if (lp_check_len(targets, n, fn, "targets") || lp_check_len(mask, n, fn, "row_mask") ||
        lp_check_len(lse, n, fn, "logsumexp") || lp_check_len(ent, n, fn, "entropy") ||
        lp_check_len(glp, n, fn, "grad_log_probs") || lp_check_len(gent, n, fn, "grad_entropy"))
        goto exit;
    if (out->shape[0] != n || out->shape[1] != v) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'out_grad_logits' must have shape (%zd, %zd), got (%zd, %zd)",
                     fn, n, v, out->shape[0], out->shape[1]);
        goto exit;
    }
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(gs_bytes(&set))
    st = grpo_selective_log_softmax_backward(logits->buf, dtype, n, v, targets->buf, mask->buf, temperature,
                                             lse->buf, ent->buf, glp->buf, gent->buf, out->buf, grad_dtype,
                                             err, sizeof err);
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

/* Reads (temperature, logit_scale, final_logit_softcapping, tile_rows, tile_cols) at args[i..]. */
static int lp_head_config(PyObject *const *args, const char *fn, grpo_lm_head_config *cfg) {
    if (gs_double_arg(args[0], fn, "temperature", &cfg->temperature) < 0) return -1;
    if (gs_double_arg(args[1], fn, "logit_scale", &cfg->logit_scale) < 0) return -1;
    if (gs_double_arg(args[2], fn, "final_logit_softcapping", &cfg->final_logit_softcapping) < 0) return -1;
    cfg->tile_rows = PyLong_AsSsize_t(args[3]);
    if (cfg->tile_rows == -1 && PyErr_Occurred()) return -1;
    cfg->tile_cols = PyLong_AsSsize_t(args[4]);
    if (cfg->tile_cols == -1 && PyErr_Occurred()) return -1;
    return 0;
}

/*
 * Acquires hidden (N, H), weight (V, H), bias (V,) or None -- all float32, or all bfloat16 as
 * int16/uint16 bits (*is_bf16 = 1) -- and targets (N,) int64.
 */
static int lp_head_inputs(gs_buffers *set, PyObject *const *args, const char *fn, Py_buffer **hidden,
                          Py_buffer **weight, Py_buffer **bias, Py_buffer **targets, int *is_bf16) {
    *hidden = gs_acquire(set, args[0], fn, "hidden", GS_ANY_FLOAT, 2, 0, 0);
    if (!*hidden) return -1;
    int dtype = gs_float_dtype(*hidden);
    if (dtype != GRPO_F32 && dtype != GRPO_BF16) {
        PyErr_Format(PyExc_TypeError, "%s(): argument 'hidden' must be float32 (or bfloat16 bits), got format '%s'",
                     fn, (*hidden)->format ? (*hidden)->format : "B");
        return -1;
    }
    gs_kind kind = dtype == GRPO_BF16 ? GS_BF16_BITS : GS_F32;
    *is_bf16 = dtype == GRPO_BF16;
    *weight = gs_acquire(set, args[1], fn, "weight", kind, 2, 0, 0);
    *bias = *weight ? gs_acquire(set, args[2], fn, "bias", kind, 1, 0, 1) : NULL;
    *targets = *bias ? gs_acquire(set, args[3], fn, "targets", GS_I64, 1, 0, 0) : NULL;
    if (!*targets) return -1;
    if ((*weight)->shape[1] != (*hidden)->shape[1]) {
        PyErr_Format(PyExc_ValueError, "%s(): 'weight' must have shape (vocab, %zd) to match 'hidden', got (%zd, %zd)",
                     fn, (*hidden)->shape[1], (*weight)->shape[0], (*weight)->shape[1]);
        return -1;
    }
    if (lp_check_len(*bias, (*weight)->shape[0], fn, "bias") ||
        lp_check_len(*targets, (*hidden)->shape[0], fn, "targets"))
        return -1;
    return 0;
}

/*
 * fused_log_probs(hidden, weight, bias, targets, temperature, logit_scale, softcap, tile_rows,
 *                 tile_cols, out_log_probs, out_entropy, out_logsumexp) -> None
 */
static PyObject *lp_fused_log_probs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "fused_log_probs";
    (void)self;
    LP_CHECK_NARGS(fn, 12);
    grpo_lm_head_config cfg;
    if (lp_head_config(args + 4, fn, &cfg) < 0) return NULL;
    gs_buffers set = {.count = 0};
    Py_buffer *hidden, *weight, *bias, *targets;
    int bf16 = 0;
    if (lp_head_inputs(&set, args, fn, &hidden, &weight, &bias, &targets, &bf16) < 0) goto exit;
    Py_buffer *lp = gs_acquire(&set, args[9], fn, "out_log_probs", GS_F32, 1, 1, 0);
    Py_buffer *ent = lp ? gs_acquire(&set, args[10], fn, "out_entropy", GS_F32, 1, 1, 1) : NULL;
    Py_buffer *lse = ent ? gs_acquire(&set, args[11], fn, "out_logsumexp", GS_F64, 1, 1, 1) : NULL;
    if (!lse) goto exit;
    Py_ssize_t n = hidden->shape[0], h = hidden->shape[1], v = weight->shape[0];
    if (lp_check_len(lp, n, fn, "out_log_probs") || lp_check_len(ent, n, fn, "out_entropy") ||
        lp_check_len(lse, n, fn, "out_logsumexp"))
        goto exit;
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN((double)n * v * h / 8)
    if (bf16)
        st = grpo_fused_log_probs_bf16(hidden->buf, weight->buf, bias->buf, n, h, v, targets->buf, &cfg,
                                       lp->buf, ent->buf, lse->buf, err, sizeof err);
    else
        st = grpo_fused_log_probs_f32(hidden->buf, weight->buf, bias->buf, n, h, v, targets->buf, &cfg,
                                      lp->buf, ent->buf, lse->buf, err, sizeof err);
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

/*
 * fused_log_probs_backward(hidden, weight, bias, targets, temperature, logit_scale, softcap,
 *     tile_rows, tile_cols, logsumexp, entropy, grad_log_probs, grad_entropy,
 *     out_grad_hidden, out_grad_weight, out_grad_bias) -> None   (outputs None = not computed)
 */
static PyObject *lp_fused_log_probs_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "fused_log_probs_backward";
    (void)self;
    LP_CHECK_NARGS(fn, 16);
    grpo_lm_head_config cfg;
    if (lp_head_config(args + 4, fn, &cfg) < 0) return NULL;
    gs_buffers set = {.count = 0};
    Py_buffer *hidden, *weight, *bias, *targets;
    int bf16 = 0;
    if (lp_head_inputs(&set, args, fn, &hidden, &weight, &bias, &targets, &bf16) < 0) goto exit;
    Py_buffer *lse = gs_acquire(&set, args[9], fn, "logsumexp", GS_F64, 1, 0, 0);
    Py_buffer *ent = lse ? gs_acquire(&set, args[10], fn, "entropy", GS_F32, 1, 0, 1) : NULL;
    Py_buffer *glp = ent ? gs_acquire(&set, args[11], fn, "grad_log_probs", GS_F32, 1, 0, 1) : NULL;
    Py_buffer *gent = glp ? gs_acquire(&set, args[12], fn, "grad_entropy", GS_F32, 1, 0, 1) : NULL;
    Py_buffer *gh = gent ? gs_acquire(&set, args[13], fn, "out_grad_hidden", GS_F32, 2, 1, 1) : NULL;
    Py_buffer *gw = gh ? gs_acquire(&set, args[14], fn, "out_grad_weight", GS_F32, 2, 1, 1) : NULL;
    Py_buffer *gb = gw ? gs_acquire(&set, args[15], fn, "out_grad_bias", GS_F32, 1, 1, 1) : NULL;
    if (!gb) goto exit;
    Py_ssize_t n = hidden->shape[0], h = hidden->shape[1], v = weight->shape[0];
    if (lp_check_len(lse, n, fn, "logsumexp") || lp_check_len(ent, n, fn, "entropy") ||
        lp_check_len(glp, n, fn, "grad_log_probs") || lp_check_len(gent, n, fn, "grad_entropy") ||
        lp_check_len(gb, v, fn, "out_grad_bias"))
        goto exit;
    if ((gh->buf && (gh->shape[0] != n || gh->shape[1] != h)) ||
        (gw->buf && (gw->shape[0] != v || gw->shape[1] != h))) {
        PyErr_Format(PyExc_ValueError, "%s(): out_grad_hidden must be (%zd, %zd) and out_grad_weight (%zd, %zd)",
                     fn, n, h, v, h);
        goto exit;
    }
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN((double)n * v * h / 8)
    if (bf16)
        st = grpo_fused_log_probs_backward_bf16(hidden->buf, weight->buf, bias->buf, n, h, v, targets->buf, &cfg,
                                                lse->buf, ent->buf, glp->buf, gent->buf, gh->buf, gw->buf, gb->buf,
                                                err, sizeof err);
    else
        st = grpo_fused_log_probs_backward_f32(hidden->buf, weight->buf, bias->buf, n, h, v, targets->buf, &cfg,
                                               lse->buf, ent->buf, glp->buf, gent->buf, gh->buf, gw->buf, gb->buf,
                                               err, sizeof err);
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

/* fused_log_probs_scratch_bytes(n, hidden_size, vocab, temperature, logit_scale, softcap,
 *                               tile_rows, tile_cols, dtype) -> int */
static PyObject *lp_scratch_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "fused_log_probs_scratch_bytes";
    (void)self;
    LP_CHECK_NARGS(fn, 9);
    int32_t dtype;
    if (gs_int32_arg(args[8], fn, "dtype", &dtype) < 0) return NULL;
    Py_ssize_t sizes[3];
    for (int i = 0; i < 3; i++) {
        sizes[i] = PyLong_AsSsize_t(args[i]);
        if (sizes[i] == -1 && PyErr_Occurred()) return NULL;
    }
    grpo_lm_head_config cfg;
    if (lp_head_config(args + 3, fn, &cfg) < 0) return NULL;
    ptrdiff_t bytes = 0;
    char err[GS_ERRLEN] = {0};
    grpo_status st = grpo_fused_log_probs_scratch_bytes(sizes[0], sizes[1], sizes[2], &cfg, dtype, &bytes, err,
                                                        sizeof err);
    if (st != GRPO_OK) return gs_raise_status(st, fn, err);
    return PyLong_FromSsize_t(bytes);
}

/* benchmark_sgemm_nt(a (M, K) f32, b (N, K) f32, out_c (M, N) f32) -> None: c = a b^T. */
static PyObject *lp_benchmark_sgemm_nt(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "benchmark_sgemm_nt";
    (void)self;
    LP_CHECK_NARGS(fn, 3);
    gs_buffers set = {.count = 0};
    Py_buffer *a = gs_acquire(&set, args[0], fn, "a", GS_F32, 2, 0, 0);
    Py_buffer *b = a ? gs_acquire(&set, args[1], fn, "b", GS_F32, 2, 0, 0) : NULL;
    Py_buffer *c = b ? gs_acquire(&set, args[2], fn, "out_c", GS_F32, 2, 1, 0) : NULL;
    if (!c) goto exit;
    Py_ssize_t m = a->shape[0], k = a->shape[1], n = b->shape[0];
    if (b->shape[1] != k || c->shape[0] != m || c->shape[1] != n) {
        PyErr_Format(PyExc_ValueError, "%s(): shapes must be a (M, K), b (N, K), out_c (M, N)", fn);
        goto exit;
    }
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN((double)m * n * k / 8)
    st = grpo_benchmark_sgemm_nt_f32(a->buf, b->buf, m, n, k, c->buf, err, sizeof err);
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

PyMethodDef gs_logprobs_methods[] = {
    {"selective_log_softmax", (PyCFunction)(void (*)(void))lp_selective_log_softmax, METH_FASTCALL,
     "selective_log_softmax(logits, dtype, targets, row_mask, temperature, out_log_probs, out_entropy, "
     "out_logsumexp)"},
    {"selective_log_softmax_backward", (PyCFunction)(void (*)(void))lp_selective_log_softmax_backward,
     METH_FASTCALL,
     "selective_log_softmax_backward(logits, dtype, targets, row_mask, temperature, logsumexp, entropy, "
     "grad_log_probs, grad_entropy, out_grad_logits, grad_dtype)"},
    {"fused_log_probs", (PyCFunction)(void (*)(void))lp_fused_log_probs, METH_FASTCALL,
     "fused_log_probs(hidden, weight, bias, targets, temperature, logit_scale, softcap, tile_rows, "
     "tile_cols, out_log_probs, out_entropy, out_logsumexp)"},
    {"fused_log_probs_backward", (PyCFunction)(void (*)(void))lp_fused_log_probs_backward, METH_FASTCALL,
     "fused_log_probs_backward(hidden, weight, bias, targets, temperature, logit_scale, softcap, tile_rows, "
     "tile_cols, logsumexp, entropy, grad_log_probs, grad_entropy, out_grad_hidden, out_grad_weight, "
     "out_grad_bias)"},
    {"fused_log_probs_scratch_bytes", (PyCFunction)(void (*)(void))lp_scratch_bytes, METH_FASTCALL,
     "fused_log_probs_scratch_bytes(n, hidden_size, vocab, temperature, logit_scale, softcap, tile_rows, "
     "tile_cols, dtype) -> int"},
    {"benchmark_sgemm_nt", (PyCFunction)(void (*)(void))lp_benchmark_sgemm_nt, METH_FASTCALL,
     "benchmark_sgemm_nt(a, b, out_c): one plain OpenBLAS sgemm c = a b^T (benchmark anchor)"},
    {NULL, NULL, 0, NULL},
};
