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
  float fi = std::floor(f);
  float r = f - fi;  // [0, 1)
  float p =
      1.0f + r * (0.693147181f + r * (0.240226507f + r * (0.0555041087f + r * (0.00961812911f + r * 0.00133335581f))));
  int32_t i = static_cast<int32_t>(fi);
  // Split the exponent in two so results down to 2^-149 are reachable without building a subnormal by hand.
  int32_t i1 = i / 2, i2 = i - i / 2;
  return p * float_of(static_cast<uint32_t>(i1 + 127) << 23) * float_of(static_cast<uint32_t>(i2 + 127) << 23);
}

struct BlockParams {
  float log_amin;
  float log_amax;
};

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
      const float* row = x + static_cast<size_t>(t) * hidden;
      uint8_t* p = out.data() + at + static_cast<size_t>(t) * token_bytes(hidden);
      uint8_t* params = p + payload_bytes(hidden);
      for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
        int n = std::min(kBlock, hidden - b0);
        BlockParams bp = block_params(row + b0, n);
        std::memcpy(params + blk * sizeof(BlockParams), &bp, sizeof(bp));
        encode_block(row + b0, n, bp, codes.data() + b0);
      }
      pack(codes.data(), hidden, p);
    }
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    std::vector<uint16_t> codes(static_cast<size_t>(hidden));
    for (int t = 0; t < tokens; ++t) {
      const uint8_t* p = data + static_cast<size_t>(t) * token_bytes(hidden);
      float* row = out + static_cast<size_t>(t) * hidden;
      unpack(p, hidden, codes.data());
      const uint8_t* params = p + payload_bytes(hidden);
      for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
        int n = std::min(kBlock, hidden - b0);
        BlockParams bp;
        std::memcpy(&bp, params + blk * sizeof(BlockParams), sizeof(bp));
        if (!(bp.log_amin <= bp.log_amax) || !std::isfinite(bp.log_amax) || bp.log_amax - bp.log_amin > kMinClip) {
          throw CodecError("codec " + spec_ + ": corrupt block range [" + std::to_string(bp.log_amin) + ", " +
                           std::to_string(bp.log_amax) + "] in token " + std::to_string(t) + " block " +
                           std::to_string(blk));
        }
        decode_block(codes.data() + b0, n, bp, row + b0);
      }
    }
  }

 private:
  static BlockParams block_params(const float* x, int n) {
    uint32_t hi = 0, lo = kInfBits;
    for (int i = 0; i < n; ++i) {
      uint32_t a = bits_of(x[i]) & kAbsMask;
      bool ok = a < kInfBits && a != 0;
      hi = ok && a > hi ? a : hi;
      lo = ok && a < lo ? a : lo;
    }
    if (hi == 0) return {0.0f, 0.0f};  // no finite nonzero value: every code is 0 or NaN
    float log_amax = std::log2(float_of(hi));
    float log_amin = std::max(std::log2(float_of(lo)), log_amax - kMinClip);
    return {log_amin, log_amax};
  }

  static float step_of(const BlockParams& bp) { return (bp.log_amax - bp.log_amin) / static_cast<float>(kLevels - 2); }

  static void encode_block(const float* x, int n, const BlockParams& bp, uint16_t* codes) {
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
      uint32_t c = static_cast<uint32_t>(t);
      c = a == 0 ? 0u : c;
      c |= (b >> 31) << 9;
      codes[i] = static_cast<uint16_t>(a >= kInfBits ? kNanCode : c);
    }
  }

  static void decode_block(const uint16_t* codes, int n, const BlockParams& bp, float* out) {
    float step = step_of(bp);
    for (int i = 0; i < n; ++i) {
      uint32_t c = codes[i];
      uint32_t m = c & 0x1ffu;
      float v = fast_exp2(bp.log_amin + static_cast<float>(static_cast<int32_t>(m) - 1) * step);
      v = m == 0 ? 0.0f : v;
      v = (c & 0x200u) ? -v : v;
      out[i] = c == kNanCode ? std::numeric_limits<float>::quiet_NaN() : v;
    }
  }

  // Four 10-bit codes in five bytes, little-endian bit order (code i at bits [10i, 10i+10)).
  static void pack(const uint16_t* codes, int n, uint8_t* out) {
    int i = 0;
    for (; i + 3 < n; i += 4) {
      uint64_t w =
          codes[i] | (uint64_t{codes[i + 1]} << 10) | (uint64_t{codes[i + 2]} << 20) | (uint64_t{codes[i + 3]} << 30);
      uint8_t* o = out + (i / 4) * 5;
      for (int b = 0; b < 5; ++b) o[b] = static_cast<uint8_t>(w >> (8 * b));
    }
    uint64_t w = 0;
    int k = 0;
    for (; i < n; ++i, ++k) w |= uint64_t{codes[i]} << (10 * k);
    uint8_t* o = out + (n / 4) * 5;
    for (int b = 0; b < (10 * k + 7) / 8; ++b) o[b] = static_cast<uint8_t>(w >> (8 * b));
  }
  static void unpack(const uint8_t* in, int n, uint16_t* codes) {
    int i = 0;
    for (; i + 3 < n; i += 4) {
      const uint8_t* s = in + (i / 4) * 5;
      uint64_t w = 0;
      for (int b = 0; b < 5; ++b) w |= uint64_t{s[b]} << (8 * b);
      for (int k = 0; k < 4; ++k) codes[i + k] = static_cast<uint16_t>((w >> (10 * k)) & 0x3ffu);
    }
    int rest = n - i;
    const uint8_t* s = in + (n / 4) * 5;
    uint64_t w = 0;
    for (int b = 0; b < (10 * rest + 7) / 8; ++b) w |= uint64_t{s[b]} << (8 * b);
    for (int k = 0; k < rest; ++k) codes[i + k] = static_cast<uint16_t>((w >> (10 * k)) & 0x3ffu);
  }

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
