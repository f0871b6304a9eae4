// Bit-exact conversions between fp32 and the narrow floating formats the codecs put on the wire: bfloat16,
// the OCP 8-bit formats (E4M3 "fn", E5M2), the MX element formats (E2M3, E2M1) and E8M0 scales.
// Written branch-free on integer bits so the compiler vectorizes the loops that call them.
#pragma once

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>

namespace eplab::codecs {

inline uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
inline float float_of(uint32_t u) { return std::bit_cast<float>(u); }

inline constexpr uint32_t kAbsMask = 0x7fffffffu;
inline constexpr uint32_t kInfBits = 0x7f800000u;

// bfloat16 with round-to-nearest-even; NaN stays a (quiet) NaN, overflow goes to Inf as in PyTorch.
inline uint16_t float_to_bf16(float f) {
  uint32_t b = bits_of(f);
  uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  uint32_t nan = (b >> 16) | 0x40u;
  return static_cast<uint16_t>((b & kAbsMask) > kInfBits ? nan : rounded);
}
inline float bf16_to_float(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }

// A sign-magnitude minifloat with kMant mantissa bits and exponent bias kBias (OCP naming). Only the
// magnitude code is computed here; callers handle sign, saturation and the formats' NaN/Inf codes.
template <int kMant, int kBias>
struct MiniFloat {
  static constexpr int kMantissa = kMant;
  static constexpr int kExpBias = kBias;
  static constexpr int kShift = 23 - kMant;
  // Smallest normal 2^(1-bias); below it the format is uniform with step 2^(1-bias-mant).
  static constexpr uint32_t kMinNormalBits = static_cast<uint32_t>(127 + 1 - kBias) << 23;
  // Adding 2^(24-bias-mant) leaves exactly the subnormal step as the ulp, so fp32's own RNE rounds for us.
  static constexpr uint32_t kMagicBits = static_cast<uint32_t>(127 + 24 - kBias - kMant) << 23;

  // a: finite, >= 0 and already clamped to the format's max. Returns the RNE magnitude code.
  static uint32_t magnitude_code(float a) {
    // Signed arithmetic throughout: a is non-negative so its bits fit, and SSE2 has signed compares only.
    int32_t b = static_cast<int32_t>(bits_of(a));
    int32_t normal = ((b + ((1 << (kShift - 1)) - 1) + ((b >> kShift) & 1)) >> kShift) - ((127 - kBias) << kMant);
    float magic = float_of(kMagicBits);
    int32_t sub = static_cast<int32_t>(bits_of(a + magic)) - static_cast<int32_t>(kMagicBits);
    return static_cast<uint32_t>(b >= static_cast<int32_t>(kMinNormalBits) ? normal : sub);
  }
  // Value of a magnitude code (no specials).
  static float magnitude_value(uint32_t code) {
    int e = static_cast<int>(code >> kMant);
    int m = static_cast<int>(code & ((1u << kMant) - 1u));
    if (e == 0) return std::ldexp(static_cast<float>(m), 1 - kBias - kMant);
    return std::ldexp(1.0f + static_cast<float>(m) / static_cast<float>(1 << kMant), e - kBias);
  }
};

using E4M3 = MiniFloat<3, 7>;   // max 448, no Inf, NaN = S.1111.111
using E5M2 = MiniFloat<2, 15>;  // max 57344, Inf = S.11111.00, NaN = S.11111.xx
using E2M3 = MiniFloat<3, 1>;   // max 7.5, no specials
using E2M1 = MiniFloat<1, 1>;   // max 6, no specials

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;
inline constexpr float kE2M3Max = 7.5f;
inline constexpr float kE2M1Max = 6.0f;
inline constexpr uint8_t kE4M3NaN = 0x7f;
inline constexpr uint8_t kE5M2Inf = 0x7c;
inline constexpr uint8_t kE5M2NaN = 0x7e;
inline constexpr uint8_t kE8M0NaN = 0xff;

// Lookup tables from an 8-bit code (sign in the top bit of the format's width) to fp32.
std::array<float, 256> e4m3_table();
std::array<float, 256> e5m2_table();
std::array<float, 64> e2m3_table();  // 6-bit codes: sign bit 5
std::array<float, 16> e2m1_table();  // 4-bit codes: sign bit 3

// E8M0 scale 2^(code-127); code 255 is NaN.
inline float e8m0_to_float(uint8_t code) {
  return code == kE8M0NaN ? std::nanf("") : float_of(code == 0 ? 0x00400000u : static_cast<uint32_t>(code) << 23);
}

// Smallest power of two >= f for positive normal f, as an E8M0 code (DeepEP's ceil_to_ue8m0).
inline uint8_t ceil_to_e8m0(float f) {
  uint32_t b = bits_of(f);
  uint32_t e = b >> 23;
  if ((b & 0x7fffffu) != 0) ++e;
  return static_cast<uint8_t>(e > 254 ? 254 : e);
}

}  // namespace eplab::codecs
