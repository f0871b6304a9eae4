#!/usr/bin/env bash
# Command-line checks on how `eplab` treats bad values, output files, exit codes and verification wording:
#   cli_checks.sh EPLAB CASE
# Each CASE asserts behaviour (exit status, messages, files written), never timing.
set -u
eplab=$1
case_name=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL ($case_name): $*"
  exit 1
}
# expect STATUS PATTERN -- ARGS...: runs eplab ARGS, checks the exit status and that stdout+stderr match PATTERN.
expect() {
  local want=$1 pattern=$2
  shift 3
  local out rc
  out=$("$eplab" "$@" 2>&1)
  rc=$?
  [[ $rc -eq $want ]] || fail "eplab $* exited $rc, expected $want: $out"
  grep -Eq -- "$pattern" <<<"$out" || fail "eplab $* did not say /$pattern/: $out"
}
small=(--backend emu --nodes 1 --gpus-per-node 4 --tokens 32 --model mixtral-8x7b --hidden 256 --quiet)

case $case_name in
  timeout)
    # Huge limits run (no steady-clock overflow, no hang); non-finite, negative and zero limits are refused.
    expect 0 "verified: true" -- run "${small[@]}" --timeout 1e10
    expect 0 "verified: true" -- run "${small[@]}" --timeout 1e300
    for v in inf nan; do
      expect 1 "--timeout: expected a finite number > 0" -- run "${small[@]}" --timeout $v
      expect 1 "--timeout: expected a finite number > 0" -- run --backend sim --nodes 1 --gpus-per-node 4 --quiet \
        --timeout $v
    done
    for v in -1 0; do expect 1 "--timeout: expected a number > 0" -- run "${small[@]}" --timeout $v; done
    ;;
  integer_ranges)
    # Checked before narrowing, naming the option and the range.
    for o in nodes gpus-per-node tokens hidden; do
      expect 1 "--$o: expected an integer in \[[0-9]+, 2147483647\]" -- run "${small[@]}" --$o 4294967297
    done
    expect 1 "--overlap-allreduce: expected true or false" -- run "${small[@]}" --overlap-allreduce 4294967297
    expect 1 "--steps expects a whole number in \[-2147483648, 2147483647\]" -- heat eval --steps 4294967297
    # Spec parameters too.
    expect 1 "parameter 'w' = '1e12' must be a whole number in \[1, 2147483647\]" -- run "${small[@]}" \
      --heat window:w=1e12 --rebalance-every 1 --redundant-experts 4 --balancer eplb
    expect 1 "parameter 'groups' = '1e12' must be a whole number in \[0, 2147483647\]" -- run "${small[@]}" \
      --balancer eplb:groups=1e12 --rebalance-every 1 --redundant-experts 4
    ;;
  trace_tokens)
    # A run driven by a trace reports the trace's tokens, not --tokens.
    "$eplab" trace gen --model mixtral-8x7b --nodes 1 --gpus-per-node 4 --tokens 16 --steps 1 --layers 1 \
      -o "$tmp/t.eptrace" >/dev/null || fail "trace gen failed"
    expect 0 "16 tokens/rank" -- run "${small[@]}" --tokens 64 --steps 1 --layers 1 --trace "$tmp/t.eptrace" \
      --report "$tmp/r.json"
    grep -q '"tokens_per_rank": 16,' "$tmp/r.json" || fail "report: $(grep tokens_per "$tmp/r.json")"
    ;;
  compare_exit)
    # Every algorithm fails (8 experts and 5 redundant slots do not divide over 3 ranks): exit 1, not 0.
    expect 1 "failed" -- run --compare --backend emu --nodes 1 --gpus-per-node 3 --tokens 16 --model mixtral-8x7b \
      --hidden 64 --redundant-experts 5 --quiet
    ;;
  output_files)
    # Write failures are reported, naming the path.
    expect 1 "'/dev/full' failed" -- codec eval --codec fp32 --tokens 8 --hidden 64 --steps 1 --json /dev/full
    expect 1 "'/dev/full' failed" -- heat eval --steps 3 --json /dev/full
    expect 1 "'/dev/full' failed" -- run "${small[@]}" --report /dev/full
    # An existing report survives a run that fails, and is replaced whole by one that succeeds.
    echo old >"$tmp/r.json"
    expect 1 "error" -- run "${small[@]}" --redundant-experts 3 --report "$tmp/r.json"
    [[ $(cat "$tmp/r.json") == old ]] || fail "the old report was touched"
    expect 0 "verified" -- run "${small[@]}" --report "$tmp/r.json"
    grep -q '"verified": true' "$tmp/r.json" || fail "report not replaced"
    # Unwritable places are found before the run starts (no summary printed).
    expect 1 "cannot write the timeline to '$tmp/no/such/t.json': cannot create a file in directory" -- \
      run "${small[@]}" --timeline "$tmp/no/such/t.json"
    expect 1 "cannot write the report to '$tmp/no/such/r.json': cannot create a file in directory" -- \
      run "${small[@]}" --report "$tmp/no/such/r.json"
    ;;
  verification_values)
    # A codec whose bound cannot tell zeros from values is checked for delivery only, and says so.
    expect 0 "verified: false \(delivery only: [0-9]+ selections delivered exactly once; values not checked" -- \
      run "${small[@]}" --dispatch-codec threshold:tau=1e30 --report "$tmp/r.json"
    grep -q '"values": "delivery only"' "$tmp/r.json" || fail "verification.values missing"
    grep -q '"verified": false' "$tmp/r.json" || fail "verified should be false"
    # Codecs with a bound keep their value check.
    expect 0 "verified: true \(" -- run "${small[@]}" --dispatch-codec bf16 --report "$tmp/r.json"
    grep -q '"values": "checked"' "$tmp/r.json" || fail "verification.values should be checked"
    ;;
  payload_checksums | payload_checksums_mpi)
    # Every message's bytes are counted and checksummed by its sender and its receiver (engine/payload_ledger.hpp),
    # forwarded hops included; normal runs of every algorithm pass. A byte flipped in flight (the test-only hook
    # EPLAB_TEST_FLIP_PAYLOAD_BYTE=SRC,DST,PHASE,STEP,LAYER[,ROUND], PHASE as in make_tag: 2 dispatch, 3 combine,
    # 4 forward) fails the run, naming the rank pair, the phase and the call.
    two=(--nodes 2 --gpus-per-node 2 --tokens 32 --model mixtral-8x7b --hidden 256 --steps 2 --layers 2 --quiet)
    if [[ $case_name == payload_checksums_mpi ]]; then
      mpirun=(${3:?payload_checksums_mpi needs mpiexec} -n 4 --oversubscribe)
      export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      run_eplab() { "${mpirun[@]}" "$eplab" "$@"; }
      backend=mpi
    else
      run_eplab() { "$eplab" "$@"; }
      backend=emu
    fi
    # expect_run STATUS PATTERN ARGS...: the same as expect, through run_eplab.
    expect_run() {
      local want=$1 pattern=$2 out rc
      shift 2
      out=$(run_eplab "$@" 2>&1)
      rc=$?
      [[ $rc -eq $want ]] || fail "eplab $* exited $rc, expected $want: $out"
      grep -Eq -- "$pattern" <<<"$out" || fail "eplab $* did not say /$pattern/: $out"
    }
    for a in flat hierarchical low-latency allgather; do
      expect_run 0 "payloads: [1-9][0-9]* messages, [1-9][0-9]* bytes: counts and checksums equal on every rank pair" \
        run --backend $backend "${two[@]}" --algorithm $a
    done
    if [[ $backend == emu ]]; then
      # The simulator with real bytes: its one-task all-to-all-v is entered in the ledger too; so is two-batch
      # overlap (sim only).
      expect_run 0 "payloads: [1-9][0-9]* messages.*counts and checksums equal" \
        run --backend sim --payload real "${two[@]}" --algorithm hierarchical --overlap tbo
    fi
    if [[ $backend == emu ]]; then
      # Phantom payloads (sim) have no bytes to hash, but every message's size is still entered by its sender and
      # its receiver (PayloadTally): normal runs pass; a message arriving one byte short fails the run (exit 4),
      # naming the rank pair, the phase and the call, and the report says the check did not pass.
      for a in flat hierarchical low-latency allgather; do
        expect_run 0 "payloads: [1-9][0-9]* messages, [1-9][0-9]* bytes: counts equal on every rank pair" \
          run "${two[@]}" --algorithm $a
      done
      EPLAB_TEST_FLIP_PAYLOAD_BYTE=1,2,2,1,0 expect_run 4 \
        "payload mismatch \(counts\): rank 1 -> rank 2, step 1, layer 0 \(tag .*dispatch.*sent minus received 0 message\(s\), 1 bytes" \
        run "${two[@]}" --algorithm flat --report "$tmp/phantom.json"
      grep -q '"passed": false' "$tmp/phantom.json" || fail "a phantom count mismatch should report passed false"
      EPLAB_TEST_FLIP_PAYLOAD_BYTE=3,0,3,0,1 expect_run 4 \
        "payload mismatch \(counts\): rank 3 -> rank 0, step 0, layer 1 \(tag .*combine" \
        run "${two[@]}" --algorithm low-latency
    fi
    # Dispatch on flat, from rank 1 to rank 2 in step 1, layer 0; combine from rank 3 to rank 0 in step 0, layer 1.
    EPLAB_TEST_FLIP_PAYLOAD_BYTE=1,2,2,1,0 expect_run 4 \
      "payload mismatch: rank 1 -> rank 2, phase dispatch, step 1, layer 0 .*checksum differs" \
      run --backend $backend "${two[@]}" --algorithm flat
    EPLAB_TEST_FLIP_PAYLOAD_BYTE=3,0,3,0,1 expect_run 4 \
      "payload mismatch: rank 3 -> rank 0, phase combine, step 0, layer 1 .*checksum differs" \
      run --backend $backend "${two[@]}" --algorithm low-latency
    # The first call (step 0, layer 0), which the run has already made once untimed as its warm-up: the flip
    # lands in the timed call, where the ledger sees it.
    EPLAB_TEST_FLIP_PAYLOAD_BYTE=1,2,2,0,0 expect_run 4 \
      "payload mismatch: rank 1 -> rank 2, phase dispatch, step 0, layer 0 .*checksum differs" \
      run --backend $backend "${two[@]}" --algorithm flat
    # Hierarchical's forward hop inside a node (ranks 2 and 3 share node 1).
    EPLAB_TEST_FLIP_PAYLOAD_BYTE=2,3,4,0,1 expect_run 4 \
      "payload mismatch: rank 2 -> rank 3, phase dispatch, step 0, layer 1 .*checksum differs" \
      run --backend $backend "${two[@]}" --algorithm hierarchical
    # Hierarchical's rail hop between nodes (ranks 0 and 2 share local index 0), which emu reads where its source
    # holds it: the flipped byte is in the source's batch row, and the ledger still sees it. mpi's forwarder reads
    # only the message's metadata and forwards its rows unread (RowGather::pulled); its ledger reads them to check.
    EPLAB_TEST_FLIP_PAYLOAD_BYTE=0,2,2,0,1 expect_run 4 \
      "payload mismatch: rank 0 -> rank 2, phase dispatch, step 0, layer 1 .*checksum differs" \
      run --backend $backend "${two[@]}" --algorithm hierarchical
    if [[ $backend == mpi ]]; then
      # Combine's answers between processes, read a stretch at a time where their senders hold them
      # (PeerConsume::takes_pull): the ledger hashes them as they are read, and sees a flipped byte. Flat's answer
      # from rank 3 to rank 0; hierarchical's answer from rank 3 to its forwarder, rank 2, and the sums back
      # across the rail from rank 2 to rank 0.
      EPLAB_TEST_FLIP_PAYLOAD_BYTE=3,0,3,0,1 expect_run 4 \
        "payload mismatch: rank 3 -> rank 0, phase combine, step 0, layer 1 .*checksum differs" \
        run --backend $backend "${two[@]}" --algorithm flat
      EPLAB_TEST_FLIP_PAYLOAD_BYTE=3,2,3,0,1,1 expect_run 4 \
        "payload mismatch: rank 3 -> rank 2, phase combine, step 0, layer 1 .*checksum differs" \
        run --backend $backend "${two[@]}" --algorithm hierarchical
      EPLAB_TEST_FLIP_PAYLOAD_BYTE=2,0,3,0,1,0 expect_run 4 \
        "payload mismatch: rank 2 -> rank 0, phase combine, step 0, layer 1 .*checksum differs" \
        run --backend $backend "${two[@]}" --algorithm hierarchical
      # Summed from those stretches, the output is emu's to the last bit: the same errors against the reference.
      for a in flat hierarchical; do
        same=("${two[@]}" --algorithm $a --dispatch-codec bf16 --combine-codec bf16)
        expect_run 0 "verified: true" run --backend mpi "${same[@]}" --report "$tmp/same_mpi.json"
        expect 0 "verified: true" -- run --backend emu "${same[@]}" --report "$tmp/same_emu.json"
        python3 - "$tmp/same_mpi.json" "$tmp/same_emu.json" <<'PY' || fail "$a on mpi differs from emu"
import json, sys
mpi, emu = (json.load(open(p))["verification"] for p in sys.argv[1:])
keys = ["max_abs_err", "rel_l2_err", "mismatched_elements", "elements"]
sys.exit(0 if all(mpi[k] == emu[k] for k in keys) else f"mpi {[mpi[k] for k in keys]}, emu {[emu[k] for k in keys]}")
PY
      done
    fi
    # Hierarchical in rail rounds (EPLAB_RAIL_ROUNDS; engine/hierarchical.cpp): every message checked, and the
    # same outputs and verification as in one round, with more messages.
    for rounds in 1 3; do
      EPLAB_RAIL_ROUNDS=$rounds expect_run 0 "payloads: [1-9][0-9]* messages.*counts and checksums equal" \
        run --backend $backend "${two[@]}" --algorithm hierarchical --report "$tmp/rounds$rounds.json"
    done
    python3 - "$tmp/rounds1.json" "$tmp/rounds3.json" <<'PY' || fail "hierarchical in 3 rail rounds differs from 1"
import json, sys
one, three = (json.load(open(p)) for p in sys.argv[1:])
msgs = lambda r: r["phases"]["dispatch"]["messages"]
outputs = lambda r: {k: v for k, v in r["verification"].items() if k != "payloads"}  # payloads: the messages
if not one["verified"] or outputs(one) != outputs(three) or msgs(three) <= msgs(one):
    print("1 round:", one["verification"], msgs(one), "\n3 rounds:", three["verification"], msgs(three))
    sys.exit(1)
PY
    EPLAB_RAIL_ROUNDS=x expect_run 1 "EPLAB_RAIL_ROUNDS must be a number of rounds from 1 to 64, got 'x'" \
      run --backend $backend "${two[@]}" --algorithm hierarchical
    if [[ $backend == mpi ]]; then
      # Single copy between processes of one machine (mpi/mpi_transport.cpp) against every message through MPI
      # (EPLAB_MPI_CMA=0): the launch says which path it took, and the two runs' reports give the same messages,
      # bytes, payload checks and outputs. Each run has messages below single copy's threshold (notify's) and
      # above it (dispatch's and combine's), at two hidden sizes.
      for a in flat hierarchical; do
        for hidden in 256 2048; do
          args=(run --backend mpi "${two[@]}" --hidden $hidden --algorithm $a)
          expect_run 0 "move by single copy" "${args[@]}" --report "$tmp/cma.json"
          EPLAB_MPI_CMA=0 expect_run 0 "single copy is off \(EPLAB_MPI_CMA=0\)" "${args[@]}" --report "$tmp/mpi.json"
          python3 - "$tmp/cma.json" "$tmp/mpi.json" <<'PY' || fail "$a, hidden $hidden: the reports of the two paths differ"
import json, sys
def facts(path):
    r = json.load(open(path))
    return {"verified": r["verified"], "verification": r["verification"],
            "phases": {p: {k: r["phases"][p][k] for k in ("bytes", "messages")} for p in r["phases"]}}
a, b = (facts(p) for p in sys.argv[1:])
if a != b or not a["verified"]:
    print("single copy:", a, "\nthrough MPI:", b)
    sys.exit(1)
PY
        done
      done
    fi
    ;;
  usage)
    # A malformed command line exits 2 (usage); a well-formed one with a bad value exits 1 (bad input).
    expect 2 "usage error: unknown option --bogus" -- run --bogus
    expect 2 "usage error: --tokens needs a value" -- run --tokens
    expect 2 "usage error: unexpected argument 'extra'" -- run extra
    expect 2 "usage error: unexpected argument 'extra'" -- codec eval extra
    expect 2 "usage error: unexpected argument 'extra'" -- presets extra
    expect 2 "usage error: trace info takes exactly one trace file" -- trace info
    expect 2 "unknown command 'nosuch'" -- nosuch
    expect 1 "error: --tokens: expected an integer" -- run --tokens abc
    expect 0 "^eplab [0-9]+\.[0-9]+\.[0-9]+$" -- --version
    ;;
  validate)
    # Measured on emu, predicted on sim with the cluster fitted to emu's probe: the table has every phase, and its
    # predictions are exactly what `eplab run` on that fitted cluster gives (means after the first call).
    expect 0 "dispatch \+ combine" -- validate "${small[@]}" --steps 3 --json "$tmp/v.json" --cluster-out "$tmp/fit.json"
    expect 0 "phantom payload" -- run "${small[@]}" --backend sim --cluster "$tmp/fit.json" --payload phantom --steps 3 \
      --report "$tmp/p.json"
    /usr/bin/python3 - "$tmp/v.json" "$tmp/p.json" <<'PY' || fail "validate's predictions differ from eplab run's"
import json, sys
v, p = (json.load(open(f)) for f in sys.argv[1:])
rows = {r["phase"]: r for r in v["phases"]}
assert list(rows) == ["notify", "dispatch", "combine", "dispatch + combine"], list(rows)
for ph in ("notify", "dispatch", "combine"):
    calls = p["phases"][ph]["call_time_s"][1:]
    assert abs(rows[ph]["predicted_s"] - sum(calls) / len(calls)) <= 1e-12, (ph, rows[ph], calls)
    assert rows[ph]["measured_s"] > 0, rows[ph]
assert v["measured_verified"] is True
PY
    # A measured report of another workload, a file that is not a probe, and sim as the "machine" are refused.
    "$eplab" run "${small[@]}" --steps 3 --report "$tmp/m.json" >/dev/null || fail "eplab run on emu failed"
    "$eplab" probe --backend emu --nodes 1 --gpus-per-node 4 -o "$tmp/probe.json" >/dev/null || fail "probe failed"
    expect 0 "measured on emu" -- validate "${small[@]}" --steps 3 --measured "$tmp/m.json" --probe "$tmp/probe.json"
    expect 1 "'tokens_per_rank' is 32" -- validate "${small[@]}" --steps 3 --tokens 64 --measured "$tmp/m.json" \
      --probe "$tmp/probe.json"
    echo '{}' >"$tmp/bad.json"
    expect 1 "probe '$tmp/bad.json': not a probe" -- validate "${small[@]}" --probe "$tmp/bad.json"
    expect 1 "measures on a machine" -- validate --backend sim --nodes 1 --gpus-per-node 2 --quiet
    ;;
  verbs_refusal)
    # --transport on mpi names mpi and verbs only. Where the build has the verbs transport and the machine no RDMA
    # device (every machine here), verbs is refused by every process, alone or under a launcher, before its rank
    # starts, saying what to check.
    one=(--backend=mpi --nodes 1 --gpus-per-node 1 --model mixtral-8x7b --hidden 64 --tokens 8 --quiet)
    if ! "$eplab" run "${one[@]}" >/dev/null 2>&1; then
      echo "PASS (verbs_refusal: this build has no mpi backend to check with)"
      exit 0
    fi
    expect 1 "--transport 'nccl': backend 'mpi' has mpi \(the default: MPI, with single copy between processes of one machine\) and verbs" -- run \
      "${one[@]}" --transport nccl
    expect 0 "verified: true" -- run "${one[@]}" --transport mpi
    if ! "$eplab" run "${one[@]}" --transport verbs 2>&1 | grep -q "no RDMA device found"; then
      expect 1 "this build has no verbs transport" -- run "${one[@]}" --transport verbs
      echo "PASS (verbs_refusal: this build has no verbs transport, or this machine an RDMA device)"
      exit 0
    fi
    expect 1 "rank 0 on .*no RDMA device found .*soft-RoCE" -- run "${one[@]}" --transport verbs
    out=$("$eplab" launch -n 4 -- eplab run --backend=mpi --transport verbs --nodes 2 --gpus-per-node 2 \
      --model mixtral-8x7b --hidden 64 --tokens 8 --quiet 2>&1)
    rc=$?
    [[ $rc -ne 0 ]] || fail "a launch of four processes without an RDMA device exited 0: $out"
    for r in 0 1 2 3; do
      grep -Eq "transport verbs: rank $r on .*no RDMA device found" <<<"$out" || fail "rank $r did not refuse: $out"
    done
    ! grep -q "verified" <<<"$out" || fail "a rank ran: $out"
    ;;
  launch)
    # The mpirun command line launch builds: on one machine more processes than cores are allowed, as root
    # mpirun is told so, a hostfile replaces the oversubscription, and `eplab` is this eplab.
    expect 0 "mpirun -n 3 --oversubscribe .*$eplab run --backend=mpi" -- launch -n 3 --dry-run -- eplab run \
      --backend=mpi
    out=$("$eplab" launch -n 3 --dry-run -- eplab 2>&1)
    if [[ $(id -u) -eq 0 ]]; then want=1; else want=0; fi
    [[ $(grep -c -- "--allow-run-as-root" <<<"$out") -eq $want ]] || fail "as uid $(id -u): $out"
    echo "localhost slots=2" >"$tmp/hosts"
    out=$("$eplab" launch -n 3 --hostfile "$tmp/hosts" --dry-run -- eplab 2>&1)
    grep -q -- "--hostfile $tmp/hosts" <<<"$out" && ! grep -q -- "--oversubscribe" <<<"$out" || fail "hostfile: $out"
    expect 0 "--enable-recovery --bind-to none .*eplab run$" -- launch -n 2 --mpirun-arg --enable-recovery \
      --mpirun-arg=--bind-to --mpirun-arg none --dry-run -- eplab run
    # Malformed (exit 2) and bad (exit 1) requests; a launcher that is missing or is not Open MPI's.
    expect 2 "put the command to launch after --" -- launch -n 2 eplab run
    expect 2 "put the command to launch after --" -- launch -n 2 --
    expect 2 "say how many processes: -n N" -- launch -- eplab run
    expect 1 "-n: expected a number of processes >= 1, got 0" -- launch -n 0 -- eplab run
    expect 1 "cannot read '$tmp/none'" -- launch -n 2 --hostfile "$tmp/none" -- eplab run
    expect 1 "no launcher '$tmp/mpirun' found" -- launch -n 2 --mpirun "$tmp/mpirun" -- eplab run
    expect 1 "'/bin/echo' is not Open MPI's mpirun" -- launch -n 2 --mpirun /bin/echo -- eplab run
    # The rest needs mpirun and the mpi backend (a one-rank run without a launcher shows it is built).
    if ! command -v mpirun >/dev/null || ! "$eplab" run --backend=mpi --nodes 1 --gpus-per-node 1 --model mixtral-8x7b \
      --hidden 64 --tokens 8 --quiet >/dev/null 2>&1; then
      echo "PASS (launch: command lines and refusals; no mpirun or no mpi backend here to launch with)"
      exit 0
    fi
    # A real launch: four processes on this machine (more than its two cores), one verified run; and mpirun's
    # failure exit status comes back.
    expect 0 "verified: true \(" -- launch -n 4 -- eplab run --backend=mpi --nodes 2 --gpus-per-node 2 \
      --model mixtral-8x7b --hidden 256 --tokens 32 --quiet
    expect 1 "3 MPI processes were started; run it as mpirun -n 4" -- launch -n 3 --quiet -- eplab run \
      --backend=mpi --nodes 2 --gpus-per-node 2 --quiet
    ;;
  *)
    fail "unknown case"
    ;;
esac
echo "PASS ($case_name)"
