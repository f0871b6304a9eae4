// Cluster and model specs as JSON: every preset survives dump -> load unchanged, the resolver takes names, files
// and inline JSON alike, and a bad file is refused with an error naming the file and the field.
#include "engine/spec_json.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "tests/engine/error_of.hpp"

namespace eplab {
namespace {

using nlohmann::json;

std::string write_file(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / name;
  std::ofstream(path) << text;
  return path.string();
}

TEST(SpecJson, EveryClusterPresetRoundTrips) {
  for (const auto& name : cluster_preset_names()) {
    const json dumped = cluster_to_json(cluster_preset(name));
    EXPECT_EQ(cluster_to_json(cluster_from_json(dumped, "test")), dumped) << name;
    EXPECT_EQ(dumped["name"], name);
  }
}

TEST(SpecJson, EveryModelPresetRoundTrips) {
  for (const auto& name : model_preset_names()) {
    const json dumped = model_to_json(model_preset(name));
    EXPECT_EQ(model_to_json(model_from_json(dumped, "test")), dumped) << name;
  }
}

TEST(SpecJson, DumpCoversEveryCalibratedParameter) {
  const json j = cluster_to_json(cluster_preset("h800-cx7"));
  for (const char* key : {"scaleup_efficiency", "nic_efficiency", "round_overhead_s", "compute_efficiency",
                          "oversubscription", "scaleout", "gpu_fp8_tflops", "nics_per_gpu"})
    EXPECT_TRUE(j.contains(key)) << key;
  EXPECT_EQ(j["scaleout"], "rail-optimized");
}

TEST(SpecJson, ResolverTakesNamesFilesAndInlineJson) {
  const json j = cluster_to_json(cluster_preset("a100-roce"));
  const std::string path = write_file("eplab_spec_test_cluster.json", j.dump(2));
  EXPECT_EQ(cluster_to_json(resolve_cluster(path)), j);
  EXPECT_EQ(cluster_to_json(resolve_cluster(j.dump())), j);
  EXPECT_EQ(resolve_cluster("a100-roce").name, "a100-roce");
  EXPECT_NE(error_of([] { resolve_cluster("h900"); }).find("unknown cluster preset 'h900'"), std::string::npos);
  EXPECT_NE(error_of([] { resolve_model("/no/such/model.json"); }).find("cannot read model file '/no/such/model.json'"),
            std::string::npos);
}

TEST(SpecJson, BaseFillsTheMissingFields) {
  const MoeShape m = resolve_model(R"({"base": "deepseek-v3", "num_experts": 64, "topk": 4})");
  EXPECT_EQ(m.num_experts, 64);
  EXPECT_EQ(m.topk, 4);
  EXPECT_EQ(m.hidden, 7168);
  EXPECT_EQ(m.name, "model JSON");  // a modified spec never reports itself as the preset
  const ClusterSpec c = resolve_cluster(R"({"base": "h800-cx7", "scaleout": "fat-tree", "oversubscription": 2})");
  EXPECT_EQ(c.scaleout, ScaleOutKind::kFatTree);
  EXPECT_EQ(c.oversubscription, 2);
  EXPECT_EQ(c.nodes, 32);
}

TEST(SpecJson, BadFilesNameTheFileAndTheField) {
  json j = cluster_to_json(cluster_preset("h800-cx7"));
  auto cluster_error = [&](const json& bad) {
    const std::string path = write_file("eplab_spec_test_bad.json", bad.dump());
    return error_of([&] { resolve_cluster(path); });
  };
  const std::string file =
      "cluster file '" + (std::filesystem::temp_directory_path() / "eplab_spec_test_bad.json").string() + "'";
  json bad = j;
  bad["nodez"] = 4;
  EXPECT_EQ(cluster_error(bad).rfind(file + ": unknown field 'nodez' (known: base, name,", 0), 0u)
      << cluster_error(bad);
  bad = j;
  bad["nodes"] = "four";
  EXPECT_EQ(cluster_error(bad), file + ": field 'nodes': expected an integer >= 1, got \"four\"");
  bad["nodes"] = 2.5;
  EXPECT_EQ(cluster_error(bad), file + ": field 'nodes': expected an integer >= 1, got 2.5");
  bad = j;
  bad["nic_efficiency"] = 1.5;
  EXPECT_EQ(cluster_error(bad), file + ": field 'nic_efficiency': expected a number in (0, 1], got 1.5");
  bad = j;
  bad["scaleout"] = "torus";
  EXPECT_EQ(cluster_error(bad),
            file + ": field 'scaleout': expected \"rail-optimized\" or \"fat-tree\", got \"torus\"");
  bad = j;
  bad.erase("nic_GBps");
  EXPECT_EQ(cluster_error(bad).rfind(file + ": missing field 'nic_GBps'", 0), 0u) << cluster_error(bad);
  bad["base"] = "h900";
  EXPECT_EQ(cluster_error(bad).rfind(file + ": field 'base': unknown cluster preset 'h900'", 0), 0u);
  EXPECT_EQ(cluster_error(json::array()), file + ": expected a JSON object, got []");
  const std::string path = write_file("eplab_spec_test_bad.json", "{\"nodes\": ");
  EXPECT_EQ(error_of([&] { resolve_cluster(path); }).rfind(file + ": not valid JSON", 0), 0u);
}

TEST(SpecJson, ModelFieldsAreChecked) {
  EXPECT_EQ(error_of([] { resolve_model(R"({"base": "qwen-moe", "topk": 0})"); }),
            "model JSON: field 'topk': expected an integer >= 1, got 0");
  EXPECT_EQ(error_of([] { resolve_model(R"({"base": "qwen-moe", "topk": 200})"); }),
            "model JSON: field 'topk': expected at most num_experts (128), got 200");
  const std::string msg = error_of([] { resolve_model(R"({"base": "qwen-moe", "dispatch_codec": "fp7"})"); });
  EXPECT_EQ(msg.rfind("model JSON: field 'dispatch_codec': codec spec 'fp7'", 0), 0u) << msg;
}

}  // namespace
}  // namespace eplab
