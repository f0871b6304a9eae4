// Balancers: place logical experts onto physical slots (with redundant slots for hot experts) from a heat
// forecast. `none` is the static id-order placement, `eplb` DeepSeek's EPLB, `migration-aware` eplab's
// EPLB that only moves expert weights when the forecast gain over a horizon beats the cost of moving them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/moe_shape.hpp"
#include "engine/placement.hpp"
#include "engine/registry.hpp"
#include "engine/topology.hpp"
#include "policies/heat/policy_spec.hpp"

namespace eplab {

struct BalanceInput {
  std::vector<double> heat;            // forecast load (selections) per logical expert, for one layer
  Topology topology;                   // ranks, nodes and the scale-out bandwidth weights move over
  MoeShape shape;                      // expert count and the size of an expert's weights
  int redundant = 0;                   // extra slots beyond one per expert, a multiple of the rank count
  const Placement* current = nullptr;  // what is deployed now; null at startup
};

struct BalanceResult {
  Placement placement;
  bool rebalanced = false;      // false: `placement` is the current one, nothing moves
  int slots_moved = 0;          // slots whose expert changes
  double migration_bytes = 0;   // expert weights that cross the fabric
  double migration_s = 0;       // the busiest receiver's bytes over the move bandwidth
  double predicted_gain_s = 0;  // forecast straggler time saved over the horizon (migration-aware only)
  std::string decision;         // one line saying why, for reports
};

class Balancer {
 public:
  virtual ~Balancer() = default;
  virtual std::string name() const = 0;
  virtual BalanceResult balance(const BalanceInput& in) = 0;
};

// Specs: none | eplb[:mode=auto|hierarchical|global,groups=G] |
// migration-aware[:horizon=H,bw=GBps,token_us=U,weight_bytes=B,mode=...,groups=G] (docs/policies.md).
// groups= defaults to the model's expert groups (MoeShape::num_expert_groups); eplb's auto mode is hierarchical
// when those groups divide evenly over the nodes, as DeepSeek's rebalance_experts is, global otherwise.
// Throws EplabError naming the spec and listing the known names, or naming a malformed parameter.
std::unique_ptr<Balancer> create_balancer(const std::string& spec);
std::vector<std::string> balancer_names();

// The balancer registry (engine/registry.hpp): each entry builds a balancer from its parsed spec.
using BalancerMaker = std::function<std::unique_ptr<Balancer>(const PolicySpec&)>;
Registry<BalancerMaker>& balancer_registry();

// Balancers supplied at run time (Python subclasses of eplab.Balancer): create_balancer(name) with exactly this
// name calls the factory before any spec parsing. Registering a name again replaces its factory; built-in names
// (none, eplb, migration-aware) cannot be shadowed and a name holds no ':'.
using BalancerFactory = std::function<std::unique_ptr<Balancer>()>;
void register_balancer_factory(const std::string& name, BalancerFactory factory);
void unregister_balancer_factory(const std::string& name);
std::vector<std::string> registered_balancer_factories();

// ---- EPLB building blocks, exposed for tests and Python ----

// Balanced packing: items sorted by weight, descending (ties: lower index first), each to the lightest pack
// (ties: lower pack id) that still has room; every pack gets items / packs items. With one item per pack, item
// i goes to pack i (DeepSeek's identity). pack[i], rank_in_pack[i].
struct Packing {
  std::vector<int> pack;
  std::vector<int> rank_in_pack;
};
Packing balanced_packing(const std::vector<double>& weight, int num_packs);

// Replication: each of the num_phy - num_log extra replicas in turn goes to the expert with the largest load
// per replica (ties: lower id). phy_to_log[p] (the first num_log are the experts themselves), replica[p]: which
// replica of its expert p is (0 for the first num_log, then in the order they were made), count[e].
struct Replication {
  std::vector<int> phy_to_log;
  std::vector<int> replica;
  std::vector<int> count;
};
Replication replicate_experts(const std::vector<double>& weight, int num_phy);

// DeepSeek's rebalance_experts_hierarchical for one layer: `num_groups` contiguous expert groups packed onto
// `num_nodes` nodes, replicas made within each node, physical experts packed onto the node's GPUs
// (num_gpus / num_nodes). phy2log[p] is the expert of physical slot p (GPU-major, num_replicas / num_gpus per
// GPU), phy_replica[p] which replica of that expert it is, logcnt[e] the expert's replicas. With one group and
// one node it is DeepSeek's global policy. Throws EplabError naming the shape that does not divide.
struct EplbLayout {
  std::vector<int> phy2log;
  std::vector<int> phy_replica;
  std::vector<int> logcnt;
};
EplbLayout eplb_hierarchical(const std::vector<double>& weight, int num_replicas, int num_groups, int num_nodes,
                             int num_gpus);

// DeepSeek's rebalance_experts over layers: weight [layers x experts] (row-major) of loads, hierarchical when
// num_groups % num_nodes == 0, global (one group, one node) otherwise. Weights are rounded to float32 first, as
// DeepSeek's torch code does. phy2log [layers x num_replicas]; log2phy [layers x experts x max_replicas], the
// physical slots of each expert in the order its replicas were made, padded with -1; logcnt [layers x experts].
// Throws EplabError for a bad shape or a negative or non-finite weight, naming it.
struct EplbTables {
  int layers = 0, experts = 0, replicas = 0, max_replicas = 0;
  std::vector<int64_t> phy2log, log2phy, logcnt;
};
EplbTables rebalance_experts(const std::vector<double>& weight, int layers, int num_replicas, int num_groups,
                             int num_nodes, int num_gpus);

// EPLB over nodes x gpus_per_node ranks. Hierarchical: eplb_hierarchical with `groups` groups. Global: one node
// and one group. Zero heat everywhere counts as equal heat. Returns slot_expert for Placement (rank-major,
// (E + redundant) / ranks slots each).
std::vector<int32_t> eplb_slots(const std::vector<double>& heat, int nodes, int gpus_per_node, int redundant,
                                int groups, bool hierarchical);

// Each rank's forecast load when every expert's load splits evenly over its replicas.
std::vector<double> rank_load(const Placement& placement, const std::vector<double>& heat);
double max_over_mean(const std::vector<double>& v);

// Bytes of one expert's weights: gate, up and down projections, 3 * hidden * ffn * bytes_per_param.
double expert_weight_bytes(const MoeShape& shape, double bytes_per_param);

// `candidate` with its ranks relabelled (greedily, most shared experts first) and each rank's slots reordered
// so that as many slots as possible keep the expert they hold in `current`. Per-rank loads are unchanged. With
// gpus_per_node > 0 a rank keeps its node's company: nodes are relabelled as wholes (most shared experts first)
// and ranks only within a node, so a hierarchical placement's node grouping survives.
Placement align_placement(const Placement& current, const Placement& candidate, int gpus_per_node = 0);
int slots_changed(const Placement& a, const Placement& b);

}  // namespace eplab
