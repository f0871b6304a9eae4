// An in-memory stand-in for the RDMA NICs of several ranks, so verbs/stream_set.* runs on any machine. Each rank's
// FakeDevice posts writes and credits onto its queue pair to a peer; whenever any rank polls, the wire lands some
// of what is posted, oldest first on each queue pair (RC's order) and in a seeded random order across them: a
// write is read from the sender's staging then (as a NIC reads it, so staging reused too early shows as corrupt
// data), copied into the slot of the receiver's ring, and completed on both sides. Completions are handed out per
// queue pair in order, optionally interleaved at random across queue pairs and spread over several polls. Nothing
// is dropped. The wire throws std::logic_error for what a NIC would not survive: a write from or to memory that
// was not registered, a slot outside the ring, or a write into a slot whose credit the receiver has not returned.
#pragma once

#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "verbs/stream_set.hpp"

namespace eplab::verbs {

class FakeWire {
 public:
  FakeWire(int world, uint32_t seed, bool reorder)
      : world_(world),
        reorder_(reorder),
        rng_(seed),
        posted_(pairs()),
        completed_(pairs()),
        unread_(pairs(), 0),
        mem_(world, nullptr),
        registered_(world) {}

  // Where each rank's rings are: what a real set-up learns from the endpoint exchange.
  void attach(int rank, StreamMemory& mem) { mem_[rank] = &mem; }
  // The next write from `src` landing at `dst` carries the immediate of the slot after its own.
  void misdirect_next(int src, int dst) {
    std::lock_guard lock(mu_);
    misdirect_.push_back(src * world_ + dst);
  }
  size_t credit_messages() {
    std::lock_guard lock(mu_);
    return credit_messages_;
  }

  void register_memory(int rank, void* addr, size_t bytes) {
    std::lock_guard lock(mu_);
    registered_[rank].push_back({static_cast<uint8_t*>(addr), bytes});
  }
  void post_write(int src, int dst, const WriteOp& w) { post(src, dst, Op{false, w, 0}); }
  void post_credit(int src, int dst, uint32_t credits) {
    std::lock_guard lock(mu_);
    // `src` read these slots of the ring `dst` writes into: dst may write them again once this lands.
    unread_[dst * world_ + src] -= credits;
    posted_[src * world_ + dst].push_back(Op{true, {}, credits});
  }
  void poll(int rank, std::vector<Completion>& out) {
    std::lock_guard lock(mu_);
    land();
    std::vector<int> peers;  // queue pairs with completions for `rank`
    for (int p = 0; p < world_; ++p)
      if (!completed_[rank * world_ + p].empty()) peers.push_back(p);
    while (!peers.empty()) {
      const size_t i = reorder_ ? rng_() % peers.size() : 0;
      std::deque<Completion>& q = completed_[rank * world_ + peers[i]];
      out.push_back(q.front());
      q.pop_front();
      if (q.empty()) peers.erase(peers.begin() + static_cast<long>(i));
      if (reorder_ && rng_() % 4 == 0) break;  // leave the rest for a later poll
    }
  }

 private:
  struct Op {
    bool credit;
    WriteOp w;
    uint32_t credits;
  };
  int pairs() const { return world_ * world_; }
  void post(int src, int dst, const Op& op) {
    std::lock_guard lock(mu_);
    posted_[src * world_ + dst].push_back(op);
  }
  void check_registered(int rank, const uint8_t* p, size_t bytes, const char* what) const {
    for (const auto& [at, n] : registered_[rank])
      if (p >= at && p + bytes <= at + n) return;
    throw std::logic_error(std::string("fake wire: rank ") + std::to_string(rank) + " " + what +
                           " memory it did not register");
  }
  // Lands a random number of posted operations of each queue pair, the queue pairs in random order.
  void land() {
    std::vector<int> order(static_cast<size_t>(pairs()));
    for (int i = 0; i < pairs(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng_);
    for (int pair : order)
      while (!posted_[pair].empty() && rng_() % 3 != 0) {
        const Op op = posted_[pair].front();
        posted_[pair].pop_front();
        land(pair / world_, pair % world_, op);
      }
  }
  void land(int src, int dst, const Op& op) {
    if (op.credit) {
      ++credit_messages_;
      completed_[dst * world_ + src].push_back({Completion::kCredit, src, 0, op.credits, 0});
      return;
    }
    const WriteOp& w = op.w;
    const RingConfig& cfg = mem_[dst]->config();
    if (w.slot >= cfg.slots || w.bytes > cfg.slot_bytes)
      throw std::logic_error("fake wire: a write of " + std::to_string(w.bytes) + " bytes into slot " +
                             std::to_string(w.slot) + " of a ring of " + std::to_string(cfg.slots) + " x " +
                             std::to_string(cfg.slot_bytes));
    if (++unread_[src * world_ + dst] > static_cast<int64_t>(cfg.slots))
      throw std::logic_error("fake wire: rank " + std::to_string(src) + " wrote into a slot of rank " +
                             std::to_string(dst) + "'s ring that was not credited back");
    uint8_t* to = mem_[dst]->ring(src) + size_t{w.slot} * cfg.slot_bytes;
    check_registered(src, w.local, w.bytes, "wrote from");
    check_registered(dst, to, cfg.slot_bytes, "was written into");
    std::memcpy(to, w.local, w.bytes);
    uint32_t imm = w.imm;
    for (auto it = misdirect_.begin(); it != misdirect_.end(); ++it)
      if (*it == src * world_ + dst) {
        imm = (imm + 1) % cfg.slots;
        misdirect_.erase(it);
        break;
      }
    completed_[dst * world_ + src].push_back({Completion::kWriteImm, src, 0, imm, w.bytes});
    completed_[src * world_ + dst].push_back({Completion::kWriteDone, dst, w.wr_id, 0, 0});
  }

  std::mutex mu_;
  int world_;
  bool reorder_;
  std::mt19937 rng_;
  std::vector<std::deque<Op>> posted_;             // [src * world + dst] posted, not landed
  std::vector<std::deque<Completion>> completed_;  // [rank * world + peer] completed at rank, not yet polled
  std::vector<int64_t> unread_;                    // [src * world + dst] writes landed minus credits returned
  std::vector<StreamMemory*> mem_;
  std::vector<std::vector<std::pair<uint8_t*, size_t>>> registered_;
  std::vector<int> misdirect_;
  size_t credit_messages_ = 0;
};

// One rank's device on a FakeWire.
class FakeDevice final : public StreamDevice {
 public:
  FakeDevice(FakeWire& wire, int rank) : wire_(wire), rank_(rank) {}
  void register_memory(void* addr, size_t bytes) override { wire_.register_memory(rank_, addr, bytes); }
  void post_write(int peer, const WriteOp& w) override { wire_.post_write(rank_, peer, w); }
  void post_credit(int peer, uint32_t credits) override { wire_.post_credit(rank_, peer, credits); }
  void poll(std::vector<Completion>& out) override { wire_.poll(rank_, out); }

 private:
  FakeWire& wire_;
  int rank_;
};

// Every rank's streams, on one fake wire.
struct FakeRanks {
  FakeRanks(int world, RingConfig cfg, uint32_t seed = 1, bool reorder = true)
      : world(world), wire(world, seed, reorder) {
    for (int r = 0; r < world; ++r) {
      mem.push_back(std::make_unique<StreamMemory>(cfg, r, world));
      dev.push_back(std::make_unique<FakeDevice>(wire, r));
      sets.push_back(std::make_unique<StreamSet>(*dev[r], *mem[r], r, world));
      wire.attach(r, *mem[r]);
    }
  }
  int world;
  FakeWire wire;
  std::vector<std::unique_ptr<StreamMemory>> mem;
  std::vector<std::unique_ptr<FakeDevice>> dev;
  std::vector<std::unique_ptr<StreamSet>> sets;
};

}  // namespace eplab::verbs
