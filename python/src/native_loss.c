/* grpo_swift._native.policy_loss: the GRPO policy loss, its gradient and metrics. */
#include "native_common.h"

#include <string.h>

/* Acquires an optional (B,T) float input of the given dtype code and shape. */
static Py_buffer *acquire_bt(gs_buffers *set, PyObject *obj, const char *fn, const char *arg,
                             int dtype, Py_ssize_t B, Py_ssize_t T, int writable, int optional) {
    Py_buffer *v = gs_acquire(set, obj, fn, arg, GS_ANY_FLOAT, 2, writable, optional);
    if (!v || !v->buf) return v;
    if (gs_float_dtype(v) != dtype) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must have the dtype of 'logps' (format '%s'), got format '%s'",
                     fn, arg, dtype == GRPO_F32 ? "f" : dtype == GRPO_F64 ? "d" : dtype == GRPO_F16 ? "e" : "h",
                     v->format ? v->format : "B");
        return NULL;
    }
    if (v->shape[0] != B || v->shape[1] != T) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must have shape (%zd, %zd) like 'logps', got (%zd, %zd)",
                     fn, arg, B, T, v->shape[0], v->shape[1]);
        return NULL;
    }
    return v;
}

/* (B,), (B,1) or (B,T): the number of columns (1 or T), or -1 with an exception set. */
static Py_ssize_t row_or_token_cols(const Py_buffer *v, const char *fn, const char *arg,
                                    Py_ssize_t B, Py_ssize_t T) {
    if (v->ndim == 1 && v->shape[0] == B) return 1;
    if (v->ndim == 2 && v->shape[0] == B && (v->shape[1] == 1 || v->shape[1] == T)) return v->shape[1];
    PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must have shape (%zd,), (%zd, 1) or (%zd, %zd)",
                 fn, arg, B, B, B, T);
    return -1;
}

/*
 * The loss config tuple built by grpo_swift._loss.LossConfig._native_tuple: 5 int32 (loss_type,
 * importance_sampling_level, use_bias_correction_kl, use_delta, use_off_policy_mask), 16 doubles
 * (beta ... num_items_in_batch, kl_clamp, clip_ratio_c), 4 Py_ssize_t (num_processes ...
 * max_completion_length), 3 int32 (kl_estimator, use_kl_clamp, use_clip_ratio_c), then
 * use_entropy_threshold (int32) and entropy_threshold (double). The tuple's
 * order groups the kinds (the torch layer splits it into ints and floats); the struct's order is
 * the header's.
 */
int gs_loss_config_arg(PyObject *tuple, grpo_loss_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    return PyArg_ParseTuple(tuple, "iiiiiddddddddddddddddnnnniiiid:loss config", &cfg->loss_type,
                            &cfg->importance_sampling_level, &cfg->use_bias_correction_kl, &cfg->use_delta,
                            &cfg->use_off_policy_mask, &cfg->beta, &cfg->epsilon, &cfg->epsilon_high, &cfg->delta,
                            &cfg->off_policy_mask_threshold, &cfg->top_entropy_quantile, &cfg->entropy_coef,
                            &cfg->sapo_temperature_pos, &cfg->sapo_temperature_neg, &cfg->vespo_k_pos,
                            &cfg->vespo_lambda_pos, &cfg->vespo_k_neg, &cfg->vespo_lambda_neg,
                            &cfg->num_items_in_batch, &cfg->kl_clamp, &cfg->clip_ratio_c, &cfg->num_processes,
                            &cfg->gradient_accumulation_steps, &cfg->steps_per_generation,
                            &cfg->max_completion_length, &cfg->kl_estimator, &cfg->use_kl_clamp,
                            &cfg->use_clip_ratio_c, &cfg->use_entropy_threshold,
                            &cfg->entropy_threshold) ? 0 : -1;
}

/* The grpo_loss_metrics fields in header order (the order of grpo_swift._loss._METRIC_FIELDS). */
void gs_loss_metrics_fill(const grpo_loss_metrics *m, double out[GS_LOSS_METRICS]) {
    const double v[GS_LOSS_METRICS] = {
        m->loss, m->policy_loss, m->policy_term, m->kl_term, m->entropy_term, m->kl, m->entropy,
        m->clip_ratio_low_mean, m->clip_ratio_high_mean, m->clip_ratio_region_mean, m->clip_ratio_low_min,
        m->clip_ratio_high_max, m->cispo_clip_ratio, m->vespo_phi_seq_mean, m->num_tokens,
        m->num_entropy_tokens, m->num_off_policy_dropped, m->pg_clipfrac_lower,
    };
    memcpy(out, v, sizeof v);
}

/* The same fields as a tuple of floats. */
PyObject *gs_loss_metrics_tuple(const grpo_loss_metrics *m) {
    double v[GS_LOSS_METRICS];
    gs_loss_metrics_fill(m, v);
    PyObject *t = PyTuple_New(GS_LOSS_METRICS);
    for (int i = 0; t && i < GS_LOSS_METRICS; i++) {
        PyObject *x = PyFloat_FromDouble(v[i]);
        if (!x) {
            Py_CLEAR(t);
            break;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

int gs_policy_loss_call(const grpo_loss_inputs *in, const grpo_loss_config *cfg, void *grad, void *grad_entropies,
                        grpo_loss_metrics *m, const char *fn, double work) {
    memset(m, 0, sizeof *m);
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(work)
    st = grpo_policy_loss(in, cfg, grad, grad_entropies, m, err, sizeof err);
    GS_KERNEL_END
    if (st != GRPO_OK) {
        gs_raise_status(st, fn, err);
        return -1;
    }
    return 0;
}

/*
 * policy_loss(fn, logps, old_logps, ref_logps, sampling_logps, entropies, advantages, mask,
 *             importance_sampling_ratio, config, out_grad, out_grad_entropies) -> tuple
 * fn: the public function's name (for messages). Float (B,T) inputs share logps' dtype
 * (float32 'f', float64 'd', float16 'e', bfloat16 as int16 bits 'h'); advantages and the IS
 * ratio share one float dtype of their own; mask (B,T) uint8 0/1. config: the tuple built by
 * grpo_swift._loss.LossConfig._native. out_grad / out_grad_entropies: None or writable (B,T)
 * float32 (float64 when logps is float64). Returns the 18 grpo_loss_metrics fields in order.
 */
static PyObject *loss_policy_loss(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 12) {
        PyErr_Format(PyExc_TypeError, "policy_loss() takes 12 positional arguments (%zd given)", nargs);
        return NULL;
    }
    const char *fn = PyUnicode_Check(args[0]) ? PyUnicode_AsUTF8(args[0]) : NULL;
    if (!fn) {
        PyErr_SetString(PyExc_TypeError, "policy_loss(): argument 'fn' must be a str");
        return NULL;
    }
    grpo_loss_config cfg;
    if (gs_loss_config_arg(args[9], &cfg) != 0) return NULL;

    gs_buffers set = {.count = 0};
    PyObject *result = NULL;
    Py_buffer *lp = gs_acquire(&set, args[1], fn, "logps", GS_ANY_FLOAT, 2, 0, 0);
    if (!lp) goto exit;
    int dtype = gs_float_dtype(lp);
    Py_ssize_t B = lp->shape[0], T = lp->shape[1];
    Py_buffer *old = acquire_bt(&set, args[2], fn, "old_logps", dtype, B, T, 0, 1);
    Py_buffer *ref = old ? acquire_bt(&set, args[3], fn, "ref_logps", dtype, B, T, 0, 1) : NULL;
    Py_buffer *samp = ref ? acquire_bt(&set, args[4], fn, "sampling_logps", dtype, B, T, 0, 1) : NULL;
    Py_buffer *ent = samp ? acquire_bt(&set, args[5], fn, "entropies", dtype, B, T, 0, 1) : NULL;
    Py_buffer *adv = ent ? gs_acquire(&set, args[6], fn, "advantages", GS_ANY_FLOAT, -1, 0, 0) : NULL;
    if (!adv) goto exit;
    Py_ssize_t adv_cols = row_or_token_cols(adv, fn, "advantages", B, T);
    if (adv_cols < 0) goto exit;
    int aux_dtype = gs_float_dtype(adv);
    Py_buffer *mask = gs_acquire(&set, args[7], fn, "mask", GS_U8, 2, 0, 0);
    if (!mask) goto exit;
    if (mask->shape[0] != B || mask->shape[1] != T) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'mask' must have shape (%zd, %zd) like 'logps', got (%zd, %zd)",
                     fn, B, T, mask->shape[0], mask->shape[1]);
        goto exit;
    }
    Py_buffer *isr = gs_acquire(&set, args[8], fn, "importance_sampling_ratio", GS_ANY_FLOAT, -1, 0, 1);
    if (!isr) goto exit;
    Py_ssize_t isr_cols = 0;
    if (isr->buf) {
        isr_cols = row_or_token_cols(isr, fn, "importance_sampling_ratio", B, T);
        if (isr_cols < 0) goto exit;
        if (gs_float_dtype(isr) != aux_dtype) {
            PyErr_Format(PyExc_TypeError, "%s(): argument 'importance_sampling_ratio' must have the dtype of "
                         "'advantages'", fn);
            goto exit;
        }
    }
    int out_dtype = dtype == GRPO_F64 ? GRPO_F64 : GRPO_F32;
    gs_kind out_kind = out_dtype == GRPO_F64 ? GS_F64 : GS_F32;
    Py_buffer *grad = gs_acquire(&set, args[10], fn, "out_grad", out_kind, 2, 1, 1);
    Py_buffer *gradh = grad ? gs_acquire(&set, args[11], fn, "out_grad_entropies", out_kind, 2, 1, 1) : NULL;
    if (!gradh) goto exit;
    if ((grad->buf && (grad->shape[0] != B || grad->shape[1] != T)) ||
        (gradh->buf && (gradh->shape[0] != B || gradh->shape[1] != T))) {
        PyErr_Format(PyExc_ValueError, "%s(): gradient outputs must have shape (%zd, %zd)", fn, B, T);
        goto exit;
    }

    grpo_loss_inputs in = {
        .batch = B, .length = T, .dtype = dtype, .aux_dtype = aux_dtype,
        .logps = lp->buf, .old_logps = old->buf, .ref_logps = ref->buf, .sampling_logps = samp->buf,
        .entropies = ent->buf, .advantages = adv->buf, .advantages_cols = adv_cols, .mask = mask->buf,
        .importance_sampling_ratio = isr->buf, .importance_sampling_ratio_cols = isr_cols,
    };
    grpo_loss_metrics m;
    if (gs_policy_loss_call(&in, &cfg, grad->buf, gradh->buf, &m, fn, gs_bytes(&set)) == 0)
        result = gs_loss_metrics_tuple(&m);
exit:
    gs_release(&set);
    return result;
}

/*
 * convert_f32(fn, src, scale, out) -> None
 * out[i] = round(scale * src[i]) into out's element type: float32 'f', float16 'e' or bfloat16
 * as int16/uint16 bits ('h'/'H'). src: C-contiguous float32; out: writable, same element count.
 */
static PyObject *loss_convert_f32(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "convert_f32() takes 4 positional arguments (%zd given)", nargs);
        return NULL;
    }
    const char *fn = PyUnicode_Check(args[0]) ? PyUnicode_AsUTF8(args[0]) : NULL;
    if (!fn) {
        PyErr_SetString(PyExc_TypeError, "convert_f32(): argument 'fn' must be a str");
        return NULL;
    }
    double scale;
    if (gs_double_arg(args[2], fn, "scale", &scale) != 0) return NULL;
    gs_buffers set = {.count = 0};
    Py_buffer *src = gs_acquire(&set, args[1], fn, "src", GS_F32, -1, 0, 0);
    Py_buffer *out = src ? gs_acquire(&set, args[3], fn, "out", GS_ANY_FLOAT, -1, 1, 0) : NULL;
    if (!out) {
        gs_release(&set);
        return NULL;
    }
    int dtype = gs_float_dtype(out);
    if (dtype == GRPO_F64 || gs_numel(out) != gs_numel(src)) {
        gs_release(&set);
        PyErr_Format(dtype == GRPO_F64 ? PyExc_TypeError : PyExc_ValueError,
                     "%s(): argument 'out' must be a float32, float16 or bfloat16 buffer of %zd elements",
                     fn, gs_numel(src));
        return NULL;
    }
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    Py_BEGIN_ALLOW_THREADS
    st = grpo_convert_f32(src->buf, gs_numel(src), (float)scale, dtype, out->buf, err, sizeof err);
    Py_END_ALLOW_THREADS
    return gs_finish(&set, st, fn, err);
}

/* The mask loops below are written to be vectorised; GCC does that at -O3 (the module builds at
 * -O2), clang at -O2. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("O3")
#endif

/* Copies a 0/1 mask of n elements to uint8 and returns the index of the first other value, or -1:
 * a branch-free pass over blocks of 256 elements, a block holding another value rescanned for its
 * first one. Integer masks compare as unsigned (negatives count as large); float masks compare
 * with 0 and 1 (NaN is another value). */
#define GS_MASK_INT_FN(NAME, T, UT)                                                \
    static Py_ssize_t NAME(const void *src, uint8_t *o, Py_ssize_t n) {            \
        const T *p = (const T *)src;                                               \
        for (Py_ssize_t b0 = 0; b0 < n; b0 += 256) {                               \
            Py_ssize_t b1 = n - b0 < 256 ? n : b0 + 256;                           \
            UT other = 0;                                                          \
            for (Py_ssize_t i = b0; i < b1; i++) {                                 \
                UT v = (UT)p[i];                                                   \
                other |= v & (UT)~(UT)1;                                           \
                o[i] = (uint8_t)v;                                                 \
            }                                                                      \
            for (Py_ssize_t i = b0; other && i < b1; i++) {                        \
                if ((UT)p[i] > 1) return i;                                        \
            }                                                                      \
        }                                                                          \
        return -1;                                                                 \
    }

#define GS_MASK_FLOAT_FN(NAME, T)                                                  \
    static Py_ssize_t NAME(const void *src, uint8_t *o, Py_ssize_t n) {            \
        const T *p = (const T *)src;                                               \
        for (Py_ssize_t b0 = 0; b0 < n; b0 += 256) {                               \
            Py_ssize_t b1 = n - b0 < 256 ? n : b0 + 256;                           \
            int other = 0;                                                         \
            for (Py_ssize_t i = b0; i < b1; i++) {                                 \
                T v = p[i];                                                        \
                int one = v == (T)1;                                               \
                other |= !(one | (v == (T)0));                                     \
                o[i] = (uint8_t)one;                                               \
            }                                                                      \
            for (Py_ssize_t i = b0; other && i < b1; i++) {                        \
                if (!(p[i] == (T)0 || p[i] == (T)1)) return i;                     \
            }                                                                      \
        }                                                                          \
        return -1;                                                                 \
    }

GS_MASK_INT_FN(mask_i8, int8_t, uint8_t)
GS_MASK_INT_FN(mask_i16, int16_t, uint16_t)
GS_MASK_INT_FN(mask_i32, int32_t, uint32_t)
GS_MASK_INT_FN(mask_i64, int64_t, uint64_t)
GS_MASK_FLOAT_FN(mask_f32, float)
GS_MASK_FLOAT_FN(mask_f64, double)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

Py_ssize_t gs_mask_convert(int kind, Py_ssize_t itemsize, const void *src, uint8_t *out, Py_ssize_t n) {
    if (kind == 1 && itemsize == 1) return mask_i8(src, out, n);
    if (kind == 1 && itemsize == 2) return mask_i16(src, out, n);
    if (kind == 1 && itemsize == 4) return mask_i32(src, out, n);
    if (kind == 1) return mask_i64(src, out, n);
    if (kind == 2) return mask_i8(src, out, n);  /* uint8/bool: the same bytes */
    if (kind == 3) return mask_f32(src, out, n);
    return mask_f64(src, out, n);
}

/*
 * mask_u8(fn, arg, src, out) -> None
 * Converts a C-contiguous mask of int8/int16/int32/int64, uint8, bool, float32 or float64 holding
 * only 0 and 1 (-0.0 counts as 0) into the writable uint8 buffer out (same element count), in one
 * pass. Any other value (NaN included) raises ValueError "fn(): argument 'arg' must hold only 0 and
 * 1, got V" with the first such value.
 */
static PyObject *loss_mask_u8(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "mask_u8() takes 4 positional arguments (%zd given)", nargs);
        return NULL;
    }
    const char *fn = PyUnicode_Check(args[0]) ? PyUnicode_AsUTF8(args[0]) : NULL;
    const char *arg = PyUnicode_Check(args[1]) ? PyUnicode_AsUTF8(args[1]) : NULL;
    if (!fn || !arg) {
        PyErr_SetString(PyExc_TypeError, "mask_u8(): arguments 'fn' and 'arg' must be str");
        return NULL;
    }
    Py_buffer *src = NULL, *dst = NULL;
    gs_buffers set = {.count = 0};
    /* Any element type: acquired directly, the format is checked below. */
    if (PyObject_GetBuffer(args[2], &set.views[0], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be a C-contiguous buffer", fn, arg);
        return NULL;
    }
    set.count = 1;
    src = &set.views[0];
    dst = gs_acquire(&set, args[3], fn, "out", GS_U8, -1, 1, 0);
    if (!dst) goto fail;
    Py_ssize_t n = gs_numel(src);
    if (gs_numel(dst) != n) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'out' must hold %zd elements", fn, n);
        goto fail;
    }
    const char *f = src->format ? src->format : "B";
    while (*f == '@' || *f == '=' || *f == '<' || *f == '!') f++;
    char c = (f[0] && !f[1]) ? f[0] : '\0';
    Py_ssize_t s = src->itemsize;
    int kind;  /* 1 signed int, 2 unsigned int, 3 float32, 4 float64 */
    if ((c == 'b' || c == 'h' || c == 'i' || c == 'l' || c == 'q') && (s == 1 || s == 2 || s == 4 || s == 8)) kind = 1;
    else if ((c == 'B' || c == '?') && s == 1) kind = 2;
    else if (c == 'f' && s == 4) kind = 3;
    else if (c == 'd' && s == 8) kind = 4;
    else {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be an integer, bool, float32 or float64 mask, "
                     "got format '%s'", fn, arg, src->format ? src->format : "B");
        goto fail;
    }
    uint8_t *o = (uint8_t *)dst->buf;
    Py_ssize_t bad = -1;
    Py_BEGIN_ALLOW_THREADS
    bad = gs_mask_convert(kind, s, src->buf, o, n);
    Py_END_ALLOW_THREADS
    if (bad >= 0) {
        const char *b = (const char *)src->buf + bad * s;
        PyObject *v;
        if (kind == 1) {
            long long x = s == 1 ? *(const int8_t *)b : s == 2 ? *(const int16_t *)b
                        : s == 4 ? *(const int32_t *)b : *(const int64_t *)b;
            v = PyLong_FromLongLong(x);
        } else if (kind == 2) {
            v = PyLong_FromLong(*(const uint8_t *)b);
        } else {
            v = PyFloat_FromDouble(kind == 3 ? (double)*(const float *)b : *(const double *)b);
        }
        if (v) {
            PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must hold only 0 and 1, got %R", fn, arg, v);
            Py_DECREF(v);
        }
        goto fail;
    }
    gs_release(&set);
    Py_RETURN_NONE;
fail:
    gs_release(&set);
    return NULL;
}

PyMethodDef gs_loss_methods[] = {
    {"policy_loss", (PyCFunction)(void (*)(void))loss_policy_loss, METH_FASTCALL,
     "policy_loss(fn, logps, old_logps, ref_logps, sampling_logps, entropies, advantages, mask, "
     "importance_sampling_ratio, config, out_grad, out_grad_entropies) -> tuple of 18 floats"},
    {"convert_f32", (PyCFunction)(void (*)(void))loss_convert_f32, METH_FASTCALL,
     "convert_f32(fn, src, scale, out) -> None: out = round(scale * src) in out's float type"},
    {"mask_u8", (PyCFunction)(void (*)(void))loss_mask_u8, METH_FASTCALL,
     "mask_u8(fn, arg, src, out) -> None: a 0/1 mask of any integer/bool/float type into uint8"},
    {NULL, NULL, 0, NULL},
};
