#include "traces/trace_tools.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "engine/error.hpp"

namespace eplab {

TraceHeader generate_trace(const TraceGenOptions& opts, const std::string& out_path) {
  const RoutingParams& p = opts.params;
  if (opts.steps < 1) throw EplabError("trace gen: steps is " + std::to_string(opts.steps) + ", expected >= 1");
  if (opts.layers < 1) throw EplabError("trace gen: layers is " + std::to_string(opts.layers) + ", expected >= 1");
  RoutingParams asked = p;
  asked.steps = opts.steps;
  asked.layers = opts.layers;
  auto source = make_routing(opts.routing, asked);
  // The header goes first, so the first batch tells whether this source produces gate scores.
  RoutingBatch first = source->batch(0, 0, 0);
  TraceHeader h;
  h.shape = p.shape;
  h.cluster = p.topology.spec().name;
  h.nodes = p.topology.nodes();
  h.gpus_per_node = p.topology.gpus_per_node();
  h.num_steps = opts.steps;
  h.num_layers = opts.layers;
  h.num_ranks = p.topology.size();
  h.tokens_per_rank = p.tokens_per_rank;
  h.has_gate_scores = !first.gate_scores.empty();
  h.provenance.generator = source->name();
  h.provenance.seed = p.seed;
  h.provenance.created_by = opts.created_by;
  TraceWriter w(out_path, h);
  for (int s = 0; s < opts.steps; ++s)
    for (int l = 0; l < opts.layers; ++l)
      for (int r = 0; r < h.num_ranks; ++r) w.write(s + l + r == 0 ? first : source->batch(s, l, r));
  w.close();
  return w.header();
}

// ---------------------------------------------------------------------------------------------------------

TraceSummary summarize_trace(const std::string& path) {
  TraceSummary s;
  s.path = path;
  TraceReader reader(path);
  s.file_bytes = reader.file_size();
  s.header = reader.header();
  const int e_count = s.header.shape.num_experts;
  s.expert_load.assign(e_count, 0);
  // Per-layer loads only for the layers that hold selections: a header's layer and expert counts alone must not
  // size an allocation (their product is far beyond memory for a corrupt header that passes the bounds).
  std::map<int, std::vector<uint64_t>> layer_load;
  s.min_batch_tokens = INT32_MAX;
  while (auto b = reader.next()) {
    ++s.num_batches;
    s.num_tokens += b->num_tokens;
    s.min_batch_tokens = std::min(s.min_batch_tokens, b->num_tokens);
    s.max_batch_tokens = std::max(s.max_batch_tokens, b->num_tokens);
    for (int32_t e : b->topk_idx) {
      if (e < 0) {
        ++s.empty_slots;
        continue;
      }
      ++s.selections;
      ++s.expert_load[e];
      auto& ll = layer_load[b->layer];
      if (ll.empty()) ll.assign(e_count, 0);
      ++ll[e];
    }
  }
  if (s.num_batches == 0) s.min_batch_tokens = 0;
  s.load_mean = static_cast<double>(s.selections) / e_count;
  double var = 0;
  uint64_t max_load = 0;
  for (uint64_t x : s.expert_load) {
    var += (x - s.load_mean) * (x - s.load_mean);
    max_load = std::max(max_load, x);
    s.unused_experts += x == 0;
  }
  if (s.load_mean > 0) {
    s.load_max_over_mean = max_load / s.load_mean;
    s.load_cv = std::sqrt(var / e_count) / s.load_mean;
  }
  s.layer_max_over_mean.assign(s.header.num_layers, 0.0);
  for (const auto& [layer, ll] : layer_load) {
    uint64_t total = 0, mx = 0;
    for (uint64_t x : ll) total += x, mx = std::max(mx, x);
    s.layer_max_over_mean[layer] = total ? mx / (static_cast<double>(total) / e_count) : 0.0;
  }
  std::vector<int> order(e_count);
  for (int e = 0; e < e_count; ++e) order[e] = e;
  const int top = std::min(5, e_count);
  std::partial_sort(order.begin(), order.begin() + top, order.end(), [&](int a, int b) {
    return s.expert_load[a] != s.expert_load[b] ? s.expert_load[a] > s.expert_load[b] : a < b;
  });
  for (int i = 0; i < top; ++i) s.hottest.emplace_back(order[i], s.expert_load[order[i]]);
  return s;
}

std::string format_trace_summary(const TraceSummary& s) {
  const TraceHeader& h = s.header;
  std::ostringstream os;
  char buf[256];
  auto row = [&](const char* key, const std::string& value) {
    os << "  " << key << std::string(14 - std::min<size_t>(13, std::strlen(key)), ' ') << value << '\n';
  };
  std::snprintf(buf, sizeof buf, "%s (%.1f KiB, format v%u)", s.path.c_str(), s.file_bytes / 1024.0, h.format_version);
  row("trace", buf);
  std::snprintf(buf, sizeof buf, "%s: %d experts, top-%d, hidden %d, %s", h.shape.name.c_str(), h.shape.num_experts,
                h.shape.topk, h.shape.hidden,
                h.shape.max_nodes_per_token > 0
                    ? ("at most " + std::to_string(h.shape.max_nodes_per_token) + " nodes per token").c_str()
                    : "no node limit");
  row("model", buf);
  std::snprintf(buf, sizeof buf, "%s: %d nodes x %d GPUs", h.cluster.empty() ? "(unnamed)" : h.cluster.c_str(), h.nodes,
                h.gpus_per_node);
  row("cluster", buf);
  std::snprintf(buf, sizeof buf, "%d steps x %d layers x %d ranks = %llu batches, %d tokens per rank", h.num_steps,
                h.num_layers, h.num_ranks, static_cast<unsigned long long>(s.num_batches), h.tokens_per_rank);
  row("grid", buf);
  if (!h.layer_ids.empty()) {
    std::string ids;
    for (size_t i = 0; i < h.layer_ids.size(); ++i) ids += (i ? " " : "") + std::to_string(h.layer_ids[i]);
    row("model layers", ids);
  }
  std::snprintf(buf, sizeof buf, "%llu (per batch %d..%d), %llu expert selections, %llu empty slots",
                static_cast<unsigned long long>(s.num_tokens), s.min_batch_tokens, s.max_batch_tokens,
                static_cast<unsigned long long>(s.selections), static_cast<unsigned long long>(s.empty_slots));
  row("tokens", buf);
  row("gate scores", h.has_gate_scores ? "yes" : "no");
  std::string prov =
      h.provenance.generator + ", seed " + std::to_string(h.provenance.seed) + ", eplab " + h.provenance.tool_version;
  if (!h.provenance.created_by.empty()) prov += ", by \"" + h.provenance.created_by + "\"";
  if (!h.provenance.source.empty()) prov += ", from " + h.provenance.source;
  row("provenance", prov);
  if (!h.provenance.source_meta.empty()) row("source meta", h.provenance.source_meta);
  uint64_t mn = s.expert_load.empty() ? 0 : *std::min_element(s.expert_load.begin(), s.expert_load.end());
  uint64_t mx = s.expert_load.empty() ? 0 : *std::max_element(s.expert_load.begin(), s.expert_load.end());
  std::snprintf(buf, sizeof buf, "min %llu  mean %.1f  max %llu  max/mean %.2f  cv %.2f  unused experts %d",
                static_cast<unsigned long long>(mn), s.load_mean, static_cast<unsigned long long>(mx),
                s.load_max_over_mean, s.load_cv, s.unused_experts);
  row("expert load", buf);
  std::string hot;
  for (auto& [e, load] : s.hottest) {
    std::snprintf(buf, sizeof buf, "%se%d %llu (%.1f%%)", hot.empty() ? "" : ", ", e,
                  static_cast<unsigned long long>(load), s.selections ? 100.0 * load / s.selections : 0.0);
    hot += buf;
  }
  row("hottest", hot);
  std::string layers;
  for (size_t l = 0; l < s.layer_max_over_mean.size() && l < 16; ++l) {
    std::snprintf(buf, sizeof buf, "%sL%zu %.2f", l ? "  " : "", l, s.layer_max_over_mean[l]);
    layers += buf;
  }
  if (s.layer_max_over_mean.size() > 16) layers += "  ...";
  row("layer max/mean", layers);
  return os.str();
}

// ---------------------------------------------------------------------------------------------------------
// JSONL import

namespace {

struct TokenRow {
  int step;
  int layer;
  int64_t token;
  size_t at;  // offset into the flat id/weight arrays
  int line;
};

}  // namespace

TraceHeader import_jsonl(const JsonlImportOptions& opts, const std::string& out_path) {
  using nlohmann::json;
  const std::string& path = opts.jsonl_path;
  std::ifstream in(path);
  if (!in) {
    std::error_code ec;
    throw EplabError("routing log '" + path +
                     "': " + (std::filesystem::exists(path, ec) ? "cannot open for reading" : "no such file"));
  }
  const int k = opts.shape.topk;
  const int e_count = opts.shape.num_experts;
  if (k < 1 || k > e_count)
    throw EplabError("trace import: model '" + opts.shape.name + "' has top-k " + std::to_string(k) + " and " +
                     std::to_string(e_count) + " experts");
  std::vector<TokenRow> rows;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::string meta;
  std::map<std::tuple<int, int, int64_t>, int> seen;  // (step, layer, token) -> line
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string where = path + ":" + std::to_string(line_no);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      throw EplabError(where + ": not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object())
      throw EplabError(where + ": expected a JSON object per line, got " + std::string(j.type_name()));
    if (auto t = j.find("type"); t != j.end() && *t == "meta") {
      const size_t first = line.find_first_not_of(" \t"), last = line.find_last_not_of(" \t\r");
      meta += (meta.empty() ? "" : "\n") + line.substr(first, last - first + 1);
      continue;
    }
    auto integer = [&](const char* key, bool required, int64_t fallback) -> int64_t {
      auto it = j.find(key);
      if (it == j.end()) {
        if (required) throw EplabError(where + ": missing \"" + key + "\" (expected an integer)");
        return fallback;
      }
      if (!it->is_number_integer() || it->get<int64_t>() < 0)
        throw EplabError(where + ": \"" + key + "\" is " + it->dump() + ", expected an integer >= 0");
      return it->get<int64_t>();
    };
    const int64_t layer = integer("layer", true, 0);
    const int64_t token = integer("token_idx", true, 0);
    const int64_t step = integer("step", false, 0);
    if (layer > INT32_MAX || step > INT32_MAX) throw EplabError(where + ": layer or step number too large");
    // A token lands on rank token_idx / tokens_per_rank, and a trace holds at most INT32_MAX tokens per rank: a
    // larger index fits no cluster of this size (and would overflow the arithmetic that places it).
    const int64_t max_index = static_cast<int64_t>(opts.topology.size()) * INT32_MAX - 1;
    if (token > max_index)
      throw EplabError(where + ": token_idx " + std::to_string(token) +
                       " is too large: " + std::to_string(opts.topology.size()) + " ranks of at most " +
                       std::to_string(INT32_MAX) + " tokens each hold token_idx 0.." + std::to_string(max_index));
    auto ids_it = j.find("topk_ids");
    auto w_it = j.find("topk_weights");
    if (ids_it == j.end() || !ids_it->is_array())
      throw EplabError(where + ": missing \"topk_ids\" (expected an array of expert ids)");
    if (w_it == j.end() || !w_it->is_array())
      throw EplabError(where + ": missing \"topk_weights\" (expected an array of numbers)");
    if (ids_it->size() != w_it->size())
      throw EplabError(where + ": " + std::to_string(ids_it->size()) + " topk_ids but " + std::to_string(w_it->size()) +
                       " topk_weights");
    if (static_cast<int>(ids_it->size()) > k)
      throw EplabError(where + ": " + std::to_string(ids_it->size()) + " expert ids, but model '" + opts.shape.name +
                       "' routes top-" + std::to_string(k));
    auto [pos, fresh] = seen.emplace(std::make_tuple(static_cast<int>(step), static_cast<int>(layer), token), line_no);
    if (!fresh)
      throw EplabError(where + ": token_idx " + std::to_string(token) + " of layer " + std::to_string(layer) +
                       " (step " + std::to_string(step) + ") already appeared on line " + std::to_string(pos->second));
    rows.push_back({static_cast<int>(step), static_cast<int>(layer), token, ids.size(), line_no});
    for (size_t i = 0; i < static_cast<size_t>(k); ++i) {
      if (i >= ids_it->size()) {
        ids.push_back(-1);
        weights.push_back(0.0f);
        continue;
      }
      const json& id = (*ids_it)[i];
      const json& w = (*w_it)[i];
      if (!id.is_number_integer() || id.get<int64_t>() < -1 || id.get<int64_t>() >= e_count)
        throw EplabError(where + ": token " + std::to_string(token) + ", layer " + std::to_string(layer) +
                         ": topk_ids[" + std::to_string(i) + "] is " + id.dump() + ", but model '" + opts.shape.name +
                         "' has experts 0.." + std::to_string(e_count - 1) + " (-1 = none)");
      if (!w.is_number() || !std::isfinite(w.get<double>()))
        throw EplabError(where + ": token " + std::to_string(token) + ": topk_weights[" + std::to_string(i) + "] is " +
                         w.dump() + ", expected a finite number");
      ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
      weights.push_back(w.get<float>());
    }
  }
  if (in.bad()) throw EplabError("routing log '" + path + "': read error after line " + std::to_string(line_no));
  if (rows.empty()) throw EplabError("routing log '" + path + "': no token records (only meta lines or empty)");

  // Renumber layers and steps densely, in increasing order.
  std::vector<int> layer_ids, step_ids;
  int64_t max_token = 0;
  for (auto& r : rows) {
    layer_ids.push_back(r.layer);
    step_ids.push_back(r.step);
    max_token = std::max(max_token, r.token);
  }
  for (auto* v : {&layer_ids, &step_ids}) {
    std::sort(v->begin(), v->end());
    v->erase(std::unique(v->begin(), v->end()), v->end());
  }
  auto dense = [](const std::vector<int>& v, int x) {
    return static_cast<int>(std::lower_bound(v.begin(), v.end(), x) - v.begin());
  };
  const int ranks = opts.topology.size();
  int64_t tpr = opts.tokens_per_rank;
  if (tpr < 0) throw EplabError("trace import: tokens per rank is " + std::to_string(tpr) + ", expected >= 0");
  if (tpr == 0) tpr = (max_token + ranks) / ranks;  // ceil((max_token + 1) / ranks)
  if (tpr > INT32_MAX) throw EplabError("trace import: token_idx " + std::to_string(max_token) + " is too large");
  for (auto& r : rows)
    if (r.token / tpr >= ranks)
      throw EplabError(path + ":" + std::to_string(r.line) + ": token_idx " + std::to_string(r.token) +
                       " falls on rank " + std::to_string(r.token / tpr) + ", but the cluster has " +
                       std::to_string(ranks) + " ranks of " + std::to_string(tpr) +
                       " tokens each (raise tokens per rank or the cluster size)");
  std::stable_sort(rows.begin(), rows.end(), [&](const TokenRow& a, const TokenRow& b) {
    return std::tie(a.step, a.layer, a.token) < std::tie(b.step, b.layer, b.token);
  });

  TraceHeader h;
  h.shape = opts.shape;
  h.cluster = opts.topology.spec().name;
  h.nodes = opts.topology.nodes();
  h.gpus_per_node = opts.topology.gpus_per_node();
  h.num_steps = static_cast<int>(step_ids.size());
  h.num_layers = static_cast<int>(layer_ids.size());
  h.num_ranks = ranks;
  h.tokens_per_rank = static_cast<int>(tpr);
  bool identity_layers = true;
  for (size_t i = 0; i < layer_ids.size(); ++i) identity_layers &= layer_ids[i] == static_cast<int>(i);
  if (!identity_layers) h.layer_ids = layer_ids;
  h.provenance.generator = "import:jsonl";
  h.provenance.created_by = opts.created_by;
  h.provenance.source = std::filesystem::path(path).filename().string();
  h.provenance.source_meta = meta;
  TraceWriter w(out_path, h);
  size_t next = 0;
  for (int s = 0; s < h.num_steps; ++s)
    for (int l = 0; l < h.num_layers; ++l)
      for (int r = 0; r < ranks; ++r) {
        RoutingBatch b;
        b.step = s;
        b.layer = l;
        b.src_rank = r;
        b.topk = k;
        while (next < rows.size() && dense(step_ids, rows[next].step) == s && dense(layer_ids, rows[next].layer) == l &&
               rows[next].token / tpr == r) {
          const TokenRow& row = rows[next++];
          b.topk_idx.insert(b.topk_idx.end(), ids.begin() + row.at, ids.begin() + row.at + k);
          b.topk_weights.insert(b.topk_weights.end(), weights.begin() + row.at, weights.begin() + row.at + k);
          ++b.num_tokens;
        }
        w.write(b);
      }
  // Every row must have gone into a batch: a trace that silently holds fewer tokens than the log is worse than none.
  if (next != rows.size())
    throw EplabError(path + ":" + std::to_string(rows[next].line) + ": token_idx " + std::to_string(rows[next].token) +
                     " could not be placed on any rank (" + std::to_string(next) + " of " +
                     std::to_string(rows.size()) + " token lines written)");
  w.close();
  return w.header();
}

}  // namespace eplab
