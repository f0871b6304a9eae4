// Helpers shared by the trace tests: scratch files under GoogleTest's temp dir and small shapes/clusters.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/error.hpp"
#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"
#include "traces/routing_source.hpp"

namespace eplab::testing {

// A fresh path per test, so tests can run in parallel under ctest.
inline std::string temp_path(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "eplab_traces";
  std::filesystem::create_directories(dir);
  std::string file = std::string(info->test_suite_name()) + "." + info->name() + "." + name;
  std::replace(file.begin(), file.end(), '/', '_');  // parameterized tests are named "Prefix/Suite.Test/N"
  return (dir / file).string();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline Topology cluster(int nodes, int gpus) {
  ClusterSpec c = cluster_preset("h800-cx7");
  c.nodes = nodes;
  c.gpus_per_node = gpus;
  return Topology(c);
}

inline RoutingParams params(const std::string& model, int nodes, int gpus, int tokens, uint64_t seed = 7) {
  RoutingParams p;
  p.shape = model_preset(model);
  p.topology = cluster(nodes, gpus);
  p.tokens_per_rank = tokens;
  p.seed = seed;
  return p;
}

// Runs f and returns the EplabError message it throws; fails the test if it throws nothing.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const EplabError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected an EplabError, got another exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected an EplabError, nothing was thrown";
  return "";
}

}  // namespace eplab::testing
