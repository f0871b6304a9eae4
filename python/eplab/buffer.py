"""eplab.Buffer: DeepEP's per-call API (get_dispatch_layout -> dispatch -> handle -> combine) over eplab's engine.

    buf = eplab.Buffer(backend="emu", nodes=2, gpus_per_node=8, num_experts=64, hidden=256)
    layout = buf.get_dispatch_layout(topk_idx[r], 64)           # one rank's batch (or topk_idx stacked, rank=r)
    recv_x, recv_topk_idx, recv_topk_weights, counts, handle, event = buf.dispatch(
        x, topk_idx=topk_idx, topk_weights=topk_weights)        # every rank at once: [ranks, tokens, ...] or lists
    combined_x, combined_topk_weights, event = buf.combine(y, handle)

On emu and sim one Buffer in one process stands for every rank of the run, so dispatch and combine, which all
ranks perform together, take arrays stacked over ranks or one array per rank, and return one array per rank
(ranks receive different row counts). On mpi each process holds the Buffer of its own rank, as in DeepEP:

    mpirun -n 4 python3 script.py   # in script.py: eplab.Buffer(backend="mpi", nodes=2, gpus_per_node=2, ...)

and every process calls dispatch and combine together with its own rank's arrays, getting its own results.
Inputs are NumPy arrays, or torch tensors (then the outputs are torch tensors too). docs/python.md gives dtypes,
orders and how each DeepEP argument maps.
"""

from collections import namedtuple

import numpy as np

from . import _eplab

__all__ = ["Buffer", "BufferHandle", "DispatchLayout", "DispatchResult", "CombineResult"]

_FP8_BLOCK = 128
_FP8_CODEC = "fp8-e4m3-b128"


class DispatchLayout(namedtuple("DispatchLayout", "num_tokens_per_rank num_tokens_per_rdma_rank "
                                                  "num_tokens_per_expert is_token_in_rank event")):
    """DeepEP's get_dispatch_layout result, in its tuple order and by name."""


class DispatchResult(namedtuple("DispatchResult", "recv_x recv_topk_idx recv_topk_weights "
                                                  "num_recv_tokens_per_expert_list handle event")):
    """DeepEP's dispatch result (one entry per rank in each field; on mpi this process's rank's own), plus
    ``time_s``, ``notify_time_s``, ``simulated`` and ``recv_src_rank`` / ``recv_src_token`` (where each received
    row came from)."""


class CombineResult(namedtuple("CombineResult", "combined_x combined_topk_weights event")):
    """DeepEP's combine result (one entry per rank; on mpi this process's rank's own), plus ``time_s`` and
    ``simulated``."""


class BufferHandle:
    """What dispatch returns and combine takes back (DeepEP's handle). Pass it to ``dispatch(x, handle=h)`` to
    send new activations along the same layout without the count exchange (DeepEP's cached dispatch).

    Per-rank fields are lists with one entry per rank, or on mpi this process's rank's own value."""

    def __init__(self, buffer, state, src_rank, src_token):
        self._buffer = buffer
        self._state = state
        self._src_rank = src_rank    # [held ranks] of [rows]: the source rank of each received row
        self._src_token = src_token  # [held ranks] of [rows]: its token index in the source's batch

    @property
    def recv_src_rank(self):
        """The source rank of each received row."""
        return self._buffer._unwrap(self._src_rank)

    @property
    def recv_src_token(self):
        """Each received row's token index in its source's batch."""
        return self._buffer._unwrap(self._src_token)

    @property
    def num_tokens(self):
        """Tokens of each rank's batch (combine's output rows)."""
        return self._buffer._unwrap(list(self._state.num_tokens))

    @property
    def num_recv_tokens(self):
        """Rows each rank received (combine takes as many back)."""
        return self._buffer._unwrap(list(self._state.num_recv_rows))

    @property
    def topk(self):
        return self._state.topk

    def __repr__(self):
        where = "" if self._buffer.rank is None else f"rank={self._buffer.rank}, "
        return f"eplab.BufferHandle({where}tokens={self.num_tokens}, recv={self.num_recv_tokens})"


# ----------------------------------------------------------------------------------------------------------------
# Arrays in and out: NumPy, or torch when the caller uses it.

def _is_torch(a):
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def _torch():
    import torch  # only reached when the caller passed a torch tensor
    return torch


def _torch_kind(t):
    """A torch tensor as NumPy (a copy on CPU if needed) and whether it was bfloat16 / float8."""
    torch = _torch()
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), "bf16"
    if str(t.dtype).startswith("torch.float8"):
        if t.dtype != getattr(torch, "float8_e4m3fn", None):
            raise TypeError(f"x: fp8 codes must be torch.float8_e4m3fn (DeepEP's format), got {t.dtype}")
        return t.view(torch.uint8).numpy(), "fp8"
    return t.numpy(), None


def _as_numpy(a, name):
    """(array, torch?, kind) for one array-like: kind 'bf16' / 'fp8' for torch's own dtypes, else None."""
    if _is_torch(a):
        arr, kind = _torch_kind(a)
        return arr, True, kind
    if isinstance(a, np.ndarray):
        return a, False, None
    if isinstance(a, (list, tuple)):
        try:
            return np.asarray(a), False, None
        except (ValueError, TypeError) as e:
            raise TypeError(f"{name}: not an array ({e})") from None
    raise TypeError(f"{name}: expected a NumPy array or a torch tensor, got {type(a).__name__}")


def _per_rank(value, name, ranks, ndim):
    """One entry per rank: a list/tuple of `ranks` arrays of `ndim` dimensions, or one array of ndim + 1 stacked
    over ranks (of ndim when there is one rank). Returns ([arrays], torch?, kind)."""
    if value is None:
        raise ValueError(f"{name} is required")
    if isinstance(value, (list, tuple)) and not (value and isinstance(value[0], (int, float, np.number))):
        if len(value) != ranks:
            raise ValueError(f"{name}: {len(value)} arrays for a Buffer of {ranks} ranks (one per rank)")
        conv = [_as_numpy(v, f"{name}[{r}]") for r, v in enumerate(value)]
        kinds = {c[2] for c in conv}
        if len(kinds) > 1:
            raise TypeError(f"{name}: the ranks' arrays mix dtypes")
        arrays = [c[0] for c in conv]
        is_torch, kind = conv[0][1] if conv else False, kinds.pop() if kinds else None
    else:
        arr, is_torch, kind = _as_numpy(value, name)
        if arr.ndim == ndim + 1:
            if arr.shape[0] != ranks:
                raise ValueError(f"{name}: stacked over {arr.shape[0]} ranks, the Buffer has {ranks}")
            arrays = list(arr)
        elif arr.ndim == ndim and ranks == 1:
            arrays = [arr]
        else:
            raise ValueError(f"{name}: expected [ranks={ranks}, ...] with {ndim + 1} dimensions or a list of "
                             f"{ranks} arrays of {ndim}, got shape {tuple(arr.shape)}")
    for r, a in enumerate(arrays):
        if a.ndim != ndim:
            raise ValueError(f"{name}[{r}]: expected {ndim} dimensions, got shape {tuple(a.shape)}")
    return arrays, is_torch, kind


def _f32_weights(arrays, shapes, against):
    """Each rank's top-k weights as contiguous float32, after checking their shape ([tokens or rows, topk], as
    `against` says) and that they are floating point."""
    out = []
    for r, (w, shape) in enumerate(zip(arrays, shapes)):
        if w.shape != tuple(shape):
            raise ValueError(f"topk_weights[{r}]: shape {tuple(w.shape)}, expected {list(shape)} as {against}")
        if w.dtype.kind != "f":
            raise TypeError(f"topk_weights[{r}]: weights must be floating point (DeepEP: float32), got {w.dtype}")
        out.append(np.ascontiguousarray(w, dtype=np.float32))
    return out


def _is_fp8_pair(x):
    """DeepEP's fp8 input: a tuple (codes, scales) whose codes are float8_e4m3fn or uint8 (a tuple of two float
    arrays is one array per rank of a two-rank Buffer)."""
    if not (isinstance(x, tuple) and len(x) == 2):
        return False
    first = x[0][0] if isinstance(x[0], (list, tuple)) and x[0] else x[0]
    dtype = str(getattr(first, "dtype", ""))
    return dtype == "uint8" or dtype.startswith("torch.float8") or dtype == "torch.uint8"


def _f32_to_bf16(f32):
    """Round to nearest even, as the engine's bf16 codec does; NaN stays NaN."""
    u = np.ascontiguousarray(f32, dtype=np.float32).view(np.uint32)
    out = ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)
    nan = np.isnan(f32)
    if nan.any():
        out[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def _fp8_decode(codes, scales, hidden):
    """DeepEP's fp8 rows as fp32 (E4M3 code times its 128-channel block's scale_inv), chosen so that the engine's
    fp8 codec encodes them into the same codes and scales again.

    The codec takes scale_inv = amax / 448 of what it is given. A block whose largest code is +-448 (DeepEP's cast
    maps the block's amax there) has scale_inv = fl(a / 448) for some amax a; 448 * scale_inv rounded need not be
    that a, so the largest elements get the float next to it whose quotient by 448 gives scale_inv back."""
    t, blocks = len(codes), hidden // _FP8_BLOCK
    mag = np.abs(_E4M3_TABLE[codes]).reshape(t, blocks, _FP8_BLOCK)
    values = _E4M3_TABLE[codes].reshape(t, blocks, _FP8_BLOCK) * scales[:, :, None]
    fmax = np.float32(448)
    guess = fmax * scales
    amax, found = guess.copy(), guess / fmax == scales
    for direction in (np.inf, -np.inf):
        c = guess
        for _ in range(3):
            c = np.nextafter(c, np.float32(direction)).astype(np.float32)
            ok = ~found & (c / fmax == scales)
            amax[ok], found = c[ok], found | ok
    top = (mag == fmax) & found[:, :, None]
    values = np.where(top, np.sign(values) * amax[:, :, None], values).astype(np.float32)
    return values.reshape(t, hidden)


def _e4m3_table():
    c = np.arange(256, dtype=np.uint32)
    sign = np.where(c & 0x80, -1.0, 1.0)
    exp = (c >> 3) & 0xF
    man = c & 0x7
    v = np.where(exp == 0, man / 8.0 * 2.0 ** -6, (1 + man / 8.0) * 2.0 ** (exp.astype(np.int64) - 7))
    v = np.where((exp == 0xF) & (man == 0x7), np.nan, v)  # E4M3FN: S.1111.111 is NaN, no infinities
    return (sign * v).astype(np.float32)


_E4M3_TABLE = _e4m3_table()


def _out(a, is_torch, kind=None):
    """A NumPy result as the caller's kind of array."""
    if not is_torch:
        return a
    torch = _torch()
    a = np.ascontiguousarray(a)
    if kind == "bf16":  # torch before 2.3 takes no uint16 arrays: the bits go in as int16
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    t = torch.from_numpy(a)
    if kind == "fp8" and hasattr(torch, "float8_e4m3fn"):  # older torch has no fp8 dtype: the codes stay uint8
        return t.view(torch.float8_e4m3fn)
    return t


# ----------------------------------------------------------------------------------------------------------------

class Buffer:
    """DeepEP's ``deep_ep.Buffer``: for every rank of an eplab run in this process (emu, sim), or for this
    process's own rank (mpi).

    backend: "emu" (ranks as threads, wall-clock time), "sim" (SimGrid, modeled time of ``cluster``) or "mpi"
    (one rank per process of ``mpirun -n nodes*gpus_per_node``, wall-clock time; making the Buffer, dispatch and
    combine are collective, every process calls them together); all move real bytes. On mpi ``rank`` is this
    process's rank and per-rank arguments and results are this rank's own arrays, not lists. nodes x gpus_per_node ranks hold num_experts experts, num_experts / ranks each in id order (rank r:
    experts [r * E/R, (r + 1) * E/R), as DeepEP). algorithm: "hierarchical" (DeepEP's internode kernels: RDMA to
    the same rail, then NVLink), "flat" or "allgather"; "low-latency" follows DeepEP's low_latency_* semantics
    and is refused here. timeout_s bounds one blocked wait.
    """

    def __init__(self, backend="emu", nodes=1, gpus_per_node=8, num_experts=None, hidden=None,
                 algorithm="hierarchical", cluster="h800-cx7", timeout_s=60.0, sim_model=""):
        for name, v in (("num_experts", num_experts), ("hidden", hidden)):
            if v is None:
                raise TypeError(f"eplab.Buffer: {name} is required")
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"eplab.Buffer: {name} must be a positive integer, got {v!r}")
        self._session = _eplab._BufferSession(str(backend), str(cluster), int(nodes), int(gpus_per_node),
                                              int(num_experts), int(hidden), str(algorithm), float(timeout_s),
                                              str(sim_model))
        self.backend = str(backend)
        self.algorithm = str(algorithm)
        self.num_experts = int(num_experts)
        self.hidden = int(hidden)
        self.num_ranks = self._session.num_ranks
        self.group_size = self.num_ranks  # DeepEP's name
        # One rank per process (mpi): this process's rank, whose arrays every call takes and returns; else None
        # and every call takes and returns one entry per rank.
        self.rank = self._session.first_rank if self._session.one_rank_per_process else None
        self._held = self._session.held_ranks
        self.num_nodes = self._session.num_nodes
        self.num_local_experts = self._session.experts_per_rank
        self.simulated = self._session.modeled_time

    def get_rank(self):
        """DeepEP's name: this process's rank (mpi); in process, where the Buffer holds every rank, None."""
        return self.rank

    def _unwrap(self, per_held):
        """Results of the held ranks as the caller sees them: the list, or on mpi the one rank's own entry."""
        return per_held if self.rank is None else per_held[0]

    def _per_rank(self, value, name, ndim):
        """The held ranks' arrays of one argument, as _per_rank; on mpi this rank's own array."""
        if self.rank is None:
            return _per_rank(value, name, self.num_ranks, ndim)
        if value is None:
            raise ValueError(f"{name} is required")
        arr, is_torch, kind = _as_numpy(value, name)
        if arr.ndim != ndim:
            raise ValueError(f"{name}: on mpi each process passes its own rank's array of {ndim} dimensions, got "
                             f"shape {tuple(arr.shape)}")
        return [arr], is_torch, kind

    def _where(self, r):
        """The rank of held entry r, for messages."""
        return r if self.rank is None else self.rank

    def __repr__(self):
        where = "" if self.rank is None else f"rank={self.rank} of "
        return (f"eplab.Buffer(backend={self.backend!r}, {where}ranks={self.num_ranks} ({self.num_nodes} nodes), "
                f"num_experts={self.num_experts}, hidden={self.hidden}, algorithm={self.algorithm!r})")

    # -- layout ----------------------------------------------------------------------------------------------

    def _topk(self, a, name):
        """int32 [tokens, topk] from an integer array, -1 = unused, checked against the expert range."""
        if a.dtype.kind not in "iu" or a.dtype == np.bool_:
            raise TypeError(f"{name}: expert ids must be integers (DeepEP: torch.int64), got {a.dtype}")
        if a.shape[1] < 1:
            raise ValueError(f"{name}: top-k must be at least 1, got shape {tuple(a.shape)}")
        if a.size:
            lo, hi = int(a.min()), int(a.max())
            if lo < -1 or hi >= self.num_experts:
                bad = lo if lo < -1 else hi
                raise ValueError(f"{name}: expert id {bad} outside -1..{self.num_experts - 1} (-1 = unused)")
        return np.ascontiguousarray(a, dtype=np.int32)

    def get_dispatch_layout(self, topk_idx, num_experts, rank=None, previous_event=None, async_finish=False,
                            allocate_on_comm_stream=False):
        """DeepEP's layout of one rank's batch: ``(num_tokens_per_rank [ranks], num_tokens_per_rdma_rank [nodes] or
        None on one node, num_tokens_per_expert [experts], is_token_in_rank [tokens, ranks] bool, event=None)``.

        topk_idx: [tokens, topk] expert ids (-1 unused) of one rank's batch, or every rank's (stacked or a list)
        with ``rank=r`` saying whose. On mpi it is this process's batch (``rank``, if given, must be its own). A
        token counts once per rank and node it reaches; every selection counts
        toward its expert. The counts are int32, as DeepEP's. Calls complete at once: event is None.
        """
        if int(num_experts) != self.num_experts:
            raise ValueError(f"num_experts={num_experts}, but the Buffer holds {self.num_experts} experts")
        if self.rank is not None and rank is not None and int(rank) != self.rank:
            raise ValueError(f"rank={rank}: this process holds rank {self.rank} of the mpi Buffer; each process "
                             f"asks for its own batch's layout")
        if self.rank is not None:
            a, is_torch, _ = _as_numpy(topk_idx, "topk_idx")
            if a.ndim != 2:
                raise ValueError(f"topk_idx: expected this rank's [tokens, topk], got shape {tuple(a.shape)}")
        elif isinstance(topk_idx, (list, tuple)) or (getattr(topk_idx, "ndim", 2) == 3):
            arrays, is_torch, _ = self._per_rank(topk_idx, "topk_idx", 2)
            if rank is None:
                raise ValueError("topk_idx holds every rank's batch: say whose layout with rank=r")
            if not 0 <= int(rank) < self.num_ranks:
                raise ValueError(f"rank={rank} outside 0..{self.num_ranks - 1}")
            a = arrays[int(rank)]
        else:
            a, is_torch, _ = _as_numpy(topk_idx, "topk_idx")
            if a.ndim != 2:
                raise ValueError(f"topk_idx: expected [tokens, topk], got shape {tuple(a.shape)}")
            if rank is not None and not 0 <= int(rank) < self.num_ranks:
                raise ValueError(f"rank={rank} outside 0..{self.num_ranks - 1}")
        per_rank, per_node, per_expert, in_rank = self._session.layout(self._topk(a, "topk_idx"))
        if self.num_nodes == 1:
            per_node = None  # DeepEP: no RDMA ranks within one node
        return DispatchLayout(_out(per_rank, is_torch), None if per_node is None else _out(per_node, is_torch),
                              _out(per_expert, is_torch), _out(in_rank, is_torch), None)

    # -- dispatch --------------------------------------------------------------------------------------------

    def _x(self, x):
        """Per-rank fp32 rows, the wire codec, torch?, kind, from x (fp32, bf16, or an fp8 (codes, scales) pair)."""
        H = self.hidden
        if _is_fp8_pair(x):
            if H % _FP8_BLOCK:
                raise ValueError(f"x: fp8 needs hidden divisible by {_FP8_BLOCK} (scales per 128 channels), "
                                 f"the Buffer has hidden={H}")
            codes, is_torch, kind = self._per_rank(x[0], "x (fp8 codes)", 2)
            scales, _, _ = self._per_rank(x[1], "x (fp8 scales)", 2)
            rows = []
            for r, (c, s) in enumerate(zip(codes, scales)):
                if c.dtype != np.uint8:
                    raise TypeError(f"x[{r}]: fp8 codes must be torch.float8_e4m3fn or uint8 E4M3 bits, got {c.dtype}")
                if c.shape[1] != H:
                    raise ValueError(f"x[{r}]: {c.shape[1]} channels, the Buffer has hidden={H}")
                if s.dtype != np.float32 or s.shape != (c.shape[0], H // _FP8_BLOCK):
                    raise ValueError(f"x[{r}]: fp8 scales must be float32 [tokens={c.shape[0]}, {H // _FP8_BLOCK}], "
                                     f"got {s.dtype} {tuple(s.shape)}")
                rows.append(np.ascontiguousarray(_fp8_decode(np.ascontiguousarray(c), s, H), dtype=np.float32))
            return rows, _FP8_CODEC, is_torch, "fp8"
        arrays, is_torch, kind = self._per_rank(x, "x", 2)
        rows = []
        for r, a in enumerate(arrays):
            if a.shape[1] != H:
                raise ValueError(f"x[{r}]: {a.shape[1]} channels, the Buffer has hidden={H}")
            if kind == "bf16" or a.dtype == np.uint16:
                kind = "bf16"
                rows.append(np.ascontiguousarray(a, dtype=np.uint16))  # widened to fp32 by the ranks' threads
            elif a.dtype == np.float32:
                rows.append(np.ascontiguousarray(a))
            else:
                raise TypeError(f"x: rows must be float32, bfloat16 (torch.bfloat16 or its bits as a NumPy uint16 "
                                f"array) or an fp8 (codes, scales) pair, got {a.dtype}")
        kind = kind or "fp32"
        return rows, {"fp32": "fp32", "bf16": "bf16"}[kind], is_torch, kind

    def _recv_rows(self, wire, kind, is_torch):
        """Received rows from the codec's wire rows ([rows, row bytes] uint8): fp32 and bf16 are the values' own
        bytes; DeepEP's fp8 row is the codes, then the float32 scales."""
        H, n = self.hidden, len(wire)
        if kind == "fp8":
            wide = wire.reshape(n, H + 4 * (H // _FP8_BLOCK))
            codes = np.ascontiguousarray(wide[:, :H])
            scales = np.ascontiguousarray(wide[:, H:]).view(np.float32).reshape(n, H // _FP8_BLOCK)
            return (_out(codes, is_torch, "fp8"), _out(scales, is_torch))
        if kind == "bf16":
            return _out(wire.reshape(n, 2 * H).view(np.uint16), is_torch, "bf16")
        return _out(wire.reshape(n, 4 * H).view(np.float32), is_torch)

    def _combined_rows(self, f32, kind, is_torch):
        if kind == "bf16":
            return _out(_f32_to_bf16(f32), is_torch, "bf16")
        return _out(f32, is_torch)

    def dispatch(self, x, handle=None, num_tokens_per_rank=None, num_tokens_per_rdma_rank=None,
                 is_token_in_rank=None, num_tokens_per_expert=None, topk_idx=None, topk_weights=None,
                 expert_alignment=1, config=None, previous_event=None, async_finish=False,
                 allocate_on_comm_stream=False):
        """Every rank's dispatch: ``(recv_x, recv_topk_idx, recv_topk_weights, num_recv_tokens_per_expert_list,
        handle, event)``, each a list with one entry per rank (on mpi: this process's rank's arguments and results,
        no lists; every process calls it together).

        x: [ranks, tokens, hidden] (or one [tokens, hidden] per rank) float32 or bfloat16 (torch.bfloat16, or
        its bits as uint16), or a pair (codes, scales) of DeepEP fp8: E4M3 codes (torch.float8_e4m3fn or uint8)
        and float32 scale_inv per 128 channels. topk_idx / topk_weights: [ranks, tokens, topk], expert ids with -1
        unused, float32 weights. Each rank receives one row per token that selected any of its experts, ordered
        by source rank then token (``recv_src_rank`` / ``recv_src_token`` say which); recv_topk_idx holds local
        expert indices (-1 for selections elsewhere, weight 0). With ``handle=`` (DeepEP's cached dispatch) the
        routing comes from the handle, the count exchange is skipped, and the result is ``(recv_x, None, None,
        None, None, None)``. The layout arguments are checked against topk_idx when given; config,
        previous_event, async_finish and allocate_on_comm_stream have no effect (calls complete at once).
        """
        rows, codec, is_torch, kind = self._x(x)
        if handle is not None:
            if not isinstance(handle, BufferHandle) or handle._buffer is not self:
                raise ValueError("handle: not a handle of this Buffer's dispatch")
            if topk_idx is not None or topk_weights is not None:
                raise ValueError("dispatch with handle= reuses the handle's topk_idx and topk_weights; pass neither")
            recv, t = self._session.dispatch_cached(handle._state, rows, codec)
            res = DispatchResult(self._unwrap([self._recv_rows(rr[5], kind, is_torch) for rr in recv]), None, None,
                                 None, None, None)
            return self._timed(res, t, handle)
        idx_arrays, idx_torch, _ = self._per_rank(topk_idx, "topk_idx", 2)
        w_arrays, _, _ = self._per_rank(topk_weights, "topk_weights", 2)
        topk = idx_arrays[0].shape[1] if idx_arrays else 0
        idx32 = []
        for r in range(self._held):
            i, w = idx_arrays[r], w_arrays[r]
            if i.shape[1] != topk:
                raise ValueError(f"topk_idx[{r}]: top-{i.shape[1]}, rank 0 has top-{topk}")
            if i.shape[0] != rows[r].shape[0]:
                raise ValueError(f"topk_idx[{r}]: {i.shape[0]} tokens, x[{r}] has {rows[r].shape[0]}")
            idx32.append(self._topk(i, f"topk_idx[{r}]"))
        w32 = _f32_weights(w_arrays, [i.shape for i in idx_arrays], "topk_idx")
        self._check_layout_args(idx32, num_tokens_per_rank, num_tokens_per_rdma_rank, num_tokens_per_expert,
                                is_token_in_rank)
        if int(expert_alignment) < 1:
            raise ValueError(f"expert_alignment must be at least 1, got {expert_alignment}")
        state, recv, t = self._session.dispatch(idx32, w32, rows, topk, codec)
        h = BufferHandle(self, state, [rr[0] for rr in recv], [rr[1] for rr in recv])
        a = int(expert_alignment)
        counts = [[int(-(-int(c) // a) * a) for c in rr[4]] for rr in recv]
        torch_out = is_torch or idx_torch
        res = DispatchResult(self._unwrap([self._recv_rows(rr[5], kind, is_torch) for rr in recv]),
                             self._unwrap([_out(rr[2].astype(np.int64), torch_out) for rr in recv]),
                             self._unwrap([_out(rr[3], torch_out) for rr in recv]), self._unwrap(counts), h, None)
        return self._timed(res, t, h)

    def _timed(self, res, t, h):
        res.time_s, res.notify_time_s, res.simulated = t
        res.recv_src_rank, res.recv_src_token = h.recv_src_rank, h.recv_src_token
        return res

    def _check_layout_args(self, idx32, per_rank, per_rdma, per_expert, in_rank):
        given = {"num_tokens_per_rank": (per_rank, 0), "num_tokens_per_rdma_rank": (per_rdma, 1),
                 "num_tokens_per_expert": (per_expert, 2), "is_token_in_rank": (in_rank, 3)}
        given = {k: v for k, v in given.items() if v[0] is not None}
        if not given:
            return
        layouts = [self._session.layout(i) for i in idx32]
        for name, (value, field) in given.items():
            ndim = 2 if field == 3 else 1
            arrays, _, _ = self._per_rank(value, name, ndim)
            for r, a in enumerate(arrays):
                if not np.array_equal(np.asarray(a).astype(np.int64), layouts[r][field].astype(np.int64)):
                    raise ValueError(f"{name}[{r}] disagrees with the layout of topk_idx[{r}] "
                                     f"(get_dispatch_layout(topk_idx[{r}], {self.num_experts}))")

    # -- combine ---------------------------------------------------------------------------------------------

    def combine(self, x, handle, topk_weights=None, bias=None, config=None, previous_event=None, async_finish=False,
                allocate_on_comm_stream=False):
        """Every rank's combine: ``(combined_x, combined_topk_weights, event)``, one entry per rank (on mpi, this
        process's rank's own).

        x: each rank's rows in the order dispatch returned them ([rows, hidden] per rank, float32 or bfloat16;
        fp8 is refused, as by DeepEP's combine). combined_x[r][t] is the sum of the rows every rank that token t
        reached sends back (summed in fp32; bf16 output rounded once at the end): weights are the caller's
        expert computation's business, so combining dispatch's rows unchanged gives each token times the
        number of ranks it reached. topk_weights (optional, [rows, topk] per rank) are summed the same way into
        combined_topk_weights (sent back to the sources after the timed combine), else None. bias is not
        supported (None only).
        """
        if not isinstance(handle, BufferHandle) or handle._buffer is not self:
            raise ValueError("handle: not a handle of this Buffer's dispatch")
        if bias is not None:
            raise ValueError("combine: bias is not supported by eplab.Buffer; add it to combined_x afterwards")
        if _is_fp8_pair(x):
            raise TypeError("x: combine takes float32 or bfloat16 rows; fp8 (codes, scales) is dispatch-only, as "
                            "in DeepEP")
        arrays, is_torch, kind = self._per_rank(x, "x", 2)
        rows_in = []
        for r, a in enumerate(arrays):
            if a.shape != (handle._state.num_recv_rows[r], self.hidden):
                raise ValueError(f"x[{r}]: shape {tuple(a.shape)}, rank {self._where(r)} received "
                                 f"[{handle._state.num_recv_rows[r]}, {self.hidden}] in the handle's dispatch")
            if kind == "bf16" or a.dtype == np.uint16:
                kind = "bf16"
                rows_in.append(np.ascontiguousarray(a, dtype=np.uint16))
            elif a.dtype == np.float32:
                rows_in.append(np.ascontiguousarray(a))
            elif kind == "fp8" or a.dtype == np.uint8:
                raise TypeError("x: combine takes float32 or bfloat16 rows; fp8 is dispatch-only, as in DeepEP")
            else:
                raise TypeError(f"x[{r}]: rows must be float32 or bfloat16, got {a.dtype}")
        kind = kind or "fp32"
        w32, w_torch = None, False
        if topk_weights is not None:
            w_arrays, w_torch, _ = self._per_rank(topk_weights, "topk_weights", 2)
            w32 = _f32_weights(w_arrays, [(n, handle.topk) for n in handle._state.num_recv_rows], "the handle's rows")
        outs, sums, t = self._session.combine(handle._state, rows_in, kind, w32)
        combined = self._unwrap([self._combined_rows(o, kind, is_torch) for o in outs])
        weights = None if sums is None else self._unwrap([_out(s, is_torch or w_torch) for s in sums])
        res = CombineResult(combined, weights, None)
        res.time_s, _, res.simulated = t
        return res
