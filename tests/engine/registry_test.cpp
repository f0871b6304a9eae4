// The registry template: lookups, errors that list the known names, help text, run-time entries beside
// built-ins, and left-out built-ins that say how to enable them; then the backend registry this build made.
#include "engine/registry.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>

#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "tests/engine/error_of.hpp"

namespace eplab {
namespace {

using Maker = std::function<int()>;

EPLAB_REGISTRY(Maker, test_registry, "widget", r) {
  r.add("one", "returns one", [] { return 1; });
  r.add(
      "two", "returns two, scaled", [] { return 2; }, "two[:scale=S]");
  r.add_missing("gpu", "reconfigure with -DWIDGET_GPU=ON");
}

TEST(Registry, FindsBuiltinsInRegistrationOrder) {
  EXPECT_EQ(test_registry().by_name("one")(), 1);
  EXPECT_EQ(test_registry().by_name("two")(), 2);
  EXPECT_EQ(test_registry().names(), (std::vector<std::string>{"one", "two"}));  // "gpu" is not built
  EXPECT_FALSE(test_registry().find("gpu").has_value());
  EXPECT_FALSE(test_registry().find("three").has_value());
}

TEST(Registry, UnknownNameListsTheKnownOnesWithTheirSyntax) {
  const std::string msg = error_of([] { test_registry().by_name("three"); });
  EXPECT_NE(msg.find("unknown widget 'three'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("one, two[:scale=S], gpu (not built)"), std::string::npos) << msg;
}

TEST(Registry, LeftOutBuiltinSaysHowToEnableIt) {
  const std::string msg = error_of([] { test_registry().by_name("gpu"); });
  EXPECT_EQ(msg, "widget 'gpu' is not built in: reconfigure with -DWIDGET_GPU=ON");
}

TEST(Registry, HelpHasOneAlignedLinePerEntry) {
  EXPECT_EQ(test_registry().help(),
            "  one            returns one\n"
            "  two[:scale=S]  returns two, scaled\n"
            "  gpu            (not built in) reconfigure with -DWIDGET_GPU=ON\n");
}

TEST(Registry, RunTimeEntriesSitBesideBuiltinsWithoutShadowingThem) {
  auto& r = test_registry();
  r.add_user(
      "zeta", [] { return 26; }, ":");
  r.add_user(
      "alpha", [] { return 1; }, ":");
  r.add_user(
      "alpha", [] { return 11; }, ":");  // registering again replaces
  EXPECT_EQ(r.by_name("alpha")(), 11);
  EXPECT_EQ(r.user_names(), (std::vector<std::string>{"alpha", "zeta"}));
  EXPECT_EQ(r.names(), (std::vector<std::string>{"one", "two"}));
  EXPECT_NE(error_of([&] {
              r.add_user(
                  "one", [] { return 0; }, ":");
            }).find("is a built-in widget"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              r.add_user(
                  "gpu", [] { return 0; }, ":");
            }).find("is a built-in widget"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              r.add_user(
                  "a:b", [] { return 0; }, ":");
            }).find("without ':'"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              r.add_user(
                  "", [] { return 0; }, ":");
            }).find("non-empty"),
            std::string::npos);
  EXPECT_NE(error_of([&] { r.add_user("empty", Maker{}, ":"); }).find("factory is empty"), std::string::npos);
  r.remove_user("alpha");
  r.remove_user("zeta");
  r.remove_user("one");  // a built-in is never removed
  EXPECT_TRUE(r.user_names().empty());
  EXPECT_EQ(r.by_name("one")(), 1);
}

TEST(Registry, BuiltinRegisteredTwiceIsRefused) {
  EXPECT_NE(error_of([] { test_registry().add("one", "again", [] { return 3; }); }).find("registered twice"),
            std::string::npos);
}

TEST(BackendRegistry, EveryBackendIsListedAndALeftOutOneExplains) {
  const auto built = backend_names();
  EXPECT_NE(std::find(built.begin(), built.end(), "emu"), built.end());
  for (const char* name : {"sim", "real"}) {
    if (std::find(built.begin(), built.end(), name) != built.end()) {
      EXPECT_EQ(create_backend(name)->name(), name);
    } else {
      const std::string msg = error_of([&] { create_backend(name); });
      EXPECT_NE(msg.find("is not built in"), std::string::npos) << msg;
      EXPECT_NE(msg.find("reconfigure with -DEPLAB_WITH_"), std::string::npos) << msg;
    }
  }
  EXPECT_NE(backend_registry().help().find("emu "), std::string::npos);
}

TEST(AlgorithmRegistry, NamesAndHelp) {
  EXPECT_EQ(algorithm_names(), (std::vector<std::string>{"allgather", "flat", "hierarchical", "low-latency"}));
  const std::string msg = error_of([] { create_algorithm("ring"); });
  EXPECT_NE(msg.find("unknown algorithm 'ring' (known: allgather, flat, hierarchical, low-latency)"), std::string::npos)
      << msg;
  EXPECT_NE(algorithm_registry().help().find("DeepEP normal mode"), std::string::npos);
}

}  // namespace
}  // namespace eplab
