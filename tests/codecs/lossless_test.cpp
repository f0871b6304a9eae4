// The zstd stage's byte planes: after fp32 and bf16 it splits the elements' bytes into planes, codes the ones that
// shrink and stores the rest raw; every layout decodes to the same bytes, and a message whose header does not
// match the chain is refused.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/codecs/codec_eval.hpp"
#include "policies/codecs/float_formats.hpp"

namespace eplab {
namespace {

constexpr int kTokens = 64, kHidden = 7168;  // planes of 458752 bytes: above the size judged on a sample

std::vector<uint8_t> encode(const std::string& spec, const std::vector<float>& x) {
  std::vector<uint8_t> buf;
  create_codec(spec)->encode(x.data(), kTokens, kHidden, buf);
  return buf;
}

std::vector<float> decode(const std::string& spec, const std::vector<uint8_t>& buf) {
  std::vector<float> y(static_cast<size_t>(kTokens) * kHidden);
  create_codec(spec)->decode(buf.data(), buf.size(), kTokens, kHidden, y.data());
  return y;
}

TEST(ZstdPlanes, LlmActivationsRoundTripExactlyAndShrink) {
  auto x = generate_activations(ActivationKind::kLlm, kTokens, kHidden, 7);
  const size_t raw = x.size() * sizeof(float);
  for (const char* spec : {"zstd", "zstd:1", "zstd:-5"}) {
    auto buf = encode(spec, x);
    auto y = decode(spec, buf);
    EXPECT_EQ(0, std::memcmp(x.data(), y.data(), raw)) << spec;
    // The sign and exponent plane shrinks; the three mantissa planes are stored raw.
    EXPECT_LT(buf.size(), raw * 7 / 8) << spec;
    EXPECT_GT(buf.size(), raw * 3 / 4) << spec;
  }
  // bf16 + zstd decodes to what bf16 alone does.
  auto plain = decode("bf16", encode("bf16", x));
  auto buf = encode("bf16+zstd", x);
  EXPECT_LT(buf.size(), x.size() * 2 * 7 / 8);
  auto y = decode("bf16+zstd", buf);
  EXPECT_EQ(0, std::memcmp(plain.data(), y.data(), raw));
}

TEST(ZstdPlanes, PlanesThatShrinkAreCodedTheOthersKeptRaw) {
  // bf16 values held in fp32: the two low bytes of every element are zero, so those planes are coded too.
  auto x = generate_activations(ActivationKind::kLlm, kTokens, kHidden, 11);
  for (float& v : x) v = codecs::bf16_to_float(codecs::float_to_bf16(v));
  auto buf = encode("zstd", x);
  EXPECT_LT(buf.size(), x.size() * 2);  // below bf16's own size: top plane coded, third raw, two low ones ~0
  auto y = decode("zstd", buf);
  EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * sizeof(float)));

  // Uniformly random bits: no plane shrinks, so each is stored as it is (a few header bytes more than raw).
  std::mt19937 rng(3);
  std::vector<float> noise(x.size());
  for (float& v : noise) {
    uint32_t u = rng();
    std::memcpy(&v, &u, 4);
  }
  buf = encode("zstd", noise);
  EXPECT_EQ(buf.size(), noise.size() * sizeof(float) + 9 + 4 * 9);
  y = decode("zstd", buf);
  EXPECT_EQ(0, std::memcmp(noise.data(), y.data(), noise.size() * sizeof(float)));
}

TEST(ZstdPlanes, AHeaderThatDoesNotMatchTheChainIsRefused) {
  auto x = generate_activations(ActivationKind::kLlm, kTokens, kHidden, 5);
  auto buf = encode("zstd", x);
  ASSERT_EQ(buf[0], 4);  // fp32's elements: four planes
  auto bad = buf;
  bad[0] = 2;
  EXPECT_THROW(decode("zstd", bad), CodecError);
  bad = buf;
  bad[9] = 7;  // the top plane's mode
  EXPECT_THROW(decode("zstd", bad), CodecError);
  bad = buf;
  bad.push_back(0);  // a byte after the last plane
  EXPECT_THROW(decode("zstd", bad), CodecError);
  // A bf16 chain's message is not an fp32 chain's.
  EXPECT_THROW(decode("zstd", encode("bf16+zstd", x)), CodecError);
}

}  // namespace
}  // namespace eplab
