// Element types of the buffers handed to the CUDA launchers (csrc/cuda/*.cuh); the torch glue maps
// at::ScalarType onto it. No torch headers here: nvcc compiles this file too.
#pragma once

namespace fastlv {

enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

}  // namespace fastlv
