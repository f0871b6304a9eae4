// Where routing decisions come from: a generator (uniform, deepep, zipf:S, hotset:..., correlated:...) or a
// trace file. Every source is random-access and deterministic: the same (step, layer, rank) and seed give
// the same batch, whichever rank asks and in whatever order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/moe_shape.hpp"
#include "engine/routing.hpp"
#include "engine/topology.hpp"

namespace eplab {

struct RoutingParams {
  MoeShape shape;
  Topology topology;
  int tokens_per_rank = 4096;
  uint64_t seed = 1;
  // What the run will ask for; 0 = not known. A trace file checks on open that it covers them, so a short
  // trace fails before the run starts rather than half-way through it.
  int steps = 0;
  int layers = 0;
  // False where nothing reads the weights (phantom payloads: only counts travel and combine sums nothing), so a
  // generator may write equal weights 1/k instead of drawing them; the expert ids are the same either way.
  bool weights = true;
};

// batch() does not change what later calls return, and the built-in sources allow concurrent calls (one
// thread per emulated rank).
class RoutingSource {
 public:
  virtual ~RoutingSource() = default;
  virtual std::string name() const = 0;
  virtual RoutingBatch batch(int step, int layer, int rank) = 0;
  virtual int num_steps() const { return -1; }  // -1: unbounded (generators)
  virtual int num_layers() const { return -1; }
  // True where batch() may run on several threads at once with no lock (the generators); a run may then
  // generate many ranks' batches in parallel. Others are called one at a time.
  virtual bool concurrent() const { return false; }
  // Ranks the source holds batches for; -1: any (generators). A run on another rank count is refused.
  virtual int num_ranks() const { return -1; }
  // Tokens in every batch, when that is fixed (the generators: tokens_per_rank); -1 when batches may differ
  // (traces, arrays), and a run that reports tokens per rank must count them.
  virtual int fixed_tokens() const { return -1; }
};

// Routing given as arrays (a model's captured top-k, from Python): batches[(step * layers + layer) * ranks +
// rank], each checked for shape, ids in [-1, num_experts) and finite weights when the run starts.
std::unique_ptr<RoutingSource> make_array_routing(std::vector<RoutingBatch> batches, int steps, int layers, int ranks);

// A generator by spec (uniform, deepep, zipf:S, hotset:k=K,frac=F,every=N, correlated:rho=R) or a trace file
// (trace:PATH); throws EplabError naming the spec and listing the known ones if it is unknown, and naming the
// parameter if one is malformed. docs/traces.md describes each generator.
std::unique_ptr<RoutingSource> make_routing(const std::string& spec, const RoutingParams& params);

// The specs make_routing accepts, as shown in help and error messages.
std::vector<std::string> routing_spec_names();

}  // namespace eplab
