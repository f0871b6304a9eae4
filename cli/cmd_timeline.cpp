// `eplab timeline plot FILE -o out.png`: draws a timeline written by `eplab run --timeline` (Gantt chart of
// ranks x phases, heat map of link load). The drawing is python/eplab/timeline_plot.py run by Debian's python3,
// which has matplotlib; this command finds both and says clearly what is missing.
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/args.hpp"
#include "engine/error.hpp"

#ifndef EPLAB_SOURCE_DIR
#define EPLAB_SOURCE_DIR ""
#endif

namespace eplab::cli {
namespace {

namespace fs = std::filesystem;

// Next to an installed binary (share/eplab), then the source tree this binary was configured from.
std::string find_script() {
  if (const char* env = std::getenv("EPLAB_TIMELINE_PLOT")) return env;
  std::vector<fs::path> candidates;
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    const fs::path bin = fs::path(exe).parent_path();
    candidates.push_back(bin / ".." / "share" / "eplab" / "timeline_plot.py");
  }
  candidates.push_back(fs::path(EPLAB_SOURCE_DIR) / "python" / "eplab" / "timeline_plot.py");
  for (const auto& c : candidates)
    if (fs::exists(c)) return c.string();
  std::string tried;
  for (const auto& c : candidates) tried += "\n  " + c.string();
  throw EplabError("cannot find timeline_plot.py; looked in:" + tried + "\n(set EPLAB_TIMELINE_PLOT to its path)");
}

// Runs argv without a shell (paths may hold spaces); returns the exit status.
int run_process(const std::vector<std::string>& argv, bool quiet_stderr) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::cout.flush();
  const pid_t pid = fork();
  if (pid < 0) throw EplabError("fork() failed");
  if (pid == 0) {
    if (quiet_stderr) {
      if (FILE* devnull = std::fopen("/dev/null", "w")) dup2(fileno(devnull), 2);
    }
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

int cmd_timeline(const std::vector<std::string>& argv_in) {
  std::vector<std::string> argv;
  for (const auto& a : argv_in) argv.push_back(a == "-o" ? "--output" : a);
  std::string output, python = std::getenv("EPLAB_PYTHON") ? std::getenv("EPLAB_PYTHON") : "/usr/bin/python3";
  double t0 = -1, t1 = -1;
  Args args("eplab timeline plot FILE -o OUT.png",
            "Draw a timeline written by `eplab run --timeline FILE`: a Gantt chart of ranks x phases and a heat\n"
            "map of link load over time. Needs a python3 with matplotlib and numpy (Debian's /usr/bin/python3).");
  args.opt("output", &output, "PNG (or PDF/SVG) to write (-o)")
      .opt("python", &python, "the python3 to run (env EPLAB_PYTHON)")
      .opt("from-us", &t0, "draw from this time (us); -1: the start")
      .opt("to-us", &t1, "draw up to this time (us); -1: the end");
  args.positionals(2);
  if (!args.parse(argv)) return 0;
  const auto& pos = args.positional();
  if (pos.size() != 2 || pos[0] != "plot") throw UsageError("eplab timeline plot FILE -o OUT.png (see --help)");
  const std::string file = pos[1];
  if (!std::ifstream(file)) throw EplabError("cannot read the timeline '" + file + "'");
  if (output.empty()) throw EplabError("say where to draw it: -o OUT.png");
  if (access(python.c_str(), X_OK) != 0)
    throw EplabError("no python at '" + python + "'; install python3 (Debian) or pass --python");
  if (run_process({python, "-c", "import matplotlib, numpy"}, true) != 0)
    throw EplabError("'" + python +
                     "' has no matplotlib/numpy: install python3-matplotlib python3-numpy (apt) or pass "
                     "--python with one that has them");
  std::vector<std::string> cmd{python, find_script(), file, "-o", output};
  if (t0 >= 0) cmd.insert(cmd.end(), {"--from-us", std::to_string(t0)});
  if (t1 >= 0) cmd.insert(cmd.end(), {"--to-us", std::to_string(t1)});
  const int rc = run_process(cmd, false);
  if (rc != 0) throw EplabError("timeline_plot.py failed (exit status " + std::to_string(rc) + ")");
  std::cout << "wrote " << output << "\n";
  return 0;
}

}  // namespace

EPLAB_COMMAND("timeline", "draw a --timeline file: Gantt chart of phases and link-load heat map", cmd_timeline);

}  // namespace eplab::cli
