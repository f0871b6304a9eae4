// Drawing from the command line: the plots are Python scripts (python/eplab/*_plot.py) run by a python3 with
// matplotlib (Debian's /usr/bin/python3). These find the script and the interpreter and say clearly what is missing.
#pragma once

#include <string>
#include <vector>

namespace eplab::cli {

// The python3 to run: $EPLAB_PYTHON, else Debian's /usr/bin/python3.
std::string default_python();

// Throws EplabError unless `python` runs and imports matplotlib and numpy.
void check_plot_python(const std::string& python);

// `name` (e.g. "timeline_plot.py") next to an installed binary (share/eplab), then in the source tree this binary
// was configured from; $`env_var`, when set, names it instead.
std::string find_plot_script(const std::string& name, const char* env_var);

// Runs argv without a shell (paths may hold spaces); returns the exit status.
int run_process(const std::vector<std::string>& argv, bool quiet_stderr);

}  // namespace eplab::cli
