"""eplab: MoE expert-parallel communication lab, from Python.

    import eplab
    r = eplab.run(backend="emu", nodes=2, gpus_per_node=4, tokens=256, routing="zipf:1.2")
    print(r.summary())
    r.phases          # one row per phase: time_s, bandwidths, bytes by link class

The engine is C++ (``eplab._eplab``); this package adds the result views, sweeps and plots. Codecs, balancers
and heat predictors can be written in Python by subclassing :class:`Codec`, :class:`Balancer` and
:class:`HeatPredictor`. Every eplab failure raises :class:`eplab.Error`; an exception raised by Python code
that the engine called comes back as that exception, with its traceback.
"""

from . import _eplab
from ._eplab import (
    Codec,
    Error,
    RoutingSource,
    __version__,
    backend_info,
    backends,
    cluster,
    cluster_presets,
    model,
    model_presets,
    routing_specs,
    run_option_table,
)
# Balancers and heat predictors, where this build has them.
_POLICY_NAMES = ("BalanceInput", "Balancer", "HeatPredictor", "balancer_names", "create_balancer",
                 "create_heat_predictor", "forecast_mape", "heat_eval", "heat_predictor_names", "rank_load",
                 "register_balancer", "unregister_balancer", "registered_balancers", "register_heat_predictor",
                 "unregister_heat_predictor", "registered_heat_predictors")
for _name in _POLICY_NAMES:
    if hasattr(_eplab, _name):
        globals()[_name] = getattr(_eplab, _name)
from . import codecs, plots, traces
from .buffer import Buffer, BufferHandle
if hasattr(_eplab, "rebalance_experts"):
    from . import policies
from .result import Result, flatten, run, run_config, run_options
from .sweeps import dask_processes, grid, sweep

__all__ = ["Buffer", "BufferHandle", "Codec", "Error", "Result", "RoutingSource", "__version__", "backend_info",
           "backends", "cluster", "cluster_presets", "codecs", "dask_processes", "flatten", "plots", "grid", "model",
           "model_presets", "routing_specs", "run", "run_config", "run_option_table", "run_options", "sweep", "traces"]
__all__ += [n for n in _POLICY_NAMES if n in globals()]
if "policies" in globals():
    __all__.append("policies")
