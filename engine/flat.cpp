// Flat dispatch/combine: one message per (source, destination) rank pair, straight over whatever link joins
// them. Counts (tokens, selections) go first to every peer so receivers know whom to expect and how much.
#include <cstring>

#include "engine/ep_engine.hpp"

namespace eplab {
namespace {

struct FlatState {
  std::vector<int32_t> sent_tokens;                  // [ranks] tokens this rank sent to each destination
  std::vector<std::vector<int32_t>> sent_token_ids;  // [ranks] which of our tokens, in message order
  std::vector<int32_t> recv_rows;                    // [ranks] rows received from each source, in handle order
};

class Flat : public Algorithm {
 public:
  std::string name() const override { return "flat"; }
  ReductionOrder reduction() const override { return ReductionOrder::kRanks; }

  Handle dispatch(EngineContext& c, const DispatchArgs& a) override {
    const int R = c.topo.size(), me = c.rank(), H = c.hidden(), spr = c.placement.slots_per_rank();
    const bool phantom = c.phantom();
    auto st = std::make_shared<FlatState>();
    // Real payload: one block per destination. Phantom: counts only (EngineContext::BlockSummary).
    std::vector<TokenBlock> blocks(phantom ? 0 : R);
    std::vector<int32_t> per_slot(phantom ? static_cast<size_t>(R) * spr : 0, 0);
    std::vector<uint32_t> out_counts(2 * R, 0), in_counts(2 * R);  // per rank: tokens, selections
    std::vector<int> last(R, -1);
    for (int t = 0; t < a.num_tokens; ++t)
      for (int k = 0; k < a.topk; ++k) {
        const int32_t s = a.slots[static_cast<size_t>(t) * a.topk + k];
        if (s < 0) continue;
        const int r = c.slot_home[s].rank;
        if (last[r] != t) {
          last[r] = t;
          ++out_counts[2 * r];
          if (!phantom) blocks[r].add_token(me, t);
        }
        ++out_counts[2 * r + 1];
        if (phantom)
          ++per_slot[s];
        else
          blocks[r].add_sel(s, a.weights[static_cast<size_t>(t) * a.topk + k]);
      }

    // Notify: (tokens, selections) to every rank, including ourselves; a vouched cached layout skips it.
    PhaseStats notify;
    c.fabric.set_phase("notify");
    const double t0 = c.fabric.now();
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    if (const std::vector<uint32_t>* cached = c.cached_counts(a)) {
      in_counts = *cached;
    } else {
      for (int r = 0; r < R; ++r) {
        sends.push_back({r, ConstBuf{&out_counts[2 * r], 8}});
        recvs.push_back({r, MutBuf{&in_counts[2 * r], 8}});
      }
      c.exchange(notify, make_tag(Phase::kNotify, a.step, a.layer), sends, recvs);
      c.store_counts(a, in_counts, c.fabric.now() - t0);
    }
    const double t1 = c.fabric.now();
    notify.time_s = t1 - t0;
    notify.calls = 1;

    // Payload.
    PhaseStats disp;
    c.fabric.set_phase("dispatch");
    std::vector<EngineContext::Message> msgs(R);
    std::vector<float> rows;
    sends.clear();
    recvs.clear();
    st->sent_tokens.assign(R, 0);
    st->sent_token_ids.assign(R, {});
    EngineContext::BlockSummary summary;
    for (int r = 0; r < R; ++r) {
      if (out_counts[2 * r] == 0) continue;
      st->sent_tokens[r] = static_cast<int32_t>(out_counts[2 * r]);
      if (phantom) {
        summary.assign(out_counts[2 * r], out_counts[2 * r + 1], &per_slot[static_cast<size_t>(r) * spr], spr, r * spr);
        msgs[r] = c.make_summary_message(summary, *c.dispatch_codec);
        sends.push_back({r, msgs[r].buf()});
        continue;
      }
      msgs[r] = c.take_source_block(r, blocks[r], a.x, EngineContext::stream_id(Phase::kDispatch, a.layer, me, r),
                                    st->sent_token_ids[r], rows);
      sends.push_back({r, msgs[r].buf()});
    }
    // Receive buffers: the whole message in inbox(r), or (split_blocks) the metadata there and the rows
    // straight into the handle's rows buffer, sources in rank order.
    const bool split = c.split_blocks();
    Handle h;
    h.step = a.step;
    h.layer = a.layer;
    h.num_tokens = a.num_tokens;
    size_t in_tokens = 0, in_sels = 0;
    for (int r = 0; r < R; ++r) in_tokens += in_counts[2 * r], in_sels += in_counts[2 * r + 1];
    if (split) c.take_spare_rows_sized(h.recv_wire, in_tokens * c.dispatch_row_bytes);
    c.ensure_boxes(R);
    std::vector<std::vector<uint8_t>>& inbox = c.inboxes;
    std::vector<int> from;
    std::vector<PeerSend> row_sends;
    std::vector<PeerRecv> row_recvs;
    size_t row_at = 0;
    for (int r = 0; r < R; ++r) {
      if (in_counts[2 * r] == 0) continue;
      if (split) {
        recvs.push_back({r, c.inbox(r, block_meta_bytes(in_counts[2 * r], in_counts[2 * r + 1]))});
        const size_t bytes = in_counts[2 * r] * c.dispatch_row_bytes;
        row_recvs.push_back({r, MutBuf{h.recv_wire.data() + row_at, bytes}});
        row_at += bytes;
      } else {
        recvs.push_back(
            {r, c.inbox(r, phantom ? EngineContext::summary_capacity(in_counts[2 * r + 1], spr)
                                   : c.block_capacity(in_counts[2 * r], in_counts[2 * r + 1], *c.dispatch_codec))});
      }
      from.push_back(r);
    }
    if (split) {
      std::vector<PeerSend> meta_sends;
      for (const PeerSend& s : sends) {
        meta_sends.push_back({s.peer, msgs[s.peer].meta()});
        row_sends.push_back({s.peer, msgs[s.peer].rows()});
      }
      c.exchange_split(disp, make_tag(Phase::kDispatch, a.step, a.layer),
                       make_tag(Phase::kDispatch, a.step, a.layer, 1), meta_sends, row_sends, recvs, row_recvs);
    } else {
      c.exchange(disp, make_tag(Phase::kDispatch, a.step, a.layer), sends, recvs);
    }
    std::vector<EngineContext::Message>().swap(msgs);

    st->recv_rows.assign(R, 0);
    if (!phantom) h.recv.reserve(in_tokens, in_sels);
    if (!phantom && !split) {  // split blocks' rows are in place already
      if (c.dispatch_row_bytes > 0)
        c.take_spare_rows(h.recv_wire, in_tokens * c.dispatch_row_bytes);
      else
        h.recv_x.reserve(in_tokens * H);
    }
    TokenBlock b;
    std::vector<float> brows;
    for (size_t i = 0; i < from.size(); ++i) {
      const int r = from[i];
      st->recv_rows[r] =
          split ? c.add_split_block(h, inbox[r], recvs[i].bytes, row_recvs[i].bytes, in_counts[2 * r],
                                    in_counts[2 * r + 1], r, b)
                : c.add_block_message(h, inbox[r], recvs[i].bytes, in_counts[2 * r], in_counts[2 * r + 1],
                                      *c.dispatch_codec, EngineContext::stream_id(Phase::kDispatch, a.layer, r, me), r,
                                      b, brows);
    }
    disp.time_s = c.fabric.now() - t1;
    disp.calls = 1;
    c.stats.notify.add(notify);
    c.stats.dispatch.add(disp);
    h.state = st;
    return h;
  }

  void combine(EngineContext& c, Handle& h, const float* partials, float* out) override {
    const int R = c.topo.size(), me = c.rank(), H = c.hidden();
    auto& st = *static_cast<FlatState*>(h.state.get());
    PhaseStats comb;
    c.fabric.set_phase("combine");
    const double t0 = c.fabric.now();
    std::vector<EngineContext::Message> msgs(R);
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    size_t row = 0;
    for (int r = 0; r < R; ++r) {
      const int n = st.recv_rows[r];
      if (n == 0) continue;
      msgs[r] = c.partials_message(h, partials, row, n, EngineContext::stream_id(Phase::kCombine, h.layer, me, r));
      row += n;
      sends.push_back({r, msgs[r].buf()});
    }
    // Each answer lands in the buffer its dispatch message left (EngineContext::reply_box).
    c.ensure_boxes(R);
    std::vector<const std::vector<uint8_t>*> box;
    std::vector<int> from;
    for (int r = 0; r < R; ++r) {
      if (st.sent_tokens[r] == 0) continue;
      const size_t cap = c.rows_capacity(st.sent_tokens[r], *c.combine_codec);
      std::vector<uint8_t>& v = c.reply_box(r, cap);
      recvs.push_back({r, MutBuf{v.data(), cap}});
      box.push_back(&v);
      from.push_back(r);
    }
    c.exchange(comb, make_tag(Phase::kCombine, h.step, h.layer), sends, recvs);
    if (!c.phantom()) {
      if (h.num_tokens > 0) std::memset(out, 0, sizeof(float) * static_cast<size_t>(h.num_tokens) * H);
      std::vector<float> rows;
      for (size_t i = 0; i < from.size(); ++i) {
        const int r = from[i];
        c.add_rows_message(*box[i], recvs[i].bytes, st.sent_token_ids[r], out, *c.combine_codec,
                           EngineContext::stream_id(Phase::kCombine, h.layer, r, me), r, rows);
      }
    }
    comb.time_s = c.fabric.now() - t0;
    comb.calls = 1;
    c.stats.combine.add(comb);
  }
};

}  // namespace

std::unique_ptr<Algorithm> make_flat_algorithm() { return std::make_unique<Flat>(); }

}  // namespace eplab
