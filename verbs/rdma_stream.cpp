#include "verbs/rdma_stream.hpp"

#include <algorithm>
#include <cstring>

#include "engine/error.hpp"

namespace eplab::verbs {

void RingConfig::check() const {
  if (slots < 1 || slots > (1u << 16))
    throw FabricError("verbs ring: " + std::to_string(slots) + " slots; it needs 1 to 65536");
  if (slot_bytes <= sizeof(ChunkHeader) || slot_bytes > (1u << 30))
    throw FabricError("verbs ring: slots of " + std::to_string(slot_bytes) + " bytes; a slot holds a " +
                      std::to_string(sizeof(ChunkHeader)) + "-byte chunk header and at least one payload byte, " +
                      "at most 1 GiB");
  if (credit_batch < 1 || credit_batch > slots)
    throw FabricError("verbs ring: credits returned in batches of " + std::to_string(credit_batch) +
                      "; a batch must be 1 to the slot count (" + std::to_string(slots) +
                      "), or a sender could wait for credits the receiver never returns");
}

uint32_t RingConfig::payload_bytes() const { return slot_bytes - static_cast<uint32_t>(sizeof(ChunkHeader)); }

namespace {
uint32_t chunks_for(uint64_t bytes, uint32_t payload) {
  const uint64_t n = std::max<uint64_t>(1, (bytes + payload - 1) / payload);
  if (n > UINT32_MAX) throw FabricError("verbs: a message of " + std::to_string(bytes) + " bytes has too many chunks");
  return static_cast<uint32_t>(n);
}
}  // namespace

RdmaSender::RdmaSender(RingConfig cfg, int peer) : cfg_(cfg), peer_(peer) {
  cfg_.check();
  credits_ = cfg_.slots;
  for (uint32_t s = cfg_.slots; s-- > 0;) free_staging_.push_back(s);
}

uint64_t RdmaSender::enqueue(uint64_t tag, const void* data, size_t bytes, size_t total_bytes) {
  if (total_bytes < bytes)
    throw FabricError("verbs send to rank " + std::to_string(peer_) + ": total bytes " + std::to_string(total_bytes) +
                      " below the real bytes " + std::to_string(bytes));
  if (bytes > 0 && data == nullptr)
    throw FabricError("verbs send to rank " + std::to_string(peer_) + ": " + std::to_string(bytes) +
                      " bytes from a null buffer");
  Pending p{next_msg_id_++,
            next_seq_++,
            tag,
            static_cast<const uint8_t*>(data),
            bytes,
            total_bytes,
            chunks_for(bytes, cfg_.payload_bytes())};
  queue_.push_back(p);
  return p.id;
}

size_t RdmaSender::queued_chunks() const {
  size_t n = 0;
  for (const Pending& p : queue_) n += p.chunks - p.next_chunk;
  return n;
}

std::vector<WriteOp> RdmaSender::ready(uint8_t* staging) {
  std::vector<WriteOp> out;
  const uint32_t payload = cfg_.payload_bytes();
  // Chunks go out in message order: a later message never overtakes the unstaged rest of an earlier one.
  for (Pending& p : queue_) {
    while (p.next_chunk < p.chunks) {
      if (credits_ == 0 || free_staging_.empty()) return out;
      const uint32_t s = free_staging_.back();
      free_staging_.pop_back();
      uint8_t* slot = staging + static_cast<size_t>(s) * cfg_.slot_bytes;
      const uint64_t off = static_cast<uint64_t>(p.next_chunk) * payload;
      const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(payload, p.bytes - std::min(off, p.bytes)));
      const ChunkHeader h{kChunkMagic, p.seq, p.tag, p.bytes, p.total_bytes, p.next_chunk, p.chunks, n, 0};
      std::memcpy(slot, &h, sizeof h);
      if (n) std::memcpy(slot + sizeof h, p.data + off, n);
      const uint64_t wr = next_wr_id_++;
      out.push_back({wr, next_remote_slot_, imm_of_slot(next_remote_slot_), slot, static_cast<uint32_t>(sizeof h) + n});
      in_flight_.push_back({wr, p.id, s});
      next_remote_slot_ = (next_remote_slot_ + 1) % cfg_.slots;
      --credits_;
      ++unreturned_;
      ++p.next_chunk;
    }
  }
  return out;
}

void RdmaSender::on_write_complete(uint64_t wr_id) {
  auto f = std::find_if(in_flight_.begin(), in_flight_.end(), [&](const Flight& x) { return x.wr_id == wr_id; });
  if (f == in_flight_.end())
    throw FabricError("verbs send to rank " + std::to_string(peer_) + ": completion for work request " +
                      std::to_string(wr_id) + ", which is not in flight");
  const Flight done = *f;
  in_flight_.erase(f);
  free_staging_.push_back(done.staging_slot);
  auto m = std::find_if(queue_.begin(), queue_.end(), [&](const Pending& p) { return p.id == done.msg_id; });
  if (++m->done_chunks == m->chunks) {
    completed_.push_back(m->id);
    queue_.erase(m);
  }
}

void RdmaSender::add_credits(uint32_t n) {
  if (n > unreturned_)
    throw FabricError("verbs send to rank " + std::to_string(peer_) + ": " + std::to_string(n) +
                      " credits returned, more than the ring's " + std::to_string(cfg_.slots) +
                      " slots allow (" + std::to_string(unreturned_) + " slots written and not yet returned)");
  unreturned_ -= n;
  credits_ += n;
}

std::vector<uint64_t> RdmaSender::take_completed() {
  std::vector<uint64_t> out;
  out.swap(completed_);
  return out;
}

RdmaReceiver::RdmaReceiver(RingConfig cfg, int peer) : cfg_(cfg), peer_(peer) { cfg_.check(); }

void RdmaReceiver::fail(uint32_t slot, const std::string& what) const {
  throw FabricError("verbs receive from rank " + std::to_string(peer_) + ", ring slot " + std::to_string(slot) + ": " +
                    what);
}

void RdmaReceiver::on_write_imm(uint32_t imm, uint32_t bytes, const uint8_t* ring, std::vector<Message>& out) {
  const uint32_t slot = imm;
  if (slot != next_slot_)
    fail(slot, "written out of order (the next write must land in slot " + std::to_string(next_slot_) + ")");
  if (bytes < sizeof(ChunkHeader) || bytes > cfg_.slot_bytes)
    fail(slot, std::to_string(bytes) + " bytes written; a chunk is " + std::to_string(sizeof(ChunkHeader)) + " to " +
                   std::to_string(cfg_.slot_bytes) + " bytes");
  const uint8_t* p = ring + static_cast<size_t>(slot) * cfg_.slot_bytes;
  ChunkHeader h;
  std::memcpy(&h, p, sizeof h);
  if (h.magic != kChunkMagic) fail(slot, "not a chunk header (magic " + std::to_string(h.magic) + ")");
  if (h.payload != bytes - sizeof h)
    fail(slot, "header says " + std::to_string(h.payload) + " payload bytes, the write carried " +
                   std::to_string(bytes - sizeof h));
  if (h.msg_bytes > h.total_bytes)
    fail(slot, "message of " + std::to_string(h.msg_bytes) + " real bytes but " + std::to_string(h.total_bytes) +
                   " in total");
  if (h.chunks != chunks_for(h.msg_bytes, cfg_.payload_bytes()))
    fail(slot, std::to_string(h.chunks) + " chunks for a message of " + std::to_string(h.msg_bytes) + " bytes");
  if (!assembling_) {
    if (h.chunk != 0 || h.seq != next_seq_)
      fail(slot, "chunk " + std::to_string(h.chunk) + " of message " + std::to_string(h.seq) + " where message " +
                     std::to_string(next_seq_) + " must begin");
    msg_ = Message{h.tag, h.total_bytes, {}};
    msg_bytes_ = h.msg_bytes;
    chunk_ = 0;
    chunks_ = h.chunks;
    assembling_ = true;
  } else if (h.seq != next_seq_ || h.chunk != chunk_ || h.tag != msg_.tag || h.chunks != chunks_ ||
             h.msg_bytes != msg_bytes_ || h.total_bytes != msg_.total_bytes) {
    fail(slot, "chunk " + std::to_string(h.chunk) + " of message " + std::to_string(h.seq) + " where chunk " +
                   std::to_string(chunk_) + " of message " + std::to_string(next_seq_) + " must come");
  }
  const uint64_t expect = std::min<uint64_t>(cfg_.payload_bytes(), h.msg_bytes - msg_.data.size());
  if (h.payload != expect)
    fail(slot, std::to_string(h.payload) + " payload bytes where " + std::to_string(expect) + " remain in the chunk");
  msg_.data.insert(msg_.data.end(), p + sizeof h, p + sizeof h + h.payload);
  next_slot_ = (next_slot_ + 1) % cfg_.slots;
  ++freed_;  // the payload is copied out: the slot may be written again
  if (++chunk_ == chunks_) {
    out.push_back(std::move(msg_));
    msg_ = Message{};
    assembling_ = false;
    ++next_seq_;
  }
}

uint32_t RdmaReceiver::take_credit_return() {
  const uint32_t n = freed_ - freed_ % cfg_.credit_batch;
  freed_ -= n;
  return n;
}

}  // namespace eplab::verbs
