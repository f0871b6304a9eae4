// What every fuzz target shares: a scratch file for the inputs eplab reads from a path, the rule that a refusal
// is an EplabError or CodecError (anything else escaping is a crash for libFuzzer), and the small model and
// cluster the targets run specs against.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/error.hpp"
#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab::fuzz {

// A path of this process's own under $TMPDIR (or /tmp), ending in `suffix`; the same on every call.
std::string scratch_path(const std::string& suffix);
void write_file(const std::string& path, const uint8_t* data, size_t size);

// Runs f. EplabError and CodecError are how eplab refuses bad input, so they end the run quietly; any other
// exception (std::out_of_range, nlohmann's type_error, bad_alloc, ...) escapes and libFuzzer reports it.
template <class F>
void refused_or_done(F&& f) {
  try {
    f();
  } catch (const EplabError&) {
  } catch (const CodecError&) {
  }
}

// An invariant of eplab's own output failed (e.g. a file eplab wrote does not read back): print and abort.
[[noreturn]] void invariant_failed(const std::string& what);

// 16 experts, top-4, hidden 64: big enough for every policy to do real work, small enough to run fast.
MoeShape small_model();
// 2 nodes x 2 GPUs.
Topology small_cluster();

// The codecs fuzz_codec_decode decodes with (its input's first byte indexes this list): every built-in stage,
// transforms and byte compressors behind a quantizer, plus a few longer chains.
std::vector<std::string> decode_specs();
// The header of a fuzz_codec_decode input: codec index, tokens (< 16) and hidden size (1..512).
std::vector<uint8_t> decode_input_header(size_t spec_index, int tokens, int hidden);

}  // namespace eplab::fuzz
