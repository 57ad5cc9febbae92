// The Python module hrnet_fast._C. Importing it loads the library, whose static initialisers register
// torch.ops.hrnet_fast_C.* (ops.cpp).
//
// It also holds one function, multires_fuse_cpu(x, low_res, same_res, relu, mode, align_corners) -> Tensor | None:
// the CPU fusion kernel called straight from Python. A call through torch.ops parses its arguments against the op
// schema, which costs ~3.5 us for three tensor lists, as long as the whole kernel takes on HRNet's 7x7 branch; this
// entry point costs ~0.5 us. It runs only where going through the dispatcher would reach the same CPU kernel and
// nothing else: exact torch.Tensor objects holding plain dense CPU tensors, no dispatch or function modes, no
// functorch transform, no input that needs autograd. Anything else, including input the checks reject, returns
// None, and the caller takes the registered op (hrnet_fast/ops/direct.py), where errors are diagnosed.
//
// And tensor_signature(dicts), the check that keeps captured CUDA graphs valid (below), and, when built with
// oneDNN, the entry points of the CPU convolution that keeps its primitives (cpu/onednn_conv.h) and of the
// replayed forward built on it (cpu/replay.h).
#include "cpu/onednn_conv.h"
#include "cpu/replay.h"
#include "ops.h"
#include "plain_call.h"

#include <ATen/record_function.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>
#include <vector>

namespace {

using hrnet_fast::plain_cpu_tensor;
using hrnet_fast::plain_dispatch_state;

// The tensors of a list or tuple of at most kMaxTerms plain CPU tensors, else nullopt.
std::optional<std::vector<at::Tensor>> plain_cpu_tensors(PyObject* seq, bool grad_enabled) {
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) return std::nullopt;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  if (n > hrnet_fast::kMaxTerms) return std::nullopt;
  PyObject** items = PySequence_Fast_ITEMS(seq);
  std::vector<at::Tensor> tensors;
  tensors.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    std::optional<at::Tensor> t = plain_cpu_tensor(items[i], grad_enabled);
    if (!t) return std::nullopt;
    tensors.push_back(std::move(*t));
  }
  return tensors;
}

PyObject* multires_fuse_cpu(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *x_obj, *low_obj, *same_obj, *mode_obj, *align_obj;
  int relu;
  if (!PyArg_ParseTuple(args, "OOOpOO:multires_fuse_cpu", &x_obj, &low_obj, &same_obj, &relu, &mode_obj,
                        &align_obj)) {
    return nullptr;
  }
  // The op's schema takes a str and a bool; anything else is for the registered op's checks to name.
  if (!PyUnicode_Check(mode_obj) || !PyBool_Check(align_obj) || !plain_dispatch_state()) Py_RETURN_NONE;
  Py_ssize_t mode_len = 0;
  const char* mode = PyUnicode_AsUTF8AndSize(mode_obj, &mode_len);
  if (mode == nullptr) return nullptr;
  const bool grad_enabled = at::GradMode::is_enabled();
  std::optional<at::Tensor> x = plain_cpu_tensor(x_obj, grad_enabled);
  std::optional<std::vector<at::Tensor>> low_res = plain_cpu_tensors(low_obj, grad_enabled);
  std::optional<std::vector<at::Tensor>> same_res = plain_cpu_tensors(same_obj, grad_enabled);
  if (!x || !low_res || !same_res) Py_RETURN_NONE;
  hrnet_fast::FuseArgs fuse;
  try {
    fuse = hrnet_fast::prepare_fuse(*x, *low_res, *same_res, relu != 0, c10::string_view(mode, mode_len),
                                    align_obj == Py_True, c10::DeviceType::CPU);
  } catch (const c10::Error&) {
    Py_RETURN_NONE;  // input the op rejects: the registered op's path says why
  }
  if (fuse.out.numel() > 0) {
    pybind11::gil_scoped_release no_gil;
    // Named in torch.profiler's trace as the registered op's kernel would be (benchmarks/cpu_overhead.py).
    RECORD_FUNCTION("hrnet_fast_C::multires_fuse", std::vector<c10::IValue>());
    hrnet_fast::multires_fuse_cpu(fuse);
  }
  return THPVariable_Wrap(std::move(fuse.out));
  END_HANDLE_TH_ERRORS
}

// tensor_signature(dicts) -> bytes: for each value of each dict in the list `dicts` (modules' _parameters and
// _buffers), its data pointer, version counter (-1 for inference tensors, which keep none), device and dtype,
// packed; a None value packs as zeros. Equal signatures mean no tensor was replaced, moved, cast or written in place
// in between, which a captured CUDA graph (holding raw pointers) needs (hrnet_fast/convert/cuda_graph.py). The same
// loop in Python took 870 us for HRNet-W18's 652 tensors, this 11 us (2 busy cores), on every graph replay.
PyObject* tensor_signature(PyObject* /*module*/, PyObject* dicts) {
  HANDLE_TH_ERRORS
  if (!PyList_Check(dicts)) {
    PyErr_SetString(PyExc_TypeError, "tensor_signature takes a list of dicts");
    return nullptr;
  }
  std::vector<int64_t> words;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dicts); ++i) {
    PyObject* dict = PyList_GET_ITEM(dicts, i);
    if (!PyDict_Check(dict)) {
      PyErr_SetString(PyExc_TypeError, "tensor_signature takes a list of dicts");
      return nullptr;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
      if (value == Py_None) {
        words.insert(words.end(), 4, 0);
        continue;
      }
      if (!THPVariable_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "tensor_signature: a dict value is neither a tensor nor None");
        return nullptr;
      }
      const at::Tensor& t = THPVariable_Unpack(value);
      words.push_back(reinterpret_cast<intptr_t>(t.const_data_ptr()));
      words.push_back(t.is_inference() ? -1 : static_cast<int64_t>(t._version()));
      words.push_back((static_cast<int64_t>(t.device().type()) << 16) | (t.device().index() & 0xffff));
      words.push_back(static_cast<int64_t>(t.scalar_type()));
    }
  }
  return PyBytes_FromStringAndSize(reinterpret_cast<const char*>(words.data()),
                                   static_cast<Py_ssize_t>(words.size() * sizeof(int64_t)));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"multires_fuse_cpu", multires_fuse_cpu, METH_VARARGS,
     "multires_fuse_cpu(x, low_res, same_res, relu, mode, align_corners) -> Tensor or None: the CPU multires_fuse "
     "kernel without the "
     "dispatcher, or None where the call must go through torch.ops.hrnet_fast_C.multires_fuse."},
    {"tensor_signature", tensor_signature, METH_O,
     "tensor_signature(dicts) -> bytes: data pointer, version, device and dtype of every tensor in a list of dicts."},
#ifdef HRNET_FAST_WITH_ONEDNN
    {"onednn_conv_new", hrnet_fast::onednn_conv_new, METH_VARARGS,
     "onednn_conv_new(weight, stride, padding[, groups]) -> handle: a conv layer run through oneDNN primitives "
     "it keeps."},
    {"onednn_conv_run", hrnet_fast::onednn_conv_run, METH_VARARGS,
     "onednn_conv_run(handle, x, bias, residual, relu, residual_is_free) -> Tensor or None (no primitive for the "
     "call on this CPU)."},
    {"onednn_conv_plans", hrnet_fast::onednn_conv_plans, METH_O,
     "onednn_conv_plans(handle) -> int: the (input shape, epilogue, threads) primitives a conv layer keeps now."},
    {"onednn_conv_implementations", hrnet_fast::onednn_conv_implementations, METH_O,
     "onednn_conv_implementations(handle) -> [(threads, name)]: each kept primitive's thread count and kernel."},
    {"onednn_set_verbose", hrnet_fast::onednn_set_verbose, METH_O,
     "onednn_set_verbose(level): the linked oneDNN's verbose level (0 off, 1 executions, 2 also creations)."},
    {"onednn_version", hrnet_fast::onednn_version, METH_NOARGS, "onednn_version() -> str: the linked oneDNN."},
    {"replay_new", hrnet_fast::replay_new, METH_VARARGS,
     "replay_new(steps, inputs, slots, outputs, mode) -> handle: a converted module's forward as steps run "
     "in C++ (mode 0 serial, 1 branch-parallel, 2 decided at the first call per input shape and thread count)."},
    {"replay_valid", hrnet_fast::replay_valid, METH_VARARGS,
     "replay_valid(handle, watch) -> bool: the modules and weights are as they were when it was built."},
    {"replay_run", hrnet_fast::replay_run, METH_VARARGS,
     "replay_run(handle, watch, inputs) -> list of Tensors, or None where the module path must run."},
    {"replay_schedule", hrnet_fast::replay_schedule, METH_O,
     "replay_schedule(handle) -> dict: the mode, the steps' dependency graph, and what was measured."},
#endif
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, C10_STRINGIZE(TORCH_EXTENSION_NAME),
                          "hrnet_fast's compiled operators (torch.ops.hrnet_fast_C) and their eager CPU entry point",
                          -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

// TORCH_EXTENSION_NAME is the module's name: _C when setup.py builds it, hrnet_fast_C in the ninja JIT build.
PyMODINIT_FUNC C10_CONCATENATE(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module_def); }
