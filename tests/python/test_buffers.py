# Every binding that takes an array, fed the arrays a caller may hand it by accident: non-contiguous views,
# negative strides, the wrong dtype and zero-size arrays. Each must give the result it gives for the same values
# as a plain C-contiguous array of the right dtype, or raise a Python exception that says what is wrong: never
# read the wrong bytes, wrap a value, or crash the interpreter.
import json

import numpy as np
import pytest

import eplab
import eplab.policies
import eplab.traces

CLEAN = (eplab.Error, ValueError, TypeError)


def strided(a):
    """The same values as `a` in a view whose rows are not contiguous (every other column of a wider array)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = a
    v = wide[..., ::2]
    assert not v.flags.c_contiguous and np.array_equal(v, a)
    return v


def reversed_view(a):
    """The same values as `a` in a view with a negative stride on the last axis."""
    v = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    assert v.strides[-1] < 0 and np.array_equal(v, a)
    return v


def layouts(a):
    return {"strided": strided(a), "negative-stride": reversed_view(a)}


@pytest.fixture
def x():
    rng = np.random.default_rng(11)
    return rng.standard_normal((6, 256)).astype(np.float32)


# --- codecs: encode, decode, calibrate --------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["fp32", "fp8-e4m3-b128", "int8-token", "topk:ratio=0.25+bf16+zstd"])
def test_codec_encode_reads_any_layout_as_its_values(spec, x):
    want = eplab.codecs.create(spec).encode(x)
    for name, view in layouts(x).items():
        assert eplab.codecs.create(spec).encode(view) == want, name


def test_codec_encode_converts_other_float_dtypes_and_refuses_what_is_not_numeric(x):
    c = eplab.codecs.create("fp32")
    assert c.encode(x.astype(np.float64)) == c.encode(x)  # float32 values survive the float64 round trip
    ints = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert c.encode(ints) == c.encode(ints.astype(np.float32))
    with pytest.raises(CLEAN):
        c.encode(np.array([["a", "b"]]))
    with pytest.raises(CLEAN):
        c.encode(np.zeros((2, 2, 2), dtype=np.float32))


@pytest.mark.parametrize("spec", ["fp32", "bf16", "fp8-e4m3-b128", "int8-token", "mxfp4", "logfmt10",
                                  "topk:ratio=0.25", "delta", "bf16+zstd", "bf16+lz4"])
def test_codec_zero_size_round_trips(spec):
    c = eplab.codecs.create(spec)
    for shape in [(0, 64), (3, 0), (0, 0)]:
        data = c.encode(np.zeros(shape, dtype=np.float32))
        y = np.asarray(c.decode(data, shape))
        assert y.shape == shape


def test_codec_decode_reads_a_non_contiguous_or_reversed_buffer_as_its_bytes(x):
    c = eplab.codecs.create("bf16")
    data = np.frombuffer(c.encode(x), dtype=np.uint8)
    want = np.asarray(c.decode(data.tobytes(), x.shape))
    for name, view in layouts(data.reshape(x.shape[0], -1)).items():
        got = np.asarray(c.decode(view, x.shape))
        assert np.array_equal(got, want), name
    assert np.array_equal(np.asarray(c.decode(memoryview(data), x.shape)), want)
    assert np.array_equal(np.asarray(c.decode(bytearray(data.tobytes()), x.shape)), want)


def test_codec_decode_of_a_wrong_size_or_empty_buffer_is_an_error(x):
    c = eplab.codecs.create("fp8-e4m3-b128")
    data = c.encode(x)
    for bad in [data[:-1], data + b"\0", b"", np.zeros(0, dtype=np.uint8)]:
        with pytest.raises(CLEAN):
            c.decode(bad, x.shape)


def test_codec_shapes_are_checked_before_they_are_narrowed():
    c = eplab.codecs.create("fp32")
    for shape in [(2**32 + 1, 1), (1, 2**32 + 1), (-1, 4), (4,), (1, 2, 3)]:
        with pytest.raises(CLEAN):
            c.decode(b"", shape)
        with pytest.raises(CLEAN):
            c.encoded_size(shape)


def test_codec_calibrate_takes_any_layout(x):
    c = eplab.codecs.create("topk:ratio=0.25+zstd")
    for view in layouts(x).values():
        c.calibrate(view)
    c.calibrate(np.zeros((0, 256), dtype=np.float32))
    assert c.encoded_size((6, 256)) > 0


# --- heat predictors, balancers, EPLB -------------------------------------------------------------------------

LOAD = np.array([5.0, 1.0, 0.0, 9.0, 3.0, 3.0, 7.0, 2.0])


def test_heat_predictor_observe_reads_values_not_memory():
    want = eplab.create_heat_predictor("ema:alpha=0.5")
    want.observe(LOAD)
    for view in [LOAD[::-1][::-1].copy()[::1], strided(LOAD), reversed_view(LOAD), LOAD.astype(np.int32)]:
        h = eplab.create_heat_predictor("ema:alpha=0.5")
        h.observe(view)
        assert np.array_equal(h.predict(), want.predict())


def test_heat_predictor_refuses_a_changed_expert_count_or_not_numbers():
    h = eplab.create_heat_predictor("window:w=3")
    h.observe(LOAD)
    for bad in [LOAD[:3], np.zeros(0), np.array(["x"] * 8), LOAD.reshape(2, 4)]:
        with pytest.raises(CLEAN):
            h.observe(bad)
    assert len(h.predict()) == len(LOAD)


def test_forecast_mape_and_heat_eval_check_their_shapes():
    assert eplab.forecast_mape(strided(LOAD), reversed_view(LOAD)) == 0
    with pytest.raises(CLEAN):
        eplab.forecast_mape(LOAD, LOAD[:5])
    loads = np.stack([LOAD, LOAD * 2, LOAD + 1])
    want = eplab.heat_eval(eplab.create_heat_predictor("last"), loads)
    for view in layouts(loads).values():
        assert np.array_equal(eplab.heat_eval(eplab.create_heat_predictor("last"), view), want)
    assert len(eplab.heat_eval(eplab.create_heat_predictor("last"), np.zeros((0, 8)))) == 0
    # No expert has load: the MAPE over experts with load > 0 is 0 for each step after the first, as documented.
    assert list(eplab.heat_eval(eplab.create_heat_predictor("last"), np.zeros((3, 0)))) == [0, 0]


def test_rank_load_checks_the_placement_against_the_heat():
    slots = np.arange(8, dtype=np.int32).reshape(4, 2)
    want = eplab.rank_load(slots, 8, LOAD)
    for view in layouts(slots).values():
        assert np.array_equal(eplab.rank_load(view, 8, reversed_view(LOAD)), want)
    assert np.array_equal(eplab.rank_load(slots.astype(np.int64), 8, LOAD), want)
    for bad_slots, experts, heat in [(slots, 8, LOAD[:4]), (slots, 4, LOAD), (np.zeros((0, 2), np.int32), 8, LOAD),
                                     (slots + 2**32, 8, LOAD), (slots.astype(np.float64) + 0.5, 8, LOAD)]:
        with pytest.raises(CLEAN):
            eplab.rank_load(bad_slots, experts, heat)


def test_balancer_balance_reads_views_and_checks_current():
    b = eplab.create_balancer("eplb")
    heat = np.linspace(1, 16, 16)
    want = b.balance(heat, nodes=1, gpus_per_node=4, redundant=4, model=MODEL16)
    for view in layouts(heat).values():
        got = b.balance(view, nodes=1, gpus_per_node=4, redundant=4, model=MODEL16)
        assert np.array_equal(got["slot_expert"], want["slot_expert"])
    cur = want["slot_expert"]
    assert b.balance(heat, nodes=1, gpus_per_node=4, redundant=4, model=MODEL16, current=strided(cur))
    for bad in [cur[:, :-1], np.zeros((0,), np.int32), cur.astype(np.float64) + 0.5, cur + 2**32]:
        with pytest.raises(CLEAN):
            b.balance(heat, nodes=1, gpus_per_node=4, redundant=4, model=MODEL16, current=bad)
    with pytest.raises(CLEAN):
        b.balance(np.zeros(0), nodes=1, gpus_per_node=4, redundant=4, model=MODEL16)


def _model16():
    m = eplab.model("mixtral-8x7b")
    m.update(name="m16", num_experts=16, topk=2, num_expert_groups=1)
    return m


MODEL16 = json.dumps(_model16())


def test_eplb_functions_take_views_and_refuse_empty_or_wrong_arrays():
    w = np.array([[10.0, 1, 3, 7, 2, 8, 4, 5]])
    want = eplab.policies.rebalance_experts(w, 16, 4, 2, 8)
    for view in layouts(w).values():
        got = eplab.policies.rebalance_experts(view, 16, 4, 2, 8)
        assert all(np.array_equal(a, b) for a, b in zip(got, want))
    for bad in [np.zeros((0, 8)), np.zeros((1, 0)), np.zeros(8), np.array([["a"] * 8])]:
        with pytest.raises(CLEAN):
            eplab.policies.rebalance_experts(bad, 16, 4, 2, 8)
    pack = eplab.policies.balanced_packing(w[0], 4)
    assert all(np.array_equal(a, b) for a, b in zip(eplab.policies.balanced_packing(reversed_view(w[0]), 4), pack))
    rep = eplab.policies.replicate_experts(w[0], 12)
    assert all(np.array_equal(a, b) for a, b in zip(eplab.policies.replicate_experts(strided(w[0:1])[0], 12), rep))
    assert [len(a) for a in eplab.policies.balanced_packing(np.zeros(0), 4)] == [0, 0]  # no items, no packing
    # replicate_experts of no experts into 4 slots read past the empty load vector (a segfault) before it was refused.
    for call in [lambda: eplab.policies.replicate_experts(np.zeros(0), 4),
                 lambda: eplab.policies.balanced_packing(w[0], 0),
                 lambda: eplab.policies.replicate_experts(w[0], 4)]:
        with pytest.raises(CLEAN):
            call()


# --- routing given as arrays ----------------------------------------------------------------------------------

def _routing(ranks=4, tokens=16, topk=2, experts=8):
    rng = np.random.default_rng(5)
    if tokens == 0:
        return np.zeros((ranks, 0, topk), np.int32), np.zeros((ranks, 0, topk), np.float32)
    idx = np.stack([np.stack([rng.choice(experts, topk, replace=False) for _ in range(tokens)]) for _ in range(ranks)])
    return idx.astype(np.int32), np.full(idx.shape, 1.0 / topk, dtype=np.float32)


def _batches(src, ranks=4):
    return [src.batch(0, 0, r) for r in range(ranks)] if hasattr(src, "batch") else None


def test_routing_arrays_take_views_and_other_integer_dtypes():
    idx, w = _routing()
    want = eplab.traces.from_arrays(idx, w)
    for view in [strided(idx), reversed_view(idx), idx.astype(np.int64), idx.astype(np.uint8)]:
        got = eplab.traces.from_arrays(view, reversed_view(w))
        assert got.name == want.name
    assert eplab.traces.from_arrays([strided(a) for a in idx], [reversed_view(a) for a in w])


def test_routing_arrays_refuse_ids_that_are_not_integers_or_do_not_fit():
    idx, w = _routing()
    for bad in [idx + 0.5, idx.astype(np.int64) + 2**32, np.full(idx.shape, -2**31 - 5, dtype=np.int64),
                idx.astype(bool), np.array(idx, dtype=object).astype(str)]:
        with pytest.raises(CLEAN):
            eplab.traces.from_arrays(bad, w)
    with pytest.raises(CLEAN):
        eplab.traces.from_arrays([idx[0] + 0.5, idx[1]])
    with pytest.raises(CLEAN):
        eplab.traces.from_arrays(idx, w[:, :3])


def test_a_run_on_views_of_routing_arrays_matches_the_contiguous_run():
    idx, w = _routing()
    opts = dict(backend="emu", nodes=2, gpus_per_node=2, tokens=16, hidden=128, model=_model16(), timeout_s=20)
    want = eplab.run(**opts, routing=idx, weights=w)
    got = eplab.run(**opts, routing=reversed_view(idx), weights=strided(w))
    assert got.verified and want.verified
    assert got.report["phases"]["dispatch"]["bytes"] == want.report["phases"]["dispatch"]["bytes"]


def test_zero_token_routing_arrays_run_or_are_refused_by_name():
    idx, w = _routing(tokens=0)
    opts = dict(backend="emu", nodes=2, gpus_per_node=2, tokens=16, hidden=128, model=_model16(), timeout_s=20)
    try:
        r = eplab.run(**opts, routing=idx, weights=w)
    except CLEAN as e:
        assert "token" in str(e).lower() or "routing" in str(e).lower()
    else:
        assert r.report["tokens_per_rank"] == 0
