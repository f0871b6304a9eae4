// Cached layouts on emulated ranks: a routing that repeats every step hits from step 2 on and still combines
// bit for bit in fp32; a routing that changes every step never hits; a caller that vouches wrongly is caught.
#include <gtest/gtest.h>

#include <memory>

#include "emu_test_util.hpp"
#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"

namespace eplab {
namespace {

using testing_util::FnSource;

// qwen-moe (128 experts, top-8): distinct experts per token, spread over all ranks; `drift` shifts it by step.
std::shared_ptr<RoutingSource> routing(bool drift) {
  return std::make_shared<FnSource>([drift](int step, int layer, int rank) {
    const int T = 48, K = 8, E = 128;
    RoutingBatch b = testing_util::make_batch(step, layer, rank, T, K);
    for (int t = 0; t < T; ++t)
      for (int k = 0; k < K; ++k) {
        const size_t i = static_cast<size_t>(t) * K + k;
        b.topk_idx[i] = (t * 5 + rank * 11 + layer * 3 + (drift ? step * 7 : 0) + k * (E / K)) % E;
        b.topk_weights[i] = 0.125f + 0.01f * static_cast<float>(k);
      }
    return b;
  });
}

class LayoutCacheEmu : public ::testing::TestWithParam<std::string> {};

TEST_P(LayoutCacheEmu, RepeatedRoutingHitsFromStepTwoAndStaysBitExact) {
  RunConfig c = testing_util::small(2, 4, GetParam());
  c.routing_source = routing(false);
  c.steps = 4;
  c.layers = 2;
  c.layout_cache = 4;
  const auto r = run_experiment(c);
  testing_util::expect_verified(r, true);
  const auto& lc = r["layout_cache"];
  EXPECT_EQ(lc["misses"].get<long>(), 2) << lc.dump();  // step 1's two layers
  EXPECT_EQ(lc["hits"].get<long>(), 6) << lc.dump();    // every layer of steps 2-4
  EXPECT_DOUBLE_EQ(lc["hit_rate"].get<double>(), 0.75);
  EXPECT_GT(lc["notify_time_saved_s"].get<double>(), 0);
  // Hits send no notify messages: 2 of 8 calls did, so the mean per call is a quarter of a run without cache.
  RunConfig off = c;
  off.layout_cache = 0;
  const auto r0 = run_experiment(off);
  testing_util::expect_verified(r0, true);
  EXPECT_EQ(r0["layout_cache"]["hits"].get<long>(), 0);
  EXPECT_DOUBLE_EQ(r["phases"]["notify"]["messages"].get<double>(),
                   r0["phases"]["notify"]["messages"].get<double>() / 4);
}

TEST_P(LayoutCacheEmu, ChangingRoutingNeverHits) {
  RunConfig c = testing_util::small(2, 4, GetParam());
  c.routing_source = routing(true);
  c.steps = 3;
  c.layout_cache = 8;
  const auto r = run_experiment(c);
  testing_util::expect_verified(r, true);
  EXPECT_EQ(r["layout_cache"]["hits"].get<long>(), 0);
  EXPECT_EQ(r["layout_cache"]["misses"].get<long>(), 3);
}

TEST_P(LayoutCacheEmu, CapacityOneWithTwoAlternatingLayersNeverHits) {
  // Layers 0 and 1 differ, so with room for one layout each evicts the other before it comes back.
  RunConfig c = testing_util::small(2, 4, GetParam());
  c.routing_source = routing(false);
  c.steps = 3;
  c.layers = 2;
  c.layout_cache = 1;
  const auto r = run_experiment(c);
  testing_util::expect_verified(r, true);
  EXPECT_EQ(r["layout_cache"]["hits"].get<long>(), 0);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, LayoutCacheEmu, ::testing::Values("flat", "hierarchical", "low-latency"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

// A vouched call whose key the rank never cached is a caller bug, reported with rank, step and layer; so is a
// vouched key whose entry was filled by a different routing on this rank.
TEST(LayoutCacheEngine, WrongVouchesThrowWithContext) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = 2;
  const Topology topo(spec);
  MoeShape shape = model_preset("qwen-moe");
  shape.hidden = 64;
  const Placement placement = Placement::contiguous(shape.num_experts, topo.size());
  EngineOptions o;
  o.algorithm = "flat";
  o.dispatch_codec = o.combine_codec = "fp32";
  o.layout_cache = 2;
  o.timeout_s = 10;
  std::vector<std::string> errors(topo.size());
  create_backend("emu")->launch(topo, LaunchOptions{false, 10, ""}, [&](Fabric& f) {
    EpEngine engine(f, shape, placement, o);
    std::vector<int32_t> slots = {0, 100};
    std::vector<float> w = {0.5f, 0.5f}, x(64, 1.f), out(64);
    DispatchArgs a{0, 3, 1, 2, slots.data(), w.data(), x.data()};
    a.layout_key = 42;
    a.layout_cached = true;
    try {
      engine.dispatch(a);
    } catch (const EplabError& e) {
      errors[f.rank()] = e.what();
    }
    // Fill key 42 properly, then vouch for it with another routing.
    a.layout_cached = false;
    Handle h = engine.dispatch(a);
    std::vector<float> partials(static_cast<size_t>(h.recv.size()) * 64, 0.f);
    engine.combine(h, partials.data(), out.data());
    slots = {1, 101};
    a.step = 1;
    a.layout_cached = true;
    try {
      engine.dispatch(a);
    } catch (const EplabError& e) {
      errors[f.rank()] += std::string(" | ") + e.what();
    }
  });
  for (int r = 0; r < topo.size(); ++r) {
    EXPECT_NE(errors[r].find("rank " + std::to_string(r) + ", step 0, layer 3"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("does not hold"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("routing differs"), std::string::npos) << errors[r];
  }
}

}  // namespace
}  // namespace eplab
