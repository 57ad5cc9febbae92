// A converted module's forward replayed as one list of steps in C++ (replay.cpp; hrnet_fast/convert/replay.py).
// Built only with oneDNN, whose kept convolutions (onednn_conv.h) are the steps' convs.
#pragma once

#ifdef HRNET_FAST_WITH_ONEDNN

#include <Python.h>

namespace hrnet_fast {

// Python entry points, listed in module.cpp's method table:
//   replay_new(steps, inputs, slots, outputs) -> handle: steps as replay.cpp's parse_step reads them
//   replay_valid(handle, watch) -> bool: the watched dicts and the convs' weights are as they were at build
//       (handle None: the dicts only)
//   replay_run(handle, watch, inputs) -> list of Tensors, or None where the call must take the module path
PyObject* replay_new(PyObject* module, PyObject* args);
PyObject* replay_valid(PyObject* module, PyObject* args);
PyObject* replay_run(PyObject* module, PyObject* args);

}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
