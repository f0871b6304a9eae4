// `eplab validate`: the simulator checked against a machine. Probes the machine's fabric (or reads a probe), fits
// a simulated cluster to it (driver/validate.hpp), runs the workload on the machine (or reads its report) and on
// sim with the fitted cluster, and prints measured and predicted phase times side by side with the error.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

#include "cli/args.hpp"
#include "cli/plot_script.hpp"
#include "cli/run_args.hpp"
#include "driver/experiment.hpp"
#include "driver/plan.hpp"
#include "driver/probe.hpp"
#include "driver/validate.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "engine/json_fields.hpp"
#include "engine/output_file.hpp"
#include "engine/spec_json.hpp"

namespace eplab::cli {
namespace {

// A report read with --measured must be of the workload the command line describes: the prediction runs that one.
void check_same_workload(const nlohmann::json& measured, const nlohmann::json& predicted, const std::string& source) {
  auto field = [](const nlohmann::json& r, const char* key) {
    if (!r.contains(key)) return std::string("(none)");
    nlohmann::json v = r[key];
    if (std::string_view(key) == "codec") v.erase("combine_out");  // the output's type on real bytes, not the wire's
    return v.dump();
  };
  for (const char* key : {"ranks", "algorithm", "tokens_per_rank", "steps", "layers", "routing", "seed", "codec"})
    if (field(measured, key) != field(predicted, key))
      throw EplabError(source + ": its '" + key + "' is " + field(measured, key) +
                       ", the command line's workload has " + field(predicted, key) +
                       "; pass the options the measured run used");
  if (measured["model"].value("hidden", 0) != predicted["model"].value("hidden", 0))
    throw EplabError(source +
                     ": another hidden size than the command line's workload; pass the measured run's options");
}

// A file in /tmp for one command's intermediate output, removed when it goes out of scope (also on an error).
class ScratchFile {
 public:
  // `suffix` is kept at the end of the name (a cluster file is known by its .json); `what` names it in errors.
  ScratchFile(const std::string& suffix, const std::string& what) {
    std::string name = "/tmp/eplab-validate-XXXXXX" + suffix;
    const int fd = mkstemps(name.data(), static_cast<int>(suffix.size()));
    if (fd < 0) throw EplabError("cannot create a temporary file for " + what + " in /tmp");
    close(fd);
    path_ = name;
  }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  ~ScratchFile() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void print_probe_fit(const ClusterFit& fit) {
  std::printf("%-26s %14s %14s %14s\n", "probe", "measured", "fitted sim", "preset sim");
  auto row = [](const char* what, double m, double f, double b, double scale) {
    std::printf("%-26s %14.2f %14.2f %14.2f\n", what, m * scale, f * scale, b * scale);
  };
  for (int c = 1; c < kProbeClasses; ++c) {
    if (fit.measured.class_count[c] == 0) continue;
    const std::string name = probe_class_name(c);
    row((name + " latency us").c_str(), fit.measured.class_latency_s[c], fit.fitted_sim.class_latency_s[c],
        fit.base_sim.class_latency_s[c], 1e6);
    row((name + " GB/s").c_str(), fit.measured.class_bandwidth_GBps[c], fit.fitted_sim.class_bandwidth_GBps[c],
        fit.base_sim.class_bandwidth_GBps[c], 1);
  }
  if (fit.measured.round_s > 0)
    row("empty round us", fit.measured.round_s, fit.fitted_sim.round_s, fit.base_sim.round_s, 1e6);
  for (const auto& n : fit.notes) std::printf("note: %s\n", n.c_str());
}

int cmd_validate(const std::vector<std::string>& argv_in) {
  std::vector<std::string> argv;
  for (const auto& a : argv_in) argv.push_back(a == "-o" ? "--json" : a);
  RunConfig cfg = default_run_config();
  cfg.backend = "emu";
  std::string probe_path, measured_path, cluster_out, json_path, plot_path, python = default_python();
  int skip_calls = -1;
  bool quiet = false;
  Args args("eplab validate [run options] [--probe FILE] [--measured REPORT] [--json OUT] [--plot OUT.png]",
            "Check the simulator against a machine: probe the backend's fabric (latency and bandwidth per link\n"
            "class, one empty all-to-all round), fit a simulated cluster to the probe, run the workload on the\n"
            "backend and on sim with the fitted cluster (same routing, sizes only), and print measured and\n"
            "predicted notify, dispatch and combine times with the error. Where the machine has no SimGrid, run\n"
            "`eplab probe -o P.json` and `eplab run --report R.json` there and validate here with --probe P.json\n"
            "--measured R.json and the same run options.");
  RunArgs run_args(args, cfg);
  args.opt("probe", &probe_path, "a probe written by `eplab probe -o` (default: probe the backend now)")
      .opt("measured", &measured_path, "a report of the workload on the machine (default: run it now)")
      .opt("skip-calls", &skip_calls, "calls left out of the means as warm-up (-1: 1 when there are more)")
      .opt("cluster-out", &cluster_out, "write the fitted cluster (a --cluster file) here")
      .opt("json", &json_path, "write the comparison as JSON (-o)")
      .opt("plot", &plot_path, "draw measured vs predicted to this PNG")
      .opt("python", &python, "the python3 that draws --plot (env EPLAB_PYTHON)")
      .flag("quiet", &quiet, "no progress line");
  if (!args.parse(argv)) return 0;
  run_args.apply();
  const auto& given = run_args.given();
  if (std::find(given.begin(), given.end(), "steps") == given.end()) cfg.steps = 4;
  if (cfg.backend == "sim" && measured_path.empty())
    throw EplabError(
        "eplab validate measures on a machine: pick a real-byte backend (--backend emu or real), or "
        "give the machine's report with --measured");
  for (const auto& [path, what] : {std::pair{json_path, "the comparison"}, std::pair{cluster_out, "the fitted cluster"},
                                   std::pair{plot_path, "the plot"}})
    if (!path.empty()) check_output_path(path, what);
  if (!plot_path.empty()) check_plot_python(python);

  const ClusterSpec base = config_cluster(cfg);
  ProbeResult probe;
  if (!probe_path.empty()) {
    probe = probe_from_json(fields::parse_file(probe_path, "probe '" + probe_path + "'"), "probe '" + probe_path + "'");
  } else {
    auto backend = create_backend(cfg.backend);
    if (!backend->in_process())
      throw EplabError("backend '" + cfg.backend +
                       "' runs one rank per process: run `eplab probe -o P.json` and `eplab "
                       "run --report R.json` under its launcher, then eplab validate --probe P.json --measured R.json");
    if (!quiet) std::fprintf(stderr, "eplab validate: probing %s ...\n", cfg.backend.c_str());
    ProbeOptions po;
    po.timeout_s = cfg.timeout_s;
    probe = probe_fabric(*backend, Topology(base), po);
  }
  const ClusterFit fit = fit_cluster(base, probe);

  // The fitted cluster goes to a file: a run names its cluster by preset or file.
  std::optional<ScratchFile> scratch_cluster;
  if (cluster_out.empty()) scratch_cluster.emplace(".json", "the fitted cluster");
  const std::string cluster_file = cluster_out.empty() ? scratch_cluster->path() : cluster_out;
  write_output_file(cluster_file, cluster_to_json(fit.fitted).dump(2) + "\n", "the fitted cluster");

  RunConfig sim_cfg = cfg;
  sim_cfg.backend = "sim";
  sim_cfg.cluster = cluster_file;
  sim_cfg.payload = "phantom";
  sim_cfg.verify = false;
  sim_cfg.timeline.clear();
  if (!quiet) std::fprintf(stderr, "eplab validate: predicting on sim ...\n");
  const nlohmann::json predicted = run_experiment(sim_cfg);
  nlohmann::json measured;
  if (!measured_path.empty()) {
    const std::string source = "report '" + measured_path + "'";
    measured = fields::parse_file(measured_path, source);
    if (!measured.is_object() || !measured.contains("phases"))
      throw EplabError(source + ": not a report of one run (eplab run --report, without --compare)");
    check_same_workload(measured, predicted, source);
  } else {
    if (!quiet) std::fprintf(stderr, "eplab validate: measuring on %s ...\n", cfg.backend.c_str());
    measured = run_experiment(cfg);
  }
  const int calls = cfg.steps * cfg.layers;
  const int skip = skip_calls >= 0 ? skip_calls : (calls > 1 ? 1 : 0);
  const auto checks = compare_phases(measured, predicted, skip);

  std::printf(
      "eplab validate | measured on %s, predicted on sim with '%s' fitted to the %s probe | %d ranks | %s | "
      "%d tokens/rank | %d calls, first %d left out\n",
      measured.value("backend", cfg.backend).c_str(), base.name.c_str(), probe.backend.c_str(),
      predicted["ranks"].get<int>(), cfg.algorithm.c_str(), cfg.tokens, calls, skip);
  print_probe_fit(fit);
  std::printf("%-20s %14s %14s %10s\n", "phase", "measured us", "predicted us", "error");
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& c : checks) {
    std::printf("%-20s %14.1f %14.1f %+9.1f%%\n", c.phase.c_str(), c.measured_s * 1e6, c.predicted_s * 1e6,
                100 * c.error());
    rows.push_back(
        {{"phase", c.phase}, {"measured_s", c.measured_s}, {"predicted_s", c.predicted_s}, {"error", c.error()}});
  }
  std::printf("error = (predicted - measured) / measured; means over the calls left after warm-up\n");
  if (measured.value("verification", nlohmann::json::object()).value("ran", false))
    std::printf("measured run verified: %s\n", measured.value("verified", false) ? "true" : "false");
  nlohmann::json calls_json = nlohmann::json::object();
  for (const char* ph : {"notify", "dispatch", "combine"})
    if (measured["phases"].contains(ph) && measured["phases"][ph].contains("call_time_s"))
      calls_json[ph] = {{"measured_s", measured["phases"][ph]["call_time_s"]},
                        {"predicted_s", predicted["phases"][ph]["call_time_s"]}};
  const nlohmann::json out = {{"measured_backend", measured.value("backend", cfg.backend)},
                              {"probe", probe_json(probe, Topology(base).spec())},
                              {"fitted_cluster", cluster_to_json(fit.fitted)},
                              {"fit_notes", fit.notes},
                              {"skip_calls", skip},
                              {"phases", rows},
                              {"calls", calls_json},
                              {"measured_verified", measured.value("verified", false)}};
  if (!json_path.empty()) {
    write_output_file(json_path, out.dump(2) + "\n", "the comparison");
    std::printf("wrote %s\n", json_path.c_str());
  }
  if (!plot_path.empty()) {
    std::optional<ScratchFile> scratch_data;
    if (json_path.empty()) {
      scratch_data.emplace("", "the plot's data");
      write_output_file(scratch_data->path(), out.dump() + "\n", "the plot's data");
    }
    const std::string data = json_path.empty() ? scratch_data->path() : json_path;
    const int rc = run_process(
        {python, find_plot_script("validate_plot.py", "EPLAB_VALIDATE_PLOT"), data, "-o", plot_path}, false);
    if (rc != 0) throw EplabError("validate_plot.py failed (exit status " + std::to_string(rc) + ")");
    std::printf("wrote %s\n", plot_path.c_str());
  }
  return 0;
}

}  // namespace

EPLAB_COMMAND("validate", "measure a workload on a machine and set the simulator's prediction beside it", cmd_validate);

}  // namespace eplab::cli
