#include "driver/reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>

#include "engine/error.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {

void reference_combine(const RoutingBatch& b, const std::vector<int32_t>& slots, const float* x,
                       const Placement& placement, const Topology& topo, const ExpertTransform& f, ReductionOrder order,
                       int hidden, float* out, int first, int count, int x_first) {
  const int k = b.topk;
  const int end = count < 0 ? b.num_tokens : std::min(b.num_tokens, first + count);
  std::vector<float> scratch(hidden), part(hidden), group(hidden);
  for (int t = first; t < end; ++t) {
    const float* xt = x + static_cast<size_t>(t - x_first) * hidden;
    float* o = out + static_cast<size_t>(t - first) * hidden;
    std::fill(o, o + hidden, 0.f);
    const int32_t* st = &slots[static_cast<size_t>(t) * k];
    if (order == ReductionOrder::kSelections) {
      for (int j = 0; j < k; ++j)
        if (st[j] >= 0) {
          f.apply(placement.expert_of_slot(st[j]), xt, scratch.data());
          const float w = b.weight(t, j);
          for (int h = 0; h < hidden; ++h) o[h] += w * scratch[h];
        }
      continue;
    }
    const int groups = order == ReductionOrder::kNodes ? topo.nodes() : topo.size();
    const int per_group = order == ReductionOrder::kNodes ? topo.gpus_per_node() : 1;
    for (int g = 0; g < groups; ++g) {
      bool any_group = false;
      std::fill(group.begin(), group.end(), 0.f);
      for (int r = g * per_group; r < (g + 1) * per_group; ++r) {
        bool any = false;
        std::fill(part.begin(), part.end(), 0.f);
        for (int j = 0; j < k; ++j)
          if (st[j] >= 0 && placement.rank_of_slot(st[j]) == r) {
            f.accumulate(placement.expert_of_slot(st[j]), b.weight(t, j), xt, part.data(), scratch.data());
            any = true;
          }
        if (!any) continue;
        any_group = true;
        for (int h = 0; h < hidden; ++h) group[h] += part[h];
      }
      if (any_group)
        for (int h = 0; h < hidden; ++h) o[h] += group[h];
    }
  }
}

const float* expert_partials(EngineContext& c, Handle& h, const Placement& placement, const ExpertTransform& f,
                             ReductionOrder order, std::vector<float>& partials) {
  const TokenBlock& r = h.recv;
  const int hidden = c.hidden();
  std::vector<float> scratch(hidden);
  if (order != ReductionOrder::kSelections && c.can_map_rows(h) && c.dispatch_bf16 && c.combine_bf16 &&
      f.elementwise()) {
    // bf16 in and out with an elementwise expert: each row is read, weighted, summed and rounded in one pass
    // over its wire bytes, the same arithmetic as accumulate's in the same order, so the same output bits.
    partials.clear();
    std::vector<float> acc(hidden);
    c.map_wire_rows(h, [&](int i, const uint8_t* in, uint8_t* out) {
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int s = r.sel_begin[i]; s < r.sel_begin[i + 1]; ++s)
        codecs::bf16_axpy_kernel(in, hidden, r.sel_weight[s], f.scale(placement.expert_of_slot(r.sel_slot[s])),
                                 acc.data());
      codecs::bf16_encode_kernel(acc.data(), hidden, out);
    });
    return nullptr;
  }
  if (order != ReductionOrder::kSelections && c.can_map_rows(h)) {
    partials.clear();
    c.map_rows(h, [&](int i, const float* xi, float* p) {
      for (int s = r.sel_begin[i]; s < r.sel_begin[i + 1]; ++s)
        f.accumulate(placement.expert_of_slot(r.sel_slot[s]), r.sel_weight[s], xi, p, scratch.data());
    });
    return nullptr;
  }
  partials.assign(static_cast<size_t>(r.size()) * hidden, 0.f);
  std::vector<float> row(hidden);
  for (int i = 0; i < r.size(); ++i) {
    const float* xi = c.recv_row(h, i, row.data());
    float* p = &partials[static_cast<size_t>(i) * hidden];
    for (int s = r.sel_begin[i]; s < r.sel_begin[i + 1]; ++s) {
      const int e = placement.expert_of_slot(r.sel_slot[s]);
      if (order == ReductionOrder::kSelections)
        f.apply(e, xi, p);
      else
        f.accumulate(e, r.sel_weight[s], xi, p, scratch.data());
    }
  }
  return partials.data();
}

void Comparison::merge(const Comparison& o) {
  max_abs_err = std::max(max_abs_err, o.max_abs_err);
  // rel_l2 is merged by the caller from sums; keep the worst here.
  rel_l2 = std::max(rel_l2, o.rel_l2);
  mismatches += o.mismatches;
  nonfinite += o.nonfinite;
}

Comparison compare(const float* got, const float* want, size_t n) {
  Comparison c;
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) {
      ++c.nonfinite;
      continue;
    }
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) ++c.mismatches;
    const double d = static_cast<double>(got[i]) - want[i];
    c.max_abs_err = std::max(c.max_abs_err, std::fabs(d));
    num += d * d;
    den += static_cast<double>(want[i]) * want[i];
  }
  c.rel_l2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return c;
}

namespace {
uint64_t mix64(uint64_t x) {  // SplitMix64's finalizer: a bijection that spreads every input bit
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

void DeliveryDigest::add(int32_t token, int32_t slot) {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(token)) << 32) | static_cast<uint32_t>(slot);
  ++count;
  h1 += mix64(key ^ 0x9e3779b97f4a7c15ULL);
  h2 += mix64(mix64(key) + 0x632be59bd9b4e019ULL);
}

void DeliveryLog::resize(int calls, int num_ranks) {
  ranks = num_ranks;
  sent.assign(static_cast<size_t>(calls) * num_ranks, {});
  got.assign(static_cast<size_t>(calls) * num_ranks, {});
}

DeliveryCheck check_deliveries(const std::vector<const DeliveryLog*>& logs) {
  DeliveryCheck c;
  const int R = static_cast<int>(logs.size());
  for (int r = 0; r < R; ++r)
    if (logs[r]->ranks != R || logs[r]->sent.size() != logs[0]->sent.size() ||
        logs[r]->got.size() != logs[r]->sent.size())
      throw EplabError("verification: rank " + std::to_string(r) + "'s delivery log has another shape than rank 0's");
  const int calls = R ? static_cast<int>(logs[0]->sent.size() / R) : 0;
  for (int call = 0; call < calls; ++call)
    for (int src = 0; src < R; ++src)
      for (int dest = 0; dest < R; ++dest) {
        const DeliveryDigest& s = logs[src]->sent[static_cast<size_t>(call) * R + dest];
        const DeliveryDigest& g = logs[dest]->got[static_cast<size_t>(call) * R + src];
        c.selections += s.count;
        if (s == g) continue;
        if (c.mismatched_pairs++ == 0) c.first = {call, src, dest, s.count, g.count};
        if (s.count > g.count) c.missing += s.count - g.count;
        if (g.count > s.count) c.extra += g.count - s.count;
      }
  c.ok = c.mismatched_pairs == 0;
  return c;
}

}  // namespace eplab
