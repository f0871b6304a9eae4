# The one run option table: every option reachable from `eplab run`, `python3 -m eplab run`, eplab.run() and a
# config file, with the same defaults (backend-dependent ones included), and config files that round-trip.
import json
import os
import subprocess
import sys

import pytest

import eplab

BIN = os.environ.get("EPLAB_BIN", "")
needs_bin = pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="eplab executable not built")


def _cli(*args):
    p = subprocess.run([BIN, "run", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def _py_main(*args):
    p = subprocess.run([sys.executable, "-m", "eplab", "run", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_table_names_every_keyword_argument():
    table = eplab.run_option_table()
    assert [o["name"] for o in table] == eplab.run_options()
    assert "layout_cache" in eplab.run_options()
    for o in table:
        assert o["type"] in ("int", "float", "bool", "str", "list") and o["help"]


@needs_bin
def test_every_option_is_on_both_command_lines():
    cli_help, py_help = _cli("--help"), _py_main("--help")
    for o in eplab.run_option_table():
        assert "--" + o["flag"] in cli_help, o
        assert "--" + o["flag"] in py_help, o


@needs_bin
@pytest.mark.parametrize("backend", ["emu", "sim"])
def test_same_defaults_everywhere(backend):
    if backend not in eplab.backends():
        pytest.skip(f"no {backend} backend in this build")
    from_python = eplab.run_config(backend=backend)
    assert json.loads(_cli("--backend", backend, "--dump-config")) == from_python
    assert json.loads(_py_main("--backend", backend, "--dump-config")) == from_python
    defaults = {o["name"]: o["default"] for o in eplab.run_option_table()}
    for key, value in from_python.items():
        if backend == "emu" and key in ("nodes", "tokens"):
            continue
        assert value == defaults[key] or key == "backend", key


def test_emu_gets_its_small_defaults_from_python():
    cfg = eplab.run_config(backend="emu")
    assert cfg["nodes"] == 2 and cfg["tokens"] == 256
    assert eplab.run_config(backend="emu", nodes=1, tokens=64)["nodes"] == 1


def test_emu_run_from_python_with_its_defaults():
    r = eplab.run(backend="emu", gpus_per_node=2, hidden=128, routing="uniform", layout_cache=4, steps=2)
    assert r.verified and r["ranks"] == 4 and r["tokens_per_rank"] == 256
    assert r["layout_cache"]["capacity"] == 4  # --layout-cache reaches the engine from Python too


@needs_bin
def test_config_file_round_trips(tmp_path):
    first = _cli("--backend", "emu", "--tokens", "64", "--layout-cache", "8", "--overlap-allreduce", "0",
                 "--seed", "7", "--dump-config")
    path = tmp_path / "run.json"
    path.write_text(first)
    assert json.loads(_cli("--config", str(path), "--dump-config")) == json.loads(first)
    assert json.loads(_py_main("--config", str(path), "--dump-config")) == json.loads(first)
    assert eplab.run_config(**json.loads(first)) == json.loads(first)
    over = json.loads(_cli("--config", str(path), "--tokens", "32", "--dump-config"))
    assert over["tokens"] == 32 and over["layout_cache"] == 8  # the command line wins over the file


def test_bad_options_name_the_option():
    with pytest.raises(eplab.Error, match="unknown option 'nodez'"):
        eplab.run_config(nodez=2)
    with pytest.raises(eplab.Error, match=r"option 'tokens': expected an integer >= 1, got 0"):
        eplab.run_config(tokens=0)
    with pytest.raises(eplab.Error, match="option 'verify': expected true or false"):
        eplab.run_config(verify="yes")
