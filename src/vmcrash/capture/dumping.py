"""Taking the memory dump: libvirt's ``virDomainCoreDumpWithFormat`` into a file or into our stream.

Two engines, one interface (:func:`take_dump`):

* ``direct``: libvirt opens the target file itself and QEMU writes every byte, zeros included.
* ``stream``: the target is a FIFO; QEMU writes its dump into it and vmcrash consumes the stream,
  writing it out with large sequential writes and leaving every all-zero, 4 KiB-aligned block as
  a hole. The result reads back byte for byte like the direct dump (holes read as zeros), but an
  idle guest's dump occupies a fraction of its RAM and the guest is frozen only for as long as
  its non-zero memory takes to write. Works for any format; it pays off for ELF.

Both follow the dump's progress through libvirt's job stats and can be aborted
(``abort`` event → ``virDomainAbortJob``). A failed or aborted dump leaves only the ``.partial``
file, which the caller removes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from vmcrash.capture.files import storage_errors
from vmcrash.errors import LibvirtRefused, StorageError, VmcrashError
from vmcrash.host.connection import translate

__all__ = [
    "FORMAT_CODES",
    "PAGE_BYTES",
    "DumpProgress",
    "DumpStats",
    "take_dump",
    "SparseWriter",
    "zero_runs",
]

log = logging.getLogger(__name__)

FORMAT_CODES = {
    "elf": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW,
    "kdump-zlib": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_ZLIB,
    "kdump-lzo": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_LZO,
    "kdump-snappy": libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_KDUMP_SNAPPY,
}

PAGE_BYTES = 4096
CHUNK_BYTES = 4 << 20
_ZERO_PAGE = bytes(PAGE_BYTES)
_ZERO_CHUNK = bytes(CHUNK_BYTES)
F_SETPIPE_SZ = 1031


@dataclass(frozen=True)
class DumpProgress:
    """One progress sample. ``total_bytes`` is 0 until libvirt knows it."""

    processed_bytes: int
    total_bytes: int
    elapsed_s: float
    #: bytes of the stream consumed so far (streamed) or file size (direct)
    written_bytes: int = 0
    #: all-zero pages left as holes so far (streamed only)
    zero_pages: int = 0

    @property
    def fraction(self) -> float:
        return self.processed_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass
class DumpStats:
    """What a finished dump cost. Sizes in bytes, times in seconds."""

    mode: str
    format: str
    started_ns: int = 0
    ended_ns: int = 0
    seconds: float = 0.0
    stream_bytes: int = 0
    written_bytes: int = 0
    zero_pages_skipped: int = 0
    threads: int = 1
    staged_in: str | None = None
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def zero_runs(chunk: bytes | bytearray, page_bytes: int = PAGE_BYTES) -> list[tuple[int, int, bool]]:
    """Split ``chunk`` into runs ``(start, end, is_zero)``; zero runs are whole aligned pages. Pure.

    Everything that is not an all-zero page aligned to ``page_bytes`` (a trailing partial page
    included) is data. Adjacent pages of the same kind are merged so that the caller issues one
    write per data run. Searching with ``bytes.find`` for a page of zeros keeps random data fast.
    """
    n = len(chunk)
    zero_page = _ZERO_PAGE if page_bytes == PAGE_BYTES else bytes(page_bytes)
    if n == CHUNK_BYTES and page_bytes == PAGE_BYTES and chunk == _ZERO_CHUNK:
        return [(0, n, True)]
    full = n - n % page_bytes
    runs: list[tuple[int, int, bool]] = []
    pos = 0  # start of the pending data run
    off = 0  # where to search next
    while True:
        found = chunk.find(zero_page, off, full)
        if found < 0:
            break
        aligned = -(-found // page_bytes) * page_bytes
        if aligned + page_bytes > full:
            break
        if chunk[aligned:aligned + page_bytes] != zero_page:
            off = aligned + 1
            continue
        end = aligned + page_bytes
        while end + page_bytes <= full and chunk[end:end + page_bytes] == zero_page:
            end += page_bytes
        if aligned > pos:
            runs.append((pos, aligned, False))
        runs.append((aligned, end, True))
        pos = off = end
    if pos < n:
        runs.append((pos, n, False))
    return runs


class SparseWriter:
    """Write a byte stream to ``fd`` from offset 0, leaving all-zero aligned pages as holes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0
        self.written = 0
        self.zero_pages = 0

    def write(self, chunk: bytes | bytearray) -> None:
        """Append ``chunk`` (its start must stay page-aligned except for the very last chunk)."""
        for start, end, is_zero in zero_runs(chunk):
            if is_zero:
                self.zero_pages += (end - start) // PAGE_BYTES
            else:
                view = memoryview(chunk)[start:end]
                pos = self.offset + start
                while view:
                    n = os.pwrite(self.fd, view, pos)
                    view = view[n:]
                    pos += n
                self.written += end - start
        self.offset += len(chunk)

    def finish(self) -> None:
        """Give the file its full length (a trailing hole has no blocks otherwise)."""
        os.ftruncate(self.fd, self.offset)


def _read_full(fd: int, buf: bytearray) -> int:
    """Fill ``buf`` from a pipe (reads return at most the pipe size); 0 only at EOF."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


class _StreamConsumer:
    """Reads QEMU's dump from a FIFO and writes it sparse. ``threads=2`` overlaps read and write."""

    def __init__(self, fifo: Path, out_fd: int, limit_bytes: int, threads: int) -> None:
        self.fifo = fifo
        self.writer = SparseWriter(out_fd)
        self.limit_bytes = limit_bytes
        self.threads = threads
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self.aborted = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"dump-stream:{fifo.name}", daemon=True)

    @property
    def stream_bytes(self) -> int:
        return self.writer.offset

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            fd = os.open(self.fifo, os.O_RDONLY)  # blocks until libvirt opens the write end
            self.opened.set()
            try:
                try:
                    fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
                except OSError:
                    pass
                if self.threads > 1:
                    self._pipeline(fd)
                else:
                    self._serial(fd)
            finally:
                os.close(fd)
        except BaseException as exc:  # reported to the caller through .error
            self.error = exc

    def abort(self) -> None:
        """Stop consuming: the reader closes the FIFO and QEMU's next write fails (EPIPE)."""
        self.aborted.set()

    def _check_limit(self, n: int) -> None:
        if self.aborted.is_set():
            raise StorageError("dump aborted")
        if self.writer.offset + n > self.limit_bytes:
            raise StorageError(f"dump stream exceeds the expected {self.limit_bytes} bytes; aborted")

    def _serial(self, fd: int) -> None:
        buf = bytearray(CHUNK_BYTES)
        view = memoryview(buf)
        while n := _read_full(fd, buf):
            self._check_limit(n)
            # no copy: the writer looks at and writes from the buffer before the next read
            self.writer.write(buf if n == CHUNK_BYTES else view[:n].tobytes())
        self.writer.finish()

    def _pipeline(self, fd: int) -> None:
        import queue

        q: queue.Queue[bytes | bytearray | None] = queue.Queue(maxsize=8)
        failure: list[BaseException] = []

        def write_loop() -> None:
            try:
                while (chunk := q.get()) is not None:
                    self.writer.write(chunk)
                self.writer.finish()
            except BaseException as exc:
                failure.append(exc)
                while q.get() is not None:  # drain so the reader never blocks
                    pass

        w = threading.Thread(target=write_loop, name="dump-writer", daemon=True)
        w.start()
        total = 0
        try:
            while True:
                buf = bytearray(CHUNK_BYTES)  # a fresh buffer per chunk: the writer owns the last one
                n = _read_full(fd, buf)
                if not n:
                    break
                total += n
                if self.aborted.is_set():
                    raise StorageError("dump aborted")
                if total > self.limit_bytes:
                    raise StorageError(f"dump stream exceeds the expected {self.limit_bytes} bytes; aborted")
                q.put(buf if n == CHUNK_BYTES else bytes(buf[:n]))
        finally:
            q.put(None)
            w.join()
        if failure:
            raise failure[0]

    def unblock(self) -> None:
        """If libvirt never opened the FIFO, open its write end so our reader sees EOF."""
        if not self.opened.is_set():
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass


def _job_progress(dom: libvirt.virDomain, t0: float, written: Callable[[], int],
                  zero_pages: Callable[[], int]) -> DumpProgress | None:
    try:
        st = dom.jobStats()
    except libvirt.libvirtError:
        return None
    if not st or not st.get("type"):
        return None
    return DumpProgress(int(st.get("memory_processed", 0)), int(st.get("memory_total", 0)),
                        time.monotonic() - t0, written(), zero_pages())


def take_dump(dom: libvirt.virDomain, target: Path, fmt: str, *, mode: str = "stream",
              expected_bytes: int, progress: Callable[[DumpProgress], None] | None = None,
              abort: threading.Event | None = None, threads: int = 1,
              poll_s: float = 0.25) -> DumpStats:
    """Dump ``dom``'s memory (memory-only) to ``target`` in ``fmt``; return what it cost.

    ``target`` must not exist; it is created 0600. ``expected_bytes`` bounds the stream (a dump
    larger than 1.25× that is aborted). Setting ``abort`` cancels the dump through libvirt.

    :raises LibvirtRefused: libvirt/QEMU refused or failed the dump (aborted included).
    :raises StorageError: the target could not be written (e.g. disk full).
    """
    if fmt not in FORMAT_CODES:
        raise VmcrashError(f"unknown dump format {fmt!r}")
    name = dom.name()
    stats = DumpStats(mode=mode, format=fmt, threads=threads if mode == "stream" else 1)
    fifo: Path | None = None
    consumer: _StreamConsumer | None = None
    out_fd = -1
    with storage_errors("cannot create dump file", target):
        out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        libvirt_path = target
        if mode == "stream":
            fifo = target.with_name(target.name + ".fifo")
            with storage_errors("cannot create FIFO", fifo):
                if fifo.exists() or fifo.is_symlink():
                    fifo.unlink()
                os.mkfifo(fifo, 0o600)
            consumer = _StreamConsumer(fifo, out_fd, int(expected_bytes * 1.25) + (64 << 20), threads)
            consumer.start()
            libvirt_path = fifo
        else:
            os.close(out_fd)
            out_fd = -1

        result: dict[str, BaseException | None] = {"error": None}
        done = threading.Event()

        def run_dump() -> None:
            try:
                dom.coreDumpWithFormat(str(libvirt_path), FORMAT_CODES[fmt], libvirt.VIR_DUMP_MEMORY_ONLY)
            except BaseException as exc:
                result["error"] = exc
            finally:
                done.set()

        stats.started_ns = time.time_ns()
        t0 = time.monotonic()
        worker = threading.Thread(target=run_dump, name=f"dump:{name}", daemon=True)
        worker.start()

        def written() -> int:
            if consumer is not None:
                return consumer.stream_bytes
            try:
                return os.stat(target).st_size
            except OSError:
                return 0

        aborted = False
        tried_abort = False
        while not done.wait(poll_s):
            if abort is not None and abort.is_set() and not aborted and not tried_abort:
                tried_abort = True
                aborted = True
                if consumer is not None:
                    log.warning("%s: aborting dump (closing the stream)", name)
                    consumer.abort()
                else:
                    # libvirt cannot abort a memory-only dump job; a direct dump runs to its end.
                    log.warning("%s: a direct memory-only dump cannot be aborted; finishing it", name)
                    aborted = False
            if progress is not None:
                sample = _job_progress(dom, t0, written,
                                       lambda: consumer.writer.zero_pages if consumer is not None else 0)
                if sample is not None:
                    stats.samples += 1
                    progress(sample)
        worker.join()
        if consumer is not None:
            consumer.unblock()
            consumer.thread.join(timeout=120)
        stats.ended_ns = time.time_ns()
        stats.seconds = time.monotonic() - t0
        err = result["error"]
        if aborted and consumer is not None and consumer.aborted.is_set():
            raise LibvirtRefused("dump aborted (daemon stopping)", domain=name) from err
        if isinstance(err, libvirt.libvirtError):
            raise translate(err, domain=name) from err
        if err is not None:
            raise err
        if consumer is not None:
            if consumer.thread.is_alive():
                raise StorageError("dump stream did not finish", path=str(target))
            if consumer.error is not None:
                if isinstance(consumer.error, OSError):
                    with storage_errors("cannot write dump", target):
                        raise consumer.error
                raise consumer.error
            stats.stream_bytes = consumer.stream_bytes
            stats.written_bytes = consumer.writer.written
            stats.zero_pages_skipped = consumer.writer.zero_pages
        else:
            size = os.stat(target).st_size
            stats.stream_bytes = stats.written_bytes = size
        if progress is not None:
            progress(DumpProgress(stats.stream_bytes, stats.stream_bytes, stats.seconds, stats.stream_bytes,
                                  stats.zero_pages_skipped))
        return stats
    finally:
        if out_fd >= 0:
            os.close(out_fd)
        if fifo is not None:
            try:
                fifo.unlink()
            except FileNotFoundError:
                pass
