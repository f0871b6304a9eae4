// Cached layouts on the simulator: when a routing repeats, hits skip notify, so its modeled time per layer
// drops and the report credits the time the misses paid; a changing routing never hits.
#include <gtest/gtest.h>

#include <cstdio>

#include "engine/ep_engine.hpp"
#include "driver/experiment.hpp"

namespace eplab {
namespace {

// Routing that repeats every step: the step-0 batch of the deepep generator, served for every step.
class RepeatStepZero : public RoutingSource {
 public:
  explicit RepeatStepZero(std::shared_ptr<RoutingSource> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return "repeat step 0"; }
  RoutingBatch batch(int step, int layer, int rank) override {
    RoutingBatch b = inner_->batch(0, layer, rank);
    b.step = step;
    return b;
  }

 private:
  std::shared_ptr<RoutingSource> inner_;
};

RunConfig config(const std::string& algorithm) {
  RunConfig c;
  c.backend = "sim";
  c.nodes = 2;
  c.gpus_per_node = 4;
  c.tokens = 128;
  c.algorithm = algorithm;
  c.routing = "deepep";
  c.steps = 4;
  c.layers = 2;
  c.timeout_s = 30;
  return c;
}

class LayoutCacheSim : public ::testing::TestWithParam<std::string> {};

TEST_P(LayoutCacheSim, HitsDropNotifyTimePerLayer) {
  RunConfig off = config(GetParam());
  RunConfig on = off;
  on.layout_cache = 8;
  MoeShape shape = model_preset(on.model);
  ClusterSpec spec = cluster_preset(on.cluster);
  spec.nodes = on.nodes;
  spec.gpus_per_node = on.gpus_per_node;
  on.routing_source = std::make_shared<RepeatStepZero>(
      make_routing("deepep", RoutingParams{shape, Topology(spec), on.tokens, on.seed, on.steps, on.layers}));
  off.routing_source = on.routing_source;
  const auto r_off = run_experiment(off), r_on = run_experiment(on);
  const auto& lc = r_on["layout_cache"];
  EXPECT_EQ(lc["hits"].get<long>(), 6) << lc.dump();
  EXPECT_EQ(lc["misses"].get<long>(), 2) << lc.dump();
  const double notify_off = r_off["phases"]["notify"]["time_s"].get<double>();
  const double notify_on = r_on["phases"]["notify"]["time_s"].get<double>();
  ASSERT_GT(notify_off, 0);
  // Two of eight calls run notify: per layer, about a quarter of the uncached time.
  EXPECT_LT(notify_on, 0.3 * notify_off) << notify_on << " vs " << notify_off;
  EXPECT_NEAR(lc["notify_time_saved_s"].get<double>(), 6 * notify_off, 0.2 * 6 * notify_off);
  EXPECT_TRUE(lc["timed"].get<bool>());
  std::printf("%s: hit rate %.2f, notify per layer %.2f us cached vs %.2f us uncached, saved %.2f us\n",
              GetParam().c_str(), lc["hit_rate"].get<double>(), notify_on * 1e6, notify_off * 1e6,
              lc["notify_time_saved_s"].get<double>() * 1e6);
  // The generator's own routing changes every step: no hits.
  RunConfig fresh = config(GetParam());
  fresh.layout_cache = 8;
  const auto r_fresh = run_experiment(fresh);
  EXPECT_EQ(r_fresh["layout_cache"]["hits"].get<long>(), 0);
  EXPECT_EQ(r_fresh["layout_cache"]["misses"].get<long>(), 8);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, LayoutCacheSim, ::testing::Values("flat", "hierarchical", "low-latency"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace eplab
