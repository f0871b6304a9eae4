# eplab.sweep(): a grid in worker processes and on a local Dask cluster, one DataFrame row per configuration.
import numpy as np
import pytest

import eplab
from conftest import SMALL

GRID = eplab.grid(routing=["uniform", "zipf:1.5"], dispatch_codec=["fp8-e4m3-b128", "bf16"])


def test_grid_is_the_cartesian_product():
    assert len(GRID) == 4
    assert GRID[0] == {"routing": "uniform", "dispatch_codec": "fp8-e4m3-b128"}
    assert eplab.grid(a=1, b=[2, 3]) == [{"a": 1, "b": 2}, {"a": 1, "b": 3}]


def test_sweep_in_processes():
    df = eplab.sweep(GRID, base=SMALL, processes=2, progress=True)
    assert len(df) == 4
    assert list(df["routing"]) == [g["routing"] for g in GRID]  # grid order, whatever finished first
    assert df["verified"].all()
    assert (df["codec.dispatch"] == df["dispatch_codec"]).all()
    # bf16 moves more dispatch bytes than fp8 for the same routing.
    by = df.set_index(["routing", "dispatch_codec"])["phases.dispatch.bytes.total"]
    assert by[("uniform", "bf16")] > by[("uniform", "fp8-e4m3-b128")]
    # Determinism across processes: the same configuration in-process gives the same bytes.
    r = eplab.run(**{**SMALL, **GRID[0]})
    assert df.loc[0, "phases.dispatch.bytes.total"] == r.report["phases"]["dispatch"]["bytes"]["total"]


def test_sweep_records_errors():
    df = eplab.sweep([{"routing": "uniform"}, {"routing": "no-such-routing"}], base=SMALL, processes=2,
                     progress=False, errors="record")
    assert df.loc[0, "error"] is None and df.loc[0, "verified"]
    assert "no-such-routing" in df.loc[1, "error"]


def test_sweep_raises_first_error_by_default():
    with pytest.raises(eplab.Error, match="no-such-routing"):
        eplab.sweep([{"routing": "no-such-routing"}], base=SMALL, processes=1, progress=False)


def test_sweep_on_local_dask_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        df = eplab.sweep(GRID[:2], base=SMALL, client=client, progress=False)
        workers = set(client.run(lambda: __import__("os").getpid()).values())
    assert len(df) == 2 and df["verified"].all()
    assert list(df["routing"]) == ["uniform", "uniform"]
    assert len(workers) == 2
    local = eplab.run(**{**SMALL, **GRID[1]})
    assert df.loc[1, "phases.dispatch.bytes.total"] == local.report["phases"]["dispatch"]["bytes"]["total"]


def test_sweep_on_dask_scheduler_and_worker_processes():
    """A real multi-process Dask cluster: a `dask scheduler` and two `dask worker` processes on loopback, as a
    user spans machines; every configuration runs in a worker process, none in this one."""
    pytest.importorskip("distributed")
    import os

    with eplab.dask_processes(2) as client:
        workers = client.run(os.getpid)
        df = eplab.sweep(GRID, base=SMALL, client=client, progress=False)
        ran_in = set(client.gather(client.map(lambda _: os.getpid(), range(8), pure=False)))
    assert len(workers) == 2 and os.getpid() not in workers.values()
    assert ran_in <= set(workers.values())
    assert len(df) == 4 and df["verified"].all()
    assert list(df["routing"]) == [g["routing"] for g in GRID]
    local = eplab.run(**{**SMALL, **GRID[3]})
    assert df.loc[3, "phases.dispatch.bytes.total"] == local.report["phases"]["dispatch"]["bytes"]["total"]


def test_dask_processes_rejects_no_workers():
    pytest.importorskip("distributed")
    with pytest.raises(ValueError, match="workers"):
        with eplab.dask_processes(0):
            pass


class ScaledHalf(eplab.Codec):
    """fp16 on the wire; its constructor takes an argument, and it is defined here, not in an installed module."""

    name = "py-scaled-half"
    lossless = False
    error_bound = 1e-3

    def __init__(self, label):
        super().__init__()
        self.label = label

    def encode(self, x):
        return np.ascontiguousarray(x, dtype=np.float16).tobytes()

    def decode(self, data, shape):
        return np.frombuffer(data, dtype=np.float16).astype(np.float32).reshape(shape)

    def encoded_size(self, shape):
        return int(shape[0]) * int(shape[1]) * 2


class ReverseBalancer(eplab.Balancer):
    """Experts in reverse id order, redundant slots copying the hottest."""

    name = "py-reverse"

    def place(self, inp):
        order = np.arange(inp.num_experts)[::-1]
        hot = np.argsort(-inp.heat, kind="stable")[: inp.redundant]
        return {"slot_expert": np.concatenate([order, hot]).astype(np.int32)}


# Python policies in a sweep: 3 codecs x 3 balancers, the Python ones given as objects.
POLICY_GRID = eplab.grid(dispatch_codec=[ScaledHalf("a"), "bf16", "fp32"],
                         balancer=[ReverseBalancer(), "eplb", "none"])
POLICY_BASE = dict(SMALL, redundant_experts=4, heat="oracle", rebalance_every=1, steps=2)


def check_policy_sweep(df):
    assert len(df) == 9 and df["verified"].all()
    assert list(df["dispatch_codec"][:3]) == ["py-scaled-half"] * 3
    assert list(df["balancer"][:3]) == ["py-reverse", "eplb", "none"]
    assert (df["codec.dispatch"][:3] == "py-scaled-half").all()


def test_sweep_of_python_policies_in_processes():
    check_policy_sweep(eplab.sweep(POLICY_GRID, base=POLICY_BASE, processes=2, progress=False))


def test_sweep_of_python_policies_on_dask():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        check_policy_sweep(eplab.sweep(POLICY_GRID, base=POLICY_BASE, client=client, progress=False))
