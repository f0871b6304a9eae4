"""eplab.run() and the Result it returns: the report as a dict, and pandas views of it."""

import copy
import json

from . import _eplab
from ._eplab import Codec

_POLICY_OPTIONS = ("dispatch_codec", "combine_codec")


def run_options():
    """Keyword arguments run() accepts (the command line's options with '_' for '-')."""
    return list(_eplab.run_options())


def run_config(**options):
    """The resolved configuration run(**options) would run, defaults included (what `eplab run --dump-config`
    prints); cluster and model may be dicts, as for run()."""
    return json.loads(_eplab.run_config_json(_spec_dicts_as_json(options)))


def spec_ref(value):
    """A cluster or model as the engine's resolver takes it: a dict (a spec file's contents) as JSON text, a preset
    name or .json path as is."""
    return json.dumps(value) if isinstance(value, dict) else value


def _spec_dicts_as_json(options):
    opts = dict(options)
    # fault= reads as naturally as faults= for one fault: the same option (a spec or a list of specs).
    if "fault" in opts:
        if "faults" in opts:
            raise TypeError("give fault= or faults=, not both")
        opts["faults"] = opts.pop("fault")
    for key in ("cluster", "model"):
        if key in opts:
            opts[key] = spec_ref(opts[key])
    return opts


def _policy_name(value):
    """A spec string for the engine: built-in codecs by their spec, Python codecs registered under their name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Codec):
        if type(value).__module__ == "eplab._eplab":  # a built-in created by spec
            return value.name
        return _eplab.register_codec(value)
    raise TypeError(f"expected a spec string or an eplab.Codec, got {type(value).__name__}")


# Python balancers and heat predictors are registered under a name for one run; these names are the built-ins'.
_BUILTIN_POLICY_NAMES = {
    "balancer": {"none", "eplb", "migration-aware"},
    "heat": {"last", "ema", "window", "trend", "oracle"},
}


def _fresh_copy(obj, base):
    """A new instance of obj's class holding a deep copy of its attributes (its __init__ is not called again).

    The engine keeps one heat predictor per layer, so each layer gets its own copy of the one passed to run()."""
    cls = type(obj)
    new = cls.__new__(cls)
    base.__init__(new)
    new.__dict__.update(copy.deepcopy(obj.__dict__))
    return new


def _register_run_policy(key, value, registered):
    """The spec the engine gets for balancer= / heat=: a string as is, a built-in object by its spec, and a Python
    subclass registered under its name (made unique in this process) for the duration of the run."""
    if value is None or isinstance(value, str):
        return value
    base = {"balancer": getattr(_eplab, "Balancer", None), "heat": getattr(_eplab, "HeatPredictor", None)}[key]
    if base is None or not isinstance(value, base):
        want = "eplab.Balancer" if key == "balancer" else "eplab.HeatPredictor"
        raise TypeError(f"{key}=: expected a spec string or an {want}, got {type(value).__name__}")
    if type(value).__module__ == "eplab._eplab":  # a built-in created by spec
        return value.name
    if key == "balancer":
        taken, reg, unreg = _eplab.registered_balancers(), _eplab.register_balancer, _eplab.unregister_balancer
        make = lambda: value  # one instance for every layer: a balancer is asked, it does not learn
    else:
        taken = _eplab.registered_heat_predictors()
        reg, unreg = _eplab.register_heat_predictor, _eplab.unregister_heat_predictor
        make = lambda: _fresh_copy(value, base)
    stem = str(value.name).replace(":", "-") or type(value).__name__
    if stem in _BUILTIN_POLICY_NAMES[key]:
        stem = "py-" + stem
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}#{n}"
    reg(name, make)
    registered.append((unreg, name))
    return name


def run(progress=None, **options):
    """Runs one experiment and returns a :class:`Result`.

    Options are the engine's run option table (``run_options()``, ``eplab.run_option_table()`` with types, defaults
    and help; docs/config.md), the same as `eplab run`'s with the same defaults, backend-dependent ones included
    (on emu: nodes 2, tokens 256): backend ("sim" where built, else "emu"), cluster and model (a preset name, a .json
    file, or a dict as eplab.cluster() / eplab.model() return; docs/specs.md), nodes, gpus_per_node, tokens (per rank), hidden, routing, trace, algorithm, dispatch_codec, combine_codec
    (a spec or an eplab.Codec instance, Python subclasses included), transform, payload, steps, layers, seed,
    redundant_experts, timeout_s, verify, layout_cache, mode, overlap ("none" or "tbo": two-batch overlap, sim
    only; Result.overlap, exposed_comm_s, hidden_comm_s), balancer and heat (a spec or an eplab.Balancer / eplab.HeatPredictor
    instance, Python subclasses included; a predictor is copied once per layer, a balancer is shared by all
    layers), rebalance_every, faults (or fault=: one ``--fault`` spec or a list, docs/faults.md) and
    detect_timeout_s. ``routing`` may also be an eplab.RoutingSource or arrays captured from a model
    (``topk_idx`` as eplab.traces.from_arrays takes it, NumPy or torch, with ``weights=`` its top-k weights).
    checkpoint, checkpoint_every, stop_after_steps and resume write and continue from checkpoints (docs/checkpoints.md;
    a run ended by stop_after_steps returns a Result whose report is ``{"stopped": True, "steps_done": ...}``).
    ``progress(done, total)`` is called after each (step, layer).
    The GIL is released while the engine runs; an exception raised in Python code the engine calls is re-raised
    here as itself, traceback included.
    """
    opts = _spec_dicts_as_json(options)
    # Routing given as a source (eplab.traces.source / from_arrays) or as arrays: handed to the engine directly.
    source = None
    routing = opts.get("routing")
    if routing is not None and not isinstance(routing, str):
        from .traces import from_arrays

        if isinstance(routing, _eplab.RoutingSource):
            # A Python subclass defines batch() itself: the engine calls it through a wrapper.
            source = routing if type(routing) is _eplab.RoutingSource else _eplab.python_routing(routing)
        else:
            source = from_arrays(routing, opts.get("weights"))
        opts.pop("routing")
        opts.pop("weights", None)
    elif "weights" in opts:
        raise TypeError("weights= goes with routing given as arrays (routing=topk_idx)")
    for key in _POLICY_OPTIONS:
        if key in opts:
            opts[key] = _policy_name(opts[key])
    registered = []
    try:
        for key in ("balancer", "heat"):
            if key in opts:
                opts[key] = _register_run_policy(key, opts[key], registered)
        text = _eplab.run_json(opts, progress, source)
    finally:
        for unregister, name in registered:
            unregister(name)
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


_PHASE_ORDER = ("notify", "dispatch", "expert", "combine")


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
        phases = self.report.get("phases", {})
        # In the order a layer call runs them (the JSON report's keys are sorted by name); others after.
        order = [p for p in _PHASE_ORDER if p in phases] + sorted(p for p in phases if p not in _PHASE_ORDER)
        for name in order:
            rows[name] = {k.replace(".", "_"): v for k, v in flatten(phases[name]).items()}
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
    def comm_time_s(self):
        """Communication time of one MoE layer call: notify + dispatch + combine, as the report measured them
        (not the report's per_step[].layer_time_s, which also counts expert compute)."""
        ph = self.report.get("phases", {})
        return float(sum(p.get("time_s", 0.0) for k, p in ph.items() if k in ("notify", "dispatch", "combine")))

    @property
    def overlap(self):
        """Two-batch overlap (``overlap="tbo"``): the report's ``overlap`` dict (composed and serial step time,
        exposed and hidden communication, per phase and per step); None for a run without it."""
        return self.report.get("overlap")

    @property
    def exposed_comm_s(self):
        """Communication per step that no compute hides: with two-batch overlap the critical rank's exposed
        communication; without it every exchange is exposed, and this is step_time_s - compute_s. The report's
        comm_fraction is this over step_time_s."""
        o = self.report.get("overlap")
        if o is not None:
            return float(o["exposed_comm_s"])
        return float(self.report.get("step_time_s", 0.0) - self.report.get("compute_s", 0.0))

    @property
    def hidden_comm_s(self):
        """Communication per step that runs under the other micro-batch's compute (0 without two-batch overlap)."""
        o = self.report.get("overlap")
        return float(o["hidden_comm_s"]) if o is not None else 0.0

    @property
    def layer_time_s(self):
        """Former name of comm_time_s (it never included expert compute); kept for old notebooks."""
        import warnings

        warnings.warn("Result.layer_time_s is comm_time_s (notify + dispatch + combine); the report's "
                      "per_step[].layer_time_s also counts expert compute", DeprecationWarning, stacklevel=2)
        return self.comm_time_s

    def row(self):
        """The report flattened to one dict (dotted keys) plus comm_time_s: one row of a sweep's DataFrame."""
        r = flatten(self.report)
        r["comm_time_s"] = self.comm_time_s
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
                f"comm_time={self.comm_time_s * 1e6:.1f}us verified={r.get('verified')}>")
