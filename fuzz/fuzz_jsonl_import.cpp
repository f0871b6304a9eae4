// The JSONL routing-log importer (traces/trace_tools.*): the bytes are the log `eplab trace import` reads. A log
// it accepts must give a trace that reads back whole.
#include <cstdint>

#include "fuzz/fuzz_util.hpp"
#include "traces/trace_tools.hpp"

using namespace eplab;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string in = fuzz::scratch_path(".jsonl");
  static const std::string out = fuzz::scratch_path("-import.eptrace");
  fuzz::write_file(in, data, size);
  JsonlImportOptions opts;
  opts.jsonl_path = in;
  opts.shape = fuzz::small_model();
  opts.topology = fuzz::small_cluster();
  bool imported = false;
  TraceHeader header;
  fuzz::refused_or_done([&] {
    header = import_jsonl(opts, out);
    imported = true;
  });
  if (!imported) return 0;
  try {
    const TraceSummary s = summarize_trace(out);
    if (s.num_batches != static_cast<uint64_t>(header.num_batches()))
      fuzz::invariant_failed("the imported trace holds " + std::to_string(s.num_batches) + " batches, its header " +
                             std::to_string(header.num_batches()));
  } catch (const EplabError& e) {
    fuzz::invariant_failed(std::string("an imported trace does not read back: ") + e.what());
  }
  return 0;
}
