# Python balancers and heat predictors inside eplab.run: the driver plans every (step, layer) placement through
# them, on sim and on emu, and an exception they raise comes back as itself.
import traceback

import numpy as np
import pytest

import eplab
from conftest import HAS_SIM

if not hasattr(eplab, "register_balancer"):
    pytest.skip("this build has no balancers or heat predictors", allow_module_level=True)

# Skewed routing on 8 ranks (sim) or 4 ranks (emu), one redundant slot per rank, a rebalance every step.
SKEW = dict(routing="zipf:1.2", steps=3, layers=2, rebalance_every=1, timeout_s=30)
SIM = dict(backend="sim", nodes=2, gpus_per_node=4, tokens=256, redundant_experts=8, **SKEW)
EMU = dict(backend="emu", nodes=2, gpus_per_node=2, tokens=64, hidden=256, redundant_experts=4,
           dispatch_codec="fp32", combine_codec="fp32", **SKEW)


class HotOnRankZero(eplab.Balancer):
    """Deliberately bad: the hottest experts fill rank 0, then rank 1, ...; redundant slots copy the coldest."""

    name = "py-hot-on-rank0"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def place(self, inp):
        self.calls += 1
        order = np.argsort(-inp.heat, kind="stable")
        slots = np.concatenate([order, order[::-1][: inp.redundant]]).astype(np.int32)
        return {"slot_expert": slots, "decision": "hottest first"}


class Reverse(eplab.Balancer):
    """Experts in reverse id order, the redundant slots replicating the hottest: different from 'none', sane."""

    def place(self, inp):
        hot = np.argsort(-inp.heat, kind="stable")[: inp.redundant]
        return np.concatenate([np.arange(inp.num_experts)[::-1], hot]).astype(np.int32)


class PyLast(eplab.HeatPredictor):
    """The built-in 'last' in Python; records which instance observed what (a class attribute, shared by copies)."""

    name = "py-last"
    seen = []

    def __init__(self):
        super().__init__()
        self.last = None

    def observe(self, load):
        PyLast.seen.append(id(self))
        self.last = np.array(load)

    def predict(self):
        return self.last


def fail_in_place():
    raise ZeroDivisionError("boom from a Python balancer")


class Broken(eplab.Balancer):
    def place(self, inp):
        if inp.current is not None:  # the startup placement succeeds, the first rebalance fails
            fail_in_place()
        return np.concatenate([np.arange(inp.num_experts), np.arange(inp.redundant)]).astype(np.int32)


def imbalance(r):
    return r.report["imbalance"]["rank_max_over_mean"]


def assert_nothing_registered():
    assert eplab.registered_balancers() == [] and eplab.registered_heat_predictors() == []


@pytest.mark.skipif(not HAS_SIM, reason="this build has no SimGrid backend")
def test_python_balancer_drives_a_sim_run():
    bad = HotOnRankZero()
    r_bad = eplab.run(**SIM, balancer=bad, heat="oracle")
    r_eplb = eplab.run(**SIM, balancer="eplb", heat="oracle")
    r_none = eplab.run(**SIM, balancer="none", heat="oracle")
    assert r_bad.report["policies"]["balancer"] == "py-hot-on-rank0"
    # One call per layer at startup, then one per (step, layer) rebalance.
    assert bad.calls == SIM["layers"] * (1 + SIM["steps"])
    assert imbalance(r_bad) > 1.5 * imbalance(r_eplb)
    assert imbalance(r_bad) > imbalance(r_none)
    # Its placement moved experts once the forecast arrived (the startup placement is id order).
    assert r_bad.report["migration"]["slots_moved"] > 0
    assert_nothing_registered()


@pytest.mark.skipif(not HAS_SIM, reason="this build has no SimGrid backend")
def test_python_heat_predictor_matches_builtin_last_in_a_sim_run():
    PyLast.seen.clear()
    r_py = eplab.run(**SIM, balancer="eplb", heat=PyLast())
    r_cc = eplab.run(**SIM, balancer="eplb", heat="last")
    assert r_py.report["policies"]["heat"] == "py-last"
    # The engine keeps one predictor per layer: each layer's copy saw that layer's loads, every step.
    assert len(PyLast.seen) == SIM["steps"] * SIM["layers"] and len(set(PyLast.seen)) == SIM["layers"]
    for a, b in zip(r_py.report["per_step"], r_cc.report["per_step"]):
        for key in ("rank_max_over_mean", "forecast_mape_pct", "slots_moved", "migration_bytes"):
            assert a[key] == b[key], key
    assert r_py.report["migration"]["slots_moved"] > 0
    assert_nothing_registered()


def test_python_balancer_and_predictor_in_an_emu_run_stay_bit_exact():
    r = eplab.run(**EMU, balancer=Reverse(), heat=PyLast())
    assert r.report["policies"]["balancer"] == "Reverse" and r.report["policies"]["heat"] == "py-last"
    assert r.verified
    assert r.report["migration"]["slots_moved"] > 0
    v = r.report["verification"]
    assert v["bit_exact"] and v["max_abs_err"] == 0 and v["mismatched_elements"] == 0
    assert_nothing_registered()


def test_exception_in_python_balancer_comes_back_with_its_traceback():
    with pytest.raises(ZeroDivisionError, match="boom from a Python balancer") as info:
        eplab.run(**EMU, balancer=Broken(), heat="oracle")
    frames = "".join(traceback.format_tb(info.value.__traceback__))
    assert "fail_in_place" in frames and "test_run_policies.py" in frames
    assert_nothing_registered()
    assert eplab.run(**EMU, balancer="eplb", heat="oracle").verified


def test_exception_in_python_heat_predictor():
    class Oops(PyLast):
        def predict(self):
            raise KeyError("no forecast today")

    with pytest.raises(KeyError, match="no forecast today"):
        eplab.run(**EMU, balancer="eplb", heat=Oops())
    assert_nothing_registered()


def test_policy_objects_are_checked_and_names_kept_unique():
    with pytest.raises(TypeError, match="eplab.Balancer"):
        eplab.run(**EMU, balancer=PyLast())
    # A Python balancer named like a built-in is registered as py-<name>, never shadowing it.
    class NoneLike(Reverse):
        name = "none"

    r = eplab.run(**EMU, balancer=NoneLike(), heat="oracle", verify=False)
    assert r.report["policies"]["balancer"] == "py-none"
    with pytest.raises(eplab.Error, match="built-in"):
        eplab.register_balancer("eplb", lambda: Reverse())
    assert_nothing_registered()
