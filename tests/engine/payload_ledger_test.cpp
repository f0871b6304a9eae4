// The payload conservation check (engine/payload_ledger.hpp): the checksum sees every flipped byte, the ledgers
// of two ranks agree when the same bytes moved, and a disagreement names the rank pair, the phase and the call;
// the phantom payloads' tally does the same from counts.
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

// A gather send's checksum (head, then rows from elsewhere) is the contiguous message's, whatever the seams.
TEST(PayloadChecksum, GatheredRowsSumAsTheContiguousMessage) {
  for (size_t head : {0u, 1u, 8u, 31u, 32u, 45u})
    for (size_t row : {1u, 7u, 24u, 32u, 100u})
      for (size_t count : {1u, 2u, 5u}) {
        const std::vector<uint8_t> whole = bytes_of(head + row * count);
        std::vector<std::vector<uint8_t>> parts;
        std::vector<const uint8_t*> rows;
        for (size_t r = 0; r < count; ++r)
          parts.emplace_back(whole.begin() + static_cast<ptrdiff_t>(head + r * row),
                             whole.begin() + static_cast<ptrdiff_t>(head + (r + 1) * row));
        for (const auto& p : parts) rows.push_back(p.data());
        ConstBuf b{whole.data(), whole.size()};
        b.gather = RowGather{rows.data(), count, row};
        EXPECT_EQ(payload_checksum(b), payload_checksum(whole.data(), whole.size()))
            << "head " << head << ", rows " << count << " x " << row;
        std::vector<uint8_t> flat(whole.size());
        b.copy_to(flat.data());
        EXPECT_EQ(flat, whole);
        parts.back().back() ^= 1;  // a byte changed in the last row shows
        EXPECT_NE(payload_checksum(b), payload_checksum(whole.data(), whole.size()));
      }
}

// Fed in parts of any sizes (a message read a stretch at a time), the checksum is the contiguous message's, and a
// ledger entering it so records the same as one entering the message whole.
TEST(PayloadChecksum, FedInPartsSumsAsTheContiguousMessage) {
  const std::vector<uint8_t> whole = bytes_of(1000);
  for (const std::vector<size_t>& cuts : std::vector<std::vector<size_t>>{
           {}, {1}, {31, 32, 33}, {8, 16, 24, 40, 64}, {500}, {999}, {3, 200, 201, 640, 997}}) {
    PayloadChecksum sum;
    size_t at = 0;
    for (size_t c : cuts) sum.feed(whole.data() + at, c - at), at = c;
    sum.feed(whole.data() + at, whole.size() - at);
    EXPECT_EQ(sum.fed(), whole.size());
    EXPECT_EQ(sum.finish(), payload_checksum(whole.data(), whole.size())) << cuts.size() << " cuts";
  }
  PayloadChecksum sum;
  sum.feed(whole.data(), 999);
  EXPECT_NE(sum.finish(), payload_checksum(whole.data(), whole.size())) << "a byte short";
  const Tag tag = make_tag(Phase::kCombine, 1, 0);
  PayloadLedger a(true), b(true);
  a.received(3, tag, "combine", whole.data(), whole.size(), whole.size());
  PayloadChecksum parts;
  parts.feed(whole.data(), 100);
  parts.feed(whole.data() + 100, 900);
  b.received(3, tag, "combine", whole.size(), parts);
  ASSERT_EQ(a.log().got.size(), 1u);
  ASSERT_EQ(b.log().got.size(), 1u);
  EXPECT_EQ(a.log().got[0].checksum, b.log().got[0].checksum);
  EXPECT_EQ(a.log().got[0].bytes, b.log().got[0].bytes);
  EXPECT_EQ(a.log().got[0].total_bytes, b.log().got[0].total_bytes);
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

TEST(PayloadCheck, AKeptMessageIsEnteredAsASentAndReceivedOne) {
  // Fabric::keep_local: a rank's message to itself that does not move (hierarchical's own rows, forwarded from
  // the batch) gives the same records as one sent and received, a gathered one included.
  const std::vector<uint8_t> head = bytes_of(40), r0 = bytes_of(64), r1 = bytes_of(64);
  const uint8_t* rows[] = {r0.data(), r1.data()};
  const ConstBuf msg{head.data(), head.size() + 2 * 64, 0, RowGather{rows, 2, 64}};
  std::vector<uint8_t> whole(msg.bytes);
  msg.copy_to(whole.data());
  const Tag tag = make_tag(Phase::kDispatch, 1, 0, 2);
  PayloadLedger kept(true), moved(true);
  kept.kept(3, tag, "dispatch", msg);
  moved.sent(3, tag, "dispatch", msg);
  moved.received(3, tag, "dispatch", whole.data(), whole.size(), whole.size());
  const PayloadLog a = kept.log(), b = moved.log();
  ASSERT_EQ(a.sent.size(), 1u);
  ASSERT_EQ(a.got.size(), 1u);
  for (const auto& [x, y] : {std::pair{a.sent[0], b.sent[0]}, std::pair{a.got[0], b.got[0]}}) {
    EXPECT_EQ(x.messages, 1u);
    EXPECT_EQ(x.bytes, y.bytes);
    EXPECT_EQ(x.checksum, y.checksum);
    EXPECT_EQ(x.peer, 3);
  }
  std::vector<PayloadLog> logs(4);
  logs[3] = a;
  for (int r = 0; r < 3; ++r) logs[r].recorded = true, logs[r].checksummed = true;
  const PayloadCheck c = check(logs);
  EXPECT_TRUE(c.ok()) << c.first_error;
  EXPECT_EQ(c.messages, 1u);
  // Read where its sender holds it (alltoallv_consume), the gathered message is received as the whole one.
  PayloadLedger lent(true);
  lent.received(3, tag, "dispatch", msg);
  ASSERT_EQ(lent.log().got.size(), 1u);
  EXPECT_EQ(lent.log().got[0].bytes, b.got[0].bytes);
  EXPECT_EQ(lent.log().got[0].checksum, b.got[0].checksum);
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

// An all-to-all of `ranks` ranks under one tag per step, sizes depending on (src, dst, step), entered in the
// tally in an interleaved order (as simulated actors take turns): every sender's run first, then the receives.
void exchange(PayloadTally& t, int ranks, int step, uint64_t short_src = ~0ull, uint64_t short_dst = ~0ull) {
  const Tag tag = make_tag(Phase::kDispatch, step, 0);
  const auto size = [&](int s, int d) { return static_cast<uint64_t>(1000 * s + 10 * d + step); };
  for (int s = 0; s < ranks; ++s)
    for (int d = 0; d < ranks; ++d) t.sent(s, d, tag, size(s, d));
  for (int d = ranks - 1; d >= 0; --d)
    for (int s = 0; s < ranks; ++s)
      t.received(s, d, tag, size(s, d) - (static_cast<uint64_t>(s) == short_src && static_cast<uint64_t>(d) == short_dst));
}

TEST(PayloadTally, BalancedExchangesPassAndAreCounted) {
  PayloadTally t(4);
  for (int step = 0; step < 3; ++step) exchange(t, 4, step);
  const PayloadCheck c = t.check();
  EXPECT_TRUE(c.ran);
  EXPECT_FALSE(c.checksummed);
  EXPECT_TRUE(c.ok()) << c.first_error;
  EXPECT_EQ(c.messages, 3u * 16u);
  EXPECT_EQ(t.messages_sent(2), 3u * 4u);
  uint64_t bytes = 0;
  for (int step = 0; step < 3; ++step)
    for (int s = 0; s < 4; ++s)
      for (int d = 0; d < 4; ++d) bytes += 1000 * s + 10 * d + step;
  EXPECT_EQ(c.bytes, bytes);
}

TEST(PayloadTally, AShortMessageNamesPairAndCall) {
  PayloadTally t(4);
  exchange(t, 4, 0);
  exchange(t, 4, 1, /*short_src=*/2, /*short_dst=*/1);
  exchange(t, 4, 2);
  const PayloadCheck c = t.check();
  EXPECT_FALSE(c.ok());
  EXPECT_EQ(c.mismatches, 1u);
  EXPECT_NE(c.first_error.find("rank 2 -> rank 1, step 1, layer 0"), std::string::npos) << c.first_error;
  EXPECT_NE(c.first_error.find("dispatch"), std::string::npos) << c.first_error;
  EXPECT_NE(c.first_error.find("0 message(s), 1 bytes"), std::string::npos) << c.first_error;
}

TEST(PayloadTally, AMissingOrStrayMessageFails) {
  PayloadTally missing(3);
  missing.sent(0, 2, make_tag(Phase::kCombine, 4, 1), 64);
  PayloadCheck c = missing.check();
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.first_error.find("rank 0 -> rank 2, step 4, layer 1"), std::string::npos) << c.first_error;
  EXPECT_NE(c.first_error.find("1 message(s), 64 bytes"), std::string::npos) << c.first_error;

  PayloadTally stray(3);
  stray.received(1, 0, make_tag(Phase::kCombine, 0, 0), 8);
  EXPECT_FALSE(stray.check().ok());

  // The right counts under the wrong tag: both tags are off.
  PayloadTally moved(2);
  moved.sent(0, 1, make_tag(Phase::kDispatch, 0, 0), 8);
  moved.received(0, 1, make_tag(Phase::kDispatch, 0, 1), 8);
  c = moved.check();
  EXPECT_EQ(c.mismatches, 2u);
}

TEST(PayloadTally, SwappedSizesBetweenPairsAreCaught) {
  // Same totals per sender, receiver and tag, but rank 0's message to 1 and to 2 delivered with each other's
  // size: the fingerprints of (source, destination, size) differ.
  PayloadTally t(3);
  const Tag tag = make_tag(Phase::kDispatch, 0, 0);
  t.sent(0, 1, tag, 10);
  t.sent(0, 2, tag, 20);
  t.received(0, 1, tag, 20);
  t.received(0, 2, tag, 10);
  EXPECT_FALSE(t.check().ok());
}

TEST(PayloadTally, ARestoredRankGoesOnFromItsCounts) {
  PayloadTally t(2);
  t.restore_sent(1, 7, 700);
  t.sent(1, 0, make_tag(Phase::kDispatch, 0, 0), 5);
  t.received(1, 0, make_tag(Phase::kDispatch, 0, 0), 5);
  EXPECT_EQ(t.messages_sent(1), 8u);
  EXPECT_EQ(t.bytes_sent(1), 705u);
  EXPECT_TRUE(t.check().ok());
}

}  // namespace
}  // namespace eplab
