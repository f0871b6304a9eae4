// Replica selectors' choices on a hand-made placement, and the registry's errors.
#include <gtest/gtest.h>

#include "engine/error.hpp"
#include "policies/replica/replica_selector.hpp"

namespace eplab {
namespace {

// 2 nodes x 2 GPUs: rank 0 (node 0, rail 0), 1 (node 0, rail 1), 2 (node 1, rail 0), 3 (node 1, rail 1).
Topology cluster() {
  ClusterSpec c;
  c.name = "test";
  c.nodes = 2;
  c.gpus_per_node = 2;
  return Topology(c);
}

// Slots (2 per rank): r0 {0, 1}, r1 {0, 2}, r2 {2, 3}, r3 {3, 1}. Expert 0 lives in node 0 only (slots 0, 2).
Placement placement() { return Placement(4, 4, {0, 1, 0, 2, 2, 3, 3, 1}); }

RoutingBatch batch(int src, std::vector<int32_t> ids) {
  RoutingBatch b;
  b.src_rank = src;
  b.num_tokens = static_cast<int>(ids.size());
  b.topk = 1;
  b.topk_idx = std::move(ids);
  b.topk_weights.assign(b.topk_idx.size(), 1.0f);
  return b;
}

std::vector<int32_t> pick(const std::string& name, const RoutingBatch& b) {
  std::vector<int32_t> slots;
  create_replica_selector(name)->select(b, placement(), cluster(), slots);
  return slots;
}

TEST(TopologyAware, PrefersSelfThenNodeThenRail) {
  EXPECT_EQ(pick("topology-aware", batch(1, {0})), (std::vector<int32_t>{2}));          // self
  EXPECT_EQ(pick("topology-aware", batch(2, {1})), (std::vector<int32_t>{7}));          // same node (rank 3)
  EXPECT_EQ(pick("topology-aware", batch(3, {0})), (std::vector<int32_t>{2}));          // rail 1: rank 1, not rank 0
  EXPECT_EQ(pick("topology-aware", batch(2, {0})), (std::vector<int32_t>{0}));          // rail 0: rank 0
  EXPECT_EQ(pick("topology-aware", batch(0, {3, -1})), (std::vector<int32_t>{5, -1}));  // rank 2 on rail 0
}

TEST(TopologyAware, CostMatrixOverridesAndTiesRoundRobin) {
  // Flat costs: every replica ties, so tokens alternate over the replicas in slot order.
  TopologyAwareSelector flat(4, std::vector<double>(16, 1.0));
  std::vector<int32_t> slots;
  flat.select(batch(3, {0, 0, 0}), placement(), cluster(), slots);
  EXPECT_EQ(slots, (std::vector<int32_t>{0, 2, 0}));
  // A measured matrix that makes rank 0 cheap from rank 3 wins over the topology's rail preference.
  std::vector<double> cost(16, 5.0);
  cost[3 * 4 + 0] = 1.0;
  TopologyAwareSelector measured(4, cost);
  measured.select(batch(3, {0}), placement(), cluster(), slots);
  EXPECT_EQ(slots, (std::vector<int32_t>{0}));
  EXPECT_THROW(TopologyAwareSelector(4, std::vector<double>(15, 1.0)), EplabError);
}

TEST(LeastLoaded, FewestAssignedRankInThisBatch) {
  // Expert 1: ranks 0 and 3 both empty -> lower slot (1, rank 0). Expert 0: rank 0 has one, rank 1 none -> slot
  // 2. Expert 0 again: both have one -> slot 0. Expert 2: rank 1 has one, rank 2 none -> slot 4.
  EXPECT_EQ(pick("least-loaded", batch(0, {1, 0, 0, 2})), (std::vector<int32_t>{1, 2, 0, 4}));
}

TEST(RoundRobin, ThroughRegistry) {
  EXPECT_EQ(pick("round-robin", batch(0, {0, 0, 0})), (std::vector<int32_t>{0, 2, 0}));
  EXPECT_EQ(create_replica_selector("round-robin")->name(), "round-robin");
}

TEST(RankLoad, CountsSelectionsPerRank) {
  auto sel = create_replica_selector("topology-aware");
  std::vector<double> per_rank;
  add_rank_load(batch(1, {0, 0, 3, 1}), placement(), cluster(), *sel, per_rank);
  // 0 -> self twice; 3 -> rank 3 (rail 1) ; 1 -> rank 0 (same node).
  EXPECT_EQ(per_rank, (std::vector<double>{1, 2, 0, 1}));
}

TEST(ReplicaRegistry, UnknownNameListsKnown) {
  try {
    create_replica_selector("random");
    FAIL() << "expected an error";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("random"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("topology-aware"), std::string::npos);
  }
}

}  // namespace
}  // namespace eplab
