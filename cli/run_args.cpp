#include "cli/run_args.hpp"

#include <algorithm>

#include "engine/json_fields.hpp"

namespace eplab::cli {

RunArgs::RunArgs(Args& args, RunConfig& cfg) : cfg_(cfg) {
  for (const RunOption& o : run_options()) {
    const nlohmann::json d = o.field.get(cfg);
    args.opt(
        o.flag, [this, &o](const std::string& v) { typed_.emplace_back(&o, v); },
        d.is_string() ? d.get<std::string>() : d.dump(), o.help);
  }
  args.opt("config", &config_path_, "read options from this JSON file (keys as eplab.run's; the command line wins)")
      .flag("no-verify", &no_verify_, "skip the delivery and combine check (as --verify 0)");
}

void RunArgs::apply() {
  given_.clear();
  if (!config_path_.empty()) {
    const std::string source = "config file '" + config_path_ + "'";
    given_ = read_run_config(fields::parse_file(config_path_, source), source, cfg_);
  }
  std::vector<std::string> lists_cleared;  // a repeatable option on the command line replaces a config file's list
  for (const auto& [o, text] : typed_) {
    if (o->field.type == fields::Type::kStringList &&
        std::find(lists_cleared.begin(), lists_cleared.end(), o->field.key) == lists_cleared.end()) {
      o->field.set(cfg_, nlohmann::json::array(), "--" + o->flag);
      lists_cleared.push_back(o->field.key);
    }
    set_run_option_text(cfg_, *o, text);
    given_.push_back(o->field.key);
  }
  if (no_verify_) {
    cfg_.verify = false;
    given_.push_back("verify");
  }
  apply_backend_defaults(cfg_, given_);
}

}  // namespace eplab::cli
