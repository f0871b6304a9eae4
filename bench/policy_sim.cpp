// Policies on the simulator (not a step-time model): full `eplab run`s with rebalancing, expert-weight
// migration as fabric traffic and replica selection. Three figures, one table each, JSON for programs:
//   1. drifting hot set, EPLB every step: each heat predictor's layer time against oracle heat;
//   2. total time (layers + migrations) of migration-aware rebalancing vs every step vs never;
//   3. scale-out bytes of topology-aware replica selection vs round-robin.
//   policy_sim [--steps N] [--nodes N] [--gpus G] [--tokens T] [--layers L] [--redundant R] [--routing SPEC]
//              [--horizon H] [--json FILE]
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "driver/experiment.hpp"

using namespace eplab;

namespace {

struct Row {
  std::string label;
  RunConfig cfg;
  nlohmann::json report;
};

double scaleout_bytes(const nlohmann::json& r) {
  return r["phases"]["dispatch"]["bytes"]["scaleout"].get<double>() +
         r["phases"]["combine"]["bytes"]["scaleout"].get<double>();
}

void print_policy_rows(const char* title, const std::vector<Row>& rows, double oracle_layers) {
  std::printf("\n%s\n%-34s %10s %10s %10s %9s %8s %9s %8s %7s\n", title, "strategy", "layers ms", "migr ms", "total ms",
              "vs oracle", "rebal", "GB moved", "MAPE %", "wall s");
  for (const auto& r : rows) {
    const auto& t = r.report["step_time"];
    const auto& m = r.report["migration"];
    double mape = 0;
    int n = 0;
    for (const auto& s : r.report["per_step"])
      if (!s["forecast_mape_pct"].is_null()) mape += s["forecast_mape_pct"].get<double>(), ++n;
    std::printf(
        "%-34s %10.3f %10.3f %10.3f %8.1f%% %8d %9.2f %8.1f %7.1f\n", r.label.c_str(),
        t["layers_s"].get<double>() * 1e3, t["migration_s"].get<double>() * 1e3, t["total_s"].get<double>() * 1e3,
        oracle_layers > 0 ? 100.0 * (t["layers_s"].get<double>() / oracle_layers - 1) : 0.0, m["rebalances"].get<int>(),
        m["bytes"].get<double>() / 1e9, n ? mape / n : 0.0, r.report["wall_s"].get<double>());
  }
}

nlohmann::json row_json(const Row& r) {
  nlohmann::json per_step = nlohmann::json::array();
  for (const auto& s : r.report["per_step"]) per_step.push_back(s);
  return {{"label", r.label},
          {"balancer", r.cfg.balancer},
          {"heat", r.cfg.heat},
          {"rebalance_every", r.cfg.rebalance_every},
          {"replica_selection", r.cfg.replica_selection},
          {"step_time", r.report["step_time"]},
          {"migration", r.report["migration"]},
          {"scaleout_bytes", scaleout_bytes(r.report)},
          {"imbalance", r.report["imbalance"]},
          {"wall_s", r.report["wall_s"]},
          {"per_step", per_step}};
}

}  // namespace

int main(int argc, char** argv) {
  RunConfig base;
  base.backend = "sim";
  base.cluster = "h800-cx7";
  base.nodes = 2;
  base.gpus_per_node = 8;
  base.model = "deepseek-v3";
  base.tokens = 256;
  base.layers = 1;
  base.steps = 200;
  base.routing = "hotset:k=16,frac=0.5,every=25";
  base.redundant_experts = 16;
  base.verify = false;
  std::string json_path;
  int horizon = 25;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "policy_sim: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--steps")
      base.steps = std::stoi(next());
    else if (a == "--nodes")
      base.nodes = std::stoi(next());
    else if (a == "--gpus")
      base.gpus_per_node = std::stoi(next());
    else if (a == "--tokens")
      base.tokens = std::stoi(next());
    else if (a == "--layers")
      base.layers = std::stoi(next());
    else if (a == "--redundant")
      base.redundant_experts = std::stoi(next());
    else if (a == "--routing")
      base.routing = next();
    else if (a == "--horizon")
      horizon = std::stoi(next());
    else if (a == "--json")
      json_path = next();
    else {
      std::fprintf(stderr,
                   "usage: policy_sim [--steps N] [--nodes N] [--gpus G] [--tokens T] [--layers L] "
                   "[--redundant R] [--routing SPEC] [--horizon H] [--json FILE]\n");
      return 2;
    }
  }
  std::printf(
      "policy_sim | sim, %s, %d nodes x %d GPUs | %s, %d tokens/rank, %d layer(s), %d steps | %s | "
      "%d redundant slots\n",
      base.cluster.c_str(), base.nodes, base.gpus_per_node, base.model.c_str(), base.tokens, base.layers, base.steps,
      base.routing.c_str(), base.redundant_experts);
  auto run = [&](const std::string& label, RunConfig c) {
    std::fprintf(stderr, "  running %s ...\n", label.c_str());
    Row r{label, c, run_experiment(c)};
    return r;
  };

  // 1. Predicted heat vs oracle, EPLB every step.
  std::vector<Row> heat_rows;
  for (const std::string h : {"oracle", "last", "ema:alpha=0.5", "window:w=4", "trend:alpha=0.5,beta=0.3"}) {
    RunConfig c = base;
    c.balancer = "eplb:mode=global";
    c.heat = h;
    c.rebalance_every = 1;
    heat_rows.push_back(run("eplb every step, heat " + h, c));
  }
  const double oracle_layers = heat_rows[0].report["step_time"]["layers_s"].get<double>();
  size_t best = 1;
  for (size_t i = 2; i < heat_rows.size(); ++i)
    if (heat_rows[i].report["step_time"]["layers_s"] < heat_rows[best].report["step_time"]["layers_s"]) best = i;
  print_policy_rows("1. heat predictors (EPLB every step): layer time vs oracle heat", heat_rows, oracle_layers);
  const double best_gap = heat_rows[best].report["step_time"]["layers_s"].get<double>() / oracle_layers - 1;
  std::printf("best predictor: %s, layer time %.1f%% above oracle (target: within 10%%)\n",
              heat_rows[best].cfg.heat.c_str(), 100 * best_gap);

  // 2. When to rebalance: total time including migration.
  std::vector<Row> when_rows;
  when_rows.push_back(heat_rows[best]);
  when_rows.back().label = "eplb every step, " + heat_rows[best].cfg.heat;
  std::vector<std::string> aware_heats = {heat_rows[best].cfg.heat};
  if (aware_heats[0] != "ema:alpha=0.5") aware_heats.push_back("ema:alpha=0.5");
  for (const std::string& h : aware_heats) {
    RunConfig c = base;
    c.balancer = "migration-aware:horizon=" + std::to_string(horizon) + ",mode=global";
    c.heat = h;
    c.rebalance_every = 1;
    when_rows.push_back(run("migration-aware h=" + std::to_string(horizon) + ", " + h, c));
  }
  {
    RunConfig c = base;
    c.balancer = "none";
    when_rows.push_back(run("never (id order)", c));
    c.balancer = "eplb:mode=global";
    c.heat = "oracle";
    c.rebalance_every = base.steps + 1;  // step 0 only: placed once from the first step's load
    when_rows.push_back(run("once (eplb, step 0's load)", c));
  }
  print_policy_rows("2. when to rebalance: total = layers + migrations", when_rows, oracle_layers);

  // 3. Replica selection: scale-out bytes, skewed routing, global EPLB with replicas.
  std::vector<Row> sel_rows;
  for (const std::string algo : {"hierarchical", "flat"})
    for (const std::string sel : {"round-robin", "topology-aware"}) {
      RunConfig c = base;
      c.routing = "zipf:1.2";
      c.steps = 4;
      c.balancer = "eplb:mode=global";
      c.heat = "oracle";
      c.rebalance_every = 1;
      c.algorithm = algo;
      c.replica_selection = sel;
      sel_rows.push_back(run(algo + ", " + sel, c));
    }
  std::printf("\n3. replica selection (zipf:1.2, global EPLB from oracle heat, %d steps)\n%-30s %14s %12s %10s\n", 4,
              "algorithm, selector", "scale-out MB", "vs r-r", "layers ms");
  for (size_t i = 0; i < sel_rows.size(); ++i) {
    const double rr = scaleout_bytes(sel_rows[i - i % 2].report);
    std::printf("%-30s %14.1f %11.1f%% %10.3f\n", sel_rows[i].label.c_str(), scaleout_bytes(sel_rows[i].report) / 1e6,
                100 * (scaleout_bytes(sel_rows[i].report) / rr - 1),
                sel_rows[i].report["step_time"]["layers_s"].get<double>() * 1e3);
  }

  if (!json_path.empty()) {
    nlohmann::json j = {{"backend", "sim"},
                        {"cluster", base.cluster},
                        {"nodes", base.nodes},
                        {"gpus_per_node", base.gpus_per_node},
                        {"model", base.model},
                        {"tokens_per_rank", base.tokens},
                        {"layers", base.layers},
                        {"steps", base.steps},
                        {"routing", base.routing},
                        {"redundant_experts", base.redundant_experts},
                        {"migration_aware_horizon", horizon},
                        {"best_predictor", heat_rows[best].cfg.heat},
                        {"best_vs_oracle_layer_time", best_gap}};
    const std::pair<const char*, const std::vector<Row>*> tables[] = {
        {"heat", &heat_rows}, {"when", &when_rows}, {"selection", &sel_rows}};
    for (const auto& [key, rows] : tables) {
      nlohmann::json a = nlohmann::json::array();
      for (const auto& r : *rows) a.push_back(row_json(r));
      j[key] = a;
    }
    std::ofstream f(json_path);
    f << j.dump(1) << "\n";
    if (!f) {
      std::fprintf(stderr, "policy_sim: writing %s failed\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}
