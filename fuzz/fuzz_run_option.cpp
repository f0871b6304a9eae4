// `eplab run` options as typed on a command line (driver/run_options.*): the first byte picks the option, the
// rest is the text given to it.
#include <cstdint>
#include <string>

#include "driver/run_options.hpp"
#include "fuzz/fuzz_util.hpp"

using namespace eplab;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const auto& options = run_options();
  const RunOption& option = options[data[0] % options.size()];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  RunConfig cfg = default_run_config();
  fuzz::refused_or_done([&] { set_run_option_text(cfg, option, text); });
  return 0;
}
