// gpu_bench: fp8-e4m3-b128 quantize/dequantize and the dispatch layout on the GPU against the CPU codec and
// compute_layout, plus device-to-device copy bandwidth. GPU times come from CUDA events around `reps`
// back-to-back launches on device-resident data (no H2D in the timing); CPU times are one thread's.
//   gpu_bench [--tokens 4096] [--hidden 7168] [--reps 20] [--json FILE]
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "engine/error.hpp"
#include "engine/layout.hpp"
#include "kernels/gpu_runtime.hpp"
#include "kernels/ops.hpp"
#include "policies/codecs/codec.hpp"

namespace {

using namespace eplab;

struct Row {
  std::string op, device;
  double seconds;  // per call
  double bytes;    // read + written per call
  double items;    // tokens per call
};

template <class F>
double cpu_seconds(int reps, F&& f) {
  f();  // warm caches and page in the output
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / reps;
}

template <class F>
double gpu_seconds(kernels::Stream& s, int reps, F&& f) {
  f();
  s.sync();
  kernels::EventTimer timer(s.get());
  timer.start();
  for (int i = 0; i < reps; ++i) f();
  return timer.stop_s() / reps;
}

int run(int argc, char** argv) {
  int tokens = 4096, hidden = 7168, reps = 20;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw EplabError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--tokens") {
      tokens = std::stoi(value());
    } else if (a == "--hidden") {
      hidden = std::stoi(value());
    } else if (a == "--reps") {
      reps = std::stoi(value());
    } else if (a == "--json") {
      json_path = value();
    } else {
      throw EplabError("gpu_bench: unknown argument '" + a + "' (--tokens, --hidden, --reps, --json)");
    }
  }
  const int cpu_reps = std::max(1, reps / 10);

  std::mt19937_64 rng(1);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(tokens) * hidden);
  for (auto& v : x) v = normal(rng);
  const size_t wire_bytes = kernels::fp8_e4m3_b128_token_bytes(hidden) * tokens;
  const double fp32_bytes = 4.0 * static_cast<double>(x.size());

  // Layout: DeepSeek-V3's EP64 shape, 256 experts top-8 on 8 nodes x 8 GPUs.
  ClusterSpec spec = cluster_preset("h800-cx7");
  spec.nodes = 8;
  spec.gpus_per_node = 8;
  const Topology topo(spec);
  const Placement placement = Placement::contiguous(256, topo.size());
  const int topk = 8;
  std::vector<int32_t> slots(static_cast<size_t>(tokens) * topk);
  for (auto& s : slots) s = static_cast<int32_t>(rng() % placement.num_slots());
  const double layout_bytes = 4.0 * slots.size() + static_cast<double>(tokens) * topo.size();

  std::vector<Row> rows;
  auto codec = create_codec("fp8-e4m3-b128");
  std::vector<uint8_t> wire;
  wire.reserve(wire_bytes);
  rows.push_back({"fp8 quantize", "cpu",
                  cpu_seconds(cpu_reps,
                              [&] {
                                wire.clear();
                                codec->encode(x.data(), tokens, hidden, wire);
                              }),
                  fp32_bytes + wire_bytes, double(tokens)});
  std::vector<float> back(x.size());
  rows.push_back({"fp8 dequantize", "cpu",
                  cpu_seconds(cpu_reps, [&] { codec->decode(wire.data(), wire.size(), tokens, hidden, back.data()); }),
                  fp32_bytes + wire_bytes, double(tokens)});
  rows.push_back({"dispatch layout", "cpu",
                  cpu_seconds(cpu_reps, [&] { (void)compute_layout(slots, tokens, topk, placement, topo); }),
                  layout_bytes, double(tokens)});

  std::string why, device = "none";
  const bool have_gpu = kernels::device_count(&why) > 0;
  if (have_gpu) {
    kernels::set_device(0);
    device = kernels::device_name(0);
    kernels::Stream s;
    kernels::DeviceBuffer d_x(x.size() * 4), d_wire(wire_bytes), d_out(x.size() * 4);
    d_x.upload(x.data(), x.size() * 4);
    rows.push_back(
        {"fp8 quantize", "gpu",
         gpu_seconds(
             s, reps,
             [&] { kernels::fp8_e4m3_b128_quantize(d_x.as<float>(), tokens, hidden, d_wire.as<uint8_t>(), s.get()); }),
         fp32_bytes + wire_bytes, double(tokens)});
    rows.push_back({"fp8 dequantize", "gpu",
                    gpu_seconds(s, reps,
                                [&] {
                                  kernels::fp8_e4m3_b128_dequantize(d_wire.as<uint8_t>(), tokens, hidden,
                                                                    d_out.as<float>(), s.get());
                                }),
                    fp32_bytes + wire_bytes, double(tokens)});
    kernels::DeviceBuffer d_slots(slots.size() * 4), per_rank(4 * topo.size()), per_node(4 * topo.nodes()),
        per_slot(4 * placement.num_slots()), invalid(4), in_rank(static_cast<size_t>(tokens) * topo.size());
    d_slots.upload(slots.data(), slots.size() * 4);
    rows.push_back({"dispatch layout", "gpu",
                    gpu_seconds(s, reps,
                                [&] {
                                  kernels::dispatch_layout(d_slots.as<int32_t>(), tokens, topk, placement.num_slots(),
                                                           placement.slots_per_rank(), topo.gpus_per_node(),
                                                           per_rank.as<int32_t>(), per_node.as<int32_t>(),
                                                           per_slot.as<int32_t>(), in_rank.as<uint8_t>(),
                                                           invalid.as<int32_t>(), s.get());
                                }),
                    layout_bytes, double(tokens)});
    const size_t copy_bytes = size_t{256} << 20;
    kernels::DeviceBuffer a(copy_bytes), b(copy_bytes);
    a.fill(1);
    // Bytes are counted once per copy (as nvbandwidth does); the memory itself moves twice that.
    rows.push_back({"d2d copy 256 MiB", "gpu",
                    gpu_seconds(s, reps, [&] { kernels::copy_d2d(b.get(), a.get(), copy_bytes, s.get()); }),
                    double(copy_bytes), 0});
  }

  std::printf("gpu_bench | %d tokens x hidden %d | device: %s\n", tokens, hidden, device.c_str());
  std::printf("%-18s %-6s %12s %10s %12s\n", "op", "on", "us/call", "GB/s", "Mtokens/s");
  nlohmann::json out;
  out["tokens"] = tokens;
  out["hidden"] = hidden;
  out["device"] = device;
  out["gpu_present"] = have_gpu;
  out["results"] = nlohmann::json::array();
  for (const auto& r : rows) {
    const double gbps = r.bytes / r.seconds / 1e9, mtps = r.items / r.seconds / 1e6;
    std::printf("%-18s %-6s %12.1f %10.1f %12.2f\n", r.op.c_str(), r.device.c_str(), r.seconds * 1e6, gbps, mtps);
    out["results"].push_back({{"op", r.op},
                              {"on", r.device},
                              {"seconds", r.seconds},
                              {"bytes", r.bytes},
                              {"GBps", gbps},
                              {"Mtokens_per_s", mtps}});
  }
  std::printf("GB/s count bytes read + written per call (d2d: bytes copied); CPU rows are one thread\n");
  if (!have_gpu) std::printf("GPU rows skipped: no CUDA device: %s\n", why.c_str());
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    if (!f) throw EplabError("gpu_bench: cannot write " + json_path);
    f << out.dump(2) << "\n";
  }
  return have_gpu ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_bench: %s\n", e.what());
    return 1;
  }
}
