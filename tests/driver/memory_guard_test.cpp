// The memory guard's estimate (rows a uniform routing delivers, per codec row format) and its refusal.
#include "driver/memory_guard.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "engine/backend.hpp"
#include "engine/error.hpp"

namespace eplab {
namespace {

RunConfig emu_config(int tokens, const std::string& codec) {
  RunConfig c;
  c.backend = "emu";
  c.nodes = 2;
  c.gpus_per_node = 8;
  c.model = "deepseek-v3";
  c.tokens = tokens;
  c.dispatch_codec = c.combine_codec = codec;
  return c;
}

TEST(MemoryGuard, EstimateFollowsTheLayoutBoundAndTheRowFormat) {
  const RunConfig c = emu_config(1024, "bf16");
  const RunSetup run = resolve_run(c, *create_backend("emu"));
  const MemoryEstimate e = estimate_run_memory(c, run);
  EXPECT_EQ(e.ranks_here, 16);
  // Top-8 of 256 experts, 16 per rank: a token misses a rank with probability C(240, 8) / C(256, 8).
  double miss = 1;
  for (int i = 0; i < 8; ++i) miss *= (240.0 - i) / (256.0 - i);
  EXPECT_DOUBLE_EQ(e.rows_per_rank, 1024.0 * 16 * (1 - miss));
  EXPECT_NEAR(e.rows_per_rank / 1024, 6.52, 0.01);
  // The batch as bf16 rows (14336 bytes) in the combined output's buffer, bf16 for inference (RunSetup::out_bf16).
  ASSERT_TRUE(run.out_bf16);
  EXPECT_DOUBLE_EQ(e.batch_bytes, 1024.0 * 7168 * 2);
  // Training keeps the batch's rows for the backward pass, a buffer of their own, and the output in fp32.
  RunConfig tr = c;
  tr.mode = "training";
  EXPECT_DOUBLE_EQ(estimate_run_memory(tr, resolve_run(tr, *create_backend("emu"))).batch_bytes,
                   1024.0 * 14336 + 1024.0 * 7168 * 4);
  // Hierarchical (the default) on emu: the handle's bf16 rows (14336 bytes; combine reads the answers in place,
  // so nothing holds them again), and per (token, node) pair the rail's receive buffer, which holds the row and
  // then the sum sent back. Dispatch's gather sends take the rows from the batch and the rail's receive buffers
  // where they lie, so no send buffer holds rows. The payload moves in two rail rounds (a source's 1024 rows
  // to a node take 14.7 MB, over kRailRoundBytes), so the rail's buffers hold 512 tokens' rows.
  ASSERT_TRUE(run.caps.gather_send && run.caps.consume_in_place);
  ASSERT_EQ(run.engine.rail_rounds, 2);
  double node_miss = 1;
  for (int i = 0; i < 8; ++i) node_miss *= (128.0 - i) / (256.0 - i);
  const double rail_rows = 512.0 * (1 - node_miss), fwd_rows = e.rows_per_rank / 8 / 2;
  EXPECT_DOUBLE_EQ(e.rows_bytes, e.rows_per_rank * 14336 + 2 * rail_rows * 14336);
  EXPECT_DOUBLE_EQ(e.bytes, 16 * (e.batch_bytes + e.rows_bytes) * 1.07);  // and the allocator's slack
  // A fabric without gather sends copies the rows into send buffers: the rail's, and the forward sub-round's two
  // only where a forward message (the rows a GPU receives in a round, over 8 GPUs) outgrows the rail message
  // whose buffer it takes. Where the sums are not read in place they are built in buffers of their own, and
  // the local ranks' answers come into buffers, a round's at a time.
  RunSetup copying = run;
  copying.caps.gather_send = false;
  ASSERT_LT(fwd_rows, rail_rows);  // at 2 nodes the rail's buffers are the larger
  EXPECT_DOUBLE_EQ(estimate_run_memory(c, copying).rows_bytes, e.rows_per_rank * 14336 + 2 * rail_rows * 2 * 14336);
  RunSetup no_consume = run;
  no_consume.caps.consume_in_place = false;
  EXPECT_DOUBLE_EQ(estimate_run_memory(c, no_consume).rows_bytes,
                   e.rows_per_rank * 14336 + e.rows_per_rank / 2 * 14336 + 2 * rail_rows * 2 * 14336);
  // Ranks as processes (mpi) consume combine's answers a stretch at a time where their senders hold them, or,
  // where single copy is off, take the copying path: its buffers are the estimate.
  RunSetup processes = no_consume;
  processes.in_process = false;
  EXPECT_DOUBLE_EQ(estimate_run_memory(c, processes).rows_bytes, estimate_run_memory(c, no_consume).rows_bytes);
  // Flat has no rail stage: on emu the handle's rows alone. It sends in rounds of kFlatRoundPeers (2) peers, so
  // without gather sends the send buffers hold two peers' rows (1024 (1 - miss) tokens each), and where combine
  // cannot read its answers in place they come back into those buffers.
  RunConfig f = c;
  f.algorithm = "flat";
  RunSetup flat = resolve_run(f, *create_backend("emu"));
  EXPECT_DOUBLE_EQ(estimate_run_memory(f, flat).rows_bytes, e.rows_per_rank * 14336);
  const double round_rows = 2 * 1024.0 * (1 - miss);
  flat.caps.gather_send = false;
  EXPECT_DOUBLE_EQ(estimate_run_memory(f, flat).rows_bytes, e.rows_per_rank * 14336 + round_rows * 14336);
  flat.caps.gather_send = true;
  flat.caps.consume_in_place = false;
  EXPECT_DOUBLE_EQ(estimate_run_memory(f, flat).rows_bytes, e.rows_per_rank * 14336 + round_rows * 14336);
  // DeepSeek-V3's own codecs, fp8 rows (7168 + 56 scales x 4 bytes) in and bf16 out: expert compute writes the
  // larger outputs over the received rows, so the handle holds bf16 rows only; copied sends hold the fp8 rows
  // sent, copied answers the bf16 rows, the larger.
  RunConfig f8 = f;
  f8.dispatch_codec = "fp8-e4m3-b128";
  RunSetup flat8 = resolve_run(f8, *create_backend("emu"));
  EXPECT_DOUBLE_EQ(estimate_run_memory(f8, flat8).rows_bytes, e.rows_per_rank * 14336);
  flat8.caps.gather_send = false;
  EXPECT_DOUBLE_EQ(estimate_run_memory(f8, flat8).rows_bytes, e.rows_per_rank * 14336 + round_rows * 7392);
  flat8.caps.consume_in_place = false;
  EXPECT_DOUBLE_EQ(estimate_run_memory(f8, flat8).rows_bytes, e.rows_per_rank * 14336 + round_rows * 14336);
  // --combine-out fp32: the output takes 4 bytes an element, and the bf16 batch lies in its tail.
  RunConfig fb = f;
  fb.combine_out = "fp32";
  EXPECT_DOUBLE_EQ(estimate_run_memory(fb, resolve_run(fb, *create_backend("emu"))).batch_bytes, 1024.0 * 7168 * 4);
  fb.combine_out = "bf16";     // as the default for inference
  fb.dispatch_codec = "fp32";  // fp32 rows do not fit in a bf16 output: a buffer of their own
  EXPECT_DOUBLE_EQ(estimate_run_memory(fb, resolve_run(fb, *create_backend("emu"))).batch_bytes,
                   1024.0 * 7168 * 4 + 1024.0 * 7168 * 2);
  // Algorithms that read the batch as fp32 hold it so, beside the output.
  RunConfig l = c;
  l.algorithm = "low-latency";
  EXPECT_DOUBLE_EQ(estimate_run_memory(l, resolve_run(l, *create_backend("emu"))).batch_bytes,
                   1024.0 * 7168 * 4 + 1024.0 * 7168 * 2);
  // A codec that does not encode rows on its own is held in fp32 after dispatch.
  const RunConfig z = emu_config(1024, "bf16+zstd");
  EXPECT_GT(estimate_run_memory(z, resolve_run(z, *create_backend("emu"))).rows_bytes, e.rows_bytes);
}

TEST(MemoryGuard, RefusesWhatDoesNotFitNamingTheEstimateTheMemoryAndTheWayOut) {
  const RunConfig c = emu_config(16384, "bf16");
  const RunSetup run = resolve_run(c, *create_backend("emu"));
  const std::string msg = [&] {
    try {
      check_run_memory(c, run, 24e9);
    } catch (const EplabError& e) {
      return std::string(e.what());
    }
    return std::string("not refused");
  }();
  for (const char* part : {"needs about", "16 ranks", "24.0 GB is available", "--tokens", "--payload phantom",
                           "--backend=sim", "EPLAB_MEMORY_GUARD=0"})
    EXPECT_NE(msg.find(part), std::string::npos) << part << " missing from: " << msg;
  EXPECT_NO_THROW(check_run_memory(emu_config(256, "bf16"), run, 24e9));
  EXPECT_NO_THROW(check_run_memory(c, run, 0));  // available memory unknown: no guess
}

// Ranks that are processes pay more for each exchange, so hierarchical moves their payload in rail rounds 8
// times as large (kProcessRailRoundBytes): DeepSeek-V3's bf16 rows (14336 bytes) from 4096 tokens in one round
// where emu takes 7, from 16384 in 4 where emu takes 28. The estimate holds the larger rounds.
TEST(MemoryGuard, RanksThatAreProcessesHoldLargerRailRounds) {
  const std::vector<std::string> built = backend_names();
  if (std::find(built.begin(), built.end(), "mpi") == built.end() || !create_backend("mpi")->unavailable().empty())
    GTEST_SKIP() << "mpi backend not built";
  for (const auto& [tokens, threads, processes] : {std::tuple{4096, 7, 1}, std::tuple{16384, 28, 4}}) {
    RunConfig c = emu_config(tokens, "bf16");
    const RunSetup on_emu = resolve_run(c, *create_backend("emu"));
    c.backend = "mpi";
    const RunSetup on_mpi = resolve_run(c, *create_backend("mpi"));
    EXPECT_EQ(on_emu.engine.rail_rounds, threads) << tokens;
    EXPECT_EQ(on_mpi.engine.rail_rounds, processes) << tokens;
    RunSetup emu_rounds = on_mpi;
    emu_rounds.engine.rail_rounds = threads;
    EXPECT_GT(estimate_run_memory(c, on_mpi).rows_bytes, estimate_run_memory(c, emu_rounds).rows_bytes) << tokens;
  }
}

TEST(MemoryGuard, PhantomRunsNeedNoGuard) {
  RunConfig c = emu_config(16384, "bf16");
  c.backend = "sim";
  // create_backend throws for a backend this build left out, so ask the registry's names first.
  const std::vector<std::string> built = backend_names();
  if (std::find(built.begin(), built.end(), "sim") == built.end() || !create_backend("sim")->unavailable().empty())
    GTEST_SKIP() << "sim backend not built";
  EXPECT_EQ(estimate_run_memory(c, resolve_run(c, *create_backend("sim"))).bytes, 0);
}

}  // namespace
}  // namespace eplab
