// ThreadFabric: one rank of a ThreadWorld. Sends are eager (copied into the receiver's queue or straight into
// a posted receive); receives match by (peer, tag) in posting order, like MPI. A rank that fails or a wait
// that passes its deadline releases every other rank with an error naming rank, peer, tag and phase.
#pragma once

#include <condition_variable>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/fabric.hpp"

namespace eplab {

class ThreadWorld {
 public:
  ThreadWorld(Topology topo, double timeout_s);
  const Topology& topology() const { return topo_; }
  int size() const { return topo_.size(); }
  double timeout_s() const { return timeout_s_; }
  // Marks the world failed: every blocked wait throws with this message.
  void abort(const std::string& why);

 private:
  friend class ThreadFabric;
  struct RecvState : RequestState {
    int peer;
    Tag tag;
    MutBuf buf;
  };
  struct Message {
    int src;
    Tag tag;
    std::vector<uint8_t> data;
  };
  struct Mailbox {
    std::deque<Message> unexpected;
    std::list<std::shared_ptr<RecvState>> posted;
  };
  Topology topo_;
  double timeout_s_;
  std::mutex mu_;  // one lock: ranks are few and messages are large, so contention is not the cost
  std::condition_variable cv_;
  std::vector<Mailbox> boxes_;
  std::string failure_;
  int barrier_count_ = 0;
  long barrier_gen_ = 0;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

class ThreadFabric : public Fabric {
 public:
  ThreadFabric(ThreadWorld& world, int rank) : world_(world), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return world_.size(); }
  const Topology& topology() const override { return world_.topology(); }
  Caps caps() const override {
    Caps c;
    c.native_alltoallv = true;
    return c;
  }
  Request isend(int peer, Tag tag, ConstBuf data) override;
  Request irecv(int peer, Tag tag, MutBuf data) override;
  void wait_all(std::span<Request> reqs, Deadline d) override;
  double now() const override;
  void compute(const ComputeCost&) override {}
  void barrier() override;
  // Posts every receive, waits until all ranks have, then sends: each message is copied once, straight into
  // its receive buffer, never into the unexpected queue.
  void alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d) override;

 private:
  void check_peer(int peer, const char* op, Tag tag) const;
  std::string where(int peer, Tag tag) const;
  ThreadWorld& world_;
  int rank_;
};

}  // namespace eplab
