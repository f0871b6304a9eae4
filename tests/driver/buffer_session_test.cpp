// The session behind eplab.Buffer on the emulator: received rows in DeepEP's order with local expert indices,
// combine's sums, a cached dispatch over the handle, and the configurations it refuses.
#include "driver/buffer_session.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "engine/error.hpp"

namespace eplab {
namespace {

constexpr int kRanks = 4, kExperts = 8, kHidden = 16, kTopk = 2, kTokens = 5;

BufferOptions options(const std::string& algorithm) {
  BufferOptions o;
  o.backend = "emu";
  o.nodes = 2;
  o.gpus_per_node = 2;
  o.num_experts = kExperts;
  o.hidden = kHidden;
  o.algorithm = algorithm;
  o.timeout_s = 20;
  return o;
}

// Rank s, token t selects experts (s + t) % 8 and (s + 3t + 1) % 8 (the second unused on odd tokens);
// row values are small integers, so every sum is exact.
struct Batches {
  std::vector<std::vector<int32_t>> idx;
  std::vector<std::vector<float>> w, x;
  std::vector<BufferRankInput> inputs;
  Batches() : idx(kRanks), w(kRanks), x(kRanks) {
    for (int s = 0; s < kRanks; ++s) {
      for (int t = 0; t < kTokens; ++t) {
        idx[s].push_back((s + t) % kExperts);
        idx[s].push_back(t % 2 ? -1 : (s + 3 * t + 1) % kExperts);
        w[s].push_back(0.25f);
        w[s].push_back(0.75f);
        for (int e = 0; e < kHidden; ++e) x[s].push_back(static_cast<float>(s * 100 + t * 10 + e % 7));
      }
      inputs.push_back({kTokens, idx[s].data(), w[s].data(), BufferRows{x[s].data(), nullptr}});
    }
  }
  // Ranks (experts / 2 per rank) token t of rank s reaches.
  std::vector<int> reached(int s, int t) const {
    std::vector<int> out;
    for (int k = 0; k < kTopk; ++k) {
      const int32_t e = idx[s][t * kTopk + k];
      if (e >= 0 && std::find(out.begin(), out.end(), e / 2) == out.end()) out.push_back(e / 2);
    }
    return out;
  }
};

// Received rows sent with the fp32 codec: its wire format is the floats themselves.
const float* rows_of(const BufferRecv& r) { return reinterpret_cast<const float*>(r.wire.data()); }

class BufferSessionTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BufferSessionTest, RowsInSourceOrderAndCombineSumsThem) {
  BufferSession session(options(GetParam()));
  Batches b;
  std::vector<BufferRecv> recv;
  BufferTime time;
  const auto h = session.dispatch(b.inputs, kTopk, "fp32", recv, time);
  ASSERT_EQ(recv.size(), static_cast<size_t>(kRanks));
  for (int r = 0; r < kRanks; ++r) {
    int row = 0;
    for (int s = 0; s < kRanks; ++s)
      for (int t = 0; t < kTokens; ++t) {
        const std::vector<int> to = b.reached(s, t);
        if (std::find(to.begin(), to.end(), r) == to.end()) continue;
        ASSERT_LT(row, recv[r].rows());
        EXPECT_EQ(recv[r].src_rank[row], s);
        EXPECT_EQ(recv[r].src_token[row], t);
        EXPECT_EQ(rows_of(recv[r])[row * kHidden + 3], b.x[s][t * kHidden + 3]);
        for (int k = 0; k < kTopk; ++k) {
          const int32_t e = b.idx[s][t * kTopk + k];
          const bool mine = e >= 0 && e / 2 == r;
          EXPECT_EQ(recv[r].topk_idx[row * kTopk + k], mine ? e - 2 * r : -1);
          EXPECT_EQ(recv[r].topk_weights[row * kTopk + k], mine ? b.w[s][t * kTopk + k] : 0.f);
        }
        ++row;
      }
    EXPECT_EQ(row, recv[r].rows());
  }
  // Every rank sends its rows back unchanged: each token comes back times the ranks it reached.
  std::vector<BufferRows> rows;
  for (const BufferRecv& r : recv) rows.push_back(BufferRows{rows_of(r), nullptr});
  std::vector<std::vector<float>> out;
  session.combine(*h, rows, "fp32", out, time);
  for (int s = 0; s < kRanks; ++s)
    for (int t = 0; t < kTokens; ++t)
      for (int e = 0; e < kHidden; ++e)
        EXPECT_EQ(out[s][t * kHidden + e], b.x[s][t * kHidden + e] * static_cast<float>(b.reached(s, t).size()));
}

TEST_P(BufferSessionTest, CachedDispatchMovesNewRowsAlongTheSameLayout) {
  BufferSession session(options(GetParam()));
  Batches b;
  std::vector<BufferRecv> first, again;
  BufferTime time;
  const auto h = session.dispatch(b.inputs, kTopk, "fp32", first, time);
  for (auto& x : b.x)
    for (float& v : x) v += 1;
  session.dispatch_cached(*h, b.inputs, "fp32", again, time);
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(again[r].rows(), first[r].rows());
    EXPECT_EQ(again[r].src_token, first[r].src_token);
    ASSERT_EQ(again[r].wire.size(), static_cast<size_t>(first[r].rows()) * kHidden * sizeof(float));
    for (int i = 0; i < first[r].rows() * kHidden; ++i) EXPECT_EQ(rows_of(again[r])[i], rows_of(first[r])[i] + 1);
  }
  b.inputs[1].num_tokens = kTokens - 1;
  EXPECT_THROW(session.dispatch_cached(*h, b.inputs, "fp32", again, time), EplabError);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, BufferSessionTest, ::testing::Values("flat", "hierarchical", "allgather"));

TEST(BufferSession, RefusesWhatDeepEPsNormalModeCannotExpress) {
  EXPECT_THROW(BufferSession(options("low-latency")), EplabError);  // per-selection rows, weighted at the source
  BufferOptions uneven = options("flat");
  uneven.num_experts = 6;  // does not divide over 4 ranks
  EXPECT_THROW(BufferSession{uneven}, EplabError);
  BufferSession session(options("flat"));
  Batches b;
  b.idx[2][3] = kExperts;  // outside -1..7
  std::vector<BufferRecv> recv;
  BufferTime time;
  EXPECT_THROW(session.dispatch(b.inputs, kTopk, "fp32", recv, time), EplabError);
}

}  // namespace
}  // namespace eplab
