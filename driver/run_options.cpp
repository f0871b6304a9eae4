#include "driver/run_options.hpp"

#include <algorithm>
#include <cstdlib>

#include "driver/faults.hpp"
#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "engine/spec_json.hpp"

namespace eplab {
namespace {

using namespace fields;
using C = RunConfig;

// The flag is the key with '-' for '_' unless `flag` names another.
RunOption opt(Field<C> field, std::string help, std::string flag = "") {
  if (flag.empty()) {
    flag = field.key;
    for (char& c : flag)
      if (c == '_') c = '-';
  }
  return {std::move(field), std::move(flag), std::move(help)};
}

const std::vector<Field<C>>& run_fields() {
  static const std::vector<Field<C>> fields = [] {
    std::vector<Field<C>> f;
    for (const auto& o : run_options()) f.push_back(o.field);
    return f;
  }();
  return fields;
}

}  // namespace

const std::vector<RunOption>& run_options() {
  static const std::vector<RunOption> table = {
      opt(text<C>("backend", member(&C::backend), [](const std::string& v) { backend_registry().by_name(v); }),
          "sim | emu | mpi | real (eplab presets)"),
      opt(text<C>("cluster", member(&C::cluster), [](const std::string& v) { resolve_cluster(v); }),
          "cluster preset or FILE.json (eplab presets --dump NAME; docs/specs.md)"),
      opt(integer<C>("nodes", member(&C::nodes), kNonNegative), "nodes (0: the cluster's; 2 on emu and mpi)"),
      opt(integer<C>("gpus_per_node", member(&C::gpus_per_node), kNonNegative), "GPUs per node (0: the cluster's)"),
      opt(text<C>("model", member(&C::model), [](const std::string& v) { resolve_model(v); }),
          "model preset or FILE.json"),
      opt(integer<C>("tokens", member(&C::tokens), kAtLeastOne), "tokens per rank (256 on emu and mpi)"),
      opt(integer<C>("hidden", member(&C::hidden), kNonNegative), "hidden size (0: the model's)"),
      opt(integer<C>("experts", member(&C::experts), kNonNegative), "routed experts (0: the model's)"),
      opt(text<C>("routing", member(&C::routing)),
          "uniform | deepep | zipf:S | hotset:... | correlated:... | router:SPEC"),
      opt(text<C>("trace", member(&C::trace)), "routing trace file (instead of routing)"),
      opt(text<C>("algorithm", member(&C::algorithm), [](const std::string& v) { algorithm_registry().by_name(v); }),
          "flat | hierarchical | low-latency | allgather"),
      opt(text<C>("dispatch_codec", member(&C::dispatch_codec)), "wire format of dispatch (empty: the model's)"),
      opt(text<C>("combine_codec", member(&C::combine_codec)), "wire format of combine (empty: the model's)"),
      opt(text<C>("transform", member(&C::transform)),
          "expert transform checked on real bytes: identity | scale | ffn"),
      opt(text<C>("payload", member(&C::payload)), "real | phantom | auto (phantom where time is modeled)"),
      opt(integer<C>("redundant_experts", member(&C::redundant_experts), kNonNegative),
          "extra expert slots (a multiple of the rank count)"),
      opt(text<C>("balancer", member(&C::balancer)),
          "expert placement: none | eplb[:...] | migration-aware[:...] (docs/policies.md)"),
      opt(text<C>("heat", member(&C::heat)),
          "heat predictor for rebalancing: last | ema:alpha=A | window:w=W | trend:... | oracle"),
      opt(integer<C>("rebalance_every", member(&C::rebalance_every), kNonNegative),
          "re-place experts every N steps, moving weights (0: never)"),
      opt(integer<C>("warmup_steps", member(&C::warmup_steps), kNonNegative),
          "steps the planner plays first (predictors learn, experts re-placed), not run or reported"),
      opt(text<C>("replica_selection", member(&C::replica_selection)),
          "round-robin | least-loaded | topology-aware[:costs=FILE from eplab probe]"),
      opt(integer<C>("steps", member(&C::steps), kAtLeastOne), "steps"),
      opt(integer<C>("layers", member(&C::layers), kAtLeastOne), "MoE layers per step"),
      opt(integer<C>("seed", member(&C::seed), kNonNegative), "seed for routing and activations"),
      opt(text<C>("sim_model", member(&C::sim_model)),
          "sim: exchanges as one parallel task per round (ptask, also empty; ptask-pairs: over every rank pair, "
          "unreduced) or per-message flows"),
      // --timeout: the command line's name since the first release.
      opt(real<C>("timeout_s", member(&C::timeout_s), kPositive),
          "seconds a rank may wait for a peer before the run fails (finite; 1e9 for no practical limit)", "timeout"),
      opt(boolean<C>("verify", member(&C::verify)), "check delivery and combine where real bytes move"),
      opt(text<C>("mode", member(&C::mode)), "inference | training (backward pass and dense-gradient all-reduce)"),
      opt(boolean<C>("overlap_allreduce", member(&C::overlap_allreduce)),
          "training: overlap the dense-gradient all-reduce with backward compute"),
      opt(text<C>("overlap", member(&C::overlap),
                  [](const std::string& v) {
                    if (v != "none" && v != "tbo")
                      throw EplabError("expected none or tbo (two-batch overlap), got '" + v + "'");
                  }),
          "none | tbo: two micro-batches, one's dispatch/combine under the other's compute (sim; docs/sim.md)"),
      opt(text<C>("timeline", member(&C::timeline)), "write a Chrome trace-event timeline (Perfetto) to this file"),
      opt(integer<C>("layout_cache", member(&C::layout_cache), kNonNegative),
          "cached layouts: LRU capacity; a repeated routing skips the count exchange (0: off; docs/policies.md)"),
      opt(string_list<C>("faults", member(&C::faults), [](const std::string& v) { parse_fault(v); }),
          "inject a fault, repeatable: gpu:R@step:S | straggler:R,x=Y | stall:R@step:S,for=D | ... (docs/faults.md)",
          "fault"),
      opt(real<C>("detect_timeout_s", member(&C::detect_timeout_s), kPositive),
          "seconds survivors wait at a failed step before acting on the failure (docs/faults.md)", "detect-timeout"),
      opt(text<C>("checkpoint", member(&C::checkpoint)),
          "write the run's state to this file at step boundaries (docs/checkpoints.md)"),
      opt(integer<C>("checkpoint_every", member(&C::checkpoint_every), kAtLeastOne),
          "with --checkpoint: write it every N steps"),
      opt(integer<C>("stop_after_steps", member(&C::stop_after_steps), kNonNegative),
          "with --checkpoint: end the run after N steps, its checkpoint written (0: run every step)"),
      opt(text<C>("resume", member(&C::resume)), "continue a run from this checkpoint (same options)"),
      // New options go at the end: options are numbered by their place here (the fuzz seeds name them so).
      opt(text<C>("combine_out", member(&C::combine_out),
                  [](const std::string& v) {
                    if (v != "auto" && v != "fp32" && v != "bf16")
                      throw EplabError("expected auto, fp32 or bf16, got '" + v + "'");
                  }),
          "combine's output on real bytes: bf16 (as DeepEP returns it: each sum rounded once, half the memory of "
          "fp32; inference without --overlap) | fp32 | auto (default: bf16 where allowed, else fp32)"),
      opt(text<C>("transport", member(&C::transport)),
          "real: staged (threads, default) | nccl (mpirun -n N, one rank per GPU) | cuda-ipc (mpirun -n N, "
          "ranks sharing GPUs), docs/gpu.md; mpi: mpi (default) | verbs (RDMA writes over ibverbs, docs/verbs.md)"),
  };
  return table;
}

RunConfig default_run_config() {
  RunConfig cfg;
  cfg.backend = backend_registry().find("sim") ? "sim" : "emu";
  return cfg;
}

void apply_backend_defaults(RunConfig& cfg, const std::vector<std::string>& given) {
  if (cfg.backend != "emu" && cfg.backend != "mpi") return;
  auto named = [&](const char* key) { return std::find(given.begin(), given.end(), key) != given.end(); };
  if (!named("nodes")) cfg.nodes = 2;
  if (!named("tokens")) cfg.tokens = 256;
}

void set_run_option_text(RunConfig& cfg, const RunOption& option, const std::string& text) {
  nlohmann::json value = text;
  if (option.field.type == Type::kStringList) {
    // Repeatable: each occurrence adds one item to what is there (cmd_run clears a config file's list first).
    value = option.field.get(cfg);
    value.push_back(text);
  } else if (option.field.type == Type::kBoolean) {
    if (text == "1" || text == "true" || text == "on") value = true;
    if (text == "0" || text == "false" || text == "off") value = false;
  } else if (option.field.type != Type::kString) {
    // A number where the text is one; otherwise the text itself, which the field refuses naming what it expected.
    value = nlohmann::json::parse(text, nullptr, false);
    if (value.is_discarded() || !value.is_number()) value = text;
    // "inf" and "nan" are numbers to strtod but not to JSON: pass them on as numbers, which the field refuses by name.
    if (value.is_string() && option.field.type == Type::kNumber) {
      char* end = nullptr;
      const double x = std::strtod(text.c_str(), &end);
      if (!text.empty() && *end == '\0') value = x;
    }
  }
  option.field.set(cfg, value, "--" + option.flag);
}

std::vector<std::string> read_run_config(const nlohmann::json& j, const std::string& source, RunConfig& cfg) {
  read(j, source, run_fields(), cfg, {false, "", {}, "option"});
  std::vector<std::string> given;
  for (const auto& [key, value] : j.items()) given.push_back(key);
  return given;
}

nlohmann::json run_config_to_json(const RunConfig& cfg) { return to_json(cfg, run_fields()); }

}  // namespace eplab
