// The options every command that runs an experiment takes (`eplab run`, `eplab validate`): the run options of
// driver/run_options.hpp's one table, --config FILE and --no-verify, declared on the command's Args and applied to
// its RunConfig once parsed (the file first, so the command line overrides it).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "cli/args.hpp"
#include "driver/experiment.hpp"
#include "driver/run_options.hpp"

namespace eplab::cli {

class RunArgs {
 public:
  // Declares the options on `args`; `cfg` keeps its defaults until apply().
  RunArgs(Args& args, RunConfig& cfg);
  // After args.parse(): reads --config's file, applies the typed options and --no-verify, then the backend's
  // defaults for whatever was not given.
  void apply();
  const std::vector<std::string>& given() const { return given_; }

 private:
  RunConfig& cfg_;
  std::vector<std::pair<const RunOption*, std::string>> typed_;
  std::string config_path_;
  bool no_verify_ = false;
  std::vector<std::string> given_;
};

}  // namespace eplab::cli
