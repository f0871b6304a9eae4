// int8-token: symmetric per-token int8. scale = amax / 127 over the token's finite values; elements
// round-to-nearest-even of x * (127 / amax); -128 (never produced by rounding) marks NaN/Inf inputs.
#include <cmath>
#include <cstring>

#include "policies/codecs/block_quant.hpp"
#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

class Int8TokenCodec final : public Codec {
 public:
  explicit Int8TokenCodec(std::string spec) : spec_(std::move(spec)) {}
  std::string name() const override { return spec_; }
  bool lossless() const override { return false; }
  // Each element moves by at most min(half a step, |x|): ||e|| <= ||x|| always (bound 1 without a
  // shape), and ||e|| <= sqrt(H)/2 steps against a token norm >= 127 steps for a hidden size H.
  double error_bound() const override { return 1.0; }
  double error_bound_for(int hidden) const override {
    return std::min(1.0, 0.5 * std::sqrt(static_cast<double>(std::max(hidden, 1))) / 127.0 * kBoundSlack);
  }
  size_t encoded_size(int tokens, int hidden) const override {
    return static_cast<size_t>(tokens) * (static_cast<size_t>(hidden) + sizeof(float));
  }

  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    size_t at = out.size();
    out.resize(at + encoded_size(tokens, hidden));
    uint8_t* p = out.data() + at;
    for (int t = 0; t < tokens; ++t) {
      const float* row = x + static_cast<size_t>(t) * hidden;
      float amax = amax_kernel(row, hidden).amax;
      float scale = amax / 127.0f;
      float inv = amax > 0 ? 127.0f / amax : 0.0f;  // an all-zero token encodes as zeros with scale 0
      quantize_int8_kernel(row, hidden, inv, reinterpret_cast<int8_t*>(p));
      std::memcpy(p + hidden, &scale, 4);
      p += hidden + sizeof(float);
    }
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    const uint8_t* p = data;
    const float nan = std::nanf("");
    for (int t = 0; t < tokens; ++t) {
      float* row = out + static_cast<size_t>(t) * hidden;
      float scale;
      std::memcpy(&scale, p + hidden, 4);
      const int8_t* q = reinterpret_cast<const int8_t*>(p);
      for (int i = 0; i < hidden; ++i) row[i] = q[i] == -128 ? nan : static_cast<float>(q[i]) * scale;
      p += hidden + sizeof(float);
    }
  }

 private:
  std::string spec_;
};

}  // namespace

void add_int8_codecs(CodecRegistry& r) {
  r.add("int8-token", "symmetric int8 per token, fp32 scale amax/127 (8 bits/element + 32/token)",
        quantizer_stage(
            [](const CodecParams& p) -> std::unique_ptr<Codec> { return std::make_unique<Int8TokenCodec>(p.spec()); }));
}

}  // namespace eplab::codecs
