"""Reader of makedumpfile's kdump-compressed format (signature ``KDUMP   ``), as QEMU and makedumpfile write it.

Layout (makedumpfile ``diskdump_mod.h``), in blocks of ``block_size`` (= the page size)::

    block 0                   disk_dump_header  (signature, version, utsname, block_size, ...)
    block 1 .. 1+sub_hdr_size kdump_sub_header  (phys_base, dump_level, offsets of VMCOREINFO
                              and ELF notes, 64-bit max_mapnr from version 6) + its payloads
    bitmap_blocks blocks      bitmap 1 (page exists) then bitmap 2 (page dumped), 1 bit per pfn
    page descriptors          one 24-byte page_desc per dumped pfn, in pfn order
    page data                 each page raw or compressed (zlib/lzo/snappy/zstd), per page

A pfn's descriptor index is the number of dumped pfns below it, so bitmap 2 is read in chunks
with a cached running count. The byte source can be a real file or the seekable view of a
flattened stream (:mod:`._flat`).
"""

from __future__ import annotations

import itertools
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from vmcrash.errors import DumpFormatError, GuestMemoryError

from ._base import DumpReader
from ._codecs import codec_for_flags
from ._io import ByteSource, unpack_from
from ._notes import MAX_NOTES_BYTES, Note, iter_notes
from ._vmcoreinfo import MAX_VMCOREINFO_BYTES

__all__ = [
    "DISK_DUMP_HEADER",
    "DUMP_DH_COMPRESSED_INCOMPLETE",
    "KDUMP_SIGNATURE",
    "PAGE_DESC",
    "SUB_HEADER",
    "KdumpHeader",
    "KdumpReader",
    "parse_kdump_header",
]

KDUMP_SIGNATURE = b"KDUMP   "
# signature, header_version, utsname (6 x 65), pad, timestamp (tv_sec, tv_usec), status,
# block_size, sub_hdr_size, bitmap_blocks, max_mapnr, total_ram_blocks, device_blocks,
# written_blocks, current_cpu, nr_cpus
DISK_DUMP_HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")
# phys_base, dump_level, split, start_pfn, end_pfn, offset_vmcoreinfo, size_vmcoreinfo,
# offset_note, size_note, offset_eraseinfo, size_eraseinfo, start_pfn_64, end_pfn_64, max_mapnr_64
SUB_HEADER = struct.Struct("<QiiQQqQqQqQQQQ")
# offset, size, flags, page_flags
PAGE_DESC = struct.Struct("<qIIQ")
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
_BITMAP_CHUNK = 4096  # bytes of bitmap read at a time (32768 pfns)
_POPCOUNT = bytes(i.bit_count() for i in range(256))
_DESC_CHUNK = 4096 // PAGE_DESC.size * PAGE_DESC.size
MAX_PFNS = 1 << 40  # 4 PiB of 4 KiB pages


@dataclass(frozen=True)
class KdumpHeader:
    """The parts of ``disk_dump_header`` + ``kdump_sub_header`` a reader needs.

    Offsets are byte offsets in the (seekable) file; sizes in bytes.
    """

    version: int
    utsname: tuple[bytes, ...]  # sysname, nodename, release, version, machine, domainname
    timestamp_s: int
    status: int
    block_size: int
    sub_hdr_blocks: int
    bitmap_blocks: int
    max_mapnr: int
    current_cpu: int
    nr_cpus: int
    phys_base: int
    dump_level: int
    vmcoreinfo: tuple[int, int]  # (offset, size); (0, 0) when absent
    note: tuple[int, int]
    bitmap_offset: int
    desc_offset: int

    @property
    def bitmap_half_bytes(self) -> int:
        """Size of one bitmap (bitmap 1 and 2 have the same size)."""
        return self.bitmap_blocks * self.block_size // 2


def parse_kdump_header(head: bytes, sub: bytes, *, path: str | None = None, file_size: int | None = None
                       ) -> KdumpHeader:
    """Validate the two headers (pure): ``head`` is block 0, ``sub`` the start of block 1.

    :raises DumpFormatError: wrong signature, impossible block size, bitmap too small for
        max_mapnr, payloads outside the sub-header area or the file.
    """
    (sig, version, uts, ts_sec, _ts_usec, status, block_size, sub_hdr_size, bitmap_blocks,
     max_mapnr32, _total_ram, _device, _written, current_cpu, nr_cpus) = unpack_from(
        DISK_DUMP_HEADER, head, what="kdump header", path=path, file_offset=0)
    if sig != KDUMP_SIGNATURE:
        raise DumpFormatError("not a kdump-compressed file (no 'KDUMP   ' signature)", path=path, offset=0)
    if version < 1 or version > 100:
        raise DumpFormatError(f"kdump header version {version} is not supported", path=path, offset=8)
    if block_size < 512 or block_size > 1 << 20 or block_size & (block_size - 1):
        raise DumpFormatError(f"kdump block size {block_size} is not a power of two in 512..1 MiB",
                              path=path, offset=428)
    if sub_hdr_size < 1 or sub_hdr_size > (64 << 20) // block_size:
        raise DumpFormatError(f"kdump sub-header of {sub_hdr_size} blocks", path=path, offset=432)
    if bitmap_blocks < 2 or bitmap_blocks % 2 or bitmap_blocks * block_size > (MAX_PFNS // 4):
        raise DumpFormatError(f"kdump bitmap of {bitmap_blocks} blocks", path=path, offset=436)
    names = tuple(uts[i * 65:(i + 1) * 65].split(b"\0", 1)[0] for i in range(6))
    sub_off = block_size
    fields = unpack_from(SUB_HEADER, sub + bytes(max(0, SUB_HEADER.size - len(sub))),
                         what="kdump sub-header", path=path, file_offset=sub_off)
    (phys_base, dump_level, _split, _start_pfn, _end_pfn, off_vmci, size_vmci, off_note, size_note,
     _off_erase, _size_erase, _start64, _end64, max_mapnr64) = fields
    max_mapnr = max_mapnr64 if version >= 6 else max_mapnr32
    bitmap_offset = block_size * (1 + sub_hdr_size)
    half = bitmap_blocks * block_size // 2
    if max_mapnr > half * 8 or max_mapnr > MAX_PFNS:
        raise DumpFormatError(f"kdump max_mapnr {max_mapnr} does not fit its {half}-byte bitmap",
                              path=path, offset=sub_off + 96)
    area_end = bitmap_offset

    def payload(offset: int, size: int, limit: int, what: str) -> tuple[int, int]:
        if size == 0:
            return (0, 0)
        if size > limit or offset < sub_off or offset + size > area_end:
            raise DumpFormatError(f"kdump {what} at {offset} ({size} bytes) is outside the sub-header",
                                  path=path, offset=sub_off)
        return (offset, size)

    vmci = payload(off_vmci, size_vmci, MAX_VMCOREINFO_BYTES, "VMCOREINFO") if version >= 3 else (0, 0)
    note = payload(off_note, size_note, MAX_NOTES_BYTES, "ELF notes") if version >= 4 else (0, 0)
    desc_offset = bitmap_offset + bitmap_blocks * block_size
    if file_size is not None and desc_offset > file_size:
        raise DumpFormatError(f"file is truncated: page descriptors would start at {desc_offset}, "
                              f"file has {file_size} bytes", path=path, offset=desc_offset)
    return KdumpHeader(
        version=version, utsname=names, timestamp_s=ts_sec, status=status, block_size=block_size,
        sub_hdr_blocks=sub_hdr_size, bitmap_blocks=bitmap_blocks, max_mapnr=max_mapnr,
        current_cpu=current_cpu, nr_cpus=nr_cpus, phys_base=phys_base, dump_level=dump_level,
        vmcoreinfo=vmci, note=note, bitmap_offset=bitmap_offset, desc_offset=desc_offset,
    )


class KdumpReader(DumpReader):
    """A kdump-compressed dump over a seekable :class:`ByteSource`."""

    def __init__(self, src: ByteSource, *, fmt: str = "kdump", check_end: bool = True) -> None:
        super().__init__()
        self._src = src
        self.path = src.path
        self.format = fmt
        head = src.read(0, DISK_DUMP_HEADER.size)
        if head[:8] != KDUMP_SIGNATURE:
            raise DumpFormatError("not a kdump-compressed file (no 'KDUMP   ' signature)", path=self.path,
                                  offset=0)
        (block_size,) = struct.unpack_from("<i", head, 428)
        if block_size < 512 or block_size > 1 << 20 or block_size & (block_size - 1):
            raise DumpFormatError(f"kdump block size {block_size} is not a power of two in 512..1 MiB",
                                  path=self.path, offset=428)
        sub = src.read(block_size, SUB_HEADER.size)
        self.header = parse_kdump_header(head, sub, path=self.path,
                                         file_size=src.size_bytes if check_end else None)
        self.page_size_bytes = self.header.block_size
        on_disk = self.file_size_bytes
        if self.header.bitmap_blocks * self.header.block_size > on_disk:
            # The bitmaps are stored in full: a header claiming more than the file holds is lying
            # (and would make every walk over the bitmap as long as that lie).
            raise DumpFormatError(f"kdump bitmap of {self.header.bitmap_blocks} blocks is larger than the "
                                  f"{on_disk}-byte file", path=self.path, offset=436)
        self._bitmap_cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._rank_prefix: list[int] = [0]  # dumped pfns before bitmap-2 chunk i
        self._rank_within: OrderedDict[int, list[int]] = OrderedDict()
        self._desc_cache: OrderedDict[int, bytes] = OrderedDict()
        self._notes: list[Note] | None = None
        self._dumped_total: int | None = None
        self._bounded = check_end
        if check_end:
            self._check_complete()

    # -- metadata --------------------------------------------------------------------------

    @property
    def bytes_read(self) -> int:
        return int(getattr(self._src, "bytes_read", 0))

    @property
    def file_size_bytes(self) -> int:
        on_disk = getattr(self._src, "file_size_bytes", None)  # a flattened view knows its file's size
        return int(on_disk if on_disk is not None else self._src.size_bytes)

    def close(self) -> None:
        close = getattr(self._src, "close", None)
        if close is not None:
            close()

    def notes(self) -> list[Note]:
        if self._notes is None:
            offset, size = self.header.note
            self._notes = [] if size == 0 else list(
                iter_notes(self._src.read(offset, size), path=self.path, base_offset=offset))
        return self._notes

    def vmcoreinfo_raw(self) -> bytes | None:
        offset, size = self.header.vmcoreinfo
        if size:
            return self._src.read(offset, size)
        for note in self.notes():
            if note.name == b"VMCOREINFO":
                return note.desc
        return None

    # -- bitmaps -----------------------------------------------------------------------------

    def _bitmap_chunk(self, which: int, index: int) -> bytes:
        key = (which, index)
        chunk = self._bitmap_cache.get(key)
        if chunk is None:
            half = self.header.bitmap_half_bytes
            start = index * _BITMAP_CHUNK
            size = min(_BITMAP_CHUNK, half - start)
            if size <= 0:
                return b""
            chunk = self._src.read(self.header.bitmap_offset + which * half + start, size)
            self._bitmap_cache[key] = chunk
            if len(self._bitmap_cache) > 64:
                self._bitmap_cache.popitem(last=False)
        else:
            self._bitmap_cache.move_to_end(key)
        return chunk

    def _bit(self, which: int, pfn: int) -> bool:
        if pfn < 0 or pfn >= self.header.max_mapnr:
            return False
        byte = pfn >> 3
        chunk = self._bitmap_chunk(which, byte // _BITMAP_CHUNK)
        i = byte % _BITMAP_CHUNK
        return i < len(chunk) and bool(chunk[i] >> (pfn & 7) & 1)

    def _rank(self, pfn: int) -> int:
        """Number of dumped pfns below ``pfn`` (its page descriptor's index)."""
        byte = pfn >> 3
        idx = byte // _BITMAP_CHUNK
        while len(self._rank_prefix) <= idx:
            i = len(self._rank_prefix) - 1
            chunk = self._bitmap_chunk(1, i)
            self._rank_prefix.append(self._rank_prefix[-1] + int.from_bytes(chunk, "little").bit_count())
        within = byte % _BITMAP_CHUNK
        cum = self._rank_within.get(idx)
        if cum is None:
            # Set bits before each byte of this chunk: O(1) ranks for every pfn in it.
            chunk = self._bitmap_chunk(1, idx)
            cum = list(itertools.accumulate((_POPCOUNT[b] for b in chunk), initial=0))
            self._rank_within[idx] = cum
            if len(self._rank_within) > 64:
                self._rank_within.popitem(last=False)
        last = self._bitmap_chunk(1, idx)[within]
        return self._rank_prefix[idx] + cum[within] + _POPCOUNT[last & ((1 << (pfn & 7)) - 1)]

    def dumped_pages(self) -> int:
        """How many pages have a descriptor (bits set in bitmap 2 below max_mapnr)."""
        if self._dumped_total is None:
            self._dumped_total = self._rank(self.header.max_mapnr - 1) + int(
                self._bit(1, self.header.max_mapnr - 1)) if self.header.max_mapnr else 0
        return self._dumped_total

    def page_present(self, pfn: int) -> bool:
        return self._bit(0, pfn)

    def page_excluded(self, pfn: int) -> bool:
        return self._bit(0, pfn) and not self._bit(1, pfn)

    def present_ranges(self) -> Iterator[tuple[int, int]]:
        half = self.header.bitmap_half_bytes
        max_mapnr = self.header.max_mapnr
        start = None
        for index in range(-(-min(half, -(-max_mapnr // 8)) // _BITMAP_CHUNK)):
            chunk = self._bitmap_chunk(0, index)
            base = index * _BITMAP_CHUNK * 8
            if start is None and not any(chunk):
                continue
            if start is not None and chunk == b"\xff" * len(chunk) and base + len(chunk) * 8 <= max_mapnr:
                continue
            value = int.from_bytes(chunk, "little")
            for bit in range(len(chunk) * 8):
                pfn = base + bit
                if pfn >= max_mapnr:
                    break
                if value >> bit & 1:
                    if start is None:
                        start = pfn
                elif start is not None:
                    yield (start, pfn)
                    start = None
        if start is not None:
            yield (start, max_mapnr)

    # -- pages -------------------------------------------------------------------------------

    def _desc(self, index: int) -> tuple[int, int, int]:
        per_chunk = _DESC_CHUNK // PAGE_DESC.size
        chunk_no, within = divmod(index, per_chunk)
        block = self.header.desc_offset + chunk_no * _DESC_CHUNK
        data = self._desc_cache.get(block)
        if data is None:
            data = self._read_upto(block, _DESC_CHUNK) if self._bounded else self._src.read(block, _DESC_CHUNK)
            self._desc_cache[block] = data
            if len(self._desc_cache) > 32:
                self._desc_cache.popitem(last=False)
        else:
            self._desc_cache.move_to_end(block)
        rel = within * PAGE_DESC.size
        if rel + PAGE_DESC.size > len(data):
            raise DumpFormatError("file is truncated: page descriptor past the end", path=self.path,
                                  offset=block + rel)
        d_off, d_size, d_flags, _page_flags = PAGE_DESC.unpack_from(data, rel)
        return d_off, d_size, d_flags

    def _read_upto(self, offset: int, size: int) -> bytes:
        end = self._src.size_bytes
        if offset >= end:
            return b""
        return self._src.read(offset, min(size, end - offset))

    def _check_complete(self) -> None:
        """Cheap truncation check: the last descriptor and its data must be inside the file."""
        total = self.dumped_pages()
        if total == 0:
            return
        end_of_descs = self.header.desc_offset + total * PAGE_DESC.size
        if end_of_descs > self._src.size_bytes:
            raise DumpFormatError(f"file is truncated: {total} page descriptors end at byte {end_of_descs}, "
                                  f"file has {self._src.size_bytes}", path=self.path)
        d_off, d_size, _ = self._desc(total - 1)
        if self.header.status & DUMP_DH_COMPRESSED_INCOMPLETE == 0 and d_off + d_size > self._src.size_bytes:
            raise DumpFormatError(f"file is truncated: the last page's data ends at byte {d_off + d_size}, "
                                  f"file has {self._src.size_bytes}", path=self.path)

    def _locate(self, pfn: int) -> tuple[int, int, int] | bytes:
        """(data offset, size, flags) of a dumped page, or the page itself when it is implicit."""
        ps = self.page_size_bytes
        if not self._bit(0, pfn):
            raise GuestMemoryError("physical page not in the dump", address=pfn * ps)
        if not self._bit(1, pfn):
            # Levels 1 (zero pages) and 16 (free pages: stale content nobody owns) read as zeros,
            # like crash --zero_excluded; the other levels drop pages with live content.
            if self.header.dump_level & ~(1 | 16) == 0:
                return bytes(ps)
            raise GuestMemoryError(f"page was excluded from the dump (dump level {self.header.dump_level})",
                                   address=pfn * ps)
        index = self._rank(pfn)
        d_off, d_size, d_flags = self._desc(index)
        if d_size == 0 and self.header.status & DUMP_DH_COMPRESSED_INCOMPLETE:
            raise GuestMemoryError("page is missing (the dump is marked incomplete)", address=pfn * ps)
        if d_size == 0 or d_size > ps or d_off < self.header.desc_offset:
            raise DumpFormatError(f"page descriptor of pfn {pfn:#x} is corrupt (offset {d_off}, "
                                  f"size {d_size})", path=self.path,
                                  offset=self.header.desc_offset + index * PAGE_DESC.size)
        return d_off, d_size, d_flags

    def _load_page(self, pfn: int) -> bytes:
        return self._decode(pfn, self.page_size_bytes)

    def _load_page_head(self, pfn: int, size: int) -> bytes:
        return self._decode(pfn, min(size, self.page_size_bytes))

    def _decode(self, pfn: int, want: int) -> bytes:
        ps = self.page_size_bytes
        where = self._locate(pfn)
        if isinstance(where, bytes):
            return where
        d_off, d_size, d_flags = where
        codec = codec_for_flags(d_flags)
        if codec is None:
            if d_size != ps:
                raise DumpFormatError(f"raw page of pfn {pfn:#x} has {d_size} bytes, not {ps}",
                                      path=self.path, offset=d_off)
            return self._src.read(d_off, want)
        data = self._src.read(d_off, d_size)
        try:
            if want < ps:
                return codec.decompress_head(data, want, ps)
            return codec.decompress(data, ps)
        except DumpFormatError as exc:
            raise DumpFormatError(f"pfn {pfn:#x}: {exc.message}", path=self.path, offset=d_off) from exc
