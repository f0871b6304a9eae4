// `eplab timeline plot FILE -o out.png`: draws a timeline written by `eplab run --timeline` (Gantt chart of
// ranks x phases, heat map of link load). The drawing is python/eplab/timeline_plot.py run by Debian's python3,
// which has matplotlib; this command finds both and says clearly what is missing.
#include <fstream>
#include <iostream>

#include "cli/args.hpp"
#include "cli/plot_script.hpp"
#include "engine/error.hpp"

namespace eplab::cli {
namespace {

int cmd_timeline(const std::vector<std::string>& argv_in) {
  std::vector<std::string> argv;
  for (const auto& a : argv_in) argv.push_back(a == "-o" ? "--output" : a);
  std::string output, python = default_python();
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
  check_plot_python(python);
  std::vector<std::string> cmd{python, find_plot_script("timeline_plot.py", "EPLAB_TIMELINE_PLOT"), file, "-o", output};
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
