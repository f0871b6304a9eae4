# eplab.policies.rebalance_experts: DeepSeek's EPLB with DeepSeek's shapes, on its published worked example.
import numpy as np
import pytest

import eplab

if not hasattr(eplab, "policies"):
    pytest.skip("this build has no balancers", allow_module_level=True)

WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
           [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


@pytest.mark.parametrize("weight", [WEIGHT, np.array(WEIGHT, dtype=np.float32), np.array(WEIGHT, dtype=np.int64)])
def test_deepseek_worked_example(weight):
    phy2log, log2phy, logcnt = eplab.policies.rebalance_experts(weight, 16, 4, 2, 8)
    for a in (phy2log, log2phy, logcnt):
        assert isinstance(a, np.ndarray) and a.dtype == np.int64
    assert phy2log.tolist() == PHY2LOG
    assert log2phy.shape == (2, 12, 2) and logcnt.shape == (2, 12)
    assert (logcnt.sum(axis=1) == 16).all()
    for layer in range(2):
        for e in range(12):
            slots = log2phy[layer, e]
            assert (slots[logcnt[layer, e]:] == -1).all()
            assert (phy2log[layer, slots[: logcnt[layer, e]]] == e).all()


def test_global_when_groups_do_not_divide_over_nodes():
    w = np.arange(1, 13, dtype=np.float64)[None, :]
    a = eplab.policies.rebalance_experts(w, 16, 3, 2, 8)  # 3 groups do not divide over 2 nodes: global
    b = eplab.policies.rebalance_experts(w, 16, 1, 1, 8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    phy2log, _, logcnt = eplab.policies.rebalance_experts(np.ones((3, 10)), 12, 1, 1, 4)  # 10 experts
    assert phy2log.shape == (3, 12) and (logcnt.sum(axis=1) == 12).all()


@pytest.mark.parametrize("args,match", [
    ((WEIGHT, 18, 4, 2, 8), "replicas do not divide evenly over the GPUs"),
    ((WEIGHT, 16, 5, 1, 8), "do not divide into 5 groups"),
    ((WEIGHT, 8, 4, 2, 8), "fewer replicas than experts"),
    (([[1.0, -2.0]], 2, 1, 1, 2), r"weight\[0\]\[1\] is -2"),
    (([[1.0, float("nan")]], 2, 1, 1, 2), "finite"),
    (([[1.0, float("inf")]], 2, 1, 1, 2), "finite"),
    (([1.0, 2.0], 2, 1, 1, 2), "2-D"),
    (([[1.0, 2.0], [3.0]], 2, 1, 1, 2), "2-D"),
    ((np.zeros((0, 4)), 4, 1, 1, 2), "at least one layer"),
])
def test_bad_inputs_are_eplab_errors(args, match):
    with pytest.raises(eplab.Error, match=match):
        eplab.policies.rebalance_experts(*args)


def test_building_blocks():
    pack, rank = eplab.policies.balanced_packing([9, 7, 6, 5, 4, 3], 2)
    assert pack.tolist() == [0, 1, 1, 0, 1, 0] and rank.tolist() == [0, 0, 1, 1, 2, 2]
    assert eplab.policies.balanced_packing([1, 5, 3], 3)[0].tolist() == [0, 1, 2]  # one per pack: input order
    phy2log, replica, count = eplab.policies.replicate_experts([10, 4, 2], 5)
    assert phy2log.tolist() == [0, 1, 2, 0, 0] and replica.tolist() == [0, 0, 0, 1, 2] and count.tolist() == [3, 1, 1]


def test_model_presets_carry_expert_groups():
    assert eplab.model("deepseek-v3")["num_expert_groups"] == 8
    assert eplab.model("mixtral-8x7b")["num_expert_groups"] == 1
