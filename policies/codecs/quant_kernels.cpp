// Runtime-dispatched instantiations of the quantizer loops; see quant_kernels.hpp.
#include "policies/codecs/quant_kernels.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "policies/codecs/float_formats.hpp"

namespace eplab::codecs {
namespace {

static_assert(std::endian::native == std::endian::little, "the word-at-a-time bit packing assumes little-endian");

inline uint64_t load_u64(const uint8_t* p, size_t bytes) {
  uint64_t v = 0;
  std::memcpy(&v, p, bytes);
  return v;
}

// Fixed-width little-endian words from whole loads and stores: a 6-byte memcpy into a uint64 goes through the
// stack as two stores and one wider load, which stalls store-to-load forwarding on every word.
inline uint64_t load_word(const uint8_t* p, int bytes) {
  uint32_t lo;
  std::memcpy(&lo, p, 4);
  if (bytes == 4) return lo;
  uint16_t hi;
  std::memcpy(&hi, p + 4, 2);
  return lo | (static_cast<uint64_t>(hi) << 32);
}
inline void store_word(uint8_t* p, uint64_t w, int bytes) {
  uint32_t lo = static_cast<uint32_t>(w);
  std::memcpy(p, &lo, 4);
  if (bytes == 4) return;
  uint16_t hi = static_cast<uint16_t>(w >> 32);
  std::memcpy(p + 4, &hi, 2);
}

// Eight codes (one per byte of c, each < 2^w) to 8w contiguous bits, by halving the number of fields per
// step: a handful of shifts and masks per 8 elements instead of a loop per element.
inline uint64_t pack8_w6(uint64_t c) {
  c = (c & 0x003f003f003f003full) | ((c >> 2) & 0x0fc00fc00fc00fc0ull);
  c = (c & 0x00000fff00000fffull) | ((c >> 4) & 0x00fff00000fff000ull);
  return (c & 0xffffffull) | ((c >> 8) & 0xffffff000000ull);
}
inline uint64_t unpack8_w6(uint64_t w) {
  w = (w & 0xffffffull) | ((w << 8) & 0x00ffffff00000000ull);
  w = (w & 0x00000fff00000fffull) | ((w << 4) & 0x0fff00000fff0000ull);
  return (w & 0x003f003f003f003full) | ((w << 2) & 0x3f003f003f003f00ull);
}
inline uint64_t pack8_w4(uint64_t c) {
  c = (c & 0x000f000f000f000full) | ((c >> 4) & 0x00f000f000f000f0ull);
  c = (c & 0x000000ff000000ffull) | ((c >> 8) & 0x0000ff000000ff00ull);
  return (c & 0xffffull) | ((c >> 16) & 0xffff0000ull);
}
inline uint64_t unpack8_w4(uint64_t w) {
  w = (w & 0xffffull) | ((w << 16) & 0x0000ffff00000000ull);
  w = (w & 0x000000ff000000ffull) | ((w << 8) & 0x00ff000000ff0000ull);
  return (w & 0x000f000f000f000full) | ((w << 4) & 0x0f000f000f000f00ull);
}

template <int kBits>
inline void pack_codes(const uint8_t* codes, int n, uint8_t* out) {
  if constexpr (kBits == 8) {
    std::memcpy(out, codes, static_cast<size_t>(n));
  } else {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t c;
      std::memcpy(&c, codes + i, 8);
      uint64_t w = kBits == 6 ? pack8_w6(c) : pack8_w4(c);
      // Six bytes as one 8-byte store while another group follows to overwrite the two extra bytes.
      if (kBits == 6 && i + 16 <= n) {
        std::memcpy(out + i / 8 * kBits, &w, 8);
      } else {
        store_word(out + i / 8 * kBits, w, kBits);
      }
    }
    uint64_t w = 0;
    for (int k = 0; i + k < n; ++k) w |= static_cast<uint64_t>(codes[i + k]) << (kBits * k);
    std::memcpy(out + i / 8 * kBits, &w, static_cast<size_t>((n - i) * kBits + 7) / 8);
  }
}

template <int kBits>
inline void unpack_codes(const uint8_t* in, int n, uint8_t* codes) {
  if constexpr (kBits == 8) {
    std::memcpy(codes, in, static_cast<size_t>(n));
  } else {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      if (kBits == 6 && i + 16 <= n) {  // an 8-byte load stays inside the payload; the extra bytes are masked
        std::memcpy(&w, in + i / 8 * kBits, 8);
      } else {
        w = load_word(in + i / 8 * kBits, kBits);
      }
      w = kBits == 6 ? unpack8_w6(w) : unpack8_w4(w);
      std::memcpy(codes + i, &w, 8);
    }
    uint64_t w = load_u64(in + i / 8 * kBits, static_cast<size_t>((n - i) * kBits + 7) / 8);
    for (int k = 0; i + k < n; ++k) codes[i + k] = static_cast<uint8_t>((w >> (kBits * k)) & ((1u << kBits) - 1));
  }
}

template <MxElem kElem>
struct MxTraits;
template <>
struct MxTraits<MxElem::kE4M3> {
  using Fmt = E4M3;
  static constexpr int kBits = 8, kSignBit = 7, kEmax = 8;
  static constexpr float kMax = kE4M3Max;
  static constexpr uint8_t kNan = kE4M3NaN;
};
template <>
struct MxTraits<MxElem::kE2M3> {
  using Fmt = E2M3;
  static constexpr int kBits = 6, kSignBit = 5, kEmax = 2;
  static constexpr float kMax = kE2M3Max;
  static constexpr uint8_t kNan = 0;
};
template <>
struct MxTraits<MxElem::kE2M1> {
  using Fmt = E2M1;
  static constexpr int kBits = 4, kSignBit = 3, kEmax = 2;
  static constexpr float kMax = kE2M1Max;
  static constexpr uint8_t kNan = 0;
};

constexpr int kMxBlock = 32;

// floor(log2(a)) for a finite a > 0, subnormals included.
inline int floor_log2(float a) {
  uint32_t b = bits_of(a);
  if (b >= 0x00800000u) return static_cast<int>(b >> 23) - 127;
  return std::ilogb(a);
}

inline int32_t max_abs_bits(const float* x, int n) {
  int32_t top = 0;
  for (int i = 0; i < n; ++i) {
    int32_t a = static_cast<int32_t>(bits_of(x[i]) & kAbsMask);
    top = top > a ? top : a;
  }
  return top;
}

// Two passes over the token so that no vector loop runs per 32-element block (its setup cost as much as
// its work): first each block's max and E8M0 scale, spread into one multiplier per element; then one loop
// quantizes the whole row and one packs it.
template <MxElem kElem>
inline void mx_encode_row(const float* __restrict row, int hidden, uint8_t* __restrict payload,
                          uint8_t* __restrict scales, float* __restrict mult, uint8_t* __restrict codes) {
  using T = MxTraits<kElem>;
  uint8_t* dst = T::kBits == 8 ? payload : codes;
  bool any_nonfinite = false;
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kMxBlock, ++blk) {
    int n = std::min(kMxBlock, hidden - b0);
    // One max over the magnitude bits answers both questions: NaN and Inf order above every finite value,
    // and a block holding one gets the NaN scale whatever its finite amax.
    int32_t top = n == kMxBlock ? max_abs_bits(row + b0, kMxBlock) : max_abs_bits(row + b0, n);
    float inv = 0.0f;
    if (top >= static_cast<int32_t>(kInfBits)) {
      scales[blk] = kE8M0NaN;
      any_nonfinite = true;
    } else {
      float amax = float_of(static_cast<uint32_t>(top));
      int e = amax > 0 ? floor_log2(amax) - T::kEmax : -127;
      e = std::clamp(e, -127, 127);
      scales[blk] = static_cast<uint8_t>(e + 127);
      inv = float_of(static_cast<uint32_t>(127 - e) << 23);  // 2^-e exactly; e in [-127, 125]
    }
    for (int i = 0; i < n; ++i) mult[b0 + i] = inv;
  }
  quantize_block<typename T::Fmt, T::kSignBit>(row, static_cast<size_t>(hidden), mult, T::kMax, T::kNan, T::kNan, dst);
  if (any_nonfinite) {  // rare: zero the codes of the NaN-scale blocks (their elements carry no information)
    for (int b0 = 0, blk = 0; b0 < hidden; b0 += kMxBlock, ++blk) {
      if (scales[blk] == kE8M0NaN) std::memset(dst + b0, 0, static_cast<size_t>(std::min(kMxBlock, hidden - b0)));
    }
  }
  if constexpr (T::kBits != 8) pack_codes<T::kBits>(codes, hidden, payload);
}

// The value of an element code computed from its bits, equal to the decode table's entry (GCC does not
// vectorize the table lookup without gathers; this it does). Normal codes are the fp32 exponent and mantissa
// fields shifted into place; subnormals are m * 2^(1 - bias - mant); E4M3's S.1111.111 is NaN.
template <MxElem kElem>
inline float mx_element_value(uint32_t c) {
  using T = MxTraits<kElem>;
  using Fmt = typename T::Fmt;
  constexpr uint32_t kMagMask = (1u << T::kSignBit) - 1;
  constexpr float kSubStep = 1.0f / static_cast<float>(1u << (Fmt::kExpBias + Fmt::kMantissa - 1));
  uint32_t mag = c & kMagMask;
  uint32_t normal = (mag << Fmt::kShift) + (static_cast<uint32_t>(127 - Fmt::kExpBias) << 23);
  uint32_t sub = bits_of(static_cast<float>(static_cast<int32_t>(mag)) * kSubStep);
  uint32_t b = mag >= (1u << Fmt::kMantissa) ? normal : sub;
  b |= (c >> T::kSignBit) << 31;
  if constexpr (kElem == MxElem::kE4M3) b = mag == kMagMask ? 0x7fc00000u : b;
  return float_of(b);
}

template <MxElem kElem>
inline void mx_decode_row(const uint8_t* payload, const uint8_t* scales, int hidden, float* row) {
  constexpr int kBits = MxTraits<kElem>::kBits;
  alignas(32) uint8_t codes[kMxBlock];
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kMxBlock, ++blk) {
    int n = std::min(kMxBlock, hidden - b0);
    const uint8_t* in = payload + static_cast<size_t>(b0) * kBits / 8;
    const uint8_t* c = in;
    if constexpr (kBits != 8) {
      unpack_codes<kBits>(in, n, codes);
      c = codes;
    }
    float scale = e8m0_to_float(scales[blk]);
    float* y = row + b0;
    if (n == kMxBlock) {
      for (int i = 0; i < kMxBlock; ++i) y[i] = mx_element_value<kElem>(c[i]) * scale;
    } else {
      for (int i = 0; i < n; ++i) y[i] = mx_element_value<kElem>(c[i]) * scale;
    }
  }
}

}  // namespace

EPLAB_CLONES BlockAmax amax_kernel(const float* x, size_t n) { return block_amax(x, n); }

EPLAB_CLONES void quantize_e4m3_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E4M3, 7>(x, n, scale, kE4M3Max, kE4M3NaN, kE4M3NaN, codes);
}
EPLAB_CLONES void quantize_e5m2_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E5M2, 7>(x, n, scale, kE5M2Max, kE5M2NaN, kE5M2Inf, codes);
}
// MX blocks with NaN/Inf never reach the element loop (the whole block gets the NaN scale).
EPLAB_CLONES void quantize_e2m3_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E2M3, 5>(x, n, scale, kE2M3Max, 0, 0, codes);
}
EPLAB_CLONES void quantize_e2m1_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E2M1, 3>(x, n, scale, kE2M1Max, 0, 0, codes);
}
EPLAB_CLONES void quantize_int8_kernel(const float* x, size_t n, float scale, int8_t* codes) {
  quantize_int8(x, n, scale, codes);
}
EPLAB_CLONES void dequantize_kernel(const uint8_t* codes, size_t n, const float* table, float scale, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = table[codes[i]] * scale;
}

EPLAB_CLONES void mx_encode_row_kernel(MxElem elem, const float* row, int hidden, uint8_t* payload, uint8_t* scales,
                                       float* mult, uint8_t* codes) {
  switch (elem) {
    case MxElem::kE4M3:
      return mx_encode_row<MxElem::kE4M3>(row, hidden, payload, scales, mult, codes);
    case MxElem::kE2M3:
      return mx_encode_row<MxElem::kE2M3>(row, hidden, payload, scales, mult, codes);
    case MxElem::kE2M1:
      return mx_encode_row<MxElem::kE2M1>(row, hidden, payload, scales, mult, codes);
  }
}

EPLAB_CLONES void mx_decode_row_kernel(MxElem elem, const uint8_t* payload, const uint8_t* scales, int hidden,
                                       float* row) {
  switch (elem) {
    case MxElem::kE4M3:
      return mx_decode_row<MxElem::kE4M3>(payload, scales, hidden, row);
    case MxElem::kE2M3:
      return mx_decode_row<MxElem::kE2M3>(payload, scales, hidden, row);
    case MxElem::kE2M1:
      return mx_decode_row<MxElem::kE2M1>(payload, scales, hidden, row);
  }
}

void pack_bits(const uint8_t* codes, int n, int bits, uint8_t* out) {
  if (bits == 8) return pack_codes<8>(codes, n, out);
  if (bits == 6) return pack_codes<6>(codes, n, out);
  return pack_codes<4>(codes, n, out);
}
void unpack_bits(const uint8_t* in, int n, int bits, uint8_t* codes) {
  if (bits == 8) return unpack_codes<8>(in, n, codes);
  if (bits == 6) return unpack_codes<6>(in, n, codes);
  return unpack_codes<4>(in, n, codes);
}

}  // namespace eplab::codecs
