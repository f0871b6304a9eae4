#include "driver/buffer_session.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <numeric>

#include "engine/error.hpp"
#include "engine/huge_pages.hpp"
#include "engine/moe_shape.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

uint64_t next_session_id() {
  static std::atomic<uint64_t> next{1};
  return next++;
}

ClusterSpec buffer_cluster(const BufferOptions& o) {
  if (o.nodes < 1 || o.gpus_per_node < 1)
    throw EplabError("eplab.Buffer: nodes and gpus_per_node must be at least 1, got " + std::to_string(o.nodes) +
                     " and " + std::to_string(o.gpus_per_node));
  ClusterSpec spec = cluster_preset(o.cluster);
  spec.nodes = o.nodes;
  spec.gpus_per_node = o.gpus_per_node;
  return spec;
}

Placement buffer_placement(const BufferOptions& o, int ranks) {
  if (o.num_experts < 1)
    throw EplabError("eplab.Buffer: num_experts must be at least 1, got " + std::to_string(o.num_experts));
  // As in DeepEP: experts split evenly, rank r holding experts [r * E/R, (r + 1) * E/R); no redundant copies.
  if (o.num_experts % ranks != 0)
    throw EplabError("eplab.Buffer: num_experts=" + std::to_string(o.num_experts) + " does not divide over " +
                     std::to_string(ranks) + " ranks (" + std::to_string(o.nodes) + " nodes x " +
                     std::to_string(o.gpus_per_node) + " GPUs); every rank must hold the same number of experts");
  return Placement::contiguous(o.num_experts, ranks);
}

// The rows as fp32: the caller's own, or its bf16 bits widened into `buf` (exact).
const float* widen(const BufferRows& rows, size_t n, std::vector<float>& buf) {
  if (!rows.bf16) return rows.f32;
  resize_huge(buf, n);
  for (size_t i = 0; i < n; ++i) buf[i] = std::bit_cast<float>(static_cast<uint32_t>(rows.bf16[i]) << 16);
  return buf.data();
}

}  // namespace

BufferSession::BufferSession(BufferOptions opts)
    : opts_(std::move(opts)),
      topo_(buffer_cluster(opts_)),
      placement_(buffer_placement(opts_, topo_.size())),
      backend_(create_backend(opts_.backend)),
      caps_(backend_->caps()),
      id_(next_session_id()) {
  if (opts_.hidden < 1)
    throw EplabError("eplab.Buffer: hidden must be at least 1, got " + std::to_string(opts_.hidden));
  if (const std::string why = backend_->unavailable(); !why.empty())
    throw EplabError("eplab.Buffer: backend '" + opts_.backend + "' cannot run here: " + why);
  if (!caps_.real_payload)
    throw EplabError("eplab.Buffer: backend '" + opts_.backend + "' moves no real bytes; dispatch needs them");
  const std::unique_ptr<Algorithm> algo = create_algorithm(opts_.algorithm);
  // DeepEP's normal mode: a rank receives one row per token that reached it and returns one row per token, which
  // the source sums. Low-latency rows are per selection and the source weights them (DeepEP's low_latency_*).
  if (algo->reduction() == ReductionOrder::kSelections)
    throw EplabError("eplab.Buffer: algorithm '" + opts_.algorithm +
                     "' returns one row per selection, weighted at the source (DeepEP's low_latency_dispatch / "
                     "low_latency_combine); eplab.Buffer implements DeepEP's normal dispatch and combine: use "
                     "'flat', 'hierarchical' or 'allgather'");
  const int R = topo_.size();
  if (backend_->in_process()) {
    first_rank_ = 0;
    held_ = R;
  } else {
    // One rank per process, as DeepEP: the launcher fixed how many there are, and a first launch (collective,
    // like DeepEP's Buffer constructor) tells this process which one it is.
    const int world = backend_->fixed_world_size();
    if (world != R)
      throw EplabError("eplab.Buffer: backend '" + opts_.backend + "' holds one rank per process and this Buffer has " +
                       std::to_string(R) + " ranks (" + std::to_string(opts_.nodes) + " nodes x " +
                       std::to_string(opts_.gpus_per_node) + " GPUs), but " + std::to_string(world) +
                       (world == 1 ? " process was started (not under mpirun?)" : " processes were started") +
                       "; start the script as mpirun -n " + std::to_string(R) + " python3 script.py");
    int rank = -1;
    backend_->launch(topo_, LaunchOptions{false, opts_.timeout_s, opts_.sim_model},
                     [&](Fabric& f) { rank = f.rank(); });
    if (rank < 0 || rank >= R) throw EplabError("eplab.Buffer: backend '" + opts_.backend + "' ran no rank here");
    first_rank_ = rank;
    held_ = 1;
  }
  scratch_.resize(held_);
}

void BufferSession::check_held(size_t n, const char* what) const {
  if (static_cast<int>(n) != held_)
    throw EplabError(std::string(what) + ": " + std::to_string(n) + " ranks of input; this process holds " +
                     std::to_string(held_) +
                     (held_ == topo_.size() ? " (every rank of the Buffer)" : " (its own rank)"));
}

void BufferSession::recv_routing(Fabric& f, BufferHandleState& h, const Handle& eh, const std::vector<int32_t>& ord) {
  const int me = f.rank(), i = me - first_rank_, topk = h.topk, R = topo_.size();
  const auto rows = static_cast<int>(ord.size());
  std::vector<int32_t>& ex = h.recv_experts[i];
  std::vector<float>& w = h.recv_weights[i];
  ex.resize(static_cast<size_t>(rows) * topk);
  w.resize(ex.size());
  if (holds_every_rank()) {  // the sources' inputs are here
    for (int r = 0; r < rows; ++r) {
      const int j = ord[r], src = eh.recv.src_rank[j];
      const size_t at = static_cast<size_t>(eh.recv.token[j]) * topk;
      std::copy_n(h.slots[src].data() + at, topk, ex.data() + static_cast<size_t>(r) * topk);
      std::copy_n(h.weights[src].data() + at, topk, w.data() + static_cast<size_t>(r) * topk);
    }
    return;
  }
  // One rank per process: every source sends each rank the expert ids and weights of its tokens that reach that
  // rank, in token order, which is DeepEP's row order within one source. The rows' metadata does not carry the
  // top-k position, so this is one more exchange, after the timed dispatch and only when the layout is new.
  const size_t entry = static_cast<size_t>(topk) * 8;
  std::vector<std::vector<uint8_t>> out(R), in(R);
  std::vector<char> reach(R);
  const std::vector<int32_t>& sl = h.slots[i];
  const std::vector<float>& sw = h.weights[i];
  for (int t = 0; t < h.num_tokens[i]; ++t) {
    std::fill(reach.begin(), reach.end(), 0);
    for (int k = 0; k < topk; ++k)
      if (const int32_t e = sl[static_cast<size_t>(t) * topk + k]; e >= 0) reach[placement_.rank_of_slot(e)] = 1;
    for (int p = 0; p < R; ++p)
      if (reach[p]) {
        const size_t at = out[p].size();
        out[p].resize(at + entry);
        std::memcpy(out[p].data() + at, sl.data() + static_cast<size_t>(t) * topk, 4 * topk);
        std::memcpy(out[p].data() + at + 4 * topk, sw.data() + static_cast<size_t>(t) * topk, 4 * topk);
      }
  }
  std::vector<size_t> from(R, 0);
  for (int r = 0; r < rows; ++r) ++from[eh.recv.src_rank[ord[r]]];
  std::vector<PeerSend> sends;
  std::vector<PeerRecv> recvs;
  for (int p = 0; p < R; ++p) {
    in[p].resize(from[p] * entry);
    sends.push_back(PeerSend{p, ConstBuf{out[p].data(), out[p].size()}});
    recvs.push_back(PeerRecv{p, MutBuf{in[p].data(), in[p].size()}});
  }
  f.set_phase("dispatch routing");
  f.alltoallv(make_tag(Phase::kUser, 0, 0, 1), sends, recvs, Deadline::after(f, opts_.timeout_s));
  for (int p = 0; p < R; ++p)
    if (recvs[p].bytes != in[p].size())
      throw EplabError("dispatch: rank " + std::to_string(me) + " received " + std::to_string(from[p]) +
                       " rows from rank " + std::to_string(p) + ", which routed " +
                       std::to_string(recvs[p].bytes / entry) + " of its tokens here");
  std::vector<size_t> next(R, 0);
  for (int r = 0; r < rows; ++r) {
    const int src = eh.recv.src_rank[ord[r]];
    const uint8_t* b = in[src].data() + next[src]++ * entry;
    std::memcpy(ex.data() + static_cast<size_t>(r) * topk, b, 4 * topk);
    std::memcpy(w.data() + static_cast<size_t>(r) * topk, b + 4 * topk, 4 * topk);
  }
}

void BufferSession::lend_scratch(EngineContext& ctx, int rank) {
  RankScratch& s = scratch_[rank];
  ctx.inboxes.swap(s.inboxes);
  ctx.outboxes.swap(s.outboxes);
  ctx.spare_rows.swap(s.spare_rows);
}

void BufferSession::take_scratch(EngineContext& ctx, int rank) {
  RankScratch& s = scratch_[rank];
  s.inboxes.swap(ctx.inboxes);
  s.outboxes.swap(ctx.outboxes);
  s.spare_rows.swap(ctx.spare_rows);
}

DispatchLayout BufferSession::layout(const int32_t* topk_idx, int num_tokens, int topk) const {
  std::vector<int32_t> slots(topk_idx, topk_idx + static_cast<size_t>(num_tokens) * topk);
  for (size_t i = 0; i < slots.size(); ++i)
    if (slots[i] < -1 || slots[i] >= opts_.num_experts)
      throw EplabError("topk_idx: token " + std::to_string(i / topk) + " selects expert " + std::to_string(slots[i]) +
                       ", outside -1.." + std::to_string(opts_.num_experts - 1));
  return compute_layout(slots, num_tokens, topk, placement_, topo_);
}

void BufferSession::check_inputs(const std::vector<BufferRankInput>& inputs, int topk) const {
  check_held(inputs.size(), "dispatch");
  if (topk < 1) throw EplabError("topk_idx: top-k must be at least 1, got " + std::to_string(topk));
  for (size_t r = 0; r < inputs.size(); ++r) {
    const BufferRankInput& in = inputs[r];
    const std::string rank = std::to_string(first_rank_ + static_cast<int>(r));
    if (in.num_tokens < 0) throw EplabError("dispatch: rank " + rank + " has a negative token count");
    if (in.num_tokens > 0 && (!in.topk_idx || !in.weights || in.x.empty()))
      throw EplabError("dispatch: rank " + rank + " lacks topk_idx, topk_weights or x");
    for (size_t i = 0; i < static_cast<size_t>(in.num_tokens) * topk; ++i)
      if (in.topk_idx[i] < -1 || in.topk_idx[i] >= opts_.num_experts)
        throw EplabError("topk_idx: rank " + rank + ", token " + std::to_string(i / topk) + " selects expert " +
                         std::to_string(in.topk_idx[i]) + ", outside -1.." + std::to_string(opts_.num_experts - 1));
  }
}

MoeShape BufferSession::engine_shape(int topk, const std::string& dispatch_codec,
                                    const std::string& combine_codec) const {
  MoeShape shape;
  shape.name = "buffer";
  shape.num_experts = opts_.num_experts;
  shape.topk = topk;
  shape.hidden = opts_.hidden;
  shape.max_nodes_per_token = 0;
  shape.dispatch_codec = dispatch_codec;
  shape.combine_codec = combine_codec;
  return shape;
}

EngineOptions BufferSession::engine_options(const std::string& dispatch_codec, const std::string& combine_codec) const {
  EngineOptions eo;
  eo.algorithm = opts_.algorithm;
  eo.dispatch_codec = dispatch_codec;
  eo.combine_codec = combine_codec;
  eo.timeout_s = opts_.timeout_s;
  eo.layout_cache = 1;  // one entry: the layout of the call at hand
  return eo;
}

std::shared_ptr<BufferHandleState> BufferSession::dispatch(const std::vector<BufferRankInput>& inputs, int topk,
                                                           const std::string& codec, std::vector<BufferRecv>& recv,
                                                           BufferTime& time) {
  std::lock_guard<std::mutex> lock(mu_);
  check_inputs(inputs, topk);
  auto h = std::make_shared<BufferHandleState>();
  const int R = held_;
  h->session = id_;
  h->layout_key = next_key_++;
  h->topk = topk;
  h->num_tokens.resize(R);
  h->slots.resize(R);
  h->weights.resize(R);
  for (int r = 0; r < R; ++r) {
    const size_t n = static_cast<size_t>(inputs[r].num_tokens) * topk;
    h->num_tokens[r] = inputs[r].num_tokens;
    h->slots[r].assign(inputs[r].topk_idx, inputs[r].topk_idx + n);  // slot s holds expert s (no redundancy)
    h->weights[r].assign(inputs[r].weights, inputs[r].weights + n);
  }
  h->cached.resize(R);
  h->recv_experts.resize(R);
  h->recv_weights.resize(R);
  run_dispatch(*h, inputs, codec, false, recv, time);
  return h;
}

void BufferSession::dispatch_cached(BufferHandleState& h, const std::vector<BufferRankInput>& inputs,
                                    const std::string& codec, std::vector<BufferRecv>& recv, BufferTime& time) {
  std::lock_guard<std::mutex> lock(mu_);
  if (h.session != id_) throw EplabError("dispatch: the handle comes from another Buffer");
  check_held(inputs.size(), "dispatch");
  for (int r = 0; r < held_; ++r)
    if (inputs[r].num_tokens != h.num_tokens[r])
      throw EplabError("dispatch: rank " + std::to_string(first_rank_ + r) + " has " +
                       std::to_string(inputs[r].num_tokens) + " tokens, the cached handle's layout " +
                       std::to_string(h.num_tokens[r]));
  run_dispatch(h, inputs, codec, true, recv, time);
}

void BufferSession::run_dispatch(BufferHandleState& h, const std::vector<BufferRankInput>& inputs,
                                 const std::string& codec, bool cached, std::vector<BufferRecv>& recv,
                                 BufferTime& time) {
  const int R = held_, H = opts_.hidden, topk = h.topk, epr = experts_per_rank();
  create_codec(codec);  // an unknown codec fails here, once, not on every rank
  const MoeShape shape = engine_shape(topk, codec, "fp32");
  const EngineOptions eo = engine_options(codec, "fp32");
  recv.assign(R, BufferRecv{});
  std::vector<Handle> handles(R);
  std::vector<std::vector<int32_t>> order(R);
  std::vector<double> call_s(R, 0), notify_s(R, 0);
  // Every rank skips notify or none does. Algorithms without a layout cache (allgather) left no entries: their
  // cached dispatch runs notify again.
  const bool vouch =
      cached && std::all_of(h.cached.begin(), h.cached.end(), [](const LayoutCache::Entry& e) { return e.key != 0; });
  backend_->launch(topo_, LaunchOptions{false, opts_.timeout_s, opts_.sim_model}, [&](Fabric& f) {
    const int me = f.rank(), i = me - first_rank_;
    EpEngine engine(f, shape, placement_, eo);
    EngineContext& ctx = engine.context();
    lend_scratch(ctx, i);
    if (vouch) ctx.layout_cache.insert(h.cached[i]);
    DispatchArgs a;
    a.num_tokens = h.num_tokens[i];
    a.topk = topk;
    a.slots = h.slots[i].data();
    a.weights = h.weights[i].data();
    a.x = widen(inputs[i].x, static_cast<size_t>(a.num_tokens) * H, scratch_[i].rows);
    a.placement = &placement_;
    a.layout_key = h.layout_key;
    a.layout_cached = vouch;
    f.set_phase("dispatch");
    f.barrier();
    const double t0 = f.now();
    Handle eh = engine.dispatch(a);
    call_s[i] = f.now() - t0;
    notify_s[i] = engine.stats().notify.time_s;
    if (!cached)
      if (const LayoutCache::Entry* e = ctx.layout_cache.find(h.layout_key)) h.cached[i] = *e;
    // DeepEP's order: by source rank, then token. Algorithms deliver in their own order (hierarchical: by
    // forwarder), so the rows are sorted and combine's rows mapped back.
    const int rows = eh.recv.size();
    std::vector<int32_t>& ord = order[i];
    ord.resize(rows);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int32_t i, int32_t j) {
      return eh.recv.src_rank[i] != eh.recv.src_rank[j] ? eh.recv.src_rank[i] < eh.recv.src_rank[j]
                                                        : eh.recv.token[i] < eh.recv.token[j];
    });
    if (!cached) recv_routing(f, h, eh, ord);
    const std::vector<int32_t>& sel_rows = h.recv_experts[i];
    const std::vector<float>& w_rows = h.recv_weights[i];
    BufferRecv& out = recv[i];
    out.src_rank.resize(rows);
    out.src_token.resize(rows);
    out.topk_idx.assign(static_cast<size_t>(rows) * topk, -1);
    out.topk_weights.assign(static_cast<size_t>(rows) * topk, 0.f);
    out.tokens_per_expert.assign(epr, 0);
    // The rows go back in the codec's wire format, which for fp32, bf16 and DeepEP's fp8 is the caller's own
    // (floats, bf16 bits, codes then scales): a copy, no decoding.
    const size_t wire_row = ctx.dispatch_codec->row_bytes(H);
    if (wire_row == 0) throw EplabError("dispatch: codec '" + codec + "' has no per-row wire format to hand back");
    resize_huge(out.wire, static_cast<size_t>(rows) * wire_row);
    std::vector<float> scratch(H);
    std::vector<uint8_t> enc;
    for (int r = 0; r < rows; ++r) {
      const int j = ord[r];
      out.src_rank[r] = eh.recv.src_rank[j];
      out.src_token[r] = eh.recv.token[j];
      const int32_t* sel = sel_rows.data() + static_cast<size_t>(r) * topk;
      const float* w = w_rows.data() + static_cast<size_t>(r) * topk;
      for (int k = 0; k < topk; ++k)
        if (sel[k] >= 0 && placement_.rank_of_slot(sel[k]) == me) {
          const int local = sel[k] - me * epr;
          out.topk_idx[static_cast<size_t>(r) * topk + k] = local;
          out.topk_weights[static_cast<size_t>(r) * topk + k] = w[k];
          ++out.tokens_per_expert[local];
        }
      uint8_t* dst = out.wire.data() + static_cast<size_t>(r) * wire_row;
      if (!eh.recv_wire.empty()) {
        std::copy_n(eh.recv_wire.data() + static_cast<size_t>(j) * wire_row, wire_row, dst);
      } else {  // the algorithm decoded on arrival (allgather): encode the row again with the same codec
        enc.clear();
        ctx.dispatch_codec->encode(ctx.recv_row(eh, j, scratch.data()), 1, H, enc);
        std::copy_n(enc.data(), wire_row, dst);
      }
    }
    // Combine takes the caller's rows; the received ones are in `out` now, and the wire rows' buffer serves the
    // next call.
    std::vector<float>().swap(eh.recv_x);
    if (eh.recv_wire.capacity() > ctx.spare_rows.capacity()) ctx.spare_rows.swap(eh.recv_wire);
    std::vector<uint8_t>().swap(eh.recv_wire);
    take_scratch(ctx, i);
    handles[i] = std::move(eh);
  });
  h.handles = std::move(handles);
  h.order = std::move(order);
  h.rows.resize(R);
  for (int r = 0; r < R; ++r) h.rows[r] = recv[r].rows();
  time = BufferTime{*std::max_element(call_s.begin(), call_s.end()),
                    *std::max_element(notify_s.begin(), notify_s.end()), caps_.modeled_time};
}

void BufferSession::combine(BufferHandleState& h, const std::vector<BufferRows>& partials, const std::string& codec,
                            std::vector<std::vector<float>>& out, BufferTime& time,
                            const std::vector<const float*>& topk_weights,
                            std::vector<std::vector<float>>* out_weights) {
  std::lock_guard<std::mutex> lock(mu_);
  const int R = held_, H = opts_.hidden, topk = h.topk;
  if (h.session != id_) throw EplabError("combine: the handle comes from another Buffer");
  check_held(partials.size(), "combine");
  for (int r = 0; r < R; ++r)
    if (h.rows[r] > 0 && partials[r].empty())
      throw EplabError("combine: rank " + std::to_string(first_rank_ + r) + " lacks its rows");
  const bool with_weights = !topk_weights.empty();
  if (with_weights) {
    check_held(topk_weights.size(), "combine: topk_weights");
    if (!out_weights) throw EplabError("combine: topk_weights given without an output for their sums");
    out_weights->assign(R, {});
  }
  create_codec(codec);
  const MoeShape shape = engine_shape(topk, "fp32", codec);
  const EngineOptions eo = engine_options("fp32", codec);
  out.assign(R, {});
  std::vector<double> call_s(R, 0);
  backend_->launch(topo_, LaunchOptions{false, opts_.timeout_s, opts_.sim_model}, [&](Fabric& f) {
    const int me = f.rank(), i = me - first_rank_;
    EpEngine engine(f, shape, placement_, eo);
    lend_scratch(engine.context(), i);
    // The caller's rows are in DeepEP's order; the engine wants its own.
    const std::vector<int32_t>& ord = h.order[i];
    std::vector<float>& rows = scratch_[i].rows;
    resize_huge(rows, static_cast<size_t>(h.rows[i]) * H);
    const BufferRows& in = partials[i];
    for (size_t r = 0; r < ord.size(); ++r) {
      float* dst = rows.data() + static_cast<size_t>(ord[r]) * H;
      if (in.bf16)
        for (int e = 0; e < H; ++e) dst[e] = std::bit_cast<float>(static_cast<uint32_t>(in.bf16[r * H + e]) << 16);
      else
        std::copy_n(in.f32 + r * H, H, dst);
    }
    resize_huge(out[i], static_cast<size_t>(h.num_tokens[i]) * H);  // combine writes every element
    f.set_phase("combine");
    f.barrier();
    const double t0 = f.now();
    engine.combine(h.handles[i], rows.data(), out[i].data());
    call_s[i] = f.now() - t0;
    take_scratch(engine.context(), i);
    if (!with_weights) return;
    // The weights go back the way the rows did, one [topk] entry per row, outside the timed combine: each rank
    // sends a source its rows' entries in DeepEP's order (the source's token order), the source sums them over
    // the ranks its tokens reached, in rank order.
    const int ranks = topo_.size();
    const Handle& eh = h.handles[i];
    const size_t entry = static_cast<size_t>(topk) * 4;
    std::vector<std::vector<float>> back(ranks), got(ranks);
    for (size_t r = 0; r < ord.size(); ++r) {
      std::vector<float>& b = back[eh.recv.src_rank[ord[r]]];
      b.insert(b.end(), topk_weights[i] + r * topk, topk_weights[i] + (r + 1) * topk);
    }
    const std::vector<int32_t>& sl = h.slots[i];
    std::vector<std::vector<int>> reached(ranks);  // [rank] this rank's tokens that reached it, in order
    std::vector<char> reach(ranks);
    for (int t = 0; t < h.num_tokens[i]; ++t) {
      std::fill(reach.begin(), reach.end(), 0);
      for (int k = 0; k < topk; ++k)
        if (const int32_t e = sl[static_cast<size_t>(t) * topk + k]; e >= 0) reach[placement_.rank_of_slot(e)] = 1;
      for (int p = 0; p < ranks; ++p)
        if (reach[p]) reached[p].push_back(t);
    }
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    for (int p = 0; p < ranks; ++p) {
      got[p].resize(reached[p].size() * topk);
      sends.push_back(PeerSend{p, ConstBuf{back[p].data(), back[p].size() * 4}});
      recvs.push_back(PeerRecv{p, MutBuf{got[p].data(), got[p].size() * 4}});
    }
    f.set_phase("combine weights");
    f.alltoallv(make_tag(Phase::kUser, 0, 0, 2), sends, recvs, Deadline::after(f, opts_.timeout_s));
    std::vector<float>& sums = (*out_weights)[i];
    sums.assign(static_cast<size_t>(h.num_tokens[i]) * topk, 0.f);
    for (int p = 0; p < ranks; ++p) {
      if (recvs[p].bytes != got[p].size() * 4)
        throw EplabError("combine: rank " + std::to_string(me) + " got " + std::to_string(recvs[p].bytes / entry) +
                         " weight rows from rank " + std::to_string(p) + " for " + std::to_string(reached[p].size()) +
                         " tokens that reached it");
      for (size_t n = 0; n < reached[p].size(); ++n)
        for (int k = 0; k < topk; ++k) sums[static_cast<size_t>(reached[p][n]) * topk + k] += got[p][n * topk + k];
    }
  });
  time = BufferTime{*std::max_element(call_s.begin(), call_s.end()), 0, caps_.modeled_time};
}

}  // namespace eplab
