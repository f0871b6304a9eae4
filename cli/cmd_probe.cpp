// `eplab probe`: measures pairwise latency (small ping-pong), bandwidth (one large message) and an empty all-to-all
// round over a backend's fabric (driver/probe.hpp) and writes them as a cost matrix.
#include <cstdio>

#include "cli/args.hpp"
#include "driver/probe.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "engine/output_file.hpp"
#include "engine/spec_json.hpp"
#include "engine/topology.hpp"

namespace eplab::cli {
namespace {

int cmd_probe(const std::vector<std::string>& argv_in) {
  std::vector<std::string> argv = argv_in;
  for (auto& a : argv)
    if (a == "-o") a = "--out";
  std::string backend_name = "sim", cluster = "h800-cx7", out_path;
  int nodes = 0, gpus = 0;
  ProbeOptions po;
  Args args("eplab probe [options] -o cost.json",
            "Measure pairwise latency (ping-pong of --small bytes) and bandwidth (one --large message) with\n"
            "isend/irecv over a backend's fabric, and one empty all-to-all round; write a [ranks x ranks] cost\n"
            "matrix as JSON (`--replica-selection topology-aware:costs=FILE` reads it; `eplab validate --probe`\n"
            "fits a simulated cluster to it). Clusters above --all-pairs-max ranks probe one pair per link class\n"
            "plus --sample random pairs and fill the rest with their link class's mean (the JSON says which pairs\n"
            "were measured).");
  args.opt("backend", &backend_name, "sim | emu | real")
      .opt("cluster", &cluster, "cluster preset or FILE.json")
      .opt("nodes", &nodes, "nodes (0: the preset's; 2 on emu)")
      .opt("gpus-per-node", &gpus, "GPUs per node (0: the preset's; 4 on emu)")
      .opt("small", &po.small_bytes, "ping-pong message bytes (latency)")
      .opt("large", &po.large_bytes, "bandwidth message bytes (0: 256 MiB on sim, 4 MiB on real-byte backends)")
      .opt("iters", &po.iters, "ping-pong round trips per pair")
      .opt("rounds", &po.rounds, "empty all-to-all rounds timed")
      .opt("sample", &po.sample, "random extra pairs on large clusters")
      .opt("all-pairs-max", &po.all_pairs_max, "probe every pair up to this many ranks")
      .opt("seed", &po.seed, "seed for the sampled pairs")
      .opt("out", &out_path, "JSON file to write (-o)");
  if (!args.parse(argv)) return 0;
  if (out_path.empty()) throw EplabError("eplab probe: -o FILE is required");
  check_output_path(out_path, "the cost matrix");
  ClusterSpec spec = resolve_cluster(cluster);
  if (backend_name == "emu" && !args.given("nodes")) nodes = 2;
  if (backend_name == "emu" && !args.given("gpus-per-node")) gpus = 4;
  if (nodes > 0) spec.nodes = nodes;
  if (gpus > 0) spec.gpus_per_node = gpus;
  const Topology topo(spec);
  auto backend = create_backend(backend_name);
  const ProbeResult p = probe_fabric(*backend, topo, po);
  std::printf("eplab probe | %s | %s, %d nodes x %d GPUs | %zu pairs probed%s\n", backend->name().c_str(),
              spec.name.c_str(), spec.nodes, spec.gpus_per_node, p.pairs.size(), p.all_pairs ? " (all)" : " (sampled)");
  std::printf("%-20s %8s %12s %12s\n", "link class", "pairs", "latency us", "bw GB/s");
  for (int c = 1; c < kProbeClasses; ++c)
    if (p.class_count[c] > 0)
      std::printf("%-20s %8d %12.2f %12.1f\n", probe_class_name(c), p.class_count[c], p.class_latency_s[c] * 1e6,
                  p.class_bandwidth_GBps[c]);
  if (po.rounds > 0) std::printf("empty all-to-all round: %.2f us\n", p.round_s * 1e6);
  write_output_file(out_path, probe_json(p, spec).dump(1) + "\n", "the cost matrix");
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}

}  // namespace

EPLAB_COMMAND("probe", "measure pairwise latency and bandwidth; write a cost matrix", cmd_probe);

}  // namespace eplab::cli
