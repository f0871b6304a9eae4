// Balancers and heat predictors from Python: built-ins by spec, and subclasses written in Python (override
// Balancer.place(inp) and HeatPredictor.observe(load) / predict()) that C++ calls through trampolines.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstring>
#include <type_traits>

#include "engine/error.hpp"
#include "engine/spec_json.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "python/bindings.hpp"

namespace eplab::py_bind {

namespace {

std::vector<double> as_doubles(const py::handle& x) {
  auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(x);
  if (!a || a.ndim() != 1) throw EplabError("expected a 1-D array of per-expert loads");
  return std::vector<double>(a.data(), a.data() + a.size());
}

// A copy of `v` as an int64 array of `shape`.
template <class T>
py::array_t<int64_t> int64_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<int64_t> a(shape);
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

py::array_t<int32_t> slots_array(const Placement& p) {
  return py::array_t<int32_t>({static_cast<py::ssize_t>(p.num_ranks()), static_cast<py::ssize_t>(p.slots_per_rank())},
                              p.slot_expert().data());
}

// What a Python Balancer.place() sees: the forecast and the cluster, read-only.
struct PyBalanceInput {
  py::array_t<double> heat;
  int num_experts, nodes, gpus_per_node, num_ranks, redundant, slots_per_rank;
  std::string model;
  py::object current;  // [ranks, slots_per_rank] int32, or None at startup
};

class PyBalancer : public Balancer {
 public:
  std::string name() const override {
    std::string out;
    call_python("balancer name", [&] {
      py::object v = overridden_attr(self(), py::type::of<Balancer>(), "name");
      out = v ? py::str(v).cast<std::string>() : py::type::of(self()).attr("__name__").cast<std::string>();
    });
    return out;
  }

  BalanceResult balance(const BalanceInput& in) override {
    const std::string who = "balancer " + name() + " place";
    const int ranks = in.topology.size();
    const int slots = (in.shape.num_experts + in.redundant) / ranks;
    std::vector<int32_t> slot_expert;
    std::string decision = "python balancer " + name();
    call_python(who.c_str(), [&] {
      py::function f = py::get_override(static_cast<const Balancer*>(this), "place");
      if (!f) throw EplabError("eplab.Balancer subclass " + name() + " must define place(self, inp)");
      PyBalanceInput pin{py::array_t<double>(in.heat.size(), in.heat.data()),
                         in.shape.num_experts,
                         in.topology.nodes(),
                         in.topology.gpus_per_node(),
                         ranks,
                         in.redundant,
                         slots,
                         in.shape.name,
                         in.current ? py::object(slots_array(*in.current)) : py::object(py::none())};
      py::object r = f(pin);
      if (py::isinstance<py::dict>(r)) {
        py::dict d = r.cast<py::dict>();
        if (d.contains("decision")) decision = d["decision"].cast<std::string>();
        r = d["slot_expert"];
      }
      auto a = int32_ids(r, who + " must return slot_expert: one expert id per slot; it");
      slot_expert.assign(a.data(), a.data() + a.size());
    });
    if (static_cast<int>(slot_expert.size()) != ranks * slots)
      throw EplabError(who + " returned " + std::to_string(slot_expert.size()) + " slots, expected " +
                       std::to_string(ranks) + " ranks x " + std::to_string(slots) + " slots");
    BalanceResult r;
    r.placement = Placement(in.shape.num_experts, ranks, std::move(slot_expert));
    r.slots_moved = in.current ? slots_changed(*in.current, r.placement) : 0;
    r.rebalanced = in.current == nullptr || r.slots_moved > 0;
    r.decision = decision;
    return r;
  }

 private:
  py::handle self() const { return py::detail::get_object_handle(this, py::detail::get_type_info(typeid(Balancer))); }
};

class PyHeatPredictor : public HeatPredictor {
 public:
  std::string name() const override {
    std::string out;
    call_python("heat predictor name", [&] {
      py::object v = overridden_attr(self(), py::type::of<HeatPredictor>(), "name");
      out = v ? py::str(v).cast<std::string>() : py::type::of(self()).attr("__name__").cast<std::string>();
    });
    return out;
  }
  void observe(const std::vector<double>& load) override {
    call_python("heat predictor observe", [&] {
      py::function f = py::get_override(static_cast<const HeatPredictor*>(this), "observe");
      if (!f) throw EplabError("eplab.HeatPredictor subclass must define observe(self, load)");
      f(py::array_t<double>(load.size(), load.data()));
    });
  }
  std::vector<double> predict() const override {
    std::vector<double> out;
    call_python("heat predictor predict", [&] {
      py::function f = py::get_override(static_cast<const HeatPredictor*>(this), "predict");
      if (!f) throw EplabError("eplab.HeatPredictor subclass must define predict(self)");
      py::object r = f();
      if (!r.is_none()) out = as_doubles(r);
    });
    return out;
  }

 private:
  py::handle self() const {
    return py::detail::get_object_handle(this, py::detail::get_type_info(typeid(HeatPredictor)));
  }
};

// What the engine gets for a registered Python balancer or predictor: forwards to the Python object, which it
// keeps alive. The factory calls a Python `make()` (eplab.run passes one that returns the instance, or a fresh
// copy of a predictor per layer) with the GIL held; an exception there is parked like any trampoline's.
template <class T>
std::shared_ptr<py::object> make_python_policy(const std::shared_ptr<py::object>& make, const std::string& name,
                                               T*& target) {
  std::shared_ptr<py::object> obj;
  call_python("python policy factory", [&] {
    py::object o = (*make)();
    if (!py::isinstance<T>(o))
      throw EplabError("the factory registered as '" + name + "' returned " +
                       py::str(py::type::of(o).attr("__name__")).cast<std::string>() + ", not an eplab." +
                       (std::is_same_v<T, Balancer> ? "Balancer" : "HeatPredictor"));
    target = o.cast<T*>();
    obj = share_object(std::move(o));
  });
  return obj;
}

class ForwardingBalancer : public Balancer {
 public:
  ForwardingBalancer(const std::shared_ptr<py::object>& make, const std::string& name)
      : obj_(make_python_policy(make, name, target_)) {}
  std::string name() const override { return target_->name(); }
  BalanceResult balance(const BalanceInput& in) override { return target_->balance(in); }

 private:
  Balancer* target_ = nullptr;
  std::shared_ptr<py::object> obj_;
};

class ForwardingHeatPredictor : public HeatPredictor {
 public:
  ForwardingHeatPredictor(const std::shared_ptr<py::object>& make, const std::string& name)
      : obj_(make_python_policy(make, name, target_)) {}
  std::string name() const override { return target_->name(); }
  void observe(const std::vector<double>& load) override { target_->observe(load); }
  std::vector<double> predict() const override { return target_->predict(); }

 private:
  HeatPredictor* target_ = nullptr;
  std::shared_ptr<py::object> obj_;
};

py::dict result_dict(const BalanceResult& r) {
  py::dict d;
  d["slot_expert"] = slots_array(r.placement);
  d["rebalanced"] = r.rebalanced;
  d["slots_moved"] = r.slots_moved;
  d["migration_bytes"] = r.migration_bytes;
  d["migration_s"] = r.migration_s;
  d["predicted_gain_s"] = r.predicted_gain_s;
  d["decision"] = r.decision;
  return d;
}

}  // namespace

void bind_policies(py::module_& m) {
  py::class_<PyBalanceInput>(m, "BalanceInput", "What Balancer.place() is given.")
      .def_readonly("heat", &PyBalanceInput::heat, "forecast load per logical expert")
      .def_readonly("num_experts", &PyBalanceInput::num_experts)
      .def_readonly("nodes", &PyBalanceInput::nodes)
      .def_readonly("gpus_per_node", &PyBalanceInput::gpus_per_node)
      .def_readonly("num_ranks", &PyBalanceInput::num_ranks)
      .def_readonly("redundant", &PyBalanceInput::redundant, "extra slots beyond one per expert")
      .def_readonly("slots_per_rank", &PyBalanceInput::slots_per_rank)
      .def_readonly("model", &PyBalanceInput::model)
      .def_readonly("current", &PyBalanceInput::current, "deployed slot_expert [ranks, slots], or None");

  py::class_<Balancer, PyBalancer, std::shared_ptr<Balancer>>(m, "Balancer", R"doc(
Places logical experts onto physical slots from a heat forecast. Built-ins: eplab.create_balancer(spec).
Subclass it in Python (call super().__init__()) and define place(self, inp: BalanceInput) returning one
expert id per slot (rank-major, inp.num_ranks * inp.slots_per_rank ids; every expert at least once), or a
dict {"slot_expert": ..., "decision": "..."}.)doc")
      .def(py::init<>())
      .def_property_readonly("name", &Balancer::name)
      .def(
          "balance",
          [](Balancer& b, const py::handle& heat, int nodes, int gpus_per_node, int redundant, const std::string& model,
             const py::object& current) {
            BalanceInput in;
            in.heat = as_doubles(heat);
            ClusterSpec spec = cluster_preset("h800-cx7");
            spec.nodes = nodes;
            spec.gpus_per_node = gpus_per_node;
            in.topology = Topology(spec);
            in.shape = resolve_model(model);
            in.redundant = redundant;
            Placement cur;
            if (!current.is_none()) {
              auto a = int32_ids(current, "current (a slot_expert array)");
              cur = Placement(in.shape.num_experts, spec.size(), std::vector<int32_t>(a.data(), a.data() + a.size()));
              in.current = &cur;
            }
            BalanceResult r = call_without_gil([&] { return b.balance(in); });
            return result_dict(r);
          },
          py::arg("heat"), py::arg("nodes") = 1, py::arg("gpus_per_node") = 8, py::arg("redundant") = 0,
          py::arg("model") = "deepseek-v3", py::arg("current") = py::none(),
          "Runs the balancer: a dict with slot_expert [ranks, slots], rebalanced, slots_moved, decision.");

  py::class_<HeatPredictor, PyHeatPredictor, std::shared_ptr<HeatPredictor>>(m, "HeatPredictor", R"doc(
Forecasts per-expert load for the next step from the loads seen so far. Built-ins: eplab.create_heat_predictor.
Subclass it in Python (call super().__init__()) and define observe(self, load) and predict(self) -> array.)doc")
      .def(py::init<>())
      .def_property_readonly("name", &HeatPredictor::name)
      .def(
          "observe", [](HeatPredictor& h, const py::handle& load) { h.observe(as_doubles(load)); }, py::arg("load"))
      .def("predict", [](const HeatPredictor& h) {
        std::vector<double> v = h.predict();
        return py::array_t<double>(v.size(), v.data());
      });

  m.def(
      "create_balancer", [](const std::string& spec) { return std::shared_ptr<Balancer>(create_balancer(spec)); },
      py::arg("spec"), "none | eplb[:mode=...,groups=G] | migration-aware[:horizon=H,...]");
  m.def("balancer_names", &balancer_names);
  m.def(
      "create_heat_predictor",
      [](const std::string& spec) { return std::shared_ptr<HeatPredictor>(create_heat_predictor(spec)); },
      py::arg("spec"), "last | ema:alpha=A | window:w=W | trend:alpha=A,beta=B");
  m.def("heat_predictor_names", &heat_predictor_names);
  m.def(
      "register_balancer",
      [](const std::string& name, py::object make) {
        auto shared = share_object(std::move(make));
        register_balancer_factory(name, [shared, name] { return std::make_unique<ForwardingBalancer>(shared, name); });
      },
      py::arg("name"), py::arg("make"),
      "Registers make() -> eplab.Balancer under `name`: create_balancer(name) and runs then call it.");
  m.def("unregister_balancer", &unregister_balancer_factory, py::arg("name"));
  m.def("registered_balancers", &registered_balancer_factories, "Names registered with register_balancer().");
  m.def(
      "register_heat_predictor",
      [](const std::string& name, py::object make) {
        auto shared = share_object(std::move(make));
        register_heat_predictor_factory(
            name, [shared, name] { return std::make_unique<ForwardingHeatPredictor>(shared, name); });
      },
      py::arg("name"), py::arg("make"),
      "Registers make() -> eplab.HeatPredictor under `name`; runs call it once per layer, so return a fresh one.");
  m.def("unregister_heat_predictor", &unregister_heat_predictor_factory, py::arg("name"));
  m.def("registered_heat_predictors", &registered_heat_predictor_factories,
        "Names registered with register_heat_predictor().");
  m.def(
      "rank_load",
      [](const py::handle& slot_expert, int num_experts, const py::handle& heat) {
        auto a = int32_ids(slot_expert, "slot_expert");
        if (a.ndim() != 2) throw EplabError("slot_expert must be a [ranks, slots] array");
        Placement p(num_experts, static_cast<int>(a.shape(0)), std::vector<int32_t>(a.data(), a.data() + a.size()));
        std::vector<double> v = rank_load(p, as_doubles(heat));
        return py::array_t<double>(v.size(), v.data());
      },
      py::arg("slot_expert"), py::arg("num_experts"), py::arg("heat"),
      "Each rank's load when every expert's load splits evenly over its replicas.");
  m.def(
      "heat_eval",
      [](HeatPredictor& p, const py::handle& loads) {
        auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(loads);
        if (!a || a.ndim() != 2) throw EplabError("loads must be a [steps, experts] array");
        const size_t steps = a.shape(0), experts = a.shape(1);
        std::vector<double> mape;
        call_without_gil([&] {
          for (size_t s = 0; s < steps; ++s) {
            std::vector<double> actual(a.data() + s * experts, a.data() + (s + 1) * experts);
            if (s > 0) mape.push_back(forecast_mape(p.predict(), actual));
            p.observe(actual);
          }
        });
        return py::array_t<double>(mape.size(), mape.data());
      },
      py::arg("predictor"), py::arg("loads"),
      "Feeds [steps, experts] loads one step at a time; the forecast error (MAPE, %) of each step after the first.");
  m.def(
      "forecast_mape",
      [](const py::handle& f, const py::handle& a) { return forecast_mape(as_doubles(f), as_doubles(a)); },
      py::arg("forecast"), py::arg("actual"), "Mean absolute percentage error over experts with load > 0.");

  // DeepSeek's EPLB with its own shapes (eplab.policies).
  m.def(
      "rebalance_experts",
      [](const py::handle& weight, int num_replicas, int num_groups, int num_nodes, int num_gpus) {
        auto a = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(weight);
        if (!a || a.ndim() != 2)
          throw EplabError("rebalance_experts: weight must be a 2-D [layers, experts] array of loads, got " +
                           (a ? std::to_string(a.ndim()) + " dimensions" : std::string("something not numeric")));
        const py::ssize_t layers = a.shape(0), experts = a.shape(1);
        if (layers < 1 || experts < 1)
          throw EplabError("rebalance_experts: weight is " + std::to_string(layers) + " x " + std::to_string(experts) +
                           "; expected at least one layer and one expert");
        std::vector<double> w(a.data(), a.data() + a.size());
        EplbTables t;
        call_without_gil(
            [&] { t = rebalance_experts(w, static_cast<int>(layers), num_replicas, num_groups, num_nodes, num_gpus); });
        return py::make_tuple(int64_array(t.phy2log, {layers, num_replicas}),
                              int64_array(t.log2phy, {layers, experts, static_cast<py::ssize_t>(t.max_replicas)}),
                              int64_array(t.logcnt, {layers, experts}));
      },
      py::arg("weight"), py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"), py::arg("num_gpus"));
  m.def(
      "balanced_packing",
      [](const py::handle& weight, int num_packs) {
        const Packing p = balanced_packing(as_doubles(weight), num_packs);
        const auto n = static_cast<py::ssize_t>(p.pack.size());
        return py::make_tuple(int64_array(p.pack, {n}), int64_array(p.rank_in_pack, {n}));
      },
      py::arg("weight"), py::arg("num_packs"));
  m.def(
      "replicate_experts",
      [](const py::handle& weight, int num_phy) {
        const Replication r = replicate_experts(as_doubles(weight), num_phy);
        return py::make_tuple(int64_array(r.phy_to_log, {num_phy}), int64_array(r.replica, {num_phy}),
                              int64_array(r.count, {static_cast<py::ssize_t>(r.count.size())}));
      },
      py::arg("weight"), py::arg("num_phy"));
}

}  // namespace eplab::py_bind
