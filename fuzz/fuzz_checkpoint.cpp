// The checkpoint reader (driver/checkpoint.*): the bytes are a checkpoint file as `eplab run --resume` reads it,
// and, so that mutations reach past the envelope's hash, also a checkpoint body wrapped in a valid envelope. Each
// rank's codec state that parses is loaded into the stateful codecs. Invariant: an accepted checkpoint writes
// back to bytes that read again as the same checkpoint.
#include <cstdint>
#include <string>

#include "driver/checkpoint.hpp"
#include "driver/proto/eplab_checkpoint.pb.h"
#include "fuzz/fuzz_util.hpp"

using namespace eplab;

namespace {

void read_back(std::span<const uint8_t> bytes) {
  const Checkpoint c = parse_checkpoint(bytes, "fuzz input");
  for (const RankCheckpoint& r : c.ranks)
    for (const char* spec : {"delta+bf16", "delta:period=3+fp8-e4m3-b128", "topk:ratio=0.25,ef=1+bf16"})
      fuzz::refused_or_done(
          [&] { create_codec(spec)->load_state(r.dispatch_codec_state.data(), r.dispatch_codec_state.size()); });
  const std::string again = serialize_checkpoint(c);
  const Checkpoint c2 =
      parse_checkpoint({reinterpret_cast<const uint8_t*>(again.data()), again.size()}, "fuzz input written back");
  if (serialize_checkpoint(c2) != again) fuzz::invariant_failed("a checkpoint written back reads differently");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::refused_or_done([&] { read_back({data, size}); });
  checkpoint::Envelope env;
  env.set_format("eplab-checkpoint");
  env.set_version(kCheckpointVersion);
  env.set_body(std::string(reinterpret_cast<const char*>(data), size));
  env.set_body_hash(checkpoint_body_hash(env.body()));
  const std::string wrapped = env.SerializeAsString();
  fuzz::refused_or_done([&] { read_back({reinterpret_cast<const uint8_t*>(wrapped.data()), wrapped.size()}); });
  return 0;
}
