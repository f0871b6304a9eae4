// Checkpoints of a run (`eplab run --checkpoint FILE`, `--resume FILE`; docs/checkpoints.md): at step boundaries
// the state a run carries from one step to the next (every figure the report accumulates, stateful codecs'
// stream state, the layout cache, the link totals and the modeled clock) is written as a versioned protobuf
// file, and a run resumed from it continues as if it had never stopped. The plan (placements, heat forecasts,
// migrations) is a deterministic function of the configuration: it is recomputed on resume and checked
// against a hash of the checkpointed one.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "driver/experiment.hpp"
#include "driver/plan.hpp"
#include "driver/rank_result.hpp"
#include "driver/timeline.hpp"
#include "engine/ep_engine.hpp"
#include "engine/layout_cache.hpp"

namespace eplab {

class Fabric;
struct DepartedResults;
struct FaultPlan;

// Bumped whenever the meaning of a checkpoint's contents changes (Body's fields, RankResult's encoding, a codec's
// saved state); a file of another version is refused.
// Version 2: a rank may be recorded as departed (its GPU failed; Rank.departed).
constexpr uint32_t kCheckpointVersion = 2;

// One rank's state at a step boundary.
struct RankCheckpoint {
  RankResult result;
  std::vector<uint8_t> dispatch_codec_state, combine_codec_state;
  std::vector<LayoutCache::Entry> layout_entries;  // most recently used first
  LayoutCacheStats layout_stats;
  EngineStats engine_stats;  // the engine's running totals
  double clock_s = 0;        // Fabric::exact_clock
  // The rank's GPU failed before the boundary (emu, mpi: it stopped). `result` is then final, as the rank handed
  // it over at its failure (padded with empty entries for the steps it did not run), and nothing else is kept.
  bool departed = false;
};

struct Checkpoint {
  nlohmann::json config;  // checkpoint_config of the run that wrote it
  int steps_done = 0;
  uint64_t plan_hash = 0;
  std::vector<RankCheckpoint> ranks;
  std::vector<Timeline::PhaseLinkState> links;
};

// The options that decide a run's report, as JSON: everything but the checkpoint options themselves, the
// timeout and the timeline file.
nlohmann::json checkpoint_config(const RunConfig& cfg);

// Hash of the plan's first `calls` calls: placements, migrations and layout-cache decisions.
uint64_t plan_hash(const Plan& plan, int calls);

// Refuses, naming the option, a run that asks for checkpoints where they are not supported (ranks in other
// processes, a timeline file, two-batch overlap, a routing source set by code) or with options that do not fit
// (--stop-after-steps without --checkpoint or past --steps); checks that the checkpoint path can be written.
void check_checkpoint_options(const RunConfig& cfg, const RunSetup& run);

// Bytes of a checkpoint file and back. parse_checkpoint throws EplabError naming `source` and the reason for a
// truncated, corrupt or wrong-version file, or one whose contents do not hold together.
std::string serialize_checkpoint(const Checkpoint& c);
// The hash an Envelope keeps of its body (the fuzz target wraps bodies with it).
uint64_t checkpoint_body_hash(const std::string& body);
Checkpoint parse_checkpoint(std::span<const uint8_t> bytes, const std::string& source);
// One rank's part alone (mpi: each rank sends its part to rank 0 at a checkpoint boundary). The decoder throws
// EplabError naming `source` for bytes that are not a rank's state.
std::string encode_rank_checkpoint(const RankCheckpoint& r);
RankCheckpoint decode_rank_checkpoint(std::span<const uint8_t> bytes, int rank, const std::string& source);
// Written to a temporary file beside `path` and renamed over it (engine/output_file.hpp).
void write_checkpoint(const std::string& path, const Checkpoint& c);
Checkpoint read_checkpoint(const std::string& path);

// Resuming: the checkpoint must be of this configuration (the first option that differs is named), of this
// many ranks, and its plan must be the one this run computes. Throws EplabError naming the file.
void check_resume(const Checkpoint& c, const std::string& path, const RunConfig& cfg, const RunSetup& run,
                  const Plan& plan);

// A rank's engine state into a RankCheckpoint and back (codec stream state, layout cache). restore_engine
// throws EplabError naming `source` for codec state the codecs refuse.
void save_engine(EpEngine& engine, RankCheckpoint& out);
void restore_engine(EpEngine& engine, const RankCheckpoint& in, const std::string& source);

// Resuming from a checkpoint that holds departed ranks (GPUs that failed before its boundary, emu and mpi): the
// rank program of each calls this once its engine is restored. A live rank marks the departed ones failed
// (Fabric::mark_failed), where the uninterrupted run marked them at their failure step; on mpi rank 0 also puts
// their final results in `departed`, as it received them at the failure. Returns true on a departed rank: it
// does not run again (emu: its result is put in `departed` by its own thread; mpi: its process must exit).
bool resume_departed_ranks(Fabric& f, const Checkpoint& c, bool in_process, DepartedResults& departed);

// Collects the ranks' states at a step boundary and writes the file once every rank's state is in.
// - Every rank in one process (sim, emu): each rank copies its state into its own slot and the last to do so
//   writes the file; no fabric operation, so no simulated time, is spent on it.
// - Ranks as processes (mpi): each rank sends its part to rank 0 (point-to-point messages, which the caller
//   keeps out of the payload ledger), rank 0 writes the file, and a barrier lets every process go on only once it
//   is written (a failed write ends every rank's wait with rank 0's error).
// A rank whose GPU failed (emu, mpi) hands in nothing after its failure: its final result stands for it in every
// later checkpoint, given by depart() (emu) or taken by rank 0 from the results failed ranks handed over (mpi).
class CheckpointSink {
 public:
  CheckpointSink(const RunConfig& cfg, const RunSetup& run, const Plan& plan, Timeline& links);
  // Whether the run writes a checkpoint once `steps_done` steps have run, and whether it stops there.
  bool due(int steps_done) const;
  bool stops(int steps_done) const { return stop_after_ > 0 && steps_done == stop_after_; }
  // A rank's state at the boundary after `steps_done` steps (see above for the two backends' ways).
  void hand_in(Fabric& f, int steps_done, RankCheckpoint state, DepartedResults* departed);
  // Every rank in one process: a rank whose GPU failed hands in its final result once it stopped.
  void depart(const RankResult& r);
  int written() const { return written_; }

 private:
  void deposit(int steps_done, int rank, RankCheckpoint state);
  // Whether `rank` ran the step before the boundary after `steps_done` steps (it failed at no earlier step).
  bool runs_until(int rank, int steps_done) const;
  // Writes, in order, every boundary whose states are all in. Called with mu_ held.
  void write_complete();

  const std::string path_;
  const nlohmann::json config_;
  const Plan& plan_;
  Timeline& links_;
  const bool in_process_;
  const int ranks_, every_, stop_after_, layers_;
  const double timeout_s_;
  std::mutex mu_;
  std::map<int, std::vector<RankCheckpoint>> pending_;  // by steps_done
  std::map<int, int> arrived_;
  std::map<int, RankResult> departed_;  // final results of ranks whose GPU failed, by rank
  int written_ = 0;
};

}  // namespace eplab
