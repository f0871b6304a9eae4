#!/usr/bin/env bash
# The test suite under sanitizers, in a build folder of its own:
#   scripts/sanitize.sh [asan] [ctest args...]
# asan: AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/), the C++ unit tests (ctest without the
#       Python, notebook and MPI tests: an instrumented library cannot be loaded into an uninstrumented python3
#       or launched under mpirun without preloading the runtime; and without the simulator's: SimGrid switches
#       actor stacks behind ASan's back, which it reports as stack errors in the actors).
# (A ThreadSanitizer mode for the emulated ranks is still to come.)
# Any report fails the run (halt_on_error / exitcode).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-asan}
[[ $# -gt 0 ]] && shift
case $kind in
  asan)
    flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
    export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    select=(-E "python|notebook|mpi|/sim|^Sim|sim_test|_sim")
    ;;
  *)
    echo "usage: scripts/sanitize.sh [asan] [ctest args...]" >&2
    exit 2
    ;;
esac
dir=build-$kind
mkdir -p "$dir"
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE=/usr/bin/python3 \
  -DEPLAB_WITH_PYTHON=OFF -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
  -DCMAKE_SHARED_LINKER_FLAGS="$flags" -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF >"$dir/configure.log" ||
  { cat "$dir/configure.log"; exit 1; }
cmake --build "$dir" -j"$(nproc)"
ctest --test-dir "$dir" --output-on-failure -j"$(nproc)" --timeout 900 "${select[@]}" "$@"
