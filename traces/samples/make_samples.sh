#!/bin/sh
# Regenerates the sample traces in this folder. Usage: traces/samples/make_samples.sh [path/to/eplab]
# Every generator is deterministic, so rerunning it reproduces the committed files byte for byte
# (as long as the trace format and the eplab version in the provenance are unchanged).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
eplab=${1:-$here/../../build/bin/eplab}
gen() { "$eplab" trace gen --seed 7 --steps 2 --layers 2 "$@"; }
gen --routing uniform --model mixtral-8x7b --cluster h800-cx7 --nodes 1 --gpus-per-node 4 --tokens 16 -o "$here/uniform-mixtral.eptrace"
gen --routing deepep --model deepseek-v3 --cluster h800-cx7 --nodes 8 --gpus-per-node 1 --tokens 4 -o "$here/deepep-dsv3-8nodes.eptrace"
gen --routing zipf:1.2 --model qwen-moe --cluster h800-cx7 --nodes 1 --gpus-per-node 2 --tokens 16 -o "$here/zipf1.2-qwen.eptrace"
gen --routing hotset:k=2,frac=0.6,every=1 --model mixtral-8x7b --cluster h800-cx7 --nodes 1 --gpus-per-node 4 --tokens 16 -o "$here/hotset-mixtral.eptrace"
gen --routing correlated:rho=0.8 --model mixtral-8x7b --cluster h800-cx7 --nodes 1 --gpus-per-node 4 --tokens 16 -o "$here/correlated-mixtral.eptrace"
"$eplab" trace import --jsonl "$here/routing_log.jsonl" --model mixtral-8x7b --cluster h800-cx7 --nodes 1 --gpus-per-node 4 -o "$here/imported-mixtral.eptrace"
