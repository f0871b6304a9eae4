#include "driver/faults.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <map>

#include "driver/plan.hpp"
#include "engine/error.hpp"
#include "engine/hash.hpp"
#include "engine/layout_cache.hpp"
#include "policies/heat/heat_predictor.hpp"

namespace eplab {
namespace {

constexpr double kMaxSlowdown = 1e6;  // beyond it a straggler is a failed GPU, and times stop meaning anything
constexpr double kMaxStallS = 1e6;

[[noreturn]] void bad(const std::string& text, const std::string& why) {
  throw EplabError("fault '" + text + "': " + why +
                   " (expected gpu:R@step:S, nic:R@step:S, link:R@step:S,bw=P, straggler:R,x=Y, "
                   "stall:R@step:S,for=D or flap:R,period=P; docs/faults.md)");
}

// A whole number in [0, INT_MAX], digits only: "1e3", "-1", "5.0" and 4294967297 are refused, never narrowed.
int parse_index(const std::string& text, const std::string& what, const std::string& v) {
  if (v.empty() || v.size() > 10 || v.find_first_not_of("0123456789") != std::string::npos)
    bad(text, what + " must be a whole number in [0, " + std::to_string(INT_MAX) + "], got '" + v + "'");
  const long long x = std::stoll(v);
  if (x > INT_MAX) bad(text, what + " must be a whole number in [0, " + std::to_string(INT_MAX) + "], got '" + v + "'");
  return static_cast<int>(x);
}

double parse_number(const std::string& text, const std::string& what, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const double x = v.empty() ? 0 : std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !std::isfinite(x) || errno == ERANGE)
    bad(text, what + " must be a finite number, got '" + v + "'");
  return x;
}

}  // namespace

const char* fault_kind_name(FaultKind k) {
  switch (k) {
    case FaultKind::kGpu:
      return "gpu";
    case FaultKind::kNic:
      return "nic";
    case FaultKind::kLink:
      return "link";
    case FaultKind::kStraggler:
      return "straggler";
    case FaultKind::kStall:
      return "stall";
    case FaultKind::kFlap:
      return "flap";
  }
  return "?";
}

FaultSpec parse_fault(const std::string& text) {
  FaultSpec f;
  f.text = text;
  const size_t colon = text.find(':');
  if (colon == std::string::npos) bad(text, "no ':' after the kind");
  const std::string kind = text.substr(0, colon);
  const std::map<std::string, FaultKind> kinds = {{"gpu", FaultKind::kGpu},     {"nic", FaultKind::kNic},
                                                  {"link", FaultKind::kLink},   {"straggler", FaultKind::kStraggler},
                                                  {"stall", FaultKind::kStall}, {"flap", FaultKind::kFlap}};
  const auto k = kinds.find(kind);
  if (k == kinds.end()) bad(text, "unknown kind '" + kind + "'");
  f.kind = k->second;
  std::string rest = text.substr(colon + 1), params;
  if (const size_t comma = rest.find(','); comma != std::string::npos) {
    params = rest.substr(comma + 1);
    rest = rest.substr(0, comma);
  }
  std::string trigger;
  if (const size_t at = rest.find('@'); at != std::string::npos) {
    trigger = rest.substr(at + 1);
    rest = rest.substr(0, at);
    if (trigger.empty()) bad(text, "nothing after '@'");
  }
  f.rank = parse_index(text, "the rank", rest);
  if (trigger.rfind("step:", 0) == 0) {
    f.step = parse_index(text, "the step", trigger.substr(5));
  } else if (trigger.rfind("t:", 0) == 0) {
    f.at_s = parse_number(text, "the time", trigger.substr(2));
    if (f.at_s < 0) bad(text, "the time must be >= 0 simulated seconds, got '" + trigger.substr(2) + "'");
  } else if (!trigger.empty()) {
    bad(text, "the trigger must be @step:S or @t:T, got '@" + trigger + "'");
  }
  const bool timed = f.kind == FaultKind::kGpu || f.kind == FaultKind::kNic || f.kind == FaultKind::kLink ||
                     f.kind == FaultKind::kStall;
  if (timed && trigger.empty()) bad(text, "a " + kind + " fault needs a trigger, @step:S or @t:T");
  if (!timed && !trigger.empty()) bad(text, "a " + kind + " fault lasts the whole run: no @ trigger");
  // Parameters: key=value, each at most once, only the kind's own.
  std::map<std::string, std::string> kv;
  size_t pos = 0;
  while (!params.empty() && pos <= params.size()) {
    const size_t end = std::min(params.find(',', pos), params.size());
    const std::string item = params.substr(pos, end - pos);
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) bad(text, "parameter '" + item + "' is not key=value");
    if (!kv.emplace(item.substr(0, eq), item.substr(eq + 1)).second)
      bad(text, "parameter '" + item.substr(0, eq) + "' given twice");
    pos = end + 1;
  }
  const std::map<FaultKind, std::string> key_of = {
      {FaultKind::kLink, "bw"}, {FaultKind::kStraggler, "x"}, {FaultKind::kStall, "for"}, {FaultKind::kFlap, "period"}};
  const auto want = key_of.find(f.kind);
  for (const auto& [key, value] : kv)
    if (want == key_of.end() || key != want->second)
      bad(text, "unknown parameter '" + key + "' for a " + kind + " fault" +
                    (want == key_of.end() ? " (it takes none)" : " (it takes " + want->second + "=)"));
  if (want != key_of.end() && !kv.count(want->second)) bad(text, "a " + kind + " fault needs " + want->second + "=");
  switch (f.kind) {
    case FaultKind::kLink:
      f.bw_pct = parse_number(text, "bw", kv["bw"]);
      if (!(f.bw_pct > 0 && f.bw_pct < 100))
        bad(text, "bw is the percentage of bandwidth left, in (0, 100), got '" + kv["bw"] + "'");
      break;
    case FaultKind::kStraggler:
      f.slowdown = parse_number(text, "x", kv["x"]);
      if (!(f.slowdown >= 1 && f.slowdown <= kMaxSlowdown))
        bad(text, "x (times slower) must be in [1, 1e6], got '" + kv["x"] + "'");
      break;
    case FaultKind::kStall:
      f.stall_s = parse_number(text, "for", kv["for"]);
      if (!(f.stall_s > 0 && f.stall_s <= kMaxStallS))
        bad(text, "for (seconds) must be in (0, 1e6], got '" + kv["for"] + "'");
      break;
    case FaultKind::kFlap:
      f.period = parse_index(text, "period", kv["period"]);
      if (f.period < 1) bad(text, "period (steps) must be at least 1, got '" + kv["period"] + "'");
      break;
    default:
      break;
  }
  return f;
}

std::vector<FaultSpec> check_faults(const RunConfig& cfg, const RunSetup& run) {
  std::vector<FaultSpec> out;
  const int R = run.topo.size();
  int failed = 0;
  std::vector<char> dead(R, 0);
  for (const std::string& text : cfg.faults) {
    FaultSpec f = parse_fault(text);
    auto refuse = [&](const std::string& why) { throw EplabError("fault '" + text + "': " + why); };
    if (f.rank >= R) refuse("rank " + std::to_string(f.rank) + " is outside 0.." + std::to_string(R - 1));
    if (f.step >= cfg.steps)
      refuse("step " + std::to_string(f.step) + " is outside the run's steps 0.." + std::to_string(cfg.steps - 1));
    if (f.at_s >= 0 && f.kind != FaultKind::kLink)
      refuse(
          "@t:T is for link faults only: a GPU failure, a NIC down or a stall changes the failover plan or the "
          "ranks' program, which are fixed per step before ranks start, and a step's simulated start is known only "
          "once the steps before it ran; give the step, @step:S");
    if (f.at_s >= 0 && (!cfg.checkpoint.empty() || !cfg.resume.empty()))
      refuse("a link fault at a time (@t:T) is not kept in checkpoints yet: give the step, @step:S");
    if ((f.kind == FaultKind::kNic || f.kind == FaultKind::kFlap) && cfg.backend == "mpi")
      refuse("NIC faults are not supported on mpi yet");
    if (f.kind == FaultKind::kNic || f.kind == FaultKind::kFlap) {
      if (cfg.overlap != "none") refuse("NIC faults do not combine with --overlap tbo yet");
      if (cfg.mode != "inference") refuse("NIC faults run in --mode inference only");
      if (cfg.layout_cache > 0) refuse("NIC faults do not combine with --layout-cache (the routing changes)");
    }
    if (f.kind == FaultKind::kLink && !run.caps.modeled_time)
      refuse("a link fault changes a simulated link; backend '" + cfg.backend +
             "' moves real bytes between threads or processes and has no links to degrade (use --backend sim)");
    if (f.kind == FaultKind::kGpu) {
      // On emu and mpi the failed rank stops (its thread returns, its process exits) and the others carry on
      // among themselves: what depends on every rank taking part to the end is refused.
      if (cfg.backend == "mpi") {
        if (f.rank == 0)
          refuse("on mpi rank 0 collects every rank's results and writes the report: fail another rank");
        const char* recovery = std::getenv("OMPI_MCA_orte_enable_recovery");
        if (!recovery || std::string(recovery) != "1")
          refuse(
              "on mpi the failed rank's process exits at its step, and without recovery OpenMPI's mpirun (4.1) "
              "aborts the whole job when one process exits before MPI_Finalize (\"mpirun has exited due to process "
              "rank R ... exiting improperly\"); start the run as mpirun --enable-recovery ... (or "
              "--mca orte_enable_recovery 1), which lets the other processes run on");
      }
      if (cfg.mode != "inference") refuse("GPU failures run in --mode inference only");
      if (cfg.overlap != "none") refuse("GPU failures do not combine with --overlap tbo yet");
      if (cfg.rebalance_every > 0)
        refuse("GPU failures do not combine with --rebalance-every yet (the balancers place over every rank)");
      if (!dead[f.rank]) ++failed;
      dead[f.rank] = 1;
      if (failed >= R) refuse("every rank would have failed: at least one must survive");
    }
    out.push_back(std::move(f));
  }
  return out;
}

std::vector<int> FaultPlan::failing_at(int step) const {
  std::vector<int> out;
  for (size_t r = 0; r < dead_from.size(); ++r)
    if (dead_from[r] == step) out.push_back(static_cast<int>(r));
  return out;
}

bool FaultPlan::detects_at(int step) const {
  return std::find(detect_steps.begin(), detect_steps.end(), step) != detect_steps.end();
}

bool FaultPlan::nic_down(int rank, int step) const {
  for (const FaultSpec& f : faults) {
    if (f.rank != rank) continue;
    if (f.kind == FaultKind::kNic && step >= f.step) return true;
    if (f.kind == FaultKind::kFlap && (step / f.period) % 2 == 1) return true;
  }
  return false;
}

bool FaultPlan::reachable(int src, int dst, int step) const {
  if (dead(dst, step)) return false;
  if (src / gpus_per_node == dst / gpus_per_node) return true;
  return !nic_down(src, step) && !nic_down(dst, step);
}

double FaultPlan::slowdown(int rank) const {
  double x = 1;
  for (const FaultSpec& f : faults)
    if (f.kind == FaultKind::kStraggler && f.rank == rank) x *= f.slowdown;
  return x;
}

double FaultPlan::nic_fraction(int rank, int step) const {
  double x = -1;
  for (const FaultSpec& f : faults)
    if (f.kind == FaultKind::kLink && f.rank == rank && f.step == step) x = f.bw_pct / 100;
  return x;
}

std::vector<std::pair<double, double>> FaultPlan::timed_nic_fractions(int rank) const {
  std::vector<std::pair<double, double>> v;
  for (const FaultSpec& f : faults)
    if (f.kind == FaultKind::kLink && f.rank == rank && f.at_s >= 0) v.emplace_back(f.at_s, f.bw_pct / 100);
  return v;
}

double FaultPlan::stall_s(int rank, int step) const {
  double s = 0;
  for (const FaultSpec& f : faults)
    if (f.kind == FaultKind::kStall && f.rank == rank && f.step == step) s += f.stall_s;
  return s;
}

namespace {

// The failover re-plan of one layer: slots on dead ranks keep their experts but are never selected; an expert
// with no replica left on a live rank is lost (its weights are on no live GPU); an expert that lost replicas
// gets live slots back from the expert whose load per replica stays lowest, one at a time, while that lowers the
// hotter of the two (the load is the routing's at the step before the failure: what a balancer has seen).
struct Repair {
  std::vector<int32_t> slot_expert;
  std::vector<Transfer> moves;
  std::vector<int32_t> lost;
  int restored = 0;
};

Repair repair_layer(const Placement& old_p, const std::vector<char>& dead, const std::vector<double>& load,
                    const Topology& topo) {
  const int E = old_p.num_experts();
  Repair rep;
  rep.slot_expert = old_p.slot_expert();
  std::vector<int> live_n(E, 0), need(E, 0);
  for (int s = 0; s < old_p.num_slots(); ++s) (dead[old_p.rank_of_slot(s)] ? need : live_n)[old_p.expert_of_slot(s)]++;
  for (int e = 0; e < E; ++e)
    if (live_n[e] == 0) rep.lost.push_back(e), need[e] = 0;
  auto per_replica = [&](int e, int n) { return n > 0 ? load[e] / n : std::numeric_limits<double>::infinity(); };
  for (;;) {
    int hot = -1;  // the needy expert with the highest load per live replica (ties: lowest id)
    for (int e = 0; e < E; ++e)
      if (need[e] > 0 && (hot < 0 || per_replica(e, live_n[e]) > per_replica(hot, live_n[hot]))) hot = e;
    if (hot < 0) break;
    int donor = -1;  // an expert with two or more live replicas whose load per replica after giving one is lowest
    for (int e = 0; e < E; ++e)
      if (e != hot && live_n[e] >= 2 &&
          (donor < 0 || per_replica(e, live_n[e] - 1) < per_replica(donor, live_n[donor] - 1)))
        donor = e;
    if (donor < 0 || !(per_replica(donor, live_n[donor] - 1) < per_replica(hot, live_n[hot]))) break;
    // The donor's last live slot on a rank that does not hold `hot` yet (else its last live slot).
    int slot = -1;
    for (int s = old_p.num_slots() - 1; s >= 0 && slot < 0; --s) {
      if (rep.slot_expert[s] != donor || dead[old_p.rank_of_slot(s)]) continue;
      bool holds = false;
      const int r = old_p.rank_of_slot(s);
      for (int i = 0; i < old_p.slots_per_rank(); ++i)
        holds = holds || rep.slot_expert[r * old_p.slots_per_rank() + i] == hot;
      if (!holds) slot = s;
    }
    for (int s = old_p.num_slots() - 1; s >= 0 && slot < 0; --s)
      if (rep.slot_expert[s] == donor && !dead[old_p.rank_of_slot(s)]) slot = s;
    // The weights come from a live holder of `hot`: one in the slot's node first, else the lowest.
    const int dst = old_p.rank_of_slot(slot);
    int src = -1;
    for (int32_t o : old_p.replicas(hot)) {
      const int r = old_p.rank_of_slot(o);
      if (dead[r]) continue;
      if (src < 0 || (topo.node_of(r) == topo.node_of(dst) && topo.node_of(src) != topo.node_of(dst))) src = r;
    }
    rep.slot_expert[slot] = hot;
    if (src != dst) rep.moves.push_back({src, dst});
    --live_n[donor];
    ++live_n[hot];
    --need[hot];
    ++rep.restored;
  }
  return rep;
}

// Cached layouts (--layout-cache): a call's key names its layer, placement and every rank's routing
// (driver/plan.cpp), but from a failure on the same routing is served differently (the failed ranks' batches
// leave, the failover selection moves selections, the placement is re-planned, hierarchical relays elsewhere).
// So every call from the first failure on gets the ranks dead at its step and its placement mixed into its key,
// and the planner's LRU runs again over the keys in call order, as every rank's engine will run its own: a
// layout cached before a failure is never vouched for after it, and one cached after it is, while the failed
// set stays the same.
void rekey_layouts(const RunConfig& cfg, const FaultPlan& fp, Plan& plan) {
  const int R = static_cast<int>(fp.dead_from.size());
  LayoutCache lru(cfg.layout_cache);
  for (int step = 0; step < cfg.steps; ++step)
    for (int l = 0; l < cfg.layers; ++l) {
      LayerPlan& lp = plan.calls[static_cast<size_t>(step) * cfg.layers + l];
      if (!fp.failure_steps.empty() && step >= fp.failure_steps.front()) {
        uint64_t h = mix64(lp.layout_key ^ 0x6661696c6564ull);
        for (int r = 0; r < R; ++r)
          if (fp.dead(r, step)) h = mix64(h ^ static_cast<uint64_t>(r));
        for (int32_t e : lp.placement->slot_expert()) h = mix64(h ^ static_cast<uint32_t>(e));
        lp.layout_key = h == 0 ? 1 : h;  // 0 means "not cached"
      }
      lp.layout_cached = lru.find(lp.layout_key) != nullptr;
      if (!lp.layout_cached) lru.insert({lp.layout_key, 0, {}, 0});
    }
}

}  // namespace

std::shared_ptr<const FaultPlan> plan_faults(const RunConfig& cfg, const RunSetup& run, RoutingSource& routing,
                                             Plan& plan) {
  if (cfg.faults.empty()) return nullptr;
  auto fp = std::make_shared<FaultPlan>();
  fp->faults = check_faults(cfg, run);
  fp->detect_timeout_s = cfg.detect_timeout_s;
  fp->gpus_per_node = run.topo.gpus_per_node();
  fp->ranks_stop = !run.caps.modeled_time;
  const int R = run.topo.size(), E = run.shape.num_experts;
  fp->dead_from.assign(R, FaultPlan::kNever);
  for (const FaultSpec& f : fp->faults)
    if (f.kind == FaultKind::kGpu) fp->dead_from[f.rank] = std::min(fp->dead_from[f.rank], f.step);
  for (int r = 0; r < R; ++r)
    if (fp->dead_from[r] != FaultPlan::kNever) fp->failure_steps.push_back(fp->dead_from[r]);
  std::sort(fp->failure_steps.begin(), fp->failure_steps.end());
  fp->failure_steps.erase(std::unique(fp->failure_steps.begin(), fp->failure_steps.end()), fp->failure_steps.end());
  // Detection: every GPU failure, and every step a NIC goes from up to down.
  fp->detect_steps = fp->failure_steps;
  for (int step = 0; step < cfg.steps; ++step)
    for (int r = 0; r < R; ++r)
      if (fp->nic_down(r, step) && (step == 0 || !fp->nic_down(r, step - 1))) fp->detect_steps.push_back(step);
  std::sort(fp->detect_steps.begin(), fp->detect_steps.end());
  fp->detect_steps.erase(std::unique(fp->detect_steps.begin(), fp->detect_steps.end()), fp->detect_steps.end());
  for (int step = 0; step < cfg.steps && fp->first_affected_step == std::numeric_limits<int>::max(); ++step)
    for (int r = 0; r < R; ++r)
      if (fp->dead(r, step) || fp->nic_down(r, step)) fp->first_affected_step = step;
  const std::string routing_name = routing.name();
  for (int step : fp->failure_steps) {
    std::vector<char> dead(R, 0);
    for (int r = 0; r < R; ++r) dead[r] = fp->dead(r, step);
    const int seen = std::max(step - 1, 0);  // the load a re-plan has seen: the step before the failure
    for (int l = 0; l < cfg.layers; ++l) {
      std::vector<double> load(E, 0.0);
      for (int r = 0; r < R; ++r) {
        const RoutingBatch b = routing.batch(seen, l, r);
        validate_batch(b, E, routing_name.c_str());
        add_expert_load(b, load);
      }
      LayerPlan& at = plan.calls[step * cfg.layers + l];
      Repair rep = repair_layer(*at.placement, dead, load, run.topo);
      fp->lost_experts.push_back({step, l, rep.lost});
      fp->slots_restored += rep.restored;
      if (rep.restored == 0) continue;
      auto placed = std::make_shared<const Placement>(E, R, std::move(rep.slot_expert));
      at.moves = std::move(rep.moves);
      at.slots_moved = rep.restored;
      for (int s = step; s < cfg.steps; ++s) plan.calls[s * cfg.layers + l].placement = placed;
    }
  }
  if (cfg.layout_cache > 0) rekey_layouts(cfg, *fp, plan);
  return fp;
}

void failover_select(const FaultPlan& fp, int step, int layer, int src_rank, const RoutingBatch& batch,
                     const Placement& placement, std::vector<int32_t>& slots, FaultCounts& counts) {
  if (step < fp.first_affected_step) return;
  std::vector<int32_t> live;
  for (int t = 0; t < batch.num_tokens; ++t)
    for (int k = 0; k < batch.topk; ++k) {
      const size_t i = static_cast<size_t>(t) * batch.topk + k;
      const int32_t e = batch.topk_idx[i];
      if (e < 0) continue;
      bool had_dead = false;
      live.clear();
      for (int32_t s : placement.replicas(e)) {
        if (!fp.reachable(src_rank, placement.rank_of_slot(s), step))
          had_dead = true;
        else
          live.push_back(s);
      }
      if (!had_dead) continue;
      if (live.empty()) {
        slots[i] = -1;
        ++counts.lost;
        if (counts.first_lost.size() < kLostSamples * 5)
          counts.first_lost.insert(counts.first_lost.end(), {step, layer, src_rank, t, e});
        continue;
      }
      ++counts.rerouted;
      if (slots[i] < 0 || !fp.reachable(src_rank, placement.rank_of_slot(slots[i]), step))
        slots[i] = live[static_cast<size_t>(t + k) % live.size()];
    }
}

nlohmann::json fault_report(const FaultPlan& fp, const std::vector<FaultCounts>& counts, double recover_migrate_s,
                            bool timed) {
  FaultCounts sum;
  std::vector<std::array<int32_t, 5>> lost;
  for (const FaultCounts& c : counts) {
    sum.rerouted += c.rerouted;
    sum.lost += c.lost;
    sum.departed += c.departed;
    sum.detect_s = std::max(sum.detect_s, c.detect_s);
    for (size_t i = 0; i + 5 <= c.first_lost.size(); i += 5)
      lost.push_back(
          {c.first_lost[i], c.first_lost[i + 1], c.first_lost[i + 2], c.first_lost[i + 3], c.first_lost[i + 4]});
  }
  // The first few by (step, layer, source, token), whichever rank reported them.
  std::sort(lost.begin(), lost.end());
  if (lost.size() > kLostSamples) lost.resize(kLostSamples);
  nlohmann::json first = nlohmann::json::array();
  for (const auto& a : lost)
    first.push_back({{"step", a[0]}, {"layer", a[1]}, {"source_rank", a[2]}, {"token", a[3]}, {"expert", a[4]}});
  nlohmann::json lost_experts = nlohmann::json::array();
  for (const auto& le : fp.lost_experts)
    if (!le.experts.empty()) lost_experts.push_back({{"step", le.step}, {"layer", le.layer}, {"experts", le.experts}});
  nlohmann::json list = nlohmann::json::array();
  for (const FaultSpec& f : fp.faults) {
    nlohmann::json j = {{"spec", f.text}, {"kind", fault_kind_name(f.kind)}, {"rank", f.rank}};
    if (f.step >= 0) j["step"] = f.step;
    if (f.at_s >= 0) j["t_s"] = f.at_s;
    if (f.kind == FaultKind::kStraggler) j["slowdown"] = f.slowdown;
    if (f.kind == FaultKind::kStall) j["stall_s"] = f.stall_s;
    if (f.kind == FaultKind::kLink) j["bw_pct"] = f.bw_pct;
    if (f.kind == FaultKind::kFlap) j["period"] = f.period;
    list.push_back(std::move(j));
  }
  std::vector<int> dead;
  for (size_t r = 0; r < fp.dead_from.size(); ++r)
    if (fp.dead_from[r] != FaultPlan::kNever) dead.push_back(static_cast<int>(r));
  nlohmann::json out = {{"list", list},
          {"failed_ranks", dead},
          {"tokens_rerouted", sum.rerouted},
          {"tokens_lost", sum.lost},
          {"tokens_departed", sum.departed},
          {"first_lost", first},
          {"lost_experts", lost_experts},
          {"detect_timeout_s", fp.detect_timeout_s},
          {"detect_s", sum.detect_s},
          // The re-plan runs in the planner before ranks start: no modeled time is charged for it.
          {"replan_s", 0.0},
          {"migrate_s", recover_migrate_s},
          {"recover_s", recover_migrate_s},
          {"slots_restored", fp.slots_restored},
          {"timed", timed}};
  // emu and mpi: the failed ranks stopped (threads returned, processes exited) and the others ran on alone.
  if (fp.ranks_stop && !dead.empty()) out["failed_ranks_stopped"] = true;
  return out;
}

}  // namespace eplab
