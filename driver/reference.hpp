// Verification: what combine must return for one rank's tokens, computed without any messages and summed in
// the order the algorithm sums, and the comparison of a result against it.
#pragma once

#include <cstdint>
#include <vector>

#include "driver/transforms.hpp"
#include "engine/ep_engine.hpp"
#include "engine/routing.hpp"

namespace eplab {

// out [tokens x hidden] = sum over the token's selections of weight x f_expert(x), grouped as `order` says;
// only tokens [first, first + count) when count >= 0, written from out's first row (so a caller can check a
// large batch a slice at a time).
void reference_combine(const RoutingBatch& batch, const std::vector<int32_t>& slots, const float* x,
                       const Placement& placement, const Topology& topo, const ExpertTransform& f, ReductionOrder order,
                       int hidden, float* out, int first = 0, int count = -1);

// What an expert GPU computes for the rows it received: per row the weighted sum of its selections'
// outputs in the order they arrived, or (kSelections) the unweighted output of its one selection. Where the
// rows are held in a row-separable wire format and the reduction is per row, the outputs are written in the
// combine codec's format into h.expert_out (EngineContext::map_rows) and `partials` is left empty; otherwise
// they go to `partials` in fp32. Returns the fp32 partials combine takes, or null.
const float* expert_partials(EngineContext& c, Handle& h, const Placement& placement, const ExpertTransform& f,
                             ReductionOrder order, std::vector<float>& partials);

struct Comparison {
  double max_abs_err = 0;
  double rel_l2 = 0;
  size_t mismatches = 0;  // elements whose bits differ
  size_t nonfinite = 0;
  void merge(const Comparison& o);
};
Comparison compare(const float* got, const float* want, size_t n);

// One selection of one call delivered to (or expected at) a rank: the source rank's token and the physical slot.
struct Delivery {
  int32_t call, dest, src, token, slot;
  auto operator<=>(const Delivery&) const = default;
};

// Every selection reached exactly the rank holding its slot, exactly once: the two lists, sorted, are equal.
struct DeliveryCheck {
  bool ok = false;
  size_t selections = 0, missing = 0, extra = 0;
};
DeliveryCheck check_deliveries(std::vector<Delivery> expected, std::vector<Delivery> received);

}  // namespace eplab
