// The CUDA kernels against the CPU code they replace, compared bit for bit on random and awkward inputs
// (dispatch layout vs compute_layout, fp8-e4m3-b128 vs the CPU codec's bytes, permute, combine), and the
// `real` backend running the engine end to end. Without a GPU every test skips and says why.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "driver/experiment.hpp"
#include "engine/layout.hpp"
#include "kernels/gpu_runtime.hpp"
#include "kernels/ops.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

using kernels::DeviceBuffer;

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (kernels::device_count(&why) == 0) GTEST_SKIP() << "no CUDA device: " << why;
    kernels::set_device(0);
  }
  kernels::Stream& stream() {
    if (!stream_) stream_ = std::make_unique<kernels::Stream>();
    return *stream_;
  }

 private:
  std::unique_ptr<kernels::Stream> stream_;
};

template <class T>
DeviceBuffer to_device(const std::vector<T>& v) {
  DeviceBuffer b(v.size() * sizeof(T));
  b.upload(v.data(), v.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> to_host(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  b.download(v.data(), n * sizeof(T));
  return v;
}

// ---- dispatch layout ----

struct LayoutCase {
  int nodes, gpus, experts, redundant, tokens, topk;
  const char* pattern;  // random | hot | sparse
};

void check_layout(kernels::Stream& stream, const LayoutCase& c, uint64_t seed) {
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = c.nodes;
  spec.gpus_per_node = c.gpus;
  const Topology topo(spec);
  const Placement placement = Placement::contiguous(c.experts, topo.size(), c.redundant);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> slot(0, placement.num_slots() - 1);
  std::vector<int32_t> slots(static_cast<size_t>(c.tokens) * c.topk);
  for (auto& s : slots) {
    const std::string p = c.pattern;
    if (p == "hot") {
      s = static_cast<int32_t>(rng() % 3);  // every token on the first rank's first slots, duplicates included
    } else if (p == "sparse") {
      s = rng() % 4 == 0 ? slot(rng) : -1;
    } else {
      s = rng() % 16 == 0 ? -1 : slot(rng);
    }
  }
  const DispatchLayout want = compute_layout(slots, c.tokens, c.topk, placement, topo);

  const int ranks = topo.size();
  DeviceBuffer d_slots = to_device(slots);
  DeviceBuffer per_rank(4 * ranks), per_node(4 * c.nodes), per_slot(4 * placement.num_slots()), invalid(4),
      in_rank(static_cast<size_t>(c.tokens) * ranks);
  kernels::dispatch_layout(d_slots.as<int32_t>(), c.tokens, c.topk, placement.num_slots(), placement.slots_per_rank(),
                           c.gpus, per_rank.as<int32_t>(), per_node.as<int32_t>(), per_slot.as<int32_t>(),
                           in_rank.as<uint8_t>(), invalid.as<int32_t>(), stream.get());
  stream.sync();
  const std::string what = std::string(c.pattern) + " " + std::to_string(c.nodes) + "x" + std::to_string(c.gpus) +
                           ", tokens " + std::to_string(c.tokens) + ", topk " + std::to_string(c.topk);
  EXPECT_EQ(to_host<int32_t>(per_rank, ranks), want.tokens_per_rank) << what;
  EXPECT_EQ(to_host<int32_t>(per_node, c.nodes), want.tokens_per_node) << what;
  EXPECT_EQ(to_host<int32_t>(per_slot, placement.num_slots()), want.tokens_per_slot) << what;
  EXPECT_EQ(to_host<uint8_t>(in_rank, static_cast<size_t>(c.tokens) * ranks), want.is_token_in_rank) << what;
  EXPECT_EQ(to_host<int32_t>(invalid, 1)[0], 0) << what;
}

TEST_F(GpuTest, DispatchLayoutMatchesCpu) {
  const LayoutCase cases[] = {
      {1, 4, 128, 0, 256, 8, "random"},   {2, 8, 256, 0, 4096, 8, "random"}, {4, 8, 256, 32, 1000, 8, "random"},
      {1, 8, 64, 8, 513, 6, "hot"},       {2, 4, 32, 0, 300, 4, "sparse"},   {1, 2, 8, 0, 1, 1, "random"},
      {8, 8, 12288, 0, 777, 8, "random"},  // 12288 slots: past the shared-memory histogram, global atomics
  };
  uint64_t seed = 1;
  for (const auto& c : cases) check_layout(stream(), c, seed++);
}

TEST_F(GpuTest, DispatchLayoutCountsInvalidSlots) {
  std::vector<int32_t> slots{0, 5, 99, -1, 3, 8};  // 8 slots on 2 ranks: 99 and 8 are out of range
  DeviceBuffer d_slots = to_device(slots), per_rank(8), per_node(4), per_slot(32), invalid(4), in_rank(6);
  kernels::dispatch_layout(d_slots.as<int32_t>(), 3, 2, 8, 4, 2, per_rank.as<int32_t>(), per_node.as<int32_t>(),
                           per_slot.as<int32_t>(), in_rank.as<uint8_t>(), invalid.as<int32_t>(), stream().get());
  stream().sync();
  EXPECT_EQ(to_host<int32_t>(invalid, 1)[0], 2);
  EXPECT_EQ(to_host<int32_t>(per_rank, 2), (std::vector<int32_t>{2, 1}));
}

// ---- fp8-e4m3-b128 ----

// Rows that exercise every path of the CPU quantizer: ordinary data at several magnitudes, all-zero blocks
// (amax floored to 1e-4), values under the floor (subnormal codes), a huge dynamic range within a block,
// NaN and +-Inf (ignored by amax, coded as NaN), +-0, and fp32 subnormals.
std::vector<float> fp8_input(int tokens, int hidden, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(tokens) * hidden);
  for (int t = 0; t < tokens; ++t) {
    float* row = &x[static_cast<size_t>(t) * hidden];
    const int kind = t % 8;
    const float mag = std::ldexp(1.f, static_cast<int>(rng() % 40) - 20);
    for (int i = 0; i < hidden; ++i) {
      float v = normal(rng) * mag;
      switch (kind) {
        case 1:
          v = 0.f;
          break;
        case 2:
          v = normal(rng) * 3e-6f;
          break;
        case 3:
          v = i % 128 == 5 ? 6e4f : normal(rng) * 1e-3f;
          break;
        case 4:
          v = i % 37 == 0 ? std::numeric_limits<float>::quiet_NaN() : v;
          break;
        case 5:
          v = i % 41 == 0 ? (i % 2 ? -1.f : 1.f) * std::numeric_limits<float>::infinity() : v;
          break;
        case 6:
          v = i % 3 == 0 ? -0.f : (i % 3 == 1 ? std::numeric_limits<float>::denorm_min() * (i + 1) : v);
          break;
        default:
          break;
      }
      row[i] = v;
    }
  }
  return x;
}

std::string first_difference(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i])
      return "byte " + std::to_string(i) + ": gpu " + std::to_string(a[i]) + ", cpu " + std::to_string(b[i]);
  return "";
}

TEST_F(GpuTest, Fp8QuantizeAndDequantizeAreBitExactWithCpuCodec) {
  auto codec = create_codec("fp8-e4m3-b128");
  struct Shape {
    int tokens, hidden;
  };
  // 7168: DeepSeek-V3; 200, 4097, 1, 129: a partial last block.
  for (const Shape s :
       {Shape{64, 7168}, Shape{37, 200}, Shape{16, 4097}, Shape{9, 1}, Shape{24, 129}, Shape{1024, 256}}) {
    SCOPED_TRACE("tokens " + std::to_string(s.tokens) + ", hidden " + std::to_string(s.hidden));
    const auto x = fp8_input(s.tokens, s.hidden, static_cast<uint64_t>(s.tokens * 131 + s.hidden));
    std::vector<uint8_t> cpu_wire;
    codec->encode(x.data(), s.tokens, s.hidden, cpu_wire);
    ASSERT_EQ(cpu_wire.size(), kernels::fp8_e4m3_b128_token_bytes(s.hidden) * s.tokens);

    DeviceBuffer d_x = to_device(x), d_wire(cpu_wire.size()), d_out(x.size() * 4);
    d_wire.fill(0xAB);  // every byte must be written
    kernels::fp8_e4m3_b128_quantize(d_x.as<float>(), s.tokens, s.hidden, d_wire.as<uint8_t>(), stream().get());
    stream().sync();
    const auto gpu_wire = to_host<uint8_t>(d_wire, cpu_wire.size());
    EXPECT_EQ(first_difference(gpu_wire, cpu_wire), "");

    // Decode the CPU's bytes on both sides and compare the floats' bits, NaN payloads included.
    std::vector<float> cpu_out(x.size());
    codec->decode(cpu_wire.data(), cpu_wire.size(), s.tokens, s.hidden, cpu_out.data());
    DeviceBuffer d_cpu_wire = to_device(cpu_wire);
    kernels::fp8_e4m3_b128_dequantize(d_cpu_wire.as<uint8_t>(), s.tokens, s.hidden, d_out.as<float>(), stream().get());
    stream().sync();
    const auto gpu_out = to_host<float>(d_out, x.size());
    std::vector<uint8_t> a(x.size() * 4), b(x.size() * 4);
    std::memcpy(a.data(), gpu_out.data(), a.size());
    std::memcpy(b.data(), cpu_out.data(), b.size());
    EXPECT_EQ(first_difference(a, b), "");
  }
}

TEST_F(GpuTest, Fp8DequantizeMatchesCpuOnEveryCode) {
  // Every one of the 256 codes (both NaN codes, -0, subnormals) under a few scales.
  auto codec = create_codec("fp8-e4m3-b128");
  const int hidden = 256, tokens = 4;
  const size_t tb = kernels::fp8_e4m3_b128_token_bytes(hidden);
  std::vector<uint8_t> wire(tb * tokens);
  const float scales[] = {1.f, 1e-4f / 448.f, 3.5f, 1e30f};
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < hidden; ++i) wire[t * tb + i] = static_cast<uint8_t>(i + t);
    for (int b = 0; b < 2; ++b) std::memcpy(&wire[t * tb + hidden + 4 * b], &scales[(t + b) % 4], 4);
  }
  std::vector<float> cpu(static_cast<size_t>(tokens) * hidden);
  codec->decode(wire.data(), wire.size(), tokens, hidden, cpu.data());
  DeviceBuffer d_wire = to_device(wire), d_out(cpu.size() * 4);
  kernels::fp8_e4m3_b128_dequantize(d_wire.as<uint8_t>(), tokens, hidden, d_out.as<float>(), stream().get());
  stream().sync();
  const auto gpu = to_host<float>(d_out, cpu.size());
  EXPECT_EQ(std::memcmp(gpu.data(), cpu.data(), cpu.size() * 4), 0);
}

// ---- permute and combine ----

TEST_F(GpuTest, PermuteRowsGathersEveryWidth) {
  std::mt19937_64 rng(7);
  for (size_t row_bytes : {size_t{7168 * 2}, size_t{7224}, size_t{13}, size_t{4}}) {
    const int in_rows = 50, out_rows = 80;
    std::vector<uint8_t> in(in_rows * row_bytes);
    for (auto& b : in) b = static_cast<uint8_t>(rng());
    std::vector<int32_t> index(out_rows);
    for (auto& i : index) i = rng() % 5 == 0 ? -1 : static_cast<int32_t>(rng() % in_rows);
    std::vector<uint8_t> want(out_rows * row_bytes, 0);
    for (int r = 0; r < out_rows; ++r)
      if (index[r] >= 0) std::memcpy(&want[r * row_bytes], &in[index[r] * row_bytes], row_bytes);
    DeviceBuffer d_in = to_device(in), d_index = to_device(index), d_out(want.size());
    d_out.fill(0xCD);
    kernels::permute_rows(d_in.get(), d_index.as<int32_t>(), out_rows, row_bytes, d_out.get(), stream().get());
    stream().sync();
    EXPECT_EQ(to_host<uint8_t>(d_out, want.size()), want) << "row bytes " << row_bytes;
  }
}

TEST_F(GpuTest, WeightedCombineMatchesCpuLoop) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  const int tokens = 97, topk = 8, hidden = 300, rows = 500;
  std::vector<float> in(static_cast<size_t>(rows) * hidden), weight(tokens * topk);
  std::vector<int32_t> src(tokens * topk);
  for (auto& v : in) v = normal(rng);
  for (auto& w : weight) w = std::abs(normal(rng));
  for (auto& s : src) s = rng() % 7 == 0 ? -1 : static_cast<int32_t>(rng() % rows);
  std::vector<float> want(static_cast<size_t>(tokens) * hidden);
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < hidden; ++h) {
      float acc = 0.f;
      for (int k = 0; k < topk; ++k) {
        const int32_t s = src[t * topk + k];
        if (s < 0) continue;
        const float p = weight[t * topk + k] * in[static_cast<size_t>(s) * hidden + h];
        acc = acc + p;
      }
      want[static_cast<size_t>(t) * hidden + h] = acc;
    }
  DeviceBuffer d_in = to_device(in), d_src = to_device(src), d_w = to_device(weight), d_out(want.size() * 4);
  kernels::weighted_combine(d_in.as<float>(), d_src.as<int32_t>(), d_w.as<float>(), tokens, topk, hidden,
                            d_out.as<float>(), stream().get());
  stream().sync();
  const auto got = to_host<float>(d_out, want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * 4), 0);
}

// ---- the real backend ----

RunConfig real_run(const std::string& codec) {
  RunConfig c;
  c.backend = "real";
  c.nodes = 1;
  c.gpus_per_node = 4;
  c.model = "qwen-moe";
  c.hidden = 512;
  c.tokens = 128;
  c.routing = "uniform";
  c.dispatch_codec = codec;
  c.combine_codec = codec;
  c.steps = 2;
  c.timeout_s = 60;
  return c;
}

TEST_F(GpuTest, RealBackendRunsTheEngineBitExactInFp32) {
  for (const char* algo : {"flat", "hierarchical"}) {
    RunConfig c = real_run("fp32");
    c.algorithm = algo;
    const auto r = run_experiment(c);
    EXPECT_EQ(r["backend"].get<std::string>(), "real");
    ASSERT_TRUE(r["verification"]["ran"].get<bool>()) << algo;
    EXPECT_TRUE(r["verification"]["bit_exact"].get<bool>()) << algo << ": " << r["verification"].dump();
    EXPECT_TRUE(r["verified"].get<bool>()) << algo;
  }
}

TEST_F(GpuTest, RealBackendVerifiesBf16) {
  const auto r = run_experiment(real_run("bf16"));
  ASSERT_TRUE(r["verification"]["ran"].get<bool>());
  EXPECT_TRUE(r["verified"].get<bool>()) << r["verification"].dump();
}

// Runs with or without a GPU: capabilities must not depend on one.
TEST(RealBackendCaps, ReportsHostBuffers) {
  // Honest capabilities: the engine's buffers are host memory, staged through the GPU per message.
  const Caps caps = create_backend("real")->caps();
  EXPECT_TRUE(caps.real_payload);
  EXPECT_FALSE(caps.device_memory);
  EXPECT_FALSE(caps.modeled_time);
}

// Runs where there is no GPU (and is skipped where there is one): the backend must refuse, not pretend.
TEST(RealBackendWithoutGpu, RefusesToLaunch) {
  std::string why;
  if (kernels::device_count(&why) > 0) GTEST_SKIP() << "a CUDA device is present";
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = 2;
  bool ran = false;
  try {
    create_backend("real")->launch(Topology(spec), LaunchOptions{}, [&](Fabric&) { ran = true; });
    ADD_FAILURE() << "launch without a GPU must throw";
  } catch (const EplabError& e) {
    EXPECT_NE(std::string(e.what()).find("found no CUDA device"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace eplab
