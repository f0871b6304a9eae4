// The cached-layout LRU on its own: hits refresh recency, the least recently used entry goes first, capacity 0
// keeps nothing, and the routing hash tells routings apart.
#include "engine/layout_cache.hpp"

#include <gtest/gtest.h>

namespace eplab {
namespace {

LayoutCache::Entry entry(uint64_t key) { return {key, key * 7, {static_cast<uint32_t>(key)}, 1e-6 * key}; }

TEST(LayoutCache, EvictsTheLeastRecentlyUsed) {
  LayoutCache c(3);
  c.insert(entry(1));
  c.insert(entry(2));
  c.insert(entry(3));
  EXPECT_EQ(c.keys(), (std::vector<uint64_t>{3, 2, 1}));
  ASSERT_NE(c.find(1), nullptr);  // 1 becomes the most recent, so 2 is now the oldest
  EXPECT_EQ(c.keys(), (std::vector<uint64_t>{1, 3, 2}));
  c.insert(entry(4));
  EXPECT_EQ(c.keys(), (std::vector<uint64_t>{4, 1, 3}));
  EXPECT_EQ(c.find(2), nullptr);
  const LayoutCache::Entry* e = c.find(3);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->counts, (std::vector<uint32_t>{3}));
  EXPECT_EQ(e->own_hash, 21u);
  EXPECT_EQ(c.keys(), (std::vector<uint64_t>{3, 4, 1}));
}

TEST(LayoutCache, ReinsertingAKeyReplacesItWithoutGrowing) {
  LayoutCache c(2);
  c.insert(entry(1));
  c.insert(entry(2));
  LayoutCache::Entry e = entry(1);
  e.counts = {99};
  c.insert(e);
  EXPECT_EQ(c.size(), 2);
  EXPECT_EQ(c.keys(), (std::vector<uint64_t>{1, 2}));
  EXPECT_EQ(c.find(1)->counts, (std::vector<uint32_t>{99}));
}

TEST(LayoutCache, CapacityZeroKeepsNothing) {
  LayoutCache c(0);
  c.insert(entry(1));
  EXPECT_EQ(c.size(), 0);
  EXPECT_EQ(c.find(1), nullptr);
}

TEST(LayoutCache, RoutingHashSeesEverySlotAndTheShape) {
  std::vector<int32_t> a = {0, 5, -1, 7}, b = {0, 5, 7, -1};
  const uint64_t ha = LayoutCache::routing_hash(2, 2, a.data());
  EXPECT_EQ(ha, LayoutCache::routing_hash(2, 2, a.data()));
  EXPECT_NE(ha, LayoutCache::routing_hash(2, 2, b.data()));
  EXPECT_NE(ha, LayoutCache::routing_hash(1, 4, a.data()));
}

}  // namespace
}  // namespace eplab
