#include "sim/sim_transport.hpp"

#include <malloc.h>
#include <xbt/log.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <simgrid/Exception.hpp>
#include <simgrid/s4u/Actor.hpp>
#include <simgrid/s4u/ConditionVariable.hpp>
#include <simgrid/s4u/Engine.hpp>
#include <simgrid/s4u/Host.hpp>
#include <simgrid/s4u/Mutex.hpp>

#include "sim/round_matrix.hpp"
#include "sim/sim_backend.hpp"

namespace eplab::sim {

namespace s4u = simgrid::s4u;

SimWorld::SimWorld(Topology topo, bool phantom)
    : topo_(std::move(topo)), phantom_(phantom), platform_(build_platform(topo_)) {}

void SimWorld::start_clock() { t0_ = s4u::Engine::get_clock(); }

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
  std::vector<double> per_link;
  if (any && recorder_) per_link = link_bytes(round.bytes);
  // Same link loads and latency, O(ranks) pairs instead of up to ranks²: SimGrid expands a task link by link
  // per pair, searching the task's constraints each time, which made all-pairs rounds grow as ranks³.
  if (any && !all_pairs_) reduce_round_matrix(topo_, round.bytes);
  if (pipelined) {
    // A pipelined stage starts now and runs concurrently with the stages before and after it; the ranks go on
    // (their data is already in place) and meet again in end_pipeline.
    if (pipeline_start_ < 0) pipeline_start_ = s4u::Engine::get_clock();
    if (any) {
      auto task = s4u::this_actor::exec_init(platform_.hosts, flops, round.bytes);
      task->start();
      pipeline_tasks_.push_back(task);
      if (recorder_) pipeline_records_.push_back({round_phase_, s4u::Engine::get_clock(), std::move(per_link)});
    }
    return;
  }
  const double start = s4u::Engine::get_clock();
  if (any) s4u::this_actor::parallel_execute(platform_.hosts, flops, round.bytes);
  if (any && recorder_)
    recorder_->link_round(round_phase_, since_start(start), since_start(s4u::Engine::get_clock()),
                          std::move(per_link));
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

namespace {

// A simcall lets other actors run, so even cooperative actors hold the SimGrid mutex from checking a condition
// to waiting on it: otherwise a wake-up could come in between and be lost.
class ActorSync : public Sync {
 public:
  explicit ActorSync(const SimWorld& world)
      : world_(world), mu_(s4u::Mutex::create()), cv_(s4u::ConditionVariable::create()) {}
  void lock() override { mu_->lock(); }
  void unlock() override { mu_->unlock(); }
  void wait(double until_s) override {
    std::unique_lock<s4u::Mutex> held(*mu_, std::adopt_lock);
    if (std::isinf(until_s))
      cv_->wait(held);
    else
      cv_->wait_until(held, world_.date_of(until_s));
    held.release();
  }
  void notify_all() override { cv_->notify_all(); }

 private:
  const SimWorld& world_;
  s4u::MutexPtr mu_;
  s4u::ConditionVariablePtr cv_;
};

// The modeled flow of a matched point-to-point message; the receive completes when it does.
struct Flow {
  s4u::CommPtr comm;
};

}  // namespace

std::unique_ptr<Sync> make_actor_sync(const SimWorld& world) { return std::make_unique<ActorSync>(world); }

TransportCaps SimTransport::caps() const {
  TransportCaps c;
  c.phantom_payload = true;
  c.real_payload = true;
  c.modeled_time = true;
  return c;
}

// SimGrid's clock runs on across the engines of one process, so a launch's start date differs between runs and
// the subtraction leaves last-bit noise; rounding to whole picoseconds makes the same run give the same times.
double SimTransport::now() const { return world_.since_start(s4u::Engine::get_clock()); }

double SimTransport::exact_clock() const { return world_.since_date(s4u::Engine::get_clock()); }

// A fresh process starts its launch at SimGrid date 0, so sleeping from there lands on the saved date exactly.
void SimTransport::advance_clock(double exact) {
  const double wait = world_.date_of_exact(exact) - s4u::Engine::get_clock();
  if (wait > 0) s4u::this_actor::sleep_for(wait);
}

void* SimTransport::extension(ExtensionId id) {
  switch (id) {
    case ExtensionId::kAlltoallv:
      return static_cast<AlltoallvExtension*>(this);
    case ExtensionId::kPipeline:
      return static_cast<PipelineExtension*>(this);
    case ExtensionId::kLinkRecording:
      return static_cast<LinkRecordingExtension*>(this);
    case ExtensionId::kLinkFaults:
      return static_cast<LinkFaultExtension*>(this);
  }
  return nullptr;
}

// The reduced round matrices stay exact: they keep every link's load (sim/round_matrix.hpp), and a link's
// bandwidth is the link's own, whatever the matrix.
void SimTransport::set_nic_bandwidth_fraction(int rank, double fraction) {
  set_nic_bandwidth(world_.topology(), rank, fraction);
}

// A daemon actor on the rank's host sleeps until the date and changes the links; SimGrid re-shares the bandwidth
// of every flow and parallel task under way from then. Daemons end with the last rank, so a date past the end
// of the run neither changes nor prolongs anything.
void SimTransport::schedule_nic_bandwidth_fraction(int rank, double fraction, double at_s) {
  SimWorld* world = &world_;  // the launch's, which outlives its actors (this rank's transport may not)
  const double date = world->date_of_exact(at_s);
  s4u::Actor::create("link-fault-" + std::to_string(rank), world->platform().hosts[rank], [world, rank, fraction, date] {
    s4u::this_actor::sleep_until(date);
    set_nic_bandwidth(world->topology(), rank, fraction);
  })->daemonize();
}

void SimTransport::post_send(SendOp& op, ConstBuf data) {
  // Eager: the bytes are copied at the match or retained now; the modeled transfer is charged to the receiver.
  domain_.deliver(op.peer, *this, Arrival{rank_, op.tag, data.ptr, data.bytes, data.total(), nullptr});
  op.done = true;
}

// A send and a receive met: copy the real bytes and start the modeled transfer from the sender's host.
void SimTransport::on_match(RecvOp& op, Arrival& a) {
  if (a.bytes) std::memcpy(op.buf.ptr, a.data, a.bytes);
  if (a.src == op.rank) {
    op.done = true;
    return;
  }
  // L07 never completes a zero-byte transfer; one byte costs the route latency and nothing measurable more.
  auto flow = std::make_shared<Flow>();
  flow->comm = s4u::Comm::sendto_async(world_.platform().hosts[a.src], world_.platform().hosts[op.rank],
                                       std::max<uint64_t>(a.total_bytes, 1));
  op.transfer = std::move(flow);
}

bool SimTransport::test(RequestState& s) {
  if (s.done) return true;
  auto* r = dynamic_cast<RecvOp*>(&s);
  if (!r || !r->matched) return false;
  auto* flow = static_cast<Flow*>(r->transfer.get());
  if (flow && !flow->comm->test()) return false;
  r->transfer.reset();
  r->done = true;
  return true;
}

void SimTransport::block(Domain& d, RequestState& pending, double until_s) {
  auto* r = dynamic_cast<RecvOp*>(&pending);
  auto* flow = r && r->matched ? static_cast<Flow*>(r->transfer.get()) : nullptr;
  if (!flow) return d.sync().wait(until_s);
  // The flow ends on its own: wait for it in simulated time, not for a wake-up.
  d.sync().unlock();
  try {
    if (std::isinf(until_s))
      flow->comm->wait();
    else
      flow->comm->wait_until(world_.date_of(until_s));
  } catch (const simgrid::TimeoutException&) {
  }
  d.sync().lock();
}

void SimTransport::alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                             Deadline d) {
  // Per-flow mode: every message its own SimGrid communication (the generic isend/irecv exchange).
  if (world_.per_flow_) return f.alltoallv_by_messages(tag, sends, recvs, d, false);
  const int R = world_.size();
  for (auto& s : sends) f.check_peer(s.peer, "alltoallv", tag);
  for (auto& r : recvs) f.check_peer(r.peer, "alltoallv", tag);
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
    world_.round_phase_ = f.phase();
    world_.run_round(tag, round, pipeline_chunks_ > 0);
    round.done = true;
    SyncLock lock(domain_.sync());
    domain_.sync().notify_all();
  } else {
    bool caller = false;
    const double limit = f.limit_of(d, &caller);
    SyncLock lock(domain_.sync());
    while (!round.done && domain_.failure().empty()) {
      if (now() >= limit) {
        const std::string state =
            " with " + std::to_string(round.arrived) + " of " + std::to_string(R) + " ranks in the round";
        lock.unlock();
        throw f.expired("alltoallv: " + f.where(-1, tag), state, caller);
      }
      domain_.sync().wait(limit);
    }
    if (!round.done) throw FabricError("rank " + std::to_string(rank_) + " left alltoallv: " + domain_.failure());
  }
  const std::string err = round.errors[rank_];
  // The last rank to read the round frees it (its bytes matrix is ranks² doubles).
  if (--round.arrived == 0) world_.rounds_.erase(tag);
  if (!err.empty()) throw FabricError(err + " (phase " + f.phase() + ")");
}

void SimTransport::end_pipeline(TransportFabric& f) {
  const int chunks = pipeline_chunks_;
  pipeline_chunks_ = 0;
  if (chunks == 0) return;
  domain_.rendezvous("end_pipeline: rank " + std::to_string(rank_) + " in phase " + f.phase(), *this,
                     [this, chunks] { world_.finish_pipeline(chunks); });
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
  // Every layer allocates and frees the same large buffers (a rank's routing batch and slots, a round's bytes
  // matrix, ranks² doubles at 4096 GPUs): from the heap they are reused, while above glibc's mmap threshold each
  // would be mapped, page-faulted in zeroed and unmapped again, which cost a quarter of the run's time.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

double roofline_seconds(const ClusterSpec& spec, const ComputeCost& c) {
  const double eff = spec.compute_efficiency > 0 ? spec.compute_efficiency : 1.0;
  const double t_flops = c.flops / (spec.gpu.bf16_tflops * 1e12 * eff);
  const double t_mem = c.hbm_bytes / (spec.gpu.hbm_GBps * 1e9 * eff);
  return std::max(t_flops, t_mem) + c.fixed_s;
}

void SimTransport::charge(const ComputeCost& c) {
  const double t = roofline_seconds(world_.topology().spec(), c);
  if (t > 0) s4u::this_actor::sleep_for(t);
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
    if (!opts.sim_model.empty() && opts.sim_model != "ptask" && opts.sim_model != "ptask-pairs" &&
        opts.sim_model != "flows")
      throw EplabError("backend 'sim': unknown exchange model '" + opts.sim_model +
                       "' (known: ptask, ptask-pairs, flows)");
    int argc = 1;
    char name[] = "eplab";
    char* argv[] = {name, nullptr};
#if defined(__SANITIZE_ADDRESS__)
    // AddressSanitizer cannot follow SimGrid's default actor contexts (stacks switched by hand inside an
    // uninstrumented library: it reports the switches as stack errors). One thread per actor, handed control in
    // turn, runs the same simulation on stacks ASan knows, only slower; sanitizer builds use it. The factory is
    // chosen when an engine is created, hence before it.
    xbt_log_control_set("xbt_cfg.thresh:warning");
    s4u::Engine::set_config("contexts/factory", std::string("thread"));
#endif
    // One engine per launch; SimGrid allows a new one once the previous is gone. Its clock keeps running
    // across engines, so the world measures time from its own start.
    s4u::Engine engine(&argc, argv);
    configure_simgrid_once();
    SimWorld world(topo, opts.phantom_payload);
    world.per_flow_ = opts.sim_model == "flows";
    world.all_pairs_ = opts.sim_model == "ptask-pairs";
    Domain domain(topo.size(), topo.size(), 0, make_actor_sync(world), opts.timeout_s);
    std::vector<std::exception_ptr> errors(topo.size());
    for (int r = 0; r < topo.size(); ++r)
      s4u::Actor::create("rank" + std::to_string(r), world.platform().hosts[r], [&, r] {
        SimTransport t(world, domain, r);
        TransportFabric f(domain, t, r, world.topology());
        run_rank(
            r, [&] { rank_main(f); }, errors[r], [&](const std::string& why) { domain.fail(why); });
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
