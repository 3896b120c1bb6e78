"""Build a Relax module for a CPU target and run its ``main``: what the fusion pass tests check
a rewritten module's result with."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def run_main(mod: tvm.IRModule, target: tvm.target.Target, *inputs: np.ndarray) -> np.ndarray:
    """``main(*inputs)`` of ``mod`` built for ``target`` (in its scope) on the CPU."""
    with target:
        ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in inputs]).numpy()
