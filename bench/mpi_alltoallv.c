// Plain MPI_Alltoallv baseline for bench_emu_throughput: moves a dispatch's and a combine's activation bytes
// between all ranks the way a textbook MoE exchange would, so eplab's backends can be set beside it.
//   mpirun -n N mpi_alltoallv DISPATCH_BYTES_PER_RANK COMBINE_BYTES_PER_RANK [REPS [OUT.json]]
// eplab's report has no per-(source, destination) byte matrix, only totals, so each rank's bytes of a phase are
// split evenly over all N destinations (itself included): an even split of the same total bytes, not eplab's
// routing skew. Time of a phase is its slowest rank's, as in eplab's report; one untimed warm-up first.
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

// Bytes from rank i to rank j: the remainder goes to the pairs with (i + j) % n below it, a Latin square, so
// every rank sends and receives exactly `per_rank` bytes.
static long long pair_bytes(long long per_rank, int n, int i, int j) {
  return per_rank / n + ((i + j) % n < per_rank % n ? 1 : 0);
}

// Counts and displacements of one phase for rank `me`; symmetric, so the reverse (combine) uses the same form.
static int fill_counts(long long per_rank, int n, int me, int* counts, int* displs) {
  long long off = 0;
  for (int p = 0; p < n; ++p) {
    const long long b = pair_bytes(per_rank, n, me, p);
    if (b > 2147483647LL || off > 2147483647LL) return 0;  // MPI_Alltoallv counts and displacements are int
    counts[p] = (int)b;
    displs[p] = (int)off;
    off += b;
  }
  return 1;
}

static double slowest(double t) {
  double worst = 0;
  MPI_Allreduce(&t, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int me = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (argc < 3) {
    if (me == 0)
      fprintf(stderr, "usage: mpirun -n N %s DISPATCH_BYTES_PER_RANK COMBINE_BYTES_PER_RANK [REPS [OUT.json]]\n",
              argv[0]);
    MPI_Finalize();
    return 2;
  }
  const long long dispatch_b = atoll(argv[1]), combine_b = atoll(argv[2]);
  const int reps = argc > 3 ? atoi(argv[3]) : 10;
  const char* out = argc > 4 ? argv[4] : NULL;
  if (dispatch_b < 0 || combine_b < 0 || reps < 1) {
    if (me == 0) fprintf(stderr, "mpi_alltoallv: bytes must be >= 0 and REPS >= 1\n");
    MPI_Finalize();
    return 2;
  }
  int *dc = malloc(n * sizeof(int)), *dd = malloc(n * sizeof(int));
  int *cc = malloc(n * sizeof(int)), *cd = malloc(n * sizeof(int));
  if (!fill_counts(dispatch_b, n, me, dc, dd) || !fill_counts(combine_b, n, me, cc, cd)) {
    if (me == 0) fprintf(stderr, "mpi_alltoallv: %lld or %lld bytes per rank overflow MPI's int counts\n",
                         dispatch_b, combine_b);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  // Dispatch sends `tokens` and receives into `rows`; combine sends `rows` back into `tokens`, as an engine's
  // buffers would be reused. Sized for the larger phase; filled so every page is touched before timing.
  const size_t cap = (size_t)(dispatch_b > combine_b ? dispatch_b : combine_b) + 1;
  char *tokens = malloc(cap), *rows = malloc(cap);
  if (!tokens || !rows) {
    fprintf(stderr, "mpi_alltoallv: rank %d: cannot allocate 2 x %zu bytes\n", me, cap);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  memset(tokens, me + 1, cap);
  memset(rows, 0, cap);

  double* total = malloc(reps * sizeof(double));
  double best_d = 0, best_c = 0, best = -1;
  for (int rep = -1; rep < reps; ++rep) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Alltoallv(tokens, dc, dd, MPI_BYTE, rows, dc, dd, MPI_BYTE, MPI_COMM_WORLD);
    const double td = slowest(MPI_Wtime() - t0);
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    MPI_Alltoallv(rows, cc, cd, MPI_BYTE, tokens, cc, cd, MPI_BYTE, MPI_COMM_WORLD);
    const double tc = slowest(MPI_Wtime() - t0);
    if (rep < 0) continue;  // warm-up: first touch of the peers' shared segments
    total[rep] = td + tc;
    if (best < 0 || td + tc < best) {
      best = td + tc;
      best_d = td;
      best_c = tc;
    }
  }
  qsort(total, reps, sizeof(double), cmp_double);
  const double median = reps % 2 ? total[reps / 2] : (total[reps / 2 - 1] + total[reps / 2]) / 2;
  // eplab's definition: dispatch received plus combine sent, summed over ranks, over both phases' time.
  const double bytes = (double)(dispatch_b + combine_b) * n;
  if (me == 0) {
    printf("MPI_Alltoallv, %d ranks, even split of the same total bytes: %lld + %lld bytes per rank, %d reps\n", n,
           dispatch_b, combine_b, reps);
    printf("best   %.4f s (dispatch %.4f, combine %.4f)  %.3f GB/s\n", best, best_d, best_c, bytes / best / 1e9);
    printf("median %.4f s  %.3f GB/s\n", median, bytes / median / 1e9);
    if (out) {
      FILE* f = fopen(out, "w");
      if (!f) {
        fprintf(stderr, "mpi_alltoallv: cannot write '%s'\n", out);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
      fprintf(f,
              "{\"ranks\": %d, \"split\": \"even split of the same total bytes\", "
              "\"dispatch_bytes_per_rank\": %lld, \"combine_bytes_per_rank\": %lld, \"activation_bytes\": %.0f, "
              "\"reps\": %d, \"warmup_reps\": 1, \"best_s\": %.9g, \"best_dispatch_s\": %.9g, "
              "\"best_combine_s\": %.9g, \"median_s\": %.9g, \"best_GBps\": %.6g, \"median_GBps\": %.6g, "
              "\"totals_s\": [",
              n, dispatch_b, combine_b, bytes, reps, best, best_d, best_c, median, bytes / best / 1e9,
              bytes / median / 1e9);
      for (int rep = 0; rep < reps; ++rep) fprintf(f, "%s%.9g", rep ? ", " : "", total[rep]);  // sorted
      fprintf(f, "]}\n");
      fclose(f);
    }
  }
  free(total);
  free(tokens);
  free(rows);
  free(dc);
  free(dd);
  free(cc);
  free(cd);
  MPI_Finalize();
  return 0;
}
