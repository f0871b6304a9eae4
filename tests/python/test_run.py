# eplab.run(): options, the report and its DataFrame views, Python code inside the engine, errors, the GIL.
import threading
import time
import traceback

import pytest

import eplab
from conftest import HAS_SIM, SIM_SMALL, BrokenCodec, HalfCodec

PHASE_KEYS = {"time_s", "logical_bw_GBps", "scaleout_bw_GBps", "scaleup_bw_GBps", "bytes"}


def test_report_keys_and_views(small):
    r = eplab.run(**small)
    rep = r.report
    for key in ("backend", "cluster", "model", "ranks", "algorithm", "codec", "verified", "phases", "imbalance",
                "wall_s"):
        assert key in rep, key
    assert rep["backend"] == "emu" and rep["ranks"] == 4
    assert rep["verified"] is True and r.verified
    for phase in ("notify", "dispatch", "combine"):
        assert PHASE_KEYS <= set(rep["phases"][phase]), phase
    assert rep["imbalance"]["rank_max_over_mean"] >= 1.0
    assert eplab.run(**{**small, "model": "deepseek-v3"}).report["model"]["num_expert_groups"] == 8
    df = r.phases
    assert {"notify", "dispatch", "combine"} <= set(df.index)
    assert (df.loc["dispatch", "bytes_total"] > 0) and (df["time_s"] > 0).all()
    assert list(df.index) == ["notify", "dispatch", "combine"]  # the order a layer call runs them
    assert r.comm_time_s == pytest.approx(df.loc[["notify", "dispatch", "combine"], "time_s"].sum())
    with pytest.warns(DeprecationWarning, match="comm_time_s"):
        assert r.layer_time_s == r.comm_time_s
    row = r.row()
    assert row["phases.dispatch.time_s"] == rep["phases"]["dispatch"]["time_s"]
    assert "verified" in r.summary()


def test_options_reach_the_engine(small):
    r = eplab.run(**{**small, "algorithm": "flat", "dispatch_codec": "bf16", "steps": 2, "seed": 5})
    assert r.report["algorithm"] == "flat"
    assert r.report["codec"]["dispatch"] == "bf16"
    assert r.report["steps"] == 2 and r.report["seed"] == 5


def test_same_seed_same_bytes(small):
    a, b = eplab.run(**small), eplab.run(**small)
    assert a.report["phases"]["dispatch"]["bytes"] == b.report["phases"]["dispatch"]["bytes"]


def test_bad_options_raise_eplab_error(small):
    with pytest.raises(eplab.Error, match="unknown option 'nodez'"):
        eplab.run(**small, nodez=3)
    with pytest.raises(eplab.Error, match="no-such-model"):
        eplab.run(**{**small, "model": "no-such-model"})
    with pytest.raises(eplab.Error, match="option 'tokens': expected an integer >= 1, got \"many\""):
        eplab.run(**{**small, "tokens": "many"})
    with pytest.raises(eplab.Error, match="wrong type"):
        eplab.run(**{**small, "tokens": [1]})


def test_python_codec_inside_an_emu_run(small):
    codec = HalfCodec()
    r = eplab.run(**small, dispatch_codec=codec, combine_codec=codec)
    # The output is bf16, as for every inference run on real bytes (combine_out "auto").
    assert r.report["codec"] == {"dispatch": "py-half", "combine": "py-half", "combine_out": "bf16"}
    assert r.verified
    # Real bytes moved: the engine encoded and decoded every message through Python.
    assert codec.calls["encode"] > 0 and codec.calls["decode"] > 0
    assert r.report["phases"]["dispatch"]["bytes"]["total"] > 0


def test_python_codec_halves_fp32_bytes(small):
    fp32 = eplab.run(**small, dispatch_codec="fp32", combine_codec="fp32", verify=False)
    half = eplab.run(**small, dispatch_codec=HalfCodec(), combine_codec="fp32", verify=False)
    b32 = fp32.report["phases"]["dispatch"]["bytes"]["scaleout"]
    b16 = half.report["phases"]["dispatch"]["bytes"]["scaleout"]
    assert 0.4 * b32 < b16 < 0.6 * b32


@pytest.mark.skipif(not HAS_SIM, reason="this build has no SimGrid backend")
def test_python_codec_inside_a_sim_run():
    codec = HalfCodec()
    r = eplab.run(**SIM_SMALL, dispatch_codec=codec)
    assert r.report["backend"] == "sim" and r.report["codec"]["dispatch"] == "py-half"
    # Sizes only on the simulator: the engine asked the Python codec how big each message is.
    assert codec.calls["encoded_size"] > 0
    assert r.report["phases"]["dispatch"]["time_s"] > 0


def test_python_exception_comes_back_with_its_traceback(small):
    with pytest.raises(ValueError, match="boom from a Python codec") as info:
        eplab.run(**small, dispatch_codec=BrokenCodec())
    frames = "".join(traceback.format_tb(info.value.__traceback__))
    assert "raise_from_codec" in frames and "conftest.py" in frames
    # The engine is usable afterwards: nothing hung, nothing left parked.
    assert eplab.run(**small).verified


def test_exception_in_progress_callback(small):
    def progress(done, total):
        raise KeyError("stop here")

    with pytest.raises(KeyError, match="stop here"):
        eplab.run(**small, progress=progress)


def test_progress_is_reported(small):
    seen = []
    eplab.run(**{**small, "steps": 2, "layers": 2}, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (4, 4)


def test_gil_released_during_run(small):
    box = {}
    t = threading.Thread(target=lambda: box.update(r=eplab.run(**{**small, "steps": 6, "layers": 2})))
    spins = 0
    t.start()
    while t.is_alive():
        spins += 1
        time.sleep(0.0005)
    t.join()
    assert box["r"].verified
    assert spins > 20, "the main thread was starved: run() held the GIL"


def test_non_finite_timeout_is_refused_not_fatal(small):
    # An infinite or NaN limit is refused by name; the interpreter lives on and the next run works.
    for bad in (float("inf"), float("nan")):
        with pytest.raises(eplab.Error, match=r"option 'timeout_s': expected a finite number > 0, got (inf|nan)"):
            eplab.run(**{**small, "timeout_s": bad})
    assert eplab.run(**{**small, "timeout_s": 1e300}).verified


def test_unwritable_timeline_fails_before_the_run(small, tmp_path):
    seen = []
    with pytest.raises(eplab.Error, match="cannot write the timeline to .*no/such/t.json"):
        eplab.run(**small, timeline=str(tmp_path / "no" / "such" / "t.json"), progress=lambda d, t: seen.append(d))
    assert seen == []


class ZeroCodec(eplab.Codec):
    """Decodes to zeros and declares no bound: the run can check delivery, not values."""

    name = "py-zero"
    lossless = False

    def encode(self, x):
        return bytes(8)

    def decode(self, data, shape):
        import numpy as np

        return np.zeros(shape, dtype=np.float32)

    def encoded_size(self, shape):
        return 8


def test_codec_without_a_bound_is_delivery_only(small):
    r = eplab.run(**small, dispatch_codec=ZeroCodec())
    v = r.report["verification"]
    assert v["values"] == "delivery only" and v["delivery_ok"] and v["passed"]
    assert not r.verified
    assert "delivery only" in r.summary()


@pytest.mark.skipif(not HAS_SIM, reason="this build has no sim backend")
def test_two_batch_overlap_keyword_and_result_fields():
    r = eplab.run(**SIM_SMALL, layers=2, overlap="tbo")
    o = r.overlap
    assert o is not None and o["mode"] == "tbo" and o["micro_batches"] == 2
    assert r.exposed_comm_s + r.hidden_comm_s == pytest.approx(o["comm_s"], rel=1e-12)
    assert r.hidden_comm_s > 0
    assert r.report["comm_fraction"] == pytest.approx(r.exposed_comm_s / r.report["step_time_s"])
    assert r.report["step_time_s"] < o["serial_step_time_s"]
    assert "two-batch overlap" in r.summary()
    plain = eplab.run(**SIM_SMALL, layers=2)
    assert plain.overlap is None and plain.hidden_comm_s == 0.0
    assert plain.exposed_comm_s == pytest.approx(plain.report["step_time_s"] - plain.report["compute_s"])
    with pytest.raises(eplab.Error, match="expected none or tbo"):
        eplab.run(**SIM_SMALL, overlap="three")
