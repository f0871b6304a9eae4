// Codecs from Python: built-ins created by spec, and eplab.Codec subclasses written in Python that the C++
// engine calls through the PyCodec trampoline (registered by name so create_codec() builds them per rank).
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"
#include "python/bindings.hpp"

namespace eplab::py_bind {

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

std::pair<int, int> shape_of(const py::handle& shape) {
  auto t = shape.cast<std::vector<py::ssize_t>>();
  if (t.size() != 2 || t[0] < 0 || t[1] < 0 || t[0] > INT_MAX || t[1] > INT_MAX)
    throw EplabError("codec shape must be (tokens, hidden) with sizes in [0, " + std::to_string(INT_MAX) + "]");
  return {static_cast<int>(t[0]), static_cast<int>(t[1])};
}

// Whether a buffer's elements lie in C order with no gaps (strides are in bytes and may be negative).
bool c_contiguous(const py::buffer_info& b) {
  if (b.size == 0) return true;
  py::ssize_t expect = b.itemsize;
  for (py::ssize_t i = b.ndim - 1; i >= 0; --i) {
    if (b.shape[i] != 1 && b.strides[i] != expect) return false;
    expect *= b.shape[i];
  }
  return true;
}

FloatArray as_matrix(const py::handle& x) {
  FloatArray a = FloatArray::ensure(x);
  if (!a) throw EplabError("codec input must be convertible to a float32 array");
  if (a.ndim() == 1) a = a.reshape({py::ssize_t(1), a.shape(0)});
  if (a.ndim() != 2)
    throw EplabError("codec input must be a [tokens, hidden] array, got " + std::to_string(a.ndim()) + " dims");
  if (a.shape(0) > INT_MAX || a.shape(1) > INT_MAX)
    throw EplabError("codec input is " + std::to_string(a.shape(0)) + " x " + std::to_string(a.shape(1)) +
                     ": at most " + std::to_string(INT_MAX) + " tokens and channels");
  return a;
}

// The C++ side of a Python subclass of eplab.Codec. Every method takes the GIL; Python exceptions are parked
// (see bindings.hpp) so they reach the caller of eplab.run() intact.
class PyCodec : public Codec {
 public:
  std::string name() const override {
    std::string out;
    call_python("codec name", [&] {
      py::object v = attr("name");
      out = v ? py::str(v).cast<std::string>() : py::type::of(self()).attr("__name__").cast<std::string>();
    });
    return out;
  }
  bool lossless() const override {
    bool out = false;
    call_python("codec lossless", [&] {
      py::object v = attr("lossless");
      out = v && v.cast<bool>();
    });
    return out;
  }
  // Undeclared: 0 when lossless, else unbounded (verification then only checks delivery, not values).
  double error_bound() const override {
    double out = 0;
    bool declared = false;
    call_python("codec error_bound", [&] {
      py::object v = attr("error_bound");
      if (v) {
        out = v.cast<double>();
        declared = true;
      }
    });
    if (declared) return out;
    return lossless() ? 0.0 : std::numeric_limits<double>::infinity();
  }
  // Undeclared: fixed rate, as the built-ins, so encode() must produce exactly encoded_size() bytes; a codec whose
  // size depends on the data says fixed_rate = False and its encoded_size() is then an estimate.
  bool fixed_rate() const override {
    bool out = true;
    call_python("codec fixed_rate", [&] {
      py::object v = attr("fixed_rate");
      if (v) out = v.cast<bool>();
    });
    return out;
  }
  // Undeclared: the expert GEMM decodes first, as for most formats.
  bool gemm_native() const override {
    bool out = false;
    call_python("codec gemm_native", [&] {
      py::object v = attr("gemm_native");
      out = v && v.cast<bool>();
    });
    return out;
  }
  // gpu_seconds(self, shape, encode) -> float when defined; else the memory-bound quantizer model.
  double gpu_seconds(int tokens, int hidden, bool encode) const override {
    double out = -1;
    try_python([&] {
      py::function f = py::get_override(static_cast<const Codec*>(this), "gpu_seconds");
      if (!f) return;
      out = f(py::make_tuple(tokens, hidden), encode).cast<double>();
      if (!std::isfinite(out) || out < 0)
        throw EplabError("codec " + name() + " gpu_seconds returned " + std::to_string(out) +
                         ", not a finite number of seconds >= 0");
    });
    return out >= 0 ? out : Codec::gpu_seconds(tokens, hidden, encode);
  }

  // Codec calls happen mid-exchange: errors are parked by try_python and placeholder data keeps the run going.
  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t stream) override {
    const size_t before = out.size();
    const bool ok = try_python([&] {
      py::function f = py::get_override(static_cast<const Codec*>(this), "encode");
      if (!f) throw EplabError("eplab.Codec subclass " + name() + " must define encode(self, x) -> bytes");
      py::array_t<float> arr({static_cast<py::ssize_t>(tokens), static_cast<py::ssize_t>(hidden)}, x);
      py::object r = f(arr);
      if (!py::isinstance<py::buffer>(r)) throw EplabError("codec " + name() + " encode must return bytes");
      py::buffer_info info = py::reinterpret_borrow<py::buffer>(r).request();
      const auto* p = static_cast<const uint8_t*>(info.ptr);
      out.insert(out.end(), p, p + info.size * info.itemsize);
      const size_t got = out.size() - before, limit = max_encoded_size(tokens, hidden);
      if (got > limit)
        throw EplabError("codec " + name() + " encode produced " + std::to_string(got) + " bytes for " +
                         std::to_string(tokens) + " x " + std::to_string(hidden) + ", more than max_encoded_size() = " +
                         std::to_string(limit) + " (receive buffers are sized with it)");
      // The simulator charges encoded_size(): a fixed-rate codec that says one size and sends another would make
      // simulated and emulated runs disagree without a word.
      if (fixed_rate() && got != encoded_size(tokens, hidden))
        throw EplabError("codec " + name() + " encode produced " + std::to_string(got) + " bytes for " +
                         std::to_string(tokens) + " x " + std::to_string(hidden) + ", but its encoded_size() says " +
                         std::to_string(encoded_size(tokens, hidden)) +
                         " (set fixed_rate = False if the size depends on the data)");
    });
    if (!ok) out.resize(before + encoded_size(tokens, hidden), 0);
  }

  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t stream) override {
    const size_t n = static_cast<size_t>(tokens) * hidden;
    const bool ok = try_python([&] {
      py::function f = py::get_override(static_cast<const Codec*>(this), "decode");
      if (!f) throw EplabError("eplab.Codec subclass " + name() + " must define decode(self, data, shape)");
      py::object r = f(py::bytes(reinterpret_cast<const char*>(data), size), py::make_tuple(tokens, hidden));
      FloatArray a = FloatArray::ensure(r);
      if (!a || static_cast<size_t>(a.size()) != n)
        throw EplabError("codec " + name() + " decode must return " + std::to_string(tokens) + " x " +
                         std::to_string(hidden) + " floats");
      std::memcpy(out, a.data(), sizeof(float) * n);
    });
    if (!ok) std::fill(out, out + n, 0.0f);
  }

  size_t encoded_size(int tokens, int hidden) const override {
    py::ssize_t n = -1;
    try_python([&] {
      py::function f = py::get_override(static_cast<const Codec*>(this), "encoded_size");
      if (!f) throw EplabError("eplab.Codec subclass " + name() + " must define encoded_size(self, shape) -> int");
      n = f(py::make_tuple(tokens, hidden)).cast<py::ssize_t>();
      if (n < 0) throw EplabError("codec " + name() + " encoded_size returned a negative size");
    });
    return n < 0 ? 0 : static_cast<size_t>(n);
  }

  size_t max_encoded_size(int tokens, int hidden) const override {
    py::ssize_t n = -1;
    try_python([&] {
      py::function f = py::get_override(static_cast<const Codec*>(this), "max_encoded_size");
      if (f) n = f(py::make_tuple(tokens, hidden)).cast<py::ssize_t>();
    });
    // Without a declared bound, allow an fp32 copy plus slack: a Python codec that expands data is a bug.
    if (n < 0)
      return std::max(encoded_size(tokens, hidden), static_cast<size_t>(tokens) * hidden * sizeof(float) + 4096);
    return static_cast<size_t>(n);
  }

  void reset(uint64_t stream) override {
    try_python([&] {
      py::function f = py::get_override(static_cast<const Codec*>(this), "reset");
      if (f) f(stream);
    });
  }

 private:
  py::handle self() const { return py::detail::get_object_handle(this, py::detail::get_type_info(typeid(Codec))); }
  py::object attr(const char* a) const { return overridden_attr(self(), py::type::of<Codec>(), a); }
};

// What the engine gets for a registered Python codec: forwards to the Python object, which it keeps alive.
class ForwardingCodec : public Codec {
 public:
  explicit ForwardingCodec(std::shared_ptr<py::object> obj) : obj_(std::move(obj)) {
    py::gil_scoped_acquire gil;
    target_ = obj_->cast<Codec*>();
  }
  std::string name() const override { return target_->name(); }
  bool lossless() const override { return target_->lossless(); }
  double error_bound() const override { return target_->error_bound(); }
  double error_bound_for(int hidden) const override { return target_->error_bound_for(hidden); }
  bool fixed_rate() const override { return target_->fixed_rate(); }
  bool gemm_native() const override { return target_->gemm_native(); }
  double gpu_seconds(int tokens, int hidden, bool encode) const override {
    return target_->gpu_seconds(tokens, hidden, encode);
  }
  void encode(const float* x, int tokens, int hidden, std::vector<uint8_t>& out, uint64_t stream) override {
    target_->encode(x, tokens, hidden, out, stream);
  }
  void decode(const uint8_t* data, size_t size, int tokens, int hidden, float* out, uint64_t stream) override {
    target_->decode(data, size, tokens, hidden, out, stream);
  }
  size_t encoded_size(int tokens, int hidden) const override { return target_->encoded_size(tokens, hidden); }
  size_t max_encoded_size(int tokens, int hidden) const override { return target_->max_encoded_size(tokens, hidden); }
  void reset(uint64_t stream) override { target_->reset(stream); }
  void calibrate(const float* sample, int tokens, int hidden) override { target_->calibrate(sample, tokens, hidden); }

 private:
  std::shared_ptr<py::object> obj_;
  Codec* target_ = nullptr;
};

}  // namespace

// Registers a Python codec object under its name; returns the name the engine will find it by.
std::string register_python_codec(py::object codec) {
  Codec* c = codec.cast<Codec*>();
  const std::string name = c->name();
  auto shared = share_object(codec);
  register_codec_factory(name, [shared] { return std::unique_ptr<Codec>(new ForwardingCodec(shared)); });
  return name;
}

void bind_codecs(py::module_& m) {
  py::class_<Codec, PyCodec, std::shared_ptr<Codec>>(m, "Codec", R"doc(
How token activations [tokens, hidden] travel on the wire. Built-ins come from eplab.codecs.create(spec).
Subclass it in Python (call super().__init__()) and define encode(x) -> bytes, decode(data, shape) -> array,
encoded_size(shape) -> int, and optionally name, lossless, error_bound, fixed_rate (default True: encode must
produce exactly encoded_size bytes), gemm_native, gpu_seconds(shape, encode) -> s, max_encoded_size(shape),
reset(stream); pass an instance to eplab.run(dispatch_codec=...) and the engine calls it for every message.)doc")
      .def(py::init<>())
      .def_property_readonly("name", &Codec::name, "The spec that recreates this codec.")
      .def_property_readonly("lossless", &Codec::lossless)
      .def_property_readonly("error_bound", &Codec::error_bound, "Promised bound on ||decode(encode(x)) - x|| / ||x||.")
      .def_property_readonly("fixed_rate", &Codec::fixed_rate)
      .def_property_readonly("gemm_native", &Codec::gemm_native,
                             "Whether the expert GEMM takes the encoded form (no decode charged on sim).")
      .def(
          "gpu_seconds",
          [](const Codec& c, const py::handle& shape, bool encode) {
            auto [t, h] = shape_of(shape);
            return c.gpu_seconds(t, h, encode);
          },
          py::arg("shape"), py::arg("encode") = true, "Modeled GPU time to encode (or decode) `shape` on sim.")
      .def("error_bound_for", &Codec::error_bound_for, py::arg("hidden"))
      .def(
          "encode",
          [](Codec& c, const py::handle& x, uint64_t stream) {
            FloatArray a = as_matrix(x);
            std::vector<uint8_t> out;
            call_without_gil(
                [&] { c.encode(a.data(), static_cast<int>(a.shape(0)), static_cast<int>(a.shape(1)), out, stream); });
            return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
          },
          py::arg("x"), py::arg("stream") = 0, "Encodes a float32 [tokens, hidden] array into bytes.")
      .def(
          "decode",
          [](Codec& c, const py::buffer& data, const py::handle& shape, uint64_t stream) {
            auto [tokens, hidden] = shape_of(shape);
            // A message is its bytes in order: a strided or reversed view (a column of a 2-D array, x[::-1]) is
            // read through a C-ordered copy, never as the memory its buffer pointer happens to start.
            py::buffer_info info = data.request();
            py::object copy;
            if (!c_contiguous(info)) {
              copy = py::module_::import("builtins").attr("memoryview")(data).attr("tobytes")();
              info = py::reinterpret_borrow<py::buffer>(copy).request();
            }
            py::array_t<float> out({static_cast<py::ssize_t>(tokens), static_cast<py::ssize_t>(hidden)});
            float* dst = out.mutable_data();
            const auto* src = static_cast<const uint8_t*>(info.ptr);
            const size_t size = static_cast<size_t>(info.size * info.itemsize);
            call_without_gil([&] { c.decode(src, size, tokens, hidden, dst, stream); });
            return out;
          },
          py::arg("data"), py::arg("shape"), py::arg("stream") = 0, "Decodes bytes into a float32 array of `shape`.")
      .def(
          "encoded_size",
          [](const Codec& c, const py::handle& shape) {
            auto [t, h] = shape_of(shape);
            return c.encoded_size(t, h);
          },
          py::arg("shape"), "Bytes encode() produces for `shape` (an estimate for data-dependent codecs).")
      .def(
          "max_encoded_size",
          [](const Codec& c, const py::handle& shape) {
            auto [t, h] = shape_of(shape);
            return c.max_encoded_size(t, h);
          },
          py::arg("shape"))
      .def(
          "bits_per_element",
          [](const Codec& c, const py::handle& shape) {
            auto [t, h] = shape_of(shape);
            return c.bits_per_element(t, h);
          },
          py::arg("shape"))
      .def("reset", &Codec::reset, py::arg("stream") = 0, "Forgets a stream's state (delta base, residuals).")
      .def(
          "calibrate",
          [](Codec& c, const py::handle& x) {
            FloatArray a = as_matrix(x);
            call_without_gil(
                [&] { c.calibrate(a.data(), static_cast<int>(a.shape(0)), static_cast<int>(a.shape(1))); });
          },
          py::arg("sample"))
      .def("__repr__", [](const Codec& c) { return "<eplab.Codec " + c.name() + ">"; });

  m.def(
      "create_codec", [](const std::string& spec) { return std::shared_ptr<Codec>(create_codec(spec)); },
      py::arg("spec"), "A codec by spec, e.g. 'fp8-e4m3-b128' or 'topk:ratio=0.25+int8-token+zstd'.");
  m.def("codec_names", &codec_names, "Registered codec stage names.");
  m.def(
      "codec_catalog",
      [] {
        py::list out;
        for (const auto& c : codec_catalog()) out.append(py::make_tuple(c.name, c.kind, c.summary));
        return out;
      },
      "(name, kind, summary) for each built-in codec stage.");
  m.def("register_codec", &register_python_codec, py::arg("codec"),
        "Registers an eplab.Codec (usually a Python subclass) under its name so specs and runs can name it.");
  m.def("unregister_codec", &unregister_codec_factory, py::arg("name"));
  m.def("registered_codecs", &registered_codec_factories, "Names registered with register_codec().");
}

}  // namespace eplab::py_bind
