// The closed loop between a machine and the simulator: fit a simulated cluster to what `eplab probe` measured on
// the machine (latency and bandwidth per link class, the empty all-to-all round), predict a workload's phase
// times on it, and set them beside the times measured on the machine. `eplab validate` drives it.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "driver/probe.hpp"
#include "engine/topology.hpp"

namespace eplab {

// A probe as read back from `eplab probe -o` JSON (the per-class figures, the round and how it was measured).
ProbeResult probe_from_json(const nlohmann::json& j, const std::string& source);

struct ClusterFit {
  ClusterSpec fitted;
  ProbeResult measured, base_sim, fitted_sim;  // the machine, the preset simulated, the fitted cluster simulated
  std::vector<std::string> notes;              // classes that could not be fitted, and why
};

// Scales the base cluster's link parameters so that the probe simulated on it reproduces the measured one: each
// class's bandwidth and latency parameters by measured / simulated (scale-up: scaleup_GBps and
// scaleup_latency_s; scale-out, both rail classes together: nic_GBps, nic_latency_s and switch_latency_s; four
// rounds, as each figure depends a little on the other parameters), then round_overhead_s by the empty round's
// remaining difference. The simulated probes use the measured probe's message sizes. Needs the sim backend.
ClusterFit fit_cluster(const ClusterSpec& base, const ProbeResult& measured);

// One phase measured and predicted: means over the calls after the first `skip_calls`.
struct PhaseCheck {
  std::string phase;
  double measured_s = 0, predicted_s = 0;
  double error() const { return measured_s > 0 ? (predicted_s - measured_s) / measured_s : 0.0; }
};

// notify, dispatch, combine and dispatch + combine of two reports of the same workload.
std::vector<PhaseCheck> compare_phases(const nlohmann::json& measured, const nlohmann::json& predicted, int skip_calls);

}  // namespace eplab
