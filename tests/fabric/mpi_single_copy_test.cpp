// The mpi transport's single copy between processes of one machine (mpi/mpi_transport.cpp), where the shared
// conformance suite cannot look: that it is on where it should be, and that neither side of a send can leave the
// other reading memory that is gone or waiting for ever. Runs under `mpirun -n 2` (ctest's mpi_single_copy);
// with EPLAB_MPI_CMA=0 it checks that the path is off.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/backend.hpp"

namespace eplab {
namespace {

bool forced_off() {
  const char* e = std::getenv("EPLAB_MPI_CMA");
  return e && std::string(e) == "0";
}

class MpiSingleCopy : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const int n = create_backend("mpi")->fixed_world_size(); n != 2)
      GTEST_SKIP() << "needs mpirun -n 2 (ctest runs mpi_single_copy); this launcher started " << n;
  }
  void run(const std::function<void(Fabric&)>& fn) {
    ClusterSpec spec = cluster_preset("h800-cx7");
    spec.nodes = 1;
    spec.gpus_per_node = 2;
    LaunchOptions opts;
    opts.timeout_s = 20;
    create_backend("mpi")->launch(Topology(spec), opts, fn);
  }
  // A consuming exchange of `bytes` from this rank to each of the two (byte(src, dst, i) at i), sent from `out`.
  struct Exchange {
    std::vector<std::vector<uint8_t>> out = std::vector<std::vector<uint8_t>>(2);
    std::vector<PeerSend> sends;
    std::vector<PeerConsume> recvs;
  };
  static Exchange exchange(int me, size_t bytes, uint8_t (*byte)(int, int, size_t), bool pull) {
    Exchange x;
    for (int p = 0; p < 2; ++p) {
      for (size_t i = 0; i < bytes; ++i) x.out[p].push_back(byte(me, p, i));
      x.sends.push_back({p, ConstBuf{x.out[p].data(), bytes}});
      x.recvs.push_back({p, bytes});
      x.recvs.back().takes_pull = pull;
    }
    return x;
  }
};

// Both processes run on this machine, where process_vm_readv works as root: the transport takes gather sends
// (it moves their rows itself), unless EPLAB_MPI_CMA=0 sends every message through MPI.
TEST_F(MpiSingleCopy, OnBetweenProcessesOfOneMachineUnlessTurnedOff) {
  run([](Fabric& f) { EXPECT_EQ(f.caps().gather_send, !forced_off()) << "rank " << f.rank(); });
}

// A send dropped before its receiver read it (its rank unwinding): the receiver holds its header, is told to
// leave the bytes, and a receive that later matches the message fails saying so, instead of reading the
// sender's buffer, which was overwritten meanwhile.
TEST_F(MpiSingleCopy, DroppedSendIsWithdrawnNotReadLater) {
  if (forced_off()) GTEST_SKIP() << "single copy turned off";
  run([](Fabric& f) {
    std::vector<uint8_t> buf(size_t{1} << 20, 0xAB);
    if (f.rank() == 1) {
      { Request dropped = f.isend(0, 9, ConstBuf{buf.data(), buf.size()}); }
      std::fill(buf.begin(), buf.end(), 0xCD);
      f.barrier();
      return;
    }
    f.barrier();  // rank 0 takes in the header while it waits here, then the withdrawal
    try {
      std::vector<Request> reqs{f.irecv(1, 9, MutBuf{buf.data(), buf.size()})};
      f.wait_all(reqs, Deadline{});
      ADD_FAILURE() << "a withdrawn message was received; its first byte is " << int{buf[0]};
    } catch (const FabricError& e) {
      EXPECT_NE(std::string(e.what()).find("withdrew"), std::string::npos) << e.what();
    }
    EXPECT_EQ(buf[0], 0xAB) << "the receive buffer was written";
  });
}

// A message its receiver took in but never received (its rank returned without posting the receive): the
// receiver lets it go as its launch ends, and the sender's send completes rather than waiting for ever.
TEST_F(MpiSingleCopy, UnreadMessageReleasesItsSenderWhenTheReceiverLeaves) {
  if (forced_off()) GTEST_SKIP() << "single copy turned off: through MPI the send waits for its receive";
  run([](Fabric& f) {
    std::vector<uint8_t> buf(size_t{1} << 20, 0x5A);
    if (f.rank() == 0) {
      f.barrier();  // takes in rank 1's header, then returns without receiving it
      return;
    }
    std::vector<Request> sends{f.isend(0, 4, ConstBuf{buf.data(), buf.size()})};
    f.barrier();
    EXPECT_NO_THROW(f.wait_all(sends, Deadline::after(f, 10)));
  });
}

// A launch can end with a message of its own still on the way: here rank 1 sends one after rank 0 has left.
// It must not reach the next launch, where MPI would take it for one of that launch's messages and hold the
// real one back (mpi/mpi_transport.cpp, g_launch_comms). Single copy on or off: the late message is small, so
// it goes through MPI and its send completes unreceived.
TEST_F(MpiSingleCopy, LateMessageOfAnEndedLaunchStaysOutOfTheNext) {
  run([](Fabric& f) {
    if (f.rank() == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    uint8_t late = 1;
    std::vector<Request> send{f.isend(0, 5, ConstBuf{&late, 1})};
    f.wait_all(send, Deadline::after(f, 10));
  });
  run([](Fabric& f) {
    std::vector<uint8_t> got(4, 0), sent = {7, 8, 9, 10};
    std::vector<Request> reqs;
    for (int i = 0; i < 4; ++i)
      reqs.push_back(f.rank() == 1 ? f.isend(0, 10 + i, ConstBuf{&sent[i], 1})
                                   : f.irecv(1, 10 + i, MutBuf{&got[i], 1}));
    f.wait_all(reqs, Deadline::after(f, 10));
    if (f.rank() == 0) {
      EXPECT_EQ(got, sent);
    }
  });
}

// alltoallv_consume between the two processes, with single copy on: a message by single copy, one through MPI
// (under the 4096-byte threshold) and one to the rank itself (read where it lies) reach the consume whole. With
// single copy off, consume_in_place is off.
TEST_F(MpiSingleCopy, ConsumeTakesMessagesOfEveryPath) {
  run([](Fabric& f) {
    EXPECT_EQ(f.caps().consume_in_place, !forced_off()) << "rank " << f.rank();
    if (forced_off()) return;
    const int me = f.rank(), other = 1 - me;
    const auto byte = [](int src, int dst, size_t i) { return static_cast<uint8_t>(src * 91 + dst * 17 + i * 7); };
    for (const size_t bytes : {size_t{1} << 20, size_t{100}}) {
      auto [out, sends, recvs] = exchange(me, bytes, byte, false);
      int consumed = 0;
      f.alltoallv_consume(
          bytes > 100 ? 60 : 61, sends, recvs,
          [&] {
            ++consumed;
            for (const PeerConsume& r : recvs) {
              ASSERT_EQ(r.bytes, bytes) << "rank " << me << " from " << r.peer;
              size_t wrong = 0;
              for (size_t i = 0; i < bytes; ++i) wrong += r.data[i] != byte(r.peer, me, i);
              EXPECT_EQ(wrong, 0u) << "rank " << me << " from " << r.peer << ", " << bytes << " bytes";
            }
            EXPECT_EQ(recvs[me].data, out[me].data()) << "a message to itself is read where it lies";
          },
          Deadline::after(f, 10));
      EXPECT_EQ(consumed, 1);
      EXPECT_EQ(recvs[other].data, nullptr) << "valid only inside consume";
    }
  });
}

// A consume that pulls (PeerConsume::takes_pull): the single-copy message stays in its sender's process and is
// read in parts, in any order; the one through MPI and the one to the rank itself come at `data` as before. A
// read past the message's end fails naming it.
TEST_F(MpiSingleCopy, ConsumeThatPullsReadsASingleCopyMessageInParts) {
  if (forced_off()) GTEST_SKIP() << "single copy turned off";
  run([](Fabric& f) {
    const int me = f.rank(), other = 1 - me;
    const auto byte = [](int src, int dst, size_t i) { return static_cast<uint8_t>(src * 53 + dst * 29 + i * 5); };
    for (const size_t bytes : {size_t{1} << 20, size_t{100}}) {
      auto [out, sends, recvs] = exchange(me, bytes, byte, true);
      f.alltoallv_consume(
          bytes > 100 ? 62 : 63, sends, recvs,
          [&] {
            const PeerConsume& r = recvs[other];
            ASSERT_EQ(r.bytes, bytes);
            EXPECT_EQ(recvs[me].remote, nullptr) << "a message to itself is read where it lies";
            EXPECT_EQ(recvs[me].data, out[me].data());
            if (bytes <= 100) {  // through MPI: received whole
              ASSERT_EQ(r.remote, nullptr);
              for (size_t i = 0; i < bytes; ++i) ASSERT_EQ(r.data[i], byte(other, me, i)) << i;
              return;
            }
            ASSERT_NE(r.remote, nullptr) << "a single-copy message is left where its sender holds it";
            EXPECT_EQ(r.data, nullptr);
            std::vector<uint8_t> got(bytes, 0);
            for (const auto& [at, n] : std::vector<std::pair<size_t, size_t>>{
                     {bytes / 2, bytes / 2}, {0, 1}, {1, 4095}, {4096, bytes / 2 - 4096}, {bytes - 1, 1}})
              r.remote->read(at, n, got.data() + at);
            size_t wrong = 0;
            for (size_t i = 0; i < bytes; ++i) wrong += got[i] != byte(other, me, i);
            EXPECT_EQ(wrong, 0u);
            try {
              r.remote->read(bytes - 10, 11, got.data());
              ADD_FAILURE() << "a read past the message's end";
            } catch (const FabricError& e) {
              EXPECT_NE(std::string(e.what()).find("-byte message"), std::string::npos) << e.what();
            }
          },
          Deadline::after(f, 10));
      EXPECT_EQ(recvs[other].remote, nullptr) << "valid only inside consume";
    }
  });
}

// A forwarder's gather send that names rows of a message it holds pulled (RowGather::pulled, as a hierarchical
// forwarder's to its local ranks): the receiver reads them from the process that first sent them (here its own,
// across the two), the rest from the forwarder, in the message's order; a copy to the rank itself reads them too.
TEST_F(MpiSingleCopy, ForwardedPulledRowsAreReadFromTheirFirstSender) {
  run([](Fabric& f) {
    EXPECT_EQ(f.caps().forwards_pulled, !forced_off()) << "rank " << f.rank();
    if (forced_off()) return;
    const int me = f.rank(), other = 1 - me;
    constexpr size_t kRow = 8192, kHead = 64;
    const auto byte = [](int rank, size_t row, size_t i) { return static_cast<uint8_t>(rank * 71 + row * 13 + i * 3); };
    // This rank's rows 0..5 at every other slot of `batch`, so that no two lie together: 0..3 sent, 4 and 5 kept.
    std::vector<uint8_t> batch(12 * kRow), head(kHead, 0xE1);
    std::vector<const uint8_t*> rows;
    for (size_t r = 0; r < 6; ++r) {
      uint8_t* at = batch.data() + 2 * r * kRow;
      for (size_t i = 0; i < kRow; ++i) at[i] = byte(me, r, i);
      if (r < 4) rows.push_back(at);
    }
    const std::vector<PeerSend> sends{{other, ConstBuf{head.data(), kHead + 4 * kRow, 0, {rows.data(), 4, kRow}}}};
    std::vector<PeerConsume> recvs{{other, kHead + 4 * kRow, true, true}};
    // The forwarded message: its own head, then the other's rows 2, 0, 1 (pulled), this rank's row 4, the other's
    // row 3 (pulled) and this rank's row 5.
    const std::vector<std::pair<int, size_t>> order{{other, 2}, {other, 0}, {other, 1}, {me, 4}, {other, 3}, {me, 5}};
    const std::vector<uint8_t> head2(100, 0x3C);
    std::vector<std::vector<uint8_t>> got(2, std::vector<uint8_t>(head2.size() + order.size() * kRow, 0));
    f.alltoallv_consume(
        70, sends, recvs,
        [&] {
          const RemoteBytes* held = recvs[0].remote;
          ASSERT_NE(held, nullptr) << "the other's message is left where it lies";
          std::vector<const uint8_t*> fwd;
          std::vector<PulledRow> pulled;
          for (const auto& [rank, r] : order) {
            fwd.push_back(rank == me ? batch.data() + 2 * r * kRow : nullptr);
            pulled.push_back(rank == me ? PulledRow{} : PulledRow{held, kHead + r * kRow});
          }
          const ConstBuf msg{head2.data(), got[0].size(), 0, {fwd.data(), fwd.size(), kRow, pulled.data()}};
          std::vector<Request> reqs{f.irecv(other, 71, MutBuf{got[other].data(), got[other].size()}),
                                    f.irecv(me, 71, MutBuf{got[me].data(), got[me].size()}), f.isend(other, 71, msg),
                                    f.isend(me, 71, msg)};
          f.wait_all(reqs, Deadline::after(f, 10));
        },
        Deadline::after(f, 10));
    for (int from = 0; from < 2; ++from) {  // the message rank `from` forwarded: its rows are `from`'s
      const std::vector<uint8_t>& m = got[from];
      EXPECT_TRUE(std::equal(head2.begin(), head2.end(), m.begin())) << "rank " << me << " from " << from;
      size_t wrong = 0;
      for (size_t j = 0; j < order.size(); ++j) {
        const int rank = order[j].first == 1 - me ? 1 - from : from;  // `order` as rank `from` built it
        for (size_t i = 0; i < kRow; ++i) wrong += m[head2.size() + j * kRow + i] != byte(rank, order[j].second, i);
      }
      EXPECT_EQ(wrong, 0u) << "rank " << me << " from " << from;
    }
  });
}

}  // namespace
}  // namespace eplab
