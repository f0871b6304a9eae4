# eplab.Buffer (DeepEP's per-call API) against NumPy references written here from DeepEP's definitions: the
# layout, the rows each rank receives, combine's sums, cached dispatch, dtypes and the errors.
import os

import numpy as np
import pytest

import eplab
from buffer_reference import (ALGORITHMS, EXPERTS, GPUS, HIDDEN, NODES, RANKS, TOKENS, bf16_bits, bf16_value,
                              exact_rows, reached, routing)
from conftest import HAS_SIM


def buffer(algorithm="hierarchical", **kw):
    args = dict(backend="emu", nodes=NODES, gpus_per_node=GPUS, num_experts=EXPERTS, hidden=HIDDEN,
                algorithm=algorithm, timeout_s=20)
    args.update(kw)
    return eplab.Buffer(**args)


# -- layout ---------------------------------------------------------------------------------------------------

def test_layout_matches_an_independent_numpy_layout():
    idx, _ = routing(seed=3)
    buf = buffer()
    epr, per_node = EXPERTS // RANKS, GPUS
    for r in range(RANKS):
        layout = buf.get_dispatch_layout(idx, EXPERTS, rank=r)
        mine = idx[r]
        in_rank = np.stack([((mine >= q * epr) & (mine < (q + 1) * epr)).any(1) for q in range(RANKS)], axis=1)
        in_node = np.stack([in_rank[:, n * per_node:(n + 1) * per_node].any(1) for n in range(NODES)], axis=1)
        per_expert = np.array([(mine == e).sum() for e in range(EXPERTS)])
        np.testing.assert_array_equal(layout.is_token_in_rank, in_rank)
        assert layout.is_token_in_rank.dtype == np.bool_
        np.testing.assert_array_equal(layout.num_tokens_per_rank, in_rank.sum(0))
        np.testing.assert_array_equal(layout.num_tokens_per_rdma_rank, in_node.sum(0))
        np.testing.assert_array_equal(layout.num_tokens_per_expert, per_expert)
        # DeepEP's tuple order
        a, b, c, d, event = layout
        assert a is layout.num_tokens_per_rank and d is layout.is_token_in_rank and event is None
        # the same batch on its own, without rank=
        np.testing.assert_array_equal(buf.get_dispatch_layout(mine, EXPERTS).num_tokens_per_expert, per_expert)


def test_one_node_has_no_rdma_counts_as_in_deepep():
    buf = eplab.Buffer(backend="emu", nodes=1, gpus_per_node=4, num_experts=8, hidden=16)
    idx, _ = routing(ranks=1, experts=8, topk=2)
    assert buf.get_dispatch_layout(idx[0], 8).num_tokens_per_rdma_rank is None


def test_layout_errors():
    buf = buffer()
    idx, _ = routing()
    with pytest.raises(ValueError, match="rank=r"):
        buf.get_dispatch_layout(idx, EXPERTS)
    with pytest.raises(ValueError, match="num_experts"):
        buf.get_dispatch_layout(idx[0], EXPERTS + 1)
    bad = idx[0].copy()
    bad[0, 0] = EXPERTS
    with pytest.raises(ValueError, match="topk_idx"):
        buf.get_dispatch_layout(bad, EXPERTS)
    with pytest.raises(TypeError, match="topk_idx"):
        buf.get_dispatch_layout(idx[0].astype(np.float32), EXPERTS)


# -- dispatch and combine -------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_dispatch_delivers_deepep_rows_and_combine_sums_them(algorithm):
    idx, w = routing(seed=4)
    x = exact_rows()
    buf = buffer(algorithm)
    res = buf.dispatch(x, topk_idx=idx, topk_weights=w)
    recv_x, recv_idx, recv_w, counts, handle, event = res
    assert event is None and res.handle is handle
    hit = reached(idx)
    epr = EXPERTS // RANKS
    for r in range(RANKS):
        src, tok = np.nonzero(hit[:, :, r])  # source-major, then token: DeepEP's order
        np.testing.assert_array_equal(res.recv_src_rank[r], src)
        np.testing.assert_array_equal(res.recv_src_token[r], tok)
        np.testing.assert_array_equal(recv_x[r], x[src, tok])
        sel = idx[src, tok]
        mine = (sel >= r * epr) & (sel < (r + 1) * epr)
        np.testing.assert_array_equal(recv_idx[r], np.where(mine, sel - r * epr, -1))
        assert recv_idx[r].dtype == np.int64
        np.testing.assert_array_equal(recv_w[r], np.where(mine, w[src, tok], 0))
        assert counts[r] == [int((idx[..., :] == r * epr + e).sum()) for e in range(epr)]
    out, out_w, event = buf.combine(recv_x, handle)
    assert out_w is None and event is None
    times = hit.sum(-1)  # ranks each token reached
    for r in range(RANKS):
        np.testing.assert_array_equal(out[r], x[r] * times[r][:, None])  # exact: few mantissa bits


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_combine_of_arbitrary_fp32_rows(algorithm):
    idx, w = routing(seed=5)
    x = np.random.default_rng(6).standard_normal((RANKS, TOKENS, HIDDEN)).astype(np.float32)
    buf = buffer(algorithm)
    res = buf.dispatch(x, topk_idx=idx, topk_weights=w)
    # expert computation: a per-rank function of the row and the rank's weights (sums stay in the rows' order)
    y = [rx * (1 + r) + np.float32(0.5) for r, rx in enumerate(res.recv_x)]
    out = buf.combine(y, res.handle).combined_x
    hit = reached(idx)
    for s in range(RANKS):
        ref = np.zeros((TOKENS, HIDDEN), dtype=np.float64)
        for r in range(RANKS):
            ref += hit[s, :, r][:, None] * (x[s].astype(np.float64) * (1 + r) + 0.5)
        np.testing.assert_allclose(out[s], ref, rtol=1e-5, atol=1e-5)


def test_combined_topk_weights_rebuild_the_senders_weights():
    idx, w = routing(seed=7)
    buf = buffer()
    res = buf.dispatch(exact_rows(), topk_idx=idx, topk_weights=w)
    _, weights, _ = buf.combine(res.recv_x, res.handle, topk_weights=res.recv_topk_weights)
    for r in range(RANKS):
        np.testing.assert_allclose(weights[r], np.where(idx[r] >= 0, w[r], 0), rtol=1e-6)


def test_bf16_rows_travel_as_bf16():
    idx, w = routing(seed=8)
    rng = np.random.default_rng(9)
    bits = bf16_bits(rng.standard_normal((RANKS, TOKENS, HIDDEN)).astype(np.float32))
    buf = buffer()
    res = buf.dispatch(bits, topk_idx=idx, topk_weights=w)
    hit = reached(idx)
    for r in range(RANKS):
        assert res.recv_x[r].dtype == np.uint16
        src, tok = np.nonzero(hit[:, :, r])
        np.testing.assert_array_equal(res.recv_x[r], bits[src, tok])  # bit for bit
    out = buf.combine(res.recv_x, res.handle).combined_x
    times = hit.sum(-1)
    for r in range(RANKS):
        assert out[r].dtype == np.uint16
        ref = bf16_value(bits[r]) * times[r][:, None]
        # summed in fp32; the forwarder's partial sum and the result rounded to bf16 (unit roundoff 2^-8 each)
        np.testing.assert_allclose(bf16_value(out[r]), ref, rtol=(1 + 2 ** -8) ** 2 - 1, atol=0)


def test_bf16_exact_values_combine_exactly():
    idx, w = routing(seed=10)
    x = exact_rows(seed=11)
    buf = buffer()
    res = buf.dispatch(bf16_bits(x), topk_idx=idx, topk_weights=w)
    out = buf.combine(res.recv_x, res.handle).combined_x
    times = reached(idx).sum(-1)
    for r in range(RANKS):
        np.testing.assert_array_equal(bf16_value(out[r]), x[r] * times[r][:, None])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cached_dispatch_reuses_the_layout(algorithm):
    idx, w = routing(seed=12)
    buf = buffer(algorithm)
    first = buf.dispatch(exact_rows(seed=13), topk_idx=idx, topk_weights=w)
    x2 = exact_rows(seed=14)
    again = buf.dispatch(x2, handle=first.handle)
    recv_x, a, b, c, d, e = again
    assert (a, b, c, d, e) == (None, None, None, None, None)  # DeepEP's cached dispatch returns recv_x only
    fresh = buf.dispatch(x2, topk_idx=idx, topk_weights=w)
    for r in range(RANKS):
        np.testing.assert_array_equal(recv_x[r], fresh.recv_x[r])
    out = buf.combine(recv_x, first.handle).combined_x
    times = reached(idx).sum(-1)
    for r in range(RANKS):
        np.testing.assert_array_equal(out[r], x2[r] * times[r][:, None])
    # the handle stays valid: combine again, dispatch again
    out2 = buf.combine(recv_x, first.handle).combined_x
    for r in range(RANKS):
        np.testing.assert_array_equal(out2[r], out[r])
    third = buf.dispatch(x2, handle=first.handle)
    np.testing.assert_array_equal(third.recv_x[0], recv_x[0])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fp8_codes_and_scales_arrive_unchanged(algorithm):
    hidden = 256
    idx, w = routing(seed=15)
    rng = np.random.default_rng(16)
    # DeepEP's per-token cast makes each 128-channel block's largest |code| 448 (0x7E): codes that re-encode as
    # themselves. 0x80 (-0) and the NaN codes are left out.
    codes = rng.integers(0, 0x7E, size=(RANKS, TOKENS, hidden)).astype(np.uint8)
    codes |= (rng.random(codes.shape) < 0.5).astype(np.uint8) << 7
    codes[codes == 0x80] = 0
    codes[:, :, ::128] = 0x7E
    amax = (rng.random((RANKS, TOKENS, hidden // 128)) * 10 + 0.01).astype(np.float32)
    scales = amax / np.float32(448)  # DeepEP's scale_inv of a block whose amax is `amax`
    buf = buffer(algorithm, hidden=hidden)
    res = buf.dispatch((codes, scales), topk_idx=idx, topk_weights=w)
    hit = reached(idx)
    for r in range(RANKS):
        got_codes, got_scales = res.recv_x[r]
        src, tok = np.nonzero(hit[:, :, r])
        np.testing.assert_array_equal(got_codes, codes[src, tok])
        np.testing.assert_array_equal(got_scales, scales[src, tok])


def test_zero_tokens_and_negative_strides_are_handled():
    idx, w = routing(seed=17)
    x = exact_rows(seed=18)
    idx[1] = -1  # rank 1's tokens select nothing
    buf = buffer()
    lists = [x[r] for r in range(RANKS)]
    lists[2] = x[2][:0]  # rank 2 has no tokens at all
    ids = [idx[r] for r in range(RANKS)]
    ids[2] = idx[2][:0]
    ws = [w[r] for r in range(RANKS)]
    ws[2] = w[2][:0]
    res = buf.dispatch(lists, topk_idx=ids, topk_weights=ws)
    out = buf.combine(res.recv_x, res.handle).combined_x
    assert out[2].shape == (0, HIDDEN)
    np.testing.assert_array_equal(out[1], np.zeros((TOKENS, HIDDEN), np.float32))
    # reversed views (negative strides) give what their contiguous copies give
    rev_x, rev_idx, rev_w = x[:, ::-1], idx[:, ::-1], w[:, ::-1]
    a = buf.dispatch(rev_x, topk_idx=rev_idx, topk_weights=rev_w)
    b = buf.dispatch(np.ascontiguousarray(rev_x), topk_idx=np.ascontiguousarray(rev_idx),
                     topk_weights=np.ascontiguousarray(rev_w))
    for r in range(RANKS):
        np.testing.assert_array_equal(a.recv_x[r], b.recv_x[r])


def test_dispatch_errors_name_the_argument():
    idx, w = routing()
    x = exact_rows()
    buf = buffer()
    with pytest.raises(TypeError, match="x"):
        buf.dispatch(x.astype(np.float64), topk_idx=idx, topk_weights=w)
    with pytest.raises(ValueError, match="hidden"):
        buf.dispatch(x[:, :, :32], topk_idx=idx, topk_weights=w)
    with pytest.raises(ValueError, match="stacked over 3 ranks"):
        buf.dispatch(x[:3], topk_idx=idx, topk_weights=w)
    with pytest.raises(ValueError, match="topk_idx"):
        buf.dispatch(x, topk_idx=idx[:, :5], topk_weights=w[:, :5])
    bad = idx.copy()
    bad[0, 0, 0] = -2
    with pytest.raises(ValueError, match="topk_idx"):
        buf.dispatch(x, topk_idx=bad, topk_weights=w)
    with pytest.raises(TypeError, match="topk_weights"):
        buf.dispatch(x, topk_idx=idx, topk_weights=idx)
    with pytest.raises(ValueError, match="topk_weights"):
        buf.dispatch(x, topk_idx=idx, topk_weights=w[:, :, :2])
    with pytest.raises(ValueError, match="topk_idx is required"):
        buf.dispatch(x, topk_weights=w)
    layout = buf.get_dispatch_layout(idx, EXPERTS, rank=0)
    wrong = [buf.get_dispatch_layout(idx, EXPERTS, rank=r).num_tokens_per_rank for r in range(RANKS)]
    wrong[1] = wrong[1] + 1
    with pytest.raises(ValueError, match=r"num_tokens_per_rank\[1\]"):
        buf.dispatch(x, topk_idx=idx, topk_weights=w, num_tokens_per_rank=wrong)
    assert layout.num_tokens_per_rank.sum() > 0


def test_combine_errors():
    idx, w = routing()
    buf, other = buffer(), buffer()
    res = buf.dispatch(exact_rows(), topk_idx=idx, topk_weights=w)
    with pytest.raises(ValueError, match="handle"):
        other.combine(res.recv_x, res.handle)
    with pytest.raises(ValueError, match=r"x\[0\]"):
        buf.combine([r[1:] for r in res.recv_x], res.handle)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        buf.combine([r.astype(np.float64) for r in res.recv_x], res.handle)
    codes = [np.zeros((len(r), HIDDEN), np.uint8) for r in res.recv_x]
    with pytest.raises(TypeError, match="fp8"):
        buf.combine((codes, [np.ones((len(r), 1), np.float32) for r in res.recv_x]), res.handle)
    with pytest.raises(ValueError, match="handle"):
        buf.dispatch(exact_rows(), handle=object())


def test_buffer_construction_errors():
    with pytest.raises(eplab.Error, match="low_latency"):
        buffer("low-latency")
    with pytest.raises(eplab.Error, match="divide"):
        buffer(num_experts=EXPERTS + 2)
    with pytest.raises(eplab.Error):
        buffer(backend="no-such-backend")
    with pytest.raises(ValueError, match="hidden"):
        buffer(hidden=0)
    with pytest.raises(TypeError, match="num_experts"):
        eplab.Buffer(backend="emu", nodes=1, gpus_per_node=2, hidden=8)


@pytest.mark.skipif("mpi" not in eplab.backends(), reason="this build has no mpi backend")
@pytest.mark.skipif(any(v in os.environ for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")),
                    reason="started by an MPI launcher")
def test_mpi_outside_mpirun_says_how_to_start_it():
    # One rank per process: a lone process cannot hold a 4-rank Buffer (tests/python/mpi_buffer.py runs it under
    # mpirun).
    with pytest.raises(eplab.Error, match=r"one rank per process.*4 ranks.*1 process.*mpirun -n 4"):
        buffer(backend="mpi")


def test_an_in_process_buffer_holds_every_rank():
    buf = buffer()
    assert buf.rank is None and buf.get_rank() is None and buf.num_ranks == RANKS


def test_expert_alignment_rounds_the_per_expert_counts_up():
    idx, w = routing(seed=23)
    buf = buffer()
    plain = buf.dispatch(exact_rows(), topk_idx=idx, topk_weights=w).num_recv_tokens_per_expert_list
    aligned = buf.dispatch(exact_rows(), topk_idx=idx, topk_weights=w,
                           expert_alignment=4).num_recv_tokens_per_expert_list
    for p, a in zip(plain, aligned):
        assert a == [-(-c // 4) * 4 for c in p] and all(c % 4 == 0 for c in a)
    with pytest.raises(ValueError, match="expert_alignment"):
        buf.dispatch(exact_rows(), topk_idx=idx, topk_weights=w, expert_alignment=0)


def test_emu_time_is_wall_clock():
    idx, w = routing()
    res = buffer().dispatch(exact_rows(), topk_idx=idx, topk_weights=w)
    assert res.simulated is False and res.time_s > 0


@pytest.mark.skipif(not HAS_SIM, reason="this build has no SimGrid backend")
def test_sim_moves_the_same_rows_and_models_time():
    idx, w = routing(seed=19)
    x = exact_rows(seed=20)
    emu, sim = buffer(), buffer(backend="sim")
    a = emu.dispatch(x, topk_idx=idx, topk_weights=w)
    b = sim.dispatch(x, topk_idx=idx, topk_weights=w)
    assert b.simulated and b.time_s > 0 and b.notify_time_s > 0
    for r in range(RANKS):
        np.testing.assert_array_equal(a.recv_x[r], b.recv_x[r])
    out = sim.combine(b.recv_x, b.handle)
    assert out.simulated and out.time_s > 0
    times = reached(idx).sum(-1)
    for r in range(RANKS):
        np.testing.assert_array_equal(out.combined_x[r], x[r] * times[r][:, None])
    cached = sim.dispatch(x, handle=b.handle)
    assert cached.notify_time_s == 0 and 0 < cached.time_s < b.time_s  # the count exchange is skipped


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch", reason="torch is optional and not installed here")
    idx, w = routing(seed=21)
    x = exact_rows(seed=22)
    buf = buffer()
    res = buf.dispatch(torch.from_numpy(x).to(torch.bfloat16), topk_idx=torch.from_numpy(idx),
                       topk_weights=torch.from_numpy(w))
    assert res.recv_x[0].dtype == torch.bfloat16 and res.recv_topk_idx[0].dtype == torch.int64
    out = buf.combine(res.recv_x, res.handle).combined_x
    times = reached(idx).sum(-1)
    for r in range(RANKS):
        np.testing.assert_array_equal(out[r].float().numpy(), x[r] * times[r][:, None])
    layout = buf.get_dispatch_layout(torch.from_numpy(idx[0]), EXPERTS)
    assert isinstance(layout.is_token_in_rank, torch.Tensor)
