# Routing from Python: generators by spec, trace files written and read back, presets.
import numpy as np
import pytest

import eplab


def test_presets():
    assert "h800-cx7" in eplab.cluster_presets() and "deepseek-v3" in eplab.model_presets()
    c = eplab.cluster("h800-cx7")
    assert c["gpus_per_node"] == 8 and c["nic_GBps"] > 0
    m = eplab.model("deepseek-v3")
    assert (m["num_experts"], m["topk"], m["hidden"]) == (256, 8, 7168)
    assert "emu" in eplab.backends()
    with pytest.raises(eplab.Error, match="no-such"):
        eplab.cluster("no-such")


def test_generator_batch_shapes_and_determinism():
    src = eplab.traces.source("zipf:1.2", nodes=2, gpus_per_node=4, tokens=128, seed=3)
    b = src.batch(step=0, layer=1, rank=5)
    assert b["topk_idx"].shape == (128, 8) and b["topk_weights"].shape == (128, 8)
    assert b["src_rank"] == 5 and b["layer"] == 1
    assert b["topk_idx"].min() >= -1 and b["topk_idx"].max() < 256
    again = eplab.traces.source("zipf:1.2", nodes=2, gpus_per_node=4, tokens=128, seed=3).batch(0, 1, 5)
    np.testing.assert_array_equal(b["topk_idx"], again["topk_idx"])


def test_zipf_is_skewed_uniform_is_not():
    def skew(spec):
        src = eplab.traces.source(spec, nodes=1, gpus_per_node=8, tokens=512)
        load = eplab.traces.expert_load((src.batch(0, 0, r) for r in range(8)), 256)
        return load.max() / load.mean()

    assert skew("zipf:1.5") > 2 * skew("uniform")


def test_trace_write_read_round_trip(tmp_path):
    path = tmp_path / "t.eplt"
    h = eplab.traces.write(path, "hotset:k=4,frac=0.5,every=1", nodes=1, gpus_per_node=4, tokens=32, steps=2,
                           layers=2)
    assert (h["num_steps"], h["num_layers"], h["num_ranks"]) == (2, 2, 4)
    assert eplab.traces.header(path)["tokens_per_rank"] == 32
    batches = eplab.traces.read(path)
    assert len(batches) == 16
    src = eplab.traces.source(f"trace:{path}", nodes=1, gpus_per_node=4, tokens=32)
    np.testing.assert_array_equal(src.batch(1, 1, 3)["topk_idx"],
                                  [b for b in batches if (b["step"], b["layer"], b["src_rank"]) == (1, 1, 3)][0]
                                  ["topk_idx"])
    s = eplab.traces.summary(path)
    assert s["selections"] == eplab.traces.expert_load(batches, 256).sum()


def test_run_from_a_trace(tmp_path):
    path = tmp_path / "t.eplt"
    eplab.traces.write(path, "uniform", nodes=2, gpus_per_node=2, tokens=64)
    r = eplab.run(backend="emu", nodes=2, gpus_per_node=2, tokens=64, hidden=256, trace=str(path))
    assert r.verified and "trace" in r.report["routing"]


def test_missing_trace_is_eplab_error(tmp_path):
    with pytest.raises(eplab.Error):
        eplab.traces.read(tmp_path / "missing.eplt")
