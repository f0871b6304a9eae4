// The emulated backend's transport: ranks are threads of one process sharing a Domain. A send is handed to the
// receiver's matcher at once; a posted receive gets the bytes straight from the sender's buffer (one copy, by
// the sending thread, outside the domain's lock), otherwise they wait in a host copy until the receive is posted.
// All-to-all-v posts every receive first so that every byte is copied once; a gather send (RowGather) is copied
// row by row from the sender's rows, so a source's batch reaches its receivers without a send buffer;
// alltoallv_consume copies none: the receiver reads lent bytes where the sender holds them, a gather send's rows
// where they lie in the sender's batch.
#include <malloc.h>
#include <pthread.h>
#include <sched.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "emu/thread_backend.hpp"
#include "engine/transport_fabric.hpp"

namespace eplab {
namespace {

class ThreadTransport final : public Transport, public AlltoallvExtension {
 public:
  ThreadTransport(Domain& domain, int rank, const WallClock& clock) : domain_(domain), me_(rank), clock_(clock) {}
  TransportCaps caps() const override {
    TransportCaps c;
    c.lends_sends = true;  // one address space: a receiver can read a sender's buffer where it is
    c.gather_send = true;
    return c;
  }
  double now() const override { return clock_(); }
  void post_send(SendOp& op, ConstBuf data) override {
    if (op.lend) {  // the receiver reads the bytes where they are; the send is done when it lets them go
      Arrival a{me_, op.tag, data.ptr, data.bytes, data.bytes, nullptr, data.gather};
      a.lender = &op;
      domain_.deliver(op.peer, *this, std::move(a));
      return;
    }
    // Matched to a posted receive: this thread copies the bytes once, without the domain's lock, so ranks copy
    // in parallel; a gather send's rows go from where they lie straight into the receive's buffer. Otherwise the
    // arrival was retained (copied) to wait for its receive.
    if (const std::shared_ptr<RecvOp> r = domain_.deliver(
            op.peer, *this, Arrival{me_, op.tag, data.ptr, data.bytes, data.bytes, nullptr, data.gather})) {
      data.copy_to(r->buf.ptr);
      domain_.finish_copy(*r);
    }
    op.done = true;  // the bytes are in the receive buffer or retained: the sender's buffer is free
  }
  void on_match(RecvOp& op, Arrival& a) override {
    if (!a.owner && a.bytes) {  // borrowed from a sender inside post_send: it copies after the lock
      op.copying = true;
      return;
    }
    if (a.bytes) std::memcpy(op.buf.ptr, a.data, a.bytes);
    op.done = true;
  }
  void* extension(ExtensionId id) override {
    return id == ExtensionId::kAlltoallv ? static_cast<AlltoallvExtension*>(this) : nullptr;
  }
  void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                 Deadline d) override {
    f.alltoallv_by_messages(tag, sends, recvs, d, true);
  }

 private:
  Domain& domain_;
  int me_;
  const WallClock& clock_;
};

// Ranks allocate buffers of the same sizes call after call. By default glibc hands chunks above a moving
// threshold back to the kernel when they are freed and trims its arenas, so every call page-faults its buffers
// in again, which is most of an emulated run's time on a virtual machine. For the run, chunks up to glibc's
// largest threshold stay in the arenas; afterwards the defaults return and the memory is trimmed.
class KeepFreedMemory {
 public:
  KeepFreedMemory() {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
  }
  ~KeepFreedMemory() {
    mallopt(M_MMAP_THRESHOLD, 128 << 10);
    mallopt(M_TRIM_THRESHOLD, 128 << 10);
    malloc_trim(0);
  }
  KeepFreedMemory(const KeepFreedMemory&) = delete;
  KeepFreedMemory& operator=(const KeepFreedMemory&) = delete;
};

// With EPLAB_EMU_PIN=1, pins the calling rank thread to one of the CPUs the process may use, rank r to the
// (r mod n)-th of them, so that 16 ranks on 2 cores split evenly and stay where their buffers are warm in cache.
// Off by default: on the shared 2-core machine pinned and unpinned runs measured alike within the noise
// (docs/architecture.md), and under uneven load from other processes the scheduler can move a rank to the freer
// core where a pinned one waits.
void pin_rank_thread(int r) {
  const char* env = std::getenv("EPLAB_EMU_PIN");
  if (!env || std::string(env) != "1") return;
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
  if (cpus.size() < 2) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpus[static_cast<size_t>(r) % cpus.size()], &one);
  pthread_setaffinity_np(pthread_self(), sizeof one, &one);
}

class ThreadBackend : public Backend {
 public:
  std::string name() const override { return "emu"; }
  std::string description() const override { return "ranks as threads in one process, real bytes, wall clock"; }
  Caps caps() const override {
    Caps c;
    c.consume_in_place = true;  // its fabric's alltoallv_consume (ThreadTransport lends sends)
    c.consume_gathers = true;   // lent as they are, gather sends included
    c.gather_send = true;       // ThreadTransport copies a gathered message's rows where they lie
    return c;
  }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    if (opts.phantom_payload)
      throw EplabError("backend 'emu' moves real bytes only; phantom payloads need --backend=sim");
    const KeepFreedMemory keep;
    launch_thread_ranks(topo, opts.timeout_s, [&](Domain& domain, const WallClock& clock, int r) {
      pin_rank_thread(r);
      ThreadTransport t(domain, r, clock);
      TransportFabric f(domain, t, r, topo);
      rank_main(f);
    });
  }
};

}  // namespace

std::unique_ptr<Backend> make_thread_backend() { return std::make_unique<ThreadBackend>(); }

}  // namespace eplab
