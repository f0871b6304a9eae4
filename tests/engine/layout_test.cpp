// DispatchLayout against a brute-force count on random routings, including empty ranks, all-to-one skew,
// duplicate top-k entries inside one node and unused (-1) slots.
#include "engine/layout.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <numeric>
#include <random>
#include <set>

#include "engine/error.hpp"

namespace eplab {
namespace {

Topology topo(int nodes, int gpus) {
  ClusterSpec s = cluster_preset("h800-cx7");
  s.nodes = nodes;
  s.gpus_per_node = gpus;
  return Topology(s);
}

void check_against_brute_force(const std::vector<int32_t>& slots, int T, int k, const Placement& p, const Topology& t) {
  const DispatchLayout l = compute_layout(slots, T, k, p, t);
  for (int r = 0; r < t.size(); ++r) {
    int count = 0;
    for (int tok = 0; tok < T; ++tok) {
      bool in = false;
      for (int j = 0; j < k; ++j) {
        const int s = slots[tok * k + j];
        if (s >= 0 && p.rank_of_slot(s) == r) in = true;
      }
      EXPECT_EQ(l.in_rank(tok, r), in) << "token " << tok << " rank " << r;
      count += in;
    }
    EXPECT_EQ(l.tokens_per_rank[r], count) << "rank " << r;
    EXPECT_EQ(l.rank_prefix[r + 1] - l.rank_prefix[r], count);
  }
  for (int n = 0; n < t.nodes(); ++n) {
    int count = 0;
    for (int tok = 0; tok < T; ++tok) {
      std::set<int> nodes;
      for (int j = 0; j < k; ++j)
        if (slots[tok * k + j] >= 0) nodes.insert(t.node_of(p.rank_of_slot(slots[tok * k + j])));
      count += nodes.count(n);
    }
    EXPECT_EQ(l.tokens_per_node[n], count) << "node " << n;
  }
  for (int s = 0; s < p.num_slots(); ++s) {
    int count = 0;
    for (int32_t x : slots) count += x == s;
    EXPECT_EQ(l.tokens_per_slot[s], count) << "slot " << s;
  }
  EXPECT_EQ(l.rank_prefix.back(), std::accumulate(l.tokens_per_rank.begin(), l.tokens_per_rank.end(), 0));
}

TEST(Layout, RandomRoutingsMatchBruteForce) {
  std::mt19937 rng(7);
  for (auto [nodes, gpus] : {std::pair{1, 1}, {1, 8}, {2, 4}, {4, 8}}) {
    const Topology t = topo(nodes, gpus);
    const Placement p = Placement::contiguous(64, t.size());
    const int T = 50, k = 6;
    std::vector<int32_t> slots(T * k);
    std::uniform_int_distribution<int> pick(-1, 63);
    for (auto& s : slots) s = pick(rng);
    check_against_brute_force(slots, T, k, p, t);
  }
}

TEST(Layout, AllToOneExpertLeavesOtherRanksEmpty) {
  const Topology t = topo(2, 4);
  const Placement p = Placement::contiguous(16, 8);
  std::vector<int32_t> slots(10 * 2, -1);
  for (int tok = 0; tok < 10; ++tok) slots[tok * 2] = 5;  // expert 5 lives on rank 2
  const DispatchLayout l = compute_layout(slots, 10, 2, p, t);
  EXPECT_EQ(l.tokens_per_rank[2], 10);
  for (int r = 0; r < 8; ++r) {
    if (r != 2) {
      EXPECT_EQ(l.tokens_per_rank[r], 0);
    }
  }
  EXPECT_EQ(l.tokens_per_node[0], 10);
  EXPECT_EQ(l.tokens_per_node[1], 0);
  EXPECT_EQ(l.tokens_per_slot[5], 10);
  check_against_brute_force(slots, 10, 2, p, t);
}

TEST(Layout, DuplicatesInsideOneNodeCountOncePerRankAndNode) {
  const Topology t = topo(2, 2);
  const Placement p = Placement::contiguous(8, 4);  // 2 experts per rank
  // One token: experts 0 and 1 (rank 0, twice), 2 (rank 1, same node), and expert 0 again.
  std::vector<int32_t> slots{0, 1, 2, 0};
  const DispatchLayout l = compute_layout(slots, 1, 4, p, t);
  EXPECT_EQ(l.tokens_per_rank[0], 1);
  EXPECT_EQ(l.tokens_per_rank[1], 1);
  EXPECT_EQ(l.tokens_per_node[0], 1);
  EXPECT_EQ(l.tokens_per_node[1], 0);
  EXPECT_EQ(l.tokens_per_slot[0], 2);
  check_against_brute_force(slots, 1, 4, p, t);
}

TEST(Layout, EmptyBatchAndAllUnusedSlots) {
  const Topology t = topo(1, 4);
  const Placement p = Placement::contiguous(8, 4);
  const DispatchLayout empty = compute_layout({}, 0, 4, p, t);
  EXPECT_EQ(empty.rank_prefix.back(), 0);
  std::vector<int32_t> unused(3 * 4, -1);
  const DispatchLayout none = compute_layout(unused, 3, 4, p, t);
  for (int r = 0; r < 4; ++r) EXPECT_EQ(none.tokens_per_rank[r], 0);
}

TEST(Layout, SlotOutsidePlacementIsAnError) {
  const Topology t = topo(1, 2);
  const Placement p = Placement::contiguous(4, 2);
  EXPECT_THROW(compute_layout({0, 9}, 1, 2, p, t), EplabError);
}

TEST(Placement, ContiguousWithRedundantSlots) {
  const Placement p = Placement::contiguous(8, 4, 4);
  EXPECT_EQ(p.slots_per_rank(), 3);
  EXPECT_EQ(p.num_slots(), 12);
  EXPECT_EQ(p.replicas(0).size(), 2u);
  EXPECT_EQ(p.replicas(7).size(), 1u);
  EXPECT_THROW(Placement::contiguous(8, 3), EplabError);
  EXPECT_THROW(Placement::contiguous(8, 4, 3), EplabError);
}

// The selector's table path (no expert has replicas) against the replica lists it stands for, and the general
// path once one expert has a second slot.
TEST(Placement, RoundRobinSelectionWithAndWithoutReplicas) {
  RoutingBatch b;
  b.num_tokens = 3;
  b.topk = 2;
  b.topk_idx = {5, 0, -1, 7, 3, 5};
  b.topk_weights.assign(6, 0.5f);
  RoundRobinSelector sel;
  std::vector<int32_t> slots;
  const Placement sole(8, 2, {5, 6, 7, 0, 1, 2, 3, 4});
  EXPECT_TRUE(sole.all_sole());
  sel.select(b, sole, topo(1, 2), slots);
  EXPECT_EQ(slots, (std::vector<int32_t>{0, 3, -1, 2, 6, 0}));
  const Placement twice(8, 2, {5, 6, 7, 0, 1, 2, 3, 4, 5, 0});  // expert 5 in slots 0 and 8, expert 0 in 3 and 9
  EXPECT_FALSE(twice.all_sole());
  EXPECT_EQ(twice.sole_slots()[5], Placement::kManyReplicas);
  EXPECT_EQ(twice.sole_slots()[-1], -1);
  sel.select(b, twice, topo(1, 2), slots);
  // Replica (t + k) mod 2: token 0 takes expert 5's first slot and expert 0's second; token 2 expert 5's second.
  EXPECT_EQ(slots, (std::vector<int32_t>{0, 9, -1, 2, 6, 8}));
}

TEST(Routing, ValidateBatchNamesTheBadEntry) {
  RoutingBatch b;
  b.num_tokens = 2;
  b.topk = 2;
  b.topk_idx = {0, 1, -1, 3};
  b.topk_weights = {0.5f, 0.5f, 1.0f, 0.0f};
  EXPECT_NO_THROW(validate_batch(b, 4, "test"));
  b.topk_idx[3] = 4;
  EXPECT_THROW(validate_batch(b, 4, "test"), EplabError);
  b.topk_idx[3] = -2;
  EXPECT_THROW(validate_batch(b, 4, "test"), EplabError);
  b.topk_idx[3] = 3;
  b.topk_weights[1] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(validate_batch(b, 4, "test"), EplabError);
  b.topk_weights[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(validate_batch(b, 4, "test"), EplabError);
  b.topk_weights[1] = -std::numeric_limits<float>::max();
  EXPECT_NO_THROW(validate_batch(b, 4, "test"));
}

}  // namespace
}  // namespace eplab
