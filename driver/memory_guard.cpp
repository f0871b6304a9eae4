#include "driver/memory_guard.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

// Per row: the bytes of its encoded form, and of the form the engine keeps it in (wire rows when the codec
// encodes rows on their own, fp32 otherwise).
struct RowCost {
  double wire = 0, kept = 0;
};

RowCost row_cost(const std::string& spec, int hidden) {
  const std::unique_ptr<Codec> c = create_codec(spec);
  const double wire = static_cast<double>(c->max_encoded_size(1, hidden));
  const size_t rb = c->row_bytes(hidden);
  return {wire, rb > 0 ? static_cast<double>(rb) : 4.0 * hidden};
}

double read_number_file(const char* path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return 0;
  return std::strtod(s.c_str(), nullptr);
}

std::string gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", bytes / 1e9);
  return buf;
}

}  // namespace

MemoryEstimate estimate_run_memory(const RunConfig& cfg, const RunSetup& run) {
  MemoryEstimate e;
  if (run.phantom) return e;
  const int R = run.topo.size();
  e.ranks_here = R;
  if (!run.in_process) {  // under mpirun: the ranks that share this machine
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    e.ranks_here = local ? std::clamp(std::atoi(local), 1, R) : R;
  }
  const double T = cfg.tokens, H = run.shape.hidden, k = run.shape.topk;
  // Rows one rank receives in a call: every source sends a token once per destination rank it selects, as
  // many as a uniform choice of top-k among the experts spread evenly over the ranks reaches on average (skewed
  // and group-limited routings reach fewer); low-latency sends once per selection, allgather everything.
  const std::string& algo = run.engine.algorithm;
  const double E = run.shape.num_experts, per_rank = E / R;
  double miss = 1;  // P(a rank holds none of a token's k experts) = C(E - E/R, k) / C(E, k)
  for (int i = 0; i < run.shape.topk; ++i) miss *= std::max(0.0, (E - per_rank - i) / (E - i));
  e.rows_per_rank = algo == "allgather" ? T * R : algo == "low-latency" ? T * k : T * R * (1 - miss);
  const RowCost d = row_cost(run.dispatch_codec, run.shape.hidden);
  const RowCost c = row_cost(run.combine_codec, run.shape.hidden);
  const bool wire_rows = d.kept == d.wire && c.kept == c.wire;  // both codecs encode rows on their own
  // Each rank's batch and its combined output (fp32, or bf16 where RunSetup::out_bf16, the default for inference).
  // Flat and hierarchical take the batch as the dispatch codec's rows when it encodes rows on their own
  // (EpEngine::takes_wire_batch), else it is fp32 activations; the rows may live in the output's buffer
  // (batch_in_output).
  const double out_elem = run.out_bf16 ? 2.0 : 4.0;
  const bool wire_batch = d.kept == d.wire && (algo == "flat" || algo == "hierarchical");
  const bool batch_in_out = batch_in_output(cfg, wire_batch, d.wire, out_elem * H);
  e.batch_bytes = (batch_in_out ? 0.0 : T * (wire_batch ? d.wire : H * 4.0)) + T * H * out_elem;
  // The handle's rows per received row: the last stage receives rows straight into the handle's rows buffer,
  // which expert compute overwrites with its outputs where they are no smaller (EngineContext::map_rows; a
  // buffer with room for the larger), else writes them beside it.
  const double handle_row = c.kept >= d.kept ? c.kept : d.kept + c.kept;
  if (wire_rows && !run.caps.modeled_time && algo == "flat") {
    // The payload moves in rounds of kFlatRoundPeers peers (a token sent once per destination rank it selects:
    // T (1 - miss) rows to a peer on average). The send buffers hold a round's rows unless dispatch sends them
    // from the batch where they lie (Caps::gather_send: metadata only), and take combine's answers back, in
    // rounds as large, unless combine reads them where their senders hold them (Caps::consume_in_place). On
    // emu, which does both, nothing but the handle holds rows.
    const double round_rows = std::min(R, kFlatRoundPeers) * T * (1 - miss);
    const double sent = run.caps.gather_send ? 0.0 : d.wire, answered = run.caps.consume_in_place ? 0.0 : c.wire;
    e.rows_bytes = e.rows_per_rank * handle_row + round_rows * std::max(sent, answered);
  } else if (wire_rows && !run.caps.modeled_time && algo == "hierarchical") {
    // Across the rail a token travels once per node it selects: the source's send buffers hold those rows (one
    // buffer per node) unless they go from the batch where they lie (Caps::gather_send), and the forwarder's
    // receive buffers hold them. The sums going back are built in those receive buffers where the sources read
    // them in place (Caps::consume_in_place), else in send buffers of their own. The payload moves in rail
    // rounds (EngineOptions::rail_rounds), so all of these hold a round's rows.
    const double N = run.topo.nodes(), G = run.topo.gpus_per_node(), per_node = E / N;
    const double rounds = std::max(1, run.engine.rail_rounds);
    double node_miss = 1;  // P(a node holds none of a token's k experts)
    for (int i = 0; i < run.shape.topk; ++i) node_miss *= std::max(0.0, (E - per_node - i) / (E - i));
    const double rail_rows = std::ceil(T / rounds) * (1 - node_miss);  // to one node in a round
    const bool gather = run.caps.gather_send;
    const double rail_send = gather ? 0.0 : d.wire;
    const double rail_recv = run.caps.consume_in_place ? std::max(d.wire, c.wire) : d.wire + c.wire;
    e.rows_bytes = N * rail_rows * (rail_send + rail_recv);
    // The forward messages go out in sub-rounds of kFlatRoundPeers local ranks, built in send buffers that the
    // rail's messages (to N nodes) used before: a sub-round's buffers grow only where a forward message (the
    // rows one GPU receives in a round, rows_per_rank / G / rounds) is the larger; gather sends take the rows
    // from the rail's receive buffers instead. Combine's answers take a buffer only where they are copied
    // (EngineContext::reply_box: the forward buffers when they hold rows and are no smaller, else their own),
    // not where they are read in place (Caps::consume_in_place).
    const double fwd_rows = e.rows_per_rank / G / rounds;
    for (int i = 0; i < std::min(static_cast<int>(G), kFlatRoundPeers) && !gather; ++i)
      e.rows_bytes += (i < N ? std::max(0.0, fwd_rows - rail_rows) : fwd_rows) * d.wire;
    const double replies = run.caps.consume_in_place || (!gather && c.wire <= d.wire) ? 0.0 : c.wire;
    e.rows_bytes += e.rows_per_rank * handle_row + e.rows_per_rank / rounds * replies;
  } else {
    // Dispatch holds a row in the sender's message, the receiver's buffer and the handle; combine holds the
    // received row, the expert output (fp32 partials, or wire rows written in place when both formats match)
    // and the message back in both buffers.
    const double dispatch_peak = 2.0 * d.wire + d.kept;
    const double expert_out = c.kept == d.kept && c.kept == c.wire ? 0.0 : c.kept;
    const double combine_peak = d.kept + expert_out + 2.0 * c.wire;
    // The receive buffers are kept across calls and rounds (EngineContext::inboxes), one more row's worth.
    e.rows_bytes = e.rows_per_rank * (std::max(dispatch_peak, combine_peak) + std::max(d.wire, c.wire));
  }
  // Ranks that are processes (mpi) combine by consuming where their launch agrees on single copy
  // (Caps::consume_in_place there, which this estimate cannot see beforehand): with wire rows they read each
  // answer a stretch at a time where its sender holds it (PeerConsume::takes_pull), so the copying path's
  // buffers, counted above, are the larger.
  // What the buffers above leave out: chunks the allocator keeps after a buffer grew (emu keeps freed chunks
  // for the run), metadata and routing. Measured at 6-9% of them for flat and hierarchical at 1024-4096
  // tokens per rank (16 ranks, DeepSeek-V3; docs/architecture.md).
  constexpr double kAllocatorSlack = 1.07;
  e.bytes = e.ranks_here * (e.batch_bytes + e.rows_bytes) * kAllocatorSlack;
  return e;
}

double available_memory_bytes() {
  double avail = 0;
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream is(line.substr(13));
      double kb = 0;
      if (is >> kb) avail = kb * 1024.0;
    }
  // A container's limit (cgroup v2, then v1) may be lower than what the machine has free.
  const std::pair<const char*, const char*> cgroups[] = {
      {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
      {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"}};
  for (const auto& [limit_path, usage_path] : cgroups) {
    const double limit = read_number_file(limit_path);
    if (limit <= 0 || limit >= 1e18) continue;  // absent or unlimited
    const double left = std::max(0.0, limit - read_number_file(usage_path));
    avail = avail > 0 ? std::min(avail, left) : left;
    break;
  }
  return avail;
}

namespace {

std::string memory_refusal(const RunConfig& cfg, const MemoryEstimate& e, double available) {
  const double per_rank = e.ranks_here > 0 ? e.bytes / e.ranks_here : 0;
  const double fit = per_rank > 0 ? available / per_rank : 0;
  std::string msg = "this run needs about " + gb(e.bytes) + " of memory (" + std::to_string(e.ranks_here) +
                    " ranks on this machine x " + gb(per_rank) + ": " + std::to_string(cfg.tokens) +
                    " tokens per rank, about " + std::to_string(static_cast<long>(e.rows_per_rank)) +
                    " received rows per rank), but " + gb(available) + " is available. ";
  // Tokens that would fit: the estimate is linear in tokens per rank.
  const long tokens_fit = static_cast<long>(cfg.tokens * std::min(1.0, fit / e.ranks_here) * 0.9);
  msg += "Lower --tokens";
  if (tokens_fit > 0) msg += " (about " + std::to_string(tokens_fit) + " would fit)";
  msg +=
      ", use fewer ranks (--nodes, --gpus-per-node), time sizes only with --payload phantom --backend=sim, "
      "or set EPLAB_MEMORY_GUARD=0 to run anyway";
  return msg;
}

}  // namespace

void check_run_memory(const RunConfig& cfg, const RunSetup& run, double available) {
  if (const char* off = std::getenv("EPLAB_MEMORY_GUARD"); off && std::string(off) == "0") return;
  const MemoryEstimate e = estimate_run_memory(cfg, run);
  if (e.bytes <= 0) return;
  if (available < 0) available = available_memory_bytes();
  if (available > 0 && e.bytes > available) throw EplabError(memory_refusal(cfg, e, available));
}

}  // namespace eplab
