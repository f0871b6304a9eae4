#include "verbs/stream_set.hpp"

#include <cstdlib>
#include <cstring>
#include <thread>

#include "engine/error.hpp"
#include "engine/transport_fabric.hpp"

namespace eplab::verbs {
namespace {

constexpr size_t kPage = 4096;

// "rank 3" or "ranks 1, 3".
std::string ranks_text(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

}  // namespace

StreamMemory::StreamMemory(RingConfig cfg, int rank, int world)
    : cfg_(cfg), rank_(rank), world_(world), block_(nullptr, &std::free) {
  cfg_.check();
  area_ = (size_t{cfg_.slots} * cfg_.slot_bytes + kPage - 1) / kPage * kPage;
  // A ring and a staging area for every peer but this rank itself; at least one page, so a world of one still
  // registers something.
  bytes_ = std::max<size_t>(kPage, 2 * area_ * static_cast<size_t>(world - 1));
  block_.reset(static_cast<uint8_t*>(std::aligned_alloc(kPage, bytes_)));
  if (!block_)
    throw FabricError("verbs: rank " + std::to_string(rank) + " could not allocate " + std::to_string(bytes_) +
                      " bytes of rings and staging for " + std::to_string(world - 1) + " peers");
  std::memset(block_.get(), 0, bytes_);
}

uint8_t* StreamMemory::at(int peer, int half) {
  if (peer < 0 || peer >= world_ || peer == rank_)
    throw FabricError("verbs: rank " + std::to_string(rank_) + " keeps no ring for rank " + std::to_string(peer));
  const size_t index = static_cast<size_t>(peer < rank_ ? peer : peer - 1);
  return block_.get() + (2 * index + half) * area_;
}

StreamSet::StreamSet(StreamDevice& dev, StreamMemory& mem, int rank, int world)
    : dev_(dev), mem_(mem), rank_(rank), world_(world) {
  peers_.reserve(static_cast<size_t>(world));
  for (int p = 0; p < world; ++p) peers_.emplace_back(mem.config(), p);
  dev_.register_memory(mem_.data(), mem_.bytes());
}

void StreamSet::check_peer(int peer, const char* side) const {
  if (peer < 0 || peer >= world_)
    throw FabricError(std::string(side) + " rank " + std::to_string(peer) + ": no such rank (0.." +
                      std::to_string(world_ - 1) + ")");
}

void StreamSet::start(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs) {
  if (active_)
    throw FabricError("an earlier exchange over these streams (tag " + describe_tag(tag_) +
                      ") did not finish; the streams are out of step and cannot carry another");
  for (Peer& p : peers_) p.recv = -1;
  for (size_t j = 0; j < recvs.size(); ++j) {
    check_peer(recvs[j].peer, "a receive from");
    if (peers_[recvs[j].peer].recv >= 0)
      throw FabricError("two receives from rank " + std::to_string(recvs[j].peer) + " in one exchange");
    peers_[recvs[j].peer].recv = static_cast<int>(j);
    recvs[j].bytes = recvs[j].total_bytes = 0;
  }
  std::vector<char> seen(static_cast<size_t>(world_), 0);
  for (const PeerSend& s : sends) {
    check_peer(s.peer, "a send to");
    if (seen[s.peer]++) throw FabricError("two sends to rank " + std::to_string(s.peer) + " in one exchange");
  }
  if (seen[rank_] != (peers_[rank_].recv >= 0 ? 1 : 0))
    throw FabricError("rank " + std::to_string(rank_) + " " + (seen[rank_] ? "sends" : "expects") +
                      " a message to itself but " + (seen[rank_] ? "posts no receive for it" : "sends none"));
  tag_ = tag;
  recvs_ = recvs;
  open_sends_ = 0;
  open_recvs_ = recvs.size();
  flat_.clear();
  // From here on a failure leaves the streams out of step: the next start() refuses.
  active_ = true;
  for (const PeerSend& s : sends) {
    ConstBuf data = s.data;
    if (data.gathered()) {  // the rows are copied into staging chunk by chunk from one contiguous message
      std::vector<uint8_t>& f = flat_.emplace_back(data.bytes);
      data.copy_to(f.data());
      data = ConstBuf{f.data(), data.bytes, data.phantom_bytes};
    }
    if (s.peer == rank_) {
      PeerRecv& r = recvs[peers_[rank_].recv];
      if (data.bytes > r.data.capacity)
        throw FabricError("a message of " + std::to_string(data.bytes) + " bytes from rank " + std::to_string(rank_) +
                          " to itself exceeds the " + std::to_string(r.data.capacity) + "-byte receive buffer");
      if (data.bytes) std::memcpy(r.data.ptr, data.ptr, data.bytes);
      r.bytes = data.bytes;
      r.total_bytes = data.total();
      peers_[rank_].recv = -1;
      --open_recvs_;
      continue;
    }
    Peer& p = peers_[s.peer];
    p.open_send = p.tx.enqueue(tag, data.ptr, data.bytes, data.total());
    ++open_sends_;
  }
  // Messages that came ahead of this exchange (a peer already in it while this rank finished the last) wait.
  for (int p = 0; p < world_; ++p) fill(p);
}

bool StreamSet::step() {
  if (!active_) return true;
  for (int p = 0; p < world_; ++p) {
    if (p == rank_ || peers_[p].tx.queued_chunks() == 0) continue;
    for (const WriteOp& w : peers_[p].tx.ready(mem_.staging(p))) dev_.post_write(p, w);
  }
  completions_.clear();
  dev_.poll(completions_);
  for (const Completion& c : completions_) take(c);
  if (open_sends_ || open_recvs_) return false;
  active_ = false;
  return true;
}

void StreamSet::take(const Completion& c) {
  if (c.peer < 0 || c.peer >= world_ || c.peer == rank_)
    throw FabricError("verbs: rank " + std::to_string(rank_) + " got a completion from rank " + std::to_string(c.peer) +
                      ", which is not one of its peers");
  Peer& p = peers_[c.peer];
  switch (c.kind) {
    case Completion::kWriteDone:
      p.tx.on_write_complete(c.wr_id);
      for (uint64_t id : p.tx.take_completed()) {
        if (id != p.open_send)
          throw FabricError("verbs send to rank " + std::to_string(c.peer) + ": message " + std::to_string(id) +
                            " completed outside the exchange that sent it");
        p.open_send = 0;
        --open_sends_;
      }
      break;
    case Completion::kWriteImm:
      landed_.clear();
      p.rx.on_write_imm(c.imm, c.bytes, mem_.ring(c.peer), landed_);
      for (RdmaReceiver::Message& m : landed_) p.arrived.push_back(std::move(m));
      if (const uint32_t n = p.rx.take_credit_return()) dev_.post_credit(c.peer, n);
      fill(c.peer);
      break;
    case Completion::kCredit:
      p.tx.add_credits(c.imm);
      break;
  }
}

// Hands the peer's oldest arrived message to this exchange's receive from it. A stream carries the exchanges'
// messages in order, and ranks run the same exchanges in the same order, so the oldest one is this exchange's.
void StreamSet::fill(int peer) {
  Peer& p = peers_[peer];
  if (p.recv < 0 || p.arrived.empty()) return;
  RdmaReceiver::Message& m = p.arrived.front();
  if (m.tag != tag_)
    throw FabricError("verbs receive from rank " + std::to_string(peer) + ": a message tagged " + describe_tag(m.tag) +
                      " where tag " + describe_tag(tag_) + " was due (the two ranks' exchanges are out of step)");
  PeerRecv& r = recvs_[p.recv];
  if (m.data.size() > r.data.capacity)
    throw FabricError("verbs receive from rank " + std::to_string(peer) + ": message of " +
                      std::to_string(m.data.size()) + " bytes exceeds the " + std::to_string(r.data.capacity) +
                      "-byte receive buffer");
  if (!m.data.empty()) std::memcpy(r.data.ptr, m.data.data(), m.data.size());
  r.bytes = m.data.size();
  r.total_bytes = m.total_bytes;
  p.arrived.pop_front();
  p.recv = -1;
  --open_recvs_;
}

std::string StreamSet::waiting() const {
  std::vector<int> from, to;
  for (int p = 0; p < world_; ++p) {
    if (peers_[p].recv >= 0) from.push_back(p);
    if (peers_[p].open_send) to.push_back(p);
  }
  std::string s;
  if (!from.empty()) s += " with the messages from " + ranks_text(from) + " not arrived";
  if (!to.empty())
    s += std::string(s.empty() ? " with" : " and") + " the messages to " + ranks_text(to) +
         " not completed (chunks waiting for credits or write completions)";
  return s;
}

void run_exchange(StreamSet& streams, TransportFabric& f, Tag tag, std::span<const PeerSend> sends,
                  std::span<PeerRecv> recvs, Deadline d) {
  const std::string what = "alltoallv over verbs: rank " + std::to_string(f.rank()) + f.transport().endpoint() +
                           ", tag " + describe_tag(tag) + ", phase " + f.phase();
  bool caller = false;
  const double limit = f.limit_of(d, &caller);
  const auto named = [&](auto&& fn) {
    try {
      return fn();
    } catch (const FabricError& e) {
      throw FabricError(what + ": " + e.what());
    }
  };
  named([&] { streams.start(tag, sends, recvs); });
  while (!named([&] { return streams.step(); })) {
    f.check_wait(what, limit, caller, [&] { return streams.waiting(); });
    std::this_thread::yield();  // ranks may share cores
  }
}

}  // namespace eplab::verbs
