"""Sweeps: a grid of run configurations, run in parallel processes (or on a Dask cluster), as one DataFrame.

    df = eplab.sweep(eplab.grid(routing=["uniform", "zipf:1.2"], redundant_experts=[0, 16]),
                     base=dict(backend="sim", nodes=4, gpus_per_node=8, tokens=512))

Each configuration runs in a worker process, so runs proceed in parallel and a crash in one cannot take the
notebook down. With ``client=`` (a dask.distributed Client) the grid is spread over that cluster's workers.
"""

import concurrent.futures as cf
import contextlib
import itertools
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["dask_processes", "grid", "sweep"]


def grid(**axes):
    """The cartesian product of the axes: grid(a=[1, 2], b=["x"]) -> [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]."""
    keys = list(axes)
    for k in keys:
        if isinstance(axes[k], (str, bytes)) or not hasattr(axes[k], "__iter__"):
            axes[k] = [axes[k]]
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def _label(value):
    """What a configuration value looks like in the DataFrame: codec objects by name."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else repr(value)


def _policy_bases():
    from . import _eplab

    return (_eplab.Codec, _eplab.Balancer, _eplab.HeatPredictor)


def _rebuild_policy(cls, base, state):
    """Recreates a Python codec, balancer or heat predictor in a worker: its class, the C++ base initialised
    (the subclass's own __init__ may take arguments, so it is not called), then its attributes."""
    obj = cls.__new__(cls)
    base.__init__(obj)
    obj.__dict__.update(state)
    return obj


def _pybind11_metaclass():
    from . import _eplab

    return type(_eplab.Codec)


def _dumps(config):
    """A configuration as bytes a worker can load. Python policies (subclasses of eplab.Codec, Balancer or
    HeatPredictor) are C++ objects underneath, which pickle refuses; they travel as class and attributes, and
    classes defined in a notebook or script travel by value (cloudpickle), so workers need not import them."""
    import io

    import cloudpickle

    bases = _policy_bases()
    meta = type(bases[0])

    class Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, obj):
            # pybind11's metaclass is not importable by name; a worker takes it from its own eplab module.
            if obj is meta:
                return _pybind11_metaclass, ()
            for base in bases:
                if isinstance(obj, base) and type(obj) is not base:
                    return _rebuild_policy, (type(obj), base, dict(obj.__dict__))
            return super().reducer_override(obj)

    buf = io.BytesIO()
    Pickler(buf).dump(config)
    return buf.getvalue()


def _run_pickled(blob, errors):
    import pickle

    return _run_one(pickle.loads(blob), errors)


def _run_one(config, errors):
    """Runs one configuration in a worker; returns the row (configuration columns first, then the report)."""
    from .result import run

    row = {k: _label(v) for k, v in config.items()}
    try:
        result = run(**config)
    except Exception as e:  # noqa: BLE001 - recorded per row when errors="record"
        if errors == "raise":
            raise
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    for k, v in result.row().items():
        row.setdefault(k, v)
    if errors == "record":
        row.setdefault("error", None)
    return row


def _configs(grid_or_list, base):
    if isinstance(grid_or_list, dict):
        grid_or_list = grid(**grid_or_list)
    base = dict(base or {})
    return [{**base, **c} for c in grid_or_list]


def sweep(configs, base=None, *, processes=None, client=None, progress=True, errors="raise", mp_context=None):
    """Runs every configuration and returns a pandas DataFrame, one row per configuration, in grid order.

    configs: a list of option dicts (see eplab.grid) or a dict of axes; base: options shared by all.
    processes: worker processes (default: CPU count, at most the grid size); client: a dask.distributed
    Client to run on instead; progress: a tqdm progress bar; errors: "raise" (the first failure is raised) or
    "record" (an ``error`` column). Python codecs, balancers and heat predictors given as objects travel to
    the workers with their class and attributes (cloudpickle), so classes defined in a notebook work with
    processes and with Dask alike; their attributes must be picklable.
    """
    import pandas as pd
    from tqdm import tqdm

    if errors not in ("raise", "record"):
        raise ValueError("errors must be 'raise' or 'record'")
    todo = _configs(configs, base)
    rows = [None] * len(todo)
    bar = tqdm(total=len(todo), desc="eplab sweep", disable=not progress, file=sys.stderr)
    try:
        if client is not None:
            from distributed import as_completed

            futures = client.map(_run_pickled, [_dumps(c) for c in todo], [errors] * len(todo), pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            for fut in as_completed(futures):
                rows[index[fut.key]] = fut.result()
                bar.update(1)
        elif todo:
            workers = processes or min(len(todo), multiprocessing.cpu_count())
            ctx = multiprocessing.get_context(mp_context or ("fork" if sys.platform == "linux" else "spawn"))
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_run_pickled, _dumps(c), errors): i for i, c in enumerate(todo)}
                try:
                    for fut in cf.as_completed(futures):
                        rows[futures[fut]] = fut.result()
                        bar.update(1)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return pd.DataFrame(rows)


@contextlib.contextmanager
def dask_processes(workers=2, *, threads_per_worker=1, timeout_s=60, pin_cores=False):
    """A Dask cluster of separate processes on loopback, the way one spans several machines: one
    ``dask scheduler`` and ``workers`` ``dask worker`` processes (each ``threads_per_worker`` threads), started
    with Debian's python, stopped on exit. Yields a connected ``distributed.Client``. Workers inherit this
    process's environment (PYTHONPATH reaches eplab). ``pin_cores``: worker i may run on core i only (of the
    cores this process may use, round robin), one worker per core as on a cluster; a simulation on one core
    then generates its routing without a helper thread. On several machines, start the same two commands there
    and pass ``Client("tcp://scheduler:8786")`` to :func:`sweep` instead.

        with eplab.dask_processes(2) as client:
            df = eplab.sweep(configs, client=client)
    """
    from distributed import Client

    if workers < 1:
        raise ValueError("workers must be at least 1")
    procs = []
    with tempfile.TemporaryDirectory(prefix="eplab-dask-") as tmp:
        sched_file = os.path.join(tmp, "scheduler.json")
        log = open(os.path.join(tmp, "cluster.log"), "w+")

        def start(*args, core=None):
            pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
            procs.append(subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, preexec_fn=pin))

        def failed(what):
            log.flush()
            log.seek(0)
            return RuntimeError(f"eplab.dask_processes: {what}; the cluster's output:\n{log.read()[-4000:]}")

        try:
            start("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                  "--scheduler-file", sched_file)
            deadline = time.monotonic() + timeout_s
            while not os.path.exists(sched_file):
                if procs[0].poll() is not None:
                    raise failed(f"the scheduler exited with status {procs[0].returncode}")
                if time.monotonic() > deadline:
                    raise failed(f"no scheduler after {timeout_s} s")
                time.sleep(0.1)
            cores = sorted(os.sched_getaffinity(0))
            for i in range(workers):
                start("distributed.cli.dask_worker", "--scheduler-file", sched_file, "--nworkers", "1", "--nthreads",
                      str(threads_per_worker), "--no-dashboard", "--no-nanny", "--local-directory", tmp,
                      core=cores[i % len(cores)] if pin_cores else None)
            with Client(scheduler_file=sched_file, timeout=timeout_s) as client:
                try:
                    client.wait_for_workers(workers, timeout=timeout_s)
                except Exception as e:  # noqa: BLE001 - reported with the cluster's output
                    raise failed(f"{workers} workers did not join in {timeout_s} s ({e})") from e
                yield client
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.terminate()
            for p in reversed(procs):
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.close()
