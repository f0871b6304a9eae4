// Known-answer tests: hand-computed codes and values for FP8 (DeepEP per-128), INT8 per token and the
// OCP MX formats, covering ties (round-to-nearest-even), saturation, subnormals and the smallest scale.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "policies/codecs/block_quant.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/codecs/float_formats.hpp"

namespace eplab {
namespace {

using codecs::E2M1;
using codecs::E2M3;
using codecs::E4M3;
using codecs::E5M2;

struct Encoded {
  std::vector<uint8_t> bytes;
  std::vector<float> decoded;
};

Encoded round_trip(const std::string& spec, const std::vector<float>& x, int tokens) {
  auto c = create_codec(spec);
  int hidden = static_cast<int>(x.size()) / tokens;
  Encoded e;
  c->encode(x.data(), tokens, hidden, e.bytes);
  EXPECT_EQ(e.bytes.size(), c->encoded_size(tokens, hidden)) << spec;
  e.decoded.resize(x.size());
  c->decode(e.bytes.data(), e.bytes.size(), tokens, hidden, e.decoded.data());
  return e;
}

float scale_at(const std::vector<uint8_t>& bytes, size_t offset) {
  float s;
  std::memcpy(&s, bytes.data() + offset, 4);
  return s;
}

TEST(KnownAnswer, E4M3Codes) {
  EXPECT_EQ(E4M3::magnitude_code(448.0f), 0x7eu);
  EXPECT_EQ(E4M3::magnitude_code(1.0f), 0x38u);
  EXPECT_EQ(E4M3::magnitude_code(1.0625f), 0x38u);               // tie 1.0 / 1.125 -> even (1.0)
  EXPECT_EQ(E4M3::magnitude_code(1.1875f), 0x3au);               // tie 1.125 / 1.25 -> even (1.25)
  EXPECT_EQ(E4M3::magnitude_code(250.0f), 0x78u);                // nearer 256 than 240
  EXPECT_EQ(E4M3::magnitude_code(0x1p-9f), 0x01u);               // smallest subnormal
  EXPECT_EQ(E4M3::magnitude_code(0x1p-10f), 0x00u);              // tie 0 / 2^-9 -> 0
  EXPECT_EQ(E4M3::magnitude_code(3 * 0x1p-10f), 0x02u);          // tie 2^-9 / 2^-8 -> 2^-8
  EXPECT_EQ(E4M3::magnitude_code(0.015625f - 0x1p-12f), 0x08u);  // rounds up into the smallest normal 2^-6
  EXPECT_EQ(E4M3::magnitude_code(0.0f), 0x00u);
  auto t = codecs::e4m3_table();
  EXPECT_EQ(t[0x7e], 448.0f);
  EXPECT_EQ(t[0x01], 0x1p-9f);
  EXPECT_EQ(t[0xb8], -1.0f);
  EXPECT_TRUE(std::isnan(t[0x7f]));
}

TEST(KnownAnswer, E5M2Codes) {
  EXPECT_EQ(E5M2::magnitude_code(57344.0f), 0x7bu);
  EXPECT_EQ(E5M2::magnitude_code(1.125f), 0x3cu);  // tie 1.0 / 1.25 -> 1.0
  EXPECT_EQ(E5M2::magnitude_code(1.375f), 0x3eu);  // tie 1.25 / 1.5 -> 1.5
  EXPECT_EQ(E5M2::magnitude_code(0x1p-16f), 0x01u);
  EXPECT_EQ(E5M2::magnitude_code(0x1p-17f), 0x00u);
  auto t = codecs::e5m2_table();
  EXPECT_EQ(t[0x7c], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(t[0x7e]));
}

TEST(KnownAnswer, QuantizeBlockSaturatesAndFlagsSpecials) {
  float x[5] = {500.0f, -1e9f, std::numeric_limits<float>::infinity(), std::nanf(""),
                -std::numeric_limits<float>::infinity()};
  uint8_t c[5];
  codecs::quantize_block<E4M3, 7>(x, 5, 1.0f, codecs::kE4M3Max, codecs::kE4M3NaN, codecs::kE4M3NaN, c);
  EXPECT_EQ(c[0], 0x7e);         // 500 saturates to 448
  EXPECT_EQ(c[1], 0xfe);         // -1e9 saturates to -448
  EXPECT_EQ(c[2] & 0x7f, 0x7f);  // E4M3 has no Inf: NaN
  EXPECT_EQ(c[3] & 0x7f, 0x7f);
  codecs::quantize_block<E5M2, 7>(x, 5, 1.0f, codecs::kE5M2Max, codecs::kE5M2NaN, codecs::kE5M2Inf, c);
  EXPECT_EQ(c[0], 0x60);  // 500 lies between 448 and 512 (spacing 64): nearer 512 = 2^9
  EXPECT_EQ(c[1], 0xfb);  // -57344
  EXPECT_EQ(c[2], 0x7c);  // +Inf
  EXPECT_EQ(c[4], 0xfc);  // -Inf
  EXPECT_EQ(c[3], 0x7e);  // NaN
}

TEST(KnownAnswer, Fp8E4M3B128MatchesDeepEP) {
  // One token, 130 channels: block 0 has amax 448 (scale 1), block 1 (2 channels) is below the 1e-4 floor.
  std::vector<float> x(130, 0.0f);
  x[0] = 448.0f;
  x[1] = 1.0625f;   // tie -> 1.0
  x[2] = -1.1875f;  // tie -> -1.25
  x[3] = 0x1p-10f;  // subnormal tie -> 0
  x[4] = 3 * 0x1p-10f;
  x[128] = 1e-6f;
  x[129] = -5e-7f;
  Encoded e = round_trip("fp8-e4m3-b128", x, 1);
  ASSERT_EQ(e.bytes.size(), 130u + 2 * 4);
  EXPECT_EQ(e.bytes[0], 0x7e);
  EXPECT_EQ(e.bytes[1], 0x38);
  EXPECT_EQ(e.bytes[2], 0xba);
  EXPECT_EQ(e.bytes[3], 0x00);
  EXPECT_EQ(e.bytes[4], 0x02);
  EXPECT_EQ(scale_at(e.bytes, 130), 1.0f);
  EXPECT_EQ(scale_at(e.bytes, 134), 1e-4f / 448.0f);  // amax floored at 1e-4
  EXPECT_EQ(e.decoded[1], 1.0f);
  EXPECT_EQ(e.decoded[2], -1.25f);
  // 1e-6 * (448 / 1e-4) = 4.48 -> 4.5 in E4M3; -5e-7 -> -2.24 -> -2.25.
  EXPECT_EQ(e.bytes[128], E4M3::magnitude_code(4.5f));
  EXPECT_FLOAT_EQ(e.decoded[128], 4.5f * (1e-4f / 448.0f));
  EXPECT_FLOAT_EQ(e.decoded[129], -2.25f * (1e-4f / 448.0f));
}

TEST(KnownAnswer, Fp8Ue8m0ScaleIsCeilPowerOfTwo) {
  std::vector<float> x(128, 0.0f);
  x[0] = 1.0f;  // scale_inv 1/448 -> ceil to 2^-8 (E8M0 code 119); element 1.0 * 256 = 256
  x[1] = -0.5f;
  Encoded e = round_trip("fp8-e4m3-b128-ue8m0", x, 1);
  ASSERT_EQ(e.bytes.size(), 129u);
  EXPECT_EQ(e.bytes[128], 119);
  EXPECT_EQ(e.bytes[0], 0x78);  // 256
  EXPECT_EQ(e.decoded[0], 1.0f);
  EXPECT_EQ(e.decoded[1], -0.5f);
}

TEST(KnownAnswer, Fp8NonFiniteStaysNonFiniteAndKeepsTheScale) {
  std::vector<float> x(128, 0.0f);
  x[0] = 2.0f;
  x[1] = std::numeric_limits<float>::infinity();
  x[2] = std::nanf("");
  Encoded e = round_trip("fp8-e4m3-b128", x, 1);
  EXPECT_EQ(scale_at(e.bytes, 128), 2.0f / 448.0f);  // amax over finite values only
  EXPECT_EQ(e.decoded[0], 2.0f);
  EXPECT_TRUE(std::isnan(e.decoded[1]));
  EXPECT_TRUE(std::isnan(e.decoded[2]));
  Encoded f = round_trip("fp8-e5m2-b128", x, 1);
  EXPECT_EQ(f.decoded[1], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f.decoded[2]));
}

TEST(KnownAnswer, Int8TokenTiesAndSpecials) {
  std::vector<float> x = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -126.5f, std::nanf(""), 0.0f,   // token 0: scale 1
                          0.0f,   0.0f, 0.0f, 0.0f, 0.0f,  0.0f,    0.0f,          0.0f};  // token 1: all zero
  Encoded e = round_trip("int8-token", x, 2);
  ASSERT_EQ(e.bytes.size(), 2u * (8 + 4));
  const int8_t* q = reinterpret_cast<const int8_t*>(e.bytes.data());
  EXPECT_EQ(q[0], 127);
  EXPECT_EQ(q[1], 0);
  EXPECT_EQ(q[2], 2);
  EXPECT_EQ(q[3], 2);
  EXPECT_EQ(q[4], 0);
  EXPECT_EQ(q[5], -126);
  EXPECT_EQ(q[6], -128);
  EXPECT_EQ(scale_at(e.bytes, 8), 1.0f);
  EXPECT_EQ(scale_at(e.bytes, 20), 0.0f);
  EXPECT_TRUE(std::isnan(e.decoded[6]));
  for (int i = 8; i < 16; ++i) EXPECT_EQ(e.decoded[i], 0.0f);
}

TEST(KnownAnswer, Mxfp8ScaleAndSaturation) {
  std::vector<float> x(32, 0.0f);
  x[0] = 1.9f;       // floor(log2 1.9) = 0 -> X = 2^-8; 1.9 * 256 = 486.4 saturates to 448
  x[1] = 1.0f;       // 256 -> E4M3 0x78
  x[2] = -0x1p-17f;  // 2^-9 in element units: smallest subnormal
  Encoded e = round_trip("mxfp8", x, 1);
  ASSERT_EQ(e.bytes.size(), 33u);
  EXPECT_EQ(e.bytes[32], 127 - 8);
  EXPECT_EQ(e.bytes[0], 0x7e);
  EXPECT_EQ(e.bytes[1], 0x78);
  EXPECT_EQ(e.bytes[2], 0x81);
  EXPECT_EQ(e.decoded[0], 1.75f);
  EXPECT_EQ(e.decoded[2], -0x1p-17f);
}

TEST(KnownAnswer, Mxfp4Values) {
  std::vector<float> x = {6.0f, 5.0f, 2.5f, 0.25f, 0.75f, -1.25f, 7.9f, 0.0f};
  x.resize(32, 0.0f);
  Encoded e = round_trip("mxfp4", x, 1);
  ASSERT_EQ(e.bytes.size(), 16u + 1);
  EXPECT_EQ(e.bytes[16], 127);  // floor(log2 7.9) - 2 = 0
  // Codes: 6 -> 7, 5 -> 4 (tie, even), 2.5 -> 2 (tie), 0.25 -> 0 (tie), 0.75 -> 1.0, -1.25 -> -1.0, 7.9 -> 6.
  std::vector<float> want = {6.0f, 4.0f, 2.0f, 0.0f, 1.0f, -1.0f, 6.0f, 0.0f};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(e.decoded[i], want[i]) << "element " << i;
  EXPECT_EQ(e.bytes[0], 0x7 | (0x6 << 4));  // low nibble first: 6 -> 0b0111, 4 -> 0b0110
  EXPECT_EQ(e.bytes[1], 0x4 | (0x0 << 4));
  EXPECT_EQ(e.bytes[2], 0x2 | (0xa << 4));  // 1.0 -> 0b0010, -1.0 -> 0b1010
  EXPECT_EQ(e.bytes[3], 0x7 | (0x0 << 4));
}

TEST(KnownAnswer, Mxfp6ValuesAndPacking) {
  std::vector<float> x = {7.5f, 0.0625f, 0.1875f, 1.0625f, -3.3f};
  x.resize(32, 0.0f);
  Encoded e = round_trip("mxfp6", x, 1);
  ASSERT_EQ(e.bytes.size(), 24u + 1);
  EXPECT_EQ(e.bytes[24], 127);
  std::vector<float> want = {7.5f, 0.0f, 0.25f, 1.0f, -3.25f};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(e.decoded[i], want[i]) << "element " << i;
  // Elements 0..3 = codes 31, 0, 2, 8 packed into 24 bits little-endian: 31 | 2<<12 | 8<<18.
  uint32_t w = e.bytes[0] | (e.bytes[1] << 8) | (e.bytes[2] << 16);
  EXPECT_EQ(w, 31u | (2u << 12) | (8u << 18));
}

TEST(KnownAnswer, MxSmallestScaleAndSpecialBlocks) {
  std::vector<float> x(96, 0.0f);
  x[0] = 0x1p-130f;                                    // scale exponent -138 clamps to -127 (E8M0 code 0); element 2^-3
  x[32 + 5] = std::numeric_limits<float>::infinity();  // block 1: NaN scale
  // block 2 all zero: code 0, zeros
  Encoded e = round_trip("mxfp8", x, 1);
  EXPECT_EQ(e.bytes[96], 0);
  EXPECT_EQ(e.bytes[0], 0x20);
  EXPECT_EQ(e.decoded[0], 0x1p-130f);
  EXPECT_EQ(e.bytes[97], 0xff);
  for (int i = 32; i < 64; ++i) EXPECT_TRUE(std::isnan(e.decoded[i]));
  EXPECT_EQ(e.bytes[98], 0);
  for (int i = 64; i < 96; ++i) EXPECT_EQ(e.decoded[i], 0.0f);
}

}  // namespace
}  // namespace eplab
