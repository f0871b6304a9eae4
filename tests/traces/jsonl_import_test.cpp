// The JSONL importer: meta lines and extra keys, contiguous rank blocks, padding, layer renumbering, and a
// line-numbered error for each malformed input.
#include <gtest/gtest.h>

#include "engine/error.hpp"
#include "tests/traces/test_util.hpp"
#include "traces/trace_file.hpp"
#include "traces/trace_tools.hpp"

namespace eplab {
namespace {

using testing::error_of;
using testing::temp_path;

JsonlImportOptions mixtral_on(int ranks, const std::string& jsonl, int tokens_per_rank = 0) {
  JsonlImportOptions o;
  o.jsonl_path = jsonl;
  o.shape = model_preset("mixtral-8x7b");  // 8 experts, top-2
  o.topology = testing::cluster(1, ranks);
  o.tokens_per_rank = tokens_per_rank;
  return o;
}

TEST(JsonlImport, MetaLineExtraKeysBlocksAndPadding) {
  const std::string jsonl = temp_path("log.jsonl");
  testing::write_text(
      jsonl,
      "{\"type\": \"meta\", \"model\": \"mixtral\", \"note\": \"from vllm\"}\n"
      "{\"layer\": 5, \"token_idx\": 0, \"topk_ids\": [1, 2], \"topk_weights\": [0.75, 0.25], \"x\": [1]}\n"
      "{\"layer\": 5, \"token_idx\": 3, \"topk_ids\": [7, 0], \"topk_weights\": [0.5, 0.5]}\n"
      "\n"
      "{\"token_idx\": 1, \"layer\": 5, \"topk_ids\": [4], \"topk_weights\": [1.0], \"prompt\": \"hi\"}\n"
      "{\"layer\": 9, \"token_idx\": 2, \"topk_ids\": [3, 6], \"topk_weights\": [0.6, 0.4]}\n");
  const std::string out = temp_path("log.eptrace");
  const TraceHeader h = import_jsonl(mixtral_on(2, jsonl), out);
  EXPECT_EQ(h.num_steps, 1);
  EXPECT_EQ(h.num_layers, 2);
  EXPECT_EQ(h.layer_ids, (std::vector<int>{5, 9}));
  EXPECT_EQ(h.num_ranks, 2);
  EXPECT_EQ(h.tokens_per_rank, 2);  // tokens 0..3 over 2 ranks
  EXPECT_EQ(h.provenance.generator, "import:jsonl");
  EXPECT_EQ(h.provenance.source, "JsonlImport.MetaLineExtraKeysBlocksAndPadding.log.jsonl");
  EXPECT_NE(h.provenance.source_meta.find("from vllm"), std::string::npos);

  JsonlImportOptions o = mixtral_on(2, jsonl);
  RoutingParams p;
  p.shape = o.shape;
  p.topology = o.topology;
  auto src = open_trace(out, p);
  // Layer 5 (trace layer 0): rank 0 holds tokens 0 and 1 (token 1 padded with -1), rank 1 holds token 3.
  RoutingBatch r0 = src->batch(0, 0, 0);
  EXPECT_EQ(r0.num_tokens, 2);
  EXPECT_EQ(r0.topk_idx, (std::vector<int32_t>{1, 2, 4, -1}));
  EXPECT_EQ(r0.topk_weights, (std::vector<float>{0.75f, 0.25f, 1.0f, 0.0f}));
  RoutingBatch r1 = src->batch(0, 0, 1);
  EXPECT_EQ(r1.num_tokens, 1);
  EXPECT_EQ(r1.topk_idx, (std::vector<int32_t>{7, 0}));
  // Layer 9 (trace layer 1): only token 2, on rank 1; rank 0 is empty.
  EXPECT_EQ(src->batch(0, 1, 0).num_tokens, 0);
  EXPECT_EQ(src->batch(0, 1, 1).topk_idx, (std::vector<int32_t>{3, 6}));
}

TEST(JsonlImport, StepsAndExplicitTokensPerRank) {
  const std::string jsonl = temp_path("steps.jsonl");
  testing::write_text(
      jsonl,
      "{\"step\": 10, \"layer\": 0, \"token_idx\": 0, \"topk_ids\": [1, 2], \"topk_weights\": [0.5, 0.5]}\n"
      "{\"step\": 11, \"layer\": 0, \"token_idx\": 5, \"topk_ids\": [3, 4], \"topk_weights\": [0.5, 0.5]}\n");
  const TraceHeader h = import_jsonl(mixtral_on(4, jsonl, 4), temp_path("steps.eptrace"));
  EXPECT_EQ(h.num_steps, 2);
  EXPECT_EQ(h.tokens_per_rank, 4);
  EXPECT_TRUE(h.layer_ids.empty()) << "layer 0 alone needs no renumbering";
  TraceReader reader(temp_path("steps.eptrace"));
  int tokens = 0;
  while (auto b = reader.next()) {
    tokens += b->num_tokens;
    if (b->num_tokens) EXPECT_EQ(b->src_rank, b->step == 0 ? 0 : 1);  // token 5 / 4 tokens per rank = rank 1
  }
  EXPECT_EQ(tokens, 2);
}

struct BadCase {
  const char* name;
  const char* text;
  const char* expect;  // part of the message after "file:LINE: "
  int line;
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class JsonlImportErrors : public ::testing::TestWithParam<BadCase> {};

TEST_P(JsonlImportErrors, NamesFileLineAndProblem) {
  const BadCase& c = GetParam();
  const std::string jsonl = temp_path("bad.jsonl");
  testing::write_text(
      jsonl, std::string("{\"type\": \"meta\"}\n"
                         "{\"layer\": 0, \"token_idx\": 0, \"topk_ids\": [1, 2], \"topk_weights\": [0.5, 0.5]}\n") +
                 c.text);
  const std::string msg = error_of([&] { import_jsonl(mixtral_on(2, jsonl, 4), temp_path("bad.eptrace")); });
  EXPECT_NE(msg.find(jsonl + ":" + std::to_string(c.line) + ":"), std::string::npos) << msg;
  EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, JsonlImportErrors,
    ::testing::Values(
        BadCase{"NotJson", "{\"layer\": 0, \"token_idx\": 1,\n", "not valid JSON", 3},
        BadCase{"NotAnObject", "[1, 2]\n", "expected a JSON object", 3},
        BadCase{"MissingLayer", "{\"token_idx\": 1, \"topk_ids\": [1], \"topk_weights\": [1]}\n", "missing \"layer\"",
                3},
        BadCase{"FloatTokenIdx", "{\"layer\": 0, \"token_idx\": 1.5, \"topk_ids\": [1], \"topk_weights\": [1]}\n",
                "\"token_idx\" is 1.5", 3},
        BadCase{"MissingWeights", "{\"layer\": 0, \"token_idx\": 1, \"topk_ids\": [1]}\n", "missing \"topk_weights\"",
                3},
        BadCase{"LengthMismatch", "{\"layer\": 0, \"token_idx\": 1, \"topk_ids\": [1, 2], \"topk_weights\": [1]}\n",
                "2 topk_ids but 1 topk_weights", 3},
        BadCase{"TooManyIds",
                "{\"layer\": 0, \"token_idx\": 1, \"topk_ids\": [1, 2, 3], \"topk_weights\": [1, 1, 1]}\n",
                "3 expert ids, but model 'mixtral-8x7b' routes top-2", 3},
        BadCase{"IdBeyondExperts",
                "\n{\"layer\": 0, \"token_idx\": 1, \"topk_ids\": [1, 8], \"topk_weights\": [1, 1]}\n",
                "topk_ids[1] is 8, but model 'mixtral-8x7b' has experts 0..7", 4},
        BadCase{"NonFiniteWeight",
                "{\"layer\": 0, \"token_idx\": 1, \"topk_ids\": [1, 2], \"topk_weights\": [1, \"x\"]}\n",
                "topk_weights[1] is \"x\"", 3},
        BadCase{"Duplicate", "{\"layer\": 0, \"token_idx\": 0, \"topk_ids\": [3, 4], \"topk_weights\": [1, 1]}\n",
                "already appeared on line 2", 3},
        BadCase{"BeyondCluster", "{\"layer\": 0, \"token_idx\": 8, \"topk_ids\": [3, 4], \"topk_weights\": [1, 1]}\n",
                "token_idx 8 falls on rank 2, but the cluster has 2 ranks of 4 tokens", 3}),
    [](const auto& info) { return std::string(info.param.name); });

// With tokens per rank chosen by the importer, a token_idx of 2^63-1 once overflowed the block size: the
// import exited 0 having written a trace with 16 of 33 token lines. It must fail, naming the line.
TEST(JsonlImport, HugeTokenIdxIsRefusedNamingItsLine) {
  const std::string jsonl = temp_path("huge.jsonl");
  std::string text;
  for (int t = 0; t < 32; ++t)
    text +=
        "{\"layer\": 0, \"token_idx\": " + std::to_string(t) + ", \"topk_ids\": [1, 2], \"topk_weights\": [1, 1]}\n";
  text += "{\"layer\": 0, \"token_idx\": 9223372036854775807, \"topk_ids\": [1, 2], \"topk_weights\": [1, 1]}\n";
  testing::write_text(jsonl, text);
  const std::string out = temp_path("huge.eptrace");
  std::filesystem::remove(out);
  const std::string msg = error_of([&] { import_jsonl(mixtral_on(2, jsonl), out); });
  EXPECT_NE(msg.find(jsonl + ":33:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("token_idx 9223372036854775807 is too large"), std::string::npos) << msg;
  // Nothing that reads back as a complete trace was left behind.
  EXPECT_FALSE(error_of([&] { summarize_trace(out); }).empty());
}

TEST(JsonlImport, MissingAndEmptyFiles) {
  std::string msg = error_of([&] { import_jsonl(mixtral_on(1, temp_path("nope.jsonl")), temp_path("o.eptrace")); });
  EXPECT_NE(msg.find("no such file"), std::string::npos) << msg;
  const std::string only_meta = temp_path("meta.jsonl");
  testing::write_text(only_meta, "{\"type\": \"meta\"}\n\n");
  msg = error_of([&] { import_jsonl(mixtral_on(1, only_meta), temp_path("o.eptrace")); });
  EXPECT_NE(msg.find("no token records"), std::string::npos) << msg;
}

}  // namespace
}  // namespace eplab
