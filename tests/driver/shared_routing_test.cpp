// SharedRoutingSource, the in-process routing cache: whatever it hands out (kept, prefetched or passed
// through) is the batch the source itself gives for that (step, layer, rank).
#include "traces/shared_routing.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "engine/error.hpp"

namespace eplab {
namespace {

// Batches that name their (step, layer, rank) in their expert ids; counts the calls it serves.
class CountingSource : public RoutingSource {
 public:
  explicit CountingSource(bool concurrent) : concurrent_(concurrent) {}
  std::string name() const override { return "counting"; }
  bool concurrent() const override { return concurrent_; }
  RoutingBatch batch(int step, int layer, int rank) override {
    ++calls;
    RoutingBatch b;
    b.step = step;
    b.layer = layer;
    b.src_rank = rank;
    b.num_tokens = 1;
    b.topk = 3;
    b.topk_idx = {step, layer, rank};
    b.topk_weights = {1, 1, 1};
    return b;
  }
  std::atomic<int> calls{0};

 private:
  bool concurrent_;
};

void expect_batch_of(const RoutingBatch& b, int step, int layer, int rank) {
  EXPECT_EQ(b.topk_idx, (std::vector<int32_t>{step, layer, rank}));
}

TEST(SharedRoutingSource, PrefetchGeneratesACallOnceForEveryRank) {
  auto inner = std::make_shared<CountingSource>(true);
  SharedRoutingSource shared(inner, 8, true);
  for (int step = 0; step < 2; ++step)
    for (int r = 7; r >= 0; --r) expect_batch_of(shared.batch(step, 1, r), step, 1, r);
  EXPECT_EQ(inner->calls, 16);                      // one prefetch of 8 per call, nothing more
  expect_batch_of(shared.batch(1, 1, 3), 1, 1, 3);  // asked again: generated again, the same batch
}

// With the run's steps and layers, the next call is generated in the background while this one is used (on a
// machine with one usable core, synchronously): either way every batch is the source's, and each call of the run
// is generated exactly once, the last one's look-ahead included (there is none past the end).
TEST(SharedRoutingSource, LookAheadHandsOutTheSameBatchesAndGeneratesEachCallOnce) {
  auto inner = std::make_shared<CountingSource>(true);
  {
    SharedRoutingSource shared(inner, 4, true, 3, 2);
    for (int step = 0; step < 3; ++step)
      for (int layer = 0; layer < 2; ++layer)
        for (int r = 0; r < 4; ++r) expect_batch_of(shared.batch(step, layer, r), step, layer, r);
  }
  EXPECT_EQ(inner->calls, 3 * 2 * 4);
  // A call the run skips (asked out of order): the look-ahead of it is dropped, what is asked is still right.
  auto again = std::make_shared<CountingSource>(true);
  SharedRoutingSource shared(again, 4, true, 3, 2);
  for (int r = 0; r < 4; ++r) expect_batch_of(shared.batch(0, 0, r), 0, 0, r);
  for (int r = 0; r < 4; ++r) expect_batch_of(shared.batch(2, 1, r), 2, 1, r);
  for (int r = 0; r < 4; ++r) expect_batch_of(shared.batch(0, 1, r), 0, 1, r);
}

TEST(SharedRoutingSource, KeptBatchesGoOutOnceThenComeFromTheSource) {
  auto inner = std::make_shared<CountingSource>(false);
  SharedRoutingSource shared(inner, 4, false);
  RoutingBatch kept = inner->batch(2, 0, 1);
  shared.keep(2, 0, 1, std::move(kept));
  expect_batch_of(shared.batch(2, 0, 1), 2, 0, 1);
  EXPECT_EQ(inner->calls, 1);
  expect_batch_of(shared.batch(2, 0, 1), 2, 0, 1);
  expect_batch_of(shared.batch(2, 0, 2), 2, 0, 2);
  EXPECT_EQ(inner->calls, 3);
}

TEST(SharedRoutingSource, ThreadsGetTheirOwnBatches) {
  auto inner = std::make_shared<CountingSource>(false);  // not concurrent: the decorator serializes calls
  SharedRoutingSource shared(inner, 8, false);
  std::vector<std::thread> threads;
  std::vector<int> wrong(8, 0);
  for (int r = 0; r < 8; ++r)
    threads.emplace_back([&, r] {
      for (int step = 0; step < 50; ++step)
        wrong[r] += shared.batch(step, 0, r).topk_idx != std::vector<int32_t>{step, 0, r};
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(wrong, std::vector<int>(8, 0));
  EXPECT_EQ(inner->calls, 400);
}

TEST(SharedRoutingSource, PrefetchNeedsAConcurrentSource) {
  EXPECT_THROW(SharedRoutingSource(std::make_shared<CountingSource>(false), 4, true), EplabError);
}

}  // namespace
}  // namespace eplab
