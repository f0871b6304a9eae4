// Codec study: what each dispatch codec (and a few hybrid chains) does to DeepSeek-V3's traffic, layer time
// and activation error on a simulated cluster, and whether a chain reaches 4x fewer bytes than BF16.
// Bytes and time come from phantom `sim` runs (sizes only); error, and the sizes of data-dependent codecs,
// from encoding LLM-like activations (policies/codecs/codec_eval.hpp), since phantom runs carry no values.
// Prints a table; writes JSON with --json FILE.
//   bench_codec_study [--nodes N] [--gpus-per-node G] [--tokens T] [--eval-tokens T] [--steps S] [--json FILE]
//               [--codec SPEC ...]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "driver/experiment.hpp"
#include "engine/moe_shape.hpp"
#include "engine/topology.hpp"
#include "policies/codecs/codec.hpp"
#include "policies/codecs/codec_eval.hpp"
#include "traces/routing_source.hpp"

namespace {

using eplab::Codec;

// Routing generated once and shared by every run: the generator is most of a 256-GPU run's wall time and
// the same (step, layer, rank) gives the same batch anyway.
class CachedRouting final : public eplab::RoutingSource {
 public:
  explicit CachedRouting(std::unique_ptr<eplab::RoutingSource> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  eplab::RoutingBatch batch(int step, int layer, int rank) override {
    auto key = std::make_tuple(step, layer, rank);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    }
    eplab::RoutingBatch b = inner_->batch(step, layer, rank);
    std::lock_guard<std::mutex> lock(mu_);
    cache_.emplace(key, b);
    return b;
  }

 private:
  std::unique_ptr<eplab::RoutingSource> inner_;
  std::mutex mu_;
  std::map<std::tuple<int, int, int>, eplab::RoutingBatch> cache_;
};

// What the simulator sees of a data-dependent codec: the bits per element it reached on LLM-like data (the
// engine's codecs are built per rank by name, uncalibrated). Time model and bounds are the real codec's.
class MeasuredSizeCodec final : public Codec {
 public:
  MeasuredSizeCodec(std::unique_ptr<Codec> inner, double bits_per_element)
      : inner_(std::move(inner)), bits_(bits_per_element) {}
  std::string name() const override { return inner_->name(); }
  bool lossless() const override { return inner_->lossless(); }
  double error_bound() const override { return inner_->error_bound(); }
  void encode(const float*, int, int, std::vector<uint8_t>&, uint64_t) override {
    throw eplab::CodecError("codec_study: " + name() + " stands in for sizes only (phantom runs)");
  }
  void decode(const uint8_t*, size_t, int, int, float*, uint64_t) override {
    throw eplab::CodecError("codec_study: " + name() + " stands in for sizes only (phantom runs)");
  }
  size_t encoded_size(int tokens, int hidden) const override {
    return static_cast<size_t>(std::ceil(static_cast<double>(tokens) * hidden * bits_ / 8.0));
  }
  bool fixed_rate() const override { return false; }
  double gpu_seconds(int tokens, int hidden, bool encode) const override {
    return inner_->gpu_seconds(tokens, hidden, encode);
  }
  bool gemm_native() const override { return inner_->gemm_native(); }

 private:
  std::unique_ptr<Codec> inner_;
  double bits_;
};

struct Row {
  std::string codec;
  bool fixed_rate = false;
  double bits_per_element = 0;
  double scaleout_GB = 0;  // dispatch, whole cluster, one layer
  double total_GB = 0;     // dispatch, all link classes
  double dispatch_us = 0;
  double combine_us = 0;
  double codec_us = 0;  // modeled GPU encode + decode time per rank and layer (report codec_s, both phases)
  eplab::ErrorMetrics err;
  double worst_step_rel_l2 = 0;
};

double get_or(const nlohmann::json& j, const char* a, const char* b, double fallback) {
  if (j.contains(a) && j[a].contains(b) && j[a][b].is_number()) return j[a][b].get<double>();
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  int nodes = 32, gpn = 8, tokens = 4096, eval_tokens = 256, steps = 8;
  std::string json_path;
  std::vector<std::string> codecs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "codec_study: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--nodes") {
      nodes = std::stoi(next());
    } else if (a == "--gpus-per-node") {
      gpn = std::stoi(next());
    } else if (a == "--tokens") {
      tokens = std::stoi(next());
    } else if (a == "--eval-tokens") {
      eval_tokens = std::stoi(next());
    } else if (a == "--steps") {
      steps = std::stoi(next());
    } else if (a == "--json") {
      json_path = next();
    } else if (a == "--codec") {
      codecs.push_back(next());
    } else {
      std::fprintf(stderr,
                   "usage: codec_study [--nodes N] [--gpus-per-node G] [--tokens T] [--eval-tokens T] [--steps S] "
                   "[--json FILE] [--codec SPEC]...\n");
      return 2;
    }
  }
  if (codecs.empty()) {
    codecs = {"bf16",
              "fp8-e4m3-b128",
              "fp8-e4m3-b128-ue8m0",
              "int8-token",
              "mxfp8",
              "mxfp6",
              "mxfp4",
              "logfmt10",
              "fp8-e4m3-b128+zstd",
              "delta+fp8-e4m3-b128+zstd",
              "delta+mxfp4+zstd",
              "topk:ratio=0.25+int8-token+zstd",
              "topk:ratio=0.25+fp8-e4m3-b128",
              "topk:ratio=0.25,ef=1+fp8-e4m3-b128",
              "threshold:tau=1+fp8-e4m3-b128+zstd",
              "delta+topk:ratio=0.25+fp8-e4m3-b128+zstd"};
  }

  const eplab::MoeShape shape = eplab::model_preset("deepseek-v3");
  eplab::ClusterSpec spec = eplab::cluster_preset("h800-cx7");
  spec.nodes = nodes;
  spec.gpus_per_node = gpn;
  eplab::RoutingParams rp{shape, eplab::Topology(spec), tokens, 1, 1, 1};
  auto routing = std::make_shared<CachedRouting>(eplab::make_routing("deepep", rp));

  std::vector<Row> rows;
  for (const std::string& c : codecs) {
    Row r;
    r.codec = c;
    // Error and real sizes: `steps` correlated messages of LLM-like activations on one stream, so delta and
    // error feedback run in their steady state (as `eplab codec eval --data llm --steps S`).
    eplab::CodecEvalOptions eo;
    eo.codec = c;
    eo.data = eplab::ActivationKind::kLlm;
    eo.tokens = eval_tokens;
    eo.hidden = shape.hidden;
    eo.steps = steps;
    eplab::CodecEvalResult ev = eplab::evaluate_codec(eo);
    r.fixed_rate = ev.fixed_rate;
    r.bits_per_element = ev.bits_per_element;
    r.err = ev.metrics;
    r.worst_step_rel_l2 = ev.worst_step_rel_l2;

    std::string sim_codec = c;
    if (!ev.fixed_rate) {
      sim_codec = "study/" + c;
      std::replace(sim_codec.begin(), sim_codec.end(), '+', '&');  // registered names have no '+'
      double bits = ev.bits_per_element;
      eplab::register_codec_factory(sim_codec, [c, bits]() -> std::unique_ptr<Codec> {
        return std::make_unique<MeasuredSizeCodec>(eplab::create_codec(c), bits);
      });
    }

    eplab::RunConfig cfg;
    cfg.backend = "sim";
    cfg.cluster = "h800-cx7";
    cfg.nodes = nodes;
    cfg.gpus_per_node = gpn;
    cfg.model = "deepseek-v3";
    cfg.tokens = tokens;
    cfg.routing_source = routing;
    cfg.algorithm = "hierarchical";
    cfg.dispatch_codec = sim_codec;
    cfg.combine_codec = "bf16";
    cfg.timeout_s = 3600;
    auto t0 = std::chrono::steady_clock::now();
    nlohmann::json rep = eplab::run_experiment(cfg);
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto& d = rep["phases"]["dispatch"];
    // A layer pays the codec's modeled GPU encode/decode beside the exchanges (reported apart as codec_s).
    const auto& k = rep["phases"]["combine"];
    r.dispatch_us = (d["time_s"].get<double>() + d.value("codec_s", 0.0)) * 1e6;
    r.combine_us = (k["time_s"].get<double>() + k.value("codec_s", 0.0)) * 1e6;
    r.codec_us = (d.value("codec_s", 0.0) + k.value("codec_s", 0.0)) * 1e6;
    // Bytes the fabric carried (payload and block metadata), whole cluster, one dispatch.
    r.scaleout_GB = get_or(d, "bytes", "scaleout", 0) / 1e9;
    r.total_GB = get_or(d, "bytes", "total", 0) / 1e9;
    if (!ev.fixed_rate) eplab::unregister_codec_factory(sim_codec);
    std::fprintf(stderr, "  %-44s sim wall %.1f s\n", c.c_str(), wall);
    rows.push_back(r);
  }

  const Row& base = rows.front();
  std::printf(
      "eplab codec study: DeepSeek-V3 dispatch on %d GPUs (h800-cx7, %d x %d, hierarchical, deepep routing, %d "
      "tokens/rank, sim); combine bf16\n",
      nodes * gpn, nodes, gpn, tokens);
  std::printf(
      "error: %d correlated steps (rho 0.95) of %d x %d LLM-like activations on one stream; sizes of data-dependent "
      "codecs measured there\n\n",
      steps, eval_tokens, shape.hidden);
  std::printf("%-42s %7s %9s %7s %9s %9s %8s %10s %10s %8s\n", "dispatch codec", "bits/el", "scale-out",
              "vs "
              "bf16",
              "disp us", "layer us", "codec us", "rel L2", "calc_diff", "cosine");
  for (const Row& r : rows) {
    std::printf("%-42s %7.3f %8.3fG %6.2fx %9.1f %9.1f %8.1f %10.2e %10.2e %8.5f\n", r.codec.c_str(),
                r.bits_per_element, r.scaleout_GB, base.scaleout_GB / r.scaleout_GB, r.dispatch_us,
                r.dispatch_us + r.combine_us, r.codec_us, r.err.rel_l2, r.err.calc_diff, r.err.cosine);
  }
  if (!json_path.empty()) {
    nlohmann::json j;
    j["benchmark"] = "codec_study";
    j["model"] = "deepseek-v3";
    j["cluster"] = "h800-cx7";
    j["gpus"] = nodes * gpn;
    j["nodes"] = nodes;
    j["gpus_per_node"] = gpn;
    j["tokens_per_rank"] = tokens;
    j["algorithm"] = "hierarchical";
    j["routing"] = "deepep";
    j["combine_codec"] = "bf16";
    j["eval"] = {{"data", "llm"},
                 {"tokens", eval_tokens},
                 {"hidden", shape.hidden},
                 {"steps", steps},
                 {"step_correlation", 0.95}};
    j["rows"] = nlohmann::json::array();
    for (const Row& r : rows) {
      j["rows"].push_back({{"codec", r.codec},
                           {"fixed_rate", r.fixed_rate},
                           {"bits_per_element", r.bits_per_element},
                           {"dispatch_scaleout_GB", r.scaleout_GB},
                           {"dispatch_total_GB", r.total_GB},
                           {"scaleout_reduction_vs_bf16", base.scaleout_GB / r.scaleout_GB},
                           {"dispatch_time_us", r.dispatch_us},
                           {"combine_time_us", r.combine_us},
                           {"layer_time_us", r.dispatch_us + r.combine_us},
                           {"codec_gpu_time_us", r.codec_us},
                           {"rel_l2", r.err.rel_l2},
                           {"worst_step_rel_l2", r.worst_step_rel_l2},
                           {"calc_diff", r.err.calc_diff},
                           {"cosine", r.err.cosine},
                           {"max_abs_err", r.err.max_abs_err}});
    }
    std::ofstream(json_path) << j.dump(2) << "\n";
  }
  return 0;
}
