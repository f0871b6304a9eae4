// The driving half of the verbs transport, free of verbs calls: one rank's streams to every peer (an RdmaSender
// and an RdmaReceiver per peer, over rings in one registered block) and the all-to-all-v that runs over them:
// queue the sends, post the writes credits allow, poll completions, feed the receivers, return credits, and hand
// each arrived message to its receive. It reaches the hardware only through StreamDevice (register_memory,
// post_write, post_credit, poll): verbs/verbs_transport.cpp implements it over libibverbs, tests/verbs over memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/fabric.hpp"
#include "verbs/rdma_stream.hpp"

namespace eplab {
class TransportFabric;
}

namespace eplab::verbs {

// What the streams need of an RDMA device: one reliable, in-order connection to every peer.
class StreamDevice {
 public:
  virtual ~StreamDevice() = default;
  // Registers [addr, addr + bytes): the rings peers write into and the staging writes are read from. Called once,
  // before anything is posted.
  virtual void register_memory(void* addr, size_t bytes) = 0;
  // Writes w.bytes from w.local (registered staging) into slot w.slot of the ring `peer` keeps for this rank, with
  // immediate w.imm. Completes here as kWriteDone (w.wr_id) and at the peer as kWriteImm (w.imm, w.bytes).
  // Writes to one peer land in the order they were posted.
  virtual void post_write(int peer, const WriteOp& w) = 0;
  // Returns `credits` to peer's sender: kCredit there, after every write this rank posted to it before.
  virtual void post_credit(int peer, uint32_t credits) = 0;
  // Appends what has completed since the last call, without waiting.
  virtual void poll(std::vector<Completion>& out) = 0;
};

// The memory of one rank's streams, in one page-aligned block registered once: for every peer, the ring it writes
// into and the staging of what is written to it, each cfg.slots x cfg.slot_bytes. Peers learn where their ring
// is at connection set-up.
class StreamMemory {
 public:
  StreamMemory(RingConfig cfg, int rank, int world);
  const RingConfig& config() const { return cfg_; }
  uint8_t* ring(int peer) { return at(peer, 0); }
  uint8_t* staging(int peer) { return at(peer, 1); }
  uint8_t* data() { return block_.get(); }
  size_t bytes() const { return bytes_; }

 private:
  uint8_t* at(int peer, int half);
  RingConfig cfg_;
  int rank_, world_;
  size_t area_, bytes_;
  std::unique_ptr<uint8_t, void (*)(void*)> block_;
};

class StreamSet {
 public:
  // Registers `mem` with `dev`; both outlive this. Throws FabricError for a ring geometry the protocol cannot run.
  StreamSet(StreamDevice& dev, StreamMemory& mem, int rank, int world);

  // Starts an all-to-all-v: a message to every `sends` peer, one from every `recvs` peer, all with `tag`; a
  // message to this rank itself is copied now. The spans and the buffers they name are borrowed until step()
  // returns true. Throws FabricError for a peer out of range or named twice, a self message without its
  // counterpart, or while an earlier exchange has not finished (it failed or was abandoned).
  void start(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs);
  // Posts the writes credits allow, takes what the device completed (write completions free staging and finish
  // sends; landed chunks are parsed, and their slots' credits returned; credits let more writes go), and fills the
  // receives whose messages arrived, setting their sizes. True once every send has completed and every receive has
  // arrived. Throws FabricError naming the peer for what the protocol forbids (rdma_stream.hpp), a message larger
  // than its receive buffer, or a message of another exchange.
  bool step();
  // What the exchange still waits for, for a deadline's error: " with the messages from ranks 1, 3 not arrived".
  std::string waiting() const;

 private:
  struct Peer {
    Peer(const RingConfig& cfg, int peer) : tx(cfg, peer), rx(cfg, peer) {}
    RdmaSender tx;
    RdmaReceiver rx;
    std::deque<RdmaReceiver::Message> arrived;  // in order, not yet taken by a receive
    uint64_t open_send = 0;                     // the message of this exchange not yet completed, or 0
    int recv = -1;                              // index of this exchange's receive from the peer, or -1
  };
  void check_peer(int peer, const char* side) const;
  void take(const Completion& c);
  void fill(int peer);

  StreamDevice& dev_;
  StreamMemory& mem_;
  int rank_, world_;
  std::vector<Peer> peers_;  // [rank]; its own entry is unused
  bool active_ = false;
  Tag tag_ = 0;
  std::span<PeerRecv> recvs_;
  size_t open_sends_ = 0, open_recvs_ = 0;
  std::vector<std::vector<uint8_t>> flat_;  // gather sends made contiguous for this exchange
  std::vector<Completion> completions_;
  std::vector<RdmaReceiver::Message> landed_;
};

// One all-to-all-v over `streams` as rank f.rank() (the AlltoallvExtension of `--transport verbs`): steps it while
// taking the fabric's failure notices (transport().progress()) and honouring the deadline `d` or the run's hang
// limit. Every error is a FabricError naming the rank, tag and phase, and the peer where one is at fault.
void run_exchange(StreamSet& streams, TransportFabric& f, Tag tag, std::span<const PeerSend> sends,
                  std::span<PeerRecv> recvs, Deadline d);

}  // namespace eplab::verbs
