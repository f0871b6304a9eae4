// The simulator checked against a machine (driver/validate.hpp), on a machine whose answer is known: a simulated
// cluster with other link parameters stands in for the hardware. Fitting the preset to its probe must recover
// those parameters, and the fitted cluster must then predict the "machine's" phase times exactly. Also: warm-up
// calls are left out of the means, and probe files that are not probes are refused naming the file.
#include "driver/validate.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "driver/experiment.hpp"
#include "driver/probe.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "engine/spec_json.hpp"

namespace eplab {
namespace {

bool have_sim() { return backend_registry().find("sim") != nullptr; }

// The stand-in machine: h800-cx7's shape with slower, longer links and a costlier round.
ClusterSpec machine() {
  ClusterSpec m = resolve_cluster("h800-cx7");
  m.nodes = 2;
  m.gpus_per_node = 4;
  m.scaleup_GBps *= 0.4;
  m.scaleup_latency_s *= 7;
  m.nic_GBps *= 0.3;
  m.nic_latency_s *= 5;
  m.switch_latency_s *= 5;
  m.round_overhead_s = 40e-6;
  return m;
}

ClusterSpec preset() {
  ClusterSpec p = resolve_cluster("h800-cx7");
  p.nodes = 2;
  p.gpus_per_node = 4;
  return p;
}

ProbeResult probe_of(const ClusterSpec& c) {
  auto sim = create_backend("sim");
  ProbeOptions o;
  o.large_bytes = 4 << 20;
  o.iters = 1;
  o.rounds = 1;
  return probe_fabric(*sim, Topology(c), o);
}

std::string write_cluster(const ClusterSpec& c, const std::string& name) {
  const std::string path = (std::filesystem::temp_directory_path() / (name + std::to_string(getpid()) + ".json"));
  std::ofstream(path) << cluster_to_json(c).dump();
  return path;
}

void expect_rel(double got, double want, const char* what) { EXPECT_NEAR(got, want, 1e-7 * std::abs(want)) << what; }

TEST(Validate, FittingThePresetToAProbeRecoversTheMachinesLinks) {
  if (!have_sim()) GTEST_SKIP() << "the sim backend is not built (SimGrid missing)";
  const ClusterSpec m = machine();
  const ClusterFit fit = fit_cluster(preset(), probe_of(m));
  EXPECT_TRUE(fit.notes.empty());
  for (int c = 1; c < kProbeClasses; ++c) {
    expect_rel(fit.fitted_sim.class_latency_s[c], fit.measured.class_latency_s[c], probe_class_name(c));
    expect_rel(fit.fitted_sim.class_bandwidth_GBps[c], fit.measured.class_bandwidth_GBps[c], probe_class_name(c));
  }
  expect_rel(fit.fitted_sim.round_s, fit.measured.round_s, "empty round");
  expect_rel(fit.fitted.scaleup_GBps, m.scaleup_GBps, "scaleup_GBps");
  expect_rel(fit.fitted.scaleup_latency_s, m.scaleup_latency_s, "scaleup_latency_s");
  expect_rel(fit.fitted.nic_GBps, m.nic_GBps, "nic_GBps");
  expect_rel(fit.fitted.nic_latency_s, m.nic_latency_s, "nic_latency_s");
  expect_rel(fit.fitted.switch_latency_s, m.switch_latency_s, "switch_latency_s");
  expect_rel(fit.fitted.round_overhead_s, m.round_overhead_s, "round_overhead_s");
  // The preset itself is far off: the fit did something.
  EXPECT_GT(fit.base_sim.class_latency_s[1] * 3, 0.0);
  EXPECT_LT(fit.base_sim.class_latency_s[1] * 3, fit.measured.class_latency_s[1]);
}

TEST(Validate, TheFittedClusterPredictsTheMachinesPhaseTimes) {
  if (!have_sim()) GTEST_SKIP() << "the sim backend is not built (SimGrid missing)";
  const ClusterSpec m = machine();
  const ClusterFit fit = fit_cluster(preset(), probe_of(m));
  const std::string machine_file = write_cluster(m, "eplab-machine-"),
                    fitted_file = write_cluster(fit.fitted, "eplab-fit-");
  RunConfig cfg;
  cfg.backend = "sim";
  cfg.routing = "uniform";
  cfg.tokens = 512;
  cfg.steps = 2;
  cfg.payload = "phantom";
  cfg.cluster = machine_file;
  const nlohmann::json measured = run_experiment(cfg);
  cfg.cluster = fitted_file;
  const nlohmann::json predicted = run_experiment(cfg);
  cfg.cluster = write_cluster(preset(), "eplab-preset-");
  const nlohmann::json unfitted = run_experiment(cfg);
  for (const auto& f : {machine_file, fitted_file, cfg.cluster}) std::filesystem::remove(f);
  const auto checks = compare_phases(measured, predicted, 1);
  ASSERT_EQ(checks.size(), 4u);
  for (const auto& c : checks) {
    EXPECT_GT(c.measured_s, 0) << c.phase;
    EXPECT_NEAR(c.error(), 0.0, 1e-6) << c.phase << ": measured " << c.measured_s << " predicted " << c.predicted_s;
  }
  // Without the fit the prediction is well off (the links differ by 2.5-7x).
  const auto before = compare_phases(measured, unfitted, 1);
  EXPECT_LT(before.back().error(), -0.3);
}

TEST(Validate, WarmUpCallsAreLeftOutOfTheMeans) {
  auto report = [](std::vector<double> dispatch) {
    nlohmann::json r;
    for (const char* ph : {"notify", "dispatch", "combine"})
      r["phases"][ph] = {{"time_s", 0.0}, {"call_time_s", {1.0, 1.0, 1.0}}};
    r["phases"]["dispatch"]["call_time_s"] = dispatch;
    return r;
  };
  const auto checks = compare_phases(report({10.0, 2.0, 4.0}), report({1.0, 1.0, 1.0}), 1);
  ASSERT_EQ(checks.size(), 4u);
  EXPECT_EQ(checks[1].phase, "dispatch");
  EXPECT_DOUBLE_EQ(checks[1].measured_s, 3.0);
  EXPECT_DOUBLE_EQ(checks[1].error(), -2.0 / 3.0);
  EXPECT_EQ(checks[3].phase, "dispatch + combine");
  EXPECT_DOUBLE_EQ(checks[3].measured_s, 4.0);
  EXPECT_DOUBLE_EQ(checks[3].predicted_s, 2.0);
  // Skipping every call keeps the last one rather than dividing by nothing.
  EXPECT_DOUBLE_EQ(compare_phases(report({10.0, 2.0, 4.0}), report({1, 1, 1}), 9)[1].measured_s, 4.0);
}

TEST(Validate, FilesThatAreNotProbesAreRefusedNamingTheFile) {
  nlohmann::json good = {{"backend", "emu"},
                         {"small_bytes", 8},
                         {"large_bytes", 4194304},
                         {"round_s", 1e-4},
                         {"by_class", {{"scaleup", {{"latency_s", 2e-5}, {"bandwidth_GBps", 30.0}, {"pairs", 6}}}}}};
  const ProbeResult p = probe_from_json(good, "probe 'p.json'");
  EXPECT_EQ(p.class_count[1], 6);
  EXPECT_DOUBLE_EQ(p.class_bandwidth_GBps[1], 30.0);
  auto refused = [](nlohmann::json j) {
    try {
      probe_from_json(j, "probe 'p.json'");
    } catch (const EplabError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  nlohmann::json no_classes = good;
  no_classes.erase("by_class");
  EXPECT_NE(refused(no_classes).find("probe 'p.json': not a probe"), std::string::npos) << refused(no_classes);
  nlohmann::json negative = good;
  negative["by_class"]["scaleup"]["latency_s"] = -1;
  EXPECT_NE(refused(negative).find("probe 'p.json': class 'scaleup'"), std::string::npos) << refused(negative);
  nlohmann::json sizes = good;
  sizes["large_bytes"] = 4;
  EXPECT_NE(refused(sizes).find("probe 'p.json'"), std::string::npos) << refused(sizes);
  nlohmann::json wrong_type = good;
  wrong_type["round_s"] = "fast";
  EXPECT_NE(refused(wrong_type).find("probe 'p.json': not a probe"), std::string::npos) << refused(wrong_type);
}

}  // namespace
}  // namespace eplab
