// Shared by the .cu files: turns a failed launch into an exception that names the kernel and its shape.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace eplab::kernels {

inline void check_launch(const char* kernel, const std::string& shape) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("kernels: ") + kernel + " (" + shape +
                             ") failed to launch: " + cudaGetErrorString(err));
}

inline void check_call(cudaError_t err, const char* what, const std::string& shape) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("kernels: ") + what + " (" + shape + "): " + cudaGetErrorString(err));
}

// Enough blocks to fill an H100 several times over; grid-stride loops cover the rest.
constexpr int kMaxBlocks = 4096;

inline int blocks_for(long long items, int per_block) {
  const long long b = (items + per_block - 1) / per_block;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

}  // namespace eplab::kernels
