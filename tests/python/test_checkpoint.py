# Checkpoints from Python (docs/checkpoints.md): eplab.run's checkpoint keys, a run stopped and resumed giving the
# uninterrupted report (emu with a delta codec: wall-clock figures left out), a config file carrying the keys,
# and a refused resume raising with the file named.
import json

import pytest

import eplab

EMU = dict(backend="emu", nodes=1, gpus_per_node=4, model="mixtral-8x7b", tokens=32, hidden=128, steps=3,
           layers=2, dispatch_codec="delta+bf16", combine_codec="delta+bf16")
_TIMED = ("_s", "GBps", "per_s", "_us", "_ms", "utilization", "fraction")


def _without_times(j):
    if isinstance(j, dict):
        return {k: _without_times(v) for k, v in j.items() if not any(t in k for t in _TIMED)}
    if isinstance(j, list):
        return [_without_times(v) for v in j]
    return j


def test_stopped_and_resumed_run_reports_as_the_whole(tmp_path):
    whole = eplab.run(**EMU)
    ckpt = str(tmp_path / "run.ckpt")
    stopped = eplab.run(**EMU, checkpoint=ckpt, stop_after_steps=1)
    assert stopped.report["stopped"] is True
    assert stopped.report["steps_done"] == 1
    resumed = eplab.run(**EMU, resume=ckpt)
    assert resumed.verified
    assert _without_times(resumed.report) == _without_times(whole.report)


def test_config_file_keys(tmp_path):
    cfg = eplab.run_config(**EMU, checkpoint="c.ckpt", checkpoint_every=2)
    assert cfg["checkpoint"] == "c.ckpt" and cfg["checkpoint_every"] == 2
    assert cfg["stop_after_steps"] == 0 and cfg["resume"] == ""


def test_resume_of_another_configuration_names_the_file(tmp_path):
    ckpt = str(tmp_path / "run.ckpt")
    eplab.run(**EMU, checkpoint=ckpt, stop_after_steps=1)
    with pytest.raises(Exception, match=r"checkpoint '.*run\.ckpt': belongs to another configuration: --seed"):
        eplab.run(**EMU, seed=2, resume=ckpt)
    (tmp_path / "cut.ckpt").write_bytes(open(ckpt, "rb").read()[:100])
    with pytest.raises(Exception, match=r"cut\.ckpt.*truncated"):
        eplab.run(**EMU, resume=str(tmp_path / "cut.ckpt"))
