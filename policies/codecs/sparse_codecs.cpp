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

// Left-packing, portable and AVX2: the keys in [lo, hi], or the positions whose key is >= t, in order. out
// needs n + 8 slots (both write whole groups of eight).
int pack_keys_in_range_portable(const int32_t* keys, int n, int32_t lo, int32_t hi, int32_t* out) {
  int m = 0;
  uint32_t width = static_cast<uint32_t>(hi - lo);
  for (int i = 0; i < n; ++i) {
    out[m] = keys[i];
    m += static_cast<uint32_t>(keys[i] - lo) <= width;
  }
  return m;
}
int pack_positions_portable(const int32_t* keys, int n, int32_t t, uint32_t* out) {
  int m = 0;
  for (int i = 0; i < n; ++i) {
    out[m] = static_cast<uint32_t>(i);
    m += keys[i] >= t;
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
EPLAB_TARGET_AVX2 int pack_positions_avx2(const int32_t* keys, int n, int32_t t, uint32_t* out) {
  const PackTable& pt = pack_table();
  const __m256i below = _mm256_set1_epi32(t - 1), step = _mm256_set1_epi32(8);
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int m = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i));
    int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(k, below)));
    __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(pt.lanes[mask]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m), _mm256_permutevar8x32_epi32(idx, lanes));
    m += pt.count[mask];
    idx = _mm256_add_epi32(idx, step);
  }
  int rest = pack_positions_portable(keys + i, n - i, t, out + m);
  for (int j = 0; j < rest; ++j) out[m + j] += static_cast<uint32_t>(i);
  return m + rest;
}
#endif

int pack_keys_in_range(const int32_t* keys, int n, int32_t lo, int32_t hi, int32_t* out) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return pack_keys_in_range_avx2(keys, n, lo, hi, out);
#endif
  return pack_keys_in_range_portable(keys, n, lo, hi, out);
}
// t may be kInfKey + 1 (nothing qualifies).
int pack_positions(const int32_t* keys, int n, int32_t t, uint32_t* out) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return pack_positions_avx2(keys, n, t, out);
#endif
  return pack_positions_portable(keys, n, t, out);
}

// Buffers of one encode or decode, kept by the transform between calls.
struct SparseScratch {
  std::vector<int32_t> keys;        // one token's selection keys
  std::vector<int32_t> sample;      // strided sample of them
  std::vector<int32_t> cand;        // keys near the k-th largest
  std::vector<uint32_t> positions;  // kept positions, ascending within each token, token after token
  std::vector<uint32_t> counts;     // how many each token keeps
  std::vector<float> acc;           // input plus the stream's residual (error feedback)
};

// The key of ascending rank r among cand[0, m), all in [lo, hi]: a 256-bin histogram over the range finds
// the bin holding it, and nth_element runs on that bin's keys only (cand is reordered).
int32_t kth_in_range(int32_t* cand, int m, int r, int32_t lo, int32_t hi) {
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
  return cand[r - before];
}

// The k-th largest of keys[0, n) for 0 < k < n, i.e. what nth_element over all of them finds. A strided
// sample brackets it; one pass counts the keys below the bracket and packs those inside, and nth_element runs
// on those few. If the bracket missed (the sample was unlucky), nth_element runs on all n.
int32_t kth_largest(const int32_t* keys, int n, int k, SparseScratch& s) {
  const int r = n - k;  // ascending rank of the answer
  s.cand.resize(static_cast<size_t>(n) + 8);
  int32_t* cand = s.cand.data();
  constexpr int kSample = 256, kMargin = 24;  // the margin is about 3 standard deviations of the sample rank
  if (n >= 4 * kSample) {
    s.sample.resize(kSample);
    for (int j = 0; j < kSample; ++j) s.sample[j] = keys[static_cast<int64_t>(j) * n / kSample];
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
    for (int i = 0; i < n; ++i) below += keys[i] < lo;
    if (below <= r) {
      int m = pack_keys_in_range(keys, n, lo, hi, cand);
      if (r - below < m) return kth_in_range(cand, m, r - below, lo, hi);
    }
  }
  std::copy(keys, keys + n, cand);
  std::nth_element(cand, cand + r, cand + n);
  return cand[r];
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
    // Which positions each token keeps, ascending.
    s->counts.resize(shape.tokens);
    size_t total = 0;
    for (int t = 0; t < shape.tokens; ++t) {
      // Grown, never shrunk: a resize down and up again would zero the elements each message.
      size_t need = total + static_cast<size_t>(shape.hidden) + 8;
      if (s->positions.size() < need) s->positions.resize(std::max(need, 2 * s->positions.size()));
      int c = select(src + static_cast<size_t>(t) * shape.hidden, shape.hidden, s->positions.data() + total, *s);
      s->counts[t] = static_cast<uint32_t>(c);
      total += static_cast<size_t>(c);
    }
    write_positions(s->positions.data(), s->counts, total, shape, side);
    y.resize(total);
    float* yv = y.data();
    const uint32_t* pos = s->positions.data();
    for (int t = 0; t < shape.tokens; ++t) {
      const float* row = src + static_cast<size_t>(t) * shape.hidden;
      for (uint32_t j = 0; j < s->counts[t]; ++j) *yv++ = row[*pos++];
    }
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
    return values_shape(walk_positions(side, size, shape, [](int, int) {}), shape);
  }

  void inverse(const uint8_t* side, size_t size, const float* y, Shape shape, float* out, uint64_t) override {
    if (shape.elements() > 0) std::memset(out, 0, shape.elements() * sizeof(float));
    size_t k = 0;
    walk_positions(side, size, shape,
                   [&](int t, int i) { out[static_cast<size_t>(t) * shape.hidden + static_cast<size_t>(i)] = y[k++]; });
  }

 protected:
  // Writes the positions row keeps, ascending, to kept (room for hidden + 8) and returns how many.
  virtual int select(const float* row, int hidden, uint32_t* kept, SparseScratch& s) const = 0;
  virtual Shape values_shape(size_t total, Shape shape) const = 0;
  // Whether every token keeps the same count (topk): then the count is not sent.
  virtual bool fixed_count() const = 0;
  virtual int count_for(int hidden) const { return 0; }

  // Side: u8 mode; list mode: [u32 count per token unless fixed] then indices (u16 if hidden <= 65536,
  // else u32) token by token; bitmap mode: ceil(hidden/8) bytes per token, bit i%8 of byte i/8.
  void write_positions(const uint32_t* pos, const std::vector<uint32_t>& counts, size_t total, Shape shape,
                       std::vector<uint8_t>& side) const {
    if (counts.empty()) return;  // no tokens, no side bytes
    size_t w = index_width(shape.hidden);
    size_t list = (fixed_count() ? 0 : 4 * counts.size()) + total * w;
    size_t bitmap = counts.size() * bitmap_bytes(shape.hidden);
    size_t at = side.size();
    if (list <= bitmap) {
      side.resize(at + 1 + list);
      uint8_t* p = side.data() + at;
      *p++ = kModeList;
      for (uint32_t c : counts) {
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
        pos += c;
      }
    } else {
      side.resize(at + 1 + bitmap);
      side[at] = kModeBitmap;
      uint8_t* bits = side.data() + at + 1;
      std::memset(bits, 0, bitmap);
      for (uint32_t c : counts) {
        for (uint32_t j = 0; j < c; ++j) bits[pos[j] / 8] |= static_cast<uint8_t>(1u << (pos[j] % 8));
        pos += c;
        bits += bitmap_bytes(shape.hidden);
      }
    }
  }

  // Checks the side information and calls visit(token, position) for every kept position in order; returns
  // how many there are. Throws CodecError on a malformed side.
  template <typename Visit>
  size_t walk_positions(const uint8_t* side, size_t size, Shape shape, Visit&& visit) const {
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
        for (size_t b = 0; b < nb; b += 8) {
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
  std::mutex mu_;
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
  int select(const float* row, int hidden, uint32_t* kept, SparseScratch& s) const override {
    const int k = count_for(hidden);
    if (k <= 0) return 0;
    s.keys.resize(hidden);
    int32_t* keys = s.keys.data();
    compute_keys(row, hidden, keys);
    if (k >= hidden) return pack_positions(keys, hidden, 0, kept);
    const int32_t kth = kth_largest(keys, hidden, k, s);
    int above = 0, equal = 0;
    for (int i = 0; i < hidden; ++i) {
      above += keys[i] > kth;
      equal += keys[i] == kth;
    }
    if (above + equal == k) return pack_positions(keys, hidden, kth, kept);
    int m = 0, ties = k - above;
    for (int i = 0; i < hidden; ++i) {
      if (keys[i] > kth || (keys[i] == kth && ties-- > 0)) kept[m++] = static_cast<uint32_t>(i);
    }
    return m;
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
  int select(const float* row, int hidden, uint32_t* kept, SparseScratch& s) const override {
    s.keys.resize(hidden);
    compute_keys(row, hidden, s.keys.data());
    return pack_positions(s.keys.data(), hidden, tau_key_, kept);
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
