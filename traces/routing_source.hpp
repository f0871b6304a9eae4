// Where routing decisions come from: a generator (uniform, deepep, zipf:S, hotset:..., correlated:...) or a
// trace file. Every source is random-access and deterministic: the same (step, layer, rank) and seed give
// the same batch, whichever rank asks and in whatever order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/moe_shape.hpp"
#include "engine/routing.hpp"
#include "engine/topology.hpp"

namespace eplab {

struct RoutingParams {
  MoeShape shape;
  Topology topology;
  int tokens_per_rank = 4096;
  uint64_t seed = 1;
};

class RoutingSource {
 public:
  virtual ~RoutingSource() = default;
  virtual std::string name() const = 0;
  virtual RoutingBatch batch(int step, int layer, int rank) = 0;
  virtual int num_steps() const { return -1; }   // -1: unbounded (generators)
  virtual int num_layers() const { return -1; }
};

// A generator by spec; throws EplabError naming the spec and listing the known ones if it is unknown.
std::unique_ptr<RoutingSource> make_routing(const std::string& spec, const RoutingParams& params);

}  // namespace eplab
