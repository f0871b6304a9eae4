// EPLB (DeepSeek's expert-parallel load balancer), written from its published description: replicate the
// expert with the largest load per replica, then balanced packing, hierarchically (groups to nodes, replicas
// within nodes, physical experts to GPUs) or globally. Plus the placement helpers the balancers share.
#include <algorithm>
#include <cmath>
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
  Packing p{std::vector<int>(n), std::vector<int>(n, 0)};
  if (cap == 1) {  // DeepSeek keeps the input order here rather than sorting
    std::iota(p.pack.begin(), p.pack.end(), 0);
    return p;
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return weight[a] > weight[b]; });
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
  if (n == 0 && num_phy > 0)
    throw EplabError("replicate experts: " + std::to_string(num_phy) + " physical slots for 0 experts: nothing to replicate");
  Replication r{std::vector<int>(num_phy), std::vector<int>(num_phy, 0), std::vector<int>(n, 1)};
  std::iota(r.phy_to_log.begin(), r.phy_to_log.begin() + n, 0);
  for (int p = n; p < num_phy; ++p) {
    int best = 0;
    for (int e = 1; e < n; ++e)
      if (weight[e] / r.count[e] > weight[best] / r.count[best]) best = e;
    r.phy_to_log[p] = best;
    r.replica[p] = r.count[best]++;
  }
  return r;
}

EplbLayout eplb_hierarchical(const std::vector<double>& weight, int num_replicas, int num_groups, int num_nodes,
                             int num_gpus) {
  const int experts = static_cast<int>(weight.size());
  auto fail = [&](const std::string& why) {
    throw EplabError("eplb: " + std::to_string(experts) + " experts, " + std::to_string(num_replicas) + " replicas, " +
                     std::to_string(num_groups) + " groups, " + std::to_string(num_nodes) + " nodes, " +
                     std::to_string(num_gpus) + " GPUs: " + why);
  };
  if (experts < 1) fail("expected at least one expert");
  if (num_groups < 1 || num_nodes < 1 || num_gpus < 1) fail("groups, nodes and GPUs must be >= 1");
  if (num_replicas < experts) fail("fewer replicas than experts; every expert needs one");
  if (num_replicas % num_gpus != 0) fail("the replicas do not divide evenly over the GPUs");
  if (experts % num_groups != 0) fail("the experts do not divide into equal groups");
  if (num_groups % num_nodes != 0) fail("the groups do not divide evenly over the nodes (use the global policy)");
  if (num_gpus % num_nodes != 0) fail("the GPUs do not divide evenly over the nodes");

  // Step 1: expert groups onto nodes. mlog ("node-major logical") numbers experts so node n owns
  // mlog [n * per_node, (n + 1) * per_node).
  const int group_size = experts / num_groups, groups_per_node = num_groups / num_nodes;
  const int per_node = experts / num_nodes, gpus_per_node = num_gpus / num_nodes;
  std::vector<double> group_w(num_groups, 0.0);
  for (int e = 0; e < experts; ++e) group_w[e / group_size] += weight[e];
  const Packing gp = balanced_packing(group_w, num_nodes);
  std::vector<int> mlog_to_log(experts);
  for (int e = 0; e < experts; ++e) {
    const int g = e / group_size;
    mlog_to_log[(gp.pack[g] * groups_per_node + gp.rank_in_pack[g]) * group_size + e % group_size] = e;
  }
  // Steps 2 and 3 per node: replicas within the node, then physical experts onto its GPUs by their load per
  // replica.
  const int phy_per_node = num_replicas / num_nodes, per_gpu = num_replicas / num_gpus;
  EplbLayout out{std::vector<int>(num_replicas, -1), std::vector<int>(num_replicas, 0), std::vector<int>(experts, 0)};
  for (int n = 0; n < num_nodes; ++n) {
    std::vector<double> w(per_node);
    for (int i = 0; i < per_node; ++i) w[i] = weight[mlog_to_log[n * per_node + i]];
    const Replication rep = replicate_experts(w, phy_per_node);
    std::vector<double> phy_w(phy_per_node);
    for (int p = 0; p < phy_per_node; ++p) phy_w[p] = w[rep.phy_to_log[p]] / rep.count[rep.phy_to_log[p]];
    const Packing pk = balanced_packing(phy_w, gpus_per_node);
    for (int p = 0; p < phy_per_node; ++p) {
      const int slot = (n * gpus_per_node + pk.pack[p]) * per_gpu + pk.rank_in_pack[p];
      out.phy2log[slot] = mlog_to_log[n * per_node + rep.phy_to_log[p]];
      out.phy_replica[slot] = rep.replica[p];
    }
    for (int i = 0; i < per_node; ++i) out.logcnt[mlog_to_log[n * per_node + i]] = rep.count[i];
  }
  return out;
}

EplbTables rebalance_experts(const std::vector<double>& weight, int layers, int num_replicas, int num_groups,
                             int num_nodes, int num_gpus) {
  if (layers < 1 || weight.empty() || weight.size() % layers != 0)
    throw EplabError("rebalance_experts: weight must be [layers x experts] with at least one of each, got " +
                     std::to_string(weight.size()) + " values for " + std::to_string(layers) + " layers");
  EplbTables t;
  t.layers = layers;
  t.experts = static_cast<int>(weight.size()) / layers;
  t.replicas = num_replicas;
  if (num_nodes < 1) throw EplabError("rebalance_experts: num_nodes must be >= 1, got " + std::to_string(num_nodes));
  const bool hierarchical = num_groups >= 1 && num_groups % num_nodes == 0;
  // Checked here as well as in eplb_hierarchical, which in the global case only sees one group.
  if (num_groups < 1 || t.experts % num_groups != 0)
    throw EplabError("rebalance_experts: " + std::to_string(t.experts) + " experts do not divide into " +
                     std::to_string(num_groups) + " groups");
  std::vector<EplbLayout> per_layer;
  for (int l = 0; l < layers; ++l) {
    std::vector<double> w(weight.begin() + static_cast<size_t>(l) * t.experts,
                          weight.begin() + static_cast<size_t>(l + 1) * t.experts);
    for (int e = 0; e < t.experts; ++e) {
      if (!std::isfinite(w[e]) || !(w[e] >= 0))
        throw EplabError("rebalance_experts: weight[" + std::to_string(l) + "][" + std::to_string(e) + "] is " +
                         std::to_string(w[e]) + "; expected a finite load >= 0");
      w[e] = static_cast<float>(w[e]);
    }
    per_layer.push_back(hierarchical ? eplb_hierarchical(w, num_replicas, num_groups, num_nodes, num_gpus)
                                     : eplb_hierarchical(w, num_replicas, 1, 1, num_gpus));
    for (int c : per_layer.back().logcnt) t.max_replicas = std::max(t.max_replicas, c);
  }
  t.phy2log.reserve(static_cast<size_t>(layers) * num_replicas);
  t.log2phy.assign(static_cast<size_t>(layers) * t.experts * t.max_replicas, -1);
  for (int l = 0; l < layers; ++l) {
    const EplbLayout& L = per_layer[l];
    for (int p = 0; p < num_replicas; ++p) {
      t.phy2log.push_back(L.phy2log[p]);
      t.log2phy[(static_cast<size_t>(l) * t.experts + L.phy2log[p]) * t.max_replicas + L.phy_replica[p]] = p;
    }
    t.logcnt.insert(t.logcnt.end(), L.logcnt.begin(), L.logcnt.end());
  }
  return t;
}

std::vector<int32_t> eplb_slots(const std::vector<double>& heat_in, int nodes, int gpus_per_node, int redundant,
                                int groups, bool hierarchical) {
  const int experts = static_cast<int>(heat_in.size());
  if (redundant < 0)
    throw EplabError("eplb: " + std::to_string(redundant) + " redundant experts; expected a count >= 0");
  // With no forecast at all, spread replicas evenly rather than stacking them all on expert 0.
  std::vector<double> heat = heat_in;
  if (std::accumulate(heat.begin(), heat.end(), 0.0) <= 0) std::fill(heat.begin(), heat.end(), 1.0);
  const int gpus = nodes * gpus_per_node;
  const EplbLayout L = hierarchical ? eplb_hierarchical(heat, experts + redundant, groups, nodes, gpus)
                                    : eplb_hierarchical(heat, experts + redundant, 1, 1, gpus);
  return std::vector<int32_t>(L.phy2log.begin(), L.phy2log.end());
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

namespace {

struct Overlap {
  int shared, a, b;  // candidate item a shares `shared` experts with current item b
};

// Greedy assignment of n candidate items to n current items, largest overlap first (ties: lowest a, then lowest
// b); items sharing nothing are then paired in id order, each a with the lowest free b that allowed(a, b).
template <class Allowed>
std::vector<int> greedy_match(int n, std::vector<Overlap> pairs, Allowed allowed) {
  std::sort(pairs.begin(), pairs.end(), [](const Overlap& x, const Overlap& y) {
    return x.shared != y.shared ? x.shared > y.shared : x.a != y.a ? x.a < y.a : x.b < y.b;
  });
  std::vector<int> target(n, -1);
  std::vector<char> taken(n, 0);
  for (const Overlap& o : pairs)
    if (target[o.a] < 0 && !taken[o.b]) target[o.a] = o.b, taken[o.b] = 1;
  for (int a = 0; a < n; ++a) {
    if (target[a] >= 0) continue;
    int b = 0;
    while (taken[b] || !allowed(a, b)) ++b;
    target[a] = b;
    taken[b] = 1;
  }
  return target;
}

// The experts each group of `size` consecutive ranks holds, as counts: [groups][experts].
std::vector<std::vector<int>> holdings(const Placement& p, int size) {
  std::vector<std::vector<int>> h(p.num_ranks() / size, std::vector<int>(p.num_experts(), 0));
  for (int s = 0; s < p.num_slots(); ++s) ++h[p.rank_of_slot(s) / size][p.expert_of_slot(s)];
  return h;
}

// Pairs of groups (of `size` consecutive ranks) that share experts, replicas counted, where allowed(a, b).
template <class Allowed>
std::vector<Overlap> overlaps(const Placement& current, const Placement& candidate, int size, Allowed allowed) {
  const std::vector<std::vector<int>> cur = holdings(current, size), cand = holdings(candidate, size);
  std::vector<Overlap> out;
  std::vector<int> shared(cur.size(), 0);
  std::vector<int> touched;
  for (size_t a = 0; a < cand.size(); ++a) {
    for (int e = 0; e < candidate.num_experts(); ++e) {
      if (cand[a][e] == 0) continue;
      int last = -1;  // an expert's replicas on one group's ranks are adjacent slots: count the group once
      for (int32_t s : current.replicas(e)) {
        const int b = current.rank_of_slot(s) / size;
        if (b == last || !allowed(static_cast<int>(a), b)) continue;
        last = b;
        if (shared[b] == 0) touched.push_back(b);
        shared[b] += std::min(cand[a][e], cur[b][e]);
      }
    }
    for (int b : touched) out.push_back({shared[b], static_cast<int>(a), b}), shared[b] = 0;
    touched.clear();
  }
  return out;
}

}  // namespace

Placement align_placement(const Placement& current, const Placement& candidate, int gpus_per_node) {
  const int ranks = candidate.num_ranks(), per = candidate.slots_per_rank(), experts = candidate.num_experts();
  if (current.num_ranks() != ranks || current.slots_per_rank() != per || current.num_experts() != experts)
    return candidate;  // shapes differ: everything moves anyway
  const int gpn = gpus_per_node > 0 && ranks % gpus_per_node == 0 ? gpus_per_node : ranks;
  const int nodes = ranks / gpn;
  // Nodes as wholes first (one node when unconstrained), then ranks only within the node pair.
  auto any = [](int, int) { return true; };
  const std::vector<int> node_target = greedy_match(nodes, overlaps(current, candidate, gpn, any), any);
  auto same_node = [&](int a, int b) { return node_target[a / gpn] == b / gpn; };
  const std::vector<int> target = greedy_match(ranks, overlaps(current, candidate, 1, same_node), same_node);
  const std::vector<std::vector<int>> cand = holdings(candidate, 1);
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
