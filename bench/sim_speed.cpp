// Simulator speed and memory: one layer of dispatch + combine (phantom payload, deepseek-v3, 4096 tokens per
// rank, h800-cx7) for 64 to 2048 GPUs per algorithm. Each run is a child process, so its peak resident memory
// (getrusage ru_maxrss) is its own. Prints a table; writes JSON with --json FILE.
// Past 256 GPUs every GPU holds one expert (DeepSeek-V3 has 256).
//   bench_sim_speed [--min-ranks N] [--max-ranks N] [--algorithm NAME ...] [--json FILE]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/ep_engine.hpp"
#include "driver/experiment.hpp"
#include "engine/moe_shape.hpp"
#include "traces/routing_source.hpp"

namespace {

// Times the routing generator inside a run, so the table can show the simulation's own wall time apart from
// the cost of producing DeepEP-style routing (a traces/ generator, not the simulator). The run may call it from
// several threads at once; the time counted is wall time during which at least one call is in progress.
class TimedSource : public eplab::RoutingSource {
 public:
  explicit TimedSource(std::unique_ptr<eplab::RoutingSource> in) : in_(std::move(in)) {}
  std::string name() const override { return in_->name(); }
  eplab::RoutingBatch batch(int step, int layer, int rank) override {
    enter();
    try {
      auto b = in_->batch(step, layer, rank);
      leave();
      return b;
    } catch (...) {
      leave();
      throw;
    }
  }
  bool concurrent() const override { return in_->concurrent(); }
  int num_steps() const override { return in_->num_steps(); }
  int num_layers() const override { return in_->num_layers(); }
  double seconds = 0;

 private:
  void enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (busy_++ == 0) t0_ = std::chrono::steady_clock::now();
  }
  void leave() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--busy_ == 0) seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  std::unique_ptr<eplab::RoutingSource> in_;
  std::mutex mu_;
  int busy_ = 0;
  std::chrono::steady_clock::time_point t0_;
};

struct Result {
  double wall_s = -1, routing_s = -1, sim_dispatch_s = -1, sim_combine_s = -1;
  long maxrss_kb = -1;
  bool ok = false;
};

Result run_child(int ranks, const std::string& algorithm) {
  int fd[2];
  if (pipe(fd) != 0) return {};
  std::fflush(stdout);  // the child must not inherit (and later print) the parent's buffered lines
  const pid_t pid = fork();
  if (pid == 0) {
    close(fd[0]);
    Result res;
    try {
      eplab::RunConfig c;
      c.backend = "sim";
      c.cluster = "h800-cx7";
      c.nodes = ranks / 8;
      c.gpus_per_node = 8;
      c.tokens = 4096;
      c.routing = "deepep";
      c.algorithm = algorithm;
      c.payload = "phantom";
      c.timeout_s = 600;
      // DeepSeek-V3 has 256 experts; past 256 GPUs every GPU keeps one expert (the shape is otherwise the same).
      if (ranks > 256) c.experts = ranks;
      eplab::ClusterSpec spec = eplab::cluster_preset(c.cluster);
      spec.nodes = c.nodes;
      spec.gpus_per_node = c.gpus_per_node;
      eplab::MoeShape shape = eplab::model_preset(c.model);
      if (c.experts > 0) shape.num_experts = c.experts;
      auto timed = std::make_shared<TimedSource>(
          eplab::make_routing(c.routing, eplab::RoutingParams{shape, eplab::Topology(spec), c.tokens, c.seed}));
      c.routing_source = timed;
      const auto t0 = std::chrono::steady_clock::now();
      const auto r = eplab::run_experiment(c);
      res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      res.routing_s = timed->seconds;
      res.sim_dispatch_s = r["phases"]["dispatch"]["time_s"].get<double>();
      res.sim_combine_s = r["phases"]["combine"]["time_s"].get<double>();
      res.ok = true;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%d ranks, %s: %s\n", ranks, algorithm.c_str(), e.what());
    }
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    res.maxrss_kb = ru.ru_maxrss;
    if (write(fd[1], &res, sizeof res) != static_cast<ssize_t>(sizeof res)) _exit(1);
    _exit(0);
  }
  close(fd[1]);
  Result res;
  if (read(fd[0], &res, sizeof res) != static_cast<ssize_t>(sizeof res)) res = {};
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  int min_ranks = 64, max_ranks = 2048;
  std::vector<std::string> algorithms;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--max-ranks") && i + 1 < argc)
      max_ranks = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--min-ranks") && i + 1 < argc)
      min_ranks = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--algorithm") && i + 1 < argc)
      algorithms.push_back(argv[++i]);
    else if (!std::strcmp(argv[i], "--json") && i + 1 < argc)
      json_path = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--min-ranks N] [--max-ranks N] [--algorithm NAME ...] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  if (algorithms.empty()) algorithms = eplab::algorithm_names();
  nlohmann::json out = nlohmann::json::array();
  std::printf("eplab sim speed: one layer dispatch + combine, h800-cx7, deepseek-v3, 4096 tokens/rank, deepep\n");
  std::printf(
      "wall = whole run_experiment; routing = time inside the deepep routing generator; sim = wall - routing\n");
  std::printf("%6s %-14s %10s %11s %10s %12s %14s %14s\n", "GPUs", "algorithm", "wall (s)", "routing (s)", "sim (s)",
              "peak RSS MB", "sim disp (us)", "sim comb (us)");
  for (int ranks = min_ranks; ranks <= max_ranks; ranks *= 2)
    for (const auto& a : algorithms) {
      const Result r = run_child(ranks, a);
      std::printf("%6d %-14s %10.2f %11.2f %10.2f %12.0f %14.1f %14.1f%s\n", ranks, a.c_str(), r.wall_s, r.routing_s,
                  r.wall_s - r.routing_s, r.maxrss_kb / 1024.0, r.sim_dispatch_s * 1e6, r.sim_combine_s * 1e6,
                  r.ok ? "" : "  FAILED");
      std::fflush(stdout);
      out.push_back({{"gpus", ranks},
                     {"algorithm", a},
                     {"ok", r.ok},
                     {"wall_s", r.wall_s},
                     {"routing_s", r.routing_s},
                     {"sim_wall_s", r.wall_s - r.routing_s},
                     {"peak_rss_MB", r.maxrss_kb / 1024.0},
                     {"sim_dispatch_s", r.sim_dispatch_s},
                     {"sim_combine_s", r.sim_combine_s}});
    }
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << nlohmann::json{{"rows", out}}.dump(2) << "\n";
  }
  return 0;
}
