"""A beat-level model of the generated DATAFLOW pipeline, to check FIFO depths (the g++ C
simulation runs the stages one after the other over unbounded streams, so it cannot deadlock and
says nothing about depths).

Each stage is modelled as its engine is written in ``nnet_sparse.h``: a weighted / pooling /
ReLU / k-WTA stage reads its whole input (one beat a cycle), computes, then writes (one beat a
cycle while the FIFO has room); a clone or an add moves one beat a cycle when all its streams
allow. Dense streams only (a sparse stream's length depends on the data).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from tvm_sparse.codegen.fpga.hw_model import HwLayer, HwModel

Stream = tuple[int, int]


def simulate_dataflow(
    hw: HwModel,
    compute: dict[int, int],
    depth: Callable[[int, int], int],
    samples: int,
    limit: int = 10**7,
) -> list[int] | None:
    """Cycle at which each of ``samples`` samples has left the kernel, or None on a deadlock.

    ``compute[index]``: cycles a stage spends between its read and write phases;
    ``depth(index, port)``: capacity (beats) of the FIFO leaving stage ``index`` on ``port``.
    """
    count: dict[Stream, int] = {(-1, 0): 0}
    cap: dict[Stream, int] = {(-1, 0): 2}
    for x in hw.layers:
        for port in range(x.n_outputs):
            count[(x.index, port)], cap[(x.index, port)] = 0, depth(x.index, port)
    moved = [0]  # beats moved and compute cycles spent: what a live pipeline does every cycle
    finished: list[int] = []
    clock = [0]

    def beats(src: Stream) -> int:
        if src[0] < 0:
            return math.ceil(math.prod(hw.input_shape) / hw.input_pack)
        layer = hw.layers[src[0]]
        return math.ceil(layer.n_out / layer.pack_out)

    def move(ins: list[Stream], outs: list[Stream]) -> bool:
        if any(count[s] == 0 for s in ins) or any(count[s] >= cap[s] for s in outs):
            return False
        for s in ins:
            count[s] -= 1
        for s in outs:
            count[s] += 1
        moved[0] += 1
        return True

    def source() -> Iterator[None]:
        for _ in range(samples * beats((-1, 0))):
            while not move([], [(-1, 0)]):
                yield
            yield

    def stage(x: HwLayer) -> Iterator[None]:
        src, out = hw.sources(x)[0], (x.index, 0)
        for _ in range(samples):
            for _ in range(beats(src)):
                while not move([src], []):
                    yield
                yield
            for _ in range(compute[x.index]):
                moved[0] += 1
                yield
            for _ in range(beats(out)):
                while not move([], [out]):
                    yield
                yield

    def beatwise(x: HwLayer) -> Iterator[None]:
        ins, outs = hw.sources(x), [(x.index, p) for p in range(x.n_outputs)]
        for _ in range(samples * beats(ins[0])):
            while not move(ins, outs):
                yield
            yield

    def sink() -> Iterator[None]:
        last = (hw.layers[-1].index, 0)
        for _ in range(samples):
            for _ in range(beats(last)):
                while not move([last], []):
                    yield
                yield
            finished.append(clock[0])

    procs = [source(), sink()]
    procs += [beatwise(x) if x.op in ("clone", "add") else stage(x) for x in hw.layers]
    while procs and clock[0] < limit:
        before = moved[0]
        for p in list(procs):
            try:
                next(p)
            except StopIteration:
                procs.remove(p)
        clock[0] += 1
        if procs and moved[0] == before:
            return None  # nothing moved: every live process waits on another
    return finished
