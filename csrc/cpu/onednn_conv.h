// conv + bias (+ residual) (+ ReLU) on CPU through oneDNN primitives this extension creates once per layer and
// input shape and keeps (hrnet_fast/ops/onednn_conv.py says when and why). Built only with HRNET_FAST_WITH_ONEDNN
// (oneDNN's headers and library found at build time: hrnet_fast/ops/extension.py, build_config).
#pragma once

#ifdef HRNET_FAST_WITH_ONEDNN

#include <Python.h>

#include <ATen/core/Tensor.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace hrnet_fast {
namespace onednn {

// What the convs of one forward share: a stream and a scratchpad buffer grown to the largest need (each conv
// allocating its own cost ~0.5 us a call). One per thread and call: a primitive may run on several at once.
struct Exec {
  Exec();
  dnnl::stream stream;
  at::Tensor scratch;  // bytes
};

// One conv layer: out = relu?(conv2d(x, weight) + bias + residual) (see onednn_conv.cpp).
class Conv {
 public:
  // weight: [Cout, Cin / groups, k, k], dense in any layout; held (not copied) and read again only for a new plan.
  // groups > 1: a grouped conv (Lite-HRNet's depthwise convs: groups == Cin == Cout).
  Conv(at::Tensor weight, int64_t stride, int64_t padding, int64_t groups);

  size_t plans();

  // (thread count, oneDNN implementation name) of each kept primitive.
  std::vector<std::pair<int, std::string>> implementations();

  // Whether the kept primitives take this call as given: x channels_last and every tensor in the layer's dtype.
  bool takes(const at::Tensor& x, const at::Tensor& bias, const std::optional<at::Tensor>& residual) const;

  // x [N, Cin, H, W] channels_last, bias [Cout], residual [N, Cout, Ho, Wo] or none; returns [N, Cout, Ho, Wo]
  // channels_last (residual itself when residual_is_free and it is dense channels_last), or nullopt when oneDNN
  // has no primitive for this dtype on this CPU. Shapes that cannot go together raise. Runs on the calling
  // thread's OpenMP thread count, or on the calling thread alone inside a parallel region (where oneDNN runs
  // every primitive on the calling thread), with a primitive created for that count.
  std::optional<at::Tensor> run(const at::Tensor& x, const at::Tensor& bias,
                                const std::optional<at::Tensor>& residual, bool relu, bool residual_is_free,
                                Exec& exec);

 private:
  struct Plan {
    dnnl::convolution_forward primitive;
    dnnl::memory weights;  // the weight in the primitive's layout
    dnnl::memory::desc src, bias, dst, scratchpad;
    std::vector<int64_t> out_sizes;
    std::string implementation;  // oneDNN's name for the kernel it picked
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, int>;  // N, H, W, residual, relu, threads
  static constexpr size_t kMaxPlans = 16;

  void check(const at::Tensor& x, const at::Tensor& bias) const;
  std::shared_ptr<const Plan> plan_for(const at::Tensor& x, bool sum, bool relu, int threads);
  std::vector<int64_t> out_sizes(const at::Tensor& x) const;
  Plan make_plan(const at::Tensor& x, bool sum, bool relu, int threads);

  at::Tensor weight_;
  int64_t stride_, padding_, groups_;
  std::mutex mutex_;
  std::map<Key, std::shared_ptr<const Plan>> plans_;
};

// The layer behind a handle onednn_conv_new returned; nullptr with a Python error set for anything else.
std::shared_ptr<Conv> conv_of(PyObject* handle);

}  // namespace onednn

// Python entry points, listed in module.cpp's method table:
//   onednn_conv_new(weight, stride, padding[, groups]) -> handle
//   onednn_conv_run(handle, x, bias, residual, relu, residual_is_free) -> Tensor, or None for a call the kept
//       primitives do not take as given (not channels_last, another dtype, a tensor the dispatcher would not hand
//       to a CPU kernel unchanged, a dispatch or function mode) or where oneDNN has no primitive for the dtype on
//       this CPU: the caller then takes its general path
//   onednn_conv_plans(handle) -> int: how many (input shape, epilogue, threads) primitives it keeps now (at most 16)
//   onednn_conv_implementations(handle) -> [(threads, name)]: each kept primitive's thread count and kernel
//   onednn_set_verbose(level): this oneDNN's ONEDNN_VERBOSE level from now on (0 off, 1 each execution, 2 also
//       primitive creation), which the environment variable can only set at start-up
//   onednn_version() -> str
PyObject* onednn_conv_new(PyObject* module, PyObject* args);
PyObject* onednn_conv_run(PyObject* module, PyObject* args);
PyObject* onednn_conv_plans(PyObject* module, PyObject* handle);
PyObject* onednn_conv_implementations(PyObject* module, PyObject* handle);
PyObject* onednn_set_verbose(PyObject* module, PyObject* level);
PyObject* onednn_version(PyObject* module, PyObject* noargs);

}  // namespace hrnet_fast

#endif  // HRNET_FAST_WITH_ONEDNN
