// The memory guard: before a run that moves real bytes starts, estimate the peak memory of the ranks on this
// machine from the configuration alone, and refuse a run that would not fit, naming the estimate, the memory
// available and what to change, instead of swapping for minutes.
#pragma once

#include <cstdint>
#include <string>

#include "driver/experiment.hpp"
#include "driver/plan.hpp"

namespace eplab {

struct MemoryEstimate {
  double bytes = 0;          // peak of the ranks that run on this machine
  int ranks_here = 0;        // ranks counted (every rank in one process; this node's under mpirun)
  double batch_bytes = 0;    // part of `bytes`: the batch (wire rows or fp32 activations), combine outputs (fp32/bf16)
  double rows_bytes = 0;     // part of `bytes`: received rows, messages in flight, expert outputs
  double rows_per_rank = 0;  // rows a rank receives per call (uniform routing's mean)
};

// Zero for a phantom-payload run (sizes only).
MemoryEstimate estimate_run_memory(const RunConfig& cfg, const RunSetup& run);

// Memory this process may still use: /proc/meminfo's MemAvailable, or the cgroup's limit when that is lower.
// 0 when neither can be read.
double available_memory_bytes();

// Throws EplabError when the estimate exceeds `available` bytes (default: available_memory_bytes()); does
// nothing when the environment sets EPLAB_MEMORY_GUARD=0 or the available memory is unknown (0).
void check_run_memory(const RunConfig& cfg, const RunSetup& run, double available = -1);

}  // namespace eplab
