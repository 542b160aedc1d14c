/*
 * grpo_swift._native: the CPython extension over the C ABI in grpo_swift.h.
 * Multi-phase initialisation; each kernel family contributes its own method table
 * (native_<family>.c). Private: the public API is the grpo_swift package.
 */
#include "native_common.h"

#if defined(__x86_64__) || defined(__i386__)
static int cpu_has_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int cpu_has_avx2_fma(void) { return 1; }
#endif

static PyMethodDef *const method_tables[] = {
    gs_core_methods,
    gs_advantages_methods,
    gs_loss_methods,
    gs_logprobs_methods,
    gs_estimators_methods,
    gs_fused_loss_methods,
    gs_torch_methods,
};

static int native_exec(PyObject *module) {
    if (grpo_abi_version() != GRPO_SWIFT_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError,
                     "grpo_swift: the loaded Swift library has ABI version %d, this extension "
                     "was built for %d; reinstall grpo_swift (pip install --force-reinstall .)",
                     (int)grpo_abi_version(), GRPO_SWIFT_ABI_VERSION);
        return -1;
    }
    if (grpo_built_with_avx2() && !cpu_has_avx2_fma()) {
        PyErr_SetString(PyExc_ImportError,
                        "grpo_swift: this build uses AVX2/FMA instructions that this CPU lacks; "
                        "rebuild with GRPO_SWIFT_PORTABLE=1 pip install . for a portable build");
        return -1;
    }
    for (size_t i = 0; i < sizeof(method_tables) / sizeof(method_tables[0]); i++) {
        if (PyModule_AddFunctions(module, method_tables[i]) < 0) return -1;
    }
    if (PyModule_AddIntConstant(module, "ABI_VERSION", GRPO_SWIFT_ABI_VERSION) < 0) return -1;
    if (PyModule_AddIntConstant(module, "F32", GRPO_F32) < 0) return -1;
    if (PyModule_AddIntConstant(module, "F64", GRPO_F64) < 0) return -1;
    if (PyModule_AddIntConstant(module, "BF16", GRPO_BF16) < 0) return -1;
    if (PyModule_AddIntConstant(module, "F16", GRPO_F16) < 0) return -1;
    return 0;
}

static PyModuleDef_Slot native_slots[] = {
    {Py_mod_exec, native_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "grpo_swift._native",
    .m_doc = "Private CPython bindings of the grpo_swift C ABI. Use the grpo_swift package.",
    .m_size = 0,
    .m_methods = NULL,
    .m_slots = native_slots,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModuleDef_Init(&native_module); }
