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

// Sum of squares helpers for the delta guard.
double l2_diff(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    s += d * d;
  }
  return std::sqrt(s);
}
double l2(const float* a, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(a[i]);
  return std::sqrt(s);
}

class ChainCodec final : public Codec {
 public:
  ChainCodec(std::string spec, std::vector<std::unique_ptr<Transform>> transforms, std::unique_ptr<Codec> terminal,
             std::vector<std::unique_ptr<ByteCodec>> bytes)
      : spec_(std::move(spec)),
        transforms_(std::move(transforms)),
        terminal_(std::move(terminal)),
        bytes_(std::move(bytes)) {
    for (const auto& t : transforms_) {
      has_delta_ = has_delta_ || t->is_delta();
      needs_commit_ = needs_commit_ || t->wants_commit();
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

  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t stream) override {
    expect_shape(spec_, tokens, hidden);
    Shape shape{tokens, hidden};
    std::vector<uint8_t> inner;
    Attempt attempt = encode_once(x, shape, stream, false, inner);
    if (has_delta_ && !attempt.full_frame_forced) {
      // A delta frame is only as good as the delta is small relative to the frame; when the terminal's
      // error on the delta exceeds what the chain promises on the frame, send a full frame instead.
      double limit = bound(hidden) * l2(x, shape.elements());
      double err = l2_diff(attempt.reconstruction.data(), x, shape.elements());
      if (!(err <= limit)) {
        inner.clear();
        attempt = encode_once(x, shape, stream, true, inner);
      }
    }
    if (needs_commit_) commit(attempt, stream);
    if (bytes_.empty()) {
      out.insert(out.end(), inner.begin(), inner.end());
      return;
    }
    std::vector<uint8_t> packed;
    for (size_t i = 0; i < bytes_.size(); ++i) {
      packed.clear();
      bytes_[i]->encode(inner.data(), inner.size(), packed);
      bytes_[i]->observe(inner.size(), packed.size());
      inner.swap(packed);
    }
    out.insert(out.end(), inner.begin(), inner.end());
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t stream) override {
    expect_shape(spec_, tokens, hidden);
    Shape shape{tokens, hidden};
    std::vector<uint8_t> buf;
    const uint8_t* inner = data;
    size_t inner_size = size;
    if (!bytes_.empty()) {
      std::vector<size_t> limits = stage_limits(shape);
      std::vector<uint8_t> tmp(data, data + size);
      for (size_t i = bytes_.size(); i-- > 0;) {
        bytes_[i]->decode(tmp.data(), tmp.size(), limits[i], buf);
        tmp.swap(buf);
      }
      buf.swap(tmp);
      inner = buf.data();
      inner_size = buf.size();
    }
    ByteReader reader(inner, inner_size, spec_);
    std::vector<const uint8_t*> sides(transforms_.size());
    std::vector<size_t> side_sizes(transforms_.size());
    std::vector<Shape> shapes(transforms_.size() + 1);
    shapes[0] = shape;
    for (size_t i = 0; i < transforms_.size(); ++i) {
      side_sizes[i] = reader.read<uint32_t>();
      sides[i] = reader.take(side_sizes[i]);
      shapes[i + 1] = transforms_[i]->parse(sides[i], side_sizes[i], shapes[i]);
    }
    if (transforms_.empty()) {
      terminal_->decode(inner, inner_size, tokens, hidden, out, stream);
      return;
    }
    Shape ys = shapes.back();
    std::vector<float> y(ys.elements());
    terminal_->decode(inner + reader.position(), reader.remaining(), ys.tokens, ys.hidden, y.data(), stream);
    for (size_t i = transforms_.size(); i-- > 0;) {
      std::vector<float> x(shapes[i].elements());
      transforms_[i]->inverse(sides[i], side_sizes[i], y.data(), shapes[i], i == 0 ? out : x.data(), stream);
      if (i > 0) y.swap(x);
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
    std::vector<std::vector<uint8_t>> sides;
    std::vector<Shape> shapes;
    std::vector<std::vector<float>> inputs;  // reconstruction of each transform's input, [0] = the frame
    std::vector<float> reconstruction;
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

  Attempt encode_once(const float* x, Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& inner) {
    Attempt a;
    a.full_frame_forced = force_full;
    a.shapes.push_back(shape);
    const float* cur = x;
    std::vector<std::vector<float>> ys(transforms_.size());
    for (size_t i = 0; i < transforms_.size(); ++i) {
      std::vector<uint8_t> side;
      Shape ys_shape;
      transforms_[i]->forward(cur, a.shapes.back(), stream, force_full, side, ys[i], ys_shape);
      append_value<uint32_t>(inner, static_cast<uint32_t>(side.size()));
      inner.insert(inner.end(), side.begin(), side.end());
      a.sides.push_back(std::move(side));
      a.shapes.push_back(ys_shape);
      cur = ys[i].data();
    }
    size_t payload_at = inner.size();
    Shape last = a.shapes.back();
    terminal_->encode(cur, last.tokens, last.hidden, inner, stream);
    if (!needs_commit_ && !has_delta_) return a;
    // What the decoder will see, computed with the encoder's view of each transform's state.
    std::vector<float> y(last.elements());
    if (terminal_->lossless()) {
      std::copy(cur, cur + last.elements(), y.begin());
    } else {
      terminal_->decode(inner.data() + payload_at, inner.size() - payload_at, last.tokens, last.hidden, y.data(),
                        stream);
    }
    a.inputs.resize(transforms_.size());
    for (size_t i = transforms_.size(); i-- > 0;) {
      std::vector<float> xi(a.shapes[i].elements());
      transforms_[i]->reconstruct(a.sides[i].data(), a.sides[i].size(), y.data(), a.shapes[i], xi.data(), stream);
      y = xi;
      a.inputs[i] = std::move(xi);
    }
    a.reconstruction = y;
    return a;
  }

  void commit(Attempt& a, uint64_t stream) {
    for (size_t i = transforms_.size(); i-- > 0;) {
      if (transforms_[i]->wants_commit()) transforms_[i]->commit(stream, a.inputs[i].data(), a.shapes[i]);
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
};

}  // namespace

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
  std::vector<std::unique_ptr<ByteCodec>> bytes;
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
        break;
      case StageKind::kBytes:
        bytes.push_back(s.stage.make_bytes(s.params));
        break;
    }
    s.params.check_all_used();
  }
  if (transforms.empty() && bytes.empty()) return terminal;
  if (!terminal) terminal = create_codec("fp32");
  return std::make_unique<ChainCodec>(normalized, std::move(transforms), std::move(terminal), std::move(bytes));
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
