// One table of fields per spec (engine/json_fields.hpp), so a field added to the table is dumped, loaded and
// checked alike.
#include "engine/spec_json.hpp"

#include <vector>

#include "engine/error.hpp"
#include "engine/json_fields.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

using nlohmann::json;

using namespace fields;

const std::vector<Field<ClusterSpec>>& cluster_fields() {
  using C = ClusterSpec;
  // GPU fields sit flat beside the cluster's ("gpu", "gpu_sms", ...), as eplab.cluster() has always shown them.
  static const std::vector<Field<C>> f = {
      text<C>("name", member(&C::name)),
      text<C>("description", member(&C::description)),
      integer<C>("nodes", member(&C::nodes), kAtLeastOne),
      integer<C>("gpus_per_node", member(&C::gpus_per_node), kAtLeastOne),
      text<C>(
          "gpu", [](auto& c) -> auto& { return c.gpu.name; }),
      integer<C>(
          "gpu_sms", [](auto& c) -> auto& { return c.gpu.sms; }, kAtLeastOne),
      real<C>(
          "gpu_hbm_GBps", [](auto& c) -> auto& { return c.gpu.hbm_GBps; }, kPositive),
      real<C>(
          "gpu_bf16_tflops", [](auto& c) -> auto& { return c.gpu.bf16_tflops; }, kPositive),
      real<C>(
          "gpu_fp8_tflops", [](auto& c) -> auto& { return c.gpu.fp8_tflops; }, kPositive),
      choice<C>("scaleup", &C::scaleup, {{ScaleUpKind::kNvlink, "nvlink"}, {ScaleUpKind::kPcie, "pcie"}}),
      real<C>("scaleup_GBps", member(&C::scaleup_GBps), kPositive),
      real<C>("scaleup_latency_s", member(&C::scaleup_latency_s), kNonNegative),
      integer<C>("nics_per_gpu", member(&C::nics_per_gpu), kAtLeastOne),
      real<C>("nic_GBps", member(&C::nic_GBps), kPositive),
      real<C>("nic_latency_s", member(&C::nic_latency_s), kNonNegative),
      choice<C>("scaleout", &C::scaleout,
                {{ScaleOutKind::kRailOptimized, "rail-optimized"}, {ScaleOutKind::kFatTree, "fat-tree"}}),
      real<C>("oversubscription", member(&C::oversubscription), kAtLeastOne),
      real<C>("switch_latency_s", member(&C::switch_latency_s), kNonNegative),
      real<C>("scaleup_efficiency", member(&C::scaleup_efficiency), kFraction),
      real<C>("nic_efficiency", member(&C::nic_efficiency), kFraction),
      real<C>("round_overhead_s", member(&C::round_overhead_s), kNonNegative),
      real<C>("compute_efficiency", member(&C::compute_efficiency), kFraction),
  };
  return f;
}

void check_codec(const std::string& spec) { create_codec(spec); }

const std::vector<Field<MoeShape>>& model_fields() {
  using M = MoeShape;
  static const std::vector<Field<M>> f = {
      text<M>("name", member(&M::name)),
      integer<M>("num_experts", member(&M::num_experts), kAtLeastOne),
      integer<M>("topk", member(&M::topk), kAtLeastOne),
      integer<M>("hidden", member(&M::hidden), kAtLeastOne),
      integer<M>("expert_ffn", member(&M::expert_ffn), kAtLeastOne),
      integer<M>("max_nodes_per_token", member(&M::max_nodes_per_token), kNonNegative),
      integer<M>("num_layers", member(&M::num_layers), kAtLeastOne),
      text<M>("dispatch_codec", member(&M::dispatch_codec), check_codec),
      text<M>("combine_codec", member(&M::combine_codec), check_codec),
      real<M>("dense_params", member(&M::dense_params), kNonNegative),
  };
  return f;
}

// Model fields a file may leave out whatever its base: files written before the field existed still load.
const std::vector<Field<MoeShape>>& optional_model_fields() {
  using M = MoeShape;
  static const std::vector<Field<M>> f = {
      integer<M>("num_expert_groups", member(&M::num_expert_groups), kAtLeastOne),
  };
  return f;
}

// Reads `j` over `preset(base)` when it names one, else requires every field. A missing name with a base becomes
// `source`, so a report never passes a modified spec off as the preset.
template <class S>
S from_json(const json& j, const std::string& source, const std::vector<Field<S>>& fields,
            S (*preset)(const std::string&)) {
  S s{};
  const bool based = j.is_object() && j.contains("base");
  if (based) {
    const json& b = j["base"];
    if (!b.is_string()) bad_value(source + ": field 'base'", "a preset name", b);
    try {
      s = preset(b.get<std::string>());
    } catch (const EplabError& e) {
      throw EplabError(source + ": field 'base': " + e.what());
    }
    s.name = source;
  }
  read(j, source, fields, s,
       {!based, " (give every field, or \"base\": a preset that the missing ones come from)", {"base"}});
  return s;
}

// `kind` is "cluster" or "model"; `load` turns the parsed JSON into the spec.
template <class S>
S resolve(const std::string& ref, const std::string& kind, S (*load)(const json&, const std::string&),
          S (*preset)(const std::string&)) {
  if (!ref.empty() && ref.front() == '{') return load(parse(ref, kind + " JSON"), kind + " JSON");
  if (ref.size() > 5 && ref.compare(ref.size() - 5, 5, ".json") == 0) {
    const std::string source = kind + " file '" + ref + "'";
    return load(parse_file(ref, source), source);
  }
  return preset(ref);
}

}  // namespace

json cluster_to_json(const ClusterSpec& c) { return to_json(c, cluster_fields()); }
json model_to_json(const MoeShape& m) {
  json j = to_json(m, model_fields());
  j.update(to_json(m, optional_model_fields()));
  return j;
}

ClusterSpec cluster_from_json(const json& j, const std::string& source) {
  ClusterSpec c = from_json(j, source, cluster_fields(), &cluster_preset);
  Topology{c};  // the checks that span fields
  return c;
}

MoeShape model_from_json(const json& j, const std::string& source) {
  json required = j, optional = json::object();
  if (j.is_object())
    for (const auto& f : optional_model_fields())
      if (j.contains(f.key)) optional[f.key] = j[f.key], required.erase(f.key);
  MoeShape m = from_json(required, source, model_fields(), &model_preset);
  read(optional, source, optional_model_fields(), m, {});
  if (m.topk > m.num_experts)
    throw EplabError(source + ": field 'topk': expected at most num_experts (" + std::to_string(m.num_experts) +
                     "), got " + std::to_string(m.topk));
  return m;
}

ClusterSpec resolve_cluster(const std::string& ref) {
  return resolve(ref, "cluster", &cluster_from_json, &cluster_preset);
}
MoeShape resolve_model(const std::string& ref) { return resolve(ref, "model", &model_from_json, &model_preset); }

}  // namespace eplab
