// The zstd stage's planes: after fp32 and bf16 it splits the elements into exponent bytes and sign-and-mantissa
// planes, codes the exponents (two to a byte where they mostly lie in a window of 15 values, the rest as escapes)
// and the mantissa planes that shrink, and stores the rest raw; every layout decodes to the same bytes on both
// kernel paths, and a message whose header does not match the chain is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/codecs/codec_eval.hpp"
#include "policies/codecs/float_formats.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {
namespace {

constexpr int kTokens = 64, kHidden = 7168;  // planes of 458752 bytes: above the size judged on a sample

std::vector<uint8_t> encode(const std::string& spec, const std::vector<float>& x, int tokens = kTokens) {
  std::vector<uint8_t> buf;
  create_codec(spec)->encode(x.data(), tokens, static_cast<int>(x.size() / tokens), buf);
  return buf;
}

std::vector<float> decode(const std::string& spec, const std::vector<uint8_t>& buf, int tokens = kTokens,
                          int hidden = kHidden) {
  std::vector<float> y(static_cast<size_t>(tokens) * hidden);
  create_codec(spec)->decode(buf.data(), buf.size(), tokens, hidden, y.data());
  return y;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Offset of the exponent plane's mode byte in an fp32 message whose three mantissa planes are raw.
size_t exponent_plane_at(size_t count) { return 9 + 3 * (9 + count); }

TEST(ZstdPlanes, LlmActivationsRoundTripExactlyAndShrink) {
  auto x = generate_activations(ActivationKind::kLlm, kTokens, kHidden, 7);
  const size_t raw = x.size() * sizeof(float);
  for (const char* spec : {"zstd", "zstd:1", "zstd:-5"}) {
    auto buf = encode(spec, x);
    auto y = decode(spec, buf);
    EXPECT_EQ(0, std::memcmp(x.data(), y.data(), raw)) << spec;
    // The exponents shrink, as nibble pairs; the three mantissa planes are stored raw.
    EXPECT_EQ(buf[exponent_plane_at(x.size())], 2) << spec;
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
  EXPECT_LT(buf.size(), x.size() * 2);  // below bf16's own size: exponents coded, top mantissa raw, two low ~0
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
  bad[9] = 7;  // the first mantissa plane's mode
  EXPECT_THROW(decode("zstd", bad), CodecError);
  bad = buf;
  bad[9] = 2;  // nibble pairs are for exponents only
  EXPECT_THROW(decode("zstd", bad), CodecError);
  bad = buf;
  bad.push_back(0);  // a byte after the last plane
  EXPECT_THROW(decode("zstd", bad), CodecError);
  // A bf16 chain's message is not an fp32 chain's.
  EXPECT_THROW(decode("zstd", encode("bf16+zstd", x)), CodecError);
}

// Exponents outside the window, at densities around the thresholds (1 in 32 on the sample, 1 in 16 on the whole
// message), at odd element counts, and all of it on the AVX2 and the portable kernels: the messages are the same
// bytes and decode exactly on either.
class ZstdExponents : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { codecs::force_portable_kernels(GetParam()); }
  void TearDown() override { codecs::force_portable_kernels(false); }
};

TEST_P(ZstdExponents, EscapesAtEveryDensityRoundTripOnBothKernelPaths) {
  std::mt19937 rng(17);
  for (int tokens : {kTokens, 3}) {
    const int hidden = tokens == 3 ? 1001 : kHidden;  // 3003 elements: odd, and not a multiple of 32
    auto x = generate_activations(ActivationKind::kLlm, tokens, hidden, 23);
    for (double density : {0.0, 0.001, 0.02, 0.05, 0.08, 0.5}) {
      auto y = x;
      std::bernoulli_distribution outlier(density);
      for (float& v : y) {
        if (outlier(rng)) v = rng() % 2 ? 0.0f : std::ldexp(1.0f, 60 + static_cast<int>(rng() % 40));
      }
      for (const char* spec : {"zstd", "bf16+zstd"}) {
        auto buf = encode(spec, y, tokens);
        codecs::force_portable_kernels(!GetParam());
        EXPECT_EQ(buf, encode(spec, y, tokens)) << spec << " density " << density;
        auto other = decode(spec, buf, tokens, hidden);
        codecs::force_portable_kernels(GetParam());
        auto back = decode(spec, buf, tokens, hidden);
        EXPECT_TRUE(same_bits(back, other)) << spec << " density " << density;
        if (std::string(spec) == "zstd") {
          EXPECT_TRUE(same_bits(back, y)) << "density " << density;
          // Pairs while the outliers stay rare enough; bytes (or raw) once they do not.
          const uint8_t mode = buf[exponent_plane_at(y.size())];
          if (density <= 0.02) EXPECT_EQ(mode, 2) << "density " << density;
          if (density >= 0.08) EXPECT_NE(mode, 2) << "density " << density;
        } else {
          EXPECT_TRUE(same_bits(back, decode("bf16", encode("bf16", y, tokens), tokens, hidden)));
        }
      }
    }
  }
}

TEST_P(ZstdExponents, AWindowThatWrapsPast255AndSpecialValuesRoundTrip) {
  // Subnormals (exponent 0) beside NaNs (255), both with random sign and mantissa bits, and a few values of
  // exponent 1: the best window wraps around past 255.
  std::mt19937 rng(31);
  std::vector<float> x(static_cast<size_t>(kTokens) * kHidden);
  for (size_t i = 0; i < x.size(); ++i) {
    const uint32_t exponent = i % 2 ? 0 : i % 10 ? 255 : 1;
    const uint32_t u = (rng() & 0x807fffffu) | exponent << 23 | (exponent == 255 ? 1 : 0);  // NaN, not inf
    std::memcpy(&x[i], &u, 4);
  }
  auto buf = encode("zstd", x);
  EXPECT_EQ(buf[exponent_plane_at(x.size())], 2);
  EXPECT_TRUE(same_bits(decode("zstd", buf), x));
}

TEST(ZstdExponentPairs, CorruptPairsOrEscapesAreRefused) {
  auto x = generate_activations(ActivationKind::kLlm, kTokens, kHidden, 29);
  x[100] = 0.0f;  // one escape
  auto buf = encode("zstd", x);
  const size_t at = exponent_plane_at(x.size());
  ASSERT_EQ(buf[at], 2);
  uint64_t escapes = 0;
  std::memcpy(&escapes, &buf[at + 1 + 8 + 1], 8);
  EXPECT_GE(escapes, 1u);
  EXPECT_TRUE(same_bits(decode("zstd", buf), x));
  for (uint64_t wrong : {escapes - 1, escapes + 1}) {  // an escape byte read as the frame's, or the other way
    auto bad = buf;
    std::memcpy(&bad[at + 1 + 8 + 1], &wrong, 8);
    EXPECT_THROW(decode("zstd", bad), CodecError) << wrong;
  }

  // Three fp32 elements from pairs by hand: exponents 127, 128, 129 around lo 126, the first negative. An odd
  // count's spare nibble must be 0.
  const uint8_t signs[3] = {0x80, 0, 0}, zeros[3] = {0, 0, 0};
  const uint8_t* mant[3] = {signs, zeros, zeros};
  float y[3];
  auto* out = reinterpret_cast<uint8_t*>(y);
  const uint8_t spare_set[2] = {0x21, 0x13};
  EXPECT_EQ(codecs::join_float_planes_paired(spare_set, 126, nullptr, 0, mant, 3, 4, out), SIZE_MAX);
  const uint8_t pairs[2] = {0x21, 0x03};
  EXPECT_EQ(codecs::join_float_planes_paired(pairs, 126, nullptr, 0, mant, 3, 4, out), 0u);
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[1], 2.0f);
  EXPECT_EQ(y[2], 4.0f);
  // A 15 takes the next escape; with none left the join refuses.
  const uint8_t escaped[2] = {0x2f, 0x03};
  const uint8_t escape = 130;
  EXPECT_EQ(codecs::join_float_planes_paired(escaped, 126, &escape, 1, mant, 3, 4, out), 1u);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(codecs::join_float_planes_paired(escaped, 126, nullptr, 0, mant, 3, 4, out), SIZE_MAX);
}

INSTANTIATE_TEST_SUITE_P(Kernels, ZstdExponents, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Portable" : "Avx2"; });

}  // namespace
}  // namespace eplab
