# Routing captured from a model, given as arrays (NumPy, or torch tensors when torch is importable): the run
# sees exactly those selections, on any backend, with no trace file in between.
import numpy as np
import pytest

import eplab
from conftest import SMALL

BASE = {k: v for k, v in SMALL.items() if k != "routing"}  # 2 x 2 emulated ranks
RANKS, TOKENS = 4, 64
GEN = dict(model="deepseek-v3", nodes=2, gpus_per_node=2, tokens=TOKENS, seed=3)


def generated(steps=1, layers=1):
    """The uniform generator's batches as [steps, layers, ranks, tokens, topk] arrays."""
    src = eplab.traces.source("uniform", **GEN)
    idx = np.stack([np.stack([np.stack([src.batch(s, l, r)["topk_idx"] for r in range(RANKS)])
                              for l in range(layers)]) for s in range(steps)])
    w = np.stack([np.stack([np.stack([src.batch(s, l, r)["topk_weights"] for r in range(RANKS)])
                            for l in range(layers)]) for s in range(steps)])
    return src, idx, w


def dispatch_bytes(result):
    return result.report["phases"]["dispatch"]["bytes"]["total"]


def test_arrays_route_exactly_as_the_source_they_came_from():
    src, idx, w = generated(steps=2, layers=2)
    opts = dict(BASE, steps=2, layers=2)
    from_source = eplab.run(**opts, routing=src)
    from_arrays = eplab.run(**opts, routing=idx, weights=w)
    by_spec = eplab.run(**dict(opts, routing="uniform", seed=3))
    assert from_source.verified and from_arrays.verified
    assert dispatch_bytes(from_arrays) == dispatch_bytes(from_source) == dispatch_bytes(by_spec)
    assert from_arrays.report["routing"] == "arrays"


def test_one_call_as_ranks_tokens_topk_and_as_a_list_per_rank():
    _, idx, w = generated()
    three_d = eplab.run(**BASE, routing=idx[0, 0], weights=w[0, 0])
    per_rank = eplab.run(**BASE, routing=list(idx[0, 0]), weights=list(w[0, 0]))
    assert three_d.verified and per_rank.verified
    assert dispatch_bytes(three_d) == dispatch_bytes(per_rank)


def test_ranks_may_hold_different_token_counts_and_unused_slots():
    _, idx, _ = generated()
    ragged = [idx[0, 0, r, : 16 * (r + 1)].copy() for r in range(RANKS)]
    ragged[0][:, -1] = -1  # DeepEP's -1: no expert in that slot
    r = eplab.run(**BASE, routing=ragged)  # weights default to 1/topk per used slot
    assert r.verified
    assert r.report["tokens_per_rank"] == pytest.approx((16 + 32 + 48 + 64) / 4)


def test_torch_tensors_are_taken_as_they_are():
    torch = pytest.importorskip("torch")
    _, idx, w = generated()
    a = eplab.run(**BASE, routing=torch.from_numpy(idx[0, 0]).long(), weights=torch.from_numpy(w[0, 0]))
    b = eplab.run(**BASE, routing=idx[0, 0], weights=w[0, 0])
    assert dispatch_bytes(a) == dispatch_bytes(b)


def test_bad_arrays_are_refused_naming_the_problem():
    _, idx, w = generated()
    with pytest.raises(eplab.Error, match="holds batches for 3 ranks, the run has 4"):
        eplab.run(**BASE, routing=idx[0, 0, :3])
    bad = idx[0, 0].copy()
    bad[1, 5, 2] = 999
    with pytest.raises(eplab.Error, match="999"):
        eplab.run(**BASE, routing=bad)
    with pytest.raises(eplab.Error, match="holds 1 steps"):
        eplab.run(**dict(BASE, steps=2), routing=idx[0, 0])
    with pytest.raises(ValueError, match="topk_weights has shape"):
        eplab.run(**BASE, routing=idx[0, 0], weights=w[0, 0, :, :10])
    with pytest.raises(TypeError, match="weights= goes with routing given as arrays"):
        eplab.run(**BASE, weights=w[0, 0])


class FromModel(eplab.RoutingSource):
    """A routing source written in Python: here it hands out saved arrays, as a model hook would."""

    name = "from-model"
    num_steps, num_layers, num_ranks = 1, 1, RANKS

    def __init__(self, idx, w):
        super().__init__()
        self.idx, self.w, self.calls = idx, w, 0

    def batch(self, step, layer, rank):
        self.calls += 1
        return {"topk_idx": self.idx[rank], "topk_weights": self.w[rank]}


def test_a_python_routing_source_is_called_for_every_rank():
    _, idx, w = generated()
    src = FromModel(idx[0, 0], w[0, 0])
    r = eplab.run(**BASE, routing=src)
    assert r.verified and r.report["routing"] == "from-model"
    assert src.calls >= RANKS
    assert dispatch_bytes(r) == dispatch_bytes(eplab.run(**BASE, routing=idx[0, 0], weights=w[0, 0]))


def test_a_python_routing_source_error_comes_back_as_itself():
    class Broken(FromModel):
        def batch(self, step, layer, rank):
            raise KeyError(f"no routing for rank {rank}")

    _, idx, w = generated()
    with pytest.raises(KeyError, match="no routing for rank"):
        eplab.run(**BASE, routing=Broken(idx[0, 0], w[0, 0]))
