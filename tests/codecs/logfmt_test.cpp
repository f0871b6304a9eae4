// logfmt10 specifics: signed zeros and values below the clipped range decode finite (code 0x200 is reserved
// for NaN/Inf), on both the AVX2 and the portable path.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "policies/codecs/codec.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

struct Paths : ::testing::TestWithParam<bool> {
  void SetUp() override { force_portable_kernels(GetParam()); }
  void TearDown() override { force_portable_kernels(false); }
};

std::vector<float> round_trip(const std::vector<float>& x, int tokens, int hidden, std::vector<uint8_t>* wire = nullptr) {
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

INSTANTIATE_TEST_SUITE_P(Logfmt10, Paths, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "portable" : "default"; });

}  // namespace
}  // namespace eplab::codecs
