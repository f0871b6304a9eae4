#include "driver/training.hpp"

#include <algorithm>
#include <map>

#include "engine/error.hpp"

namespace eplab {
namespace {

// The ring's 2(N-1) steps are charged as at most this many exchange rounds (each carrying several steps'
// bytes): they run back to back on the same links, so the bandwidth they need is the same, and a bounded
// round count keeps the simulator's work (and, overlapped, its concurrent tasks) independent of N.
constexpr int kMaxAllreduceRounds = 8;
// The overlapped all-reduce rides on the fabric's pipeline hint (the one way the engine has to leave exchange
// rounds running while the rank computes). Its rounds are not a chain of dependent stages, so the hint's
// "last chunk crosses the shortest stage" term must vanish: many chunks.
constexpr int kOverlapChunks = 1 << 20;
// Real-byte fabrics move a round in pieces of at most this size, so that a model's dense gradients (374 MB per
// DeepSeek-V3 layer) need only two such buffers per rank.
constexpr size_t kMaxRealPiece = size_t{8} << 20;

}  // namespace

void StepDriver::begin_step(int step) {
  step_ = step;
  c_.f.barrier();
  step0_ = c_.f.now();
  compute_ = 0;
  allreduce_ = 0;
  layers_.clear();
}

void StepDriver::span(const char* name, double t0, double t1) {
  // Two-batch overlap: the timeline shows the composed schedule (driver/overlap.hpp), not the serial one.
  if (c_.spans && !two_batch_) c_.spans->push_back({c_.f.rank(), name, t0, t1});
}

double StepDriver::timed_compute(const ComputeCost& cost, const char* name) {
  const double t0 = c_.f.now();
  c_.f.compute(cost);
  const double t1 = c_.f.now();
  span(name, t0, t1);
  compute_ += t1 - t0;
  return t1;
}

ComputeCost StepDriver::dense_cost(double flops_per_param_token, double hbm_bytes, int tokens) const {
  ComputeCost c;
  c.flops = flops_per_param_token * c_.shape.dense_params * tokens;
  c.hbm_bytes = hbm_bytes;
  c.what = "dense";
  return c;
}

void StepDriver::forward_layer(const DispatchArgs& args, const ComputeCost& expert, const ForwardTimes& t) {
  span("notify", t.dispatch0, t.dispatch0 + t.notify_s);
  span("dispatch", t.dispatch0 + t.notify_s, t.expert0);
  span("expert", t.expert0, t.expert1);
  span("combine", t.combine0, t.combine1);
  compute_ += t.expert1 - t.expert0;
  if (c_.cfg.mode != "training") return;
  keep_layer(args, expert, args.layer, 0);
  // The layer's dense part (attention, norms): 2 FLOPs per parameter and token, weights read once.
  timed_compute(dense_cost(2.0, c_.shape.dense_params * 2.0, c_.cfg.tokens), "dense");
}

void StepDriver::keep_layer(const DispatchArgs& args, const ComputeCost& expert, int layer, int micro_batch) {
  Layer l;
  l.layer = layer;
  l.micro_batch = micro_batch;
  l.num_tokens = args.num_tokens;
  l.topk = args.topk;
  const size_t sel = static_cast<size_t>(args.num_tokens) * args.topk;
  l.slots.assign(args.slots, args.slots + sel);
  // Phantom payloads read no weights (only counts travel), and 58 layers of them would hold ~1 GB at 256 GPUs.
  if (!c_.phantom) l.weights.assign(args.weights, args.weights + sel);
  if (args.x) l.x.assign(args.x, args.x + static_cast<size_t>(args.num_tokens) * c_.shape.hidden);
  if (args.x_rows)
    l.x_rows.assign(args.x_rows,
                    args.x_rows + static_cast<size_t>(args.num_tokens) * c_.engine.context().dispatch_row_bytes);
  l.expert = expert;
  layers_.push_back(std::move(l));
}

void StepDriver::op(OpKind kind, int micro_batch, int layer, double t0, double t1) {
  if (two_batch_) rec_.ops.push_back({step_, static_cast<int32_t>(kind), micro_batch, layer, t0, t1 - t0});
}

void StepDriver::dense_forward(int micro_batch, int layer, int tokens) {
  // The micro-batch's dense part (attention, norms): 2 FLOPs per parameter and token; each micro-batch reads
  // the weights once.
  const double t0 = c_.f.now();
  const double t1 = timed_compute(dense_cost(2.0, c_.shape.dense_params * 2.0, tokens), "dense");
  op(OpKind::kDense, micro_batch, layer, t0, t1);
}

void StepDriver::forward_micro_batch(const DispatchArgs& args, const ComputeCost& expert, int micro_batch,
                                     const ForwardTimes& t) {
  const int layer = args.layer & (kMicroBatchLayerBit - 1);
  op(OpKind::kDispatch, micro_batch, layer, t.dispatch0, t.expert0);
  op(OpKind::kExpert, micro_batch, layer, t.expert0, t.expert1);
  op(OpKind::kCombine, micro_batch, layer, t.combine0, t.combine1);
  compute_ += t.expert1 - t.expert0;
  if (c_.cfg.mode == "training") keep_layer(args, expert, layer, micro_batch);
}

// NCCL-style rings, one per local GPU index when there are several nodes: ring c visits each node's GPUs from
// local (c - node) mod G onwards and leaves the node from the GPU whose local index the next node starts with,
// so every hop between nodes stays on one rail and each GPU's NIC carries one ring. One ring within a node.
std::vector<std::pair<int, int>> StepDriver::ring_neighbours(const Topology& topo, int rank) {
  const int gpn = topo.gpus_per_node(), nodes = topo.nodes();
  const int channels = nodes > 1 ? gpn : 1, node = rank / gpn, local = rank % gpn;
  std::vector<std::pair<int, int>> out;  // (next, prev) per channel
  for (int c = 0; c < channels; ++c) {
    auto s = [&](int m) { return ((c - m) % gpn + gpn) % gpn; };
    const int pos = ((local - s(node)) % gpn + gpn) % gpn;
    int next, prev;
    if (pos < gpn - 1) {
      next = node * gpn + (local + 1) % gpn;
    } else {
      const int nn = (node + 1) % nodes;
      next = nn * gpn + s(nn);
    }
    if (pos > 0) {
      prev = node * gpn + (local + gpn - 1) % gpn;
    } else {
      const int pn = (node + nodes - 1) % nodes;
      prev = pn * gpn + (s(pn) + gpn - 1) % gpn;
    }
    out.push_back({next, prev});
  }
  return out;
}

void StepDriver::allreduce(int step, int id, double bytes) {
  Fabric& f = c_.f;
  const int n = f.size(), me = f.rank();
  if (n < 2 || bytes <= 0) return;
  f.set_phase("allreduce");
  const auto rings = ring_neighbours(f.topology(), me);
  const int channels = static_cast<int>(rings.size());
  const int ring_steps = 2 * (n - 1), rounds = std::min(ring_steps, kMaxAllreduceRounds);
  const double chunk = bytes / n;
  for (int r = 0; r < rounds; ++r) {
    const int k = ring_steps / rounds + (r < ring_steps % rounds ? 1 : 0);
    // Each ring carries 1/channels of the data; the rings whose next (previous) GPU coincide share a message.
    const size_t per_ring = static_cast<size_t>(chunk * k / channels);
    std::map<int, size_t> to, from;
    for (auto [next, prev] : rings) {
      to[next] += per_ring;
      from[prev] += per_ring;
    }
    const Deadline d = Deadline::after(f, c_.cfg.timeout_s);
    // The gradients' values are not summed, so a fabric that can charge sizes (sim, even with real payload)
    // gets the round's bytes as sizes, exactly as in phantom mode.
    if (f.caps().phantom_payload) {
      std::vector<PeerSend> sends;
      std::vector<PeerRecv> recvs;
      for (auto [peer, b] : to) sends.push_back({peer, ConstBuf{nullptr, 0, b}});
      for (auto [peer, b] : from) recvs.push_back({peer, MutBuf{}});
      f.alltoallv(make_tag(Phase::kUser, step, id, r), sends, recvs, d);
      continue;
    }
    // Real bytes travel (the emulator measures their time); their values are not summed. Pieces of at most
    // kMaxRealPiece per peer; every rank runs the same number of pieces (from the round's total, the largest
    // any pair can carry), an exhausted pair sending empty messages.
    const size_t total = per_ring * channels, piece = std::max<size_t>(1, std::min(total, kMaxRealPiece));
    const size_t pieces = std::max<size_t>(1, (total + piece - 1) / piece);
    send_buf_.resize(piece);
    recv_buf_.resize(piece * from.size());
    for (size_t p = 0; p < pieces; ++p) {
      auto len = [&](size_t b) { return b > p * piece ? std::min(piece, b - p * piece) : size_t{0}; };
      std::vector<PeerSend> sends;
      std::vector<PeerRecv> recvs;
      for (auto [peer, b] : to) sends.push_back({peer, ConstBuf{send_buf_.data(), len(b), 0}});
      size_t slot = 0;
      for (auto [peer, b] : from) recvs.push_back({peer, MutBuf{recv_buf_.data() + piece * slot++, len(b)}});
      f.alltoallv(make_tag(Phase::kUser, step, id, r * 4096 + static_cast<int>(p)), sends, recvs, d);
    }
  }
}

// Dispatch's backward: the received rows' gradients return to their tokens' ranks and are summed. With real
// payloads the gradients stand in as the received rows themselves, in fp32.
void StepDriver::backward_combine(Handle& h, int num_tokens) {
  if (!c_.phantom) {
    partials_.resize(static_cast<size_t>(h.recv.size()) * c_.shape.hidden);
    std::vector<float> row(c_.shape.hidden);
    for (int i = 0; i < h.recv.size(); ++i) {
      const float* src = c_.engine.context().recv_row(h, i, row.data());
      std::copy(src, src + c_.shape.hidden, partials_.begin() + static_cast<ptrdiff_t>(i) * c_.shape.hidden);
    }
    out_.resize(static_cast<size_t>(num_tokens) * c_.shape.hidden);
  }
  c_.engine.combine(h, c_.phantom ? nullptr : partials_.data(), c_.phantom ? nullptr : out_.data());
}

// The backward pass with two micro-batches, every phase one at a time between barriers, recorded as an op: per
// layer in reverse, each micro-batch's combine backward, expert backward, dispatch backward and dense backward,
// then (overlapped) the layer's dense gradients of both micro-batches in one all-reduce, which the composed
// schedule hides behind the next layer's backward compute; not overlapped, all layers' after the backward pass.
void StepDriver::backward_two_batch(int step) {
  Fabric& f = c_.f;
  int L = 0;
  for (const Layer& l : layers_) L = std::max(L, l.layer + 1);
  const double layer_grads = dense_grad_bytes(c_.shape);
  auto all_reduce = [&](int id, int layer, double bytes) {
    f.barrier();
    const double t0 = f.now();
    allreduce(step, id, bytes);
    op(OpKind::kAllreduce, -1, layer, t0, f.now());
  };
  for (int i = static_cast<int>(layers_.size()) - 1; i >= 0;) {
    // This layer's micro-batches, in micro-batch order.
    int first = i;
    while (first > 0 && layers_[first - 1].layer == layers_[i].layer) --first;
    for (int k = first; k <= i; ++k) {
      Layer& l = layers_[k];
      const int mb = l.micro_batch, bl = (L + (L - 1 - l.layer)) | (mb ? kMicroBatchLayerBit : 0);
      f.barrier();
      c_.links.set_phase_prefix("bwd-");
      const double d0 = f.now();
      DispatchArgs a{
          step, bl, l.num_tokens, l.topk, l.slots.data(), l.weights.data(), l.x.empty() ? nullptr : l.x.data()};
      if (!l.x_rows.empty()) a.x_rows = l.x_rows.data();
      Handle h = c_.engine.dispatch(a);
      const double d1 = f.now();
      c_.links.set_phase_prefix("");
      op(OpKind::kBwdDispatch, mb, l.layer, d0, d1);
      ComputeCost bwd = l.expert;
      bwd.flops *= 2;
      bwd.hbm_bytes *= 2;
      op(OpKind::kBwdExpert, mb, l.layer, d1, timed_compute(bwd, "bwd-expert"));
      f.barrier();
      c_.links.set_phase_prefix("bwd-");
      const double b0 = f.now();
      backward_combine(h, l.num_tokens);
      c_.links.set_phase_prefix("");
      const double b1 = f.now();
      op(OpKind::kBwdCombine, mb, l.layer, b0, b1);
      op(OpKind::kBwdDense, mb, l.layer, b1,
         timed_compute(dense_cost(4.0, c_.shape.dense_params * 4.0, l.num_tokens), "bwd-dense"));
    }
    if (c_.cfg.overlap_allreduce) all_reduce(2 * L + layers_[i].layer, layers_[i].layer, layer_grads);
    i = first - 1;
  }
  if (!c_.cfg.overlap_allreduce) all_reduce(3 * L, 0, layer_grads * L);
  layers_.clear();
}

void StepDriver::end_step(int step) {
  Fabric& f = c_.f;
  if (c_.cfg.mode == "training" && two_batch_) {
    backward_two_batch(step);
  } else if (c_.cfg.mode == "training") {
    const int L = static_cast<int>(layers_.size());
    const bool overlap = c_.cfg.overlap_allreduce;
    const double layer_grads = dense_grad_bytes(c_.shape);
    int pending = -1;  // overlap: the layer whose dense gradients wait for the next compute window
    for (int layer = L - 1; layer >= 0; --layer) {
      Layer& l = layers_[layer];
      // Backward tags use layer ids past the forward ones, so the two directions never match each other.
      const int bl = L + (L - 1 - layer);
      // Combine's backward: output gradients go to the experts that produced the outputs (dispatch-shaped).
      f.barrier();
      c_.links.set_phase_prefix("bwd-");
      const double notify0 = c_.engine.stats().notify.time_s;
      const double d0 = f.now();
      DispatchArgs a{step,
                     bl,
                     l.num_tokens,
                     l.topk,
                     l.slots.data(),
                     l.weights.empty() ? nullptr : l.weights.data(),
                     l.x.empty() ? nullptr : l.x.data()};
      if (!l.x_rows.empty()) a.x_rows = l.x_rows.data();
      Handle h = c_.engine.dispatch(a);
      const double d1 = f.now(), notify_s = c_.engine.stats().notify.time_s - notify0;
      c_.links.set_phase_prefix("");
      span("bwd-notify", d0, d0 + notify_s);
      span("bwd-dispatch", d0 + notify_s, d1);
      // Expert backward: input and weight gradients, twice the forward FLOPs; the previous layer's dense
      // gradients are all-reduced meanwhile when overlapped.
      const double ar0 = f.now();
      if (pending >= 0) {
        f.begin_pipeline(kOverlapChunks);
        allreduce(step, 2 * L + pending, layer_grads);
      }
      ComputeCost bwd = l.expert;
      bwd.flops *= 2;
      bwd.hbm_bytes *= 2;
      const double tc = timed_compute(bwd, "bwd-expert");
      if (pending >= 0) {
        f.end_pipeline();
        const double ar1 = f.now();
        span("allreduce", ar0, ar1);
        allreduce_ += ar1 - tc;
        pending = -1;
      }
      // Dispatch's backward: input gradients return to the tokens' ranks and are summed (combine-shaped).
      f.barrier();
      c_.links.set_phase_prefix("bwd-");
      const double b0 = f.now();
      backward_combine(h, l.num_tokens);
      c_.links.set_phase_prefix("");
      span("bwd-combine", b0, f.now());
      // Dense backward: 4 FLOPs per parameter and token; weights read and gradients written.
      timed_compute(dense_cost(4.0, c_.shape.dense_params * 4.0, c_.cfg.tokens), "bwd-dense");
      if (overlap) pending = layer;
    }
    // What no compute is left to hide: the last layer's gradients (overlapped) or all of them (not).
    const double bytes = overlap ? (pending >= 0 ? layer_grads : 0) : layer_grads * L;
    f.barrier();
    const double ar0 = f.now();
    allreduce(step, 2 * L + (overlap ? pending : L), bytes);
    const double ar1 = f.now();
    span("allreduce", ar0, ar1);
    allreduce_ += ar1 - ar0;
    layers_.clear();
  }
  f.barrier();
  rec_.step_s.push_back(f.now() - step0_);
  rec_.compute_s.push_back(compute_);
  rec_.allreduce_s.push_back(allreduce_);
}

}  // namespace eplab
