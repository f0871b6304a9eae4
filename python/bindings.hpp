// Shared pieces of the `eplab._eplab` extension: one bind_*() per area (called from module.cpp), and the
// bridge that carries a Python exception raised inside engine threads back to the Python caller intact.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>

#include "engine/error.hpp"
#include "traces/routing_source.hpp"

namespace eplab::py_bind {

namespace py = pybind11;

void bind_presets(py::module_& m);
void bind_traces(py::module_& m);
void bind_codecs(py::module_& m);
void bind_policies(py::module_& m);
void bind_run(py::module_& m);
void bind_buffer(py::module_& m);

// Python code called from C++ (a trampoline) must not let py::error_already_set unwind through engine
// threads, whose error handling may reword or wrap it. The trampoline parks the first Python exception here
// and throws a plain EplabError; whatever binding started the C++ call re-raises the parked original (type,
// message and traceback) in its place.
void park_python_error(py::error_already_set& e);
bool has_parked_python_error();
void clear_parked_python_error();
// Re-raises the parked exception if there is one (throws py::error_already_set); returns otherwise.
void rethrow_parked_python_error();

// eplab.Error, once the module has created it.
PyObject*& error_type();

// Ids (expert or slot ids) from any array-like, as a C-contiguous int32 array, refusing what a cast would change:
// a dtype that is not an integer (1.9 is not expert 1, True is not expert 1) and values outside int32 (2**32 + 3
// is not 3). An empty array may have any dtype (np.asarray([]) is float64). Views of any strides are copied.
// Errors begin with `what`.
py::array_t<int32_t, py::array::c_style> int32_ids(const py::handle& x, const std::string& what);

// Runs a long C++ call with the GIL released; a Python error parked meanwhile replaces whatever C++ threw.
// A codec may park an error and let the call finish (see try_python), so a parked error is checked on success too.
template <class F>
auto call_without_gil(F&& f) -> decltype(f()) {
  clear_parked_python_error();
  try {
    if constexpr (std::is_void_v<decltype(f())>) {
      {
        py::gil_scoped_release release;
        f();
      }
      rethrow_parked_python_error();
    } else {
      auto out = [&] {
        py::gil_scoped_release release;
        return f();
      }();
      rethrow_parked_python_error();
      return out;
    }
  } catch (py::error_already_set&) {
    throw;
  } catch (...) {
    rethrow_parked_python_error();
    throw;
  }
}

// Calls fn with the GIL held; a Python exception is parked and turned into EplabError(what: message).
void call_python(const char* what, const std::function<void()>& fn);

// For Python code called in the middle of a collective (codecs, the progress callback): unwinding one rank out
// of a half-posted exchange is what a fabric handles worst, so a Python error is parked and the call returns
// false instead of throwing; once an error is parked, later calls skip Python and return false at once. The
// run then finishes on placeholder data and the binding that started it raises the parked error.
bool try_python(const std::function<void()>& fn);

// A py::object that C++ may copy and destroy from any thread: the reference count only changes under the GIL.
std::shared_ptr<py::object> share_object(py::object obj);

// The value of an attribute a Python subclass overrides (called if it is a method); an empty object when the
// subclass leaves the base class's own attribute in place. `self` is the Python side of a trampoline.
py::object overridden_attr(py::handle self, py::handle base_type, const char* attr);

// eplab.RoutingSource: a routing source kept open between calls (a generator, a scanned trace, arrays), which
// eplab.run(routing=...) hands to the engine as the run's source.
// A Python subclass of eplab.RoutingSource holds no C++ source: it defines batch() (and optionally name,
// num_steps, num_layers, num_ranks) and eplab.run wraps it (python_routing).
class SourceHandle {
 public:
  SourceHandle() = default;
  explicit SourceHandle(std::shared_ptr<RoutingSource> s) : src_(std::move(s)) {}
  std::string name() const { return src_ ? src_->name() : "python"; }
  int num_steps() const { return src_ ? src_->num_steps() : -1; }
  int num_layers() const { return src_ ? src_->num_layers() : -1; }
  int num_ranks() const { return src_ ? src_->num_ranks() : -1; }
  RoutingBatch batch(int step, int layer, int rank) {
    if (!src_) throw EplabError("a subclass of eplab.RoutingSource must define batch(self, step, layer, rank)");
    return src_->batch(step, layer, rank);
  }
  const std::shared_ptr<RoutingSource>& source() const { return src_; }

 private:
  std::shared_ptr<RoutingSource> src_;
};

}  // namespace eplab::py_bind
