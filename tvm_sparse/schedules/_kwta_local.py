"""Local k-WTA (nupic.torch's ``KWinners2d(local=True)``) as block-free TIR.

At each location of an NCHW sample, keep the channels whose ranked value (``x`` or ``x * boost``)
is among the k largest of the C there, else 0. TVM lowers the exported TopK over axis 1 to a
sort per location; here each vector of consecutive locations (NCHW: a location's neighbours are
contiguous) keeps its ``m = min(k, C - k + 1)`` most extreme ranked values so far in ``m``
vectors, one channel after another, by a compare-exchange chain (max down the list, the min
carried on): ``2 m C`` vector ops per vector of locations, no sort and no branch. The last of the
``m`` is the k-th largest (for ``m = C - k + 1`` the chain keeps the smallest, and the
(C-k+1)-th smallest is the same value).

The write keeps ``x`` where its ranked value is ``>= t`` (every tie wins), or for the ``exact``
form (TopK's indices scattered, ties broken by the lower channel) where it is ``> t`` plus the
first ``k - #{> t}`` equal ones in channel order, counted lane by lane. NaN is not ranked the way
onnxruntime ranks it (min/max drop it): models with NaN activations are outside this kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

LANES = 8


@dataclass(frozen=True)
class LocalSpec:
    """What one local k-WTA kernel is specialized to; ``boost`` is None, "channel" (one factor
    per channel) or "full" (one per value of a sample)."""

    batch: int
    c: int
    hw: int
    k: int
    boost: str | None
    exact: bool
    x_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def m(self) -> int:
        return min(self.k, self.c - self.k + 1)

    @property
    def largest(self) -> bool:
        """Whether the chain keeps the largest (else the smallest) ``m`` values."""
        return self.k <= self.c - self.k + 1


def local_func(spec: LocalSpec):
    """The PrimFunc ``(x, [boost,] rank, out)`` over ``x[batch, C, H, W]`` (any shape of
    ``batch * C * H * W`` values, read flat); ``rank[0]`` is k (unused: k is compiled in, the
    second input keeps RewriteDataflowReshape off a one-input call)."""
    batch, c, hw, m = spec.batch, spec.c, spec.hw, spec.m
    n = c * hw
    largest, exact, k = spec.largest, spec.exact, spec.k
    init = T.float32(float("-inf") if largest else float("inf"))
    rows = T.parallel if batch > 1 else T.serial
    # vectors of LANES locations; a ragged end re-runs the last LANES locations (the same
    # values written twice) instead of a scalar tail
    lanes = min(LANES, hw)
    starts = list(range(0, hw - lanes + 1, lanes))
    ragged = hw % lanes != 0

    def ranked(xf, boost, b, ch, p, lanes):
        v = xf[T.ramp(b * n + ch * hw + p, 1, lanes)]
        if spec.boost == "channel":
            return v * T.broadcast(boost[ch], lanes)
        if spec.boost == "full":
            return v * boost[T.ramp(ch * hw + p, 1, lanes)]
        return v

    def keep_max(a, b_):
        return T.max(a, b_) if largest else T.min(a, b_)

    def pass_min(a, b_):
        return T.min(a, b_) if largest else T.max(a, b_)

    def block_macro(lanes: int):
        @T.macro
        def block(xf, boost, of, b, p):
            top = T.alloc_buffer((m * lanes,), "float32", scope="local")
            carry = T.alloc_buffer((lanes,), "float32", scope="local")
            for j in T.unroll(m):
                top[T.ramp(j * lanes, 1, lanes)] = T.broadcast(init, lanes)
            for ch in range(c):
                carry[T.ramp(0, 1, lanes)] = ranked(xf, boost, b, ch, p, lanes)
                for j in T.unroll(m):
                    cur: T.let = top[T.ramp(j * lanes, 1, lanes)]
                    top[T.ramp(j * lanes, 1, lanes)] = keep_max(cur, carry[T.ramp(0, 1, lanes)])
                    carry[T.ramp(0, 1, lanes)] = pass_min(cur, carry[T.ramp(0, 1, lanes)])
            t: T.let = top[T.ramp((m - 1) * lanes, 1, lanes)]
            if exact:
                need = T.alloc_buffer((lanes,), "int32", scope="local")
                need[T.ramp(0, 1, lanes)] = T.broadcast(T.int32(k), lanes)
                for ch in range(c):
                    need[T.ramp(0, 1, lanes)] = need[T.ramp(0, 1, lanes)] - T.Cast(
                        f"int32x{lanes}", ranked(xf, boost, b, ch, p, lanes) > t
                    )
                for ch in range(c):
                    r: T.let = ranked(xf, boost, b, ch, p, lanes)
                    # keep: above t, or tied while ties are still needed (bool vectors inline:
                    # a let-bound boolxN fails TVM's analyzer)
                    of[T.ramp(b * n + ch * hw + p, 1, lanes)] = T.Select(
                        T.Or(
                            r > t,
                            T.And(r == t, need[T.ramp(0, 1, lanes)] > T.broadcast(0, lanes)),
                        ),
                        xf[T.ramp(b * n + ch * hw + p, 1, lanes)],
                        T.broadcast(T.float32(0), lanes),
                    )
                    need[T.ramp(0, 1, lanes)] = need[T.ramp(0, 1, lanes)] - T.Cast(
                        f"int32x{lanes}", r == t
                    )
            else:
                for ch in range(c):
                    of[T.ramp(b * n + ch * hw + p, 1, lanes)] = T.Select(
                        ranked(xf, boost, b, ch, p, lanes) >= t,
                        xf[T.ramp(b * n + ch * hw + p, 1, lanes)],
                        T.broadcast(T.float32(0), lanes),
                    )

        return block

    block = block_macro(lanes)

    @T.macro
    def sample(xf, boost, of, b):
        for p0 in range(len(starts)):
            block(xf, boost, of, b, p0 * lanes)
        if ragged:
            block(xf, boost, of, b, hw - lanes)

    nboost = c if spec.boost == "channel" else n

    if spec.boost is not None:

        @T.prim_func
        def kernel(
            x: T.Buffer(spec.x_shape, "float32"),
            boost: T.Buffer((nboost,), "float32"),
            rank: T.Buffer((1,), "int32"),
            out: T.Buffer(spec.out_shape, "float32"),
        ):
            xf = T.decl_buffer((batch * n,), "float32", data=x.data)
            of = T.decl_buffer((batch * n,), "float32", data=out.data)
            for b in rows(batch):
                sample(xf, boost, of, b)

    else:

        @T.prim_func
        def kernel(
            x: T.Buffer(spec.x_shape, "float32"),
            rank: T.Buffer((1,), "int32"),
            out: T.Buffer(spec.out_shape, "float32"),
        ):
            xf = T.decl_buffer((batch * n,), "float32", data=x.data)
            of = T.decl_buffer((batch * n,), "float32", data=out.data)
            for b in rows(batch):
                sample(xf, None, of, b)

    return kernel
