// Injected faults (`eplab run --fault SPEC`, repeatable; docs/faults.md): the spec grammar and its checks, the
// failover plan (which ranks are dead from which step, the re-placed experts and the weights they fetch), the
// replica selection that serves every selection from a surviving replica or counts it lost, and the report's
// "faults" block. Everything is planned before ranks start, so every process computes the same plan.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/placement.hpp"
#include "engine/routing.hpp"
#include "traces/routing_source.hpp"

namespace eplab {

struct RunConfig;
struct RunSetup;
struct Plan;

enum class FaultKind { kGpu, kNic, kLink, kStraggler, kStall, kFlap };

// One parsed `--fault` spec. Triggers are a step (`@step:S`) or a simulated time (`@t:T`, parsed, refused by
// check_faults: see there); `straggler` and `flap` last the whole run.
struct FaultSpec {
  std::string text;
  FaultKind kind = FaultKind::kGpu;
  int rank = 0;
  int step = -1;        // @step:S; -1 when not given
  double at_s = -1;     // @t:T; -1 when not given
  double bw_pct = 0;    // link: bandwidth left, in (0, 100) percent
  double slowdown = 1;  // straggler: compute this many times slower
  double stall_s = 0;   // stall: seconds
  int period = 0;       // flap: steps between state changes
};

// Parses one spec; throws EplabError naming the spec and the part that is wrong (the grammar is in
// docs/faults.md). Ranks and steps are checked against the run by check_faults.
FaultSpec parse_fault(const std::string& text);
const char* fault_kind_name(FaultKind k);

// Parses every spec of the config and checks them against the run (rank and step ranges, the backend, options
// that do not combine with a failure yet). Throws EplabError naming the spec.
std::vector<FaultSpec> check_faults(const RunConfig& cfg, const RunSetup& run);

// What the planner decided about failures. `dead_from[r]` is the first step rank r is dead (kNever: alive).
struct FaultPlan {
  static constexpr int kNever = std::numeric_limits<int>::max();
  std::vector<FaultSpec> faults;
  std::vector<int> dead_from;      // [rank]
  std::vector<int> failure_steps;  // steps at which some GPU fails (re-plan and recovery), ascending
  std::vector<int> detect_steps;   // steps at which a GPU fails or a NIC goes down (detection), ascending
  int gpus_per_node = 1;
  int first_affected_step = std::numeric_limits<int>::max();  // the first step some selection may be re-routed
  double detect_timeout_s = 0;
  // Per layer and failure: experts left with no replica on a live rank (lost from that step on).
  struct LostExperts {
    int step, layer;
    std::vector<int32_t> experts;
  };
  std::vector<LostExperts> lost_experts;
  int slots_restored = 0;  // surviving slots re-assigned to experts that lost a replica
  // Whether a failed rank really stops (emu: its thread returns; mpi: its process exits) and the survivors carry
  // on among themselves (Fabric::mark_failed). Where time is modeled (sim) it keeps taking part with an empty
  // batch instead: the simulated failure is a model of the platform, and its reports stay as they were.
  bool ranks_stop = false;

  bool dead(int rank, int step) const { return step >= dead_from[rank]; }
  // The ranks that fail at the start of `step`, ascending.
  std::vector<int> failing_at(int step) const;
  bool detects_at(int step) const;
  // A NIC down (nic:R@step:S from S on; flap:R,period=P in steps [P, 2P), [3P, 4P), ...).
  bool nic_down(int rank, int step) const;
  // Whether EP traffic from `src` can reach GPU `dst` at `step`: not to a failed GPU, and not across nodes when
  // either end's NIC is down (within a node the scale-up domain still connects them).
  bool reachable(int src, int dst, int step) const;
  // Straggler slowdown of `rank`'s compute (1: none), and the stall it takes at the start of `step` (0: none).
  double slowdown(int rank) const;
  double stall_s(int rank, int step) const;
  // The bandwidth fraction `rank`'s NIC links take at the start of `step` (-1: no change then).
  double nic_fraction(int rank, int step) const;
  // `rank`'s link faults at a time (@t:T): (T in seconds of the run's clock, bandwidth fraction), in spec order.
  std::vector<std::pair<double, double>> timed_nic_fractions(int rank) const;
};

// The exit status of an mpi process whose GPU failed (`gpu:R@step:S`): it leaves with _exit at step S, after
// handing its results to rank 0; `mpirun --enable-recovery` lets the others carry on (docs/faults.md).
inline constexpr int kFailedRankExitStatus = 75;

// Builds the fault plan and applies failures to `plan`: from each failure step on, every layer's placement is
// re-planned without the dead ranks (their slots stay in the placement, never selected) and the weight moves of
// that re-plan are the failure step's migration. Returns null when the config gives no fault.
// The re-plan weighs experts by `routing`'s load at the step before the failure.
std::shared_ptr<const FaultPlan> plan_faults(const RunConfig& cfg, const RunSetup& run, RoutingSource& routing,
                                             Plan& plan);

// Per-rank fault counters, summed on rank 0 for the report.
struct FaultCounts {
  int64_t rerouted = 0;  // selections of an expert with an unreachable replica, served by a reachable one
  int64_t lost = 0;      // selections of an expert with no reachable replica: not dispatched
  int64_t departed = 0;  // tokens of a dead rank's own batches (left the run with it; not counted as lost)
  double detect_s = 0;   // time this rank spent waiting out detection deadlines
  // The first lost selections, five int32 per entry: step, layer, source rank, token, expert.
  std::vector<int32_t> first_lost;
};
inline constexpr size_t kLostSamples = 8;

// After the replica selector ran: every selection whose slot `src_rank` cannot reach at `step` (a failed GPU, a NIC
// down across nodes) moves to a reachable replica of its expert (round-robin over them by token + k, as the
// default selector), or becomes -1 and is counted lost.
void failover_select(const FaultPlan& fp, int step, int layer, int src_rank, const RoutingBatch& batch,
                     const Placement& placement, std::vector<int32_t>& slots, FaultCounts& counts);

// The report's "faults" block from every rank's counters and the plan; `recover_migrate_s` is the failure steps'
// migration time (the maximum over ranks, summed over layers and failures).
nlohmann::json fault_report(const FaultPlan& fp, const std::vector<FaultCounts>& counts, double recover_migrate_s,
                            bool timed);

}  // namespace eplab
