// SharedRoutingSource, the in-process routing cache: whatever it hands out (kept, prefetched or passed
// through) is the batch the source itself gives for that (step, layer, rank).
#include "traces/shared_routing.hpp"

#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
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

// The first of layer 1's batches each other thread takes waits (up to 10 s) until the thread that asks for
// layer 1 has generated one of them: the look-ahead job finishes in time only if the asking thread joins it
// rather than waiting for it. The last rank of layer 1 fails.
class HeldBackSource : public RoutingSource {
 public:
  explicit HeldBackSource(std::thread::id asker) : asker_(asker) {}
  std::string name() const override { return "held back"; }
  bool concurrent() const override { return true; }
  RoutingBatch batch(int step, int layer, int rank) override {
    if (layer == 1 && rank == 255) throw EplabError("no batch for rank 255 of layer 1");
    if (layer == 1) {
      std::unique_lock<std::mutex> lock(mu_);
      if (std::this_thread::get_id() == asker_) {
        ++by_asker;
        cv_.notify_all();
      } else if (waited_.insert(std::this_thread::get_id()).second) {
        cv_.wait_for(lock, std::chrono::seconds(10), [&] { return by_asker > 0; });
      }
    }
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
  int by_asker = 0;  // under mu_

 private:
  std::thread::id asker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::thread::id> waited_;  // each other thread waits at its first batch only
};

TEST(SharedRoutingSource, TheAskingThreadJoinsTheLookAheadAndItsErrorsReachIt) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < 2)
    GTEST_SKIP() << "one usable core: no look-ahead";
  auto inner = std::make_shared<HeldBackSource>(std::this_thread::get_id());
  SharedRoutingSource shared(inner, 256, true, 1, 2);
  for (int r = 0; r < 256; ++r) expect_batch_of(shared.batch(0, 0, r), 0, 0, r);  // starts layer 1 ahead
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(shared.batch(0, 1, 0), EplabError);  // the last rank failed, on whichever thread generated it
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));  // nobody waited out the 10 s
  EXPECT_GT(inner->by_asker, 0);
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
