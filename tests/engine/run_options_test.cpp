// The run option table: command-line text and config files set the same fields with the same checks, a config
// file round-trips, and the backend-dependent defaults apply only where nothing named the option.
#include "driver/run_options.hpp"

#include <gtest/gtest.h>

#include <string>

#include "tests/engine/error_of.hpp"

namespace eplab {
namespace {

const RunOption& option(const std::string& key) {
  for (const auto& o : run_options())
    if (o.field.key == key) return o;
  throw EplabError("no option " + key);
}

TEST(RunOptions, FlagsAreTheKeysWithDashes) {
  EXPECT_EQ(option("gpus_per_node").flag, "gpus-per-node");
  EXPECT_EQ(option("layout_cache").flag, "layout-cache");
  EXPECT_EQ(option("timeout_s").flag, "timeout");
}

TEST(RunOptions, CommandLineTextIsConvertedAndChecked) {
  RunConfig cfg;
  set_run_option_text(cfg, option("tokens"), "128");
  set_run_option_text(cfg, option("timeout_s"), "2.5");
  set_run_option_text(cfg, option("overlap_allreduce"), "0");
  set_run_option_text(cfg, option("seed"), "18446744073709551615");
  set_run_option_text(cfg, option("routing"), "zipf:1.2");
  EXPECT_EQ(cfg.tokens, 128);
  EXPECT_EQ(cfg.timeout_s, 2.5);
  EXPECT_FALSE(cfg.overlap_allreduce);
  EXPECT_EQ(cfg.seed, 18446744073709551615ull);
  EXPECT_EQ(cfg.routing, "zipf:1.2");
  EXPECT_EQ(error_of([&] { set_run_option_text(cfg, option("tokens"), "many"); }),
            "--tokens: expected an integer >= 1, got \"many\"");
  EXPECT_EQ(error_of([&] { set_run_option_text(cfg, option("tokens"), "1.5"); }),
            "--tokens: expected an integer >= 1, got 1.5");
  EXPECT_EQ(error_of([&] { set_run_option_text(cfg, option("verify"), "maybe"); }),
            "--verify: expected true or false, got \"maybe\"");
  EXPECT_NE(error_of([&] {
              set_run_option_text(cfg, option("algorithm"), "ring");
            }).find("--algorithm: unknown algorithm 'ring'"),
            std::string::npos);
}

// Found by fuzz_run_option (fuzz/corpus/fuzz_run_option/crash-invalid-utf8): command-line bytes that are not UTF-8
// made the error message itself throw nlohmann's type_error in place of the error naming the option.
TEST(RunOptions, TextThatIsNotUtf8IsRefusedByName) {
  RunConfig cfg = default_run_config();
  EXPECT_EQ(error_of([&] { set_run_option_text(cfg, option("tokens"), "\xff\xff" "60"); }),
            "--tokens: expected an integer >= 1, got \"\xef\xbf\xbd\xef\xbf\xbd" "60\"");
  EXPECT_EQ(error_of([&] { set_run_option_text(cfg, option("timeout_s"), "\xc3"); }).rfind("--timeout: expected", 0), 0u);
}

TEST(RunOptions, ConfigRoundTripsAndNamesBadKeys) {
  RunConfig cfg = default_run_config();
  cfg.tokens = 77;
  cfg.layout_cache = 3;
  cfg.verify = false;
  const nlohmann::json j = run_config_to_json(cfg);
  RunConfig back;
  EXPECT_EQ(read_run_config(j, "test", back).size(), run_options().size());
  EXPECT_EQ(run_config_to_json(back), j);
  EXPECT_EQ(error_of([&] {
              read_run_config({{"tokenz", 1}}, "config file 'r.json'", back);
            }).rfind("config file 'r.json': unknown option 'tokenz' (known: backend, cluster,", 0),
            0u);
  EXPECT_EQ(error_of([&] {
              read_run_config({{"nodes", -1}}, "config file 'r.json'", back);
            }),
            "config file 'r.json': option 'nodes': expected an integer >= 0, got -1");
}

TEST(RunOptions, EmuDefaultsApplyOnlyWhereNothingNamedTheOption) {
  RunConfig cfg;
  cfg.backend = "emu";
  apply_backend_defaults(cfg, {"tokens"});
  EXPECT_EQ(cfg.nodes, 2);
  EXPECT_EQ(cfg.tokens, RunConfig{}.tokens);
  RunConfig sim;
  sim.backend = "sim";
  apply_backend_defaults(sim, {});
  EXPECT_EQ(sim.nodes, 0);
}

}  // namespace
}  // namespace eplab
