// conv + bias (+ residual) (+ ReLU) through oneDNN convolution primitives that live as long as the layer.
//
// ATen's torch.ops.mkldnn._convolution_pointwise runs the same oneDNN kernels but builds a primitive descriptor on
// every call (memory descriptors, post-op attributes, the implementation search): 20-25 us a call on an AVX512
// EPYC, 15-26 % of a converted HRNet's forward at batch 1. Here one Conv holds a layer's weight and, per input
// shape and epilogue, a primitive created once with the weight reordered into its layout once (plans wanting the
// same layout share it); a call then only wraps the tensors' pointers and executes: ~2 us of overhead.
//
// Contract (as conv_bn_act's, reference.py): out = relu?(conv2d(x, weight) + bias + residual), the residual summed
// into the fp32 accumulator by a sum post-op and the result rounded once to the layer's dtype. Activations are
// channels_last (oneDNN's nhwc); the residual is summed in place: into the residual tensor itself when the caller
// gives it up (residual_is_free), else into a copy. The scratchpad is the caller's (an Exec's, one per call or
// replayed forward), so one primitive can run on several threads at once. Plans are kept per thread count too: a
// conv in a branch-parallel lane (replay.cpp) runs on one thread, with a primitive created for one thread.
#ifdef HRNET_FAST_WITH_ONEDNN

#include "cpu/onednn_conv.h"
#include "plain_call.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/record_function.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace hrnet_fast {
namespace {

using dnnl::memory;
using Tag = memory::format_tag;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

memory::data_type dnnl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return memory::data_type::f32;
    case at::kBFloat16: return memory::data_type::bf16;
    case at::kHalf: return memory::data_type::f16;
    default: TORCH_CHECK(false, "onednn_conv: float32, bfloat16 or float16 tensors, got ", t);
  }
}

memory::dims dims_of(at::IntArrayRef a) { return memory::dims(a.begin(), a.end()); }

// A handle is a capsule holding a shared_ptr, so that a replayed forward (replay.cpp) can keep a layer alive.
constexpr const char* kCapsule = "hrnet_fast.onednn_conv";

}  // namespace

namespace onednn {

Exec::Exec() : stream(cpu_engine()) {}

Conv::Conv(at::Tensor weight, int64_t stride, int64_t padding, int64_t groups)
    : weight_(std::move(weight)), stride_(stride), padding_(padding), groups_(groups) {}

size_t Conv::plans() {
  std::lock_guard<std::mutex> lock(mutex_);
  return plans_.size();
}

std::vector<std::pair<int, std::string>> Conv::implementations() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::pair<int, std::string>> out;
  for (const auto& [key, plan] : plans_) {
    if (plan != nullptr) out.emplace_back(std::get<5>(key), plan->implementation);
  }
  return out;
}

bool Conv::takes(const at::Tensor& x, const at::Tensor& bias, const std::optional<at::Tensor>& residual) const {
  const at::ScalarType dtype = weight_.scalar_type();
  return x.dim() == 4 && x.scalar_type() == dtype && bias.scalar_type() == dtype &&
         (!residual.has_value() || residual->scalar_type() == dtype) &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

std::optional<at::Tensor> Conv::run(const at::Tensor& x, const at::Tensor& bias,
                                    const std::optional<at::Tensor>& residual, bool relu, bool residual_is_free,
                                    Exec& exec) {
  check(x, bias);
  if (x.size(0) == 0) {  // an empty batch: nothing to compute, and oneDNN takes no zero-sized primitive
    return residual.has_value() && residual_is_free
               ? *residual
               : at::empty(out_sizes(x), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  }
  at::internal::lazy_init_num_threads();  // this thread's OpenMP thread count as torch.set_num_threads set it
  const int threads = omp_in_parallel() ? 1 : at::get_num_threads();
  const std::shared_ptr<const Plan> plan = plan_for(x, residual.has_value(), relu, threads);
  if (plan == nullptr) return std::nullopt;
  at::Tensor out;
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.sizes() == at::IntArrayRef(plan->out_sizes) && r.scalar_type() == x.scalar_type() &&
                    r.device().is_cpu(),
                "onednn_conv: residual is ", r.sizes(), " ", r.scalar_type(), ", expected ",
                at::IntArrayRef(plan->out_sizes), " ", x.scalar_type());
    const bool in_place = residual_is_free && r.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                          r.data_ptr() != x.data_ptr();
    out = in_place ? r : r.clone(at::MemoryFormat::ChannelsLast);
  } else {
    out = at::empty(plan->out_sizes, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  }
  if (out.numel() == 0) return out;
  const int64_t pad_bytes = static_cast<int64_t>(plan->scratchpad.get_size());
  if (!exec.scratch.defined() || exec.scratch.numel() < pad_bytes) {
    exec.scratch = at::empty({pad_bytes}, x.options().dtype(at::kByte));
  }
  dnnl::engine& engine = cpu_engine();
  memory src(plan->src, engine, x.data_ptr()), dst(plan->dst, engine, out.data_ptr());
  memory b(plan->bias, engine, bias.data_ptr()), pad(plan->scratchpad, engine, exec.scratch.data_ptr());
  plan->primitive.execute(exec.stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, plan->weights},
                                        {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, pad}});
  exec.stream.wait();
  return out;
}

void Conv::check(const at::Tensor& x, const at::Tensor& bias) const {
  const int64_t cin = weight_.size(1) * groups_;
  TORCH_CHECK(x.dim() == 4 && x.size(1) == cin && x.scalar_type() == weight_.scalar_type() &&
                  x.device().is_cpu() && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "onednn_conv: x must be a channels_last CPU tensor [N, ", cin, ", H, W] of ",
              weight_.scalar_type(), ", got ", x.sizes(), " ", x.scalar_type(), " with strides ", x.strides());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "onednn_conv: x has an empty spatial size ", x.sizes());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight_.size(0) && bias.scalar_type() == weight_.scalar_type() &&
                  bias.is_contiguous() && bias.device().is_cpu(),
              "onednn_conv: bias must be a dense [", weight_.size(0), "] tensor of ", weight_.scalar_type());
}

// The plan for x's shape and this epilogue, created on first use; nullptr when oneDNN has no implementation.
// At most kMaxPlans are kept (a segmentation model fed many sizes would otherwise hold a primitive per size and
// conv): past that, all are dropped and made again as calls need them. Callers hold their plan by shared_ptr,
// so dropping never pulls one from under a call running on another thread.
std::shared_ptr<const Conv::Plan> Conv::plan_for(const at::Tensor& x, bool sum, bool relu, int threads) {
  const Key key{x.size(0), x.size(2), x.size(3), sum, relu, threads};
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second;
  if (plans_.size() >= kMaxPlans) plans_.clear();
  std::shared_ptr<const Plan> plan;
  try {
    plan = std::make_shared<const Plan>(make_plan(x, sum, relu, threads));
  } catch (const dnnl::error& e) {
    if (e.status != dnnl_unimplemented) throw;  // nullptr, remembered: this call takes the ATen path
  }
  plans_[key] = plan;
  return plan;
}

std::vector<int64_t> Conv::out_sizes(const at::Tensor& x) const {
  const int64_t k = weight_.size(2), h = x.size(2), w = x.size(3);
  const int64_t ho = (h + 2 * padding_ - k) / stride_ + 1, wo = (w + 2 * padding_ - k) / stride_ + 1;
  TORCH_CHECK(h + 2 * padding_ >= k && w + 2 * padding_ >= k, "onednn_conv: input of spatial size (", h, ", ", w,
              ") is too small for a ", k, "x", k, " kernel with padding ", padding_);
  return {x.size(0), weight_.size(0), ho, wo};
}

// The calling thread's OpenMP thread count set to `threads` while it lives: oneDNN sizes a primitive's work split
// for the count it finds at creation (per thread, so other threads are unaffected).
class ThreadCount {
 public:
  explicit ThreadCount(int threads) : before_(omp_get_max_threads()) {
    if (threads != before_) omp_set_num_threads(threads);
  }
  ~ThreadCount() {
    if (omp_get_max_threads() != before_) omp_set_num_threads(before_);
  }

 private:
  int before_;
};

Conv::Plan Conv::make_plan(const at::Tensor& x, bool sum, bool relu, int threads) {
  const ThreadCount count(threads);
  const int64_t cout = weight_.size(0), cin = weight_.size(1) * groups_, k = weight_.size(2);
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3);
  const std::vector<int64_t> sizes = out_sizes(x);
  const int64_t ho = sizes[2], wo = sizes[3];
  const memory::data_type dt = dnnl_type(weight_.scalar_type());
  Plan plan;
  plan.src = memory::desc({n, cin, h, w}, dt, Tag::nhwc);
  plan.dst = memory::desc({n, cout, ho, wo}, dt, Tag::nhwc);
  plan.bias = memory::desc({cout}, dt, Tag::a);
  plan.out_sizes = sizes;
  dnnl::post_ops ops;
  if (sum) ops.append_sum(1.f);
  if (relu) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::engine& engine = cpu_engine();
  // A grouped weight is oneDNN's 5-D [groups, Cout / groups, Cin / groups, k, k]: the same memory as the stored
  // [Cout, Cin / groups, k, k], its first dimension split.
  const memory::dims wdims = groups_ == 1 ? memory::dims{cout, cin, k, k}
                                          : memory::dims{groups_, cout / groups_, cin / groups_, k, k};
  dnnl::convolution_forward::primitive_desc pd(
      engine, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, plan.src,
      memory::desc(wdims, dt, Tag::any), plan.bias, plan.dst, {stride_, stride_},
      {padding_, padding_}, {padding_, padding_}, attr);
  plan.primitive = dnnl::convolution_forward(pd);
  plan.implementation = pd.impl_info_str();
  plan.scratchpad = pd.scratchpad_desc();
  for (const auto& entry : plans_) {
    if (entry.second != nullptr && entry.second->weights.get_desc() == pd.weights_desc()) {
      plan.weights = entry.second->weights;
      return plan;
    }
  }
  plan.weights = memory(pd.weights_desc(), engine);
  memory::dims wstrides = dims_of(weight_.strides());
  if (groups_ != 1) wstrides.insert(wstrides.begin(), wstrides[0] * (cout / groups_));
  memory user(memory::desc(wdims, dt, wstrides), engine, weight_.data_ptr());
  dnnl::stream stream(engine);
  dnnl::reorder(user, plan.weights).execute(stream, user, plan.weights);
  stream.wait();
  return plan;
}

std::shared_ptr<Conv> conv_of(PyObject* handle) {
  auto* conv = static_cast<std::shared_ptr<Conv>*>(PyCapsule_GetPointer(handle, kCapsule));
  return conv == nullptr ? nullptr : *conv;
}

}  // namespace onednn

namespace {

using onednn::Conv;

void destroy(PyObject* capsule) {
  delete static_cast<std::shared_ptr<Conv>*>(PyCapsule_GetPointer(capsule, kCapsule));
}

const at::Tensor* tensor_arg(PyObject* obj, const char* name) {
  if (!THPVariable_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "onednn_conv: %s must be a tensor", name);
    return nullptr;
  }
  return &THPVariable_Unpack(obj);
}

}  // namespace

PyObject* onednn_conv_new(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject* weight_obj;
  long long stride, padding, groups = 1;
  if (!PyArg_ParseTuple(args, "OLL|L:onednn_conv_new", &weight_obj, &stride, &padding, &groups)) return nullptr;
  const at::Tensor* weight = tensor_arg(weight_obj, "weight");
  if (weight == nullptr) return nullptr;
  TORCH_CHECK(weight->dim() == 4 && weight->size(2) == weight->size(3) && weight->device().is_cpu() &&
                  weight->numel() > 0,
              "onednn_conv: weight must be a non-empty [Cout, Cin, k, k] CPU tensor, got ", weight->sizes());
  dnnl_type(weight->scalar_type());
  TORCH_CHECK(stride >= 1 && padding >= 0, "onednn_conv: stride ", stride, ", padding ", padding);
  TORCH_CHECK(groups >= 1 && weight->size(0) % groups == 0, "onednn_conv: groups ", groups,
              " does not divide the weight's ", weight->size(0), " output channels");
  return PyCapsule_New(new std::shared_ptr<Conv>(std::make_shared<Conv>(weight->detach(), stride, padding, groups)),
                       kCapsule, destroy);
  END_HANDLE_TH_ERRORS
}

PyObject* onednn_conv_run(PyObject* /*module*/, PyObject* args) {
  HANDLE_TH_ERRORS
  PyObject *handle, *x_obj, *bias_obj, *residual_obj;
  int relu, residual_is_free;
  if (!PyArg_ParseTuple(args, "OOOOpp:onednn_conv_run", &handle, &x_obj, &bias_obj, &residual_obj, &relu,
                        &residual_is_free)) {
    return nullptr;
  }
  const std::shared_ptr<Conv> conv = onednn::conv_of(handle);
  if (conv == nullptr) return nullptr;
  const at::Tensor* x = tensor_arg(x_obj, "x");
  const at::Tensor* bias = x == nullptr ? nullptr : tensor_arg(bias_obj, "bias");
  if (bias == nullptr) return nullptr;
  std::optional<at::Tensor> residual;
  if (residual_obj != Py_None) {
    const at::Tensor* r = tensor_arg(residual_obj, "residual");
    if (r == nullptr) return nullptr;
    residual = *r;
  }
  // Only calls the dispatcher would hand to a CPU kernel unchanged, in the form the primitives take; the rest
  // (tensor subclasses, autograd, modes, other layouts and dtypes) go back to the caller's general path.
  const bool grad = at::GradMode::is_enabled();
  if (!plain_dispatch_state() || !plain_cpu_tensor(x_obj, grad) || !plain_cpu_tensor(bias_obj, grad) ||
      (residual_obj != Py_None && !plain_cpu_tensor(residual_obj, grad)) || !conv->takes(*x, *bias, residual)) {
    Py_RETURN_NONE;
  }
  std::optional<at::Tensor> out;
  {
    pybind11::gil_scoped_release no_gil;
    RECORD_FUNCTION("hrnet_fast_C::onednn_conv", std::vector<c10::IValue>());  // named in torch.profiler's trace
    onednn::Exec exec;
    out = conv->run(*x, *bias, residual, relu != 0, residual_is_free != 0, exec);
  }
  if (!out) Py_RETURN_NONE;
  return THPVariable_Wrap(std::move(*out));
  END_HANDLE_TH_ERRORS
}

PyObject* onednn_conv_plans(PyObject* /*module*/, PyObject* handle) {
  const std::shared_ptr<Conv> conv = onednn::conv_of(handle);
  if (conv == nullptr) return nullptr;
  return PyLong_FromSize_t(conv->plans());
}

PyObject* onednn_conv_implementations(PyObject* /*module*/, PyObject* handle) {
  const std::shared_ptr<Conv> conv = onednn::conv_of(handle);
  if (conv == nullptr) return nullptr;
  const std::vector<std::pair<int, std::string>> impls = conv->implementations();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(impls.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < impls.size(); ++i) {
    PyObject* item = Py_BuildValue("(is)", impls[i].first, impls[i].second.c_str());
    if (item == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
  }
  return list;
}

PyObject* onednn_set_verbose(PyObject* /*module*/, PyObject* level) {
  HANDLE_TH_ERRORS
  const long value = PyLong_AsLong(level);
  if (value == -1 && PyErr_Occurred()) return nullptr;
  TORCH_CHECK(dnnl_set_verbose(static_cast<int>(value)) == dnnl_success, "onednn_set_verbose: level 0, 1 or 2");
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyObject* onednn_version(PyObject* /*module*/, PyObject* /*noargs*/) {
  const dnnl_version_t* v = dnnl::version();
  return PyUnicode_FromFormat("%d.%d.%d", v->major, v->minor, v->patch);
}

}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
