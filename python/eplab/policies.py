"""Expert placement from Python: DeepSeek's EPLB with DeepSeek's own shapes, and its building blocks.

    phy2log, log2phy, logcnt = eplab.policies.rebalance_experts(weight, num_replicas=16, num_groups=4,
                                                                num_nodes=2, num_gpus=8)

The C++ code behind these is the one eplab's ``eplb`` balancer runs (policies/balance/eplb.cpp); balancers by
spec and Python balancers are ``eplab.create_balancer`` and ``eplab.Balancer`` (docs/policies.md).
"""

from . import _eplab

__all__ = ["rebalance_experts", "balanced_packing", "replicate_experts"]


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus):
    """DeepSeek's EPLB: ``(phy2log, log2phy, logcnt)`` for ``weight`` [layers, experts] of loads.

    Hierarchical when ``num_groups % num_nodes == 0`` (expert groups packed onto nodes, replicas made within a
    node, physical experts packed onto its GPUs), global otherwise (one group on one node of every GPU).
    phy2log [layers, num_replicas]: the expert of each physical slot, GPU-major, num_replicas / num_gpus per GPU;
    log2phy [layers, experts, max replicas]: each expert's slots in the order its replicas were made, padded with
    -1; logcnt [layers, experts]: replicas per expert. All int64 numpy arrays. ``weight`` may be a numpy array or
    nested lists; it is rounded to float32 first, as DeepSeek's code does. Raises eplab.Error for a shape that
    does not divide (replicas over GPUs, experts into groups, GPUs over nodes), fewer replicas than experts, or a
    negative or non-finite load.
    """
    return _eplab.rebalance_experts(weight, int(num_replicas), int(num_groups), int(num_nodes), int(num_gpus))


def balanced_packing(weight, num_packs):
    """``(pack, rank_in_pack)``: items heaviest first, each to the lightest pack with room (len / num_packs each).

    With one item per pack item i goes to pack i, as DeepSeek's code does.
    """
    return _eplab.balanced_packing(weight, int(num_packs))


def replicate_experts(weight, num_phy):
    """``(phy2log, replica, count)``: each of num_phy - len(weight) extra replicas to the expert with the largest
    load per replica; slot p holds expert phy2log[p], its replica[p]-th replica."""
    return _eplab.replicate_experts(weight, int(num_phy))
