// Every algorithm's dispatch/combine on the emulated fabric, checked against the single-process
// reference: 1 to 32 ranks in 1 to 4 nodes, bit-exact in fp32, within the stated tolerance in bf16, and the
// awkward routings (empty ranks, all tokens on one expert, duplicates, unused slots).
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "driver/experiment.hpp"
#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "tests/emu/emu_test_util.hpp"

namespace eplab {
namespace {

using testing_util::expect_verified;
using testing_util::FnSource;
using testing_util::make_batch;
using testing_util::small;

struct Shape {
  int nodes, gpus;
};

class EmuAlgorithms : public ::testing::TestWithParam<std::tuple<std::string, Shape>> {};

TEST_P(EmuAlgorithms, Fp32IsBitExactAgainstReference) {
  const auto& [algo, shape] = GetParam();
  for (const char* transform : {"scale", "ffn"}) {
    RunConfig c = small(shape.nodes, shape.gpus, algo);
    c.transform = transform;
    c.steps = 2;
    const auto r = run_experiment(c);
    expect_verified(r, true);
    EXPECT_EQ(r["ranks"].get<int>(), shape.nodes * shape.gpus);
    EXPECT_GT(r["verification"]["selections"].get<size_t>(), 0u);
  }
}

TEST_P(EmuAlgorithms, Bf16WithinTolerance) {
  const auto& [algo, shape] = GetParam();
  RunConfig c = small(shape.nodes, shape.gpus, algo);
  c.dispatch_codec = "bf16";
  c.combine_codec = "bf16";
  const auto r = run_experiment(c);
  expect_verified(r, false);
  EXPECT_GT(r["verification"]["rel_l2_err"].get<double>(), 0.0);  // bf16 does round
  EXPECT_LE(r["verification"]["rel_l2_err"].get<double>(), r["verification"]["tolerance"].get<double>());
}

// Test names: gtest allows letters, digits and '_' only.
std::string test_name(std::string n) {
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
}

// Every registered algorithm (flat, hierarchical, low-latency, allgather) runs the same checks.
INSTANTIATE_TEST_SUITE_P(RanksAndNodes, EmuAlgorithms,
                         ::testing::Combine(::testing::ValuesIn(algorithm_names()),
                                            ::testing::Values(Shape{1, 1}, Shape{1, 2}, Shape{1, 8}, Shape{2, 8},
                                                              Shape{4, 8}, Shape{4, 4}, Shape{2, 1})),
                         [](const auto& info) {
                           const Shape s = std::get<1>(info.param);
                           return test_name(std::get<0>(info.param)) + "_" + std::to_string(s.nodes) + "x" +
                                  std::to_string(s.gpus);
                         });

class EmuEdgeCases : public ::testing::TestWithParam<std::string> {};

TEST_P(EmuEdgeCases, RankWithNoTokensAndAllTokensOnOneExpert) {
  RunConfig c = small(2, 4, GetParam());
  c.routing_source = std::make_shared<FnSource>([](int s, int l, int r) {
    RoutingBatch b = make_batch(s, l, r, r == 3 ? 0 : 20, 8);
    for (int t = 0; t < b.num_tokens; ++t) {
      b.topk_idx[t * 8] = 77;  // every token to one expert
      b.topk_weights[t * 8] = 1.0f;
    }
    return b;
  });
  const auto r = run_experiment(c);
  expect_verified(r, true);
  EXPECT_GT(r["imbalance"]["rank_max_over_mean"].get<double>(), 7.9);  // all rows on one of 8 ranks
}

TEST_P(EmuEdgeCases, DuplicatesWithinANodeAndUnusedSlots) {
  RunConfig c = small(2, 4, GetParam());
  c.routing_source = std::make_shared<FnSource>([](int s, int l, int r) {
    RoutingBatch b = make_batch(s, l, r, 16, 8);
    for (int t = 0; t < 16; ++t) {
      // Experts 0..15 live on rank 0 (128 experts / 8 ranks); 16..31 on rank 1, same node.
      const int32_t ids[8] = {1, 2, -1, 17, 100, -1, 3, static_cast<int32_t>(64 + t)};
      for (int k = 0; k < 8; ++k) {
        b.topk_idx[t * 8 + k] = ids[k];
        b.topk_weights[t * 8 + k] = ids[k] < 0 ? 0.f : 0.125f * (k + 1);
      }
    }
    return b;
  });
  expect_verified(run_experiment(c), true);
}

TEST_P(EmuEdgeCases, TokensWithNoSelectionAtAll) {
  RunConfig c = small(1, 4, GetParam());
  c.routing_source = std::make_shared<FnSource>([](int s, int l, int r) {
    RoutingBatch b = make_batch(s, l, r, 12, 8);
    for (int t = 0; t < 12; t += 2) {  // odd tokens select nothing (all -1)
      b.topk_idx[t * 8 + 7] = (t * 13 + r) % 128;
      b.topk_weights[t * 8 + 7] = 0.5f;
    }
    return b;
  });
  expect_verified(run_experiment(c), true);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, EmuEdgeCases, ::testing::ValuesIn(algorithm_names()),
                         [](const auto& info) { return test_name(info.param); });

TEST(EmuReport, HasTheDocumentedKeys) {
  RunConfig c = small(2, 2, "hierarchical");
  const auto r = run_experiment(c);
  for (const char* k :
       {"backend", "cluster", "model", "ranks", "algorithm", "codec", "verified", "phases", "imbalance", "wall_s"})
    EXPECT_TRUE(r.contains(k)) << k;
  for (const char* p : {"notify", "dispatch", "combine"})
    for (const char* k : {"time_s", "bytes", "logical_bw_GBps", "scaleup_bw_GBps", "scaleout_bw_GBps"})
      EXPECT_TRUE(r["phases"][p].contains(k)) << p << "." << k;
  EXPECT_EQ(r["backend"], "emu");
  // Hierarchical: nothing crosses the scale-out network more than once per (token, node): scale-out bytes of
  // the dispatch payload stay below flat's for the same routing.
  RunConfig f = c;
  f.algorithm = "flat";
  const auto rf = run_experiment(f);
  EXPECT_LT(r["phases"]["dispatch"]["bytes"]["scaleout"].get<double>(),
            rf["phases"]["dispatch"]["bytes"]["scaleout"].get<double>());
}

TEST(EmuBadInput, ClearErrors) {
  auto expect_error = [](RunConfig c, const std::string& needle) {
    try {
      run_experiment(c);
      ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
    } catch (const EplabError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  RunConfig c = small(1, 2, "flat");
  RunConfig bad = c;
  bad.cluster = "h900";
  expect_error(bad, "unknown cluster preset 'h900'");
  bad = c;
  bad.model = "gpt5";
  expect_error(bad, "unknown model preset 'gpt5'");
  bad = c;
  bad.tokens = 0;
  expect_error(bad, "--tokens");
  bad = c;
  bad.algorithm = "ring";
  expect_error(bad, "unknown algorithm 'ring'");
  bad = c;
  bad.backend = "quantum";
  expect_error(bad, "unknown backend 'quantum'");
  bad = c;
  bad.nodes = 3;  // 3 x 2 = 6 ranks do not divide 128 experts
  expect_error(bad, "do not divide");
  bad = c;
  bad.payload = "phantom";
  expect_error(bad, "phantom");
  bad = c;
  bad.routing_source = std::make_shared<FnSource>([](int s, int l, int r) {
    RoutingBatch b = make_batch(s, l, r, 4, 8);
    b.topk_idx[5] = 128;  // the model has experts 0..127
    return b;
  });
  expect_error(bad, "selects expert 128");
}

// One emulated rank holding every expert of qwen-moe at hidden 16, its engine sending with `codec`: for tests
// that hand the engine's message functions messages of their own.
void on_one_rank(const std::string& codec, const std::function<void(EpEngine&, const MoeShape&)>& body) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = 1;
  MoeShape shape = model_preset("qwen-moe");
  shape.hidden = 16;
  const Placement placement = Placement::contiguous(shape.num_experts, 1, 0);
  EngineOptions opts;
  opts.dispatch_codec = codec;
  create_backend("emu")->launch(Topology(spec), LaunchOptions{}, [&](Fabric& f) {
    EpEngine engine(f, shape, placement, opts);
    body(engine, shape);
  });
}

// A slot the placement does not have, in a received block message (the sender's error, reported with the peer)
// or in a caller's dispatch, is an error; it must not index the engine's per-slot tables.
TEST(EmuBadInput, SlotsOutsideThePlacementAreErrors) {
  on_one_rank("fp32", [](EpEngine& engine, const MoeShape& shape) {
    EngineContext& c = engine.context();
    for (int32_t slot : {shape.num_experts, -1}) {
      TokenBlock b;
      b.add_token(0, 0);
      b.add_sel(slot, 1.0f);
      const std::vector<float> row(shape.hidden, 1.0f);
      const EngineContext::Message m = c.make_block_message(b, row.data(), *c.dispatch_codec, 1);
      TokenBlock out;
      std::vector<float> rows;
      try {
        c.read_block_message(m.bytes, m.bytes.size(), out, rows, *c.dispatch_codec, 1, 0);
        ADD_FAILURE() << "slot " << slot << " was accepted";
      } catch (const FabricError& e) {
        EXPECT_NE(std::string(e.what()).find("selection for slot " + std::to_string(slot)), std::string::npos)
            << e.what();
      }
    }
    // The same check at the engine's door: a caller's slot outside the placement.
    const std::vector<int32_t> slots = {0, shape.num_experts};
    const std::vector<float> weights = {0.5f, 0.5f}, x(2 * shape.hidden, 1.0f);
    try {
      engine.dispatch(DispatchArgs{0, 0, 1, 2, slots.data(), weights.data(), x.data()});
      ADD_FAILURE() << "slot " << shape.num_experts << " was dispatched";
    } catch (const EplabError& e) {
      EXPECT_NE(std::string(e.what()).find("selects slot " + std::to_string(shape.num_experts)), std::string::npos)
          << e.what();
    }
  });
}

// Conservation: a block that holds other counts than its sender announced in notify is an error naming the rank
// pair, the phase and the call, on both the wire-row path (bf16) and the fp32-decode path (bf16+zstd).
TEST(EmuConservation, ABlockMustHoldWhatNotifyAnnounced) {
  for (const char* codec : {"bf16", "bf16+zstd"}) {
    on_one_rank(codec, [&](EpEngine& engine, const MoeShape& shape) {
      EngineContext& c = engine.context();
      c.fabric.set_phase("dispatch");
      TokenBlock b;
      for (int t = 0; t < 2; ++t) {
        b.add_token(0, t);
        b.add_sel(t, 1.0f);
      }
      const std::vector<float> rows(2 * shape.hidden, 1.0f);
      const EngineContext::Message m = c.make_block_message(b, rows.data(), *c.dispatch_codec, 1);
      Handle h;
      h.step = 3;
      h.layer = 5;
      TokenBlock scratch;
      std::vector<float> scratch_rows;
      EXPECT_EQ(c.add_block_message(h, m.bytes, m.bytes.size(), 2, 2, *c.dispatch_codec, 1, 0, scratch, scratch_rows),
                2);
      try {
        c.add_block_message(h, m.bytes, m.bytes.size(), 3, 3, *c.dispatch_codec, 1, 0, scratch, scratch_rows);
        ADD_FAILURE() << codec << ": a block of 2 tokens passed for 3";
      } catch (const FabricError& e) {
        const std::string w = e.what();
        for (const char* part : {"rank 0, message from peer 0 in phase dispatch (step 3, layer 5)",
                                 "holds 2 tokens / 2 selections, notify announced 3 / 3"})
          EXPECT_NE(w.find(part), std::string::npos) << codec << ": " << part << " missing from: " << w;
      }
    });
  }
}

// Where the last stage receives rows straight into the handle (EngineContext::split_blocks), the block's
// metadata arrives alone: it must still hold what notify announced, and announce the rows message's size.
TEST(EmuConservation, ASplitBlockMustHoldWhatNotifyAnnouncedAndAnnounceItsRows) {
  on_one_rank("bf16", [&](EpEngine& engine, const MoeShape& shape) {
    EngineContext& c = engine.context();
    EXPECT_TRUE(c.split_blocks());  // emu, a row-separable codec
    c.fabric.set_phase("dispatch");
    TokenBlock b;
    for (int t = 0; t < 2; ++t) {
      b.add_token(0, t);
      b.add_sel(t, 1.0f);
    }
    const size_t rows = 2 * c.dispatch_row_bytes;
    ASSERT_EQ(c.dispatch_row_bytes, 2u * shape.hidden);
    std::vector<uint8_t> meta;
    pack_block(b, rows, meta);
    Handle h;
    h.step = 3;
    h.layer = 5;
    TokenBlock scratch;
    EXPECT_EQ(c.add_split_block(h, meta, meta.size(), rows, 2, 2, 0, scratch), 2);
    EXPECT_EQ(h.recv.size(), 2);
    const auto error_of = [&](size_t row_bytes, uint32_t tokens) {
      try {
        c.add_split_block(h, meta, meta.size(), row_bytes, tokens, tokens, 0, scratch);
      } catch (const FabricError& e) {
        return std::string(e.what());
      }
      return std::string("accepted");
    };
    const std::string counts = error_of(rows, 3);
    EXPECT_NE(counts.find("holds 2 tokens / 2 selections, notify announced 3 / 3"), std::string::npos) << counts;
    EXPECT_NE(counts.find("rank 0, message from peer 0 in phase dispatch (step 3, layer 5)"), std::string::npos)
        << counts;
    const std::string size = error_of(rows - 1, 2);
    EXPECT_NE(size.find("block announces " + std::to_string(rows) + " payload bytes, message carries " +
                        std::to_string(rows - 1)),
              std::string::npos)
        << size;
    EXPECT_EQ(h.recv.size(), 2);  // a refused block adds nothing
  });
}

// On emu (Caps::gather_send) a source's dispatch block is its metadata in a send buffer and the list of its batch's
// wire rows: the message carries the same bytes a contiguous one would, and the rows are not copied to build it.
TEST(EmuGatherSends, ASourceBlockListsTheBatchRowsWhereTheyLie) {
  on_one_rank("bf16", [&](EpEngine& engine, const MoeShape& shape) {
    EngineContext& c = engine.context();
    ASSERT_TRUE(c.gather_sends);
    const size_t rb = c.dispatch_row_bytes;
    std::vector<uint8_t> batch(3 * rb);
    for (size_t i = 0; i < batch.size(); ++i) batch[i] = static_cast<uint8_t>(i * 7 + 1);
    TokenBlock b;
    for (int t : {2, 0}) {
      b.add_token(0, t);
      b.add_sel(t, 0.5f);
    }
    TokenBlock copy = b;
    DispatchArgs a;
    a.num_tokens = 3;
    a.x_rows = batch.data();
    std::vector<int32_t> sent;
    std::vector<float> scratch;
    const EngineContext::Message m = c.take_source_block(0, b, a, 1, sent, scratch);
    std::vector<uint8_t> want;
    pack_block(copy, 2 * rb, want);
    const size_t meta = want.size();
    want.insert(want.end(), batch.begin() + 2 * rb, batch.begin() + 3 * rb);
    want.insert(want.end(), batch.begin(), batch.begin() + rb);
    EXPECT_EQ(c.outboxes[0].size(), meta);  // the send buffer holds the metadata only
    ASSERT_EQ(m.row_ptrs.size(), 2u);
    EXPECT_EQ(m.row_ptrs[0], batch.data() + 2 * rb);
    EXPECT_EQ(m.row_ptrs[1], batch.data());
    EXPECT_EQ(m.meta_bytes, meta);
    const ConstBuf whole = m.buf();
    ASSERT_EQ(whole.bytes, want.size());
    std::vector<uint8_t> got(whole.bytes);
    whole.copy_to(got.data());
    EXPECT_EQ(got, want);
    EXPECT_EQ(m.rows().bytes, 2 * rb);
    EXPECT_EQ(m.meta().bytes, meta);
    EXPECT_EQ(sent, (std::vector<int32_t>{2, 0}));
  });
}

}  // namespace
}  // namespace eplab
