// What the emulated experts do to a token, so that a run moves and checks real data: deterministic
// activations, and per-expert transforms — identity, a per-expert scale (misrouting changes the result), or a
// small real FFN (Eigen). The same row-by-row code serves the ranks and the reference, so fp32 is bit-exact.
#pragma once

#include <Eigen/Dense>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace eplab {

// Fills x [tokens x hidden] with values in [-1, 1) that depend only on (seed, step, layer, rank, token, channel).
void make_activations(uint64_t seed, int step, int layer, int rank, int tokens, int hidden, float* x, int first_token = 0);

class ExpertTransform {
 public:
  // kind: "identity", "scale" or "ffn" (ffn_width channels, weights from seed).
  ExpertTransform(std::string kind, int num_experts, int hidden, uint64_t seed, int ffn_width = 16);
  const std::string& kind() const { return kind_; }
  // y = f_expert(x) for one row of `hidden` floats.
  void apply(int expert, const float* x, float* y) const;
  // acc += w * f_expert(x); the one expression both the engine side and the reference use.
  void accumulate(int expert, float w, const float* x, float* acc, float* scratch) const;
  // identity and scale map each element on its own: f_expert(x)[h] = x[h] * scale(expert), exactly (identity's
  // scale is 1, and x * 1 == x), so accumulate can run straight over wire rows (driver/reference.cpp).
  bool elementwise() const { return kind_ != "ffn"; }
  float scale(int expert) const { return scale_.empty() ? 1.0f : scale_[expert]; }

 private:
  std::string kind_;
  int hidden_;
  std::vector<float> scale_;
  std::vector<Eigen::MatrixXf> w1_, w2_;
};

std::vector<std::string> transform_names();

}  // namespace eplab
