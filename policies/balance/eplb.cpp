// EPLB (DeepSeek's expert-parallel load balancer), written from its published description: replicate the
// expert with the largest load per replica, then balanced packing, hierarchically (groups to nodes, replicas
// within nodes, physical experts to GPUs) or globally. Plus the placement helpers the balancers share.
#include <algorithm>
#include <numeric>

#include "engine/error.hpp"
#include "policies/balance/balancer.hpp"

namespace eplab {

Packing balanced_packing(const std::vector<double>& weight, int num_packs) {
  const int n = static_cast<int>(weight.size());
  if (num_packs < 1 || n % num_packs != 0)
    throw EplabError("balanced packing: " + std::to_string(n) + " items do not divide into " +
                     std::to_string(num_packs) + " packs of equal count");
  const int cap = n / num_packs;
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return weight[a] > weight[b]; });
  Packing p{std::vector<int>(n), std::vector<int>(n)};
  std::vector<double> load(num_packs, 0.0);
  std::vector<int> count(num_packs, 0);
  for (int i : order) {
    int best = -1;
    for (int k = 0; k < num_packs; ++k)
      if (count[k] < cap && (best < 0 || load[k] < load[best])) best = k;
    p.pack[i] = best;
    p.rank_in_pack[i] = count[best]++;
    load[best] += weight[i];
  }
  return p;
}

Replication replicate_experts(const std::vector<double>& weight, int num_phy) {
  const int n = static_cast<int>(weight.size());
  if (num_phy < n)
    throw EplabError("replicate experts: " + std::to_string(num_phy) + " physical slots for " + std::to_string(n) +
                     " experts; every expert needs one");
  Replication r{std::vector<int>(num_phy), std::vector<int>(n, 1)};
  std::iota(r.phy_to_log.begin(), r.phy_to_log.begin() + n, 0);
  for (int p = n; p < num_phy; ++p) {
    int best = 0;
    for (int e = 1; e < n; ++e)
      if (weight[e] / r.count[e] > weight[best] / r.count[best]) best = e;
    r.phy_to_log[p] = best;
    ++r.count[best];
  }
  return r;
}

std::vector<int32_t> eplb_slots(const std::vector<double>& heat_in, int nodes, int gpus_per_node, int redundant,
                                int groups, bool hierarchical) {
  const int experts = static_cast<int>(heat_in.size());
  if (!hierarchical) {  // global: one node holding every GPU, one group
    gpus_per_node *= nodes;
    nodes = 1;
    groups = 1;
  }
  const int ranks = nodes * gpus_per_node;
  const int total = experts + redundant;
  auto fail = [&](const std::string& why) {
    throw EplabError("eplb (" + std::string(hierarchical ? "hierarchical" : "global") + ", " + std::to_string(experts) +
                     " experts, " + std::to_string(redundant) + " redundant, " + std::to_string(nodes) + " nodes x " +
                     std::to_string(gpus_per_node) + " GPUs, " + std::to_string(groups) + " groups): " + why);
  };
  if (redundant < 0 || total % ranks != 0) fail("slots must divide evenly over the GPUs");
  if (groups < 1 || experts % groups != 0) fail("experts must divide into equal groups");
  if (groups % nodes != 0) fail("groups must divide evenly over nodes (use mode=global)");
  if (total % nodes != 0 || experts % nodes != 0) fail("experts and slots must divide evenly over nodes");
  // With no forecast at all, spread replicas evenly rather than stacking them all on expert 0.
  std::vector<double> heat = heat_in;
  if (std::accumulate(heat.begin(), heat.end(), 0.0) <= 0) std::fill(heat.begin(), heat.end(), 1.0);

  // Step 1: expert groups onto nodes. mlog ("node-major logical") numbers experts so node n owns
  // mlog [n * per_node, (n + 1) * per_node).
  const int group_size = experts / groups, groups_per_node = groups / nodes, per_node = experts / nodes;
  std::vector<double> group_w(groups, 0.0);
  for (int e = 0; e < experts; ++e) group_w[e / group_size] += heat[e];
  const Packing gp = balanced_packing(group_w, nodes);
  std::vector<int> mlog_to_log(experts);
  for (int e = 0; e < experts; ++e) {
    const int g = e / group_size;
    mlog_to_log[(gp.pack[g] * groups_per_node + gp.rank_in_pack[g]) * group_size + e % group_size] = e;
  }
  // Steps 2 and 3 per node: replicas within the node, then physical experts onto its GPUs.
  const int phy_per_node = total / nodes, per_gpu = total / ranks;
  std::vector<int32_t> slots(total, -1);
  for (int n = 0; n < nodes; ++n) {
    std::vector<double> w(per_node);
    for (int i = 0; i < per_node; ++i) w[i] = heat[mlog_to_log[n * per_node + i]];
    const Replication rep = replicate_experts(w, phy_per_node);
    std::vector<double> phy_w(phy_per_node);
    for (int p = 0; p < phy_per_node; ++p) phy_w[p] = w[rep.phy_to_log[p]] / rep.count[rep.phy_to_log[p]];
    const Packing pk = balanced_packing(phy_w, gpus_per_node);
    for (int p = 0; p < phy_per_node; ++p) {
      const int slot = (n * gpus_per_node + pk.pack[p]) * per_gpu + pk.rank_in_pack[p];
      slots[slot] = mlog_to_log[n * per_node + rep.phy_to_log[p]];
    }
  }
  return slots;
}

std::vector<double> rank_load(const Placement& placement, const std::vector<double>& heat) {
  if (static_cast<int>(heat.size()) != placement.num_experts())
    throw EplabError("rank load: heat has " + std::to_string(heat.size()) + " experts, the placement " +
                     std::to_string(placement.num_experts()));
  std::vector<double> r(placement.num_ranks(), 0.0);
  for (int s = 0; s < placement.num_slots(); ++s) {
    const int e = placement.expert_of_slot(s);
    r[placement.rank_of_slot(s)] += heat[e] / static_cast<double>(placement.replicas(e).size());
  }
  return r;
}

double max_over_mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  return mean > 0 ? *std::max_element(v.begin(), v.end()) / mean : 0;
}

double expert_weight_bytes(const MoeShape& shape, double bytes_per_param) {
  return 3.0 * shape.hidden * shape.expert_ffn * bytes_per_param;
}

int slots_changed(const Placement& a, const Placement& b) {
  if (a.num_slots() != b.num_slots()) return b.num_slots();
  int n = 0;
  for (int s = 0; s < a.num_slots(); ++s) n += a.expert_of_slot(s) != b.expert_of_slot(s);
  return n;
}

Placement align_placement(const Placement& current, const Placement& candidate) {
  const int ranks = candidate.num_ranks(), per = candidate.slots_per_rank(), experts = candidate.num_experts();
  if (current.num_ranks() != ranks || current.slots_per_rank() != per || current.num_experts() != experts)
    return candidate;  // shapes differ: everything moves anyway
  auto multiset = [&](const Placement& p, int r) {
    std::vector<int> c(experts, 0);
    for (int i = 0; i < per; ++i) ++c[p.expert_of_slot(r * per + i)];
    return c;
  };
  std::vector<std::vector<int>> cur(ranks), cand(ranks);
  for (int r = 0; r < ranks; ++r) cur[r] = multiset(current, r), cand[r] = multiset(candidate, r);
  // overlap[a][b]: experts candidate rank a shares with current rank b.
  std::vector<std::vector<int>> overlap(ranks, std::vector<int>(ranks, 0));
  for (int a = 0; a < ranks; ++a)
    for (int i = 0; i < per; ++i) {
      const int e = candidate.expert_of_slot(a * per + i);
      if (i > 0 && std::find(candidate.slot_expert().begin() + a * per, candidate.slot_expert().begin() + a * per + i,
                             e) != candidate.slot_expert().begin() + a * per + i)
        continue;  // count each distinct expert once
      for (int b = 0; b < ranks; ++b) overlap[a][b] += std::min(cand[a][e], cur[b][e]);
    }
  // Greedy assignment, largest overlap first (ties: lowest ids), so ranks that barely change stay put.
  std::vector<int> target(ranks, -1);
  std::vector<char> taken(ranks, 0);
  for (int round = 0; round < ranks; ++round) {
    int ba = -1, bb = -1, bv = -1;
    for (int a = 0; a < ranks; ++a) {
      if (target[a] >= 0) continue;
      for (int b = 0; b < ranks; ++b)
        if (!taken[b] && overlap[a][b] > bv) ba = a, bb = b, bv = overlap[a][b];
    }
    target[ba] = bb;
    taken[bb] = 1;
  }
  std::vector<int32_t> slots(candidate.num_slots(), -1);
  for (int a = 0; a < ranks; ++a) {
    const int b = target[a];
    std::vector<int> want = cand[a];
    for (int i = 0; i < per; ++i) {  // keep what already sits in place
      const int e = current.expert_of_slot(b * per + i);
      if (want[e] > 0) slots[b * per + i] = e, --want[e];
    }
    int e = 0;
    for (int i = 0; i < per; ++i) {
      if (slots[b * per + i] >= 0) continue;
      while (want[e] == 0) ++e;
      slots[b * per + i] = e;
      --want[e];
    }
  }
  return Placement(experts, ranks, std::move(slots));
}

}  // namespace eplab
