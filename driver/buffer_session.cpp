#include "driver/buffer_session.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
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
  scratch_.resize(topo_.size());
  if (opts_.hidden < 1)
    throw EplabError("eplab.Buffer: hidden must be at least 1, got " + std::to_string(opts_.hidden));
  if (const std::string why = backend_->unavailable(); !why.empty())
    throw EplabError("eplab.Buffer: backend '" + opts_.backend + "' cannot run here: " + why);
  if (!backend_->in_process())
    throw EplabError("eplab.Buffer: backend '" + opts_.backend +
                     "' runs one rank per process; a Buffer in one process stands for every rank, so it needs a "
                     "backend that runs them all here (emu, sim)");
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
  if (static_cast<int>(inputs.size()) != topo_.size())
    throw EplabError("dispatch: " + std::to_string(inputs.size()) + " ranks of input for a Buffer of " +
                     std::to_string(topo_.size()) + " ranks");
  if (topk < 1) throw EplabError("topk_idx: top-k must be at least 1, got " + std::to_string(topk));
  for (size_t r = 0; r < inputs.size(); ++r) {
    const BufferRankInput& in = inputs[r];
    if (in.num_tokens < 0) throw EplabError("dispatch: rank " + std::to_string(r) + " has a negative token count");
    if (in.num_tokens > 0 && (!in.topk_idx || !in.weights || in.x.empty()))
      throw EplabError("dispatch: rank " + std::to_string(r) + " lacks topk_idx, topk_weights or x");
    for (size_t i = 0; i < static_cast<size_t>(in.num_tokens) * topk; ++i)
      if (in.topk_idx[i] < -1 || in.topk_idx[i] >= opts_.num_experts)
        throw EplabError("topk_idx: rank " + std::to_string(r) + ", token " + std::to_string(i / topk) +
                         " selects expert " + std::to_string(in.topk_idx[i]) + ", outside -1.." +
                         std::to_string(opts_.num_experts - 1));
  }
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
  const int R = topo_.size();
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
  run_dispatch(*h, inputs, codec, false, recv, time);
  return h;
}

void BufferSession::dispatch_cached(BufferHandleState& h, const std::vector<BufferRankInput>& inputs,
                                    const std::string& codec, std::vector<BufferRecv>& recv, BufferTime& time) {
  std::lock_guard<std::mutex> lock(mu_);
  if (h.session != id_) throw EplabError("dispatch: the handle comes from another Buffer");
  if (static_cast<int>(inputs.size()) != topo_.size())
    throw EplabError("dispatch: " + std::to_string(inputs.size()) + " ranks of input for a Buffer of " +
                     std::to_string(topo_.size()) + " ranks");
  for (int r = 0; r < topo_.size(); ++r)
    if (inputs[r].num_tokens != h.num_tokens[r])
      throw EplabError("dispatch: rank " + std::to_string(r) + " has " + std::to_string(inputs[r].num_tokens) +
                       " tokens, the cached handle's layout " + std::to_string(h.num_tokens[r]));
  run_dispatch(h, inputs, codec, true, recv, time);
}

void BufferSession::run_dispatch(BufferHandleState& h, const std::vector<BufferRankInput>& inputs,
                                 const std::string& codec, bool cached, std::vector<BufferRecv>& recv,
                                 BufferTime& time) {
  const int R = topo_.size(), H = opts_.hidden, topk = h.topk, epr = experts_per_rank();
  create_codec(codec);  // an unknown codec fails here, once, not on every rank
  MoeShape shape;
  shape.name = "buffer";
  shape.num_experts = opts_.num_experts;
  shape.topk = topk;
  shape.hidden = H;
  shape.max_nodes_per_token = 0;
  shape.dispatch_codec = codec;
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
    const int me = f.rank();
    EpEngine engine(f, shape, placement_, eo);
    EngineContext& ctx = engine.context();
    lend_scratch(ctx, me);
    if (vouch) ctx.layout_cache.insert(h.cached[me]);
    DispatchArgs a;
    a.num_tokens = h.num_tokens[me];
    a.topk = topk;
    a.slots = h.slots[me].data();
    a.weights = h.weights[me].data();
    a.x = widen(inputs[me].x, static_cast<size_t>(a.num_tokens) * H, scratch_[me].rows);
    a.placement = &placement_;
    a.layout_key = h.layout_key;
    a.layout_cached = vouch;
    f.set_phase("dispatch");
    f.barrier();
    const double t0 = f.now();
    Handle eh = engine.dispatch(a);
    call_s[me] = f.now() - t0;
    notify_s[me] = engine.stats().notify.time_s;
    if (!cached)
      if (const LayoutCache::Entry* e = ctx.layout_cache.find(h.layout_key)) h.cached[me] = *e;
    // DeepEP's order: by source rank, then token. Algorithms deliver in their own order (hierarchical: by
    // forwarder), so the rows are sorted and combine's rows mapped back.
    const int rows = eh.recv.size();
    std::vector<int32_t>& ord = order[me];
    ord.resize(rows);
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int32_t i, int32_t j) {
      return eh.recv.src_rank[i] != eh.recv.src_rank[j] ? eh.recv.src_rank[i] < eh.recv.src_rank[j]
                                                        : eh.recv.token[i] < eh.recv.token[j];
    });
    BufferRecv& out = recv[me];
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
    for (int i = 0; i < rows; ++i) {
      const int j = ord[i], src = eh.recv.src_rank[j], tok = eh.recv.token[j];
      out.src_rank[i] = src;
      out.src_token[i] = tok;
      const int32_t* sel = h.slots[src].data() + static_cast<size_t>(tok) * topk;
      const float* w = h.weights[src].data() + static_cast<size_t>(tok) * topk;
      for (int k = 0; k < topk; ++k)
        if (sel[k] >= 0 && placement_.rank_of_slot(sel[k]) == me) {
          const int local = sel[k] - me * epr;
          out.topk_idx[static_cast<size_t>(i) * topk + k] = local;
          out.topk_weights[static_cast<size_t>(i) * topk + k] = w[k];
          ++out.tokens_per_expert[local];
        }
      uint8_t* dst = out.wire.data() + static_cast<size_t>(i) * wire_row;
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
    take_scratch(ctx, me);
    handles[me] = std::move(eh);
  });
  h.handles = std::move(handles);
  h.order = std::move(order);
  h.rows.resize(R);
  for (int r = 0; r < R; ++r) h.rows[r] = recv[r].rows();
  time = BufferTime{*std::max_element(call_s.begin(), call_s.end()),
                    *std::max_element(notify_s.begin(), notify_s.end()), caps_.modeled_time};
}

void BufferSession::combine(BufferHandleState& h, const std::vector<BufferRows>& partials, const std::string& codec,
                            std::vector<std::vector<float>>& out, BufferTime& time) {
  std::lock_guard<std::mutex> lock(mu_);
  const int R = topo_.size(), H = opts_.hidden;
  if (h.session != id_) throw EplabError("combine: the handle comes from another Buffer");
  if (static_cast<int>(partials.size()) != R)
    throw EplabError("combine: " + std::to_string(partials.size()) + " ranks of input for a Buffer of " +
                     std::to_string(R) + " ranks");
  for (int r = 0; r < R; ++r)
    if (h.rows[r] > 0 && partials[r].empty())
      throw EplabError("combine: rank " + std::to_string(r) + " lacks its rows");
  create_codec(codec);
  MoeShape shape;
  shape.name = "buffer";
  shape.num_experts = opts_.num_experts;
  shape.topk = h.topk;
  shape.hidden = H;
  shape.max_nodes_per_token = 0;
  shape.combine_codec = codec;
  const EngineOptions eo = engine_options("fp32", codec);
  out.assign(R, {});
  std::vector<double> call_s(R, 0);
  backend_->launch(topo_, LaunchOptions{false, opts_.timeout_s, opts_.sim_model}, [&](Fabric& f) {
    const int me = f.rank();
    EpEngine engine(f, shape, placement_, eo);
    lend_scratch(engine.context(), me);
    // The caller's rows are in DeepEP's order; the engine wants its own.
    const std::vector<int32_t>& ord = h.order[me];
    std::vector<float>& rows = scratch_[me].rows;
    resize_huge(rows, static_cast<size_t>(h.rows[me]) * H);
    const BufferRows& in = partials[me];
    for (size_t i = 0; i < ord.size(); ++i) {
      float* dst = rows.data() + static_cast<size_t>(ord[i]) * H;
      if (in.bf16)
        for (int e = 0; e < H; ++e) dst[e] = std::bit_cast<float>(static_cast<uint32_t>(in.bf16[i * H + e]) << 16);
      else
        std::copy_n(in.f32 + i * H, H, dst);
    }
    resize_huge(out[me], static_cast<size_t>(h.num_tokens[me]) * H);  // combine writes every element
    f.set_phase("combine");
    f.barrier();
    const double t0 = f.now();
    engine.combine(h.handles[me], rows.data(), out[me].data());
    call_s[me] = f.now() - t0;
    take_scratch(engine.context(), me);
  });
  time = BufferTime{*std::max_element(call_s.begin(), call_s.end()), 0, caps_.modeled_time};
}

}  // namespace eplab
