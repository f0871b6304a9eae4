// The rank program: what one rank runs, over steps x layers of (migration) -> dispatch -> expert compute ->
// combine, with training's backward pass and all-reduce. It reads the config, setup and plan, which every rank
// of a process shares read-only, and returns what it measured as a RankResult; it writes nothing shared.
#pragma once

#include <map>
#include <mutex>

#include "driver/experiment.hpp"
#include "driver/plan.hpp"
#include "driver/rank_result.hpp"
#include "driver/timeline.hpp"
#include "engine/fabric.hpp"
#include "traces/routing_source.hpp"

namespace eplab {

struct Checkpoint;
class CheckpointSink;

// What the ranks that stopped (a failed GPU on emu and mpi, docs/faults.md) measured before they failed: put by
// the failed rank's own thread (emu) or by rank 0 from the failed process's hand-over (mpi), read by the launcher
// once the ranks are done, so the report counts every rank's steps before the failure.
struct DepartedResults {
  std::mutex mu;
  std::map<int, RankResult> results;
  void put(RankResult r) {
    std::lock_guard<std::mutex> lock(mu);
    results[r.rank] = std::move(r);
  }
};

struct RankInputs {
  const RunConfig& cfg;
  const RunSetup& run;
  const Plan& plan;
  RoutingSource& routing;  // allows concurrent calls (SharedRoutingSource)
  // This process's link recorder (sim): its ranks report exchange rounds to it through the fabric and name
  // backward rounds; spans go into the RankResult instead. Also says which ranks the timeline samples.
  Timeline& links;
  const ProgressFn& progress;  // called by rank 0 after each call
  // Checkpoints (driver/checkpoint.hpp): the state to resume from (null: start at step 0), and where each step
  // boundary's state goes (null: none is written).
  const Checkpoint* resume = nullptr;
  CheckpointSink* checkpoint = nullptr;
  DepartedResults* departed = nullptr;  // where failed ranks' results go (null: no rank stops)
  // Phantom payloads (sim): the count check every rank of this process enters its messages in; null otherwise.
  PayloadTally* tally = nullptr;
};

// A rank whose GPU fails at step S (FaultPlan::ranks_stop) returns at the start of S with `stopped` set, its
// result put in in.departed; on mpi its process hands the result to rank 0 and exits instead of returning.
RankResult run_rank(Fabric& f, const RankInputs& in, bool* stopped = nullptr);

}  // namespace eplab
