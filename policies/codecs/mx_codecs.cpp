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

class MxCodec final : public Codec {
 public:
  bool gemm_native() const override { return true; }

 public:
  MxCodec(std::string spec, MxKind kind) : spec_(std::move(spec)), kind_(kind), fmt_(format_of(kind)) {}

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
    size_t payload = (static_cast<size_t>(hidden) * fmt_.bits + 7) / 8;
    std::vector<float> mult(static_cast<size_t>(hidden));
    std::vector<uint8_t> codes(static_cast<size_t>(hidden));
    for (int t = 0; t < tokens; ++t) {
      uint8_t* p = out.data() + at + static_cast<size_t>(t) * token_bytes(hidden);
      mx_encode_row_kernel(elem(), x + static_cast<size_t>(t) * hidden, hidden, p, p + payload, mult.data(),
                           codes.data());
    }
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t) override {
    expect_shape(spec_, tokens, hidden);
    expect_size(spec_, size, encoded_size(tokens, hidden), tokens, hidden);
    size_t payload = (static_cast<size_t>(hidden) * fmt_.bits + 7) / 8;
    for (int t = 0; t < tokens; ++t) {
      const uint8_t* p = data + static_cast<size_t>(t) * token_bytes(hidden);
      mx_decode_row_kernel(elem(), p, p + payload, hidden, out + static_cast<size_t>(t) * hidden);
    }
  }

 private:
  // Elements are packed little-endian in bit order: element i occupies bits [i*w, (i+1)*w) of the payload
  // (so for mxfp4 the first element is the low nibble of byte 0); see quant_kernels.cpp.
  MxElem elem() const {
    switch (kind_) {
      case MxKind::kFp8:
        return MxElem::kE4M3;
      case MxKind::kFp6:
        return MxElem::kE2M3;
      case MxKind::kFp4:
        return MxElem::kE2M1;
    }
    return MxElem::kE4M3;
  }

  std::string spec_;
  MxKind kind_;
  MxFormat fmt_;
};

}  // namespace

void add_mx_codecs(CodecRegistry& r) {
  auto make = [](MxKind kind) {
    return [kind](const CodecParams& p) -> std::unique_ptr<Codec> { return std::make_unique<MxCodec>(p.spec(), kind); };
  };
  r.add("mxfp8", "OCP MXFP8: E4M3 elements, E8M0 scale per 32 (8.25 bits/element)",
        quantizer_stage(make(MxKind::kFp8)));
  r.add("mxfp6", "OCP MXFP6: E2M3 elements, E8M0 scale per 32 (6.25 bits/element)",
        quantizer_stage(make(MxKind::kFp6)));
  r.add("mxfp4", "OCP MXFP4: E2M1 elements, E8M0 scale per 32 (4.25 bits/element)",
        quantizer_stage(make(MxKind::kFp4)));
}

}  // namespace eplab::codecs
