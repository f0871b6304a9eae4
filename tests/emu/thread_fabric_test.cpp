// Emulated-fabric specifics: a receive whose every handle is dropped before a message matched it is withdrawn,
// so a rank unwinding after an error never leaves a peer copying into freed memory.
#include "emu/thread_fabric.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>

namespace eplab {
namespace {

TEST(ThreadFabric, DroppedReceiveIsWithdrawnAndTheMessageGoesToTheNextOne) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = 2;
  ThreadWorld world(Topology(spec), 10);
  ThreadFabric f0(world, 0), f1(world, 1);
  int second = -1;
  {
    auto first = std::make_unique<int>(-1);
    Request dropped = f0.irecv(1, 7, MutBuf{first.get(), sizeof(int)});
    // `dropped` goes out of scope unmatched, then its buffer is freed.
  }
  std::vector<Request> reqs{f0.irecv(1, 7, MutBuf{&second, sizeof second})};
  int value = 42;
  std::vector<Request> sends{f1.isend(0, 7, ConstBuf{&value, sizeof value})};
  f1.wait_all(sends, Deadline{});
  f0.wait_all(reqs, Deadline{});
  EXPECT_EQ(second, 42);
}

TEST(ThreadFabric, AMatchedReceiveIsNotDisturbedByDroppingItsHandle) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = 2;
  ThreadWorld world(Topology(spec), 10);
  ThreadFabric f0(world, 0), f1(world, 1);
  int got = -1, value = 5;
  {
    Request r = f0.irecv(1, 3, MutBuf{&got, sizeof got});
    std::vector<Request> sends{f1.isend(0, 3, ConstBuf{&value, sizeof value})};
    f1.wait_all(sends, Deadline{});
    EXPECT_TRUE(r.done());
  }
  EXPECT_EQ(got, 5);
}

}  // namespace
}  // namespace eplab
