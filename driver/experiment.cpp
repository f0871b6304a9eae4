#include "driver/experiment.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <optional>

#include "driver/checkpoint.hpp"
#include "driver/faults.hpp"
#include "driver/memory_guard.hpp"
#include "driver/overlap.hpp"
#include "driver/plan.hpp"
#include "driver/rank_program.hpp"
#include "driver/rank_result.hpp"
#include "driver/reference.hpp"
#include "driver/report.hpp"
#include "driver/timeline.hpp"
#include "driver/training.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "engine/output_file.hpp"
#include "policies/balance/balancer.hpp"
#include "traces/shared_routing.hpp"

namespace eplab {
namespace {

// `tally`: the phantom run's count check (null otherwise), whose messages every rank has entered.
VerifyResult verify_run(const RunConfig& cfg, const RunSetup& run, const std::vector<RankResult>& results,
                        PayloadTally* tally) {
  VerifyResult vr;
  vr.ran = run.verify;
  vr.lossless = run.lossless;
  vr.tolerance = run.lossless ? 0.0 : run.tolerance;
  vr.transform = cfg.transform;
  if (tally) vr.payloads = tally->check();
  if (!run.verify) return vr;
  std::vector<const DeliveryLog*> logs;
  for (const RankResult& r : results) logs.push_back(&r.deliveries);
  const DeliveryCheck c = check_deliveries(logs);
  vr.selections = c.selections;
  vr.delivery_ok = c.ok;
  vr.missing = c.missing;
  vr.extra = c.extra;
  vr.mismatched_pairs = c.mismatched_pairs;
  std::vector<const PayloadLog*> payloads;
  for (const RankResult& r : results) payloads.push_back(&r.payloads);
  vr.payloads = check_payloads(payloads);
  if (!c.ok) {
    // With two-batch overlap the digests are per (call, micro-batch): index 2 * call + micro-batch.
    const bool tbo = cfg.overlap == "tbo";
    const int call = tbo ? c.first.call / 2 : c.first.call;
    vr.first_mismatch = {call / cfg.layers, call % cfg.layers, tbo ? c.first.call % 2 : -1, c.first.src, c.first.dest,
                         c.first.sent,      c.first.got};
  }
  return vr;
}

// Policies: per-step imbalance, forecast error, migration and layer time (maxima over ranks); the layout cache.
void add_plan_report(nlohmann::json& report, const RunConfig& cfg, const RunSetup& run, const Plan& plan,
                     const std::vector<RankResult>& results) {
  const int R = run.topo.size(), S = plan.slots();
  nlohmann::json per_step = nlohmann::json::array();
  double total_bytes = 0, total_mig_s = 0, total_layer_s = 0;
  int rebalances = 0;
  long total_moved = 0;
  for (int step = 0; step < cfg.steps; ++step) {
    double rank_imb = 0, slot_imb = 0, mape = 0, bytes = 0, mig_s = 0, layer_s = 0;
    int mape_n = 0, moved = 0;
    for (int l = 0; l < cfg.layers; ++l) {
      const int call = step * cfg.layers + l;
      const LayerPlan& lp = plan.calls[call];
      std::vector<double> slot(S, 0.0), rank(R, 0.0);
      for (const RankResult& r : results)
        for (int s = 0; s < S; ++s) slot[s] += r.call_slot_load[static_cast<size_t>(call) * S + s];
      for (int s = 0; s < S; ++s) rank[lp.placement->rank_of_slot(s)] += slot[s];
      rank_imb += max_over_mean(rank) / cfg.layers;
      slot_imb += max_over_mean(slot) / cfg.layers;
      if (lp.forecast_mape >= 0) mape += lp.forecast_mape, ++mape_n;
      bytes += static_cast<double>(lp.moves.size()) * run.expert_bytes;
      moved += lp.slots_moved;
      rebalances += lp.slots_moved > 0;
      double lt = 0, mt = 0;
      for (const RankResult& r : results)
        lt = std::max(lt, r.layer_time_s[call]), mt = std::max(mt, r.migration_time_s[call]);
      layer_s += lt;
      mig_s += mt;
    }
    nlohmann::json row = {{"step", step},
                          {"rank_max_over_mean", rank_imb},
                          {"slot_max_over_mean", slot_imb},
                          {"forecast_mape_pct", mape_n ? nlohmann::json(mape / mape_n) : nlohmann::json(nullptr)},
                          {"slots_moved", moved},
                          {"migration_bytes", bytes},
                          {"migration_time_s", mig_s},
                          {"layer_time_s", layer_s}};
    per_step.push_back(std::move(row));
    total_bytes += bytes;
    total_mig_s += mig_s;
    total_layer_s += layer_s;
    total_moved += moved;
  }
  report["policies"] = {{"balancer", cfg.balancer},
                        {"heat", cfg.heat},
                        {"rebalance_every", cfg.rebalance_every},
                        {"warmup_steps", cfg.warmup_steps},
                        {"replica_selection", cfg.replica_selection},
                        {"redundant_experts", cfg.redundant_experts}};
  report["migration"] = {{"bytes", total_bytes},
                         {"time_s", total_mig_s},
                         {"rebalances", rebalances},
                         {"slots_moved", total_moved},
                         {"expert_weight_bytes", run.expert_bytes},
                         {"timed", run.phantom}};
  report["step_time"] = {
      {"layers_s", total_layer_s}, {"migration_s", total_mig_s}, {"total_s", total_layer_s + total_mig_s}};
  report["per_step"] = std::move(per_step);
  // Every rank hits and misses on the same calls (the planner vouches for all), so counts are rank 0's. Time
  // saved: per hit, the notify time the miss that filled its entry measured on that rank (modeled time on sim,
  // wall time on emu), then the maximum over ranks, as a layer waits for its slowest rank.
  double saved_s = 0, missed_s = 0;
  for (const RankResult& r : results)
    saved_s = std::max(saved_s, r.layout_cache.notify_time_saved_s),
    missed_s = std::max(missed_s, r.layout_cache.notify_time_missed_s);
  const LayoutCacheStats& ls0 = results[0].layout_cache;
  report["layout_cache"] = {{"capacity", cfg.layout_cache},
                            {"hits", ls0.hits},
                            {"misses", ls0.misses},
                            {"hit_rate", ls0.hit_rate()},
                            {"notify_time_saved_s", saved_s},
                            {"notify_time_on_misses_s", missed_s},
                            {"timed", run.phantom}};
}

// Faults: the counters of every rank, the failure steps' migration (the recovery), and the lost selections in
// the verification block too, so a verified run that lost selections says so beside "verified".
void add_fault_report(nlohmann::json& report, const RunConfig& cfg, const RunSetup& run, const FaultPlan& fp,
                      const std::vector<RankResult>& results) {
  std::vector<FaultCounts> counts;
  for (const RankResult& r : results) counts.push_back(r.faults);
  double migrate_s = 0;
  for (int step : fp.failure_steps)
    for (int l = 0; l < cfg.layers; ++l) {
      double t = 0;
      for (const RankResult& r : results) t = std::max(t, r.migration_time_s[step * cfg.layers + l]);
      migrate_s += t;
    }
  report["faults"] = fault_report(fp, counts, migrate_s, run.caps.modeled_time);
  const int64_t lost = report["faults"]["tokens_lost"].get<int64_t>();
  nlohmann::json& ver = report["verification"];
  ver["lost_selections"] = lost;
  if (lost > 0)
    ver["lost_note"] = std::to_string(lost) +
                       " (token, expert) selections had no reachable replica: not dispatched, and left out of the "
                       "reference the combine is checked against (faults.first_lost lists the first)";
}

}  // namespace

nlohmann::json run_experiment(const RunConfig& cfg, const ProgressFn& progress) {
  const auto wall0 = std::chrono::steady_clock::now();
  // An output that cannot be written fails now, not after the run.
  if (!cfg.timeline.empty()) check_output_path(cfg.timeline, "the timeline");
  auto backend = create_backend(cfg.backend, cfg.transport);
  const RunSetup run = resolve_run(cfg, *backend);
  check_checkpoint_options(cfg, run);
  check_run_memory(cfg, run);
  // A checkpoint that cannot be read, or is of another configuration, fails before planning.
  std::optional<Checkpoint> resume;
  if (!cfg.resume.empty()) resume = read_checkpoint(cfg.resume);
  if (resume && cfg.stop_after_steps > 0 && cfg.stop_after_steps <= resume->steps_done)
    throw EplabError("--stop-after-steps " + std::to_string(cfg.stop_after_steps) + ": the checkpoint '" + cfg.resume +
                     "' has " + std::to_string(resume->steps_done) + " steps done already");
  if (cfg.overlap == "tbo") {
    // The composition adds modeled durations; wall-clock phases on a real-byte backend do not add that way.
    if (!run.caps.modeled_time)
      throw EplabError(
          "--overlap tbo composes simulated phase durations: it needs a backend with modeled time "
          "(sim), not '" +
          cfg.backend + "'");
    // Micro-batch 1's tag layer ids carry kMicroBatchLayerBit; forward, backward and all-reduce ids stay below it.
    if (3 * cfg.layers + 1 >= kMicroBatchLayerBit)
      throw EplabError("--overlap tbo supports up to " + std::to_string((kMicroBatchLayerBit - 2) / 3) +
                       " layers, got " + std::to_string(cfg.layers));
    if (cfg.layout_cache > 0)
      throw EplabError(
          "--overlap tbo does not support --layout-cache yet: the planner's layout keys name whole "
          "batches, not micro-batches");
  }
  const int R = run.topo.size();
  const std::shared_ptr<RoutingSource> routing = open_routing(cfg, run);
  // The ranks of this process share one source through an in-process cache (traces/shared_routing.hpp): it
  // hands out the batches planning generated, or, on simulated fabrics (actors on one OS thread), prefetches
  // each call's batches for every rank on all cores, and the next call's in the background while this one is
  // simulated. Batches depend only on (step, layer, rank), so this changes speed, never results.
  const auto shared = std::make_shared<SharedRoutingSource>(
      routing, R, run.in_process && run.caps.modeled_time && routing->concurrent() && R > 1, cfg.steps, cfg.layers);
  KeepBatch keep;
  const int first_step = resume ? resume->steps_done : 0;
  if (run.in_process)
    keep = [&](int step, int layer, int rank, RoutingBatch b) {
      if (step >= first_step) shared->keep(step, layer, rank, std::move(b));  // a resumed run skips the others
    };
  Plan plan = make_plan(cfg, run, *routing, keep);
  plan.faults = plan_faults(cfg, run, *routing, plan);
  Timeline timeline(run.topo, !cfg.timeline.empty());
  if (resume) {
    check_resume(*resume, cfg.resume, cfg, run, plan);
    timeline.restore_link_state(std::move(resume->links));
  }
  std::optional<CheckpointSink> sink;
  if (!cfg.checkpoint.empty()) sink.emplace(cfg, run, plan, timeline);
  DepartedResults departed;
  // Phantom payloads have no bytes to verify, but their counts are still conserved: one tally for the ranks here.
  std::optional<PayloadTally> tally;
  if (run.phantom && run.in_process) tally.emplace(R);
  const RankInputs inputs{cfg,       run, plan, *shared, timeline, progress, resume ? &*resume : nullptr,
                          sink ? &*sink : nullptr, &departed, tally ? &*tally : nullptr};

  // What the ranks of this process hand back: the gathering rank (rank 0, or the lowest live one when rank 0's
  // GPU failed) all ranks' results, every rank that it ran here (each writes its own element).
  std::optional<std::vector<RankResult>> gathered;
  std::vector<char> ran_here(R, 0);
  backend->launch(run.topo, LaunchOptions{run.phantom, cfg.timeout_s, cfg.sim_model}, [&](Fabric& f) {
    ran_here[f.rank()] = 1;
    bool failed = false;
    RankResult mine = run_rank(f, inputs, &failed);
    if (failed) return;                     // its GPU failed: its result is in `departed`, it takes no further part
    if (cfg.stop_after_steps > 0) return;  // stopped early: the checkpoint holds the state, no report is built
    std::vector<RankResult> all = gather_rank_results(f, std::move(mine), cfg.timeout_s);
    if (!all.empty()) gathered = std::move(all);
  });
  // The failed ranks' results up to their failure (every rank has returned: nothing writes them any more).
  if (gathered)
    for (auto& [r, result] : departed.results) (*gathered)[r] = std::move(result);
  // Ranks as processes (mpi): rank 0's process wrote the checkpoint and speaks for the stopped run.
  if (cfg.stop_after_steps > 0 && !ran_here[0]) {
    const auto first = std::find(ran_here.begin(), ran_here.end(), 1);
    return {{"rank", first == ran_here.end() ? -1 : static_cast<int>(first - ran_here.begin())}, {"role", "worker"}};
  }
  if (cfg.stop_after_steps > 0)
    return {{"stopped", true},
            {"steps_done", cfg.stop_after_steps},
            {"steps", cfg.steps},
            {"checkpoint", cfg.checkpoint},
            {"checkpoints_written", sink->written()},
            {"resume_with", "--resume " + cfg.checkpoint}};
  if (!gathered) {
    const auto first = std::find(ran_here.begin(), ran_here.end(), 1);
    return {{"rank", first == ran_here.end() ? -1 : static_cast<int>(first - ran_here.begin())}, {"role", "worker"}};
  }

  std::vector<RankResult>& results = *gathered;
  for (const RankResult& r : results) timeline.add_spans(r.spans);
  std::optional<OverlapResult> overlap;
  if (cfg.overlap == "tbo") {
    std::vector<std::vector<OverlapOp>> ops;
    for (const RankResult& r : results) ops.push_back(r.steps.ops);
    overlap = compose_two_batch(ops, [&](int rank) { return timeline.records_rank(rank); });
    timeline.add_spans(overlap->spans);
    timeline.shift_rounds(overlap->shifts);
  }
  const VerifyResult vr = verify_run(cfg, run, results, tally ? &*tally : nullptr);
  ReportInputs in{cfg,
                  run.cluster,
                  run.shape,
                  run.dispatch_codec,
                  run.combine_codec,
                  routing->name(),
                  run.phantom,
                  run.backend,
                  cfg.steps * cfg.layers};
  in.tokens_per_rank = cfg.tokens;
  if ((!cfg.trace.empty() || cfg.routing_source) && routing->fixed_tokens() >= 0) {
    in.tokens_per_rank = routing->fixed_tokens();  // a generator given as the source: no need to draw it again
  } else if (!cfg.trace.empty() || cfg.routing_source) {
    // A trace's or a given source's batches hold what was recorded, whatever --tokens says (an imported rank
    // may hold none).
    int64_t total = 0;
    for (int step = 0; step < cfg.steps; ++step)
      for (int layer = 0; layer < cfg.layers; ++layer)
        for (int r = 0; r < R; ++r) total += routing->batch(step, layer, r).num_tokens;
    in.tokens_per_rank = static_cast<double>(total) / (static_cast<double>(cfg.steps) * cfg.layers * R);
  }
  in.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  std::vector<RankRecord> records;
  std::vector<StepRecord> step_records;
  for (RankResult& r : results) {
    records.push_back(std::move(r.record));
    step_records.push_back(std::move(r.steps));
  }
  nlohmann::json report = build_report(in, records, vr);
  if (run.out_bf16) report["codec"]["combine_out"] = "bf16";  // only where the output is not fp32
  add_step_report(report, in, step_records, timeline.link_summary());
  if (overlap) add_overlap_report(report, in, *overlap, R);
  if (!cfg.timeline.empty()) {
    nlohmann::json meta = {{"mode", cfg.mode}, {"backend", in.backend}};
    if (overlap) meta["overlap"] = cfg.overlap;
    timeline.write(cfg.timeline, meta);
  }
  add_plan_report(report, cfg, run, plan, results);
  if (plan.faults) add_fault_report(report, cfg, run, *plan.faults, results);
  return report;
}

nlohmann::json run_experiment_in_child(const RunConfig& cfg) {
  int fd[2];
  if (pipe(fd) != 0) throw EplabError("cannot start a run in a child process: pipe() failed");
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd[0]);
    close(fd[1]);
    throw EplabError("cannot start a run in a child process: fork() failed");
  }
  if (pid == 0) {
    close(fd[0]);
    std::string out;
    try {
      out = run_experiment(cfg).dump();
    } catch (const std::exception& e) {
      out = nlohmann::json{{"error", e.what()}}.dump();
    }
    size_t off = 0;
    while (off < out.size()) {
      const ssize_t n = write(fd[1], out.data() + off, out.size() - off);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    _exit(0);
  }
  close(fd[1]);
  std::string in;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd[0], buf, sizeof buf)) > 0) in.append(buf, static_cast<size_t>(n));
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (in.empty()) {
    const std::string why = WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status)) +
                                                      (WTERMSIG(status) == SIGKILL ? " (out of memory?)" : "")
                                                : "exited with status " + std::to_string(WEXITSTATUS(status));
    return nlohmann::json{{"error", why}};
  }
  return nlohmann::json::parse(in);
}

}  // namespace eplab
