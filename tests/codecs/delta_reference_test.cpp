// delta+quantizer chains against a slow reference of the frame logic as first written: full frame at the start
// and every `period` frames, otherwise x - base; the reconstruction is the quantizer's decoding plus the base; a
// delta frame whose reconstruction error (a sum of squares in element order) exceeds the chain's bound times
// ||x|| is replaced by a full frame. Bytes and decodings must match frame for frame, on both kernel paths,
// including frames the guard rejects (one holds a NaN) and hidden sizes that split into uneven row blocks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "policies/codecs/codec.hpp"
#include "policies/codecs/codec_eval.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {
namespace {

struct RefDelta {
  std::string terminal;
  int period;
  std::vector<float> base;
  bool valid = false;
  uint32_t seq = 0, since_full = 0;

  // Encodes one frame as the chain does; returns the bytes.
  std::vector<uint8_t> encode(const std::vector<float>& x, int tokens, int hidden) {
    auto q = create_codec(terminal);
    bool full = !valid || since_full + 1 >= static_cast<uint32_t>(period);
    std::vector<uint8_t> bytes;
    std::vector<float> recon;
    auto attempt = [&](bool f) {
      uint32_t s = valid ? seq + 1 : 0;
      bytes.clear();
      uint32_t side_size = 9;
      bytes.resize(4 + 9);
      std::memcpy(bytes.data(), &side_size, 4);
      bytes[4] = f ? 0 : 1;
      uint32_t base_seq = f ? s : seq;
      std::memcpy(bytes.data() + 5, &s, 4);
      std::memcpy(bytes.data() + 9, &base_seq, 4);
      std::vector<float> y = x;
      if (!f) {
        for (size_t i = 0; i < y.size(); ++i) y[i] = x[i] - base[i];
      }
      size_t at = bytes.size();
      q->encode(y.data(), tokens, hidden, bytes);
      recon.assign(x.size(), 0.0f);
      q->decode(bytes.data() + at, bytes.size() - at, tokens, hidden, recon.data());
      if (!f) {
        for (size_t i = 0; i < recon.size(); ++i) recon[i] = recon[i] + base[i];
      }
      return s;
    };
    uint32_t s = attempt(full);
    if (!full) {
      double e = 0, n = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        double d = static_cast<double>(recon[i]) - static_cast<double>(x[i]);
        e += d * d;
      }
      for (size_t i = 0; i < x.size(); ++i) n += static_cast<double>(x[i]) * static_cast<double>(x[i]);
      if (!(std::sqrt(e) <= q->error_bound_for(hidden) * std::sqrt(n))) {
        full = true;
        s = attempt(true);
      }
    }
    base = recon;
    seq = s;
    since_full = full ? 0 : since_full + 1;
    valid = true;
    return bytes;
  }
};

class DeltaReference : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { codecs::force_portable_kernels(GetParam()); }
  void TearDown() override { codecs::force_portable_kernels(false); }
};

TEST_P(DeltaReference, FramesMatchTheReference) {
  struct Shape {
    int tokens, hidden;
  };
  for (Shape sh : {Shape{9, 7168}, Shape{5, 5000}, Shape{3, 40000}, Shape{4, 200}}) {
    for (const std::string terminal : {"fp8-e4m3-b128", "int8-token", "mxfp4", "bf16"}) {
      const std::string spec = "delta:period=5+" + terminal;
      SCOPED_TRACE(spec + " " + std::to_string(sh.tokens) + " x " + std::to_string(sh.hidden));
      auto enc = create_codec(spec);
      auto dec = create_codec(spec);
      RefDelta ref{terminal, 5, {}};
      auto x0 = generate_activations(ActivationKind::kLlm, sh.tokens, sh.hidden, 5);
      auto drift = generate_activations(ActivationKind::kGaussian, sh.tokens, sh.hidden, 6);
      for (int step = 0; step < 12; ++step) {
        std::vector<float> x = x0;
        for (size_t i = 0; i < x.size(); ++i) x[i] += 0.01f * step * drift[i];
        if (step == 7) x[x.size() / 2] = std::numeric_limits<float>::quiet_NaN();  // the guard must refuse
        if (step == 9) {
          for (float& v : x) v = -3 * v;  // a jump: the delta is large
        }
        std::vector<uint8_t> want = ref.encode(x, sh.tokens, sh.hidden);
        std::vector<uint8_t> got;
        enc->encode(x.data(), sh.tokens, sh.hidden, got, 1);
        ASSERT_EQ(got.size(), want.size()) << "step " << step;
        EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size())) << "step " << step;
        std::vector<float> y(x.size());
        dec->decode(got.data(), got.size(), sh.tokens, sh.hidden, y.data(), 1);
        EXPECT_EQ(0, std::memcmp(y.data(), ref.base.data(), y.size() * sizeof(float))) << "step " << step;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, DeltaReference, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Portable" : "Avx2"; });

}  // namespace
}  // namespace eplab
