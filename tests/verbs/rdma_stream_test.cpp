// The verbs stream protocol on a loopback link that does what the NIC would (copy a staged chunk into the peer's
// ring slot, then complete the write on both sides): messages of every size arrive intact and in order through
// a small ring, no write goes out without a credit, and every protocol violation is an error naming the peer and
// the slot.
#include "verbs/rdma_stream.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <deque>
#include <random>

#include "engine/error.hpp"

namespace eplab::verbs {
namespace {

// One direction, sender rank 0 to receiver rank 1. Writes land in post order (RC); the link delays write
// completions and credit returns by a random number of steps to vary the interleaving.
struct Loopback {
  RingConfig cfg;
  RdmaSender tx;
  RdmaReceiver rx;
  std::vector<uint8_t> staging, ring;
  std::deque<std::pair<WriteOp, std::vector<uint8_t>>> wire;  // posted, not yet landed (payload as posted)
  std::deque<uint64_t> done;                                  // landed, completion not yet seen by the sender
  std::deque<uint32_t> credits;                               // returned, not yet seen by the sender
  std::vector<RdmaReceiver::Message> got;
  std::mt19937 rng{7};
  size_t max_outstanding = 0;

  explicit Loopback(RingConfig c)
      : cfg(c), tx(c, 1), rx(c, 0), staging(size_t{c.slots} * c.slot_bytes), ring(size_t{c.slots} * c.slot_bytes) {}

  void step() {
    for (const WriteOp& w : tx.ready(staging.data()))
      wire.push_back({w, std::vector<uint8_t>(w.local, w.local + w.bytes)});
    max_outstanding = std::max(max_outstanding, wire.size());
    if (!wire.empty() && rng() % 2) {  // the oldest write lands
      auto [w, bytes] = wire.front();
      wire.pop_front();
      std::memcpy(ring.data() + size_t{w.slot} * cfg.slot_bytes, bytes.data(), bytes.size());
      rx.on_write_imm(w.imm, w.bytes, ring.data(), got);
      done.push_back(w.wr_id);
      if (uint32_t n = rx.take_credit_return()) credits.push_back(n);
    }
    if (!done.empty() && rng() % 2) {
      tx.on_write_complete(done.front());
      done.pop_front();
    }
    if (!credits.empty() && rng() % 3 == 0) {
      tx.add_credits(credits.front());
      credits.pop_front();
    }
  }
  void drain() {
    for (int i = 0; i < 1'000'000 && (tx.queued_chunks() || tx.in_flight() || !wire.empty() || !done.empty()); ++i)
      step();
  }
};

TEST(RdmaStream, MessagesOfEverySizeArriveIntactAndInOrder) {
  RingConfig c{4, 256, 2};
  Loopback l(c);
  const uint32_t p = c.payload_bytes();
  const std::vector<size_t> sizes = {0, 1, p - 1, p, p + 1, 5 * p + 7, 100'000, 3};
  std::vector<std::vector<uint8_t>> msgs;
  std::vector<uint64_t> ids;
  std::mt19937 rng(1);
  for (size_t i = 0; i < sizes.size(); ++i) {
    msgs.emplace_back(sizes[i]);
    for (auto& b : msgs.back()) b = static_cast<uint8_t>(rng());
    ids.push_back(l.tx.enqueue(1000 + i, msgs.back().data(), sizes[i], sizes[i] + 17 * i));
  }
  l.drain();
  ASSERT_EQ(l.got.size(), sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(l.got[i].tag, 1000 + i);
    EXPECT_EQ(l.got[i].total_bytes, sizes[i] + 17 * i);
    EXPECT_EQ(l.got[i].data, msgs[i]) << "message " << i << " of " << sizes[i] << " bytes";
  }
  EXPECT_EQ(l.tx.take_completed(), ids);  // every message completes, in order
  EXPECT_LE(l.max_outstanding, c.slots);  // never more chunks on the wire than the ring has free slots
}

TEST(RdmaStream, NoWriteWithoutACreditAndCreditsComeBackInBatches) {
  RingConfig c{3, 128, 2};
  RdmaSender tx(c, 1);
  RdmaReceiver rx(c, 0);
  std::vector<uint8_t> staging(3 * 128), ring(3 * 128), msg(10 * c.payload_bytes(), 0xab);
  tx.enqueue(9, msg.data(), msg.size(), msg.size());
  std::vector<WriteOp> w = tx.ready(staging.data());
  ASSERT_EQ(w.size(), 3u);  // three slots, three credits
  EXPECT_EQ(tx.credits(), 0u);
  EXPECT_TRUE(tx.ready(staging.data()).empty());
  std::vector<RdmaReceiver::Message> got;
  for (int i = 0; i < 3; ++i) {
    std::memcpy(ring.data() + w[i].slot * 128, w[i].local, w[i].bytes);
    rx.on_write_imm(w[i].imm, w[i].bytes, ring.data(), got);
    tx.on_write_complete(w[i].wr_id);
    EXPECT_EQ(rx.take_credit_return(), i == 1 ? 2u : 0u);  // a batch of two after the second slot
  }
  EXPECT_TRUE(tx.ready(staging.data()).empty());  // the third slot's credit is not back yet
  tx.add_credits(2);
  EXPECT_EQ(tx.ready(staging.data()).size(), 2u);
  EXPECT_TRUE(got.empty());  // ten chunks, three landed
}

TEST(RdmaStream, ProtocolViolationsAreErrorsNamingPeerAndSlot) {
  RingConfig c{4, 128, 1};
  auto error = [&](auto&& fn) {
    try {
      fn();
    } catch (const FabricError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::vector<uint8_t> staging(4 * 128), ring(4 * 128);
  std::vector<RdmaReceiver::Message> got;
  auto landed = [&](RdmaReceiver& rx, const WriteOp& w) {
    std::memcpy(ring.data() + w.slot * 128, w.local, w.bytes);
    rx.on_write_imm(w.imm, w.bytes, ring.data(), got);
  };
  {
    RdmaSender tx(c, 1);
    RdmaReceiver rx(c, 5);
    const uint8_t b[150] = {};  // two chunks of at most 80 payload bytes
    tx.enqueue(1, b, sizeof b, sizeof b);
    auto w = tx.ready(staging.data());
    ASSERT_EQ(w.size(), 2u);
    const std::string msg = error([&] { landed(rx, w[1]); });  // slot 1 before slot 0
    EXPECT_NE(msg.find("rank 5, ring slot 1: written out of order"), std::string::npos) << msg;
  }
  {
    RdmaSender tx(c, 1);
    RdmaReceiver rx(c, 5);
    tx.enqueue(1, nullptr, 0, 0);
    auto w = tx.ready(staging.data());
    std::memcpy(ring.data(), w[0].local, w[0].bytes);
    ring[0] ^= 1;  // the magic
    const std::string msg = error([&] { rx.on_write_imm(w[0].imm, w[0].bytes, ring.data(), got); });
    EXPECT_NE(msg.find("not a chunk header"), std::string::npos) << msg;
  }
  {
    RdmaSender tx(c, 1);
    RdmaReceiver rx(c, 5);
    const uint8_t b[10] = {};
    tx.enqueue(1, b, sizeof b, sizeof b);
    auto w = tx.ready(staging.data());
    std::memcpy(ring.data(), w[0].local, w[0].bytes);
    const std::string msg = error([&] { rx.on_write_imm(w[0].imm, w[0].bytes - 3, ring.data(), got); });
    EXPECT_NE(msg.find("header says 10 payload bytes, the write carried 7"), std::string::npos) << msg;
  }
  {
    RdmaSender tx(c, 1);
    RdmaReceiver rx(c, 5);
    const uint8_t b[150] = {};
    tx.enqueue(1, b, sizeof b, sizeof b);  // two chunks
    tx.enqueue(2, b, 10, 10);
    auto w = tx.ready(staging.data());
    ASSERT_EQ(w.size(), 3u);
    landed(rx, w[0]);
    // The second chunk's slot, overwritten with the next message's chunk: a chunk of another message.
    std::memcpy(const_cast<uint8_t*>(w[1].local), w[2].local, w[2].bytes);
    const std::string msg = error([&] { landed(rx, {w[1].wr_id, w[1].slot, w[1].imm, w[1].local, w[2].bytes}); });
    EXPECT_NE(msg.find("chunk 0 of message 1 where chunk 1 of message 0 must come"), std::string::npos) << msg;
  }
  {
    RdmaSender tx(c, 1);
    EXPECT_NE(error([&] { tx.add_credits(1); }).find("more than the ring's 4 slots"), std::string::npos);
    EXPECT_NE(error([&] { tx.on_write_complete(42); }).find("not in flight"), std::string::npos);
    EXPECT_NE(error([&] { tx.enqueue(1, nullptr, 5, 1); }).find("below the real bytes"), std::string::npos);
  }
  EXPECT_NE(error([] { RdmaSender(RingConfig{4, 40, 1}, 0); }).find("chunk header"), std::string::npos);
  EXPECT_NE(error([] { RdmaSender(RingConfig{4, 128, 5}, 0); }).find("batches of 5"), std::string::npos);
}

}  // namespace
}  // namespace eplab::verbs
