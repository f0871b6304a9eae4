#include "traces/generators.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <vector>

#include "engine/error.hpp"

namespace eplab {

double SplitMix64::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  const double u1 = 1.0 - uniform();  // (0, 1]: log() stays finite
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double a = 2.0 * M_PI * u2;
  spare_ = r * std::sin(a);
  has_spare_ = true;
  return r * std::cos(a);
}

namespace {

uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Stream labels: a different label per use keeps, say, zipf's expert order independent of its token draws.
enum : uint64_t {
  kUniformStream = 1,
  kDeepepStream,
  kZipfOrderStream,
  kZipfStream,
  kHotOrderStream,
  kHotStream,
  kCorrelatedCoinStream,
  kCorrelatedDrawStream,
  kDeepepFillStream,  // appended: inserting a label would renumber (and change) every stream after it
};

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

// Sorts k Gaussian logits descending and softmaxes them: the weights look like a router's (largest first,
// summing to one) and are independent of which experts were picked.
void softmax_weights(SplitMix64& rng, float* w, int k) {
  double logits[64];
  std::vector<double> big;
  double* l = logits;
  if (k > 64) {
    big.resize(k);
    l = big.data();
  }
  for (int j = 0; j < k; ++j) l[j] = rng.normal();
  std::sort(l, l + k, std::greater<double>());
  double sum = 0;
  for (int j = 0; j < k; ++j) sum += std::exp(l[j] - l[0]);
  for (int j = 0; j < k; ++j) w[j] = static_cast<float>(std::exp(l[j] - l[0]) / sum);
}

bool contains(const int32_t* ids, int n, int32_t e) { return std::find(ids, ids + n, e) != ids + n; }

// k distinct experts out of e_count, uniformly, without touching shared state (random access per token).
void draw_distinct(SplitMix64& rng, int e_count, int k, int32_t* out) {
  if (2 * k <= e_count) {
    for (int j = 0; j < k; ++j) {
      int32_t e;
      do e = static_cast<int32_t>(rng.below(e_count));
      while (contains(out, j, e));
      out[j] = e;
    }
    return;
  }
  std::vector<int32_t> perm(e_count);
  std::iota(perm.begin(), perm.end(), 0);
  for (int j = 0; j < k; ++j) {
    std::swap(perm[j], perm[j + rng.below(e_count - j)]);
    out[j] = perm[j];
  }
}

std::vector<int32_t> shuffled_experts(int e_count, uint64_t seed) {
  std::vector<int32_t> perm(e_count);
  std::iota(perm.begin(), perm.end(), 0);
  SplitMix64 rng(seed);
  for (int i = e_count - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(i + 1)]);
  return perm;
}

// ---------------------------------------------------------------------------------------------------------
// Spec parsing: "name" or "name:key=value,key=value" (zipf also takes a bare exponent: "zipf:1.2").

struct Spec {
  std::string text;  // as given, for messages
  std::string name;
  std::string args;
};

[[noreturn]] void bad_spec(const Spec& s, const std::string& why, const char* usage) {
  throw EplabError("routing '" + s.text + "': " + why + " (expected " + usage + ")");
}

std::map<std::string, std::string> parse_kv(const Spec& s, const std::vector<std::string>& keys, const char* usage) {
  std::map<std::string, std::string> kv;
  if (s.args.empty()) return kv;
  size_t pos = 0;
  while (pos <= s.args.size()) {
    size_t comma = s.args.find(',', pos);
    if (comma == std::string::npos) comma = s.args.size();
    const std::string item = s.args.substr(pos, comma - pos);
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) bad_spec(s, "parameter '" + item + "' is not key=value", usage);
    const std::string key = item.substr(0, eq);
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      std::string known;
      for (auto& k : keys) known += (known.empty() ? "" : ", ") + k;
      bad_spec(s, "unknown parameter '" + key + "' (known: " + known + ")", usage);
    }
    if (kv.count(key)) bad_spec(s, "parameter '" + key + "' given twice", usage);
    kv[key] = item.substr(eq + 1);
    pos = comma + 1;
  }
  return kv;
}

double parse_number(const Spec& s, const std::string& key, const std::string& v, double lo, double hi,
                    const char* usage) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (v.empty() || used != v.size() || !std::isfinite(x)) bad_spec(s, key + " '" + v + "' is not a number", usage);
  if (x < lo || x > hi) bad_spec(s, key + " = " + v + " is outside [" + fmt(lo) + ", " + fmt(hi) + "]", usage);
  return x;
}

int parse_int(const Spec& s, const std::string& key, const std::string& v, int lo, int hi, const char* usage) {
  const double x = parse_number(s, key, v, lo, hi, usage);
  if (x != std::floor(x)) bad_spec(s, key + " = " + v + " is not a whole number", usage);
  return static_cast<int>(x);
}

// ---------------------------------------------------------------------------------------------------------

class Generator : public RoutingSource {
 public:
  Generator(std::string name, const RoutingParams& p)
      : name_(std::move(name)), p_(p), num_experts_(p.shape.num_experts), topk_(p.shape.topk) {
    if (num_experts_ < 1)
      throw EplabError("routing '" + name_ + "': model '" + p.shape.name + "' has " + std::to_string(num_experts_) +
                       " experts, expected >= 1");
    if (topk_ < 1 || topk_ > num_experts_)
      throw EplabError("routing '" + name_ + "': model '" + p.shape.name + "' has top-k " + std::to_string(topk_) +
                       ", expected between 1 and its " + std::to_string(num_experts_) + " experts");
    if (p.tokens_per_rank < 1)
      throw EplabError("routing '" + name_ + "': tokens per rank is " + std::to_string(p.tokens_per_rank) +
                       ", expected >= 1");
  }
  std::string name() const override { return name_; }
  bool concurrent() const override { return true; }  // fill() is a pure function of (params, step, layer, rank)

  RoutingBatch batch(int step, int layer, int rank) override {
    if (step < 0 || layer < 0 || rank < 0 || rank >= p_.topology.size())
      throw EplabError("routing '" + name_ + "': no batch for step " + std::to_string(step) + ", layer " +
                       std::to_string(layer) + ", rank " + std::to_string(rank) + " (ranks are 0.." +
                       std::to_string(p_.topology.size() - 1) + ", steps and layers >= 0)");
    RoutingBatch b;
    b.step = step;
    b.layer = layer;
    b.src_rank = rank;
    b.num_tokens = p_.tokens_per_rank;
    b.topk = topk_;
    b.topk_idx.resize(static_cast<size_t>(b.num_tokens) * topk_);
    b.topk_weights.resize(b.topk_idx.size());
    fill(b);
    return b;
  }

 protected:
  virtual void fill(RoutingBatch& b) const = 0;
  int32_t* ids(RoutingBatch& b, int t) const { return b.topk_idx.data() + static_cast<size_t>(t) * topk_; }
  float* weights(RoutingBatch& b, int t) const { return b.topk_weights.data() + static_cast<size_t>(t) * topk_; }

  std::string name_;
  RoutingParams p_;
  int num_experts_;
  int topk_;
};

class UniformRouting : public Generator {
 public:
  using Generator::Generator;

 protected:
  void fill(RoutingBatch& b) const override {
    SplitMix64 rng(stream_seed(p_.seed, kUniformStream, b.step, b.layer, b.src_rank));
    // Partial Fisher-Yates over a permutation carried from token to token: each draw is uniform over the
    // experts not yet picked for this token, whatever order earlier tokens left behind.
    std::vector<int32_t> perm(num_experts_);
    std::iota(perm.begin(), perm.end(), 0);
    for (int t = 0; t < b.num_tokens; ++t) {
      int32_t* out = ids(b, t);
      for (int j = 0; j < topk_; ++j) {
        std::swap(perm[j], perm[j + rng.below(num_experts_ - j)]);
        out[j] = perm[j];
      }
      softmax_weights(rng, weights(b, t), topk_);
    }
  }
};

// Quantile of |N(0,1)| at u in [0, 1): Phi^-1((1 + u) / 2), by Acklam's rational approximation (relative error
// below 1.2e-9, far under the float precision the weights are stored with).
double half_normal_quantile(double u) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01, -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  const double p = 0.5 * (1.0 + u);
  if (p <= 0.97575) {
    const double q = p - 0.5, r = q * q;
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
           (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  const double q = std::sqrt(-2 * std::log(0.5 * (1.0 - u)));  // 1 - p, without cancellation
  return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
         ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
}

// DeepEP's tests/test_internode.py: scores = |randn| + 1 per expert; keep the top-M nodes by their best
// expert score; take the top-k experts inside those nodes. Weights are the chosen scores normalized to one.
//
// Which experts win depends only on the order of the iid scores, so the generator works with uniform ranks
// u = F(score) and turns only the chosen ones into scores (score = 1 + F^-1(u)), which is the same
// distribution at a fraction of the cost (a Box-Muller normal per (token, expert) took ~26 ms per 4096-token
// batch of DeepSeek-V3). It draws no more than needed: a node's best rank among m experts is U^(1/m); only kept
// nodes get their other experts, which are iid uniform below the best, with the best at a uniform position.
class DeepepRouting : public Generator {
 public:
  DeepepRouting(std::string name, const RoutingParams& p, bool gate_scores)
      : Generator(std::move(name), p), gate_scores_(gate_scores) {
    nodes_ = p.topology.nodes();
    max_nodes_ = p.shape.max_nodes_per_token > 0 ? std::min(nodes_, p.shape.max_nodes_per_token) : nodes_;
    // Experts sit on nodes in contiguous blocks (num_experts / nodes each when it divides).
    first_.assign(nodes_ + 1, 0);
    for (int e = 0; e < num_experts_; ++e)
      ++first_[static_cast<int>(static_cast<int64_t>(e) * nodes_ / num_experts_) + 1];
    std::vector<int> per_node(nodes_);
    for (int n = 0; n < nodes_; ++n) {
      per_node[n] = first_[n + 1];
      first_[n + 1] += first_[n];
    }
    equal_nodes_ = std::all_of(per_node.begin(), per_node.end(), [&](int m) { return m == per_node[0]; });
    std::sort(per_node.begin(), per_node.end());
    const int worst = std::accumulate(per_node.begin(), per_node.begin() + max_nodes_, 0);
    if (worst < topk_)
      throw EplabError("routing '" + name_ + "': " + std::to_string(num_experts_) + " experts over " +
                       std::to_string(nodes_) + " nodes leave only " + std::to_string(worst) + " experts in the " +
                       std::to_string(max_nodes_) + " node(s) a token may use, fewer than top-" +
                       std::to_string(topk_) + "; use fewer nodes or a larger max_nodes_per_token");
  }

 protected:
  void fill(RoutingBatch& b) const override {
    SplitMix64 rng(stream_seed(p_.seed, kDeepepStream, b.step, b.layer, b.src_rank));
    // The scores of experts in dropped nodes come from a stream of their own, so asking for gate scores does
    // not change the routing.
    SplitMix64 fill_rng(stream_seed(p_.seed, kDeepepFillStream, b.step, b.layer, b.src_rank));
    if (gate_scores_) b.gate_scores.resize(static_cast<size_t>(b.num_tokens) * num_experts_);
    std::vector<double> key(nodes_), best(nodes_), u(num_experts_);
    struct Ranked {
      double v;
      int32_t i;
    };
    std::vector<Ranked> kept_nodes(max_nodes_);  // the kept nodes, best key first
    std::vector<Ranked> cand(topk_);             // the best experts so far among the kept nodes, best first
    std::vector<char> node_kept(nodes_);
    // The best of m uniform ranks is U^(1/m); with equal m on every node U orders nodes the same way.
    const auto node_best = [&](int n, double v) {
      const int m = first_[n + 1] - first_[n];
      return m == 1 ? v : std::exp(std::log(v) / m);
    };
    const auto fill_node = [&](SplitMix64& r, int n) {
      const int m = first_[n + 1] - first_[n];
      const int top = first_[n] + static_cast<int>(r.below(m));
      for (int e = first_[n]; e < first_[n + 1]; ++e) u[e] = e == top ? best[n] : best[n] * r.uniform();
    };
    // Inserts x into the list[0, size) sorted by value, best first, of at most cap entries, dropping the worst
    // when full; the lists are short (top-M nodes, top-k experts), so this beats sorting every candidate.
    // Candidates arrive in increasing index order, so keeping an earlier equal value ahead breaks ties (impossible
    // in practice with continuous scores) toward the lower index: the result is a partial_sort's by (value
    // descending, index ascending).
    const auto insert_top = [](Ranked* list, int& size, int cap, Ranked x) {
      if (size == cap && !(x.v > list[size - 1].v)) return;
      int i = size < cap ? size++ : size - 1;
      for (; i > 0 && x.v > list[i - 1].v; --i) list[i] = list[i - 1];
      list[i] = x;
    };
    std::vector<double> big;
    for (int t = 0; t < b.num_tokens; ++t) {
      int kept = 0;
      for (int n = 0; n < nodes_; ++n) {
        const int m = first_[n + 1] - first_[n];
        const double v = 1.0 - rng.uniform();  // (0, 1]
        key[n] = m == 0 ? -HUGE_VAL : equal_nodes_ ? v : std::log(v) / m;
        best[n] = m == 0 ? 0.0 : equal_nodes_ ? v : node_best(n, v);
        insert_top(kept_nodes.data(), kept, max_nodes_, {key[n], n});
      }
      std::fill(node_kept.begin(), node_kept.end(), 0);
      for (int i = 0; i < kept; ++i) node_kept[kept_nodes[i].i] = 1;
      int chosen = 0;
      for (int n = 0; n < nodes_; ++n) {
        if (!node_kept[n] || first_[n + 1] == first_[n]) continue;
        if (equal_nodes_) best[n] = node_best(n, best[n]);
        fill_node(rng, n);
        for (int32_t e = first_[n]; e < first_[n + 1]; ++e) insert_top(cand.data(), chosen, topk_, {u[e], e});
      }
      int32_t* out = ids(b, t);
      float* w = weights(b, t);
      double score[64], sum = 0;
      double* sc = score;
      if (topk_ > 64) {
        big.resize(topk_);
        sc = big.data();
      }
      for (int j = 0; j < topk_; ++j) sum += sc[j] = 1.0 + half_normal_quantile(cand[j].v);
      for (int j = 0; j < topk_; ++j) {
        out[j] = cand[j].i;
        w[j] = static_cast<float>(sc[j] / sum);
      }
      if (gate_scores_) {
        for (int n = 0; n < nodes_; ++n)
          if (!node_kept[n] && first_[n + 1] > first_[n]) {
            if (equal_nodes_) best[n] = node_best(n, best[n]);
            fill_node(fill_rng, n);
          }
        for (int e = 0; e < num_experts_; ++e)
          b.gate_scores[static_cast<size_t>(t) * num_experts_ + e] =
              static_cast<float>(1.0 + half_normal_quantile(u[e]));
      }
    }
  }

 private:
  bool gate_scores_;
  bool equal_nodes_ = true;
  int nodes_ = 1;
  int max_nodes_ = 1;
  std::vector<int> first_;  // [nodes + 1] first expert of each node
};

// Sampling k distinct experts with probability proportional to w (successive sampling without
// replacement): rejection of repeats is fast unless a few experts hold nearly all the mass, where an exact
// linear walk over the remaining experts takes over.
void draw_weighted_distinct(SplitMix64& rng, const std::vector<double>& w, const std::vector<double>& cdf, int k,
                            int32_t* out) {
  const int n = static_cast<int>(w.size());
  const double total = cdf.back();
  for (int j = 0; j < k; ++j) {
    int32_t e = -1;
    for (int tries = 0; tries < 64 && e < 0; ++tries) {
      const double u = rng.uniform() * total;
      int32_t c = static_cast<int32_t>(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
      c = std::min(c, n - 1);
      if (!contains(out, j, c)) e = c;
    }
    if (e < 0) {
      double left = total;
      for (int i = 0; i < j; ++i) left -= w[out[i]];
      double u = rng.uniform() * left;
      for (int32_t c = 0; c < n; ++c) {
        if (contains(out, j, c)) continue;
        e = c;  // the last unpicked expert absorbs rounding
        if ((u -= w[c]) < 0) break;
      }
    }
    out[j] = e;
  }
}

// Expert popularity ~ 1 / rank^S over an expert order shuffled per (seed, layer): each layer has its own
// hot experts, fixed across steps.
class ZipfRouting : public Generator {
 public:
  ZipfRouting(std::string name, const RoutingParams& p, double s) : Generator(std::move(name), p), s_(s) {}

 protected:
  void fill(RoutingBatch& b) const override {
    const std::vector<int32_t> order = shuffled_experts(num_experts_, stream_seed(p_.seed, kZipfOrderStream, b.layer));
    std::vector<double> w(num_experts_), cdf(num_experts_);
    for (int r = 0; r < num_experts_; ++r) w[order[r]] = std::pow(r + 1.0, -s_);
    std::partial_sum(w.begin(), w.end(), cdf.begin());
    SplitMix64 rng(stream_seed(p_.seed, kZipfStream, b.step, b.layer, b.src_rank));
    for (int t = 0; t < b.num_tokens; ++t) {
      draw_weighted_distinct(rng, w, cdf, topk_, ids(b, t));
      softmax_weights(rng, weights(b, t), topk_);
    }
  }

 private:
  double s_;
};

// A hot set of K experts receives a fraction F of the selections; it moves every N steps to the next K
// experts of a per-(seed, layer) shuffled order, so consecutive hot sets are disjoint while 2K <= experts.
class HotsetRouting : public Generator {
 public:
  HotsetRouting(std::string name, const RoutingParams& p, int k, double frac, int every)
      : Generator(std::move(name), p), hot_(k), frac_(frac), every_(every) {}

 protected:
  void fill(RoutingBatch& b) const override {
    const std::vector<int32_t> order = shuffled_experts(num_experts_, stream_seed(p_.seed, kHotOrderStream, b.layer));
    const int64_t epoch = b.step / every_;
    std::vector<char> is_hot(num_experts_, 0);
    std::vector<int32_t> hot, cold;
    for (int i = 0; i < hot_; ++i) is_hot[order[(epoch * hot_ + i) % num_experts_]] = 1;
    for (int e = 0; e < num_experts_; ++e) (is_hot[e] ? hot : cold).push_back(e);
    SplitMix64 rng(stream_seed(p_.seed, kHotStream, b.step, b.layer, b.src_rank));
    for (int t = 0; t < b.num_tokens; ++t) {
      int32_t* out = ids(b, t);
      int hot_used = 0;
      for (int j = 0; j < topk_; ++j) {
        bool pick_hot = rng.uniform() < frac_;
        if (pick_hot && hot_used == hot_) pick_hot = false;
        if (!pick_hot && j - hot_used == static_cast<int>(cold.size())) pick_hot = true;
        const std::vector<int32_t>& group = pick_hot ? hot : cold;
        int32_t e = -1;
        for (int tries = 0; tries < 32 && e < 0; ++tries) {
          const int32_t c = group[rng.below(static_cast<uint32_t>(group.size()))];
          if (!contains(out, j, c)) e = c;
        }
        if (e < 0) {  // the group is nearly used up by this token: pick among what is left of it
          std::vector<int32_t> left;
          for (int32_t c : group)
            if (!contains(out, j, c)) left.push_back(c);
          e = left[rng.below(static_cast<uint32_t>(left.size()))];
        }
        out[j] = e;
        hot_used += pick_hot;
      }
      softmax_weights(rng, weights(b, t), topk_);
    }
  }

 private:
  int hot_;
  double frac_;
  int every_;
};

// Layer-correlated: at layer l > 0 a token keeps its layer l-1 routing (ids and weights) with probability
// rho and draws afresh (uniformly) otherwise. To stay random-access, a token at layer l walks back through
// its per-layer coins to the last layer where it drew afresh, and redraws that layer's choice from its
// per-(step, layer, rank, token) stream.
class CorrelatedRouting : public Generator {
 public:
  CorrelatedRouting(std::string name, const RoutingParams& p, double rho) : Generator(std::move(name), p), rho_(rho) {}

 protected:
  void fill(RoutingBatch& b) const override {
    for (int t = 0; t < b.num_tokens; ++t) {
      int j = b.layer;
      while (j > 0 &&
             SplitMix64(stream_seed(p_.seed, kCorrelatedCoinStream, b.step, j, b.src_rank, t)).uniform() < rho_)
        --j;
      SplitMix64 rng(stream_seed(p_.seed, kCorrelatedDrawStream, b.step, j, b.src_rank, t));
      draw_distinct(rng, num_experts_, topk_, ids(b, t));
      softmax_weights(rng, weights(b, t), topk_);
    }
  }

 private:
  double rho_;
};

}  // namespace

uint64_t stream_seed(uint64_t seed, uint64_t label, int64_t a, int64_t b, int64_t c, int64_t d) {
  uint64_t h = mix64(seed);
  h = mix64(h ^ label);
  h = mix64(h ^ static_cast<uint64_t>(a));
  h = mix64(h ^ static_cast<uint64_t>(b));
  h = mix64(h ^ static_cast<uint64_t>(c));
  return mix64(h ^ static_cast<uint64_t>(d));
}

std::unique_ptr<RoutingSource> make_generator(const std::string& text, const RoutingParams& p) {
  Spec s{text, text, ""};
  if (const size_t colon = text.find(':'); colon != std::string::npos) {
    s.name = text.substr(0, colon);
    s.args = text.substr(colon + 1);
  }
  if (s.name == "uniform") {
    if (!s.args.empty()) bad_spec(s, "uniform takes no parameters", "uniform");
    return std::make_unique<UniformRouting>("uniform", p);
  }
  if (s.name == "deepep") {
    const char* usage = "deepep or deepep:scores=1";
    auto kv = parse_kv(s, {"scores"}, usage);
    const bool scores = kv.count("scores") && parse_int(s, "scores", kv["scores"], 0, 1, usage) == 1;
    return std::make_unique<DeepepRouting>(scores ? "deepep:scores=1" : "deepep", p, scores);
  }
  if (s.name == "zipf") {
    const char* usage = "zipf:S with exponent S >= 0, e.g. zipf:1.2";
    if (s.args.empty()) bad_spec(s, "missing the exponent", usage);
    std::string v = s.args;
    if (v.find('=') != std::string::npos) v = parse_kv(s, {"s"}, usage)["s"];
    const double exponent = parse_number(s, "exponent", v, 0, 100, usage);
    return std::make_unique<ZipfRouting>("zipf:" + fmt(exponent), p, exponent);
  }
  if (s.name == "hotset") {
    const char* usage = "hotset:k=K,frac=F,every=N with 1 <= K < experts, 0 <= F <= 1, N >= 1";
    auto kv = parse_kv(s, {"k", "frac", "every"}, usage);
    const int e = p.shape.num_experts;
    const int k = kv.count("k") ? parse_int(s, "k", kv["k"], 1, std::max(1, e - 1), usage)
                                : std::clamp(e / 16, 1, std::max(1, e - 1));
    const double frac = kv.count("frac") ? parse_number(s, "frac", kv["frac"], 0, 1, usage) : 0.5;
    const int every = kv.count("every") ? parse_int(s, "every", kv["every"], 1, 1 << 30, usage) : 10;
    if (k >= e) bad_spec(s, "the model has only " + std::to_string(e) + " experts, no room for a hot set", usage);
    const std::string name = "hotset:k=" + std::to_string(k) + ",frac=" + fmt(frac) + ",every=" + std::to_string(every);
    return std::make_unique<HotsetRouting>(name, p, k, frac, every);
  }
  if (s.name == "correlated") {
    const char* usage = "correlated:rho=R with 0 <= R <= 1";
    auto kv = parse_kv(s, {"rho"}, usage);
    const double rho = kv.count("rho") ? parse_number(s, "rho", kv["rho"], 0, 1, usage) : 0.8;
    return std::make_unique<CorrelatedRouting>("correlated:rho=" + fmt(rho), p, rho);
  }
  return nullptr;
}

}  // namespace eplab
