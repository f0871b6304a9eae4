// The `real` backend's transports of ranks as processes, NCCL and CUDA IPC: what runs on any machine (transport
// names, the refusal of more ranks than GPUs, staging size classes, the plan of an all-to-all-v both use, the
// --transport option, NCCL loaded by dlopen), and one rank over each against emu on the same workload, which needs
// a GPU and skips, saying why, without one.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "driver/experiment.hpp"
#include "driver/run_options.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "kernels/gpu_runtime.hpp"
#include "kernels/nccl_backend.hpp"
#include "kernels/nccl_plan.hpp"

namespace eplab {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(NcclPlan, StagingClassesArePowersOfTwoFromTheMinimum) {
  EXPECT_EQ(nccl::staging_class(0), nccl::kMinStaging);
  EXPECT_EQ(nccl::staging_class(1), nccl::kMinStaging);
  EXPECT_EQ(nccl::staging_class(nccl::kMinStaging), nccl::kMinStaging);
  EXPECT_EQ(nccl::staging_class(nccl::kMinStaging + 1), 2 * nccl::kMinStaging);
  EXPECT_EQ(nccl::staging_class((size_t{1} << 30) - 5), size_t{1} << 30);
  EXPECT_EQ(nccl::staging_class((size_t{1} << 30) + 1), size_t{1} << 31);
}

TEST(NcclPlan, LaysMessagesOutAlignedInCallerOrderAndSkipsEmptyOnes) {
  // Rank 1 of 4: sends to 3, 0, 1 (itself), 2 with one empty; receives from 0..3 with one empty.
  const std::vector<int> send_peers = {3, 0, 1, 2};
  const std::vector<size_t> send_sizes = {300, 0, 256, 1};
  const std::vector<int> recv_peers = {0, 1, 2, 3};
  const std::vector<size_t> recv_sizes = {5, 256, 0, 1000};
  const std::vector<size_t> capacity = {5, 300, 64, 1000};
  const nccl::AlltoallvPlan p = nccl::plan_alltoallv(1, send_peers, send_sizes, recv_peers, recv_sizes, capacity, "t");
  ASSERT_EQ(p.sends.size(), 3u);
  EXPECT_EQ(p.sends[0].peer, 3);
  EXPECT_EQ(p.sends[0].offset, 0u);
  EXPECT_EQ(p.sends[1].peer, 1);
  EXPECT_EQ(p.sends[1].entry, 2u);
  EXPECT_EQ(p.sends[1].offset, 512u);  // 300 rounded up to the 256-byte alignment
  EXPECT_EQ(p.sends[2].peer, 2);
  EXPECT_EQ(p.sends[2].offset, 768u);
  EXPECT_EQ(p.send_bytes, 1024u);
  ASSERT_EQ(p.recvs.size(), 3u);
  EXPECT_EQ(p.recvs[0].peer, 0);
  EXPECT_EQ(p.recvs[1].offset, 256u);
  EXPECT_EQ(p.recvs[2].peer, 3);
  EXPECT_EQ(p.recvs[2].entry, 3u);
  EXPECT_EQ(p.recvs[2].offset, 512u);
  EXPECT_EQ(p.recv_bytes, 1536u);
  for (const auto& op : p.sends) EXPECT_EQ(op.offset % nccl::kStagingAlign, 0u);
}

TEST(NcclPlan, RefusesAMessageLargerThanItsReceiveNamingBoth) {
  const std::vector<int> peers = {0, 2};
  const std::vector<size_t> none;
  const std::string e = error_of([&] {
    nccl::plan_alltoallv(0, {}, none, peers, std::vector<size_t>{8, 100}, std::vector<size_t>{8, 64}, "rank 0, tag x");
  });
  EXPECT_NE(e.find("rank 0, tag x"), std::string::npos) << e;
  EXPECT_NE(e.find("rank 2 sends 100 bytes to rank 0 whose receive buffer holds 64"), std::string::npos) << e;
}

TEST(NcclPlan, PairsSelfReceivesWithSelfSendsInOrder) {
  const std::vector<int> send_peers = {2, 0, 2};
  const std::vector<size_t> send_sizes = {7, 9, 11};
  EXPECT_EQ(nccl::self_sizes(2, send_peers, send_sizes, std::vector<int>{2, 1, 2}, "w"), (std::vector<size_t>{7, 11}));
  const std::string e = error_of([&] { nccl::self_sizes(2, send_peers, send_sizes, std::vector<int>{2}, "w"); });
  EXPECT_NE(e.find("sends 2 messages to itself but posts 1 receives"), std::string::npos) << e;
}

TEST(NcclPlan, ExchangeTakesAnnouncedSizesFromPeersAndOwnFromItself) {
  std::vector<char> a(10), b(20), r0(64), r1(64), r2(64);
  const std::vector<PeerSend> sends = {{1, ConstBuf{a.data(), 10}}, {0, ConstBuf{b.data(), 20}}};
  std::vector<PeerRecv> recvs = {{0, MutBuf{r0.data(), 64}}, {1, MutBuf{r1.data(), 64}}, {2, MutBuf{r2.data(), 64}}};
  const nccl::ExchangeShape x = nccl::shape_of(sends, recvs);
  EXPECT_EQ(x.send_peers, (std::vector<int>{1, 0}));
  EXPECT_EQ(x.capacity, (std::vector<size_t>{64, 64, 64}));
  // Rank 0: its receive from itself is its own send's 20 bytes whatever the size round left there.
  const std::vector<uint64_t> announced = {999, 7, 0};
  const nccl::PlannedExchange p = nccl::plan_exchange(0, x, announced, "w");
  EXPECT_EQ(p.recv_sizes, (std::vector<size_t>{20, 7, 0}));
  ASSERT_EQ(p.plan.recvs.size(), 2u);  // the empty one from rank 2 has no op
  EXPECT_EQ(p.plan.recvs[1].peer, 1);
  EXPECT_EQ(p.plan.sends.size(), 2u);
}

TEST(NcclPlacement, RefusesMoreRanksThanGpusBeforeNcclStarts) {
  EXPECT_EQ(nccl::placement_refusal(1, 1, 1, "h"), "");
  EXPECT_EQ(nccl::placement_refusal(16, 8, 8, "h"), "");
  const std::string e = nccl::placement_refusal(2, 2, 1, "gpu-box");
  for (const char* part : {"NCCL refuses two ranks on one GPU", "gpu-box runs 2 of the 2 ranks", "1 visible GPU ",
                           "mpirun -n 1", "--transport staged", "--transport cuda-ipc"})
    EXPECT_NE(e.find(part), std::string::npos) << part << " in: " << e;
  EXPECT_NE(nccl::placement_refusal(8, 4, 2, "n").find("has 2 visible GPUs"), std::string::npos);
}

TEST(NcclTransportOption, NamesAndRefusals) {
  EXPECT_EQ(nccl::parse_real_transport("", true, true), nccl::RealTransport::kStaged);
  EXPECT_EQ(nccl::parse_real_transport("staged", false, false), nccl::RealTransport::kStaged);
  EXPECT_EQ(nccl::parse_real_transport("nccl", true, false), nccl::RealTransport::kNccl);
  EXPECT_EQ(nccl::parse_real_transport("cuda-ipc", false, true), nccl::RealTransport::kCudaIpc);
  EXPECT_NE(error_of([] { nccl::parse_real_transport("nccl", false, true); }).find("-DEPLAB_WITH_NCCL=ON"),
            std::string::npos);
  EXPECT_NE(error_of([] { nccl::parse_real_transport("cuda-ipc", true, false); }).find("-DEPLAB_WITH_MPI=ON"),
            std::string::npos);
  const std::string e = error_of([] { nccl::parse_real_transport("tcp", true, true); });
  for (const char* name : {"staged", "nccl", "cuda-ipc"}) EXPECT_NE(e.find(name), std::string::npos) << e;
}

TEST(NcclTransportOption, SelectsTheBackendsProcessLaunch) {
  const auto staged = create_backend("real", "");
  EXPECT_TRUE(staged->in_process());
  const auto nccl = create_backend("real", "nccl");
  EXPECT_FALSE(nccl->in_process());
  const auto ipc = create_backend("real", "cuda-ipc");
  EXPECT_FALSE(ipc->in_process());
  EXPECT_NE(ipc->description().find("any number per GPU"), std::string::npos);
  EXPECT_EQ(nccl->name(), "real");
  EXPECT_FALSE(nccl->caps().device_memory);  // the engine's buffers stay host memory, staged per exchange
  if (!std::getenv("OMPI_COMM_WORLD_SIZE") && !std::getenv("PMI_SIZE") && !std::getenv("PMIX_SIZE")) {
    EXPECT_EQ(nccl->fixed_world_size(), 1);  // no launcher: a world of one
  }
  const std::string e = error_of([] { create_backend("emu", "nccl"); });
  EXPECT_NE(e.find("backend 'emu' has one transport"), std::string::npos) << e;
}

TEST(NcclTransportOption, IsARunOption) {
  RunConfig cfg = default_run_config();
  EXPECT_EQ(cfg.transport, "");
  const RunOption* option = nullptr;
  for (const RunOption& o : run_options())
    if (o.flag == "transport") option = &o;
  ASSERT_NE(option, nullptr);
  set_run_option_text(cfg, *option, "nccl");
  EXPECT_EQ(cfg.transport, "nccl");
  RunConfig from_file = default_run_config();
  read_run_config(nlohmann::json::parse(R"({"transport": "staged"})"), "f", from_file);
  EXPECT_EQ(from_file.transport, "staged");
}

// NCCL is loaded at run time; where the toolkit's library is here, every entry point must resolve.
TEST(NcclLibrary, LoadsTheToolkitsLibrary) {
  if (!std::getenv("EPLAB_NCCL_LIBRARY") && !std::filesystem::exists("/usr/local/cuda/lib64/libnccl.so.2"))
    GTEST_SKIP() << "no NCCL library here (/usr/local/cuda/lib64/libnccl.so.2, EPLAB_NCCL_LIBRARY unset)";
  EXPECT_EQ(nccl_load_error(), "");
}

// Runs only where there is no GPU (and is skipped where there is one): the NCCL launch refuses, not pretends.
TEST(NcclWithoutGpu, RefusesToLaunch) {
  std::string why;
  if (kernels::device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is present";
  for (const char* transport : {"nccl", "cuda-ipc"}) {
    SCOPED_TRACE(transport);
    const auto b = create_backend("real", transport);
    EXPECT_NE(b->unavailable().find("no CUDA device"), std::string::npos) << b->unavailable();
    ClusterSpec spec = cluster_preset("h800-cx7");
    spec.nodes = 1;
    spec.gpus_per_node = 1;
    bool ran = false;
    const std::string e = error_of([&] { b->launch(Topology(spec), LaunchOptions{}, [&](Fabric&) { ran = true; }); });
    EXPECT_NE(e.find("no CUDA device"), std::string::npos) << e;
    EXPECT_FALSE(ran);
  }
}

// One rank over NCCL or CUDA IPC (an MPI world of one: every exchange goes to itself, through ncclSend/ncclRecv or
// the rank's own receive window) receives what emu receives on the same workload, and verifies. Several ranks
// need mpirun: scripts/gpu_check.sh runs those.
TEST(ProcessTransportsGpu, OneRankMatchesEmu) {
  std::string why;
  if (kernels::device_count(&why) == 0) GTEST_SKIP() << "no CUDA device: " << why;
  RunConfig c;
  c.nodes = 1;
  c.gpus_per_node = 1;
  c.model = "qwen-moe";
  c.hidden = 512;
  c.tokens = 128;
  c.routing = "uniform";
  c.dispatch_codec = "fp32";
  c.combine_codec = "fp32";
  c.steps = 2;
  c.timeout_s = 60;
  for (const char* algo : {"flat", "hierarchical"}) {
    c.algorithm = algo;
    c.backend = "emu";
    c.transport = "";
    const auto emu = run_experiment(c);
    for (const char* transport : {"nccl", "cuda-ipc"}) {
      c.backend = "real";
      c.transport = transport;
      const auto real = run_experiment(c);
      EXPECT_EQ(real["backend"].get<std::string>(), "real");
      EXPECT_TRUE(real["verified"].get<bool>()) << algo << " " << transport << ": " << real["verification"].dump();
      EXPECT_TRUE(real["verification"]["bit_exact"].get<bool>()) << algo << " " << transport;
      EXPECT_EQ(real["verification"]["selections"], emu["verification"]["selections"]) << algo << " " << transport;
      EXPECT_EQ(real["phases"]["dispatch"]["bytes"], emu["phases"]["dispatch"]["bytes"]) << algo << " " << transport;
      EXPECT_EQ(real["phases"]["combine"]["bytes"], emu["phases"]["combine"]["bytes"]) << algo << " " << transport;
    }
  }
}

}  // namespace
}  // namespace eplab
