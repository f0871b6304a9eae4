"""Draws an `eplab validate` comparison (its --json output): measured and predicted phase times side by side, and
each call's dispatch and combine times on the machine beside the simulator's, so warm-up calls and noise show.

Standalone on purpose (only json, numpy, matplotlib), so `eplab validate --plot` can run it with Debian's python3
without the eplab extension module:  /usr/bin/python3 python/eplab/validate_plot.py FILE.json -o out.png
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only: works without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"measured": "#1f77b4", "predicted": "#ff7f0e"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", help="JSON written by eplab validate --json")
    ap.add_argument("-o", "--output", required=True, help="PNG (or PDF/SVG) to write")
    args = ap.parse_args(argv)
    with open(args.file) as f:
        v = json.load(f)
    rows = v["phases"]
    fig, (ax_bar, ax_calls) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})

    names = [r["phase"] for r in rows]
    x = np.arange(len(rows))
    for i, kind in enumerate(("measured", "predicted")):
        vals = [r[kind + "_s"] * 1e6 for r in rows]
        ax_bar.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=kind, color=COLORS[kind])
    for xi, r in zip(x, rows):
        top = max(r["measured_s"], r["predicted_s"]) * 1e6
        ax_bar.annotate(f"{100 * r['error']:+.0f}%", (xi, top), ha="center", va="bottom", fontsize=8)
    ax_bar.set_xticks(x, names, rotation=15)
    ax_bar.set_ylabel("µs per call (mean after warm-up)")
    ax_bar.set_title(f"measured on {v['measured_backend']} vs predicted on sim")
    ax_bar.legend(fontsize=8)

    calls = v.get("calls", {})
    for ph, style in (("dispatch", "-"), ("combine", "--")):
        if ph not in calls:
            continue
        for kind in ("measured", "predicted"):
            t = np.asarray(calls[ph][kind + "_s"]) * 1e6
            ax_calls.plot(np.arange(len(t)), t, style, marker="o", ms=3, color=COLORS[kind], label=f"{ph} {kind}")
    skip = v.get("skip_calls", 0)
    if skip > 0:
        ax_calls.axvspan(-0.5, skip - 0.5, color="#dddddd", zorder=0, label="warm-up (left out)")
    ax_calls.set_xlabel("call (step x layers + layer)")
    ax_calls.set_ylabel("µs (slowest rank)")
    ax_calls.set_yscale("log")
    ax_calls.set_title("per call")
    ax_calls.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
