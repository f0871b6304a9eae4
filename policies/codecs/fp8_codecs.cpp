// DeepEP's FP8 dispatch format: per token, per block of 128 channels, amax = max |x| (floored at 1e-4),
// elements x * (fmax / amax) rounded to E4M3 (or E5M2) with saturation, one scale_inv = amax / fmax per
// block. The -ue8m0 variant rounds scale_inv up to a power of two and sends it as one E8M0 byte.
#include <cmath>
#include <cstring>

#include "policies/codecs/block_quant.hpp"
#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/float_formats.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

constexpr int kBlock = 128;
constexpr float kAmaxFloor = 1e-4f;

enum class Fp8Kind { kE4M3, kE5M2 };

class Fp8BlockCodec final : public Codec {
 public:
  bool gemm_native() const override { return true; }

 public:
  Fp8BlockCodec(std::string spec, Fp8Kind kind, bool ue8m0)
      : spec_(std::move(spec)), kind_(kind), ue8m0_(ue8m0), fmax_(kind == Fp8Kind::kE4M3 ? kE4M3Max : kE5M2Max) {}

  std::string name() const override { return spec_; }
  bool lossless() const override { return false; }
  // Per element: RNE to m mantissa bits moves a normal value by <= 2^-(m+1) of itself. Subnormal
  // elements (step 2^-9 for E4M3, 2^-16 for E5M2, in scaled units) add at most sqrt(128) half-steps
  // against a block norm >= its scaled amax (fmax, or fmax/2 with UE8M0 scales). Per-block bounds
  // compose into the same bound on the whole message. Blocks whose amax is under the 1e-4 floor are
  // scaled as if it were 1e-4 and fall outside the promise (absolute error there is < 3e-10).
  double error_bound() const override {
    double rel = kind_ == Fp8Kind::kE4M3 ? 0x1p-4 : 0x1p-3;
    double half_sub = kind_ == Fp8Kind::kE4M3 ? 0x1p-10 : 0x1p-17;
    double min_norm = ue8m0_ ? fmax_ / 2 : fmax_;
    return (rel + std::sqrt(double{kBlock}) * half_sub / min_norm) * kBoundSlack;
  }

  size_t scale_bytes() const { return ue8m0_ ? 1 : 4; }
  size_t token_bytes(int hidden) const {
    size_t blocks = (static_cast<size_t>(hidden) + kBlock - 1) / kBlock;
    return static_cast<size_t>(hidden) + blocks * scale_bytes();
  }
  size_t encoded_size(int tokens, int hidden) const override {
    return static_cast<size_t>(tokens) * token_bytes(hidden);
  }
  size_t row_bytes(int hidden) const override { return token_bytes(hidden); }  // codes, then the row's scales

  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    size_t at = out.size();
    out.resize(at + encoded_size(tokens, hidden));
    uint8_t* p = out.data() + at;
    for (int t = 0; t < tokens; ++t) {
      const float* row = x + static_cast<size_t>(t) * hidden;
      uint8_t* codes = p;
      uint8_t* scales = p + hidden;
      for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
        size_t n = std::min(kBlock, hidden - b0);
        float amax = std::max(amax_kernel(row + b0, n).amax, kAmaxFloor);
        float scale;
        if (ue8m0_) {
          uint8_t e = ceil_to_e8m0(amax / fmax_);
          scales[blk] = e;
          scale = float_of(static_cast<uint32_t>(254 - e) << 23);  // 1 / 2^(e-127), exact
        } else {
          float scale_inv = amax / fmax_;
          std::memcpy(scales + 4 * blk, &scale_inv, 4);
          scale = fmax_ / amax;  // as DeepEP: x * (448 / amax), not x / scale_inv
        }
        if (kind_ == Fp8Kind::kE4M3) {
          quantize_e4m3_kernel(row + b0, n, scale, codes + b0);
        } else {
          quantize_e5m2_kernel(row + b0, n, scale, codes + b0);
        }
      }
      p += token_bytes(hidden);
    }
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    const uint8_t* p = data;
    for (int t = 0; t < tokens; ++t) {
      // row[i] = e4m3_table()[code] * scale_inv (e5m2_table() for E5M2), one call per token
      fp8_decode_row_kernel(kind_ == Fp8Kind::kE4M3 ? Fp8Elem::kE4M3 : Fp8Elem::kE5M2, ue8m0_, p, p + hidden, hidden,
                            kBlock, out + static_cast<size_t>(t) * hidden);
      p += token_bytes(hidden);
    }
  }

 private:
  std::string spec_;
  Fp8Kind kind_;
  bool ue8m0_;
  float fmax_;
};

}  // namespace

void add_fp8_codecs(CodecRegistry& r) {
  auto make = [](Fp8Kind kind, bool ue8m0) {
    return [kind, ue8m0](const CodecParams& p) -> std::unique_ptr<Codec> {
      return std::make_unique<Fp8BlockCodec>(p.spec(), kind, ue8m0);
    };
  };
  r.add("fp8-e4m3-b128", "DeepEP FP8: E4M3 + fp32 scale_inv per 128 channels (8.25 bits/element)",
        quantizer_stage(make(Fp8Kind::kE4M3, false)));
  r.add("fp8-e4m3-b128-ue8m0", "as fp8-e4m3-b128 with power-of-two E8M0 scales (8.06 bits/element)",
        quantizer_stage(make(Fp8Kind::kE4M3, true)));
  r.add("fp8-e5m2-b128", "E5M2 + fp32 scale_inv per 128 channels, fmax 57344 (8.25 bits/element)",
        quantizer_stage(make(Fp8Kind::kE5M2, false)));
}

}  // namespace eplab::codecs
