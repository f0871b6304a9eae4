// Whole runs of the engine with every all-to-all-v over the verbs streams (verbs/stream_set.*) on the fake
// device: ranks as threads whose other messages go through the matching core in memory, as the mpi transport
// carries them between processes under `--transport verbs`. Every algorithm, and a training run, verifies and
// delivers what emu delivers.
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "driver/experiment.hpp"
#include "engine/backend.hpp"
#include "engine/transport_fabric.hpp"
#include "tests/verbs/fake_device.hpp"

namespace eplab::verbs {
namespace {

// Point-to-point messages handed to the peer's matcher in memory; all-to-all-v over the rank's streams.
class FakeVerbsTransport final : public Transport, public AlltoallvExtension {
 public:
  FakeVerbsTransport(Domain& domain, int rank, const WallClock& clock, StreamSet& streams)
      : domain_(domain), rank_(rank), clock_(clock), streams_(streams) {}
  TransportCaps caps() const override { return {}; }
  double now() const override { return clock_(); }
  void post_send(SendOp& op, ConstBuf data) override {
    domain_.deliver(op.peer, *this, Arrival{rank_, op.tag, data.ptr, data.bytes, data.total(), nullptr});
    SyncLock lock(domain_.sync());
    op.done = true;
  }
  void on_match(RecvOp& op, Arrival& a) override {
    if (a.bytes) a.copy_to(op.buf.ptr);
    op.done = true;
  }
  void* extension(ExtensionId id) override {
    return id == ExtensionId::kAlltoallv ? static_cast<AlltoallvExtension*>(this) : nullptr;
  }
  void alltoallv(TransportFabric& f, Tag tag, std::span<const PeerSend> sends, std::span<PeerRecv> recvs,
                 Deadline d) override {
    run_exchange(streams_, f, tag, sends, recvs, d);
  }

 private:
  Domain& domain_;
  int rank_;
  const WallClock& clock_;
  StreamSet& streams_;
};

// The rings of the next launch. Small for inference, so the engine's messages span many chunks and wait for
// credits; training's dense-gradient all-reduce moves hundreds of MB, which takes larger slots to pass in seconds.
RingConfig g_rings{8, 2048, 4};

class FakeVerbsBackend final : public Backend {
 public:
  std::string name() const override { return "verbs-fake"; }
  std::string description() const override { return "ranks as threads, all-to-all-v over verbs streams in memory"; }
  Caps caps() const override { return Caps{}; }
  void launch(const Topology& topo, const LaunchOptions& opts, const std::function<void(Fabric&)>& rank_main) override {
    FakeRanks ranks(topo.size(), g_rings, 17);
    launch_thread_ranks(topo, opts.timeout_s, [&](Domain& domain, const WallClock& clock, int r) {
      FakeVerbsTransport t(domain, r, clock, *ranks.sets[r]);
      TransportFabric f(domain, t, r, topo);
      rank_main(f);
    });
  }
};

RunConfig config(const std::string& backend, const std::string& algorithm) {
  RunConfig c;
  c.backend = backend;
  c.algorithm = algorithm;
  c.nodes = 2;
  c.gpus_per_node = 2;
  c.model = "mixtral-8x7b";
  c.hidden = 256;
  c.tokens = 48;
  c.steps = 2;
  c.layers = 2;
  return c;
}

// Runs `c` over the fake verbs streams and on emu: verified, and the same verification (the same tokens delivered
// exactly once, the same combine errors).
void check_against_emu(RunConfig c) {
  const nlohmann::json got = run_experiment(c);
  ASSERT_TRUE(got["verified"].get<bool>()) << got["verification"].dump();
  c.backend = "emu";
  const nlohmann::json emu = run_experiment(c);
  EXPECT_EQ(got["verification"].dump(), emu["verification"].dump());
}

class VerbsEngine : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    backend_registry().add("verbs-fake", "test", [] { return std::unique_ptr<Backend>(new FakeVerbsBackend); });
  }
};

TEST_F(VerbsEngine, EveryAlgorithmVerifiesAndDeliversWhatEmuDelivers) {
  g_rings = RingConfig{8, 2048, 4};
  for (const std::string algorithm : {"flat", "hierarchical", "low-latency", "allgather"}) {
    SCOPED_TRACE(algorithm);
    check_against_emu(config("verbs-fake", algorithm));
  }
}

TEST_F(VerbsEngine, TrainingVerifiesAndDeliversWhatEmuDelivers) {
  g_rings = RingConfig{8, 1 << 20, 4};
  RunConfig c = config("verbs-fake", "flat");
  c.mode = "training";
  c.model = "qwen-moe";  // a smaller dense all-reduce than mixtral's
  c.layers = 1;
  check_against_emu(c);
}

}  // namespace
}  // namespace eplab::verbs
