#include "verbs/verbs_transport.hpp"

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "engine/error.hpp"

#ifdef EPLAB_HAVE_VERBS
#include "verbs/stream_set.hpp"
#include "verbs/verbs_device.hpp"
#endif

namespace eplab::verbs {

bool verbs_built() {
#ifdef EPLAB_HAVE_VERBS
  return true;
#else
  return false;
#endif
}

MpiTransport parse_mpi_transport(const std::string& name, bool built) {
  if (name.empty() || name == "mpi") return MpiTransport::kMpi;
  if (name == "verbs") {
    if (!built)
      throw EplabError(
          "--transport verbs: this build has no verbs transport: it needs libibverbs (rdma-core's "
          "libibverbs-dev); reconfigure with -DEPLAB_WITH_VERBS=ON, or use --transport mpi");
    return MpiTransport::kVerbs;
  }
  throw EplabError("--transport '" + name +
                   "': backend 'mpi' has mpi (the default: MPI, with single copy between processes of one machine) "
                   "and verbs (all-to-all-v payloads as RDMA writes over ibverbs, docs/verbs.md)");
}

#ifdef EPLAB_HAVE_VERBS
namespace {

// The streams' device: one RC queue pair per peer on one RDMA device, and one registered block.
class VerbsLink final : public StreamDevice {
 public:
  VerbsLink(Device& dev, const RingConfig& cfg) : dev_(dev), cfg_(cfg) {}
  ~VerbsLink() override { dev_.deregister(mr_); }
  void register_memory(void* addr, size_t bytes) override { mr_ = dev_.register_memory(addr, bytes); }

  // Creates the queue pairs; returns this rank's end of each ([peer], this rank's own left empty): the pair's
  // number and the ring the peer writes into.
  std::vector<Endpoint> open(StreamMemory& mem, int rank, int world) {
    qps_.assign(static_cast<size_t>(world), -1);
    std::vector<Endpoint> out(static_cast<size_t>(world));
    for (int p = 0; p < world; ++p) {
      if (p == rank) continue;
      qps_[p] = dev_.create_qp(p);
      const Registered ring{mr_.mr, mem.ring(p), size_t{cfg_.slots} * cfg_.slot_bytes, mr_.lkey, mr_.rkey};
      out[p] = dev_.local_endpoint(qps_[p], ring);
    }
    return out;
  }
  // remote[p]: peer p's end of its queue pair to this rank.
  void connect(const std::vector<Endpoint>& remote) {
    remote_ = remote;
    for (size_t p = 0; p < qps_.size(); ++p)
      if (qps_[p] >= 0) dev_.connect(qps_[p], remote_[p]);
  }

  void post_write(int peer, const WriteOp& w) override {
    dev_.post_write(qps_[peer], w, mr_.lkey, remote_[peer], cfg_.slot_bytes);
  }
  void post_credit(int peer, uint32_t credits) override { dev_.post_credit(qps_[peer], credits); }
  void poll(std::vector<Completion>& out) override { dev_.poll(out); }

 private:
  Device& dev_;
  RingConfig cfg_;
  Registered mr_;
  std::vector<int> qps_;  // [peer] queue pair handle
  std::vector<Endpoint> remote_;
};

// One process's part: the device, the streams' memory, the link over them, the streams. Declared in this order
// so that they go in reverse: the block is deregistered before it is freed, and freed before the device closes.
class VerbsAddOn final : public MpiAddOn, public AlltoallvExtension {
 public:
  VerbsAddOn(const std::string& device, int port, int rank, int world, RingConfig cfg)
      : device_(std::make_unique<Device>(device, port, cq_depth(cfg, world))),
        memory_(cfg, rank, world),
        link_(*device_, cfg),
        streams_(link_, memory_, rank, world) {}
  void* extension(ExtensionId id) override {
    return id == ExtensionId::kAlltoallv ? static_cast<AlltoallvExtension*>(this) : nullptr;
  }
  std::string endpoint() const override { return " (" + device_->name() + ")"; }
  void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                 Deadline d) override {
    run_exchange(streams_, f, tag, sends, recvs, d);
  }
  VerbsLink& link() { return link_; }
  StreamMemory& memory() { return memory_; }

 private:
  // Room for everything that can be outstanding at once: per peer, a ring's worth of writes both ways and their
  // credit messages both ways.
  static int cq_depth(const RingConfig& cfg, int world) {
    const size_t per_peer = 2 * (size_t{cfg.slots} + cfg.slots / cfg.credit_batch + 1);
    return static_cast<int>(std::max<size_t>(256, per_peer * static_cast<size_t>(world - 1)));
  }
  std::unique_ptr<Device> device_;
  StreamMemory memory_;
  VerbsLink link_;
  StreamSet streams_;
};

int env_port() {
  const char* v = std::getenv("EPLAB_VERBS_PORT");
  if (!v) return 1;
  char* end = nullptr;
  const long port = std::strtol(v, &end, 10);
  if (!*v || *end || port < 1 || port > 255)
    throw EplabError("EPLAB_VERBS_PORT='" + std::string(v) + "': expected an RDMA device port number, 1 to 255");
  return static_cast<int>(port);
}

// Every process learns whether any could not go on (its `why` non-empty), so none waits in a later collective
// or writes to a queue pair that will never connect; the others name the rank that could not.
void agree(MpiProcessGroup& g, const std::string& why, const std::string& step) {
  const int failed = g.max_over_ranks(why.empty() ? 0 : g.rank() + 1);
  if (!why.empty()) throw EplabError(why);
  if (failed)
    throw EplabError("backend 'mpi' --transport verbs: rank " + std::to_string(g.rank()) + " on " + g.host() +
                     ": rank " + std::to_string(failed - 1) + " could not " + step +
                     " (its error says why); the verbs transport was not started");
}

}  // namespace

std::unique_ptr<MpiAddOn> start_verbs(MpiProcessGroup& g) {
  const std::string at = "backend 'mpi' --transport verbs: rank " + std::to_string(g.rank()) + " on " + g.host();
  const RingConfig cfg;
  std::unique_ptr<VerbsAddOn> add_on;
  std::vector<Endpoint> mine;  // this rank's end of each of its queue pairs
  std::string why;
  try {
    if (cfg.slots + cfg.slots / cfg.credit_batch + 1 > static_cast<uint32_t>(Device::kRecvDepth))
      throw EplabError("rings of " + std::to_string(cfg.slots) + " slots need more receives posted than the " +
                       std::to_string(Device::kRecvDepth) + " a queue pair keeps");
    const char* device = std::getenv("EPLAB_VERBS_DEVICE");
    add_on = std::make_unique<VerbsAddOn>(device ? device : "", env_port(), g.rank(), g.size(), cfg);
    mine = add_on->link().open(add_on->memory(), g.rank(), g.size());
  } catch (const EplabError& e) {
    why = at + ": " + e.what();
  }
  agree(g, why, "open its RDMA device");

  // Every process's ends, gathered everywhere: rank p's end of its pair to this rank is entry p * world + rank.
  const int world = g.size();
  std::vector<Endpoint> all(static_cast<size_t>(world) * static_cast<size_t>(world));
  g.allgather(mine.data(), mine.size() * sizeof(Endpoint), all.data());
  std::vector<Endpoint> remote(static_cast<size_t>(world));
  for (int p = 0; p < world; ++p) remote[p] = all[static_cast<size_t>(p) * world + g.rank()];
  why.clear();
  try {
    add_on->link().connect(remote);
  } catch (const EplabError& e) {
    why = at + ": " + e.what();
  }
  // Also the barrier every write waits behind: no rank writes before every queue pair is ready to receive.
  agree(g, why, "connect its queue pairs");
  return add_on;
}

#else

std::unique_ptr<MpiAddOn> start_verbs(MpiProcessGroup&) {
  parse_mpi_transport("verbs", false);  // throws: not built
  return nullptr;
}

#endif

}  // namespace eplab::verbs
