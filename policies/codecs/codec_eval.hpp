// Codec quality evaluation: generated activations (Gaussian, Student-t with 3 degrees of freedom, LLM-like
// with a few ~100x outlier channels), error metrics (DeepEP's calc_diff, relative L2, cosine, max abs error)
// and the table / JSON that `eplab codec eval` prints and writes.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace eplab {

enum class ActivationKind { kGaussian, kStudentT, kLlm };

// "gaussian", "student-t" or "llm"; throws EplabError listing the kinds otherwise.
ActivationKind parse_activation_kind(const std::string& name);
std::string activation_kind_name(ActivationKind kind);

// tokens x hidden row-major activations, deterministic for a seed. llm: Gaussian channels with per-token
// log-normal scale, plus max(2, hidden/1024) outlier channels about 100x larger (as in LLM hidden states).
std::vector<float> generate_activations(ActivationKind kind, int tokens, int hidden, uint64_t seed);

struct ErrorMetrics {
  double calc_diff = 0;  // DeepEP: 1 - 2 sum(x'y') / sum(x'^2 + y'^2), x' = x + 1, y' = y + 1
  double rel_l2 = 0;     // ||y - x|| / ||x||
  double cosine = 1;     // <x, y> / (||x|| ||y||)
  double max_abs_err = 0;
};
ErrorMetrics compute_error_metrics(const float* reference, const float* decoded, size_t n);

struct CodecEvalOptions {
  std::string codec = "fp8-e4m3-b128";
  ActivationKind data = ActivationKind::kGaussian;
  int tokens = 1024;
  int hidden = 7168;
  // Stateful codecs (delta, error feedback) see `steps` messages on one stream; consecutive steps are
  // correlated: x_s = rho * x_{s-1} + sqrt(1 - rho^2) * fresh, so delta has something to exploit.
  int steps = 1;
  double step_correlation = 0.95;
  uint64_t seed = 1;
};

struct CodecEvalResult {
  std::string codec;
  std::string data;
  int tokens = 0;
  int hidden = 0;
  int steps = 0;
  bool lossless = false;
  bool fixed_rate = false;
  size_t bytes = 0;            // encoded bytes, summed over steps
  size_t predicted_bytes = 0;  // encoded_size() summed over steps (exact for fixed-rate codecs)
  double bits_per_element = 0;
  double ratio_vs_bf16 = 0;   // bf16 bytes / encoded bytes
  double error_bound = 0;     // error_bound_for(hidden)
  bool within_bound = false;  // every step's rel_l2 <= error_bound
  ErrorMetrics metrics;       // over all steps together
  double worst_step_rel_l2 = 0;
};

CodecEvalResult evaluate_codec(const CodecEvalOptions& options);
void print_eval_table(std::ostream& os, const std::vector<CodecEvalResult>& results);
nlohmann::json eval_results_to_json(const std::vector<CodecEvalResult>& results);
// `eplab codec list`: name, kind, error bound at hidden 7168, bits/element at 7168, summary.
void print_codec_list(std::ostream& os);

}  // namespace eplab
