// Lossless byte compressors that run after the quantizer in a chain: zstd[:level] and lz4 (block format).
// Both decoders are told the largest output the chain can produce, so a corrupt length cannot make them
// allocate or write past it.
#include <lz4.h>
#include <zstd.h>

#include <cstring>

#include "engine/error.hpp"
#include "policies/codecs/codec_internal.hpp"

namespace eplab::codecs {
namespace {

// Wire: one zstd frame (it records the decompressed size). The compression and decompression contexts are
// kept between messages (ZSTD_compress and ZSTD_decompress set up a fresh one per call; the bytes are the same).
class ZstdBytes final : public ByteCodec {
 public:
  ZstdBytes(std::string spec, int level) : spec_(std::move(spec)), level_(level) {}
  std::string name() const override { return spec_; }
  void encode(const uint8_t* in, size_t size, std::vector<uint8_t>& out) override {
    size_t at = out.size();
    out.resize(at + ZSTD_compressBound(size));
    auto ctx = cctx_.lease();
    if (!ctx->get()) ctx->reset(ZSTD_createCCtx());
    size_t n = ctx->get() ? ZSTD_compressCCtx(ctx->get(), out.data() + at, out.size() - at, in, size, level_)
                          : ZSTD_compress(out.data() + at, out.size() - at, in, size, level_);
    if (ZSTD_isError(n)) throw CodecError("codec " + spec_ + ": compression failed: " + ZSTD_getErrorName(n));
    out.resize(at + n);
  }
  void decode(const uint8_t* in, size_t size, size_t max_size, std::vector<uint8_t>& out) const override {
    unsigned long long raw = content_size(in, size, max_size);
    out.resize(raw);
    decompress(in, size, out.data(), raw);
  }
  bool decode_to(const uint8_t* in, size_t size, size_t max_size, uint8_t* dst, size_t want) const override {
    unsigned long long raw = content_size(in, size, max_size);
    if (raw != want) return false;
    decompress(in, size, dst, raw);
    return true;
  }
  size_t max_encoded_size(size_t size) const override { return ZSTD_compressBound(size); }

 private:
  struct FreeCCtx {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
  };
  struct FreeDCtx {
    void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
  };

  unsigned long long content_size(const uint8_t* in, size_t size, size_t max_size) const {
    unsigned long long raw = ZSTD_getFrameContentSize(in, size);
    if (raw == ZSTD_CONTENTSIZE_ERROR || raw == ZSTD_CONTENTSIZE_UNKNOWN || raw > max_size) {
      throw CodecError("codec " + spec_ + ": corrupt zstd frame header (" + std::to_string(size) +
                       " bytes; expected at most " + std::to_string(max_size) + " bytes of content)");
    }
    return raw;
  }
  void decompress(const uint8_t* in, size_t size, uint8_t* dst, unsigned long long raw) const {
    auto ctx = dctx_.lease();
    if (!ctx->get()) ctx->reset(ZSTD_createDCtx());
    size_t n = ctx->get() ? ZSTD_decompressDCtx(ctx->get(), dst, raw, in, size) : ZSTD_decompress(dst, raw, in, size);
    if (ZSTD_isError(n) || n != raw) {
      throw CodecError("codec " + spec_ + ": corrupt or truncated zstd frame: " +
                       (ZSTD_isError(n) ? ZSTD_getErrorName(n) : "size mismatch"));
    }
  }

  std::string spec_;
  int level_;
  Reusable<std::unique_ptr<ZSTD_CCtx, FreeCCtx>> cctx_;
  mutable Reusable<std::unique_ptr<ZSTD_DCtx, FreeDCtx>> dctx_;
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
  r.add("zstd", "lossless zstd over the quantized bytes; zstd:level=N (or zstd:N), default 3",
        bytes_stage([](const CodecParams& p) -> std::unique_ptr<ByteCodec> {
          int level = p.get_int("level", p.get_int("_0", 3));
          if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
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
