#include "traces/generators.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <map>
#include <memory>
#include <numeric>
#include <vector>

#include "engine/error.hpp"

namespace eplab {

namespace {

// Marsaglia and Tsang's ziggurat for e^-x (J. Stat. Softw. 5(8), 2000) with 256 layers of area kV each: layer 0
// is the base strip (the rectangle [0, kR] x [0, e^-kR] plus the tail beyond kR), layers 1..255 the rectangles
// [0, x_i] x [e^-x_i, e^-x_(i-1)] stacked on it, x_255 = kR down to x_0 = 0. Unlike their 32-bit version, the
// layer index and the abscissa come from disjoint bits of one 64-bit draw.
class ExpZiggurat {
 public:
  static const ExpZiggurat& get() {
    static const ExpZiggurat z;
    return z;
  }

  // Exp(1): one draw, a compare and a multiply 99% of the time.
  template <class Rng>
  double sample(Rng& rng) const {
    const uint64_t bits = rng.next();
    const int i = static_cast<int>(bits & 255);
    const uint64_t j = bits >> 11;  // 53 bits, disjoint from the layer's 8
    const double x = static_cast<double>(j) * w_[i];
    if (j < k_[i]) [[likely]]
      return x;
    return outside(rng, i, x);
  }

 private:
  static constexpr double kR = 7.69711747013104972;
  static constexpr double kV = 3.949659822581572e-3;

  ExpZiggurat() {
    constexpr double m = 0x1.0p53;
    const double q = kV / std::exp(-kR);  // the base strip's width if it were a rectangle
    k_[0] = static_cast<uint64_t>(kR / q * m);
    k_[1] = 0;
    w_[0] = q / m;
    w_[255] = kR / m;
    f_[0] = 1;
    f_[255] = std::exp(-kR);
    double x = kR, prev = kR;
    for (int i = 254; i >= 1; --i) {
      x = -std::log(kV / x + std::exp(-x));
      k_[i + 1] = static_cast<uint64_t>(x / prev * m);
      prev = x;
      f_[i] = std::exp(-x);
      w_[i] = x / m;
    }
  }

  // The draw fell in a layer's part that sticks out of the curve, or in the base strip past kR.
  template <class Rng>
  [[gnu::noinline]] double outside(Rng& rng, int i, double x) const {
    for (;;) {
      if (i == 0) return kR - std::log(1.0 - rng.uniform());  // the tail beyond kR is kR + Exp(1)
      if (f_[i] + rng.uniform() * (f_[i - 1] - f_[i]) < std::exp(-x)) return x;
      const uint64_t bits = rng.next();
      i = static_cast<int>(bits & 255);
      const uint64_t j = bits >> 11;
      x = static_cast<double>(j) * w_[i];
      if (j < k_[i]) return x;
    }
  }

  uint64_t k_[256];  // a 53-bit draw below k_[i] lands inside the curve without further test
  double w_[256];    // abscissa per unit of the 53-bit draw
  double f_[256];    // e^-x_i
};

// A SplitMix64 stream whose draws are computed a block ahead: draw n is mix64 of the seed advanced n times, a
// pure function of n, so a block is one loop without a carried dependency (AVX-512 multiplies 8 at once).
// next(), uniform() and below() give exactly SplitMix64's sequence.
class BlockStream {
 public:
  explicit BlockStream(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    if (pos_ == kBlock) refill();
    return buf_[pos_++];
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  static constexpr int kBlock = 256;
  static constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ull;

  [[gnu::always_inline]] static inline void fill(uint64_t state, uint64_t* out) {
    for (int i = 0; i < kBlock; ++i) out[i] = mix64(state + static_cast<uint64_t>(i) * kGamma);
  }
  static void fill_default(uint64_t state, uint64_t* out) { fill(state, out); }
  [[gnu::target("avx512f,avx512dq")]] static void fill_avx512(uint64_t state, uint64_t* out) { fill(state, out); }

  void refill() {
    static const bool wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    if (wide)
      fill_avx512(state_, buf_);
    else
      fill_default(state_, buf_);
    state_ += kBlock * kGamma;
    pos_ = 0;
  }

  uint64_t state_;
  int pos_ = kBlock;
  uint64_t buf_[kBlock];
};

}  // namespace

double SplitMix64::exponential() { return ExpZiggurat::get().sample(*this); }

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

// The quantile of |N(0,1)| at u in [0, 1): Phi^-1((1 + u) / 2), by Acklam's rational approximation (relative error
// below 1.2e-9, far under the float precision the weights are stored with). The central region covers
// p = (1 + u) / 2 <= 0.97575, i.e. u <= 0.9515; above it the tail formula takes 1 - u.
constexpr double kHalfNormalCentralEnd = 0.9515;

double half_normal_central(double u) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01, -1.328068155288572e+01};
  const double p = 0.5 * (1.0 + u);
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

// The tail formula from log(1 - p) = log(0.5 * (1 - u)).
double half_normal_tail(double log_one_minus_p) {
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  const double q = std::sqrt(-2 * log_one_minus_p);
  return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
         ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
}

// For ranks drawn in log space (half_normal_quantile_log): in the tail x = -log_u is below 0.0497 and
// log(1 - u) = log(1 - e^-x) = log(x) + log((1 - e^-x) / x), whose second term is the series
// -x/2 + x^2/24 - x^4/2880 + x^6/181440 - ... (next term below 1e-17 here): one log, and no cancellation
// however close u is to 1 (where the top-k ranks are).
constexpr double kLogCentralEnd = -0.04971559224593286;  // log(kHalfNormalCentralEnd)

double tail_log_one_minus_p(double log_u) {
  const double x = -log_u, x2 = x * x;
  return std::log(x) + x * (-1.0 / 2 + x * (1.0 / 24 + x2 * (-1.0 / 2880 + x2 * (1.0 / 181440)))) - M_LN2;
}

}  // namespace

double half_normal_quantile(double u) {
  return 0.5 * (1.0 + u) <= 0.97575 ? half_normal_central(u)
                                    : half_normal_tail(std::log(0.5 * (1.0 - u)));  // 1 - p, without cancellation
}

double half_normal_quantile_log(double log_u) {
  return log_u <= kLogCentralEnd ? half_normal_central(std::exp(log_u)) : half_normal_tail(tail_log_one_minus_p(log_u));
}

namespace {

// The widest vectors deepep's merge may use on this CPU: 0 SSE2, 1 AVX2, 2 AVX-512. Every width gives the same
// picks; EPLAB_ROUTING_ISA=sse2|avx2|avx512 narrows the choice (the tests compare the widths).
int merge_isa() {
  int isa = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
  if (const char* v = std::getenv("EPLAB_ROUTING_ISA")) {
    const std::string want = v;
    const int asked = want == "sse2" ? 0 : want == "avx2" ? 1 : want == "avx512" ? 2 : -1;
    if (asked < 0)
      throw EplabError("EPLAB_ROUTING_ISA='" + want + "': expected sse2, avx2 or avx512");
    isa = std::min(isa, asked);
  }
  return isa;
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
  int fixed_tokens() const override { return p_.tokens_per_rank; }

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
    if (!sizes_batch()) {
      b.topk_idx.resize(static_cast<size_t>(b.num_tokens) * topk_);
      b.topk_weights.resize(b.topk_idx.size());
    }
    fill(b);
    return b;
  }

 protected:
  virtual void fill(RoutingBatch& b) const = 0;
  // True where fill() sizes topk_idx and topk_weights itself (writing each entry once, with no zero-fill first).
  virtual bool sizes_batch() const { return false; }
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

// DeepEP's tests/test_internode.py: scores = |randn| + 1 per expert; keep the top-M nodes by their best
// expert score; take the top-k experts inside those nodes. Weights are the chosen scores normalized to one.
//
// Which experts win depends only on the order of the iid scores, so the generator works with uniform ranks
// u = F(score) and turns only the chosen ones into scores (score = 1 + F^-1(u)), which is the same
// distribution at a fraction of the cost (a Box-Muller normal per (token, expert) took ~26 ms per 4096-token
// batch of DeepSeek-V3).
//
// With m experts on every node (the usual case) it draws only the order statistics the choice depends on, in
// log space (log of a uniform on (0, 1] is minus an Exp(1) variate, so no pow):
//  - a node's best rank among its m experts is U^(1/m) with U uniform, so nodes rank by U. The top M of N iid
//    uniforms, best first, are U(1) = W1^(1/N), U(j) = U(j-1) * Wj^(1/(N-j+1)) (Wj iid uniform), and which
//    nodes hold them is a uniformly random ordered M-subset of the nodes;
//  - a kept node's best expert has rank V = U(j)^(1/m), at a uniformly random position in the node; its other
//    m - 1 experts are iid uniform below V, so their ranks, best first, are next = prev * W^(1/remaining), each
//    at a uniformly random position not yet used;
//  - the top k over the kept nodes is a k-way merge of those descending sequences, drawing a node's next rank
//    only when its current one is taken.
// That is M + k - 1 Exp(1) draws (a ziggurat: no log) and M + k index draws per token, and one log or exp per
// chosen expert for its score, instead of a uniform per expert of the kept nodes. With gate scores, everything not
// drawn is filled in from its conditional distribution, from a stream of its own (so asking for scores does not change
// the routing): a kept node's experts not yet drawn are iid uniform below its smallest drawn rank, and a dropped node's
// experts are iid uniform below V(M), the M-th kept node's best (N - M iid uniforms below U(M), each the best of m iid
// uniforms).
//
// Unequal nodes (num_experts not a multiple of the nodes) take the direct path: a rank per node, the kept
// nodes' experts drawn in full below each node's best.
// deepep's merge vectors: L doubles (and L int32 for the picks it writes out).
template <int L>
struct MergeLanes;
template <>
struct MergeLanes<2> {
  typedef double Doubles __attribute__((vector_size(16)));
  typedef int32_t Ints __attribute__((vector_size(8)));
};
template <>
struct MergeLanes<4> {
  typedef double Doubles __attribute__((vector_size(32)));
  typedef int32_t Ints __attribute__((vector_size(16)));
};
template <>
struct MergeLanes<8> {
  typedef double Doubles __attribute__((vector_size(64)));
  typedef int32_t Ints __attribute__((vector_size(32)));
};

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
    inv_.resize(std::max(nodes_, num_experts_) + 1);
    for (size_t i = 1; i < inv_.size(); ++i) inv_[i] = 1.0 / static_cast<double>(i);
  }

 protected:
  bool sizes_batch() const override { return equal_nodes_; }
  void fill(RoutingBatch& b) const override {
    if (gate_scores_) b.gate_scores.resize(static_cast<size_t>(b.num_tokens) * num_experts_);
    if (equal_nodes_)
      fill_equal_nodes(b);
    else
      fill_direct(b);
  }

 private:
  struct Ranked {
    double v;
    int32_t i;
  };

  // Writes a token's ids and weights from its top-k experts and their scores, best first.
  void write_token(RoutingBatch& b, int t, const Ranked* cand, const double* score) const {
    int32_t* out = ids(b, t);
    float* w = weights(b, t);
    double sum = 0;
    for (int j = 0; j < topk_; ++j) sum += score[j];
    const double inv_sum = 1.0 / sum;
    for (int j = 0; j < topk_; ++j) {
      out[j] = cand[j].i;
      w[j] = static_cast<float>(score[j] * inv_sum);
    }
  }

  // The top k of the kept nodes' descending log-rank sequences for L tokens at once, lane l being token l of the
  // group (every array is [index][kChunk tokens], the group's tokens at t): pick c is log_rank[c], from slot
  // from[c], which earlier picks took used[c] experts of. A slot's next rank, head - e[c] * (1 / left), replaces
  // its head only once the head is taken; e[c] is the token's c-th Exp(1) variate after its kept nodes' ones. head
  // and left (ranks not yet drawn) are per slot. Every operation is the scalar merge's, lane by lane (compares and
  // selects, one multiply and one subtraction per new rank, 1 / left by IEEE division as the inv_ table holds it),
  // so the picks are bit for bit the same; the lanes are independent tokens, so there is no branch on the data
  // and the picks of several tokens overlap.
  template <int L>
  using Lanes = typename MergeLanes<L>::Doubles;

  // By reference: a vector this wide passed by value would depend on the target's ABI.
  template <int L>
  [[gnu::always_inline]] static inline void load(Lanes<L>& v, const double* p) {
    std::memcpy(&v, p, sizeof v);
  }
  template <int L>
  [[gnu::always_inline]] static inline void store(double* p, const Lanes<L>& v) {
    std::memcpy(p, &v, sizeof v);
  }
  template <int L>
  [[gnu::always_inline]] static inline void store_int(int32_t* p, const Lanes<L>& v) {
    using Ints = typename MergeLanes<L>::Ints;
    const Ints i = __builtin_convertvector(v, Ints);
    std::memcpy(p, &i, sizeof i);
  }

  // state: 3 * kept vectors (head, left, 1 / left per slot), a local array when KEPT is fixed (registers, once
  // the loops over the slots are unrolled).
  template <int L, int KEPT>
  [[gnu::always_inline]] inline void merge_core(Lanes<L>* state, int kept_n, const double* e, double* head_io,
                                                double* left_io, int32_t* from, int32_t* used,
                                                double* log_rank) const {
    const int kept = KEPT > 0 ? KEPT : kept_n;
    Lanes<L>* head = state;
    Lanes<L>* left = state + kept;
    Lanes<L>* inv = state + 2 * kept;  // a slot's left changes only when it is taken, and its 1 / left with it
    const double m1 = first_[1] - 1;
    for (int j = 0; j < kept; ++j) {
      load<L>(head[j], head_io + j * kChunk);
      load<L>(left[j], left_io + j * kChunk);
      inv[j] = 1.0 / left[j];
    }
    const Lanes<L> none = Lanes<L>{} - HUGE_VAL;
    for (int c = 0; c < topk_; ++c) {
      Lanes<L> top = head[0], taken = Lanes<L>{}, left_t = left[0], inv_t = inv[0];
      for (int j = 1; j < kept; ++j) {
        const auto above = head[j] > top;
        top = above ? head[j] : top;
        taken = above ? Lanes<L>{} + j : taken;
        left_t = above ? left[j] : left_t;
        inv_t = above ? inv[j] : inv_t;
      }
      // The slot and how many of its experts earlier picks took (m - 1 - left: the last one leaves left at 0).
      store_int<L>(from + c * kChunk, taken);
      store_int<L>(used + c * kChunk, m1 - left_t);
      store<L>(log_rank + c * kChunk, top);
      if (c == topk_ - 1) break;
      Lanes<L> ec;
      load<L>(ec, e + c * kChunk);
      const auto more = left_t > 0;
      const Lanes<L> next = more ? top - ec * inv_t : none;  // the scalar merge's top - e * inv_[left]
      const Lanes<L> left_next = more ? left_t - 1 : left_t;
      const Lanes<L> inv_next = 1.0 / left_next;  // inf once left is 0, where it is never used
      for (int j = 0; j < kept; ++j) {
        const auto now = taken == j;
        head[j] = now ? next : head[j];
        left[j] = now ? left_next : left[j];
        inv[j] = now ? inv_next : inv[j];
      }
    }
    for (int j = 0; j < kept; ++j) {
      store<L>(head_io + j * kChunk, head[j]);
      store<L>(left_io + j * kChunk, left[j]);
    }
  }

  template <int L, int KEPT>
  [[gnu::always_inline]] inline void merge_lanes(int kept_n, const double* e, double* head_io, double* left_io,
                                                 int32_t* from, int32_t* used, double* log_rank) const {
    if constexpr (KEPT > 0) {
      Lanes<L> state[3 * KEPT];
      merge_core<L, KEPT>(state, KEPT, e, head_io, left_io, from, used, log_rank);
    } else {  // more than 8 nodes per token (a model without a node limit on many nodes): rare, so no registers
      // Plain doubles, aligned by hand for the vectors: no std::vector<Lanes> code built for the default ISA.
      constexpr size_t kAlign = sizeof(Lanes<L>);
      std::vector<double> buf(3 * static_cast<size_t>(kept_n) * L + kAlign / sizeof(double));
      void* p = buf.data();
      size_t room = buf.size() * sizeof(double);
      std::align(kAlign, 3 * static_cast<size_t>(kept_n) * kAlign, p, room);
      merge_core<L, 0>(static_cast<Lanes<L>*>(p), kept_n, e, head_io, left_io, from, used, log_rank);
    }
  }

  template <int L, int KEPT>
  [[gnu::always_inline]] inline void merge_chunk(const double* e, double* head, double* left, int32_t* from,
                                                 int32_t* used, double* log_rank) const {
    for (int t = 0; t < kChunk; t += L)
      merge_lanes<L, KEPT>(max_nodes_, e + t, head + t, left + t, from + t, used + t, log_rank + t);
  }

  // A chunk's merges, L tokens per vector (L = 2 fits SSE2, which every x86-64 has; 4 and 8 fill AVX2's and
  // AVX-512's registers). Each width does the same IEEE operations on every lane, so all give the same picks.
  template <int L>
  [[gnu::always_inline]] inline void merge_width(const double* e, double* head, double* left, int32_t* from,
                                                 int32_t* used, double* log_rank) const {
    switch (max_nodes_) {
      case 1: return merge_chunk<L, 1>(e, head, left, from, used, log_rank);
      case 2: return merge_chunk<L, 2>(e, head, left, from, used, log_rank);
      case 3: return merge_chunk<L, 3>(e, head, left, from, used, log_rank);
      case 4: return merge_chunk<L, 4>(e, head, left, from, used, log_rank);
      case 5: return merge_chunk<L, 5>(e, head, left, from, used, log_rank);
      case 6: return merge_chunk<L, 6>(e, head, left, from, used, log_rank);
      case 7: return merge_chunk<L, 7>(e, head, left, from, used, log_rank);
      case 8: return merge_chunk<L, 8>(e, head, left, from, used, log_rank);
      default: return merge_chunk<L, 0>(e, head, left, from, used, log_rank);
    }
  }
  void merge_sse2(const double* e, double* head, double* left, int32_t* from, int32_t* used,
                  double* log_rank) const {
    merge_width<2>(e, head, left, from, used, log_rank);
  }
  [[gnu::target("avx2")]] void merge_avx2(const double* e, double* head, double* left, int32_t* from, int32_t* used,
                                          double* log_rank) const {
    merge_width<4>(e, head, left, from, used, log_rank);
  }
  [[gnu::target("avx512f")]] void merge_avx512(const double* e, double* head, double* left, int32_t* from,
                                               int32_t* used, double* log_rank) const {
    merge_width<8>(e, head, left, from, used, log_rank);
  }
  void merge(const double* e, double* head, double* left, int32_t* from, int32_t* used, double* log_rank) const {
    static const int isa = merge_isa();
    if (isa >= 2) return merge_avx512(e, head, left, from, used, log_rank);
    if (isa == 1) return merge_avx2(e, head, left, from, used, log_rank);
    merge_sse2(e, head, left, from, used, log_rank);
  }

  // fill_equal_nodes' working arrays, kept per thread between batches.
  struct Scratch {
    std::vector<int32_t> node_perm, expert_perm, from, taken_before, chunk_ids;
    std::vector<double> exps, head, left, log_rank, last_log_u;
    std::vector<uint32_t> idx;
  };

  // Tokens go through three passes, a chunk at a time: (1) walk the random stream in its order (per token the
  // kept + topk - 1 Exp(1) variates, then the kept + topk index draws), keeping the draws; (2) the merges, which
  // depend only on a token's own draws, 2 to 8 tokens at once; (3) the permutations carried from token to token,
  // the ids and weights. The draws and their uses are exactly those of drawing token by token, so the batch is
  // the same; only the work is arranged differently.
  static constexpr int kChunk = 128;  // a multiple of the widest merge's 8 lanes

  void fill_equal_nodes(RoutingBatch& b) const {
    BlockStream rng(stream_seed(p_.seed, kDeepepStream, b.step, b.layer, b.src_rank));
    SplitMix64 fill_rng(stream_seed(p_.seed, kDeepepFillStream, b.step, b.layer, b.src_rank));
    const ExpZiggurat& exponential = ExpZiggurat::get();
    const int m = first_[1];
    const int kept = max_nodes_;
    const double inv_m = inv_[m];
    const int n_exp = kept + topk_ - 1;  // per token: the kept nodes' ranks, then the merge's steps
    const int n_idx = kept + topk_;      // per token: which nodes, then which expert of each pick's node
    const int topk = topk_;              // a local: the stores into the batch cannot change it
    // Without scores every weight is 1 / k, as write_token makes it from equal scores. A phantom run's batches
    // are written once (the ids a chunk at a time, the weights in one pass).
    const bool scores = p_.weights || gate_scores_;
    const float equal_weight = static_cast<float>(1.0 * (1.0 / static_cast<double>(topk)));
    const size_t entries = static_cast<size_t>(b.num_tokens) * topk;
    if (scores) {
      b.topk_idx.resize(entries);
      b.topk_weights.resize(entries);
    } else {
      b.topk_idx.reserve(entries);
      b.topk_weights.assign(entries, equal_weight);
    }
    // Partial Fisher-Yates over permutations carried from token to token (nodes; each node's experts within
    // its block): every draw is uniform over what this token has not used, whatever order earlier tokens left.
    // The scratch lives with the thread, which generates many batches: a batch allocates only its own ids and
    // weights, as when it was drawn token by token (with glibc's default thresholds, as in the emu backend, a
    // few more allocations per batch made it give the batch's pages back and fault them in on every batch).
    thread_local Scratch scratch;
    std::vector<int32_t>& node_perm = scratch.node_perm;
    std::vector<int32_t>& expert_perm = scratch.expert_perm;
    node_perm.resize(nodes_);
    expert_perm.resize(num_experts_);
    std::iota(node_perm.begin(), node_perm.end(), 0);
    std::iota(expert_perm.begin(), expert_perm.end(), 0);
    // Per chunk token ([index][token]): its Exp(1) draws; per kept node (slot), best first, the log rank of its
    // best expert not yet taken (-inf when none is left) and how many of its experts below that are not drawn
    // yet; the merge's picks (slot, the slot's picks before, log rank). Padding lanes past the batch's end hold
    // harmless values (draws of earlier chunks, or 1).
    std::vector<double>& exps = scratch.exps;
    std::vector<double>& head = scratch.head;
    std::vector<double>& left = scratch.left;
    std::vector<int32_t>& from = scratch.from;
    std::vector<int32_t>& taken_before = scratch.taken_before;
    std::vector<double>& log_rank = scratch.log_rank;
    std::vector<double>& last_log_u = scratch.last_log_u;
    std::vector<uint32_t>& idx = scratch.idx;  // [token][index]: the index draws' top bits
    std::vector<int32_t>& chunk_ids = scratch.chunk_ids;
    exps.assign(static_cast<size_t>(kChunk) * n_exp, 1.0);
    head.resize(static_cast<size_t>(kChunk) * kept);
    left.resize(static_cast<size_t>(kChunk) * kept);
    from.resize(static_cast<size_t>(kChunk) * topk);
    taken_before.resize(static_cast<size_t>(kChunk) * topk);
    log_rank.resize(static_cast<size_t>(kChunk) * topk);
    last_log_u.resize(kChunk);
    idx.resize(static_cast<size_t>(kChunk) * n_idx);
    chunk_ids.resize(static_cast<size_t>(kChunk) * topk);
    std::vector<int> used(kept), base(kept);
    std::vector<Ranked> cand(topk_);
    std::vector<double> score(topk_, 1.0);
    for (int t0 = 0; t0 < b.num_tokens; t0 += kChunk) {
      const int n = std::min(kChunk, b.num_tokens - t0);
      for (int t = 0; t < n; ++t) {
        for (int i = 0; i < n_exp; ++i) exps[static_cast<size_t>(i) * kChunk + t] = exponential.sample(rng);
        uint32_t* x = idx.data() + static_cast<size_t>(t) * n_idx;
        for (int i = 0; i < n_idx; ++i) x[i] = static_cast<uint32_t>(rng.next() >> 32);
      }
      for (int t = 0; t < kChunk; ++t) {
        double log_u = 0;  // log U(j): the j-th best node's rank among the nodes
        for (int j = 0; j < kept; ++j) {
          log_u -= exps[static_cast<size_t>(j) * kChunk + t] * inv_[nodes_ - j];  // log W = -Exp(1)
          head[static_cast<size_t>(j) * kChunk + t] = log_u * inv_m;
          left[static_cast<size_t>(j) * kChunk + t] = m - 1;
        }
        last_log_u[t] = log_u;
      }
      merge(exps.data() + static_cast<size_t>(kept) * kChunk, head.data(), left.data(), from.data(),
            taken_before.data(), log_rank.data());
      for (int t = 0; t < n; ++t) {
        const uint32_t* x = idx.data() + static_cast<size_t>(t) * n_idx;
        // Which nodes, and which of their experts, hold those ranks (SplitMix64::below on the kept draws).
        for (int j = 0; j < kept; ++j) {
          const int pick = j + static_cast<int>((static_cast<uint64_t>(x[j]) * static_cast<uint32_t>(nodes_ - j)) >> 32);
          std::swap(node_perm[j], node_perm[pick]);
          base[j] = first_[node_perm[j]];
        }
        int32_t* out = scores ? ids(b, t0 + t) : chunk_ids.data() + static_cast<size_t>(t) * topk;
        int32_t* const experts = expert_perm.data();
        for (int c = 0; c < topk; ++c) {
          const int j = from[static_cast<size_t>(c) * kChunk + t];
          const int u = taken_before[static_cast<size_t>(c) * kChunk + t];  // the slot's experts taken so far
          const int at = base[j] + u;
          const int pick =
              at + static_cast<int>((static_cast<uint64_t>(x[kept + c]) * static_cast<uint32_t>(m - u)) >> 32);
          const int32_t chosen = experts[pick];  // the swap, without reading back what it stored
          experts[pick] = experts[at];
          experts[at] = chosen;
          out[c] = chosen;
        }
        if (!scores) continue;
        for (int c = 0; c < topk_; ++c) {
          const double lr = log_rank[static_cast<size_t>(c) * kChunk + t];
          cand[c] = {lr, out[c]};
          score[c] = 1.0 + half_normal_quantile_log(lr);
        }
        write_token(b, t0 + t, cand.data(), score.data());
        if (!gate_scores_) continue;
        // The chosen experts and drawn heads have log ranks; the rest are iid uniform below a bound, drawn as
        // plain ranks (most fall in the quantile's central region, where no log is needed).
        float* g = b.gate_scores.data() + static_cast<size_t>(t0 + t) * num_experts_;
        for (int c = 0; c < topk_; ++c) g[cand[c].i] = static_cast<float>(score[c]);
        std::fill(used.begin(), used.end(), 0);  // how many experts of each slot the token took
        for (int c = 0; c < topk_; ++c) ++used[from[static_cast<size_t>(c) * kChunk + t]];
        const auto fill_below = [&](int32_t e, double bound) {
          g[e] = static_cast<float>(1.0 + half_normal_quantile(bound * fill_rng.uniform()));
        };
        for (int j = 0; j < kept; ++j) {
          // A head that was drawn but not taken (the node has one more expert left than undrawn ones) goes to a
          // random unused expert of the node, without disturbing the routing's permutation; the node's other
          // unused experts are iid uniform below it (or below its last taken rank).
          const double h = head[static_cast<size_t>(j) * kChunk + t];
          const int lf = static_cast<int>(left[static_cast<size_t>(j) * kChunk + t]);
          const bool drawn = m - used[j] > lf;
          const int holder = drawn ? used[j] + static_cast<int>(fill_rng.below(m - used[j])) : -1;
          const double bound = std::exp(h);
          for (int i = used[j]; i < m; ++i) {
            const int32_t e = expert_perm[base[j] + i];
            if (i == holder)
              g[e] = static_cast<float>(1.0 + half_normal_quantile_log(h));
            else
              fill_below(e, bound);
          }
        }
        const double dropped_best = std::exp(last_log_u[t] * inv_m);  // V(M)
        for (int j = kept; j < nodes_; ++j)
          for (int e = first_[node_perm[j]]; e < first_[node_perm[j] + 1]; ++e) fill_below(e, dropped_best);
      }
      if (!scores) b.topk_idx.insert(b.topk_idx.end(), chunk_ids.begin(), chunk_ids.begin() + n * topk);
    }
  }

  // Any node sizes: a uniform rank per node; the kept nodes' experts drawn in full.
  void fill_direct(RoutingBatch& b) const {
    SplitMix64 rng(stream_seed(p_.seed, kDeepepStream, b.step, b.layer, b.src_rank));
    // The scores of experts in dropped nodes come from a stream of their own, so asking for gate scores does
    // not change the routing.
    SplitMix64 fill_rng(stream_seed(p_.seed, kDeepepFillStream, b.step, b.layer, b.src_rank));
    std::vector<double> key(nodes_), best(nodes_), u(num_experts_);
    std::vector<Ranked> kept_nodes(max_nodes_);  // the kept nodes, best key first
    std::vector<Ranked> cand(topk_);             // the best experts so far among the kept nodes, best first
    std::vector<char> node_kept(nodes_);
    // The best of m uniform ranks is U^(1/m); nodes rank by log(U) / m.
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
    std::vector<double> score(topk_);
    for (int t = 0; t < b.num_tokens; ++t) {
      int kept = 0;
      for (int n = 0; n < nodes_; ++n) {
        const int m = first_[n + 1] - first_[n];
        const double v = 1.0 - rng.uniform();  // (0, 1]
        key[n] = m == 0 ? -HUGE_VAL : std::log(v) / m;
        best[n] = m == 0 ? 0.0 : node_best(n, v);
        insert_top(kept_nodes.data(), kept, max_nodes_, {key[n], n});
      }
      std::fill(node_kept.begin(), node_kept.end(), 0);
      for (int i = 0; i < kept; ++i) node_kept[kept_nodes[i].i] = 1;
      int chosen = 0;
      for (int n = 0; n < nodes_; ++n) {
        if (!node_kept[n] || first_[n + 1] == first_[n]) continue;
        fill_node(rng, n);
        for (int32_t e = first_[n]; e < first_[n + 1]; ++e) insert_top(cand.data(), chosen, topk_, {u[e], e});
      }
      for (int c = 0; c < topk_; ++c) score[c] = 1.0 + half_normal_quantile(cand[c].v);
      write_token(b, t, cand.data(), score.data());
      if (gate_scores_) {
        for (int n = 0; n < nodes_; ++n)
          if (!node_kept[n] && first_[n + 1] > first_[n]) fill_node(fill_rng, n);
        for (int e = 0; e < num_experts_; ++e)
          b.gate_scores[static_cast<size_t>(t) * num_experts_ + e] =
              static_cast<float>(1.0 + half_normal_quantile(u[e]));
      }
    }
  }

  bool gate_scores_;
  bool equal_nodes_ = true;
  int nodes_ = 1;
  int max_nodes_ = 1;
  std::vector<int> first_;   // [nodes + 1] first expert of each node
  std::vector<double> inv_;  // inv_[i] = 1 / i
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
