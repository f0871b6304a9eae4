#!/usr/bin/env bash
# Runs the already-built GPU checks on the device machine: kernel tests, the fabric conformance suite over
# the `real` backend, one `eplab run --backend=real`, the probe and measured run `eplab validate` reads, and the GPU
# benchmark. Every step runs even if an
# earlier one failed; logs, reports and a summary go to $OUT. Build the folder with scripts/gpu_pack.sh.
#   scripts/gpu_check.sh DIR        (env: OUT=output folder, default ./gpu-check-out; STEP_TIMEOUT=s per step)
set -u
DIR=${1:-.gpu}
OUT=${OUT:-./gpu-check-out}
STEP_TIMEOUT=${STEP_TIMEOUT:-180}
mkdir -p "$OUT"
DIR=$(cd "$DIR" && pwd)
export LD_LIBRARY_PATH="$DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

names=()
codes=()
step() {
  local name=$1
  shift
  echo "=== $name: $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  timeout -k 10 "$STEP_TIMEOUT" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  names+=("$name")
  codes+=("$rc")
}

step env bash -c 'uname -a; nvidia-smi || echo "nvidia-smi: not available"; ldd "$0"/kernels_test' "$DIR"
step kernels_test "$DIR/kernels_test" --gtest_output="json:$OUT/kernels_test.json"
step fabric_real "$DIR/fabric_conformance_test" --gtest_filter='*real*' --gtest_output="json:$OUT/fabric_real.json"
step eplab_run "$DIR/eplab" run --backend=real --nodes 1 --gpus-per-node 4 --model qwen-moe --tokens 256 --quiet \
  --report "$OUT/real.json"
# The machine's side of `eplab validate` (no SimGrid here): its probe and a measured run of 5 calls. Afterwards,
# where sim is built: eplab validate --nodes 1 --gpus-per-node 4 --model qwen-moe --tokens 256 --steps 5 \
#   --probe OUT/probe.json --measured OUT/validate_run.json --plot v.png
step probe "$DIR/eplab" probe --backend=real --nodes 1 --gpus-per-node 4 -o "$OUT/probe.json"
step validate_run "$DIR/eplab" run --backend=real --nodes 1 --gpus-per-node 4 --model qwen-moe --tokens 256 --steps 5 \
  --quiet --report "$OUT/validate_run.json"
step gpu_bench "$DIR/gpu_bench" --json "$OUT/gpu_bench.json"

# A GPU check that skipped ran nothing: on the device machine that is a failure, not a pass.
skipped=$(grep -h '^\[  SKIPPED \]' "$OUT/kernels_test.log" "$OUT/fabric_real.log" 2>/dev/null |
  grep -v 'listed below' | grep -v ' ms)$' | grep -v 'RealBackendWithoutGpu' | sort -u)

failed=0
lines=()
for i in "${!names[@]}"; do
  status=ok
  if [[ ${codes[$i]} != 0 ]]; then
    status="FAILED (exit ${codes[$i]}$([[ ${codes[$i]} == 124 ]] && echo ", timed out after $STEP_TIMEOUT s"))"
    failed=1
  fi
  lines+=("$(printf '  %-14s %s' "${names[$i]}" "$status")")
done
[[ -n $skipped ]] && failed=1
{
  echo "gpu_check summary ($(date -u +%FT%TZ), DIR=$DIR)"
  printf '%s\n' "${lines[@]}"
  if [[ -n $skipped ]]; then
    echo "  skipped GPU tests (no device seen?):"
    echo "$skipped" | sed 's/^/    /'
  fi
  if [[ $failed == 0 ]]; then echo "  all steps passed"; else echo "  SOME STEPS FAILED: see $OUT/<step>.log"; fi
} | tee "$OUT/summary.txt"
exit "$failed"
