# Shared fixtures: the small configurations every test runs (seconds on two cores), and which backend
# simulates time in this build (sim when SimGrid is built in, else the emulator stands in).
import numpy as np
import pytest

import eplab


def _has(backend):
    try:
        eplab.backend_info(backend)
        return True
    except eplab.Error:
        return False


HAS_SIM = _has("sim")
SMALL = dict(backend="emu", nodes=2, gpus_per_node=2, tokens=64, hidden=256, routing="uniform", timeout_s=20)
SIM_SMALL = dict(backend="sim", nodes=2, gpus_per_node=4, tokens=256, routing="uniform", timeout_s=20)


@pytest.fixture
def small():
    return dict(SMALL)


@pytest.fixture
def activations():
    rng = np.random.default_rng(7)
    return rng.standard_normal((32, 512)).astype(np.float32)


class HalfCodec(eplab.Codec):
    """fp16 on the wire: a Python codec the engine calls for every message. Counts its calls."""

    name = "py-half"
    lossless = False
    error_bound = 1e-3

    def __init__(self):
        super().__init__()
        self.calls = {"encode": 0, "decode": 0, "encoded_size": 0}

    def encode(self, x):
        self.calls["encode"] += 1
        return np.ascontiguousarray(x, dtype=np.float16).tobytes()

    def decode(self, data, shape):
        self.calls["decode"] += 1
        return np.frombuffer(data, dtype=np.float16).astype(np.float32).reshape(shape)

    def encoded_size(self, shape):
        self.calls["encoded_size"] += 1
        return int(shape[0]) * int(shape[1]) * 2


class BrokenCodec(HalfCodec):
    name = "py-broken"

    def encode(self, x):
        raise_from_codec()


def raise_from_codec():
    raise ValueError("boom from a Python codec")
