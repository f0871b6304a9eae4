// Placement: logical experts onto physical expert slots (rank, local slot). With redundant slots a hot
// expert may have several replicas; a ReplicaSelector picks which one serves each token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/routing.hpp"
#include "engine/topology.hpp"

namespace eplab {

class Placement {
 public:
  Placement() = default;
  // slot_expert[r * slots_per_rank + s] = logical expert held by slot s of rank r.
  Placement(int num_experts, int num_ranks, std::vector<int32_t> slot_expert);

  // Experts in id order, num_experts / ranks per rank; redundant slots (a multiple of ranks) are filled
  // round-robin with experts 0, 1, ... so every slot holds something. Where the experts do not divide over the
  // ranks (more ranks than experts), experts and redundant slots together must: slot s holds expert s mod E.
  static Placement contiguous(int num_experts, int num_ranks, int redundant = 0);

  int num_experts() const { return num_experts_; }
  int num_ranks() const { return num_ranks_; }
  int slots_per_rank() const { return slots_per_rank_; }
  int num_slots() const { return static_cast<int>(slot_expert_.size()); }
  int rank_of_slot(int slot) const { return slot / slots_per_rank_; }
  int32_t expert_of_slot(int slot) const { return slot_expert_[slot]; }
  const std::vector<int32_t>& replicas(int expert) const { return replicas_[expert]; }
  const std::vector<int32_t>& slot_expert() const { return slot_expert_; }
  // The slot of each expert that has exactly one (kManyReplicas otherwise), readable at expert -1 too (slot -1):
  // selection without replicas is one table look-up per (token, k). all_sole(): no expert has replicas.
  static constexpr int32_t kManyReplicas = -2;
  const int32_t* sole_slots() const { return sole_slot_.data() + 1; }
  bool all_sole() const { return all_sole_; }

 private:
  int num_experts_ = 0;
  int num_ranks_ = 0;
  int slots_per_rank_ = 0;
  std::vector<int32_t> slot_expert_;
  std::vector<std::vector<int32_t>> replicas_;
  std::vector<int32_t> sole_slot_;  // [1 + num_experts]: expert -1, then each expert
  bool all_sole_ = false;
};

// Chooses the physical slot serving each (token, k) of a batch. Deterministic for a given input.
class ReplicaSelector {
 public:
  virtual ~ReplicaSelector() = default;
  virtual std::string name() const = 0;
  // Writes slot ids ([T*k], -1 where the expert id is -1).
  virtual void select(const RoutingBatch& batch, const Placement& placement, const Topology& topo,
                      std::vector<int32_t>& slots) = 0;
};

// Built-in selector: replica (token index + k) mod replica count — spreads load evenly.
class RoundRobinSelector : public ReplicaSelector {
 public:
  std::string name() const override { return "round-robin"; }
  void select(const RoutingBatch& batch, const Placement& placement, const Topology& topo,
              std::vector<int32_t>& slots) override;
};

}  // namespace eplab
