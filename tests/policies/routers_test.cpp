// Routers: the node limit holds for every token, the aux-loss-free bias evens out expert load over steps, and
// replayed biases keep batches random-access (any order gives the same batch).
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "engine/error.hpp"
#include "policies/routing/router.hpp"

namespace eplab {
namespace {

RoutingParams params(int nodes, int tokens) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = nodes;
  spec.gpus_per_node = 2;
  MoeShape shape = model_preset("deepseek-v3");
  shape.num_experts = 64;
  return RoutingParams{shape, Topology(spec), tokens, 7};
}

double max_over_mean_load(RoutingSource& src, int step, int ranks, int experts) {
  std::vector<double> load(experts, 0.0);
  for (int r = 0; r < ranks; ++r)
    for (int32_t e : src.batch(step, 0, r).topk_idx)
      if (e >= 0) load[e] += 1;
  double sum = 0, mx = 0;
  for (double v : load) sum += v, mx = std::max(mx, v);
  return mx / (sum / experts);
}

TEST(Routers, NodeLimitedKeepsEachTokenWithinMNodes) {
  const RoutingParams p = params(8, 64);
  auto src = make_routing("router:node-limited,m=2", p);
  const int per_node = p.shape.num_experts / 8;
  bool some_token_uses_two = false;
  for (int r = 0; r < 4; ++r) {
    const RoutingBatch b = src->batch(0, 0, r);
    ASSERT_EQ(b.topk, p.shape.topk);
    for (int t = 0; t < b.num_tokens; ++t) {
      std::set<int> nodes, experts;
      float wsum = 0;
      for (int k = 0; k < b.topk; ++k) {
        ASSERT_GE(b.expert(t, k), 0);
        nodes.insert(b.expert(t, k) / per_node);
        experts.insert(b.expert(t, k));
        wsum += b.weight(t, k);
      }
      EXPECT_LE(nodes.size(), 2u) << "rank " << r << " token " << t;
      EXPECT_EQ(experts.size(), static_cast<size_t>(b.topk));  // distinct experts
      EXPECT_NEAR(wsum, 1.0f, 1e-5);
      some_token_uses_two |= nodes.size() == 2;
    }
  }
  EXPECT_TRUE(some_token_uses_two);
  // Unlimited routing does spread over more nodes, so the limit is what bounds it.
  auto plain = make_routing("router:topk", p);
  size_t most = 0;
  const RoutingBatch b = plain->batch(0, 0, 0);
  for (int t = 0; t < b.num_tokens; ++t) {
    std::set<int> nodes;
    for (int k = 0; k < b.topk; ++k) nodes.insert(b.expert(t, k) / per_node);
    most = std::max(most, nodes.size());
  }
  EXPECT_GT(most, 2u);
}

TEST(Routers, BiasBalancingReducesMaxOverMeanLoad) {
  const RoutingParams p = params(2, 256);
  auto src = make_routing("router:bias,gamma=0.01", p);
  const int R = p.topology.size();
  const double first = max_over_mean_load(*src, 0, R, p.shape.num_experts);
  const double later = max_over_mean_load(*src, 40, R, p.shape.num_experts);
  EXPECT_GT(first, 2.0);  // the gate scores are skewed to begin with
  EXPECT_LT(later, 0.6 * first) << "step 0 " << first << ", step 40 " << later;
}

TEST(Routers, BiasReplayIsRandomAccess) {
  const RoutingParams p = params(2, 32);
  auto a = make_routing("router:bias,gamma=0.01,m=1", p);
  auto b = make_routing("router:bias,gamma=0.01,m=1", p);
  const RoutingBatch late_first = a->batch(9, 1, 3);
  for (int s = 0; s <= 9; ++s) b->batch(s, 1, 0);
  const RoutingBatch late_after = b->batch(9, 1, 3);
  EXPECT_EQ(late_first.topk_idx, late_after.topk_idx);
  EXPECT_EQ(late_first.topk_weights, late_after.topk_weights);
  EXPECT_EQ(a->batch(2, 1, 3).topk_idx, b->batch(2, 1, 3).topk_idx);
}

TEST(Routers, BadSpecsNameTheProblem) {
  const RoutingParams p = params(2, 8);
  try {
    make_routing("router:nope", p);
    FAIL();
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("node-limited"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_routing("router:bias,gama=0.1", p), EplabError);
  EXPECT_THROW(make_routing("router:node-limited,m=0", p), EplabError);
}

}  // namespace
}  // namespace eplab
