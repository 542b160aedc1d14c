/* grpo_swift._native.group_advantages: buffers in, caller-allocated outputs, GIL released. */
#include "native_common.h"

/*
 * group_advantages(rewards, reward_weights, num_generations, scale_rewards, aggregation,
 *                  out_advantages, out_mean, out_std, out_is_std_zero) -> None
 * rewards: C-contiguous (N,) or (N, F) float32 or float64; reward_weights: (F,) same dtype or None;
 * outputs: (N,) of the rewards dtype, is_std_zero (N,) bool.
 */
static PyObject *adv_group_advantages(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "group_advantages";
    (void)self;
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "%s() takes 9 positional arguments (%zd given)", fn, nargs);
        return NULL;
    }
    Py_ssize_t g = PyLong_AsSsize_t(args[2]);
    if (g == -1 && PyErr_Occurred()) return NULL;
    int32_t scale, agg;
    if (gs_int32_arg(args[3], fn, "scale_rewards", &scale) < 0) return NULL;
    if (gs_int32_arg(args[4], fn, "aggregation", &agg) < 0) return NULL;

    gs_buffers set = {.count = 0};
    Py_buffer *rewards = gs_acquire(&set, args[0], fn, "rewards", GS_ANY_FLOAT, -1, 0, 0);
    if (!rewards) goto exit;
    if (rewards->ndim != 1 && rewards->ndim != 2) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'rewards' must be 1-D (N,) or 2-D (N, F), got %d dimensions",
                     fn, rewards->ndim);
        goto exit;
    }
    int dtype = gs_float_dtype(rewards);
    if (dtype != GRPO_F32 && dtype != GRPO_F64) {
        PyErr_Format(PyExc_TypeError, "%s(): argument 'rewards' must be float32 or float64", fn);
        goto exit;
    }
    gs_kind k = dtype == GRPO_F32 ? GS_F32 : GS_F64;
    Py_buffer *weights = gs_acquire(&set, args[1], fn, "reward_weights", k, 1, 0, 1);
    Py_buffer *adv = weights ? gs_acquire(&set, args[5], fn, "out_advantages", k, 1, 1, 0) : NULL;
    Py_buffer *mean = adv ? gs_acquire(&set, args[6], fn, "out_mean", k, 1, 1, 0) : NULL;
    Py_buffer *std = mean ? gs_acquire(&set, args[7], fn, "out_std", k, 1, 1, 0) : NULL;
    Py_buffer *zero = std ? gs_acquire(&set, args[8], fn, "out_is_std_zero", GS_BOOL, 1, 1, 0) : NULL;
    if (!zero) goto exit;

    Py_ssize_t n = rewards->shape[0], f = rewards->ndim == 2 ? rewards->shape[1] : 1;
    if (weights->buf && weights->shape[0] != f) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'reward_weights' must have %zd elements, got %zd",
                     fn, f, weights->shape[0]);
        goto exit;
    }
    if (adv->shape[0] != n || mean->shape[0] != n || std->shape[0] != n || zero->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "%s(): output buffers must have %zd elements", fn, n);
        goto exit;
    }
    grpo_advantages_config cfg = {.num_generations = g, .scale_rewards = scale, .aggregation = agg};
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(gs_bytes(&set))
    if (dtype == GRPO_F32) {
        st = grpo_group_advantages_f32(rewards->buf, n, f, weights->buf, &cfg, adv->buf, mean->buf,
                                       std->buf, zero->buf, err, sizeof err);
    } else {
        st = grpo_group_advantages_f64(rewards->buf, n, f, weights->buf, &cfg, adv->buf, mean->buf,
                                       std->buf, zero->buf, err, sizeof err);
    }
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

PyMethodDef gs_advantages_methods[] = {
    {"group_advantages", (PyCFunction)(void (*)(void))adv_group_advantages, METH_FASTCALL,
     "group_advantages(rewards, reward_weights, num_generations, scale_rewards, aggregation, "
     "out_advantages, out_mean, out_std, out_is_std_zero)"},
    {NULL, NULL, 0, NULL},
};
