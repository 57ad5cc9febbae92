// A converted module's forward replayed as one list of steps in C++ (replay.cpp; hrnet_fast/convert/replay.py).
// Built only with oneDNN, whose kept convolutions (onednn_conv.h) are the steps' convs.
#pragma once

#ifdef HRNET_FAST_WITH_ONEDNN

#include <Python.h>

namespace hrnet_fast {

// Python entry points, listed in module.cpp's method table:
//   replay_new(steps, inputs, slots, outputs, mode) -> handle: steps as replay.cpp's parse_step reads them, their
//       dependency graph read off their slots (replay_program.h, graph_of); mode 0 serial, 1 branch-parallel, 2
//       decided per input shape and thread count by timing both at the first call
//   replay_valid(handle, watch) -> bool: the watched dicts and the convs' weights are as they were at build
//       (handle None: the dicts only)
//   replay_run(handle, watch, inputs) -> list of Tensors, or None where the call must take the module path
//   replay_schedule(handle) -> {"mode", "splits": whether some steps can run at once, "successors": per step the
//       steps waiting for it, "segments": [(at_once, begin, end, width: the most of its steps on one level)] in step
//       order, "decisions": [{batch, height, width, threads, parallel, serial_ms, parallel_ms}] as automatic mode
//       measured them}
PyObject* replay_new(PyObject* module, PyObject* args);
PyObject* replay_valid(PyObject* module, PyObject* args);
PyObject* replay_run(PyObject* module, PyObject* args);
PyObject* replay_schedule(PyObject* module, PyObject* handle);

}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
