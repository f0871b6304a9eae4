#include "engine/layout.hpp"

#include <string>

#include "engine/error.hpp"

namespace eplab {

DispatchLayout compute_layout(const std::vector<int32_t>& slots, int num_tokens, int topk, const Placement& placement,
                              const Topology& topo) {
  DispatchLayout l;
  l.num_tokens = num_tokens;
  l.num_ranks = topo.size();
  l.num_nodes = topo.nodes();
  l.num_slots = placement.num_slots();
  if (placement.num_ranks() != l.num_ranks)
    throw EplabError("layout: placement covers " + std::to_string(placement.num_ranks()) + " ranks, topology has " +
                     std::to_string(l.num_ranks));
  l.tokens_per_rank.assign(l.num_ranks, 0);
  l.tokens_per_node.assign(l.num_nodes, 0);
  l.tokens_per_slot.assign(l.num_slots, 0);
  l.is_token_in_rank.assign(static_cast<size_t>(num_tokens) * l.num_ranks, 0);
  std::vector<int> node_seen(l.num_nodes, -1);
  for (int t = 0; t < num_tokens; ++t) {
    uint8_t* row = &l.is_token_in_rank[static_cast<size_t>(t) * l.num_ranks];
    for (int k = 0; k < topk; ++k) {
      const int32_t s = slots[static_cast<size_t>(t) * topk + k];
      if (s < 0) continue;
      if (s >= l.num_slots)
        throw EplabError("layout: token " + std::to_string(t) + " selects slot " + std::to_string(s) + " of " +
                         std::to_string(l.num_slots));
      ++l.tokens_per_slot[s];
      const int r = placement.rank_of_slot(s);
      if (!row[r]) {
        row[r] = 1;
        ++l.tokens_per_rank[r];
      }
      const int n = topo.node_of(r);
      if (node_seen[n] != t) {
        node_seen[n] = t;
        ++l.tokens_per_node[n];
      }
    }
  }
  l.rank_prefix.assign(l.num_ranks + 1, 0);
  for (int r = 0; r < l.num_ranks; ++r) l.rank_prefix[r + 1] = l.rank_prefix[r] + l.tokens_per_rank[r];
  l.node_prefix.assign(l.num_nodes + 1, 0);
  for (int n = 0; n < l.num_nodes; ++n) l.node_prefix[n + 1] = l.node_prefix[n] + l.tokens_per_node[n];
  return l;
}

}  // namespace eplab
