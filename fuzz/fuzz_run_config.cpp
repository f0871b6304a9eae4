// Run configuration files (driver/run_options.*): the bytes are what `eplab run --config FILE` reads. A config
// it accepts must write out (--dump-config) and read back.
#include <cstdint>
#include <string>

#include "driver/run_options.hpp"
#include "fuzz/fuzz_util.hpp"

using namespace eplab;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  RunConfig cfg = default_run_config();
  bool accepted = false;
  fuzz::refused_or_done([&] {
    read_run_config(fields::parse(text, "config file 'fuzz.json'"), "config file 'fuzz.json'", cfg);
    accepted = true;
  });
  if (!accepted) return 0;
  RunConfig again = default_run_config();
  try {
    read_run_config(run_config_to_json(cfg), "dumped config", again);
  } catch (const EplabError& e) {
    fuzz::invariant_failed(std::string("an accepted config does not read back: ") + e.what());
  }
  if (run_config_to_json(again) != run_config_to_json(cfg))
    fuzz::invariant_failed("an accepted config reads back different: " + run_config_to_json(cfg).dump());
  return 0;
}
