// eplab.run(): keyword arguments onto RunConfig, the experiment with the GIL released, the report back as
// JSON text (the Python side parses it, so the dict matches what `eplab run --report` writes byte for byte).
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <functional>
#include <map>
#include <type_traits>

#include "engine/error.hpp"
#include "driver/experiment.hpp"
#include "python/bindings.hpp"

namespace eplab::py_bind {

namespace {

using Setter = std::function<void(RunConfig&, const py::handle&)>;

template <class T>
Setter field(T RunConfig::*member) {
  return [member](RunConfig& c, const py::handle& v) { c.*member = v.cast<T>(); };
}

// Fields that RunConfig gains as the engine grows (policies, training mode, timelines): bound when present, so
// this file builds against any version of experiment.hpp. The lambda is generic so the branch not taken is
// never instantiated.
#define EPLAB_OPTIONAL_FIELD(s, name)        \
  if constexpr (requires(C & c) { c.name; }) \
    s.emplace(#name, [](auto& c, const py::handle& v) { c.name = v.cast<std::decay_t<decltype(c.name)>>(); });

template <class C = RunConfig>
void add_optional_fields(std::map<std::string, Setter>& s) {
  EPLAB_OPTIONAL_FIELD(s, balancer)
  EPLAB_OPTIONAL_FIELD(s, heat)
  EPLAB_OPTIONAL_FIELD(s, rebalance_every)
  EPLAB_OPTIONAL_FIELD(s, replica_selection)
  EPLAB_OPTIONAL_FIELD(s, mode)
  EPLAB_OPTIONAL_FIELD(s, overlap_allreduce)
  EPLAB_OPTIONAL_FIELD(s, timeline)
}

// One line per RunConfig field a caller may set; the names are the command line's with '_' for '-'.
const std::map<std::string, Setter>& setters() {
  static const std::map<std::string, Setter> s = [] {
    std::map<std::string, Setter> s = {
        {"backend", field(&RunConfig::backend)},
        {"cluster", field(&RunConfig::cluster)},
        {"nodes", field(&RunConfig::nodes)},
        {"gpus_per_node", field(&RunConfig::gpus_per_node)},
        {"model", field(&RunConfig::model)},
        {"tokens", field(&RunConfig::tokens)},
        {"routing", field(&RunConfig::routing)},
        {"trace", field(&RunConfig::trace)},
        {"hidden", field(&RunConfig::hidden)},
        {"algorithm", field(&RunConfig::algorithm)},
        {"dispatch_codec", field(&RunConfig::dispatch_codec)},
        {"combine_codec", field(&RunConfig::combine_codec)},
        {"transform", field(&RunConfig::transform)},
        {"payload", field(&RunConfig::payload)},
        {"steps", field(&RunConfig::steps)},
        {"layers", field(&RunConfig::layers)},
        {"seed", field(&RunConfig::seed)},
        {"redundant_experts", field(&RunConfig::redundant_experts)},
        {"timeout_s", field(&RunConfig::timeout_s)},
        {"verify", field(&RunConfig::verify)},
        {"experts", field(&RunConfig::experts)},
        {"sim_model", field(&RunConfig::sim_model)},
    };
    add_optional_fields(s);
    return s;
  }();
  return s;
}

RunConfig make_config(const py::dict& kwargs) {
  RunConfig cfg;
  for (auto [key, value] : kwargs) {
    const std::string k = key.cast<std::string>();
    auto it = setters().find(k);
    if (it == setters().end()) {
      std::string known;
      for (const auto& [name, s] : setters()) known += (known.empty() ? "" : ", ") + name;
      throw EplabError("eplab.run: unknown option '" + k + "' (known: " + known + ")");
    }
    if (value.is_none()) continue;  // None: keep the default
    try {
      it->second(cfg, value);
    } catch (const py::cast_error&) {
      throw EplabError("eplab.run: option " + k + "=" + py::repr(value).cast<std::string>() + " has the wrong type");
    }
  }
  return cfg;
}

}  // namespace

void bind_run(py::module_& m) {
  m.def(
      "run_options",
      [] {
        std::vector<std::string> names;
        for (const auto& [name, s] : setters()) names.push_back(name);
        return names;
      },
      "The keyword arguments eplab.run() maps onto the engine's RunConfig.");

  m.def(
      "run_json",
      [](const py::dict& options, const py::object& progress) {
        RunConfig cfg = make_config(options);
        ProgressFn fn;
        if (!progress.is_none()) {
          auto cb = share_object(progress);
          fn = [cb](int done, int total) { try_python([&] { (*cb)(done, total); }); };
        }
        return call_without_gil([&] { return run_experiment(cfg, fn).dump(); });
      },
      py::arg("options"), py::arg("progress") = py::none(),
      "Runs one experiment (GIL released) and returns its report as JSON text; see eplab.run().");

  m.def(
      "format_summary", [](const std::string& report) { return format_summary(nlohmann::json::parse(report)); },
      py::arg("report_json"), "The few lines `eplab run` prints for a report.");
}

}  // namespace eplab::py_bind
