// The simulator charges codec compute beside the dispatch timer (codec_s): one encode of a rank's batch, and one
// decode of what it received unless the expert GEMM takes the encoded form; the exchange time does not change.
#include <gtest/gtest.h>

#include <memory>

#include "driver/experiment.hpp"
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

struct DispatchTimes {
  double time_s, codec_s;
};

DispatchTimes dispatch_times(const std::string& codec) {
  RunConfig c;
  c.backend = "sim";
  c.nodes = 2;
  c.gpus_per_node = 8;
  c.tokens = 256;
  c.algorithm = "flat";
  c.dispatch_codec = codec;
  c.combine_codec = "bf16";
  const auto d = run_experiment(c)["phases"]["dispatch"];
  return {d["time_s"].get<double>(), d["codec_s"].get<double>()};
}

TEST(SimCodecCompute, EncodeOnceAndDecodeOnceBesideTheDispatchTimer) {
  register_codec_factory("test-fp8-free", [] { return std::make_unique<ScaledTimeCodec>(0.0); });
  register_codec_factory("test-fp8-slow", [] { return std::make_unique<ScaledTimeCodec>(100.0); });
  const DispatchTimes free = dispatch_times("test-fp8-free");
  const DispatchTimes real = dispatch_times("fp8-e4m3-b128");
  const DispatchTimes slow = dispatch_times("test-fp8-slow");
  unregister_codec_factory("test-fp8-free");
  unregister_codec_factory("test-fp8-slow");
  const double encode_once = create_codec("fp8-e4m3-b128")->gpu_seconds(256, 7168, true);
  // Same bytes on the wire: the exchange itself takes the same time whatever the codec costs.
  EXPECT_NEAR(real.time_s, free.time_s, 1e-3 * free.time_s);
  EXPECT_NEAR(slow.time_s, free.time_s, 1e-3 * free.time_s);
  EXPECT_EQ(free.codec_s, 0.0);
  // fp8-e4m3-b128 feeds the expert GEMM as it is: each rank pays one encode of its own batch, no decode.
  EXPECT_NEAR(real.codec_s, encode_once, 1e-3 * encode_once);
  // The stand-in is not GEMM-native, so it also pays a decode of every received row.
  EXPECT_GT(slow.codec_s, 100 * encode_once * 1.5);
}

TEST(SimCodecCompute, Bf16IsFree) {
  EXPECT_EQ(create_codec("bf16")->gpu_seconds(4096, 7168, true), 0.0);
  EXPECT_GT(create_codec("topk:ratio=0.25+fp8-e4m3-b128+zstd")->gpu_seconds(4096, 7168, true),
            create_codec("fp8-e4m3-b128")->gpu_seconds(4096, 7168, true));
}

}  // namespace
}  // namespace eplab
