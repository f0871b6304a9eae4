// Training steps, the timeline file, per-link utilization and `eplab timeline plot`: training runs and verifies
// its forward pass on emu, comm_fraction stays in [0, 1], overlapping the all-reduce shortens the step, the
// timeline parses with the expected phases, and the plot command writes a PNG.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <simgrid/s4u/Engine.hpp>

#include "driver/experiment.hpp"
#include "driver/training.hpp"
#include "sim/platform.hpp"
#include "sim/sim_transport.hpp"

namespace eplab {
namespace {

RunConfig small(const std::string& backend, int nodes, int gpus) {
  RunConfig c;
  c.backend = backend;
  c.nodes = nodes;
  c.gpus_per_node = gpus;
  c.model = "qwen-moe";
  c.tokens = 64;
  c.hidden = 256;
  c.routing = "uniform";
  c.timeout_s = 60;
  c.layers = 2;
  c.mode = "training";
  return c;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("eplab_tl_" + std::to_string(getpid()) + "_" + name)).string();
}

TEST(SimLinks, RouteIdsNameTheLinksThePlatformRoutesThrough) {
  for (bool rail : {true, false}) {
    ClusterSpec s = cluster_preset("h800-cx7");
    s.nodes = 3;
    s.gpus_per_node = 4;
    if (!rail) s.scaleout = ScaleOutKind::kFatTree;
    const Topology topo(s);
    int argc = 1;
    char name[] = "t";
    char* argv[] = {name, nullptr};
    simgrid::s4u::Engine e(&argc, argv);
    sim::configure_simgrid_once();
    const sim::Platform p = sim::build_platform(topo);
    const auto links = sim::platform_links(topo);
    for (int a = 0; a < topo.size(); ++a)
      for (int b = 0; b < topo.size(); ++b) {
        int ids[4];
        const int n = sim::route_link_ids(topo, a, b, ids);
        std::vector<std::string> got;
        for (int i = 0; i < n; ++i) got.push_back(links.at(ids[i]).name);
        EXPECT_EQ(got, sim::route_link_names(p, a, b)) << a << " -> " << b << (rail ? " rail" : " fat-tree");
      }
  }
}

TEST(Training, AllreduceRingsAreCyclesOverEveryRankOnRails) {
  for (auto [nodes, gpus] : {std::pair{1, 8}, std::pair{2, 8}, std::pair{3, 4}, std::pair{5, 1}, std::pair{4, 8}}) {
    ClusterSpec s = cluster_preset("h800-cx7");
    s.nodes = nodes;
    s.gpus_per_node = gpus;
    const Topology topo(s);
    const int n = topo.size();
    std::vector<std::vector<std::pair<int, int>>> nb(n);
    for (int r = 0; r < n; ++r) nb[r] = StepDriver::ring_neighbours(topo, r);
    const size_t channels = nb[0].size();
    EXPECT_EQ(channels, static_cast<size_t>(nodes > 1 ? gpus : 1));
    for (size_t c = 0; c < channels; ++c) {
      int r = 0, len = 0, off_rail = 0;
      do {
        const int next = nb[r][c].first;
        EXPECT_EQ(nb[next][c].second, r) << nodes << "x" << gpus << " ring " << c;
        if (topo.node_of(next) != topo.node_of(r) && topo.local_of(next) != topo.local_of(r)) ++off_rail;
        r = next;
        ++len;
      } while (r != 0 && len <= n);
      EXPECT_EQ(len, n) << nodes << "x" << gpus << " ring " << c << " is not one cycle over every rank";
      EXPECT_LE(off_rail, 1) << "only the hop that closes the ring may change rails";
    }
  }
}

TEST(Training, RunsOnEmuAndTheForwardPassStillVerifies) {
  RunConfig c = small("emu", 2, 2);
  c.dispatch_codec = "fp32";
  c.combine_codec = "fp32";
  c.steps = 2;
  const auto r = run_experiment(c);
  EXPECT_TRUE(r["verified"].get<bool>()) << r["verification"].dump();
  EXPECT_EQ(r["mode"], "training");
  EXPECT_GT(r["step_time_s"].get<double>(), 0);
  EXPECT_GE(r["comm_fraction"].get<double>(), 0);
  EXPECT_LE(r["comm_fraction"].get<double>(), 1);
  EXPECT_GT(r["tokens_per_s"].get<double>(), 0);
}

TEST(Training, CommFractionInRangeAndOverlapShortensTheStep) {
  RunConfig c = small("sim", 2, 8);
  c.model = "deepseek-v3";
  c.hidden = 0;
  c.tokens = 512;
  c.layers = 3;
  c.overlap_allreduce = false;
  const auto serial = run_experiment(c);
  c.overlap_allreduce = true;
  const auto overlap = run_experiment(c);
  for (const auto* r : {&serial, &overlap}) {
    const double f = (*r)["comm_fraction"].get<double>();
    EXPECT_GT(f, 0);
    EXPECT_LT(f, 1);
    EXPECT_GT((*r)["compute_s"].get<double>(), 0);
    EXPECT_NEAR((*r)["tokens_per_s"].get<double>() * (*r)["step_time_s"].get<double>(), 512.0 * 16, 1e-6 * 512 * 16);
  }
  EXPECT_LT(overlap["step_time_s"].get<double>(), serial["step_time_s"].get<double>());
  EXPECT_LT(overlap["training"]["allreduce_exposed_s"].get<double>(),
            serial["training"]["allreduce_exposed_s"].get<double>());
  // Inference on the same cluster has no backward pass: a shorter step.
  c.mode = "inference";
  EXPECT_LT(run_experiment(c)["step_time_s"].get<double>(), overlap["step_time_s"].get<double>());
}

TEST(Links, UtilizationPerPhaseAndClass) {
  RunConfig c = small("sim", 2, 8);
  c.mode = "inference";
  c.hidden = 0;
  c.tokens = 512;
  c.layers = 1;
  const auto r = run_experiment(c);
  ASSERT_TRUE(r.contains("links")) << r.dump();
  for (const char* phase : {"dispatch", "combine"}) {
    ASSERT_TRUE(r["links"].contains(phase)) << r["links"].dump();
    for (const char* cls : {"nvlink", "nic", "spine"}) {
      const auto& l = r["links"][phase][cls];
      EXPECT_GE(l["mean_utilization"].get<double>(), 0);
      EXPECT_LE(l["mean_utilization"].get<double>(), l["max_utilization"].get<double>());
      // A link cannot carry more than its capacity for the phase's time (small slack for latency rounding).
      EXPECT_LE(l["max_utilization"].get<double>(), 1.0 + 1e-6) << phase << " " << cls;
    }
    EXPECT_GT(r["links"][phase]["nic"]["max_utilization"].get<double>(), 0.05) << phase;
    EXPECT_GT(r["links"][phase]["nvlink"]["bytes"].get<double>(), 0) << phase;
  }
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

TEST(Timeline, ParsesWithTheExpectedPhasesAndLinkCounters) {
  RunConfig c = small("sim", 2, 4);
  c.hidden = 0;
  c.timeline = temp_path("train.json");
  run_experiment(c);
  const auto doc = read_json(c.timeline);
  std::set<std::string> spans;
  int counters = 0;
  for (const auto& e : doc["traceEvents"]) {
    if (e["ph"] == "X") {
      spans.insert(e["name"].get<std::string>());
      EXPECT_GE(e["dur"].get<double>(), 0);
    }
    if (e["ph"] == "C") {
      ++counters;
      EXPECT_GE(e["args"]["GBps"].get<double>(), 0);
    }
  }
  for (const char* p : {"notify", "dispatch", "expert", "combine", "dense", "bwd-dispatch", "bwd-expert", "bwd-combine",
                        "bwd-dense", "allreduce"})
    EXPECT_TRUE(spans.count(p)) << p;
  EXPECT_GT(counters, 0);
  EXPECT_EQ(doc["otherData"]["ranks"], 8);
  EXPECT_EQ(doc["otherData"]["link_tracks"], "per link");
  std::remove(c.timeline.c_str());
}

TEST(Timeline, LargeRunsSampleRanksAndAggregateLinks) {
  RunConfig c = small("sim", 16, 8);
  c.mode = "inference";
  c.layers = 1;
  c.timeline = temp_path("big.json");
  run_experiment(c);
  const auto doc = read_json(c.timeline);
  std::set<int> ranks;
  for (const auto& e : doc["traceEvents"])
    if (e["ph"] == "X") ranks.insert(e["args"]["rank"].get<int>());
  EXPECT_LE(ranks.size(), 64u);
  EXPECT_GT(ranks.size(), 1u);
  EXPECT_NE(doc["otherData"]["ranks_recorded"], "all");
  EXPECT_EQ(doc["otherData"]["link_capacity"].size(), 6u);  // mean and max of nvlink, nic, spine
  std::remove(c.timeline.c_str());
}

TEST(Timeline, PlotCommandWritesAPng) {
  if (std::system("/usr/bin/python3 -c 'import matplotlib, numpy' 2>/dev/null") != 0) {
    std::printf("skipped: /usr/bin/python3 has no matplotlib/numpy\n");
    GTEST_SKIP() << "/usr/bin/python3 has no matplotlib/numpy";
  }
  RunConfig c = small("sim", 2, 4);
  c.hidden = 0;
  c.timeline = temp_path("plot.json");
  run_experiment(c);
  const std::string png = temp_path("plot.png");
  const std::string cmd = std::string(EPLAB_CLI) + " timeline plot " + c.timeline + " -o " + png;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(png, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  EXPECT_GT(std::filesystem::file_size(png), 10000u);
  std::remove(c.timeline.c_str());
  std::remove(png.c_str());
}

}  // namespace
}  // namespace eplab
