// The emulated backend's transport: ranks are threads of one process sharing a Domain. A send is handed to the
// receiver's matcher at once; a posted receive gets the bytes straight from the sender's buffer (one copy),
// otherwise they wait in a host copy until the receive is posted. All-to-all-v posts every receive first so
// that every byte is copied once.
#include <chrono>
#include <cstring>

#include "emu/thread_backend.hpp"
#include "engine/transport_fabric.hpp"

namespace eplab {
namespace {

class ThreadTransport final : public Transport, public AlltoallvExtension {
 public:
  using Clock = std::chrono::steady_clock;
  ThreadTransport(Domain& domain, int rank, Clock::time_point t0) : domain_(domain), me_(rank), t0_(t0) {}
  TransportCaps caps() const override { return TransportCaps{}; }
  double now() const override { return std::chrono::duration<double>(Clock::now() - t0_).count(); }
  void post_send(SendOp& op, ConstBuf data) override {
    domain_.deliver(op.peer, *this, Arrival{me_, op.tag, data.ptr, data.bytes, data.bytes, nullptr});
    op.done = true;  // copied into the receive buffer or retained: the sender's buffer is free
  }
  void on_match(RecvOp& op, Arrival& a) override {
    if (a.bytes) std::memcpy(op.buf.ptr, a.data, a.bytes);
    op.done = true;
  }
  void* extension(ExtensionId id) override {
    return id == ExtensionId::kAlltoallv ? static_cast<AlltoallvExtension*>(this) : nullptr;
  }
  void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                 Deadline d) override {
    f.alltoallv_preposted(tag, sends, recvs, d);
  }

 private:
  Domain& domain_;
  int me_;
  Clock::time_point t0_;
};

class ThreadBackend : public Backend {
 public:
  std::string name() const override { return "emu"; }
  std::string description() const override { return "ranks as threads in one process, real bytes, wall clock"; }
  Caps caps() const override { return Caps{}; }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    if (opts.phantom_payload)
      throw EplabError("backend 'emu' moves real bytes only; phantom payloads need --backend=sim");
    const auto t0 = ThreadTransport::Clock::now();
    const auto clock = [t0] { return std::chrono::duration<double>(ThreadTransport::Clock::now() - t0).count(); };
    Domain domain(topo.size(), topo.size(), 0, make_thread_sync(clock), opts.timeout_s);
    run_rank_threads(
        topo.size(),
        [&](int r) {
          ThreadTransport t(domain, r, t0);
          TransportFabric f(domain, t, r, topo);
          rank_main(f);
        },
        [&](const std::string& why) { domain.fail(why); });
  }
};

}  // namespace

std::unique_ptr<Backend> make_thread_backend() { return std::make_unique<ThreadBackend>(); }

}  // namespace eplab
