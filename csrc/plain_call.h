// Whether an eager call from Python can skip the dispatcher: what the extension's direct entry points
// (module.cpp's multires_fuse_cpu, cpu/onednn_conv.cpp) check before running a kernel themselves. A call that
// fails these takes the registered op, which does what the dispatcher would (modes, subclasses, autograd).
#pragma once

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/Tensor.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>

#include <optional>

namespace hrnet_fast {

// Every dispatch key a plain strided CPU tensor can carry: an inference-mode tensor has only CPU (and
// AutocastCPU), others add the autograd keys. Sparse, quantized, conjugated, subclassed (Python) or
// functorch-wrapped tensors carry more.
inline const c10::DispatchKeySet kPlainCpuKeys({c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                               c10::DispatchKey::AutogradCPU, c10::DispatchKey::AutocastCPU});
// The thread's always-included keys outside any transform or mode (ADInplaceOrView drops out in inference mode).
inline const c10::DispatchKeySet kPlainIncludedKeys({c10::DispatchKey::BackendSelect,
                                                    c10::DispatchKey::ADInplaceOrView});

// Nothing on this thread would intercept an op call on its way to the backend kernel.
inline bool plain_dispatch_state() {
  return kPlainIncludedKeys.isSupersetOf(c10::impl::tls_local_dispatch_key_set().included_) &&
         !c10::impl::TorchDispatchModeTLS::any_modes_set() && !at::impl::torch_function_mode_enabled();
}

// The tensor behind `obj` if the dispatcher would hand it to the CPU kernel unchanged, else nullopt.
inline std::optional<at::Tensor> plain_cpu_tensor(PyObject* obj, bool grad_enabled) {
  if (!THPVariable_CheckExact(obj)) return std::nullopt;
  const at::Tensor& t = THPVariable_Unpack(obj);
  if (!t.defined() || !kPlainCpuKeys.isSupersetOf(t.key_set())) return std::nullopt;
  if (grad_enabled && t.requires_grad()) return std::nullopt;
  return t;
}

}  // namespace hrnet_fast
