// The hand-written AVX2 kernels against their portable twins (the code the wire formats were defined with):
// the same bytes on encode and the same bits on decode, over random data with NaN, Inf, zero, subnormal,
// one-magnitude and huge-range blocks and hidden sizes that are not a multiple of any block.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "policies/codecs/codec.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

std::vector<float> edge_case_data(int tokens, int hidden, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 11);
  std::uniform_int_distribution<int> exponent(-140, 120);
  std::vector<float> x(static_cast<size_t>(tokens) * hidden);
  // Runs of 32 elements (an MX block) share one kind, so whole blocks turn special as well as single elements.
  for (size_t b0 = 0; b0 < x.size(); b0 += 32) {
    int kind = pick(rng);
    float scale = std::ldexp(1.0f, exponent(rng));
    for (size_t i = b0; i < std::min(x.size(), b0 + 32); ++i) {
      float v = normal(rng) * scale;
      switch (kind) {
        case 0:
          v = 0.0f;
          break;  // all-zero block
        case 1:
          v = (i % 7 == 3) ? std::numeric_limits<float>::quiet_NaN() : v;
          break;  // NaN inside
        case 2:
          v = (i % 11 == 5) ? -std::numeric_limits<float>::infinity() : v;
          break;  // Inf inside
        case 3:
          v = normal(rng) * 1e-39f;
          break;  // fp32 subnormals
        case 4:
          v = (i % 2 ? -1.0f : 1.0f) * 0.375f;
          break;  // one magnitude
        case 5:
          v = (i % 5 == 0) ? 0.0f : (i % 5 == 1 ? -0.0f : v);
          break;  // zeros mixed in
        case 6:
          v = normal(rng) * std::ldexp(1.0f, static_cast<int>(i % 60) - 30);
          break;  // wide range
        case 7:
          v = (i % 3 == 0) ? std::numeric_limits<float>::max() : v;
          break;  // huge values
        case 8:
          v = normal(rng) * 1e-44f;
          break;  // tiniest subnormals
        default:
          break;
      }
      x[i] = v;
    }
  }
  return x;
}

class SimdKernels : public ::testing::TestWithParam<std::string> {
 protected:
  void TearDown() override { force_portable_kernels(false); }
};

TEST_P(SimdKernels, SameBytesAndValuesAsPortable) {
  if (!avx2_kernels_enabled()) GTEST_SKIP() << "no AVX2 kernels on this CPU or build";
  for (int hidden : {1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 100, 127, 128, 129, 255, 256, 1000, 7168, 7175}) {
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      const int tokens = 3;
      std::vector<float> x = edge_case_data(tokens, hidden, seed * 1000 + static_cast<uint64_t>(hidden));
      std::vector<uint8_t> fast, portable;
      std::vector<float> y_fast(x.size()), y_portable(x.size());
      force_portable_kernels(true);
      auto c = create_codec(GetParam());
      c->encode(x.data(), tokens, hidden, portable);
      c->decode(portable.data(), portable.size(), tokens, hidden, y_portable.data());
      force_portable_kernels(false);
      c = create_codec(GetParam());
      c->encode(x.data(), tokens, hidden, fast);
      c->decode(portable.data(), portable.size(), tokens, hidden, y_fast.data());
      ASSERT_EQ(fast.size(), portable.size());
      for (size_t i = 0; i < fast.size(); ++i) {
        ASSERT_EQ(fast[i], portable[i]) << GetParam() << " hidden " << hidden << " seed " << seed << " byte " << i;
      }
      ASSERT_EQ(std::memcmp(y_fast.data(), y_portable.data(), y_fast.size() * sizeof(float)), 0)
          << GetParam() << " hidden " << hidden << " seed " << seed << ": decoded values differ";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(FixedRate, SimdKernels,
                         ::testing::Values("fp8-e4m3-b128", "fp8-e4m3-b128-ue8m0", "fp8-e5m2-b128", "mxfp8", "mxfp6",
                                           "mxfp4", "logfmt10"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name) ch = (ch == '-') ? '_' : ch;
                           return name;
                         });

}  // namespace
}  // namespace eplab::codecs
