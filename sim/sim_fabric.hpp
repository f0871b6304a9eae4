// SimFabric: one rank of a SimWorld. Point-to-point messages are matched by (peer, tag) like MPI and each
// becomes one SimGrid host-to-host communication; alltoallv is a native collective that runs the whole
// exchange round as ONE parallel task over the bytes matrix, which is what makes 1024+ ranks fast.
#pragma once

#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <simgrid/s4u/Comm.hpp>
#include <simgrid/s4u/ConditionVariable.hpp>
#include <simgrid/s4u/Exec.hpp>
#include <simgrid/s4u/Mutex.hpp>
#include <string>
#include <vector>

#include "engine/fabric.hpp"
#include "sim/platform.hpp"

namespace eplab::sim {

// State shared by every rank of one simulation: matching queues, the open collective rounds, barriers and
// the first failure. Actors run one at a time (SimGrid schedules them), so the mutex only orders blocking.
class SimWorld {
 public:
  SimWorld(Topology topo, double timeout_s, bool phantom);
  const Topology& topology() const { return topo_; }
  int size() const { return topo_.size(); }
  double timeout_s() const { return timeout_s_; }
  bool phantom() const { return phantom_; }
  Platform& platform() { return platform_; }
  double t0() const { return t0_; }
  // A SimGrid date as seconds since this world's start, rounded to whole picoseconds: SimGrid's clock runs on
  // across the engines of one process, and the rounding removes the last-bit noise of the subtraction.
  double since_start(double date) const { return std::round((date - t0_) * 1e12) * 1e-12; }
  void start_clock();
  // Marks the world failed and wakes every blocked rank, which then throws with this message.
  void abort(const std::string& why);
  const std::string& failure() const { return failure_; }
  // "flows" exchange model: alltoallv as one SimGrid communication per message, not one parallel task.
  bool per_flow_ = false;
  // Where rounds report their bytes per link (timeline, link utilization); null: not recorded.
  void set_recorder(LinkRecorder* r);

 private:
  friend class SimFabric;
  struct RecvState : RequestState {
    int peer = -1;
    Tag tag = 0;
    MutBuf buf;
    bool matched = false;
    simgrid::s4u::CommPtr comm;  // the modeled transfer, started when send and receive have both been posted
  };
  struct Message {
    int src;
    Tag tag;
    std::vector<uint8_t> data;
    size_t total;
  };
  struct Box {
    std::deque<Message> unexpected;
    std::list<std::shared_ptr<RecvState>> posted;
  };
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
  void match(RecvState& r, const Message& m, int me);
  // Copies the round's real bytes and charges its bytes matrix: blocking, or started and left running when
  // the round belongs to a pipeline (finished by finish_pipeline).
  void run_round(Tag tag, Round& round, bool pipelined);
  void finish_pipeline(int chunks);

  Topology topo_;
  double timeout_s_;
  bool phantom_;
  Platform platform_;
  double t0_ = 0;
  simgrid::s4u::MutexPtr mu_;
  simgrid::s4u::ConditionVariablePtr cv_;
  std::vector<Box> boxes_;
  std::map<Tag, Round> rounds_;
  std::string failure_;
  int barrier_count_ = 0;
  long barrier_gen_ = 0;
  int pipeline_count_ = 0;
  long pipeline_gen_ = 0;
  double pipeline_start_ = -1;  // SimGrid date the open pipeline's first round started
  std::vector<simgrid::s4u::ExecPtr> pipeline_tasks_;
  // Link recording: the phase of the round being run, and a pipeline's rounds until their tasks end.
  std::vector<double> link_bytes(const std::vector<double>& bytes) const;
  LinkRecorder* recorder_ = nullptr;
  std::string round_phase_;
  struct PendingRound {
    std::string phase;
    double start;
    std::vector<double> link_bytes;  // per link, not the ranks² matrix: bounded memory at scale
  };
  std::vector<PendingRound> pipeline_records_;  // parallel to pipeline_tasks_ while recording
};

class SimFabric : public Fabric {
 public:
  SimFabric(SimWorld& world, int rank) : world_(world), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return world_.size(); }
  const Topology& topology() const override { return world_.topology(); }
  Caps caps() const override;
  Request isend(int peer, Tag tag, ConstBuf data) override;
  Request irecv(int peer, Tag tag, MutBuf data) override;
  void wait_all(std::span<Request> reqs, Deadline d) override;
  double now() const override;
  void compute(const ComputeCost& c) override;
  void barrier() override;
  void alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d) override;
  void begin_pipeline(int chunks) override { pipeline_chunks_ = std::max(chunks, 1); }
  void end_pipeline() override;
  void record_links(LinkRecorder* r) override { world_.set_recorder(r); }

 private:
  void check_peer(int peer, const char* op, Tag tag) const;
  std::string where(int peer, Tag tag) const;
  // The absolute SimGrid date of a deadline, capped by the world's hang limit; sets `caller` when the
  // caller's own deadline is the nearer one.
  double limit_of(Deadline d, bool* caller) const;
  // Blocks until all ranks arrived at generation `gen` of a collective counter (barrier, end_pipeline); the
  // last one runs `last` first.
  void rendezvous(int& count, long& gen, const char* what, const std::function<void()>& last);
  SimWorld& world_;
  int rank_;
  int pipeline_chunks_ = 0;  // > 0 between begin_pipeline and end_pipeline
};

// Process-wide SimGrid settings (network model, log level); call after creating an s4u::Engine and before
// building a platform. Later calls do nothing: SimGrid refuses model changes once a platform existed.
void configure_simgrid_once();

// Roofline time of a piece of work on the cluster's GPU: max(FLOPs over peak, bytes over HBM bandwidth),
// both derated by the compute efficiency, plus any fixed duration.
double roofline_seconds(const ClusterSpec& spec, const ComputeCost& c);

}  // namespace eplab::sim
