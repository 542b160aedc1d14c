/* grpo_swift._native advantage estimators: buffers in, caller-allocated outputs, GIL released. */
#include "native_common.h"

/* config: (estimator, singleton, scale_rewards, normalize, gpg_alpha_mode, masked_returns,
 *          epsilon, gamma, gpg_alpha, gpg_f_norm) */
static int est_config(PyObject *obj, const char *fn, Py_ssize_t num_generations,
                      grpo_estimator_config *cfg) {
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 10) {
        PyErr_Format(PyExc_TypeError, "%s(): argument 'config' must be a 10-tuple", fn);
        return -1;
    }
    int32_t ints[6];
    double reals[4];
    static const char *int_names[6] = {"estimator", "singleton", "scale_rewards", "normalize", "gpg_alpha_mode",
                                       "masked_returns"};
    static const char *real_names[4] = {"epsilon", "gamma", "gpg_alpha", "gpg_f_norm"};
    for (int i = 0; i < 6; i++) {
        if (gs_int32_arg(PyTuple_GET_ITEM(obj, i), fn, int_names[i], &ints[i]) < 0) return -1;
    }
    for (int i = 0; i < 4; i++) {
        if (gs_double_arg(PyTuple_GET_ITEM(obj, 6 + i), fn, real_names[i], &reals[i]) < 0) return -1;
    }
    *cfg = (grpo_estimator_config){
        .num_generations = num_generations, .estimator = ints[0], .singleton = ints[1],
        .scale_rewards = ints[2], .normalize = ints[3], .gpg_alpha_mode = ints[4], .masked_returns = ints[5],
        .epsilon = reals[0], .gamma = reals[1], .gpg_alpha = reals[2], .gpg_f_norm = reals[3]};
    return 0;
}

/* Acquires 1-D float rewards (float32/float64); returns its dtype or -1. */
static Py_buffer *acquire_rewards(gs_buffers *set, PyObject *obj, const char *fn, int ndim_min,
                                  int ndim_max, int *dtype) {
    Py_buffer *rewards = gs_acquire(set, obj, fn, "rewards", GS_ANY_FLOAT, -1, 0, 0);
    if (!rewards) return NULL;
    if (rewards->ndim < ndim_min || rewards->ndim > ndim_max) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'rewards' has %d dimensions, expected %d to %d",
                     fn, rewards->ndim, ndim_min, ndim_max);
        return NULL;
    }
    *dtype = gs_float_dtype(rewards);
    if (*dtype != GRPO_F32 && *dtype != GRPO_F64) {
        PyErr_Format(PyExc_TypeError, "%s(): argument 'rewards' must be float32 or float64", fn);
        return NULL;
    }
    return rewards;
}

/* Checks an optional (n,) int64 group_ids buffer. */
static int check_ids(const Py_buffer *ids, Py_ssize_t n, const char *fn) {
    if (ids->buf && ids->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "%s(): argument 'group_ids' must have %zd elements, got %zd",
                     fn, n, ids->shape[0]);
        return -1;
    }
    return 0;
}

/* estimator_advantages(rewards, group_ids, num_generations, lengths, config, out) -> None */
static PyObject *est_estimator_advantages(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "estimator_advantages";
    (void)self;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "%s() takes 6 positional arguments (%zd given)", fn, nargs);
        return NULL;
    }
    Py_ssize_t g = PyLong_AsSsize_t(args[2]);
    if (g == -1 && PyErr_Occurred()) return NULL;
    grpo_estimator_config cfg;
    if (est_config(args[4], fn, g, &cfg) < 0) return NULL;

    gs_buffers set = {.count = 0};
    int dtype = -1;
    Py_buffer *rewards = acquire_rewards(&set, args[0], fn, 1, 1, &dtype);
    if (!rewards) goto exit;
    gs_kind k = dtype == GRPO_F32 ? GS_F32 : GS_F64;
    Py_buffer *ids = gs_acquire(&set, args[1], fn, "group_ids", GS_I64, 1, 0, 1);
    Py_buffer *lengths = ids ? gs_acquire(&set, args[3], fn, "lengths", k, 1, 0, 1) : NULL;
    Py_buffer *out = lengths ? gs_acquire(&set, args[5], fn, "out", k, 1, 1, 0) : NULL;
    if (!out) goto exit;
    Py_ssize_t n = rewards->shape[0];
    if (check_ids(ids, n, fn) < 0) goto exit;
    if ((lengths->buf && lengths->shape[0] != n) || out->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "%s(): 'lengths' and 'out' must have %zd elements", fn, n);
        goto exit;
    }
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(gs_bytes(&set))
    if (dtype == GRPO_F32) {
        st = grpo_estimator_advantages_f32(rewards->buf, n, ids->buf, lengths->buf, &cfg, out->buf,
                                           err, sizeof err);
    } else {
        st = grpo_estimator_advantages_f64(rewards->buf, n, ids->buf, lengths->buf, &cfg, out->buf,
                                           err, sizeof err);
    }
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

/* token_advantages(rewards, response_mask, group_ids, num_generations, config, out, returns) -> None
 * rewards (N,) or (N, T); response_mask (N, T) uint8; out (N, T); returns (N, T) or None. */
static PyObject *est_token_advantages(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "token_advantages";
    (void)self;
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "%s() takes 7 positional arguments (%zd given)", fn, nargs);
        return NULL;
    }
    Py_ssize_t g = PyLong_AsSsize_t(args[3]);
    if (g == -1 && PyErr_Occurred()) return NULL;
    grpo_estimator_config cfg;
    if (est_config(args[4], fn, g, &cfg) < 0) return NULL;

    gs_buffers set = {.count = 0};
    int dtype = -1;
    Py_buffer *rewards = acquire_rewards(&set, args[0], fn, 1, 2, &dtype);
    if (!rewards) goto exit;
    gs_kind k = dtype == GRPO_F32 ? GS_F32 : GS_F64;
    Py_buffer *mask = gs_acquire(&set, args[1], fn, "response_mask", GS_U8, 2, 0, 0);
    Py_buffer *ids = mask ? gs_acquire(&set, args[2], fn, "group_ids", GS_I64, 1, 0, 1) : NULL;
    Py_buffer *out = ids ? gs_acquire(&set, args[5], fn, "out", k, 2, 1, 0) : NULL;
    Py_buffer *ret = out ? gs_acquire(&set, args[6], fn, "returns", k, 2, 1, 1) : NULL;
    if (!ret) goto exit;
    Py_ssize_t n = mask->shape[0], t = mask->shape[1];
    Py_ssize_t cols = rewards->ndim == 2 ? rewards->shape[1] : 1;
    if (rewards->shape[0] != n || (rewards->ndim == 2 && cols != t)) {
        PyErr_Format(PyExc_ValueError, "%s(): 'rewards' must be (%zd,) or (%zd, %zd)", fn, n, n, t);
        goto exit;
    }
    if (check_ids(ids, n, fn) < 0) goto exit;
    if (out->shape[0] != n || out->shape[1] != t || (ret->buf && (ret->shape[0] != n || ret->shape[1] != t))) {
        PyErr_Format(PyExc_ValueError, "%s(): 'out' and 'returns' must be (%zd, %zd)", fn, n, t);
        goto exit;
    }
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(gs_bytes(&set))
    if (dtype == GRPO_F32) {
        st = grpo_token_advantages_returns_f32(rewards->buf, n, t, cols, mask->buf, ids->buf, &cfg, out->buf,
                                               ret->buf, err, sizeof err);
    } else {
        st = grpo_token_advantages_returns_f64(rewards->buf, n, t, cols, mask->buf, ids->buf, &cfg, out->buf,
                                               ret->buf, err, sizeof err);
    }
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

/* zero_spread_groups(rewards, group_ids, num_generations, tolerance, out_bool) -> None */
static PyObject *est_zero_spread(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const char *fn = "zero_spread_groups";
    (void)self;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "%s() takes 5 positional arguments (%zd given)", fn, nargs);
        return NULL;
    }
    Py_ssize_t g = PyLong_AsSsize_t(args[2]);
    if (g == -1 && PyErr_Occurred()) return NULL;
    double tol;
    if (gs_double_arg(args[3], fn, "tolerance", &tol) < 0) return NULL;

    gs_buffers set = {.count = 0};
    int dtype = -1;
    Py_buffer *rewards = acquire_rewards(&set, args[0], fn, 1, 1, &dtype);
    if (!rewards) goto exit;
    Py_buffer *ids = gs_acquire(&set, args[1], fn, "group_ids", GS_I64, 1, 0, 1);
    Py_buffer *out = ids ? gs_acquire(&set, args[4], fn, "out", GS_BOOL, 1, 1, 0) : NULL;
    if (!out) goto exit;
    Py_ssize_t n = rewards->shape[0];
    if (check_ids(ids, n, fn) < 0) goto exit;
    if (out->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "%s(): 'out' must have %zd elements", fn, n);
        goto exit;
    }
    char err[GS_ERRLEN] = {0};
    grpo_status st;
    GS_KERNEL_BEGIN(gs_bytes(&set))
    if (dtype == GRPO_F32) {
        st = grpo_zero_spread_groups_f32(rewards->buf, n, ids->buf, g, tol, out->buf, err, sizeof err);
    } else {
        st = grpo_zero_spread_groups_f64(rewards->buf, n, ids->buf, g, tol, out->buf, err, sizeof err);
    }
    GS_KERNEL_END
    return gs_finish(&set, st, fn, err);
exit:
    gs_release(&set);
    return NULL;
}

PyMethodDef gs_estimators_methods[] = {
    {"estimator_advantages", (PyCFunction)(void (*)(void))est_estimator_advantages, METH_FASTCALL,
     "estimator_advantages(rewards, group_ids, num_generations, lengths, config, out)"},
    {"token_advantages", (PyCFunction)(void (*)(void))est_token_advantages, METH_FASTCALL,
     "token_advantages(rewards, response_mask, group_ids, num_generations, config, out, returns)"},
    {"zero_spread_groups", (PyCFunction)(void (*)(void))est_zero_spread, METH_FASTCALL,
     "zero_spread_groups(rewards, group_ids, num_generations, tolerance, out)"},
    {NULL, NULL, 0, NULL},
};
