"""One asyncio loop per process that libvirt dispatches its events on (through ``libvirtaio``).

libvirt accepts exactly one event-loop implementation per process, registered before the first
connection is opened and run for the life of the process. So the host side never calls
``asyncio.run`` itself: it runs coroutines on a single long-lived loop thread started here,
which CLI verbs, the daemon, ``selftest`` and the tests all share.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["event_loop", "run", "submit"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    import libvirtaio  # imported here: only the host side needs it

    libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    ready.set()
    loop.run_forever()


def event_loop() -> asyncio.AbstractEventLoop:
    """Return the process's libvirt event loop, starting its thread on first use.

    Must be called before the first ``libvirt.open`` whose events we want.
    """
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=_serve, args=(loop, ready), name="libvirt-events", daemon=True)
            thread.start()
            ready.wait()
            _loop = loop
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the event loop thread; return a thread-safe future."""
    return asyncio.run_coroutine_threadsafe(coro, event_loop())


def run(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run ``coro`` on the event loop thread and wait for its result (from a non-loop thread).

    :raises TimeoutError: after ``timeout_s`` seconds; the coroutine is cancelled.
    """
    fut = submit(coro)
    try:
        return fut.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError as exc:
        fut.cancel()
        raise TimeoutError(f"operation did not finish within {timeout_s} s") from exc
    except KeyboardInterrupt:
        fut.cancel()
        raise
