// `eplab presets`: the cluster and model presets, and every registry's entries (backends, algorithms, policies)
// with their one-line help; `--dump NAME` prints a preset as the JSON file `--cluster` / `--model` read.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "cli/args.hpp"
#include "engine/backend.hpp"
#include "engine/ep_engine.hpp"
#include "engine/error.hpp"
#include "engine/moe_shape.hpp"
#include "engine/spec_json.hpp"
#include "engine/topology.hpp"
#include "policies/balance/balancer.hpp"
#include "policies/heat/heat_predictor.hpp"
#include "policies/replica/replica_selector.hpp"
#include "policies/routing/router.hpp"

namespace eplab::cli {
namespace {

bool contains(const std::vector<std::string>& names, const std::string& n) {
  return std::find(names.begin(), names.end(), n) != names.end();
}

template <class R>
void print_registry(const char* title, const R& registry) {
  std::printf("%s:\n%s", title, registry.help().c_str());
}

int cmd_presets(const std::vector<std::string>& argv) {
  std::string dump;
  Args args("eplab presets [--dump NAME]",
            "List cluster and model presets, backends, algorithms and policies; --dump NAME prints a cluster or\n"
            "model preset as the JSON file that --cluster FILE.json / --model FILE.json read (docs/specs.md).");
  args.opt("dump", &dump, "print this cluster or model preset as JSON");
  if (!args.parse(argv)) return 0;
  if (!dump.empty()) {
    if (contains(cluster_preset_names(), dump)) {
      std::cout << cluster_to_json(cluster_preset(dump)).dump(2) << "\n";
    } else if (contains(model_preset_names(), dump)) {
      std::cout << model_to_json(model_preset(dump)).dump(2) << "\n";
    } else {
      std::string known;
      for (const auto& n : cluster_preset_names()) known += " " + n;
      for (const auto& n : model_preset_names()) known += " " + n;
      throw EplabError("eplab presets --dump: no cluster or model preset '" + dump + "' (known:" + known + ")");
    }
    return 0;
  }
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
  print_registry("backends", backend_registry());
  print_registry("algorithms", algorithm_registry());
  print_registry("balancers (--balancer)", balancer_registry());
  print_registry("heat predictors (--heat; also oracle: the step's own load)", heat_predictor_registry());
  print_registry("replica selectors (--replica-selection)", replica_selector_registry());
  print_registry("routers (--routing router:SPEC)", router_registry());
  std::printf("codecs: eplab codec list\n");
  return 0;
}

}  // namespace

EPLAB_COMMAND("presets", "list presets, backends, algorithms and policies; --dump NAME prints a preset as JSON",
              cmd_presets);

}  // namespace eplab::cli
