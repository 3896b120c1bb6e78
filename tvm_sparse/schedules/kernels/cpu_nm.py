"""N:M structured sparse linear on x86 (AVX2 / AVX-512): fixed-length rows, a one-byte index per
value.

An N:M weight keeps at most ``n`` non-zeros in every ``m`` consecutive inputs, so a row needs no
row pointer and a stored value needs only its position inside a small window of inputs. With
``m`` dividing the vector width L (8 on AVX2, 16 on AVX-512), one L-float window of ``x`` holds
``L / m`` whole groups, and ``vpermps`` (``llvm.x86.avx2.permps`` / ``avx512.permvar.sf.512``)
picks, for L output rows at once, the input each row's value multiplies: no gathers, one permute
and one FMA per L stored values.

Layout (``pack_nm``): output rows in blocks of L lanes; per block and window, ``spw = L / m * n``
slots of L lanes (``vals[rb, w, s, lane]``, ``idx`` the same as uint8 positions 0..L-1 in the
window). Padding slots hold 0, so finite inputs give the dense result up to summation order.
The kernel copies ``x`` into a zero-padded ``[m, K8]`` scratch so every window load is whole,
then per block of L rows and tile of ``batch_tile`` samples keeps ``batch_tile`` L-lane sums in
registers while the window loop streams the block's values once.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from ...formats.nm import NM
from ...formats.patterns import NM_TIGHT_FILL
from ...ir.layers import LayerSpec
from ...target import cpu_isa, num_cores
from .._epilogue import bias_const, check_activation
from .._epilogue import epilogue as _epilogue
from ..cost_model import MachineModel
from ..kernel import KernelCall, as_weight, finish, linear_info
from .base import CpuKernel, build_linear, skips_work
from .knobs import parallel_choices, product, settings_for

WIDTHS = (2, 4, 8)  # group widths m that tile an 8- (and a 16-) float window
# Stored MACs per second of one core at batch < 4 (GMAC/s). A permute and an FMA per 8 values
# (plus the index load) is twice the instructions per MAC of the dense GEMV's broadcast-FMA, so
# the kernel is bound by issue, not by the bytes it saves: 2:4 runs about as fast as dense, and
# only sparser patterns (1:4, 2:8) clearly win. The rate is set relative to the model's dense
# rates so the estimate ranks N:M against dense the way the two kernels measure. From batch 4
# on, a batch tile loads the values and indices once for 4 samples and the kernel reaches the
# rate of the other batched sparse kernels (``MachineModel.sparse_batched_gmacs``).
SMALL_BATCH_GMACS = 1.5


def nm_pattern(weight: np.ndarray) -> tuple[int, int] | None:
    """The tight ``(n, m)`` (``m`` in ``WIDTHS``, ``n < m``) with the least ``n / m`` (ties: the
    smaller ``m``), or None when the weight has no such pattern."""
    rows, k = weight.shape
    nnz = int(np.count_nonzero(weight))
    best = None
    for m in WIDTHS:
        groups = np.zeros((rows, -(-k // m) * m), dtype=bool)
        groups[:, :k] = weight != 0
        n = max(int(groups.reshape(rows, -1, m).sum(axis=-1).max(initial=0)), 1)
        tight = nnz >= NM_TIGHT_FILL * n / m * weight.size
        if n < m and tight and (best is None or n * best[1] < best[0] * m):
            best = (n, m)
    return best


def nm_lanes(target) -> int:
    """The kernel's vector width: 16 on AVX-512, else 8 (AVX2's ``vpermps``)."""
    return 16 if cpu_isa(target).avx512 else 8  # None: AVX2


def pack_nm(nm: NM, lanes: int = 8) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """``(vals, idx, row_blocks, windows, slots_per_window)`` in the kernel's layout for vectors
    of ``lanes``."""
    _LANES = lanes  # noqa: N806 (the layout's constant)
    rows, _ = nm.shape
    per_window = _LANES // nm.m
    groups = nm.values.shape[1]
    nwin = max(-(-groups // per_window), 1)
    nrb = max(-(-rows // _LANES), 1)
    vals = np.zeros((nrb * _LANES, nwin * per_window, nm.n), np.float32)
    pos = np.zeros(vals.shape, np.int64)
    vals[:rows, :groups] = nm.values
    pos[:rows, :groups] = nm.positions
    pos += (np.arange(nwin * per_window) % per_window)[None, :, None] * nm.m
    spw = per_window * nm.n

    def layout(a: np.ndarray) -> np.ndarray:
        return a.reshape(nrb, _LANES, nwin, spw).transpose(0, 2, 3, 1).reshape(-1)

    return (
        np.ascontiguousarray(layout(vals)),
        np.ascontiguousarray(layout(pos).astype(np.uint8)),
        nrb,
        nwin,
        spw,
    )


def _permute(window, index, lanes: int):
    if lanes == 16:
        return T.call_llvm_pure_intrin(
            "float32x16", "llvm.x86.avx512.permvar.sf.512", window, index
        )
    return T.call_llvm_pure_intrin("float32x8", "llvm.x86.avx2.permps", window, index)


def _nm_kernel(m, n, k, nrb, nwin, spw, nbias, has_bias, activation, bt, parallel, lanes=8):
    """y = act(x @ W.T + b) over the packed N:M weight (see the module docstring)."""
    _LANES = lanes  # noqa: N806 (a constant of the TIR below)
    ivec = f"int32x{lanes}"
    kp = nwin * _LANES
    nslots = nrb * nwin * spw * _LANES
    ntiles = -(-m // bt)
    row_blocks = T.parallel if parallel else T.serial

    @T.prim_func
    def kernel(
        x: T.Buffer((m, k), "float32"),
        vals: T.Buffer((nslots,), "float32"),
        idx: T.Buffer((nslots,), "uint8"),
        bias: T.Buffer((nbias,), "float32"),
        y: T.Buffer((m, n), "float32"),
    ):
        xp = T.alloc_buffer((m, kp), "float32", scope="global")
        # Step 1. x into a zero-padded scratch: every 8-float window load is whole.
        for b in range(m):
            for kk in range(kp):
                xp[b, kk] = T.if_then_else(kk < k, x[b, T.min(kk, k - 1)], T.float32(0))
        # Step 2. Per block of 8 output rows and tile of bt samples: permute + FMA per slot.
        for rb in row_blocks(nrb):
            acc = T.alloc_buffer((bt * _LANES,), "float32", scope="global")
            for t in range(ntiles):
                for i in T.vectorized(bt * _LANES):
                    acc[i] = T.float32(0)
                for w in range(nwin):
                    base: T.let = (rb * nwin + w) * spw * _LANES
                    for s in T.unroll(spw):
                        wv: T.let = vals[T.ramp(base + s * _LANES, 1, _LANES)]
                        iv: T.let = T.Cast(ivec, idx[T.ramp(base + s * _LANES, 1, _LANES)])
                        for bb in T.unroll(bt):
                            if t * bt + bb < m:
                                acc[T.ramp(bb * _LANES, 1, _LANES)] = acc[
                                    T.ramp(bb * _LANES, 1, _LANES)
                                ] + wv * _permute(
                                    xp[t * bt + bb, T.ramp(w * _LANES, 1, _LANES)], iv, lanes
                                )
                # Step 3. Epilogue: bias and activation, rows past n dropped.
                for bb in range(bt):
                    if t * bt + bb < m:
                        for lane in range(_LANES):
                            if rb * _LANES + lane < n:
                                if has_bias:
                                    y[t * bt + bb, rb * _LANES + lane] = _epilogue(
                                        acc[bb * _LANES + lane] + bias[rb * _LANES + lane],
                                        activation,
                                    )
                                else:
                                    y[t * bt + bb, rb * _LANES + lane] = _epilogue(
                                        acc[bb * _LANES + lane], activation
                                    )

    return kernel


def _default_batch_tile(m: int) -> int:
    """The largest of 4, 2, 1 dividing the batch: no tile is partial, 4 sums fit in registers."""
    return next(t for t in (4, 2, 1) if m % t == 0)


def nm_linear(
    m: int,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    activation: str | None = None,
    target=None,
    *,
    pattern: tuple[int, int] | None = None,
    batch_tile: int | None = None,
    parallel: bool = True,
) -> KernelCall:
    """y[m, N] = act(x[m, K] @ weight.T + bias) with the weight stored N:M (``pattern``; default
    the weight's tightest pattern with ``m`` in ``WIDTHS``).

    Knobs: ``batch_tile`` (samples whose sums stay in registers while a row block's values
    stream once; default the largest of 4, 2, 1 dividing ``m``), ``parallel`` (row blocks over
    threads). ``target`` sets the vector width (``nm_lanes``: 16 on AVX-512, else 8).
    """
    check_activation(activation)
    weight = as_weight(weight, 2)
    n, k = weight.shape
    pattern = pattern or nm_pattern(weight)
    if pattern is None or pattern[1] not in WIDTHS:
        raise ValueError(f"weight has no N:M pattern with M in {WIDTHS} (got {pattern})")
    nm = NM.from_dense(weight, *pattern)
    bias_arr, has_bias = bias_const(bias, n)
    bt = batch_tile or _default_batch_tile(m)
    if not 1 <= bt <= 8:
        raise ValueError(f"batch_tile must be in 1..8, got {bt}")
    lanes = nm_lanes(target)
    vals, idx, nrb, nwin, spw = pack_nm(nm, lanes)
    func = _nm_kernel(
        m, n, k, nrb, nwin, spw, bias_arr.size, has_bias, activation, bt, parallel, lanes
    )
    info = linear_info(
        "nm", m, n, k, nm.nnz, nm.stored, vals.nbytes + idx.nbytes,
        {"format": nm.stats(), "batch_tile": bt, "lanes": lanes},
    )  # fmt: skip
    return KernelCall(
        func=finish(func), name="nm_linear", consts=(vals, idx, bias_arr), out_shape=(m, n),
        info=info,
    )  # fmt: skip


class NMLinear(CpuKernel):
    name = "nm"

    def applies(self, layer: LayerSpec, target: tvm.target.Target) -> bool:
        return super().applies(layer, target) and cpu_isa(target).avx2

    def fits(self, layer: LayerSpec) -> bool:
        pattern = nm_pattern(layer.weight)
        if pattern is None:
            return False
        n, m = pattern
        return skips_work(layer.weight.size * n // m, layer.weight.size)

    def estimate(self, layer: LayerSpec, target: tvm.target.Target, machine: MachineModel
                 ) -> float:  # fmt: skip
        w = layer.weight
        m, (n, k) = layer.rows, w.shape
        pn, pm = nm_pattern(w)
        stored = n * -(-k // pm) * pn
        nbytes = stored * (4 + 1) + 4 * m * (n + k)
        rate = SMALL_BATCH_GMACS if m < 4 else machine.sparse_batched_gmacs
        return machine.seconds(m * stored, rate, nbytes, num_cores(target))

    def knob_space(self, layer: LayerSpec, target: tvm.target.Target) -> list[dict]:
        space = product(batch_tile=[1, 2, 4], parallel=parallel_choices(num_cores(target)))
        return settings_for(nm_linear, space)

    def build(self, layer: LayerSpec, target: tvm.target.Target, **knobs) -> KernelCall:
        return build_linear(nm_linear, layer, target, knobs)
