// Low-latency dispatch/combine (DeepEP's LL mode): every (token, selected
// expert) pair travels on its own, as a 16-byte header plus one encoded row,
// straight to the expert's GPU (scale-up within a node, scale-out otherwise,
// never forwarded) into fixed per-expert receive slots; combine returns each
// selection's unweighted expert output and the source weights and sums them in
// top-k order (ReductionOrder::kSelections).
#include <algorithm>
#include <cstring>
#include <string>

#include "engine/ep_engine.hpp"
#include "engine/error.hpp"

namespace eplab {
namespace {

// DeepEP's per-message header is one int4 (16 bytes); ours carries what the
// receiver and the source need to place the row without any other metadata. Its
// size is part of the per-selection byte formula.
struct SelectionHeader {
  int32_t token;  // index in the source's batch
  int32_t k;      // top-k position, so the source can sum in top-k order
  int32_t slot;   // physical expert slot on the receiver
  float weight;   // carried for completeness; kSelections applies it at the source
};
static_assert(sizeof(SelectionHeader) == 16, "DeepEP's LL header is 16 bytes");

struct LowLatencyState {
  int topk = 0;
  std::vector<float> weights;              // [tokens x topk] the source's own weights, for combine
  std::vector<int32_t> sent_count;         // [ranks] selections sent to each destination
  std::vector<std::vector<int32_t>> sent;  // [ranks] (real payload) t * topk + k of each selection sent, in order
  std::vector<int32_t> recv_count;         // [ranks] selections received from each source
  std::vector<int32_t> row_src,
      row_pos;             // [handle rows] (real payload) source rank and position in its message
  long valid_sels = 0;     // own valid selections, local ones included
  long scaleout_sels = 0;  // of those, selections whose expert lives on another node
};

class LowLatency : public Algorithm {
 public:
  std::string name() const override { return "low-latency"; }
  ReductionOrder reduction() const override { return ReductionOrder::kSelections; }

  // The send half and the receive half are separate steps (pack + notify +
  // payload exchange, then unpack into the per-expert slots) so a caller that
  // overlaps compute has the seam; on Fabric::alltoallv they run back to back,
  // as DeepEP's LL kernels do when return_recv_hook is off.
  Handle dispatch(EngineContext &c, const DispatchArgs &a) override {
    auto st = std::make_shared<LowLatencyState>();
    Outbox box = send_half(c, a, *st);
    Handle h = recv_half(c, a, *st, box);
    h.state = st;
    return h;
  }

  void combine(EngineContext &c, Handle &h, const float *partials, float *out) override {
    const int R = c.topo.size(), me = c.rank(), H = c.hidden();
    auto &st = *static_cast<LowLatencyState *>(h.state.get());
    PhaseStats comb;
    c.fabric.set_phase("combine");
    const double t0 = c.fabric.now();

    // Each source gets back its rows in the order it sent them, unweighted.
    std::vector<std::vector<float>> back(R);
    if (!c.phantom()) {
      for (int r = 0; r < R; ++r) back[r].resize(static_cast<size_t>(st.recv_count[r]) * H);
      for (int i = 0; i < h.recv.size(); ++i)
        std::memcpy(&back[st.row_src[i]][static_cast<size_t>(st.row_pos[i]) * H], partials + static_cast<size_t>(i) * H,
                    sizeof(float) * H);
    }
    std::vector<EngineContext::Message> msgs(R);
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    for (int r = 0; r < R; ++r) {
      if (st.recv_count[r] == 0) continue;
      msgs[r] = c.make_rows_message(c.phantom() ? nullptr : back[r].data(), st.recv_count[r], *c.combine_codec,
                                    EngineContext::stream_id(Phase::kCombine, h.layer, me, r));
      sends.push_back({r, msgs[r].buf()});
    }
    std::vector<std::vector<uint8_t>> inbox(R);
    std::vector<int> from;
    for (int r = 0; r < R; ++r) {
      if (st.sent_count[r] == 0) continue;
      inbox[r].resize(c.rows_capacity(st.sent_count[r], *c.combine_codec));
      recvs.push_back({r, MutBuf{inbox[r].data(), inbox[r].size()}});
      from.push_back(r);
    }
    c.exchange(comb, make_tag(Phase::kCombine, h.step, h.layer), sends, recvs);
    // One message per (token, selected expert), as DeepEP counts them; the
    // exchange counted one per peer.
    comb.messages = static_cast<double>(h.rows);
    // The receive stage reads every returned row and writes each token's sum (BF16, as DeepEP's output).
    long returned = 0;
    for (int r = 0; r < R; ++r) returned += st.sent_count[r];
    receive_stage(c,
                  static_cast<double>(returned) * c.combine_codec->encoded_size(1, H) +
                      static_cast<double>(h.num_tokens) * H * 2.0,
                  "low-latency combine reduce");

    if (!c.phantom()) {
      // Weight and sum at the source in top-k order, exactly as the reference
      // does.
      const int K = st.topk;
      std::vector<std::vector<float>> rows(R);
      std::vector<const float *> y(static_cast<size_t>(h.num_tokens) * K, nullptr);
      for (size_t i = 0; i < from.size(); ++i) {
        const int r = from[i];
        const auto &ids = st.sent[r];
        rows[r].resize(ids.size() * H);
        c.read_rows_message(inbox[r], recvs[i].bytes, static_cast<int>(ids.size()), rows[r].data(), *c.combine_codec,
                            EngineContext::stream_id(Phase::kCombine, h.layer, r, me), r);
        for (size_t j = 0; j < ids.size(); ++j) y[ids[j]] = &rows[r][j * H];
      }
      if (h.num_tokens > 0) std::memset(out, 0, sizeof(float) * static_cast<size_t>(h.num_tokens) * H);
      for (int t = 0; t < h.num_tokens; ++t) {
        float *o = out + static_cast<size_t>(t) * H;
        for (int k = 0; k < K; ++k) {
          const float *yk = y[static_cast<size_t>(t) * K + k];
          if (yk == nullptr) continue;
          const float w = st.weights[static_cast<size_t>(t) * K + k];
          for (int e = 0; e < H; ++e) o[e] += w * yk[e];
        }
      }
    }
    comb.time_s = c.fabric.now() - t0;
    comb.calls = 1;
    c.stats.combine.add(comb);
  }

  // Issue 3 item 5: bytes per selection (FP8 dispatch: encoded row + 16-byte
  // header; BF16 combine: encoded row) over all valid selections of this rank's
  // batch, local ones included.
  double logical_bytes(const EngineContext &c, const Handle &h, const Codec &codec) const override {
    const auto &st = *static_cast<const LowLatencyState *>(h.state.get());
    return static_cast<double>(st.valid_sels) * selection_bytes(c, codec);
  }
  // The same per-selection bytes, counting only selections whose expert lives
  // on another node.
  double scaleout_logical_bytes(const EngineContext &c, const Handle &h, const Codec &codec) const override {
    const auto &st = *static_cast<const LowLatencyState *>(h.state.get());
    return static_cast<double>(st.scaleout_sels) * selection_bytes(c, codec);
  }

 private:
  struct Outbox {
    std::vector<std::vector<uint8_t>> inbox;  // [ranks] receive buffers, sized from the counts
    std::vector<PeerRecv> recvs;
    std::vector<int> from;
    std::vector<uint32_t> in_counts;  // [ranks x (1 + local slots)] source
                                      // tokens, then per-slot counts
    int max_tokens = 0;               // num_max_dispatch_tokens_per_rank: the largest batch of any rank
    double t_payload = 0;
  };

  // DeepEP's LL kernels have no pipeline between arrival and the receive stage: a receiver waits for every
  // source's per-expert count (dispatch) or flag (combine), which a sender signals only after all its data,
  // and then copies the rows out of its receive buffer into the packed per-expert tensors (dispatch) or reads
  // every selection's row to sum each token (combine). That pass over HBM is exposed. Normal kernels hide the
  // equivalent copy: receivers drain their channel ring buffers while data still arrives.
  static void receive_stage(EngineContext &c, double hbm_bytes, const char *what) {
    if (hbm_bytes > 0 && c.fabric.caps().modeled_time)
      c.fabric.compute(ComputeCost{.hbm_bytes = hbm_bytes, .what = what});
  }
  // Dispatch's receive stage: every received selection (header and row) read once and written once.
  void unpack_stage(EngineContext &c, long selections) const {
    receive_stage(c, 2.0 * static_cast<double>(selections) * selection_bytes(c, *c.dispatch_codec),
                  "low-latency dispatch unpack");
  }

  static double selection_bytes(const EngineContext &c, const Codec &codec) {
    const double row = static_cast<double>(codec.encoded_size(1, c.hidden()));
    return &codec == c.dispatch_codec.get() ? row + sizeof(SelectionHeader) : row;
  }

  // Packs one exchange entry per destination (all of this source's selections
  // for it) and sends it; the per-expert counts go first, as DeepEP's
  // per-expert count signals, so receive buffers fit exactly. Those counts are
  // all a phantom receiver needs, so phantom messages are sizes only (headers
  // included).
  Outbox send_half(EngineContext &c, const DispatchArgs &a, LowLatencyState &st) {
    const int R = c.topo.size(), me = c.rank(), H = c.hidden(), S = c.placement.slots_per_rank();
    const bool phantom = c.phantom();
    const int my_node = c.topo.node_of(me);
    st.topk = a.topk;
    if (!phantom) st.weights.assign(a.weights, a.weights + static_cast<size_t>(a.num_tokens) * a.topk);
    st.sent_count.assign(R, 0);
    st.sent.assign(phantom ? 0 : R, {});
    std::vector<std::vector<SelectionHeader>> headers(phantom ? 0 : R);
    const int C = 1 + S;
    std::vector<uint32_t> out_counts(static_cast<size_t>(R) * C, 0);
    for (int r = 0; r < R; ++r) out_counts[static_cast<size_t>(r) * C] = static_cast<uint32_t>(a.num_tokens);
    for (int t = 0; t < a.num_tokens; ++t)
      for (int k = 0; k < a.topk; ++k) {
        const size_t i = static_cast<size_t>(t) * a.topk + k;
        const int32_t s = a.slots[i];
        if (s < 0) continue;
        const int r = c.slot_home[s].rank;
        ++st.sent_count[r];
        if (!phantom) {
          st.sent[r].push_back(static_cast<int32_t>(i));
          headers[r].push_back({t, k, s, a.weights[i]});
        }
        ++out_counts[static_cast<size_t>(r) * C + 1 + s % S];
        ++st.valid_sels;
        if (c.slot_home[s].node != my_node) ++st.scaleout_sels;
      }

    Outbox box;
    PhaseStats notify;
    c.fabric.set_phase("notify");
    const double t0 = c.fabric.now();
    box.in_counts.assign(static_cast<size_t>(R) * C, 0);
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    // A vouched cached layout already holds the per-expert counts: no signals.
    if (const std::vector<uint32_t> *cached = c.cached_counts(a)) {
      box.in_counts = *cached;
    } else {
      for (int r = 0; r < R; ++r) {
        sends.push_back({r, ConstBuf{&out_counts[static_cast<size_t>(r) * C], C * sizeof(uint32_t)}});
        recvs.push_back({r, MutBuf{&box.in_counts[static_cast<size_t>(r) * C], C * sizeof(uint32_t)}});
      }
      c.exchange(notify, make_tag(Phase::kNotify, a.step, a.layer), sends, recvs);
      c.store_counts(a, box.in_counts, c.fabric.now() - t0);
    }
    box.t_payload = c.fabric.now();
    notify.time_s = box.t_payload - t0;
    notify.calls = 1;
    c.stats.notify.add(notify);
    for (int r = 0; r < R; ++r)
      box.max_tokens = std::max(box.max_tokens, static_cast<int>(box.in_counts[static_cast<size_t>(r) * C]));

    PhaseStats disp;
    c.fabric.set_phase("dispatch");
    std::vector<EngineContext::Message> msgs(R);
    std::vector<float> rows, payload_rows;
    std::vector<uint8_t> payload;
    sends.clear();
    for (int r = 0; r < R; ++r) {
      const int n = st.sent_count[r];
      if (n == 0) continue;
      auto &m = msgs[r];
      if (phantom) {
        m.phantom_bytes = n * sizeof(SelectionHeader) + c.dispatch_codec->encoded_size(n, H);
      } else {
        const auto &ids = st.sent[r];
        m.bytes.resize(n * sizeof(SelectionHeader));
        std::memcpy(m.bytes.data(), headers[r].data(), m.bytes.size());
        rows.resize(static_cast<size_t>(n) * H);
        for (int j = 0; j < n; ++j)
          std::memcpy(&rows[static_cast<size_t>(j) * H], a.x + static_cast<size_t>(ids[j] / a.topk) * H,
                      H * sizeof(float));
        payload.clear();
        c.dispatch_codec->encode(rows.data(), n, H, payload,
                                 EngineContext::stream_id(Phase::kDispatch, a.layer, me, r));
        m.bytes.insert(m.bytes.end(), payload.begin(), payload.end());
      }
      sends.push_back({r, m.buf()});
    }
    box.inbox.resize(R);
    for (int r = 0; r < R; ++r) {
      int n = 0;
      for (int s = 0; s < S; ++s) n += static_cast<int>(box.in_counts[static_cast<size_t>(r) * C + 1 + s]);
      if (n == 0) continue;
      if (!phantom) box.inbox[r].resize(n * sizeof(SelectionHeader) + c.rows_capacity(n, *c.dispatch_codec));
      box.recvs.push_back({r, MutBuf{box.inbox[r].data(), box.inbox[r].size()}});
      box.from.push_back(r);
    }
    c.exchange(disp, make_tag(Phase::kDispatch, a.step, a.layer), sends, box.recvs);
    // One message per (token, selected expert), local ones included, as DeepEP
    // counts them.
    disp.messages = static_cast<double>(st.valid_sels);
    disp.calls = 1;
    c.stats.dispatch.add(disp);
    return box;
  }

  // Lays the received rows out per local expert slot, DeepEP style: slot e
  // holds max_tokens rows per source rank, capacity max_tokens x ranks, each
  // row exactly one selection. The handle lists the occupied rows in that
  // layout's order (expert, source rank, arrival); a source that sends an
  // expert more rows than its region holds (only possible when a token selects
  // one expert twice) is an error.
  Handle recv_half(EngineContext &c, const DispatchArgs &a, LowLatencyState &st, Outbox &box) {
    const int R = c.topo.size(), me = c.rank(), H = c.hidden(), S = c.placement.slots_per_rank();
    const int C = 1 + S;
    if (c.phantom()) return recv_counts(c, a, st, box);
    struct Ref {
      int32_t src, pos;
    };
    std::vector<std::vector<Ref>> per_slot(S);
    std::vector<std::vector<SelectionHeader>> headers(R);
    std::vector<std::vector<float>> rows(R);
    st.recv_count.assign(R, 0);
    for (size_t i = 0; i < box.from.size(); ++i) {
      const int r = box.from[i];
      const std::string what =
          "rank " + std::to_string(me) + ", message from peer " + std::to_string(r) + " in phase " + c.fabric.phase();
      int n = 0;
      for (int s = 0; s < S; ++s) n += static_cast<int>(box.in_counts[static_cast<size_t>(r) * C + 1 + s]);
      const size_t head = n * sizeof(SelectionHeader);
      const size_t got = box.recvs[i].bytes;
      if (got < head)
        throw FabricError(what + ": " + std::to_string(got) + " bytes, headers alone need " + std::to_string(head));
      headers[r].resize(n);
      std::memcpy(headers[r].data(), box.inbox[r].data(), head);
      rows[r].resize(static_cast<size_t>(n) * H);
      try {
        c.dispatch_codec->decode(box.inbox[r].data() + head, got - head, n, H, rows[r].data(),
                                 EngineContext::stream_id(Phase::kDispatch, a.layer, r, me));
      } catch (const std::exception &e) {
        throw FabricError(what + ": " + e.what());
      }
      st.recv_count[r] = n;
      for (int j = 0; j < n; ++j) {
        const SelectionHeader &hd = headers[r][j];
        if (hd.slot < 0 || c.placement.rank_of_slot(hd.slot) != me)
          throw FabricError(what + ": selection for slot " + std::to_string(hd.slot) + " is not held here");
        per_slot[hd.slot % S].push_back({r, j});
      }
    }

    Handle h;
    h.step = a.step;
    h.layer = a.layer;
    h.num_tokens = a.num_tokens;
    for (int s = 0; s < S; ++s) {
      int prev = -1, in_region = 0;
      for (const Ref &ref : per_slot[s]) {
        in_region = ref.src == prev ? in_region + 1 : 0;
        prev = ref.src;
        if (in_region >= box.max_tokens) throw region_overflow(me, s, ref.src, box.max_tokens, R);
        const SelectionHeader &hd = headers[ref.src][ref.pos];
        h.recv.add_token(ref.src, hd.token);
        h.recv.add_sel(hd.slot, hd.weight);
        st.row_src.push_back(ref.src);
        st.row_pos.push_back(ref.pos);
        const float *src = &rows[ref.src][static_cast<size_t>(ref.pos) * H];
        h.recv_x.insert(h.recv_x.end(), src, src + H);
      }
    }
    unpack_stage(c, h.recv.size());
    PhaseStats tail;
    tail.time_s = c.fabric.now() - box.t_payload;
    c.stats.dispatch.add(tail);
    return h;
  }

  // The phantom receive half: the per-expert counts say how many rows each region holds.
  Handle recv_counts(EngineContext &c, const DispatchArgs &a, LowLatencyState &st, const Outbox &box) {
    const int R = c.topo.size(), me = c.rank(), S = c.placement.slots_per_rank(), C = 1 + S;
    Handle h;
    h.step = a.step;
    h.layer = a.layer;
    h.num_tokens = a.num_tokens;
    h.slot_sels.assign(S, 0);
    st.recv_count.assign(R, 0);
    for (int r : box.from)
      for (int s = 0; s < S; ++s) {
        const int n = static_cast<int>(box.in_counts[static_cast<size_t>(r) * C + 1 + s]);
        if (n > box.max_tokens) throw region_overflow(me, s, r, box.max_tokens, R);
        st.recv_count[r] += n;
        h.slot_sels[s] += n;
        h.rows += n;
      }
    unpack_stage(c, h.rows);
    PhaseStats tail;
    tail.time_s = c.fabric.now() - box.t_payload;
    c.stats.dispatch.add(tail);
    return h;
  }

  static EplabError region_overflow(int me, int slot, int src, int max_tokens, int ranks) {
    return EplabError("low-latency: rank " + std::to_string(me) + " local expert slot " + std::to_string(slot) +
                      " overflows its receive region for rank " + std::to_string(src) + " (" +
                      std::to_string(max_tokens) + " rows = num_max_dispatch_tokens_per_rank, capacity " +
                      std::to_string(static_cast<int64_t>(max_tokens) * ranks) +
                      " per expert); does a token select one expert twice?");
  }
};

}  // namespace

std::unique_ptr<Algorithm> make_low_latency_algorithm() { return std::make_unique<LowLatency>(); }

}  // namespace eplab
