// Hierarchical dispatch/combine (DeepEP's normal mode): a token crosses the scale-out network at most once per
// destination node, to the GPU with the sender's local index (same rail), which forwards it over the scale-up
// domain to the GPUs of its node that hold the token's experts. Combine runs the same path backwards and
// reduces inside the node first, so one partial sum per (token, node) crosses the scale-out network. A failed GPU
// (EngineContext::failed_gpus) relays nothing: its rail's sources go through the other live GPUs of its node
// (relay_of).
#include <algorithm>
#include <cstring>

#include "engine/ep_engine.hpp"
#include "engine/huge_pages.hpp"
#include "engine/wire.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {
namespace {

struct HierState {
  // The call moves its rows in `rounds` slices of the sources' tokens (rail_rounds), each a rail exchange and a
  // forward: arrays below marked [.. x rounds] or [rounds x ..] hold one entry per round.
  int rounds = 1;
  int round_tokens = 0;  // the own batch's tokens per round: round k holds tokens [k, k + 1) x round_tokens
  // Source role: each destination node's forwarder (relay_of), the tokens sent to it: how many, and (real
  // payload) which, in message order.
  std::vector<int> relay;                            // [nodes]
  std::vector<int32_t> sent_tokens;                  // [nodes x rounds]
  std::vector<std::vector<int32_t>> sent_token_ids;  // [nodes x rounds]
  // Forwarder role: the rail sources it relays for (rail_sources), rows received from each, and (real payload)
  // for each such row the rows it became in the per-local-rank forward blocks of its round: (local rank, row
  // index), local rank ascending. Rows are numbered round by round, then source by source.
  std::vector<int> sources;                          // [rail sources]
  std::vector<int32_t> fwd_in_rows;                  // [rounds x rail sources]
  std::vector<int32_t> fwd_map_begin{0};             // [total in rows + 1]
  std::vector<std::pair<int32_t, int32_t>> fwd_map;  // (local q, row in block q)
  std::vector<int32_t> fwd_out_rows;                 // [rounds x gpus per node] rows forwarded to each local rank
  // Receiver role: rows received from each local forwarder; the handle holds them local rank by local rank, then
  // round by round.
  std::vector<int32_t> recv_rows;  // [rounds x gpus per node]
};

// DeepEP streams each stage in chunks of tokens so the RDMA and NVLink stages overlap; EngineOptions::chunk_tokens
// sets the chunk (0: 16 tokens), at most 64 chunks per call.
int pipeline_chunks(const EngineContext& c, int tokens) {
  const int chunk = c.opts.chunk_tokens > 0 ? c.opts.chunk_tokens : 16;
  return std::clamp((tokens + chunk - 1) / chunk, 1, 64);
}

// Where rows travel straight into place (EngineContext::split_blocks: wall-clock backends), the payload moves in
// EngineOptions::rail_rounds rounds, each a slice of every source's tokens that crosses the rail and is forwarded
// inside the node before the next: a forwarder's rail receive buffers then hold a round's rows, not a call's, as
// DeepEP's RDMA receive buffer is a ring of chunks. A fabric whose time is a model moves a call in one round and
// models the chunked pipeline instead (pipeline_chunks).
int rail_rounds(const EngineContext& c) {
  return c.split_blocks() ? std::clamp(c.opts.rail_rounds, 1, kMaxRailRounds) : 1;
}

// The GPU of node n that relays what source `src` sends to that node: the GPU of src's local index (its rail),
// or when that one has failed a live GPU of node n, chosen by the source's node and local index so that the
// failed rail's sources spread over the node's live GPUs (and their NICs) instead of all doubling up on one:
// with 8 GPUs a node and 8 nodes, each of the 7 live GPUs of the failed GPU's node relays for one more source.
// Every rank knows the same failed set, so every rank picks the same relay. -1 when every GPU of node n failed
// (no selection then names a slot there).
int relay_of(const EngineContext& c, int n, int src) {
  const Topology& T = c.topo;
  const int N = T.nodes(), G = T.gpus_per_node(), l = T.local_of(src);
  const int rail = T.rank_of(n, l);
  if (c.gpu_up(rail)) return rail;
  std::vector<int> live;
  for (int q = 0; q < G; ++q)
    if (c.gpu_up(T.rank_of(n, q))) live.push_back(T.rank_of(n, q));
  if (live.empty()) return -1;
  // The source nodes other than n, counted from the one after n: 0, 1, ..., N - 2 (node n's own source on this
  // rail is the failed GPU, which sends nothing).
  const int k = (T.node_of(src) - n - 1 + N) % N;
  return live[static_cast<size_t>(k + l) % live.size()];
}

// The rail sources a live forwarder relays for, node by node and local index ascending: on each node the GPU of
// its own local index, and those whose rail GPU on the forwarder's node failed and that relay_of gave to it.
// Without failures, one per node: (n, my local index). A failed GPU relays for none.
std::vector<int> rail_sources(const EngineContext& c) {
  const Topology& T = c.topo;
  const int N = T.nodes(), G = T.gpus_per_node(), me = c.rank(), my_node = T.node_of(me), my_local = T.local_of(me);
  std::vector<int> out;
  if (!c.gpu_up(me)) return out;
  for (int n = 0; n < N; ++n)
    for (int l = 0; l < G; ++l) {
      const int src = T.rank_of(n, l);
      if (l == my_local ? c.gpu_up(src) : !c.failed_gpus.empty() && c.gpu_up(src) && relay_of(c, my_node, src) == me)
        out.push_back(src);
    }
  return out;
}

class Hierarchical : public Algorithm {
 public:
  std::string name() const override { return "hierarchical"; }
  ReductionOrder reduction() const override { return ReductionOrder::kNodes; }
  bool takes_wire_rows() const override { return true; }
  bool writes_bf16(const EngineContext& c) const override { return c.sums_bf16_in_place(); }

  Handle dispatch(EngineContext& c, const DispatchArgs& a) override {
    const Topology& T = c.topo;
    const int N = T.nodes(), G = T.gpus_per_node(), me = c.rank(), my_node = T.node_of(me);
    const int H = c.hidden(), spr = c.placement.slots_per_rank(), node_slots = G * spr;
    const bool phantom = c.phantom();
    auto st = std::make_shared<HierState>();
    // Rounds: slices of the sources' tokens (rail_rounds); K = 1 moves the call at once.
    const int K = rail_rounds(c);
    st->rounds = K;
    st->round_tokens = std::max(1, (a.num_tokens + K - 1) / K);
    // Where this rank's tokens cross to each node, and whose tokens it relays (both follow the failed set).
    const bool up = c.gpu_up(me);
    st->relay.assign(N, -1);
    for (int n = 0; n < N && up; ++n) st->relay[n] = relay_of(c, n, me);
    st->sources = rail_sources(c);
    const std::vector<int>& srcs = st->sources;
    const int S = static_cast<int>(srcs.size());

    // Source side: one block per destination node and round, carrying that node's selections of the round's
    // tokens (phantom: counts only, see EngineContext::BlockSummary; one round).
    std::vector<TokenBlock> to_node(phantom ? 0 : static_cast<size_t>(N) * K);
    std::vector<int32_t> per_slot(phantom ? static_cast<size_t>(N) * node_slots : 0, 0);
    const size_t stride = 2 + 2 * G;  // per node and round: tokens, sels, then per local rank q tokens, sels
    std::vector<uint32_t> counts(static_cast<size_t>(N) * K * stride, 0);  // [nodes x rounds x stride]
    std::vector<int> last_node(N, -1);
    std::vector<int> last_q(static_cast<size_t>(N) * G, -1);
    if (phantom) {
      // Counts only: per token, its distinct destination nodes and ranks (a stamp per node and rank, updated
      // without branches), and selections per slot; the per-node and per-rank selection counts are sums of the
      // slots' afterwards (rank r = n * G + q holds slots [r * spr, (r + 1) * spr)). One pass with no branch on
      // where a token goes: at 256 ranks and 58 layers this loop runs over nearly half a billion selections.
      std::vector<uint32_t> rank_tokens(static_cast<size_t>(N) * G, 0), node_tokens(N, 0);
      const EngineContext::SlotHome* home = c.slot_home.data();
      for (int t = 0; t < a.num_tokens; ++t) {
        const int32_t* ts = a.slots + static_cast<size_t>(t) * a.topk;
        for (int k = 0; k < a.topk; ++k) {
          const int32_t s = ts[k];
          if (s < 0) continue;
          const int n = home[s].node, r = home[s].rank;
          ++per_slot[s];
          node_tokens[n] += last_node[n] != t;
          last_node[n] = t;
          rank_tokens[r] += last_q[r] != t;
          last_q[r] = t;
        }
      }
      for (int n = 0; n < N; ++n) {
        uint32_t* cn = &counts[static_cast<size_t>(n) * stride];
        cn[0] = node_tokens[n];
        for (int q = 0; q < G; ++q) {
          const int32_t* ps = &per_slot[(static_cast<size_t>(n) * G + q) * spr];
          uint32_t sels = 0;
          for (int i = 0; i < spr; ++i) sels += static_cast<uint32_t>(ps[i]);
          cn[2 + 2 * q] = rank_tokens[static_cast<size_t>(n) * G + q];
          cn[3 + 2 * q] = sels;
          cn[1] += sels;
        }
      }
    }
    for (int t = 0; t < a.num_tokens && !phantom; ++t) {
      const int round = t / st->round_tokens;
      for (int k = 0; k < a.topk; ++k) {
        const int32_t s = a.slots[static_cast<size_t>(t) * a.topk + k];
        if (s < 0) continue;
        const int n = c.slot_home[s].node, q = c.slot_home[s].local;
        const size_t nk = static_cast<size_t>(n) * K + round;
        uint32_t* cn = &counts[nk * stride];
        if (last_node[n] != t) {
          last_node[n] = t;
          to_node[nk].add_token(me, t);
          ++cn[0];
        }
        to_node[nk].add_sel(s, a.weights[static_cast<size_t>(t) * a.topk + k]);
        ++cn[1];
        if (last_q[static_cast<size_t>(n) * G + q] != t) {
          last_q[static_cast<size_t>(n) * G + q] = t;
          ++cn[2 + 2 * q];
        }
        ++cn[3 + 2 * q];
      }
    }
    // Tokens this rank sends to node n in round k, and in all rounds.
    const auto node_round_tokens = [&](int n, int k) { return counts[(static_cast<size_t>(n) * K + k) * stride]; };
    const auto node_tokens = [&](int n) {
      uint32_t sum = 0;
      for (int k = 0; k < K; ++k) sum += node_round_tokens(n, k);
      return sum;
    };

    // Notify, first across the rail (per node and round: the counts above), then inside the node (per local rank
    // and round: tokens and selections).
    PhaseStats notify;
    c.fabric.set_phase("notify");
    const double t0 = c.fabric.now();
    const size_t node_stride = K * stride;
    std::vector<uint32_t> rail_in(static_cast<size_t>(S) * node_stride, 0);  // [rail sources x rounds x stride]
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    // [local ranks x rounds x 2]: what this forwarder sends to local rank q, and what q's forwarder sends here.
    std::vector<uint32_t> fwd_counts(static_cast<size_t>(2) * G * K, 0), local_in(fwd_counts.size(), 0);
    const auto rail_at = [&](int i, int k) { return &rail_in[static_cast<size_t>(i) * node_stride + k * stride]; };
    const auto local_at = [&](int q, int k) { return &local_in[(static_cast<size_t>(q) * K + k) * 2]; };
    // A vouched cached layout holds both rounds' results (rail_in, then local_in) and skips them.
    const std::vector<uint32_t>* cached = c.cached_counts(a);
    if (cached) {
      std::copy(cached->begin(), cached->begin() + rail_in.size(), rail_in.begin());
      std::copy(cached->begin() + rail_in.size(), cached->end(), local_in.begin());
    }
    for (int n = 0; n < N && !cached; ++n) {
      const int f = st->relay[n];
      if (f >= 0) {
        sends.push_back({f, ConstBuf{&counts[n * node_stride], node_stride * sizeof(uint32_t)}});
      } else if (node_tokens(n) > 0) {
        throw FabricError("rank " + std::to_string(me) + ": selections for node " + std::to_string(n) +
                          ", which has no live GPU to relay them (failed GPUs' slots must not be selected)");
      }
    }
    for (int i = 0; i < S && !cached; ++i)
      recvs.push_back({srcs[i], MutBuf{rail_at(i, 0), node_stride * sizeof(uint32_t)}});
    if (!cached) c.exchange(notify, make_tag(Phase::kNotify, a.step, a.layer, 0), sends, recvs);
    // As forwarder: what each local rank q will get from us in each round = sum over rail sources.
    for (int i = 0; i < S; ++i)
      for (int k = 0; k < K; ++k)
        for (int q = 0; q < G; ++q) {
          fwd_counts[(static_cast<size_t>(q) * K + k) * 2] += rail_at(i, k)[2 + 2 * q];
          fwd_counts[(static_cast<size_t>(q) * K + k) * 2 + 1] += rail_at(i, k)[3 + 2 * q];
        }
    sends.clear();
    recvs.clear();
    if (!cached) {
      for (int q = 0; q < G && up; ++q) {
        const int r = T.rank_of(my_node, q);
        if (!c.gpu_up(r)) continue;  // nothing goes to a failed GPU, nothing comes from it
        sends.push_back({r, ConstBuf{&fwd_counts[static_cast<size_t>(q) * K * 2], static_cast<size_t>(K) * 8}});
        recvs.push_back({r, MutBuf{local_at(q, 0), static_cast<size_t>(K) * 8}});
      }
      c.exchange(notify, make_tag(Phase::kNotify, a.step, a.layer, 1), sends, recvs);
      std::vector<uint32_t> both(rail_in);
      both.insert(both.end(), local_in.begin(), local_in.end());
      c.store_counts(a, std::move(both), c.fabric.now() - t0);
    }
    const double t1 = c.fabric.now();
    notify.time_s = t1 - t0;
    notify.calls = 1;

    // Payload: each round across the rail, then forwarded inside the node; the two stages overlap chunk by chunk.
    PhaseStats disp;
    c.fabric.set_phase("dispatch");
    c.fabric.begin_pipeline(pipeline_chunks(c, a.num_tokens));
    st->sent_tokens.assign(static_cast<size_t>(N) * K, 0);
    st->sent_token_ids.assign(static_cast<size_t>(N) * K, {});
    st->fwd_in_rows.assign(static_cast<size_t>(K) * S, 0);
    st->fwd_out_rows.assign(static_cast<size_t>(K) * G, 0);
    st->recv_rows.assign(static_cast<size_t>(K) * G, 0);
    Handle h;
    h.step = a.step;
    h.layer = a.layer;
    h.num_tokens = a.num_tokens;
    h.token_node_pairs = 0;
    for (int n = 0; n < N; ++n) h.token_node_pairs += node_tokens(n);
    size_t in_tokens = 0, in_sels = 0;
    for (int q = 0; q < G; ++q)
      for (int k = 0; k < K; ++k) in_tokens += local_at(q, k)[0], in_sels += local_at(q, k)[1];
    if (!phantom) {
      size_t in_rows = 0, out_rows = 0;
      for (int i = 0; i < S; ++i)
        for (int k = 0; k < K; ++k) in_rows += rail_at(i, k)[0];
      for (int q = 0; q < G; ++q)
        for (int k = 0; k < K; ++k) out_rows += fwd_counts[(static_cast<size_t>(q) * K + k) * 2];
      st->fwd_map_begin.reserve(in_rows + 1);
      st->fwd_map.reserve(out_rows);
      h.recv.reserve(in_tokens, in_sels);
    }
    // The last stage's receive buffers: whole messages in inbox(lbox + q), or (split_blocks) the metadata in
    // inbox(meta_box + k * G + q) and the rows straight into the handle's rows buffer, local rank by local rank,
    // then round by round (so the rows from one forwarder are contiguous, and combine answers it in one message).
    // The rows a round forwards are read from the rail's receive buffers [0, S) while it receives (gather sends,
    // and split rounds): the forward stage's receive buffers sit above them.
    const bool split = c.split_blocks();
    const size_t rb = c.dispatch_row_bytes;
    // Where rows are gathered, the forwarder reads each round's rail messages where their sources hold them instead
    // of receiving them: ranks that share an address space (Caps::consume_gathers) forward the rows from there,
    // and ranks that are processes (Caps::forwards_pulled) read only the metadata and name the rows where they lie,
    // so that each local rank reads its rows from their source's batch. Its forward messages' metadata then goes
    // in outboxes above the rail's [0, N), whose messages stay lent until the round is forwarded: the forward
    // exchange runs inside the rail's consume and its sends complete when their receivers have read them, so a
    // source's rows stay put until the last local rank has read them.
    const Caps caps = c.fabric.caps();
    const bool consume_rail =
        c.consume_in_place() && (caps.consume_gathers || caps.forwards_pulled) && c.gather_sends && rb > 0;
    const bool pull_rail = consume_rail && !caps.consume_gathers;
    const size_t fwd_box = consume_rail ? static_cast<size_t>(N) : 0;
    if (split) c.take_spare_rows_sized(h.recv_wire, in_tokens * rb);
    const size_t meta_box = split ? static_cast<size_t>(std::max(N, S)) : 0;
    const size_t lbox = !split && c.gather_sends && rb > 0 ? static_cast<size_t>(S) : 0;
    c.ensure_boxes(std::max(meta_box + static_cast<size_t>(K) * std::max({N, S, G}), lbox + G));
    std::vector<std::vector<uint8_t>>& inbox = c.inboxes;
    // Split: where local rank q's rows start in h.recv_wire, and how many of its bytes earlier rounds filled; each
    // round's metadata and rows as received, [rounds x local ranks].
    std::vector<size_t> q_at(G + 1, 0), q_filled(G, 0);
    for (int q = 0; q < G && split; ++q) {
      q_at[q + 1] = q_at[q];
      for (int k = 0; k < K; ++k) q_at[q + 1] += local_at(q, k)[0] * rb;
    }
    std::vector<PeerRecv> meta_of(split ? static_cast<size_t>(K) * G : 0, PeerRecv{-1, MutBuf{}});
    std::vector<PeerRecv> rows_of(meta_of.size(), PeerRecv{-1, MutBuf{}});
    std::vector<PeerRecv> lrecvs;
    std::vector<int> lfrom;
    TokenBlock b;
    std::vector<float> brows;
    for (int k = 0; k < K; ++k) {
      // Across the rail: this round's block to each node, its rows received from each rail source.
      std::vector<EngineContext::Message> msgs(N);
      ConstBuf self_meta{nullptr, 0};
      std::vector<const uint8_t*> self_rows;
      std::vector<float> rows;
      sends.clear();
      recvs.clear();
      EngineContext::BlockSummary summary;
      for (int n = 0; n < N; ++n) {
        const uint32_t* cn = &counts[(static_cast<size_t>(n) * K + k) * stride];
        if (cn[0] == 0) continue;
        const int f = st->relay[n];
        const size_t nk = static_cast<size_t>(n) * K + k;
        st->sent_tokens[nk] = static_cast<int32_t>(cn[0]);
        if (phantom) {
          summary.assign(cn[0], cn[1], &per_slot[static_cast<size_t>(n) * node_slots], node_slots, n * node_slots);
          msgs[n] = c.make_summary_message(summary, *c.dispatch_codec);
          sends.push_back({f, msgs[n].buf()});
          continue;
        }
        msgs[n] = c.take_source_block(n, to_node[nk], a, EngineContext::stream_id(Phase::kDispatch, a.layer, me, f),
                                      st->sent_token_ids[nk], rows);
        if (f == me && !msgs[n].row_ptrs.empty()) {
          // This rank relays its own tokens to its node: their rows are forwarded from the batch where they lie,
          // not copied into a rail receive buffer first. The message counts as sent, as every other.
          const PeerSend self{me, msgs[n].buf()};
          c.count_sends(disp, std::span<const PeerSend>(&self, 1), true);
          c.fabric.keep_local(make_tag(Phase::kDispatch, a.step, a.layer, k), self.data);
          self_meta = msgs[n].meta();
          self_rows = std::move(msgs[n].row_ptrs);
          continue;
        }
        sends.push_back({f, msgs[n].buf()});
      }
      // Receive buffers (EngineContext::inboxes): rail sources use [0, S), then local ranks [0, G). Read in place
      // (consume_rail), the rail's messages take none: `rail` says where each one lies while it is forwarded.
      std::vector<int> from;  // rail sources' indices
      std::vector<int> recv_of;  // [from]: its entry in recvs (or rail), -1 for this rank's own rows (self_rows)
      std::vector<PeerConsume> rail;
      for (int i = 0; i < S; ++i) {
        const uint32_t* cn = rail_at(i, k);
        if (cn[0] == 0) continue;
        from.push_back(i);
        if (srcs[i] == me && !self_rows.empty()) {
          recv_of.push_back(-1);
          continue;
        }
        const size_t cap = phantom ? EngineContext::summary_capacity(cn[1], node_slots)
                                   : c.block_capacity(cn[0], cn[1], *c.dispatch_codec);
        recv_of.push_back(static_cast<int>(consume_rail ? rail.size() : recvs.size()));
        if (consume_rail)
          rail.push_back(PeerConsume{srcs[i], cap, true, pull_rail});
        else
          recvs.push_back({srcs[i], c.inbox(i, cap)});
      }

      // Forward inside the node: split each received token by local rank, keeping top-k order (phantom: add up
      // the selections per slot of this node; notify already said how many tokens go to each local rank).
      const auto forward = [&] {
        const auto fwd_at = [&](int q) { return &fwd_counts[(static_cast<size_t>(q) * K + k) * 2]; };
        std::vector<TokenBlock> to_local(phantom ? 0 : G);
        for (int q = 0; q < G && !phantom; ++q) to_local[q].reserve(fwd_at(q)[0], fwd_at(q)[1]);
        std::vector<std::vector<float>> local_rows(G);
        std::vector<int32_t> node_slot_sels(phantom ? node_slots : 0, 0);
        const int my_first_slot = T.rank_of(my_node, 0) * spr;
        int32_t* fwd_in_rows = st->fwd_in_rows.data() + static_cast<size_t>(k) * S;  // S may be 0
        int32_t* fwd_out_rows = st->fwd_out_rows.data() + static_cast<size_t>(k) * G;
        std::vector<int> last_tok(G, -1);
        for (size_t i = 0; i < from.size() && phantom; ++i) {
          const int si = from[i], src = srcs[si];
          c.read_summary_message(inbox[si], recvs[recv_of[i]].bytes, summary, rail_at(si, k)[0], rail_at(si, k)[1],
                                 src);
          fwd_in_rows[si] = static_cast<int32_t>(summary.tokens);
          for (const EngineContext::SlotSels& e : summary.slots) {
            if (e.slot < my_first_slot || e.slot >= my_first_slot + node_slots)
              throw FabricError("rank " + std::to_string(me) + ": forwarder got selections for slot " +
                                std::to_string(e.slot) + ", outside its node");
            node_slot_sels[e.slot - my_first_slot] += e.sels;
          }
        }
        // With a row-separable codec the forwarder passes rows on in the wire format: it notes where each one is
        // in the inbox (kept until the forward messages are built) instead of decoding and re-encoding it.
        std::vector<std::vector<const uint8_t*>> local_wire(rb > 0 ? G : 0);
        std::vector<std::vector<PulledRow>> local_pulled(pull_rail ? G : 0);  // [q]: one per row of local_wire[q]
        std::vector<const uint8_t*> lent_rows;  // consume_rail: a rail block's rows where its source holds them
        std::vector<PulledRow> pulled_rows;     // pull_rail: the same rows, left in their source's process
        for (size_t i = 0; i < from.size() && !phantom; ++i) {
          const int si = from[i], src = srcs[si];
          const uint32_t* cn = rail_at(si, k);
          const uint8_t* wire_rows = nullptr;
          const bool own = recv_of[i] < 0;  // this rank's own rows, in its batch (self_rows)
          if (own) {
            uint64_t payload = 0;
            const std::string what = c.message_context(me, a.step, a.layer);
            unpack_block(static_cast<const uint8_t*>(self_meta.ptr), self_meta.bytes, b, payload, what.c_str());
            c.check_counts(b, cn[0], cn[1], what);
          } else if (consume_rail) {
            c.read_lent_wire_block(rail[recv_of[i]], b, cn[0], cn[1], a.step, a.layer, lent_rows, pulled_rows);
          } else if (rb > 0) {
            wire_rows =
                c.read_wire_block(inbox[si].data(), recvs[recv_of[i]].bytes, b, cn[0], cn[1], src, a.step, a.layer);
          } else {
            c.read_block_message(inbox[si], recvs[recv_of[i]].bytes, b, brows, *c.dispatch_codec,
                                 EngineContext::stream_id(Phase::kDispatch, a.layer, src, me), src);
            c.check_counts(b, cn[0], cn[1], c.message_context(src, a.step, a.layer));
          }
          fwd_in_rows[si] = b.size();
          for (int j = 0; j < b.size(); ++j) {
            std::fill(last_tok.begin(), last_tok.end(), -1);
            for (int s = b.sel_begin[j]; s < b.sel_begin[j + 1]; ++s) {
              const int q = c.slot_home[b.sel_slot[s]].local;
              if (last_tok[q] < 0) {
                last_tok[q] = to_local[q].size();
                to_local[q].add_token(b.src_rank[j], b.token[j]);
                if (rb > 0) {
                  local_wire[q].push_back(own            ? self_rows[j]
                                          : consume_rail ? lent_rows[j]
                                                         : wire_rows + static_cast<size_t>(j) * rb);
                  if (pull_rail) local_pulled[q].push_back(!own && !pulled_rows.empty() ? pulled_rows[j] : PulledRow{});
                } else {
                  local_rows[q].insert(local_rows[q].end(), brows.begin() + static_cast<ptrdiff_t>(j) * H,
                                       brows.begin() + static_cast<ptrdiff_t>(j + 1) * H);
                }
              }
              // Tokens are added one at a time, so the open token of block q is this one.
              to_local[q].add_sel(b.sel_slot[s], b.sel_weight[s]);
            }
            for (int q = 0; q < G; ++q)
              if (last_tok[q] >= 0) st->fwd_map.push_back({q, last_tok[q]});
            st->fwd_map_begin.push_back(static_cast<int32_t>(st->fwd_map.size()));
          }
        }
        // The forward message to local rank q, built in send buffer `slot`: a phantom summary, a block of wire rows
        // copied from the rail's receive buffers, or encoded fp32 rows. False when nothing goes to q.
        std::vector<EngineContext::Message> fmsgs(G);
        const auto build_forward = [&](int q, size_t slot) {
          fwd_out_rows[q] = phantom ? static_cast<int32_t>(fwd_at(q)[0]) : to_local[q].size();
          if (fwd_out_rows[q] == 0) return false;
          const int r = T.rank_of(my_node, q);
          if (!c.gpu_up(r))
            throw FabricError("rank " + std::to_string(me) + ": " + std::to_string(fwd_out_rows[q]) +
                              " rows to forward to failed GPU " + std::to_string(r) +
                              " (failed GPUs' slots must not be selected)");
          if (phantom) {
            summary.assign(fwd_at(q)[0], fwd_at(q)[1], &node_slot_sels[static_cast<size_t>(q) * spr], spr, r * spr);
            fmsgs[q] = c.make_summary_message(summary, *c.dispatch_codec);
            return true;
          }
          if (rb > 0 && c.gather_sends) {
            // The metadata in outbox(fwd_box + q); the rows go from the rail's receive buffers (or, read in place,
            // the sources' batches) straight to local rank q.
            std::vector<uint8_t>& m = c.outbox(fwd_box + q);
            pack_block(to_local[q], local_wire[q].size() * rb, m);
            fmsgs[q] = EngineContext::Message::view_of(m);
            fmsgs[q].meta_bytes = m.size();
            fmsgs[q].row_bytes = rb;
            fmsgs[q].row_ptrs = std::move(local_wire[q]);
            if (pull_rail) fmsgs[q].pulled_rows = std::move(local_pulled[q]);
          } else if (rb > 0) {
            // Send buffers (EngineContext::outboxes): rail messages used [0, N) and have been sent.
            std::vector<uint8_t>& m = c.outbox(slot);
            const size_t wire = local_wire[q].size() * rb;
            reserve_huge(m, block_meta_bytes(to_local[q].size(), to_local[q].num_sels()) + wire);
            pack_block(to_local[q], wire, m);
            const size_t meta = m.size();
            for (const uint8_t* row : local_wire[q]) m.insert(m.end(), row, row + rb);
            fmsgs[q] = EngineContext::Message::view_of(m);
            fmsgs[q].meta_bytes = meta;
            std::vector<const uint8_t*>().swap(local_wire[q]);
          } else {
            fmsgs[q] = c.make_block_message(to_local[q], local_rows[q].data(), *c.dispatch_codec,
                                            EngineContext::stream_id(Phase::kForward, a.layer, me, r));
          }
          to_local[q].release();
          std::vector<float>().swap(local_rows[q]);
          return true;
        };
        sends.clear();
        lrecvs.clear();
        lfrom.clear();
        if (split) {
          // Where rows are copied into send buffers, sub-rounds of kFlatRoundPeers local ranks, as flat's dispatch:
          // in sub-round j a forwarder sends to the local ranks j * Gr + i above it and receives from those as far
          // below (i < Gr), so its send buffers hold only a sub-round's messages; gathered, one exchange. The
          // metadata waits in boxes above the rail's (whose rows later sub-rounds still copy), the rows land at
          // their place in the handle, and the blocks are read once every round is in (below).
          const int Gr = c.gather_sends ? G : std::min(G, kFlatRoundPeers), my_local = T.local_of(me);
          const int subs = (G + Gr - 1) / Gr;
          std::vector<PeerSend> meta_sends, row_sends;
          std::vector<PeerRecv> meta_recvs, round_rows;
          for (int j = 0; j < subs; ++j) {
            meta_sends.clear(), row_sends.clear(), meta_recvs.clear(), round_rows.clear();
            for (int i = 0; i < Gr && j * Gr + i < G; ++i) {
              const int off = j * Gr + i, dq = (my_local + off) % G, sq = (my_local - off + G) % G;
              if (build_forward(dq, static_cast<size_t>(i))) {
                meta_sends.push_back({T.rank_of(my_node, dq), fmsgs[dq].meta()});
                row_sends.push_back({T.rank_of(my_node, dq), fmsgs[dq].rows()});
              }
              if (local_at(sq, k)[0] > 0) {
                const int r = T.rank_of(my_node, sq);
                meta_recvs.push_back({r, c.inbox(meta_box + static_cast<size_t>(k) * G + sq,
                                                 block_meta_bytes(local_at(sq, k)[0], local_at(sq, k)[1]))});
                round_rows.push_back(
                    {r, MutBuf{h.recv_wire.data() + q_at[sq] + q_filled[sq], local_at(sq, k)[0] * rb}});
              }
            }
            const int tag = 2 * (k * subs + j);
            c.exchange_split(disp, make_tag(Phase::kForward, a.step, a.layer, tag),
                             make_tag(Phase::kForward, a.step, a.layer, tag + 1), meta_sends, row_sends, meta_recvs,
                             round_rows);
            for (size_t m = 0; m < meta_recvs.size(); ++m) {
              const int q = T.local_of(meta_recvs[m].peer);
              meta_of[static_cast<size_t>(k) * G + q] = meta_recvs[m];
              rows_of[static_cast<size_t>(k) * G + q] = round_rows[m];
              q_filled[q] += local_at(q, k)[0] * rb;
            }
            for (const PeerSend& s : meta_sends) fmsgs[T.local_of(s.peer)] = {};
          }
        } else {
          // One round (rail_rounds): the forward messages whole, read into the handle below.
          for (int q = 0; q < G; ++q)
            if (build_forward(q, static_cast<size_t>(q))) sends.push_back({T.rank_of(my_node, q), fmsgs[q].buf()});
          for (int q = 0; q < G; ++q) {
            if (local_at(q, 0)[0] == 0) continue;
            const int r = T.rank_of(my_node, q);
            lrecvs.push_back({r, c.inbox(lbox + q, phantom ? EngineContext::summary_capacity(local_at(q, 0)[1], spr)
                                                           : c.block_capacity(local_at(q, 0)[0], local_at(q, 0)[1],
                                                                              *c.dispatch_codec))});
            lfrom.push_back(q);
          }
          c.exchange(disp, make_tag(Phase::kForward, a.step, a.layer, 0), sends, lrecvs);
        }
      };
      const Tag rail_tag = make_tag(Phase::kDispatch, a.step, a.layer, k);
      // Read in place, the round is forwarded while the sources lend their messages, so its rows cross from their
      // batches to the local ranks in one copy; the messages' metadata stays in the sources' outboxes [0, N).
      if (consume_rail)
        c.exchange_consume(disp, rail_tag, sends, rail, forward);
      else
        c.exchange(disp, rail_tag, sends, recvs);
      std::vector<EngineContext::Message>().swap(msgs);
      std::vector<float>().swap(rows);
      if (!consume_rail) forward();
    }
    c.fabric.end_pipeline();

    // Split: the blocks, local rank by local rank, then round by round, as their rows lie (in place already).
    for (int q = 0; q < G && split; ++q)
      for (int k = 0; k < K; ++k) {
        const size_t kq = static_cast<size_t>(k) * G + q;
        if (local_at(q, k)[0] == 0) continue;
        st->recv_rows[kq] = c.add_split_block(h, inbox[meta_box + kq], meta_of[kq].bytes, rows_of[kq].bytes,
                                              local_at(q, k)[0], local_at(q, k)[1], meta_of[kq].peer, b);
      }
    if (!phantom && !split) {  // split blocks' rows are in place already
      if (rb > 0)
        c.take_spare_rows(h.recv_wire, in_tokens * rb);
      else
        h.recv_x.reserve(in_tokens * H);
    }
    for (size_t i = 0; i < lfrom.size(); ++i) {
      const int q = lfrom[i], f = T.rank_of(my_node, q);
      st->recv_rows[q] = c.add_block_message(h, inbox[lbox + q], lrecvs[i].bytes, local_at(q, 0)[0],
                                             local_at(q, 0)[1], *c.dispatch_codec,
                                             EngineContext::stream_id(Phase::kForward, a.layer, f, me), f, b, brows);
    }
    disp.time_s = c.fabric.now() - t1;
    disp.calls = 1;
    c.stats.notify.add(notify);
    c.stats.dispatch.add(disp);
    h.state = st;
    return h;
  }

  void combine(EngineContext& c, Handle& h, const float* partials, float* out) override {
    const Topology& T = c.topo;
    const int N = T.nodes(), G = T.gpus_per_node(), me = c.rank(), my_node = T.node_of(me);
    auto& st = *static_cast<HierState*>(h.state.get());
    const int K = st.rounds;
    PhaseStats comb;
    c.fabric.set_phase("combine");
    const double t0 = c.fabric.now();
    c.fabric.begin_pipeline(pipeline_chunks(c, h.num_tokens));
    // Receive buffers (EngineContext::reply_box): local ranks' answers land in the buffers the forward messages
    // to them left ([0, G)), rail sources' in [0, N); the messages back across the rail are built in outboxes
    // [back, back + S), one per rail source, apart from both: from the local answers they sum, and from the
    // rail's answers, which arrive while they are sent.
    // With Caps::consume_in_place both exchanges take the answers through Fabric::alltoallv_consume instead (on
    // emu where their senders hold them, on mpi in buffers of the transport's): the local ranks' expert outputs,
    // then the forwarders' sums, so no receive buffer of the engine's takes either, and the sums are built in the
    // rail's receive buffers [0, S), which dispatch left unused (it read the rail in place) or whose rows it has
    // forwarded (reduce_locally).
    // Combine answers dispatch's rounds in order, each back to the forwarders, then across the rail; read in
    // place with a row-separable combine codec, the answers to a forwarder travel in one message for every round
    // (the handle holds a forwarder's rows together), and the rounds run while it is lent.
    const bool consume = c.consume_in_place();
    const std::vector<int>& srcs = st.sources;
    const int S = static_cast<int>(srcs.size());
    const int back = std::max(N, G);
    const size_t crb = c.combine_row_bytes;
    c.ensure_boxes(static_cast<size_t>(back + std::max(N, S)));
    // The handle's rows from local forwarder q start at first_row[q]; round k's at first_row[q] + round_row(k, q).
    std::vector<size_t> first_row(G + 1, 0);
    for (int q = 0; q < G; ++q) {
      first_row[q + 1] = first_row[q];
      for (int k = 0; k < K; ++k) first_row[q + 1] += st.recv_rows[static_cast<size_t>(k) * G + q];
    }
    const auto rows_before = [&](const std::vector<int32_t>& per_round, int k, int q) {
      size_t n = 0;
      for (int j = 0; j < k; ++j) n += per_round[static_cast<size_t>(j) * G + q];
      return n;
    };
    // The sums from the nodes, ascending, as the reference adds them. With a combine codec that has a row format,
    // token by token over each round's tokens (sum_rows: into the fp32 output, or the bf16 one where the engine
    // writes_bf16); otherwise a message at a time into the fp32 output (begin_sum .. end_sum).
    const bool by_token = !c.phantom() && crb > 0;
    const bool sum_fp32 = !c.phantom() && !by_token;
    if (sum_fp32) c.begin_sum(h.num_tokens);
    std::vector<float> rows;

    // Round k across the rail: each rail source's sums (rmsgs) back to it, this rank's sums from each node added
    // into the output.
    const auto rail_round = [&](int k, std::vector<EngineContext::Message>& rmsgs) {
      std::vector<PeerSend> sends;
      for (int si = 0; si < S; ++si)
        if (st.fwd_in_rows[static_cast<size_t>(k) * S + si] > 0) sends.push_back({srcs[si], rmsgs[si].buf()});
      std::vector<int> rfrom;
      std::vector<PeerRecv> rrecvs;
      std::vector<PeerConsume> rconsume;
      for (int n = 0; n < N; ++n) {
        const size_t nk = static_cast<size_t>(n) * K + k;
        if (st.sent_tokens[nk] == 0) continue;
        const size_t cap = c.rows_capacity(st.sent_tokens[nk], *c.combine_codec);
        if (consume) {
          rconsume.push_back({st.relay[n], cap});
          rconsume.back().takes_pull = by_token;  // sum_rows reads a stretch of tokens at a time
        } else {
          std::vector<uint8_t>& v = c.reply_box(n, cap);
          rrecvs.push_back({st.relay[n], MutBuf{v.data(), cap}});
        }
        rfrom.push_back(n);
      }
      const auto sum = [&] {
        if (c.phantom()) return;
        if (by_token) {  // each output row written once (and rounded once in bf16)
          std::vector<EngineContext::RowsIn> ins;
          for (size_t i = 0; i < rfrom.size(); ++i) {
            const int f = st.relay[rfrom[i]];
            ins.push_back({consume ? rconsume[i].data : static_cast<const uint8_t*>(rrecvs[i].data.ptr),
                           consume ? rconsume[i].bytes : rrecvs[i].bytes,
                           &st.sent_token_ids[static_cast<size_t>(rfrom[i]) * K + k], f,
                           EngineContext::stream_id(Phase::kCombine, h.layer, f, me),
                           consume ? rconsume[i].remote : nullptr});
          }
          const int first = std::min(h.num_tokens, k * st.round_tokens);
          c.sum_rows(ins, h.num_tokens, first, std::min(h.num_tokens, first + st.round_tokens), out);
          return;
        }
        for (size_t i = 0; i < rfrom.size(); ++i) {
          const int n = rfrom[i], f = st.relay[n];
          const uint8_t* at = consume ? rconsume[i].data : static_cast<const uint8_t*>(rrecvs[i].data.ptr);
          c.add_rows_message(at, consume ? rconsume[i].bytes : rrecvs[i].bytes,
                             st.sent_token_ids[static_cast<size_t>(n) * K + k], out, *c.combine_codec,
                             EngineContext::stream_id(Phase::kCombine, h.layer, f, me), f, rows);
        }
      };
      const Tag tag = make_tag(Phase::kCombine, h.step, h.layer, 2 * k);
      if (consume) {
        c.exchange_consume(comb, tag, sends, rconsume, sum);
        if (k == K - 1) c.fabric.end_pipeline();
      } else {
        c.exchange(comb, tag, sends, rrecvs);
        if (k == K - 1) c.fabric.end_pipeline();
        sum();
      }
    };

    if (consume && crb > 0) {
      // Back to the forwarders in one exchange: each forwarder reads every round's answers where they lie and
      // runs the rounds' reductions and rail exchanges meanwhile.
      std::vector<EngineContext::Message> msgs(G);
      std::vector<PeerSend> sends;
      for (int q = 0; q < G; ++q) {
        const size_t n = first_row[q + 1] - first_row[q];
        if (n == 0) continue;
        const int f = T.rank_of(my_node, q);
        msgs[q] = c.partials_message(h, partials, first_row[q], static_cast<int>(n),
                                     EngineContext::stream_id(Phase::kForward, h.layer, me, f));
        sends.push_back({f, msgs[q].buf()});
      }
      std::vector<int> from;
      std::vector<PeerConsume> lconsume;
      std::vector<size_t> answered(G, 0);  // rows each local rank answers over all rounds
      for (int q = 0; q < G; ++q) {
        answered[q] = rows_before(st.fwd_out_rows, K, q);
        if (answered[q] == 0) continue;
        lconsume.push_back({T.rank_of(my_node, q), c.rows_capacity(static_cast<int>(answered[q]), *c.combine_codec)});
        lconsume.back().takes_pull = true;  // reduce_locally reads a stretch of rows at a time
        from.push_back(q);
      }
      c.exchange_consume(comb, make_tag(Phase::kCombine, h.step, h.layer, 1), sends, lconsume, [&] {
        for (size_t i = 0; i < from.size(); ++i)
          c.check_rows_bytes(lconsume[i].peer, lconsume[i].bytes, answered[from[i]], crb);
        std::vector<int> index_of(G, -1);  // of local rank q in lconsume
        for (size_t i = 0; i < from.size(); ++i) index_of[from[i]] = static_cast<int>(i);
        for (int k = 0; k < K; ++k) {
          RowStretches inbox(c.staged_rows, crb);  // [q]: local rank q's answers of round k
          std::vector<int> kfrom;
          std::vector<PeerRecv> recvs;
          for (int q = 0; q < G; ++q) {
            const size_t n = st.fwd_out_rows[static_cast<size_t>(k) * G + q];
            if (n == 0) {
              inbox.add(nullptr);
              continue;
            }
            const PeerConsume& r = lconsume[index_of[q]];
            const size_t at = rows_before(st.fwd_out_rows, k, q) * crb;
            if (r.remote)
              inbox.add(nullptr, r.remote, at);
            else
              inbox.add(r.data + at);
            recvs.push_back({r.peer, MutBuf{}, n * crb, n * crb});
            kfrom.push_back(q);
          }
          std::vector<EngineContext::Message> rmsgs(S);
          reduce_locally(c, h, st, k, kfrom, std::move(inbox), recvs, rmsgs);
          rail_round(k, rmsgs);
        }
      });
    } else {
      for (int k = 0; k < K; ++k) {
        // Back to the forwarders inside the node.
        std::vector<EngineContext::Message> msgs(G);
        std::vector<PeerSend> sends;
        std::vector<PeerRecv> recvs;
        for (int q = 0; q < G; ++q) {
          const int n = st.recv_rows[static_cast<size_t>(k) * G + q];
          if (n == 0) continue;
          const int f = T.rank_of(my_node, q);
          msgs[q] = c.partials_message(h, partials, first_row[q] + rows_before(st.recv_rows, k, q), n,
                                       EngineContext::stream_id(Phase::kForward, h.layer, me, f));
          sends.push_back({f, msgs[q].buf()});
        }
        std::vector<const uint8_t*> inbox(G, nullptr);  // local rank q's answer
        std::vector<int> from;
        std::vector<PeerConsume> lconsume;
        for (int q = 0; q < G; ++q) {
          const int n = st.fwd_out_rows[static_cast<size_t>(k) * G + q];
          if (n == 0) continue;
          const size_t cap = c.rows_capacity(n, *c.combine_codec);
          if (consume) {
            lconsume.push_back({T.rank_of(my_node, q), cap});
          } else {
            std::vector<uint8_t>& v = c.reply_box(q, cap);
            recvs.push_back({T.rank_of(my_node, q), MutBuf{v.data(), cap}});
            inbox[q] = v.data();
          }
          from.push_back(q);
        }
        std::vector<EngineContext::Message> rmsgs(S);
        // Reduce per received rail row over local ranks (ascending) into one partial per token back.
        const Tag tag = make_tag(Phase::kCombine, h.step, h.layer, 2 * k + 1);
        if (consume) {  // a combine codec that does not encode rows on its own: an exchange a round
          c.exchange_consume(comb, tag, sends, lconsume, [&] {
            for (size_t i = 0; i < from.size(); ++i) {
              inbox[from[i]] = lconsume[i].data;
              recvs.push_back({lconsume[i].peer, MutBuf{}, lconsume[i].bytes, lconsume[i].bytes});
            }
            reduce_locally(c, h, st, k, from, answers_at(c, inbox), recvs, rmsgs);
          });
        } else {
          c.exchange(comb, tag, sends, recvs);
          reduce_locally(c, h, st, k, from, answers_at(c, inbox), recvs, rmsgs);
        }
        std::vector<EngineContext::Message>().swap(msgs);
        rail_round(k, rmsgs);
      }
    }
    if (sum_fp32) c.end_sum(out);
    comb.time_s = c.fabric.now() - t0;
    comb.calls = 1;
    c.stats.combine.add(comb);
  }

 private:
  // Local ranks' answers at hand in this process: inbox[q], local rank q's.
  static RowStretches answers_at(EngineContext& c, const std::vector<const uint8_t*>& inbox) {
    RowStretches rows(c.staged_rows, c.combine_row_bytes);
    for (const uint8_t* p : inbox) rows.add(p);
    return rows;
  }

  // The forwarder's reduction of round k: for each rail source's rows, the local ranks' answers (inbox row q,
  // recvs in the order of `from`) summed over local ranks ascending into one message back per rail source
  // (rmsgs). With a row-separable codec the local rows are decoded one at a time, those another process holds
  // read a stretch of rail rows at a time (RowStretches), and each sum is encoded straight into its message;
  // otherwise the answers are decoded whole first.
  static void reduce_locally(EngineContext& c, const Handle& h, const HierState& st, int k,
                             const std::vector<int>& from, RowStretches inbox, const std::vector<PeerRecv>& recvs,
                             std::vector<EngineContext::Message>& rmsgs) {
    const Topology& T = c.topo;
    const int G = T.gpus_per_node(), me = c.rank(), my_node = T.node_of(me), H = c.hidden();
    const int N = T.nodes(), back = std::max(N, G);
    const std::vector<int>& srcs = st.sources;
    const int S = static_cast<int>(srcs.size());
    const int32_t* fwd_out_rows = st.fwd_out_rows.data() + static_cast<size_t>(k) * G;
    const int32_t* fwd_in_rows = st.fwd_in_rows.data() + static_cast<size_t>(k) * S;  // S may be 0
    const size_t rb = c.combine_row_bytes;
    std::vector<std::vector<float>> local(G);
    if (!c.phantom()) {
      for (size_t i = 0; i < from.size(); ++i) {
        const int q = from[i], r = T.rank_of(my_node, q);
        if (rb > 0) {
          c.check_rows_bytes(r, recvs[i].bytes, static_cast<size_t>(fwd_out_rows[q]), rb);
          continue;
        }
        local[q].resize(static_cast<size_t>(fwd_out_rows[q]) * H);
        c.read_rows_message(inbox.row(q, 0), recvs[i].bytes, fwd_out_rows[q], local[q].data(), *c.combine_codec,
                            EngineContext::stream_id(Phase::kForward, h.layer, r, me), r);
      }
    }
    std::vector<float> acc, dec(rb > 0 ? H : 0);
    std::vector<const uint8_t*> local_rows;  // a rail row's answers from the local ranks
    std::vector<uint8_t> encoded;  // a row of a codec other than bf16, before it goes in place
    int in_row = 0;  // the round's first row in fwd_map_begin: the rows of the rounds before it
    for (int j = 0; j < k; ++j)
      for (int si = 0; si < S; ++si) in_row += st.fwd_in_rows[static_cast<size_t>(j) * S + si];
    // Pulled answers are read a stretch of rail rows at a time; a local rank's rows are wanted in ascending order
    // (the forwarder gave them out in rail-row order), else they are read whole.
    int round_end = in_row, stretch_end = in_row;
    for (int si = 0; si < S; ++si) round_end += fwd_in_rows[si];
    std::vector<size_t> want(G, 0);  // per local rank: its rows up to the stretch's end
    if (rb > 0 && inbox.pulls()) {
      std::vector<int64_t> last(G, -1);
      for (int m = st.fwd_map_begin[in_row]; m < st.fwd_map_begin[round_end]; ++m) {
        const auto [q, idx] = st.fwd_map[m];
        if (idx < last[q]) inbox.read_whole(q, static_cast<size_t>(fwd_out_rows[q]));
        last[q] = idx;
      }
    }
    const auto next_stretch = [&](int r) {
      stretch_end = inbox.stretch_end(st.fwd_map_begin.data(), r, round_end);
      for (int m = st.fwd_map_begin[r]; m < st.fwd_map_begin[stretch_end]; ++m)
        want[st.fwd_map[m].first] = std::max(want[st.fwd_map[m].first], static_cast<size_t>(st.fwd_map[m].second) + 1);
      inbox.advance(want);
    };
    for (int si = 0; si < S; ++si) {  // rail sources
      const int rows_n = fwd_in_rows[si];
      if (rows_n == 0) continue;
      const int src = srcs[si];
      const uint64_t stream = EngineContext::stream_id(Phase::kCombine, h.layer, me, src);
      if (c.phantom()) {
        rmsgs[si] = c.make_rows_message(nullptr, rows_n, *c.combine_codec, stream);
      } else if (rb > 0) {
        acc.resize(H);
        // The sums are built where they are sent from. Where the source reads them in place
        // (Caps::consume_in_place), in the rail receive buffer [si]: dispatch read the rail's rows where their
        // sources held them and left it unused, or received them there and has forwarded them, so a (token, node)
        // pair holds one buffer, for its sum. Else in a send buffer of their own, as the rail's answers come back
        // into the receive buffers.
        const size_t bytes = static_cast<size_t>(rows_n) * rb;
        uint8_t* sums = nullptr;
        if (c.consume_in_place()) {
          sums = static_cast<uint8_t*>(c.inbox(static_cast<size_t>(si), bytes).ptr);
        } else {
          std::vector<uint8_t>& m = c.outbox(static_cast<size_t>(back + si));
          resize_huge(m, bytes);
          sums = m.data();
        }
        for (int j = 0; j < rows_n; ++j) {
          if (inbox.pulls() && in_row + j == stretch_end) next_stretch(in_row + j);
          const int m0 = st.fwd_map_begin[in_row + j], m1 = st.fwd_map_begin[in_row + j + 1];
          uint8_t* row = sums + static_cast<size_t>(j) * rb;
          if (c.combine_bf16) {  // decoded, added and rounded in one pass for every four answers
            local_rows.clear();
            for (int k = m0; k < m1; ++k) local_rows.push_back(inbox.row(st.fwd_map[k].first, st.fwd_map[k].second));
            codecs::bf16_sum_rows_encode_kernel(local_rows.data(), local_rows.size(), H, acc.data(), row);
            continue;
          }
          std::fill(acc.begin(), acc.end(), 0.f);
          for (int k = m0; k < m1; ++k) {
            const auto [q, idx] = st.fwd_map[k];
            c.combine_codec->decode(inbox.row(q, idx), rb, 1, H, dec.data());
            for (int e = 0; e < H; ++e) acc[e] += dec[e];
          }
          encoded.clear();
          c.combine_codec->encode(acc.data(), 1, H, encoded, stream);
          if (encoded.size() != rb)
            throw EplabError("engine: combine codec '" + c.combine_codec->name() + "' encoded a row into " +
                             std::to_string(encoded.size()) + " bytes, its rows take " + std::to_string(rb));
          std::memcpy(row, encoded.data(), rb);
        }
        rmsgs[si].view = sums;
        rmsgs[si].view_bytes = bytes;
      } else {
        acc.assign(static_cast<size_t>(rows_n) * H, 0.f);
        for (int j = 0; j < rows_n; ++j) {
          float* o = &acc[static_cast<size_t>(j) * H];
          for (int k = st.fwd_map_begin[in_row + j]; k < st.fwd_map_begin[in_row + j + 1]; ++k) {
            const auto [q, idx] = st.fwd_map[k];
            const float* p = &local[q][static_cast<size_t>(idx) * H];
            for (int e = 0; e < H; ++e) o[e] += p[e];
          }
        }
        rmsgs[si] = c.make_rows_message(acc.data(), rows_n, *c.combine_codec, stream);
      }
      in_row += rows_n;
    }
  }
};

}  // namespace

std::unique_ptr<Algorithm> make_hierarchical_algorithm() { return std::make_unique<Hierarchical>(); }

}  // namespace eplab
