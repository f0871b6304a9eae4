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
// large batch a slice at a time). x holds the activations of tokens from x_first on (a caller that regenerates
// a slice's activations passes x_first = first).
void reference_combine(const RoutingBatch& batch, const std::vector<int32_t>& slots, const float* x,
                       const Placement& placement, const Topology& topo, const ExpertTransform& f, ReductionOrder order,
                       int hidden, float* out, int first = 0, int count = -1, int x_first = 0);

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

// The selections one rank sent to (or received from) one peer in one call, as a multiset digest: their count
// and two sums of independent 64-bit hashes of (source token, physical slot). A source's digest for a peer equals
// the peer's digest of what arrived from it exactly when the same selections arrived (a different multiset with
// equal count and both sums needs a 128-bit hash collision). Order-independent, so arrival order does not matter,
// and a fixed size per (call, peer), so verifying a run of any length holds calls x ranks digests per rank
// rather than every selection.
struct DeliveryDigest {
  uint32_t count = 0;
  uint64_t h1 = 0, h2 = 0;
  void add(int32_t token, int32_t slot);
  bool operator==(const DeliveryDigest&) const = default;
};

// A rank's digests, [call x ranks + peer]: `sent` by destination (what its routing sends there), `got` by source
// (what the engine delivered).
struct DeliveryLog {
  int32_t ranks = 0;
  std::vector<DeliveryDigest> sent, got;
  void resize(int calls, int num_ranks);
  DeliveryDigest& sent_to(int call, int dest) { return sent[static_cast<size_t>(call) * ranks + dest]; }
  DeliveryDigest& got_from(int call, int src) { return got[static_cast<size_t>(call) * ranks + src]; }
};

// Every selection reached exactly the rank holding its slot, exactly once: for every call and rank pair, what the
// source sent equals what the destination received. missing / extra: selections by which a pair's counts fall
// short or exceed; mismatched_pairs: (call, source, destination) triples that differ (in count or content); the
// first of them in (call, source, destination) order, to name in an error.
struct DeliveryCheck {
  bool ok = false;
  size_t selections = 0, missing = 0, extra = 0, mismatched_pairs = 0;
  struct Pair {
    int32_t call = -1, src = -1, dest = -1;
    uint32_t sent = 0, got = 0;
  } first;
};
// logs: one per rank, in rank order.
DeliveryCheck check_deliveries(const std::vector<const DeliveryLog*>& logs);

}  // namespace eplab
