// Allgather baseline (Megatron's allgather token dispatcher, how dense
// collectives do MoE): every rank gathers every rank's whole batch (all tokens'
// activations and top-k metadata, routed or not), keeps the selections of its
// own slots, and combine is a dense reduce-scatter: each rank returns a partial
// for EVERY token of every source (zero rows where it held none of the token's
// experts), and the source sums them in rank order. Reduce-scatter rather than
// a sparse return is what the dense baseline honestly moves; adding the zero
// rows leaves the kRanks sum bit-identical to the reference, since a running
// sum that starts at +0 never becomes -0.
#include <cstring>

#include "engine/ep_engine.hpp"

namespace eplab {
namespace {

struct AllgatherState {
  std::vector<int32_t> src_tokens;         // [ranks] batch size of each source
  std::vector<std::vector<int32_t>> kept;  // [ranks] tokens of each source kept here, in handle order
};

class Allgather : public Algorithm {
 public:
  std::string name() const override { return "allgather"; }
  ReductionOrder reduction() const override { return ReductionOrder::kRanks; }

  Handle dispatch(EngineContext &c, const DispatchArgs &a) override {
    const int R = c.topo.size(), me = c.rank(), spr = c.placement.slots_per_rank();
    const bool phantom = c.phantom();
    auto st = std::make_shared<AllgatherState>();
    // The whole batch, every token, with all its valid selections in top-k
    // order (real payload), and what each destination keeps: the tokens and
    // selections of its own slots, which is all a phantom destination is sent
    // (EngineContext::BlockSummary), charged as the whole batch.
    TokenBlock all;
    int all_sels = 0;
    std::vector<uint32_t> keep_counts(2 * R, 0);  // per destination: tokens, selections
    std::vector<int32_t> per_slot(phantom ? static_cast<size_t>(R) * spr : 0, 0);
    std::vector<int> last(R, -1);
    for (int t = 0; t < a.num_tokens; ++t) {
      if (!phantom) all.add_token(me, t);
      for (int k = 0; k < a.topk; ++k) {
        const size_t i = static_cast<size_t>(t) * a.topk + k;
        const int32_t s = a.slots[i];
        if (s < 0) continue;
        ++all_sels;
        if (!phantom) {
          all.add_sel(s, a.weights[i]);
          continue;
        }
        const int r = c.slot_home[s].rank;
        if (last[r] != t) {
          last[r] = t;
          ++keep_counts[2 * r];
        }
        ++keep_counts[2 * r + 1];
        ++per_slot[s];
      }
    }

    // Notify: the batch size, and the metadata each destination will receive
    // as real bytes, so every receive buffer fits.
    PhaseStats notify;
    c.fabric.set_phase("notify");
    const double t0 = c.fabric.now();
    std::vector<uint32_t> out_counts(3 * R), in_counts(3 * R);
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    for (int r = 0; r < R; ++r) {
      out_counts[3 * r] = static_cast<uint32_t>(a.num_tokens);
      out_counts[3 * r + 1] = phantom ? keep_counts[2 * r] : static_cast<uint32_t>(a.num_tokens);
      out_counts[3 * r + 2] = phantom ? keep_counts[2 * r + 1] : static_cast<uint32_t>(all_sels);
      sends.push_back({r, ConstBuf{&out_counts[3 * r], 12}});
      recvs.push_back({r, MutBuf{&in_counts[3 * r], 12}});
    }
    c.exchange(notify, make_tag(Phase::kNotify, a.step, a.layer), sends, recvs);
    const double t1 = c.fabric.now();
    notify.time_s = t1 - t0;
    notify.calls = 1;

    // Payload: one encoding of the batch, sent to every rank (itself included)
    // on one stream per source.
    PhaseStats disp;
    c.fabric.set_phase("dispatch");
    sends.clear();
    recvs.clear();
    EngineContext::Message msg;
    std::vector<EngineContext::Message> sized(phantom ? R : 0);
    EngineContext::BlockSummary summary;
    if (a.num_tokens > 0 && !phantom) {
      msg = c.make_block_message(all, a.x, *c.dispatch_codec,
                                 EngineContext::stream_id(Phase::kAllgather, a.layer, me, me));
      for (int r = 0; r < R; ++r) sends.push_back({r, msg.buf()});
    } else if (a.num_tokens > 0) {
      const size_t full =
          block_meta_bytes(a.num_tokens, all_sels) + c.dispatch_codec->encoded_size(a.num_tokens, c.hidden());
      for (int r = 0; r < R; ++r) {
        summary.assign(keep_counts[2 * r], keep_counts[2 * r + 1], &per_slot[static_cast<size_t>(r) * spr], spr,
                       r * spr);
        sized[r] = c.make_summary_message(summary, *c.dispatch_codec, full);
        sends.push_back({r, sized[r].buf()});
      }
    }
    st->src_tokens.assign(R, 0);
    std::vector<std::vector<uint8_t>> inbox(R);
    std::vector<int> from;
    for (int r = 0; r < R; ++r) {
      st->src_tokens[r] = static_cast<int32_t>(in_counts[3 * r]);
      if (in_counts[3 * r] == 0) continue;
      inbox[r].resize(phantom ? EngineContext::summary_capacity(in_counts[3 * r + 2], spr)
                              : c.block_capacity(in_counts[3 * r + 1], in_counts[3 * r + 2], *c.dispatch_codec));
      recvs.push_back({r, MutBuf{inbox[r].data(), inbox[r].size()}});
      from.push_back(r);
    }
    c.exchange(disp, make_tag(Phase::kAllgather, a.step, a.layer), sends, recvs);

    // Keep the tokens with at least one selection on this rank's slots, with
    // only those selections.
    Handle h;
    h.step = a.step;
    h.layer = a.layer;
    h.num_tokens = a.num_tokens;
    st->kept.assign(R, {});
    const int H = c.hidden();
    TokenBlock b;
    std::vector<float> brows;
    for (size_t i = 0; i < from.size(); ++i) {
      const int r = from[i];
      if (phantom) {
        c.read_summary_message(inbox[r], recvs[i].bytes, summary, in_counts[3 * r + 1], in_counts[3 * r + 2], r);
        c.add_summary(h, summary);
        continue;
      }
      c.read_block_message(inbox[r], recvs[i].bytes, b, brows, *c.dispatch_codec,
                           EngineContext::stream_id(Phase::kAllgather, a.layer, r, r), r);
      for (int j = 0; j < b.size(); ++j) {
        bool any = false;
        for (int s = b.sel_begin[j]; s < b.sel_begin[j + 1]; ++s) {
          if (c.placement.rank_of_slot(b.sel_slot[s]) != me) continue;
          if (!any) {
            h.recv.add_token(b.src_rank[j], b.token[j]);
            st->kept[r].push_back(b.token[j]);
            any = true;
          }
          h.recv.add_sel(b.sel_slot[s], b.sel_weight[s]);
        }
        if (any) {
          const float *row = &brows[static_cast<size_t>(j) * H];
          h.recv_x.insert(h.recv_x.end(), row, row + H);
        }
      }
    }
    disp.time_s = c.fabric.now() - t1;
    disp.calls = 1;
    c.stats.notify.add(notify);
    c.stats.dispatch.add(disp);
    h.state = st;
    return h;
  }

  // Dense reduce-scatter: every rank sends each source a full [tokens x hidden]
  // partial, zeros included.
  void combine(EngineContext &c, Handle &h, const float *partials, float *out) override {
    const int R = c.topo.size(), me = c.rank(), H = c.hidden();
    auto &st = *static_cast<AllgatherState *>(h.state.get());
    PhaseStats comb;
    c.fabric.set_phase("combine");
    const double t0 = c.fabric.now();
    std::vector<EngineContext::Message> msgs(R);
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    std::vector<float> dense;
    size_t row = 0;
    for (int r = 0; r < R; ++r) {
      const int n = st.src_tokens[r];
      if (n == 0) continue;
      if (!c.phantom()) {
        dense.assign(static_cast<size_t>(n) * H, 0.f);
        for (int32_t t : st.kept[r])
          std::memcpy(&dense[static_cast<size_t>(t) * H], partials + (row++) * H, sizeof(float) * H);
      }
      msgs[r] = c.make_rows_message(c.phantom() ? nullptr : dense.data(), n, *c.combine_codec,
                                    EngineContext::stream_id(Phase::kCombine, h.layer, me, r));
      sends.push_back({r, msgs[r].buf()});
    }
    std::vector<std::vector<uint8_t>> inbox(R);
    if (h.num_tokens > 0)
      for (int r = 0; r < R; ++r) {
        if (!c.fabric.live(r)) continue;  // a failed rank (Fabric::mark_failed) returns nothing
        inbox[r].resize(c.rows_capacity(h.num_tokens, *c.combine_codec));
        recvs.push_back({r, MutBuf{inbox[r].data(), inbox[r].size()}});
      }
    c.exchange(comb, make_tag(Phase::kCombine, h.step, h.layer), sends, recvs);
    if (!c.phantom()) {
      if (h.num_tokens > 0) std::memset(out, 0, sizeof(float) * static_cast<size_t>(h.num_tokens) * H);
      std::vector<float> rows(static_cast<size_t>(h.num_tokens) * H);
      for (size_t i = 0; i < recvs.size(); ++i) {
        const int r = recvs[i].peer;
        c.read_rows_message(inbox[r], recvs[i].bytes, h.num_tokens, rows.data(), *c.combine_codec,
                            EngineContext::stream_id(Phase::kCombine, h.layer, r, me), r);
        for (size_t e = 0; e < rows.size(); ++e) out[e] += rows[e];
      }
    }
    comb.time_s = c.fabric.now() - t0;
    comb.calls = 1;
    c.stats.combine.add(comb);
  }
};

}  // namespace

std::unique_ptr<Algorithm> make_allgather_algorithm() { return std::make_unique<Allgather>(); }

}  // namespace eplab
