"""A tracker and RPC servers on this machine: to try tuning over RPC, in tests and benchmarks.

The servers run kernels on the CPU here, so they behave as ``key`` devices would, and
``tune(..., rpc_tracker=address, rpc_key=key)`` measures on them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


@contextlib.contextmanager
def loopback_rpc(key: str, servers: int = 1, register_s: float = 60.0) -> Iterator[str]:
    """Start a tracker and ``servers`` servers of ``key`` on 127.0.0.1; yield the tracker's
    ``HOST:PORT`` once every server has registered (each is a process that imports TVM first:
    seconds on a loaded machine); stop them all on exit."""
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    from ...errors import TvmSparseError
    from .measure import free_rpc_devices

    tracker = Tracker("127.0.0.1", port=9190, port_end=9290, silent=True)
    address = f"127.0.0.1:{tracker.port}"
    started = []
    try:
        for i in range(servers):
            started.append(
                Server(
                    "127.0.0.1",
                    port=9300 + 20 * i,
                    port_end=9320 + 20 * i,
                    tracker_addr=("127.0.0.1", tracker.port),
                    key=key,
                    silent=True,
                )
            )
        deadline = time.monotonic() + register_s
        while (free := free_rpc_devices(address, key)) < servers:
            if time.monotonic() > deadline:
                raise TvmSparseError(
                    f"{free} of {servers} RPC servers of {key!r} registered in {register_s} s"
                )
            time.sleep(0.1)
        yield address
    finally:
        for server in started:
            server.terminate()
        tracker.terminate()
