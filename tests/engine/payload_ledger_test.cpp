// The payload conservation check (engine/payload_ledger.hpp): the checksum sees every flipped byte, the ledgers
// of two ranks agree when the same bytes moved, and a disagreement names the rank pair, the phase and the call.
#include "engine/payload_ledger.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

namespace eplab {
namespace {

std::vector<uint8_t> bytes_of(size_t n) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 131 + 7);
  return b;
}

TEST(PayloadChecksum, EveryFlippedBitChangesIt) {
  // Lengths around the 32-byte block and 8-byte word boundaries, so every path of the loop is covered.
  for (size_t n : {1u, 7u, 8u, 9u, 31u, 32u, 33u, 100u, 1027u}) {
    std::vector<uint8_t> b = bytes_of(n);
    const uint64_t base = payload_checksum(b.data(), n);
    for (size_t i = 0; i < n; ++i)
      for (int bit = 0; bit < 8; bit += 3) {
        b[i] ^= static_cast<uint8_t>(1u << bit);
        EXPECT_NE(payload_checksum(b.data(), n), base) << "n " << n << ", byte " << i << ", bit " << bit;
        b[i] ^= static_cast<uint8_t>(1u << bit);
      }
    EXPECT_EQ(payload_checksum(b.data(), n), base);
  }
}

TEST(PayloadChecksum, LengthAndOrderMatter) {
  const std::vector<uint8_t> b(64, 0);
  EXPECT_NE(payload_checksum(b.data(), 3), payload_checksum(b.data(), 4));  // a zero tail byte is not nothing
  EXPECT_NE(payload_checksum(b.data(), 0), payload_checksum(b.data(), 8));
  std::vector<uint8_t> x = bytes_of(64), y = x;
  std::swap_ranges(y.begin(), y.begin() + 8, y.begin() + 8);  // the first two words swapped
  EXPECT_NE(payload_checksum(x.data(), 64), payload_checksum(y.data(), 64));
}

// Rank 0 sends `payload` to rank 1 under a dispatch tag of step 3, layer 2; rank 1 receives `landed`.
std::vector<PayloadLog> two_ranks(const std::vector<uint8_t>& payload, const std::vector<uint8_t>& landed) {
  const Tag tag = make_tag(Phase::kDispatch, 3, 2, 1);
  PayloadLedger r0(true), r1(true);
  r0.sent(1, tag, "dispatch", payload.data(), payload.size(), payload.size());
  r1.received(0, tag, "dispatch", landed.data(), landed.size(), landed.size());
  // A combine message back, equal on both sides.
  const Tag back = make_tag(Phase::kCombine, 3, 2);
  r1.sent(0, back, "combine", payload.data(), payload.size(), payload.size());
  r0.received(1, back, "combine", payload.data(), payload.size(), payload.size());
  return {r0.log(), r1.log()};
}

PayloadCheck check(const std::vector<PayloadLog>& logs) {
  std::vector<const PayloadLog*> p;
  for (const PayloadLog& l : logs) p.push_back(&l);
  return check_payloads(p);
}

TEST(PayloadCheck, EqualLedgersPass) {
  const std::vector<uint8_t> b = bytes_of(200);
  const PayloadCheck c = check(two_ranks(b, b));
  EXPECT_TRUE(c.ran);
  EXPECT_TRUE(c.checksummed);
  EXPECT_TRUE(c.ok()) << c.first_error;
  EXPECT_EQ(c.messages, 2u);
  EXPECT_EQ(c.bytes, 400u);
}

TEST(PayloadCheck, AFlippedByteNamesPairPhaseAndCall) {
  const std::vector<uint8_t> b = bytes_of(200);
  std::vector<uint8_t> landed = b;
  landed[117] ^= 0x10;
  const PayloadCheck c = check(two_ranks(b, landed));
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.mismatches, 1u);
  EXPECT_NE(c.first_error.find("rank 0 -> rank 1, phase dispatch, step 3, layer 2"), std::string::npos)
      << c.first_error;
  EXPECT_NE(c.first_error.find("checksum differs"), std::string::npos) << c.first_error;
}

TEST(PayloadCheck, ShortOrMissingMessagesAreCounted) {
  const std::vector<uint8_t> b = bytes_of(200);
  const PayloadCheck shorter = check(two_ranks(b, std::vector<uint8_t>(b.begin(), b.end() - 1)));
  EXPECT_FALSE(shorter.ok());
  EXPECT_NE(shorter.first_error.find("counts differ"), std::string::npos) << shorter.first_error;

  std::vector<PayloadLog> logs = two_ranks(b, b);
  logs[1].got.clear();  // rank 1 never received rank 0's dispatch
  const PayloadCheck missing = check(logs);
  EXPECT_EQ(missing.mismatches, 1u);
  EXPECT_NE(missing.first_error.find("rank 0 -> rank 1, phase dispatch, step 3, layer 2"), std::string::npos)
      << missing.first_error;
  EXPECT_NE(missing.first_error.find("received nothing"), std::string::npos) << missing.first_error;
}

TEST(PayloadCheck, CountsOnlyWithoutChecksums) {
  // Phantom payloads: sizes without bytes. Equal counts pass, a size difference does not.
  const Tag tag = make_tag(Phase::kForward, 0, 5);
  PayloadLedger a(false), b(false);
  a.sent(1, tag, "dispatch", nullptr, 0, 4096);
  b.received(0, tag, "dispatch", nullptr, 0, 4096);
  std::vector<PayloadLog> logs = {a.log(), b.log()};
  PayloadCheck c = check(logs);
  EXPECT_TRUE(c.ran);
  EXPECT_FALSE(c.checksummed);
  EXPECT_TRUE(c.ok());
  logs[1].got[0].total_bytes = 4095;
  c = check(logs);
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.first_error.find("step 0, layer 5"), std::string::npos) << c.first_error;
}

TEST(PayloadCheck, ARankWithoutLedgerMeansNotRun) {
  const std::vector<uint8_t> b = bytes_of(16);
  std::vector<PayloadLog> logs = two_ranks(b, b);
  logs[1] = PayloadLog{};
  EXPECT_FALSE(check(logs).ran);
}

}  // namespace
}  // namespace eplab
