#include "fuzz/fuzz_util.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace eplab::fuzz {

std::string scratch_path(const std::string& suffix) {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/eplab-fuzz-" + std::to_string(getpid()) + suffix;
}

void write_file(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out) invariant_failed("cannot write the scratch file " + path);
}

void invariant_failed(const std::string& what) {
  std::fprintf(stderr, "eplab fuzz: invariant failed: %s\n", what.c_str());
  std::abort();
}

MoeShape small_model() {
  MoeShape m = model_preset("mixtral-8x7b");
  m.name = "fuzz";
  m.num_experts = 16;
  m.topk = 4;
  m.hidden = 64;
  m.expert_ffn = 32;
  m.max_nodes_per_token = 2;
  m.num_expert_groups = 1;
  m.num_layers = 2;
  return m;
}

std::vector<std::string> decode_specs() {
  std::vector<std::string> specs;
  for (const CodecInfo& info : codec_catalog()) {
    if (info.kind == "quantizer") specs.push_back(info.name);
    if (info.kind == "transform") {
      specs.push_back(info.name);
      specs.push_back(info.name + "+fp8-e4m3-b128");
    }
    if (info.kind == "lossless") {
      specs.push_back("bf16+" + info.name);
      specs.push_back("topk:ratio=0.25+int8-token+" + info.name);
    }
  }
  specs.push_back("topk:ratio=0.5,ef=1+mxfp4");
  specs.push_back("delta:period=2+bf16+zstd");
  specs.push_back("zstd");                             // planes of fp32 (bf16+zstd above: of bf16)
  for (const std::string& s : specs) create_codec(s);  // the list itself must be valid: throws at start-up if not
  return specs;
}

std::vector<uint8_t> decode_input_header(size_t spec_index, int tokens, int hidden) {
  return {static_cast<uint8_t>(spec_index), static_cast<uint8_t>(tokens), static_cast<uint8_t>((hidden - 1) & 0xff),
          static_cast<uint8_t>((hidden - 1) >> 8)};
}

Topology small_cluster() {
  ClusterSpec c = cluster_preset("h200-ib");
  c.nodes = 2;
  c.gpus_per_node = 2;
  return Topology(c);
}

}  // namespace eplab::fuzz
