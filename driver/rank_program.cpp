#include "driver/rank_program.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "driver/checkpoint.hpp"
#include "driver/faults.hpp"
#include "driver/reference.hpp"
#include "driver/training.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "engine/huge_pages.hpp"
#include "engine/payload_ledger.hpp"
#include "engine/transport_fabric.hpp"
#include "policies/codecs/quant_kernels.hpp"

namespace eplab {
namespace {

// Roofline inputs for one rank's experts: a SwiGLU FFN (three hidden x ffn matmuls) per received selection;
// weights are read once per active slot, activations in and out once per selection.
ComputeCost expert_cost(const Handle& h, const MoeShape& shape, const std::string& dispatch_codec) {
  int active = 0;
  double sels = 0;
  for (int32_t n : h.slot_sels) {
    active += n > 0;
    sels += n;
  }
  const double weight_bytes = dispatch_codec.rfind("fp8", 0) == 0 ? 1.0 : 2.0;
  ComputeCost c;
  c.flops = 2.0 * 3.0 * shape.hidden * shape.expert_ffn * sels;
  c.hbm_bytes = active * 3.0 * shape.hidden * shape.expert_ffn * weight_bytes + sels * shape.hidden * 2.0 * 2.0;
  c.what = "expert";
  return c;
}

// Migration: one all-to-all-v round carrying each (old holder -> new holder) pair's expert weights. Simulated
// fabrics charge the bytes as phantom payload; real-byte fabrics get an 8-byte placeholder per pair and no time
// is reported (eplab does not hold expert weights to move). Returns the round's modeled time, else 0.
double migrate(Fabric& f, const RankInputs& in, int step, int layer, const std::vector<Transfer>& moves) {
  const int me = f.rank(), R = f.size();
  const bool phantom = in.run.phantom;
  std::vector<uint8_t> move_hdr(8 * R, 0), move_in(8 * R, 0);
  std::vector<double> bytes_to(R, 0.0), bytes_from(R, 0.0);
  for (const Transfer& t : moves) {
    if (t.src == me) bytes_to[t.dst] += in.run.expert_bytes;
    if (t.dst == me) bytes_from[t.src] += in.run.expert_bytes;
  }
  std::vector<PeerSend> sends;
  std::vector<PeerRecv> recvs;
  for (int p = 0; p < R; ++p) {
    if (bytes_to[p] > 0)
      sends.push_back({p, ConstBuf{move_hdr.data() + 8 * p, 8, phantom ? static_cast<size_t>(bytes_to[p]) - 8 : 0}});
    if (bytes_from[p] > 0) recvs.push_back({p, MutBuf{move_in.data() + 8 * p, 8}});
  }
  f.set_phase("migration");
  f.barrier();
  const double t0 = f.now();
  f.alltoallv(make_tag(Phase::kUser, step, layer, 1), sends, recvs, Deadline::after(f, in.cfg.timeout_s));
  f.barrier();
  return phantom ? f.now() - t0 : 0.0;
}

// A fault's waiting (a detection deadline, a stall): simulated time where time is modeled, a sleep elsewhere.
// Returns the time it took on this rank's clock.
double wait_out(Fabric& f, const RunSetup& run, double seconds, const char* what) {
  const double t0 = f.now();
  if (run.caps.modeled_time) {
    ComputeCost c;
    c.fixed_s = seconds;
    c.what = what;
    f.compute(c);
  } else {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  }
  return f.now() - t0;
}

// Enters every message of the rank's run in `ledger` for as long as it lives, on a fabric built on the transport
// seam (every backend's), then gives the fabric back the ledger it had. A null ledger leaves messages out: the
// gather after the run, and a failed rank's hand-over of its result (which carries its ledger).
class LedgerScope {
 public:
  LedgerScope(Fabric& f, PayloadLedger* ledger) : fabric_(dynamic_cast<TransportFabric*>(&f)) {
    if (!fabric_) return;
    before_ = fabric_->payload_ledger();
    fabric_->set_payload_ledger(ledger);
  }
  ~LedgerScope() {
    if (fabric_) fabric_->set_payload_ledger(before_);
  }
  bool active() const { return fabric_ != nullptr; }
  LedgerScope(const LedgerScope&) = delete;
  LedgerScope& operator=(const LedgerScope&) = delete;

 private:
  TransportFabric* fabric_;
  PayloadLedger* before_ = nullptr;
};

// Tags of a failed rank's hand-over to rank 0 (mpi): its result's size, then its bytes.
Tag handover_tag(int step, int part) { return make_tag(Phase::kUser, step, 0, 0x100 + part); }

// The process of a rank whose GPU failed leaves: a real exit, no MPI_Finalize, no destructors, nothing more sent
// (mpirun --enable-recovery lets the others run on; check_faults).
[[noreturn]] void exit_failed_rank() {
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(kFailedRankExitStatus);
}

// A rank whose GPU failed at `step` stops here, before any exchange of the step. Its records get empty entries
// for the calls and steps it does not run (the report reads every rank's records per call), and its tokens from
// `step` on leave with it. On emu the result is put for the launcher. On mpi it goes to rank 0, and once those
// sends have completed (their bytes have left the process, as every send of its earlier steps had before it got
// here) the process exits.
void stop_failed_rank(Fabric& f, const RankInputs& in, RankResult& res, int step) {
  const RunConfig& cfg = in.cfg;
  const int me = f.rank();
  for (int s = step; s < cfg.steps; ++s)
    for (int l = 0; l < cfg.layers; ++l) {
      res.faults.departed += in.routing.batch(s, l, me).num_tokens;
      res.record.recv_rows.push_back(0);
      res.record.record_call(EngineStats{}, EngineStats{});
    }
  for (int s = step; s < cfg.steps; ++s) {
    res.steps.step_s.push_back(0);
    res.steps.compute_s.push_back(0);
    res.steps.allreduce_s.push_back(0);
  }
  if (in.run.in_process) {
    in.departed->put(res);
    return;
  }
  f.set_phase("fault-handover");
  const LedgerScope outside(f, nullptr);
  const std::vector<uint8_t> bytes = encode_rank_result(res);
  const uint64_t n = bytes.size();
  Request reqs[2] = {f.isend(0, handover_tag(step, 0), ConstBuf{&n, sizeof n}),
                     f.isend(0, handover_tag(step, 1), ConstBuf{bytes.data(), bytes.size()})};
  f.wait_all(reqs, Deadline::after(f, cfg.timeout_s));
  exit_failed_rank();
}

// Rank 0's side of the hand-over (mpi), at the detection point: the results of the ranks failing at `step`.
void receive_handovers(Fabric& f, const RankInputs& in, int step, const std::vector<int>& failing) {
  f.set_phase("fault-handover");
  const LedgerScope outside(f, nullptr);
  const Deadline d = Deadline::after(f, in.cfg.timeout_s);
  std::vector<uint64_t> sizes(failing.size(), 0);
  std::vector<Request> reqs;
  for (size_t i = 0; i < failing.size(); ++i)
    reqs.push_back(f.irecv(failing[i], handover_tag(step, 0), MutBuf{&sizes[i], sizeof(uint64_t)}));
  f.wait_all(reqs, d);
  std::vector<std::vector<uint8_t>> bytes(failing.size());
  reqs.clear();
  for (size_t i = 0; i < failing.size(); ++i) {
    if (sizes[i] > (uint64_t{1} << 32))
      throw EplabError("fault hand-over: rank 0, peer " + std::to_string(failing[i]) + ": a result of " +
                       std::to_string(sizes[i]) + " bytes announced");
    bytes[i].resize(sizes[i]);
    reqs.push_back(f.irecv(failing[i], handover_tag(step, 1), MutBuf{bytes[i].data(), bytes[i].size()}));
  }
  f.wait_all(reqs, d);
  for (size_t i = 0; i < failing.size(); ++i) {
    RankResult r = decode_rank_result(std::span<const uint8_t>(bytes[i].data(), reqs[i].bytes()), failing[i]);
    if (r.rank != failing[i])
      throw EplabError("fault hand-over: rank 0, peer " + std::to_string(failing[i]) + ": the result is rank " +
                       std::to_string(r.rank) + "'s");
    in.departed->put(std::move(r));
  }
}

// A straggler's expert compute: the roofline's inputs scaled (both terms scale, so its time does) where time is
// modeled; where it is measured, the rank sleeps (x - 1) times what the compute took.
void slow_down(ComputeCost& c, double x) {
  c.flops *= x;
  c.hbm_bytes *= x;
  c.fixed_s *= x;
}

// The batch in the dispatch codec's row format (EpEngine::takes_wire_batch) at `rows`, made a token at a time, so
// that the batch's fp32 activations (117 MB a rank at 4096 tokens x 7168) are never held: bf16 rows take half
// that. Each row is encoded on its own, as a source's messages would encode it.
void make_wire_batch(const RunConfig& cfg, int step, int layer, int rank, int tokens, int hidden, Codec& codec,
                     uint8_t* rows, std::vector<float>& scratch) {
  const size_t rb = codec.row_bytes(hidden);
  std::vector<uint8_t> enc;
  scratch.resize(static_cast<size_t>(hidden));
  for (int t = 0; t < tokens; ++t) {
    make_activations(cfg.seed, step, layer, rank, 1, hidden, scratch.data(), t);
    enc.clear();
    codec.encode(scratch.data(), 1, hidden, enc);
    std::memcpy(rows + static_cast<size_t>(t) * rb, enc.data(), rb);
  }
}

// Two-batch overlap: the layer's two micro-batches (the batch's first ceil(T/2) tokens, then the rest), each
// through dense compute -> dispatch -> expert compute -> combine, one phase at a time between barriers, so every
// phase's simulated duration is its own; driver/overlap.hpp composes the overlapped schedule from them. Returns
// the layer's serial simulated time.
double two_batch_layer(Fabric& f, const RankInputs& in, EpEngine& engine, StepDriver& steps, RankResult& res, int step,
                       int layer, const RoutingBatch& batch, const std::vector<int32_t>& slots,
                       const std::vector<float>& x, const std::vector<uint8_t>& x_rows, std::vector<float>& out) {
  const RunSetup& run = in.run;
  const MoeShape& shape = run.shape;
  const int call = step * in.cfg.layers + layer, K = batch.topk;
  const LayerPlan& lp = in.plan.calls[call];
  const Placement& placement = *lp.placement;
  const size_t H = static_cast<size_t>(shape.hidden);
  std::vector<float> partials;
  const EngineStats before = engine.stats();
  int64_t rows = 0;
  resize_huge(out, run.phantom ? 0 : static_cast<size_t>(batch.num_tokens) * H);
  const double t_begin = f.now();
  for (int mb = 0; mb < 2; ++mb) {
    const int first = mb == 0 ? 0 : (batch.num_tokens + 1) / 2;
    const int n = mb == 0 ? (batch.num_tokens + 1) / 2 : batch.num_tokens / 2;
    steps.dense_forward(mb, layer, n);
    const size_t sel0 = static_cast<size_t>(first) * K;
    // No layout key: the planner's keys name whole batches (layout caching is refused with --overlap tbo).
    DispatchArgs args{step,
                      layer | (mb ? kMicroBatchLayerBit : 0),
                      n,
                      K,
                      slots.data() + sel0,
                      batch.topk_weights.data() + sel0,
                      run.phantom || x.empty() ? nullptr : x.data() + first * H,
                      &placement};
    if (!x_rows.empty()) args.x_rows = x_rows.data() + first * engine.context().dispatch_row_bytes;
    f.barrier();
    ForwardTimes ft{f.now()};
    Handle h = engine.dispatch(args);
    ft.expert0 = f.now();
    rows += h.rows;
    f.set_phase("expert");
    ComputeCost ecost = expert_cost(h, shape, run.dispatch_codec);
    const double slow = in.plan.faults ? in.plan.faults->slowdown(f.rank()) : 1.0;
    if (slow > 1 && run.caps.modeled_time) slow_down(ecost, slow);
    f.compute(ecost);
    ft.expert1 = f.now();
    const auto e0 = std::chrono::steady_clock::now();
    const float* expert_out =
        run.phantom ? nullptr
                    : expert_partials(engine.context(), h, placement, run.transform, engine.reduction(), partials);
    if (slow > 1 && !run.caps.modeled_time)
      std::this_thread::sleep_for((slow - 1) * (std::chrono::steady_clock::now() - e0));
    if (run.verify) {
      // Tokens are numbered within their micro-batch on both sides: the delivery's call is 2 * call + mb.
      for (int i = 0; i < h.recv.size(); ++i)
        for (int s = h.recv.sel_begin[i]; s < h.recv.sel_begin[i + 1]; ++s)
          res.deliveries.got_from(2 * call + mb, h.recv.src_rank[i]).add(h.recv.token[i], h.recv.sel_slot[s]);
      for (int t = 0; t < n; ++t)
        for (int k = 0; k < K; ++k) {
          const int32_t s = slots[sel0 + static_cast<size_t>(t) * K + k];
          if (s >= 0) res.deliveries.sent_to(2 * call + mb, placement.rank_of_slot(s)).add(t, s);
        }
    }
    f.barrier();
    ft.combine0 = f.now();
    engine.combine(h, expert_out, run.phantom ? nullptr : out.data() + first * H);
    ft.combine1 = f.now();
    steps.forward_micro_batch(args, ecost, mb, ft);
  }
  res.record.recv_rows.push_back(rows);
  res.record.record_call(before, engine.stats());
  return f.now() - t_begin;
}

// Before a wall-clock run's first timed call: the call once, untimed, on a scratch engine (its own codecs, so a
// stateful codec's streams are untouched; its own layout cache and statistics, dropped), with the payload ledger
// off. It sizes and faults in every buffer the call needs (send and receive buffers, the received rows, the
// expert outputs, `partials` and `out`), and the real engine takes the scratch engine's buffers, so the first
// timed call finds them in place as later calls do: without it the first call spends most of its time in the
// kernel zeroing fresh pages. MPI_Alltoallv's benchmark program makes the same untimed warm-up call. Its messages
// carry the same tags as the call's own; the barrier before the timed call keeps them apart.
// `out` is sized for the call's output (out_floats: `out_bf16` halves it) before the batch is put in its tail, so
// it is written here in the call's own format without growing, which would move the batch.
void warm_up(Fabric& f, const RankInputs& in, EpEngine& engine, DispatchArgs args, const Placement& placement,
             std::vector<float>& partials, std::vector<float>& out, size_t out_floats, bool out_bf16) {
  const RunSetup& run = in.run;
  EngineOptions opts = run.engine;
  opts.layout_cache = 0;
  args.layout_key = 0;
  args.layout_cached = false;
  EpEngine scratch(f, run.shape, *in.plan.calls[0].placement, opts);
  EngineContext& c = scratch.context();
  c.failed_gpus = engine.context().failed_gpus;
  const LedgerScope outside(f, nullptr);
  f.barrier();
  Handle h = scratch.dispatch(args);
  f.set_phase("expert");
  const float* expert_out = expert_partials(c, h, placement, run.transform, scratch.reduction(), partials);
  resize_huge(out, out_floats);
  if (out_bf16)
    scratch.combine_bf16(h, expert_out, reinterpret_cast<uint16_t*>(out.data()));
  else
    scratch.combine(h, expert_out, out.data());
  h = Handle{};
  EngineContext& keep = engine.context();
  keep.inboxes.swap(c.inboxes);
  keep.outboxes.swap(c.outboxes);
  keep.spare_rows.swap(c.spare_rows);
}

// Phantom runs: every rank of the process enters its messages in one PayloadTally while it lives.
class TallyScope {
 public:
  TallyScope(Fabric& f, PayloadTally* tally) : fabric_(dynamic_cast<TransportFabric*>(&f)) {
    if (!fabric_)
      throw EplabError("payload tally: backend's fabric is not built on the transport seam, so it cannot count");
    fabric_->set_payload_tally(tally);
  }
  ~TallyScope() { fabric_->set_payload_tally(nullptr); }
  TallyScope(const TallyScope&) = delete;
  TallyScope& operator=(const TallyScope&) = delete;

 private:
  TransportFabric* fabric_;
};

// What rank `me` has entered in the process's tally so far goes into its result (and so into checkpoints).
void note_tally(PayloadLog& log, const PayloadTally* tally, int me) {
  if (!tally) return;
  log.tally_messages = tally->messages_sent(me);
  log.tally_bytes = tally->bytes_sent(me);
}

// `ledger`: the rank's payload ledger while verifying, else null; checkpoints save it and resumes restore it.
RankResult run_rank_body(Fabric& f, const RankInputs& in, PayloadLedger* ledger, bool* stopped_here);

}  // namespace

RankResult run_rank(Fabric& f, const RankInputs& in, bool* stopped_here) {
  PayloadLedger ledger(/*checksum=*/true);  // verifying moves real bytes only (RunSetup::verify)
  std::optional<LedgerScope> scope;
  if (in.run.verify) scope.emplace(f, &ledger);
  std::optional<TallyScope> tally;
  if (in.tally) {
    tally.emplace(f, in.tally);
    if (in.resume) {
      const PayloadLog& from = in.resume->ranks[f.rank()].result.payloads;
      in.tally->restore_sent(f.rank(), from.tally_messages, from.tally_bytes);
    }
  }
  bool stopped = false;
  RankResult res = run_rank_body(f, in, scope && scope->active() ? &ledger : nullptr, &stopped);
  if (stopped_here) *stopped_here = stopped;
  // A failed rank's ledger went with its result at its stop.
  if (scope && scope->active() && !stopped) res.payloads = ledger.log();
  note_tally(res.payloads, in.tally, f.rank());
  // Every rank in one process: the failed rank's final result stands for it in the checkpoints after its failure.
  if (stopped && in.checkpoint && in.run.in_process) in.checkpoint->depart(res);
  return res;
}

namespace {

RankResult run_rank_body(Fabric& f, const RankInputs& in, PayloadLedger* ledger, bool* stopped_here) {
  const RunConfig& cfg = in.cfg;
  const RunSetup& run = in.run;
  const MoeShape& shape = run.shape;
  const bool phantom = run.phantom, verify = run.verify;
  const int me = f.rank(), S = in.plan.slots(), calls = cfg.steps * cfg.layers;
  const std::string routing_name = in.routing.name();
  // A resumed run starts from the figures its checkpoint accumulated (check_resume vouched for their sizes).
  RankResult res = in.resume ? in.resume->ranks[me].result : RankResult{};
  const int first_step = in.resume ? in.resume->steps_done : 0;
  res.rank = me;
  if (in.resume && ledger) ledger->restore(res.payloads);
  RankRecord& rec = res.record;
  if (!in.resume) {
    rec.slot_load.assign(S, 0);
    res.layer_time_s.assign(calls, 0.0);
    res.migration_time_s.assign(calls, 0.0);
    res.call_slot_load.assign(static_cast<size_t>(calls) * S, 0);
  }
  EpEngine engine(f, shape, *in.plan.calls[0].placement, run.engine);
  f.record_links(&in.links);
  StepDriver steps({f, engine, shape, cfg, in.links, in.links.records_rank(me) ? &res.spans : nullptr, phantom},
                   res.steps);
  // Delivery digests per call, or per (call, micro-batch) as 2 * call + mb with two-batch overlap.
  if (verify && !in.resume) res.deliveries.resize(steps.two_batch() ? 2 * calls : calls, f.size());
  if (in.resume) {
    // Resumed past a GPU failure (emu, mpi): the failed rank takes no part again, the others leave it out.
    if (in.departed && resume_departed_ranks(f, *in.resume, run.in_process, *in.departed)) {
      if (!run.in_process) exit_failed_rank();  // its process exits, as at its failure
      if (stopped_here) *stopped_here = true;
      return in.resume->ranks[me].result;
    }
    restore_engine(engine, in.resume->ranks[me], "'" + cfg.resume + "'");
    f.advance_clock(in.resume->ranks[me].clock_s);
  }
  bool stopped = false;
  // Wall-clock runs with real bytes warm their buffers up before the first timed call (warm_up).
  bool warmed = phantom || run.caps.modeled_time;
  const std::unique_ptr<ReplicaSelector> selector = run.make_selector();
  const FaultPlan* faults = in.plan.faults.get();
  const double slow = faults ? faults->slowdown(me) : 1.0;
  std::vector<int32_t> slots;
  std::vector<float> x, partials, out, ref, x_slice, got;
  std::vector<uint8_t> ref_bf16;
  // Wire rows of the batch where dispatch takes them (x stays empty); the verification reference then makes
  // each slice's fp32 activations again from the seed, as the batch was made. The rows live in the tail of the
  // output's buffer where batch_in_output says so.
  const bool wire_batch = !phantom && engine.takes_wire_batch();
  // A bf16 output (RunSetup::out_bf16): [tokens x hidden] of 2 bytes, in out's storage, written by
  // EpEngine::combine_bf16.
  const bool out_bf16 = run.out_bf16;
  const size_t out_elem_bytes = out_bf16 ? 2 : sizeof(float);
  const bool batch_in_out = batch_in_output(cfg, wire_batch, static_cast<double>(engine.context().dispatch_row_bytes),
                                            static_cast<double>(out_elem_bytes * shape.hidden));
  // Floats of out's storage for an output of `tokens` rows.
  const auto out_floats = [&](int tokens) {
    return (static_cast<size_t>(tokens) * shape.hidden * out_elem_bytes + sizeof(float) - 1) / sizeof(float);
  };
  std::vector<uint8_t> x_rows;
  uint8_t* batch_rows = nullptr;
  // A link degraded at a time (@t:T, sim): the fabric changes it then, in the middle of whatever runs.
  if (faults)
    for (const auto& [at_s, x] : faults->timed_nic_fractions(me))
      if (!f.schedule_nic_bandwidth_fraction(me, x, at_s))
        throw EplabError("rank " + std::to_string(me) + ": the fabric has no links to degrade (a link fault)");
  for (int step = first_step; step < cfg.steps && !stopped; ++step)
    for (int layer = 0; layer < cfg.layers; ++layer) {
      const int call = step * cfg.layers + layer;
      const LayerPlan& lp = in.plan.calls[call];
      // Where failed ranks stop, the survivors act on a failure before the step's first barrier, which is then
      // of the live ranks; on sim the step begins first, as it always has.
      const bool stopping = faults && faults->ranks_stop;
      if (layer == 0 && !stopping) steps.begin_step(step);
      if (faults && layer == 0) {
        // A GPU fails at the start of the step. Where ranks stop, it stops here, before any exchange of the
        // step. Every survivor waits out the detection deadline before the failover (the re-placed experts'
        // weights move in this call's migration below), then leaves the failed ranks out of the fabric from
        // now on. A stall delays only its rank; the others wait for it at the next barrier.
        if (stopping && faults->dead(me, step)) {
          res.layout_cache = engine.context().layout_cache.stats;
          if (ledger) res.payloads = ledger->log();
          stop_failed_rank(f, in, res, step);
          if (stopped_here) *stopped_here = true;
          return res;
        }
        if (faults->detects_at(step)) {
          f.set_phase("fault-detect");
          const double waited = wait_out(f, run, faults->detect_timeout_s, "fault-detect");
          if (!faults->dead(me, step)) res.faults.detect_s += waited;
        }
        if (stopping) {
          const std::vector<int> failing = faults->failing_at(step);
          if (!failing.empty() && !run.in_process && me == 0) receive_handovers(f, in, step, failing);
          for (int r : failing) f.mark_failed(r);
          steps.begin_step(step);  // the first barrier of the live ranks
        }
        // Every backend (sim too, where the failed rank runs on): from the failure on, hierarchical relays a
        // failed GPU's rail through another GPU of its node. Every failure up to this step, so that a run resumed
        // past one knows it as well.
        for (int r = 0; r < f.size(); ++r)
          if (faults->dead(r, step)) engine.context().mark_gpu_failed(r);
        // A degraded link: this rank changes its own NIC links (platform state every rank sees) before the
        // step's first barrier, so no transfer of the step runs at the old bandwidth.
        if (const double x = faults->nic_fraction(me, step); x > 0 && !f.set_nic_bandwidth_fraction(me, x))
          throw EplabError("rank " + std::to_string(me) + ": the fabric has no links to degrade (a link fault)");
        if (const double stall = faults->stall_s(me, step); stall > 0) {
          f.set_phase("fault-stall");
          wait_out(f, run, stall, "fault-stall");
        }
      }
      const Placement& placement = *lp.placement;
      if (!lp.moves.empty()) {
        res.migration_time_s[call] = migrate(f, in, step, layer, lp.moves);
        // Two-batch overlap: both micro-batches wait for the weights (the round ends at the barrier).
        const double t1 = f.now();
        steps.op(OpKind::kMigration, -1, layer, t1 - res.migration_time_s[call], t1);
      }
      RoutingBatch batch = in.routing.batch(step, layer, me);
      validate_batch(batch, shape.num_experts, routing_name.c_str());
      if (batch.topk != shape.topk)
        throw EplabError(routing_name + ": batch has top-" + std::to_string(batch.topk) + ", model '" + shape.name +
                         "' uses top-" + std::to_string(shape.topk));
      if (faults && faults->dead(me, step)) {
        // (sim) A failed GPU's own batch leaves the run with it: it sends nothing (counted apart from lost selections).
        res.faults.departed += batch.num_tokens;
        batch.num_tokens = 0;
        batch.topk_idx.clear();
        batch.topk_weights.clear();
        batch.gate_scores.clear();
      }
      selector->select(batch, placement, run.topo, slots);
      if (faults) failover_select(*faults, step, layer, me, batch, placement, slots, res.faults);
      // Past selection only the slots and weights are read, unless verification replays the batch; at scale
      // every simulated rank holds its batch through dispatch at once, so the expert ids go now.
      if (!verify) std::vector<int32_t>().swap(batch.topk_idx);
      int32_t* call_load = res.call_slot_load.data() + static_cast<size_t>(call) * S;
      for (int32_t s : slots)
        if (s >= 0) ++call_load[s];
      for (int s = 0; s < S; ++s) rec.slot_load[s] += call_load[s];
      if (wire_batch) {
        const size_t bytes = static_cast<size_t>(batch.num_tokens) * engine.context().dispatch_row_bytes;
        uint8_t* at = nullptr;
        if (batch_in_out) {  // row bytes <= the output's: the rows fit in the output's buffer
          resize_huge(out, out_floats(batch.num_tokens));
          at = reinterpret_cast<uint8_t*>(out.data()) + out.size() * sizeof(float) - bytes;
        } else {
          resize_huge(x_rows, bytes);
          at = x_rows.data();
        }
        make_wire_batch(cfg, step, layer, me, batch.num_tokens, shape.hidden, *engine.context().dispatch_codec, at,
                        x_slice);
        batch_rows = at;
      } else if (!phantom) {
        resize_huge(x, static_cast<size_t>(batch.num_tokens) * shape.hidden);
        make_activations(cfg.seed, step, layer, me, batch.num_tokens, shape.hidden, x.data());
      }
      if (steps.two_batch()) {
        res.layer_time_s[call] = two_batch_layer(f, in, engine, steps, res, step, layer, batch, slots, x, x_rows, out);
      } else {
        DispatchArgs args{step,
                          layer,
                          batch.num_tokens,
                          batch.topk,
                          slots.data(),
                          batch.topk_weights.data(),
                          phantom || wire_batch ? nullptr : x.data(),
                          &placement};
        if (wire_batch) args.x_rows = batch_rows;
        args.layout_key = lp.layout_key;
        args.layout_cached = lp.layout_cached;
        if (!warmed) {
          warmed = true;
          warm_up(f, in, engine, args, placement, partials, out, out_floats(batch.num_tokens), out_bf16);
          // The warm-up's combine wrote the output, whose tail held the batch's rows: they are made again.
          if (batch_in_out)
            make_wire_batch(cfg, step, layer, me, batch.num_tokens, shape.hidden, *engine.context().dispatch_codec,
                            batch_rows, x_slice);
        }
        const EngineStats before = engine.stats();
        f.barrier();
        const double call_t0 = f.now();
        Handle h = engine.dispatch(args);
        ForwardTimes ft{call_t0, f.now()};
        rec.recv_rows.push_back(h.rows);
        // Expert compute: the model's FFN cost on simulated fabrics, the verification transform on real bytes.
        f.set_phase("expert");
        ComputeCost ecost = expert_cost(h, shape, run.dispatch_codec);
        if (slow > 1 && run.caps.modeled_time) slow_down(ecost, slow);
        f.compute(ecost);
        ft.expert1 = f.now();
        const auto e0 = std::chrono::steady_clock::now();
        const float* expert_out =
            phantom ? nullptr
                    : expert_partials(engine.context(), h, placement, run.transform, engine.reduction(), partials);
        if (slow > 1 && !run.caps.modeled_time)
          std::this_thread::sleep_for((slow - 1) * (std::chrono::steady_clock::now() - e0));
        if (verify) {
          for (int i = 0; i < h.recv.size(); ++i)
            for (int s = h.recv.sel_begin[i]; s < h.recv.sel_begin[i + 1]; ++s)
              res.deliveries.got_from(call, h.recv.src_rank[i]).add(h.recv.token[i], h.recv.sel_slot[s]);
          for (int t = 0; t < batch.num_tokens; ++t)
            for (int k = 0; k < batch.topk; ++k) {
              const int32_t s = slots[static_cast<size_t>(t) * batch.topk + k];
              if (s >= 0) res.deliveries.sent_to(call, placement.rank_of_slot(s)).add(t, s);
            }
        }
        resize_huge(out, phantom ? 0 : out_floats(batch.num_tokens));
        f.barrier();
        ft.combine0 = f.now();
        if (out_bf16)
          engine.combine_bf16(h, expert_out, reinterpret_cast<uint16_t*>(out.data()));
        else
          engine.combine(h, expert_out, phantom ? nullptr : out.data());
        rec.record_call(before, engine.stats());
        res.layer_time_s[call] = f.now() - call_t0;
        ft.combine1 = f.now();
        ft.notify_s = rec.notify.back().time_s;
        steps.forward_layer(args, ecost, ft);
      }
      if (verify) {  // a slice of tokens at a time: the reference never holds a whole batch's output
        constexpr int kSlice = 64;
        const size_t H = static_cast<size_t>(shape.hidden);
        ref.resize(kSlice * H);
        if (wire_batch) x_slice.resize(kSlice * H);
        for (int t0 = 0; t0 < batch.num_tokens; t0 += kSlice) {
          const int n = std::min(kSlice, batch.num_tokens - t0);
          if (wire_batch) make_activations(cfg.seed, step, layer, me, n, shape.hidden, x_slice.data(), t0);
          reference_combine(batch, slots, wire_batch ? x_slice.data() : x.data(), placement, run.topo, run.transform,
                            engine.reduction(), shape.hidden, ref.data(), t0, n, wire_batch ? t0 : 0);
          if (out_bf16) {  // both sides as bf16: the reference's sum rounded as combine_bf16 rounds
            ref_bf16.resize(n * H * 2);
            got.resize(n * H);
            codecs::bf16_encode_kernel(ref.data(), n * H, ref_bf16.data());
            codecs::bf16_decode_kernel(ref_bf16.data(), n * H, ref.data());
            codecs::bf16_decode_kernel(reinterpret_cast<const uint8_t*>(out.data()) + t0 * H * 2, n * H, got.data());
            rec.add_comparison(got.data(), ref.data(), n * H);
            continue;
          }
          rec.add_comparison(out.data() + t0 * H, ref.data(), n * H);
        }
      }
      if (layer == cfg.layers - 1) steps.end_step(step);
      if (me == 0 && in.progress) in.progress(call + 1, calls);
      if (layer == cfg.layers - 1 && in.checkpoint && in.checkpoint->due(step + 1)) {
        RankCheckpoint state;
        res.layout_cache = engine.context().layout_cache.stats;
        state.result = res;
        if (ledger) state.result.payloads = ledger->log();
        note_tally(state.result.payloads, in.tally, me);
        save_engine(engine, state);
        state.clock_s = f.exact_clock();
        {  // mpi: the state's messages to rank 0 are not the run's traffic, and stay out of its ledger
          const LedgerScope outside(f, nullptr);
          in.checkpoint->hand_in(f, step + 1, std::move(state), in.departed);
        }
        stopped = in.checkpoint->stops(step + 1);
      }
    }
  res.layout_cache = engine.context().layout_cache.stats;
  return res;
}

}  // namespace

}  // namespace eplab
