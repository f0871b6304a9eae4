// Two-batch overlap (`--overlap tbo`): a step's schedule composed from the simulated durations of each
// micro-batch's phases, on two streams per rank (compute, communication), the way DeepSeek's serving and training
// overlap one micro-batch's dispatch/combine with the other's compute. The assumptions that make it exact are in
// docs/sim.md ("Two-batch overlap"); the composition itself is a pure function, tested without a simulator.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "driver/timeline.hpp"

namespace eplab {

enum class OpKind : int32_t {
  kDense = 0,  // attention and the other dense layers of a layer (compute)
  kDispatch,
  kExpert,
  kCombine,
  kBwdDispatch,  // training: combine's backward, dispatch-shaped
  kBwdExpert,
  kBwdCombine,  // training: dispatch's backward, combine-shaped
  kBwdDense,
  kAllreduce,  // training: dense gradients (both micro-batches' at once)
  kMigration,  // expert weights moved before a layer (both micro-batches wait for it)
};
const char* op_name(OpKind k);
bool is_comm(OpKind k);

// One phase of one micro-batch as the serial simulation measured it on one rank.
struct OverlapOp {
  int32_t step = 0;
  int32_t kind = 0;         // OpKind
  int32_t micro_batch = 0;  // 0 or 1; -1: both (all-reduce, migration)
  int32_t layer = 0;
  double t0 = 0;   // simulated start (Fabric::now()); after a barrier, the same on every rank for communication
  double dur = 0;  // this rank's part: compute time, or from t0 until this rank's part of the exchange is done
};

// What a step of the composed schedule gives, for the critical rank (the one that finishes last; on a tie the
// one with the most compute): exposed + hidden == comm exactly, and compute + exposed == step.
struct StepOverlap {
  double step_s = 0;         // makespan of the composed step
  double compute_s = 0;      // the critical rank's compute
  double comm_s = 0;         // the critical rank's communication stream busy time (waiting for peers included)
  double exposed_s = 0;      // ... of which no compute of that rank runs at the same time
  double hidden_s = 0;       // ... of which compute of that rank runs at the same time
  double serial_step_s = 0;  // the same phases run one after another (no overlap), composed the same way
  double serial_compute_s = 0;
  int critical_rank = 0;
  std::vector<std::pair<std::string, double>> exposed_by_phase;  // phases in first-seen order
};

struct OverlapResult {
  std::vector<StepOverlap> steps;
  // The composed schedule as timeline spans (lane = micro-batch, 2 for both) for the ranks `records_rank`
  // accepts; steps laid back to back from the first step's simulated start.
  std::vector<TimelineSpan> spans;
  // For the timeline's link rounds: an exchange simulated in [sim_t0, sim_t1] happens `shift` later (or
  // earlier) in the composed schedule.
  std::vector<Timeline::RoundShift> shifts;
};

// `ops[r]`: rank r's ops of every step, in the order the serial simulation ran them (every rank the same
// sequence of (step, kind, micro-batch, layer); an EplabError names the first rank and op that differ).
// Dependencies: an op follows the previous op of its micro-batch; a migration waits for both micro-batches and
// both wait for it; an all-reduce waits for both micro-batches' last op before it and nothing waits for it but
// the step's end. Streams: on each rank one compute and one communication stream, each running its ops one at
// a time in two-batch order (the k-th op of micro-batch 0, then micro-batch 1's k-th, then the (k+1)-th ...; an
// all-reduce after both micro-batches' next op, so it hides behind the next layer's backward compute). An
// exchange starts on every rank at once, when the last rank is ready for it (as the simulation's barriers do).
// `record_spans(rank)`: whether the rank's spans are wanted (null: none).
OverlapResult compose_two_batch(const std::vector<std::vector<OverlapOp>>& ops,
                                const std::function<bool(int)>& record_spans = {});

}  // namespace eplab
