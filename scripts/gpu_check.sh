#!/usr/bin/env bash
# Runs the already-built GPU checks on the device machine: kernel tests, the fabric conformance suite over
# the `real` backend, one `eplab run --backend=real`, the probe and measured run `eplab validate` reads, the
# transports of ranks as processes (their tests; NCCL with one rank as a singleton and under mpirun, each compared
# with emu on the same workload, and two ranks on one GPU refused; CUDA IPC with 2, 4 and 8 ranks under mpirun,
# compared with emu), and the GPU benchmark. Every step runs even if an earlier one failed; logs,
# reports and a summary go to $OUT. Build the folder with scripts/gpu_pack.sh.
#   scripts/gpu_check.sh DIR        (env: OUT=output folder, default ./gpu-check-out; STEP_TIMEOUT=s per step)
set -u
DIR=${1:-.gpu}
OUT=${OUT:-./gpu-check-out}
STEP_TIMEOUT=${STEP_TIMEOUT:-180}
mkdir -p "$OUT"
DIR=$(cd "$DIR" && pwd)
export LD_LIBRARY_PATH="$DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The Open MPI that gpu_pack.sh carried (the one eplab's libmpi belongs to): its plugins and help texts.
if [[ -d $DIR/openmpi/plugins ]]; then
  export OMPI_MCA_mca_base_component_path="$DIR/openmpi/plugins" OPAL_PKGDATADIR="$DIR/openmpi/share"
  export OMPI_MCA_orte_launch_agent="$DIR/openmpi/bin/orted"
fi
# The device machine runs commands as root, and its container may forbid cross-process memory copies (CMA).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none

names=()
codes=()
step() {
  local name=$1
  shift
  echo "=== $name: $*" | tee "$OUT/$name.log"
  local t0=$SECONDS
  # A shell function of this script runs in a child bash (exported with export -f), so timeout can end it too.
  if declare -F "$1" >/dev/null; then set -- bash -c '"$@"' _ "$@"; fi
  timeout -k 10 "$STEP_TIMEOUT" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  names+=("$name")
  codes+=("$rc")
}

step env bash -c 'uname -a; nvidia-smi || echo "nvidia-smi: not available"; ldd "$0"/kernels_test;
  ldconfig -p | grep -i nccl || echo "no libnccl in the loader cache"; command -v mpirun && mpirun --version' "$DIR"
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

# ---- the NCCL transport (--transport nccl): ranks as MPI processes, one per GPU ----
# NCCL is loaded at run time: the machine's own libnccl.so.2, or EPLAB_NCCL_LIBRARY where the loader finds none.
if [[ -z ${EPLAB_NCCL_LIBRARY:-} ]] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2'; then
  for cand in /usr/local/cuda/lib64/libnccl.so.2 /usr/local/cuda/targets/x86_64-linux/lib/libnccl.so.2 \
    /usr/lib/x86_64-linux-gnu/libnccl.so.2 /usr/local/lib/python3*/dist-packages/nvidia/nccl/lib/libnccl.so.2 \
    /usr/local/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so.2 \
    /usr/lib/python3/dist-packages/nvidia/nccl/lib/libnccl.so.2; do
    if [[ -e $cand ]]; then
      export EPLAB_NCCL_LIBRARY=$cand
      break
    fi
  done
fi
echo "gpu_check: NCCL: ${EPLAB_NCCL_LIBRARY:-libnccl.so.2 as the dynamic loader finds it}"

# The launcher: the carried Open MPI's mpirun (the same version as eplab's libmpi), else the machine's own when
# it is Open MPI 4 (another flavour cannot start processes of this libmpi); none: the mpirun steps fail saying so.
MPIRUN=
MPIRUN_WHY=
if [[ -x $DIR/openmpi/bin/mpirun ]]; then
  MPIRUN=$DIR/openmpi/bin/mpirun
elif command -v mpirun >/dev/null; then
  if mpirun --version 2>&1 | grep -q 'Open MPI) 4\.'; then
    MPIRUN=$(command -v mpirun)
  else
    MPIRUN_WHY="this machine's mpirun is not Open MPI 4 ($(mpirun --version 2>&1 | head -1)), which eplab's libmpi needs"
  fi
else
  MPIRUN_WHY="no mpirun: neither carried in $DIR/openmpi nor on PATH"
fi
echo "gpu_check: mpirun: ${MPIRUN:-none ($MPIRUN_WHY)}"

# One rank's workload, for NCCL and emu alike (words without spaces: it is split where used). A rank that waits
# 30 s for a peer fails the run: a hang costs that, not the whole step's timeout, of the device's time.
NCCL_RUN="run --nodes 1 --gpus-per-node 1 --model qwen-moe --tokens 256 --routing uniform --steps 2 --quiet --timeout 30"

# Both reports verified (each checks its own payloads' counts and checksums), and the same tokens received:
# selections delivered, bytes per link class, and the combine's error against the reference (the same only when
# the same bytes came back).
same_received() {
  local real=$1 emu=$2
  if ! command -v python3 >/dev/null; then
    echo "cannot compare $real with $emu: no python3 on this machine"
    return 1
  fi
  python3 - "$real" "$emu" <<'PY'
import json, sys
real, emu = (json.load(open(p)) for p in sys.argv[1:3])
def pick(r):
    v = r["verification"]
    # Not the payload ledger's message and byte totals: a transport over MPI adds its barrier tokens to them.
    return {"verified": r["verified"], "selections": v.get("selections"), "delivery_ok": v.get("delivery_ok"),
            "dispatch bytes": r["phases"]["dispatch"].get("bytes"), "combine bytes": r["phases"]["combine"].get("bytes"),
            # The combine's error against the reference: equal only when the same bytes came back.
            "combine max abs err": v.get("max_abs_err"), "combine rel L2 err": v.get("rel_l2_err")}
a, b = pick(real), pick(emu)
ok = a["verified"] is True and b["verified"] is True
for k in a:
    same = a[k] == b[k]
    ok = ok and same
    print(f"  {k:18} {'same' if same else 'DIFFERENT'}: {real['backend']} {a[k]}  emu {b[k]}")
print("same received tokens, both verified" if ok else "NOT the same, or not verified")
sys.exit(0 if ok else 1)
PY
}

nccl_vs_emu() {  # REPORT: an NCCL run's report, compared with emu's on the same workload
  [[ -s $1 ]] || { echo "no report $1: the NCCL run failed (see its log)"; return 1; }
  [[ -s $OUT/emu_1rank.json ]] || { echo "no emu report to compare with"; return 1; }
  same_received "$1" "$OUT/emu_1rank.json"
}

nccl_mpirun() {  # one rank under mpirun
  [[ -n $MPIRUN ]] || { echo "cannot run: $MPIRUN_WHY"; return 1; }
  "$MPIRUN" -n 1 "$DIR/eplab" $NCCL_RUN --backend=real --transport nccl --report "$OUT/nccl_mpirun.json" &&
    nccl_vs_emu "$OUT/nccl_mpirun.json"
}

nccl_two_ranks() {  # two ranks: refused on one GPU (before NCCL starts), verified on two or more
  [[ -n $MPIRUN ]] || { echo "cannot run: $MPIRUN_WHY"; return 1; }
  local gpus
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') || gpus=0
  local log=$OUT/nccl_two_ranks.out
  "$MPIRUN" -n 2 "$DIR/eplab" run --nodes 1 --gpus-per-node 2 --model qwen-moe --tokens 256 --quiet --timeout 30 \
    --backend=real --transport nccl >"$log" 2>&1
  local rc=$?
  cat "$log"
  if ((gpus == 1)); then
    if ((rc != 0)) && grep -q 'NCCL refuses two ranks on one GPU' "$log"; then
      echo "refused as it should be: 2 ranks, 1 GPU"
      return 0
    fi
    echo "expected the refusal of 2 ranks on 1 GPU (exit $rc)"
    return 1
  fi
  ((rc == 0)) && grep -q 'verified: true' "$log"
}

ipc_ranks() {  # N: N ranks on this machine's GPU(s) over CUDA IPC under mpirun, compared with emu's N ranks
  local n=$1
  [[ -n $MPIRUN ]] || { echo "cannot run: $MPIRUN_WHY"; return 1; }
  local shape="--nodes 1 --gpus-per-node $n --model qwen-moe --tokens 256 --routing uniform --steps 2 --quiet --timeout 30"
  "$DIR/eplab" run $shape --backend=emu --report "$OUT/emu_${n}ranks.json" >/dev/null || { echo "emu failed"; return 1; }
  "$MPIRUN" -n "$n" "$DIR/eplab" run $shape --backend=real --transport cuda-ipc --report "$OUT/ipc_${n}ranks.json" &&
    same_received "$OUT/ipc_${n}ranks.json" "$OUT/emu_${n}ranks.json"
}

export DIR OUT MPIRUN MPIRUN_WHY NCCL_RUN
export -f same_received nccl_vs_emu nccl_mpirun nccl_two_ranks ipc_ranks
step emu_1rank "$DIR/eplab" $NCCL_RUN --backend=emu --report "$OUT/emu_1rank.json"
step nccl_test "$DIR/nccl_test" --gtest_output="json:$OUT/nccl_test.json"
# A world of one started without a launcher (an Open MPI singleton): NCCL's path without mpirun's.
step nccl_1rank "$DIR/eplab" $NCCL_RUN --backend=real --transport nccl --report "$OUT/nccl_1rank.json"
step nccl_vs_emu nccl_vs_emu "$OUT/nccl_1rank.json"
step nccl_mpirun nccl_mpirun
step nccl_2_ranks nccl_two_ranks
# CUDA IPC: several ranks as processes sharing the GPU(s).
step ipc_2_ranks ipc_ranks 2
step ipc_4_ranks ipc_ranks 4
step ipc_8_ranks ipc_ranks 8

step gpu_bench "$DIR/gpu_bench" --json "$OUT/gpu_bench.json"

# A GPU check that skipped ran nothing: on the device machine that is a failure, not a pass.
skipped=$(grep -h '^\[  SKIPPED \]' "$OUT/kernels_test.log" "$OUT/fabric_real.log" "$OUT/nccl_test.log" 2>/dev/null |
  grep -v 'listed below' | grep -v ' ms)$' | grep -v 'RealBackendWithoutGpu' | grep -v 'NcclWithoutGpu' | sort -u)

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
