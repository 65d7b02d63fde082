"""The flattened makedumpfile format, read in place as a seekable file.

libvirt/QEMU (and ``makedumpfile -F``) write kdump-compressed dumps to pipes as a stream::

    4096-byte header   "makedumpfile" NUL-padded to 16 bytes, type (be64) = 1, version (be64) = 1
    records            offset (be64), size (be64), then ``size`` bytes that belong at ``offset``
                       of the seekable file
    end marker         offset = size = -1

:class:`FlattenedSource` indexes record headers lazily (16 bytes each, seeking over the data)
only as far as reads need, so the stream is never rewritten (no ``makedumpfile -R``) and never
read whole. Later records win where two overlap, as with ``makedumpfile -R``.
"""

from __future__ import annotations

import bisect
import struct

from vmcrash.errors import DumpFormatError

from ._io import DumpFile

__all__ = ["FLAT_END", "FLAT_HEADER_BYTES", "FLAT_SIGNATURE", "FlattenedSource", "iter_flat_records"]

FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_BYTES = 4096
_REC = struct.Struct(">qq")
FLAT_END = _REC.pack(-1, -1)
#: A record may describe at most this much data (QEMU writes <= 16 KiB, makedumpfile a few MiB).
MAX_RECORD_BYTES = 1 << 30
#: And the seekable file it describes may not claim to be larger than this.
MAX_VIRTUAL_BYTES = 1 << 52


def check_flat_header(head: bytes, *, path: str | None = None) -> None:
    """Validate the 4096-byte flattened header (pure). :raises DumpFormatError: not flattened."""
    if len(head) < 32 or head[:16] != FLAT_SIGNATURE + bytes(4):
        raise DumpFormatError("not a flattened makedumpfile stream", path=path, offset=0)
    ftype, version = struct.unpack_from(">qq", head, 16)
    if ftype != 1:
        raise DumpFormatError(f"flattened stream of type {ftype}, expected 1", path=path, offset=16)
    if version != 1:
        raise DumpFormatError(f"flattened stream version {version}, expected 1", path=path, offset=24)


def iter_flat_records(f: DumpFile, start: int = FLAT_HEADER_BYTES):
    """Yield ``(virtual_offset, size, file_offset_of_data)`` of each record; stops at the end marker.

    :raises DumpFormatError: a negative/huge offset or size, a record past the end of the file,
        or a stream without its end marker (truncated).
    """
    pos = start
    end = f.size_bytes
    while True:
        if pos + _REC.size > end:
            raise DumpFormatError("file is truncated: flattened stream ends without its end marker",
                                  path=f.path, offset=pos)
        voff, size = _REC.unpack(f.read(pos, _REC.size))
        if voff == -1 and size == -1:
            return
        if voff < 0 or size < 0 or size > MAX_RECORD_BYTES or voff + size > MAX_VIRTUAL_BYTES:
            raise DumpFormatError(f"flattened record with offset {voff} and size {size}", path=f.path,
                                  offset=pos)
        data = pos + _REC.size
        if data + size > end:
            raise DumpFormatError("file is truncated: flattened record runs past the end of the file",
                                  path=f.path, offset=pos)
        yield voff, size, data
        pos = data + size


class FlattenedSource:
    """Seekable view (:class:`~._io.ByteSource`) of a flattened stream, indexed on demand.

    Reads of ranges no record covers return zeros (holes, as in a rearranged sparse file).
    """

    def __init__(self, f: DumpFile) -> None:
        self._f = f
        self.path = f.path
        check_flat_header(f.read_upto(0, FLAT_HEADER_BYTES), path=f.path)
        if f.size_bytes < FLAT_HEADER_BYTES + _REC.size or f.read(f.size_bytes - _REC.size, _REC.size) != FLAT_END:
            raise DumpFormatError("file is truncated: flattened stream ends without its end marker",
                                  path=f.path, offset=f.size_bytes)
        self._records = iter_flat_records(f)
        self._done = False
        # (vstart, vend, file_offset, seq) sorted by vstart; new records are merged in batches
        # that grow with the index, so indexing n records costs O(n log n) and few sorts.
        self._entries: list[tuple[int, int, int, int]] = []
        self._starts: list[int] = []
        self._seq = 0
        self._max_len = 0
        self._virtual_end = 0
        self.records_indexed = 0

    @property
    def bytes_read(self) -> int:
        return self._f.bytes_read

    @property
    def file_size_bytes(self) -> int:
        return self._f.size_bytes

    @property
    def size_bytes(self) -> int:
        """Size of the seekable file (needs the whole index)."""
        while self._index_batch():
            pass
        return self._virtual_end

    def close(self) -> None:
        self._f.close()

    def _index_batch(self) -> bool:
        """Index the next batch of records; ``False`` once the end marker was reached."""
        if self._done:
            return False
        want = max(64, len(self._entries) // 2)
        new: list[tuple[int, int, int, int]] = []
        for voff, size, data in self._records:
            self.records_indexed += 1
            if size:
                new.append((voff, voff + size, data, self._seq))
                self._seq += 1
                self._max_len = max(self._max_len, size)
                self._virtual_end = max(self._virtual_end, voff + size)
            if len(new) >= want:
                break
        else:
            self._done = True
        if new:
            self._entries.extend(new)
            self._entries.sort()
            self._starts = [e[0] for e in self._entries]
        return not self._done or bool(new)

    def _overlapping(self, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
        i = bisect.bisect_left(self._starts, hi)
        out = []
        j = i - 1
        while j >= 0 and self._entries[j][0] + self._max_len > lo:
            if self._entries[j][1] > lo:
                out.append(self._entries[j])
            j -= 1
        return out

    def _covered(self, lo: int, hi: int) -> bool:
        pos = lo
        for vstart, vend, _, _ in sorted(self._overlapping(lo, hi)):
            if vstart > pos:
                return False
            pos = max(pos, vend)
            if pos >= hi:
                return True
        return pos >= hi

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the seekable file at ``offset`` (zeros where no record wrote).

        :raises DumpFormatError: a negative or huge request, or a corrupt stream while indexing.
        """
        if offset < 0 or size < 0 or size > 64 << 20 or offset + size > MAX_VIRTUAL_BYTES:
            raise DumpFormatError(f"invalid read of {size} bytes", path=self.path, offset=offset)
        hi = offset + size
        while not self._done and not self._covered(offset, hi):
            self._index_batch()
        parts = self._overlapping(offset, hi)
        if len(parts) == 1 and parts[0][0] <= offset and parts[0][1] >= hi:
            vstart, _, data, _ = parts[0]
            return self._f.read(data + offset - vstart, size)
        out = bytearray(size)
        for vstart, vend, data, _ in sorted(parts, key=lambda e: e[3]):
            lo2, hi2 = max(offset, vstart), min(hi, vend)
            out[lo2 - offset:hi2 - offset] = self._f.read(data + lo2 - vstart, hi2 - lo2)
        return bytes(out)
