// Policies inside `eplab run`: balancers and mid-run rebalancing keep emulated runs bit-exact, migration shows
// up exactly when slots move, and `eplab probe` writes a matrix the topology-aware selector can read.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "driver/experiment.hpp"
#include "driver/plan.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"

namespace eplab {
namespace {

// qwen-moe (128 experts, top-8) at hidden 256, 48 tokens per rank on 2 x 2 ranks, skewed routing, fp32 wire.
RunConfig small_skewed(const std::string& algorithm) {
  RunConfig c;
  c.backend = "emu";
  c.nodes = 2;
  c.gpus_per_node = 2;
  c.model = "qwen-moe";
  c.hidden = 256;
  c.tokens = 48;
  c.routing = "hotset:k=8,frac=0.6,every=2";
  c.algorithm = algorithm;
  c.dispatch_codec = "fp32";
  c.combine_codec = "fp32";
  c.redundant_experts = 4;
  c.steps = 5;
  c.layers = 2;
  c.timeout_s = 30;
  return c;
}

bool have_sim() {
  for (auto& n : backend_names())
    if (n == "sim") return true;
  return false;
}

class PolicyRun : public ::testing::TestWithParam<std::string> {};

TEST_P(PolicyRun, EplbRebalancingEveryStepStaysBitExact) {
  RunConfig c = small_skewed(GetParam());
  c.balancer = "eplb";
  c.heat = "last";
  c.rebalance_every = 1;
  const auto r = run_experiment(c);
  EXPECT_TRUE(r["verified"].get<bool>()) << r["verification"].dump();
  EXPECT_EQ(r["verification"]["tolerance"].get<double>(), 0.0);  // fp32 both ways: bit for bit
  EXPECT_GT(r["migration"]["rebalances"].get<int>(), 0);
  EXPECT_GT(r["migration"]["slots_moved"].get<long>(), 0);
  EXPECT_GT(r["migration"]["bytes"].get<double>(), 0.0);
  EXPECT_FALSE(r["migration"]["timed"].get<bool>());  // emu moves a placeholder, charges no time
  ASSERT_EQ(r["per_step"].size(), 5u);
  EXPECT_TRUE(r["per_step"][0]["forecast_mape_pct"].is_null());  // no history before step 0
  EXPECT_FALSE(r["per_step"][1]["forecast_mape_pct"].is_null());
  EXPECT_GE(r["per_step"][1]["rank_max_over_mean"].get<double>(), 1.0);
}

TEST_P(PolicyRun, StaticEplbPlacementAndLeastLoadedStayBitExact) {
  RunConfig c = small_skewed(GetParam());
  c.balancer = "eplb";
  c.replica_selection = "least-loaded";
  const auto r = run_experiment(c);
  EXPECT_TRUE(r["verified"].get<bool>()) << r["verification"].dump();
  EXPECT_EQ(r["migration"]["bytes"].get<double>(), 0.0);
  EXPECT_EQ(r["migration"]["rebalances"].get<int>(), 0);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, PolicyRun, ::testing::Values("flat", "hierarchical", "low-latency"));

TEST(PolicyRunMigration, NoMigrationWithoutRebalancing) {
  RunConfig c = small_skewed("flat");
  c.balancer = "migration-aware";
  c.rebalance_every = 0;
  const auto r = run_experiment(c);
  EXPECT_TRUE(r["verified"].get<bool>());
  EXPECT_EQ(r["migration"]["bytes"].get<double>(), 0.0);
  EXPECT_EQ(r["migration"]["slots_moved"].get<long>(), 0);
  for (const auto& row : r["per_step"]) EXPECT_EQ(row["migration_bytes"].get<double>(), 0.0);
}

TEST(PolicyRunMigration, SimulatedMigrationTakesTimeAndMatchesSlots) {
  if (!have_sim()) GTEST_SKIP() << "built without the sim backend";
  RunConfig c = small_skewed("hierarchical");
  c.backend = "sim";
  c.cluster = "h800-cx7";
  c.balancer = "eplb";
  c.heat = "oracle";
  c.rebalance_every = 2;
  const auto r = run_experiment(c);
  const auto& m = r["migration"];
  ASSERT_GT(m["bytes"].get<double>(), 0.0);
  EXPECT_TRUE(m["timed"].get<bool>());
  EXPECT_GT(m["time_s"].get<double>(), 0.0);
  // Bytes are whole experts; a slot refilled from its own rank's old replica moves nothing.
  const double per_expert = m["expert_weight_bytes"].get<double>();
  EXPECT_LE(m["bytes"].get<double>(), per_expert * m["slots_moved"].get<double>());
  for (const auto& row : r["per_step"]) {
    if (row["step"].get<int>() % 2 == 1) {
      EXPECT_EQ(row["migration_bytes"].get<double>(), 0.0);
    }
  }
  EXPECT_NEAR(r["step_time"]["total_s"].get<double>(),
              r["step_time"]["layers_s"].get<double>() + m["time_s"].get<double>(), 1e-12);
}

TEST(PolicyRunErrors, BadPolicyNamesFailEarly) {
  RunConfig c = small_skewed("flat");
  c.heat = "nope";
  EXPECT_THROW(run_experiment(c), std::exception);
  c = small_skewed("flat");
  c.replica_selection = "topology-aware:costs=/nonexistent.json";
  EXPECT_THROW(run_experiment(c), std::exception);
  c = small_skewed("flat");
  c.rebalance_every = -1;
  EXPECT_THROW(run_experiment(c), std::exception);
}

// A cost matrix of the wrong JSON types threw nlohmann's type_error, which names neither the file nor the field.
TEST(PolicyRunErrors, CostMatrixOfWrongTypesIsRefusedNamingTheFile) {
  const std::string path = ::testing::TempDir() + "bad_costs.json";
  for (const char* text : {R"({"ranks": "four", "latency_s": []})", R"({"ranks": 4, "latency_s": {"a": 1}})",
                           R"({"ranks": 4, "latency_s": [1, 2, 3, 4]})", R"({"ranks": 4, "latency_s": [[0,1,1,1],
                           [1,0,1,1], [1,1,0,"x"], [1,1,1,0]]})", "[4]"}) {
    std::ofstream(path) << text;
    RunConfig c = small_skewed("flat");
    c.replica_selection = "topology-aware:costs=" + path;
    try {
      run_experiment(c);
      ADD_FAILURE() << "accepted " << text;
    } catch (const EplabError& e) {
      EXPECT_NE(std::string(e.what()).find("cost matrix '" + path + "'"), std::string::npos) << e.what();
    }
  }
}

// Zipf(1.2) routing on a simulated cluster (DeepSeek-V3 unless the caller changes it), one layer.
RunConfig sim_zipf(int nodes, int gpus) {
  RunConfig c;
  c.backend = "sim";
  c.nodes = nodes;
  c.gpus_per_node = gpus;
  c.tokens = 256;
  c.routing = "zipf:1.2";
  c.timeout_s = 60;
  return c;
}

// A named balancer places the first step: under the oracle, from that step's own load, at startup.
TEST(PolicyRunFirstStep, OracleEplbPlacesTheFirstStepWithoutRebalancing) {
  if (!have_sim()) GTEST_SKIP() << "built without the sim backend";
  RunConfig c = sim_zipf(8, 8);  // EP64
  c.redundant_experts = 64;
  c.heat = "oracle";
  const auto none = run_experiment(c);
  const double imb_none = none["per_step"][0]["rank_max_over_mean"].get<double>();
  // Auto is hierarchical here (8 groups on 8 nodes: one per node, the hot group's node carries more).
  for (const std::string b : {"eplb", "eplb:mode=global"}) {
    c.balancer = b;
    const auto eplb = run_experiment(c);
    const double imb = eplb["per_step"][0]["rank_max_over_mean"].get<double>();
    EXPECT_LT(imb, 0.5 * imb_none) << b;
    if (b == "eplb:mode=global") {
      EXPECT_LT(imb, 1.2) << "none: " << imb_none;
    }
    EXPECT_EQ(eplb["migration"]["bytes"].get<double>(), 0.0) << b;  // loaded at startup, nothing migrates
  }
}

TEST(PolicyRunRanks, MoreRanksThanExpertsWithEnoughRedundantSlots) {
  if (!have_sim()) GTEST_SKIP() << "built without the sim backend";
  RunConfig c = sim_zipf(128, 8);  // 1024 ranks, DeepSeek-V3's 256 experts
  c.redundant_experts = 768;
  c.balancer = "eplb";
  const auto backend = create_backend("sim");
  const RunSetup run = resolve_run(c, *backend);
  EXPECT_EQ(run.topo.size(), 1024);
  c.redundant_experts = 700;  // 956 slots do not divide over 1024 ranks
  try {
    resolve_run(c, *backend);
    FAIL() << "expected an error";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("--redundant-experts"), std::string::npos) << e.what();
  }
}

// Warm-up steps: the run's first step is the routing's step W, and the rebalancing they drive is not reported.
TEST(PolicyRunWarmup, WarmupShiftsTheRoutingAndHidesItsMigration) {
  if (!have_sim()) GTEST_SKIP() << "built without the sim backend";
  RunConfig c = sim_zipf(2, 4);
  c.model = "qwen-moe";
  c.steps = 3;
  const auto plain = run_experiment(c);
  c.steps = 1;
  c.warmup_steps = 2;
  const auto warm = run_experiment(c);
  ASSERT_EQ(warm["per_step"].size(), 1u);
  EXPECT_DOUBLE_EQ(warm["per_step"][0]["rank_max_over_mean"].get<double>(),
                   plain["per_step"][2]["rank_max_over_mean"].get<double>());

  c.balancer = "migration-aware";
  c.heat = "last";
  c.rebalance_every = 1;
  c.redundant_experts = 8;
  c.steps = 3;
  c.warmup_steps = 0;
  const auto cold = run_experiment(c);
  c.warmup_steps = 2;
  const auto warmed = run_experiment(c);
  ASSERT_EQ(warmed["per_step"].size(), 3u);
  // Cold, the first step runs on the even startup placement and the next moves most slots away from it; warmed
  // up, that happened before the first measured step.
  EXPECT_GT(cold["migration"]["slots_moved"].get<long>(), 0);
  EXPECT_LT(warmed["migration"]["slots_moved"].get<long>(), cold["migration"]["slots_moved"].get<long>() / 2);
  EXPECT_LT(warmed["per_step"][0]["rank_max_over_mean"].get<double>(),
            cold["per_step"][0]["rank_max_over_mean"].get<double>());
  c.warmup_steps = -1;
  EXPECT_THROW(run_experiment(c), std::exception);
}

nlohmann::json run_probe(const std::string& backend, const std::string& extra) {
  const std::string out = ::testing::TempDir() + "probe_" + backend + ".json";
  const std::string cmd =
      std::string(EPLAB_BIN) + " probe --backend " + backend + " " + extra + " -o " + out + " > /dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(out);
  return nlohmann::json::parse(in);
}

TEST(Probe, SimScaleOutSlowerThanScaleUpAndSelectorReadsIt) {
  if (!have_sim()) GTEST_SKIP() << "built without the sim backend";
  const auto j = run_probe("sim", "--cluster h800-cx7 --nodes 2 --gpus-per-node 4");
  ASSERT_EQ(j["ranks"].get<int>(), 8);
  const auto& L = j["latency_s"];
  const auto& B = j["bandwidth_GBps"];
  EXPECT_EQ(L[0][0].get<double>(), 0.0);
  EXPECT_GT(L[0][1].get<double>(), 0.0);
  EXPECT_GT(L[0][4].get<double>(), L[0][1].get<double>());  // other node vs same node
  EXPECT_GT(B[0][1].get<double>(), B[0][4].get<double>());
  EXPECT_DOUBLE_EQ(L[1][5].get<double>(), L[5][1].get<double>());

  // The matrix drives topology-aware selection in a run.
  RunConfig c = small_skewed("flat");
  c.nodes = 2;
  c.gpus_per_node = 4;
  c.balancer = "eplb";
  c.redundant_experts = 8;
  c.replica_selection = "topology-aware:costs=" + ::testing::TempDir() + "probe_sim.json";
  const auto r = run_experiment(c);
  EXPECT_TRUE(r["verified"].get<bool>());
}

TEST(Probe, EmuWritesASaneMatrix) {
  const auto j = run_probe("emu", "--iters 2 --large 65536");
  const int R = j["ranks"].get<int>();
  ASSERT_EQ(R, 8);
  for (int a = 0; a < R; ++a)
    for (int b = 0; b < R; ++b) {
      if (a == b) continue;
      EXPECT_GT(j["latency_s"][a][b].get<double>(), 0.0) << a << " -> " << b;
      EXPECT_GT(j["bandwidth_GBps"][a][b].get<double>(), 0.0) << a << " -> " << b;
    }
}

}  // namespace
}  // namespace eplab
