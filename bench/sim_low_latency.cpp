// Low-latency mode (DeepEP's LL kernels), modeled from the same physical parameters as the calibrated normal
// mode: dispatch and combine latency and bandwidth for EP 8..256 with 128 tokens per rank, hidden 7168, top-8,
// FP8 dispatch and BF16 combine. No published table is fitted; this is the model's prediction. DeepEP's LL
// dispatch is one kernel whose per-expert count signals travel with the data, so its time here is eplab's notify
// round (those counts) plus the payload; the receive stages are inside dispatch and combine (docs/sim.md).
//   bench_sim_low_latency [--json FILE]
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "driver/experiment.hpp"

int main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      json_path = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  nlohmann::json out = nlohmann::json::array();
  std::printf(
      "eplab sim, low-latency mode: h800-cx7, deepseek-v3 (hidden 7168, top-8), 128 tokens/rank, deepep routing\n");
  std::printf("%5s %16s %16s %16s %16s\n", "EP", "dispatch (us)", "dispatch GB/s", "combine (us)", "combine GB/s");
  for (int ep : {8, 16, 32, 64, 128, 256}) {
    eplab::RunConfig c;
    c.backend = "sim";
    c.cluster = "h800-cx7";
    c.nodes = ep / 8;
    c.gpus_per_node = 8;
    c.tokens = 128;
    c.routing = "deepep";
    c.algorithm = "low-latency";
    c.dispatch_codec = "fp8-e4m3-b128";
    c.combine_codec = "bf16";
    c.payload = "phantom";
    const auto r = eplab::run_experiment(c);
    const auto& d = r["phases"]["dispatch"];
    const auto& k = r["phases"]["combine"];
    const double dispatch_s = r["phases"]["notify"]["time_s"].get<double>() + d["time_s"].get<double>();
    const double dispatch_GBps = d["logical_bytes_per_rank"].get<double>() / dispatch_s / 1e9;
    std::printf("%5d %16.1f %16.1f %16.1f %16.1f\n", ep, dispatch_s * 1e6, dispatch_GBps,
                k["time_s"].get<double>() * 1e6, k["logical_bw_GBps"].get<double>());
    out.push_back({{"ep", ep},
                   {"dispatch_time_s", dispatch_s},
                   {"dispatch_GBps", dispatch_GBps},
                   {"combine_time_s", k["time_s"]},
                   {"combine_GBps", k["logical_bw_GBps"]}});
  }
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << nlohmann::json{{"rows", out}}.dump(2) << "\n";
  }
  return 0;
}
