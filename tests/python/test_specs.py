# Clusters and models from dicts and files: the dict eplab.cluster()/eplab.model() return runs exactly like the
# preset name, and a bad one is refused naming the field.
import json

import pytest

import eplab

needs_sim = pytest.mark.skipif("sim" not in eplab.backends(), reason="this build has no sim backend")


def _report(**kw):
    r = eplab.run(backend="sim", nodes=2, gpus_per_node=8, tokens=128, payload="phantom", **kw).report
    r.pop("wall_s")
    return r


@needs_sim
def test_dict_and_file_run_like_the_preset(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(eplab.cluster("h800-cx7")))
    by_name = _report(cluster="h800-cx7", model="qwen-moe")
    assert _report(cluster=eplab.cluster("h800-cx7"), model=eplab.model("qwen-moe")) == by_name
    assert _report(cluster=str(path), model="qwen-moe") == by_name


@needs_sim
def test_a_changed_field_changes_the_run():
    slow = dict(eplab.cluster("h800-cx7"), nic_GBps=5.0)
    assert _report(cluster=slow, model="qwen-moe")["phases"]["dispatch"]["time_s"] > \
        _report(cluster="h800-cx7", model="qwen-moe")["phases"]["dispatch"]["time_s"]


def test_base_and_bad_fields():
    m = {"base": "qwen-moe", "num_experts": 64}
    with pytest.raises(eplab.Error, match="model JSON: field 'topk': expected an integer >= 1, got 0"):
        eplab.run(backend="emu", model=dict(m, topk=0))
    with pytest.raises(eplab.Error, match="cluster JSON: unknown field 'gpus'"):
        eplab.run(backend="emu", cluster=dict(eplab.cluster("h800-cx7"), gpus=8))
    with pytest.raises(eplab.Error, match="cluster JSON: missing field 'nodes'"):
        c = eplab.cluster("h800-cx7")
        del c["nodes"]
        eplab.run(backend="emu", cluster=c)


def test_trace_sources_take_dicts_too():
    small = {"base": "qwen-moe", "num_experts": 16, "topk": 2}
    b = eplab.traces.source("uniform", model=small, cluster="h800-cx7", nodes=1, gpus_per_node=4, tokens=8).batch()
    assert b["topk_idx"].shape == (8, 2) and b["topk_idx"].max() < 16
