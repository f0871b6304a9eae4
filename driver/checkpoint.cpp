#include "driver/checkpoint.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <utility>

#include "driver/faults.hpp"
#include "driver/proto/eplab_checkpoint.pb.h"
#include "driver/rank_program.hpp"
#include "driver/run_options.hpp"
#include "engine/error.hpp"
#include "engine/fabric.hpp"
#include "engine/hash.hpp"
#include "engine/output_file.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

constexpr char kFormat[] = "eplab-checkpoint";
// Options that say how a run is carried out, not what it computes: a resumed run may change them.
constexpr const char* kNotConfig[] = {"checkpoint", "checkpoint_every", "stop_after_steps",
                                      "resume",     "timeout_s",        "timeline"};

uint64_t mix_in(uint64_t h, uint64_t v) { return mix64(h ^ v); }

[[noreturn]] void refuse(const std::string& source, const std::string& why) {
  throw EplabError("checkpoint " + source + ": " + why);
}

std::string quoted(const std::string& path) { return "'" + path + "'"; }

std::string flag_of(const std::string& key) {
  for (const RunOption& o : run_options())
    if (o.field.key == key) return "--" + o.flag;
  return key;
}

// Every vector the report reads per call or per step holds exactly the calls and steps run so far, so that the
// resumed run appends to them where the uninterrupted one would have.
void check_result(const RankResult& r, int rank, const RunConfig& cfg, bool verify, int steps_done, int ranks,
                  int slots, const std::string& source) {
  const size_t calls = static_cast<size_t>(cfg.steps) * cfg.layers;
  const size_t done = static_cast<size_t>(steps_done) * cfg.layers;
  auto expect = [&](const char* field, size_t got, size_t want) {
    if (got != want)
      refuse(source, "rank " + std::to_string(rank) + "'s " + field + " holds " + std::to_string(got) +
                         " entries, expected " + std::to_string(want) + " for " + std::to_string(steps_done) +
                         " steps done");
  };
  if (r.rank != rank) refuse(source, "rank " + std::to_string(rank) + "'s state says rank " + std::to_string(r.rank));
  expect("layer times", r.layer_time_s.size(), calls);
  expect("migration times", r.migration_time_s.size(), calls);
  expect("slot loads per call", r.call_slot_load.size(), calls * slots);
  expect("slot loads", r.record.slot_load.size(), static_cast<size_t>(slots));
  expect("notify figures", r.record.notify.size(), done);
  expect("dispatch figures", r.record.dispatch.size(), done);
  expect("combine figures", r.record.combine.size(), done);
  expect("received rows", r.record.recv_rows.size(), done);
  expect("step times", r.steps.step_s.size(), steps_done);
  expect("compute times", r.steps.compute_s.size(), steps_done);
  expect("all-reduce times", r.steps.allreduce_s.size(), steps_done);
  const size_t digests = verify ? calls * ranks : 0;
  if (verify) expect("delivery ranks", r.deliveries.ranks, ranks);
  expect("sent digests", r.deliveries.sent.size(), digests);
  expect("received digests", r.deliveries.got.size(), digests);
}


void fill_rank(const RankCheckpoint& r, checkpoint::Rank* pr) {
  const std::vector<uint8_t> result = encode_rank_result(r.result);
  pr->set_result(result.data(), result.size());
  pr->set_dispatch_codec_state(r.dispatch_codec_state.data(), r.dispatch_codec_state.size());
  pr->set_combine_codec_state(r.combine_codec_state.data(), r.combine_codec_state.size());
  for (const LayoutCache::Entry& e : r.layout_entries) {
    checkpoint::LayoutEntry* pe = pr->add_layout_entries();
    pe->set_key(e.key);
    pe->set_own_hash(e.own_hash);
    for (uint32_t n : e.counts) pe->add_counts(n);
    pe->set_notify_time_s(e.notify_time_s);
  }
  pr->set_layout_hits(r.layout_stats.hits);
  pr->set_layout_misses(r.layout_stats.misses);
  pr->set_layout_saved_s(r.layout_stats.notify_time_saved_s);
  pr->set_layout_missed_s(r.layout_stats.notify_time_missed_s);
  pr->set_clock_s(r.clock_s);
  pr->set_departed(r.departed);
  for (const PhaseStats* s : {&r.engine_stats.notify, &r.engine_stats.dispatch, &r.engine_stats.combine}) {
    checkpoint::PhaseFigures* pf = pr->add_engine_stats();
    pf->set_time_s(s->time_s);
    pf->set_codec_s(s->codec_s);
    for (double b : s->bytes) pf->add_bytes(b);
    pf->set_logical_bytes(s->logical_bytes);
    pf->set_scaleout_logical_bytes(s->scaleout_logical_bytes);
    pf->set_messages(s->messages);
    pf->set_calls(s->calls);
  }
}

RankCheckpoint read_rank(const checkpoint::Rank& pr, int r, const std::string& source) {
  RankCheckpoint rc;
  try {
    rc.result = decode_rank_result({reinterpret_cast<const uint8_t*>(pr.result().data()), pr.result().size()}, r);
  } catch (const EplabError& e) {
    refuse(source, std::string("corrupt state of rank ") + std::to_string(r) + ": " + e.what());
  }
  rc.dispatch_codec_state.assign(pr.dispatch_codec_state().begin(), pr.dispatch_codec_state().end());
  rc.combine_codec_state.assign(pr.combine_codec_state().begin(), pr.combine_codec_state().end());
  for (const checkpoint::LayoutEntry& pe : pr.layout_entries())
    rc.layout_entries.push_back(
        {pe.key(), pe.own_hash(), {pe.counts().begin(), pe.counts().end()}, pe.notify_time_s()});
  rc.layout_stats = {pr.layout_hits(), pr.layout_misses(), pr.layout_saved_s(), pr.layout_missed_s()};
  rc.clock_s = pr.clock_s();
  if (pr.engine_stats_size() != 3)
    refuse(source, "corrupt: rank " + std::to_string(r) + " holds " + std::to_string(pr.engine_stats_size()) +
                       " engine phase totals, expected 3 (notify, dispatch, combine)");
  PhaseStats* totals[] = {&rc.engine_stats.notify, &rc.engine_stats.dispatch, &rc.engine_stats.combine};
  for (int i = 0; i < 3; ++i) {
    const checkpoint::PhaseFigures& pf = pr.engine_stats(i);
    if (pf.bytes_size() != 3)
      refuse(source, "corrupt: rank " + std::to_string(r) + "'s engine totals hold " +
                         std::to_string(pf.bytes_size()) + " link classes, expected 3");
    PhaseStats& s = *totals[i];
    s.time_s = pf.time_s();
    s.codec_s = pf.codec_s();
    for (int b = 0; b < 3; ++b) s.bytes[b] = pf.bytes(b);
    s.logical_bytes = pf.logical_bytes();
    s.scaleout_logical_bytes = pf.scaleout_logical_bytes();
    s.messages = pf.messages();
    s.calls = pf.calls();
  }
  // A resumed rank sleeps until this date: it must be one a run can have reached.
  if (!std::isfinite(rc.clock_s) || rc.clock_s < 0)
    refuse(source, "corrupt: rank " + std::to_string(r) + "'s clock is " + std::to_string(rc.clock_s) + " s");
  rc.departed = pr.departed();
  return rc;
}

}  // namespace

uint64_t checkpoint_body_hash(const std::string& s) {
  uint64_t h = mix64(s.size());
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = mix64(h ^ w);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  return mix64(h ^ tail ^ (static_cast<uint64_t>(s.size() - i) << 56));
}

nlohmann::json checkpoint_config(const RunConfig& cfg) {
  nlohmann::json j = run_config_to_json(cfg);
  for (const char* key : kNotConfig) j.erase(key);
  return j;
}

uint64_t plan_hash(const Plan& plan, int calls) {
  uint64_t h = mix64(calls);
  for (int c = 0; c < calls && c < static_cast<int>(plan.calls.size()); ++c) {
    const LayerPlan& lp = plan.calls[c];
    for (int32_t e : lp.placement->slot_expert()) h = mix_in(h, static_cast<uint32_t>(e));
    for (const Transfer& t : lp.moves)
      h = mix_in(h, (static_cast<uint64_t>(t.src) << 32) | static_cast<uint32_t>(t.dst));
    h = mix_in(h, static_cast<uint64_t>(lp.slots_moved));
    h = mix_in(h, std::bit_cast<uint64_t>(lp.forecast_mape));
    h = mix_in(h, lp.layout_key);
    h = mix_in(h, lp.layout_cached);
  }
  return h;
}

void check_checkpoint_options(const RunConfig& cfg, const RunSetup& run) {
  const bool any = !cfg.checkpoint.empty() || !cfg.resume.empty();
  if (cfg.stop_after_steps > 0 && cfg.checkpoint.empty())
    throw EplabError("--stop-after-steps " + std::to_string(cfg.stop_after_steps) +
                     " needs --checkpoint FILE: the run it ends must be resumable");
  if (cfg.stop_after_steps >= cfg.steps && cfg.stop_after_steps > 0)
    throw EplabError("--stop-after-steps " + std::to_string(cfg.stop_after_steps) + " must be below --steps " +
                     std::to_string(cfg.steps));
  if (!any) return;
  const std::string which = !cfg.checkpoint.empty() ? "--checkpoint" : "--resume";
  if (!cfg.timeline.empty())
    throw EplabError(which +
                     " with --timeline: a checkpoint keeps the link totals, not the rounds a timeline file "
                     "draws; drop --timeline");
  if (cfg.overlap != "none")
    throw EplabError(which + " with --overlap " + cfg.overlap +
                     ": two-batch overlap is composed after the run "
                     "from every step's phases and is not checkpointed yet");
  if (cfg.routing_source)
    throw EplabError(which +
                     " needs the routing named by options (--routing or --trace): a routing source set by "
                     "code cannot be checked to be the same on resume");
  if (!cfg.checkpoint.empty()) check_output_path(cfg.checkpoint, "the checkpoint");
}

std::string serialize_checkpoint(const Checkpoint& c) {
  checkpoint::Body body;
  body.set_config_json(c.config.dump());
  body.set_steps_done(c.steps_done);
  body.set_plan_hash(c.plan_hash);
  for (const RankCheckpoint& r : c.ranks) fill_rank(r, body.add_ranks());
  for (const Timeline::PhaseLinkState& p : c.links) {
    checkpoint::PhaseLinks* pl = body.add_links();
    pl->set_name(p.name);
    for (double b : p.bytes) pl->add_bytes(b);
    for (auto [t0, t1] : p.spans) {
      pl->add_span_t0(t0);
      pl->add_span_t1(t1);
    }
  }
  checkpoint::Envelope env;
  env.set_format(kFormat);
  env.set_version(kCheckpointVersion);
  std::string bytes;
  if (!body.SerializeToString(&bytes)) throw EplabError("checkpoint: could not serialize the run's state");
  env.set_body_hash(checkpoint_body_hash(bytes));
  env.set_body(std::move(bytes));
  std::string out;
  if (!env.SerializeToString(&out)) throw EplabError("checkpoint: could not serialize the run's state");
  return out;
}

Checkpoint parse_checkpoint(std::span<const uint8_t> bytes, const std::string& source) {
  checkpoint::Envelope env;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
    refuse(source, "is " + std::to_string(bytes.size()) + " bytes, more than a checkpoint can hold");
  if (!env.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    refuse(source, "truncated or corrupt: its " + std::to_string(bytes.size()) +
                       " bytes are not a checkpoint's protobuf envelope");
  if (env.format() != kFormat)
    refuse(source, "not an eplab checkpoint (format '" + env.format().substr(0, 40) + "', expected '" + kFormat + "')");
  if (env.version() != kCheckpointVersion)
    refuse(source, "version " + std::to_string(env.version()) + ", this build reads version " +
                       std::to_string(kCheckpointVersion) + " (write it again with this build)");
  if (checkpoint_body_hash(env.body()) != env.body_hash())
    refuse(source, "corrupt or truncated: its contents (" + std::to_string(env.body().size()) +
                       " bytes) do not match the hash written with them");
  checkpoint::Body body;
  if (!body.ParseFromString(env.body())) refuse(source, "corrupt: its contents are not a checkpoint body");
  Checkpoint c;
  c.config = nlohmann::json::parse(body.config_json(), nullptr, false);
  if (c.config.is_discarded() || !c.config.is_object())
    refuse(source, "corrupt: its configuration is not a JSON object");
  c.steps_done = body.steps_done();
  if (c.steps_done < 1) refuse(source, "corrupt: " + std::to_string(c.steps_done) + " steps done");
  c.plan_hash = body.plan_hash();
  for (int r = 0; r < body.ranks_size(); ++r) c.ranks.push_back(read_rank(body.ranks(r), r, source));
  size_t link_count = 0;
  for (const checkpoint::PhaseLinks& pl : body.links()) {
    if (pl.span_t0_size() != pl.span_t1_size())
      refuse(source, "corrupt: link phase '" + pl.name() + "' has " + std::to_string(pl.span_t0_size()) +
                         " round starts and " + std::to_string(pl.span_t1_size()) + " ends");
    if (!c.links.empty() && static_cast<size_t>(pl.bytes_size()) != link_count)
      refuse(source, "corrupt: link phases hold different link counts");
    link_count = pl.bytes_size();
    Timeline::PhaseLinkState p{pl.name(), {pl.bytes().begin(), pl.bytes().end()}, {}};
    for (int i = 0; i < pl.span_t0_size(); ++i) p.spans.push_back({pl.span_t0(i), pl.span_t1(i)});
    for (double b : p.bytes)
      if (!std::isfinite(b) || b < 0)
        refuse(source, "corrupt: link phase '" + pl.name() + "' carried " + std::to_string(b) + " bytes");
    for (auto [t0, t1] : p.spans)
      if (!std::isfinite(t0) || !std::isfinite(t1) || t1 < t0)
        refuse(source, "corrupt: link phase '" + pl.name() + "' has a round from " + std::to_string(t0) + " to " +
                           std::to_string(t1) + " s");
    c.links.push_back(std::move(p));
  }
  return c;
}

std::string encode_rank_checkpoint(const RankCheckpoint& r) {
  checkpoint::Rank pr;
  fill_rank(r, &pr);
  std::string out;
  if (!pr.SerializeToString(&out))
    throw EplabError("checkpoint: could not serialize rank " + std::to_string(r.result.rank) + "'s state");
  return out;
}

RankCheckpoint decode_rank_checkpoint(std::span<const uint8_t> bytes, int rank, const std::string& source) {
  checkpoint::Rank pr;
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()) ||
      !pr.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    refuse(source, "truncated or corrupt: its " + std::to_string(bytes.size()) + " bytes are not a rank's state");
  return read_rank(pr, rank, source);
}

void write_checkpoint(const std::string& path, const Checkpoint& c) {
  write_output_file(path, serialize_checkpoint(c), "the checkpoint");
}

Checkpoint read_checkpoint(const std::string& path) {
  // Sized before it is read: a checkpoint is a regular file, and one past protobuf's 2 GB limit cannot be parsed.
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status))
    refuse(quoted(path), "cannot be opened: " + (ec ? ec.message() : std::string("no such file")));
  if (!std::filesystem::is_regular_file(status)) refuse(quoted(path), "is not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) refuse(quoted(path), "cannot be sized: " + ec.message());
  if (size > static_cast<uintmax_t>(std::numeric_limits<int>::max()))
    refuse(quoted(path), "is " + std::to_string(size) + " bytes, more than a checkpoint can hold (2 GB)");
  std::ifstream in(path, std::ios::binary);
  if (!in) refuse(quoted(path), std::string("cannot be opened: ") + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) refuse(quoted(path), std::string("cannot be read: ") + std::strerror(errno));
  if (bytes.empty()) refuse(quoted(path), "is empty (truncated)");
  return parse_checkpoint({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, quoted(path));
}

void check_resume(const Checkpoint& c, const std::string& path, const RunConfig& cfg, const RunSetup& run,
                  const Plan& plan) {
  const int ranks = run.topo.size();
  const std::string source = quoted(path);
  const nlohmann::json mine = checkpoint_config(cfg);
  for (const auto& [key, value] : mine.items()) {
    if (!c.config.contains(key))
      refuse(source, "was written by a run without option " + flag_of(key) + " (another eplab version?)");
    if (c.config[key] != value)
      refuse(source, "belongs to another configuration: " + flag_of(key) + " was " + c.config[key].dump() + " there, " +
                         value.dump() + " here");
  }
  for (const auto& [key, value] : c.config.items())
    if (!mine.contains(key)) refuse(source, "names option '" + key + "', which this run does not have");
  if (c.steps_done > cfg.steps)
    refuse(source, std::to_string(c.steps_done) + " steps done, more than the run's " + std::to_string(cfg.steps));
  if (static_cast<int>(c.ranks.size()) != ranks)
    refuse(source, "holds " + std::to_string(c.ranks.size()) + " ranks, the run has " + std::to_string(ranks));
  if (plan_hash(plan, c.steps_done * cfg.layers) != c.plan_hash)
    refuse(source, "its plan (placements, migrations) differs from the one this run computes for the same options");
  const FaultPlan* faults = plan.faults.get();
  for (int r = 0; r < ranks; ++r) {
    // A rank whose GPU failed at step S stopped there (emu, mpi): from the boundary after S on, the file holds its
    // final result, with entries for every step.
    const bool departed = faults && faults->ranks_stop && faults->dead_from[r] < c.steps_done;
    if (c.ranks[r].departed != departed)
      refuse(source, "rank " + std::to_string(r) + (departed ? " failed before" : " was live at") +
                         " the checkpoint's boundary (step " + std::to_string(c.steps_done) + "), but the file " +
                         (departed ? "holds its live state" : "says it departed"));
    check_result(c.ranks[r].result, r, cfg, run.verify, departed ? cfg.steps : c.steps_done, ranks, plan.slots(),
                 source);
    if (static_cast<int>(c.ranks[r].layout_entries.size()) > cfg.layout_cache)
      refuse(source, "rank " + std::to_string(r) + " holds " + std::to_string(c.ranks[r].layout_entries.size()) +
                         " cached layouts, more than --layout-cache " + std::to_string(cfg.layout_cache));
  }
}

void save_engine(EpEngine& engine, RankCheckpoint& out) {
  EngineContext& ctx = engine.context();
  out.dispatch_codec_state.clear();
  out.combine_codec_state.clear();
  ctx.dispatch_codec->save_state(out.dispatch_codec_state);
  ctx.combine_codec->save_state(out.combine_codec_state);
  out.layout_entries.assign(ctx.layout_cache.entries().begin(), ctx.layout_cache.entries().end());
  out.layout_stats = ctx.layout_cache.stats;
  out.engine_stats = ctx.stats;
}

void restore_engine(EpEngine& engine, const RankCheckpoint& in, const std::string& source) {
  EngineContext& ctx = engine.context();
  const int rank = engine.context().rank();
  try {
    ctx.dispatch_codec->load_state(in.dispatch_codec_state.data(), in.dispatch_codec_state.size());
    ctx.combine_codec->load_state(in.combine_codec_state.data(), in.combine_codec_state.size());
  } catch (const CodecError& e) {
    refuse(source, "rank " + std::to_string(rank) + "'s codec state: " + e.what());
  }
  for (auto it = in.layout_entries.rbegin(); it != in.layout_entries.rend(); ++it) ctx.layout_cache.insert(*it);
  ctx.layout_cache.stats = in.layout_stats;
  ctx.stats = in.engine_stats;
}

bool resume_departed_ranks(Fabric& f, const Checkpoint& c, bool in_process, DepartedResults& departed) {
  const int me = f.rank();
  if (c.ranks[me].departed) {
    if (in_process) departed.put(c.ranks[me].result);
    return true;
  }
  for (int r = 0; r < static_cast<int>(c.ranks.size()); ++r) {
    if (!c.ranks[r].departed) continue;
    f.mark_failed(r);
    if (!in_process && me == 0) departed.put(c.ranks[r].result);
  }
  return false;
}

namespace {
// Tags of a rank's part of a checkpoint on its way to rank 0 (mpi): its size, then its bytes.
Tag checkpoint_tag(int steps_done, int part) { return make_tag(Phase::kUser, steps_done, 0, 0x200 + part); }
}  // namespace

CheckpointSink::CheckpointSink(const RunConfig& cfg, const RunSetup& run, const Plan& plan, Timeline& links)
    : path_(cfg.checkpoint),
      config_(checkpoint_config(cfg)),
      plan_(plan),
      links_(links),
      in_process_(run.in_process),
      ranks_(run.topo.size()),
      every_(cfg.checkpoint_every),
      stop_after_(cfg.stop_after_steps),
      layers_(cfg.layers),
      timeout_s_(cfg.timeout_s) {}

bool CheckpointSink::due(int steps_done) const {
  return !path_.empty() && (steps_done % every_ == 0 || stops(steps_done));
}

bool CheckpointSink::runs_until(int rank, int steps_done) const {
  const FaultPlan* fp = plan_.faults.get();
  return !(fp && fp->ranks_stop && fp->dead_from[rank] < steps_done);
}

void CheckpointSink::hand_in(Fabric& f, int steps_done, RankCheckpoint state, DepartedResults* departed) {
  const int me = f.rank();
  if (in_process_) {
    deposit(steps_done, me, std::move(state));
    return;
  }
  f.set_phase("checkpoint");
  const Deadline d = Deadline::after(f, timeout_s_);
  if (me != 0) {
    const std::string bytes = encode_rank_checkpoint(state);
    const uint64_t n = bytes.size();
    Request reqs[2] = {f.isend(0, checkpoint_tag(steps_done, 0), ConstBuf{&n, sizeof n}),
                       f.isend(0, checkpoint_tag(steps_done, 1), ConstBuf{bytes.data(), bytes.size()})};
    f.wait_all(reqs, d);
  } else {
    // Rank 0 never fails on mpi (check_faults refuses it): it is the one that writes.
    std::vector<int> peers;
    for (int r = 1; r < ranks_; ++r)
      if (runs_until(r, steps_done)) peers.push_back(r);
    std::vector<uint64_t> sizes(peers.size(), 0);
    std::vector<Request> reqs;
    for (size_t i = 0; i < peers.size(); ++i)
      reqs.push_back(f.irecv(peers[i], checkpoint_tag(steps_done, 0), MutBuf{&sizes[i], sizeof(uint64_t)}));
    f.wait_all(reqs, d);
    std::vector<std::vector<uint8_t>> bytes(peers.size());
    reqs.clear();
    for (size_t i = 0; i < peers.size(); ++i) {
      if (sizes[i] > (uint64_t{1} << 31))
        throw EplabError("checkpoint: rank 0, peer " + std::to_string(peers[i]) + ": a state of " +
                         std::to_string(sizes[i]) + " bytes announced at step boundary " +
                         std::to_string(steps_done));
      bytes[i].resize(sizes[i]);
      reqs.push_back(f.irecv(peers[i], checkpoint_tag(steps_done, 1), MutBuf{bytes[i].data(), bytes[i].size()}));
    }
    f.wait_all(reqs, d);
    deposit(steps_done, me, std::move(state));
    for (size_t i = 0; i < peers.size(); ++i) {
      const std::string source = "rank " + std::to_string(peers[i]) + "'s part at step boundary " +
                                 std::to_string(steps_done);
      RankCheckpoint part =
          decode_rank_checkpoint(std::span<const uint8_t>(bytes[i].data(), reqs[i].bytes()), peers[i], source);
      if (part.result.rank != peers[i])
        refuse(source, "holds rank " + std::to_string(part.result.rank) + "'s result");
      deposit(steps_done, peers[i], std::move(part));
    }
    // The ranks that failed before this boundary handed their results to rank 0 at their failure (or, resumed
    // past it, resume_departed_ranks put them there from the file).
    for (int r = 1; r < ranks_; ++r) {
      if (runs_until(r, steps_done)) continue;
      std::optional<RankResult> result;
      if (departed) {
        std::lock_guard<std::mutex> lock(departed->mu);
        if (auto it = departed->results.find(r); it != departed->results.end()) result = it->second;
      }
      if (!result)
        throw EplabError("checkpoint: rank 0 has no result of rank " + std::to_string(r) +
                         ", whose GPU failed before step boundary " + std::to_string(steps_done));
      depart(*result);
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (arrived_.count(steps_done))
      throw EplabError("checkpoint: the state after " + std::to_string(steps_done) + " steps is incomplete on rank 0");
  }
  // Every process goes on once the file is written; if rank 0 could not write it, its failure ends this wait.
  f.barrier();
}

void CheckpointSink::depart(const RankResult& r) {
  std::lock_guard<std::mutex> lock(mu_);
  departed_[r.rank] = r;
  write_complete();
}

void CheckpointSink::deposit(int steps_done, int rank, RankCheckpoint state) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<RankCheckpoint>& slots = pending_[steps_done];
  slots.resize(ranks_);
  slots[rank] = std::move(state);
  ++arrived_[steps_done];
  write_complete();
}

void CheckpointSink::write_complete() {
  // Boundaries complete in order: a rank live at a boundary handed in the one before first, and a rank departed
  // before a boundary departed before the next one too.
  while (!arrived_.empty()) {
    const int steps_done = arrived_.begin()->first;
    int live = 0;
    bool complete = true;
    for (int r = 0; r < ranks_; ++r) {
      if (runs_until(r, steps_done))
        ++live;
      else
        complete = complete && departed_.count(r);
    }
    if (!complete || arrived_.begin()->second < live) return;
    Checkpoint c;
    c.config = config_;
    c.steps_done = steps_done;
    c.plan_hash = plan_hash(plan_, steps_done * layers_);
    c.ranks = std::move(pending_[steps_done]);
    for (int r = 0; r < ranks_; ++r)
      if (!runs_until(r, steps_done)) {
        c.ranks[r] = RankCheckpoint{};
        c.ranks[r].result = departed_[r];
        c.ranks[r].departed = true;
      }
    c.links = links_.link_state();
    pending_.erase(steps_done);
    arrived_.erase(steps_done);
    write_checkpoint(path_, c);
    ++written_;
  }
}

}  // namespace eplab
