// What a backend implements under the Fabric: a small non-blocking transport in the shape of a network plugin
// (NCCL's ncclNet, UCX's uct). It states its capabilities up front, registers memory, posts sends, hands
// arrived messages to the matching core, moves a matched message's bytes, tests completions, and keeps a clock.
// Matching by (peer, tag), waiting, deadlines, size errors and the run's failure live once, in
// engine/transport_fabric.*; docs/architecture.md walks through adding a transport.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/fabric.hpp"

namespace eplab {

class Domain;

struct TransportCaps {
  unsigned memory_kinds = static_cast<unsigned>(MemoryKind::kHost);  // bit set of MemoryKind
  bool phantom_payload = false;                                      // accepts sizes without data (modeled backends)
  bool real_payload = true;                                          // moves real bytes
  bool modeled_time = false;                                         // now() is a model, not a wall clock
  // Sends may lend their bytes: a receiver in the same address space reads them where they lie
  // (Fabric::alltoallv_consume) and the send completes when it lets them go (Domain::release).
  bool lends_sends = false;
  bool gather_send = false;  // post_send takes a gathered ConstBuf (RowGather) as it is; else the core flattens it
  // A consuming receive (Fabric::alltoallv_consume) may take a message of another process: the transport makes
  // its bytes readable here (hold_for_consume) until the receiver lets them go, and completes its send itself.
  // A send to the rank itself is then lent (SendOp::lend), as an in-process transport's sends are.
  bool consumes_remote = false;
  // post_send takes gather sends whose rows are pulled rows of messages of other processes (RowGather::pulled,
  // Caps::forwards_pulled).
  bool forwards_pulled = false;
  bool supports(MemoryKind k) const { return (memory_kinds & static_cast<unsigned>(k)) != 0; }
};

struct SendOp;

// A message that reached its destination rank and waits for, or meets, a receive. `data` is borrowed from the
// sender until the transport retains it (then `owner` keeps it alive: a host copy, a device buffer).
struct Arrival {
  int src = -1;
  Tag tag = 0;
  const void* data = nullptr;
  size_t bytes = 0;        // real bytes
  size_t total_bytes = 0;  // real + phantom bytes
  std::shared_ptr<void> owner;
  // A gather send's rows, borrowed like `data` (which then holds only the first bytes - gather.bytes()).
  RowGather gather = {};
  // Set when the bytes are lent by this send (SendOp::lend): they stay where the sender holds them, never
  // retained, until the receiver lets them go, which completes the send.
  SendOp* lender = nullptr;
  // Set by hold_for_consume for a receive that may pull: the bytes stay in another process (data is null), read
  // with remote->read(); `owner` keeps it alive.
  const RemoteBytes* remote = nullptr;
  // Writes the real bytes contiguously at dst.
  void copy_to(void* dst) const { ConstBuf{data, bytes, 0, gather}.copy_to(dst); }
};

struct RecvOp : RequestState {
  int rank = -1;  // the receiving rank
  int peer = -1;
  Tag tag = 0;
  MutBuf buf;
  bool matched = false;            // under the domain's lock
  bool copying = false;            // matched, and a thread copies the bytes outside the lock (Domain::deliver)
  bool ledgered = false;           // its bytes went into the fabric's PayloadLedger (rank's own thread)
  bool consume = false;            // reads the message where it lies (msg) instead of copying it into buf
  bool pull = false;               // a consume that may read another process's message in parts (Arrival::remote)
  Arrival msg;                     // kept by transports that move the bytes after the match
  std::shared_ptr<void> transfer;  // the transport's transfer in flight (a modeled flow, device copies)
};

struct SendOp : RequestState {
  int peer = -1;
  Tag tag = 0;
  bool lend = false;  // its bytes are lent (TransportCaps::lends_sends): done once the receiver lets them go
  std::shared_ptr<void> transfer;
  std::vector<uint8_t> flat;  // a gather send made contiguous for a transport without TransportCaps::gather_send
};

// Optional features, asked for by id so a transport implements only what it has.
enum class ExtensionId { kAlltoallv, kPipeline, kLinkRecording, kLinkFaults };

class TransportFabric;

// A native all-to-all-v (the simulator's one parallel task per round).
struct AlltoallvExtension {
  virtual ~AlltoallvExtension() = default;
  virtual void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                         Deadline d) = 0;
};
// Pipeline hints (Fabric::begin_pipeline / end_pipeline).
struct PipelineExtension {
  virtual ~PipelineExtension() = default;
  virtual void begin_pipeline(TransportFabric& f, int chunks) = 0;
  virtual void end_pipeline(TransportFabric& f) = 0;
};
// Per-link byte reports (Fabric::record_links).
struct LinkRecordingExtension {
  virtual ~LinkRecordingExtension() = default;
  virtual void record_links(LinkRecorder* r) = 0;
};

// Injected link faults (Fabric::set_nic_bandwidth_fraction): a transport that models links changes one.
struct LinkFaultExtension {
  virtual ~LinkFaultExtension() = default;
  virtual void set_nic_bandwidth_fraction(int rank, double fraction) = 0;
  // The same at `at_s` on the transport's clock (now()), whatever the ranks are doing then: transfers under way
  // go on at the new bandwidth. A time past the end of the run changes nothing.
  virtual void schedule_nic_bandwidth_fraction(int rank, double fraction, double at_s) = 0;
};

// One rank's transport. The core calls every method from the rank's own thread (or actor), except on_match and
// retain, which run under the domain's lock in whichever rank made the match, sender or receiver.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual TransportCaps caps() const = 0;
  // Seconds since the launch started: simulated where caps().modeled_time, wall clock elsewhere.
  virtual double now() const = 0;
  // Fabric::exact_clock and advance_clock (checkpoints): only a modeled clock has anything to do.
  virtual double exact_clock() const { return now(); }
  virtual void advance_clock(double exact) {}
  // Local work: the simulator advances its clock by the model; others do nothing.
  virtual void charge(const ComputeCost&) {}
  // Pins or checks a region; throws FabricError for a memory kind the transport cannot reach.
  virtual MemoryRegion register_memory(void* ptr, size_t bytes, MemoryKind kind);
  virtual void deregister_memory(const MemoryRegion&) {}

  // Takes `data` towards op.peer. An in-process transport delivers it to the peer's matcher now
  // (Domain::deliver); a networked one ships it and the peer's progress() delivers it. Sets op.done (under the
  // domain's lock) once the sender's buffer may be reused.
  virtual void post_send(SendOp& op, ConstBuf data) = 0;
  // A receive met its message (sizes already checked): move the bytes into op.buf, or start moving them and
  // finish in test(), or (in-process transports, borrowed bytes) set op.copying and leave the copy to the
  // sending thread, outside the lock (Domain::deliver returns the op). Sets op.done when the bytes are in place.
  virtual void on_match(RecvOp& op, Arrival& a) = 0;
  // An arrival waits unexpected: copy what is only borrowed. Default: a host copy.
  virtual void retain(Arrival& a);
  // Under the domain's lock: a consuming receive met `a`, whose bytes it reads at a.data (and a.gather) until
  // Domain::release drops `a`. Default: lent bytes stay where they are, borrowed ones are retained. A transport
  // with caps().consumes_remote receives another process's message into a buffer that `a` then owns, or, where
  // the receive may `pull`, leaves it where its sender holds it and sets a.remote.
  virtual void hold_for_consume(Arrival& a, bool pull) {
    if (!a.owner && !a.lender) retain(a);
  }
  // Under the domain's lock: whether `op` has completed, finishing transfers the transport drives itself.
  virtual bool test(RequestState& op) { return op.done; }
  // Pulls what arrived from the network into the domain (networked transports). Called without the lock.
  virtual void progress() {}
  // Under the domain's lock: blocks until something `pending` depends on may have changed or the clock reaches
  // `until_s`; returns with the lock held. The default waits on the domain's wake-up.
  virtual void block(Domain& d, RequestState& pending, double until_s);
  // Text appended to the rank in error messages, e.g. " (device 1)".
  virtual std::string endpoint() const { return ""; }

  // An optional feature, or null. Use find<T>().
  virtual void* extension(ExtensionId) { return nullptr; }
  template <class T>
  T* find(ExtensionId id) {
    return static_cast<T*>(extension(id));
  }
};

}  // namespace eplab
