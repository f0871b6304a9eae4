// Timeline of a run: per-rank phase spans and, where a fabric models links (sim), every exchange round's bytes
// per link. Written as Chrome trace-event JSON (Perfetto, chrome://tracing); the same link records give the
// report's per-link utilization summary, so they are kept (aggregated per phase) even when no file is asked for.
#pragma once

#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/link_recorder.hpp"
#include "engine/topology.hpp"

namespace eplab {

// A phase span of one rank, in seconds of Fabric::now(). A rank collects its own (RankResult) and the process
// holding rank 0 adds everyone's to its Timeline.
// `lane` separates spans of one rank that run at the same time: with two-batch overlap the micro-batch (0, 1;
// 2 for what serves both), drawn as rows of their own.
struct TimelineSpan {
  int32_t rank = 0;
  std::string name;
  double t0 = 0, t1 = 0;
  int32_t lane = 0;
};

// The Timeline is written by the process holding rank 0. Spans reach it through the per-rank results; the
// link records come from the fabric (sim) of this process, whose ranks all report to one Timeline: it is the
// one recorder they share (Fabric::record_links), and its calls are locked.
class Timeline : public LinkRecorder {
 public:
  // Past this many ranks the file keeps a sample of ranks and per-class link aggregates, so that a 2048-GPU run
  // still writes a file a viewer opens.
  static constexpr int kMaxDetailedRanks = 64;

  // `events`: keep spans and counters for write(); off, only the per-phase link totals are kept.
  Timeline(const Topology& topo, bool events);

  bool events() const { return events_; }
  // Whether spans of this rank go into the file (all ranks up to kMaxDetailedRanks, then an even sample).
  bool records_rank(int rank) const { return events_ && rank % rank_stride_ == 0; }
  // Spans a rank collected, in the order it recorded them; those of ranks not sampled are dropped.
  void add_spans(const std::vector<TimelineSpan>& spans);

  // Prefix for the phase names of the rounds that follow ("bwd-" during a backward pass): the engine's
  // algorithms name their phases dispatch/combine whichever direction the gradients travel.
  void set_phase_prefix(std::string prefix);

  // Two-batch overlap: each link round recorded in [sim_t0, sim_t1] (an exchange of the serial simulation) moves
  // by `shift`, to where the composed schedule runs that exchange. Rounds outside every interval stay.
  struct RoundShift {
    double sim_t0, sim_t1, shift;
  };
  void shift_rounds(const std::vector<RoundShift>& shifts);

  void set_links(std::vector<LinkInfo> links) override;
  void link_round(const std::string& phase, double t0, double t1, const std::vector<double>& link_bytes) override;

  // Report key `links`: per phase and link class, max and mean utilization = bytes a link carried in the phase
  // over (its capacity x the phase's time), the phase's time being the union of its rounds' intervals. Null
  // when no fabric recorded links.
  nlohmann::json link_summary() const;

  // Checkpoints (driver/checkpoint.hpp): the per-phase link totals so far, and their restoration before a resumed
  // run records more, so that its summary is the uninterrupted run's. The rounds kept for write() are not saved
  // (a run that writes a timeline is refused a checkpoint).
  struct PhaseLinkState {
    std::string name;
    std::vector<double> bytes;
    std::vector<std::pair<double, double>> spans;
  };
  std::vector<PhaseLinkState> link_state() const;
  void restore_link_state(std::vector<PhaseLinkState> phases);

  // Writes the Chrome trace-event JSON; `meta` goes into its otherData with what was sampled or aggregated.
  void write(const std::string& path, const nlohmann::json& meta) const;

 private:
  struct Round {
    double t0, t1;
    std::vector<std::pair<int, double>> bytes;  // (track, bytes): per link, or per class aggregate at scale
  };
  struct PhaseLinks {
    std::vector<double> bytes;                     // per link, all rounds of the phase
    std::vector<std::pair<double, double>> spans;  // round intervals
  };

  const Topology topo_;
  const bool events_;
  int rank_stride_ = 1;
  bool per_link_tracks_ = true;
  mutable std::mutex mu_;
  std::string prefix_;
  std::vector<TimelineSpan> spans_;
  std::vector<LinkInfo> links_;
  std::vector<std::string> track_names_;  // counter tracks: a link each, or "<class> mean" / "<class> max"
  std::vector<double> track_Bps_;         // capacity behind each track (for utilization in the plot)
  std::vector<Round> rounds_;
  std::vector<std::pair<std::string, PhaseLinks>> phases_;  // in first-seen order
};

}  // namespace eplab
