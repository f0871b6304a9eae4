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

inline void encode_block(const float* x, int n, const BlockParams& bp, uint16_t* codes) {
  float step = step_of(bp);
  if (step == 0.0f) {  // one magnitude (or none): code 1 is amin = amax
    for (int i = 0; i < n; ++i) {
      uint32_t b = bits_of(x[i]);
      uint32_t a = b & kAbsMask;
      uint32_t c = a >= kInfBits ? kNanCode : ((b >> 31) << 9) | (a != 0 ? 1u : 0u);
      codes[i] = static_cast<uint16_t>(c);
    }
    return;
  }
  float step_inv = 1.0f / step;
  // Round at the linear midpoint of two levels: log2 of the midpoint lies r*step above the lower level.
  float r = std::log2((1.0f + std::exp2(step)) * 0.5f) * step_inv;
  float bias = 2.0f - r - bp.log_amin * step_inv;
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
    c |= (b >> 31) << 9;
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
      encode_row(x + static_cast<size_t>(t) * hidden, hidden,
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
      for (int blk = 0; blk * kBlock < hidden; ++blk) {
        BlockParams bp;
        std::memcpy(&bp, params + blk * sizeof(BlockParams), sizeof(bp));
        if (!(bp.log_amin <= bp.log_amax) || !std::isfinite(bp.log_amax) || bp.log_amax - bp.log_amin > kMinClip) {
          throw CodecError("codec " + spec_ + ": corrupt block range [" + std::to_string(bp.log_amin) + ", " +
                           std::to_string(bp.log_amax) + "] in token " + std::to_string(t) + " block " +
                           std::to_string(blk));
        }
      }
      decode_row(p, hidden, codes.data(), out + static_cast<size_t>(t) * hidden);
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
