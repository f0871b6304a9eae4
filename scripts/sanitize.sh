#!/usr/bin/env bash
# The test suite under sanitizers, in a build folder of its own:
#   scripts/sanitize.sh [asan|asan-all|thread] [ctest args...]
# asan (default): AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/), the C++ unit tests: ctest without the
#       Python, notebook, MPI and simulator tests. CI runs this mode (.ci/run).
# asan-all: the same build, the whole suite in three passes. First every C++ test but the MPI ones, the simulator's
#       included (an ASan build runs SimGrid actors on threads, which ASan can follow: sim/sim_transport.cpp). Then
#       the MPI tests with leak checking off: OpenMPI keeps allocations in components it unloads at MPI_Finalize,
#       so LeakSanitizer can neither name nor suppress them (every other check stays on). Then the Python and
#       notebook tests with the instrumented module loaded into Debian's uninstrumented python3: the ASan runtime
#       has to come first, so it is preloaded (LD_PRELOAD), and leak checking is off because CPython and NumPy keep
#       allocations until exit.
# thread: ThreadSanitizer (build-tsan/), in two passes. First the tests that run ranks as threads: the emulated
#       backend, the fabric conformance suite on emu, the shared routing source, the driver and the policy runs.
#       Then the MPI tests (ctest names with "mpi": whole runs, the fabric conformance suite and the payload checks
#       on four mpirun'd processes of the instrumented eplab). OpenMPI and hwloc are not instrumented: reports that
#       lie only in them are suppressed in scripts/tsan.supp, each with its reason; eplab frames never are. The GPU
#       backends are left out of this build (not the subject, and they would double its time).
# Any report fails the run (halt_on_error / exitcode).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-asan}
[[ $# -gt 0 ]] && shift
# No benchmarks: no test runs them, and CI pays for every file compiled here.
common=(-DEPLAB_BENCH=OFF -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF)
targets=()
unleaked=()   # a ctest pass without leak checking: the MPI tests
mpi_pass=()   # a ctest pass of the MPI tests alone (thread)
preloaded=()  # a ctest pass with the sanitizer's runtime preloaded: the tests run by Python
case $kind in
  asan | asan-all)
    dir=build-asan
    flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    if [[ $kind == asan ]]; then
      common+=(-DEPLAB_WITH_PYTHON=OFF)
      select=(-E "python|notebook|mpi|/sim|^Sim|sim_test|_sim")
    else
      common+=(-DEPLAB_WITH_PYTHON=ON)  # the cache may hold OFF from an asan run
      select=(-E "python|notebook|mpi")
      unleaked=(-R mpi -E "python|notebook")
      preloaded=(-R "python|notebook")
    fi
    ;;
  thread)
    dir=build-tsan
    flags="-fsanitize=thread -fno-omit-frame-pointer"
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp"
    common+=(-DEPLAB_WITH_PYTHON=OFF -DEPLAB_WITH_SIMGRID=OFF -DEPLAB_WITH_CUDA=OFF -DEPLAB_WITH_NCCL=OFF
             -DEPLAB_WITH_VERBS=OFF -DEPLAB_WITH_MPI=ON)
    targets=(ep_emu_test ep_emu_algorithms_test layout_cache_emu_test fabric_conformance_test driver_test
             test_policy_run test_traces eplab_cli)
    # Only those executables are built; ctest lists the others as <name>_NOT_BUILT. The command-line checks on emu
    # stay out of the first pass (they are the emu tests again, through the binary, and slow under TSan), and so
    # do the tests that need SimGrid, which this build leaves out (validate's fit, the simulated checkpoints).
    select=(-E "_NOT_BUILT|python|notebook|mpi|eplab_run|eplab_cli|eplab_checkpoint_sim|^Validate\\.")
    mpi_pass=(-R "mpi" -E "_NOT_BUILT|python|notebook")
    ;;
  *)
    echo "usage: scripts/sanitize.sh [asan|asan-all|thread] [ctest args...]" >&2
    exit 2
    ;;
esac
mkdir -p "$dir"
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE=/usr/bin/python3 "${common[@]}" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags" \
  ${EPLAB_CMAKE_ARGS:-} >"$dir/configure.log" || { cat "$dir/configure.log"; exit 1; }
if ((${#targets[@]})); then
  cmake --build "$dir" -j"$(nproc)" --target "${targets[@]}"
else
  cmake --build "$dir" -j"$(nproc)"
fi
ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" --timeout 900 "${select[@]}" "$@"
if ((${#unleaked[@]})); then
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0 \
    ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" --timeout 900 "${unleaked[@]}" "$@"
fi
if ((${#mpi_pass[@]})); then
  # One at a time: each test starts four instrumented processes.
  ctest --test-dir "$dir" --output-on-failure -j1 --timeout 900 "${mpi_pass[@]}" "$@"
fi
if ((${#preloaded[@]})); then
  # libstdc++ too: python3 does not link it, and ASan's interceptor of C++ throws needs it loaded from the start.
  runtime="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
  LD_PRELOAD=$runtime ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=0 \
    ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" --timeout 1800 "${preloaded[@]}" "$@"
fi
