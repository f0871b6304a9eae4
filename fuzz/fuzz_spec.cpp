// Every spec parser: the bytes are the text after --routing, --dispatch-codec, --balancer, --heat,
// --replica-selection or --fault. One source, one executable per kind (EPLAB_FUZZ_SPEC_*). A spec that is accepted is
// then used once on a small model, and must keep its promises (a codec's size bound and error bound).
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "driver/faults.hpp"
#include "fuzz/fuzz_util.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "policies/replica/replica_selector.hpp"
#include "traces/routing_source.hpp"

using namespace eplab;

namespace {

std::vector<double> some_heat(int n, int shift) {
  std::vector<double> heat(n);
  for (int e = 0; e < n; ++e) heat[e] = static_cast<double>((e * 7 + shift) % 11) * 3.0 + (e == shift % n ? 40 : 0);
  return heat;
}

[[maybe_unused]] void use_routing(const std::string& spec) {
  // trace:PATH reads a file; fuzz_trace_reader covers the reader.
  if (spec.find("trace") != std::string::npos) return;
  const RoutingParams params{fuzz::small_model(), fuzz::small_cluster(), 8, 1, 0, 0};
  auto source = make_routing(spec, params);
  for (int rank : {0, 3}) validate_batch(source->batch(1, 1, rank), params.shape.num_experts, "fuzz");
}

[[maybe_unused]] void use_codec(const std::string& spec) {
  auto codec = create_codec(spec);
  constexpr int kTokens = 3, kHidden = 160;
  std::vector<float> x(kTokens * kHidden), y(x.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * (i % 5 == 0 ? 9.f : 1.f);
  for (int round = 0; round < 2; ++round) {  // twice: a stateful codec's second message depends on the first
    std::vector<uint8_t> wire;
    codec->encode(x.data(), kTokens, kHidden, wire, 7);
    if (wire.size() > codec->max_encoded_size(kTokens, kHidden))
      fuzz::invariant_failed(spec + ": encoded " + std::to_string(wire.size()) + " bytes, max_encoded_size says " +
                             std::to_string(codec->max_encoded_size(kTokens, kHidden)));
    codec->decode(wire.data(), wire.size(), kTokens, kHidden, y.data(), 7);
    double err = 0, norm = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      err += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
      norm += double(x[i]) * x[i];
    }
    const double rel = std::sqrt(err / norm), bound = codec->error_bound_for(kHidden);
    if (!(rel <= bound * (1 + 1e-6) + 1e-7))
      fuzz::invariant_failed(spec + ": relative error " + std::to_string(rel) + " above its bound " +
                             std::to_string(bound));
  }
}

[[maybe_unused]] void use_balancer(const std::string& spec) {
  auto balancer = create_balancer(spec);
  BalanceInput in{some_heat(16, 3), fuzz::small_cluster(), fuzz::small_model(), 4, nullptr};
  BalanceResult first = balancer->balance(in);
  in.heat = some_heat(16, 9);
  in.current = &first.placement;
  balancer->balance(in);
}

[[maybe_unused]] void use_heat(const std::string& spec) {
  auto predictor = create_heat_predictor(spec);
  for (int step = 0; step < 4; ++step) {
    predictor->observe(some_heat(16, step));
    for (double v : predictor->predict())
      if (!std::isfinite(v)) fuzz::invariant_failed(spec + ": a forecast from finite loads is not finite");
  }
}

[[maybe_unused]] void use_replica(const std::string& spec) {
  auto selector = create_replica_selector(spec);
  const RoutingParams params{fuzz::small_model(), fuzz::small_cluster(), 8, 1, 0, 0};
  const RoutingBatch batch = make_routing("uniform", params)->batch(0, 0, 1);
  const Placement placement = Placement::contiguous(16, 4, 4);
  std::vector<int32_t> slots(batch.topk_idx.size());
  selector->select(batch, placement, params.topology, slots);
}

[[maybe_unused]] void use_fault(const std::string& spec) {
  const FaultSpec f = parse_fault(spec);
  if (f.rank < 0 || f.step < -1 || !std::isfinite(f.at_s) || !std::isfinite(f.slowdown) || !std::isfinite(f.stall_s) ||
      !std::isfinite(f.bw_pct) || f.slowdown < 1 || f.period < 0)
    fuzz::invariant_failed(spec + ": parsed to a field out of its range");
  // The failover selection with that rank (mod the small cluster's 4) failed at step 0.
  FaultPlan fp;
  fp.faults = {f};
  fp.dead_from.assign(4, FaultPlan::kNever);
  fp.dead_from[f.rank % 4] = 0;
  fp.failure_steps = {0};
  fp.detect_steps = {0};
  fp.gpus_per_node = 2;
  fp.first_affected_step = 0;
  const RoutingParams params{fuzz::small_model(), fuzz::small_cluster(), 8, 1, 0, 0};
  const RoutingBatch batch = make_routing("uniform", params)->batch(0, 0, 1);
  const Placement placement = Placement::contiguous(16, 4, 4);
  std::vector<int32_t> slots;
  RoundRobinSelector().select(batch, placement, params.topology, slots);
  FaultCounts counts;
  failover_select(fp, 0, 0, 1, batch, placement, slots, counts);
  for (int32_t s : slots)
    if (s >= 0 && placement.rank_of_slot(s) == f.rank % 4)
      fuzz::invariant_failed(spec + ": a selection still goes to the failed rank");
  if (counts.lost + counts.rerouted > static_cast<int64_t>(slots.size()))
    fuzz::invariant_failed(spec + ": more selections counted than the batch holds");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string spec(reinterpret_cast<const char*>(data), size);
  fuzz::refused_or_done([&] {
#if defined(EPLAB_FUZZ_SPEC_ROUTING)
    use_routing(spec);
#elif defined(EPLAB_FUZZ_SPEC_CODEC)
    use_codec(spec);
#elif defined(EPLAB_FUZZ_SPEC_BALANCER)
    use_balancer(spec);
#elif defined(EPLAB_FUZZ_SPEC_HEAT)
    use_heat(spec);
#elif defined(EPLAB_FUZZ_SPEC_REPLICA)
    use_replica(spec);
#elif defined(EPLAB_FUZZ_SPEC_FAULT)
    use_fault(spec);
#else
#error "define one EPLAB_FUZZ_SPEC_* kind"
#endif
  });
  return 0;
}
