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

// Wire, by the width w of the elements the stage is given (ByteCodec::set_element_bytes: 4 after fp32, 2 after
// bf16, 1 where the chain knows none):
// - w = 1: one zstd frame (it records the decompressed size).
// - w = 4 or 2: u8 w, u64 raw size, then w planes of one byte per element: the sign and mantissa bits (sign on
//   top) as w - 1 planes, top byte first, then the exponents. Each plane is u8 mode, u64 bytes and the bytes:
//   mode 0 raw, 1 one zstd frame, 2 (exponents only) nibble pairs: u8 lo, u64 escapes, the escape bytes, then one
//   zstd frame of the pairs (split_float_planes_paired). Then the raw size % w bytes past the last whole element,
//   raw.
// An activation's exponents fit in a few bits after entropy coding; its mantissa bits are close to random. One
// frame over the interleaved bytes codes all of them at the speed of zstd's literal coder to save about 6%.
// Split, only the exponents are coded (with matches of fewer than 7 bytes ignored and literals always
// Huffman-coded: the short matches zstd finds in them cost more than they save), and a mantissa plane is coded
// only where a sample shrinks below 7/8 (else the split writes it straight into the message). The exponents of a
// message mostly lie in a window of 15 values, so where a sample says so they go to zstd two to a byte, the few
// outside the window as escapes: half the symbols through its Huffman coder, the stage's slowest part, for the
// same size or smaller (bench/results/codec_speed.txt). The compression and decompression contexts are kept
// between messages.
class ZstdBytes final : public ByteCodec {
 public:
  ZstdBytes(std::string spec, std::optional<int> level) : spec_(std::move(spec)), level_(level) {}
  std::string name() const override { return spec_; }
  void set_element_bytes(int width) override { width_ = width == 4 || width == 2 ? width : 1; }

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
    out.reserve(out.size() + max_encoded_size(size));
    const size_t count = size / width_;
    const int n_mant = width_ - 1;
    auto scratch = scratch_.lease();
    EncodeScratch& s = *scratch;
    // Which mantissa planes shrink, judged on the first kSampleBytes elements.
    const size_t sample = std::min(count, kSampleBytes);
    grow(s.planes, sample * width_);
    uint8_t* mant[3];
    for (int j = 0; j < n_mant; ++j) mant[j] = s.planes.data() + (j + 1) * sample;
    split_float_planes(in, sample, width_, s.planes.data(), mant);
    bool any_coded = false;
    for (int j = 0; j < n_mant; ++j) any_coded |= shrinks(cc, mant[j], sample, s.packed);
    append_value<uint8_t>(out, static_cast<uint8_t>(width_));
    append_value<uint64_t>(out, size);
    // The usual case, no mantissa plane coded: the split writes them straight into the message, sized for them
    // first. Otherwise into scratch, and each is appended as put_plane codes it.
    if (!any_coded) {
      const size_t first = out.size();
      out.resize(first + n_mant * (9 + count));
      for (int j = 0; j < n_mant; ++j) {
        uint8_t* plane = out.data() + first + j * (9 + count);
        const uint64_t bytes = count;
        plane[0] = 0;
        std::memcpy(plane + 1, &bytes, 8);
        mant[j] = plane + 9;
      }
    } else {
      grow(s.planes, count * width_);
      for (int j = 0; j < n_mant; ++j) mant[j] = s.planes.data() + (j + 1) * count;
    }
    int lo = exponent_window(in, count);
    if (lo >= 0) {
      grow(s.pairs, (count + 1) / 2);
      s.escapes.clear();
      split_float_planes_paired(in, count, width_, static_cast<uint8_t>(lo), s.pairs.data(), s.escapes, mant);
      if (s.escapes.size() * kMaxEscapesPer > count) lo = -1;  // the sample misled: split again as bytes
    }
    if (lo < 0) {
      grow(s.planes, count);  // in the usual case sized for the sample only; mant points into out there
      split_float_planes(in, count, width_, s.planes.data(), mant);
    }
    if (any_coded)
      for (int j = 0; j < n_mant; ++j) put_plane(cc, mant[j], count, false, s.packed, out);
    if (lo >= 0)
      put_pairs(cc, static_cast<uint8_t>(lo), count, s, out);
    else
      put_plane(cc, s.planes.data(), count, true, s.packed, out);
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
    const size_t count = size / width_;
    const size_t pairs = 18 + count / kMaxEscapesPer + ZSTD_compressBound((count + 1) / 2);
    return 9 + width_ * (9 + std::max(ZSTD_compressBound(count), pairs)) + size % width_;
  }

 private:
  struct FreeCCtx {
    void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
  };
  struct FreeDCtx {
    void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
  };
  // Default levels: 3 for a whole message. For the exponents zstd's fastest, since higher levels only search
  // longer for short matches (measured on the sign and exponent bytes of 512 x 7168 LLM-like activations, before
  // the exponents were paired, one core: level -5 ratio 0.371 at 0.60 GB/s, -50 0.362 at 0.90, the fastest 0.359
  // at 1.09); 1 for the mantissa planes, which are coded only where they shrink (zeros of values of a narrower
  // type, say), and the fastest levels miss that.
  static constexpr int kWholeLevel = 3;
  static constexpr int kLowPlaneLevel = 1;
  int plane_level(bool exponents) const { return level_.value_or(exponents ? ZSTD_minCLevel() : kLowPlaneLevel); }
  // Planes larger than this are judged on a sample of kSampleBytes from their start before all of it is coded.
  static constexpr size_t kSampleAbove = 64 << 10;
  static constexpr size_t kSampleBytes = 16 << 10;

  void check(size_t n) const {
    if (ZSTD_isError(n)) throw CodecError("codec " + spec_ + ": compression failed: " + ZSTD_getErrorName(n));
  }
  struct EncodeScratch {
    std::vector<uint8_t> planes;   // the message (or its sample) split: exponents, then mantissa planes
    std::vector<uint8_t> packed;   // a plane (or its sample) coded
    std::vector<uint8_t> pairs;    // the exponents as nibble pairs
    std::vector<uint8_t> escapes;  // and those outside their window
  };
  // Nibble pairs are used where at most 1 in kSampleEscapesPer of a sample's exponents, and then at most 1 in
  // kMaxEscapesPer of the message's, lie outside the sample's best window.
  static constexpr size_t kSampleEscapesPer = 32;
  static constexpr size_t kMaxEscapesPer = 16;
  static constexpr size_t kWindowRuns = 32, kWindowRun = 256;

  // The start of the window of 15 exponent values (mod 256) that holds most of a sample of the message's
  // exponents (kWindowRuns runs of kWindowRun elements spread over it, or all of a smaller one); -1 if more than 1
  // in kSampleEscapesPer of them lie outside it.
  int exponent_window(const uint8_t* in, size_t count) const {
    if (count == 0) return -1;
    const size_t run = std::min(count, kWindowRun), gap = std::max(run, count / kWindowRuns);
    size_t hist[256] = {}, sampled = 0;
    for (size_t start = 0; start + run <= count; start += gap) {
      for (size_t i = start; i < start + run; ++i) {
        uint32_t u = 0;
        std::memcpy(&u, in + i * width_, width_);
        ++hist[(u >> (width_ == 4 ? 23 : 7)) & 0xff];
      }
      sampled += run;
    }
    size_t best = 0, in_window = 0;
    for (size_t hi = 0, sum = 0; hi < 256 + 14; ++hi) {  // the window hi - 14 .. hi, wrapping past 255 too
      sum += hist[hi % 256];
      if (hi >= 15) sum -= hist[(hi - 15) % 256];
      if (hi >= 14 && sum > in_window) best = (hi - 14) % 256, in_window = sum;
    }
    if ((sampled - in_window) * kSampleEscapesPer > sampled) return -1;
    return static_cast<int>(best);
  }
  // The exponent plane as nibble pairs (s.pairs, s.escapes), appended to out.
  void put_pairs(ZSTD_CCtx* cc, uint8_t lo, size_t count, EncodeScratch& s, std::vector<uint8_t>& out) {
    set_plane_parameters(cc, true);
    const size_t pairs = (count + 1) / 2, bound = ZSTD_compressBound(pairs);
    grow(s.packed, bound);
    const size_t k = ZSTD_compress2(cc, s.packed.data(), bound, s.pairs.data(), pairs);
    check(k);
    append_value<uint8_t>(out, 2);
    append_value<uint64_t>(out, 9 + s.escapes.size() + k);
    append_value<uint8_t>(out, lo);
    append_value<uint64_t>(out, s.escapes.size());
    out.insert(out.end(), s.escapes.begin(), s.escapes.end());
    out.insert(out.end(), s.packed.data(), s.packed.data() + k);
  }
  // Whether a mantissa plane's n bytes shrink below 7/8 at its level.
  bool shrinks(ZSTD_CCtx* cc, const uint8_t* plane, size_t n, std::vector<uint8_t>& packed) const {
    if (n == 0) return false;
    set_plane_parameters(cc, false);
    grow(packed, ZSTD_compressBound(n));
    const size_t k = ZSTD_compress2(cc, packed.data(), ZSTD_compressBound(n), plane, n);
    check(k);
    return worth(k, n);
  }
  static bool worth(size_t coded, size_t raw) { return coded < raw - raw / 8; }
  // Scratch that only grows: resizing it down and up again would zero the bytes in between every message.
  static void grow(std::vector<uint8_t>& v, size_t n) {
    if (v.size() < n) v.resize(n);
  }
  void set_plane_parameters(ZSTD_CCtx* cc, bool exponents) const {
    check(ZSTD_CCtx_reset(cc, ZSTD_reset_session_and_parameters));
    check(ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, plane_level(exponents)));
    if (exponents) {
      check(ZSTD_CCtx_setParameter(cc, ZSTD_c_minMatch, 7));
      check(ZSTD_CCtx_setParameter(cc, ZSTD_c_literalCompressionMode, ZSTD_ps_enable));
    }
  }
  // Plane `plane` (n bytes) appended to out as mode, size and bytes. Exponents are coded with short matches off
  // and Huffman literals on, the others with the level's defaults; `packed` is scratch.
  void put_plane(ZSTD_CCtx* cc, const uint8_t* plane, size_t n, bool exponents, std::vector<uint8_t>& packed,
                 std::vector<uint8_t>& out) {
    set_plane_parameters(cc, exponents);
    bool coded = n > 0;
    if (coded && n > kSampleAbove) {
      grow(packed, ZSTD_compressBound(kSampleBytes));
      size_t k = ZSTD_compress2(cc, packed.data(), ZSTD_compressBound(kSampleBytes), plane, kSampleBytes);
      check(k);
      coded = worth(k, kSampleBytes);
    }
    size_t k = 0;
    if (coded) {
      grow(packed, ZSTD_compressBound(n));
      k = ZSTD_compress2(cc, packed.data(), ZSTD_compressBound(n), plane, n);
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
        throw CodecError("codec " + spec_ + ": message has planes of " + std::to_string(w) +
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
    const uint8_t* planes[4];  // raw: in the message; coded: its body, then decoded
    uint8_t modes[4];
    size_t bodies[4];
    for (int k = 1; k <= width_; ++k) {  // the mantissa planes, then the exponents
      const int j = k % width_;
      modes[j] = r.read<uint8_t>();
      bodies[j] = r.read<uint64_t>();
      planes[j] = r.take(bodies[j]);
      const bool fits = modes[j] == 0 ? bodies[j] == count : bodies[j] > 0 && (modes[j] == 1 || j == 0);
      if (modes[j] > 2 || !fits) {
        throw CodecError("codec " + spec_ + ": plane " + std::to_string(j) + " has mode " + std::to_string(modes[j]) +
                         " and " + std::to_string(bodies[j]) + " bytes for " + std::to_string(count) +
                         " elements (corrupt message)");
      }
    }
    // The coded planes decoded into scratch, nibble pairs as (count + 1) / 2 bytes.
    size_t decoded = 0;
    for (int j = 0; j < width_; ++j) decoded += modes[j] == 2 ? (count + 1) / 2 : modes[j] == 1 ? count : 0;
    auto scratch = planes_out_.lease();
    grow(*scratch, decoded);
    uint8_t* next = scratch->data();
    for (int j = 1; j < width_; ++j) {
      if (modes[j] == 0) continue;
      unframe(ctx->get(), planes[j], bodies[j], next, count);
      planes[j] = next;
      next += count;
    }
    if (modes[0] == 2) {
      join_pairs(ctx->get(), planes[0], bodies[0], next, planes + 1, count, dst);
    } else {
      if (modes[0] == 1) unframe(ctx->get(), planes[0], bodies[0], next, count), planes[0] = next;
      join_float_planes(planes[0], planes + 1, count, width_, dst);
    }
    const size_t tail = raw - count * width_;
    const uint8_t* rest = r.take(tail);
    if (tail > 0) std::memcpy(dst + count * width_, rest, tail);  // dst may be null when raw is 0
    if (r.remaining() != 0) {
      throw CodecError("codec " + spec_ + ": " + std::to_string(r.remaining()) +
                       " bytes after the last plane (corrupt message)");
    }
  }
  // The elements from a nibble-pair exponent plane's body (u8 lo, u64 escapes, the escapes, one zstd frame of
  // the pairs) and the mantissa planes; `pairs` is scratch for (count + 1) / 2 bytes.
  void join_pairs(ZSTD_DCtx* dc, const uint8_t* body, size_t size, uint8_t* pairs, const uint8_t* const* mant,
                  size_t count, uint8_t* dst) const {
    ByteReader r(body, size, spec_);
    const uint8_t lo = r.read<uint8_t>();
    const uint64_t n_escapes = r.read<uint64_t>();
    const uint8_t* escapes = r.take(n_escapes);
    const size_t framed = r.remaining();
    unframe(dc, r.take(framed), framed, pairs, (count + 1) / 2);
    if (join_float_planes_paired(pairs, lo, escapes, n_escapes, mant, count, width_, dst) != n_escapes) {
      throw CodecError("codec " + spec_ + ": exponent pairs do not use their " + std::to_string(n_escapes) +
                       " escapes (corrupt message)");
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
  std::optional<int> level_;  // unset: kWholeLevel or plane_level
  int width_ = 1;
  Reusable<std::unique_ptr<ZSTD_CCtx, FreeCCtx>> cctx_;
  mutable Reusable<std::unique_ptr<ZSTD_DCtx, FreeDCtx>> dctx_;
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
        "lossless zstd over the quantized bytes, fp32's and bf16's split into exponent and mantissa planes; "
        "zstd:level=N (or zstd:N), default 3 (on planes: the fastest for the exponents, 1 for the mantissas)",
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
