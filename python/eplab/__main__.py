"""`python3 -m eplab` mirrors the `eplab` command: `run` and `presets` go through the bindings (so they work
wherever the package does); other subcommands are handed to the `eplab` executable when one is found."""

import argparse
import json
import os
import shutil
import sys

from . import _eplab
from .result import run, run_options

_INT = {"nodes", "gpus_per_node", "tokens", "hidden", "steps", "layers", "seed", "redundant_experts"}
_FLOAT = {"timeout_s"}
_BOOL = {"overlap_allreduce"}
_CLI_NAME = {"timeout_s": "timeout"}  # where the command line's name differs from RunConfig's


def _find_binary():
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "..", "..", "bin", "eplab"),  # build tree: build/python/eplab -> build/bin
                 os.path.join(sys.prefix, "bin", "eplab")):
        if os.access(cand, os.X_OK):
            return os.path.normpath(cand)
    return shutil.which("eplab")


def _flag(text):
    return text.lower() in ("1", "true", "on", "yes")


def _cmd_run(argv):
    p = argparse.ArgumentParser(prog="python3 -m eplab run", description="Runs one EP experiment.")
    for name in run_options():
        if name == "verify":
            continue
        flag = "--" + _CLI_NAME.get(name, name).replace("_", "-")
        typ = int if name in _INT else float if name in _FLOAT else _flag if name in _BOOL else str
        p.add_argument(flag, dest=name, type=typ, default=None)
    p.add_argument("--no-verify", action="store_true", help="skip the delivery and combine check")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--report", help="write the JSON report to this file")
    a = p.parse_args(argv)
    opts = {k: v for k, v in vars(a).items() if k not in ("no_verify", "quiet", "report") and v is not None}
    if a.no_verify:
        opts["verify"] = False

    def progress(done, total):
        print(f"\r{done}/{total} layer calls", end="", file=sys.stderr, flush=True)

    try:
        r = run(progress=None if a.quiet else progress, **opts)
    except _eplab.Error as e:
        print(f"\neplab: {e}", file=sys.stderr)
        return 2
    if not a.quiet:
        print(file=sys.stderr)
    print(r.summary(), end="")
    if a.report:
        r.save(a.report)
    return 0 if r.report.get("verified", True) or not r.report.get("verification", {}).get("ran") else 1


def _cmd_presets(argv):
    print("clusters:")
    for name in _eplab.cluster_presets():
        c = _eplab.cluster(name)
        print(f"  {name:12s} {c['description']}")
    print("models:")
    for name in _eplab.model_presets():
        m = _eplab.model(name)
        print(f"  {name:14s} {m['num_experts']} experts, top-{m['topk']}, hidden {m['hidden']}")
    print("backends: " + ", ".join(_eplab.backends()))
    if argv and argv[0] == "--json":
        print(json.dumps({"clusters": list(_eplab.cluster_presets()), "models": list(_eplab.model_presets())}))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python3 -m eplab COMMAND [options]   (COMMAND --help for its options)\n\n"
              "  run       run one experiment (eplab.run)\n  presets   clusters, models, backends\n"
              "  ...       any other `eplab` subcommand, handed to the eplab executable")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return _cmd_run(rest)
    if cmd == "presets":
        return _cmd_presets(rest)
    binary = _find_binary()
    if binary is None:
        print(f"eplab: '{cmd}' needs the eplab executable (build it, or put it on PATH)", file=sys.stderr)
        return 2
    os.execv(binary, [binary, cmd] + rest)


if __name__ == "__main__":
    sys.exit(main())
