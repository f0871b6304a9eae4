// Implementation of the codec quality evaluation; see codec_eval.hpp.
#include "policies/codecs/codec_eval.hpp"

#include <cmath>
#include <cstdio>
#include <limits>
#include <ostream>
#include <random>

#include "engine/error.hpp"
#include "policies/codecs/codec.hpp"

namespace eplab {
namespace {

// Box-Muller on a fixed generator: std::normal_distribution differs between standard libraries and the
// generated data must be identical everywhere for a seed.
class Normal {
 public:
  explicit Normal(uint64_t seed) : rng_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = (static_cast<double>(rng_() >> 11) + 0.5) * 0x1p-53;
    double u2 = static_cast<double>(rng_() >> 11) * 0x1p-53;
    double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2 * M_PI * u2);
  }
  uint64_t raw() { return rng_(); }

 private:
  std::mt19937_64 rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

}  // namespace

ActivationKind parse_activation_kind(const std::string& name) {
  if (name == "gaussian") return ActivationKind::kGaussian;
  if (name == "student-t") return ActivationKind::kStudentT;
  if (name == "llm") return ActivationKind::kLlm;
  throw EplabError("unknown activation data '" + name + "' (known: gaussian, student-t, llm)");
}

std::string activation_kind_name(ActivationKind kind) {
  switch (kind) {
    case ActivationKind::kGaussian:
      return "gaussian";
    case ActivationKind::kStudentT:
      return "student-t";
    case ActivationKind::kLlm:
      return "llm";
  }
  return "?";
}

std::vector<float> generate_activations(ActivationKind kind, int tokens, int hidden, uint64_t seed) {
  Normal normal(seed * 0x9e3779b97f4a7c15ull + 17);
  size_t n = static_cast<size_t>(tokens) * static_cast<size_t>(hidden);
  std::vector<float> x(n);
  switch (kind) {
    case ActivationKind::kGaussian:
      for (auto& v : x) v = static_cast<float>(normal());
      break;
    case ActivationKind::kStudentT:
      for (auto& v : x) {
        double z = normal();
        double a = normal(), b = normal(), c = normal();
        v = static_cast<float>(z / std::sqrt((a * a + b * b + c * c) / 3.0));
      }
      break;
    case ActivationKind::kLlm: {
      int outliers = std::max(2, hidden / 1024);
      std::vector<double> channel_scale(hidden, 1.0);
      for (int k = 0; k < outliers && hidden > 0; ++k) {
        channel_scale[normal.raw() % static_cast<uint64_t>(hidden)] = 100.0 * (1.0 + 0.2 * normal());
      }
      for (int t = 0; t < tokens; ++t) {
        double token_scale = std::exp(0.5 * normal());
        for (int h = 0; h < hidden; ++h) {
          x[static_cast<size_t>(t) * hidden + h] = static_cast<float>(token_scale * channel_scale[h] * normal());
        }
      }
      break;
    }
  }
  return x;
}

ErrorMetrics compute_error_metrics(const float* x, const float* y, size_t n) {
  double sxy1 = 0, sxx1 = 0, syy1 = 0, sxy = 0, sxx = 0, syy = 0, sdd = 0, maxd = 0;
  for (size_t i = 0; i < n; ++i) {
    double a = x[i], b = y[i];
    double a1 = a + 1, b1 = b + 1;
    sxy1 += a1 * b1;
    sxx1 += a1 * a1;
    syy1 += b1 * b1;
    sxy += a * b;
    sxx += a * a;
    syy += b * b;
    double d = b - a;
    sdd += d * d;
    maxd = std::max(maxd, std::fabs(d));
  }
  ErrorMetrics m;
  double denom = sxx1 + syy1;
  m.calc_diff = denom > 0 ? 1.0 - 2.0 * sxy1 / denom : 0.0;
  m.rel_l2 = sxx > 0 ? std::sqrt(sdd / sxx) : (sdd > 0 ? std::numeric_limits<double>::infinity() : 0.0);
  m.cosine = (sxx > 0 && syy > 0) ? sxy / std::sqrt(sxx * syy) : (sxx == syy ? 1.0 : 0.0);
  m.max_abs_err = maxd;
  return m;
}

CodecEvalResult evaluate_codec(const CodecEvalOptions& o) {
  if (o.tokens < 0 || o.hidden < 0 || o.steps < 1) {
    throw EplabError("codec eval: tokens and hidden must be >= 0 and steps >= 1 (got " + std::to_string(o.tokens) +
                     ", " + std::to_string(o.hidden) + ", " + std::to_string(o.steps) + ")");
  }
  auto codec = create_codec(o.codec);
  CodecEvalResult r;
  r.codec = codec->name();
  r.data = activation_kind_name(o.data);
  r.tokens = o.tokens;
  r.hidden = o.hidden;
  r.steps = o.steps;
  r.lossless = codec->lossless();
  r.fixed_rate = codec->fixed_rate();
  r.error_bound = codec->error_bound_for(o.hidden);
  r.within_bound = true;

  size_t n = static_cast<size_t>(o.tokens) * static_cast<size_t>(o.hidden);
  std::vector<float> x = generate_activations(o.data, o.tokens, o.hidden, o.seed);
  std::vector<float> all_x, all_y;
  std::vector<uint8_t> buf;
  std::vector<float> y(n);
  double rho = o.step_correlation, fresh = std::sqrt(std::max(0.0, 1.0 - rho * rho));
  for (int s = 0; s < o.steps; ++s) {
    if (s > 0) {
      std::vector<float> z = generate_activations(o.data, o.tokens, o.hidden, o.seed + 1000003ull * s);
      for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(rho * x[i] + fresh * z[i]);
    }
    buf.clear();
    r.predicted_bytes += codec->encoded_size(o.tokens, o.hidden);
    codec->encode(x.data(), o.tokens, o.hidden, buf, 0);
    codec->decode(buf.data(), buf.size(), o.tokens, o.hidden, y.data(), 0);
    r.bytes += buf.size();
    ErrorMetrics m = compute_error_metrics(x.data(), y.data(), n);
    r.worst_step_rel_l2 = std::max(r.worst_step_rel_l2, m.rel_l2);
    if (!(m.rel_l2 <= r.error_bound)) r.within_bound = false;
    all_x.insert(all_x.end(), x.begin(), x.end());
    all_y.insert(all_y.end(), y.begin(), y.end());
  }
  r.metrics = compute_error_metrics(all_x.data(), all_y.data(), all_x.size());
  double elements = static_cast<double>(n) * o.steps;
  r.bits_per_element = elements > 0 ? 8.0 * static_cast<double>(r.bytes) / elements : 0.0;
  r.ratio_vs_bf16 = r.bytes > 0 ? 2.0 * elements / static_cast<double>(r.bytes) : 0.0;
  return r;
}

void print_eval_table(std::ostream& os, const std::vector<CodecEvalResult>& results) {
  char line[512];
  std::snprintf(line, sizeof(line), "%-34s %-10s %8s %7s %11s %10s %10s %10s %10s %6s\n", "codec", "data", "bits/el",
                "xbf16", "calc_diff", "rel_l2", "cosine", "max_abs", "bound", "ok");
  os << line;
  for (const auto& r : results) {
    std::string bound = std::isinf(r.error_bound) ? "none" : fmt("%.3g", r.error_bound);
    std::snprintf(line, sizeof(line), "%-34s %-10s %8.3f %7.2f %11.3e %10.3e %10.6f %10.3e %10s %6s\n", r.codec.c_str(),
                  r.data.c_str(), r.bits_per_element, r.ratio_vs_bf16, r.metrics.calc_diff, r.metrics.rel_l2,
                  r.metrics.cosine, r.metrics.max_abs_err, bound.c_str(), r.within_bound ? "yes" : "NO");
    os << line;
  }
}

nlohmann::json eval_results_to_json(const std::vector<CodecEvalResult>& results) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : results) {
    nlohmann::json j;
    j["codec"] = r.codec;
    j["data"] = r.data;
    j["tokens"] = r.tokens;
    j["hidden"] = r.hidden;
    j["steps"] = r.steps;
    j["lossless"] = r.lossless;
    j["fixed_rate"] = r.fixed_rate;
    j["bytes"] = r.bytes;
    j["predicted_bytes"] = r.predicted_bytes;
    j["bits_per_element"] = r.bits_per_element;
    j["ratio_vs_bf16"] = r.ratio_vs_bf16;
    // JSON has no infinity: a codec without a bound reports null.
    j["error_bound"] = std::isinf(r.error_bound) ? nlohmann::json(nullptr) : nlohmann::json(r.error_bound);
    j["within_bound"] = r.within_bound;
    j["calc_diff"] = r.metrics.calc_diff;
    j["rel_l2"] = r.metrics.rel_l2;
    j["worst_step_rel_l2"] = r.worst_step_rel_l2;
    j["cosine"] = r.metrics.cosine;
    j["max_abs_err"] = r.metrics.max_abs_err;
    out.push_back(j);
  }
  return out;
}

void print_codec_list(std::ostream& os) {
  constexpr int kHidden = 7168;
  char line[512];
  std::snprintf(line, sizeof(line), "%-20s %-10s %8s %10s  %s\n", "name", "kind", "bits/el", "bound", "summary");
  os << line;
  for (const auto& info : codec_catalog()) {
    auto c = create_codec(info.name);
    std::string bound = std::isinf(c->error_bound_for(kHidden)) ? "none" : fmt("%.3g", c->error_bound_for(kHidden));
    std::string bits = c->fixed_rate() ? fmt("%.3f", c->bits_per_element(1, kHidden)) : "varies";
    std::snprintf(line, sizeof(line), "%-20s %-10s %8s %10s  %s\n", info.name.c_str(), info.kind.c_str(), bits.c_str(),
                  bound.c_str(), info.summary.c_str());
    os << line;
  }
  os << "(bits/element and bound at hidden " << kHidden
     << "; chain stages with '+', e.g. topk:ratio=0.25+fp8-e4m3-b128+zstd)\n";
}

}  // namespace eplab
