// Codec: how token activations [tokens x hidden] travel on the wire. The engine encodes every dispatch and
// combine message with one; the simulator charges encoded_size() bytes. Specs chain codecs with '+'.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace eplab {

class Codec {
 public:
  virtual ~Codec() = default;
  // The spec that recreates this codec, e.g. "fp8-e4m3-b128" or "topk:ratio=0.25+zstd".
  virtual std::string name() const = 0;
  virtual bool lossless() const = 0;
  // Promised bound on ||decode(encode(x)) - x||_2 / ||x||_2 for finite x (0 for lossless codecs).
  virtual double error_bound() const = 0;
  // Appends the encoding of x (row-major fp32, tokens x hidden) to out. `stream` names the sequence of
  // messages a stateful codec (delta, error feedback) keeps state for; stateless codecs ignore it.
  virtual void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t stream = 0) = 0;
  // Decodes exactly `size` bytes into out (tokens x hidden). Throws CodecError on a corrupt or short buffer.
  virtual void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t stream = 0) = 0;
  // Bytes encode() produces: exact for fixed-rate codecs, an estimate for data-dependent ones.
  virtual size_t encoded_size(int tokens, int hidden) const = 0;
  // Upper bound on what encode() can produce (receive buffers are sized with it).
  virtual size_t max_encoded_size(int tokens, int hidden) const { return encoded_size(tokens, hidden); }
  virtual bool fixed_rate() const { return true; }
  // Nonzero when the codec is stateless and encodes every row on its own into exactly this many bytes, so the
  // encoding of n rows is the n row encodings back to back. The engine then keeps, forwards and sends rows in
  // the wire format (one copy per hop, no decode and re-encode) and decodes one row at a time where it computes.
  virtual size_t row_bytes(int hidden) const { return 0; }

  // The bound above for messages with this hidden size. Per-token scaling (int8-token) degrades with the
  // row length, so its hidden-free error_bound() is the worst case over every hidden size (1: useless);
  // the engine should verify with this one.
  virtual double error_bound_for(int hidden) const { return error_bound(); }
  // Forgets a stream's state (delta base frame, error-feedback residual) on both the encode and decode side.
  virtual void reset(uint64_t stream) {}
  // Checkpoints (driver/checkpoint.hpp): a stateful codec's stream state (delta references, error-feedback
  // residuals), encode and decode side, appended to `out` as bytes that load_state() takes back into a codec of
  // the same spec; the same state always gives the same bytes. Stateless codecs write and read nothing.
  // load_state throws CodecError naming the codec for bytes it did not write.
  virtual void save_state(std::vector<uint8_t>& out) const {}
  virtual void load_state(const uint8_t* data, size_t size);
  // Lets a data-dependent codec refine encoded_size() from a representative sample (the simulator calls
  // this once with generated or traced activations). Fixed-rate codecs ignore it.
  virtual void calibrate(const float* sample, int tokens, int hidden) {}
  // Modeled time for one GPU to encode (or decode) tokens x hidden activations: the simulator charges one encode
  // of a rank's batch and one decode of what it received (see gemm_native). The default is a memory-bound
  // quantizer pass at the rate measured on an H200 (see kGpuQuantizeElementsPerS); codecs that do more or less
  // work override it.
  virtual double gpu_seconds(int tokens, int hidden, bool encode) const;
  // True when an expert GEMM consumes the encoded form directly (DeepGEMM takes per-128 FP8 with its scales;
  // block-scaled MMA takes MX), so the receiver never decodes: the simulator then charges no decode time.
  virtual bool gemm_native() const { return false; }
  double bits_per_element(int tokens, int hidden) const {
    double n = static_cast<double>(tokens) * static_cast<double>(hidden);
    return n > 0 ? 8.0 * static_cast<double>(encoded_size(tokens, hidden)) / n : 0.0;
  }
};

// GPU throughput figures behind Codec::gpu_seconds, in activation elements per second on one GPU.
// Measured: eplab's fp8-e4m3-b128 kernels on one H200, 4096 tokens x 7168 (bench/results/gpu/gpu_bench.json):
// quantize 60.13 Mtokens/s, dequantize 59.58 Mtokens/s. The block quantizers (fp8, int8, MX, logfmt) are all one
// read-and-write pass like it and share the figure.
inline constexpr double kGpuQuantizeElementsPerS = 60.13e6 * 7168;
inline constexpr double kGpuDequantizeElementsPerS = 59.58e6 * 7168;
// Assumed, not measured: a sparsifier or delta stage reads its input twice (select, then gather or subtract),
// so half the quantize rate; a lossless byte stage (zstd, lz4 as GPU nvCOMP-class kernels) 50 GB/s of input.
inline constexpr double kGpuTransformElementsPerS = kGpuQuantizeElementsPerS / 2;
inline constexpr double kGpuLosslessBytesPerS = 50e9;

class CodecError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Builds a codec from a spec; throws EplabError naming the spec and listing known codecs if unknown.
std::unique_ptr<Codec> create_codec(const std::string& spec);
std::vector<std::string> codec_names();

// Codecs supplied at run time (Python subclasses of eplab.Codec): create_codec(name) with exactly this name
// calls the factory before any spec parsing, so the engine builds them per rank like a built-in. Registering
// a name again replaces its factory; built-in names cannot be shadowed.
using CodecFactory = std::function<std::unique_ptr<Codec>()>;
void register_codec_factory(const std::string& name, CodecFactory factory);
void unregister_codec_factory(const std::string& name);
std::vector<std::string> registered_codec_factories();

// What `eplab codec list` shows: each registered name, its kind and a one-line summary.
struct CodecInfo {
  std::string name;
  std::string kind;  // "quantizer", "transform" (sparsifier, delta) or "lossless" (byte compressor)
  std::string summary;
};
std::vector<CodecInfo> codec_catalog();

}  // namespace eplab
