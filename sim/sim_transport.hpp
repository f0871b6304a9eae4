// The simulated backend's transport: every rank is a SimGrid actor on a host of the platform built from the
// cluster spec. A point-to-point message is matched by the core (engine/transport_fabric.hpp) and becomes one
// SimGrid host-to-host communication started at the match; all-to-all-v is a native extension that runs the
// whole exchange round as ONE parallel task over the bytes matrix, which is what makes 1024+ ranks fast.
#pragma once

#include <cmath>
#include <map>
#include <memory>
#include <simgrid/s4u/Comm.hpp>
#include <simgrid/s4u/Exec.hpp>
#include <string>
#include <vector>

#include "engine/transport_fabric.hpp"
#include "sim/platform.hpp"

namespace eplab::sim {

// What every rank of one simulation shares beside the Domain: the platform, the open collective rounds and
// the pipeline in flight. Actors run one at a time (SimGrid schedules them), so plain counters are safe.
class SimWorld {
 public:
  SimWorld(Topology topo, bool phantom);
  const Topology& topology() const { return topo_; }
  int size() const { return topo_.size(); }
  bool phantom() const { return phantom_; }
  Platform& platform() { return platform_; }
  double t0() const { return t0_; }
  // A SimGrid date as seconds since this world's start, rounded to whole picoseconds: SimGrid's clock runs on
  // across the engines of one process, and the rounding removes the last-bit noise of the subtraction.
  double since_start(double date) const { return std::round((date - t0_) * 1e12) * 1e-12; }
  // The SimGrid date at which now() has certainly reached `s` seconds: one picosecond past it, so the rounding
  // of since_start cannot leave a waiter just short of its limit, waking again and again at the same date.
  double date_of(double s) const { return s + t0_ + 1e-12; }
  void start_clock();
  // Unrounded: since_start without the rounding, and the date of such a value (checkpoints).
  double since_date(double date) const { return date - t0_; }
  double date_of_exact(double s) const { return s + t0_; }
  // "flows" exchange model: alltoallv as one SimGrid communication per message, not one parallel task.
  bool per_flow_ = false;
  // "ptask-pairs" exchange model: the round's parallel task over every non-zero pair as the engine sent them,
  // not the reduced matrix with the same link loads (sim/round_matrix.hpp); for tests and studies.
  bool all_pairs_ = false;
  // Where rounds report their bytes per link (timeline, link utilization); null: not recorded.
  void set_recorder(LinkRecorder* r);

 private:
  friend class SimTransport;
  // One alltoallv round: every rank deposits its sends and receive buffers; the last to arrive copies the
  // real bytes, runs the bytes matrix as one parallel task and releases the others.
  struct Round {
    int arrived = 0;
    bool done = false;
    std::vector<double> bytes;                 // [src * R + dst] modeled bytes
    std::vector<std::vector<PeerSend>> sends;  // by source rank
    std::vector<std::span<PeerRecv>> recvs;    // by destination rank
    std::vector<std::string> errors;           // by rank
  };
  // Copies the round's real bytes and charges its bytes matrix: blocking, or started and left running when
  // the round belongs to a pipeline (finished by finish_pipeline).
  void run_round(Tag tag, Round& round, bool pipelined);
  void finish_pipeline(int chunks);
  std::vector<double> link_bytes(const std::vector<double>& bytes) const;

  Topology topo_;
  bool phantom_;
  Platform platform_;
  double t0_ = 0;
  std::map<Tag, Round> rounds_;
  double pipeline_start_ = -1;  // SimGrid date the open pipeline's first round started
  std::vector<simgrid::s4u::ExecPtr> pipeline_tasks_;
  // Link recording: the phase of the round being run, and a pipeline's rounds until their tasks end.
  LinkRecorder* recorder_ = nullptr;
  std::string round_phase_;
  struct PendingRound {
    std::string phase;
    double start;
    std::vector<double> link_bytes;  // per link, not the ranks² matrix: bounded memory at scale
  };
  std::vector<PendingRound> pipeline_records_;  // parallel to pipeline_tasks_ while recording
};

class SimTransport final : public Transport,
                           public AlltoallvExtension,
                           public PipelineExtension,
                           public LinkRecordingExtension,
                           public LinkFaultExtension {
 public:
  SimTransport(SimWorld& world, Domain& domain, int rank) : world_(world), domain_(domain), rank_(rank) {}
  TransportCaps caps() const override;
  double now() const override;
  double exact_clock() const override;
  void advance_clock(double exact) override;
  void charge(const ComputeCost& c) override;
  void post_send(SendOp& op, ConstBuf data) override;
  void on_match(RecvOp& op, Arrival& a) override;
  bool test(RequestState& op) override;
  void block(Domain& d, RequestState& pending, double until_s) override;
  void* extension(ExtensionId id) override;

  void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                 Deadline d) override;
  void begin_pipeline(TransportFabric&, int chunks) override { pipeline_chunks_ = std::max(chunks, 1); }
  void end_pipeline(TransportFabric& f) override;
  void record_links(LinkRecorder* r) override { world_.set_recorder(r); }
  void set_nic_bandwidth_fraction(int rank, double fraction) override;
  void schedule_nic_bandwidth_fraction(int rank, double fraction, double at_s) override;

 private:
  SimWorld& world_;
  Domain& domain_;
  int rank_;
  int pipeline_chunks_ = 0;  // > 0 between begin_pipeline and end_pipeline
};

// Simulated actors: a SimGrid mutex and condition variable, waits until a simulated date.
std::unique_ptr<Sync> make_actor_sync(const SimWorld& world);

// Process-wide SimGrid settings (network model, log level); call after creating an s4u::Engine and before
// building a platform. Later calls do nothing: SimGrid refuses model changes once a platform existed.
void configure_simgrid_once();

// Roofline time of a piece of work on the cluster's GPU: max(FLOPs over peak, bytes over HBM bandwidth),
// both derated by the compute efficiency, plus any fixed duration.
double roofline_seconds(const ClusterSpec& spec, const ComputeCost& c);

}  // namespace eplab::sim
