// Flat dispatch/combine: one message per (source, destination) rank pair, straight over whatever link joins
// them. Counts (tokens, selections) go first to every peer so receivers know whom to expect and how much.
#include <algorithm>
#include <cstring>

#include "engine/ep_engine.hpp"
#include "engine/huge_pages.hpp"

namespace eplab {
namespace {

struct FlatState {
  std::vector<int32_t> sent_tokens;                  // [ranks] tokens this rank sent to each destination
  std::vector<std::vector<int32_t>> sent_token_ids;  // [ranks] which of our tokens, in message order
  std::vector<int32_t> recv_rows;                    // [ranks] rows received from each source, in handle order
  int round_peers = 0;                               // peers per payload round (kFlatRoundPeers, or all ranks)
};

class Flat : public Algorithm {
 public:
  std::string name() const override { return "flat"; }
  ReductionOrder reduction() const override { return ReductionOrder::kRanks; }
  bool takes_wire_rows() const override { return true; }
  bool writes_bf16(const EngineContext& c) const override { return c.sums_bf16_in_place(); }

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
    const bool split = c.split_blocks();
    for (int r = 0; r < R; ++r) {
      if (out_counts[2 * r] == 0) continue;
      st->sent_tokens[r] = static_cast<int32_t>(out_counts[2 * r]);
      if (split) continue;  // built round by round below
      if (phantom) {
        summary.assign(out_counts[2 * r], out_counts[2 * r + 1], &per_slot[static_cast<size_t>(r) * spr], spr, r * spr);
        msgs[r] = c.make_summary_message(summary, *c.dispatch_codec);
        sends.push_back({r, msgs[r].buf()});
        continue;
      }
      msgs[r] = c.take_source_block(r, blocks[r], a, EngineContext::stream_id(Phase::kDispatch, a.layer, me, r),
                                    st->sent_token_ids[r], rows);
      sends.push_back({r, msgs[r].buf()});
    }
    // Receive buffers: the whole message in inbox(r), or (split_blocks) the metadata there and the rows
    // straight into the handle's rows buffer, sources in rank order.
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
    std::vector<size_t> row_bytes_from(R, 0);
    if (split) {
      // Rounds of kFlatRoundPeers: in round j a rank sends to the peers j * G + i ranks above it and receives from
      // those as far below (i < G), so every rank sends and receives in every round. A round's messages are
      // built in outbox(i), sent, and the buffers taken by the next round; each source's metadata waits in
      // inbox(source) and its rows land at the source's place in the handle (sources in rank order), so the
      // handle is the one a single exchange builds. Gather sends hold no rows in send buffers: one round.
      st->round_peers = std::min(R, kFlatRoundPeers);
      const int G = c.gather_sends ? R : st->round_peers;
      std::vector<size_t> row_at(R + 1, 0);
      for (int r = 0; r < R; ++r) row_at[r + 1] = row_at[r] + in_counts[2 * r] * c.dispatch_row_bytes;
      std::vector<PeerSend> meta_sends, row_sends;
      std::vector<PeerRecv> meta_recvs, row_recvs;
      for (int j = 0; j * G < R; ++j) {
        meta_sends.clear(), row_sends.clear(), meta_recvs.clear(), row_recvs.clear();
        for (int i = 0; i < G && j * G + i < R; ++i) {
          const int off = j * G + i, dst = (me + off) % R, src = (me - off + R) % R;
          if (out_counts[2 * dst] > 0) {
            msgs[dst] = c.take_source_block(static_cast<size_t>(i), blocks[dst], a,
                                            EngineContext::stream_id(Phase::kDispatch, a.layer, me, dst),
                                            st->sent_token_ids[dst], rows);
            meta_sends.push_back({dst, msgs[dst].meta()});
            row_sends.push_back({dst, msgs[dst].rows()});
          }
          if (in_counts[2 * src] > 0) {
            meta_recvs.push_back({src, c.inbox(src, block_meta_bytes(in_counts[2 * src], in_counts[2 * src + 1]))});
            row_recvs.push_back({src, MutBuf{h.recv_wire.data() + row_at[src], row_at[src + 1] - row_at[src]}});
          }
        }
        c.exchange_split(disp, make_tag(Phase::kDispatch, a.step, a.layer, 2 * j),
                         make_tag(Phase::kDispatch, a.step, a.layer, 2 * j + 1), meta_sends, row_sends, meta_recvs,
                         row_recvs);
        for (size_t i = 0; i < meta_recvs.size(); ++i) {
          const int src = meta_recvs[i].peer;
          recvs.push_back(meta_recvs[i]);
          row_bytes_from[src] = row_recvs[i].bytes;
        }
        for (const PeerSend& s : meta_sends) msgs[s.peer] = {};
      }
      // Parsed in rank order, as the rows lie.
      std::sort(recvs.begin(), recvs.end(), [](const PeerRecv& x, const PeerRecv& y) { return x.peer < y.peer; });
      for (const PeerRecv& r : recvs) from.push_back(r.peer);
    } else {
      for (int r = 0; r < R; ++r) {
        if (in_counts[2 * r] == 0) continue;
        recvs.push_back(
            {r, c.inbox(r, phantom ? EngineContext::summary_capacity(in_counts[2 * r + 1], spr)
                                   : c.block_capacity(in_counts[2 * r], in_counts[2 * r + 1], *c.dispatch_codec))});
        from.push_back(r);
      }
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
          split ? c.add_split_block(h, inbox[r], recvs[i].bytes, row_bytes_from[r], in_counts[2 * r],
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
    const int R = c.topo.size(), me = c.rank();
    auto& st = *static_cast<FlatState*>(h.state.get());
    PhaseStats comb;
    c.fabric.set_phase("combine");
    const double t0 = c.fabric.now();
    std::vector<size_t> first_row(R + 1, 0);  // the handle's rows from source r start at first_row[r]
    for (int r = 0; r < R; ++r) first_row[r + 1] = first_row[r] + st.recv_rows[r];
    if (c.consume_in_place()) {
      // Every answer read where its sender holds it (its handle's expert outputs) and added into out in rank
      // order, as the reference sums: one exchange, no receive buffers, so no rounds either.
      std::vector<EngineContext::Message> msgs(R);
      std::vector<PeerSend> sends;
      std::vector<PeerConsume> recvs;
      for (int r = 0; r < R; ++r) {
        if (st.recv_rows[r] == 0) continue;
        msgs[r] = c.partials_message(h, partials, first_row[r], st.recv_rows[r],
                                     EngineContext::stream_id(Phase::kCombine, h.layer, me, r));
        sends.push_back({r, msgs[r].buf()});
      }
      // Token by token where the combine codec has a row format: each output row written once (and rounded once
      // in bf16), from answers that may stay in their senders' processes (PeerConsume::takes_pull).
      const bool by_token = c.combine_row_bytes > 0;
      for (int r = 0; r < R; ++r)
        if (st.sent_tokens[r] > 0) {
          recvs.push_back({r, c.rows_capacity(st.sent_tokens[r], *c.combine_codec)});
          recvs.back().takes_pull = by_token;
        }
      c.exchange_consume(comb, make_tag(Phase::kCombine, h.step, h.layer), sends, recvs, [&] {
        if (by_token) {
          std::vector<EngineContext::RowsIn> ins;
          for (const PeerConsume& r : recvs)
            ins.push_back({r.data, r.bytes, &st.sent_token_ids[r.peer], r.peer,
                           EngineContext::stream_id(Phase::kCombine, h.layer, r.peer, me), r.remote});
          c.sum_rows(ins, h.num_tokens, out);
          return;
        }
        std::vector<float> rows;
        c.begin_sum(h.num_tokens);
        for (const PeerConsume& r : recvs)
          c.add_rows_message(r.data, r.bytes, st.sent_token_ids[r.peer], out, *c.combine_codec,
                             EngineContext::stream_id(Phase::kCombine, h.layer, r.peer, me), r.peer, rows);
        c.end_sum(out);
      });
      comb.time_s = c.fabric.now() - t0;
      comb.calls = 1;
      c.stats.combine.add(comb);
      return;
    }
    if (!c.phantom()) c.begin_sum(h.num_tokens);
    // Answers are added into out in rank order, as the reference sums. A dispatch made in rounds answers in
    // rounds of G answering ranks, ascending: in round j the ranks j * G .. j * G + G - 1 send every answer and
    // each rank receives theirs into G reply buffers (dispatch's send buffers), then adds them; the sum's order
    // is the single exchange's. Otherwise one round, each answer in the buffer its dispatch message left
    // (EngineContext::reply_box).
    const int G = st.round_peers > 0 ? st.round_peers : R;
    std::vector<EngineContext::Message> msgs(R);
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    std::vector<const std::vector<uint8_t>*> box;
    std::vector<float> rows;
    c.ensure_boxes(R);
    for (int lo = 0; lo < R; lo += G) {
      const int hi = std::min(R, lo + G);
      sends.clear(), recvs.clear(), box.clear();
      if (me >= lo && me < hi)
        for (int r = 0; r < R; ++r) {
          const int n = st.recv_rows[r];
          if (n == 0) continue;
          msgs[r] = c.partials_message(h, partials, first_row[r], n,
                                       EngineContext::stream_id(Phase::kCombine, h.layer, me, r));
          sends.push_back({r, msgs[r].buf()});
        }
      for (int r = lo; r < hi; ++r) {
        if (st.sent_tokens[r] == 0) continue;
        const size_t cap = c.rows_capacity(st.sent_tokens[r], *c.combine_codec);
        std::vector<uint8_t>& v = G == R ? c.reply_box(r, cap) : c.outboxes[r - lo];
        if (v.size() < cap) resize_huge(v, cap);
        recvs.push_back({r, MutBuf{v.data(), cap}});
        box.push_back(&v);
      }
      c.exchange(comb, make_tag(Phase::kCombine, h.step, h.layer, lo / G), sends, recvs);
      for (const PeerSend& s : sends) msgs[s.peer] = {};
      if (!c.phantom())
        for (size_t i = 0; i < recvs.size(); ++i) {
          const int r = recvs[i].peer;
          c.add_rows_message(*box[i], recvs[i].bytes, st.sent_token_ids[r], out, *c.combine_codec,
                             EngineContext::stream_id(Phase::kCombine, h.layer, r, me), r, rows);
        }
    }
    if (!c.phantom()) c.end_sum(out);
    comb.time_s = c.fabric.now() - t0;
    comb.calls = 1;
    c.stats.combine.add(comb);
  }
};

}  // namespace

std::unique_ptr<Algorithm> make_flat_algorithm() { return std::make_unique<Flat>(); }

}  // namespace eplab
