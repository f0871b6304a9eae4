// Sparsifiers: topk:ratio=r keeps the ceil(r*hidden) largest |x| of each token, threshold:tau=t keeps
// |x| >= t. Both send positions (index list or bitmap, whichever is smaller) as side information and hand
// the kept values to the chain's quantizer. ef=1 adds error feedback: what a message dropped (or the
// quantizer lost) on a stream is added to the next message of that stream before selecting.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "engine/error.hpp"
#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/quant_kernels.hpp"

#ifdef EPLAB_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace eplab::codecs {
namespace {

constexpr uint8_t kModeList = 0;
constexpr uint8_t kModeBitmap = 1;

size_t bitmap_bytes(int hidden) { return (static_cast<size_t>(hidden) + 7) / 8; }
size_t index_width(int hidden) { return hidden <= 65536 ? 2 : 4; }

// Selection key as integer bits: |x| for finite x, +Inf for NaN and +-Inf, so that non-finite values always
// survive and reach the receiver as non-finite. Non-negative floats order as their bit patterns and -0, +0
// share a key, so comparing keys compares magnitudes exactly; as int32 the compares vectorize on the x86-64
// baseline too (it has no unsigned compare).
constexpr int32_t kInfKey = 0x7f800000;
inline int32_t keep_key(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  int32_t a = static_cast<int32_t>(b & 0x7fffffffu);
  return a < kInfKey ? a : kInfKey;
}

void compute_keys(const float* __restrict row, int n, int32_t* __restrict keys) {
  for (int i = 0; i < n; ++i) keys[i] = keep_key(row[i]);
}

// std::popcount is a libgcc call on the x86-64 baseline (no POPCNT); this is a dozen inline instructions.
inline size_t popcount64(uint64_t v) {
  v = v - ((v >> 1) & 0x5555555555555555ull);
  v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
  v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<size_t>((v * 0x0101010101010101ull) >> 56);
}

// Left-packing, portable and AVX2: the keys in [lo, hi], in order. out needs n + 8 slots (AVX2 writes whole
// groups of eight); out may be keys itself.
// The same from a row of floats, keys computed on the way, also counting the keys below lo.
int pack_row_keys_in_range_portable(const float* row, int n, int32_t lo, int32_t hi, int32_t* out, int* below) {
  int m = 0, under = 0;
  uint32_t width = static_cast<uint32_t>(hi - lo);
  for (int i = 0; i < n; ++i) {
    int32_t key = keep_key(row[i]);
    out[m] = key;
    m += static_cast<uint32_t>(key - lo) <= width;
    under += key < lo;
  }
  *below = under;
  return m;
}
int pack_keys_in_range_portable(const int32_t* keys, int n, int32_t lo, int32_t hi, int32_t* out) {
  int m = 0;
  uint32_t width = static_cast<uint32_t>(hi - lo);
  for (int i = 0; i < n; ++i) {
    out[m] = keys[i];
    m += static_cast<uint32_t>(keys[i] - lo) <= width;
  }
  return m;
}

#ifdef EPLAB_AVX2_KERNELS
// For each 8-bit mask, the lanes whose bit is set, first (vpermd's indices), and how many there are.
struct PackTable {
  alignas(32) int32_t lanes[256][8];
  uint8_t count[256];
  PackTable() {
    for (int m = 0; m < 256; ++m) {
      int c = 0;
      for (int b = 0; b < 8; ++b) {
        if (m >> b & 1) lanes[m][c++] = b;
      }
      count[m] = static_cast<uint8_t>(c);
      for (int b = c; b < 8; ++b) lanes[m][b] = 0;
    }
  }
};
const PackTable& pack_table() {
  static const PackTable table;
  return table;
}

EPLAB_TARGET_AVX2 int pack_row_keys_in_range_avx2(const float* row, int n, int32_t lo, int32_t hi, int32_t* out,
                                                  int* below) {
  const PackTable& pt = pack_table();
  const __m256i low = _mm256_set1_epi32(lo), under = _mm256_set1_epi32(lo - 1), above = _mm256_set1_epi32(hi + 1),
                magnitude = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(kInfKey);
  __m256i count = _mm256_setzero_si256();
  int m = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i));
    __m256i k = _mm256_min_epi32(_mm256_and_si256(x, magnitude), inf);
    count = _mm256_sub_epi32(count, _mm256_cmpgt_epi32(low, k));
    __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(k, under), _mm256_cmpgt_epi32(above, k));
    int mask = _mm256_movemask_ps(_mm256_castsi256_ps(in));
    __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(pt.lanes[mask]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(k, lanes));
    m += pt.count[mask];
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), count);
  int rest_below = 0;
  m += pack_row_keys_in_range_portable(row + i, n - i, lo, hi, out + m, &rest_below);
  *below = rest_below + lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
  return m;
}

EPLAB_TARGET_AVX2 int pack_keys_in_range_avx2(const int32_t* keys, int n, int32_t lo, int32_t hi, int32_t* out) {
  const PackTable& pt = pack_table();
  const __m256i below = _mm256_set1_epi32(lo - 1), above = _mm256_set1_epi32(hi + 1);
  int m = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i));
    __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(k, below), _mm256_cmpgt_epi32(above, k));
    int mask = _mm256_movemask_ps(_mm256_castsi256_ps(in));
    __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(pt.lanes[mask]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(k, lanes));
    m += pt.count[mask];
  }
  return m + pack_keys_in_range_portable(keys + i, n - i, lo, hi, out + m);
}
#endif

int pack_row_keys_in_range(const float* row, int n, int32_t lo, int32_t hi, int32_t* out, int* below) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return pack_row_keys_in_range_avx2(row, n, lo, hi, out, below);
#endif
  return pack_row_keys_in_range_portable(row, n, lo, hi, out, below);
}
int pack_keys_in_range(const int32_t* keys, int n, int32_t lo, int32_t hi, int32_t* out) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return pack_keys_in_range_avx2(keys, n, lo, hi, out);
#endif
  return pack_keys_in_range_portable(keys, n, lo, hi, out);
}

// Which elements a token keeps: keep_key(x) >= at_least, and when `ties` >= 0 only the first `ties` of those
// whose key equals at_least (topk's tie-break: the lower position is kept).
struct KeepRule {
  int32_t at_least = 0;
  int ties = -1;
};

EPLAB_CLONES int count_at_least(const float* row, int n, int32_t t) {
  int c = 0;
  for (int i = 0; i < n; ++i) c += keep_key(row[i]) >= t;
  return c;
}

// One token's output under a rule: the kept values, in order, to values (values_room slots from there may be
// written), and either the token's bitmap (bits: ceil(n/8) bytes, all written) or its positions (pos: room
// for n + 8). Returns how many are kept.
int emit_portable(const float* row, int n, KeepRule rule, uint8_t* bits, uint32_t* pos, float* values) {
  if (bits) std::memset(bits, 0, bitmap_bytes(n));
  const bool all_ties = rule.ties < 0;
  int m = 0, ties = rule.ties;
  for (int i = 0; i < n; ++i) {
    int32_t key = keep_key(row[i]);
    bool keep = all_ties ? key >= rule.at_least : key > rule.at_least || (key == rule.at_least && ties-- > 0);
    if (!keep) continue;
    values[m] = row[i];
    if (bits) bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    if (pos) pos[m] = static_cast<uint32_t>(i);
    ++m;
  }
  return m;
}

#ifdef EPLAB_AVX2_KERNELS
// Eight elements at a time: the keep mask is the bitmap byte, and the same lane table packs positions and
// values (a store whole groups of eight would overrun values near the end goes lane by lane instead).
EPLAB_TARGET_AVX2 int emit_avx2(const float* row, int n, int32_t at_least, uint8_t* bits, uint32_t* pos, float* values,
                                int values_room) {
  const PackTable& pt = pack_table();
  const __m256i below = _mm256_set1_epi32(at_least - 1), magnitude = _mm256_set1_epi32(0x7fffffff),
                inf = _mm256_set1_epi32(kInfKey), step = _mm256_set1_epi32(8);
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int m = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(row + i);
    __m256i key = _mm256_min_epi32(_mm256_and_si256(_mm256_castps_si256(x), magnitude), inf);
    int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(key, below)));
    __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(pt.lanes[mask]));
    if (bits) bits[i / 8] = static_cast<uint8_t>(mask);
    if (pos) _mm256_storeu_si256(reinterpret_cast<__m256i*>(pos + m), _mm256_permutevar8x32_epi32(idx, lanes));
    if (m + 8 <= values_room) {
      _mm256_storeu_ps(values + m, _mm256_permutevar8x32_ps(x, lanes));
    } else {
      for (int b = 0, j = m; b < 8; ++b) {
        if (mask >> b & 1) values[j++] = row[i + b];
      }
    }
    m += pt.count[mask];
    idx = _mm256_add_epi32(idx, step);
  }
  if (i < n) {
    KeepRule rule{at_least, -1};
    int rest = emit_portable(row + i, n - i, rule, bits ? bits + i / 8 : nullptr, pos ? pos + m : nullptr, values + m);
    if (pos) {
      for (int j = 0; j < rest; ++j) pos[m + j] += static_cast<uint32_t>(i);
    }
    m += rest;
  }
  return m;
}

// The inverse of the packing for bitmaps: for each mask, where each lane's value comes from in the packed
// values (its rank among the set lanes) and which lanes are kept.
struct ExpandTable {
  alignas(32) int32_t from[256][8];
  alignas(32) int32_t keep[256][8];
  ExpandTable() {
    for (int m = 0; m < 256; ++m) {
      int c = 0;
      for (int b = 0; b < 8; ++b) {
        bool set = m >> b & 1;
        from[m][b] = set ? c : 0;
        keep[m][b] = set ? -1 : 0;
        c += set;
      }
    }
  }
};
const ExpandTable& expand_table() {
  static const ExpandTable table;
  return table;
}

// One token's row from its bitmap and its values, dropped positions zero; values[0, values_room) readable.
// Returns how many values it took.
EPLAB_TARGET_AVX2 size_t expand_row_avx2(const uint8_t* bits, int hidden, const float* values, size_t values_room,
                                         float* row) {
  const PackTable& pt = pack_table();
  const ExpandTable& et = expand_table();
  size_t k = 0;
  int i = 0;
  for (; i + 8 <= hidden && k + 8 <= values_room; i += 8) {
    int mask = bits[i / 8];
    __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(values + k),
                                        _mm256_load_si256(reinterpret_cast<const __m256i*>(et.from[mask])));
    v = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(et.keep[mask]))));
    _mm256_storeu_ps(row + i, v);
    k += pt.count[mask];
  }
  for (; i < hidden; ++i) {
    bool set = bits[i / 8] >> (i % 8) & 1;
    row[i] = set ? values[k] : 0.0f;
    k += set;
  }
  return k;
}
#endif

int emit(const float* row, int n, KeepRule rule, uint8_t* bits, uint32_t* pos, float* values, int values_room) {
#ifdef EPLAB_AVX2_KERNELS
  if (rule.ties < 0 && avx2_kernels_enabled()) return emit_avx2(row, n, rule.at_least, bits, pos, values, values_room);
#endif
  return emit_portable(row, n, rule, bits, pos, values);
}

// Buffers of one encode or decode, kept by the transform between calls.
struct SparseScratch {
  std::vector<int32_t> sample;      // strided sample of a token's selection keys
  std::vector<int32_t> cand;        // keys near the k-th largest
  std::vector<uint32_t> positions;  // one token's kept positions (list mode)
  std::vector<uint32_t> counts;     // how many each token keeps
  std::vector<KeepRule> rules;      // and which
  std::vector<float> acc;           // input plus the stream's residual (error feedback)
};

// The k-th largest key of a token and how many keys are greater than it and equal to it.
struct Kth {
  int32_t key;
  int above;
  int equal;
};

// Counts keys below and equal to cand[r] once nth_element has put it there.
void count_around(const int32_t* cand, int m, int r, int* less, int* equal) {
  int lt = 0, eq = 0;
  for (int i = 0; i < m; ++i) {
    lt += cand[i] < cand[r];
    eq += cand[i] == cand[r];
  }
  *less = lt;
  *equal = eq;
}

// The key of ascending rank r among cand[0, m), all in [lo, hi], with the counts of the candidates below and
// equal to it: a 256-bin histogram over the range finds the bin holding it, and nth_element runs on that bin's
// keys only (cand is reordered).
Kth kth_in_range(int32_t* cand, int m, int r, int32_t lo, int32_t hi) {
  const uint32_t range = static_cast<uint32_t>(hi - lo);
  int shift = 0;
  while ((range >> shift) >= 256) ++shift;
  uint32_t hist[256] = {};
  for (int i = 0; i < m; ++i) ++hist[static_cast<uint32_t>(cand[i] - lo) >> shift];
  int bin = 0, before = 0;
  while (before + static_cast<int>(hist[bin]) <= r) before += static_cast<int>(hist[bin++]);
  const int32_t bin_lo = lo + static_cast<int32_t>(static_cast<uint32_t>(bin) << shift);
  const int32_t bin_hi = static_cast<int32_t>(std::min<int64_t>(hi, int64_t{bin_lo} + (int64_t{1} << shift) - 1));
  int in_bin = pack_keys_in_range(cand, m, bin_lo, bin_hi, cand);  // packs forward in place: never overtakes
  std::nth_element(cand, cand + (r - before), cand + in_bin);
  // Keys equal to the answer all lie in its bin; the other bins' keys are below or above it.
  int less = 0, equal = 0;
  count_around(cand, in_bin, r - before, &less, &equal);
  return {cand[r - before], m - before - less - equal, equal};
}

// The k-th largest key of row[0, n) for 0 < k < n, i.e. what nth_element over all keys finds, and how many
// keys are above and equal to it. A strided sample brackets it; one pass counts the keys below the bracket and
// packs those inside, and kth_in_range finds it among those. If the bracket missed (the sample was unlucky),
// nth_element runs on all n keys.
Kth kth_largest(const float* row, int n, int k, SparseScratch& s) {
  const int r = n - k;  // ascending rank of the answer
  s.cand.resize(static_cast<size_t>(n) + 8);
  int32_t* cand = s.cand.data();
  constexpr int kSample = 64, kMargin = 10;  // the margin is about 3 standard deviations of the sample rank
  if (n >= 8 * kSample) {
    s.sample.resize(kSample);
    for (int j = 0; j < kSample; ++j) s.sample[j] = keep_key(row[static_cast<int64_t>(j) * n / kSample]);
    int p = static_cast<int>(static_cast<int64_t>(r) * kSample / n);
    int lo_at = p - kMargin, hi_at = p + kMargin;
    int32_t lo = 0, hi = kInfKey;
    auto first = s.sample.begin();
    if (lo_at > 0) {
      std::nth_element(s.sample.begin(), s.sample.begin() + lo_at, s.sample.end());
      lo = s.sample[lo_at];
      first = s.sample.begin() + lo_at + 1;
    }
    if (hi_at < kSample - 1) {
      std::nth_element(first, s.sample.begin() + hi_at, s.sample.end());
      hi = s.sample[hi_at];
    }
    int below = 0;
    int m = pack_row_keys_in_range(row, n, lo, hi, cand, &below);
    // Keys above the bracket are above the answer too: n - below - m of them.
    if (below <= r && r - below < m) {
      Kth kth = kth_in_range(cand, m, r - below, lo, hi);
      kth.above += n - below - m;
      return kth;
    }
  }
  compute_keys(row, n, cand);
  std::nth_element(cand, cand + r, cand + n);
  int less = 0, equal = 0;
  count_around(cand, n, r, &less, &equal);
  return {cand[r], n - less - equal, equal};
}

class SparseTransform : public Transform {
 public:
  SparseTransform(std::string spec, bool ef) : spec_(std::move(spec)), ef_(ef) {}
  std::string name() const override { return spec_; }
  bool wants_commit() const override { return ef_; }
  bool stateful() const override { return ef_; }

  void reset(uint64_t stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    residual_.erase(stream);
    pending_.erase(stream);
  }

  // Error feedback's residuals and accumulators in flight, each map in stream order.
  void save_state(std::vector<uint8_t>& out) const override {
    if (!ef_) return;
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto* m : {&residual_, &pending_}) {
      std::vector<uint64_t> keys;
      for (const auto& kv : *m) keys.push_back(kv.first);
      std::sort(keys.begin(), keys.end());
      put_state<uint64_t>(out, keys.size());
      for (uint64_t k : keys) {
        put_state(out, k);
        put_floats(out, m->at(k));
      }
    }
  }
  void load_state(ByteReader& in) override {
    if (!ef_) return;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* m : {&residual_, &pending_}) {
      m->clear();
      const auto n = in.read<uint64_t>();
      for (uint64_t i = 0; i < n; ++i) {
        const auto k = in.read<uint64_t>();
        get_floats(in, (*m)[k]);
      }
    }
  }

  void forward(const float* x, Shape shape, uint64_t stream, bool, std::vector<uint8_t>& side, std::vector<float>& y,
               Shape& y_shape) override {
    auto s = scratch_.lease();
    const size_t n = shape.elements();
    const float* src = x;
    if (ef_) {
      s->acc.resize(n);
      std::lock_guard<std::mutex> lock(mu_);
      auto it = residual_.find(stream);
      if (it != residual_.end() && it->second.size() == n) {
        const float* res = it->second.data();
        for (size_t i = 0; i < n; ++i) s->acc[i] = x[i] + res[i];
      } else if (n > 0) {
        std::memcpy(s->acc.data(), x, n * sizeof(float));
      }
      src = s->acc.data();
    }
    // What each token keeps and how many, then the side information and the values in one pass per token.
    s->counts.resize(shape.tokens);
    s->rules.resize(shape.tokens);
    size_t total = 0;
    for (int t = 0; t < shape.tokens; ++t) {
      int c = plan(src + static_cast<size_t>(t) * shape.hidden, shape.hidden, s->rules[t], *s);
      s->counts[t] = static_cast<uint32_t>(c);
      total += static_cast<size_t>(c);
    }
    y.resize(total);
    if (shape.tokens > 0) write_positions(src, shape, total, *s, side, y.data());
    y_shape = values_shape(total, shape);
    if (ef_) {
      std::lock_guard<std::mutex> lock(mu_);
      pending_[stream].swap(s->acc);
    }
  }

  void commit(uint64_t stream, const float* x_hat, Shape shape) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto p = pending_.find(stream);
    if (p == pending_.end()) return;
    std::vector<float>& r = residual_[stream];
    r.resize(shape.elements());
    const float* acc = p->second.data();
    for (size_t i = 0; i < r.size(); ++i) {
      float d = acc[i] - x_hat[i];
      r[i] = std::isfinite(d) ? d : 0.0f;  // a NaN must not poison every later message of the stream
    }
    pending_.erase(p);
  }

  Shape parse(const uint8_t* side, size_t size, Shape shape) const override {
    return values_shape(walk_positions(
                            side, size, shape, [](int, int) {}, false),
                        shape);
  }

  void inverse(const uint8_t* side, size_t size, const float* y, Shape shape, float* out, uint64_t) override {
#ifdef EPLAB_AVX2_KERNELS
    if (shape.tokens > 0 && size > 0 && side[0] == kModeBitmap && avx2_kernels_enabled()) {
      // Checked first (parse's checks: sizes, counts), then every row written whole from its bitmap.
      const size_t total = walk_positions(
          side, size, shape, [](int, int) {}, false);
      const size_t nb = bitmap_bytes(shape.hidden);
      size_t k = 0;
      for (int t = 0; t < shape.tokens; ++t) {
        k += expand_row_avx2(side + 1 + t * nb, shape.hidden, y + k, total - k,
                             out + static_cast<size_t>(t) * shape.hidden);
      }
      return;
    }
#endif
    if (shape.elements() > 0) std::memset(out, 0, shape.elements() * sizeof(float));
    size_t k = 0;
    walk_positions(side, size, shape,
                   [&](int t, int i) { out[static_cast<size_t>(t) * shape.hidden + static_cast<size_t>(i)] = y[k++]; });
  }

 protected:
  // Decides what row keeps (the rule) and returns how many elements that is.
  virtual int plan(const float* row, int hidden, KeepRule& rule, SparseScratch& s) const = 0;
  virtual Shape values_shape(size_t total, Shape shape) const = 0;
  // Whether every token keeps the same count (topk): then the count is not sent.
  virtual bool fixed_count() const = 0;
  virtual int count_for(int hidden) const { return 0; }

  // Side: u8 mode; list mode: [u32 count per token unless fixed] then indices (u16 if hidden <= 65536,
  // else u32) token by token; bitmap mode: ceil(hidden/8) bytes per token, bit i%8 of byte i/8. Appends the
  // side for the rules and counts in s and writes the kept values of src to values.
  void write_positions(const float* src, Shape shape, size_t total, SparseScratch& s, std::vector<uint8_t>& side,
                       float* values) const {
    const size_t tokens = s.counts.size(), w = index_width(shape.hidden), nb = bitmap_bytes(shape.hidden);
    size_t list = (fixed_count() ? 0 : 4 * tokens) + total * w;
    size_t bitmap = tokens * nb;
    const bool use_list = list <= bitmap;
    size_t at = side.size();
    side.resize(at + 1 + (use_list ? list : bitmap));
    uint8_t* p = side.data() + at;
    *p++ = use_list ? kModeList : kModeBitmap;
    if (use_list) s.positions.resize(static_cast<size_t>(shape.hidden) + 8);
    size_t k = 0;
    for (size_t t = 0; t < tokens; ++t) {
      const float* row = src + t * static_cast<size_t>(shape.hidden);
      const uint32_t c = s.counts[t];
      const int room = static_cast<int>(std::min<size_t>(total - k, static_cast<size_t>(shape.hidden) + 8));
      if (!use_list) {
        emit(row, shape.hidden, s.rules[t], p, nullptr, values + k, room);
        p += nb;
        k += c;
        continue;
      }
      const uint32_t* pos = s.positions.data();
      emit(row, shape.hidden, s.rules[t], nullptr, s.positions.data(), values + k, room);
      k += c;
      if (!fixed_count()) {
        std::memcpy(p, &c, 4);
        p += 4;
      }
      if (w == 2) {
        for (uint32_t j = 0; j < c; ++j) {
          uint16_t v = static_cast<uint16_t>(pos[j]);
          std::memcpy(p + 2 * j, &v, 2);
        }
      } else {
        std::memcpy(p, pos, 4 * static_cast<size_t>(c));
      }
      p += w * c;
    }
  }

  // Checks the side information and calls visit(token, position) for every kept position in order; returns
  // how many there are. Throws CodecError on a malformed side.
  // With visit_bitmaps false, bitmaps are only checked and counted.
  template <typename Visit>
  size_t walk_positions(const uint8_t* side, size_t size, Shape shape, Visit&& visit, bool visit_bitmaps = true) const {
    ByteReader r(side, size, spec_);
    if (shape.tokens == 0) return 0;
    size_t total = 0;
    uint8_t mode = r.read<uint8_t>();
    if (mode == kModeList) {
      size_t w = index_width(shape.hidden);
      for (int t = 0; t < shape.tokens; ++t) {
        uint32_t n = fixed_count() ? static_cast<uint32_t>(count_for(shape.hidden)) : r.read<uint32_t>();
        if (n > static_cast<uint32_t>(shape.hidden))
          corrupt("token " + std::to_string(t) + " claims " + std::to_string(n) + " positions");
        const uint8_t* p = r.take(static_cast<size_t>(n) * w);
        int64_t prev = -1;
        for (uint32_t j = 0; j < n; ++j) {
          uint32_t v;
          if (w == 2) {
            uint16_t h;
            std::memcpy(&h, p + 2 * j, 2);
            v = h;
          } else {
            std::memcpy(&v, p + 4 * j, 4);
          }
          if (v >= static_cast<uint32_t>(shape.hidden) || static_cast<int64_t>(v) <= prev) {
            corrupt("position " + std::to_string(v) + " of token " + std::to_string(t) + " is out of order or range");
          }
          prev = v;
          visit(t, static_cast<int>(v));
        }
        total += n;
      }
    } else if (mode == kModeBitmap) {
      const size_t nb = bitmap_bytes(shape.hidden);
      for (int t = 0; t < shape.tokens; ++t) {
        const uint8_t* bits = r.take(nb);
        // Bits past hidden in the last byte are not positions: ignored.
        size_t count = 0;
        for (size_t b = 0; b < nb; b += 8) {
          uint64_t word = 0;
          std::memcpy(&word, bits + b, std::min<size_t>(8, nb - b));
          size_t left = static_cast<size_t>(shape.hidden) - 8 * b;
          if (left < 64) word &= (uint64_t{1} << left) - 1;
          count += popcount64(word);
        }
        if (fixed_count() && count != static_cast<size_t>(count_for(shape.hidden))) {
          corrupt("token " + std::to_string(t) + " keeps " + std::to_string(count) + " positions, expected " +
                  std::to_string(count_for(shape.hidden)));
        }
        for (size_t b = 0; visit_bitmaps && b < nb; b += 8) {
          uint64_t word = 0;
          std::memcpy(&word, bits + b, std::min<size_t>(8, nb - b));
          size_t left = static_cast<size_t>(shape.hidden) - 8 * b;
          if (left < 64) word &= (uint64_t{1} << left) - 1;
          while (word) {
            visit(t, static_cast<int>(8 * b) + std::countr_zero(word));
            word &= word - 1;
          }
        }
        total += count;
      }
    } else {
      corrupt("unknown position mode " + std::to_string(mode));
    }
    if (r.remaining() != 0) corrupt(std::to_string(r.remaining()) + " trailing side bytes");
    return total;
  }

  [[noreturn]] void corrupt(const std::string& what) const {
    throw CodecError("codec " + spec_ + ": corrupt positions: " + what);
  }

  std::string spec_;
  bool ef_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::vector<float>> residual_;
  std::unordered_map<uint64_t, std::vector<float>> pending_;
  Reusable<SparseScratch> scratch_;
};

class TopkTransform final : public SparseTransform {
 public:
  TopkTransform(std::string spec, double ratio, bool ef) : SparseTransform(std::move(spec), ef), ratio_(ratio) {}
  // Keeping the k largest magnitudes keeps at least k/H of the energy: ||x - topk(x)|| <= sqrt(1 - k/H) ||x||.
  // With error feedback the sent message also carries earlier residuals, so there is no per-message bound.
  double error_bound(int hidden) const override {
    if (ef_) return std::numeric_limits<double>::infinity();
    double keep = hidden > 0 ? static_cast<double>(count_for(hidden)) / hidden : ratio_;
    return std::sqrt(std::max(0.0, 1.0 - keep)) * kBoundSlack;
  }
  int count_for(int hidden) const override {
    return std::min(hidden, static_cast<int>(std::ceil(ratio_ * hidden - 1e-9)));
  }
  size_t side_size(Shape shape, bool) const override {
    if (shape.tokens == 0) return 0;
    size_t list = static_cast<size_t>(shape.tokens) * count_for(shape.hidden) * index_width(shape.hidden);
    return 1 + std::min(list, static_cast<size_t>(shape.tokens) * bitmap_bytes(shape.hidden));
  }
  Shape y_shape(Shape shape, bool) const override { return {shape.tokens, count_for(shape.hidden)}; }

 protected:
  // The k largest keys, ties broken by position (the lower one is kept), so the selection is deterministic:
  // everything above the k-th largest key, then as many of the keys equal to it as fit, from the left.
  int plan(const float* row, int hidden, KeepRule& rule, SparseScratch& s) const override {
    const int k = count_for(hidden);
    if (k <= 0) {
      rule = {kInfKey + 1, -1};  // nothing
      return 0;
    }
    if (k >= hidden) {
      rule = {0, -1};  // everything
      return hidden;
    }
    const Kth kth = kth_largest(row, hidden, k, s);
    rule = {kth.key, kth.above + kth.equal == k ? -1 : k - kth.above};
    return k;
  }
  Shape values_shape(size_t, Shape shape) const override { return {shape.tokens, count_for(shape.hidden)}; }
  bool fixed_count() const override { return true; }

 private:
  double ratio_;
};

class ThresholdTransform final : public SparseTransform {
 public:
  ThresholdTransform(std::string spec, double tau, bool ef)
      : SparseTransform(std::move(spec), ef), tau_(tau), tau_key_(key_at_least(tau)) {}
  // Dropped elements are a subset of x, so ||x - s(x)|| <= ||x||: the bound is 1, i.e. none worth having
  // (a token entirely under tau is dropped). With error feedback there is no per-message bound.
  double error_bound(int) const override { return ef_ ? std::numeric_limits<double>::infinity() : 1.0; }
  bool keeps_rows() const override { return false; }
  size_t side_size(Shape shape, bool worst) const override {
    if (shape.tokens == 0) return 0;
    size_t bitmap = static_cast<size_t>(shape.tokens) * bitmap_bytes(shape.hidden);
    if (worst) return 1 + bitmap;
    double nnz = density_ * static_cast<double>(shape.elements());
    size_t list = 4 * static_cast<size_t>(shape.tokens) + static_cast<size_t>(nnz) * index_width(shape.hidden);
    return 1 + std::min(list, bitmap);
  }
  Shape y_shape(Shape shape, bool worst) const override {
    if (worst) return {1, static_cast<int>(std::min<size_t>(shape.elements(), std::numeric_limits<int>::max()))};
    return {1, static_cast<int>(std::ceil(density_ * static_cast<double>(shape.elements())))};
  }

 protected:
  // keep_key(x) >= tau in float-against-double terms: the key is at least the smallest float >= tau.
  int plan(const float* row, int hidden, KeepRule& rule, SparseScratch&) const override {
    rule = {tau_key_, -1};
    return count_at_least(row, hidden, tau_key_);
  }
  Shape values_shape(size_t total, Shape shape) const override {
    if (shape.elements() > 0) density_ = static_cast<double>(total) / static_cast<double>(shape.elements());
    return {1, static_cast<int>(total)};
  }
  bool fixed_count() const override { return false; }

 private:
  // The key of the smallest float f with f >= tau (tau is finite and >= 0; above FLT_MAX only +Inf's key).
  static int32_t key_at_least(double tau) {
    if (tau > static_cast<double>(std::numeric_limits<float>::max())) return kInfKey;
    float f = static_cast<float>(tau);
    if (static_cast<double>(f) < tau) f = std::nextafter(f, std::numeric_limits<float>::infinity());
    return keep_key(f);
  }

  double tau_;
  int32_t tau_key_;
  // Fraction kept in the latest message (or calibration sample): what encoded_size() estimates with.
  mutable std::atomic<double> density_{0.1};
};

}  // namespace

void add_sparse_codecs(CodecRegistry& r) {
  r.add("topk", "keep the ceil(ratio*hidden) largest |x| per token; topk:ratio=0.25[,ef=1]",
        transform_stage([](const CodecParams& p) -> std::unique_ptr<Transform> {
          double ratio = p.get_double("ratio", 0.25);
          if (!(ratio > 0 && ratio <= 1)) {
            throw EplabError("codec spec '" + p.spec() + "': ratio must be in (0, 1]");
          }
          return std::make_unique<TopkTransform>(p.spec(), ratio, p.get_bool("ef", false));
        }));
  r.add("threshold", "keep |x| >= tau; threshold:tau=0.01[,ef=1]",
        transform_stage([](const CodecParams& p) -> std::unique_ptr<Transform> {
          double tau = p.get_double("tau", 0.01);
          if (!(tau >= 0) || !std::isfinite(tau)) {
            throw EplabError("codec spec '" + p.spec() + "': tau must be a finite number >= 0");
          }
          return std::make_unique<ThresholdTransform>(p.spec(), tau, p.get_bool("ef", false));
        }));
}

}  // namespace eplab::codecs
