// EPLB building blocks on hand examples, packing and placement invariants, the none and migration-aware
// balancers' decisions, and the registry's errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "engine/error.hpp"
#include "policies/balance/balancer.hpp"

namespace eplab {
namespace {

Topology cluster(int nodes, int gpus) {
  ClusterSpec c;
  c.name = "test";
  c.nodes = nodes;
  c.gpus_per_node = gpus;
  return Topology(c);
}

MoeShape shape(int experts) {
  MoeShape s;
  s.name = "test";
  s.num_experts = experts;
  return s;
}

// Zipf-like heat over a fixed shuffled order, so the hottest experts are not simply the low ids.
std::vector<double> skewed_heat(int experts, double s) {
  std::vector<double> h(experts);
  for (int e = 0; e < experts; ++e) h[(e * 37 + 11) % experts] = 1000.0 * std::pow(e + 1.0, -s);
  return h;
}

TEST(BalancedPacking, HandExample) {
  // 9->A, 7->B, 6->B (A 9 < B 13? no: B 7 < A 9), 5->A, 4->B, 3->A: {9,5,3} and {7,6,4}, both 17.
  const Packing p = balanced_packing({9, 7, 6, 5, 4, 3}, 2);
  EXPECT_EQ(p.pack, (std::vector<int>{0, 1, 1, 0, 1, 0}));
  EXPECT_EQ(p.rank_in_pack, (std::vector<int>{0, 0, 1, 1, 2, 2}));
}

TEST(BalancedPacking, EqualCountsAndBound) {
  // A heavy item fills its pack's weight but not its count: the others still get their equal share of items.
  const std::vector<double> w = {100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  const Packing p = balanced_packing(w, 3);
  std::vector<int> count(3, 0);
  std::vector<double> load(3, 0);
  for (size_t i = 0; i < w.size(); ++i) ++count[p.pack[i]], load[p.pack[i]] += w[i];
  EXPECT_EQ(count, (std::vector<int>{4, 4, 4}));
  EXPECT_DOUBLE_EQ(*std::max_element(load.begin(), load.end()), 103);  // the heavy item plus three light ones
  // On a skewed but packable input the spread stays within the largest item.
  const std::vector<double> v = skewed_heat(64, 0.8);
  const Packing q = balanced_packing(v, 8);
  std::vector<double> l(8, 0);
  for (size_t i = 0; i < v.size(); ++i) l[q.pack[i]] += v[i];
  EXPECT_LE(*std::max_element(l.begin(), l.end()) - *std::min_element(l.begin(), l.end()),
            *std::max_element(v.begin(), v.end()));
  EXPECT_THROW(balanced_packing({1, 2, 3}, 2), EplabError);
}

TEST(ReplicateExperts, LargestLoadPerReplica) {
  // 10/1 > 4 -> expert 0 gets a second replica; 10/2 = 5 > 4 -> and a third.
  const Replication r = replicate_experts({10, 4, 2}, 5);
  EXPECT_EQ(r.phy_to_log, (std::vector<int>{0, 1, 2, 0, 0}));
  EXPECT_EQ(r.count, (std::vector<int>{3, 1, 1}));
  EXPECT_THROW(replicate_experts({1, 2, 3}, 2), EplabError);
}

// Found by tests/python/test_buffers.py (a zero-size load array from Python): extra slots for no experts read the
// empty load vector at expert 0, a segfault, before this was refused.
TEST(ReplicateExperts, NoExpertsIsAnErrorOrNothing) {
  EXPECT_THROW(replicate_experts({}, 4), EplabError);
  EXPECT_TRUE(replicate_experts({}, 0).phy_to_log.empty());
}

class EplbInvariants : public ::testing::TestWithParam<bool> {};

TEST_P(EplbInvariants, ReplicasSlotsHottestAndBalance) {
  const bool hier = GetParam();
  const int experts = 256, nodes = 8, gpus = 8, redundant = 64;
  const std::vector<double> heat = skewed_heat(experts, 1.0);
  // Placement's constructor rejects an expert without a slot, so building it checks ">= 1 replica".
  const Placement p(experts, nodes * gpus, eplb_slots(heat, nodes, gpus, redundant, experts, hier));
  EXPECT_EQ(p.slots_per_rank(), 5);
  EXPECT_EQ(p.num_slots(), experts + redundant);
  const int hottest = static_cast<int>(std::max_element(heat.begin(), heat.end()) - heat.begin());
  size_t most = 0;
  for (int e = 0; e < experts; ++e) most = std::max(most, p.replicas(e).size());
  EXPECT_EQ(p.replicas(hottest).size(), most);
  EXPECT_GT(most, 1u);
  const Placement none = Placement::contiguous(experts, nodes * gpus, redundant);
  EXPECT_LT(max_over_mean(rank_load(p, heat)), max_over_mean(rank_load(none, heat)));
  if (hier) {  // every replica of an expert stays in the node its group went to
    for (int e = 0; e < experts; ++e) {
      std::set<int> ns;
      for (int s : p.replicas(e)) ns.insert(p.rank_of_slot(s) / gpus);
      EXPECT_EQ(ns.size(), 1u) << "expert " << e;
    }
  }
}
INSTANTIATE_TEST_SUITE_P(Modes, EplbInvariants, ::testing::Values(false, true),
                         [](const auto& i) { return i.param ? "hierarchical" : "global"; });

TEST(Eplb, GlobalSmallHandExample) {
  // 4 experts, 2 GPUs, 2 redundant. Replicas: expert 0 (8/1 is largest), then a tie 8/2 = 4/1 goes to the
  // lower id, expert 0 again. Per replica 4 | 8/3 x3 | 1 | 1 packs as {4, 8/3, 1} and {8/3, 8/3, 1}.
  const std::vector<double> heat = {8, 4, 1, 1};
  const Placement p(4, 2, eplb_slots(heat, 1, 2, 2, 1, false));
  EXPECT_EQ(p.replicas(0).size(), 3u);
  EXPECT_EQ(p.replicas(1).size(), 1u);
  EXPECT_NEAR(max_over_mean(rank_load(p, heat)), (4 + 8.0 / 3 + 1) / 7, 1e-12);
}

TEST(Eplb, RejectsShapesThatDoNotDivide) {
  EXPECT_THROW(eplb_slots(std::vector<double>(10, 1), 1, 4, 0, 1, false), EplabError);
  EXPECT_THROW(eplb_slots(std::vector<double>(16, 1), 3, 2, 2, 16, true), EplabError);
}

TEST(Balancer, NoneIsContiguous) {
  BalanceInput in;
  in.heat = skewed_heat(16, 1);
  in.topology = cluster(2, 2);
  in.shape = shape(16);
  in.redundant = 4;
  const BalanceResult r = create_balancer("none")->balance(in);
  EXPECT_EQ(r.placement.slot_expert(), Placement::contiguous(16, 4, 4).slot_expert());
}

TEST(Balancer, AlignKeepsPermutedRanksInPlace) {
  const Placement cur = Placement::contiguous(8, 4, 4);
  std::vector<int32_t> perm;  // the same rank contents, ranks reversed and slots rotated
  for (int r = 3; r >= 0; --r)
    for (int i = 0; i < 3; ++i) perm.push_back(cur.expert_of_slot(r * 3 + (i + 1) % 3));
  const Placement aligned = align_placement(cur, Placement(8, 4, perm));
  EXPECT_EQ(slots_changed(cur, aligned), 0);
}

BalanceInput skewed_input(const Placement& current) {
  BalanceInput in;
  in.heat = skewed_heat(64, 1.2);
  in.topology = cluster(2, 4);
  in.shape = shape(64);
  in.redundant = 8;
  in.current = &current;
  return in;
}

TEST(MigrationAware, KeepsWhenGainBelowCost) {
  const Placement cur = Placement::contiguous(64, 8, 8);
  // One token costs 1 ps: no skew is worth moving ~44 MB of weights for.
  const BalanceResult r = create_balancer("migration-aware:horizon=1,token_us=1e-6")->balance(skewed_input(cur));
  EXPECT_FALSE(r.rebalanced);
  EXPECT_EQ(r.slots_moved, 0);
  EXPECT_EQ(r.migration_bytes, 0);
  EXPECT_EQ(r.placement.slot_expert(), cur.slot_expert());
  EXPECT_GT(r.predicted_gain_s, 0);
}

TEST(MigrationAware, MovesOnlyChangedSlotsWhenGainAboveCost) {
  const Placement cur = Placement::contiguous(64, 8, 8);
  const BalanceInput in = skewed_input(cur);
  const BalanceResult r = create_balancer("migration-aware:horizon=1000,token_us=10")->balance(in);
  EXPECT_TRUE(r.rebalanced);
  EXPECT_GT(r.slots_moved, 0);
  EXPECT_EQ(r.slots_moved, slots_changed(cur, r.placement));
  EXPECT_LT(r.slots_moved, r.placement.num_slots());  // aligned: slots that keep their expert stay
  EXPECT_DOUBLE_EQ(r.migration_bytes, r.slots_moved * expert_weight_bytes(in.shape, 1));
  EXPECT_GT(r.migration_s, 0);
  EXPECT_LT(max_over_mean(rank_load(r.placement, in.heat)), max_over_mean(rank_load(cur, in.heat)));
  // Rebalancing again on the same heat gains nothing, so nothing moves.
  BalanceInput again = in;
  again.current = &r.placement;
  const BalanceResult r2 = create_balancer("migration-aware:horizon=1000,token_us=10")->balance(again);
  EXPECT_FALSE(r2.rebalanced);
  EXPECT_EQ(r2.migration_bytes, 0);
}

// DeepSeek's published worked example (EPLB README): 2 layers of 12 experts, 16 replicas, 4 groups, 2 nodes,
// 8 GPUs.
TEST(RebalanceExperts, DeepSeekWorkedExample) {
  const std::vector<double> weight = {90, 132, 40,  61, 104, 165, 39,  4,   73,  56, 183, 86,
                                      20, 107, 104, 64, 19,  197, 187, 157, 172, 86, 16,  27};
  const EplbTables t = rebalance_experts(weight, 2, 16, 4, 2, 8);
  EXPECT_EQ(t.phy2log, (std::vector<int64_t>{5, 6,  5, 7, 8, 4,  3, 4, 10, 9, 10, 2, 0, 1, 11, 1,
                                             7, 10, 6, 8, 6, 11, 8, 9, 2,  4, 5,  1, 5, 0, 3,  1}));
  ASSERT_EQ(t.max_replicas, 2);
  ASSERT_EQ(t.log2phy.size(), 2u * 12 * 2);
  for (int l = 0; l < 2; ++l) {
    int total = 0;
    for (int e = 0; e < 12; ++e) {
      const int cnt = static_cast<int>(t.logcnt[l * 12 + e]);
      total += cnt;
      for (int k = 0; k < 2; ++k) {
        const int64_t p = t.log2phy[(l * 12 + e) * 2 + k];
        if (k < cnt)
          EXPECT_EQ(t.phy2log[l * 16 + p], e) << "layer " << l << " expert " << e;
        else
          EXPECT_EQ(p, -1);
      }
    }
    EXPECT_EQ(total, 16);
  }
  // Layer 0: expert 5 (165) and 10 (183) got the second replicas on node 0, then 4 (104) and 1 (132) on node 1.
  EXPECT_EQ(t.logcnt[5], 2);
  EXPECT_EQ(t.logcnt[0], 1);
}

TEST(RebalanceExperts, GlobalWhenGroupsDoNotDivideOverNodes) {
  std::vector<double> w(12);
  for (int e = 0; e < 12; ++e) w[e] = (e * 7 % 12) + 1.0;
  const EplbTables t = rebalance_experts(w, 1, 16, 3, 2, 8);  // 3 groups over 2 nodes: global
  const EplbLayout g = eplb_hierarchical(w, 16, 1, 1, 8);
  EXPECT_EQ(t.phy2log, std::vector<int64_t>(g.phy2log.begin(), g.phy2log.end()));
  // Any expert count: 10 experts on 4 GPUs of 3 slots each.
  const EplbTables u = rebalance_experts(std::vector<double>(w.begin(), w.begin() + 10), 1, 12, 1, 1, 4);
  EXPECT_EQ(u.phy2log.size(), 12u);
}

TEST(RebalanceExperts, RejectsBadShapesAndLoads) {
  const std::vector<double> w(12, 1.0);
  auto message = [&](std::vector<double> v, int replicas, int groups, int nodes, int gpus) {
    try {
      rebalance_experts(v, 1, replicas, groups, nodes, gpus);
    } catch (const EplabError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(w, 18, 4, 2, 8).find("replicas do not divide evenly over the GPUs"), std::string::npos);
  EXPECT_NE(message(w, 16, 5, 1, 8).find("do not divide into 5 groups"), std::string::npos);
  EXPECT_NE(message(w, 8, 4, 2, 8).find("fewer replicas than experts"), std::string::npos);
  EXPECT_NE(message(w, 16, 4, 2, 5).find("replicas do not divide"), std::string::npos);
  EXPECT_NE(message(w, 18, 4, 4, 6).find("GPUs do not divide evenly over the nodes"), std::string::npos);
  std::vector<double> bad = w;
  bad[3] = -1;
  EXPECT_NE(message(bad, 16, 4, 2, 8).find("weight[0][3]"), std::string::npos);
  bad[3] = std::nan("");
  EXPECT_NE(message(bad, 16, 4, 2, 8).find("finite"), std::string::npos);
  bad[3] = INFINITY;
  EXPECT_NE(message(bad, 16, 4, 2, 8).find("finite"), std::string::npos);
  EXPECT_THROW(rebalance_experts(w, 5, 16, 4, 2, 8), EplabError);  // 12 values are not 5 layers
}

TEST(BalancedPacking, OnePerPackKeepsInputOrder) {
  const Packing p = balanced_packing({1, 5, 3}, 3);
  EXPECT_EQ(p.pack, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(p.rank_in_pack, (std::vector<int>{0, 0, 0}));
}

// DeepSeek-V3's shape: 256 experts in 8 groups.
MoeShape grouped_shape() {
  MoeShape s = shape(256);
  s.num_expert_groups = 8;
  return s;
}

// Every replica of every expert of a group sits on one node.
void expect_groups_whole(const Placement& p, int group_size, int gpus, const std::string& what) {
  for (int g = 0; g < p.num_experts() / group_size; ++g) {
    std::set<int> ns;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e)
      for (int s : p.replicas(e)) ns.insert(p.rank_of_slot(s) / gpus);
    EXPECT_EQ(ns.size(), 1u) << what << ": group " << g << " spans " << ns.size() << " nodes";
  }
}

TEST(Balancer, AutoModeFollowsTheModelsGroups) {
  BalanceInput in;
  in.heat = skewed_heat(256, 1.2);
  in.topology = cluster(4, 8);
  in.shape = grouped_shape();
  in.redundant = 32;
  const Placement auto_p = create_balancer("eplb")->balance(in).placement;
  EXPECT_EQ(auto_p.slot_expert(),
            create_balancer("eplb:mode=hierarchical,groups=8")->balance(in).placement.slot_expert());
  expect_groups_whole(auto_p, 32, 8, "eplb on 4 nodes");
  // 8 groups do not divide over 16 nodes, and a model without groups has one: global.
  in.topology = cluster(16, 2);
  EXPECT_EQ(create_balancer("eplb")->balance(in).placement.slot_expert(),
            create_balancer("eplb:mode=global")->balance(in).placement.slot_expert());
  in.topology = cluster(4, 8);
  in.shape.num_expert_groups = 1;
  EXPECT_EQ(create_balancer("eplb")->balance(in).placement.slot_expert(),
            create_balancer("eplb:mode=global")->balance(in).placement.slot_expert());
}

// Re-planning from the current placement used to relabel ranks across nodes while aligning, splitting groups.
TEST(Balancer, RebalanceKeepsHierarchicalGroupsOnOneNode) {
  for (const std::string spec :
       {"eplb:groups=8", "eplb:mode=hierarchical", "migration-aware:groups=8,horizon=1e6,token_us=10"}) {
    for (uint32_t seed = 1; seed <= 8; ++seed) {
      BalanceInput in;
      in.topology = cluster(4, 8);
      in.shape = grouped_shape();
      in.redundant = 32;  // 288 slots
      in.heat = skewed_heat(256, 1.0);
      uint32_t x = seed * 2654435761u;
      auto uniform = [&] {  // xorshift in [0, 1)
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        return (x >> 8) / 16777216.0;
      };
      for (double& h : in.heat) h *= 0.5 + uniform();
      auto balancer = create_balancer(spec);
      const Placement first = balancer->balance(in).placement;
      expect_groups_whole(first, 32, 8, spec + " initial, seed " + std::to_string(seed));
      for (double& h : in.heat) h *= 0.8 + 0.4 * uniform();  // loads drift by up to 20%
      in.current = &first;
      const BalanceResult again = balancer->balance(in);
      EXPECT_TRUE(again.rebalanced) << spec;
      expect_groups_whole(again.placement, 32, 8, spec + " rebalanced, seed " + std::to_string(seed));
    }
  }
}

TEST(Balancer, MoreRanksThanExpertsWithRedundantSlots) {
  // DeepSeek-V3 on 128 x 8 GPUs with 768 redundant experts: one slot per rank, every rank holds an expert.
  BalanceInput in;
  in.heat = skewed_heat(256, 1.2);
  in.topology = cluster(128, 8);
  in.shape = grouped_shape();
  in.redundant = 768;
  for (const std::string spec : {"none", "eplb", "eplb:mode=global"}) {
    const Placement p = create_balancer(spec)->balance(in).placement;
    EXPECT_EQ(p.num_ranks(), 1024) << spec;
    EXPECT_EQ(p.slots_per_rank(), 1) << spec;
  }
  const Placement c = Placement::contiguous(256, 1024, 768);
  EXPECT_EQ(c.expert_of_slot(255), 255);
  EXPECT_EQ(c.expert_of_slot(256), 0);
  EXPECT_THROW(Placement::contiguous(256, 1024, 700), EplabError);
}

TEST(BalancerRegistry, UnknownNameAndBadParameters) {
  try {
    create_balancer("greedy");
    FAIL() << "expected an error";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("greedy"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("migration-aware"), std::string::npos);
  }
  EXPECT_THROW(create_balancer("eplb:mode=diagonal"), EplabError);
  EXPECT_THROW(create_balancer("eplb:horizon=3"), EplabError);
  EXPECT_THROW(create_balancer("migration-aware:horizon=0"), EplabError);
  BalanceInput in;
  in.heat = {1, 2};
  in.topology = cluster(1, 2);
  in.shape = shape(4);
  EXPECT_THROW(create_balancer("eplb")->balance(in), EplabError);  // heat for 2 experts, model has 4
}

}  // namespace
}  // namespace eplab
