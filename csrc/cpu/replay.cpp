// A converted module's forward as one list of steps, run in one call from Python (hrnet_fast/convert/replay.py
// builds the list and says when it is used).
//
// Why: on CPU at batch 1, a converted HRNet-W18 spends ~3 ms of a ~29 ms forward in Python and dispatch: about
// 6 us per fused conv for the module calls around it, for ~300 convs. Here an HR stage's or a branch's convs
// (kept oneDNN primitives, onednn_conv.h) and fusions (multires_fuse_cpu) run back to back in C++, sharing one
// oneDNN stream and scratchpad, with the same kernels and the same arguments the module path would pass:
// outputs are bitwise those of the module path.
//
// A step reads and writes numbered slots: slots [0, inputs) are the caller's tensors, which are never written;
// a conv sums its residual in place where the builder found that no later step reads it; a step drops the slots
// it reads last, so memory is freed as early as on the module path. Anything the steps do not take as given
// (a dtype without a primitive, input the kernels reject) makes the call return None before any caller-visible
// effect, and the caller runs its module path, which gives the answer or the error.
//
// The program and its schedules are replay_program.{h,cpp}; this file reads it from Python and runs it for Python.

#ifdef HRNET_FAST_WITH_ONEDNN

#include "cpu/replay_program.h"
#include "plain_call.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace hrnet_fast {
namespace {

using replay::Mode;
using replay::Program;
using replay::Step;

constexpr const char* kCapsule = "hrnet_fast.replay";

void destroy(PyObject* capsule) { delete static_cast<Program*>(PyCapsule_GetPointer(capsule, kCapsule)); }

// A list of Python ints.
std::optional<std::vector<int>> int_list(PyObject* obj) {
  if (!PyList_Check(obj)) return std::nullopt;
  std::vector<int> out;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(obj); ++i) {
    const long v = PyLong_AsLong(PyList_GET_ITEM(obj, i));
    if (v == -1 && PyErr_Occurred()) return std::nullopt;
    out.push_back(static_cast<int>(v));
  }
  return out;
}

bool bad_step(const char* why) {
  PyErr_Format(PyExc_ValueError, "replay_new: %s", why);
  return false;
}

// One step from its tuple (replay.py, Builder, writes them):
//   ("conv", handle, weight, weight_ptr, weight_version, bias, x, residual or -1, relu, residual_is_free, out,
//    release)
//   ("fuse", x, low_res, same_res, mode, align_corners, out, release)
bool parse_step(PyObject* item, int slots, Step& step) {
  if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(item, 0))) {
    return bad_step("a step is a tuple starting with its kind");
  }
  const std::string kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(item, 0));
  const char* unused_kind;
  PyObject* release;
  if (kind == "conv") {
    PyObject *handle, *weight, *bias;
    long long weight_ptr, weight_version;
    int x, residual, relu, free;
    if (!PyArg_ParseTuple(item, "sOOLLOiippiO", &unused_kind, &handle, &weight, &weight_ptr, &weight_version,
                          &bias, &x, &residual, &relu, &free, &step.out, &release)) {
      return false;
    }
    step.kind = Step::Kind::kConv;
    step.conv = onednn::conv_of(handle);
    if (step.conv == nullptr) return false;
    if (!THPVariable_Check(weight) || !THPVariable_Check(bias)) return bad_step("conv weight and bias are tensors");
    step.weight = THPVariable_Unpack(weight);
    step.bias = THPVariable_Unpack(bias);
    step.weight_ptr = reinterpret_cast<const void*>(static_cast<intptr_t>(weight_ptr));
    step.weight_version = weight_version;
    step.relu = relu != 0;
    step.residual_is_free = free != 0;
    step.reads = {x, residual};
  } else if (kind == "fuse") {
    PyObject *low, *same;
    const char* mode;
    int x, align;
    if (!PyArg_ParseTuple(item, "siOOspiO", &unused_kind, &x, &low, &same, &mode, &align, &step.out, &release)) {
      return false;
    }
    step.kind = Step::Kind::kFuse;
    const std::optional<std::vector<int>> lows = int_list(low), sames = int_list(same);
    if (!lows || !sames) return PyErr_Occurred() ? false : bad_step("fuse terms are lists of slots");
    step.reads = {x};
    step.reads.insert(step.reads.end(), lows->begin(), lows->end());
    step.reads.insert(step.reads.end(), sames->begin(), sames->end());
    step.low = lows->size();
    step.mode = mode;
    step.align_corners = align != 0;
  } else {
    return bad_step("a step is \"conv\" or \"fuse\"");
  }
  const std::optional<std::vector<int>> rel = int_list(release);
  if (!rel) return PyErr_Occurred() ? false : bad_step("release is a list of slots");
  step.release = *rel;
  std::vector<int> all = step.reads;
  all.push_back(step.out);
  all.insert(all.end(), step.release.begin(), step.release.end());
  for (size_t i = 0; i < all.size(); ++i) {
    const bool optional_residual = kind == "conv" && i == 1 && all[i] == -1;
    if (!optional_residual && (all[i] < 0 || all[i] >= slots)) return bad_step("a slot is out of range");
  }
  return true;
}

// Whether each (dict, snapshot) pair of `watch` still holds exactly the snapshot's keys and values (by identity,
// in order): the module attributes, children, tensors and hooks the steps were built from.
bool watch_unchanged(PyObject* watch) {
  if (!PyList_Check(watch)) return false;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(watch); ++i) {
    PyObject* pair = PyList_GET_ITEM(watch, i);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) return false;
    PyObject *dict = PyTuple_GET_ITEM(pair, 0), *snapshot = PyTuple_GET_ITEM(pair, 1);
    if (!PyDict_Check(dict) || !PyTuple_Check(snapshot) || 2 * PyDict_GET_SIZE(dict) != PyTuple_GET_SIZE(snapshot)) {
      return false;
    }
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *value;
    while (PyDict_Next(dict, &pos, &key, &value)) {
      if (PyTuple_GET_ITEM(snapshot, k) != key || PyTuple_GET_ITEM(snapshot, k + 1) != value) return false;
      k += 2;
    }
  }
  return true;
}

Program* program_of(PyObject* handle) {
  return static_cast<Program*>(PyCapsule_GetPointer(handle, kCapsule));
}

}  // namespace

PyObject* replay_new(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *steps_obj, *outputs_obj;
  int inputs, slots, mode;
  if (!PyArg_ParseTuple(args, "OiiOi:replay_new", &steps_obj, &inputs, &slots, &outputs_obj, &mode)) return nullptr;
  if (mode < 0 || mode > 2) {
    PyErr_SetString(PyExc_ValueError, "replay_new: mode is 0 (serial), 1 (parallel) or 2 (automatic)");
    return nullptr;
  }
  if (!PyList_Check(steps_obj)) {
    PyErr_SetString(PyExc_TypeError, "replay_new: steps is a list");
    return nullptr;
  }
  std::vector<Step> steps(PyList_GET_SIZE(steps_obj));
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!parse_step(PyList_GET_ITEM(steps_obj, i), slots, steps[i])) return nullptr;
  }
  const std::optional<std::vector<int>> outputs = int_list(outputs_obj);
  if (!outputs) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "replay_new: outputs is a list of slots");
    return nullptr;
  }
  if (inputs < 0 || inputs > slots) {
    PyErr_SetString(PyExc_ValueError, "replay_new: inputs is a count of slots");
    return nullptr;
  }
  std::string why;
  std::optional<replay::Graph> graph = replay::graph_of(steps, inputs, slots, *outputs, why);
  if (!graph) {
    PyErr_Format(PyExc_ValueError, "replay_new: %s", why.c_str());
    return nullptr;
  }
  at::ScalarType dtype = at::kFloat;
  for (const Step& s : steps) {
    if (s.kind == Step::Kind::kConv) {
      dtype = s.bias.scalar_type();
      break;
    }
  }
  return PyCapsule_New(new Program(std::move(steps), inputs, slots, *outputs, dtype, std::move(*graph),
                                   static_cast<Mode>(mode)),
                       kCapsule, destroy);
  END_HANDLE_TH_ERRORS
}

PyObject* replay_valid(PyObject* /*module*/, PyObject* args) {
  PyObject *handle, *watch;
  if (!PyArg_ParseTuple(args, "OO:replay_valid", &handle, &watch)) return nullptr;
  if (handle == Py_None) return PyBool_FromLong(watch_unchanged(watch));
  const Program* program = program_of(handle);
  if (program == nullptr) return nullptr;
  return PyBool_FromLong(watch_unchanged(watch) && program->weights_current());
}

PyObject* replay_schedule(PyObject* /*module*/, PyObject* handle) {
  HANDLE_TH_ERRORS
  const Program* program = program_of(handle);
  if (program == nullptr) return nullptr;
  namespace py = pybind11;
  py::list decisions;
  for (const auto& [key, d] : program->decisions()) {
    decisions.append(py::dict(py::arg("batch") = std::get<0>(key), py::arg("height") = std::get<1>(key),
                              py::arg("width") = std::get<2>(key), py::arg("threads") = std::get<3>(key),
                              py::arg("parallel") = d.parallel, py::arg("serial_ms") = d.serial_ms,
                              py::arg("parallel_ms") = d.parallel_ms));
  }
  py::list segments;
  for (const replay::Segment& seg : program->graph().segments) {
    segments.append(py::make_tuple(seg.at_once, seg.begin, seg.end, seg.width));
  }
  py::dict info(py::arg("mode") = static_cast<int>(program->mode()), py::arg("splits") = program->splits(),
                py::arg("successors") = program->graph().successors, py::arg("segments") = segments,
                py::arg("decisions") = decisions);
  return info.release().ptr();
  END_HANDLE_TH_ERRORS
}

PyObject* replay_run(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *handle, *watch, *inputs_obj;
  if (!PyArg_ParseTuple(args, "OOO:replay_run", &handle, &watch, &inputs_obj)) return nullptr;
  const Program* program = program_of(handle);
  if (program == nullptr) return nullptr;
  // What the module path would check call by call, once: nothing intercepting the ops, oneDNN switched on, the
  // modules and weights as they were, and the caller's tensors plain channels_last CPU tensors of the dtype.
  if (!plain_dispatch_state() || !at::globalContext().userEnabledMkldnn() || !PyList_Check(inputs_obj) ||
      PyList_GET_SIZE(inputs_obj) != program->inputs() || !watch_unchanged(watch) || !program->weights_current()) {
    Py_RETURN_NONE;
  }
  const bool grad = at::GradMode::is_enabled();
  std::vector<at::Tensor> slots;
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(inputs_obj); ++i) {
    std::optional<at::Tensor> t = plain_cpu_tensor(PyList_GET_ITEM(inputs_obj, i), grad);
    if (!t || t->dim() != 4 || t->scalar_type() != program->dtype() ||
        !t->is_contiguous(at::MemoryFormat::ChannelsLast)) {
      Py_RETURN_NONE;
    }
    slots.push_back(std::move(*t));
  }
  std::optional<std::vector<at::Tensor>> outputs;
  {
    pybind11::gil_scoped_release no_gil;
    RECORD_FUNCTION("hrnet_fast_C::replay", std::vector<c10::IValue>());  // named in torch.profiler's trace
    try {
      outputs = program->run(slots);
    } catch (const c10::Error&) {
      outputs.reset();  // input a kernel rejects: the module path raises the error with its own context
    }
  }
  if (!outputs) Py_RETURN_NONE;
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(outputs->size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < outputs->size(); ++i) {
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), THPVariable_Wrap(std::move((*outputs)[i])));
  }
  return list;
  END_HANDLE_TH_ERRORS
}

}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
