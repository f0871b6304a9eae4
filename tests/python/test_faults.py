# Injected faults from Python and both command lines: faults= (or fault=) as a spec or a list, the repeatable
# --fault flag (the command line's list replaces a config file's), and the must-show failover on 64 simulated GPUs.
import json
import os
import subprocess
import sys

import pytest

import eplab
from conftest import HAS_SIM

BIN = os.environ.get("EPLAB_BIN", "")
needs_bin = pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="eplab executable not built")
needs_sim = pytest.mark.skipif(not HAS_SIM, reason="no sim backend in this build")

SMALL_EMU = dict(backend="emu", nodes=2, gpus_per_node=4, model="mixtral-8x7b", experts=32, hidden=256, tokens=32,
                 steps=3, redundant_experts=8, detect_timeout_s=0.01, timeout_s=20, algorithm="flat")


def test_faults_as_a_list_or_one_spec():
    assert eplab.run_config(faults=["gpu:1@step:1", "straggler:2,x=2"])["faults"] == ["gpu:1@step:1", "straggler:2,x=2"]
    assert eplab.run_config(fault="gpu:1@step:1")["faults"] == ["gpu:1@step:1"]
    assert eplab.run_config()["faults"] == []
    with pytest.raises(eplab.Error, match="fault 'gpu:1': a gpu fault needs a trigger"):
        eplab.run_config(faults=["gpu:1"])
    with pytest.raises(TypeError):
        eplab.run_config(fault="gpu:1@step:1", faults=["gpu:2@step:1"])


def test_emu_failover_is_verified_with_real_bytes():
    r = eplab.run(fault="gpu:1@step:1", **SMALL_EMU).report
    assert r["verified"] is True
    assert r["faults"]["tokens_lost"] == 0 and r["faults"]["tokens_rerouted"] > 0
    r = eplab.run(faults=["gpu:5@step:1"], **SMALL_EMU).report
    assert r["faults"]["tokens_lost"] > 0
    assert r["verification"]["lost_selections"] == r["faults"]["tokens_lost"]


@needs_sim
def test_must_show_failover_on_64_simulated_gpus():
    r = eplab.run(backend="sim", nodes=8, gpus_per_node=8, redundant_experts=64, fault="gpu:5@step:2", steps=4,
                  tokens=512).report
    f = r["faults"]
    assert f["tokens_lost"] == 0
    assert f["detect_s"] > 0 and f["recover_s"] > 0
    assert f["failed_ranks"] == [5]
    assert "faults" not in eplab.run(backend="sim", nodes=8, gpus_per_node=8, redundant_experts=64, steps=1,
                                     tokens=512).report


@needs_bin
def test_fault_flag_repeats_and_replaces_the_config_files_list(tmp_path):
    def dump(*args):
        p = subprocess.run([BIN, "run", *args, "--dump-config"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    assert dump("--fault", "gpu:1@step:0", "--fault", "straggler:2,x=3")["faults"] == ["gpu:1@step:0",
                                                                                        "straggler:2,x=3"]
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"faults": ["stall:0@step:0,for=1"]}))
    assert dump("--config", str(cfg))["faults"] == ["stall:0@step:0,for=1"]
    assert dump("--config", str(cfg), "--fault", "gpu:3@step:0")["faults"] == ["gpu:3@step:0"]
    p = subprocess.run([BIN, "run", "--fault", "link:1@step:0,bw=150"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "fault 'link:1@step:0,bw=150'" in p.stderr and "(0, 100)" in p.stderr
    p = subprocess.run([sys.executable, "-m", "eplab", "run", "--fault", "gpu:1@step:0", "--fault",
                        "straggler:2,x=3", "--dump-config"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["faults"] == ["gpu:1@step:0", "straggler:2,x=3"]
