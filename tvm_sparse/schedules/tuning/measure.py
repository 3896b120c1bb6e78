"""Timing a built kernel: in this process, or on a device an RPC tracker hands out.

Building always happens here; only loading and running move to the device with
:class:`RPCMeasurer`. Both return (seconds, output), so the search can check every setting's
output against the hand schedule's. On a CPU they time one call per repeat
(``candidate_run.TIMER_SETTINGS``) with the weights evicted first, from L1/L2 or from every cache
(``WEIGHTS_IN``): where a model keeps them between two inferences. The device is the target's:
the CPU, or GPU 0 for a CUDA target (here or remote).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import tvm

from ...machine import machine_id, rpc_machine_id
from ...target import is_cpu
from ..candidate_run import GPU_TIMER_SETTINGS, TIMER_SETTINGS
from ..kernel import KernelCall, cold_weights_preproc, evict_private_caches_preproc, kernel_device
from ..weights_residency import DRAM, L3, WEIGHTS_IN


class LocalMeasurer:
    """Builds and times kernels in this process, on this machine's CPU."""

    where = "local"

    def __init__(
        self, target: tvm.target.Target, settings: dict | None = None, weights_in: str = "dram"
    ):
        self.target = target
        cpu = is_cpu(target)
        self.settings = dict(settings or (TIMER_SETTINGS if cpu else GPU_TIMER_SETTINGS))
        self.machine = machine_id(target)  # what the records of its measurements are keyed by
        if weights_in not in WEIGHTS_IN:
            raise ValueError(f"weights_in must be one of {WEIGHTS_IN}, got {weights_in!r}")
        self.weights_in = weights_in

    def _load(self, executable) -> tuple[Any, Any]:
        return executable.jit(), kernel_device(self.target)

    def timer(self, mod: tvm.IRModule, args: list[np.ndarray], out_index: int = -1,
              weights_in: str | None = None):  # fmt: skip
        """Build ``mod`` once and return (``time()`` -> median seconds of one sample, output):
        a timer that can be called again, so several kernels can be timed in turns.
        ``weights_in`` overrides the measurer's: one of ``WEIGHTS_IN``, or ``EVERY_CACHE`` to
        time as MetaSchedule's runner does (every argument but the first flushed)."""
        executable = tvm.compile(mod, target=self.target)
        return self._timed(*self._load(executable), args, out_index, weights_in)

    def library_timer(self, library: str, args: list[np.ndarray], out_index: int = -1):
        """``timer`` of a kernel built elsewhere (``build_pool``) and exported to ``library``."""
        return self._timed(*self._load_library(library), args, out_index, None)

    def _load_library(self, library: str) -> tuple[Any, Any]:
        return tvm.runtime.load_module(library), kernel_device(self.target)

    def _timed(self, lib, dev, args: list[np.ndarray], out_index: int, weights_in: str | None):
        tensors = [tvm.runtime.tensor(a, dev) for a in args]
        lib["main"](*tensors)
        out = tensors[out_index].numpy()
        preproc = self._preproc(weights_in or self.weights_in) if is_cpu(self.target) else ""
        evaluator = lib.time_evaluator("main", dev, f_preproc=preproc, **self.settings)
        return (lambda: float(np.median(evaluator(*tensors).results))), out

    def _preproc(self, weights_in: str) -> str:
        """The pre-call hook that puts the weights where ``weights_in`` says."""
        return _CPU_PREPROC[weights_in]()

    def run(self, mod: tvm.IRModule, args: list[np.ndarray], out_index: int = -1,
            weights_in: str | None = None):  # fmt: skip
        """Build ``mod`` (its ``main``), time it on ``args`` and return (seconds, output)."""
        time_it, out = self.timer(mod, args, out_index, weights_in)
        return time_it(), out

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class RPCMeasurer(LocalMeasurer):
    """Builds here, runs on a device that a TVM RPC tracker hands out for ``key``."""

    where = "rpc"

    def __init__(self, target: tvm.target.Target, tracker: str, key: str, **kwargs):
        super().__init__(target, **kwargs)

        self.host, self.port = _split_tracker(tracker)
        self.key = key
        self.weights_in = "dram"  # the remote's caches are unknown; its flush is built in
        self.machine = rpc_machine_id(key, target)
        self._session = None
        self.tmp = tempfile.TemporaryDirectory(prefix="tvm_sparse_rpc_")
        self.count = 0

    @property
    def session(self):
        """The device session, requested from the tracker on first use."""
        if self._session is None:
            from tvm import rpc

            tracker = rpc.connect_tracker(self.host, self.port)
            self._session = tracker.request(self.key, priority=1, session_timeout=0)
        return self._session

    def release(self) -> None:
        """Give the device back to the tracker (MetaSchedule's runner requests its own)."""
        import gc

        self._session = None
        gc.collect()  # the session closes when its last reference (modules, tensors) goes

    def _preproc(self, weights_in: str) -> str:
        """TVM's own flush of every argument but the first: the hooks registered in this
        process do not exist on the remote."""
        return FLUSH_ALL

    def _load(self, executable) -> tuple[Any, Any]:
        self.count += 1
        path = os.path.join(self.tmp.name, f"k{self.count}.so")
        executable.export_library(path)
        return self._load_library(path)

    def _load_library(self, library: str) -> tuple[Any, Any]:
        name = os.path.basename(library)
        self.session.upload(library, target=name)
        kind = "cpu" if is_cpu(self.target) else str(self.target.kind.name)
        return self.session.load_module(name), self.session.device(kind, 0)

    def close(self) -> None:
        self.release()
        self.tmp.cleanup()


# Where a timed kernel's weights come from (CPU; ``weights_residency.WEIGHTS_IN``): "dram"
# flushes them from every cache before each call (a model whose weights exceed the last-level
# cache); "l3" evicts only L1 and L2 (a model whose weights fit the L3 finds them there a whole
# inference later). MiniLM-L6 at 90% (8.5 MB of weights, 480 MB L3): its 36 CSR kernels summed
# 6.28 ms timed "dram", 4.79 ms "l3", 4.28 ms warm, and ~4.6 ms in the model (perf); tuned
# "dram", per-layer gains of 1.18x came out as 1.02x in the model.
FLUSH_ALL = "cache_flush_cpu_non_first_arg"
# Every argument but the first flushed, the output included: how MetaSchedule's runner times
# (``metaschedule`` times its default schedule so, to compare with the runner's candidates).
EVERY_CACHE = "every-cache"
# The pre-call hook of each place: "dram" flushes the weights only, as the per-layer choice
# times (``kernel.cold_weights_preproc``): a model's output memory was just used by an earlier
# layer. The tuner used to flush the output too, ranking knobs by how they pay for DRAM reads of
# the lines they write, which the model does not pay.
_CPU_PREPROC = {
    DRAM: cold_weights_preproc,
    L3: evict_private_caches_preproc,
    EVERY_CACHE: lambda: FLUSH_ALL,
}


def free_rpc_devices(tracker: str, key: str) -> int:
    """How many servers of ``key`` the tracker at ``HOST:PORT`` has free now."""
    from tvm import rpc

    host, port = _split_tracker(tracker)
    queue = rpc.connect_tracker(host, port).summary().get("queue_info", {})
    return int(queue.get(key, {}).get("free", 0))


def _split_tracker(tracker: str) -> tuple[str, int]:
    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit():
        from ...errors import TvmSparseError

        raise TvmSparseError(f"--rpc-tracker must be HOST:PORT, got {tracker!r}")
    return host, int(port)


def _kernel_module(call: KernelCall) -> tvm.IRModule:
    return tvm.IRModule({"main": call.func.with_attr("global_symbol", "main")})


def measured_timer(measurer: LocalMeasurer, call: KernelCall, x: np.ndarray):
    """(repeatable timer, output) of one kernel on ``x`` with its constants (see
    ``LocalMeasurer.timer``)."""
    out = np.zeros(call.out_shape, dtype=call.out_dtype)
    return measurer.timer(_kernel_module(call), [x, *call.consts, out])


def measure_built(measurer: LocalMeasurer, built, x: np.ndarray):
    """(seconds, output) of a kernel a build pool built (``build_pool.BuiltTrial``)."""
    out = np.zeros(built.out_shape, dtype=built.out_dtype)
    time_it, result = measurer.library_timer(built.library, [x, *built.consts, out])
    return time_it(), result


def measure_kernel(measurer: LocalMeasurer, call: KernelCall, x: np.ndarray):
    """(seconds, output) of one kernel on ``x`` with its constants."""
    time_it, out = measured_timer(measurer, call, x)
    return time_it(), out
