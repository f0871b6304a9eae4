// The two-batch overlap composition (driver/overlap.hpp) on hand-made phase durations: zero compute hides
// nothing, compute much longer than communication hides all but the last combine, exposed + hidden == total,
// exchanges start together on every rank, the all-reduce hides behind the next layer's backward compute, and a
// rank that ran other phases is refused.
#include "driver/overlap.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/error.hpp"

namespace eplab {
namespace {

struct Durations {
  double dense = 0, dispatch = 0, expert = 0, combine = 0;
};

// One rank's inference step in the order the rank program simulates it: per layer, micro-batch 0's dense,
// dispatch, expert, combine, then micro-batch 1's.
std::vector<OverlapOp> inference(int steps, int layers, const Durations& d) {
  std::vector<OverlapOp> ops;
  double t = 0;
  auto add = [&](int step, OpKind k, int mb, int layer, double dur) {
    ops.push_back({step, static_cast<int32_t>(k), mb, layer, t, dur});
    t += dur;
  };
  for (int s = 0; s < steps; ++s)
    for (int l = 0; l < layers; ++l)
      for (int mb = 0; mb < 2; ++mb) {
        add(s, OpKind::kDense, mb, l, d.dense);
        add(s, OpKind::kDispatch, mb, l, d.dispatch);
        add(s, OpKind::kExpert, mb, l, d.expert);
        add(s, OpKind::kCombine, mb, l, d.combine);
      }
  return ops;
}

double exposed_of(const StepOverlap& s, const std::string& phase) {
  for (const auto& [name, x] : s.exposed_by_phase)
    if (name == phase) return x;
  return 0;
}

TEST(TwoBatchOverlap, ZeroComputeHidesNothing) {
  const Durations d{0, 3e-4, 0, 5e-4};
  const OverlapResult o = compose_two_batch({inference(1, 4, d), inference(1, 4, d)});
  ASSERT_EQ(o.steps.size(), 1u);
  const StepOverlap& s = o.steps[0];
  EXPECT_EQ(s.hidden_s, 0.0);
  EXPECT_DOUBLE_EQ(s.comm_s, 2 * 4 * (3e-4 + 5e-4));
  EXPECT_DOUBLE_EQ(s.exposed_s, s.comm_s);
  EXPECT_DOUBLE_EQ(s.step_s, s.serial_step_s);
}

TEST(TwoBatchOverlap, LongComputeHidesAllButTheLastCombine) {
  const int L = 5;
  const Durations d{2e-3, 1e-5, 3e-3, 2e-5};
  const OverlapResult o = compose_two_batch({inference(1, L, d), inference(1, L, d), inference(1, L, d)});
  const StepOverlap& s = o.steps[0];
  const double compute = 2 * L * (d.dense + d.expert);
  EXPECT_DOUBLE_EQ(s.compute_s, compute);
  // The compute stream never waits; only micro-batch 1's last combine has no compute left to hide behind.
  EXPECT_NEAR(s.exposed_s, d.combine, 1e-15);
  EXPECT_NEAR(s.step_s, compute + d.combine, 1e-15);
  EXPECT_NEAR(exposed_of(s, "dispatch"), 0.0, 1e-15);
  EXPECT_NEAR(s.hidden_s, s.comm_s - d.combine, 1e-15);
  // Serially every exchange is exposed.
  EXPECT_NEAR(s.serial_step_s, compute + 2 * L * (d.dispatch + d.combine), 1e-15);
}

TEST(TwoBatchOverlap, ExposedPlusHiddenIsTheTotalAndNeverSlowerThanSerial) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1e-3);
  for (int trial = 0; trial < 50; ++trial) {
    const int R = 1 + trial % 6, L = 1 + trial % 4, S = 1 + trial % 2;
    std::vector<std::vector<OverlapOp>> ops;
    for (int r = 0; r < R; ++r) {
      ops.push_back(inference(S, L, {}));
      for (auto& op : ops.back()) op.dur = trial % 5 == 0 && !is_comm(static_cast<OpKind>(op.kind)) ? 0.0 : u(rng);
    }
    const OverlapResult o = compose_two_batch(ops);
    ASSERT_EQ(o.steps.size(), static_cast<size_t>(S));
    for (const StepOverlap& s : o.steps) {
      EXPECT_NEAR(s.exposed_s + s.hidden_s, s.comm_s, 1e-15 * (1 + L));
      EXPECT_GE(s.exposed_s, -1e-15);
      EXPECT_GE(s.hidden_s, 0.0);
      EXPECT_LE(s.step_s, s.serial_step_s + 1e-15);
      // Every moment of the critical rank's step is compute, communication or both.
      EXPECT_NEAR(s.compute_s + s.exposed_s, s.step_s, 1e-12) << "trial " << trial;
      double by_phase = 0;
      for (const auto& p : s.exposed_by_phase) by_phase += p.second;
      EXPECT_NEAR(by_phase, s.exposed_s, 1e-15 * (1 + L));
    }
  }
}

TEST(TwoBatchOverlap, ExchangesStartTogetherAndMicroBatchesAlternate) {
  // Rank 1 computes twice as long: every exchange waits for it, and starts on both ranks at once.
  auto fast = inference(1, 2, {1e-4, 1e-5, 1e-4, 1e-5}), slow = inference(1, 2, {2e-4, 1e-5, 2e-4, 1e-5});
  const OverlapResult o = compose_two_batch({fast, slow}, [](int) { return true; });
  ASSERT_EQ(o.spans.size(), 2 * fast.size());
  std::vector<const TimelineSpan*> by_rank[2];
  for (const TimelineSpan& s : o.spans) by_rank[s.rank].push_back(&s);
  for (size_t i = 0; i < by_rank[0].size(); ++i) {
    const TimelineSpan &a = *by_rank[0][i], &b = *by_rank[1][i];
    ASSERT_EQ(a.name, b.name);
    if (a.name == "dispatch" || a.name == "combine") {
      EXPECT_EQ(a.t0, b.t0) << i;
    }
  }
  // On the slow rank (the fast one waits for it), micro-batch 1's first dispatch runs while micro-batch 0
  // computes its experts.
  const TimelineSpan* disp1 = nullptr;
  for (const TimelineSpan* s : by_rank[1])
    if (s->name == "dispatch" && s->lane == 1 && !disp1) disp1 = s;
  ASSERT_NE(disp1, nullptr);
  bool under_compute = false;
  for (const TimelineSpan* s : by_rank[1])
    if (s->lane == 0 && (s->name == "expert" || s->name == "dense") && s->t0 < disp1->t1 && disp1->t0 < s->t1)
      under_compute = true;
  EXPECT_TRUE(under_compute);
}

TEST(TwoBatchOverlap, AllreduceHidesBehindTheNextLayersBackwardCompute) {
  // A training backward of two layers: per layer both micro-batches' backward phases, then the layer's
  // all-reduce; the last layer's has nothing after it.
  std::vector<OverlapOp> ops;
  double t = 0;
  auto add = [&](OpKind k, int mb, int layer, double dur) {
    ops.push_back({0, static_cast<int32_t>(k), mb, layer, t, dur});
    t += dur;
  };
  const double ar = 1e-3, bexp = 5e-3;
  for (int layer = 1; layer >= 0; --layer) {
    for (int mb = 0; mb < 2; ++mb) {
      add(OpKind::kBwdDispatch, mb, layer, 1e-5);
      add(OpKind::kBwdExpert, mb, layer, bexp);
      add(OpKind::kBwdCombine, mb, layer, 1e-5);
      add(OpKind::kBwdDense, mb, layer, 1e-3);
    }
    add(OpKind::kAllreduce, -1, layer, ar);
  }
  const OverlapResult o = compose_two_batch({ops});
  const StepOverlap& s = o.steps[0];
  // Layer 1's all-reduce runs under layer 0's backward compute; layer 0's is exposed.
  EXPECT_NEAR(exposed_of(s, "allreduce"), ar, 1e-15);
  EXPECT_NEAR(s.exposed_s + s.hidden_s, s.comm_s, 1e-15);
  EXPECT_LT(s.step_s, s.serial_step_s - ar * 0.9);
}

TEST(TwoBatchOverlap, MigrationIsAJoin) {
  std::vector<OverlapOp> ops = inference(1, 2, {1e-3, 1e-4, 1e-3, 1e-4});
  // Weights move before layer 1: neither micro-batch's layer-1 work may start before the move ends.
  size_t at = 0;
  while (ops[at].layer == 0) ++at;
  ops.insert(ops.begin() + static_cast<ptrdiff_t>(at),
             OverlapOp{0, static_cast<int32_t>(OpKind::kMigration), -1, 1, 0, 5e-3});
  const OverlapResult o = compose_two_batch({ops}, [](int) { return true; });
  double mig_end = 0, first_layer1 = 1e9, last_layer0 = 0;
  for (size_t i = 0; i < o.spans.size(); ++i) {
    const TimelineSpan& s = o.spans[i];
    if (s.name == "migration") mig_end = s.t1;
  }
  for (size_t i = 0; i < o.spans.size(); ++i) {
    const TimelineSpan& s = o.spans[i];
    if (s.name == "migration") continue;
    const int layer = ops[i].layer;
    if (layer == 1) first_layer1 = std::min(first_layer1, s.t0);
    if (layer == 0) last_layer0 = std::max(last_layer0, s.t1);
  }
  EXPECT_GE(first_layer1, mig_end);
  EXPECT_GE(mig_end - 5e-3, last_layer0 - 1e-15);
  EXPECT_NEAR(exposed_of(o.steps[0], "migration"), 5e-3, 1e-15);
}

TEST(TwoBatchOverlap, RefusesRanksThatRanOtherPhases) {
  auto a = inference(1, 2, {1, 1, 1, 1}), b = a;
  b[3].kind = static_cast<int32_t>(OpKind::kExpert);
  try {
    compose_two_batch({a, a, b});
    FAIL() << "accepted";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace eplab
