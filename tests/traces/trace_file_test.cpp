// The trace file format: bit-exact round trips, random access through open_trace, and every way a file can
// be wrong (missing, truncated at any byte, corrupt, unfinished, too small for the run, ids beyond the model).
#include "traces/trace_file.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>

#include "engine/error.hpp"
#include "tests/traces/test_util.hpp"
#include "traces/trace_tools.hpp"

namespace eplab {
namespace {

using testing::error_of;
using testing::params;
using testing::temp_path;

TraceHeader small_header(int steps, int layers, int ranks, bool gate) {
  TraceHeader h;
  h.shape = model_preset("mixtral-8x7b");  // 8 experts, top-2
  h.cluster = "test";
  h.nodes = 1;
  h.gpus_per_node = ranks;
  h.num_steps = steps;
  h.num_layers = layers;
  h.num_ranks = ranks;
  h.tokens_per_rank = 5;
  h.has_gate_scores = gate;
  h.provenance = {"handmade", 42, "", "trace_file_test", "", ""};
  return h;
}

// Awkward values on purpose: -1 slots, denormals, negative zero, huge and tiny weights, a rank with no tokens.
RoutingBatch handmade_batch(int step, int layer, int rank, bool gate) {
  RoutingBatch b;
  b.step = step;
  b.layer = layer;
  b.src_rank = rank;
  b.topk = 2;
  b.num_tokens = rank == 1 ? 0 : 5;
  for (int t = 0; t < b.num_tokens; ++t) {
    b.topk_idx.push_back((t + step + layer) % 8);
    b.topk_idx.push_back(t == 3 ? -1 : (t + rank + 3) % 8);
    b.topk_weights.push_back(t == 0 ? 1e-42f : 0.1f * (t + 1) + layer);
    b.topk_weights.push_back(t == 1 ? -0.0f : 3.4e38f / (t + 1));
    if (gate)
      for (int e = 0; e < 8; ++e) b.gate_scores.push_back(0.01f * e + 1.0f / (t + 3));
  }
  return b;
}

void expect_bit_equal(const RoutingBatch& a, const RoutingBatch& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.layer, b.layer);
  EXPECT_EQ(a.src_rank, b.src_rank);
  EXPECT_EQ(a.num_tokens, b.num_tokens);
  EXPECT_EQ(a.topk, b.topk);
  EXPECT_EQ(a.topk_idx, b.topk_idx);
  ASSERT_EQ(a.topk_weights.size(), b.topk_weights.size());
  ASSERT_EQ(a.gate_scores.size(), b.gate_scores.size());
  // memcmp of empty vectors would pass null pointers (undefined even for zero bytes).
  EXPECT_TRUE(a.topk_weights.empty() ||
              std::memcmp(a.topk_weights.data(), b.topk_weights.data(), a.topk_weights.size() * sizeof(float)) == 0);
  EXPECT_TRUE(a.gate_scores.empty() ||
              std::memcmp(a.gate_scores.data(), b.gate_scores.data(), a.gate_scores.size() * sizeof(float)) == 0);
}

std::string write_handmade(const std::string& path, int steps, int layers, int ranks, bool gate = true) {
  TraceWriter w(path, small_header(steps, layers, ranks, gate));
  for (int s = 0; s < steps; ++s)
    for (int l = 0; l < layers; ++l)
      for (int r = 0; r < ranks; ++r) w.write(handmade_batch(s, l, r, gate));
  w.close();
  return path;
}

RoutingParams mixtral_params(int ranks) { return params("mixtral-8x7b", 1, ranks, 5); }

TEST(TraceFile, RoundTripIsBitExact) {
  const std::string path = write_handmade(temp_path("rt.eptrace"), 2, 3, 4);
  TraceReader reader(path);
  const TraceHeader& h = reader.header();
  EXPECT_EQ(h.format_version, kTraceFormatVersion);
  EXPECT_EQ(h.shape.name, "mixtral-8x7b");
  EXPECT_EQ(h.shape.num_experts, 8);
  EXPECT_EQ(h.shape.topk, 2);
  EXPECT_EQ(h.shape.hidden, 4096);
  EXPECT_EQ(h.num_steps, 2);
  EXPECT_EQ(h.num_layers, 3);
  EXPECT_EQ(h.num_ranks, 4);
  EXPECT_TRUE(h.has_gate_scores);
  EXPECT_EQ(h.provenance.generator, "handmade");
  EXPECT_EQ(h.provenance.seed, 42u);
  EXPECT_EQ(h.provenance.created_by, "trace_file_test");
  EXPECT_EQ(h.provenance.tool_version, eplab_version());
  int n = 0;
  for (int s = 0; s < 2; ++s)
    for (int l = 0; l < 3; ++l)
      for (int r = 0; r < 4; ++r) {
        auto b = reader.next();
        ASSERT_TRUE(b.has_value());
        expect_bit_equal(*b, handmade_batch(s, l, r, true));
        ++n;
      }
  EXPECT_FALSE(reader.next().has_value());
  EXPECT_FALSE(reader.next().has_value());  // stays at the end
  EXPECT_EQ(n, 24);
}

TEST(TraceFile, WriteReadWriteGivesTheSameBytes) {
  const std::string a = write_handmade(temp_path("a.eptrace"), 1, 2, 3);
  const std::string b = temp_path("b.eptrace");
  TraceReader reader(a);
  TraceWriter w(b, reader.header());
  while (auto batch = reader.next()) w.write(*batch);
  w.close();
  EXPECT_EQ(testing::read_bytes(a), testing::read_bytes(b));
}

TEST(TraceFile, OpenTraceServesBatchesInAnyOrder) {
  const std::string path = write_handmade(temp_path("ra.eptrace"), 2, 2, 3);
  auto src = make_routing("trace:" + path, mixtral_params(3));
  EXPECT_EQ(src->name(), "trace:" + path);
  EXPECT_EQ(src->num_steps(), 2);
  EXPECT_EQ(src->num_layers(), 2);
  for (int s = 1; s >= 0; --s)
    for (int r = 2; r >= 0; --r)
      for (int l = 0; l < 2; ++l) expect_bit_equal(src->batch(s, l, r), handmade_batch(s, l, r, true));
  const std::string msg = error_of([&] { src->batch(2, 0, 0); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("no step 2"), std::string::npos) << msg;
}

// Emulated ranks are threads that each ask the same source for their own batches.
TEST(TraceFile, OpenTraceIsSafeAcrossThreads) {
  const std::string path = write_handmade(temp_path("mt.eptrace"), 3, 3, 4);
  auto src = open_trace(path, mixtral_params(4));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int r = 0; r < 4; ++r)
    threads.emplace_back([&, r] {
      for (int rep = 0; rep < 20; ++rep)
        for (int s = 0; s < 3; ++s)
          for (int l = 0; l < 3; ++l) {
            const RoutingBatch got = src->batch(s, l, r), want = handmade_batch(s, l, r, true);
            mismatches += got.topk_idx != want.topk_idx || got.topk_weights != want.topk_weights;
          }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(TraceFile, GeneratedTraceMatchesItsGenerator) {
  TraceGenOptions opts;
  opts.routing = "zipf:1.1";
  opts.params = params("deepseek-v3", 2, 4, 16, 99);
  opts.steps = 2;
  opts.layers = 2;
  const std::string path = temp_path("gen.eptrace");
  generate_trace(opts, path);
  auto gen = make_routing("zipf:1.1", opts.params);
  auto file = make_routing("trace:" + path, opts.params);
  for (int s = 0; s < 2; ++s)
    for (int l = 0; l < 2; ++l)
      for (int r = 0; r < 8; ++r) expect_bit_equal(file->batch(s, l, r), gen->batch(s, l, r));
  const TraceHeader h = read_trace_header(path);
  EXPECT_EQ(h.provenance.generator, "zipf:1.1");
  EXPECT_EQ(h.provenance.seed, 99u);
  EXPECT_EQ(h.cluster, "h800-cx7");
  EXPECT_EQ(h.nodes, 2);
  EXPECT_EQ(h.gpus_per_node, 4);
}

TEST(TraceFile, SummaryCountsLoads) {
  const std::string path = write_handmade(temp_path("sum.eptrace"), 1, 1, 2, false);
  const TraceSummary s = summarize_trace(path);
  EXPECT_EQ(s.num_batches, 2u);
  EXPECT_EQ(s.num_tokens, 5u);  // rank 1 holds no tokens
  EXPECT_EQ(s.min_batch_tokens, 0);
  EXPECT_EQ(s.max_batch_tokens, 5);
  EXPECT_EQ(s.selections, 9u);
  EXPECT_EQ(s.empty_slots, 1u);
  uint64_t total = 0;
  for (uint64_t x : s.expert_load) total += x;
  EXPECT_EQ(total, 9u);
  const std::string text = format_trace_summary(s);
  EXPECT_NE(text.find("mixtral-8x7b"), std::string::npos) << text;
  EXPECT_NE(text.find("handmade"), std::string::npos) << text;
}

TEST(TraceFileErrors, MissingFileIsNamed) {
  const std::string path = temp_path("does-not-exist.eptrace");
  std::string msg = error_of([&] { TraceReader r(path); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("no such file"), std::string::npos) << msg;
  msg = error_of([&] { make_routing("trace:" + path, mixtral_params(1)); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

// Cutting the file at every byte must give an error naming the file and a byte offset: never a crash, a
// hang, or a silently shorter trace.
TEST(TraceFileErrors, TruncationAtEveryByteIsReported) {
  const std::string full = write_handmade(temp_path("full.eptrace"), 1, 2, 2);
  const std::string bytes = testing::read_bytes(full);
  const std::string cut = temp_path("cut.eptrace");
  for (size_t len = 0; len < bytes.size(); ++len) {
    testing::write_text(cut, bytes.substr(0, len));
    const std::string msg = error_of([&] {
      TraceReader r(cut);
      while (r.next()) {
      }
    });
    EXPECT_NE(msg.find(cut), std::string::npos) << "cut at " << len << ": " << msg;
    if (len >= 8) EXPECT_NE(msg.find("byte"), std::string::npos) << "cut at " << len << ": " << msg;
    const std::string msg2 = error_of([&] { open_trace(cut, mixtral_params(2)); });
    EXPECT_NE(msg2.find(cut), std::string::npos) << "cut at " << len << ": " << msg2;
  }
}

TEST(TraceFileErrors, CutAtARecordBoundarySaysUnfinished) {
  const std::string path = temp_path("unfinished.eptrace");
  {
    TraceWriter w(path, small_header(1, 1, 2, false));
    w.write(handmade_batch(0, 0, 0, false));
    // destroyed without close(): no end marker
  }
  const std::string msg = error_of([&] { open_trace(path, mixtral_params(2)); });
  EXPECT_NE(msg.find("end-of-trace marker"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1 of 2 batches"), std::string::npos) << msg;
}

TEST(TraceFileErrors, CorruptRecordNamesItsOffset) {
  const std::string path = write_handmade(temp_path("corrupt.eptrace"), 1, 1, 1, false);
  std::string bytes = testing::read_bytes(path);
  TraceReader probe(path);
  const uint64_t first_record = probe.offset();
  // Keep the length prefix, garble the body: 0xff bytes are not a valid protobuf tag sequence.
  for (size_t i = first_record + 1; i < first_record + 8; ++i) bytes[i] = static_cast<char>(0xff);
  testing::write_text(path, bytes);
  const std::string msg = error_of([&] {
    TraceReader r(path);
    r.next();
  });
  EXPECT_NE(msg.find("corrupt record at byte " + std::to_string(first_record)), std::string::npos) << msg;
}

TEST(TraceFileErrors, NotATraceAndFutureVersion) {
  const std::string path = temp_path("notatrace.eptrace");
  testing::write_text(path, "{\"layer\": 0}\n");
  std::string msg = error_of([&] { TraceReader r(path); });
  EXPECT_NE(msg.find("not an eplab trace"), std::string::npos) << msg;
  testing::write_text(path, std::string("EPLTRACE\x09\0\0\0", 12));
  msg = error_of([&] { TraceReader r(path); });
  EXPECT_NE(msg.find("format version 9"), std::string::npos) << msg;
}

TEST(TraceFileErrors, TrailingBytesAfterTheEnd) {
  const std::string path = write_handmade(temp_path("trailing.eptrace"), 1, 1, 1);
  std::ofstream(path, std::ios::binary | std::ios::app) << "junk";
  const std::string msg = error_of([&] { open_trace(path, mixtral_params(1)); });
  EXPECT_NE(msg.find("unexpected bytes after the end marker"), std::string::npos) << msg;
}

TEST(TraceFileErrors, ExpertIdsBeyondTheRunsModel) {
  // A deepseek-v3 trace (256 experts) served to a run whose model has 64 experts and the same top-8.
  TraceGenOptions opts;
  opts.routing = "uniform";
  opts.params = params("deepseek-v3", 1, 2, 64);
  opts.steps = 1;
  opts.layers = 2;
  const std::string path = temp_path("big-ids.eptrace");
  generate_trace(opts, path);
  RoutingParams run = opts.params;
  run.shape.name = "small-moe";
  run.shape.num_experts = 64;
  const std::string msg = error_of([&] { open_trace(path, run); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("step 0, layer 0, rank 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("token "), std::string::npos) << msg;
  EXPECT_NE(msg.find("experts 0..63"), std::string::npos) << msg;
}

TEST(TraceFileErrors, WriterRejectsIdsBeyondItsHeader) {
  TraceWriter w(temp_path("w.eptrace"), small_header(1, 1, 1, false));
  RoutingBatch b = handmade_batch(0, 0, 0, false);
  b.topk_idx[3] = 8;
  const std::string msg = error_of([&] { w.write(b); });
  EXPECT_NE(msg.find("token 1 selects expert 8"), std::string::npos) << msg;
  b = handmade_batch(0, 0, 0, false);
  b.src_rank = 1;
  EXPECT_NE(error_of([&] { w.write(b); }).find("src_rank 1 is outside"), std::string::npos);
}

TEST(TraceFileErrors, TraceSmallerThanTheRun) {
  const std::string path = write_handmade(temp_path("small.eptrace"), 2, 3, 4);
  RoutingParams p = mixtral_params(8);
  std::string msg = error_of([&] { open_trace(path, p); });
  EXPECT_NE(msg.find("4 source ranks, but the run has 8"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing ranks 4..7"), std::string::npos) << msg;
  p = mixtral_params(4);
  p.steps = 5;
  msg = error_of([&] { open_trace(path, p); });
  EXPECT_NE(msg.find("holds 2 steps, but the run asks for 5"), std::string::npos) << msg;
  p.steps = 2;
  p.layers = 4;
  msg = error_of([&] { open_trace(path, p); });
  EXPECT_NE(msg.find("missing layers 3..3"), std::string::npos) << msg;
  p.layers = 3;
  EXPECT_NO_THROW(open_trace(path, p));
}

TEST(TraceFileErrors, GridHoleAndDuplicate) {
  const std::string hole = temp_path("hole.eptrace");
  {
    TraceWriter w(hole, small_header(1, 1, 3, false));
    w.write(handmade_batch(0, 0, 0, false));
    w.write(handmade_batch(0, 0, 2, false));
    w.close();
  }
  std::string msg = error_of([&] { open_trace(hole, mixtral_params(3)); });
  EXPECT_NE(msg.find("no batch for step 0, layer 0, rank 1"), std::string::npos) << msg;
  const std::string dup = temp_path("dup.eptrace");
  {
    TraceWriter w(dup, small_header(1, 1, 1, false));
    w.write(handmade_batch(0, 0, 0, false));
    w.write(handmade_batch(0, 0, 0, false));
    w.close();
  }
  msg = error_of([&] { open_trace(dup, mixtral_params(1)); });
  EXPECT_NE(msg.find("appears twice"), std::string::npos) << msg;
}

// A hand-encoded file of about 60 bytes: preamble, a header with the given grid (mixtral-like, 8 experts,
// top-2), and an end marker counting no batches. Written byte by byte because TraceWriter refuses such headers.
std::string crafted_grid_trace(const std::string& path, int64_t steps, int64_t layers, int64_t ranks) {
  auto varint = [](uint64_t v) {
    std::string out;
    do {
      out += static_cast<char>((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
      v >>= 7;
    } while (v);
    return out;
  };
  auto field = [&](int number, uint64_t v) { return varint(static_cast<uint64_t>(number) << 3) + varint(v); };
  auto message = [&](int number, const std::string& body) {
    return varint((static_cast<uint64_t>(number) << 3) | 2) + varint(body.size()) + body;
  };
  const std::string shape = field(2, 8) + field(3, 2) + field(4, 64);
  const std::string header =
      field(1, 1) + message(2, shape) + field(4, steps) + field(5, layers) + field(6, ranks) + field(7, 4);
  const std::string end = message(2, "");
  testing::write_text(
      path, std::string("EPLTRACE\x01\0\0\0", 12) + varint(header.size()) + header + varint(end.size()) + end);
  return path;
}

// A header whose steps x layers x ranks overflows 64 bits (or promises far more batches than the file holds)
// is refused by every reader, naming the file and the fields, before any table is sized from it.
TEST(TraceFileErrors, HeaderGridThatOverflowsOrCannotFitIsRefused) {
  const std::string overflow = crafted_grid_trace(temp_path("overflow.eptrace"), INT32_MAX, 65536, INT32_MAX);
  EXPECT_LT(testing::read_bytes(overflow).size(), 100u);
  for (const std::string& msg :
       {error_of([&] { TraceReader r(overflow); }), error_of([&] { summarize_trace(overflow); }),
        error_of([&] { open_trace(overflow, mixtral_params(4)); })}) {
    EXPECT_NE(msg.find(overflow), std::string::npos) << msg;
    EXPECT_NE(msg.find("num_steps x num_layers x num_ranks"), std::string::npos) << msg;
    EXPECT_NE(msg.find("overflow 64 bits"), std::string::npos) << msg;
  }
  const std::string huge = crafted_grid_trace(temp_path("huge.eptrace"), 1000, 1000, 1000);
  for (const std::string& msg :
       {error_of([&] { TraceReader r(huge); }), error_of([&] { open_trace(huge, mixtral_params(4)); })}) {
    EXPECT_NE(msg.find(huge), std::string::npos) << msg;
    EXPECT_NE(msg.find("1000000000 batches) cannot fit"), std::string::npos) << msg;
  }
  // Per-field bounds: an expert or layer count no model comes near.
  const std::string layers = crafted_grid_trace(temp_path("layers.eptrace"), 0, INT32_MAX, 4);
  EXPECT_NE(error_of([&] { summarize_trace(layers); }).find("num_layers is 2147483647"), std::string::npos);
  // The same grids through a well-formed file stay fine: an empty grid with a few layers reads back.
  const std::string empty = crafted_grid_trace(temp_path("empty.eptrace"), 0, 3, 4);
  EXPECT_EQ(summarize_trace(empty).layer_max_over_mean.size(), 3u);
}

TEST(TraceFileErrors, TopkMismatchNamesBothModels) {
  const std::string path = write_handmade(temp_path("topk.eptrace"), 1, 1, 1);
  const std::string msg = error_of([&] { open_trace(path, params("deepseek-v3", 1, 1, 5)); });
  EXPECT_NE(msg.find("top-2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("top-8"), std::string::npos) << msg;
  EXPECT_NE(msg.find("deepseek-v3"), std::string::npos) << msg;
}

TEST(TraceSamples, EverySampleOpensAndSummarizes) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(EPLAB_TRACE_SAMPLES_DIR)) {
    if (entry.path().extension() != ".eptrace") continue;
    ++n;
    const TraceSummary s = summarize_trace(entry.path().string());
    EXPECT_GT(s.num_tokens, 0u) << entry.path();
    EXPECT_EQ(static_cast<int64_t>(s.num_batches), s.header.num_batches()) << entry.path();
    EXPECT_LT(s.file_bytes, 64u * 1024) << entry.path() << " should stay a small sample";
  }
  EXPECT_GE(n, 3);
}

}  // namespace
}  // namespace eplab
