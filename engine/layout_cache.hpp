// Cached dispatch layouts (DeepEP's cached dispatch): the counts a notify round delivered, kept per rank in an
// LRU so that a call whose routing repeats an earlier one skips the count exchange entirely.
//
// The caller vouches, as in DeepEP: a rank only knows its own routing, and a notify may be skipped only if every
// rank skips it and every peer's cached counts still hold. Agreeing on that inside the engine costs a round of
// its own (an 8-byte all-reduce of routing hashes, shaped like the notify it replaces), and notify is mostly
// latency, so such a round would save almost nothing. The driver instead sees every rank's batch before the
// step (routing sources are deterministic and random-access), names each call's cluster-wide layout with one
// key, runs the same LRU over those keys and tells every rank whether the call repeats a cached layout. Every
// rank's cache sees the same key sequence, so it hits exactly when the driver says; each entry also keeps the
// rank's own routing hash, and a vouched call that misses or whose own routing differs throws with context.
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <vector>

namespace eplab {

struct LayoutCacheStats {
  long hits = 0;
  long misses = 0;                  // calls that ran notify and filled an entry
  double notify_time_saved_s = 0;   // per hit: the notify time measured on the miss that filled its entry
  double notify_time_missed_s = 0;  // notify time of the misses
  double hit_rate() const { return hits + misses > 0 ? static_cast<double>(hits) / (hits + misses) : 0.0; }
};

class LayoutCache {
 public:
  // capacity 0: off (find always misses, insert keeps nothing).
  explicit LayoutCache(int capacity) : capacity_(capacity < 0 ? 0 : capacity) {}
  int capacity() const { return capacity_; }
  int size() const { return static_cast<int>(lru_.size()); }

  struct Entry {
    uint64_t key = 0;
    uint64_t own_hash = 0;         // this rank's routing when the entry was filled, checked on vouched hits
    std::vector<uint32_t> counts;  // the algorithm's notify results, laid out as it likes
    double notify_time_s = 0;      // what the notify that filled the entry took
  };
  // The entry for `key`, made most recently used; null on a miss.
  const Entry* find(uint64_t key);
  // Inserts (or replaces) `key` as most recently used, evicting the least recently used past capacity.
  void insert(Entry e);
  // Keys, most recently used first (tests, diagnostics).
  std::vector<uint64_t> keys() const;
  // The entries, most recently used first (checkpoints save them; inserting them in reverse restores the order).
  const std::list<Entry>& entries() const { return lru_; }

  // Hash of one rank's resolved routing (slots, -1 included) and call geometry.
  static uint64_t routing_hash(int num_tokens, int topk, const int32_t* slots);

  LayoutCacheStats stats;

 private:
  int capacity_;
  std::list<Entry> lru_;  // front: most recently used; capacities are small, a linear find is enough
};

}  // namespace eplab
