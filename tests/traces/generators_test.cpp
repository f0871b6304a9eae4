// Generators: determinism under any call order, valid batches, and each generator's statistical signature
// (uniform spread, DeepEP's node limit, Zipf skew ordering, the hot set's moves, layer correlation).
#include "traces/generators.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "engine/error.hpp"
#include "tests/traces/test_util.hpp"

namespace eplab {
namespace {

using testing::error_of;
using testing::params;

std::vector<uint64_t> expert_loads(RoutingSource& src, int num_experts, int steps, int layers, int ranks,
                                   int first_step = 0) {
  std::vector<uint64_t> load(num_experts, 0);
  for (int s = first_step; s < first_step + steps; ++s)
    for (int l = 0; l < layers; ++l)
      for (int r = 0; r < ranks; ++r)
        for (int32_t e : src.batch(s, l, r).topk_idx) ++load[e];
  return load;
}

class EveryGenerator : public ::testing::TestWithParam<const char*> {};

TEST_P(EveryGenerator, SameSeedSameBatchInAnyOrder) {
  const RoutingParams p = params("deepseek-v3", 2, 4, 32, 11);
  auto a = make_routing(GetParam(), p);
  auto b = make_routing(GetParam(), p);
  // a walks forward, b backward and twice: every batch must agree.
  std::vector<RoutingBatch> forward;
  for (int s = 0; s < 2; ++s)
    for (int l = 0; l < 3; ++l)
      for (int r = 0; r < 8; ++r) forward.push_back(a->batch(s, l, r));
  for (int pass = 0; pass < 2; ++pass)
    for (int i = static_cast<int>(forward.size()) - 1; i >= 0; --i) {
      const RoutingBatch& f = forward[i];
      const RoutingBatch g = b->batch(f.step, f.layer, f.src_rank);
      ASSERT_EQ(f.topk_idx, g.topk_idx) << GetParam() << " step " << f.step << " layer " << f.layer;
      ASSERT_EQ(f.topk_weights, g.topk_weights) << GetParam();
      ASSERT_EQ(f.gate_scores, g.gate_scores) << GetParam();
    }
  // A different seed is a different routing.
  RoutingParams q = p;
  q.seed = 12;
  EXPECT_NE(make_routing(GetParam(), q)->batch(0, 0, 0).topk_idx, forward[0].topk_idx) << GetParam();
}

TEST_P(EveryGenerator, BatchesAreValidRouterOutputs) {
  const RoutingParams p = params("deepseek-v3", 4, 8, 64, 3);
  auto src = make_routing(GetParam(), p);
  for (int l = 0; l < 3; ++l)
    for (int r : {0, 13, 31}) {
      const RoutingBatch b = src->batch(5, l, r);
      ASSERT_NO_THROW(validate_batch(b, 256, GetParam()));
      ASSERT_EQ(b.num_tokens, 64);
      ASSERT_EQ(b.topk, 8);
      for (int t = 0; t < b.num_tokens; ++t) {
        std::set<int32_t> distinct;
        double sum = 0;
        for (int k = 0; k < 8; ++k) {
          ASSERT_GE(b.expert(t, k), 0) << GetParam();
          ASSERT_LT(b.expert(t, k), 256) << GetParam();
          distinct.insert(b.expert(t, k));
          ASSERT_GT(b.weight(t, k), 0.0f) << GetParam();
          if (k) ASSERT_LE(b.weight(t, k), b.weight(t, k - 1)) << GetParam() << ": weights sorted largest first";
          sum += b.weight(t, k);
        }
        ASSERT_EQ(distinct.size(), 8u) << GetParam() << ": token " << t << " repeats an expert";
        ASSERT_NEAR(sum, 1.0, 1e-5) << GetParam();
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Specs, EveryGenerator,
                         ::testing::Values("uniform", "deepep", "deepep:scores=1", "zipf:1.2", "zipf:0",
                                           "hotset:k=16,frac=0.6,every=4", "hotset", "correlated:rho=0.7"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

TEST(Generators, UniformSpreadsLoadEvenly) {
  auto src = make_routing("uniform", params("deepseek-v3", 1, 8, 512));
  const auto load = expert_loads(*src, 256, 2, 2, 8);  // 131072 selections, 512 per expert on average
  const auto [mn, mx] = std::minmax_element(load.begin(), load.end());
  EXPECT_GT(*mn, 400u);
  EXPECT_LT(*mx, 630u);  // about 5 standard deviations either side
}

TEST(Generators, DeepepKeepsTokensWithinMNodes) {
  for (int nodes : {2, 4, 8, 16}) {
    RoutingParams p = params("deepseek-v3", nodes, 8, 256);
    const int m = std::min(nodes, 4);
    auto src = make_routing("deepep:scores=1", p);
    const int per_node = 256 / nodes;
    std::vector<int> nodes_used_hist(nodes + 1, 0);
    for (int r : {0, 5}) {
      const RoutingBatch b = src->batch(0, 0, r);
      ASSERT_EQ(b.gate_scores.size(), 256u * 256u);
      for (int t = 0; t < b.num_tokens; ++t) {
        std::set<int> used;
        for (int k = 0; k < 8; ++k) used.insert(b.expert(t, k) / per_node);
        ++nodes_used_hist[used.size()];
        ASSERT_LE(static_cast<int>(used.size()), m) << nodes << " nodes, token " << t;
        // The chosen experts are the best-scoring ones among the nodes the token kept.
        float worst_chosen = 1e9f;
        for (int k = 0; k < 8; ++k)
          worst_chosen = std::min(worst_chosen, b.gate_scores[static_cast<size_t>(t) * 256 + b.expert(t, k)]);
        for (int e = 0; e < 256; ++e)
          if (used.count(e / per_node) &&
              std::find(&b.topk_idx[t * 8], &b.topk_idx[t * 8] + 8, e) == &b.topk_idx[t * 8] + 8)
            ASSERT_LE(b.gate_scores[static_cast<size_t>(t) * 256 + e], worst_chosen);
      }
    }
    // The limit binds: with 8 picks over more than M nodes, most tokens span exactly M nodes.
    if (nodes > 4) EXPECT_GT(nodes_used_hist[m], 256) << nodes << " nodes";
  }
  // Unlimited models (max_nodes_per_token = 0) may use every node.
  RoutingParams q = params("qwen-moe", 8, 1, 64);
  EXPECT_NO_THROW(make_routing("deepep", q)->batch(0, 0, 0));
}

TEST(Generators, DeepepRejectsTooFewExpertsPerNode) {
  RoutingParams p = params("mixtral-8x7b", 16, 1, 8);  // 8 experts over 16 nodes: some nodes hold none
  p.shape.max_nodes_per_token = 1;
  const std::string msg = error_of([&] { make_routing("deepep", p); });
  EXPECT_NE(msg.find("fewer than top-2"), std::string::npos) << msg;
}

std::vector<uint64_t> sorted_desc(std::vector<uint64_t> v) {
  std::sort(v.rbegin(), v.rend());
  return v;
}

TEST(Generators, ZipfSkewGrowsWithTheExponent) {
  double last_top_share = 0;
  for (const char* spec : {"zipf:0", "zipf:0.8", "zipf:1.5"}) {
    auto src = make_routing(spec, params("deepseek-v3", 1, 8, 256));
    const auto load = sorted_desc(expert_loads(*src, 256, 1, 1, 8));
    const double total = std::accumulate(load.begin(), load.end(), 0.0);
    const double top_share = std::accumulate(load.begin(), load.begin() + 8, 0.0) / total;
    EXPECT_GT(top_share, last_top_share) << spec;
    last_top_share = top_share;
    if (std::string(spec) == "zipf:0") EXPECT_LT(top_share, 0.05) << "zipf:0 is uniform";
    if (std::string(spec) == "zipf:1.5") {
      EXPECT_GT(top_share, 0.3) << spec;
      // Popularity ranks keep their order: decile averages decrease.
      for (int d = 1; d < 10; ++d) {
        const double prev = std::accumulate(load.begin() + (d - 1) * 25, load.begin() + d * 25, 0.0);
        const double cur = std::accumulate(load.begin() + d * 25, load.begin() + (d + 1) * 25, 0.0);
        EXPECT_GT(prev, cur) << "decile " << d;
      }
    }
  }
}

TEST(Generators, ZipfHotExpertsDifferPerLayerButNotPerStep) {
  auto src = make_routing("zipf:2", params("deepseek-v3", 1, 8, 256));
  auto hottest = [&](int step, int layer) {
    std::vector<uint64_t> load(256, 0);
    for (int r = 0; r < 8; ++r)
      for (int32_t e : src->batch(step, layer, r).topk_idx) ++load[e];
    return std::max_element(load.begin(), load.end()) - load.begin();
  };
  EXPECT_EQ(hottest(0, 0), hottest(7, 0));
  EXPECT_NE(hottest(0, 0), hottest(0, 1));
}

TEST(Generators, HotsetMovesEveryNSteps) {
  const RoutingParams p = params("deepseek-v3", 1, 8, 128);
  auto src = make_routing("hotset:k=16,frac=0.7,every=3", p);
  EXPECT_EQ(src->name(), "hotset:k=16,frac=0.7,every=3");
  auto hot_set = [&](int step) {
    auto load = expert_loads(*src, 256, 1, 1, 8, step);
    std::vector<int> order(256);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return load[a] > load[b]; });
    const double total = std::accumulate(load.begin(), load.end(), 0.0);
    double hot = 0;
    for (int i = 0; i < 16; ++i) hot += load[order[i]];
    EXPECT_NEAR(hot / total, 0.7, 0.03) << "step " << step;
    return std::set<int>(order.begin(), order.begin() + 16);
  };
  const auto s0 = hot_set(0), s2 = hot_set(2), s3 = hot_set(3), s5 = hot_set(5), s6 = hot_set(6);
  EXPECT_EQ(s0, s2);
  EXPECT_EQ(s3, s5);
  std::vector<int> common;
  std::set_intersection(s0.begin(), s0.end(), s3.begin(), s3.end(), std::back_inserter(common));
  EXPECT_TRUE(common.empty()) << "consecutive hot sets are disjoint";
  EXPECT_NE(s3, s6);
}

double repeat_fraction(RoutingSource& src, int layers) {
  int same = 0, total = 0;
  for (int r = 0; r < 4; ++r) {
    RoutingBatch prev = src.batch(0, 0, r);
    for (int l = 1; l < layers; ++l) {
      RoutingBatch cur = src.batch(0, l, r);
      for (int t = 0; t < cur.num_tokens; ++t) {
        same +=
            std::equal(&cur.topk_idx[t * cur.topk], &cur.topk_idx[(t + 1) * cur.topk], &prev.topk_idx[t * cur.topk]);
        ++total;
      }
      prev = std::move(cur);
    }
  }
  return static_cast<double>(same) / total;
}

TEST(Generators, CorrelatedRepeatsAtRho) {
  for (double rho : {0.0, 0.3, 0.9}) {
    auto src = make_routing("correlated:rho=" + std::to_string(rho), params("deepseek-v3", 1, 4, 512));
    EXPECT_NEAR(repeat_fraction(*src, 6), rho, 0.03) << "rho " << rho;
  }
  // Uniform routing at each layer almost never repeats a token's 8 experts.
  auto uni = make_routing("uniform", params("deepseek-v3", 1, 4, 512));
  EXPECT_LT(repeat_fraction(*uni, 3), 0.01);
}

TEST(GeneratorSpecs, UnknownSpecListsTheKnownOnes) {
  const std::string msg = error_of([] { make_routing("zipfian:1", params("deepseek-v3", 1, 8, 8)); });
  for (const char* known : {"uniform", "deepep", "zipf:S", "hotset:", "correlated:rho=R", "trace:PATH"})
    EXPECT_NE(msg.find(known), std::string::npos) << msg;
  EXPECT_NE(msg.find("'zipfian:1'"), std::string::npos) << msg;
}

TEST(GeneratorSpecs, MalformedParametersAreNamed) {
  const RoutingParams p = params("deepseek-v3", 1, 8, 8);
  struct Case {
    const char* spec;
    const char* expect;
  } cases[] = {
      {"zipf", "missing the exponent"},
      {"zipf:abc", "exponent 'abc' is not a number"},
      {"zipf:-1", "outside"},
      {"hotset:k=0", "k = 0 is outside"},
      {"hotset:k=300", "outside"},
      {"hotset:k=2.5", "not a whole number"},
      {"hotset:heat=1", "unknown parameter 'heat' (known: k, frac, every)"},
      {"hotset:frac", "'frac' is not key=value"},
      {"hotset:every=0", "every = 0"},
      {"correlated:rho=1.5", "rho = 1.5 is outside [0, 1]"},
      {"correlated:rho=0.5,rho=0.6", "given twice"},
      {"uniform:x=1", "takes no parameters"},
      {"trace:", "missing the file name"},
  };
  for (const auto& c : cases) {
    const std::string msg = error_of([&] { make_routing(c.spec, p); });
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.spec << " -> " << msg;
  }
  EXPECT_EQ(make_routing("zipf:s=1.25", p)->name(), "zipf:1.25");
  EXPECT_EQ(make_routing("hotset", p)->name(), "hotset:k=16,frac=0.5,every=10");
}

TEST(GeneratorSpecs, ZeroTokensAndBadRanksAreErrors) {
  std::string msg = error_of([] { make_routing("uniform", params("deepseek-v3", 1, 8, 0)); });
  EXPECT_NE(msg.find("tokens per rank is 0"), std::string::npos) << msg;
  auto src = make_routing("uniform", params("deepseek-v3", 1, 8, 4));
  msg = error_of([&] { src->batch(0, 0, 8); });
  EXPECT_NE(msg.find("rank 8"), std::string::npos) << msg;
}

TEST(SplitMix64, MatchesTheReferenceStream) {
  // First outputs for seed 0 from the reference implementation (Vigna's splitmix64.c).
  SplitMix64 rng(0);
  EXPECT_EQ(rng.next(), 0xe220a8397b1dcdafull);
  EXPECT_EQ(rng.next(), 0x6e789e6aa1b965f4ull);
  double sum = 0, sq = 0;
  for (int i = 0; i < 100000; ++i) {
    const double x = rng.normal();
    sum += x;
    sq += x * x;
  }
  EXPECT_NEAR(sum / 1e5, 0.0, 0.02);
  EXPECT_NEAR(sq / 1e5, 1.0, 0.02);
}

}  // namespace
}  // namespace eplab
