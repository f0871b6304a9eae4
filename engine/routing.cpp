#include "engine/routing.hpp"

#include <bit>
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
  // Fast check first, as an OR of integer compares the compiler vectorizes (every batch of a run passes here):
  // a float is not finite exactly when its exponent bits are all ones.
  constexpr uint32_t kExponent = 0x7f800000u;
  int32_t bad = 0;
  for (size_t i = 0; i < n; ++i)
    bad |= (b.topk_idx[i] < -1) | (b.topk_idx[i] >= num_experts) |
           ((std::bit_cast<uint32_t>(b.topk_weights[i]) & kExponent) == kExponent);
  if (!bad) return;
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
