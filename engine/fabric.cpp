#include "engine/fabric.hpp"

#include <cstdio>
#include <cstring>
#include <vector>

namespace eplab {

Deadline Deadline::after(const Fabric& f, double seconds) { return Deadline{f.now() + seconds}; }

void ConstBuf::copy_to(void* dst) const {
  auto* out = static_cast<uint8_t*>(dst);
  const size_t head = head_bytes();
  if (head) std::memcpy(out, ptr, head);
  out += head;
  for (size_t i = 0; i < gather.count; ++i, out += gather.row_bytes) gather.copy_row(i, out);
}

void RowGather::copy_row(size_t i, void* dst) const {
  if (is_pulled(i))
    pulled[i].from->read(pulled[i].at, row_bytes, dst);
  else
    std::memcpy(dst, rows[i], row_bytes);
}

void Fabric::alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d) {
  alltoallv_live(sends, recvs, [&](std::span<const PeerSend> s, std::span<PeerRecv> r) {
    alltoallv_by_messages(tag, s, r, d, false);
  });
}

void Fabric::alltoallv_consume(Tag tag, std::span<const PeerSend>, std::span<PeerConsume>,
                               const std::function<void()>&, Deadline) {
  throw FabricError("alltoallv_consume: rank " + std::to_string(rank()) + ", tag " + describe_tag(tag) + ", phase " +
                    phase_ + ": this fabric copies every message into a receive buffer (caps().consume_in_place is "
                    "false); use alltoallv");
}

void Fabric::mark_failed(int rank) {
  if (rank < 0 || rank >= size())
    throw EplabError("mark_failed: rank " + std::to_string(rank) + " is outside 0.." + std::to_string(size() - 1));
  if (rank == this->rank())
    throw EplabError("mark_failed: rank " + std::to_string(rank) + " cannot mark itself failed");
  if (failed_.empty()) failed_.assign(size(), 0);
  failed_[rank] = 1;
}

std::vector<int> Fabric::live_ranks() const {
  std::vector<int> out;
  for (int r = 0; r < size(); ++r)
    if (live(r)) out.push_back(r);
  return out;
}

void Fabric::alltoallv_live(std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                            const std::function<void(std::span<const PeerSend>, std::span<PeerRecv>)>& run) {
  if (failed_.empty()) return run(sends, recvs);
  std::vector<PeerSend> live_sends;
  std::vector<PeerRecv> live_recvs;
  std::vector<size_t> at;  // index in `recvs` of each live receive
  for (const PeerSend& s : sends)
    if (live(s.peer)) live_sends.push_back(s);
  for (size_t i = 0; i < recvs.size(); ++i) {
    recvs[i].bytes = recvs[i].total_bytes = 0;
    if (!live(recvs[i].peer)) continue;
    live_recvs.push_back(recvs[i]);
    at.push_back(i);
  }
  run(live_sends, live_recvs);
  for (size_t j = 0; j < at.size(); ++j) recvs[at[j]] = live_recvs[j];
}

void Fabric::alltoallv_by_messages(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d,
                                   bool barrier_before_sends) {
  std::vector<Request> reqs;
  reqs.reserve(sends.size() + recvs.size());
  for (auto& r : recvs) reqs.push_back(irecv(r.peer, tag, r.data));
  if (barrier_before_sends) barrier();
  for (auto& s : sends) reqs.push_back(isend(s.peer, tag, s.data));
  wait_all(reqs, d);
  for (size_t i = 0; i < recvs.size(); ++i) {
    recvs[i].bytes = reqs[i].bytes();
    recvs[i].total_bytes = reqs[i].total_bytes();
  }
}

std::string describe_tag(Tag tag) {
  const char* phase = "?";
  switch (static_cast<Phase>(tag >> 56)) {
    case Phase::kNotify:
      phase = "notify";
      break;
    case Phase::kDispatch:
      phase = "dispatch";
      break;
    case Phase::kCombine:
      phase = "combine";
      break;
    case Phase::kForward:
      phase = "forward";
      break;
    case Phase::kAllgather:
      phase = "allgather";
      break;
    case Phase::kBarrier:
      phase = "barrier";
      break;
    case Phase::kUser:
      phase = "user";
      break;
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "0x%016llx (%s, step %u, layer %u, round %u)", static_cast<unsigned long long>(tag),
                phase, static_cast<unsigned>((tag >> 32) & 0xFFFFFF), static_cast<unsigned>((tag >> 16) & 0xFFFF),
                static_cast<unsigned>(tag & 0xFFFF));
  return buf;
}

void run_rank(int rank, const std::function<void()>& body, std::exception_ptr& error,
              const std::function<void(const std::string&)>& abort) {
  try {
    body();
  } catch (const std::exception& e) {
    error = std::current_exception();
    abort("rank " + std::to_string(rank) + " failed: " + e.what());
  }
}

void rethrow_first_rank_error(const std::vector<std::exception_ptr>& errors) {
  for (const std::exception_ptr& e : errors)
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const FabricError&) {
        continue;
      }
    }
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace eplab
