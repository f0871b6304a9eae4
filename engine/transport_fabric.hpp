// The matching core and the one Fabric every backend runs behind. A Domain holds the ranks of a launch that
// live in this process: their matchers (posted receives and unexpected messages keyed by peer and tag, matched
// in posting order like MPI), one lock and wake-up, the run's first failure and an in-process barrier.
// TransportFabric is one rank's Fabric over a Transport: it checks peers, payload kinds and sizes, owns every
// wait loop and deadline, withdraws a receive whose Request is dropped, and names rank, peer, tag and phase in
// every error.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "engine/payload_ledger.hpp"
#include "engine/transport.hpp"

namespace eplab {

// How the ranks of a domain lock shared state, sleep and wake each other: OS threads or simulated actors.
class Sync {
 public:
  virtual ~Sync() = default;
  virtual void lock() = 0;
  virtual void unlock() = 0;
  // Lock held: sleeps until notify_all() or until the transport clock reaches `until_s` (possibly infinite), or
  // less; the caller re-checks its condition. The lock is held again on return.
  virtual void wait(double until_s) = 0;
  virtual void notify_all() = 0;
};

// Holds a Sync's lock for a scope; unlock() ends it early.
class SyncLock {
 public:
  explicit SyncLock(Sync& s) : s_(s) { s_.lock(); }
  ~SyncLock() {
    if (held_) s_.unlock();
  }
  void unlock() {
    held_ = false;
    s_.unlock();
  }
  SyncLock(const SyncLock&) = delete;
  SyncLock& operator=(const SyncLock&) = delete;

 private:
  Sync& s_;
  bool held_ = true;
};

// OS threads: a mutex and a condition variable; `clock` gives the transport's seconds.
std::unique_ptr<Sync> make_thread_sync(std::function<double()> clock);

// Seconds of the steady clock since a launch started: the clock of transports whose ranks are OS threads.
class WallClock {
 public:
  double operator()() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

class Domain {
 public:
  // `local_ranks` of the launch's `world_size` ranks live here: all of them for threads and actors, one for a
  // process of a multi-process launch (its rank `first_local`).
  Domain(int world_size, int local_ranks, int first_local, std::unique_ptr<Sync> sync, double timeout_s);
  int world_size() const { return world_size_; }
  bool holds_every_rank() const { return local_ranks_ == world_size_; }
  double timeout_s() const { return timeout_s_; }
  Sync& sync() { return *sync_; }

  // Marks the run failed: every blocked wait of every local rank throws with this message. First one wins.
  void fail(const std::string& why);
  // Lock held.
  const std::string& failure() const { return failure_; }

  // A message for local rank `dst` arrived (any thread). Matches the oldest posted receive from (a.src, a.tag),
  // calling `via.on_match` on it, or queues the arrival unexpected after `via.retain`. Takes the lock. Returns
  // the matched receive when on_match left its copy to the caller (op->copying): the caller copies the bytes
  // without the lock, then calls finish_copy. Null otherwise.
  std::shared_ptr<RecvOp> deliver(int dst, Transport& via, Arrival a);
  // Takes the lock: the copy of a receive returned by deliver or claim is done.
  void finish_copy(RecvOp& op);
  // A networked transport that has read a message's header but not its bytes: takes the receive posted for
  // (src, tag) at local rank `dst`, if any, marked matched. When the bytes fit, op->copying is set and the
  // caller receives them into op->buf, then calls finish_copy; otherwise the op has failed (error set, done).
  // Null when no receive is posted: the caller receives the bytes itself and delivers them.
  std::shared_ptr<RecvOp> claim(int dst, int src, Tag tag, size_t bytes, size_t total_bytes);
  // The same with the lock already held.
  std::shared_ptr<RecvOp> deliver_locked(int dst, Transport& via, Arrival a);

  // Lock held. Matches op against rank `me`'s unexpected messages, else posts it.
  void post_receive(int me, Transport& via, const std::shared_ptr<RecvOp>& op);
  // Takes the lock. Removes a receive that never matched (its Request was dropped: the rank is unwinding), or
  // waits for a copy into it that is under way, so that nothing writes into a buffer that is gone.
  void withdraw(int me, const std::shared_ptr<RecvOp>& op);

  // Lent bytes (TransportCaps::lends_sends). Takes the lock: a consuming receive is done with its message; a
  // lender's send completes.
  void release(RecvOp& op);
  // Takes the lock. A lent send whose Request was dropped before it completed (its rank is unwinding): its
  // message leaves local rank `dst`'s unexpected queue, or, matched already, this waits until the receiver lets
  // it go, so that nobody reads a buffer that is gone.
  void withdraw_send(int dst, SendOp& op);

  // A rank of this domain stopped (Fabric::mark_failed): barriers from now on are of the others. Every survivor
  // calls it before its next barrier, and the failed rank never enters one again, so no barrier under way
  // counts it. Takes the lock; idempotent.
  void mark_failed(int rank);

  // In-process barrier of every live rank (holds_every_rank()): the last to arrive runs `last` first. Throws
  // FabricError naming `who` after timeout_s on the transport clock, or when the run failed.
  void rendezvous(const std::string& who, Transport& clock, const std::function<void()>& last = {});

 private:
  struct Box {
    std::deque<Arrival> unexpected;
    std::list<std::shared_ptr<RecvOp>> posted;
  };
  Box& box(int rank) { return boxes_[rank - first_local_]; }
  void match(RecvOp& op, Arrival& a, Transport& via);
  // Sets the sizes of a matched receive; false (op failed and done) when the bytes exceed its buffer.
  bool match_sizes(RecvOp& op, int src, Tag tag, size_t bytes, size_t total_bytes);

  int world_size_, local_ranks_, first_local_;
  std::unique_ptr<Sync> sync_;
  double timeout_s_;
  std::vector<Box> boxes_;
  std::string failure_;
  int barrier_count_ = 0;
  long barrier_gen_ = 0;
  std::vector<char> failed_;  // [rank] marked failed
  int live_ = 0;              // ranks a barrier waits for
};

class TransportFabric final : public Fabric {
 public:
  TransportFabric(Domain& domain, Transport& transport, int rank, const Topology& topo);
  int rank() const override { return rank_; }
  int size() const override { return domain_.world_size(); }
  const Topology& topology() const override { return topo_; }
  Caps caps() const override;
  Request isend(int peer, Tag tag, ConstBuf data) override;
  Request irecv(int peer, Tag tag, MutBuf data) override;
  void wait_all(std::span<Request> reqs, Deadline d) override;
  double now() const override { return transport_.now(); }
  double exact_clock() const override { return transport_.exact_clock(); }
  void advance_clock(double exact) override { transport_.advance_clock(exact); }
  void compute(const ComputeCost& c) override { transport_.charge(c); }
  void barrier() override;
  MemoryRegion register_memory(void* ptr, size_t bytes, MemoryKind kind) override {
    return transport_.register_memory(ptr, bytes, kind);
  }
  void deregister_memory(const MemoryRegion& r) override { transport_.deregister_memory(r); }
  void alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d) override;
  void alltoallv_consume(Tag tag, std::span<const PeerSend> sends, std::span<PeerConsume> recvs,
                         const std::function<void()>& consume, Deadline d) override;
  void keep_local(Tag tag, const ConstBuf& data) override;
  void begin_pipeline(int chunks) override;
  void end_pipeline() override;
  void record_links(LinkRecorder* r) override;
  bool set_nic_bandwidth_fraction(int rank, double fraction) override;
  bool schedule_nic_bandwidth_fraction(int rank, double fraction, double at_s) override;
  void mark_failed(int rank) override;

  // Conservation check: from now on every message this rank sends and every receive it completes is entered in
  // `ledger` (null stops it); the caller compares the ranks' ledgers (check_payloads). Sends are hashed over
  // what is posted, receives over what landed, so a byte changed in flight shows as a checksum mismatch.
  void set_payload_ledger(PayloadLedger* ledger) { ledger_ = ledger; }
  PayloadLedger* payload_ledger() const { return ledger_; }
  // The same check for phantom payloads, counts only, shared by every rank of the process (PayloadTally).
  void set_payload_tally(PayloadTally* tally) { tally_ = tally; }

  Domain& domain() { return domain_; }
  Transport& transport() { return transport_; }
  // "rank 3 (device 1), peer 5, tag 0x... (dispatch, ...), phase dispatch"
  std::string where(int peer, Tag tag) const;
  void check_peer(int peer, const char* op, Tag tag) const;
  // The nearer of the caller's deadline and the run's hang limit from now; `caller` says which one it is.
  double limit_of(Deadline d, bool* caller) const;
  // The error for a wait that passed its limit ("<what>: deadline passed (...)<state>"); a hang (not the
  // caller's deadline) fails the whole run. Call without the domain's lock.
  FabricError expired(const std::string& what, const std::string& state, bool caller);
  // One round of a wait a transport runs on its own (an all-to-all-v on a GPU stream, over verbs): takes what the
  // transport received, so that a peer's failure notice fails the domain, then throws "<what>: released: ..." when
  // the run has failed, or expired(what, state(), caller) when `limit` (limit_of) has passed.
  void check_wait(const std::string& what, double limit, bool caller, const std::function<std::string()>& state);

 private:
  // A barrier made of messages (dissemination over the live ranks: log2(n) rounds), for ranks in separate
  // processes.
  void message_barrier();

  Domain& domain_;
  Transport& transport_;
  int rank_;
  const Topology& topo_;
  long barrier_round_ = 0;
  PayloadLedger* ledger_ = nullptr;
  PayloadTally* tally_ = nullptr;
  bool in_native_exchange_ = false;  // inside an AlltoallvExtension, which enters its messages as a whole
  bool flip_armed_ = false;  // the test hook (PayloadFlip) names this rank as the receiver
  bool flipped_ = false;     // and its one flip (PayloadFlip) was done
  // isend, or with `lend` a send whose bytes its receiver reads where they lie (alltoallv_consume).
  Request post_send(int peer, Tag tag, ConstBuf data, bool lend);
  // A receive of `bytes` real bytes at `data` completed (with `gather`, a consumed gather send: its rows where
  // they lie, as in a ConstBuf): the test hook's flip, then the ledger and the tally.
  void received(int peer, Tag tag, void* data, size_t bytes, size_t total_bytes, const RowGather& gather = {});
  // Whether the message from `peer` with `tag` takes the test hook's one flip (PayloadFlip): the first that
  // matches, on the rank it names.
  bool takes_flip(int peer, Tag tag);
};

// Launches every rank of `topo` on its own OS thread over one Domain on a WallClock, and joins them:
// rank(domain, clock, r) sets up rank r's transport and runs it. A rank's exception fails the domain, which
// releases the others; the first rank's own failure is rethrown at the end. Failing to start a thread is an
// error naming the limit, after the started ranks have been released.
void launch_thread_ranks(const Topology& topo, double timeout_s,
                         const std::function<void(Domain&, const WallClock&, int)>& rank);

}  // namespace eplab
