"""`python3 -m eplab` mirrors the `eplab` command: `run` and `presets` go through the bindings (so they work
wherever the package does); other subcommands are handed to the `eplab` executable when one is found."""

import argparse
import json
import os
import shutil
import sys

from . import _eplab
from .result import run, run_config



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
    """The options come from the engine's one table, so they and their defaults match `eplab run`'s."""
    p = argparse.ArgumentParser(prog="python3 -m eplab run", description="Runs one EP experiment.")
    types = {"int": int, "float": float, "bool": _flag, "str": str}
    for o in _eplab.run_option_table():
        if o["type"] == "list":  # repeatable (--fault): each occurrence adds one item
            p.add_argument("--" + o["flag"], dest=o["name"], action="append", default=None,
                           help=f"{o['help']} (repeatable)")
            continue
        p.add_argument("--" + o["flag"], dest=o["name"], type=types[o["type"]], default=None,
                       help=f"{o['help']} (default: {o['default']})")
    p.add_argument("--config", help="read options from this JSON file (keys as eplab.run's; the command line wins)")
    p.add_argument("--dump-config", action="store_true", help="print the resolved options as a --config file, exit")
    p.add_argument("--no-verify", action="store_true", help="skip the delivery and combine check (as --verify 0)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--report", help="write the JSON report to this file")
    a = p.parse_args(argv)
    own = ("config", "dump_config", "no_verify", "quiet", "report")
    opts = {}
    if a.config:
        with open(a.config) as f:
            opts.update(json.load(f))
    opts.update({k: v for k, v in vars(a).items() if k not in own and v is not None})
    if a.no_verify:
        opts["verify"] = False
    if a.dump_config:
        print(json.dumps(run_config(**opts), indent=2, sort_keys=True))
        return 0

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
    # Non-zero only when something checked was wrong: "delivery only" runs report verified false but pass.
    v = r.report.get("verification", {})
    # A phantom run has no values to verify, but "passed" says whether its message counts were conserved.
    return 0 if v.get("passed", r.report.get("verified", True) if v.get("ran") else True) else 1


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
