#include "engine/routing.hpp"

#include <cmath>
#include <string>

#include "engine/error.hpp"

namespace eplab {

void validate_batch(const RoutingBatch& b, int num_experts, const char* what) {
  auto where = [&] {
    return std::string(what) + " (step " + std::to_string(b.step) + ", layer " + std::to_string(b.layer) + ", rank " +
           std::to_string(b.src_rank) + ")";
  };
  if (b.num_tokens < 0) throw EplabError(where() + ": negative token count " + std::to_string(b.num_tokens));
  const size_t n = static_cast<size_t>(b.num_tokens) * b.topk;
  if (b.topk_idx.size() != n)
    throw EplabError(where() + ": topk_idx has " + std::to_string(b.topk_idx.size()) + " entries, expected " +
                     std::to_string(b.num_tokens) + " tokens x top-" + std::to_string(b.topk) + " = " +
                     std::to_string(n));
  if (b.topk_weights.size() != n)
    throw EplabError(where() + ": topk_weights has " + std::to_string(b.topk_weights.size()) + " entries, expected " +
                     std::to_string(n));
  for (size_t i = 0; i < n; ++i) {
    const int32_t e = b.topk_idx[i];
    if (e < -1 || e >= num_experts)
      throw EplabError(where() + ": token " + std::to_string(i / b.topk) + " selects expert " + std::to_string(e) +
                       ", but the model has experts 0.." + std::to_string(num_experts - 1));
    if (!std::isfinite(b.topk_weights[i]))
      throw EplabError(where() + ": token " + std::to_string(i / b.topk) + " has a non-finite weight");
  }
}

}  // namespace eplab
