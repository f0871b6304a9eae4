// `eplab launch -n N -- COMMAND...`: starts COMMAND as N processes under Open MPI's mpirun, so that a run over
// a backend whose ranks are processes (`--backend=mpi`, `--backend=real --transport nccl|cuda-ipc`) needs no
// launcher flags learned by heart: on one machine (no hostfile) it lets N exceed the cores (--oversubscribe;
// Open MPI counts cores, not hardware threads, as slots), as root it adds --allow-run-as-root, and it runs this
// very eplab when COMMAND starts with `eplab`.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "cli/args.hpp"
#include "engine/error.hpp"

namespace eplab::cli {
namespace {

// `name` as the shell would find it on PATH, or "" (a name with a slash is taken as it is).
std::string find_on_path(const std::string& name) {
  if (name.find('/') != std::string::npos) return access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  for (size_t at = 0; at <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', at), dirs.size());
    const std::string dir = end > at ? dirs.substr(at, end - at) : ".";
    const std::string file = dir + "/" + name;
    if (access(file.c_str(), X_OK) == 0) return file;
    at = end + 1;
  }
  return "";
}

// The first line `mpirun --version` prints, to tell Open MPI from another launcher.
std::string launcher_version(const std::string& mpirun) {
  const std::string cmd = "'" + mpirun + "' --version 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char line[256] = {0};
  const bool got = std::fgets(line, sizeof line, p) != nullptr;
  pclose(p);
  std::string s = got ? line : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

std::string shell_words(const std::vector<std::string>& argv) {
  std::string s;
  for (const std::string& a : argv) {
    const bool plain = !a.empty() && a.find_first_of(" \t\"'\\$`*?;&|<>()") == std::string::npos;
    s += (s.empty() ? "" : " ") + (plain ? a : "'" + a + "'");
  }
  return s;
}

int cmd_launch(const std::vector<std::string>& argv_in) {
  // The command is everything after the first "--"; what comes before is launch's own options.
  std::vector<std::string> own, command;
  bool after = false;
  for (const std::string& a : argv_in) {
    if (!after && a == "--") {
      after = true;
      continue;
    }
    (after ? command : own).push_back(a == "-n" ? "--np" : a);
  }
  int np = 0;
  std::string hostfile, mpirun;
  const char* env_mpirun = std::getenv("EPLAB_MPIRUN");
  mpirun = env_mpirun && *env_mpirun ? env_mpirun : "mpirun";
  std::vector<std::string> passed;  // --mpirun-arg values, in order
  bool dry_run = false, quiet = false;
  Args args("eplab launch -n N [options] -- COMMAND [ARGS...]",
            "Start COMMAND as N processes under Open MPI's mpirun, e.g. `eplab launch -n 16 -- eplab run\n"
            "--backend=mpi`: one rank per process. On one machine (no --hostfile) N may exceed its cores\n"
            "(--oversubscribe); as root it adds --allow-run-as-root; a COMMAND of `eplab` runs this eplab. The exit\n"
            "status is mpirun's.");
  args.opt("np", &np, "number of processes (-n); a run's ranks, --nodes x --gpus-per-node")
      .opt("hostfile", &hostfile, "Open MPI hostfile: the machines and their slots (several machines)")
      .opt("mpirun", &mpirun, "the launcher to run (env EPLAB_MPIRUN)")
      .opt(
          "mpirun-arg", [&](const std::string& a) { passed.push_back(a); }, "",
          "one more argument for mpirun, e.g. --enable-recovery (repeatable)")
      .flag("dry-run", &dry_run, "print the mpirun command line and exit")
      .flag("quiet", &quiet, "do not print the command line before running it");
  const bool help = std::find(own.begin(), own.end(), "--help") != own.end();
  if (!help && (!after || command.empty()))
    throw UsageError("put the command to launch after --: eplab launch -n N -- COMMAND");
  if (!args.parse(own)) return 0;
  if (!args.given("np")) throw UsageError("say how many processes: -n N");
  if (np < 1) throw EplabError("-n: expected a number of processes >= 1, got " + std::to_string(np));
  if (!hostfile.empty() && access(hostfile.c_str(), R_OK) != 0)
    throw EplabError("--hostfile: cannot read '" + hostfile + "'");

  const std::string launcher = find_on_path(mpirun);
  if (launcher.empty())
    throw EplabError("no launcher '" + mpirun +
                     "' found (PATH or --mpirun / EPLAB_MPIRUN): eplab launch needs Open MPI's mpirun, which Debian's "
                     "openmpi-bin package installs (scripts/setup.sh does)");
  const std::string version = launcher_version(launcher);
  if (version.find("Open MPI") == std::string::npos)
    throw EplabError("'" + launcher + "' is not Open MPI's mpirun ('" + version +
                     "'); eplab's mpi backend is built with Open MPI: name its mpirun with --mpirun");

  std::vector<std::string> cmd{launcher, "-n", std::to_string(np)};
  if (hostfile.empty())
    cmd.push_back("--oversubscribe");
  else
    cmd.insert(cmd.end(), {"--hostfile", hostfile});
  if (geteuid() == 0) cmd.push_back("--allow-run-as-root");
  cmd.insert(cmd.end(), passed.begin(), passed.end());
  if (command[0] == "eplab") {  // this eplab, wherever it lies, rather than whichever is on PATH
    std::error_code ec;
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) command[0] = self.string();
  }
  cmd.insert(cmd.end(), command.begin(), command.end());
  if (dry_run || !quiet) std::cerr << "eplab launch: " << shell_words(cmd) << "\n";
  if (dry_run) return 0;

  std::vector<char*> cargv;
  for (std::string& a : cmd) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  std::cout.flush();
  execv(launcher.c_str(), cargv.data());
  throw EplabError("cannot run '" + launcher + "': " + std::strerror(errno));
}

}  // namespace

EPLAB_COMMAND("launch", "start a command as N processes under mpirun (ranks as processes: --backend=mpi)", cmd_launch);

}  // namespace eplab::cli
