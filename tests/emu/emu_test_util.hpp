// What the emulated-engine tests share: routing written by a test, a small verified run configuration, and the
// check that a report says the run was verified.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "driver/experiment.hpp"

namespace eplab::testing_util {

// Routing written by a test: fn(step, layer, rank) -> batch.
class FnSource : public RoutingSource {
 public:
  explicit FnSource(std::function<RoutingBatch(int, int, int)> fn) : fn_(std::move(fn)) {}
  std::string name() const override { return "test routing"; }
  RoutingBatch batch(int step, int layer, int rank) override { return fn_(step, layer, rank); }

 private:
  std::function<RoutingBatch(int, int, int)> fn_;
};

// An empty batch (-1 everywhere) of `tokens` x `topk`.
inline RoutingBatch make_batch(int step, int layer, int rank, int tokens, int topk) {
  RoutingBatch b;
  b.step = step;
  b.layer = layer;
  b.src_rank = rank;
  b.num_tokens = tokens;
  b.topk = topk;
  b.topk_idx.assign(static_cast<size_t>(tokens) * topk, -1);
  b.topk_weights.assign(static_cast<size_t>(tokens) * topk, 0.f);
  return b;
}

// qwen-moe (128 experts, top-8) at hidden 256, 48 tokens per rank, uniform routing, fp32 on the wire.
inline RunConfig small(int nodes, int gpus, const std::string& algorithm) {
  RunConfig c;
  c.backend = "emu";
  c.nodes = nodes;
  c.gpus_per_node = gpus;
  c.model = "qwen-moe";
  c.hidden = 256;
  c.tokens = 48;
  c.routing = "uniform";
  c.algorithm = algorithm;
  c.dispatch_codec = "fp32";
  c.combine_codec = "fp32";
  c.timeout_s = 30;
  return c;
}

inline void expect_verified(const nlohmann::json& r, bool bit_exact) {
  ASSERT_TRUE(r["verification"]["ran"].get<bool>());
  EXPECT_TRUE(r["verification"]["delivery_ok"].get<bool>()) << r["verification"].dump();
  EXPECT_TRUE(r["verification"]["combine_ok"].get<bool>()) << r["verification"].dump();
  if (bit_exact) {
    EXPECT_TRUE(r["verification"]["bit_exact"].get<bool>()) << r["verification"].dump();
  }
  EXPECT_TRUE(r["verified"].get<bool>());
}

}  // namespace eplab::testing_util
