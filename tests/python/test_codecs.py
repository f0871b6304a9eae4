# Codecs through the bindings: built-in round trips, errors, and a Python codec called from C++.
import numpy as np
import pytest

import eplab
from conftest import HAS_SIM, SMALL, HalfCodec


def test_fp32_round_trip_is_exact(activations):
    c = eplab.codecs.create("fp32")
    data = c.encode(activations)
    assert isinstance(data, bytes)
    assert len(data) == c.encoded_size(activations.shape) == activations.size * 4
    np.testing.assert_array_equal(c.decode(data, activations.shape), activations)
    assert c.lossless and c.error_bound == 0


@pytest.mark.parametrize("spec", ["fp8-e4m3-b128", "int8-token", "bf16", "mxfp4", "topk:ratio=0.5+zstd"])
def test_lossy_round_trip_within_bound(spec, activations):
    c = eplab.codecs.create(spec)
    m = eplab.codecs.evaluate(c, activations)
    assert m["codec"] == c.name
    assert 0 < m["rel_l2_error"] <= c.error_bound_for(activations.shape[1]) + 1e-6
    if c.fixed_rate:
        assert m["bytes"] == c.encoded_size(activations.shape)
    assert m["bytes"] <= c.max_encoded_size(activations.shape)
    assert m["bits_per_element"] < 32


def test_fp8_is_a_quarter_of_fp32_plus_scales(activations):
    c = eplab.codecs.create("fp8-e4m3-b128")
    size = c.encoded_size(activations.shape)
    assert activations.size <= size < activations.size * 1.1


def test_unknown_spec_raises_eplab_error():
    with pytest.raises(eplab.Error, match="known codecs"):
        eplab.codecs.create("no-such-codec")


def test_truncated_buffer_raises_eplab_error(activations):
    c = eplab.codecs.create("fp8-e4m3-b128")
    data = c.encode(activations)
    with pytest.raises(eplab.Error, match="fp8-e4m3-b128"):
        c.decode(data[:-5], activations.shape)


def test_catalog_lists_kinds():
    df = eplab.codecs.catalog()
    assert {"quantizer", "lossless"} <= set(df["kind"])
    assert "fp8-e4m3-b128" in set(df["name"])


def test_python_codec_direct_and_through_the_registry(activations):
    codec = HalfCodec()
    assert codec.name == "py-half" and not codec.lossless
    data = codec.encode(activations)
    assert len(data) == codec.encoded_size(activations.shape)
    name = eplab.codecs.register(codec)
    assert name == "py-half" and "py-half" in eplab.codecs.registered()
    # What the engine gets from create_codec(): C++ calling back into the Python object.
    via_cpp = eplab.codecs.create("py-half")
    assert via_cpp.name == "py-half"
    assert via_cpp.encode(activations) == data
    y = via_cpp.decode(data, activations.shape)
    assert np.abs(y - activations).max() < 1e-2
    assert codec.calls["encode"] == 2 and codec.calls["decode"] == 1
    eplab.codecs.unregister("py-half")
    with pytest.raises(eplab.Error):
        eplab.codecs.create("py-half")


def test_python_codec_cannot_shadow_a_builtin():
    class Fake(HalfCodec):
        name = "fp8-e4m3-b128"

    with pytest.raises(eplab.Error, match="built-in"):
        eplab.codecs.register(Fake())


def test_python_codec_without_encode_is_an_eplab_error(activations):
    class Empty(eplab.Codec):
        name = "empty"

    with pytest.raises(eplab.Error, match="must define encode"):
        eplab.codecs.register(Empty()) and eplab.codecs.create("empty").encode(activations)
    eplab.codecs.unregister("empty")


class ChargedHalf(HalfCodec):
    """conftest's fp16 codec with its own GPU time model."""

    name = "py-charged-half"

    def gpu_seconds(self, shape, encode):
        return 1e-3 if encode else 2e-3


class NativeHalf(ChargedHalf):
    """gemm_native: the expert GEMM reads the encoded form."""

    name = "py-native-half"
    gemm_native = True


@pytest.mark.skipif(not HAS_SIM, reason="the sim backend is not built")
def test_python_gpu_seconds_and_gemm_native_reach_the_simulator():
    base = dict(backend="sim", nodes=1, gpus_per_node=4, model="mixtral-8x7b", tokens=64, routing="uniform")
    charged = eplab.run(**base, dispatch_codec=ChargedHalf()).report["phases"]["dispatch"]["codec_s"]
    native = eplab.run(**base, dispatch_codec=NativeHalf()).report["phases"]["dispatch"]["codec_s"]
    assert charged == pytest.approx(3e-3, rel=1e-6)  # encode, then decode at the receiver
    assert native == pytest.approx(1e-3, rel=1e-6)  # the GEMM takes the encoded form: no decode


class ShortHalf(ChargedHalf):
    """Says two bytes per element and sends one byte less."""

    name = "py-short-half"

    def encode(self, x):
        return super().encode(x)[:-1]

    def decode(self, data, shape):
        return super().decode(data + b"\0", shape)


def test_fixed_rate_codec_whose_size_disagrees_is_an_error():
    with pytest.raises(eplab.Error, match=r"encoded_size\(\) says"):
        eplab.run(**SMALL, dispatch_codec=ShortHalf())


def test_variable_rate_codec_may_differ_from_its_estimate():
    class Estimated(ShortHalf):
        name = "py-estimated-half"
        fixed_rate = False

    assert eplab.run(**SMALL, dispatch_codec=Estimated()).verified
