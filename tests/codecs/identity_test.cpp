// Identity wire formats: fp32 is bit-exact, bf16 matches PyTorch's round-to-nearest-even conversion.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/codecs/float_formats.hpp"

namespace eplab {
namespace {

TEST(IdentityCodec, Fp32IsBitExactIncludingSpecials) {
  auto c = create_codec("identity");
  std::vector<float> x = {1.5f, -0.0f, std::numeric_limits<float>::infinity(), 1e-45f, 3.4e38f, std::nanf("")};
  std::vector<uint8_t> buf;
  c->encode(x.data(), 2, 3, buf);
  ASSERT_EQ(buf.size(), 24u);
  std::vector<float> y(6);
  c->decode(buf.data(), buf.size(), 2, 3, y.data());
  EXPECT_EQ(0, std::memcmp(x.data(), y.data(), 24));
  EXPECT_TRUE(c->lossless());
  EXPECT_EQ(c->error_bound(), 0.0);
}

TEST(IdentityCodec, Bf16KnownAnswers) {
  using codecs::float_to_bf16;
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  // 1 + 2^-8 is the tie between 1 and 1 + 2^-7: even mantissa (1.0) wins.
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3*2^-8 ties between 1+2^-7 (odd) and 1+2^-6 (even): rounds up.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // just above the tie
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflow to Inf, as PyTorch
  EXPECT_TRUE(std::isnan(codecs::bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_EQ(float_to_bf16(0x1p-133f), 0x0001);  // smallest bf16 subnormal survives
}

TEST(IdentityCodec, Bf16WireIsTwoBytesPerElement) {
  auto c = create_codec("bf16");
  EXPECT_EQ(c->encoded_size(3, 5), 30u);
  EXPECT_EQ(c->bits_per_element(3, 5), 16.0);
  std::vector<float> x = {3.14159f, -2.71828f, 0.0f};
  std::vector<uint8_t> buf;
  c->encode(x.data(), 1, 3, buf);
  std::vector<float> y(3);
  c->decode(buf.data(), buf.size(), 1, 3, y.data());
  EXPECT_EQ(y[0], 3.140625f);
  EXPECT_EQ(y[1], -2.71875f);
  EXPECT_EQ(y[2], 0.0f);
  EXPECT_THROW(c->decode(buf.data(), buf.size() - 1, 1, 3, y.data()), CodecError);
}

TEST(CodecRegistry, UnknownSpecNamesItAndListsKnownCodecs) {
  try {
    create_codec("fp7-nonsense");
    FAIL() << "expected EplabError";
  } catch (const EplabError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("fp7-nonsense"), std::string::npos) << what;
    EXPECT_NE(what.find("bf16"), std::string::npos) << what;
  }
  EXPECT_THROW(create_codec("bf16:bogus=1"), EplabError);
  EXPECT_THROW(create_codec("bf16+fp32"), EplabError);
}

}  // namespace
}  // namespace eplab
