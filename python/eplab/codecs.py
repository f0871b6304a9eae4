"""Codecs: how activations travel on the wire.

``create(spec)`` builds a built-in codec (``fp8-e4m3-b128``, ``int8-token``, ``topk:ratio=0.25+zstd``, ...);
subclass :class:`eplab.Codec` to write one in Python, ``register()`` it (``eplab.run`` does so for you when you
pass an instance) and the C++ engine calls it for every dispatch or combine message.
"""

import numpy as np

from . import _eplab
from ._eplab import Codec

__all__ = ["Codec", "create", "names", "catalog", "register", "unregister", "registered", "evaluate"]


def create(spec):
    """A codec by spec, or a registered Python codec by name."""
    return _eplab.create_codec(spec)


def names():
    """Built-in codec stage names (chain them with '+')."""
    return list(_eplab.codec_names())


def catalog():
    """A DataFrame of built-in codec stages: name, kind (quantizer, transform, lossless) and summary."""
    import pandas as pd

    return pd.DataFrame(_eplab.codec_catalog(), columns=["name", "kind", "summary"])


def register(codec):
    """Registers a codec instance under ``codec.name`` so specs and runs (in this process) can name it."""
    if not isinstance(codec, Codec):
        raise TypeError(f"expected an eplab.Codec, got {type(codec).__name__}")
    return _eplab.register_codec(codec)


def unregister(name):
    _eplab.unregister_codec(name)


def registered():
    return list(_eplab.registered_codecs())


def evaluate(codec, x):
    """Round-trips ``x`` [tokens, hidden] through a codec (a spec or an object) and measures it.

    Returns a dict: codec, bytes, bits_per_element, rel_l2_error (||x' - x|| / ||x||), max_abs_error and
    the declared error_bound, so built-in and Python codecs can be compared on the same data.
    """
    c = create(codec) if isinstance(codec, str) else codec
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError("x must be [tokens, hidden]")
    data = c.encode(x)
    y = np.asarray(c.decode(data, x.shape), dtype=np.float32).reshape(x.shape)
    norm = float(np.linalg.norm(x))
    err = float(np.linalg.norm(y - x))
    return {
        "codec": c.name,
        "bytes": len(data),
        "bits_per_element": 8.0 * len(data) / x.size if x.size else 0.0,
        "rel_l2_error": err / norm if norm > 0 else err,
        "max_abs_error": float(np.max(np.abs(y - x))) if x.size else 0.0,
        "error_bound": float(c.error_bound),
        "lossless": bool(c.lossless),
    }
