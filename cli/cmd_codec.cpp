// `eplab codec list` and `eplab codec eval`: the registered codecs with their bounds and rates, and the
// quality of one codec spec on generated activations (table on stdout, JSON with --json).
#include <fstream>
#include <iostream>

#include "cli/args.hpp"
#include "engine/error.hpp"
#include "engine/output_file.hpp"
#include "policies/codecs/codec_eval.hpp"

namespace eplab::cli {
namespace {

int cmd_codec(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::cout << "usage: eplab codec list | eplab codec eval --codec SPEC --data gaussian|student-t|llm "
                 "--tokens T --hidden H [--steps S] [--seed X] [--json FILE]\n";
    return argv.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (argv[0] == "list") {
    Args args("eplab codec list", "List registered codecs: kind, bits/element and error bound at hidden 7168.");
    if (!args.parse(rest)) return 0;
    print_codec_list(std::cout);
    return 0;
  }
  if (argv[0] != "eval") throw EplabError("eplab codec: unknown action '" + argv[0] + "' (expected list or eval)");
  CodecEvalOptions o;
  std::string data = "gaussian", json;
  Args args("eplab codec eval", "Encode and decode generated activations with a codec spec; report the error.");
  args.opt("codec", &o.codec,
           "codec spec, e.g. fp8-e4m3-b128 or topk:ratio=0.25+int8-token+zstd (comma-separate "
           "several with ';')")
      .opt("data", &data, "gaussian, student-t (nu = 3) or llm (outlier channels ~100x)")
      .opt("tokens", &o.tokens, "tokens per message")
      .opt("hidden", &o.hidden, "hidden size")
      .opt("steps", &o.steps, "messages on one stream (delta and error feedback use the history)")
      .opt("seed", &o.seed, "seed for the generated activations")
      .opt("json", &json, "write the results as JSON to this file");
  if (!args.parse(rest)) return 0;
  std::vector<CodecEvalResult> results;
  std::vector<std::string> kinds;
  if (data == "all") {
    kinds = {"gaussian", "student-t", "llm"};
  } else {
    kinds = {data};
  }
  std::vector<std::string> specs;
  size_t start = 0;
  std::string all = o.codec;
  while (true) {
    size_t semi = all.find(';', start);
    specs.push_back(all.substr(start, semi == std::string::npos ? std::string::npos : semi - start));
    if (semi == std::string::npos) break;
    start = semi + 1;
  }
  for (const auto& spec : specs) {
    for (const auto& kind : kinds) {
      CodecEvalOptions one = o;
      one.codec = spec;
      one.data = parse_activation_kind(kind);
      results.push_back(evaluate_codec(one));
    }
  }
  print_eval_table(std::cout, results);
  if (!json.empty()) {
    write_output_file(json, eval_results_to_json(results).dump(2) + "\n", "the --json results");
  }
  return 0;
}

}  // namespace

EPLAB_COMMAND("codec", "list codecs, or evaluate a codec spec on generated activations", cmd_codec);

}  // namespace eplab::cli
