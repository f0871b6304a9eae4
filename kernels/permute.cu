// Row gather (the permute before and after expert compute) and the weighted top-k combine. The combine sums
// in k order with separately rounded multiplies and adds, the order a CPU loop compiled with
// -ffp-contract=off uses, so the two agree bit for bit.
#include <cstdint>
#include <string>

#include "kernels/launch_check.cuh"
#include "kernels/ops.hpp"

namespace eplab::kernels {
namespace {

constexpr int kThreads = 256;

template <class T>
__global__ void permute_kernel(const T* in, const int32_t* index, int out_rows, size_t row_elems, T* out) {
  for (int r = blockIdx.x; r < out_rows; r += gridDim.x) {
    const int32_t src = index[r];
    T* dst = out + static_cast<size_t>(r) * row_elems;
    if (src < 0) {
      for (size_t i = threadIdx.x; i < row_elems; i += blockDim.x) dst[i] = T{};
    } else {
      const T* s = in + static_cast<size_t>(src) * row_elems;
      for (size_t i = threadIdx.x; i < row_elems; i += blockDim.x) dst[i] = s[i];
    }
  }
}

__global__ void combine_kernel(const float* in, const int32_t* src, const float* weight, int tokens, int topk,
                               int hidden, float* out) {
  const long long n = static_cast<long long>(tokens) * hidden;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int t = static_cast<int>(i / hidden), h = static_cast<int>(i % hidden);
    float acc = 0.0f;
    for (int k = 0; k < topk; ++k) {
      const int32_t s = src[static_cast<size_t>(t) * topk + k];
      if (s < 0) continue;
      acc =
          __fadd_rn(acc, __fmul_rn(weight[static_cast<size_t>(t) * topk + k], in[static_cast<size_t>(s) * hidden + h]));
    }
    out[i] = acc;
  }
}

}  // namespace

void permute_rows(const void* in, const int32_t* index, int out_rows, size_t row_bytes, void* out, GpuStream stream) {
  const std::string shape = "rows " + std::to_string(out_rows) + ", row bytes " + std::to_string(row_bytes);
  if (out_rows <= 0 || row_bytes == 0) return;
  const int blocks = blocks_for(out_rows, 1);
  const auto addr = reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(out);
  // 16-byte moves where the rows allow it; bytes otherwise (odd wire formats, e.g. fp8 with hidden % 4 != 0).
  if (row_bytes % 16 == 0 && addr % 16 == 0) {
    permute_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint4*>(in), index, out_rows, row_bytes / 16,
                                                    static_cast<uint4*>(out));
  } else if (row_bytes % 4 == 0 && addr % 4 == 0) {
    permute_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint32_t*>(in), index, out_rows, row_bytes / 4,
                                                    static_cast<uint32_t*>(out));
  } else {
    permute_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint8_t*>(in), index, out_rows, row_bytes,
                                                    static_cast<uint8_t*>(out));
  }
  check_launch("permute_rows", shape);
}

void weighted_combine(const float* in, const int32_t* src, const float* weight, int tokens, int topk, int hidden,
                      float* out, GpuStream stream) {
  const std::string shape =
      "tokens " + std::to_string(tokens) + ", topk " + std::to_string(topk) + ", hidden " + std::to_string(hidden);
  if (tokens < 0 || topk < 0 || hidden <= 0)
    throw std::runtime_error("kernels: weighted_combine: bad shape (" + shape + ")");
  if (tokens == 0) return;
  combine_kernel<<<blocks_for(static_cast<long long>(tokens) * hidden, kThreads), kThreads, 0, stream>>>(
      in, src, weight, tokens, topk, hidden, out);
  check_launch("weighted_combine", shape);
}

}  // namespace eplab::kernels
