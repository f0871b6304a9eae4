#include "driver/transforms.hpp"

#include <cmath>

#include "engine/error.hpp"

namespace eplab {
namespace {

uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

float unit(uint64_t bits) { return static_cast<float>(bits >> 40) * (2.0f / 16777216.0f) - 1.0f; }

}  // namespace

void make_activations(uint64_t seed, int step, int layer, int rank, int tokens, int hidden, float* x) {
  const uint64_t base = splitmix(splitmix(splitmix(splitmix(seed) ^ step) ^ (static_cast<uint64_t>(layer) << 20)) ^
                                 (static_cast<uint64_t>(rank) << 40));
  for (int t = 0; t < tokens; ++t) {
    const uint64_t row = splitmix(base ^ static_cast<uint64_t>(t));
    for (int h = 0; h < hidden; ++h) x[static_cast<size_t>(t) * hidden + h] = unit(splitmix(row + h));
  }
}

std::vector<std::string> transform_names() { return {"identity", "scale", "ffn"}; }

ExpertTransform::ExpertTransform(std::string kind, int num_experts, int hidden, uint64_t seed, int ffn_width)
    : kind_(std::move(kind)), hidden_(hidden) {
  if (kind_ == "scale") {
    // (128 + e mod 97) / 128 is exact in fp32 and differs between neighbouring experts.
    scale_.resize(num_experts);
    for (int e = 0; e < num_experts; ++e) scale_[e] = static_cast<float>(128 + e % 97) / 128.0f;
  } else if (kind_ == "ffn") {
    w1_.resize(num_experts);
    w2_.resize(num_experts);
    const float a1 = 1.0f / std::sqrt(static_cast<float>(hidden)), a2 = 1.0f / std::sqrt(static_cast<float>(ffn_width));
    for (int e = 0; e < num_experts; ++e) {
      w1_[e].resize(ffn_width, hidden);
      w2_[e].resize(hidden, ffn_width);
      uint64_t s = splitmix(seed ^ (0xE0000000ull + e));
      for (int i = 0; i < w1_[e].size(); ++i) w1_[e].data()[i] = a1 * unit(s = splitmix(s));
      for (int i = 0; i < w2_[e].size(); ++i) w2_[e].data()[i] = a2 * unit(s = splitmix(s));
    }
  } else if (kind_ != "identity") {
    throw EplabError("unknown expert transform '" + kind_ + "' (known: identity scale ffn)");
  }
}

void ExpertTransform::apply(int expert, const float* x, float* y) const {
  if (kind_ == "identity") {
    std::copy(x, x + hidden_, y);
  } else if (kind_ == "scale") {
    const float s = scale_[expert];
    for (int h = 0; h < hidden_; ++h) y[h] = x[h] * s;
  } else {
    Eigen::Map<const Eigen::VectorXf> xv(x, hidden_);
    Eigen::VectorXf mid = (w1_[expert] * xv).cwiseMax(0.0f);
    Eigen::Map<Eigen::VectorXf>(y, hidden_) = w2_[expert] * mid;
  }
}

void ExpertTransform::accumulate(int expert, float w, const float* x, float* acc, float* scratch) const {
  apply(expert, x, scratch);
  for (int h = 0; h < hidden_; ++h) acc[h] += w * scratch[h];
}

}  // namespace eplab
