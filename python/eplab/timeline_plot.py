"""Draws an eplab timeline (Chrome trace-event JSON from `eplab run --timeline FILE`): a Gantt chart of ranks x
phases above a heat map of link load (utilization = GB/s over the link's modeled capacity) over the same time axis.

Standalone on purpose (only json, numpy, matplotlib), so `eplab timeline plot` can run it with Debian's python3
without the eplab extension module:  /usr/bin/python3 python/eplab/timeline_plot.py FILE -o out.png
"""

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only: works without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

# Same hue for a phase and its backward twin (the backward one hatched), so the eye pairs them.
PHASE_COLORS = {
    "notify": "#9e9e9e",
    "dispatch": "#1f77b4",
    "expert": "#2ca02c",
    "combine": "#ff7f0e",
    "dense": "#8c564b",
    "allreduce": "#d62728",
    "migration": "#9467bd",
}
CLASS_ORDER = ("scaleup", "nvlink", "pcie", "nic", "spine")


def phase_style(name):
    base = name[4:] if name.startswith("bwd-") else name
    return PHASE_COLORS.get(base, "#17becf"), ("//" if name.startswith("bwd-") else None)


def load(path):
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    meta = doc.get("otherData", {}) if isinstance(doc, dict) else {}
    return events, meta


def track_order(name, index):
    for k, cls in enumerate(CLASS_ORDER):
        if cls in name:
            return (k, index)
    return (len(CLASS_ORDER), index)


def link_matrix(counters, tracks, t0, t1, bins):
    """Utilization per (track, time bin): the step function of each counter averaged over each bin."""
    edges = np.linspace(t0, t1, bins + 1)
    mat = np.zeros((len(tracks), bins))
    cap = {t["name"]: t.get("GBps", 0) for t in tracks}
    for row, tr in enumerate(tracks):
        pts = counters.get(tr["name"], [])
        if not pts or cap[tr["name"]] <= 0:
            continue
        pts.sort()
        ts = np.array([p[0] for p in pts] + [max(t1, pts[-1][0])])
        vs = np.array([p[1] for p in pts])
        # Integral of the step function at every bin edge, by interpolating its cumulative integral.
        cum = np.concatenate([[0.0], np.cumsum(vs * np.diff(ts))])
        at = np.interp(edges, ts, cum, left=0.0, right=cum[-1])
        mat[row] = np.diff(at) / np.diff(edges) / cap[tr["name"]]
    return mat


def plot(path, out, t_from=None, t_to=None, bins=400):
    events, meta = load(path)
    spans = [e for e in events if e.get("ph") == "X"]
    link_pid = meta.get("link_pid")
    counters = {}
    for e in events:
        if e.get("ph") == "C" and (link_pid is None or e.get("pid") == link_pid):
            counters.setdefault(e["name"], []).append((e["ts"], next(iter(e.get("args", {}).values()), 0.0)))
    if not spans and not counters:
        sys.exit(f"{path}: no phase spans and no link counters to draw")
    gpn = meta.get("gpus_per_node", 1)
    times = [s["ts"] for s in spans] + [s["ts"] + s["dur"] for s in spans] + [t for v in counters.values() for t, _ in v]
    t0 = min(times) if t_from is None else t_from
    t1 = max(times) if t_to is None else t_to
    if t1 <= t0:
        t1 = t0 + 1
    scale, unit = (1e3, "ms") if t1 - t0 > 5e3 else (1.0, "us")

    tracks = meta.get("link_capacity") or [{"name": n, "GBps": 0} for n in counters]
    tracks = [t for t in tracks if t["name"] in counters]
    tracks = [t for _, t in sorted((track_order(t["name"], i), t) for i, t in enumerate(tracks))]
    # A row per rank, or per (rank, lane) where spans have lanes (two-batch overlap: one per micro-batch).
    def row_key(s):
        args = s.get("args", {})
        lane = args.get("lane", 0)
        return (args.get("rank", s["pid"] * gpn + s["tid"]), lane)

    ranks = sorted({row_key(s) for s in spans})
    lanes = len({lane for _, lane in ranks}) > 1
    heights = [max(2.0, 0.12 * len(ranks)), max(2.0, 0.05 * len(tracks))] if tracks else [max(2.0, 0.12 * len(ranks))]
    # Constrained layout gives both panels the same width (the colorbar spans them), so time lines up.
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, sum(heights) + 1.6), sharex=True, layout="constrained",
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = axes[:, 0]

    ax = axes[0]
    row_of = {k: i for i, k in enumerate(ranks)}
    # The all-reduce first: when it is overlapped, the compute it hides under is drawn on top of it.
    seen = {}
    for s in sorted(spans, key=lambda s: (s["name"] != "allreduce", s["ts"])):
        r = row_of[row_key(s)]
        color, hatch = phase_style(s["name"])
        ax.broken_barh([((s["ts"] - t0) / scale, s["dur"] / scale)], (r - 0.4, 0.8), facecolors=color, hatch=hatch,
                       edgecolor="white" if hatch else color, linewidth=0.0 if not hatch else 0.3)
        seen[s["name"]] = (color, hatch)
    ax.set_ylim(-0.7, len(ranks) - 0.3)
    ax.invert_yaxis()
    step = max(1, len(ranks) // (32 if lanes else 16))
    ax.set_yticks(range(0, len(ranks), step))
    def label(key):
        rank, lane = key
        if not lanes:
            return f"gpu {rank}"
        return f"gpu {rank} " + (f"mb{lane}" if lane < 2 else "both")

    ax.set_yticklabels([label(ranks[i]) for i in range(0, len(ranks), step)], fontsize=7)
    ax.set_ylabel("rank, micro-batch" if lanes else "rank")
    sampled = meta.get("ranks_recorded", "all")
    tbo = ", two-batch overlap" if meta.get("overlap") == "tbo" else ""
    fig.suptitle(f"{meta.get('mode', 'run')}{tbo} on {meta.get('backend', '?')}: {meta.get('ranks', len(ranks))} ranks "
                 f"(ranks shown: {sampled})", fontsize=10)
    ax.legend(handles=[Patch(facecolor=c, hatch=h, edgecolor="white" if h else c, label=n) for n, (c, h) in seen.items()],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(seen), 8), fontsize=7, frameon=False)

    if tracks:
        ax = axes[1]
        mat = link_matrix(counters, tracks, t0, t1, bins)
        im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="magma", vmin=0, vmax=max(1.0, mat.max()),
                       extent=[0, (t1 - t0) / scale, len(tracks) - 0.5, -0.5])
        step = max(1, len(tracks) // 24)
        ax.set_yticks(range(0, len(tracks), step))
        ax.set_yticklabels([tracks[i]["name"] for i in range(0, len(tracks), step)], fontsize=6)
        ax.set_ylabel("link")
        total = len(meta.get("link_capacity") or tracks)
        ax.set_title(f"link load / capacity ({meta.get('link_tracks', 'per link')}; the {len(tracks)} of {total} "
                     f"tracks that carried bytes)", fontsize=9)
        cb = fig.colorbar(im, ax=list(axes), pad=0.01, fraction=0.03, shrink=0.5, anchor=(0.0, 0.0))
        cb.set_label("load / capacity", fontsize=8)
    axes[-1].set_xlabel(f"time ({unit}, {'simulated' if meta.get('backend') == 'sim' else 'wall'})")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", help="timeline JSON written by eplab run --timeline")
    p.add_argument("-o", "--output", required=True, help="image to write (png, pdf, svg)")
    p.add_argument("--from-us", type=float, default=None, help="start of the drawn window (us)")
    p.add_argument("--to-us", type=float, default=None, help="end of the drawn window (us)")
    p.add_argument("--bins", type=int, default=400, help="time bins of the link heat map")
    a = p.parse_args(argv)
    plot(a.file, a.output, a.from_us, a.to_us, a.bins)


if __name__ == "__main__":
    main()
