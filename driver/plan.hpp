// What a run is, decided before any rank starts: the configuration resolved against the presets and the
// backend (RunSetup), and the plan (placements per call, the expert weights to migrate, which calls the layout
// cache vouches for). Both are deterministic functions of the RunConfig, so every process of a multi-process
// run computes the same ones itself; ranks only read them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "driver/experiment.hpp"
#include "driver/transforms.hpp"
#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/moe_shape.hpp"
#include "engine/placement.hpp"
#include "engine/topology.hpp"
#include "policies/replica/replica_selector.hpp"
#include "traces/routing_source.hpp"

namespace eplab {

// The configuration checked and resolved: presets with their overrides, codecs, payload kind, tolerances.
struct RunSetup {
  ClusterSpec cluster;
  Topology topo;
  MoeShape shape;
  std::string dispatch_codec, combine_codec;
  std::string backend;
  Caps caps;
  bool in_process = true;   // every rank runs in this process (Backend::in_process)
  bool phantom = false;     // sizes only, no real bytes
  bool verify = false;      // check delivery and combine (real bytes only)
  bool lossless = true;     // both codecs
  bool out_bf16 = false;    // combine's output is bf16 (RunConfig::combine_out resolved; real bytes only)
  double tolerance = 0;     // largest combine error a lossy codec may cause
  double expert_bytes = 0;  // one expert's weights (migration)
  EngineOptions engine;
  ExpertTransform transform;
  // One replica selector per rank, so stateful selectors never share state across threads.
  std::function<std::unique_ptr<ReplicaSelector>()> make_selector;
};

// Throws EplabError naming the option for a bad configuration.
RunSetup resolve_run(const RunConfig& cfg, const Backend& backend);

// Whether a rank's batch, taken as the dispatch codec's wire rows (EpEngine::takes_wire_batch), lives in the tail
// of its output's buffer, one buffer for both: dispatch has sent every row when it returns and only combine writes
// the output, after it, unless training keeps the batch for the backward pass or two micro-batches (--overlap tbo)
// interleave dispatch and combine; and a row must take no more bytes than an output row. The rank program places
// the batch by it, and the memory guard counts it.
bool batch_in_output(const RunConfig& cfg, bool wire_batch, double row_bytes, double out_row_bytes);

// The cluster and the model the config names (preset or file), with its positive overrides applied (nodes and
// GPUs per node; hidden size and experts). resolve_run checks the overrides first.
ClusterSpec config_cluster(const RunConfig& cfg);
MoeShape config_model(const RunConfig& cfg);

// The run's routing: the config's source, or the generator or trace file it names, checked against the run's
// steps (warm-up included) and layers. With warmup_steps W the run's step s reads the source's step W + s, and
// steps -W..-1 the source's first W (the planner's warm-up).
std::shared_ptr<RoutingSource> open_routing(const RunConfig& cfg, const RunSetup& run);

// One expert's weights moving to a slot's new rank from a rank that held the expert before.
struct Transfer {
  int src, dst;
};

// What the planner decided for one (step, layer): the placement to run with and the weights to move first.
struct LayerPlan {
  std::shared_ptr<const Placement> placement;
  std::vector<Transfer> moves;  // empty: nothing migrates before this call
  int slots_moved = 0;
  double forecast_mape = -1;   // predicted vs actual load; < 0 without a forecast
  uint64_t layout_key = 0;     // cluster-wide routing key for the layout cache (0: cache off)
  bool layout_cached = false;  // the planner's LRU holds layout_key: every rank skips notify
};

struct FaultPlan;  // driver/faults.hpp

struct Plan {
  std::vector<LayerPlan> calls;  // [step * layers + layer]
  std::shared_ptr<const FaultPlan> faults;  // null without --fault
  int slots() const { return calls.front().placement->num_slots(); }
};

// Placements per (step, layer): the initial one from the balancer, with the first step's load under the oracle
// heat and with zero heat otherwise; every rebalance_every steps the balancer re-places each layer from the heat
// forecast. warmup_steps steps before the run's first (open_routing shifts the routing past them) only teach the
// predictors and re-place, unreported. The load predictors learn from is the routing's selections per expert
// summed over all ranks' batches, which does not depend on the run, so planning ahead is exact. `keep` (may be
// null) receives the batches planning generated, so an in-process run need not generate them twice; a process
// that runs one rank passes null.
using KeepBatch = std::function<void(int step, int layer, int rank, RoutingBatch b)>;
Plan make_plan(const RunConfig& cfg, const RunSetup& run, RoutingSource& routing, const KeepBatch& keep);

}  // namespace eplab
