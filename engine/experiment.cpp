#include "engine/experiment.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <fstream>
#include <mutex>
#include <thread>

#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"
#include "engine/report.hpp"
#include "engine/spec_json.hpp"
#include "engine/timeline.hpp"
#include "engine/training.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "policies/heat/policy_spec.hpp"
#include "policies/replica/replica_selector.hpp"
#include "traces/routing_source.hpp"

namespace eplab {
namespace {

struct Delivery5 {
  int32_t call, dest, src, token, slot;
  auto operator<=>(const Delivery5&) const = default;
};

// Roofline inputs for one rank's experts: a SwiGLU FFN (three hidden x ffn matmuls) per received selection;
// weights are read once per active slot, activations in and out once per selection.
ComputeCost expert_cost(const Handle& h, const MoeShape& shape, const std::string& dispatch_codec) {
  int active = 0;
  double sels = 0;
  for (int32_t n : h.slot_sels) {
    active += n > 0;
    sels += n;
  }
  const double weight_bytes = dispatch_codec.rfind("fp8", 0) == 0 ? 1.0 : 2.0;
  ComputeCost c;
  c.flops = 2.0 * 3.0 * shape.hidden * shape.expert_ffn * sels;
  c.hbm_bytes = active * 3.0 * shape.hidden * shape.expert_ffn * weight_bytes + sels * shape.hidden * 2.0 * 2.0;
  c.what = "expert";
  return c;
}

// `topology-aware:costs=FILE[,metric=latency|bandwidth]` reads the matrix `eplab probe` wrote; other specs go
// to the registry. One selector per rank, so stateful selectors never share state across threads.
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
  if (!j.contains("ranks") || j["ranks"].get<int>() != ranks || !j.contains(key) || j[key].size() != size_t(ranks))
    throw EplabError("cost matrix '" + path + "': expected \"ranks\": " + std::to_string(ranks) + " and a " +
                     std::to_string(ranks) + " x " + std::to_string(ranks) + " \"" + key + "\" matrix");
  std::vector<double> cost(static_cast<size_t>(ranks) * ranks);
  for (int a = 0; a < ranks; ++a) {
    if (j[key][a].size() != size_t(ranks))
      throw EplabError("cost matrix '" + path + "': row " + std::to_string(a) + " of \"" + key + "\" has " +
                       std::to_string(j[key][a].size()) + " entries, expected " + std::to_string(ranks));
    for (int b = 0; b < ranks; ++b) {
      const double v = j[key][a][b].get<double>();
      // Cheaper = lower latency, or higher bandwidth (self has infinite bandwidth: cost 0).
      cost[static_cast<size_t>(a) * ranks + b] = metric == "latency" ? v : (a == b || v <= 0 ? 0.0 : 1.0 / v);
    }
  }
  return [ranks, cost] { return std::make_unique<TopologyAwareSelector>(ranks, cost); };
}

// One expert's weights moving to a slot's new rank from a rank that held the expert before.
struct Transfer {
  int src, dst;
};

// What the planner decided for one (step, layer): the placement to run with and the weights to move first.
struct LayerPlan {
  std::shared_ptr<const Placement> placement;
  std::vector<Transfer> moves;  // empty: nothing migrates before this call
  int slots_moved = 0;
  double forecast_mape = -1;   // predicted vs actual load; < 0 without a forecast
  uint64_t layout_key = 0;     // cluster-wide routing key for the layout cache (0: cache off)
  bool layout_cached = false;  // the driver's LRU holds layout_key: every rank skips notify
};

// The cluster-wide key of one call's layout: everything its notify counts depend on, i.e. the layer, the
// placement (replica selection reads it) and every rank's routing in rank order (selectors are pure functions
// of batch, placement and source rank). Weights and activations do not change counts and are left out.
uint64_t layout_key(int layer, const Placement& placement, const std::vector<const RoutingBatch*>& batches) {
  uint64_t h = LayoutCache::mix(0x6c61796f7574ull ^ static_cast<uint64_t>(layer));
  for (int32_t e : placement.slot_expert()) h = LayoutCache::mix(h ^ static_cast<uint32_t>(e));
  for (const RoutingBatch* b : batches) {
    h = LayoutCache::mix(h ^ (static_cast<uint64_t>(b->num_tokens) << 8) ^ static_cast<uint64_t>(b->topk));
    for (int32_t e : b->topk_idx) h = LayoutCache::mix(h ^ static_cast<uint32_t>(e));
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

}  // namespace

nlohmann::json run_experiment(const RunConfig& cfg, const ProgressFn& progress) {
  const auto wall0 = std::chrono::steady_clock::now();
  ClusterSpec spec = resolve_cluster(cfg.cluster);
  if (cfg.nodes < 0 || cfg.gpus_per_node < 0) throw EplabError("--nodes and --gpus-per-node must be positive");
  if (cfg.nodes > 0) spec.nodes = cfg.nodes;
  if (cfg.gpus_per_node > 0) spec.gpus_per_node = cfg.gpus_per_node;
  const Topology topo(spec);
  MoeShape shape = resolve_model(cfg.model);
  if (cfg.hidden < 0) throw EplabError("--hidden must be positive, got " + std::to_string(cfg.hidden));
  if (cfg.hidden > 0) shape.hidden = cfg.hidden;
  if (cfg.experts < 0) throw EplabError("--experts must be positive, got " + std::to_string(cfg.experts));
  if (cfg.experts > 0) shape.num_experts = cfg.experts;
  if (cfg.tokens < 1) throw EplabError("--tokens must be at least 1 per rank, got " + std::to_string(cfg.tokens));
  if (cfg.steps < 1 || cfg.layers < 1) throw EplabError("--steps and --layers must be at least 1");
  if (shape.num_experts % topo.size() != 0 && topo.size() % shape.num_experts != 0)
    throw EplabError("model '" + shape.name + "' has " + std::to_string(shape.num_experts) +
                     " experts, which do not divide over " + std::to_string(topo.size()) + " ranks (" +
                     std::to_string(spec.nodes) + " nodes x " + std::to_string(spec.gpus_per_node) + " GPUs)");
  if (topo.size() > shape.num_experts)
    throw EplabError("model '" + shape.name + "' has " + std::to_string(shape.num_experts) +
                     " experts, fewer than the " + std::to_string(topo.size()) +
                     " ranks; every rank needs at least one expert");
  const std::string dcodec = cfg.dispatch_codec.empty() ? shape.dispatch_codec : cfg.dispatch_codec;
  const std::string ccodec = cfg.combine_codec.empty() ? shape.combine_codec : cfg.combine_codec;

  auto backend = create_backend(cfg.backend);
  const Caps caps = backend->caps();
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

  RoutingParams rp{shape, topo, cfg.tokens, cfg.seed, cfg.steps, cfg.layers};
  std::shared_ptr<RoutingSource> routing = cfg.routing_source;
  if (!routing) routing = make_routing(cfg.trace.empty() ? cfg.routing : "trace:" + cfg.trace, rp);
  const std::string routing_name = routing->name();
  if (routing->num_steps() >= 0 && routing->num_steps() < cfg.steps)
    throw EplabError(routing_name + " holds " + std::to_string(routing->num_steps()) + " steps, the run asks for " +
                     std::to_string(cfg.steps));
  if (routing->num_layers() >= 0 && routing->num_layers() < cfg.layers)
    throw EplabError(routing_name + " holds " + std::to_string(routing->num_layers()) + " layers, the run asks for " +
                     std::to_string(cfg.layers));
  std::mutex routing_mu;

  // Placements per (step, layer), planned here so every rank (thread or simulated actor) runs each call
  // with the same one. The measured load the predictors learn from is the routing's selections per expert
  // summed over all ranks' batches, which does not depend on the run, so planning ahead is exact.
  if (cfg.rebalance_every < 0)
    throw EplabError("--rebalance-every must be 0 (never) or a number of steps, got " +
                     std::to_string(cfg.rebalance_every));
  const bool oracle = cfg.heat == "oracle";
  if (!oracle) create_heat_predictor(cfg.heat);  // fail early on a typo even when nothing rebalances
  const auto make_selector = replica_selector_factory(cfg.replica_selection, topo.size());
  const int E = shape.num_experts, R = topo.size(), calls = cfg.steps * cfg.layers;
  std::vector<LayerPlan> plan(calls);
  std::vector<RoutingBatch> planned_batches;  // [call x rank], moved out by the rank that runs it
  // Simulated ranks are actors sharing one OS thread, so batches generated as each rank asks are generated one
  // after another. Instead the first rank to reach a call generates every rank's batch of that call on all
  // cores; the others take theirs. A batch depends only on (step, layer, rank), and no rank leaves a call
  // before every rank has taken its batch (dispatch starts with a barrier), so one call's worth is held at once.
  std::vector<RoutingBatch> call_batches;  // [rank] of call call_batches_for, moved out by each rank
  int call_batches_for = -1;
  const auto generate_call = [&](int call) {
    const int step = call / cfg.layers, layer = call % cfg.layers;
    call_batches.assign(R, RoutingBatch{});
    const int workers = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, R);
    std::atomic<int> next{0};
    std::vector<std::exception_ptr> errors(workers);
    const auto work = [&](int w) {
      try {
        for (int r; (r = next.fetch_add(1)) < R;) call_batches[r] = routing->batch(step, layer, r);
      } catch (...) {
        errors[w] = std::current_exception();
        next = R;
      }
    };
    std::vector<std::thread> threads;
    for (int w = 1; w < workers; ++w) threads.emplace_back(work, w);
    work(0);
    for (std::thread& t : threads) t.join();
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
    call_batches_for = call;
  };
  {
    std::vector<std::unique_ptr<Balancer>> balancers;
    std::vector<std::unique_ptr<HeatPredictor>> predictors;
    std::vector<std::shared_ptr<const Placement>> current;
    for (int l = 0; l < cfg.layers; ++l) {
      balancers.push_back(create_balancer(cfg.balancer));
      if (!oracle) predictors.push_back(create_heat_predictor(cfg.heat));
      BalanceResult r =
          balancers[l]->balance({std::vector<double>(E, 0.0), topo, shape, cfg.redundant_experts, nullptr});
      current.push_back(std::make_shared<const Placement>(std::move(r.placement)));
    }
    const bool learn = cfg.rebalance_every > 0;
    // Keep the batches planning generated when they fit comfortably, so the run does not generate them twice.
    const double batch_bytes = static_cast<double>(calls) * R * cfg.tokens * shape.topk * 8.0;
    if (learn && batch_bytes < 1e9) planned_batches.resize(static_cast<size_t>(calls) * R);
    std::vector<double> load;
    for (int step = 0; step < cfg.steps; ++step)
      for (int l = 0; l < cfg.layers; ++l) {
        LayerPlan& lp = plan[step * cfg.layers + l];
        if (learn) {
          load.assign(E, 0.0);
          for (int r = 0; r < R; ++r) {
            RoutingBatch b = routing->batch(step, l, r);
            validate_batch(b, E, routing_name.c_str());
            add_expert_load(b, load);
            if (!planned_batches.empty())
              planned_batches[static_cast<size_t>(step * cfg.layers + l) * R + r] = std::move(b);
          }
          const std::vector<double> forecast = oracle ? load : predictors[l]->predict();
          if (!forecast.empty()) lp.forecast_mape = forecast_mape(forecast, load);
          if (step % cfg.rebalance_every == 0 && !forecast.empty()) {
            BalanceResult r = balancers[l]->balance({forecast, topo, shape, cfg.redundant_experts, current[l].get()});
            const int moved = slots_changed(*current[l], r.placement);
            if (moved > 0) {
              lp.slots_moved = moved;
              lp.moves = plan_moves(*current[l], r.placement, topo);
              current[l] = std::make_shared<const Placement>(std::move(r.placement));
            }
          }
          if (!oracle) predictors[l]->observe(load);
        }
        lp.placement = current[l];
      }
  }
  // Cached layouts: the driver runs the LRU the ranks' engines will run, over the same keys in the same order,
  // and vouches for a call exactly when its key is still cached; engines then skip notify together.
  if (cfg.layout_cache < 0)
    throw EplabError("--layout-cache must be 0 (off) or an LRU capacity, got " + std::to_string(cfg.layout_cache));
  if (cfg.layout_cache > 0) {
    LayoutCache driver_lru(cfg.layout_cache);
    std::vector<RoutingBatch> generated(R);
    std::vector<const RoutingBatch*> batches(R);
    for (int call = 0; call < calls; ++call) {
      const int step = call / cfg.layers, l = call % cfg.layers;
      for (int r = 0; r < R; ++r) {
        if (!planned_batches.empty()) {
          batches[r] = &planned_batches[static_cast<size_t>(call) * R + r];
        } else {
          generated[r] = routing->batch(step, l, r);
          batches[r] = &generated[r];
        }
      }
      LayerPlan& lp = plan[call];
      lp.layout_key = layout_key(l, *lp.placement, batches);
      lp.layout_cached = driver_lru.find(lp.layout_key) != nullptr;
      if (!lp.layout_cached) driver_lru.insert({lp.layout_key, 0, {}, 0});
    }
  }
  // Weights are fp8 where the model's wire format is (DeepSeek-V3), bf16 otherwise.
  const double expert_bytes = expert_weight_bytes(shape, shape.dispatch_codec.rfind("fp8", 0) == 0 ? 1.0 : 2.0);
  const bool verify = cfg.verify && !phantom;
  const bool pregenerate = planned_batches.empty() && caps.modeled_time && routing->concurrent() && R > 1;
  const ExpertTransform transform(cfg.transform, shape.num_experts, shape.hidden, cfg.seed);

  EngineOptions eopts;
  eopts.algorithm = cfg.algorithm;
  eopts.dispatch_codec = dcodec;
  eopts.combine_codec = ccodec;
  eopts.phantom = phantom;
  eopts.timeout_s = cfg.timeout_s;
  eopts.layout_cache = cfg.layout_cache;
  create_algorithm(cfg.algorithm);  // fail early on an unknown name
  double tolerance = 0;
  bool lossless = true;
  {
    auto d = create_codec(dcodec), c = create_codec(ccodec);
    lossless = d->lossless() && c->lossless();
    // Combine may re-encode a partial sum once on its way back (hierarchical), hence the factor 2.
    tolerance = 2.0 * (d->error_bound_for(shape.hidden) + 2.0 * c->error_bound_for(shape.hidden)) + 1e-6;
  }

  std::vector<RankRecord> records(R);
  // Per call: selections per slot (all sources), each rank's layer time and migration time.
  const int S = plan[0].placement->num_slots();
  std::vector<std::atomic<int64_t>> call_slot_load(static_cast<size_t>(calls) * S);
  std::vector<std::vector<double>> layer_time(R, std::vector<double>(calls, 0.0)), migration_time = layer_time;
  std::vector<std::vector<Delivery5>> expected(R), received(R);
  std::atomic<int> done_calls{0};
  if (cfg.mode != "inference" && cfg.mode != "training")
    throw EplabError("--mode must be inference or training, got '" + cfg.mode + "'");
  Timeline timeline(topo, !cfg.timeline.empty());
  std::vector<StepRecord> step_records(R);
  std::vector<LayoutCacheStats> layout_stats(R);

  backend->launch(topo, LaunchOptions{phantom, cfg.timeout_s, cfg.sim_model}, [&](Fabric& f) {
    const int me = f.rank();
    RankRecord& rec = records[me];
    rec.slot_load.assign(S, 0);
    EpEngine engine(f, shape, *plan[0].placement, eopts);
    f.record_links(&timeline);
    StepDriver steps({f, engine, shape, cfg, timeline, phantom}, step_records[me]);
    const std::unique_ptr<ReplicaSelector> selector = make_selector();
    std::vector<int32_t> slots;
    std::vector<int64_t> my_load;  // selections per slot in this call
    std::vector<uint8_t> move_hdr(8 * R, 0), move_in(8 * R, 0);
    std::vector<float> x, partials, out, ref;
    for (int step = 0; step < cfg.steps; ++step)
      for (int layer = 0; layer < cfg.layers; ++layer) {
        const int call = step * cfg.layers + layer;
        if (layer == 0) steps.begin_step(step);
        const Placement& placement = *plan[call].placement;
        if (!plan[call].moves.empty()) {
          // Migration: one all-to-all-v round carrying each (old holder -> new holder) pair's expert weights.
          // Simulated fabrics charge the bytes as phantom payload; real-byte fabrics get an 8-byte placeholder
          // per pair and no time is reported (eplab does not hold expert weights to move).
          std::vector<double> bytes_to(R, 0.0), bytes_from(R, 0.0);
          for (const Transfer& t : plan[call].moves) {
            if (t.src == me) bytes_to[t.dst] += expert_bytes;
            if (t.dst == me) bytes_from[t.src] += expert_bytes;
          }
          std::vector<PeerSend> sends;
          std::vector<PeerRecv> recvs;
          for (int p = 0; p < R; ++p) {
            if (bytes_to[p] > 0)
              sends.push_back(
                  {p, ConstBuf{move_hdr.data() + 8 * p, 8, phantom ? static_cast<size_t>(bytes_to[p]) - 8 : 0}});
            if (bytes_from[p] > 0) recvs.push_back({p, MutBuf{move_in.data() + 8 * p, 8}});
          }
          f.set_phase("migration");
          f.barrier();
          const double t0 = f.now();
          f.alltoallv(make_tag(Phase::kUser, step, layer, 1), sends, recvs, Deadline::after(f, cfg.timeout_s));
          f.barrier();
          if (phantom) migration_time[me][call] = f.now() - t0;
        }
        RoutingBatch batch;
        if (!planned_batches.empty()) {
          batch = std::move(planned_batches[static_cast<size_t>(call) * R + me]);
        } else if (pregenerate) {
          std::lock_guard<std::mutex> lock(routing_mu);
          if (call_batches_for != call) generate_call(call);
          batch = std::move(call_batches[me]);
        } else {
          std::lock_guard<std::mutex> lock(routing_mu);
          batch = routing->batch(step, layer, me);
        }
        validate_batch(batch, shape.num_experts, routing_name.c_str());
        if (batch.topk != shape.topk)
          throw EplabError(routing_name + ": batch has top-" + std::to_string(batch.topk) + ", model '" + shape.name +
                           "' uses top-" + std::to_string(shape.topk));
        selector->select(batch, placement, topo, slots);
        // Past selection only the slots and weights are read, unless verification replays the batch; at scale
        // every simulated rank holds its batch through dispatch at once, so the expert ids go now.
        if (!verify) std::vector<int32_t>().swap(batch.topk_idx);
        my_load.assign(S, 0);
        for (int32_t s : slots)
          if (s >= 0) ++my_load[s];
        for (int s = 0; s < S; ++s)
          if (my_load[s] > 0) {
            rec.slot_load[s] += my_load[s];
            call_slot_load[static_cast<size_t>(call) * S + s].fetch_add(my_load[s], std::memory_order_relaxed);
          }
        if (!phantom) {
          x.resize(static_cast<size_t>(batch.num_tokens) * shape.hidden);
          make_activations(cfg.seed, step, layer, me, batch.num_tokens, shape.hidden, x.data());
        }
        DispatchArgs args{step,
                          layer,
                          batch.num_tokens,
                          batch.topk,
                          slots.data(),
                          batch.topk_weights.data(),
                          phantom ? nullptr : x.data(),
                          &placement};
        args.layout_key = plan[call].layout_key;
        args.layout_cached = plan[call].layout_cached;
        const EngineStats before = engine.stats();
        f.barrier();
        const double call_t0 = f.now();
        Handle h = engine.dispatch(args);
        ForwardTimes ft{call_t0, f.now()};
        rec.recv_rows.push_back(h.rows);
        // Expert compute: the model's FFN cost on simulated fabrics, the verification transform on real bytes.
        f.set_phase("expert");
        const ComputeCost ecost = expert_cost(h, shape, dcodec);
        f.compute(ecost);
        ft.expert1 = f.now();
        if (!phantom) expert_partials(h, placement, transform, engine.reduction(), shape.hidden, partials);
        if (verify) {
          for (int i = 0; i < h.recv.size(); ++i)
            for (int s = h.recv.sel_begin[i]; s < h.recv.sel_begin[i + 1]; ++s)
              received[me].push_back({call, me, h.recv.src_rank[i], h.recv.token[i], h.recv.sel_slot[s]});
          for (int t = 0; t < batch.num_tokens; ++t)
            for (int k = 0; k < batch.topk; ++k) {
              const int32_t s = slots[static_cast<size_t>(t) * batch.topk + k];
              if (s >= 0) expected[me].push_back({call, placement.rank_of_slot(s), me, t, s});
            }
        }
        out.resize(phantom ? 0 : static_cast<size_t>(batch.num_tokens) * shape.hidden);
        f.barrier();
        ft.combine0 = f.now();
        engine.combine(h, phantom ? nullptr : partials.data(), phantom ? nullptr : out.data());
        rec.record_call(before, engine.stats());
        layer_time[me][call] = f.now() - call_t0;
        ft.combine1 = f.now();
        ft.notify_s = rec.notify.back().time_s;
        steps.forward_layer(args, ecost, ft);
        if (verify) {
          ref.resize(out.size());
          reference_combine(batch, slots, x.data(), placement, topo, transform, engine.reduction(), shape.hidden,
                            ref.data());
          rec.add_comparison(out.data(), ref.data(), out.size());
        }
        if (layer == cfg.layers - 1) steps.end_step(step);
        if (me == 0 && progress) progress(++done_calls, calls);
      }
    layout_stats[me] = engine.context().layout_cache.stats;
  });

  // Every selection reached exactly the rank holding its slot, exactly once.
  VerifyResult vr;
  vr.ran = verify;
  vr.lossless = lossless;
  vr.tolerance = lossless ? 0.0 : tolerance;
  vr.transform = cfg.transform;
  if (verify) {
    std::vector<Delivery5> all_expected, all_received;
    for (int r = 0; r < R; ++r) {
      all_expected.insert(all_expected.end(), expected[r].begin(), expected[r].end());
      all_received.insert(all_received.end(), received[r].begin(), received[r].end());
    }
    std::sort(all_expected.begin(), all_expected.end());
    std::sort(all_received.begin(), all_received.end());
    vr.selections = all_expected.size();
    vr.delivery_ok = all_expected == all_received;
    if (!vr.delivery_ok) {
      std::vector<Delivery5> missing, extra;
      std::set_difference(all_expected.begin(), all_expected.end(), all_received.begin(), all_received.end(),
                          std::back_inserter(missing));
      std::set_difference(all_received.begin(), all_received.end(), all_expected.begin(), all_expected.end(),
                          std::back_inserter(extra));
      vr.missing = missing.size();
      vr.extra = extra.size();
    }
  }

  ReportInputs in{cfg, spec, shape, dcodec, ccodec, routing_name, phantom, backend->name(), calls};
  in.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  nlohmann::json report = build_report(in, records, vr);
  add_step_report(report, in, step_records, timeline.link_summary());
  if (!cfg.timeline.empty()) timeline.write(cfg.timeline, {{"mode", cfg.mode}, {"backend", in.backend}});

  // Policies: per-step imbalance, forecast error, migration and layer time (maxima over ranks).
  nlohmann::json per_step = nlohmann::json::array();
  double total_bytes = 0, total_mig_s = 0, total_layer_s = 0;
  int rebalances = 0;
  long total_moved = 0;
  for (int step = 0; step < cfg.steps; ++step) {
    double rank_imb = 0, slot_imb = 0, mape = 0, bytes = 0, mig_s = 0, layer_s = 0;
    int mape_n = 0, moved = 0;
    for (int l = 0; l < cfg.layers; ++l) {
      const int call = step * cfg.layers + l;
      const LayerPlan& lp = plan[call];
      std::vector<double> slot(S), rank(R, 0.0);
      for (int s = 0; s < S; ++s) {
        slot[s] = static_cast<double>(call_slot_load[static_cast<size_t>(call) * S + s].load());
        rank[lp.placement->rank_of_slot(s)] += slot[s];
      }
      rank_imb += max_over_mean(rank) / cfg.layers;
      slot_imb += max_over_mean(slot) / cfg.layers;
      if (lp.forecast_mape >= 0) mape += lp.forecast_mape, ++mape_n;
      bytes += static_cast<double>(lp.moves.size()) * expert_bytes;
      moved += lp.slots_moved;
      rebalances += lp.slots_moved > 0;
      double lt = 0, mt = 0;
      for (int r = 0; r < R; ++r) lt = std::max(lt, layer_time[r][call]), mt = std::max(mt, migration_time[r][call]);
      layer_s += lt;
      mig_s += mt;
    }
    nlohmann::json row = {{"step", step},
                          {"rank_max_over_mean", rank_imb},
                          {"slot_max_over_mean", slot_imb},
                          {"forecast_mape_pct", mape_n ? nlohmann::json(mape / mape_n) : nlohmann::json(nullptr)},
                          {"slots_moved", moved},
                          {"migration_bytes", bytes},
                          {"migration_time_s", mig_s},
                          {"layer_time_s", layer_s}};
    per_step.push_back(std::move(row));
    total_bytes += bytes;
    total_mig_s += mig_s;
    total_layer_s += layer_s;
    total_moved += moved;
  }
  report["policies"] = {{"balancer", cfg.balancer},
                        {"heat", cfg.heat},
                        {"rebalance_every", cfg.rebalance_every},
                        {"replica_selection", cfg.replica_selection},
                        {"redundant_experts", cfg.redundant_experts}};
  report["migration"] = {{"bytes", total_bytes},
                         {"time_s", total_mig_s},
                         {"rebalances", rebalances},
                         {"slots_moved", total_moved},
                         {"expert_weight_bytes", expert_bytes},
                         {"timed", phantom}};
  report["step_time"] = {
      {"layers_s", total_layer_s}, {"migration_s", total_mig_s}, {"total_s", total_layer_s + total_mig_s}};
  report["per_step"] = std::move(per_step);
  // Every rank hits and misses on the same calls (the driver vouches for all), so counts are rank 0's. Time
  // saved: per hit, the notify time the miss that filled its entry measured on that rank (modeled time on sim,
  // wall time on emu), then the maximum over ranks, as a layer waits for its slowest rank.
  double saved_s = 0, missed_s = 0;
  for (const LayoutCacheStats& ls : layout_stats)
    saved_s = std::max(saved_s, ls.notify_time_saved_s), missed_s = std::max(missed_s, ls.notify_time_missed_s);
  const LayoutCacheStats& ls0 = layout_stats[0];
  report["layout_cache"] = {{"capacity", cfg.layout_cache},
                            {"hits", ls0.hits},
                            {"misses", ls0.misses},
                            {"hit_rate", ls0.hit_rate()},
                            {"notify_time_saved_s", saved_s},
                            {"notify_time_on_misses_s", missed_s},
                            {"timed", phantom}};
  return report;
}

}  // namespace eplab
