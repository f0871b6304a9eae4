// Routers: turn gate scores into top-k expert choices, the step before dispatch. `node-limited` confines a
// token to the M nodes holding its best experts (DeepSeek-V3's device-limited routing); `bias` adds a
// per-expert bias, for selection only, that auxiliary-loss-free balancing moves toward the mean load.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/registry.hpp"
#include "traces/routing_source.hpp"

namespace eplab {

// One token's choice from `scores` [num_experts] plus `bias` (may be empty; selection only, the weights are
// the raw scores normalized over the chosen k). With nodes > 0 and max_nodes in (0, nodes), experts are
// split contiguously over `nodes` (the static placement's node of each expert), nodes are ranked by their
// best biased score (ties: lower node), and only the top `max_nodes` nodes' experts compete for the top k.
// Writes k ids (descending biased score, ties: lower id) and weights.
void route_token(const float* scores, int num_experts, const std::vector<float>& bias, int topk, int nodes,
                 int max_nodes, int32_t* ids, float* weights);

// A routing source that draws gate scores per token (sigmoid of a skewed per-expert popularity plus noise,
// a pure function of seed, step, layer, rank and token) and routes them. Specs (after "router:"):
//   node-limited[,m=M]   M nodes per token (default: the model's max_nodes_per_token)
//   bias[,gamma=G,m=M]   aux-loss-free balancing: after each step every expert's bias moves +G if its load
//                        (all ranks) is below the mean, -G above (default 0.001); m= adds the node limit
//   topk                 plain top-k of the scores (the baseline)
// and for all: skew=S (popularity exponent, default 1), noise=N (logit noise std, default 1).
// Biases are replayed from step 0 (and cached), so batch(step, ...) stays random-access and deterministic.
std::unique_ptr<RoutingSource> make_router_source(const std::string& spec, const RoutingParams& params);
std::vector<std::string> router_names();
// The router registry (engine/registry.hpp): each entry builds a source from the spec after "router:".
using RouterFactory = std::unique_ptr<RoutingSource> (*)(const std::string& spec, const RoutingParams& params);
Registry<RouterFactory>& router_registry();

}  // namespace eplab
