// `eplab trace gen|info|import`: write a generator's routing to a trace file, describe a trace, and convert a
// JSONL routing log. A thin wrapper: the work is in traces/trace_tools.hpp.
#include <cstdio>
#include <iostream>

#include "cli/args.hpp"
#include "engine/error.hpp"
#include "engine/moe_shape.hpp"
#include "engine/spec_json.hpp"
#include "engine/topology.hpp"
#include "traces/trace_tools.hpp"

namespace eplab::cli {
namespace {

Topology make_topology(const std::string& cluster, int nodes, int gpus_per_node) {
  ClusterSpec spec = resolve_cluster(cluster);
  if (nodes < 0) throw EplabError("--nodes must be >= 1, got " + std::to_string(nodes));
  if (gpus_per_node < 0) throw EplabError("--gpus-per-node must be >= 1, got " + std::to_string(gpus_per_node));
  if (nodes > 0) spec.nodes = nodes;
  if (gpus_per_node > 0) spec.gpus_per_node = gpus_per_node;
  return Topology(spec);
}

// Args knows long options only; -o FILE is the conventional spelling for an output file.
std::vector<std::string> with_short_output(std::vector<std::string> argv) {
  for (auto& a : argv)
    if (a == "-o")
      a = "--output";
    else if (a.rfind("-o=", 0) == 0)
      a = "--output=" + a.substr(3);
  return argv;
}

std::string routing_help() {
  std::string s;
  for (auto& n : routing_spec_names()) s += (s.empty() ? "" : " | ") + n;
  return s;
}

int trace_gen(const std::vector<std::string>& argv) {
  TraceGenOptions opts;
  std::string model = "deepseek-v3", cluster = "h800-cx7", out;
  int nodes = 2, gpus = 0, tokens = 4096;
  uint64_t seed = 1;
  Args args("eplab trace gen --routing SPEC -o FILE [options]",
            "Write steps x layers x ranks batches of a routing generator to a trace file.");
  args.opt("routing", &opts.routing, routing_help())
      .opt("model", &model, "model preset or FILE.json (eplab presets --dump NAME)")
      .opt("cluster", &cluster, "cluster preset or FILE.json (eplab presets --dump NAME)")
      .opt("nodes", &nodes, "nodes (0: the preset's)")
      .opt("gpus-per-node", &gpus, "GPUs per node (0: the preset's)")
      .opt("tokens", &tokens, "tokens per rank")
      .opt("steps", &opts.steps, "steps")
      .opt("layers", &opts.layers, "MoE layers per step")
      .opt("seed", &seed, "seed")
      .opt("output", &out, "output trace file (or -o FILE)");
  if (!args.parse(with_short_output(argv))) return 0;
  if (out.empty()) throw EplabError("trace gen needs an output file: -o FILE");
  opts.params.shape = resolve_model(model);
  opts.params.topology = make_topology(cluster, nodes, gpus);
  opts.params.tokens_per_rank = tokens;
  opts.params.seed = seed;
  const TraceHeader h = generate_trace(opts, out);
  std::printf("wrote %s: %s, %d steps x %d layers x %d ranks x %d tokens (%s, seed %llu)\n", out.c_str(),
              h.shape.name.c_str(), h.num_steps, h.num_layers, h.num_ranks, h.tokens_per_rank,
              h.provenance.generator.c_str(), static_cast<unsigned long long>(seed));
  return 0;
}

int trace_info(const std::vector<std::string>& argv) {
  Args args("eplab trace info FILE", "Print a trace's header, counts and per-expert load.");
  args.positionals(1);
  if (!args.parse(with_short_output(argv))) return 0;
  if (args.positional().size() != 1) throw UsageError("trace info takes exactly one trace file (see --help)");
  std::cout << format_trace_summary(summarize_trace(args.positional()[0]));
  return 0;
}

int trace_import(const std::vector<std::string>& argv) {
  JsonlImportOptions opts;
  std::string model = "deepseek-v3", cluster = "h800-cx7", out;
  int nodes = 1, gpus = 0;
  Args args("eplab trace import --jsonl FILE -o FILE [options]",
            "Convert a JSONL routing log (one {\"layer\", \"token_idx\", \"topk_ids\", \"topk_weights\"} object per\n"
            "token and layer) into a trace. Token i goes to source rank i / tokens-per-rank.");
  args.opt("jsonl", &opts.jsonl_path, "the JSONL routing log")
      .opt("model", &model, "model preset or FILE.json the log was recorded with")
      .opt("cluster", &cluster, "cluster preset or FILE.json")
      .opt("nodes", &nodes, "nodes (0: the preset's)")
      .opt("gpus-per-node", &gpus, "GPUs per node (0: the preset's)")
      .opt("tokens", &opts.tokens_per_rank, "tokens per source rank (0: fit the log's tokens)")
      .opt("output", &out, "output trace file (or -o FILE)");
  if (!args.parse(with_short_output(argv))) return 0;
  if (opts.jsonl_path.empty()) throw EplabError("trace import needs --jsonl FILE");
  if (out.empty()) throw EplabError("trace import needs an output file: -o FILE");
  opts.shape = resolve_model(model);
  opts.topology = make_topology(cluster, nodes, gpus);
  const TraceHeader h = import_jsonl(opts, out);
  std::printf("wrote %s: %d steps x %d layers x %d ranks, %d tokens per rank, from %s\n", out.c_str(), h.num_steps,
              h.num_layers, h.num_ranks, h.tokens_per_rank, opts.jsonl_path.c_str());
  return 0;
}

int cmd_trace(const std::vector<std::string>& argv) {
  const char* usage =
      "usage: eplab trace gen|info|import [options]   (eplab trace SUBCOMMAND --help)\n"
      "  gen     write a routing generator's batches to a trace file\n"
      "  info    print a trace's header, counts and per-expert load\n"
      "  import  convert a JSONL routing log into a trace\n";
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::cout << usage;
    return argv.empty() ? 2 : 0;
  }
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "gen") return trace_gen(rest);
  if (argv[0] == "info") return trace_info(rest);
  if (argv[0] == "import") return trace_import(rest);
  throw EplabError("unknown trace subcommand '" + argv[0] + "' (known: gen, info, import)");
}

}  // namespace

EPLAB_COMMAND("trace", "generate, inspect and import routing traces", cmd_trace);

}  // namespace eplab::cli
