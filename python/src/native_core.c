/* Library-wide functions: ABI version, thread count, build facts. */
#include "native_common.h"

static PyObject *core_abi_version(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyLong_FromLong(grpo_abi_version());
}

static PyObject *core_get_num_threads(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyLong_FromLong(grpo_get_num_threads());
}

static PyObject *core_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "set_num_threads(): argument 'n' must be between 1 and 1024, got %ld", n);
        return NULL;
    }
    grpo_status st = grpo_set_num_threads((int32_t)n);
    if (st != GRPO_OK) return gs_raise_status(st, "set_num_threads", NULL);
    Py_RETURN_NONE;
}

static PyObject *core_built_with_avx2(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyBool_FromLong(grpo_built_with_avx2());
}

PyMethodDef gs_core_methods[] = {
    {"abi_version", core_abi_version, METH_NOARGS, "ABI version of the loaded Swift library."},
    {"get_num_threads", core_get_num_threads, METH_NOARGS, "Kernel worker-thread count."},
    {"set_num_threads", core_set_num_threads, METH_O, "Set the kernel worker-thread count (>= 1)."},
    {"built_with_avx2", core_built_with_avx2, METH_NOARGS, "Whether the library uses AVX2/FMA."},
    {NULL, NULL, 0, NULL},
};
