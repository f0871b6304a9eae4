// How fast processes of one machine copy rows out of each other's memory, by the two ways Linux offers without
// a kernel module: the kernel's cross-memory attach (process_vm_readv, what the mpi backend's single copy and
// Open MPI's shared-memory transport use), and memcpy from a read-only mapping of the other process's memory,
// which works only where that memory is a shared file (memfd). No eplab code runs: the question is what a
// transport could reach on this machine.
//   bench_cross_process_copy [ROWS_PER_PROCESS [PROCESSES [ROUNDS]]]   (default 4096 16 10)
// Each process holds ROWS rows of 14336 bytes (a bf16 row of DeepSeek-V3); in each round every process copies its
// slice (ROWS / PROCESSES rows) of every process's rows, its own included, into a buffer of its own, as a dispatch
// would. Sources are memfd mappings (memcpy) or private memory with transparent huge pages (process_vm_readv);
// destinations are private with huge pages, or (shared to shared) memfd mappings too. process_vm_readv reads the rows
// as one piece per row (as the mpi backend's gathered sends name them) and as one piece per slice. A round's rate is
// every process's bytes over the time from the first process's start to the last one's end; the first round includes
// faulting in.
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

constexpr size_t kRowBytes = 14336;
constexpr int kMaxProcesses = 64;
constexpr int kMaxRounds = 100;

enum class Way { kSharedMemcpy, kSharedToShared, kVmReadvRows, kVmReadvSlices };

// The ways' names, in the enum's order.
constexpr const char* kWayNames[] = {"memcpy from a shared mapping", "memcpy, shared to shared",
                                     "process_vm_readv, a piece a row", "process_vm_readv, a piece a slice"};

// What the processes of one measurement share (an anonymous shared mapping made before they fork).
struct Board {
  std::atomic<int> arrived[2 * kMaxRounds + 2];
  pid_t pid[kMaxProcesses];
  int fd[kMaxProcesses];
  uintptr_t rows[kMaxProcesses];
  double start[kMaxRounds][kMaxProcesses], end[kMaxRounds][kMaxProcesses];
  int failed;                  // errno of a read that failed
  std::atomic<bool> given_up;  // a process failed: the others leave their barriers
};

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Waits for every process at barrier `at`; false when one of them has failed.
bool barrier(Board& b, int at, int processes) {
  b.arrived[at].fetch_add(1);
  while (b.arrived[at].load() < processes) {
    if (b.given_up.load()) return false;
    sched_yield();
  }
  return true;
}

// A shared memory file of `bytes`, mapped here; null when it cannot be made. `fd` is its descriptor.
void* map_shared(size_t bytes, int& fd) {
  fd = memfd_create("eplab-bench-rows", 0);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) return nullptr;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void* map_private(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

// One process of a measurement: returns its exit status.
int process_body(Board& b, Way way, int me, int processes, int rounds, size_t slice_rows) {
  const size_t slice = slice_rows * kRowBytes, bytes = slice * processes;
  const bool shared = way == Way::kSharedMemcpy || way == Way::kSharedToShared;
  auto* rows = static_cast<uint8_t*>(shared ? map_shared(bytes, b.fd[me]) : map_private(bytes));
  int into_fd = -1;
  auto* into = static_cast<uint8_t*>(way == Way::kSharedToShared ? map_shared(bytes, into_fd) : map_private(bytes));
  if (!rows || !into) return 2;
  std::memset(rows, me + 1, bytes);
  std::memset(into, 0, bytes);
  b.pid[me] = getpid();
  b.rows[me] = reinterpret_cast<uintptr_t>(rows);
  if (!barrier(b, 0, processes)) return 6;
  std::vector<const uint8_t*> peer(static_cast<size_t>(processes), nullptr);
  if (shared)
    for (int p = 0; p < processes; ++p) {
      const std::string path = "/proc/" + std::to_string(b.pid[p]) + "/fd/" + std::to_string(b.fd[p]);
      const int fd = open(path.c_str(), O_RDONLY);
      if (fd < 0) return 3;
      void* m = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
      close(fd);
      if (m == MAP_FAILED) return 3;
      peer[static_cast<size_t>(p)] = static_cast<const uint8_t*>(m);
    }
  if (!barrier(b, 1, processes)) return 6;
  std::vector<iovec> pieces(slice_rows);
  for (int r = 0; r < rounds; ++r) {
    if (!barrier(b, 2 + 2 * r, processes)) return 6;
    b.start[r][me] = now_s();
    for (int k = 0; k < processes; ++k) {
      const int p = (me + k) % processes;
      uint8_t* to = into + static_cast<size_t>(p) * slice;
      const uintptr_t from = b.rows[p] + static_cast<size_t>(me) * slice;
      if (shared) {
        std::memcpy(to, peer[static_cast<size_t>(p)] + static_cast<size_t>(me) * slice, slice);
        continue;
      }
      const size_t n = way == Way::kVmReadvRows ? slice_rows : 1, piece = slice / n;
      for (size_t i = 0; i < n; ++i) pieces[i] = iovec{reinterpret_cast<void*>(from + i * piece), piece};
      for (size_t a = 0; a < n; a += IOV_MAX) {
        const size_t m = std::min<size_t>(IOV_MAX, n - a);
        iovec local{to + a * piece, m * piece};
        if (process_vm_readv(b.pid[p], &local, 1, &pieces[a], m, 0) != static_cast<ssize_t>(m * piece)) {
          b.failed = errno;
          return 4;
        }
      }
    }
    b.end[r][me] = now_s();
    if (into[static_cast<size_t>(me) * slice] != me + 1) return 5;  // its own rows came through
    if (!barrier(b, 3 + 2 * r, processes)) return 6;
  }
  return 0;
}

int run_process(Board& b, Way way, int me, int processes, int rounds, size_t slice_rows) {
  const int status = process_body(b, way, me, processes, rounds, slice_rows);
  if (status != 0) b.given_up.store(true);
  return status;
}

bool measure(Way way, int processes, int rounds, size_t slice_rows) {
  void* m = mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return false;
  auto* b = new (m) Board{};
  std::vector<pid_t> kids;
  for (int me = 0; me < processes; ++me) {
    const pid_t k = fork();
    if (k == 0) _exit(run_process(*b, way, me, processes, rounds, slice_rows));
    kids.push_back(k);
  }
  bool ok = true;
  for (pid_t k : kids) {
    int status = 0;
    waitpid(k, &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  const double bytes = static_cast<double>(slice_rows * kRowBytes) * processes * processes;
  std::printf("%-36s", kWayNames[static_cast<int>(way)]);
  if (!ok) {
    std::printf(" failed (%s)\n", b->failed ? std::strerror(b->failed) : "a process could not set up or check");
  } else {
    std::vector<double> later;
    for (int r = 0; r < rounds; ++r) {
      double first = b->start[r][0], last = b->end[r][0];
      for (int p = 1; p < processes; ++p) first = std::min(first, b->start[r][p]), last = std::max(last, b->end[r][p]);
      const double gbps = bytes / (last - first) / 1e9;
      std::printf(" %6.2f", gbps);
      if (r > 0) later.push_back(gbps);
    }
    std::sort(later.begin(), later.end());
    if (!later.empty()) std::printf("  | median after the first: %.2f GB/s", later[later.size() / 2]);
    std::printf("\n");
  }
  munmap(m, sizeof(Board));
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const long rows = argc > 1 ? std::atol(argv[1]) : 4096;
  const int processes = argc > 2 ? std::atoi(argv[2]) : 16;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 10;
  if (processes < 1 || processes > kMaxProcesses || rounds < 1 || rounds > kMaxRounds || rows < processes) {
    std::fprintf(stderr,
                 "usage: bench_cross_process_copy [ROWS_PER_PROCESS [PROCESSES [ROUNDS]]]: 1-%d processes, 1-%d "
                 "rounds, at least one row per process\n",
                 kMaxProcesses, kMaxRounds);
    return 1;
  }
  const size_t slice_rows = static_cast<size_t>(rows / processes);
  std::printf(
      "%d processes, each copying %zu rows of %zu bytes from every process, %d rounds; GB/s of each round, "
      "all processes together\n",
      processes, slice_rows, kRowBytes, rounds);
  bool ok = true;
  for (Way w : {Way::kSharedMemcpy, Way::kSharedToShared, Way::kVmReadvRows, Way::kVmReadvSlices})
    ok = measure(w, processes, rounds, slice_rows) && ok;
  return ok ? 0 : 1;
}
