// One suite written against the Fabric interface, instantiated for every backend this build has: message
// matching by peer and tag, zero-byte messages, many outstanding requests, all-to-all-v, barriers, deadlines
// that expire, withdrawn receives, phantom payloads, memory kinds, and errors that name rank, peer and tag.
// Tests are skipped by capability. The mpi instances run under `mpirun -n 4` (ctest's fabric_conformance_mpi);
// started alone, they skip.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <numeric>
#include <thread>

#include "engine/backend.hpp"

namespace eplab {
namespace {

// A gather send: `head_bytes` bytes in `head`, then `count` rows of `row_bytes` that lie in `pool` `gap` bytes
// apart and in reverse order; byte k of the message is byte(k). `rows` lists the rows.
template <class Byte>
ConstBuf gather_send(size_t head_bytes, size_t count, size_t row_bytes, size_t gap, const Byte& byte,
                     std::vector<uint8_t>& head, std::vector<uint8_t>& pool, std::vector<const uint8_t*>& rows) {
  head.resize(head_bytes + 1);  // never empty, so data() is an address to compare
  for (size_t k = 0; k < head_bytes; ++k) head[k] = byte(k);
  pool.assign(count * (row_bytes + gap), 0);
  rows.clear();
  for (size_t r = 0; r < count; ++r) {
    uint8_t* at = pool.data() + (count - 1 - r) * (row_bytes + gap);
    for (size_t k = 0; k < row_bytes; ++k) at[k] = byte(head_bytes + r * row_bytes + k);
    rows.push_back(at);
  }
  ConstBuf d{head.data(), head_bytes + count * row_bytes};
  d.gather = RowGather{rows.data(), count, row_bytes};
  return d;
}

class FabricConformance : public ::testing::TestWithParam<std::string> {
 protected:
  // A backend built here whose hardware is absent (real without a GPU), or whose process launcher started a
  // different number of ranks than the suite's four, is skipped visibly, not failed.
  void SetUp() override {
    auto backend = create_backend(GetParam());
    if (const std::string why = backend->unavailable(); !why.empty()) GTEST_SKIP() << why;
    if (const int n = backend->fixed_world_size(); n >= 0 && n != 4)
      GTEST_SKIP() << "backend '" << GetParam() << "' runs one rank per process and this process's launcher started "
                   << n << "; the suite needs mpirun -n 4 (ctest runs fabric_conformance_mpi)";
  }
  // 2 nodes x 2 GPUs unless a test asks otherwise (and skips launchers fixed at four ranks).
  void run(const std::function<void(Fabric&)>& fn, int nodes = 2, int gpus = 2) {
    ClusterSpec spec = cluster_preset("h800-cx7");
    spec.nodes = nodes;
    spec.gpus_per_node = gpus;
    auto backend = create_backend(GetParam());
    LaunchOptions opts;
    opts.timeout_s = 20;
    backend->launch(Topology(spec), opts, fn);
  }
};

TEST_P(FabricConformance, MatchesByPeerAndTagNotArrivalOrder) {
  run([](Fabric& f) {
    const int me = f.rank(), n = f.size();
    // Every rank sends tag 1 then tag 2 to its right neighbour; receives tag 2 first from its left one.
    const int right = (me + 1) % n, left = (me + n - 1) % n;
    int a = 100 + me, b = 200 + me, got_a = -1, got_b = -1;
    std::vector<Request> reqs;
    reqs.push_back(f.irecv(left, 2, MutBuf{&got_b, sizeof got_b}));
    reqs.push_back(f.isend(right, 1, ConstBuf{&a, sizeof a}));
    reqs.push_back(f.isend(right, 2, ConstBuf{&b, sizeof b}));
    reqs.push_back(f.irecv(left, 1, MutBuf{&got_a, sizeof got_a}));
    f.wait_all(reqs, Deadline{});
    EXPECT_EQ(got_a, 100 + left);
    EXPECT_EQ(got_b, 200 + left);
    EXPECT_EQ(reqs[0].bytes(), sizeof(int));
  });
}

// Messages that reach a rank before it posts their receives: large ones (past any eager limit: on mpi they wait
// in MPI until the receive comes, then land in its buffer), a small one, and two with one tag that must keep
// their order; receives posted in another order than the sends, every byte checked.
TEST_P(FabricConformance, MessagesSentBeforeTheirReceivesArriveWholeAndInOrder) {
  run([](Fabric& f) {
    if (f.rank() > 1) {
      f.barrier();
      return;
    }
    const size_t sizes[] = {size_t{3} << 20, 100000, 3, 70000, 50000};  // tags 1, 2, 3, then tag 4 twice
    const Tag tags[] = {1, 2, 3, 4, 4};
    auto fill = [](size_t i, size_t k) { return static_cast<uint8_t>((i * 131 + k * 7 + (k >> 9)) & 0xFF); };
    if (f.rank() == 1) {
      std::vector<std::vector<uint8_t>> bufs;
      std::vector<Request> sends;
      for (size_t i = 0; i < std::size(sizes); ++i) {
        bufs.emplace_back(sizes[i]);
        for (size_t k = 0; k < sizes[i]; ++k) bufs[i][k] = fill(i, k);
        sends.push_back(f.isend(0, tags[i], ConstBuf{bufs[i].data(), sizes[i]}));
      }
      f.barrier();
      f.wait_all(sends, Deadline{});
      return;
    }
    f.barrier();  // every message has been sent, none of its receives posted
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::vector<std::vector<uint8_t>> got(std::size(sizes));
    std::vector<Request> reqs(std::size(sizes));
    for (size_t i : {2, 0, 3, 4, 1}) {  // receive buffers larger than the messages: sizes come from the sender
      got[i].assign(sizes[i] + 64, 0xEE);
      reqs[i] = f.irecv(1, tags[i], MutBuf{got[i].data(), got[i].size()});
    }
    f.wait_all(reqs, Deadline{});
    for (size_t i = 0; i < std::size(sizes); ++i) {
      ASSERT_EQ(reqs[i].bytes(), sizes[i]) << "message " << i;
      size_t wrong = 0;
      for (size_t k = 0; k < sizes[i]; ++k) wrong += got[i][k] != fill(i, k);
      EXPECT_EQ(wrong, 0u) << "message " << i << " of " << sizes[i] << " bytes";
      EXPECT_EQ(got[i][sizes[i]], 0xEE) << "message " << i << " wrote past its bytes";
    }
  });
}

TEST_P(FabricConformance, SameTagFromTwoPeersStaysApart) {
  run([](Fabric& f) {
    if (f.rank() == 0) {
      int x1 = -1, x2 = -1;
      std::vector<Request> reqs{f.irecv(2, 7, MutBuf{&x2, 4}), f.irecv(1, 7, MutBuf{&x1, 4})};
      f.wait_all(reqs, Deadline{});
      EXPECT_EQ(x1, 11);
      EXPECT_EQ(x2, 22);
    } else if (f.rank() <= 2) {
      int v = f.rank() * 11;
      std::vector<Request> reqs{f.isend(0, 7, ConstBuf{&v, 4})};
      f.wait_all(reqs, Deadline{});
    }
  });
}

TEST_P(FabricConformance, ZeroByteMessagesComplete) {
  run([](Fabric& f) {
    const int peer = f.rank() ^ 1;
    std::vector<Request> reqs{f.irecv(peer, 5, MutBuf{nullptr, 0}), f.isend(peer, 5, ConstBuf{nullptr, 0})};
    f.wait_all(reqs, Deadline{});
    EXPECT_TRUE(reqs[0].done());
    EXPECT_EQ(reqs[0].bytes(), 0u);
  });
}

TEST_P(FabricConformance, ManyOutstandingRequests) {
  run([](Fabric& f) {
    constexpr int kPerPeer = 64;
    const int n = f.size(), me = f.rank();
    std::vector<int> out(static_cast<size_t>(n) * kPerPeer), in(static_cast<size_t>(n) * kPerPeer, -1);
    std::vector<Request> reqs;
    for (int p = 0; p < n; ++p)
      for (int i = 0; i < kPerPeer; ++i) {
        out[p * kPerPeer + i] = me * 100000 + p * 1000 + i;
        reqs.push_back(f.irecv(p, 1000 + i, MutBuf{&in[p * kPerPeer + i], 4}));
      }
    for (int p = n - 1; p >= 0; --p)
      for (int i = kPerPeer - 1; i >= 0; --i) reqs.push_back(f.isend(p, 1000 + i, ConstBuf{&out[p * kPerPeer + i], 4}));
    f.wait_all(reqs, Deadline{});
    for (int p = 0; p < n; ++p)
      for (int i = 0; i < kPerPeer; ++i) EXPECT_EQ(in[p * kPerPeer + i], p * 100000 + me * 1000 + i);
  });
}

TEST_P(FabricConformance, AllToAllVDeliversEveryPairIncludingSelf) {
  if (create_backend(GetParam())->fixed_world_size() >= 0) GTEST_SKIP() << "needs 8 ranks; the launcher has 4";
  run(
      [](Fabric& f) {
        const int n = f.size(), me = f.rank();
        std::vector<std::vector<uint8_t>> out(n), in(n);
        std::vector<PeerSend> sends;
        std::vector<PeerRecv> recvs;
        for (int p = 0; p < n; ++p) {
          out[p].assign(static_cast<size_t>((me * 7 + p * 3) % 11) * 100, static_cast<uint8_t>(me * 16 + p));
          sends.push_back({p, ConstBuf{out[p].data(), out[p].size()}});
          in[p].assign(2000, 0xFF);
          recvs.push_back({p, MutBuf{in[p].data(), in[p].size()}});
        }
        f.alltoallv(42, sends, recvs, Deadline{});
        for (int p = 0; p < n; ++p) {
          const size_t want = static_cast<size_t>((p * 7 + me * 3) % 11) * 100;
          ASSERT_EQ(recvs[p].bytes, want) << "from " << p;
          for (size_t i = 0; i < want; ++i) ASSERT_EQ(in[p][i], static_cast<uint8_t>(p * 16 + me));
        }
      },
      2, 4);
}

// alltoallv_consume where a fabric offers it: every pair's message read where its sender holds it (the very
// address it sent from), whole; elsewhere it is refused with the reason.
TEST_P(FabricConformance, ConsumeInPlaceReadsEveryMessageWhereItsSenderHoldsIt) {
  if (create_backend(GetParam())->fixed_world_size() >= 0) GTEST_SKIP() << "needs 8 ranks; the launcher has 4";
  constexpr int kRanks = 8;
  std::vector<const uint8_t*> sent_at(kRanks * kRanks, nullptr);  // [src * n + dst], written before any send
  run(
      [&](Fabric& f) {
        const int n = f.size(), me = f.rank();
        std::vector<std::vector<uint8_t>> out(n);
        std::vector<PeerSend> sends;
        std::vector<PeerConsume> recvs;
        for (int p = 0; p < n; ++p) {
          out[p].assign(static_cast<size_t>((me * 7 + p * 3) % 11) * 100 + 1, static_cast<uint8_t>(me * 16 + p));
          sent_at[static_cast<size_t>(me) * n + p] = out[p].data();
          sends.push_back({p, ConstBuf{out[p].data(), out[p].size()}});
          recvs.push_back({n - 1 - p, 2000});  // any order the caller likes
        }
        if (!f.caps().consume_in_place) {
          try {
            f.alltoallv_consume(43, sends, recvs, [] {}, Deadline{});
            ADD_FAILURE() << "alltoallv_consume ran without Caps::consume_in_place";
          } catch (const FabricError& e) {
            EXPECT_NE(std::string(e.what()).find("consume_in_place"), std::string::npos) << e.what();
          }
          return;
        }
        f.barrier();  // every rank's addresses are written
        int consumed = 0;
        f.alltoallv_consume(
            43, sends, recvs,
            [&] {
              ++consumed;
              for (const PeerConsume& r : recvs) {
                const size_t want = static_cast<size_t>((r.peer * 7 + me * 3) % 11) * 100 + 1;
                ASSERT_EQ(r.bytes, want) << "from " << r.peer;
                EXPECT_EQ(r.data, sent_at[static_cast<size_t>(r.peer) * n + me]) << "from " << r.peer << ": copied";
                for (size_t i = 0; i < want; ++i) ASSERT_EQ(r.data[i], static_cast<uint8_t>(r.peer * 16 + me));
              }
            },
            Deadline{});
        EXPECT_EQ(consumed, 1);
        for (const PeerConsume& r : recvs) EXPECT_EQ(r.data, nullptr) << "valid only inside consume";
      },
      2, 4);
}

// A gather send (RowGather) consumed in place: a receive that takes gathers gets the sender's head and its rows'
// very addresses where ranks share an address space (elsewhere it may get the message contiguous); one that does
// not gets the same bytes contiguous.
TEST_P(FabricConformance, ConsumeInPlaceHandsOverGatherSends) {
  const bool one_process = create_backend(GetParam())->in_process();
  constexpr size_t kRow = 300;
  auto byte = [](int src, int dst, size_t k) { return static_cast<uint8_t>((src * 41 + dst * 13 + k * 7) & 0xFF); };
  auto head_size = [](int src, int dst) { return static_cast<size_t>((src + 3 * dst) % 4 * 5); };  // may be empty
  auto row_count = [](int src, int dst) { return static_cast<size_t>((2 * src + dst) % 3 + 1); };
  std::vector<const uint8_t*> first_row(64 * 64, nullptr);  // [src * n + dst], written before any send
  run([&](Fabric& f) {
    if (!f.caps().consume_in_place) return;
    const int n = f.size(), me = f.rank();
    std::vector<std::vector<uint8_t>> head(n), pool(n);
    std::vector<std::vector<const uint8_t*>> rows(n);
    std::vector<PeerSend> sends;
    std::vector<PeerConsume> recvs;
    for (int p = 0; p < n; ++p) {
      const auto b = [&](size_t k) { return byte(me, p, k); };
      sends.push_back({p, gather_send(head_size(me, p), row_count(me, p), kRow, 64, b, head[p], pool[p], rows[p])});
      recvs.push_back(PeerConsume{p, 2000, p % 2 == 0});
      first_row[static_cast<size_t>(me) * n + p] = rows[p][0];
    }
    f.barrier();  // every rank's addresses are written
    f.alltoallv_consume(
        45, sends, recvs,
        [&] {
          for (const PeerConsume& r : recvs) {
            const size_t h = head_size(r.peer, me), count = row_count(r.peer, me), want = h + count * kRow;
            ASSERT_EQ(r.bytes, want) << "from " << r.peer;
            const bool gathered = r.gather.count > 0;
            if (r.takes_gather && one_process) {
              ASSERT_TRUE(gathered) << "from " << r.peer << ": made contiguous";
            }
            std::vector<uint8_t> got(r.data, r.data + (gathered ? h : want));
            if (gathered) {
              ASSERT_TRUE(r.takes_gather) << "from " << r.peer << ": a receive that takes no gathers got one";
              ASSERT_EQ(r.gather.count, count) << "from " << r.peer;
              ASSERT_EQ(r.gather.row_bytes, kRow) << "from " << r.peer;
              EXPECT_EQ(r.gather.rows[0], first_row[static_cast<size_t>(r.peer) * n + me]) << "from " << r.peer;
              for (size_t i = 0; i < count; ++i) got.insert(got.end(), r.gather.rows[i], r.gather.rows[i] + kRow);
            }
            size_t wrong = 0;
            for (size_t k = 0; k < want; ++k) wrong += got[k] != byte(r.peer, me, k);
            EXPECT_EQ(wrong, 0u) << "from " << r.peer << (gathered ? ", gathered" : ", contiguous");
          }
        },
        Deadline{});
    for (const PeerConsume& r : recvs) EXPECT_EQ(r.gather.count, 0u) << "valid only inside consume";
  });
}

// A message larger than its consuming receive's capacity fails that receive, and its sender is not left waiting.
TEST_P(FabricConformance, ConsumeInPlaceOversizedMessageIsAnError) {
  run([](Fabric& f) {
    if (!f.caps().consume_in_place || f.rank() > 1) return;
    std::vector<uint8_t> big(64, 1);
    const int other = 1 - f.rank();
    std::vector<PeerSend> sends;
    std::vector<PeerConsume> recvs{{other, f.rank() == 1 ? size_t{16} : size_t{64}}};
    if (f.rank() == 0) sends.push_back({other, ConstBuf{big.data(), big.size()}});
    if (f.rank() == 1) sends.push_back({other, ConstBuf{big.data(), 8}});
    bool ran = false;
    if (f.rank() == 1) {
      EXPECT_THROW(f.alltoallv_consume(44, sends, recvs, [&] { ran = true; }, Deadline{}), FabricError);
      EXPECT_FALSE(ran);
    } else {
      f.alltoallv_consume(
          44, sends, recvs, [&] { ran = recvs[0].bytes == 8; }, Deadline{});
      EXPECT_TRUE(ran);
    }
  });
}

// Gather sends (RowGather): a head followed by rows taken from scattered places arrives as the contiguous
// message, through alltoallv (receives posted first) and through isend before the receive is posted (the bytes
// wait in the fabric). Backends without Caps::gather_send make the message contiguous first; the bytes are the same.
TEST_P(FabricConformance, GatherSendsArriveAsTheContiguousMessage) {
  run([](Fabric& f) {
    const int n = f.size(), me = f.rank();
    constexpr size_t kRow = 4096 + 24;  // rows that do not fall on 32-byte blocks after an odd head
    auto byte = [](int src, int dst, size_t k) {
      return static_cast<uint8_t>((src * 37 + dst * 11 + k * 13 + (k >> 8)) & 0xFF);
    };
    // Rank me's message to p: head of (me + p) % 5 * 7 + 1 bytes, then 1 + (me + 2 * p) % 4 rows; the rows lie
    // in `pool` in reverse order, apart from each other.
    std::vector<std::vector<uint8_t>> head(n), pool(n), in(n), late(n);
    std::vector<std::vector<const uint8_t*>> rows(n);
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    auto want_size = [&](int src, int dst) {
      return static_cast<size_t>((src + dst) % 5 * 7 + 1) + static_cast<size_t>(1 + (src + 2 * dst) % 4) * kRow;
    };
    for (int p = 0; p < n; ++p) {
      const size_t h = static_cast<size_t>((me + p) % 5 * 7 + 1), count = static_cast<size_t>(1 + (me + 2 * p) % 4);
      const auto b = [&](size_t k) { return byte(me, p, k); };
      sends.push_back({p, gather_send(h, count, kRow, 100, b, head[p], pool[p], rows[p])});
      in[p].assign(want_size(p, me) + 16, 0xEE);
      recvs.push_back({p, MutBuf{in[p].data(), in[p].size()}});
    }
    f.alltoallv(7, sends, recvs, Deadline{});
    // The same messages again, sent before their receives are posted.
    std::vector<Request> reqs;
    for (int p = 0; p < n; ++p) reqs.push_back(f.isend(p, 8, sends[p].data));
    f.barrier();
    for (int p = 0; p < n; ++p) {
      late[p].assign(want_size(p, me), 0);
      reqs.push_back(f.irecv(p, 8, MutBuf{late[p].data(), late[p].size()}));
    }
    f.wait_all(reqs, Deadline{});
    for (int p = 0; p < n; ++p) {
      const size_t want = want_size(p, me);
      ASSERT_EQ(recvs[p].bytes, want) << "from " << p;
      ASSERT_EQ(reqs[n + p].bytes(), want) << "from " << p << ", sent before its receive";
      size_t wrong = 0, wrong_late = 0;
      for (size_t k = 0; k < want; ++k) {
        wrong += in[p][k] != byte(p, me, k);
        wrong_late += late[p][k] != byte(p, me, k);
      }
      EXPECT_EQ(wrong, 0u) << "from " << p;
      EXPECT_EQ(wrong_late, 0u) << "from " << p << ", sent before its receive";
      EXPECT_EQ(in[p][want], 0xEE) << "from " << p << ": wrote past the message";
    }
  });
}

// Messages of every size from one byte to a megabyte (either side of any size at which a transport changes
// how it moves them), contiguous and gathered from up to 3000 rows that lie apart (more pieces than one
// process_vm_readv call takes), each with its receive posted before it is sent and again after it arrived.
TEST_P(FabricConformance, MessagesOfEverySizeAndShapeArriveWhole) {
  run([](Fabric& f) {
    if (f.rank() > 1) {
      f.barrier();
      f.barrier();
      return;
    }
    const int peer = 1 - f.rank();
    const size_t sizes[] = {1, 100, 4095, 4096, 4097, 16383, 16384, 16385, 65536, 100003, size_t{1} << 20};
    constexpr size_t kRow = 56;  // at most 3000 rows a message: the rest of a larger one is its head
    auto byte = [](int src, size_t m, size_t k) {
      return static_cast<uint8_t>((src * 71 + m * 29 + k * 7 + (k >> 11)) & 0xFF);
    };
    const size_t n = std::size(sizes) * 2;  // message m: sizes[m / 2], gathered when m is odd
    std::vector<std::vector<uint8_t>> out(n), pool(n), early(n), late(n);
    std::vector<std::vector<const uint8_t*>> rows(n);
    std::vector<ConstBuf> bufs(n);
    for (size_t m = 0; m < n; ++m) {
      const size_t size = sizes[m / 2];
      out[m].resize(size);
      for (size_t k = 0; k < size; ++k) out[m][k] = byte(f.rank(), m, k);
      bufs[m] = ConstBuf{out[m].data(), size};
      if (m % 2 == 0 || size < kRow) continue;
      // Head of size % kRow bytes, then the rows, each copied to its own place 8 bytes apart, in reverse order.
      const size_t count = std::min<size_t>(size / kRow, 3000), head = size - count * kRow;
      pool[m].assign(count * (kRow + 8), 0);
      rows[m].resize(count);
      for (size_t r = 0; r < count; ++r) {
        uint8_t* at = pool[m].data() + (count - 1 - r) * (kRow + 8);
        std::memcpy(at, out[m].data() + head + r * kRow, kRow);
        rows[m][r] = at;
      }
      bufs[m].gather = RowGather{rows[m].data(), count, kRow};
    }
    auto check = [&](const std::vector<std::vector<uint8_t>>& got, const std::vector<Request>& reqs, const char* when) {
      for (size_t m = 0; m < n; ++m) {
        const size_t size = sizes[m / 2];
        ASSERT_EQ(reqs[m].bytes(), size) << "message " << m << when;
        size_t wrong = 0;
        for (size_t k = 0; k < size; ++k) wrong += got[m][k] != byte(peer, m, k);
        EXPECT_EQ(wrong, 0u) << "message " << m << " of " << size << " bytes" << (m % 2 ? ", gathered" : "") << when;
        EXPECT_EQ(got[m][size], 0xEE) << "message " << m << " wrote past its bytes" << when;
      }
    };
    std::vector<Request> recvs, sends;
    for (size_t m = 0; m < n; ++m) {
      early[m].assign(sizes[m / 2] + 1, 0xEE);
      recvs.push_back(f.irecv(peer, 100 + m, MutBuf{early[m].data(), early[m].size()}));
    }
    f.barrier();  // every receive posted before its message is sent
    for (size_t m = 0; m < n; ++m) sends.push_back(f.isend(peer, 100 + m, bufs[m]));
    f.wait_all(recvs, Deadline{});
    check(early, recvs, ", receive posted first");
    f.wait_all(sends, Deadline{});
    // The same messages sent before their receives are posted.
    sends.clear();
    recvs.clear();
    for (size_t m = 0; m < n; ++m) sends.push_back(f.isend(peer, 200 + m, bufs[m]));
    f.barrier();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (size_t m = n; m-- > 0;) {
      late[m].assign(sizes[m / 2] + 1, 0xEE);
      recvs.push_back(f.irecv(peer, 200 + m, MutBuf{late[m].data(), late[m].size()}));
    }
    std::reverse(recvs.begin(), recvs.end());
    f.wait_all(recvs, Deadline{});
    check(late, recvs, ", sent before its receive");
    f.wait_all(sends, Deadline{});
  });
}

TEST_P(FabricConformance, BarrierHoldsEveryoneUntilAllArrive) {
  // Where the ranks share this process, nobody leaves before every rank has counted itself in.
  if (create_backend(GetParam())->in_process()) {
    std::atomic<int> arrived{0};
    run([&](Fabric& f) {
      arrived.fetch_add(1);
      f.barrier();
      EXPECT_EQ(arrived.load(), f.size());
      f.barrier();
    });
  }
  // Across processes too: rank 0 arrives 0.4 s late, on the wall clock and on a modeled one; nobody may leave
  // within 0.19 s of the start. The ranks start together (a first barrier), so a thread or process that started
  // late on a loaded machine does not shift its own clock's start; the margin absorbs a rank descheduled after it.
  run([&](Fabric& f) {
    f.barrier();
    const double t0 = f.now();
    if (f.rank() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(400));
      ComputeCost late;
      late.fixed_s = 0.4;
      f.compute(late);
    }
    f.barrier();
    EXPECT_GE(f.now() - t0, 0.19) << "rank " << f.rank();
    f.barrier();
  });
}

TEST_P(FabricConformance, DroppedReceiveIsWithdrawnAndTheMessageGoesToTheNextOne) {
  run([](Fabric& f) {
    if (f.rank() > 1) return f.barrier();
    int second = -1, value = 42;
    if (f.rank() == 0) {
      {
        auto first = std::make_unique<int>(-1);
        Request dropped = f.irecv(1, 7, MutBuf{first.get(), sizeof(int)});
        // `dropped` goes out of scope unmatched, then its buffer is freed.
      }
      std::vector<Request> reqs{f.irecv(1, 7, MutBuf{&second, sizeof second})};
      f.barrier();
      f.wait_all(reqs, Deadline{});
      EXPECT_EQ(second, 42);
    } else {
      f.barrier();
      std::vector<Request> sends{f.isend(0, 7, ConstBuf{&value, sizeof value})};
      f.wait_all(sends, Deadline{});
    }
  });
}

TEST_P(FabricConformance, DroppingOneHandleOfAReceiveKeepsIt) {
  run([](Fabric& f) {
    if (f.rank() > 1) {
      f.barrier();
      f.barrier();
      return;
    }
    int got = -1, value = 5;
    if (f.rank() == 0) {
      Request r = f.irecv(1, 3, MutBuf{&got, sizeof got});
      f.barrier();
      f.barrier();  // the message has been sent (and, in one process, matched)
      std::vector<Request> still{r};
      r = Request();
      f.wait_all(still, Deadline{});
      EXPECT_EQ(got, 5);
    } else {
      f.barrier();
      std::vector<Request> sends{f.isend(0, 3, ConstBuf{&value, sizeof value})};
      f.wait_all(sends, Deadline{});
      f.barrier();
    }
  });
}

TEST_P(FabricConformance, PhantomBytesAreChargedWhereAcceptedAndRefusedElsewhere) {
  run([](Fabric& f) {
    const int peer = f.rank() ^ 1;
    int x = f.rank(), got = -1;
    const ConstBuf with_phantom{&x, sizeof x, 1000};
    if (!f.caps().phantom_payload) {
      EXPECT_THROW(f.isend(peer, 9, with_phantom), FabricError);
      return;
    }
    std::vector<Request> reqs{f.irecv(peer, 9, MutBuf{&got, sizeof got}), f.isend(peer, 9, with_phantom)};
    f.wait_all(reqs, Deadline{});
    EXPECT_EQ(got, peer);
    EXPECT_EQ(reqs[0].bytes(), sizeof x);
    EXPECT_EQ(reqs[0].total_bytes(), sizeof x + 1000);
  });
}

TEST_P(FabricConformance, MemoryKindsFollowTheCaps) {
  run([](Fabric& f) {
    std::vector<uint8_t> host(256);
    const MemoryRegion r = f.register_memory(host.data(), host.size(), MemoryKind::kHost);
    EXPECT_EQ(r.ptr, host.data());
    EXPECT_EQ(r.bytes, host.size());
    f.deregister_memory(r);
    if (!f.caps().device_memory) {
      EXPECT_THROW(f.register_memory(host.data(), host.size(), MemoryKind::kDevice), FabricError);
    }
  });
}

TEST_P(FabricConformance, DeadlineExpiresWithContext) {
  run([](Fabric& f) {
    if (f.rank() != 1) return;
    int x = 0;
    std::vector<Request> reqs{f.irecv(0, 99, MutBuf{&x, 4})};
    f.set_phase("conformance");
    try {
      f.wait_all(reqs, Deadline::after(f, 0.05));
      ADD_FAILURE() << "a receive nobody sends must not complete";
    } catch (const FabricError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("rank 1"), std::string::npos) << m;
      EXPECT_NE(m.find("peer 0"), std::string::npos) << m;
      EXPECT_NE(m.find("conformance"), std::string::npos) << m;
    }
  });
}

TEST_P(FabricConformance, OversizedMessageIsAnErrorNotAnOverflow) {
  run([](Fabric& f) {
    if (f.rank() > 1) return;
    std::vector<uint8_t> big(64, 1), small(16, 0);
    if (f.rank() == 0) {
      std::vector<Request> reqs{f.isend(1, 3, ConstBuf{big.data(), big.size()})};
      f.wait_all(reqs, Deadline{});
    } else {
      std::vector<Request> reqs{f.irecv(0, 3, MutBuf{small.data(), small.size()})};
      EXPECT_THROW(f.wait_all(reqs, Deadline{}), FabricError);
      for (uint8_t b : small) EXPECT_EQ(b, 0);
    }
  });
}

TEST_P(FabricConformance, PeerOutOfRangeIsRejected) {
  run([](Fabric& f) {
    int x = 0;
    EXPECT_THROW(f.isend(f.size(), 1, ConstBuf{&x, 4}), FabricError);
    EXPECT_THROW(f.irecv(-1, 1, MutBuf{&x, 4}), FabricError);
  });
}

TEST_P(FabricConformance, RankFailureReachesTheLauncher) {
  EXPECT_THROW(run([](Fabric& f) {
                 if (f.rank() == 2) throw EplabError("rank 2 gives up");
                 f.barrier();  // the others must be released, not hang
               }),
               EplabError);
}

std::vector<std::string> real_byte_backends() {
  std::vector<std::string> out;
  for (auto& n : backend_names())
    if (create_backend(n)->caps().real_payload) out.push_back(n);
  return out;
}

INSTANTIATE_TEST_SUITE_P(EveryBackend, FabricConformance, ::testing::ValuesIn(real_byte_backends()),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace eplab
