// `eplab heat eval`: replays a routing (generator or trace) step by step, forecasts each step's per-expert
// load with a heat predictor from the steps before it, and reports the forecast's MAPE and the rank imbalance
// of the placement a balancer builds from it, beside oracle heat (the same step's load) and no balancing.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/args.hpp"
#include "engine/error.hpp"
#include "engine/moe_shape.hpp"
#include "engine/output_file.hpp"
#include "engine/spec_json.hpp"
#include "engine/topology.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "policies/replica/replica_selector.hpp"
#include "traces/routing_source.hpp"

namespace eplab::cli {
namespace {

struct Options {
  std::string routing = "hotset:k=16,frac=0.5,every=10";
  std::string trace;
  std::string predictor = "all";
  std::string balancer = "eplb";
  std::string selector = "round-robin";
  std::string cluster = "h800-cx7";
  std::string model = "deepseek-v3";
  std::string json;
  int nodes = 8, gpus_per_node = 0, tokens = 4096, steps = 20, layer = 0, redundant = -1;
  uint64_t seed = 1;
};

// Tokens per rank when `placement` and the selector serve the step's batches: max / mean.
double measured_imbalance(const std::vector<RoutingBatch>& batches, const Placement& placement, const Topology& topo,
                          const std::string& selector) {
  auto sel = create_replica_selector(selector);
  std::vector<double> per_rank(topo.size(), 0.0);
  for (const RoutingBatch& b : batches) add_rank_load(b, placement, topo, *sel, per_rank);
  return max_over_mean(per_rank);
}

Placement place(Balancer& balancer, const std::vector<double>& heat, const Topology& topo, const MoeShape& shape,
                int redundant) {
  BalanceInput in;
  in.heat = heat;
  in.topology = topo;
  in.shape = shape;
  in.redundant = redundant;
  return balancer.balance(in).placement;
}

int heat_eval(const std::vector<std::string>& argv) {
  Options o;
  Args args("eplab heat eval [options]",
            "Forecast per-expert load step by step and score it: MAPE, and the rank imbalance (max/mean tokens per "
            "rank) of the placement built from the forecast, beside oracle heat and no balancing.");
  args.opt("routing", &o.routing, "uniform | deepep | zipf:S | hotset:... | correlated:...")
      .opt("trace", &o.trace, "routing trace file (instead of --routing)")
      .opt("predictor", &o.predictor, "last | ema:alpha=A | window:w=W | trend:alpha=A,beta=B | all")
      .opt("balancer", &o.balancer, "none | eplb[:...] (what the forecast is placed with)")
      .opt("replica-selection", &o.selector, "round-robin | least-loaded | topology-aware")
      .opt("redundant-experts", &o.redundant, "extra slots, a multiple of the rank count (-1: one per rank)")
      .opt("cluster", &o.cluster, "cluster preset or FILE.json (eplab presets --dump NAME)")
      .opt("nodes", &o.nodes, "nodes (0: the preset's)")
      .opt("gpus-per-node", &o.gpus_per_node, "GPUs per node (0: the preset's)")
      .opt("model", &o.model, "model preset or FILE.json")
      .opt("tokens", &o.tokens, "tokens per rank")
      .opt("steps", &o.steps, "steps to replay (the first only seeds the history)")
      .opt("layer", &o.layer, "MoE layer to evaluate")
      .opt("seed", &o.seed, "routing seed")
      .opt("json", &o.json, "write the per-step results as JSON to this file");
  if (!args.parse(argv)) return 0;
  if (o.steps < 2) throw EplabError("heat eval: --steps must be >= 2 (one to seed the history, one to forecast)");

  ClusterSpec c = resolve_cluster(o.cluster);
  if (o.nodes > 0) c.nodes = o.nodes;
  if (o.gpus_per_node > 0) c.gpus_per_node = o.gpus_per_node;
  const Topology topo(c);
  const MoeShape shape = resolve_model(o.model);
  const int redundant = o.redundant < 0 ? topo.size() : o.redundant;
  RoutingParams p;
  p.shape = shape;
  p.topology = topo;
  p.tokens_per_rank = o.tokens;
  p.seed = o.seed;
  p.steps = o.steps;
  p.layers = o.layer + 1;
  auto source = make_routing(o.trace.empty() ? o.routing : "trace:" + o.trace, p);

  std::vector<std::string> specs = {o.predictor};
  if (o.predictor == "all") specs = {"last", "ema:alpha=0.5", "window:w=4", "trend:alpha=0.5,beta=0.3"};
  std::vector<std::unique_ptr<HeatPredictor>> preds;
  for (const auto& s : specs) preds.push_back(create_heat_predictor(s));
  auto balancer = create_balancer(o.balancer);
  auto none = create_balancer("none");

  const size_t n = preds.size();
  std::vector<double> mape_sum(n, 0), imb_sum(n, 0);
  double oracle_sum = 0, none_sum = 0;
  nlohmann::json steps = nlohmann::json::array();
  const Placement static_pl = place(*none, std::vector<double>(shape.num_experts, 0.0), topo, shape, redundant);
  for (int s = 0; s < o.steps; ++s) {
    std::vector<RoutingBatch> batches;
    std::vector<double> actual(shape.num_experts, 0.0);
    for (int r = 0; r < topo.size(); ++r) {
      batches.push_back(source->batch(s, o.layer, r));
      add_expert_load(batches.back(), actual);
    }
    if (s > 0) {
      nlohmann::json row = {{"step", s}};
      const double oracle =
          measured_imbalance(batches, place(*balancer, actual, topo, shape, redundant), topo, o.selector);
      const double stat = measured_imbalance(batches, static_pl, topo, o.selector);
      oracle_sum += oracle;
      none_sum += stat;
      row["oracle_rank_max_over_mean"] = oracle;
      row["none_rank_max_over_mean"] = stat;
      for (size_t i = 0; i < n; ++i) {
        const std::vector<double> f = preds[i]->predict();
        const double mape = forecast_mape(f, actual);
        const double imb = measured_imbalance(batches, place(*balancer, f, topo, shape, redundant), topo, o.selector);
        mape_sum[i] += mape;
        imb_sum[i] += imb;
        row[preds[i]->name()] = {{"mape_pct", mape}, {"rank_max_over_mean", imb}};
      }
      steps.push_back(row);
    }
    for (auto& pr : preds) pr->observe(actual);
  }
  const double k = o.steps - 1;
  std::printf("routing %s, layer %d, %d steps, %d ranks (%d x %d), %d redundant slots, balancer %s, selection %s\n\n",
              source->name().c_str(), o.layer, o.steps, topo.size(), topo.nodes(), topo.gpus_per_node(), redundant,
              balancer->name().c_str(), o.selector.c_str());
  std::printf("%-28s %12s %20s\n", "heat", "MAPE %", "rank max/mean");
  nlohmann::json summary = nlohmann::json::array();
  for (size_t i = 0; i < n; ++i) {
    std::printf("%-28s %12.2f %20.3f\n", preds[i]->name().c_str(), mape_sum[i] / k, imb_sum[i] / k);
    summary.push_back(
        {{"predictor", preds[i]->name()}, {"mape_pct", mape_sum[i] / k}, {"rank_max_over_mean", imb_sum[i] / k}});
  }
  std::printf("%-28s %12s %20.3f\n", "oracle (same step)", "0", oracle_sum / k);
  std::printf("%-28s %12s %20.3f\n", "no balancing (none)", "-", none_sum / k);
  if (!o.json.empty()) {
    const nlohmann::json j = {{"routing", source->name()},
                              {"balancer", balancer->name()},
                              {"replica_selection", o.selector},
                              {"ranks", topo.size()},
                              {"redundant", redundant},
                              {"predictors", summary},
                              {"oracle_rank_max_over_mean", oracle_sum / k},
                              {"none_rank_max_over_mean", none_sum / k},
                              {"steps", steps}};
    write_output_file(o.json, j.dump(2) + "\n", "the --json results");
  }
  return 0;
}

int cmd_heat(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::printf("usage: eplab heat eval [options]   (eplab heat eval --help lists them)\n");
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] != "eval") throw EplabError("unknown action '" + argv[0] + "' (known: eval)");
  return heat_eval(std::vector<std::string>(argv.begin() + 1, argv.end()));
}

}  // namespace

EPLAB_COMMAND("heat", "evaluate expert-heat predictors: forecast MAPE and the resulting rank imbalance", cmd_heat);

}  // namespace eplab::cli
