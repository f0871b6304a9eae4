#include "engine/placement.hpp"

#include <string>

#include "engine/error.hpp"

namespace eplab {

Placement::Placement(int num_experts, int num_ranks, std::vector<int32_t> slot_expert)
    : num_experts_(num_experts), num_ranks_(num_ranks), slot_expert_(std::move(slot_expert)) {
  if (num_ranks < 1) throw EplabError("placement: rank count must be >= 1");
  if (slot_expert_.size() % num_ranks != 0)
    throw EplabError("placement: " + std::to_string(slot_expert_.size()) + " slots do not divide over " +
                     std::to_string(num_ranks) + " ranks");
  slots_per_rank_ = static_cast<int>(slot_expert_.size()) / num_ranks;
  replicas_.assign(num_experts, {});
  for (size_t s = 0; s < slot_expert_.size(); ++s) {
    const int32_t e = slot_expert_[s];
    if (e < 0 || e >= num_experts)
      throw EplabError("placement: slot " + std::to_string(s) + " holds expert " + std::to_string(e) + ", outside 0.." +
                       std::to_string(num_experts - 1));
    replicas_[e].push_back(static_cast<int32_t>(s));
  }
  for (int e = 0; e < num_experts; ++e)
    if (replicas_[e].empty()) throw EplabError("placement: expert " + std::to_string(e) + " has no slot");
  sole_slot_.assign(1 + static_cast<size_t>(num_experts), -1);
  all_sole_ = true;
  for (int e = 0; e < num_experts; ++e) {
    sole_slot_[1 + e] = replicas_[e].size() == 1 ? replicas_[e][0] : kManyReplicas;
    all_sole_ = all_sole_ && replicas_[e].size() == 1;
  }
}

Placement Placement::contiguous(int num_experts, int num_ranks, int redundant) {
  if (num_ranks < 1) throw EplabError("placement: rank count must be >= 1");
  if (redundant < 0 || (num_experts + redundant) % num_ranks != 0)
    throw EplabError("placement: " + std::to_string(num_experts) + " experts and " + std::to_string(redundant) +
                     " redundant slots do not divide evenly over " + std::to_string(num_ranks) +
                     " ranks; choose a rank count that divides the expert count, or redundant experts that make the "
                     "slots a multiple of it");
  std::vector<int32_t> slots;
  slots.reserve(static_cast<size_t>(num_experts) + redundant);
  if (num_experts % num_ranks != 0) {  // more ranks than experts, say: experts in id order, then copies
    for (int s = 0; s < num_experts + redundant; ++s) slots.push_back(s % num_experts);
    return Placement(num_experts, num_ranks, std::move(slots));
  }
  const int per_rank = num_experts / num_ranks;
  const int extra = redundant / num_ranks;
  int next_extra = 0;
  for (int r = 0; r < num_ranks; ++r) {
    for (int i = 0; i < per_rank; ++i) slots.push_back(r * per_rank + i);
    for (int i = 0; i < extra; ++i) slots.push_back(next_extra++ % num_experts);
  }
  return Placement(num_experts, num_ranks, std::move(slots));
}

void RoundRobinSelector::select(const RoutingBatch& batch, const Placement& placement, const Topology&,
                                std::vector<int32_t>& slots) {
  slots.resize(batch.topk_idx.size());
  if (placement.all_sole()) {  // no replicas to choose between: the table maps -1 to -1 as well
    const int32_t* sole = placement.sole_slots();
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = sole[batch.topk_idx[i]];
    return;
  }
  for (int t = 0; t < batch.num_tokens; ++t)
    for (int k = 0; k < batch.topk; ++k) {
      const size_t i = static_cast<size_t>(t) * batch.topk + k;
      const int32_t e = batch.topk_idx[i];
      if (e < 0) {
        slots[i] = -1;
        continue;
      }
      const auto& reps = placement.replicas(e);
      slots[i] = reps.size() == 1 ? reps[0] : reps[static_cast<size_t>(t + k) % reps.size()];
    }
}

}  // namespace eplab
