// Rebalancing over time on a drifting hot-set routing: predicted heat vs oracle heat, and migration-aware
// rebalancing vs rebalancing every step vs never (the first step's placement kept). Step time is modelled as
// the straggler rank's tokens times a per-token cost, plus the time to move changed experts' weights.
//   policy_migration [--steps N] [--tokens T] [--routing SPEC] [--horizon H] [--seed S] [--json FILE]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "policies/replica/replica_selector.hpp"
#include "traces/routing_source.hpp"

using namespace eplab;

namespace {

struct Strategy {
  std::string label;
  std::string heat;      // predictor spec, or "oracle"
  std::string balancer;  // eplb (every step), migration-aware:..., or "never"
  std::unique_ptr<HeatPredictor> predictor;
  std::unique_ptr<Balancer> bal;
  Placement placement;
  bool placed = false;
  double layer_s = 0, migrate_s = 0, migrate_bytes = 0;
  int rebalances = 0;
};

// The busiest receiver's new expert weights over the move bandwidth (what the migration-aware balancer charges).
double move_time(const Placement& from, const Placement& to, double expert_bytes, double bw) {
  std::vector<double> into(to.num_ranks(), 0.0);
  for (int s = 0; s < to.num_slots(); ++s)
    if (from.expert_of_slot(s) != to.expert_of_slot(s)) into[to.rank_of_slot(s)] += expert_bytes;
  return *std::max_element(into.begin(), into.end()) / bw;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 200, tokens = 4096;
  double horizon = 10;
  uint64_t seed = 1;
  std::string routing = "hotset:k=16,frac=0.5,every=25", json_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--steps")
      steps = std::stoi(v);
    else if (a == "--tokens")
      tokens = std::stoi(v);
    else if (a == "--routing")
      routing = v;
    else if (a == "--horizon")
      horizon = std::stod(v);
    else if (a == "--seed")
      seed = std::stoull(v);
    else if (a == "--json")
      json_path = v;
    else {
      std::fprintf(stderr, "policy_migration: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  const MoeShape shape = model_preset("deepseek-v3");
  ClusterSpec c = cluster_preset("h800-cx7");
  c.nodes = 8;
  const Topology topo(c);
  const int redundant = 64;
  // Per token selection at the straggler: fp8 dispatch + bf16 combine over its NIC, and its expert FLOPs.
  const double token_s = shape.hidden * (1.0 + 4.0 / 128 + 2.0) / (c.nic_GBps * 1e9) +
                         6.0 * shape.hidden * shape.expert_ffn / (c.gpu.fp8_tflops * 1e12);
  const double expert_bytes = expert_weight_bytes(shape, 1), bw = c.nic_GBps * 1e9;
  char ma[128];
  std::snprintf(ma, sizeof(ma), "migration-aware:horizon=%g,token_us=%g,mode=global", horizon, token_s * 1e6);

  std::vector<Strategy> st;
  auto add = [&](std::string label, std::string heat, std::string bal) {
    Strategy s;
    s.label = std::move(label);
    s.heat = heat;
    s.balancer = bal;
    if (heat != "oracle") s.predictor = create_heat_predictor(heat);
    s.bal = create_balancer(bal == "never" ? "eplb:mode=global" : bal);
    st.push_back(std::move(s));
  };
  add("oracle heat, eplb every step", "oracle", "eplb:mode=global");
  for (const char* p : {"last", "ema:alpha=0.5", "window:w=4", "trend:alpha=0.5,beta=0.3"})
    add(std::string(p) + ", eplb every step", p, "eplb:mode=global");
  add("last, never rebalance", "last", "never");
  add("last, migration-aware", "last", ma);
  add("ema:alpha=0.5, migration-aware", "ema:alpha=0.5", ma);

  RoutingParams p;
  p.shape = shape;
  p.topology = topo;
  p.tokens_per_rank = tokens;
  p.seed = seed;
  auto src = make_routing(routing, p);
  auto sel = create_replica_selector("round-robin");
  for (int step = 0; step < steps; ++step) {
    std::vector<RoutingBatch> batches;
    std::vector<double> actual(shape.num_experts, 0.0);
    for (int r = 0; r < topo.size(); ++r) {
      batches.push_back(src->batch(step, 0, r));
      add_expert_load(batches.back(), actual);
    }
    for (Strategy& s : st) {
      std::vector<double> heat = s.predictor ? s.predictor->predict() : actual;
      if (heat.empty()) heat.assign(shape.num_experts, 0.0);  // no history yet: even placement
      if (!s.placed || s.balancer != "never" || step == 1) {
        BalanceInput in;
        in.heat = heat;
        in.topology = topo;
        in.shape = shape;
        in.redundant = redundant;
        in.current = s.placed ? &s.placement : nullptr;
        const BalanceResult r = s.bal->balance(in);
        // Startup and the "never" strategy's one placement from the first real forecast load weights for free.
        if (s.placed && step > 1 && r.rebalanced) {
          const double t = move_time(s.placement, r.placement, expert_bytes, bw);
          s.migrate_s += t;
          s.migrate_bytes += slots_changed(s.placement, r.placement) * expert_bytes;
          ++s.rebalances;
        }
        s.placement = r.placement;
        s.placed = true;
      }
      std::vector<double> per_rank(topo.size(), 0.0);
      for (const RoutingBatch& b : batches) add_rank_load(b, s.placement, topo, *sel, per_rank);
      s.layer_s += *std::max_element(per_rank.begin(), per_rank.end()) * token_s;
      if (s.predictor) s.predictor->observe(actual);
    }
  }
  std::printf("routing %s, %d steps, EP64 (8 x 8), %d redundant slots, %d tokens/rank, one layer\n", routing.c_str(),
              steps, redundant, tokens);
  std::printf(
      "step time = straggler tokens x %.3f us + busiest receiver's expert weights (%.1f MB each) / %.0f GB/s\n\n",
      token_s * 1e6, expert_bytes / 1e6, c.nic_GBps);
  std::printf("%-40s %10s %12s %10s %12s %10s\n", "strategy", "layer s", "migrate s", "total s", "moved GB",
              "rebalances");
  nlohmann::json rows = nlohmann::json::array();
  for (const Strategy& s : st) {
    std::printf("%-40s %10.4f %12.4f %10.4f %12.2f %10d\n", s.label.c_str(), s.layer_s, s.migrate_s,
                s.layer_s + s.migrate_s, s.migrate_bytes / 1e9, s.rebalances);
    rows.push_back({{"strategy", s.label},
                    {"heat", s.heat},
                    {"balancer", s.balancer},
                    {"layer_s", s.layer_s},
                    {"migration_s", s.migrate_s},
                    {"total_s", s.layer_s + s.migrate_s},
                    {"migration_bytes", s.migrate_bytes},
                    {"rebalances", s.rebalances}});
  }
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << nlohmann::json({{"routing", routing},
                         {"steps", steps},
                         {"tokens_per_rank", tokens},
                         {"redundant", redundant},
                         {"token_s", token_s},
                         {"expert_bytes", expert_bytes},
                         {"horizon", horizon},
                         {"rows", rows}})
             .dump(2)
      << "\n";
  }
  return 0;
}
