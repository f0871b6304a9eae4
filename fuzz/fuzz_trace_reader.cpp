// The binary trace reader (traces/trace_file.*): the bytes are a .eptrace file. `eplab trace info` (summarize),
// the header peek `--trace` runs take their model from, and open_trace as a run opens it, then a batch read back.
#include <cstdint>

#include "fuzz/fuzz_util.hpp"
#include "traces/trace_file.hpp"
#include "traces/trace_tools.hpp"

using namespace eplab;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path(".eptrace");
  fuzz::write_file(path, data, size);
  fuzz::refused_or_done([&] { summarize_trace(path); });
  fuzz::refused_or_done([&] {
    const TraceHeader h = read_trace_header(path);
    ClusterSpec c = cluster_preset("h200-ib");
    c.nodes = h.nodes;
    c.gpus_per_node = h.gpus_per_node;
    RoutingParams p;
    p.shape = h.shape;
    p.topology = Topology(c);
    p.tokens_per_rank = h.tokens_per_rank;
    auto source = open_trace(path, p);
    if (source->num_steps() > 0 && source->num_layers() > 0 && source->num_ranks() > 0) {
      source->batch(0, 0, 0);
      source->batch(source->num_steps() - 1, source->num_layers() - 1, source->num_ranks() - 1);
    }
  });
  return 0;
}
