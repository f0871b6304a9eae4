// Step driver of one rank: times each step (inference or training), records its phase spans on the timeline,
// and in training mode runs the backward pass (gradients travel the reverse way through the same engine) and
// the ring all-reduce of the dense gradients, overlapped with backward compute when asked. With two-batch overlap
// (--overlap tbo) it records every phase of both micro-batches as an op for driver/overlap.hpp to compose.
#pragma once

#include <cstdint>
#include <vector>

#include "driver/experiment.hpp"
#include "driver/overlap.hpp"
#include "driver/timeline.hpp"
#include "engine/ep_engine.hpp"
#include "engine/fabric.hpp"
#include "engine/moe_shape.hpp"

namespace eplab {

// What one rank measured per step (seconds of Fabric::now()).
struct StepRecord {
  std::vector<double> step_s;       // from the step's start to the barrier after its last phase
  std::vector<double> compute_s;    // modeled compute inside the step (expert, and in training dense layers)
  std::vector<double> allreduce_s;  // dense-gradient all-reduce time the rank waited for (not hidden by compute)
  std::vector<OverlapOp> ops;       // two-batch overlap: every phase of every step, as simulated one at a time
};

// Tag layer ids of micro-batch 1 (two-batch overlap) carry this bit, so its exchanges never match micro-batch 0's.
constexpr int kMicroBatchLayerBit = 1 << 15;

// When a forward layer's phases began and ended on this rank.
struct ForwardTimes {
  double dispatch0 = 0, expert0 = 0, expert1 = 0, combine0 = 0, combine1 = 0;
  double notify_s = 0;  // the notify round inside dispatch (EngineStats)
};

struct StepContext {
  Fabric& f;
  EpEngine& engine;
  const MoeShape& shape;
  const RunConfig& cfg;
  Timeline& links;                   // this process's link recorder: names backward rounds "bwd-*"
  std::vector<TimelineSpan>* spans;  // this rank's phase spans for the timeline file; null: not recorded
  bool phantom = true;
};

class StepDriver {
 public:
  StepDriver(const StepContext& c, StepRecord& rec) : c_(c), rec_(rec), two_batch_(c.cfg.overlap == "tbo") {}
  void begin_step(int step);
  // After a forward layer's combine. Training keeps the layer's routing for the backward pass and charges the
  // dense (attention) forward compute.
  void forward_layer(const DispatchArgs& args, const ComputeCost& expert, const ForwardTimes& t);
  // Training: backward over the layers in reverse and the dense all-reduce; then closes the step's timing.
  void end_step(int step);

  // Two-batch overlap. Whether this run uses it; the dense (attention) compute that opens a micro-batch's layer
  // (in inference too); a micro-batch's forward phases after its combine (times as in ForwardTimes; the
  // training backward keeps its routing); and a phase recorded as an op.
  bool two_batch() const { return two_batch_; }
  void dense_forward(int micro_batch, int layer, int tokens);
  void forward_micro_batch(const DispatchArgs& args, const ComputeCost& expert, int micro_batch, const ForwardTimes& t);
  void op(OpKind kind, int micro_batch, int layer, double t0, double t1);

  // Bytes of one layer's dense gradients (bf16).
  static double dense_grad_bytes(const MoeShape& s) { return s.dense_params * 2.0; }
  // The all-reduce's rings: (next, previous) rank of `rank` in each (one per rail across nodes).
  static std::vector<std::pair<int, int>> ring_neighbours(const Topology& topo, int rank);

 private:
  struct Layer {
    int num_tokens = 0, topk = 0;
    std::vector<int32_t> slots;
    std::vector<float> weights, x;
    std::vector<uint8_t> x_rows;  // the batch as wire rows, where dispatch took it so (DispatchArgs::x_rows)
    ComputeCost expert;
    int layer = 0, micro_batch = 0;  // two-batch overlap: which layer and micro-batch (else the layer's index)
  };
  void keep_layer(const DispatchArgs& args, const ComputeCost& expert, int layer, int micro_batch);
  void backward_two_batch(int step);
  void backward_combine(Handle& h, int num_tokens);
  void span(const char* name, double t0, double t1);
  double timed_compute(const ComputeCost& cost, const char* name);
  // Ring all-reduce (reduce-scatter then all-gather) of `bytes` over all ranks as alltoallv rounds.
  void allreduce(int step, int id, double bytes);
  ComputeCost dense_cost(double flops_per_param_token, double hbm_bytes, int tokens) const;

  StepContext c_;
  StepRecord& rec_;
  const bool two_batch_;
  int step_ = 0;
  std::vector<Layer> layers_;
  double step0_ = 0, compute_ = 0, allreduce_ = 0;
  std::vector<uint8_t> send_buf_, recv_buf_;
  std::vector<float> partials_, out_;
};

}  // namespace eplab
