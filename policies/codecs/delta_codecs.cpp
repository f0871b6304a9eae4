// delta[:period=N]: sends each message of a stream as its difference from what the receiver reconstructed
// for the previous one, so the chain's quantizer (and sparsifier) see a small residual when consecutive
// steps are alike. Every N-th message is a full frame, so a receiver that lost a message or was reset
// recovers; the chain also falls back to a full frame whenever the delta would break its error bound.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "engine/error.hpp"
#include "policies/codecs/codec_internal.hpp"

namespace eplab::codecs {
namespace {

constexpr uint8_t kFull = 0;
constexpr uint8_t kDelta = 1;
constexpr size_t kSideBytes = 1 + 4 + 4;  // u8 kind, u32 frame number, u32 base frame number

template <typename Map>
std::vector<uint64_t> sorted_keys(const Map& m) {
  std::vector<uint64_t> keys;
  for (const auto& kv : m) keys.push_back(kv.first);
  std::sort(keys.begin(), keys.end());
  return keys;
}

struct StreamState {
  std::vector<float> base;  // the receiver's reconstruction of frame `seq`
  Shape shape;
  uint32_t seq = 0;
  uint32_t since_full = 0;
  bool valid = false;
};

class DeltaTransform final : public Transform {
 public:
  DeltaTransform(std::string spec, int period) : spec_(std::move(spec)), period_(period) {}
  std::string name() const override { return spec_; }
  double error_bound(int) const override { return 0.0; }  // guarded by the chain, see ChainCodec::encode
  bool is_delta() const override { return true; }
  bool wants_commit() const override { return true; }
  bool stateful() const override { return true; }

  void reset(uint64_t stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    encoder_.erase(stream);
    decoder_.erase(stream);
    pending_.erase(stream);
  }

  // Encoder and decoder references, then frames in flight (none between two calls of the engine), each map in
  // stream order.
  void save_state(std::vector<uint8_t>& out) const override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto* m : {&encoder_, &decoder_}) {
      put_state<uint64_t>(out, m->size());
      for (uint64_t stream : sorted_keys(*m)) {
        const StreamState& s = m->at(stream);
        put_state(out, stream);
        put_state<int32_t>(out, s.shape.tokens);
        put_state<int32_t>(out, s.shape.hidden);
        put_state(out, s.seq);
        put_state(out, s.since_full);
        put_state<uint8_t>(out, s.valid);
        put_floats(out, s.base);
      }
    }
    put_state<uint64_t>(out, pending_.size());
    for (uint64_t stream : sorted_keys(pending_)) {
      put_state(out, stream);
      put_state<uint8_t>(out, pending_.at(stream).full);
      put_state(out, pending_.at(stream).seq);
    }
  }
  void load_state(ByteReader& in) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* m : {&encoder_, &decoder_}) {
      m->clear();
      const auto n = in.read<uint64_t>();
      for (uint64_t i = 0; i < n; ++i) {
        const auto stream = in.read<uint64_t>();
        StreamState s;
        s.shape.tokens = in.read<int32_t>();
        s.shape.hidden = in.read<int32_t>();
        s.seq = in.read<uint32_t>();
        s.since_full = in.read<uint32_t>();
        s.valid = in.read<uint8_t>() != 0;
        get_floats(in, s.base);
        if (s.shape.tokens < 0 || s.shape.hidden < 0 || (s.valid && s.base.size() != s.shape.elements()))
          throw CodecError("codec " + spec_ + ": saved state of stream " + std::to_string(stream) + " holds " +
                           std::to_string(s.base.size()) + " reference values for a " + std::to_string(s.shape.tokens) +
                           " x " + std::to_string(s.shape.hidden) + " frame");
        (*m)[stream] = std::move(s);
      }
    }
    pending_.clear();
    const auto n = in.read<uint64_t>();
    for (uint64_t i = 0; i < n; ++i) {
      const auto stream = in.read<uint64_t>();
      Pending p;
      p.full = in.read<uint8_t>() != 0;
      p.seq = in.read<uint32_t>();
      pending_[stream] = p;
    }
  }

  bool forward_base(Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& side,
                    const float** base) override {
    std::lock_guard<std::mutex> lock(mu_);
    *base = begin_frame(shape, stream, force_full, side) ? nullptr : encoder_[stream].base.data();
    return true;
  }

  void forward(const float* x, Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& side,
               std::vector<float>& y, Shape& y_shape) override {
    std::lock_guard<std::mutex> lock(mu_);
    bool full = begin_frame(shape, stream, force_full, side);
    StreamState& s = encoder_[stream];
    const size_t n = shape.elements();
    y.resize(n);
    if (full) {
      if (n > 0) std::memcpy(y.data(), x, n * sizeof(float));
    } else {
      subtract(x, s.base.data(), n, y.data());
    }
    y_shape = shape;
  }

  // Decides full or delta frame, writes the side bytes and records the pending frame; returns whether full.
  bool begin_frame(Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& side) {
    StreamState& s = encoder_[stream];
    bool full = force_full || !s.valid || s.shape.tokens != shape.tokens || s.shape.hidden != shape.hidden ||
                s.since_full + 1 >= static_cast<uint32_t>(period_);
    uint32_t seq = s.valid ? s.seq + 1 : 0;
    side.push_back(full ? kFull : kDelta);
    append_value<uint32_t>(side, seq);
    append_value<uint32_t>(side, full ? seq : s.seq);
    pending_[stream] = {full, seq};
    return full;
  }

  void reconstruct(const uint8_t* side, size_t size, const float* y, Shape shape, float* out,
                   uint64_t stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    Header h = read_header(side, size);
    if (h.kind == kDelta) {
      add(y, encoder_[stream].base.data(), shape.elements(), out);
    } else if (y != out && shape.elements() > 0) {
      std::memcpy(out, y, shape.elements() * sizeof(float));
    }
  }
  bool inverse_in_place() const override { return true; }
  bool reconstruct_with_sums(const uint8_t* side, size_t size, const float* y, Shape shape, float* out, uint64_t stream,
                             const float* x, double* err2, double* x2) override {
    std::lock_guard<std::mutex> lock(mu_);
    Header h = read_header(side, size);
    const float* base = h.kind == kDelta ? encoder_[stream].base.data() : nullptr;
    reconstruct_sums(y, base, x, shape.elements(), out, err2, x2);
    return true;
  }

  void commit(uint64_t stream, const float* x_hat, Shape shape) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto p = pending_.find(stream);
    if (p == pending_.end()) return;
    StreamState& s = encoder_[stream];
    s.base.assign(x_hat, x_hat + shape.elements());
    advance(s, p->second, shape);
    pending_.erase(p);
  }

  void commit_buffer(uint64_t stream, std::vector<float>& x_hat, Shape shape) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto p = pending_.find(stream);
    if (p == pending_.end()) return;
    StreamState& s = encoder_[stream];
    x_hat.resize(shape.elements());
    s.base.swap(x_hat);
    advance(s, p->second, shape);
    pending_.erase(p);
  }

 private:
  struct Pending {
    bool full;
    uint32_t seq;
  };
  static void advance(StreamState& s, const Pending& p, Shape shape) {
    s.shape = shape;
    s.seq = p.seq;
    s.since_full = p.full ? 0 : s.since_full + 1;
    s.valid = true;
  }

 public:
  Shape parse(const uint8_t* side, size_t size, Shape shape) const override {
    read_header(side, size);
    return shape;
  }

  void inverse(const uint8_t* side, size_t size, const float* y, Shape shape, float* out, uint64_t stream) override {
    std::lock_guard<std::mutex> lock(mu_);
    Header h = read_header(side, size);
    StreamState& s = decoder_[stream];
    if (h.kind == kDelta) {
      if (!s.valid || s.seq != h.base || s.shape.tokens != shape.tokens || s.shape.hidden != shape.hidden) {
        throw CodecError("codec " + spec_ + ": stream " + std::to_string(stream) + " frame " + std::to_string(h.seq) +
                         " is a delta against frame " + std::to_string(h.base) + " but the decoder holds " +
                         (s.valid ? "frame " + std::to_string(s.seq) : std::string("no frame")) +
                         " (lost, reordered or reset stream); it recovers at the next full frame, at most " +
                         std::to_string(period_) + " frames away");
      }
      add(y, s.base.data(), shape.elements(), out);
    } else if (y != out && shape.elements() > 0) {
      std::memcpy(out, y, shape.elements() * sizeof(float));
    }
    s.base.assign(out, out + shape.elements());
    s.shape = shape;
    s.seq = h.seq;
    s.valid = true;
  }

  size_t side_size(Shape, bool) const override { return kSideBytes; }
  Shape y_shape(Shape shape, bool) const override { return shape; }

 private:
  // out may be y (inverse in place); x and base never alias out.
  static void subtract(const float* x, const float* base, size_t n, float* out) {
    for (size_t i = 0; i < n; ++i) out[i] = x[i] - base[i];
  }
  static void add(const float* y, const float* base, size_t n, float* out) {
    for (size_t i = 0; i < n; ++i) out[i] = y[i] + base[i];
  }

  struct Header {
    uint8_t kind;
    uint32_t seq;
    uint32_t base;
  };
  Header read_header(const uint8_t* side, size_t size) const {
    ByteReader r(side, size, spec_);
    Header h{r.read<uint8_t>(), r.read<uint32_t>(), r.read<uint32_t>()};
    if (r.remaining() != 0 || h.kind > kDelta || (h.kind == kFull && h.base != h.seq)) {
      throw CodecError("codec " + spec_ + ": corrupt frame header (" + std::to_string(size) + " bytes, kind " +
                       std::to_string(h.kind) + ")");
    }
    return h;
  }

  std::string spec_;
  int period_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, StreamState> encoder_;
  std::unordered_map<uint64_t, StreamState> decoder_;
  std::unordered_map<uint64_t, Pending> pending_;
};

}  // namespace

void add_delta_codecs(CodecRegistry& r) {
  r.add("delta", "difference from the previous message of the stream; delta:period=16 (full frames)",
        transform_stage([](const CodecParams& p) -> std::unique_ptr<Transform> {
          int period = p.get_int("period", 16);
          if (period < 1) throw EplabError("codec spec '" + p.spec() + "': period must be >= 1");
          return std::make_unique<DeltaTransform>(p.spec(), period);
        }));
}

}  // namespace eplab::codecs
