# eplab.Buffer on the mpi backend, one rank per process as in DeepEP. Run by ctest as
#   mpirun -n 4 python3 tests/python/mpi_buffer.py
# (not collected by pytest: it needs mpirun). Every process regenerates every rank's routing and activations from
# a shared seed and checks its own rank's results against the NumPy references of buffer_reference.py: the
# layout, the received rows in DeepEP's order with local expert indices and weights, the per-expert counts,
# combine's sums and summed weights, cached dispatch, bf16 rows, and fp8 rows with one rank dispatching no tokens.
# The ranks' verdicts are then gathered through one more dispatch, and rank 0 prints the summary line ctest
# matches only when every rank passed.
import sys
import traceback

import numpy as np

import eplab
from buffer_reference import (ALGORITHMS, EXPERTS, GPUS, HIDDEN, NODES, RANKS, TOKENS, bf16_bits,
                              exact_rows, expected_recv, reached, routing)

EPR = EXPERTS // RANKS


class Checks:
    def __init__(self, rank):
        self.rank, self.count, self.failures = rank, 0, []

    def check(self, ok, what):
        self.count += 1
        if not ok:
            self.failures.append(what)
            print(f"rank {self.rank}: FAILED {what}", flush=True)


def check_algorithm(c, algorithm):
    buf = eplab.Buffer(backend="mpi", nodes=NODES, gpus_per_node=GPUS, num_experts=EXPERTS, hidden=HIDDEN,
                       algorithm=algorithm, timeout_s=30)
    me = c.rank = buf.rank
    c.check(buf.num_ranks == RANKS and me is not None and 0 <= me < RANKS, f"{algorithm}: rank {me} of {RANKS}")
    idx, w = routing(seed=11)
    x = exact_rows(seed=12)
    reach = reached(idx)

    layout = buf.get_dispatch_layout(idx[me], EXPERTS)
    c.check(np.array_equal(layout.num_tokens_per_rank, reach[me].sum(0)), f"{algorithm}: num_tokens_per_rank")
    c.check(np.array_equal(layout.is_token_in_rank, reach[me]), f"{algorithm}: is_token_in_rank")
    try:
        buf.get_dispatch_layout(idx[me], EXPERTS, rank=(me + 1) % RANKS)
        c.check(False, f"{algorithm}: get_dispatch_layout of another rank is refused")
    except ValueError as e:
        c.check("its own" in str(e), f"{algorithm}: the refusal says why ({e})")

    res = buf.dispatch(x[me], topk_idx=idx[me], topk_weights=w[me], num_tokens_per_rank=layout.num_tokens_per_rank)
    src, tok, rows, topk_idx, topk_w, counts = expected_recv(me, idx, w, x)
    c.check(np.array_equal(res.recv_src_rank, src) and np.array_equal(res.recv_src_token, tok),
            f"{algorithm}: received rows' sources in DeepEP's order")
    c.check(np.array_equal(res.recv_x, rows), f"{algorithm}: received rows (fp32, exact)")
    c.check(np.array_equal(res.recv_topk_idx, topk_idx), f"{algorithm}: recv_topk_idx")
    c.check(np.array_equal(res.recv_topk_weights, topk_w), f"{algorithm}: recv_topk_weights")
    c.check(list(res.num_recv_tokens_per_expert_list) == counts, f"{algorithm}: tokens per local expert")
    h = res.handle
    c.check(h.num_tokens == TOKENS and h.num_recv_tokens == len(src), f"{algorithm}: handle sizes")

    # Combine: each rank scales its rows by (rank + 1), so token t comes back times the sum of (r + 1) over the
    # ranks it reached; a row sent back to the wrong source or token shows. The weights come back summed too.
    y = res.recv_x * np.float32(me + 1)
    comb = buf.combine(y, h, topk_weights=res.recv_topk_weights)
    factor = (reach[me] * np.arange(1, RANKS + 1)).sum(1).astype(np.float32)
    c.check(np.array_equal(comb.combined_x, x[me] * factor[:, None]), f"{algorithm}: combined rows (fp32, exact)")
    c.check(np.array_equal(comb.combined_topk_weights, np.where(idx[me] >= 0, w[me], 0).astype(np.float32)),
            f"{algorithm}: combined_topk_weights rebuild this rank's weights")

    # Cached dispatch: new activations along the handle's layout, then combine over the same handle.
    x2 = exact_rows(seed=13)
    cached = buf.dispatch(x2[me], handle=h)
    c.check(cached.recv_topk_idx is None and np.array_equal(cached.recv_x, x2[src, tok]),
            f"{algorithm}: cached dispatch rows")
    comb2 = buf.combine(cached.recv_x, h)
    c.check(np.array_equal(comb2.combined_x, x2[me] * reach[me].sum(1)[:, None].astype(np.float32)),
            f"{algorithm}: combine after cached dispatch")

    # bf16 rows (their bits as uint16): exact on the way out, the sums (at most 4 terms of 4 significant bits)
    # exact on the way back.
    bits = bf16_bits(x[me])
    res16 = buf.dispatch(bits, topk_idx=idx[me], topk_weights=w[me])
    c.check(res16.recv_x.dtype == np.uint16 and np.array_equal(res16.recv_x, bf16_bits(rows)),
            f"{algorithm}: bf16 rows")
    comb16 = buf.combine(res16.recv_x, res16.handle)
    want16 = x[me] * reach[me].sum(1)[:, None].astype(np.float32)
    c.check(np.array_equal(comb16.combined_x, bf16_bits(want16)),
            f"{algorithm}: bf16 combine")
    return buf


def check_fp8_and_an_empty_rank(c):
    """DeepEP's fp8 (codes, scales) arrive unchanged (each 128-channel block's largest |code| 448, as DeepEP's cast
    makes it), while rank 2 dispatches no tokens at all; combine still returns every rank's tokens."""
    hidden = 256
    buf = eplab.Buffer(backend="mpi", nodes=NODES, gpus_per_node=GPUS, num_experts=EXPERTS, hidden=hidden,
                       algorithm="hierarchical", timeout_s=30)
    me = buf.rank
    idx, w = routing(seed=15)
    idx[2] = -1  # rank 2's tokens are cut to none below; nobody may expect rows from it
    rng = np.random.default_rng(16)
    codes = rng.integers(0, 0x7E, size=(RANKS, TOKENS, hidden)).astype(np.uint8)
    codes |= (rng.random(codes.shape) < 0.5).astype(np.uint8) << 7
    codes[codes == 0x80] = 0
    codes[:, :, ::128] = 0x7E
    amax = (rng.random((RANKS, TOKENS, hidden // 128)) * 10 + 0.01).astype(np.float32)
    scales = amax / np.float32(448)  # DeepEP's scale_inv of a block whose amax is `amax`
    n = 0 if me == 2 else TOKENS
    res = buf.dispatch((codes[me, :n], scales[me, :n]), topk_idx=idx[me, :n], topk_weights=w[me, :n])
    src, tok = np.nonzero(reached(idx)[:, :, me])
    got_codes, got_scales = res.recv_x
    c.check(np.array_equal(res.recv_src_rank, src) and np.array_equal(got_codes, codes[src, tok]) and
            np.array_equal(got_scales, scales[src, tok]), "fp8: codes and scales arrive unchanged")
    y = np.ones((len(src), hidden), dtype=np.float32)
    comb = buf.combine(y, res.handle)
    want = np.repeat(reached(idx)[me, :n].sum(1)[:, None], hidden, 1).astype(np.float32)
    c.check(comb.combined_x.shape == (n, hidden) and np.array_equal(comb.combined_x, want),
            f"fp8: combine over a dispatch where rank 2 had no tokens ({n} here)")


def gather_verdicts(buf, ok):
    """Every rank's verdict on every rank, through one dispatch: each rank sends one token to an expert of every
    rank, its row holding 1 if it passed. A broken dispatch fails this too, which is what it should do."""
    idx = (np.arange(RANKS) * EPR).reshape(1, RANKS)
    w = np.ones((1, RANKS), dtype=np.float32)
    x = np.full((1, HIDDEN), 1.0 if ok else 0.0, dtype=np.float32)
    res = buf.dispatch(x, topk_idx=idx, topk_weights=w)
    if not np.array_equal(res.recv_src_rank, np.arange(RANKS)):
        return None
    return [bool(row[0] == 1.0) for row in res.recv_x]


def main():
    c = Checks(rank="?")
    buf = None
    try:
        for algorithm in ALGORITHMS:
            buf = check_algorithm(c, algorithm)
        check_fp8_and_an_empty_rank(c)
    except Exception:  # a rank that cannot finish its checks still takes part in the verdicts if it can
        traceback.print_exc()
        c.check(False, "an exception")
    if buf is None:
        return 1
    verdicts = gather_verdicts(buf, not c.failures)
    print(f"rank {buf.rank}: {c.count - len(c.failures)} of {c.count} checks passed", flush=True)
    if verdicts is None:
        print(f"rank {buf.rank}: FAILED gathering the verdicts", flush=True)
        return 1
    if buf.rank == 0 and all(verdicts):
        print(f"mpi Buffer: all {RANKS} ranks passed ({', '.join(ALGORITHMS)}, fp8; {c.count} checks each)",
              flush=True)
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
