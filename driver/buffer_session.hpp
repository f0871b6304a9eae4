// The session behind eplab.Buffer: DeepEP's per-call API (layout, dispatch -> handle -> combine, cached dispatch)
// over eplab's engine. A process holds every rank of an in-process run (emu threads, sim actors) or, on mpi, its
// own rank only, as in DeepEP. Each call launches the backend's ranks afresh; what must outlive a call (engine
// handles, the cached layout) lives here. Per-rank vectors hold the ranks this process holds, first_rank() on.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/layout.hpp"
#include "engine/layout_cache.hpp"
#include "engine/placement.hpp"
#include "engine/topology.hpp"

namespace eplab {

struct BufferOptions {
  std::string backend = "emu";
  std::string cluster = "h800-cx7";  // link parameters for sim; emu only takes its shape
  int nodes = 1;
  int gpus_per_node = 8;
  int num_experts = 0;
  int hidden = 0;
  std::string algorithm = "hierarchical";
  double timeout_s = 60;
  std::string sim_model;
};

// Rows of one rank as the caller holds them: fp32, or bf16 bits (widened by the rank's own thread, exactly).
struct BufferRows {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  bool empty() const { return !f32 && !bf16; }
};

// One rank's part of a dispatch: its batch's top-k expert ids (-1 unused), weights and activations (fp32 or bf16;
// the caller has decoded fp8 input already).
struct BufferRankInput {
  int num_tokens = 0;
  const int32_t* topk_idx = nullptr;  // [tokens x topk]
  const float* weights = nullptr;     // [tokens x topk]
  BufferRows x;                       // [tokens x hidden]
};

// What one rank received, rows in DeepEP's order: by source rank, then by token.
struct BufferRecv {
  std::vector<int32_t> src_rank, src_token;  // [rows]
  std::vector<int32_t> topk_idx;             // [rows x topk] local expert index on this rank, -1 elsewhere
  std::vector<float> topk_weights;           // [rows x topk] 0 where topk_idx is -1
  std::vector<int32_t> tokens_per_expert;    // [local experts] received selections per local expert
  std::vector<uint8_t> wire;                 // [rows x row bytes] the rows in the dispatch codec's wire format
  int rows() const { return static_cast<int>(src_rank.size()); }
};

// Time of one call, the slowest held rank's (on mpi: this process's rank): modeled seconds on simulated backends,
// wall seconds otherwise.
struct BufferTime {
  double time_s = 0;
  double notify_s = 0;  // dispatch only: the count exchange (0 when a cached layout skipped it)
  bool modeled = false;
};

// A dispatch's layout and the engine state combine needs, kept between Python calls (DeepEP's handle). Every
// vector has one entry per rank this process holds.
struct BufferHandleState {
  uint64_t session = 0;  // the session that made it
  uint64_t layout_key = 0;
  int topk = 0;
  std::vector<int> num_tokens;              // [held]
  std::vector<std::vector<int32_t>> slots;  // [held][tokens x topk]
  std::vector<std::vector<float>> weights;  // [held][tokens x topk]
  std::vector<LayoutCache::Entry> cached;   // [held] each rank's notify result, for cached dispatch
  std::vector<Handle> handles;              // [held] of the latest dispatch over this layout (rows released)
  std::vector<std::vector<int32_t>> order;  // [held][rows] engine row of each row in DeepEP's order
  std::vector<int> rows;                    // [held] rows received
  // [held][rows x topk] the source's expert ids and weights of each received row in DeepEP's order: read from
  // the sources' inputs in process, sent by the sources on mpi (once per handle; cached dispatch reuses them).
  std::vector<std::vector<int32_t>> recv_experts;
  std::vector<std::vector<float>> recv_weights;
};

class BufferSession {
 public:
  // On a multi-process backend (mpi) the constructor is collective: every process of the launch makes its
  // Buffer together, as DeepEP's, and learns its rank from a first launch.
  explicit BufferSession(BufferOptions opts);
  const BufferOptions& options() const { return opts_; }
  // The ranks this process holds: every one (first 0) in process, its own one on mpi.
  int first_rank() const { return first_rank_; }
  int held_ranks() const { return held_; }
  bool holds_every_rank() const { return held_ == topo_.size(); }
  bool one_rank_per_process() const { return !backend_->in_process(); }
  const Topology& topology() const { return topo_; }
  int num_ranks() const { return topo_.size(); }
  int experts_per_rank() const { return opts_.num_experts / topo_.size(); }
  bool modeled_time() const { return caps_.modeled_time; }

  // The layout of one rank's batch (DeepEP's get_dispatch_layout): a pure function, no fabric involved.
  DispatchLayout layout(const int32_t* topk_idx, int num_tokens, int topk) const;

  // Every rank's dispatch together with `codec` on the wire ("fp32", "bf16", "fp8-e4m3-b128", ...). `inputs` has
  // one entry per held rank. Fills `recv` (one per held rank) and returns the handle. Collective over the ranks.
  std::shared_ptr<BufferHandleState> dispatch(const std::vector<BufferRankInput>& inputs, int topk,
                                              const std::string& codec, std::vector<BufferRecv>& recv,
                                              BufferTime& time);
  // Cached dispatch: the routing and weights of `h`, new activations (x of `inputs`; their num_tokens must match),
  // the count exchange skipped on every rank. Updates h's engine handles.
  void dispatch_cached(BufferHandleState& h, const std::vector<BufferRankInput>& inputs, const std::string& codec,
                       std::vector<BufferRecv>& recv, BufferTime& time);
  // Combine: partials[i] holds held rank i's rows in DeepEP's order ([rows x hidden]), sent with `codec`; out[i]
  // receives its tokens ([num_tokens x hidden]), each the sum of the rows of every rank it reached. With
  // `topk_weights` (one [rows x topk] per held rank, or empty) `out_weights[i]` receives the same sums of those
  // ([num_tokens x topk]), sent back to the sources after the timed combine.
  void combine(BufferHandleState& h, const std::vector<BufferRows>& partials, const std::string& codec,
               std::vector<std::vector<float>>& out, BufferTime& time,
               const std::vector<const float*>& topk_weights = {},
               std::vector<std::vector<float>>* out_weights = nullptr);

 private:
  void check_inputs(const std::vector<BufferRankInput>& inputs, int topk) const;
  void check_held(size_t n, const char* what) const;
  // Each received row's source expert ids and weights (h.recv_experts / recv_weights of held rank `me`).
  void recv_routing(Fabric& f, BufferHandleState& h, const Handle& eh, const std::vector<int32_t>& ord);
  void run_dispatch(BufferHandleState& h, const std::vector<BufferRankInput>& inputs, const std::string& codec,
                    bool cached, std::vector<BufferRecv>& recv, BufferTime& time);
  // The model shape and engine options of one call: the session's experts and hidden size, the call's top-k and
  // codecs (the phase a call does not run keeps fp32).
  MoeShape engine_shape(int topk, const std::string& dispatch_codec, const std::string& combine_codec) const;
  EngineOptions engine_options(const std::string& dispatch_codec, const std::string& combine_codec) const;

  // Each rank's engine buffers (receive, send, received rows) and combine's reordered rows, kept between calls as
  // DeepEP's Buffer keeps its own: every call builds fresh engines, and faulting these in again on every call
  // costs more than the copies (engine/huge_pages.hpp).
  struct RankScratch {
    std::vector<std::vector<uint8_t>> inboxes, outboxes;
    std::vector<uint8_t> spare_rows;
    std::vector<float> rows;  // dispatch's widened bf16 input, combine's rows in the engine's order
  };
  void lend_scratch(EngineContext& ctx, int rank);
  void take_scratch(EngineContext& ctx, int rank);

  BufferOptions opts_;
  std::vector<RankScratch> scratch_;
  Topology topo_;
  Placement placement_;
  std::unique_ptr<Backend> backend_;
  Caps caps_;
  int first_rank_ = 0, held_ = 0;
  uint64_t id_;
  uint64_t next_key_ = 1;
  std::mutex mu_;  // one call at a time: a call launches every rank
};

}  // namespace eplab
