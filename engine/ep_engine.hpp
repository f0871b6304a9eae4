// The EP engine of one rank: dispatch (tokens to the ranks that hold their experts) returning a Handle, and
// combine (expert outputs back, summed) taking it. Algorithms (flat, hierarchical, ...) plug in by name and
// run on any Fabric; all of them exchange counts (notify) before payload.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/fabric.hpp"
#include "engine/layout_cache.hpp"
#include "engine/moe_shape.hpp"
#include "engine/placement.hpp"
#include "engine/registry.hpp"
#include "engine/wire.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {

// What one rank moved and how long it took in one phase, accumulated over calls.
struct PhaseStats {
  double time_s = 0;
  double codec_s = 0;                 // modeled encode/decode time, outside time_s (sim only)
  double bytes[3] = {0, 0, 0};        // wire bytes sent, by LinkClass (self, scaleup, scaleout)
  double logical_bytes = 0;           // DeepEP intranode definition: received tokens x hidden x wire bytes/elem
  double scaleout_logical_bytes = 0;  // DeepEP internode definition: (token, node) pairs x hidden x bytes/elem
  double messages = 0;
  int calls = 0;
  void add(const PhaseStats& o);
};

struct EngineStats {
  PhaseStats notify, dispatch, combine;
};

// How combine sums partial results; the verification reference follows the same order so fp32 results can
// be compared bit for bit.
enum class ReductionOrder {
  kRanks,       // source sums one partial per destination rank, ranks ascending
  kNodes,       // each node sums its ranks' partials (ascending), source sums nodes ascending
  kSelections,  // rows are unweighted per-selection outputs; the source weights and sums them in top-k order
};

struct EngineOptions {
  std::string algorithm = "hierarchical";
  std::string dispatch_codec = "bf16";
  std::string combine_codec = "bf16";
  bool phantom = false;   // sizes only: no activations travel (simulated fabrics)
  double timeout_s = 60;  // limit for one blocked wait
  int chunk_tokens = 0;   // algorithm-specific pipelining granularity (0 = one chunk)
  int layout_cache = 0;   // capacity of the cached-layout LRU (engine/layout_cache.hpp); 0 = off
  // Combine reads its answers where their senders hold them, without receive buffers, on a fabric that can
  // (Caps::consume_in_place: emu); off, every fabric copies them into buffers first. The results are the same.
  bool consume_in_place = true;
  // Hierarchical's payload on a wall-clock backend in this many rounds of the sources' tokens
  // (engine/hierarchical.cpp, rail_rounds): a forwarder then holds a round's rail rows at a time. The same on
  // every rank; the results are the same for any number.
  int rail_rounds = 1;
};

// The rail rounds (EngineOptions::rail_rounds) that keep a source's rows to one node in a round, of row_bytes
// each, at about round_bytes at most. A run sets them from its tokens per rank, the same on every rank:
// kRailRoundBytes where ranks are threads of one process, kProcessRailRoundBytes where they are processes, which
// pay more for each exchange they wait for (16 processes on 2 cores: about 5 ms a round, docs/architecture.md),
// so they take fewer rounds for more memory.
constexpr double kRailRoundBytes = 8.0 * (1 << 20);
constexpr double kProcessRailRoundBytes = 64.0 * (1 << 20);
constexpr int kMaxRailRounds = 64;
inline int rail_rounds_for(long tokens, size_t row_bytes, double round_bytes = kRailRoundBytes) {
  const double rounds = std::ceil(static_cast<double>(tokens) * static_cast<double>(row_bytes) / round_bytes);
  return static_cast<int>(std::clamp(rounds, 1.0, static_cast<double>(kMaxRailRounds)));
}

struct DispatchArgs {
  int step = 0;
  int layer = 0;
  int num_tokens = 0;
  int topk = 0;
  const int32_t* slots = nullptr;  // [tokens x topk] physical expert slots, -1 = unused
  const float* weights = nullptr;  // [tokens x topk]
  const float* x = nullptr;        // [tokens x hidden] activations; null in phantom mode
  // Which expert each slot holds for this call (rebalancing changes it between steps); null: the engine's.
  // It must have the engine placement's geometry (ranks x slots per rank): algorithms route by slot -> rank
  // only, so the per-call placement changes what a slot computes, never where its tokens travel.
  const Placement* placement = nullptr;
  // Cached layout (engine/layout_cache.hpp): the cluster-wide key of this call's routing, the same on every
  // rank (0: not cached), and whether the caller vouches that it repeats a cached layout, so every rank
  // takes its counts from its cache and skips notify. Without the vouch, notify runs and fills the entry.
  uint64_t layout_key = 0;
  bool layout_cached = false;
  // The batch already in the dispatch codec's row format ([tokens x Codec::row_bytes]), instead of x, for an
  // engine whose takes_wire_batch() is true: half the memory of fp32 activations with bf16, and a source's
  // messages are the batch's rows copied as they are (a row-separable codec encodes each row on its own, so
  // the bytes are those encoding x would give).
  const uint8_t* x_rows = nullptr;
};

// Returned by dispatch, consumed by combine. `recv` lists every row this rank received: its origin
// (source rank, token) and the selections (physical slot, weight) it must compute, in top-k order.
struct Handle {
  int step = 0;
  int layer = 0;
  int num_tokens = 0;  // tokens of this rank's own batch (combine's output rows)
  // (token, destination node) pairs of the own batch, own node included; an algorithm that counts them anyway
  // sets them, else (-1) the engine counts them after dispatch.
  long token_node_pairs = -1;
  TokenBlock recv;
  // The received rows, in one of two forms (both empty in phantom mode): recv_wire when the dispatch codec
  // encodes rows on their own (Codec::row_bytes; rows stay in the wire format, decoded one at a time by
  // EngineContext::recv_row), recv_x otherwise.
  std::vector<float> recv_x;       // [recv.size() x hidden]
  std::vector<uint8_t> recv_wire;  // [recv.size() x dispatch row bytes]
  // Expert outputs in the combine codec's row format, written by EngineContext::map_rows; when present, combine
  // sends slices of it as they are and its partials argument may be null.
  std::vector<uint8_t> expert_out;  // [recv.size() x combine row bytes]
  // What expert compute and the statistics need, in both modes: rows received, and selections received per
  // local slot ([slots per rank]). Phantom-mode algorithms may fill these and leave `recv` empty (see
  // EngineContext::BlockSummary); otherwise the engine derives them from `recv`.
  int rows = 0;
  std::vector<int32_t> slot_sels;
  std::shared_ptr<void> state;           // the algorithm's private bookkeeping for combine
  const Placement* placement = nullptr;  // the placement dispatch ran with (never null after dispatch)
};

// Flat's payload where rows travel straight into place (EngineContext::split_blocks) moves in rounds of this many
// peers: dispatch's send buffers and combine's reply buffers then hold a round's rows, not a whole call's. At
// 16 ranks x 4096 tokens (DeepSeek-V3, bf16) a rank sends about 380 MB of rows per call; in rounds of two peers
// its buffers hold about 48 MB. Two, not one, so that two ranks answer in each of combine's rounds and both
// cores of a small machine copy. driver/memory_guard sizes a run with it.
constexpr int kFlatRoundPeers = 2;

class EngineContext;

// Rows of several inputs in one row format, some of them left in other processes (RemoteBytes,
// PeerConsume::takes_pull) and read a stretch at a time into `buffer`, where they stay in cache until they are
// used (sum_rows, and hierarchical's forwarders summing their local ranks' answers). Each pulled input's rows are
// wanted in ascending order: a stretch reads, for each, its rows from where the last stretch ended up to the end
// given; the rows of earlier stretches are gone then. An input wanted out of order is read whole (read_whole).
class RowStretches {
 public:
  RowStretches(std::vector<uint8_t>& buffer, size_t row_bytes) : buf_(buffer), rb_(row_bytes) {}
  // The next input: rows at `data`, or from byte `offset` of `remote`.
  void add(const uint8_t* data, const RemoteBytes* remote = nullptr, size_t offset = 0);
  bool pulled(size_t i) const { return in_[i].remote != nullptr; }
  bool pulls() const { return pulled_ > 0; }
  // What a stretch may hold: about 256 KiB from each pulled input. Each read is a system call that pins its
  // pages, so smaller reads cost more than the cache saves (16 x 4096 flat: 1 MiB stretches of 15 inputs gained
  // nothing, 4 MiB took a quarter off combine).
  size_t stretch_bytes() const;
  // Where the stretch that starts at item `from` of a run ends, item i holding rows [begin[i], begin[i + 1]): as
  // many items as fit in stretch_bytes(), at least one, none at or past `end`.
  template <class Index>
  int stretch_end(const Index* begin, int from, int end) const {
    int e = from + 1;
    while (e < end && static_cast<size_t>(begin[e + 1] - begin[from]) * rb_ <= stretch_bytes()) ++e;
    return e;
  }
  // Reads rows [end of the last stretch, end[i]) of every pulled input i (end[i] of the others is not read).
  void advance(std::span<const size_t> end);
  // Reads input i's first `rows` rows into a buffer of its own; it is then read as a local one.
  void read_whole(size_t i, size_t rows);
  const uint8_t* row(size_t i, size_t j) const {
    const Input& in = in_[i];
    return in.remote ? buf_.data() + in.at + (j - in.lo) * rb_ : in.data + j * rb_;
  }

 private:
  struct Input {
    const uint8_t* data = nullptr;
    const RemoteBytes* remote = nullptr;
    size_t offset = 0;
    size_t next = 0;  // its first row not read yet
    size_t lo = 0;    // the current stretch's first row of it,
    size_t at = 0;    // and where that lies in the buffer
  };
  std::vector<uint8_t>& buf_;
  size_t rb_;
  std::vector<Input> in_;
  std::vector<std::vector<uint8_t>> whole_;
  size_t pulled_ = 0;
};

class Algorithm {
 public:
  virtual ~Algorithm() = default;
  virtual std::string name() const = 0;
  virtual ReductionOrder reduction() const = 0;
  // Whether dispatch reads the batch only through EngineContext::take_source_block, so it may come as wire
  // rows (DispatchArgs::x_rows).
  virtual bool takes_wire_rows() const { return false; }
  virtual Handle dispatch(EngineContext& c, const DispatchArgs& a) = 0;
  // partials: [handle.recv.size() x hidden] — per row the weighted sum of its selections' expert outputs, or
  // (kSelections) the unweighted output of its single selection. out: [handle.num_tokens x hidden].
  virtual void combine(EngineContext& c, Handle& h, const float* partials, float* out) = 0;
  // Whether combine writes a bf16 output itself (EngineContext::out_bf16, EpEngine::combine_bf16), summing each
  // token's rows in fp32 in the reduction order and rounding once; otherwise the engine sums into an fp32 buffer
  // and rounds that.
  virtual bool writes_bf16(const EngineContext& c) const { return false; }
  // DeepEP's logical bytes of one call for this rank: received rows x hidden x wire bytes per element
  // (intranode definition) and (token, node) pairs x hidden x wire bytes per element (internode/RDMA).
  virtual double logical_bytes(const EngineContext& c, const Handle& h, const Codec& codec) const;
  virtual double scaleout_logical_bytes(const EngineContext& c, const Handle& h, const Codec& codec) const;
};

// The algorithm registry (engine/registry.hpp): allgather, flat, hierarchical, low-latency.
using AlgorithmFactory = std::unique_ptr<Algorithm> (*)();
Registry<AlgorithmFactory>& algorithm_registry();
std::vector<std::string> algorithm_names();
std::unique_ptr<Algorithm> create_algorithm(const std::string& name);

// Everything an algorithm needs on one rank, and the helpers they share.
class EngineContext {
 public:
  EngineContext(Fabric& fabric, const MoeShape& shape, const Placement& placement, const EngineOptions& opts);

  Fabric& fabric;
  const Topology& topo;
  const MoeShape& shape;
  const Placement& placement;
  const EngineOptions& opts;
  std::unique_ptr<Codec> dispatch_codec;
  std::unique_ptr<Codec> combine_codec;
  EngineStats stats;
  LayoutCache layout_cache;
  // Where each physical slot lives: the placement's geometry (the same for every call's placement), looked up
  // once per selection in the algorithms' hot loops instead of dividing.
  struct SlotHome {
    int32_t rank, node, local;
  };
  std::vector<SlotHome> slot_home;  // [slots]
  // GPUs that have failed (`--fault gpu:R@step:S`, driver/faults.hpp), marked by every rank at the same point of
  // its program from the fault plan, on every backend (sim included, where the failed rank's actor runs on).
  // Hierarchical relays a failed GPU's rail through another GPU of its node and sends nothing to it; the other
  // algorithms need no such routing (their selections already avoid its slots). Empty while none has failed.
  std::vector<char> failed_gpus;  // [rank]
  void mark_gpu_failed(int r) {
    if (failed_gpus.empty()) failed_gpus.assign(static_cast<size_t>(topo.size()), 0);
    failed_gpus.at(static_cast<size_t>(r)) = 1;
  }
  bool gpu_up(int r) const { return r >= 0 && (failed_gpus.empty() || !failed_gpus[static_cast<size_t>(r)]); }

  // Cached layouts: the counts this rank's notify delivered for the vouched call `a`, or null when `a` is not
  // vouched (run notify, then store_counts). Throws if the caller vouched and the cache disagrees.
  const std::vector<uint32_t>* cached_counts(const DispatchArgs& a);
  void store_counts(const DispatchArgs& a, std::vector<uint32_t> counts, double notify_time_s);

  int rank() const { return fabric.rank(); }
  int hidden() const { return shape.hidden; }
  bool phantom() const { return opts.phantom; }
  Deadline deadline() const { return Deadline::after(fabric, opts.timeout_s); }

  // Adds the bytes of the sends to live peers to st, by distance, and (as_messages) one message each.
  void count_sends(PhaseStats& st, std::span<const PeerSend> sends, bool as_messages) const;
  // Runs one all-to-all-v and counts what this rank sent.
  void exchange(PhaseStats& st, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs);
  // Whether combine reads answers where their senders hold them (Fabric::alltoallv_consume): real bytes, a
  // fabric with Caps::consume_in_place, and EngineOptions::consume_in_place.
  bool consume_in_place() const { return opts.consume_in_place && !phantom() && fabric.caps().consume_in_place; }
  // Whether a combine that reads bf16 answers in place can sum them straight into a bf16 output
  // (Algorithm::writes_bf16 of flat and hierarchical).
  bool sums_bf16_in_place() const { return consume_in_place() && combine_bf16 && combine_row_bytes > 0; }
  // The same as exchange with Fabric::alltoallv_consume: `consume` reads every received message in place.
  void exchange_consume(PhaseStats& st, Tag tag, std::span<const PeerSend> sends, std::span<PeerConsume> recvs,
                        const std::function<void()>& consume);

  // A message's real bytes and the bytes a simulated fabric charges on top (phantom payload).
  struct Message {
    std::vector<uint8_t> bytes;
    size_t phantom_bytes = 0;
    const uint8_t* view = nullptr;  // when set, the message is these bytes of a buffer it does not own
    size_t view_bytes = 0;
    // A block message whose rows are in the dispatch codec's row format: its metadata bytes, where the rows
    // start (0 otherwise). Split exchanges (split_blocks) send the two parts as two messages.
    size_t meta_bytes = 0;
    // A gather message (EngineContext::gather_sends): the viewed bytes are its metadata only, and its rows, of
    // row_bytes each, are sent from where they lie (a source's batch, a forwarder's receive buffer).
    std::vector<const uint8_t*> row_ptrs;
    size_t row_bytes = 0;
    // Rows a forwarder sends on from messages it holds pulled (RowGather::pulled): empty, or one per row.
    std::vector<PulledRow> pulled_rows;
    static Message view_of(const std::vector<uint8_t>& v) {
      Message m;
      m.view = v.data();
      m.view_bytes = v.size();
      return m;
    }
    RowGather gather() const {
      return RowGather{row_ptrs.data(), row_ptrs.size(), row_bytes, pulled_rows.empty() ? nullptr : pulled_rows.data()};
    }
    ConstBuf buf() const {
      if (!row_ptrs.empty()) return ConstBuf{view, view_bytes + gather().bytes(), phantom_bytes, gather()};
      return view ? ConstBuf{view, view_bytes, phantom_bytes} : ConstBuf{bytes.data(), bytes.size(), phantom_bytes};
    }
    ConstBuf meta() const { return ConstBuf{buf().ptr, meta_bytes}; }
    ConstBuf rows() const {
      if (!row_ptrs.empty()) return ConstBuf{view, gather().bytes(), 0, gather()};
      const ConstBuf b = buf();
      return ConstBuf{static_cast<const uint8_t*>(b.ptr) + meta_bytes, b.bytes - meta_bytes};
    }
  };
  // Whether dispatch sends rows as gather messages (the fabric's Caps::gather_send, real bytes): a source's wire
  // rows and a forwarder's received rows then cross to their receivers in one copy, not gathered into a send
  // buffer first.
  bool gather_sends = false;
  // Whether dispatch's last stage receives each block's rows straight into the handle's rows buffer
  // (Handle::recv_wire): the block then travels as two messages, its metadata into a small receive buffer and
  // its rows where they will stay, so the destination neither holds a second copy of its rows nor copies them
  // again. Only for row-separable dispatch codecs, and only where time is not a model: a simulated fabric would
  // charge the second message's latency, so sim keeps one message per block.
  bool split_blocks() const { return dispatch_row_bytes > 0 && !phantom() && !fabric.caps().modeled_time; }
  // A split block exchange: the metadata parts (tag meta_tag), then the rows (rows_tag). Counted as one message
  // per block, as the unsplit exchange counts it.
  void exchange_split(PhaseStats& st, Tag meta_tag, Tag rows_tag, std::span<const PeerSend> meta_sends,
                      std::span<const PeerSend> row_sends, std::span<PeerRecv> meta_recvs,
                      std::span<PeerRecv> row_recvs);
  // The destination's side of a split block: parses and checks the metadata (as read_wire_block) against the
  // rows message's size, then appends the block's tokens to the handle (its rows are already in place).
  int add_split_block(Handle& h, const std::vector<uint8_t>& meta, size_t meta_bytes, size_t row_bytes, uint32_t tokens,
                      uint32_t sels, int peer, TokenBlock& b);
  // The metadata of a block whose wire rows lie apart from it (a split block, a lent gather send): it must fill
  // meta_bytes exactly and announce row_bytes of whole rows, holding the counts notify announced.
  void read_split_meta(const uint8_t* meta, size_t meta_bytes, size_t row_bytes, uint32_t tokens, uint32_t sels,
                       const std::string& what, TokenBlock& b) const;
  // Real payload: block metadata followed by the block's rows encoded with `codec` (phantom mode sends a
  // BlockSummary instead, below).
  Message make_block_message(const TokenBlock& b, const float* rows, Codec& codec, uint64_t stream);
  // A source's dispatch message to one peer: gathers the rows of b's tokens from x (the rank's batch) into
  // `scratch`, encodes them with the dispatch codec after b's metadata, then frees b, keeping only its token ids
  // (the order combine's answer comes back in) in sent_ids.
  // With row-separable codecs the message is written into outbox(slot) and viewed.
  // x_rows, when set, is the batch in the dispatch codec's row format (DispatchArgs::x_rows): its rows are copied,
  // or with gather_sends only the metadata is written and the message lists the batch's rows.
  Message take_source_block(size_t slot, TokenBlock& b, const DispatchArgs& a, uint64_t stream,
                            std::vector<int32_t>& sent_ids, std::vector<float>& scratch);
  // Rows only (combine); `rows` may be null in phantom mode, which charges their encoded size.
  Message make_rows_message(const float* rows, int n, Codec& codec, uint64_t stream);
  // Combine's message of the handle's rows [first, first + n): a view of h.expert_out when expert compute wrote
  // it (map_rows), else those rows of `partials` encoded.
  Message partials_message(const Handle& h, const float* partials, size_t first, int n, uint64_t stream);

  // Row bytes of the dispatch and combine codecs (Codec::row_bytes; 0 in phantom mode or when a codec does
  // not encode rows on their own).
  size_t dispatch_row_bytes = 0, combine_row_bytes = 0;
  // Whether the dispatch / combine codec is plain bf16 (real bytes): its rows are then read and summed by the
  // bf16 row kernels (policies/codecs/quant_kernels.hpp) without a decoded fp32 copy, with the same results.
  bool dispatch_bf16 = false, combine_bf16 = false;
  // Received row i of h as fp32: a pointer into recv_x, or row i of recv_wire decoded into `scratch` (hidden).
  const float* recv_row(const Handle& h, int i, float* scratch);
  // The received-rows buffer of the last call that finished combine, kept for the next dispatch: buffers this
  // large come straight from the kernel, and page-faulting them in again on every call costs more than the copies.
  std::vector<uint8_t> spare_rows;
  // Receive buffers, one per peer of a round, shared by the rounds of a call (each round is done with them
  // before the next posts its receives) and kept across calls; they only grow, so a call neither zero-fills
  // nor page-faults them again. inbox(i, bytes) makes buffer i hold at least `bytes` and returns them.
  std::vector<std::vector<uint8_t>> inboxes;
  MutBuf inbox(size_t i, size_t bytes);
  // Send buffers, kept the same way: outbox(i) is buffer i emptied, its capacity kept; a round's messages are
  // sent (the exchange has returned) before the next round writes them.
  std::vector<std::vector<uint8_t>> outboxes;
  std::vector<uint8_t>& outbox(size_t i);
  // Makes inboxes and outboxes hold at least n buffers, so that references to them stay valid while a call
  // asks for more.
  void ensure_boxes(size_t n);
  // A receive buffer for combine's answer to what outbox i sent in dispatch: outbox i itself when it holds at
  // least `bytes` (its message has been sent, and the answer is no larger than what was sent when the combine
  // codec's rows are no larger than the dispatch codec's), else inbox(i, bytes). A rank then keeps one buffer
  // for both, not two.
  std::vector<uint8_t>& reply_box(size_t i, size_t bytes);
  // Moves spare_rows into `rows` (emptied) with room for `bytes`.
  void take_spare_rows(std::vector<uint8_t>& rows, size_t bytes);
  // Moves spare_rows into `rows`, sized to `bytes` for receives to write into; only bytes beyond the spare
  // buffer's previous size are zero-filled (a kept buffer is not cleared and filled again on every call).
  void take_spare_rows_sized(std::vector<uint8_t>& rows, size_t bytes);
  // Expert compute over wire rows: for every received row i, fn(i, row, out) turns the decoded row into its
  // partial (out: hidden floats, zeroed), which is encoded into h.expert_out with the combine codec — over
  // recv_wire's own buffer when the combine row is as large as the dispatch row or larger (first row first when
  // equal, last row first when larger: row i is read before anything overwrites it), else into a new buffer.
  // Only when h.recv_wire holds the rows and combine_row_bytes > 0 (can_map_rows).
  bool can_map_rows(const Handle& h) const { return !h.recv_wire.empty() && combine_row_bytes > 0; }
  void map_rows(Handle& h, const std::function<void(int, const float*, float*)>& fn);
  // Expert compute straight on wire rows, for a caller that reads the dispatch codec's rows and writes the
  // combine codec's itself (the bf16 experts of driver/reference.cpp): fn(i, in, out) turns received row i into
  // its output row, in place when both codecs' rows are the same size (the output may alias the input), else
  // into a new buffer. Same preconditions as map_rows.
  void map_wire_rows(Handle& h, const std::function<void(int, const uint8_t*, uint8_t*)>& fn);
  // Receive capacity for a block message / rows message.
  size_t block_capacity(int tokens, int sels, const Codec& codec) const;
  size_t rows_capacity(int n, const Codec& codec) const;
  // Throws the FabricError of a rows message from `peer` whose `bytes` are not `rows` rows of `row_bytes`.
  void check_rows_bytes(int peer, size_t bytes, size_t rows, size_t row_bytes) const;
  // Parses a received block message (slots checked against the placement) and decodes its rows into rows_out
  // (resized to n x hidden).
  void read_block_message(const std::vector<uint8_t>& msg, size_t real_bytes, TokenBlock& b,
                          std::vector<float>& rows_out, Codec& codec, uint64_t stream, int peer);
  // "rank R, message from peer P in phase X (step S, layer L)": where an error in a received message happened.
  std::string message_context(int peer, int step, int layer) const;
  // A block message whose rows are in the dispatch codec's row format: parses and checks its metadata (slots,
  // payload size, the counts notify announced, whole rows) and returns where its rows start in msg.
  const uint8_t* read_wire_block(const uint8_t* msg, size_t real_bytes, TokenBlock& b, uint32_t tokens, uint32_t sels,
                                 int peer, int step, int layer) const;
  // The same for a block read where its sender holds it (alltoallv_consume, a receive that takes gathers): the
  // metadata at m.data and the rows behind it, or for a gather send the metadata filling the bytes at m.data and
  // the rows where the gather lists them. rows[j] is then where the block's row j lies. A message left in its
  // sender's process (m.remote) has its metadata read here and its rows left there: pulled[j] names row j, and
  // rows is all null; otherwise pulled is empty.
  void read_lent_wire_block(const PeerConsume& m, TokenBlock& b, uint32_t tokens, uint32_t sels, int step, int layer,
                            std::vector<const uint8_t*>& rows, std::vector<PulledRow>& pulled) const;
  // Conservation: throws unless a received block holds the tokens and selections its sender announced in notify.
  void check_counts(const TokenBlock& b, uint32_t tokens, uint32_t sels, const std::string& what) const;
  // Throws unless every selection names a slot of the placement and the payload ends the message.
  void check_block(const TokenBlock& b, size_t off, uint64_t payload, size_t real_bytes, const std::string& what) const;
  void read_rows_message(const std::vector<uint8_t>& msg, size_t real_bytes, int n, float* rows_out, Codec& codec,
                         uint64_t stream, int peer) {
    read_rows_message(msg.data(), real_bytes, n, rows_out, codec, stream, peer);
  }
  void read_rows_message(const uint8_t* msg, size_t real_bytes, int n, float* rows_out, Codec& codec,
                         uint64_t stream, int peer);
  // Dispatch's last step at a destination: parses a block message, appends its tokens and decoded
  // rows to the handle and returns how many rows it held; in phantom mode the message is a block summary,
  // checked against the counts notify announced (tokens, sels), and only its counts reach the handle.
  // `b` and `rows` are scratch.
  int add_block_message(Handle& h, const std::vector<uint8_t>& msg, size_t real_bytes, uint32_t tokens, uint32_t sels,
                        Codec& codec, uint64_t stream, int peer, TokenBlock& b, std::vector<float>& rows);
  // Combine's last step at a source: decodes a rows message answering the tokens `ids` (in the order they were
  // sent) and adds row j into out[ids[j]]. `scratch` holds the decoded rows. Between begin_sum and end_sum, out
  // need not be zeroed: a token's first row is written as 0 + row (the bits a zeroed sum gives, -0 included)
  // and later rows are added, so the output is written once instead of cleared and then summed into.
  void add_rows_message(const std::vector<uint8_t>& msg, size_t real_bytes, const std::vector<int32_t>& ids, float* out,
                        Codec& codec, uint64_t stream, int peer, std::vector<float>& scratch) {
    add_rows_message(msg.data(), real_bytes, ids, out, codec, stream, peer, scratch);
  }
  // The same for a message read where it lies (alltoallv_consume).
  void add_rows_message(const uint8_t* msg, size_t real_bytes, const std::vector<int32_t>& ids, float* out,
                        Codec& codec, uint64_t stream, int peer, std::vector<float>& scratch);
  // A combine's sum of rows messages into out [tokens x hidden], not zeroed beforehand: end_sum zeroes the
  // tokens no row reached.
  void begin_sum(int tokens);
  void end_sum(float* out);
  // Combine's output in bf16 (EpEngine::combine_bf16), set while an algorithm that writes_bf16 runs combine
  // (its float* out is then null). Such an algorithm has all of its answers at hand at once (alltoallv_consume)
  // and sums them token by token with sum_rows.
  uint16_t* out_bf16 = nullptr;
  // One source's answer: rows in the combine codec's row format, answering the tokens `ids` in order; `stream`
  // is the codec stream they were encoded with. At `data`, or left in another process (`remote`, data null:
  // PeerConsume::remote), read a stretch of tokens at a time.
  struct RowsIn {
    const uint8_t* data = nullptr;
    size_t bytes = 0;
    const std::vector<int32_t>* ids = nullptr;
    int peer = -1;
    uint64_t stream = 0;
    const RemoteBytes* remote = nullptr;
  };
  // For every token in [first, end) of a combine's output ([tokens x hidden]): its rows from `ins`, in the order
  // of `ins`, summed in fp32 as add_rows_message sums them (the first as 0 + row); 0 where no row came. Into out
  // (fp32), or into out_bf16 where that is set, rounded once (the bf16 combine codec only). Token by token, so
  // each output row is written once, where add_rows_message, a message at a time, reads and writes it once per
  // row; a token's rows are added in the same order, so the bits are the same. Needs a combine codec with a row
  // format (combine_row_bytes) and every row of `ins` must answer a token of the range. Message sizes are
  // checked as add_rows_message checks them.
  void sum_rows(std::span<const RowsIn> ins, int tokens, int first, int end, float* out);
  void sum_rows(std::span<const RowsIn> ins, int tokens, float* out) { sum_rows(ins, tokens, 0, tokens, out); }
  std::vector<uint8_t> staged_rows;  // RowStretches' buffer (sum_rows, hierarchical's forwarders), kept for the run
  std::vector<uint8_t> summed;  // per token of the sum in progress: whether a row has been written (empty: none)
  // Whether `token`'s next row is the first of the sum in progress (and marks it written); false outside a sum.
  bool first_of_sum(int32_t token);
  // o = 0 + p when first, else o += p (hidden floats).
  void add_row(float* o, const float* p, bool first) const;

  // Phantom mode moves no rows, and nothing downstream of dispatch needs to know which tokens arrived, only how
  // many and for which slots. So instead of a block's per-token metadata a phantom message carries its summary
  // (token and selection counts, selections per destination slot), and the fabric charges it at the size of the
  // full block message: the simulated run is the same (a test compares it with a real-payload one) at a fraction
  // of the memory and time.
  struct SlotSels {
    int32_t slot;
    int32_t sels;
  };
  struct BlockSummary {
    uint32_t tokens = 0;
    uint32_t sels = 0;
    std::vector<SlotSels> slots;  // non-zero entries, slot ascending
    // Sets tokens and sels and takes the non-zero entries of per_slot[0, n), the counts of slots first_slot + i.
    void assign(uint32_t tokens, uint32_t sels, const int32_t* per_slot, int n, int first_slot);
  };
  // Charged as the block message of s.tokens rows encoded with `codec`, or as `wire_bytes` when given.
  Message make_summary_message(const BlockSummary& s, const Codec& codec, size_t wire_bytes = 0) const;
  // Receive capacity for a summary of `sels` selections over at most `max_slots` slots.
  static size_t summary_capacity(uint32_t sels, int max_slots);
  // Parses a summary, checking it against the counts notify announced for this peer.
  void read_summary_message(const std::vector<uint8_t>& msg, size_t real_bytes, BlockSummary& s, uint32_t tokens,
                            uint32_t sels, int peer) const;
  // Dispatch's last step at a destination in phantom mode: adds a summary's rows and slot selections to the handle.
  void add_summary(Handle& h, const BlockSummary& s) const;

  // Wire bytes per element of a codec (for DeepEP's logical bandwidth).
  double bytes_per_elem(const Codec& codec) const;
  // Stream id for stateful codecs: one per (phase, layer, sender, receiver).
  static uint64_t stream_id(Phase p, int layer, int src, int dst) {
    return (static_cast<uint64_t>(p) << 56) | (static_cast<uint64_t>(layer & 0xFFFF) << 40) |
           (static_cast<uint64_t>(src & 0xFFFFF) << 20) | static_cast<uint64_t>(dst & 0xFFFFF);
  }
};

class EpEngine {
 public:
  EpEngine(Fabric& fabric, const MoeShape& shape, const Placement& placement, EngineOptions opts);
  Handle dispatch(const DispatchArgs& a);
  void combine(Handle& h, const float* partials, float* out);
  // The same with a bf16 output ([h.num_tokens x hidden], DeepEP's combine output type): each token's sum is
  // the fp32 sum combine() gives, rounded to bf16 (codecs::bf16_encode_kernel). Written straight where the
  // algorithm can (Algorithm::writes_bf16), else through an fp32 buffer of the output's size.
  void combine_bf16(Handle& h, const float* partials, uint16_t* out);
  ReductionOrder reduction() const { return algo_->reduction(); }
  // Whether dispatch takes the batch as wire rows (DispatchArgs::x_rows): real bytes, a row-separable dispatch
  // codec and an algorithm that reads the batch only to send it.
  bool takes_wire_batch() const { return ctx_.dispatch_row_bytes > 0 && algo_->takes_wire_rows(); }
  const Algorithm& algorithm() const { return *algo_; }
  EngineContext& context() { return ctx_; }
  const EngineStats& stats() const { return ctx_.stats; }

 private:
  EngineOptions opts_;
  EngineContext ctx_;
  std::unique_ptr<Algorithm> algo_;
};

}  // namespace eplab
