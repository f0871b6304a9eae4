#!/usr/bin/env bash
# libFuzzer over every input eplab parses (fuzz/README.md lists the targets), built with clang-14 + ASan + UBSan in
# build-fuzz/:
#   scripts/fuzz.sh [SECONDS] [TARGET...]  run each target (default: all) for SECONDS (default 30), one at a time
#   scripts/fuzz.sh --replay [TARGET...]   run each target once over its committed corpus (fuzz/corpus/<target>/)
#   scripts/fuzz.sh --seeds                rewrite the generated seeds (seed-*) in fuzz/corpus/
# Prints one line per target and exits non-zero when any target crashed, leaked, timed out or ran out of memory;
# the input that did it is in build-fuzz/artifacts/<target>/. New inputs a run finds go to build-fuzz/corpus/, not
# to the committed corpus: copy one there (and add a test) when it is worth keeping.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=run
seconds=30
case "${1:-}" in
  --replay) mode=replay; shift ;;
  --seeds) mode=seeds; shift ;;
  ''|-*) ;;
  *) [[ $1 =~ ^[0-9]+$ ]] && { seconds=$1; shift; } ;;
esac
((seconds > 0)) || { echo "scripts/fuzz.sh: SECONDS must be > 0" >&2; exit 2; }

# Debian's clang-14 and its libFuzzer runtime; the main build needs neither, so they are not in scripts/deps.txt.
rt=$(ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a 2>/dev/null | head -1 || true)
if ! command -v clang++-14 >/dev/null || [[ -z $rt ]]; then
  echo "scripts/fuzz.sh: installing clang-14 and libclang-rt-14-dev"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends clang-14 libclang-rt-14-dev >/dev/null
fi

dir=build-fuzz
mkdir -p "$dir"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# Only the core, the emulated backend and the driver: the fuzzed parsers live there, and SimGrid, MPI and the
# bindings would each need an instrumented build of their own.
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 -DEPLAB_FUZZ=ON \
  -DEPLAB_TESTS=OFF -DEPLAB_BENCH=OFF -DEPLAB_WITH_PYTHON=OFF -DEPLAB_WITH_SIMGRID=OFF -DEPLAB_WITH_MPI=OFF \
  -DEPLAB_WITH_CUDA=OFF -DEPLAB_WITH_NCCL=OFF -DEPLAB_WITH_VERBS=OFF -DPython_EXECUTABLE=/usr/bin/python3 \
  "${launcher[@]}" >"$dir/configure.log" || { cat "$dir/configure.log"; exit 1; }

if [[ $mode == seeds ]]; then
  cmake --build "$dir" --target fuzz_make_seeds
  "$dir/fuzz/fuzz_make_seeds" fuzz/corpus
  echo "scripts/fuzz.sh: generated seeds written under fuzz/corpus/"
  exit 0
fi

cmake --build "$dir" --target fuzz_all
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=()
  for f in "$dir"/fuzz/fuzz_*; do
    name=$(basename "$f")
    [[ $name == fuzz_make_seeds ]] || targets+=("$name")
  done
fi

export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
failed=0
for t in "${targets[@]}"; do
  bin=$dir/fuzz/$t
  [[ -x $bin ]] || { echo "scripts/fuzz.sh: no target $t" >&2; exit 2; }
  seeds=fuzz/corpus/$t
  mkdir -p "$seeds" "$dir/corpus/$t" "$dir/artifacts/$t"
  log=$dir/artifacts/$t/last.log
  # -rss_limit_mb / -malloc_limit_mb: decoding or parsing a few KB must never need more; -timeout: nor take long.
  common=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=20 -artifact_prefix="$dir/artifacts/$t/"
          -print_final_stats=1)
  start=$(date +%s)
  if [[ $mode == replay ]]; then
    mapfile -t files < <(find "$seeds" -type f | sort)
    rc=0
    ((${#files[@]})) && { nice "$bin" "${common[@]}" "${files[@]}" >"$log" 2>&1 || rc=$?; }
  else
    rc=0
    nice "$bin" "${common[@]}" -max_total_time="$seconds" "$dir/corpus/$t" "$seeds" >"$log" 2>&1 || rc=$?
  fi
  took=$(($(date +%s) - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  if [[ $mode == replay ]]; then
    inputs=${#files[@]}
  else
    inputs=$(find "$seeds" "$dir/corpus/$t" -type f | wc -l)
  fi
  if ((rc == 0)); then
    status=ok
  else
    status="FAILED (exit $rc; see $log)"
    failed=1
  fi
  printf '%-22s %-4s runs %-9s cov %-6s corpus %-5s %4ss\n' "$t" "${status%% *}" "${runs:-?}" "${cov:-?}" "$inputs" "$took"
  ((rc == 0)) || { echo "  $status"; grep -m3 -E 'ERROR|runtime error|invariant failed|terminate|Test unit written' "$log" | sed 's/^/  /'; }
done
exit $failed
