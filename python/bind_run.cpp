// eplab.run(): keyword arguments onto RunConfig through the run option table (driver/run_options.hpp), the
// experiment with the GIL released, the report back as JSON text (the Python side parses it, so the dict matches what
// `eplab run --report` writes byte for byte).
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "driver/experiment.hpp"
#include "driver/run_options.hpp"
#include "engine/error.hpp"
#include "python/bindings.hpp"

namespace eplab::py_bind {

namespace {

bool is_list_option(const std::string& key) {
  for (const auto& o : run_options())
    if (o.field.key == key) return o.field.type == fields::Type::kStringList;
  return false;
}

// A keyword argument's value as JSON, for the option table to check like a config file's. Lists only for list
// options (faults); elsewhere a list is the wrong type.
nlohmann::json as_json(const py::handle& v, const std::string& key) {
  if (py::isinstance<py::bool_>(v)) return v.cast<bool>();
  if (PyIndex_Check(v.ptr())) return v.cast<long long>();  // int, numpy integers
  if (py::isinstance<py::float_>(v)) return v.cast<double>();
  if (py::isinstance<py::str>(v)) return v.cast<std::string>();
  if ((py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v)) && is_list_option(key)) {
    nlohmann::json items = nlohmann::json::array();
    for (const py::handle& item : v) items.push_back(as_json(item, key));
    return items;
  }
  throw EplabError("eplab.run: option " + key + "=" + py::repr(v).cast<std::string>() + " has the wrong type");
}

// The defaults, the keyword arguments over them (None keeps a default), then the backend's defaults: the same steps
// as `eplab run` takes with a config file.
RunConfig make_config(const py::dict& kwargs) {
  RunConfig cfg = default_run_config();
  nlohmann::json j = nlohmann::json::object();
  for (auto [key, value] : kwargs) {
    const std::string k = key.cast<std::string>();
    if (!value.is_none()) j[k] = as_json(value, k);
  }
  apply_backend_defaults(cfg, read_run_config(j, "eplab.run", cfg));
  return cfg;
}

const char* type_name(fields::Type t) {
  switch (t) {
    case fields::Type::kString:
      return "str";
    case fields::Type::kInteger:
      return "int";
    case fields::Type::kNumber:
      return "float";
    case fields::Type::kBoolean:
      return "bool";
    case fields::Type::kStringList:
      return "list";
  }
  return "?";
}

}  // namespace

void bind_run(py::module_& m) {
  m.def(
      "run_options",
      [] {
        std::vector<std::string> names;
        for (const auto& o : run_options()) names.push_back(o.field.key);
        return names;
      },
      "The keyword arguments eplab.run() takes: the command line's options with '_' for '-'.");

  m.def(
      "run_option_table",
      [] {
        const nlohmann::json defaults = run_config_to_json(default_run_config());
        py::list out;
        for (const auto& o : run_options()) {
          py::dict d;
          d["name"] = o.field.key;
          d["flag"] = o.flag;
          d["type"] = type_name(o.field.type);
          d["default"] = py::module_::import("json").attr("loads")(defaults[o.field.key].dump());
          d["help"] = o.help;
          out.append(d);
        }
        return out;
      },
      "The run options (name, command-line flag, type, default, help) every front end is generated from.");

  m.def(
      "run_config_json", [](const py::dict& options) { return run_config_to_json(make_config(options)).dump(); },
      py::arg("options"),
      "The resolved configuration eplab.run(**options) would run, as the JSON `eplab run --dump-config` prints.");

  m.def(
      "run_json",
      [](const py::dict& options, const py::object& progress, const py::object& routing_source) {
        RunConfig cfg = make_config(options);
        if (!routing_source.is_none()) cfg.routing_source = routing_source.cast<SourceHandle&>().source();
        ProgressFn fn;
        if (!progress.is_none()) {
          auto cb = share_object(progress);
          fn = [cb](int done, int total) { try_python([&] { (*cb)(done, total); }); };
        }
        return call_without_gil([&] { return run_experiment(cfg, fn).dump(); });
      },
      py::arg("options"), py::arg("progress") = py::none(), py::arg("routing_source") = py::none(),
      "Runs one experiment (GIL released) and returns its report as JSON text; see eplab.run().");

  m.def(
      "format_summary", [](const std::string& report) { return format_summary(nlohmann::json::parse(report)); },
      py::arg("report_json"), "The few lines `eplab run` prints for a report.");
}

}  // namespace eplab::py_bind
