"""Writing the seekable kdump-compressed format: convert any readable dump, or rearrange a flattened one.

Output layout (what :mod:`._kdump` reads, makedumpfile's ``diskdump_mod.h``), header version 6::

    block 0        disk_dump_header: utsname, status = codec bit, block size, bitmap size, nr_cpus
    block 1..      kdump_sub_header (phys_base, dump_level, 64-bit max_mapnr), then the ELF notes
                   (per-vCPU PRSTATUS/QEMU and VMCOREINFO notes as the source had them), then
                   VMCOREINFO text
    bitmaps        bitmap 1 = pages the source has, bitmap 2 = pages stored (zero pages excluded)
    descriptors    24 bytes per stored page; room is reserved for every present page, so data can
                   be appended in one pass (the unused tail of the area is a hole)
    data           each page compressed alone, or raw when it does not shrink

Crash safety: everything is written to ``<dst>.part``; every ``checkpoint_bytes`` of input the
data, descriptors and bitmap written so far are fsynced and ``<dst>.part.ckpt`` (small JSON)
records where to continue. A later call with the same source and options continues from there.
Only the final atomic rename makes ``<dst>`` exist, so a half-written file never looks complete.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import json
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from vmcrash.durable import fsync_parent
from vmcrash.errors import DumpFormatError, GuestMemoryError, StorageError, UsageError, VmcrashError, storage_errors

from ._base import DumpReader
from ._codecs import get_codec, resolve_codec
from ._flat import FLAT_HEADER_BYTES, check_flat_header, iter_flat_records
from ._io import MASK64, DumpFile
from ._kdump import DISK_DUMP_HEADER, PAGE_DESC, SUB_HEADER, KdumpReader
from ._notes import NT_PRSTATUS, Note
from ._open import open_dump
from ._vmcoreinfo import VmcoreInfo

__all__ = [
    "DEFAULT_CHECKPOINT_BYTES",
    "ConvertResult",
    "convert_to_kdump",
    "rearrange_flattened",
]

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_BYTES = 256 << 20
_CKPT_VERSION = 1
_BATCH_PAGES = 256
#: Largest guest memory converted, in pages (16 TiB of 4 KiB pages: a 512 MiB bitmap in memory).
MAX_CONVERT_PFNS = 1 << 32
_FLUSH_BYTES = 8 << 20
_COPY_CHUNK = 8 << 20
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote.

    :ivar codec: page codec used (``"unchanged"`` for :func:`rearrange_flattened`).
    :ivar pages_present: pages of guest RAM in the source. :ivar pages_written: pages stored.
    :ivar pages_excluded: present pages left out (zero pages, or unreadable in the source).
    :ivar pages_raw: stored pages that did not compress and were kept raw.
    :ivar resumed_from: pfn (convert) or input byte offset (rearrange) a previous run had reached,
        or ``None`` for a fresh start.
    """

    src: str
    dst: str
    source_format: str
    codec: str
    src_size_bytes: int
    dst_size_bytes: int
    pages_present: int
    pages_written: int
    pages_excluded: int
    pages_raw: int
    seconds: float
    resumed_from: int | None = None
    #: free pages (buddy allocator) left out with ``exclude_free``; why not, when the scan failed
    pages_free_excluded: int = 0
    free_scan_problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- shared helpers ---------------------------------------------------------------------------


def _identity(path: str) -> dict[str, int | str]:
    with storage_errors("cannot stat", path):
        st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


class _Part:
    """``<dst>.part`` opened for writing, locked against a second writer, OSError -> StorageError."""

    def __init__(self, dst: str) -> None:
        self.dst = dst
        self.path = dst + ".part"
        self.ckpt_path = dst + ".part.ckpt"
        if os.path.exists(dst):
            raise UsageError(f"{dst}: already exists; remove it or choose another destination")
        with storage_errors("cannot create", self.path):
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            raise StorageError("another conversion is writing this file", path=self.path) from exc

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            with storage_errors("write failed", self.path):
                n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def pread(self, size: int, offset: int) -> bytes:
        with storage_errors("read failed", self.path):
            return os.pread(self.fd, size, offset)

    def truncate(self, size: int) -> None:
        with storage_errors("truncate failed", self.path):
            os.ftruncate(self.fd, size)

    def sync(self) -> None:
        with storage_errors("fsync failed", self.path):
            os.fsync(self.fd)

    def load_checkpoint(self) -> dict[str, Any] | None:
        try:
            with open(self.ckpt_path, encoding="utf-8") as fh:
                raw = fh.read(1 << 20)
            doc = json.loads(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable checkpoint, starting over: %s", self.ckpt_path, exc)
            return None
        return doc if isinstance(doc, dict) and doc.get("version") == _CKPT_VERSION else None

    def save_checkpoint(self, doc: dict[str, Any]) -> None:
        self.sync()
        tmp = self.ckpt_path + ".tmp"
        with storage_errors("cannot write checkpoint", self.ckpt_path):
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.ckpt_path)
            fsync_parent(self.ckpt_path)

    def drop_checkpoint(self) -> None:
        for p in (self.ckpt_path, self.ckpt_path + ".tmp"):
            with storage_errors("cannot remove", p), contextlib.suppress(FileNotFoundError):
                os.unlink(p)

    def finish(self) -> int:
        """fsync, rename to ``dst`` atomically, drop the checkpoint; returns the final size."""
        self.sync()
        size = os.fstat(self.fd).st_size
        with storage_errors("cannot rename into place", self.dst):
            os.replace(self.path, self.dst)
            fsync_parent(self.dst)
        self.drop_checkpoint()
        return size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# -- convert ----------------------------------------------------------------------------------


def serialize_notes(notes: list[Note]) -> bytes:
    """ELF64 note area for ``notes`` (pure; names NUL-terminated, 4-byte padding)."""
    out = bytearray()
    for n in notes:
        name = n.name + b"\0"
        out += struct.pack("<III", len(name), len(n.desc), n.type)
        out += name + bytes(-len(name) % 4)
        out += n.desc + bytes(-len(n.desc) % 4)
    return bytes(out)


@dataclass(frozen=True)
class _Layout:
    block_size: int
    max_mapnr: int
    n_present: int
    sub_hdr_blocks: int
    bitmap_blocks: int
    note_offset: int
    note_size: int
    vmci_offset: int
    vmci_size: int

    @property
    def bitmap_offset(self) -> int:
        return self.block_size * (1 + self.sub_hdr_blocks)

    @property
    def bitmap_half(self) -> int:
        return self.bitmap_blocks * self.block_size // 2

    @property
    def desc_offset(self) -> int:
        return self.bitmap_offset + self.bitmap_blocks * self.block_size

    @property
    def data_offset(self) -> int:
        end = self.desc_offset + self.n_present * PAGE_DESC.size
        return -(-end // self.block_size) * self.block_size


def _unstored_run(stored: list[tuple[int, int]], pfn: int, end: int) -> int:
    """How many pages from ``pfn`` (below ``end``) lie outside every stored range (0 if ``pfn`` is stored)."""
    i = bisect.bisect_right(stored, (pfn, 1 << 62)) - 1
    if i >= 0 and stored[i][0] <= pfn < stored[i][1]:
        return 0
    nxt = stored[i + 1][0] if i + 1 < len(stored) else end
    return max(0, min(nxt, end) - pfn)


def _plan(reader: DumpReader, ranges: list[tuple[int, int]], notes_blob: bytes, vmci: bytes) -> _Layout:
    bs = reader.page_size_bytes
    max_mapnr = ranges[-1][1] if ranges else 0
    note_offset = bs + SUB_HEADER.size
    vmci_offset = note_offset + len(notes_blob)
    sub_bytes = SUB_HEADER.size + len(notes_blob) + len(vmci)
    half_blocks = max(1, -(-max_mapnr // (8 * bs)))
    return _Layout(block_size=bs, max_mapnr=max_mapnr, n_present=sum(e - s for s, e in ranges),
                   sub_hdr_blocks=max(1, -(-sub_bytes // bs)), bitmap_blocks=2 * half_blocks,
                   note_offset=note_offset, note_size=len(notes_blob), vmci_offset=vmci_offset,
                   vmci_size=len(vmci))


def _utsname(reader: DumpReader, vi: VmcoreInfo | None) -> list[bytes]:
    uts = [b"Linux", b"", b"", b"", b"x86_64", b""]
    if isinstance(reader, KdumpReader) and any(reader.header.utsname):
        return list(reader.header.utsname)
    if vi is None:
        return uts
    if vi.osrelease:
        uts[2] = vi.osrelease
    try:
        from ._triage import read_utsname
        from ._x86 import KernelMemory

        got = read_utsname(KernelMemory(reader, vi), vi)
        return [got[i] or uts[i] for i in range(6)]
    except GuestMemoryError as exc:
        log.info("utsname for the kdump header not readable: %s", exc)
        return uts


def _headers(reader: DumpReader, lay: _Layout, codec_flag: int, notes: list[Note], vi: VmcoreInfo | None,
             exclude_zero: bool, exclude_free: bool = False) -> bytes:
    uts = b"".join(f[:64].ljust(65, b"\0") for f in _utsname(reader, vi))
    nr_cpus = sum(1 for n in notes if n.name == b"CORE" and n.type == NT_PRSTATUS)
    head = DISK_DUMP_HEADER.pack(
        b"KDUMP   ", 6, uts, int(time.time()), 0, codec_flag, lay.block_size, lay.sub_hdr_blocks,
        lay.bitmap_blocks, min(lay.max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, nr_cpus)
    phys_base = 0
    if vi is not None and "phys_base" in vi.numbers:
        phys_base = vi.numbers["phys_base"] & MASK64
    elif isinstance(reader, KdumpReader):
        phys_base = reader.header.phys_base
    dump_level = (1 if exclude_zero else 0) | (16 if exclude_free else 0)
    sub = SUB_HEADER.pack(phys_base, dump_level, 0, 0, 0,
                          lay.vmci_offset if lay.vmci_size else 0, lay.vmci_size,
                          lay.note_offset if lay.note_size else 0, lay.note_size, 0, 0, 0, 0, lay.max_mapnr)
    return head.ljust(lay.block_size, b"\0") + sub


def _free_map(reader: DumpReader, vi: VmcoreInfo | None, max_pfn: int) -> tuple[bytearray | None, str | None]:
    """The free-page bitmap for ``exclude_free``, or (None, why not)."""
    from ._freepages import free_page_bitmap
    from ._x86 import KernelMemory

    if vi is None:
        return None, "no VMCOREINFO: free pages cannot be found, kept"
    try:
        found = free_page_bitmap(KernelMemory(reader, vi), vi, max_pfn)
    except GuestMemoryError as exc:
        return None, f"free pages kept: {exc}"
    log.info("%d free pages found in %d memory sections", found.free_pages, found.sections)
    return found.bitmap, None


def _bitmap1(lay: _Layout, ranges: list[tuple[int, int]]) -> bytearray:
    bm = bytearray(lay.bitmap_half)
    for start, end in ranges:
        pfn = start
        while pfn < end and pfn & 7:
            bm[pfn >> 3] |= 1 << (pfn & 7)
            pfn += 1
        full_end = end & ~7
        if pfn < full_end:
            bm[pfn >> 3:full_end >> 3] = b"\xff" * ((full_end - pfn) >> 3)
            pfn = full_end
        while pfn < end:
            bm[pfn >> 3] |= 1 << (pfn & 7)
            pfn += 1
    return bm


def convert_to_kdump(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, codec: str = "auto",
                     progress: Progress | None = None, exclude_zero: bool = True,
                     checkpoint_bytes: int = DEFAULT_CHECKPOINT_BYTES, exclude_free: bool = False) -> ConvertResult:
    """Convert any readable dump (ELF, kdump, flattened kdump) to seekable kdump-compressed.

    :param codec: ``"auto"`` (first installed of :data:`._codecs.AUTO_CODEC_ORDER`), ``"zstd"``,
        ``"zlib"``, ``"lzo"`` or ``"snappy"``.
    :param progress: called as ``progress(done_bytes, total_bytes)`` of guest memory processed.
    :param exclude_zero: leave all-zero pages out (bitmap 2 clear, dump_level 1; vmcrash reads them
        as zeros, makedumpfile refuses to read excluded pages). ``False`` keeps them, all sharing
        one stored zero page, so every tool can read every page.
    :param checkpoint_bytes: input processed between two checkpoints.
    :param exclude_free: also leave out pages the guest's buddy allocator had free (dump level 16,
        found through VMCOREINFO, see :mod:`._freepages`); if that scan is impossible the pages are
        kept and ``free_scan_problem`` says why.
    :returns: sizes, page counts, codec and time; ``resumed_from`` when a previous run continued.
    :raises UsageError: ``dst`` exists, or an unknown codec. :raises MissingCodec: codec not installed.
    :raises StorageError: cannot read/write/rename. :raises DumpFormatError: corrupt source.
    """
    t0 = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    codec_name = resolve_codec(codec)
    comp = get_codec(codec_name)
    ident = _identity(src)
    part = _Part(dst)
    try:
        with open_dump(src) as dump:
            reader = dump.reader
            ranges = list(reader.present_ranges())
            notes = dump.notes
            vi = dump.vmcoreinfo
            vmci = reader.vmcoreinfo_raw() or b""
            notes_blob = serialize_notes(notes)
            lay = _plan(reader, ranges, notes_blob, vmci)
            if lay.max_mapnr > MAX_CONVERT_PFNS:
                raise DumpFormatError(f"the dump claims {lay.max_mapnr} pages of memory; converting more than "
                                      f"{MAX_CONVERT_PFNS} is refused", path=reader.path)
            stored_runs = list(reader.stored_ranges())
            ps = lay.block_size
            zero = bytes(ps)
            params = {"codec": codec_name, "exclude_zero": exclude_zero, "exclude_free": exclude_free,
                      "layout": asdict(lay)}
            free_map: bytearray | None = None
            free_problem: str | None = None
            if exclude_free:
                free_map, free_problem = _free_map(reader, vi, lay.max_mapnr)
            bitmap2 = bytearray(lay.bitmap_half)
            state = {"next_pfn": 0, "data_cursor": lay.data_offset, "descs": 0, "excluded": 0, "raw": 0,
                     "done_bytes": 0, "zero_at": -1, "free": 0}
            resumed: int | None = None
            ck = part.load_checkpoint()
            if ck is not None and ck.get("source") == ident and ck.get("params") == params:
                state.update({k: int(ck["state"][k]) for k in state})
                resumed = state["next_pfn"]
                stored = part.pread(lay.bitmap_half, lay.bitmap_offset + lay.bitmap_half)
                bitmap2[:len(stored)] = stored
                cut = state["next_pfn"]
                if cut >> 3 < len(bitmap2):
                    bitmap2[cut >> 3] &= (1 << (cut & 7)) - 1
                    bitmap2[(cut >> 3) + 1:] = bytes(len(bitmap2) - (cut >> 3) - 1)
                part.truncate(state["data_cursor"])
                log.info("%s: resuming at pfn %#x", part.path, resumed)
            else:
                part.drop_checkpoint()
                part.truncate(0)
            total = lay.n_present * ps
            data_buf = bytearray()
            data_buf_at = state["data_cursor"]
            desc_buf = bytearray()
            desc_buf_at = state["descs"]
            dirty_from = state["next_pfn"] >> 3
            since_ckpt = 0
            zero_size = len(comp.compress(zero))

            def flush() -> None:
                nonlocal data_buf, data_buf_at, desc_buf, desc_buf_at
                if data_buf:
                    part.pwrite(data_buf, data_buf_at)
                if desc_buf:
                    part.pwrite(desc_buf, lay.desc_offset + desc_buf_at * PAGE_DESC.size)
                data_buf, data_buf_at = bytearray(), state["data_cursor"]
                desc_buf, desc_buf_at = bytearray(), state["descs"]

            def checkpoint() -> None:
                nonlocal dirty_from
                flush()
                hi = min(len(bitmap2), (state["next_pfn"] >> 3) + 1)
                part.pwrite(bitmap2[dirty_from:hi], lay.bitmap_offset + lay.bitmap_half + dirty_from)
                dirty_from = state["next_pfn"] >> 3
                part.save_checkpoint({"version": _CKPT_VERSION, "source": ident, "params": params,
                                      "state": dict(state)})

            batch = max(1, min(_BATCH_PAGES, checkpoint_bytes // ps))
            for start, end in ranges:
                pfn = max(start, state["next_pfn"])
                while pfn < end:
                    n = min(batch, end - pfn)
                    if exclude_zero:
                        gap = _unstored_run(stored_runs, pfn, end)
                        if gap:  # zeros the file does not store (an ELF zero tail): excluded unread
                            n = gap
                            state["excluded"] += n
                            pfn += n
                            state["next_pfn"] = pfn
                            state["done_bytes"] += n * ps
                            continue
                    try:
                        pages: list[bytes | None] = list(reader.read_pages(pfn, n))
                    except GuestMemoryError:
                        pages = []
                        for p in range(pfn, pfn + n):
                            try:
                                pages.append(reader.read_page(p))
                            except GuestMemoryError:
                                pages.append(None)
                    for i, page in enumerate(pages):
                        p = pfn + i
                        if page is None or (exclude_zero and page == zero):
                            state["excluded"] += 1
                            continue
                        if free_map is not None and p >> 3 < len(free_map) and free_map[p >> 3] >> (p & 7) & 1:
                            state["excluded"] += 1
                            state["free"] += 1
                            continue
                        bitmap2[p >> 3] |= 1 << (p & 7)
                        if page == zero and state["zero_at"] >= 0:
                            # Kept zero pages share one stored copy (as QEMU does): every tool can
                            # read them, at 24 bytes each.
                            desc_buf += PAGE_DESC.pack(state["zero_at"], zero_size, comp.flag, 0)
                            state["descs"] += 1
                            continue
                        packed = comp.compress(page)
                        if page == zero:
                            state["zero_at"], zero_size = state["data_cursor"], len(packed)
                        if len(packed) < ps:
                            flags = comp.flag
                        else:
                            packed, flags = page, 0
                            state["raw"] += 1
                        desc_buf += PAGE_DESC.pack(state["data_cursor"], len(packed), flags, 0)
                        data_buf += packed
                        state["data_cursor"] += len(packed)
                        state["descs"] += 1
                    pfn += n
                    state["next_pfn"] = pfn
                    state["done_bytes"] += n * ps
                    since_ckpt += n * ps
                    if len(data_buf) >= _FLUSH_BYTES:
                        flush()
                    if since_ckpt >= checkpoint_bytes:
                        checkpoint()
                        since_ckpt = 0
                    if progress is not None:
                        progress(state["done_bytes"], total)
            flush()
            headers = _headers(reader, lay, comp.flag, notes, vi, exclude_zero, free_map is not None)
            part.pwrite(headers, 0)
            if notes_blob:
                part.pwrite(notes_blob, lay.note_offset)
            if vmci:
                part.pwrite(vmci, lay.vmci_offset)
            part.pwrite(_bitmap1(lay, ranges), lay.bitmap_offset)
            part.pwrite(bitmap2, lay.bitmap_offset + lay.bitmap_half)
            part.truncate(max(state["data_cursor"], lay.data_offset))
            size = part.finish()
            if progress is not None:
                progress(total, total)
            return ConvertResult(
                src=src, dst=dst, source_format=dump.format, codec=codec_name, src_size_bytes=int(ident["size"]),
                dst_size_bytes=size, pages_present=lay.n_present, pages_written=state["descs"],
                pages_excluded=state["excluded"], pages_raw=state["raw"], seconds=time.perf_counter() - t0,
                resumed_from=resumed, pages_free_excluded=state["free"], free_scan_problem=free_problem)
    finally:
        part.close()


# -- rearrange ----------------------------------------------------------------------------------


def _copy(src_fd: int, dst: _Part, src_off: int, dst_off: int, size: int, src_path: str) -> None:
    while size > 0:
        n = min(size, _COPY_CHUNK)
        try:
            done = os.copy_file_range(src_fd, dst.fd, n, src_off, dst_off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise StorageError(f"copy failed: {exc.strerror}", path=dst.path) from exc
            done = 0
        if done <= 0:
            with storage_errors("read failed", src_path):
                data = os.pread(src_fd, n, src_off)
            if not data:
                raise DumpFormatError("file is truncated inside a record", path=src_path, offset=src_off)
            dst.pwrite(data, dst_off)
            done = len(data)
        src_off += done
        dst_off += done
        size -= done


def rearrange_flattened(src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
                        progress: Progress | None = None,
                        checkpoint_bytes: int = DEFAULT_CHECKPOINT_BYTES) -> ConvertResult:
    """Turn a flattened makedumpfile stream into the seekable file it describes (``makedumpfile -R``).

    No page is decompressed: each record's bytes are copied to their offset (``copy_file_range``
    where the filesystem allows). Resumable and atomic like :func:`convert_to_kdump`; the result
    is checked by opening it before it is renamed into place.

    :raises DumpFormatError: ``src`` is not a (complete) flattened stream, or its content is no dump.
    :raises UsageError: ``dst`` exists. :raises StorageError: cannot read/write/rename.
    """
    t0 = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    ident = _identity(src)
    with DumpFile(src) as f:
        check_flat_header(f.read_upto(0, FLAT_HEADER_BYTES), path=src)
        part = _Part(dst)
        try:
            pos, vend = FLAT_HEADER_BYTES, 0
            resumed: int | None = None
            ck = part.load_checkpoint()
            if ck is not None and ck.get("source") == ident and ck.get("params") == {"op": "rearrange"}:
                pos, vend = int(ck["state"]["pos"]), int(ck["state"]["vend"])
                resumed = pos
            else:
                part.drop_checkpoint()
                part.truncate(0)
            since = 0
            for voff, size, data in iter_flat_records(f, pos):
                _copy(f._fd, part, data, voff, size, src)
                vend = max(vend, voff + size)
                since += size + 16
                pos = data + size
                if since >= checkpoint_bytes:
                    part.save_checkpoint({"version": _CKPT_VERSION, "source": ident,
                                          "params": {"op": "rearrange"}, "state": {"pos": pos, "vend": vend}})
                    since = 0
                if progress is not None:
                    progress(pos, f.size_bytes)
            part.truncate(vend)
            part.sync()
            try:
                with open_dump(part.path) as check:
                    reader = check.reader
                    present = reader.present_pages()
                    written = reader.dumped_pages() if isinstance(reader, KdumpReader) else present
                    fmt = "kdump-flattened"
            except VmcrashError as exc:
                raise DumpFormatError(f"the rearranged stream is not a readable dump: {exc}", path=src) from exc
            size_out = part.finish()
        finally:
            part.close()
    if progress is not None:
        progress(int(ident["size"]), int(ident["size"]))
    return ConvertResult(src=src, dst=dst, source_format=fmt, codec="unchanged", src_size_bytes=int(ident["size"]),
                         dst_size_bytes=size_out, pages_present=present, pages_written=written,
                         pages_excluded=present - written, pages_raw=0, seconds=time.perf_counter() - t0,
                         resumed_from=resumed)
