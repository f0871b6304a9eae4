"""Plots for results and sweeps (matplotlib; the Agg backend works headless, as the notebook tests run)."""

__all__ = ["phase_bars", "lines", "codec_tradeoff", "save"]


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    return ax


def phase_bars(result, ax=None, unit="us"):
    """Time per phase of one run (a Result or its .phases DataFrame)."""
    df = result.phases if hasattr(result, "phases") else result
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    ax = _axes(ax)
    ax.bar(df.index, df["time_s"] * scale, color="#4C72B0")
    ax.set_ylabel(f"time ({unit})")
    ax.set_title("time per phase")
    return ax


def lines(df, x, y, hue=None, ax=None, logx=False, marker="o"):
    """y against x from a sweep DataFrame, one line per value of `hue`."""
    ax = _axes(ax)
    groups = [(None, df)] if hue is None else df.groupby(hue, sort=True)
    for key, g in groups:
        g = g.sort_values(x)
        ax.plot(g[x], g[y], marker=marker, label=None if key is None else f"{hue}={key}")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if logx:
        ax.set_xscale("log")
    if hue is not None:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def codec_tradeoff(df, ax=None, highlight=None):
    """Error (rel. L2) against bits per element, one point per codec (rows of eplab.codecs.evaluate)."""
    ax = _axes(ax)
    for _, r in df.iterrows():
        hot = highlight is not None and r["codec"] == highlight
        ax.scatter(r["bits_per_element"], max(r["rel_l2_error"], 1e-9), color="#C44E52" if hot else "#4C72B0",
                   s=60 if hot else 25, zorder=3 if hot else 2)
        ax.annotate(r["codec"], (r["bits_per_element"], max(r["rel_l2_error"], 1e-9)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("bits per element")
    ax.set_ylabel("relative L2 error")
    ax.grid(alpha=0.3)
    return ax


def save(fig_or_ax, path, dpi=110):
    """Saves a figure (or an axes' figure) as PNG and returns the path."""
    fig = fig_or_ax.figure if hasattr(fig_or_ax, "figure") and not hasattr(fig_or_ax, "savefig") else fig_or_ax
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return str(path)
