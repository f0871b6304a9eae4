// Dispatch + combine throughput of eplab's emu backend (16 ranks as threads) and mpi backend (16 processes under
// mpirun), beside a plain MPI_Alltoallv moving the same total bytes (bench_mpi_alltoallv) and this machine's
// memcpy, on one core and on every core at once, all measured in one run; hidden 7168, bf16 on the wire. Prints
// a table and writes JSON.
//   bench_emu_throughput [TOKENS_PER_RANK [OUT.json]]   (default 2048 tokens, bench/results/emu_throughput.json)
// The eplab command and bench_mpi_alltoallv are taken from this program's own directory (build/bin).
// eplab makes one untimed warm-up call before its first timed call, which sizes and faults in the buffers it
// keeps for the run, as bench_mpi_alltoallv makes an untimed warm-up call before timing; besides the mean of its
// 1 + kWarmCalls timed calls the table shows the median warm layer and the first timed layer apart, for emu and
// for the mpi backend alike. The headline runs are the default algorithm (hierarchical); the same emu and mpi runs
// with --algorithm flat have rows of their own. bench_mpi_alltoallv runs twice, after the first eplab run and
// after the last, and its rows take the repetitions of both.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "driver/experiment.hpp"
#include "engine/payload_ledger.hpp"

namespace fs = std::filesystem;

namespace {

constexpr int kTokenBytes = 7168 * 2;  // one bf16 activation row of DeepSeek-V3
constexpr int kAlltoallvReps = 10;
constexpr int kWarmCalls = 3;

// The payload checksum that verifying runs compute over every message on both sides (engine/payload_ledger.hpp),
// on one core over the same 256 MiB as memcpy: what the conservation check costs per byte. Best of 5.
double checksum_GBps() {
  const size_t n = size_t{256} << 20;
  std::vector<char> a(n, 1);
  double best = 0;
  uint64_t sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    a[rep] = static_cast<char>(sink);
    const auto t0 = std::chrono::steady_clock::now();
    sink += eplab::payload_checksum(a.data(), n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, n / s / 1e9);
  }
  if (sink == 42) std::printf(" ");  // keep the checksums observable
  return best;
}

// memcpy on `cores` cores at once, each over buffers of its own (256 MiB; with more than two cores, 512 MiB
// shared among them and at least 64 MiB each), in GB/s all together. On one core the table's yardstick; on every
// core the rate at which this machine's memory takes copies, the ceiling of a dispatch that copies each byte once.
// Best of 5, each repetition timed from the common start to the last copy's end.
double memcpy_GBps(unsigned cores) {
  const size_t n = std::clamp<size_t>((size_t{512} << 20) / cores, size_t{64} << 20, size_t{256} << 20);
  std::vector<std::vector<char>> from(cores), to(cores);
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    std::vector<double> end_s(cores);
    std::chrono::steady_clock::time_point t0;
    for (unsigned i = 0; i < cores; ++i)
      threads.emplace_back([&, i] {
        if (rep == 0) {  // faulted in once, by the thread that copies them
          from[i].assign(n, 1);
          to[i].assign(n, 0);
        }
        ready.fetch_add(1);
        while (!go.load()) {
        }
        std::memcpy(to[i].data(), from[i].data(), n);
        end_s[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        from[i][rep] = to[i][n - 1 - rep];  // keep the copies observable
      });
    while (ready.load() < cores) std::this_thread::yield();
    t0 = std::chrono::steady_clock::now();
    go.store(true);
    for (std::thread& t : threads) t.join();
    best = std::max(best, static_cast<double>(n) * cores / *std::max_element(end_s.begin(), end_s.end()) / 1e9);
  }
  return best;
}

// One row of the table. `why` says why a figure was not measured; it is empty when it was.
struct Figure {
  std::string name;
  std::string why;
  double dispatch_s = NAN, combine_s = NAN, time_s = NAN, bytes = NAN;
  double GBps() const { return bytes / time_s / 1e9; }
  bool ran() const { return why.empty(); }
};

// Bytes the ranks received in dispatch plus those sent back in combine (activation rows on the wire), over the
// slowest rank's phase times; the same definition for every row.
Figure eplab_figure(std::string name, const nlohmann::json& r) {
  const auto& d = r["phases"]["dispatch"];
  const auto& k = r["phases"]["combine"];
  const int ranks = r["ranks"].get<int>();
  Figure f{std::move(name), ""};
  f.dispatch_s = d["time_s"].get<double>();
  f.combine_s = k["time_s"].get<double>();
  f.time_s = f.dispatch_s + f.combine_s;
  f.bytes = (d["logical_bytes_per_rank"].get<double>() + k["logical_bytes_per_rank"].get<double>()) * ranks;
  return f;
}

// An emu run: its report, or (why set) the error that stopped it, e.g. the memory guard refusing a run larger than
// this machine's memory.
std::optional<nlohmann::json> emu_run(const eplab::RunConfig& cfg, std::string& why) {
  try {
    return eplab::run_experiment(cfg);
  } catch (const std::exception& e) {
    why = std::string("eplab run --algorithm ") + cfg.algorithm + " failed: " + e.what();
    return std::nullopt;
  }
}

fs::path self_dir() { return fs::read_symlink("/proc/self/exe").parent_path(); }

bool mpirun_on_path() {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "");
  for (std::string dir; std::getline(ss, dir, ':');)
    if (!dir.empty() && access((fs::path(dir) / "mpirun").c_str(), X_OK) == 0) return true;
  return false;
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// mpirun with the flags both MPI rows share: 16 ranks on fewer cores, and root where the run is root's.
std::string mpirun(int ranks) {
  return "mpirun -n " + std::to_string(ranks) + " --oversubscribe" + (geteuid() == 0 ? " --allow-run-as-root" : "");
}

// Runs `cmd` with its output in `log`; on failure returns why, with the log's last line (mpirun's or the
// program's own message).
std::optional<std::string> run_logged(const std::string& cmd, const fs::path& log) {
  const int rc = std::system((cmd + " > " + quoted(log) + " 2>&1").c_str());
  if (rc == 0) return std::nullopt;
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return "exit status " + std::to_string(WIFEXITED(rc) ? WEXITSTATUS(rc) : rc) + (last.empty() ? "" : ": " + last);
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// The warm layer (median of calls 2..n) and the first layer of a run's report, each a whole layer (dispatch +
// expert compute + combine) over the mean call's bytes; `prefix` names the backend.
Figure warm_layer(const std::string& prefix, const nlohmann::json& r) {
  Figure warm = eplab_figure(prefix + ", warm layer", r);
  std::vector<double> later;
  for (size_t i = 1; i < r["per_step"].size(); ++i) later.push_back(r["per_step"][i]["layer_time_s"].get<double>());
  std::sort(later.begin(), later.end());
  warm.dispatch_s = warm.combine_s = NAN;
  warm.time_s = later.empty() ? NAN : later[later.size() / 2];
  return warm;
}

Figure first_layer(const std::string& prefix, const nlohmann::json& r) {
  Figure first = eplab_figure(prefix + ", first layer", r);
  first.dispatch_s = first.combine_s = NAN;
  first.time_s = r["per_step"][0]["layer_time_s"].get<double>();
  return first;
}

// The mpi backend's run under mpirun (the algorithm's default unless c.algorithm names one): its report, or why
// it did not run (then every row of that run says so). `name` is the mean's row; `tag` tells the files apart.
Figure mpi_backend(const eplab::RunConfig& c, const std::string& name, const std::string& tag, const fs::path& bin,
                   const fs::path& tmp, nlohmann::json& report_json) {
  const fs::path eplab = bin / "eplab";
  if (!mpirun_on_path()) return {name, "mpirun not on PATH"};
  if (access(eplab.c_str(), X_OK) != 0) return {name, eplab.string() + " not built"};
  const fs::path report = tmp / ("mpi_report" + tag + ".json");
  const std::string cmd = mpirun(c.nodes * c.gpus_per_node) + " " + quoted(eplab) +
                          " run --backend=mpi --cluster=" + c.cluster + " --nodes=" + std::to_string(c.nodes) +
                          " --gpus-per-node=" + std::to_string(c.gpus_per_node) + " --model=" + c.model +
                          " --tokens=" + std::to_string(c.tokens) + " --routing=" + c.routing +
                          " --dispatch-codec=" + c.dispatch_codec + " --combine-codec=" + c.combine_codec +
                          " --transform=" + c.transform + " --steps=" + std::to_string(c.steps) +
                          " --timeout=" + std::to_string(static_cast<int>(c.timeout_s)) + " --no-verify --quiet" +
                          " --report " + quoted(report) + (c.algorithm.empty() ? "" : " --algorithm=" + c.algorithm);
  if (auto why = run_logged(cmd, tmp / ("mpi_backend" + tag + ".log")))
    return {name, "eplab run --backend=mpi failed, " + *why};
  report_json = read_json(report);
  return eplab_figure(name, report_json);
}

// One run of bench_mpi_alltoallv (kAlltoallvReps timed repetitions) over the emu run's bytes per rank and
// phase: its JSON, or why it did not run. `tag` tells the files of the runs apart.
std::optional<nlohmann::json> mpi_alltoallv(const nlohmann::json& emu, const fs::path& bin, const fs::path& tmp,
                                            const std::string& tag, std::string& why) {
  const fs::path prog = bin / "bench_mpi_alltoallv";
  if (!mpirun_on_path()) {
    why = "mpirun not on PATH";
    return std::nullopt;
  }
  if (access(prog.c_str(), X_OK) != 0) {
    why = prog.string() + " absent; CMake builds it only where it finds MPI for C";
    return std::nullopt;
  }
  // The report holds each phase's bytes per rank (averaged over ranks and calls), not a per-pair matrix.
  const int ranks = emu["ranks"].get<int>();
  const long long d = std::llround(emu["phases"]["dispatch"]["logical_bytes_per_rank"].get<double>());
  const long long k = std::llround(emu["phases"]["combine"]["logical_bytes_per_rank"].get<double>());
  const fs::path out = tmp / ("alltoallv" + tag + ".json");
  const std::string cmd = mpirun(ranks) + " " + quoted(prog) + " " + std::to_string(d) + " " + std::to_string(k) + " " +
                          std::to_string(kAlltoallvReps) + " " + quoted(out);
  if (auto w = run_logged(cmd, tmp / ("alltoallv" + tag + ".log"))) {
    why = "bench_mpi_alltoallv failed, " + *w;
    return std::nullopt;
  }
  return read_json(out);
}

// The MPI_Alltoallv rows over every repetition of its runs: the best, and the median.
std::vector<Figure> alltoallv_figures(const std::vector<nlohmann::json>& runs, const std::string& why) {
  if (runs.empty()) return {{"MPI_Alltoallv, best", why}, {"MPI_Alltoallv, median", why}};
  const std::string n = std::to_string(kAlltoallvReps * static_cast<int>(runs.size()));
  Figure b{"MPI_Alltoallv, best of " + n, ""}, m{"MPI_Alltoallv, median of " + n, ""};
  std::vector<double> totals;
  for (const nlohmann::json& r : runs) {
    for (double t : r["totals_s"]) totals.push_back(t);
    if (std::isnan(b.time_s) || r["best_s"].get<double>() < b.time_s) {
      b.time_s = r["best_s"].get<double>();
      b.dispatch_s = r["best_dispatch_s"].get<double>();
      b.combine_s = r["best_combine_s"].get<double>();
    }
  }
  std::sort(totals.begin(), totals.end());
  const size_t h = totals.size() / 2;
  m.time_s = totals.size() % 2 ? totals[h] : (totals[h - 1] + totals[h]) / 2;
  b.bytes = m.bytes = runs[0]["activation_bytes"].get<double>();
  return {b, m};
}

std::string cell(double v, const char* fmt) {
  if (std::isnan(v)) return "-";
  char s[32];
  std::snprintf(s, sizeof s, fmt, v);
  return s;
}

nlohmann::json num(double v) { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); }

}  // namespace

int main(int argc, char** argv) {
  const int tokens = argc > 1 ? std::atoi(argv[1]) : 2048;
  const std::string out = argc > 2 ? argv[2] : "bench/results/emu_throughput.json";
  eplab::RunConfig c;
  c.backend = "emu";
  c.cluster = "h800-cx7";
  c.nodes = 2;
  c.gpus_per_node = 8;
  c.model = "deepseek-v3";
  c.tokens = tokens;
  c.routing = "deepep";
  c.dispatch_codec = "bf16";
  c.combine_codec = "bf16";
  c.transform = "identity";
  c.steps = 1 + kWarmCalls;
  c.timeout_s = 600;
  c.verify = false;  // a benchmark of the data path; correctness is the test suite's job

  const fs::path bin = self_dir();
  std::string tmpl = (fs::temp_directory_path() / "eplab_bench_XXXXXX").string();
  if (!mkdtemp(tmpl.data())) {
    std::perror("bench_emu_throughput: mkdtemp");
    return 1;
  }
  const fs::path tmp = tmpl;

  // One after another, never side by side: each of them alone wants every core and most of the memory.
  const double mc = memcpy_GBps(1);
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const double mc_all = memcpy_GBps(cores);
  const double ck = checksum_GBps();
  std::string emu_why, flat_why;
  const std::optional<nlohmann::json> emu = emu_run(c, emu_why);
  // MPI_Alltoallv runs twice, after the first eplab run and after the last, so that a slower or faster spell of
  // this machine during the eplab runs meets its figures too; its rows take every repetition of both.
  std::vector<nlohmann::json> a2a_runs;
  std::string a2a_why = "no emu run to take the bytes from";
  std::vector<std::string> a2a_failed;  // the runs that failed, and why: their repetitions are not in the rows
  const auto run_a2a = [&](const nlohmann::json& bytes_from, const std::string& when) {
    if (auto r = mpi_alltoallv(bytes_from, bin, tmp, "_" + when, a2a_why))
      a2a_runs.push_back(std::move(*r));
    else
      a2a_failed.push_back("after the " + when + " eplab run: " + a2a_why);
  };
  if (emu) run_a2a(*emu, "first");
  eplab::RunConfig flat_c = c;
  flat_c.algorithm = "flat";
  const std::optional<nlohmann::json> emu_flat = emu_run(flat_c, flat_why);
  // The report times phases as means over calls; per call it gives only the whole layer (dispatch, expert
  // compute, combine). So the warm figure is the median layer of calls 2..n over the mean call's bytes: its
  // time includes expert compute (identity: one decode and encode pass over the rows), a lower bound on the
  // warm dispatch + combine rate. The first call's layer is shown apart.
  const auto figures = [](const std::string& prefix, const std::string& mean_name,
                          const std::optional<nlohmann::json>& r, const std::string& why) {
    if (!r)
      return std::vector<Figure>{{mean_name, why}, {prefix + ", warm layer", why}, {prefix + ", first layer", why}};
    return std::vector<Figure>{eplab_figure(mean_name, *r), warm_layer(prefix, *r), first_layer(prefix, *r)};
  };
  const std::vector<Figure> hier = figures("eplab emu", "eplab emu, mean of calls", emu, emu_why);
  const std::vector<Figure> flat = figures("eplab emu flat", "eplab emu flat, mean", emu_flat, flat_why);
  const Figure &mean = hier[0], &warm = hier[1], &first_call = hier[2];
  const Figure &flat_mean = flat[0], &flat_warm = flat[1], &flat_first = flat[2];
  // The bytes MPI_Alltoallv moves come from the emu run: either algorithm's (the same rows reach the same ranks).
  const std::optional<nlohmann::json>& bytes_of = emu ? emu : emu_flat;
  nlohmann::json mpi_report;
  std::vector<Figure> rows = {mean, mpi_backend(c, "eplab mpi, mean of calls", "", bin, tmp, mpi_report)};
  nlohmann::json mpi_flat_report;
  const Figure mpi_flat_mean = mpi_backend(flat_c, "eplab mpi flat, mean", "_flat", bin, tmp, mpi_flat_report);
  if (bytes_of) run_a2a(*bytes_of, "last");
  for (auto& f : alltoallv_figures(a2a_runs, a2a_why)) rows.push_back(f);
  rows.push_back(first_call);
  rows.push_back(warm);
  fs::remove_all(tmp);
  const bool mpi_ran = rows[1].ran();
  const Figure mpi_warm = mpi_ran ? warm_layer("eplab mpi", mpi_report) : Figure{"eplab mpi, warm layer", rows[1].why};
  const Figure mpi_first =
      mpi_ran ? first_layer("eplab mpi", mpi_report) : Figure{"eplab mpi, first layer", rows[1].why};
  const bool mpi_flat_ran = mpi_flat_mean.ran();
  const Figure mpi_flat_warm = mpi_flat_ran ? warm_layer("eplab mpi flat", mpi_flat_report)
                                            : Figure{"eplab mpi flat, warm layer", mpi_flat_mean.why};
  const Figure mpi_flat_first = mpi_flat_ran ? first_layer("eplab mpi flat", mpi_flat_report)
                                             : Figure{"eplab mpi flat, first layer", mpi_flat_mean.why};
  const Figure& a2a = rows[3];  // the median: eplab's times are means over calls, not a best
  const auto rate_row = [](std::string name, double GBps) {  // 1 GB at the rate: GBps() reads it back
    Figure f{std::move(name), ""};
    f.bytes = 1e9;
    f.time_s = 1 / GBps;
    return f;
  };
  const Figure memcpy_row = rate_row("memcpy, one core", mc);
  const Figure memcpy_all_row = rate_row("memcpy, all " + std::to_string(cores) + " cores at once", mc_all);

  const double emu_bytes = mean.ran() ? mean.bytes : flat_mean.bytes;
  const Figure& first = rows[4];
  const Figure& warm_row = rows[5];
  std::printf("dispatch + combine, 16 ranks on this machine, %d tokens/rank, hidden 7168, bf16, %d steps x %d layers\n"
              "(emu: 16 threads of one process; mpi: 16 processes under mpirun, the same run)\n",
              tokens, c.steps, c.layers);
  std::printf(
      "GB/s = activation bytes per layer (dispatch received + combine sent, summed over ranks) / (dispatch +\n"
      "combine time, slowest rank); MPI_Alltoallv moves the emu run's bytes per rank, an even split of the\n"
      "same total bytes over the 16 destinations (the report has no per-pair matrix), in runs of %d\n"
      "repetitions after the first eplab run and after the last; x columns use the median of their repetitions.\n"
      "eplab runs one untimed warm-up call first (it sizes and faults in the buffers kept for the run, as\n"
      "MPI_Alltoallv's program warms up untimed); \"warm layer\" is the median of timed calls 2..%d and \"first "
      "layer\"\ntimed call 1, each a whole layer (dispatch + expert compute + combine), so the warm GB/s is a lower "
      "bound\non warm dispatch + combine. emu and mpi rows: hierarchical (the default), then flat\n",
      kAlltoallvReps, c.steps);
  std::printf("%-28s %10s %10s %10s %9s %8s %11s %9s\n", "figure", "dispatch s", "combine s", "total s", "GB/layer",
              "GB/s", "x alltoallv", "x memcpy");
  const std::vector<const Figure*> table = {&rows[0],   &warm_row,      &first,         &flat_mean,
                                            &flat_warm, &flat_first,    &rows[1],       &mpi_warm,
                                            &mpi_first, &mpi_flat_mean, &mpi_flat_warm, &mpi_flat_first,
                                            &rows[2],   &rows[3],       &memcpy_row,    &memcpy_all_row};
  for (const Figure* f : table) {
    if (!f->ran()) {
      std::printf("%-28s not run (%s)\n", f->name.c_str(), f->why.c_str());
      continue;
    }
    const bool is_memcpy = f == &memcpy_row || f == &memcpy_all_row;
    std::printf("%-28s %10s %10s %10s %9s %8.2f %11s %9.3f\n", f->name.c_str(), cell(f->dispatch_s, "%.3f").c_str(),
                cell(f->combine_s, "%.3f").c_str(), cell(is_memcpy ? NAN : f->time_s, "%.3f").c_str(),
                cell(is_memcpy ? NAN : f->bytes / 1e9, "%.3f").c_str(), f->GBps(),
                cell(a2a.ran() ? f->GBps() / a2a.GBps() : NAN, "%.3f").c_str(), f->GBps() / mc);
  }
  std::printf(
      "memcpy on all cores at once: what this machine's memory moves by copying, the bound of a dispatch,\n"
      "which copies each row once (combine reads its rows and writes only the sums, and can go somewhat faster)\n");
  if (a2a.ran())
    for (const std::string& f : a2a_failed)
      std::printf("MPI_Alltoallv's run %s (its repetitions are left out)\n", f.c_str());
  // The report's bytes per rank are means over ranks and calls; MPI_Alltoallv gets each rounded to a whole byte.
  std::printf("payload checksum, one core: %.2f GB/s (%.2fx memcpy); a verifying run hashes each message twice "
              "(sender, receiver); this table's runs do not verify\n",
              ck, ck / mc);
  std::printf("activation bytes per layer: %.0f = %.1f rows of %d bytes (emu)", emu_bytes, emu_bytes / kTokenBytes,
              kTokenBytes);
  if (rows[1].ran()) std::printf(", %.0f (mpi backend)", rows[1].bytes);
  if (mpi_flat_ran) std::printf(", %.0f (mpi backend, flat)", mpi_flat_mean.bytes);
  if (a2a.ran()) std::printf(", %.0f (MPI_Alltoallv, per-rank means rounded to whole bytes)", a2a.bytes);
  std::printf("\n");

  auto figure_json = [&](const Figure& f) {
    nlohmann::json j = {{"ran", f.ran()}};
    if (!f.ran()) {
      j["why_not"] = f.why;
      return j;
    }
    j.update({{"dispatch_time_s", num(f.dispatch_s)},
              {"combine_time_s", num(f.combine_s)},
              {"time_s", f.time_s},
              {"activation_bytes", f.bytes},
              {"throughput_GBps", f.GBps()},
              {"over_memcpy", f.GBps() / mc}});
    if (a2a.ran()) j["over_mpi_alltoallv_median"] = f.GBps() / a2a.GBps();
    return j;
  };
  nlohmann::json j = {
      {"ranks", c.nodes * c.gpus_per_node},
      {"tokens_per_rank", tokens},
      {"hidden", 7168},
      {"codec", "bf16"},
      {"steps", c.steps},
      {"layers", c.layers},
      {"throughput_definition",
       "(dispatch received + combine sent activation bytes per layer, summed over ranks) / (dispatch + combine "
       "time of the slowest rank)"},
      {"memcpy_one_core_GBps", mc},
      {"memcpy_all_cores", {{"cores", cores}, {"GBps", mc_all}}},
      {"payload_checksum_one_core_GBps", ck},
      {"warm_calls", kWarmCalls},
      {"emu", figure_json(rows[0])},
      {"emu_first_layer", figure_json(first)},
      {"emu_warm_layer_median", figure_json(warm_row)},
      {"emu_flat", figure_json(flat_mean)},
      {"emu_flat_first_layer", figure_json(flat_first)},
      {"emu_flat_warm_layer_median", figure_json(flat_warm)},
      {"mpi_backend", figure_json(rows[1])},
      {"mpi_backend_first_layer", figure_json(mpi_first)},
      {"mpi_backend_warm_layer_median", figure_json(mpi_warm)},
      {"mpi_backend_flat", figure_json(mpi_flat_mean)},
      {"mpi_backend_flat_first_layer", figure_json(mpi_flat_first)},
      {"mpi_backend_flat_warm_layer_median", figure_json(mpi_flat_warm)},
      {"mpi_alltoallv",
       {{"split", "even split of the same total bytes"}, {"best", figure_json(rows[2])}, {"median", figure_json(a2a)}}},
      {"emu_wall_s", emu ? (*emu)["wall_s"] : nlohmann::json(nullptr)},
      {"emu_flat_wall_s", emu_flat ? (*emu_flat)["wall_s"] : nlohmann::json(nullptr)}};
  if (a2a.ran()) j["mpi_alltoallv"]["programs"] = a2a_runs;  // after the first eplab run, after the last
  std::ofstream(out) << j.dump(2) << "\n";
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
