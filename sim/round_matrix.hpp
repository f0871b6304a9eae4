// An exchange round's bytes matrix reduced to few non-zero pairs with exactly the same load on every link and
// the same set of route latencies, so SimGrid's ptask model sets up the same linear system (one variable, the
// same coefficient per link, the same latency) at a fraction of the cost: an all-pairs round at 2048 GPUs has
// 4M pairs, each expanded link by link, and the reduced matrix has about 6 per rank.
#pragma once

#include <vector>

#include "engine/topology.hpp"

namespace eplab::sim {

// Why the reduction is exact. In ptask_L07 a parallel task is one max-min variable whose coefficient on a link
// is the sum of the bytes of the pairs routed through it, and whose latency is the largest route latency of
// its non-zero pairs. Pairs fall in route classes: inside one node (scale-up up of the source, down of the
// destination), between nodes in the same rail/leaf group (NIC up, NIC down) and between groups (NIC up,
// source group's spine up, destination group's spine down, NIC down). Within a class a link's load is a row
// sum (the source's up links, and its group's spine up link, a sum of row sums) or a column sum, so any
// matrix of the class with the same row and column sums loads every link the same. Each class is rebuilt as
// a transportation plan over its allowed pairs (never a pair of another class) with those sums, greedily, in
// O(ranks) entries. Byte counts are integers (below 2^53), so every partial sum is exact and the coefficients
// equal the original ones bit for bit. A unit (a node's pairs, a group's, the pairs between groups) whose greedy
// plan gets stuck, or would have more pairs than it had, keeps its original pairs.
struct RoundMatrixStats {
  long pairs_in = 0;   // non-zero pairs of the input
  long pairs_out = 0;  // non-zero pairs of the result
  int stuck = 0;       // units left as they were because the greedy plan got stuck
};

// bytes: [src * R + dst], rewritten in place (no second ranks² matrix at 4096 GPUs); the diagonal (a GPU's copy
// to itself, no route) is left alone. Left unchanged when its entries are not whole numbers or sum to 2^52 or
// more.
void reduce_round_matrix(const Topology& topo, std::vector<double>& bytes, RoundMatrixStats* stats = nullptr);

}  // namespace eplab::sim
