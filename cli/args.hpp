// A small option parser for the eplab subcommands: `--name value` or `--name=value`, flags, positionals,
// generated --help, and an error naming the option and what was expected for anything it cannot read.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/error.hpp"

namespace eplab::cli {

// A malformed command line (an unknown option, a missing value, an argument the command does not take): the
// `eplab` command exits 2 for it, 1 for a well-formed request with a bad value.
class UsageError : public EplabError {
 public:
  using EplabError::EplabError;
};

class Args {
 public:
  Args(std::string usage, std::string summary) : usage_(std::move(usage)), summary_(std::move(summary)) {}

  Args& opt(const std::string& name, std::string* target, const std::string& help);
  Args& opt(const std::string& name, int* target, const std::string& help);
  Args& opt(const std::string& name, double* target, const std::string& help);
  Args& opt(const std::string& name, uint64_t* target, const std::string& help);
  Args& flag(const std::string& name, bool* target, const std::string& help);
  // An option whose text goes to `set` as typed (generated options convert and check it themselves).
  Args& opt(const std::string& name, std::function<void(const std::string&)> set, const std::string& default_text,
            const std::string& help);

  // Arguments that are not options: at most `max` (none unless declared).
  Args& positionals(size_t max) {
    max_positional_ = max;
    return *this;
  }
  // Parses argv (without the program and subcommand names). Returns false when --help was asked for (the help
  // is printed). Throws UsageError on an unknown option, a missing value or an argument too many, EplabError on
  // a value of the wrong type.
  bool parse(const std::vector<std::string>& argv);
  bool given(const std::string& name) const { return given_.count(name) != 0; }
  const std::vector<std::string>& positional() const { return positional_; }
  std::string help() const;

 private:
  struct Opt {
    std::string help;
    std::string default_text;
    bool is_flag = false;
    std::function<void(const std::string&)> set;
  };
  Args& add(const std::string& name, Opt o);
  std::string usage_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Opt> opts_;
  std::map<std::string, bool> given_;
  std::vector<std::string> positional_;
  size_t max_positional_ = 0;
};

// Subcommands register themselves: EPLAB_COMMAND("run", "summary", fn) in their own .cpp file.
using CommandFn = int (*)(const std::vector<std::string>& args);
struct Command {
  std::string name;
  std::string summary;
  CommandFn run;
};
std::map<std::string, Command>& commands();
struct CommandRegistrar {
  CommandRegistrar(const char* name, const char* summary, CommandFn fn) { commands()[name] = {name, summary, fn}; }
};
#define EPLAB_COMMAND(name, summary, fn) \
  static ::eplab::cli::CommandRegistrar eplab_command_registrar_(name, summary, fn)

// A progress line on stderr when it is a terminal: "\r<what> 3/10 (30%)". Silent otherwise or when quiet.
class Progress {
 public:
  Progress(std::string what, bool quiet);
  void update(int done, int total);
  void finish();

 private:
  std::string what_;
  bool enabled_;
  bool shown_ = false;
};

}  // namespace eplab::cli
