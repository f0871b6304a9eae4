// Routing trace files: a versioned protobuf header (MoE shape, cluster, provenance) followed by a stream of
// per-(step, layer, source rank) batches. TraceWriter streams batches out, TraceReader streams them back,
// and open_trace() serves a file as a random-access RoutingSource. The byte layout is in docs/traces.md.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/moe_shape.hpp"
#include "engine/routing.hpp"
#include "traces/routing_source.hpp"

namespace eplab {

inline constexpr char kTraceMagic[8] = {'E', 'P', 'L', 'T', 'R', 'A', 'C', 'E'};
inline constexpr uint32_t kTraceFormatVersion = 1;

// The version of eplab that writes provenance.tool_version.
const char* eplab_version();

struct TraceProvenance {
  std::string generator;  // routing spec, or "import:jsonl"
  uint64_t seed = 0;
  std::string tool_version;  // filled in by TraceWriter when empty
  std::string created_by;
  std::string source;       // imported file, if any
  std::string source_meta;  // the importer's meta line, verbatim
};

struct TraceHeader {
  uint32_t format_version = kTraceFormatVersion;
  MoeShape shape;
  std::string cluster;  // preset name, informative
  int nodes = 1;
  int gpus_per_node = 1;
  int num_steps = 0;
  int num_layers = 0;
  int num_ranks = 0;
  int tokens_per_rank = 0;
  bool has_gate_scores = false;
  std::vector<int> layer_ids;  // original layer numbers (imports); empty means 0..num_layers-1
  TraceProvenance provenance;

  // Readers and writers refuse a header whose grid product overflows 64 bits, so this is exact on any header
  // they accepted.
  int64_t num_batches() const { return static_cast<int64_t>(num_steps) * num_layers * num_ranks; }
};

// Streams a trace to a file. Batches may come in any order; each must lie inside the header's grid and
// pass validate_batch against the header's expert count. close() writes the end marker: a file whose
// writer was destroyed without close() (an exception mid-way) reads back as unfinished, never as complete.
class TraceWriter {
 public:
  TraceWriter(const std::string& path, TraceHeader header);
  ~TraceWriter();
  TraceWriter(const TraceWriter&) = delete;
  TraceWriter& operator=(const TraceWriter&) = delete;

  void write(const RoutingBatch& batch);
  void close();
  const TraceHeader& header() const { return header_; }
  uint64_t batches_written() const { return num_batches_; }

 private:
  void write_message(const std::string& bytes);

  std::string path_;
  TraceHeader header_;
  std::ofstream out_;
  uint64_t num_batches_ = 0;
  uint64_t num_tokens_ = 0;
  bool closed_ = false;
};

// Reads a trace front to back. The constructor checks the magic, the format version and the header;
// next() returns batches in file order and std::nullopt at the end marker. Every error names the file and
// the byte offset where it was found (truncation, a record that does not parse, bytes after the end).
class TraceReader {
 public:
  explicit TraceReader(const std::string& path);
  ~TraceReader();

  const TraceHeader& header() const { return header_; }
  std::optional<RoutingBatch> next();
  uint64_t offset() const { return offset_; }             // byte offset of the next record
  uint64_t batch_offset() const { return last_offset_; }  // byte offset of the batch next() returned last
  uint64_t file_size() const { return file_size_; }
  const std::string& path() const { return path_; }

 private:
  // Reads one varint-length-prefixed message body; false at a clean end of file.
  bool read_message(std::string& body, const char* what);

  std::string path_;
  std::ifstream in_;
  uint64_t file_size_ = 0;
  uint64_t offset_ = 0;
  uint64_t last_offset_ = 0;
  uint64_t batches_read_ = 0;
  bool done_ = false;
  TraceHeader header_;
};

// Just the header (cheap: reads the first few hundred bytes). Lets a caller take the model and cluster
// from a trace instead of asking the user for them.
TraceHeader read_trace_header(const std::string& path);

// A trace file as a RoutingSource. On open it scans the whole file once: it checks framing, that every
// (step, layer, rank) of the grid is present exactly once, that the trace covers the run (params.topology's
// ranks, params.steps and params.layers when set) and that every expert id is below the run's model's
// expert count; batches are then read back from disk on demand. batch() is safe to call from several
// threads.
std::unique_ptr<RoutingSource> open_trace(const std::string& path, const RoutingParams& params);

}  // namespace eplab
