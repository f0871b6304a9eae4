// Least-loaded and topology-aware selectors and the selector registry.
#include <limits>

#include "engine/error.hpp"
#include "policies/replica/replica_selector.hpp"

namespace eplab {

void LeastLoadedSelector::select(const RoutingBatch& batch, const Placement& placement, const Topology&,
                                 std::vector<int32_t>& slots) {
  slots.resize(batch.topk_idx.size());
  std::vector<int64_t> assigned(placement.num_ranks(), 0);
  for (size_t i = 0; i < batch.topk_idx.size(); ++i) {
    const int32_t e = batch.topk_idx[i];
    if (e < 0) {
      slots[i] = -1;
      continue;
    }
    int32_t best = -1;
    int64_t best_n = std::numeric_limits<int64_t>::max();
    for (int32_t s : placement.replicas(e)) {
      const int64_t n = assigned[placement.rank_of_slot(s)];
      if (n < best_n) best = s, best_n = n;
    }
    slots[i] = best;
    ++assigned[placement.rank_of_slot(best)];
  }
}

TopologyAwareSelector::TopologyAwareSelector(int ranks, std::vector<double> cost)
    : ranks_(ranks), cost_(std::move(cost)), user_cost_(true) {
  if (ranks < 1 || cost_.size() != static_cast<size_t>(ranks) * ranks)
    throw EplabError("topology-aware selector: cost matrix has " + std::to_string(cost_.size()) +
                     " entries, expected " + std::to_string(ranks) + " x " + std::to_string(ranks));
}

std::vector<double> TopologyAwareSelector::default_cost(const Topology& topo) {
  const int n = topo.size();
  std::vector<double> c(static_cast<size_t>(n) * n);
  for (int a = 0; a < n; ++a)
    for (int b = 0; b < n; ++b) {
      double v = 0;
      if (a != b) v = topo.node_of(a) == topo.node_of(b) ? 1 : topo.local_of(a) == topo.local_of(b) ? 2 : 3;
      c[static_cast<size_t>(a) * n + b] = v;
    }
  return c;
}

void TopologyAwareSelector::select(const RoutingBatch& batch, const Placement& placement, const Topology& topo,
                                   std::vector<int32_t>& slots) {
  const int ranks = placement.num_ranks();
  if (!user_cost_ && ranks_ != topo.size()) {  // the default follows whichever topology comes in
    cost_ = default_cost(topo);
    ranks_ = topo.size();
  }
  if (ranks_ != ranks)
    throw EplabError("topology-aware selector: cost matrix covers " + std::to_string(ranks_) +
                     " ranks but the placement has " + std::to_string(ranks));
  if (batch.src_rank < 0 || batch.src_rank >= ranks)
    throw EplabError("topology-aware selector: source rank " + std::to_string(batch.src_rank) + " outside 0.." +
                     std::to_string(ranks - 1));
  const double* row = cost_.data() + static_cast<size_t>(batch.src_rank) * ranks;
  slots.resize(batch.topk_idx.size());
  std::vector<int32_t> best;
  for (int t = 0; t < batch.num_tokens; ++t)
    for (int k = 0; k < batch.topk; ++k) {
      const size_t i = static_cast<size_t>(t) * batch.topk + k;
      const int32_t e = batch.topk_idx[i];
      if (e < 0) {
        slots[i] = -1;
        continue;
      }
      const auto& reps = placement.replicas(e);
      if (reps.size() == 1) {
        slots[i] = reps[0];
        continue;
      }
      double best_c = std::numeric_limits<double>::infinity();
      best.clear();
      for (int32_t s : reps) {
        const double c = row[placement.rank_of_slot(s)];
        if (c < best_c) best_c = c, best.clear();
        if (c == best_c) best.push_back(s);
      }
      slots[i] = best[static_cast<size_t>(t + k) % best.size()];
    }
}

EPLAB_REGISTRY(ReplicaSelectorFactory, replica_selector_registry, "replica selector", r) {
  r.add("round-robin", "the replicas of an expert in turn, by (token + k)",
        []() -> std::unique_ptr<ReplicaSelector> { return std::make_unique<RoundRobinSelector>(); });
  r.add("least-loaded", "the replica whose rank has received the fewest selections so far in this batch",
        []() -> std::unique_ptr<ReplicaSelector> { return std::make_unique<LeastLoadedSelector>(); });
  r.add(
      "topology-aware", "the cheapest replica from the source: same node, then same rail (or a probed cost matrix)",
      []() -> std::unique_ptr<ReplicaSelector> { return std::make_unique<TopologyAwareSelector>(); },
      "topology-aware[:costs=FILE]");
}

std::vector<std::string> replica_selector_names() { return replica_selector_registry().names(); }

std::unique_ptr<ReplicaSelector> create_replica_selector(const std::string& name) {
  return replica_selector_registry().by_name(name)();
}

void add_rank_load(const RoutingBatch& batch, const Placement& placement, const Topology& topo,
                   ReplicaSelector& selector, std::vector<double>& per_rank) {
  std::vector<int32_t> slots;
  selector.select(batch, placement, topo, slots);
  per_rank.resize(placement.num_ranks(), 0.0);
  for (int32_t s : slots)
    if (s >= 0) per_rank[placement.rank_of_slot(s)] += 1.0;
}

}  // namespace eplab
