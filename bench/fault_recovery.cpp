// Recovery from a failed GPU at 256 GPUs (32 nodes x 8 H800, DeepSeek-V3, every MoE layer): how long from the
// failure to serving again, each part named, on three paths — failover onto redundant experts, failover without
// them (the failed GPU's experts reloaded from host memory), and the classic checkpoint restart. The redundant
// experts (one more slot per GPU) are placed by EPLB from the step's load. eplab simulates
// what moves over the fabric and what the degraded steps cost (`eplab run --fault gpu:R@step:1`, docs/faults.md);
// the parts outside the fabric (how failures are noticed, relaunching, storage, work since the last checkpoint)
// are stated assumptions, printed with their values and changeable on the command line.
//   bench_fault_recovery [--layers L] [--tokens T] [--json FILE] [--PARAM VALUE ...]
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "driver/experiment.hpp"

namespace {

// Assumptions, each a named figure the user can change (--name value).
struct Assumptions {
  double heartbeat_s = 1.0;             // failover paths: a missed heartbeat deadline (eplab's --detect-timeout)
  double collective_timeout_s = 600;    // restart path: a hung collective noticed by the process group's timeout
  double relaunch_s = 300;              // restart path: reschedule the job, start 256 processes, rebuild communicators
  double storage_GBps = 100;            // restart path: aggregate checkpoint read bandwidth
  double params = 671e9;                // DeepSeek-V3's parameters
  double train_bytes_per_param = 14;    // bf16 weights + fp32 master weights + two fp32 Adam moments
  double checkpoint_interval_s = 3600;  // restart path: on average half an interval of training is redone
  double host_to_gpu_GBps = 25;         // no-redundancy path: the lost experts' weights from host memory over PCIe
};

eplab::RunConfig config(int layers, int tokens, int redundant, const std::string& fault, double detect_s) {
  eplab::RunConfig c;
  c.backend = "sim";
  c.cluster = "h800-cx7";
  c.nodes = 32;
  c.gpus_per_node = 8;
  c.model = "deepseek-v3";
  c.tokens = tokens;
  c.layers = layers;
  c.steps = 2;  // step 0 healthy, step 1 after the failure
  c.payload = "phantom";
  c.redundant_experts = redundant;
  // Redundant slots placed by EPLB from the step's load: the contiguous placement at one expert per GPU would put
  // each GPU's second slot on its own expert, a replica that dies with it.
  if (redundant > 0) c.balancer = "eplb", c.heat = "oracle";
  if (!fault.empty()) c.faults = {fault};
  c.detect_timeout_s = detect_s;
  return c;
}

double step_time(const nlohmann::json& r, int step) {
  return r["per_step"][step]["layer_time_s"].get<double>();  // summed over the step's layers
}

}  // namespace

int main(int argc, char** argv) {
  Assumptions a;
  int layers = 58, tokens = 4096;
  std::string json_path;
  std::map<std::string, double*> params = {{"heartbeat", &a.heartbeat_s},
                                           {"collective-timeout", &a.collective_timeout_s},
                                           {"relaunch", &a.relaunch_s},
                                           {"storage-GBps", &a.storage_GBps},
                                           {"params", &a.params},
                                           {"train-bytes-per-param", &a.train_bytes_per_param},
                                           {"checkpoint-interval", &a.checkpoint_interval_s},
                                           {"host-to-gpu-GBps", &a.host_to_gpu_GBps}};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (arg == "--layers" && i + 1 < argc) {
      layers = std::stoi(argv[++i]);
    } else if (arg == "--tokens" && i + 1 < argc) {
      tokens = std::stoi(argv[++i]);
    } else if (arg.rfind("--", 0) == 0 && params.count(arg.substr(2)) && i + 1 < argc) {
      *params[arg.substr(2)] = std::stod(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--layers L] [--tokens T] [--json FILE] [--PARAM VALUE]; PARAM one of:", argv[0]);
      for (const auto& [k, v] : params) std::fprintf(stderr, " %s (%g)", k.c_str(), *v);
      std::fprintf(stderr, "\n");
      return 2;
    }
  }
  if (layers < 1 || tokens < 1) {
    std::fprintf(stderr, "--layers and --tokens must be at least 1\n");
    return 2;
  }
  const std::string fault = "gpu:5@step:1";
  std::fprintf(stderr, "simulating 4 runs of 2 steps x %d layers at 256 GPUs ...\n", layers);
  const nlohmann::json healthy_r = eplab::run_experiment(config(layers, tokens, 256, "", a.heartbeat_s));
  const nlohmann::json failed_r = eplab::run_experiment(config(layers, tokens, 256, fault, a.heartbeat_s));
  const nlohmann::json healthy_0 = eplab::run_experiment(config(layers, tokens, 0, "", a.heartbeat_s));
  const nlohmann::json failed_0 = eplab::run_experiment(config(layers, tokens, 0, fault, a.heartbeat_s));

  const auto& fr = failed_r["faults"];
  const auto& f0 = failed_0["faults"];
  const double expert_bytes = failed_0["migration"]["expert_weight_bytes"].get<double>();
  int lost_expert_layers = 0;
  for (const auto& e : f0["lost_experts"]) lost_expert_layers += static_cast<int>(e["experts"].size());
  const double reload_s = lost_expert_layers * expert_bytes / (a.host_to_gpu_GBps * 1e9);
  const double checkpoint_bytes = a.params * a.train_bytes_per_param;
  const double load_s = checkpoint_bytes / (a.storage_GBps * 1e9);
  const double redo_s = a.checkpoint_interval_s / 2;
  // Selections one step makes (every surviving rank's tokens x top-8 x layers), to put the lost ones in proportion.
  const double step_selections = 255.0 * tokens * 8 * layers;

  struct Path {
    const char* name;
    double detect, replan, migrate, reload, relaunch, load, redo;
    double lost, slowdown;
  };
  const Path paths[] = {
      {"failover, 256 redundant experts", fr["detect_s"].get<double>(), fr["replan_s"].get<double>(),
       fr["migrate_s"].get<double>(), 0, 0, 0, 0, fr["tokens_lost"].get<double>(),
       step_time(failed_r, 1) / step_time(healthy_r, 1) - 1},
      {"failover, no redundant experts", f0["detect_s"].get<double>(), f0["replan_s"].get<double>(),
       f0["migrate_s"].get<double>(), reload_s, 0, 0, 0, f0["tokens_lost"].get<double>(),
       step_time(failed_0, 1) / step_time(healthy_0, 1) - 1},
      {"checkpoint restart (training)", a.collective_timeout_s, 0, 0, 0, a.relaunch_s, load_s, redo_s, 0, 0},
  };
  std::printf(
      "Recovery from a failed GPU (rank 5) at 256 GPUs: h800-cx7 32 x 8, deepseek-v3, %d layers, %d tokens/rank\n",
      layers, tokens);
  std::printf("%-34s %14s %14s %14s  %s\n", "part (seconds)", "redundant", "no redundant", "restart", "source");
  auto row = [&](const char* part, double Path::*m, const char* source) {
    std::printf("%-34s %14.6g %14.6g %14.6g  %s\n", part, paths[0].*m, paths[1].*m, paths[2].*m, source);
  };
  row("detect", &Path::detect, "heartbeat deadline / collective timeout (assumed)");
  row("re-plan placement", &Path::replan, "planner, before ranks run (eplab)");
  row("migrate restored replicas", &Path::migrate, "simulated migration round, all layers (eplab)");
  row("reload lost experts from host", &Path::reload, "lost experts x layers x expert bytes / host-to-GPU (assumed)");
  row("relaunch job", &Path::relaunch, "assumed");
  row("load checkpoint", &Path::load, "params x bytes per param / storage bandwidth (assumed)");
  row("redo work since last checkpoint", &Path::redo, "half the checkpoint interval (assumed)");
  nlohmann::json out_paths = nlohmann::json::array();
  double totals[3];
  for (int i = 0; i < 3; ++i) {
    const Path& p = paths[i];
    totals[i] = p.detect + p.replan + p.migrate + p.reload + p.relaunch + p.load + p.redo;
    out_paths.push_back({{"path", p.name},
                         {"detect_s", p.detect},
                         {"replan_s", p.replan},
                         {"migrate_s", p.migrate},
                         {"reload_s", p.reload},
                         {"relaunch_s", p.relaunch},
                         {"load_checkpoint_s", p.load},
                         {"redo_s", p.redo},
                         {"total_s", totals[i]},
                         {"selections_lost_per_step", p.lost},
                         {"step_slowdown", p.slowdown}});
  }
  std::printf("%-34s %14.6g %14.6g %14.6g\n", "total to resume", totals[0], totals[1], totals[2]);
  std::printf("%-34s %14.0f %14.0f %14s  %s\n", "selections lost in the failed step", paths[0].lost, paths[1].lost,
              "all", "eplab (exact)");
  std::printf("%-34s %13.2f%% %13.2f%% %14s  %s\n", "  of the step's selections", 100 * paths[0].lost / step_selections,
              100 * paths[1].lost / step_selections, "-", "");
  std::printf("%-34s %+13.1f%% %+13.1f%% %14s  %s\n", "step time after vs before", 100 * paths[0].slowdown,
              100 * paths[1].slowdown, "0", "simulated, 255 of 256 GPUs (eplab)");
  std::printf("lost expert-layers without redundancy: %d (expert %.1f MB)\n", lost_expert_layers, expert_bytes / 1e6);
  std::printf("restart / redundant failover: %.0fx\n", totals[2] / totals[0]);
  if (!json_path.empty()) {
    nlohmann::json assumptions;
    for (const auto& [k, v] : params) assumptions[k] = *v;
    std::ofstream(json_path) << nlohmann::json{{"gpus", 256},
                                               {"layers", layers},
                                               {"tokens_per_rank", tokens},
                                               {"fault", fault},
                                               {"assumptions", assumptions},
                                               {"lost_expert_layers", lost_expert_layers},
                                               {"expert_bytes", expert_bytes},
                                               {"paths", out_paths}}
                                    .dump(2)
                             << "\n";
    std::printf("wrote %s\n", json_path.c_str());
  }
  return 0;
}
