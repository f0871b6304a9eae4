// Generators: determinism under any call order, valid batches, and each generator's statistical signature
// (uniform spread, DeepEP's node limit and its distribution against a plain sampler, Zipf skew ordering, the hot
// set's moves, layer correlation); the Exp(1) draws and score quantiles deepep is built on.
#include "traces/generators.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <map>
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

// DeepEP's routing against a plain reference sampler. The generator draws order statistics instead of a score
// per expert, so only a comparison of distributions can tell whether it models the same routing.

// One token as the statistics see it: the chosen experts best first, their normalized weights, and the raw gate
// score of every expert.
struct TokenRouting {
  std::vector<int32_t> ids;
  std::vector<double> weights;
  std::vector<double> scores;
};

int node_of(int e, int experts, int nodes) { return static_cast<int>(static_cast<int64_t>(e) * nodes / experts); }

// DeepEP's tests/test_internode.py written out: scores = |randn| + 1 for every expert; the M nodes whose best
// expert scores highest stay; the token takes the k best experts among them; weights are those scores over
// their sum. Experts sit on nodes in contiguous blocks, as in the generator.
TokenRouting reference_token(SplitMix64& rng, int experts, int nodes, int m_nodes, int k) {
  TokenRouting t;
  t.scores.resize(experts);
  for (double& s : t.scores) s = std::abs(rng.normal()) + 1.0;
  std::vector<double> node_best(nodes, 0.0);
  for (int e = 0; e < experts; ++e)
    node_best[node_of(e, experts, nodes)] = std::max(node_best[node_of(e, experts, nodes)], t.scores[e]);
  std::vector<int> order(nodes);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return node_best[a] > node_best[b]; });
  std::vector<char> kept(nodes, 0);
  for (int i = 0; i < m_nodes; ++i) kept[order[i]] = 1;
  std::vector<int32_t> cand;
  for (int e = 0; e < experts; ++e)
    if (kept[node_of(e, experts, nodes)]) cand.push_back(e);
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(),
                    [&](int32_t a, int32_t b) { return t.scores[a] > t.scores[b]; });
  double sum = 0;
  for (int j = 0; j < k; ++j) sum += t.scores[cand[j]];
  for (int j = 0; j < k; ++j) {
    t.ids.push_back(cand[j]);
    t.weights.push_back(t.scores[cand[j]] / sum);
  }
  return t;
}

// Per-token statistics, each kept as moments so two samples can be compared by their standard errors.
class RoutingStats {
 public:
  struct Moments {
    double n = 0, sum = 0, sq = 0;
    double mean() const { return sum / n; }
    double var() const { return std::max(0.0, sq / n - mean() * mean()) * n / std::max(1.0, n - 1); }
  };

  RoutingStats(int experts, int nodes, int m_nodes, int k)
      : experts_(experts), nodes_(nodes), m_(m_nodes), k_(k), first_(nodes + 1, experts) {
    for (int e = experts - 1; e >= 0; --e) first_[node_of(e, experts, nodes)] = e;
  }

  void add(const TokenRouting& t) {
    // A used node's best expert is always chosen and the used nodes are the best-ranked kept ones, so the order
    // in which nodes first appear among the chosen experts (best first) is their rank.
    std::vector<int> rank_of(nodes_, -1), per_rank(m_, 0);
    int used = 0;
    for (int32_t e : t.ids) {
      const int n = node_of(e, experts_, nodes_);
      if (rank_of[n] < 0) rank_of[n] = used++;
      ++per_rank[rank_of[n]];
    }
    for (int d = 1; d <= m_; ++d) sample("tokens using " + std::to_string(d) + " node(s)", used == d);
    for (int r = 0; r < m_; ++r) sample("experts on the rank-" + std::to_string(r) + " node", per_rank[r]);
    // Which nodes and which experts inside them: by symmetry each is equally likely.
    const int top_node = node_of(t.ids[0], experts_, nodes_);
    sample("best expert in the lower half of the nodes", 2 * top_node < nodes_);
    int low = 0;
    for (int32_t e : t.ids) {
      const int n = node_of(e, experts_, nodes_);
      low += 2 * (e - first_[n]) < first_[n + 1] - first_[n];
    }
    sample("chosen experts in the lower half of their node", low);
    sample("largest weight", t.weights[0]);
    sample("smallest weight", t.weights[k_ - 1]);
    sample("best score", t.scores[t.ids[0]]);
    sample("k-th score", t.scores[t.ids[k_ - 1]]);
    // The gate scores of the experts not chosen: kept nodes (the M best by their best expert) and dropped ones.
    std::vector<double> node_best(nodes_, 0.0);
    for (int e = 0; e < experts_; ++e)
      node_best[node_of(e, experts_, nodes_)] = std::max(node_best[node_of(e, experts_, nodes_)], t.scores[e]);
    std::vector<double> sorted_best = node_best;
    std::sort(sorted_best.rbegin(), sorted_best.rend());
    sample("M-th node's best score", sorted_best[m_ - 1]);
    if (m_ < nodes_) sample("best dropped node's best score", sorted_best[m_]);
    double kept_sum = 0, dropped_sum = 0;
    int kept_n = 0, dropped_n = 0;
    for (int e = 0; e < experts_; ++e) {
      if (std::find(t.ids.begin(), t.ids.end(), e) != t.ids.end()) continue;
      if (node_best[node_of(e, experts_, nodes_)] >= sorted_best[m_ - 1]) {
        kept_sum += t.scores[e];
        ++kept_n;
      } else {
        dropped_sum += t.scores[e];
        ++dropped_n;
      }
    }
    if (kept_n) sample("mean unchosen score in kept nodes", kept_sum / kept_n);
    if (dropped_n) sample("mean score in dropped nodes", dropped_sum / dropped_n);
  }

  const std::map<std::string, Moments>& moments() const { return m; }

 private:
  void sample(const std::string& name, double x) {
    Moments& s = m[name];
    s.n += 1;
    s.sum += x;
    s.sq += x * x;
  }
  int experts_, nodes_, m_, k_;
  std::vector<int> first_;  // first expert of each node
  std::map<std::string, Moments> m;
};

// Means agree within 5 standard errors of their difference: a sound generator cannot fail (the seeds are fixed,
// and 5 sigma is far out even over every statistic), while a wrong exponent or dropped-node bound moves several
// of them by tens of standard errors.
void expect_same_distribution(const RoutingStats& gen, const RoutingStats& ref, const std::string& what) {
  ASSERT_EQ(gen.moments().size(), ref.moments().size()) << what;
  for (const auto& [name, g] : gen.moments()) {
    ASSERT_TRUE(ref.moments().count(name)) << what << ": " << name;
    const auto& r = ref.moments().at(name);
    const double se = std::sqrt(g.var() / g.n + r.var() / r.n);
    if (std::getenv("ZDEBUG"))
      std::printf("%-40s %-45s %10.6f %10.6f z=%6.2f\n", what.c_str(), name.c_str(), g.mean(), r.mean(),
                  se > 0 ? (g.mean() - r.mean()) / se : 0.0);
    EXPECT_LE(std::abs(g.mean() - r.mean()), 5 * se + 1e-12)
        << what << ": " << name << ": generator " << g.mean() << ", reference " << r.mean() << " ("
        << (g.mean() - r.mean()) / se << " standard errors)";
  }
}

TEST(Generators, DeepepMatchesAPlainReferenceSampler) {
  struct Case {
    const char* model;
    int nodes;
    int max_nodes;  // -1: the model's own
  } cases[] = {
      {"deepseek-v3", 32, -1},  // the default 256-GPU run: 8 experts per node, M = 4
      {"deepseek-v3", 8, -1},   // 32 experts per node
      {"deepseek-v3", 16, 2},   // a tighter limit: 8 picks inside 2 nodes of 16
      {"deepseek-v3", 6, -1},   // unequal nodes (42 or 43 experts)
      {"qwen-moe", 8, -1},      // no limit: every node kept
      {"qwen-moe", 16, -1},     // every node kept, more nodes than the merge keeps in registers
      {"mixtral-8x7b", 8, 3},   // one expert per node
  };
  constexpr int kTokens = 40000;
  for (const Case& c : cases) {
    RoutingParams p = params(c.model, c.nodes, 1, 2048, 5);
    if (c.max_nodes >= 0) p.shape.max_nodes_per_token = c.max_nodes;
    const int experts = p.shape.num_experts, k = p.shape.topk;
    const int m_nodes = p.shape.max_nodes_per_token > 0 ? std::min(c.nodes, p.shape.max_nodes_per_token) : c.nodes;
    const std::string what =
        std::string(c.model) + " on " + std::to_string(c.nodes) + " nodes, M = " + std::to_string(m_nodes);
    RoutingStats gen(experts, c.nodes, m_nodes, k), ref(experts, c.nodes, m_nodes, k);
    auto src = make_routing("deepep:scores=1", p);
    int taken = 0;
    for (int layer = 0; taken < kTokens; ++layer)
      for (int r = 0; r < c.nodes && taken < kTokens; ++r) {
        const RoutingBatch b = src->batch(0, layer, r);
        for (int t = 0; t < b.num_tokens && taken < kTokens; ++t, ++taken) {
          TokenRouting tok;
          for (int j = 0; j < k; ++j) {
            tok.ids.push_back(b.expert(t, j));
            tok.weights.push_back(b.weight(t, j));
          }
          tok.scores.assign(b.gate_scores.begin() + static_cast<ptrdiff_t>(t) * experts,
                            b.gate_scores.begin() + static_cast<ptrdiff_t>(t + 1) * experts);
          gen.add(tok);
        }
      }
    SplitMix64 rng(stream_seed(2024, 1, c.nodes, m_nodes, experts));
    for (int t = 0; t < kTokens; ++t) ref.add(reference_token(rng, experts, c.nodes, m_nodes, k));
    expect_same_distribution(gen, ref, what);
  }
}

TEST(Generators, DeepepScoresDoNotChangeTheRouting) {
  for (int nodes : {32, 8, 6}) {  // equal and unequal nodes
    const RoutingParams p = params("deepseek-v3", nodes, 1, 512, 9);
    auto plain = make_routing("deepep", p);
    auto scored = make_routing("deepep:scores=1", p);
    for (int r : {0, 3}) {
      const RoutingBatch a = plain->batch(1, 2, r), b = scored->batch(1, 2, r);
      EXPECT_TRUE(a.gate_scores.empty());
      EXPECT_EQ(b.gate_scores.size(), 512u * 256u);
      EXPECT_EQ(a.topk_idx, b.topk_idx) << nodes << " nodes";
      EXPECT_EQ(a.topk_weights, b.topk_weights) << nodes << " nodes";
    }
  }
}

// deepep's exact draws, pinned: every report and calibration figure derives from them, so a faster generator must
// give these batches bit for bit (ids, weights, gate scores). The digests were taken from the token-by-token
// generator before its draws were batched; ctest also runs this with EPLAB_ROUTING_ISA=sse2 and avx2, so each
// vector width of the merge is checked (the cases cover a chunk's tail, 2 to 32 nodes per token, scores on).
uint64_t digest(const RoutingBatch& b) {
  uint64_t h = 0;
  for (int32_t e : b.topk_idx) h = mix64(h ^ static_cast<uint32_t>(e));
  for (float w : b.topk_weights) h = mix64(h ^ std::bit_cast<uint32_t>(w));
  for (float g : b.gate_scores) h = mix64(h ^ std::bit_cast<uint32_t>(g));
  return h;
}
struct GoldenCase {
  const char* spec;
  int nodes, gpus, tokens, max_nodes;  // max_nodes < 0: the model's
  bool weights;
  int step, layer, rank;
};
const GoldenCase kGolden[] = {
    {"deepep", 32, 8, 300, -1, false, 0, 3, 17},  {"deepep", 32, 8, 300, -1, true, 1, 0, 255},
    {"deepep:scores=1", 8, 2, 100, -1, true, 0, 1, 5}, {"deepep", 16, 1, 200, 12, true, 2, 2, 3},
    {"deepep", 4, 8, 129, 2, false, 0, 57, 31},   {"deepep", 32, 1, 150, 0, false, 0, 1, 2},
};

TEST(Generators, DeepepDrawsAreFixed) {
  const uint64_t want[] = {0x3a7fc7f2665a16f1ull, 0xebf0fe0f9815d078ull, 0x113c9d6150ae68ddull,
                           0xcca0c5e24370dc7bull, 0xf5dd68341e05ce1aull, 0x8d85b99ca86dccf5ull};
  for (size_t i = 0; i < std::size(kGolden); ++i) {
    const GoldenCase& c = kGolden[i];
    RoutingParams p = params("deepseek-v3", c.nodes, c.gpus, c.tokens);
    p.weights = c.weights;
    if (c.max_nodes >= 0) p.shape.max_nodes_per_token = c.max_nodes;
    EXPECT_EQ(digest(make_routing(c.spec, p)->batch(c.step, c.layer, c.rank)), want[i])
        << c.spec << " on " << c.nodes << " x " << c.gpus << ", case " << i;
  }
}

// A phantom run asks for no weights: the same expert ids, and weights that are finite and sum to one per token.
TEST(Generators, WithoutWeightsTheRoutingIsTheSame) {
  for (const std::string spec : {"deepep", "uniform"})
    for (int nodes : {32, 8, 6}) {
      RoutingParams p = params("deepseek-v3", nodes, 1, 512, 9);
      auto full = make_routing(spec, p);
      p.weights = false;
      auto ids_only = make_routing(spec, p);
      for (int r : {0, 3}) {
        const RoutingBatch a = full->batch(1, 2, r), b = ids_only->batch(1, 2, r);
        EXPECT_EQ(a.topk_idx, b.topk_idx) << spec << ", " << nodes << " nodes";
        for (int t = 0; t < b.num_tokens; ++t) {
          double sum = 0;
          for (int k = 0; k < b.topk; ++k) sum += b.weight(t, k);
          ASSERT_NEAR(sum, 1.0, 1e-5) << spec << ", token " << t;
        }
      }
    }
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

TEST(SplitMix64, ExponentialHasTheExp1Distribution) {
  // The ziggurat against the exact Exp(1): the tail P(X > t) = e^-t at points inside layers, at layer edges and
  // past the base strip (r = 7.697), and memorylessness, E[X - t | X > t] = 1, including beyond r (where the
  // ziggurat switches to its tail draw). Every check within 5 standard errors.
  SplitMix64 rng(3);
  constexpr int kDraws = 16000000;
  const double at[] = {0.001, 0.0639, 0.1, 0.5, 1.0, 2.0, 4.0, 7.0, 7.697, 9.0, 11.0};
  constexpr size_t kAt = std::size(at);
  std::vector<double> above(kAt, 0), excess(kAt, 0);
  double sum = 0, sq = 0;
  for (int i = 0; i < kDraws; ++i) {
    const double x = rng.exponential();
    ASSERT_GE(x, 0.0);
    sum += x;
    sq += x * x;
    for (size_t j = 0; j < kAt; ++j)
      if (x > at[j]) {
        ++above[j];
        excess[j] += x - at[j];
      }
  }
  EXPECT_NEAR(sum / kDraws, 1.0, 5 * std::sqrt(1.0 / kDraws));
  EXPECT_NEAR(sq / kDraws, 2.0, 5 * std::sqrt(20.0 / kDraws));  // E X^2 = 2, Var X^2 = 24 - 4
  for (size_t j = 0; j < kAt; ++j) {
    const double p = std::exp(-at[j]);
    EXPECT_NEAR(above[j], kDraws * p, 5 * std::sqrt(kDraws * p * (1 - p)) + 1) << "P(X > " << at[j] << ")";
    EXPECT_NEAR(excess[j] / above[j], 1.0, 5 / std::sqrt(above[j])) << "E[X - t | X > t], t = " << at[j];
  }
}

TEST(Generators, HalfNormalQuantileInvertsTheCdf) {
  // deepep's scores are 1 + the |N(0,1)| quantile of uniform ranks: P(|Z| > q) = erfc(q / sqrt 2) = 1 - u. Acklam's
  // approximation is good to 1.2e-9 relative in q, which moves 1 - u by a relative q^2 times that in the tail.
  // The log-space form (ranks drawn as log u) must agree with the plain one.
  const auto tolerance = [](double q) { return 3e-9 * std::max(1.0, q * q); };
  std::vector<double> us;
  for (int i = 1; i < 1000; ++i) us.push_back(i / 1000.0);
  for (double e = 1e-4; e > 1e-15; e /= 7) us.push_back(1 - e);
  us.push_back(0.9515);
  us.push_back(std::nextafter(0.9515, 1.0));
  for (double u : us) {
    const double q = half_normal_quantile(u);
    EXPECT_NEAR(std::erfc(q / std::sqrt(2.0)) / (1 - u), 1.0, tolerance(q)) << "u = " << u;
    EXPECT_NEAR(half_normal_quantile_log(std::log(u)), q, 1e-12 * q) << "u = " << u;
  }
  for (double x = 1e-300; x < 0.05; x *= 3) {  // ranks closer to 1 than a double can hold, as log-space ones are
    const double q = half_normal_quantile_log(-x);
    EXPECT_NEAR(std::erfc(q / std::sqrt(2.0)) / -std::expm1(-x), 1.0, tolerance(q)) << "log u = " << -x;
  }
}

}  // namespace
}  // namespace eplab
