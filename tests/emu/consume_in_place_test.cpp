// Combine reading its answers where their senders hold them (Fabric::alltoallv_consume, emu) against combine
// copying them into receive buffers first: the same output bits for every codec pair and both algorithms that
// use it, and no receive buffer grown for the answers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"

namespace eplab {
namespace {

struct Outcome {
  std::vector<std::vector<float>> out;  // [rank] combined output, two calls one after the other
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
// kept buffers are used again). Expert compute: each received row times a factor of its index.
Outcome run_engine(const std::string& algo, const std::string& dcodec, const std::string& ccodec, bool consume) {
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
  Outcome o;
  o.out.resize(R);
  o.box_bytes_dispatch.resize(R);
  o.box_bytes_combine.resize(R);
  std::mutex mu;
  create_backend("emu")->launch(topo, LaunchOptions{}, [&](Fabric& f) {
    const int me = f.rank();
    EpEngine engine(f, shape, placement, opts);
    EngineContext& c = engine.context();
    std::vector<float> all;
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
      auto expert = [](int i, const float* in, float* out, int n) {
        const float s = 0.5f + 0.125f * static_cast<float>(i % 5);
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
      std::vector<float> out(static_cast<size_t>(T) * H, -1.0f);
      engine.combine(h, partials.empty() ? nullptr : partials.data(), out.data());
      all.insert(all.end(), out.begin(), out.end());
      const std::lock_guard<std::mutex> lock(mu);
      o.box_bytes_dispatch[me] = after_dispatch;
      o.box_bytes_combine[me] = box_bytes(c);
      o.consumed = c.consume_in_place();
    }
    const std::lock_guard<std::mutex> lock(mu);
    o.out[me] = std::move(all);
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
