/* grpo_swift._native.fused_linear_loss: hidden states + LM head -> GRPO loss, metrics, gradients. */
#include "native_common.h"

/* Checks an acquired (non-None) buffer holds `want` elements. */
static int fl_check_numel(const Py_buffer *v, Py_ssize_t want, const char *fn, const char *arg) {
    if (v->buf && gs_numel(v) != want) {
        PyErr_Format(PyExc_ValueError, "%s(): argument '%s' must hold %zd elements, got %zd", fn, arg, want,
                     gs_numel(v));
        return -1;
    }
    return 0;
}

/* Checks an acquired (non-None) float buffer has the dtype code `dtype`. */
static int fl_check_dtype(const Py_buffer *v, int dtype, const char *fn, const char *arg, const char *like) {
    if (v->buf && gs_float_dtype(v) != dtype) {
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must have the dtype of '%s', got format '%s'", fn, arg,
                     like, v->format ? v->format : "B");
        return -1;
    }
    return 0;
}

/*
 * fused_linear_loss(fn, B, T, hidden, weight, bias, targets, mask, advantages, adv_cols,
 *                   old_logps, ref_logps, sampling_logps, ref_hidden, ref_weight, ref_bias,
 *                   importance_sampling_ratio, isr_cols, loss_config, head_config,
 *                   out_grad_hidden, out_grad_weight, out_grad_bias, out_log_probs, out_entropy,
 *                   scratch_budget)
 *   -> tuple of the 18 grpo_loss_metrics fields.
 * hidden (N, H) / weight (V, H) / bias (V): float32, or bfloat16 as int16 bits (all alike,
 * ref_* too). targets (N) int64; mask (N) uint8 0/1; advantages and the IS ratio one float
 * dtype, (B * adv_cols) elements; old/ref/sampling (N) float32 or None. loss_config: the tuple
 * of LossConfig._native_args; head_config: (temperature, logit_scale, softcap, tile_rows,
 * tile_cols). Outputs: writable float32 buffers or None. scratch_budget: bytes (0 = default).
 */
static PyObject *fl_fused_linear_loss(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 26) {
        PyErr_Format(PyExc_TypeError, "fused_linear_loss() takes 26 positional arguments (%zd given)", nargs);
        return NULL;
    }
    const char *fn = PyUnicode_Check(args[0]) ? PyUnicode_AsUTF8(args[0]) : NULL;
    if (!fn) {
        PyErr_SetString(PyExc_TypeError, "fused_linear_loss(): argument 'fn' must be a str");
        return NULL;
    }
    Py_ssize_t B = PyLong_AsSsize_t(args[1]);
    if (B == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t T = PyLong_AsSsize_t(args[2]);
    if (T == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t adv_cols = PyLong_AsSsize_t(args[9]);
    if (adv_cols == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t isr_cols = PyLong_AsSsize_t(args[17]);
    if (isr_cols == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t budget = PyLong_AsSsize_t(args[25]);
    if (budget == -1 && PyErr_Occurred()) return NULL;
    if (B < 1 || T < 0 || (T > 0 && B > PY_SSIZE_T_MAX / T)) {
        PyErr_Format(PyExc_ValueError, "%s(): invalid batch/length %zd x %zd", fn, B, T);
        return NULL;
    }
    grpo_loss_config cfg;
    if (gs_loss_config_arg(args[18], &cfg) != 0) return NULL;
    grpo_lm_head_config head = {0};
    if (!PyArg_ParseTuple(args[19], "dddnn:fused_linear_loss head config", &head.temperature, &head.logit_scale,
                          &head.final_logit_softcapping, &head.tile_rows, &head.tile_cols)) {
        return NULL;
    }

    gs_buffers set = {.count = 0};
    PyObject *result = NULL;
    Py_ssize_t N = B * T;
    Py_buffer *h = gs_acquire(&set, args[3], fn, "hidden", GS_ANY_FLOAT, 2, 0, 0);
    if (!h) goto exit;
    int dtype = gs_float_dtype(h);
    if (dtype != GRPO_F32 && dtype != GRPO_BF16) {
        PyErr_Format(PyExc_TypeError, "%s(): argument 'hidden' must be float32 or bfloat16, got format '%s'", fn,
                     h->format ? h->format : "B");
        goto exit;
    }
    Py_ssize_t H = h->shape[1];
    if (h->shape[0] != N) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'hidden' must have %zd rows (B*T), got %zd", fn, N,
                     h->shape[0]);
        goto exit;
    }
    Py_buffer *w = gs_acquire(&set, args[4], fn, "weight", GS_ANY_FLOAT, 2, 0, 0);
    if (!w || fl_check_dtype(w, dtype, fn, "weight", "hidden") < 0) goto exit;
    Py_ssize_t V = w->shape[0];
    if (w->shape[1] != H) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'weight' must have shape (V, %zd), got (%zd, %zd)", fn, H,
                     w->shape[0], w->shape[1]);
        goto exit;
    }
    Py_buffer *bias = gs_acquire(&set, args[5], fn, "bias", GS_ANY_FLOAT, 1, 0, 1);
    if (!bias || fl_check_dtype(bias, dtype, fn, "bias", "hidden") < 0 ||
        fl_check_numel(bias, V, fn, "bias") < 0) goto exit;
    Py_buffer *tg = gs_acquire(&set, args[6], fn, "selected_token_ids", GS_I64, -1, 0, 0);
    if (!tg || fl_check_numel(tg, N, fn, "selected_token_ids") < 0) goto exit;
    Py_buffer *mask = gs_acquire(&set, args[7], fn, "mask", GS_U8, -1, 0, 0);
    if (!mask || fl_check_numel(mask, N, fn, "mask") < 0) goto exit;
    Py_buffer *adv = gs_acquire(&set, args[8], fn, "advantages", GS_ANY_FLOAT, -1, 0, 0);
    if (!adv || fl_check_numel(adv, B * adv_cols, fn, "advantages") < 0) goto exit;
    int aux_dtype = gs_float_dtype(adv);
    Py_buffer *old = gs_acquire(&set, args[10], fn, "old_per_token_logps", GS_F32, -1, 0, 1);
    if (!old || fl_check_numel(old, N, fn, "old_per_token_logps") < 0) goto exit;
    Py_buffer *ref = gs_acquire(&set, args[11], fn, "ref_per_token_logps", GS_F32, -1, 0, 1);
    if (!ref || fl_check_numel(ref, N, fn, "ref_per_token_logps") < 0) goto exit;
    Py_buffer *samp = gs_acquire(&set, args[12], fn, "sampling_per_token_logps", GS_F32, -1, 0, 1);
    if (!samp || fl_check_numel(samp, N, fn, "sampling_per_token_logps") < 0) goto exit;
    Py_buffer *rh = gs_acquire(&set, args[13], fn, "ref_input", GS_ANY_FLOAT, -1, 0, 1);
    if (!rh || fl_check_dtype(rh, dtype, fn, "ref_input", "hidden") < 0 ||
        fl_check_numel(rh, N * H, fn, "ref_input") < 0) goto exit;
    Py_buffer *rw = gs_acquire(&set, args[14], fn, "ref_weight", GS_ANY_FLOAT, -1, 0, 1);
    if (!rw || fl_check_dtype(rw, dtype, fn, "ref_weight", "hidden") < 0 ||
        fl_check_numel(rw, V * H, fn, "ref_weight") < 0) goto exit;
    Py_buffer *rb = gs_acquire(&set, args[15], fn, "ref_bias", GS_ANY_FLOAT, -1, 0, 1);
    if (!rb || fl_check_dtype(rb, dtype, fn, "ref_bias", "hidden") < 0 ||
        fl_check_numel(rb, V, fn, "ref_bias") < 0) goto exit;
    Py_buffer *isr = gs_acquire(&set, args[16], fn, "importance_sampling_ratio", GS_ANY_FLOAT, -1, 0, 1);
    if (!isr || fl_check_dtype(isr, aux_dtype, fn, "importance_sampling_ratio", "advantages") < 0 ||
        fl_check_numel(isr, B * isr_cols, fn, "importance_sampling_ratio") < 0) goto exit;
    Py_buffer *gh = gs_acquire(&set, args[20], fn, "out_grad_hidden", GS_F32, -1, 1, 1);
    if (!gh || fl_check_numel(gh, N * H, fn, "out_grad_hidden") < 0) goto exit;
    Py_buffer *gw = gs_acquire(&set, args[21], fn, "out_grad_weight", GS_F32, -1, 1, 1);
    if (!gw || fl_check_numel(gw, V * H, fn, "out_grad_weight") < 0) goto exit;
    Py_buffer *gb = gs_acquire(&set, args[22], fn, "out_grad_bias", GS_F32, -1, 1, 1);
    if (!gb || fl_check_numel(gb, V, fn, "out_grad_bias") < 0) goto exit;
    Py_buffer *olp = gs_acquire(&set, args[23], fn, "out_log_probs", GS_F32, -1, 1, 1);
    if (!olp || fl_check_numel(olp, N, fn, "out_log_probs") < 0) goto exit;
    Py_buffer *oent = gs_acquire(&set, args[24], fn, "out_entropy", GS_F32, -1, 1, 1);
    if (!oent || fl_check_numel(oent, N, fn, "out_entropy") < 0) goto exit;

    grpo_fused_loss_inputs in = {
        .batch = B, .length = T, .hidden_size = H, .vocab = V, .dtype = dtype, .aux_dtype = aux_dtype,
        .hidden = h->buf, .weight = w->buf, .bias = bias->buf, .selected_token_ids = tg->buf,
        .mask = mask->buf, .advantages = adv->buf, .advantages_cols = adv_cols,
        .old_logps = old->buf, .ref_logps = ref->buf, .sampling_logps = samp->buf,
        .ref_hidden = rh->buf, .ref_weight = rw->buf, .ref_bias = rb->buf,
        .importance_sampling_ratio = isr->buf, .importance_sampling_ratio_cols = isr->buf ? isr_cols : 0,
        .scratch_budget = budget,
    };
    grpo_loss_metrics m = {0};
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN((double)N * V * H / 8)
    st = grpo_fused_linear_loss(&in, &cfg, &head, gh->buf, gw->buf, gb->buf, olp->buf, oent->buf, &m, err,
                                sizeof err);
    GS_KERNEL_END
    if (st != GRPO_OK) {
        gs_raise_status(st, fn, err);
        goto exit;
    }
    result = gs_loss_metrics_tuple(&m);
exit:
    gs_release(&set);
    return result;
}

/* fused_linear_loss_scratch_bytes(batch, length, hidden_size, vocab, head_config, dtype, ref_from_hidden,
 *                                 top_entropy_quantile_below_one, scratch_budget) -> int */
static PyObject *fl_scratch_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "fused_linear_loss_scratch_bytes";
    (void)self;
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "%s() takes 9 positional arguments (%zd given)", fn, nargs);
        return NULL;
    }
    Py_ssize_t b = PyLong_AsSsize_t(args[0]), t = PyLong_AsSsize_t(args[1]);
    Py_ssize_t hs = PyLong_AsSsize_t(args[2]), v = PyLong_AsSsize_t(args[3]);
    Py_ssize_t budget = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred()) return NULL;
    grpo_lm_head_config head = {0};
    if (!PyArg_ParseTuple(args[4], "dddnn:fused_linear_loss head config", &head.temperature, &head.logit_scale,
                          &head.final_logit_softcapping, &head.tile_rows, &head.tile_cols)) {
        return NULL;
    }
    int32_t dtype, ref, q;
    if (gs_int32_arg(args[5], fn, "dtype", &dtype) < 0 || gs_int32_arg(args[6], fn, "ref_from_hidden", &ref) < 0 ||
        gs_int32_arg(args[7], fn, "top_entropy_quantile_below_one", &q) < 0)
        return NULL;
    ptrdiff_t bytes = 0;
    char err[GS_ERRLEN] = {0};
    grpo_status st = grpo_fused_linear_loss_scratch_bytes(b, t, hs, v, &head, dtype, ref, q, budget, &bytes, err,
                                                          sizeof err);
    if (st != GRPO_OK) return gs_raise_status(st, fn, err);
    return PyLong_FromSsize_t(bytes);
}

PyMethodDef gs_fused_loss_methods[] = {
    {"fused_linear_loss", (PyCFunction)(void (*)(void))fl_fused_linear_loss, METH_FASTCALL,
     "fused_linear_loss(fn, B, T, hidden, weight, bias, targets, mask, advantages, adv_cols, old, ref, sampling, "
     "ref_hidden, ref_weight, ref_bias, isr, isr_cols, loss_config, head_config, out_grad_hidden, "
     "out_grad_weight, out_grad_bias, out_log_probs, out_entropy, scratch_budget) -> tuple of 18 floats"},
    {"fused_linear_loss_scratch_bytes", (PyCFunction)(void (*)(void))fl_scratch_bytes, METH_FASTCALL,
     "fused_linear_loss_scratch_bytes(batch, length, hidden_size, vocab, head_config, dtype, ref_from_hidden, "
     "top_entropy_quantile_below_one, scratch_budget) -> int"},
    {NULL, NULL, 0, NULL},
};
