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

/* The grpo_loss_metrics fields in header order, as a tuple of floats. */
PyObject *gs_loss_metrics_tuple(const grpo_loss_metrics *m) {
    return Py_BuildValue("(dddddddddddddddddd)", m->loss, m->policy_loss, m->policy_term, m->kl_term,
                         m->entropy_term, m->kl, m->entropy, m->clip_ratio_low_mean, m->clip_ratio_high_mean,
                         m->clip_ratio_region_mean, m->clip_ratio_low_min, m->clip_ratio_high_max,
                         m->cispo_clip_ratio, m->vespo_phi_seq_mean, m->num_tokens, m->num_entropy_tokens,
                         m->num_off_policy_dropped, m->pg_clipfrac_lower);
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
    grpo_loss_metrics m = {0};
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(gs_bytes(&set))
    st = grpo_policy_loss(&in, &cfg, grad->buf, gradh->buf, &m, err, sizeof err);
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

PyMethodDef gs_loss_methods[] = {
    {"policy_loss", (PyCFunction)(void (*)(void))loss_policy_loss, METH_FASTCALL,
     "policy_loss(fn, logps, old_logps, ref_logps, sampling_logps, entropies, advantages, mask, "
     "importance_sampling_ratio, config, out_grad, out_grad_entropies) -> tuple of 18 floats"},
    {NULL, NULL, 0, NULL},
};
