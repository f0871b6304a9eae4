// The ibverbs device layer where there is no RDMA device (every machine this project has run on): opening one
// is refused with a message that says what is missing and what to use instead.
#include <gtest/gtest.h>

#include <string>

#include "engine/error.hpp"

#ifdef EPLAB_HAVE_VERBS
#include "verbs/verbs_device.hpp"
#endif

namespace eplab {
namespace {

TEST(VerbsDevice, RefusesClearlyWithoutAnRdmaDevice) {
#ifndef EPLAB_HAVE_VERBS
  GTEST_SKIP() << "built without libibverbs (EPLAB_WITH_VERBS=OFF)";
#else
  if (!verbs::device_names().empty())
    GTEST_SKIP() << "this machine has an RDMA device (" << verbs::device_names().front()
                 << "); the refusal is for machines without one";
  try {
    verbs::Device dev;
    FAIL() << "opened a device although libibverbs lists none";
  } catch (const FabricError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("no RDMA device found"), std::string::npos) << m;
    EXPECT_NE(m.find("soft-RoCE"), std::string::npos) << m;
  }
#endif
}

}  // namespace
}  // namespace eplab
