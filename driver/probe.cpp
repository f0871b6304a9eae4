#include "driver/probe.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <span>

#include "engine/error.hpp"
#include "engine/fabric.hpp"
#include "traces/generators.hpp"

namespace eplab {

const char* probe_class_name(int c) {
  static const char* kNames[kProbeClasses] = {"self", "scaleup", "scaleout-same-rail", "scaleout-cross-rail"};
  return kNames[c];
}

int probe_class(const Topology& t, int a, int b) {
  if (a == b) return 0;
  if (t.node_of(a) == t.node_of(b)) return 1;
  return t.local_of(a) == t.local_of(b) ? 2 : 3;
}

ProbeResult probe_fabric(Backend& backend, const Topology& topo, const ProbeOptions& opts) {
  if (opts.iters < 1 || opts.small_bytes < 1 || opts.rounds < 0)
    throw EplabError("probe: --iters and --small must be at least 1, --rounds at least 0");
  const ClusterSpec& spec = topo.spec();
  const int R = topo.size();
  ProbeResult res;
  res.backend = backend.name();
  res.modeled_time = backend.caps().phantom_payload && backend.caps().modeled_time;
  const bool phantom = res.modeled_time;
  res.small_bytes = opts.small_bytes;
  res.large_bytes = opts.large_bytes > 0 ? opts.large_bytes : phantom ? 256.0 * (1 << 20) : 4.0 * (1 << 20);
  res.iters = opts.iters;

  // Pairs (a < b; links are taken as symmetric): all of them on small clusters, else representatives.
  res.all_pairs = R <= opts.all_pairs_max;
  if (res.all_pairs) {
    for (int a = 0; a < R; ++a)
      for (int b = a + 1; b < R; ++b) res.pairs.push_back({a, b});
  } else {
    std::set<std::pair<int, int>> chosen;
    if (spec.gpus_per_node > 1) chosen.insert({0, 1});
    if (spec.nodes > 1) chosen.insert({0, topo.rank_of(1, 0)});
    if (spec.nodes > 1 && spec.gpus_per_node > 1) chosen.insert({0, topo.rank_of(1, 1)});
    SplitMix64 rng(opts.seed);
    for (int i = 0; i < opts.sample; ++i) {
      const int a = static_cast<int>(rng.below(R)), b = static_cast<int>(rng.below(R));
      if (a != b) chosen.insert({std::min(a, b), std::max(a, b)});
    }
    res.pairs.assign(chosen.begin(), chosen.end());
  }

  const size_t P = res.pairs.size();
  res.latency_s.assign(P, 0.0);
  res.bandwidth_GBps.assign(P, 0.0);
  const size_t large_bytes = static_cast<size_t>(res.large_bytes), small_bytes = static_cast<size_t>(res.small_bytes);
  double round_sum = 0;
  backend.launch(topo, LaunchOptions{phantom, opts.timeout_s, ""}, [&](Fabric& f) {
    const int me = f.rank();
    std::vector<uint8_t> sbuf(phantom ? 8 : std::max(small_bytes, large_bytes), 1), rbuf(sbuf.size());
    const Deadline d = Deadline::after(f, phantom ? 1e9 : opts.timeout_s);
    auto msg = [&](size_t bytes) {
      return phantom ? ConstBuf{sbuf.data(), std::min<size_t>(8, bytes), bytes - std::min<size_t>(8, bytes)}
                     : ConstBuf{sbuf.data(), bytes, 0};
    };
    auto exchange = [&](bool send, int peer, Tag tag, size_t bytes) {
      Request r = send ? f.isend(peer, tag, msg(bytes)) : f.irecv(peer, tag, MutBuf{rbuf.data(), rbuf.size()});
      f.wait_all(std::span<Request>(&r, 1), d);
    };
    f.set_phase("probe");
    for (size_t p = 0; p < P; ++p) {
      f.barrier();
      const auto [a, b] = res.pairs[p];
      if (me != a && me != b) continue;
      const int peer = me == a ? b : a;
      const bool first = me == a;
      // Latency: the median of iters round trips of a small message, halved. Bandwidth: the fastest of iters
      // large messages a -> b, each acknowledged by a small one, less the fastest small message acknowledged the
      // same way (the ack and the per-message costs cancel). Medians and minima keep a descheduled thread (more
      // ranks than cores) out of the figures.
      std::vector<double> trips(opts.iters);
      double best_large = 1e300, best_small = 1e300;
      for (int i = 0; i < opts.iters; ++i) {
        const Tag tag = make_tag(Phase::kUser, static_cast<int>(p), 1, 4 * i);
        const double t0 = f.now();
        exchange(first, peer, tag, small_bytes);
        exchange(!first, peer, tag + 1, small_bytes);
        const double t1 = f.now();
        exchange(first, peer, tag + 2, large_bytes);
        exchange(!first, peer, tag + 3, small_bytes);
        const double t2 = f.now();
        trips[i] = t1 - t0;
        best_small = std::min(best_small, t1 - t0);
        best_large = std::min(best_large, t2 - t1);
      }
      std::nth_element(trips.begin(), trips.begin() + opts.iters / 2, trips.end());
      if (me == a) {
        res.latency_s[p] = trips[opts.iters / 2] / 2;
        // Where the large message is not clearly slower than the small one (a link too fast to see at this size,
        // or noise), bytes over the whole large exchange: a lower bound rather than a quotient of noise.
        const double diff = best_large - best_small;
        const double t = diff > 0.1 * best_large ? diff : best_large;
        res.bandwidth_GBps[p] = static_cast<double>(large_bytes - small_bytes) / std::max(t, 1e-12) / 1e9;
      }
    }
    // One all-to-all round of empty messages between every pair, barrier to barrier: what an exchange round
    // costs before any byte moves (launch, signalling, the slowest pair's latency).
    std::vector<PeerSend> sends;
    std::vector<PeerRecv> recvs;
    for (int p = 0; p < f.size(); ++p)
      if (p != me) sends.push_back({p, ConstBuf{}}), recvs.push_back({p, MutBuf{rbuf.data(), rbuf.size()}});
    for (int i = 0; i < opts.rounds; ++i) {
      f.barrier();
      const double t0 = f.now();
      f.alltoallv(make_tag(Phase::kUser, 0, 3, i), sends, recvs, d);
      f.barrier();
      if (me == 0) round_sum += f.now() - t0;
    }
  });
  if (opts.rounds > 0) res.round_s = round_sum / opts.rounds;

  for (size_t p = 0; p < P; ++p) {
    const int c = probe_class(topo, res.pairs[p].first, res.pairs[p].second);
    res.class_latency_s[c] += res.latency_s[p], res.class_bandwidth_GBps[c] += res.bandwidth_GBps[p];
    ++res.class_count[c];
  }
  for (int c = 1; c < kProbeClasses; ++c)
    if (res.class_count[c] > 0)
      res.class_latency_s[c] /= res.class_count[c], res.class_bandwidth_GBps[c] /= res.class_count[c];
  return res;
}

nlohmann::json probe_json(const ProbeResult& p, const ClusterSpec& spec) {
  const Topology topo(spec);
  const int R = topo.size();
  // A class no pair measured (e.g. no same-rail pair sampled) takes the next more distant one's figures.
  double lat[kProbeClasses], bw[kProbeClasses];
  bool have[kProbeClasses];
  for (int c = 0; c < kProbeClasses; ++c)
    lat[c] = p.class_latency_s[c], bw[c] = p.class_bandwidth_GBps[c], have[c] = p.class_count[c] > 0;
  for (int c = kProbeClasses - 2; c >= 1; --c)
    if (!have[c] && have[c + 1]) lat[c] = lat[c + 1], bw[c] = bw[c + 1], have[c] = true;
  std::map<std::pair<int, int>, size_t> index;
  for (size_t i = 0; i < p.pairs.size(); ++i) index[p.pairs[i]] = i;
  nlohmann::json L = nlohmann::json::array(), B = nlohmann::json::array();
  for (int a = 0; a < R; ++a) {
    nlohmann::json lrow = nlohmann::json::array(), brow = nlohmann::json::array();
    for (int b = 0; b < R; ++b) {
      const int c = probe_class(topo, a, b);
      double l = 0, w = 0;
      if (auto it = index.find({std::min(a, b), std::max(a, b)}); it != index.end())
        l = p.latency_s[it->second], w = p.bandwidth_GBps[it->second];
      else if (c > 0 && have[c])
        l = lat[c], w = bw[c];
      lrow.push_back(l);
      brow.push_back(w);
    }
    L.push_back(std::move(lrow));
    B.push_back(std::move(brow));
  }
  nlohmann::json classes = nlohmann::json::object();
  for (int c = 1; c < kProbeClasses; ++c)
    if (p.class_count[c] > 0)
      classes[probe_class_name(c)] = {{"latency_s", p.class_latency_s[c]},
                                      {"bandwidth_GBps", p.class_bandwidth_GBps[c]},
                                      {"pairs", p.class_count[c]}};
  nlohmann::json measured = nlohmann::json::array();
  for (auto& [a, b] : p.pairs) measured.push_back({a, b});
  return {{"backend", p.backend},
          {"modeled_time", p.modeled_time},
          {"cluster", spec.name},
          {"nodes", spec.nodes},
          {"gpus_per_node", spec.gpus_per_node},
          {"ranks", R},
          {"small_bytes", static_cast<uint64_t>(p.small_bytes)},
          {"large_bytes", static_cast<uint64_t>(p.large_bytes)},
          {"iters", p.iters},
          {"coverage", p.all_pairs ? "all pairs"
                                   : "one pair per link class plus sampled pairs; the rest filled with their "
                                     "link class's mean"},
          {"measured_pairs", measured},
          {"by_class", classes},
          {"round_s", p.round_s},
          {"latency_s", L},
          {"bandwidth_GBps", B}};
}

}  // namespace eplab
