// Conformance suite: every registered codec and a set of chains must round-trip within their declared
// error bound on all three activation kinds, report sizes truthfully, handle empty input, all-zero and
// ragged blocks, keep non-finite values non-finite, and reject truncated or corrupt buffers with CodecError.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "policies/codecs/codec.hpp"
#include "policies/codecs/codec_eval.hpp"

namespace eplab {
namespace {

std::vector<std::string> specs_under_test() {
  std::vector<std::string> specs = codec_names();
  for (const char* chain :
       {"topk:ratio=0.25+fp8-e4m3-b128", "topk:ratio=0.1+int8-token+zstd", "threshold:tau=0.5+bf16+lz4",
        "delta+fp8-e4m3-b128", "delta:period=4+topk:ratio=0.5+bf16+zstd:1", "bf16+zstd", "mxfp4+lz4", "zstd:9+lz4",
        "topk:ratio=0.25,ef=1+fp8-e4m3-b128", "threshold:tau=0.3,ef=1+mxfp8", "delta+logfmt10"}) {
    specs.push_back(chain);
  }
  return specs;
}

class CodecConformance : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Codec> fresh() { return create_codec(GetParam()); }
};

std::vector<float> round_trip(Codec& c, const std::vector<float>& x, int tokens, int hidden, size_t* bytes = nullptr) {
  std::vector<uint8_t> buf;
  c.encode(x.data(), tokens, hidden, buf);
  if (bytes) *bytes = buf.size();
  EXPECT_LE(buf.size(), c.max_encoded_size(tokens, hidden)) << c.name();
  if (c.fixed_rate()) EXPECT_EQ(buf.size(), c.encoded_size(tokens, hidden)) << c.name();
  std::vector<float> y(x.size(), -7.0f);
  c.decode(buf.data(), buf.size(), tokens, hidden, y.data());
  return y;
}

TEST_P(CodecConformance, RoundTripWithinDeclaredBound) {
  for (auto kind : {ActivationKind::kGaussian, ActivationKind::kStudentT, ActivationKind::kLlm}) {
    for (int hidden : {7168, 200, 1}) {
      auto c = fresh();
      int tokens = hidden == 1 ? 5 : 12;
      auto x = generate_activations(kind, tokens, hidden, 42);
      auto y = round_trip(*c, x, tokens, hidden);
      ErrorMetrics m = compute_error_metrics(x.data(), y.data(), x.size());
      double bound = c->error_bound_for(hidden);
      SCOPED_TRACE(activation_kind_name(kind) + " hidden " + std::to_string(hidden));
      EXPECT_LE(m.rel_l2, bound);
      EXPECT_LE(bound, std::max(c->error_bound(), bound));
      if (c->lossless()) {
        EXPECT_EQ(bound, 0.0);
        EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float)));
      }
    }
  }
}

TEST_P(CodecConformance, ShapeBoundsAndNameRecreateTheCodec) {
  auto c = fresh();
  EXPECT_EQ(create_codec(c->name())->name(), c->name());
  EXPECT_GE(c->error_bound(), 0.0);
  EXPECT_GE(c->error_bound(), c->error_bound_for(7168));
  EXPECT_GE(c->max_encoded_size(16, 7168), c->encoded_size(16, 7168));
  if (c->fixed_rate()) {
    EXPECT_EQ(c->encoded_size(0, 7168), 0u);
    EXPECT_EQ(c->encoded_size(4, 300), 4 * c->encoded_size(1, 300));
  }
}

TEST_P(CodecConformance, DeterministicBytes) {
  auto x = generate_activations(ActivationKind::kLlm, 6, 1000, 3);
  std::vector<uint8_t> a, b;
  fresh()->encode(x.data(), 6, 1000, a);
  fresh()->encode(x.data(), 6, 1000, b);
  EXPECT_EQ(a, b);
}

TEST_P(CodecConformance, EmptyInput) {
  auto c = fresh();
  for (auto [tokens, hidden] : {std::pair{0, 7168}, std::pair{3, 0}, std::pair{0, 0}}) {
    std::vector<uint8_t> buf;
    c->encode(nullptr, tokens, hidden, buf);
    EXPECT_LE(buf.size(), c->max_encoded_size(tokens, hidden));
    float sentinel = 1.0f;
    c->decode(buf.data(), buf.size(), tokens, hidden, &sentinel);
    EXPECT_EQ(sentinel, 1.0f);  // nothing written
  }
}

TEST_P(CodecConformance, AllZeroAndRaggedBlocksDecodeExactly) {
  auto c = fresh();
  std::vector<float> zeros(3 * 161, 0.0f);
  auto y = round_trip(*c, zeros, 3, 161);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST_P(CodecConformance, NonFiniteInputStaysNonFinite) {
  auto c = fresh();
  auto x = generate_activations(ActivationKind::kGaussian, 2, 300, 9);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[300 + 77] = std::numeric_limits<float>::infinity();
  x[300 + 250] = -std::numeric_limits<float>::infinity();
  auto y = round_trip(*c, x, 2, 300);
  EXPECT_FALSE(std::isfinite(y[5]));
  EXPECT_FALSE(std::isfinite(y[300 + 77]));
  EXPECT_FALSE(std::isfinite(y[300 + 250]));
  // Elements of blocks without specials stay finite.
  EXPECT_TRUE(std::isfinite(y[200]));
}

TEST_P(CodecConformance, TruncatedBufferThrowsCodecError) {
  auto x = generate_activations(ActivationKind::kStudentT, 4, 256, 5);
  std::vector<uint8_t> buf;
  fresh()->encode(x.data(), 4, 256, buf);
  std::vector<float> y(x.size());
  for (size_t cut : {size_t{1}, size_t{7}, buf.size() / 2, buf.size()}) {
    auto c = fresh();
    std::vector<uint8_t> part(buf.begin(), buf.end() - static_cast<long>(cut));
    EXPECT_THROW(c->decode(part.data(), part.size(), 4, 256, y.data()), CodecError) << "cut " << cut;
  }
  // Extra trailing bytes are as wrong as missing ones.
  buf.push_back(0);
  EXPECT_THROW(fresh()->decode(buf.data(), buf.size(), 4, 256, y.data()), CodecError);
}

TEST_P(CodecConformance, CorruptBufferNeverCrashesNorPoisonsTheCodec) {
  auto x = generate_activations(ActivationKind::kGaussian, 4, 256, 5);
  std::vector<uint8_t> good;
  fresh()->encode(x.data(), 4, 256, good);
  std::vector<float> want(x.size()), y(x.size());
  fresh()->decode(good.data(), good.size(), 4, 256, want.data());
  // Garbage either decodes to some values or raises CodecError; afterwards the same codec object still
  // decodes a good message exactly as a fresh one does.
  auto c = fresh();
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<uint8_t> bad = good;
    for (int k = 0; k < 1 + trial % 8; ++k) bad[rng() % bad.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
    try {
      c->decode(bad.data(), bad.size(), 4, 256, y.data());
    } catch (const CodecError&) {
    }
  }
  c->decode(good.data(), good.size(), 4, 256, y.data());
  EXPECT_EQ(0, std::memcmp(want.data(), y.data(), y.size() * sizeof(float)));
}

std::string test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string s;
  for (char ch : info.param) s += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(AllCodecs, CodecConformance, ::testing::ValuesIn(specs_under_test()), test_name);

}  // namespace
}  // namespace eplab
