#include "driver/validate.hpp"

#include <algorithm>
#include <cmath>

#include "engine/backend.hpp"
#include "engine/error.hpp"

namespace eplab {
namespace {

ProbeResult simulate_probe(const ClusterSpec& spec, const ProbeResult& like) {
  auto sim = create_backend("sim");
  ProbeOptions o;
  o.small_bytes = like.small_bytes;
  o.large_bytes = like.large_bytes;
  o.iters = 1;  // simulated time repeats exactly
  o.rounds = 1;
  return probe_fabric(*sim, Topology(spec), o);
}

// Scale-out figures: both rail classes, weighted by the pairs measured.
bool scaleout_figures(const ProbeResult& p, double& latency_s, double& bandwidth_GBps) {
  const int n = p.class_count[2] + p.class_count[3];
  if (n == 0) return false;
  latency_s = (p.class_latency_s[2] * p.class_count[2] + p.class_latency_s[3] * p.class_count[3]) / n;
  bandwidth_GBps = (p.class_bandwidth_GBps[2] * p.class_count[2] + p.class_bandwidth_GBps[3] * p.class_count[3]) / n;
  return true;
}

double mean_after(const nlohmann::json& phase, int skip) {
  if (!phase.contains("call_time_s")) return phase.at("time_s").get<double>();
  const auto& calls = phase["call_time_s"];
  const int n = static_cast<int>(calls.size());
  const int first = std::min(std::max(skip, 0), std::max(n - 1, 0));
  double sum = 0;
  for (int c = first; c < n; ++c) sum += calls[c].get<double>();
  return n > first ? sum / (n - first) : 0.0;
}

}  // namespace

ProbeResult probe_from_json(const nlohmann::json& j, const std::string& source) {
  try {
    ProbeResult p;
    p.backend = j.at("backend").get<std::string>();
    p.modeled_time = j.value("modeled_time", false);
    p.small_bytes = j.at("small_bytes").get<double>();
    p.large_bytes = j.at("large_bytes").get<double>();
    p.iters = j.value("iters", 1);
    p.round_s = j.value("round_s", 0.0);
    for (int c = 1; c < kProbeClasses; ++c) {
      const auto& bc = j.at("by_class");
      if (!bc.contains(probe_class_name(c))) continue;
      const auto& e = bc[probe_class_name(c)];
      p.class_latency_s[c] = e.at("latency_s").get<double>();
      p.class_bandwidth_GBps[c] = e.at("bandwidth_GBps").get<double>();
      p.class_count[c] = e.value("pairs", 1);
      if (!(p.class_latency_s[c] >= 0) || !(p.class_bandwidth_GBps[c] >= 0) || !std::isfinite(p.class_latency_s[c]) ||
          !std::isfinite(p.class_bandwidth_GBps[c]) || p.class_count[c] < 1)
        throw EplabError(std::string("class '") + probe_class_name(c) + "' has a negative or non-finite figure");
    }
    if (!(p.small_bytes >= 1) || !(p.large_bytes > p.small_bytes) || !(p.round_s >= 0) || !std::isfinite(p.round_s))
      throw EplabError("small_bytes, large_bytes or round_s out of range");
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw EplabError(source + ": not a probe written by `eplab probe -o` (" + e.what() + ")");
  } catch (const EplabError& e) {
    throw EplabError(source + ": " + e.what());
  }
}

ClusterFit fit_cluster(const ClusterSpec& base, const ProbeResult& measured) {
  ClusterFit fit;
  fit.measured = measured;
  fit.fitted = base;
  fit.fitted.name = base.name + "-fitted";
  fit.fitted.description = "'" + base.name + "' with link parameters fitted to a probe of the " + measured.backend +
                           " backend (eplab validate)";
  fit.base_sim = simulate_probe(base, measured);
  ClusterSpec& f = fit.fitted;
  const bool up = measured.class_count[1] > 0 && fit.base_sim.class_count[1] > 0;
  double m_lat = 0, m_bw = 0, s_lat, s_bw;
  const bool out = scaleout_figures(measured, m_lat, m_bw) && scaleout_figures(fit.base_sim, s_lat, s_bw);
  if (up && !(measured.class_bandwidth_GBps[1] > 0))
    fit.notes.push_back("scale-up bandwidth not measurable at this message size: the preset's is kept");
  if (!up && base.gpus_per_node > 1)
    fit.notes.push_back("no scale-up pair in the probe: scale-up links keep the preset's figures");
  if (out && !(m_bw > 0))
    fit.notes.push_back("scale-out bandwidth not measurable at this message size: the preset's is kept");
  if (!out && base.nodes > 1)
    fit.notes.push_back("no scale-out pair in the probe: scale-out links keep the preset's figures");
  // A probe's latency carries its small message's transfer time and its bandwidth the large message's latency,
  // so each parameter's ratio depends a little on the others: a few rounds of rescaling settle them (each round
  // cuts the remaining relative error by about the ratio of the small message's transfer time to its latency).
  ProbeResult s = fit.base_sim;
  for (int round = 0; round < 4; ++round) {
    if (round > 0) s = simulate_probe(f, measured);
    if (up) {
      if (measured.class_bandwidth_GBps[1] > 0)
        f.scaleup_GBps *= measured.class_bandwidth_GBps[1] / s.class_bandwidth_GBps[1];
      f.scaleup_latency_s *= measured.class_latency_s[1] / s.class_latency_s[1];
    }
    if (out && scaleout_figures(s, s_lat, s_bw)) {
      if (m_bw > 0) f.nic_GBps *= m_bw / s_bw;
      f.nic_latency_s *= m_lat / s_lat;
      f.switch_latency_s *= m_lat / s_lat;
    }
  }
  // The empty round last: what remains of it once the links are fitted is the per-round fixed cost.
  if (measured.round_s > 0) {
    const ProbeResult links = simulate_probe(f, measured);
    f.round_overhead_s = std::max(0.0, f.round_overhead_s + measured.round_s - links.round_s);
  }
  fit.fitted_sim = simulate_probe(f, measured);
  return fit;
}

std::vector<PhaseCheck> compare_phases(const nlohmann::json& measured, const nlohmann::json& predicted,
                                       int skip_calls) {
  std::vector<PhaseCheck> out;
  for (const char* ph : {"notify", "dispatch", "combine"}) {
    if (!measured.at("phases").contains(ph) || !predicted.at("phases").contains(ph)) continue;
    out.push_back(
        {ph, mean_after(measured["phases"][ph], skip_calls), mean_after(predicted["phases"][ph], skip_calls)});
  }
  PhaseCheck both{"dispatch + combine"};
  for (const auto& c : out)
    if (c.phase != "notify") both.measured_s += c.measured_s, both.predicted_s += c.predicted_s;
  out.push_back(both);
  return out;
}

}  // namespace eplab
