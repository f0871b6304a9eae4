// The verbs transport's driving logic (verbs/stream_set.*) over the in-memory device of fake_device.hpp: messages
// of every size, from every rank to every rank and itself, arrive intact with their sizes through rings smaller
// than the messages (so credits must come back), completions interleaved at random; and a receive buffer too
// small, a deadline, a peer's failure notice and a write in the wrong slot each end the exchange with an error
// naming the rank and the peer.
#include "verbs/stream_set.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/error.hpp"
#include "engine/topology.hpp"
#include "engine/transport_fabric.hpp"
#include "tests/verbs/fake_device.hpp"

namespace eplab::verbs {
namespace {

constexpr uint8_t kUntouched = 0xEE;  // receive buffers' bytes past the message must keep it

Tag tag_of(int round) { return make_tag(Phase::kDispatch, round, 0); }

// A byte of the message from `src` to `dst` in exchange `round`: messages differ from each other everywhere.
uint8_t pattern(int src, int dst, int round, size_t i) {
  return static_cast<uint8_t>(i * 131 + (i >> 8) + static_cast<size_t>(src * 17 + dst * 7 + round * 29));
}

// One exchange: bytes[src][dst] real bytes from src to dst (-1: no message), each receive buffer `slack` bytes
// longer than its message; every rank's sends and receives.
struct Exchange {
  Exchange(const std::vector<std::vector<long>>& bytes, int round, size_t slack = 16) : bytes(bytes), round(round) {
    const int n = static_cast<int>(bytes.size());
    out.resize(n, std::vector<std::vector<uint8_t>>(n));
    in.resize(n, std::vector<std::vector<uint8_t>>(n));
    sends.resize(n);
    recvs.resize(n);
    for (int s = 0; s < n; ++s)
      for (int d = 0; d < n; ++d) {
        if (bytes[s][d] < 0) continue;
        auto& o = out[s][d];
        for (long i = 0; i < bytes[s][d]; ++i) o.push_back(pattern(s, d, round, static_cast<size_t>(i)));
        auto& b = in[d][s];
        b.assign(static_cast<size_t>(bytes[s][d]) + slack, kUntouched);
        sends[s].push_back({d, ConstBuf{o.data(), o.size()}});
        recvs[d].push_back({s, MutBuf{b.data(), b.size()}});
      }
  }
  // Every receive of rank d: the sizes reported, the bytes, nothing written past them.
  void check(int d) const {
    for (const PeerRecv& r : recvs[d]) {
      const std::vector<uint8_t>& want = out[r.peer][d];
      const auto* got = static_cast<const uint8_t*>(r.data.ptr);
      ASSERT_EQ(r.bytes, want.size()) << "rank " << d << " from " << r.peer << ", round " << round;
      EXPECT_EQ(r.total_bytes, want.size());
      EXPECT_TRUE(std::equal(want.begin(), want.end(), got)) << "rank " << d << " from " << r.peer;
      EXPECT_TRUE(std::all_of(got + want.size(), got + r.data.capacity, [](uint8_t b) { return b == kUntouched; }));
    }
  }
  std::vector<std::vector<long>> bytes;
  int round;
  std::vector<std::vector<std::vector<uint8_t>>> out, in;  // [src][dst], [dst][src]
  std::vector<std::vector<PeerSend>> sends;                // [rank]
  std::vector<std::vector<PeerRecv>> recvs;                // [rank]
};

// Starts the exchange on every rank and steps them in turn until each is done; false if some rank never is.
bool run(FakeRanks& r, Exchange& x) {
  for (int k = 0; k < r.world; ++k) r.sets[k]->start(tag_of(x.round), x.sends[k], x.recvs[k]);
  std::vector<char> done(r.world, 0);
  for (int it = 0; it < 1'000'000; ++it) {
    bool all = true;
    for (int k = 0; k < r.world; ++k) {
      if (!done[k]) done[k] = r.sets[k]->step();
      all = all && done[k];
    }
    if (all) return true;
  }
  return false;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const FabricError& e) {
    return e.what();
  }
  return "no error";
}

TEST(StreamSet, MessagesOfNoneOneAndManyChunksArriveWithTheirSizes) {
  const RingConfig cfg{4, 128, 2};  // 80 payload bytes a chunk, four credits
  const long p = cfg.payload_bytes();
  FakeRanks r(2, cfg);
  // Both ways at once, each round: empty, exactly one chunk, one byte more, and far more chunks than credits.
  const std::vector<std::pair<long, long>> sizes = {{0, 0}, {p, 1}, {p + 1, p}, {37 * p + 5, 0}, {3, 41 * p}};
  for (int round = 0; round < static_cast<int>(sizes.size()); ++round) {
    const auto [ab, ba] = sizes[round];
    Exchange x({{-1, ab}, {ba, -1}}, round);
    const size_t credits_before = r.wire.credit_messages();
    ASSERT_TRUE(run(r, x)) << "round " << round << " never finished";
    x.check(0);
    x.check(1);
    // 38 or 42 chunks through four slots: the sender went on only because credits came back.
    if (std::max(ab, ba) > 4 * p) {
      EXPECT_GT(r.wire.credit_messages(), credits_before) << "round " << round;
    }
  }
}

TEST(StreamSet, PhantomBytesReachTheReceiverAsTotalSize) {
  FakeRanks r(2, RingConfig{4, 128, 1});
  Exchange x({{-1, 10}, {-1, -1}}, 0);
  x.sends[0][0].data.phantom_bytes = 1000;
  ASSERT_TRUE(run(r, x));
  EXPECT_EQ(x.recvs[1][0].bytes, 10u);
  EXPECT_EQ(x.recvs[1][0].total_bytes, 1010u);
}

// Four ranks, every one sending to every one and to itself, sizes at random from empty to ten chunks, in six
// exchanges one after another; completions in order and interleaved at random across queue pairs.
TEST(StreamSet, SeveralPeersAndSelfAtOnceOverManyExchanges) {
  const RingConfig cfg{8, 256, 4};
  for (const bool reorder : {false, true})
    for (const uint32_t seed : {1u, 2u, 3u}) {
      FakeRanks r(4, cfg, seed, reorder);
      std::mt19937 rng(seed);
      for (int round = 0; round < 6; ++round) {
        std::vector<std::vector<long>> bytes(4, std::vector<long>(4));
        for (auto& row : bytes)
          for (long& b : row) b = static_cast<long>(rng() % (10 * cfg.payload_bytes() + 1));
        Exchange x(bytes, round);
        ASSERT_TRUE(run(r, x)) << "seed " << seed << ", round " << round;
        for (int d = 0; d < 4; ++d) x.check(d);
      }
    }
}

// A rank that finished an exchange starts the next while its peer is still in the first: the next exchange's
// chunks reach the peer early and wait for it, and credits keep flowing for both.
TEST(StreamSet, AMessageOfTheNextExchangeWaitsForIt) {
  const RingConfig cfg{4, 128, 2};
  const long p = cfg.payload_bytes();
  FakeRanks r(2, cfg, 5);
  Exchange first({{-1, 2 * p}, {p, -1}}, 0), second({{-1, 3 * p + 1}, {2, -1}}, 1);
  for (int k = 0; k < 2; ++k) r.sets[k]->start(tag_of(0), first.sends[k], first.recvs[k]);
  r.sets[1]->step();  // rank 1 posts its one chunk
  int steps = 0;
  while (!r.sets[0]->step()) ASSERT_LT(++steps, 100'000) << "rank 0 never finished the first exchange";
  r.sets[0]->start(tag_of(1), second.sends[0], second.recvs[0]);
  for (int i = 0; i < 50; ++i) r.sets[0]->step();  // its chunks land in rank 1's ring
  steps = 0;
  while (!r.sets[1]->step()) ASSERT_LT(++steps, 100'000) << "rank 1 never finished the first exchange";
  first.check(0);
  first.check(1);
  r.sets[1]->start(tag_of(1), second.sends[1], second.recvs[1]);
  std::vector<char> done(2, 0);
  for (steps = 0; !(done[0] && done[1]); ++steps) {
    ASSERT_LT(steps, 100'000) << "the second exchange never finished";
    for (int k = 0; k < 2; ++k)
      if (!done[k]) done[k] = r.sets[k]->step();
  }
  second.check(0);
  second.check(1);
}

TEST(StreamSet, AReceiveBufferTooSmallIsAnErrorNamingThePeer) {
  FakeRanks r(2, RingConfig{4, 128, 1});
  Exchange x({{-1, 100}, {-1, -1}}, 0, 0);
  x.recvs[1][0].data.capacity = 50;
  const std::string msg = error_of([&] { run(r, x); });
  EXPECT_NE(msg.find("verbs receive from rank 0: message of 100 bytes exceeds the 50-byte receive buffer"),
            std::string::npos)
      << msg;
  // The exchange did not finish: these streams carry no other.
  Exchange next({{-1, 1}, {1, -1}}, 1);
  EXPECT_NE(error_of([&] { r.sets[1]->start(tag_of(1), next.sends[1], next.recvs[1]); }).find("did not finish"),
            std::string::npos);

  FakeRanks s(2, RingConfig{4, 128, 1});
  Exchange self({{10, -1}, {-1, -1}}, 0, 0);
  self.recvs[0][0].data.capacity = 5;
  EXPECT_NE(error_of([&] { run(s, self); }).find("10 bytes from rank 0 to itself exceeds the 5-byte receive buffer"),
            std::string::npos);
}

TEST(StreamSet, ExchangesThatDoNotMatchAreRefused) {
  FakeRanks r(3, RingConfig{4, 128, 1});
  uint8_t b[8] = {};
  std::vector<PeerRecv> none;
  const std::vector<PeerSend> twice = {{1, ConstBuf{b, 8}}, {1, ConstBuf{b, 8}}};
  EXPECT_NE(error_of([&] { r.sets[0]->start(1, twice, none); }).find("two sends to rank 1"), std::string::npos);
  const std::vector<PeerSend> outside = {{3, ConstBuf{b, 8}}};
  EXPECT_NE(error_of([&] { r.sets[0]->start(1, outside, none); }).find("rank 3: no such rank (0..2)"),
            std::string::npos);
  const std::vector<PeerSend> self = {{0, ConstBuf{b, 8}}};
  EXPECT_NE(error_of([&] { r.sets[0]->start(1, self, none); }).find("posts no receive for it"), std::string::npos);
  // Ranks whose exchanges are out of step: rank 1 waits for another tag than rank 0 sends.
  Exchange x({{-1, 8, -1}, {-1, -1, -1}, {-1, -1, -1}}, 0);
  r.sets[0]->start(tag_of(0), x.sends[0], x.recvs[0]);
  r.sets[1]->start(tag_of(7), x.sends[1], x.recvs[1]);
  const std::string msg = error_of([&] {
    for (int i = 0; i < 10'000; ++i) r.sets[0]->step(), r.sets[1]->step();
  });
  EXPECT_NE(msg.find("verbs receive from rank 0: a message tagged"), std::string::npos) << msg;
  EXPECT_NE(msg.find("was due (the two ranks' exchanges are out of step)"), std::string::npos) << msg;
}

// ---- Through a TransportFabric, as --transport verbs runs it (run_exchange) ----

// A transport with nothing to send: a clock, and a progress() that may fail the domain (a peer's notice).
class IdleTransport final : public Transport {
 public:
  explicit IdleTransport(const WallClock& clock, std::function<void()> on_progress = {})
      : clock_(clock), on_progress_(std::move(on_progress)) {}
  TransportCaps caps() const override { return {}; }
  double now() const override { return clock_(); }
  void post_send(SendOp&, ConstBuf) override { throw std::logic_error("the verbs tests send nothing by message"); }
  void on_match(RecvOp&, Arrival&) override { throw std::logic_error("the verbs tests receive nothing by message"); }
  void progress() override {
    if (on_progress_) on_progress_();
  }

 private:
  const WallClock& clock_;
  std::function<void()> on_progress_;
};

Topology ranks_topology(int n) {
  ClusterSpec s = cluster_preset("h800-cx7");
  s.nodes = 1;
  s.gpus_per_node = n;
  return Topology(s);
}

// Rank `rank` of `world` as a process of its own holds it: a domain of that rank alone, its fabric.
struct OneRank {
  OneRank(int world, int rank, std::function<void()> on_progress = {})
      : topo(ranks_topology(world)),
        domain(world, 1, rank, make_thread_sync(clock), 60),
        transport(clock, std::move(on_progress)),
        fabric(domain, transport, rank, topo) {}
  WallClock clock;
  Topology topo;
  Domain domain;
  IdleTransport transport;
  TransportFabric fabric;
};

TEST(StreamSet, ADeadlineEndsTheWaitNamingWhatIsMissing) {
  const RingConfig cfg{4, 128, 2};
  FakeRanks r(2, cfg);
  OneRank one(2, 1);
  // Rank 0 never takes part: nothing comes from it, and past four chunks no credit comes back for the send.
  Exchange x({{-1, 10}, {20 * cfg.payload_bytes(), -1}}, 0);
  const std::string msg = error_of([&] {
    run_exchange(*r.sets[1], one.fabric, tag_of(0), x.sends[1], x.recvs[1], Deadline{one.fabric.now() + 0.05});
  });
  EXPECT_NE(msg.find("alltoallv over verbs: rank 1, tag "), std::string::npos) << msg;
  EXPECT_NE(msg.find("deadline passed (the caller's) with the messages from rank 0 not arrived and the messages to "
                     "rank 0 not completed"),
            std::string::npos)
      << msg;
}

TEST(StreamSet, APeersFailureNoticeReleasesTheWait) {
  FakeRanks r(2, RingConfig{4, 128, 2});
  int calls = 0;
  OneRank* self = nullptr;
  OneRank one(2, 1, [&] {
    if (++calls == 3) self->domain.fail("rank 0 failed: injected");
  });
  self = &one;
  Exchange x({{-1, 10}, {10, -1}}, 0);
  const std::string msg =
      error_of([&] { run_exchange(*r.sets[1], one.fabric, tag_of(0), x.sends[1], x.recvs[1], Deadline{}); });
  EXPECT_NE(msg.find("alltoallv over verbs: rank 1, tag "), std::string::npos) << msg;
  EXPECT_NE(msg.find("released: rank 0 failed: injected"), std::string::npos) << msg;
  EXPECT_EQ(calls, 3);
}

TEST(StreamSet, AWriteInTheWrongSlotIsAFabricErrorNamingRankAndPeer) {
  FakeRanks r(2, RingConfig{4, 128, 1});
  OneRank one(2, 1);
  Exchange x({{-1, 200}, {10, -1}}, 0);
  r.wire.misdirect_next(0, 1);  // rank 0's first chunk to rank 1 claims slot 1
  r.sets[0]->start(tag_of(0), x.sends[0], x.recvs[0]);
  for (int i = 0; i < 10; ++i) r.sets[0]->step();
  const std::string msg = error_of([&] {
    run_exchange(*r.sets[1], one.fabric, tag_of(0), x.sends[1], x.recvs[1], Deadline{one.fabric.now() + 10});
  });
  EXPECT_NE(msg.find("alltoallv over verbs: rank 1, tag "), std::string::npos) << msg;
  EXPECT_NE(msg.find("phase setup: verbs receive from rank 0, ring slot 1: written out of order (the next write "
                     "must land in slot 0)"),
            std::string::npos)
      << msg;
}

// Four ranks on threads of one domain, each waiting in run_exchange as a process would, the wire shared.
TEST(StreamSet, RanksOnThreadsExchangeThroughTheirFabrics) {
  const RingConfig cfg{4, 256, 2};
  const int n = 4;
  FakeRanks r(n, cfg, 9);
  std::mt19937 rng(9);
  std::vector<Exchange> xs;
  for (int round = 0; round < 5; ++round) {
    std::vector<std::vector<long>> bytes(n, std::vector<long>(n));
    for (auto& row : bytes)
      for (long& b : row) b = static_cast<long>(rng() % (12 * cfg.payload_bytes()));
    xs.emplace_back(bytes, round);
  }
  const Topology topo = ranks_topology(n);
  launch_thread_ranks(topo, 60, [&](Domain& domain, const WallClock& clock, int rank) {
    IdleTransport t(clock);
    TransportFabric f(domain, t, rank, topo);
    for (Exchange& x : xs) run_exchange(*r.sets[rank], f, tag_of(x.round), x.sends[rank], x.recvs[rank], Deadline{});
  });
  for (const Exchange& x : xs)
    for (int d = 0; d < n; ++d) x.check(d);
}

}  // namespace
}  // namespace eplab::verbs
