#include "driver/timeline.hpp"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>

#include "engine/error.hpp"
#include "engine/output_file.hpp"

namespace eplab {

Timeline::Timeline(const Topology& topo, bool events) : topo_(topo), events_(events) {
  const int R = topo_.size();
  rank_stride_ = R > kMaxDetailedRanks ? (R + kMaxDetailedRanks - 1) / kMaxDetailedRanks : 1;
  per_link_tracks_ = R <= kMaxDetailedRanks;
}

void Timeline::add_spans(const std::vector<TimelineSpan>& spans) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const TimelineSpan& s : spans)
    if (records_rank(s.rank)) spans_.push_back(s);
}

void Timeline::set_phase_prefix(std::string prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  prefix_ = std::move(prefix);
}

void Timeline::shift_rounds(const std::vector<RoundShift>& shifts) {
  std::lock_guard<std::mutex> lock(mu_);
  // A round starts inside the exchange that ran it; a little slack for the rounding of simulated times. The
  // exchanges ran one after another, so their intervals, sorted by start, are searched.
  constexpr double kSlack = 1e-12;
  std::vector<RoundShift> by_start = shifts;
  std::sort(by_start.begin(), by_start.end(), [](const auto& a, const auto& b) { return a.sim_t0 < b.sim_t0; });
  for (Round& r : rounds_) {
    auto it = std::upper_bound(by_start.begin(), by_start.end(), r.t0 + kSlack,
                               [](double t, const RoundShift& s) { return t < s.sim_t0; });
    if (it == by_start.begin() || r.t0 > std::prev(it)->sim_t1 + kSlack) continue;
    r.t0 += std::prev(it)->shift;
    r.t1 += std::prev(it)->shift;
  }
}

void Timeline::set_links(std::vector<LinkInfo> links) {
  std::lock_guard<std::mutex> lock(mu_);
  links_ = std::move(links);
  track_names_.clear();
  track_Bps_.clear();
  if (per_link_tracks_) {
    for (auto& l : links_) {
      track_names_.push_back(l.name);
      track_Bps_.push_back(l.Bps);
    }
    return;
  }
  // At scale one track per class statistic: the mean over the class's links and the busiest one.
  for (auto& l : links_) {
    const std::string mean = l.cls + " mean";
    if (std::find(track_names_.begin(), track_names_.end(), mean) != track_names_.end()) continue;
    track_names_.push_back(mean);
    track_Bps_.push_back(l.Bps);
    track_names_.push_back(l.cls + " max");
    track_Bps_.push_back(l.Bps);
  }
}

void Timeline::link_round(const std::string& phase, double t0, double t1, const std::vector<double>& link_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string name = prefix_ + phase;
  auto it = std::find_if(phases_.begin(), phases_.end(), [&](const auto& p) { return p.first == name; });
  if (it == phases_.end()) {
    phases_.push_back({name, PhaseLinks{std::vector<double>(links_.size(), 0.0), {}}});
    it = phases_.end() - 1;
  }
  PhaseLinks& pl = it->second;
  for (size_t i = 0; i < link_bytes.size() && i < pl.bytes.size(); ++i) pl.bytes[i] += link_bytes[i];
  pl.spans.push_back({t0, t1});
  if (!events_) return;
  Round r{t0, t1, {}};
  if (per_link_tracks_) {
    for (size_t i = 0; i < link_bytes.size(); ++i)
      if (link_bytes[i] > 0) r.bytes.push_back({static_cast<int>(i), link_bytes[i]});
  } else {
    std::map<std::string, std::pair<double, int>> sum;
    std::map<std::string, double> mx;
    for (size_t i = 0; i < link_bytes.size() && i < links_.size(); ++i) {
      auto& s = sum[links_[i].cls];
      s.first += link_bytes[i];
      ++s.second;
      mx[links_[i].cls] = std::max(mx[links_[i].cls], link_bytes[i]);
    }
    for (size_t t = 0; t < track_names_.size(); t += 2) {
      const std::string cls = track_names_[t].substr(0, track_names_[t].size() - 5);
      auto s = sum.find(cls);
      if (s == sum.end() || s->second.first <= 0) continue;
      r.bytes.push_back({static_cast<int>(t), s->second.first / s->second.second});
      r.bytes.push_back({static_cast<int>(t + 1), mx[cls]});
    }
  }
  rounds_.push_back(std::move(r));
}

std::vector<Timeline::PhaseLinkState> Timeline::link_state() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<PhaseLinkState> out;
  for (const auto& [name, pl] : phases_) out.push_back({name, pl.bytes, pl.spans});
  return out;
}

void Timeline::restore_link_state(std::vector<PhaseLinkState> phases) {
  std::lock_guard<std::mutex> lock(mu_);
  phases_.clear();
  for (PhaseLinkState& p : phases) phases_.push_back({std::move(p.name), {std::move(p.bytes), std::move(p.spans)}});
}

nlohmann::json Timeline::link_summary() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (links_.empty() || phases_.empty()) return nullptr;
  nlohmann::json j;
  for (const auto& [name, pl] : phases_) {
    // Rounds of a pipeline overlap: the phase's time is the union of its intervals, not their sum.
    auto spans = pl.spans;
    std::sort(spans.begin(), spans.end());
    double time = 0, open = -1, close = -1;
    for (auto [a, b] : spans) {
      if (a > close) {
        time += close - open;
        open = a;
        close = b;
      } else {
        close = std::max(close, b);
      }
    }
    time += close - open;
    nlohmann::json ph;
    ph["time_s"] = time;
    std::map<std::string, std::vector<double>> util;
    std::map<std::string, double> bytes;
    for (size_t i = 0; i < links_.size(); ++i) {
      util[links_[i].cls].push_back(time > 0 && links_[i].Bps > 0 ? pl.bytes[i] / (links_[i].Bps * time) : 0.0);
      bytes[links_[i].cls] += pl.bytes[i];
    }
    for (auto& [cls, u] : util) {
      double sum = 0;
      for (double x : u) sum += x;
      ph[cls] = {{"max_utilization", *std::max_element(u.begin(), u.end())},
                 {"mean_utilization", sum / u.size()},
                 {"bytes", bytes[cls]},
                 {"links", u.size()}};
    }
    j[name] = ph;
  }
  return j;
}

void Timeline::write(const std::string& path, const nlohmann::json& meta) const {
  std::lock_guard<std::mutex> lock(mu_);
  const int gpn = topo_.gpus_per_node();
  nlohmann::json ev = nlohmann::json::array();
  // One row (thread) per rank, or per (rank, lane) when spans have lanes (two-batch overlap).
  int lanes = 1;
  for (const auto& s : spans_) lanes = std::max(lanes, s.lane + 1);
  std::vector<bool> named(static_cast<size_t>(topo_.size()) * lanes, false);
  for (const auto& s : spans_) {
    const int node = s.rank / gpn, local = s.rank % gpn, tid = local * lanes + s.lane;
    if (!named[static_cast<size_t>(s.rank) * lanes + s.lane]) {
      named[static_cast<size_t>(s.rank) * lanes + s.lane] = true;
      ev.push_back(
          {{"ph", "M"}, {"name", "process_name"}, {"pid", node}, {"args", {{"name", "node " + std::to_string(node)}}}});
      std::string name = "gpu " + std::to_string(s.rank);
      if (lanes > 1) name += s.lane < 2 ? " micro-batch " + std::to_string(s.lane) : " both micro-batches";
      ev.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", node}, {"tid", tid}, {"args", {{"name", name}}}});
    }
    nlohmann::json args = {{"rank", s.rank}};
    if (lanes > 1) args["lane"] = s.lane;
    ev.push_back({{"ph", "X"},
                  {"cat", "phase"},
                  {"name", s.name},
                  {"pid", node},
                  {"tid", tid},
                  {"ts", s.t0 * 1e6},
                  {"dur", std::max(0.0, s.t1 - s.t0) * 1e6},
                  {"args", args}});
  }
  // Link load as a step function per track: rounds that overlap (pipelined stages) add their rates.
  const int link_pid = topo_.nodes();
  if (!rounds_.empty()) {
    ev.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", link_pid}, {"args", {{"name", "links (GB/s)"}}}});
    std::vector<std::vector<std::pair<double, double>>> deltas(track_names_.size());
    for (const auto& r : rounds_) {
      if (r.t1 <= r.t0) continue;
      for (auto [t, b] : r.bytes) {
        const double rate = b / (r.t1 - r.t0) / 1e9;
        deltas[t].push_back({r.t0, rate});
        deltas[t].push_back({r.t1, -rate});
      }
    }
    for (size_t t = 0; t < deltas.size(); ++t) {
      auto& d = deltas[t];
      if (d.empty()) continue;
      std::sort(d.begin(), d.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      double v = 0;
      for (size_t i = 0; i < d.size(); ++i) {
        v += d[i].second;
        if (i + 1 < d.size() && d[i + 1].first == d[i].first) continue;
        ev.push_back({{"ph", "C"},
                      {"name", track_names_[t]},
                      {"pid", link_pid},
                      {"ts", d[i].first * 1e6},
                      {"args", {{"GBps", std::max(0.0, v) < 1e-9 ? 0.0 : v}}}});
      }
    }
  }
  nlohmann::json other = meta;
  other["ranks"] = topo_.size();
  other["nodes"] = topo_.nodes();
  other["gpus_per_node"] = gpn;
  other["rank_stride"] = rank_stride_;
  other["ranks_recorded"] = rank_stride_ == 1 ? "all" : "every " + std::to_string(rank_stride_) + "th rank (sampled)";
  other["link_tracks"] = rounds_.empty()    ? "none (the fabric models no links)"
                         : per_link_tracks_ ? "per link"
                                            : "per link class: mean over the class and its busiest link";
  nlohmann::json tracks = nlohmann::json::array();
  for (size_t t = 0; t < track_names_.size(); ++t)
    tracks.push_back({{"name", track_names_[t]}, {"GBps", track_Bps_[t] / 1e9}});
  other["link_capacity"] = tracks;
  other["link_pid"] = link_pid;
  nlohmann::json doc{{"traceEvents", ev}, {"displayTimeUnit", "ms"}, {"otherData", other}};
  write_output_file(path, doc.dump() + "\n", "the timeline");
}

}  // namespace eplab
