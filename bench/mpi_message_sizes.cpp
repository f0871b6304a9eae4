// Time of an exchange of one message of each size between every pair of ranks on the mpi backend, through MPI
// (EPLAB_MPI_CMA=0) and by single copy (mpi/mpi_transport.cpp), alternately in one run: where single copy
// starts to pay is the smallest message it should take (SingleCopy::min_bytes). Run it under mpirun on one
// machine: mpirun -n 16 --oversubscribe build/bin/bench_mpi_message_sizes [rounds] [out.json]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/backend.hpp"
#include "mpi/mpi_backend.hpp"

namespace {

constexpr size_t kSizes[] = {64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 262144, 1048576};
constexpr int kPairs = 5;  // alternating pairs of runs (MPI, single copy) per size

// Seconds per exchange, the median over ranks' means of `rounds` exchanges, as rank 0 sees it.
double exchange_time(int ranks, size_t bytes, int rounds, bool single_copy) {
  setenv("EPLAB_MPI_CMA", single_copy ? "1" : "0", 1);
  setenv("EPLAB_MPI_CMA_MIN", "1", 1);  // every size by single copy, whatever the default threshold
  eplab::ClusterSpec spec = eplab::cluster_preset("h800-cx7");
  spec.nodes = 1;
  spec.gpus_per_node = ranks;
  double mine = 0;
  eplab::LaunchOptions opts;
  eplab::create_backend("mpi")->launch(eplab::Topology(spec), opts, [&](eplab::Fabric& f) {
    const int n = f.size();
    std::vector<std::vector<uint8_t>> out(n, std::vector<uint8_t>(bytes, 1)), in(n, std::vector<uint8_t>(bytes));
    std::vector<eplab::Request> reqs;
    auto round = [&](int r) {
      reqs.clear();
      for (int p = 0; p < n; ++p)
        if (p != f.rank()) reqs.push_back(f.irecv(p, 1000 + r, eplab::MutBuf{in[p].data(), bytes}));
      for (int k = 1; k < n; ++k) {
        const int p = (f.rank() + k) % n;
        reqs.push_back(f.isend(p, 1000 + r, eplab::ConstBuf{out[p].data(), bytes}));
      }
      f.wait_all(reqs, eplab::Deadline{});
    };
    round(0);  // warm: buffers touched, connections made
    f.barrier();
    const double t0 = f.now();
    for (int r = 1; r <= rounds; ++r) round(r);
    f.barrier();
    mine = (f.now() - t0) / rounds;
  });
  return mine;  // every rank ends at the same barrier: rank 0's mean is the exchange's
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 200;
  const int ranks = eplab::mpi_world_size();
  std::vector<std::pair<double, double>> per_size;
  for (size_t bytes : kSizes) {
    std::vector<double> mpi, cma;
    for (int k = 0; k < kPairs; ++k) {
      mpi.push_back(exchange_time(ranks, bytes, rounds, false));
      cma.push_back(exchange_time(ranks, bytes, rounds, true));
    }
    std::sort(mpi.begin(), mpi.end());
    std::sort(cma.begin(), cma.end());
    per_size.emplace_back(mpi[kPairs / 2], cma[kPairs / 2]);
  }
  if (const char* rank = std::getenv("OMPI_COMM_WORLD_RANK"); rank && std::atoi(rank) != 0) return 0;
  nlohmann::json rows = nlohmann::json::array();
  std::printf(
      "mpi backend, %d ranks, each exchanging one message of each size with every other rank; median of %d\n"
      "alternating pairs of %d timed exchanges\n%10s %14s %14s %8s\n",
      ranks, kPairs, rounds, "bytes", "MPI us", "single copy us", "ratio");
  for (size_t i = 0; i < std::size(kSizes); ++i) {
    const auto [mpi, cma] = per_size[i];
    std::printf("%10zu %14.1f %14.1f %8.2f\n", kSizes[i], mpi * 1e6, cma * 1e6, cma / mpi);
    rows.push_back({{"bytes", kSizes[i]}, {"mpi_s", mpi}, {"single_copy_s", cma}});
  }
  if (argc > 2)
    std::ofstream(argv[2]) << nlohmann::json{{"ranks", ranks}, {"rounds", rounds}, {"rows", rows}}.dump(2) << "\n";
  return 0;
}
