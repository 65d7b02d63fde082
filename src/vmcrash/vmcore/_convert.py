"""Converting any readable dump (ELF, kdump, flattened kdump) to the seekable kdump-compressed format.

One pass over the source's present pages: zero pages (and, on request, the guest's free pages)
are left out, every other page is compressed alone into the data area, its descriptor and bitmap
bit written as it goes (:mod:`._layout`); the output file is resumable and atomic
(:mod:`._partfile`).
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from dataclasses import asdict

from vmcrash.errors import DumpFormatError, GuestMemoryError

from ._base import DumpReader
from ._codecs import get_codec, resolve_codec
from ._kdump import PAGE_DESC
from ._layout import kdump_headers, plan_layout, present_bitmap, serialize_notes
from ._open import open_dump
from ._partfile import DEFAULT_CHECKPOINT_BYTES, PartFile, source_identity
from ._result import ConvertResult, Progress
from ._vmcoreinfo import VmcoreInfo

__all__ = ["MAX_CONVERT_PFNS", "convert_to_kdump"]

log = logging.getLogger(__name__)

_BATCH_PAGES = 256
#: Largest guest memory converted, in pages (16 TiB of 4 KiB pages: a 512 MiB bitmap in memory).
MAX_CONVERT_PFNS = 1 << 32
_FLUSH_BYTES = 8 << 20


def _unstored_run(stored: list[tuple[int, int]], pfn: int, end: int) -> int:
    """How many pages from ``pfn`` (below ``end``) lie outside every stored range (0 if ``pfn`` is stored)."""
    i = bisect.bisect_right(stored, (pfn, 1 << 62)) - 1
    if i >= 0 and stored[i][0] <= pfn < stored[i][1]:
        return 0
    nxt = stored[i + 1][0] if i + 1 < len(stored) else end
    return max(0, min(nxt, end) - pfn)


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
    ident = source_identity(src)
    part = PartFile(dst)
    try:
        with open_dump(src) as dump:
            reader = dump.reader
            ranges = list(reader.present_ranges())
            notes = dump.notes
            vi = dump.vmcoreinfo
            vmci = reader.vmcoreinfo_raw() or b""
            notes_blob = serialize_notes(notes)
            lay = plan_layout(reader, ranges, notes_blob, vmci)
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
            saved = part.resume(ident, params)
            if saved is not None:
                state.update({k: int(saved[k]) for k in state})
                resumed = state["next_pfn"]
                stored = part.pread(lay.bitmap_half, lay.bitmap_offset + lay.bitmap_half)
                bitmap2[:len(stored)] = stored
                cut = state["next_pfn"]
                if cut >> 3 < len(bitmap2):
                    bitmap2[cut >> 3] &= (1 << (cut & 7)) - 1
                    bitmap2[(cut >> 3) + 1:] = bytes(len(bitmap2) - (cut >> 3) - 1)
                part.truncate(state["data_cursor"])
                log.info("%s: resuming at pfn %#x", part.path, resumed)
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
                part.checkpoint(ident, params, dict(state))

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
            headers = kdump_headers(reader, lay, comp.flag, notes, vi, exclude_zero, free_map is not None)
            part.pwrite(headers, 0)
            if notes_blob:
                part.pwrite(notes_blob, lay.note_offset)
            if vmci:
                part.pwrite(vmci, lay.vmci_offset)
            part.pwrite(present_bitmap(lay, ranges), lay.bitmap_offset)
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
