#include "driver/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>

#include "traces/trace_file.hpp"

namespace eplab {
namespace {

nlohmann::json payload_json(const PayloadCheck& pc) {
  nlohmann::json pay = {{"checked", pc.ran ? (pc.checksummed ? "counts and checksums" : "counts")
                                           : "not run: the fabric keeps no ledger"},
                        {"messages", pc.messages},
                        {"bytes", pc.bytes},
                        {"mismatches", pc.mismatches}};
  if (!pc.first_error.empty()) pay["first_mismatch"] = pc.first_error;
  return pay;
}

PhaseStats delta(const PhaseStats& a, const PhaseStats& b) {
  PhaseStats d;
  d.time_s = b.time_s - a.time_s;
  d.codec_s = b.codec_s - a.codec_s;
  for (int i = 0; i < 3; ++i) d.bytes[i] = b.bytes[i] - a.bytes[i];
  d.logical_bytes = b.logical_bytes - a.logical_bytes;
  d.scaleout_logical_bytes = b.scaleout_logical_bytes - a.scaleout_logical_bytes;
  d.messages = b.messages - a.messages;
  d.calls = b.calls - a.calls;
  return d;
}

double max_over_mean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  return mean > 0 ? *std::max_element(v.begin(), v.end()) / mean : 0;
}

// Phase figures: time is the slowest rank of each call (call_time_s), averaged over calls; bytes and logical bytes
// are per call summed over ranks (bytes) or averaged over ranks (bandwidths, as DeepEP reports per rank).
nlohmann::json phase_json(const std::vector<RankRecord>& ranks, std::vector<PhaseStats> RankRecord::*which, int calls) {
  const size_t R = ranks.size();
  double time = 0;
  nlohmann::json call_time = nlohmann::json::array();
  for (int c = 0; c < calls; ++c) {
    double worst = 0;
    for (auto& r : ranks) worst = std::max(worst, (r.*which)[c].time_s);
    time += worst;
    call_time.push_back(worst);
  }
  time /= std::max(calls, 1);
  PhaseStats sum;
  for (auto& r : ranks)
    for (auto& p : r.*which) sum.add(p);
  const double per_call = 1.0 / std::max(calls, 1);
  const double per_rank_call = per_call / std::max<size_t>(R, 1);
  auto bw = [&](double bytes_per_rank) { return time > 0 ? bytes_per_rank / time / 1e9 : 0.0; };
  nlohmann::json j;
  j["time_s"] = time;
  j["call_time_s"] = std::move(call_time);  // each call's slowest rank (eplab validate leaves out warm-up calls)
  j["codec_s"] = sum.codec_s * per_rank_call;
  j["logical_bw_GBps"] = bw(sum.logical_bytes * per_rank_call);
  j["scaleout_bw_GBps"] = bw(sum.scaleout_logical_bytes * per_rank_call);
  j["scaleup_bw_GBps"] = bw(sum.bytes[static_cast<int>(LinkClass::kScaleUp)] * per_rank_call);
  j["bytes"] = {{"self", sum.bytes[0] * per_call},
                {"scaleup", sum.bytes[1] * per_call},
                {"scaleout", sum.bytes[2] * per_call},
                {"total", (sum.bytes[0] + sum.bytes[1] + sum.bytes[2]) * per_call}};
  j["logical_bytes_per_rank"] = sum.logical_bytes * per_rank_call;
  j["messages"] = sum.messages * per_call;
  return j;
}

}  // namespace

void RankRecord::record_call(const EngineStats& before, const EngineStats& after) {
  notify.push_back(delta(before.notify, after.notify));
  dispatch.push_back(delta(before.dispatch, after.dispatch));
  combine.push_back(delta(before.combine, after.combine));
}

void RankRecord::add_comparison(const float* got, const float* want, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    ++elements;
    if (!std::isfinite(got[i])) {
      ++nonfinite;
      continue;
    }
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) ++mismatches;
    const double d = static_cast<double>(got[i]) - want[i];
    max_abs_err = std::max(max_abs_err, std::fabs(d));
    err_sq += d * d;
    ref_sq += static_cast<double>(want[i]) * want[i];
  }
}

nlohmann::json build_report(const ReportInputs& in, const std::vector<RankRecord>& ranks, const VerifyResult& v) {
  nlohmann::json j;
  j["eplab_version"] = eplab_version();
  j["backend"] = in.backend;
  j["cluster"] = {{"name", in.cluster.name},
                  {"nodes", in.cluster.nodes},
                  {"gpus_per_node", in.cluster.gpus_per_node},
                  {"scaleup_GBps", in.cluster.scaleup_GBps},
                  {"nic_GBps", in.cluster.nic_GBps}};
  j["model"] = {{"name", in.shape.name},
                {"experts", in.shape.num_experts},
                {"topk", in.shape.topk},
                {"hidden", in.shape.hidden},
                {"max_nodes_per_token", in.shape.max_nodes_per_token},
                {"num_expert_groups", in.shape.num_expert_groups}};
  j["ranks"] = static_cast<int>(ranks.size());
  j["algorithm"] = in.cfg.algorithm;
  j["codec"] = {{"dispatch", in.dispatch_codec}, {"combine", in.combine_codec}};
  j["routing"] = in.routing;
  // A whole number stays one (the usual case); a trace with uneven batches gives the mean.
  if (in.tokens_per_rank == std::floor(in.tokens_per_rank))
    j["tokens_per_rank"] = static_cast<int64_t>(in.tokens_per_rank);
  else
    j["tokens_per_rank"] = in.tokens_per_rank;
  j["steps"] = in.cfg.steps;
  j["layers"] = in.cfg.layers;
  j["seed"] = in.cfg.seed;
  j["payload"] = in.phantom ? "phantom" : "real";

  nlohmann::json ver;
  ver["ran"] = v.ran;
  if (v.ran) {
    double err_sq = 0, ref_sq = 0, max_abs = 0;
    size_t mism = 0, nonf = 0, elems = 0;
    for (auto& r : ranks) {
      err_sq += r.err_sq;
      ref_sq += r.ref_sq;
      max_abs = std::max(max_abs, r.max_abs_err);
      mism += r.mismatches;
      nonf += r.nonfinite;
      elems += r.elements;
    }
    const double rel = ref_sq > 0 ? std::sqrt(err_sq / ref_sq) : std::sqrt(err_sq);
    const bool combine_ok = nonf == 0 && (v.lossless ? mism == 0 : rel <= v.tolerance);
    // A tolerance of 1 or more (an unbounded codec, or one whose bound allows dropping every value) passes an
    // all-zero output, whose rel L2 error is exactly 1: such a check proves delivery, not values.
    const bool values_checked = v.lossless || v.tolerance < 1.0;
    ver["transform"] = v.transform;
    ver["selections"] = v.selections;
    ver["delivery_ok"] = v.delivery_ok;
    ver["missing"] = v.missing;
    ver["unexpected"] = v.extra;
    ver["mismatched_pairs"] = v.mismatched_pairs;
    if (v.mismatched_pairs > 0) {
      const auto& m = v.first_mismatch;
      ver["first_mismatch"] = {{"step", m.step}, {"layer", m.layer}, {"src", m.src},
                               {"dest", m.dest}, {"sent", m.sent},   {"received", m.got}};
      if (m.micro_batch >= 0) ver["first_mismatch"]["micro_batch"] = m.micro_batch;
    }
    ver["payloads"] = payload_json(v.payloads);
    const bool payload_ok = v.payloads.ok();
    ver["combine_ok"] = combine_ok;
    ver["elements"] = elems;
    ver["bit_exact"] = mism == 0 && nonf == 0;
    ver["mismatched_elements"] = mism;
    ver["nonfinite"] = nonf;
    ver["max_abs_err"] = max_abs;
    ver["rel_l2_err"] = rel;
    ver["check"] = v.lossless ? "bit-exact" : "rel_l2_err <= tolerance";
    // JSON has no infinity: an unbounded tolerance is null.
    ver["tolerance"] = std::isfinite(v.tolerance) ? nlohmann::json(v.tolerance) : nlohmann::json(nullptr);
    ver["values"] = values_checked ? "checked" : "delivery only";
    // Nothing that was checked failed (the exit status); verified says more: values were checked, against a bound.
    ver["passed"] = v.delivery_ok && payload_ok && combine_ok;
    j["verified"] = v.delivery_ok && payload_ok && combine_ok && values_checked;
  } else {
    ver["reason"] = in.phantom ? "phantom payload: sizes only, no bytes to check" : "verification turned off";
    // Phantom payloads: no bytes, but the counts of every message were checked; a mismatch fails the run.
    if (v.payloads.ran) {
      ver["payloads"] = payload_json(v.payloads);
      ver["passed"] = v.payloads.ok();
    }
    j["verified"] = false;
  }
  j["verification"] = ver;

  nlohmann::json phases;
  phases["notify"] = phase_json(ranks, &RankRecord::notify, in.calls);
  phases["dispatch"] = phase_json(ranks, &RankRecord::dispatch, in.calls);
  phases["combine"] = phase_json(ranks, &RankRecord::combine, in.calls);
  j["phases"] = phases;

  // Imbalance: rows received per rank (per call, averaged over calls) and selections per expert slot.
  double rank_imb = 0;
  for (int c = 0; c < in.calls; ++c) {
    std::vector<double> rows;
    for (auto& r : ranks) rows.push_back(static_cast<double>(r.recv_rows[c]));
    rank_imb += max_over_mean(rows);
  }
  std::vector<double> slots(ranks.empty() ? 0 : ranks[0].slot_load.size(), 0.0);
  for (auto& r : ranks)
    for (size_t s = 0; s < slots.size(); ++s) slots[s] += static_cast<double>(r.slot_load[s]);
  j["imbalance"] = {{"rank_max_over_mean", rank_imb / std::max(in.calls, 1)},
                    {"slot_max_over_mean", max_over_mean(slots)}};
  j["wall_s"] = in.wall_s;
  return j;
}

void add_step_report(nlohmann::json& j, const ReportInputs& in, const std::vector<StepRecord>& steps,
                     const nlohmann::json& links) {
  // Per step the slowest rank's time and the largest compute any rank did (the critical path's compute), then
  // the mean over steps; exposed communication is whatever of the step that compute does not fill.
  const int n = steps.empty() ? 0 : static_cast<int>(steps[0].step_s.size());
  double step = 0, compute = 0, allreduce = 0;
  for (int s = 0; s < n; ++s) {
    double st = 0, co = 0, ar = 0;
    for (auto& r : steps) {
      st = std::max(st, r.step_s[s]);
      co = std::max(co, r.compute_s[s]);
      ar = std::max(ar, r.allreduce_s[s]);
    }
    step += st / n;
    compute += co / n;
    allreduce += ar / n;
  }
  j["mode"] = in.cfg.mode;
  j["step_time_s"] = step;
  j["compute_s"] = compute;
  j["comm_fraction"] = step > 0 ? std::clamp((step - compute) / step, 0.0, 1.0) : 0.0;
  j["tokens_per_s"] = step > 0 ? in.tokens_per_rank * static_cast<double>(steps.size()) / step : 0.0;
  if (in.cfg.mode == "training")
    j["training"] = {{"overlap_allreduce", in.cfg.overlap_allreduce},
                     {"dense_grad_bytes_per_layer", StepDriver::dense_grad_bytes(in.shape)},
                     {"allreduce_exposed_s", allreduce},
                     {"allreduce", "ring over all ranks, 2(N-1) steps of bytes/N, bf16"}};
  if (!links.is_null()) j["links"] = links;
}

void add_overlap_report(nlohmann::json& j, const ReportInputs& in, const OverlapResult& o, int ranks) {
  const double n = std::max<size_t>(o.steps.size(), 1);
  double step = 0, compute = 0, comm = 0, exposed = 0, hidden = 0, serial = 0, serial_compute = 0;
  std::vector<std::pair<std::string, double>> by_phase;
  nlohmann::json per_step = nlohmann::json::array();
  for (size_t s = 0; s < o.steps.size(); ++s) {
    const StepOverlap& st = o.steps[s];
    step += st.step_s / n;
    compute += st.compute_s / n;
    comm += st.comm_s / n;
    exposed += st.exposed_s / n;
    hidden += st.hidden_s / n;
    serial += st.serial_step_s / n;
    serial_compute += st.serial_compute_s / n;
    nlohmann::json phases;
    for (const auto& [name, x] : st.exposed_by_phase) {
      phases[name] = x;
      // Captured by an init-capture: clang 14 (the fuzz and sanitizer builds) cannot capture a structured binding.
      auto it = std::find_if(by_phase.begin(), by_phase.end(), [&n = name](const auto& p) { return p.first == n; });
      if (it == by_phase.end()) by_phase.push_back({name, 0.0}), it = by_phase.end() - 1;
      it->second += x / n;
    }
    per_step.push_back({{"step", static_cast<int>(s)},
                        {"step_time_s", st.step_s},
                        {"compute_s", st.compute_s},
                        {"comm_s", st.comm_s},
                        {"exposed_comm_s", st.exposed_s},
                        {"hidden_comm_s", st.hidden_s},
                        {"exposed_by_phase", phases},
                        {"serial_step_time_s", st.serial_step_s},
                        {"critical_rank", st.critical_rank}});
  }
  nlohmann::json phases = nlohmann::json::object();
  for (const auto& [name, x] : by_phase) phases[name] = x;
  j["step_time_s"] = step;
  j["compute_s"] = compute;
  j["comm_fraction"] = step > 0 ? std::clamp(exposed / step, 0.0, 1.0) : 0.0;
  j["tokens_per_s"] = step > 0 ? in.tokens_per_rank * ranks / step : 0.0;
  if (j.contains("training")) {
    auto it = std::find_if(by_phase.begin(), by_phase.end(), [](const auto& p) { return p.first == "allreduce"; });
    j["training"]["allreduce_exposed_s"] = it == by_phase.end() ? 0.0 : it->second;
  }
  j["overlap"] = {
      {"mode", "tbo"},
      {"micro_batches", 2},
      {"step_time_s", step},
      {"compute_s", compute},
      {"comm_s", comm},
      {"exposed_comm_s", exposed},
      {"hidden_comm_s", hidden},
      {"idle_s", std::max(0.0, step - compute - exposed)},
      {"exposed_by_phase", phases},
      {"serial_step_time_s", serial},
      {"serial_comm_fraction", serial > 0 ? std::clamp((serial - serial_compute) / serial, 0.0, 1.0) : 0.0},
      {"speedup", step > 0 ? serial / step : 0.0},
      {"per_step", per_step},
      {"definition",
       "critical rank (the last to finish) of the composed schedule: comm_s is its communication stream's busy time "
       "(waiting for peers included), hidden_comm_s the part its compute overlaps, exposed_comm_s the rest; "
       "comm_fraction = exposed_comm_s / step_time_s; means over steps (docs/sim.md)"}};
}

std::string format_summary(const nlohmann::json& r) {
  std::ostringstream os;
  char line[256];
  std::snprintf(line, sizeof line, "eplab %s | %s, %d nodes x %d GPUs = %d ranks | %s | %s | %d tokens/rank | %s\n",
                r["backend"].get<std::string>().c_str(), r["cluster"]["name"].get<std::string>().c_str(),
                r["cluster"]["nodes"].get<int>(), r["cluster"]["gpus_per_node"].get<int>(), r["ranks"].get<int>(),
                r["model"]["name"].get<std::string>().c_str(), r["algorithm"].get<std::string>().c_str(),
                static_cast<int>(std::lround(r["tokens_per_rank"].get<double>())),
                r["routing"].get<std::string>().c_str());
  os << line;
  std::snprintf(line, sizeof line, "%-9s %12s %13s %13s %13s %14s %14s\n", "phase", "time (us)", "logical GB/s",
                "scale-out GB/s", "scale-up GB/s", "scale-up MB", "scale-out MB");
  os << line;
  for (const char* p : {"notify", "dispatch", "combine"}) {
    const auto& ph = r["phases"][p];
    std::snprintf(line, sizeof line, "%-9s %12.1f %13.3g %14.3g %13.3g %14.2f %14.2f\n", p,
                  ph["time_s"].get<double>() * 1e6, ph["logical_bw_GBps"].get<double>(),
                  ph["scaleout_bw_GBps"].get<double>(), ph["scaleup_bw_GBps"].get<double>(),
                  ph["bytes"]["scaleup"].get<double>() / 1e6, ph["bytes"]["scaleout"].get<double>() / 1e6);
    os << line;
  }
  const auto& v = r["verification"];
  if (v["ran"].get<bool>() && v.value("values", "checked") == "delivery only") {
    std::snprintf(line, sizeof line,
                  "verified: false (delivery only: %zu selections delivered %s; values not checked: the codecs' "
                  "error bound cannot tell a wrong combine from a right one)\n",
                  v["selections"].get<size_t>(), v["delivery_ok"].get<bool>() ? "exactly once" : "WRONG");
  } else if (v["ran"].get<bool>()) {
    std::snprintf(line, sizeof line,
                  "verified: %s (%zu selections delivered %s; combine %s, max abs err %.3g, rel L2 %.3g)\n",
                  r["verified"].get<bool>() ? "true" : "FALSE", v["selections"].get<size_t>(),
                  v["delivery_ok"].get<bool>() ? "exactly once" : "WRONG", v["check"].get<std::string>().c_str(),
                  v["max_abs_err"].get<double>(), v["rel_l2_err"].get<double>());
  } else {
    std::snprintf(line, sizeof line, "verified: false (%s)\n", v["reason"].get<std::string>().c_str());
  }
  os << line;
  if (v.value("lost_selections", int64_t{0}) > 0) {
    std::snprintf(line, sizeof line, "  %lld selections LOST to faults (no reachable replica), left out of the check\n",
                  static_cast<long long>(v["lost_selections"].get<int64_t>()));
    os << line;
  }
  if (r.contains("faults")) {
    const auto& fl = r["faults"];
    std::snprintf(line, sizeof line,
                  "faults: %zu injected, failed ranks %s; selections rerouted %lld, lost %lld; tokens departed with "
                  "failed ranks %lld; detect %.3f s, recover %.6f s (migrate)\n",
                  fl["list"].size(), fl["failed_ranks"].dump().c_str(),
                  static_cast<long long>(fl["tokens_rerouted"].get<int64_t>()),
                  static_cast<long long>(fl["tokens_lost"].get<int64_t>()),
                  static_cast<long long>(fl["tokens_departed"].get<int64_t>()), fl["detect_s"].get<double>(),
                  fl["recover_s"].get<double>());
    os << line;
  }
  if (v.contains("payloads")) {
    const auto& p = v["payloads"];
    if (p.contains("first_mismatch")) {
      os << p["first_mismatch"].get<std::string>() << " (" << p["mismatches"].get<size_t>()
         << " mismatched entries)\n";
    } else if (p["checked"].get<std::string>().rfind("not run", 0) != 0) {
      std::snprintf(line, sizeof line, "payloads: %llu messages, %llu bytes: %s equal on every rank pair\n",
                    static_cast<unsigned long long>(p["messages"].get<uint64_t>()),
                    static_cast<unsigned long long>(p["bytes"].get<uint64_t>()),
                    p["checked"].get<std::string>().c_str());
      os << line;
    }
  }
  if (v.contains("first_mismatch")) {
    const auto& m = v["first_mismatch"];
    std::snprintf(line, sizeof line,
                  "delivery mismatch in %zu (call, rank pair)s; first: step %d layer %d, rank %d -> rank %d sent %u "
                  "selections, %u received\n",
                  v["mismatched_pairs"].get<size_t>(), m["step"].get<int>(), m["layer"].get<int>(),
                  m["src"].get<int>(), m["dest"].get<int>(), m["sent"].get<unsigned>(), m["received"].get<unsigned>());
    os << line;
  }
  std::snprintf(line, sizeof line, "imbalance: rank max/mean %.3f, slot max/mean %.3f | wall %.2f s\n",
                r["imbalance"]["rank_max_over_mean"].get<double>(), r["imbalance"]["slot_max_over_mean"].get<double>(),
                r["wall_s"].get<double>());
  os << line;
  if (r.contains("overlap")) {
    const auto& o = r["overlap"];
    std::snprintf(line, sizeof line,
                  "two-batch overlap: %s step %.3f ms (serial %.3f ms, %.2fx), communication %.3f ms: exposed %.3f ms, "
                  "hidden %.3f ms; comm_fraction %.3f (serial %.3f)\n",
                  r.value("mode", "inference").c_str(), o["step_time_s"].get<double>() * 1e3,
                  o["serial_step_time_s"].get<double>() * 1e3, o["speedup"].get<double>(),
                  o["comm_s"].get<double>() * 1e3, o["exposed_comm_s"].get<double>() * 1e3,
                  o["hidden_comm_s"].get<double>() * 1e3, r["comm_fraction"].get<double>(),
                  o["serial_comm_fraction"].get<double>());
    os << line;
  }
  if (r.contains("step_time_s") && r.value("mode", "") == "training") {
    std::snprintf(line, sizeof line, "training step: %.3f ms, compute %.3f ms, comm_fraction %.3f, %.0f tokens/s\n",
                  r["step_time_s"].get<double>() * 1e3, r["compute_s"].get<double>() * 1e3,
                  r["comm_fraction"].get<double>(), r["tokens_per_s"].get<double>());
    os << line;
  }
  return os.str();
}

}  // namespace eplab
