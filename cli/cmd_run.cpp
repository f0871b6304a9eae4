// `eplab run`: one experiment on a backend; prints a summary table and writes the JSON report.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/args.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "engine/experiment.hpp"

namespace eplab::cli {
namespace {

int cmd_run(const std::vector<std::string>& argv) {
  RunConfig cfg;
  const auto built = backend_names();
  const bool have_sim = std::find(built.begin(), built.end(), "sim") != built.end();
  cfg.backend = have_sim ? "sim" : "emu";
  std::string report_path;
  bool quiet = false, no_verify = false;
  Args args("eplab run [options]",
            "Run dispatch -> expert compute -> combine for steps x layers on a backend and report phase times,\n"
            "bandwidths (DeepEP's definitions), bytes by link class, imbalance and verification.");
  args.opt("backend", &cfg.backend, "sim | emu | real")
      .opt("cluster", &cfg.cluster, "cluster preset (eplab presets)")
      .opt("nodes", &cfg.nodes, "nodes (0: the preset's; 2 on emu)")
      .opt("gpus-per-node", &cfg.gpus_per_node, "GPUs per node (0: the preset's)")
      .opt("model", &cfg.model, "model preset")
      .opt("tokens", &cfg.tokens, "tokens per rank")
      .opt("hidden", &cfg.hidden, "hidden size (0: the model's)")
      .opt("routing", &cfg.routing, "uniform | deepep | zipf:S | hotset:... | correlated:...")
      .opt("trace", &cfg.trace, "routing trace file (instead of --routing)")
      .opt("algorithm", &cfg.algorithm, "flat | hierarchical | ...")
      .opt("dispatch-codec", &cfg.dispatch_codec, "wire format of dispatch (default: the model's)")
      .opt("combine-codec", &cfg.combine_codec, "wire format of combine (default: the model's)")
      .opt("transform", &cfg.transform, "expert transform checked on real bytes: identity | scale | ffn")
      .opt("payload", &cfg.payload, "real | phantom | auto")
      .opt("redundant-experts", &cfg.redundant_experts, "extra expert slots (a multiple of the rank count)")
      .opt("steps", &cfg.steps, "steps")
      .opt("layers", &cfg.layers, "MoE layers per step")
      .opt("seed", &cfg.seed, "seed for routing and activations")
      .opt("timeout", &cfg.timeout_s, "seconds a rank may wait for a peer before the run fails")
      .opt("report", &report_path, "write the JSON report to this file")
      .flag("no-verify", &no_verify, "skip the delivery and combine check")
      .flag("quiet", &quiet, "no progress line");
  if (!args.parse(argv)) return 0;
  if (!args.positional().empty()) throw EplabError("unexpected argument '" + args.positional()[0] + "'");
  if (cfg.backend == "emu" && !args.given("nodes")) cfg.nodes = 2;
  cfg.verify = !no_verify;
  if (!report_path.empty()) {
    std::ofstream probe(report_path, std::ios::app);
    if (!probe) throw EplabError("cannot write the report to '" + report_path + "'");
  }
  Progress progress("eplab run: layer", quiet);
  auto report = run_experiment(cfg, [&](int d, int t) { progress.update(d, t); });
  progress.finish();
  std::cout << format_summary(report);
  if (!report_path.empty()) {
    std::ofstream out(report_path);
    out << report.dump(2) << "\n";
    if (!out) throw EplabError("writing the report to '" + report_path + "' failed");
  }
  const bool verification_failed = report["verification"]["ran"].get<bool>() && !report["verified"].get<bool>();
  return verification_failed ? 4 : 0;
}

}  // namespace

EPLAB_COMMAND("run", "run an experiment and write its report", cmd_run);

}  // namespace eplab::cli
