// Routers behind "router:": gate scores drawn per token, then top-k with an optional node limit and an
// optional aux-loss-free balancing bias (replayed from step 0 so every batch is random-access).
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>

#include "engine/error.hpp"
#include "policies/heat/policy_spec.hpp"
#include "policies/routing/router.hpp"
#include "traces/generators.hpp"

namespace eplab {

void route_token(const float* scores, int num_experts, const std::vector<float>& bias, int topk, int nodes,
                 int max_nodes, int32_t* ids, float* weights) {
  auto biased = [&](int e) { return scores[e] + (bias.empty() ? 0.0f : bias[e]); };
  std::vector<int> cand;
  cand.reserve(num_experts);
  if (nodes > 0 && max_nodes > 0 && max_nodes < nodes) {
    // A node's score is its best expert's biased score; keep the top max_nodes nodes.
    std::vector<float> best(nodes, -INFINITY);
    for (int e = 0; e < num_experts; ++e) {
      const int n = static_cast<int>(static_cast<int64_t>(e) * nodes / num_experts);
      best[n] = std::max(best[n], biased(e));
    }
    std::vector<int> order(nodes);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return best[a] > best[b]; });
    std::vector<char> keep(nodes, 0);
    for (int i = 0; i < max_nodes; ++i) keep[order[i]] = 1;
    for (int e = 0; e < num_experts; ++e)
      if (keep[static_cast<int>(static_cast<int64_t>(e) * nodes / num_experts)]) cand.push_back(e);
  } else {
    cand.resize(num_experts);
    std::iota(cand.begin(), cand.end(), 0);
  }
  const int k = std::min<int>(topk, static_cast<int>(cand.size()));
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), [&](int a, int b) {
    const float x = biased(a), y = biased(b);
    return x > y || (x == y && a < b);
  });
  double sum = 0;
  for (int i = 0; i < k; ++i) sum += scores[cand[i]];
  for (int i = 0; i < topk; ++i) {
    ids[i] = i < k ? cand[i] : -1;
    weights[i] = i < k && sum > 0 ? static_cast<float>(scores[cand[i]] / sum) : 0.0f;
  }
}

namespace {

constexpr uint64_t kGateStream = 0x6761746573636f72ull;  // "gatescor"
constexpr uint64_t kPopularityStream = 0x706f70756c617269ull;

class RouterSource : public RoutingSource {
 public:
  RouterSource(const std::string& spec, const RoutingParams& p) : spec_(spec), p_(p) {
    // "node-limited,m=4" as the issue writes it, or "node-limited:m=4" as other policy specs do.
    std::string text = spec;
    if (const size_t c = text.find_first_of(",:"); c != std::string::npos) text[c] = ':';
    const PolicySpec ps("router", text);
    kind_ = ps.name();
    ps.allow_only(kind_ == "bias"           ? std::vector<std::string>{"gamma", "m", "skew", "noise"}
                  : kind_ == "node-limited" ? std::vector<std::string>{"m", "skew", "noise"}
                                            : std::vector<std::string>{"skew", "noise"});
    const int default_m = kind_ == "node-limited" ? p.shape.max_nodes_per_token : 0;
    max_nodes_ = ps.integer("m", default_m, 0, std::numeric_limits<int>::max());
    gamma_ = kind_ == "bias" ? ps.number("gamma", 0.001) : 0.0;
    skew_ = ps.number("skew", 1.0);
    noise_ = ps.number("noise", 1.0);
    if (max_nodes_ < 0 || gamma_ < 0 || skew_ < 0 || noise_ < 0)
      throw EplabError("router 'router:" + spec + "': m, gamma, skew and noise must be >= 0");
    if (kind_ == "node-limited" && max_nodes_ < 1)
      throw EplabError("router 'router:" + spec + "': m must be at least 1");
    nodes_ = p.topology.nodes();
  }

  std::string name() const override { return "router:" + spec_; }

  RoutingBatch batch(int step, int layer, int rank) override {
    if (step < 0 || layer < 0 || rank < 0 || rank >= p_.topology.size())
      throw EplabError(name() + ": no batch for step " + std::to_string(step) + ", layer " + std::to_string(layer) +
                       ", rank " + std::to_string(rank));
    return make(step, layer, rank, gamma_ > 0 ? bias_at(step, layer) : std::vector<float>{});
  }

 private:
  // Experts' popularity order differs per layer; scores are sigmoid(-skew * log(1 + popularity rank) + noise).
  std::vector<float> prior(int layer) const {
    const int E = p_.shape.num_experts;
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    SplitMix64 rng(stream_seed(p_.seed, kPopularityStream, layer));
    for (int i = E - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(static_cast<uint32_t>(i + 1))]);
    std::vector<float> logit(E);
    for (int r = 0; r < E; ++r) logit[perm[r]] = static_cast<float>(-skew_ * std::log1p(r));
    return logit;
  }

  RoutingBatch make(int step, int layer, int rank, const std::vector<float>& bias) const {
    const int E = p_.shape.num_experts, K = p_.shape.topk, T = p_.tokens_per_rank;
    RoutingBatch b;
    b.step = step, b.layer = layer, b.src_rank = rank, b.num_tokens = T, b.topk = K;
    b.topk_idx.resize(static_cast<size_t>(T) * K);
    b.topk_weights.resize(static_cast<size_t>(T) * K);
    const std::vector<float> logit = prior(layer);
    std::vector<float> scores(E);
    SplitMix64 rng(stream_seed(p_.seed, kGateStream, step, layer, rank));
    for (int t = 0; t < T; ++t) {
      for (int e = 0; e < E; ++e)
        scores[e] = static_cast<float>(1.0 / (1.0 + std::exp(-(logit[e] + noise_ * rng.normal()))));
      route_token(scores.data(), E, bias, K, nodes_, max_nodes_, b.topk_idx.data() + static_cast<size_t>(t) * K,
                  b.topk_weights.data() + static_cast<size_t>(t) * K);
    }
    return b;
  }

  // The bias in effect at `step`: zero at step 0, then each step's load (all ranks) moves it by +-gamma.
  std::vector<float> bias_at(int step, int layer) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& hist = bias_[layer];
    const int E = p_.shape.num_experts;
    if (hist.empty()) hist.push_back(std::vector<float>(E, 0.0f));
    while (static_cast<int>(hist.size()) <= step) {
      const int s = static_cast<int>(hist.size()) - 1;
      std::vector<double> load(E, 0.0);
      for (int r = 0; r < p_.topology.size(); ++r) {
        const RoutingBatch b = make(s, layer, r, hist[s]);
        for (int32_t e : b.topk_idx)
          if (e >= 0) load[e] += 1;
      }
      const double mean = std::accumulate(load.begin(), load.end(), 0.0) / E;
      std::vector<float> next = hist[s];
      for (int e = 0; e < E; ++e)
        next[e] += load[e] < mean ? static_cast<float>(gamma_) : load[e] > mean ? -static_cast<float>(gamma_) : 0.0f;
      hist.push_back(std::move(next));
    }
    return hist[step];
  }

  std::string spec_, kind_;
  RoutingParams p_;
  int nodes_ = 1, max_nodes_ = 0;
  double gamma_ = 0, skew_ = 1, noise_ = 1;
  std::mutex mu_;
  std::map<int, std::vector<std::vector<float>>> bias_;  // layer -> bias per step
};

std::unique_ptr<RoutingSource> make_router(const std::string& spec, const RoutingParams& params) {
  return std::make_unique<RouterSource>(spec, params);
}

}  // namespace

// One source class serves every kind; the registry names the kinds and their parameters.
EPLAB_REGISTRY(RouterFactory, router_registry, "router", r) {
  r.add("node-limited", "top-k within the M nodes holding a token's best experts (DeepSeek-V3)", &make_router,
        "node-limited[,m=M]");
  r.add("bias", "auxiliary-loss-free balancing: a per-expert selection bias moved toward the mean load", &make_router,
        "bias[,gamma=G,m=M]");
  r.add("topk", "plain top-k of the gate scores (the baseline)", &make_router);
}

std::unique_ptr<RoutingSource> make_router_source(const std::string& spec, const RoutingParams& params) {
  return router_registry().by_name(spec.substr(0, spec.find_first_of(",:")))(spec, params);
}

std::vector<std::string> router_names() { return router_registry().names(); }

}  // namespace eplab
