// The MPI transport: one eplab message is two MPI messages on a communicator duplicated for each launch, so
// nothing of an earlier launch (a late message, a failure notice) reaches a later one. MPI tags are too narrow
// for eplab's 64-bit tags, so a 24-byte header (tag, real and modeled size) goes first and the bytes follow,
// sent from the caller's buffer as they are. MPI's non-overtaking order per sender pairs each header with its
// bytes. The receiver reads the header and takes the bytes' envelope off MPI's queue with MPI_Mprobe, without
// the bytes: they are received (MPI_Mrecv) straight into the eplab receive's buffer, at once when it is posted,
// else when it is. So every byte is copied once, by MPI: between processes of one machine OpenMPI's vader
// moves a large message with one CMA copy (process_vm_readv) from the sender's buffer to the receiver's, between
// machines the network does; no host copy waits in between. A sender's large message completes when the
// receiver has posted its receive (MPI's rendezvous), as MPI's own do. A rank that fails tells every peer on a
// separate MPI tag, and their waits end with its message; a process that dies is reported by mpirun, which ends
// the job, unless it is a failed GPU's process under mpirun --enable-recovery (docs/faults.md): the others then
// run on without it.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "engine/transport_fabric.hpp"
#include "mpi/mpi_backend.hpp"
#include "verbs/verbs_transport.hpp"

namespace eplab {
namespace {

constexpr int kHeaderTag = 1;
constexpr int kFailureTag = 2;
constexpr int kDataTag = 3;
constexpr int kHeaderWords = 3;  // eplab tag, real bytes, real + modeled bytes

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

// A peer's message whose header has been read and whose bytes wait in MPI under a matched-probe handle. One that
// no receive ever takes (a run that failed) stays in MPI, and its sender's request stays open: a failed run does
// not wait for it.
struct HeldMessage {
  MPI_Message msg = MPI_MESSAGE_NULL;
  size_t bytes = 0;
};

// A send in flight: its header (the bytes are the caller's until the send completes), or a failure notice.
struct Outgoing {
  uint64_t header[kHeaderWords] = {0, 0, 0};
  std::vector<uint8_t> frame;
  MPI_Request req = MPI_REQUEST_NULL;
  MPI_Request data_req = MPI_REQUEST_NULL;
};

class MpiTransport final : public Transport {
 public:
  // `t0`: MPI_Wtime() when the launch started, the zero of now() and of the domain's waits.
  MpiTransport(Domain& domain, MPI_Comm comm, int rank, double t0)
      : domain_(domain), comm_(comm), rank_(rank), t0_(t0) {}
  ~MpiTransport() override {
    // Failure notices that could not be delivered (the peer is gone) are abandoned, not waited for.
    for (Outgoing& o : notices_)
      if (o.req != MPI_REQUEST_NULL) MPI_Request_free(&o.req);
  }
  TransportCaps caps() const override {
    TransportCaps c;
    c.gather_send = gather_;
    return c;
  }
  double now() const override { return MPI_Wtime() - t0_; }

  void post_send(SendOp& op, ConstBuf data) override {
    if (op.peer == rank_) {  // to itself: straight into its own matcher
      domain_.deliver(rank_, *this, Arrival{rank_, op.tag, data.ptr, data.bytes, data.total(), nullptr, data.gather});
      SyncLock lock(domain_.sync());
      op.done = true;
      return;
    }
    if (data.bytes > static_cast<size_t>(std::numeric_limits<int>::max()))
      throw FabricError("isend: rank " + std::to_string(rank_) + ", peer " + std::to_string(op.peer) + ": " +
                        std::to_string(data.bytes) + " bytes exceed one MPI message's count");
    auto out = std::make_shared<Outgoing>();
    out->header[0] = op.tag;
    out->header[1] = data.bytes;
    out->header[2] = data.total();
    check(MPI_Isend(out->header, kHeaderWords, MPI_UINT64_T, op.peer, kHeaderTag, comm_, &out->req), "MPI_Isend",
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
  // matched-probe handle, received into the receive's buffer now).
  void on_match(RecvOp& op, Arrival& a) override {
    if (auto* held = a.bytes && !a.data ? static_cast<HeldMessage*>(a.owner.get()) : nullptr)
      receive_held(*held, op.buf.ptr, a.src, a.tag);
    else if (a.bytes)
      a.copy_to(op.buf.ptr);
    op.done = true;
  }

  bool test(RequestState& s) override {
    if (s.done) return true;
    auto* op = dynamic_cast<SendOp*>(&s);
    if (!op) return false;  // receives complete at the match, in progress()
    auto* out = static_cast<Outgoing*>(op->transfer.get());
    MPI_Request reqs[2] = {out->req, out->data_req};
    int flag = 0;
    check(MPI_Testall(2, reqs, &flag, MPI_STATUSES_IGNORE), "MPI_Testall", op->peer, op->tag);
    out->req = reqs[0];
    out->data_req = reqs[1];
    if (!flag) return false;
    op->transfer.reset();
    op->done = true;
    return true;
  }

  // Takes in whatever has arrived: each message's header, its bytes received into a posted receive's buffer or
  // left in MPI for the receive to come; a failure notice fails the run here too.
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
        domain_.fail(why);
        continue;
      }
      if (st.MPI_TAG != kHeaderTag || count != kHeaderWords * 8)
        throw FabricError("rank " + std::to_string(rank_) + ": a " + std::to_string(count) + "-byte MPI message (tag " +
                          std::to_string(st.MPI_TAG) + ") from rank " + std::to_string(src) +
                          " where an eplab header was due");
      uint64_t header[kHeaderWords];
      check(MPI_Recv(header, kHeaderWords, MPI_UINT64_T, src, kHeaderTag, comm_, MPI_STATUS_IGNORE), "MPI_Recv", src,
            0);
      const Tag tag = header[0];
      const size_t bytes = header[1];
      if (bytes > static_cast<size_t>(std::numeric_limits<int>::max()))
        throw FabricError("rank " + std::to_string(rank_) + ": header from rank " + std::to_string(src) +
                          " announces " + std::to_string(bytes) + " bytes");
      if (bytes == 0) {  // nothing follows the header
        domain_.deliver(rank_, *this, Arrival{src, tag, nullptr, 0, header[2], nullptr});
        continue;
      }
      // The bytes' envelope follows the header (non-overtaking); take it off MPI's queue, the bytes stay put.
      auto held = std::make_shared<HeldMessage>();
      check(MPI_Mprobe(src, kDataTag, comm_, &held->msg, MPI_STATUS_IGNORE), "MPI_Mprobe", src, tag);
      held->bytes = bytes;
      const std::shared_ptr<RecvOp> op = domain_.claim(rank_, src, tag, bytes, header[2]);
      if (op && op->copying) {  // posted: MPI writes the bytes where they belong
        receive_held(*held, op->buf.ptr, src, tag);
        domain_.finish_copy(*op);
        continue;
      }
      if (op) {  // matched a receive too small for it: that receive has failed, the bytes are dropped
        std::vector<uint8_t> drop(bytes);
        receive_held(*held, drop.data(), src, tag);
        continue;
      }
      // Not posted yet: the matcher keeps the handle (no bytes: data is null) until a receive takes it.
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

 private:
  void receive_held(HeldMessage& m, void* into, int src, Tag tag) {
    if (m.msg == MPI_MESSAGE_NULL)
      throw FabricError("rank " + std::to_string(rank_) + ": message from rank " + std::to_string(src) + ", tag " +
                        describe_tag(tag) + " was received twice");
    check(MPI_Mrecv(into, static_cast<int>(m.bytes), MPI_BYTE, &m.msg, MPI_STATUS_IGNORE), "MPI_Mrecv", src, tag);
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
  std::deque<Outgoing> notices_;
  MpiAddOn* add_on_ = nullptr;
  // Gather sends as MPI derived datatypes (EPLAB_MPI_GATHER=1). Off by default: on one machine OpenMPI 4.1 moves
  // a non-contiguous message through vader's copy-in/copy-out fragments, not its single copy, and a dispatch took
  // about twice as long as gathering the rows into a send buffer and sending that contiguous (16 ranks x 1024
  // tokens, docs/architecture.md). Between machines a network that gathers may do better.
  bool gather_ = [] {
    const char* e = std::getenv("EPLAB_MPI_GATHER");
    return e && std::string(e) == "1";
  }();
};

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
  const std::shared_ptr<void> free_comm(nullptr, [&comm](void*) { MPI_Comm_free(&comm); });
  std::unique_ptr<MpiAddOn> add_on;
  if (hooks.setup) {
    ProcessGroup group(comm);
    add_on = hooks.setup(group);
  }
  std::exception_ptr error;
  {
    const double t0 = MPI_Wtime();
    Domain domain(n, 1, me, make_thread_sync([t0] { return MPI_Wtime() - t0; }), opts.timeout_s);
    MpiTransport t(domain, comm, me, t0);
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
