// The experiment driver's entry: resolves a RunConfig and plans the run (driver/plan.hpp), launches the rank
// program (driver/rank_program.hpp) on a backend, gathers every rank's result on rank 0 through the fabric,
// verifies the run where real bytes moved, and returns the report (the JSON documented in README).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "traces/routing_source.hpp"

namespace eplab {

struct RunConfig {
  std::string backend = "emu";
  std::string transport;  // Backend::use_transport: real's staged | nccl | cuda-ipc, mpi's mpi | verbs; "": default
  std::string cluster = "h800-cx7";
  int nodes = 0;          // 0: the preset's
  int gpus_per_node = 0;  // 0: the preset's
  std::string model = "deepseek-v3";
  int tokens = 4096;  // per rank
  std::string routing = "deepep";
  std::string trace;                              // a trace file instead of a generator
  std::shared_ptr<RoutingSource> routing_source;  // set by code (tests, Python): used instead of both
  int hidden = 0;                                 // 0: the model's hidden size
  int experts = 0;  // 0: the model's routed experts (more let a shape scale past its expert count)
  std::string algorithm = "hierarchical";
  std::string dispatch_codec;  // empty: the model's
  std::string combine_codec;   // empty: the model's
  // Combine's output type on real bytes: "bf16" as DeepEP's combine returns it (each token's fp32 sum rounded
  // once; the verification reference rounds its sum the same way), half the memory of "fp32". "auto": bf16
  // where the run allows it (inference without --overlap), fp32 otherwise (RunSetup::out_bf16).
  std::string combine_out = "auto";
  std::string transform = "scale";
  std::string payload = "auto";  // real | phantom | auto (phantom where time is modeled, real elsewhere)
  int steps = 1;
  int layers = 1;
  uint64_t seed = 1;
  int redundant_experts = 0;
  // Policies (docs/policies.md). Placements are planned per (step, layer) before ranks start (driver/plan.hpp):
  // the initial one from `balancer` with zero heat; every `rebalance_every` steps (0: never) the balancer
  // re-places each layer from `heat`'s forecast ("oracle": the step's own load), moving expert weights over
  // the fabric. `replica_selection` picks which replica serves each selection.
  std::string balancer = "none";
  std::string heat = "last";
  int rebalance_every = 0;
  // Steps the planner plays before the measured ones (routing steps 0..warmup_steps-1; the run's step s is
  // routing step warmup_steps + s): heat predictors learn and the balancer re-places over them, but no rank
  // runs them, so their migrations are in no reported figure.
  int warmup_steps = 0;
  std::string replica_selection = "round-robin";
  double timeout_s = 60;
  bool verify = true;              // check delivery and combine where real bytes move
  std::string sim_model;           // sim: "" (= "ptask"), "ptask-pairs" or "flows" (docs/sim.md)
  std::string mode = "inference";  // inference | training (backward pass and dense all-reduce; README)
  bool overlap_allreduce = true;   // training: all-reduce dense gradients during the next layer's backward compute
  // "tbo": two-batch overlap. Each rank's batch is two micro-batches, each layer opens with their dense
  // (attention) compute, and the step's time is composed from every phase's simulated duration with one
  // micro-batch's communication under the other's compute (driver/overlap.hpp; docs/sim.md). "none": off.
  std::string overlap = "none";
  std::string timeline;            // write a Chrome trace-event timeline to this file (empty: none)
  // Cached layouts (engine/layout_cache.hpp): LRU capacity in layouts; 0 = off. The planner hashes every rank's
  // batch per (step, layer) before the run, and a call whose layout is still cached skips notify on all ranks.
  int layout_cache = 0;
  // Injected faults (driver/faults.hpp, docs/faults.md): specs such as "gpu:5@step:2"; empty: none, and the
  // report is exactly what it is without this option. Survivors wait detect_timeout_s at a failed step before
  // they act on the failure (a heartbeat deadline; simulated time on sim).
  std::vector<std::string> faults;
  double detect_timeout_s = 1.0;
  // Checkpoints (driver/checkpoint.hpp, docs/checkpoints.md): write the run's state to `checkpoint` every
  // `checkpoint_every` steps; `stop_after_steps` > 0 ends the run once that many steps have run, with its
  // checkpoint written; `resume` continues a run from a checkpoint of the same configuration.
  std::string checkpoint;
  int checkpoint_every = 1;
  int stop_after_steps = 0;
  std::string resume;
};

using ProgressFn = std::function<void(int done, int total)>;

// Returns the report in the process that ran rank 0 (every process, for backends whose ranks all run in one).
// A process of a multi-process backend that did not run rank 0 returns {"rank": r, "role": "worker"}, r being
// the rank it ran. Throws EplabError for bad configuration, FabricError if a rank fails; never hangs longer
// than timeout_s.
nlohmann::json run_experiment(const RunConfig& cfg, const ProgressFn& progress = {});

// run_experiment in a child process of its own: a run that runs out of memory or crashes takes only the child
// with it, its memory goes back when it ends, and it starts from a fresh process-wide state (SimGrid's clock), as
// a separate `eplab run` would. Returns the report, or {"error": why} when the run threw or the child died.
nlohmann::json run_experiment_in_child(const RunConfig& cfg);

// A few lines a person reads: phase times, bandwidths, bytes by link class, verification.
std::string format_summary(const nlohmann::json& report);

}  // namespace eplab
