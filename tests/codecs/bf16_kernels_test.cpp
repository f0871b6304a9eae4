// The bf16 row kernels against the element-by-element definitions they replace (float_to_bf16, bf16_to_float,
// and accumulate's `acc += w * (x * s)`): the same bits over edge-case data (NaN, Inf, subnormals, ties, signed
// zeros), odd lengths and unaligned byte buffers, on the hand-written AVX2 path (where the CPU has AVX2) and on the
// portable one.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "policies/codecs/float_formats.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

std::vector<float> data(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) {
    switch (i % 13) {
      case 0:
        x[i] = std::numeric_limits<float>::quiet_NaN();
        break;
      case 1:
        x[i] = -std::numeric_limits<float>::infinity();
        break;
      case 2:
        x[i] = -0.0f;
        break;
      case 3:
        x[i] = 1e-40f * normal(rng);
        break;  // fp32 subnormal
      case 4:
        x[i] = std::bit_cast<float>(0x3f808000u);
        break;  // a tie, rounds to even
      case 5:
        x[i] = std::numeric_limits<float>::max();
        break;  // rounds to Inf
      default:
        x[i] = normal(rng) * std::ldexp(1.0f, static_cast<int>(i % 40) - 20);
        break;
    }
  }
  return x;
}

uint16_t load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

bool same_bits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

// Parameter: whether the portable kernels are forced (false runs the AVX2 ones where the CPU has them).
class Bf16Kernels : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { force_portable_kernels(GetParam()); }
  void TearDown() override { force_portable_kernels(false); }
};

TEST_P(Bf16Kernels, EncodeAndDecodeMatchTheElementConversions) {
  for (size_t n : {size_t{1}, size_t{7}, size_t{16}, size_t{33}, size_t{7168}, size_t{7175}}) {
    const std::vector<float> x = data(n, n);
    std::vector<uint8_t> buf(2 * n + 1);
    uint8_t* enc = buf.data() + 1;  // odd address: rows sit behind block metadata in a message
    bf16_encode_kernel(x.data(), n, enc);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(load16(enc + 2 * i), float_to_bf16(x[i])) << "n " << n << " i " << i;
    std::vector<float> y(n);
    bf16_decode_kernel(enc, n, y.data());
    for (size_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(y[i], bf16_to_float(load16(enc + 2 * i)))) << i;
  }
}

TEST_P(Bf16Kernels, DecodeAddAndAxpyMatchTheTwoPassArithmetic) {
  const size_t n = 7175;
  std::vector<float> x = data(n, 3), acc0 = data(n, 4);
  for (float& v : acc0)
    if (!std::isfinite(v)) v = 0.5f;  // a NaN accumulator would hide differences
  std::vector<uint8_t> buf(2 * n + 1);
  uint8_t* enc = buf.data() + 1;
  bf16_encode_kernel(x.data(), n, enc);
  std::vector<float> fused = acc0, want = acc0;
  bf16_decode_add_kernel(enc, n, fused.data());
  for (size_t i = 0; i < n; ++i) want[i] += bf16_to_float(load16(enc + 2 * i));
  for (size_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(fused[i], want[i])) << "decode_add " << i;
  // The first row of a sum written, not added to zeroed memory: the same bits, -0 turned to +0 as 0 + -0 is.
  std::vector<float> first(n, 123.0f);
  bf16_decode_first_kernel(enc, n, first.data());
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(same_bits(first[i], 0.0f + bf16_to_float(load16(enc + 2 * i)))) << "decode_first " << i;
    if (i % 13 == 2) ASSERT_EQ(std::bit_cast<uint32_t>(first[i]), 0u) << "-0 must come out as +0, element " << i;
  }
  for (float s : {1.0f, 1.3828125f}) {
    const float w = 0.318f;
    fused = acc0, want = acc0;
    bf16_axpy_kernel(enc, n, w, s, fused.data());
    std::vector<float> scratch(n);
    for (size_t i = 0; i < n; ++i)
      scratch[i] = s == 1.0f ? bf16_to_float(load16(enc + 2 * i)) : bf16_to_float(load16(enc + 2 * i)) * s;
    for (size_t i = 0; i < n; ++i) want[i] += w * scratch[i];
    for (size_t i = 0; i < n; ++i) ASSERT_TRUE(same_bits(fused[i], want[i])) << "axpy s " << s << " i " << i;
  }
}

TEST_P(Bf16Kernels, SumRowsMatchesAddingTheRowsOneAtATime) {
  // A row shorter than one 16-element step, exactly one, and DeepSeek-V3's hidden size plus a ragged end.
  for (size_t n : {size_t{5}, size_t{16}, size_t{7175}}) {
    // Rows at odd addresses and apart, as answers lie in their senders' buffers.
    constexpr size_t kRows = 9;
    std::vector<uint8_t> buf(kRows * (2 * n + 3));
    std::vector<const uint8_t*> rows;
    for (size_t r = 0; r < kRows; ++r) {
      uint8_t* at = buf.data() + r * (2 * n + 3) + 1;
      const std::vector<float> x = data(n, 10 + r);
      bf16_encode_kernel(x.data(), n, at);
      rows.push_back(at);
    }
    std::vector<float> acc0 = data(n, 5);
    for (float& v : acc0)
      if (!std::isfinite(v)) v = -0.25f;
    for (size_t count = 1; count <= kRows; ++count)
      for (bool first : {true, false}) {
        std::vector<float> want = acc0, got = acc0;
        if (first) bf16_decode_first_kernel(rows[0], n, want.data());
        for (size_t r = first ? 1 : 0; r < count; ++r) bf16_decode_add_kernel(rows[r], n, want.data());
        bf16_sum_rows_kernel(rows.data(), count, n, got.data(), first);
        for (size_t i = 0; i < n; ++i)
          ASSERT_TRUE(same_bits(got[i], want[i]))
              << "n " << n << ", " << count << " rows, first " << first << ", element " << i;
        if (!first) continue;
        // Summed and rounded in one: the bits of the sum, then encoded.
        std::vector<uint8_t> got16(2 * n + 1);
        std::vector<float> scratch(n, 7.0f);
        bf16_sum_rows_encode_kernel(rows.data(), count, n, scratch.data(), got16.data() + 1);
        for (size_t i = 0; i < n; ++i)
          ASSERT_EQ(load16(got16.data() + 1 + 2 * i), float_to_bf16(want[i]))
              << "n " << n << ", " << count << " rows summed and rounded, element " << i;
      }
    std::vector<uint8_t> zeros(2 * n, 0), none(2 * n, 0xff);
    std::vector<float> scratch(n);
    bf16_sum_rows_encode_kernel(rows.data(), 0, n, scratch.data(), none.data());
    EXPECT_EQ(zeros, none) << "no rows: zeros";
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, Bf16Kernels, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Portable" : "Avx2"; });

}  // namespace
}  // namespace eplab::codecs
