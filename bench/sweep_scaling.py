#!/usr/bin/env python3
"""How eplab.sweep scales with Dask workers: one grid of 64 simulated configurations at 256 GPUs (32 nodes x 8,
DeepSeek-V3, 4096 tokens/rank), run on a Dask cluster of separate processes on loopback (`dask scheduler` plus
1, then 2, `dask worker` processes, one thread each: eplab.dask_processes) and timed end to end.

    PYTHONPATH=build/python /usr/bin/python3 bench/sweep_scaling.py [--workers 1 2] [--json FILE]

Wall times depend on the machine and its load; the table says what ran where. Every worker count must give
the same DataFrame (the runs are deterministic); the script checks that and exits 1 if not.
"""

import argparse
import json
import os
import sys
import time

import eplab
import pandas as pd

BASE = dict(backend="sim", nodes=32, gpus_per_node=8, model="deepseek-v3", tokens=4096)
GRID = eplab.grid(routing=["uniform", "deepep", "zipf:1.1", "zipf:1.3"],
                  dispatch_codec=["bf16", "fp8-e4m3-b128"],
                  redundant_experts=[0, 256],
                  algorithm=["hierarchical", "low-latency"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--json", help="write the rows here too")
    ap.add_argument("--pin", action="store_true", help="one core per worker (eplab.dask_processes(pin_cores=True))")
    args = ap.parse_args()
    configs = [dict(c, seed=1 + i // len(GRID)) for i, c in enumerate(GRID * 2)]  # 64: the grid twice, two seeds
    rows, frames = [], {}
    load = os.getloadavg()
    print(f"eplab sweep scaling: {len(configs)} configurations, sim, 256 GPUs ({BASE['nodes']} nodes x "
          f"{BASE['gpus_per_node']}), {BASE['model']}, {BASE['tokens']} tokens/rank; {os.cpu_count()} CPUs, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start; workers "
          f"{'pinned one per core' if args.pin else 'not pinned'}")
    print(f"{'workers':>8} {'wall (s)':>10} {'runs/s':>8} {'speed-up':>9}")
    for n in args.workers:
        with eplab.dask_processes(n, pin_cores=args.pin) as client:
            t0 = time.perf_counter()
            df = eplab.sweep(configs, base=BASE, client=client, progress=False)
            wall = time.perf_counter() - t0
        frames[n] = df
        base_wall = rows[0]["wall_s"] if rows else wall
        rows.append({"workers": n, "wall_s": wall, "runs_per_s": len(configs) / wall, "speedup": base_wall / wall})
        r = rows[-1]
        print(f"{n:>8} {wall:>10.2f} {r['runs_per_s']:>8.2f} {r['speedup']:>9.2f}")
    # Everything but wall-clock columns must agree between worker counts: exactly, except that simulated times can
    # differ in their last digits when a worker ran other simulations first (SimGrid's clock is process-wide;
    # docs/sim.md, "Clock"), so numbers are compared to a relative 1e-9.
    first = frames[args.workers[0]]
    worst, differ = 0.0, set()
    for f in frames.values():
        for c in f.columns:
            if "wall" in c or c not in first:
                continue
            a, b = f[c], first[c]
            numeric = [pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x) for x in (a, b)]
            if all(numeric):
                rel = ((a - b).abs() / b.abs().where(b != 0, 1)).fillna(0)
                worst = max(worst, float(rel.max()))
                if (rel > 1e-9).any():
                    differ.add(c)
            elif not a.equals(b):
                differ.add(c)
    same = not differ
    print(f"same results for every worker count: {'yes' if same else 'NO, columns ' + str(sorted(differ))} "
          f"(largest relative difference {worst:.1e})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"configurations": len(configs), "base": BASE, "cpus": os.cpu_count(), "load_at_start": load,
                       "pinned": args.pin, "rows": rows, "same_results": same,
                       "largest_relative_difference": worst}, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
