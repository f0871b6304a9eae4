// The seam every backend implements: non-blocking point-to-point messages with completions, a clock, a
// compute hook and a barrier. Collectives (engine/collectives.hpp) are built above it; a fabric may offer
// a native all-to-all-v instead (the simulator runs one as a single parallel task).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/error.hpp"
#include "engine/topology.hpp"

namespace eplab {

using Tag = uint64_t;
class LinkRecorder;  // engine/link_recorder.hpp

struct RemoteBytes;  // below

// A row of another process's message that this rank holds pulled (PeerConsume::remote) and sends on without
// reading it (Caps::forwards_pulled): `row_bytes` bytes at offset `at` of message `from`.
struct PulledRow {
  const RemoteBytes* from = nullptr;
  size_t at = 0;
};

// Rows a gather send takes from where they lie (Caps::gather_send): `count` rows of `row_bytes` bytes, row i at
// rows[i]. A source's message then goes from its batch straight into the receiver's buffer, with no send buffer
// in between: one copy per byte instead of two. With `pulled`, row i is pulled[i] instead where its `from` is
// set: its bytes stay in the process that sent them here until the receiver reads them from there.
struct RowGather {
  const uint8_t* const* rows = nullptr;
  size_t count = 0;
  size_t row_bytes = 0;
  const PulledRow* pulled = nullptr;
  size_t bytes() const { return count * row_bytes; }
  bool is_pulled(size_t i) const { return pulled && pulled[i].from; }
  // Copies row i to dst (a pulled one read from where it lies).
  void copy_row(size_t i, void* dst) const;
};

// A send buffer: `bytes` real bytes at `ptr` plus `phantom_bytes` that are charged but never copied.
// Only fabrics whose caps().phantom_payload is true accept phantom_bytes > 0 or ptr == nullptr with bytes > 0.
// With `gather` (count > 0) the real bytes are not all at ptr: the first head_bytes() are, the gathered rows
// follow them in the message (ptr stays non-null). The bytes on the wire are the same as a contiguous message's.
struct ConstBuf {
  const void* ptr = nullptr;
  size_t bytes = 0;
  size_t phantom_bytes = 0;
  RowGather gather = {};
  size_t total() const { return bytes + phantom_bytes; }
  bool gathered() const { return gather.count > 0; }
  size_t head_bytes() const { return bytes - gather.bytes(); }
  // Writes the real bytes, head then rows, contiguously at dst (bytes long).
  void copy_to(void* dst) const;
};

// A receive buffer of `capacity` bytes; the message may be shorter (Request::bytes() says how long).
// A longer message is an error naming both sizes.
struct MutBuf {
  void* ptr = nullptr;
  size_t capacity = 0;
};

enum class MemoryKind : uint8_t { kHost = 1, kDevice = 2 };

// A region a transport may read or write directly (RDMA would pin it; host transports only check the kind).
struct MemoryRegion {
  void* ptr = nullptr;
  size_t bytes = 0;
  MemoryKind kind = MemoryKind::kHost;
  uint64_t key = 0;  // transport-defined (an rkey, an IPC handle index)
};

struct Caps {
  bool phantom_payload = false;   // accepts sizes without data (simulated backends)
  bool real_payload = true;       // moves real bytes
  bool modeled_time = false;      // now() is a model, not a wall clock
  bool native_alltoallv = false;  // overrides Fabric::alltoallv
  bool device_memory = false;     // buffers live on a GPU
  bool consume_in_place = false;  // alltoallv_consume works (see there)
  // alltoallv_consume hands a gather send to a receive that takes gathers with its rows where they lie (ranks of
  // one process); otherwise such a receive may get it contiguous, as a copy.
  bool consume_gathers = false;
  bool gather_send = false;       // moves a gathered ConstBuf's rows without a contiguous copy first (RowGather)
  // A gather send may name rows of messages this rank holds pulled (RowGather::pulled): the receiver reads them
  // from their first sender's process (ranks that are processes of one machine).
  bool forwards_pulled = false;
};

// Completion state of one isend/irecv, owned by the caller through Request.
struct RequestState {
  virtual ~RequestState() = default;
  bool done = false;
  size_t bytes = 0;        // real bytes received (irecv) or sent (isend)
  size_t total_bytes = 0;  // real + phantom bytes of the message
  std::string error;       // first error seen, empty if none
};

class Request {
 public:
  Request() = default;
  explicit Request(std::shared_ptr<RequestState> s) : state_(std::move(s)) {}
  // `on_drop` runs when the last copy of this Request goes away: a fabric uses it to withdraw a receive that
  // never completed, so a rank unwinding after an error cannot leave a peer writing into freed memory.
  Request(std::shared_ptr<RequestState> s, std::shared_ptr<void> on_drop)
      : state_(std::move(s)), on_drop_(std::move(on_drop)) {}
  bool valid() const { return state_ != nullptr; }
  bool done() const { return state_ && state_->done; }
  size_t bytes() const { return state_ ? state_->bytes : 0; }
  size_t total_bytes() const { return state_ ? state_->total_bytes : 0; }
  RequestState* state() const { return state_.get(); }

 private:
  std::shared_ptr<RequestState> state_;
  std::shared_ptr<void> on_drop_;
};

// Absolute deadline on the fabric's own clock (seconds of now()); infinite by default.
struct Deadline {
  double at_s = std::numeric_limits<double>::infinity();
  static Deadline after(const class Fabric& f, double seconds);
};

// Model cost of a piece of local work; the simulator turns it into time, others ignore it.
struct ComputeCost {
  double flops = 0;
  double hbm_bytes = 0;
  double fixed_s = 0;  // already-known duration (e.g. a codec's measured time)
  const char* what = "compute";
};

// One peer's part of an all-to-all-v. A send with data.total() == 0 still delivers an empty message.
struct PeerSend {
  int peer;
  ConstBuf data;
};
struct PeerRecv {
  int peer;
  MutBuf data;
  size_t bytes = 0;        // filled in: real bytes received
  size_t total_bytes = 0;  // filled in: real + phantom bytes of the message
};
// One peer's part of alltoallv_consume: a message of at most `capacity` real bytes from `peer`, read where its
// sender holds it (see alltoallv_consume). `data` and `bytes` are filled in and valid only while the consume function
// runs (null and 0 for a peer marked failed). A gather send (RowGather) reaches a receive that `takes_gather` as it was
// sent: `gather` lists its rows where they lie and only its first bytes - gather.bytes() are at `data`, as in a
// ConstBuf; any other receive, or one whose rows are pulled rows (RowGather::pulled), gets it contiguous at `data`.
//
// A receive that `takes_pull` may instead get a message of another process left where its sender holds it:
// `remote` is then set and `data` null, and the consume function copies the parts it needs, when it needs them,
// with remote->read() (ranks that are processes, single copy: a sum reads a stretch of rows at a time into a
// buffer that stays in cache, where taking the message whole would write it to memory and read it back).
struct RemoteBytes {
  virtual ~RemoteBytes() = default;
  // Copies `bytes` bytes from `offset` of the message to `into`; throws FabricError where they cannot be read
  // (the sender's process is gone, or it withdrew the message).
  virtual void read(size_t offset, size_t bytes, void* into) const = 0;
  // Where bytes [offset, offset + bytes) lie in their sender's process, appended to `out`, so that a transport
  // can have a third rank read them from there (Caps::forwards_pulled); false where it cannot say.
  struct Piece {
    int64_t process = 0;
    uint64_t address = 0;
    size_t bytes = 0;
  };
  virtual bool locate(size_t offset, size_t bytes, std::vector<Piece>& out) const { return false; }
};
struct PeerConsume {
  int peer;
  size_t capacity = 0;
  bool takes_gather = false;
  bool takes_pull = false;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  RowGather gather = {};
  const RemoteBytes* remote = nullptr;
};

class Fabric {
 public:
  virtual ~Fabric() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const Topology& topology() const = 0;
  virtual Caps caps() const = 0;
  virtual Request isend(int peer, Tag tag, ConstBuf data) = 0;
  virtual Request irecv(int peer, Tag tag, MutBuf data) = 0;
  // Blocks until every request completes; throws FabricError (rank, peer, tag) on timeout or peer failure.
  virtual void wait_all(std::span<Request> reqs, Deadline d) = 0;
  virtual double now() const = 0;
  virtual void compute(const ComputeCost& c) = 0;
  virtual void barrier() = 0;
  // Checkpoints (driver/checkpoint.hpp): a modeled clock's exact date since the launch (now() is rounded), and
  // moving this rank's clock on to such a date, so that a resumed simulation goes on from the date it stopped at
  // and its times round as the uninterrupted run's did. Wall clocks keep their own time (the defaults).
  virtual double exact_clock() const { return now(); }
  virtual void advance_clock(double exact) {}
  // Pins or checks a buffer the fabric will move; throws FabricError for a memory kind it cannot reach.
  virtual MemoryRegion register_memory(void* ptr, size_t bytes, MemoryKind kind) = 0;
  virtual void deregister_memory(const MemoryRegion& r) = 0;

  // Every rank calls it with the same tag; sends and receives name their peers. The default posts
  // isend/irecv for each entry and waits; a fabric with caps().native_alltoallv runs it as one operation.
  virtual void alltoallv(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d);

  // An all-to-all-v whose messages are not copied into receive buffers (caps().consume_in_place; other fabrics
  // throw): once every message of `recvs` has arrived, `consume` runs once on this rank's thread and reads them
  // where their senders hold them, in whatever order it needs (a sum in the reference's order). A send completes
  // when its receiver's consume has returned, so every rank's send buffers stay untouched until this returns
  // and no rank holds a receive buffer for the exchange. Every rank calls it with the same tag; real bytes only.
  // Ranks of one process (emu) read every message where its sender holds it; ranks that are processes (mpi) get
  // another process's message in a buffer the fabric holds until `consume` returns, and their own in place.
  virtual void alltoallv_consume(Tag tag, std::span<const PeerSend> sends, std::span<PeerConsume> recvs,
                                 const std::function<void()>& consume, Deadline d);

  // A message this rank would send to itself and reads where it lies instead (a hop it relays itself): nothing
  // moves, but a fabric that keeps a payload ledger enters it as sent and received under `tag`, so that the run's
  // payload check counts the same messages as a run that sent it. Real bytes; the default does nothing.
  virtual void keep_local(Tag tag, const ConstBuf& data) {}

  // Hint: the alltoallv calls until end_pipeline() form a chain of stages, each consuming the previous one's data
  // in `chunks` pieces (DeepEP overlaps its RDMA and NVLink stages this way). Data semantics do not change; a
  // fabric that models time may overlap the stages, and end_pipeline() (collective) waits until all are done.
  virtual void begin_pipeline(int chunks) {}
  virtual void end_pipeline() {}

  // Asks a fabric that models links (sim) to report each exchange round's bytes per link to `r` (null stops it);
  // every rank passes the same recorder. Others have no links to report and ignore it.
  virtual void record_links(LinkRecorder* r) {}

  // Injected faults (driver/faults.hpp): sets `rank`'s NIC links (both directions) to `fraction` of their
  // modeled bandwidth from now on, for every rank of the run. Returns false on a fabric without links to change.
  virtual bool set_nic_bandwidth_fraction(int rank, double fraction) { return false; }
  // The same at time `at_s` of this fabric's clock (now()), in the middle of whatever runs then.
  virtual bool schedule_nic_bandwidth_fraction(int rank, double fraction, double at_s) { return false; }

  // The all-to-all-v made of isend/irecv: every receive posted, then (with `barrier_before_sends`, once every
  // rank has posted its receives, so each message is copied straight into its buffer) the sends, then one wait.
  void alltoallv_by_messages(Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs, Deadline d,
                             bool barrier_before_sends);

  // Failed ranks (driver/faults.hpp, emu and mpi): every survivor marks a rank that stopped, at the same point of
  // its program (where a membership service would announce it once its deadline passed). From then on alltoallv
  // leaves it out (a receive from it ends with 0 bytes, a send to it is dropped), barriers are of the live ranks,
  // and isend/irecv naming it are errors. Every rank is live until marked.
  virtual void mark_failed(int rank);
  bool live(int rank) const { return rank < 0 || rank >= static_cast<int>(failed_.size()) || !failed_[rank]; }
  // The live ranks, ascending.
  std::vector<int> live_ranks() const;

  // Name of the phase now running, quoted by errors ("rank 3, peer 5, tag 0x..., phase dispatch").
  void set_phase(std::string phase) { phase_ = std::move(phase); }
  const std::string& phase() const { return phase_; }

 protected:
  // alltoallv over the live ranks: calls `run` with the entries of live peers only, then gives the receives
  // it left out 0 bytes.
  void alltoallv_live(std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                      const std::function<void(std::span<const PeerSend>, std::span<PeerRecv>)>& run);

  std::string phase_ = "setup";
  std::vector<char> failed_;  // [rank] marked failed; empty while none is
};

// Tags: a phase id in the top byte, then step, layer and a round counter.
enum class Phase : uint8_t {
  kNotify = 1,
  kDispatch = 2,
  kCombine = 3,
  kForward = 4,
  kAllgather = 5,
  kBarrier = 6,
  kUser = 100
};
inline Tag make_tag(Phase p, int step, int layer, int round = 0) {
  return (static_cast<Tag>(p) << 56) | (static_cast<Tag>(step & 0xFFFFFF) << 32) |
         (static_cast<Tag>(layer & 0xFFFF) << 16) | static_cast<Tag>(round & 0xFFFF);
}
std::string describe_tag(Tag tag);

// For backends' launchers: runs one rank's function, recording what it throws in `error` and calling `abort`
// with a message naming the rank, so the others are released instead of waiting for it.
void run_rank(int rank, const std::function<void()>& body, std::exception_ptr& error,
              const std::function<void(const std::string&)>& abort);
// After every rank has returned: rethrows the first rank's own failure, not one that another's failure released
// (a FabricError), unless released ranks are all there is.
void rethrow_first_rank_error(const std::vector<std::exception_ptr>& errors);

}  // namespace eplab
