// What low-latency and allgather are there for, on the emulated fabric (their
// correctness runs in ep_emu_test.cpp with every other algorithm): DeepEP's
// per-selection messages and bytes for low-latency, and the much larger
// scale-out traffic of the allgather baseline.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "driver/experiment.hpp"
#include "policies/codecs/codec.hpp"
#include "tests/emu/emu_test_util.hpp"

namespace eplab {
namespace {

using testing_util::expect_verified;
using testing_util::FnSource;
using testing_util::make_batch;
using testing_util::small;

TEST(EmuNewAlgorithms, AreRegistered) {
  const auto names = algorithm_names();
  for (const char *n : {"low-latency", "allgather"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
    EXPECT_EQ(create_algorithm(n)->name(), n);
  }
  EXPECT_EQ(create_algorithm("low-latency")->reduction(), ReductionOrder::kSelections);
  EXPECT_EQ(create_algorithm("allgather")->reduction(), ReductionOrder::kRanks);
}

// Issue 3 item 5: low-latency counts one message per (token, selected expert),
// local ones included, of hidden + hidden/128 x 4 + 16 bytes for FP8 dispatch
// and hidden x 2 for BF16 combine.
TEST(EmuLowLatency, MessagesAndBytesArePerSelection) {
  RunConfig c = small(2, 4, "low-latency");
  c.dispatch_codec = "fp8-e4m3-b128";
  c.combine_codec = "bf16";
  c.steps = 2;
  const auto r = run_experiment(c);
  ASSERT_TRUE(r["verification"]["ran"].get<bool>());
  EXPECT_TRUE(r["verification"]["delivery_ok"].get<bool>()) << r["verification"].dump();
  EXPECT_TRUE(r["verification"]["combine_ok"].get<bool>()) << r["verification"].dump();
  const double calls = 2;
  const double sels = r["verification"]["selections"].get<double>() / calls;  // per call, all ranks
  ASSERT_GT(sels, 0);
  const int H = 256, R = 8;
  EXPECT_EQ(create_codec("fp8-e4m3-b128")->encoded_size(1, H), static_cast<size_t>(H + H / 128 * 4));
  const double dispatch_per_sel = H + H / 128 * 4 + 16, combine_per_sel = H * 2;
  const auto &d = r["phases"]["dispatch"];
  const auto &cb = r["phases"]["combine"];
  EXPECT_DOUBLE_EQ(d["messages"].get<double>(), sels);
  EXPECT_DOUBLE_EQ(cb["messages"].get<double>(), sels);
  EXPECT_DOUBLE_EQ(d["bytes"]["total"].get<double>(), sels * dispatch_per_sel);
  EXPECT_DOUBLE_EQ(cb["bytes"]["total"].get<double>(), sels * combine_per_sel);
  EXPECT_DOUBLE_EQ(d["logical_bytes_per_rank"].get<double>() * R, sels * dispatch_per_sel);
  EXPECT_DOUBLE_EQ(cb["logical_bytes_per_rank"].get<double>() * R, sels * combine_per_sel);
  // Straight to the expert's GPU: local selections use the self link, nothing
  // else is forwarded.
  EXPECT_GT(d["bytes"]["self"].get<double>(), 0);
  EXPECT_GT(d["bytes"]["scaleup"].get<double>(), 0);
  EXPECT_GT(d["bytes"]["scaleout"].get<double>(), 0);
}

// DeepEP's fixed layout gives each source num_max_dispatch_tokens_per_rank rows
// per expert; only a token that selects one expert twice can exceed that, and
// low-latency says so instead of corrupting a neighbour's rows. Allgather has
// no fixed slots and verifies the same routing.
TEST(EmuLowLatency, ReceiveSlotOverflowIsAnError) {
  auto twice = std::make_shared<FnSource>([](int s, int l, int r) {
    RoutingBatch b = make_batch(s, l, r, 10, 8);
    for (int t = 0; t < 10; ++t) {
      b.topk_idx[t * 8] = b.topk_idx[t * 8 + 1] = 5;
      b.topk_weights[t * 8] = 0.25f;
      b.topk_weights[t * 8 + 1] = 0.75f;
    }
    return b;
  });
  RunConfig c = small(1, 2, "low-latency");
  c.routing_source = twice;
  try {
    run_experiment(c);
    ADD_FAILURE() << "expected a receive-slot overflow";
  } catch (const std::exception &e) {
    EXPECT_NE(std::string(e.what()).find("overflows its receive region"), std::string::npos) << e.what();
  }
  c.algorithm = "allgather";
  expect_verified(run_experiment(c), true);
}

TEST(EmuAllgather, MovesMoreScaleOutBytesThanHierarchical) {
  RunConfig c = small(2, 4, "allgather");
  const auto ra = run_experiment(c);
  expect_verified(ra, true);
  c.algorithm = "hierarchical";
  const auto rh = run_experiment(c);
  expect_verified(rh, true);
  for (const char *p : {"dispatch", "combine"})
    EXPECT_GT(ra["phases"][p]["bytes"]["scaleout"].get<double>(), rh["phases"][p]["bytes"]["scaleout"].get<double>())
        << p;
  // Every rank receives every token: 8 ranks x 48 tokens x hidden x 4 bytes of
  // rows each, at least.
  EXPECT_GE(ra["phases"]["dispatch"]["bytes"]["total"].get<double>(), 8.0 * 8 * 48 * 256 * 4);
}

}  // namespace
}  // namespace eplab
