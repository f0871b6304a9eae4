// Soak: many emulated dispatch/combine steps in one process, in segments that each draw a routing, an algorithm
// and a dispatch/combine codec pair from a seeded list, with verification on. Resident memory is sampled inside
// each run (progress callback) and after it, so a leak across runs and growth within a run both show; every
// segment must pass its verification.
//   bench_emu_soak [--steps N] [--segments K] [--nodes N] [--gpus-per-node G] [--tokens T] [--hidden H]
//                  [--seed S] [--json FILE]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "driver/experiment.hpp"

namespace {

// Resident and peak resident memory of this process, MB (/proc/self/status VmRSS, VmHWM).
struct Rss {
  double now_MB = 0, peak_MB = 0;
};
Rss rss() {
  Rss r;
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return r;
  char line[256];
  while (std::fgets(line, sizeof line, f)) {
    long kb = 0;
    if (std::sscanf(line, "VmRSS: %ld kB", &kb) == 1) r.now_MB = kb / 1024.0;
    if (std::sscanf(line, "VmHWM: %ld kB", &kb) == 1) r.peak_MB = kb / 1024.0;
  }
  std::fclose(f);
  return r;
}

int usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--steps N] [--segments K] [--nodes N] [--gpus-per-node G] [--tokens T] [--hidden H] "
               "[--seed S] [--json FILE]\n",
               argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  long steps = 10000;
  int segments = 10, nodes = 2, gpus = 4, tokens = 64, hidden = 512;
  unsigned seed = 1;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    auto next = [&](long lo, long hi) -> long {
      if (i + 1 >= argc) std::exit(usage(argv[0]));
      char* end = nullptr;
      const long v = std::strtol(argv[++i], &end, 10);
      if (*end || v < lo || v > hi) {
        std::fprintf(stderr, "%s: %s must be an integer in [%ld, %ld]\n", argv[0], argv[i - 1], lo, hi);
        std::exit(2);
      }
      return v;
    };
    if (!std::strcmp(argv[i], "--steps"))
      steps = next(1, 10'000'000);
    else if (!std::strcmp(argv[i], "--segments"))
      segments = static_cast<int>(next(1, 10'000));
    else if (!std::strcmp(argv[i], "--nodes"))
      nodes = static_cast<int>(next(1, 64));
    else if (!std::strcmp(argv[i], "--gpus-per-node"))
      gpus = static_cast<int>(next(1, 64));
    else if (!std::strcmp(argv[i], "--tokens"))
      tokens = static_cast<int>(next(1, 1 << 16));
    else if (!std::strcmp(argv[i], "--hidden"))
      hidden = static_cast<int>(next(1, 1 << 16));
    else if (!std::strcmp(argv[i], "--seed"))
      seed = static_cast<unsigned>(next(0, 1L << 31));
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      json_path = argv[++i];
    else
      return usage(argv[0]);
  }
  if (segments > steps) segments = static_cast<int>(steps);

  const std::vector<std::string> routings = {"uniform", "deepep", "zipf:1.1", "zipf:1.5", "correlated:rho=0.9"};
  const std::vector<std::string> algorithms = {"flat", "hierarchical", "low-latency", "allgather"};
  const std::vector<std::pair<std::string, std::string>> codecs = {{"fp32", "fp32"},
                                                                   {"bf16", "bf16"},
                                                                   {"fp8-e4m3-b128", "bf16"},
                                                                   {"mxfp8", "bf16"},
                                                                   {"int8-token", "fp32"},
                                                                   {"topk:ratio=0.5+fp8-e4m3-b128", "bf16"},
                                                                   {"delta+fp8-e4m3-b128", "fp32"},
                                                                   {"fp8-e4m3-b128+zstd", "bf16"}};
  std::mt19937 rng(seed);
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };

  std::printf(
      "eplab emu soak: %ld dispatch/combine steps in %d segments, %d ranks (%d x %d), %d tokens/rank, hidden "
      "%d, deepseek-v3 routing shape, verification on\n",
      steps, segments, nodes * gpus, nodes, gpus, tokens, hidden);
  std::printf("%4s %-20s %-13s %-36s %7s %8s %10s %10s %10s %s\n", "seg", "routing", "algorithm",
              "codecs (disp / comb)", "steps", "wall s", "RSS in MB", "RSS out MB", "peak MB", "verified");
  const Rss start = rss();
  nlohmann::json rows = nlohmann::json::array();
  bool all_ok = true;
  Rss first_end{}, end{};
  long done_steps = 0;
  for (int seg = 0; seg < segments; ++seg) {
    const long n = steps / segments + (seg < steps % segments ? 1 : 0);
    eplab::RunConfig c;
    c.backend = "emu";
    c.nodes = nodes;
    c.gpus_per_node = gpus;
    c.tokens = tokens;
    c.hidden = hidden;
    c.model = "deepseek-v3";
    c.routing = routings[pick(routings.size())];
    c.algorithm = algorithms[pick(algorithms.size())];
    const auto& cp = codecs[pick(codecs.size())];
    c.dispatch_codec = cp.first;
    c.combine_codec = cp.second;
    c.steps = static_cast<int>(n);
    c.seed = rng() % 100000 + 1;
    c.timeout_s = 60;
    Rss in_run{};  // sampled once the run is a tenth through
    const auto t0 = std::chrono::steady_clock::now();
    nlohmann::json r;
    std::string error;
    try {
      r = eplab::run_experiment(c, [&](int d, int total) {
        if (d == std::max(1, total / 10)) in_run = rss();
      });
    } catch (const std::exception& e) {
      error = e.what();
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    end = rss();
    if (seg == 0) first_end = end;
    const bool passed = error.empty() && r["verification"].value("passed", false);
    const std::string verified = !error.empty() ? "ERROR: " + error
                                 : !passed      ? "FAILED"
                                                : (r["verified"].get<bool>() ? "true" : "delivery only");
    all_ok = all_ok && passed;
    done_steps += n;
    const std::string codec_text = c.dispatch_codec + " / " + c.combine_codec;
    std::printf("%4d %-20s %-13s %-36s %7ld %8.2f %10.1f %10.1f %10.1f %s\n", seg, c.routing.c_str(),
                c.algorithm.c_str(), codec_text.c_str(), n, wall, in_run.now_MB, end.now_MB, end.peak_MB,
                verified.c_str());
    std::fflush(stdout);
    rows.push_back({{"segment", seg},
                    {"routing", c.routing},
                    {"algorithm", c.algorithm},
                    {"dispatch_codec", c.dispatch_codec},
                    {"combine_codec", c.combine_codec},
                    {"steps", n},
                    {"wall_s", wall},
                    {"rss_in_run_MB", in_run.now_MB},
                    {"rss_after_MB", end.now_MB},
                    {"peak_rss_MB", end.peak_MB},
                    {"verified", verified}});
  }
  std::printf(
      "resident memory: %.1f MB at the start, %.1f MB after the first segment, %.1f MB after the last "
      "(%+.1f MB over %ld more steps); peak %.1f MB after the first segment, %.1f MB at the end\n",
      start.now_MB, first_end.now_MB, end.now_MB, end.now_MB - first_end.now_MB, done_steps - steps / segments,
      first_end.peak_MB, end.peak_MB);
  std::printf("every segment verified: %s\n", all_ok ? "yes" : "NO");
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << nlohmann::json{{"steps", steps},
                        {"segments", segments},
                        {"ranks", nodes * gpus},
                        {"tokens", tokens},
                        {"hidden", hidden},
                        {"rss_start_MB", start.now_MB},
                        {"rss_after_first_MB", first_end.now_MB},
                        {"rss_end_MB", end.now_MB},
                        {"peak_after_first_MB", first_end.peak_MB},
                        {"peak_end_MB", end.peak_MB},
                        {"all_verified", all_ok},
                        {"rows", rows}}
             .dump(2)
      << "\n";
  }
  return all_ok ? 0 : 1;
}
