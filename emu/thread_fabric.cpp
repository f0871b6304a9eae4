#include "emu/thread_fabric.hpp"

#include <cstring>
#include <exception>
#include <thread>

#include "emu/thread_backend.hpp"

namespace eplab {

ThreadWorld::ThreadWorld(Topology topo, double timeout_s)
    : topo_(std::move(topo)), timeout_s_(timeout_s), boxes_(topo_.size()) {}

void ThreadWorld::abort(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_.empty()) failure_ = why;
  cv_.notify_all();
}

std::string ThreadFabric::where(int peer, Tag tag) const {
  return "rank " + std::to_string(rank_) + ", peer " + std::to_string(peer) + ", tag " + describe_tag(tag) +
         ", phase " + phase_;
}

void ThreadFabric::check_peer(int peer, const char* op, Tag tag) const {
  if (peer < 0 || peer >= size())
    throw FabricError(std::string(op) + ": " + where(peer, tag) + ": peer outside 0.." + std::to_string(size() - 1));
}

Request ThreadFabric::isend(int peer, Tag tag, ConstBuf data) {
  check_peer(peer, "isend", tag);
  if (data.phantom_bytes > 0 || (data.ptr == nullptr && data.bytes > 0))
    throw FabricError("isend: " + where(peer, tag) +
                      ": the emulated fabric moves real bytes only (phantom payload of " +
                      std::to_string(data.total()) + " bytes)");
  auto st = std::make_shared<RequestState>();
  st->bytes = st->total_bytes = data.bytes;
  std::unique_lock<std::mutex> lock(world_.mu_);
  auto& box = world_.boxes_[peer];
  for (auto it = box.posted.begin(); it != box.posted.end(); ++it) {
    auto& r = **it;
    if (r.peer != rank_ || r.tag != tag) continue;
    if (data.bytes > r.buf.capacity) {
      r.error = "irecv: rank " + std::to_string(peer) + ", peer " + std::to_string(rank_) + ", tag " +
                describe_tag(tag) + ": message of " + std::to_string(data.bytes) + " bytes exceeds the " +
                std::to_string(r.buf.capacity) + "-byte receive buffer";
    } else if (data.bytes) {
      std::memcpy(r.buf.ptr, data.ptr, data.bytes);
    }
    r.bytes = r.total_bytes = data.bytes;
    r.done = true;
    box.posted.erase(it);
    st->done = true;
    world_.cv_.notify_all();
    return Request(st);
  }
  ThreadWorld::Message m{rank_, tag, {}};
  m.data.assign(static_cast<const uint8_t*>(data.ptr), static_cast<const uint8_t*>(data.ptr) + data.bytes);
  box.unexpected.push_back(std::move(m));
  st->done = true;  // eager: the data is copied, the sender's buffer is free
  world_.cv_.notify_all();
  return Request(st);
}

Request ThreadFabric::irecv(int peer, Tag tag, MutBuf data) {
  check_peer(peer, "irecv", tag);
  auto st = std::make_shared<ThreadWorld::RecvState>();
  st->peer = peer;
  st->tag = tag;
  st->buf = data;
  std::lock_guard<std::mutex> lock(world_.mu_);
  auto& box = world_.boxes_[rank_];
  for (auto it = box.unexpected.begin(); it != box.unexpected.end(); ++it) {
    if (it->src != peer || it->tag != tag) continue;
    if (it->data.size() > data.capacity) {
      st->error = "irecv: " + where(peer, tag) + ": message of " + std::to_string(it->data.size()) +
                  " bytes exceeds the " + std::to_string(data.capacity) + "-byte receive buffer";
    } else if (!it->data.empty()) {
      std::memcpy(data.ptr, it->data.data(), it->data.size());
    }
    st->bytes = st->total_bytes = it->data.size();
    st->done = true;
    box.unexpected.erase(it);
    return Request(st);
  }
  box.posted.push_back(st);
  // Withdraw the receive if every handle to it is dropped before a message matched it (the rank is unwinding).
  ThreadWorld* world = &world_;
  const int me = rank_;
  std::shared_ptr<void> withdraw(nullptr, [world, me, weak = std::weak_ptr<ThreadWorld::RecvState>(st)](void*) {
    std::lock_guard<std::mutex> guard(world->mu_);
    if (auto s = weak.lock()) world->boxes_[me].posted.remove(s);
  });
  return Request(st, std::move(withdraw));
}

void ThreadFabric::wait_all(std::span<Request> reqs, Deadline d) {
  // The caller's deadline expiring is the caller's business; the world's own limit means a hang, which fails
  // the whole run so that no other rank waits forever.
  const double world_limit = now() + world_.timeout_s();
  const bool caller_limit = d.at_s < world_limit;
  const double limit = caller_limit ? d.at_s : world_limit;
  std::unique_lock<std::mutex> lock(world_.mu_);
  for (auto& r : reqs) {
    RequestState* s = r.state();
    if (!s) continue;
    while (!s->done && world_.failure_.empty()) {
      const double left = limit - now();
      if (left <= 0) {
        auto* rs = dynamic_cast<ThreadWorld::RecvState*>(s);
        const std::string msg =
            "wait: " + where(rs ? rs->peer : -1, rs ? rs->tag : 0) + ": deadline passed (" +
            (caller_limit ? std::string("the caller's") : std::to_string(world_.timeout_s()) + " s") +
            ") with the message not yet received";
        if (!caller_limit && world_.failure_.empty()) world_.failure_ = msg;
        world_.cv_.notify_all();
        throw FabricError(msg);
      }
      world_.cv_.wait_for(lock, std::chrono::duration<double>(std::min(left, 0.5)));
    }
    if (!s->error.empty()) throw FabricError(s->error);
    if (!s->done) throw FabricError("rank " + std::to_string(rank_) + " stopped waiting: " + world_.failure_);
  }
}

void ThreadFabric::alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d) {
  std::vector<Request> reqs;
  reqs.reserve(sends.size() + recvs.size());
  for (auto& r : recvs) reqs.push_back(irecv(r.peer, tag, r.data));
  barrier();
  for (auto& s : sends) reqs.push_back(isend(s.peer, tag, s.data));
  wait_all(reqs, d);
  for (size_t i = 0; i < recvs.size(); ++i) {
    recvs[i].bytes = reqs[i].bytes();
    recvs[i].total_bytes = reqs[i].total_bytes();
  }
}

double ThreadFabric::now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - world_.t0_).count();
}

void ThreadFabric::barrier() {
  std::unique_lock<std::mutex> lock(world_.mu_);
  const long gen = world_.barrier_gen_;
  if (++world_.barrier_count_ == size()) {
    world_.barrier_count_ = 0;
    ++world_.barrier_gen_;
    world_.cv_.notify_all();
    return;
  }
  const auto limit = std::chrono::steady_clock::now() + std::chrono::duration<double>(world_.timeout_s());
  while (world_.barrier_gen_ == gen && world_.failure_.empty()) {
    if (world_.cv_.wait_until(lock, limit) == std::cv_status::timeout && world_.barrier_gen_ == gen) {
      const std::string msg = "barrier: rank " + std::to_string(rank_) + " in phase " + phase_ + ": timed out after " +
                              std::to_string(world_.timeout_s()) + " s";
      if (world_.failure_.empty()) world_.failure_ = msg;
      world_.cv_.notify_all();
      throw FabricError(msg);
    }
  }
  if (world_.barrier_gen_ == gen)
    throw FabricError("rank " + std::to_string(rank_) + " left the barrier: " + world_.failure_);
}

namespace {

class ThreadBackend : public Backend {
 public:
  std::string name() const override { return "emu"; }
  std::string description() const override { return "ranks as threads in one process, real bytes, wall clock"; }
  Caps caps() const override { return Caps{}; }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    if (opts.phantom_payload)
      throw EplabError("backend 'emu' moves real bytes only; phantom payloads need --backend=sim");
    ThreadWorld world(topo, opts.timeout_s);
    std::vector<std::exception_ptr> errors(topo.size());
    std::vector<std::thread> threads;
    threads.reserve(topo.size());
    for (int r = 0; r < topo.size(); ++r)
      threads.emplace_back([&, r] {
        ThreadFabric f(world, r);
        run_rank(r, [&] { rank_main(f); }, errors[r], [&](const std::string& why) { world.abort(why); });
      });
    for (auto& t : threads) t.join();
    rethrow_first_rank_error(errors);
  }
};

}  // namespace

std::unique_ptr<Backend> make_thread_backend() { return std::make_unique<ThreadBackend>(); }

}  // namespace eplab
