// Identity wire formats: fp32 (bit-exact copy) and bf16 (round-to-nearest-even, PyTorch's conversion).
// These are what the engine sends when no compression is asked for, and the terminal stage of any chain
// that names no quantizer.
#include <cstring>

#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/float_formats.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

class Fp32Codec final : public Codec {
 public:
  explicit Fp32Codec(std::string spec) : spec_(std::move(spec)) {}
  std::string name() const override { return spec_; }
  bool lossless() const override { return true; }
  // Activations are sent from GPU memory as they are: no codec pass to charge.
  double gpu_seconds(int, int, bool) const override { return 0; }
  double error_bound() const override { return 0.0; }
  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    // insert copies once; resize would zero the bytes first.
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(x);
    out.insert(out.end(), bytes, bytes + encoded_size(tokens, hidden));
  }
  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    if (size) std::memcpy(out, data, size);
  }
  size_t encoded_size(int tokens, int hidden) const override {
    return static_cast<size_t>(tokens) * static_cast<size_t>(hidden) * sizeof(float);
  }
  size_t row_bytes(int hidden) const override { return encoded_size(1, hidden); }

 private:
  std::string spec_;
};

class Bf16Codec final : public Codec {
 public:
  explicit Bf16Codec(std::string spec) : spec_(std::move(spec)) {}
  std::string name() const override { return spec_; }
  bool lossless() const override { return false; }
  // The GPU already holds BF16 activations (the engine's fp32 buffers stand in for them): nothing to charge.
  double gpu_seconds(int, int, bool) const override { return 0; }
  // RNE to an 8-bit significand: each normal element moves by at most 2^-8 of itself, so the L2 error
  // does too. (Values below 2^-126 or above bf16's max 3.39e38 are outside the promise; see docs/codecs.md.)
  double error_bound() const override { return 0x1p-8 * kBoundSlack; }
  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    size_t n = static_cast<size_t>(tokens) * static_cast<size_t>(hidden);
    size_t at = out.size();
    out.resize(at + 2 * n);
    bf16_encode_kernel(x, n, out.data() + at);
  }
  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    bf16_decode_kernel(data, size / 2, out);
  }
  size_t encoded_size(int tokens, int hidden) const override {
    return static_cast<size_t>(tokens) * static_cast<size_t>(hidden) * sizeof(uint16_t);
  }
  size_t row_bytes(int hidden) const override { return encoded_size(1, hidden); }

 private:
  std::string spec_;
};

}  // namespace

void add_identity_codecs(CodecRegistry& r) {
  auto fp32 = [](const CodecParams& p) -> std::unique_ptr<Codec> { return std::make_unique<Fp32Codec>(p.spec()); };
  auto bf16 = [](const CodecParams& p) -> std::unique_ptr<Codec> { return std::make_unique<Bf16Codec>(p.spec()); };
  r.add("fp32", "fp32 wire, bit-exact (32 bits/element)", quantizer_stage(fp32));
  r.add("identity", "alias of fp32", quantizer_stage(fp32));
  r.add("bf16", "bfloat16 wire, round-to-nearest-even (16 bits/element)", quantizer_stage(bf16));
}

}  // namespace eplab::codecs
