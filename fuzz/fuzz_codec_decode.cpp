// Every codec's decode of arbitrary bytes (policies/codecs/): what a receiver does with a message off the wire.
// Byte 0 picks the codec (every built-in stage, transforms and byte compressors behind a quantizer), bytes 1-3
// the message's tokens (0..15) and hidden size (1..512); the rest is the message. Decoding must succeed or throw
// CodecError/EplabError, and never touch memory outside `out` or allocate without bound.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.hpp"
#include "policies/codecs/codec.hpp"

using namespace eplab;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<std::string> specs = fuzz::decode_specs();
  if (size < 4) return 0;
  const std::string& spec = specs[data[0] % specs.size()];
  const int tokens = data[1] % 16;
  const int hidden = 1 + (data[2] | (data[3] & 1) << 8);
  std::unique_ptr<Codec> codec = create_codec(spec);
  std::vector<float> out(static_cast<size_t>(tokens) * hidden);
  for (int round = 0; round < 2; ++round)  // twice: a stateful codec decodes the second against the first
    fuzz::refused_or_done([&] { codec->decode(data + 4, size - 4, tokens, hidden, out.data(), 3); });
  return 0;
}
