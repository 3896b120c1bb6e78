"""A tracker and RPC servers on this machine: to try tuning over RPC, in tests and benchmarks.

The servers run kernels on the CPU here, so they behave as ``key`` devices would, and
``tune(..., rpc_tracker=address, rpc_key=key)`` measures on them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


@contextlib.contextmanager
def loopback_rpc(key: str, servers: int = 1, settle_s: float = 0.0) -> Iterator[str]:
    """Start a tracker and ``servers`` servers of ``key`` on 127.0.0.1; yield the tracker's
    ``HOST:PORT``; stop them all on exit. ``settle_s``: wait that long for the servers to
    register (a tune requests its devices at once; a request waits for a free one anyway)."""
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    tracker = Tracker("127.0.0.1", port=9190, port_end=9290, silent=True)
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
        time.sleep(settle_s)
        yield f"127.0.0.1:{tracker.port}"
    finally:
        for server in started:
            server.terminate()
        tracker.terminate()
