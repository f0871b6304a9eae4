// What `eplab trace gen|info|import` do, as library functions: write a generator's routing to a trace file,
// summarize a trace (header, counts, per-expert load), and import a JSONL routing log into the trace format.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"
#include "traces/routing_source.hpp"
#include "traces/trace_file.hpp"

namespace eplab {

struct TraceGenOptions {
  std::string routing = "uniform";  // any make_routing spec, trace:PATH included (re-chunks a trace)
  RoutingParams params;             // shape, topology, tokens_per_rank, seed
  int steps = 1;
  int layers = 1;
  std::string created_by = "eplab trace gen";
};

// Writes steps x layers x ranks batches to `out_path` (step-major, then layer, then rank); returns the header.
TraceHeader generate_trace(const TraceGenOptions& opts, const std::string& out_path);

struct TraceSummary {
  std::string path;
  uint64_t file_bytes = 0;
  TraceHeader header;
  uint64_t num_batches = 0;
  uint64_t num_tokens = 0;
  int min_batch_tokens = 0;
  int max_batch_tokens = 0;
  uint64_t selections = 0;                  // (token, slot) pairs with an expert
  uint64_t empty_slots = 0;                 // slots holding -1
  std::vector<uint64_t> expert_load;        // selections per expert, whole trace
  std::vector<double> layer_max_over_mean;  // per trace layer: hottest expert / mean expert load
  double load_mean = 0;
  double load_max_over_mean = 0;
  double load_cv = 0;  // coefficient of variation of expert_load
  int unused_experts = 0;
  std::vector<std::pair<int, uint64_t>> hottest;  // top 5 (expert, load), hottest first
};

// Reads the whole trace (checking it as TraceReader does) and tallies it.
TraceSummary summarize_trace(const std::string& path);
// The human-readable report `eplab trace info` prints.
std::string format_trace_summary(const TraceSummary& s);

// JSONL routing logs, one object per token and layer:
//   {"layer": int, "token_idx": int, "topk_ids": [int...], "topk_weights": [float...]}
// plus an optional "step" (int, default 0); other keys are ignored, and lines {"type": "meta", ...} are kept
// verbatim in the header's provenance. Token token_idx goes to source rank token_idx / tokens_per_rank at
// position token_idx % tokens_per_rank (contiguous blocks, as a data-parallel batch is split over EP ranks).
// Layer numbers are renumbered 0..L-1 in increasing order (the originals go to header.layer_ids); steps
// likewise. Rows shorter than the model's top-k are padded with -1 (no expert, weight 0).
struct JsonlImportOptions {
  std::string jsonl_path;
  MoeShape shape;
  Topology topology;
  int tokens_per_rank = 0;  // 0: the smallest block that fits every token_idx on the cluster's ranks
  std::string created_by = "eplab trace import";
};

// Throws EplabError naming the file and line for malformed input. Returns the header written.
TraceHeader import_jsonl(const JsonlImportOptions& opts, const std::string& out_path);

}  // namespace eplab
