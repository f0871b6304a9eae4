# Balancers and heat predictors: built-ins by spec, Python subclasses called from C++.
import numpy as np
import pytest

import eplab

if not hasattr(eplab, "Balancer"):
    pytest.skip("this build has no balancers or heat predictors", allow_module_level=True)


class GreedyBalancer(eplab.Balancer):
    """Each expert once, hottest first onto the least-loaded rank; redundant slots copy the hottest experts."""

    name = "py-greedy"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def place(self, inp):
        self.calls += 1
        ranks, slots = inp.num_ranks, inp.slots_per_rank
        load = np.zeros(ranks)
        table = [[] for _ in range(ranks)]
        order = list(np.argsort(-inp.heat, kind="stable"))
        order += order[: inp.redundant]
        for e in order:
            free = [r for r in range(ranks) if len(table[r]) < slots]
            r = min(free, key=lambda r: load[r])
            table[r].append(int(e))
            load[r] += inp.heat[e]
        return {"slot_expert": np.array(table, dtype=np.int32).ravel(), "decision": "greedy by heat"}


class LastPredictor(eplab.HeatPredictor):
    name = "py-last"

    def __init__(self):
        super().__init__()
        self.last = None

    def observe(self, load):
        self.last = np.array(load)

    def predict(self):
        return self.last


def skewed_heat(n=256, s=1.2):
    return 1000.0 / np.arange(1, n + 1) ** s


def test_builtin_eplb_beats_static_on_skew():
    heat = skewed_heat()
    static = eplab.create_balancer("none").balance(heat, nodes=2, gpus_per_node=8, redundant=16)
    eplb = eplab.create_balancer("eplb").balance(heat, nodes=2, gpus_per_node=8, redundant=16)
    assert static["slot_expert"].shape == (16, 17)

    def imb(res):
        load = eplab.rank_load(res["slot_expert"], 256, heat)
        return load.max() / load.mean()

    assert imb(eplb) < imb(static)


def test_python_balancer_called_through_cpp():
    b = GreedyBalancer()
    heat = skewed_heat()
    res = b.balance(heat, nodes=2, gpus_per_node=8, redundant=16)
    assert b.calls == 1 and res["decision"] == "greedy by heat" and b.name == "py-greedy"
    assert sorted(set(res["slot_expert"].ravel())) == list(range(256))
    load = eplab.rank_load(res["slot_expert"], 256, heat)
    static = eplab.rank_load(eplab.create_balancer("none").balance(heat, 2, 8, 16)["slot_expert"], 256, heat)
    assert load.max() < static.max()


def test_python_balancer_wrong_size_is_eplab_error():
    class Short(eplab.Balancer):
        def place(self, inp):
            return [0, 1, 2]

    with pytest.raises(eplab.Error, match="expected 16 ranks"):
        Short().balance(skewed_heat(), nodes=2, gpus_per_node=8)


def test_python_balancer_exception_propagates():
    class Bad(eplab.Balancer):
        def place(self, inp):
            raise RuntimeError("no placement today")

    with pytest.raises(RuntimeError, match="no placement today"):
        Bad().balance(skewed_heat(), nodes=2, gpus_per_node=8)


def test_heat_predictors():
    ema = eplab.create_heat_predictor("ema:alpha=0.5")
    ema.observe([0, 10])
    ema.observe([10, 0])
    np.testing.assert_allclose(ema.predict(), [5, 5])
    py = LastPredictor()
    py.observe(np.array([1.0, 2.0]))
    assert list(py.predict()) == [1.0, 2.0] and py.name == "py-last"
    assert eplab.forecast_mape([1, 2], [1, 4]) == pytest.approx(25.0)
    with pytest.raises(eplab.Error):
        eplab.create_heat_predictor("crystal-ball")


def test_python_predictor_driven_from_cpp():
    loads = np.array([[10.0, 20.0], [10.0, 20.0], [20.0, 10.0]])
    py = LastPredictor()
    mape = eplab.heat_eval(py, loads)
    np.testing.assert_allclose(mape, [0.0, 75.0])  # |10-20|/20 and |20-10|/10, averaged
    np.testing.assert_allclose(eplab.heat_eval(eplab.create_heat_predictor("last"), loads), mape)
