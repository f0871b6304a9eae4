#include "engine/moe_shape.hpp"

#include <sstream>

#include "engine/error.hpp"

namespace eplab {

std::vector<std::string> model_preset_names() { return {"deepseek-v3", "mixtral-8x7b", "qwen-moe"}; }

MoeShape model_preset(const std::string& name) {
  MoeShape m;
  m.name = name;
  if (name == "deepseek-v3") {
    // DeepSeek-V3/R1: 256 routed experts, top-8, at most 4 nodes per token; FP8 dispatch, BF16 combine.
    m.num_experts = 256;
    m.topk = 8;
    m.hidden = 7168;
    m.expert_ffn = 2048;
    m.max_nodes_per_token = 4;
    m.num_expert_groups = 8;  // n_group in the published config (topk_group 4)
    m.num_layers = 58;
    m.dispatch_codec = "fp8-e4m3-b128";
    m.combine_codec = "bf16";
    m.dense_params = 1.87e8;  // MLA attention + norms per layer (about 11B non-expert weights over 61 layers)
    return m;
  }
  if (name == "mixtral-8x7b") {  // no expert groups (1)
    m.num_experts = 8;
    m.topk = 2;
    m.hidden = 4096;
    m.expert_ffn = 14336;
    m.max_nodes_per_token = 0;
    m.num_layers = 32;
    m.dispatch_codec = "bf16";
    m.combine_codec = "bf16";
    m.dense_params = 4096.0 * (4096 + 1024 + 1024 + 4096);  // GQA attention projections
    return m;
  }
  if (name == "qwen-moe") {
    // Shaped like Qwen3-30B-A3B: many small experts, top-8, no expert groups (1).
    m.num_experts = 128;
    m.topk = 8;
    m.hidden = 2048;
    m.expert_ffn = 768;
    m.max_nodes_per_token = 0;
    m.num_layers = 48;
    m.dispatch_codec = "bf16";
    m.combine_codec = "bf16";
    m.dense_params = 2048.0 * (4096 + 512 + 512 + 4096);
    return m;
  }
  std::ostringstream os;
  os << "unknown model preset '" << name << "' (known:";
  for (auto& n : model_preset_names()) os << ' ' << n;
  os << ')';
  throw EplabError(os.str());
}

}  // namespace eplab
