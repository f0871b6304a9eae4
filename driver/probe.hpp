// Measuring a fabric: one-way latency (ping-pong of small messages) and bandwidth (one large message) between
// pairs of ranks, grouped by link class, and the time of one empty all-to-all round. `eplab probe` prints and
// writes these; `eplab validate` fits a simulated cluster to them (driver/validate.hpp).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend.hpp"
#include "engine/topology.hpp"

namespace eplab {

// Link classes the probe distinguishes, nearest first.
enum class ProbeClass : int { kSelf = 0, kScaleUp = 1, kScaleOutSameRail = 2, kScaleOutCrossRail = 3 };
constexpr int kProbeClasses = 4;
const char* probe_class_name(int c);
int probe_class(const Topology& t, int a, int b);

struct ProbeOptions {
  double small_bytes = 8;  // ping-pong message (latency)
  double large_bytes = 0;  // bandwidth message (0: 256 MiB where time is modeled, 4 MiB with real bytes)
  int iters = 4;           // ping-pong round trips per pair
  int sample = 16;         // random extra pairs on clusters above all_pairs_max
  int all_pairs_max = 16;  // probe every pair up to this many ranks
  int rounds = 8;          // empty all-to-all rounds timed (their mean is round_s)
  uint64_t seed = 1;       // for the sampled pairs
  double timeout_s = 60;
};

struct ProbeResult {
  std::string backend;
  bool modeled_time = false;
  bool all_pairs = true;
  double small_bytes = 0, large_bytes = 0;
  int iters = 0;
  std::vector<std::pair<int, int>> pairs;         // measured (a < b)
  std::vector<double> latency_s, bandwidth_GBps;  // per measured pair
  // Per link class: mean over the measured pairs of that class; count 0 where none was measured.
  double class_latency_s[kProbeClasses] = {0, 0, 0, 0};
  double class_bandwidth_GBps[kProbeClasses] = {0, 0, 0, 0};
  int class_count[kProbeClasses] = {0, 0, 0, 0};
  double round_s = 0;  // one all-to-all round of empty messages between every pair of ranks, barrier to barrier
};

// Runs the probe on `backend` over `topo` (collective over all ranks; in-process backends only return here).
ProbeResult probe_fabric(Backend& backend, const Topology& topo, const ProbeOptions& opts);

// The JSON `eplab probe -o` writes: the cost matrix ([ranks x ranks] latency and bandwidth, unmeasured pairs filled
// with their class's mean), the per-class figures, the empty round, and how it was measured.
nlohmann::json probe_json(const ProbeResult& p, const ClusterSpec& spec);

}  // namespace eplab
