#include "traces/trace_file.hpp"

#include <google/protobuf/io/coded_stream.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "engine/error.hpp"
#include "traces/proto/eplab_trace.pb.h"

#ifndef EPLAB_VERSION
#define EPLAB_VERSION "0.0.0-dev"
#endif

namespace eplab {

namespace pb = ::eplab::trace::v1;

const char* eplab_version() { return EPLAB_VERSION; }

namespace {

// A header or batch bigger than this is a corrupt length prefix, not data: the largest sensible batch
// (16k tokens with 256 gate scores each) is about 16 MiB.
constexpr uint64_t kMaxMessageBytes = 1ull << 30;

// The fewest bytes a batch can take in a file: its length prefix, the record's field tag and length, and the
// top-k field (>= 1, so always present). A header promising more batches than the file can hold at this size
// is corrupt, and is refused before anything is sized from it.
constexpr uint64_t kMinBatchBytes = 5;

// Sanity bounds on header fields that size tables before any batch is read (no model comes near them).
constexpr int kMaxExperts = 1 << 20;
constexpr int kMaxLayers = 1 << 16;

std::string trace_name(const std::string& path) { return "trace '" + path + "'"; }

std::string open_error(const std::string& path, const char* mode) {
  std::error_code ec;
  if (std::string(mode) == "reading" && !std::filesystem::exists(path, ec)) return trace_name(path) + ": no such file";
  return trace_name(path) + ": cannot open for " + mode + " (" + std::strerror(errno) + ")";
}

pb::Header to_proto(const TraceHeader& h) {
  pb::Header p;
  p.set_format_version(h.format_version);
  auto* s = p.mutable_shape();
  s->set_name(h.shape.name);
  s->set_num_experts(h.shape.num_experts);
  s->set_topk(h.shape.topk);
  s->set_hidden(h.shape.hidden);
  s->set_expert_ffn(h.shape.expert_ffn);
  s->set_max_nodes_per_token(h.shape.max_nodes_per_token);
  s->set_num_layers(h.shape.num_layers);
  s->set_dispatch_codec(h.shape.dispatch_codec);
  s->set_combine_codec(h.shape.combine_codec);
  auto* c = p.mutable_cluster();
  c->set_name(h.cluster);
  c->set_nodes(h.nodes);
  c->set_gpus_per_node(h.gpus_per_node);
  p.set_num_steps(h.num_steps);
  p.set_num_layers(h.num_layers);
  p.set_num_ranks(h.num_ranks);
  p.set_tokens_per_rank(h.tokens_per_rank);
  p.set_has_gate_scores(h.has_gate_scores);
  for (int id : h.layer_ids) p.add_layer_ids(id);
  auto* v = p.mutable_provenance();
  v->set_generator(h.provenance.generator);
  v->set_seed(h.provenance.seed);
  v->set_tool_version(h.provenance.tool_version);
  v->set_created_by(h.provenance.created_by);
  v->set_source(h.provenance.source);
  v->set_source_meta(h.provenance.source_meta);
  return p;
}

TraceHeader from_proto(const pb::Header& p) {
  TraceHeader h;
  h.format_version = p.format_version();
  const auto& s = p.shape();
  h.shape.name = s.name();
  h.shape.num_experts = s.num_experts();
  h.shape.topk = s.topk();
  h.shape.hidden = s.hidden();
  h.shape.expert_ffn = s.expert_ffn();
  h.shape.max_nodes_per_token = s.max_nodes_per_token();
  h.shape.num_layers = s.num_layers();
  h.shape.dispatch_codec = s.dispatch_codec();
  h.shape.combine_codec = s.combine_codec();
  h.cluster = p.cluster().name();
  h.nodes = p.cluster().nodes();
  h.gpus_per_node = p.cluster().gpus_per_node();
  h.num_steps = p.num_steps();
  h.num_layers = p.num_layers();
  h.num_ranks = p.num_ranks();
  h.tokens_per_rank = p.tokens_per_rank();
  h.has_gate_scores = p.has_gate_scores();
  h.layer_ids.assign(p.layer_ids().begin(), p.layer_ids().end());
  const auto& v = p.provenance();
  h.provenance = {v.generator(), v.seed(), v.tool_version(), v.created_by(), v.source(), v.source_meta()};
  return h;
}

// The header is checked once here so that every later message can trust the grid and the expert count.
void check_header(const TraceHeader& h, const std::string& where) {
  auto bad = [&](const std::string& field, long long value, const char* expected) {
    throw EplabError(where + ": header field " + field + " is " + std::to_string(value) + ", expected " + expected);
  };
  if (h.shape.num_experts < 1) bad("shape.num_experts", h.shape.num_experts, ">= 1");
  if (h.shape.topk < 1 || h.shape.topk > h.shape.num_experts)
    bad("shape.topk", h.shape.topk, "between 1 and shape.num_experts");
  if (h.num_steps < 0) bad("num_steps", h.num_steps, ">= 0");
  if (h.num_layers < 0) bad("num_layers", h.num_layers, ">= 0");
  if (h.num_ranks < 0) bad("num_ranks", h.num_ranks, ">= 0");
  if (h.tokens_per_rank < 0) bad("tokens_per_rank", h.tokens_per_rank, ">= 0");
  if (!h.layer_ids.empty() && static_cast<int>(h.layer_ids.size()) != h.num_layers)
    bad("layer_ids (count)", static_cast<long long>(h.layer_ids.size()), "one per layer (num_layers) or none");
  if (h.shape.num_experts > kMaxExperts) bad("shape.num_experts", h.shape.num_experts, "at most 1048576");
  if (h.num_layers > kMaxLayers) bad("num_layers", h.num_layers, "at most 65536");
  int64_t batches = 0;
  if (__builtin_mul_overflow(static_cast<int64_t>(h.num_steps), static_cast<int64_t>(h.num_layers), &batches) ||
      __builtin_mul_overflow(batches, static_cast<int64_t>(h.num_ranks), &batches))
    throw EplabError(where + ": header fields num_steps x num_layers x num_ranks (" + std::to_string(h.num_steps) +
                     " x " + std::to_string(h.num_layers) + " x " + std::to_string(h.num_ranks) + ") overflow 64 bits");
}

// A reader's check on top of check_header: the grid must fit in the bytes that follow the header.
void check_grid_fits(const TraceHeader& h, const std::string& where, uint64_t bytes_left) {
  const uint64_t batches = static_cast<uint64_t>(h.num_batches());
  if (batches > bytes_left / kMinBatchBytes)
    throw EplabError(where + ": header fields num_steps x num_layers x num_ranks (" + std::to_string(h.num_steps) +
                     " x " + std::to_string(h.num_layers) + " x " + std::to_string(h.num_ranks) + " = " +
                     std::to_string(batches) + " batches) cannot fit in the " + std::to_string(bytes_left) +
                     " bytes after the header (each batch takes at least " + std::to_string(kMinBatchBytes) +
                     " bytes): a corrupt header or a truncated file");
}

RoutingBatch from_proto(const pb::Batch& p) {
  RoutingBatch b;
  b.step = p.step();
  b.layer = p.layer();
  b.src_rank = p.src_rank();
  b.num_tokens = p.num_tokens();
  b.topk = p.topk();
  b.topk_idx.assign(p.topk_idx().begin(), p.topk_idx().end());
  b.topk_weights.assign(p.topk_weights().begin(), p.topk_weights().end());
  b.gate_scores.assign(p.gate_scores().begin(), p.gate_scores().end());
  return b;
}

std::string batch_where(const std::string& path, const RoutingBatch& b, uint64_t offset) {
  return trace_name(path) + " (batch at byte " + std::to_string(offset) + ")";
}

// Everything a batch must satisfy against the header of its own file: inside the grid, the header's top-k,
// ids below `num_experts` (the trace's own model, or the run's model when serving a run), finite weights.
void check_batch(const RoutingBatch& b, const TraceHeader& h, int num_experts, const std::string& path,
                 uint64_t offset) {
  const std::string where = batch_where(path, b, offset);
  auto grid = [&](const char* what, int v, int n) {
    if (v < 0 || v >= n)
      throw EplabError(where + ": " + what + " " + std::to_string(v) + " is outside the header's 0.." +
                       std::to_string(n - 1));
  };
  grid("step", b.step, h.num_steps);
  grid("layer", b.layer, h.num_layers);
  grid("src_rank", b.src_rank, h.num_ranks);
  if (b.topk != h.shape.topk)
    throw EplabError(where + " (step " + std::to_string(b.step) + ", layer " + std::to_string(b.layer) + ", rank " +
                     std::to_string(b.src_rank) + "): top-k is " + std::to_string(b.topk) + " but the header says " +
                     std::to_string(h.shape.topk));
  validate_batch(b, num_experts, where.c_str());
  if (!b.gate_scores.empty() &&
      b.gate_scores.size() != static_cast<size_t>(b.num_tokens) * static_cast<size_t>(h.shape.num_experts))
    throw EplabError(where + ": gate_scores has " + std::to_string(b.gate_scores.size()) + " entries, expected " +
                     std::to_string(b.num_tokens) + " tokens x " + std::to_string(h.shape.num_experts) + " experts");
}

// Reads one varint length prefix and the message body it announces, starting at `offset`.
// Returns false only at a clean end of file (no byte of a new record present).
bool read_framed(std::istream& in, uint64_t& offset, uint64_t file_size, const std::string& path, std::string& body,
                 const char* what) {
  const uint64_t start = offset;
  if (start >= file_size) return false;
  uint64_t len = 0;
  int shift = 0;
  for (;;) {
    const int c = in.get();
    if (c == std::char_traits<char>::eof())
      throw EplabError(trace_name(path) + ": truncated at byte " + std::to_string(offset) + ": the length of the " +
                       what + " starting at byte " + std::to_string(start) + " is cut off");
    ++offset;
    len |= static_cast<uint64_t>(c & 0x7f) << shift;
    if (!(c & 0x80)) break;
    shift += 7;
    if (shift > 35)
      throw EplabError(trace_name(path) + ": corrupt " + what + " at byte " + std::to_string(start) +
                       ": its length prefix is not a valid varint");
  }
  if (len > kMaxMessageBytes)
    throw EplabError(trace_name(path) + ": corrupt " + what + " at byte " + std::to_string(start) + ": it claims " +
                     std::to_string(len) + " bytes");
  if (offset + len > file_size)
    throw EplabError(trace_name(path) + ": truncated at byte " + std::to_string(file_size) + ": the " + what +
                     " starting at byte " + std::to_string(start) + " needs " + std::to_string(len) +
                     " bytes but only " + std::to_string(file_size - offset) + " remain");
  body.resize(len);
  in.read(body.data(), static_cast<std::streamsize>(len));
  if (static_cast<uint64_t>(in.gcount()) != len)
    throw EplabError(trace_name(path) + ": read error at byte " + std::to_string(offset) + " (" + std::strerror(errno) +
                     ")");
  offset += len;
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// TraceWriter

TraceWriter::TraceWriter(const std::string& path, TraceHeader header) : path_(path), header_(std::move(header)) {
  header_.format_version = kTraceFormatVersion;
  if (header_.provenance.tool_version.empty()) header_.provenance.tool_version = eplab_version();
  check_header(header_, trace_name(path_));
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw EplabError(open_error(path_, "writing"));
  out_.write(kTraceMagic, sizeof(kTraceMagic));
  const uint32_t v = kTraceFormatVersion;
  const char version[4] = {static_cast<char>(v & 0xff), static_cast<char>((v >> 8) & 0xff),
                           static_cast<char>((v >> 16) & 0xff), static_cast<char>((v >> 24) & 0xff)};
  out_.write(version, 4);
  write_message(to_proto(header_).SerializeAsString());
}

TraceWriter::~TraceWriter() = default;  // without close(): no end marker, so readers see an unfinished file

void TraceWriter::write_message(const std::string& bytes) {
  uint8_t prefix[10];
  uint8_t* end = google::protobuf::io::CodedOutputStream::WriteVarint64ToArray(bytes.size(), prefix);
  out_.write(reinterpret_cast<const char*>(prefix), end - prefix);
  out_.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out_) throw EplabError(trace_name(path_) + ": write failed (" + std::strerror(errno) + ")");
}

void TraceWriter::write(const RoutingBatch& b) {
  if (closed_) throw EplabError(trace_name(path_) + ": write() after close()");
  check_batch(b, header_, header_.shape.num_experts, path_, static_cast<uint64_t>(out_.tellp()));
  if (!b.gate_scores.empty() && !header_.has_gate_scores)
    throw EplabError(trace_name(path_) + ": a batch carries gate scores but the header says has_gate_scores = false");
  pb::Record rec;
  auto* p = rec.mutable_batch();
  p->set_step(b.step);
  p->set_layer(b.layer);
  p->set_src_rank(b.src_rank);
  p->set_num_tokens(b.num_tokens);
  p->set_topk(b.topk);
  p->mutable_topk_idx()->Add(b.topk_idx.begin(), b.topk_idx.end());
  p->mutable_topk_weights()->Add(b.topk_weights.begin(), b.topk_weights.end());
  p->mutable_gate_scores()->Add(b.gate_scores.begin(), b.gate_scores.end());
  write_message(rec.SerializeAsString());
  ++num_batches_;
  num_tokens_ += static_cast<uint64_t>(b.num_tokens);
}

void TraceWriter::close() {
  if (closed_) return;
  pb::Record rec;
  rec.mutable_end()->set_num_batches(num_batches_);
  rec.mutable_end()->set_num_tokens(num_tokens_);
  write_message(rec.SerializeAsString());
  out_.close();
  if (out_.fail()) throw EplabError(trace_name(path_) + ": closing failed (" + std::strerror(errno) + ")");
  closed_ = true;
}

// ---------------------------------------------------------------------------------------------------------
// TraceReader

TraceReader::TraceReader(const std::string& path) : path_(path) {
  in_.open(path_, std::ios::binary);
  if (!in_) throw EplabError(open_error(path_, "reading"));
  std::error_code ec;
  file_size_ = std::filesystem::file_size(path_, ec);
  if (ec) throw EplabError(trace_name(path_) + ": cannot get its size (" + ec.message() + ")");
  char magic[8] = {};
  in_.read(magic, 8);
  if (in_.gcount() < 8 || std::memcmp(magic, kTraceMagic, 8) != 0) {
    if (in_.gcount() < 8 && std::memcmp(magic, kTraceMagic, in_.gcount()) == 0)
      throw EplabError(trace_name(path_) + ": truncated at byte " + std::to_string(in_.gcount()) +
                       ": the file is shorter than the 12-byte preamble");
    throw EplabError(trace_name(path_) + ": not an eplab trace (byte 0 should start with \"EPLTRACE\")");
  }
  unsigned char v[4] = {};
  in_.read(reinterpret_cast<char*>(v), 4);
  if (in_.gcount() < 4)
    throw EplabError(trace_name(path_) + ": truncated at byte " + std::to_string(8 + in_.gcount()) +
                     ": the format version (bytes 8..11) is cut off");
  const uint32_t version = v[0] | (v[1] << 8) | (v[2] << 16) | (static_cast<uint32_t>(v[3]) << 24);
  if (version < 1 || version > kTraceFormatVersion)
    throw EplabError(trace_name(path_) + ": format version " + std::to_string(version) + " at byte 8, this eplab (" +
                     eplab_version() + ") reads versions 1.." + std::to_string(kTraceFormatVersion));
  offset_ = 12;
  std::string body;
  if (!read_framed(in_, offset_, file_size_, path_, body, "header"))
    throw EplabError(trace_name(path_) + ": truncated at byte 12: the header is missing");
  pb::Header ph;
  if (!ph.ParseFromString(body)) throw EplabError(trace_name(path_) + ": corrupt header at byte 12 (does not parse)");
  header_ = from_proto(ph);
  check_header(header_, trace_name(path_) + " (header at byte 12)");
  check_grid_fits(header_, trace_name(path_) + " (header at byte 12)", file_size_ - offset_);
}

TraceReader::~TraceReader() = default;

std::optional<RoutingBatch> TraceReader::next() {
  if (done_) return std::nullopt;
  const uint64_t start = offset_;
  std::string body;
  if (!read_framed(in_, offset_, file_size_, path_, body, "record"))
    throw EplabError(trace_name(path_) + ": truncated at byte " + std::to_string(start) + ": the file ends after " +
                     std::to_string(batches_read_) + " of " + std::to_string(header_.num_batches()) +
                     " batches without the end-of-trace marker (the writer did not finish, or the file was cut)");
  pb::Record rec;
  if (!rec.ParseFromString(body))
    throw EplabError(trace_name(path_) + ": corrupt record at byte " + std::to_string(start) + " (" +
                     std::to_string(body.size()) + " bytes that do not parse as a trace record)");
  if (rec.has_end()) {
    if (rec.end().num_batches() != batches_read_)
      throw EplabError(trace_name(path_) + ": the end marker at byte " + std::to_string(start) + " counts " +
                       std::to_string(rec.end().num_batches()) + " batches but the file holds " +
                       std::to_string(batches_read_));
    if (offset_ != file_size_)
      throw EplabError(trace_name(path_) + ": " + std::to_string(file_size_ - offset_) +
                       " unexpected bytes after the end marker, at byte " + std::to_string(offset_));
    done_ = true;
    return std::nullopt;
  }
  if (!rec.has_batch())
    throw EplabError(trace_name(path_) + ": record at byte " + std::to_string(start) +
                     " is neither a batch nor the end marker (written by a newer eplab?)");
  RoutingBatch b = from_proto(rec.batch());
  check_batch(b, header_, header_.shape.num_experts, path_, start);
  last_offset_ = start;
  ++batches_read_;
  return b;
}

TraceHeader read_trace_header(const std::string& path) { return TraceReader(path).header(); }

// ---------------------------------------------------------------------------------------------------------
// A trace file as a RoutingSource

namespace {

class TraceFileSource : public RoutingSource {
 public:
  TraceFileSource(const std::string& path, const RoutingParams& params) : path_(path), params_(params) {
    TraceReader reader(path);
    header_ = reader.header();
    const TraceHeader& h = header_;
    const int ranks = params.topology.size();
    if (h.num_ranks < ranks)
      throw EplabError(trace_name(path) + " holds routing for " + std::to_string(h.num_ranks) +
                       " source ranks, but the run has " + std::to_string(ranks) + " (" +
                       std::to_string(params.topology.nodes()) + " nodes x " +
                       std::to_string(params.topology.gpus_per_node()) + " GPUs); missing ranks " +
                       std::to_string(h.num_ranks) + ".." + std::to_string(ranks - 1));
    if (params.steps > h.num_steps)
      throw EplabError(trace_name(path) + " holds " + std::to_string(h.num_steps) + " steps, but the run asks for " +
                       std::to_string(params.steps) + "; missing steps " + std::to_string(h.num_steps) + ".." +
                       std::to_string(params.steps - 1));
    if (params.layers > h.num_layers)
      throw EplabError(trace_name(path) + " holds " + std::to_string(h.num_layers) + " layers, but the run asks for " +
                       std::to_string(params.layers) + "; missing layers " + std::to_string(h.num_layers) + ".." +
                       std::to_string(params.layers - 1));
    if (h.shape.topk != params.shape.topk)
      throw EplabError(trace_name(path) + " was recorded with top-" + std::to_string(h.shape.topk) +
                       " routing (model '" + h.shape.name + "'), but the run's model '" + params.shape.name +
                       "' routes top-" + std::to_string(params.shape.topk) + "; run it with the trace's model");
    offsets_.assign(static_cast<size_t>(h.num_batches()), kMissing);
    // One pass over the file: framing, grid coverage and expert ids are all checked before the run starts.
    while (auto b = reader.next()) {
      const uint64_t at = reader.batch_offset();
      try {
        validate_batch(*b, params.shape.num_experts,
                       (trace_name(path) + " (batch at byte " + std::to_string(at) + ")").c_str());
      } catch (const EplabError& e) {
        throw EplabError(std::string(e.what()) + " (the trace header says model '" + h.shape.name + "' with " +
                         std::to_string(h.shape.num_experts) + " experts; the run uses '" + params.shape.name + "')");
      }
      uint64_t& slot = offsets_[index(b->step, b->layer, b->src_rank)];
      if (slot != kMissing)
        throw EplabError(trace_name(path) + ": step " + std::to_string(b->step) + ", layer " +
                         std::to_string(b->layer) + ", rank " + std::to_string(b->src_rank) + " appears twice (bytes " +
                         std::to_string(slot) + " and " + std::to_string(at) + ")");
      slot = at;
    }
    for (int s = 0; s < h.num_steps; ++s)
      for (int l = 0; l < h.num_layers; ++l)
        for (int r = 0; r < h.num_ranks; ++r)
          if (offsets_[index(s, l, r)] == kMissing)
            throw EplabError(trace_name(path) + " has no batch for step " + std::to_string(s) + ", layer " +
                             std::to_string(l) + ", rank " + std::to_string(r) + " (its header promises " +
                             std::to_string(h.num_steps) + " steps x " + std::to_string(h.num_layers) + " layers x " +
                             std::to_string(h.num_ranks) + " ranks)");
    file_size_ = reader.file_size();
    in_.open(path, std::ios::binary);
    if (!in_) throw EplabError(open_error(path, "reading"));
  }

  std::string name() const override { return "trace:" + path_; }
  int num_steps() const override { return header_.num_steps; }
  int num_layers() const override { return header_.num_layers; }

  RoutingBatch batch(int step, int layer, int rank) override {
    auto missing = [&](const char* what, int v, int n) {
      if (v < 0 || v >= n)
        throw EplabError(trace_name(path_) + " has no " + what + " " + std::to_string(v) + " (it holds " + what +
                         "s 0.." + std::to_string(n - 1) + ")");
    };
    missing("step", step, header_.num_steps);
    missing("layer", layer, header_.num_layers);
    missing("rank", rank, header_.num_ranks);
    uint64_t offset = offsets_[index(step, layer, rank)];
    const uint64_t start = offset;
    std::string body;
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_.clear();
      in_.seekg(static_cast<std::streamoff>(offset));
      if (!read_framed(in_, offset, file_size_, path_, body, "record"))
        throw EplabError(trace_name(path_) + ": batch at byte " + std::to_string(start) + " vanished (file changed?)");
    }
    pb::Record rec;
    if (!rec.ParseFromString(body) || !rec.has_batch())
      throw EplabError(trace_name(path_) + ": corrupt record at byte " + std::to_string(start) +
                       " (file changed since open?)");
    return from_proto(rec.batch());
  }

 private:
  static constexpr uint64_t kMissing = ~0ull;
  size_t index(int s, int l, int r) const {
    return (static_cast<size_t>(s) * header_.num_layers + l) * header_.num_ranks + r;
  }

  std::string path_;
  RoutingParams params_;
  TraceHeader header_;
  std::vector<uint64_t> offsets_;
  uint64_t file_size_ = 0;
  std::mutex mu_;
  std::ifstream in_;
};

}  // namespace

std::unique_ptr<RoutingSource> open_trace(const std::string& path, const RoutingParams& params) {
  return std::make_unique<TraceFileSource>(path, params);
}

}  // namespace eplab
