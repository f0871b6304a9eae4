// Emulated dispatch + combine throughput (16 ranks as threads, hidden 7168, bf16 on the wire) beside this
// machine's own single-core memcpy bandwidth, measured in the same run. Prints a table and writes JSON.
//   bench_emu_throughput [TOKENS_PER_RANK [OUT.json]]   (default 2048 tokens, bench/results/emu_throughput.json)
// 4096 tokens per rank needs more memory than a 24 GiB machine has: the emulated ranks hold received rows in
// fp32 (about 0.7 GB per rank at 4096 tokens with deepep routing) besides the bf16 messages in flight.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "driver/experiment.hpp"

namespace {

double memcpy_GBps() {
  const size_t n = size_t{256} << 20;
  std::vector<char> a(n, 1), b(n, 0);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, n / s / 1e9);
    a[rep] = b[n - 1 - rep];  // keep the copies observable
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 2048;
  const std::string out = argc > 2 ? argv[2] : "bench/results/emu_throughput.json";
  eplab::RunConfig c;
  c.backend = "emu";
  c.cluster = "h800-cx7";
  c.nodes = 2;
  c.gpus_per_node = 8;
  c.model = "deepseek-v3";
  c.tokens = tokens;
  c.routing = "deepep";
  c.dispatch_codec = "bf16";
  c.combine_codec = "bf16";
  c.transform = "identity";
  c.steps = 3;
  c.timeout_s = 600;
  c.verify = false;  // a benchmark of the data path; correctness is the test suite's job
  const double mc = memcpy_GBps();
  const auto r = eplab::run_experiment(c);
  const auto& d = r["phases"]["dispatch"];
  const auto& k = r["phases"]["combine"];
  const int ranks = r["ranks"].get<int>();
  // Bytes the ranks received in dispatch plus those sent back in combine (activation rows on the wire), over
  // the slowest rank's phase times.
  const double bytes = (d["logical_bytes_per_rank"].get<double>() + k["logical_bytes_per_rank"].get<double>()) * ranks;
  const double time = d["time_s"].get<double>() + k["time_s"].get<double>();
  const double gbps = bytes / time / 1e9;
  std::printf("emulated dispatch + combine, %d ranks (threads on this machine), %d tokens/rank, hidden 7168, bf16\n",
              ranks, tokens);
  std::printf("%-34s %10s\n", "figure", "value");
  std::printf("%-34s %10.3f\n", "dispatch time per layer (s)", d["time_s"].get<double>());
  std::printf("%-34s %10.3f\n", "combine time per layer (s)", k["time_s"].get<double>());
  std::printf("%-34s %10.2f\n", "activation bytes per layer (GB)", bytes / 1e9);
  std::printf("%-34s %10.2f\n", "dispatch+combine throughput (GB/s)", gbps);
  std::printf("%-34s %10.2f\n", "memcpy, one core (GB/s)", mc);
  std::printf("%-34s %10.2f\n", "throughput / memcpy", gbps / mc);
  nlohmann::json j = {{"ranks", ranks},
                      {"tokens_per_rank", tokens},
                      {"hidden", 7168},
                      {"codec", "bf16"},
                      {"steps", c.steps},
                      {"dispatch_time_s", d["time_s"]},
                      {"combine_time_s", k["time_s"]},
                      {"activation_bytes", bytes},
                      {"throughput_GBps", gbps},
                      {"memcpy_one_core_GBps", mc},
                      {"wall_s", r["wall_s"]}};
  std::ofstream(out) << j.dump(2) << "\n";
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
