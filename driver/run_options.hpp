// The one table of `eplab run` options (name, type, default, help, check), beside RunConfig. The command line,
// eplab.run()'s keyword arguments, `python3 -m eplab run` and config files (`eplab run --config run.json`,
// `eplab run ... --dump-config`) are all generated from it, so each option is reachable from every one of them
// with the same default. docs/config.md lists the options.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "driver/experiment.hpp"
#include "engine/json_fields.hpp"

namespace eplab {

struct RunOption {
  fields::Field<RunConfig> field;  // its key: RunConfig's field name, the keyword argument and the config-file key
  std::string flag;                // the command line's name: the key with '-' for '_' (timeout_s: timeout)
  std::string help;
};
const std::vector<RunOption>& run_options();

// The defaults every front end starts from: RunConfig's, with the backend sim where this build has it, else emu.
RunConfig default_run_config();

// Defaults that depend on the backend, applied once every source has been read: emu ranks hold real fp32
// activations in one process, where a whole preset cluster at 4096 tokens per rank does not fit, so on emu
// nodes is 2 and tokens 256 unless `given` (option keys) names them; mpi, real bytes too, gets the same.
void apply_backend_defaults(RunConfig& cfg, const std::vector<std::string>& given);

// Sets one option from text as typed on a command line, converted by the option's type; errors name --flag.
void set_run_option_text(RunConfig& cfg, const RunOption& option, const std::string& text);

// Sets the options a config file (or eplab.run's keyword arguments) gives and returns their keys; an unknown key,
// a wrong type or a failed check is an error naming `source` and the option.
std::vector<std::string> read_run_config(const nlohmann::json& j, const std::string& source, RunConfig& cfg);
nlohmann::json run_config_to_json(const RunConfig& cfg);

}  // namespace eplab
