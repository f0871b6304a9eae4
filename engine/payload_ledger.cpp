#include "engine/payload_ledger.hpp"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace eplab {
namespace {

constexpr uint64_t kMul = 0x9e3779b97f4a7c15ULL;  // odd: multiplying by it is a bijection

uint64_t mix64(uint64_t x) {  // SplitMix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// One lane step: xor the word in, multiply, fold the high bits down. For a fixed lane value each operation is a
// bijection of the word, so two words that differ give different lane values.
inline uint64_t step(uint64_t lane, uint64_t word) {
  lane = (lane ^ word) * kMul;
  return lane ^ (lane >> 32);
}

// `n` 32-byte blocks, one word per lane, the lanes kept in registers (a lane array of the object could be aliased
// by the bytes read, so the compiler would store it back after every block).
void blocks(uint64_t (&lane)[4], const unsigned char* p, size_t n) {
  uint64_t l0 = lane[0], l1 = lane[1], l2 = lane[2], l3 = lane[3];
  for (; n > 0; --n, p += 32) {
    uint64_t w[4];
    std::memcpy(w, p, sizeof w);
    l0 = step(l0, w[0]);
    l1 = step(l1, w[1]);
    l2 = step(l2, w[2]);
    l3 = step(l3, w[3]);
  }
  lane[0] = l0, lane[1] = l1, lane[2] = l2, lane[3] = l3;
}

}  // namespace

// The checksum's four lanes: 32-byte blocks go one word per lane; the last bytes (fewer than 32) go 8 at a time
// into lane 0 and a zero-padded rest into lane 1. Blocks run across the seams of the parts fed, so a contiguous
// message, a gathered one and one read in parts share the sum by construction.
void PayloadChecksum::feed(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  total_ += n;
  if (np_) {
    const size_t take = std::min(sizeof pend_ - np_, n);
    std::memcpy(pend_ + np_, p, take);
    np_ += take, p += take, n -= take;
    if (np_ < sizeof pend_) return;
    blocks(lane_, pend_, 1);
    np_ = 0;
  }
  blocks(lane_, p, n / 32);
  p += n / 32 * 32, n %= 32;
  std::memcpy(pend_, p, n);
  np_ = n;
}

// The tail into lanes 0 and 1, each lane through a bijection, then rotated so that equal lanes do not cancel, and
// the length last.
uint64_t PayloadChecksum::finish() const {
  uint64_t l0 = lane_[0], l1 = lane_[1];
  size_t i = 0;
  for (; i + 8 <= np_; i += 8) {
    uint64_t w;
    std::memcpy(&w, pend_ + i, sizeof w);
    l0 = step(l0, w);
  }
  if (i < np_) {
    uint64_t w = 0;
    std::memcpy(&w, pend_ + i, np_ - i);
    l1 = step(l1, w);
  }
  return mix64(l0) ^ std::rotl(mix64(l1), 16) ^ std::rotl(mix64(lane_[2]), 32) ^ std::rotl(mix64(lane_[3]), 48) ^
         mix64(static_cast<uint64_t>(total_) + kMul);
}

uint64_t payload_checksum(const void* p, size_t n) {
  PayloadChecksum sum;
  sum.feed(p, n);
  return sum.finish();
}

uint64_t payload_checksum(const ConstBuf& b) {
  if (!b.gathered()) return payload_checksum(b.ptr, b.bytes);
  PayloadChecksum sum;
  sum.feed(b.ptr, b.head_bytes());
  std::vector<uint8_t> row(b.gather.pulled ? b.gather.row_bytes : 0);  // a pulled row, read here
  for (size_t r = 0; r < b.gather.count; ++r) {
    if (b.gather.is_pulled(r)) {
      b.gather.copy_row(r, row.data());
      sum.feed(row.data(), row.size());
    } else {
      sum.feed(b.gather.rows[r], b.gather.row_bytes);
    }
  }
  return sum.finish();
}

size_t PayloadLedger::KeyHash::operator()(const Key& k) const {
  return static_cast<size_t>(mix64(k.tag ^ (static_cast<uint64_t>(static_cast<uint32_t>(k.peer)) * kMul)));
}

PayloadRecord& PayloadLedger::entry(Map& m, int peer, Tag tag, const std::string& phase) {
  PayloadRecord& r = m[Key{tag, peer}];
  if (r.messages == 0) {
    r.tag = tag;
    r.peer = peer;
    const auto it = std::find(phases_.begin(), phases_.end(), phase);
    r.phase = static_cast<int32_t>(it - phases_.begin());
    if (it == phases_.end()) phases_.push_back(phase);
  }
  return r;
}

void PayloadLedger::count(Map& m, int peer, Tag tag, const std::string& phase, size_t bytes, size_t total_bytes,
                          uint64_t sum) {
  PayloadRecord& r = entry(m, peer, tag, phase);
  ++r.messages;
  r.bytes += bytes;
  r.total_bytes += total_bytes;
  r.checksum += sum;
}

void PayloadLedger::add(Map& m, int peer, Tag tag, const std::string& phase, const void* data, size_t bytes,
                        size_t total_bytes) {
  count(m, peer, tag, phase, bytes, total_bytes, checksum_ && bytes > 0 ? payload_checksum(data, bytes) : 0);
}

void PayloadLedger::sent(int peer, Tag tag, const std::string& phase, const void* data, size_t bytes,
                         size_t total_bytes) {
  add(sent_, peer, tag, phase, data, bytes, total_bytes);
}

void PayloadLedger::add(Map& m, int peer, Tag tag, const std::string& phase, const ConstBuf& data) {
  if (!data.gathered()) return add(m, peer, tag, phase, data.ptr, data.ptr ? data.bytes : 0, data.total());
  count(m, peer, tag, phase, data.bytes, data.total(), checksum_ && data.bytes > 0 ? payload_checksum(data) : 0);
}

void PayloadLedger::sent(int peer, Tag tag, const std::string& phase, const ConstBuf& data) {
  add(sent_, peer, tag, phase, data);
}

void PayloadLedger::received(int peer, Tag tag, const std::string& phase, const void* data, size_t bytes,
                             size_t total_bytes) {
  add(got_, peer, tag, phase, data, bytes, total_bytes);
}

void PayloadLedger::received(int peer, Tag tag, const std::string& phase, const ConstBuf& data) {
  add(got_, peer, tag, phase, data);
}

void PayloadLedger::received(int peer, Tag tag, const std::string& phase, size_t bytes, const PayloadChecksum& sum) {
  count(got_, peer, tag, phase, bytes, bytes, checksum_ && bytes > 0 ? sum.finish() : 0);
}

void PayloadLedger::kept(int self, Tag tag, const std::string& phase, const ConstBuf& data) {
  const uint64_t sum = checksum_ && data.bytes > 0 ? payload_checksum(data) : 0;
  count(sent_, self, tag, phase, data.bytes, data.total(), sum);
  count(got_, self, tag, phase, data.bytes, data.total(), sum);
}

PayloadLog PayloadLedger::log() const {
  PayloadLog out;
  out.recorded = true;
  out.checksummed = checksum_;
  out.phases = phases_;
  const auto sorted = [](const Map& m) {
    std::vector<PayloadRecord> v;
    v.reserve(m.size());
    for (const auto& [k, r] : m) v.push_back(r);
    std::sort(v.begin(), v.end(), [](const PayloadRecord& a, const PayloadRecord& b) {
      return a.tag != b.tag ? a.tag < b.tag : a.peer < b.peer;
    });
    return v;
  };
  out.sent = sorted(sent_);
  out.got = sorted(got_);
  return out;
}

void PayloadLedger::restore(const PayloadLog& from) {
  if (!from.recorded) return;
  phases_ = from.phases;
  sent_.clear();
  got_.clear();
  for (const PayloadRecord& r : from.sent) sent_[Key{r.tag, r.peer}] = r;
  for (const PayloadRecord& r : from.got) got_[Key{r.tag, r.peer}] = r;
}

namespace {

struct Side {
  const PayloadLog* log;
  const PayloadRecord* rec;  // null: nothing under this (tag, peer)
};

std::string phase_name(const Side& s) {
  if (!s.rec || s.rec->phase < 0 || static_cast<size_t>(s.rec->phase) >= s.log->phases.size()) return "";
  return s.log->phases[s.rec->phase];
}

// "step S, layer L (tag ...)": the call a tag belongs to, as mismatches name it.
std::string call_of(Tag tag) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "step %u, layer %u", static_cast<unsigned>((tag >> 32) & 0xFFFFFF),
                static_cast<unsigned>((tag >> 16) & 0xFFFF));
  return std::string(buf) + " (tag " + describe_tag(tag) + ")";
}

std::string describe(const PayloadRecord* r, bool checksummed) {
  if (!r) return "nothing";
  char buf[160];
  if (checksummed)
    std::snprintf(buf, sizeof buf, "%llu message(s), %llu bytes, checksum %016llx",
                  static_cast<unsigned long long>(r->messages), static_cast<unsigned long long>(r->total_bytes),
                  static_cast<unsigned long long>(r->checksum));
  else
    std::snprintf(buf, sizeof buf, "%llu message(s), %llu bytes", static_cast<unsigned long long>(r->messages),
                  static_cast<unsigned long long>(r->total_bytes));
  return buf;
}

}  // namespace

PayloadCheck check_payloads(const std::vector<const PayloadLog*>& logs) {
  PayloadCheck c;
  const int R = static_cast<int>(logs.size());
  c.ran = R > 0;
  c.checksummed = R > 0;
  for (const PayloadLog* l : logs) {
    c.ran = c.ran && l->recorded;
    c.checksummed = c.checksummed && l->checksummed;
  }
  if (!c.ran) return c;
  // Entries of the sends of `src` to `dst` and of what `dst` received from `src`, matched by tag: a merge of two
  // sorted lists (each log is sorted by (tag, peer); filtering by peer keeps the tag order).
  // by_peer[rank][peer]: that rank's records with that peer, in tag order.
  using Index = std::vector<std::vector<std::vector<const PayloadRecord*>>>;
  const auto index = [&](bool sent) {
    Index ix(R, std::vector<std::vector<const PayloadRecord*>>(R));
    for (int r = 0; r < R; ++r)
      for (const PayloadRecord& rec : sent ? logs[r]->sent : logs[r]->got) {
        if (rec.peer < 0 || rec.peer >= R)
          throw EplabError("payload check: rank " + std::to_string(r) + "'s ledger names peer " +
                           std::to_string(rec.peer) + " of a run of " + std::to_string(R) + " ranks");
        ix[r][rec.peer].push_back(&rec);
      }
    return ix;
  };
  const Index sends = index(true), gots = index(false);
  for (int src = 0; src < R; ++src)
    for (int dst = 0; dst < R; ++dst) {
      const auto& s = sends[src][dst];
      const auto& g = gots[dst][src];
      size_t i = 0, j = 0;
      while (i < s.size() || j < g.size()) {
        const PayloadRecord* a = i < s.size() ? s[i] : nullptr;
        const PayloadRecord* b = j < g.size() ? g[j] : nullptr;
        if (a && b && a->tag != b->tag) (a->tag < b->tag ? b : a) = nullptr;
        i += a != nullptr;
        j += b != nullptr;
        if (a) c.messages += a->messages, c.bytes += a->total_bytes;
        const bool same = a && b && a->messages == b->messages && a->bytes == b->bytes &&
                          a->total_bytes == b->total_bytes && (!c.checksummed || a->checksum == b->checksum);
        if (same) continue;
        if (c.mismatches++ > 0) continue;
        const Tag tag = a ? a->tag : b->tag;
        std::string phase = phase_name({logs[src], a});
        if (phase.empty()) phase = phase_name({logs[dst], b});
        const char* kind = !(a && b)                                                  ? "a message unmatched"
                           : a->messages != b->messages || a->total_bytes != b->total_bytes ? "counts differ"
                                                                                             : "checksum differs";
        c.first_error = "payload mismatch: rank " + std::to_string(src) + " -> rank " + std::to_string(dst) +
                        ", phase " + phase + ", " + call_of(tag) + ": " + kind + ": sent " +
                        describe(a, c.checksummed) + ", received " + describe(b, c.checksummed);
      }
    }
  return c;
}

namespace {

uint64_t fingerprint(int src, int dst, Tag tag, uint64_t bytes) {
  uint64_t h = mix64(tag ^ 0x9E3779B97F4A7C15ull);
  h = mix64(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(src)) << 32 | static_cast<uint32_t>(dst)));
  return mix64(h ^ bytes);
}

}  // namespace

PayloadTally::PayloadTally(int ranks) : ranks_(static_cast<size_t>(ranks)) {}

void PayloadTally::Net::add(const Net& o, int sign) {
  print += sign > 0 ? o.print : 0 - o.print;
  messages += sign * o.messages;
  bytes += sign * o.bytes;
}

void PayloadTally::flush(Tag tag, Net& pending, int sign) {
  if (pending.zero()) return;
  auto [it, fresh] = by_tag_.try_emplace(tag);
  it->second.add(pending, sign);
  if (it->second.zero()) by_tag_.erase(it);
  pending = Net{};
}

void PayloadTally::sent(int src, int dst, Tag tag, uint64_t bytes) {
  const Net one{fingerprint(src, dst, tag, bytes), 1, static_cast<int64_t>(bytes)};
  Rank& s = ranks_[src];
  ++s.messages;
  s.bytes += bytes;
  s.out.add(one, +1);
  ranks_[dst].in.add(one, +1);
  // A rank's messages come in runs of one tag (an exchange): sum them apart, one table entry per run.
  if (tag != s.send_tag) {
    flush(s.send_tag, s.send_pending, +1);
    s.send_tag = tag;
  }
  s.send_pending.add(one, +1);
}

void PayloadTally::received(int src, int dst, Tag tag, uint64_t bytes) {
  const Net one{fingerprint(src, dst, tag, bytes), 1, static_cast<int64_t>(bytes)};
  Rank& d = ranks_[dst];
  d.in.add(one, -1);
  ranks_[src].out.add(one, -1);
  if (tag != d.recv_tag) {
    flush(d.recv_tag, d.recv_pending, -1);
    d.recv_tag = tag;
  }
  d.recv_pending.add(one, +1);
}

void PayloadTally::restore_sent(int src, uint64_t messages, uint64_t bytes) {
  ranks_[src].messages = messages;
  ranks_[src].bytes = bytes;
}

PayloadCheck PayloadTally::check() {
  PayloadCheck c;
  c.ran = true;
  for (Rank& r : ranks_) {
    flush(r.send_tag, r.send_pending, +1);
    flush(r.recv_tag, r.recv_pending, -1);
    c.messages += r.messages;
    c.bytes += r.bytes;
  }
  c.mismatches = by_tag_.size();
  std::vector<int> senders, receivers;
  for (size_t r = 0; r < ranks_.size(); ++r) {
    if (!ranks_[r].out.zero()) senders.push_back(static_cast<int>(r));
    if (!ranks_[r].in.zero()) receivers.push_back(static_cast<int>(r));
  }
  if (c.mismatches == 0 && senders.empty() && receivers.empty()) return c;
  c.mismatches = std::max<size_t>(c.mismatches, 1);  // rank sums off with every tag balanced: still a mismatch
  const auto list = [](const std::vector<int>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 8; ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return v.size() > 8 ? s + ", ... (" + std::to_string(v.size()) + ")" : s;
  };
  std::string where = "rank pair unknown (senders off: " + list(senders) + "; receivers off: " + list(receivers) + ")";
  if (senders.size() == 1 && receivers.size() == 1)
    where = "rank " + std::to_string(senders[0]) + " -> rank " + std::to_string(receivers[0]);
  std::string call = "no tag unbalanced";
  if (!by_tag_.empty()) {
    const auto first = std::min_element(by_tag_.begin(), by_tag_.end(),
                                        [](const auto& a, const auto& b) { return a.first < b.first; });
    call = call_of(first->first) + ": sent minus received " +
           std::to_string(first->second.messages) + " message(s), " + std::to_string(first->second.bytes) + " bytes";
  }
  c.first_error = "payload mismatch (counts): " + where + ", " + call;
  return c;
}

const PayloadFlip& PayloadFlip::from_environment() {
  static const PayloadFlip flip = [] {
    PayloadFlip f;
    if (const char* e = std::getenv("EPLAB_TEST_FLIP_PAYLOAD_BYTE"))
      f.armed = std::sscanf(e, "%d,%d,%d,%d,%d,%d", &f.src, &f.dst, &f.phase, &f.step, &f.layer, &f.round) >= 5;
    return f;
  }();
  return flip;
}

bool PayloadFlip::matches(int from, int to, Tag tag) const {
  return armed && from == src && to == dst && static_cast<int>(tag >> 56) == phase &&
         static_cast<int>((tag >> 32) & 0xFFFFFF) == step && static_cast<int>((tag >> 16) & 0xFFFF) == layer &&
         (round < 0 || static_cast<int>(tag & 0xFFFF) == round);
}

}  // namespace eplab
