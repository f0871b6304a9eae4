// RankResult's byte encoding (round trip, determinism, refusal of damaged bytes) and the gather of every rank's
// result on rank 0 through each built backend's fabric.
#include "driver/rank_result.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/backend.hpp"
#include "engine/error.hpp"

namespace eplab {
namespace {

// A result whose every field depends on the rank, so a field dropped or swapped by the encoding shows.
RankResult sample(int rank) {
  RankResult r;
  r.rank = rank;
  PhaseStats p;
  p.time_s = 1.5e-3 * (rank + 1);
  p.codec_s = 2e-6;
  p.bytes[0] = 1, p.bytes[1] = 2.5, p.bytes[2] = 1e9 + rank;
  p.logical_bytes = 7;
  p.scaleout_logical_bytes = 8;
  p.messages = 9;
  p.calls = 2;
  r.record.notify = {p};
  p.time_s *= 2;
  r.record.dispatch = {p, p};
  p.calls = 3;
  r.record.combine = {p};
  r.record.recv_rows = {10 + rank, 20};
  r.record.slot_load = {1, 0, 3, rank};
  r.record.err_sq = 0.25;
  r.record.ref_sq = 4;
  r.record.max_abs_err = 1e-7;
  r.record.mismatches = 5;
  r.record.nonfinite = 1;
  r.record.elements = 1000 + rank;
  r.steps.step_s = {0.1, 0.2};
  r.steps.compute_s = {0.05, 0.06};
  r.steps.allreduce_s = {0, 0.01 * rank};
  r.steps.ops = {{0, static_cast<int32_t>(OpKind::kDispatch), 1, 2, 0.125, 0.5 + rank},
                 {1, static_cast<int32_t>(OpKind::kAllreduce), -1, 0, 2.0, 0.25}};
  r.layer_time_s = {0.3, 0.4};
  r.migration_time_s = {0, 0.001};
  r.call_slot_load = {1, 2, 3, 4, 5, 6, 7, rank};
  r.deliveries.resize(2, 3);
  r.deliveries.sent_to(0, 1).add(3, 4);
  r.deliveries.sent_to(1, 0).add(2, 1);
  r.deliveries.got_from(0, 1).add(3, 4);
  PayloadLedger ledger(true);
  const uint8_t bytes[5] = {1, 2, 3, 4, static_cast<uint8_t>(rank)};
  ledger.sent(1, make_tag(Phase::kDispatch, 1, 0), "dispatch", bytes, sizeof bytes, sizeof bytes);
  ledger.received(2, make_tag(Phase::kUser, 0, 1, 1), "migration", bytes, 3, 3);
  r.payloads = ledger.log();
  r.payloads.tally_messages = 12345;
  r.payloads.tally_bytes = 6789012;
  r.layout_cache.hits = 3;
  r.layout_cache.misses = 1 + rank;
  r.layout_cache.notify_time_saved_s = 1e-5;
  r.layout_cache.notify_time_missed_s = 2e-5;
  r.spans = {{rank, "dispatch", 0.5, 0.75}, {rank, "bwd-combine", 1, 1.25, 1}};
  r.faults.rerouted = 11;
  r.faults.lost = 2 + rank;
  r.faults.departed = 64;
  r.faults.detect_s = 0.5;
  r.faults.first_lost = {2, 0, rank, 7, 21};
  return r;
}

TEST(RankResult, RoundTripsEveryField) {
  const RankResult a = sample(3);
  const std::vector<uint8_t> bytes = encode_rank_result(a);
  const RankResult b = decode_rank_result(bytes, 3);
  EXPECT_EQ(encode_rank_result(b), bytes);  // the encoding covers every field, so equal bytes = equal results
  EXPECT_EQ(b.rank, 3);
  EXPECT_EQ(b.record.combine.at(0).calls, 3);
  EXPECT_EQ(b.record.dispatch.at(1).time_s, a.record.dispatch.at(1).time_s);
  EXPECT_EQ(b.record.slot_load, a.record.slot_load);
  EXPECT_EQ(b.record.elements, a.record.elements);
  EXPECT_EQ(b.steps.allreduce_s, a.steps.allreduce_s);
  EXPECT_EQ(b.call_slot_load, a.call_slot_load);
  EXPECT_EQ(b.deliveries.ranks, a.deliveries.ranks);
  EXPECT_EQ(b.deliveries.sent, a.deliveries.sent);
  EXPECT_EQ(b.deliveries.got, a.deliveries.got);
  EXPECT_TRUE(b.payloads.recorded && b.payloads.checksummed);
  EXPECT_EQ(b.payloads.phases, (std::vector<std::string>{"dispatch", "migration"}));
  ASSERT_EQ(b.payloads.sent.size(), 1u);
  ASSERT_EQ(b.payloads.got.size(), 1u);
  EXPECT_EQ(b.payloads.sent[0].checksum, a.payloads.sent[0].checksum);
  EXPECT_EQ(b.payloads.got[0].phase, 1);
  EXPECT_EQ(b.payloads.got[0].bytes, 3u);
  EXPECT_EQ(b.layout_cache.misses, 4);
  ASSERT_EQ(b.spans.size(), 2u);
  EXPECT_EQ(b.spans[1].name, "bwd-combine");
  EXPECT_EQ(b.spans[1].t1, 1.25);
  EXPECT_EQ(b.spans[1].lane, 1);
  EXPECT_EQ(b.faults.rerouted, 11);
  EXPECT_EQ(b.faults.lost, 5);
  EXPECT_EQ(b.faults.departed, 64);
  EXPECT_EQ(b.faults.detect_s, 0.5);
  EXPECT_EQ(b.faults.first_lost, (std::vector<int32_t>{2, 0, 3, 7, 21}));
  ASSERT_EQ(b.steps.ops.size(), 2u);
  EXPECT_EQ(b.steps.ops[0].micro_batch, 1);
  EXPECT_EQ(b.steps.ops[0].dur, 3.5);
  EXPECT_EQ(b.steps.ops[1].kind, static_cast<int32_t>(OpKind::kAllreduce));
}

TEST(RankResult, SameResultSameBytes) {
  EXPECT_EQ(encode_rank_result(sample(1)), encode_rank_result(sample(1)));
  EXPECT_NE(encode_rank_result(sample(1)), encode_rank_result(sample(2)));
}

TEST(RankResult, RefusesDamagedBytesNamingTheRank) {
  std::vector<uint8_t> bytes = encode_rank_result(sample(5));
  const auto message = [](std::vector<uint8_t> b) {
    try {
      decode_rank_result(b, 5);
    } catch (const EplabError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  std::vector<uint8_t> truncated(bytes.begin(), bytes.end() - 3);
  EXPECT_NE(message(truncated).find("rank 5"), std::string::npos) << message(truncated);
  EXPECT_NE(message(truncated).find("faults.first_lost"), std::string::npos) << message(truncated);
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  EXPECT_NE(message(longer).find("left over"), std::string::npos) << message(longer);
  std::vector<uint8_t> other_version = bytes;
  other_version[4] = static_cast<uint8_t>(kRankResultVersion + 1);
  EXPECT_NE(message(other_version).find("version"), std::string::npos) << message(other_version);
  bytes[0] = 'X';
  EXPECT_NE(message(bytes).find("EPRR"), std::string::npos) << message(bytes);
}

// Rank 0 gets every rank's result in rank order through the fabric, on every in-process backend this build can
// run (sim with phantom payloads: the results still travel as real bytes); the others get nothing.
TEST(RankResult, GatherReachesRankZeroOnEveryBackend) {
  for (const std::string& name : backend_names()) {
    std::unique_ptr<Backend> backend;
    try {
      backend = create_backend(name);
    } catch (const EplabError&) {
      continue;  // left out of this build
    }
    // Every rank's result is inspected here, so the ranks must live in this process; the mpi backend's gather is
    // exercised by ctest's eplab_run_mpi. A backend whose hardware is absent cannot launch.
    if (!backend->in_process() || !backend->unavailable().empty()) continue;
    SCOPED_TRACE(name);
    ClusterSpec spec = cluster_preset("h800-cx7");
    spec.nodes = 2;
    spec.gpus_per_node = 2;
    const Topology topo(spec);
    std::vector<std::vector<RankResult>> got(topo.size());
    backend->launch(topo, LaunchOptions{backend->caps().phantom_payload, 30, ""},
                    [&](Fabric& f) { got[f.rank()] = gather_rank_results(f, sample(f.rank()), 30); });
    ASSERT_EQ(got[0].size(), 4u);
    for (int r = 0; r < 4; ++r) EXPECT_EQ(encode_rank_result(got[0][r]), encode_rank_result(sample(r))) << r;
    for (int r = 1; r < 4; ++r) EXPECT_TRUE(got[r].empty()) << r;
  }
}

}  // namespace
}  // namespace eplab
