// fp8-e4m3-b128 quantize and dequantize, bit-exact with policies/codecs/fp8_codecs.cpp: the same integer
// rounding of block_quant.hpp / float_formats.hpp, and every float operation spelled as an _rn intrinsic so
// nvcc cannot fuse it into an FMA (the CPU build compiles with -ffp-contract=off). One warp per
// (token, 128-channel block); each lane takes channels lane, lane + 32, ... so loads coalesce.
#include <cstdint>
#include <string>

#include "kernels/launch_check.cuh"
#include "kernels/ops.hpp"

namespace eplab::kernels {
namespace {

constexpr int kBlock = 128;
constexpr int kThreads = 256;
constexpr float kFmax = 448.0f;
constexpr float kAmaxFloor = 1e-4f;
constexpr int32_t kAbsMask = 0x7fffffff;
constexpr int32_t kInfBits = 0x7f800000;
constexpr uint8_t kNaNCode = 0x7f;
// E4M3: 3 mantissa bits, bias 7 (MiniFloat<3, 7>).
constexpr int kShift = 20;
constexpr int32_t kMinNormalBits = (127 + 1 - 7) << 23;
constexpr int32_t kMagicBits = (127 + 24 - 7 - 3) << 23;
// The CPU decode table holds std::numeric_limits<float>::quiet_NaN(), and x86 keeps that payload through the
// multiply; the GPU would produce its canonical 0x7fffffff, so NaN codes write this pattern directly.
constexpr uint32_t kCpuQuietNaN = 0x7fc00000u;

__device__ __forceinline__ uint32_t magnitude_code(float a) {
  const int32_t b = __float_as_int(a);
  const int32_t normal = ((b + ((1 << (kShift - 1)) - 1) + ((b >> kShift) & 1)) >> kShift) - ((127 - 7) << 3);
  const int32_t sub = __float_as_int(__fadd_rn(a, __int_as_float(kMagicBits))) - kMagicBits;
  return static_cast<uint32_t>(b >= kMinNormalBits ? normal : sub);
}

__device__ __forceinline__ uint8_t quantize(float x, float scale) {
  const float v = __fmul_rn(x, scale);
  const uint32_t b = __float_as_uint(v);
  const int32_t ab = static_cast<int32_t>(b & kAbsMask);
  float a = __int_as_float(ab);
  a = a < kFmax ? a : kFmax;
  const int32_t code = static_cast<int32_t>(magnitude_code(a));
  const int32_t sign = static_cast<int32_t>(b >> 31) << 7;
  const int32_t special = ab == kInfBits ? (sign | kNaNCode) : kNaNCode;
  return static_cast<uint8_t>(ab >= kInfBits ? special : (sign | code));
}

__device__ __forceinline__ float code_value(uint8_t c) {
  const uint32_t mag = c & 0x7fu;
  if (mag == 0x7fu) return __uint_as_float(kCpuQuietNaN);
  const uint32_t e = mag >> 3, m = mag & 7u;
  // Normal: the exponent and mantissa bits drop straight into fp32; subnormal: m * 2^-9, exact.
  const float v = e == 0 ? __fmul_rn(static_cast<float>(m), 0x1p-9f) : __uint_as_float(((e + 120u) << 23) | (m << 20));
  return (c & 0x80u) ? -v : v;
}

__global__ void quantize_kernel(const float* x, int tokens, int hidden, int blocks_per_token, size_t token_bytes,
                                uint8_t* wire) {
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(tokens) * blocks_per_token;
  for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < warps;
       w += (static_cast<long long>(gridDim.x) * blockDim.x) >> 5) {
    const int t = static_cast<int>(w / blocks_per_token), blk = static_cast<int>(w % blocks_per_token);
    const int b0 = blk * kBlock;
    const int n = min(kBlock, hidden - b0);
    const float* row = x + static_cast<size_t>(t) * hidden + b0;
    float v[kBlock / 32];
    int32_t best = 0;
#pragma unroll
    for (int i = 0; i < kBlock / 32; ++i) {
      const int c = lane + 32 * i;
      v[i] = c < n ? row[c] : 0.0f;
      const int32_t a = __float_as_int(v[i]) & kAbsMask;
      best = max(best, a < kInfBits ? a : 0);  // NaN and Inf do not set the scale, as block_amax
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, off));
    const float amax = fmaxf(__int_as_float(best), kAmaxFloor);
    const float scale = __fdiv_rn(kFmax, amax);  // as DeepEP and the CPU codec: x * (448 / amax)
    uint8_t* codes = wire + static_cast<size_t>(t) * token_bytes + b0;
#pragma unroll
    for (int i = 0; i < kBlock / 32; ++i) {
      const int c = lane + 32 * i;
      if (c < n) codes[c] = quantize(v[i], scale);
    }
    if (lane < 4) {
      // scale_inv sits at hidden + 4 * blk, unaligned whenever hidden is not a multiple of 4.
      const uint32_t bits = __float_as_uint(__fdiv_rn(amax, kFmax));
      wire[static_cast<size_t>(t) * token_bytes + hidden + 4 * blk + lane] = static_cast<uint8_t>(bits >> (8 * lane));
    }
  }
}

__global__ void dequantize_kernel(const uint8_t* wire, int tokens, int hidden, int blocks_per_token, size_t token_bytes,
                                  float* out) {
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(tokens) * blocks_per_token;
  for (long long w = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; w < warps;
       w += (static_cast<long long>(gridDim.x) * blockDim.x) >> 5) {
    const int t = static_cast<int>(w / blocks_per_token), blk = static_cast<int>(w % blocks_per_token);
    const int b0 = blk * kBlock;
    const int n = min(kBlock, hidden - b0);
    const uint8_t* tok = wire + static_cast<size_t>(t) * token_bytes;
    const uint8_t* sp = tok + hidden + 4 * blk;
    const float scale_inv = __uint_as_float(static_cast<uint32_t>(sp[0]) | static_cast<uint32_t>(sp[1]) << 8 |
                                            static_cast<uint32_t>(sp[2]) << 16 | static_cast<uint32_t>(sp[3]) << 24);
    float* row = out + static_cast<size_t>(t) * hidden + b0;
#pragma unroll
    for (int i = 0; i < kBlock / 32; ++i) {
      const int c = lane + 32 * i;
      if (c >= n) continue;
      const uint8_t code = tok[b0 + c];
      row[c] = (code & 0x7fu) == 0x7fu ? __uint_as_float(kCpuQuietNaN) : __fmul_rn(code_value(code), scale_inv);
    }
  }
}

std::string shape_of(int tokens, int hidden) {
  return "tokens " + std::to_string(tokens) + ", hidden " + std::to_string(hidden);
}

}  // namespace

size_t fp8_e4m3_b128_token_bytes(int hidden) {
  return static_cast<size_t>(hidden) + 4 * ((static_cast<size_t>(hidden) + kBlock - 1) / kBlock);
}

void fp8_e4m3_b128_quantize(const float* x, int tokens, int hidden, uint8_t* wire, GpuStream stream) {
  if (tokens < 0 || hidden <= 0)
    throw std::runtime_error("kernels: fp8_e4m3_b128_quantize: bad shape (" + shape_of(tokens, hidden) + ")");
  if (tokens == 0) return;
  const int bpt = (hidden + kBlock - 1) / kBlock;
  const long long threads = static_cast<long long>(tokens) * bpt * 32;
  quantize_kernel<<<blocks_for(threads, kThreads), kThreads, 0, stream>>>(x, tokens, hidden, bpt,
                                                                          fp8_e4m3_b128_token_bytes(hidden), wire);
  check_launch("fp8_e4m3_b128_quantize", shape_of(tokens, hidden));
}

void fp8_e4m3_b128_dequantize(const uint8_t* wire, int tokens, int hidden, float* out, GpuStream stream) {
  if (tokens < 0 || hidden <= 0)
    throw std::runtime_error("kernels: fp8_e4m3_b128_dequantize: bad shape (" + shape_of(tokens, hidden) + ")");
  if (tokens == 0) return;
  const int bpt = (hidden + kBlock - 1) / kBlock;
  const long long threads = static_cast<long long>(tokens) * bpt * 32;
  dequantize_kernel<<<blocks_for(threads, kThreads), kThreads, 0, stream>>>(wire, tokens, hidden, bpt,
                                                                            fp8_e4m3_b128_token_bytes(hidden), out);
  check_launch("fp8_e4m3_b128_dequantize", shape_of(tokens, hidden));
}

}  // namespace eplab::kernels
