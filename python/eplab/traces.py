"""Routing decisions: generators and trace files.

``source(spec, ...)`` gives random access to a generator (``uniform``, ``deepep``, ``zipf:S``, ``hotset:...``,
``correlated:...``) or a trace (``trace:PATH``); ``write`` saves a generator's routing as a trace file;
``read``/``header``/``summary`` read one back; ``expert_load`` tallies selections per expert.
"""

import numpy as np

from . import _eplab
from .result import spec_ref

__all__ = ["source", "specs", "write", "read", "header", "summary", "expert_load"]


def source(routing="uniform", model="deepseek-v3", cluster="h800-cx7", nodes=0, gpus_per_node=0, tokens=4096, seed=1):
    """A routing source; ``.batch(step, layer, rank)`` returns a dict with [tokens, topk] arrays. ``model`` and
    ``cluster`` are preset names, .json paths or dicts (docs/specs.md)."""
    return _eplab.routing_source(routing, spec_ref(model), spec_ref(cluster), nodes, gpus_per_node, tokens, seed)


def specs():
    return list(_eplab.routing_specs())


def write(path, routing="uniform", model="deepseek-v3", cluster="h800-cx7", nodes=0, gpus_per_node=0, tokens=4096,
          seed=1, steps=1, layers=1):
    """Writes steps x layers x ranks batches of a generator to ``path``; returns the header dict."""
    return _eplab.write_trace(str(path), routing, spec_ref(model), spec_ref(cluster), nodes, gpus_per_node, tokens,
                              seed, steps, layers)


def read(path):
    """Every batch of a (small) trace file, in file order."""
    return _eplab.read_trace(str(path))


def header(path):
    return _eplab.trace_header(str(path))


def summary(path):
    return _eplab.trace_summary(str(path))


def expert_load(batches, num_experts):
    """Selections per expert over an iterable of batch dicts."""
    load = np.zeros(num_experts, dtype=np.int64)
    for b in batches:
        ids = np.asarray(b["topk_idx"]).ravel()
        load += np.bincount(ids[ids >= 0], minlength=num_experts)[:num_experts]
    return load
