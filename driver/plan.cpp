#include "driver/plan.hpp"

#include <cstdlib>
#include <fstream>

#include "engine/error.hpp"
#include "engine/hash.hpp"
#include "engine/layout_cache.hpp"
#include "engine/spec_json.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "policies/heat/policy_spec.hpp"

namespace eplab {
namespace {

// `topology-aware:costs=FILE[,metric=latency|bandwidth]` reads the matrix `eplab probe` wrote; other specs go
// to the registry.
std::function<std::unique_ptr<ReplicaSelector>()> replica_selector_factory(const std::string& text, int ranks) {
  if (text.rfind("topology-aware:", 0) != 0) {
    create_replica_selector(text);  // fail early on an unknown name
    return [text] { return create_replica_selector(text); };
  }
  const PolicySpec spec("replica selector", text);
  spec.allow_only({"costs", "metric"});
  const std::string path = spec.string("costs", ""), metric = spec.string("metric", "latency");
  if (path.empty()) throw EplabError("replica selector '" + text + "': costs=FILE is required (from eplab probe)");
  if (metric != "latency" && metric != "bandwidth")
    throw EplabError("replica selector '" + text + "': metric must be latency or bandwidth, got '" + metric + "'");
  std::ifstream in(path);
  if (!in) throw EplabError("replica selector '" + text + "': cannot open cost matrix '" + path + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw EplabError("cost matrix '" + path + "': not JSON: " + e.what());
  }
  const char* key = metric == "latency" ? "latency_s" : "bandwidth_GBps";
  const auto shape_error = [&] {
    return EplabError("cost matrix '" + path + "': expected \"ranks\": " + std::to_string(ranks) + " and a " +
                      std::to_string(ranks) + " x " + std::to_string(ranks) + " \"" + key + "\" matrix of numbers");
  };
  // Every access checks the type first: nlohmann's own type_error would name neither the file nor the field.
  if (!j.is_object() || !j.contains("ranks") || !j["ranks"].is_number_integer() || j["ranks"] != ranks ||
      !j.contains(key) || !j[key].is_array() || j[key].size() != size_t(ranks))
    throw shape_error();
  std::vector<double> cost(static_cast<size_t>(ranks) * ranks);
  for (int a = 0; a < ranks; ++a) {
    const nlohmann::json& row = j[key][a];
    if (!row.is_array() || row.size() != size_t(ranks))
      throw EplabError("cost matrix '" + path + "': row " + std::to_string(a) + " of \"" + key + "\" is " +
                       (row.is_array() ? std::to_string(row.size()) + " entries" : std::string("not an array")) +
                       ", expected " + std::to_string(ranks) + " numbers");
    for (int b = 0; b < ranks; ++b) {
      if (!row[b].is_number()) throw shape_error();
      const double v = row[b].get<double>();
      // Cheaper = lower latency, or higher bandwidth (self has infinite bandwidth: cost 0).
      cost[static_cast<size_t>(a) * ranks + b] = metric == "latency" ? v : (a == b || v <= 0 ? 0.0 : 1.0 / v);
    }
  }
  return [ranks, cost] { return std::make_unique<TopologyAwareSelector>(ranks, cost); };
}

// The cluster-wide key of one call's layout: everything its notify counts depend on, i.e. the layer, the
// placement (replica selection reads it) and every rank's routing in rank order (selectors are pure functions
// of batch, placement and source rank). Weights and activations do not change counts and are left out.
uint64_t layout_key(int layer, const Placement& placement, const std::vector<const RoutingBatch*>& batches) {
  uint64_t h = mix64(0x6c61796f7574ull ^ static_cast<uint64_t>(layer));
  for (int32_t e : placement.slot_expert()) h = mix64(h ^ static_cast<uint32_t>(e));
  for (const RoutingBatch* b : batches) {
    h = mix64(h ^ (static_cast<uint64_t>(b->num_tokens) << 8) ^ static_cast<uint64_t>(b->topk));
    for (int32_t e : b->topk_idx) h = mix64(h ^ static_cast<uint32_t>(e));
  }
  return h == 0 ? 1 : h;  // 0 means "not cached"
}

// Each changed slot fetches its new expert from an old holder: its own rank if it already held a replica
// (a local copy, nothing crosses the fabric), else one in its node, else the lowest old slot.
std::vector<Transfer> plan_moves(const Placement& old_p, const Placement& new_p, const Topology& topo) {
  std::vector<Transfer> moves;
  for (int s = 0; s < new_p.num_slots(); ++s) {
    const int32_t e = new_p.expert_of_slot(s);
    if (e == old_p.expert_of_slot(s)) continue;
    const int dst = new_p.rank_of_slot(s);
    int src = -1;
    for (int32_t o : old_p.replicas(e)) {
      const int r = old_p.rank_of_slot(o);
      if (r == dst) {
        src = dst;
        break;
      }
      if (src < 0 || (topo.node_of(r) == topo.node_of(dst) && topo.node_of(src) != topo.node_of(dst))) src = r;
    }
    if (src >= 0 && src != dst) moves.push_back({src, dst});
  }
  return moves;
}

bool resolve_phantom(const RunConfig& cfg, const Caps& caps) {
  bool phantom;
  if (cfg.payload == "auto")
    phantom = caps.modeled_time;  // sizes only where time is a model; real bytes where it is measured
  else if (cfg.payload == "phantom")
    phantom = true;
  else if (cfg.payload == "real")
    phantom = false;
  else
    throw EplabError("--payload must be real, phantom or auto, got '" + cfg.payload + "'");
  if (phantom && !caps.phantom_payload)
    throw EplabError("backend '" + cfg.backend + "' moves real bytes only; --payload=phantom needs --backend=sim");
  if (!phantom && !caps.real_payload) throw EplabError("backend '" + cfg.backend + "' cannot move real bytes");
  return phantom;
}

// Hierarchical's rounds on wall-clock backends (EngineOptions::rail_rounds): from the tokens per rank, the rows
// of the wider codec and whether ranks are processes, or EPLAB_RAIL_ROUNDS, which every rank of a run must be
// given alike.
int rail_rounds(const RunConfig& cfg, const MoeShape& shape, const Codec& d, const Codec& c, bool processes) {
  if (const char* env = std::getenv("EPLAB_RAIL_ROUNDS"); env && *env) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (*end != '\0' || n < 1 || n > kMaxRailRounds)
      throw EplabError("EPLAB_RAIL_ROUNDS must be a number of rounds from 1 to " + std::to_string(kMaxRailRounds) +
                       ", got '" + std::string(env) + "'");
    return static_cast<int>(n);
  }
  return rail_rounds_for(cfg.tokens, std::max(d.row_bytes(shape.hidden), c.row_bytes(shape.hidden)),
                         processes ? kProcessRailRoundBytes : kRailRoundBytes);
}

}  // namespace

ClusterSpec config_cluster(const RunConfig& cfg) {
  ClusterSpec spec = resolve_cluster(cfg.cluster);
  if (cfg.nodes > 0) spec.nodes = cfg.nodes;
  if (cfg.gpus_per_node > 0) spec.gpus_per_node = cfg.gpus_per_node;
  return spec;
}

MoeShape config_model(const RunConfig& cfg) {
  MoeShape shape = resolve_model(cfg.model);
  if (cfg.hidden > 0) shape.hidden = cfg.hidden;
  if (cfg.experts > 0) shape.num_experts = cfg.experts;
  return shape;
}

bool batch_in_output(const RunConfig& cfg, bool wire_batch, double row_bytes, double out_row_bytes) {
  return wire_batch && cfg.mode != "training" && cfg.overlap != "tbo" && row_bytes <= out_row_bytes;
}

RunSetup resolve_run(const RunConfig& cfg, const Backend& backend) {
  if (cfg.nodes < 0 || cfg.gpus_per_node < 0) throw EplabError("--nodes and --gpus-per-node must be positive");
  const ClusterSpec spec = config_cluster(cfg);
  const Topology topo(spec);
  if (cfg.hidden < 0) throw EplabError("--hidden must be positive, got " + std::to_string(cfg.hidden));
  if (cfg.experts < 0) throw EplabError("--experts must be positive, got " + std::to_string(cfg.experts));
  const MoeShape shape = config_model(cfg);
  if (cfg.tokens < 1) throw EplabError("--tokens must be at least 1 per rank, got " + std::to_string(cfg.tokens));
  if (cfg.steps < 1 || cfg.layers < 1) throw EplabError("--steps and --layers must be at least 1");
  // Every rank holds slots_per_rank slots, so with enough redundant slots there may be more ranks than experts.
  if (cfg.redundant_experts < 0)
    throw EplabError("--redundant-experts must be >= 0, got " + std::to_string(cfg.redundant_experts));
  if ((shape.num_experts + cfg.redundant_experts) % topo.size() != 0)
    throw EplabError("model '" + shape.name + "' has " + std::to_string(shape.num_experts) + " experts; with " +
                     std::to_string(cfg.redundant_experts) + " redundant slots that is " +
                     std::to_string(shape.num_experts + cfg.redundant_experts) + " slots, which do not divide over " +
                     std::to_string(topo.size()) + " ranks (" + std::to_string(spec.nodes) + " nodes x " +
                     std::to_string(spec.gpus_per_node) +
                     " GPUs); every rank needs the same number of slots, at least one (--redundant-experts)");
  if (cfg.warmup_steps < 0) throw EplabError("--warmup-steps must be >= 0, got " + std::to_string(cfg.warmup_steps));
  const std::string dcodec = cfg.dispatch_codec.empty() ? shape.dispatch_codec : cfg.dispatch_codec;
  const std::string ccodec = cfg.combine_codec.empty() ? shape.combine_codec : cfg.combine_codec;
  const Caps caps = backend.caps();
  const bool phantom = resolve_phantom(cfg, caps);
  if (cfg.rebalance_every < 0)
    throw EplabError("--rebalance-every must be 0 (never) or a number of steps, got " +
                     std::to_string(cfg.rebalance_every));
  if (cfg.heat != "oracle") create_heat_predictor(cfg.heat);  // fail early on a typo even when nothing rebalances
  if (cfg.layout_cache < 0)
    throw EplabError("--layout-cache must be 0 (off) or an LRU capacity, got " + std::to_string(cfg.layout_cache));
  if (cfg.mode != "inference" && cfg.mode != "training")
    throw EplabError("--mode must be inference or training, got '" + cfg.mode + "'");
  create_algorithm(cfg.algorithm);  // fail early on an unknown name
  // Training's backward pass and two micro-batches keep the fp32 output.
  const bool bf16_allowed = cfg.mode == "inference" && cfg.overlap == "none";
  if (cfg.combine_out == "bf16" && !bf16_allowed)
    throw EplabError("--combine-out bf16 is for inference without --overlap (mode '" + cfg.mode + "', overlap '" +
                     cfg.overlap + "'): training's backward pass and two micro-batches keep the fp32 output");
  EngineOptions eopts;
  eopts.algorithm = cfg.algorithm;
  eopts.dispatch_codec = dcodec;
  eopts.combine_codec = ccodec;
  eopts.phantom = phantom;
  eopts.timeout_s = cfg.timeout_s;
  eopts.layout_cache = cfg.layout_cache;
  const auto d = create_codec(dcodec), c = create_codec(ccodec);
  eopts.rail_rounds = rail_rounds(cfg, shape, *d, *c, !backend.in_process());
  return RunSetup{
      .cluster = spec,
      .topo = topo,
      .shape = shape,
      .dispatch_codec = dcodec,
      .combine_codec = ccodec,
      .backend = backend.name(),
      .caps = caps,
      .in_process = backend.in_process(),
      .phantom = phantom,
      .verify = cfg.verify && !phantom,
      .lossless = d->lossless() && c->lossless(),
      .out_bf16 = !phantom && (cfg.combine_out == "bf16" || (cfg.combine_out == "auto" && bf16_allowed)),
      // Combine may re-encode a partial sum once on its way back (hierarchical), hence the factor 2.
      .tolerance = 2.0 * (d->error_bound_for(shape.hidden) + 2.0 * c->error_bound_for(shape.hidden)) + 1e-6,
      // Weights are fp8 where the model's wire format is (DeepSeek-V3), bf16 otherwise.
      .expert_bytes = expert_weight_bytes(shape, shape.dispatch_codec.rfind("fp8", 0) == 0 ? 1.0 : 2.0),
      .engine = eopts,
      .transform = ExpertTransform(cfg.transform, shape.num_experts, shape.hidden, cfg.seed),
      .make_selector = replica_selector_factory(cfg.replica_selection, topo.size()),
  };
}

namespace {

// The run's view of a routing whose first `warmup` steps only the planner reads: the run's step s is the
// source's step warmup + s, and steps -warmup..-1 are the warm-up.
class WarmupShifted : public RoutingSource {
 public:
  WarmupShifted(std::shared_ptr<RoutingSource> inner, int warmup) : inner_(std::move(inner)), warmup_(warmup) {}
  std::string name() const override { return inner_->name(); }
  RoutingBatch batch(int step, int layer, int rank) override { return inner_->batch(step + warmup_, layer, rank); }
  int num_steps() const override { return inner_->num_steps() < 0 ? -1 : inner_->num_steps() - warmup_; }
  int num_layers() const override { return inner_->num_layers(); }
  int num_ranks() const override { return inner_->num_ranks(); }
  int fixed_tokens() const override { return inner_->fixed_tokens(); }
  bool concurrent() const override { return inner_->concurrent(); }

 private:
  std::shared_ptr<RoutingSource> inner_;
  int warmup_;
};

}  // namespace

std::shared_ptr<RoutingSource> open_routing(const RunConfig& cfg, const RunSetup& run) {
  const int total = cfg.steps + cfg.warmup_steps;
  RoutingParams rp{run.shape, run.topo, cfg.tokens, cfg.seed, total, cfg.layers};
  rp.weights = !run.phantom;  // phantom payloads carry counts only: no figure depends on the weights
  std::shared_ptr<RoutingSource> routing = cfg.routing_source;
  if (!routing) routing = make_routing(cfg.trace.empty() ? cfg.routing : "trace:" + cfg.trace, rp);
  const std::string name = routing->name();
  if (routing->num_steps() >= 0 && routing->num_steps() < total)
    throw EplabError(name + " holds " + std::to_string(routing->num_steps()) + " steps, the run asks for " +
                     std::to_string(cfg.steps) +
                     (cfg.warmup_steps > 0 ? " after " + std::to_string(cfg.warmup_steps) + " warm-up steps" : ""));
  if (routing->num_ranks() >= 0 && routing->num_ranks() != run.topo.size())
    throw EplabError(name + " holds batches for " + std::to_string(routing->num_ranks()) + " ranks, the run has " +
                     std::to_string(run.topo.size()));
  if (routing->num_layers() >= 0 && routing->num_layers() < cfg.layers)
    throw EplabError(name + " holds " + std::to_string(routing->num_layers()) + " layers, the run asks for " +
                     std::to_string(cfg.layers));
  if (cfg.warmup_steps > 0) routing = std::make_shared<WarmupShifted>(routing, cfg.warmup_steps);
  return routing;
}

Plan make_plan(const RunConfig& cfg, const RunSetup& run, RoutingSource& routing, const KeepBatch& keep) {
  const bool oracle = cfg.heat == "oracle";
  const int E = run.shape.num_experts, R = run.topo.size(), calls = cfg.steps * cfg.layers;
  const int W = cfg.warmup_steps;
  const std::string routing_name = routing.name();
  Plan plan;
  plan.calls.resize(calls);
  std::vector<std::unique_ptr<Balancer>> balancers;
  std::vector<std::unique_ptr<HeatPredictor>> predictors;
  std::vector<std::shared_ptr<const Placement>> current;
  std::vector<double> load;
  // Selections per expert of one (step, layer) over all ranks, into `load`; steps -W..-1 are the warm-up's.
  auto sum_load = [&](int step, int l) {
    load.assign(E, 0.0);
    for (int r = 0; r < R; ++r) {
      const RoutingBatch b = routing.batch(step, l, r);
      validate_batch(b, E, routing_name.c_str());
      add_expert_load(b, load);
    }
  };
  // The placement the first step starts from, loaded at startup (nothing migrates). Under the oracle a named
  // balancer places it from the first step's own load (the first warm-up step's with a warm-up), so it need not
  // wait for a rebalance; a predictor has no heat yet, and balancers given zero heat spread experts evenly.
  const bool first_from_load = oracle && cfg.balancer != "none";
  for (int l = 0; l < cfg.layers; ++l) {
    balancers.push_back(create_balancer(cfg.balancer));
    if (!oracle) predictors.push_back(create_heat_predictor(cfg.heat));
    std::vector<double> heat(E, 0.0);
    if (first_from_load) sum_load(-W, l), heat = load;
    BalanceResult r = balancers[l]->balance({heat, run.topo, run.shape, cfg.redundant_experts, nullptr});
    current.push_back(std::make_shared<const Placement>(std::move(r.placement)));
  }
  const bool learn = cfg.rebalance_every > 0;
  // Warm-up steps: the predictors learn and the balancer re-places, on the routing's first W steps; no rank
  // runs them, so their migrations are in no reported figure. The rebalance schedule counts them.
  if (learn)
    for (int w = 0; w < W; ++w)
      for (int l = 0; l < cfg.layers; ++l) {
        sum_load(w - W, l);
        const std::vector<double> forecast = oracle ? load : predictors[l]->predict();
        if (w % cfg.rebalance_every == 0 && !forecast.empty()) {
          BalanceResult r =
              balancers[l]->balance({forecast, run.topo, run.shape, cfg.redundant_experts, current[l].get()});
          if (slots_changed(*current[l], r.placement) > 0)
            current[l] = std::make_shared<const Placement>(std::move(r.placement));
        }
        if (!oracle) predictors[l]->observe(load);
      }
  // Keep the batches planning generated when they fit comfortably, so the run does not generate them twice.
  const double batch_bytes = static_cast<double>(calls) * R * cfg.tokens * run.shape.topk * 8.0;
  const bool keeping = learn && keep && batch_bytes < 1e9;
  // The layout cache's keys need every rank's batch of a call: those planning generated, or generated again.
  std::vector<RoutingBatch> generated(cfg.layout_cache > 0 ? R : 0);
  LayoutCache planner_lru(cfg.layout_cache);
  for (int step = 0; step < cfg.steps; ++step)
    for (int l = 0; l < cfg.layers; ++l) {
      LayerPlan& lp = plan.calls[step * cfg.layers + l];
      bool have_batches = false;
      if (learn) {
        load.assign(E, 0.0);
        for (int r = 0; r < R; ++r) {
          RoutingBatch b = routing.batch(step, l, r);
          validate_batch(b, E, routing_name.c_str());
          add_expert_load(b, load);
          if (!generated.empty()) generated[r] = b;
          if (keeping) keep(step, l, r, std::move(b));
        }
        have_batches = true;
        const std::vector<double> forecast = oracle ? load : predictors[l]->predict();
        if (!forecast.empty()) lp.forecast_mape = forecast_mape(forecast, load);
        if ((W + step) % cfg.rebalance_every == 0 && !forecast.empty()) {
          BalanceResult r =
              balancers[l]->balance({forecast, run.topo, run.shape, cfg.redundant_experts, current[l].get()});
          const int moved = slots_changed(*current[l], r.placement);
          if (moved > 0) {
            lp.slots_moved = moved;
            lp.moves = plan_moves(*current[l], r.placement, run.topo);
            current[l] = std::make_shared<const Placement>(std::move(r.placement));
          }
        }
        if (!oracle) predictors[l]->observe(load);
      }
      lp.placement = current[l];
      // Cached layouts: the planner runs the LRU the ranks' engines will run, over the same keys in the same
      // order, and vouches for a call exactly when its key is still cached; engines then skip notify together.
      if (cfg.layout_cache > 0) {
        std::vector<const RoutingBatch*> batches(R);
        for (int r = 0; r < R; ++r) {
          if (!have_batches) generated[r] = routing.batch(step, l, r);
          batches[r] = &generated[r];
        }
        lp.layout_key = layout_key(l, *lp.placement, batches);
        lp.layout_cached = planner_lru.find(lp.layout_key) != nullptr;
        if (!lp.layout_cached) planner_lru.insert({lp.layout_key, 0, {}, 0});
      }
    }
  return plan;
}

}  // namespace eplab
