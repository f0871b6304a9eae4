// The reduced round matrix (sim/round_matrix.hpp) loads every link exactly as the engine's all-pairs matrix
// does, keeps the same route classes (hence the same latency), and whole simulated runs with it give the same
// report, byte for byte, as runs that hand SimGrid every pair ("ptask-pairs").
#include "sim/round_matrix.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "driver/experiment.hpp"
#include "engine/ep_engine.hpp"
#include "sim/platform.hpp"
#include "traces/generators.hpp"

namespace eplab {
namespace {

Topology topology(int nodes, int gpus, ScaleOutKind scaleout) {
  ClusterSpec s = cluster_preset("h800-cx7");
  s.nodes = nodes;
  s.gpus_per_node = gpus;
  s.scaleout = scaleout;
  return Topology(s);
}

std::vector<double> per_link(const Topology& t, const std::vector<double>& bytes) {
  const int R = t.size();
  std::vector<double> load(4 * static_cast<size_t>(R) + 2 * static_cast<size_t>(std::max(t.nodes(), t.gpus_per_node())),
                           0.0);
  int ids[4];
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < R; ++b) {
      const double x = bytes[static_cast<size_t>(a) * R + b];
      if (x <= 0) continue;
      const int n = sim::route_link_ids(t, a, b, ids);
      for (int i = 0; i < n; ++i) load[ids[i]] += x;
    }
  return load;
}

// Which route lengths (2 links: inside a node or along a rail; 4: across the spine) and classes carry bytes;
// the task's latency is the largest route latency among them.
std::vector<bool> classes(const Topology& t, const std::vector<double>& bytes) {
  const int R = t.size();
  std::vector<bool> seen(3, false);
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < R; ++b) {
      if (a == b || bytes[static_cast<size_t>(a) * R + b] <= 0) continue;
      int ids[4];
      const int n = sim::route_link_ids(t, a, b, ids);
      seen[t.node_of(a) == t.node_of(b) ? 0 : n == 2 ? 1 : 2] = true;
    }
  return seen;
}

// Dense (every pair), sparse (a few pairs), skewed (one hot destination) and one-row matrices of byte counts.
std::vector<double> matrix(const Topology& t, int kind, uint64_t seed) {
  const int R = t.size();
  SplitMix64 rng(seed);
  std::vector<double> m(static_cast<size_t>(R) * R, 0.0);
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < R; ++b) {
      if (a == b) continue;
      double x = 0;
      switch (kind) {
        case 0:
          x = static_cast<double>(1 + rng.below(1 << 20));
          break;
        case 1:
          x = rng.below(10) == 0 ? static_cast<double>(1 + rng.below(5000)) : 0;
          break;
        case 2:
          x = b == 1 ? 1e9 + static_cast<double>(rng.below(1000)) : static_cast<double>(rng.below(100));
          break;
        default:
          x = a == 0 ? static_cast<double>(1 + rng.below(1 << 16)) : 0;
      }
      m[static_cast<size_t>(a) * R + b] = x;
    }
  return m;
}

TEST(RoundMatrix, SameLoadOnEveryLinkAndSameRouteClasses) {
  for (auto scaleout : {ScaleOutKind::kRailOptimized, ScaleOutKind::kFatTree})
    for (auto [nodes, gpus] : {std::pair{1, 8}, std::pair{2, 4}, std::pair{4, 8}, std::pair{8, 2}, std::pair{16, 8}})
      for (int kind = 0; kind < 4; ++kind) {
        const Topology t = topology(nodes, gpus, scaleout);
        const std::vector<double> in = matrix(t, kind, 1000 * nodes + 10 * gpus + kind);
        std::vector<double> out = in;
        sim::RoundMatrixStats st;
        sim::reduce_round_matrix(t, out, &st);
        SCOPED_TRACE(std::to_string(nodes) + "x" + std::to_string(gpus) + " kind " + std::to_string(kind) +
                     (scaleout == ScaleOutKind::kFatTree ? " fat-tree" : " rail"));
        EXPECT_EQ(per_link(t, out), per_link(t, in));  // exact: whole byte counts
        EXPECT_EQ(classes(t, out), classes(t, in));
        for (double x : out) EXPECT_GE(x, 0);
        EXPECT_LE(st.pairs_out, st.pairs_in);
        // The point of it: O(ranks) pairs for an all-pairs round, and no class left as it was.
        if (kind == 0) {
          EXPECT_EQ(st.stuck, 0);
          EXPECT_LE(st.pairs_out, 6L * t.size());
        }
      }
}

TEST(RoundMatrix, FractionalBytesAreLeftAlone) {
  const Topology t = topology(2, 4, ScaleOutKind::kRailOptimized);
  std::vector<double> in = matrix(t, 0, 7);
  in[1] = 0.5;
  std::vector<double> out = in;
  sim::reduce_round_matrix(t, out);
  EXPECT_EQ(out, in);
}

// Each run in its own process, as two invocations of `eplab run` would be (SimGrid's clock is process-wide).
std::string report_in_child(const RunConfig& c) {
  nlohmann::json r = run_experiment_in_child(c);
  r.erase("wall_s");
  return r.dump();
}

class RoundMatrixRuns : public ::testing::TestWithParam<std::string> {};

// Every algorithm, inference and training (pipelined stages, the all-reduce rounds running beside compute),
// rail-optimized and fat-tree: the report (times, bytes, link loads) is the same with either matrix.
TEST_P(RoundMatrixRuns, SameReportAsEveryPair) {
  for (const std::string mode : {"inference", "training"})
    for (const std::string cluster : {"h800-cx7", "a100-roce"}) {
      RunConfig c;
      c.backend = "sim";
      c.cluster = cluster;
      c.nodes = 4;
      c.gpus_per_node = 4;
      c.tokens = 128;
      c.algorithm = GetParam();
      c.routing = "deepep";
      c.layers = 2;
      c.mode = mode;
      c.timeout_s = 30;
      c.sim_model = "ptask";
      const std::string reduced = report_in_child(c);
      c.sim_model = "ptask-pairs";
      const std::string pairs = report_in_child(c);
      SCOPED_TRACE(mode + " on " + cluster);
      ASSERT_GT(reduced.size(), 100u) << reduced;
      EXPECT_EQ(reduced, pairs);
    }
}

INSTANTIATE_TEST_SUITE_P(Every, RoundMatrixRuns, ::testing::ValuesIn(algorithm_names()), [](const auto& info) {
  std::string n = info.param;
  for (char& ch : n)
    if (ch == '-') ch = '_';
  return n;
});

}  // namespace
}  // namespace eplab
