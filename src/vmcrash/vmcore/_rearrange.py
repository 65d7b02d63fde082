"""Rearranging a flattened makedumpfile stream into the seekable file it describes (``makedumpfile -R``).

No page is decompressed: each record's bytes are copied to their offset, ``copy_file_range``
where the filesystem allows; the output file is resumable and atomic (:mod:`._partfile`).
"""

from __future__ import annotations

import errno
import os
import time

from vmcrash.errors import DumpFormatError, StorageError, VmcrashError, storage_errors

from ._flat import FLAT_HEADER_BYTES, check_flat_header, iter_flat_records
from ._io import DumpFile
from ._kdump import KdumpReader
from ._open import open_dump
from ._partfile import DEFAULT_CHECKPOINT_BYTES, PartFile, source_identity
from ._result import ConvertResult, Progress

__all__ = ["rearrange_flattened"]

_COPY_CHUNK = 8 << 20
#: What a rearrange checkpoint is for (a convert's parameters never equal it).
_PARAMS = {"op": "rearrange"}


def _copy(src_fd: int, dst: PartFile, src_off: int, dst_off: int, size: int, src_path: str) -> None:
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
    where the filesystem allows). Resumable and atomic like :func:`~vmcrash.vmcore.convert_to_kdump`; the result
    is checked by opening it before it is renamed into place.

    :raises DumpFormatError: ``src`` is not a (complete) flattened stream, or its content is no dump.
    :raises UsageError: ``dst`` exists. :raises StorageError: cannot read/write/rename.
    """
    t0 = time.perf_counter()
    src, dst = os.fspath(src), os.fspath(dst)
    ident = source_identity(src)
    with DumpFile(src) as f:
        check_flat_header(f.read_upto(0, FLAT_HEADER_BYTES), path=src)
        part = PartFile(dst)
        try:
            pos, vend = FLAT_HEADER_BYTES, 0
            resumed: int | None = None
            saved = part.resume(ident, _PARAMS)
            if saved is not None:
                pos, vend = int(saved["pos"]), int(saved["vend"])
                resumed = pos
            since = 0
            for voff, size, data in iter_flat_records(f, pos):
                _copy(f._fd, part, data, voff, size, src)
                vend = max(vend, voff + size)
                since += size + 16
                pos = data + size
                if since >= checkpoint_bytes:
                    part.checkpoint(ident, _PARAMS, {"pos": pos, "vend": vend})
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
