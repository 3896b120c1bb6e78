"""The write pass of k-WTA (step 5): keep every value ranked at or above the k-th largest,
alone or fused with a max-pool whose windows max the kept values as they are written."""

from __future__ import annotations

from functools import partial

from tvm.script import tirx as T

from ._kwta_keys import VEC_POOL_WIDTH, KwtaSpec, bcast


def _kept_vec(spec: KwtaSpec, xf, boost, b, i, t, lanes):
    """``lanes`` values of row ``b`` from ``i`` where they rank ``>= t``, else 0."""
    return T.Select(
        spec.ranked_vec(xf, boost, b, i, lanes) >= bcast(t, lanes),
        xf[T.ramp(b * spec.n + i, 1, lanes)],
        bcast(T.float32(0), lanes),
    )


def write_flat_macro(spec: KwtaSpec):
    """Macro: ``of[b, i] = x[b, i]`` where its ranked value is ``>= t``, else 0."""
    n, nvec, ntail, lanes = spec.n, spec.nvec, spec.ntail, spec.lanes
    ranked = spec.ranked

    kept_vec = partial(_kept_vec, spec)

    @T.macro
    def write_flat(xf, boost, of, b, t):
        # Step 5. Keep every value ranked >= the k-th (float compare: NaN never kept).
        for i0 in range(nvec):
            of[T.ramp(b * n + i0 * lanes, 1, lanes)] = kept_vec(xf, boost, b, i0 * lanes, t, lanes)
        for it in range(ntail):
            i: T.let = nvec * lanes + it
            of[b * n + i] = T.Select(ranked(xf, boost, b, i) >= t, xf[b * n + i], T.float32(0))

    return write_flat


def untie_macro(spec: KwtaSpec):
    """Macro: exactly k winners. Of the values ranked equal to the k-th, ``tie[1]`` of them,
    only the first ``tie[0]`` in index order stay (ONNX TopK breaks ties by the lower index);
    the write pass kept them all. Runs only on a row that has such ties."""
    n = spec.n
    ranked = spec.ranked

    @T.macro
    def untie(xf, boost, of, b, t, tie):
        tie[2] = 0
        for i in range(n):
            if ranked(xf, boost, b, i) == t:
                if tie[2] >= tie[0]:
                    of[b * n + i] = T.float32(0)
                tie[2] = tie[2] + 1

    return untie


def write_pooled_macro(spec: KwtaSpec):
    """Macro: the kept values of row ``b`` max-pooled into ``of`` (see ``kwta_maxpool_kernel``)."""
    n, pool = spec.n, spec.pool
    ranked = spec.ranked
    pc, (ih, iw), (oh, ow) = pool.c, pool.in_hw, pool.out_hw
    (ph, pw), (sh, sw) = pool.size, pool.strides

    kept_vec = partial(_kept_vec, spec)

    def kept(xf, boost, b, i, t):
        return T.Select(ranked(xf, boost, b, i) >= t, xf[b * n + i], T.float32(0))

    def pooled_row(xf, boost, b, c, r, t):
        # one output row as vector expressions: the window rows' kept values maxed lane-wise,
        # then each window's columns picked by shuffles and maxed (kept values are never NaN)
        base = c * ih * iw + r * sh * iw
        rowmax = kept_vec(xf, boost, b, base, t, iw)
        for di in range(1, ph):
            rowmax = T.max(rowmax, kept_vec(xf, boost, b, base + di * iw, t, iw))
        pooled = T.Shuffle([rowmax], [q * sw for q in range(ow)])
        for dj in range(1, pw):
            pooled = T.max(pooled, T.Shuffle([rowmax], [q * sw + dj for q in range(ow)]))
        return pooled

    @T.macro
    def write_pooled(xf, boost, of, b, t):
        # Step 5 fused with the max-pool: each window's kept values, maxed, written once.
        if iw <= VEC_POOL_WIDTH and ow > 1:
            for c in range(pc):
                for r in range(oh):
                    of[T.ramp(((b * pc + c) * oh + r) * ow, 1, ow)] = pooled_row(
                        xf, boost, b, c, r, t
                    )
        else:
            rowmax = T.alloc_buffer((iw,), "float32", scope="global")
            for c in range(pc):
                for r in range(oh):
                    for w in T.vectorized(iw):
                        rowmax[w] = kept(xf, boost, b, c * ih * iw + r * sh * iw + w, t)
                    for di in range(ph - 1):
                        for w in T.vectorized(iw):
                            rowmax[w] = T.max(
                                rowmax[w],
                                kept(xf, boost, b, c * ih * iw + (r * sh + di + 1) * iw + w, t),
                            )
                    for q in range(ow):
                        m_ = rowmax[q * sw]
                        for dj in range(pw - 1):
                            m_ = T.max(m_, rowmax[q * sw + dj + 1])
                        of[((b * pc + c) * oh + r) * ow + q] = m_

    return write_pooled
