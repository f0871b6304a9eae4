// `eplab run`: one experiment on a backend; prints a summary table and writes the JSON report.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <tuple>

#include "cli/args.hpp"
#include "cli/run_args.hpp"
#include "driver/experiment.hpp"
#include "driver/plan.hpp"
#include "driver/run_options.hpp"
#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "engine/json_fields.hpp"
#include "engine/moe_shape.hpp"
#include "engine/output_file.hpp"
#include "traces/routing_source.hpp"

namespace eplab::cli {
namespace {

// Serves each (step, layer, rank) batch from memory after the first request, so that comparing algorithms
// generates the routing once instead of once per algorithm.
class CachedSource : public RoutingSource {
 public:
  explicit CachedSource(std::shared_ptr<RoutingSource> in) : in_(std::move(in)) {}
  std::string name() const override { return in_->name(); }
  RoutingBatch batch(int step, int layer, int rank) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, fresh] = cache_.try_emplace(std::tuple{step, layer, rank});
    if (fresh) it->second = in_->batch(step, layer, rank);
    return it->second;
  }
  int num_steps() const override { return in_->num_steps(); }
  int num_layers() const override { return in_->num_layers(); }

 private:
  std::shared_ptr<RoutingSource> in_;
  std::mutex mu_;
  std::map<std::tuple<int, int, int>, RoutingBatch> cache_;
};

// Something the verification checked was wrong (delivery, or values against the codecs' bound; on phantom
// payloads, the message counts). A run whose values could not be checked ("delivery only") reports verified false
// but has not failed.
bool verification_failed(const nlohmann::json& report) {
  const auto& v = report["verification"];
  if (!v["ran"].get<bool>()) return !v.value("passed", true);
  return !v.value("passed", report["verified"].get<bool>());
}

// One row per algorithm on the same cluster and workload: what `eplab run` prints when it compares them.
void print_comparison(const std::vector<nlohmann::json>& reports) {
  nlohmann::json r0 = reports.front();
  for (const auto& r : reports)
    if (!r.contains("error")) r0 = r;
  if (r0.contains("error")) {
    for (const auto& r : reports)
      std::printf("%s failed: %s\n", r["algorithm"].get<std::string>().c_str(), r["error"].get<std::string>().c_str());
    return;
  }
  std::printf("eplab %s | %s, %d nodes x %d GPUs = %d ranks | %s | %d tokens/rank | routing %s | %s payload\n",
              r0["backend"].get<std::string>().c_str(), r0["cluster"]["name"].get<std::string>().c_str(),
              r0["cluster"]["nodes"].get<int>(), r0["cluster"]["gpus_per_node"].get<int>(), r0["ranks"].get<int>(),
              r0["model"]["name"].get<std::string>().c_str(),
              static_cast<int>(std::lround(r0["tokens_per_rank"].get<double>())),
              r0["routing"].get<std::string>().c_str(), r0["payload"].get<std::string>().c_str());
  std::printf("%-13s %10s %10s %10s %10s %10s %10s %11s %11s %7s\n", "algorithm", "notify us", "disp us", "comb us",
              "disp GB/s", "comb GB/s", "RDMA GB/s", "scale-up MB", "scale-out MB", "wall s");
  for (const auto& r : reports) {
    if (r.contains("error")) {
      std::printf("%-13s failed: %s\n", r["algorithm"].get<std::string>().c_str(),
                  r["error"].get<std::string>().c_str());
      continue;
    }
    const auto& p = r["phases"];
    auto mb = [&](const char* cls) {
      return (p["dispatch"]["bytes"][cls].get<double>() + p["combine"]["bytes"][cls].get<double>()) / 1e6;
    };
    std::printf("%-13s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %11.0f %11.0f %7.2f\n",
                r["algorithm"].get<std::string>().c_str(), p["notify"]["time_s"].get<double>() * 1e6,
                p["dispatch"]["time_s"].get<double>() * 1e6, p["combine"]["time_s"].get<double>() * 1e6,
                p["dispatch"]["logical_bw_GBps"].get<double>(), p["combine"]["logical_bw_GBps"].get<double>(),
                p["dispatch"]["scaleout_bw_GBps"].get<double>(), mb("scaleup"), mb("scaleout"),
                r["wall_s"].get<double>());
  }
  std::printf(
      "times are per layer (simulated); GB/s follow DeepEP's definitions (logical: received tokens; RDMA:\n"
      "(token, node) pairs); MB are wire bytes summed over all ranks, dispatch + combine\n");
}

int cmd_run(const std::vector<std::string>& argv) {
  RunConfig cfg = default_run_config();
  const bool have_sim = cfg.backend == "sim";
  std::string report_path;
  bool quiet = false, compare = false, dump_config = false;
  Args args("eplab run [options]",
            "Run dispatch -> expert compute -> combine for steps x layers on a backend and report phase times,\n"
            "bandwidths (DeepEP's definitions), bytes by link class, imbalance and verification.");
  RunArgs run_args(args, cfg);
  args.flag("dump-config", &dump_config, "print the resolved options as a --config file and exit")
      .opt("report", &report_path, "write the JSON report to this file")
      .flag("compare", &compare, "run every algorithm on the same workload and print one table")
      .flag("quiet", &quiet, "no progress line");
  // With no options at all: the 256-GPU default cluster, every algorithm, one comparison table.
  if (argv.empty() && have_sim) compare = true;
  if (!args.parse(argv)) return 0;
  run_args.apply();
  if (dump_config) {
    std::cout << run_config_to_json(cfg).dump(2) << "\n";
    return 0;
  }
  if (compare && (!cfg.checkpoint.empty() || !cfg.resume.empty()))
    throw EplabError("--checkpoint and --resume belong to one run; drop --compare (or pick one --algorithm)");
  if (compare && !cfg.timeline.empty())
    throw EplabError("--timeline records one run; drop --compare (or pick one --algorithm)");
  // Outputs that cannot be written fail now, before the run; an existing report is replaced only once the new
  // one is written in full.
  if (!report_path.empty()) check_output_path(report_path, "the report");
  if (compare) {
    std::vector<nlohmann::json> reports;
    const auto names = algorithm_names();
    Progress progress("eplab run: algorithm", quiet);
    // Generate the routing once, here, so every child below inherits it.
    const Topology topo(config_cluster(cfg));
    const RoutingParams rp{config_model(cfg), topo, cfg.tokens, cfg.seed};
    cfg.routing_source =
        std::make_shared<CachedSource>(make_routing(cfg.trace.empty() ? cfg.routing : "trace:" + cfg.trace, rp));
    for (int step = 0; step < cfg.steps; ++step)
      for (int layer = 0; layer < cfg.layers; ++layer)
        for (int r = 0; r < topo.size(); ++r) cfg.routing_source->batch(step, layer, r);
    for (size_t i = 0; i < names.size(); ++i) {
      RunConfig c = cfg;
      c.algorithm = names[i];
      // In a child process each: an algorithm that runs out of memory or fails takes only its own row with it.
      nlohmann::json r = run_experiment_in_child(c);
      if (r.contains("error")) r["algorithm"] = c.algorithm;
      reports.push_back(std::move(r));
      progress.update(static_cast<int>(i + 1), static_cast<int>(names.size()));
    }
    progress.finish();
    print_comparison(reports);
    if (!report_path.empty()) write_output_file(report_path, nlohmann::json(reports).dump(2) + "\n", "the report");
    // As for one run: 1 when an algorithm failed, else 4 when one failed its verification.
    bool failed = false, unverified = false;
    for (const auto& r : reports) {
      failed = failed || r.contains("error");
      unverified = unverified || (!r.contains("error") && verification_failed(r));
    }
    return failed ? 1 : unverified ? 4 : 0;
  }
  Progress progress("eplab run: layer", quiet);
  auto report = run_experiment(cfg, [&](int d, int t) { progress.update(d, t); });
  progress.finish();
  // A process of a multi-process run that did not hold rank 0 has nothing to print: rank 0 reports for all.
  if (report.value("role", "") == "worker") return 0;
  if (report.value("stopped", false)) {  // --stop-after-steps: no report yet, the checkpoint holds the run
    std::printf("stopped after %d of %d steps; checkpoint written to %s (continue with --resume %s)\n",
                report["steps_done"].get<int>(), report["steps"].get<int>(), cfg.checkpoint.c_str(),
                cfg.checkpoint.c_str());
    if (!report_path.empty()) write_output_file(report_path, report.dump(2) + "\n", "the report");
    return 0;
  }
  std::cout << format_summary(report);
  if (cfg.rebalance_every > 0) {
    const auto& m = report["migration"];
    std::printf("policies: %s, heat %s every %d steps, %s | migration %d rebalances, %ld slots, %.3f GB%s\n",
                cfg.balancer.c_str(), cfg.heat.c_str(), cfg.rebalance_every, cfg.replica_selection.c_str(),
                m["rebalances"].get<int>(), m["slots_moved"].get<long>(), m["bytes"].get<double>() / 1e9,
                m["timed"].get<bool>() ? (", " + std::to_string(m["time_s"].get<double>() * 1e3) + " ms").c_str()
                                       : " (not timed: real-byte backend)");
  }
  if (cfg.layout_cache > 0) {
    const auto& lc = report["layout_cache"];
    std::printf(
        "layout cache: %ld hits, %ld misses (hit rate %.1f%%), notify time saved %s\n", lc["hits"].get<long>(),
        lc["misses"].get<long>(), 100.0 * lc["hit_rate"].get<double>(),
        lc["timed"].get<bool>()
            ? (std::to_string(lc["notify_time_saved_s"].get<double>() * 1e6) + " us").c_str()
            : (std::to_string(lc["notify_time_saved_s"].get<double>() * 1e6) + " us wall (emu threads)").c_str());
  }
  if (!report_path.empty()) write_output_file(report_path, report.dump(2) + "\n", "the report");
  return verification_failed(report) ? 4 : 0;
}

}  // namespace

EPLAB_COMMAND("run", "run an experiment and write its report", cmd_run);

}  // namespace eplab::cli
