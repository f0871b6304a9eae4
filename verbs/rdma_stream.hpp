// The device-independent half of the ibverbs transport: one direction of a reliable-connected (RC) queue pair
// carrying eplab messages as chunks written with RDMA WRITE WITH IMMEDIATE into a ring of receive slots in the
// peer's registered memory, with credits so a sender never overwrites a slot the receiver has not read.
// Framing, chunking, credit accounting and completion handling live here, free of verbs calls, so they run and
// are tested on any machine; verbs/verbs_device.* posts the writes this logic asks for (docs/architecture.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace eplab::verbs {

// Geometry of one direction's ring, the same on both sides (exchanged at connection set-up).
struct RingConfig {
  uint32_t slots = 64;             // receive slots in the ring, and credits a sender starts with
  uint32_t slot_bytes = 64 << 10;  // one chunk: its header and payload
  uint32_t credit_batch = 16;      // the receiver returns credits once this many slots are free again
  void check() const;              // throws FabricError for a geometry the protocol cannot run
  uint32_t payload_bytes() const;  // slot_bytes minus the chunk header
};

// Written at the start of every slot. A message of n bytes travels as ceil(n / payload) chunks (one for n = 0),
// in order; `seq` counts messages on this stream, so a receiver can tell a stray chunk from the next one.
struct ChunkHeader {
  uint32_t magic;
  uint32_t seq;          // message number on this stream
  uint64_t tag;          // the Fabric tag the receiver matches on
  uint64_t msg_bytes;    // real bytes of the whole message
  uint64_t total_bytes;  // real + phantom bytes (what the receiver's size check sees)
  uint32_t chunk;        // index of this chunk in the message
  uint32_t chunks;       // chunks in the message
  uint32_t payload;      // payload bytes in this chunk
  uint32_t reserved;
};
static_assert(sizeof(ChunkHeader) == 48, "ChunkHeader is part of the wire format");
constexpr uint32_t kChunkMagic = 0x45504331;  // "EPC1"

// The immediate of a chunk's write: the slot it was written to. Writes on one RC queue pair land in order, so a
// receiver expects slots 0, 1, ..., slots - 1, 0, ... and treats anything else as a protocol error.
inline uint32_t imm_of_slot(uint32_t slot) { return slot; }

// A write the device layer must post: `bytes` from `local` (a staging slot in the sender's registered memory,
// already holding header and payload) to slot `slot` of the peer's ring, immediate `imm`; its completion comes
// back as on_write_complete(wr_id).
struct WriteOp {
  uint64_t wr_id;
  uint32_t slot;
  uint32_t imm;
  const uint8_t* local;
  uint32_t bytes;
};

// What a device reports back, as the streams consume it (verbs/stream_set.hpp).
struct Completion {
  enum Kind { kWriteDone, kWriteImm, kCredit } kind;
  int peer;
  uint64_t wr_id;  // kWriteDone
  uint32_t imm;    // kWriteImm: the slot; kCredit: the credits returned
  uint32_t bytes;  // kWriteImm
};

// The sending half. Messages are queued whole; ready() turns queued chunks into writes while credits and free
// staging slots last, copying each chunk's payload from the caller's buffer into a registered staging slot. The
// buffer is borrowed until the message completes: every one of its chunks' writes has completed.
class RdmaSender {
 public:
  RdmaSender(RingConfig cfg, int peer);
  // Queues one message: data[0, bytes) real bytes (borrowed until take_completed() returns its id), total_bytes >=
  // bytes including phantom bytes. Returns its id.
  uint64_t enqueue(uint64_t tag, const void* data, size_t bytes, size_t total_bytes);
  // Stages as many chunks as credits and staging allow into `staging` (cfg.slots x cfg.slot_bytes, registered)
  // and returns the writes to post, in order.
  std::vector<WriteOp> ready(uint8_t* staging);
  // A posted write completed: its staging slot is free; message ids whose every chunk is out come back from
  // take_completed().
  void on_write_complete(uint64_t wr_id);
  // The receiver freed n slots.
  void add_credits(uint32_t n);
  std::vector<uint64_t> take_completed();

  uint32_t credits() const { return credits_; }
  size_t queued_chunks() const;
  size_t in_flight() const { return in_flight_.size(); }

 private:
  struct Pending {
    uint64_t id;
    uint32_t seq;
    uint64_t tag;
    const uint8_t* data;
    uint64_t bytes, total_bytes;
    uint32_t chunks, next_chunk = 0, done_chunks = 0;
  };
  struct Flight {
    uint64_t wr_id, msg_id;
    uint32_t staging_slot;
  };
  RingConfig cfg_;
  int peer_;
  uint32_t credits_;
  uint32_t unreturned_ = 0;  // chunks posted whose slots the receiver has not yet credited back
  uint32_t next_remote_slot_ = 0, next_seq_ = 0;
  uint64_t next_msg_id_ = 1, next_wr_id_ = 1;
  std::deque<Pending> queue_;           // messages with chunks not yet staged, or staged but not all complete
  std::deque<Flight> in_flight_;        // posted writes, oldest first
  std::vector<uint32_t> free_staging_;  // staging slots not in flight
  std::vector<uint64_t> completed_;
};

// The receiving half: parses each chunk as its write-with-immediate completes, reassembles messages, and counts
// freed slots into credit returns.
class RdmaReceiver {
 public:
  RdmaReceiver(RingConfig cfg, int peer);
  struct Message {
    uint64_t tag;
    uint64_t total_bytes;
    std::vector<uint8_t> data;
  };
  // A write with immediate `imm` of `bytes` bytes landed in `ring` (cfg.slots x cfg.slot_bytes, registered).
  // Appends the messages it completes to `out`. Throws FabricError naming the peer, the slot and what is wrong
  // for anything the protocol does not allow (a slot out of order, a bad header, a chunk of another message).
  void on_write_imm(uint32_t imm, uint32_t bytes, const uint8_t* ring, std::vector<Message>& out);
  // Credits to send back now (a multiple of cfg.credit_batch), or 0; the caller sends them to the peer's sender.
  uint32_t take_credit_return();

 private:
  [[noreturn]] void fail(uint32_t slot, const std::string& what) const;
  RingConfig cfg_;
  int peer_;
  uint32_t next_slot_ = 0, next_seq_ = 0, freed_ = 0;
  bool assembling_ = false;
  Message msg_;
  uint64_t msg_bytes_ = 0;
  uint32_t chunk_ = 0, chunks_ = 0;
};

}  // namespace eplab::verbs
