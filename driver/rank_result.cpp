#include "driver/rank_result.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "engine/error.hpp"

namespace eplab {
namespace {

static_assert(std::endian::native == std::endian::little, "rank results are encoded little-endian");

constexpr char kMagic[4] = {'E', 'P', 'R', 'R'};
// Beyond every step a run may have (make_tag keeps 24 bits), so no other kUser message shares these tags.
constexpr int kGatherStep = 0xFFFFFF;

class Writer {
 public:
  std::vector<uint8_t> out;
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  // Only types without padding, so that no uninitialized byte reaches the encoding.
  template <class T>
  void num(T v) {
    static_assert(std::is_arithmetic_v<T>);
    raw(&v, sizeof v);
  }
  template <class T>
  void nums(const std::vector<T>& v) {
    num<uint64_t>(v.size());
    if (!v.empty()) raw(v.data(), v.size() * sizeof(T));
  }
  void str(const std::string& s) {
    num<uint64_t>(s.size());
    raw(s.data(), s.size());
  }
  void phase(const PhaseStats& p) {
    num(p.time_s);
    num(p.codec_s);
    for (double b : p.bytes) num(b);
    num(p.logical_bytes);
    num(p.scaleout_logical_bytes);
    num(p.messages);
    num<int32_t>(p.calls);
  }
  void phases(const std::vector<PhaseStats>& v) {
    num<uint64_t>(v.size());
    for (const PhaseStats& p : v) phase(p);
  }
  void digests(const std::vector<DeliveryDigest>& v) {
    num<uint64_t>(v.size());
    for (const DeliveryDigest& d : v) {
      num(d.count);
      num(d.h1);
      num(d.h2);
    }
  }
  void payloads(const std::vector<PayloadRecord>& v) {
    num<uint64_t>(v.size());
    for (const PayloadRecord& p : v) {
      num(p.tag);
      num(p.peer);
      num(p.phase);
      num(p.messages);
      num(p.bytes);
      num(p.total_bytes);
      num(p.checksum);
    }
  }
};

class Reader {
 public:
  Reader(std::span<const uint8_t> in, int from_rank) : in_(in), from_(from_rank) {}
  void raw(void* p, size_t n, const char* field) {
    if (n > in_.size() - pos_)
      fail(std::string("truncated in ") + field + " (needs " + std::to_string(n) + " more bytes at byte " +
           std::to_string(pos_) + " of " + std::to_string(in_.size()) + ")");
    if (n) std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
  }
  template <class T>
  T num(const char* field) {
    T v;
    raw(&v, sizeof v, field);
    return v;
  }
  size_t count(size_t elem_bytes, const char* field) {
    const auto n = num<uint64_t>(field);
    if (n > (in_.size() - pos_) / std::max<size_t>(elem_bytes, 1))
      fail(std::string(field) + " claims " + std::to_string(n) + " elements, more than the bytes left hold");
    return static_cast<size_t>(n);
  }
  template <class T>
  std::vector<T> nums(const char* field) {
    std::vector<T> v(count(sizeof(T), field));
    raw(v.data(), v.size() * sizeof(T), field);
    return v;
  }
  std::string str(const char* field) {
    std::string s(count(1, field), '\0');
    raw(s.data(), s.size(), field);
    return s;
  }
  PhaseStats phase(const char* field) {
    PhaseStats p;
    p.time_s = num<double>(field);
    p.codec_s = num<double>(field);
    for (double& b : p.bytes) b = num<double>(field);
    p.logical_bytes = num<double>(field);
    p.scaleout_logical_bytes = num<double>(field);
    p.messages = num<double>(field);
    p.calls = num<int32_t>(field);
    return p;
  }
  std::vector<PhaseStats> phases(const char* field) {
    std::vector<PhaseStats> v(count(9 * sizeof(double) + sizeof(int32_t), field));
    for (PhaseStats& p : v) p = phase(field);
    return v;
  }
  std::vector<DeliveryDigest> digests(const char* field) {
    std::vector<DeliveryDigest> v(count(sizeof(uint32_t) + 2 * sizeof(uint64_t), field));
    for (DeliveryDigest& d : v) {
      d.count = num<uint32_t>(field);
      d.h1 = num<uint64_t>(field);
      d.h2 = num<uint64_t>(field);
    }
    return v;
  }
  std::vector<PayloadRecord> payloads(const char* field) {
    std::vector<PayloadRecord> v(count(sizeof(uint64_t) + 2 * sizeof(int32_t) + 4 * sizeof(uint64_t), field));
    for (PayloadRecord& p : v) {
      p.tag = num<uint64_t>(field);
      p.peer = num<int32_t>(field);
      p.phase = num<int32_t>(field);
      p.messages = num<uint64_t>(field);
      p.bytes = num<uint64_t>(field);
      p.total_bytes = num<uint64_t>(field);
      p.checksum = num<uint64_t>(field);
    }
    return v;
  }
  void finish() const {
    if (pos_ != in_.size()) fail(std::to_string(in_.size() - pos_) + " bytes left over after the last field");
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw EplabError("result of rank " + std::to_string(from_) + ": " + what);
  }

 private:
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  int from_;
};

}  // namespace

std::vector<uint8_t> encode_rank_result(const RankResult& r) {
  Writer w;
  w.raw(kMagic, sizeof kMagic);
  w.num(kRankResultVersion);
  w.num(r.rank);
  const RankRecord& rec = r.record;
  w.phases(rec.notify);
  w.phases(rec.dispatch);
  w.phases(rec.combine);
  w.nums(rec.recv_rows);
  w.nums(rec.slot_load);
  w.num(rec.err_sq);
  w.num(rec.ref_sq);
  w.num(rec.max_abs_err);
  w.num<uint64_t>(rec.mismatches);
  w.num<uint64_t>(rec.nonfinite);
  w.num<uint64_t>(rec.elements);
  w.nums(r.steps.step_s);
  w.nums(r.steps.compute_s);
  w.nums(r.steps.allreduce_s);
  w.num<uint64_t>(r.steps.ops.size());
  for (const OverlapOp& o : r.steps.ops) {
    w.num(o.step);
    w.num(o.kind);
    w.num(o.micro_batch);
    w.num(o.layer);
    w.num(o.t0);
    w.num(o.dur);
  }
  w.nums(r.layer_time_s);
  w.nums(r.migration_time_s);
  w.nums(r.call_slot_load);
  w.num(r.deliveries.ranks);
  w.digests(r.deliveries.sent);
  w.digests(r.deliveries.got);
  w.num<uint8_t>(r.payloads.recorded);
  w.num<uint8_t>(r.payloads.checksummed);
  w.num<uint64_t>(r.payloads.phases.size());
  for (const std::string& p : r.payloads.phases) w.str(p);
  w.payloads(r.payloads.sent);
  w.payloads(r.payloads.got);
  w.num(r.payloads.tally_messages);
  w.num(r.payloads.tally_bytes);
  w.num<int64_t>(r.layout_cache.hits);
  w.num<int64_t>(r.layout_cache.misses);
  w.num(r.layout_cache.notify_time_saved_s);
  w.num(r.layout_cache.notify_time_missed_s);
  w.num<uint64_t>(r.spans.size());
  for (const TimelineSpan& s : r.spans) {
    w.num(s.rank);
    w.str(s.name);
    w.num(s.t0);
    w.num(s.t1);
    w.num(s.lane);
  }
  w.num<int64_t>(r.faults.rerouted);
  w.num<int64_t>(r.faults.lost);
  w.num<int64_t>(r.faults.departed);
  w.num(r.faults.detect_s);
  w.nums(r.faults.first_lost);
  return std::move(w.out);
}

RankResult decode_rank_result(std::span<const uint8_t> bytes, int from_rank) {
  Reader in(bytes, from_rank);
  char magic[sizeof kMagic];
  in.raw(magic, sizeof magic, "magic");
  if (std::memcmp(magic, kMagic, sizeof kMagic) != 0) in.fail("does not start with \"EPRR\"");
  const auto version = in.num<uint32_t>("version");
  if (version != kRankResultVersion)
    in.fail("encoding version " + std::to_string(version) + ", this build reads version " +
            std::to_string(kRankResultVersion));
  RankResult r;
  r.rank = in.num<int32_t>("rank");
  RankRecord& rec = r.record;
  rec.notify = in.phases("record.notify");
  rec.dispatch = in.phases("record.dispatch");
  rec.combine = in.phases("record.combine");
  rec.recv_rows = in.nums<int64_t>("record.recv_rows");
  rec.slot_load = in.nums<int64_t>("record.slot_load");
  rec.err_sq = in.num<double>("record.err_sq");
  rec.ref_sq = in.num<double>("record.ref_sq");
  rec.max_abs_err = in.num<double>("record.max_abs_err");
  rec.mismatches = in.num<uint64_t>("record.mismatches");
  rec.nonfinite = in.num<uint64_t>("record.nonfinite");
  rec.elements = in.num<uint64_t>("record.elements");
  r.steps.step_s = in.nums<double>("steps.step_s");
  r.steps.compute_s = in.nums<double>("steps.compute_s");
  r.steps.allreduce_s = in.nums<double>("steps.allreduce_s");
  r.steps.ops.resize(in.count(4 * sizeof(int32_t) + 2 * sizeof(double), "steps.ops"));
  for (OverlapOp& o : r.steps.ops) {
    o.step = in.num<int32_t>("steps.ops.step");
    o.kind = in.num<int32_t>("steps.ops.kind");
    o.micro_batch = in.num<int32_t>("steps.ops.micro_batch");
    o.layer = in.num<int32_t>("steps.ops.layer");
    o.t0 = in.num<double>("steps.ops.t0");
    o.dur = in.num<double>("steps.ops.dur");
  }
  r.layer_time_s = in.nums<double>("layer_time_s");
  r.migration_time_s = in.nums<double>("migration_time_s");
  r.call_slot_load = in.nums<int32_t>("call_slot_load");
  r.deliveries.ranks = in.num<int32_t>("deliveries.ranks");
  r.deliveries.sent = in.digests("deliveries.sent");
  r.deliveries.got = in.digests("deliveries.got");
  r.payloads.recorded = in.num<uint8_t>("payloads.recorded") != 0;
  r.payloads.checksummed = in.num<uint8_t>("payloads.checksummed") != 0;
  r.payloads.phases.resize(in.count(sizeof(uint64_t), "payloads.phases"));
  for (std::string& p : r.payloads.phases) p = in.str("payloads.phases");
  r.payloads.sent = in.payloads("payloads.sent");
  r.payloads.got = in.payloads("payloads.got");
  r.payloads.tally_messages = in.num<uint64_t>("payloads.tally_messages");
  r.payloads.tally_bytes = in.num<uint64_t>("payloads.tally_bytes");
  r.layout_cache.hits = in.num<int64_t>("layout_cache.hits");
  r.layout_cache.misses = in.num<int64_t>("layout_cache.misses");
  r.layout_cache.notify_time_saved_s = in.num<double>("layout_cache.notify_time_saved_s");
  r.layout_cache.notify_time_missed_s = in.num<double>("layout_cache.notify_time_missed_s");
  r.spans.resize(in.count(2 * sizeof(int32_t) + sizeof(uint64_t) + 2 * sizeof(double), "spans"));
  for (TimelineSpan& s : r.spans) {
    s.rank = in.num<int32_t>("spans.rank");
    s.name = in.str("spans.name");
    s.t0 = in.num<double>("spans.t0");
    s.t1 = in.num<double>("spans.t1");
    s.lane = in.num<int32_t>("spans.lane");
  }
  r.faults.rerouted = in.num<int64_t>("faults.rerouted");
  r.faults.lost = in.num<int64_t>("faults.lost");
  r.faults.departed = in.num<int64_t>("faults.departed");
  r.faults.detect_s = in.num<double>("faults.detect_s");
  r.faults.first_lost = in.nums<int32_t>("faults.first_lost");
  in.finish();
  return r;
}

std::vector<RankResult> gather_rank_results(Fabric& f, RankResult mine, double timeout_s) {
  const Tag size_tag = make_tag(Phase::kUser, kGatherStep, 0, 0), data_tag = make_tag(Phase::kUser, kGatherStep, 0, 1);
  const int R = f.size();
  const std::vector<int> live = f.live_ranks();
  const int root = live.front();
  std::vector<int> peers(live.begin() + 1, live.end());
  f.set_phase("gather");
  const Deadline d = Deadline::after(f, timeout_s);
  if (f.rank() != root) {
    const std::vector<uint8_t> bytes = encode_rank_result(mine);
    const uint64_t n = bytes.size();
    Request reqs[2] = {f.isend(root, size_tag, ConstBuf{&n, sizeof n}),
                       f.isend(root, data_tag, ConstBuf{bytes.data(), bytes.size()})};
    f.wait_all(reqs, d);
    return {};
  }
  std::vector<uint64_t> sizes(R, 0);
  std::vector<Request> reqs;
  for (int p : peers) reqs.push_back(f.irecv(p, size_tag, MutBuf{&sizes[p], sizeof(uint64_t)}));
  f.wait_all(reqs, d);
  for (size_t i = 0; i < peers.size(); ++i)
    if (reqs[i].bytes() != sizeof(uint64_t))
      throw EplabError("gather: rank " + std::to_string(root) + ", peer " + std::to_string(peers[i]) +
                       ": result size message of " + std::to_string(reqs[i].bytes()) + " bytes, expected 8");
  std::vector<std::vector<uint8_t>> bytes(R);
  reqs.clear();
  for (int p : peers) {
    bytes[p].resize(sizes[p]);
    reqs.push_back(f.irecv(p, data_tag, MutBuf{bytes[p].data(), bytes[p].size()}));
  }
  f.wait_all(reqs, d);
  std::vector<RankResult> all(R);
  all[root] = std::move(mine);
  for (size_t i = 0; i < peers.size(); ++i) {
    const int p = peers[i];
    if (reqs[i].bytes() != sizes[p])
      throw EplabError("gather: rank " + std::to_string(root) + ", peer " + std::to_string(p) + ": result of " +
                       std::to_string(reqs[i].bytes()) + " bytes, announced " + std::to_string(sizes[p]));
    all[p] = decode_rank_result(bytes[p], p);
    if (all[p].rank != p)
      throw EplabError("gather: rank " + std::to_string(root) + ", peer " + std::to_string(p) + ": the result is rank " +
                       std::to_string(all[p].rank) + "'s");
  }
  return all;
}

}  // namespace eplab
