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

// Bumped whenever the meaning of a checkpoint's contents changes (Body's fields, RankResult's encoding, a codec's
// saved state); a file of another version is refused.
constexpr uint32_t kCheckpointVersion = 1;

// One rank's state at a step boundary.
struct RankCheckpoint {
  RankResult result;
  std::vector<uint8_t> dispatch_codec_state, combine_codec_state;
  std::vector<LayoutCache::Entry> layout_entries;  // most recently used first
  LayoutCacheStats layout_stats;
  EngineStats engine_stats;  // the engine's running totals
  double clock_s = 0;        // Fabric::exact_clock
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

// Collects the ranks' states of one process at a step boundary; the last rank to hand its state in writes the
// file. Ranks only copy into their own slot, so this costs no fabric operation and no simulated time.
class CheckpointSink {
 public:
  CheckpointSink(const RunConfig& cfg, const Plan& plan, Timeline& links, int ranks);
  // Whether the run writes a checkpoint once `steps_done` steps have run, and whether it stops there.
  bool due(int steps_done) const;
  bool stops(int steps_done) const { return stop_after_ > 0 && steps_done == stop_after_; }
  void deposit(int steps_done, int rank, RankCheckpoint state);
  int written() const { return written_; }

 private:
  const std::string path_;
  const nlohmann::json config_;
  const Plan& plan_;
  Timeline& links_;
  const int ranks_, every_, stop_after_, layers_;
  std::mutex mu_;
  std::map<int, std::vector<RankCheckpoint>> pending_;  // by steps_done
  std::map<int, int> arrived_;
  int written_ = 0;
};

}  // namespace eplab
