// The one extension module, `eplab._eplab`: each area binds itself in its own bind_*.cpp; this file owns the
// module, the single Python exception (eplab.Error) and the parking slot for Python errors from engine threads.
#include <pybind11/pybind11.h>

#include <climits>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"
#include "python/bindings.hpp"
#include "traces/trace_file.hpp"

namespace eplab::py_bind {
namespace {

std::mutex& parked_mutex() {
  static std::mutex mu;
  return mu;
}
// Heap-held and never destroyed: a py::error_already_set must not be released after the interpreter is gone.
std::optional<py::error_already_set>& parked() {
  static auto* slot = new std::optional<py::error_already_set>();
  return *slot;
}

}  // namespace

PyObject*& error_type() {
  static PyObject* type = nullptr;
  return type;
}

py::array_t<int32_t, py::array::c_style> int32_ids(const py::handle& x, const std::string& what) {
  using Ids = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
  py::array a = py::array::ensure(x);
  if (!a) throw EplabError(what + " must be an array of integer ids");
  if (a.size() > 0) {
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u')
      throw EplabError(what + " must hold integer ids, got dtype " + py::str(a.dtype()).cast<std::string>());
    // Widened without loss (unsigned as unsigned, so 2**64 - 1 is not -1), then range-checked.
    auto out_of_range = [&](auto wide) {
      const auto* v = wide.data();
      for (py::ssize_t i = 0; i < wide.size(); ++i)
        if (std::cmp_less(v[i], INT32_MIN) || std::cmp_greater(v[i], INT32_MAX)) return std::to_string(v[i]);
      return std::string();
    };
    const std::string bad =
        kind == 'u'
            ? out_of_range(py::array_t<uint64_t, py::array::c_style | py::array::forcecast>::ensure(a))
            : out_of_range(py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a));
    if (!bad.empty()) throw EplabError(what + " holds " + bad + ", which is not an int32 id");
  }
  Ids ids = Ids::ensure(a);
  if (!ids) throw EplabError(what + " must be an array of integer ids");
  return ids;
}

void park_python_error(py::error_already_set& e) {
  std::lock_guard<std::mutex> lock(parked_mutex());
  if (!parked()) parked().emplace(e);  // the first one is the cause; later ones are usually its echoes
}

bool has_parked_python_error() {
  std::lock_guard<std::mutex> lock(parked_mutex());
  return parked().has_value();
}

void clear_parked_python_error() {
  std::optional<py::error_already_set> old;
  {
    std::lock_guard<std::mutex> lock(parked_mutex());
    old.swap(parked());
  }
}

void rethrow_parked_python_error() {
  std::optional<py::error_already_set> e;
  {
    std::lock_guard<std::mutex> lock(parked_mutex());
    e.swap(parked());
  }
  if (e) throw py::error_already_set(*e);
}

void call_python(const char* what, const std::function<void()>& fn) {
  py::gil_scoped_acquire gil;
  try {
    fn();
  } catch (py::error_already_set& e) {
    std::string msg = std::string(what) + ": Python code raised " + e.what();
    park_python_error(e);
    throw EplabError(msg);
  } catch (const py::cast_error& e) {
    throw EplabError(std::string(what) + ": " + e.what());
  }
}

bool try_python(const std::function<void()>& fn) {
  if (has_parked_python_error()) return false;
  py::gil_scoped_acquire gil;
  try {
    fn();
    return true;
  } catch (py::error_already_set& e) {
    park_python_error(e);
  } catch (const std::exception& e) {
    // A malformed return value (wrong type or size): park it as a Python exception so the caller sees it.
    PyErr_SetString(error_type() ? error_type() : PyExc_TypeError, e.what());
    py::error_already_set err;
    park_python_error(err);
  }
  return false;
}

std::shared_ptr<py::object> share_object(py::object obj) {
  return std::shared_ptr<py::object>(new py::object(std::move(obj)), [](py::object* p) {
    // After interpreter shutdown (a registry emptied by static destructors) the GIL cannot be taken: leak.
    if (!Py_IsInitialized() || _Py_IsFinalizing()) return;
    py::gil_scoped_acquire gil;
    delete p;
  });
}

py::object overridden_attr(py::handle self, py::handle base_type, const char* attr) {
  py::object mine = py::getattr(py::type::of(self), attr, py::none());
  py::object base = py::getattr(base_type, attr, py::none());
  if (mine.is(base)) return py::object();
  py::object v = py::getattr(self, attr);
  if (PyCallable_Check(v.ptr())) v = v();
  return v;
}

}  // namespace eplab::py_bind

PYBIND11_MODULE(_eplab, m) {
  namespace py = pybind11;
  using namespace eplab::py_bind;
  m.doc() = "eplab: MoE expert-parallel communication lab (C++ core; see the eplab package for the Python API)";
  m.attr("__version__") = eplab::eplab_version();

  static py::exception<eplab::EplabError> error(m, "Error");
  error_type() = error.ptr();
  // One exception for every eplab failure (bad input, fabric failure, corrupt codec buffer). A Python error
  // parked by a trampoline wins: the user sees their own exception and traceback, not our wrapper.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const eplab::EplabError& e) {
      if (has_parked_python_error()) {
        try {
          rethrow_parked_python_error();
        } catch (py::error_already_set& pe) {
          pe.restore();
          return;
        }
      }
      error(e.what());
    } catch (const eplab::CodecError& e) {
      error(e.what());
    }
  });

  // Python codecs registered with the C++ registry must go while the interpreter can still release them.
  py::module_::import("atexit").attr("register")(py::cpp_function([] {
    for (const auto& name : eplab::registered_codec_factories()) eplab::unregister_codec_factory(name);
  }));

  bind_presets(m);
  bind_traces(m);
  bind_codecs(m);
#ifdef EPLAB_PY_POLICIES
  bind_policies(m);
#endif
  bind_run(m);
  bind_buffer(m);
}
