// Calling fastlv_C kernel ops from the C++ autograd kernels (torch::autograd::Function) of fastlv_C ops.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

namespace fastlv {

// An op of fastlv_C through the dispatcher: below autograd it runs the kernel of the device (CPU or CUDA).
// Fn: the signature of its CPU kernel.
template <typename Fn>
c10::TypedOperatorHandle<Fn> kernel_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace fastlv
