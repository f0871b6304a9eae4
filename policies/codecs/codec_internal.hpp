// Shared machinery for the built-in codecs: spec parameters, the registry entry each codec family adds,
// the two non-terminal stage kinds a chain is built from (float transforms and byte compressors), and
// bounds-checked byte reading so a corrupt buffer becomes a CodecError instead of an out-of-bounds read.
#pragma once

#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/registry.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab::codecs {

// Rounding in the fp32 scale multiply adds a relative error of a few 2^-24 on top of a format's bound;
// every lossy bound is multiplied by this so it stays a promise rather than an approximation.
inline constexpr double kBoundSlack = 1.0 + 1e-5;

// `name:key=value,key=value` parsed once; get_* record which keys were used so unknown keys are an error.
class CodecParams {
 public:
  CodecParams(std::string spec, std::map<std::string, std::string> values)
      : spec_(std::move(spec)), values_(std::move(values)) {}
  const std::string& spec() const { return spec_; }
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  double get_double(const std::string& key, double fallback) const;
  int get_int(const std::string& key, int fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  // Throws EplabError naming the spec if a key was given that no get_* asked for.
  void check_all_used() const;

 private:
  std::string spec_;
  std::map<std::string, std::string> values_;
  mutable std::map<std::string, bool> used_;
};

// A float-to-float stage that runs before the terminal quantizer: sparsifiers and delta. forward() turns
// x into side information (positions, frame ids) plus a smaller or better-conditioned tensor y that the
// terminal codec encodes; inverse() rebuilds x from the side information and the decoded y.
struct Shape {
  int tokens = 0;
  int hidden = 0;
  size_t elements() const { return static_cast<size_t>(tokens) * static_cast<size_t>(hidden); }
};

class Transform {
 public:
  virtual ~Transform() = default;
  virtual std::string name() const = 0;
  // Bound on ||inverse(forward(x)) - x|| / ||x|| with a lossless terminal; infinity when none exists.
  virtual double error_bound(int hidden) const = 0;
  // Delta frames are guarded by the chain (see ChainCodec): it reports so here.
  virtual bool is_delta() const { return false; }
  virtual void forward(const float* x, Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& side,
                       std::vector<float>& y, Shape& y_shape) = 0;
  // Encoder side: what the decoder reconstructs for the last forward() on `stream` (error feedback, delta).
  virtual bool wants_commit() const { return false; }
  virtual void commit(uint64_t stream, const float* x_hat, Shape shape) {}
  // commit() from a buffer the transform may take (swapping in one it no longer needs): delta keeps the
  // reconstruction as its next base without copying it.
  virtual void commit_buffer(uint64_t stream, std::vector<float>& x_hat, Shape shape) {
    commit(stream, x_hat.data(), shape);
  }
  // Shape of y described by the side information; throws CodecError if the side bytes are malformed.
  virtual Shape parse(const uint8_t* side, size_t size, Shape shape) const = 0;
  virtual void inverse(const uint8_t* side, size_t size, const float* y, Shape shape, float* out, uint64_t stream) = 0;
  // reconstruct() that also sums (out - x)^2 and x^2 over the frame x, in lanes (reconstruct_sums below), for
  // the chain's delta guard in the same pass; false (nothing done) where a transform does not offer it.
  virtual bool reconstruct_with_sums(const uint8_t* side, size_t size, const float* y, Shape shape, float* out,
                                     uint64_t stream, const float* x, double* err2, double* x2) {
    return false;
  }
  // For a transform whose output is x - base (delta): what forward() does except computing y, i.e. the same
  // side bytes and pending frame, with the base it would subtract (null for a full frame: y = x), so the chain can
  // form y a few rows at a time beside the terminal. False (nothing done) where not offered.
  virtual bool forward_base(Shape shape, uint64_t stream, bool force_full, std::vector<uint8_t>& side,
                            const float** base) {
    return false;
  }
  // Whether inverse() and reconstruct() accept out == y (an element-wise transform such as delta): the chain
  // then decodes the terminal straight into the output.
  virtual bool inverse_in_place() const { return false; }
  // inverse() as the encoder computes it, from the encoder's copy of any state (delta keeps one per side).
  virtual void reconstruct(const uint8_t* side, size_t size, const float* y, Shape shape, float* out, uint64_t stream) {
    inverse(side, size, y, shape, out, stream);
  }
  // True when y has one row per input token, so a per-token terminal's bound for `hidden` applies.
  virtual bool keeps_rows() const { return true; }
  // Expected and worst-case side bytes and y shape, for encoded_size() and max_encoded_size().
  virtual size_t side_size(Shape shape, bool worst) const = 0;
  virtual Shape y_shape(Shape shape, bool worst) const = 0;
  virtual bool stateful() const { return false; }
  virtual void reset(uint64_t stream) {}
  // Codec::save_state / load_state for this stage: stateful stages append their streams, read them back from
  // `in` (which spans the whole chain's state), throwing CodecError on bytes they did not write.
  virtual void save_state(std::vector<uint8_t>& out) const {}
  virtual void load_state(class ByteReader& in) {}
};

// Stream state as bytes: little-endian numbers, vectors as a uint64 count then their elements, maps in stream
// order (so one state gives one encoding).
template <typename T>
void put_state(std::vector<uint8_t>& out, T v) {
  const auto* b = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), b, b + sizeof v);
}
void put_floats(std::vector<uint8_t>& out, const std::vector<float>& v);
// Reads what put_floats wrote; a count beyond the bytes left is refused before anything is allocated.
void get_floats(class ByteReader& in, std::vector<float>& v);

// r = y + base (y where base is null), written to out unless out is null, and the sums of (r - x)^2 and x^2
// in double, each accumulated in several lanes (so not in element order; the chain's guard allows for that).
void reconstruct_sums(const float* y, const float* base, const float* x, size_t n, float* out, double* err2,
                      double* x2);

// A lossless byte-to-byte stage after the terminal codec (zstd, lz4).
class ByteCodec {
 public:
  virtual ~ByteCodec() = default;
  virtual std::string name() const = 0;
  virtual void encode(const uint8_t* in, size_t size, std::vector<uint8_t>& out) = 0;
  // Decodes into out (replacing its contents); the result must not exceed max_size bytes.
  virtual void decode(const uint8_t* in, size_t size, size_t max_size, std::vector<uint8_t>& out) const = 0;
  // decode() straight into dst when the content is exactly `want` bytes (at most max_size): returns false,
  // touching nothing, when the header announces another size, and throws what decode() throws otherwise.
  virtual bool decode_to(const uint8_t* in, size_t size, size_t max_size, uint8_t* dst, size_t want) const {
    return false;
  }
  virtual size_t max_encoded_size(size_t size) const = 0;
  // The chain's first byte stage is told the width of the elements it is given where they are an array of one
  // type (fp32: 4, bf16: 2), before it encodes or decodes anything; a stage may lay its bytes out by it.
  virtual void set_element_bytes(int width) {}
  // Compressed/raw ratio seen on the latest encode (or calibration); encoded_size() estimates with it.
  double observed_ratio() const { return ratio_; }
  void observe(size_t raw, size_t packed) {
    if (raw > 0) ratio_ = static_cast<double>(packed) / static_cast<double>(raw);
  }

 private:
  double ratio_ = 1.0;
};

enum class StageKind { kQuantizer, kTransform, kBytes };

// What a codec name in the registry builds: one stage of a chain, of one of the three kinds.
struct CodecStage {
  StageKind kind = StageKind::kQuantizer;
  std::function<std::unique_ptr<Codec>(const CodecParams&)> make_quantizer;
  std::function<std::unique_ptr<Transform>(const CodecParams&)> make_transform;
  std::function<std::unique_ptr<ByteCodec>(const CodecParams&)> make_bytes;

  explicit operator bool() const { return make_quantizer || make_transform || make_bytes; }
};
inline CodecStage quantizer_stage(std::function<std::unique_ptr<Codec>(const CodecParams&)> make) {
  return {StageKind::kQuantizer, std::move(make), {}, {}};
}
inline CodecStage transform_stage(std::function<std::unique_ptr<Transform>(const CodecParams&)> make) {
  return {StageKind::kTransform, {}, std::move(make), {}};
}
inline CodecStage bytes_stage(std::function<std::unique_ptr<ByteCodec>(const CodecParams&)> make) {
  return {StageKind::kBytes, {}, {}, std::move(make)};
}

// The codec registry: built-in stages by name with a one-line summary (`eplab codec list`), and Python codecs
// registered at run time as quantizers that take no parameters.
using CodecRegistry = Registry<CodecStage>;
CodecRegistry& codec_registry();

// Each family adds its stages; registry.cpp calls these explicitly so a static link cannot drop them.
void add_identity_codecs(CodecRegistry& r);
void add_fp8_codecs(CodecRegistry& r);
void add_int8_codecs(CodecRegistry& r);
void add_mx_codecs(CodecRegistry& r);
void add_logfmt_codecs(CodecRegistry& r);
void add_sparse_codecs(CodecRegistry& r);
void add_delta_codecs(CodecRegistry& r);
void add_lossless_codecs(CodecRegistry& r);

// Exact-size check every fixed-rate decoder starts with.
void expect_size(const std::string& codec, size_t got, size_t want, int tokens, int hidden);
void expect_shape(const std::string& codec, int tokens, int hidden);

// Reads little-endian values from a buffer, throwing CodecError (naming the codec) past its end.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, std::string codec)
      : data_(data), size_(size), codec_(std::move(codec)) {}
  template <typename T>
  T read() {
    T value;
    std::memcpy(&value, take(sizeof(T)), sizeof(T));
    return value;
  }
  const uint8_t* take(size_t n);
  size_t remaining() const { return size_ - pos_; }
  size_t position() const { return pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  std::string codec_;
};

// Buffers a codec reuses from one encode (or decode) to the next, so a steady stream of messages allocates
// nothing. A codec object may be called from several threads (the stateful transforms lock their maps), so a
// call that finds the buffers in use gets fresh ones of its own instead of waiting.
template <typename T>
class Reusable {
 public:
  class Lease {
   public:
    explicit Lease(Reusable& r) : lock_(r.mu_, std::try_to_lock) {
      if (!lock_.owns_lock()) own_ = std::make_unique<T>();
      value_ = own_ ? own_.get() : &r.value_;
    }
    T& operator*() const { return *value_; }
    T* operator->() const { return value_; }

   private:
    std::unique_lock<std::mutex> lock_;
    std::unique_ptr<T> own_;
    T* value_;
  };
  // Not reentrant: a call holding a lease must not take a second one from the same object.
  Lease lease() { return Lease(*this); }

 private:
  std::mutex mu_;
  T value_;
};

template <typename T>
void append_value(std::vector<uint8_t>& out, T value) {
  size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

}  // namespace eplab::codecs
