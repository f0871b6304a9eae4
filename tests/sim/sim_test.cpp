// The simulated backend against closed-form answers (one message over one link takes L + S/B; two flows on
// one link each get half; routes cross the expected links), real-byte runs verified like emu, and
// determinism (the same run twice gives the same report).
#include <gtest/gtest.h>

#include <cstdio>
#include <simgrid/s4u/Engine.hpp>

#include "driver/experiment.hpp"
#include "engine/ep_engine.hpp"
#include "sim/platform.hpp"
#include "sim/sim_backend.hpp"
#include "sim/sim_transport.hpp"

namespace eplab {
namespace {

ClusterSpec cluster(int nodes, int gpus) {
  ClusterSpec s = cluster_preset("h800-cx7");
  s.nodes = nodes;
  s.gpus_per_node = gpus;
  s.round_overhead_s = 0;  // the analytic cases check the network model alone
  return s;
}

// Runs fn on every rank of a simulated cluster.
void launch(const ClusterSpec& spec, const std::function<void(Fabric&)>& fn) {
  make_sim_backend()->launch(Topology(spec), LaunchOptions{true, 60, ""}, fn);
}

double scaleup_Bps(const ClusterSpec& s) { return s.scaleup_GBps * 1e9 * s.scaleup_efficiency; }
double nic_Bps(const ClusterSpec& s) { return s.nic_GBps * 1e9 * s.nic_efficiency; }

TEST(SimAnalytic, OneMessageOverScaleUpTakesLatencyPlusSizeOverBandwidth) {
  const ClusterSpec s = cluster(1, 2);
  constexpr double kBytes = 64e6;
  double t = -1;
  launch(s, [&](Fabric& f) {
    std::vector<Request> reqs;
    if (f.rank() == 0) reqs.push_back(f.isend(1, 1, ConstBuf{nullptr, 0, static_cast<size_t>(kBytes)}));
    if (f.rank() == 1) reqs.push_back(f.irecv(0, 1, MutBuf{}));
    f.wait_all(reqs, Deadline{});
    if (f.rank() == 1) t = f.now();
  });
  const double want = s.scaleup_latency_s + kBytes / scaleup_Bps(s);
  EXPECT_NEAR(t, want, 0.01 * want);
}

TEST(SimAnalytic, OneMessageOverTheRailTakesLatencyPlusSizeOverBandwidth) {
  const ClusterSpec s = cluster(2, 1);
  constexpr double kBytes = 1e6;  // small, so a wrong latency would show
  double t = -1;
  launch(s, [&](Fabric& f) {
    std::vector<Request> reqs;
    if (f.rank() == 0) reqs.push_back(f.isend(1, 1, ConstBuf{nullptr, 0, static_cast<size_t>(kBytes)}));
    if (f.rank() == 1) reqs.push_back(f.irecv(0, 1, MutBuf{}));
    f.wait_all(reqs, Deadline{});
    if (f.rank() == 1) t = f.now();
  });
  const double want = s.nic_latency_s + s.switch_latency_s + kBytes / nic_Bps(s);
  EXPECT_NEAR(t, want, 0.01 * want);
}

TEST(SimAnalytic, TwoFlowsIntoOneLinkEachGetHalf) {
  const ClusterSpec s = cluster(1, 3);
  constexpr double kBytes = 64e6;
  std::vector<double> done(3, -1);
  launch(s, [&](Fabric& f) {
    std::vector<Request> reqs;
    if (f.rank() < 2) {
      reqs.push_back(f.isend(2, 1, ConstBuf{nullptr, 0, static_cast<size_t>(kBytes)}));
    } else {
      reqs.push_back(f.irecv(0, 1, MutBuf{}));
      reqs.push_back(f.irecv(1, 1, MutBuf{}));
    }
    f.wait_all(reqs, Deadline{});
    done[f.rank()] = f.now();
  });
  const double want = s.scaleup_latency_s + 2 * kBytes / scaleup_Bps(s);
  EXPECT_NEAR(done[2], want, 0.01 * want);
}

TEST(SimAnalytic, AllToAllRoundEndsWhenItsBusiestLinkDrains) {
  // Rank 0 sends S to each of 3 peers over its one scale-up link: 3S / B; the others send nothing.
  const ClusterSpec s = cluster(1, 4);
  constexpr size_t kBytes = 10'000'000;
  std::vector<double> t(4, -1);
  launch(s, [&](Fabric& f) {
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    if (f.rank() == 0) {
      for (int p = 1; p < 4; ++p) sends.push_back({p, ConstBuf{nullptr, 0, kBytes}});
    } else {
      recvs.push_back({0, MutBuf{}});
    }
    f.alltoallv(7, sends, recvs, Deadline{});
    t[f.rank()] = f.now();
    if (f.rank() > 0) {
      EXPECT_EQ(recvs[0].total_bytes, kBytes);
    }
  });
  const double want = s.scaleup_latency_s + 3.0 * kBytes / scaleup_Bps(s);
  for (double x : t) EXPECT_NEAR(x, want, 0.01 * want);
}

TEST(SimAnalytic, ComputeFollowsTheRoofline) {
  const ClusterSpec s = cluster(1, 1);
  ComputeCost c;
  c.flops = 1e12;
  c.hbm_bytes = 1e6;
  double t = -1;
  launch(s, [&](Fabric& f) {
    f.compute(c);
    t = f.now();
  });
  EXPECT_NEAR(t, 1e12 / (s.gpu.bf16_tflops * 1e12 * s.compute_efficiency), 1e-9);
}

// Low-latency's receive stages are HBM passes after all data arrived (engine/low_latency.cpp). On one GPU
// nothing crosses a link, so changing only the wire format changes each phase by exactly the pass's bytes over
// the roofline's memory bandwidth: dispatch reads and writes every selection (16-byte header + row), combine
// reads every returned row (and writes the BF16 output, the same both times).
TEST(SimLowLatency, ReceiveStagesArePassesOverHbm) {
  auto phase_s = [](const std::string& dispatch_codec, const std::string& combine_codec) {
    RunConfig c;
    c.backend = "sim";
    c.nodes = 1;
    c.gpus_per_node = 1;
    c.tokens = 128;
    c.routing = "uniform";
    c.algorithm = "low-latency";
    c.dispatch_codec = dispatch_codec;
    c.combine_codec = combine_codec;
    c.payload = "phantom";
    const auto r = run_experiment(c);
    return std::pair{r["phases"]["dispatch"]["time_s"].get<double>(), r["phases"]["combine"]["time_s"].get<double>()};
  };
  const ClusterSpec s = cluster_preset("h800-cx7");
  const MoeShape m = model_preset("deepseek-v3");
  const double hbm = s.gpu.hbm_GBps * 1e9 * s.compute_efficiency, sels = 128.0 * m.topk, H = m.hidden;
  const auto [d_bf16, c_bf16] = phase_s("bf16", "bf16");
  const auto [d_fp32, c_fp32] = phase_s("fp32", "fp32");
  const double want_d = 2 * sels * (4 * H - 2 * H) / hbm, want_c = sels * (4 * H - 2 * H) / hbm;
  EXPECT_NEAR(d_fp32 - d_bf16, want_d, 1e-3 * want_d);
  EXPECT_NEAR(c_fp32 - c_bf16, want_c, 1e-3 * want_c);
}

class SimRoutes : public ::testing::Test {
 protected:
  std::vector<std::string> route(ClusterSpec s, int a, int b, double* lat = nullptr) {
    int argc = 1;
    char name[] = "sim_test";
    char* argv[] = {name, nullptr};
    simgrid::s4u::Engine engine(&argc, argv);
    sim::configure_simgrid_once();
    const Topology topo(s);
    const sim::Platform p = sim::build_platform(topo);
    return sim::route_link_names(p, a, b, lat);
  }
};

TEST_F(SimRoutes, InsideANodeThroughBothGpusScaleUpLinks) {
  const ClusterSpec s = cluster(2, 8);
  double lat = 0;
  EXPECT_EQ(route(s, 1, 6, &lat), (std::vector<std::string>{"gpu1-scaleup-up", "gpu6-scaleup-down"}));
  EXPECT_NEAR(lat, s.scaleup_latency_s, 1e-12);
}

TEST_F(SimRoutes, SameRailThroughBothNicsOnly) {
  const ClusterSpec s = cluster(4, 8);
  double lat = 0;
  EXPECT_EQ(route(s, 3, 27, &lat), (std::vector<std::string>{"gpu3-nic-up", "gpu27-nic-down"}));
  EXPECT_NEAR(lat, s.nic_latency_s + s.switch_latency_s, 1e-12);
}

TEST_F(SimRoutes, CrossRailThroughTheSpine) {
  EXPECT_EQ(route(cluster(4, 8), 3, 26),
            (std::vector<std::string>{"gpu3-nic-up", "rail3-spine-up", "rail2-spine-down", "gpu26-nic-down"}));
}

TEST_F(SimRoutes, FatTreeThroughNodeLeaves) {
  ClusterSpec s = cluster(4, 8);
  s.scaleout = ScaleOutKind::kFatTree;
  s.oversubscription = 2;
  EXPECT_EQ(route(s, 3, 27),
            (std::vector<std::string>{"gpu3-nic-up", "leaf0-spine-up", "leaf3-spine-down", "gpu27-nic-down"}));
}

RunConfig small(int nodes, int gpus, const std::string& algorithm) {
  RunConfig c;
  c.backend = "sim";
  c.nodes = nodes;
  c.gpus_per_node = gpus;
  c.tokens = 64;
  c.hidden = 256;
  c.algorithm = algorithm;
  c.routing = "deepep";
  c.timeout_s = 30;
  return c;
}

class SimAlgorithms : public ::testing::TestWithParam<std::string> {};

TEST_P(SimAlgorithms, RealPayloadIsVerifiedLikeEmu) {
  for (auto [nodes, gpus] : {std::pair{1, 8}, std::pair{2, 4}, std::pair{4, 4}}) {
    RunConfig c = small(nodes, gpus, GetParam());
    c.payload = "real";
    c.dispatch_codec = "fp32";
    c.combine_codec = "fp32";
    c.steps = 2;
    const auto r = run_experiment(c);
    EXPECT_EQ(r["payload"], "real");
    EXPECT_TRUE(r["verified"].get<bool>()) << nodes << "x" << gpus << ": " << r["verification"].dump();
    EXPECT_GT(r["phases"]["dispatch"]["time_s"].get<double>(), 0);
  }
}

TEST_P(SimAlgorithms, PhantomIsTheDefaultAndCostsTime) {
  RunConfig c = small(4, 8, GetParam());
  c.hidden = 0;
  c.tokens = 512;
  const auto r = run_experiment(c);
  EXPECT_EQ(r["payload"], "phantom");
  EXPECT_GT(r["phases"]["dispatch"]["time_s"].get<double>(), 1e-6);
  EXPECT_GT(r["phases"]["combine"]["time_s"].get<double>(), 1e-6);
}

// Phantom mode carries counts where real mode carries per-token metadata and rows; the wire sizes, and so every
// simulated time and byte count, must come out the same.
TEST_P(SimAlgorithms, PhantomAndRealPayloadSimulateTheSameRun) {
  for (auto [nodes, gpus, mode] : {std::tuple{1, 8, "inference"}, std::tuple{4, 4, "training"}}) {
    RunConfig c = small(nodes, gpus, GetParam());
    c.mode = mode;
    c.dispatch_codec = "fp8-e4m3-b128";
    c.combine_codec = "bf16";
    c.layers = 2;
    c.steps = 2;
    auto phantom = run_experiment(c);
    c.payload = "real";
    auto real = run_experiment(c);
    EXPECT_TRUE(real["verified"].get<bool>());
    // What differs by design: the payload, verification, combine's output type (bf16 on real bytes, for
    // inference), and whether migration and the layout cache are timed (real bytes carry no modeled weights).
    EXPECT_EQ(real["codec"].value("combine_out", "fp32"), std::string(mode) == "inference" ? "bf16" : "fp32");
    for (auto* r : {&phantom, &real}) {
      for (const char* k : {"payload", "verified", "verification", "wall_s"}) r->erase(k);
      (*r)["codec"].erase("combine_out");
      (*r)["migration"].erase("timed");
      (*r)["layout_cache"].erase("timed");
    }
    EXPECT_EQ(phantom.dump(1), real.dump(1)) << nodes << "x" << gpus << " " << mode;
  }
}

// A phantom block summary is checked against what notify announced and against the placement, and is charged
// on the wire as the full block message it stands for.
TEST(SimPhantom, BlockSummaryIsChargedInFullAndChecked) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = 2;
  const MoeShape shape = model_preset("deepseek-v3");
  const Placement placement = Placement::contiguous(shape.num_experts, 2, 0);
  EngineOptions opts;
  opts.phantom = true;
  opts.dispatch_codec = "fp8-e4m3-b128";
  LaunchOptions lo;
  lo.phantom_payload = true;
  make_sim_backend()->launch(Topology(spec), lo, [&](Fabric& f) {
    if (f.rank() != 0) return;
    EpEngine engine(f, shape, placement, opts);
    EngineContext& c = engine.context();
    std::vector<int32_t> per_slot(placement.slots_per_rank(), 0);
    per_slot[3] = 5;
    per_slot[7] = 2;
    EngineContext::BlockSummary s;
    s.assign(4, 7, per_slot.data(), placement.slots_per_rank(), placement.slots_per_rank());  // rank 1's slots
    ASSERT_EQ(s.slots.size(), 2u);
    const EngineContext::Message m = c.make_summary_message(s, *c.dispatch_codec);
    EXPECT_EQ(m.buf().total(), block_meta_bytes(4, 7) + c.dispatch_codec->encoded_size(4, shape.hidden));
    EXPECT_LE(m.bytes.size(), EngineContext::summary_capacity(7, placement.slots_per_rank()));
    EngineContext::BlockSummary back;
    c.read_summary_message(m.bytes, m.bytes.size(), back, 4, 7, 1);
    EXPECT_EQ(back.slots.size(), 2u);
    const auto error_of = [&](uint32_t tokens, uint32_t sels, size_t bytes) {
      try {
        c.read_summary_message(m.bytes, bytes, back, tokens, sels, 1);
      } catch (const FabricError& e) {
        return std::string(e.what());
      }
      return std::string("no error");
    };
    EXPECT_NE(error_of(5, 7, m.bytes.size()).find("notify announced 5 / 7"), std::string::npos);
    EXPECT_NE(error_of(4, 7, m.bytes.size() - 1).find("announces 2 slots"), std::string::npos);
    EXPECT_NE(error_of(4, 7, 3).find("truncated"), std::string::npos);
    // Rank 0 holds none of these slots.
    Handle h;
    try {
      c.add_summary(h, back);
      ADD_FAILURE() << "rank 0 accepted selections for rank 1's slots";
    } catch (const FabricError& e) {
      EXPECT_NE(std::string(e.what()).find("held by rank 1"), std::string::npos) << e.what();
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Every, SimAlgorithms, ::testing::ValuesIn(algorithm_names()), [](const auto& info) {
  std::string n = info.param;
  for (auto& ch : n)
    if (ch == '-') ch = '_';
  return n;
});

// Each run in its own process, as two invocations of `eplab run` would be (SimGrid's clock is process-wide).
std::string report_in_child(const RunConfig& c) {
  nlohmann::json r = run_experiment_in_child(c);
  r.erase("wall_s");
  return r.dump();
}

TEST(SimDeterminism, TwoIdenticalRunsGiveIdenticalReports) {
  RunConfig c = small(4, 8, "hierarchical");
  c.hidden = 0;
  c.tokens = 256;
  const std::string a = report_in_child(c), b = report_in_child(c);
  ASSERT_GT(a.size(), 100u);
  EXPECT_EQ(a, b);
}

TEST(SimDeterminism, RepeatedInOneProcessToo) {
  RunConfig c = small(2, 8, "flat");
  c.hidden = 0;
  auto a = run_experiment(c), b = run_experiment(c);
  a.erase("wall_s");
  b.erase("wall_s");
  EXPECT_EQ(a.dump(), b.dump());
}

TEST(SimFailure, ARankThatThrowsEndsTheSimulation) {
  EXPECT_THROW(launch(cluster(2, 4),
                      [](Fabric& f) {
                        if (f.rank() == 5) throw EplabError("rank 5 gives up");
                        std::vector<PeerSend> s;
                        std::vector<PeerRecv> r;
                        f.alltoallv(1, s, r, Deadline{});
                      }),
               EplabError);
}

}  // namespace
}  // namespace eplab
