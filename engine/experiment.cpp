#include "engine/experiment.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>

#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "engine/reference.hpp"
#include "engine/report.hpp"
#include "traces/routing_source.hpp"

namespace eplab {
namespace {

struct Delivery5 {
  int32_t call, dest, src, token, slot;
  auto operator<=>(const Delivery5&) const = default;
};

// Roofline inputs for one rank's experts: a SwiGLU FFN (three hidden x ffn matmuls) per received selection;
// weights are read once per active slot, activations in and out once per selection.
ComputeCost expert_cost(const Handle& h, const Placement& placement, const MoeShape& shape,
                        const std::string& dispatch_codec) {
  std::vector<int> per_slot;
  int active = 0;
  for (int32_t s : h.recv.sel_slot) {
    const int local = s % placement.slots_per_rank();
    if (static_cast<int>(per_slot.size()) <= local) per_slot.resize(local + 1, 0);
    if (per_slot[local]++ == 0) ++active;
  }
  const double sels = static_cast<double>(h.recv.sel_slot.size());
  const double weight_bytes = dispatch_codec.rfind("fp8", 0) == 0 ? 1.0 : 2.0;
  ComputeCost c;
  c.flops = 2.0 * 3.0 * shape.hidden * shape.expert_ffn * sels;
  c.hbm_bytes = active * 3.0 * shape.hidden * shape.expert_ffn * weight_bytes + sels * shape.hidden * 2.0 * 2.0;
  c.what = "expert";
  return c;
}

}  // namespace

nlohmann::json run_experiment(const RunConfig& cfg, const ProgressFn& progress) {
  const auto wall0 = std::chrono::steady_clock::now();
  ClusterSpec spec = cluster_preset(cfg.cluster);
  if (cfg.nodes < 0 || cfg.gpus_per_node < 0) throw EplabError("--nodes and --gpus-per-node must be positive");
  if (cfg.nodes > 0) spec.nodes = cfg.nodes;
  if (cfg.gpus_per_node > 0) spec.gpus_per_node = cfg.gpus_per_node;
  const Topology topo(spec);
  MoeShape shape = model_preset(cfg.model);
  if (cfg.hidden < 0) throw EplabError("--hidden must be positive, got " + std::to_string(cfg.hidden));
  if (cfg.hidden > 0) shape.hidden = cfg.hidden;
  if (cfg.experts < 0) throw EplabError("--experts must be positive, got " + std::to_string(cfg.experts));
  if (cfg.experts > 0) shape.num_experts = cfg.experts;
  if (cfg.tokens < 1) throw EplabError("--tokens must be at least 1 per rank, got " + std::to_string(cfg.tokens));
  if (cfg.steps < 1 || cfg.layers < 1) throw EplabError("--steps and --layers must be at least 1");
  if (shape.num_experts % topo.size() != 0 && topo.size() % shape.num_experts != 0)
    throw EplabError("model '" + shape.name + "' has " + std::to_string(shape.num_experts) + " experts, which do not divide over " +
                     std::to_string(topo.size()) + " ranks (" + std::to_string(spec.nodes) + " nodes x " +
                     std::to_string(spec.gpus_per_node) + " GPUs)");
  if (topo.size() > shape.num_experts)
    throw EplabError("model '" + shape.name + "' has " + std::to_string(shape.num_experts) + " experts, fewer than the " +
                     std::to_string(topo.size()) + " ranks; every rank needs at least one expert");
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
  if (!phantom && !caps.real_payload)
    throw EplabError("backend '" + cfg.backend + "' cannot move real bytes");

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

  const Placement placement = Placement::contiguous(shape.num_experts, topo.size(), cfg.redundant_experts);
  const bool verify = cfg.verify && !phantom;
  const ExpertTransform transform(cfg.transform, shape.num_experts, shape.hidden, cfg.seed);

  EngineOptions eopts;
  eopts.algorithm = cfg.algorithm;
  eopts.dispatch_codec = dcodec;
  eopts.combine_codec = ccodec;
  eopts.phantom = phantom;
  eopts.timeout_s = cfg.timeout_s;
  create_algorithm(cfg.algorithm);  // fail early on an unknown name
  double tolerance = 0;
  bool lossless = true;
  {
    auto d = create_codec(dcodec), c = create_codec(ccodec);
    lossless = d->lossless() && c->lossless();
    // Combine may re-encode a partial sum once on its way back (hierarchical), hence the factor 2.
    tolerance = 2.0 * (d->error_bound_for(shape.hidden) + 2.0 * c->error_bound_for(shape.hidden)) + 1e-6;
  }

  const int R = topo.size(), calls = cfg.steps * cfg.layers;
  std::vector<RankRecord> records(R);
  std::vector<std::vector<Delivery5>> expected(R), received(R);
  std::atomic<int> done_calls{0};

  backend->launch(topo, LaunchOptions{phantom, cfg.timeout_s, cfg.sim_model}, [&](Fabric& f) {
    const int me = f.rank();
    RankRecord& rec = records[me];
    rec.slot_load.assign(placement.num_slots(), 0);
    EpEngine engine(f, shape, placement, eopts);
    RoundRobinSelector selector;
    std::vector<int32_t> slots;
    std::vector<float> x, partials, out, ref;
    for (int step = 0; step < cfg.steps; ++step)
      for (int layer = 0; layer < cfg.layers; ++layer) {
        const int call = step * cfg.layers + layer;
        RoutingBatch batch;
        {
          std::lock_guard<std::mutex> lock(routing_mu);
          batch = routing->batch(step, layer, me);
        }
        validate_batch(batch, shape.num_experts, routing_name.c_str());
        if (batch.topk != shape.topk)
          throw EplabError(routing_name + ": batch has top-" + std::to_string(batch.topk) + ", model '" + shape.name +
                           "' uses top-" + std::to_string(shape.topk));
        selector.select(batch, placement, topo, slots);
        for (int32_t s : slots)
          if (s >= 0) ++rec.slot_load[s];
        if (!phantom) {
          x.resize(static_cast<size_t>(batch.num_tokens) * shape.hidden);
          make_activations(cfg.seed, step, layer, me, batch.num_tokens, shape.hidden, x.data());
        }
        DispatchArgs args{step, layer, batch.num_tokens, batch.topk, slots.data(), batch.topk_weights.data(),
                          phantom ? nullptr : x.data()};
        const EngineStats before = engine.stats();
        f.barrier();
        Handle h = engine.dispatch(args);
        rec.recv_rows.push_back(h.recv.size());
        // Expert compute: the model's FFN cost on simulated fabrics, the verification transform on real bytes.
        f.set_phase("expert");
        f.compute(expert_cost(h, placement, shape, dcodec));
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
        engine.combine(h, phantom ? nullptr : partials.data(), phantom ? nullptr : out.data());
        rec.record_call(before, engine.stats());
        if (verify) {
          ref.resize(out.size());
          reference_combine(batch, slots, x.data(), placement, topo, transform, engine.reduction(), shape.hidden,
                            ref.data());
          rec.add_comparison(out.data(), ref.data(), out.size());
        }
        if (me == 0 && progress) progress(++done_calls, calls);
      }
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
  return build_report(in, records, vr);
}

}  // namespace eplab
