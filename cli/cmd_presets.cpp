// `eplab presets`: the cluster and model presets, backends and algorithms this build knows.
#include <cstdio>

#include "cli/args.hpp"
#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"

namespace eplab::cli {
namespace {

int cmd_presets(const std::vector<std::string>& argv) {
  Args args("eplab presets", "List cluster and model presets, backends and algorithms.");
  if (!args.parse(argv)) return 0;
  std::printf("clusters:\n");
  for (auto& n : cluster_preset_names()) {
    const ClusterSpec c = cluster_preset(n);
    std::printf("  %-11s %3d nodes x %d GPUs  %s\n", n.c_str(), c.nodes, c.gpus_per_node, c.description.c_str());
  }
  std::printf("models:\n");
  for (auto& n : model_preset_names()) {
    const MoeShape m = model_preset(n);
    std::printf("  %-13s %3d experts, top-%d, hidden %d, ffn %d, max %d nodes/token, dispatch %s, combine %s\n",
                n.c_str(), m.num_experts, m.topk, m.hidden, m.expert_ffn, m.max_nodes_per_token,
                m.dispatch_codec.c_str(), m.combine_codec.c_str());
  }
  std::printf("backends:");
  for (auto& n : backend_names()) std::printf(" %s", n.c_str());
  std::printf("\nalgorithms:");
  for (auto& n : algorithm_names()) std::printf(" %s", n.c_str());
  std::printf("\n");
  return 0;
}

}  // namespace

EPLAB_COMMAND("presets", "list cluster and model presets, backends, algorithms", cmd_presets);

}  // namespace eplab::cli
