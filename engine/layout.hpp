// DispatchLayout: who gets what from one source rank — tokens per destination rank, node and expert slot,
// token-in-rank membership and prefix sums; the same facts DeepEP's get_dispatch_layout returns.
// A pure function of the resolved routing (physical slot per selection), the placement and the topology.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/placement.hpp"
#include "engine/topology.hpp"

namespace eplab {

struct DispatchLayout {
  int num_tokens = 0;
  int num_ranks = 0;
  int num_nodes = 0;
  int num_slots = 0;
  std::vector<int32_t> tokens_per_rank;   // [ranks] tokens with >= 1 selection on the rank
  std::vector<int32_t> tokens_per_node;   // [nodes] tokens with >= 1 selection in the node
  std::vector<int32_t> tokens_per_slot;   // [slots] selections per physical expert slot
  std::vector<uint8_t> is_token_in_rank;  // [tokens x ranks]
  std::vector<int32_t> rank_prefix;       // [ranks + 1] exclusive prefix sums of tokens_per_rank
  std::vector<int32_t> node_prefix;       // [nodes + 1]

  bool in_rank(int t, int r) const { return is_token_in_rank[static_cast<size_t>(t) * num_ranks + r] != 0; }
};

// slots: [tokens x topk] physical slot ids, -1 = unused. Duplicate slots of one token count once per rank
// and node but every selection counts toward tokens_per_slot.
DispatchLayout compute_layout(const std::vector<int32_t>& slots, int num_tokens, int topk, const Placement& placement,
                              const Topology& topo);

}  // namespace eplab
