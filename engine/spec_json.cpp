// One table of fields per spec, read and written by the same generic code, so a field added to the table is
// dumped, loaded and checked alike.
#include "engine/spec_json.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

using nlohmann::json;

// The values a number field accepts: above `lo` (or at it, when closed) and at most `hi`.
struct Range {
  double lo;
  bool lo_open;
  double hi = std::numeric_limits<double>::infinity();

  bool holds(double v) const { return (lo_open ? v > lo : v >= lo) && v <= hi; }
  std::string text() const {
    auto num = [](double v) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g", v);
      return std::string(buf);
    };
    if (std::isinf(hi)) return (lo_open ? "> " : ">= ") + num(lo);
    return std::string("in ") + (lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + "]";
  }
};
constexpr Range kPositive{0, true};
constexpr Range kNonNegative{0, false};
constexpr Range kAtLeastOne{1, false};
constexpr Range kFraction{0, true, 1};

template <class S>
struct Field {
  std::string key;
  std::function<json(const S&)> get;
  // Throws EplabError beginning with `where` ("cluster file 'a.json': field 'nodes'") when the value does not fit.
  std::function<void(S&, const json&, const std::string& where)> set;
};

[[noreturn]] void bad_value(const std::string& where, const std::string& expected, const json& got) {
  throw EplabError(where + ": expected " + expected + ", got " + got.dump());
}

// Fields reach their value through `at`, a callable taking the spec (const or not) and returning a reference, so
// a nested value such as the GPU's SM count is a field like any other.
template <class M>
auto member(M m) {
  return [m](auto& s) -> auto& { return s.*m; };
}

template <class S, class At>
Field<S> integer(std::string key, At at, Range r) {
  return {key, [at](const S& s) { return json(at(s)); },
          [at, r](S& s, const json& v, const std::string& where) {
            if (!v.is_number_integer() || !r.holds(v.get<double>()) || std::abs(v.get<double>()) > 1e9)
              bad_value(where, "an integer " + r.text(), v);
            at(s) = v.get<int>();
          }};
}

template <class S, class At>
Field<S> real(std::string key, At at, Range r) {
  return {key, [at](const S& s) { return json(at(s)); },
          [at, r](S& s, const json& v, const std::string& where) {
            if (!v.is_number() || !r.holds(v.get<double>())) bad_value(where, "a number " + r.text(), v);
            at(s) = v.get<double>();
          }};
}

// A string, checked by `check` (which throws with its own reason) when given.
template <class S, class At>
Field<S> text(std::string key, At at, std::function<void(const std::string&)> check = {}) {
  return {key, [at](const S& s) { return json(at(s)); },
          [at, check](S& s, const json& v, const std::string& where) {
            if (!v.is_string()) bad_value(where, "a string", v);
            if (check) {
              try {
                check(v.get<std::string>());
              } catch (const EplabError& e) {
                throw EplabError(where + ": " + e.what());
              }
            }
            at(s) = v.get<std::string>();
          }};
}

template <class S, class E>
Field<S> choice(std::string key, E S::*m, std::vector<std::pair<E, std::string>> names) {
  return {key,
          [m, names](const S& s) {
            for (const auto& [e, n] : names)
              if (s.*m == e) return json(n);
            return json(nullptr);
          },
          [m, names](S& s, const json& v, const std::string& where) {
            std::string known;
            for (const auto& [e, n] : names) {
              if (v.is_string() && v.get<std::string>() == n) {
                s.*m = e;
                return;
              }
              known += (known.empty() ? "\"" : " or \"") + n + "\"";
            }
            bad_value(where, known, v);
          }};
}

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

template <class S>
json to_json(const S& s, const std::vector<Field<S>>& fields) {
  json j = json::object();
  for (const auto& f : fields) j[f.key] = f.get(s);
  return j;
}

// Reads `j` over `preset(base)` when it names one, else requires every field. A missing name with a base becomes
// `source`, so a report never passes a modified spec off as the preset.
template <class S>
S from_json(const json& j, const std::string& source, const std::vector<Field<S>>& fields,
            S (*preset)(const std::string&)) {
  if (!j.is_object()) throw EplabError(source + ": expected a JSON object, got " + j.dump());
  std::string known = "base";
  for (const auto& f : fields) known += ", " + f.key;
  for (const auto& [key, value] : j.items()) {
    bool ok = key == "base";
    for (const auto& f : fields) ok = ok || f.key == key;
    if (!ok) throw EplabError(source + ": unknown field '" + key + "' (known: " + known + ")");
  }
  S s{};
  const bool based = j.contains("base");
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
  for (const auto& f : fields) {
    if (j.contains(f.key)) {
      f.set(s, j[f.key], source + ": field '" + f.key + "'");
    } else if (!based) {
      throw EplabError(source + ": missing field '" + f.key +
                       "' (give every field, or \"base\": a preset that the missing ones come from)");
    }
  }
  return s;
}

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw EplabError(source + ": not valid JSON: " + e.what());
  }
}

// `kind` is "cluster" or "model"; `load` turns the parsed JSON into the spec.
template <class S>
S resolve(const std::string& ref, const std::string& kind, S (*load)(const json&, const std::string&),
          S (*preset)(const std::string&)) {
  if (!ref.empty() && ref.front() == '{') return load(parse_json(ref, kind + " JSON"), kind + " JSON");
  if (ref.size() > 5 && ref.compare(ref.size() - 5, 5, ".json") == 0) {
    const std::string source = kind + " file '" + ref + "'";
    std::ifstream in(ref);
    if (!in) throw EplabError("cannot read " + source);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return load(parse_json(text, source), source);
  }
  return preset(ref);
}

}  // namespace

json cluster_to_json(const ClusterSpec& c) { return to_json(c, cluster_fields()); }
json model_to_json(const MoeShape& m) { return to_json(m, model_fields()); }

ClusterSpec cluster_from_json(const json& j, const std::string& source) {
  ClusterSpec c = from_json(j, source, cluster_fields(), &cluster_preset);
  Topology{c};  // the checks that span fields
  return c;
}

MoeShape model_from_json(const json& j, const std::string& source) {
  MoeShape m = from_json(j, source, model_fields(), &model_preset);
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
