// topk and threshold (alone, in chains, with error feedback) against a slow reference written the way the first
// implementation was: sort every position of a token by |x| (non-finite first), ties by position, keep the
// first k, or keep |x| >= tau compared in double. The whole encoding must match byte for byte (side bytes,
// then the terminal's encoding of the kept values) and the decoding bit for bit, on the AVX2 and the portable
// paths, for ties, all-equal rows, zeros of both signs, NaN/Inf, floats on either side of a double tau, and
// hidden sizes that take the sampled selection, its fallback, list mode with u16 and u32 indices, and bitmaps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>

#include "policies/codecs/codec.hpp"
#include "policies/codecs/codec_eval.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {
namespace {

float ref_key(float v) { return std::isfinite(v) ? std::fabs(v) : std::numeric_limits<float>::infinity(); }

// Positions each token keeps, ascending.
std::vector<std::vector<int>> ref_topk(const std::vector<float>& x, int tokens, int hidden, double ratio) {
  int k = std::min(hidden, static_cast<int>(std::ceil(ratio * hidden - 1e-9)));
  std::vector<std::vector<int>> kept(tokens);
  for (int t = 0; t < tokens; ++t) {
    const float* row = x.data() + static_cast<size_t>(t) * hidden;
    std::vector<int> idx(hidden);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [row](int a, int b) { return ref_key(row[a]) > ref_key(row[b]); });
    kept[t].assign(idx.begin(), idx.begin() + k);
    std::sort(kept[t].begin(), kept[t].end());
  }
  return kept;
}

std::vector<std::vector<int>> ref_threshold(const std::vector<float>& x, int tokens, int hidden, double tau) {
  std::vector<std::vector<int>> kept(tokens);
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < hidden; ++i) {
      if (ref_key(x[static_cast<size_t>(t) * hidden + i]) >= tau) kept[t].push_back(i);
    }
  }
  return kept;
}

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

// The side information as documented: u8 mode, then the list ([u32 count] + u16/u32 indices per token) or
// one bitmap per token, whichever is smaller (the list on a tie).
std::vector<uint8_t> ref_side(const std::vector<std::vector<int>>& kept, int hidden, bool fixed_count) {
  std::vector<uint8_t> side;
  if (kept.empty()) return side;
  size_t total = 0;
  for (const auto& k : kept) total += k.size();
  size_t w = hidden <= 65536 ? 2 : 4, nb = (static_cast<size_t>(hidden) + 7) / 8;
  size_t list = (fixed_count ? 0 : 4 * kept.size()) + total * w;
  if (list <= kept.size() * nb) {
    side.push_back(0);
    for (const auto& k : kept) {
      if (!fixed_count) put<uint32_t>(side, static_cast<uint32_t>(k.size()));
      for (int i : k) w == 2 ? put<uint16_t>(side, static_cast<uint16_t>(i)) : put<uint32_t>(side, i);
    }
  } else {
    side.push_back(1);
    size_t at = side.size();
    side.resize(at + kept.size() * nb, 0);
    for (size_t t = 0; t < kept.size(); ++t) {
      for (int i : kept[t]) side[at + t * nb + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
  }
  return side;
}

struct RefResult {
  std::vector<uint8_t> bytes;
  std::vector<float> decoded;
};

// The chain `sparsifier+terminal`: [u32 side size][side][terminal(values)], values token after token (topk:
// tokens x k; threshold: 1 x total), decoded by scattering the terminal's decoding into zeros.
RefResult ref_chain(const std::vector<float>& x, int tokens, int hidden, const std::vector<std::vector<int>>& kept,
                    bool fixed_count, const std::string& terminal) {
  std::vector<float> values;
  for (int t = 0; t < tokens; ++t) {
    for (int i : kept[t]) values.push_back(x[static_cast<size_t>(t) * hidden + i]);
  }
  int vt = fixed_count ? tokens : 1;
  int vh = fixed_count ? (tokens ? static_cast<int>(kept[0].size()) : 0) : static_cast<int>(values.size());
  if (fixed_count && hidden == 0) vh = 0;
  RefResult r;
  std::vector<uint8_t> side = ref_side(kept, hidden, fixed_count);
  put<uint32_t>(r.bytes, static_cast<uint32_t>(side.size()));
  r.bytes.insert(r.bytes.end(), side.begin(), side.end());
  auto term = create_codec(terminal);
  size_t at = r.bytes.size();
  term->encode(values.data(), vt, vh, r.bytes);
  std::vector<float> v_hat(values.size());
  term->decode(r.bytes.data() + at, r.bytes.size() - at, vt, vh, v_hat.data());
  r.decoded.assign(x.size(), 0.0f);
  size_t j = 0;
  for (int t = 0; t < tokens; ++t) {
    for (int i : kept[t]) r.decoded[static_cast<size_t>(t) * hidden + i] = v_hat[j++];
  }
  return r;
}

// Inputs that stress the selection: LLM-like data, many ties, all-equal and all-zero rows, signed zeros,
// NaN/Inf, and floats just either side of 0.1 (a double tau below).
std::vector<float> make_input(int kind, int tokens, int hidden, uint64_t seed) {
  std::vector<float> x = generate_activations(ActivationKind::kLlm, tokens, hidden, seed);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float tenth = 0.1f, below_tenth = std::nextafter(0.1f, 0.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    if (kind == 1) x[i] = std::round(x[i] * 2) / 2;  // a handful of magnitudes: ties everywhere
    if (kind == 2) x[i] = (i / static_cast<size_t>(hidden)) % 2 ? 0.0f : 0.25f;  // equal rows, zero rows
    if (kind == 3) {
      const float specials[] = {nan, inf, -inf, -0.0f, 0.0f, 1e-42f, tenth, -below_tenth, -tenth, below_tenth};
      if (rng() % 4 == 0) x[i] = specials[rng() % 10];
    }
  }
  return x;
}

class SparseReference : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { codecs::force_portable_kernels(GetParam()); }
  void TearDown() override { codecs::force_portable_kernels(false); }
};

void expect_matches(const std::string& spec, const std::vector<float>& x, int tokens, int hidden,
                    const RefResult& ref) {
  SCOPED_TRACE(spec + " tokens " + std::to_string(tokens) + " hidden " + std::to_string(hidden));
  auto c = create_codec(spec);
  std::vector<uint8_t> bytes;
  c->encode(x.data(), tokens, hidden, bytes);
  ASSERT_EQ(bytes.size(), ref.bytes.size());
  EXPECT_EQ(0, std::memcmp(bytes.data(), ref.bytes.data(), bytes.size()));
  std::vector<float> y(x.size(), -7.0f);
  c->decode(bytes.data(), bytes.size(), tokens, hidden, y.data());
  EXPECT_TRUE(y.empty() || std::memcmp(y.data(), ref.decoded.data(), y.size() * sizeof(float)) == 0);
}

struct Shape {
  int tokens, hidden;
};
// 7168 and 4096 take the sampled bracket, 1000 the full nth_element, 70000 u32 indices in list mode.
const Shape kShapes[] = {{6, 7168}, {5, 4096}, {4, 1000}, {7, 200}, {3, 13}, {2, 70000}, {0, 64}, {3, 0}};

TEST_P(SparseReference, TopkAloneAndInChainsMatchTheSortingReference) {
  for (Shape s : kShapes) {
    for (int kind = 0; kind < 4; ++kind) {
      auto x = make_input(kind, s.tokens, s.hidden, 11 + kind);
      for (double ratio : {0.25, 0.01, 0.5, 0.9, 1.0}) {
        auto kept = ref_topk(x, s.tokens, s.hidden, ratio);
        std::string topk = "topk:ratio=" + std::to_string(ratio);
        for (const std::string terminal : {"fp32", "fp8-e4m3-b128", "int8-token"}) {
          std::string spec = terminal == "fp32" ? topk : topk + "+" + terminal;
          expect_matches(spec, x, s.tokens, s.hidden, ref_chain(x, s.tokens, s.hidden, kept, true, terminal));
        }
      }
    }
  }
}

TEST_P(SparseReference, ThresholdAloneAndInChainsMatchTheReference) {
  for (Shape s : kShapes) {
    for (int kind = 0; kind < 4; ++kind) {
      auto x = make_input(kind, s.tokens, s.hidden, 21 + kind);
      // Written without '+' (it separates chain stages); stod gives the codec the same double.
      for (const std::string text : {"0.01", "0", "0.1", "0.25", "1", "1e-40", "3.5e38", "1e300"}) {
        double tau = std::stod(text);
        auto kept = ref_threshold(x, s.tokens, s.hidden, tau);
        std::string t = "threshold:tau=" + text;
        for (const std::string terminal : {"fp32", "bf16"}) {
          std::string spec = terminal == "fp32" ? t : t + "+" + terminal;
          expect_matches(spec, x, s.tokens, s.hidden, ref_chain(x, s.tokens, s.hidden, kept, false, terminal));
        }
      }
    }
  }
}

// Error feedback: each message selects on x + the stream's residual, and the residual becomes what the
// receiver missed (non-finite differences dropped), over several messages of one stream.
TEST_P(SparseReference, ErrorFeedbackMatchesTheReference) {
  const int tokens = 6, hidden = 7168;
  for (const std::string spec : {"topk:ratio=0.1,ef=1+fp8-e4m3-b128", "threshold:tau=0.3,ef=1+bf16"}) {
    auto c = create_codec(spec);
    const bool topk = spec.rfind("topk", 0) == 0;
    const std::string terminal = topk ? "fp8-e4m3-b128" : "bf16";
    std::vector<float> residual;
    for (int step = 0; step < 4; ++step) {
      auto x = make_input(step == 2 ? 3 : 0, tokens, hidden, 31 + step);
      std::vector<float> acc = x;
      if (!residual.empty()) {
        for (size_t i = 0; i < acc.size(); ++i) acc[i] += residual[i];
      }
      auto kept = topk ? ref_topk(acc, tokens, hidden, 0.1) : ref_threshold(acc, tokens, hidden, 0.3);
      RefResult ref = ref_chain(acc, tokens, hidden, kept, topk, terminal);
      SCOPED_TRACE(spec + " step " + std::to_string(step));
      std::vector<uint8_t> bytes;
      c->encode(x.data(), tokens, hidden, bytes);
      ASSERT_EQ(bytes.size(), ref.bytes.size());
      EXPECT_EQ(0, std::memcmp(bytes.data(), ref.bytes.data(), bytes.size()));
      auto d = create_codec(spec);  // the decoder keeps no feedback state
      std::vector<float> y(x.size());
      d->decode(bytes.data(), bytes.size(), tokens, hidden, y.data());
      EXPECT_EQ(0, std::memcmp(y.data(), ref.decoded.data(), y.size() * sizeof(float)));
      residual.resize(acc.size());
      for (size_t i = 0; i < acc.size(); ++i) {
        float r = acc[i] - ref.decoded[i];
        residual[i] = std::isfinite(r) ? r : 0.0f;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, SparseReference, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Portable" : "Avx2"; });

}  // namespace
}  // namespace eplab
