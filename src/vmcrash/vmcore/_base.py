"""The one interface every dump reader offers: physical pages, notes, VMCOREINFO.

Readers (:mod:`._elf`, :mod:`._kdump`) implement :meth:`DumpReader._load_page`; this base adds a
small LRU page cache and byte-granular physical reads bounded by :data:`MAX_PHYS_READ_BYTES`.
"""

from __future__ import annotations

import abc
from collections import OrderedDict
from collections.abc import Iterator
from typing import Self

from vmcrash.errors import GuestMemoryError

from ._notes import Note

__all__ = ["MAX_PHYS_READ_BYTES", "PAGE_CACHE_PAGES", "DumpReader"]

#: One physical read may span at most this many bytes (the analysis never needs more at once).
MAX_PHYS_READ_BYTES = 16 << 20
#: Decoded pages kept in memory per open dump.
PAGE_CACHE_PAGES = 256


class DumpReader(abc.ABC):
    """Physical memory and metadata of one dump file.

    :ivar format: ``"elf"``, ``"kdump"`` or ``"kdump-flattened"``.
    :ivar path: the file. :ivar page_size_bytes: the dump's page (block) size.
    """

    format: str
    path: str
    page_size_bytes: int = 4096

    def __init__(self) -> None:
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    # -- to implement ----------------------------------------------------------------------

    @abc.abstractmethod
    def _load_page(self, pfn: int) -> bytes:
        """The page at ``pfn``, exactly ``page_size_bytes`` long.

        :raises GuestMemoryError: the page is not in the dump.
        :raises DumpFormatError: the file is corrupt where the page is stored.
        """

    @abc.abstractmethod
    def page_present(self, pfn: int) -> bool:
        """Whether guest RAM has a page at ``pfn`` in this dump (excluded pages count as present)."""

    @abc.abstractmethod
    def present_ranges(self) -> Iterator[tuple[int, int]]:
        """Runs ``[start_pfn, end_pfn)`` of present pages, ascending, not overlapping."""

    @abc.abstractmethod
    def notes(self) -> list[Note]:
        """The dump's ELF notes (per-vCPU registers, VMCOREINFO), ``[]`` when it has none."""

    @abc.abstractmethod
    def vmcoreinfo_raw(self) -> bytes | None:
        """The VMCOREINFO text the dump carries, or ``None``."""

    @property
    @abc.abstractmethod
    def bytes_read(self) -> int:
        """Bytes read from the underlying file so far."""

    @property
    @abc.abstractmethod
    def file_size_bytes(self) -> int:
        """Size of the dump file on disk."""

    def close(self) -> None:  # noqa: B027 - optional hook: readers without resources need nothing
        """Release the file."""

    def stored_ranges(self) -> Iterator[tuple[int, int]]:
        """Runs of present pages whose bytes the file stores (the others read as zeros); default all."""
        return self.present_ranges()

    def page_excluded(self, pfn: int) -> bool:
        """Whether a present page was left out of the dump (e.g. a zero page); default no."""
        return False

    # -- provided ----------------------------------------------------------------------------

    def read_page(self, pfn: int) -> bytes:
        """The page at ``pfn`` (cached). Raises as :meth:`_load_page`."""
        page = self._cache.get(pfn)
        if page is not None:
            self._cache.move_to_end(pfn)
            return page
        if pfn < 0 or pfn >= 1 << 52:
            raise GuestMemoryError("physical page number out of range", address=pfn * self.page_size_bytes)
        page = self._load_page(pfn)
        self._cache[pfn] = page
        if len(self._cache) > PAGE_CACHE_PAGES:
            self._cache.popitem(last=False)
        return page

    def page_head(self, pfn: int, size: int) -> bytes:
        """The first ``size`` bytes of the page at ``pfn`` (readers may decode only those)."""
        page = self._cache.get(pfn)
        if page is None:
            page = self._load_page_head(pfn, size)
        return page[:size]

    def _load_page_head(self, pfn: int, size: int) -> bytes:
        return self._load_page(pfn)

    def read_pages(self, pfn: int, count: int) -> list[bytes]:
        """``count`` consecutive pages from ``pfn``, uncached (for sequential copies).

        A page that cannot be read raises as :meth:`_load_page`. Readers may override this
        with one large read.
        """
        return [self._load_page(p) for p in range(pfn, pfn + count)]

    def read_phys(self, paddr: int, size: int) -> bytes:
        """``size`` bytes of guest-physical memory at ``paddr``.

        :raises GuestMemoryError: a page in the range is not in the dump, or the request is
            larger than :data:`MAX_PHYS_READ_BYTES`.
        """
        if size < 0 or size > MAX_PHYS_READ_BYTES:
            raise GuestMemoryError(f"refusing a {size}-byte physical read", address=paddr)
        if paddr < 0:
            raise GuestMemoryError("negative physical address", address=paddr)
        ps = self.page_size_bytes
        out = []
        while size > 0:
            pfn, off = divmod(paddr, ps)
            chunk = min(size, ps - off)
            page = self.read_page(pfn)
            out.append(page[off:off + chunk])
            paddr += chunk
            size -= chunk
        return b"".join(out)

    def present_pages(self) -> int:
        """How many pages :meth:`present_ranges` covers."""
        return sum(end - start for start, end in self.present_ranges())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
