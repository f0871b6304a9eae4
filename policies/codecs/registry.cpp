// The codec registry and spec parser, and ChainCodec: `transform+...+quantizer+bytes+...` specs run the
// float transforms (sparsifiers, delta) first, then one quantizer (fp32 if none is named), then lossless
// byte compressors over the whole message. Decode reverses the order.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <sstream>

#include "engine/error.hpp"
#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/quant_kernels.hpp"

#ifdef EPLAB_AVX2_KERNELS
#include <immintrin.h>
#endif

namespace eplab {
namespace codecs {

namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

[[noreturn]] void bad_spec(const std::string& spec, const std::string& why) {
  throw EplabError("codec spec '" + spec + "': " + why + " (known codecs: " + codec_registry().known() +
                   "; chain them with '+', e.g. topk:ratio=0.25+int8-token+zstd)");
}

struct ParsedStage {
  std::string name;
  CodecStage stage;
  CodecParams params;
};

ParsedStage parse_stage(const std::string& full_spec, const std::string& part) {
  std::string text = trim(part);
  if (text.empty()) bad_spec(full_spec, "empty stage");
  size_t colon = text.find(':');
  std::string name = trim(text.substr(0, colon));
  std::map<std::string, std::string> values;
  if (colon != std::string::npos) {
    std::stringstream rest(text.substr(colon + 1));
    std::string item;
    int positional = 0;
    while (std::getline(rest, item, ',')) {
      item = trim(item);
      if (item.empty()) continue;
      size_t eq = item.find('=');
      if (eq == std::string::npos) {
        std::string key = std::to_string(positional++);
        key.insert(key.begin(), '_');  // "_0", "_1": positional values such as zstd:3
        values[key] = item;
      } else {
        values[trim(item.substr(0, eq))] = trim(item.substr(eq + 1));
      }
    }
  }
  std::optional<CodecStage> stage = codec_registry().find(name);
  if (!stage) bad_spec(full_spec, "unknown codec '" + name + "'");
  return ParsedStage{name, std::move(*stage), CodecParams(text, std::move(values))};
}

// The delta guard's test, err <= limit with err = ||reconstruction - x||_2 and limit = bound * ||x||_2, each
// norm a sum of squares in double taken element by element in order. Partial sums in several lanes (which
// vectorize) give the same answer unless the two sides are within their rounding error of each other: a sum
// of n non-negative terms in any order is within (n-1)*2^-53 of the exact sum, relatively. Only then are the
// sums redone in order, so the decision is always the one the ordered sums make.
// out = y + base (y alone without base) when out is given, else r = y; the sums of (r - x)^2 and x^2 in lanes.
void reconstruct_sums_portable(const float* y, const float* base, const float* x, size_t n, float* out, double* err2,
                               double* x2) {
  double e[4] = {}, s[4] = {};
  size_t i = 0;
  auto r_at = [&](size_t k) {
    float r = base ? y[k] + base[k] : y[k];
    if (out) out[k] = r;
    return r;
  };
  for (; i + 4 <= n; i += 4) {
    for (size_t j = 0; j < 4; ++j) {
      double d = static_cast<double>(r_at(i + j)) - static_cast<double>(x[i + j]);
      double v = static_cast<double>(x[i + j]);
      e[j] += d * d;
      s[j] += v * v;
    }
  }
  for (; i < n; ++i) {
    double d = static_cast<double>(r_at(i)) - static_cast<double>(x[i]);
    e[0] += d * d;
    s[0] += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  }
  *err2 = (e[0] + e[1]) + (e[2] + e[3]);
  *x2 = (s[0] + s[1]) + (s[2] + s[3]);
}

#ifdef EPLAB_AVX2_KERNELS
EPLAB_TARGET_AVX2 void reconstruct_sums_avx2(const float* y, const float* base, const float* x, size_t n, float* out,
                                             double* err2, double* x2) {
  __m256d e0 = _mm256_setzero_pd(), e1 = e0, s0 = e0, s1 = e0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 r = _mm256_loadu_ps(y + i), v = _mm256_loadu_ps(x + i);
    if (base) r = _mm256_add_ps(r, _mm256_loadu_ps(base + i));
    if (out) _mm256_storeu_ps(out + i, r);
    __m256d v0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), v1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(r)), v0);
    __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)), v1);
    e0 = _mm256_add_pd(e0, _mm256_mul_pd(d0, d0));
    e1 = _mm256_add_pd(e1, _mm256_mul_pd(d1, d1));
    s0 = _mm256_add_pd(s0, _mm256_mul_pd(v0, v0));
    s1 = _mm256_add_pd(s1, _mm256_mul_pd(v1, v1));
  }
  alignas(32) double e[4], s[4];
  _mm256_store_pd(e, _mm256_add_pd(e0, e1));
  _mm256_store_pd(s, _mm256_add_pd(s0, s1));
  double rest_e = 0, rest_s = 0;
  reconstruct_sums_portable(y + i, base ? base + i : nullptr, x + i, n - i, out ? out + i : nullptr, &rest_e, &rest_s);
  *err2 = ((e[0] + e[1]) + (e[2] + e[3])) + rest_e;
  *x2 = ((s[0] + s[1]) + (s[2] + s[3])) + rest_s;
}
#endif

// sums: the lane sums of (recon - x)^2 and x^2 if a transform computed them with recon, else null.
bool delta_within_bound(const float* recon, const float* x, size_t n, double bound, const double* sums) {
  double err2 = 0, x2 = 0;
  if (sums) {
    err2 = sums[0];
    x2 = sums[1];
  } else {
    reconstruct_sums(recon, nullptr, x, n, nullptr, &err2, &x2);
  }
  double err = std::sqrt(err2);
  double limit = bound * std::sqrt(x2);
  if (std::isnan(err) || std::isnan(limit)) return false;  // a NaN term makes the ordered sum NaN as well
  // Relative error of either sum against the exact one, doubled for the ordered one, halved by the square
  // root, plus the slack of sqrt and the multiply by bound: 4 n 2^-53 covers all of it with room to spare.
  const double margin = 4.0 * (static_cast<double>(n) + 4) * 0x1p-53;
  if (margin < 1e-3) {
    if (err <= limit * (1 - margin)) return true;
    if (err > limit * (1 + margin)) return false;
  }
  double es = 0, ss = 0;
  for (size_t k = 0; k < n; ++k) {
    double d = static_cast<double>(recon[k]) - static_cast<double>(x[k]);
    es += d * d;
  }
  for (size_t k = 0; k < n; ++k) ss += static_cast<double>(x[k]) * static_cast<double>(x[k]);
  return std::sqrt(es) <= bound * std::sqrt(ss);
}

class ChainCodec final : public Codec {
 public:
  ChainCodec(std::string spec, std::vector<std::unique_ptr<Transform>> transforms, std::unique_ptr<Codec> terminal,
             std::vector<std::unique_ptr<ByteCodec>> bytes, bool terminal_builtin)
      : spec_(std::move(spec)),
        transforms_(std::move(transforms)),
        terminal_(std::move(terminal)),
        bytes_(std::move(bytes)),
        terminal_builtin_(terminal_builtin) {
    for (const auto& t : transforms_) {
      has_delta_ = has_delta_ || t->is_delta();
      needs_commit_ = needs_commit_ || t->wants_commit();
    }
    // Built-in names cannot be shadowed, so these are the bit-exact copy.
    terminal_is_fp32_ = terminal_->name() == "fp32" || terminal_->name() == "identity";
    if (!bytes_.empty() && transforms_.empty()) {
      if (terminal_is_fp32_) bytes_[0]->set_element_bytes(4);
      if (terminal_->name() == "bf16") bytes_[0]->set_element_bytes(2);
    }
  }

  std::string name() const override { return spec_; }
  bool lossless() const override { return transforms_.empty() && terminal_->lossless(); }
  double error_bound() const override { return bound(-1); }
  double error_bound_for(int hidden) const override { return bound(hidden); }
  bool fixed_rate() const override { return transforms_.empty() && bytes_.empty() && terminal_->fixed_rate(); }

  void reset(uint64_t stream) override {
    for (auto& t : transforms_) t->reset(stream);
    terminal_->reset(stream);
  }

  // The stages' states in chain order, then the terminal's as a counted blob (it may be any codec).
  void save_state(std::vector<uint8_t>& out) const override {
    for (const auto& t : transforms_) t->save_state(out);
    std::vector<uint8_t> term;
    terminal_->save_state(term);
    put_state<uint64_t>(out, term.size());
    out.insert(out.end(), term.begin(), term.end());
  }
  void load_state(const uint8_t* data, size_t size) override {
    ByteReader in(data, size, spec_ + " (saved state)");
    for (auto& t : transforms_) t->load_state(in);
    const auto n = in.read<uint64_t>();
    if (n != in.remaining())
      throw CodecError("codec " + spec_ + ": saved state holds " + std::to_string(in.remaining()) +
                       " bytes for the terminal codec, its count says " + std::to_string(n));
    terminal_->load_state(in.take(n), n);
  }

  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t stream) override {
    expect_shape(spec_, tokens, hidden);
    Shape shape{tokens, hidden};
    auto scratch = encode_scratch_.lease();
    EncodeScratch& es = *scratch;
    // Without byte stages the transforms and the terminal write straight into out.
    std::vector<uint8_t>& inner = bytes_.empty() ? out : es.inner;
    const size_t start = bytes_.empty() ? out.size() : 0;
    if (!bytes_.empty()) inner.clear();
    Attempt attempt = encode_once(x, shape, stream, false, inner, es);
    if (has_delta_ && !attempt.full_frame_forced) {
      // A delta frame is only as good as the delta is small relative to the frame; when the terminal's
      // error on the delta exceeds what the chain promises on the frame, send a full frame instead.
      if (!delta_within_bound(attempt.reconstruction, x, shape.elements(), bound(hidden),
                              attempt.has_sums ? attempt.sums : nullptr)) {
        inner.resize(start);
        attempt = encode_once(x, shape, stream, true, inner, es);
      }
    }
    if (attempt.fp32_payload) {
      terminal_->encode(attempt.fp32_payload, attempt.payload_shape.tokens, attempt.payload_shape.hidden, inner,
                        stream);
    }
    if (needs_commit_) commit(es, stream);
    if (bytes_.empty()) return;
    const uint8_t* raw = inner.data();
    size_t raw_size = inner.size();
    if (terminal_is_fp32_ && transforms_.empty()) {
      // fp32's encoding is x's bytes: the first byte stage reads them where they are.
      raw = reinterpret_cast<const uint8_t*>(x);
      raw_size = shape.elements() * sizeof(float);
    }
    for (size_t i = 0; i < bytes_.size(); ++i) {
      const bool last = i + 1 == bytes_.size();
      std::vector<uint8_t>& dst = last ? out : es.packed;
      if (!last) dst.clear();
      const size_t at = dst.size();
      bytes_[i]->encode(raw, raw_size, dst);
      bytes_[i]->observe(raw_size, dst.size() - at);
      if (!last) {
        es.inner.swap(es.packed);
        raw = es.inner.data();
        raw_size = es.inner.size();
      }
    }
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t stream) override {
    expect_shape(spec_, tokens, hidden);
    Shape shape{tokens, hidden};
    auto scratch = decode_scratch_.lease();
    DecodeScratch& ds = *scratch;
    const uint8_t* inner = data;
    size_t inner_size = size;
    if (!bytes_.empty()) {
      std::vector<size_t> limits = stage_limits(shape);
      const size_t raw_fp32 = shape.elements() * sizeof(float);
      for (size_t i = bytes_.size(); i-- > 0;) {
        if (i == 0 && terminal_is_fp32_ && transforms_.empty() &&
            bytes_[0]->decode_to(inner, inner_size, limits[0], reinterpret_cast<uint8_t*>(out), raw_fp32)) {
          return;  // fp32 is the bytes themselves: decoded in place
        }
        std::vector<uint8_t>& dst = inner == ds.a.data() ? ds.b : ds.a;
        bytes_[i]->decode(inner, inner_size, limits[i], dst);
        inner = dst.data();
        inner_size = dst.size();
      }
    }
    ByteReader reader(inner, inner_size, spec_);
    const size_t nt = transforms_.size();
    ds.sides.resize(nt);
    ds.side_sizes.resize(nt);
    ds.shapes.resize(nt + 1);
    ds.shapes[0] = shape;
    for (size_t i = 0; i < nt; ++i) {
      ds.side_sizes[i] = reader.read<uint32_t>();
      ds.sides[i] = reader.take(ds.side_sizes[i]);
      ds.shapes[i + 1] = transforms_[i]->parse(ds.sides[i], ds.side_sizes[i], ds.shapes[i]);
    }
    if (nt == 0) {
      terminal_->decode(inner, inner_size, tokens, hidden, out, stream);
      return;
    }
    // Transform i writes its input's reconstruction to out (i = 0) or ds.x[i]; the terminal decodes into the
    // last transform's output when that transform works in place.
    ds.x.resize(nt);
    auto output_of = [&](size_t i) -> float* {
      if (i == 0) return out;
      ds.x[i].resize(ds.shapes[i].elements());
      return ds.x[i].data();
    };
    Shape ys = ds.shapes.back();
    float* y = nullptr;
    if (transforms_.back()->inverse_in_place()) {
      y = output_of(nt - 1);
    } else {
      ds.y.resize(ys.elements());
      y = ds.y.data();
    }
    terminal_->decode(inner + reader.position(), reader.remaining(), ys.tokens, ys.hidden, y, stream);
    for (size_t i = nt; i-- > 0;) {
      float* xi = output_of(i);
      transforms_[i]->inverse(ds.sides[i], ds.side_sizes[i], y, ds.shapes[i], xi, stream);
      y = xi;
    }
  }

  size_t encoded_size(int tokens, int hidden) const override { return size_estimate({tokens, hidden}, false); }
  size_t max_encoded_size(int tokens, int hidden) const override {
    std::vector<size_t> limits = stage_limits({tokens, hidden});
    return limits.back();
  }

  // Each stage on the shape it sees (expected sizes): transforms on their input, the quantizer on what the
  // transforms leave, byte codecs on the quantizer's output.
  double gpu_seconds(int tokens, int hidden, bool encode) const override {
    double s = 0;
    Shape shape{tokens, hidden};
    for (const auto& t : transforms_) {
      s += static_cast<double>(shape.elements()) / kGpuTransformElementsPerS;
      shape = t->y_shape(shape, false);
    }
    s += terminal_->gpu_seconds(shape.tokens, shape.hidden, encode);
    double raw = static_cast<double>(terminal_->encoded_size(shape.tokens, shape.hidden));
    for (size_t i = 0; i < bytes_.size(); ++i) s += raw / kGpuLosslessBytesPerS;
    return s;
  }

  void calibrate(const float* sample, int tokens, int hidden) override {
    for (auto& t : transforms_) t->reset(kCalibrationStream);
    std::vector<uint8_t> out;
    encode(sample, tokens, hidden, out, kCalibrationStream);
    for (auto& t : transforms_) t->reset(kCalibrationStream);
    terminal_->calibrate(sample, tokens, hidden);
  }

 private:
  static constexpr uint64_t kCalibrationStream = ~0ull;

  struct Attempt {
    bool full_frame_forced = false;
    const float* reconstruction = nullptr;  // the decoder's view of the frame (ef and delta chains only)
    const float* fp32_payload = nullptr;    // set when the fp32 terminal is still to be written
    bool has_sums = false;                  // sums of (reconstruction - x)^2 and x^2, from the transform
    double sums[2] = {0, 0};
    Shape payload_shape;
  };
  // Buffers of one encode, kept between calls: each transform's side bytes and output, the reconstruction of
  // each transform's input ([0] = the frame), the terminal's decoded output, the byte stages' input and output.
  struct EncodeScratch {
    std::vector<Shape> shapes;
    std::vector<std::vector<uint8_t>> sides;
    std::vector<std::vector<float>> ys;
    std::vector<std::vector<float>> inputs;
    std::vector<float> y_hat;
    std::vector<uint8_t> inner, packed;
  };
  struct DecodeScratch {
    std::vector<uint8_t> a, b;
    std::vector<const uint8_t*> sides;
    std::vector<size_t> side_sizes;
    std::vector<Shape> shapes;
    std::vector<float> y;
    std::vector<std::vector<float>> x;
  };

  double bound(int hidden) const {
    double total = 0;
    bool per_token = true;
    for (const auto& t : transforms_) {
      if (t->is_delta()) continue;  // guarded in encode(): a frame never exceeds the rest of the chain's bound
      total += t->error_bound(hidden);
      per_token = per_token && t->keeps_rows();
    }
    total += (hidden > 0 && per_token) ? terminal_->error_bound_for(hidden) : terminal_->error_bound();
    return total;
  }

  Attempt encode_once(const float* x, Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& inner,
                      EncodeScratch& es) {
    Attempt a;
    a.full_frame_forced = force_full;
    const size_t nt = transforms_.size();
    if (nt == 1 && terminal_builtin_ && !terminal_is_fp32_ &&
        encode_delta_by_rows(x, shape, stream, force_full, inner, es, a)) {
      return a;
    }
    es.shapes.assign(1, shape);
    es.sides.resize(nt);
    es.ys.resize(nt);
    const float* cur = x;
    for (size_t i = 0; i < nt; ++i) {
      std::vector<uint8_t>& side = es.sides[i];
      side.clear();
      Shape ys_shape;
      transforms_[i]->forward(cur, es.shapes.back(), stream, force_full, side, es.ys[i], ys_shape);
      append_value<uint32_t>(inner, static_cast<uint32_t>(side.size()));
      inner.insert(inner.end(), side.begin(), side.end());
      es.shapes.push_back(ys_shape);
      cur = es.ys[i].data();
    }
    size_t payload_at = inner.size();
    Shape last = es.shapes.back();
    if (terminal_is_fp32_ && nt == 0 && !bytes_.empty()) {
      // The byte stages read x itself (see encode); the bytes would only be copied here.
      return a;
    }
    if (!needs_commit_ && !has_delta_) {
      terminal_->encode(cur, last.tokens, last.hidden, inner, stream);
      return a;
    }
    if (terminal_is_fp32_) {
      // fp32 decodes to its input: encode() writes it once the frame is settled (not for a discarded delta).
      a.fp32_payload = cur;
      a.payload_shape = last;
    } else {
      terminal_->encode(cur, last.tokens, last.hidden, inner, stream);
    }
    // What the decoder will see, computed with the encoder's view of each transform's state.
    const float* y = cur;
    if (!terminal_->lossless()) {
      es.y_hat.resize(last.elements());
      terminal_->decode(inner.data() + payload_at, inner.size() - payload_at, last.tokens, last.hidden, es.y_hat.data(),
                        stream);
      y = es.y_hat.data();
    }
    es.inputs.resize(nt);
    for (size_t i = nt; i-- > 0;) {
      std::vector<float>& xi = es.inputs[i];
      xi.resize(es.shapes[i].elements());
      // The delta guard (encode) needs sums over the frame's reconstruction: taken in the same pass if it can.
      if (i == 0 && has_delta_ && !force_full &&
          transforms_[0]->reconstruct_with_sums(es.sides[0].data(), es.sides[0].size(), y, es.shapes[0], xi.data(),
                                                stream, x, &a.sums[0], &a.sums[1])) {
        a.has_sums = true;
      } else {
        transforms_[i]->reconstruct(es.sides[i].data(), es.sides[i].size(), y, es.shapes[i], xi.data(), stream);
      }
      y = xi.data();
    }
    a.reconstruction = y;
    return a;
  }

  // delta+quantizer a few rows at a time: the difference, its encoding, the decoding and the reconstruction with
  // the guard's sums stay in cache instead of each making a pass over the whole frame. Same bytes and
  // reconstruction as the general path (each step is element- or token-wise); false where the transform does not
  // offer its base.
  bool encode_delta_by_rows(const float* x, Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& inner,
                            EncodeScratch& es, Attempt& a) {
    es.sides.resize(1);
    std::vector<uint8_t>& side = es.sides[0];
    side.clear();
    const float* base = nullptr;
    if (!transforms_[0]->forward_base(shape, stream, force_full, side, &base)) return false;
    append_value<uint32_t>(inner, static_cast<uint32_t>(side.size()));
    inner.insert(inner.end(), side.begin(), side.end());
    es.shapes.assign(2, shape);
    es.inputs.resize(1);
    es.inputs[0].resize(shape.elements());
    float* recon = es.inputs[0].data();
    const size_t hidden = static_cast<size_t>(shape.hidden);
    const int rows = hidden > 0 ? static_cast<int>(std::max<size_t>(1, (size_t{32} << 10) / hidden)) : shape.tokens;
    es.ys.resize(1);
    es.ys[0].resize(static_cast<size_t>(rows) * hidden);
    es.y_hat.resize(static_cast<size_t>(rows) * hidden);
    double err2 = 0, x2 = 0;
    for (int t0 = 0; t0 < shape.tokens; t0 += rows) {
      const int n_rows = std::min(rows, shape.tokens - t0);
      const size_t off = static_cast<size_t>(t0) * hidden, n = static_cast<size_t>(n_rows) * hidden;
      const float* y = x + off;
      if (base) {
        float* d = es.ys[0].data();
        for (size_t i = 0; i < n; ++i) d[i] = x[off + i] - base[off + i];
        y = d;
      }
      const size_t at = inner.size();
      terminal_->encode(y, n_rows, shape.hidden, inner, stream);
      terminal_->decode(inner.data() + at, inner.size() - at, n_rows, shape.hidden, es.y_hat.data(), stream);
      double e = 0, s = 0;
      reconstruct_sums(es.y_hat.data(), base ? base + off : nullptr, x + off, n, recon + off, &e, &s);
      err2 += e;
      x2 += s;
    }
    a.reconstruction = recon;
    a.has_sums = true;
    a.sums[0] = err2;
    a.sums[1] = x2;
    return true;
  }

  void commit(EncodeScratch& es, uint64_t stream) {
    for (size_t i = transforms_.size(); i-- > 0;) {
      if (transforms_[i]->wants_commit()) transforms_[i]->commit_buffer(stream, es.inputs[i], es.shapes[i]);
    }
  }

  // Worst-case bytes after the transforms+terminal ([0]) and after each byte stage.
  std::vector<size_t> stage_limits(Shape shape) const {
    size_t inner = inner_size(shape, true);
    std::vector<size_t> limits;
    limits.push_back(inner);
    for (const auto& b : bytes_) limits.push_back(b->max_encoded_size(limits.back()));
    // limits[i] bounds the input of byte stage i, i.e. what its decode may produce.
    return limits;
  }

  size_t inner_size(Shape shape, bool worst) const {
    size_t total = 0;
    Shape cur = shape;
    for (const auto& t : transforms_) {
      total += sizeof(uint32_t) + t->side_size(cur, worst);
      cur = t->y_shape(cur, worst);
    }
    total +=
        worst ? terminal_->max_encoded_size(cur.tokens, cur.hidden) : terminal_->encoded_size(cur.tokens, cur.hidden);
    return total;
  }

  size_t size_estimate(Shape shape, bool worst) const {
    double size = static_cast<double>(inner_size(shape, worst));
    for (const auto& b : bytes_) size = std::ceil(size * b->observed_ratio());
    return static_cast<size_t>(size);
  }

  std::string spec_;
  std::vector<std::unique_ptr<Transform>> transforms_;
  std::unique_ptr<Codec> terminal_;
  std::vector<std::unique_ptr<ByteCodec>> bytes_;
  bool has_delta_ = false;
  bool needs_commit_ = false;
  bool terminal_is_fp32_ = false;
  // Built-in quantizers encode token by token, tokens back to back (docs/codecs.md, Wire formats), so a run of
  // rows encodes to the matching slice of the whole encoding: the delta path below relies on that.
  bool terminal_builtin_ = false;
  Reusable<EncodeScratch> encode_scratch_;
  Reusable<DecodeScratch> decode_scratch_;
};

}  // namespace

void reconstruct_sums(const float* y, const float* base, const float* x, size_t n, float* out, double* err2,
                      double* x2) {
#ifdef EPLAB_AVX2_KERNELS
  if (avx2_kernels_enabled()) return reconstruct_sums_avx2(y, base, x, n, out, err2, x2);
#endif
  reconstruct_sums_portable(y, base, x, n, out, err2, x2);
}

double CodecParams::get_double(const std::string& key, double fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  used_[key] = true;
  try {
    size_t pos = 0;
    double v = std::stod(it->second, &pos);
    if (pos != it->second.size()) throw std::invalid_argument(it->second);
    return v;
  } catch (const std::exception&) {
    throw EplabError("codec spec '" + spec_ + "': parameter " + key + "='" + it->second + "' is not a number");
  }
}

int CodecParams::get_int(const std::string& key, int fallback) const {
  double v = get_double(key, fallback);
  if (v != std::floor(v) || std::abs(v) > 1e9) {
    throw EplabError("codec spec '" + spec_ + "': parameter " + key + " must be an integer");
  }
  return static_cast<int>(v);
}

bool CodecParams::get_bool(const std::string& key, bool fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) return fallback;
  used_[key] = true;
  if (it->second == "1" || it->second == "true" || it->second == "on") return true;
  if (it->second == "0" || it->second == "false" || it->second == "off") return false;
  throw EplabError("codec spec '" + spec_ + "': parameter " + key + "='" + it->second + "' is not 0/1");
}

void CodecParams::check_all_used() const {
  for (const auto& [key, value] : values_) {
    if (!used_.count(key)) {
      throw EplabError("codec spec '" + spec_ + "': unknown parameter '" + (key[0] == '_' ? value : key) + "'");
    }
  }
}

void expect_size(const std::string& codec, size_t got, size_t want, int tokens, int hidden) {
  if (got != want) {
    throw CodecError("codec " + codec + ": encoded buffer is " + std::to_string(got) + " bytes, expected " +
                     std::to_string(want) + " for " + std::to_string(tokens) + " x " + std::to_string(hidden) +
                     " (truncated or corrupt message, or a shape mismatch)");
  }
}

void expect_shape(const std::string& codec, int tokens, int hidden) {
  if (tokens < 0 || hidden < 0) {
    throw CodecError("codec " + codec + ": negative shape " + std::to_string(tokens) + " x " + std::to_string(hidden));
  }
}

void put_floats(std::vector<uint8_t>& out, const std::vector<float>& v) {
  put_state<uint64_t>(out, v.size());
  const auto* b = reinterpret_cast<const uint8_t*>(v.data());
  out.insert(out.end(), b, b + v.size() * sizeof(float));
}

void get_floats(ByteReader& in, std::vector<float>& v) {
  const auto n = in.read<uint64_t>();
  if (n > in.remaining() / sizeof(float))
    throw CodecError("saved codec state: " + std::to_string(n) + " floats announced at byte " +
                     std::to_string(in.position()) + ", " + std::to_string(in.remaining()) + " bytes left");
  v.resize(n);
  if (n) std::memcpy(v.data(), in.take(n * sizeof(float)), n * sizeof(float));
}

const uint8_t* ByteReader::take(size_t n) {
  if (n > size_ - pos_) {
    throw CodecError("codec " + codec_ + ": encoded buffer ends at byte " + std::to_string(size_) + " but " +
                     std::to_string(n) + " more bytes are needed at byte " + std::to_string(pos_) +
                     " (truncated or corrupt message)");
  }
  const uint8_t* p = data_ + pos_;
  pos_ += n;
  return p;
}

EPLAB_REGISTRY(CodecStage, codec_registry, "codec", r) {
  add_identity_codecs(r);
  add_fp8_codecs(r);
  add_int8_codecs(r);
  add_mx_codecs(r);
  add_logfmt_codecs(r);
  add_sparse_codecs(r);
  add_delta_codecs(r);
  add_lossless_codecs(r);
}

}  // namespace codecs

void Codec::load_state(const uint8_t* data, size_t size) {
  if (size != 0)
    throw CodecError("codec " + name() + " keeps no stream state, but the saved state holds " + std::to_string(size) +
                     " bytes (a checkpoint of another codec?)");
}

void register_codec_factory(const std::string& name, CodecFactory factory) {
  if (!factory) throw EplabError("codec name '" + name + "': the factory is empty");
  codecs::codec_registry().add_user(
      name, codecs::quantizer_stage([factory](const codecs::CodecParams&) { return factory(); }), "+");
}

void unregister_codec_factory(const std::string& name) { codecs::codec_registry().remove_user(name); }

std::vector<std::string> registered_codec_factories() { return codecs::codec_registry().user_names(); }

std::unique_ptr<Codec> create_codec(const std::string& spec) {
  using namespace codecs;
  // Matched whole first: a run-time codec's name may hold the ':' and ',' that separate a stage's parameters.
  if (std::optional<CodecStage> whole = codec_registry().find(spec); whole && whole->kind == StageKind::kQuantizer)
    return whole->make_quantizer(CodecParams(spec, {}));
  std::vector<ParsedStage> stages;
  std::string normalized;
  std::stringstream ss(spec);
  std::string part;
  while (std::getline(ss, part, '+')) {
    stages.push_back(parse_stage(spec, part));
    if (!normalized.empty()) normalized += '+';
    normalized += trim(part);
  }
  if (stages.empty()) bad_spec(spec, "empty spec");

  std::vector<std::unique_ptr<Transform>> transforms;
  std::unique_ptr<Codec> terminal;
  bool terminal_builtin = true;
  std::vector<std::unique_ptr<ByteCodec>> bytes;
  const std::vector<std::string> builtins = codec_registry().names();
  for (auto& s : stages) {
    switch (s.stage.kind) {
      case StageKind::kTransform:
        if (terminal || !bytes.empty()) bad_spec(spec, "'" + s.name + "' must come before the quantizer");
        transforms.push_back(s.stage.make_transform(s.params));
        break;
      case StageKind::kQuantizer:
        if (terminal) bad_spec(spec, "a chain takes one quantizer, '" + s.name + "' is the second");
        if (!bytes.empty()) bad_spec(spec, "the quantizer '" + s.name + "' must come before byte compressors");
        terminal = s.stage.make_quantizer(s.params);
        terminal_builtin = std::find(builtins.begin(), builtins.end(), s.name) != builtins.end();
        break;
      case StageKind::kBytes:
        bytes.push_back(s.stage.make_bytes(s.params));
        break;
    }
    s.params.check_all_used();
  }
  if (transforms.empty() && bytes.empty()) return terminal;
  if (!terminal) terminal = create_codec("fp32");
  return std::make_unique<ChainCodec>(normalized, std::move(transforms), std::move(terminal), std::move(bytes),
                                      terminal_builtin);
}

std::vector<std::string> codec_names() { return codecs::codec_registry().names(); }

std::vector<CodecInfo> codec_catalog() {
  std::vector<CodecInfo> out;
  for (const auto& e : codecs::codec_registry().entries()) {
    if (!e.builtin) continue;
    const char* kind = e.factory.kind == codecs::StageKind::kQuantizer   ? "quantizer"
                       : e.factory.kind == codecs::StageKind::kTransform ? "transform"
                                                                         : "lossless";
    out.push_back({e.name, kind, e.help});
  }
  return out;
}

double Codec::gpu_seconds(int tokens, int hidden, bool encode) const {
  double n = static_cast<double>(tokens) * static_cast<double>(hidden);
  return n / (encode ? kGpuQuantizeElementsPerS : kGpuDequantizeElementsPerS);
}

}  // namespace eplab
