// Conservation of payload bytes across every message a fabric moves: per (tag, peer) the sender's and the
// receiver's message count, byte count and a 64-bit checksum of the payload bytes, so that comparing the two
// sides at the end of a run proves each rank pair received exactly the bytes it was sent, phase by phase and
// call by call (the tag holds phase, step and layer), forwarded hops included.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/fabric.hpp"

namespace eplab {

// A fast 64-bit checksum of `n` bytes: four lanes of multiply-xorshift over 8-byte words (independent lanes keep
// it at memory speed), the tail and the length folded in at the end. Each lane step is a bijection of the word,
// so a change confined to one 8-byte word (a flipped byte) always changes the checksum; other changes collide
// with probability about 2^-64.
uint64_t payload_checksum(const void* p, size_t n);
// The same over a send buffer's real bytes, its gathered rows (RowGather) included: the checksum of the message
// as it lands, contiguous.
uint64_t payload_checksum(const ConstBuf& b);

// payload_checksum of bytes fed in order, in parts of any size: the checksum of the parts made contiguous.
class PayloadChecksum {
 public:
  void feed(const void* data, size_t n);
  uint64_t finish() const;  // of everything fed so far
  size_t fed() const { return total_; }

 private:
  uint64_t lane_[4] = {0x243f6a8885a308d3ULL, 0x13198a2e03707344ULL, 0xa4093822299f31d0ULL, 0x082efa98ec4e6c89ULL};
  unsigned char pend_[32] = {};  // the last bytes fed, short of a 32-byte block
  size_t np_ = 0, total_ = 0;
};

// What one rank sent to (or received from) one peer under one tag: sums over the messages.
struct PayloadRecord {
  uint64_t tag = 0;
  int32_t peer = -1;
  int32_t phase = -1;  // index into PayloadLog::phases: the fabric's phase name at the first message
  uint64_t messages = 0;
  uint64_t bytes = 0;        // real bytes
  uint64_t total_bytes = 0;  // real + phantom bytes
  uint64_t checksum = 0;     // sum of the messages' payload_checksum (order-independent); 0 when not checksummed
};

// One rank's ledger of a run, records sorted by (tag, peer).
struct PayloadLog {
  bool recorded = false;     // the rank kept a ledger (false: nothing to compare)
  bool checksummed = false;  // real bytes were hashed; false: counts only (phantom payloads)
  std::vector<std::string> phases;
  std::vector<PayloadRecord> sent, got;
  // Phantom payloads (PayloadTally, whose check is of the whole process): what this rank sent.
  uint64_t tally_messages = 0, tally_bytes = 0;
};

// Fed by the fabric (engine/transport_fabric.cpp) from the rank's own thread: every posted send and every
// completed receive. Not thread-safe; one per rank.
class PayloadLedger {
 public:
  explicit PayloadLedger(bool checksum) : checksum_(checksum) {}
  bool checksums() const { return checksum_; }
  void sent(int peer, Tag tag, const std::string& phase, const void* data, size_t bytes, size_t total_bytes);
  // A send buffer as posted (a gather send's rows included).
  void sent(int peer, Tag tag, const std::string& phase, const ConstBuf& data);
  void received(int peer, Tag tag, const std::string& phase, const void* data, size_t bytes, size_t total_bytes);
  // A message as received, or a gather send read where its sender holds it (alltoallv_consume): head, then rows.
  void received(int peer, Tag tag, const std::string& phase, const ConstBuf& data);
  // A message whose bytes were hashed as they were read (PayloadChecksum, a consume that pulled them).
  void received(int peer, Tag tag, const std::string& phase, size_t bytes, const PayloadChecksum& sum);
  // A message the rank keeps for itself (Fabric::keep_local): sent and received at once, hashed once.
  void kept(int self, Tag tag, const std::string& phase, const ConstBuf& data);
  PayloadLog log() const;
  // Goes on from a log this ledger's rank wrote earlier (a run resumed from a checkpoint), so that the resumed
  // run's ledger, and the report built from it, is the uninterrupted run's.
  void restore(const PayloadLog& from);

 private:
  struct Key {
    Tag tag;
    int peer;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  using Map = std::unordered_map<Key, PayloadRecord, KeyHash>;
  void add(Map& m, int peer, Tag tag, const std::string& phase, const void* data, size_t bytes, size_t total_bytes);
  void add(Map& m, int peer, Tag tag, const std::string& phase, const ConstBuf& data);
  // One message into m's record for (peer, tag): its bytes, and its checksum (0 without checksums).
  void count(Map& m, int peer, Tag tag, const std::string& phase, size_t bytes, size_t total_bytes, uint64_t sum);
  PayloadRecord& entry(Map& m, int peer, Tag tag, const std::string& phase);

  bool checksum_;
  std::vector<std::string> phases_;
  Map sent_, got_;
};

// Every rank pair's sent and received ledgers agree, tag by tag. `first_error` names the first disagreement in
// (source, destination, tag) order: source and destination rank, the phase, step and layer, and what differs.
struct PayloadCheck {
  bool ran = false;          // every rank kept a ledger
  bool checksummed = false;  // and hashed its bytes
  uint64_t messages = 0, bytes = 0;
  size_t mismatches = 0;  // (tag, source, destination) entries that differ
  std::string first_error;
  bool ok() const { return mismatches == 0; }
};
// logs: one per rank, in rank order.
PayloadCheck check_payloads(const std::vector<const PayloadLog*>& logs);

// Conservation of phantom payloads (the simulator's sizes-only messages), cheap enough for every simulated run:
// the ranks of one process, run one at a time (simulated actors), enter each message they send and each they
// receive as a 64-bit fingerprint of (tag, source, destination, size). Sums of fingerprints per sending rank, per
// receiving rank and per tag must come back to zero on both sides; memory is O(ranks + tags in flight), not
// O(rank pairs x tags) as a ledger's. A lost or resized message leaves its tag (phase, step, layer), its sender
// and its receiver unbalanced, which names the rank pair when one message is wrong.
class PayloadTally {
 public:
  explicit PayloadTally(int ranks);
  void sent(int src, int dst, Tag tag, uint64_t bytes);
  void received(int src, int dst, Tag tag, uint64_t bytes);
  // Messages and bytes rank `src` has sent so far; a resumed run starts each rank from its checkpoint's.
  uint64_t messages_sent(int src) const { return ranks_[src].messages; }
  uint64_t bytes_sent(int src) const { return ranks_[src].bytes; }
  void restore_sent(int src, uint64_t messages, uint64_t bytes);
  // Every message sent has been received: each rank's and each tag's sums balance. `mismatches` counts the tags
  // (calls and phases) that do not.
  PayloadCheck check();

 private:
  struct Net {  // sent minus received
    uint64_t print = 0;
    int64_t messages = 0, bytes = 0;
    bool zero() const { return print == 0 && messages == 0 && bytes == 0; }
    void add(const Net& o, int sign);
  };
  struct Rank {
    uint64_t messages = 0, bytes = 0;  // sent by this rank
    Net out;                           // what it sent minus what its peers received from it
    Net in;                            // what was sent to it minus what it received
    Tag send_tag = 0, recv_tag = 0;    // the tag its pending sums are of
    Net send_pending, recv_pending;    // this rank's sums under that tag, not yet in by_tag_
  };
  void flush(Tag tag, Net& pending, int sign);

  std::vector<Rank> ranks_;
  std::unordered_map<Tag, Net> by_tag_;  // tags whose sends and receives do not balance yet
};

// Test hook, not a user option: EPLAB_TEST_FLIP_PAYLOAD_BYTE="SRC,DST,PHASE,STEP,LAYER[,ROUND]" (PHASE a Phase
// number, as in make_tag; any round when left out) makes rank DST flip the lowest bit of the last byte of the
// first non-empty message from SRC under such a tag after it landed and before it is checksummed, as a fault in
// flight would (the last byte: row data rather than a message's leading counts). A message with phantom bytes
// (sim) arrives one byte short instead, its real bytes untouched. Only while the fabric enters messages in a
// ledger or a tally (so not in a run's untimed warm-up call, driver/rank_program.cpp). Read once per process.
struct PayloadFlip {
  bool armed = false;
  int src = -1, dst = -1, phase = -1, step = -1, layer = -1, round = -1;
  static const PayloadFlip& from_environment();
  bool matches(int from, int to, Tag tag) const;
};

}  // namespace eplab
