// The balancer registry: none, eplb and migration-aware.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "engine/error.hpp"
#include "engine/registry.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/heat/policy_spec.hpp"

namespace eplab {
namespace {

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

void check_input(const std::string& who, const BalanceInput& in) {
  if (static_cast<int>(in.heat.size()) != in.shape.num_experts)
    throw EplabError(who + ": heat covers " + std::to_string(in.heat.size()) + " experts but the model '" +
                     in.shape.name + "' has " + std::to_string(in.shape.num_experts));
  for (size_t e = 0; e < in.heat.size(); ++e)
    if (!(in.heat[e] >= 0) || !std::isfinite(in.heat[e]))
      throw EplabError(who + ": heat of expert " + std::to_string(e) + " is " + fmt(in.heat[e]) +
                       "; expected a finite load >= 0");
}

class NoneBalancer : public Balancer {
 public:
  std::string name() const override { return "none"; }
  BalanceResult balance(const BalanceInput& in) override {
    check_input("balancer none", in);
    BalanceResult r;
    r.placement = Placement::contiguous(in.shape.num_experts, in.topology.size(), in.redundant);
    r.rebalanced = in.current == nullptr || slots_changed(*in.current, r.placement) > 0;
    r.decision = "static id-order placement";
    return r;
  }
};

enum class Mode { kAuto, kHierarchical, kGlobal };

class EplbBalancer : public Balancer {
 public:
  EplbBalancer(std::string name, Mode mode, int groups) : name_(std::move(name)), mode_(mode), groups_(groups) {}
  std::string name() const override { return name_; }

  // The candidate placement, aligned with the current one so that a slot keeps its expert where it can.
  Placement candidate(const BalanceInput& in) const {
    const int experts = in.shape.num_experts, nodes = in.topology.nodes();
    const int model_groups = std::max(in.shape.num_expert_groups, 1);
    auto divides = [&](int groups) {
      return experts % groups == 0 && groups % nodes == 0 && in.topology.size() % nodes == 0;
    };
    // As DeepSeek's rebalance_experts: hierarchical when the model's expert groups divide over the nodes, global
    // otherwise. Confining a hot expert's replicas to one node costs balance (Zipf(1.2) on EP64, one group per
    // expert: rank max/mean 1.74 hierarchical vs 1.04 global, bench/results), so a model without groups (1)
    // runs global on more than one node. Forced hierarchical without groups= and with groups that do not divide
    // over the nodes: one group per expert.
    int groups = groups_ > 0 ? groups_ : model_groups;
    bool hier = mode_ == Mode::kHierarchical || (mode_ == Mode::kAuto && divides(groups));
    if (mode_ == Mode::kHierarchical && groups_ == 0 && !divides(groups)) groups = experts;
    Placement p(experts, in.topology.size(),
                eplb_slots(in.heat, nodes, in.topology.gpus_per_node(), in.redundant, groups, hier));
    // A hierarchical placement's ranks may trade places only within a node or as whole nodes: relabelling
    // across nodes would split an expert group over two nodes.
    return in.current ? align_placement(*in.current, p, hier ? in.topology.gpus_per_node() : 0) : p;
  }

  BalanceResult balance(const BalanceInput& in) override {
    check_input("balancer " + name_, in);
    BalanceResult r;
    r.placement = candidate(in);
    r.slots_moved = in.current ? slots_changed(*in.current, r.placement) : 0;
    r.rebalanced = in.current == nullptr || r.slots_moved > 0;
    r.decision = "eplb placement";
    return r;
  }

 private:
  std::string name_;
  Mode mode_;
  int groups_;
};

// Rebalances only when  horizon * (forecast straggler load now - with the candidate) * token_s  exceeds the
// time to move the changed slots' weights, the busiest receiving rank's bytes over `bw`. The straggler's
// load stands for layer time because the rank with the most tokens finishes dispatch, experts and combine
// last; token_s prices one token selection there (defaults: its dispatch + combine bytes over the NIC plus
// its expert FLOPs at fp8 peak).
class MigrationAwareBalancer : public Balancer {
 public:
  MigrationAwareBalancer(std::string name, EplbBalancer eplb, double horizon, double bw_GBps, double token_us,
                         double weight_bytes)
      : name_(std::move(name)),
        eplb_(std::move(eplb)),
        horizon_(horizon),
        bw_GBps_(bw_GBps),
        token_us_(token_us),
        weight_bytes_(weight_bytes) {}
  std::string name() const override { return name_; }

  BalanceResult balance(const BalanceInput& in) override {
    check_input("balancer " + name_, in);
    BalanceResult r;
    const Placement cand = eplb_.candidate(in);
    if (!in.current || in.current->num_slots() != cand.num_slots()) {
      r.placement = cand;
      r.rebalanced = true;
      r.decision = "initial placement (weights load at startup; nothing migrates)";
      return r;
    }
    const double bw = (bw_GBps_ > 0 ? bw_GBps_ : in.topology.spec().nic_GBps) * 1e9;
    const double token_s = token_us_ > 0 ? token_us_ * 1e-6 : default_token_s(in);
    const std::vector<double> now_v = rank_load(*in.current, in.heat);
    const double now = *std::max_element(now_v.begin(), now_v.end());
    const std::vector<double> after_v = rank_load(cand, in.heat);
    const double after = *std::max_element(after_v.begin(), after_v.end());
    const double per_expert = expert_weight_bytes(in.shape, weight_bytes_);
    std::vector<double> into(in.topology.size(), 0.0);
    int moved = 0;
    for (int s = 0; s < cand.num_slots(); ++s)
      if (cand.expert_of_slot(s) != in.current->expert_of_slot(s)) into[cand.rank_of_slot(s)] += per_expert, ++moved;
    const double cost_s = *std::max_element(into.begin(), into.end()) / bw;
    r.predicted_gain_s = horizon_ * (now - after) * token_s;
    if (moved > 0 && r.predicted_gain_s > cost_s) {
      r.placement = cand;
      r.rebalanced = true;
      r.slots_moved = moved;
      r.migration_bytes = moved * per_expert;
      r.migration_s = cost_s;
      r.decision = "rebalance: gain " + fmt(r.predicted_gain_s) + " s over " + fmt(horizon_) + " steps > move " +
                   fmt(cost_s) + " s for " + std::to_string(moved) + " slots";
    } else {
      r.placement = *in.current;
      r.decision = "keep: gain " + fmt(r.predicted_gain_s) + " s over " + fmt(horizon_) + " steps <= move " +
                   fmt(cost_s) + " s for " + std::to_string(moved) + " slots";
    }
    return r;
  }

 private:
  static double default_token_s(const BalanceInput& in) {
    const ClusterSpec& c = in.topology.spec();
    const double wire = in.shape.hidden * (1.0 + 4.0 / 128 + 2.0);  // fp8 + block scales in, bf16 out
    const double flops = 6.0 * in.shape.hidden * in.shape.expert_ffn;
    return wire / (c.nic_GBps * 1e9) + flops / (c.gpu.fp8_tflops * 1e12);
  }
  std::string name_;
  EplbBalancer eplb_;
  double horizon_, bw_GBps_, token_us_, weight_bytes_;
};

std::pair<Mode, int> eplb_args(const PolicySpec& s) {
  const std::string m = s.string("mode", "auto");
  Mode mode = Mode::kAuto;
  if (m == "hierarchical")
    mode = Mode::kHierarchical;
  else if (m == "global")
    mode = Mode::kGlobal;
  else if (m != "auto")
    throw EplabError("balancer '" + s.text() + "': mode '" + m + "' is not one of auto, hierarchical, global");
  // 0: the model's expert groups.
  return {mode, s.integer("groups", 0, 0, std::numeric_limits<int>::max())};
}

std::string eplb_suffix(const PolicySpec& s) {
  std::string out = "mode=" + s.string("mode", "auto");
  if (s.number("groups", 0) > 0) out += ",groups=" + fmt(s.number("groups", 0));
  return out;
}

}  // namespace

EPLAB_REGISTRY(BalancerMaker, balancer_registry, "balancer", r) {
  r.add("none", "static placement in expert-id order, never rebalanced",
        without_parameters<Balancer>([] { return std::make_unique<NoneBalancer>(); }));
  r.add(
      "eplb", "DeepSeek's EPLB: replicate the hottest experts, pack them onto nodes then GPUs (or globally)",
      [](const PolicySpec& s) -> std::unique_ptr<Balancer> {
        s.allow_only({"mode", "groups"});
        auto [mode, groups] = eplb_args(s);
        return std::make_unique<EplbBalancer>("eplb:" + eplb_suffix(s), mode, groups);
      },
      "eplb[:mode=auto|hierarchical|global,groups=G]");
  r.add(
      "migration-aware", "EPLB that moves expert weights only when the forecast gain over a horizon beats the move",
      [](const PolicySpec& s) -> std::unique_ptr<Balancer> {
        s.allow_only({"horizon", "bw", "token_us", "weight_bytes", "mode", "groups"});
        auto [mode, groups] = eplb_args(s);
        const double h = s.number("horizon", 100), bw = s.number("bw", 0), tok = s.number("token_us", 0),
                     wb = s.number("weight_bytes", 1);
        if (h <= 0 || bw < 0 || tok < 0 || wb <= 0)
          throw EplabError("balancer '" + s.text() + "': horizon and weight_bytes must be > 0, bw and token_us >= 0");
        const std::string name = "migration-aware:horizon=" + fmt(h) + ",bw=" + fmt(bw) + ",token_us=" + fmt(tok) +
                                 ",weight_bytes=" + fmt(wb) + "," + eplb_suffix(s);
        return std::make_unique<MigrationAwareBalancer>(name, EplbBalancer("eplb:" + eplb_suffix(s), mode, groups), h,
                                                        bw, tok, wb);
      },
      "migration-aware[:horizon=H,bw=GBps,token_us=U,weight_bytes=B,mode=...,groups=G]");
}

std::vector<std::string> balancer_names() { return balancer_registry().names(); }

void register_balancer_factory(const std::string& name, BalancerFactory factory) {
  if (!factory) throw EplabError("balancer name '" + name + "': the factory is empty");
  balancer_registry().add_user(name, without_parameters<Balancer>(std::move(factory)), ":");
}

void unregister_balancer_factory(const std::string& name) { balancer_registry().remove_user(name); }

std::vector<std::string> registered_balancer_factories() { return balancer_registry().user_names(); }

std::unique_ptr<Balancer> create_balancer(const std::string& text) {
  const PolicySpec s("balancer", text);
  return balancer_registry().by_name(s.name())(s);
}

}  // namespace eplab
