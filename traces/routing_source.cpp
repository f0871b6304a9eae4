#include "traces/routing_source.hpp"

#include "engine/error.hpp"
#include "policies/routing/router.hpp"
#include "traces/generators.hpp"
#include "traces/trace_file.hpp"

namespace eplab {

std::vector<std::string> routing_spec_names() {
  return {"uniform",
          "deepep",
          "zipf:S",
          "hotset:k=K,frac=F,every=N",
          "correlated:rho=R",
          "trace:PATH",
          "router:node-limited,m=M|bias,gamma=G"};
}

namespace {

class ArrayRouting final : public RoutingSource {
 public:
  ArrayRouting(std::vector<RoutingBatch> batches, int steps, int layers, int ranks)
      : batches_(std::move(batches)), steps_(steps), layers_(layers), ranks_(ranks) {
    if (steps < 1 || layers < 1 || ranks < 1 ||
        batches_.size() != static_cast<size_t>(steps) * static_cast<size_t>(layers) * static_cast<size_t>(ranks))
      throw EplabError("routing arrays: " + std::to_string(batches_.size()) + " batches for " + std::to_string(steps) +
                       " steps x " + std::to_string(layers) + " layers x " + std::to_string(ranks) + " ranks");
    for (int s = 0; s < steps; ++s)
      for (int l = 0; l < layers; ++l)
        for (int r = 0; r < ranks; ++r) {
          RoutingBatch& b = batches_[(static_cast<size_t>(s) * layers + l) * ranks + r];
          b.step = s, b.layer = l, b.src_rank = r;
        }
  }
  std::string name() const override { return "arrays"; }
  RoutingBatch batch(int step, int layer, int rank) override {
    if (step < 0 || step >= steps_ || layer < 0 || layer >= layers_ || rank < 0 || rank >= ranks_)
      throw EplabError("routing arrays hold " + std::to_string(steps_) + " steps x " + std::to_string(layers_) +
                       " layers x " + std::to_string(ranks_) + " ranks; asked for step " + std::to_string(step) +
                       ", layer " + std::to_string(layer) + ", rank " + std::to_string(rank));
    return batches_[(static_cast<size_t>(step) * layers_ + layer) * ranks_ + rank];
  }
  int num_steps() const override { return steps_; }
  int num_layers() const override { return layers_; }
  int num_ranks() const override { return ranks_; }
  bool concurrent() const override { return true; }  // read-only after construction

 private:
  std::vector<RoutingBatch> batches_;
  int steps_, layers_, ranks_;
};

}  // namespace

std::unique_ptr<RoutingSource> make_array_routing(std::vector<RoutingBatch> batches, int steps, int layers, int ranks) {
  return std::make_unique<ArrayRouting>(std::move(batches), steps, layers, ranks);
}

std::unique_ptr<RoutingSource> make_routing(const std::string& spec, const RoutingParams& params) {
  if (spec.rfind("trace:", 0) == 0) {
    const std::string path = spec.substr(6);
    if (path.empty()) throw EplabError("routing 'trace:': missing the file name (expected trace:PATH)");
    return open_trace(path, params);
  }
  if (spec.rfind("router:", 0) == 0) return make_router_source(spec.substr(7), params);
  if (auto g = make_generator(spec, params)) return g;
  std::string known;
  for (auto& n : routing_spec_names()) known += (known.empty() ? "" : ", ") + n;
  throw EplabError("unknown routing '" + spec + "' (known: " + known + ")");
}

}  // namespace eplab
