// `eplab probe`: measures pairwise latency (small ping-pong) and bandwidth (one large message) over a backend's
// fabric and writes the cost matrix that `--replica-selection topology-aware:costs=FILE` reads.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/args.hpp"
#include "engine/backend.hpp"
#include "engine/error.hpp"
#include "engine/fabric.hpp"
#include "engine/output_file.hpp"
#include "engine/spec_json.hpp"
#include "engine/topology.hpp"
#include "traces/generators.hpp"

namespace eplab::cli {
namespace {

// Link classes a cost matrix distinguishes: the selector prefers same node, then same rail (one NIC hop).
int pair_class(const Topology& t, int a, int b) {
  if (a == b) return 0;
  if (t.node_of(a) == t.node_of(b)) return 1;
  return t.local_of(a) == t.local_of(b) ? 2 : 3;
}
const char* kClassNames[] = {"self", "scaleup", "scaleout-same-rail", "scaleout-cross-rail"};

int cmd_probe(const std::vector<std::string>& argv_in) {
  std::vector<std::string> argv = argv_in;
  for (auto& a : argv)
    if (a == "-o") a = "--out";
  std::string backend_name = "sim", cluster = "h800-cx7", out_path;
  int nodes = 0, gpus = 0, iters = 4, sample = 16, all_pairs_max = 16;
  double small = 8, large = 0;
  uint64_t seed = 1;
  Args args("eplab probe [options] -o cost.json",
            "Measure pairwise latency (ping-pong of --small bytes) and bandwidth (one --large message) with\n"
            "isend/irecv over a backend's fabric; write a [ranks x ranks] cost matrix as JSON. Clusters above\n"
            "--all-pairs-max ranks probe one pair per link class plus --sample random pairs and fill the rest\n"
            "with their link class's mean (the JSON says which pairs were measured).");
  args.opt("backend", &backend_name, "sim | emu | real")
      .opt("cluster", &cluster, "cluster preset or FILE.json")
      .opt("nodes", &nodes, "nodes (0: the preset's; 2 on emu)")
      .opt("gpus-per-node", &gpus, "GPUs per node (0: the preset's; 4 on emu)")
      .opt("small", &small, "ping-pong message bytes (latency)")
      .opt("large", &large, "bandwidth message bytes (0: 256 MiB on sim, 4 MiB on real-byte backends)")
      .opt("iters", &iters, "ping-pong round trips per pair")
      .opt("sample", &sample, "random extra pairs on large clusters")
      .opt("all-pairs-max", &all_pairs_max, "probe every pair up to this many ranks")
      .opt("seed", &seed, "seed for the sampled pairs")
      .opt("out", &out_path, "JSON file to write (-o)");
  if (!args.parse(argv)) return 0;
  if (out_path.empty()) throw EplabError("eplab probe: -o FILE is required");
  if (iters < 1 || small < 1) throw EplabError("eplab probe: --iters and --small must be at least 1");
  ClusterSpec spec = resolve_cluster(cluster);
  if (backend_name == "emu" && !args.given("nodes")) nodes = 2;
  if (backend_name == "emu" && !args.given("gpus-per-node")) gpus = 4;
  if (nodes > 0) spec.nodes = nodes;
  if (gpus > 0) spec.gpus_per_node = gpus;
  const Topology topo(spec);
  const int R = topo.size();
  auto backend = create_backend(backend_name);
  const bool phantom = backend->caps().phantom_payload && backend->caps().modeled_time;
  if (large <= 0) large = phantom ? 256.0 * (1 << 20) : 4.0 * (1 << 20);

  // Pairs (a < b; links are taken as symmetric): all of them on small clusters, else representatives.
  std::vector<std::pair<int, int>> pairs;
  const bool all = R <= all_pairs_max;
  if (all) {
    for (int a = 0; a < R; ++a)
      for (int b = a + 1; b < R; ++b) pairs.push_back({a, b});
  } else {
    std::set<std::pair<int, int>> chosen;
    if (spec.gpus_per_node > 1) chosen.insert({0, 1});
    if (spec.nodes > 1) chosen.insert({0, topo.rank_of(1, 0)});
    if (spec.nodes > 1 && spec.gpus_per_node > 1) chosen.insert({0, topo.rank_of(1, 1)});
    SplitMix64 rng(seed);
    for (int i = 0; i < sample; ++i) {
      const int a = static_cast<int>(rng.below(R)), b = static_cast<int>(rng.below(R));
      if (a != b) chosen.insert({std::min(a, b), std::max(a, b)});
    }
    pairs.assign(chosen.begin(), chosen.end());
  }

  std::vector<double> lat(static_cast<size_t>(pairs.size()), 0.0), bw(pairs.size(), 0.0);
  const size_t large_bytes = static_cast<size_t>(large), small_bytes = static_cast<size_t>(small);
  backend->launch(topo, LaunchOptions{phantom, 60, ""}, [&](Fabric& f) {
    const int me = f.rank();
    std::vector<uint8_t> sbuf(phantom ? 8 : std::max(small_bytes, large_bytes), 1), rbuf(sbuf.size());
    const Deadline d = Deadline::after(f, phantom ? 1e9 : 60);
    auto msg = [&](size_t bytes) {
      return phantom ? ConstBuf{sbuf.data(), std::min<size_t>(8, bytes), bytes - std::min<size_t>(8, bytes)}
                     : ConstBuf{sbuf.data(), bytes, 0};
    };
    auto exchange = [&](bool send, int peer, Tag tag, size_t bytes) {
      Request r = send ? f.isend(peer, tag, msg(bytes)) : f.irecv(peer, tag, MutBuf{rbuf.data(), rbuf.size()});
      f.wait_all(std::span<Request>(&r, 1), d);
    };
    f.set_phase("probe");
    for (size_t p = 0; p < pairs.size(); ++p) {
      f.barrier();
      const auto [a, b] = pairs[p];
      if (me != a && me != b) continue;
      const int peer = me == a ? b : a;
      const bool first = me == a;
      // Latency: iters round trips of a small message; one-way = round trip / 2.
      const double t0 = f.now();
      for (int i = 0; i < iters; ++i) {
        exchange(first, peer, make_tag(Phase::kUser, static_cast<int>(p), 1, 2 * i), small_bytes);
        exchange(!first, peer, make_tag(Phase::kUser, static_cast<int>(p), 1, 2 * i + 1), small_bytes);
      }
      const double one_way = (f.now() - t0) / (2.0 * iters);
      // Bandwidth: one large message a -> b, acknowledged by a small one; the ack's latency is taken off.
      const double t1 = f.now();
      exchange(first, peer, make_tag(Phase::kUser, static_cast<int>(p), 2, 0), large_bytes);
      exchange(!first, peer, make_tag(Phase::kUser, static_cast<int>(p), 2, 1), small_bytes);
      const double t = std::max(f.now() - t1 - one_way, 1e-12);
      if (me == a) lat[p] = one_way, bw[p] = static_cast<double>(large_bytes) / t / 1e9;
    }
    f.barrier();
  });

  // Per-class means fill the pairs not measured (large clusters); measured pairs keep their own figures.
  double sum_lat[4] = {0, 0, 0, 0}, sum_bw[4] = {0, 0, 0, 0};
  int count[4] = {0, 0, 0, 0};
  for (size_t p = 0; p < pairs.size(); ++p) {
    const int c = pair_class(topo, pairs[p].first, pairs[p].second);
    sum_lat[c] += lat[p], sum_bw[c] += bw[p], ++count[c];
  }
  // A class no pair measured (e.g. no same-rail pair sampled) falls back to the next more distant one.
  for (int c = 3; c >= 1; --c)
    if (count[c] == 0 && c < 3 && count[c + 1] > 0)
      sum_lat[c] = sum_lat[c + 1] / count[c + 1], sum_bw[c] = sum_bw[c + 1] / count[c + 1], count[c] = 1;
  nlohmann::json L = nlohmann::json::array(), B = nlohmann::json::array();
  std::map<std::pair<int, int>, size_t> index;
  for (size_t p = 0; p < pairs.size(); ++p) index[pairs[p]] = p;
  for (int a = 0; a < R; ++a) {
    nlohmann::json lrow = nlohmann::json::array(), brow = nlohmann::json::array();
    for (int b = 0; b < R; ++b) {
      const int c = pair_class(topo, a, b);
      double l = 0, w = 0;
      if (auto it = index.find({std::min(a, b), std::max(a, b)}); it != index.end())
        l = lat[it->second], w = bw[it->second];
      else if (c > 0 && count[c] > 0)
        l = sum_lat[c] / count[c], w = sum_bw[c] / count[c];
      lrow.push_back(l);
      brow.push_back(w);
    }
    L.push_back(std::move(lrow));
    B.push_back(std::move(brow));
  }
  nlohmann::json classes = nlohmann::json::object();
  std::printf("eplab probe | %s | %s, %d nodes x %d GPUs | %zu pairs probed%s\n", backend->name().c_str(),
              spec.name.c_str(), spec.nodes, spec.gpus_per_node, pairs.size(), all ? " (all)" : " (sampled)");
  std::printf("%-20s %8s %12s %12s\n", "link class", "pairs", "latency us", "bw GB/s");
  for (int c = 1; c < 4; ++c) {
    if (count[c] == 0) continue;
    classes[kClassNames[c]] = {{"latency_s", sum_lat[c] / count[c]}, {"bandwidth_GBps", sum_bw[c] / count[c]}};
    std::printf("%-20s %8d %12.2f %12.1f\n", kClassNames[c], count[c], sum_lat[c] / count[c] * 1e6,
                sum_bw[c] / count[c]);
  }
  nlohmann::json measured = nlohmann::json::array();
  for (auto& [a, b] : pairs) measured.push_back({a, b});
  nlohmann::json j = {{"backend", backend->name()},
                      {"modeled_time", phantom},
                      {"cluster", spec.name},
                      {"nodes", spec.nodes},
                      {"gpus_per_node", spec.gpus_per_node},
                      {"ranks", R},
                      {"small_bytes", small_bytes},
                      {"large_bytes", large_bytes},
                      {"iters", iters},
                      {"coverage", all ? "all pairs"
                                       : "one pair per link class plus sampled pairs; the rest filled with their "
                                         "link class's mean"},
                      {"measured_pairs", measured},
                      {"by_class", classes},
                      {"latency_s", L},
                      {"bandwidth_GBps", B}};
  write_output_file(out_path, j.dump(1) + "\n", "the cost matrix");
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}

}  // namespace

EPLAB_COMMAND("probe", "measure pairwise latency and bandwidth; write a cost matrix", cmd_probe);

}  // namespace eplab::cli
