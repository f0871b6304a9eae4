#!/usr/bin/env bash
# The test suite under sanitizers, in a build folder of its own:
#   scripts/sanitize.sh [asan|thread] [ctest args...]
# asan (default): AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/), the C++ unit tests: ctest without
#       the Python, notebook and MPI tests and without the simulator's. CI runs this mode (.ci/run).
#       Python and notebooks: feasible in principle but not done. The module would be built here too and loaded
#       into Debian's uninstrumented python3 with the runtime preloaded (LD_PRELOAD=$(gcc -print-file-name=
#       libasan.so)) and leak checking off, since CPython and NumPy keep allocations until exit; that loses the
#       leak check and has not been tried. MPI: mpirun would start the instrumented eplab from an uninstrumented
#       launcher with OpenMPI's own allocations reported as leaks; not tried either. SimGrid switches actor
#       stacks behind ASan's back, which it reports as stack errors in the actors.
# thread: ThreadSanitizer (build-tsan/), the tests that run ranks as threads: the emulated backend, the fabric
#       conformance suite on emu, the shared routing source, the driver and the policy runs. MPI ranks are processes
#       of one thread each, and OpenMPI's own progress threads are uninstrumented, so the MPI tests are left out.
#       Reports in uninstrumented third-party code only are suppressed in scripts/tsan.supp, each with its reason.
# Any report fails the run (halt_on_error / exitcode).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-asan}
[[ $# -gt 0 ]] && shift
# No benchmarks: no test runs them, and CI pays for every file compiled here.
common=(-DEPLAB_WITH_PYTHON=OFF -DEPLAB_BENCH=OFF -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF)
targets=()
case $kind in
  asan)
    dir=build-asan
    flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    select=(-E "python|notebook|mpi|/sim|^Sim|sim_test|_sim")
    ;;
  thread)
    dir=build-tsan
    flags="-fsanitize=thread -fno-omit-frame-pointer"
    export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp"
    common+=(-DEPLAB_WITH_SIMGRID=OFF -DEPLAB_WITH_MPI=OFF)
    targets=(ep_emu_test ep_emu_algorithms_test layout_cache_emu_test fabric_conformance_test driver_test
             test_policy_run test_traces)
    # Only those executables are built; ctest lists the others as <name>_NOT_BUILT, and the command-line checks
    # need the eplab binary.
    select=(-E "_NOT_BUILT|python|notebook|mpi|eplab_run|eplab_cli")
    ;;
  *)
    echo "usage: scripts/sanitize.sh [asan|thread] [ctest args...]" >&2
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
