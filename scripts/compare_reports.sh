#!/bin/bash
# Runs the same `eplab run` cases with two eplab executables and checks that their reports (but for wall_s) and
# timeline files are byte-identical: what a change that must not alter existing runs (a new option left off)
# promises. Usage: scripts/compare_reports.sh OLD_EPLAB NEW_EPLAB [WORKDIR]. Exit status 1 if any case differs.
set -u
old=${1:?usage: $0 OLD_EPLAB NEW_EPLAB [WORKDIR]}
new=${2:?usage: $0 OLD_EPLAB NEW_EPLAB [WORKDIR]}
dir=${3:-$(mktemp -d)}
mkdir -p "$dir"
i=0
fail=0
while read -r args; do
  i=$((i + 1))
  if ! "$old" run $args --quiet --report "$dir/old$i.json" --timeline "$dir/old$i.tl.json" > /dev/null; then
    echo "old failed: $args"
    fail=1
    continue
  fi
  if ! "$new" run $args --quiet --report "$dir/new$i.json" --timeline "$dir/new$i.tl.json" > /dev/null; then
    echo "new failed: $args"
    fail=1
    continue
  fi
  sed -i '/"wall_s"/d' "$dir/old$i.json" "$dir/new$i.json"
  if cmp -s "$dir/old$i.json" "$dir/new$i.json" && cmp -s "$dir/old$i.tl.json" "$dir/new$i.tl.json"; then
    echo "identical: $args"
  else
    echo "DIFFER:    $args (reports and timelines in $dir)"
    fail=1
  fi
done << 'CASES'
--nodes 2 --gpus-per-node 8 --layers 3
--nodes 2 --gpus-per-node 8 --layers 2 --mode training
--nodes 2 --gpus-per-node 8 --layers 2 --mode training --overlap-allreduce 0 --steps 2
--nodes 4 --gpus-per-node 8 --layers 2 --algorithm flat --routing zipf:1.2
--nodes 2 --gpus-per-node 8 --layers 2 --algorithm low-latency --tokens 128
--nodes 2 --gpus-per-node 8 --layers 2 --algorithm allgather --tokens 256
--nodes 2 --gpus-per-node 4 --layers 2 --steps 3 --routing zipf:1.2 --balancer eplb --heat oracle --rebalance-every 1 --redundant-experts 8
--nodes 2 --gpus-per-node 4 --layers 2 --steps 2 --layout-cache 4
--nodes 2 --gpus-per-node 2 --model qwen-moe --hidden 256 --tokens 64 --layers 2 --payload real --mode training
CASES
exit $fail
