"""Routing decisions: generators and trace files.

``source(spec, ...)`` gives random access to a generator (``uniform``, ``deepep``, ``zipf:S``, ``hotset:...``,
``correlated:...``) or a trace (``trace:PATH``); ``write`` saves a generator's routing as a trace file;
``read``/``header``/``summary`` read one back; ``expert_load`` tallies selections per expert.
"""

import numpy as np

from . import _eplab
from .result import spec_ref

__all__ = ["source", "from_arrays", "specs", "write", "read", "header", "summary", "expert_load"]


def source(routing="uniform", model="deepseek-v3", cluster="h800-cx7", nodes=0, gpus_per_node=0, tokens=4096, seed=1):
    """A routing source; ``.batch(step, layer, rank)`` returns a dict with [tokens, topk] arrays. ``model`` and
    ``cluster`` are preset names, .json paths or dicts (docs/specs.md)."""
    return _eplab.routing_source(routing, spec_ref(model), spec_ref(cluster), nodes, gpus_per_node, tokens, seed)


def _as_array(x, dtype):
    if hasattr(x, "detach"):  # a torch tensor (CPU or not)
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


_INT32 = np.iinfo(np.int32)


def _as_ids(x):
    """Expert ids as int32, refusing what a cast would change: fractions (1.9 is not expert 1), booleans, and
    integers outside int32 (2**32 + 3 is not expert 3). An empty list may have any numeric dtype."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"topk_idx must hold integer expert ids, got dtype {a.dtype}")
    if a.size and (a.min() < -1 or a.max() > _INT32.max):
        raise ValueError(f"topk_idx holds {a.min() if a.min() < -1 else a.max()}: expert ids are -1 (no expert) or "
                         f"0..{_INT32.max}")
    return np.ascontiguousarray(a, dtype=np.int32)


def from_arrays(topk_idx, topk_weights=None):
    """Routing captured from a model, as ``eplab.run(routing=...)`` takes it: NumPy arrays or torch tensors.

    ``topk_idx``: ``[ranks, tokens, topk]`` (one step, one layer), ``[steps, layers, ranks, tokens, topk]``, or a
    list with one ``[tokens, topk]`` array per rank (token counts may differ); ``-1`` marks an unused slot, as in
    DeepEP. ``topk_weights``: the same shapes (default: each used slot 1/topk). The run's steps and layers must
    fit in what the arrays hold, and its rank count must equal theirs.
    """
    if isinstance(topk_idx, (list, tuple)):
        idx = [_as_ids(a) for a in topk_idx]
        if topk_weights is None:
            w = [np.where(a >= 0, 1.0 / max(a.shape[-1], 1), 0.0).astype(np.float32) for a in idx]
        else:
            if not isinstance(topk_weights, (list, tuple)) or len(topk_weights) != len(idx):
                raise ValueError("topk_weights must be a list with one array per rank, like topk_idx")
            w = [_as_array(a, np.float32) for a in topk_weights]
        for a in idx:
            if a.ndim != 2:
                raise ValueError(f"each rank's topk_idx must be [tokens, topk], got shape {a.shape}")
        return _eplab.array_routing(idx, w, 1, 1, len(idx))
    idx = _as_ids(topk_idx)
    if idx.ndim == 3:
        idx = idx[None, None]
    if idx.ndim != 5:
        raise ValueError("topk_idx must be [ranks, tokens, topk], [steps, layers, ranks, tokens, topk] or a list "
                         f"of [tokens, topk] arrays, got shape {idx.shape}")
    if topk_weights is None:
        w = np.where(idx >= 0, 1.0 / max(idx.shape[-1], 1), 0.0).astype(np.float32)
    else:
        w = _as_array(topk_weights, np.float32)
        if w.ndim == 3:
            w = w[None, None]
        if w.shape != idx.shape:
            raise ValueError(f"topk_weights has shape {w.shape}, topk_idx {idx.shape}")
    steps, layers, ranks = idx.shape[:3]
    # Not reshape(-1, ...): with zero tokens the -1 is ambiguous and NumPy refuses it.
    flat_i = idx.reshape(steps * layers * ranks, *idx.shape[3:])
    flat_w = w.reshape(steps * layers * ranks, *w.shape[3:])
    return _eplab.array_routing(list(flat_i), list(flat_w), steps, layers, ranks)


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
