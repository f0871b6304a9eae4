// Inner loops shared by the block-scaled quantizers (fp8-*-b128, mxfp*, int8-token): finite amax of a
// block and scale-multiply-round of a block into one code per byte. Kept as plain loops over integer bits
// with no branches so that -O3 vectorizes them with baseline SSE2 (no -march flags).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "policies/codecs/float_formats.hpp"

namespace eplab::codecs {

// Largest |x| over the finite elements (NaN and Inf ignored, so one bad value does not wipe a block's
// scale), and whether any element was non-finite. Compares magnitudes as integers: for non-negative
// floats the bit patterns order like the values.
struct BlockAmax {
  float amax;
  bool nonfinite;
};
inline BlockAmax block_amax(const float* x, size_t n) {
  // Signed 32-bit max reductions: SSE2 vectorizes them, unsigned ones it does not.
  int32_t best = 0;
  int32_t worst = 0;
  for (size_t i = 0; i < n; ++i) {
    int32_t a = static_cast<int32_t>(bits_of(x[i]) & kAbsMask);
    int32_t finite = a < static_cast<int32_t>(kInfBits) ? a : 0;
    best = best > finite ? best : finite;
    worst = worst > a ? worst : a;
  }
  return {float_of(static_cast<uint32_t>(best)), worst >= static_cast<int32_t>(kInfBits)};
}

// codes[i] = sign | RNE magnitude code of min(|x[i] * scale|, max) in format Fmt, with the sign at bit
// kSignBit. Non-finite inputs get `nan_code` (NaN) or `inf_code` (+-Inf, sign added).
template <class Fmt, int kSignBit>
inline uint8_t quantize_one(float x, float scale, float max, uint8_t nan_code, uint8_t inf_code) {
  float v = x * scale;
  uint32_t b = bits_of(v);
  int32_t ab = static_cast<int32_t>(b & kAbsMask);
  float a = float_of(static_cast<uint32_t>(ab));
  a = a < max ? a : max;
  int32_t code = static_cast<int32_t>(Fmt::magnitude_code(a));
  int32_t sign = static_cast<int32_t>(b >> 31) << kSignBit;
  int32_t special = ab == static_cast<int32_t>(kInfBits) ? (sign | inf_code) : nan_code;
  return static_cast<uint8_t>(ab >= static_cast<int32_t>(kInfBits) ? special : (sign | code));
}

// The codes never overlap x: __restrict spares the vectorized loop a run-time overlap check.
template <class Fmt, int kSignBit>
inline void quantize_block(const float* __restrict x, size_t n, float scale, float max, uint8_t nan_code,
                           uint8_t inf_code, uint8_t* __restrict codes) {
  for (size_t i = 0; i < n; ++i) codes[i] = quantize_one<Fmt, kSignBit>(x[i], scale, max, nan_code, inf_code);
}
// As above with one scale per element (MX: the block's scale spread over its 32 elements).
template <class Fmt, int kSignBit>
inline void quantize_block(const float* __restrict x, size_t n, const float* __restrict scale, float max,
                           uint8_t nan_code, uint8_t inf_code, uint8_t* __restrict codes) {
  for (size_t i = 0; i < n; ++i) codes[i] = quantize_one<Fmt, kSignBit>(x[i], scale[i], max, nan_code, inf_code);
}

// Symmetric int8 with round-to-nearest-even: adding 1.5*2^23 leaves an integer ulp, so fp32's RNE rounds.
// -128 is never produced by rounding (|v| <= 127) and marks a non-finite input.
inline void quantize_int8(const float* x, size_t n, float scale, int8_t* codes) {
  constexpr float kMagic = 12582912.0f;
  for (size_t i = 0; i < n; ++i) {
    float v = x[i] * scale;
    float r = (v + kMagic) - kMagic;
    r = r < 127.0f ? r : 127.0f;
    r = r > -127.0f ? r : -127.0f;
    uint32_t ab = bits_of(x[i]) & kAbsMask;
    int32_t q = static_cast<int32_t>(r);
    codes[i] = static_cast<int8_t>(ab >= kInfBits ? -128 : q);
  }
}

}  // namespace eplab::codecs
