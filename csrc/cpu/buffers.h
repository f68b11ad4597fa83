// Output buffers of the CPU kernels.
//
// A new buffer of tens of MB (gradients of [..., K] mixture parameters, the [T, B, C] buffers of the gated
// convolution) comes from fresh pages, and faulting them in 4 KB at a time costs about as much as a pass
// over the buffer (on this project's VM, ~3 us a page: 45 ms for the 60 MB of GMM gradients at the speech
// shape, against 15 ms of compute). Large buffers are therefore allocated 2 MB-aligned with transparent
// huge pages requested (madvise; the kernel's default mode), which cuts the faults 512-fold. Small ones
// use the default allocator.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/accumulate.h>
#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace fastlv {

inline at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  constexpr size_t kHugePage = size_t(2) << 20;
  const size_t nbytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (nbytes < 4 * kHugePage) return at::empty(sizes, options);
  void* data = nullptr;
  if (posix_memalign(&data, kHugePage, nbytes) != 0) throw std::bad_alloc();
  madvise(data, nbytes, MADV_HUGEPAGE);  // a hint: without THP support the buffer just has 4 KB pages
  return at::from_blob(data, sizes, [](void* p) { std::free(p); }, options);
}

// A contiguous buffer of t's sizes and options.
inline at::Tensor empty_buffer_like(const at::Tensor& t) { return empty_buffer(t.sizes(), t.options()); }

// A kernel's temporary buffer number `slot` (uninitialized), kept by the calling thread for its next call.
// Temporaries of a few MB freed at the end of every call are returned to the OS by the allocator and
// faulted in again at the next (the masked linear backward took ~400 faults, ~1 ms, a call at the MADE
// shape). Buffers over kMaxKept bytes are not kept: they come from empty_buffer. A thread keeps at most
// kSlots * kMaxKept bytes; the returned tensor must not outlive the call.
inline at::Tensor scratch_buffer(int slot, at::IntArrayRef sizes, const at::TensorOptions& options) {
  constexpr int kSlots = 5;
  constexpr int64_t kMaxKept = int64_t(8) << 20;
  const int64_t numel = c10::multiply_integers(sizes), nbytes = numel * options.dtype().itemsize();
  TORCH_CHECK(slot >= 0 && slot < kSlots, "fastlv: scratch slot ", slot, " out of range");
  if (nbytes > kMaxKept) return empty_buffer(sizes, options);
  thread_local at::Tensor kept[kSlots];
  at::Tensor& buffer = kept[slot];
  if (!buffer.defined() || buffer.nbytes() < size_t(nbytes) || buffer.dtype() != options.dtype()) {
    buffer = at::empty({numel}, options);
  }
  return buffer.narrow(0, 0, numel).view(sizes);
}

}  // namespace fastlv
