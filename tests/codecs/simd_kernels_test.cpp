// The hand-written AVX2 kernels against their portable twins (the code the wire formats were defined with):
// the same bytes on encode and the same bits on decode, over random data with NaN, Inf, zero, subnormal,
// one-magnitude and huge-range blocks and hidden sizes that are not a multiple of any block.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "policies/codecs/codec.hpp"
#include "policies/codecs/float_formats.hpp"
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

// The fp8-*-b128 decoder computes values from the code bits on the AVX2 path and looks them up in the table
// on the portable one. Every code under scales that give normal, subnormal, zero, overflowing, Inf and NaN
// products: both paths give table[c] * scale_inv bit for bit, and a NaN code the table's NaN whatever the scale
// (with a NaN scale IEEE 754 leaves open which of the two NaNs the product is).
class Fp8DecodeRow : public ::testing::TestWithParam<bool> {
 protected:
  void TearDown() override { force_portable_kernels(false); }
};

TEST_P(Fp8DecodeRow, EveryCodeAndScaleMatchesTheTable) {
  const bool ue8m0 = GetParam();
  std::vector<float> scale_values;
  std::vector<uint8_t> scale_bytes;
  if (ue8m0) {
    for (int e = 0; e < 256; ++e) {  // 2^-127 (subnormal) to 2^127, and NaN
      scale_values.push_back(e8m0_to_float(static_cast<uint8_t>(e)));
      scale_bytes.push_back(static_cast<uint8_t>(e));
    }
  } else {
    const uint32_t bits[] = {
        0x3f800000u,  // 1
        std::bit_cast<uint32_t>(3.7e-3f / 448.0f),
        std::bit_cast<uint32_t>(-1.5f),
        0x1b800000u,  // 2^-72: E4M3/E5M2 subnormal codes give fp32 subnormal products
        0x0c000000u,  // 2^-103: most products subnormal or zero
        0x00000001u,  // smallest subnormal scale
        0x00400000u,  // 2^-127
        0x807fffffu,  // negative subnormal
        0x7b000000u,  // 2^119
        0x7b800000u,  // 2^120
        0x7f000000u,  // 2^127: large codes overflow to Inf
        0x7f7fffffu,  // FLT_MAX
        0x7f800000u,  // +Inf (zero codes give NaN)
        0xff800000u,  // -Inf
        0x00000000u,  // +0 (Inf codes give NaN)
        0x80000000u,  // -0
        0x7fc00000u,  // the default NaN
        0xffc00123u,  // negative NaN with a payload
        0x7f800001u,  // signalling NaN
    };
    for (uint32_t b : bits) {
      scale_values.push_back(std::bit_cast<float>(b));
      for (int k = 0; k < 4; ++k) scale_bytes.push_back(static_cast<uint8_t>(b >> (8 * k)));
    }
  }
  const int nscales = static_cast<int>(scale_values.size());

  for (Fp8Elem elem : {Fp8Elem::kE4M3, Fp8Elem::kE5M2}) {
    const std::array<float, 256> table = elem == Fp8Elem::kE4M3 ? e4m3_table() : e5m2_table();
    for (int block : {128, 256, 48, 32}) {  // 32: mxfp8's blocks (E4M3 under E8M0 scales) take this kernel too
      // Every run of 256 elements holds all 256 codes; the last block is partial (not a multiple of 16).
      const int hidden = nscales * 256 + 37;
      const int blocks = (hidden + block - 1) / block;
      // One byte in, so that no load or store is aligned.
      std::vector<uint8_t> code_buf(static_cast<size_t>(hidden) + 1);
      uint8_t* codes = code_buf.data() + 1;
      for (int i = 0; i < hidden; ++i) codes[i] = static_cast<uint8_t>((i % 256) ^ ((i / 256) % 2 ? 0x55 : 0));
      std::vector<uint8_t> scales;
      std::vector<float> block_scale;
      for (int b = 0; b < blocks; ++b) {
        int k = b * block / 256 % nscales;  // both 128-blocks of a run of 256 share a scale
        block_scale.push_back(scale_values[static_cast<size_t>(k)]);
        size_t w = ue8m0 ? 1 : 4;
        scales.insert(scales.end(), scale_bytes.begin() + static_cast<std::ptrdiff_t>(k * w),
                      scale_bytes.begin() + static_cast<std::ptrdiff_t>((k + 1) * w));
      }
      std::vector<uint32_t> want(static_cast<size_t>(hidden));
      for (int i = 0; i < hidden; ++i) {
        float t = table[codes[i]];
        want[static_cast<size_t>(i)] =
            std::bit_cast<uint32_t>(std::isnan(t) ? t : t * block_scale[static_cast<size_t>(i / block)]);
      }
      for (bool portable : {true, false}) {
        force_portable_kernels(portable);
        if (!portable && !avx2_f16c_kernels_enabled()) continue;  // no AVX2+F16C on this CPU or build
        const uint32_t sentinel = 0xdeadbeefu;
        std::vector<uint32_t> out(static_cast<size_t>(hidden) + 18, sentinel);
        fp8_decode_row_kernel(elem, ue8m0, codes, scales.data(), hidden, block,
                              reinterpret_cast<float*>(out.data() + 1));
        ASSERT_EQ(out[0], sentinel);
        for (int i = 0; i < hidden; ++i) {
          ASSERT_EQ(out[static_cast<size_t>(i) + 1], want[static_cast<size_t>(i)])
              << (elem == Fp8Elem::kE4M3 ? "e4m3" : "e5m2") << (portable ? " portable" : " avx2") << " block " << block
              << " element " << i << " code " << int{codes[i]} << " scale bits " << std::hex
              << std::bit_cast<uint32_t>(block_scale[static_cast<size_t>(i / block)]);
        }
        for (size_t i = static_cast<size_t>(hidden) + 1; i < out.size(); ++i) ASSERT_EQ(out[i], sentinel);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Scales, Fp8DecodeRow, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? std::string("ue8m0") : std::string("fp32"); });

// mxfp8 decode: the AVX2 path is the FP8 half-float kernel, the portable one computes each element's value
// from its bits (mx_decode_row). Every E4M3 code under every E8M0 scale (NaN included), bit for bit.
TEST(MxDecodeRow, Mxfp8EveryCodeUnderEveryScaleSameOnBothPaths) {
  const int hidden = 256 * 256;  // block b holds codes 32 * (b % 8) .. + 31 under scale byte b % 256
  std::vector<uint8_t> codes(hidden), scales(hidden / 32);
  for (int i = 0; i < hidden; ++i) codes[i] = static_cast<uint8_t>(i % 256);
  for (size_t b = 0; b < scales.size(); ++b) scales[b] = static_cast<uint8_t>((b / 8 + b) % 256);
  std::vector<uint32_t> portable(hidden), fast(hidden);
  force_portable_kernels(true);
  mx_decode_row_kernel(MxElem::kE4M3, codes.data(), scales.data(), hidden, reinterpret_cast<float*>(portable.data()));
  force_portable_kernels(false);
  if (!avx2_f16c_kernels_enabled()) GTEST_SKIP() << "no AVX2+F16C kernels on this CPU or build";
  mx_decode_row_kernel(MxElem::kE4M3, codes.data(), scales.data(), hidden, reinterpret_cast<float*>(fast.data()));
  for (int i = 0; i < hidden; ++i)
    ASSERT_EQ(fast[i], portable[i]) << "code " << int{codes[i]} << " scale byte " << int{scales[i / 32]};
}

// The bits the kernels start from: the tables hold exactly the OCP values (checked against the format
// definition here, independently of MiniFloat::magnitude_value).
TEST(Fp8DecodeRow, TablesHoldTheOcpValues) {
  auto e4m3 = e4m3_table();
  auto e5m2 = e5m2_table();
  for (int c = 0; c < 256; ++c) {
    int s = c >> 7, e4 = (c >> 3) & 15, m3 = c & 7, e5 = (c >> 2) & 31, m2 = c & 3;
    double v4 = e4 == 0 ? std::ldexp(m3, -9) : std::ldexp(8 + m3, e4 - 10);
    double v5 = e5 == 0 ? std::ldexp(m2, -16) : std::ldexp(4 + m2, e5 - 17);
    if (s) v4 = -v4, v5 = -v5;
    if ((c & 0x7f) == 0x7f) {
      EXPECT_EQ(std::bit_cast<uint32_t>(e4m3[c]), 0x7fc00000u) << c;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(e4m3[c]), std::bit_cast<uint32_t>(static_cast<float>(v4))) << c;
    }
    if (e5 == 31 && m2 != 0) {
      EXPECT_EQ(std::bit_cast<uint32_t>(e5m2[c]), 0x7fc00000u) << c;
    } else if (e5 == 31) {
      EXPECT_EQ(e5m2[c], s ? -INFINITY : INFINITY) << c;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(e5m2[c]), std::bit_cast<uint32_t>(static_cast<float>(v5))) << c;
    }
  }
}

}  // namespace
}  // namespace eplab::codecs
