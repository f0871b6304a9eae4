// The `eplab` command: dispatches to the subcommands that registered themselves (cli/cmd_*.cpp).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli/args.hpp"
#include "engine/error.hpp"
#include "traces/trace_file.hpp"

int main(int argc, char** argv) {
  using eplab::cli::commands;
  std::vector<std::string> args(argv + 1, argv + argc);
  auto usage = [] {
    std::cout << "usage: eplab COMMAND [options]   (eplab COMMAND --help for its options; eplab --version)\n\n"
                 "eplab simulates and measures MoE expert-parallel dispatch/combine.\n\ncommands:\n";
    for (auto& [name, c] : commands()) {
      std::string left = "  " + name;
      std::cout << left << std::string(left.size() < 14 ? 14 - left.size() : 1, ' ') << c.summary << "\n";
    }
  };
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    usage();
    return args.empty() ? 2 : 0;
  }
  if (args[0] == "--version" || args[0] == "-V") {
    std::cout << "eplab " << eplab::eplab_version() << "\n";
    return 0;
  }
  auto it = commands().find(args[0]);
  if (it == commands().end()) {
    std::cerr << "eplab: unknown command '" << args[0] << "'\n";
    usage();
    return 2;
  }
  try {
    return it->second.run(std::vector<std::string>(args.begin() + 1, args.end()));
  } catch (const eplab::cli::UsageError& e) {
    std::cerr << "eplab " << args[0] << ": usage error: " << e.what() << "\n";
    return 2;
  } catch (const eplab::EplabError& e) {
    std::cerr << "eplab " << args[0] << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "eplab " << args[0] << ": internal error: " << e.what() << "\n";
    return 3;
  }
}
