// Lossless byte compressors that run after the quantizer in a chain: zstd[:level] and lz4 (block format).
// Both decoders are told the largest output the chain can produce, so a corrupt length cannot make them
// allocate or write past it.
#include <lz4.h>
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_c_literalCompressionMode: an experimental parameter of libzstd 1.5
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "engine/error.hpp"
#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

// Wire, by the width w of the elements the stage is given (ByteCodec::set_element_bytes; 1 where the chain
// knows none):
// - w = 1: one zstd frame (it records the decompressed size).
// - w > 1 (fp32's 4 bytes, bf16's 2): u8 w, u64 raw size, then the w byte planes (byte j of every element in
//   plane j), the top one first, each as u8 mode (0 raw, 1 one zstd frame), u64 bytes and the bytes; then the
//   raw size % w bytes past the last whole element, raw.
// An activation's top byte holds its sign and exponent bits, which entropy coding shrinks to about 0.4; the
// bytes below are mantissa bits, close to random. One frame over the interleaved bytes codes all of them at the
// speed of zstd's literal coder to save about 6%. Split, only the top plane is coded (with matches of fewer
// than 7 bytes ignored and literals always Huffman-coded: the short matches zstd finds in it cost more than
// they save), and a plane whose sample does not shrink below 7/8 is stored raw: 2-3x the speed, and a smaller
// message (bench/results/codec_speed.txt). The compression and decompression contexts are kept between
// messages.
class ZstdBytes final : public ByteCodec {
 public:
  ZstdBytes(std::string spec, std::optional<int> level) : spec_(std::move(spec)), level_(level) {}
  std::string name() const override { return spec_; }
  void set_element_bytes(int width) override { width_ = std::clamp(width, 1, 8); }

  void encode(const uint8_t* in, size_t size, std::vector<uint8_t>& out) override {
    auto ctx = cctx_.lease();
    if (!ctx->get()) ctx->reset(ZSTD_createCCtx());
    if (!ctx->get()) throw CodecError("codec " + spec_ + ": out of memory for a zstd context");
    ZSTD_CCtx* cc = ctx->get();
    if (width_ == 1) {
      size_t at = out.size();
      out.resize(at + ZSTD_compressBound(size));
      size_t n = ZSTD_compressCCtx(cc, out.data() + at, out.size() - at, in, size, level_.value_or(kWholeLevel));
      check(n);
      out.resize(at + n);
      return;
    }
    // Appended plane by plane (reserved, not resized to the bound: that would zero it first).
    out.reserve(out.size() + max_encoded_size(size));
    const size_t count = size / width_;
    auto scratch = scratch_.lease();
    scratch->planes.resize(count * width_);
    std::vector<uint8_t*> planes(width_);
    for (int j = 0; j < width_; ++j) planes[j] = scratch->planes.data() + static_cast<size_t>(j) * count;
    split_byte_planes(in, count, width_, planes.data());
    append_value<uint8_t>(out, static_cast<uint8_t>(width_));
    append_value<uint64_t>(out, size);
    for (int j = width_; j-- > 0;) put_plane(cc, planes[j], count, j == width_ - 1, scratch->packed, out);
    out.insert(out.end(), in + count * width_, in + size);
  }
  void decode(const uint8_t* in, size_t size, size_t max_size, std::vector<uint8_t>& out) const override {
    const size_t raw = content_size(in, size, max_size);
    out.resize(raw);
    decompress(in, size, out.data(), raw);
  }
  bool decode_to(const uint8_t* in, size_t size, size_t max_size, uint8_t* dst, size_t want) const override {
    const size_t raw = content_size(in, size, max_size);
    if (raw != want) return false;
    decompress(in, size, dst, raw);
    return true;
  }
  size_t max_encoded_size(size_t size) const override {
    if (width_ == 1) return ZSTD_compressBound(size);
    return 9 + width_ * (9 + ZSTD_compressBound(size / width_)) + size % width_;
  }

 private:
  struct FreeCCtx {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
  };
  struct FreeDCtx {
    void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
  };
  // Default levels: 3 for a whole message. For the top plane zstd's fastest, since higher levels only search
  // longer for short matches (sign and exponent bytes of 512 x 7168 LLM-like activations, one core: level -5
  // ratio 0.371 at 0.60 GB/s, -50 0.362 at 0.90, the fastest 0.359 at 1.09); 1 for the planes below, which are
  // coded only where they shrink (zeros of values of a narrower type, say), and the fastest levels miss that.
  static constexpr int kWholeLevel = 3;
  static constexpr int kLowPlaneLevel = 1;
  int plane_level(bool top) const { return level_.value_or(top ? ZSTD_minCLevel() : kLowPlaneLevel); }
  // Planes larger than this are judged on a sample of kSampleBytes from their start before all of it is coded.
  static constexpr size_t kSampleAbove = 64 << 10;
  static constexpr size_t kSampleBytes = 16 << 10;

  void check(size_t n) const {
    if (ZSTD_isError(n)) throw CodecError("codec " + spec_ + ": compression failed: " + ZSTD_getErrorName(n));
  }
  // Plane `plane` (n bytes) appended to out as mode, size and bytes. The top plane is coded with short matches
  // off and Huffman literals on, the others with the level's defaults; `packed` is scratch.
  void put_plane(ZSTD_CCtx* cc, const uint8_t* plane, size_t n, bool top, std::vector<uint8_t>& packed,
                 std::vector<uint8_t>& out) {
    check(ZSTD_CCtx_reset(cc, ZSTD_reset_session_and_parameters));
    check(ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, plane_level(top)));
    if (top) {
      check(ZSTD_CCtx_setParameter(cc, ZSTD_c_minMatch, 7));
      check(ZSTD_CCtx_setParameter(cc, ZSTD_c_literalCompressionMode, ZSTD_ps_enable));
    }
    const auto worth = [](size_t k, size_t raw) { return k < raw - raw / 8; };
    packed.resize(ZSTD_compressBound(std::min(n, kSampleBytes)));
    bool coded = n > 0;
    if (coded && n > kSampleAbove) {
      size_t k = ZSTD_compress2(cc, packed.data(), packed.size(), plane, kSampleBytes);
      check(k);
      coded = worth(k, kSampleBytes);
    }
    size_t k = 0;
    if (coded) {
      packed.resize(ZSTD_compressBound(n));
      k = ZSTD_compress2(cc, packed.data(), packed.size(), plane, n);
      check(k);
      coded = worth(k, n);
    }
    append_value<uint8_t>(out, coded ? 1 : 0);
    append_value<uint64_t>(out, coded ? k : n);
    if (coded)
      out.insert(out.end(), packed.data(), packed.data() + k);
    else
      out.insert(out.end(), plane, plane + n);
  }

  size_t content_size(const uint8_t* in, size_t size, size_t max_size) const {
    unsigned long long raw = 0;
    if (width_ == 1) {
      raw = ZSTD_getFrameContentSize(in, size);
      if (raw == ZSTD_CONTENTSIZE_ERROR || raw == ZSTD_CONTENTSIZE_UNKNOWN) raw = ~0ull;
    } else {
      ByteReader r(in, size, spec_);
      const int w = r.read<uint8_t>();
      if (w != width_) {
        throw CodecError("codec " + spec_ + ": message has byte planes of " + std::to_string(w) +
                         "-byte elements, this chain sends " + std::to_string(width_) + " (corrupt message)");
      }
      raw = r.read<uint64_t>();
    }
    if (raw > max_size) {
      throw CodecError("codec " + spec_ + ": corrupt zstd header (" + std::to_string(size) +
                       " bytes; expected at most " + std::to_string(max_size) + " bytes of content)");
    }
    return static_cast<size_t>(raw);
  }
  void decompress(const uint8_t* in, size_t size, uint8_t* dst, size_t raw) const {
    auto ctx = dctx_.lease();
    if (!ctx->get()) ctx->reset(ZSTD_createDCtx());
    if (!ctx->get()) throw CodecError("codec " + spec_ + ": out of memory for a zstd context");
    if (width_ == 1) {
      unframe(ctx->get(), in, size, dst, raw);
      return;
    }
    ByteReader r(in, size, spec_);
    r.take(9);  // width and raw size, checked by content_size
    const size_t count = raw / width_;
    std::vector<const uint8_t*> planes(width_);  // raw: in the message; coded: its frame, then decompressed
    std::vector<size_t> framed(width_, 0);       // a coded plane's frame bytes (0: raw)
    for (int j = width_; j-- > 0;) {
      const uint8_t mode = r.read<uint8_t>();
      const uint64_t bytes = r.read<uint64_t>();
      planes[j] = r.take(bytes);
      if (mode == 1 && bytes > 0) {
        framed[j] = bytes;
      } else if (mode != 0 || bytes != count) {
        throw CodecError("codec " + spec_ + ": plane " + std::to_string(j) + " has mode " + std::to_string(mode) +
                         " and " + std::to_string(bytes) + " bytes for " + std::to_string(count) +
                         " elements (corrupt message)");
      }
    }
    auto scratch = planes_out_.lease();
    scratch->resize(count *
                    static_cast<size_t>(std::count_if(framed.begin(), framed.end(), [](size_t b) { return b > 0; })));
    uint8_t* next = scratch->data();
    for (int j = 0; j < width_; ++j) {
      if (framed[j] == 0) continue;
      unframe(ctx->get(), planes[j], framed[j], next, count);
      planes[j] = next;
      next += count;
    }
    join_byte_planes(planes.data(), count, width_, dst);
    const size_t tail = raw - count * width_;
    const uint8_t* rest = r.take(tail);
    if (tail > 0) std::memcpy(dst + count * width_, rest, tail);  // dst may be null when raw is 0
    if (r.remaining() != 0) {
      throw CodecError("codec " + spec_ + ": " + std::to_string(r.remaining()) +
                       " bytes after the last plane (corrupt message)");
    }
  }
  // One zstd frame that must hold exactly `raw` bytes, into dst.
  void unframe(ZSTD_DCtx* dc, const uint8_t* in, size_t size, uint8_t* dst, size_t raw) const {
    unsigned long long announced = ZSTD_getFrameContentSize(in, size);
    if (announced != raw) {
      throw CodecError("codec " + spec_ + ": zstd frame of " + std::to_string(size) + " bytes does not announce the " +
                       std::to_string(raw) + " bytes expected (corrupt message)");
    }
    size_t n = ZSTD_decompressDCtx(dc, dst, raw, in, size);
    if (ZSTD_isError(n) || n != raw) {
      throw CodecError("codec " + spec_ + ": corrupt or truncated zstd frame: " +
                       (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "size mismatch"));
    }
  }

  std::string spec_;
  std::optional<int> level_;  // unset: kWholeLevel or plane_level(top)
  int width_ = 1;
  Reusable<std::unique_ptr<ZSTD_CCtx, FreeCCtx>> cctx_;
  mutable Reusable<std::unique_ptr<ZSTD_DCtx, FreeDCtx>> dctx_;
  struct EncodeScratch {
    std::vector<uint8_t> planes;  // the message split
    std::vector<uint8_t> packed;  // a plane (or its sample) coded
  };
  Reusable<EncodeScratch> scratch_;
  mutable Reusable<std::vector<uint8_t>> planes_out_;
};

// Wire: u32 raw size, then one LZ4 block.
class Lz4Bytes final : public ByteCodec {
 public:
  explicit Lz4Bytes(std::string spec) : spec_(std::move(spec)) {}
  std::string name() const override { return spec_; }
  void encode(const uint8_t* in, size_t size, std::vector<uint8_t>& out) override {
    if (size > static_cast<size_t>(LZ4_MAX_INPUT_SIZE)) {
      throw CodecError("codec " + spec_ + ": message of " + std::to_string(size) + " bytes exceeds LZ4's 2 GB limit");
    }
    size_t at = out.size();
    append_value<uint32_t>(out, static_cast<uint32_t>(size));
    out.resize(at + 4 + LZ4_compressBound(static_cast<int>(size)));
    int n = LZ4_compress_default(reinterpret_cast<const char*>(in), reinterpret_cast<char*>(out.data() + at + 4),
                                 static_cast<int>(size), static_cast<int>(out.size() - at - 4));
    if (n <= 0 && size > 0) throw CodecError("codec " + spec_ + ": compression failed");
    out.resize(at + 4 + n);
  }
  void decode(const uint8_t* in, size_t size, size_t max_size, std::vector<uint8_t>& out) const override {
    uint32_t raw = raw_size(in, size, max_size);
    out.resize(raw);
    decompress(in, size, out.data(), raw);
  }
  bool decode_to(const uint8_t* in, size_t size, size_t max_size, uint8_t* dst, size_t want) const override {
    uint32_t raw = raw_size(in, size, max_size);
    if (raw != want) return false;
    decompress(in, size, dst, raw);
    return true;
  }
  size_t max_encoded_size(size_t size) const override {
    return 4 + static_cast<size_t>(LZ4_compressBound(static_cast<int>(std::min<size_t>(size, LZ4_MAX_INPUT_SIZE))));
  }

 private:
  uint32_t raw_size(const uint8_t* in, size_t size, size_t max_size) const {
    ByteReader r(in, size, spec_);
    uint32_t raw = r.read<uint32_t>();
    if (raw > max_size) {
      throw CodecError("codec " + spec_ + ": header claims " + std::to_string(raw) + " bytes, at most " +
                       std::to_string(max_size) + " possible (corrupt message)");
    }
    return raw;
  }
  void decompress(const uint8_t* in, size_t size, uint8_t* dst, uint32_t raw) const {
    int n = LZ4_decompress_safe(reinterpret_cast<const char*>(in + 4), reinterpret_cast<char*>(dst),
                                static_cast<int>(size - 4), static_cast<int>(raw));
    if (n < 0 || static_cast<uint32_t>(n) != raw) {
      throw CodecError("codec " + spec_ + ": corrupt or truncated lz4 block");
    }
  }

  std::string spec_;
};

}  // namespace

void add_lossless_codecs(CodecRegistry& r) {
  r.add("zstd",
        "lossless zstd over the quantized bytes, fp32's and bf16's split into byte planes; zstd:level=N (or "
        "zstd:N), default 3 (on planes: the fastest for the top one, 1 below)",
        bytes_stage([](const CodecParams& p) -> std::unique_ptr<ByteCodec> {
          std::optional<int> level;
          if (p.has("level") || p.has("_0")) level = p.get_int("level", p.get_int("_0", 0));
          if (level && (*level < ZSTD_minCLevel() || *level > ZSTD_maxCLevel())) {
            throw EplabError("codec spec '" + p.spec() + "': zstd level must be in [" +
                             std::to_string(ZSTD_minCLevel()) + ", " + std::to_string(ZSTD_maxCLevel()) + "]");
          }
          return std::make_unique<ZstdBytes>(p.spec(), level);
        }));
  r.add("lz4", "lossless LZ4 (block format, u32 raw-size header) over the quantized bytes",
        bytes_stage(
            [](const CodecParams& p) -> std::unique_ptr<ByteCodec> { return std::make_unique<Lz4Bytes>(p.spec()); }));
}

}  // namespace eplab::codecs
