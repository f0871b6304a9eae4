// Two-batch overlap (`--overlap tbo`) through whole simulated runs: exposed + hidden == total communication,
// near-zero compute hides nothing, long compute hides all but the last combine, the overlapped step is shorter
// than the serial one, training composes too, real payloads still verify with micro-batches, the report is the
// same run after run, the timeline shows both micro-batches, and backends or options it cannot serve are refused.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "driver/experiment.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"

namespace eplab {
namespace {

bool have_sim() { return backend_registry().find("sim") != nullptr; }

RunConfig tbo(int nodes, int gpus, int layers) {
  RunConfig c;
  c.backend = "sim";
  c.nodes = nodes;
  c.gpus_per_node = gpus;
  c.model = "deepseek-v3";
  c.tokens = 512;
  c.routing = "uniform";
  c.layers = layers;
  c.overlap = "tbo";
  return c;
}

// A cluster whose GPUs compute `factor` times as fast as the preset's.
std::string gpus_faster_by(double factor) {
  return "{\"base\": \"h800-cx7\", \"gpu_bf16_tflops\": " + std::to_string(989 * factor) +
         ", \"gpu_fp8_tflops\": " + std::to_string(1979 * factor) +
         ", \"gpu_hbm_GBps\": " + std::to_string(3350 * factor) + "}";
}

void expect_sums(const nlohmann::json& r) {
  const auto& o = r["overlap"];
  const double comm = o["comm_s"].get<double>();
  EXPECT_GT(comm, 0);
  EXPECT_NEAR(o["exposed_comm_s"].get<double>() + o["hidden_comm_s"].get<double>(), comm, 1e-12 * comm);
  double by_phase = 0;
  for (const auto& [k, v] : o["exposed_by_phase"].items()) by_phase += v.get<double>();
  EXPECT_NEAR(by_phase, o["exposed_comm_s"].get<double>(), 1e-9 * comm);
  EXPECT_NEAR(r["comm_fraction"].get<double>(), o["exposed_comm_s"].get<double>() / r["step_time_s"].get<double>(),
              1e-12);
  EXPECT_LE(r["step_time_s"].get<double>(), o["serial_step_time_s"].get<double>() * (1 + 1e-12));
}

TEST(TwoBatchRun, OverlapShortensTheStepAndHidesCommunication) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  const auto r = run_experiment(tbo(2, 8, 3));
  ASSERT_TRUE(r.contains("overlap")) << r.dump();
  expect_sums(r);
  const auto& o = r["overlap"];
  EXPECT_GT(o["hidden_comm_s"].get<double>(), 0);
  EXPECT_LT(r["step_time_s"].get<double>(), o["serial_step_time_s"].get<double>());
  EXPECT_LT(r["comm_fraction"].get<double>(), o["serial_comm_fraction"].get<double>());
  EXPECT_EQ(o["per_step"].size(), 1u);
  EXPECT_EQ(r["mode"], "inference");
}

TEST(TwoBatchRun, NearZeroComputeHidesNothing) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  RunConfig c = tbo(2, 8, 2);
  c.cluster = gpus_faster_by(1e9);
  const auto r = run_experiment(c);
  expect_sums(r);
  const auto& o = r["overlap"];
  // Only what compute there is can hide anything: picoseconds against hundreds of microseconds.
  EXPECT_LE(o["hidden_comm_s"].get<double>(), r["compute_s"].get<double>() + 1e-15);
  EXPECT_LT(o["hidden_comm_s"].get<double>(), 1e-6 * o["comm_s"].get<double>());
  EXPECT_NEAR(o["speedup"].get<double>(), 1.0, 1e-6);
}

TEST(TwoBatchRun, LongComputeHidesAllButTheLastCombine) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  RunConfig c = tbo(2, 8, 3);
  c.cluster = gpus_faster_by(1e-3);
  const auto r = run_experiment(c);
  expect_sums(r);
  const auto& o = r["overlap"];
  const auto& by_phase = o["exposed_by_phase"];
  EXPECT_NEAR(by_phase["dispatch"].get<double>(), 0.0, 1e-12 * o["comm_s"].get<double>()) << by_phase.dump();
  EXPECT_GT(by_phase["combine"].get<double>(), 0.0);
  // The exposure is one micro-batch's combine of one layer: less than the mean call's two combines.
  EXPECT_LT(o["exposed_comm_s"].get<double>(), r["phases"]["combine"]["time_s"].get<double>());
  EXPECT_GT(o["hidden_comm_s"].get<double>(), 10 * o["exposed_comm_s"].get<double>());
}

TEST(TwoBatchRun, TrainingComposesTheBackwardAndTheAllreduce) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  RunConfig c = tbo(2, 8, 3);
  c.mode = "training";
  const auto r = run_experiment(c);
  expect_sums(r);
  const auto& by_phase = r["overlap"]["exposed_by_phase"];
  for (const char* p : {"dispatch", "combine", "bwd-dispatch", "bwd-combine", "allreduce"})
    EXPECT_TRUE(by_phase.contains(p)) << p << " " << by_phase.dump();
  EXPECT_EQ(r["training"]["allreduce_exposed_s"].get<double>(), by_phase["allreduce"].get<double>());
  EXPECT_LT(r["step_time_s"].get<double>(), r["overlap"]["serial_step_time_s"].get<double>());
  c.overlap_allreduce = false;
  const auto serial_ar = run_experiment(c);
  expect_sums(serial_ar);
  EXPECT_GT(serial_ar["training"]["allreduce_exposed_s"].get<double>(),
            r["training"]["allreduce_exposed_s"].get<double>());
}

TEST(TwoBatchRun, RealPayloadsStillVerifyWithMicroBatches) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  for (const char* mode : {"inference", "training"})
    for (int tokens : {33, 64}) {
      RunConfig c = tbo(2, 2, 2);
      c.model = "qwen-moe";
      c.hidden = 256;
      c.tokens = tokens;  // odd: micro-batch 0 holds one token more
      c.payload = "real";
      c.dispatch_codec = "fp32";
      c.combine_codec = "fp32";
      c.mode = mode;
      c.steps = 2;
      const auto r = run_experiment(c);
      EXPECT_TRUE(r["verified"].get<bool>()) << mode << " " << tokens << " " << r["verification"].dump();
      expect_sums(r);
    }
}

TEST(TwoBatchRun, SameRunSameReport) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  RunConfig c = tbo(2, 4, 2);
  c.steps = 2;
  c.routing = "deepep";
  auto a = run_experiment(c), b = run_experiment(c);
  a.erase("wall_s");
  b.erase("wall_s");
  EXPECT_EQ(a.dump(), b.dump());
  EXPECT_EQ(a["overlap"]["per_step"].size(), 2u);
}

TEST(TwoBatchRun, TimelineShowsBothMicroBatchesOverlapping) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  RunConfig c = tbo(2, 4, 2);
  c.timeline = (std::filesystem::temp_directory_path() / ("eplab_tbo_" + std::to_string(getpid()) + ".json")).string();
  const auto r = run_experiment(c);
  std::ifstream in(c.timeline);
  const auto doc = nlohmann::json::parse(in);
  std::remove(c.timeline.c_str());
  // Rank 0's spans per lane; its micro-batch 1 exchanges overlap its micro-batch 0 compute somewhere.
  std::map<int, std::vector<nlohmann::json>> lanes;
  double last_end = 0, first = 1e300;
  for (const auto& e : doc["traceEvents"])
    if (e["ph"] == "X") {
      first = std::min(first, e["ts"].get<double>());
      last_end = std::max(last_end, e["ts"].get<double>() + e["dur"].get<double>());
      if (e["args"]["rank"] == 0) lanes[e["args"]["lane"].get<int>()].push_back(e);
    }
  ASSERT_EQ(lanes.size(), 2u);
  EXPECT_EQ(lanes[0].size(), 8u);  // dense, dispatch, expert, combine per layer
  EXPECT_EQ(lanes[1].size(), 8u);
  bool overlapped = false;
  for (const auto& a : lanes[1])
    for (const auto& b : lanes[0]) {
      const std::string an = a["name"], bn = b["name"];
      if ((an == "dispatch" || an == "combine") && (bn == "expert" || bn == "dense") &&
          a["ts"].get<double>() < b["ts"].get<double>() + b["dur"].get<double>() &&
          b["ts"].get<double>() < a["ts"].get<double>() + a["dur"].get<double>())
        overlapped = true;
    }
  EXPECT_TRUE(overlapped);
  // The spans cover the composed step, not the longer serial one.
  EXPECT_NEAR((last_end - first) * 1e-6, r["step_time_s"].get<double>(), 1e-9);
  // Link counters were moved into the composed step too.
  for (const auto& e : doc["traceEvents"]) {
    if (e["ph"] == "C") {
      EXPECT_LE(e["ts"].get<double>(), last_end + 1e-3);
    }
  }
}

TEST(TwoBatchRun, PlotDrawsTheMicroBatchRows) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  if (std::system("/usr/bin/python3 -c 'import matplotlib, numpy' 2>/dev/null") != 0)
    GTEST_SKIP() << "/usr/bin/python3 has no matplotlib/numpy";
  RunConfig c = tbo(1, 4, 2);
  c.mode = "training";
  const std::string base =
      (std::filesystem::temp_directory_path() / ("eplab_tbo_plot_" + std::to_string(getpid()))).string();
  c.timeline = base + ".json";
  run_experiment(c);
  const std::string png = base + ".png";
  const std::string cmd = "/usr/bin/python3 " + std::string(EPLAB_SOURCE_DIR) + "/python/eplab/timeline_plot.py " +
                          c.timeline + " -o " + png;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(png, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  std::remove(c.timeline.c_str());
  std::remove(png.c_str());
}

TEST(TwoBatchRun, RefusesWhatItCannotCompose) {
  if (!have_sim()) GTEST_SKIP() << "this build has no sim backend";
  RunConfig c = tbo(2, 2, 1);
  c.layout_cache = 4;
  EXPECT_THROW(run_experiment(c), EplabError);
  RunConfig e = tbo(2, 2, 1);
  e.backend = "emu";
  e.tokens = 16;
  e.model = "qwen-moe";
  e.hidden = 64;
  try {
    run_experiment(e);
    FAIL() << "emu accepted --overlap tbo";
  } catch (const EplabError& err) {
    EXPECT_NE(std::string(err.what()).find("modeled time"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace eplab
