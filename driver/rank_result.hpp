// One rank's result of a run: everything rank 0 needs to verify the run and build its report. The rank
// program returns it, and it reaches rank 0 as bytes through the fabric, so ranks may be separate processes.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "driver/faults.hpp"
#include "driver/reference.hpp"
#include "driver/report.hpp"
#include "driver/timeline.hpp"
#include "driver/training.hpp"
#include "engine/fabric.hpp"
#include "engine/layout_cache.hpp"
#include "engine/payload_ledger.hpp"

namespace eplab {

struct RankResult {
  int32_t rank = -1;
  RankRecord record;
  StepRecord steps;
  std::vector<double> layer_time_s;      // per call: dispatch start to combine end on this rank
  std::vector<double> migration_time_s;  // per call: the weight migration round (modeled time only, else 0)
  std::vector<int32_t> call_slot_load;   // [call * slots + slot]: selections this rank sent to the slot
  DeliveryLog deliveries;                // verifying: digests of what this rank sent and received, per call and peer
  // verifying: the fabric's per (tag, peer) counts and checksums of every message, both ways; phantom runs: the
  // messages and bytes this rank entered in the process's PayloadTally
  PayloadLog payloads;
  LayoutCacheStats layout_cache;
  std::vector<TimelineSpan> spans;  // only when the run writes a timeline and samples this rank
  FaultCounts faults;               // injected faults (driver/faults.hpp): zero without --fault
};

// Encoding: "EPRR", a uint32 version (kRankResultVersion), then the fields in declaration order; numbers as
// their host bytes (little-endian; every rank of a run runs the same build), vectors and strings as a uint64
// count then their elements, structs field by field. The same result always gives the same bytes.
constexpr uint32_t kRankResultVersion = 6;
std::vector<uint8_t> encode_rank_result(const RankResult& r);
// Throws EplabError naming `from_rank` and the field for bytes that are truncated, of another version, or
// longer than the result they hold.
RankResult decode_rank_result(std::span<const uint8_t> bytes, int from_rank);

// Collective over the live ranks (Fabric::mark_failed): every one passes its result; the lowest live rank (rank 0
// unless it failed) gets a vector of every rank's in rank order, failed ranks' left empty, the others an empty
// vector. Runs after the measured work (point-to-point messages tagged Phase::kUser, real bytes even where
// payloads are phantom); the fabric's phase is "gather" during it. Throws FabricError past timeout_s.
std::vector<RankResult> gather_rank_results(Fabric& f, RankResult mine, double timeout_s);

}  // namespace eplab
