// Cluster and model files (engine/spec_json.*): the bytes are a --cluster/--model JSON file. The first byte
// says which ('c' or anything else: model). An accepted spec must dump (`eplab presets --dump`) and read back.
#include <cstdint>
#include <string>

#include "engine/json_fields.hpp"
#include "engine/spec_json.hpp"
#include "fuzz/fuzz_util.hpp"

using namespace eplab;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool cluster = data[0] == 'c';
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  fuzz::refused_or_done([&] {
    const nlohmann::json j = fields::parse(text, "fuzz.json");
    nlohmann::json dumped;
    if (cluster) {
      const ClusterSpec c = cluster_from_json(j, "cluster file 'fuzz.json'");
      const Topology topo(c);
      if (topo.size() > 0) topo.distance(0, topo.size() - 1);
      dumped = cluster_to_json(c);
    } else {
      dumped = model_to_json(model_from_json(j, "model file 'fuzz.json'"));
    }
    nlohmann::json again;
    try {
      again = cluster ? cluster_to_json(cluster_from_json(dumped, "dump")) : model_to_json(model_from_json(dumped, "dump"));
    } catch (const EplabError& e) {
      fuzz::invariant_failed(std::string("an accepted spec does not read back: ") + e.what());
    }
    if (again != dumped) fuzz::invariant_failed("an accepted spec reads back different: " + dumped.dump());
  });
  return 0;
}
