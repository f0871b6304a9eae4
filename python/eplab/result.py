"""eplab.run() and the Result it returns: the report as a dict, and pandas views of it."""

import json

from . import _eplab
from ._eplab import Codec

_POLICY_OPTIONS = ("dispatch_codec", "combine_codec")


def run_options():
    """Keyword arguments run() accepts (the command line's options with '_' for '-')."""
    return list(_eplab.run_options())


def _policy_name(value):
    """A spec string for the engine: built-in codecs by their spec, Python codecs registered under their name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Codec):
        if type(value).__module__ == "eplab._eplab":  # a built-in created by spec
            return value.name
        return _eplab.register_codec(value)
    raise TypeError(f"expected a spec string or an eplab.Codec, got {type(value).__name__}")


def run(progress=None, **options):
    """Runs one experiment and returns a :class:`Result`.

    Options map onto the engine's RunConfig (see ``run_options()``): backend ("sim", "emu"), cluster, nodes,
    gpus_per_node, model, tokens (per rank), hidden, routing, trace, algorithm, dispatch_codec, combine_codec
    (a spec or an eplab.Codec instance, Python subclasses included), transform, payload, steps, layers, seed,
    redundant_experts, timeout_s, verify. ``progress(done, total)`` is called after each (step, layer).
    The GIL is released while the engine runs.
    """
    opts = dict(options)
    for key in _POLICY_OPTIONS:
        if key in opts:
            opts[key] = _policy_name(opts[key])
    text = _eplab.run_json(opts, progress)
    return Result(json.loads(text), options)


def flatten(d, prefix=""):
    """Nested dict -> {"phases.dispatch.time_s": ..., ...} with scalar leaves only (lists are skipped)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif not isinstance(v, (list, tuple)):
            out[key] = v
    return out


class Result:
    """One run: ``report`` (the JSON report as a dict, keys as documented in README) and DataFrame views."""

    def __init__(self, report, options=None):
        self.report = report
        self.options = dict(options or {})

    def __getitem__(self, key):
        return self.report[key]

    @property
    def verified(self):
        return bool(self.report.get("verified", False))

    @property
    def phases(self):
        """One row per phase (notify, dispatch, combine, ...): time_s, bandwidths, messages, bytes_<link>."""
        import pandas as pd

        rows = {}
        for name, ph in self.report.get("phases", {}).items():
            rows[name] = {k.replace(".", "_"): v for k, v in flatten(ph).items()}
        df = pd.DataFrame.from_dict(rows, orient="index")
        df.index.name = "phase"
        return df

    @property
    def imbalance(self):
        import pandas as pd

        return pd.Series(flatten(self.report.get("imbalance", {})), name="imbalance", dtype=float)

    @property
    def verification(self):
        import pandas as pd

        return pd.Series(flatten(self.report.get("verification", {})), name="verification", dtype=object)

    @property
    def layer_time_s(self):
        """Communication time of one MoE layer call: notify + dispatch + combine, as the report measured them."""
        ph = self.report.get("phases", {})
        return float(sum(p.get("time_s", 0.0) for k, p in ph.items() if k in ("notify", "dispatch", "combine")))

    def row(self):
        """The report flattened to one dict (dotted keys) plus layer_time_s: one row of a sweep's DataFrame."""
        r = flatten(self.report)
        r["layer_time_s"] = self.layer_time_s
        return r

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([self.row()])

    def summary(self):
        """The few lines `eplab run` prints."""
        return _eplab.format_summary(json.dumps(self.report))

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.report, f, indent=2, sort_keys=True)

    def __repr__(self):
        r = self.report
        return (f"<eplab.Result {r.get('backend')} {r.get('ranks')} ranks {r.get('algorithm')} "
                f"layer_time={self.layer_time_s * 1e6:.1f}us verified={r.get('verified')}>")
