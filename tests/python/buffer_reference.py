# NumPy references for eplab.Buffer, written from DeepEP's definitions and shared by the in-process tests
# (test_buffer.py) and the one-rank-per-process mpi check (mpi_buffer.py): routings, exactly-summable
# activations, which ranks each token reaches, what a rank receives, and bf16 bit conversions.
import numpy as np

NODES, GPUS, EXPERTS, HIDDEN, TOPK, TOKENS = 2, 2, 16, 64, 3, 24
RANKS = NODES * GPUS
ALGORITHMS = ["flat", "hierarchical", "allgather"]


def routing(seed=1, ranks=RANKS, tokens=TOKENS, experts=EXPERTS, topk=TOPK, unused=0.1):
    """[ranks, tokens, topk] distinct experts per token, some selections -1, and float32 weights."""
    rng = np.random.default_rng(seed)
    idx = np.stack([np.stack([rng.permutation(experts)[:topk] for _ in range(tokens)]) for _ in range(ranks)])
    idx[rng.random(idx.shape) < unused] = -1
    w = rng.random(idx.shape).astype(np.float32)
    return idx.astype(np.int64), w


def exact_rows(seed=2, ranks=RANKS, tokens=TOKENS, hidden=HIDDEN):
    """Activations of at most 4 significant bits: up to 4 copies of one sum exactly in fp32 and in bf16 (8 bits)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-16, 16, size=(ranks, tokens, hidden)) / 16).astype(np.float32)


def reached(idx, experts=EXPERTS, ranks=RANKS):
    """[ranks, tokens, ranks] bool: does token t of rank s select an expert of rank r."""
    epr = experts // ranks
    out = np.zeros(idx.shape[:2] + (ranks,), dtype=bool)
    for r in range(ranks):
        out[..., r] = ((idx >= r * epr) & (idx < (r + 1) * epr)).any(-1)
    return out


def expected_recv(me, idx, w, x, experts=EXPERTS, ranks=RANKS):
    """What rank `me` receives in DeepEP's order (source rank, then token): sources, tokens, rows, local top-k
    indices (-1 elsewhere), their weights (0 elsewhere) and the per-local-expert counts."""
    epr = experts // ranks
    src, tok = np.nonzero(reached(idx, experts, ranks)[:, :, me])  # row-major: by source, then token
    local = idx[src, tok] - me * epr
    mine = (idx[src, tok] >= 0) & (local >= 0) & (local < epr)
    topk_idx = np.where(mine, local, -1)
    topk_w = np.where(mine, w[src, tok], 0).astype(np.float32)
    counts = [int((topk_idx == e).sum()) for e in range(epr)]
    return src, tok, x[src, tok], topk_idx, topk_w, counts


def bf16_bits(f32):
    """The upper 16 bits of float32 values (bf16 by truncation), as uint16."""
    return (np.asarray(f32, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
