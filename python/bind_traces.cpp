// Routing: generators and trace files. Batches come back as dicts of numpy arrays ([tokens, topk] expert ids
// and weights) so a notebook can histogram them without knowing the C++ types.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "engine/error.hpp"
#include "engine/spec_json.hpp"
#include "python/bindings.hpp"
#include "traces/routing_source.hpp"
#include "traces/trace_file.hpp"
#include "traces/trace_tools.hpp"

namespace eplab::py_bind {

namespace {

RoutingParams make_params(const std::string& model, const std::string& cluster, int nodes, int gpus_per_node,
                          int tokens, uint64_t seed) {
  ClusterSpec spec = resolve_cluster(cluster);
  if (nodes > 0) spec.nodes = nodes;
  if (gpus_per_node > 0) spec.gpus_per_node = gpus_per_node;
  if (tokens < 1) throw EplabError("tokens must be at least 1 per rank, got " + std::to_string(tokens));
  RoutingParams p;
  p.shape = resolve_model(model);
  p.topology = Topology(spec);
  p.tokens_per_rank = tokens;
  p.seed = seed;
  return p;
}

py::dict batch_dict(const RoutingBatch& b) {
  py::dict d;
  d["step"] = b.step;
  d["layer"] = b.layer;
  d["src_rank"] = b.src_rank;
  d["num_tokens"] = b.num_tokens;
  d["topk"] = b.topk;
  const std::vector<py::ssize_t> shape{b.num_tokens, b.topk};
  d["topk_idx"] = py::array_t<int32_t>(shape, b.topk_idx.data());
  d["topk_weights"] = py::array_t<float>(shape, b.topk_weights.data());
  return d;
}

py::dict header_dict(const TraceHeader& h) {
  py::dict d;
  d["format_version"] = h.format_version;
  d["model"] = h.shape.name;
  d["num_experts"] = h.shape.num_experts;
  d["topk"] = h.shape.topk;
  d["cluster"] = h.cluster;
  d["nodes"] = h.nodes;
  d["gpus_per_node"] = h.gpus_per_node;
  d["num_steps"] = h.num_steps;
  d["num_layers"] = h.num_layers;
  d["num_ranks"] = h.num_ranks;
  d["tokens_per_rank"] = h.tokens_per_rank;
  d["generator"] = h.provenance.generator;
  d["seed"] = h.provenance.seed;
  d["created_by"] = h.provenance.created_by;
  return d;
}

}  // namespace

namespace {

// The engine's view of a Python routing source: each batch() takes the GIL and calls the object's batch(step,
// layer, rank), which returns a dict with topk_idx and topk_weights ([tokens, topk]) or that pair. Called one
// rank at a time (not concurrent); a Python exception is parked and raised by eplab.run as itself.
class PythonRouting final : public RoutingSource {
 public:
  explicit PythonRouting(py::object obj) : obj_(share_object(std::move(obj))) {
    py::gil_scoped_acquire gil;
    name_ = read_attr("name", std::string("python"));
    steps_ = read_attr("num_steps", -1);
    layers_ = read_attr("num_layers", -1);
    ranks_ = read_attr("num_ranks", -1);
  }
  std::string name() const override { return name_; }
  int num_steps() const override { return steps_; }
  int num_layers() const override { return layers_; }
  int num_ranks() const override { return ranks_; }
  RoutingBatch batch(int step, int layer, int rank) override {
    RoutingBatch b;
    call_python("routing source batch", [&] {
      py::object r = obj_->attr("batch")(step, layer, rank);
      py::object idx, w;
      if (py::isinstance<py::dict>(r)) {
        py::dict d = r;
        if (!d.contains("topk_idx")) throw EplabError("RoutingSource.batch must return topk_idx (and topk_weights)");
        idx = d["topk_idx"];
        w = d.contains("topk_weights") ? py::object(d["topk_weights"]) : py::object(py::none());
      } else {
        py::tuple t = py::cast<py::tuple>(r);
        if (t.size() != 2) throw EplabError("RoutingSource.batch must return (topk_idx, topk_weights) or a dict");
        idx = t[0];
        w = t[1];
      }
      auto ids = int32_ids(idx, "RoutingSource.batch: topk_idx");
      if (ids.ndim() != 2) throw EplabError("RoutingSource.batch: topk_idx must be [tokens, topk]");
      b.num_tokens = static_cast<int>(ids.shape(0));
      b.topk = static_cast<int>(ids.shape(1));
      b.topk_idx.assign(ids.data(), ids.data() + ids.size());
      if (w.is_none()) {
        for (int32_t e : b.topk_idx) b.topk_weights.push_back(e >= 0 ? 1.0f / static_cast<float>(b.topk) : 0.0f);
      } else {
        auto ws = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(w);
        if (!ws || ws.ndim() != 2 || ws.shape(0) != ids.shape(0) || ws.shape(1) != ids.shape(1))
          throw EplabError("RoutingSource.batch: topk_weights must have topk_idx's shape");
        b.topk_weights.assign(ws.data(), ws.data() + ws.size());
      }
    });
    b.step = step, b.layer = layer, b.src_rank = rank;
    return b;
  }

 private:
  template <class T>
  T read_attr(const char* name, T fallback) {
    py::object v = py::getattr(*obj_, name, py::none());
    if (v.is_none()) return fallback;
    if (PyCallable_Check(v.ptr())) v = v();
    return v.cast<T>();
  }
  std::shared_ptr<py::object> obj_;
  std::string name_;
  int steps_, layers_, ranks_;
};

}  // namespace

void bind_traces(py::module_& m) {
  py::class_<SourceHandle>(m, "RoutingSource", R"doc(
Routing decisions by (step, layer, rank): a generator, a trace, arrays, or a Python subclass that defines
batch(self, step, layer, rank) -> dict(topk_idx=[tokens, topk], topk_weights=...) (or the pair), and optionally
name, num_steps, num_layers, num_ranks; pass it as eplab.run(routing=...).)doc")
      .def(py::init<>())
      .def_property_readonly("name", &SourceHandle::name)
      .def_property_readonly("num_steps", &SourceHandle::num_steps, "-1 for generators (unbounded)")
      .def_property_readonly("num_layers", &SourceHandle::num_layers, "-1 for generators (unbounded)")
      .def_property_readonly("num_ranks", &SourceHandle::num_ranks, "-1 for generators (any)")
      .def(
          "batch",
          [](SourceHandle& s, int step, int layer, int rank) {
            RoutingBatch b = call_without_gil([&] { return s.batch(step, layer, rank); });
            return batch_dict(b);
          },
          py::arg("step") = 0, py::arg("layer") = 0, py::arg("rank") = 0,
          "One batch as a dict: topk_idx and topk_weights are [tokens, topk] arrays (-1: no expert).");

  m.def(
      "routing_source",
      [](const std::string& spec, const std::string& model, const std::string& cluster, int nodes, int gpus_per_node,
         int tokens, uint64_t seed) {
        RoutingParams p = make_params(model, cluster, nodes, gpus_per_node, tokens, seed);
        return SourceHandle(make_routing(spec, p));
      },
      py::arg("routing") = "uniform", py::arg("model") = "deepseek-v3", py::arg("cluster") = "h800-cx7",
      py::arg("nodes") = 0, py::arg("gpus_per_node") = 0, py::arg("tokens") = 4096, py::arg("seed") = 1,
      "A routing generator (uniform, deepep, zipf:S, hotset:..., correlated:...) or trace:PATH.");

  m.def(
      "python_routing", [](py::object obj) { return SourceHandle(std::make_shared<PythonRouting>(std::move(obj))); },
      py::arg("source"), "Wraps a Python subclass of eplab.RoutingSource for the engine (eplab.run does this).");

  m.def(
      "array_routing",
      [](const py::list& idx, const py::list& weights, int steps, int layers, int ranks) {
        if (idx.size() != weights.size())
          throw EplabError("routing arrays: " + std::to_string(idx.size()) + " index arrays, " +
                           std::to_string(weights.size()) + " weight arrays");
        std::vector<RoutingBatch> batches(idx.size());
        for (size_t i = 0; i < idx.size(); ++i) {
          auto ids = int32_ids(idx[i], "routing arrays: batch " + std::to_string(i) + ": topk_idx");
          auto w = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(weights[i]);
          if (!w || ids.ndim() != 2 || w.ndim() != 2 || ids.shape(0) != w.shape(0) ||
              ids.shape(1) != w.shape(1))
            throw EplabError("routing arrays: batch " + std::to_string(i) +
                             " needs topk_idx and topk_weights of one shape [tokens, topk]");
          RoutingBatch& b = batches[i];
          b.num_tokens = static_cast<int>(ids.shape(0));
          b.topk = static_cast<int>(ids.shape(1));
          b.topk_idx.assign(ids.data(), ids.data() + ids.size());
          b.topk_weights.assign(w.data(), w.data() + w.size());
        }
        return SourceHandle(make_array_routing(std::move(batches), steps, layers, ranks));
      },
      py::arg("topk_idx"), py::arg("topk_weights"), py::arg("steps"), py::arg("layers"), py::arg("ranks"),
      "Routing from arrays: one [tokens, topk] pair per (step, layer, rank), step-major (see "
      "eplab.traces.from_arrays).");

  m.def(
      "write_trace",
      [](const std::string& path, const std::string& routing, const std::string& model, const std::string& cluster,
         int nodes, int gpus_per_node, int tokens, uint64_t seed, int steps, int layers) {
        TraceGenOptions o;
        o.routing = routing;
        o.params = make_params(model, cluster, nodes, gpus_per_node, tokens, seed);
        o.steps = steps;
        o.layers = layers;
        o.created_by = "eplab python";
        TraceHeader h = call_without_gil([&] { return generate_trace(o, path); });
        return header_dict(h);
      },
      py::arg("path"), py::arg("routing") = "uniform", py::arg("model") = "deepseek-v3",
      py::arg("cluster") = "h800-cx7", py::arg("nodes") = 0, py::arg("gpus_per_node") = 0, py::arg("tokens") = 4096,
      py::arg("seed") = 1, py::arg("steps") = 1, py::arg("layers") = 1,
      "Writes a generator's routing (steps x layers x ranks batches) to a trace file; returns its header.");

  m.def(
      "trace_header", [](const std::string& path) { return header_dict(read_trace_header(path)); }, py::arg("path"),
      "A trace file's header (model, cluster, grid, provenance) without reading the batches.");

  m.def(
      "read_trace",
      [](const std::string& path) {
        std::vector<RoutingBatch> batches = call_without_gil([&] {
          TraceReader r(path);
          std::vector<RoutingBatch> out;
          while (auto b = r.next()) out.push_back(std::move(*b));
          return out;
        });
        py::list out;
        for (const auto& b : batches) out.append(batch_dict(b));
        return out;
      },
      py::arg("path"), "Every batch of a trace file, in file order (meant for small traces).");

  m.def(
      "trace_summary",
      [](const std::string& path) {
        TraceSummary s = call_without_gil([&] { return summarize_trace(path); });
        py::dict d;
        d["header"] = header_dict(s.header);
        d["file_bytes"] = s.file_bytes;
        d["num_batches"] = s.num_batches;
        d["num_tokens"] = s.num_tokens;
        d["selections"] = s.selections;
        d["expert_load"] = py::array_t<uint64_t>(s.expert_load.size(), s.expert_load.data());
        d["load_max_over_mean"] = s.load_max_over_mean;
        d["load_cv"] = s.load_cv;
        d["unused_experts"] = s.unused_experts;
        d["text"] = format_trace_summary(s);
        return d;
      },
      py::arg("path"), "Tallies a trace: per-expert load, hottest experts, skew (what `eplab trace info` shows).");
}

}  // namespace eplab::py_bind
