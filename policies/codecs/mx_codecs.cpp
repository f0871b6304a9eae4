// OCP Microscaling (MX) v1.0: blocks of 32 elements share one E8M0 scale X = 2^(floor(log2 amax) - emax_elem),
// elements are x / X rounded to E4M3 (mxfp8), E2M3 (mxfp6) or E2M1 (mxfp4) with round-to-nearest-even and
// saturation to the element format's max. A block holding NaN or Inf gets the NaN scale (0xFF), so the
// whole block decodes as NaN, as in the OCP reference implementation.
#include <cmath>
#include <cstring>

#include "policies/codecs/block_quant.hpp"
#include "policies/codecs/codec_internal.hpp"
#include "policies/codecs/float_formats.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab::codecs {
namespace {

constexpr int kBlock = 32;

enum class MxKind { kFp8, kFp6, kFp4 };

struct MxFormat {
  int bits;         // element width on the wire
  int emax;         // exponent of the element format's largest normal
  int mant;         // mantissa bits
  double fmax;      // largest element magnitude
  double half_sub;  // half the subnormal step (absolute error of RNE in the subnormal range)
};

MxFormat format_of(MxKind k) {
  switch (k) {
    case MxKind::kFp8:
      return {8, 8, 3, 448.0, 0x1p-10};
    case MxKind::kFp6:
      return {6, 2, 3, 7.5, 0x1p-4};
    case MxKind::kFp4:
      return {4, 2, 1, 6.0, 0x1p-2};
  }
  return {};
}

// floor(log2(a)) for a finite a > 0, subnormals included.
int floor_log2(float a) {
  uint32_t b = bits_of(a);
  if (b >= 0x00800000u) return static_cast<int>(b >> 23) - 127;
  return std::ilogb(a);
}

class MxCodec final : public Codec {
 public:
  MxCodec(std::string spec, MxKind kind) : spec_(std::move(spec)), kind_(kind), fmt_(format_of(kind)) {
    if (kind == MxKind::kFp8) {
      auto t = e4m3_table();
      table_.assign(t.begin(), t.end());
    } else if (kind == MxKind::kFp6) {
      auto t = e2m3_table();
      table_.assign(t.begin(), t.end());
    } else {
      auto t = e2m1_table();
      table_.assign(t.begin(), t.end());
    }
  }

  std::string name() const override { return spec_; }
  bool lossless() const override { return false; }
  // amax / X lies in [2^emax, 2^(emax+1)), so elements are relative-RNE (<= 2^-(m+1)) or saturated (at
  // most 1 - fmax / 2^(emax+1)); subnormal elements add <= half a step each against a block norm >= 2^emax:
  // rel <= sqrt(max(rne, sat)^2 + 32 * half_sub^2 / 4^emax). Worst cases are reachable: 0.125 (mxfp8),
  // 0.108 (mxfp6), 0.433 (mxfp4). Blocks whose scale would go below 2^-127 are clamped and fall outside.
  double error_bound() const override {
    double rne = std::ldexp(1.0, -(fmt_.mant + 1));
    double sat = 1.0 - fmt_.fmax / std::ldexp(1.0, fmt_.emax + 1);
    double r = std::max(rne, sat);
    double sub = kBlock * fmt_.half_sub * fmt_.half_sub / std::ldexp(1.0, 2 * fmt_.emax);
    return std::sqrt(r * r + sub) * kBoundSlack;
  }

  size_t token_bytes(int hidden) const {
    size_t h = static_cast<size_t>(hidden);
    size_t blocks = (h + kBlock - 1) / kBlock;
    return (h * fmt_.bits + 7) / 8 + blocks;
  }
  size_t encoded_size(int tokens, int hidden) const override {
    return static_cast<size_t>(tokens) * token_bytes(hidden);
  }

  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    size_t at = out.size();
    out.resize(at + encoded_size(tokens, hidden));
    std::vector<uint8_t> codes(static_cast<size_t>(hidden));
    size_t payload = (static_cast<size_t>(hidden) * fmt_.bits + 7) / 8;
    for (int t = 0; t < tokens; ++t) {
      const float* row = x + static_cast<size_t>(t) * hidden;
      uint8_t* p = out.data() + at + static_cast<size_t>(t) * token_bytes(hidden);
      uint8_t* scales = p + payload;
      for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
        size_t n = std::min(kBlock, hidden - b0);
        BlockAmax am = amax_kernel(row + b0, n);
        if (am.nonfinite) {
          scales[blk] = kE8M0NaN;
          std::memset(codes.data() + b0, 0, n);
          continue;
        }
        int e = am.amax > 0 ? floor_log2(am.amax) - fmt_.emax : -127;
        e = std::clamp(e, -127, 127);
        scales[blk] = static_cast<uint8_t>(e + 127);
        float inv = float_of(static_cast<uint32_t>(127 - e) << 23);  // 2^-e exactly; e in [-127, 125]
        switch (kind_) {
          case MxKind::kFp8:
            quantize_e4m3_kernel(row + b0, n, inv, codes.data() + b0);
            break;
          case MxKind::kFp6:
            quantize_e2m3_kernel(row + b0, n, inv, codes.data() + b0);
            break;
          case MxKind::kFp4:
            quantize_e2m1_kernel(row + b0, n, inv, codes.data() + b0);
            break;
        }
      }
      pack(codes.data(), hidden, p);
    }
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    std::vector<uint8_t> codes(static_cast<size_t>(hidden));
    size_t payload = (static_cast<size_t>(hidden) * fmt_.bits + 7) / 8;
    for (int t = 0; t < tokens; ++t) {
      const uint8_t* p = data + static_cast<size_t>(t) * token_bytes(hidden);
      float* row = out + static_cast<size_t>(t) * hidden;
      unpack(p, hidden, codes.data());
      const uint8_t* scales = p + payload;
      for (int b0 = 0, blk = 0; b0 < hidden; b0 += kBlock, ++blk) {
        int n = std::min(kBlock, hidden - b0);
        float scale = e8m0_to_float(scales[blk]);
        dequantize_kernel(codes.data() + b0, n, table_.data(), scale, row + b0);
      }
    }
  }

 private:
  // Elements are packed little-endian in bit order: element i occupies bits [i*w, (i+1)*w) of the payload
  // (so for mxfp4 the first element is the low nibble of byte 0).
  void pack(const uint8_t* codes, int n, uint8_t* out) const {
    if (fmt_.bits == 8) {
      std::memcpy(out, codes, n);
    } else if (fmt_.bits == 4) {
      int i = 0;
      for (; i + 1 < n; i += 2) out[i / 2] = static_cast<uint8_t>(codes[i] | (codes[i + 1] << 4));
      if (i < n) out[i / 2] = codes[i];
    } else {
      int i = 0;
      for (; i + 3 < n; i += 4) {
        uint32_t w =
            codes[i] | (codes[i + 1] << 6) | (codes[i + 2] << 12) | (static_cast<uint32_t>(codes[i + 3]) << 18);
        uint8_t* o = out + (i / 4) * 3;
        o[0] = static_cast<uint8_t>(w);
        o[1] = static_cast<uint8_t>(w >> 8);
        o[2] = static_cast<uint8_t>(w >> 16);
      }
      uint32_t w = 0;
      int k = 0;
      for (; i < n; ++i, ++k) w |= static_cast<uint32_t>(codes[i]) << (6 * k);
      uint8_t* o = out + (n / 4) * 3;
      for (int b = 0; b < (6 * k + 7) / 8; ++b) o[b] = static_cast<uint8_t>(w >> (8 * b));
    }
  }
  void unpack(const uint8_t* in, int n, uint8_t* codes) const {
    if (fmt_.bits == 8) {
      std::memcpy(codes, in, n);
    } else if (fmt_.bits == 4) {
      for (int i = 0; i < n; ++i) codes[i] = (in[i / 2] >> ((i & 1) * 4)) & 0xf;
    } else {
      int i = 0;
      for (; i + 3 < n; i += 4) {
        const uint8_t* s = in + (i / 4) * 3;
        uint32_t w = s[0] | (s[1] << 8) | (static_cast<uint32_t>(s[2]) << 16);
        for (int k = 0; k < 4; ++k) codes[i + k] = (w >> (6 * k)) & 0x3f;
      }
      const uint8_t* s = in + (n / 4) * 3;
      int rest = n - i;
      uint32_t w = 0;
      for (int b = 0; b < (6 * rest + 7) / 8; ++b) w |= static_cast<uint32_t>(s[b]) << (8 * b);
      for (int k = 0; k < rest; ++k) codes[i + k] = (w >> (6 * k)) & 0x3f;
    }
  }

  std::string spec_;
  MxKind kind_;
  MxFormat fmt_;
  std::vector<float> table_;
};

}  // namespace

void add_mx_codecs(std::vector<CodecEntry>& entries) {
  auto make = [](MxKind kind) {
    return [kind](const CodecParams& p) -> std::unique_ptr<Codec> { return std::make_unique<MxCodec>(p.spec(), kind); };
  };
  entries.push_back({"mxfp8",
                     "OCP MXFP8: E4M3 elements, E8M0 scale per 32 (8.25 bits/element)",
                     StageKind::kQuantizer,
                     make(MxKind::kFp8),
                     {},
                     {}});
  entries.push_back({"mxfp6",
                     "OCP MXFP6: E2M3 elements, E8M0 scale per 32 (6.25 bits/element)",
                     StageKind::kQuantizer,
                     make(MxKind::kFp6),
                     {},
                     {}});
  entries.push_back({"mxfp4",
                     "OCP MXFP4: E2M1 elements, E8M0 scale per 32 (4.25 bits/element)",
                     StageKind::kQuantizer,
                     make(MxKind::kFp4),
                     {},
                     {}});
}

}  // namespace eplab::codecs
