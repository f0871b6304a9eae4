#!/usr/bin/env bash
# Checkpoints on the mpi backend (docs/checkpoints.md): each rank sends its part of the state to rank 0 at a step
# boundary, rank 0 writes the file, and every process reads it on --resume.
#   mpi_checkpoint_checks.sh MPIEXEC EPLAB CASE
# resume: four processes (2 nodes x 2 GPUs) with delta codecs both ways (stateful: the delta references must be
#   carried), stopped after 2 of 4 steps and resumed, and checkpointed every step: the uninterrupted run's report,
#   wall-clock figures aside; and the same report as emu's for the same configuration.
# refusals: truncated, corrupt and other-configuration files are refused by every process, naming the file, and
#   the job ends (never hangs: each mpirun runs under `timeout`). Each is run twice: under --enable-recovery, so
#   that mpirun does not kill the other processes when the first one exits and each must reach its own refusal,
#   and plainly, where the job as a whole must fail. A write that fails on rank 0 fails every rank.
# failed_gpu: gpu:1@step:1 (flat, mpirun --enable-recovery), with and without redundant experts, stopped before
#   the failure (after step 1) and after it (after step 2), resumed: the uninterrupted run's report (kept results,
#   departed tokens, re-routed and lost counts, restored slots), and emu's.
# Each check asserts from JSON reports; timing is never checked.
set -u
mpiexec=$1
eplab=$2
case_name=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL ($case_name): $*"
  exit 1
}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi() { timeout 180 "$mpiexec" -n 4 --oversubscribe "$@"; }
# run_mpi [MPIRUN FLAGS --] ARGS...: one mpi run that must succeed.
run_mpi() {
  local flags=()
  if [[ $1 == --enable-recovery ]]; then
    flags=(--enable-recovery)
    shift
  fi
  mpi "${flags[@]}" "$eplab" run --backend=mpi "$@" --quiet >"$tmp/out.txt" 2>&1 ||
    fail "mpirun ${flags[*]} eplab run $* exited $?: $(cat "$tmp/out.txt")"
}
run_emu() {
  "$eplab" run --backend=emu "$@" --quiet >"$tmp/out.txt" 2>&1 || fail "eplab run $* exited $?: $(cat "$tmp/out.txt")"
}
# same A B [KEY...]: the two reports are identical once wall-clock figures (times, rates, utilizations), the
# backend's name and the named keys are removed everywhere.
same() {
  /usr/bin/python3 - "$@" <<'PY' || fail "reports differ: $1 vs $2"
import json, sys
timed = ("_s", "GBps", "per_s", "_us", "_ms", "util", "fraction")
drop = {"backend", *sys.argv[3:]}
def strip(j):
    if isinstance(j, dict):
        return {k: strip(v) for k, v in j.items() if k not in drop and not any(t in k for t in timed)}
    if isinstance(j, list):
        return [strip(v) for v in j]
    return j
ja, jb = strip(json.load(open(sys.argv[1]))), strip(json.load(open(sys.argv[2])))
if json.dumps(ja, indent=1) != json.dumps(jb, indent=1):
    for k in sorted(set(ja) | set(jb)):
        if ja.get(k) != jb.get(k):
            print("first differing key:", k, json.dumps(ja.get(k))[:400], "|", json.dumps(jb.get(k))[:400])
            break
    sys.exit(1)
PY
}
# stop_resume NAME STOP [--enable-recovery] ARGS...: the uninterrupted mpi run, then one stopped after STOP steps
# and resumed from its checkpoint.
stop_resume() {
  local name=$1 stop=$2
  shift 2
  run_mpi "$@" --report "$tmp/$name-whole.json"
  run_mpi "$@" --checkpoint "$tmp/$name.ckpt" --stop-after-steps "$stop" --report "$tmp/$name-stopped.json"
  [[ $(grep -c "stopped after $stop of" "$tmp/out.txt") == 1 ]] ||
    fail "$name: not one stop message (rank 0's): $(cat "$tmp/out.txt")"
  grep -q '"stopped": true' "$tmp/$name-stopped.json" || fail "$name: the stopped run's report does not say so"
  [[ -s "$tmp/$name.ckpt" ]] || fail "$name: no checkpoint written"
  run_mpi "$@" --resume "$tmp/$name.ckpt" --report "$tmp/$name-resumed.json"
  same "$tmp/$name-whole.json" "$tmp/$name-resumed.json"
}

base=(--nodes 2 --gpus-per-node 2 --model mixtral-8x7b --hidden 256 --tokens 32 --steps 4 --layers 2
  --dispatch-codec delta+bf16 --combine-codec delta+bf16 --timeout 60)

case $case_name in
  resume)
    stop_resume delta 2 "${base[@]}"
    grep -q '"verified": true' "$tmp/delta-resumed.json" || fail "the resumed run is not verified"
    grep -q '"mismatches": 0' "$tmp/delta-resumed.json" || fail "the resumed run's payload ledgers disagree"
    # A checkpoint every step on the way changes nothing.
    run_mpi "${base[@]}" --checkpoint "$tmp/every.ckpt" --report "$tmp/every.json"
    same "$tmp/delta-whole.json" "$tmp/every.json"
    # emu, every rank in one process, gives the same report, but for the payload ledger's totals
    # (verification.payloads): mpi's barriers are messages (one byte each, in the ledger), emu's are not (this
    # configuration without checkpoints: 384 messages, 3687412 bytes on emu; 576 and 3687604 on mpi, the 192 more
    # being barrier tokens). Each run's ledgers agree on every rank pair, which is what they check.
    run_emu "${base[@]}" --report "$tmp/emu.json"
    same "$tmp/emu.json" "$tmp/delta-resumed.json" payloads
    echo "PASS (mpi checkpoint resume)"
    ;;
  refusals)
    run_mpi "${base[@]}" --checkpoint "$tmp/c.ckpt" --stop-after-steps 1
    size=$(stat -c %s "$tmp/c.ckpt")
    head -c $((size / 2)) "$tmp/c.ckpt" >"$tmp/half.ckpt"
    cp "$tmp/c.ckpt" "$tmp/bad.ckpt"
    printf '\xff\xff\xff\xff' | dd of="$tmp/bad.ckpt" bs=1 seek=$((size / 2)) conv=notrunc status=none
    # each_process ARGS...: an mpi run under --enable-recovery (mpirun then ends neither the job nor the others
    # when one process exits, and itself exits 0), each process recording its exit status in $tmp/rc.RANK and
    # its output in $tmp/err.RANK.
    each_process() {
      rm -f "$tmp"/rc.* "$tmp"/err.*
      local out rc
      out=$(mpi --enable-recovery sh -c '"$0" run --backend=mpi "$@" --quiet >"'"$tmp"'/err.$OMPI_COMM_WORLD_RANK" 2>&1
        echo $? >"'"$tmp"'/rc.$OMPI_COMM_WORLD_RANK"' "$eplab" "$@" 2>&1)
      rc=$?
      [[ $rc -ne 124 ]] || fail "eplab run $* hung (killed by timeout): $out"
    }
    # failed RANK PATTERN: process RANK exited non-zero having said PATTERN.
    failed() {
      [[ -s "$tmp/rc.$1" && $(cat "$tmp/rc.$1") -ne 0 ]] || fail "process $1 did not fail: $(cat "$tmp/err.$1")"
      grep -Eq -- "$2" "$tmp/err.$1" || fail "process $1 did not say /$2/: $(cat "$tmp/err.$1")"
    }
    # refused PATTERN ARGS...: every one of the 4 processes exits non-zero having said PATTERN, and without
    # recovery the job fails as a whole; neither is ended by `timeout`.
    refused() {
      local pattern=$1
      shift
      each_process "$@"
      for r in 0 1 2 3; do failed $r "$pattern"; done
      local out rc
      out=$(mpi "$eplab" run --backend=mpi "$@" --quiet 2>&1)
      rc=$?
      [[ $rc -ne 0 && $rc -ne 124 ]] || fail "eplab run $* without recovery exited $rc: $out"
    }
    refused "checkpoint '$tmp/half.ckpt': truncated" "${base[@]}" --resume "$tmp/half.ckpt"
    refused "checkpoint '$tmp/bad.ckpt': corrupt" "${base[@]}" --resume "$tmp/bad.ckpt"
    refused "checkpoint '$tmp/c.ckpt': belongs to another configuration: --tokens was 32 there, 64 here" \
      "${base[@]}" --tokens 64 --resume "$tmp/c.ckpt"
    refused "checkpoint '$tmp/none.ckpt': cannot be opened" "${base[@]}" --resume "$tmp/none.ckpt"
    # The backend is part of the configuration (the report names it): emu's checkpoint does not resume on mpi.
    run_emu "${base[@]}" --checkpoint "$tmp/emu.ckpt" --stop-after-steps 1
    refused "checkpoint '$tmp/emu.ckpt': belongs to another configuration: --backend was \"emu\" there" \
      "${base[@]}" --resume "$tmp/emu.ckpt"
    # Rank 0 cannot write the file (a full filesystem: a 64 kB tmpfs, where this user may mount one): it fails
    # naming the file, and its failure ends every other rank's wait at the boundary.
    small="$tmp/small"
    mkdir "$small"
    if mount -t tmpfs -o size=64k tmpfs "$small" 2>/dev/null; then
      trap 'umount "$small"; rm -rf "$tmp"' EXIT
      each_process "${base[@]}" --checkpoint "$small/c.ckpt"
      failed 0 "writing the checkpoint to '$small/c.ckpt' failed"
      for r in 1 2 3; do failed $r "rank 0 failed: writing the checkpoint to '$small/c.ckpt' failed"; done
    else
      echo "not checked: a failed write (no small tmpfs could be mounted here)"
    fi
    echo "PASS (mpi checkpoint refusals)"
    ;;
  failed_gpu)
    for redundant in 4 0; do
      f=("${base[@]}" --algorithm flat --redundant-experts "$redundant" --fault gpu:1@step:1 --detect-timeout 0.05)
      for stop in 1 2; do
        stop_resume "r$redundant-s$stop" "$stop" --enable-recovery "${f[@]}"
      done
      whole="$tmp/r$redundant-s1-whole.json"
      /usr/bin/python3 - "$whole" "$redundant" <<'PY' || fail "redundant $redundant: the uninterrupted run's faults"
import json, sys
r, redundant = json.load(open(sys.argv[1])), int(sys.argv[2])
f = r["faults"]
ok = (r["verified"] is True and f["failed_ranks"] == [1] and f["failed_ranks_stopped"]
      and f["tokens_departed"] == 3 * 2 * 32
      and ((f["tokens_lost"] == 0 and f["tokens_rerouted"] > 0) if redundant else f["tokens_lost"] > 0)
      and r["verification"]["lost_selections"] == f["tokens_lost"])
if not ok:
    print(json.dumps({"verified": r["verified"], "faults": f})[:800])
    sys.exit(1)
PY
      run_emu "${f[@]}" --report "$tmp/emu-r$redundant.json"
      same "$tmp/emu-r$redundant.json" "$tmp/r$redundant-s2-resumed.json" payloads
      echo "gpu:1@step:1, $redundant redundant experts: resumed after steps 1 and 2 as the uninterrupted run and emu"
    done
    echo "PASS (mpi checkpoint with a failed GPU)"
    ;;
  *) fail "unknown case" ;;
esac
