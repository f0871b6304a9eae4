#include "engine/transport_fabric.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <system_error>
#include <thread>

namespace eplab {

// ---- Transport defaults ----

MemoryRegion Transport::register_memory(void* ptr, size_t bytes, MemoryKind kind) {
  if (!caps().supports(kind))
    throw FabricError(std::string("register_memory: this transport cannot reach ") +
                      (kind == MemoryKind::kDevice ? "device" : "host") + " memory");
  return MemoryRegion{ptr, bytes, kind, 0};
}

void Transport::retain(Arrival& a) {
  if (a.owner || a.bytes == 0) return;
  auto copy = std::make_shared<std::vector<uint8_t>>(a.bytes);
  a.copy_to(copy->data());
  a.data = copy->data();
  a.gather = RowGather{};
  a.owner = std::move(copy);
}

void Transport::block(Domain& d, RequestState&, double until_s) { d.sync().wait(until_s); }

// ---- Threads ----

namespace {

class ThreadSync : public Sync {
 public:
  explicit ThreadSync(std::function<double()> clock) : clock_(std::move(clock)) {}
  void lock() override { mu_.lock(); }
  void unlock() override { mu_.unlock(); }
  void wait(double until_s) override {
    // Slices of at most half a second: an infinite limit never reaches the steady clock's arithmetic.
    const double left = std::min(until_s - clock_(), 0.5);
    if (!(left > 0)) return;
    std::unique_lock<std::mutex> held(mu_, std::adopt_lock);
    cv_.wait_for(held, std::chrono::duration<double>(left));
    held.release();
  }
  void notify_all() override { cv_.notify_all(); }

 private:
  std::function<double()> clock_;
  std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace

std::unique_ptr<Sync> make_thread_sync(std::function<double()> clock) {
  return std::make_unique<ThreadSync>(std::move(clock));
}

// ---- Domain ----

Domain::Domain(int world_size, int local_ranks, int first_local, std::unique_ptr<Sync> sync, double timeout_s)
    : world_size_(world_size),
      local_ranks_(local_ranks),
      first_local_(first_local),
      sync_(std::move(sync)),
      timeout_s_(timeout_s),
      boxes_(local_ranks),
      failed_(world_size, 0),
      live_(world_size) {
  if (!(timeout_s > 0))  // also refuses NaN
    throw EplabError("the run's timeout must be a positive number of seconds or inf, got " + std::to_string(timeout_s));
}

void Domain::fail(const std::string& why) {
  SyncLock lock(*sync_);
  if (failure_.empty()) failure_ = why;
  sync_->notify_all();
}

bool Domain::match_sizes(RecvOp& op, int src, Tag tag, size_t bytes, size_t total_bytes) {
  op.matched = true;
  op.bytes = bytes;
  op.total_bytes = total_bytes;
  if (bytes <= op.buf.capacity) return true;
  op.error = "irecv: rank " + std::to_string(op.rank) + ", peer " + std::to_string(src) + ", tag " + describe_tag(tag) +
             ": message of " + std::to_string(bytes) + " bytes exceeds the " + std::to_string(op.buf.capacity) +
             "-byte receive buffer";
  op.bytes = 0;
  op.done = true;
  return false;
}

void Domain::match(RecvOp& op, Arrival& a, Transport& via) {
  if (!match_sizes(op, a.src, a.tag, a.bytes, a.total_bytes)) {
    if (a.lender) a.lender->done = true;  // the receive failed; nothing reads the lent bytes
    return;
  }
  if (op.consume) {  // the receiver reads the bytes where they are, until release()
    via.hold_for_consume(a, op.pull);
    op.msg = std::move(a);
    op.done = true;
    return;
  }
  if (a.lender) {  // lent bytes meet a receive that wants them copied: copy now and complete the send
    if (a.bytes) a.copy_to(op.buf.ptr);
    a.lender->done = true;
    op.done = true;
    return;
  }
  via.on_match(op, a);
}

std::shared_ptr<RecvOp> Domain::claim(int dst, int src, Tag tag, size_t bytes, size_t total_bytes) {
  SyncLock lock(*sync_);
  Box& b = box(dst);
  for (auto it = b.posted.begin(); it != b.posted.end(); ++it) {
    if ((*it)->peer != src || (*it)->tag != tag) continue;
    std::shared_ptr<RecvOp> op = *it;
    b.posted.erase(it);
    op->copying = match_sizes(*op, src, tag, bytes, total_bytes);
    sync_->notify_all();
    return op;
  }
  return nullptr;
}

std::shared_ptr<RecvOp> Domain::deliver(int dst, Transport& via, Arrival a) {
  SyncLock lock(*sync_);
  return deliver_locked(dst, via, std::move(a));
}

std::shared_ptr<RecvOp> Domain::deliver_locked(int dst, Transport& via, Arrival a) {
  Box& b = box(dst);
  for (auto it = b.posted.begin(); it != b.posted.end(); ++it) {
    if ((*it)->peer != a.src || (*it)->tag != a.tag) continue;
    std::shared_ptr<RecvOp> op = *it;
    b.posted.erase(it);
    match(*op, a, via);
    sync_->notify_all();
    return op->copying ? op : nullptr;
  }
  if (!a.lender) via.retain(a);  // lent bytes stay where they are until their receive comes
  b.unexpected.push_back(std::move(a));
  sync_->notify_all();
  return nullptr;
}

void Domain::finish_copy(RecvOp& op) {
  SyncLock lock(*sync_);
  op.copying = false;
  op.done = true;
  sync_->notify_all();
}

void Domain::post_receive(int me, Transport& via, const std::shared_ptr<RecvOp>& op) {
  Box& b = box(me);
  for (auto it = b.unexpected.begin(); it != b.unexpected.end(); ++it) {
    if (it->src != op->peer || it->tag != op->tag) continue;
    // Out of the queue before the match: a transport may yield there (a simulated transfer starts with a
    // simcall that lets other actors run and append to this queue), which would invalidate `it`.
    Arrival a = std::move(*it);
    b.unexpected.erase(it);
    match(*op, a, via);
    return;
  }
  b.posted.push_back(op);
}

void Domain::withdraw(int me, const std::shared_ptr<RecvOp>& op) {
  SyncLock lock(*sync_);
  if (!op->matched) box(me).posted.remove(op);
  while (op->copying) sync_->wait(std::numeric_limits<double>::infinity());
  if (op->msg.lender) {  // a consuming receive that never consumed: its lender may go on
    op->msg.lender->done = true;
    op->msg = Arrival{};
    sync_->notify_all();
  }
}

void Domain::release(RecvOp& op) {
  SyncLock lock(*sync_);
  if (op.msg.lender) op.msg.lender->done = true;
  op.msg = Arrival{};
  sync_->notify_all();
}

void Domain::withdraw_send(int dst, SendOp& op) {
  SyncLock lock(*sync_);
  if (op.done) return;
  std::deque<Arrival>& q = box(dst).unexpected;
  for (auto it = q.begin(); it != q.end(); ++it)
    if (it->lender == &op) {
      q.erase(it);
      op.done = true;
      return;
    }
  // Matched by a consuming receive: its rank lets the bytes go once consumed, or when it unwinds (withdraw).
  while (!op.done) sync_->wait(std::numeric_limits<double>::infinity());
}

void Domain::mark_failed(int rank) {
  SyncLock lock(*sync_);
  if (failed_[rank]) return;
  failed_[rank] = 1;
  --live_;
}

void Domain::rendezvous(const std::string& who, Transport& clock, const std::function<void()>& last) {
  SyncLock lock(*sync_);
  const long gen = barrier_gen_;
  if (++barrier_count_ >= live_) {
    if (last) {
      // The others sleep until the generation moves; `last` may block (a simulated wait), so without the lock.
      lock.unlock();
      last();
      sync_->lock();
    }
    barrier_count_ = 0;
    ++barrier_gen_;
    sync_->notify_all();
    if (last) sync_->unlock();
    return;
  }
  const double limit = clock.now() + timeout_s_;
  while (barrier_gen_ == gen && failure_.empty()) {
    if (clock.now() >= limit) {
      const std::string msg = who + ": timed out after " + std::to_string(timeout_s_) + " s";
      if (failure_.empty()) failure_ = msg;
      sync_->notify_all();
      throw FabricError(msg);
    }
    sync_->wait(limit);
  }
  if (barrier_gen_ == gen) throw FabricError(who + ": left: " + failure_);
}

// ---- TransportFabric ----

TransportFabric::TransportFabric(Domain& domain, Transport& transport, int rank, const Topology& topo)
    : domain_(domain),
      transport_(transport),
      rank_(rank),
      topo_(topo),
      flip_armed_(PayloadFlip::from_environment().armed && PayloadFlip::from_environment().dst == rank) {}

Caps TransportFabric::caps() const {
  const TransportCaps t = transport_.caps();
  Caps c;
  c.phantom_payload = t.phantom_payload;
  c.real_payload = t.real_payload;
  c.modeled_time = t.modeled_time;
  c.device_memory = t.supports(MemoryKind::kDevice);
  c.native_alltoallv = transport_.extension(ExtensionId::kAlltoallv) != nullptr;
  c.consume_gathers = t.lends_sends && domain_.holds_every_rank();
  c.consume_in_place = c.consume_gathers || t.consumes_remote;
  c.gather_send = t.gather_send;
  c.forwards_pulled = t.forwards_pulled && t.gather_send && t.consumes_remote;
  return c;
}

std::string TransportFabric::where(int peer, Tag tag) const {
  return "rank " + std::to_string(rank_) + transport_.endpoint() + ", peer " + std::to_string(peer) + ", tag " +
         describe_tag(tag) + ", phase " + phase_;
}

void TransportFabric::check_peer(int peer, const char* op, Tag tag) const {
  if (peer < 0 || peer >= size())
    throw FabricError(std::string(op) + ": " + where(peer, tag) + ": peer outside 0.." + std::to_string(size() - 1));
  if (!live(peer))
    throw FabricError(std::string(op) + ": " + where(peer, tag) + ": peer " + std::to_string(peer) +
                      " has failed (marked by mark_failed): nothing may be sent to or awaited from it");
}

double TransportFabric::limit_of(Deadline d, bool* caller) const {
  const double run_limit = now() + domain_.timeout_s();
  *caller = d.at_s < run_limit;
  return *caller ? d.at_s : run_limit;
}

FabricError TransportFabric::expired(const std::string& what, const std::string& state, bool caller) {
  const std::string msg =
      what + ": deadline passed (" +
      (caller ? std::string("the caller's")
              : std::to_string(domain_.timeout_s()) + " s" + (transport_.caps().modeled_time ? " simulated" : "")) +
      ")" + state;
  // The caller's own deadline is the caller's business; the run's limit means a hang, which fails every rank.
  if (!caller) domain_.fail(msg);
  return FabricError(msg);
}

void TransportFabric::check_wait(const std::string& what, double limit, bool caller,
                                 const std::function<std::string()>& state) {
  transport_.progress();
  std::string failure;
  {
    SyncLock lock(domain_.sync());
    failure = domain_.failure();
  }
  if (!failure.empty()) throw FabricError(what + ": released: " + failure);
  if (now() > limit) throw expired(what, state(), caller);
}

Request TransportFabric::isend(int peer, Tag tag, ConstBuf data) { return post_send(peer, tag, data, false); }

Request TransportFabric::post_send(int peer, Tag tag, ConstBuf data, bool lend) {
  check_peer(peer, "isend", tag);
  if (!data.ptr && !data.gathered()) {  // a null pointer carries no real bytes: all of it is size
    data.phantom_bytes += data.bytes;
    data.bytes = 0;
  }
  if (data.phantom_bytes > 0 && !transport_.caps().phantom_payload)
    throw FabricError("isend: " + where(peer, tag) + ": this backend moves real bytes only (phantom payload of " +
                      std::to_string(data.total()) + " bytes)");
  if (data.gathered() && (data.head_bytes() > data.bytes || (data.head_bytes() > 0 && !data.ptr)))
    throw FabricError("isend: " + where(peer, tag) + ": a gather send of " + std::to_string(data.bytes) +
                      " bytes whose " + std::to_string(data.gather.count) + " rows of " +
                      std::to_string(data.gather.row_bytes) + " do not fit in it");
  if (ledger_ && !in_native_exchange_) ledger_->sent(peer, tag, phase_, data);
  if (tally_ && !in_native_exchange_) tally_->sent(rank_, peer, tag, data.total());
  auto op = std::make_shared<SendOp>();
  op->peer = peer;
  op->tag = tag;
  op->bytes = data.bytes;
  op->total_bytes = data.total();
  op->lend = lend;
  // Made contiguous, kept until the send completes, where the transport cannot send rows from where they lie. A
  // lent gather send stays gathered: a consuming receiver reads its rows where they lie, or has it made
  // contiguous for itself (alltoallv_consume).
  if (data.gathered() && !transport_.caps().gather_send) {
    op->flat.resize(data.bytes);
    data.copy_to(op->flat.data());
    data = ConstBuf{op->flat.data(), data.bytes, data.phantom_bytes};
  }
  transport_.post_send(*op, data);
  if (!lend) return Request(op);
  // Dropped before its receiver let the bytes go (this rank is unwinding): take the message back, or wait for
  // the reader, before the buffer goes.
  std::shared_ptr<void> withdraw(nullptr, [d = &domain_, peer, weak = std::weak_ptr<SendOp>(op)](void*) {
    if (auto s = weak.lock()) d->withdraw_send(peer, *s);
  });
  return Request(op, std::move(withdraw));
}

Request TransportFabric::irecv(int peer, Tag tag, MutBuf data) {
  check_peer(peer, "irecv", tag);
  auto op = std::make_shared<RecvOp>();
  op->rank = rank_;
  op->peer = peer;
  op->tag = tag;
  op->buf = data;
  {
    SyncLock lock(domain_.sync());
    domain_.post_receive(rank_, transport_, op);
    if (op->matched) return Request(op);
  }
  // Withdraw the receive if every handle to it is dropped before a message matched it (the rank is unwinding),
  // so that no sender later writes into a buffer that is gone.
  std::shared_ptr<void> withdraw(nullptr, [d = &domain_, me = rank_, weak = std::weak_ptr<RecvOp>(op)](void*) {
    if (auto s = weak.lock()) d->withdraw(me, s);
  });
  return Request(op, std::move(withdraw));
}

void TransportFabric::wait_all(std::span<Request> reqs, Deadline d) {
  bool caller = false;
  const double limit = limit_of(d, &caller);
  size_t next = 0;  // every request before it has completed
  for (;;) {
    transport_.progress();
    SyncLock lock(domain_.sync());
    for (; next < reqs.size(); ++next) {
      RequestState* s = reqs[next].state();
      if (!s) continue;
      if (!transport_.test(*s)) break;
      if (!s->error.empty()) throw FabricError(s->error + " (phase " + phase_ + ")");
      // The test hook's flip only where a check sees it: not in an untimed warm-up call, which runs without one.
      const bool enter = (ledger_ || tally_) && !in_native_exchange_;
      // A message read in parts (Arrival::remote) is entered once it has been read (alltoallv_consume).
      if (auto* r = enter ? dynamic_cast<RecvOp*>(s) : nullptr; r && !r->ledgered && !r->msg.remote) {
        r->ledgered = true;
        received(r->peer, r->tag, r->consume ? const_cast<void*>(r->msg.data) : r->buf.ptr, r->bytes, r->total_bytes,
                 r->consume ? r->msg.gather : RowGather{});
      }
    }
    if (next == reqs.size()) return;
    if (!domain_.failure().empty())
      throw FabricError("rank " + std::to_string(rank_) + " stopped waiting: " + domain_.failure());
    RequestState& pending = *reqs[next].state();
    if (now() >= limit) {
      auto* r = dynamic_cast<RecvOp*>(&pending);
      auto* s = dynamic_cast<SendOp*>(&pending);
      const std::string what = "wait: " + where(r ? r->peer : s ? s->peer : -1, r ? r->tag : s ? s->tag : 0);
      const std::string state =
          r && !r->matched ? " with the message not yet received" : " with the message's transfer still running";
      lock.unlock();
      throw expired(what, state, caller);
    }
    transport_.block(domain_, pending, limit);
  }
}

bool TransportFabric::takes_flip(int peer, Tag tag) {
  if (!flip_armed_ || flipped_ || !PayloadFlip::from_environment().matches(peer, rank_, tag)) return false;
  flipped_ = true;
  return true;
}

void TransportFabric::received(int peer, Tag tag, void* data, size_t bytes, size_t total_bytes,
                               const RowGather& gather) {
  if (total_bytes > 0 && takes_flip(peer, tag)) {
    if (total_bytes > bytes)
      --total_bytes;  // phantom bytes: the message arrives one byte short, its real bytes untouched
    else if (gather.bytes() > 0)  // the message's last byte is its last row's, where the sender holds it
      const_cast<uint8_t*>(gather.rows[gather.count - 1])[gather.row_bytes - 1] ^= 0x01;
    else
      static_cast<uint8_t*>(data)[bytes - 1] ^= 0x01;
  }
  if (ledger_) ledger_->received(peer, tag, phase_, ConstBuf{data, bytes, total_bytes - bytes, gather});
  if (tally_) tally_->received(peer, rank_, tag, total_bytes);
}

void TransportFabric::barrier() {
  if (!domain_.holds_every_rank()) return message_barrier();
  domain_.rendezvous("barrier: rank " + std::to_string(rank_) + " in phase " + phase_, transport_);
}

void TransportFabric::message_barrier() {
  const std::vector<int> live = live_ranks();
  const int n = static_cast<int>(live.size());
  const int me = static_cast<int>(std::find(live.begin(), live.end(), rank_) - live.begin());
  const long round = barrier_round_++;
  uint8_t token = 1, got = 0;
  for (int k = 1, step = 0; k < n; k *= 2, ++step) {
    const Tag tag = make_tag(Phase::kBarrier, static_cast<int>(round & 0xFFFFFF), 0, step);
    Request reqs[2] = {irecv(live[(me - k + n) % n], tag, MutBuf{&got, 1}),
                       isend(live[(me + k) % n], tag, ConstBuf{&token, 1})};
    wait_all(reqs, Deadline{});
  }
}

void TransportFabric::alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d) {
  alltoallv_live(sends, recvs, [&](std::span<const PeerSend> live_sends, std::span<PeerRecv> live_recvs) {
    if (auto* ext = transport_.find<AlltoallvExtension>(ExtensionId::kAlltoallv)) {
      // One operation for the whole exchange: its messages go into the ledger here rather than in isend/wait_all.
      if (ledger_)
        for (const PeerSend& s : live_sends) ledger_->sent(s.peer, tag, phase_, s.data);
      if (tally_)
        for (const PeerSend& s : live_sends) tally_->sent(rank_, s.peer, tag, s.data.total());
      // A native exchange of a transport that does not gather gets its gathered sends made contiguous.
      std::vector<PeerSend> flat_sends;
      std::vector<std::vector<uint8_t>> flat;
      if (!transport_.caps().gather_send &&
          std::any_of(live_sends.begin(), live_sends.end(), [](const PeerSend& s) { return s.data.gathered(); })) {
        flat_sends.assign(live_sends.begin(), live_sends.end());
        flat.resize(flat_sends.size());
        for (size_t i = 0; i < flat_sends.size(); ++i) {
          ConstBuf& d = flat_sends[i].data;
          if (!d.gathered()) continue;
          flat[i].resize(d.bytes);
          d.copy_to(flat[i].data());
          d = ConstBuf{flat[i].data(), d.bytes, d.phantom_bytes};
        }
        live_sends = flat_sends;
      }
      {
        // An extension may exchange through isend/irecv itself (emu, sim's per-flow mode): its messages are
        // entered here, once, not again as they pass.
        in_native_exchange_ = true;
        const std::shared_ptr<void> reset(nullptr, [this](void*) { in_native_exchange_ = false; });
        ext->alltoallv(*this, tag, live_sends, live_recvs, d);
      }
      if (ledger_ || tally_)
        for (const PeerRecv& r : live_recvs) received(r.peer, tag, r.data.ptr, r.bytes, r.total_bytes);
      return;
    }
    alltoallv_by_messages(tag, live_sends, live_recvs, d, false);
  });
}

void TransportFabric::keep_local(Tag tag, const ConstBuf& data) {
  if (ledger_ && !in_native_exchange_) ledger_->kept(rank(), tag, phase_, data);
}

namespace {

// Another process's message that a consume reads in parts (Arrival::remote), as the payload ledger and the test
// hook's flip see a message received whole: the bytes are hashed in order as the consume reads them from the start
// on, and what it did not read is read and hashed at the end (finish); the flip lands on the last byte whenever a
// read covers it.
class LedgeredRemote final : public RemoteBytes {
 public:
  LedgeredRemote(const RemoteBytes& src, size_t bytes, bool flip) : src_(src), bytes_(bytes), flip_(flip) {}
  void read(size_t offset, size_t n, void* into) const override {
    src_.read(offset, n, into);
    auto* p = static_cast<uint8_t*>(into);
    if (flip_ && offset < bytes_ && bytes_ - 1 < offset + n) p[bytes_ - 1 - offset] ^= 0x01;
    const size_t fed = sum_.fed();
    if (offset <= fed && fed < offset + n) sum_.feed(p + (fed - offset), offset + n - fed);
  }
  const PayloadChecksum& finish() {
    std::vector<uint8_t> rest;
    while (sum_.fed() < bytes_) {
      rest.resize(std::min<size_t>(bytes_ - sum_.fed(), size_t{1} << 20));
      read(sum_.fed(), rest.size(), rest.data());
    }
    return sum_;
  }
  // Forwarded unread, the bytes are read by their next receiver, whose ledger checks them; here finish() reads
  // them for this rank's own check.
  bool locate(size_t offset, size_t n, std::vector<Piece>& out) const override { return src_.locate(offset, n, out); }

 private:
  const RemoteBytes& src_;
  size_t bytes_;
  bool flip_;
  mutable PayloadChecksum sum_;
};

}  // namespace

void TransportFabric::alltoallv_consume(Tag tag, std::span<const PeerSend> sends, std::span<PeerConsume> recvs,
                                        const std::function<void()>& consume, Deadline d) {
  // Sends are lent where every rank lives in this process; a transport that consumes_remote completes a send
  // to another process by itself, and lends one to this rank itself.
  const bool lend = transport_.caps().lends_sends && domain_.holds_every_rank();
  if (!lend && !transport_.caps().consumes_remote) return Fabric::alltoallv_consume(tag, sends, recvs, consume, d);
  // Every receive posted, then every send lent (no barrier: a lent message waits unexpected without a copy),
  // then the receives awaited: every rank has posted its sends before it waits for anything, so none waits on
  // a rank that waits on it.
  std::vector<Request> rreqs(recvs.size());
  for (size_t i = 0; i < recvs.size(); ++i) {
    PeerConsume& r = recvs[i];
    r.data = nullptr;
    r.bytes = 0;
    if (!live(r.peer)) continue;
    check_peer(r.peer, "irecv", tag);
    auto op = std::make_shared<RecvOp>();
    op->rank = rank_;
    op->peer = r.peer;
    op->tag = tag;
    op->buf = MutBuf{nullptr, r.capacity};
    op->consume = true;
    op->pull = r.takes_pull;
    {
      SyncLock lock(domain_.sync());
      domain_.post_receive(rank_, transport_, op);
    }
    // Dropped unconsumed (this rank is unwinding): withdrawn, and its lender let go.
    std::shared_ptr<void> withdraw(nullptr, [dom = &domain_, me = rank_, weak = std::weak_ptr<RecvOp>(op)](void*) {
      if (auto s = weak.lock()) dom->withdraw(me, s);
    });
    rreqs[i] = Request(op, std::move(withdraw));
  }
  std::vector<Request> sreqs;
  sreqs.reserve(sends.size());
  for (const PeerSend& s : sends)
    if (live(s.peer)) sreqs.push_back(post_send(s.peer, tag, s.data, lend || s.peer == rank_));
  wait_all(rreqs, d);
  std::vector<std::vector<uint8_t>> flat;  // gather sends made contiguous for receives that do not take them
  std::vector<std::unique_ptr<LedgeredRemote>> ledgered(recvs.size());
  for (size_t i = 0; i < recvs.size(); ++i)
    if (const auto* op = static_cast<const RecvOp*>(rreqs[i].state())) {
      recvs[i].remote = op->msg.remote;
      if (op->msg.remote && op->bytes > 0) {
        const bool flip = takes_flip(op->peer, tag);
        if (ledger_ || flip) {
          ledgered[i] = std::make_unique<LedgeredRemote>(*op->msg.remote, op->bytes, flip);
          recvs[i].remote = ledgered[i].get();
        }
      }
      recvs[i].data = static_cast<const uint8_t*>(op->msg.data);
      recvs[i].bytes = op->bytes;
      recvs[i].gather = op->msg.gather;
      if (op->msg.gather.count == 0 || (recvs[i].takes_gather && !op->msg.gather.pulled)) continue;
      std::vector<uint8_t>& f = flat.emplace_back(op->bytes);
      op->msg.copy_to(f.data());
      recvs[i].data = f.data();
      recvs[i].gather = RowGather{};
    }
  consume();
  for (size_t i = 0; i < recvs.size(); ++i) {
    auto* op = static_cast<RecvOp*>(rreqs[i].state());
    if (!op || !op->msg.remote || op->ledgered) continue;
    op->ledgered = true;
    if (ledger_ && ledgered[i]) ledger_->received(op->peer, tag, phase_, op->bytes, ledgered[i]->finish());
    if (tally_) tally_->received(op->peer, rank_, tag, op->total_bytes);
  }
  for (Request& r : rreqs)
    if (r.valid()) domain_.release(*static_cast<RecvOp*>(r.state()));
  for (PeerConsume& r : recvs) r.data = nullptr, r.gather = RowGather{}, r.remote = nullptr;
  wait_all(sreqs, d);
}

void TransportFabric::mark_failed(int rank) {
  Fabric::mark_failed(rank);
  domain_.mark_failed(rank);
}

void TransportFabric::begin_pipeline(int chunks) {
  if (auto* ext = transport_.find<PipelineExtension>(ExtensionId::kPipeline)) ext->begin_pipeline(*this, chunks);
}

void TransportFabric::end_pipeline() {
  if (auto* ext = transport_.find<PipelineExtension>(ExtensionId::kPipeline)) ext->end_pipeline(*this);
}

bool TransportFabric::set_nic_bandwidth_fraction(int rank, double fraction) {
  auto* ext = transport_.find<LinkFaultExtension>(ExtensionId::kLinkFaults);
  if (ext) ext->set_nic_bandwidth_fraction(rank, fraction);
  return ext != nullptr;
}

bool TransportFabric::schedule_nic_bandwidth_fraction(int rank, double fraction, double at_s) {
  auto* ext = transport_.find<LinkFaultExtension>(ExtensionId::kLinkFaults);
  if (ext) ext->schedule_nic_bandwidth_fraction(rank, fraction, at_s);
  return ext != nullptr;
}

void TransportFabric::record_links(LinkRecorder* r) {
  if (auto* ext = transport_.find<LinkRecordingExtension>(ExtensionId::kLinkRecording)) ext->record_links(r);
}

// ---- Launching threads ----

void launch_thread_ranks(const Topology& topo, double timeout_s,
                         const std::function<void(Domain&, const WallClock&, int)>& rank) {
  const int n = topo.size();
  const WallClock clock;
  Domain domain(n, n, 0, make_thread_sync(clock), timeout_s);
  const auto abort = [&](const std::string& why) { domain.fail(why); };
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  std::string start_error;
  for (int r = 0; r < n; ++r) {
    try {
      threads.emplace_back([&, r] {
        run_rank(
            r, [&] { rank(domain, clock, r); }, errors[r], abort);
      });
    } catch (const std::system_error& e) {
      start_error = "cannot start the thread of rank " + std::to_string(r) + " of " + std::to_string(n) + " (" +
                    e.what() +
                    "): the process's thread limit (ulimit -u, /proc/sys/kernel/threads-max) or memory for thread "
                    "stacks is too small for this many ranks";
      abort(start_error);
      break;
    }
  }
  for (auto& t : threads) t.join();
  if (!start_error.empty()) throw EplabError(start_error);
  rethrow_first_rank_error(errors);
}

}  // namespace eplab
