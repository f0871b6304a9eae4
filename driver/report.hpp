// The run report: per-rank records gathered during a run, and the JSON built from them (keys documented in
// README: backend, cluster, model, ranks, algorithm, codec, verified, phases.*, imbalance, wall_s).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "driver/experiment.hpp"
#include "driver/overlap.hpp"
#include "driver/training.hpp"
#include "engine/ep_engine.hpp"
#include "engine/moe_shape.hpp"
#include "engine/payload_ledger.hpp"
#include "engine/topology.hpp"

namespace eplab {

struct RankRecord {
  std::vector<PhaseStats> notify, dispatch, combine;  // one entry per (step, layer) call
  std::vector<int64_t> recv_rows;                     // rows received per call
  std::vector<int64_t> slot_load;                     // selections this rank sent to each slot, all calls
  double err_sq = 0, ref_sq = 0, max_abs_err = 0;
  size_t mismatches = 0, nonfinite = 0, elements = 0;

  void record_call(const EngineStats& before, const EngineStats& after);
  void add_comparison(const float* got, const float* want, size_t n);
};

struct VerifyResult {
  bool ran = false;
  bool lossless = false;
  bool delivery_ok = false;
  double tolerance = 0;
  size_t selections = 0, missing = 0, extra = 0;
  size_t mismatched_pairs = 0;  // (call, source, destination) triples whose deliveries differ
  // The first of them: where it happened and how many selections were sent and received.
  struct Mismatch {
    int step = -1, layer = -1, micro_batch = -1, src = -1, dest = -1;  // micro_batch: -1 without two-batch overlap
    uint32_t sent = 0, got = 0;
  } first_mismatch;
  std::string transform;
  // Payload conservation: every message of the run, each rank pair's sent and received counts and checksums
  // compared per tag (its first_error names the first mismatch: rank pair, phase, step and layer).
  PayloadCheck payloads;
};

struct ReportInputs {
  RunConfig cfg;
  ClusterSpec cluster;
  MoeShape shape;
  std::string dispatch_codec, combine_codec, routing;
  bool phantom = false;
  std::string backend;
  int calls = 0;
  double wall_s = 0;
  // Tokens per rank per call that the routing held: --tokens for generated routing, the batches' own counts
  // (their mean) for a trace.
  double tokens_per_rank = 0;
};

nlohmann::json build_report(const ReportInputs& in, const std::vector<RankRecord>& ranks, const VerifyResult& v);

// Adds the step keys (mode, step_time_s, compute_s, comm_fraction, tokens_per_s, training.*) and, where the
// fabric recorded links, the `links` utilization summary (Timeline::link_summary).
void add_step_report(nlohmann::json& report, const ReportInputs& in, const std::vector<StepRecord>& steps,
                     const nlohmann::json& links);

// Two-batch overlap (after add_step_report): the composed schedule's figures replace the step keys (step_time_s,
// compute_s, comm_fraction = exposed communication / step, tokens_per_s, training.allreduce_exposed_s), and the
// `overlap` key gives exposed and hidden communication, per phase and per step, beside the serial baseline.
void add_overlap_report(nlohmann::json& report, const ReportInputs& in, const OverlapResult& o, int ranks);

}  // namespace eplab
