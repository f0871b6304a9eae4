#include "engine/ep_engine.hpp"

#include <algorithm>
#include <cstring>

#include "engine/error.hpp"
#include "engine/huge_pages.hpp"
#include "engine/registry.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {

std::unique_ptr<Algorithm> make_flat_algorithm();
std::unique_ptr<Algorithm> make_hierarchical_algorithm();
std::unique_ptr<Algorithm> make_low_latency_algorithm();
std::unique_ptr<Algorithm> make_allgather_algorithm();

EPLAB_REGISTRY(AlgorithmFactory, algorithm_registry, "algorithm", r) {
  r.add("allgather", "baseline: every token gathered on every rank, each keeps its own (Megatron-style)",
        &make_allgather_algorithm);
  r.add("flat", "direct all-to-all-v, one message per (source, destination) rank pair", &make_flat_algorithm);
  r.add("hierarchical", "DeepEP normal mode: scale-out once per destination node on the same rail, then scale-up",
        &make_hierarchical_algorithm);
  r.add("low-latency", "DeepEP low-latency mode: one FP8 message per (token, expert), fixed receive slots",
        &make_low_latency_algorithm);
}

void PhaseStats::add(const PhaseStats& o) {
  time_s += o.time_s;
  codec_s += o.codec_s;
  for (int i = 0; i < 3; ++i) bytes[i] += o.bytes[i];
  logical_bytes += o.logical_bytes;
  scaleout_logical_bytes += o.scaleout_logical_bytes;
  messages += o.messages;
  calls += o.calls;
}

std::vector<std::string> algorithm_names() { return algorithm_registry().names(); }

std::unique_ptr<Algorithm> create_algorithm(const std::string& name) { return algorithm_registry().by_name(name)(); }

EngineContext::EngineContext(Fabric& f, const MoeShape& s, const Placement& p, const EngineOptions& o)
    : fabric(f),
      topo(f.topology()),
      shape(s),
      placement(p),
      opts(o),
      dispatch_codec(create_codec(o.dispatch_codec)),
      combine_codec(create_codec(o.combine_codec)),
      layout_cache(o.layout_cache) {
  if (o.phantom && !f.caps().phantom_payload)
    throw EplabError("phantom payloads (sizes only) need a simulated fabric; this one moves real bytes");
  if (!o.phantom) {
    dispatch_row_bytes = dispatch_codec->row_bytes(s.hidden);
    combine_row_bytes = combine_codec->row_bytes(s.hidden);
    gather_sends = f.caps().gather_send;
    const size_t bf16_row = 2 * static_cast<size_t>(s.hidden);
    dispatch_bf16 = dispatch_codec->name() == "bf16" && dispatch_row_bytes == bf16_row;
    combine_bf16 = combine_codec->name() == "bf16" && combine_row_bytes == bf16_row;
  }
  slot_home.resize(p.num_slots());
  for (int s = 0; s < p.num_slots(); ++s) {
    const int r = p.rank_of_slot(s);
    slot_home[s] = {r, topo.node_of(r), topo.local_of(r)};
  }
}

const std::vector<uint32_t>* EngineContext::cached_counts(const DispatchArgs& a) {
  if (!a.layout_cached) return nullptr;
  const std::string where = "engine: rank " + std::to_string(rank()) + ", step " + std::to_string(a.step) + ", layer " +
                            std::to_string(a.layer) + ", " + opts.algorithm + ": ";
  if (a.layout_key == 0 || layout_cache.capacity() == 0)
    throw EplabError(where + "the caller vouched for a cached layout, but " +
                     (a.layout_key == 0 ? "gave no layout key" : "the layout cache is off (capacity 0)"));
  const LayoutCache::Entry* e = layout_cache.find(a.layout_key);
  if (!e)
    throw EplabError(where + "the caller vouched for cached layout " + std::to_string(a.layout_key) +
                     ", which this rank's cache (capacity " + std::to_string(layout_cache.capacity()) +
                     ") does not hold; driver and engine LRUs disagree");
  if (e->own_hash != LayoutCache::routing_hash(a.num_tokens, a.topk, a.slots))
    throw EplabError(where + "the caller vouched for cached layout " + std::to_string(a.layout_key) +
                     ", but this rank's routing differs from the one that filled it; its counts would be wrong");
  ++layout_cache.stats.hits;
  layout_cache.stats.notify_time_saved_s += e->notify_time_s;
  return &e->counts;
}

void EngineContext::store_counts(const DispatchArgs& a, std::vector<uint32_t> counts, double notify_time_s) {
  if (a.layout_key == 0 || layout_cache.capacity() == 0) return;
  ++layout_cache.stats.misses;
  layout_cache.stats.notify_time_missed_s += notify_time_s;
  layout_cache.insert(
      {a.layout_key, LayoutCache::routing_hash(a.num_tokens, a.topk, a.slots), std::move(counts), notify_time_s});
}

void EngineContext::count_sends(PhaseStats& st, std::span<const PeerSend> sends, bool as_messages) const {
  for (auto& s : sends) {
    if (!fabric.live(s.peer)) continue;  // a failed peer's entry is dropped by the fabric: nothing moves
    st.bytes[static_cast<int>(topo.distance(rank(), s.peer))] += static_cast<double>(s.data.total());
    if (as_messages) st.messages += 1;
  }
}

void EngineContext::exchange(PhaseStats& st, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs) {
  count_sends(st, sends, true);
  fabric.alltoallv(tag, sends, recvs, deadline());
}

void EngineContext::exchange_consume(PhaseStats& st, Tag tag, std::span<const PeerSend> sends,
                                     std::span<PeerConsume> recvs, const std::function<void()>& consume) {
  count_sends(st, sends, true);
  fabric.alltoallv_consume(tag, sends, recvs, consume, deadline());
}

// Codec work on a fabric whose time is a model (sim), from the codec's GPU throughput model
// (Codec::gpu_seconds): a source encodes its batch once (a token bound for several ranks is not cast again per
// message, and a forwarder passes encoded rows on), a receiver decodes what it received unless the expert GEMM
// consumes the encoded form. It is charged outside the phase timers — DeepEP's dispatch kernel takes
// activations already cast to FP8, and its published times exclude that cast — and reported as codec_s.
static double charge_codec(Fabric& fabric, const Codec& codec, int tokens, int hidden, bool encode) {
  if (tokens == 0 || !fabric.caps().modeled_time || (!encode && codec.gemm_native())) return 0;
  const double s = codec.gpu_seconds(tokens, hidden, encode);
  if (s <= 0) return 0;
  const double t0 = fabric.now();
  fabric.compute(ComputeCost{.fixed_s = s, .what = encode ? "codec encode" : "codec decode"});
  return fabric.now() - t0;
}

EngineContext::Message EngineContext::make_block_message(const TokenBlock& b, const float* rows, Codec& codec,
                                                         uint64_t stream) {
  if (phantom()) throw EplabError("engine: block messages carry real rows; phantom mode sends block summaries");
  Message m;
  std::vector<uint8_t> payload;
  codec.encode(rows, b.size(), hidden(), payload, stream);
  m.bytes.reserve(block_meta_bytes(b.size(), b.num_sels()) + payload.size());
  pack_block(b, payload.size(), m.bytes);
  m.bytes.insert(m.bytes.end(), payload.begin(), payload.end());
  return m;
}

EngineContext::Message EngineContext::take_source_block(size_t slot, TokenBlock& b, const DispatchArgs& a,
                                                        uint64_t stream, std::vector<int32_t>& sent_ids,
                                                        std::vector<float>& scratch) {
  const size_t H = static_cast<size_t>(hidden());
  const float* x = a.x;
  Message m;
  if (a.x_rows != nullptr) {  // the batch's wire rows, copied behind the metadata
    if (dispatch_row_bytes == 0)
      throw EplabError("engine: rank " + std::to_string(rank()) + ": dispatch got wire rows, but its codec '" +
                       opts.dispatch_codec + "' does not encode rows on their own");
    const size_t rb = dispatch_row_bytes;
    std::vector<uint8_t>& out = outbox(slot);
    if (gather_sends) {  // the metadata here, the rows listed where they lie in the batch
      pack_block(b, static_cast<size_t>(b.size()) * rb, out);
      m = Message::view_of(out);
      m.meta_bytes = out.size();
      m.row_bytes = rb;
      m.row_ptrs.resize(static_cast<size_t>(b.size()));
      for (size_t i = 0; i < m.row_ptrs.size(); ++i) m.row_ptrs[i] = a.x_rows + static_cast<size_t>(b.token[i]) * rb;
      sent_ids = std::move(b.token);
      b.release();
      return m;
    }
    reserve_huge(out, block_meta_bytes(b.size(), b.num_sels()) + static_cast<size_t>(b.size()) * rb);
    pack_block(b, static_cast<size_t>(b.size()) * rb, out);
    const size_t meta = out.size();
    out.resize(meta + static_cast<size_t>(b.size()) * rb);
    uint8_t* dst = out.data() + meta;
    for (int32_t t : b.token) {
      std::memcpy(dst, a.x_rows + static_cast<size_t>(t) * rb, rb);
      dst += rb;
    }
    m = Message::view_of(out);
    m.meta_bytes = meta;
  } else if (dispatch_row_bytes > 0) {  // rows encoded one by one straight from the batch, behind the metadata
    const size_t rows = static_cast<size_t>(b.size()) * dispatch_row_bytes;
    std::vector<uint8_t>& out = outbox(slot);
    reserve_huge(out, block_meta_bytes(b.size(), b.num_sels()) + rows);
    pack_block(b, rows, out);
    const size_t meta = out.size();
    for (int32_t t : b.token) dispatch_codec->encode(x + static_cast<size_t>(t) * H, 1, hidden(), out, stream);
    m = Message::view_of(out);
    m.meta_bytes = meta;
  } else {
    scratch.resize(static_cast<size_t>(b.size()) * H);
    for (int i = 0; i < b.size(); ++i)
      std::memcpy(&scratch[static_cast<size_t>(i) * H], x + static_cast<size_t>(b.token[i]) * H, H * sizeof(float));
    m = make_block_message(b, scratch.data(), *dispatch_codec, stream);
  }
  sent_ids = std::move(b.token);
  b.release();
  return m;
}

EngineContext::Message EngineContext::make_rows_message(const float* rows, int n, Codec& codec, uint64_t stream) {
  Message m;
  if (phantom())
    m.phantom_bytes = codec.encoded_size(n, hidden());
  else
    codec.encode(rows, n, hidden(), m.bytes, stream);
  return m;
}

EngineContext::Message EngineContext::partials_message(const Handle& h, const float* partials, size_t first, int n,
                                                       uint64_t stream) {
  if (h.expert_out.empty())
    return make_rows_message(partials ? partials + first * hidden() : nullptr, n, *combine_codec, stream);
  Message m;
  m.view = h.expert_out.data() + first * combine_row_bytes;
  m.view_bytes = static_cast<size_t>(n) * combine_row_bytes;
  return m;
}

const float* EngineContext::recv_row(const Handle& h, int i, float* scratch) {
  if (h.recv_wire.empty()) return h.recv_x.data() + static_cast<size_t>(i) * hidden();
  dispatch_codec->decode(h.recv_wire.data() + static_cast<size_t>(i) * dispatch_row_bytes, dispatch_row_bytes, 1,
                         hidden(), scratch);
  return scratch;
}

MutBuf EngineContext::inbox(size_t i, size_t bytes) {
  if (inboxes.size() <= i) inboxes.resize(i + 1);
  if (inboxes[i].size() < bytes) resize_huge(inboxes[i], bytes);
  return MutBuf{inboxes[i].data(), bytes};
}

std::vector<uint8_t>& EngineContext::outbox(size_t i) {
  if (outboxes.size() <= i) outboxes.resize(i + 1);
  outboxes[i].clear();
  return outboxes[i];
}

void EngineContext::ensure_boxes(size_t n) {
  if (inboxes.size() < n) inboxes.resize(n);
  if (outboxes.size() < n) outboxes.resize(n);
}

std::vector<uint8_t>& EngineContext::reply_box(size_t i, size_t bytes) {
  if (i < outboxes.size() && outboxes[i].size() >= bytes) return outboxes[i];
  inbox(i, bytes);
  return inboxes[i];
}

void EngineContext::take_spare_rows_sized(std::vector<uint8_t>& rows, size_t bytes) {
  rows.swap(spare_rows);
  std::vector<uint8_t>().swap(spare_rows);
  // Room for the expert outputs too where combine's rows are the larger (fp8 in, bf16 out): map_rows writes
  // them over the received rows, and a buffer that had to grow then would hold both for a moment.
  size_t room = bytes;
  if (dispatch_row_bytes > 0 && combine_row_bytes > dispatch_row_bytes)
    room = bytes / dispatch_row_bytes * combine_row_bytes;
  if (rows.capacity() < room) {  // a larger buffer comes: nothing to copy over
    rows.clear();
    reserve_huge(rows, room);
  }
  resize_huge(rows, bytes);
}

void EngineContext::exchange_split(PhaseStats& st, Tag meta_tag, Tag rows_tag, std::span<const PeerSend> meta_sends,
                                   std::span<const PeerSend> row_sends, std::span<PeerRecv> meta_recvs,
                                   std::span<PeerRecv> row_recvs) {
  count_sends(st, meta_sends, true);
  count_sends(st, row_sends, false);  // a block's rows are the same message as its metadata
  fabric.alltoallv(meta_tag, meta_sends, meta_recvs, deadline());
  fabric.alltoallv(rows_tag, row_sends, row_recvs, deadline());
}

void EngineContext::read_split_meta(const uint8_t* meta, size_t meta_bytes, size_t row_bytes, uint32_t tokens,
                                    uint32_t sels, const std::string& what, TokenBlock& b) const {
  uint64_t payload = 0;
  const size_t off = unpack_block(meta, meta_bytes, b, payload, what.c_str());
  if (off != meta_bytes)
    throw FabricError(what + ": block metadata takes " + std::to_string(off) + " bytes, its message has " +
                      std::to_string(meta_bytes));
  check_block(b, off, payload, off + row_bytes, what);
  check_counts(b, tokens, sels, what);
  if (payload != static_cast<uint64_t>(b.size()) * dispatch_row_bytes)
    throw FabricError(what + ": " + std::to_string(b.size()) + " rows in " + std::to_string(payload) +
                      " payload bytes, the codec's rows take " + std::to_string(dispatch_row_bytes));
}

int EngineContext::add_split_block(Handle& h, const std::vector<uint8_t>& meta, size_t meta_bytes, size_t row_bytes,
                                   uint32_t tokens, uint32_t sels, int peer, TokenBlock& b) {
  read_split_meta(meta.data(), meta_bytes, row_bytes, tokens, sels, message_context(peer, h.step, h.layer), b);
  h.recv.append(b);
  return b.size();
}

void EngineContext::take_spare_rows(std::vector<uint8_t>& rows, size_t bytes) {
  rows.swap(spare_rows);
  std::vector<uint8_t>().swap(spare_rows);
  rows.clear();
  reserve_huge(rows, bytes);
}

void EngineContext::map_rows(Handle& h, const std::function<void(int, const float*, float*)>& fn) {
  if (!can_map_rows(h)) throw EplabError("engine: map_rows needs rows in a row-separable wire format");
  const int n = h.recv.size(), H = hidden();
  const bool in_place = dispatch_row_bytes == combine_row_bytes;
  if (combine_row_bytes > dispatch_row_bytes) {
    // Larger outputs (fp8 rows in, bf16 out) are written over the received rows too, last row first: output
    // row i starts at i x combine bytes, past the end of every input row before i (i x dispatch bytes), and row
    // i itself is decoded before its output overwrites it. The rank then holds one buffer of outputs, not the
    // received rows and the outputs side by side; the buffer was sized for them (take_spare_rows_sized).
    std::vector<uint8_t> buf;
    buf.swap(h.recv_wire);
    resize_huge(buf, static_cast<size_t>(n) * combine_row_bytes);
    std::vector<float> row(H), part(H);
    std::vector<uint8_t> enc;
    for (int i = n - 1; i >= 0; --i) {
      dispatch_codec->decode(buf.data() + static_cast<size_t>(i) * dispatch_row_bytes, dispatch_row_bytes, 1, H,
                             row.data());
      std::fill(part.begin(), part.end(), 0.f);
      fn(i, row.data(), part.data());
      enc.clear();
      combine_codec->encode(part.data(), 1, H, enc);
      std::memcpy(buf.data() + static_cast<size_t>(i) * combine_row_bytes, enc.data(), combine_row_bytes);
    }
    h.expert_out = std::move(buf);
    return;
  }
  std::vector<uint8_t> out;
  if (in_place)
    out.swap(h.recv_wire);
  else
    reserve_huge(out, static_cast<size_t>(n) * combine_row_bytes);
  const std::vector<uint8_t>& in = in_place ? out : h.recv_wire;
  std::vector<float> row(H), part(H);
  std::vector<uint8_t> enc;
  for (int i = 0; i < n; ++i) {
    dispatch_codec->decode(in.data() + static_cast<size_t>(i) * dispatch_row_bytes, dispatch_row_bytes, 1, H,
                           row.data());
    std::fill(part.begin(), part.end(), 0.f);
    fn(i, row.data(), part.data());
    if (in_place) {
      enc.clear();
      combine_codec->encode(part.data(), 1, H, enc);
      std::memcpy(out.data() + static_cast<size_t>(i) * combine_row_bytes, enc.data(), combine_row_bytes);
    } else {
      combine_codec->encode(part.data(), 1, H, out);
    }
  }
  std::vector<uint8_t>().swap(h.recv_wire);
  h.expert_out = std::move(out);
}

void EngineContext::map_wire_rows(Handle& h, const std::function<void(int, const uint8_t*, uint8_t*)>& fn) {
  if (!can_map_rows(h)) throw EplabError("engine: map_wire_rows needs rows in a row-separable wire format");
  const int n = h.recv.size();
  if (dispatch_row_bytes == combine_row_bytes) {  // row i in, row i out, the same bytes
    for (int i = 0; i < n; ++i) {
      uint8_t* row = h.recv_wire.data() + static_cast<size_t>(i) * dispatch_row_bytes;
      fn(i, row, row);
    }
    h.expert_out.swap(h.recv_wire);
    std::vector<uint8_t>().swap(h.recv_wire);
    return;
  }
  std::vector<uint8_t> out;
  resize_huge(out, static_cast<size_t>(n) * combine_row_bytes);
  for (int i = 0; i < n; ++i)
    fn(i, h.recv_wire.data() + static_cast<size_t>(i) * dispatch_row_bytes,
       out.data() + static_cast<size_t>(i) * combine_row_bytes);
  std::vector<uint8_t>().swap(h.recv_wire);
  h.expert_out = std::move(out);
}

size_t EngineContext::block_capacity(int tokens, int sels, const Codec& codec) const {
  return block_meta_bytes(tokens, sels) + codec.max_encoded_size(tokens, hidden());
}

size_t EngineContext::rows_capacity(int n, const Codec& codec) const {
  return phantom() ? 0 : codec.max_encoded_size(n, hidden());
}

void EngineContext::check_block(const TokenBlock& b, size_t off, uint64_t payload, size_t real_bytes,
                                const std::string& what) const {
  for (int32_t slot : b.sel_slot)
    if (slot < 0 || slot >= placement.num_slots())
      throw FabricError(what + ": selection for slot " + std::to_string(slot) + ", outside 0.." +
                        std::to_string(placement.num_slots() - 1));
  if (off + payload != real_bytes)
    throw FabricError(what + ": block announces " + std::to_string(payload) + " payload bytes, message carries " +
                      std::to_string(real_bytes - off));
}

void EngineContext::read_block_message(const std::vector<uint8_t>& msg, size_t real_bytes, TokenBlock& b,
                                       std::vector<float>& rows_out, Codec& codec, uint64_t stream, int peer) {
  const std::string what =
      "rank " + std::to_string(rank()) + ", message from peer " + std::to_string(peer) + " in phase " + fabric.phase();
  uint64_t payload = 0;
  const size_t off = unpack_block(msg.data(), real_bytes, b, payload, what.c_str());
  check_block(b, off, payload, real_bytes, what);
  rows_out.resize(static_cast<size_t>(b.size()) * hidden());
  try {
    codec.decode(msg.data() + off, payload, b.size(), hidden(), rows_out.data(), stream);
  } catch (const std::exception& e) {
    throw FabricError(what + ": " + e.what());
  }
}

void EngineContext::read_rows_message(const uint8_t* msg, size_t real_bytes, int n, float* rows_out, Codec& codec,
                                      uint64_t stream, int peer) {
  if (phantom()) return;
  try {
    codec.decode(msg, real_bytes, n, hidden(), rows_out, stream);
  } catch (const std::exception& e) {
    throw FabricError("rank " + std::to_string(rank()) + ", message from peer " + std::to_string(peer) + " in phase " +
                      fabric.phase() + ": " + e.what());
  }
}

int EngineContext::add_block_message(Handle& h, const std::vector<uint8_t>& msg, size_t real_bytes, uint32_t tokens,
                                     uint32_t sels, Codec& codec, uint64_t stream, int peer, TokenBlock& b,
                                     std::vector<float>& rows) {
  if (phantom()) {
    BlockSummary s;
    read_summary_message(msg, real_bytes, s, tokens, sels, peer);
    add_summary(h, s);
    return static_cast<int>(s.tokens);
  }
  if (dispatch_row_bytes > 0 && &codec == dispatch_codec.get()) {  // rows stay in the wire format
    const uint8_t* rows_at = read_wire_block(msg.data(), real_bytes, b, tokens, sels, peer, h.step, h.layer);
    h.recv_wire.insert(h.recv_wire.end(), rows_at, rows_at + static_cast<size_t>(b.size()) * dispatch_row_bytes);
    h.recv.append(b);
    return b.size();
  }
  read_block_message(msg, real_bytes, b, rows, codec, stream, peer);
  check_counts(b, tokens, sels, message_context(peer, h.step, h.layer));
  h.recv.append(b);
  h.recv_x.insert(h.recv_x.end(), rows.begin(), rows.end());
  return b.size();
}

std::string EngineContext::message_context(int peer, int step, int layer) const {
  return "rank " + std::to_string(rank()) + ", message from peer " + std::to_string(peer) + " in phase " +
         fabric.phase() + " (step " + std::to_string(step) + ", layer " + std::to_string(layer) + ")";
}

const uint8_t* EngineContext::read_wire_block(const uint8_t* msg, size_t real_bytes, TokenBlock& b, uint32_t tokens,
                                              uint32_t sels, int peer, int step, int layer) const {
  const std::string what = message_context(peer, step, layer);
  uint64_t payload = 0;
  const size_t off = unpack_block(msg, real_bytes, b, payload, what.c_str());
  check_block(b, off, payload, real_bytes, what);
  check_counts(b, tokens, sels, what);
  if (payload != static_cast<uint64_t>(b.size()) * dispatch_row_bytes)
    throw FabricError(what + ": " + std::to_string(b.size()) + " rows in " + std::to_string(payload) +
                      " payload bytes, the codec's rows take " + std::to_string(dispatch_row_bytes));
  return msg + off;
}

void EngineContext::read_lent_wire_block(const PeerConsume& m, TokenBlock& b, uint32_t tokens, uint32_t sels, int step,
                                         int layer, std::vector<const uint8_t*>& rows,
                                         std::vector<PulledRow>& pulled) const {
  const size_t rb = dispatch_row_bytes;
  pulled.clear();
  if (m.remote) {  // in its sender's process: the metadata read here, the rows named where they lie
    const std::string what = message_context(m.peer, step, layer);
    const size_t meta = block_meta_bytes(static_cast<int>(tokens), static_cast<int>(sels));
    if (m.bytes < meta)
      throw FabricError(what + ": " + std::to_string(m.bytes) + " bytes, short of the " + std::to_string(meta) +
                        " bytes of metadata of " + std::to_string(tokens) + " tokens");
    std::vector<uint8_t> head(meta);
    m.remote->read(0, meta, head.data());
    read_split_meta(head.data(), meta, m.bytes - meta, tokens, sels, what, b);
    rows.assign(static_cast<size_t>(b.size()), nullptr);
    for (size_t j = 0; j < rows.size(); ++j) pulled.push_back({m.remote, meta + j * rb});
    return;
  }
  if (m.gather.count == 0) {  // contiguous: the rows behind the metadata
    const uint8_t* at = read_wire_block(m.data, m.bytes, b, tokens, sels, m.peer, step, layer);
    rows.resize(static_cast<size_t>(b.size()));
    for (size_t j = 0; j < rows.size(); ++j) rows[j] = at + j * rb;
    return;
  }
  // Gathered: the metadata fills the bytes at m.data, as a split block's does, and the rows lie apart.
  const std::string what = message_context(m.peer, step, layer);
  if (m.gather.row_bytes != rb)
    throw FabricError(what + ": gathered rows of " + std::to_string(m.gather.row_bytes) +
                      " bytes, the codec's rows take " + std::to_string(rb));
  read_split_meta(m.data, m.bytes - m.gather.bytes(), m.gather.bytes(), tokens, sels, what, b);
  rows.assign(m.gather.rows, m.gather.rows + m.gather.count);
}

void EngineContext::check_counts(const TokenBlock& b, uint32_t tokens, uint32_t sels, const std::string& what) const {
  if (static_cast<uint32_t>(b.size()) != tokens || static_cast<uint32_t>(b.num_sels()) != sels)
    throw FabricError(what + ": holds " + std::to_string(b.size()) + " tokens / " + std::to_string(b.num_sels()) +
                      " selections, notify announced " + std::to_string(tokens) + " / " + std::to_string(sels));
}

void EngineContext::check_rows_bytes(int peer, size_t bytes, size_t rows, size_t row_bytes) const {
  if (bytes != rows * row_bytes)
    throw FabricError("rank " + std::to_string(rank()) + ", message from peer " + std::to_string(peer) + " in phase " +
                      fabric.phase() + ": " + std::to_string(bytes) + " bytes for " + std::to_string(rows) +
                      " rows of " + std::to_string(row_bytes));
}

void EngineContext::add_rows_message(const uint8_t* msg, size_t real_bytes, const std::vector<int32_t>& ids, float* out,
                                     Codec& codec, uint64_t stream, int peer, std::vector<float>& scratch) {
  const int H = hidden();
  const size_t rb = &codec == combine_codec.get() ? combine_row_bytes : 0;
  if (rb > 0 && !phantom()) {  // one row decoded at a time: no message-sized fp32 copy
    check_rows_bytes(peer, real_bytes, ids.size(), rb);
    if (combine_bf16) {  // decode and add (or write) in one pass
      for (size_t j = 0; j < ids.size(); ++j) {
        float* o = out + static_cast<size_t>(ids[j]) * H;
        if (first_of_sum(ids[j]))
          codecs::bf16_decode_first_kernel(msg + j * rb, H, o);
        else
          codecs::bf16_decode_add_kernel(msg + j * rb, H, o);
      }
      return;
    }
    scratch.resize(H);
    for (size_t j = 0; j < ids.size(); ++j) {
      codec.decode(msg + j * rb, rb, 1, H, scratch.data(), stream);
      add_row(out + static_cast<size_t>(ids[j]) * H, scratch.data(), first_of_sum(ids[j]));
    }
    return;
  }
  scratch.resize(ids.size() * H);
  read_rows_message(msg, real_bytes, static_cast<int>(ids.size()), scratch.data(), codec, stream, peer);
  for (size_t j = 0; j < ids.size(); ++j)
    add_row(out + static_cast<size_t>(ids[j]) * H, &scratch[j * H], first_of_sum(ids[j]));
}

void EngineContext::sum_rows(std::span<const RowsIn> ins, int tokens, int first, int end, float* out) {
  const size_t H = static_cast<size_t>(hidden()), rb = combine_row_bytes;
  const bool to_bf16 = out_bf16 != nullptr;
  if (rb == 0 || phantom() || (to_bf16 ? !combine_bf16 : out == nullptr && first < end))
    throw EplabError("engine: sum_rows needs real rows in a combine codec's row format, and a bf16 output only "
                     "with the bf16 combine codec (rank " + std::to_string(rank()) + ")");
  if (first < 0 || first > end || end > tokens)
    throw EplabError("engine: sum_rows over tokens [" + std::to_string(first) + ", " + std::to_string(end) +
                     ") of " + std::to_string(tokens));
  // Each token's rows, in the order of `ins`: (input, row) pairs grouped by token (a counting sort).
  const int n = end - first;
  std::vector<uint32_t> begin(static_cast<size_t>(n) + 1, 0);
  for (const RowsIn& in : ins) {
    check_rows_bytes(in.peer, in.bytes, in.ids->size(), rb);
    for (int32_t t : *in.ids) {
      if (t < first || t >= end)
        throw EplabError("engine: rank " + std::to_string(rank()) + ": an answer for token " + std::to_string(t) +
                         " in a sum over tokens [" + std::to_string(first) + ", " + std::to_string(end) + ")");
      ++begin[static_cast<size_t>(t - first) + 1];
    }
  }
  for (int t = 0; t < n; ++t) begin[t + 1] += begin[t];
  // Inputs read in parts (RowsIn::remote) are read a stretch of tokens at a time (RowStretches); their ids ascend
  // (rows go in token order), so a stretch's rows of one input are consecutive. One whose ids do not ascend is
  // read whole first.
  RowStretches in_rows(staged_rows, rb);
  for (size_t i = 0; i < ins.size(); ++i) {
    in_rows.add(ins[i].data, ins[i].remote);
    if (ins[i].remote && !std::is_sorted(ins[i].ids->begin(), ins[i].ids->end()))
      in_rows.read_whole(i, ins[i].ids->size());
  }
  const bool pulls = in_rows.pulls();
  std::vector<const uint8_t*> rows(begin[n]);
  std::vector<uint32_t> from(pulls || !combine_bf16 ? begin[n] : 0);  // the index into ins of each row
  std::vector<uint32_t> row(pulls ? begin[n] : 0);                    // and its row there
  std::vector<uint32_t> at(begin.begin(), begin.end() - 1);
  for (size_t i = 0; i < ins.size(); ++i)
    for (size_t j = 0; j < ins[i].ids->size(); ++j) {
      const uint32_t k = at[(*ins[i].ids)[j] - first]++;
      if (!in_rows.pulled(i)) rows[k] = in_rows.row(i, j);  // a pulled row's place is set with its stretch
      if (!from.empty()) from[k] = static_cast<uint32_t>(i);
      if (pulls) row[k] = static_cast<uint32_t>(j);
    }
  std::vector<size_t> end_row(ins.size(), 0);  // per pulled input: its rows up to the stretch's end
  std::vector<float> acc(to_bf16 ? H : 0), dec(combine_bf16 ? 0 : H);
  for (int t = 0, stretch_end = 0; t < n; ++t) {
    if (pulls && t == stretch_end) {  // the next stretch: as many tokens as fit, at least one
      stretch_end = in_rows.stretch_end(begin.data(), t, n);
      for (size_t i = 0; i < ins.size(); ++i)
        if (in_rows.pulled(i))
          while (end_row[i] < ins[i].ids->size() && (*ins[i].ids)[end_row[i]] < first + stretch_end) ++end_row[i];
      in_rows.advance(end_row);
      for (uint32_t k = begin[t]; k < begin[stretch_end]; ++k)
        if (in_rows.pulled(from[k])) rows[k] = in_rows.row(from[k], row[k]);
    }
    const size_t token = static_cast<size_t>(first + t);
    if (begin[t] == begin[t + 1]) {
      if (to_bf16)
        std::memset(out_bf16 + token * H, 0, H * 2);
      else
        std::memset(out + token * H, 0, H * sizeof(float));
      continue;
    }
    if (to_bf16) {  // summed and rounded in one pass over the last four rows (acc holds any before them)
      codecs::bf16_sum_rows_encode_kernel(&rows[begin[t]], begin[t + 1] - begin[t], H, acc.data(),
                                          reinterpret_cast<uint8_t*>(out_bf16 + token * H));
      continue;
    }
    float* o = out + token * H;
    if (combine_bf16) {
      codecs::bf16_sum_rows_kernel(&rows[begin[t]], begin[t + 1] - begin[t], H, o, true);
    } else {
      for (uint32_t k = begin[t]; k < begin[t + 1]; ++k) {
        combine_codec->decode(rows[k], rb, 1, static_cast<int>(H), dec.data(), ins[from[k]].stream);
        add_row(o, dec.data(), k == begin[t]);
      }
    }
  }
}

void RowStretches::add(const uint8_t* data, const RemoteBytes* remote, size_t offset) {
  in_.push_back(Input{data, remote, offset});
  pulled_ += remote != nullptr;
}

size_t RowStretches::stretch_bytes() const {
  return std::clamp<size_t>((size_t{256} << 10) * pulled_, size_t{1} << 20, size_t{8} << 20);
}

void RowStretches::advance(std::span<const size_t> end) {
  size_t bytes = 0;
  for (size_t i = 0; i < in_.size(); ++i)
    if (in_[i].remote && end[i] > in_[i].next) bytes += (end[i] - in_[i].next) * rb_;
  if (buf_.size() < bytes) resize_huge(buf_, bytes);
  size_t used = 0;
  for (size_t i = 0; i < in_.size(); ++i) {
    Input& in = in_[i];
    if (!in.remote || end[i] <= in.next) continue;
    const size_t n = (end[i] - in.next) * rb_;
    in.remote->read(in.offset + in.next * rb_, n, buf_.data() + used);
    in.lo = in.next, in.at = used, in.next = end[i];
    used += n;
  }
}

void RowStretches::read_whole(size_t i, size_t rows) {
  Input& in = in_[i];
  if (!in.remote) return;
  std::vector<uint8_t>& w = whole_.emplace_back(rows * rb_);
  in.remote->read(in.offset, w.size(), w.data());
  in.data = w.data(), in.remote = nullptr;
  --pulled_;
}

bool EngineContext::first_of_sum(int32_t token) {
  if (summed.empty() || summed[token]) return false;
  summed[token] = 1;
  return true;
}

void EngineContext::add_row(float* o, const float* p, bool first) const {
  const int H = hidden();
  if (first)
    for (int e = 0; e < H; ++e) o[e] = 0.0f + p[e];
  else
    for (int e = 0; e < H; ++e) o[e] += p[e];
}

void EngineContext::begin_sum(int tokens) { summed.assign(static_cast<size_t>(tokens), 0); }

void EngineContext::end_sum(float* out) {
  const size_t H = static_cast<size_t>(hidden());
  for (size_t t = 0; t < summed.size(); ++t)
    if (!summed[t]) std::memset(out + t * H, 0, H * sizeof(float));
  summed.clear();
}

namespace {

constexpr uint32_t kSummaryMagic = 0x4D555345;  // "ESUM"

struct SummaryHeader {
  uint32_t magic;
  uint32_t tokens;
  uint32_t sels;
  uint32_t slots;
};

}  // namespace

void EngineContext::BlockSummary::assign(uint32_t t, uint32_t s, const int32_t* per_slot, int n, int first_slot) {
  tokens = t;
  sels = s;
  slots.clear();
  for (int i = 0; i < n; ++i)
    if (per_slot[i] != 0) slots.push_back({first_slot + i, per_slot[i]});
}

EngineContext::Message EngineContext::make_summary_message(const BlockSummary& s, const Codec& codec,
                                                           size_t wire_bytes) const {
  Message m;
  const SummaryHeader h{kSummaryMagic, s.tokens, s.sels, static_cast<uint32_t>(s.slots.size())};
  m.bytes.resize(sizeof h + s.slots.size() * sizeof(SlotSels));
  std::memcpy(m.bytes.data(), &h, sizeof h);
  if (!s.slots.empty()) std::memcpy(m.bytes.data() + sizeof h, s.slots.data(), s.slots.size() * sizeof(SlotSels));
  // At most one entry per selection, so the summary never outgrows the metadata it stands for.
  const size_t full = wire_bytes > 0 ? wire_bytes
                                     : block_meta_bytes(static_cast<int>(s.tokens), static_cast<int>(s.sels)) +
                                           codec.encoded_size(static_cast<int>(s.tokens), hidden());
  if (s.slots.size() > s.sels || m.bytes.size() > full)
    throw EplabError("engine: block summary of " + std::to_string(s.slots.size()) + " slots for " +
                     std::to_string(s.sels) + " selections");
  m.phantom_bytes = full - m.bytes.size();
  return m;
}

size_t EngineContext::summary_capacity(uint32_t sels, int max_slots) {
  return sizeof(SummaryHeader) + std::min<size_t>(sels, static_cast<size_t>(std::max(max_slots, 0))) * sizeof(SlotSels);
}

void EngineContext::read_summary_message(const std::vector<uint8_t>& msg, size_t real_bytes, BlockSummary& s,
                                         uint32_t tokens, uint32_t sels, int peer) const {
  const auto fail = [&](const std::string& why) {
    throw FabricError("rank " + std::to_string(rank()) + ", summary from peer " + std::to_string(peer) + " in phase " +
                      fabric.phase() + ": " + why);
  };
  SummaryHeader h{};
  if (real_bytes < sizeof h || real_bytes > msg.size()) fail("truncated (" + std::to_string(real_bytes) + " bytes)");
  std::memcpy(&h, msg.data(), sizeof h);
  if (h.magic != kSummaryMagic) fail("bad magic");
  if (real_bytes != sizeof h + static_cast<size_t>(h.slots) * sizeof(SlotSels))
    fail("announces " + std::to_string(h.slots) + " slots in " + std::to_string(real_bytes) + " bytes");
  if (h.tokens != tokens || h.sels != sels)
    fail("holds " + std::to_string(h.tokens) + " tokens / " + std::to_string(h.sels) +
         " selections, notify announced " + std::to_string(tokens) + " / " + std::to_string(sels));
  s.tokens = h.tokens;
  s.sels = h.sels;
  s.slots.resize(h.slots);
  if (h.slots) std::memcpy(s.slots.data(), msg.data() + sizeof h, h.slots * sizeof(SlotSels));
  int64_t total = 0;
  for (const SlotSels& e : s.slots) {
    if (e.slot < 0 || e.slot >= placement.num_slots() || e.sels <= 0) fail("bad slot entry");
    total += e.sels;
  }
  if (total != h.sels) fail("slot counts sum to " + std::to_string(total) + ", not " + std::to_string(h.sels));
}

void EngineContext::add_summary(Handle& h, const BlockSummary& s) const {
  const int spr = placement.slots_per_rank();
  if (h.slot_sels.empty()) h.slot_sels.assign(spr, 0);
  h.rows += static_cast<int>(s.tokens);
  for (const SlotSels& e : s.slots) {
    if (placement.rank_of_slot(e.slot) != rank())
      throw FabricError("rank " + std::to_string(rank()) + ": received selections for slot " + std::to_string(e.slot) +
                        ", held by rank " + std::to_string(placement.rank_of_slot(e.slot)));
    h.slot_sels[e.slot % spr] += e.sels;
  }
}

double EngineContext::bytes_per_elem(const Codec& codec) const {
  return static_cast<double>(codec.encoded_size(1, hidden())) / hidden();
}

EpEngine::EpEngine(Fabric& fabric, const MoeShape& shape, const Placement& placement, EngineOptions opts)
    : opts_(std::move(opts)), ctx_(fabric, shape, placement, opts_), algo_(create_algorithm(opts_.algorithm)) {
  if (placement.num_ranks() != fabric.size())
    throw EplabError("engine: placement covers " + std::to_string(placement.num_ranks()) + " ranks, fabric has " +
                     std::to_string(fabric.size()));
}

double Algorithm::logical_bytes(const EngineContext& c, const Handle& h, const Codec& codec) const {
  return static_cast<double>(h.rows) * c.hidden() * c.bytes_per_elem(codec);
}

double Algorithm::scaleout_logical_bytes(const EngineContext& c, const Handle& h, const Codec& codec) const {
  return static_cast<double>(h.token_node_pairs) * c.hidden() * c.bytes_per_elem(codec);
}

namespace {

// A stamp per node, updated without branches: this runs once per selection of every rank and layer.
long count_token_node_pairs(const EngineContext& c, const DispatchArgs& a) {
  std::vector<int> last(c.topo.nodes(), -1);
  const EngineContext::SlotHome* home = c.slot_home.data();
  long pairs = 0;
  for (int t = 0; t < a.num_tokens; ++t) {
    const int32_t* ts = a.slots + static_cast<size_t>(t) * a.topk;
    for (int k = 0; k < a.topk; ++k) {
      const int32_t s = ts[k];
      if (s < 0) continue;
      const int n = home[s].node;
      pairs += last[n] != t;
      last[n] = t;
    }
  }
  return pairs;
}

}  // namespace

Handle EpEngine::dispatch(const DispatchArgs& a) {
  if (!ctx_.phantom() && a.x == nullptr && a.x_rows == nullptr && a.num_tokens > 0)
    throw EplabError("engine: dispatch without activations needs phantom mode");
  if (a.placement && (a.placement->num_ranks() != ctx_.placement.num_ranks() ||
                      a.placement->slots_per_rank() != ctx_.placement.slots_per_rank()))
    throw EplabError("engine: rank " + std::to_string(ctx_.rank()) + ", step " + std::to_string(a.step) + ", layer " +
                     std::to_string(a.layer) + ": dispatch placement has " + std::to_string(a.placement->num_ranks()) +
                     " ranks x " + std::to_string(a.placement->slots_per_rank()) + " slots, the engine's " +
                     std::to_string(ctx_.placement.num_ranks()) + " x " +
                     std::to_string(ctx_.placement.slots_per_rank()));
  const int32_t num_slots = ctx_.placement.num_slots();
  const size_t sels = static_cast<size_t>(a.num_tokens) * a.topk;
  // First an OR of compares the compiler vectorizes; the loop that names the offending token runs only when
  // there is one.
  int32_t bad = 0;
  for (size_t i = 0; i < sels; ++i) bad |= (a.slots[i] < -1) | (a.slots[i] >= num_slots);
  for (size_t i = 0; i < sels && bad; ++i)
    if (a.slots[i] < -1 || a.slots[i] >= num_slots)
      throw EplabError("engine: rank " + std::to_string(ctx_.rank()) + ", step " + std::to_string(a.step) + ", layer " +
                       std::to_string(a.layer) + ": token " + std::to_string(i / a.topk) + " selects slot " +
                       std::to_string(a.slots[i]) + ", outside -1.." + std::to_string(num_slots - 1));
  ctx_.stats.dispatch.codec_s += charge_codec(ctx_.fabric, *ctx_.dispatch_codec, a.num_tokens, ctx_.hidden(), true);
  Handle h = algo_->dispatch(ctx_, a);
  if (h.slot_sels.empty()) {  // the algorithm delivered per-row metadata: count from it
    const int spr = ctx_.placement.slots_per_rank();
    h.rows = h.recv.size();
    h.slot_sels.assign(spr, 0);
    for (int32_t s : h.recv.sel_slot) ++h.slot_sels[s % spr];
  }
  ctx_.stats.dispatch.codec_s += charge_codec(ctx_.fabric, *ctx_.dispatch_codec, h.rows, ctx_.hidden(), false);
  h.placement = a.placement ? a.placement : &ctx_.placement;
  if (h.token_node_pairs < 0) h.token_node_pairs = count_token_node_pairs(ctx_, a);
  ctx_.stats.dispatch.logical_bytes += algo_->logical_bytes(ctx_, h, *ctx_.dispatch_codec);
  ctx_.stats.dispatch.scaleout_logical_bytes += algo_->scaleout_logical_bytes(ctx_, h, *ctx_.dispatch_codec);
  return h;
}

void EpEngine::combine(Handle& h, const float* partials, float* out) {
  ctx_.stats.combine.codec_s += charge_codec(ctx_.fabric, *ctx_.combine_codec, h.rows, ctx_.hidden(), true);
  algo_->combine(ctx_, h, partials, out);
  if (h.expert_out.capacity() > ctx_.spare_rows.capacity()) ctx_.spare_rows.swap(h.expert_out);
  ctx_.stats.combine.codec_s += charge_codec(ctx_.fabric, *ctx_.combine_codec, h.num_tokens, ctx_.hidden(), false);
  ctx_.stats.combine.logical_bytes += algo_->logical_bytes(ctx_, h, *ctx_.combine_codec);
  ctx_.stats.combine.scaleout_logical_bytes += algo_->scaleout_logical_bytes(ctx_, h, *ctx_.combine_codec);
}

void EpEngine::combine_bf16(Handle& h, const float* partials, uint16_t* out) {
  if (ctx_.phantom()) return combine(h, partials, nullptr);
  if (algo_->writes_bf16(ctx_)) {
    ctx_.out_bf16 = out;
    const std::shared_ptr<void> reset(nullptr, [this](void*) { ctx_.out_bf16 = nullptr; });
    combine(h, partials, nullptr);
    return;
  }
  const size_t n = static_cast<size_t>(h.num_tokens) * ctx_.hidden();
  std::vector<float> sum(n);
  combine(h, partials, sum.data());
  codecs::bf16_encode_kernel(sum.data(), n, reinterpret_cast<uint8_t*>(out));
}

}  // namespace eplab
