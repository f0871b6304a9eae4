// Writes the generated part of the seed corpora (fuzz/corpus/<target>/seed-*): valid inputs the fuzzers mutate
// from, made by eplab's own writers so they stay valid when a format changes. The hand-written seeds beside them
// are kept as they are. Usage: fuzz_make_seeds CORPUS_DIR (scripts/fuzz.sh --seeds runs it).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "driver/checkpoint.hpp"
#include "driver/run_options.hpp"
#include "engine/spec_json.hpp"
#include "fuzz/fuzz_util.hpp"
#include "traces/trace_tools.hpp"

using namespace eplab;
namespace fs = std::filesystem;

namespace {

void put(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out << bytes;
  if (!out) throw EplabError("cannot write " + (dir / name).string());
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds CORPUS_DIR\n");
    return 2;
  }
  const fs::path root = argv[1];
  try {
    // Traces: two small generated ones, one with gate scores.
    for (const std::string routing : {"uniform", "zipf:1.2"}) {
      TraceGenOptions g;
      g.routing = routing;
      g.params = {fuzz::small_model(), fuzz::small_cluster(), 3, 1, 0, 0};
      g.steps = 2;
      g.layers = 2;
      g.created_by = "fuzz_make_seeds";
      const std::string tmp = fuzz::scratch_path(".eptrace");
      generate_trace(g, tmp);
      put(root / "fuzz_trace_reader", "seed-" + routing.substr(0, routing.find(':')) + ".eptrace", slurp(tmp));
      fs::remove(tmp);
    }
    // Run configs: the defaults as --dump-config writes them; one option at a time as typed.
    put(root / "fuzz_run_config", "seed-defaults.json", run_config_to_json(default_run_config()).dump(1));
    const auto& options = run_options();
    const nlohmann::json defaults = run_config_to_json(default_run_config());
    for (size_t i = 0; i < options.size(); ++i) {
      const nlohmann::json& v = defaults.at(options[i].field.key);
      put(root / "fuzz_run_option", "seed-" + options[i].flag,
          std::string(1, static_cast<char>(i)) + (v.is_string() ? v.get<std::string>() : v.dump()));
    }
    // Cluster and model files: every preset as `eplab presets --dump` writes it.
    for (const std::string& name : cluster_preset_names())
      put(root / "fuzz_cluster_model", "seed-cluster-" + name, "c" + cluster_to_json(cluster_preset(name)).dump(1));
    for (const std::string& name : model_preset_names())
      put(root / "fuzz_cluster_model", "seed-model-" + name, "m" + model_to_json(model_preset(name)).dump(1));
    // A checkpoint: two emulated ranks with delta codecs stopped after one of two steps, as --checkpoint writes it.
    {
      RunConfig c = default_run_config();
      c.backend = "emu";
      c.nodes = 1;
      c.gpus_per_node = 2;
      c.model = "mixtral-8x7b";
      c.hidden = 16;
      c.tokens = 4;
      c.steps = 2;
      c.dispatch_codec = c.combine_codec = "delta+bf16";
      c.checkpoint = fuzz::scratch_path(".ckpt");
      c.stop_after_steps = 1;
      run_experiment(c);
      put(root / "fuzz_checkpoint", "seed-emu-delta.ckpt", slurp(c.checkpoint));
      fs::remove(c.checkpoint);
      // And one that holds a departed rank: four ranks, rank 1's GPU failing at step 0.
      c.nodes = 2;
      c.algorithm = "flat";
      c.redundant_experts = 4;
      c.faults = {"gpu:1@step:0"};
      c.detect_timeout_s = 0.01;
      run_experiment(c);
      put(root / "fuzz_checkpoint", "seed-emu-departed.ckpt", slurp(c.checkpoint));
      fs::remove(c.checkpoint);
    }
    // Codec messages: two rows of activations encoded by each codec, at hidden 64 and 130 (a partial block).
    const std::vector<std::string> specs = fuzz::decode_specs();
    for (size_t i = 0; i < specs.size(); ++i) {
      for (int hidden : {64, 130}) {
        constexpr int kTokens = 2;
        std::vector<float> x(kTokens * hidden);
        for (size_t j = 0; j < x.size(); ++j) x[j] = std::sin(0.11f * static_cast<float>(j)) * (j % 9 == 0 ? 5.f : 1.f);
        std::vector<uint8_t> wire = fuzz::decode_input_header(i, kTokens, hidden);
        create_codec(specs[i])->encode(x.data(), kTokens, hidden, wire, 3);
        std::string name = "seed-" + specs[i] + "-h" + std::to_string(hidden);
        for (char& c : name)
          if (c == ':' || c == '+' || c == '=' || c == ',') c = '_';
        put(root / "fuzz_codec_decode", name, std::string(wire.begin(), wire.end()));
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
