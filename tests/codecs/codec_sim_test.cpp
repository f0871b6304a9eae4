// The simulator charges codec compute: the same run with a codec whose modeled GPU time is zero and with the
// real one differs by the encode and decode time, and a bigger throughput model gives a longer dispatch.
#include <gtest/gtest.h>

#include <memory>

#include "engine/experiment.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

// fp8-e4m3-b128 with its modeled GPU time scaled by `factor`.
class ScaledTimeCodec final : public Codec {
 public:
  explicit ScaledTimeCodec(double factor) : inner_(create_codec("fp8-e4m3-b128")), factor_(factor) {}
  std::string name() const override { return inner_->name(); }
  bool lossless() const override { return false; }
  double error_bound() const override { return inner_->error_bound(); }
  void encode(const float* x, int t, int h, std::vector<uint8_t>& out, uint64_t s) override {
    inner_->encode(x, t, h, out, s);
  }
  void decode(const uint8_t* d, size_t n, int t, int h, float* out, uint64_t s) override {
    inner_->decode(d, n, t, h, out, s);
  }
  size_t encoded_size(int t, int h) const override { return inner_->encoded_size(t, h); }
  double gpu_seconds(int t, int h, bool enc) const override { return factor_ * inner_->gpu_seconds(t, h, enc); }

 private:
  std::unique_ptr<Codec> inner_;
  double factor_;
};

double dispatch_time(const std::string& codec) {
  RunConfig c;
  c.backend = "sim";
  c.nodes = 2;
  c.gpus_per_node = 8;
  c.tokens = 256;
  c.algorithm = "flat";
  c.dispatch_codec = codec;
  c.combine_codec = "bf16";
  return run_experiment(c)["phases"]["dispatch"]["time_s"].get<double>();
}

TEST(SimCodecCompute, DispatchTimeIncludesModeledEncodeAndDecode) {
  register_codec_factory("test-fp8-free", [] { return std::make_unique<ScaledTimeCodec>(0.0); });
  register_codec_factory("test-fp8-slow", [] { return std::make_unique<ScaledTimeCodec>(100.0); });
  const double free = dispatch_time("test-fp8-free");
  const double real = dispatch_time("fp8-e4m3-b128");
  const double slow = dispatch_time("test-fp8-slow");
  unregister_codec_factory("test-fp8-free");
  unregister_codec_factory("test-fp8-slow");
  // Same bytes on the wire; only the charged compute differs. One rank encodes its 256 tokens at least once.
  const double encode_once = create_codec("fp8-e4m3-b128")->gpu_seconds(256, 7168, true);
  EXPECT_GT(real, free);
  EXPECT_GE(slow - free, 100 * encode_once * 0.99);
  EXPECT_NEAR(real - free, (slow - free) / 100, 0.05 * (slow - free) / 100 + 1e-9);
}

TEST(SimCodecCompute, Bf16IsFree) {
  EXPECT_EQ(create_codec("bf16")->gpu_seconds(4096, 7168, true), 0.0);
  EXPECT_GT(create_codec("topk:ratio=0.25+fp8-e4m3-b128+zstd")->gpu_seconds(4096, 7168, true),
            create_codec("fp8-e4m3-b128")->gpu_seconds(4096, 7168, true));
}

}  // namespace
}  // namespace eplab
