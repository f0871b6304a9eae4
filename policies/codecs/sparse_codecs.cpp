// Sparsifiers: topk:ratio=r keeps the ceil(r*hidden) largest |x| of each token, threshold:tau=t keeps
// |x| >= t. Both send positions (index list or bitmap, whichever is smaller) as side information and hand
// the kept values to the chain's quantizer. ef=1 adds error feedback: what a message dropped (or the
// quantizer lost) on a stream is added to the next message of that stream before selecting.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <unordered_map>

#include "engine/error.hpp"
#include "policies/codecs/codec_internal.hpp"

namespace eplab::codecs {
namespace {

constexpr uint8_t kModeList = 0;
constexpr uint8_t kModeBitmap = 1;

size_t bitmap_bytes(int hidden) { return (static_cast<size_t>(hidden) + 7) / 8; }
size_t index_width(int hidden) { return hidden <= 65536 ? 2 : 4; }

// Selection key: non-finite values always survive so that they reach the receiver as non-finite.
inline float keep_key(float v) {
  float a = std::fabs(v);
  return std::isfinite(v) ? a : std::numeric_limits<float>::infinity();
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
    const float* src = x;
    std::vector<float> acc;
    if (ef_) {
      acc.assign(x, x + shape.elements());
      std::lock_guard<std::mutex> lock(mu_);
      auto it = residual_.find(stream);
      if (it != residual_.end() && it->second.size() == acc.size()) {
        for (size_t i = 0; i < acc.size(); ++i) acc[i] += it->second[i];
      }
      src = acc.data();
    }
    // Which positions each token keeps, ascending.
    std::vector<std::vector<int>> kept(shape.tokens);
    for (int t = 0; t < shape.tokens; ++t) select(src + static_cast<size_t>(t) * shape.hidden, shape.hidden, kept[t]);
    write_positions(kept, shape, side);
    y.clear();
    for (int t = 0; t < shape.tokens; ++t) {
      const float* row = src + static_cast<size_t>(t) * shape.hidden;
      for (int i : kept[t]) y.push_back(row[i]);
    }
    y_shape = values_shape(kept, shape);
    if (ef_) {
      std::lock_guard<std::mutex> lock(mu_);
      pending_[stream] = std::move(acc);
    }
  }

  void commit(uint64_t stream, const float* x_hat, Shape shape) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto p = pending_.find(stream);
    if (p == pending_.end()) return;
    std::vector<float>& r = residual_[stream];
    r.resize(shape.elements());
    for (size_t i = 0; i < r.size(); ++i) {
      float d = p->second[i] - x_hat[i];
      r[i] = std::isfinite(d) ? d : 0.0f;  // a NaN must not poison every later message of the stream
    }
    pending_.erase(p);
  }

  Shape parse(const uint8_t* side, size_t size, Shape shape) const override {
    std::vector<std::vector<int>> kept;
    read_positions(side, size, shape, kept);
    return values_shape(kept, shape);
  }

  void inverse(const uint8_t* side, size_t size, const float* y, Shape shape, float* out, uint64_t) override {
    std::vector<std::vector<int>> kept;
    read_positions(side, size, shape, kept);
    std::fill(out, out + shape.elements(), 0.0f);
    size_t k = 0;
    for (int t = 0; t < shape.tokens; ++t) {
      float* row = out + static_cast<size_t>(t) * shape.hidden;
      for (int i : kept[t]) row[i] = y[k++];
    }
  }

 protected:
  virtual void select(const float* row, int hidden, std::vector<int>& kept) const = 0;
  virtual Shape values_shape(const std::vector<std::vector<int>>& kept, Shape shape) const = 0;
  // Whether every token keeps the same count (topk): then the count is not sent.
  virtual bool fixed_count() const = 0;
  virtual int count_for(int hidden) const { return 0; }

  // Side: u8 mode; list mode: [u32 count per token unless fixed] then indices (u16 if hidden <= 65536,
  // else u32) token by token; bitmap mode: ceil(hidden/8) bytes per token, bit i%8 of byte i/8.
  void write_positions(const std::vector<std::vector<int>>& kept, Shape shape, std::vector<uint8_t>& side) const {
    if (kept.empty()) return;  // no tokens, no side bytes
    size_t total = 0;
    for (const auto& k : kept) total += k.size();
    size_t w = index_width(shape.hidden);
    size_t list = (fixed_count() ? 0 : 4 * kept.size()) + total * w;
    size_t bitmap = kept.size() * bitmap_bytes(shape.hidden);
    if (list <= bitmap) {
      side.push_back(kModeList);
      for (const auto& k : kept) {
        if (!fixed_count()) append_value<uint32_t>(side, static_cast<uint32_t>(k.size()));
        for (int i : k) {
          if (w == 2) {
            append_value<uint16_t>(side, static_cast<uint16_t>(i));
          } else {
            append_value<uint32_t>(side, static_cast<uint32_t>(i));
          }
        }
      }
    } else {
      side.push_back(kModeBitmap);
      size_t at = side.size();
      side.resize(at + bitmap, 0);
      for (size_t t = 0; t < kept.size(); ++t) {
        uint8_t* bits = side.data() + at + t * bitmap_bytes(shape.hidden);
        for (int i : kept[t]) bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
      }
    }
  }

  void read_positions(const uint8_t* side, size_t size, Shape shape, std::vector<std::vector<int>>& kept) const {
    ByteReader r(side, size, spec_);
    kept.assign(shape.tokens, {});
    if (shape.tokens == 0) return;
    uint8_t mode = r.read<uint8_t>();
    if (mode == kModeList) {
      size_t w = index_width(shape.hidden);
      for (int t = 0; t < shape.tokens; ++t) {
        uint32_t n = fixed_count() ? static_cast<uint32_t>(count_for(shape.hidden)) : r.read<uint32_t>();
        if (n > static_cast<uint32_t>(shape.hidden))
          corrupt("token " + std::to_string(t) + " claims " + std::to_string(n) + " positions");
        const uint8_t* p = r.take(static_cast<size_t>(n) * w);
        kept[t].resize(n);
        for (uint32_t j = 0; j < n; ++j) {
          uint32_t v;
          if (w == 2) {
            uint16_t h;
            std::memcpy(&h, p + 2 * j, 2);
            v = h;
          } else {
            std::memcpy(&v, p + 4 * j, 4);
          }
          if (v >= static_cast<uint32_t>(shape.hidden) || (j > 0 && v <= static_cast<uint32_t>(kept[t][j - 1]))) {
            corrupt("position " + std::to_string(v) + " of token " + std::to_string(t) + " is out of order or range");
          }
          kept[t][j] = static_cast<int>(v);
        }
      }
    } else if (mode == kModeBitmap) {
      for (int t = 0; t < shape.tokens; ++t) {
        const uint8_t* bits = r.take(bitmap_bytes(shape.hidden));
        for (int i = 0; i < shape.hidden; ++i) {
          if (bits[i / 8] >> (i % 8) & 1u) kept[t].push_back(i);
        }
        if (fixed_count() && static_cast<int>(kept[t].size()) != count_for(shape.hidden)) {
          corrupt("token " + std::to_string(t) + " keeps " + std::to_string(kept[t].size()) + " positions, expected " +
                  std::to_string(count_for(shape.hidden)));
        }
      }
    } else {
      corrupt("unknown position mode " + std::to_string(mode));
    }
    if (r.remaining() != 0) corrupt(std::to_string(r.remaining()) + " trailing side bytes");
  }

  [[noreturn]] void corrupt(const std::string& what) const {
    throw CodecError("codec " + spec_ + ": corrupt positions: " + what);
  }

  std::string spec_;
  bool ef_;
  std::mutex mu_;
  std::unordered_map<uint64_t, std::vector<float>> residual_;
  std::unordered_map<uint64_t, std::vector<float>> pending_;
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
  void select(const float* row, int hidden, std::vector<int>& kept) const override {
    int k = count_for(hidden);
    kept.resize(hidden);
    std::iota(kept.begin(), kept.end(), 0);
    // Ties broken by position so the selection is deterministic.
    auto larger = [row](int a, int b) {
      float ka = keep_key(row[a]), kb = keep_key(row[b]);
      return ka > kb || (ka == kb && a < b);
    };
    if (k < hidden) std::nth_element(kept.begin(), kept.begin() + k, kept.end(), larger);
    kept.resize(k);
    std::sort(kept.begin(), kept.end());
  }
  Shape values_shape(const std::vector<std::vector<int>>& kept, Shape shape) const override {
    return {shape.tokens, count_for(shape.hidden)};
  }
  bool fixed_count() const override { return true; }

 private:
  double ratio_;
};

class ThresholdTransform final : public SparseTransform {
 public:
  ThresholdTransform(std::string spec, double tau, bool ef) : SparseTransform(std::move(spec), ef), tau_(tau) {}
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
  void select(const float* row, int hidden, std::vector<int>& kept) const override {
    kept.clear();
    for (int i = 0; i < hidden; ++i) {
      if (keep_key(row[i]) >= tau_) kept.push_back(i);
    }
  }
  Shape values_shape(const std::vector<std::vector<int>>& kept, Shape shape) const override {
    size_t total = 0;
    for (const auto& k : kept) total += k.size();
    if (shape.elements() > 0) density_ = static_cast<double>(total) / static_cast<double>(shape.elements());
    return {1, static_cast<int>(total)};
  }
  bool fixed_count() const override { return false; }

 private:
  double tau_;
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
