# `python3 -m eplab` mirrors the command line.
import json
import os
import subprocess
import sys

import pytest


def _run(*args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "eplab", *args], capture_output=True, text=True, env=env, timeout=120)


def test_run_writes_the_report(tmp_path):
    report = tmp_path / "r.json"
    p = _run("run", "--backend", "emu", "--nodes", "2", "--gpus-per-node", "2", "--tokens", "32", "--hidden", "256",
             "--routing", "uniform", "--quiet", "--report", str(report))
    assert p.returncode == 0, p.stderr
    assert "verified: true" in p.stdout
    rep = json.loads(report.read_text())
    assert rep["ranks"] == 4 and rep["tokens_per_rank"] == 32


def test_bad_option_fails_with_a_message():
    p = _run("run", "--backend", "emu", "--model", "nope", "--quiet")
    assert p.returncode != 0 and "nope" in p.stderr


def test_presets_lists_clusters_and_models():
    p = _run("presets")
    assert p.returncode == 0 and "h800-cx7" in p.stdout and "deepseek-v3" in p.stdout


def test_other_subcommands_reach_the_binary():
    if not os.access(os.environ.get("EPLAB_BIN", ""), os.X_OK):
        pytest.skip("eplab executable not built")
    p = _run("codec", "list")
    assert p.returncode == 0 and "fp8-e4m3-b128" in p.stdout
