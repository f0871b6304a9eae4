#include "driver/transforms.hpp"

#include <cmath>

#include "engine/error.hpp"
#include "engine/hash.hpp"

namespace eplab {
namespace {

float unit(uint64_t bits) { return static_cast<float>(bits >> 40) * (2.0f / 16777216.0f) - 1.0f; }

}  // namespace

void make_activations(uint64_t seed, int step, int layer, int rank, int tokens, int hidden, float* x, int first_token) {
  const uint64_t base = mix64(mix64(mix64(mix64(seed) ^ step) ^ (static_cast<uint64_t>(layer) << 20)) ^
                                 (static_cast<uint64_t>(rank) << 40));
  for (int t = 0; t < tokens; ++t) {
    const uint64_t row = mix64(base ^ static_cast<uint64_t>(first_token + t));
    for (int h = 0; h < hidden; ++h) x[static_cast<size_t>(t) * hidden + h] = unit(mix64(row + h));
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
      uint64_t s = mix64(seed ^ (0xE0000000ull + e));
      for (int i = 0; i < w1_[e].size(); ++i) w1_[e].data()[i] = a1 * unit(s = mix64(s));
      for (int i = 0; i < w2_[e].size(); ++i) w2_[e].data()[i] = a2 * unit(s = mix64(s));
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
