"""What the kdump writers report: :class:`ConvertResult`, and the progress callback they call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ConvertResult", "Progress"]

#: ``progress(done, total)``: guest memory bytes (convert) or input bytes (rearrange) processed so far.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote.

    :ivar codec: page codec used (``"unchanged"`` for :func:`~vmcrash.vmcore.rearrange_flattened`).
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
