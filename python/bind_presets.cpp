// Presets and specs: clusters, models, backends and the names every spec accepts, so a notebook can list
// what exists and start from a preset instead of typing parameters.
#include <pybind11/stl.h>

#include "engine/backend.hpp"
#include "engine/moe_shape.hpp"
#include "engine/spec_json.hpp"
#include "engine/topology.hpp"
#include "python/bindings.hpp"
#include "traces/routing_source.hpp"

namespace eplab::py_bind {

namespace {

// The same JSON a --cluster / --model file holds, so a dict from eplab.cluster() edited and passed back to
// eplab.run(cluster=...) round-trips.
py::dict as_dict(const nlohmann::json& j) { return py::module_::import("json").attr("loads")(j.dump()); }

}  // namespace

void bind_presets(py::module_& m) {
  m.def("cluster_presets", &cluster_preset_names, "Names of the cluster presets (h800-cx7, h100-ib, ...).");
  m.def("model_presets", &model_preset_names, "Names of the model presets (deepseek-v3, mixtral-8x7b, ...).");
  m.def(
      "cluster", [](const std::string& name) { return as_dict(cluster_to_json(resolve_cluster(name))); },
      py::arg("name"),
      "A cluster (preset name or .json path) as the dict eplab.run(cluster=...) takes: GPUs per node, NVLink and NIC "
      "bandwidths, latencies, topology, GPU peak rates, the simulator's calibrated efficiencies.");
  m.def(
      "model", [](const std::string& name) { return as_dict(model_to_json(resolve_model(name))); }, py::arg("name"),
      "A model (preset name or .json path) as the dict eplab.run(model=...) takes: experts, top-k, hidden size, FFN "
      "size, wire formats.");
  m.def("routing_specs", &routing_spec_names, "The routing specs eplab.run(routing=...) accepts.");
  m.def("backends", &backend_names, "Backends registered in this build (a missing one explains how to enable it).");
  m.def(
      "backend_info",
      [](const std::string& name) {
        auto b = create_backend(name);
        const Caps c = b->caps();
        py::dict d;
        d["name"] = b->name();
        d["description"] = b->description();
        d["phantom_payload"] = c.phantom_payload;
        d["real_payload"] = c.real_payload;
        d["modeled_time"] = c.modeled_time;
        return d;
      },
      py::arg("name"), "What a backend is and can do; raises eplab.Error saying how to enable one this build lacks.");
}

}  // namespace eplab::py_bind
