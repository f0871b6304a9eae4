// Calibration: runs DeepEP's V1 normal-kernel workload on the simulated h800-cx7 cluster and prints each of
// the eight published figures next to the simulated one with the error per row; writes JSON with --json FILE.
//   bench_sim_calibrate [--json FILE] [--max-error PCT] [--model ptask|flows]   (exit 1: a row misses by > PCT)
// The published figures are copied from DeepEP's README (docs/legacy.md; calibration/deepep_v1_normal.csv).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "driver/experiment.hpp"

namespace {

struct Published {
  const char* type;  // intranode: logical bandwidth (whole call); internode: RDMA bandwidth (kernel, no notify)
  int ep;
  const char* phase;
  const char* bottleneck;
  double GBps;
};

// DeepEP V1 normal kernels, H800 + CX7 400 Gb/s, 4096 tokens/rank, hidden 7168, top-8 of 256 experts,
// node-limited to 4 nodes, FP8 dispatch, BF16 combine, 24 SMs.
constexpr Published kRows[] = {
    {"intranode", 8, "dispatch", "nvlink", 153}, {"intranode", 8, "combine", "nvlink", 158},
    {"internode", 16, "dispatch", "rdma", 43},   {"internode", 16, "combine", "rdma", 43},
    {"internode", 32, "dispatch", "rdma", 58},   {"internode", 32, "combine", "rdma", 57},
    {"internode", 64, "dispatch", "rdma", 51},   {"internode", 64, "combine", "rdma", 50},
};

}  // namespace

int main(int argc, char** argv) {
  std::string json_path, model;
  double max_error = 10;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      json_path = argv[++i];
    else if (!std::strcmp(argv[i], "--max-error") && i + 1 < argc)
      max_error = std::atof(argv[++i]);
    else if (!std::strcmp(argv[i], "--model") && i + 1 < argc)
      model = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--json FILE] [--max-error PCT] [--model ptask|flows]\n", argv[0]);
      return 2;
    }
  }
  nlohmann::json out = nlohmann::json::array();
  std::printf(
      "DeepEP V1 normal kernels vs eplab sim (h800-cx7, deepseek-v3, 4096 tokens/rank, routing deepep,\n"
      "fp8-e4m3-b128 dispatch, bf16 combine, hierarchical), exchange model %s\n",
      model.empty() ? "ptask" : model.c_str());
  std::printf("%-10s %4s %-9s %-7s %14s %14s %9s %11s\n", "type", "EP", "phase", "bound", "published GB/s",
              "simulated GB/s", "error %", "time (us)");
  int bad = 0;
  for (const auto& row : kRows) {
    eplab::RunConfig c;
    c.backend = "sim";
    c.cluster = "h800-cx7";
    c.nodes = row.ep / 8;
    c.gpus_per_node = 8;
    c.model = "deepseek-v3";
    c.tokens = 4096;
    c.routing = "deepep";
    c.algorithm = "hierarchical";
    c.dispatch_codec = "fp8-e4m3-b128";
    c.combine_codec = "bf16";
    c.payload = "phantom";
    c.sim_model = model;
    const auto r = eplab::run_experiment(c);
    const auto& ph = r["phases"][row.phase];
    const bool intra = !std::strcmp(row.type, "intranode");
    const double sim = ph[intra ? "logical_bw_GBps" : "scaleout_bw_GBps"].get<double>();
    const double err = 100.0 * (sim - row.GBps) / row.GBps;
    if (std::fabs(err) > max_error) ++bad;
    std::printf("%-10s %4d %-9s %-7s %14.1f %14.1f %+9.1f %11.1f\n", row.type, row.ep, row.phase, row.bottleneck,
                row.GBps, sim, err, ph["time_s"].get<double>() * 1e6);
    out.push_back({{"type", row.type},
                   {"ep", row.ep},
                   {"phase", row.phase},
                   {"bottleneck", row.bottleneck},
                   {"published_GBps", row.GBps},
                   {"simulated_GBps", sim},
                   {"error_pct", err},
                   {"time_s", ph["time_s"]},
                   {"wall_s", r["wall_s"]}});
  }
  std::printf("%d of %zu rows outside +-%.0f%%\n", bad, std::size(kRows), max_error);
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << nlohmann::json{{"rows", out}, {"max_error_pct", max_error}}.dump(2) << "\n";
  }
  return bad ? 1 : 0;
}
