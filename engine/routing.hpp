// Routing decisions for one (step, layer, source rank): top-k expert ids and weights per token.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace eplab {

struct RoutingBatch {
  int step = 0;
  int layer = 0;
  int src_rank = 0;
  int num_tokens = 0;
  int topk = 0;
  std::vector<int32_t> topk_idx;    // [num_tokens * topk], -1 = no expert in that slot
  std::vector<float> topk_weights;  // [num_tokens * topk]
  std::vector<float> gate_scores;   // optional [num_tokens * num_experts]

  int32_t expert(int t, int k) const { return topk_idx[static_cast<size_t>(t) * topk + k]; }
  float weight(int t, int k) const { return topk_weights[static_cast<size_t>(t) * topk + k]; }
};

// Throws EplabError if ids are out of [-1, num_experts), sizes disagree, or weights are not finite.
void validate_batch(const RoutingBatch& b, int num_experts, const char* what);

}  // namespace eplab
