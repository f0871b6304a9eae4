// Combine reading its answers where their senders hold them (Fabric::alltoallv_consume, emu) against combine
// copying them into receive buffers first: the same output bits for every codec pair and both algorithms that
// use it, and no receive buffer grown for the answers; and a bf16 output (EpEngine::combine_bf16) written token
// by token equal to the fp32 output rounded.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "driver/experiment.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "engine/ep_engine.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {
namespace {

struct Outcome {
  std::vector<std::vector<float>> out;  // [rank] combined output, two calls one after the other
  std::vector<std::vector<uint16_t>> out_bf16;  // [rank] the same through combine_bf16 (bf16_out)
  std::vector<size_t> box_bytes_dispatch, box_bytes_combine;  // [rank] inboxes + outboxes after each phase
  bool consumed = false;
};

size_t box_bytes(const EngineContext& c) {
  size_t n = 0;
  for (const auto& v : c.inboxes) n += v.size();
  for (const auto& v : c.outboxes) n += v.size();
  return n;
}

// 2 nodes x 4 GPUs, qwen-moe at hidden 256, 64 tokens per rank, two calls (the second with other routing, so the
// kept buffers are used again). Expert compute: each received row times a factor of its source and token.
Outcome run_engine(const std::string& algo, const std::string& dcodec, const std::string& ccodec, bool consume,
                   bool bf16_out = false, int rail_rounds = 1) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 2;
  spec.gpus_per_node = 4;
  const Topology topo(spec);
  MoeShape shape = model_preset("qwen-moe");
  shape.hidden = 256;
  const int R = topo.size(), T = 64, H = shape.hidden, K = shape.topk;
  const Placement placement = Placement::contiguous(shape.num_experts, R, 0);
  EngineOptions opts;
  opts.algorithm = algo;
  opts.dispatch_codec = dcodec;
  opts.combine_codec = ccodec;
  opts.consume_in_place = consume;
  opts.rail_rounds = rail_rounds;
  Outcome o;
  o.out.resize(R);
  o.out_bf16.resize(R);
  o.box_bytes_dispatch.resize(R);
  o.box_bytes_combine.resize(R);
  std::mutex mu;
  create_backend("emu")->launch(topo, LaunchOptions{}, [&](Fabric& f) {
    const int me = f.rank();
    EpEngine engine(f, shape, placement, opts);
    EngineContext& c = engine.context();
    std::vector<float> all;
    std::vector<uint16_t> all_bf16;
    for (int call = 0; call < 2; ++call) {
      std::vector<int32_t> slots(static_cast<size_t>(T) * K);
      std::vector<float> weights(slots.size()), x(static_cast<size_t>(T) * H);
      for (int t = 0; t < T; ++t) {
        for (int k = 0; k < K; ++k) {  // distinct slots, spread over the ranks
          slots[static_cast<size_t>(t) * K + k] = (t * 37 + k * 17 + me * 5 + call * 11) % shape.num_experts;
          weights[static_cast<size_t>(t) * K + k] = 0.05f + 0.01f * static_cast<float>((t + k) % 9);
        }
        for (int e = 0; e < H; ++e)
          x[static_cast<size_t>(t) * H + e] = std::sin(0.01f * static_cast<float>(e + 7 * t + 131 * me + call));
      }
      DispatchArgs a{0, call, T, K, slots.data(), weights.data(), x.data()};
      Handle h = engine.dispatch(a);
      const size_t after_dispatch = box_bytes(c);
      // A factor of the row's origin (not of its place in the handle, which rail rounds change).
      auto expert = [&h](int i, const float* in, float* out, int n) {
        const float s = 0.5f + 0.125f * static_cast<float>((h.recv.token[i] + 3 * h.recv.src_rank[i]) % 5);
        for (int e = 0; e < n; ++e) out[e] = in[e] * s;
      };
      std::vector<float> partials, scratch(H);
      if (c.can_map_rows(h)) {
        c.map_rows(h, [&](int i, const float* in, float* out) { expert(i, in, out, H); });
      } else {
        partials.resize(static_cast<size_t>(h.recv.size()) * H);
        for (int i = 0; i < h.recv.size(); ++i)
          expert(i, c.recv_row(h, i, scratch.data()), &partials[static_cast<size_t>(i) * H], H);
      }
      if (bf16_out) {
        std::vector<uint16_t> out(static_cast<size_t>(T) * H, 0xFFFF);
        engine.combine_bf16(h, partials.empty() ? nullptr : partials.data(), out.data());
        all_bf16.insert(all_bf16.end(), out.begin(), out.end());
      } else {
        std::vector<float> out(static_cast<size_t>(T) * H, -1.0f);
        engine.combine(h, partials.empty() ? nullptr : partials.data(), out.data());
        all.insert(all.end(), out.begin(), out.end());
      }
      const std::lock_guard<std::mutex> lock(mu);
      o.box_bytes_dispatch[me] = after_dispatch;
      o.box_bytes_combine[me] = box_bytes(c);
      o.consumed = c.consume_in_place();
    }
    const std::lock_guard<std::mutex> lock(mu);
    o.out[me] = std::move(all);
    o.out_bf16[me] = std::move(all_bf16);
  });
  return o;
}

struct Case {
  const char* algo;
  const char* dispatch_codec;
  const char* combine_codec;
};

class ConsumeInPlace : public ::testing::TestWithParam<Case> {};

TEST_P(ConsumeInPlace, SameBitsAsCopyingAndNoAnswerBuffers) {
  const Case& k = GetParam();
  const Outcome copied = run_engine(k.algo, k.dispatch_codec, k.combine_codec, false);
  const Outcome consumed = run_engine(k.algo, k.dispatch_codec, k.combine_codec, true);
  EXPECT_FALSE(copied.consumed);
  ASSERT_TRUE(consumed.consumed) << "emu offers Caps::consume_in_place";
  for (size_t r = 0; r < copied.out.size(); ++r) {
    ASSERT_EQ(copied.out[r].size(), consumed.out[r].size());
    EXPECT_EQ(std::memcmp(copied.out[r].data(), consumed.out[r].data(), copied.out[r].size() * sizeof(float)), 0)
        << "rank " << r;
    bool any = false;
    for (float v : consumed.out[r]) any |= v != 0.0f && v != -1.0f;
    EXPECT_TRUE(any) << "rank " << r << " combined nothing";
    // Combine's answers took no receive buffer (the kept inboxes and outboxes hold what dispatch left).
    EXPECT_EQ(consumed.box_bytes_combine[r], consumed.box_bytes_dispatch[r]) << "rank " << r;
  }
}

// combine_bf16: written token by token where the answers are consumed in place, through an fp32 buffer where
// they are copied; both equal to combine's fp32 output rounded to bf16, bit for bit.
TEST_P(ConsumeInPlace, Bf16OutputIsTheFp32SumRounded) {
  const Case& k = GetParam();
  const Outcome fp32 = run_engine(k.algo, k.dispatch_codec, k.combine_codec, true);
  const Outcome direct = run_engine(k.algo, k.dispatch_codec, k.combine_codec, true, true);
  const Outcome through = run_engine(k.algo, k.dispatch_codec, k.combine_codec, false, true);
  for (size_t r = 0; r < fp32.out.size(); ++r) {
    std::vector<uint16_t> want(fp32.out[r].size());
    codecs::bf16_encode_kernel(fp32.out[r].data(), want.size(), reinterpret_cast<uint8_t*>(want.data()));
    ASSERT_EQ(direct.out_bf16[r].size(), want.size());
    EXPECT_TRUE(direct.out_bf16[r] == want) << "rank " << r << ": written token by token";
    EXPECT_TRUE(through.out_bf16[r] == want) << "rank " << r << ": through an fp32 buffer";
  }
}

// Hierarchical in rail rounds (EngineOptions::rail_rounds; 64 tokens in 3 rounds of 22, 22 and 20, or in 64 of
// one): the same output bits as one round, consumed in place or copied, fp32 or bf16 out, and the kept buffers,
// which hold a round's rail rows, smaller.
TEST(RailRounds, GiveTheSameBits) {
  for (const Case& k : {Case{"hierarchical", "fp32", "fp32"}, Case{"hierarchical", "bf16", "bf16"},
                        Case{"hierarchical", "fp8-e4m3-b128", "bf16"}})
    for (bool consume : {true, false})
      for (bool bf16_out : {false, true}) {
        const Outcome one = run_engine(k.algo, k.dispatch_codec, k.combine_codec, consume, bf16_out, 1);
        for (int rounds : {3, 64}) {
          const Outcome many = run_engine(k.algo, k.dispatch_codec, k.combine_codec, consume, bf16_out, rounds);
          size_t boxes_one = 0, boxes_many = 0;
          for (size_t r = 0; r < one.out.size(); ++r) {
            EXPECT_TRUE(one.out[r] == many.out[r] && one.out_bf16[r] == many.out_bf16[r])
                << k.dispatch_codec << "/" << k.combine_codec << ", rank " << r << ", " << rounds
                << " rounds, consume " << consume << ", bf16 out " << bf16_out;
            boxes_one += one.box_bytes_dispatch[r];
            boxes_many += many.box_bytes_dispatch[r];
          }
          EXPECT_LT(boxes_many, boxes_one) << k.dispatch_codec << ", " << rounds << " rounds";
        }
      }
}

// --combine-out bf16 end to end: every algorithm verifies against the reference rounded the same way, bit for bit
// in fp32 on the wire (the same sums, rounded once on both sides), and says so in the report; it is the default
// (auto) for inference, training refuses it and keeps fp32 by default.
TEST(CombineOutBf16, EveryAlgorithmVerifiesAgainstTheRoundedReference) {
  for (const char* algo : {"flat", "hierarchical", "low-latency", "allgather"}) {
    RunConfig c;
    c.backend = "emu";
    c.nodes = 2;
    c.gpus_per_node = 4;
    c.model = "qwen-moe";
    c.hidden = 256;
    c.tokens = 48;
    c.algorithm = algo;
    c.dispatch_codec = "fp32";
    c.combine_codec = "fp32";
    c.combine_out = "bf16";
    nlohmann::json r = run_experiment(c);
    EXPECT_TRUE(r["verified"].get<bool>()) << algo << ": " << r["verification"].dump();
    EXPECT_TRUE(r["verification"]["bit_exact"].get<bool>()) << algo;
    EXPECT_EQ(r["codec"]["combine_out"], "bf16") << algo;
    c.dispatch_codec = c.combine_codec = "bf16";
    r = run_experiment(c);
    EXPECT_TRUE(r["verified"].get<bool>()) << algo << ": " << r["verification"].dump();
    c.combine_out = "auto";  // the default: bf16 for inference
    EXPECT_EQ(run_experiment(c)["codec"]["combine_out"], "bf16") << algo;
    c.combine_out = "fp32";
    EXPECT_FALSE(run_experiment(c)["codec"].contains("combine_out")) << "an fp32 output adds no key";
  }
  RunConfig t;
  t.backend = "emu";
  t.nodes = 2;
  t.gpus_per_node = 4;
  t.tokens = 16;
  t.hidden = 256;
  t.model = "qwen-moe";
  t.mode = "training";
  t.combine_out = "bf16";
  try {
    run_experiment(t);
    ADD_FAILURE() << "training ran with --combine-out bf16";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("--combine-out bf16"), std::string::npos) << e.what();
  }
  t.combine_out = "auto";  // the default: training keeps the fp32 output
  nlohmann::json r = run_experiment(t);
  EXPECT_TRUE(r["verified"].get<bool>()) << r["verification"].dump();
  EXPECT_FALSE(r["codec"].contains("combine_out"));
}

INSTANTIATE_TEST_SUITE_P(
    CodecPairs, ConsumeInPlace,
    ::testing::Values(Case{"flat", "fp32", "fp32"}, Case{"flat", "bf16", "bf16"},
                      Case{"flat", "fp8-e4m3-b128", "bf16"}, Case{"flat", "delta+bf16", "delta+bf16"},
                      Case{"hierarchical", "fp32", "fp32"}, Case{"hierarchical", "bf16", "bf16"},
                      Case{"hierarchical", "fp8-e4m3-b128", "bf16"}),
    [](const auto& info) {
      std::string n = std::string(info.param.algo) + "_" + info.param.dispatch_codec + "_" + info.param.combine_codec;
      for (char& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });

}  // namespace
}  // namespace eplab
