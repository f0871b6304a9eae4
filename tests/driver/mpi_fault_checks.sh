#!/usr/bin/env bash
# A failed GPU on the mpi backend: its process exits at the failed step and the others finish the run.
#   mpi_fault_checks.sh MPIEXEC EPLAB
# Four processes (2 nodes x 2 GPUs, mixtral's 8 experts, 2 a GPU, 4 redundant slots holding experts 0-3):
#  - without `mpirun --enable-recovery` a GPU failure is refused before any rank starts, saying why;
#  - with it, gpu:1@step:1 loses nothing (experts 2 and 3 have replicas on ranks 2 and 3), verified, and from
#    step 1 on rank 1 sends no notify message and none is sent to it (flat: 4 x 4 a call before, 3 x 3 after);
#  - gpu:3@step:1 loses every selection of experts 6 and 7 from step 1 on, counted in both report blocks;
#  - in both, the payload ledgers (the failed rank's handed over with its result) agree on every rank pair;
#  - the same two with --algorithm hierarchical: the failed GPU's rail goes through the other GPU of its node,
#    and from step 1 on nothing is sent to it or expected from it (notify: 16 messages a call before, 11 after:
#    each live rank to one relay per node, then to every live GPU of its node).
# Each run asserts from its JSON report; timing is never checked.
set -u
mpiexec=$1
eplab=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run=(run --backend=mpi --nodes 2 --gpus-per-node 2 --model mixtral-8x7b --hidden 256 --tokens 64 --steps 3
  --algorithm flat --redundant-experts 4 --detect-timeout 0.05 --timeout 60 --quiet)

out=$(timeout 120 "$mpiexec" -n 4 --oversubscribe "$eplab" "${run[@]}" --fault gpu:1@step:1 2>&1)
grep -q "start the run as mpirun --enable-recovery" <<<"$out" || fail "no refusal without --enable-recovery: $out"

# check REPORT EXPR...: each Python expression over the report `r` must hold.
check() {
  local report=$1
  shift
  /usr/bin/python3 - "$report" "$@" <<'PY' || fail "report $1 failed a check"
import json, sys
r = json.load(open(sys.argv[1]))
for expr in sys.argv[2:]:
    if not eval(expr):
        print("check failed:", expr, "in", json.dumps({k: r.get(k) for k in ("verified", "verification", "faults")}))
        sys.exit(1)
PY
}

t0=$(date +%s.%N)
out=$(timeout 120 "$mpiexec" -n 4 --oversubscribe --enable-recovery "$eplab" "${run[@]}" --fault gpu:1@step:1 \
  --report "$tmp/kept.json" 2>&1)
rc=$?
t1=$(date +%s.%N)
[[ $rc -eq 0 ]] || fail "gpu:1@step:1 exited $rc: $out"
check "$tmp/kept.json" 'r["verified"] is True' 'r["faults"]["tokens_lost"] == 0' \
  'r["faults"]["tokens_rerouted"] > 0' 'r["faults"]["failed_ranks"] == [1]' 'r["faults"]["failed_ranks_stopped"]' \
  'r["faults"]["tokens_departed"] == 2 * 64' 'r["verification"]["lost_selections"] == 0' \
  'abs(r["phases"]["notify"]["messages"] - (4 * 4 + 2 * 3 * 3) / 3) < 1e-9' \
  'r["verification"]["payloads"]["checked"] == "counts and checksums"' \
  'r["verification"]["payloads"]["mismatches"] == 0'
echo "gpu:1@step:1: verified, 0 lost, mpirun wall $(/usr/bin/python3 -c "print(round($t1 - $t0, 2))") s"

out=$(timeout 120 "$mpiexec" -n 4 --oversubscribe --enable-recovery "$eplab" "${run[@]}" --fault gpu:3@step:1 \
  --report "$tmp/lost.json" 2>&1)
rc=$?
[[ $rc -eq 0 ]] || fail "gpu:3@step:1 exited $rc: $out"
check "$tmp/lost.json" 'r["verified"] is True' 'r["faults"]["tokens_lost"] > 0' \
  'r["verification"]["lost_selections"] == r["faults"]["tokens_lost"]' \
  'all(e["experts"] == [6, 7] for e in r["faults"]["lost_experts"])' \
  'all(s["expert"] in (6, 7) for s in r["faults"]["first_lost"])' \
  'r["verification"]["payloads"]["checked"] == "counts and checksums"' \
  'r["verification"]["payloads"]["mismatches"] == 0'
echo "gpu:3@step:1: verified, $(/usr/bin/python3 -c "import json; print(json.load(open('$tmp/lost.json'))['faults']['tokens_lost'])") selections lost"
hier=(run --backend=mpi --nodes 2 --gpus-per-node 2 --model mixtral-8x7b --hidden 256 --tokens 64 --steps 3
  --algorithm hierarchical --redundant-experts 4 --detect-timeout 0.05 --timeout 60 --quiet)
for spec in gpu:1@step:1 gpu:3@step:1; do
  out=$(timeout 120 "$mpiexec" -n 4 --oversubscribe --enable-recovery "$eplab" "${hier[@]}" --fault "$spec" \
    --report "$tmp/hier.json" 2>&1)
  rc=$?
  [[ $rc -eq 0 ]] || fail "hierarchical $spec exited $rc: $out"
  check "$tmp/hier.json" 'r["verified"] is True' 'r["faults"]["failed_ranks_stopped"]' \
    'r["verification"]["lost_selections"] == r["faults"]["tokens_lost"]' \
    'r["faults"]["tokens_rerouted"] > 0' \
    'abs(r["phases"]["notify"]["messages"] - (16 + 2 * 11) / 3) < 1e-9' \
    'r["verification"]["payloads"]["checked"] == "counts and checksums"' \
    'r["verification"]["payloads"]["mismatches"] == 0'
  [[ $spec == gpu:1@step:1 ]] && check "$tmp/hier.json" 'r["faults"]["tokens_lost"] == 0'
  [[ $spec == gpu:3@step:1 ]] && check "$tmp/hier.json" 'r["faults"]["tokens_lost"] > 0' \
    'all(e["experts"] == [6, 7] for e in r["faults"]["lost_experts"])'
  echo "hierarchical $spec: verified, $(/usr/bin/python3 -c "import json; print(json.load(open('$tmp/hier.json'))['faults']['tokens_lost'])") selections lost"
done
echo "PASS (mpi failed GPU)"
