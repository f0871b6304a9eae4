#include "cli/plot_script.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "engine/error.hpp"

#ifndef EPLAB_SOURCE_DIR
#define EPLAB_SOURCE_DIR ""
#endif

namespace eplab::cli {

namespace fs = std::filesystem;

std::string default_python() {
  const char* env = std::getenv("EPLAB_PYTHON");
  return env ? env : "/usr/bin/python3";
}

void check_plot_python(const std::string& python) {
  if (access(python.c_str(), X_OK) != 0)
    throw EplabError("no python at '" + python + "'; install python3 (Debian) or pass --python");
  if (run_process({python, "-c", "import matplotlib, numpy"}, true) != 0)
    throw EplabError("'" + python +
                     "' has no matplotlib/numpy: install python3-matplotlib python3-numpy (apt) or pass "
                     "--python with one that has them");
}

std::string find_plot_script(const std::string& name, const char* env_var) {
  if (const char* env = std::getenv(env_var)) return env;
  std::vector<fs::path> candidates;
  char exe[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    candidates.push_back(fs::path(exe).parent_path() / ".." / "share" / "eplab" / name);
  }
  candidates.push_back(fs::path(EPLAB_SOURCE_DIR) / "python" / "eplab" / name);
  for (const auto& c : candidates)
    if (fs::exists(c)) return c.string();
  std::string tried;
  for (const auto& c : candidates) tried += "\n  " + c.string();
  throw EplabError("cannot find " + name + "; looked in:" + tried + "\n(set " + env_var + " to its path)");
}

int run_process(const std::vector<std::string>& argv, bool quiet_stderr) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::cout.flush();
  std::fflush(stdout);
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

}  // namespace eplab::cli
