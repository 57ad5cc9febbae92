// conv + bias (+ residual) (+ ReLU) on CPU through oneDNN primitives this extension creates once per layer and
// input shape and keeps (hrnet_fast/ops/onednn_conv.py says when and why). Built only with HRNET_FAST_WITH_ONEDNN
// (oneDNN's headers and library found at build time: hrnet_fast/ops/extension.py, build_config).
#pragma once

#ifdef HRNET_FAST_WITH_ONEDNN

#include <Python.h>

namespace hrnet_fast {

// Python entry points, listed in module.cpp's method table:
//   onednn_conv_new(weight, stride, padding) -> handle
//   onednn_conv_run(handle, x, bias, residual, relu, residual_is_free) -> Tensor, or None for a call the kept
//       primitives do not take as given (not channels_last, another dtype, a tensor the dispatcher would not hand
//       to a CPU kernel unchanged, a dispatch or function mode) or where oneDNN has no primitive for the dtype on
//       this CPU: the caller then takes its general path
//   onednn_conv_plans(handle) -> int: how many (input shape, epilogue) primitives it keeps now (at most 16)
//   onednn_set_verbose(level): this oneDNN's ONEDNN_VERBOSE level from now on (0 off, 1 each execution, 2 also
//       primitive creation), which the environment variable can only set at start-up
//   onednn_version() -> str
PyObject* onednn_conv_new(PyObject* module, PyObject* args);
PyObject* onednn_conv_run(PyObject* module, PyObject* args);
PyObject* onednn_conv_plans(PyObject* module, PyObject* handle);
PyObject* onednn_set_verbose(PyObject* module, PyObject* level);
PyObject* onednn_version(PyObject* module, PyObject* noargs);

}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
