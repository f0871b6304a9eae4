// Presets and specs: clusters, models, backends and the names every spec accepts, so a notebook can list
// what exists and start from a preset instead of typing parameters.
#include <pybind11/stl.h>

#include "engine/backend.hpp"
#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"
#include "python/bindings.hpp"
#include "traces/routing_source.hpp"

namespace eplab::py_bind {

namespace {

py::dict cluster_dict(const ClusterSpec& c) {
  py::dict d;
  d["name"] = c.name;
  d["description"] = c.description;
  d["nodes"] = c.nodes;
  d["gpus_per_node"] = c.gpus_per_node;
  d["gpus"] = c.size();
  d["gpu"] = c.gpu.name;
  d["gpu_sms"] = c.gpu.sms;
  d["gpu_hbm_GBps"] = c.gpu.hbm_GBps;
  d["gpu_bf16_tflops"] = c.gpu.bf16_tflops;
  d["gpu_fp8_tflops"] = c.gpu.fp8_tflops;
  d["scaleup"] = c.scaleup == ScaleUpKind::kNvlink ? "nvlink" : "pcie";
  d["scaleup_GBps"] = c.scaleup_GBps;
  d["scaleup_latency_s"] = c.scaleup_latency_s;
  d["nics_per_gpu"] = c.nics_per_gpu;
  d["nic_GBps"] = c.nic_GBps;
  d["nic_latency_s"] = c.nic_latency_s;
  d["scaleout"] = c.scaleout == ScaleOutKind::kRailOptimized ? "rail-optimized" : "fat-tree";
  d["oversubscription"] = c.oversubscription;
  d["switch_latency_s"] = c.switch_latency_s;
  return d;
}

py::dict model_dict(const MoeShape& s) {
  py::dict d;
  d["name"] = s.name;
  d["num_experts"] = s.num_experts;
  d["topk"] = s.topk;
  d["hidden"] = s.hidden;
  d["expert_ffn"] = s.expert_ffn;
  d["max_nodes_per_token"] = s.max_nodes_per_token;
  d["num_layers"] = s.num_layers;
  d["dispatch_codec"] = s.dispatch_codec;
  d["combine_codec"] = s.combine_codec;
  d["dense_params"] = s.dense_params;
  return d;
}

}  // namespace

void bind_presets(py::module_& m) {
  m.def("cluster_presets", &cluster_preset_names, "Names of the cluster presets (h800-cx7, h100-ib, ...).");
  m.def("model_presets", &model_preset_names, "Names of the model presets (deepseek-v3, mixtral-8x7b, ...).");
  m.def(
      "cluster", [](const std::string& name) { return cluster_dict(cluster_preset(name)); }, py::arg("name"),
      "A cluster preset as a dict (GPUs per node, NVLink and NIC bandwidths, latencies, GPU peak rates).");
  m.def(
      "model", [](const std::string& name) { return model_dict(model_preset(name)); }, py::arg("name"),
      "A model preset as a dict (experts, top-k, hidden size, FFN size, wire formats).");
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
