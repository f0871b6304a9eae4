#!/usr/bin/env bash
# Checkpoints through the command line (docs/checkpoints.md), each run in a fresh process as byte-identical
# simulated reports need (docs/sim.md, "Clock"):
#   checkpoint_checks.sh EPLAB CASE
# sim_resume, sim_scale: runs stopped at a step boundary and resumed give the uninterrupted run's report, byte for byte but
# for the wall-clock keys; emu_resume: the same with a delta codec on real bytes, wall-clock times aside;
# refusals: files that are truncated, corrupt, of another configuration, and a place the checkpoint cannot go.
set -u
eplab=$1
case_name=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL ($case_name): $*"
  exit 1
}
run() { "$eplab" run "$@" --quiet >"$tmp/out.txt" 2>&1 || fail "eplab run $* exited $?: $(cat "$tmp/out.txt")"; }
# same A B KEYS...: the two reports are identical once the named keys (wall-clock ones) are removed everywhere.
same() {
  /usr/bin/python3 - "$@" <<'PY' || fail "reports differ: $1 vs $2"
import json, sys
a, b, drop = sys.argv[1], sys.argv[2], sys.argv[3:]
def strip(j):
    if isinstance(j, dict):
        return {k: strip(v) for k, v in j.items() if not any(k == d or (d.startswith('*') and k.endswith(d[1:])) for d in drop)}
    if isinstance(j, list):
        return [strip(v) for v in j]
    return j
ja, jb = strip(json.load(open(a))), strip(json.load(open(b)))
if ja != jb:
    for k in ja:
        if ja.get(k) != jb.get(k):
            print("first differing key:", k, json.dumps(ja.get(k))[:300], json.dumps(jb.get(k))[:300])
            break
    sys.exit(1)
# Byte for byte too: the same keys in the same order, numbers printed alike.
if json.dumps(ja, indent=1) != json.dumps(jb, indent=1):
    sys.exit(1)
PY
}
# stop_resume NAME STOP ARGS...: the uninterrupted run, then one stopped after STOP steps and resumed.
stop_resume() {
  local name=$1 stop=$2
  shift 2
  run "$@" --report "$tmp/$name-whole.json"
  run "$@" --checkpoint "$tmp/$name.ckpt" --stop-after-steps "$stop" --report "$tmp/$name-stopped.json"
  grep -q "stopped after $stop of" "$tmp/out.txt" || fail "$name: no stop message: $(cat "$tmp/out.txt")"
  grep -q '"stopped": true' "$tmp/$name-stopped.json" || fail "$name: the stopped run's report does not say so"
  [[ -s "$tmp/$name.ckpt" ]] || fail "$name: no checkpoint written"
  run "$@" --resume "$tmp/$name.ckpt" --report "$tmp/$name-resumed.json"
}

case $case_name in
  sim_resume)
    sim=(--backend sim --nodes 2 --gpus-per-node 4 --model mixtral-8x7b --tokens 512 --steps 4 --layers 2)
    # Rebalancing from a heat forecast (placements and migrations recomputed on resume), layout cache.
    stop_resume policy 2 "${sim[@]}" --balancer eplb --heat ema:alpha=0.5 --rebalance-every 1 \
      --redundant-experts 8 --layout-cache 4 --routing hotset:k=2,frac=0.6,every=2
    same "$tmp/policy-whole.json" "$tmp/policy-resumed.json" wall_s
    # Training (backward pass, dense all-reduce) with the low-latency algorithm, stopped after the first step.
    stop_resume training 1 "${sim[@]}" --mode training --algorithm low-latency
    same "$tmp/training-whole.json" "$tmp/training-resumed.json" wall_s
    # Real bytes on the simulator with a stateful codec; checkpoints every two steps on the way.
    stop_resume delta 3 "${sim[@]}" --tokens 64 --hidden 256 --payload real --dispatch-codec delta+bf16 \
      --combine-codec delta+bf16 --checkpoint-every 2
    same "$tmp/delta-whole.json" "$tmp/delta-resumed.json" wall_s
    grep -q '"verified": true' "$tmp/delta-resumed.json" || fail "the resumed real-byte run is not verified"
    # A failed GPU (on sim it keeps taking part with an empty batch), checkpointed after its failure.
    stop_resume fault 3 "${sim[@]}" --redundant-experts 8 --fault gpu:5@step:2
    same "$tmp/fault-whole.json" "$tmp/fault-resumed.json" wall_s
    grep -q '"failed_ranks": \[' "$tmp/fault-resumed.json" || fail "the resumed run has no faults block"
    echo "PASS (sim_resume)"
    ;;
  sim_scale)
    # 64 simulated GPUs, DeepSeek-V3 training with rebalancing every step: enough calls that a call's figures,
    # differences of the engine's running totals, round differently unless those totals are restored too (this
    # case failed in the last digit of phases.dispatch.time_s before they were).
    stop_resume scale 2 --backend sim --nodes 8 --gpus-per-node 8 --model deepseek-v3 --tokens 4096 --steps 4 \
      --layers 3 --balancer eplb --rebalance-every 1 --redundant-experts 64 --heat ema:alpha=0.5 --mode training
    same "$tmp/scale-whole.json" "$tmp/scale-resumed.json" wall_s
    echo "PASS (sim_scale)"
    ;;
  emu_resume)
    emu=(--backend emu --nodes 1 --gpus-per-node 4 --model mixtral-8x7b --tokens 32 --hidden 256 --steps 4
      --layers 2 --dispatch-codec delta+bf16 --combine-codec delta+bf16)
    stop_resume emu 2 "${emu[@]}"
    # Emulated ranks run on the wall clock: every time, bandwidth and utilization figure is left out.
    same "$tmp/emu-whole.json" "$tmp/emu-resumed.json" wall_s '*_s' '*GBps' '*_per_s' '*_us' '*_ms' \
      '*utilization' '*fraction'
    grep -q '"verified": true' "$tmp/emu-resumed.json" || fail "the resumed run is not verified"
    echo "PASS (emu_resume)"
    ;;
  refusals)
    small=(--backend emu --nodes 1 --gpus-per-node 4 --model mixtral-8x7b --tokens 32 --hidden 256 --steps 3
      --dispatch-codec delta+bf16)
    run "${small[@]}" --checkpoint "$tmp/c.ckpt" --stop-after-steps 1
    size=$(stat -c %s "$tmp/c.ckpt")
    head -c $((size / 2)) "$tmp/c.ckpt" >"$tmp/half.ckpt"
    cp "$tmp/c.ckpt" "$tmp/bad.ckpt"
    printf '\xff\xff\xff\xff' | dd of="$tmp/bad.ckpt" bs=1 seek=$((size / 2)) conv=notrunc status=none
    check() {
      local pattern=$1
      shift
      local out
      out=$("$eplab" run "$@" --quiet 2>&1) && fail "eplab run $* succeeded: $out"
      grep -Eq -- "$pattern" <<<"$out" || fail "eplab run $* did not say /$pattern/: $out"
    }
    check "checkpoint '$tmp/half.ckpt': truncated" "${small[@]}" --resume "$tmp/half.ckpt"
    check "checkpoint '$tmp/bad.ckpt': corrupt" "${small[@]}" --resume "$tmp/bad.ckpt"
    check "checkpoint '$tmp/c.ckpt': belongs to another configuration: --tokens was 32 there, 64 here" \
      "${small[@]}" --tokens 64 --resume "$tmp/c.ckpt"
    check "checkpoint '$tmp/none.ckpt': cannot be opened" "${small[@]}" --resume "$tmp/none.ckpt"
    check "checkpoint '/dev/zero': is not a regular file" "${small[@]}" --resume /dev/zero
    check "checkpoint '$tmp/out.txt': (truncated or corrupt|not an eplab checkpoint)" "${small[@]}" --resume "$tmp/out.txt"
    # An unwritable checkpoint path is found before the run starts.
    check "cannot write the checkpoint to '$tmp/no/such/c.ckpt'" "${small[@]}" --checkpoint "$tmp/no/such/c.ckpt"
    check "--stop-after-steps 1 needs --checkpoint" "${small[@]}" --stop-after-steps 1
    echo "PASS (refusals)"
    ;;
  *) fail "unknown case" ;;
esac
