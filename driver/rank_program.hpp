// The rank program: what one rank runs, over steps x layers of (migration) -> dispatch -> expert compute ->
// combine, with training's backward pass and all-reduce. It reads the config, setup and plan, which every rank
// of a process shares read-only, and returns what it measured as a RankResult; it writes nothing shared.
#pragma once

#include "driver/experiment.hpp"
#include "driver/plan.hpp"
#include "driver/rank_result.hpp"
#include "driver/timeline.hpp"
#include "engine/fabric.hpp"
#include "traces/routing_source.hpp"

namespace eplab {

struct Checkpoint;
class CheckpointSink;

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
};

RankResult run_rank(Fabric& f, const RankInputs& in);

}  // namespace eplab
