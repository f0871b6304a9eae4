// Decode tables for the narrow float formats: one fp32 per code, built from the format definition.
#include "policies/codecs/float_formats.hpp"

#include <limits>

namespace eplab::codecs {
namespace {

template <class Fmt, size_t kCodes>
std::array<float, kCodes> signed_table() {
  std::array<float, kCodes> t{};
  constexpr size_t kHalf = kCodes / 2;
  for (size_t c = 0; c < kHalf; ++c) {
    float v = Fmt::magnitude_value(static_cast<uint32_t>(c));
    t[c] = v;
    t[c + kHalf] = -v;
  }
  return t;
}

}  // namespace

std::array<float, 256> e4m3_table() {
  auto t = signed_table<E4M3, 256>();
  t[0x7f] = t[0xff] = std::numeric_limits<float>::quiet_NaN();
  return t;
}

std::array<float, 256> e5m2_table() {
  auto t = signed_table<E5M2, 256>();
  t[0x7c] = std::numeric_limits<float>::infinity();
  t[0xfc] = -std::numeric_limits<float>::infinity();
  for (int c : {0x7d, 0x7e, 0x7f, 0xfd, 0xfe, 0xff}) t[c] = std::numeric_limits<float>::quiet_NaN();
  return t;
}

std::array<float, 64> e2m3_table() { return signed_table<E2M3, 64>(); }
std::array<float, 16> e2m1_table() { return signed_table<E2M1, 16>(); }

}  // namespace eplab::codecs
