// logfmt10: DeepEP's 10-bit logarithmic combine format. Per token, per block of 128 channels, the finite
// nonzero magnitudes span [amin, amax] (amin clipped to amax * 2^-32); 511 levels evenly spaced in log2
// between them, code 0 = zero, bit 9 = sign, rounding at the linear midpoint between levels. Unlike DeepEP,
// blocks are never sent raw as BF16 (DeepEP does so when amax >= 1), which keeps the codec fixed-rate.
#include <cmath>
#include <cstring>
#include <limits>

#include "policies/codecs/block_quant.hpp"
#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/float_formats.hpp"
#include "policies/codecs/quant_kernels.hpp"

#ifdef EPLAB_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace eplab::codecs {
namespace {

constexpr int kBlock = 128;
constexpr int kLevels = 512;          // magnitude codes 0..511; 0 is zero
constexpr float kMinClip = 32.0f;     // log2 range limit, as DeepEP's kMinClip
constexpr uint32_t kNanCode = 0x200;  // "negative zero": marks a non-finite input

// log2 for positive normal floats: exponent plus an atanh series for the mantissa (|error| < 2e-6),
// written so that the element loop vectorizes.
inline float fast_log2(float a) {
  uint32_t b = bits_of(a);
  float e = static_cast<float>(static_cast<int32_t>(b >> 23) - 127);
  float m = float_of((b & 0x7fffffu) | 0x3f800000u);  // [1, 2)
  // Center the mantissa on 1 for a faster converging series: m in [sqrt(1/2), sqrt(2)).
  bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  float z = (m - 1.0f) / (m + 1.0f);
  float z2 = z * z;
  float p = z * (2.0f + z2 * (0.666666667f + z2 * (0.4f + z2 * (0.285714286f + z2 * 0.222222222f))));
  return e + p * 1.44269504f;
}

// 2^f for f in a range whose result stays normal or underflows gracefully (|error| < 3e-7 relative).
inline float fast_exp2(float f) {
  f = f < -149.0f ? -149.0f : f;
  // floor without libm (a call would stop vectorization): truncate, then step down for negative fractions.
  int32_t i = static_cast<int32_t>(f);
  i -= static_cast<int32_t>(static_cast<float>(i) > f);
  float r = f - static_cast<float>(i);  // [0, 1)
  float p =
      1.0f + r * (0.693147181f + r * (0.240226507f + r * (0.0555041087f + r * (0.00961812911f + r * 0.00133335581f))));
  // Split the exponent in two so results down to 2^-149 are reachable without building a subnormal by hand.
  int32_t i1 = i / 2, i2 = i - i / 2;
  return p * float_of(static_cast<uint32_t>(i1 + 127) << 23) * float_of(static_cast<uint32_t>(i2 + 127) << 23);
}

struct BlockParams {
  float log_amin;
  float log_amax;
};

inline BlockParams block_params(const float* x, int n) {
  // Signed 32-bit min/max (magnitude bits fit): SSE2 vectorizes those, unsigned ones it does not.
  int32_t hi = 0, lo = static_cast<int32_t>(kInfBits);
  for (int i = 0; i < n; ++i) {
    int32_t a = static_cast<int32_t>(bits_of(x[i]) & kAbsMask);
    // Non-short-circuit & and plain min/max: && made this loop control flow, which stays scalar.
    bool ok = (a < static_cast<int32_t>(kInfBits)) & (a != 0);
    int32_t for_hi = ok ? a : 0;
    int32_t for_lo = ok ? a : static_cast<int32_t>(kInfBits);
    hi = hi > for_hi ? hi : for_hi;
    lo = lo < for_lo ? lo : for_lo;
  }
  if (hi == 0) return {0.0f, 0.0f};  // no finite nonzero value: every code is 0 or NaN
  float log_amax = std::log2(float_of(static_cast<uint32_t>(hi)));
  float log_amin = std::max(std::log2(float_of(static_cast<uint32_t>(lo))), log_amax - kMinClip);
  return {log_amin, log_amax};
}

inline float step_of(const BlockParams& bp) { return (bp.log_amax - bp.log_amin) / static_cast<float>(kLevels - 2); }

// The code is int(log2|x| * step_inv + bias), clamped to [0, 511].
inline void encode_consts(const BlockParams& bp, float step, float* step_inv, float* bias) {
  *step_inv = 1.0f / step;
  // Round at the linear midpoint of two levels: log2 of the midpoint lies r*step above the lower level.
  float r = std::log2((1.0f + std::exp2(step)) * 0.5f) * *step_inv;
  *bias = 2.0f - r - bp.log_amin * *step_inv;
}

inline void encode_block(const float* x, int n, const BlockParams& bp, uint16_t* codes) {
  float step = step_of(bp);
  if (step == 0.0f) {  // one magnitude (or none): code 1 is amin = amax
    for (int i = 0; i < n; ++i) {
      uint32_t b = bits_of(x[i]);
      uint32_t a = b & kAbsMask;
      // Zero (either sign) is code 0: a sign on level 0 would be the NaN marker.
      uint32_t c = a >= kInfBits ? kNanCode : (a != 0 ? ((b >> 31) << 9) | 1u : 0u);
      codes[i] = static_cast<uint16_t>(c);
    }
    return;
  }
  float step_inv, bias;
  encode_consts(bp, step, &step_inv, &bias);
  for (int i = 0; i < n; ++i) {
    uint32_t b = bits_of(x[i]);
    uint32_t a = b & kAbsMask;
    // Zero and fp32 subnormals go through log2 of the smallest normal: they land on code 0 or 1.
    float mag = float_of(a < 0x00800000u ? 0x00800000u : a);
    float t = fast_log2(mag) * step_inv + bias;
    t = t < 0.0f ? 0.0f : t;
    t = t > static_cast<float>(kLevels - 1) ? static_cast<float>(kLevels - 1) : t;
    // t is in [0, 511]: the signed conversion (vectorizable without AVX-512) gives the same code.
    uint32_t c = static_cast<uint32_t>(static_cast<int32_t>(t));
    c = a == 0 ? 0u : c;
    // No sign on level 0 (zero, or below the clipped amin): 0x200 is the NaN marker.
    c |= c != 0 ? (b >> 31) << 9 : 0u;
    codes[i] = static_cast<uint16_t>(a >= kInfBits ? kNanCode : c);
  }
}

inline void decode_block(const uint16_t* codes, int n, const BlockParams& bp, float* out) {
  float step = step_of(bp);
  for (int i = 0; i < n; ++i) {
    uint32_t c = codes[i];
    uint32_t m = c & 0x1ffu;
    float v = fast_exp2(bp.log_amin + static_cast<float>(static_cast<int32_t>(m) - 1) * step);
    // Zero, sign and NaN as bit masks rather than selects: GCC's AVX2 clone left the selects as branches.
    // v > 0, so setting the sign bit is negation; code 0x200 (negative zero) is the NaN marker.
    uint32_t vb = bits_of(v) & (0u - static_cast<uint32_t>(m != 0));
    vb |= (c & 0x200u) << 22;
    uint32_t nan = 0u - static_cast<uint32_t>(c == kNanCode);
    out[i] = float_of((vb & ~nan) | (0x7fc00000u & nan));
  }
}

// Four 10-bit codes in five bytes, little-endian bit order (code i at bits [10i, 10i+10)), moved a 64-bit
// word at a time with shifts and masks.
inline void pack(const uint16_t* codes, int n, uint8_t* out) {
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    uint64_t c;
    std::memcpy(&c, codes + i, 8);
    c = (c & 0x000003ff000003ffull) | ((c >> 6) & 0x000ffc00000ffc00ull);
    c = (c & 0xfffffull) | ((c >> 12) & 0xfffff00000ull);
    // Whole 4- and 1-byte stores: a 5-byte memcpy of a local goes through the stack and stalls forwarding.
    uint32_t lo = static_cast<uint32_t>(c);
    std::memcpy(out + i / 4 * 5, &lo, 4);
    out[i / 4 * 5 + 4] = static_cast<uint8_t>(c >> 32);
  }
  uint64_t w = 0;
  for (int k = 0; i + k < n; ++k) w |= uint64_t{codes[i + k]} << (10 * k);
  std::memcpy(out + i / 4 * 5, &w, static_cast<size_t>(10 * (n - i) + 7) / 8);
}
inline void unpack(const uint8_t* in, int n, uint16_t* codes) {
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    uint32_t lo;
    std::memcpy(&lo, in + i / 4 * 5, 4);
    uint64_t w = lo | (uint64_t{in[i / 4 * 5 + 4]} << 32);
    w = (w & 0xfffffull) | ((w << 12) & 0x000fffff00000000ull);
    w = (w & 0x000003ff000003ffull) | ((w << 6) & 0x03ff000003ff0000ull);
    std::memcpy(codes + i, &w, 8);
  }
  uint64_t w = 0;
  std::memcpy(&w, in + i / 4 * 5, static_cast<size_t>(10 * (n - i) + 7) / 8);
  for (int k = 0; i + k < n; ++k) codes[i + k] = static_cast<uint16_t>((w >> (10 * k)) & 0x3ffu);
}

// One token per call, dispatched to AVX2 or baseline (quant_kernels.hpp): the per-element log2/exp2 series
// are the whole cost of this codec and vectorize 8 wide.
EPLAB_CLONES void encode_row(const float* row, int hidden, uint8_t* p, uint16_t* codes) {
  uint8_t* params = p + (static_cast<size_t>(hidden) * 10 + 7) / 8;
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
    int n = std::min(kBlock, hidden - b0);
    BlockParams bp = block_params(row + b0, n);
    std::memcpy(params + blk * sizeof(BlockParams), &bp, sizeof(bp));
    encode_block(row + b0, n, bp, codes + b0);
  }
  pack(codes, hidden, p);
}
// The block ranges must have been validated.
EPLAB_CLONES void decode_row(const uint8_t* p, int hidden, uint16_t* codes, float* row) {
  const uint8_t* params = p + (static_cast<size_t>(hidden) * 10 + 7) / 8;
  unpack(p, hidden, codes);
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
    int n = std::min(kBlock, hidden - b0);
    BlockParams bp;
    std::memcpy(&bp, params + blk * sizeof(BlockParams), sizeof(bp));
    decode_block(codes + b0, n, bp, row + b0);
  }
}

#ifdef EPLAB_AVX2_KERNELS
// AVX2 twins of the loops above, eight elements per instruction with the same float operations in the same
// order (the build has -ffp-contract=off, and no FMA is used here), so the codes and values are identical.
EPLAB_TARGET_AVX2 inline __m256 fast_log2_avx2(__m256 a) {
  // The mantissa and exponent selects as integer operations with the same results: positive floats compare
  // like their bits, halving m in [sqrt 2, 2) is an exponent decrement, and e + 1 is exact.
  __m256i b = _mm256_castps_si256(a);
  __m256i mant = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x7fffff)), _mm256_set1_epi32(0x3f800000));
  __m256i big = _mm256_cmpgt_epi32(mant, _mm256_castps_si256(_mm256_set1_ps(1.41421356f)));  // -1 where m > sqrt 2
  __m256 e =
      _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(127)), big));
  __m256 m = _mm256_castsi256_ps(_mm256_sub_epi32(mant, _mm256_and_si256(big, _mm256_set1_epi32(0x00800000))));
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 z = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
  __m256 z2 = _mm256_mul_ps(z, z);
  __m256 p = _mm256_add_ps(_mm256_set1_ps(0.285714286f), _mm256_mul_ps(z2, _mm256_set1_ps(0.222222222f)));
  p = _mm256_add_ps(_mm256_set1_ps(0.4f), _mm256_mul_ps(z2, p));
  p = _mm256_add_ps(_mm256_set1_ps(0.666666667f), _mm256_mul_ps(z2, p));
  p = _mm256_mul_ps(z, _mm256_add_ps(_mm256_set1_ps(2.0f), _mm256_mul_ps(z2, p)));
  return _mm256_add_ps(e, _mm256_mul_ps(p, _mm256_set1_ps(1.44269504f)));
}

EPLAB_TARGET_AVX2 inline __m256 fast_exp2_avx2(__m256 f) {
  f = _mm256_max_ps(_mm256_set1_ps(-149.0f), f);  // f < -149 ? -149 : f
  __m256i i = _mm256_cvttps_epi32(f);
  i = _mm256_add_epi32(i, _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtepi32_ps(i), f, _CMP_GT_OQ)));  // floor
  __m256 r = _mm256_sub_ps(f, _mm256_cvtepi32_ps(i));
  __m256 p = _mm256_add_ps(_mm256_set1_ps(0.00961812911f), _mm256_mul_ps(r, _mm256_set1_ps(0.00133335581f)));
  p = _mm256_add_ps(_mm256_set1_ps(0.0555041087f), _mm256_mul_ps(r, p));
  p = _mm256_add_ps(_mm256_set1_ps(0.240226507f), _mm256_mul_ps(r, p));
  p = _mm256_add_ps(_mm256_set1_ps(0.693147181f), _mm256_mul_ps(r, p));
  p = _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(r, p));
  __m256i i1 = _mm256_srai_epi32(_mm256_add_epi32(i, _mm256_srli_epi32(i, 31)), 1);  // i / 2, toward zero
  __m256i i2 = _mm256_sub_epi32(i, i1);
  const __m256i bias = _mm256_set1_epi32(127);
  p = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(i1, bias), 23)));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(i2, bias), 23)));
}

EPLAB_TARGET_AVX2 inline __m256i encode8_avx2(const float* x, __m256 step_inv, __m256 bias) {
  __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  __m256i a = _mm256_and_si256(b, _mm256_set1_epi32(static_cast<int32_t>(kAbsMask)));
  __m256 mag = _mm256_castsi256_ps(_mm256_max_epi32(a, _mm256_set1_epi32(0x00800000)));
  __m256 t = _mm256_add_ps(_mm256_mul_ps(fast_log2_avx2(mag), step_inv), bias);
  t = _mm256_max_ps(_mm256_setzero_ps(), t);                              // t < 0 ? 0 : t
  t = _mm256_min_ps(_mm256_set1_ps(static_cast<float>(kLevels - 1)), t);  // t > 511 ? 511 : t
  __m256i c = _mm256_andnot_si256(_mm256_cmpeq_epi32(a, _mm256_setzero_si256()), _mm256_cvttps_epi32(t));
  __m256i sign = _mm256_slli_epi32(_mm256_srli_epi32(b, 31), 9);
  c = _mm256_or_si256(c, _mm256_andnot_si256(_mm256_cmpeq_epi32(c, _mm256_setzero_si256()), sign));
  __m256i nonfinite = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(static_cast<int32_t>(kInfBits) - 1));
  return _mm256_blendv_epi8(c, _mm256_set1_epi32(static_cast<int32_t>(kNanCode)), nonfinite);
}

EPLAB_TARGET_AVX2 void encode_block_avx2(const float* x, int n, const BlockParams& bp, uint16_t* codes) {
  float step = step_of(bp);
  if (step == 0.0f) return encode_block(x, n, bp, codes);
  float step_inv, bias;
  encode_consts(bp, step, &step_inv, &bias);
  __m256 vs = _mm256_set1_ps(step_inv), vb = _mm256_set1_ps(bias);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i c = _mm256_packus_epi32(encode8_avx2(x + i, vs, vb), encode8_avx2(x + i + 8, vs, vb));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), _mm256_permute4x64_epi64(c, 0xd8));
  }
  encode_block(x + i, n - i, bp, codes + i);
}

EPLAB_TARGET_AVX2 void decode_block_avx2(const uint16_t* codes, int n, const BlockParams& bp, float* out) {
  float step = step_of(bp);
  const __m256 vmin = _mm256_set1_ps(bp.log_amin), vstep = _mm256_set1_ps(step);
  const __m256i nan_code = _mm256_set1_epi32(static_cast<int32_t>(kNanCode));
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i c = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
    __m256i m = _mm256_and_si256(c, _mm256_set1_epi32(0x1ff));
    __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(m, _mm256_set1_epi32(1)));
    __m256i v = _mm256_castps_si256(fast_exp2_avx2(_mm256_add_ps(vmin, _mm256_mul_ps(f, vstep))));
    v = _mm256_andnot_si256(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()), v);
    v = _mm256_or_si256(v, _mm256_slli_epi32(_mm256_and_si256(c, nan_code), 22));
    v = _mm256_blendv_epi8(v, _mm256_set1_epi32(0x7fc00000), _mm256_cmpeq_epi32(c, nan_code));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), v);
  }
  decode_block(codes + i, n - i, bp, out + i);
}

// 16 codes to 20 bytes: pairs to 20 bits (madd), pairs of those to 40 bits per qword, five bytes of each
// qword gathered per 128-bit lane (10 bytes each).
EPLAB_TARGET_AVX2 void pack_avx2(const uint16_t* codes, int n, uint8_t* out) {
  const __m256i take5 = _mm256_setr_epi8(0, 1, 2, 3, 4, 8, 9, 10, 11, 12, -1, -1, -1, -1, -1, -1, 0, 1, 2, 3, 4, 8, 9,
                                         10, 11, 12, -1, -1, -1, -1, -1, -1);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i));
    __m256i p = _mm256_madd_epi16(c, _mm256_set1_epi32(0x04000001));  // c0 + 1024 c1
    p = _mm256_or_si256(_mm256_and_si256(p, _mm256_set1_epi64x(0xfffff)),
                        _mm256_and_si256(_mm256_srli_epi64(p, 12), _mm256_set1_epi64x(0xfffff00000)));
    p = _mm256_shuffle_epi8(p, take5);
    __m128i lo = _mm256_castsi256_si128(p), hi = _mm256_extracti128_si256(p, 1);
    uint8_t* o = out + i / 4 * 5;
    if (i + 32 <= n) {  // 16-byte stores; the next group overwrites the 6 bytes past this one
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), lo);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 10), hi);
    } else {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o), lo);
      uint16_t t = static_cast<uint16_t>(_mm_extract_epi16(lo, 4));
      std::memcpy(o + 8, &t, 2);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + 10), hi);
      t = static_cast<uint16_t>(_mm_extract_epi16(hi, 4));
      std::memcpy(o + 18, &t, 2);
    }
  }
  pack(codes + i, n - i, out + i / 4 * 5);
}

// 20 bytes to 16 codes: each 16-bit lane takes the two bytes holding its code, then a per-lane shift right by
// 0, 2, 4 or 6 as a multiply (shift left by 6 - s) and a shift right by 6. The loads read 6 bytes past the
// group; the caller guarantees them (the token's block ranges follow its payload).
EPLAB_TARGET_AVX2 void unpack_avx2(const uint8_t* in, int n, uint16_t* codes) {
  const __m256i take2 =
      _mm256_setr_epi8(0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8, 8, 9, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8, 8, 9);
  const __m256i mul = _mm256_setr_epi16(64, 16, 4, 1, 64, 16, 4, 1, 64, 16, 4, 1, 64, 16, 4, 1);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const uint8_t* s = in + i / 4 * 5;
    __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))),
                                        _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 10)), 1);
    w = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(w, take2), mul), 6);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i), w);
  }
  unpack(in + i / 4 * 5, n - i, codes + i);
}

EPLAB_TARGET_AVX2 void encode_row_avx2(const float* row, int hidden, uint8_t* p, uint16_t* codes) {
  uint8_t* params = p + (static_cast<size_t>(hidden) * 10 + 7) / 8;
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
    int n = std::min(kBlock, hidden - b0);
    BlockParams bp = block_params(row + b0, n);
    std::memcpy(params + blk * sizeof(BlockParams), &bp, sizeof(bp));
    encode_block_avx2(row + b0, n, bp, codes + b0);
  }
  pack_avx2(codes, hidden, p);
}
EPLAB_TARGET_AVX2 void decode_row_avx2(const uint8_t* p, int hidden, uint16_t* codes, float* row) {
  const uint8_t* params = p + (static_cast<size_t>(hidden) * 10 + 7) / 8;
  unpack_avx2(p, hidden, codes);
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
    int n = std::min(kBlock, hidden - b0);
    BlockParams bp;
    std::memcpy(&bp, params + blk * sizeof(BlockParams), sizeof(bp));
    decode_block_avx2(codes + b0, n, bp, row + b0);
  }
}
#endif

void encode_row_any(const float* row, int hidden, uint8_t* p, uint16_t* codes) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return encode_row_avx2(row, hidden, p, codes);
#endif
  encode_row(row, hidden, p, codes);
}
void decode_row_any(const uint8_t* p, int hidden, uint16_t* codes, float* row) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return decode_row_avx2(p, hidden, codes, row);
#endif
  decode_row(p, hidden, codes, row);
}

class LogFmtCodec final : public Codec {
 public:
  explicit LogFmtCodec(std::string spec) : spec_(std::move(spec)) {}
  std::string name() const override { return spec_; }
  bool lossless() const override { return false; }
  // Levels 2^s apart with s <= 32/510; rounding at the linear midpoint moves a value by at most
  // (2^s - 1)/(2^s + 1) of itself (0.0217). Values below the clipped amin (< amax * 2^-32) add at most
  // sqrt(128) * 2^-32 relative; the approximate log2/exp2 add < 1e-5.
  double error_bound() const override {
    double s = kMinClip / (kLevels - 2);
    double g = std::exp2(s);
    return ((g - 1) / (g + 1) + std::sqrt(double{kBlock}) * 0x1p-32 + 1e-5) * kBoundSlack;
  }
  size_t payload_bytes(int hidden) const { return (static_cast<size_t>(hidden) * 10 + 7) / 8; }
  size_t token_bytes(int hidden) const {
    return payload_bytes(hidden) + (static_cast<size_t>(hidden) + kBlock - 1) / kBlock * sizeof(BlockParams);
  }
  size_t encoded_size(int tokens, int hidden) const override {
    return static_cast<size_t>(tokens) * token_bytes(hidden);
  }

  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    size_t at = out.size();
    out.resize(at + encoded_size(tokens, hidden));
    std::vector<uint16_t> codes(static_cast<size_t>(hidden));
    for (int t = 0; t < tokens; ++t) {
      encode_row_any(x + static_cast<size_t>(t) * hidden, hidden,
                     out.data() + at + static_cast<size_t>(t) * token_bytes(hidden), codes.data());
    }
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    std::vector<uint16_t> codes(static_cast<size_t>(hidden));
    for (int t = 0; t < tokens; ++t) {
      const uint8_t* p = data + static_cast<size_t>(t) * token_bytes(hidden);
      const uint8_t* params = p + payload_bytes(hidden);
      // The range test mirrors the encoder's clip (amin >= amax - 32 in float): written as a difference > 32 it
      // rejected ranges the encoder produces when the rounded subtraction lands a hair below amax - 32.
      for (int blk = 0; blk * kBlock < hidden; ++blk) {
        BlockParams bp;
        std::memcpy(&bp, params + blk * sizeof(BlockParams), sizeof(bp));
        if (!(bp.log_amin <= bp.log_amax) || !std::isfinite(bp.log_amax) || bp.log_amin < bp.log_amax - kMinClip) {
          throw CodecError("codec " + spec_ + ": corrupt block range [" + std::to_string(bp.log_amin) + ", " +
                           std::to_string(bp.log_amax) + "] in token " + std::to_string(t) + " block " +
                           std::to_string(blk));
        }
      }
      decode_row_any(p, hidden, codes.data(), out + static_cast<size_t>(t) * hidden);
    }
  }

 private:
  std::string spec_;
};

}  // namespace

void add_logfmt_codecs(std::vector<CodecEntry>& entries) {
  entries.push_back(
      {"logfmt10",
       "DeepEP LogFMT-10: sign + 9-bit log2 level per element, log range per 128 (10.5 bits)",
       StageKind::kQuantizer,
       [](const CodecParams& p) -> std::unique_ptr<Codec> { return std::make_unique<LogFmtCodec>(p.spec()); },
       {},
       {}});
}

}  // namespace eplab::codecs
