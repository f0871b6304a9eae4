#include "sim/sim_fabric.hpp"

#include <xbt/log.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <simgrid/Exception.hpp>
#include <simgrid/s4u/Actor.hpp>
#include <simgrid/s4u/Engine.hpp>
#include <simgrid/s4u/Host.hpp>

#include "sim/sim_backend.hpp"

namespace eplab::sim {

namespace s4u = simgrid::s4u;

SimWorld::SimWorld(Topology topo, double timeout_s, bool phantom)
    : topo_(std::move(topo)),
      timeout_s_(timeout_s),
      phantom_(phantom),
      platform_(build_platform(topo_)),
      mu_(s4u::Mutex::create()),
      cv_(s4u::ConditionVariable::create()),
      boxes_(topo_.size()) {}

void SimWorld::start_clock() { t0_ = s4u::Engine::get_clock(); }

void SimWorld::abort(const std::string& why) {
  if (failure_.empty()) failure_ = why;
  cv_->notify_all();
}

// Called once a send and a receive meet: copies the real bytes and starts the modeled transfer. The
// receiver's wait completes when the transfer does.
void SimWorld::match(RecvState& r, const Message& m, int me) {
  r.matched = true;
  r.bytes = m.data.size();
  r.total_bytes = m.total;
  if (m.data.size() > r.buf.capacity) {
    r.error = "irecv: rank " + std::to_string(me) + ", peer " + std::to_string(m.src) + ", tag " + describe_tag(m.tag) +
              ": message of " + std::to_string(m.data.size()) + " bytes exceeds the " + std::to_string(r.buf.capacity) +
              "-byte receive buffer";
    r.bytes = 0;
    return;
  }
  if (!m.data.empty()) std::memcpy(r.buf.ptr, m.data.data(), m.data.size());
  // L07 never completes a zero-byte transfer; one byte costs the route latency and nothing measurable more.
  if (m.src != me)
    r.comm = s4u::Comm::sendto_async(platform_.hosts[m.src], platform_.hosts[me], std::max<uint64_t>(m.total, 1));
}

void SimWorld::set_recorder(LinkRecorder* r) {
  if (r == recorder_) return;  // every rank passes the same one
  recorder_ = r;
  if (r) r->set_links(platform_links(topo_));
}

// Spreads a round's bytes matrix over the links of each pair's route; O(nonzero pairs), next to the O(ranks²)
// the round itself costs.
std::vector<double> SimWorld::link_bytes(const std::vector<double>& bytes) const {
  const int R = size();
  const int groups = topo_.spec().scaleout == ScaleOutKind::kRailOptimized ? topo_.gpus_per_node() : topo_.nodes();
  std::vector<double> per_link(4 * static_cast<size_t>(R) + 2 * static_cast<size_t>(groups), 0.0);
  int ids[4];
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < R; ++b) {
      const double x = bytes[static_cast<size_t>(a) * R + b];
      if (x <= 0) continue;
      const int n = route_link_ids(topo_, a, b, ids);
      for (int i = 0; i < n; ++i) per_link[ids[i]] += x;
    }
  return per_link;
}

void SimWorld::run_round(Tag tag, Round& round, bool pipelined) {
  const int R = size();
  // Sends to each destination, in source order (every source appended in rank order), for binary search.
  std::vector<std::vector<std::pair<int, const PeerSend*>>> to(R);
  for (int src = 0; src < R; ++src)
    for (const PeerSend& s : round.sends[src]) to[s.peer].push_back({src, &s});
  for (int dst = 0; dst < R; ++dst)
    for (PeerRecv& r : round.recvs[dst]) {
      auto& v = to[dst];
      auto it = std::lower_bound(v.begin(), v.end(), std::make_pair(r.peer, static_cast<const PeerSend*>(nullptr)),
                                 [](const auto& a, const auto& b) { return a.first < b.first; });
      if (it == v.end() || it->first != r.peer) {
        if (round.errors[dst].empty())
          round.errors[dst] = "alltoallv: rank " + std::to_string(dst) + ", peer " + std::to_string(r.peer) + ", tag " +
                              describe_tag(tag) + ": every rank entered the round but the peer sent nothing";
        continue;
      }
      const ConstBuf& b = it->second->data;
      const size_t real = b.ptr ? b.bytes : 0;
      if (real > r.data.capacity) {
        if (round.errors[dst].empty())
          round.errors[dst] = "alltoallv: rank " + std::to_string(dst) + ", peer " + std::to_string(r.peer) + ", tag " +
                              describe_tag(tag) + ": message of " + std::to_string(real) + " bytes exceeds the " +
                              std::to_string(r.data.capacity) + "-byte receive buffer";
        continue;
      }
      if (real) std::memcpy(r.data.ptr, b.ptr, real);
      r.bytes = real;
      r.total_bytes = b.ptr ? b.total() : b.bytes + b.phantom_bytes;
    }
  // The whole round is one parallel task: SimGrid's L07 model shares every link among the pairs crossing it
  // and finishes the task when its most loaded link has drained, after the largest route latency.
  const bool any = std::any_of(round.bytes.begin(), round.bytes.end(), [](double x) { return x > 0; });
  std::vector<double> flops(R, 0.0);
  if (pipelined) {
    // A pipelined stage starts now and runs concurrently with the stages before and after it; the ranks go on
    // (their data is already in place) and meet again in end_pipeline.
    if (pipeline_start_ < 0) pipeline_start_ = s4u::Engine::get_clock();
    if (any) {
      auto task = s4u::this_actor::exec_init(platform_.hosts, flops, round.bytes);
      task->start();
      pipeline_tasks_.push_back(task);
      if (recorder_) pipeline_records_.push_back({round_phase_, s4u::Engine::get_clock(), link_bytes(round.bytes)});
    }
    return;
  }
  const double start = s4u::Engine::get_clock();
  if (any) s4u::this_actor::parallel_execute(platform_.hosts, flops, round.bytes);
  if (any && recorder_)
    recorder_->link_round(round_phase_, since_start(start), since_start(s4u::Engine::get_clock()),
                          link_bytes(round.bytes));
  if (topo_.spec().round_overhead_s > 0) s4u::this_actor::sleep_for(topo_.spec().round_overhead_s);
}

// The stages of a pipeline ran concurrently, sharing links where they overlap. The chain cannot end before its
// longest stage nor before the last chunk has crossed the shortest one after it: end = max(stage ends) +
// min(stage durations) / chunks, then one round overhead for the chain.
void SimWorld::finish_pipeline(int chunks) {
  double last_end = s4u::Engine::get_clock(), shortest = -1;
  for (size_t i = 0; i < pipeline_tasks_.size(); ++i) {
    pipeline_tasks_[i]->wait();
    const double end = s4u::Engine::get_clock();
    if (i < pipeline_records_.size()) {
      const PendingRound& p = pipeline_records_[i];
      recorder_->link_round(p.phase, since_start(p.start), since_start(end), p.link_bytes);
    }
    last_end = std::max(last_end, end);
    const double dur = end - pipeline_start_;
    shortest = shortest < 0 ? dur : std::min(shortest, dur);
  }
  double end = last_end;
  if (pipeline_tasks_.size() > 1) end += shortest / chunks;
  end += topo_.spec().round_overhead_s;
  if (end > s4u::Engine::get_clock()) s4u::this_actor::sleep_until(end);
  pipeline_tasks_.clear();
  pipeline_records_.clear();
  pipeline_start_ = -1;
}

Caps SimFabric::caps() const {
  Caps c;
  c.phantom_payload = true;
  c.real_payload = true;
  c.modeled_time = true;
  c.native_alltoallv = true;
  return c;
}

std::string SimFabric::where(int peer, Tag tag) const {
  return "rank " + std::to_string(rank_) + ", peer " + std::to_string(peer) + ", tag " + describe_tag(tag) +
         ", phase " + phase_;
}

void SimFabric::check_peer(int peer, const char* op, Tag tag) const {
  if (peer < 0 || peer >= size())
    throw FabricError(std::string(op) + ": " + where(peer, tag) + ": peer outside 0.." + std::to_string(size() - 1));
}

double SimFabric::limit_of(Deadline d, bool* caller) const {
  const double world_limit = s4u::Engine::get_clock() + world_.timeout_s();
  const double mine = d.at_s + world_.t0();
  *caller = mine < world_limit;
  return *caller ? mine : world_limit;
}

// SimGrid's clock runs on across the engines of one process, so a launch's start date differs between runs and
// the subtraction leaves last-bit noise; rounding to whole picoseconds makes the same run give the same times.
double SimFabric::now() const { return world_.since_start(s4u::Engine::get_clock()); }

Request SimFabric::isend(int peer, Tag tag, ConstBuf data) {
  check_peer(peer, "isend", tag);
  auto st = std::make_shared<RequestState>();
  const size_t real = data.ptr ? data.bytes : 0;
  st->bytes = real;
  st->total_bytes = data.bytes + data.phantom_bytes;
  st->done = true;  // eager: the bytes are copied now, the modeled transfer is charged to the receiver's wait
  SimWorld::Message m{rank_, tag, {}, st->total_bytes};
  if (real) m.data.assign(static_cast<const uint8_t*>(data.ptr), static_cast<const uint8_t*>(data.ptr) + real);
  auto& box = world_.boxes_[peer];
  for (auto it = box.posted.begin(); it != box.posted.end(); ++it) {
    if ((*it)->peer != rank_ || (*it)->tag != tag) continue;
    world_.match(**it, m, peer);
    box.posted.erase(it);
    world_.cv_->notify_all();
    return Request(st);
  }
  box.unexpected.push_back(std::move(m));
  return Request(st);
}

Request SimFabric::irecv(int peer, Tag tag, MutBuf data) {
  check_peer(peer, "irecv", tag);
  auto st = std::make_shared<SimWorld::RecvState>();
  st->peer = peer;
  st->tag = tag;
  st->buf = data;
  auto& box = world_.boxes_[rank_];
  for (auto it = box.unexpected.begin(); it != box.unexpected.end(); ++it) {
    if (it->src != peer || it->tag != tag) continue;
    // Out of the queue before match(): starting the modeled transfer is a simcall that lets other actors run,
    // and their isends to this rank append to the deque, which invalidates `it`.
    const SimWorld::Message m = std::move(*it);
    box.unexpected.erase(it);
    world_.match(*st, m, rank_);
    return Request(st);
  }
  box.posted.push_back(st);
  return Request(st);
}

void SimFabric::wait_all(std::span<Request> reqs, Deadline d) {
  bool caller = false;
  const double limit = limit_of(d, &caller);
  auto expired = [&](int peer, Tag tag) {
    const std::string msg =
        "wait: " + where(peer, tag) + ": deadline passed (" +
        (caller ? std::string("the caller's") : std::to_string(world_.timeout_s()) + " s simulated") +
        ") with the message not yet received";
    // The world's own limit means a hang: fail the run so that no other rank waits forever.
    if (!caller) world_.abort(msg);
    return FabricError(msg);
  };
  for (auto& req : reqs) {
    auto* r = dynamic_cast<SimWorld::RecvState*>(req.state());
    if (!r || r->done) continue;
    if (!r->matched) {
      std::unique_lock<s4u::Mutex> lock(*world_.mu_);
      while (!r->matched && world_.failure_.empty())
        if (world_.cv_->wait_until(lock, limit) == std::cv_status::timeout && !r->matched)
          throw expired(r->peer, r->tag);
      if (!r->matched) throw FabricError("rank " + std::to_string(rank_) + " stopped waiting: " + world_.failure_);
    }
    if (r->comm) {
      try {
        r->comm->wait_until(limit);
      } catch (const simgrid::TimeoutException&) {
        throw expired(r->peer, r->tag);
      }
      r->comm = nullptr;
    }
    r->done = true;
    if (!r->error.empty()) throw FabricError(r->error + " (phase " + phase_ + ")");
  }
}

void SimFabric::alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d) {
  // Per-flow mode: every message its own SimGrid communication (the generic isend/irecv exchange).
  if (world_.per_flow_) return Fabric::alltoallv(tag, sends, recvs, d);
  const int R = size();
  for (auto& s : sends) check_peer(s.peer, "alltoallv", tag);
  for (auto& r : recvs) check_peer(r.peer, "alltoallv", tag);
  auto& round = world_.rounds_[tag];
  if (round.bytes.empty()) {
    round.bytes.assign(static_cast<size_t>(R) * R, 0.0);
    round.sends.resize(R);
    round.recvs.resize(R);
    round.errors.resize(R);
  }
  round.sends[rank_].assign(sends.begin(), sends.end());
  round.recvs[rank_] = recvs;
  for (auto& s : sends)
    if (s.peer != rank_) round.bytes[static_cast<size_t>(rank_) * R + s.peer] += static_cast<double>(s.data.total());
  if (++round.arrived == R) {
    world_.round_phase_ = phase_;
    world_.run_round(tag, round, pipeline_chunks_ > 0);
    round.done = true;
    world_.cv_->notify_all();
  } else {
    bool caller = false;
    const double limit = limit_of(d, &caller);
    std::unique_lock<s4u::Mutex> lock(*world_.mu_);
    while (!round.done && world_.failure_.empty())
      if (world_.cv_->wait_until(lock, limit) == std::cv_status::timeout && !round.done) {
        const std::string msg = "alltoallv: " + where(-1, tag) + ": deadline passed with " +
                                std::to_string(round.arrived) + " of " + std::to_string(R) + " ranks in the round";
        if (!caller) world_.abort(msg);
        throw FabricError(msg);
      }
    if (!round.done) throw FabricError("rank " + std::to_string(rank_) + " left alltoallv: " + world_.failure_);
  }
  const std::string err = round.errors[rank_];
  // The last rank to read the round frees it (its bytes matrix is ranks² doubles).
  if (--round.arrived == 0) world_.rounds_.erase(tag);
  if (!err.empty()) throw FabricError(err + " (phase " + phase_ + ")");
}

// ptask_L07 is the model that runs parallel tasks; it shares link bandwidth max-min fairly and applies none of
// the TCP corrections (window-limited gamma, latency and bandwidth factors) of the default LV08 model, which are
// calibrated for TCP over Ethernet and wrong for RDMA and NVLink.
void configure_simgrid_once() {
  static bool done = false;
  if (done) return;
  done = true;
  xbt_log_control_set("root.thresh:warning");
  s4u::Engine::set_config("host/model:ptask_L07");
  // One actor per GPU: 2048 default 8 MiB stacks are 16 GiB of address space. The engine's frames are shallow
  // (its data lives on the heap), so 1 MiB is ample.
  s4u::Engine::set_config("contexts/stack-size", 1024);
}

double roofline_seconds(const ClusterSpec& spec, const ComputeCost& c) {
  const double eff = spec.compute_efficiency > 0 ? spec.compute_efficiency : 1.0;
  const double t_flops = c.flops / (spec.gpu.bf16_tflops * 1e12 * eff);
  const double t_mem = c.hbm_bytes / (spec.gpu.hbm_GBps * 1e9 * eff);
  return std::max(t_flops, t_mem) + c.fixed_s;
}

void SimFabric::compute(const ComputeCost& c) {
  const double t = roofline_seconds(topology().spec(), c);
  if (t > 0) s4u::this_actor::sleep_for(t);
}

void SimFabric::rendezvous(int& count, long& gen_counter, const char* what, const std::function<void()>& last) {
  const long gen = gen_counter;
  if (++count == size()) {
    if (last) last();
    count = 0;
    ++gen_counter;
    world_.cv_->notify_all();
    return;
  }
  std::unique_lock<s4u::Mutex> lock(*world_.mu_);
  const double limit = s4u::Engine::get_clock() + world_.timeout_s();
  while (gen_counter == gen && world_.failure_.empty())
    if (world_.cv_->wait_until(lock, limit) == std::cv_status::timeout && gen_counter == gen) {
      const std::string msg = std::string(what) + ": rank " + std::to_string(rank_) + " in phase " + phase_ +
                              ": timed out after " + std::to_string(world_.timeout_s()) + " s simulated";
      world_.abort(msg);
      throw FabricError(msg);
    }
  if (gen_counter == gen)
    throw FabricError(std::string(what) + ": rank " + std::to_string(rank_) + " left: " + world_.failure_);
}

void SimFabric::barrier() { rendezvous(world_.barrier_count_, world_.barrier_gen_, "barrier", {}); }

void SimFabric::end_pipeline() {
  const int chunks = pipeline_chunks_;
  pipeline_chunks_ = 0;
  if (chunks == 0) return;
  rendezvous(world_.pipeline_count_, world_.pipeline_gen_, "end_pipeline",
             [this, chunks] { world_.finish_pipeline(chunks); });
}

namespace {

class SimBackend : public Backend {
 public:
  std::string name() const override { return "sim"; }
  std::string description() const override {
    return "SimGrid simulation: one actor per GPU, modeled NVLink/NIC links, phantom or real payloads";
  }
  Caps caps() const override {
    Caps c;
    c.phantom_payload = true;
    c.real_payload = true;
    c.modeled_time = true;
    c.native_alltoallv = true;
    return c;
  }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    if (!opts.sim_model.empty() && opts.sim_model != "ptask" && opts.sim_model != "flows")
      throw EplabError("backend 'sim': unknown exchange model '" + opts.sim_model + "' (known: ptask, flows)");
    int argc = 1;
    char name[] = "eplab";
    char* argv[] = {name, nullptr};
    // One engine per launch; SimGrid allows a new one once the previous is gone. Its clock keeps running
    // across engines, so the world measures time from its own start.
    s4u::Engine engine(&argc, argv);
    configure_simgrid_once();
    SimWorld world(topo, opts.timeout_s, opts.phantom_payload);
    world.per_flow_ = opts.sim_model == "flows";
    std::vector<std::exception_ptr> errors(topo.size());
    for (int r = 0; r < topo.size(); ++r)
      s4u::Actor::create("rank" + std::to_string(r), world.platform().hosts[r], [&world, &errors, &rank_main, r] {
        SimFabric f(world, r);
        run_rank(r, [&] { rank_main(f); }, errors[r], [&](const std::string& why) { world.abort(why); });
      });
    world.start_clock();
    engine.run();
    rethrow_first_rank_error(errors);
  }
};

}  // namespace
}  // namespace eplab::sim

namespace eplab {
std::unique_ptr<Backend> make_sim_backend() { return std::make_unique<sim::SimBackend>(); }
}  // namespace eplab
