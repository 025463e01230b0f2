// The Python module `ddpm_fast._C`: importing it loads this library, whose static initialisers
// register the ops (torch.ops.ddpm_fast.*). Only setup.py builds this file; CMake builds the
// same kernels as a plain library without Python.
// Only Python's limited API (stable ABI, CPython >= 3.10) is used, so one abi3 build serves every
// CPython that torch supports. setup.py (py_limited_api=True) passes -DPy_LIMITED_API=0x030A0000 to
// every source; the define here keeps this file limited-API however it is compiled.
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030A0000
#endif
#include <Python.h>

extern "C" const char ddpm_fast_build_info[];

static struct PyModuleDef ddpm_fast_module = {PyModuleDef_HEAD_INIT, "_C",
                                              "ddpm_fast's C++/CUDA ops (torch.ops.ddpm_fast)", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&ddpm_fast_module);
  if (m != nullptr) PyModule_AddStringConstant(m, "BUILD_INFO", ddpm_fast_build_info);
  return m;
}
