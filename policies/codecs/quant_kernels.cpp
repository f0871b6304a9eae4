// Runtime-dispatched instantiations of the quantizer loops; see quant_kernels.hpp.
#include "policies/codecs/quant_kernels.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>

#include "policies/codecs/float_formats.hpp"

#ifdef EPLAB_AVX2_KERNELS
#include <cpuid.h>
#include <immintrin.h>
#endif

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

// The block's E8M0 scale code from its largest magnitude bits (NaN code if non-finite) and 1/scale
// (0 for the NaN scale).
template <int kEmax>
inline float mx_block_scale(int32_t top, uint8_t* scale) {
  if (top >= static_cast<int32_t>(kInfBits)) {
    *scale = kE8M0NaN;
    return 0.0f;
  }
  float amax = float_of(static_cast<uint32_t>(top));
  int e = amax > 0 ? floor_log2(amax) - kEmax : -127;
  e = std::clamp(e, -127, 127);
  *scale = static_cast<uint8_t>(e + 127);
  return float_of(static_cast<uint32_t>(127 - e) << 23);  // 2^-e exactly; e in [-127, 125]
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
    float inv = mx_block_scale<T::kEmax>(top, scales + blk);
    any_nonfinite |= top >= static_cast<int32_t>(kInfBits);
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

#ifdef EPLAB_AVX2_KERNELS
// quantize_one of block_quant.hpp for 8 elements: the same integer and float steps, so the same codes.
// kSpecials = false for MX blocks, which never hold NaN or Inf here (such a block gets the NaN scale).
template <class Fmt, int kSignBit, bool kSpecials>
EPLAB_TARGET_AVX2 inline __m256i quantize8_avx2(__m256 x, __m256 scale, float max, uint8_t nan_code, uint8_t inf_code) {
  __m256i b = _mm256_castps_si256(_mm256_mul_ps(x, scale));
  __m256i ab = _mm256_and_si256(b, _mm256_set1_epi32(static_cast<int32_t>(kAbsMask)));
  __m256 a = _mm256_min_ps(_mm256_castsi256_ps(ab), _mm256_set1_ps(max));  // a < max ? a : max
  __m256i ba = _mm256_castps_si256(a);
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(ba, Fmt::kShift), _mm256_set1_epi32(1));
  __m256i normal = _mm256_add_epi32(_mm256_add_epi32(ba, _mm256_set1_epi32((1 << (Fmt::kShift - 1)) - 1)), odd);
  normal = _mm256_sub_epi32(_mm256_srai_epi32(normal, Fmt::kShift),
                            _mm256_set1_epi32((127 - Fmt::kExpBias) << Fmt::kMantissa));
  __m256i magic = _mm256_set1_epi32(static_cast<int32_t>(Fmt::kMagicBits));
  __m256i sub = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(a, _mm256_castsi256_ps(magic))), magic);
  __m256i is_normal = _mm256_cmpgt_epi32(ba, _mm256_set1_epi32(static_cast<int32_t>(Fmt::kMinNormalBits) - 1));
  __m256i sign = _mm256_slli_epi32(_mm256_srli_epi32(b, 31), kSignBit);
  __m256i code = _mm256_or_si256(_mm256_blendv_epi8(sub, normal, is_normal), sign);
  if constexpr (kSpecials) {
    const __m256i inf = _mm256_set1_epi32(static_cast<int32_t>(kInfBits));
    __m256i special = _mm256_blendv_epi8(
        _mm256_set1_epi32(nan_code), _mm256_or_si256(sign, _mm256_set1_epi32(inf_code)), _mm256_cmpeq_epi32(ab, inf));
    code = _mm256_blendv_epi8(code, special, _mm256_cmpgt_epi32(ab, _mm256_sub_epi32(inf, _mm256_set1_epi32(1))));
  }
  return code;
}
template <MxElem kElem>
EPLAB_TARGET_AVX2 inline __m256i mx_codes8_avx2(__m256 x, __m256 inv) {
  using T = MxTraits<kElem>;
  return quantize8_avx2<typename T::Fmt, T::kSignBit, false>(x, inv, T::kMax, 0, 0);
}
// Four vectors of codes (each < 256) to 32 bytes in element order.
EPLAB_TARGET_AVX2 inline __m256i bytes_of_codes(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
  __m256i q = _mm256_packus_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
  return _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// quantize_block with one scale, 32 elements per step; the rest through the portable loop.
template <class Fmt, int kSignBit>
EPLAB_TARGET_AVX2 void quantize_block_avx2(const float* x, size_t n, float scale, float max, uint8_t nan_code,
                                           uint8_t inf_code, uint8_t* codes) {
  __m256 s = _mm256_set1_ps(scale);
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i q0 = quantize8_avx2<Fmt, kSignBit, true>(_mm256_loadu_ps(x + i), s, max, nan_code, inf_code);
    __m256i q1 = quantize8_avx2<Fmt, kSignBit, true>(_mm256_loadu_ps(x + i + 8), s, max, nan_code, inf_code);
    __m256i q2 = quantize8_avx2<Fmt, kSignBit, true>(_mm256_loadu_ps(x + i + 16), s, max, nan_code, inf_code);
    __m256i q3 = quantize8_avx2<Fmt, kSignBit, true>(_mm256_loadu_ps(x + i + 24), s, max, nan_code, inf_code);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), bytes_of_codes(q0, q1, q2, q3));
  }
  quantize_block<Fmt, kSignBit>(x + i, n - i, scale, max, nan_code, inf_code, codes + i);
}

// 32 six-bit codes (one per byte) to 24 bytes: pairs to 12 bits (maddubs), pairs of those to 24 bits (madd),
// then the three low bytes of each dword gathered. `spare` allows a 32-byte store (8 bytes past the group).
EPLAB_TARGET_AVX2 inline void pack32_w6_avx2(__m256i c, uint8_t* out, bool spare) {
  __m256i p = _mm256_maddubs_epi16(c, _mm256_set1_epi16(0x4001));  // c0 + 64 c1
  p = _mm256_madd_epi16(p, _mm256_set1_epi32(0x10000001));         // p0 + 4096 p1
  const __m256i take3 = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9,
                                         10, 12, 13, 14, -1, -1, -1, -1);
  p = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(p, take3), _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
  if (spare) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), p);
  } else {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(p));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + 16), _mm256_extracti128_si256(p, 1));
  }
}
// 32 four-bit codes to 16 bytes: pairs to a byte (maddubs), then the bytes of both lanes together.
EPLAB_TARGET_AVX2 inline void pack32_w4_avx2(__m256i c, uint8_t* out) {
  __m256i p = _mm256_maddubs_epi16(c, _mm256_set1_epi16(0x1001));  // c0 + 16 c1
  p = _mm256_permute4x64_epi64(_mm256_packus_epi16(p, p), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(p));
}

// mx_encode_row in one pass: each full block's max, scale, codes and packed bytes from registers (E4M3
// codes are finite blocks' codes, never its NaN code); a partial last block goes through the portable steps.
template <MxElem kElem>
EPLAB_TARGET_AVX2 void mx_encode_row_avx2(const float* __restrict row, int hidden, uint8_t* __restrict payload,
                                          uint8_t* __restrict scales, uint8_t* __restrict codes) {
  using T = MxTraits<kElem>;

  const __m256i abs_mask = _mm256_set1_epi32(static_cast<int32_t>(kAbsMask));
  const int full = hidden / kMxBlock;
  for (int blk = 0; blk < full; ++blk) {
    const float* x = row + blk * kMxBlock;
    __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8), x2 = _mm256_loadu_ps(x + 16),
           x3 = _mm256_loadu_ps(x + 24);
    __m256i m01 = _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(x0), abs_mask),
                                   _mm256_and_si256(_mm256_castps_si256(x1), abs_mask));
    __m256i m23 = _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(x2), abs_mask),
                                   _mm256_and_si256(_mm256_castps_si256(x3), abs_mask));
    __m256i m = _mm256_max_epi32(m01, m23);
    __m128i h = _mm_max_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    int32_t top = _mm_cvtsi128_si32(h);
    __m256i q = _mm256_setzero_si256();  // a NaN-scale block's codes are zero
    if (top < static_cast<int32_t>(kInfBits)) {
      __m256 inv = _mm256_set1_ps(mx_block_scale<T::kEmax>(top, scales + blk));
      q = bytes_of_codes(mx_codes8_avx2<kElem>(x0, inv), mx_codes8_avx2<kElem>(x1, inv), mx_codes8_avx2<kElem>(x2, inv),
                         mx_codes8_avx2<kElem>(x3, inv));
    } else {
      scales[blk] = kE8M0NaN;
    }
    uint8_t* out = payload + static_cast<size_t>(blk) * kMxBlock * T::kBits / 8;
    if constexpr (T::kBits == 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), q);
    } else if constexpr (T::kBits == 6) {
      pack32_w6_avx2(q, out, blk + 1 < full);
    } else {
      pack32_w4_avx2(q, out);
    }
  }
  const int b0 = full * kMxBlock, n = hidden - b0;
  if (n > 0) {
    int32_t top = max_abs_bits(row + b0, n);
    float inv = mx_block_scale<T::kEmax>(top, scales + full);
    if (top >= static_cast<int32_t>(kInfBits)) {
      std::memset(codes, 0, static_cast<size_t>(n));
    } else {
      quantize_block<typename T::Fmt, T::kSignBit>(row + b0, static_cast<size_t>(n), inv, T::kMax, T::kNan, T::kNan,
                                                   codes);
    }
    pack_codes<T::kBits>(codes, n, payload + static_cast<size_t>(b0) * T::kBits / 8);
  }
}
#endif

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

#ifdef EPLAB_AVX2_KERNELS
// mx_element_value(c) * scale for 8 codes (low 8 bytes of c8), the same steps; 6- and 4-bit formats only.
template <MxElem kElem>
EPLAB_TARGET_AVX2 inline __m256 mx_values8_avx2(__m128i c8, __m256 scale) {
  using T = MxTraits<kElem>;
  using Fmt = typename T::Fmt;
  static_assert(kElem != MxElem::kE4M3, "no NaN code handled here");
  constexpr float kSubStep = 1.0f / static_cast<float>(1u << (Fmt::kExpBias + Fmt::kMantissa - 1));
  __m256i c = _mm256_cvtepu8_epi32(c8);
  __m256i mag = _mm256_and_si256(c, _mm256_set1_epi32((1 << T::kSignBit) - 1));
  __m256i normal =
      _mm256_add_epi32(_mm256_slli_epi32(mag, Fmt::kShift), _mm256_set1_epi32((127 - Fmt::kExpBias) << 23));
  __m256i sub = _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(kSubStep)));
  __m256i b = _mm256_blendv_epi8(sub, normal, _mm256_cmpgt_epi32(mag, _mm256_set1_epi32((1 << Fmt::kMantissa) - 1)));
  b = _mm256_or_si256(b, _mm256_slli_epi32(_mm256_srli_epi32(c, T::kSignBit), 31));
  return _mm256_mul_ps(_mm256_castsi256_ps(b), scale);
}

// mx_decode_row for the 6- and 4-bit formats: each full block unpacked in registers from exactly its bytes.
template <MxElem kElem>
EPLAB_TARGET_AVX2 void mx_decode_row_avx2(const uint8_t* payload, const uint8_t* scales, int hidden, float* row) {
  constexpr int kBits = MxTraits<kElem>::kBits;
  const int full = hidden / kMxBlock;
  for (int blk = 0; blk < full; ++blk) {
    const uint8_t* in = payload + static_cast<size_t>(blk) * kMxBlock * kBits / 8;
    __m128i c0, c1;  // codes 0-15 and 16-31, one per byte
    if constexpr (kBits == 6) {
      __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in));
      __m128i hi = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in + 16));
      __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), _mm_alignr_epi8(hi, lo, 12), 1);
      // Three bytes (four codes) per dword, then each code moved to its own byte.
      const __m256i spread = _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1, 0, 1, 2, -1, 3, 4,
                                              5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
      w = _mm256_shuffle_epi8(w, spread);
      __m256i b = _mm256_and_si256(w, _mm256_set1_epi32(0x3f));
      b = _mm256_or_si256(b, _mm256_and_si256(_mm256_slli_epi32(w, 2), _mm256_set1_epi32(0x3f00)));
      b = _mm256_or_si256(b, _mm256_and_si256(_mm256_slli_epi32(w, 4), _mm256_set1_epi32(0x3f0000)));
      b = _mm256_or_si256(b, _mm256_and_si256(_mm256_slli_epi32(w, 6), _mm256_set1_epi32(0x3f000000)));
      c0 = _mm256_castsi256_si128(b);
      c1 = _mm256_extracti128_si256(b, 1);
    } else {
      __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in));
      __m128i lo = _mm_and_si128(w, _mm_set1_epi8(0x0f));
      __m128i hi = _mm_and_si128(_mm_srli_epi16(w, 4), _mm_set1_epi8(0x0f));
      c0 = _mm_unpacklo_epi8(lo, hi);
      c1 = _mm_unpackhi_epi8(lo, hi);
    }
    __m256 scale = _mm256_set1_ps(e8m0_to_float(scales[blk]));
    float* y = row + blk * kMxBlock;
    _mm256_storeu_ps(y, mx_values8_avx2<kElem>(c0, scale));
    _mm256_storeu_ps(y + 8, mx_values8_avx2<kElem>(_mm_srli_si128(c0, 8), scale));
    _mm256_storeu_ps(y + 16, mx_values8_avx2<kElem>(c1, scale));
    _mm256_storeu_ps(y + 24, mx_values8_avx2<kElem>(_mm_srli_si128(c1, 8), scale));
  }
  const int b0 = full * kMxBlock, n = hidden - b0;
  if (n > 0) {
    uint8_t codes[kMxBlock];
    unpack_codes<kBits>(payload + static_cast<size_t>(b0) * kBits / 8, n, codes);
    float scale = e8m0_to_float(scales[full]);
    for (int i = 0; i < n; ++i) row[b0 + i] = mx_element_value<kElem>(codes[i]) * scale;
  }
}
#endif

}  // namespace

// 2-byte codes at any alignment: an aliasing, byte-aligned view the vectorizer still turns into wide loads.
typedef uint16_t unaligned_u16 __attribute__((aligned(1), may_alias));

#ifdef EPLAB_AVX2_KERNELS
namespace {
// bf16 rounding by hand: GCC's clone of float_to_bf16 over a row (round each lane, then narrow) is compute-bound
// at about the speed of the memory traffic it feeds, in the bf16 encode and in the forwarder's sums below.
// Eight floats rounded as float_to_bf16 does, each code in its lane's low half.
EPLAB_TARGET_AVX2 inline __m256i round_bf16x8_avx2(__m256 x) {
  const __m256i b = _mm256_castps_si256(x);
  const __m256i top = _mm256_srli_epi32(b, 16);
  const __m256i odd = _mm256_and_si256(top, _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), odd), 16);
  const __m256i nan = _mm256_or_si256(top, _mm256_set1_epi32(0x40));
  const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(b, _mm256_set1_epi32(static_cast<int>(kAbsMask))),
                                            _mm256_set1_epi32(static_cast<int>(kInfBits)));
  return _mm256_blendv_epi8(rounded, nan, is_nan);
}
// Sixteen floats' codes stored at out (any alignment): packus puts them lane by lane (lo 0-3, hi 0-3, lo 4-7,
// hi 4-7; every code fits 16 bits, so nothing saturates), the permute orders them.
EPLAB_TARGET_AVX2 inline void store_bf16x16_avx2(uint8_t* out, __m256 lo, __m256 hi) {
  const __m256i codes = _mm256_packus_epi32(round_bf16x8_avx2(lo), round_bf16x8_avx2(hi));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute4x64_epi64(codes, 0xd8));
}
EPLAB_TARGET_AVX2 void bf16_encode_avx2(const float* x, size_t n, uint8_t* bf16) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) store_bf16x16_avx2(bf16 + 2 * i, _mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i + 8));
  unaligned_u16* out = reinterpret_cast<unaligned_u16*>(bf16);
  for (; i < n; ++i) out[i] = float_to_bf16(x[i]);
}
}  // namespace
#endif

namespace {
EPLAB_CLONES void bf16_encode_portable(const float* x, size_t n, uint8_t* bf16) {
  unaligned_u16* out = reinterpret_cast<unaligned_u16*>(bf16);
  for (size_t i = 0; i < n; ++i) out[i] = float_to_bf16(x[i]);
}
}  // namespace
void bf16_encode_kernel(const float* x, size_t n, uint8_t* bf16) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return bf16_encode_avx2(x, n, bf16);
#endif
  bf16_encode_portable(x, n, bf16);
}
EPLAB_CLONES void bf16_decode_kernel(const uint8_t* bf16, size_t n, float* x) {
  const unaligned_u16* in = reinterpret_cast<const unaligned_u16*>(bf16);
  for (size_t i = 0; i < n; ++i) x[i] = bf16_to_float(in[i]);
}
EPLAB_CLONES void bf16_decode_add_kernel(const uint8_t* bf16, size_t n, float* acc) {
  const unaligned_u16* in = reinterpret_cast<const unaligned_u16*>(bf16);
  for (size_t i = 0; i < n; ++i) acc[i] += bf16_to_float(in[i]);
}
EPLAB_CLONES void bf16_decode_first_kernel(const uint8_t* bf16, size_t n, float* acc) {
  const unaligned_u16* in = reinterpret_cast<const unaligned_u16*>(bf16);
  for (size_t i = 0; i < n; ++i) acc[i] = 0.0f + bf16_to_float(in[i]);
}
namespace {
// Up to four rows in one pass (K rows, the first of them onto 0 where kFirst, else onto acc): the sums into acc,
// or (kEncode) rounded to bf16 into out.
template <int K, bool kFirst, bool kEncode>
[[gnu::always_inline]] inline void sum_rows_pass(const uint8_t* const* rows, size_t n, float* __restrict acc,
                                                 unaligned_u16* __restrict out) {
  const unaligned_u16* __restrict r0 = reinterpret_cast<const unaligned_u16*>(rows[0]);
  const unaligned_u16* __restrict r1 = reinterpret_cast<const unaligned_u16*>(rows[K > 1 ? 1 : 0]);
  const unaligned_u16* __restrict r2 = reinterpret_cast<const unaligned_u16*>(rows[K > 2 ? 2 : 0]);
  const unaligned_u16* __restrict r3 = reinterpret_cast<const unaligned_u16*>(rows[K > 3 ? 3 : 0]);
  for (size_t i = 0; i < n; ++i) {
    float s = (kFirst ? 0.0f : acc[i]) + bf16_to_float(r0[i]);
    if constexpr (K > 1) s += bf16_to_float(r1[i]);
    if constexpr (K > 2) s += bf16_to_float(r2[i]);
    if constexpr (K > 3) s += bf16_to_float(r3[i]);
    if constexpr (kEncode)
      out[i] = float_to_bf16(s);
    else
      acc[i] = s;
  }
}
template <bool kFirst, bool kEncode>
[[gnu::always_inline]] inline void sum_rows_group(const uint8_t* const* rows, size_t k, size_t n, float* acc,
                                                  unaligned_u16* out) {
  switch (k) {
    case 1: return sum_rows_pass<1, kFirst, kEncode>(rows, n, acc, out);
    case 2: return sum_rows_pass<2, kFirst, kEncode>(rows, n, acc, out);
    case 3: return sum_rows_pass<3, kFirst, kEncode>(rows, n, acc, out);
    default: return sum_rows_pass<4, kFirst, kEncode>(rows, n, acc, out);
  }
}
// `count` rows into acc, four a pass (the first onto 0 where `first`).
[[gnu::always_inline]] inline void sum_rows_into(const uint8_t* const* rows, size_t count, size_t n, float* acc,
                                                 bool first) {
  for (size_t j = 0; j < count; j += 4) {
    const size_t k = std::min<size_t>(4, count - j);
    if (first && j == 0)
      sum_rows_group<true, false>(rows, k, n, acc, nullptr);
    else
      sum_rows_group<false, false>(rows + j, k, n, acc, nullptr);
  }
}
}  // namespace
EPLAB_CLONES void bf16_sum_rows_kernel(const uint8_t* const* rows, size_t count, size_t n, float* acc, bool first) {
  sum_rows_into(rows, count, n, acc, first);
}
namespace {
EPLAB_CLONES void sum_rows_encode_portable(const uint8_t* const* rows, size_t count, size_t n, float* acc,
                                           uint8_t* bf16) {
  unaligned_u16* out = reinterpret_cast<unaligned_u16*>(bf16);
  // The last pass (one to four rows) writes the bf16 output; the rows before it are summed into acc first.
  const size_t last = (count - 1) / 4 * 4;
  sum_rows_into(rows, last, n, acc, true);
  if (last == 0)
    sum_rows_group<true, true>(rows, count, n, acc, out);
  else
    sum_rows_group<false, true>(rows + last, count - last, n, acc, out);
}

#ifdef EPLAB_AVX2_KERNELS
// The last pass of a rounded sum by hand (GCC's clone is slow at the rounding, above). Eight bf16 codes widened
// to floats.
EPLAB_TARGET_AVX2 inline __m256 bf16x8_avx2(const uint8_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// Eight elements of the K-row pass: (0 or acc) + row 0 + row 1 + ..., added in that order as the scalar pass does.
template <int K, bool kFirst>
EPLAB_TARGET_AVX2 inline __m256 sum8_avx2(const uint8_t* const* rows, const float* acc, size_t i) {
  __m256 s = _mm256_add_ps(kFirst ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + i), bf16x8_avx2(rows[0] + 2 * i));
  if constexpr (K > 1) s = _mm256_add_ps(s, bf16x8_avx2(rows[1] + 2 * i));
  if constexpr (K > 2) s = _mm256_add_ps(s, bf16x8_avx2(rows[2] + 2 * i));
  if constexpr (K > 3) s = _mm256_add_ps(s, bf16x8_avx2(rows[3] + 2 * i));
  return s;
}
// K rows (onto 0 where kFirst, else onto acc) rounded into out; a ragged end on the portable pass.
template <int K, bool kFirst>
EPLAB_TARGET_AVX2 void sum_rows_encode_pass_avx2(const uint8_t* const* rows, size_t n, float* acc, uint8_t* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    store_bf16x16_avx2(out + 2 * i, sum8_avx2<K, kFirst>(rows, acc, i), sum8_avx2<K, kFirst>(rows, acc, i + 8));
  if (i == n) return;
  const uint8_t* tail[K];
  for (int k = 0; k < K; ++k) tail[k] = rows[k] + 2 * i;
  sum_rows_pass<K, kFirst, true>(tail, n - i, kFirst ? acc : acc + i, reinterpret_cast<unaligned_u16*>(out) + i);
}
template <bool kFirst>
EPLAB_TARGET_AVX2 void sum_rows_group_avx2(const uint8_t* const* rows, size_t k, size_t n, float* acc, uint8_t* out) {
  switch (k) {
    case 1:
      return sum_rows_encode_pass_avx2<1, kFirst>(rows, n, acc, out);
    case 2:
      return sum_rows_encode_pass_avx2<2, kFirst>(rows, n, acc, out);
    case 3:
      return sum_rows_encode_pass_avx2<3, kFirst>(rows, n, acc, out);
    default:
      return sum_rows_encode_pass_avx2<4, kFirst>(rows, n, acc, out);
  }
}
// The passes before the last (more than four rows) sum into acc as bf16_sum_rows_kernel does, whose GCC clone
// runs as fast as a hand-written one measured; only the rounding pass is AVX2 by hand.
EPLAB_TARGET_AVX2 void sum_rows_encode_avx2(const uint8_t* const* rows, size_t count, size_t n, float* acc,
                                            uint8_t* bf16) {
  const size_t last = (count - 1) / 4 * 4;
  if (last == 0) return sum_rows_group_avx2<true>(rows, count, n, acc, bf16);
  bf16_sum_rows_kernel(rows, last, n, acc, true);
  sum_rows_group_avx2<false>(rows + last, count - last, n, acc, bf16);
}
#endif
}  // namespace
void bf16_sum_rows_encode_kernel(const uint8_t* const* rows, size_t count, size_t n, float* acc, uint8_t* bf16) {
  if (count == 0) {
    std::memset(bf16, 0, n * 2);
    return;
  }
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return sum_rows_encode_avx2(rows, count, n, acc, bf16);
#endif
  sum_rows_encode_portable(rows, count, n, acc, bf16);
}
EPLAB_CLONES void bf16_axpy_kernel(const uint8_t* bf16, size_t n, float w, float s, float* acc) {
  const unaligned_u16* in = reinterpret_cast<const unaligned_u16*>(bf16);
  for (size_t i = 0; i < n; ++i) acc[i] += w * (bf16_to_float(in[i]) * s);
}

namespace {
typedef uint32_t unaligned_u32 __attribute__((aligned(1), may_alias));
// An element rearranged so that its bytes are the planes, top first: fp32 (sign, 8 exponent bits, 23 mantissa
// bits) becomes exponent, sign, mantissa; bf16 (sign, 8, 7) likewise.
constexpr uint32_t fp32_planes_word(uint32_t u) {
  return ((u << 1) & 0xff000000u) | ((u >> 8) & 0x00800000u) | (u & 0x007fffffu);
}
constexpr uint32_t fp32_from_planes_word(uint32_t t) {
  return ((t >> 1) & 0x7f800000u) | ((t << 8) & 0x80000000u) | (t & 0x007fffffu);
}
constexpr uint16_t bf16_planes_word(uint16_t u) {
  return static_cast<uint16_t>(((u << 1) & 0xff00) | ((u >> 8) & 0x0080) | (u & 0x007f));
}
constexpr uint16_t bf16_from_planes_word(uint16_t t) {
  return static_cast<uint16_t>(((t >> 1) & 0x7f80) | ((t << 8) & 0x8000) | (t & 0x007f));
}
static_assert(fp32_from_planes_word(fp32_planes_word(0xc0490fdbu)) == 0xc0490fdbu);
static_assert(fp32_planes_word(0xc0490fdbu) >> 24 == 0x80);  // -pi: exponent 128, sign then mantissa below
static_assert(bf16_from_planes_word(bf16_planes_word(0xc049)) == 0xc049);

// Where a split puts the exponents: bytes at exps, or (exps null) nibble pairs around lo, with escapes.
struct ExponentSink {
  uint8_t* exps;
  uint8_t* pairs;
  uint8_t lo;
  std::vector<uint8_t>* escapes;

  void put(size_t i, uint8_t e) const {
    if (exps) {
      exps[i] = e;
      return;
    }
    const uint8_t d = std::min<uint8_t>(static_cast<uint8_t>(e - lo), 15);
    if (d == 15) escapes->push_back(e);
    if (i % 2)
      pairs[i / 2] = static_cast<uint8_t>(pairs[i / 2] | d << 4);
    else
      pairs[i / 2] = d;
  }
};

// Where a join takes the exponents from: bytes at exps, or (exps null) nibble pairs around lo, with escapes;
// `bad` records a 15 with no escape left.
struct ExponentSource {
  const uint8_t* exps;
  const uint8_t* pairs;
  uint8_t lo;
  const uint8_t* escapes;
  size_t n_escapes;
  mutable size_t used = 0;
  mutable bool bad = false;

  uint8_t get(size_t i) const {
    if (exps) return exps[i];
    const uint8_t d = i % 2 ? pairs[i / 2] >> 4 : pairs[i / 2] & 15;
    if (d != 15) return static_cast<uint8_t>(lo + d);
    return escape();
  }
  uint8_t escape() const {
    if (used < n_escapes) return escapes[used++];
    bad = true;
    return 0;
  }
};

void split_fp32_planes_portable(const uint8_t* in, size_t from, size_t count, const ExponentSink& sink,
                                uint8_t* const* mant) {
  const unaligned_u32* x = reinterpret_cast<const unaligned_u32*>(in);
  for (size_t i = from; i < count; ++i) {
    const uint32_t t = fp32_planes_word(x[i]);
    sink.put(i, static_cast<uint8_t>(t >> 24));
    mant[0][i] = static_cast<uint8_t>(t >> 16);
    mant[1][i] = static_cast<uint8_t>(t >> 8);
    mant[2][i] = static_cast<uint8_t>(t);
  }
}
void join_fp32_planes_portable(const ExponentSource& exps, const uint8_t* const* mant, size_t from, size_t count,
                               uint8_t* out) {
  unaligned_u32* y = reinterpret_cast<unaligned_u32*>(out);
  for (size_t i = from; i < count; ++i) {
    y[i] = fp32_from_planes_word((uint32_t{exps.get(i)} << 24) | (uint32_t{mant[0][i]} << 16) |
                                 (uint32_t{mant[1][i]} << 8) | mant[2][i]);
  }
}
void split_bf16_planes_portable(const uint8_t* in, size_t from, size_t count, const ExponentSink& sink, uint8_t* mant) {
  const unaligned_u16* x = reinterpret_cast<const unaligned_u16*>(in);
  for (size_t i = from; i < count; ++i) {
    const uint16_t t = bf16_planes_word(x[i]);
    sink.put(i, static_cast<uint8_t>(t >> 8));
    mant[i] = static_cast<uint8_t>(t);
  }
}
void join_bf16_planes_portable(const ExponentSource& exps, const uint8_t* mant, size_t from, size_t count,
                               uint8_t* out) {
  unaligned_u16* y = reinterpret_cast<unaligned_u16*>(out);
  for (size_t i = from; i < count; ++i) {
    y[i] = bf16_from_planes_word(static_cast<uint16_t>((exps.get(i) << 8) | mant[i]));
  }
}

#ifdef EPLAB_AVX2_KERNELS
// 32 elements a step. fp32: each register's lanes (4 elements) are byte-transposed so that dword k holds byte k
// of the 4; two rounds of unpacks gather dword k of the 4 registers, and a dword permutation puts the elements
// back in order. bf16: each lane's 8 elements go to a low-byte and a high-byte qword, gathered the same way.
EPLAB_TARGET_AVX2 __m256i fp32_planes_words(__m256i u) {
  const __m256i exps = _mm256_and_si256(_mm256_slli_epi32(u, 1), _mm256_set1_epi32(static_cast<int>(0xff000000u)));
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 8), _mm256_set1_epi32(0x00800000));
  return _mm256_or_si256(_mm256_or_si256(exps, sign), _mm256_and_si256(u, _mm256_set1_epi32(0x007fffff)));
}
EPLAB_TARGET_AVX2 __m256i fp32_from_planes_words(__m256i t) {
  const __m256i exps = _mm256_and_si256(_mm256_srli_epi32(t, 1), _mm256_set1_epi32(0x7f800000));
  const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(t, 8), _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm256_or_si256(_mm256_or_si256(exps, sign), _mm256_and_si256(t, _mm256_set1_epi32(0x007fffff)));
}
EPLAB_TARGET_AVX2 __m256i bf16_planes_words(__m256i u) {
  const __m256i exps = _mm256_and_si256(_mm256_slli_epi16(u, 1), _mm256_set1_epi16(static_cast<short>(0xff00)));
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi16(u, 8), _mm256_set1_epi16(0x0080));
  return _mm256_or_si256(_mm256_or_si256(exps, sign), _mm256_and_si256(u, _mm256_set1_epi16(0x007f)));
}
EPLAB_TARGET_AVX2 __m256i bf16_from_planes_words(__m256i t) {
  const __m256i exps = _mm256_and_si256(_mm256_srli_epi16(t, 1), _mm256_set1_epi16(0x7f80));
  const __m256i sign = _mm256_and_si256(_mm256_slli_epi16(t, 8), _mm256_set1_epi16(static_cast<short>(0x8000)));
  return _mm256_or_si256(_mm256_or_si256(exps, sign), _mm256_and_si256(t, _mm256_set1_epi16(0x007f)));
}
EPLAB_TARGET_AVX2 __m256i transpose4x4_bytes() {
  return _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14,
                          3, 7, 11, 15);
}
// The exponents of elements i .. i + 31, in order, to the sink.
EPLAB_TARGET_AVX2 __attribute__((always_inline)) inline void put_exponents_avx2(__m256i e, size_t i,
                                                                                const ExponentSink& sink) {
  if (sink.exps) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sink.exps + i), e);
    return;
  }
  const __m256i d =
      _mm256_min_epu8(_mm256_sub_epi8(e, _mm256_set1_epi8(static_cast<char>(sink.lo))), _mm256_set1_epi8(15));
  // Byte pairs to d_even + 16 d_odd, then the low 8 bytes of each lane together.
  const __m256i pairs = _mm256_maddubs_epi16(d, _mm256_set1_epi16(0x1001));
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(pairs, pairs), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(sink.pairs + i / 2), _mm256_castsi256_si128(packed));
  uint32_t escaped = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(d, _mm256_set1_epi8(15))));
  if (escaped == 0) return;
  alignas(32) uint8_t bytes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), e);
  for (; escaped; escaped &= escaped - 1) sink.escapes->push_back(bytes[std::countr_zero(escaped)]);
}
EPLAB_TARGET_AVX2 void split_fp32_planes_avx2(const uint8_t* in, size_t count, const ExponentSink& sink,
                                              uint8_t* const* mant) {
  const __m256i transpose = transpose4x4_bytes();
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  size_t i = 0;
  for (; i + 32 <= count; i += 32) {
    __m256i v[4];
    for (int k = 0; k < 4; ++k) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 4 * (i + 8 * k)));
      v[k] = _mm256_shuffle_epi8(fp32_planes_words(u), transpose);
    }
    const __m256i ab_lo = _mm256_unpacklo_epi32(v[0], v[1]), ab_hi = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i cd_lo = _mm256_unpacklo_epi32(v[2], v[3]), cd_hi = _mm256_unpackhi_epi32(v[2], v[3]);
    const __m256i b[4] = {_mm256_unpacklo_epi64(ab_lo, cd_lo), _mm256_unpackhi_epi64(ab_lo, cd_lo),
                          _mm256_unpacklo_epi64(ab_hi, cd_hi), _mm256_unpackhi_epi64(ab_hi, cd_hi)};
    uint8_t* const planes[3] = {mant[2], mant[1], mant[0]};  // byte 0 of the word first
    for (int k = 0; k < 3; ++k) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(planes[k] + i), _mm256_permutevar8x32_epi32(b[k], order));
    }
    put_exponents_avx2(_mm256_permutevar8x32_epi32(b[3], order), i, sink);
  }
  split_fp32_planes_portable(in, i, count, sink, mant);
}
// The exponents of elements i .. i + 31, in order, from the source.
EPLAB_TARGET_AVX2 __attribute__((always_inline)) inline __m256i get_exponents_avx2(const ExponentSource& src,
                                                                                   size_t i) {
  if (src.exps) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src.exps + i));
  const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src.pairs + i / 2));
  const __m128i low = _mm_and_si128(p, _mm_set1_epi8(15));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(p, 4), _mm_set1_epi8(15));
  const __m256i d = _mm256_set_m128i(_mm_unpackhi_epi8(low, high), _mm_unpacklo_epi8(low, high));
  const __m256i e = _mm256_add_epi8(d, _mm256_set1_epi8(static_cast<char>(src.lo)));
  uint32_t escaped = static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(d, _mm256_set1_epi8(15))));
  if (escaped == 0) return e;
  alignas(32) uint8_t bytes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), e);
  for (; escaped; escaped &= escaped - 1) bytes[std::countr_zero(escaped)] = src.escape();
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(bytes));
}
EPLAB_TARGET_AVX2 void join_fp32_planes_avx2(const ExponentSource& exps, const uint8_t* const* mant, size_t count,
                                             uint8_t* out) {
  const __m256i transpose = transpose4x4_bytes();  // its own inverse
  const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  size_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const uint8_t* const planes[3] = {mant[2], mant[1], mant[0]};  // byte 0 of the word first
    __m256i b[4];
    for (int k = 0; k < 3; ++k) {
      b[k] = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(planes[k] + i)), order);
    }
    b[3] = _mm256_permutevar8x32_epi32(get_exponents_avx2(exps, i), order);
    const __m256i lo01 = _mm256_unpacklo_epi32(b[0], b[1]), lo23 = _mm256_unpacklo_epi32(b[2], b[3]);
    const __m256i hi01 = _mm256_unpackhi_epi32(b[0], b[1]), hi23 = _mm256_unpackhi_epi32(b[2], b[3]);
    const __m256i v[4] = {_mm256_unpacklo_epi64(lo01, lo23), _mm256_unpackhi_epi64(lo01, lo23),
                          _mm256_unpacklo_epi64(hi01, hi23), _mm256_unpackhi_epi64(hi01, hi23)};
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * (i + 8 * k)),
                          fp32_from_planes_words(_mm256_shuffle_epi8(v[k], transpose)));
    }
  }
  join_fp32_planes_portable(exps, mant, i, count, out);
}
EPLAB_TARGET_AVX2 void split_bf16_planes_avx2(const uint8_t* in, size_t count, const ExponentSink& sink,
                                              uint8_t* mant) {
  const __m256i halves = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                          14, 1, 3, 5, 7, 9, 11, 13, 15);
  size_t i = 0;
  for (; i + 32 <= count; i += 32) {
    __m256i v[2];
    for (int k = 0; k < 2; ++k) {
      const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 2 * (i + 16 * k)));
      v[k] = _mm256_shuffle_epi8(bf16_planes_words(u), halves);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(mant + i),
                        _mm256_permute4x64_epi64(_mm256_unpacklo_epi64(v[0], v[1]), 0xd8));
    put_exponents_avx2(_mm256_permute4x64_epi64(_mm256_unpackhi_epi64(v[0], v[1]), 0xd8), i, sink);
  }
  split_bf16_planes_portable(in, i, count, sink, mant);
}
EPLAB_TARGET_AVX2 void join_bf16_planes_avx2(const ExponentSource& exps, const uint8_t* mant, size_t count,
                                             uint8_t* out) {
  const __m256i interleave = _mm256_setr_epi8(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, 0, 8, 1, 9, 2, 10,
                                              3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  size_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mant + i)), 0xd8);
    const __m256i hi = _mm256_permute4x64_epi64(get_exponents_avx2(exps, i), 0xd8);
    const __m256i v[2] = {_mm256_unpacklo_epi64(lo, hi), _mm256_unpackhi_epi64(lo, hi)};
    for (int k = 0; k < 2; ++k) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * (i + 16 * k)),
                          bf16_from_planes_words(_mm256_shuffle_epi8(v[k], interleave)));
    }
  }
  join_bf16_planes_portable(exps, mant, i, count, out);
}
#endif

void split_planes(const uint8_t* in, size_t count, int width, const ExponentSink& sink, uint8_t* const* mant) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) {
    if (width == 4) return split_fp32_planes_avx2(in, count, sink, mant);
    return split_bf16_planes_avx2(in, count, sink, mant[0]);
  }
#endif
  if (width == 4) return split_fp32_planes_portable(in, 0, count, sink, mant);
  split_bf16_planes_portable(in, 0, count, sink, mant[0]);
}
void join_planes(const ExponentSource& exps, const uint8_t* const* mant, size_t count, int width, uint8_t* out) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) {
    if (width == 4) return join_fp32_planes_avx2(exps, mant, count, out);
    return join_bf16_planes_avx2(exps, mant[0], count, out);
  }
#endif
  if (width == 4) return join_fp32_planes_portable(exps, mant, 0, count, out);
  join_bf16_planes_portable(exps, mant[0], 0, count, out);
}
}  // namespace

void split_float_planes(const uint8_t* in, size_t count, int width, uint8_t* exps, uint8_t* const* mant) {
  split_planes(in, count, width, ExponentSink{exps, nullptr, 0, nullptr}, mant);
}
void split_float_planes_paired(const uint8_t* in, size_t count, int width, uint8_t lo, uint8_t* pairs,
                               std::vector<uint8_t>& escapes, uint8_t* const* mant) {
  split_planes(in, count, width, ExponentSink{nullptr, pairs, lo, &escapes}, mant);
}
void join_float_planes(const uint8_t* exps, const uint8_t* const* mant, size_t count, int width, uint8_t* out) {
  join_planes(ExponentSource{exps, nullptr, 0, nullptr, 0}, mant, count, width, out);
}
size_t join_float_planes_paired(const uint8_t* pairs, uint8_t lo, const uint8_t* escapes, size_t n_escapes,
                                const uint8_t* const* mant, size_t count, int width, uint8_t* out) {
  if (count % 2 && pairs[count / 2] >> 4) return SIZE_MAX;  // an odd count's spare nibble is 0
  const ExponentSource source{nullptr, pairs, lo, escapes, n_escapes};
  join_planes(source, mant, count, width, out);
  return source.bad ? SIZE_MAX : source.used;
}

EPLAB_CLONES BlockAmax amax_kernel(const float* x, size_t n) { return block_amax(x, n); }

namespace {
EPLAB_CLONES void quantize_e4m3_portable(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E4M3, 7>(x, n, scale, kE4M3Max, kE4M3NaN, kE4M3NaN, codes);
}
EPLAB_CLONES void quantize_e5m2_portable(const float* x, size_t n, float scale, uint8_t* codes) {
  quantize_block<E5M2, 7>(x, n, scale, kE5M2Max, kE5M2NaN, kE5M2Inf, codes);
}
}  // namespace
void quantize_e4m3_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return quantize_block_avx2<E4M3, 7>(x, n, scale, kE4M3Max, kE4M3NaN, kE4M3NaN, codes);
#endif
  quantize_e4m3_portable(x, n, scale, codes);
}
void quantize_e5m2_kernel(const float* x, size_t n, float scale, uint8_t* codes) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return quantize_block_avx2<E5M2, 7>(x, n, scale, kE5M2Max, kE5M2NaN, kE5M2Inf, codes);
#endif
  quantize_e5m2_portable(x, n, scale, codes);
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

namespace {
const float* fp8_table(Fp8Elem elem) {
  static const std::array<float, 256> e4m3 = e4m3_table(), e5m2 = e5m2_table();
  return elem == Fp8Elem::kE4M3 ? e4m3.data() : e5m2.data();
}
inline float fp8_block_scale(const uint8_t* scales, int blk, bool ue8m0) {
  if (ue8m0) return e8m0_to_float(scales[blk]);
  float s;
  std::memcpy(&s, scales + 4 * static_cast<size_t>(blk), 4);
  return s;
}

// table value * scale. With two NaN operands IEEE 754 leaves open which NaN the product is, and compilers
// order the operands either way; here a NaN code always gives the table's NaN (a NaN scale otherwise gives
// itself, quieted).
inline float fp8_value(float t, float scale) { return std::isnan(t) ? t : t * scale; }

// The table lookup: the definition of the decoded values. Its scalar loop (GCC does not vectorize lookups
// without gathers) ran at 7 or 13 GB/s depending on where the linker put it.
EPLAB_CLONES void fp8_decode_row_portable(Fp8Elem elem, bool ue8m0, const uint8_t* codes, const uint8_t* scales,
                                          int hidden, int block, float* row) {
  const float* table = fp8_table(elem);
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += block, ++blk) {
    int n = std::min(block, hidden - b0);
    float scale = fp8_block_scale(scales, blk, ue8m0);
    if (std::isnan(scale)) {  // only here can both operands be NaN
      for (int i = 0; i < n; ++i) row[b0 + i] = fp8_value(table[codes[b0 + i]], scale);
    } else {
      for (int i = 0; i < n; ++i) row[b0 + i] = table[codes[b0 + i]] * scale;
    }
  }
}

#ifdef EPLAB_AVX2_KERNELS
// 16 codes (one per byte) to 16 half floats. E5M2 is fp16 with the low 8 bits cut, so c << 8 is its value,
// Inf included. E4M3 S.EEEE.MMM becomes S.0EEEE.MMM0000000: the same value times 2^-8 (bias 7 against 15),
// normals and subnormals alike (E4M3's subnormal m * 2^-9 lands on fp16's m * 2^-17). NaN codes of either
// format become the half 0x7e00, which converts to the tables' NaN 0x7fc00000 exactly.
template <Fp8Elem kElem>
EPLAB_TARGET_AVX2_F16C inline __m256i fp8_halves16(__m128i c16) {
  __m256i h = _mm256_slli_epi16(_mm256_cvtepu8_epi16(c16), 8);
  __m256i nan;
  if constexpr (kElem == Fp8Elem::kE4M3) {
    h = _mm256_and_si256(_mm256_srai_epi16(h, 1), _mm256_set1_epi16(static_cast<int16_t>(0xbf80)));
    const __m256i mag = _mm256_set1_epi16(0x3f80);  // S.1111.111 (reads as 1.875 * 2^0 here)
    nan = _mm256_cmpeq_epi16(_mm256_and_si256(h, mag), mag);
  } else {
    nan = _mm256_cmpgt_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7fff)), _mm256_set1_epi16(0x7c00));
  }
  return _mm256_blendv_epi8(h, _mm256_set1_epi16(0x7e00), nan);
}

// table[c] * scale for 16 codes, scale not NaN (so a NaN code's product is that code's NaN). The conversion and
// E4M3's 2^8 are exact, so the one rounding is the scale multiply's, as in the table path. kFolded: the 2^8
// is in `scale` already (256 * scale_inv, exact while |scale_inv| < 2^120; the product is then the same real
// number, rounded once).
template <Fp8Elem kElem, bool kFolded>
EPLAB_TARGET_AVX2_F16C inline void fp8_decode_block_avx2(const uint8_t* c, int n, float scale, const float* table,
                                                         float* y) {
  constexpr bool kTwoMultiplies = kElem == Fp8Elem::kE4M3 && !kFolded;
  const __m256 s = _mm256_set1_ps(kElem == Fp8Elem::kE4M3 && kFolded ? scale * 256.0f : scale);
  auto values8 = [s](__m128i h8) EPLAB_TARGET_AVX2_F16C {
    __m256 v = _mm256_cvtph_ps(h8);
    if (kTwoMultiplies) v = _mm256_mul_ps(v, _mm256_set1_ps(256.0f));
    return _mm256_mul_ps(v, s);
  };
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i h = fp8_halves16<kElem>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)));
    _mm256_storeu_ps(y + i, values8(_mm256_castsi256_si128(h)));
    _mm256_storeu_ps(y + i + 8, values8(_mm256_extracti128_si256(h, 1)));
  }
  for (; i < n; ++i) y[i] = table[c[i]] * scale;
}

template <Fp8Elem kElem>
EPLAB_TARGET_AVX2_F16C void fp8_decode_row_avx2(bool ue8m0, const uint8_t* codes, const uint8_t* scales, int hidden,
                                                int block, float* row) {
  const float* table = fp8_table(kElem);
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += block, ++blk) {
    const int n = std::min(block, hidden - b0);
    const float scale = fp8_block_scale(scales, blk, ue8m0);
    if (std::isnan(scale)) {  // never from an encoder
      for (int i = 0; i < n; ++i) row[b0 + i] = fp8_value(table[codes[b0 + i]], scale);
    } else if (kElem == Fp8Elem::kE4M3 && std::fabs(scale) < 0x1p120f) {  // all but the largest ue8m0 scales
      fp8_decode_block_avx2<kElem, true>(codes + b0, n, scale, table, row + b0);
    } else {
      fp8_decode_block_avx2<kElem, false>(codes + b0, n, scale, table, row + b0);
    }
  }
}
#endif
}  // namespace

void fp8_decode_row_kernel(Fp8Elem elem, bool ue8m0, const uint8_t* codes, const uint8_t* scales, int hidden, int block,
                           float* row) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_f16c_kernels_enabled()) {
    if (elem == Fp8Elem::kE4M3) return fp8_decode_row_avx2<Fp8Elem::kE4M3>(ue8m0, codes, scales, hidden, block, row);
    return fp8_decode_row_avx2<Fp8Elem::kE5M2>(ue8m0, codes, scales, hidden, block, row);
  }
#endif
  fp8_decode_row_portable(elem, ue8m0, codes, scales, hidden, block, row);
}

namespace {
EPLAB_CLONES void mx_encode_row_portable(MxElem elem, const float* row, int hidden, uint8_t* payload, uint8_t* scales,
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
bool g_force_portable = false;
}  // namespace

bool avx2_kernels_enabled() {
#ifdef EPLAB_AVX2_KERNELS
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  return has_avx2 && !g_force_portable;
#else
  return false;
#endif
}
bool avx2_f16c_kernels_enabled() {
#ifdef EPLAB_AVX2_KERNELS
  // CPUID leaf 1, not __builtin_cpu_supports("f16c"): clang before 15 does not know that feature name (the fuzz
  // build uses clang 14).
  static const bool has_f16c = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
  }();
  return has_f16c && avx2_kernels_enabled();
#else
  return false;
#endif
}
void force_portable_kernels(bool on) { g_force_portable = on; }

void mx_encode_row_kernel(MxElem elem, const float* row, int hidden, uint8_t* payload, uint8_t* scales, float* mult,
                          uint8_t* codes) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) {
    switch (elem) {
      case MxElem::kE4M3:
        return mx_encode_row_avx2<MxElem::kE4M3>(row, hidden, payload, scales, codes);
      case MxElem::kE2M3:
        return mx_encode_row_avx2<MxElem::kE2M3>(row, hidden, payload, scales, codes);
      case MxElem::kE2M1:
        return mx_encode_row_avx2<MxElem::kE2M1>(row, hidden, payload, scales, codes);
    }
  }
#endif
  mx_encode_row_portable(elem, row, hidden, payload, scales, mult, codes);
}

namespace {
EPLAB_CLONES void mx_decode_row_portable(MxElem elem, const uint8_t* payload, const uint8_t* scales, int hidden,
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
}  // namespace

void mx_decode_row_kernel(MxElem elem, const uint8_t* payload, const uint8_t* scales, int hidden, float* row) {
#ifdef EPLAB_AVX2_KERNELS
  // mxfp8: E4M3 codes one per byte and an E8M0 scale per 32 elements, which is the FP8 block decoder's
  // half-float kernel with 32-element blocks (same values: the tests compare it with mx_decode_row bit for bit).
  if (elem == MxElem::kE4M3 && avx2_f16c_kernels_enabled()) {
    return fp8_decode_row_kernel(Fp8Elem::kE4M3, true, payload, scales, hidden, kMxBlock, row);
  }
  if (elem == MxElem::kE2M3 && avx2_kernels_enabled()) {
    return mx_decode_row_avx2<MxElem::kE2M3>(payload, scales, hidden, row);
  }
  if (elem == MxElem::kE2M1 && avx2_kernels_enabled()) {
    return mx_decode_row_avx2<MxElem::kE2M1>(payload, scales, hidden, row);
  }
#endif
  mx_decode_row_portable(elem, payload, scales, hidden, row);
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
