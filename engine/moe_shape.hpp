// The MoE layer shape that decides message sizes and expert compute: experts, top-k, hidden size,
// node limit per token, and the wire formats of dispatch and combine (codec specs).
#pragma once

#include <string>
#include <vector>

namespace eplab {

struct MoeShape {
  std::string name;
  int num_experts = 256;  // routed experts (logical)
  int topk = 8;
  int hidden = 7168;
  int expert_ffn = 2048;        // expert intermediate size (FFN width)
  int max_nodes_per_token = 4;  // node-limited routing (DeepSeek-V3: 4); 0 = unlimited
  // Expert groups (DeepSeek-V3's n_group: 8): contiguous blocks of experts that the eplb balancer keeps on one
  // node when they divide evenly over the nodes. 1: no grouping.
  int num_expert_groups = 1;
  int num_layers = 58;  // MoE layers in the model
  std::string dispatch_codec = "fp8-e4m3-b128";
  std::string combine_codec = "bf16";
  double dense_params = 0;  // non-expert parameters per layer (for data-parallel gradient all-reduce)
};

std::vector<std::string> model_preset_names();
MoeShape model_preset(const std::string& name);  // deepseek-v3, mixtral-8x7b, qwen-moe

}  // namespace eplab
