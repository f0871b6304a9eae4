// eplab._BufferSession: the C++ session behind eplab.Buffer (driver/buffer_session.hpp), over NumPy arrays that
// python/eplab/buffer.py has already checked, made contiguous and widened to fp32. Calls release the GIL. Lists
// of per-rank arrays hold the ranks this process holds (every rank in process, its own on mpi).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "driver/buffer_session.hpp"
#include "python/bindings.hpp"

namespace eplab::py_bind {
namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
py::array_t<T> to_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> a(shape);
  if (!v.empty()) std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// The vector's storage handed to NumPy as it is (received rows and combined tokens are large: no second copy).
template <class T>
py::array_t<T> own_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* held = new std::vector<T>(std::move(v));
  py::capsule free_it(held, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, held->data(), free_it);
}

// A 2-D array of `cols` columns (any row count), kept alive in `keep` while the GIL is released.
template <class T>
const T* rows_of(const py::handle& obj, py::ssize_t cols, const char* what, int rank, py::ssize_t* rows,
                 std::vector<py::object>& keep) {
  CArray<T> a = CArray<T>::ensure(obj);
  if (!a || a.ndim() != 2 || a.shape(1) != cols)
    throw EplabError(std::string(what) + ": rank " + std::to_string(rank) + " needs a 2-D array of " +
                     std::to_string(cols) + " columns");
  *rows = a.shape(0);
  keep.push_back(a);
  return a.data();
}

// Rows for the engine: bf16 bits (uint16) when the wire is bf16, else fp32.
BufferRows rows_in(const py::handle& obj, py::ssize_t cols, const std::string& codec, int rank, py::ssize_t* rows,
                   std::vector<py::object>& keep) {
  BufferRows out;
  if (codec == "bf16")
    out.bf16 = rows_of<uint16_t>(obj, cols, "x", rank, rows, keep);
  else
    out.f32 = rows_of<float>(obj, cols, "x", rank, rows, keep);
  return out;
}

py::tuple time_tuple(const BufferTime& t) { return py::make_tuple(t.time_s, t.notify_s, t.modeled); }

py::list recv_list(std::vector<BufferRecv>& recv, int topk) {
  py::list out;
  for (BufferRecv& r : recv) {
    const py::ssize_t n = r.rows();
    const auto wire_cols = static_cast<py::ssize_t>(n ? r.wire.size() / n : 0);
    py::object rows = own_array(std::move(r.wire), {n, wire_cols});
    out.append(py::make_tuple(to_array(r.src_rank, {n}), to_array(r.src_token, {n}), to_array(r.topk_idx, {n, topk}),
                              to_array(r.topk_weights, {n, topk}),
                              to_array(r.tokens_per_expert, {static_cast<py::ssize_t>(r.tokens_per_expert.size())}),
                              rows));
  }
  return out;
}

}  // namespace

void bind_buffer(py::module_& m) {
  py::class_<BufferHandleState, std::shared_ptr<BufferHandleState>>(m, "_BufferHandle")
      .def_property_readonly("topk", [](const BufferHandleState& h) { return h.topk; })
      .def_property_readonly("num_tokens", [](const BufferHandleState& h) { return h.num_tokens; })
      .def_property_readonly("num_recv_rows", [](const BufferHandleState& h) { return h.rows; });

  py::class_<BufferSession>(m, "_BufferSession")
      .def(py::init([](const std::string& backend, const std::string& cluster, int nodes, int gpus_per_node,
                       int num_experts, int hidden, const std::string& algorithm, double timeout_s,
                       const std::string& sim_model) {
             BufferOptions o;
             o.backend = backend;
             o.cluster = cluster;
             o.nodes = nodes;
             o.gpus_per_node = gpus_per_node;
             o.num_experts = num_experts;
             o.hidden = hidden;
             o.algorithm = algorithm;
             o.timeout_s = timeout_s;
             o.sim_model = sim_model;
             return std::make_unique<BufferSession>(o);
           }),
           py::arg("backend"), py::arg("cluster"), py::arg("nodes"), py::arg("gpus_per_node"), py::arg("num_experts"),
           py::arg("hidden"), py::arg("algorithm"), py::arg("timeout_s"), py::arg("sim_model"))
      .def_property_readonly("num_ranks", &BufferSession::num_ranks)
      .def_property_readonly("first_rank", &BufferSession::first_rank)
      .def_property_readonly("held_ranks", &BufferSession::held_ranks)
      .def_property_readonly("one_rank_per_process", &BufferSession::one_rank_per_process)
      .def_property_readonly("num_nodes", [](const BufferSession& s) { return s.topology().nodes(); })
      .def_property_readonly("experts_per_rank", &BufferSession::experts_per_rank)
      .def_property_readonly("modeled_time", &BufferSession::modeled_time)
      .def(
          "layout",
          [](const BufferSession& s, const py::handle& topk_idx) {
            CArray<int32_t> a = CArray<int32_t>::ensure(topk_idx);
            if (!a || a.ndim() != 2) throw EplabError("topk_idx must be a [tokens, topk] array");
            const auto T = static_cast<int>(a.shape(0)), K = static_cast<int>(a.shape(1));
            const DispatchLayout l = s.layout(a.data(), T, K);
            py::array_t<bool> in_rank({static_cast<py::ssize_t>(T), static_cast<py::ssize_t>(l.num_ranks)});
            std::copy(l.is_token_in_rank.begin(), l.is_token_in_rank.end(), in_rank.mutable_data());
            return py::make_tuple(to_array(l.tokens_per_rank, {l.num_ranks}),
                                  to_array(l.tokens_per_node, {l.num_nodes}),
                                  to_array(l.tokens_per_slot, {l.num_slots}), in_rank);
          },
          py::arg("topk_idx"), "(tokens per rank, per node, per expert, is_token_in_rank) of one rank's batch.")
      .def(
          "dispatch",
          [](BufferSession& s, const py::list& topk_idx, const py::list& weights, const py::list& x, int topk,
             const std::string& codec) {
            const int R = s.held_ranks(), H = s.options().hidden;
            if (static_cast<int>(py::len(topk_idx)) != R || static_cast<int>(py::len(weights)) != R ||
                static_cast<int>(py::len(x)) != R)
              throw EplabError("dispatch: one array per held rank (" + std::to_string(R) +
                               ") of topk_idx, weights and x");
            std::vector<py::object> keep;
            std::vector<BufferRankInput> in(R);
            for (int r = 0; r < R; ++r) {
              py::ssize_t n_idx = 0, n_w = 0, n_x = 0;
              in[r].topk_idx = rows_of<int32_t>(topk_idx[r], topk, "topk_idx", r, &n_idx, keep);
              in[r].weights = rows_of<float>(weights[r], topk, "topk_weights", r, &n_w, keep);
              in[r].x = rows_in(x[r], H, codec, r, &n_x, keep);
              if (n_idx != n_w || n_idx != n_x)
                throw EplabError("dispatch: rank " + std::to_string(r) + " has " + std::to_string(n_x) +
                                 " rows of x, " + std::to_string(n_idx) + " of topk_idx and " + std::to_string(n_w) +
                                 " of topk_weights");
              in[r].num_tokens = static_cast<int>(n_idx);
            }
            std::vector<BufferRecv> recv;
            BufferTime t;
            std::shared_ptr<BufferHandleState> h =
                call_without_gil([&] { return s.dispatch(in, topk, codec, recv, t); });
            return py::make_tuple(h, recv_list(recv, topk), time_tuple(t));
          },
          py::arg("topk_idx"), py::arg("weights"), py::arg("x"), py::arg("topk"), py::arg("codec"))
      .def(
          "dispatch_cached",
          [](BufferSession& s, BufferHandleState& h, const py::list& x, const std::string& codec) {
            const int R = s.held_ranks(), H = s.options().hidden;
            if (static_cast<int>(py::len(x)) != R)
              throw EplabError("dispatch: one array of x per held rank (" + std::to_string(R) + ")");
            std::vector<py::object> keep;
            std::vector<BufferRankInput> in(R);
            for (int r = 0; r < R; ++r) {
              py::ssize_t n = 0;
              in[r].x = rows_in(x[r], H, codec, r, &n, keep);
              in[r].num_tokens = static_cast<int>(n);
            }
            std::vector<BufferRecv> recv;
            BufferTime t;
            call_without_gil([&] { s.dispatch_cached(h, in, codec, recv, t); });
            return py::make_tuple(recv_list(recv, h.topk), time_tuple(t));
          },
          py::arg("handle"), py::arg("x"), py::arg("codec"))
      .def(
          "combine",
          [](BufferSession& s, BufferHandleState& h, const py::list& rows, const std::string& codec,
             const py::object& topk_weights) {
            const int R = s.held_ranks(), H = s.options().hidden;
            if (static_cast<int>(py::len(rows)) != R)
              throw EplabError("combine: one array of rows per held rank (" + std::to_string(R) + ")");
            std::vector<py::object> keep;
            std::vector<BufferRows> p(R);
            for (int r = 0; r < R; ++r) {
              py::ssize_t n = 0;
              p[r] = rows_in(rows[r], H, codec, r, &n, keep);
              if (h.session == 0 || r >= static_cast<int>(h.rows.size()) || n != h.rows[r])
                throw EplabError("combine: rank " + std::to_string(s.first_rank() + r) + " gives " + std::to_string(n) +
                                 " rows; it received " +
                                 (r < static_cast<int>(h.rows.size()) ? std::to_string(h.rows[r]) : "?") +
                                 " in the handle's dispatch");
            }
            std::vector<const float*> w;
            if (!topk_weights.is_none()) {
              const py::list wl = topk_weights.cast<py::list>();
              if (static_cast<int>(py::len(wl)) != R)
                throw EplabError("combine: one array of topk_weights per held rank (" + std::to_string(R) + ")");
              for (int r = 0; r < R; ++r) {
                py::ssize_t n = 0;
                w.push_back(rows_of<float>(wl[r], h.topk, "topk_weights", s.first_rank() + r, &n, keep));
                if (n != h.rows[r])
                  throw EplabError("combine: topk_weights of rank " + std::to_string(s.first_rank() + r) + " has " +
                                   std::to_string(n) + " rows; it received " + std::to_string(h.rows[r]));
              }
            }
            std::vector<std::vector<float>> out, out_w;
            BufferTime t;
            call_without_gil([&] { s.combine(h, p, codec, out, t, w, &out_w); });
            py::list outs;
            for (int r = 0; r < R; ++r)
              outs.append(own_array(std::move(out[r]), {static_cast<py::ssize_t>(h.num_tokens[r]), H}));
            py::object weights_out = py::none();
            if (!w.empty()) {
              py::list wo;
              for (int r = 0; r < R; ++r)
                wo.append(own_array(std::move(out_w[r]), {static_cast<py::ssize_t>(h.num_tokens[r]), h.topk}));
              weights_out = wo;
            }
            return py::make_tuple(outs, weights_out, time_tuple(t));
          },
          py::arg("handle"), py::arg("rows"), py::arg("codec"), py::arg("topk_weights") = py::none());
}

}  // namespace eplab::py_bind
