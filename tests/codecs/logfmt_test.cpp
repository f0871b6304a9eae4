// logfmt10 specifics, on both the AVX2 and the portable path: hand-derived codes for powers of two, signed
// zeros and values below the clipped range decode finite (code 0x200 is reserved for NaN/Inf), every element's
// error stays within the declared bound at any magnitude, and the AVX2 decoder's fast path (blocks whose levels
// stay in [2^-126, 2^127)) matches the portable decoder bit for bit on both sides of its limits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

constexpr int kHidden = 1024;

struct Paths : ::testing::TestWithParam<bool> {
  void SetUp() override { force_portable_kernels(GetParam()); }
  void TearDown() override { force_portable_kernels(false); }
};

std::vector<float> round_trip(const std::vector<float>& x, int tokens, int hidden,
                              std::vector<uint8_t>* wire = nullptr) {
  auto c = create_codec("logfmt10");
  std::vector<uint8_t> buf;
  c->encode(x.data(), tokens, hidden, buf);
  std::vector<float> y(x.size());
  c->decode(buf.data(), buf.size(), tokens, hidden, y.data());
  if (wire) *wire = buf;
  return y;
}

TEST_P(Paths, SignedZerosAndTinyValuesStayFinite) {
  const int hidden = 128;
  std::vector<float> x(hidden);
  for (int i = 0; i < hidden; ++i) x[i] = (i % 2 ? -1.0f : 1.0f) * (1.0f + static_cast<float>(i) / 64.0f);
  x[3] = -0.0f;
  x[4] = 0.0f;
  x[5] = -1e-12f;  // below amax * 2^-32
  x[6] = 1e-12f;
  x[7] = std::numeric_limits<float>::quiet_NaN();
  x[8] = -std::numeric_limits<float>::infinity();
  auto y = round_trip(x, 1, hidden);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_EQ(y[4], 0.0f);
  const float amax = 1.0f + 127.0f / 64.0f;
  for (int i : {5, 6}) {
    EXPECT_TRUE(std::isfinite(y[i])) << i;
    EXPECT_LE(std::fabs(y[i] - x[i]), amax * 0x1p-32f * 1.001f) << i;
  }
  EXPECT_TRUE(std::isnan(y[7]));
  EXPECT_TRUE(std::isnan(y[8]));
  for (int i = 9; i < hidden; ++i) EXPECT_NEAR(y[i], x[i], 0.022 * std::fabs(x[i])) << i;
}

TEST_P(Paths, AllNegativeZeroBlockDecodesZero) {
  std::vector<float> x(300, -0.0f);
  auto y = round_trip(x, 1, 300);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

uint32_t code_at(const std::vector<uint8_t>& wire, int i) {
  int bit = 10 * i;
  return ((wire[bit / 8] | (wire[bit / 8 + 1] << 8)) >> (bit % 8)) & 0x3ffu;
}

// x = ±2^(n-32), n = 0..32, with a value below amax * 2^-32 so that log_amin is clipped to log_amax - 32:
// step = 32/510, r_mid = 1/2 + u/8 - u^3/192 = 0.5054361 (u = step ln 2), so the level is
// floor((n * 510/32) + 2 - r_mid) = 16 n + floor(1.4945639 - n/16): n = 8 gives 128 (0.0054 from the next
// level), n = 24 gives 383, n = 32 gives 511, n = 0 gives 1 (amin itself).
TEST_P(Paths, PowersOfTwoHandDerivedCodes) {
  const int hidden = 128;
  std::vector<float> x(hidden, 0.0f);
  for (int n = 0; n <= 32; ++n) x[n] = std::ldexp(n % 2 ? -1.0f : 1.0f, n - 32);
  x[33] = 0x1p-40f;  // below the clip: level 1
  x[34] = -0.0f;
  x[35] = std::numeric_limits<float>::infinity();
  std::vector<uint8_t> wire;
  auto y = round_trip(x, 1, hidden, &wire);
  ASSERT_EQ(wire.size(), 160u + 8u);
  float range[2];
  std::memcpy(range, wire.data() + 160, 8);
  EXPECT_NEAR(range[1], 0.0f, 1e-6f);     // log2 amax, approximate log2 of 1
  EXPECT_EQ(range[0], range[1] - 32.0f);  // clipped
  for (int n = 0; n <= 32; ++n) {
    uint32_t level = static_cast<uint32_t>(16 * n + static_cast<int>(std::floor(1.4945639 - n / 16.0)));
    uint32_t want = level | (n % 2 ? 0x200u : 0u);
    EXPECT_EQ(code_at(wire, n), want) << "n " << n;
    double level_value = std::exp2(static_cast<double>(range[0]) + (level - 1) * (32.0 / 510.0));
    EXPECT_NEAR(std::fabs(y[n]), level_value, level_value * 2e-6) << "n " << n;
    EXPECT_LE(std::fabs(y[n] - x[n]), 0.0218 * std::fabs(x[n])) << "n " << n;
  }
  EXPECT_EQ(code_at(wire, 33), 1u);
  EXPECT_EQ(code_at(wire, 34), 0u);
  EXPECT_EQ(code_at(wire, 35), 0x200u);
  for (int i = 36; i < hidden; ++i) EXPECT_EQ(code_at(wire, i), 0u);
}

// Per element, not only per token: log-uniform magnitudes over ranges of 8, 32 (exactly the clip) and 40
// binades, at magnitudes from 2^-90 to 2^124, random signs. Elements below the clip (< amax * 2^-32) are held
// to amax * 2^-32 instead.
TEST_P(Paths, EveryElementWithinTheBoundAtAnyMagnitude) {
  auto c = create_codec("logfmt10");
  const double bound = c->error_bound_for(kHidden);
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int top : {-90, -50, -10, 0, 1, 10, 50, 90, 124}) {
    const int tokens = 60;
    std::vector<float> x(static_cast<size_t>(tokens) * kHidden);
    for (int t = 0; t < tokens; ++t) {
      double span = t % 3 == 0 ? 32.0 : (t % 3 == 1 ? 40.0 : 8.0);
      for (int i = 0; i < kHidden; ++i) {
        x[t * kHidden + i] = static_cast<float>((u(rng) < 0.5 ? -1 : 1) * std::exp2(top - span * u(rng)));
      }
    }
    std::vector<uint8_t> buf;
    c->encode(x.data(), tokens, kHidden, buf);
    std::vector<float> y(x.size());
    c->decode(buf.data(), buf.size(), tokens, kHidden, y.data());
    for (int t = 0; t < tokens; ++t) {
      for (int b0 = 0; b0 < kHidden; b0 += 128) {
        float amax = 0;
        for (int i = b0; i < b0 + 128; ++i) amax = std::max(amax, std::fabs(x[t * kHidden + i]));
        for (int i = b0; i < b0 + 128; ++i) {
          double xi = x[t * kHidden + i], err = std::fabs(y[t * kHidden + i] - xi);
          if (std::fabs(xi) >= amax * 0x1p-32) {
            ASSERT_LE(err, bound * std::fabs(xi)) << "top 2^" << top << " token " << t << " element " << i;
          } else {
            ASSERT_LE(err, amax * 0x1p-32) << "top 2^" << top << " token " << t << " element " << i;
          }
        }
      }
    }
  }
}

// Hand-made block ranges around the AVX2 fast decode path's limits (log_amin >= -126 and the top level below
// 2^127) with every code: both decoders give the same bits. Random payload bytes, so corrupt-looking codes too.
TEST(Logfmt10, DecoderFastPathLimitsMatchPortable) {
  if (!avx2_kernels_enabled()) GTEST_SKIP() << "no AVX2 kernels on this CPU or build";
  std::vector<std::pair<float, float>> ranges = {{-126.0f, -120.0f}, {std::nextafter(-126.0f, -200.0f), -120.0f},
                                                 {-126.0f, -94.0f},  {-140.0f, -126.0f},
                                                 {100.0f, 127.0f},   {100.0f, std::nextafter(127.0f, 0.0f)},
                                                 {96.0f, 126.99f},   {120.0f, 128.0f},
                                                 {-3.0f, -3.0f},     {0.0f, 0.0f},
                                                 {-32.0f, 0.0f},     {-149.0f, -140.0f}};
  const int hidden = 1024;  // 1024 codes: every value 0..1023 once
  auto c = create_codec("logfmt10");
  std::mt19937_64 rng(5);
  for (auto [lo, hi] : ranges) {
    std::vector<uint8_t> wire(hidden * 10 / 8 + hidden / 128 * 8);
    for (int i = 0; i < hidden; ++i) {
      uint32_t code = (static_cast<uint32_t>(i) * 389u) & 0x3ffu;  // a permutation of 0..1023
      int bit = 10 * i;
      uint32_t w = code << (bit % 8);
      wire[bit / 8] |= static_cast<uint8_t>(w);
      wire[bit / 8 + 1] |= static_cast<uint8_t>(w >> 8);
    }
    for (int blk = 0; blk < hidden / 128; ++blk) {
      float range[2] = {lo, hi};
      std::memcpy(wire.data() + hidden * 10 / 8 + blk * 8, range, 8);
    }
    std::vector<float> fast(hidden), portable(hidden);
    c->decode(wire.data(), wire.size(), 1, hidden, fast.data());
    force_portable_kernels(true);
    c->decode(wire.data(), wire.size(), 1, hidden, portable.data());
    force_portable_kernels(false);
    ASSERT_EQ(std::memcmp(fast.data(), portable.data(), hidden * sizeof(float)), 0)
        << "range [" << lo << ", " << hi << "]";
    // Random payload bytes under the same range.
    for (int i = 0; i < hidden * 10 / 8; ++i) wire[i] = static_cast<uint8_t>(rng());
    c->decode(wire.data(), wire.size(), 1, hidden, fast.data());
    force_portable_kernels(true);
    c->decode(wire.data(), wire.size(), 1, hidden, portable.data());
    force_portable_kernels(false);
    ASSERT_EQ(std::memcmp(fast.data(), portable.data(), hidden * sizeof(float)), 0)
        << "random, range [" << lo << ", " << hi << "]";
  }
}

// Block parameters at any magnitude inside the range check (log_amin <= log_amax <= log_amin + 32) decode
// without undefined behaviour on either path (the sanitizer build checks fast_exp2's conversion): at the largest
// log_amax accepted, 128, to +-Inf; far below fp32's exponents, to the smallest subnormal. A log_amax above 128,
// which no encoder writes (a corrupt message), is refused.
TEST_P(Paths, ExtremeBlockParametersDecodeToInfinityOrTheSmallestSubnormalOrAreRefused) {
  const int hidden = 128;
  std::vector<float> x(hidden);
  for (int i = 0; i < hidden; ++i) x[i] = (i % 2 ? -1.0f : 1.0f) * (1.0f + static_cast<float>(i));
  std::vector<uint8_t> wire;
  round_trip(x, 1, hidden, &wire);
  ASSERT_EQ(wire.size(), hidden * 10 / 8 + 8u);
  auto c = create_codec("logfmt10");
  std::vector<float> y(hidden);
  const auto set_levels = [&](float level) {
    std::memcpy(wire.data() + hidden * 10 / 8, &level, 4);      // log_amin
    std::memcpy(wire.data() + hidden * 10 / 8 + 4, &level, 4);  // log_amax
  };
  for (float level : {128.0f, -4.4e24f}) {
    set_levels(level);
    c->decode(wire.data(), wire.size(), 1, hidden, y.data());
    for (int i = 0; i < hidden; ++i) {
      if (level > 0)
        EXPECT_TRUE(std::isinf(y[i])) << i << ": " << y[i];
      else
        EXPECT_EQ(std::fabs(y[i]), 0x1p-149f) << i;
      EXPECT_EQ(std::signbit(y[i]), std::signbit(x[i])) << i;
    }
  }
  for (float level : {std::nextafter(128.0f, 200.0f), 4.4e24f}) {
    set_levels(level);
    EXPECT_THROW(c->decode(wire.data(), wire.size(), 1, hidden, y.data()), CodecError) << level;
  }
  // fp32's largest values encode within the bound, so no message an encoder writes is refused.
  std::fill(x.begin(), x.end(), std::numeric_limits<float>::max());
  x[1] = -x[1];
  y = round_trip(x, 1, hidden);
  EXPECT_GT(y[0], 3e38f);
  EXPECT_LT(y[1], -3e38f);
}

INSTANTIATE_TEST_SUITE_P(Logfmt10, Paths, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "portable" : "default"; });

}  // namespace
}  // namespace eplab::codecs
