// The MPI transport: eplab's messages travel on a communicator duplicated for each launch and never freed, so
// nothing of an earlier launch (a late message, a failure notice) reaches a later one. MPI tags are too narrow for
// eplab's 64-bit tags, so a header (tag, real and modeled size) goes first and the bytes follow. Between processes of
// one machine the bytes of a message of 4096 bytes or more move with one copy that eplab makes itself (single
// copy, below); otherwise they follow as a second MPI message sent from the caller's buffer as it is. MPI's
// non-overtaking order per sender pairs each header with its bytes. The receiver reads the header and takes the
// bytes' envelope off MPI's queue with MPI_Mprobe, without the bytes: they are received (MPI_Mrecv) straight
// into the eplab receive's buffer, at once when it is posted, else when it is. A large send completes when the
// receiver has posted its receive (MPI's rendezvous), as MPI's own do.
//
// Single copy (cross-memory attach): the ranks of one machine learn each other's pids at launch and check once
// that each can read the others' memory (process_vm_readv). A send to such a peer then ships only a descriptor
// in its header: where its bytes lie in the sender, the head and each gathered row (RowGather) where they are.
// The receiver reads them with process_vm_readv straight into the posted receive's buffer (or, when the
// receive is not posted yet, keeps the descriptor until it is) and acknowledges on an MPI tag of that send's
// own; the send completes on the acknowledgment, so the sender's buffer stays put until it has been read. Each
// byte is copied once, rows included, where through MPI a gathered message is copied twice (made contiguous,
// then MPI's copy). Fabric::alltoallv_consume works here too (TransportCaps::consumes_remote, with single copy
// on): each message is received into a buffer of the transport's that its consuming receive holds until it lets
// the message go. A rank that fails tells every peer on a separate MPI tag, and their waits end with its
// message; a process that dies is reported by mpirun, which ends the job, unless it is a failed GPU's process
// under mpirun --enable-recovery (docs/faults.md): the others then run on without it.
#include <mpi.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/huge_pages.hpp"
#include "engine/transport_fabric.hpp"
#include "mpi/mpi_backend.hpp"
#include "verbs/verbs_transport.hpp"

namespace eplab {
namespace {

constexpr int kHeaderTag = 1;
constexpr int kFailureTag = 2;
constexpr int kDataTag = 3;
constexpr int kWithdrawTag = 4;  // a single-copy send's sender asks that its bytes be left unread
constexpr int kAckTagBase = 16;  // from here up: a single-copy send's acknowledgment, one tag per send
constexpr int kHeaderWords = 3;  // eplab tag, real bytes, real + modeled bytes
// A single-copy header: the three words, the send's number, the count of pairs, then address and length of
// each piece of the sender's memory, in message order. A pair (kProcessWord, pid) says that the pieces after it
// lie in that process of the machine instead: rows the sender forwards from a message it holds pulled
// (RowGather::pulled), which the receiver reads from their first sender.
constexpr int kDescriptorWords = 5;
constexpr uint64_t kProcessWord = ~uint64_t{0};

std::string mpi_text(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, static_cast<size_t>(len));
}

// Set when a launch ended with failed ranks (an injected GPU failure: the rank's process exited mid-run). Then
// this process leaves without MPI_Finalize: OpenMPI 4.1's finalize waits in a fence of every process of the job,
// and with one gone it can wait forever (seen here when survivors reached it right after the exit); under
// `mpirun --enable-recovery`, which a GPU failure on mpi requires, mpirun accepts an exit without it.
bool g_peer_exited = false;

// Every launch's communicator, kept until MPI_Finalize. A launch can end with messages of its own still on the
// way (a withdrawal whose send was read meanwhile, an acknowledgment or a failure notice that nobody waits for
// any more). Freed, its communicator's context id could go to the next launch's, where OpenMPI's per-peer
// sequence numbers would take such a late message for one of the new launch's, and hold the real one back as
// out of order, for good (a message lost under load in fabric_conformance_mpi_cma_all).
std::vector<MPI_Comm> g_launch_comms;

// MPI is initialized once per process, on first use, and finalized at exit (unless a peer exited, above).
void ensure_mpi() {
  int ready = 0;
  MPI_Initialized(&ready);
  if (ready) return;
  int provided = 0;
  if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    throw EplabError("backend 'mpi': MPI_Init_thread failed");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit([] {
    int done = 0;
    MPI_Finalized(&done);
    if (!done && !g_peer_exited) MPI_Finalize();
  });
}

// Copies the bytes of `pieces` of process `pid`'s memory, in order, to `into`, at most IOV_MAX pieces per call;
// a partial read goes on where it stopped. Returns 0, or the errno of the read that failed (ESRCH: the process
// is gone; EFAULT: the range is not mapped there; EPERM: not allowed to read it).
int read_peer_memory(pid_t pid, std::span<const iovec> pieces, uint8_t* into) {
  size_t next = 0, skip = 0;  // the first piece not read through, and its bytes already read
  iovec remote[IOV_MAX];
  while (next < pieces.size()) {
    size_t n = 0, want = 0;
    for (size_t i = next; i < pieces.size() && n < IOV_MAX; ++i, ++n) {
      const size_t from = i == next ? skip : 0;
      remote[n] = iovec{static_cast<uint8_t*>(pieces[i].iov_base) + from, pieces[i].iov_len - from};
      want += remote[n].iov_len;
    }
    iovec local{into, want};
    const ssize_t got = process_vm_readv(pid, &local, 1, remote, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return errno;
    if (got == 0) return EIO;
    into += got;
    for (size_t left = static_cast<size_t>(got); left > 0;) {
      const size_t rest = pieces[next].iov_len - skip;
      if (left < rest) {
        skip += left;
        break;
      }
      left -= rest;
      ++next;
      skip = 0;
    }
  }
  return 0;
}

// The single-copy path of a launch, as its bootstrap (setup_single_copy) agreed on it.
struct SingleCopy {
  bool on = false;
  std::vector<pid_t> pid;  // [rank]: the process of a rank of this machine (this one included), 0 for one elsewhere
  // Smaller messages take MPI's path, where their header and bytes go eagerly in two messages: below 4096 bytes
  // (OpenMPI 4.1's eager limit on one machine) that beat a descriptor, a read and an acknowledgment by 1.25-2.1x,
  // from 4096 on single copy was as fast or faster (bench_mpi_message_sizes, docs/architecture.md).
  // EPLAB_MPI_CMA_MIN sets another threshold.
  size_t min_bytes = 4096;
  std::string path;  // in words, for the console
};

// A peer's message whose header has been read and whose bytes wait: in MPI under a matched-probe handle, or
// (single copy) in the sender's memory, described by `pieces`. One that no receive ever takes (a run that
// failed) stays where it is; a single-copy one is acknowledged unread when dropped, so that its sender is not
// left waiting. A consume that pulls (RemoteBytes) reads a single-copy one in parts, and acknowledges it when it
// lets it go.
struct HeldMessage final : RemoteBytes {
  size_t bytes = 0;
  MPI_Message msg = MPI_MESSAGE_NULL;
  std::vector<iovec> pieces;
  std::vector<size_t> starts;  // single copy: where each piece starts in the message
  std::vector<pid_t> owner;    // single copy: the process each piece lies in (the sender's, or a forwarded row's)
  int dst = -1;                // the receiving rank
  Tag tag = 0;
  int src = -1;
  uint64_t seq = 0;
  bool settled = false;  // single copy: acknowledged, read or not; withdrawn: its sender took it back
  bool withdrawn = false;
  MPI_Comm comm = MPI_COMM_NULL;
  int ack_tag = 0;
  // Tells the sender its bytes will not be read again (a zero-byte message on the send's own tag).
  void settle() {
    settled = true;
    MPI_Request r;
    if (MPI_Isend(nullptr, 0, MPI_BYTE, src, ack_tag, comm, &r) == MPI_SUCCESS) MPI_Request_free(&r);
  }
  ~HeldMessage() override {
    if (!pieces.empty() && !settled) settle();
  }
  void read(size_t offset, size_t n, void* into) const override {
    const auto where = [&] {
      return "rank " + std::to_string(dst) + ", peer " + std::to_string(src) + ", tag " + describe_tag(tag);
    };
    if (withdrawn)
      throw FabricError("irecv: " + where() + ": the sender withdrew the message (its rank failed) while it was read");
    if (offset > bytes || n > bytes - offset)
      throw FabricError("irecv: " + where() + ": bytes [" + std::to_string(offset) + ", +" + std::to_string(n) +
                        ") of a " + std::to_string(bytes) + "-byte message");
    if (n == 0) return;
    std::vector<iovec> part;
    std::vector<pid_t> in;
    for_range(offset, n, [&](size_t i, size_t from, size_t take) {
      part.push_back(iovec{static_cast<uint8_t*>(pieces[i].iov_base) + from, take});
      in.push_back(owner[i]);
    });
    pid_t failed = 0;
    if (const int err = read_pieces(part, in, static_cast<uint8_t*>(into), failed))
      throw FabricError("process_vm_readv: " + where() + ": reading " + std::to_string(n) + " bytes from process " +
                        std::to_string(failed) + " failed: " + std::strerror(err));
  }
  bool locate(size_t offset, size_t n, std::vector<Piece>& out) const override {
    if (withdrawn || pieces.empty() || offset > bytes || n > bytes - offset) return false;
    for_range(offset, n, [&](size_t i, size_t from, size_t take) {
      out.push_back(Piece{owner[i], reinterpret_cast<uint64_t>(pieces[i].iov_base) + from, take});
    });
    return true;
  }
  // Reads `part` (part[i] in process in[i]) to `into`, one read per run of pieces in one process; the errno of a
  // read that failed, and its process in `failed`.
  static int read_pieces(std::span<const iovec> part, std::span<const pid_t> in, uint8_t* into, pid_t& failed) {
    for (size_t a = 0, b = 0; a < part.size(); a = b) {
      size_t run = 0;
      for (b = a; b < part.size() && in[b] == in[a]; ++b) run += part[b].iov_len;
      if (const int err = read_peer_memory(in[a], part.subspan(a, b - a), into)) {
        failed = in[a];
        return err;
      }
      into += run;
    }
    return 0;
  }

 private:
  // Calls f(piece, offset in it, bytes) for each piece that bytes [offset, offset + n) of the message cover.
  template <typename F>
  void for_range(size_t offset, size_t n, F&& f) const {
    size_t i = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), offset) - starts.begin()) - 1;
    for (size_t at = offset, left = n; left > 0; ++i) {
      const size_t from = at - starts[i], take = std::min(pieces[i].iov_len - from, left);
      f(i, from, take);
      at += take, left -= take;
    }
  }
};

// Buffers that consuming receives take their messages into (hold_for_consume), kept for the next ones (faulted
// in once, not on every exchange). A taken buffer goes back when its last holder lets it go.
class ScratchPool {
 public:
  std::shared_ptr<std::vector<uint8_t>> take(size_t bytes) {
    std::vector<uint8_t> v;
    {
      std::lock_guard<std::mutex> lock(state_->m);
      std::vector<std::vector<uint8_t>>& free = state_->free;
      // The smallest that holds `bytes`, else the largest (it grows least).
      const auto rank = [bytes](const std::vector<uint8_t>& b) {
        const size_t c = b.capacity();
        return c >= bytes ? std::pair{0, c} : std::pair{1, SIZE_MAX - c};
      };
      const auto best =
          std::min_element(free.begin(), free.end(), [&](const auto& x, const auto& y) { return rank(x) < rank(y); });
      if (best != free.end()) {
        v = std::move(*best);
        free.erase(best);
      }
    }
    resize_huge(v, bytes);
    return std::shared_ptr<std::vector<uint8_t>>(new std::vector<uint8_t>(std::move(v)),
                                                 [state = state_](std::vector<uint8_t>* p) {
                                                   {
                                                     std::lock_guard<std::mutex> lock(state->m);
                                                     state->free.push_back(std::move(*p));
                                                   }
                                                   delete p;
                                                 });
  }

 private:
  struct State {
    std::mutex m;
    std::vector<std::vector<uint8_t>> free;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

class MpiTransport;

// A send in flight: its header (the bytes are the caller's until the send completes), or a failure notice.
// A single-copy send also waits for its acknowledgment (ack); dropped before it came (its rank unwinds), it is
// withdrawn first (MpiTransport::withdraw), so that nobody reads its bytes once they are gone.
struct Outgoing {
  std::vector<uint64_t> header;
  std::vector<uint8_t> frame;
  MPI_Request req = MPI_REQUEST_NULL;
  MPI_Request data_req = MPI_REQUEST_NULL;
  MPI_Request ack = MPI_REQUEST_NULL;
  MpiTransport* via = nullptr;
  int peer = -1;
  ~Outgoing();
};

class MpiTransport final : public Transport {
 public:
  // `t0`: MPI_Wtime() when the launch started, the zero of now() and of the domain's waits.
  MpiTransport(Domain& domain, MPI_Comm comm, int rank, double t0, SingleCopy single_copy)
      : domain_(domain),
        comm_(comm),
        rank_(rank),
        t0_(t0),
        single_copy_(std::move(single_copy)),
        failed_peers_(static_cast<size_t>(domain.world_size()), 0) {
    int* ub = nullptr;
    int flag = 0;
    MPI_Comm_get_attr(comm_, MPI_TAG_UB, &ub, &flag);
    ack_tags_ = (flag ? *ub : 32767) - kAckTagBase + 1;
  }
  ~MpiTransport() override {
    // Failure notices and withdrawals that could not be delivered (the peer is gone) are abandoned.
    for (Outgoing& o : notices_)
      if (o.req != MPI_REQUEST_NULL) MPI_Request_free(&o.req);
  }
  TransportCaps caps() const override {
    TransportCaps c;
    c.gather_send = gather_ || single_copy_.on;
    c.consumes_remote = single_copy_.on;
    c.forwards_pulled = single_copy_.on;
    return c;
  }
  double now() const override { return MPI_Wtime() - t0_; }

  void post_send(SendOp& op, ConstBuf data) override {
    if (op.peer == rank_) {  // to itself: straight into its own matcher
      Arrival a{rank_, op.tag, data.ptr, data.bytes, data.total(), nullptr, data.gather};
      if (op.lend) {  // read where it lies by a consuming receive; done when that lets it go
        a.lender = &op;
        domain_.deliver(rank_, *this, std::move(a));
        return;
      }
      domain_.deliver(rank_, *this, std::move(a));
      SyncLock lock(domain_.sync());
      op.done = true;
      return;
    }
    if (single_copy_.on && single_copy_.pid[op.peer] && data.bytes >= std::max<size_t>(single_copy_.min_bytes, 1))
      return post_single_copy(op, data);
    if (data.bytes > static_cast<size_t>(std::numeric_limits<int>::max()))
      throw FabricError("isend: rank " + std::to_string(rank_) + ", peer " + std::to_string(op.peer) + ": " +
                        std::to_string(data.bytes) + " bytes exceed one MPI message's count");
    if (data.gathered() && (!gather_ || data.gather.pulled)) {  // through MPI: made contiguous here
      op.flat.resize(data.bytes);
      data.copy_to(op.flat.data());
      data = ConstBuf{op.flat.data(), data.bytes, data.phantom_bytes};
    }
    auto out = std::make_shared<Outgoing>();
    out->header = {op.tag, data.bytes, data.total()};
    check(MPI_Isend(out->header.data(), kHeaderWords, MPI_UINT64_T, op.peer, kHeaderTag, comm_, &out->req), "MPI_Isend",
          op.peer, op.tag);
    if (data.gathered()) {
      // A gather send: one derived datatype over the head and the rows where they lie (MPI_BOTTOM-relative).
      std::vector<int> lens;
      std::vector<MPI_Aint> at;
      const auto add = [&](const void* p, size_t n) {
        MPI_Aint a = 0;
        MPI_Get_address(p, &a);
        lens.push_back(static_cast<int>(n));
        at.push_back(a);
      };
      if (data.head_bytes()) add(data.ptr, data.head_bytes());
      for (size_t i = 0; i < data.gather.count; ++i) add(data.gather.rows[i], data.gather.row_bytes);
      MPI_Datatype type;
      check(MPI_Type_create_hindexed(static_cast<int>(lens.size()), lens.data(), at.data(), MPI_BYTE, &type),
            "MPI_Type_create_hindexed", op.peer, op.tag);
      MPI_Type_commit(&type);
      check(MPI_Isend(MPI_BOTTOM, 1, type, op.peer, kDataTag, comm_, &out->data_req), "MPI_Isend", op.peer, op.tag);
      MPI_Type_free(&type);  // MPI keeps it until the send completes
    } else if (data.bytes) {
      check(MPI_Isend(data.ptr, static_cast<int>(data.bytes), MPI_BYTE, op.peer, kDataTag, comm_, &out->data_req),
            "MPI_Isend", op.peer, op.tag);
    }
    op.transfer = std::move(out);
  }

  // A receive matched in the matcher: a message from this rank itself (copied from the sender's buffer, or from
  // the copy retain kept), or a peer's that arrived before the receive (its bytes still in MPI under a
  // matched-probe handle, or in the sender's memory, moved into the receive's buffer now).
  void on_match(RecvOp& op, Arrival& a) override {
    if (auto* held = a.bytes && !a.data ? static_cast<HeldMessage*>(a.owner.get()) : nullptr)
      receive_held(*held, op.buf.ptr, a.tag);
    else if (a.bytes)
      a.copy_to(op.buf.ptr);
    op.done = true;
  }

  // A consuming receive (Fabric::alltoallv_consume) met a peer's message: it is received now, as any receive's
  // would be, into a buffer of this transport's that the receive holds until it lets the message go; or, for a
  // receive that pulls, a single-copy message stays where its sender holds it and is read in parts (a.remote).
  void hold_for_consume(Arrival& a, bool pull) override {
    auto* held = a.bytes && !a.data ? static_cast<HeldMessage*>(a.owner.get()) : nullptr;
    if (!held) return Transport::hold_for_consume(a, pull);
    if (pull && !held->pieces.empty()) {
      // Kept findable for its sender's withdrawal until it is let go; entries of messages gone are dropped as
      // the map grows.
      if (held_.size() >= prune_at_) {
        std::erase_if(held_, [](const auto& e) { return e.second.expired(); });
        prune_at_ = std::max<size_t>(64, 2 * held_.size());
      }
      held_[{held->src, held->seq}] = std::shared_ptr<HeldMessage>(a.owner, held);
      a.remote = held;
      return;
    }
    std::shared_ptr<std::vector<uint8_t>> buf = scratch_.take(a.bytes);
    receive_held(*held, buf->data(), a.tag);
    a.data = buf->data();
    a.owner = std::move(buf);
  }

  bool test(RequestState& s) override {
    if (s.done) return true;
    auto* op = dynamic_cast<SendOp*>(&s);
    if (!op) return false;  // receives complete at the match, in progress()
    auto* out = static_cast<Outgoing*>(op->transfer.get());
    MPI_Request reqs[3] = {out->req, out->data_req, out->ack};
    int flag = 0;
    check(MPI_Testall(3, reqs, &flag, MPI_STATUSES_IGNORE), "MPI_Testall", op->peer, op->tag);
    out->req = reqs[0];
    out->data_req = reqs[1];
    out->ack = reqs[2];
    if (!flag) return false;
    op->transfer.reset();
    op->done = true;
    return true;
  }

  // Takes in whatever has arrived: each message's header, its bytes received into a posted receive's buffer or
  // left where they are for the receive to come; a failure notice fails the run here too.
  void progress() override {
    for (;;) {
      int flag = 0;
      MPI_Status st;
      check(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st), "MPI_Iprobe", -1, 0);
      if (!flag) return;
      const int src = st.MPI_SOURCE;
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      if (st.MPI_TAG == kFailureTag) {
        std::string why(static_cast<size_t>(count), '\0');
        check(MPI_Recv(why.data(), count, MPI_BYTE, src, kFailureTag, comm_, MPI_STATUS_IGNORE), "MPI_Recv", src, 0);
        failed_peers_[src] = 1;
        domain_.fail(why);
        continue;
      }
      if (st.MPI_TAG == kWithdrawTag && count == 8) {
        uint64_t seq = 0;
        check(MPI_Recv(&seq, 1, MPI_UINT64_T, src, kWithdrawTag, comm_, MPI_STATUS_IGNORE), "MPI_Recv", src, 0);
        withdrawn(src, seq);
        continue;
      }
      const int words = count / 8;
      const bool descriptor = words >= kDescriptorWords && count % 8 == 0;
      if (st.MPI_TAG != kHeaderTag || (count != kHeaderWords * 8 && !descriptor))
        throw FabricError("rank " + std::to_string(rank_) + ": a " + std::to_string(count) + "-byte MPI message (tag " +
                          std::to_string(st.MPI_TAG) + ") from rank " + std::to_string(src) +
                          " where an eplab header was due");
      std::vector<uint64_t> header(static_cast<size_t>(words));
      check(MPI_Recv(header.data(), words, MPI_UINT64_T, src, kHeaderTag, comm_, MPI_STATUS_IGNORE), "MPI_Recv", src,
            0);
      const Tag tag = header[0];
      const size_t bytes = header[1];
      auto held = std::make_shared<HeldMessage>();
      held->bytes = bytes;
      held->src = src;
      held->dst = rank_;
      held->tag = tag;
      if (descriptor) {
        read_descriptor(*held, header);
      } else {
        if (bytes > static_cast<size_t>(std::numeric_limits<int>::max()))
          throw FabricError("rank " + std::to_string(rank_) + ": header from rank " + std::to_string(src) +
                            " announces " + std::to_string(bytes) + " bytes");
        if (bytes == 0) {  // nothing follows the header
          domain_.deliver(rank_, *this, Arrival{src, tag, nullptr, 0, header[2], nullptr});
          continue;
        }
        // The bytes' envelope follows the header (non-overtaking); take it off MPI's queue, the bytes stay put.
        check(MPI_Mprobe(src, kDataTag, comm_, &held->msg, MPI_STATUS_IGNORE), "MPI_Mprobe", src, tag);
      }
      const std::shared_ptr<RecvOp> op = domain_.claim(rank_, src, tag, bytes, header[2]);
      if (op && op->copying) {  // posted: the bytes go where they belong, or to be consumed (hold_for_consume)
        try {
          if (op->consume) {
            Arrival a{src, tag, nullptr, bytes, header[2], std::move(held)};
            hold_for_consume(a, op->pull);
            op->msg = std::move(a);
          } else {
            receive_held(*held, op->buf.ptr, tag);
          }
        } catch (const FabricError&) {
          domain_.finish_copy(*op);  // no copy under way any more: the receive may be withdrawn as this rank unwinds
          throw;
        }
        domain_.finish_copy(*op);
        continue;
      }
      if (op) {  // matched a receive too small for it: that receive has failed, the bytes are dropped
        if (!held->pieces.empty()) {
          held->settle();
        } else {
          std::vector<uint8_t> drop(bytes);
          receive_held(*held, drop.data(), tag);
        }
        continue;
      }
      // Not posted yet: the matcher keeps the message (no bytes: data is null) until a receive takes it.
      if (!held->pieces.empty()) held_[{src, held->seq}] = held;
      domain_.deliver(rank_, *this, Arrival{src, tag, nullptr, bytes, header[2], std::move(held)});
    }
  }

  // What a transport over this one adds (launch_mpi_process's hooks): its extensions and endpoint.
  void set_add_on(MpiAddOn* add_on) { add_on_ = add_on; }
  void* extension(ExtensionId id) override { return add_on_ ? add_on_->extension(id) : nullptr; }
  std::string endpoint() const override { return add_on_ ? add_on_->endpoint() : ""; }

  // Networked: nobody wakes this rank, so poll the network again soon.
  void block(Domain& d, RequestState&, double until_s) override { d.sync().wait(std::min(until_s, now() + 50e-6)); }

  // Tells every peer why this rank failed, and gives the notices a moment to leave.
  void tell_failure(const std::string& why) {
    int n = 0;
    MPI_Comm_size(comm_, &n);
    for (int p = 0; p < n; ++p) {
      if (p == rank_) continue;
      Outgoing& o = notices_.emplace_back();
      o.frame.assign(why.begin(), why.end());
      MPI_Isend(o.frame.data(), static_cast<int>(o.frame.size()), MPI_BYTE, p, kFailureTag, comm_, &o.req);
    }
    const double until = now() + 1.0;
    for (Outgoing& o : notices_) {
      int flag = 0;
      while (o.req != MPI_REQUEST_NULL && now() < until) {
        MPI_Test(&o.req, &flag, MPI_STATUS_IGNORE);
        if (!flag) std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
  }

  // A single-copy send dropped before its acknowledgment came (its rank is unwinding, its buffer about to go):
  // asks the receiver to leave the bytes unread and waits for its answer (the acknowledgment: the bytes were
  // read already, or will not be), taking in what arrives meanwhile, so that a peer withdrawing its own sends to
  // this rank is answered too. A peer that has told its failure reads nothing more; one that never answers is
  // given up after the run's timeout. Never throws: it runs while a rank unwinds.
  void withdraw(Outgoing& o) noexcept {
    Outgoing& ask = notices_.emplace_back();
    ask.header = {o.header[3]};
    MPI_Isend(ask.header.data(), 1, MPI_UINT64_T, o.peer, kWithdrawTag, comm_, &ask.req);
    const double until = now() + domain_.timeout_s();
    for (;;) {
      int flag = 0;
      if (MPI_Test(&o.ack, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || flag) return;
      if (failed_peers_[o.peer] || now() > until) break;
      try {
        progress();
      } catch (const std::exception&) {  // the run has failed already: only the answer matters here
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    MPI_Cancel(&o.ack);
    MPI_Request_free(&o.ack);
    if (o.req != MPI_REQUEST_NULL) {  // the header is still leaving (a peer gone): kept until this transport goes
      Outgoing& keep = notices_.emplace_back();
      keep.header = std::move(o.header);
      keep.req = o.req;
      o.req = MPI_REQUEST_NULL;
    }
  }

 private:
  int ack_tag(uint64_t seq) const { return kAckTagBase + static_cast<int>(seq % static_cast<uint64_t>(ack_tags_)); }

  // A send to a peer of this machine: the header describes where the bytes lie, the receiver reads them from
  // there, and the send completes on its acknowledgment.
  void post_single_copy(SendOp& op, const ConstBuf& data) {
    auto out = std::make_shared<Outgoing>();
    out->via = this;
    out->peer = op.peer;
    const uint64_t seq = next_seq_++;
    out->header = {op.tag, data.bytes, data.total(), seq, 0};
    const int64_t me = single_copy_.pid[rank_];
    int64_t in = me;  // the process of the pieces added last
    const auto add = [&](int64_t process, uint64_t at, size_t n) {
      std::vector<uint64_t>& h = out->header;
      if (process != in) {
        h.push_back(kProcessWord);
        h.push_back(static_cast<uint64_t>(process));
        in = process;
      } else if (h.size() > kDescriptorWords && h[h.size() - 2] + h.back() == at) {
        h.back() += n;  // follows the last piece: one read
        return;
      }
      h.push_back(at);
      h.push_back(n);
    };
    const auto add_here = [&](const void* p, size_t n) { add(me, reinterpret_cast<uint64_t>(p), n); };
    if (data.head_bytes()) add_here(data.ptr, data.head_bytes());
    std::vector<RemoteBytes::Piece> located;
    for (size_t i = 0; i < data.gather.count; ++i) {
      if (!data.gather.is_pulled(i)) {
        add_here(data.gather.rows[i], data.gather.row_bytes);
        continue;
      }
      located.clear();
      const PulledRow& r = data.gather.pulled[i];
      if (!r.from->locate(r.at, data.gather.row_bytes, located)) {  // cannot be named: copied here, sent from here
        op.flat.resize(data.bytes);
        data.copy_to(op.flat.data());
        out->header.resize(kDescriptorWords);
        in = me;
        add_here(op.flat.data(), data.bytes);
        break;
      }
      for (const RemoteBytes::Piece& p : located) add(p.process, p.address, p.bytes);
    }
    out->header[4] = (out->header.size() - kDescriptorWords) / 2;
    if (out->header.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
      throw FabricError("isend: rank " + std::to_string(rank_) + ", peer " + std::to_string(op.peer) + ": " +
                        std::to_string(out->header[4]) + " gathered rows exceed one MPI message's count");
    // The acknowledgment's receive first: it can then never arrive unexpected.
    check(MPI_Irecv(nullptr, 0, MPI_BYTE, op.peer, ack_tag(seq), comm_, &out->ack), "MPI_Irecv", op.peer, op.tag);
    check(MPI_Isend(out->header.data(), static_cast<int>(out->header.size()), MPI_UINT64_T, op.peer, kHeaderTag, comm_,
                    &out->req),
          "MPI_Isend", op.peer, op.tag);
    op.transfer = std::move(out);
  }

  void read_descriptor(HeldMessage& m, const std::vector<uint64_t>& header) {
    const size_t pairs = header[4];
    size_t sum = 0;
    pid_t in = single_copy_.pid[m.src];
    bool readable = in != 0;  // every piece in a process of this machine
    if (pairs * 2 + kDescriptorWords == header.size()) {
      for (size_t i = 0; i < pairs; ++i) {
        const uint64_t at = header[kDescriptorWords + 2 * i], n = header[kDescriptorWords + 2 * i + 1];
        if (at == kProcessWord) {
          in = static_cast<pid_t>(n);
          readable = readable && n != 0 &&
                     std::find(single_copy_.pid.begin(), single_copy_.pid.end(), in) != single_copy_.pid.end();
          continue;
        }
        m.pieces.push_back(iovec{reinterpret_cast<void*>(at), static_cast<size_t>(n)});
        m.starts.push_back(sum);
        m.owner.push_back(in);
        sum += n;
      }
    }
    if (m.pieces.empty() || sum != m.bytes || !readable)
      throw FabricError("rank " + std::to_string(rank_) + ": a single-copy header from rank " + std::to_string(m.src) +
                        " (tag " + describe_tag(header[0]) + ") describes " + std::to_string(m.pieces.size()) +
                        " pieces of " + std::to_string(sum) + " bytes for a message of " + std::to_string(m.bytes) +
                        (readable ? "" : ", in a process this rank cannot read"));
    m.seq = header[3];
    m.comm = comm_;
    m.ack_tag = ack_tag(m.seq);
  }

  // A peer took back a single-copy send this rank holds unread: it is never read, and the peer is answered.
  // One read already was acknowledged then, and is not answered twice.
  void withdrawn(int src, uint64_t seq) {
    const auto it = held_.find({src, seq});
    if (it == held_.end()) return;
    if (const std::shared_ptr<HeldMessage> m = it->second.lock(); m && !m->settled) {
      m->withdrawn = true;
      m->settle();
    }
    held_.erase(it);
  }

  void receive_held(HeldMessage& m, void* into, Tag tag) {
    const std::string where =
        "rank " + std::to_string(rank_) + ", peer " + std::to_string(m.src) + ", tag " + describe_tag(tag);
    if (m.withdrawn)
      throw FabricError("irecv: " + where + ": the sender withdrew the message (its rank failed) before it was read");
    if (m.pieces.empty()) {
      if (m.msg == MPI_MESSAGE_NULL) throw FabricError("irecv: " + where + ": the message was received twice");
      check(MPI_Mrecv(into, static_cast<int>(m.bytes), MPI_BYTE, &m.msg, MPI_STATUS_IGNORE), "MPI_Mrecv", m.src, tag);
      return;
    }
    if (m.settled) throw FabricError("irecv: " + where + ": the message was received twice");
    held_.erase({m.src, m.seq});
    pid_t failed = 0;
    const int err = HeldMessage::read_pieces(m.pieces, m.owner, static_cast<uint8_t*>(into), failed);
    m.settle();  // read or not, the sender is not kept waiting: a failed read fails the run below
    if (err)
      throw FabricError("process_vm_readv: " + where + ": reading " + std::to_string(m.bytes) + " bytes from process " +
                        std::to_string(failed) + " failed: " + std::strerror(err));
  }

  void check(int code, const char* call, int peer, Tag tag) const {
    if (code != MPI_SUCCESS)
      throw FabricError(std::string(call) + ": rank " + std::to_string(rank_) + ", peer " + std::to_string(peer) +
                        ", tag " + describe_tag(tag) + ": " + mpi_text(code));
  }

  Domain& domain_;
  MPI_Comm comm_;
  int rank_;
  double t0_;
  SingleCopy single_copy_;
  std::vector<char> failed_peers_;  // [rank]: has sent its failure notice
  int ack_tags_ = 0;                // acknowledgment tags there are (MPI_TAG_UB)
  uint64_t next_seq_ = 0;           // this rank's single-copy sends so far
  // Single-copy messages held unread, by sender and number, for their sender's withdrawal.
  std::map<std::pair<int, uint64_t>, std::weak_ptr<HeldMessage>> held_;
  size_t prune_at_ = 64;  // held_'s size at which entries of messages let go are dropped
  std::deque<Outgoing> notices_;
  ScratchPool scratch_;
  MpiAddOn* add_on_ = nullptr;
  // Gather sends as MPI derived datatypes (EPLAB_MPI_GATHER=1) where single copy does not reach. Off by
  // default: on one machine OpenMPI 4.1 moves a non-contiguous message through vader's copy-in/copy-out
  // fragments, not its single copy, and a dispatch took about twice as long as gathering the rows into a send
  // buffer and sending that contiguous (16 ranks x 1024 tokens, docs/architecture.md). Between machines a
  // network that gathers may do better.
  bool gather_ = [] {
    const char* e = std::getenv("EPLAB_MPI_GATHER");
    return e && std::string(e) == "1";
  }();
};

Outgoing::~Outgoing() {
  if (ack != MPI_REQUEST_NULL) via->withdraw(*this);
}

// The launch's communicator as a transport's bootstrap sees it.
class ProcessGroup final : public MpiProcessGroup {
 public:
  explicit ProcessGroup(MPI_Comm comm) : comm_(comm) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank_);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
    char name[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    MPI_Get_processor_name(name, &len);
    host_.assign(name, static_cast<size_t>(len));
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string host() const override { return host_; }
  void broadcast(void* data, size_t bytes, int root) override {
    if (MPI_Bcast(data, static_cast<int>(bytes), MPI_BYTE, root, comm_) != MPI_SUCCESS)
      throw EplabError("rank " + std::to_string(rank_) + ": MPI_Bcast of " + std::to_string(bytes) +
                       " bootstrap bytes from rank " + std::to_string(root) + " failed");
  }
  void allgather(const void* mine, size_t bytes, void* all) override {
    if (MPI_Allgather(mine, static_cast<int>(bytes), MPI_BYTE, all, static_cast<int>(bytes), MPI_BYTE, comm_) !=
        MPI_SUCCESS)
      throw EplabError("rank " + std::to_string(rank_) + ": MPI_Allgather of " + std::to_string(bytes) +
                       " bootstrap bytes per process failed");
  }
  int max_over_ranks(int value) override {
    int out = value;
    if (MPI_Allreduce(&value, &out, 1, MPI_INT, MPI_MAX, comm_) != MPI_SUCCESS)
      throw EplabError("rank " + std::to_string(rank_) + ": MPI_Allreduce in the bootstrap failed");
    return out;
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 0, local_rank_ = 0, local_size_ = 0;
  std::string host_;
};

// A word every process of a launch can be read at: each reads it from the others of its machine at launch.
const uint64_t g_probe_word = 0x616d'6362'616c'7065;  // "eplabcma"

// Agrees on the launch's single-copy path (collective): the pids of the processes of this machine, and whether
// every process can read every other's memory there (one probe read of g_probe_word from each), else why not.
SingleCopy setup_single_copy(MPI_Comm comm, int rank, int size) {
  SingleCopy sc;
  sc.pid.assign(static_cast<size_t>(size), 0);
  const std::string env = std::getenv("EPLAB_MPI_CMA") ? std::getenv("EPLAB_MPI_CMA") : "1";
  if (env != "0" && env != "1")
    throw EplabError(
        "EPLAB_MPI_CMA must be 1 (single copy where it works, the default) or 0 (every message "
        "through MPI), not '" +
        env + "'");
  const bool wanted = env == "1";
  if (const char* m = std::getenv("EPLAB_MPI_CMA_MIN")) {
    char* end = nullptr;
    errno = 0;
    sc.min_bytes = std::strtoull(m, &end, 10);
    if (!*m || *end || errno || m[0] == '-')
      throw EplabError(std::string("EPLAB_MPI_CMA_MIN must be a whole number of bytes, not '") + m + "'");
  }
  // Where Yama restricts ptrace (ptrace_scope 1) only a process's ancestors may read it; this lets the launch's
  // other processes. It fails harmlessly without Yama.
  prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  MPI_Comm local;
  if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local) != MPI_SUCCESS)
    throw EplabError("rank " + std::to_string(rank) + ": MPI_Comm_split_type in the bootstrap failed");
  int local_size = 0;
  MPI_Comm_size(local, &local_size);
  const uint64_t mine[3] = {static_cast<uint64_t>(rank), static_cast<uint64_t>(getpid()),
                            reinterpret_cast<uint64_t>(&g_probe_word)};
  std::vector<uint64_t> all(3 * static_cast<size_t>(local_size));
  const int gathered = MPI_Allgather(mine, 3, MPI_UINT64_T, all.data(), 3, MPI_UINT64_T, local);
  MPI_Comm_free(&local);
  if (gathered != MPI_SUCCESS)
    throw EplabError("rank " + std::to_string(rank) + ": MPI_Allgather in the bootstrap failed");
  int err = 0;
  for (size_t i = 0; wanted && i < all.size(); i += 3) {
    const auto peer = static_cast<int>(all[i]);
    const auto pid = static_cast<pid_t>(all[i + 1]);
    sc.pid[static_cast<size_t>(peer)] = pid;
    if (peer == rank) continue;
    uint64_t got = 0;
    const iovec word{reinterpret_cast<void*>(all[i + 2]), sizeof got};
    int e = read_peer_memory(pid, {&word, 1}, reinterpret_cast<uint8_t*>(&got));
    if (!e && got != g_probe_word) e = EIO;
    if (!err) err = e;
  }
  int vote[3] = {wanted ? 0 : 1, err, local_size}, agreed[3] = {0, 0, 0};
  if (MPI_Allreduce(vote, agreed, 3, MPI_INT, MPI_MAX, comm) != MPI_SUCCESS)
    throw EplabError("rank " + std::to_string(rank) + ": MPI_Allreduce in the bootstrap failed");
  sc.on = agreed[0] == 0 && agreed[1] == 0 && agreed[2] > 1;
  if (sc.on) {
    sc.path = "messages of " + std::to_string(std::max<size_t>(sc.min_bytes, 1)) +
              " bytes or more between processes of one machine move by single copy (process_vm_readv)";
    return sc;
  }
  sc.pid.assign(static_cast<size_t>(size), 0);
  sc.path = std::string("every message moves through MPI: single copy is off (") +
            (agreed[0]       ? "EPLAB_MPI_CMA=0"
             : agreed[2] < 2 ? "no two processes share a machine"
                             : "a probe read of a peer's memory failed: " + std::string(std::strerror(agreed[1]))) +
            ")";
  return sc;
}

}  // namespace

int mpi_world_size() {
  int ready = 0;
  MPI_Initialized(&ready);
  if (ready) {
    int n = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
  }
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return 1;  // started without a launcher: a world of one
}

void launch_mpi_process(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main,
                        const MpiLaunchHooks& hooks) {
  const std::string backend = "backend '" + hooks.backend + "'";
  if (opts.phantom_payload) throw EplabError(backend + " moves real bytes only; phantom payloads need --backend=sim");
  ensure_mpi();
  int n = 0, me = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  if (n != topo.size())
    throw EplabError(backend + " runs one rank per MPI process: this run has " + std::to_string(topo.size()) +
                     " ranks (" + std::to_string(topo.nodes()) + " nodes x " + std::to_string(topo.gpus_per_node()) +
                     " GPUs) but " + std::to_string(n) + " MPI processes were started; run it as mpirun -n " +
                     std::to_string(topo.size()) + " ...");
  MPI_Comm comm;
  if (MPI_Comm_dup(MPI_COMM_WORLD, &comm) != MPI_SUCCESS) throw EplabError(backend + ": MPI_Comm_dup failed");
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  g_launch_comms.push_back(comm);  // never freed (above)
  std::unique_ptr<MpiAddOn> add_on;
  if (hooks.setup) {
    ProcessGroup group(comm);
    add_on = hooks.setup(group);
  }
  // The plain mpi transport only: an add-on (NCCL, CUDA IPC) moves each all-to-all-v's payload itself, and the
  // messages left to MPI are small.
  SingleCopy single_copy;
  single_copy.pid.assign(static_cast<size_t>(n), 0);
  if (!hooks.setup) {
    single_copy = setup_single_copy(comm, me, n);
    if (me == 0) std::fprintf(stderr, "%s: %s\n", backend.c_str(), single_copy.path.c_str());
  }
  std::exception_ptr error;
  {
    const double t0 = MPI_Wtime();
    Domain domain(n, 1, me, make_thread_sync([t0] { return MPI_Wtime() - t0; }), opts.timeout_s);
    MpiTransport t(domain, comm, me, t0, std::move(single_copy));
    t.set_add_on(add_on.get());
    TransportFabric f(domain, t, me, topo);
    run_rank(
        me, [&] { rank_main(f); }, error, [&](const std::string& why) { t.tell_failure(why); });
    if (f.live_ranks().size() < static_cast<size_t>(n)) g_peer_exited = true;
    if (add_on) add_on->launch_ended(error || f.live_ranks().size() < static_cast<size_t>(n));
  }
  add_on.reset();  // before the communicator goes: an add-on may hold resources tied to the launch
  if (error) std::rethrow_exception(error);
}

namespace {

class MpiBackend : public Backend {
 public:
  std::string name() const override { return "mpi"; }
  std::string description() const override {
    return "ranks as MPI processes (mpirun -n N), real bytes, wall clock, one machine or several";
  }
  Caps caps() const override { return Caps{}; }
  int fixed_world_size() const override { return mpi_world_size(); }
  bool in_process() const override { return false; }
  // `--transport verbs` adds the verbs transport's all-to-all-v (verbs/verbs_transport.hpp).
  void use_transport(const std::string& transport) override {
    if (verbs::parse_mpi_transport(transport, verbs::verbs_built()) == verbs::MpiTransport::kVerbs)
      hooks_ = MpiLaunchHooks{"mpi --transport verbs", &verbs::start_verbs};
  }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    launch_mpi_process(topo, opts, rank_main, hooks_);
  }

 private:
  MpiLaunchHooks hooks_;
};

}  // namespace

std::unique_ptr<Backend> make_mpi_backend() { return std::make_unique<MpiBackend>(); }

}  // namespace eplab
