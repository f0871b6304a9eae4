// Delivery verification by per-(call, rank pair) digests: equal logs pass whatever the arrival order; a
// dropped, duplicated or altered selection fails and the first differing (call, source, destination) is named.
#include <gtest/gtest.h>

#include "driver/reference.hpp"

namespace eplab {
namespace {

// Two ranks, two calls; rank 0 sends tokens 0..n-1 of each call to rank 1 (slot 5) and rank 1 one to rank 0.
struct Logs {
  DeliveryLog r0, r1;
  explicit Logs(int n = 4) {
    r0.resize(2, 2);
    r1.resize(2, 2);
    for (int call = 0; call < 2; ++call) {
      for (int t = 0; t < n; ++t) r0.sent_to(call, 1).add(t, 5);
      for (int t = n - 1; t >= 0; --t) r1.got_from(call, 0).add(t, 5);  // arrival order differs
      r1.sent_to(call, 0).add(7, 2);
      r0.got_from(call, 1).add(7, 2);
    }
  }
  DeliveryCheck check() const { return check_deliveries({&r0, &r1}); }
};

TEST(DeliveryCheck, EqualLogsPassInAnyArrivalOrder) {
  const DeliveryCheck c = Logs().check();
  EXPECT_TRUE(c.ok);
  EXPECT_EQ(c.selections, 10u);
  EXPECT_EQ(c.mismatched_pairs, 0u);
}

TEST(DeliveryCheck, ADroppedSelectionIsMissingAndNamed) {
  Logs l;
  l.r1.got_from(1, 0) = {};
  for (int t = 0; t < 3; ++t) l.r1.got_from(1, 0).add(t, 5);  // token 3 of call 1 never arrived
  const DeliveryCheck c = l.check();
  EXPECT_FALSE(c.ok);
  EXPECT_EQ(c.missing, 1u);
  EXPECT_EQ(c.extra, 0u);
  EXPECT_EQ(c.mismatched_pairs, 1u);
  EXPECT_EQ(c.first.call, 1);
  EXPECT_EQ(c.first.src, 0);
  EXPECT_EQ(c.first.dest, 1);
  EXPECT_EQ(c.first.sent, 4u);
  EXPECT_EQ(c.first.got, 3u);
}

TEST(DeliveryCheck, ADuplicateIsExtra) {
  Logs l;
  l.r0.got_from(0, 1).add(7, 2);
  const DeliveryCheck c = l.check();
  EXPECT_FALSE(c.ok);
  EXPECT_EQ(c.extra, 1u);
  EXPECT_EQ(c.first.call, 0);
  EXPECT_EQ(c.first.src, 1);
  EXPECT_EQ(c.first.dest, 0);
}

TEST(DeliveryCheck, TheRightCountWithAWrongTokenOrSlotFails) {
  for (int wrong_slot : {0, 1}) {
    Logs l;
    l.r1.got_from(0, 0) = {};
    for (int t = 0; t < 4; ++t) l.r1.got_from(0, 0).add(t == 2 && !wrong_slot ? 9 : t, t == 2 && wrong_slot ? 6 : 5);
    const DeliveryCheck c = l.check();
    EXPECT_FALSE(c.ok) << wrong_slot;
    EXPECT_EQ(c.mismatched_pairs, 1u);
    EXPECT_EQ(c.missing + c.extra, 0u);  // counts agree; the contents do not
  }
}

TEST(DeliveryCheck, LogsOfAnotherShapeAreAnError) {
  Logs l;
  l.r1.resize(3, 2);
  EXPECT_THROW(l.check(), EplabError);
}

}  // namespace
}  // namespace eplab
