// logfmt10: DeepEP's 10-bit logarithmic combine format. Per token, per block of 128 channels, the finite
// nonzero magnitudes span [amin, amax] (amin clipped to amax * 2^-32); 511 levels evenly spaced in log2
// between them, code 0 = zero, bit 9 = sign, 0x200 ("negative zero") = NaN/Inf, rounding at the linear
// midpoint between levels. Unlike DeepEP, blocks are never sent raw as BF16 (DeepEP does so when amax >= 1),
// which keeps the codec fixed-rate.
//
// Wire, per token: the 10-bit codes (code i at bits [10i, 10i+10), little-endian), then per block two fp32
// `log_amin, log_amax`. Decoding: level m >= 1 is 2^(log_amin + (m-1) * step), step = (log_amax - log_amin)/510,
// evaluated in fp32 as written, with fast_exp2 below (minimax polynomial, relative error < 1e-7 before rounding).
//
// Encoding, bit for bit on every path (the AVX2 kernels repeat these fp32 operations in the same order):
//  - log2_approx: an 8-segment table on the top three mantissa bits plus a cubic, |error| < 9e-7 before the
//    final rounding. log_amax = log2_approx(amax), log_amin = min(max(log2_approx(amin), log_amax - 32),
//    log_amax).
//  - a finite nonzero element gets level clamp(floor(t), 1, 511) with t = (log2|x| - log_amin) / step + 2 - r_mid
//    (r_mid: block_setup), evaluated by element_code from log2_approx's pieces with 1/step folded in. Values
//    below the clipped amin get level 1 (amin); zero of either sign gets code 0; a block with one magnitude
//    (step 0) sends level 1 for every nonzero element.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/float_formats.hpp"
#include "policies/codecs/quant_kernels.hpp"

#ifdef EPLAB_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace eplab::codecs {
namespace {

constexpr int kBlock = 128;
constexpr int kLevels = 512;           // magnitude codes 0..511; 0 is zero
constexpr float kMinClip = 32.0f;      // log2 range limit, as DeepEP's kMinClip
constexpr float kMaxLogAmax = 128.0f;  // log2 of fp32's largest value rounds to at most this
constexpr uint32_t kNanCode = 0x200;   // "negative zero": marks a non-finite input
constexpr size_t kBlockBytes = kBlock * 10 / 8;

// ---- The encoder's log2 (part of the format: it decides the codes) ----
// A positive normal float with biased exponent E and mantissa m in [1, 2): its top three mantissa bits j pick
// the segment [1 + j/8, 1 + (j+1)/8) of m, and k = bits >> 20 = 8 E + j. With kSegInv[j] =
// 1/sqrt((1 + j/8)(1 + (j+1)/8)) rounded to fp32, r = m * kSegInv[j] - 1 lies in [-0.0572, 0.0607] and
// log2 x = (k - 8 * 127)/8 + kSegLog2[j] + log2(1 + r), where kSegLog2[j] = -log2(kSegInv[j]) - j/8 (rounded
// to fp32) and the cubic p(r) = r * (kP1 + r * (kP2 + r * kP3)) is a minimax fit of log2(1 + r) there.
alignas(32) constexpr float kSegInv[8] = {0x1.e2b7dep-1f, 0x1.afc19ep-1f, 0x1.8689ccp-1f, 0x1.6482d4p-1f,
                                          0x1.47f144p-1f, 0x1.2f9da0p-1f, 0x1.1aa69ep-1f, 0x1.08654ap-1f};
alignas(32) constexpr float kSegLog2[8] = {0x1.5c01a2p-4f, 0x1.ef50a6p-4f, 0x1.201cc6p-3f, 0x1.2d75a2p-3f,
                                           0x1.244084p-3f, 0x1.07fb50p-3f, 0x1.b6c662p-4f, 0x1.414fe0p-4f};
constexpr float kP1 = 0x1.71549ap+0f, kP2 = -0x1.71dbeep-1f, kP3 = 0x1.eb5432p-2f;
constexpr float kLn2 = 0x1.62e430p-1f;
constexpr float kInv192 = 0x1.555556p-8f;
constexpr int32_t kSubnormalShift8 = 8 * 149;  // subnormals are scaled by 2^149 first

// Subnormal bits, read as an integer, convert exactly to a normal float 2^149 times larger.
inline uint32_t normalized_bits(uint32_t a) {
  return a < 0x00800000u ? bits_of(static_cast<float>(static_cast<int32_t>(a))) : a;
}
inline float segment_r(uint32_t a) { return float_of((a & 0x7fffffu) | 0x3f800000u) * kSegInv[(a >> 20) & 7u] - 1.0f; }
// log2 of a positive finite magnitude (bits a): |error| < 9e-7 plus the final rounding (half an ulp of the
// result; the exponent is added last so that this is the only rounding at the scale of the result).
inline float log2_approx(uint32_t a) {
  uint32_t an = normalized_bits(a);
  int32_t k8 = static_cast<int32_t>(an >> 20) - 8 * 127 - (a < 0x00800000u ? kSubnormalShift8 : 0);
  float r = segment_r(an);
  float p = r * (kP1 + r * (kP2 + r * kP3));
  return static_cast<float>(k8) * 0.125f + (kSegLog2[(an >> 20) & 7u] + p);
}

// ---- The decoder's exp2 (what a level's value is, bit for bit, on every path) ----
// 2^r on [0, 1) by a degree-5 minimax polynomial with p(0) = 1: relative error < 1e-7 before rounding (the
// Taylor series it replaced was off by up to 8.5e-5 near r = 1). All coefficients are positive, so p >= 1.
constexpr float kE1 = 0x1.62e4bap-1f, kE2 = 0x1.ebdb56p-3f, kE3 = 0x1.c91ceap-5f, kE4 = 0x1.277846p-7f,
                kE5 = 0x1.e97536p-10f;
inline float exp2_poly(float r) { return 1.0f + r * (kE1 + r * (kE2 + r * (kE3 + r * (kE4 + r * kE5)))); }

// 2^f for f in a range whose result stays normal or underflows gracefully (at most 128: the decoder refuses
// blocks whose log_amax is above, which no encoder writes).
inline float fast_exp2(float f) {
  f = f < -149.0f ? -149.0f : f;
  // floor without libm (a call would stop vectorization): truncate, then step down for negative fractions.
  int32_t i = static_cast<int32_t>(f);
  i -= static_cast<int32_t>(static_cast<float>(i) > f);
  float p = exp2_poly(f - static_cast<float>(i));  // r in [0, 1)
  // Split the exponent in two so results down to 2^-149 are reachable without building a subnormal by hand.
  int32_t i1 = i / 2, i2 = i - i / 2;
  return p * float_of(static_cast<uint32_t>(i1 + 127) << 23) * float_of(static_cast<uint32_t>(i2 + 127) << 23);
}

struct BlockParams {
  float log_amin;
  float log_amax;
};

inline float step_of(const BlockParams& bp) { return (bp.log_amax - bp.log_amin) / static_cast<float>(kLevels - 2); }

// Finite nonzero magnitude range of a block as bits (hi == 0: none); plain = every element finite, normal and
// nonzero (then the element loop needs no special cases).
struct BlockRange {
  uint32_t hi, lo;
  bool plain;
};

inline BlockRange block_range(const float* x, int n) {
  // Signed 32-bit min/max (magnitude bits fit): SSE2 vectorizes those, unsigned ones it does not.
  int32_t hi = 0, lo = static_cast<int32_t>(kInfBits), all_hi = 0, all_lo = static_cast<int32_t>(kInfBits);
  for (int i = 0; i < n; ++i) {
    int32_t a = static_cast<int32_t>(bits_of(x[i]) & kAbsMask);
    // Non-short-circuit & and plain min/max: && made this loop control flow, which stays scalar.
    bool ok = (a < static_cast<int32_t>(kInfBits)) & (a != 0);
    int32_t for_hi = ok ? a : 0;
    int32_t for_lo = ok ? a : static_cast<int32_t>(kInfBits);
    hi = hi > for_hi ? hi : for_hi;
    lo = lo < for_lo ? lo : for_lo;
    all_hi = all_hi > a ? all_hi : a;
    all_lo = all_lo < a ? all_lo : a;
  }
  bool plain = all_hi < static_cast<int32_t>(kInfBits) && all_lo >= 0x00800000;
  return {static_cast<uint32_t>(hi), static_cast<uint32_t>(lo), plain};
}

enum BlockMode : uint8_t { kNoValues, kOneLevel, kPlain, kGeneral };

// What the encoder derives from a block's range. Level m covers log2 values from
// log_amin + (m - 2 + r_mid) step to log_amin + (m - 1 + r_mid) step, where r_mid step = log2((1 + 2^step) / 2)
// is where the linear midpoint between two levels lies: r_mid = 1/2 + u/8 - u^3/192 (+ O(u^5), u = step ln 2,
// < 1e-10 here). So the level is floor(t), t = (log2|x| - log_amin) * step_inv + 2 - r_mid, clamped to
// [1, 511]. The encoder evaluates t with log2_approx's pieces and step_inv folded in (element_code), relative
// to a block exponent ref = biased exponent of amax - 16: for elements above the clip every term stays within
// 17 step_inv, so each fp32 rounding moves a level boundary by at most 2^-20 in log2 units, whatever the
// magnitude.
struct BlockSetup {
  BlockParams params;    // on the wire
  float step_inv, bias;  // bias = 2 - r_mid - (log_amin - (ref - 127)) * step_inv
  int32_t ref8;          // 8 * ref
  BlockMode mode;
};

// The scalar definition; block_setup8_avx2 computes the same eight at a time with the same operations.
inline BlockSetup block_setup(const BlockRange& br) {
  if (br.hi == 0) return {{0.0f, 0.0f}, 0.0f, 0.0f, 0, kNoValues};
  float log_amax = log2_approx(br.hi);
  float log_amin = log2_approx(br.lo);
  float clip = log_amax - kMinClip;
  log_amin = log_amin > clip ? log_amin : clip;
  // The approximate log2 is monotonic only to within 6e-7: never let amin pass amax.
  log_amin = log_amin < log_amax ? log_amin : log_amax;
  float step = (log_amax - log_amin) / static_cast<float>(kLevels - 2);
  if (step == 0.0f) return {{log_amin, log_amax}, 0.0f, 0.0f, 0, kOneLevel};
  int32_t ref = static_cast<int32_t>(br.hi >> 23) - 16;
  float u = step * kLn2;
  float r_mid = 0.5f + u * (0.125f - (u * u) * kInv192);
  float step_inv = 1.0f / step;
  float bias = (2.0f - r_mid) - (log_amin - static_cast<float>(ref - 127)) * step_inv;
  return {{log_amin, log_amax}, step_inv, bias, 8 * ref, br.plain ? kPlain : kGeneral};
}

// t = ((k - ref8) * (step_inv / 8) + (kSegLog2[j] * step_inv + bias)) + p(r) with p's coefficients times step_inv:
// the same sum as (log2_approx(|x|) - (ref - 127)) * step_inv + bias, rounded differently.
inline uint32_t element_code(uint32_t b, const BlockSetup& s) {
  uint32_t a = b & kAbsMask;
  uint32_t an = normalized_bits(a);
  int32_t k8 = static_cast<int32_t>(an >> 20) - s.ref8 - (a < 0x00800000u ? kSubnormalShift8 : 0);
  uint32_t j = (an >> 20) & 7u;
  float r = segment_r(an);
  float tb = kSegLog2[j] * s.step_inv + s.bias;
  float q1 = kP1 * s.step_inv, q2 = kP2 * s.step_inv, q3 = kP3 * s.step_inv;
  float t = (static_cast<float>(k8) * (s.step_inv * 0.125f) + tb) + r * (q1 + r * (q2 + r * q3));
  // clamp(floor(t), 1, 511), in the order the AVX2 path takes: high end in float, low end after truncation.
  t = t < static_cast<float>(kLevels - 1) ? t : static_cast<float>(kLevels - 1);
  uint32_t c = (t < 1.0f ? 1u : static_cast<uint32_t>(static_cast<int32_t>(t))) | ((b >> 31) << 9);
  c = a == 0 ? 0u : c;
  return a >= kInfBits ? kNanCode : c;
}

inline void encode_block(const float* x, int n, const BlockSetup& s, uint16_t* codes) {
  if (s.mode == kNoValues) {
    for (int i = 0; i < n; ++i)
      codes[i] = static_cast<uint16_t>((bits_of(x[i]) & kAbsMask) >= kInfBits ? kNanCode : 0u);
  } else if (s.mode == kOneLevel) {  // every nonzero magnitude is amin = amax: level 1
    for (int i = 0; i < n; ++i) {
      uint32_t b = bits_of(x[i]), a = b & kAbsMask;
      codes[i] = static_cast<uint16_t>(a >= kInfBits ? kNanCode : (a != 0 ? ((b >> 31) << 9) | 1u : 0u));
    }
  } else {
    for (int i = 0; i < n; ++i) codes[i] = static_cast<uint16_t>(element_code(bits_of(x[i]), s));
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

// Per-token scratch: codes before packing, and (AVX2 path) the block ranges and setups, eight blocks at a time.
struct RowScratch {
  explicit RowScratch(int hidden) {
    size_t blocks = (static_cast<size_t>(hidden) + kBlock - 1) / kBlock;
    size_t padded = (blocks + 7) / 8 * 8;
    codes.resize(static_cast<size_t>(hidden));
    hi.resize(padded);
    lo.resize(padded);
    plain.resize(padded);
    log_amin.resize(padded);
    log_amax.resize(padded);
    step.resize(padded);
    step_inv.resize(padded);
    bias.resize(padded);
    ref8.resize(padded);
  }
  std::vector<uint16_t> codes;
  std::vector<uint32_t> hi, lo;
  std::vector<uint8_t> plain;
  std::vector<float> log_amin, log_amax, step, step_inv, bias;
  std::vector<int32_t> ref8;
};

// One token per call; the portable path (and the definition of the bytes the AVX2 path must produce).
EPLAB_CLONES void encode_row(const float* row, int hidden, uint8_t* p, RowScratch& s) {
  uint8_t* params = p + (static_cast<size_t>(hidden) * 10 + 7) / 8;
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
    int n = std::min(kBlock, hidden - b0);
    BlockSetup setup = block_setup(block_range(row + b0, n));
    std::memcpy(params + blk * sizeof(BlockParams), &setup.params, sizeof(BlockParams));
    encode_block(row + b0, n, setup, s.codes.data() + b0);
  }
  pack(s.codes.data(), hidden, p);
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
// AVX2 twins of the code above, eight elements (or blocks) per instruction with the same float operations in
// the same order (the build has -ffp-contract=off, and no FMA is used here), so codes and values are identical.
// _mm256_max_ps(a, b) is a > b ? a : b and _mm256_min_ps(a, b) is a < b ? a : b, as the scalar selects.

// Subnormal lanes converted as normalized_bits does; returns the lanes that were subnormal.
EPLAB_TARGET_AVX2 inline __m256i normalize_avx2(__m256i* a) {
  __m256i sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x00800000), *a);
  *a = _mm256_blendv_epi8(*a, _mm256_castps_si256(_mm256_cvtepi32_ps(*a)), sub);
  return sub;
}
EPLAB_TARGET_AVX2 inline __m256 segment_r_avx2(__m256i an) {
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(an, _mm256_set1_epi32(0x7fffff)), _mm256_set1_epi32(0x3f800000)));
  // permutevar8x32 reads the low three bits of each lane: an >> 20 is 8 E + j.
  __m256 inv = _mm256_permutevar8x32_ps(_mm256_load_ps(kSegInv), _mm256_srli_epi32(an, 20));
  return _mm256_sub_ps(_mm256_mul_ps(m, inv), _mm256_set1_ps(1.0f));
}
EPLAB_TARGET_AVX2 inline __m256 log2_approx_avx2(__m256i a) {
  __m256i sub = normalize_avx2(&a);
  __m256i k = _mm256_srli_epi32(a, 20);
  __m256i k8 = _mm256_sub_epi32(_mm256_sub_epi32(k, _mm256_set1_epi32(8 * 127)),
                                _mm256_and_si256(sub, _mm256_set1_epi32(kSubnormalShift8)));
  __m256 r = segment_r_avx2(a);
  __m256 p = _mm256_add_ps(_mm256_set1_ps(kP2), _mm256_mul_ps(r, _mm256_set1_ps(kP3)));
  p = _mm256_add_ps(_mm256_set1_ps(kP1), _mm256_mul_ps(r, p));
  p = _mm256_mul_ps(r, p);
  return _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(k8), _mm256_set1_ps(0.125f)),
                       _mm256_add_ps(_mm256_permutevar8x32_ps(_mm256_load_ps(kSegLog2), k), p));
}

// A full block's range: plain min/max of all magnitudes first; only a block holding zero, subnormal or
// non-finite values takes the masked scalar loop.
EPLAB_TARGET_AVX2 BlockRange block_range_avx2(const float* x) {
  const __m256i abs = _mm256_set1_epi32(static_cast<int32_t>(kAbsMask));
  __m256i hi0 = _mm256_setzero_si256(), hi1 = hi0, lo0 = _mm256_set1_epi32(static_cast<int32_t>(kAbsMask)), lo1 = lo0;
  for (int i = 0; i < kBlock; i += 16) {
    __m256i a0 = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)), abs);
    __m256i a1 = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 8)), abs);
    hi0 = _mm256_max_epi32(hi0, a0);
    lo0 = _mm256_min_epi32(lo0, a0);
    hi1 = _mm256_max_epi32(hi1, a1);
    lo1 = _mm256_min_epi32(lo1, a1);
  }
  __m256i hi8 = _mm256_max_epi32(hi0, hi1), lo8 = _mm256_min_epi32(lo0, lo1);
  __m128i h = _mm_max_epi32(_mm256_castsi256_si128(hi8), _mm256_extracti128_si256(hi8, 1));
  __m128i l = _mm_min_epi32(_mm256_castsi256_si128(lo8), _mm256_extracti128_si256(lo8, 1));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0x4e));
  l = _mm_min_epi32(l, _mm_shuffle_epi32(l, 0x4e));
  h = _mm_max_epi32(h, _mm_shuffle_epi32(h, 0xb1));
  l = _mm_min_epi32(l, _mm_shuffle_epi32(l, 0xb1));
  int32_t all_hi = _mm_cvtsi128_si32(h), all_lo = _mm_cvtsi128_si32(l);
  if (all_hi < static_cast<int32_t>(kInfBits) && all_lo >= 0x00800000) {
    return {static_cast<uint32_t>(all_hi), static_cast<uint32_t>(all_lo), true};
  }
  return block_range(x, kBlock);
}

// block_setup for eight blocks (ranges s.hi/lo[k..k+8)); lanes without values compute garbage that is not used.
EPLAB_TARGET_AVX2 void block_setup8_avx2(RowScratch& s, size_t k) {
  __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.hi.data() + k));
  __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s.lo.data() + k));
  __m256 log_amax = log2_approx_avx2(hi);
  __m256 log_amin = log2_approx_avx2(lo);
  log_amin = _mm256_max_ps(log_amin, _mm256_sub_ps(log_amax, _mm256_set1_ps(kMinClip)));
  log_amin = _mm256_min_ps(log_amin, log_amax);
  __m256 step = _mm256_div_ps(_mm256_sub_ps(log_amax, log_amin), _mm256_set1_ps(static_cast<float>(kLevels - 2)));
  __m256i ref = _mm256_sub_epi32(_mm256_srli_epi32(hi, 23), _mm256_set1_epi32(16));
  __m256 u = _mm256_mul_ps(step, _mm256_set1_ps(kLn2));
  __m256 r_mid = _mm256_add_ps(
      _mm256_set1_ps(0.5f),
      _mm256_mul_ps(
          u, _mm256_sub_ps(_mm256_set1_ps(0.125f), _mm256_mul_ps(_mm256_mul_ps(u, u), _mm256_set1_ps(kInv192)))));
  __m256 step_inv = _mm256_div_ps(_mm256_set1_ps(1.0f), step);
  __m256 ref_log2 = _mm256_cvtepi32_ps(_mm256_sub_epi32(ref, _mm256_set1_epi32(127)));
  __m256 bias = _mm256_sub_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), r_mid),
                              _mm256_mul_ps(_mm256_sub_ps(log_amin, ref_log2), step_inv));
  _mm256_storeu_ps(s.log_amin.data() + k, log_amin);
  _mm256_storeu_ps(s.log_amax.data() + k, log_amax);
  _mm256_storeu_ps(s.step.data() + k, step);
  _mm256_storeu_ps(s.step_inv.data() + k, step_inv);
  _mm256_storeu_ps(s.bias.data() + k, bias);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s.ref8.data() + k), _mm256_slli_epi32(ref, 3));
}

// element_code's t for eight elements (a: magnitude bits), clamped above. The plain variant (block_range's
// plain blocks: no zero, subnormal or non-finite element) skips the subnormal handling.
struct BlockConsts {
  __m256 step_inv8, tb, q1, q2, q3;
  __m256i ref8;
};
template <bool kPlainBlock>
EPLAB_TARGET_AVX2 inline __m256 level8_avx2(__m256i a, const BlockConsts& bc) {
  __m256i ref8 = bc.ref8;
  if (!kPlainBlock) {
    __m256i sub = normalize_avx2(&a);
    ref8 = _mm256_add_epi32(ref8, _mm256_and_si256(sub, _mm256_set1_epi32(kSubnormalShift8)));
  }
  __m256i k = _mm256_srli_epi32(a, 20);
  __m256 r = segment_r_avx2(a);
  __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(k, ref8)), bc.step_inv8),
                           _mm256_permutevar8x32_ps(bc.tb, k));
  __m256 p = _mm256_add_ps(bc.q2, _mm256_mul_ps(r, bc.q3));
  p = _mm256_add_ps(bc.q1, _mm256_mul_ps(r, p));
  t = _mm256_add_ps(t, _mm256_mul_ps(r, p));
  return _mm256_min_ps(t, _mm256_set1_ps(static_cast<float>(kLevels - 1)));
}
// Sixteen 10-bit codes (16-bit lanes, in order) to 20 bytes at out: pairs to 20 bits with a multiply-add,
// the odd pair of each four already shifted by 4 (factors 16 and 16384), so that one byte shuffle of the even
// pairs and one of the odd pairs, ORed, give the five bytes of each four codes (ten per 128-bit lane). Writes
// 16 bytes from out + 10: the 6 past the group are overwritten by the next group, or are the token's block
// ranges, which encode_row_avx2 writes last.
EPLAB_TARGET_AVX2 inline void store_packed16_avx2(__m256i c, uint8_t* out) {
  const __m256i even = _mm256_setr_epi8(0, 1, 2, -1, -1, 8, 9, 10, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 1, 2, -1, -1, 8, 9, 10, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i odd = _mm256_setr_epi8(-1, -1, 4, 5, 6, -1, -1, 12, 13, 14, -1, -1, -1, -1, -1, -1,  //
                                       -1, -1, 4, 5, 6, -1, -1, 12, 13, 14, -1, -1, -1, -1, -1, -1);
  __m256i d = _mm256_madd_epi16(c, _mm256_set1_epi64x(0x4000001004000001ll));  // (1, 1024), (16, 16384)
  __m256i p = _mm256_or_si256(_mm256_shuffle_epi8(d, even), _mm256_shuffle_epi8(d, odd));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(p));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 10), _mm256_extracti128_si256(p, 1));
}

// element_code for sixteen elements, packed to out: the levels are truncated to int32 and packed to 16 bits
// (unsigned saturation sends negative levels to 0 before the clamp to 1; t below -2^31 truncates to INT_MIN,
// also negative). The sign comes from the fp32 bits packed with signed saturation (an int32 keeps its sign).
template <bool kPlainBlock>
EPLAB_TARGET_AVX2 inline void codes16_avx2(const float* x, const BlockConsts& bc, uint8_t* out) {
  const __m256i abs = _mm256_set1_epi32(static_cast<int32_t>(kAbsMask));
  __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 8));
  __m256i a0 = _mm256_and_si256(b0, abs), a1 = _mm256_and_si256(b1, abs);
  __m256i c = _mm256_packus_epi32(_mm256_cvttps_epi32(level8_avx2<kPlainBlock>(a0, bc)),
                                  _mm256_cvttps_epi32(level8_avx2<kPlainBlock>(a1, bc)));
  c = _mm256_max_epu16(c, _mm256_set1_epi16(1));
  __m256i sign = _mm256_and_si256(_mm256_packs_epi32(b0, b1), _mm256_set1_epi16(static_cast<int16_t>(0x8000)));
  c = _mm256_or_si256(c, _mm256_srli_epi16(sign, 6));
  if (!kPlainBlock) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i is_zero = _mm256_packs_epi32(_mm256_cmpeq_epi32(a0, zero), _mm256_cmpeq_epi32(a1, zero));
    const __m256i finite_max = _mm256_set1_epi32(static_cast<int32_t>(kInfBits) - 1);
    __m256i nonfinite = _mm256_packs_epi32(_mm256_cmpgt_epi32(a0, finite_max), _mm256_cmpgt_epi32(a1, finite_max));
    c = _mm256_andnot_si256(is_zero, c);
    c = _mm256_blendv_epi8(c, _mm256_set1_epi16(static_cast<int16_t>(kNanCode)), nonfinite);
  }
  // packs/packus interleave the 128-bit lanes: put the four groups of four codes back in order.
  store_packed16_avx2(_mm256_permute4x64_epi64(c, 0xd8), out);
}

// A full block, coded and packed to its 160 bytes at out.
template <bool kPlainBlock>
EPLAB_TARGET_AVX2 void encode_block_avx2(const float* x, const RowScratch& s, size_t blk, uint8_t* out) {
  const float step_inv = s.step_inv[blk];
  const __m256 vstep_inv = _mm256_set1_ps(step_inv);
  BlockConsts bc;
  bc.step_inv8 = _mm256_set1_ps(step_inv * 0.125f);
  bc.tb = _mm256_add_ps(_mm256_mul_ps(_mm256_load_ps(kSegLog2), vstep_inv), _mm256_set1_ps(s.bias[blk]));
  bc.q1 = _mm256_set1_ps(kP1 * step_inv);
  bc.q2 = _mm256_set1_ps(kP2 * step_inv);
  bc.q3 = _mm256_set1_ps(kP3 * step_inv);
  bc.ref8 = _mm256_set1_epi32(s.ref8[blk]);
  for (int i = 0; i < kBlock; i += 16) {
    // The next group's input (eight blocks on): its range pass would otherwise wait on memory with no work to
    // overlap. Prefetches never fault, past the row's end included.
    _mm_prefetch(reinterpret_cast<const char*>(x + i + 8 * kBlock), _MM_HINT_T0);
    codes16_avx2<kPlainBlock>(x + i, bc, out + i / 4 * 5);
  }
}

// Eight blocks at a time (4 KiB of input, still in L1 for the second read): ranges, setups, then each block
// coded and packed; the block ranges go on the wire last (the packed stores run 6 bytes past the codes).
EPLAB_TARGET_AVX2 void encode_row_avx2(const float* row, int hidden, uint8_t* p, RowScratch& s) {
  const size_t blocks = (static_cast<size_t>(hidden) + kBlock - 1) / kBlock;
  for (size_t k = 0; k < blocks; k += 8) {
    for (size_t blk = k; blk < k + 8; ++blk) {
      size_t b0 = blk * kBlock;
      BlockRange br{0x3f800000u, 0x3f800000u, true};  // padding lanes: any valid range
      if (blk < blocks) {
        br = b0 + kBlock <= static_cast<size_t>(hidden) ? block_range_avx2(row + b0)
                                                        : block_range(row + b0, hidden - static_cast<int>(b0));
      }
      s.hi[blk] = br.hi;
      s.lo[blk] = br.lo;
      s.plain[blk] = br.plain;
    }
    block_setup8_avx2(s, k);
    for (size_t blk = k; blk < std::min(blocks, k + 8); ++blk) {
      size_t b0 = blk * kBlock;
      int n = std::min(kBlock, hidden - static_cast<int>(b0));
      uint8_t* out = p + blk * kBlockBytes;
      BlockSetup setup{{s.log_amin[blk], s.log_amax[blk]}, s.step_inv[blk], s.bias[blk], s.ref8[blk], kGeneral};
      if (s.hi[blk] == 0) {
        setup = {{0.0f, 0.0f}, 0.0f, 0.0f, 0, kNoValues};
        s.log_amin[blk] = s.log_amax[blk] = 0.0f;
      } else if (s.step[blk] == 0.0f) {
        setup.mode = kOneLevel;
      } else if (s.plain[blk]) {
        setup.mode = kPlain;
      }
      if (n == kBlock && setup.mode == kPlain) {
        encode_block_avx2<true>(row + b0, s, blk, out);
      } else if (n == kBlock && setup.mode == kGeneral) {
        encode_block_avx2<false>(row + b0, s, blk, out);
      } else {
        encode_block(row + b0, n, setup, s.codes.data() + b0);
        pack(s.codes.data() + b0, n, out);
      }
    }
  }
  uint8_t* params = p + (static_cast<size_t>(hidden) * 10 + 7) / 8;
  for (size_t blk = 0; blk < blocks; ++blk) {
    BlockParams bp{s.log_amin[blk], s.log_amax[blk]};
    std::memcpy(params + blk * sizeof(BlockParams), &bp, sizeof(bp));
  }
}

EPLAB_TARGET_AVX2 inline __m256 exp2_poly_avx2(__m256 r) {
  __m256 p = _mm256_add_ps(_mm256_set1_ps(kE4), _mm256_mul_ps(r, _mm256_set1_ps(kE5)));
  p = _mm256_add_ps(_mm256_set1_ps(kE3), _mm256_mul_ps(r, p));
  p = _mm256_add_ps(_mm256_set1_ps(kE2), _mm256_mul_ps(r, p));
  p = _mm256_add_ps(_mm256_set1_ps(kE1), _mm256_mul_ps(r, p));
  return _mm256_add_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(r, p));
}
EPLAB_TARGET_AVX2 inline __m256 fast_exp2_avx2(__m256 f) {
  f = _mm256_max_ps(_mm256_set1_ps(-149.0f), f);  // f < -149 ? -149 : f
  __m256i i = _mm256_cvttps_epi32(f);
  i = _mm256_add_epi32(i, _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtepi32_ps(i), f, _CMP_GT_OQ)));  // floor
  __m256 r = _mm256_sub_ps(f, _mm256_cvtepi32_ps(i));
  __m256 p = exp2_poly_avx2(r);
  __m256i i1 = _mm256_srai_epi32(_mm256_add_epi32(i, _mm256_srli_epi32(i, 31)), 1);  // i / 2, toward zero
  __m256i i2 = _mm256_sub_epi32(i, i1);
  const __m256i bias = _mm256_set1_epi32(127);
  p = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(i1, bias), 23)));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(i2, bias), 23)));
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

// A full block whose levels 1..511 all lie in [2^-126, 2^127): fast_exp2's two exponent multiplies are exact
// there, so 2^i * p is built by adding i to p's exponent field (p in [1, 2], no overflow or subnormal), and
// the floor is one rounding instruction; the values are bit-identical to decode_block's. The codes are
// unpacked straight from the wire, eight per 10 bytes: each 32-bit lane takes the two bytes holding its
// code into its top half and a per-lane shift puts the code at bits 22..31 (sign at bit 31). The loads read
// 6 bytes past the block; the caller guarantees them (the token's block ranges follow its payload).
// Level 0 (zero, or NaN with the sign) is rare: the main loop only tracks whether it occurred, and a second
// pass over the block patches those lanes.
EPLAB_TARGET_AVX2 inline __m256i unpack8_avx2(const uint8_t* in) {
  const __m256i take = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 1, 2, -1, -1, 2, 3, -1, -1, 3, 4,  //
                                        -1, -1, 5, 6, -1, -1, 6, 7, -1, -1, 7, 8, -1, -1, 8, 9);
  const __m256i shift = _mm256_setr_epi32(6, 4, 2, 0, 6, 4, 2, 0);
  __m256i w = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
  return _mm256_sllv_epi32(_mm256_shuffle_epi8(w, take), shift);  // code << 22, junk below bit 22
}
// Eight values from eight codes (x: unpack8_avx2), without the level-0 patch; min_m tracks the smallest level.
EPLAB_TARGET_AVX2 inline __m256i decode8_fast_avx2(__m256i x, __m256 vmin, __m256 vstep, __m256i* min_m) {
  __m256i m = _mm256_srli_epi32(_mm256_slli_epi32(x, 1), 23);
  *min_m = _mm256_min_epu32(*min_m, m);
  __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(m, _mm256_set1_epi32(1)));
  f = _mm256_add_ps(vmin, _mm256_mul_ps(f, vstep));
  __m256 fl = _mm256_floor_ps(f);
  __m256 p = exp2_poly_avx2(_mm256_sub_ps(f, fl));
  __m256i v = _mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(fl), 23));
  return _mm256_or_si256(v, _mm256_and_si256(x, _mm256_set1_epi32(static_cast<int32_t>(0x80000000u))));
}
EPLAB_TARGET_AVX2 void decode_block_fast_avx2(const uint8_t* in, const BlockParams& bp, float step, float* out) {
  const __m256 vmin = _mm256_set1_ps(bp.log_amin), vstep = _mm256_set1_ps(step);
  __m256i min_m = _mm256_set1_epi32(1);
  // Two groups per iteration: their long dependency chains interleave, which keeps the FP scheduler fed.
  for (int g = 0; g < kBlock / 8; g += 2) {
    __m256i v0 = decode8_fast_avx2(unpack8_avx2(in + 10 * g), vmin, vstep, &min_m);
    __m256i v1 = decode8_fast_avx2(unpack8_avx2(in + 10 * g + 10), vmin, vstep, &min_m);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8 * g), v0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8 * g + 8), v1);
  }
  if (_mm256_testz_si256(_mm256_cmpeq_epi32(min_m, _mm256_setzero_si256()), _mm256_set1_epi32(-1))) return;
  for (int g = 0; g < kBlock / 8; ++g) {
    __m256i x = unpack8_avx2(in + 10 * g);
    __m256i m = _mm256_srli_epi32(_mm256_slli_epi32(x, 1), 23);
    __m256i special = _mm256_and_si256(_mm256_srai_epi32(x, 31), _mm256_set1_epi32(0x7fc00000));  // +0 or NaN
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out + 8 * g));
    v = _mm256_blendv_epi8(v, special, _mm256_cmpeq_epi32(m, _mm256_setzero_si256()));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8 * g), v);
  }
}

EPLAB_TARGET_AVX2 void decode_row_avx2(const uint8_t* p, int hidden, uint16_t* codes, float* row) {
  const uint8_t* params = p + (static_cast<size_t>(hidden) * 10 + 7) / 8;
  for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
    int n = std::min(kBlock, hidden - b0);
    BlockParams bp;
    std::memcpy(&bp, params + blk * sizeof(BlockParams), sizeof(bp));
    float step = step_of(bp);
    const uint8_t* in = p + static_cast<size_t>(blk) * kBlockBytes;
    if (n == kBlock && bp.log_amin >= -126.0f && bp.log_amin + 510.0f * step < 127.0f) {
      decode_block_fast_avx2(in, bp, step, row + b0);
    } else {
      unpack(in, n, codes + b0);
      decode_block_avx2(codes + b0, n, bp, row + b0);
    }
  }
}
#endif

void encode_row_any(const float* row, int hidden, uint8_t* p, RowScratch& s) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return encode_row_avx2(row, hidden, p, s);
#endif
  encode_row(row, hidden, p, s);
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
  // (2^s - 1)/(2^s + 1) of itself (0.021745). Values below the clipped amin (< amax * 2^-32) are sent as amin:
  // at most sqrt(128) * 2^-32 relative. The rest moves a level boundary a little, in log2 units: log2_approx
  // (< 9e-7), the encoder's fp32 roundings (four, < 2^-20 each), the decoder's level (half an ulp of |f| <= 128,
  // 2^-18, plus 2^-19 for (m-1) step): < 1.1e-5, or 8e-6 relative; exp2 adds < 1e-7 and two roundings. 2e-5
  // covers it (logfmt_test checks every element). Output values below 2^-126 (fp32 subnormals) are not covered.
  double error_bound() const override {
    double s = kMinClip / (kLevels - 2);
    double g = std::exp2(s);
    return ((g - 1) / (g + 1) + std::sqrt(double{kBlock}) * 0x1p-32 + 2e-5) * kBoundSlack;
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
    RowScratch scratch(hidden);
    for (int t = 0; t < tokens; ++t) {
      encode_row_any(x + static_cast<size_t>(t) * hidden, hidden,
                     out.data() + at + static_cast<size_t>(t) * token_bytes(hidden), scratch);
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
      // rejected ranges the encoder produces when the rounded subtraction lands a hair below amax - 32. A log_amax
      // above any finite value's log2 would take fast_exp2 out of int range.
      for (int blk = 0; blk * kBlock < hidden; ++blk) {
        BlockParams bp;
        std::memcpy(&bp, params + blk * sizeof(BlockParams), sizeof(bp));
        if (!(bp.log_amin <= bp.log_amax) || !std::isfinite(bp.log_amax) || bp.log_amax > kMaxLogAmax ||
            bp.log_amin < bp.log_amax - kMinClip) {
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

void add_logfmt_codecs(CodecRegistry& r) {
  r.add("logfmt10", "DeepEP LogFMT-10: sign + 9-bit log2 level per element, log range per 128 (10.5 bits)",
        quantizer_stage(
            [](const CodecParams& p) -> std::unique_ptr<Codec> { return std::make_unique<LogFmtCodec>(p.spec()); }));
}

}  // namespace eplab::codecs
