// Replica selectors: which physical slot of a replicated expert serves each (token, k). The interface is
// engine/placement.hpp's ReplicaSelector; this registry adds least-loaded and topology-aware to round-robin.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/placement.hpp"
#include "engine/registry.hpp"

namespace eplab {

// The replica whose rank has received the fewest selections so far in this batch (ties: the lowest slot id),
// so a source spreads its own tokens; it knows nothing of other sources' batches.
class LeastLoadedSelector : public ReplicaSelector {
 public:
  std::string name() const override { return "least-loaded"; }
  void select(const RoutingBatch& batch, const Placement& placement, const Topology& topo,
              std::vector<int32_t>& slots) override;
};

// The cheapest replica from the source rank by a [ranks x ranks] cost matrix; equal-cost replicas are taken
// round-robin by (token + k) so a node-local hot expert's replicas share the load. The default cost follows
// the topology: self 0, same node 1, other node on the same rail 2, other node and rail 3 - so a replica in
// the source's node wins, then one on its rail (one NIC hop, no spine crossing on rail-optimized fabrics).
class TopologyAwareSelector : public ReplicaSelector {
 public:
  TopologyAwareSelector() = default;
  // cost[a * ranks + b]: cost of sending from rank a to rank b (e.g. the latency `eplab probe` measured).
  TopologyAwareSelector(int ranks, std::vector<double> cost);
  std::string name() const override { return "topology-aware"; }
  void select(const RoutingBatch& batch, const Placement& placement, const Topology& topo,
              std::vector<int32_t>& slots) override;

  static std::vector<double> default_cost(const Topology& topo);

 private:
  int ranks_ = 0;
  std::vector<double> cost_;
  bool user_cost_ = false;  // false: cost_ is default_cost of the last topology seen
};

// round-robin | least-loaded | topology-aware. Throws EplabError listing the known names.
std::unique_ptr<ReplicaSelector> create_replica_selector(const std::string& name);
std::vector<std::string> replica_selector_names();
// The replica selector registry (engine/registry.hpp).
using ReplicaSelectorFactory = std::unique_ptr<ReplicaSelector> (*)();
Registry<ReplicaSelectorFactory>& replica_selector_registry();

// Selections each rank receives when `selector` serves `batch` ([ranks], added to `per_rank`).
void add_rank_load(const RoutingBatch& batch, const Placement& placement, const Topology& topo,
                   ReplicaSelector& selector, std::vector<double>& per_rank);

}  // namespace eplab
