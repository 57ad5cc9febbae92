// Makes the shared library importable as the Python module hrnet_fast._C. The module itself is empty: importing
// it loads the library, whose static initialisers register torch.ops.hrnet_fast_C.* (ops.cpp). Plain CPython
// API instead of pybind11 keeps <torch/extension.h> (and its compile time) out of the build.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "hrnet_fast's compiled operators (torch.ops.hrnet_fast_C)",
                               -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
